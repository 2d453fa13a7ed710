//! RTCP feedback the SFU reads from receivers and sends to publishers (RFC 4585, RFC
//! 5104, draft-alvestrand-rmcat-remb): generic NACK, PLI, FIR and REMB views and builders.

use super::{
    FMT_AFB, FMT_FIR, FMT_NACK, FMT_PLI, PT_PSFB, PT_RTPFB, RtcpError, be16, be32, put16, put32,
    start_packet,
};

/// Sender and media-source SSRCs common to every feedback message.
fn ssrcs(body: &[u8]) -> (u32, u32) {
    (be32(body, 0), be32(body, 4))
}

/// A generic NACK (RTPFB FMT 1): lost packets of one media source.
#[derive(Debug, Clone, Copy)]
pub struct Nack<'a> {
    body: &'a [u8],
}

impl<'a> Nack<'a> {
    pub(super) fn new(body: &'a [u8]) -> Option<Self> {
        (body.len() >= 12 && body.len().is_multiple_of(4)).then_some(Self { body })
    }

    /// The sender of the feedback.
    pub fn sender_ssrc(&self) -> u32 {
        ssrcs(self.body).0
    }

    /// The media source whose packets are lost.
    pub fn media_ssrc(&self) -> u32 {
        ssrcs(self.body).1
    }

    /// The (PID, BLP) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.body[8..]
            .chunks_exact(4)
            .map(|c| (be16(c, 0), be16(c, 2)))
    }

    /// Every lost sequence number: each PID, then PID+i+1 for each set bit i of its BLP.
    pub fn lost(&self) -> impl Iterator<Item = u16> + 'a {
        self.pairs().flat_map(|(pid, blp)| {
            std::iter::once(pid).chain(
                (0..16u16)
                    .filter(move |i| blp & (1 << i) != 0)
                    .map(move |i| pid.wrapping_add(i + 1)),
            )
        })
    }
}

/// Packs lost sequence numbers (in sending order, wrap-aware) into (PID, BLP) pairs.
fn nack_pairs(lost: &[u16]) -> impl Iterator<Item = (u16, u16)> + '_ {
    let mut rest = lost;
    std::iter::from_fn(move || {
        let (&pid, tail) = rest.split_first()?;
        let mut blp = 0u16;
        let mut used = 0;
        for &seq in tail {
            let d = seq.wrapping_sub(pid);
            match d {
                0 => {}                        // duplicate
                1..=16 => blp |= 1 << (d - 1), // within this pair's bitmask
                _ => break,
            }
            used += 1;
        }
        rest = &tail[used..];
        Some((pid, blp))
    })
}

/// Writes a generic NACK for `lost` (sorted in sequence order, wrap-aware: 65535 before
/// 0; duplicates are fine; unsorted input is still correct, only less compact).
pub fn write_nack(
    buf: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    lost: &[u16],
) -> Result<usize, RtcpError> {
    let pairs = nack_pairs(lost).count();
    if pairs == 0 {
        return Err(RtcpError::Malformed {
            packet_type: PT_RTPFB,
            count: FMT_NACK,
        });
    }
    let len = 12 + 4 * pairs;
    start_packet(buf, FMT_NACK, PT_RTPFB, len)?;
    put32(buf, 4, sender_ssrc);
    put32(buf, 8, media_ssrc);
    for (i, (pid, blp)) in nack_pairs(lost).enumerate() {
        put16(buf, 12 + 4 * i, pid);
        put16(buf, 14 + 4 * i, blp);
    }
    Ok(len)
}

/// A picture loss indication (PSFB FMT 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pli {
    sender_ssrc: u32,
    media_ssrc: u32,
}

impl Pli {
    pub(super) fn new(body: &[u8]) -> Option<Self> {
        (body.len() >= 8).then(|| {
            let (sender_ssrc, media_ssrc) = ssrcs(body);
            Self {
                sender_ssrc,
                media_ssrc,
            }
        })
    }

    /// The sender of the feedback.
    pub fn sender_ssrc(&self) -> u32 {
        self.sender_ssrc
    }

    /// The source that should send a keyframe.
    pub fn media_ssrc(&self) -> u32 {
        self.media_ssrc
    }
}

/// Writes a PLI (12 bytes).
pub fn write_pli(buf: &mut [u8], sender_ssrc: u32, media_ssrc: u32) -> Result<usize, RtcpError> {
    start_packet(buf, FMT_PLI, PT_PSFB, 12)?;
    put32(buf, 4, sender_ssrc);
    put32(buf, 8, media_ssrc);
    Ok(12)
}

/// One FIR entry: the source asked for a keyframe and the command sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirEntry {
    /// The media source.
    pub ssrc: u32,
    /// Command sequence number: incremented per new request, kept for repetitions.
    pub seq: u8,
}

/// A full intra request (PSFB FMT 4, RFC 5104 §4.3.1).
#[derive(Debug, Clone, Copy)]
pub struct Fir<'a> {
    body: &'a [u8],
}

impl<'a> Fir<'a> {
    pub(super) fn new(body: &'a [u8]) -> Option<Self> {
        (body.len() >= 16 && (body.len() - 8).is_multiple_of(8)).then_some(Self { body })
    }

    /// The sender of the request.
    pub fn sender_ssrc(&self) -> u32 {
        ssrcs(self.body).0
    }

    /// The FCI entries.
    pub fn entries(&self) -> impl Iterator<Item = FirEntry> + 'a {
        self.body[8..].chunks_exact(8).map(|c| FirEntry {
            ssrc: be32(c, 0),
            seq: c[4],
        })
    }
}

/// Writes a FIR with the given entries (media-source field 0 per RFC 5104).
pub fn write_fir(
    buf: &mut [u8],
    sender_ssrc: u32,
    entries: &[FirEntry],
) -> Result<usize, RtcpError> {
    if entries.is_empty() {
        return Err(RtcpError::Malformed {
            packet_type: PT_PSFB,
            count: FMT_FIR,
        });
    }
    let len = 12 + 8 * entries.len();
    start_packet(buf, FMT_FIR, PT_PSFB, len)?;
    put32(buf, 4, sender_ssrc);
    put32(buf, 8, 0);
    for (i, e) in entries.iter().enumerate() {
        let at = 12 + 8 * i;
        put32(buf, at, e.ssrc);
        put32(buf, at + 4, u32::from(e.seq) << 24);
    }
    Ok(len)
}

const REMB_ID: &[u8; 4] = b"REMB";

/// Receiver estimated maximum bitrate (PSFB FMT 15, "REMB").
#[derive(Debug, Clone, Copy)]
pub struct Remb<'a> {
    body: &'a [u8],
}

impl<'a> Remb<'a> {
    pub(super) fn is_remb(body: &[u8]) -> bool {
        body.get(8..12) == Some(REMB_ID)
    }

    pub(super) fn new(body: &'a [u8]) -> Option<Self> {
        let num = usize::from(*body.get(12)?);
        (body.len() >= 16 + 4 * num).then_some(Self { body })
    }

    /// The sender of the estimate.
    pub fn sender_ssrc(&self) -> u32 {
        ssrcs(self.body).0
    }

    /// The estimate in bits per second (mantissa << exponent, saturating).
    pub fn bitrate_bps(&self) -> u64 {
        let v = be32(self.body, 12);
        let exp = (v >> 18) & 0x3F;
        let mantissa = u64::from(v & 0x3_FFFF);
        mantissa
            .checked_shl(exp)
            .filter(|r| r >> exp == mantissa)
            .unwrap_or(u64::MAX)
    }

    /// The media sources the estimate applies to.
    pub fn ssrcs(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        let num = usize::from(self.body[12]);
        self.body[16..16 + 4 * num]
            .chunks_exact(4)
            .map(|c| be32(c, 0))
    }
}

/// Writes a REMB: the bitrate is rounded down to an 18-bit mantissa and 6-bit exponent.
pub fn write_remb(
    buf: &mut [u8],
    sender_ssrc: u32,
    bitrate_bps: u64,
    ssrcs: &[u32],
) -> Result<usize, RtcpError> {
    let num = u8::try_from(ssrcs.len()).map_err(|_| RtcpError::TooManyItems)?;
    let len = 20 + 4 * ssrcs.len();
    start_packet(buf, FMT_AFB, PT_PSFB, len)?;
    let mut exp = 0u32;
    while bitrate_bps >> exp >= 1 << 18 {
        exp += 1;
    }
    let mantissa = (bitrate_bps >> exp) as u32;
    put32(buf, 4, sender_ssrc);
    put32(buf, 8, 0);
    buf[12..16].copy_from_slice(REMB_ID);
    put32(buf, 16, u32::from(num) << 24 | exp << 18 | mantissa);
    for (i, s) in ssrcs.iter().enumerate() {
        put32(buf, 20 + 4 * i, *s);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::super::{RtcpPacket, compound};
    use super::*;

    fn nack_round_trip(lost: &[u16]) -> (usize, Vec<u16>) {
        let mut buf = [0u8; 1500];
        let n = write_nack(&mut buf, 1, 2, lost).expect("fits");
        let Some(Ok(RtcpPacket::Nack(nack))) = compound(&buf[..n]).next() else {
            panic!("not a NACK");
        };
        assert_eq!((nack.sender_ssrc(), nack.media_ssrc()), (1, 2));
        (nack.pairs().count(), nack.lost().collect())
    }

    #[test]
    fn nack_packs_pid_blp_and_wraps() {
        // One pair: PID 100 + bits for 101, 105, 116.
        assert_eq!(
            nack_round_trip(&[100, 101, 105, 116]),
            (1, vec![100, 101, 105, 116])
        );
        // 117 is 17 past 100: a second pair.
        assert_eq!(nack_round_trip(&[100, 117]), (2, vec![100, 117]));
        // Wrap: 65534, 65535, 0, 3 fit one pair.
        assert_eq!(
            nack_round_trip(&[65534, 65535, 0, 3]),
            (1, vec![65534, 65535, 0, 3])
        );
        // Duplicates collapse.
        assert_eq!(nack_round_trip(&[7, 7, 8]), (1, vec![7, 8]));
        // A long run of 40: three pairs (17 + 17 + 6).
        let run: Vec<u16> = (0..40u16).map(|i| 65520u16.wrapping_add(i)).collect();
        assert_eq!(nack_round_trip(&run), (3, run.clone()));
        // The wire form of the first example.
        let mut buf = [0u8; 16];
        assert_eq!(write_nack(&mut buf, 1, 2, &[100, 101, 105, 116]), Ok(16));
        assert_eq!(&buf[12..], &[0, 100, 0x80, 0x11]);
        assert!(write_nack(&mut buf, 1, 2, &[]).is_err());
        assert_eq!(
            write_nack(&mut buf, 1, 2, &[1, 100]),
            Err(RtcpError::BufferTooSmall { need: 20, have: 16 })
        );
    }

    #[test]
    fn pli_fir_remb_round_trip() {
        let mut buf = [0u8; 64];
        let n = write_pli(&mut buf, 5, 6).expect("fits");
        assert_eq!(&buf[..4], &[0x81, 206, 0, 2]);
        assert!(matches!(
            compound(&buf[..n]).next(),
            Some(Ok(RtcpPacket::Pli(p))) if p.sender_ssrc() == 5 && p.media_ssrc() == 6
        ));

        let entries = [
            FirEntry { ssrc: 10, seq: 255 },
            FirEntry { ssrc: 11, seq: 0 },
        ];
        let n = write_fir(&mut buf, 5, &entries).expect("fits");
        assert_eq!(n, 28);
        let Some(Ok(RtcpPacket::Fir(fir))) = compound(&buf[..n]).next() else {
            panic!("not a FIR");
        };
        assert_eq!(fir.sender_ssrc(), 5);
        assert_eq!(fir.entries().collect::<Vec<_>>(), entries.to_vec());

        for bitrate in [
            0u64,
            1,
            262_143,
            262_144,
            1_500_000,
            2_500_000_123,
            u64::MAX >> 1,
        ] {
            let n = write_remb(&mut buf, 5, bitrate, &[1, 2, 3]).expect("fits");
            let Some(Ok(RtcpPacket::Remb(remb))) = compound(&buf[..n]).next() else {
                panic!("not a REMB");
            };
            let got = remb.bitrate_bps();
            assert!(got <= bitrate, "rounded down: {got} > {bitrate}");
            // Precision of an 18-bit mantissa: error below 2^-17 of the value.
            assert!(bitrate - got <= bitrate >> 17, "{bitrate} -> {got}");
            assert_eq!(remb.ssrcs().collect::<Vec<_>>(), vec![1, 2, 3]);
            assert_eq!(remb.sender_ssrc(), 5);
        }
        // REMB whose SSRC count runs past the packet.
        let n = write_remb(&mut buf, 5, 1000, &[1]).expect("fits");
        buf[16] = 2;
        assert!(compound(&buf[..n]).next().is_some_and(|r| r.is_err()));
        // Exponent 63 with a full mantissa saturates.
        buf[16..20].copy_from_slice(&[1, 0xFF, 0xFF, 0xFF]);
        let Some(Ok(RtcpPacket::Remb(remb))) = compound(&buf[..n]).next() else {
            panic!("not a REMB");
        };
        assert_eq!(remb.bitrate_bps(), u64::MAX);
    }

    proptest::proptest! {
        /// Any set of lost numbers within one window, starting anywhere (wraps included),
        /// comes back exactly, in order.
        #[test]
        fn nack_round_trips_any_loss_set(
            base in proptest::prelude::any::<u16>(),
            offsets in proptest::collection::btree_set(0u16..2000, 1..200)
        ) {
            let lost: Vec<u16> = offsets.iter().map(|o| base.wrapping_add(*o)).collect();
            let (pairs, back) = nack_round_trip(&lost);
            proptest::prop_assert_eq!(&back, &lost);
            proptest::prop_assert!(pairs <= lost.len());
        }
    }
}
