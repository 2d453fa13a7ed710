//! Frame views and frame builders.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::checksum;

/// Ethernet header length (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_HLEN: usize = 40;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// Why a frame could not be parsed or built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame ends before the header or length it announces.
    #[error("frame truncated")]
    Truncated,
    /// Not IPv4 or IPv6 directly over Ethernet (VLAN tags included).
    #[error("unsupported ethertype {0:#06x}")]
    UnsupportedEtherType(u16),
    /// The IP version nibble does not match the ethertype.
    #[error("IP version does not match the ethertype")]
    BadIpVersion,
    /// The IP payload is not UDP (for IPv6: the next header, so extension headers too).
    #[error("not UDP (protocol / next header {0})")]
    NotUdp(u8),
    /// An IPv4 fragment.
    #[error("IPv4 fragment")]
    Fragment,
    /// Inconsistent length fields.
    #[error("inconsistent length fields")]
    BadLength,
    /// Source and destination addresses of different families.
    #[error("source and destination address families differ")]
    AddressFamilyMismatch,
    /// The datagram does not fit in a UDP/IP packet.
    #[error("payload of {0} bytes is too large for one datagram")]
    PayloadTooLarge(usize),
    /// The output buffer is too small.
    #[error("output buffer too small: {needed} bytes needed, {available} available")]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
}

/// A parsed Ethernet/IP/UDP frame: a view over the caller's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    frame: &'a [u8],
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// Ethertype (IPv4 or IPv6).
    pub ethertype: u16,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Offset of the IP header (after Ethernet).
    pub ip_offset: usize,
    /// Offset of the UDP header.
    pub udp_offset: usize,
    /// Offset of the UDP payload.
    pub payload_offset: usize,
    /// The UDP payload (as long as the UDP length field says).
    pub payload: &'a [u8],
}

impl<'a> UdpFrame<'a> {
    /// The whole frame as given to the parser (Ethernet padding included).
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    /// The IP header (options included).
    pub fn ip_header(&self) -> &'a [u8] {
        &self.frame[self.ip_offset..self.udp_offset]
    }

    /// UDP header and payload.
    pub fn udp_segment(&self) -> &'a [u8] {
        &self.frame[self.udp_offset..self.payload_offset + self.payload.len()]
    }

    /// Whether the frame is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.ethertype == ETHERTYPE_IPV6
    }

    /// Whether the IPv4 header checksum is right (always true for IPv6, which has none).
    pub fn ip_checksum_valid(&self) -> bool {
        if self.is_ipv6() {
            return true;
        }
        let h = self.ip_header();
        checksum::ipv4_header_checksum(h) == u16::from_be_bytes([h[10], h[11]])
    }

    /// Whether the UDP checksum is right (IPv4 zero = none = valid; IPv6 zero = invalid).
    pub fn udp_checksum_valid(&self) -> bool {
        checksum::udp_checksum_valid(self.src.ip(), self.dst.ip(), self.udp_segment())
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// Parses an Ethernet frame carrying IPv4 or IPv6 and UDP. IPv4 options are allowed;
/// IPv4 fragments, IPv6 extension headers and VLAN tags are not. The IP length governs:
/// bytes after it (Ethernet padding) are ignored; a UDP length shorter than the IP
/// payload is honoured (the stack trims the same way).
pub fn parse_udp_frame(frame: &[u8]) -> Result<UdpFrame<'_>, WireError> {
    if frame.len() < ETH_HLEN {
        return Err(WireError::Truncated);
    }
    let dst_mac = mac(&frame[0..6]);
    let src_mac = mac(&frame[6..12]);
    let ethertype = be16(frame, 12);
    let ip = &frame[ETH_HLEN..];
    let (src_ip, dst_ip, ip_hlen, ip_payload_len) = match ethertype {
        ETHERTYPE_IPV4 => {
            if ip.len() < IPV4_HLEN {
                return Err(WireError::Truncated);
            }
            if ip[0] >> 4 != 4 {
                return Err(WireError::BadIpVersion);
            }
            let hlen = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2));
            if hlen < IPV4_HLEN || total < hlen {
                return Err(WireError::BadLength);
            }
            if total > ip.len() {
                return Err(WireError::Truncated);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(WireError::NotUdp(ip[9]));
            }
            if be16(ip, 6) & 0x3fff != 0 {
                return Err(WireError::Fragment);
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), hlen, total - hlen)
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < IPV6_HLEN {
                return Err(WireError::Truncated);
            }
            if ip[0] >> 4 != 6 {
                return Err(WireError::BadIpVersion);
            }
            let payload = usize::from(be16(ip, 4));
            if IPV6_HLEN + payload > ip.len() {
                return Err(WireError::Truncated);
            }
            if ip[6] != IPPROTO_UDP {
                return Err(WireError::NotUdp(ip[6]));
            }
            let mut s = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&ip[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                IPV6_HLEN,
                payload,
            )
        }
        other => return Err(WireError::UnsupportedEtherType(other)),
    };
    let udp_offset = ETH_HLEN + ip_hlen;
    if ip_payload_len < UDP_HLEN {
        return Err(WireError::Truncated);
    }
    let udp = &frame[udp_offset..];
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_HLEN || udp_len > ip_payload_len {
        return Err(WireError::BadLength);
    }
    let payload_offset = udp_offset + UDP_HLEN;
    Ok(UdpFrame {
        frame,
        dst_mac,
        src_mac,
        ethertype,
        src: SocketAddr::new(src_ip, be16(udp, 0)),
        dst: SocketAddr::new(dst_ip, be16(udp, 2)),
        ip_offset: ETH_HLEN,
        udp_offset,
        payload_offset,
        payload: &frame[payload_offset..udp_offset + udp_len],
    })
}

/// Builds an Ethernet/IP/UDP frame from `src` to `dst` carrying `payload` into `out`,
/// following the frame rules of the kernel fast path (IPv4: no options, id 0, DF, TTL 64,
/// header checksum; IPv6: traffic class and flow label 0, hop limit 64; UDP checksum
/// always computed, zero sent as 0xFFFF). Returns the frame length.
pub fn build_udp_request(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let (ethertype, ip_hlen) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (ETHERTYPE_IPV4, IPV4_HLEN),
        (IpAddr::V6(_), IpAddr::V6(_)) => (ETHERTYPE_IPV6, IPV6_HLEN),
        _ => return Err(WireError::AddressFamilyMismatch),
    };
    let udp_len = UDP_HLEN + payload.len();
    let ip_len = ip_hlen + udp_len;
    if ip_len > usize::from(u16::MAX) {
        return Err(WireError::PayloadTooLarge(payload.len()));
    }
    let needed = ETH_HLEN + ip_len;
    if out.len() < needed {
        return Err(WireError::BufferTooSmall {
            needed,
            available: out.len(),
        });
    }
    let out = &mut out[..needed];
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
    let udp_offset = ETH_HLEN + ip_hlen;
    {
        let ip = &mut out[ETH_HLEN..udp_offset];
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ip[0] = 0x45;
                ip[1] = 0;
                ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&[0, 0]);
                ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
                ip[8] = TTL;
                ip[9] = IPPROTO_UDP;
                ip[10..12].copy_from_slice(&[0, 0]);
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum::ipv4_header_checksum(ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
                ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                ip[6] = IPPROTO_UDP;
                ip[7] = TTL;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
            }
            _ => return Err(WireError::AddressFamilyMismatch),
        }
    }
    let seg = &mut out[udp_offset..];
    seg[0..2].copy_from_slice(&src.port().to_be_bytes());
    seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
    seg[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    seg[6..8].copy_from_slice(&[0, 0]);
    seg[8..].copy_from_slice(payload);
    let c = checksum::udp_checksum(src.ip(), dst.ip(), seg);
    seg[6..8].copy_from_slice(&c.to_be_bytes());
    Ok(needed)
}

/// Builds the reply to `request` carrying `payload` into `out` (contract 2): MACs,
/// addresses and ports swapped, same ethertype. Returns the frame length.
pub fn build_udp_reply(
    request: &UdpFrame<'_>,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    build_udp_request(
        request.dst_mac,
        request.src_mac,
        request.dst,
        request.src,
        payload,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v4_roundtrip_and_known_bytes() {
        let mut buf = [0u8; 128];
        let n = build_udp_request(
            A,
            B,
            addr("10.0.0.1:1000"),
            addr("10.0.0.2:3478"),
            b"abcd",
            &mut buf,
        )
        .expect("build");
        assert_eq!(n, 14 + 20 + 8 + 4);
        let expected_ip = [
            0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26, 0xcb, 10, 0, 0, 1,
            10, 0, 0, 2,
        ];
        assert_eq!(&buf[14..34], &expected_ip);
        // The UDP checksum checked in checksum.rs: 0x158f.
        assert_eq!(&buf[34..42], &[0x03, 0xe8, 0x0d, 0x96, 0, 12, 0x15, 0x8f]);
        let f = parse_udp_frame(&buf[..n]).expect("parse");
        assert_eq!(f.src, addr("10.0.0.1:1000"));
        assert_eq!(f.dst, addr("10.0.0.2:3478"));
        assert_eq!((f.src_mac, f.dst_mac), (A, B));
        assert_eq!(f.payload, b"abcd");
        assert_eq!((f.ip_offset, f.udp_offset, f.payload_offset), (14, 34, 42));
        assert!(f.ip_checksum_valid());
        assert!(f.udp_checksum_valid());
    }

    #[test]
    fn reply_swaps_everything() {
        let mut req = [0u8; 128];
        let n = build_udp_request(
            A,
            B,
            addr("[fe80::1]:1000"),
            addr("[fe80::2]:3478"),
            b"abcd",
            &mut req,
        )
        .expect("build");
        let f = parse_udp_frame(&req[..n]).expect("parse");
        assert!(f.udp_checksum_valid());
        assert_eq!(&req[n - 6..n - 4], &[0x2c, 0x8d]);
        let mut out = [0u8; 128];
        let m = build_udp_reply(&f, b"xyz!", &mut out).expect("reply");
        let r = parse_udp_frame(&out[..m]).expect("parse reply");
        assert_eq!((r.src, r.dst), (f.dst, f.src));
        assert_eq!((r.src_mac, r.dst_mac), (f.dst_mac, f.src_mac));
        assert_eq!(r.payload, b"xyz!");
        assert!(r.udp_checksum_valid());
        assert_eq!(&out[14..22], &[0x60, 0, 0, 0, 0, 12, 17, 64]);
    }

    #[test]
    fn padding_is_ignored_and_truncation_detected() {
        let mut buf = [0u8; 128];
        let n = build_udp_request(A, B, addr("10.0.0.1:1"), addr("10.0.0.2:2"), b"", &mut buf)
            .expect("build");
        let padded = parse_udp_frame(&buf[..60]).expect("padded frame");
        assert_eq!(padded.payload, b"");
        for len in 0..n {
            assert!(parse_udp_frame(&buf[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn rejects_vlan_fragments_and_other_protocols() {
        let mut buf = [0u8; 128];
        let n = build_udp_request(
            A,
            B,
            addr("10.0.0.1:1"),
            addr("10.0.0.2:2"),
            b"abcd",
            &mut buf,
        )
        .expect("build");
        let mut vlan = buf;
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(
            parse_udp_frame(&vlan[..n]),
            Err(WireError::UnsupportedEtherType(0x8100))
        );
        let mut frag = buf;
        frag[20] |= 0x20;
        assert_eq!(parse_udp_frame(&frag[..n]), Err(WireError::Fragment));
        let mut tcp = buf;
        tcp[23] = 6;
        assert_eq!(parse_udp_frame(&tcp[..n]), Err(WireError::NotUdp(6)));
        let mut bad = buf;
        bad[41] ^= 0xff;
        let f = parse_udp_frame(&bad[..n]).expect("parse");
        assert!(!f.udp_checksum_valid());
    }

    #[test]
    fn family_mismatch_and_small_buffer() {
        let mut small = [0u8; 10];
        assert!(matches!(
            build_udp_request(
                A,
                B,
                addr("10.0.0.1:1"),
                addr("10.0.0.2:2"),
                b"",
                &mut small
            ),
            Err(WireError::BufferTooSmall { needed: 42, .. })
        ));
        let mut buf = [0u8; 128];
        assert_eq!(
            build_udp_request(A, B, addr("10.0.0.1:1"), addr("[::1]:2"), b"", &mut buf),
            Err(WireError::AddressFamilyMismatch)
        );
    }
}
