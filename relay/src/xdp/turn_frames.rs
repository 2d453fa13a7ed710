//! The frame rules of everything the kernel relays for TURN, stated in userspace: the
//! reference the differential harness (`tests/xdp_turn_differential.rs`) wraps the
//! userspace relay's datagrams with, byte for byte what `relay_xdp` puts on the wire.
//!
//! Why a separate statement: the kernel rebuilds every header of a relayed frame (the
//! TURN relay is an endpoint, not a router), so the bytes it chooses are a contract:
//!
//! - **Ethernet**: source MAC = the egress interface's (the relay/listen address side),
//!   destination MAC = the next hop's (peer or client), both from `bpf_fib_lookup`;
//!   ethertype of the OUTPUT family.
//! - **IPv4**: `0x45` (no options); TOS copied from the incoming packet (DSCP and ECN,
//!   RFC 8656 §14 preferred behaviour, also across families: IPv6 traffic class ↔ TOS);
//!   total length; Identification and DF per [`Ipv4Fields::for_input`] (RFC 8656 §14:
//!   DF copied from an IPv4 input — preferred behaviour —, 0 from an IPv6 input —
//!   alternate behaviour —; for a Send indication DF is set exactly when it carries
//!   DONT-FRAGMENT (userspace sends those with IP_PMTUDISC_DO); ID copied from an IPv4
//!   input, the input's UDP checksum for an IPv6 input); no fragment offset (a frame larger than the egress
//!   MTU the FIB reports is passed up); TTL 64; protocol 17; header checksum.
//! - **IPv6**: version 6, traffic class copied, flow label 0, payload length, next
//!   header 17, hop limit 64.
//! - **UDP**: ports per rule (relayed port → peer port; listen port → client port),
//!   length, checksum. The kernel updates the incoming checksum incrementally (RFC 1624),
//!   which equals the full checksum computed here whenever the incoming one was right
//!   (a zero result is sent as 0xFFFF). An IPv4 input without checksum (0) passes up.
//! - **Payload**: ChannelData → peer: the application data only (header and padding
//!   stripped). Peer → client: the ChannelData header + data, unpadded (UDP), or the
//!   Data indication exactly as the userspace core builds it (STUN type 0x0017, magic
//!   cookie, a random transaction id, XOR-PEER-ADDRESS, DATA, zero padding; no
//!   FINGERPRINT).
//!
//! Cross-family relaying (IPv4 client ↔ IPv6 peer, RFC 8656 dual allocations) follows
//! the same rules with the output family's header. Pure functions, no I/O.

use std::net::{IpAddr, SocketAddr};

use crate::wire::{self, ETH_HLEN, IPV4_HLEN, IPV6_HLEN, UDP_HLEN};

/// IPv4 TTL / IPv6 hop limit of relayed frames.
pub const HOP_LIMIT: u8 = 64;

/// The link-layer addresses of one hop (what `bpf_fib_lookup` returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The egress interface's MAC.
    pub src_mac: [u8; 6],
    /// The next hop's MAC.
    pub dst_mac: [u8; 6],
}

/// The IPv4 header fields of a relayed frame that depend on the received one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ipv4Fields {
    /// Identification.
    pub id: u16,
    /// Don't Fragment.
    pub df: bool,
}

impl Ipv4Fields {
    /// The fields for a frame relaying the datagram of `input` (a received Ethernet
    /// frame; `None` if it does not parse). `send_indication`: the data came from a Send
    /// indication without DONT-FRAGMENT (with it, DF is set: see the module doc).
    ///
    /// Identification: an IPv4 input's own ID — the sender made it unique among its
    /// datagrams, and it is free; from IPv6 there is no ID, and the frame may be
    /// fragmented (DF 0), so it needs one that differs between consecutive datagrams
    /// (RFC 6864 §4.2): the input's UDP checksum, which changes with every payload (RTP
    /// sequence numbers and timestamps), costs nothing and keeps the output a pure
    /// function of the input (no per-flow counter to share between CPUs).
    pub fn for_input(input: &[u8], send_indication: bool) -> Option<Ipv4Fields> {
        Self::for_frame(&wire::parse_udp_frame(input).ok()?, send_indication)
    }

    /// [`Ipv4Fields::for_input`] of a frame parsed already.
    pub fn for_frame(f: &wire::UdpFrame<'_>, send_indication: bool) -> Option<Ipv4Fields> {
        let input = f.frame();
        let ip = f.ip_header();
        if f.is_ipv6() {
            let udp = input.get(ETH_HLEN + IPV6_HLEN + 6..ETH_HLEN + IPV6_HLEN + 8)?;
            Some(Ipv4Fields {
                id: u16::from_be_bytes([udp[0], udp[1]]),
                df: false,
            })
        } else {
            Some(Ipv4Fields {
                id: u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]),
                df: !send_indication && ip.get(6)? & 0x40 != 0,
            })
        }
    }
}

/// Why a frame could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnFrameError {
    /// Source and destination are of different families.
    #[error("source and destination addresses are of different families")]
    FamilyMismatch,
    /// The IP packet would exceed 65535 bytes.
    #[error("the datagram is too large for one IP packet")]
    TooLarge,
    /// The output buffer cannot hold the frame.
    #[error("the frame does not fit the output buffer")]
    BufferTooSmall,
}

/// The TOS byte (IPv4) or traffic class (IPv6) of a received frame, if it parses.
pub fn tos_of(frame: &[u8]) -> Option<u8> {
    tos_of_frame(&wire::parse_udp_frame(frame).ok()?)
}

/// [`tos_of`] of a frame parsed already.
pub fn tos_of_frame(f: &wire::UdpFrame<'_>) -> Option<u8> {
    let ip = f.ip_header();
    if f.is_ipv6() {
        Some((ip.first()? << 4) | (ip.get(1)? >> 4))
    } else {
        ip.get(1).copied()
    }
}

/// Builds the frame that relays `payload` from `src` to `dst` with traffic class `tos`
/// over `hop`, per the module's rules (`v4`: used when the output is IPv4).
pub fn build_relayed_frame(
    hop: &Hop,
    src: SocketAddr,
    dst: SocketAddr,
    tos: u8,
    v4: Ipv4Fields,
    payload: &[u8],
) -> Result<Vec<u8>, TurnFrameError> {
    let mut f = vec![0u8; ETH_HLEN + IPV6_HLEN + UDP_HLEN + payload.len()];
    let n = write_relayed_frame(&mut f, hop, src, dst, tos, v4, payload)?;
    f.truncate(n);
    Ok(f)
}

/// [`build_relayed_frame`] into `out` (an AF_XDP frame of the userspace path: no
/// allocation); returns the frame's length.
pub fn write_relayed_frame(
    out: &mut [u8],
    hop: &Hop,
    src: SocketAddr,
    dst: SocketAddr,
    tos: u8,
    v4: Ipv4Fields,
    payload: &[u8],
) -> Result<usize, TurnFrameError> {
    let (src_ip, dst_ip) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let v6 = match (src_ip, dst_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(TurnFrameError::FamilyMismatch),
    };
    let ip_hlen = if v6 { IPV6_HLEN } else { IPV4_HLEN };
    let udp_len = UDP_HLEN + payload.len();
    let ip_len = ip_hlen + udp_len;
    if ip_len > usize::from(u16::MAX) {
        return Err(TurnFrameError::TooLarge);
    }
    let total = ETH_HLEN + ip_len;
    let Some(f) = out.get_mut(..total) else {
        return Err(TurnFrameError::BufferTooSmall);
    };
    f[0..6].copy_from_slice(&hop.dst_mac);
    f[6..12].copy_from_slice(&hop.src_mac);
    let udp_len16 = (udp_len as u16).to_be_bytes();
    let ip = ETH_HLEN;
    match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f[12..14].copy_from_slice(&wire::ETHERTYPE_IPV4.to_be_bytes());
            f[ip..ip + 2].copy_from_slice(&[0x45, tos]);
            f[ip + 2..ip + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            f[ip + 4..ip + 6].copy_from_slice(&v4.id.to_be_bytes());
            f[ip + 6..ip + 12].copy_from_slice(&[
                if v4.df { 0x40 } else { 0 },
                0,
                HOP_LIMIT,
                17,
                0,
                0,
            ]);
            f[ip + 12..ip + 16].copy_from_slice(&s.octets());
            f[ip + 16..ip + 20].copy_from_slice(&d.octets());
            let c = wire::ipv4_header_checksum(&f[ip..ip + IPV4_HLEN]);
            f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f[12..14].copy_from_slice(&wire::ETHERTYPE_IPV6.to_be_bytes());
            f[ip..ip + 4].copy_from_slice(&[0x60 | (tos >> 4), tos << 4, 0, 0]);
            f[ip + 4..ip + 6].copy_from_slice(&udp_len16);
            f[ip + 6..ip + 8].copy_from_slice(&[17, HOP_LIMIT]);
            f[ip + 8..ip + 24].copy_from_slice(&s.octets());
            f[ip + 24..ip + 40].copy_from_slice(&d.octets());
        }
        _ => return Err(TurnFrameError::FamilyMismatch),
    }
    let u = ip + ip_hlen;
    f[u..u + 2].copy_from_slice(&src.port().to_be_bytes());
    f[u + 2..u + 4].copy_from_slice(&dst.port().to_be_bytes());
    f[u + 4..u + 6].copy_from_slice(&udp_len16);
    f[u + 6..u + 8].copy_from_slice(&[0, 0]);
    f[u + 8..].copy_from_slice(payload);
    let c = wire::udp_checksum(src_ip, dst_ip, &f[u..]);
    f[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOP: Hop = Hop {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
    };

    #[test]
    fn ipv4_frame_follows_the_rules() {
        let src: SocketAddr = "192.0.2.2:50000".parse().expect("addr");
        let dst: SocketAddr = "203.0.113.5:7000".parse().expect("addr");
        let v4 = Ipv4Fields {
            id: 0x1234,
            df: true,
        };
        let f = build_relayed_frame(&HOP, src, dst, 0xb8, v4, b"hello").expect("builds");
        let p = wire::parse_udp_frame(&f).expect("parses");
        assert_eq!(p.src, src);
        assert_eq!(p.dst, dst);
        assert_eq!(p.payload, b"hello");
        assert_eq!(&f[14..16], &[0x45, 0xb8]);
        assert_eq!(&f[18..23], &[0x12, 0x34, 0x40, 0, 64]);
        assert_eq!(Ipv4Fields::for_input(&f, false), Some(v4));
        assert_eq!(
            Ipv4Fields::for_input(&f, true),
            Some(Ipv4Fields {
                id: 0x1234,
                df: false
            })
        );
        assert!(p.ip_checksum_valid());
        assert!(p.udp_checksum_valid());
        assert_eq!(tos_of(&f), Some(0xb8));
    }

    #[test]
    fn writing_into_a_buffer_equals_building_and_refuses_a_short_buffer() {
        let src: SocketAddr = "192.0.2.2:50000".parse().expect("addr");
        let dst: SocketAddr = "[2001:db8::5]:7000".parse().expect("addr");
        let v6src: SocketAddr = "[2001:db8::2]:50000".parse().expect("addr");
        for (s, d) in [
            (src, "203.0.113.5:7000".parse().expect("addr")),
            (v6src, dst),
        ] {
            let built = build_relayed_frame(&HOP, s, d, 0x10, Ipv4Fields::default(), b"abc")
                .expect("builds");
            let mut out = [0xAAu8; 128];
            let n = write_relayed_frame(&mut out, &HOP, s, d, 0x10, Ipv4Fields::default(), b"abc")
                .expect("fits");
            assert_eq!(&out[..n], &built[..]);
            assert_eq!(out[n], 0xAA, "nothing written past the frame");
            assert_eq!(
                write_relayed_frame(
                    &mut out[..built.len() - 1],
                    &HOP,
                    s,
                    d,
                    0x10,
                    Ipv4Fields::default(),
                    b"abc"
                ),
                Err(TurnFrameError::BufferTooSmall)
            );
        }
    }

    #[test]
    fn ipv6_frame_copies_traffic_class_and_mixed_families_fail() {
        let src: SocketAddr = "[2001:db8::2]:50000".parse().expect("addr");
        let dst: SocketAddr = "[2001:db8::5]:7000".parse().expect("addr");
        let f = build_relayed_frame(&HOP, src, dst, 0xb9, Ipv4Fields::default(), &[1, 2, 3])
            .expect("builds");
        assert_eq!(&f[14..18], &[0x6b, 0x90, 0, 0]);
        assert_eq!(f[21], 64);
        let p = wire::parse_udp_frame(&f).expect("parses");
        assert!(p.udp_checksum_valid());
        assert_eq!(tos_of(&f), Some(0xb9));
        let sum = u16::from_be_bytes([f[60], f[61]]);
        assert_eq!(
            Ipv4Fields::for_input(&f, false),
            Some(Ipv4Fields { id: sum, df: false })
        );
        let v4: SocketAddr = "192.0.2.2:1".parse().expect("addr");
        assert_eq!(
            build_relayed_frame(&HOP, v4, dst, 0, Ipv4Fields::default(), &[]),
            Err(TurnFrameError::FamilyMismatch)
        );
    }
}
