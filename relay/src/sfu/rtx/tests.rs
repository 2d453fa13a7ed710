use super::*;
use crate::rtp::rtcp::{RtcpPacket, compound, write_nack};

/// An RTP packet: V=2, optional padding, 1 CSRC, a one-byte-form extension with one
/// element (id 3, 2 bytes), payload `payload`.
fn rtp(seq: u16, payload: &[u8], padding: usize) -> Vec<u8> {
    let mut p = vec![0x80 | 0x10 | 0x01, 0x80 | 96];
    if padding > 0 {
        p[0] |= 0x20;
    }
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&0x1122_3344u32.to_be_bytes()); // timestamp
    p.extend_from_slice(&0xAAAA_BBBBu32.to_be_bytes()); // ssrc
    p.extend_from_slice(&0x0000_0042u32.to_be_bytes()); // csrc
    p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x31, 0xCA, 0xFE, 0]); // extension
    p.extend_from_slice(payload);
    if padding > 0 {
        p.extend(std::iter::repeat_n(0, padding - 1));
        p.push(padding as u8);
    }
    p
}

#[test]
fn wrap_builds_rfc4588_packet() {
    let original = rtp(1000, b"hello", 4);
    let mut out = [0u8; 100];
    let n = wrap(&original, &mut out, 0x5555_6666, 97, 7, 4242).expect("wraps");
    let v = RtpView::parse(&out[..n]).expect("valid RTP");
    assert_eq!(v.ssrc(), 0x5555_6666);
    assert_eq!(v.payload_type(), 97);
    assert!(v.marker(), "marker kept");
    assert_eq!(v.sequence(), 7);
    assert_eq!(v.timestamp(), 0x1122_3344, "timestamp kept");
    assert_eq!(v.csrcs().collect::<Vec<_>>(), vec![0x42]);
    assert_eq!(v.extension(3), Some(&[0xCA, 0xFE][..]));
    assert_eq!(v.padding_len(), 0, "padding removed");
    assert_eq!(
        v.payload(),
        b"\x10\x92hello",
        "OSN 4242 = 0x1092 then payload"
    );
    // Exact size: header 12 + 4 + 8, OSN 2, payload 5.
    assert_eq!(n, 24 + 2 + 5);
    assert_eq!(
        wrap(&original, &mut out[..30], 1, 97, 7, 1),
        Err(RtxError::BufferTooSmall { need: 31, have: 30 })
    );
    assert_eq!(
        wrap(&original, &mut out, 1, 128, 7, 1),
        Err(RtxError::BadPayloadType(128))
    );
    assert_eq!(
        wrap(&original[..11], &mut out, 1, 97, 7, 1),
        Err(RtxError::Rtp(RtpError::TooShort))
    );
}

#[test]
fn unwrap_recovers_the_original() {
    let original = rtp(1000, b"payload bytes", 0);
    let mut rtx = [0u8; 100];
    let n = wrap(&original, &mut rtx, 0x5555_6666, 97, 7, 1000).expect("wraps");
    let mut back = [0u8; 100];
    let (m, osn) = unwrap(&rtx[..n], &mut back, 0xAAAA_BBBB, 96).expect("unwraps");
    assert_eq!(osn, 1000);
    assert_eq!(&back[..m], &original[..]);
    // In place gives the same.
    let (m2, osn2) = unwrap_in_place(&mut rtx[..n], 0xAAAA_BBBB, 96).expect("unwraps");
    assert_eq!((m2, osn2), (m, osn));
    assert_eq!(&rtx[..m2], &original[..]);

    // A padded RTX packet (libwebrtc pads retransmissions): the padding goes.
    let mut padded = rtp(7, &[0x03, 0xE8, 9, 9], 3);
    padded[8..12].copy_from_slice(&0x5555_6666u32.to_be_bytes());
    let (m, osn) = unwrap(&padded, &mut back, 0xAAAA_BBBB, 96).expect("unwraps");
    assert_eq!(osn, 1000);
    let v = RtpView::parse(&back[..m]).expect("valid");
    assert_eq!(
        (v.sequence(), v.payload(), v.padding_len()),
        (1000, &[9u8, 9][..], 0)
    );
    let (m2, _) = unwrap_in_place(&mut padded, 0xAAAA_BBBB, 96).expect("unwraps");
    assert_eq!(&padded[..m2], &back[..m]);

    // Padding-only probe: no OSN.
    let probe = rtp(8, &[], 4);
    assert_eq!(unwrap(&probe, &mut back, 1, 96), Err(RtxError::NoOsn));
    assert_eq!(
        unwrap_in_place(&mut probe.clone(), 1, 96),
        Err(RtxError::NoOsn)
    );
    assert_eq!(
        unwrap(&rtx[..n], &mut back[..10], 1, 96),
        Err(RtxError::BufferTooSmall { need: 37, have: 10 })
    );
}

#[test]
fn nack_reader_in_rtcp_answers_the_fci() {
    // The brief's nack_seqs exists as rtp::rtcp::Nack::lost(): check it on PID 65535,
    // BLP bits 0 and 15 (wrap to 0 and 15).
    let mut buf = [0u8; 64];
    let n = write_nack(&mut buf, 1, 2, &[65535, 0, 15]).expect("fits");
    assert_eq!(&buf[12..16], &[0xFF, 0xFF, 0x80, 0x01]);
    let Some(Ok(RtcpPacket::Nack(nack))) = compound(&buf[..n]).next() else {
        panic!("not a NACK");
    };
    assert_eq!(nack.lost().collect::<Vec<_>>(), vec![65535, 0, 15]);
}

fn poll(g: &mut NackGenerator, now: u64) -> Vec<u16> {
    let mut out = [0u16; 64];
    let n = g.poll_nacks(now, &mut out);
    out[..n].to_vec()
}

#[test]
fn generator_nacks_gaps_three_times_spaced_by_rtt() {
    let mut g = NackGenerator::new();
    g.set_rtt(50_000);
    assert!(!g.on_packet(65534, 0));
    assert_eq!(poll(&mut g, 0), Vec::<u16>::new());
    assert_eq!(g.poll_timeout(), None);
    // 65535, 0 and 2 lost across the wrap.
    assert!(!g.on_packet(1, 1_000));
    assert!(!g.on_packet(3, 2_000));
    assert_eq!(g.missing(), 3);
    assert_eq!(g.poll_timeout(), Some(1_000));
    assert_eq!(poll(&mut g, 2_000), vec![65535, 0, 2]);
    // Not again before the spacing (max(20 ms, 50 ms RTT)).
    assert_eq!(poll(&mut g, 40_000), Vec::<u16>::new());
    assert_eq!(g.poll_timeout(), Some(52_000));
    // 0 arrives (retransmitted): no longer asked for.
    assert!(!g.on_packet(0, 45_000));
    assert_eq!(g.missing(), 2);
    assert_eq!(poll(&mut g, 52_000), vec![65535, 2]);
    assert_eq!(poll(&mut g, 102_000), vec![65535, 2]);
    // Three NACKs each: no fourth; given up one spacing after the third.
    assert_eq!(poll(&mut g, 130_000), Vec::<u16>::new());
    assert_eq!(g.missing(), 2);
    assert_eq!(poll(&mut g, 152_000), Vec::<u16>::new());
    assert_eq!(g.missing(), 0);
    assert_eq!(g.take_given_up(), 2);
    assert_eq!(g.take_given_up(), 0);
    assert_eq!(g.poll_timeout(), None);
}

#[test]
fn generator_spacing_floor_give_up_and_out_capacity() {
    let mut g = NackGenerator::new();
    g.on_packet(100, 0);
    g.on_packet(110, 0); // 101..=109 missing
    let mut out = [0u16; 4];
    assert_eq!(g.poll_nacks(0, &mut out), 4);
    assert_eq!(out, [101, 102, 103, 104]);
    assert_eq!(poll(&mut g, 1), vec![105, 106, 107, 108, 109]);
    // RTT 0: spacing is the 20 ms floor.
    assert_eq!(poll(&mut g, 19_999), Vec::<u16>::new());
    assert_eq!(poll(&mut g, 20_000), vec![101, 102, 103, 104]);
    // Forgotten after 1 s even with NACKs left.
    let mut g = NackGenerator::new();
    g.set_rtt(600_000);
    g.on_packet(1, 0);
    g.on_packet(3, 0);
    assert_eq!(poll(&mut g, 0), vec![2]);
    assert_eq!(poll(&mut g, 600_000), vec![2]);
    assert_eq!(g.poll_timeout(), Some(1_000_000));
    assert_eq!(poll(&mut g, 1_000_000), Vec::<u16>::new());
    assert_eq!(g.missing(), 0);
    assert_eq!(g.take_given_up(), 1);
}

#[test]
fn generator_large_jump_asks_for_keyframe_and_old_is_ignored() {
    let mut g = NackGenerator::new();
    g.on_packet(10, 0);
    g.on_packet(12, 0);
    assert_eq!(g.missing(), 1);
    // A gap of 257 > MAX_NACK_GAP: start over, ask for a keyframe.
    assert!(g.on_packet(12 + 258, 0));
    assert_eq!(g.missing(), 0);
    // A gap of exactly 256 is NACKed.
    assert!(!g.on_packet(270 + 257, 0));
    assert_eq!(g.missing(), 256);
    assert_eq!(poll(&mut g, 0).len(), 64);
    // Duplicates and very old packets change nothing.
    g.on_packet(527, 0);
    g.on_packet(5, 0);
    assert_eq!(g.missing(), 256);
    // Advancing by a window recycles every old entry: the count follows.
    for s in 528..528 + 600u16 {
        g.on_packet(s, 1);
    }
    assert_eq!(g.missing(), 0);
}

proptest::proptest! {
    /// Any bytes: wrap / unwrap / unwrap_in_place return a result, never panic, and what
    /// they write fits and parses.
    #[test]
    fn rtx_functions_never_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        out_len in 0usize..140, pt in proptest::prelude::any::<u8>()
    ) {
        let mut out = vec![0u8; out_len];
        if let Ok(n) = wrap(&bytes, &mut out, 1, pt, 2, 3) {
            proptest::prop_assert!(RtpView::parse(&out[..n]).is_ok());
            let mut back = vec![0u8; 140];
            let (m, osn) = unwrap(&out[..n], &mut back, 9, pt).expect("own RTX unwraps");
            proptest::prop_assert_eq!(osn, 3);
            let orig = RtpView::parse(&bytes).expect("wrapped, so valid");
            let got = RtpView::parse(&back[..m]).expect("valid");
            proptest::prop_assert_eq!(got.payload(), orig.payload());
        }
        if let Ok((n, _)) = unwrap(&bytes, &mut out, 1, pt) {
            proptest::prop_assert!(RtpView::parse(&out[..n]).is_ok());
        }
        let mut inplace = bytes.clone();
        if let Ok((n, _)) = unwrap_in_place(&mut inplace, 1, pt) {
            proptest::prop_assert!(RtpView::parse(&inplace[..n]).is_ok());
        }
    }

    /// Any arrival order and timing: the missing count matches the entries, NACKs are
    /// never for received numbers, and at most 3 per number.
    #[test]
    fn generator_is_consistent(
        start in proptest::prelude::any::<u16>(),
        steps in proptest::collection::vec((0u16..40, 0u64..30_000, proptest::prelude::any::<bool>()), 1..300)
    ) {
        let mut g = NackGenerator::new();
        let mut now = 0u64;
        let mut seq = start;
        let mut received = std::collections::HashSet::new();
        let mut counts = std::collections::HashMap::<u16, u32>::new();
        g.on_packet(seq, now);
        received.insert(seq);
        for (jump, dt, back) in steps {
            now += dt;
            let s = if back { seq.wrapping_sub(jump) } else { seq.wrapping_add(jump) };
            if !back { seq = s; }
            g.on_packet(s, now);
            received.insert(s);
            for n in poll(&mut g, now) {
                proptest::prop_assert!(!received.contains(&n), "NACK for received {}", n);
                let c = counts.entry(n).or_default();
                *c += 1;
                proptest::prop_assert!(*c <= 3);
            }
            let real = g.ring.iter().filter(|e| e.missing).count();
            proptest::prop_assert_eq!(real, g.missing());
        }
    }
}
