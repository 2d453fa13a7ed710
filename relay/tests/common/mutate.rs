//! For the differential tests that feed the XDP program mutated frames: a small
//! deterministic generator, so that a failure replays from its seed, and the checksum
//! repair that lets a mutation reach the checks behind the checksums. Include it with
//! `#[path]`.
#![allow(dead_code)]

use relay::wire;

/// xorshift64*: enough spread for choosing mutations, and no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough below `n` (> 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = self.next() as u8;
        }
        b
    }
}

/// Recomputes the IPv4 header and UDP checksums of `f` after a mutation (when it still
/// parses as UDP), so that the frame is accepted or refused for the mutation itself.
pub fn fix_checksums(f: &mut [u8]) {
    let Ok(p) = wire::parse_udp_frame(f) else {
        return;
    };
    let (ip, udp, end) = (
        p.ip_offset,
        p.udp_offset,
        p.payload_offset + p.payload.len(),
    );
    let (src, dst) = (p.src.ip(), p.dst.ip());
    if !p.is_ipv6() {
        f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let c = wire::ipv4_header_checksum(&f[ip..udp]);
        f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    }
    let c = wire::udp_checksum(src, dst, &f[udp..end]);
    f[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
}
