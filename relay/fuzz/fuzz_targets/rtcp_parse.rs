//! Fuzzes the RTCP compound walk on arbitrary datagrams: framing, padding and every typed
//! view's validation and accessors must never panic; NACK lists the view yields must
//! survive a build and parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::rtp::rtcp::{RtcpPacket, compound, write_nack};

fuzz_target!(|data: &[u8]| {
    let mut lost = [0u16; 512];
    for p in compound(data) {
        let Ok(p) = p else { break };
        match p {
            RtcpPacket::SenderReport(sr) => {
                let _ = (sr.ssrc(), sr.sender_info(), sr.report_blocks().count());
            }
            RtcpPacket::ReceiverReport(rr) => {
                let _ = (rr.ssrc(), rr.report_blocks().count());
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
                let mut k = 0;
                for seq in n.lost().take(lost.len()) {
                    lost[k] = seq;
                    k += 1;
                }
                if k > 0 {
                    let mut out = [0u8; 4096];
                    let len = write_nack(&mut out, 1, 2, &lost[..k]).expect("fits");
                    let Some(Ok(RtcpPacket::Nack(back))) = compound(&out[..len]).next() else {
                        panic!("built NACK does not parse");
                    };
                    let mut back_lost = back.lost();
                    // Each original number appears in the rebuilt NACK.
                    let mut rebuilt = [0u16; 512];
                    let mut j = 0;
                    for s in back_lost.by_ref().take(rebuilt.len()) {
                        rebuilt[j] = s;
                        j += 1;
                    }
                    for s in &lost[..k] {
                        assert!(rebuilt[..j].contains(s), "lost {s} dropped");
                    }
                }
            }
            RtcpPacket::TransportCc(t) => {
                let _ = (t.header(), t.status_count());
                assert_eq!(t.statuses().count(), t.status_count());
            }
            RtcpPacket::Pli(p) => {
                let _ = (p.sender_ssrc(), p.media_ssrc());
            }
            RtcpPacket::Fir(f) => {
                let _ = (f.sender_ssrc(), f.entries().count());
            }
            RtcpPacket::Remb(r) => {
                let _ = (r.sender_ssrc(), r.bitrate_bps(), r.ssrcs().count());
            }
            RtcpPacket::Other { .. } => {}
        }
    }
});
