//! RTCP statistics of the SFU's own streams (RFC 3550 §6.4, Appendix A.1, A.3, A.8).
//!
//! The SFU terminates RTCP on each hop rather than forwarding reports: the publisher
//! must learn the loss and jitter between itself and the SFU (not those of some
//! receiver), and each receiver must get sender reports that describe the stream it
//! actually receives (rewritten SSRC, sequence numbers and timestamps). So it keeps
//! - [`ReceiveStats`] per inbound stream, which yields the report block of the RRs (or
//!   SRs) the SFU sends to the publisher: extended highest sequence number, cumulative
//!   and fractional loss, interarrival jitter, LSR/DLSR;
//! - [`SendStats`] per outbound stream, which yields the sender info of the SRs sent to
//!   a receiver (NTP time, the RTP timestamp of that instant, packet and octet counts),
//!   and turns the report blocks the receiver sends back into a round-trip time.
//!
//! Plus the NTP time conversions they need. All of it is arithmetic on a few integers
//! per packet: no allocation.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::rtp::rtcp::{ReportBlock, SenderInfo};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

/// The 64-bit NTP timestamp (32.32 fixed point seconds since 1900, modulo 2^32 s) of
/// `unix_us` microseconds since the Unix epoch.
pub fn unix_micros_to_ntp(unix_us: u64) -> u64 {
    let secs = (unix_us / 1_000_000 + NTP_UNIX_OFFSET_S) as u32;
    let frac = ((unix_us % 1_000_000) << 32) / 1_000_000;
    u64::from(secs) << 32 | frac
}

/// The 64-bit NTP timestamp of a wall-clock time (the Unix epoch for earlier times).
pub fn system_time_to_ntp(t: SystemTime) -> u64 {
    let us = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
    unix_micros_to_ntp(u64::try_from(us).unwrap_or(u64::MAX))
}

/// The middle 32 bits of an NTP timestamp (16.16 fixed point), the form of LSR and of
/// the time the RTT is computed at.
pub fn ntp_middle32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Microseconds as 1/65536 s units (DLSR), saturating.
fn micros_to_q16(us: u64) -> u32 {
    u32::try_from((u128::from(us) << 16) / 1_000_000).unwrap_or(u32::MAX)
}

/// Microseconds as RTP timestamp units at `clock_hz` (truncated, modulo 2^64).
fn micros_to_rtp_units(us: u64, clock_hz: u32) -> u64 {
    (u128::from(us) * u128::from(clock_hz) / 1_000_000) as u64
}

/// A jump forward by this many sequence numbers or more is not loss but a possible
/// restart of the source (RFC 3550 A.1 MAX_DROPOUT).
const MAX_DROPOUT: u16 = 3000;
/// A packet this many numbers behind the highest or fewer is late, not a restart
/// (RFC 3550 A.1 MAX_MISORDER).
const MAX_MISORDER: u16 = 100;

/// Reception statistics of one inbound RTP stream (RFC 3550 A.1, A.3, A.8).
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    started: bool,
    /// Highest sequence number received (low 16 bits).
    max_seq: u16,
    /// Wraps of the sequence number.
    cycles: u32,
    /// The first sequence number (of this run after a restart).
    base_seq: u16,
    /// After a large jump: the number that would confirm a restart (A.1 bad_seq).
    bad_seq: Option<u16>,
    /// Packets received (duplicates included, as A.3 counts).
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Relative transit time of the last in-order packet, in RTP units (mod 2^32).
    transit: Option<u32>,
    /// Interarrival jitter estimate, in RTP timestamp units.
    jitter: f64,
    /// Middle 32 bits of the last SR's NTP timestamp, and when it arrived.
    last_sr: Option<(u32, u64)>,
}

impl ReceiveStats {
    /// No packet yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn restart(&mut self, seq: u16) {
        self.started = true;
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = None;
        self.cycles = 0;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
        self.transit = None;
    }

    /// A packet arrived: its sequence number, RTP timestamp, arrival time and the
    /// stream's clock rate. Jitter is measured on packets that advance the highest
    /// sequence number only: a late or retransmitted packet's transit time measures
    /// the repair, not the network's jitter.
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival_us: u64, clock_hz: u32) {
        let in_order = if !self.started {
            self.restart(seq);
            true
        } else {
            let udelta = seq.wrapping_sub(self.max_seq);
            if udelta < MAX_DROPOUT {
                if udelta == 0 {
                    false // duplicate
                } else {
                    if seq < self.max_seq {
                        self.cycles = self.cycles.wrapping_add(1);
                    }
                    self.max_seq = seq;
                    true
                }
            } else if udelta <= u16::MAX - MAX_MISORDER + 1 {
                // A very large jump: a restart if the next packet follows it (A.1).
                if self.bad_seq == Some(seq) {
                    self.restart(seq);
                    true
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            } else {
                false // late (reordered or retransmitted)
            }
        };
        self.received += 1;
        if in_order {
            let arrival = micros_to_rtp_units(arrival_us, clock_hz) as u32;
            let transit = arrival.wrapping_sub(rtp_ts);
            if let Some(prev) = self.transit {
                let d = f64::from((transit.wrapping_sub(prev) as i32).unsigned_abs());
                self.jitter += (d - self.jitter) / 16.0;
            }
            self.transit = Some(transit);
        }
    }

    /// A sender report from this stream's source arrived (its 64-bit NTP timestamp).
    pub fn on_sr(&mut self, ntp: u64, now_us: u64) {
        self.last_sr = Some((ntp_middle32(ntp), now_us));
    }

    /// The extended highest sequence number received (wraps × 65536 + highest).
    pub fn extended_highest(&self) -> u64 {
        u64::from(self.cycles) << 16 | u64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        self.extended_highest() + 1 - u64::from(self.base_seq)
    }

    /// Packets lost since the start (negative with duplicates), clamped to the 24-bit
    /// signed range of the report block.
    pub fn cumulative_lost(&self) -> i32 {
        let lost = self.expected() as i64 - self.received as i64;
        lost.clamp(-(1 << 23), (1 << 23) - 1) as i32
    }

    /// The interarrival jitter estimate, in RTP timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Whether any packet arrived.
    pub fn has_received(&self) -> bool {
        self.started
    }

    /// The report block about this stream (whose SSRC is `ssrc`) for an RR or SR sent
    /// now; starts the next fraction-lost interval.
    pub fn report_block(&mut self, ssrc: u32, now_us: u64) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            (((lost_interval as u64) << 8) / expected_interval).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => (lsr, micros_to_q16(now_us.saturating_sub(at))),
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost(),
            highest_seq: self.extended_highest() as u32,
            jitter: self.jitter.round() as u32,
            last_sr,
            delay_since_last_sr,
        }
    }
}

/// Sending statistics of one outbound RTP stream, for its sender reports and the RTT
/// its receiver's reports reveal.
#[derive(Debug, Clone)]
pub struct SendStats {
    clock_hz: u32,
    packets: u32,
    octets: u32,
    /// RTP timestamp of the last packet sent and when.
    last: Option<(u32, u64)>,
    rtt_us: Option<u64>,
}

impl SendStats {
    /// A stream with this RTP clock rate (90 000 for video, 48 000 for Opus).
    pub fn new(clock_hz: u32) -> Self {
        Self {
            clock_hz,
            packets: 0,
            octets: 0,
            last: None,
            rtt_us: None,
        }
    }

    /// A packet was sent: its RTP timestamp as the receiver sees it (after the SFU's
    /// rewrite) and its payload length (header and padding excluded, RFC 3550 §6.4.1).
    pub fn on_packet(&mut self, rtp_ts: u32, payload_len: usize, now_us: u64) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        self.last = Some((rtp_ts, now_us));
    }

    /// The sender info of an SR sent now: `wallclock_ntp` (see [`unix_micros_to_ntp`])
    /// and the RTP timestamp of the same instant, extrapolated from the last packet sent
    /// with the clock rate, and the counts (modulo 2^32, as on the wire).
    pub fn sender_report(&self, now_us: u64, wallclock_ntp: u64) -> SenderInfo {
        let rtp_timestamp = match self.last {
            Some((ts, at)) => {
                let elapsed = micros_to_rtp_units(now_us.saturating_sub(at), self.clock_hz);
                ts.wrapping_add(elapsed as u32)
            }
            None => 0,
        };
        SenderInfo {
            ntp_timestamp: wallclock_ntp,
            rtp_timestamp,
            packet_count: self.packets,
            octet_count: self.octets,
        }
    }

    /// A report block about this stream arrived from its receiver at `now_ntp_middle32`
    /// (the middle 32 bits of the NTP time now): the round-trip time in microseconds
    /// (RFC 3550 §6.4.1: now − LSR − DLSR), if the block refers to an SR (LSR ≠ 0) and
    /// the result is not negative. Also kept for [`Self::rtt_us`].
    pub fn on_report_block(&mut self, block: &ReportBlock, now_ntp_middle32: u32) -> Option<u64> {
        if block.last_sr == 0 {
            return None;
        }
        let since_sr = now_ntp_middle32.wrapping_sub(block.last_sr);
        // More than half the 16.16 range (~9 h) "since" the SR: LSR is in the future.
        if since_sr > u32::MAX / 2 || since_sr < block.delay_since_last_sr {
            return None;
        }
        let q16 = since_sr - block.delay_since_last_sr;
        let rtt = (u64::from(q16) * 1_000_000) >> 16;
        self.rtt_us = Some(rtt);
        Some(rtt)
    }

    /// The last round-trip time measured.
    pub fn rtt_us(&self) -> Option<u64> {
        self.rtt_us
    }

    /// Packets sent (modulo 2^32).
    pub fn packet_count(&self) -> u32 {
        self.packets
    }

    /// Payload octets sent (modulo 2^32).
    pub fn octet_count(&self) -> u32 {
        self.octets
    }
}

#[cfg(test)]
mod tests;
