//! TLS for the TURN stream transport (RFC 8656 §3.1: TURN over TLS-over-TCP).
//!
//! It exists to turn the operator's certificate and key files into a rustls
//! [`ServerConfig`] with errors that name the file at fault, and to let that config be
//! replaced while the relay runs (`relay reload`, SIGHUP): [`TlsReloader`] hands every
//! *new* handshake the current config; connections already established keep the session
//! they negotiated, and the allocations behind them are untouched. TLS 1.2 and 1.3 are
//! offered (rustls' safe defaults, ring provider).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM object of the expected kind, or is malformed.
    #[error("{path}: {why} (expected a PEM {what}; check turn.tls_cert / turn.tls_key)")]
    Pem {
        /// `certificate chain` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error(
        "certificate {cert} with key {key} rejected: {source} (does the key belong to the \
         certificate?)"
    )]
    Rejected {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
}

/// Loads the PEM certificate chain (leaf first) at `cert` and the PEM private key
/// (PKCS#8, PKCS#1 or SEC1) at `key`, and builds a server config offering TLS 1.2 and 1.3.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        what: "private key",
        path: key.to_owned(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate chain",
            path: cert.to_owned(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate chain",
            path: cert.to_owned(),
            why: "no CERTIFICATE block found".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: key.to_owned(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rejected {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|source| TlsError::Rejected {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// The current TLS server config plus where it came from, replaceable at run time.
/// Workers call [`TlsReloader::current`] once per accepted connection (never per packet).
#[derive(Debug)]
pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsReloader {
    /// Loads the pair once; fails (naming the file) if it cannot.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let config = load_server_config(cert, key)?;
        Ok(TlsReloader {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
        })
    }

    /// Uses an already built config (tests); [`TlsReloader::reload`] re-reads `cert`/`key`.
    pub fn from_config(config: Arc<ServerConfig>, cert: &Path, key: &Path) -> Self {
        TlsReloader {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
        }
    }

    /// The config new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files. On error the old config stays in use (and the error says why).
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load_server_config(&self.cert, &self.key)?;
        self.swap(config);
        Ok(())
    }

    /// Replaces the config for new handshakes.
    pub fn swap(&self, config: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut g) => *g = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    /// The certificate path.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}
