//! RTCP reports and session packets (RFC 3550 §6.4–6.6): SR, RR, SDES, BYE views, and the
//! SR / RR builders. The SFU terminates RTCP per hop: it reads publishers' SRs (for
//! lip-sync and RTT), and writes its own RRs and SRs.

use super::{PT_RR, PT_SR, RtcpError, be32, put32, start_packet};

const BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 20;

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire; clamped when written).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the last SR's NTP timestamp (LSR).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s (DLSR).
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn read(b: &[u8]) -> Self {
        let lost = be32(b, 4);
        // Sign-extend the low 24 bits.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Self {
            ssrc: be32(b, 0),
            fraction_lost: (lost >> 24) as u8,
            cumulative_lost,
            highest_seq: be32(b, 8),
            jitter: be32(b, 12),
            last_sr: be32(b, 16),
            delay_since_last_sr: be32(b, 20),
        }
    }

    fn write(&self, b: &mut [u8]) {
        let lost = self.cumulative_lost.clamp(-(1 << 23), (1 << 23) - 1) as u32 & 0x00FF_FFFF;
        put32(b, 0, self.ssrc);
        put32(b, 4, u32::from(self.fraction_lost) << 24 | lost);
        put32(b, 8, self.highest_seq);
        put32(b, 12, self.jitter);
        put32(b, 16, self.last_sr);
        put32(b, 20, self.delay_since_last_sr);
    }
}

/// The sender-info section of an SR (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// 64-bit NTP timestamp.
    pub ntp_timestamp: u64,
    /// The same instant in RTP timestamp units.
    pub rtp_timestamp: u32,
    /// Packets sent.
    pub packet_count: u32,
    /// Payload octets sent.
    pub octet_count: u32,
}

/// Iterator over report blocks.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    blocks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        self.blocks.next().map(ReportBlock::read)
    }
}

/// A sender report.
#[derive(Debug, Clone, Copy)]
pub struct SenderReport<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> SenderReport<'a> {
    pub(super) fn new(count: u8, body: &'a [u8]) -> Option<Self> {
        let count = usize::from(count);
        (body.len() >= 4 + SENDER_INFO_LEN + BLOCK_LEN * count).then_some(Self { body, count })
    }

    /// The sender's SSRC.
    pub fn ssrc(&self) -> u32 {
        be32(self.body, 0)
    }

    /// NTP / RTP timestamps and counts.
    pub fn sender_info(&self) -> SenderInfo {
        let b = self.body;
        SenderInfo {
            ntp_timestamp: u64::from(be32(b, 4)) << 32 | u64::from(be32(b, 8)),
            rtp_timestamp: be32(b, 12),
            packet_count: be32(b, 16),
            octet_count: be32(b, 20),
        }
    }

    /// The reception report blocks.
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        let start = 4 + SENDER_INFO_LEN;
        ReportBlocks {
            blocks: self.body[start..start + BLOCK_LEN * self.count].chunks_exact(BLOCK_LEN),
        }
    }
}

/// A receiver report.
#[derive(Debug, Clone, Copy)]
pub struct ReceiverReport<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> ReceiverReport<'a> {
    pub(super) fn new(count: u8, body: &'a [u8]) -> Option<Self> {
        let count = usize::from(count);
        (body.len() >= 4 + BLOCK_LEN * count).then_some(Self { body, count })
    }

    /// The reporter's SSRC.
    pub fn ssrc(&self) -> u32 {
        be32(self.body, 0)
    }

    /// The reception report blocks.
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks {
            blocks: self.body[4..4 + BLOCK_LEN * self.count].chunks_exact(BLOCK_LEN),
        }
    }
}

/// SDES item type of the canonical name.
pub const SDES_CNAME: u8 = 1;

/// A source description packet.
#[derive(Debug, Clone, Copy)]
pub struct Sdes<'a> {
    body: &'a [u8],
    count: usize,
}

/// Walks one chunk at `pos`: returns (ssrc, items range, next chunk start).
fn sdes_chunk(body: &[u8], pos: usize) -> Option<(u32, std::ops::Range<usize>, usize)> {
    if pos + 4 > body.len() {
        return None;
    }
    let ssrc = be32(body, pos);
    let items_start = pos + 4;
    let mut at = items_start;
    loop {
        let kind = *body.get(at)?;
        if kind == 0 {
            // Null item ends the list; then padding to the next 32-bit boundary.
            let next = (at + 1).next_multiple_of(4);
            if next > body.len() {
                return None;
            }
            return Some((ssrc, items_start..at, next));
        }
        let len = usize::from(*body.get(at + 1)?);
        at += 2 + len;
        if at > body.len() {
            return None;
        }
    }
}

impl<'a> Sdes<'a> {
    pub(super) fn new(count: u8, body: &'a [u8]) -> Option<Self> {
        let count = usize::from(count);
        let mut pos = 0;
        for _ in 0..count {
            pos = sdes_chunk(body, pos)?.2;
        }
        Some(Self { body, count })
    }

    /// The chunks (one per source).
    pub fn chunks(&self) -> SdesChunks<'a> {
        SdesChunks {
            body: self.body,
            pos: 0,
            left: self.count,
        }
    }
}

/// Iterator over SDES chunks.
#[derive(Debug, Clone)]
pub struct SdesChunks<'a> {
    body: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;

    fn next(&mut self) -> Option<SdesChunk<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (ssrc, items, next) = sdes_chunk(self.body, self.pos)?;
        self.pos = next;
        Some(SdesChunk {
            ssrc,
            items: &self.body[items],
        })
    }
}

/// One SDES chunk: a source and its items.
#[derive(Debug, Clone, Copy)]
pub struct SdesChunk<'a> {
    ssrc: u32,
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    /// The source.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Its items: (type, text).
    pub fn items(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        let items = self.items;
        let mut at = 0;
        std::iter::from_fn(move || {
            let kind = *items.get(at)?;
            let len = usize::from(*items.get(at + 1)?);
            let text = items.get(at + 2..at + 2 + len)?;
            at += 2 + len;
            Some((kind, text))
        })
    }

    /// The CNAME item's text, if present.
    pub fn cname(&self) -> Option<&'a [u8]> {
        self.items().find(|(k, _)| *k == SDES_CNAME).map(|(_, t)| t)
    }
}

/// A goodbye packet.
#[derive(Debug, Clone, Copy)]
pub struct Bye<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> Bye<'a> {
    pub(super) fn new(count: u8, body: &'a [u8]) -> Option<Self> {
        let count = usize::from(count);
        let after = 4 * count;
        if body.len() < after {
            return None;
        }
        if let Some(&len) = body.get(after)
            && after + 1 + usize::from(len) > body.len()
        {
            return None;
        }
        Some(Self { body, count })
    }

    /// The sources leaving.
    pub fn ssrcs(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.body[..4 * self.count]
            .chunks_exact(4)
            .map(|c| be32(c, 0))
    }

    /// The optional reason text.
    pub fn reason(&self) -> Option<&'a [u8]> {
        let after = 4 * self.count;
        let len = usize::from(*self.body.get(after)?);
        self.body.get(after + 1..after + 1 + len)
    }
}

/// Writes a receiver report (at most 31 blocks) into `buf`; returns its length.
pub fn write_rr(buf: &mut [u8], ssrc: u32, blocks: &[ReportBlock]) -> Result<usize, RtcpError> {
    let count = u8::try_from(blocks.len()).map_err(|_| RtcpError::TooManyItems)?;
    let len = 8 + BLOCK_LEN * blocks.len();
    start_packet(buf, count, PT_RR, len)?;
    put32(buf, 4, ssrc);
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut buf[8 + BLOCK_LEN * i..]);
    }
    Ok(len)
}

/// Writes a sender report (at most 31 blocks) into `buf`; returns its length.
pub fn write_sr(
    buf: &mut [u8],
    ssrc: u32,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    let count = u8::try_from(blocks.len()).map_err(|_| RtcpError::TooManyItems)?;
    let start = 8 + SENDER_INFO_LEN;
    let len = start + BLOCK_LEN * blocks.len();
    start_packet(buf, count, PT_SR, len)?;
    put32(buf, 4, ssrc);
    put32(buf, 8, (info.ntp_timestamp >> 32) as u32);
    put32(buf, 12, info.ntp_timestamp as u32);
    put32(buf, 16, info.rtp_timestamp);
    put32(buf, 20, info.packet_count);
    put32(buf, 24, info.octet_count);
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut buf[start + BLOCK_LEN * i..]);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::super::{RtcpPacket, compound};
    use super::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: lost,
            highest_seq: 0x0001_FFFF,
            jitter: 33,
            last_sr: 0xAABB_CCDD,
            delay_since_last_sr: 65536,
        }
    }

    #[test]
    fn sr_round_trip_and_lost_clamping() {
        let mut buf = [0u8; 100];
        let info = SenderInfo {
            ntp_timestamp: 0x0123_4567_89AB_CDEF,
            rtp_timestamp: 960,
            packet_count: 10,
            octet_count: 1000,
        };
        let blocks = [block(5, -1), block(6, 1 << 30)];
        let n = write_sr(&mut buf, 77, &info, &blocks).expect("fits");
        assert_eq!(n, 28 + 48);
        let Some(Ok(RtcpPacket::SenderReport(sr))) = compound(&buf[..n]).next() else {
            panic!("not an SR");
        };
        assert_eq!(sr.ssrc(), 77);
        assert_eq!(sr.sender_info(), info);
        let got: Vec<_> = sr.report_blocks().collect();
        assert_eq!(got[0], blocks[0]);
        assert_eq!(got[1].cumulative_lost, (1 << 23) - 1, "clamped to 24 bits");
        assert_eq!(
            write_sr(&mut buf[..75], 77, &info, &blocks),
            Err(RtcpError::BufferTooSmall { need: 76, have: 75 })
        );
        assert_eq!(
            write_rr(&mut [0u8; 2000], 1, &[block(1, 0); 32]),
            Err(RtcpError::TooManyItems)
        );
    }

    #[test]
    fn empty_rr_is_8_bytes() {
        let mut buf = [0u8; 8];
        assert_eq!(write_rr(&mut buf, 0x1234_5678, &[]), Ok(8));
        assert_eq!(buf, [0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78]);
    }

    #[test]
    fn sdes_and_bye() {
        // SDES, 2 chunks: (ssrc 1, CNAME "ab", NOTE "x") and (ssrc 2, CNAME "cdefg").
        let mut p = vec![0x82, 202, 0, 0];
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&[1, 2, b'a', b'b', 7, 1, b'x', 0]); // aligned: 8 bytes
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(&[1, 5, b'c', b'd', b'e', b'f', b'g', 0]);
        let words = u16::try_from(p.len() / 4 - 1).expect("small");
        p[2..4].copy_from_slice(&words.to_be_bytes());
        let Some(Ok(RtcpPacket::Sdes(s))) = compound(&p).next() else {
            panic!("not SDES");
        };
        let chunks: Vec<_> = s.chunks().collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].ssrc(), 1);
        assert_eq!(chunks[0].cname(), Some(&b"ab"[..]));
        assert_eq!(
            chunks[0].items().collect::<Vec<_>>(),
            vec![(1, &b"ab"[..]), (7, &b"x"[..])]
        );
        assert_eq!(chunks[1].cname(), Some(&b"cdefg"[..]));
        // An item running past the packet.
        let mut bad = p.clone();
        bad[9] = 40;
        assert!(compound(&bad).next().is_some_and(|r| r.is_err()));
        // A chunk count larger than the chunks present.
        let mut bad = p.clone();
        bad[0] = 0x83;
        assert!(compound(&bad).next().is_some_and(|r| r.is_err()));

        // BYE with two sources and a reason.
        let mut b = vec![0x82, 203, 0, 4];
        b.extend_from_slice(&8u32.to_be_bytes());
        b.extend_from_slice(&9u32.to_be_bytes());
        b.extend_from_slice(&[3, b'b', b'y', b'e', 0, 0, 0, 0]);
        let Some(Ok(RtcpPacket::Bye(bye))) = compound(&b).next() else {
            panic!("not BYE");
        };
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), vec![8, 9]);
        assert_eq!(bye.reason(), Some(&b"bye"[..]));
        b[12] = 9;
        assert!(compound(&b).next().is_some_and(|r| r.is_err()));
    }
}
