//! What the forwarder must know about a video or audio RTP payload without decoding it:
//! does a keyframe start here (a receiver may only switch to a stream there), does a frame
//! start here, and where are the VP8 picture id and TL0PICIDX (a receiver that switches
//! between simulcast layers must see them continue, so they are rewritten in place).
//!
//! Parsers take the RTP payload (after the RTP header and its extensions) and never panic:
//! a malformed payload is a [`CodecError`], and the caller drops the packet.

use thiserror::Error;

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
    /// A field the headers announce lies past the end of the payload.
    #[error("payload truncated")]
    Truncated,
    /// H.264: the forbidden_zero_bit of a NAL unit header is set.
    #[error("H.264 NAL header with the forbidden bit set")]
    ForbiddenBit,
    /// H.264: a NAL unit type that packetization-mode 1 does not carry (0, 25-27, 29-31).
    #[error("H.264 NAL unit type {0} not allowed in packetization-mode 1")]
    UnsupportedNalType(u8),
    /// H.264: a STAP-A with no aggregated NAL unit, or one of size zero.
    #[error("H.264 STAP-A with an empty aggregation unit")]
    EmptyAggregate,
}

/// The codecs the SFU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus audio (RFC 7587): every packet stands alone.
    Opus,
    /// VP8 video (RFC 7741).
    Vp8,
    /// H.264 video (RFC 6184), packetization-mode 1.
    H264,
}

impl From<crate::sdp::Codec> for Codec {
    fn from(c: crate::sdp::Codec) -> Self {
        match c {
            crate::sdp::Codec::Opus => Codec::Opus,
            crate::sdp::Codec::Vp8 => Codec::Vp8,
            crate::sdp::Codec::H264 => Codec::H264,
        }
    }
}

/// What [`parse`] learned from one payload, for any codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// A decoder can start here: a VP8 key frame's first packet, an H.264 IDR or SPS
    /// starting in this packet, or any Opus packet.
    pub keyframe: bool,
    /// The packet starts a frame (picture or audio frame).
    pub start_of_frame: bool,
    /// The VP8 descriptor's fields, for VP8 payloads.
    pub vp8: Option<Vp8Info>,
}

impl FrameInfo {
    /// A switch may happen here: a keyframe starts in this packet.
    pub fn is_keyframe_start(&self) -> bool {
        self.keyframe && self.start_of_frame
    }
}

/// Reads `payload` as `codec`.
pub fn parse(codec: Codec, payload: &[u8]) -> Result<FrameInfo, CodecError> {
    match codec {
        Codec::Opus => Ok(FrameInfo {
            keyframe: true,
            start_of_frame: true,
            vp8: None,
        }),
        Codec::Vp8 => {
            let v = parse_vp8(payload)?;
            Ok(FrameInfo {
                keyframe: v.keyframe,
                start_of_frame: v.start_of_frame,
                vp8: Some(v),
            })
        }
        Codec::H264 => {
            let h = parse_h264(payload)?;
            Ok(FrameInfo {
                keyframe: h.keyframe,
                start_of_frame: h.start_of_frame,
                vp8: None,
            })
        }
    }
}

// ---------------------------------------------------------------- VP8 (RFC 7741) ----

/// The VP8 payload descriptor of one packet (RFC 7741 section 4.2) and the key-frame bit
/// of the VP8 payload header (section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Info {
    /// The first packet of a key frame: S=1, PID=0 and the payload header's P bit is 0.
    pub keyframe: bool,
    /// S=1 and PID=0: the first packet of a frame.
    pub start_of_frame: bool,
    /// N: the frame is not used as a reference by any other frame.
    pub non_reference: bool,
    /// The partition index (PID).
    pub partition: u8,
    /// PictureID and whether it is the 15-bit form (M=1) or the 7-bit one.
    pub picture_id: Option<(u16, bool)>,
    /// TL0PICIDX (L=1).
    pub tl0picidx: Option<u8>,
    /// The temporal layer index (T=1).
    pub tid: Option<u8>,
    /// Y: layer sync (meaningful when T=1).
    pub layer_sync: bool,
    /// KEYIDX (K=1).
    pub keyidx: Option<u8>,
    /// Length of the payload descriptor: the VP8 payload starts at this offset.
    pub header_len: usize,
    picture_id_offset: Option<usize>,
    tl0picidx_offset: Option<usize>,
}

fn byte_at(p: &[u8], i: usize) -> Result<u8, CodecError> {
    p.get(i).copied().ok_or(CodecError::Truncated)
}

/// Reads the VP8 payload descriptor and, at the start of partition 0, the key-frame bit.
pub fn parse_vp8(payload: &[u8]) -> Result<Vp8Info, CodecError> {
    let b0 = *payload.first().ok_or(CodecError::Empty)?;
    let x = b0 & 0x80 != 0;
    let non_reference = b0 & 0x20 != 0;
    let s = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    let mut i = 1;
    let mut info = Vp8Info {
        keyframe: false,
        start_of_frame: s && partition == 0,
        non_reference,
        partition,
        picture_id: None,
        tl0picidx: None,
        tid: None,
        layer_sync: false,
        keyidx: None,
        header_len: 0,
        picture_id_offset: None,
        tl0picidx_offset: None,
    };
    if x {
        let ext = byte_at(payload, i)?;
        i += 1;
        let (has_i, has_l, has_t, has_k) = (
            ext & 0x80 != 0,
            ext & 0x40 != 0,
            ext & 0x20 != 0,
            ext & 0x10 != 0,
        );
        if has_i {
            let p0 = byte_at(payload, i)?;
            info.picture_id_offset = Some(i);
            if p0 & 0x80 != 0 {
                let p1 = byte_at(payload, i + 1)?;
                info.picture_id = Some(((u16::from(p0 & 0x7f) << 8) | u16::from(p1), true));
                i += 2;
            } else {
                info.picture_id = Some((u16::from(p0), false));
                i += 1;
            }
        }
        if has_l {
            info.tl0picidx = Some(byte_at(payload, i)?);
            info.tl0picidx_offset = Some(i);
            i += 1;
        }
        if has_t || has_k {
            let tk = byte_at(payload, i)?;
            i += 1;
            if has_t {
                info.tid = Some(tk >> 6);
                info.layer_sync = tk & 0x20 != 0;
            }
            if has_k {
                info.keyidx = Some(tk & 0x1f);
            }
        }
    }
    info.header_len = i;
    if info.start_of_frame {
        // The VP8 payload header: |Size0|H|VER|P|, P (inverse key frame flag) in bit 0.
        let h = byte_at(payload, i)?;
        info.keyframe = h & 0x01 == 0;
    }
    Ok(info)
}

/// Rewrites the picture id and TL0PICIDX of a VP8 payload in place, keeping each field's
/// width: a 7-bit picture id gets the low 7 bits of `picture_id`, a 15-bit one the low
/// 15 bits. A field the packet does not carry is left alone (`None` leaves it as is).
/// Returns the descriptor as read before the rewrite.
pub fn rewrite_vp8(
    payload: &mut [u8],
    picture_id: Option<u16>,
    tl0picidx: Option<u8>,
) -> Result<Vp8Info, CodecError> {
    let info = parse_vp8(payload)?;
    if let (Some(pid), Some(off), Some((_, long))) =
        (picture_id, info.picture_id_offset, info.picture_id)
    {
        if long {
            let [hi, lo] = pid.to_be_bytes();
            if let Some(b) = payload.get_mut(off..off + 2) {
                b[0] = 0x80 | (hi & 0x7f);
                b[1] = lo;
            }
        } else if let Some(b) = payload.get_mut(off) {
            *b = (pid & 0x7f) as u8;
        }
    }
    if let (Some(t), Some(off)) = (tl0picidx, info.tl0picidx_offset)
        && let Some(b) = payload.get_mut(off)
    {
        *b = t;
    }
    Ok(info)
}

// ------------------------------------------------------------- H.264 (RFC 6184) ----

/// H.264 NAL unit types the forwarder looks at.
pub mod nal {
    /// A coded slice of a non-IDR picture.
    pub const SLICE: u8 = 1;
    /// A coded slice of an IDR picture: a decoder can start here.
    pub const IDR: u8 = 5;
    /// Supplemental enhancement information.
    pub const SEI: u8 = 6;
    /// Sequence parameter set: precedes an IDR in a keyframe.
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
    /// Access unit delimiter.
    pub const AUD: u8 = 9;
    /// Single-time aggregation packet.
    pub const STAP_A: u8 = 24;
    /// Fragmentation unit.
    pub const FU_A: u8 = 28;
}

/// What one H.264 RTP payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Info {
    /// An IDR slice or an SPS starts in this packet.
    pub keyframe: bool,
    /// An access unit (picture) starts in this packet: an SPS, PPS, SEI or AUD, or the
    /// first slice of a picture (first_mb_in_slice = 0).
    pub start_of_frame: bool,
    /// The packet type: 1-23 for a single NAL unit, 24 for STAP-A, 28 for FU-A.
    pub packet_type: u8,
}

/// Does a NAL unit (header byte `hdr`, then `rest`) start a picture? For slices this reads
/// first_mb_in_slice, the first ue(v) of the slice header: it is 0 exactly when its first
/// bit is 1.
fn nal_starts_frame(nal_type: u8, rest: &[u8]) -> bool {
    match nal_type {
        nal::SLICE | nal::IDR => rest.first().is_some_and(|b| b & 0x80 != 0),
        nal::SEI | nal::SPS | nal::PPS | nal::AUD => true,
        _ => false,
    }
}

fn nal_header(b: u8) -> Result<u8, CodecError> {
    if b & 0x80 != 0 {
        return Err(CodecError::ForbiddenBit);
    }
    Ok(b & 0x1f)
}

/// Reads an H.264 payload of packetization-mode 1: a single NAL unit, a STAP-A (every
/// aggregated unit is scanned) or an FU-A.
pub fn parse_h264(payload: &[u8]) -> Result<H264Info, CodecError> {
    let b0 = *payload.first().ok_or(CodecError::Empty)?;
    let t = nal_header(b0)?;
    match t {
        1..=23 => {
            let rest = &payload[1..];
            Ok(H264Info {
                keyframe: t == nal::IDR || t == nal::SPS,
                start_of_frame: nal_starts_frame(t, rest),
                packet_type: t,
            })
        }
        nal::STAP_A => {
            let mut rest = &payload[1..];
            let mut info = H264Info {
                keyframe: false,
                start_of_frame: false,
                packet_type: t,
            };
            if rest.is_empty() {
                return Err(CodecError::EmptyAggregate);
            }
            while !rest.is_empty() {
                let [hi, lo] = rest
                    .get(..2)
                    .and_then(|s| <[u8; 2]>::try_from(s).ok())
                    .ok_or(CodecError::Truncated)?;
                let size = usize::from(u16::from_be_bytes([hi, lo]));
                if size == 0 {
                    return Err(CodecError::EmptyAggregate);
                }
                let unit = rest.get(2..2 + size).ok_or(CodecError::Truncated)?;
                let ut = nal_header(unit[0])?;
                info.keyframe |= ut == nal::IDR || ut == nal::SPS;
                info.start_of_frame |= nal_starts_frame(ut, &unit[1..]);
                rest = &rest[2 + size..];
            }
            Ok(info)
        }
        nal::FU_A => {
            let fu = byte_at(payload, 1)?;
            let start = fu & 0x80 != 0;
            let ft = fu & 0x1f;
            if payload.len() < 3 {
                return Err(CodecError::Truncated);
            }
            Ok(H264Info {
                keyframe: start && (ft == nal::IDR || ft == nal::SPS),
                start_of_frame: start && nal_starts_frame(ft, &payload[2..]),
                packet_type: t,
            })
        }
        other => Err(CodecError::UnsupportedNalType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vp8_minimal_descriptor() {
        let key = parse_vp8(&[0x10, 0x00, 0x00, 0x00]).expect("key");
        assert!(key.keyframe && key.start_of_frame);
        assert_eq!(key.header_len, 1);
        assert_eq!(key.picture_id, None);
        let delta = parse_vp8(&[0x10, 0x01]).expect("delta");
        assert!(!delta.keyframe && delta.start_of_frame);
        // S=0: a continuation, never a keyframe whatever the next byte says.
        let cont = parse_vp8(&[0x00, 0x00]).expect("cont");
        assert!(!cont.keyframe && !cont.start_of_frame);
        // S=1 but partition 1: not the frame's first packet.
        let p1 = parse_vp8(&[0x11, 0x00]).expect("p1");
        assert!(!p1.keyframe && !p1.start_of_frame);
        assert_eq!(p1.partition, 1);
        // N bit.
        assert!(parse_vp8(&[0x30, 0x01]).expect("n").non_reference);
    }

    #[test]
    fn vp8_seven_bit_picture_id() {
        let v = parse_vp8(&[0x90, 0x80, 0x05, 0x00]).expect("7-bit");
        assert_eq!(v.picture_id, Some((5, false)));
        assert!(v.keyframe);
        assert_eq!(v.header_len, 3);
        assert_eq!(v.tl0picidx, None);
    }

    #[test]
    fn vp8_full_extension() {
        let v = parse_vp8(&[0x90, 0xf0, 0x92, 0x34, 0x07, 0b1010_0011, 0x01]).expect("full");
        assert_eq!(v.picture_id, Some((0x1234, true)));
        assert_eq!(v.tl0picidx, Some(7));
        assert_eq!(v.tid, Some(2));
        assert!(v.layer_sync);
        assert_eq!(v.keyidx, Some(3));
        assert_eq!(v.header_len, 6);
        assert!(v.start_of_frame && !v.keyframe);
        // The same descriptor with P=0 in the payload header: a keyframe.
        let k = parse_vp8(&[0x90, 0xf0, 0x92, 0x34, 0x07, 0b1010_0011, 0x10]).expect("key");
        assert!(k.keyframe);
    }

    #[test]
    fn vp8_k_without_t_and_l_with_t() {
        let v = parse_vp8(&[0x90, 0x10, 0x05, 0x00]).expect("K only");
        assert_eq!((v.tid, v.keyidx, v.header_len), (None, Some(5), 3));
        let v = parse_vp8(&[0x80, 0x60, 0x09, 0x40]).expect("L+T");
        assert_eq!((v.tl0picidx, v.tid, v.keyidx), (Some(9), Some(1), None));
        assert!(!v.start_of_frame && !v.keyframe);
    }

    #[test]
    fn vp8_truncated() {
        assert_eq!(parse_vp8(&[]), Err(CodecError::Empty));
        assert_eq!(parse_vp8(&[0x90]), Err(CodecError::Truncated));
        assert_eq!(parse_vp8(&[0x90, 0x80]), Err(CodecError::Truncated));
        assert_eq!(parse_vp8(&[0x90, 0x80, 0x80]), Err(CodecError::Truncated));
        assert_eq!(parse_vp8(&[0x90, 0x40]), Err(CodecError::Truncated));
        assert_eq!(parse_vp8(&[0x90, 0x20]), Err(CodecError::Truncated));
        // The start of partition 0 needs the payload header's first byte.
        assert_eq!(parse_vp8(&[0x10]), Err(CodecError::Truncated));
        assert_eq!(parse_vp8(&[0x90, 0x80, 0x05]), Err(CodecError::Truncated));
    }

    #[test]
    fn vp8_rewrite_keeps_width() {
        let mut p = [0x90, 0xc0, 0x92, 0x34, 0x07, 0x01];
        rewrite_vp8(&mut p, Some(0x0abc), Some(200)).expect("rewrite");
        assert_eq!(p, [0x90, 0xc0, 0x8a, 0xbc, 200, 0x01]);
        let v = parse_vp8(&p).expect("reparse");
        assert_eq!(v.picture_id, Some((0x0abc, true)));
        assert_eq!(v.tl0picidx, Some(200));

        let mut p = [0x90, 0x80, 0x05, 0x00];
        rewrite_vp8(&mut p, Some(200), Some(3)).expect("rewrite 7-bit");
        assert_eq!(
            p,
            [0x90, 0x80, 200 & 0x7f, 0x00],
            "7 bits kept, no TL0 to write"
        );
        // None leaves a field alone.
        let mut p = [0x90, 0xc0, 0x92, 0x34, 0x07, 0x01];
        rewrite_vp8(&mut p, None, Some(8)).expect("tl0 only");
        assert_eq!(p, [0x90, 0xc0, 0x92, 0x34, 8, 0x01]);
        assert_eq!(
            rewrite_vp8(&mut [0x90], Some(1), None),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn h264_single_nal() {
        let idr = parse_h264(&[0x65, 0x88, 0x84]).expect("idr");
        assert!(idr.keyframe && idr.start_of_frame);
        assert_eq!(idr.packet_type, 5);
        let sps = parse_h264(&[0x67, 0x42, 0x00, 0x1f]).expect("sps");
        assert!(sps.keyframe && sps.start_of_frame);
        let pps = parse_h264(&[0x68, 0xce]).expect("pps");
        assert!(!pps.keyframe && pps.start_of_frame);
        let slice = parse_h264(&[0x41, 0x9a]).expect("slice");
        assert!(!slice.keyframe && slice.start_of_frame);
        // first_mb_in_slice != 0: a later slice of the same picture.
        let later = parse_h264(&[0x41, 0x40]).expect("later slice");
        assert!(!later.keyframe && !later.start_of_frame);
        let later_idr = parse_h264(&[0x65, 0x40]).expect("later idr slice");
        assert!(later_idr.keyframe && !later_idr.start_of_frame);
    }

    #[test]
    fn h264_stap_a() {
        let sps_pps = [
            0x78, 0x00, 0x04, 0x67, 0x42, 0x00, 0x1f, 0x00, 0x02, 0x68, 0xce,
        ];
        let v = parse_h264(&sps_pps).expect("stap sps pps");
        assert!(v.keyframe && v.start_of_frame);
        assert_eq!(v.packet_type, 24);
        // The IDR is the last aggregated unit: still found.
        let late_idr = [0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x02, 0x65, 0x88];
        assert!(parse_h264(&late_idr).expect("aud idr").keyframe);
        let no_key = [0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x02, 0x41, 0x9a];
        let v = parse_h264(&no_key).expect("aud slice");
        assert!(!v.keyframe && v.start_of_frame);
        assert_eq!(parse_h264(&[0x78]), Err(CodecError::EmptyAggregate));
        assert_eq!(
            parse_h264(&[0x78, 0x00, 0x00, 0x65]),
            Err(CodecError::EmptyAggregate)
        );
        assert_eq!(
            parse_h264(&[0x78, 0x00, 0x05, 0x65, 0x88]),
            Err(CodecError::Truncated)
        );
        assert_eq!(
            parse_h264(&[0x78, 0x00, 0x02, 0x68, 0xce, 0x00]),
            Err(CodecError::Truncated)
        );
        assert_eq!(
            parse_h264(&[0x78, 0x00, 0x01, 0xe5]),
            Err(CodecError::ForbiddenBit)
        );
    }

    #[test]
    fn h264_fu_a() {
        let start = parse_h264(&[0x7c, 0x85, 0x88, 0x00]).expect("fu start idr");
        assert!(start.keyframe && start.start_of_frame);
        assert_eq!(start.packet_type, 28);
        let middle = parse_h264(&[0x7c, 0x05, 0x12]).expect("fu middle idr");
        assert!(!middle.keyframe && !middle.start_of_frame);
        let end = parse_h264(&[0x7c, 0x45, 0x12]).expect("fu end idr");
        assert!(!end.keyframe && !end.start_of_frame);
        let p = parse_h264(&[0x5c, 0x81, 0x9a]).expect("fu start p");
        assert!(!p.keyframe && p.start_of_frame);
        assert_eq!(parse_h264(&[0x7c]), Err(CodecError::Truncated));
        assert_eq!(parse_h264(&[0x7c, 0x85]), Err(CodecError::Truncated));
    }

    #[test]
    fn h264_rejects() {
        assert_eq!(parse_h264(&[]), Err(CodecError::Empty));
        assert_eq!(parse_h264(&[0xe5, 0x88]), Err(CodecError::ForbiddenBit));
        for t in [0u8, 25, 26, 27, 29, 30, 31] {
            assert_eq!(
                parse_h264(&[0x60 | t, 0x00, 0x00]),
                Err(CodecError::UnsupportedNalType(t))
            );
        }
    }

    #[test]
    fn generic_parse() {
        let o = parse(Codec::Opus, &[]).expect("opus");
        assert!(o.is_keyframe_start() && o.vp8.is_none());
        let v = parse(Codec::Vp8, &[0x90, 0x80, 0x05, 0x00]).expect("vp8");
        assert!(v.is_keyframe_start());
        assert_eq!(v.vp8.and_then(|v| v.picture_id), Some((5, false)));
        let h = parse(Codec::H264, &[0x7c, 0x05, 0x12]).expect("h264");
        assert!(!h.is_keyframe_start());
        assert_eq!(parse(Codec::Vp8, &[]), Err(CodecError::Empty));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            for c in [Codec::Opus, Codec::Vp8, Codec::H264] {
                let _ = parse(c, &data);
            }
        }

        #[test]
        fn vp8_rewrite_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..32),
            pid in any::<u16>(),
            tl0 in any::<u8>(),
        ) {
            let mut buf = data.clone();
            match rewrite_vp8(&mut buf, Some(pid), Some(tl0)) {
                Err(e) => {
                    prop_assert_eq!(parse_vp8(&data), Err(e));
                    prop_assert_eq!(&buf, &data);
                }
                Ok(before) => {
                    let after = parse_vp8(&buf).expect("a rewrite keeps the descriptor valid");
                    prop_assert_eq!(after.header_len, before.header_len);
                    prop_assert_eq!(after.keyframe, before.keyframe);
                    prop_assert_eq!(&buf[after.header_len..], &data[before.header_len..]);
                    if let Some((_, long)) = before.picture_id {
                        let mask = if long { 0x7fff } else { 0x7f };
                        prop_assert_eq!(after.picture_id, Some((pid & mask, long)));
                    }
                    if before.tl0picidx.is_some() {
                        prop_assert_eq!(after.tl0picidx, Some(tl0));
                    }
                }
            }
        }
    }
}
