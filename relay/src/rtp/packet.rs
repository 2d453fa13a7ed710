//! The RTP packet (RFC 3550 §5.1) as a zero-copy view, an in-place rewriter, and the
//! first-byte demultiplexer of a BUNDLEd, rtcp-muxed 5-tuple (RFC 7983, RFC 5761).
//!
//! The SFU reads every incoming media packet and rewrites SSRC, sequence number,
//! timestamp and some header-extension values for every receiver, so parsing is one
//! bounds-checked pass that records where things are, and every later access is a slice
//! index that cannot fail. Malformed input is a typed error, never a panic.

use std::ops::Range;

use thiserror::Error;

/// Length of the fixed RTP header.
pub const FIXED_HEADER_LEN: usize = 12;
/// The "defined by profile" value of the one-byte header-extension form (RFC 8285 §4.2).
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// The two-byte form (RFC 8285 §4.3): 0x100 in the top 12 bits, 4 application bits.
pub const TWO_BYTE_PROFILE_MASK: u16 = 0xFFF0;
/// See [`TWO_BYTE_PROFILE_MASK`].
pub const TWO_BYTE_PROFILE: u16 = 0x1000;

/// Why bytes are not an RTP packet, or why an in-place rewrite was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("shorter than the 12-byte RTP header")]
    TooShort,
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC count announces more identifiers than the packet holds.
    #[error("CSRC list runs past the end of the packet")]
    TruncatedCsrcs,
    /// The X bit is set but the extension header or its body runs past the end.
    #[error("header extension runs past the end of the packet")]
    TruncatedExtension,
    /// An RFC 8285 element's length runs past the extension block.
    #[error("header extension element runs past its block")]
    BadExtensionElement,
    /// The P bit is set but the count is 0 or larger than what follows the header.
    #[error("padding count 0 or larger than the payload")]
    BadPadding,
    /// No extension element with this id (or the packet has no RFC 8285 extension).
    #[error("no header extension element with id {0}")]
    ExtensionNotFound(u8),
    /// An in-place extension rewrite must keep the element's length.
    #[error("extension element holds {have} bytes, the new value {want}")]
    ExtensionLength {
        /// Bytes the element holds.
        have: usize,
        /// Bytes of the new value.
        want: usize,
    },
    /// A payload type must fit in 7 bits.
    #[error("payload type {0} does not fit in 7 bits")]
    BadPayloadType(u8),
}

/// Which header-extension form a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionForm {
    /// RFC 8285 one-byte headers (profile 0xBEDE).
    OneByte,
    /// RFC 8285 two-byte headers (profile 0x100X); `appbits` is the low nibble.
    TwoByte {
        /// The 4 application bits.
        appbits: u8,
    },
    /// A profile-specific extension that is not RFC 8285: its elements are not walked.
    Other(u16),
}

impl ExtensionForm {
    fn from_profile(profile: u16) -> Self {
        if profile == ONE_BYTE_PROFILE {
            Self::OneByte
        } else if profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE {
            Self::TwoByte {
                appbits: (profile & 0x000F) as u8,
            }
        } else {
            Self::Other(profile)
        }
    }
}

/// Where the parts of a validated packet are (all offsets are within the packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    csrc_count: u8,
    /// Form and the element area (after the 4-byte extension header).
    extension: Option<(ExtensionForm, usize, usize)>,
    header_len: usize,
    payload_end: usize,
    padding_len: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One step of the RFC 8285 element walk over `block` (the element area) from `*pos`.
/// `Ok(None)` at the end (or at one-byte id 15); elements are (id, value range in block).
fn next_element(
    one_byte: bool,
    block: &[u8],
    pos: &mut usize,
) -> Result<Option<(u8, Range<usize>)>, RtpError> {
    while *pos < block.len() {
        let b = block[*pos];
        if b == 0 {
            // Padding byte, in both forms.
            *pos += 1;
            continue;
        }
        let (id, start, len) = if one_byte {
            let id = b >> 4;
            if id == 15 {
                *pos = block.len();
                return Ok(None);
            }
            (id, *pos + 1, usize::from(b & 0x0F) + 1)
        } else {
            let Some(&len) = block.get(*pos + 1) else {
                return Err(RtpError::BadExtensionElement);
            };
            (b, *pos + 2, usize::from(len))
        };
        let end = start + len;
        if end > block.len() {
            return Err(RtpError::BadExtensionElement);
        }
        *pos = end;
        return Ok(Some((id, start..end)));
    }
    Ok(None)
}

fn parse_layout(b: &[u8]) -> Result<Layout, RtpError> {
    if b.len() < FIXED_HEADER_LEN {
        return Err(RtpError::TooShort);
    }
    let version = b[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let csrc_count = b[0] & 0x0F;
    let mut header_len = FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
    if header_len > b.len() {
        return Err(RtpError::TruncatedCsrcs);
    }
    let mut extension = None;
    if b[0] & 0x10 != 0 {
        if header_len + 4 > b.len() {
            return Err(RtpError::TruncatedExtension);
        }
        let profile = be16(b, header_len);
        let words = usize::from(be16(b, header_len + 2));
        let start = header_len + 4;
        let end = start + 4 * words;
        if end > b.len() {
            return Err(RtpError::TruncatedExtension);
        }
        let form = ExtensionForm::from_profile(profile);
        if form != ExtensionForm::Other(profile) {
            let block = &b[start..end];
            let mut pos = 0;
            while next_element(form == ExtensionForm::OneByte, block, &mut pos)?.is_some() {}
        }
        extension = Some((form, start, end));
        header_len = end;
    }
    let mut padding_len = 0;
    if b[0] & 0x20 != 0 {
        // The last byte counts the padding, itself included.
        let count = usize::from(b[b.len() - 1]);
        if count == 0 || header_len + count > b.len() {
            return Err(RtpError::BadPadding);
        }
        padding_len = count;
    }
    Ok(Layout {
        csrc_count,
        extension,
        header_len,
        payload_end: b.len() - padding_len,
        padding_len,
    })
}

/// A validated RTP packet borrowed from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct RtpView<'a> {
    bytes: &'a [u8],
    layout: Layout,
}

impl<'a> RtpView<'a> {
    /// Validates `bytes` as one RTP packet: version 2, CSRC list, header extension (and
    /// its RFC 8285 elements for the one- and two-byte forms), padding.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RtpError> {
        let layout = parse_layout(bytes)?;
        Ok(Self { bytes, layout })
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The M bit.
    pub fn marker(&self) -> bool {
        self.bytes[1] & 0x80 != 0
    }

    /// The 7-bit payload type.
    pub fn payload_type(&self) -> u8 {
        self.bytes[1] & 0x7F
    }

    /// The 16-bit sequence number.
    pub fn sequence(&self) -> u16 {
        be16(self.bytes, 2)
    }

    /// The RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        be32(self.bytes, 4)
    }

    /// The synchronisation source.
    pub fn ssrc(&self) -> u32 {
        be32(self.bytes, 8)
    }

    /// How many contributing sources follow the fixed header.
    pub fn csrc_count(&self) -> usize {
        usize::from(self.layout.csrc_count)
    }

    /// The contributing sources, in order.
    pub fn csrcs(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        let bytes = self.bytes;
        (0..self.csrc_count()).map(move |i| be32(bytes, FIXED_HEADER_LEN + 4 * i))
    }

    /// Fixed header + CSRCs + extension: where the payload starts.
    pub fn header_len(&self) -> usize {
        self.layout.header_len
    }

    /// The payload's byte range within the packet (padding excluded).
    pub fn payload_range(&self) -> Range<usize> {
        self.layout.header_len..self.layout.payload_end
    }

    /// The payload (padding excluded).
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.payload_range()]
    }

    /// Padding bytes at the end, count byte included (0 without the P bit).
    pub fn padding_len(&self) -> usize {
        self.layout.padding_len
    }

    /// The extension's form, if the X bit is set.
    pub fn extension_form(&self) -> Option<ExtensionForm> {
        self.layout.extension.map(|(form, _, _)| form)
    }

    /// The extension body (after its 4-byte header), whatever its form.
    pub fn extension_body(&self) -> Option<&'a [u8]> {
        self.layout
            .extension
            .map(|(_, start, end)| &self.bytes[start..end])
    }

    /// The RFC 8285 elements (id, value) in order; empty for no or non-RFC 8285
    /// extensions. Padding bytes are skipped; one-byte id 15 ends the list.
    pub fn extensions(&self) -> Extensions<'a> {
        match self.layout.extension {
            Some((form @ (ExtensionForm::OneByte | ExtensionForm::TwoByte { .. }), s, e)) => {
                Extensions {
                    block: &self.bytes[s..e],
                    pos: 0,
                    one_byte: form == ExtensionForm::OneByte,
                }
            }
            _ => Extensions {
                block: &[],
                pos: 0,
                one_byte: true,
            },
        }
    }

    /// The value of the first element with this id.
    pub fn extension(&self, id: u8) -> Option<&'a [u8]> {
        self.extensions().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// Absolute byte range (within the packet) of the first element with this id.
    fn extension_range(&self, id: u8) -> Option<Range<usize>> {
        let (form, start, end) = self.layout.extension?;
        let one_byte = match form {
            ExtensionForm::OneByte => true,
            ExtensionForm::TwoByte { .. } => false,
            ExtensionForm::Other(_) => return None,
        };
        let block = &self.bytes[start..end];
        let mut pos = 0;
        while let Ok(Some((i, r))) = next_element(one_byte, block, &mut pos) {
            if i == id {
                return Some(start + r.start..start + r.end);
            }
        }
        None
    }
}

/// Iterator over a packet's RFC 8285 header-extension elements: `(id, value)`.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    block: &'a [u8],
    pos: usize,
    one_byte: bool,
}

impl<'a> Iterator for Extensions<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // The block was validated by `parse`, so an error cannot occur; stop if it did.
        match next_element(self.one_byte, self.block, &mut self.pos) {
            Ok(Some((id, r))) => Some((id, &self.block[r])),
            _ => None,
        }
    }
}

/// A validated RTP packet in a mutable buffer, rewritten in place (the SFU's per-receiver
/// SSRC / sequence / timestamp / payload-type / extension rewrite).
#[derive(Debug)]
pub struct RtpMut<'a> {
    bytes: &'a mut [u8],
    layout: Layout,
}

impl<'a> RtpMut<'a> {
    /// Validates like [`RtpView::parse`].
    pub fn parse(bytes: &'a mut [u8]) -> Result<Self, RtpError> {
        let layout = parse_layout(bytes)?;
        Ok(Self { bytes, layout })
    }

    /// A read view of the packet as it is now.
    pub fn view(&self) -> RtpView<'_> {
        RtpView {
            bytes: self.bytes,
            layout: self.layout,
        }
    }

    /// Sets the M bit.
    pub fn set_marker(&mut self, marker: bool) {
        self.bytes[1] = (self.bytes[1] & 0x7F) | if marker { 0x80 } else { 0 };
    }

    /// Sets the payload type (7 bits), keeping the M bit.
    pub fn set_payload_type(&mut self, pt: u8) -> Result<(), RtpError> {
        if pt > 0x7F {
            return Err(RtpError::BadPayloadType(pt));
        }
        self.bytes[1] = (self.bytes[1] & 0x80) | pt;
        Ok(())
    }

    /// Sets the sequence number.
    pub fn set_sequence(&mut self, seq: u16) {
        self.bytes[2..4].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the RTP timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        self.bytes[4..8].copy_from_slice(&ts.to_be_bytes());
    }

    /// Sets the SSRC.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.bytes[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }

    /// The value bytes of the first element with this id, writable in place.
    pub fn extension_mut(&mut self, id: u8) -> Option<&mut [u8]> {
        let r = self.view().extension_range(id)?;
        Some(&mut self.bytes[r])
    }

    /// Overwrites the value of the element with this id; the length must not change.
    pub fn set_extension(&mut self, id: u8, value: &[u8]) -> Result<(), RtpError> {
        let slot = self
            .extension_mut(id)
            .ok_or(RtpError::ExtensionNotFound(id))?;
        if slot.len() != value.len() {
            return Err(RtpError::ExtensionLength {
                have: slot.len(),
                want: value.len(),
            });
        }
        slot.copy_from_slice(value);
        Ok(())
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// What a datagram on a BUNDLEd, rtcp-muxed 5-tuple is, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demux {
    /// First byte 0..=3 (RFC 7983).
    Stun,
    /// First byte 20..=63 (RFC 7983).
    Dtls,
    /// First byte 128..=191 and not RTCP.
    Rtp,
    /// First byte 128..=191 and the second byte, M bit masked, 64..=95: RTCP packet
    /// types 192..=223 (RFC 5761 §4).
    Rtcp,
    /// Anything else: ZRTP (16..=19), TURN channel data (64..=79), empty, unassigned.
    Other,
}

/// Classifies a datagram by its first two bytes (RFC 7983 §7, RFC 5761 §4).
pub fn classify(datagram: &[u8]) -> Demux {
    match datagram {
        [0..=3, ..] => Demux::Stun,
        [20..=63, ..] => Demux::Dtls,
        [128..=191, second, ..] => {
            if (64..=95).contains(&(second & 0x7F)) {
                Demux::Rtcp
            } else {
                Demux::Rtp
            }
        }
        _ => Demux::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed header: V=2, given flags/CC, M+PT, seq, ts, ssrc.
    fn header(first: u8, second: u8) -> Vec<u8> {
        let mut p = vec![first, second];
        p.extend_from_slice(&0x1234u16.to_be_bytes());
        p.extend_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
        p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        p
    }

    #[test]
    fn plain_packet_fields() {
        let mut p = header(0x80, 0x80 | 111);
        p.extend_from_slice(b"opus");
        let v = RtpView::parse(&p).expect("valid");
        assert!(v.marker());
        assert_eq!(v.payload_type(), 111);
        assert_eq!(v.sequence(), 0x1234);
        assert_eq!(v.timestamp(), 0xDEAD_BEEF);
        assert_eq!(v.ssrc(), 0x0102_0304);
        assert_eq!(v.csrc_count(), 0);
        assert_eq!(v.header_len(), 12);
        assert_eq!(v.payload(), b"opus");
        assert_eq!(v.payload_range(), 12..16);
        assert_eq!(v.padding_len(), 0);
        assert_eq!(v.extension_form(), None);
        assert_eq!(v.extensions().count(), 0);
    }

    #[test]
    fn csrcs_one_byte_extension_and_padding() {
        // V=2, P=1, X=1, CC=2.
        let mut p = header(0x80 | 0x20 | 0x10 | 2, 96);
        p.extend_from_slice(&11u32.to_be_bytes());
        p.extend_from_slice(&22u32.to_be_bytes());
        p.extend_from_slice(&0xBEDEu16.to_be_bytes());
        p.extend_from_slice(&3u16.to_be_bytes()); // 12 bytes of elements
        // id 1 len 1; padding 0; id 3 len 2; id 5 len 4; padding to 12.
        p.extend_from_slice(&[0x10, 0xAA, 0x00, 0x31, 0xB1, 0xB2, 0x53, 1, 2, 3, 4, 0]);
        p.extend_from_slice(b"payload");
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let v = RtpView::parse(&p).expect("valid");
        assert_eq!(v.csrcs().collect::<Vec<_>>(), vec![11, 22]);
        assert_eq!(v.extension_form(), Some(ExtensionForm::OneByte));
        let exts: Vec<_> = v.extensions().collect();
        assert_eq!(
            exts,
            vec![
                (1, &[0xAA][..]),
                (3, &[0xB1, 0xB2][..]),
                (5, &[1, 2, 3, 4][..])
            ]
        );
        assert_eq!(v.header_len(), 12 + 8 + 4 + 12);
        assert_eq!(v.payload(), b"payload");
        assert_eq!(v.padding_len(), 3);
        assert_eq!(v.extension(3), Some(&[0xB1, 0xB2][..]));
        assert_eq!(v.extension(4), None);
    }

    #[test]
    fn one_byte_id_15_stops_the_walk() {
        let mut p = header(0x90, 96);
        p.extend_from_slice(&0xBEDEu16.to_be_bytes());
        p.extend_from_slice(&2u16.to_be_bytes());
        // id 2 len 1, then id 15 with a "length" that would run past: ignored.
        p.extend_from_slice(&[0x20, 7, 0xFF, 0x10, 9, 9, 9, 9]);
        let v = RtpView::parse(&p).expect("valid");
        assert_eq!(v.extensions().collect::<Vec<_>>(), vec![(2, &[7][..])]);
    }

    #[test]
    fn two_byte_extension() {
        let mut p = header(0x90, 96);
        p.extend_from_slice(&0x1005u16.to_be_bytes());
        p.extend_from_slice(&3u16.to_be_bytes());
        // id 1 len 0; padding; id 200 len 3; id 17 len 4; padding.
        p.extend_from_slice(&[1, 0, 0, 200, 3, b'a', b'b', b'c', 17, 4, 9, 8]);
        // That was 12 bytes but id 17 needs 4 value bytes: only 2 present -> fix below.
        let v = RtpView::parse(&p);
        assert_eq!(v.err(), Some(RtpError::BadExtensionElement));
        let mut p = header(0x90, 96);
        p.extend_from_slice(&0x1005u16.to_be_bytes());
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(&[1, 0, 0, 200, 3, b'a', b'b', b'c', 17, 1, 9, 0]);
        p.extend_from_slice(b"x");
        let v = RtpView::parse(&p).expect("valid");
        assert_eq!(
            v.extension_form(),
            Some(ExtensionForm::TwoByte { appbits: 5 })
        );
        assert_eq!(
            v.extensions().collect::<Vec<_>>(),
            vec![(1, &[][..]), (200, &b"abc"[..]), (17, &[9][..])]
        );
        assert_eq!(v.payload(), b"x");
    }

    #[test]
    fn other_profile_extension_is_kept_but_not_walked() {
        let mut p = header(0x90, 96);
        p.extend_from_slice(&0x1234u16.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&[0xFF; 4]);
        let v = RtpView::parse(&p).expect("valid");
        assert_eq!(v.extension_form(), Some(ExtensionForm::Other(0x1234)));
        assert_eq!(v.extension_body(), Some(&[0xFF; 4][..]));
        assert_eq!(v.extensions().count(), 0);
        assert_eq!(v.payload(), b"");
    }

    #[test]
    fn malformed_packets_are_rejected_with_the_right_error() {
        assert_eq!(RtpView::parse(&[0x80; 11]).err(), Some(RtpError::TooShort));
        assert_eq!(
            RtpView::parse(&header(0x40, 0)).err(),
            Some(RtpError::BadVersion(1))
        );
        let mut cc = header(0x83, 0);
        cc.extend_from_slice(&[0; 8]);
        assert_eq!(RtpView::parse(&cc).err(), Some(RtpError::TruncatedCsrcs));
        let mut x = header(0x90, 0);
        x.extend_from_slice(&[0xBE, 0xDE, 0]);
        assert_eq!(RtpView::parse(&x).err(), Some(RtpError::TruncatedExtension));
        let mut x = header(0x90, 0);
        x.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x10, 1, 0, 0]);
        assert_eq!(RtpView::parse(&x).err(), Some(RtpError::TruncatedExtension));
        let mut x = header(0x90, 0);
        x.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x13, 1, 2, 0]); // len 4 in 3 bytes
        assert_eq!(
            RtpView::parse(&x).err(),
            Some(RtpError::BadExtensionElement)
        );
        let mut x = header(0x90, 0);
        x.extend_from_slice(&[0x10, 0x00, 0, 1, 0, 0, 0, 7]); // two-byte id 7, no length
        assert_eq!(
            RtpView::parse(&x).err(),
            Some(RtpError::BadExtensionElement)
        );
        let mut pad = header(0xA0, 0);
        pad.extend_from_slice(&[1, 2, 0]);
        assert_eq!(RtpView::parse(&pad).err(), Some(RtpError::BadPadding));
        let mut pad = header(0xA0, 0);
        pad.extend_from_slice(&[1, 2, 4]);
        assert_eq!(RtpView::parse(&pad).err(), Some(RtpError::BadPadding));
        let mut pad = header(0xA0, 0);
        pad.extend_from_slice(&[1, 2, 3]);
        let v = RtpView::parse(&pad).expect("padding equal to the payload");
        assert_eq!(v.payload(), b"");
    }

    #[test]
    fn rewrite_in_place() {
        let mut p = header(0x90, 96);
        p.extend_from_slice(&0xBEDEu16.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&[0x31, 0x00, 0x05, 0]); // id 3 (transport-cc) = 5
        p.extend_from_slice(b"data");
        let mut m = RtpMut::parse(&mut p).expect("valid");
        m.set_ssrc(0xCAFE_F00D);
        m.set_sequence(65535);
        m.set_timestamp(7);
        m.set_marker(true);
        m.set_payload_type(100).expect("7 bits");
        assert_eq!(m.set_payload_type(128), Err(RtpError::BadPayloadType(128)));
        m.set_extension(3, &[0xAB, 0xCD]).expect("same length");
        assert_eq!(
            m.set_extension(3, &[1]),
            Err(RtpError::ExtensionLength { have: 2, want: 1 })
        );
        assert_eq!(
            m.set_extension(4, &[1]),
            Err(RtpError::ExtensionNotFound(4))
        );
        let v = m.view();
        assert_eq!(v.ssrc(), 0xCAFE_F00D);
        assert_eq!(v.sequence(), 65535);
        assert_eq!(v.timestamp(), 7);
        assert!(v.marker());
        assert_eq!(v.payload_type(), 100);
        assert_eq!(v.extension(3), Some(&[0xAB, 0xCD][..]));
        assert_eq!(v.payload(), b"data");
        m.set_marker(false);
        assert!(!m.view().marker());
        assert_eq!(m.view().payload_type(), 100);
    }

    #[test]
    fn classify_per_rfc_7983_and_5761() {
        for b in 0..=3u8 {
            assert_eq!(classify(&[b, 1]), Demux::Stun);
        }
        for b in 4..=19u8 {
            assert_eq!(classify(&[b, 1]), Demux::Other);
        }
        for b in 20..=63u8 {
            assert_eq!(classify(&[b, 1]), Demux::Dtls);
        }
        for b in 64..=127u8 {
            assert_eq!(classify(&[b, 1]), Demux::Other);
        }
        for b in 128..=191u8 {
            assert_eq!(classify(&[b, 96]), Demux::Rtp);
            assert_eq!(classify(&[b, 0x80 | 96]), Demux::Rtp);
        }
        for b in 192..=255u8 {
            assert_eq!(classify(&[b, 200]), Demux::Other);
        }
        for pt in 192..=223u8 {
            assert_eq!(classify(&[0x80, pt]), Demux::Rtcp, "RTCP type {pt}");
        }
        assert_eq!(classify(&[0x80, 191]), Demux::Rtp);
        assert_eq!(classify(&[0x80, 224]), Demux::Rtp);
        // M bit masked: PT 64 and 95 with or without the marker are RTCP.
        assert_eq!(classify(&[0x80, 64]), Demux::Rtcp);
        assert_eq!(classify(&[0x80, 95]), Demux::Rtcp);
        assert_eq!(classify(&[0x80, 63]), Demux::Rtp);
        assert_eq!(classify(&[]), Demux::Other);
        assert_eq!(classify(&[0x80]), Demux::Other);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(v) = RtpView::parse(&bytes) {
                let _ = v.csrcs().count();
                let _ = v.extensions().count();
                let _ = v.payload();
                proptest::prop_assert!(v.header_len() + v.padding_len() <= bytes.len());
            }
            let mut copy = bytes.clone();
            if let Ok(mut m) = RtpMut::parse(&mut copy) {
                m.set_ssrc(1);
                let _ = m.set_extension(1, &[0]);
            }
        }

        #[test]
        fn forged_headers_never_panic(
            flags in 0u8..=255, words in 0u16..8, profile in proptest::prop_oneof![
                proptest::prelude::Just(0xBEDEu16), 0x1000u16..0x1010, proptest::prelude::any::<u16>()],
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60)
        ) {
            let mut p = header(0x80 | (flags & 0x3F), 0);
            p.extend_from_slice(&profile.to_be_bytes());
            p.extend_from_slice(&words.to_be_bytes());
            p.extend_from_slice(&rest);
            if let Ok(v) = RtpView::parse(&p) {
                for (_, data) in v.extensions() {
                    proptest::prop_assert!(data.len() <= 255);
                }
            }
        }
    }
}
