//! The per-packet transforms of each profile, with the packet index already decided by
//! the session: AES-CM + HMAC-SHA1-80 (RFC 3711 sections 4.1.1, 4.2.1, 3.4) and
//! AEAD_AES_128_GCM (RFC 7714 sections 8 and 9). Keys are expanded once at session set-up
//! (AES round keys, HMAC inner/outer state, GCM key), so a packet costs no key schedule
//! and no allocation.
//!
//! Trailer layouts: SRTP `payload | tag`; SRTCP with AES-CM `payload | E+index | tag`
//! (the tag covers the index word); SRTCP with GCM `payload | tag | E+index` (the index
//! word is in the AAD).

use aes::Aes128;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use hmac::{Hmac, Mac};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::keys::StreamKeys;
use super::rtp_header::RTCP_CLEAR_LEN;
use super::{Profile, SrtpError};

/// The E flag of the SRTCP index word: the packet's payload is encrypted.
pub const SRTCP_E_FLAG: u32 = 0x8000_0000;

const HMAC_TAG_LEN: usize = 10;
const GCM_TAG_LEN: usize = 16;

/// One of SRTP or SRTCP's keys, ready for per-packet use.
#[allow(
    clippy::large_enum_variant,
    reason = "a session holds exactly two, inline; boxing would only add an indirection per packet"
)]
pub(crate) enum Transform {
    Cm {
        aes: Aes128,
        salt: [u8; 14],
        mac: Hmac<Sha1>,
    },
    Gcm {
        key: LessSafeKey,
        salt: [u8; 12],
    },
}

/// The AES-CM IV of RFC 3711 section 4.1.1: (salt << 16) XOR (SSRC << 64) XOR (index << 16).
pub(crate) fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    // The index is 48 bits: bytes 2..8 of its big-endian u64 form.
    for (d, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *d ^= s;
    }
    iv
}

/// XORs `data` with the AES-CM keystream starting at `iv`.
pub(crate) fn cm_xor(aes: &Aes128, iv: &[u8; 16], data: &mut [u8]) {
    let core =
        ctr::CtrCore::<Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(aes.clone(), iv.into());
    let mut ctr = ctr::Ctr128BE::<Aes128>::from_core(core);
    ctr.apply_keystream(data);
}

/// The GCM IV of RFC 7714 sections 8.1 and 9.1: the 12-byte salt XOR
/// `00 00 | SSRC | word1 | word2` (RTP: ROC and SEQ; RTCP: 0 and the 31-bit index).
fn gcm_nonce(salt: &[u8; 12], ssrc: u32, middle: [u8; 4], last: [u8; 2]) -> Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&middle);
    iv[10..12].copy_from_slice(&last);
    for (d, s) in iv.iter_mut().zip(salt) {
        *d ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

fn rtcp_gcm_nonce(salt: &[u8; 12], ssrc: u32, index: u32) -> Nonce {
    let i = (index & !SRTCP_E_FLAG).to_be_bytes();
    gcm_nonce(salt, ssrc, [0, 0, i[0], i[1]], [i[2], i[3]])
}

impl Transform {
    pub(crate) fn new(profile: Profile, keys: &StreamKeys) -> Result<Transform, SrtpError> {
        Ok(match profile {
            Profile::Aes128CmHmacSha1_80 => {
                let mut salt = [0u8; 14];
                salt.copy_from_slice(&keys.salt[..14]);
                Transform::Cm {
                    aes: Aes128::new(&keys.key.into()),
                    salt,
                    mac: <Hmac<Sha1> as Mac>::new_from_slice(&keys.auth)
                        .map_err(|_| SrtpError::KeySetup)?,
                }
            }
            Profile::AeadAes128Gcm => {
                let mut salt = [0u8; 12];
                salt.copy_from_slice(&keys.salt[..12]);
                let unbound =
                    UnboundKey::new(&AES_128_GCM, &keys.key).map_err(|_| SrtpError::KeySetup)?;
                Transform::Gcm {
                    key: LessSafeKey::new(unbound),
                    salt,
                }
            }
        })
    }

    fn tag_len(&self) -> usize {
        match self {
            Transform::Cm { .. } => HMAC_TAG_LEN,
            Transform::Gcm { .. } => GCM_TAG_LEN,
        }
    }

    /// HMAC-SHA1-80 over `parts` (RFC 3711 section 4.2.1).
    fn hmac80(mac: &Hmac<Sha1>, parts: &[&[u8]]) -> [u8; HMAC_TAG_LEN] {
        let mut m = mac.clone();
        for p in parts {
            m.update(p);
        }
        let full = m.finalize().into_bytes();
        let mut tag = [0u8; HMAC_TAG_LEN];
        tag.copy_from_slice(&full[..HMAC_TAG_LEN]);
        tag
    }

    /// Protects the RTP packet `buf[..len]` whose header is `header_len` long, under
    /// packet index `index` (ROC << 16 | SEQ). The caller checked that `buf` has room for
    /// the tag. Returns the protected length.
    pub(crate) fn protect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, SrtpError> {
        let roc = ((index >> 16) as u32).to_be_bytes();
        match self {
            Transform::Cm { aes, salt, mac } => {
                cm_xor(aes, &cm_iv(salt, ssrc, index), &mut buf[header_len..len]);
                let tag = Self::hmac80(mac, &[&buf[..len], &roc]);
                buf[len..len + HMAC_TAG_LEN].copy_from_slice(&tag);
                Ok(len + HMAC_TAG_LEN)
            }
            Transform::Gcm { key, salt } => {
                let seq = (index as u16).to_be_bytes();
                let nonce = gcm_nonce(salt, ssrc, roc, seq);
                let (header, rest) = buf.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(&*header),
                        &mut rest[..len - header_len],
                    )
                    .map_err(|_| SrtpError::KeySetup)?;
                rest[len - header_len..len - header_len + GCM_TAG_LEN]
                    .copy_from_slice(tag.as_ref());
                Ok(len + GCM_TAG_LEN)
            }
        }
    }

    /// Authenticates, then decrypts, the SRTP packet `buf[..len]` (header `header_len`
    /// long, `len` at least header plus tag) under `index`. Returns the plaintext length.
    /// On failure the buffer's payload may have been changed (GCM decrypts while it
    /// verifies); the packet must be dropped.
    pub(crate) fn unprotect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, SrtpError> {
        let roc = ((index >> 16) as u32).to_be_bytes();
        let body = len
            .checked_sub(self.tag_len())
            .filter(|&b| b >= header_len)
            .ok_or(SrtpError::TooShort)?;
        match self {
            Transform::Cm { aes, salt, mac } => {
                let tag = Self::hmac80(mac, &[&buf[..body], &roc]);
                if !bool::from(tag.ct_eq(&buf[body..len])) {
                    return Err(SrtpError::AuthFailed);
                }
                cm_xor(aes, &cm_iv(salt, ssrc, index), &mut buf[header_len..body]);
                Ok(body)
            }
            Transform::Gcm { key, salt } => {
                let seq = (index as u16).to_be_bytes();
                let nonce = gcm_nonce(salt, ssrc, roc, seq);
                let (header, rest) = buf.split_at_mut(header_len);
                key.open_in_place(nonce, Aad::from(&*header), &mut rest[..len - header_len])
                    .map_err(|_| SrtpError::AuthFailed)?;
                Ok(body)
            }
        }
    }

    /// Protects the RTCP packet `buf[..len]` (at least 8 bytes) with SRTCP index `index`
    /// (31 bits), always encrypted (E = 1). The caller checked the room. Returns the
    /// protected length.
    pub(crate) fn protect_rtcp(
        &self,
        buf: &mut [u8],
        len: usize,
        ssrc: u32,
        index: u32,
    ) -> Result<usize, SrtpError> {
        let word = (index | SRTCP_E_FLAG).to_be_bytes();
        match self {
            Transform::Cm { aes, salt, mac } => {
                let iv = cm_iv(salt, ssrc, u64::from(index));
                cm_xor(aes, &iv, &mut buf[RTCP_CLEAR_LEN..len]);
                buf[len..len + 4].copy_from_slice(&word);
                let tag = Self::hmac80(mac, &[&buf[..len + 4]]);
                buf[len + 4..len + 4 + HMAC_TAG_LEN].copy_from_slice(&tag);
                Ok(len + 4 + HMAC_TAG_LEN)
            }
            Transform::Gcm { key, salt } => {
                let mut aad = [0u8; RTCP_CLEAR_LEN + 4];
                aad[..RTCP_CLEAR_LEN].copy_from_slice(&buf[..RTCP_CLEAR_LEN]);
                aad[RTCP_CLEAR_LEN..].copy_from_slice(&word);
                let nonce = rtcp_gcm_nonce(salt, ssrc, index);
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(&aad),
                        &mut buf[RTCP_CLEAR_LEN..len],
                    )
                    .map_err(|_| SrtpError::KeySetup)?;
                buf[len..len + GCM_TAG_LEN].copy_from_slice(tag.as_ref());
                buf[len + GCM_TAG_LEN..len + GCM_TAG_LEN + 4].copy_from_slice(&word);
                Ok(len + GCM_TAG_LEN + 4)
            }
        }
    }

    /// Where the E+index word of the SRTCP packet `packet` is, and its value.
    pub(crate) fn srtcp_index_word(&self, packet: &[u8]) -> Result<u32, SrtpError> {
        let len = packet.len();
        if len < RTCP_CLEAR_LEN + 4 + self.tag_len() {
            return Err(SrtpError::TooShort);
        }
        let at = match self {
            Transform::Cm { .. } => len - HMAC_TAG_LEN - 4,
            Transform::Gcm { .. } => len - 4,
        };
        let w = &packet[at..at + 4];
        Ok(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    }

    /// Authenticates, then decrypts (if E is set), the SRTCP packet `buf` whose index word
    /// is `word` (from [`srtcp_index_word`](Self::srtcp_index_word)). Returns the RTCP
    /// length. On failure the buffer may have been changed; the packet must be dropped.
    pub(crate) fn unprotect_rtcp(
        &self,
        buf: &mut [u8],
        ssrc: u32,
        word: u32,
    ) -> Result<usize, SrtpError> {
        let len = buf.len();
        let encrypted = word & SRTCP_E_FLAG != 0;
        let index = word & !SRTCP_E_FLAG;
        match self {
            Transform::Cm { aes, salt, mac } => {
                let body = len - HMAC_TAG_LEN;
                let tag = Self::hmac80(mac, &[&buf[..body]]);
                if !bool::from(tag.ct_eq(&buf[body..])) {
                    return Err(SrtpError::AuthFailed);
                }
                let rtcp_len = body - 4;
                if encrypted {
                    let iv = cm_iv(salt, ssrc, u64::from(index));
                    cm_xor(aes, &iv, &mut buf[RTCP_CLEAR_LEN..rtcp_len]);
                }
                Ok(rtcp_len)
            }
            Transform::Gcm { key, salt } => {
                let nonce = rtcp_gcm_nonce(salt, ssrc, index);
                let rtcp_len = len - 4 - GCM_TAG_LEN;
                if encrypted {
                    let mut aad = [0u8; RTCP_CLEAR_LEN + 4];
                    aad[..RTCP_CLEAR_LEN].copy_from_slice(&buf[..RTCP_CLEAR_LEN]);
                    aad[RTCP_CLEAR_LEN..].copy_from_slice(&word.to_be_bytes());
                    key.open_in_place(nonce, Aad::from(&aad), &mut buf[RTCP_CLEAR_LEN..len - 4])
                        .map_err(|_| SrtpError::AuthFailed)?;
                } else {
                    // RFC 7714 section 9.2: the whole packet and the index word are the
                    // AAD, the plaintext is empty. Move the word next to the packet (over
                    // the tag, saved first) so the AAD is one slice.
                    let tag = Tag::try_from(&buf[rtcp_len..rtcp_len + GCM_TAG_LEN])
                        .map_err(|_| SrtpError::TooShort)?;
                    buf[rtcp_len..rtcp_len + 4].copy_from_slice(&word.to_be_bytes());
                    let (aad, rest) = buf.split_at_mut(rtcp_len + 4);
                    key.open_in_place_separate_tag(
                        nonce,
                        Aad::from(&*aad),
                        tag,
                        &mut rest[..0],
                        0..,
                    )
                    .map_err(|_| SrtpError::AuthFailed)?;
                }
                Ok(rtcp_len)
            }
        }
    }
}
