//! TLS for the TURN stream transport (RFC 8656 §3.1: TURN over TLS-over-TCP).
//!
//! It exists to turn the operator's certificate and key files into a rustls
//! [`ServerConfig`] with errors that name the file at fault, and to let that config be
//! replaced while the relay runs (`relay reload`, SIGHUP): [`TlsReloader`] hands every
//! *new* handshake the current config; connections already established keep the session
//! they negotiated, and the allocations behind them are untouched. TLS 1.2 and 1.3 are
//! offered (rustls' safe defaults, ring provider).
//!
//! It also holds [`TlsStream`], the server side of one TURN-over-TLS connection, which
//! exists because rustls 0.23 allocates for every record it encrypts or decrypts (its
//! buffered `ServerConnection` and, in 0.23, its unbuffered one as well: each sealed
//! record is a fresh `Vec`, each opened one is copied into a `Vec`). The relay must not
//! allocate per relayed packet, so rustls runs the handshake only (unbuffered API, over
//! buffers the connection owns), and once it completes the record layer is ours: the
//! traffic secrets are taken from rustls (`dangerous_into_kernel_connection`, the API
//! rustls offers for kTLS-style offload) and every record is sealed and opened in place
//! with ring's AEADs in the two per-connection buffers allocated at accept. rustls keeps
//! the key schedule: a TLS 1.3 KeyUpdate asks it for the next secret.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::aead;
use rustls::ServerConfig;
use rustls::crypto::cipher::{Iv, Nonce};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};
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
    Ok(with_secret_extraction(Arc::new(config)))
}

/// [`TlsStream`] needs the traffic secrets after the handshake (they never leave the
/// process): turns secret extraction on, copying the config only if it was off.
fn with_secret_extraction(config: Arc<ServerConfig>) -> Arc<ServerConfig> {
    if config.enable_secret_extraction {
        return config;
    }
    let mut c = (*config).clone();
    c.enable_secret_extraction = true;
    Arc::new(c)
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
            current: RwLock::new(with_secret_extraction(config)),
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
        let config = with_secret_extraction(config);
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

// ---------------------------------------------------------------------------------------
// One TLS connection: rustls for the handshake, our record layer afterwards

/// Largest plaintext of one record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Record header: type, version, length.
const HEADER: usize = 5;
/// Largest record body accepted (TLS 1.2 allows plaintext + 2048).
const MAX_BODY: usize = MAX_PLAINTEXT + 2048;
/// What sealing one record adds at most: header, TLS 1.2 explicit nonce, AEAD tag
/// (TLS 1.3 adds a content-type byte instead of the nonce).
const MAX_OVERHEAD: usize = HEADER + 8 + 16;
/// Bytes of ciphertext buffered per connection for reading: two of the largest records,
/// so a read can always complete one while the next starts. Allocated once at accept.
pub const TLS_IN_BYTES: usize = 2 * (HEADER + MAX_BODY);
/// ciphertext encrypted before the limit of the cipher (TLS 1.3: key update; 1.2: close)
/// is reached; kept a little below rustls' confidentiality limit.
const LIMIT_MARGIN: u64 = 16;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPLICATION_DATA: u8 = 23;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_NO_RENEGOTIATION: u8 = 100;

const HS_CLIENT_HELLO: u8 = 1;
const HS_KEY_UPDATE: u8 = 24;

/// Why a TLS connection failed (the connection is then closed).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// rustls refused the handshake.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[from] rustls::Error),
    /// The peer broke the record protocol after the handshake.
    #[error("TLS record error: {0}")]
    Record(&'static str),
    /// The peer sent a fatal alert.
    #[error("TLS alert {0} received")]
    Alert(u8),
    /// A handshake flight or decrypted data did not fit the connection's buffers.
    #[error("TLS buffers exhausted: {0}")]
    Buffer(&'static str),
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What [`TlsStream::read`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// `copied` plaintext bytes were written to the caller's buffer; `more`: data may be
    /// left in the socket or in our buffer (call again).
    Progress {
        /// Plaintext bytes delivered.
        copied: usize,
        /// Whether calling again may deliver more.
        more: bool,
    },
    /// The peer closed (close_notify or end of stream) and everything was delivered.
    Eof,
}

/// How records are laid out and sealed after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// TLS 1.3: inner content type, nonce = iv ^ seq, header as AAD.
    Tls13,
    /// TLS 1.2 AES-GCM: 8-byte explicit nonce on the wire (RFC 5288).
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: nonce = iv ^ seq (RFC 7905).
    Tls12Chacha,
}

/// One direction's key, IV and sequence number.
struct Keys {
    key: aead::LessSafeKey,
    iv: Iv,
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Keys, StreamError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(StreamError::Record("unsupported cipher")),
        };
        let key = aead::UnboundKey::new(alg, key.as_ref())
            .map_err(|_| StreamError::Record("bad key length"))?;
        Ok(Keys {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The per-record nonce (iv XOR sequence number), then the next sequence number.
    fn next_nonce(&mut self) -> Result<[u8; 12], StreamError> {
        let n = Nonce::new(&self.iv, self.seq).0;
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(StreamError::Record("sequence number exhausted"))?;
        Ok(n)
    }
}

/// The state after the handshake: our record layer plus rustls' key schedule.
struct Established {
    kernel: KernelConnection<ServerConnectionData>,
    format: Format,
    tx: Keys,
    rx: Keys,
    /// Records sealed with one key before it must be replaced.
    tx_limit: u64,
}

impl Established {
    /// Seals one record of `typ` carrying `payload` (≤ [`MAX_PLAINTEXT`]) into `out`
    /// (which has room for `payload.len() + MAX_OVERHEAD`); returns its length.
    fn seal(&mut self, typ: u8, payload: &[u8], out: &mut [u8]) -> Result<usize, StreamError> {
        let plen = payload.len();
        let nonce = self.tx.next_nonce()?;
        let (hdr, rest) = out.split_at_mut(HEADER);
        let (body_len, start, sealed_len, outer) = match self.format {
            Format::Tls13 => (plen + 1 + 16, 0, plen + 1, CT_APPLICATION_DATA),
            Format::Tls12Gcm => (8 + plen + 16, 8, plen, typ),
            Format::Tls12Chacha => (plen + 16, 0, plen, typ),
        };
        hdr[0] = outer;
        hdr[1] = 3;
        hdr[2] = 3;
        hdr[3..5].copy_from_slice(&(body_len as u16).to_be_bytes());
        rest[start..start + plen].copy_from_slice(payload);
        let aad = match self.format {
            Format::Tls13 => {
                rest[plen] = typ;
                let mut a = [0u8; 13];
                a[..HEADER].copy_from_slice(hdr);
                (a, HEADER)
            }
            Format::Tls12Gcm | Format::Tls12Chacha => {
                if self.format == Format::Tls12Gcm {
                    rest[..8].copy_from_slice(&nonce[4..]);
                }
                (tls12_aad(self.tx.seq - 1, typ, plen), 13)
            }
        };
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&aad.0[..aad.1]),
                &mut rest[start..start + sealed_len],
            )
            .map_err(|_| StreamError::Record("seal failed"))?;
        rest[start + sealed_len..start + sealed_len + 16].copy_from_slice(tag.as_ref());
        Ok(HEADER + body_len)
    }

    /// Opens the record `rec` (header + body) in place: (content type, plaintext range
    /// within `rec`).
    fn open(&mut self, rec: &mut [u8]) -> Result<(u8, usize, usize), (u8, StreamError)> {
        let typ = rec[0];
        let mut hdr = [0u8; HEADER];
        hdr.copy_from_slice(&rec[..HEADER]);
        let body = &mut rec[HEADER..];
        let bad_mac = || (ALERT_BAD_RECORD_MAC, StreamError::Record("bad record MAC"));
        match self.format {
            Format::Tls13 => {
                if typ != CT_APPLICATION_DATA {
                    return Err((
                        ALERT_UNEXPECTED_MESSAGE,
                        StreamError::Record("unprotected record after the handshake"),
                    ));
                }
                let nonce = self
                    .rx
                    .next_nonce()
                    .map_err(|e| (ALERT_INTERNAL_ERROR, e))?;
                let plain = self
                    .rx
                    .key
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(hdr),
                        body,
                    )
                    .map_err(|_| bad_mac())?;
                // Strip the zero padding; the last non-zero byte is the real type.
                let Some(k) = plain.iter().rposition(|&b| b != 0) else {
                    return Err((
                        ALERT_UNEXPECTED_MESSAGE,
                        StreamError::Record("record without content type"),
                    ));
                };
                if k > MAX_PLAINTEXT {
                    return Err((
                        ALERT_RECORD_OVERFLOW,
                        StreamError::Record("record too large"),
                    ));
                }
                Ok((plain[k], HEADER, HEADER + k))
            }
            Format::Tls12Gcm | Format::Tls12Chacha => {
                let explicit = if self.format == Format::Tls12Gcm {
                    8
                } else {
                    0
                };
                if body.len() < explicit + 16 {
                    return Err(bad_mac());
                }
                let plen = body.len() - explicit - 16;
                if plen > MAX_PLAINTEXT {
                    return Err((
                        ALERT_RECORD_OVERFLOW,
                        StreamError::Record("record too large"),
                    ));
                }
                let seq = self.rx.seq;
                let mut nonce = self
                    .rx
                    .next_nonce()
                    .map_err(|e| (ALERT_INTERNAL_ERROR, e))?;
                if explicit == 8 {
                    nonce[..4].copy_from_slice(&self.rx.iv.as_ref()[..4]);
                    nonce[4..].copy_from_slice(&body[..8]);
                }
                self.rx
                    .key
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(tls12_aad(seq, typ, plen)),
                        &mut body[explicit..],
                    )
                    .map_err(|_| bad_mac())?;
                Ok((typ, HEADER + explicit, HEADER + explicit + plen))
            }
        }
    }
}

/// TLS 1.2 additional data: seq_num, type, version, length (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 3;
    a[10] = 3;
    a[11..13].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

enum Phase {
    Handshake(Box<UnbufferedServerConnection>),
    Established(Box<Established>),
    /// A fatal error happened; nothing more is read or written.
    Failed,
}

/// The server side of one TLS connection with buffers allocated once: `inbuf` holds
/// received ciphertext (records are opened in place there, and their plaintext is handed
/// out from there), `out` holds ciphertext waiting for the socket. After the handshake no
/// call allocates. The socket is passed to each call (`&TcpStream` in the relay).
pub struct TlsStream {
    phase: Phase,
    inbuf: Box<[u8]>,
    /// Unprocessed ciphertext: `inbuf[in_start..in_end]`.
    in_start: usize,
    in_end: usize,
    /// Opened plaintext not yet delivered: `inbuf[plain_start..plain_end]`.
    plain_start: usize,
    plain_end: usize,
    out: Box<[u8]>,
    /// Ciphertext waiting for the socket: `out[out_start..out_end]`.
    out_start: usize,
    out_end: usize,
    /// The peer sent close_notify (or closed the socket).
    peer_closed: bool,
    /// We sent close_notify.
    closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.is_handshaking())
            .field("queued", &(self.out_end - self.out_start))
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// A new server connection using `config` (take it from [`TlsReloader::current`]);
    /// `out_bytes`: ciphertext that may wait for the socket before the client counts as
    /// too slow (writes beyond it fail). Allocates the two buffers (zeroed memory the
    /// kernel backs lazily).
    pub fn new(config: Arc<ServerConfig>, out_bytes: usize) -> Result<TlsStream, rustls::Error> {
        let conn = UnbufferedServerConnection::new(with_secret_extraction(config))?;
        Ok(TlsStream {
            phase: Phase::Handshake(Box::new(conn)),
            inbuf: vec![0u8; TLS_IN_BYTES].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            plain_start: 0,
            plain_end: 0,
            out: vec![0u8; out_bytes.max(HEADER + MAX_PLAINTEXT + MAX_OVERHEAD)].into_boxed_slice(),
            out_start: 0,
            out_end: 0,
            peer_closed: false,
            closed: false,
        })
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshake(_))
    }

    /// The negotiated protocol version, once established.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.phase {
            Phase::Established(e) => Some(e.kernel.protocol_version()),
            _ => None,
        }
    }

    /// Tests only: lets the current sending key seal just `records` more records before
    /// the cipher's limit applies (TLS 1.3: key update; TLS 1.2: the connection closes),
    /// so that path can be exercised without sealing 2^24 records.
    #[doc(hidden)]
    pub fn limit_records_for_tests(&mut self, records: u64) {
        if let Phase::Established(e) = &mut self.phase {
            e.tx_limit = e.tx.seq.saturating_add(records);
        }
    }

    /// Whether ciphertext waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.out_end > self.out_start
    }

    /// Makes room for `n` more bytes at the end of `out` (moving the queue to the front
    /// if needed). False if the queue is too full.
    fn reserve_out(&mut self, n: usize) -> bool {
        if self.out.len() - self.out_end >= n {
            return true;
        }
        if self.out_start > 0 {
            self.out.copy_within(self.out_start..self.out_end, 0);
            self.out_end -= self.out_start;
            self.out_start = 0;
        }
        self.out.len() - self.out_end >= n
    }

    /// Seals one record into `out` (room checked by the caller).
    fn seal_record(&mut self, typ: u8, payload: &[u8]) -> Result<(), StreamError> {
        let Phase::Established(est) = &mut self.phase else {
            return Err(StreamError::Record("not established"));
        };
        let n = est.seal(typ, payload, &mut self.out[self.out_end..])?;
        self.out_end += n;
        Ok(())
    }

    /// TLS 1.3: sends a KeyUpdate (with the current key), then switches to the next key.
    fn update_tx_key(&mut self) -> Result<(), StreamError> {
        if !self.reserve_out(5 + MAX_OVERHEAD) {
            return Err(StreamError::Buffer("no room for a key update"));
        }
        // KeyUpdate, length 1, update_not_requested.
        self.seal_record(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0])?;
        let Phase::Established(est) = &mut self.phase else {
            return Err(StreamError::Record("not established"));
        };
        let (seq, secrets) = est.kernel.update_tx_secret()?;
        est.tx = Keys::new(seq, secrets)?;
        Ok(())
    }

    /// Queues `plaintext` (one whole message) encrypted. False when the connection is not
    /// established, failed, or the queue would overflow (the client is too slow): the
    /// caller closes the connection. Never allocates.
    pub fn write(&mut self, plaintext: &[u8]) -> bool {
        let (limit, seq, format) = match &self.phase {
            Phase::Established(e) => (e.tx_limit, e.tx.seq, e.format),
            _ => return false,
        };
        if self.closed {
            return false;
        }
        let records = plaintext.len().div_ceil(MAX_PLAINTEXT).max(1) as u64;
        if seq.saturating_add(records) >= limit {
            let ok = format == Format::Tls13 && self.update_tx_key().is_ok();
            if !ok {
                tracing::debug!("TLS record limit of the cipher reached; closing");
                self.phase = Phase::Failed;
                return false;
            }
        }
        if !self.reserve_out(plaintext.len() + records as usize * MAX_OVERHEAD) {
            return false;
        }
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            if self.seal_record(CT_APPLICATION_DATA, chunk).is_err() {
                self.phase = Phase::Failed;
                return false;
            }
        }
        true
    }

    /// Writes queued ciphertext; Ok(true) when nothing is left.
    pub fn flush<W: Write>(&mut self, sock: &mut W) -> io::Result<bool> {
        while self.out_start < self.out_end {
            match sock.write(&self.out[self.out_start..self.out_end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out_start = 0;
        self.out_end = 0;
        Ok(true)
    }

    /// Best effort before the socket closes: close_notify (once established), then one
    /// flush attempt.
    pub fn close<W: Write>(&mut self, sock: &mut W) {
        if matches!(self.phase, Phase::Established(_))
            && !self.closed
            && self.reserve_out(2 + MAX_OVERHEAD)
            && self
                .seal_record(CT_ALERT, &[ALERT_WARNING, ALERT_CLOSE_NOTIFY])
                .is_ok()
        {
            self.closed = true;
        }
        let _ = self.flush(sock);
    }

    /// Queues a fatal alert when possible, flushes once, and marks the stream failed.
    fn fail<W: Write>(&mut self, sock: &mut W, alert: u8, e: StreamError) -> io::Error {
        tracing::debug!(error = %e, alert, "TLS error; closing the connection");
        if matches!(self.phase, Phase::Established(_))
            && self.reserve_out(2 + MAX_OVERHEAD)
            && self.seal_record(CT_ALERT, &[ALERT_FATAL, alert]).is_ok()
        {
            self.closed = true;
        }
        let _ = self.flush(sock);
        self.phase = Phase::Failed;
        e.into()
    }

    /// Reads from the socket (at most one read per call), runs the handshake or opens
    /// records, and copies plaintext into `dst`. Handshake output is queued: call
    /// [`TlsStream::flush`] afterwards.
    pub fn read<S: Read + Write>(
        &mut self,
        sock: &mut S,
        dst: &mut [u8],
    ) -> io::Result<ReadStatus> {
        let mut copied = 0;
        let mut did_read = false;
        loop {
            if self.plain_start < self.plain_end {
                let n = (self.plain_end - self.plain_start).min(dst.len() - copied);
                dst[copied..copied + n]
                    .copy_from_slice(&self.inbuf[self.plain_start..self.plain_start + n]);
                copied += n;
                self.plain_start += n;
                if self.plain_start < self.plain_end {
                    return Ok(ReadStatus::Progress { copied, more: true });
                }
            }
            if self.peer_closed {
                return Ok(if copied > 0 {
                    ReadStatus::Progress { copied, more: true }
                } else {
                    ReadStatus::Eof
                });
            }
            let progressed = match self.phase {
                Phase::Handshake(_) => self.handshake_step(sock, dst, &mut copied)?,
                Phase::Established(_) => self.next_record(sock)?,
                Phase::Failed => {
                    return Err(StreamError::Record("connection already failed").into());
                }
            };
            if progressed {
                continue;
            }
            if did_read {
                return Ok(ReadStatus::Progress { copied, more: true });
            }
            did_read = true;
            // Room for the next record: move unprocessed bytes to the front.
            if self.in_start > 0 && self.plain_start >= self.plain_end {
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
                self.plain_start = 0;
                self.plain_end = 0;
            }
            if self.in_end == self.inbuf.len() {
                let e = StreamError::Buffer("record larger than the read buffer");
                return Err(self.fail(sock, ALERT_RECORD_OVERFLOW, e));
            }
            match sock.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => {
                    self.peer_closed = true;
                }
                Ok(n) => self.in_end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadStatus::Progress {
                        copied,
                        more: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    return Ok(ReadStatus::Progress { copied, more: true });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One step of the rustls handshake over `inbuf`. True if something happened (call
    /// again), false if more bytes from the peer are needed.
    fn handshake_step<S: Write>(
        &mut self,
        sock: &mut S,
        dst: &mut [u8],
        copied: &mut usize,
    ) -> io::Result<bool> {
        enum Next {
            Again,
            NeedData,
            Established,
            Failed(StreamError),
        }
        let Phase::Handshake(conn) = &mut self.phase else {
            return Ok(false);
        };
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(&mut self.inbuf[self.in_start..self.in_end]);
        let next = match state {
            Err(e) => Next::Failed(e.into()),
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                let mut r = enc.encode(&mut self.out[self.out_end..]);
                if let Err(EncodeError::InsufficientSize(s)) = &r
                    && self.out_start > 0
                    && self.out.len() - (self.out_end - self.out_start) >= s.required_size
                {
                    self.out.copy_within(self.out_start..self.out_end, 0);
                    self.out_end -= self.out_start;
                    self.out_start = 0;
                    r = enc.encode(&mut self.out[self.out_end..]);
                }
                match r {
                    Ok(n) => {
                        self.out_end += n;
                        Next::Again
                    }
                    Err(_) => Next::Failed(StreamError::Buffer("handshake flight too large")),
                }
            }
            // The bytes are in `out`; the caller flushes them.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Next::Again
            }
            Ok(ConnectionState::BlockedHandshake) => Next::NeedData,
            Ok(ConnectionState::WriteTraffic(_)) => Next::Established,
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                let mut next = Next::Again;
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) if rec.payload.len() <= dst.len() - *copied => {
                            dst[*copied..*copied + rec.payload.len()].copy_from_slice(rec.payload);
                            *copied += rec.payload.len();
                        }
                        Ok(_) => {
                            next = Next::Failed(StreamError::Buffer(
                                "too much data during the handshake",
                            ));
                            break;
                        }
                        Err(e) => {
                            next = Next::Failed(e.into());
                            break;
                        }
                    }
                }
                next
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                self.peer_closed = true;
                Next::Again
            }
            Ok(_) => Next::Failed(StreamError::Record("early data is not accepted")),
        };
        self.in_start += discard;
        match next {
            Next::Again => Ok(true),
            Next::NeedData => Ok(false),
            Next::Established => {
                // A TLS 1.3 server may send before the client's Finished arrived.
                if conn.is_handshaking() {
                    return Ok(false);
                }
                let Phase::Handshake(conn) = std::mem::replace(&mut self.phase, Phase::Failed)
                else {
                    return Ok(false);
                };
                match established(*conn) {
                    Ok(est) => {
                        self.phase = Phase::Established(Box::new(est));
                        Ok(true)
                    }
                    Err(e) => Err(self.fail(sock, ALERT_INTERNAL_ERROR, e)),
                }
            }
            Next::Failed(e) => {
                // rustls queued an alert for most errors: send it.
                let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
                if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state
                    && let Ok(n) = enc.encode(&mut self.out[self.out_end..])
                {
                    self.out_end += n;
                }
                let _ = self.flush(sock);
                tracing::debug!(error = %e, "TLS handshake error; closing the connection");
                self.phase = Phase::Failed;
                Err(e.into())
            }
        }
    }

    /// Opens the next complete record, if any. True if one was handled.
    fn next_record<S: Write>(&mut self, sock: &mut S) -> io::Result<bool> {
        let avail = self.in_end - self.in_start;
        if avail < HEADER {
            return Ok(false);
        }
        let h = &self.inbuf[self.in_start..self.in_start + HEADER];
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if h[1] != 3 {
            let e = StreamError::Record("not a TLS record");
            return Err(self.fail(sock, ALERT_DECODE_ERROR, e));
        }
        if len > MAX_BODY {
            let e = StreamError::Record("record too large");
            return Err(self.fail(sock, ALERT_RECORD_OVERFLOW, e));
        }
        if avail < HEADER + len {
            return Ok(false);
        }
        let start = self.in_start;
        self.in_start += HEADER + len;
        let Phase::Established(est) = &mut self.phase else {
            return Ok(false);
        };
        let opened = est.open(&mut self.inbuf[start..start + HEADER + len]);
        let (typ, a, b) = match opened {
            Ok(x) => x,
            Err((alert, e)) => return Err(self.fail(sock, alert, e)),
        };
        let (a, b) = (start + a, start + b);
        match typ {
            CT_APPLICATION_DATA => {
                self.plain_start = a;
                self.plain_end = b;
                Ok(true)
            }
            CT_ALERT => {
                let body = &self.inbuf[a..b];
                if body.len() != 2 {
                    let e = StreamError::Record("malformed alert");
                    return Err(self.fail(sock, ALERT_DECODE_ERROR, e));
                }
                match (body[0], body[1]) {
                    (_, ALERT_CLOSE_NOTIFY) => {
                        self.peer_closed = true;
                        Ok(true)
                    }
                    (_, ALERT_USER_CANCELED) => Ok(true),
                    (ALERT_WARNING, _) if est.format != Format::Tls13 => Ok(true),
                    (_, d) => {
                        tracing::debug!(alert = d, "TLS alert from the client; closing");
                        self.phase = Phase::Failed;
                        Err(StreamError::Alert(d).into())
                    }
                }
            }
            CT_HANDSHAKE => self.post_handshake(sock, a, b),
            // change_cipher_spec (only legal during a handshake) and unknown types.
            _ => {
                let e = StreamError::Record("unexpected record type");
                Err(self.fail(sock, ALERT_UNEXPECTED_MESSAGE, e))
            }
        }
    }

    /// Handshake messages after the handshake: TLS 1.3 KeyUpdate; a TLS 1.2
    /// renegotiation attempt is declined with a warning (as rustls does).
    fn post_handshake<S: Write>(&mut self, sock: &mut S, a: usize, b: usize) -> io::Result<bool> {
        let Phase::Established(est) = &mut self.phase else {
            return Ok(false);
        };
        let format = est.format;
        let mut at = a;
        while at < b {
            let m = &self.inbuf[at..b];
            if m.len() < 4 {
                let e = StreamError::Record("truncated handshake message");
                return Err(self.fail(sock, ALERT_DECODE_ERROR, e));
            }
            let len = (usize::from(m[1]) << 16) | (usize::from(m[2]) << 8) | usize::from(m[3]);
            if m.len() < 4 + len {
                let e = StreamError::Record("fragmented handshake message");
                return Err(self.fail(sock, ALERT_UNEXPECTED_MESSAGE, e));
            }
            match (format, m[0]) {
                (Format::Tls13, HS_KEY_UPDATE) if len == 1 && m[4] <= 1 => {
                    let requested = m[4] == 1;
                    let Phase::Established(est) = &mut self.phase else {
                        return Ok(false);
                    };
                    let rx = est
                        .kernel
                        .update_rx_secret()
                        .map_err(StreamError::from)
                        .and_then(|(seq, s)| Keys::new(seq, s));
                    match rx {
                        Ok(k) => est.rx = k,
                        Err(e) => return Err(self.fail(sock, ALERT_INTERNAL_ERROR, e)),
                    }
                    if requested && let Err(e) = self.update_tx_key() {
                        return Err(self.fail(sock, ALERT_INTERNAL_ERROR, e));
                    }
                }
                (Format::Tls12Gcm | Format::Tls12Chacha, HS_CLIENT_HELLO) => {
                    if self.reserve_out(2 + MAX_OVERHEAD)
                        && let Err(e) =
                            self.seal_record(CT_ALERT, &[ALERT_WARNING, ALERT_NO_RENEGOTIATION])
                    {
                        return Err(self.fail(sock, ALERT_INTERNAL_ERROR, e));
                    }
                }
                _ => {
                    let e = StreamError::Record("unexpected handshake message");
                    return Err(self.fail(sock, ALERT_UNEXPECTED_MESSAGE, e));
                }
            }
            at += 4 + len;
        }
        Ok(true)
    }
}

/// Takes the traffic secrets out of a completed handshake.
fn established(conn: UnbufferedServerConnection) -> Result<Established, StreamError> {
    let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
    let (format, limit) = match kernel.negotiated_cipher_suite() {
        SupportedCipherSuite::Tls13(s) => (Format::Tls13, s.common.confidentiality_limit),
        SupportedCipherSuite::Tls12(s) => {
            let f = match secrets.tx.1 {
                ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Format::Tls12Chacha,
                _ => Format::Tls12Gcm,
            };
            (f, s.common.confidentiality_limit)
        }
    };
    Ok(Established {
        kernel,
        format,
        tx: Keys::new(secrets.tx.0, secrets.tx.1)?,
        rx: Keys::new(secrets.rx.0, secrets.rx.1)?,
        tx_limit: limit.saturating_sub(LIMIT_MARGIN),
    })
}
