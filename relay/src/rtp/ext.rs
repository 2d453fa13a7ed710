//! The RTP header extensions the SFU reads, by the ids negotiated in SDP (`a=extmap`).
//!
//! Audio level feeds speaker detection, the transport-wide sequence number feeds TWCC
//! feedback, MID / RID / repaired-RID route a packet to its track and simulcast layer
//! before its SSRC is known, and abs-send-time is kept for bandwidth estimation. Every
//! decoder borrows from the packet: no allocation.

use thiserror::Error;

use super::packet::RtpView;

/// A header-extension value that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ExtError {
    /// The value's length is not the one the extension defines.
    #[error("extension value of {have} bytes, expected {want}")]
    Length {
        /// Bytes present.
        have: usize,
        /// Bytes the format defines.
        want: usize,
    },
    /// An SDES MID / RID value is empty or holds a byte outside its token alphabet.
    #[error("SDES identifier is empty or not a token")]
    BadToken,
}

/// URIs of the extensions an [`ExtMap`] holds ids for (as they appear in `a=extmap`).
pub mod uri {
    /// RFC 6464 client-to-mixer audio level.
    pub const AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
    /// draft-holmer-rmcat-transport-wide-cc-extensions-01 sequence number.
    pub const TRANSPORT_CC: &str =
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
    /// RFC 8843 BUNDLE media identification.
    pub const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
    /// RFC 8852 RtpStreamId.
    pub const RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
    /// RFC 8852 RepairedRtpStreamId.
    pub const REPAIRED_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
    /// WebRTC absolute send time (6.18 fixed-point seconds).
    pub const ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
}

/// The extension ids negotiated for one session (`None`: not negotiated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtMap {
    /// RFC 6464 audio level.
    pub audio_level: Option<u8>,
    /// Transport-wide sequence number.
    pub transport_cc: Option<u8>,
    /// SDES MID.
    pub mid: Option<u8>,
    /// SDES RtpStreamId.
    pub rid: Option<u8>,
    /// SDES RepairedRtpStreamId.
    pub repaired_rid: Option<u8>,
    /// abs-send-time.
    pub abs_send_time: Option<u8>,
}

/// RFC 6464 audio level: the V flag and the level in -dBov (0 loudest, 127 silence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel {
    /// The sender's voice-activity flag.
    pub voice: bool,
    /// Level in -dBov, 0..=127.
    pub level_dbov: u8,
}

/// The known extensions of one packet, decoded in one walk of its elements. A value that
/// is absent, not negotiated or malformed is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KnownExtensions<'a> {
    /// Audio level.
    pub audio_level: Option<AudioLevel>,
    /// Transport-wide sequence number.
    pub transport_seq: Option<u16>,
    /// MID.
    pub mid: Option<&'a str>,
    /// RID.
    pub rid: Option<&'a str>,
    /// Repaired RID.
    pub repaired_rid: Option<&'a str>,
    /// abs-send-time, 24-bit 6.18 fixed-point seconds.
    pub abs_send_time: Option<u32>,
}

impl ExtMap {
    /// Which known extension an id is bound to, by the URI from `a=extmap`; unknown URIs
    /// are ignored. Ids must be 1..=255 (1..=14 for the one-byte form).
    pub fn bind(&mut self, id: u8, uri: &str) {
        let slot = match uri {
            uri::AUDIO_LEVEL => &mut self.audio_level,
            uri::TRANSPORT_CC => &mut self.transport_cc,
            uri::MID => &mut self.mid,
            uri::RID => &mut self.rid,
            uri::REPAIRED_RID => &mut self.repaired_rid,
            uri::ABS_SEND_TIME => &mut self.abs_send_time,
            _ => return,
        };
        if id != 0 {
            *slot = Some(id);
        }
    }

    /// Decodes the negotiated extensions of a packet in one pass over its elements.
    pub fn read<'a>(&self, packet: &RtpView<'a>) -> KnownExtensions<'a> {
        let mut out = KnownExtensions::default();
        for (id, data) in packet.extensions() {
            let id = Some(id);
            if id == self.audio_level {
                out.audio_level = audio_level(data).ok();
            } else if id == self.transport_cc {
                out.transport_seq = transport_sequence(data).ok();
            } else if id == self.mid {
                out.mid = sdes_mid(data).ok();
            } else if id == self.rid {
                out.rid = sdes_rid(data).ok();
            } else if id == self.repaired_rid {
                out.repaired_rid = sdes_rid(data).ok();
            } else if id == self.abs_send_time {
                out.abs_send_time = abs_send_time(data).ok();
            }
        }
        out
    }
}

fn exact<const N: usize>(data: &[u8]) -> Result<[u8; N], ExtError> {
    data.try_into().map_err(|_| ExtError::Length {
        have: data.len(),
        want: N,
    })
}

/// RFC 6464 §3: one byte, V flag in the top bit, level in -dBov below it.
pub fn audio_level(data: &[u8]) -> Result<AudioLevel, ExtError> {
    let [b] = exact::<1>(data)?;
    Ok(AudioLevel {
        voice: b & 0x80 != 0,
        level_dbov: b & 0x7F,
    })
}

/// Encodes an RFC 6464 audio-level byte (level clamped to 127).
pub fn encode_audio_level(level: AudioLevel) -> u8 {
    (if level.voice { 0x80 } else { 0 }) | level.level_dbov.min(127)
}

/// Transport-wide sequence number: 16 bits, network order.
pub fn transport_sequence(data: &[u8]) -> Result<u16, ExtError> {
    Ok(u16::from_be_bytes(exact::<2>(data)?))
}

/// abs-send-time: 24 bits, 6.18 fixed-point seconds.
pub fn abs_send_time(data: &[u8]) -> Result<u32, ExtError> {
    let [a, b, c] = exact::<3>(data)?;
    Ok(u32::from_be_bytes([0, a, b, c]))
}

/// Trailing NUL bytes some senders pad SDES values with are not part of the value.
fn trim_nuls(data: &[u8]) -> &[u8] {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &data[..end]
}

fn token(data: &[u8], allowed: impl Fn(u8) -> bool) -> Result<&str, ExtError> {
    let data = trim_nuls(data);
    if data.is_empty() || !data.iter().all(|&b| allowed(b)) {
        return Err(ExtError::BadToken);
    }
    // All bytes are ASCII, hence UTF-8.
    std::str::from_utf8(data).map_err(|_| ExtError::BadToken)
}

/// SDES MID (RFC 8843 §15.2): an RFC 4566 `token` (visible ASCII but separators).
pub fn sdes_mid(data: &[u8]) -> Result<&str, ExtError> {
    token(data, |b| {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&b)
    })
}

/// SDES RtpStreamId / RepairedRtpStreamId (RFC 8852, alphabet of RFC 8851's `rid-id`:
/// alphanumerics, `-` and `_`).
pub fn sdes_rid(data: &[u8]) -> Result<&str, ExtError> {
    token(data, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_with(elements: &[u8]) -> Vec<u8> {
        let mut p = vec![0x90, 111, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xBE, 0xDE];
        let mut body = elements.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        p.extend_from_slice(&u16::try_from(body.len() / 4).expect("small").to_be_bytes());
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn decoders() {
        assert_eq!(
            audio_level(&[0x80 | 42]),
            Ok(AudioLevel {
                voice: true,
                level_dbov: 42
            })
        );
        assert_eq!(
            audio_level(&[127]),
            Ok(AudioLevel {
                voice: false,
                level_dbov: 127
            })
        );
        assert_eq!(
            audio_level(&[1, 2]),
            Err(ExtError::Length { have: 2, want: 1 })
        );
        let l = AudioLevel {
            voice: true,
            level_dbov: 200,
        };
        assert_eq!(encode_audio_level(l), 0xFF);
        assert_eq!(transport_sequence(&[0xFF, 0xFE]), Ok(65534));
        assert!(transport_sequence(&[1]).is_err());
        assert_eq!(abs_send_time(&[1, 2, 3]), Ok(0x010203));
        assert_eq!(sdes_mid(b"0"), Ok("0"));
        assert_eq!(sdes_mid(b"audio.1\0\0"), Ok("audio.1"));
        assert_eq!(sdes_mid(b""), Err(ExtError::BadToken));
        assert_eq!(sdes_mid(b"a b"), Err(ExtError::BadToken));
        assert_eq!(sdes_rid(b"hi-res_1"), Ok("hi-res_1"));
        assert_eq!(sdes_rid(b"q.1"), Err(ExtError::BadToken));
        assert_eq!(sdes_rid(&[0xC3, 0xA9]), Err(ExtError::BadToken));
    }

    #[test]
    fn extmap_reads_one_packet() {
        let mut map = ExtMap::default();
        map.bind(1, uri::AUDIO_LEVEL);
        map.bind(3, uri::TRANSPORT_CC);
        map.bind(4, uri::MID);
        map.bind(10, uri::RID);
        map.bind(11, uri::REPAIRED_RID);
        map.bind(2, uri::ABS_SEND_TIME);
        map.bind(5, "urn:unknown");
        assert_eq!(map.audio_level, Some(1));
        assert_eq!(map.abs_send_time, Some(2));
        let p = packet_with(&[
            0x10,
            0x80 | 30, // audio level
            0x31,
            0x12,
            0x34, // twcc
            0x40,
            b'1', // mid "1"
            0xA0 | 0x01,
            b'h',
            b'i', // rid "hi"
            0xB0,
            b'l', // repaired rid "l"
            0x22,
            0,
            0,
            9, // abs-send-time
            0x50,
            0xFF, // unbound id 5
        ]);
        let v = RtpView::parse(&p).expect("valid");
        let k = map.read(&v);
        assert_eq!(
            k,
            KnownExtensions {
                audio_level: Some(AudioLevel {
                    voice: true,
                    level_dbov: 30
                }),
                transport_seq: Some(0x1234),
                mid: Some("1"),
                rid: Some("hi"),
                repaired_rid: Some("l"),
                abs_send_time: Some(9),
            }
        );
        // Nothing negotiated: nothing decoded.
        assert_eq!(ExtMap::default().read(&v), KnownExtensions::default());
        // Malformed values are None, the others still decode.
        let p = packet_with(&[0x11, 1, 2, 0x31, 0, 7]);
        let k = map.read(&RtpView::parse(&p).expect("valid"));
        assert_eq!(k.audio_level, None);
        assert_eq!(k.transport_seq, Some(7));
    }
}
