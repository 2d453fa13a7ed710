//! Transport-wide congestion control feedback (RTPFB FMT 15,
//! draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1): the view with full status
//! and delta decoding, and the builder that encodes packet statuses into run-length and
//! status-vector chunks with 1- and 2-byte receive deltas.
//!
//! The SFU sends this to publishers so their send-side bandwidth estimators see arrival
//! times; the builder is driven by `twcc::TwccRecorder`.

use super::{FMT_TRANSPORT_CC, PT_RTPFB, RtcpError, be16, be32, put16, put32, start_packet};

/// Receive deltas are in units of 250 µs.
pub const DELTA_UNIT_US: u64 = 250;
/// The reference time is in units of 64 ms.
pub const REFERENCE_UNIT_US: u64 = 64_000;
/// Longest run a run-length chunk holds (13 bits).
pub const MAX_RUN: usize = 0x1FFF;

const SYM_NOT_RECEIVED: u8 = 0;
const SYM_SMALL: u8 = 1;
const SYM_LARGE: u8 = 2;

/// One packet's status in a feedback message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwccStatus {
    /// Not received (yet).
    NotReceived,
    /// Received; arrival minus the previous received packet's arrival (the first: minus
    /// the reference time), in 250 µs units. 0..=255 travel as small (1-byte) deltas,
    /// anything else as large (2-byte, signed).
    Received(i16),
}

/// The fixed fields of a transport-cc feedback message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TwccHeader {
    /// The feedback's sender.
    pub sender_ssrc: u32,
    /// The media source (any SSRC of the publisher's transport).
    pub media_ssrc: u32,
    /// Transport-wide sequence number of the first status.
    pub base_seq: u16,
    /// Reference time in 64 ms units (24 bits; higher bits are dropped).
    pub reference_time: u32,
    /// Feedback packet count (wraps).
    pub fb_count: u8,
}

fn symbol(d: Option<i16>) -> u8 {
    match d {
        None => SYM_NOT_RECEIVED,
        Some(0..=255) => SYM_SMALL,
        Some(_) => SYM_LARGE,
    }
}

/// How many statuses a chunk holds.
fn chunk_len(c: u16) -> usize {
    if c & 0x8000 == 0 {
        usize::from(c & 0x1FFF)
    } else if c & 0x4000 == 0 {
        14
    } else {
        7
    }
}

/// The i-th status symbol of a chunk (i < chunk_len).
fn chunk_symbol(c: u16, i: usize) -> u8 {
    if c & 0x8000 == 0 {
        ((c >> 13) & 3) as u8
    } else if c & 0x4000 == 0 {
        ((c >> (13 - i)) & 1) as u8
    } else {
        ((c >> (12 - 2 * i)) & 3) as u8
    }
}

fn delta_bytes(sym: u8) -> usize {
    match sym {
        SYM_SMALL => 1,
        SYM_LARGE => 2,
        _ => 0,
    }
}

/// A transport-cc feedback message, validated: chunks cover the status count, no
/// reserved symbol, all receive deltas present.
#[derive(Debug, Clone, Copy)]
pub struct TransportCc<'a> {
    body: &'a [u8],
    deltas_at: usize,
}

impl<'a> TransportCc<'a> {
    pub(super) fn new(body: &'a [u8]) -> Option<Self> {
        if body.len() < 16 {
            return None;
        }
        let count = usize::from(be16(body, 10));
        let mut at = 16;
        let mut covered = 0;
        let mut deltas = 0;
        while covered < count {
            let c = be16(body.get(at..at + 2)?, 0);
            at += 2;
            let n = chunk_len(c).min(count - covered);
            for i in 0..n {
                let sym = chunk_symbol(c, i);
                if sym == 3 {
                    return None;
                }
                deltas += delta_bytes(sym);
            }
            covered += n;
        }
        (at + deltas <= body.len()).then_some(Self {
            body,
            deltas_at: at,
        })
    }

    /// The fixed fields.
    pub fn header(&self) -> TwccHeader {
        let b = self.body;
        TwccHeader {
            sender_ssrc: be32(b, 0),
            media_ssrc: be32(b, 4),
            base_seq: be16(b, 8),
            reference_time: be32(b, 12) >> 8,
            fb_count: b[15],
        }
    }

    /// How many packets the message reports on.
    pub fn status_count(&self) -> usize {
        usize::from(be16(self.body, 10))
    }

    /// Every reported packet in order: (transport-wide sequence number, status).
    pub fn statuses(&self) -> TwccStatuses<'a> {
        TwccStatuses {
            body: self.body,
            chunk_at: 16,
            in_chunk: 0,
            delta_at: self.deltas_at,
            left: self.status_count(),
            seq: be16(self.body, 8),
        }
    }
}

/// Iterator over a feedback message's statuses.
#[derive(Debug, Clone)]
pub struct TwccStatuses<'a> {
    body: &'a [u8],
    chunk_at: usize,
    in_chunk: usize,
    delta_at: usize,
    left: usize,
    seq: u16,
}

impl Iterator for TwccStatuses<'_> {
    type Item = (u16, TwccStatus);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // Validated: the chunks cover `left` statuses and every delta is present.
        let mut c = be16(self.body.get(self.chunk_at..self.chunk_at + 2)?, 0);
        while self.in_chunk >= chunk_len(c) {
            self.chunk_at += 2;
            self.in_chunk = 0;
            c = be16(self.body.get(self.chunk_at..self.chunk_at + 2)?, 0);
        }
        let sym = chunk_symbol(c, self.in_chunk);
        self.in_chunk += 1;
        let status = match sym {
            SYM_SMALL => {
                let d = *self.body.get(self.delta_at)?;
                self.delta_at += 1;
                TwccStatus::Received(i16::from(d))
            }
            SYM_LARGE => {
                let d = self.body.get(self.delta_at..self.delta_at + 2)?;
                self.delta_at += 2;
                TwccStatus::Received(i16::from_be_bytes([d[0], d[1]]))
            }
            _ => TwccStatus::NotReceived,
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.left -= 1;
        Some((seq, status))
    }
}

/// The next chunk for `deltas[i..]`: (chunk, statuses it covers).
fn next_chunk(deltas: &[Option<i16>], i: usize) -> (u16, usize) {
    let rest = &deltas[i..];
    let first = symbol(rest[0]);
    let run = rest
        .iter()
        .take(MAX_RUN)
        .take_while(|d| symbol(**d) == first)
        .count();
    let run_chunk = |n: usize| ((u16::from(first)) << 13 | n as u16, n);
    if run >= 14 || run == rest.len() {
        return run_chunk(run);
    }
    let window = rest.len().min(14);
    if rest[..window].iter().all(|d| symbol(*d) != SYM_LARGE) {
        let mut c = 0x8000u16;
        for (k, d) in rest[..window].iter().enumerate() {
            c |= u16::from(symbol(*d)) << (13 - k);
        }
        return (c, window);
    }
    if run >= 7 {
        return run_chunk(run);
    }
    let window = rest.len().min(7);
    let mut c = 0xC000u16;
    for (k, d) in rest[..window].iter().enumerate() {
        c |= u16::from(symbol(*d)) << (12 - 2 * k);
    }
    (c, window)
}

/// Bytes a feedback message for `deltas` takes (header and padding included).
pub fn transport_cc_len(deltas: &[Option<i16>]) -> usize {
    let mut chunks = 0;
    let mut i = 0;
    while i < deltas.len() {
        i += next_chunk(deltas, i).1;
        chunks += 1;
    }
    let delta_bytes: usize = deltas.iter().map(|d| delta_bytes(symbol(*d))).sum();
    (20 + 2 * chunks + delta_bytes).next_multiple_of(4)
}

/// Writes a transport-cc feedback message: `deltas[i]` is the status of
/// `base_seq + i` (None: not received; Some: receive delta in 250 µs units). At least
/// one and at most 65535 statuses. Padding to 32 bits uses the RTCP P bit.
pub fn write_transport_cc(
    buf: &mut [u8],
    header: &TwccHeader,
    deltas: &[Option<i16>],
) -> Result<usize, RtcpError> {
    let count = u16::try_from(deltas.len()).map_err(|_| RtcpError::TooManyItems)?;
    if count == 0 {
        return Err(RtcpError::Malformed {
            packet_type: PT_RTPFB,
            count: FMT_TRANSPORT_CC,
        });
    }
    let len = transport_cc_len(deltas);
    start_packet(buf, FMT_TRANSPORT_CC, PT_RTPFB, len)?;
    put32(buf, 4, header.sender_ssrc);
    put32(buf, 8, header.media_ssrc);
    put16(buf, 12, header.base_seq);
    put16(buf, 14, count);
    put32(
        buf,
        16,
        (header.reference_time & 0x00FF_FFFF) << 8 | u32::from(header.fb_count),
    );
    let mut at = 20;
    let mut i = 0;
    while i < deltas.len() {
        let (c, n) = next_chunk(deltas, i);
        put16(buf, at, c);
        at += 2;
        i += n;
    }
    for d in deltas.iter().flatten() {
        match symbol(Some(*d)) {
            SYM_SMALL => {
                buf[at] = *d as u8;
                at += 1;
            }
            _ => {
                buf[at..at + 2].copy_from_slice(&d.to_be_bytes());
                at += 2;
            }
        }
    }
    let pad = len - at;
    if pad > 0 {
        buf[at..len].fill(0);
        buf[len - 1] = pad as u8;
        buf[0] |= 0x20;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::super::{RtcpPacket, compound};
    use super::*;

    fn round_trip(header: &TwccHeader, deltas: &[Option<i16>]) -> Vec<(u16, TwccStatus)> {
        let mut buf = vec![0u8; 20 + 4 * deltas.len()];
        let n = write_transport_cc(&mut buf, header, deltas).expect("fits");
        assert_eq!(n % 4, 0);
        let Some(Ok(RtcpPacket::TransportCc(fb))) = compound(&buf[..n]).next() else {
            panic!("not transport-cc");
        };
        assert_eq!(fb.header(), *header);
        assert_eq!(fb.status_count(), deltas.len());
        fb.statuses().collect()
    }

    fn expected(base: u16, deltas: &[Option<i16>]) -> Vec<(u16, TwccStatus)> {
        deltas
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let s = d.map_or(TwccStatus::NotReceived, TwccStatus::Received);
                (base.wrapping_add(i as u16), s)
            })
            .collect()
    }

    #[test]
    fn chunk_kinds_round_trip() {
        let h = TwccHeader {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_seq: 65530,
            reference_time: 0x00AB_CDEF,
            fb_count: 200,
        };
        let cases: Vec<Vec<Option<i16>>> = vec![
            vec![Some(4)],
            vec![None, Some(0)],
            // Long run of small: run-length chunk.
            vec![Some(1); 100],
            // Mixed small / lost: 1-bit vectors.
            (0..30).map(|i| (i % 3 != 0).then_some(i)).collect(),
            // Large and negative deltas: 2-bit vectors.
            vec![
                Some(-4),
                None,
                Some(300),
                Some(2),
                Some(i16::MAX),
                Some(i16::MIN),
                None,
                Some(255),
                Some(256),
            ],
            // A long loss run then large.
            std::iter::repeat_n(None, 9000)
                .chain([Some(1000)])
                .collect(),
            // Seven large in a row then small.
            std::iter::repeat_n(Some(-1), 8)
                .chain([Some(1), None])
                .collect(),
        ];
        for deltas in cases {
            assert_eq!(
                round_trip(&h, &deltas),
                expected(65530, &deltas),
                "{deltas:?}"
            );
        }
    }

    #[test]
    fn wire_form_of_a_small_message() {
        // Three packets: received (delta 1), lost, received (delta 2): one 1-bit status
        // vector chunk (1, 0, 1 in bits 13..11: 0xA800), then the two 1-byte deltas.
        let h = TwccHeader {
            sender_ssrc: 0,
            media_ssrc: 0,
            base_seq: 10,
            reference_time: 1,
            fb_count: 3,
        };
        let mut buf = [0u8; 32];
        let n = write_transport_cc(&mut buf, &h, &[Some(1), None, Some(2)]).expect("fits");
        // 20 fixed + 2 chunk + 2 deltas = 24, no padding needed.
        assert_eq!(n, 24);
        assert_eq!(&buf[..4], &[0x8F, 205, 0, 5]);
        assert_eq!(&buf[12..24], &[0, 10, 0, 3, 0, 0, 1, 3, 0xA8, 0x00, 1, 2]);
        // One more delta: 25 bytes, padded to 28 with the P bit.
        let n = write_transport_cc(&mut buf, &h, &[Some(1), None, Some(2), Some(3)]).expect("fits");
        assert_eq!(n, 28);
        assert_eq!(buf[0], 0xAF);
        assert_eq!(&buf[25..28], &[0, 0, 3]);
    }

    #[test]
    fn malformed_feedback_is_rejected() {
        let h = TwccHeader::default();
        let mut buf = [0u8; 64];
        let n = write_transport_cc(&mut buf, &h, &[Some(1), Some(300)]).expect("fits");
        // Claim more statuses than the chunks carry.
        let mut more = buf;
        more[15] = 200;
        assert!(compound(&more[..n]).next().is_some_and(|r| r.is_err()));
        // Reserved symbol 3 in a 2-bit vector.
        let mut reserved = buf;
        reserved[20] = 0xFF;
        assert!(compound(&reserved[..n]).next().is_some_and(|r| r.is_err()));
        assert!(write_transport_cc(&mut buf, &h, &[]).is_err());
        assert!(matches!(
            write_transport_cc(&mut buf[..20], &h, &[Some(1)]),
            Err(RtcpError::BufferTooSmall { .. })
        ));
    }

    proptest::proptest! {
        /// Any status/delta sequence survives the chunk encoder and the parser.
        #[test]
        fn any_statuses_round_trip(
            base in proptest::prelude::any::<u16>(),
            deltas in proptest::collection::vec(
                proptest::option::of(proptest::prop_oneof![
                    0i16..=255,
                    proptest::prelude::any::<i16>()
                ]),
                1..600
            )
        ) {
            let h = TwccHeader { base_seq: base, fb_count: 9, ..TwccHeader::default() };
            proptest::prop_assert_eq!(round_trip(&h, &deltas), expected(base, &deltas));
            proptest::prop_assert!(transport_cc_len(&deltas) <= 20 + 4 * deltas.len());
        }
    }
}
