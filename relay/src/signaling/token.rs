//! Join tokens: who may join which room until when, signed by the operator's secret.
//!
//! Format: `base64url(JSON claims) "." base64url(HMAC-SHA256(secret, first part))`,
//! both without padding. The application server that knows the secret issues them
//! (or `relay token`); the relay only verifies. Several secrets may be accepted at once
//! so a secret can be rotated without invalidating tokens already handed out.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Longest token accepted (checked before any decoding).
pub const MAX_TOKEN_LEN: usize = 1024;

/// Longest room name and identity (bytes).
pub const MAX_NAME_LEN: usize = 128;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Room the holder may join.
    pub room: String,
    /// Who the holder is (shown to the others, TURN username part).
    pub identity: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Peer-to-peer mode allowed (signaling only, with our STUN/TURN).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub p2p: bool,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not `claims.signature`, bad base64, bad JSON or bad claim values.
    #[error("malformed token")]
    BadFormat,
    /// No configured secret produced this signature.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// The token is for another room.
    #[error("token is for another room")]
    WrongRoom,
    /// No secret to sign or verify with (or an empty one).
    #[error("no signing secret configured")]
    NoSecret,
    /// Reading the secret failed (the message never contains the secret).
    #[error("reading the secret: {0}")]
    Secret(String),
    /// Claims that cannot be issued (empty or too long room/identity).
    #[error("bad claims: {0}")]
    BadClaims(&'static str),
}

fn mac(secret: &[u8], data: &[u8]) -> Result<[u8; 32], TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| TokenError::NoSecret)?;
    m.update(data);
    Ok(m.finalize().into_bytes().into())
}

fn check_claims(c: &Claims) -> Result<(), &'static str> {
    if c.room.is_empty() || c.room.len() > MAX_NAME_LEN {
        return Err("room must be 1-128 bytes");
    }
    if c.identity.is_empty() || c.identity.len() > MAX_NAME_LEN {
        return Err("identity must be 1-128 bytes");
    }
    if c.identity.contains(':') {
        // The TURN REST username is `expiry:identity`.
        return Err("identity must not contain ':'");
    }
    Ok(())
}

/// Signs claims with a secret.
pub fn sign(claims: &Claims, secret: &[u8]) -> Result<String, TokenError> {
    check_claims(claims).map_err(TokenError::BadClaims)?;
    let json = serde_json::to_vec(claims).map_err(|_| TokenError::BadFormat)?;
    let mut token = URL_SAFE_NO_PAD.encode(json);
    let sig = mac(secret, token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::BadClaims("token would be too long"));
    }
    Ok(token)
}

/// Verifies a token against any of `secrets` (current first, then ones being rotated
/// out), for joining `room` at unix time `now`.
pub fn verify<S: AsRef<[u8]>>(
    token: &str,
    secrets: &[S],
    room: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let (payload, sig) = token.split_once('.').ok_or(TokenError::BadFormat)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::BadFormat)?;
    if sig.len() != 32 {
        return Err(TokenError::BadFormat);
    }
    let mut any_secret = false;
    let mut ok = subtle::Choice::from(0);
    for s in secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
        any_secret = true;
        let expected = mac(s, payload.as_bytes())?;
        ok |= expected.as_slice().ct_eq(sig.as_slice());
    }
    if !any_secret {
        return Err(TokenError::NoSecret);
    }
    if !bool::from(ok) {
        return Err(TokenError::BadSignature);
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::BadFormat)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::BadFormat)?;
    check_claims(&claims).map_err(|_| TokenError::BadFormat)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.room != room {
        return Err(TokenError::WrongRoom);
    }
    Ok(claims)
}

/// Reads a secret from a file (trailing newline stripped) or an environment variable.
/// Errors name the source, never the secret.
pub fn read_secret(file: Option<&Path>, env: Option<&str>) -> Result<Vec<u8>, TokenError> {
    let mut secret = match (file, env) {
        (Some(path), None) => std::fs::read(path)
            .map_err(|e| TokenError::Secret(format!("{}: {e}", path.display())))?,
        (None, Some(var)) => std::env::var_os(var)
            .ok_or_else(|| TokenError::Secret(format!("environment variable {var} is not set")))?
            .into_encoded_bytes(),
        _ => {
            return Err(TokenError::Secret(
                "give exactly one of a secret file or a secret variable".into(),
            ));
        }
    };
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    Ok(secret)
}

/// What `relay token` does: reads the secret, signs claims valid for `ttl` seconds from
/// the current time, and returns the token (never the secret).
pub fn issue(
    secret_file: Option<&Path>,
    secret_env: Option<&str>,
    room: &str,
    identity: &str,
    ttl: u64,
    p2p: bool,
) -> Result<String, TokenError> {
    let secret = read_secret(secret_file, secret_env)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        room: room.to_owned(),
        identity: identity.to_owned(),
        exp: now.saturating_add(ttl),
        p2p,
    };
    sign(&claims, &secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    fn claims() -> Claims {
        Claims {
            room: "standup".into(),
            identity: "alice".into(),
            exp: 2_000,
            p2p: false,
        }
    }

    #[test]
    fn round_trip_and_format() {
        let t = sign(&claims(), SECRET).expect("sign");
        let (payload, sig) = t.split_once('.').expect("two parts");
        let json = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
        assert_eq!(
            std::str::from_utf8(&json).expect("utf8"),
            r#"{"room":"standup","identity":"alice","exp":2000}"#
        );
        // The signature is HMAC-SHA256 over the encoded first part.
        let expected = mac(SECRET, payload.as_bytes()).expect("mac");
        assert_eq!(URL_SAFE_NO_PAD.decode(sig).expect("b64"), expected);
        assert_eq!(verify(&t, &[SECRET], "standup", 1_999), Ok(claims()));
        let p2p = Claims {
            p2p: true,
            ..claims()
        };
        let t = sign(&p2p, SECRET).expect("sign");
        assert_eq!(verify(&t, &[SECRET], "standup", 0), Ok(p2p));
    }

    #[test]
    fn expiry_and_room() {
        let t = sign(&claims(), SECRET).expect("sign");
        assert_eq!(
            verify(&t, &[SECRET], "standup", 2_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&t, &[SECRET], "standup", 5_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&t, &[SECRET], "other", 0),
            Err(TokenError::WrongRoom)
        );
    }

    #[test]
    fn tampering_is_caught() {
        let t = sign(&claims(), SECRET).expect("sign");
        let (payload, sig) = t.split_once('.').expect("two parts");
        // Claims changed (a later expiry), old signature kept.
        let forged =
            URL_SAFE_NO_PAD.encode(r#"{"room":"standup","identity":"alice","exp":9999999}"#);
        assert_eq!(
            verify(&format!("{forged}.{sig}"), &[SECRET], "standup", 0),
            Err(TokenError::BadSignature)
        );
        // Every single-character change of the signature part.
        for i in 0..sig.len() {
            let mut s = sig.as_bytes().to_vec();
            s[i] = if s[i] == b'A' { b'B' } else { b'A' };
            let t2 = format!("{payload}.{}", String::from_utf8(s).expect("ascii"));
            assert!(verify(&t2, &[SECRET], "standup", 0).is_err(), "{t2}");
        }
        assert_eq!(
            verify(&t, &[b"wrong".as_slice()], "standup", 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify("no-dot", &[SECRET], "standup", 0),
            Err(TokenError::BadFormat)
        );
        assert_eq!(
            verify(&format!("{payload}.!!"), &[SECRET], "standup", 0),
            Err(TokenError::BadFormat)
        );
        assert_eq!(
            verify(&format!("{payload}.AAAA"), &[SECRET], "standup", 0),
            Err(TokenError::BadFormat)
        );
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            verify(&long, &[SECRET], "standup", 0),
            Err(TokenError::TooLong)
        );
        let none: [&[u8]; 0] = [];
        assert_eq!(verify(&t, &none, "standup", 0), Err(TokenError::NoSecret));
        // Signed garbage claims: right signature, unusable JSON.
        let junk = URL_SAFE_NO_PAD.encode(r#"{"room":"standup"}"#);
        let sig = URL_SAFE_NO_PAD.encode(mac(SECRET, junk.as_bytes()).expect("mac"));
        assert_eq!(
            verify(&format!("{junk}.{sig}"), &[SECRET], "standup", 0),
            Err(TokenError::BadFormat)
        );
    }

    #[test]
    fn rotation_accepts_old_and_new() {
        let old = sign(&claims(), b"old secret").expect("sign");
        let new = sign(&claims(), b"new secret").expect("sign");
        let both: [&[u8]; 2] = [b"new secret", b"old secret"];
        assert!(verify(&old, &both, "standup", 0).is_ok());
        assert!(verify(&new, &both, "standup", 0).is_ok());
        assert_eq!(
            verify(&old, &both[..1], "standup", 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn bad_claims_are_not_signed() {
        let empty = Claims {
            room: String::new(),
            ..claims()
        };
        assert!(matches!(
            sign(&empty, SECRET),
            Err(TokenError::BadClaims(_))
        ));
        let colon = Claims {
            identity: "a:b".into(),
            ..claims()
        };
        assert!(matches!(
            sign(&colon, SECRET),
            Err(TokenError::BadClaims(_))
        ));
        assert_eq!(sign(&claims(), b""), Err(TokenError::NoSecret));
    }

    #[test]
    fn secret_sources() {
        let dir = std::env::temp_dir().join(format!("relay-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("secret");
        std::fs::write(&f, b"s3cret\n").expect("write");
        assert_eq!(read_secret(Some(&f), None), Ok(b"s3cret".to_vec()));
        let t = issue(Some(&f), None, "r", "bob", 60, true).expect("issue");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let c = verify(&t, &[b"s3cret"], "r", now).expect("valid");
        assert!(c.p2p && c.exp > now && c.exp <= now + 60);
        let missing = dir.join("missing");
        let e = read_secret(Some(&missing), None).expect_err("missing file");
        assert!(!e.to_string().contains("s3cret"));
        assert!(read_secret(None, Some("RELAY_TEST_SURELY_UNSET_VAR")).is_err());
        assert!(read_secret(None, None).is_err());
        std::fs::write(&f, b"\n").expect("write");
        assert_eq!(read_secret(Some(&f), None), Err(TokenError::NoSecret));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
