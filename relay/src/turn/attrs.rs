//! TURN attribute codes (RFC 8656 §18, RFC 8489 §14) and value codecs for the ones the
//! STUN codec in [`crate::stun::attr`] does not decode. Written and read in place, without
//! allocating: encoders fill small stack arrays that the builder copies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::stun::TransactionId;
use crate::stun::attr::xor_address;

/// CHANNEL-NUMBER
pub const CHANNEL_NUMBER: u16 = 0x000C;
/// LIFETIME
pub const LIFETIME: u16 = 0x000D;
/// XOR-PEER-ADDRESS
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA
pub const DATA: u16 = 0x0013;
/// XOR-RELAYED-ADDRESS
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// REQUESTED-ADDRESS-FAMILY
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// EVEN-PORT
pub const EVEN_PORT: u16 = 0x0018;
/// REQUESTED-TRANSPORT
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
/// DONT-FRAGMENT
pub const DONT_FRAGMENT: u16 = 0x001A;
/// RESERVATION-TOKEN
pub const RESERVATION_TOKEN: u16 = 0x0022;
/// ADDITIONAL-ADDRESS-FAMILY (comprehension-optional)
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDRESS-ERROR-CODE (comprehension-optional)
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// ICMP (comprehension-optional)
pub const ICMP: u16 = 0x8004;

/// IANA protocol number of UDP, the only REQUESTED-TRANSPORT we relay.
pub const PROTO_UDP: u8 = 17;

/// TURN methods (RFC 8656 §17).
pub mod method {
    use crate::stun::Method;

    /// Allocate (0x003)
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh (0x004)
    pub const REFRESH: u16 = 0x004;
    /// Send (0x006, indication only)
    pub const SEND: u16 = 0x006;
    /// Data (0x007, indication only)
    pub const DATA: u16 = 0x007;
    /// CreatePermission (0x008)
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind (0x009)
    pub const CHANNEL_BIND: u16 = 0x009;

    /// `value` as a [`Method`] (all TURN method codes are in range).
    pub const fn m(value: u16) -> Method {
        match Method::new(value) {
            Some(m) => m,
            None => Method::BINDING,
        }
    }
}

/// Whether the TURN core understands `attr_type` (in addition to the STUN codec's list):
/// a comprehension-required type outside both earns 420.
pub const fn is_known_turn(attr_type: u16) -> bool {
    matches!(
        attr_type,
        CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | EVEN_PORT
            | REQUESTED_TRANSPORT
            | DONT_FRAGMENT
            | RESERVATION_TOKEN
            | ADDITIONAL_ADDRESS_FAMILY
            | ADDRESS_ERROR_CODE
            | ICMP
    )
}

/// Largest encoded XOR address value (IPv6).
pub const XOR_ADDRESS_MAX: usize = 20;

/// Decodes an XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS value.
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let [_, family, p0, p1, rest @ ..] = value else {
        return None;
    };
    let port = u16::from_be_bytes([*p0, *p1]);
    let ip = match (*family, rest.len()) {
        (0x01, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(rest).ok()?)),
        (0x02, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(rest).ok()?)),
        _ => return None,
    };
    Some(xor_address(SocketAddr::new(ip, port), tid))
}

/// Encodes `addr` as an XOR address value into `out`; returns the value's length.
pub fn encode_xor_address(
    addr: SocketAddr,
    tid: &TransactionId,
    out: &mut [u8; XOR_ADDRESS_MAX],
) -> usize {
    let x = xor_address(addr, tid);
    out[0] = 0;
    out[2..4].copy_from_slice(&x.port().to_be_bytes());
    match x.ip() {
        IpAddr::V4(v4) => {
            out[1] = 0x01;
            out[4..8].copy_from_slice(&v4.octets());
            8
        }
        IpAddr::V6(v6) => {
            out[1] = 0x02;
            out[4..20].copy_from_slice(&v6.octets());
            20
        }
    }
}

/// Decodes a 4-byte big-endian value (LIFETIME).
pub fn decode_u32(value: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(value).ok().map(u32::from_be_bytes)
}

/// Decodes CHANNEL-NUMBER (number in the first two bytes, RFFU after).
pub fn decode_channel_number(value: &[u8]) -> Option<u16> {
    let v = <[u8; 4]>::try_from(value).ok()?;
    Some(u16::from_be_bytes([v[0], v[1]]))
}

/// Decodes a REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY value: `Some(Ok)` for
/// 0x01/0x02, `Some(Err(()))` for another family byte, `None` when malformed.
pub fn decode_family(value: &[u8]) -> Option<Result<super::IpFamily, ()>> {
    let v = <[u8; 4]>::try_from(value).ok()?;
    Some(match v[0] {
        0x01 => Ok(super::IpFamily::V4),
        0x02 => Ok(super::IpFamily::V6),
        _ => Err(()),
    })
}

/// The family byte of REQUESTED-ADDRESS-FAMILY and ADDRESS-ERROR-CODE.
pub const fn family_code(f: super::IpFamily) -> u8 {
    match f {
        super::IpFamily::V4 => 0x01,
        super::IpFamily::V6 => 0x02,
    }
}

/// Decodes REQUESTED-TRANSPORT: the protocol number.
pub fn decode_requested_transport(value: &[u8]) -> Option<u8> {
    <[u8; 4]>::try_from(value).ok().map(|v| v[0])
}

/// Decodes EVEN-PORT: whether the R (reserve next port) bit is set.
pub fn decode_even_port(value: &[u8]) -> Option<bool> {
    match value {
        [b] => Some(b & 0x80 != 0),
        _ => None,
    }
}

/// Decodes RESERVATION-TOKEN.
pub fn decode_reservation_token(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

/// Valid channel numbers (RFC 8656 §12).
pub const CHANNEL_RANGE: std::ops::RangeInclusive<u16> = 0x4000..=0x4FFF;

/// The wider range of RFC 5766 §11, which RFC 8656 narrowed (0x5000–0x7FFF collide with
/// other protocols multiplexed on the port). Some clients still draw from it, coturn's
/// `turnutils_uclient` among them; accepted only with `TurnConfig::legacy_channel_range`.
pub const LEGACY_CHANNEL_RANGE: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_addresses_round_trip() {
        let tid = TransactionId([7; 12]);
        for a in ["192.0.2.1:32853", "[2001:db8::1]:9"] {
            let a: SocketAddr = a.parse().expect("addr");
            let mut buf = [0u8; XOR_ADDRESS_MAX];
            let n = encode_xor_address(a, &tid, &mut buf);
            assert_eq!(decode_xor_address(&buf[..n], &tid), Some(a));
        }
        assert_eq!(decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &tid), None);
        assert_eq!(decode_xor_address(&[0, 1, 0, 0, 1, 2, 3], &tid), None);
    }

    #[test]
    fn small_values() {
        assert_eq!(decode_even_port(&[0x80]), Some(true));
        assert_eq!(decode_even_port(&[0x00]), Some(false));
        assert_eq!(decode_even_port(&[0, 0]), None);
        assert_eq!(decode_requested_transport(&[17, 0, 0, 0]), Some(17));
        assert_eq!(decode_channel_number(&[0x40, 0x01, 0, 0]), Some(0x4001));
        assert_eq!(
            decode_family(&[2, 0, 0, 0]),
            Some(Ok(super::super::IpFamily::V6))
        );
        assert_eq!(decode_family(&[3, 0, 0, 0]), Some(Err(())));
        assert!(is_known_turn(REQUESTED_TRANSPORT));
        assert!(!is_known_turn(0x002A));
    }
}
