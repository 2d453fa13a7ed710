//! Keys: splitting the DTLS-SRTP exported keying material into the two directions' master
//! keys (RFC 5764 section 4.2), and deriving session keys from a master key with the
//! AES-CM PRF (RFC 3711 section 4.3, key derivation rate 0; RFC 7714 section 11 uses the
//! same KDF with 12-byte salts).

use aes::Aes128;
use aes::cipher::{KeyIvInit, StreamCipher};

use super::{Profile, SrtpError};

/// The TLS exporter label for DTLS-SRTP keying material (RFC 5764 section 4.2).
pub const DTLS_SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// KDF labels (RFC 3711 section 4.3.1 and 4.3.2).
pub(crate) const LABEL_RTP_ENCRYPTION: u8 = 0x00;
pub(crate) const LABEL_RTP_AUTH: u8 = 0x01;
pub(crate) const LABEL_RTP_SALT: u8 = 0x02;
pub(crate) const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
pub(crate) const LABEL_RTCP_AUTH: u8 = 0x04;
pub(crate) const LABEL_RTCP_SALT: u8 = 0x05;

/// The longest salt of any profile (AES-CM: 14 bytes).
pub(crate) const MAX_SALT_LEN: usize = 14;

/// One direction's master key and master salt, for one profile.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    profile: Profile,
    key: [u8; 16],
    /// The first `profile.salt_len()` bytes are the salt, the rest zero.
    salt: [u8; MAX_SALT_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A master key from its parts; `key` and `salt` must have the profile's lengths.
    pub fn new(profile: Profile, key: &[u8], salt: &[u8]) -> Result<MasterKey, SrtpError> {
        let key: [u8; 16] = key
            .try_into()
            .map_err(|_| SrtpError::KeyingMaterialLength {
                expected: profile.key_len(),
                got: key.len(),
            })?;
        if salt.len() != profile.salt_len() {
            return Err(SrtpError::KeyingMaterialLength {
                expected: profile.salt_len(),
                got: salt.len(),
            });
        }
        let mut padded = [0u8; MAX_SALT_LEN];
        padded[..salt.len()].copy_from_slice(salt);
        Ok(MasterKey {
            profile,
            key,
            salt: padded,
        })
    }

    /// The profile this key is for.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The master key.
    pub fn key(&self) -> &[u8; 16] {
        &self.key
    }

    /// The master salt (`profile.salt_len()` bytes).
    pub fn salt(&self) -> &[u8] {
        &self.salt[..self.profile.salt_len()]
    }
}

/// Splits DTLS-SRTP keying material (`client_write_key | server_write_key |
/// client_write_salt | server_write_salt`) into (local, remote) master keys: the local one
/// protects what we send, the remote one unprotects what we receive.
pub fn session_keys(
    profile: Profile,
    material: &[u8],
    we_are_dtls_client: bool,
) -> Result<(MasterKey, MasterKey), SrtpError> {
    let expected = profile.keying_material_len();
    if material.len() != expected {
        return Err(SrtpError::KeyingMaterialLength {
            expected,
            got: material.len(),
        });
    }
    let (k, s) = (profile.key_len(), profile.salt_len());
    let client = MasterKey::new(profile, &material[..k], &material[2 * k..2 * k + s])?;
    let server = MasterKey::new(profile, &material[k..2 * k], &material[2 * k + s..])?;
    Ok(if we_are_dtls_client {
        (client, server)
    } else {
        (server, client)
    })
}

/// The AES-CM PRF of RFC 3711 section 4.3.3 with key derivation rate 0: fills `out` with
/// the keystream of AES-128-CTR under the master key, starting at IV = (master_salt XOR
/// (label << 48)) << 16. A 12-byte (GCM) master salt is zero-padded to 14 bytes on the
/// right, as RFC 7714 section 11 implementations do.
pub(crate) fn derive(master: &MasterKey, label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MAX_SALT_LEN].copy_from_slice(&master.salt);
    // key_id = label || r (48 bits, zero at rate 0), right-aligned in the 112-bit salt.
    iv[7] ^= label;
    out.fill(0);
    let mut ctr = ctr::Ctr128BE::<Aes128>::new(&master.key.into(), &iv.into());
    ctr.apply_keystream(out);
}

/// Session keys of one direction, for SRTP and SRTCP (RFC 3711 section 4.3).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SessionKeys {
    pub rtp: StreamKeys,
    pub rtcp: StreamKeys,
}

/// Session keys for one of SRTP or SRTCP.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StreamKeys {
    pub key: [u8; 16],
    /// The first `salt_len` bytes are used.
    pub salt: [u8; MAX_SALT_LEN],
    /// HMAC-SHA1 key (AES-CM profile only).
    pub auth: [u8; 20],
}

impl SessionKeys {
    /// Derives the six session keys from a master key.
    pub fn derive(master: &MasterKey) -> SessionKeys {
        let salt_len = master.profile.salt_len();
        let auth_len = master.profile.auth_key_len();
        let one = |enc: u8, auth: u8, salt: u8| {
            let mut k = StreamKeys {
                key: [0; 16],
                salt: [0; MAX_SALT_LEN],
                auth: [0; 20],
            };
            derive(master, enc, &mut k.key);
            derive(master, salt, &mut k.salt[..salt_len]);
            derive(master, auth, &mut k.auth[..auth_len]);
            k
        };
        SessionKeys {
            rtp: one(LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT),
            rtcp: one(LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT),
        }
    }
}
