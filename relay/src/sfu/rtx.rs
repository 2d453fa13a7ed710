//! Loss repair between the SFU and its peers: RFC 4588 retransmission packets and the
//! NACKs that ask for them (RFC 4585 §6.2.1).
//!
//! Both directions pass through the SFU:
//! - to a receiver, the SFU answers NACKs itself from its [`super::history`] cache,
//!   sending each lost packet again on the receiver's RTX stream ([`wrap`]): a separate
//!   SSRC and payload type, so that retransmissions do not disturb the receiver's loss
//!   and jitter statistics, with the original sequence number (OSN) in front of the
//!   payload;
//! - from a publisher, the SFU is the receiver: [`NackGenerator`] notices gaps in each
//!   inbound stream and says which sequence numbers to NACK (written with
//!   `rtp::rtcp::write_nack`), and [`unwrap`] turns the publisher's RTX packets back
//!   into the original packets.
//!
//! Reading a NACK needs nothing here: `rtp::rtcp::Nack::lost()` already iterates the
//! requested sequence numbers (PID + BLP) without allocating.
//!
//! Nothing allocates: the packet functions write into the caller's buffer, and the
//! generator's state is one fixed array per stream.

use thiserror::Error;

use crate::rtp::{RtpError, RtpView, unwrap_seq};

/// Why a packet cannot be wrapped into or recovered from RTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtxError {
    /// The input is not a valid RTP packet.
    #[error("not an RTP packet: {0}")]
    Rtp(#[from] RtpError),
    /// The output buffer is too small.
    #[error("output buffer of {have} bytes, the packet needs {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A payload type must fit in 7 bits.
    #[error("payload type {0} does not fit in 7 bits")]
    BadPayloadType(u8),
    /// An RTX packet whose payload is shorter than the 2-byte OSN (e.g. padding-only
    /// bandwidth probes): nothing to recover.
    #[error("RTX payload shorter than the 2-byte original sequence number")]
    NoOsn,
}

/// Copies the header of `view` into `out` with SSRC, payload type and sequence number
/// replaced and the P bit cleared; returns the header length.
fn copy_header(
    view: &RtpView<'_>,
    out: &mut [u8],
    ssrc: u32,
    pt: u8,
    seq: u16,
) -> Result<usize, RtxError> {
    if pt > 0x7F {
        return Err(RtxError::BadPayloadType(pt));
    }
    let header = &view.as_bytes()[..view.header_len()];
    out[..header.len()].copy_from_slice(header);
    out[0] &= !0x20;
    out[1] = (out[1] & 0x80) | pt;
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    Ok(header.len())
}

/// Builds into `out` an RTX packet for `original` (plain RTP): same header fields
/// except SSRC = `rtx_ssrc`, PT = `rtx_pt`, seq = `rtx_seq`; payload = the 2-byte
/// original sequence number `osn` + the original payload. Header extensions and CSRCs
/// are kept, padding removed. Returns the length written.
///
/// `osn` is the sequence number the receiver knows the packet by (after the SFU's
/// per-receiver rewrite), which need not be the one in `original`.
pub fn wrap(
    original: &[u8],
    out: &mut [u8],
    rtx_ssrc: u32,
    rtx_pt: u8,
    rtx_seq: u16,
    osn: u16,
) -> Result<usize, RtxError> {
    let view = RtpView::parse(original)?;
    let payload = view.payload();
    let need = view.header_len() + 2 + payload.len();
    if out.len() < need {
        return Err(RtxError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    let h = copy_header(&view, out, rtx_ssrc, rtx_pt, rtx_seq)?;
    out[h..h + 2].copy_from_slice(&osn.to_be_bytes());
    out[h + 2..need].copy_from_slice(payload);
    Ok(need)
}

/// Recovers into `out` the original packet from a publisher's RTX packet, given the
/// primary stream's SSRC and payload type: seq = the OSN, payload = what follows it,
/// padding removed. Returns the length and the OSN.
pub fn unwrap(
    rtx: &[u8],
    out: &mut [u8],
    primary_ssrc: u32,
    primary_pt: u8,
) -> Result<(usize, u16), RtxError> {
    let view = RtpView::parse(rtx)?;
    let payload = view.payload();
    let Some((osn, inner)) = payload.split_first_chunk::<2>() else {
        return Err(RtxError::NoOsn);
    };
    let osn = u16::from_be_bytes(*osn);
    let need = view.header_len() + inner.len();
    if out.len() < need {
        return Err(RtxError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    let h = copy_header(&view, out, primary_ssrc, primary_pt, osn)?;
    out[h..need].copy_from_slice(inner);
    Ok((need, osn))
}

/// Like [`unwrap`], in place: the payload moves 2 bytes towards the header. Returns the
/// recovered packet's length (a prefix of `buf`) and the OSN.
pub fn unwrap_in_place(
    buf: &mut [u8],
    primary_ssrc: u32,
    primary_pt: u8,
) -> Result<(usize, u16), RtxError> {
    if primary_pt > 0x7F {
        return Err(RtxError::BadPayloadType(primary_pt));
    }
    let view = RtpView::parse(buf)?;
    let header_len = view.header_len();
    let payload = view.payload_range();
    if payload.len() < 2 {
        return Err(RtxError::NoOsn);
    }
    let osn = u16::from_be_bytes([buf[payload.start], buf[payload.start + 1]]);
    buf.copy_within(payload.start + 2..payload.end, header_len);
    buf[0] &= !0x20;
    buf[1] = (buf[1] & 0x80) | primary_pt;
    buf[2..4].copy_from_slice(&osn.to_be_bytes());
    buf[8..12].copy_from_slice(&primary_ssrc.to_be_bytes());
    Ok((payload.len() - 2 + header_len, osn))
}

/// Sequence numbers the generator tracks behind the highest one received: older gaps
/// are forgotten. A power of two.
pub const NACK_WINDOW: usize = 512;
/// A forward jump larger than this is not treated as loss (the stream restarted, or so
/// much was lost that a keyframe is the cheaper repair): the generator starts over.
pub const MAX_NACK_GAP: u64 = 256;
/// How many times a missing packet is asked for.
pub const MAX_NACKS_PER_PACKET: u8 = 3;
/// The least time between two NACKs of one packet (the actual spacing is the larger of
/// this and the RTT).
pub const MIN_NACK_SPACING_US: u64 = 20_000;
/// A packet still missing this long after its loss was noticed is given up on: by then
/// the receiver's jitter buffer has moved on.
pub const NACK_GIVE_UP_US: u64 = 1_000_000;

/// One tracked sequence number.
#[derive(Debug, Clone, Copy, Default)]
struct Missing {
    /// Whether this entry is a missing packet (false: received, or not tracked).
    missing: bool,
    /// The extended sequence number of the entry.
    ext: u64,
    /// When the gap was noticed.
    since_us: u64,
    /// When the last NACK for it was sent (valid when `sent > 0`).
    last_sent_us: u64,
    /// NACKs sent so far.
    sent: u8,
}

/// Where the first sequence number is placed in the extended (unwrapped) space.
const UNWRAP_BASE: u64 = 1 << 32;

/// For the SFU as a receiver from publishers, per inbound stream: notices missing
/// sequence numbers and says when to NACK them. Each is asked for at most
/// [`MAX_NACKS_PER_PACKET`] times, spaced by max([`MIN_NACK_SPACING_US`], RTT), and
/// forgotten after [`NACK_GIVE_UP_US`] or when it arrives. State is a fixed array of
/// [`NACK_WINDOW`] entries allocated at creation.
#[derive(Debug)]
pub struct NackGenerator {
    ring: Box<[Missing; NACK_WINDOW]>,
    /// Highest extended sequence number received, once one was.
    highest: Option<u64>,
    /// How many entries are missing.
    missing: usize,
    rtt_us: u64,
    /// Missing packets given up on since the last `take_given_up`.
    given_up: u32,
}

impl Default for NackGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl NackGenerator {
    /// An empty generator.
    pub fn new() -> Self {
        Self {
            ring: Box::new([Missing::default(); NACK_WINDOW]),
            highest: None,
            missing: 0,
            rtt_us: 0,
            given_up: 0,
        }
    }

    /// The latest round-trip time to the publisher (spaces repeated NACKs).
    pub fn set_rtt(&mut self, rtt_us: u64) {
        self.rtt_us = rtt_us;
    }

    fn slot(ext: u64) -> usize {
        (ext as usize) & (NACK_WINDOW - 1)
    }

    fn reset(&mut self) {
        self.ring.fill(Missing::default());
        self.missing = 0;
    }

    /// A packet with this sequence number arrived (original or recovered from RTX).
    /// Returns true when the gap before it was too large to repair by NACK
    /// ([`MAX_NACK_GAP`]): the caller should ask for a keyframe instead.
    pub fn on_packet(&mut self, seq: u16, now_us: u64) -> bool {
        let Some(highest) = self.highest else {
            // Far from zero, so a packet from just before the first one unwraps below it
            // instead of looking like a jump forward of almost 65536.
            self.highest = Some(UNWRAP_BASE + u64::from(seq));
            return false;
        };
        let ext = unwrap_seq(highest, seq);
        if ext > highest {
            let gap = ext - highest - 1;
            if gap > MAX_NACK_GAP {
                self.reset();
                self.highest = Some(ext);
                return true;
            }
            for s in highest + 1..=ext {
                let e = &mut self.ring[Self::slot(s)];
                if e.missing {
                    // An entry NACK_WINDOW behind is recycled.
                    self.missing -= 1;
                }
                *e = Missing {
                    missing: s != ext,
                    ext: s,
                    since_us: now_us,
                    last_sent_us: 0,
                    sent: 0,
                };
                if s != ext {
                    self.missing += 1;
                }
            }
            self.highest = Some(ext);
        } else {
            let e = &mut self.ring[Self::slot(ext)];
            if e.missing && e.ext == ext {
                e.missing = false;
                self.missing -= 1;
            }
        }
        false
    }

    /// Writes into `out` the sequence numbers to NACK now, oldest first (ready for
    /// `write_nack`), and returns how many. Those not fitting are returned by the next
    /// call; each returned one counts as sent.
    pub fn poll_nacks(&mut self, now_us: u64, out: &mut [u16]) -> usize {
        let Some(highest) = self.highest else {
            return 0;
        };
        if self.missing == 0 {
            return 0;
        }
        let spacing = self.rtt_us.max(MIN_NACK_SPACING_US);
        let mut n = 0;
        let first = highest.saturating_sub(NACK_WINDOW as u64 - 1);
        for s in first..highest {
            let e = &mut self.ring[Self::slot(s)];
            if !e.missing || e.ext != s {
                continue;
            }
            if now_us.saturating_sub(e.since_us) >= NACK_GIVE_UP_US
                || (e.sent >= MAX_NACKS_PER_PACKET
                    && now_us.saturating_sub(e.last_sent_us) >= spacing)
            {
                e.missing = false;
                self.missing -= 1;
                self.given_up = self.given_up.saturating_add(1);
                continue;
            }
            let due = e.sent == 0 || now_us.saturating_sub(e.last_sent_us) >= spacing;
            if due && e.sent < MAX_NACKS_PER_PACKET && n < out.len() {
                out[n] = s as u16;
                n += 1;
                e.sent += 1;
                e.last_sent_us = now_us;
            }
        }
        n
    }

    /// When `poll_nacks` next has something to do (a NACK due or a packet to give up
    /// on), if anything is missing.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.missing == 0 {
            return None;
        }
        let spacing = self.rtt_us.max(MIN_NACK_SPACING_US);
        self.ring
            .iter()
            .filter(|e| e.missing)
            .map(|e| {
                let give_up = e.since_us.saturating_add(NACK_GIVE_UP_US);
                if e.sent == 0 {
                    e.since_us
                } else {
                    give_up.min(e.last_sent_us.saturating_add(spacing))
                }
            })
            .min()
    }

    /// How many sequence numbers are missing now.
    pub fn missing(&self) -> usize {
        self.missing
    }

    /// How many missing packets were given up on (never arrived after the last NACK, or
    /// after [`NACK_GIVE_UP_US`]) since the last call: a reason to ask for a keyframe.
    pub fn take_given_up(&mut self) -> u32 {
        std::mem::take(&mut self.given_up)
    }
}

#[cfg(test)]
mod tests;
