//! Fuzzes the AF_XDP path's receive check on arbitrary frames (what the XDP program
//! steers to a worker is raw Ethernet from the network): it must never panic, what it
//! accepts must lie within the frame, and a frame built back from what it accepted (by
//! the fast path's frame rules) must pass the same check with the same addresses and
//! payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::dataplane::xsk_path::check_frame;
use relay::xdp::turn_frames::{Hop, write_relayed_frame};

const HOP: Hop = Hop {
    src_mac: [2, 0, 0, 0, 0, 1],
    dst_mac: [2, 0, 0, 0, 0, 2],
};

fuzz_target!(|data: &[u8]| {
    check(data);
    // Random bytes rarely carry right checksums: the same frame with them fixed reaches
    // the acceptance path.
    if let Ok(f) = relay::wire::parse_udp_frame(data) {
        let (ip, udp, end) = (
            f.ip_offset,
            f.udp_offset,
            f.payload_offset + f.payload.len(),
        );
        let (src, dst, v6) = (f.src.ip(), f.dst.ip(), f.is_ipv6());
        let mut fixed = data.to_vec();
        if !v6 {
            fixed[ip + 10..ip + 12].fill(0);
            let c = relay::wire::ipv4_header_checksum(&fixed[ip..udp]);
            fixed[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        }
        let c = relay::wire::udp_checksum(src, dst, &fixed[udp..end]);
        fixed[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
        assert!(check(&fixed), "a frame with right checksums passes");
    }
});

/// Checks one frame; whether it was accepted.
fn check(data: &[u8]) -> bool {
    let Some(r) = check_frame(data) else {
        return false;
    };
    let start = data.as_ptr() as usize;
    let p = r.payload.as_ptr() as usize;
    assert!(p >= start && p + r.payload.len() <= start + data.len());
    let mut out = vec![0u8; 14 + 40 + 8 + r.payload.len()];
    // IPv4-mapped IPv6 addresses are written as IPv4 (one mapped, one not: refused).
    let Ok(n) = write_relayed_frame(&mut out, &HOP, r.src, r.dst, r.tos, r.v4, r.payload) else {
        return true;
    };
    let back = check_frame(&out[..n]).expect("a frame built by the rules passes the check");
    let canon = |a: std::net::SocketAddr| (a.ip().to_canonical(), a.port());
    assert_eq!(
        (canon(back.src), canon(back.dst), back.payload),
        (canon(r.src), canon(r.dst), r.payload)
    );
    assert_eq!(back.tos, r.tos);
    true
}
