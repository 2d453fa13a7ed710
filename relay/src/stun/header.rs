//! The fixed 20-byte STUN header (RFC 8489 §5): message type (method and class),
//! length, magic cookie and transaction id.
//!
//! Kept apart so the XDP helper, the fuzz target and the codec agree on one definition
//! of "looks like STUN".

use super::error::StunError;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 20;
/// The magic cookie, in network byte order in every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// The 96-bit transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

/// The message class, two bits spread over the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 0b00
    Request,
    /// 0b01
    Indication,
    /// 0b10
    SuccessResponse,
    /// 0b11
    ErrorResponse,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Class {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// A 12-bit STUN method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(u16);

impl Method {
    /// Binding (0x001).
    pub const BINDING: Method = Method(0x001);

    /// A method from its 12-bit number; `None` if it does not fit in 12 bits.
    pub const fn new(value: u16) -> Option<Method> {
        if value <= 0x0FFF {
            Some(Method(value))
        } else {
            None
        }
    }

    /// The method number.
    pub const fn value(self) -> u16 {
        self.0
    }
}

/// Method and class, as encoded in the first 16 bits of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// The method.
    pub method: Method,
    /// The class.
    pub class: Class,
}

impl MessageType {
    /// Binding request.
    pub const BINDING_REQUEST: MessageType = MessageType::new(Method::BINDING, Class::Request);
    /// Binding success response.
    pub const BINDING_SUCCESS: MessageType =
        MessageType::new(Method::BINDING, Class::SuccessResponse);
    /// Binding error response.
    pub const BINDING_ERROR: MessageType = MessageType::new(Method::BINDING, Class::ErrorResponse);

    /// Pairs a method and a class.
    pub const fn new(method: Method, class: Class) -> MessageType {
        MessageType { method, class }
    }

    /// Decodes the type field; the two top bits are ignored (the header check rejects them).
    pub const fn from_u16(value: u16) -> MessageType {
        // Bit layout (RFC 8489 §5): M11..M7 C1 M6..M4 C0 M3..M0.
        let method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2);
        let class = ((value >> 4) & 0b01) | ((value >> 7) & 0b10);
        MessageType {
            method: Method(method),
            class: Class::from_bits(class),
        }
    }

    /// Encodes the type field.
    pub const fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0FFF;
        let c = self.class.bits();
        (m & 0x000F)
            | ((m & 0x0070) << 1)
            | ((m & 0x0F80) << 2)
            | ((c & 0b01) << 4)
            | ((c & 0b10) << 7)
    }
}

/// A decoded, checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Method and class.
    pub message_type: MessageType,
    /// Length of the attributes, excluding the header.
    pub length: u16,
    /// The transaction id.
    pub transaction_id: TransactionId,
}

impl Header {
    /// Reads and checks the header of `datagram` as RFC 8489 §6.3 asks of a receiver:
    /// top two bits zero, magic cookie, length a multiple of 4 and equal to the bytes
    /// after the header. Anything that fails is "not STUN".
    pub fn parse(datagram: &[u8]) -> Result<Header, StunError> {
        let Some(head) = datagram.first_chunk::<HEADER_LEN>() else {
            return Err(StunError::TooShort(datagram.len()));
        };
        let raw_type = u16::from_be_bytes([head[0], head[1]]);
        if raw_type & 0xC000 != 0 {
            return Err(StunError::BadTopBits);
        }
        let cookie = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(StunError::BadMagicCookie(cookie));
        }
        let length = u16::from_be_bytes([head[2], head[3]]);
        if length % 4 != 0 {
            return Err(StunError::UnalignedLength(length));
        }
        let actual = datagram.len() - HEADER_LEN;
        if usize::from(length) != actual {
            return Err(StunError::LengthMismatch {
                header: length,
                actual,
            });
        }
        let mut id = [0u8; 12];
        id.copy_from_slice(&head[8..HEADER_LEN]);
        Ok(Header {
            message_type: MessageType::from_u16(raw_type),
            length,
            transaction_id: TransactionId(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_types_have_their_rfc_values() {
        assert_eq!(MessageType::BINDING_REQUEST.to_u16(), 0x0001);
        assert_eq!(MessageType::BINDING_SUCCESS.to_u16(), 0x0101);
        assert_eq!(MessageType::BINDING_ERROR.to_u16(), 0x0111);
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Indication).to_u16(),
            0x0011
        );
        // TURN Allocate (0x003) request/success, and a method using every bit.
        assert_eq!(MessageType::from_u16(0x0103).method.value(), 0x003);
        assert_eq!(MessageType::from_u16(0x0103).class, Class::SuccessResponse);
        let all = MessageType::new(Method(0x0FFF), Class::ErrorResponse);
        assert_eq!(all.to_u16(), 0x3FFF);
    }

    #[test]
    fn type_round_trips_for_every_method_and_class() {
        for m in 0..=0x0FFF_u16 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::SuccessResponse,
                Class::ErrorResponse,
            ] {
                let t = MessageType::new(Method(m), class);
                let v = t.to_u16();
                assert_eq!(v & 0xC000, 0);
                assert_eq!(MessageType::from_u16(v), t);
            }
        }
    }

    fn header(length: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
        h[2..4].copy_from_slice(&length.to_be_bytes());
        h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        h[8..20].copy_from_slice(&[7; 12]);
        h
    }

    #[test]
    fn header_checks_reject_what_is_not_stun() {
        let ok = header(0);
        let parsed = Header::parse(&ok).expect("valid header");
        assert_eq!(parsed.message_type, MessageType::BINDING_REQUEST);
        assert_eq!(parsed.transaction_id, TransactionId([7; 12]));

        assert_eq!(Header::parse(&ok[..19]), Err(StunError::TooShort(19)));
        let mut top = ok;
        top[0] = 0x40;
        assert_eq!(Header::parse(&top), Err(StunError::BadTopBits));
        let mut cookie = ok;
        cookie[4] = 0;
        assert!(matches!(
            Header::parse(&cookie),
            Err(StunError::BadMagicCookie(_))
        ));
        let unaligned = header(2);
        let mut buf = [0u8; 22];
        buf[..20].copy_from_slice(&unaligned);
        assert_eq!(Header::parse(&buf), Err(StunError::UnalignedLength(2)));
        let long = header(4);
        assert!(matches!(
            Header::parse(&long),
            Err(StunError::LengthMismatch {
                header: 4,
                actual: 0
            })
        ));
        // Trailing bytes beyond the length field are not accepted either.
        let mut trailing = [0u8; 24];
        trailing[..20].copy_from_slice(&ok);
        assert!(matches!(
            Header::parse(&trailing),
            Err(StunError::LengthMismatch {
                header: 0,
                actual: 4
            })
        ));
    }
}
