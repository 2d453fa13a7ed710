//! Proves that the per-packet RTP/RTCP paths never allocate: RTP parse and extension
//! reads, the in-place rewrite, the RTCP compound walk, and the NACK, PLI, FIR, REMB, RR
//! and transport-cc builders, TWCC recording and feedback included.
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own.

use relay::rtp::ext::{ExtMap, uri};
use relay::rtp::rtcp::{
    FirEntry, ReportBlock, RtcpPacket, compound, write_fir, write_nack, write_pli, write_remb,
    write_rr,
};
use relay::rtp::{RtpMut, RtpView, TwccRecorder, classify};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

/// A video packet with CSRCs, a one-byte extension block (audio level, transport-cc,
/// mid, rid) and padding.
fn rtp_packet() -> Vec<u8> {
    let mut p = vec![0x80 | 0x20 | 0x10 | 1, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
    p.extend_from_slice(&9u32.to_be_bytes());
    p.extend_from_slice(&[0xBE, 0xDE, 0, 3]);
    p.extend_from_slice(&[
        0x10, 0x85, 0x31, 0x00, 0x07, 0x40, b'v', 0xA1, b'h', b'i', 0, 0,
    ]);
    p.extend_from_slice(&[0xAB; 1000]);
    p.extend_from_slice(&[0, 0, 0, 4]);
    p
}

#[test]
fn rtp_and_rtcp_hot_paths_do_not_allocate() {
    let mut map = ExtMap::default();
    map.bind(1, uri::AUDIO_LEVEL);
    map.bind(3, uri::TRANSPORT_CC);
    map.bind(4, uri::MID);
    map.bind(10, uri::RID);
    let mut packet = rtp_packet();
    let mut twcc = TwccRecorder::new(1, 2);
    let mut out = [0u8; 1500];
    let lost: Vec<u16> = (65500..=65535).chain(0..40).step_by(3).collect();
    let blocks = [ReportBlock::default(); 3];
    let fir = [FirEntry { ssrc: 3, seq: 1 }];

    // Sanity: the counter does count on this thread (otherwise the test proves nothing).
    let sanity = allocations_during(|| drop(std::hint::black_box(Box::new(7u64))));
    assert!(sanity >= 1, "the counting allocator is not in use");

    let mut checks = (0u64, 0u64, 0u64);
    let allocated = allocations_during(|| {
        for i in 0..2000u16 {
            let _ = std::hint::black_box(classify(&packet));
            let v = RtpView::parse(&packet).expect("valid");
            let k = map.read(&v);
            checks.0 += u64::from(k.transport_seq.is_some() && k.rid == Some("hi"));
            checks.0 += v.csrcs().sum::<u32>() as u64 / 9;
            let mut m = RtpMut::parse(&mut packet).expect("valid");
            m.set_ssrc(0xABCD);
            m.set_sequence(i);
            m.set_timestamp(u32::from(i) * 3000);
            m.set_marker(i % 30 == 0);
            m.set_extension(3, &i.to_be_bytes()).expect("same length");
            // A jittery arrival clock with some losses and reordering.
            if i % 17 != 0 {
                let seq = if i % 5 == 0 { i.wrapping_sub(1) } else { i };
                twcc.record(seq.wrapping_add(65000), 1_000_000 + u64::from(i) * 2_100);
            }
            if i % 50 == 49 {
                while let Some(n) = twcc.write_feedback(&mut out).expect("fits") {
                    for p in compound(&out[..n]) {
                        if let Ok(RtcpPacket::TransportCc(t)) = p {
                            checks.1 += t.statuses().count() as u64;
                        }
                    }
                }
                let mut n = write_rr(&mut out, 1, &blocks).expect("fits");
                n += write_nack(&mut out[n..], 1, 2, &lost).expect("fits");
                n += write_pli(&mut out[n..], 1, 2).expect("fits");
                n += write_fir(&mut out[n..], 1, &fir).expect("fits");
                n += write_remb(&mut out[n..], 1, 2_500_000, &[2, 3]).expect("fits");
                for p in compound(&out[..n]) {
                    match p.expect("valid") {
                        RtcpPacket::Nack(nack) => checks.2 += nack.lost().count() as u64,
                        RtcpPacket::Remb(r) => checks.2 += r.bitrate_bps() / 2_500_000,
                        _ => checks.2 += 1,
                    }
                }
            }
        }
    });
    assert_eq!(allocated, 0, "the RTP/RTCP per-packet path allocated");
    // The loop did the work it claims (reads decoded, feedback and NACKs parsed back).
    assert_eq!(checks.0, 4000);
    assert!(checks.1 >= 1900, "TWCC statuses reported: {}", checks.1);
    assert_eq!(checks.2, 40 * (lost.len() as u64 + 4));
    assert_eq!(RtpView::parse(&packet).expect("valid").ssrc(), 0xABCD);
}
