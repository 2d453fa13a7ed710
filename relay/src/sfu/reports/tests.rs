use super::*;
use crate::rtp::rtcp::{RtcpPacket, compound, write_rr, write_sr};

fn feed(s: &mut ReceiveStats, seqs: &[u16]) {
    for &seq in seqs {
        s.on_packet(seq, 0, 0, 90_000);
    }
}

#[test]
fn loss_with_reordering_duplicates_and_wrap() {
    // RFC 3550 A.1 / A.3 by hand.
    let mut s = ReceiveStats::new();
    assert!(!s.has_received());
    // 65534 arrives late, 65533 is the base, 1 is lost, 3 arrives after 4.
    feed(&mut s, &[65533, 65535, 0, 65534, 2, 4, 3]);
    assert_eq!(s.extended_highest(), 65536 + 4);
    // expected = 65540 - 65533 + 1 = 8, received 7.
    let b = s.report_block(0xABCD, 0);
    assert_eq!(b.ssrc, 0xABCD);
    assert_eq!(b.highest_seq, 65540);
    assert_eq!(b.cumulative_lost, 1);
    assert_eq!(b.fraction_lost, 32, "1/8 of 256");
    // Next interval: 5, 6, 8 and a duplicate 8: expected 4, received 4 -> fraction 0,
    // although 7 is lost (duplicates mask it, as RFC 3550 counts).
    feed(&mut s, &[5, 6, 8, 8]);
    let b = s.report_block(0xABCD, 0);
    assert_eq!(
        (b.highest_seq, b.cumulative_lost, b.fraction_lost),
        (65544, 1, 0)
    );
    // 9..=18 with 10 and 11 lost: 2 of 10 -> 512 / 10 = 51.
    feed(&mut s, &[9, 12, 13, 14, 15, 16, 17, 18]);
    let b = s.report_block(0xABCD, 0);
    assert_eq!(
        (b.highest_seq, b.cumulative_lost, b.fraction_lost),
        (65554, 3, 51)
    );
    // An empty interval: fraction 0.
    assert_eq!(s.report_block(0xABCD, 0).fraction_lost, 0);

    // One wild packet far ahead is ignored; two in a row are a restart (A.1).
    feed(&mut s, &[30_000]);
    assert_eq!(s.extended_highest(), 65554);
    feed(&mut s, &[19]);
    assert_eq!(s.report_block(1, 0).cumulative_lost, 3);
    feed(&mut s, &[10_000, 10_001]);
    let b = s.report_block(1, 0);
    assert_eq!(
        (b.highest_seq, b.cumulative_lost, b.fraction_lost),
        (10_001, 0, 0)
    );

    // Duplicates only: negative loss.
    let mut d = ReceiveStats::new();
    feed(&mut d, &[1, 1, 1]);
    assert_eq!(d.cumulative_lost(), -2);
    assert_eq!(d.report_block(1, 0).fraction_lost, 0);
}

#[test]
fn cumulative_loss_clamps_to_24_bits() {
    let mut s = ReceiveStats::new();
    let mut seq = 0u16;
    s.on_packet(seq, 0, 0, 90_000);
    // Jumps of 2999 (below MAX_DROPOUT): 2998 lost each, 2800 times = 8 394 400 > 2^23.
    for _ in 0..2800 {
        seq = seq.wrapping_add(2999);
        s.on_packet(seq, 0, 0, 90_000);
    }
    assert_eq!(s.cumulative_lost(), (1 << 23) - 1);
    let b = s.report_block(5, 0);
    assert_eq!(b.fraction_lost, 255, "2998/2999 of 256, capped");
    assert_eq!(b.highest_seq, 2800 * 2999);
    let mut buf = [0u8; 64];
    let n = write_rr(&mut buf, 9, &[b]).expect("fits");
    let Some(Ok(RtcpPacket::ReceiverReport(rr))) = compound(&buf[..n]).next() else {
        panic!("not an RR");
    };
    assert_eq!(rr.report_blocks().next(), Some(b));
}

#[test]
fn jitter_on_a_known_arrival_pattern() {
    // 8 kHz, one packet per 20 ms (160 units); every odd packet arrives 5 ms (40 units)
    // late, so |D| = 40 for every pair: J_i = J_{i-1} + (40 - J_{i-1}) / 16 (A.8).
    let mut s = ReceiveStats::new();
    let arrive = |i: u32| u64::from(i) * 20_000 + if i % 2 == 1 { 5_000 } else { 0 };
    s.on_packet(0, 0, arrive(0), 8_000);
    assert_eq!(s.jitter(), 0.0);
    s.on_packet(1, 160, arrive(1), 8_000);
    assert_eq!(s.jitter(), 2.5);
    s.on_packet(2, 320, arrive(2), 8_000);
    assert_eq!(s.jitter(), 4.843_75);
    assert_eq!(s.report_block(1, 0).jitter, 5);
    // A late packet does not count (its transit would measure its repair).
    s.on_packet(0, 0, arrive(2) + 500_000, 8_000);
    assert_eq!(s.jitter(), 4.843_75);
    for i in 3..300u32 {
        s.on_packet(i as u16, 160 * i, arrive(i), 8_000);
    }
    assert!(
        (s.jitter() - 40.0).abs() < 1e-3,
        "converges to |D|: {}",
        s.jitter()
    );
    assert_eq!(s.report_block(1, 0).jitter, 40);

    // Transit wraps with the timestamp: a stream starting near 2^32 is as steady.
    let mut w = ReceiveStats::new();
    for i in 0..50u32 {
        let ts = (u32::MAX - 1000).wrapping_add(3000 * i);
        w.on_packet(i as u16, ts, 1_000_000 + u64::from(i) * 33_333, 90_000);
    }
    assert!(
        w.jitter() < 1.0,
        "constant rate: jitter ~ 0, got {}",
        w.jitter()
    );
}

#[test]
fn rfc3550_figure_2_lsr_dlsr_and_rtt() {
    // The SR: ntp 0xb44db705:20000000 (10 Nov 1995 11:33:25.125 UTC).
    let sr_ntp = 0xb44d_b705_2000_0000u64;
    assert_eq!(unix_micros_to_ntp(816_003_205_125_000), sr_ntp);
    assert_eq!(
        system_time_to_ntp(UNIX_EPOCH + std::time::Duration::from_micros(816_003_205_125_000)),
        sr_ntp
    );
    assert_eq!(ntp_middle32(sr_ntp), 0xb705_2000);
    // The receiver reports 5.250 s after receiving it.
    let mut r = ReceiveStats::new();
    r.on_packet(1, 0, 0, 90_000);
    r.on_sr(sr_ntp, 7_000_000);
    let block = r.report_block(42, 7_000_000 + 5_250_000);
    assert_eq!(block.last_sr, 0xb705_2000);
    assert_eq!(block.delay_since_last_sr, 0x0005_4000);
    // The sender gets the block at A = 0xb710:8000: delay 0x0006:2000 = 6.125 s.
    let mut s = SendStats::new(90_000);
    assert_eq!(s.rtt_us(), None);
    assert_eq!(s.on_report_block(&block, 0xb710_8000), Some(6_125_000));
    assert_eq!(s.rtt_us(), Some(6_125_000));
    // No SR yet (LSR 0), or a DLSR longer than the time since the SR: no RTT.
    let none = ReportBlock {
        last_sr: 0,
        ..block
    };
    assert_eq!(s.on_report_block(&none, 0xb710_8000), None);
    assert_eq!(s.on_report_block(&block, 0xb705_2000 + 0x0005_3FFF), None);
    assert_eq!(
        s.on_report_block(&block, 0xb705_0000),
        None,
        "LSR in the future"
    );
    assert_eq!(
        s.on_report_block(&block, 0xb705_2000 + 0x0005_4000),
        Some(0)
    );
    // Before any SR: LSR and DLSR are 0.
    let b = ReceiveStats::new().report_block(1, 5);
    assert_eq!((b.last_sr, b.delay_since_last_sr, b.highest_seq), (0, 0, 0));
}

#[test]
fn sender_report_extrapolates_and_round_trips() {
    let mut s = SendStats::new(90_000);
    assert_eq!(s.sender_report(0, 7).rtp_timestamp, 0);
    s.on_packet(1000, 100, 0);
    s.on_packet(4000, 200, 33_333);
    // 100 ms after the last packet: 4000 + 9000.
    let ntp = unix_micros_to_ntp(1_700_000_000_000_000);
    let info = s.sender_report(133_333, ntp);
    assert_eq!(
        info,
        SenderInfo {
            ntp_timestamp: ntp,
            rtp_timestamp: 13_000,
            packet_count: 2,
            octet_count: 300,
        }
    );
    // Timestamps wrap.
    let mut w = SendStats::new(90_000);
    w.on_packet(u32::MAX - 10, 0, 1_000);
    assert_eq!(w.sender_report(2_000, 0).rtp_timestamp, 79);

    // SR bytes with a block from ReceiveStats, through the RTCP parser.
    let mut r = ReceiveStats::new();
    feed(&mut r, &[10, 12, 13]);
    r.on_sr(ntp, 0);
    let block = r.report_block(0x1111, 500_000);
    let mut buf = [0u8; 128];
    let n = write_sr(&mut buf, 0x2222, &info, &[block]).expect("fits");
    let Some(Ok(RtcpPacket::SenderReport(sr))) = compound(&buf[..n]).next() else {
        panic!("not an SR");
    };
    assert_eq!(sr.ssrc(), 0x2222);
    assert_eq!(sr.sender_info(), info);
    assert_eq!(sr.report_blocks().collect::<Vec<_>>(), vec![block]);
    assert_eq!((block.cumulative_lost, block.fraction_lost), (1, 64));
    assert_eq!(block.delay_since_last_sr, 32_768, "0.5 s in 1/65536 s");
}

proptest::proptest! {
    /// Any packets in any order: no panic, and the block stays within its ranges.
    #[test]
    fn receive_stats_never_panic(
        pkts in proptest::collection::vec(
            (proptest::prelude::any::<u16>(), proptest::prelude::any::<u32>(), proptest::prelude::any::<u64>()),
            0..200),
        clock in proptest::prelude::any::<u32>(),
    ) {
        let mut s = ReceiveStats::new();
        for (i, (seq, ts, at)) in pkts.iter().enumerate() {
            s.on_packet(*seq, *ts, *at, clock);
            if i % 17 == 0 {
                s.on_sr(u64::from(*ts) << 20, *at);
                let b = s.report_block(1, at.wrapping_add(5));
                proptest::prop_assert!((-(1 << 23)..(1 << 23)).contains(&b.cumulative_lost));
            }
        }
        let mut t = SendStats::new(clock);
        for (seq, ts, at) in &pkts {
            t.on_packet(*ts, usize::from(*seq), *at);
            let _ = t.sender_report(at.wrapping_mul(3), *at);
            let block = ReportBlock { last_sr: *ts, delay_since_last_sr: u32::from(*seq), ..ReportBlock::default() };
            let _ = t.on_report_block(&block, (*at) as u32);
        }
    }
}
