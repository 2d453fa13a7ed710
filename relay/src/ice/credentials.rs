//! ICE credentials: fresh random ufrag/password for our SDP, and the RFC 8839 §5.4
//! syntax check applied to ours and the browser's.

use ring::rand::{SecureRandom, SystemRandom};

use super::error::IceError;

/// The ice-char set (RFC 8839 §5.4: ALPHA / DIGIT / "+" / "/"): 64 characters, so a
/// random byte masked to 6 bits picks one without bias.
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Length of a generated ufrag (24 bits of randomness suffice to tell sessions apart,
/// RFC 8445 §5.3; 8 characters give 48).
pub const UFRAG_LEN: usize = 8;
/// Length of a generated password (at least 128 bits of randomness, RFC 8445 §5.3; 24
/// characters give 144).
pub const PWD_LEN: usize = 24;
/// Longest ufrag or password RFC 8839 allows.
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// A ufrag and password pair, for `a=ice-ufrag` and `a=ice-pwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `a=ice-ufrag`
    pub ufrag: String,
    /// `a=ice-pwd`
    pub pwd: String,
}

/// Fresh credentials from the operating system's random generator.
pub fn random_credentials() -> Result<Credentials, IceError> {
    let rng = SystemRandom::new();
    Ok(Credentials {
        ufrag: random_ice_string::<UFRAG_LEN>(&rng)?,
        pwd: random_ice_string::<PWD_LEN>(&rng)?,
    })
}

fn random_ice_string<const N: usize>(rng: &SystemRandom) -> Result<String, IceError> {
    let mut bytes = [0u8; N];
    rng.fill(&mut bytes).map_err(|_| IceError::Random)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ICE_CHARS[usize::from(b & 0x3F)]))
        .collect())
}

/// Whether `c` is an ice-char.
pub fn is_ice_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/'
}

/// Checks `value` is `min..=256` ice-chars; `what` names it in the error.
pub(crate) fn check_credential(
    value: &str,
    min: usize,
    what: &'static str,
) -> Result<(), IceError> {
    if !(min..=MAX_CREDENTIAL_LEN).contains(&value.len()) {
        return Err(IceError::BadCredential(what));
    }
    if !value.bytes().all(is_ice_char) {
        return Err(IceError::BadCredential(what));
    }
    Ok(())
}
