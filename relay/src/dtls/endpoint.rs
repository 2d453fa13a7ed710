//! One DTLS association (one per participant connection): the handshake, the peer's
//! fingerprint check, the SRTP keying-material export, and application data for SCTP.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openssl::ssl::{ErrorCode, Ssl, SslStream, SslVerifyMode};

use super::certificate::{Certificate, sha256_fingerprint};
use super::queue::{DatagramFifo, MemoryChannel};
use super::timer::{self, TimeoutOutcome};
use super::{DtlsError, MTU, SRTP_PROFILES};
use crate::srtp::{DTLS_SRTP_EXPORTER_LABEL, Profile};

/// Which side of the DTLS handshake we play (from the SDP `a=setup` negotiation: we are
/// the server when we answered `setup:passive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We wait for the ClientHello.
    Server,
    /// We send the ClientHello.
    Client,
}

/// The longest keying material of any SRTP profile (AES-CM: 2 × (16 + 14) bytes).
pub const MAX_KEYING_MATERIAL: usize = 60;

/// DTLS-SRTP keying material exported after the handshake (`client_write_key |
/// server_write_key | client_write_salt | server_write_salt`, RFC 5764 section 4.2), of
/// the negotiated profile's length. Its `Debug` form hides the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyingMaterial {
    bytes: [u8; MAX_KEYING_MATERIAL],
    len: usize,
}

impl KeyingMaterial {
    /// The material: `Profile::keying_material_len()` bytes, to pass to
    /// [`crate::srtp::session_keys`].
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for KeyingMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyingMaterial({} bytes)", self.len)
    }
}

/// What happened on the association; read with [`DtlsEndpoint::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlsEvent {
    /// The handshake completed and the peer's certificate matched the expected fingerprint.
    /// `profile` is the use_srtp profile id ([`Profile::from_id`] knows it); the SRTP keys
    /// are `srtp::session_keys(profile, keying_material.as_bytes(), we_are_client)`.
    Connected {
        /// The negotiated SRTP protection profile id (0x0007 GCM or 0x0001 AES-CM).
        profile: u16,
        /// The exported keying material.
        keying_material: KeyingMaterial,
        /// Whether we were the DTLS client.
        we_are_client: bool,
    },
    /// An application-data record of this many bytes arrived; fetch it with
    /// [`DtlsEndpoint::read_application_data`].
    ApplicationData(usize),
    /// The peer closed the association (close_notify).
    Closed,
    /// The handshake or the association failed; the endpoint ignores further input. Any
    /// alert OpenSSL wrote is still in [`DtlsEndpoint::poll_transmit`].
    Failed(DtlsError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Connected,
    Closed,
    Failed,
}

/// Smallest datagram that can hold a DTLS record (its header is 13 bytes).
const RECORD_HEADER_LEN: usize = 13;
/// Largest plaintext of one record.
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Application-data records held for the caller before new ones are dropped.
const MAX_APP_RECORDS: usize = super::queue::MAX_QUEUED;

/// A sans-IO DTLS 1.2 endpoint over OpenSSL: datagrams and time in, datagrams and events
/// out. See the [module docs](super) for the timer's relation to the system clock.
pub struct DtlsEndpoint {
    stream: SslStream<MemoryChannel>,
    role: Role,
    expected: [u8; 32],
    /// Set by the verify callback when the peer's certificate has another fingerprint.
    mismatch: Arc<Mutex<Option<[u8; 32]>>>,
    state: State,
    events: VecDeque<DtlsEvent>,
    app_in: DatagramFifo,
    scratch: Box<[u8]>,
    last_now: Option<Instant>,
    dropped_input: u64,
}

impl std::fmt::Debug for DtlsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsEndpoint")
            .field("role", &self.role)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl DtlsEndpoint {
    /// An endpoint offering both SRTP profiles ([`SRTP_PROFILES`]) that accepts only a
    /// peer certificate whose SHA-256 fingerprint is `expected_remote_fingerprint`. A
    /// client queues its ClientHello at once (read it with [`poll_transmit`]).
    ///
    /// [`poll_transmit`]: DtlsEndpoint::poll_transmit
    pub fn new(
        certificate: &Certificate,
        role: Role,
        expected_remote_fingerprint: [u8; 32],
    ) -> Result<DtlsEndpoint, DtlsError> {
        Self::with_srtp_profiles(
            certificate,
            role,
            expected_remote_fingerprint,
            SRTP_PROFILES,
        )
    }

    /// Like [`new`](DtlsEndpoint::new) with another use_srtp profile list, in OpenSSL's
    /// colon-separated form (e.g. `"SRTP_AES128_CM_SHA1_80"`).
    pub fn with_srtp_profiles(
        certificate: &Certificate,
        role: Role,
        expected_remote_fingerprint: [u8; 32],
        srtp_profiles: &str,
    ) -> Result<DtlsEndpoint, DtlsError> {
        let mut ssl = Ssl::new(certificate.context())?;
        ssl.set_mtu(MTU)?;
        if srtp_profiles != SRTP_PROFILES {
            ssl.set_tlsext_use_srtp(srtp_profiles)?;
        }
        let mismatch = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&mismatch);
        let expected = expected_remote_fingerprint;
        let mode = match role {
            Role::Server => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            Role::Client => SslVerifyMode::PEER,
        };
        // Self-signed certificates: chain errors are ignored, and the leaf (depth 0) is
        // accepted exactly when its fingerprint is the expected one.
        ssl.set_verify_callback(mode, move |_chain_ok, ctx| {
            if ctx.error_depth() != 0 {
                return true;
            }
            let Some(cert) = ctx.current_cert() else {
                return false;
            };
            match sha256_fingerprint(cert) {
                Ok(fp) if fp == expected => true,
                Ok(fp) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
                    false
                }
                Err(_) => false,
            }
        });
        match role {
            Role::Server => ssl.set_accept_state(),
            Role::Client => ssl.set_connect_state(),
        }
        let stream = SslStream::new(ssl, MemoryChannel::new())?;
        let mut endpoint = DtlsEndpoint {
            stream,
            role,
            expected,
            mismatch,
            state: State::Handshaking,
            events: VecDeque::new(),
            app_in: DatagramFifo::default(),
            scratch: vec![0u8; MAX_PLAINTEXT].into_boxed_slice(),
            last_now: None,
            dropped_input: 0,
        };
        if role == Role::Client {
            endpoint.drive();
        }
        Ok(endpoint)
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the handshake has completed and the association is open.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the association has ended (failed or closed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Failed | State::Closed)
    }

    /// Datagrams dropped: input that cannot be DTLS (shorter than a record header, first
    /// byte outside RFC 7983's 20..=63) or arriving after the end, plus output or
    /// application data that found its queue full or the caller's buffer too small.
    pub fn dropped_datagrams(&self) -> u64 {
        self.dropped_input + self.stream.get_ref().outgoing.dropped() + self.app_in.dropped()
    }

    /// Feeds one received datagram. Datagrams that are not DTLS records are dropped;
    /// records OpenSSL finds invalid are discarded by it (RFC 6347 section 4.1.2.7).
    pub fn handle_datagram(&mut self, datagram: &[u8], now: Instant) {
        self.last_now = Some(now);
        let plausible = datagram.len() >= RECORD_HEADER_LEN && (20..=63).contains(&datagram[0]);
        if !plausible || self.is_finished() {
            self.dropped_input += 1;
            return;
        }
        self.stream.get_mut().set_incoming(datagram);
        self.drive();
        self.stream.get_mut().discard_incoming();
    }

    /// The next datagram to send, copied into `out`; its length. A datagram longer than
    /// `out` is dropped (never happens with an `out` of [`MTU`] bytes or more).
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        self.stream.get_mut().outgoing.pop_into(out)
    }

    /// When [`handle_timeout`](DtlsEndpoint::handle_timeout) should next be called, or
    /// `None` when no retransmission is pending. Computed from OpenSSL's remaining time on
    /// the system clock, anchored at the last `now` given (or the current time if none was).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        let remaining = timer::remaining(self.stream.ssl())?;
        let anchor = self.last_now.unwrap_or_else(Instant::now);
        Some(anchor + remaining)
    }

    /// Lets OpenSSL retransmit its last flight if its timer has expired; after too many
    /// timeouts the handshake fails with [`DtlsError::Timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        if self.is_finished() {
            return;
        }
        if timer::handle(self.stream.ssl()) == TimeoutOutcome::GaveUp
            && self.state == State::Handshaking
        {
            self.fail(DtlsError::Timeout);
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.events.pop_front()
    }

    /// Copies the oldest received application-data record into `out`; its length. A
    /// record longer than `out` is dropped.
    pub fn read_application_data(&mut self, out: &mut [u8]) -> Option<usize> {
        self.app_in.pop_into(out)
    }

    /// Sends `data` as one application-data record (queued for [`poll_transmit`]).
    ///
    /// [`poll_transmit`]: DtlsEndpoint::poll_transmit
    pub fn send_application_data(&mut self, data: &[u8]) -> Result<(), DtlsError> {
        if self.state != State::Connected {
            return Err(DtlsError::NotConnected);
        }
        match self.stream.ssl_write(data) {
            Ok(_) => Ok(()),
            Err(e) => Err(DtlsError::OpenSsl(e.to_string())),
        }
    }

    /// Sends close_notify (if connected) and ends the association; no event follows.
    pub fn close(&mut self) {
        if self.state == State::Connected {
            // A failure to queue close_notify changes nothing: the association ends anyway.
            let _ = self.stream.shutdown();
        }
        if !self.is_finished() {
            self.state = State::Closed;
        }
    }

    /// Runs OpenSSL on whatever input is pending.
    fn drive(&mut self) {
        if self.state == State::Handshaking {
            match self.stream.do_handshake() {
                Ok(()) => self.on_handshake_done(),
                Err(e) if is_retry(e.code()) => return,
                Err(e) => {
                    let error = self.handshake_error(&e);
                    self.fail(error);
                    return;
                }
            }
        }
        if self.state == State::Connected {
            self.read_records();
        }
    }

    /// Reads every buffered application-data record (and lets OpenSSL answer a peer's
    /// retransmitted final flight).
    fn read_records(&mut self) {
        loop {
            match self.stream.ssl_read(&mut self.scratch) {
                Ok(n) => {
                    if self.app_in.len() < MAX_APP_RECORDS {
                        self.events.push_back(DtlsEvent::ApplicationData(n));
                    }
                    self.app_in.push(&self.scratch[..n]);
                }
                Err(e) if is_retry(e.code()) => return,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    self.state = State::Closed;
                    self.events.push_back(DtlsEvent::Closed);
                    return;
                }
                Err(e) => {
                    self.fail(DtlsError::Handshake(e.to_string()));
                    return;
                }
            }
        }
    }

    fn on_handshake_done(&mut self) {
        match self.connected_event() {
            Ok(event) => {
                self.state = State::Connected;
                self.events.push_back(event);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Checks the peer certificate once more and exports the SRTP keying material.
    fn connected_event(&self) -> Result<DtlsEvent, DtlsError> {
        let ssl = self.stream.ssl();
        let peer = ssl.peer_certificate().ok_or(DtlsError::NoPeerCertificate)?;
        let received = sha256_fingerprint(&peer)?;
        if received != self.expected {
            return Err(DtlsError::FingerprintMismatch {
                expected: self.expected,
                received,
            });
        }
        let selected = ssl
            .selected_srtp_profile()
            .ok_or(DtlsError::NoSrtpProfile)?;
        let raw = selected.id().as_raw();
        let id = u16::try_from(raw).map_err(|_| DtlsError::UnsupportedSrtpProfile(u16::MAX))?;
        let profile = Profile::from_id(id).ok_or(DtlsError::UnsupportedSrtpProfile(id))?;
        let len = profile.keying_material_len();
        let mut keying_material = KeyingMaterial {
            bytes: [0u8; MAX_KEYING_MATERIAL],
            len,
        };
        let out = keying_material
            .bytes
            .get_mut(..len)
            .ok_or(DtlsError::UnsupportedSrtpProfile(id))?;
        ssl.export_keying_material(out, DTLS_SRTP_EXPORTER_LABEL, None)?;
        Ok(DtlsEvent::Connected {
            profile: id,
            keying_material,
            we_are_client: self.role == Role::Client,
        })
    }

    fn handshake_error(&self, e: &openssl::ssl::Error) -> DtlsError {
        let received = *self.mismatch.lock().unwrap_or_else(|p| p.into_inner());
        match received {
            Some(received) => DtlsError::FingerprintMismatch {
                expected: self.expected,
                received,
            },
            None => DtlsError::Handshake(e.to_string()),
        }
    }

    fn fail(&mut self, error: DtlsError) {
        self.state = State::Failed;
        self.events.push_back(DtlsEvent::Failed(error));
    }
}

fn is_retry(code: ErrorCode) -> bool {
    code == ErrorCode::WANT_READ || code == ErrorCode::WANT_WRITE
}
