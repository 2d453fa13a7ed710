//! Ethernet / IPv4 / IPv6 / UDP frames: zero-copy parsing, Internet checksums, and the
//! builders of request and reply frames.
//!
//! The kernel fast path answers inside whole frames, so anything that must agree with it
//! byte for byte (the differential harness, the bench's generators) needs the same frame
//! rules in userspace: [`build_udp_reply`] is the userspace statement of those rules
//! (contract 2 of issue 2: swapped MACs/addresses/ports, IPv4 id 0 + DF + TTL 64, IPv6
//! hop limit 64 and no flow label, UDP checksum always computed).

pub mod checksum;
mod frame;

pub use checksum::{
    fold, ipv4_header_checksum, ones_complement_sum, udp_checksum, udp_checksum_partial,
    udp_checksum_valid, udp_partial_checksum,
};
pub use frame::{
    ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, UdpFrame, WireError,
    build_udp_reply, build_udp_request, parse_udp_frame,
};
