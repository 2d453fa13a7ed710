//! Per-connection message rate limit, sans-IO (the caller passes the clock).
//!
//! A token bucket (`messages_per_sec`, burst twice that) decides which messages are
//! handled; the rest are dropped with at most one `rate_limited` error per second. A
//! client that keeps sending more than ten times the rate for two consecutive seconds
//! is not a confused browser but a flood, and is disconnected.

use std::time::{Duration, Instant};

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Drop it; `notify`: also send `rate_limited` (at most once per second).
    Drop {
        /// Send the error this time.
        notify: bool,
    },
    /// Ten times over the rate for two seconds: close the connection.
    Close,
}

const SECOND: Duration = Duration::from_secs(1);

/// The limiter of one connection.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_refill: Instant,
    last_notice: Option<Instant>,
    window_start: Instant,
    window_count: u64,
    /// Whether the previous whole one-second window was ten times over.
    previous_window_flooded: bool,
    flood_threshold: u64,
}

impl RateLimiter {
    /// A limiter allowing `per_sec` messages per second (at least 1) with a burst of
    /// twice that, starting full at `now`.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let per_sec = per_sec.max(1);
        let burst = f64::from(per_sec) * 2.0;
        Self {
            rate: f64::from(per_sec),
            burst,
            tokens: burst,
            last_refill: now,
            last_notice: None,
            window_start: now,
            window_count: 0,
            previous_window_flooded: false,
            flood_threshold: u64::from(per_sec) * 10,
        }
    }

    /// Accounts one message received at `now`.
    pub fn on_message(&mut self, now: Instant) -> Verdict {
        // Flood detection over whole one-second windows.
        let in_window = now.saturating_duration_since(self.window_start);
        if in_window >= SECOND {
            let windows = in_window.as_secs();
            // A gap of more than one window means the windows in between were quiet.
            self.previous_window_flooded = windows == 1 && self.window_count > self.flood_threshold;
            self.window_start += Duration::from_secs(windows);
            self.window_count = 0;
        }
        self.window_count += 1;
        if self.previous_window_flooded && self.window_count > self.flood_threshold {
            return Verdict::Close;
        }

        let elapsed = now.saturating_duration_since(self.last_refill);
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let notify = self
            .last_notice
            .is_none_or(|t| now.saturating_duration_since(t) >= SECOND);
        if notify {
            self.last_notice = Some(now);
        }
        Verdict::Drop { notify }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(v: &[Verdict]) -> (usize, usize, usize) {
        let allow = v.iter().filter(|v| **v == Verdict::Allow).count();
        let notes = v
            .iter()
            .filter(|v| **v == Verdict::Drop { notify: true })
            .count();
        let close = v.iter().filter(|v| **v == Verdict::Close).count();
        (allow, notes, close)
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(50, t0);
        // 100 at once: the burst.
        let v: Vec<_> = (0..150).map(|_| l.on_message(t0)).collect();
        assert_eq!(count(&v), (100, 1, 0));
        // 0.5 s later: 25 more tokens, no second notice within the second.
        let t1 = t0 + Duration::from_millis(500);
        let v: Vec<_> = (0..40).map(|_| l.on_message(t1)).collect();
        assert_eq!(count(&v), (25, 0, 0));
        // One second after the first notice: one more notice.
        let t2 = t0 + Duration::from_millis(1000);
        let v: Vec<_> = (0..40).map(|_| l.on_message(t2)).collect();
        assert_eq!(count(&v), (25, 1, 0));
    }

    #[test]
    fn steady_traffic_at_the_rate_is_never_dropped() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(50, t0);
        for i in 0..1000u64 {
            assert_eq!(
                l.on_message(t0 + Duration::from_millis(20 * i)),
                Verdict::Allow,
                "{i}"
            );
        }
    }

    #[test]
    fn ten_times_over_for_two_seconds_closes() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, t0);
        // Second 1: 101 messages (> 10x): dropped, not closed.
        let v: Vec<_> = (0..101)
            .map(|i| l.on_message(t0 + Duration::from_millis(i * 9)))
            .collect();
        assert_eq!(count(&v).2, 0);
        // Second 2: closed once it passes 10x again.
        let t1 = t0 + SECOND;
        let v: Vec<_> = (0..101)
            .map(|i| l.on_message(t1 + Duration::from_millis(i * 9)))
            .collect();
        assert_eq!(count(&v).2, 1);
        assert_eq!(v[100], Verdict::Close);
    }

    #[test]
    fn a_single_flooded_second_does_not_close() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, t0);
        for _ in 0..1000 {
            assert_ne!(l.on_message(t0), Verdict::Close);
        }
        // A quiet gap, then another flood: the flood windows are not consecutive.
        let t1 = t0 + Duration::from_secs(3);
        for _ in 0..1000 {
            assert_ne!(l.on_message(t1), Verdict::Close);
        }
        // Exactly 10x in the next second is not over 10x.
        let t2 = t1 + SECOND;
        let v: Vec<_> = (0..100).map(|_| l.on_message(t2)).collect();
        assert_eq!(count(&v).2, 0);
    }

    #[test]
    fn zero_rate_is_treated_as_one() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0, t0);
        assert_eq!(l.on_message(t0), Verdict::Allow);
        assert_eq!(l.on_message(t0), Verdict::Allow);
        assert_eq!(l.on_message(t0), Verdict::Drop { notify: true });
    }
}
