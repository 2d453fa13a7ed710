//! The minimal RTP and RTCP header parsing SRTP needs (RFC 3550 section 5.1 and 6.4):
//! where the encrypted part starts, the sequence number and the SSRC. Bounds-checked;
//! anything malformed is an error, never a panic. The full RTP/RTCP parsers live in
//! `crate::rtp`.

use super::SrtpError;

/// What SRTP reads from an RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Length of the header: fixed part, CSRCs and header extension.
    pub len: usize,
    /// Sequence number.
    pub seq: u16,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// Parses the RTP header at the start of `packet` (which may include SRTP's trailer:
/// only the header's own bounds are checked here).
pub fn parse_rtp(packet: &[u8]) -> Result<RtpHeader, SrtpError> {
    let fixed: &[u8; 12] = packet
        .get(..12)
        .and_then(|b| b.try_into().ok())
        .ok_or(SrtpError::TooShort)?;
    if fixed[0] >> 6 != 2 {
        return Err(SrtpError::Malformed("RTP version is not 2"));
    }
    let csrc_count = usize::from(fixed[0] & 0x0f);
    let mut len = 12 + 4 * csrc_count;
    if fixed[0] & 0x10 != 0 {
        let ext = packet
            .get(len..len + 4)
            .ok_or(SrtpError::Malformed("RTP header extension past the end"))?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        len += 4 + 4 * words;
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed("RTP header past the end"));
    }
    Ok(RtpHeader {
        len,
        seq: u16::from_be_bytes([fixed[2], fixed[3]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    })
}

/// Length of the RTCP part SRTCP leaves in the clear (RFC 3711 section 3.4): the first
/// header word and the sender SSRC.
pub const RTCP_CLEAR_LEN: usize = 8;

/// Checks the first RTCP header and returns the sender SSRC.
pub fn parse_rtcp(packet: &[u8]) -> Result<u32, SrtpError> {
    let head: &[u8; 8] = packet
        .get(..RTCP_CLEAR_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(SrtpError::TooShort)?;
    if head[0] >> 6 != 2 {
        return Err(SrtpError::Malformed("RTCP version is not 2"));
    }
    Ok(u32::from_be_bytes([head[4], head[5], head[6], head[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_with_csrcs_and_extension() {
        let mut p = [0u8; 40];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&0x1234u16.to_be_bytes());
        p[8..12].copy_from_slice(&0xcafebabeu32.to_be_bytes());
        let h = parse_rtp(&p).expect("plain header");
        assert_eq!((h.len, h.seq, h.ssrc), (12, 0x1234, 0xcafebabe));
        p[0] = 0x82; // two CSRCs
        assert_eq!(parse_rtp(&p).expect("csrcs").len, 20);
        p[0] = 0x92; // + extension of 2 words at byte 20
        p[22..24].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(parse_rtp(&p).expect("extension").len, 32);
        p[22..24].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_rtp(&p).expect("extension").len, 36);
        p[22..24].copy_from_slice(&5u16.to_be_bytes());
        assert!(matches!(parse_rtp(&p), Err(SrtpError::Malformed(_))));
        assert!(matches!(parse_rtp(&p[..21]), Err(SrtpError::Malformed(_))));
        assert_eq!(parse_rtp(&p[..11]), Err(SrtpError::TooShort));
        p[0] = 0x40;
        assert!(matches!(parse_rtp(&p), Err(SrtpError::Malformed(_))));
    }
}
