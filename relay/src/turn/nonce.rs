//! Stateless nonces: the server keeps no per-client state between the 401 challenge and
//! the authenticated request. A nonce carries its own expiry and a MAC, keyed by a
//! per-process random key, over that expiry and the client's IP:
//!
//! `obMatJos2` + base64(24-bit security features) + base64url(expiry_u32 ‖ mac[..8])
//!
//! The prefix is RFC 8489 §9.2's nonce cookie; the feature bits say we support password
//! algorithms (bit 0) and username anonymity (USERHASH, bit 1), which lets RFC 8489
//! clients use SHA-256 keys while RFC 5389 clients treat the nonce as opaque. A nonce
//! replayed from another IP, forged, or past its expiry is stale (438 with a fresh one).
//! 29 bytes keep the 401 challenge small (see the amplification rule in [`super`]).

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// RFC 8489 §9.2 nonce cookie prefix.
pub const COOKIE: &[u8; 9] = b"obMatJos2";
/// base64 of the security feature set 0xC00000: password algorithms + username anonymity.
pub const FEATURES: &[u8; 4] = b"wAAA";
/// Length of every nonce we issue.
pub const NONCE_LEN: usize = COOKIE.len() + FEATURES.len() + 16;

const MAC_LEN: usize = 8;

/// The per-process nonce key (32 random bytes).
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// A key from the operating system's random source (getrandom(2)). Falls back to
    /// time- and address-derived bytes hashed together if getrandom fails, which only
    /// happens on kernels older than 3.17.
    pub fn random() -> NonceKey {
        let mut k = [0u8; 32];
        // SAFETY: `k` is a valid writable buffer of k.len() bytes; getrandom writes at
        // most that many.
        let n = unsafe { libc::getrandom(k.as_mut_ptr().cast(), k.len(), 0) };
        if usize::try_from(n).ok() != Some(k.len()) {
            use sha2::Digest;
            let mut h = Sha256::new();
            h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
            h.update((&k as *const _ as usize).to_ne_bytes());
            h.update(std::process::id().to_ne_bytes());
            k.copy_from_slice(&h.finalize());
        }
        NonceKey(k)
    }

    /// A fixed key (tests).
    pub const fn from_bytes(k: [u8; 32]) -> NonceKey {
        NonceKey(k)
    }

    fn mac(&self, expiry: u32, ip: IpAddr) -> [u8; MAC_LEN] {
        let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0) else {
            return [0; MAC_LEN];
        };
        m.update(&expiry.to_be_bytes());
        match ip.to_canonical() {
            IpAddr::V4(v4) => m.update(&v4.octets()),
            IpAddr::V6(v6) => m.update(&v6.octets()),
        }
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A nonce for `ip` valid until unix second `expiry`.
    pub fn issue(&self, ip: IpAddr, expiry: u64) -> [u8; NONCE_LEN] {
        let expiry = u32::try_from(expiry).unwrap_or(u32::MAX);
        let mut raw = [0u8; 4 + MAC_LEN];
        raw[..4].copy_from_slice(&expiry.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(expiry, ip));
        let mut out = [0u8; NONCE_LEN];
        out[..9].copy_from_slice(COOKIE);
        out[9..13].copy_from_slice(FEATURES);
        // 12 bytes encode to exactly 16 characters.
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, &mut out[13..]);
        out
    }

    /// Checks a nonce received from `ip` at unix second `now`.
    pub fn check(&self, nonce: &[u8], ip: IpAddr, now: u64) -> NonceCheck {
        if nonce.len() != NONCE_LEN || &nonce[..9] != COOKIE || &nonce[9..13] != FEATURES {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; 4 + MAC_LEN + 2];
        match URL_SAFE_NO_PAD.decode_slice(&nonce[13..], &mut raw) {
            Ok(12) => {}
            _ => return NonceCheck::Invalid,
        }
        let expiry = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let good: bool = self.mac(expiry, ip).ct_eq(&raw[4..12]).into();
        if !good {
            NonceCheck::Invalid
        } else if u64::from(expiry) <= now {
            NonceCheck::Expired
        } else {
            NonceCheck::Valid
        }
    }
}

/// Result of [`NonceKey::check`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NonceCheck {
    /// Ours, for this IP, not expired.
    Valid,
    /// Ours, for this IP, expired (438).
    Expired,
    /// Not ours, or for another IP (also answered with 438 and a fresh nonce).
    Invalid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_expired_and_foreign_nonces() {
        let k = NonceKey::from_bytes([1; 32]);
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let n = k.issue(ip, 1000);
        assert!(n.iter().all(|c| c.is_ascii_graphic()));
        assert_eq!(k.check(&n, ip, 999), NonceCheck::Valid);
        assert_eq!(k.check(&n, ip, 1000), NonceCheck::Expired);
        assert_eq!(
            k.check(&n, "192.0.2.8".parse().expect("ip"), 10),
            NonceCheck::Invalid
        );
        assert_eq!(
            NonceKey::from_bytes([2; 32]).check(&n, ip, 10),
            NonceCheck::Invalid
        );
        let mut bad = n;
        bad[NONCE_LEN - 1] ^= 1;
        assert_ne!(k.check(&bad, ip, 10), NonceCheck::Valid);
        assert_eq!(k.check(b"short", ip, 10), NonceCheck::Invalid);
        // The same IP as IPv4-mapped IPv6 is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(k.check(&n, mapped, 10), NonceCheck::Valid);
        assert_ne!(NonceKey::random().0, [0; 32]);
    }
}
