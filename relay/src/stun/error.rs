//! Why a STUN message could not be read or written.
//!
//! One small, `Copy` error type for the whole codec so the data path can match on it
//! without allocating; the binding service maps it to a drop reason or a 400.

/// Everything that can go wrong while reading, writing or authenticating a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Fewer bytes than the fixed 20-byte header.
    #[error("{0} bytes is shorter than the 20-byte STUN header")]
    TooShort(usize),
    /// The two most significant bits of the first byte are not zero (RFC 8489 §5).
    #[error("the two most significant bits of the message type are not zero")]
    BadTopBits,
    /// The magic cookie is not 0x2112A442.
    #[error("magic cookie {0:#010x} is not 0x2112a442")]
    BadMagicCookie(u32),
    /// The header's length field is not a multiple of 4.
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
    /// The header's length field disagrees with the datagram.
    #[error("message length field says {header} bytes but {actual} follow the header")]
    LengthMismatch {
        /// Value of the length field.
        header: u16,
        /// Bytes actually present after the header.
        actual: usize,
    },
    /// An attribute header or value runs past the end of the message.
    #[error("attribute at offset {offset} runs past the end of the message")]
    TruncatedAttribute {
        /// Offset of the attribute's type field from the start of the message.
        offset: usize,
    },
    /// An attribute we understand carries a value that breaks its definition.
    #[error("attribute {attr_type:#06x} is malformed: {what}")]
    InvalidAttribute {
        /// The attribute's type.
        attr_type: u16,
        /// What is wrong, in a few words.
        what: &'static str,
    },
    /// FINGERPRINT is followed by another attribute (it must be last, RFC 8489 §14.7).
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    /// The message has no FINGERPRINT attribute.
    #[error("no FINGERPRINT attribute")]
    MissingFingerprint,
    /// The FINGERPRINT value does not match the message.
    #[error("FINGERPRINT does not match the message")]
    FingerprintMismatch,
    /// The message has no MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256) attribute.
    #[error("no MESSAGE-INTEGRITY attribute")]
    MissingIntegrity,
    /// The MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256) value does not match.
    #[error("MESSAGE-INTEGRITY does not match")]
    IntegrityMismatch,
    /// The HMAC implementation refused the key (cannot happen with HMAC; kept typed).
    #[error("the integrity key was refused")]
    InvalidKey,
    /// The caller's output buffer cannot hold the message being written.
    #[error("output buffer too small for the STUN message")]
    BufferTooSmall,
    /// A value is too long for its attribute or for the 16-bit length fields.
    #[error("value of {0} bytes is too long for a STUN attribute")]
    ValueTooLong(usize),
}
