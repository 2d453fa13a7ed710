//! Why the ICE-lite agent dropped a datagram or refused a setting.
//!
//! A `Copy` error so the data path can count drop reasons without allocating. An answer
//! the agent sends (success or STUN error response) is not an error: see
//! [`super::Reply`].

use crate::stun::StunError;

/// Everything that makes the agent drop a datagram (nothing is sent back) or refuse a
/// credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    /// Not a STUN message (header checks failed): on a multiplexed port this is DTLS,
    /// RTP or garbage, and belongs to someone else.
    #[error("not a STUN message: {0}")]
    NotStun(StunError),
    /// A STUN message whose attributes are broken (truncated TLV, FINGERPRINT not last,
    /// a value that breaks its attribute's definition).
    #[error("malformed STUN message: {0}")]
    Malformed(StunError),
    /// No FINGERPRINT: ICE requires it on every check (RFC 8445 §7.2.2), and without it a
    /// datagram on a multiplexed port cannot be trusted to be STUN.
    #[error("connectivity check without FINGERPRINT")]
    MissingFingerprint,
    /// FINGERPRINT present but wrong.
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
    /// An indication or a response: a lite agent sends no requests, so it expects no
    /// responses, and Binding indications (keepalives) need no answer.
    #[error("not a STUN request")]
    NotARequest,
    /// A request for another method than Binding.
    #[error("not a Binding request")]
    NotBinding,
    /// The answer does not fit in the caller's output buffer.
    #[error("output buffer too small for the answer")]
    BufferTooSmall,
    /// A ufrag or password breaks RFC 8839 §5.4 (ice-char set, length).
    #[error("invalid ICE credential: {0}")]
    BadCredential(&'static str),
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}
