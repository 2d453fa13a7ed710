//! One browser `RTCPeerConnection`'s transport to the SFU, sans-IO: everything between a
//! UDP (or RFC 6544 TCP) datagram and a plain RTP/RTCP packet.
//!
//! Why it exists: the SFU engine deals in plain RTP and RTCP; between it and the wire sit
//! three protocols multiplexed on one 5-tuple (RFC 7983): ICE-lite connectivity checks
//! ([`crate::ice`]), the DTLS handshake that authenticates the browser by its SDP
//! fingerprint ([`crate::dtls`]) and SRTP/SRTCP ([`crate::srtp`]) keyed by that handshake.
//! [`PeerTransport`] glues them together for one transport so the engine sees datagrams in,
//! plain packets and datagrams to send out, and two events: [`TransportEvent::Connected`]
//! and [`TransportEvent::Disconnected`].
//!
//! Roles: we are ICE-lite (the browser is the controlling full agent and nominates) and
//! the DTLS server (`a=setup:passive`); the browser is the DTLS client.
//!
//! Rules (decisions the engine can rely on):
//! - **Demux** by the first byte (RFC 7983, [`crate::rtp::classify`]): STUN goes to the
//!   ICE agent, DTLS and SRTP/SRTCP are accepted only from an address ICE has validated —
//!   a valid pair (a successful Binding from that source to that local address over that
//!   transport) whose consent (RFC 7675) still holds. Anything else is dropped and
//!   counted. RTP and RTCP are further accepted only once connected.
//! - **Connected** is announced once, when ICE has a selected (nominated) pair *and* DTLS
//!   has completed with the SDP fingerprint and the SRTP sessions are keyed.
//! - **Disconnected** is terminal: consent expiry of every nominated pair, a DTLS failure
//!   (fingerprint mismatch, handshake error or timeout), the browser's close_notify, or
//!   [`PeerTransport::close`]. After it, every datagram is dropped, nothing is protected,
//!   and there is no media destination; the engine drops the transport (an ICE restart
//!   arrives as a new transport with new credentials).
//! - **Destinations**: STUN answers go back to the datagram's source; DTLS flights go to
//!   where the last accepted DTLS datagram came from (else the selected pair); media goes
//!   to [`PeerTransport::media_destination`]. Addresses are returned as the caller gave
//!   them (a dual-stack socket's IPv4-mapped form stays mapped), except the media
//!   destination, which is the selected pair's canonical (IPv4-mapped folded) address.
//! - **Time**: the ICE agent counts microseconds from an `Instant` taken at
//!   [`PeerTransport::new`]; DTLS retransmission follows OpenSSL's real clock (see
//!   [`crate::dtls`]), so callers pass real `Instant::now()` values.
//! - **No allocation per packet**: SRTP unprotects and protects in place in the caller's
//!   buffer; STUN answers go through a fixed ring allocated at set-up; a check on a known
//!   pair does not allocate (ICE agent guarantee).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dtls::{Certificate, DtlsEndpoint, DtlsError, DtlsEvent, KeyingMaterial, Role};
use crate::ice::{IceError, IceEvent, IceLite, Pair, Transport};
use crate::rtp::{Demux, classify};
use crate::srtp::{Profile, SrtpError, SrtpSession, session_keys};

use super::control::TransportSpec;

#[cfg(test)]
mod tests;

/// Room for one STUN answer (the ICE agent's answers fit in 548 bytes).
const STUN_SLOT: usize = 548;
/// STUN answers held until [`PeerTransport::poll_transmit`] takes them; beyond this the
/// newest is dropped (a browser sends a few checks per pair per second).
const STUN_QUEUE: usize = 8;
/// Most events kept unread (there are at most two in a transport's life).
const MAX_EVENTS: usize = 4;

/// Why a transport could not be created, or a packet not be protected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The ICE credentials of the spec break RFC 8839.
    #[error("ICE: {0}")]
    Ice(#[from] IceError),
    /// OpenSSL refused to set up the DTLS endpoint.
    #[error("DTLS: {0}")]
    Dtls(#[from] DtlsError),
    /// Media cannot be protected yet (or any more): the transport is not connected.
    #[error("the transport is not connected")]
    NotConnected,
    /// SRTP refused the packet (malformed, no room for the tag, too many SSRCs, index
    /// exhausted).
    #[error("SRTP: {0}")]
    Srtp(#[from] SrtpError),
}

/// What a datagram turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Nothing for the caller (STUN handled, DTLS handshake progressed: check
    /// [`PeerTransport::poll_transmit`]), or dropped (counted in [`TransportStats`]).
    Handled,
    /// Decrypted RTP now in `buf[..len]` (SRTP unprotected in place).
    Rtp {
        /// Length of the plain RTP packet.
        len: usize,
    },
    /// Decrypted compound RTCP in `buf[..len]`.
    Rtcp {
        /// Length of the plain compound RTCP packet.
        len: usize,
    },
}

/// A change of the transport's state, for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEvent {
    /// ICE has a nominated pair and DTLS completed with the expected fingerprint: SRTP is
    /// keyed and media can flow. Announced once.
    Connected,
    /// The transport is gone for good (consent expired, DTLS failed, closed). Announced
    /// once; the engine should drop the transport.
    Disconnected,
}

/// Counters of one transport (what happened to its datagrams).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// STUN datagrams the ICE agent answered.
    pub stun_in: u64,
    /// DTLS datagrams fed to the DTLS endpoint (from validated sources).
    pub dtls_in: u64,
    /// SRTP packets unprotected.
    pub rtp_in: u64,
    /// SRTCP packets unprotected.
    pub rtcp_in: u64,
    /// SRTP/SRTCP packets whose authentication tag did not verify.
    pub srtp_auth_failures: u64,
    /// SRTP/SRTCP packets replayed or older than the replay window.
    pub srtp_replays: u64,
    /// Every other dropped datagram: STUN the agent refused, DTLS or media from an
    /// unvalidated source, media before connected, malformed SRTP, unknown first byte,
    /// anything after disconnection, answers that found the queue full.
    pub dropped: u64,
    /// RTP packets protected for sending.
    pub rtp_out: u64,
    /// RTCP packets protected for sending.
    pub rtcp_out: u64,
}

/// Fixed ring of STUN answers waiting to be sent, allocated once.
struct StunQueue {
    slots: Box<[[u8; STUN_SLOT]; STUN_QUEUE]>,
    meta: [(usize, SocketAddr); STUN_QUEUE],
    head: usize,
    len: usize,
}

impl StunQueue {
    fn new() -> StunQueue {
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        StunQueue {
            slots: Box::new([[0u8; STUN_SLOT]; STUN_QUEUE]),
            meta: [(0, none); STUN_QUEUE],
            head: 0,
            len: 0,
        }
    }

    /// The slot the next answer is written into, if there is room.
    fn next_slot(&mut self) -> Option<&mut [u8; STUN_SLOT]> {
        if self.len == STUN_QUEUE {
            return None;
        }
        let i = (self.head + self.len) % STUN_QUEUE;
        self.slots.get_mut(i)
    }

    /// Commits the answer written into [`StunQueue::next_slot`].
    fn commit(&mut self, len: usize, to: SocketAddr) {
        let i = (self.head + self.len) % STUN_QUEUE;
        if let Some(m) = self.meta.get_mut(i) {
            *m = (len, to);
            self.len += 1;
        }
    }

    /// Copies the oldest answer into `out`; one that does not fit is dropped (counted by
    /// the caller through the returned flag).
    fn pop_into(&mut self, out: &mut [u8]) -> Option<Result<(usize, SocketAddr), ()>> {
        if self.len == 0 {
            return None;
        }
        let i = self.head;
        self.head = (self.head + 1) % STUN_QUEUE;
        self.len -= 1;
        let (n, to) = self.meta.get(i).copied()?;
        let src = self.slots.get(i).and_then(|s| s.get(..n));
        match (src, out.get_mut(..n)) {
            (Some(src), Some(dst)) => {
                dst.copy_from_slice(src);
                Some(Ok((n, to)))
            }
            _ => Some(Err(())),
        }
    }
}

/// The two SRTP sessions of a keyed transport.
struct Srtp {
    /// Protects what we send (our DTLS-server write key).
    local: SrtpSession,
    /// Unprotects what the browser sends.
    remote: SrtpSession,
}

/// One browser peer connection's transport: ICE-lite + DTLS server + SRTP, sans-IO. See
/// the [module docs](self) for the rules.
pub struct PeerTransport {
    ice: IceLite,
    dtls: DtlsEndpoint,
    srtp: Option<Srtp>,
    /// Where ICE time (µs) starts.
    base: Instant,
    /// The latest `now` given (for [`PeerTransport::poll_timeout`]).
    last_now: Instant,
    /// Where DTLS flights go: the source of the last accepted DTLS datagram.
    dtls_destination: Option<SocketAddr>,
    stun_out: StunQueue,
    announced: bool,
    disconnected: bool,
    events: VecDeque<TransportEvent>,
    stats: TransportStats,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("local_ufrag", &self.ice.local_ufrag())
            .field("selected", &self.ice.selected())
            .field("dtls", &self.dtls)
            .field("connected", &self.is_connected())
            .field("disconnected", &self.disconnected)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Folds an IPv4-mapped IPv6 address to the IPv4 address it is (as the ICE agent's pairs
/// hold them).
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl PeerTransport {
    /// A transport waiting for the browser's checks: ICE-lite with the spec's credentials
    /// (both sides'), a DTLS server presenting `cert` that accepts only the certificate
    /// whose SHA-256 fingerprint the spec carries.
    pub fn new(spec: &TransportSpec, cert: &Certificate) -> Result<Self, TransportError> {
        let mut ice = IceLite::new(&spec.local_ufrag, &spec.local_pwd)?;
        ice.set_remote(&spec.remote_ufrag, &spec.remote_pwd)?;
        let dtls = DtlsEndpoint::new(cert, Role::Server, spec.remote_fingerprint)?;
        let now = Instant::now();
        Ok(PeerTransport {
            ice,
            dtls,
            srtp: None,
            base: now,
            last_now: now,
            dtls_destination: None,
            stun_out: StunQueue::new(),
            announced: false,
            disconnected: false,
            events: VecDeque::with_capacity(MAX_EVENTS),
            stats: TransportStats::default(),
        })
    }

    /// Our ICE ufrag (the engine indexes transports by it: STUN USERNAME "ours:theirs").
    pub fn local_ufrag(&self) -> &str {
        self.ice.local_ufrag()
    }

    /// ICE time: microseconds since [`PeerTransport::new`] (0 for an earlier `now`).
    fn ice_time(&self, now: Instant) -> u64 {
        let us = now.saturating_duration_since(self.base).as_micros();
        u64::try_from(us).unwrap_or(u64::MAX)
    }

    /// Whether ICE validated `source` → `local` over `transport` and consent holds.
    fn validated(
        &self,
        source: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        now_us: u64,
    ) -> bool {
        let pair = Pair {
            local: canonical(local),
            remote: canonical(source),
            transport,
        };
        self.ice.may_send(&pair, now_us)
    }

    /// One datagram (`buf[..len]`) from `source` that arrived on our address `local`
    /// over `transport`, at `now` (monotonic). RTP and RTCP are unprotected in place.
    /// Never panics; anything unwanted is dropped and counted.
    pub fn handle_datagram(
        &mut self,
        buf: &mut [u8],
        len: usize,
        source: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        now: Instant,
    ) -> Received {
        if now > self.last_now {
            self.last_now = now;
        }
        let now_us = self.ice_time(now);
        let Some(datagram) = buf.get_mut(..len) else {
            self.stats.dropped += 1;
            return Received::Handled;
        };
        if self.disconnected {
            self.stats.dropped += 1;
            return Received::Handled;
        }
        let received = match classify(datagram) {
            Demux::Stun => {
                self.on_stun(datagram, source, local, transport, now_us);
                Received::Handled
            }
            Demux::Dtls => {
                if self.validated(source, local, transport, now_us) {
                    self.stats.dtls_in += 1;
                    self.dtls_destination = Some(source);
                    self.dtls.handle_datagram(datagram, now);
                    self.on_dtls_events();
                } else {
                    self.stats.dropped += 1;
                }
                Received::Handled
            }
            kind @ (Demux::Rtp | Demux::Rtcp) => self.on_media(
                datagram,
                kind == Demux::Rtcp,
                source,
                local,
                transport,
                now_us,
            ),
            Demux::Other => {
                self.stats.dropped += 1;
                Received::Handled
            }
        };
        self.on_ice_events();
        received
    }

    fn on_stun(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        now_us: u64,
    ) {
        let Some(out) = self.stun_out.next_slot() else {
            // No room for the answer: drop the check unanswered (the browser retries).
            self.stats.dropped += 1;
            return;
        };
        match self
            .ice
            .handle_stun(datagram, source, local, transport, now_us, out)
        {
            Ok(reply) => {
                self.stats.stun_in += 1;
                self.stun_out.commit(reply.len(), source);
            }
            Err(_) => self.stats.dropped += 1,
        }
    }

    fn on_media(
        &mut self,
        datagram: &mut [u8],
        rtcp: bool,
        source: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        now_us: u64,
    ) -> Received {
        if !self.is_connected() || !self.validated(source, local, transport, now_us) {
            self.stats.dropped += 1;
            return Received::Handled;
        }
        let Some(srtp) = self.srtp.as_mut() else {
            self.stats.dropped += 1;
            return Received::Handled;
        };
        let result = if rtcp {
            srtp.remote.unprotect_rtcp(datagram)
        } else {
            srtp.remote.unprotect_rtp(datagram)
        };
        match result {
            Ok(len) if rtcp => {
                self.stats.rtcp_in += 1;
                Received::Rtcp { len }
            }
            Ok(len) => {
                self.stats.rtp_in += 1;
                Received::Rtp { len }
            }
            Err(SrtpError::AuthFailed) => {
                self.stats.srtp_auth_failures += 1;
                Received::Handled
            }
            Err(SrtpError::Replayed | SrtpError::TooOld) => {
                self.stats.srtp_replays += 1;
                Received::Handled
            }
            Err(_) => {
                self.stats.dropped += 1;
                Received::Handled
            }
        }
    }

    /// Acts on the ICE agent's events: consent loss ends the transport; a selection may
    /// complete the connection.
    fn on_ice_events(&mut self) {
        while let Some(event) = self.ice.poll_event() {
            if event == IceEvent::Disconnected {
                self.disconnect();
            }
        }
        self.maybe_connected();
    }

    /// Acts on the DTLS endpoint's events: keys SRTP on Connected, ends the transport on
    /// failure or close, discards application data (no data channels here).
    fn on_dtls_events(&mut self) {
        while let Some(event) = self.dtls.poll_event() {
            match event {
                DtlsEvent::Connected {
                    profile,
                    keying_material,
                    we_are_client,
                } => match key_srtp(profile, &keying_material, we_are_client) {
                    Some(srtp) => self.srtp = Some(srtp),
                    None => {
                        self.dtls.close();
                        self.disconnect();
                    }
                },
                DtlsEvent::ApplicationData(_) => {
                    // An empty buffer drops every queued record.
                    let _ = self.dtls.read_application_data(&mut []);
                }
                DtlsEvent::Closed | DtlsEvent::Failed(_) => self.disconnect(),
            }
        }
        self.maybe_connected();
    }

    fn maybe_connected(&mut self) {
        if !self.announced
            && !self.disconnected
            && self.srtp.is_some()
            && self.ice.selected().is_some()
        {
            self.announced = true;
            self.push_event(TransportEvent::Connected);
        }
    }

    fn disconnect(&mut self) {
        if self.disconnected {
            return;
        }
        self.disconnected = true;
        self.srtp = None;
        self.push_event(TransportEvent::Disconnected);
    }

    fn push_event(&mut self, event: TransportEvent) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The next datagram to send (STUN answers first, then DTLS flights), written into
    /// `out`: its length and destination. Give `out` at least 1200 bytes (the DTLS MTU);
    /// a datagram that does not fit is dropped and counted.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        while let Some(answer) = self.stun_out.pop_into(out) {
            match answer {
                Ok(sent) => return Some(sent),
                Err(()) => self.stats.dropped += 1,
            }
        }
        let len = self.dtls.poll_transmit(out)?;
        let to = self
            .dtls_destination
            .or_else(|| self.ice.selected().map(|p| p.remote));
        match to {
            Some(to) => Some((len, to)),
            None => {
                // Nowhere to send (cannot happen for a server: it only answers). Drop it
                // and everything queued behind it.
                self.stats.dropped += 1;
                while self.dtls.poll_transmit(out).is_some() {
                    self.stats.dropped += 1;
                }
                None
            }
        }
    }

    /// Where media goes now (the selected nominated pair's remote address), if ICE
    /// consent allows sending at `now` and the transport has not disconnected.
    pub fn media_destination(&self, now: Instant) -> Option<SocketAddr> {
        if self.disconnected {
            return None;
        }
        let pair = self.ice.selected()?;
        self.ice
            .may_send(&pair, self.ice_time(now))
            .then_some(pair.remote)
    }

    /// The selected pair (local address, remote address, transport), if any: tells the
    /// engine which socket media leaves from.
    pub fn selected_pair(&self) -> Option<Pair> {
        self.ice.selected()
    }

    /// Encrypts in place: plain RTP in `buf[..len]` → SRTP; the new length. `buf` must
    /// have room for the tag (`len + 16` always suffices). Error when not connected.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, TransportError> {
        let srtp = self.keyed_session()?;
        let n = srtp.protect_rtp(buf, len)?;
        self.stats.rtp_out += 1;
        Ok(n)
    }

    /// Encrypts in place: plain compound RTCP in `buf[..len]` → SRTCP; the new length.
    /// `buf` must have room for the index and tag (`len + 20` always suffices).
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, TransportError> {
        let srtp = self.keyed_session()?;
        let n = srtp.protect_rtcp(buf, len)?;
        self.stats.rtcp_out += 1;
        Ok(n)
    }

    fn keyed_session(&mut self) -> Result<&mut SrtpSession, TransportError> {
        if !self.is_connected() {
            return Err(TransportError::NotConnected);
        }
        self.srtp
            .as_mut()
            .map(|s| &mut s.local)
            .ok_or(TransportError::NotConnected)
    }

    /// Whether [`TransportEvent::Connected`] was announced and the transport has not
    /// disconnected since.
    pub fn is_connected(&self) -> bool {
        self.announced && !self.disconnected && self.srtp.is_some()
    }

    /// The negotiated SRTP profile, once keyed.
    pub fn srtp_profile(&self) -> Option<Profile> {
        self.srtp.as_ref().map(|s| s.local.profile())
    }

    /// When [`PeerTransport::handle_timeout`] should next be called: the earlier of the
    /// DTLS retransmission timer and the selected pairs' consent expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.disconnected {
            return None;
        }
        let ice = self
            .ice
            .poll_timeout(self.ice_time(self.last_now))
            .map(|us| self.base + Duration::from_micros(us));
        let dtls = self.dtls.poll_timeout();
        match (ice, dtls) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies timers at `now`: consent expiry (→ [`TransportEvent::Disconnected`] when
    /// no nominated pair has consent left) and DTLS retransmission (check
    /// [`PeerTransport::poll_transmit`]) or handshake timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now > self.last_now {
            self.last_now = now;
        }
        if self.disconnected {
            return;
        }
        self.ice.handle_timeout(self.ice_time(now));
        self.on_ice_events();
        if !self.disconnected {
            self.dtls.handle_timeout(now);
            self.on_dtls_events();
        }
    }

    /// Ends the transport: sends DTLS close_notify (take it with
    /// [`PeerTransport::poll_transmit`]) and announces [`TransportEvent::Disconnected`].
    pub fn close(&mut self) {
        self.dtls.close();
        self.disconnect();
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<TransportEvent> {
        self.events.pop_front()
    }

    /// The counters.
    pub fn stats(&self) -> TransportStats {
        self.stats
    }
}

/// The two SRTP sessions from DTLS-SRTP keying material; `None` for a profile SRTP does
/// not support or material of the wrong length (the DTLS endpoint never produces either).
fn key_srtp(profile: u16, material: &KeyingMaterial, we_are_client: bool) -> Option<Srtp> {
    let profile = Profile::from_id(profile)?;
    let (local, remote) = session_keys(profile, material.as_bytes(), we_are_client).ok()?;
    Some(Srtp {
        local: SrtpSession::new(&local).ok()?,
        remote: SrtpSession::new(&remote).ok()?,
    })
}
