//! A zero-copy view over a received STUN message and its attributes.
//!
//! [`Message::parse`] checks the header the way RFC 8489 §6.3 asks of a receiver;
//! [`Message::attributes`] walks the TLVs in place (padding skipped, never read);
//! [`Message::layout`] finds MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
//! and applies the ordering rules. Nothing here allocates.

use super::attr::{self, Attribute};
use super::error::StunError;
use super::header::{Class, HEADER_LEN, Header, MessageType, Method, TransactionId};

/// A STUN message borrowed from a datagram whose header has been checked.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    header: Header,
}

/// One attribute TLV, in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// The attribute's type.
    pub attr_type: u16,
    /// The value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute's type field from the start of the message.
    pub offset: usize,
}

impl<'a> RawAttribute<'a> {
    /// Offset just past the attribute and its padding.
    pub fn end(&self) -> usize {
        self.offset + 4 + self.value.len().next_multiple_of(4)
    }

    /// Decodes the value (see [`Attribute::decode`]).
    pub fn decode(&self, transaction_id: &TransactionId) -> Result<Attribute<'a>, StunError> {
        Attribute::decode(self.attr_type, self.value, transaction_id)
    }
}

/// Iterator over the attributes of a [`Message`]. Yields an error (once, then stops)
/// if an attribute runs past the end of the message.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<RawAttribute<'a>, StunError>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.pos;
        let rest = self.bytes.get(offset..)?;
        if rest.is_empty() {
            return None;
        }
        // Stop after this item whatever happens; set the real position on success.
        self.pos = self.bytes.len();
        let Some(([t0, t1, l0, l1], tail)) = rest.split_first_chunk::<4>().map(|(h, t)| (*h, t))
        else {
            return Some(Err(StunError::TruncatedAttribute { offset }));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some(value) = tail.get(..len) else {
            return Some(Err(StunError::TruncatedAttribute { offset }));
        };
        let attr = RawAttribute {
            attr_type: u16::from_be_bytes([t0, t1]),
            value,
            offset,
        };
        // The message length is a multiple of 4 and attributes start 4-aligned, so the
        // padding of a value that fits is always present; min() keeps this obviously safe.
        self.pos = attr.end().min(self.bytes.len());
        Some(Ok(attr))
    }
}

/// Where the integrity-related attributes sit, after checking the ordering rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout<'a> {
    /// The first MESSAGE-INTEGRITY, unless MESSAGE-INTEGRITY-SHA256 came before it
    /// (then it is ignored, RFC 8489 §14.6).
    pub integrity: Option<RawAttribute<'a>>,
    /// The first MESSAGE-INTEGRITY-SHA256.
    pub integrity_sha256: Option<RawAttribute<'a>>,
    /// FINGERPRINT (always the last attribute when present).
    pub fingerprint: Option<RawAttribute<'a>>,
    /// Offset after the first integrity attribute: attributes starting here are
    /// ignored (RFC 8489 §14.5/§14.6), except MESSAGE-INTEGRITY-SHA256 after
    /// MESSAGE-INTEGRITY, and FINGERPRINT.
    pub ignored_from: usize,
}

impl Layout<'_> {
    /// Whether a receiver must take `attr` into account.
    pub fn is_significant(&self, attr: &RawAttribute<'_>) -> bool {
        attr.offset < self.ignored_from
            || self
                .integrity_sha256
                .is_some_and(|a| a.offset == attr.offset)
            || attr.attr_type == attr::FINGERPRINT
    }
}

impl<'a> Message<'a> {
    /// Checks the header of `datagram` (see [`Header::parse`]) and wraps it.
    /// Attributes are not inspected: see [`Message::layout`] and [`Message::attributes`].
    pub fn parse(datagram: &'a [u8]) -> Result<Message<'a>, StunError> {
        let header = Header::parse(datagram)?;
        Ok(Message {
            bytes: datagram,
            header,
        })
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Method and class.
    pub fn message_type(&self) -> MessageType {
        self.header.message_type
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.header.message_type.method
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.header.message_type.class
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> &TransactionId {
        &self.header.transaction_id
    }

    /// All attribute TLVs in order, including ones a receiver must ignore.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            pos: HEADER_LEN,
        }
    }

    /// Walks every attribute once: checks that each TLV fits and that FINGERPRINT, if
    /// present, is last, and locates the integrity attributes.
    pub fn layout(&self) -> Result<Layout<'a>, StunError> {
        let mut layout = Layout {
            ignored_from: self.bytes.len(),
            ..Layout::default()
        };
        for item in self.attributes() {
            let a = item?;
            if layout.fingerprint.is_some() {
                return Err(StunError::FingerprintNotLast);
            }
            let protected = layout.integrity.is_some() || layout.integrity_sha256.is_some();
            match a.attr_type {
                attr::FINGERPRINT => layout.fingerprint = Some(a),
                attr::MESSAGE_INTEGRITY if !protected => {
                    layout.integrity = Some(a);
                    layout.ignored_from = a.end();
                }
                attr::MESSAGE_INTEGRITY_SHA256 if layout.integrity_sha256.is_none() => {
                    layout.integrity_sha256 = Some(a);
                    if !protected {
                        layout.ignored_from = a.end();
                    }
                }
                _ => {}
            }
        }
        Ok(layout)
    }

    /// The first significant attribute of type `attr_type`, decoded.
    /// `Ok(None)` if absent; errors if the message's TLVs are broken or the value is bad.
    pub fn get(&self, attr_type: u16) -> Result<Option<Attribute<'a>>, StunError> {
        let layout = self.layout()?;
        for item in self.attributes() {
            let a = item?;
            if a.attr_type == attr_type && layout.is_significant(&a) {
                return a.decode(self.transaction_id()).map(Some);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::header::MAGIC_COOKIE;

    /// Builds a message by hand (no builder) from raw TLVs.
    fn raw(tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in tlvs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0xEE);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn iterates_tlvs_and_skips_padding() {
        let m = raw(&[(0x8022, b"abcde"), (0x0024, &[0, 0, 0, 1]), (0x0025, b"")]);
        let msg = Message::parse(&m).expect("valid");
        let attrs: Vec<_> = msg
            .attributes()
            .collect::<Result<_, _>>()
            .expect("well-formed");
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[0].value, b"abcde");
        assert_eq!(attrs[0].offset, 20);
        assert_eq!(attrs[1].offset, 32);
        assert_eq!(attrs[2].attr_type, 0x0025);
        assert_eq!(attrs[2].end(), m.len());
        assert_eq!(
            msg.get(attr::SOFTWARE).expect("ok"),
            Some(Attribute::Software("abcde"))
        );
        assert_eq!(msg.get(attr::USERNAME).expect("ok"), None);
    }

    #[test]
    fn truncated_value_is_reported_once() {
        let mut m = raw(&[(0x8022, b"abcd")]);
        // Claim 8 bytes of value where only 4 exist.
        m[23] = 8;
        let msg = Message::parse(&m).expect("header is fine");
        let items: Vec<_> = msg.attributes().collect();
        assert_eq!(
            items,
            vec![Err(StunError::TruncatedAttribute { offset: 20 })]
        );
        assert_eq!(
            msg.layout(),
            Err(StunError::TruncatedAttribute { offset: 20 })
        );
    }

    #[test]
    fn fingerprint_must_be_last() {
        let m = raw(&[(attr::FINGERPRINT, &[0; 4]), (attr::SOFTWARE, b"x")]);
        let msg = Message::parse(&m).expect("header is fine");
        assert_eq!(msg.layout(), Err(StunError::FingerprintNotLast));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let m = raw(&[
            (attr::USERNAME, b"u"),
            (attr::MESSAGE_INTEGRITY, &[1; 20]),
            (attr::SOFTWARE, b"ignored"),
            (attr::MESSAGE_INTEGRITY_SHA256, &[2; 32]),
            (attr::MESSAGE_INTEGRITY, &[3; 20]),
            (attr::FINGERPRINT, &[0; 4]),
        ]);
        let msg = Message::parse(&m).expect("valid");
        let layout = msg.layout().expect("valid layout");
        assert_eq!(layout.integrity.map(|a| a.value), Some(&[1u8; 20][..]));
        assert_eq!(
            layout.integrity_sha256.map(|a| a.value),
            Some(&[2u8; 32][..])
        );
        assert!(layout.fingerprint.is_some());
        assert_eq!(msg.get(attr::SOFTWARE).expect("ok"), None);
        assert_eq!(
            msg.get(attr::USERNAME).expect("ok"),
            Some(Attribute::Username(b"u"))
        );
        let significant: Vec<u16> = msg
            .attributes()
            .filter_map(Result::ok)
            .filter(|a| layout.is_significant(a))
            .map(|a| a.attr_type)
            .collect();
        assert_eq!(
            significant,
            vec![
                attr::USERNAME,
                attr::MESSAGE_INTEGRITY,
                attr::MESSAGE_INTEGRITY_SHA256,
                attr::FINGERPRINT
            ]
        );
    }

    #[test]
    fn integrity_after_sha256_is_ignored() {
        let m = raw(&[
            (attr::MESSAGE_INTEGRITY_SHA256, &[2; 16]),
            (attr::MESSAGE_INTEGRITY, &[1; 20]),
        ]);
        let layout = Message::parse(&m).and_then(|m| m.layout()).expect("valid");
        assert!(layout.integrity.is_none());
        assert!(layout.integrity_sha256.is_some());
        assert_eq!(layout.ignored_from, 20 + 4 + 16);
    }
}
