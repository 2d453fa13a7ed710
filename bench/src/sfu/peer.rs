//! One synthetic peer connection to the SFU, as a browser's full ICE agent would run it:
//! STUN Binding checks (controlling, USE-CANDIDATE, short-term credentials) from one UDP
//! socket until the SFU answers, then a consent check every 2.5 s; a DTLS handshake
//! (client, or server when the SFU's answer asks for it) checking the SFU's certificate
//! fingerprint; then SRTP/SRTCP both ways.
//!
//! Exists so the load client's publishers and subscribers exercise the same transport
//! code paths a browser does. The socket is non-blocking: the owner polls it.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use relay::dtls::{Certificate, DtlsEndpoint, DtlsEvent, Role};
use relay::rtp::{Demux, classify};
use relay::srtp::{MAX_SSRCS, MasterKey, Profile, SrtpError, SrtpSession, session_keys};
use relay::stun::{Attribute, Class, Message, MessageBuilder, MessageType, TransactionId};

use super::sdp::RemoteParams;

/// Consent freshness interval (RFC 7675 suggests 5 s ± 50 %; browsers send ~every 2.5 s).
const CONSENT_INTERVAL: Duration = Duration::from_millis(2500);
/// Check retransmission while ICE has not succeeded.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Largest datagram.
pub const MTU: usize = 1500;
/// Receive SRTP contexts per connection (`MAX_SSRCS` SSRCs each).
const MAX_RX_SESSIONS: usize = 8;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcState {
    /// Sending checks, no answer yet.
    Checking,
    /// ICE succeeded, DTLS handshaking.
    Handshaking,
    /// SRTP keyed: media flows.
    Connected,
    /// DTLS failed or closed.
    Failed,
}

/// What a received datagram was, for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Nothing for the owner (STUN, DTLS, dropped).
    Nothing,
    /// An RTP packet, unprotected: `buf[..n]`.
    Rtp(usize),
    /// An RTCP compound, unprotected: `buf[..n]`.
    Rtcp(usize),
    /// SRTP/SRTCP that did not authenticate or decrypt.
    Invalid,
}

/// One peer connection.
pub struct PeerConn {
    /// The socket (connected to the SFU's candidate, non-blocking).
    pub socket: UdpSocket,
    local_ufrag: String,
    local_pwd: String,
    remote: RemoteParams,
    certificate: Certificate,
    tiebreaker: u64,
    txid: [u8; 12],
    next_check: Instant,
    /// Where the connection is.
    pub state: PcState,
    dtls: Option<DtlsEndpoint>,
    tx: Option<SrtpSession>,
    /// Receive contexts: `relay::srtp` tracks at most `MAX_SSRCS` SSRCs per session
    /// (64 when this was written, 4096 since), and Janus sends a receiver one SSRC per
    /// forwarded stream (every other publisher's audio: 199 in a 200-participant room),
    /// so a new session from the same master key takes each further `MAX_SSRCS`.
    rx: Vec<SrtpSession>,
    rx_key: Option<MasterKey>,
    out: Box<[u8; MTU]>,
    role: Role,
}

impl std::fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConn")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl PeerConn {
    /// A connection from a fresh UDP socket on `local_ip` to the SFU described by
    /// `remote`, with our ICE credentials; the first check goes out at the first
    /// [`tick`](PeerConn::tick). `role` is our DTLS role: a client starts its handshake
    /// once ICE succeeds; a server (when the SFU's answer says `a=setup:active`, as
    /// Janus's does) waits for the SFU's ClientHello from the start, so that one racing
    /// our check's response is not lost.
    pub fn new(
        local_ip: std::net::IpAddr,
        local_ufrag: String,
        local_pwd: String,
        remote: RemoteParams,
        certificate: &Certificate,
        seed: u64,
        role: Role,
    ) -> Result<PeerConn> {
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).context("bind a UDP socket")?;
        socket
            .connect(remote.candidate)
            .with_context(|| format!("connect to {}", remote.candidate))?;
        socket.set_nonblocking(true)?;
        // Big buffers: a subscriber in a 200-participant room receives ~1000 packets/s.
        let s2 = socket2::SockRef::from(&socket);
        let _ = s2.set_recv_buffer_size(1 << 20);
        let _ = s2.set_send_buffer_size(1 << 20);
        let dtls = match role {
            Role::Server => Some(
                DtlsEndpoint::new(certificate, Role::Server, remote.fingerprint)
                    .map_err(|e| anyhow::anyhow!("dtls endpoint: {e}"))?,
            ),
            Role::Client => None,
        };
        Ok(PeerConn {
            socket,
            local_ufrag,
            local_pwd,
            remote,
            certificate: certificate.clone(),
            tiebreaker: seed,
            txid: [0; 12],
            next_check: Instant::now(),
            state: PcState::Checking,
            dtls,
            tx: None,
            rx: Vec::new(),
            rx_key: None,
            out: Box::new([0; MTU]),
            role,
        })
    }

    /// The SFU's parameters this connection was made with.
    pub fn remote(&self) -> &RemoteParams {
        &self.remote
    }

    /// Sends a due check, runs DTLS timers and flushes DTLS output. Returns the next time
    /// it wants to be called.
    pub fn tick(&mut self, now: Instant) -> Instant {
        if now >= self.next_check && self.state != PcState::Failed {
            self.send_check();
            self.next_check = now
                + if self.state == PcState::Checking {
                    CHECK_INTERVAL
                } else {
                    CONSENT_INTERVAL
                };
        }
        let mut next = self.next_check;
        if let Some(d) = self.dtls.as_mut() {
            // Unconditionally: OpenSSL retransmits only once its own timer expired, and
            // `poll_timeout` anchors at the last `now` given, which a client that has
            // received nothing yet never gave (its deadline would stay in the future and
            // its ClientHello would never be retransmitted).
            d.handle_timeout(now);
            self.flush_dtls();
            if let Some(d) = &self.dtls
                && let Some(t) = d.poll_timeout()
            {
                next = next.min(t);
            }
        }
        next
    }

    fn send_check(&mut self) {
        let seed = self.tiebreaker.rotate_left(17) ^ self.next_check.elapsed().as_nanos() as u64;
        self.txid[..8].copy_from_slice(&seed.to_le_bytes());
        self.txid[8..].copy_from_slice(&(self.tiebreaker as u32).to_le_bytes());
        let username = format!("{}:{}", self.remote.ufrag, self.local_ufrag);
        let Ok(mut b) = MessageBuilder::new(
            &mut self.out[..],
            MessageType::BINDING_REQUEST,
            TransactionId(self.txid),
        ) else {
            return;
        };
        // Priority of a host candidate (type preference 126, local preference 65535).
        let ok = b.add(&Attribute::Username(username.as_bytes())).is_ok()
            && b.add(&Attribute::Priority((126 << 24) | (65_535 << 8) | 255))
                .is_ok()
            && b.add(&Attribute::IceControlling(self.tiebreaker)).is_ok()
            && b.add(&Attribute::UseCandidate).is_ok()
            && b.add_message_integrity(self.remote.pwd.as_bytes()).is_ok()
            && b.add_fingerprint().is_ok();
        if ok {
            let n = b.finish();
            let _ = self.socket.send(&self.out[..n]);
        }
    }

    fn answer_check(&mut self, tid: TransactionId) {
        let Ok(mut b) = MessageBuilder::new(&mut self.out[..], MessageType::BINDING_SUCCESS, tid)
        else {
            return;
        };
        let ok = b.add_xor_mapped_address(self.remote.candidate).is_ok()
            && b.add_message_integrity(self.local_pwd.as_bytes()).is_ok()
            && b.add_fingerprint().is_ok();
        if ok {
            let n = b.finish();
            let _ = self.socket.send(&self.out[..n]);
        }
    }

    fn flush_dtls(&mut self) {
        let Some(d) = self.dtls.as_mut() else { return };
        while let Some(n) = d.poll_transmit(&mut self.out[..]) {
            let _ = self.socket.send(&self.out[..n]);
        }
        while let Some(ev) = d.poll_event() {
            match ev {
                DtlsEvent::Connected {
                    profile,
                    keying_material,
                    we_are_client,
                } => {
                    let keys = Profile::from_id(profile).and_then(|p| {
                        session_keys(p, keying_material.as_bytes(), we_are_client).ok()
                    });
                    match keys.and_then(|(local, remote)| {
                        Some((
                            SrtpSession::new(&local).ok()?,
                            SrtpSession::new(&remote).ok()?,
                            remote,
                        ))
                    }) {
                        Some((tx, rx, remote)) => {
                            self.tx = Some(tx);
                            self.rx = vec![rx];
                            self.rx_key = Some(remote);
                            self.state = PcState::Connected;
                        }
                        None => self.state = PcState::Failed,
                    }
                }
                DtlsEvent::Failed(e) => {
                    eprintln!("dtls failed: {e}");
                    self.state = PcState::Failed;
                }
                DtlsEvent::Closed => self.state = PcState::Failed,
                DtlsEvent::ApplicationData(_) => {}
            }
        }
    }

    /// Reads one datagram into `buf` if one is waiting: `None` when the socket is empty.
    pub fn recv(&mut self, buf: &mut [u8], now: Instant) -> Option<Received> {
        let n = self.socket.recv(buf).ok()?;
        Some(self.handle(&mut buf[..n], now))
    }

    fn handle(&mut self, d: &mut [u8], now: Instant) -> Received {
        match classify(d) {
            Demux::Stun => {
                if let Ok(m) = Message::parse(d)
                    && m.message_type() == MessageType::BINDING_REQUEST
                {
                    // A full ICE agent checks us back (Janus's libnice does, even in
                    // lite mode, and nominates only once we answer): answer like a
                    // browser, with the source address and our password.
                    self.answer_check(*m.transaction_id());
                    return Received::Nothing;
                }
                if let Ok(m) = Message::parse(d)
                    && m.class() == Class::SuccessResponse
                    && m.transaction_id().0 == self.txid
                    && self.state == PcState::Checking
                {
                    self.state = PcState::Handshaking;
                    if self.role == Role::Client {
                        match DtlsEndpoint::new(
                            &self.certificate,
                            Role::Client,
                            self.remote.fingerprint,
                        ) {
                            Ok(e) => self.dtls = Some(e),
                            Err(e) => {
                                eprintln!("dtls endpoint: {e}");
                                self.state = PcState::Failed;
                            }
                        }
                    }
                    self.next_check = now + CONSENT_INTERVAL;
                    self.flush_dtls();
                }
                Received::Nothing
            }
            Demux::Dtls => {
                if let Some(e) = self.dtls.as_mut() {
                    e.handle_datagram(d, now);
                    self.flush_dtls();
                }
                Received::Nothing
            }
            Demux::Rtp => match self.unprotect_rtp(d) {
                Some(Ok(n)) => Received::Rtp(n),
                Some(Err(_)) => Received::Invalid,
                None => Received::Nothing,
            },
            Demux::Rtcp => match self.rx.first_mut().map(|s| s.unprotect_rtcp(d)) {
                Some(Ok(n)) => Received::Rtcp(n),
                Some(Err(_)) => Received::Invalid,
                None => Received::Nothing,
            },
            Demux::Other => Received::Nothing,
        }
    }

    /// Unprotects an SRTP packet with the receive context that tracks its SSRC, opening
    /// another (at most [`MAX_RX_SESSIONS`]) when all are full. `None` before keying.
    fn unprotect_rtp(&mut self, d: &mut [u8]) -> Option<Result<usize, SrtpError>> {
        let key = self.rx_key.as_ref()?;
        for s in &mut self.rx {
            match s.unprotect_rtp(d) {
                Err(SrtpError::TooManySsrcs { .. }) => continue,
                r => return Some(r),
            }
        }
        if self.rx.len() >= MAX_RX_SESSIONS {
            return Some(Err(SrtpError::TooManySsrcs { max: MAX_SSRCS }));
        }
        let mut s = match SrtpSession::new(key) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let r = s.unprotect_rtp(d);
        self.rx.push(s);
        Some(r)
    }

    /// Protects the RTP packet `buf[..len]` in place and sends it; false when not
    /// connected or protection failed. `buf` needs room for the SRTP tag.
    pub fn send_rtp(&mut self, buf: &mut [u8], len: usize) -> bool {
        let Some(tx) = self.tx.as_mut() else {
            return false;
        };
        match tx.protect_rtp(buf, len) {
            Ok(n) => self.socket.send(&buf[..n]).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::stun::attr::XOR_MAPPED_ADDRESS;
    use relay::stun::integrity::{verify_fingerprint, verify_message_integrity};

    /// Our side of a test connection (ufrag `ourU`) to an SFU at `sfu` (ufrag `sfuU`).
    fn test_peer(sfu: std::net::SocketAddr) -> PeerConn {
        let remote = RemoteParams {
            ufrag: "sfuU".into(),
            pwd: "sfupasswordsfupassword00".into(),
            fingerprint: [0; 32],
            candidate: sfu,
            ext: relay::rtp::ExtMap::default(),
            opus_pt: None,
            vp8_pt: None,
        };
        let cert = Certificate::generate().expect("certificate");
        PeerConn::new(
            "127.0.0.1".parse().expect("ip"),
            "ourU".into(),
            "ourpasswordourpassword00".into(),
            remote,
            &cert,
            7,
            Role::Client,
        )
        .expect("peer connection")
    }

    /// Janus sends a receiver one SSRC per forwarded stream, more than one SRTP session
    /// tracks: every one of 200 SSRCs still unprotects, in ceil(200 / 64) contexts.
    #[test]
    fn unprotects_more_ssrcs_than_one_srtp_session_tracks() {
        let sfu = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut pc = test_peer(sfu.local_addr().expect("addr"));
        let mut buf = [0u8; 200];
        assert!(pc.unprotect_rtp(&mut buf).is_none(), "not keyed yet");
        let p = Profile::AeadAes128Gcm;
        let key =
            MasterKey::new(p, &vec![7u8; p.key_len()], &vec![9u8; p.salt_len()]).expect("key");
        let mut tx = Vec::new();
        pc.rx = vec![SrtpSession::new(&key).expect("session")];
        pc.rx_key = Some(key.clone());
        let ssrcs = u32::try_from(MAX_SSRCS).expect("fits") + 100;
        for ssrc in 0..ssrcs {
            // One sender session per `MAX_SSRCS` SSRCs too (the same limit on its side).
            let i = usize::try_from(ssrc).expect("fits") / MAX_SSRCS;
            if tx.len() <= i {
                tx.push(SrtpSession::new(&key).expect("session"));
            }
            for seq in 0..2u16 {
                let mut pkt = [0u8; 200];
                pkt[0] = 0x80;
                pkt[1] = 111;
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
                let n = tx[i].protect_rtp(&mut pkt, 12 + 40).expect("protect");
                let got = pc.unprotect_rtp(&mut pkt[..n]).expect("keyed");
                assert_eq!(got.expect("unprotects"), 52, "ssrc {ssrc} seq {seq}");
            }
        }
        assert_eq!(pc.rx.len(), 2);
    }

    /// A full ICE agent (Janus's libnice) checks us back and nominates only once we
    /// answer: the answer is a Binding success with the checker's address, signed with
    /// our password.
    #[test]
    fn answers_a_check_from_the_sfu_with_its_address_and_our_password() {
        let sfu = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sfu_addr = sfu.local_addr().expect("addr");
        let mut pc = test_peer(sfu_addr);
        let ours = pc.socket.local_addr().expect("addr");
        let mut req = [0u8; 200];
        let tid = TransactionId([9; 12]);
        let mut b =
            MessageBuilder::new(&mut req[..], MessageType::BINDING_REQUEST, tid).expect("builder");
        b.add(&Attribute::Username(b"ourU:sfuU")).expect("username");
        b.add(&Attribute::IceControlled(1)).expect("controlled");
        b.add_message_integrity(b"ourpasswordourpassword00")
            .expect("integrity");
        b.add_fingerprint().expect("fingerprint");
        let n = b.finish();
        sfu.send_to(&req[..n], ours).expect("send");
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_secs(2);
        let got = loop {
            if let Some(r) = pc.recv(&mut buf, Instant::now()) {
                break r;
            }
            assert!(Instant::now() < deadline, "the check never arrived");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(got, Received::Nothing);
        assert_eq!(
            pc.state,
            PcState::Checking,
            "a check from the SFU is not its answer"
        );
        sfu.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let (len, from) = sfu.recv_from(&mut buf).expect("an answer");
        assert_eq!(from, ours);
        let m = Message::parse(&buf[..len]).expect("STUN");
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(m.transaction_id().0, [9; 12]);
        verify_message_integrity(&m, b"ourpasswordourpassword00").expect("signed with our pwd");
        verify_fingerprint(&m).expect("fingerprint");
        assert_eq!(
            m.get(XOR_MAPPED_ADDRESS).expect("attributes"),
            Some(Attribute::XorMappedAddress(sfu_addr))
        );
    }
}
