//! RTCP (RFC 3550 §6, RFC 4585, RFC 5104): a compound-packet iterator yielding typed,
//! validated zero-copy views, and builders that write the packets the SFU sends into the
//! caller's buffer.
//!
//! Each view is validated when the iterator yields it, so its accessors and sub-iterators
//! cannot fail. Builders return the bytes written, or an error if the buffer is too small
//! or the input cannot be encoded; compounds are built by writing one packet after the
//! other into the rest of the buffer.

pub mod feedback;
pub mod report;
pub mod transport_cc;

use thiserror::Error;

pub use feedback::{Fir, FirEntry, Nack, Pli, Remb, write_fir, write_nack, write_pli, write_remb};
pub use report::{
    Bye, ReceiverReport, ReportBlock, Sdes, SdesChunk, SenderInfo, SenderReport, write_rr, write_sr,
};
pub use transport_cc::{TransportCc, TwccHeader, TwccStatus, write_transport_cc};

/// RTCP packet type: sender report.
pub const PT_SR: u8 = 200;
/// RTCP packet type: receiver report.
pub const PT_RR: u8 = 201;
/// RTCP packet type: source description.
pub const PT_SDES: u8 = 202;
/// RTCP packet type: goodbye.
pub const PT_BYE: u8 = 203;
/// RTCP packet type: application-defined.
pub const PT_APP: u8 = 204;
/// RTCP packet type: transport-layer feedback (RFC 4585).
pub const PT_RTPFB: u8 = 205;
/// RTCP packet type: payload-specific feedback (RFC 4585).
pub const PT_PSFB: u8 = 206;

/// RTPFB format: generic NACK (RFC 4585 §6.2.1).
pub const FMT_NACK: u8 = 1;
/// RTPFB format: transport-wide congestion control feedback.
pub const FMT_TRANSPORT_CC: u8 = 15;
/// PSFB format: picture loss indication (RFC 4585 §6.3.1).
pub const FMT_PLI: u8 = 1;
/// PSFB format: full intra request (RFC 5104 §4.3.1).
pub const FMT_FIR: u8 = 4;
/// PSFB format: application layer feedback (REMB lives here).
pub const FMT_AFB: u8 = 15;

/// Why bytes are not valid RTCP, or why a builder refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    /// Fewer than 4 bytes left for a packet header.
    #[error("shorter than the 4-byte RTCP header")]
    TooShort,
    /// The version field is not 2.
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    /// The length field announces more bytes than the compound holds.
    #[error("RTCP packet declares {declared} bytes, {available} left")]
    Truncated {
        /// Bytes the length field declares.
        declared: usize,
        /// Bytes left in the compound.
        available: usize,
    },
    /// The P bit is set but the count is 0 or larger than the body.
    #[error("RTCP padding count 0 or larger than the packet body")]
    BadPadding,
    /// The body of a known packet type does not hold what its header announces.
    #[error("malformed RTCP packet of type {packet_type} (count/format {count})")]
    Malformed {
        /// The packet type.
        packet_type: u8,
        /// The count / FMT field.
        count: u8,
    },
    /// The output buffer cannot hold the packet.
    #[error("output buffer of {have} bytes, the packet needs {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// More items than the packet's count field (or its length) can carry.
    #[error("too many items for one RTCP packet")]
    TooManyItems,
}

/// The common 4-byte header of every RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpHeader {
    /// The P bit.
    pub padding: bool,
    /// The 5-bit count (RC / SC) or feedback message type (FMT).
    pub count: u8,
    /// The packet type.
    pub packet_type: u8,
    /// The packet's length in bytes, header and padding included.
    pub len: usize,
}

/// One packet of a compound, typed by packet type and FMT.
#[derive(Debug, Clone, Copy)]
pub enum RtcpPacket<'a> {
    /// Sender report.
    SenderReport(SenderReport<'a>),
    /// Receiver report.
    ReceiverReport(ReceiverReport<'a>),
    /// Source description.
    Sdes(Sdes<'a>),
    /// Goodbye.
    Bye(Bye<'a>),
    /// Generic NACK.
    Nack(Nack<'a>),
    /// Transport-wide congestion control feedback.
    TransportCc(TransportCc<'a>),
    /// Picture loss indication.
    Pli(Pli),
    /// Full intra request.
    Fir(Fir<'a>),
    /// Receiver estimated maximum bitrate.
    Remb(Remb<'a>),
    /// Any other (well-framed) packet: APP, XR, other feedback formats.
    Other {
        /// Its header.
        header: RtcpHeader,
        /// Its body, after the 4-byte header, padding excluded.
        body: &'a [u8],
    },
}

/// Iterates the packets of a compound RTCP datagram (already decrypted).
pub fn compound(datagram: &[u8]) -> Compound<'_> {
    Compound {
        rest: datagram,
        failed: false,
    }
}

/// Iterator over a compound: each item a typed packet or the error that ends the walk.
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = split_packet(self.rest).and_then(|(header, body, rest)| {
            self.rest = rest;
            typed(header, body)
        });
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// Splits one packet off the front: header, body (padding removed), the rest.
fn split_packet(b: &[u8]) -> Result<(RtcpHeader, &[u8], &[u8]), RtcpError> {
    if b.len() < 4 {
        return Err(RtcpError::TooShort);
    }
    let version = b[0] >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    let len = (usize::from(u16::from_be_bytes([b[2], b[3]])) + 1) * 4;
    if len > b.len() {
        return Err(RtcpError::Truncated {
            declared: len,
            available: b.len(),
        });
    }
    let header = RtcpHeader {
        padding: b[0] & 0x20 != 0,
        count: b[0] & 0x1F,
        packet_type: b[1],
        len,
    };
    let mut body = &b[4..len];
    if header.padding {
        let pad = usize::from(b[len - 1]);
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::BadPadding);
        }
        body = &body[..body.len() - pad];
    }
    Ok((header, body, &b[len..]))
}

fn typed<'a>(header: RtcpHeader, body: &'a [u8]) -> Result<RtcpPacket<'a>, RtcpError> {
    let malformed = RtcpError::Malformed {
        packet_type: header.packet_type,
        count: header.count,
    };
    let packet = match (header.packet_type, header.count) {
        (PT_SR, rc) => SenderReport::new(rc, body).map(RtcpPacket::SenderReport),
        (PT_RR, rc) => ReceiverReport::new(rc, body).map(RtcpPacket::ReceiverReport),
        (PT_SDES, sc) => Sdes::new(sc, body).map(RtcpPacket::Sdes),
        (PT_BYE, sc) => Bye::new(sc, body).map(RtcpPacket::Bye),
        (PT_RTPFB, FMT_NACK) => Nack::new(body).map(RtcpPacket::Nack),
        (PT_RTPFB, FMT_TRANSPORT_CC) => TransportCc::new(body).map(RtcpPacket::TransportCc),
        (PT_PSFB, FMT_PLI) => Pli::new(body).map(RtcpPacket::Pli),
        (PT_PSFB, FMT_FIR) => Fir::new(body).map(RtcpPacket::Fir),
        (PT_PSFB, FMT_AFB) if Remb::is_remb(body) => Remb::new(body).map(RtcpPacket::Remb),
        _ => return Ok(RtcpPacket::Other { header, body }),
    };
    packet.ok_or(malformed)
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks `buf` can hold `len` bytes (a multiple of 4) and writes the common header.
pub(crate) fn start_packet(
    buf: &mut [u8],
    count: u8,
    packet_type: u8,
    len: usize,
) -> Result<(), RtcpError> {
    debug_assert!(len.is_multiple_of(4) && len >= 4);
    if len > buf.len() {
        return Err(RtcpError::BufferTooSmall {
            need: len,
            have: buf.len(),
        });
    }
    let words = u16::try_from(len / 4 - 1).map_err(|_| RtcpError::TooManyItems)?;
    if count > 31 {
        return Err(RtcpError::TooManyItems);
    }
    buf[0] = 0x80 | count;
    buf[1] = packet_type;
    buf[2..4].copy_from_slice(&words.to_be_bytes());
    Ok(())
}

pub(crate) fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compound_walk_and_framing_errors() {
        let mut buf = [0u8; 200];
        let block = ReportBlock {
            ssrc: 9,
            fraction_lost: 3,
            cumulative_lost: -2,
            highest_seq: 70_000,
            jitter: 5,
            last_sr: 6,
            delay_since_last_sr: 7,
        };
        let mut n = write_rr(&mut buf, 1, &[block]).expect("fits");
        n += write_pli(&mut buf[n..], 1, 2).expect("fits");
        n += write_nack(&mut buf[n..], 1, 2, &[10, 12]).expect("fits");
        let packets: Vec<_> = compound(&buf[..n]).collect();
        assert_eq!(packets.len(), 3);
        match packets[0] {
            Ok(RtcpPacket::ReceiverReport(rr)) => {
                assert_eq!(rr.ssrc(), 1);
                assert_eq!(rr.report_blocks().collect::<Vec<_>>(), vec![block]);
            }
            ref other => panic!("expected RR, got {other:?}"),
        }
        assert!(matches!(packets[1], Ok(RtcpPacket::Pli(p)) if p.media_ssrc() == 2));
        match packets[2] {
            Ok(RtcpPacket::Nack(nack)) => {
                assert_eq!(nack.lost().collect::<Vec<_>>(), vec![10, 12]);
            }
            ref other => panic!("expected NACK, got {other:?}"),
        }

        // Truncation: one byte short.
        let errs: Vec<_> = compound(&buf[..n - 1]).collect();
        assert_eq!(
            errs.last().cloned().map(|r| r.err()),
            Some(Some(RtcpError::Truncated {
                declared: 16,
                available: 15
            }))
        );
        assert!(errs[0].is_ok() && errs[1].is_ok());
        // Trailing garbage shorter than a header.
        let mut two = buf[..n].to_vec();
        two.extend_from_slice(&[0x80, 201]);
        assert_eq!(
            compound(&two).last().map(|r| r.err()),
            Some(Some(RtcpError::TooShort))
        );
        // Bad version stops the walk at once.
        let mut v1 = buf[..n].to_vec();
        v1[0] = 0x40 | (v1[0] & 0x3F);
        let r: Vec<_> = compound(&v1).collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].as_ref().err(), Some(&RtcpError::BadVersion(1)));
        // RR claiming two blocks while holding one.
        let mut rr = buf[..32].to_vec();
        rr[0] = 0x82;
        assert_eq!(
            compound(&rr).next().and_then(|r| r.err()),
            Some(RtcpError::Malformed {
                packet_type: PT_RR,
                count: 2
            })
        );
    }

    #[test]
    fn padding_and_unknown_types() {
        // APP packet with padding: 4 header + 8 body + 4 padding.
        let mut p = vec![0xA0 | 1, PT_APP, 0, 3, 0, 0, 0, 1, b'n', b'a', b'm', b'e'];
        p.extend_from_slice(&[0, 0, 0, 4]);
        match compound(&p).next() {
            Some(Ok(RtcpPacket::Other { header, body })) => {
                assert!(header.padding);
                assert_eq!(header.len, 16);
                assert_eq!(body, &[0, 0, 0, 1, b'n', b'a', b'm', b'e']);
            }
            other => panic!("expected APP, got {other:?}"),
        }
        p[15] = 0;
        assert_eq!(
            compound(&p).next().and_then(|r| r.err()),
            Some(RtcpError::BadPadding)
        );
        p[15] = 13;
        assert_eq!(
            compound(&p).next().and_then(|r| r.err()),
            Some(RtcpError::BadPadding)
        );
        assert_eq!(compound(&[]).count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn compound_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            crate::rtp::rtcp::tests::walk_everything(&bytes);
        }

        #[test]
        fn forged_headers_never_panic(
            first in 0u8..32, pt in 200u8..=206, words in 0u16..20,
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)
        ) {
            let mut p = vec![0x80 | first, pt];
            p.extend_from_slice(&words.to_be_bytes());
            p.extend_from_slice(&rest);
            walk_everything(&p);
        }
    }

    /// Touches every accessor of every view (also used by the fuzz target's logic).
    pub(crate) fn walk_everything(bytes: &[u8]) {
        for p in compound(bytes) {
            let Ok(p) = p else { break };
            match p {
                RtcpPacket::SenderReport(sr) => {
                    let _ = (sr.ssrc(), sr.sender_info());
                    let _ = sr.report_blocks().count();
                }
                RtcpPacket::ReceiverReport(rr) => {
                    let _ = rr.report_blocks().count();
                }
                RtcpPacket::Sdes(s) => {
                    for c in s.chunks() {
                        let _ = (c.ssrc(), c.cname(), c.items().count());
                    }
                }
                RtcpPacket::Bye(b) => {
                    let _ = (b.ssrcs().count(), b.reason());
                }
                RtcpPacket::Nack(n) => {
                    let _ = n.lost().count();
                }
                RtcpPacket::TransportCc(t) => {
                    let _ = t.statuses().count();
                }
                RtcpPacket::Fir(f) => {
                    let _ = f.entries().count();
                }
                RtcpPacket::Remb(r) => {
                    let _ = (r.bitrate_bps(), r.ssrcs().count());
                }
                RtcpPacket::Pli(_) | RtcpPacket::Other { .. } => {}
            }
        }
    }
}
