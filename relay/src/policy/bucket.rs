//! A token bucket for the per-allocation bandwidth limit (`turn.bandwidth_limit`).
//!
//! Why: one allocation must not be able to fill the relay's uplink. The bucket is sans-IO
//! (the caller passes `now`), integer-only and allocation-free, so it can sit on the
//! relay hot path and be tested with a manual clock.

use std::time::Instant;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Bytes per second with a burst allowance. A rate of 0 means unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// Bytes charged beyond the tokens there were ([`TokenBucket::charge`]): paid back
    /// from refills before any token is credited.
    debt: u64,
    /// Fractions of a byte earned but not yet credited, in byte-nanoseconds.
    carry: u128,
    last: Instant,
}

impl TokenBucket {
    /// `bytes_per_sec` 0 = unlimited. `burst` is the bucket's depth in bytes (0 = one
    /// second's worth); it is raised to at least 65 535 so that one maximal datagram can
    /// always pass. The bucket starts full.
    pub fn new(bytes_per_sec: u64, burst: u64, now: Instant) -> Self {
        let burst = if burst == 0 { bytes_per_sec } else { burst }.max(65_535);
        TokenBucket {
            rate: bytes_per_sec,
            burst,
            tokens: burst,
            debt: 0,
            carry: 0,
            last: now,
        }
    }

    /// Whether `bytes` may be sent at `now`; if so they are taken from the bucket.
    /// A `now` earlier than the last call is treated as no time passing.
    pub fn allow(&mut self, bytes: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        let want = bytes as u64;
        if self.tokens >= want {
            self.tokens -= want;
            true
        } else {
            false
        }
    }

    /// Takes `bytes` that were already sent by another path (the kernel's share of the
    /// allocation's traffic, folded once a second): what the tokens do not cover becomes
    /// a debt that later refills pay first, so that both paths together stay within the
    /// rate over time.
    pub fn charge(&mut self, bytes: u64, now: Instant) {
        if self.rate == 0 {
            return;
        }
        self.refill(now);
        if self.tokens >= bytes {
            self.tokens -= bytes;
        } else {
            // Bounded: the debt never exceeds what a second or two of the rate can repay
            // times the folds in between; saturate rather than wrap.
            self.debt = self.debt.saturating_add(bytes - self.tokens);
            self.tokens = 0;
        }
    }

    /// Tokens (bytes) available now (after refilling to `now`).
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        self.refill(now);
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last) else {
            return;
        };
        self.last = now;
        if self.tokens >= self.burst {
            self.carry = 0;
            return;
        }
        let earned = elapsed.as_nanos() * u128::from(self.rate) + self.carry;
        let mut whole = earned / NANOS_PER_SEC;
        self.carry = earned % NANOS_PER_SEC;
        if self.debt > 0 {
            let paid = whole.min(u128::from(self.debt));
            // paid <= debt <= u64::MAX
            self.debt -= paid as u64;
            whole -= paid;
        }
        let room = u128::from(self.burst - self.tokens);
        if whole >= room {
            self.tokens = self.burst;
            self.carry = 0;
        } else {
            // whole < room <= u64::MAX
            self.tokens += whole as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unlimited_always_allows() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 0, t0);
        for _ in 0..10_000 {
            assert!(b.allow(65_535, t0));
        }
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, 100_000, t0);
        // Full bucket: 100 kB pass at once, then nothing.
        for _ in 0..100 {
            assert!(b.allow(1000, t0));
        }
        assert!(!b.allow(1000, t0));
        // 10 ms later: 1000 bytes earned.
        let t1 = t0 + Duration::from_millis(10);
        assert!(b.allow(1000, t1));
        assert!(!b.allow(1, t1));
        // One second idle refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.available(t2), 100_000);
    }

    #[test]
    fn charged_bytes_become_a_debt_repaid_before_new_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, 100_000, t0);
        // The kernel relayed 250 kB in the last second: the bucket is emptied and owes
        // 150 kB.
        b.charge(250_000, t0);
        assert_eq!(b.available(t0), 0);
        assert!(!b.allow(1, t0));
        // 1.5 s repays the debt; nothing is available until then.
        assert_eq!(b.available(t0 + Duration::from_millis(1400)), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(1500)), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(1600)), 10_000);
        // Unlimited buckets ignore charges.
        let mut u = TokenBucket::new(0, 0, t0);
        u.charge(1 << 40, t0);
        assert!(u.allow(65_535, t0));
    }

    #[test]
    fn kernel_and_userspace_together_stay_within_the_rate() {
        // Each second the kernel relays 60 kB of a 100 kB/s allocation and userspace
        // offers 1000-byte packets every ms: userspace gets only what is left.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, 100_000, t0);
        let mut now = t0;
        let mut user = 0u64;
        for second in 0..10u32 {
            for ms in 0..1000u32 {
                now = t0 + Duration::from_millis(u64::from(second * 1000 + ms));
                if b.allow(1000, now) {
                    user += 1000;
                }
            }
            b.charge(60_000, now);
        }
        let total = user + 10 * 60_000;
        // 10 s at 100 kB/s plus the initial burst (100 kB) and one fold's lag (60 kB).
        assert!(total <= 1_000_000 + 100_000 + 60_000, "{total}");
        assert!(user >= 300_000, "userspace starved: {user}");
    }

    #[test]
    fn fractions_are_carried() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 1, t0); // burst raised to 65 535
        assert!(b.allow(65_535, t0));
        // 1 µs earns exactly one byte at 1 MB/s; 1000 steps of 1 µs earn 1000 bytes.
        let mut now = t0;
        for _ in 0..1000 {
            now += Duration::from_nanos(999);
            let _ = b.available(now);
            now += Duration::from_nanos(1);
        }
        assert_eq!(b.available(now), 1000);
    }

    #[test]
    fn long_run_rate_is_respected() {
        let t0 = Instant::now();
        let rate = 1_250_000; // 10 Mbit/s
        let mut b = TokenBucket::new(rate, 65_535, t0);
        let mut sent = 0u64;
        let mut now = t0;
        // Offer 1200-byte packets every 100 µs (12 MB/s) for 2 s.
        for _ in 0..20_000 {
            if b.allow(1200, now) {
                sent += 1200;
            }
            now += Duration::from_micros(100);
        }
        let max = rate * 2 + 65_535;
        assert!(sent <= max, "sent {sent} > {max}");
        assert!(sent >= rate * 2 - 2400, "sent {sent} too little");
    }

    #[test]
    fn time_going_backwards_earns_nothing() {
        let t1 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new(1000, 65_535, t1);
        assert!(b.allow(65_535, t1));
        assert!(!b.allow(1, t1 - Duration::from_millis(500)));
        assert!(b.allow(1, t1 + Duration::from_millis(2)));
    }
}
