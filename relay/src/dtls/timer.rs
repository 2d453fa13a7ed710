//! OpenSSL's DTLS retransmission timer, which its headers expose only as `SSL_ctrl`
//! macros (`DTLSv1_get_timeout`, `DTLSv1_handle_timeout`) that the Rust bindings lack.
//!
//! The timer runs on the system clock inside OpenSSL; see the module docs of
//! [`super`] for how the endpoint maps it onto the caller's `Instant`s.

use std::ptr;
use std::time::Duration;

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

/// `DTLS_CTRL_GET_TIMEOUT` from OpenSSL's `dtls1.h`.
const DTLS_CTRL_GET_TIMEOUT: libc::c_int = 73;
/// `DTLS_CTRL_HANDLE_TIMEOUT` from OpenSSL's `dtls1.h`.
const DTLS_CTRL_HANDLE_TIMEOUT: libc::c_int = 74;

/// Time left until OpenSSL's retransmission timer fires, or `None` when no timer runs
/// (nothing awaits an answer).
pub fn remaining(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl` is a live SSL object (borrowed for the call); DTLS_CTRL_GET_TIMEOUT
    // writes one `struct timeval` through `parg`, which points at our local `tv`.
    let running = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            (&raw mut tv).cast::<libc::c_void>(),
        )
    };
    if running != 1 {
        return None;
    }
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0).min(999_999);
    Some(Duration::from_secs(secs) + Duration::from_micros(u64::from(micros)))
}

/// What `DTLSv1_handle_timeout` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutOutcome {
    /// The timer had not expired (or none runs): nothing done.
    NotExpired,
    /// The last flight was retransmitted (datagrams are queued).
    Retransmitted,
    /// Too many timeouts: the handshake has failed.
    GaveUp,
}

/// Lets OpenSSL retransmit if its timer has expired.
pub fn handle(ssl: &SslRef) -> TimeoutOutcome {
    // SAFETY: `ssl` is a live SSL object; DTLS_CTRL_HANDLE_TIMEOUT takes no argument
    // pointer. OpenSSL writes retransmitted datagrams to the SSL's BIO, which the caller
    // owns through the `SslStream` that `ssl` was borrowed from.
    let r = unsafe {
        openssl_sys::SSL_ctrl(ssl.as_ptr(), DTLS_CTRL_HANDLE_TIMEOUT, 0, ptr::null_mut())
    };
    match r {
        0 => TimeoutOutcome::NotExpired,
        r if r > 0 => TimeoutOutcome::Retransmitted,
        _ => TimeoutOutcome::GaveUp,
    }
}
