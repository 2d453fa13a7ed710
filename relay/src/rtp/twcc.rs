//! The receive side of transport-wide congestion control
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01): records when each packet of one
//! publisher's transport arrived, by its transport-wide sequence number, and writes the
//! feedback its send-side bandwidth estimator needs.
//!
//! Sans-IO: the caller passes arrival times (µs on any monotonic clock) and asks for
//! feedback (every ~100 ms); memory is fixed at construction and nothing allocates per
//! packet. Sequence numbers are unwrapped to 64 bits, duplicates keep the first arrival,
//! reordered packets are placed where they belong. A packet that arrives after the
//! feedback covering its number was sent is not reported again (it was reported lost).

use super::rtcp::RtcpError;
use super::rtcp::transport_cc::{DELTA_UNIT_US, REFERENCE_UNIT_US, TwccHeader, write_transport_cc};
use super::unwrap_seq;

/// Packets remembered by default: ~4 s of a 1000 packet/s publisher.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Fixed part + worst-case padding of a feedback message.
const OVERHEAD: usize = 23;
/// The first unwrapped number lives far from 0 so that reordering before it cannot go
/// negative.
const UNWRAP_BASE: u64 = 1 << 32;

#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    arrival_us: u64,
}

const EMPTY: Slot = Slot {
    seq: u64::MAX,
    arrival_us: 0,
};

/// Counters of what the recorder could not report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TwccStats {
    /// Packets recorded.
    pub recorded: u64,
    /// Second arrivals of a number already recorded.
    pub duplicates: u64,
    /// Arrivals whose number was already covered by a feedback message sent.
    pub late: u64,
    /// Unreported numbers pushed out of the window by a jump ahead (reported nowhere).
    pub evicted: u64,
}

/// Records one publisher's transport-wide sequence numbers and arrival times, and writes
/// transport-cc feedback covering everything since the last feedback.
#[derive(Debug)]
pub struct TwccRecorder {
    sender_ssrc: u32,
    media_ssrc: u32,
    slots: Box<[Slot]>,
    scratch: Box<[Option<i16>]>,
    highest: Option<u64>,
    next: u64,
    reported_any: bool,
    fb_count: u8,
    stats: TwccStats,
}

impl TwccRecorder {
    /// Sets the media SSRC the feedback names (one of the sender's streams; libwebrtc
    /// reads the feedback for the whole transport whatever it names, but some receivers
    /// want a real one).
    pub fn set_media_ssrc(&mut self, media_ssrc: u32) {
        self.media_ssrc = media_ssrc;
    }

    /// A recorder with [`DEFAULT_CAPACITY`]: `sender_ssrc` is ours, `media_ssrc` one of
    /// the publisher's.
    pub fn new(sender_ssrc: u32, media_ssrc: u32) -> Self {
        Self::with_capacity(sender_ssrc, media_ssrc, DEFAULT_CAPACITY)
    }

    /// A recorder remembering at most `capacity` (1..=65535) unreported numbers.
    pub fn with_capacity(sender_ssrc: u32, media_ssrc: u32, capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 65535);
        Self {
            sender_ssrc,
            media_ssrc,
            slots: vec![EMPTY; capacity].into_boxed_slice(),
            scratch: vec![None; capacity].into_boxed_slice(),
            highest: None,
            next: 0,
            reported_any: false,
            fb_count: 0,
            stats: TwccStats::default(),
        }
    }

    /// What was dropped or evicted so far.
    pub fn stats(&self) -> TwccStats {
        self.stats
    }

    /// Whether a feedback message is due (something unreported was received).
    pub fn has_pending(&self) -> bool {
        self.highest.is_some_and(|h| h >= self.next)
    }

    fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot(&self, seq: u64) -> Option<u64> {
        let s = self.slots[(seq % self.capacity()) as usize];
        (s.seq == seq).then_some(s.arrival_us)
    }

    /// Records the arrival of transport-wide sequence number `seq` at `arrival_us`.
    pub fn record(&mut self, seq: u16, arrival_us: u64) {
        let cap = self.capacity();
        let u = match self.highest {
            None => {
                let u = UNWRAP_BASE + u64::from(seq);
                self.highest = Some(u);
                self.next = u;
                u
            }
            Some(highest) => {
                let u = unwrap_seq(highest, seq);
                if u < self.next {
                    if self.reported_any || highest - u >= cap {
                        self.stats.late += 1;
                        return;
                    }
                    // Reordered before the first number seen, nothing reported yet.
                    self.next = u;
                }
                if u > highest {
                    self.highest = Some(u);
                    if u - self.next >= cap {
                        let new_next = u - cap + 1;
                        self.stats.evicted += new_next - self.next;
                        self.next = new_next;
                    }
                }
                u
            }
        };
        let i = (u % cap) as usize;
        if self.slots[i].seq == u {
            self.stats.duplicates += 1;
            return;
        }
        self.slots[i] = Slot { seq: u, arrival_us };
        self.stats.recorded += 1;
    }

    /// Writes one feedback message covering the unreported numbers into `buf`, and
    /// returns its length, or `None` if nothing is pending. A message ends early (the rest
    /// waits for the next call, so call again while it returns `Some`) when `buf` cannot
    /// hold more or a receive delta does not fit in 16 bits (the draft's rule for
    /// starting a new feedback message).
    pub fn write_feedback(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RtcpError> {
        let Some(highest) = self.highest else {
            return Ok(None);
        };
        if highest < self.next {
            return Ok(None);
        }
        // Worst case per status: a 2-byte delta plus 2 bytes of chunk per 7 statuses.
        let room = buf.len().saturating_sub(OVERHEAD + 2) * 7 / 16;
        if room == 0 {
            return Err(RtcpError::BufferTooSmall {
                need: OVERHEAD + 4,
                have: buf.len(),
            });
        }
        let span = (highest - self.next + 1)
            .min(room as u64)
            .min(self.capacity()) as usize;

        // The reference time: the first received packet's arrival, in 64 ms units.
        let first_arrival = (self.next..self.next + span as u64)
            .find_map(|s| self.slot(s))
            .or_else(|| (self.next..=highest).find_map(|s| self.slot(s)))
            .unwrap_or(0);
        let reference = first_arrival / REFERENCE_UNIT_US;
        let reference_us = (reference * REFERENCE_UNIT_US) as i128;

        let mut prev_units: i128 = 0;
        let mut count = 0;
        let mut last_received = 0;
        for k in 0..span {
            let status = match self.slot(self.next + k as u64) {
                None => None,
                Some(arrival) => {
                    let units =
                        (i128::from(arrival) - reference_us).div_euclid(i128::from(DELTA_UNIT_US));
                    let Ok(delta) = i16::try_from(units - prev_units) else {
                        break;
                    };
                    prev_units = units;
                    last_received = k + 1;
                    Some(delta)
                }
            };
            self.scratch[k] = status;
            count = k + 1;
        }
        // Trailing losses wait for the next message (they may still arrive), unless
        // nothing in the window was received.
        if last_received > 0 {
            count = last_received;
        }
        let header = TwccHeader {
            sender_ssrc: self.sender_ssrc,
            media_ssrc: self.media_ssrc,
            base_seq: self.next as u16,
            reference_time: (reference & 0x00FF_FFFF) as u32,
            fb_count: self.fb_count,
        };
        let n = write_transport_cc(buf, &header, &self.scratch[..count])?;
        self.fb_count = self.fb_count.wrapping_add(1);
        self.next += count as u64;
        self.reported_any = true;
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::super::rtcp::{RtcpPacket, TwccStatus, compound};
    use super::*;

    /// Parses one feedback message and returns (header, [(seq, arrival µs or None)]).
    fn decode(buf: &[u8]) -> (TwccHeader, Vec<(u16, Option<u64>)>) {
        let Some(Ok(RtcpPacket::TransportCc(fb))) = compound(buf).next() else {
            panic!("not transport-cc");
        };
        let h = fb.header();
        let mut t = i64::from(h.reference_time) * REFERENCE_UNIT_US as i64;
        let out = fb
            .statuses()
            .map(|(seq, s)| match s {
                TwccStatus::NotReceived => (seq, None),
                TwccStatus::Received(d) => {
                    t += i64::from(d) * DELTA_UNIT_US as i64;
                    (seq, Some(t as u64))
                }
            })
            .collect();
        (h, out)
    }

    #[test]
    fn losses_reordering_duplicates_and_wrap() {
        let mut r = TwccRecorder::new(1, 2);
        let mut buf = [0u8; 1200];
        assert_eq!(r.write_feedback(&mut buf), Ok(None));
        // 65530..=65535, 0..=5 with 65533 and 2 lost, 1 arriving before 0, 65532 twice,
        // and 65529 arriving (reordered) before anything was reported.
        let base = 10_000_000u64; // 10 s
        let mut arrivals = Vec::new();
        let order: [u16; 11] = [65530, 65531, 65532, 65534, 65535, 1, 0, 3, 4, 5, 65529];
        for (i, seq) in order.iter().enumerate() {
            let at = base + 1_000 * i as u64 + 37;
            r.record(*seq, at);
            arrivals.push((*seq, at));
        }
        r.record(65532, base + 99_999);
        assert_eq!(r.stats().duplicates, 1);
        let n = r.write_feedback(&mut buf).expect("fits").expect("pending");
        let (h, statuses) = decode(&buf[..n]);
        assert_eq!(h.base_seq, 65529);
        assert_eq!(h.fb_count, 0);
        assert_eq!((h.sender_ssrc, h.media_ssrc), (1, 2));
        let seqs: Vec<u16> = statuses.iter().map(|(s, _)| *s).collect();
        let want: Vec<u16> = (0..13u16).map(|i| 65529u16.wrapping_add(i)).collect();
        assert_eq!(seqs, want);
        for (seq, got) in &statuses {
            let sent = arrivals.iter().find(|(s, _)| s == seq).map(|(_, a)| *a);
            match (sent, got) {
                (None, None) => assert!(*seq == 65533 || *seq == 2),
                (Some(a), Some(g)) => {
                    assert!(*g <= a && a - g < DELTA_UNIT_US, "seq {seq}: {a} vs {g}");
                }
                other => panic!("seq {seq}: {other:?}"),
            }
        }
        // 0 arrived after 1: the delta of 1 (from 0) travelled negative, as checked above.
        assert_eq!(r.write_feedback(&mut buf), Ok(None));
        // Late arrival of a number already reported lost is not reported again.
        r.record(2, base + 50_000);
        assert_eq!(r.stats().late, 1);
        assert_eq!(r.write_feedback(&mut buf), Ok(None));
        // The next feedback continues at 6 with fb_count 1.
        r.record(7, base + 60_000);
        let n = r.write_feedback(&mut buf).expect("fits").expect("pending");
        let (h, statuses) = decode(&buf[..n]);
        assert_eq!((h.base_seq, h.fb_count), (6, 1));
        assert_eq!(statuses[0], (6, None));
        assert_eq!(statuses[1].0, 7);
        let got = statuses[1].1.expect("received");
        assert!(got <= base + 60_000 && base + 60_000 - got < DELTA_UNIT_US);
    }

    #[test]
    fn delta_overflow_starts_a_new_feedback() {
        let mut r = TwccRecorder::new(1, 2);
        let mut buf = [0u8; 200];
        r.record(100, 1_000_000);
        r.record(101, 1_001_000);
        // 20 s later: does not fit a signed 16-bit count of 250 µs (8.19 s).
        r.record(102, 21_000_100);
        let n = r.write_feedback(&mut buf).expect("ok").expect("pending");
        let (h, s) = decode(&buf[..n]);
        assert_eq!(h.base_seq, 100);
        assert_eq!(s.len(), 2);
        let n = r.write_feedback(&mut buf).expect("ok").expect("pending");
        let (h, s) = decode(&buf[..n]);
        assert_eq!((h.base_seq, h.fb_count), (102, 1));
        assert_eq!(s, vec![(102, Some(21_000_000))], "floored to 250 µs");
        assert_eq!(r.write_feedback(&mut buf), Ok(None));
    }

    #[test]
    fn small_buffer_splits_and_window_is_bounded() {
        let mut r = TwccRecorder::with_capacity(1, 2, 64);
        for i in 0..100u16 {
            r.record(i, 1_000_000 + u64::from(i) * 300);
        }
        assert_eq!(r.stats().evicted, 36);
        // A 64-byte buffer carries (64 - 25) * 7 / 16 = 17 statuses.
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        while let Some(n) = r.write_feedback(&mut buf).expect("fits") {
            let (_, s) = decode(&buf[..n]);
            assert!(s.len() <= 17);
            seen.extend(s.into_iter().map(|(seq, a)| {
                assert!(a.is_some());
                seq
            }));
        }
        assert_eq!(seen, (36..100u16).collect::<Vec<_>>());
        assert!(
            r.write_feedback(&mut [0u8; 20]).is_ok(),
            "nothing pending: Ok(None)"
        );
        r.record(100, 2_000_000);
        assert!(matches!(
            r.write_feedback(&mut [0u8; 20]),
            Err(RtcpError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn long_loss_run_and_large_reordering_round_trip() {
        let mut r = TwccRecorder::new(1, 2);
        let mut buf = [0u8; 1500];
        r.record(0, 5_000_000);
        r.record(1000, 5_100_000); // 999 lost between: a run-length chunk
        r.record(500, 4_900_000); // arrives "before" 0 in time: a negative large delta
        // The 1500-byte buffer holds 645 worst-case statuses: two messages, the first
        // ending at its last received packet (500), the second carrying the rest.
        let mut s = Vec::new();
        let mut messages = 0;
        while let Some(n) = r.write_feedback(&mut buf).expect("fits") {
            s.extend(decode(&buf[..n]).1);
            messages += 1;
        }
        assert_eq!(messages, 2);
        assert_eq!(s.len(), 1001);
        assert_eq!(s.iter().filter(|(_, a)| a.is_some()).count(), 3);
        assert_eq!(s[0], (0, Some(5_000_000)));
        assert_eq!(s[500], (500, Some(4_900_000)));
        assert_eq!(s[1000], (1000, Some(5_100_000)));
    }

    proptest::proptest! {
        /// Losses, adjacent swaps, duplicates and a random start (wraps included): after
        /// one flush, every number between the lowest and highest recorded is reported
        /// exactly once, received ones at their first arrival (floored to 250 µs).
        #[test]
        fn recorder_reports_what_arrived(
            base in proptest::prelude::any::<u16>(),
            events in proptest::collection::vec((0u8..10, 0u64..20_000), 1..400),
        ) {
            let mut r = TwccRecorder::new(1, 2);
            let mut now = 3_000_000u64;
            let mut first_arrival = std::collections::BTreeMap::new();
            let mut pending: Option<u64> = None;
            for (i, (kind, gap)) in (0u64..).zip(events) {
                now += gap;
                let mut deliver = |n: u64, r: &mut TwccRecorder| {
                    r.record(base.wrapping_add(n as u16), now);
                    first_arrival.entry(n).or_insert(now);
                };
                match kind {
                    0 => {} // lost
                    1 => pending = pending.or(Some(i)), // held back: swapped with the next
                    2 => {
                        deliver(i, &mut r);
                        deliver(i, &mut r); // duplicate
                    }
                    _ => deliver(i, &mut r),
                }
                if kind != 1 && let Some(p) = pending.take() {
                    deliver(p, &mut r);
                }
            }
            let mut buf = [0u8; 1500];
            let mut got = Vec::new();
            while let Some(n) = r.write_feedback(&mut buf).expect("fits") {
                got.extend(decode(&buf[..n]).1);
            }
            let (Some(lo), Some(hi)) = (
                first_arrival.keys().next().copied(),
                first_arrival.keys().last().copied(),
            ) else {
                proptest::prop_assert!(got.is_empty());
                return Ok(());
            };
            proptest::prop_assert_eq!(got.len() as u64, hi - lo + 1);
            for (k, (seq, at)) in got.iter().enumerate() {
                let n = lo + k as u64;
                proptest::prop_assert_eq!(*seq, base.wrapping_add(n as u16));
                match (first_arrival.get(&n), at) {
                    (None, None) => {}
                    (Some(a), Some(g)) => {
                        proptest::prop_assert!(g <= a && a - g < DELTA_UNIT_US)
                    }
                    other => proptest::prop_assert!(false, "seq {}: {:?}", n, other),
                }
            }
        }
    }
}
