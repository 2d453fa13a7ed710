//! SRTP and SRTCP (RFC 3711, RFC 7714): protecting and unprotecting media in place, one
//! [`SrtpSession`] per direction of a DTLS-SRTP association.
//!
//! Why it exists: the SFU decrypts every incoming RTP/RTCP packet once and encrypts it once
//! per receiver, so this is the hottest code of the media path. It is sans-IO (bytes in,
//! bytes out, no clock, no socket) and allocation-free per packet: all per-SSRC state lives
//! in a fixed table created with the session.
//!
//! Layout: [`profile`] (the two DTLS-SRTP protection profiles we offer), [`keys`] (the
//! DTLS-SRTP keying-material split and the RFC 3711 key derivation), [`cipher`] (the
//! per-packet transforms of each profile), [`replay`] (the sliding replay window),
//! [`rtp_header`] (the minimal header parse SRTP needs), [`session`] (streams, index
//! estimation, replay and rollover bookkeeping around the transforms).

pub mod cipher;
pub mod keys;
pub mod profile;
pub mod replay;
pub mod rtp_header;
pub mod session;

#[cfg(test)]
mod tests;

pub use keys::{DTLS_SRTP_EXPORTER_LABEL, MasterKey, session_keys};
pub use profile::Profile;
pub use session::{MAX_SSRCS, SrtpSession};

/// Why a packet could not be protected or unprotected (or a session not set up).
///
/// Every error leaves the session's state as it was before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The packet is not a well-formed RTP/RTCP packet (version, header length, CSRCs,
    /// extension) or `len` exceeds the buffer.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is shorter than its header plus the SRTP trailer (index, tag).
    #[error("packet too short")]
    TooShort,
    /// The buffer has no room after the packet for the trailer (tag, SRTCP index).
    #[error("no room for the authentication tag: need {needed} bytes, buffer has {available}")]
    NoRoomForTag {
        /// Bytes the protected packet needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The authentication tag does not match: forged, corrupted, or wrong keys.
    #[error("authentication failed")]
    AuthFailed,
    /// This packet index was already received (RFC 3711 section 3.3.2).
    #[error("replayed packet")]
    Replayed,
    /// The packet index is behind the replay window: it can no longer be checked.
    #[error("packet too old for the replay window")]
    TooOld,
    /// The session already tracks [`MAX_SSRCS`] SSRCs.
    #[error("too many SSRCs in one SRTP session (at most {max})")]
    TooManySsrcs {
        /// The table's size.
        max: usize,
    },
    /// The sender's packet index space (48-bit SRTP, 31-bit SRTCP) is used up: the
    /// keys must be renegotiated before sending more under this SSRC.
    #[error("packet index exhausted: rekey needed")]
    IndexExhausted,
    /// The DTLS-SRTP keying material does not have the profile's length.
    #[error("keying material has {got} bytes, the profile needs {expected}")]
    KeyingMaterialLength {
        /// `Profile::keying_material_len()`.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The crypto library refused a key (cannot happen with the profiles' key lengths).
    #[error("crypto key setup failed")]
    KeySetup,
}
