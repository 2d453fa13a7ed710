//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256) and FINGERPRINT
//! (CRC-32 XOR 0x5354554E): computing them for the builder and verifying them on receipt
//! (RFC 8489 §14.5-§14.7).
//!
//! Each value covers the message up to (not including) its own attribute, with the
//! header's length field replaced by the length the message would have if it ended right
//! after that attribute. We feed the hash the three pieces (type, adjusted length, the
//! rest) instead of copying the message, so verification never allocates. HMAC tags are
//! compared in constant time (the `hmac` crate's `verify_*`).
//!
//! Keys are plain bytes: the short-term password, or the long-term key that the TURN work
//! will derive; this module does not care which.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::error::StunError;
use super::header::HEADER_LEN;
use super::message::{Message, RawAttribute};

/// XORed into the CRC-32 to form FINGERPRINT.
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Size of MESSAGE-INTEGRITY's HMAC-SHA1 value.
pub const MESSAGE_INTEGRITY_LEN: usize = 20;
/// Size of a full MESSAGE-INTEGRITY-SHA256 value.
pub const MESSAGE_INTEGRITY_SHA256_LEN: usize = 32;

/// Header length field for a message ending right after an attribute that starts at
/// `attr_offset` and has a `value_len`-byte value (no padding: all our values are
/// multiples of 4).
fn adjusted_length(attr_offset: usize, value_len: usize) -> Result<[u8; 2], StunError> {
    let len = attr_offset - HEADER_LEN + 4 + value_len;
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| StunError::ValueTooLong(len))
}

/// Feeds `bytes[..upto]` to `update`, with the length field replaced by `length`.
/// `bytes` must hold at least a header and `upto >= HEADER_LEN`.
fn feed(bytes: &[u8], upto: usize, length: [u8; 2], mut update: impl FnMut(&[u8])) {
    update(&bytes[..2]);
    update(&length);
    update(&bytes[4..upto]);
}

/// FINGERPRINT of `bytes[..attr_offset]` for a FINGERPRINT attribute at `attr_offset`.
pub(crate) fn compute_fingerprint(bytes: &[u8], attr_offset: usize) -> Result<u32, StunError> {
    let mut crc = crc32fast::Hasher::new();
    feed(bytes, attr_offset, adjusted_length(attr_offset, 4)?, |b| {
        crc.update(b)
    });
    Ok(crc.finalize() ^ FINGERPRINT_XOR)
}

fn hmac_sha1(bytes: &[u8], attr_offset: usize, key: &[u8]) -> Result<Hmac<Sha1>, StunError> {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).map_err(|_| StunError::InvalidKey)?;
    feed(
        bytes,
        attr_offset,
        adjusted_length(attr_offset, MESSAGE_INTEGRITY_LEN)?,
        |b| mac.update(b),
    );
    Ok(mac)
}

fn hmac_sha256(
    bytes: &[u8],
    attr_offset: usize,
    value_len: usize,
    key: &[u8],
) -> Result<Hmac<Sha256>, StunError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| StunError::InvalidKey)?;
    feed(
        bytes,
        attr_offset,
        adjusted_length(attr_offset, value_len)?,
        |b| mac.update(b),
    );
    Ok(mac)
}

/// MESSAGE-INTEGRITY value for an attribute at `attr_offset` of `bytes`.
pub(crate) fn compute_message_integrity(
    bytes: &[u8],
    attr_offset: usize,
    key: &[u8],
) -> Result<[u8; MESSAGE_INTEGRITY_LEN], StunError> {
    Ok(hmac_sha1(bytes, attr_offset, key)?
        .finalize()
        .into_bytes()
        .into())
}

/// MESSAGE-INTEGRITY-SHA256 value (full 32 bytes) for an attribute of `value_len` bytes
/// at `attr_offset` of `bytes`; a truncated attribute carries the first `value_len` bytes.
pub(crate) fn compute_message_integrity_sha256(
    bytes: &[u8],
    attr_offset: usize,
    value_len: usize,
    key: &[u8],
) -> Result<[u8; MESSAGE_INTEGRITY_SHA256_LEN], StunError> {
    Ok(hmac_sha256(bytes, attr_offset, value_len, key)?
        .finalize()
        .into_bytes()
        .into())
}

/// Checks the FINGERPRINT attribute `fp` (as found by [`Message::layout`]).
pub fn check_fingerprint(msg: &Message<'_>, fp: &RawAttribute<'_>) -> Result<(), StunError> {
    let Ok(carried) = <[u8; 4]>::try_from(fp.value) else {
        return Err(StunError::InvalidAttribute {
            attr_type: fp.attr_type,
            what: "wrong length",
        });
    };
    if compute_fingerprint(msg.as_bytes(), fp.offset)? == u32::from_be_bytes(carried) {
        Ok(())
    } else {
        Err(StunError::FingerprintMismatch)
    }
}

/// Verifies that `msg` carries a correct FINGERPRINT as its last attribute.
pub fn verify_fingerprint(msg: &Message<'_>) -> Result<(), StunError> {
    let layout = msg.layout()?;
    let fp = layout.fingerprint.ok_or(StunError::MissingFingerprint)?;
    check_fingerprint(msg, &fp)
}

/// Verifies MESSAGE-INTEGRITY (HMAC-SHA1) of `msg` with `key`, in constant time.
pub fn verify_message_integrity(msg: &Message<'_>, key: &[u8]) -> Result<(), StunError> {
    let layout = msg.layout()?;
    let mi = layout.integrity.ok_or(StunError::MissingIntegrity)?;
    if mi.value.len() != MESSAGE_INTEGRITY_LEN {
        return Err(StunError::InvalidAttribute {
            attr_type: mi.attr_type,
            what: "wrong length",
        });
    }
    hmac_sha1(msg.as_bytes(), mi.offset, key)?
        .verify_slice(mi.value)
        .map_err(|_| StunError::IntegrityMismatch)
}

/// Verifies MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, possibly truncated to 16..=32 bytes
/// in steps of 4) of `msg` with `key`, in constant time.
pub fn verify_message_integrity_sha256(msg: &Message<'_>, key: &[u8]) -> Result<(), StunError> {
    let layout = msg.layout()?;
    let mi = layout.integrity_sha256.ok_or(StunError::MissingIntegrity)?;
    let len = mi.value.len();
    if !(16..=MESSAGE_INTEGRITY_SHA256_LEN).contains(&len) || len % 4 != 0 {
        return Err(StunError::InvalidAttribute {
            attr_type: mi.attr_type,
            what: "length not 16..=32 in steps of 4",
        });
    }
    hmac_sha256(msg.as_bytes(), mi.offset, len, key)?
        .verify_truncated_left(mi.value)
        .map_err(|_| StunError::IntegrityMismatch)
}
