//! Writes a STUN message into a caller's buffer, without allocating.
//!
//! The header's length field is kept current after every attribute, so the integrity
//! attributes can be computed over the buffer as it stands (RFC 8489 §14.5-§14.7: the
//! length counts up to and including the attribute being added). A failed `add_*` leaves
//! the message as it was.

use std::net::SocketAddr;

use super::attr::{self, Attribute, ErrorCode, MAX_TEXT_LEN};
use super::error::StunError;
use super::header::{HEADER_LEN, MAGIC_COOKIE, MessageType, TransactionId};
use super::integrity::{
    self, MESSAGE_INTEGRITY_LEN, MESSAGE_INTEGRITY_SHA256_LEN, compute_fingerprint,
};

/// Largest body the 16-bit length field can describe while staying a multiple of 4.
const MAX_BODY: usize = 0xFFFC;

/// A message being written into a borrowed buffer.
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut [u8],
    len: usize,
    transaction_id: TransactionId,
    padding: u8,
}

impl<'b> MessageBuilder<'b> {
    /// Starts a message of type `message_type` with `transaction_id` in `buf`.
    pub fn new(
        buf: &'b mut [u8],
        message_type: MessageType,
        transaction_id: TransactionId,
    ) -> Result<MessageBuilder<'b>, StunError> {
        let Some(head) = buf.first_chunk_mut::<HEADER_LEN>() else {
            return Err(StunError::BufferTooSmall);
        };
        head[0..2].copy_from_slice(&message_type.to_u16().to_be_bytes());
        head[2..4].copy_from_slice(&[0, 0]);
        head[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        head[8..20].copy_from_slice(&transaction_id.0);
        Ok(MessageBuilder {
            buf,
            len: HEADER_LEN,
            transaction_id,
            padding: 0,
        })
    }

    /// Uses `byte` for padding instead of zero. Receivers ignore padding; this exists to
    /// reproduce samples such as RFC 5769's, which pad with spaces.
    pub fn with_padding_byte(mut self, byte: u8) -> MessageBuilder<'b> {
        self.padding = byte;
        self
    }

    /// Bytes written so far (header included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no attribute has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// The message written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the message; returns its length in the buffer.
    pub fn finish(self) -> usize {
        self.len
    }

    fn set_length(&mut self) {
        // len - HEADER_LEN <= MAX_BODY is checked by `reserve`.
        let body = (self.len - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
    }

    /// Appends an attribute header, its padding and room for a `value_len` value; returns
    /// the value's slice to fill. Checks sizes first so failure changes nothing.
    fn reserve(&mut self, attr_type: u16, value_len: usize) -> Result<&mut [u8], StunError> {
        if value_len > usize::from(u16::MAX) {
            return Err(StunError::ValueTooLong(value_len));
        }
        let start = self.len;
        let end = start + 4 + value_len.next_multiple_of(4);
        if end - HEADER_LEN > MAX_BODY {
            return Err(StunError::ValueTooLong(value_len));
        }
        let Some(space) = self.buf.get_mut(start..end) else {
            return Err(StunError::BufferTooSmall);
        };
        space[0..2].copy_from_slice(&attr_type.to_be_bytes());
        space[2..4].copy_from_slice(&(value_len as u16).to_be_bytes());
        space[4 + value_len..].fill(self.padding);
        self.len = end;
        self.set_length();
        Ok(&mut self.buf[start + 4..start + 4 + value_len])
    }

    /// Appends `attribute` as given (MESSAGE-INTEGRITY and FINGERPRINT values included:
    /// use the `add_message_integrity*` and `add_fingerprint` methods to compute them).
    pub fn add(&mut self, attribute: &Attribute<'_>) -> Result<(), StunError> {
        if let Attribute::ErrorCode(e) = attribute {
            check_error_code(e)?;
        }
        let tid = self.transaction_id;
        let value = self.reserve(attribute.attr_type(), attribute.value_len())?;
        attribute.encode_value(&tid, value);
        Ok(())
    }

    /// Appends XOR-MAPPED-ADDRESS.
    pub fn add_xor_mapped_address(&mut self, addr: SocketAddr) -> Result<(), StunError> {
        self.add(&Attribute::XorMappedAddress(addr))
    }

    /// Appends MAPPED-ADDRESS.
    pub fn add_mapped_address(&mut self, addr: SocketAddr) -> Result<(), StunError> {
        self.add(&Attribute::MappedAddress(addr))
    }

    /// Appends SOFTWARE (at most 763 bytes).
    pub fn add_software(&mut self, software: &str) -> Result<(), StunError> {
        if software.len() > MAX_TEXT_LEN {
            return Err(StunError::ValueTooLong(software.len()));
        }
        self.add(&Attribute::Software(software))
    }

    /// Appends ERROR-CODE (`code` in 300..=699, reason at most 763 bytes).
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> Result<(), StunError> {
        self.add(&Attribute::ErrorCode(ErrorCode { code, reason }))
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types`, written as they come (no allocation).
    pub fn add_unknown_attributes(
        &mut self,
        types: impl IntoIterator<Item = u16>,
    ) -> Result<(), StunError> {
        let start = self.len;
        let mut pos = start + 4;
        for t in types {
            let Some(slot) = self.buf.get_mut(pos..pos + 2) else {
                return Err(StunError::BufferTooSmall);
            };
            slot.copy_from_slice(&t.to_be_bytes());
            pos += 2;
            if pos - start - 4 > usize::from(u16::MAX) {
                return Err(StunError::ValueTooLong(pos - start - 4));
            }
        }
        let value_len = pos - start - 4;
        // The values are already in place right after the (future) attribute header;
        // `reserve` writes the header and padding around them.
        self.reserve(attr::UNKNOWN_ATTRIBUTES, value_len)
            .map(|_| ())
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) over everything written so far.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> Result<(), StunError> {
        let offset = self.len;
        // Compute before reserving so a key error leaves the message unchanged; the
        // adjusted length is what the header will say once the attribute is in.
        if offset + 4 + MESSAGE_INTEGRITY_LEN > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        let tag = integrity::compute_message_integrity(&self.buf[..offset], offset, key)?;
        self.reserve(attr::MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_LEN)?
            .copy_from_slice(&tag);
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256 with `key`), full 32 bytes.
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), StunError> {
        self.add_message_integrity_sha256_truncated(key, MESSAGE_INTEGRITY_SHA256_LEN)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 truncated to `len` bytes (16..=32, multiple of 4).
    pub fn add_message_integrity_sha256_truncated(
        &mut self,
        key: &[u8],
        len: usize,
    ) -> Result<(), StunError> {
        if !(16..=MESSAGE_INTEGRITY_SHA256_LEN).contains(&len) || !len.is_multiple_of(4) {
            return Err(StunError::InvalidAttribute {
                attr_type: attr::MESSAGE_INTEGRITY_SHA256,
                what: "length not 16..=32 in steps of 4",
            });
        }
        let offset = self.len;
        if offset + 4 + len > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        let tag =
            integrity::compute_message_integrity_sha256(&self.buf[..offset], offset, len, key)?;
        self.reserve(attr::MESSAGE_INTEGRITY_SHA256, len)?
            .copy_from_slice(&tag[..len]);
        Ok(())
    }

    /// Appends FINGERPRINT over everything written so far. Add it last.
    pub fn add_fingerprint(&mut self) -> Result<(), StunError> {
        let offset = self.len;
        if offset + 8 > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        let crc = compute_fingerprint(&self.buf[..offset], offset)?;
        self.reserve(attr::FINGERPRINT, 4)?
            .copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }
}

fn check_error_code(e: &ErrorCode<'_>) -> Result<(), StunError> {
    if !(300..=699).contains(&e.code) {
        return Err(StunError::InvalidAttribute {
            attr_type: attr::ERROR_CODE,
            what: "code outside 300..=699",
        });
    }
    if e.reason.len() > MAX_TEXT_LEN {
        return Err(StunError::ValueTooLong(e.reason.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::integrity::{
        verify_fingerprint, verify_message_integrity, verify_message_integrity_sha256,
    };
    use crate::stun::message::Message;

    const TID: TransactionId = TransactionId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    #[test]
    fn writes_header_attributes_padding_and_length() {
        let mut buf = [0xAAu8; 128];
        let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, TID).expect("fits");
        b.add_software("abcde").expect("fits");
        b.add_error_code(420, "Unknown Attribute").expect("fits");
        b.add_unknown_attributes([0x0019u16, 0x7001, 0x7002])
            .expect("fits");
        let n = b.finish();
        let m = &buf[..n];
        assert_eq!(&m[0..2], &[0x01, 0x01]);
        assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), n - 20);
        // SOFTWARE: 5 bytes + 3 zero padding bytes.
        assert_eq!(&m[20..32], b"\x80\x22\x00\x05abcde\0\0\0");
        // ERROR-CODE: class 4, number 20.
        assert_eq!(&m[32..40], b"\x00\x09\x00\x15\x00\x00\x04\x14");
        let msg = Message::parse(m).expect("valid");
        let attrs: Vec<_> = msg
            .attributes()
            .map(|a| {
                a.and_then(|a| a.decode(msg.transaction_id()))
                    .expect("decodes")
            })
            .collect();
        assert_eq!(attrs[0], Attribute::Software("abcde"));
        let Attribute::UnknownAttributes(list) = attrs[2] else {
            panic!("third attribute is not UNKNOWN-ATTRIBUTES: {:?}", attrs[2]);
        };
        assert!(list.iter().eq([0x0019, 0x7001, 0x7002]));
        // 6 bytes of list + 2 zero bytes of padding.
        assert_eq!(&m[n - 2..n], &[0, 0]);
    }

    #[test]
    fn too_small_buffers_fail_cleanly_and_leave_the_message_intact() {
        let mut tiny = [0u8; 19];
        assert!(matches!(
            MessageBuilder::new(&mut tiny, MessageType::BINDING_SUCCESS, TID),
            Err(StunError::BufferTooSmall)
        ));
        let mut buf = [0u8; 40];
        let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, TID).expect("fits");
        let v6: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
        assert_eq!(b.add_xor_mapped_address(v6), Err(StunError::BufferTooSmall));
        assert_eq!(b.len(), 20);
        assert_eq!(
            b.add_unknown_attributes([1u16; 20]),
            Err(StunError::BufferTooSmall)
        );
        assert_eq!(
            b.add_message_integrity(b"k"),
            Err(StunError::BufferTooSmall)
        );
        b.add_xor_mapped_address("1.2.3.4:5".parse().expect("addr"))
            .expect("fits");
        b.add_fingerprint().expect("fits exactly");
        assert_eq!(b.len(), 40);
        assert_eq!(b.add_fingerprint(), Err(StunError::BufferTooSmall));
        let n = b.finish();
        verify_fingerprint(&Message::parse(&buf[..n]).expect("valid")).expect("fingerprint");
    }

    #[test]
    fn rejects_bad_error_codes() {
        let mut buf = [0u8; 64];
        let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_ERROR, TID).expect("fits");
        assert!(b.add_error_code(200, "x").is_err());
        assert!(b.add_error_code(700, "x").is_err());
        assert_eq!(b.len(), 20);
    }

    #[test]
    fn integrity_attributes_verify_and_detect_tampering() {
        let key = b"secret key";
        for sha256_len in [16usize, 20, 28, 32] {
            let mut buf = [0u8; 256];
            let mut b =
                MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, TID).expect("fits");
            b.add(&Attribute::Username(b"user:name")).expect("fits");
            b.add_message_integrity(key).expect("fits");
            b.add_message_integrity_sha256_truncated(key, sha256_len)
                .expect("fits");
            b.add_fingerprint().expect("fits");
            let n = b.finish();
            let msg = Message::parse(&buf[..n]).expect("valid");
            verify_message_integrity(&msg, key).expect("MI");
            verify_message_integrity_sha256(&msg, key).expect("MI-SHA256");
            verify_fingerprint(&msg).expect("FINGERPRINT");
            assert_eq!(
                verify_message_integrity(&msg, b"other key"),
                Err(StunError::IntegrityMismatch)
            );
            assert_eq!(
                verify_message_integrity_sha256(&msg, b"other key"),
                Err(StunError::IntegrityMismatch)
            );

            // Flip one bit of USERNAME: every check fails.
            let mut bad = buf;
            bad[24] ^= 1;
            let msg = Message::parse(&bad[..n]).expect("header unchanged");
            assert_eq!(
                verify_message_integrity(&msg, key),
                Err(StunError::IntegrityMismatch)
            );
            assert_eq!(
                verify_message_integrity_sha256(&msg, key),
                Err(StunError::IntegrityMismatch)
            );
            assert_eq!(
                verify_fingerprint(&msg),
                Err(StunError::FingerprintMismatch)
            );
        }
    }

    #[test]
    fn integrity_ignores_attributes_after_it() {
        // RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY (other than MI-SHA256 and
        // FINGERPRINT) are ignored, and MI was computed with the length up to itself.
        let key = b"k";
        let mut buf = [0u8; 128];
        let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, TID).expect("fits");
        b.add_message_integrity(key).expect("fits");
        b.add_software("added later").expect("fits");
        let n = b.finish();
        let msg = Message::parse(&buf[..n]).expect("valid");
        verify_message_integrity(&msg, key).expect("still valid");
        assert_eq!(
            verify_message_integrity_sha256(&msg, key),
            Err(StunError::MissingIntegrity)
        );
        assert_eq!(verify_fingerprint(&msg), Err(StunError::MissingFingerprint));
    }
}
