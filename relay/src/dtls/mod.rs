//! DTLS 1.2 with the use_srtp extension (RFC 6347, RFC 5764) for the SFU's per-participant
//! WebRTC endpoint: the handshake that authenticates the browser by the certificate
//! fingerprint of its SDP and yields the SRTP profile and keying material for
//! [`crate::srtp`].
//!
//! Why it exists, and why OpenSSL: DTLS is security-critical and full of corner cases
//! (fragmentation, reordering, retransmission, replay windows, alerts); OpenSSL's DTLS is
//! the mature implementation SFUs such as mediasoup and Janus rely on, so this module is a
//! thin sans-IO wrapper around it rather than a protocol implementation of its own.
//!
//! Sans-IO: datagrams in ([`DtlsEndpoint::handle_datagram`]), datagrams out
//! ([`DtlsEndpoint::poll_transmit`]), events out ([`DtlsEndpoint::poll_event`]). OpenSSL runs
//! over an in-memory datagram queue ([`queue`]), never a socket.
//!
//! Time: OpenSSL's DTLS retransmission timer reads the system clock (it cannot be driven by
//! an injected clock). [`DtlsEndpoint::poll_timeout`] turns OpenSSL's remaining time into an
//! `Instant` anchored at the last `now` the caller passed, and
//! [`DtlsEndpoint::handle_timeout`] calls `DTLSv1_handle_timeout`, which retransmits only
//! once OpenSSL's own timer has expired. Callers must therefore pass real
//! `Instant::now()` values; retransmission starts at 1 s and doubles (OpenSSL's schedule),
//! and the handshake fails after 12 timeouts.
//!
//! No cookie exchange (HelloVerifyRequest): it protects a server against spoofed
//! ClientHellos, but here the browser's address has already passed ICE connectivity checks
//! with short-term credentials before any DTLS datagram is accepted from it, and the extra
//! round trip would only slow every join. Likewise, a forged but well-formed handshake
//! record from that address can end a handshake in progress (OpenSSL answers a malformed
//! handshake message with a fatal alert); datagrams that are not DTLS at all are dropped.
//!
//! Layout: [`certificate`] (the relay's self-signed ECDSA certificate, its fingerprint and
//! the shared OpenSSL context), [`queue`] (the in-memory datagram BIO), [`timer`] (the
//! DTLS timer controls OpenSSL exposes only as `SSL_ctrl` macros), [`endpoint`] (the
//! per-connection state machine).

pub mod certificate;
pub mod endpoint;
pub mod queue;
pub mod timer;

#[cfg(test)]
mod tests;

pub use certificate::{Certificate, format_fingerprint};
pub use endpoint::{DtlsEndpoint, DtlsEvent, KeyingMaterial, Role};

/// The use_srtp profiles we offer, most preferred first (RFC 7714 AEAD_AES_128_GCM, then
/// RFC 5764 AES128_CM_HMAC_SHA1_80, which every browser supports).
pub const SRTP_PROFILES: &str = "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80";

/// Ciphersuites: ECDHE key exchange with AEAD (or, last, CBC) ciphers. Our own certificate
/// is ECDSA; the RSA suites serve a peer acting as DTLS server with an RSA certificate.
pub const CIPHER_LIST: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA";

/// The path MTU we assume for DTLS records (a conservative WebRTC value that fits inside
/// IPv6 + UDP + TURN ChannelData headers on a 1280-byte path).
pub const MTU: u32 = 1200;

/// Why a DTLS endpoint could not be set up or its handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// OpenSSL refused a setting or an operation (message from its error stack).
    #[error("openssl: {0}")]
    OpenSsl(String),
    /// The peer's certificate is not the one its SDP announced.
    #[error(
        "peer certificate fingerprint {} does not match the expected (SDP) fingerprint {}",
        format_fingerprint(.received),
        format_fingerprint(.expected)
    )]
    FingerprintMismatch {
        /// The SHA-256 fingerprint from the SDP.
        expected: [u8; 32],
        /// The SHA-256 fingerprint of the certificate the peer presented.
        received: [u8; 32],
    },
    /// The handshake completed without a peer certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer did not negotiate use_srtp (or none of our profiles).
    #[error("no SRTP protection profile was negotiated")]
    NoSrtpProfile,
    /// The negotiated SRTP profile is not one [`crate::srtp`] supports.
    #[error("negotiated SRTP profile {0:#06x} is not supported")]
    UnsupportedSrtpProfile(u16),
    /// The handshake failed (alert received or sent, protocol error).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer did not answer after every retransmission.
    #[error("handshake timed out")]
    Timeout,
    /// Application data was given before the handshake completed, or after it ended.
    #[error("the DTLS connection is not established")]
    NotConnected,
}

impl From<openssl::error::ErrorStack> for DtlsError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        DtlsError::OpenSsl(e.to_string())
    }
}
