//! The DTLS-SRTP protection profiles we negotiate (RFC 5764 section 4.1.2, RFC 7714
//! section 14.2) and the lengths each one fixes.

/// An SRTP protection profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// SRTP_AES128_CM_HMAC_SHA1_80 (0x0001): AES-128 counter mode, HMAC-SHA1 tag
    /// truncated to 80 bits, 14-byte salts.
    Aes128CmHmacSha1_80,
    /// SRTP_AEAD_AES_128_GCM (0x0007, RFC 7714): AES-128-GCM, 16-byte tag, 12-byte salts.
    AeadAes128Gcm,
}

impl Profile {
    /// The profile for a DTLS use_srtp profile id, if we support it.
    pub fn from_id(id: u16) -> Option<Profile> {
        match id {
            0x0001 => Some(Profile::Aes128CmHmacSha1_80),
            0x0007 => Some(Profile::AeadAes128Gcm),
            _ => None,
        }
    }

    /// The DTLS use_srtp profile id.
    pub fn id(self) -> u16 {
        match self {
            Profile::Aes128CmHmacSha1_80 => 0x0001,
            Profile::AeadAes128Gcm => 0x0007,
        }
    }

    /// Master (and session) key length in bytes.
    pub fn key_len(self) -> usize {
        16
    }

    /// Master (and session) salt length in bytes.
    pub fn salt_len(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 => 14,
            Profile::AeadAes128Gcm => 12,
        }
    }

    /// Authentication tag length in bytes, for SRTP and SRTCP alike.
    pub fn tag_len(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 => 10,
            Profile::AeadAes128Gcm => 16,
        }
    }

    /// Session authentication key length (HMAC-SHA1: 20 bytes; GCM has none).
    pub fn auth_key_len(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 => 20,
            Profile::AeadAes128Gcm => 0,
        }
    }

    /// How many bytes the DTLS layer must export with
    /// [`DTLS_SRTP_EXPORTER_LABEL`](super::DTLS_SRTP_EXPORTER_LABEL) (RFC 5764 section
    /// 4.2): two keys and two salts.
    pub fn keying_material_len(self) -> usize {
        2 * (self.key_len() + self.salt_len())
    }

    /// Bytes a protected RTP packet grows by (the tag; no MKI).
    pub fn rtp_overhead(self) -> usize {
        self.tag_len()
    }

    /// Bytes a protected RTCP packet grows by (SRTCP index word and tag).
    pub fn rtcp_overhead(self) -> usize {
        4 + self.tag_len()
    }
}
