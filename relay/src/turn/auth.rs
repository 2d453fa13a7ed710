//! Long-term credentials (RFC 8489 §9.2) for TURN, with the coturn-compatible
//! shared-secret ("REST", use-auth-secret) usernames.
//!
//! - Key: MD5(username ":" realm ":" password) by default; SHA-256 of the same string when
//!   the client chose PASSWORD-ALGORITHM SHA-256 (RFC 8489 §18.5.1). Either key can sign
//!   MESSAGE-INTEGRITY (HMAC-SHA1) or MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256); when a
//!   request carries MESSAGE-INTEGRITY-SHA256 we verify that one and answer with it.
//! - USERHASH = SHA-256(username ":" realm) may replace USERNAME (static users only: a
//!   REST username embeds its expiry and cannot be recovered from a hash).
//! - REST usernames are `expiry:user` with expiry in unix seconds; the password is
//!   base64(HMAC-SHA1(secret, username)). Several secrets are tried in order so an
//!   operator can rotate them without cutting clients off.
//! - Tags and userhashes are compared in constant time (`hmac`'s verify, `subtle`).
//! - Failed authentications (unknown user, wrong password, expired credentials) cost the
//!   source IP a token; a source out of tokens has its authenticated requests dropped
//!   unanswered. The table of sources is bounded (oldest evicted first). The first,
//!   credential-less request of every transaction is not a failure and costs nothing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::stats::AuthFailure;
use crate::stun::attr::{self, Attribute};
use crate::stun::integrity::{verify_message_integrity, verify_message_integrity_sha256};
use crate::stun::message::Message;

/// Users, shared secrets and the realm. Swapped as a whole on reload through
/// [`super::Shared::set_credentials`].
#[derive(Clone, Default)]
pub struct Credentials {
    /// REALM of every challenge and of the key derivation.
    pub realm: String,
    /// Static users: name → password.
    pub users: HashMap<String, String>,
    /// Shared secrets for `expiry:user` usernames, tried in order.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// PASSWORD-ALGORITHM values (RFC 8489 §18.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PasswordAlgorithm {
    /// 0x0001: MD5 (the RFC 5389 key).
    Md5,
    /// 0x0002: SHA-256.
    Sha256,
}

impl PasswordAlgorithm {
    /// IANA code.
    pub const fn code(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 1,
            PasswordAlgorithm::Sha256 => 2,
        }
    }
}

/// PASSWORD-ALGORITHMS value we offer: SHA-256 first (preferred), then MD5, neither with
/// parameters.
pub const PASSWORD_ALGORITHMS_VALUE: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];

/// A long-term key.
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    /// MD5 key (16 bytes).
    Md5([u8; 16]),
    /// SHA-256 key (32 bytes).
    Sha256([u8; 32]),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The key bytes for HMAC.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }
}

/// The long-term key for `username`, `realm`, `password` with `alg` (RFC 8489 §9.2.2).
/// The strings are used as given (no SASLprep: ASCII credentials are the norm and
/// coturn does the same).
pub fn long_term_key(alg: PasswordAlgorithm, username: &[u8], realm: &[u8], pw: &[u8]) -> Key {
    match alg {
        PasswordAlgorithm::Md5 => {
            let mut h = Md5::new();
            h.update(username);
            h.update(b":");
            h.update(realm);
            h.update(b":");
            h.update(pw);
            Key::Md5(h.finalize().into())
        }
        PasswordAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            h.update(username);
            h.update(b":");
            h.update(realm);
            h.update(b":");
            h.update(pw);
            Key::Sha256(h.finalize().into())
        }
    }
}

/// USERHASH of `username` in `realm`: SHA-256(username ":" realm) (RFC 8489 §14.4).
pub fn userhash(username: &[u8], realm: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username);
    h.update(b":");
    h.update(realm);
    h.finalize().into()
}

/// Password of a REST username under `secret`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let Ok(mut m) = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    m.update(username.as_bytes());
    STANDARD.encode(m.finalize().into_bytes())
}

/// Expiry of a REST username `expiry:user` (`None` if it does not have that shape).
pub fn rest_expiry(username: &str) -> Option<u64> {
    let (expiry, user) = username.split_once(':')?;
    if user.is_empty() || expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    expiry.parse().ok()
}

/// The user part of a username (after `expiry:` for REST usernames), for quotas and kick.
pub fn user_part(username: &str) -> &str {
    match rest_expiry(username) {
        Some(_) => username.split_once(':').map_or(username, |(_, u)| u),
        None => username,
    }
}

impl Credentials {
    /// Candidate passwords of `username` at unix second `now`: the static password, or one
    /// per shared secret for a REST username.
    pub fn passwords(&self, username: &str, now: u64) -> Result<Vec<String>, AuthFailure> {
        if let Some(pw) = self.users.get(username) {
            return Ok(vec![pw.clone()]);
        }
        if self.secrets.is_empty() {
            return Err(AuthFailure::UnknownUser);
        }
        let Some(expiry) = rest_expiry(username) else {
            return Err(AuthFailure::UnknownUser);
        };
        if expiry <= now {
            return Err(AuthFailure::ExpiredCredentials);
        }
        Ok(self
            .secrets
            .iter()
            .map(|s| rest_password(s, username))
            .collect())
    }
}

/// A request that authenticated.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The username (recovered from USERHASH if that was used).
    pub username: String,
    /// The key that verified; answers are signed with it.
    pub key: Key,
    /// Whether the request used MESSAGE-INTEGRITY-SHA256 (answer with it too).
    pub sha256: bool,
}

/// Outcome of [`Authenticator::check`].
#[derive(Debug)]
pub enum AuthResult {
    /// Verified.
    Ok(Authenticated),
    /// Answer 401 with REALM and NONCE (no integrity).
    Unauthorized(AuthFailure),
    /// Answer 438 with REALM and a fresh NONCE.
    StaleNonce,
    /// Answer 400 (missing or malformed authentication attributes).
    BadRequest,
    /// Send nothing (rate limited).
    Drop,
}

/// USERHASH → username for one credentials snapshot.
type HashIndex = (Arc<Credentials>, HashMap<[u8; 32], String>);

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Per-worker authentication state: the failed-authentication limiter and the USERHASH
/// index of the current credentials.
#[derive(Debug)]
pub struct Authenticator {
    rate: f64,
    burst: f64,
    cap: usize,
    buckets: HashMap<IpAddr, Bucket>,
    order: VecDeque<IpAddr>,
    hash_index: Option<HashIndex>,
}

impl Authenticator {
    /// A limiter allowing `per_sec` failures per second per source with bursts of `burst`,
    /// tracking at most `cap` sources.
    pub fn new(per_sec: u32, burst: u32, cap: usize) -> Self {
        Authenticator {
            rate: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            cap: cap.max(1),
            buckets: HashMap::new(),
            order: VecDeque::new(),
            hash_index: None,
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.burst);
        b.last = now;
    }

    /// Whether `ip` may still attempt authentication.
    pub fn allowed(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(mut b) = self.buckets.get(&ip).copied() else {
            return true;
        };
        self.refill(&mut b, now);
        self.buckets.insert(ip, b);
        b.tokens >= 1.0
    }

    /// Charges one failed authentication to `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if let Some(mut b) = self.buckets.get(&ip).copied() {
            self.refill(&mut b, now);
            b.tokens = (b.tokens - 1.0).max(0.0);
            self.buckets.insert(ip, b);
            return;
        }
        while self.buckets.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.buckets.remove(&old);
                }
                None => break,
            }
        }
        self.buckets.insert(
            ip,
            Bucket {
                tokens: self.burst - 1.0,
                last: now,
            },
        );
        self.order.push_back(ip);
    }

    /// Sources currently tracked (tests, metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn username_of_hash(&mut self, creds: &Arc<Credentials>, hash: &[u8]) -> Option<String> {
        let fresh = matches!(&self.hash_index, Some((c, _)) if Arc::ptr_eq(c, creds));
        if !fresh {
            let idx = creds
                .users
                .keys()
                .map(|u| (userhash(u.as_bytes(), creds.realm.as_bytes()), u.clone()))
                .collect();
            self.hash_index = Some((Arc::clone(creds), idx));
        }
        let (_, idx) = self.hash_index.as_ref()?;
        // Constant-time over every entry: no early exit on the first match.
        let mut found: Option<&String> = None;
        for (h, u) in idx {
            if bool::from(h[..].ct_eq(hash)) {
                found = Some(u);
            }
        }
        found.cloned()
    }

    /// Authenticates `msg` from `ip` (RFC 8489 §9.2.4 order). `wall` is unix seconds.
    pub fn check(
        &mut self,
        msg: &Message<'_>,
        creds: &Arc<Credentials>,
        nonce_key: &super::nonce::NonceKey,
        ip: IpAddr,
        now: Instant,
        wall: u64,
    ) -> AuthResult {
        let Ok(layout) = msg.layout() else {
            return AuthResult::BadRequest;
        };
        if layout.integrity.is_none() && layout.integrity_sha256.is_none() {
            return AuthResult::Unauthorized(AuthFailure::MissingCredentials);
        }
        let mut username: Option<&[u8]> = None;
        let mut hash: Option<&[u8]> = None;
        let mut realm: Option<&[u8]> = None;
        let mut nonce: Option<&[u8]> = None;
        let mut algorithm: Option<&[u8]> = None;
        let mut algorithms: Option<&[u8]> = None;
        for a in msg.attributes() {
            let Ok(a) = a else {
                return AuthResult::BadRequest;
            };
            if !layout.is_significant(&a) {
                continue;
            }
            match a.decode(msg.transaction_id()) {
                Ok(Attribute::Username(u)) => username = Some(u),
                Ok(Attribute::Userhash(h)) => hash = Some(h),
                Ok(Attribute::Realm(r)) => realm = Some(r),
                Ok(Attribute::Nonce(n)) => nonce = Some(n),
                Ok(Attribute::PasswordAlgorithm(p)) => algorithm = Some(p),
                Ok(Attribute::PasswordAlgorithms(p)) => algorithms = Some(p),
                Ok(_) => {}
                Err(_) if a.attr_type == attr::USERNAME || a.attr_type == attr::USERHASH => {
                    return AuthResult::BadRequest;
                }
                Err(_) => {}
            }
        }
        let (Some(_realm), Some(nonce)) = (realm, nonce) else {
            return AuthResult::BadRequest;
        };
        if username.is_none() && hash.is_none() {
            return AuthResult::BadRequest;
        }
        if !self.allowed(ip, now) {
            return AuthResult::Drop;
        }
        // Bid-down protection (RFC 8489 §9.2.4): our nonces always carry the
        // password-algorithms bit.
        let alg = match (algorithm, algorithms) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(one), Some(list)) => {
                if list != PASSWORD_ALGORITHMS_VALUE {
                    return AuthResult::BadRequest;
                }
                match one {
                    [0, 1, 0, 0] => PasswordAlgorithm::Md5,
                    [0, 2, 0, 0] => PasswordAlgorithm::Sha256,
                    _ => return AuthResult::BadRequest,
                }
            }
            _ => return AuthResult::BadRequest,
        };
        match nonce_key.check(nonce, ip, wall) {
            super::nonce::NonceCheck::Valid => {}
            _ => return AuthResult::StaleNonce,
        }
        let name: String = match (username, hash) {
            (Some(u), _) => match std::str::from_utf8(u) {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    self.failed(ip, now);
                    return AuthResult::Unauthorized(AuthFailure::UnknownUser);
                }
            },
            (None, Some(h)) => match self.username_of_hash(creds, h) {
                Some(u) => u,
                None => {
                    self.failed(ip, now);
                    return AuthResult::Unauthorized(AuthFailure::UnknownUser);
                }
            },
            (None, None) => return AuthResult::BadRequest,
        };
        let passwords = match creds.passwords(&name, wall) {
            Ok(p) => p,
            Err(why) => {
                self.failed(ip, now);
                return AuthResult::Unauthorized(why);
            }
        };
        let sha256 = layout.integrity_sha256.is_some();
        for pw in &passwords {
            let key = long_term_key(alg, name.as_bytes(), creds.realm.as_bytes(), pw.as_bytes());
            let ok = if sha256 {
                verify_message_integrity_sha256(msg, key.as_bytes()).is_ok()
            } else {
                verify_message_integrity(msg, key.as_bytes()).is_ok()
            };
            if ok {
                return AuthResult::Ok(Authenticated {
                    username: name,
                    key,
                    sha256,
                });
            }
        }
        self.failed(ip, now);
        AuthResult::Unauthorized(AuthFailure::BadIntegrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc8489_keys_and_userhash() {
        // Known answers from `sha256sum`, `md5sum` and `openssl dgst -sha1 -hmac`.
        let h = userhash(b"user", b"realm");
        assert_eq!(h[..4], [0x6a, 0x30, 0x29, 0x11]);
        assert_eq!(h[28..], [0xe6, 0x24, 0xe2, 0xda]);
        let md5 = long_term_key(PasswordAlgorithm::Md5, b"user", b"realm", b"pass");
        assert_eq!(md5.as_bytes()[..4], [0x84, 0x93, 0xfb, 0xc5]);
        assert_eq!(
            rest_password("secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
        let md5 = long_term_key(PasswordAlgorithm::Md5, b"user", b"realm", b"pass");
        let expect: [u8; 16] = Md5::digest(b"user:realm:pass").into();
        assert_eq!(md5.as_bytes(), &expect);
        let sha = long_term_key(PasswordAlgorithm::Sha256, b"user", b"realm", b"pass");
        assert_eq!(sha.as_bytes().len(), 32);
    }

    #[test]
    fn rest_passwords_and_rotation() {
        let creds = Credentials {
            realm: "r".into(),
            users: HashMap::from([("alice".to_owned(), "pw".to_owned())]),
            secrets: vec!["new".into(), "old".into()],
        };
        assert_eq!(creds.passwords("alice", 0), Ok(vec!["pw".to_owned()]));
        assert_eq!(
            creds.passwords("bob", 0),
            Err(AuthFailure::UnknownUser),
            "not a REST username"
        );
        assert_eq!(
            creds.passwords("100:bob", 100),
            Err(AuthFailure::ExpiredCredentials)
        );
        let p = creds.passwords("101:bob", 100).expect("valid");
        assert_eq!(
            p,
            vec![
                rest_password("new", "101:bob"),
                rest_password("old", "101:bob")
            ]
        );
        assert_eq!(user_part("101:bob"), "bob");
        assert_eq!(user_part("alice"), "alice");
        assert_eq!(rest_expiry("a:b"), None);
        assert_eq!(rest_expiry(":b"), None);
        assert_eq!(rest_expiry("5:"), None);
    }

    #[test]
    fn limiter_is_bounded_and_refills() {
        let t0 = Instant::now();
        let mut a = Authenticator::new(1, 2, 3);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(a.allowed(ip, t0));
        a.failed(ip, t0);
        assert!(a.allowed(ip, t0));
        a.failed(ip, t0);
        assert!(!a.allowed(ip, t0));
        assert!(a.allowed(ip, t0 + Duration::from_secs(1)));
        for i in 0..10u8 {
            a.failed(IpAddr::from([10, 0, 0, i]), t0);
        }
        assert!(a.tracked() <= 3);
    }
}
