//! STUN attribute types and the decoding of their values (RFC 8489 §14, RFC 8445 §16).
//!
//! Values are decoded into borrowed views over the datagram: nothing here allocates.
//! The TLV walk itself lives in [`super::message`]; writing lives in [`super::builder`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::StunError;
use super::header::{MAGIC_COOKIE, TransactionId};

/// MAPPED-ADDRESS
pub const MAPPED_ADDRESS: u16 = 0x0001;
/// USERNAME
pub const USERNAME: u16 = 0x0006;
/// MESSAGE-INTEGRITY
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
/// ERROR-CODE
pub const ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// REALM
pub const REALM: u16 = 0x0014;
/// NONCE
pub const NONCE: u16 = 0x0015;
/// MESSAGE-INTEGRITY-SHA256
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// PASSWORD-ALGORITHM
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
/// USERHASH
pub const USERHASH: u16 = 0x001E;
/// XOR-MAPPED-ADDRESS
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// PRIORITY (ICE, RFC 8445)
pub const PRIORITY: u16 = 0x0024;
/// USE-CANDIDATE (ICE, RFC 8445)
pub const USE_CANDIDATE: u16 = 0x0025;
/// PASSWORD-ALGORITHMS
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
/// ALTERNATE-DOMAIN
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
/// SOFTWARE
pub const SOFTWARE: u16 = 0x8022;
/// ALTERNATE-SERVER
pub const ALTERNATE_SERVER: u16 = 0x8023;
/// FINGERPRINT
pub const FINGERPRINT: u16 = 0x8028;
/// ICE-CONTROLLED (ICE, RFC 8445)
pub const ICE_CONTROLLED: u16 = 0x8029;
/// ICE-CONTROLLING (ICE, RFC 8445)
pub const ICE_CONTROLLING: u16 = 0x802A;

/// Address family codes of (XOR-)MAPPED-ADDRESS.
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// Longest SOFTWARE, REALM, NONCE, ALTERNATE-DOMAIN and reason phrase (128 characters of
/// up to 6 bytes; RFC 8489 says "MUST be less than 763 bytes" in places and "<= 763" in
/// others: we accept up to 763).
pub const MAX_TEXT_LEN: usize = 763;
/// Longest USERNAME (RFC 8489 §14.3: less than 513 bytes).
pub const MAX_USERNAME_LEN: usize = 512;

/// Attribute types below 0x8000 must be understood by the receiver (RFC 8489 §14).
pub const fn is_comprehension_required(attr_type: u16) -> bool {
    attr_type < 0x8000
}

/// Whether this codec understands `attr_type` (decodes it into a named [`Attribute`]).
/// A comprehension-required type for which this is false earns a 420 reply.
pub const fn is_known(attr_type: u16) -> bool {
    matches!(
        attr_type,
        MAPPED_ADDRESS
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | REALM
            | NONCE
            | MESSAGE_INTEGRITY_SHA256
            | PASSWORD_ALGORITHM
            | USERHASH
            | XOR_MAPPED_ADDRESS
            | PRIORITY
            | USE_CANDIDATE
            | PASSWORD_ALGORITHMS
            | ALTERNATE_DOMAIN
            | SOFTWARE
            | ALTERNATE_SERVER
            | FINGERPRINT
            | ICE_CONTROLLED
            | ICE_CONTROLLING
    )
}

/// ERROR-CODE value: a code in 300..=699 and a reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// class * 100 + number.
    pub code: u16,
    /// UTF-8 reason phrase.
    pub reason: &'a str,
}

/// UNKNOWN-ATTRIBUTES value: a list of 16-bit attribute types, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownAttributes<'a>(&'a [u8]);

impl<'a> UnknownAttributes<'a> {
    /// The attribute types listed.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
    }

    /// The raw value (big-endian u16s).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// One attribute, decoded. Variants borrow from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS, already un-XORed.
    XorMappedAddress(SocketAddr),
    /// ALTERNATE-SERVER (same format as MAPPED-ADDRESS).
    AlternateServer(SocketAddr),
    /// USERNAME (opaque bytes, at most 512).
    Username(&'a [u8]),
    /// USERHASH (32 bytes).
    Userhash(&'a [u8]),
    /// REALM
    Realm(&'a [u8]),
    /// NONCE
    Nonce(&'a [u8]),
    /// PASSWORD-ALGORITHM (raw value: algorithm, length, parameters).
    PasswordAlgorithm(&'a [u8]),
    /// PASSWORD-ALGORITHMS (raw value).
    PasswordAlgorithms(&'a [u8]),
    /// ALTERNATE-DOMAIN
    AlternateDomain(&'a [u8]),
    /// MESSAGE-INTEGRITY: the 20-byte HMAC-SHA1.
    MessageIntegrity(&'a [u8]),
    /// MESSAGE-INTEGRITY-SHA256: 16 to 32 bytes (multiple of 4) of HMAC-SHA256.
    MessageIntegritySha256(&'a [u8]),
    /// FINGERPRINT: the CRC-32 value as carried.
    Fingerprint(u32),
    /// ERROR-CODE
    ErrorCode(ErrorCode<'a>),
    /// UNKNOWN-ATTRIBUTES
    UnknownAttributes(UnknownAttributes<'a>),
    /// SOFTWARE (UTF-8).
    Software(&'a str),
    /// PRIORITY (ICE)
    Priority(u32),
    /// USE-CANDIDATE (ICE, empty)
    UseCandidate,
    /// ICE-CONTROLLED (tie-breaker)
    IceControlled(u64),
    /// ICE-CONTROLLING (tie-breaker)
    IceControlling(u64),
    /// Any type this codec does not understand.
    Other {
        /// The attribute's type.
        attr_type: u16,
        /// Its value, without padding.
        value: &'a [u8],
    },
}

fn invalid(attr_type: u16, what: &'static str) -> StunError {
    StunError::InvalidAttribute { attr_type, what }
}

fn fixed<const N: usize>(attr_type: u16, value: &[u8]) -> Result<[u8; N], StunError> {
    <[u8; N]>::try_from(value).map_err(|_| invalid(attr_type, "wrong length"))
}

fn bounded(attr_type: u16, value: &[u8], max: usize) -> Result<&[u8], StunError> {
    if value.len() > max {
        return Err(invalid(attr_type, "too long"));
    }
    Ok(value)
}

/// The 16 bytes XORed into an IPv6 address: magic cookie then transaction id.
fn xor_pad(transaction_id: &TransactionId) -> [u8; 16] {
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    pad[4..].copy_from_slice(&transaction_id.0);
    pad
}

/// Decodes a (non-XOR) address value: reserved byte, family, port, address.
fn decode_address(attr_type: u16, value: &[u8]) -> Result<SocketAddr, StunError> {
    let [_, family, p0, p1, rest @ ..] = value else {
        return Err(invalid(attr_type, "shorter than 4 bytes"));
    };
    let port = u16::from_be_bytes([*p0, *p1]);
    let ip = match *family {
        FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::from(fixed::<4>(attr_type, rest)?)),
        FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(fixed::<16>(attr_type, rest)?)),
        _ => return Err(invalid(attr_type, "unknown address family")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// XOR (either way) of an address with the cookie and transaction id (RFC 8489 §14.2).
pub fn xor_address(addr: SocketAddr, transaction_id: &TransactionId) -> SocketAddr {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let pad = xor_pad(transaction_id);
    let ip = match addr.ip() {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            for (b, p) in o.iter_mut().zip(pad.iter()) {
                *b ^= p;
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            for (b, p) in o.iter_mut().zip(pad.iter()) {
                *b ^= p;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    SocketAddr::new(ip, port)
}

/// Length of an encoded (XOR-)MAPPED-ADDRESS value for `addr`.
pub const fn address_value_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Writes a (non-XOR) address value into `out`, which must be exactly
/// [`address_value_len`] bytes.
pub(crate) fn encode_address(addr: &SocketAddr, out: &mut [u8]) {
    out[0] = 0;
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(v4) => {
            out[1] = FAMILY_IPV4;
            out[4..8].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out[1] = FAMILY_IPV6;
            out[4..20].copy_from_slice(&v6.octets());
        }
    }
}

impl<'a> Attribute<'a> {
    /// Decodes the value of an attribute of type `attr_type`. `transaction_id` is needed
    /// for XOR-MAPPED-ADDRESS (IPv6). Unknown types become [`Attribute::Other`].
    pub fn decode(
        attr_type: u16,
        value: &'a [u8],
        transaction_id: &TransactionId,
    ) -> Result<Attribute<'a>, StunError> {
        let t = attr_type;
        Ok(match t {
            MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(t, value)?),
            ALTERNATE_SERVER => Attribute::AlternateServer(decode_address(t, value)?),
            XOR_MAPPED_ADDRESS => {
                Attribute::XorMappedAddress(xor_address(decode_address(t, value)?, transaction_id))
            }
            USERNAME => Attribute::Username(bounded(t, value, MAX_USERNAME_LEN)?),
            USERHASH => {
                fixed::<32>(t, value)?;
                Attribute::Userhash(value)
            }
            REALM => Attribute::Realm(bounded(t, value, MAX_TEXT_LEN)?),
            NONCE => Attribute::Nonce(bounded(t, value, MAX_TEXT_LEN)?),
            ALTERNATE_DOMAIN => Attribute::AlternateDomain(bounded(t, value, MAX_TEXT_LEN)?),
            PASSWORD_ALGORITHM => {
                let [_, _, l0, l1, params @ ..] = value else {
                    return Err(invalid(t, "shorter than 4 bytes"));
                };
                if usize::from(u16::from_be_bytes([*l0, *l1])) != params.len() {
                    return Err(invalid(t, "parameter length mismatch"));
                }
                Attribute::PasswordAlgorithm(value)
            }
            PASSWORD_ALGORITHMS => Attribute::PasswordAlgorithms(value),
            MESSAGE_INTEGRITY => {
                fixed::<20>(t, value)?;
                Attribute::MessageIntegrity(value)
            }
            MESSAGE_INTEGRITY_SHA256 => {
                if !(16..=32).contains(&value.len()) || !value.len().is_multiple_of(4) {
                    return Err(invalid(t, "length not 16..=32 in steps of 4"));
                }
                Attribute::MessageIntegritySha256(value)
            }
            FINGERPRINT => Attribute::Fingerprint(u32::from_be_bytes(fixed::<4>(t, value)?)),
            ERROR_CODE => {
                // The 21 reserved bits are ignored on receipt.
                let [_, _, class, number, reason @ ..] = value else {
                    return Err(invalid(t, "shorter than 4 bytes"));
                };
                let class = class & 0x07;
                if !(3..=6).contains(&class) || *number > 99 {
                    return Err(invalid(t, "code outside 300..=699"));
                }
                let reason = std::str::from_utf8(bounded(t, reason, MAX_TEXT_LEN)?)
                    .map_err(|_| invalid(t, "reason is not UTF-8"))?;
                Attribute::ErrorCode(ErrorCode {
                    code: u16::from(class) * 100 + u16::from(*number),
                    reason,
                })
            }
            UNKNOWN_ATTRIBUTES => {
                if !value.len().is_multiple_of(2) {
                    return Err(invalid(t, "odd length"));
                }
                Attribute::UnknownAttributes(UnknownAttributes(value))
            }
            SOFTWARE => Attribute::Software(
                std::str::from_utf8(bounded(t, value, MAX_TEXT_LEN)?)
                    .map_err(|_| invalid(t, "not UTF-8"))?,
            ),
            PRIORITY => Attribute::Priority(u32::from_be_bytes(fixed::<4>(t, value)?)),
            USE_CANDIDATE => {
                if !value.is_empty() {
                    return Err(invalid(t, "not empty"));
                }
                Attribute::UseCandidate
            }
            ICE_CONTROLLED => Attribute::IceControlled(u64::from_be_bytes(fixed::<8>(t, value)?)),
            ICE_CONTROLLING => Attribute::IceControlling(u64::from_be_bytes(fixed::<8>(t, value)?)),
            _ => Attribute::Other {
                attr_type: t,
                value,
            },
        })
    }

    /// The attribute's type code.
    pub fn attr_type(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => XOR_MAPPED_ADDRESS,
            Attribute::AlternateServer(_) => ALTERNATE_SERVER,
            Attribute::Username(_) => USERNAME,
            Attribute::Userhash(_) => USERHASH,
            Attribute::Realm(_) => REALM,
            Attribute::Nonce(_) => NONCE,
            Attribute::PasswordAlgorithm(_) => PASSWORD_ALGORITHM,
            Attribute::PasswordAlgorithms(_) => PASSWORD_ALGORITHMS,
            Attribute::AlternateDomain(_) => ALTERNATE_DOMAIN,
            Attribute::MessageIntegrity(_) => MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => MESSAGE_INTEGRITY_SHA256,
            Attribute::Fingerprint(_) => FINGERPRINT,
            Attribute::ErrorCode(_) => ERROR_CODE,
            Attribute::UnknownAttributes(_) => UNKNOWN_ATTRIBUTES,
            Attribute::Software(_) => SOFTWARE,
            Attribute::Priority(_) => PRIORITY,
            Attribute::UseCandidate => USE_CANDIDATE,
            Attribute::IceControlled(_) => ICE_CONTROLLED,
            Attribute::IceControlling(_) => ICE_CONTROLLING,
            Attribute::Other { attr_type, .. } => *attr_type,
        }
    }

    /// Length of the encoded value, without padding.
    pub fn value_len(&self) -> usize {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::XorMappedAddress(a)
            | Attribute::AlternateServer(a) => address_value_len(a),
            Attribute::Username(v)
            | Attribute::Userhash(v)
            | Attribute::Realm(v)
            | Attribute::Nonce(v)
            | Attribute::PasswordAlgorithm(v)
            | Attribute::PasswordAlgorithms(v)
            | Attribute::AlternateDomain(v)
            | Attribute::MessageIntegrity(v)
            | Attribute::MessageIntegritySha256(v)
            | Attribute::Other { value: v, .. } => v.len(),
            Attribute::Fingerprint(_) | Attribute::Priority(_) => 4,
            Attribute::ErrorCode(e) => 4 + e.reason.len(),
            Attribute::UnknownAttributes(u) => u.0.len(),
            Attribute::Software(s) => s.len(),
            Attribute::UseCandidate => 0,
            Attribute::IceControlled(_) | Attribute::IceControlling(_) => 8,
        }
    }

    /// Writes the value into `out`, which must be exactly [`Attribute::value_len`] bytes.
    /// An ERROR-CODE whose code is outside 300..=699 is written as given modulo the
    /// field widths; the builder checks codes before calling this.
    pub(crate) fn encode_value(&self, transaction_id: &TransactionId, out: &mut [u8]) {
        match self {
            Attribute::MappedAddress(a) | Attribute::AlternateServer(a) => encode_address(a, out),
            Attribute::XorMappedAddress(a) => encode_address(&xor_address(*a, transaction_id), out),
            Attribute::Username(v)
            | Attribute::Userhash(v)
            | Attribute::Realm(v)
            | Attribute::Nonce(v)
            | Attribute::PasswordAlgorithm(v)
            | Attribute::PasswordAlgorithms(v)
            | Attribute::AlternateDomain(v)
            | Attribute::MessageIntegrity(v)
            | Attribute::MessageIntegritySha256(v)
            | Attribute::Other { value: v, .. } => out.copy_from_slice(v),
            Attribute::Fingerprint(x) | Attribute::Priority(x) => {
                out.copy_from_slice(&x.to_be_bytes())
            }
            Attribute::ErrorCode(e) => {
                out[0] = 0;
                out[1] = 0;
                out[2] = ((e.code / 100) & 0x07) as u8;
                out[3] = (e.code % 100) as u8;
                out[4..].copy_from_slice(e.reason.as_bytes());
            }
            Attribute::UnknownAttributes(u) => out.copy_from_slice(u.0),
            Attribute::Software(s) => out.copy_from_slice(s.as_bytes()),
            Attribute::UseCandidate => {}
            Attribute::IceControlled(x) | Attribute::IceControlling(x) => {
                out.copy_from_slice(&x.to_be_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    #[test]
    fn comprehension_ranges() {
        assert!(is_comprehension_required(0x0000));
        assert!(is_comprehension_required(0x7FFF));
        assert!(!is_comprehension_required(0x8000));
        assert!(is_known(PRIORITY) && is_known(USE_CANDIDATE) && is_known(ICE_CONTROLLED));
        assert!(!is_known(0x0019)); // REQUESTED-TRANSPORT: TURN, not yet understood
    }

    #[test]
    fn xor_mapped_address_ipv4_matches_rfc5769() {
        // RFC 5769 §2.2: 192.0.2.1:32853 encodes as 0x0001 a147 e112a643.
        let value = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        let attr = Attribute::decode(XOR_MAPPED_ADDRESS, &value, &TID).expect("valid");
        let expect: SocketAddr = "192.0.2.1:32853".parse().expect("addr");
        assert_eq!(attr, Attribute::XorMappedAddress(expect));
        let mut out = [0u8; 8];
        attr.encode_value(&TID, &mut out);
        assert_eq!(out, value);
    }

    #[test]
    fn address_values_are_checked() {
        let bad_family = [0x00, 0x03, 0, 0, 1, 2, 3, 4];
        assert!(matches!(
            Attribute::decode(XOR_MAPPED_ADDRESS, &bad_family, &TID),
            Err(StunError::InvalidAttribute { .. })
        ));
        let v4_with_v6_len = [0x00, 0x01, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(Attribute::decode(MAPPED_ADDRESS, &v4_with_v6_len, &TID).is_err());
        let short = [0x00, 0x02, 0, 0, 1, 2, 3, 4];
        assert!(Attribute::decode(MAPPED_ADDRESS, &short, &TID).is_err());
        assert!(Attribute::decode(MAPPED_ADDRESS, &[0, 1], &TID).is_err());
        let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
        let mut out = [0u8; 20];
        encode_address(&v6, &mut out);
        assert_eq!(
            Attribute::decode(MAPPED_ADDRESS, &out, &TID),
            Ok(Attribute::MappedAddress(v6))
        );
    }

    #[test]
    fn error_code_and_lists() {
        let value = [0, 0, 4, 20, b'U', b'n'];
        assert_eq!(
            Attribute::decode(ERROR_CODE, &value, &TID),
            Ok(Attribute::ErrorCode(ErrorCode {
                code: 420,
                reason: "Un"
            }))
        );
        assert!(Attribute::decode(ERROR_CODE, &[0, 0, 7, 0], &TID).is_err());
        assert!(Attribute::decode(ERROR_CODE, &[0, 0, 4, 100], &TID).is_err());
        // Reserved bits are ignored.
        assert!(Attribute::decode(ERROR_CODE, &[1, 0, 0xf4, 0], &TID).is_ok());
        assert!(Attribute::decode(ERROR_CODE, &[0, 0, 4, 0, 0xff], &TID).is_err());
        let Ok(Attribute::UnknownAttributes(list)) =
            Attribute::decode(UNKNOWN_ATTRIBUTES, &[0x00, 0x19, 0x7f, 0xff], &TID)
        else {
            panic!("UNKNOWN-ATTRIBUTES did not decode");
        };
        assert!(list.iter().eq([0x0019, 0x7fff]));
        assert!(Attribute::decode(UNKNOWN_ATTRIBUTES, &[0, 1, 2], &TID).is_err());
    }

    #[test]
    fn fixed_lengths_are_enforced() {
        assert!(Attribute::decode(MESSAGE_INTEGRITY, &[0; 19], &TID).is_err());
        assert!(Attribute::decode(MESSAGE_INTEGRITY, &[0; 20], &TID).is_ok());
        for len in 0..40 {
            let ok = (16..=32).contains(&len) && len % 4 == 0;
            assert_eq!(
                Attribute::decode(MESSAGE_INTEGRITY_SHA256, &[0; 40][..len], &TID).is_ok(),
                ok,
                "MI-SHA256 of {len} bytes"
            );
        }
        assert!(Attribute::decode(FINGERPRINT, &[0; 5], &TID).is_err());
        assert!(Attribute::decode(PRIORITY, &[0; 3], &TID).is_err());
        assert!(Attribute::decode(USE_CANDIDATE, &[0; 4], &TID).is_err());
        assert!(Attribute::decode(ICE_CONTROLLING, &[0; 4], &TID).is_err());
        assert!(Attribute::decode(USERNAME, &[b'a'; 513], &TID).is_err());
        assert!(Attribute::decode(USERNAME, &[b'a'; 512], &TID).is_ok());
        assert!(Attribute::decode(SOFTWARE, &[0xff], &TID).is_err());
        assert_eq!(
            Attribute::decode(0x7777, &[1, 2], &TID),
            Ok(Attribute::Other {
                attr_type: 0x7777,
                value: &[1, 2]
            })
        );
    }
}
