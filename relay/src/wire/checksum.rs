//! The Internet checksum (RFC 1071): ones' complement sum of 16-bit big-endian words,
//! for IPv4 headers and for UDP over IPv4/IPv6 with the pseudo-header.

use std::net::IpAddr;

/// Adds `data` as big-endian 16-bit words (an odd trailing byte is padded with zero) to
/// the running 32-bit sum `initial`, without folding. The result is congruent to the
/// word sum modulo 0xFFFF and zero only when every word and `initial` are, which is all
/// that [`fold`] needs.
///
/// Sixteen bytes per step into two 64-bit accumulators (32-bit halves added, so no
/// overflow for any slice shorter than 64 GiB), in native byte order: the ones'
/// complement sum is byte-order independent (RFC 1071 section 2(B)), so the words are
/// summed as they lie in memory and the folded result is byte-swapped once, instead of
/// swapping every word. The payload of every relayed AF_XDP frame is summed here, twice
/// (receive check and output checksum).
pub fn ones_complement_sum(data: &[u8], initial: u32) -> u32 {
    let (mut a, mut b) = (0u64, 0u64);
    let mut blocks = data.chunks_exact(16);
    for c in &mut blocks {
        let (x, y) = c.split_at(8);
        let x = u64::from_ne_bytes(x.try_into().unwrap_or([0; 8]));
        let y = u64::from_ne_bytes(y.try_into().unwrap_or([0; 8]));
        a += (x >> 32) + (x & 0xffff_ffff);
        b += (y >> 32) + (y & 0xffff_ffff);
    }
    let mut native = a + b;
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(8);
    for c in &mut words {
        let x = u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
        native += (x >> 32) + (x & 0xffff_ffff);
    }
    while native > 0xffff {
        native = (native & 0xffff) + (native >> 16);
    }
    // The folded sum of native-order words, as the sum of big-endian words.
    let mut sum = u64::from(initial) + u64::from(u16::from_be_bytes((native as u16).to_ne_bytes()));
    let mut pairs = words.remainder().chunks_exact(2);
    for w in &mut pairs {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// Folds a 32-bit sum to 16 bits with end-around carry.
pub fn fold(sum: u32) -> u16 {
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum of a 20..60-byte IPv4 header, computed with its checksum field (bytes
/// 10..12) taken as zero. A header is valid when this equals its checksum field.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let sum = if header.len() >= 12 {
        ones_complement_sum(&header[12..], ones_complement_sum(&header[..10], 0))
    } else {
        ones_complement_sum(header, 0)
    };
    !fold(sum)
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, udp_len: usize) -> u32 {
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ones_complement_sum(&d.octets(), ones_complement_sum(&s.octets(), 0))
        }
        (s, d) => {
            let s = to_v6(s);
            let d = to_v6(d);
            ones_complement_sum(&d, ones_complement_sum(&s, 0))
        }
    };
    sum = ones_complement_sum(&[0, 17], sum);
    // The length word: 16 bits over IPv4, 32 bits over IPv6 (same sum for < 65536).
    ones_complement_sum(&(udp_len as u32).to_be_bytes(), sum)
}

fn to_v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The UDP checksum of `segment` (UDP header + payload) from `src` to `dst`, computed as
/// if its checksum field (bytes 6..8) were zero, ready to send: a computed zero is
/// returned as 0xFFFF. Addresses of different families are summed as IPv6 (mapped).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut sum = pseudo_header_sum(src, dst, segment.len());
    if segment.len() >= 8 {
        sum = ones_complement_sum(&segment[..6], sum);
        sum = ones_complement_sum(&segment[8..], sum);
    } else {
        sum = ones_complement_sum(segment, sum);
    }
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether `segment`'s UDP checksum field holds only the pseudo-header sum: what a Linux
/// sender with checksum offload (`CHECKSUM_PARTIAL`) leaves in a datagram that never
/// reaches a NIC, e.g. over a veth pair. The kernel's receive path trusts such packets
/// (their metadata says so); a frame taken raw (XDP, AF_XDP) has lost that metadata,
/// so a raw receiver that accepts them too must recognise the value itself.
pub fn udp_checksum_partial(src: IpAddr, dst: IpAddr, segment: &[u8]) -> bool {
    segment.len() >= 8
        && u16::from_be_bytes([segment[6], segment[7]])
            == udp_partial_checksum(src, dst, segment.len())
}

/// The value such a sender leaves in the checksum field of a `udp_len`-byte datagram
/// (header included) from `src` to `dst`: the pseudo-header's sum, folded.
pub fn udp_partial_checksum(src: IpAddr, dst: IpAddr, udp_len: usize) -> u16 {
    fold(pseudo_header_sum(src, dst, udp_len))
}

/// Whether `segment`'s UDP checksum is valid as received from `src` to `dst`. A zero
/// field means "no checksum" over IPv4 (valid) and is invalid over IPv6.
pub fn udp_checksum_valid(src: IpAddr, dst: IpAddr, segment: &[u8]) -> bool {
    if segment.len() < 8 {
        return false;
    }
    if segment[6..8] == [0, 0] {
        return src.is_ipv4() && dst.is_ipv4();
    }
    let sum = ones_complement_sum(segment, pseudo_header_sum(src, dst, segment.len()));
    fold(sum) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(ones_complement_sum(&data, 0)), 0xddf2);
    }

    #[test]
    fn the_wide_sum_folds_like_the_word_by_word_sum() {
        fn reference(data: &[u8], initial: u32) -> u16 {
            let mut sum = u64::from(initial);
            for w in data.chunks(2) {
                let hi = u64::from(w[0]) << 8;
                sum += hi | w.get(1).map_or(0, |&b| u64::from(b));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            sum as u16
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..300 {
            for fill in [None, Some(0u8), Some(0xff)] {
                let data: Vec<u8> = (0..len)
                    .map(|_| fill.unwrap_or_else(|| next() as u8))
                    .collect();
                for initial in [0, 1, 0xffff, 0xffff_ffff, next() as u32] {
                    assert_eq!(
                        fold(ones_complement_sum(&data, initial)),
                        reference(&data, initial),
                        "len {len} fill {fill:?} initial {initial:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(ones_complement_sum(&[0x12, 0x34, 0x56], 0)), 0x6834);
    }

    #[test]
    fn ipv4_header_known_checksum() {
        // A classic example header (192.168.0.1 -> 192.168.0.199, UDP, DF, TTL 64),
        // whose checksum is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
    }

    #[test]
    fn udp_v4_known_checksum() {
        // 10.0.0.1:1000 -> 10.0.0.2:3478, payload "abcd"; checksum computed by hand:
        // pseudo 0a00+0001+0a00+0002+0011+000c, header 03e8+0d96+000c, data 6162+6364.
        let seg = [
            0x03, 0xe8, 0x0d, 0x96, 0x00, 0x0c, 0x00, 0x00, b'a', b'b', b'c', b'd',
        ];
        let src = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(udp_checksum(src, dst, &seg), 0x158f);
        let mut sent = seg;
        sent[6..8].copy_from_slice(&0x158fu16.to_be_bytes());
        assert!(udp_checksum_valid(src, dst, &sent));
        sent[9] ^= 1;
        assert!(!udp_checksum_valid(src, dst, &sent));
        // Zero means "none" over IPv4.
        assert!(udp_checksum_valid(src, dst, &seg));
    }

    #[test]
    fn udp_v6_known_checksum() {
        // fe80::1:1000 -> fe80::2:3478, payload "abcd".
        let seg = [
            0x03, 0xe8, 0x0d, 0x96, 0x00, 0x0c, 0x00, 0x00, b'a', b'b', b'c', b'd',
        ];
        let src = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
        let dst = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2));
        assert_eq!(udp_checksum(src, dst, &seg), 0x2c8d);
        // Zero is invalid over IPv6.
        assert!(!udp_checksum_valid(src, dst, &seg));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose a payload word that makes the sum 0xffff, i.e. checksum 0.
        let src = IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0));
        let dst = IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0));
        let mut seg = [0u8, 0, 0, 0, 0, 10, 0, 0, 0, 0];
        // sum so far: 0x11 (proto) + 10 (pseudo len) + 10 (udp len) = 0x25.
        seg[8..10].copy_from_slice(&(0xffffu16 - 0x25).to_be_bytes());
        assert_eq!(udp_checksum(src, dst, &seg), 0xffff);
    }
}
