//! Proves that the SFU's loss repair and RTCP statistics never allocate per packet:
//! packet-history insert and get, RTX wrap and unwrap, the NACK generator, the
//! keyframe limiter, and receive / send statistics with their report blocks (once
//! created: `PacketHistory::new` and `NackGenerator::new` allocate their fixed state).
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own.

use relay::rtp::rtcp::{write_nack, write_rr, write_sr};
use relay::sfu::history::PacketHistory;
use relay::sfu::keyframe::KeyframeLimiter;
use relay::sfu::reports::{ReceiveStats, SendStats, ntp_middle32, unix_micros_to_ntp};
use relay::sfu::rtx::{NackGenerator, unwrap, unwrap_in_place, wrap};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

/// A 1200-byte RTP packet with a one-byte-form extension.
fn packet(buf: &mut [u8; 1200], seq: u16, ts: u32) {
    buf[..12].copy_from_slice(&[0x90, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34]);
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[12..20].copy_from_slice(&[0xBE, 0xDE, 0, 1, 0x31, 0, 7, 0]);
}

#[test]
fn loss_repair_and_statistics_do_not_allocate() {
    let mut history = PacketHistory::new(512);
    let mut nacks = NackGenerator::new();
    nacks.set_rtt(40_000);
    let mut keyframes = KeyframeLimiter::default();
    let mut rx = ReceiveStats::new();
    let mut tx = SendStats::new(90_000);
    let mut pkt = [0u8; 1200];
    let mut rtx = [0u8; 1500];
    let mut back = [0u8; 1500];
    let mut lost = [0u16; 64];
    let mut rtcp = [0u8; 1500];
    let mut checksum = 0u64;
    let n = allocations_during(|| {
        for i in 0..20_000u32 {
            let now = u64::from(i) * 1_000;
            let seq = 65_000u16.wrapping_add(i as u16);
            // Every 10th packet is lost on the way in.
            if i % 10 == 3 {
                continue;
            }
            let ts = i.wrapping_mul(3_000);
            packet(&mut pkt, seq, ts);
            history.insert(seq, &pkt, now);
            rx.on_packet(seq, ts, now, 90_000);
            if nacks.on_packet(seq, now) {
                let _ = keyframes.request(now);
            }
            let k = nacks.poll_nacks(now, &mut lost);
            if k > 0 {
                checksum += write_nack(&mut rtcp, 1, 0x1234, &lost[..k]).map_or(0, |n| n as u64);
            }
            let _ = nacks.poll_timeout();
            checksum += u64::from(nacks.take_given_up());
            // A receiver NACKs an older packet: answer from the cache with RTX, and
            // the publisher's RTX comes back through unwrap.
            let old = seq.wrapping_sub(100);
            if let Some(orig) = history.get(old) {
                let w = wrap(orig, &mut rtx, 0x5678, 97, i as u16, old).expect("wraps");
                let (m, osn) = unwrap(&rtx[..w], &mut back, 0x1234, 96).expect("unwraps");
                checksum += (m + usize::from(osn)) as u64;
                let (m, _) = unwrap_in_place(&mut rtx[..w], 0x1234, 96).expect("in place");
                checksum += m as u64;
            }
            tx.on_packet(ts, 1180, now);
            if i % 100 == 0 {
                let _ = keyframes.request(now);
                let _ = keyframes.poll_timeout();
                let _ = keyframes.handle_timeout(now);
                keyframes.on_keyframe(now);
                checksum += u64::from(keyframes.fir_seq());
                let ntp = unix_micros_to_ntp(1_700_000_000_000_000 + now);
                rx.on_sr(ntp, now);
                let block = rx.report_block(0x1234, now + 5_000);
                let info = tx.sender_report(now, ntp);
                checksum += write_sr(&mut rtcp, 1, &info, &[block]).map_or(0, |n| n as u64);
                checksum += write_rr(&mut rtcp, 1, &[block]).map_or(0, |n| n as u64);
                let _ = tx.on_report_block(&block, ntp_middle32(ntp) + 7_000);
            }
        }
    });
    assert_eq!(n, 0, "loss repair and statistics allocated {n} times");
    assert!(checksum > 0);
    assert!(rx.cumulative_lost() > 1_000, "the losses were counted");
    assert!(tx.rtt_us().is_some());
}
