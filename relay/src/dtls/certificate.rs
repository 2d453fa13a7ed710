//! The relay's DTLS identity: a self-signed ECDSA P-256 certificate generated at start, its
//! SHA-256 fingerprint (what our SDP announces in `a=fingerprint`), and the OpenSSL context
//! every [`DtlsEndpoint`](super::DtlsEndpoint) is created from (built once: per-connection
//! set-up then only creates an `SSL` object).

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslContext, SslContextBuilder, SslMethod, SslOptions, SslVersion};
use openssl::x509::{X509, X509NameBuilder};

use super::{CIPHER_LIST, DtlsError, SRTP_PROFILES};

/// Validity of the generated certificate. Browsers do not check it for DTLS-SRTP (the
/// fingerprint is what authenticates), but an expired one would be an odd thing to send.
pub const VALIDITY_DAYS: u32 = 30;

/// A self-signed certificate and key plus the DTLS context that presents them.
///
/// Cheap to clone (reference-counted OpenSSL objects); `Send + Sync`, so one instance can
/// serve every worker.
#[derive(Clone)]
pub struct Certificate {
    x509: X509,
    key: PKey<Private>,
    fingerprint: [u8; 32],
    context: SslContext,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("fingerprint", &self.fingerprint_string())
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Generates a fresh P-256 key and a self-signed certificate for it (CN "relay",
    /// random 64-bit serial, valid from now for [`VALIDITY_DAYS`]), and the DTLS context.
    pub fn generate() -> Result<Certificate, DtlsError> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;

        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, "relay")?;
        let name = name.build();

        let mut serial = BigNum::new()?;
        serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
        let serial = Asn1Integer::from_bn(&serial)?;

        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(&key)?;
        builder.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
        builder.set_not_after(Asn1Time::days_from_now(VALIDITY_DAYS)?.as_ref())?;
        builder.sign(&key, MessageDigest::sha256())?;
        let x509 = builder.build();

        let fingerprint = sha256_fingerprint(&x509)?;
        let context = build_context(&x509, &key)?;
        Ok(Certificate {
            x509,
            key,
            fingerprint,
            context,
        })
    }

    /// The SHA-256 fingerprint of the certificate's DER encoding.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The fingerprint in SDP form (`a=fingerprint:sha-256 AB:CD:...`): uppercase hex
    /// bytes separated by colons.
    pub fn fingerprint_string(&self) -> String {
        format_fingerprint(&self.fingerprint)
    }

    /// The certificate.
    pub fn x509(&self) -> &X509 {
        &self.x509
    }

    /// The private key.
    pub fn private_key(&self) -> &PKey<Private> {
        &self.key
    }

    /// The DTLS context endpoints are created from.
    pub(crate) fn context(&self) -> &SslContext {
        &self.context
    }
}

/// The SHA-256 fingerprint of a certificate.
pub(crate) fn sha256_fingerprint(x509: &openssl::x509::X509Ref) -> Result<[u8; 32], DtlsError> {
    let digest = x509.digest(MessageDigest::sha256())?;
    let mut out = [0u8; 32];
    if digest.len() != out.len() {
        return Err(DtlsError::OpenSsl("SHA-256 digest is not 32 bytes".into()));
    }
    out.copy_from_slice(&digest);
    Ok(out)
}

/// Formats a fingerprint as uppercase hex bytes separated by colons (`AB:CD:...`).
pub fn format_fingerprint(fingerprint: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(fingerprint.len() * 3);
    for (i, b) in fingerprint.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// The context shared by every endpoint: DTLS 1.2 only, ECDHE ciphers, use_srtp with our
/// profiles, our certificate, no MTU queries (the endpoint sets [`super::MTU`]) and no
/// renegotiation. Peer verification is set per connection (it needs the SDP fingerprint).
fn build_context(x509: &X509, key: &PKey<Private>) -> Result<SslContext, DtlsError> {
    let mut ctx = SslContextBuilder::new(SslMethod::dtls())?;
    ctx.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    ctx.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    ctx.set_cipher_list(CIPHER_LIST)?;
    ctx.set_tlsext_use_srtp(SRTP_PROFILES)?;
    ctx.set_certificate(x509)?;
    ctx.set_private_key(key)?;
    ctx.check_private_key()?;
    ctx.set_options(
        SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION | SslOptions::NO_TICKET,
    );
    Ok(ctx.build())
}
