//! [`SrtpSession`]: one direction of a DTLS-SRTP association. It holds the derived
//! session keys and, per SSRC, the sender's packet index (ROC and highest sequence
//! number) and SRTCP index, and the receiver's replay windows. A receiving session
//! estimates each packet's index from its sequence number (RFC 3711 Appendix A), checks
//! the replay window, authenticates, decrypts, and only then updates its state, so a
//! forged, corrupted or replayed packet changes nothing.

use std::collections::HashMap;

use super::cipher::Transform;
use super::keys::{MasterKey, SessionKeys};
use super::replay::ReplayWindow;
use super::rtp_header::{RTCP_CLEAR_LEN, parse_rtcp, parse_rtp};
use super::{Profile, SrtpError};

/// The most SSRCs one session tracks. A subscriber's sending session has one SSRC per
/// subscribed track plus RTX (a receiver in a room of a few hundred: every speaker who was
/// ever among the loudest, and the cameras), so the bound is set by memory per session
/// (about 100 bytes per SSRC), not by a room size. Only authenticated packets (and our
/// own protected ones) add an SSRC.
pub const MAX_SSRCS: usize = 4096;
/// SSRCs with room reserved when the session is set up (a publisher's audio, three
/// layers and their RTX fit many times over); the table grows past it when a new SSRC
/// arrives, never on a packet of a known one.
const RESERVED_SSRCS: usize = 64;

/// Largest 48-bit SRTP packet index.
const MAX_RTP_INDEX: u64 = (1 << 48) - 1;
/// Largest 31-bit SRTCP index.
const MAX_RTCP_INDEX: u32 = (1 << 31) - 1;

/// Per-SSRC state.
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    ssrc: u32,
    /// Sending: the highest SRTP index protected (ROC << 16 | SEQ).
    rtp_sent: Option<u64>,
    /// Receiving: the SRTP replay window; its highest index gives ROC and s_l.
    rtp_replay: ReplayWindow,
    /// Sending: the next SRTCP index.
    rtcp_next: u32,
    /// Receiving: the SRTCP replay window.
    rtcp_replay: ReplayWindow,
}

impl Stream {
    fn new(ssrc: u32) -> Stream {
        Stream {
            ssrc,
            ..Stream::default()
        }
    }
}

/// The packet index of `seq` given the highest index seen (RFC 3711 Appendix A): the ROC
/// guess that puts the packet closest to the highest one, across a wrap either way.
/// `Err(TooOld)` for a packet from before index 0, `Err(IndexExhausted)` past 2^48.
pub fn estimate_index(highest: Option<u64>, seq: u16) -> Result<u64, SrtpError> {
    let Some(highest) = highest else {
        return Ok(u64::from(seq));
    };
    let roc = highest >> 16;
    let s_l = highest as u16;
    let v = if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            roc.checked_sub(1).ok_or(SrtpError::TooOld)?
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    let index = (v << 16) | u64::from(seq);
    if index > MAX_RTP_INDEX {
        return Err(SrtpError::IndexExhausted);
    }
    Ok(index)
}

/// One direction of SRTP/SRTCP: protect with the local key, or unprotect with the remote
/// key (make one session of each per DTLS association).
pub struct SrtpSession {
    profile: Profile,
    rtp: Transform,
    rtcp: Transform,
    /// The SSRCs in use, in no order; room for [`RESERVED_SSRCS`] from set-up.
    streams: Vec<Stream>,
    /// SSRC → its position in `streams` (a lookup per packet: constant time however many
    /// streams a receiver has).
    positions: HashMap<u32, usize>,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("profile", &self.profile)
            .field("ssrcs", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl SrtpSession {
    /// A session keyed by `master` (derives the SRTP and SRTCP session keys).
    pub fn new(master: &MasterKey) -> Result<SrtpSession, SrtpError> {
        Self::with_session_keys(master.profile(), &SessionKeys::derive(master))
    }

    pub(crate) fn with_session_keys(
        profile: Profile,
        keys: &SessionKeys,
    ) -> Result<SrtpSession, SrtpError> {
        Ok(SrtpSession {
            profile,
            rtp: Transform::new(profile, &keys.rtp)?,
            rtcp: Transform::new(profile, &keys.rtcp)?,
            streams: Vec::with_capacity(RESERVED_SSRCS),
            positions: HashMap::with_capacity(RESERVED_SSRCS),
        })
    }

    /// The session's profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// How many SSRCs the session tracks.
    pub fn ssrc_count(&self) -> usize {
        self.streams.len()
    }

    /// Forgets an SSRC (its stream ended), freeing its slot. Returns whether it was known.
    pub fn remove_ssrc(&mut self, ssrc: u32) -> bool {
        let Some(i) = self.positions.remove(&ssrc) else {
            return false;
        };
        self.streams.swap_remove(i);
        if let Some(moved) = self.streams.get(i) {
            self.positions.insert(moved.ssrc, i);
        }
        true
    }

    fn find(&self, ssrc: u32) -> Option<usize> {
        self.positions.get(&ssrc).copied()
    }

    /// The stream of `ssrc` (a copy to work on) and its slot, or a fresh one if there is
    /// room. Nothing is inserted: [`store`](Self::store) does that after success.
    fn load(&self, ssrc: u32) -> Result<(Option<usize>, Stream), SrtpError> {
        match self
            .find(ssrc)
            .and_then(|i| Some((i, *self.streams.get(i)?)))
        {
            Some((i, stream)) => Ok((Some(i), stream)),
            None if self.streams.len() < MAX_SSRCS => Ok((None, Stream::new(ssrc))),
            None => Err(SrtpError::TooManySsrcs { max: MAX_SSRCS }),
        }
    }

    fn store(&mut self, slot: Option<usize>, stream: Stream) {
        match slot.and_then(|i| self.streams.get_mut(i)) {
            Some(s) => *s = stream,
            None => {
                self.positions.insert(stream.ssrc, self.streams.len());
                self.streams.push(stream);
            }
        }
    }

    fn check_room(buf: &[u8], len: usize, overhead: usize) -> Result<(), SrtpError> {
        if len > buf.len() {
            return Err(SrtpError::Malformed("length exceeds the buffer"));
        }
        let needed = len + overhead;
        if needed > buf.len() {
            return Err(SrtpError::NoRoomForTag {
                needed,
                available: buf.len(),
            });
        }
        Ok(())
    }

    /// Protects the RTP packet `buf[..len]` in place: encrypts its payload and appends the
    /// tag (`buf` needs `profile().rtp_overhead()` bytes of room after it). Returns the
    /// SRTP length. The SSRC's ROC advances when its sequence number wraps.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        Self::check_room(buf, len, self.profile.rtp_overhead())?;
        let header = parse_rtp(&buf[..len])?;
        let (slot, mut stream) = self.load(header.ssrc)?;
        let index = estimate_index(stream.rtp_sent, header.seq)?;
        let out = self
            .rtp
            .protect_rtp(buf, header.len, len, header.ssrc, index)?;
        if stream.rtp_sent.is_none_or(|h| index > h) {
            stream.rtp_sent = Some(index);
        }
        self.store(slot, stream);
        Ok(out)
    }

    /// Unprotects the SRTP packet `buf` (the whole slice is the packet) in place: checks
    /// replay, authenticates, decrypts. Returns the RTP length (`buf[..n]` is the RTP
    /// packet). On error the session is unchanged and the packet must be dropped (its
    /// bytes may have been changed).
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let header = parse_rtp(buf)?;
        if buf.len() < header.len + self.profile.tag_len() {
            return Err(SrtpError::TooShort);
        }
        let (slot, mut stream) = self.load(header.ssrc)?;
        let index = estimate_index(stream.rtp_replay.highest(), header.seq)?;
        stream.rtp_replay.check(index)?;
        let len = buf.len();
        let out = self
            .rtp
            .unprotect_rtp(buf, header.len, len, header.ssrc, index)?;
        stream.rtp_replay.record(index);
        self.store(slot, stream);
        Ok(out)
    }

    /// Protects the RTCP packet (or compound packet) `buf[..len]` in place: encrypts all
    /// but its first 8 bytes and appends the E+index word and the tag (`buf` needs
    /// `profile().rtcp_overhead()` bytes of room). Returns the SRTCP length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        Self::check_room(buf, len, self.profile.rtcp_overhead())?;
        let ssrc = parse_rtcp(&buf[..len])?;
        let (slot, mut stream) = self.load(ssrc)?;
        let index = stream.rtcp_next;
        if index > MAX_RTCP_INDEX {
            return Err(SrtpError::IndexExhausted);
        }
        let out = self.rtcp.protect_rtcp(buf, len, ssrc, index)?;
        stream.rtcp_next = index + 1;
        self.store(slot, stream);
        Ok(out)
    }

    /// Unprotects the SRTCP packet `buf` in place: checks replay on its index,
    /// authenticates, decrypts (when E is set). Returns the RTCP length. On error the
    /// session is unchanged and the packet must be dropped.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let ssrc = parse_rtcp(buf)?;
        let word = self.rtcp.srtcp_index_word(buf)?;
        let (slot, mut stream) = self.load(ssrc)?;
        let index = u64::from(word & !super::cipher::SRTCP_E_FLAG);
        stream.rtcp_replay.check(index)?;
        let out = self.rtcp.unprotect_rtcp(buf, ssrc, word)?;
        debug_assert!(out >= RTCP_CLEAR_LEN);
        stream.rtcp_replay.record(index);
        self.store(slot, stream);
        Ok(out)
    }

    /// Test hook: the next SRTCP index `ssrc` sends with.
    #[cfg(test)]
    pub(crate) fn set_next_srtcp_index(&mut self, ssrc: u32, index: u32) {
        let (slot, mut stream) = self.load(ssrc).expect("room for a stream");
        stream.rtcp_next = index;
        self.store(slot, stream);
    }

    /// Test hook: the ROC both directions assume for `ssrc`, as if packets up to
    /// `(roc, seq)` had been seen.
    #[cfg(test)]
    pub(crate) fn set_rtp_state(&mut self, ssrc: u32, roc: u32, seq: u16) {
        let (slot, mut stream) = self.load(ssrc).expect("room for a stream");
        let index = (u64::from(roc) << 16) | u64::from(seq);
        stream.rtp_sent = Some(index);
        stream.rtp_replay = ReplayWindow::default();
        stream.rtp_replay.record(index);
        self.store(slot, stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_estimate_follows_appendix_a() {
        assert_eq!(estimate_index(None, 7), Ok(7));
        // No wrap.
        assert_eq!(estimate_index(Some(100), 101), Ok(101));
        assert_eq!(estimate_index(Some(100), 50), Ok(50));
        // Forward wrap: highest near the top, a small seq is in the next ROC.
        assert_eq!(estimate_index(Some(65530), 3), Ok(65536 + 3));
        // Backward: highest just after the wrap, a late packet from before it.
        assert_eq!(estimate_index(Some(65536 + 2), 65534), Ok(65534));
        // Before index 0: unusable.
        assert_eq!(estimate_index(Some(2), 65534), Err(SrtpError::TooOld));
        // Exhausted.
        assert_eq!(
            estimate_index(Some(MAX_RTP_INDEX - 1), 3),
            Err(SrtpError::IndexExhausted)
        );
    }
}
