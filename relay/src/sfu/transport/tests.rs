//! The transport against a hand-played browser: STUN checks built the way Chromium
//! builds them, a DTLS client endpoint expecting the SFU certificate's fingerprint, and
//! SRTP sessions keyed from the client's side of the handshake. No sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::dtls::SRTP_PROFILES;
use crate::ice::CONSENT_TIMEOUT_US;
use crate::rtp::ExtMap;
use crate::sfu::control::TransportRole;
use crate::stun::integrity::verify_message_integrity;
use crate::stun::{Attribute, Class, Message, MessageBuilder, MessageType, TransactionId};

const LOCAL_UFRAG: &str = "sfuU";
const LOCAL_PWD: &str = "sfuPasswordSfuPassword12";
const REMOTE_UFRAG: &str = "brws";
const REMOTE_PWD: &str = "browserPasswordBrowser34";
const AES_CM: &str = "SRTP_AES128_CM_SHA1_80";
const GCM: &str = "SRTP_AEAD_AES_128_GCM";

fn local() -> SocketAddr {
    "203.0.113.5:3478".parse().expect("addr")
}

fn browser_addr() -> SocketAddr {
    "198.51.100.7:54321".parse().expect("addr")
}

fn stranger() -> SocketAddr {
    "192.0.2.66:40000".parse().expect("addr")
}

fn spec(remote_fingerprint: [u8; 32]) -> TransportSpec {
    TransportSpec {
        id: 1,
        room: 2,
        participant: 3,
        role: TransportRole::Publisher,
        local_ufrag: LOCAL_UFRAG.into(),
        local_pwd: LOCAL_PWD.into(),
        remote_ufrag: REMOTE_UFRAG.into(),
        remote_pwd: REMOTE_PWD.into(),
        remote_fingerprint,
        extensions: ExtMap::default(),
    }
}

/// A Binding request as a controlling browser sends it: USERNAME, ICE-CONTROLLING,
/// PRIORITY, (USE-CANDIDATE), MESSAGE-INTEGRITY with our password, FINGERPRINT.
fn binding_request(use_candidate: bool, tid: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([tid; 12]),
    )
    .expect("fits");
    b.add(&Attribute::Username(b"sfuU:brws")).expect("fits");
    b.add(&Attribute::IceControlling(0x0123_4567_89AB_CDEF))
        .expect("fits");
    b.add(&Attribute::Priority(1_845_501_695)).expect("fits");
    if use_candidate {
        b.add(&Attribute::UseCandidate).expect("fits");
    }
    b.add_message_integrity(LOCAL_PWD.as_bytes()).expect("fits");
    b.add_fingerprint().expect("fits");
    let n = b.finish();
    buf.truncate(n);
    buf
}

/// The browser side: a DTLS client and, once keyed, its SRTP sessions.
struct Browser {
    addr: SocketAddr,
    cert: Certificate,
    dtls: DtlsEndpoint,
    /// Protects what the browser sends.
    tx: Option<SrtpSession>,
    /// Unprotects what the SFU sends.
    rx: Option<SrtpSession>,
    profile: Option<Profile>,
    failed: bool,
}

impl Browser {
    /// A browser offering `profiles` that expects the SFU certificate `sfu_fp`.
    fn new(sfu_fp: [u8; 32], profiles: &str) -> Browser {
        let cert = Certificate::generate().expect("certificate");
        let dtls = DtlsEndpoint::with_srtp_profiles(&cert, Role::Client, sfu_fp, profiles)
            .expect("client endpoint");
        Browser {
            addr: browser_addr(),
            cert,
            dtls,
            tx: None,
            rx: None,
            profile: None,
            failed: false,
        }
    }

    fn poll_dtls_events(&mut self) {
        while let Some(e) = self.dtls.poll_event() {
            match e {
                DtlsEvent::Connected {
                    profile,
                    keying_material,
                    we_are_client,
                } => {
                    assert!(we_are_client);
                    let profile = Profile::from_id(profile).expect("supported profile");
                    let (local, remote) =
                        session_keys(profile, keying_material.as_bytes(), true).expect("keys");
                    self.tx = Some(SrtpSession::new(&local).expect("tx"));
                    self.rx = Some(SrtpSession::new(&remote).expect("rx"));
                    self.profile = Some(profile);
                }
                DtlsEvent::Failed(_) | DtlsEvent::Closed => self.failed = true,
                DtlsEvent::ApplicationData(_) => {}
            }
        }
    }
}

/// Sends one check from `from`; returns the transport's verdict and the answers it
/// queued (each checked to go back to `from`).
fn send_check(
    t: &mut PeerTransport,
    from: SocketAddr,
    use_candidate: bool,
    now: Instant,
) -> Vec<Vec<u8>> {
    let mut req = binding_request(use_candidate, 7);
    let len = req.len();
    let r = t.handle_datagram(&mut req, len, from, local(), Transport::Udp, now);
    assert_eq!(r, Received::Handled);
    let mut answers = Vec::new();
    let mut out = [0u8; 1500];
    while let Some((n, to)) = t.poll_transmit(&mut out) {
        assert_eq!(to, from, "STUN answers go back to the source");
        answers.push(out[..n].to_vec());
    }
    answers
}

/// Moves datagrams both ways until neither side has anything to send.
fn pump(t: &mut PeerTransport, b: &mut Browser, now: Instant) {
    let mut buf = [0u8; 2048];
    for _ in 0..32 {
        let mut moved = 0;
        while let Some(n) = b.dtls.poll_transmit(&mut buf) {
            moved += 1;
            let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, now);
            assert_eq!(r, Received::Handled, "DTLS is never media");
        }
        while let Some((n, to)) = t.poll_transmit(&mut buf) {
            moved += 1;
            assert_eq!(to, b.addr, "DTLS flights go to the browser");
            b.dtls.handle_datagram(&buf[..n], now);
        }
        b.poll_dtls_events();
        if moved == 0 {
            break;
        }
    }
}

fn events(t: &mut PeerTransport) -> Vec<TransportEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

/// A transport and a browser, ICE nominated and DTLS completed with `profiles`.
fn connected_pair(profiles: &str) -> (PeerTransport, Browser, Certificate) {
    let sfu_cert = Certificate::generate().expect("certificate");
    let mut b = Browser::new(sfu_cert.fingerprint(), profiles);
    let mut t = PeerTransport::new(&spec(b.cert.fingerprint()), &sfu_cert).expect("transport");
    assert_eq!(t.local_ufrag(), LOCAL_UFRAG);
    let now = Instant::now();
    let answers = send_check(&mut t, b.addr, true, now);
    assert_eq!(answers.len(), 1);
    let msg = Message::parse(&answers[0]).expect("STUN answer");
    assert_eq!(msg.class(), Class::SuccessResponse);
    verify_message_integrity(&msg, LOCAL_PWD.as_bytes()).expect("signed with our password");
    assert!(!t.is_connected(), "ICE alone does not connect");
    pump(&mut t, &mut b, now);
    assert!(b.dtls.is_connected(), "browser DTLS connected");
    assert!(t.is_connected());
    (t, b, sfu_cert)
}

fn rtp_packet(seq: u16, ssrc: u32, payload: &[u8], buf: &mut [u8]) -> usize {
    buf[0] = 0x80;
    buf[1] = 111;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..12 + payload.len()].copy_from_slice(payload);
    12 + payload.len()
}

/// A receiver report (PT 201) with no report blocks, then an SDES-less padding-free
/// second packet: a small compound RTCP packet.
fn rtcp_packet(ssrc: u32, buf: &mut [u8]) -> usize {
    // RR: V=2, RC=0, PT=201, length=1 (8 bytes).
    buf[..4].copy_from_slice(&[0x80, 201, 0, 1]);
    buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
    // PLI (PT=206, FMT=1), length 2: sender SSRC, media SSRC.
    buf[8..12].copy_from_slice(&[0x81, 206, 0, 2]);
    buf[12..16].copy_from_slice(&ssrc.to_be_bytes());
    buf[16..20].copy_from_slice(&0x0BAD_CAFEu32.to_be_bytes());
    20
}

/// The browser sends protected RTP; the transport hands back the plain bytes.
fn browser_to_sfu_rtp(t: &mut PeerTransport, b: &mut Browser, seq: u16) {
    let payload = b"opus frame from the browser";
    let mut plain = [0u8; 128];
    let plain_len = rtp_packet(seq, 0x1111_2222, payload, &mut plain);
    let mut buf = [0u8; 256];
    buf[..plain_len].copy_from_slice(&plain[..plain_len]);
    let n =
        b.tx.as_mut()
            .expect("browser keyed")
            .protect_rtp(&mut buf, plain_len)
            .expect("protect");
    assert_ne!(
        &buf[..plain_len],
        &plain[..plain_len],
        "encrypted on the wire"
    );
    let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, Instant::now());
    assert_eq!(r, Received::Rtp { len: plain_len });
    assert_eq!(&buf[..plain_len], &plain[..plain_len]);
}

/// The transport protects RTP; the browser unprotects the same bytes.
fn sfu_to_browser_rtp(t: &mut PeerTransport, b: &mut Browser, seq: u16) {
    let payload = b"vp8 frame from another publisher";
    let mut plain = [0u8; 128];
    let plain_len = rtp_packet(seq, 0x3333_4444, payload, &mut plain);
    let mut buf = [0u8; 256];
    buf[..plain_len].copy_from_slice(&plain[..plain_len]);
    let n = t.protect_rtp(&mut buf, plain_len).expect("protect");
    assert!(n > plain_len);
    let m =
        b.rx.as_mut()
            .expect("browser keyed")
            .unprotect_rtp(&mut buf[..n])
            .expect("the browser unprotects it");
    assert_eq!(&buf[..m], &plain[..plain_len]);
}

fn rtcp_both_ways(t: &mut PeerTransport, b: &mut Browser) {
    // Browser → SFU.
    let mut plain = [0u8; 64];
    let plain_len = rtcp_packet(0x1111_2222, &mut plain);
    let mut buf = [0u8; 128];
    buf[..plain_len].copy_from_slice(&plain[..plain_len]);
    let n =
        b.tx.as_mut()
            .expect("keyed")
            .protect_rtcp(&mut buf, plain_len)
            .expect("protect");
    let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, Instant::now());
    assert_eq!(r, Received::Rtcp { len: plain_len });
    assert_eq!(&buf[..plain_len], &plain[..plain_len]);
    // SFU → browser.
    let plain_len = rtcp_packet(0x3333_4444, &mut plain);
    buf[..plain_len].copy_from_slice(&plain[..plain_len]);
    let n = t.protect_rtcp(&mut buf, plain_len).expect("protect");
    let m =
        b.rx.as_mut()
            .expect("keyed")
            .unprotect_rtcp(&mut buf[..n])
            .expect("the browser unprotects it");
    assert_eq!(&buf[..m], &plain[..plain_len]);
}

fn media_both_ways(profiles: &str, want: Profile) {
    let (mut t, mut b, _) = connected_pair(profiles);
    assert_eq!(b.profile, Some(want));
    assert_eq!(t.srtp_profile(), Some(want));
    assert_eq!(events(&mut t), vec![TransportEvent::Connected]);
    assert_eq!(t.media_destination(Instant::now()), Some(b.addr));
    for seq in 100..110 {
        browser_to_sfu_rtp(&mut t, &mut b, seq);
        sfu_to_browser_rtp(&mut t, &mut b, seq);
    }
    rtcp_both_ways(&mut t, &mut b);
    let s = t.stats();
    assert_eq!((s.rtp_in, s.rtp_out, s.rtcp_in, s.rtcp_out), (10, 10, 1, 1));
    assert_eq!((s.srtp_auth_failures, s.srtp_replays, s.dropped), (0, 0, 0));
    assert!(s.stun_in == 1 && s.dtls_in >= 2, "{s:?}");
}

#[test]
fn media_both_ways_aes_cm() {
    media_both_ways(AES_CM, Profile::Aes128CmHmacSha1_80);
}

#[test]
fn media_both_ways_gcm() {
    media_both_ways(GCM, Profile::AeadAes128Gcm);
}

#[test]
fn default_offer_negotiates_gcm() {
    media_both_ways(SRTP_PROFILES, Profile::AeadAes128Gcm);
}

#[test]
fn dtls_from_an_unvalidated_address_is_dropped() {
    let sfu_cert = Certificate::generate().expect("certificate");
    let mut b = Browser::new(sfu_cert.fingerprint(), SRTP_PROFILES);
    let mut t = PeerTransport::new(&spec(b.cert.fingerprint()), &sfu_cert).expect("transport");
    let now = Instant::now();
    // No check at all yet: the ClientHello is dropped, nothing is answered.
    let mut buf = [0u8; 2048];
    let n = b.dtls.poll_transmit(&mut buf).expect("ClientHello");
    let hello = buf[..n].to_vec();
    let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, now);
    assert_eq!(r, Received::Handled);
    assert_eq!(t.poll_transmit(&mut buf), None);
    assert_eq!((t.stats().dtls_in, t.stats().dropped), (0, 1));
    // The browser's address is validated, but a stranger's ClientHello is still dropped.
    send_check(&mut t, b.addr, true, now);
    buf[..n].copy_from_slice(&hello);
    t.handle_datagram(&mut buf, n, stranger(), local(), Transport::Udp, now);
    assert_eq!(t.poll_transmit(&mut buf), None);
    // Same address over TCP is another pair, not validated either.
    buf[..n].copy_from_slice(&hello);
    t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Tcp, now);
    assert_eq!(t.poll_transmit(&mut buf), None);
    assert_eq!((t.stats().dtls_in, t.stats().dropped), (0, 3));
    // From the validated source it is answered (ServerHello flight to the browser).
    buf[..n].copy_from_slice(&hello);
    t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, now);
    let (_, to) = t.poll_transmit(&mut buf).expect("server flight");
    assert_eq!(to, b.addr);
    assert_eq!(t.stats().dtls_in, 1);
}

#[test]
fn media_from_an_unvalidated_address_or_before_connected_is_dropped() {
    let (mut t, mut b, _) = connected_pair(AES_CM);
    let mut buf = [0u8; 256];
    let len = rtp_packet(1, 0x1111_2222, b"x", &mut buf);
    let n =
        b.tx.as_mut()
            .expect("keyed")
            .protect_rtp(&mut buf, len)
            .expect("protect");
    let r = t.handle_datagram(
        &mut buf,
        n,
        stranger(),
        local(),
        Transport::Udp,
        Instant::now(),
    );
    assert_eq!(r, Received::Handled);
    assert_eq!((t.stats().rtp_in, t.stats().dropped), (0, 1));
    // The same packet from the browser is accepted (the drop did not touch SRTP state).
    let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, Instant::now());
    assert_eq!(r, Received::Rtp { len });

    // Not connected: ICE nominated but no DTLS yet.
    let sfu_cert = Certificate::generate().expect("certificate");
    let mut t = PeerTransport::new(&spec([1; 32]), &sfu_cert).expect("transport");
    send_check(&mut t, browser_addr(), true, Instant::now());
    let len = rtp_packet(1, 0x1111_2222, b"plain", &mut buf);
    let r = t.handle_datagram(
        &mut buf,
        len,
        browser_addr(),
        local(),
        Transport::Udp,
        Instant::now(),
    );
    assert_eq!(r, Received::Handled);
    assert_eq!(t.stats().dropped, 1);
    assert_eq!(
        t.protect_rtp(&mut buf, len),
        Err(TransportError::NotConnected)
    );
    assert_eq!(
        t.protect_rtcp(&mut buf, 20),
        Err(TransportError::NotConnected)
    );
}

#[test]
fn wrong_browser_fingerprint_disconnects_without_keys() {
    let sfu_cert = Certificate::generate().expect("certificate");
    let mut b = Browser::new(sfu_cert.fingerprint(), SRTP_PROFILES);
    let mut wrong = b.cert.fingerprint();
    wrong[31] ^= 0x80;
    let mut t = PeerTransport::new(&spec(wrong), &sfu_cert).expect("transport");
    let now = Instant::now();
    send_check(&mut t, b.addr, true, now);
    pump(&mut t, &mut b, now);
    assert_eq!(events(&mut t), vec![TransportEvent::Disconnected]);
    assert!(!t.is_connected());
    assert_eq!(t.srtp_profile(), None, "no SRTP keys");
    assert!(!b.dtls.is_connected() && b.tx.is_none());
    let mut buf = [0u8; 64];
    assert_eq!(
        t.protect_rtp(&mut buf, 12),
        Err(TransportError::NotConnected)
    );
    assert_eq!(t.media_destination(now), None);
}

#[test]
fn browser_rejecting_our_certificate_disconnects() {
    let sfu_cert = Certificate::generate().expect("certificate");
    let mut wrong = sfu_cert.fingerprint();
    wrong[0] ^= 1;
    let mut b = Browser::new(wrong, SRTP_PROFILES);
    let mut t = PeerTransport::new(&spec(b.cert.fingerprint()), &sfu_cert).expect("transport");
    let now = Instant::now();
    send_check(&mut t, b.addr, true, now);
    pump(&mut t, &mut b, now);
    assert!(b.failed);
    assert_eq!(events(&mut t), vec![TransportEvent::Disconnected]);
    assert_eq!(t.srtp_profile(), None);
}

#[test]
fn tampered_srtp_is_dropped_and_counted() {
    for profiles in [AES_CM, GCM] {
        let (mut t, mut b, _) = connected_pair(profiles);
        let mut buf = [0u8; 256];
        let len = rtp_packet(5, 0x1111_2222, b"payload to tamper", &mut buf);
        let n =
            b.tx.as_mut()
                .expect("keyed")
                .protect_rtp(&mut buf, len)
                .expect("protect");
        let good = buf;
        buf[14] ^= 0x01; // a payload byte
        let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, Instant::now());
        assert_eq!(r, Received::Handled);
        assert_eq!(t.stats().srtp_auth_failures, 1);
        // The genuine packet still goes through (the forgery changed nothing), once.
        buf = good;
        let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, Instant::now());
        assert_eq!(r, Received::Rtp { len });
        buf = good;
        let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, Instant::now());
        assert_eq!(r, Received::Handled);
        assert_eq!(t.stats().srtp_replays, 1);
        // Tampered SRTCP too.
        let len = rtcp_packet(0x1111_2222, &mut buf);
        let n =
            b.tx.as_mut()
                .expect("keyed")
                .protect_rtcp(&mut buf, len)
                .expect("protect");
        buf[n - 1] ^= 0x40; // the tag
        let r = t.handle_datagram(&mut buf, n, b.addr, local(), Transport::Udp, Instant::now());
        assert_eq!(r, Received::Handled);
        let s = t.stats();
        assert_eq!(
            (s.srtp_auth_failures, s.rtp_in, s.rtcp_in),
            (2, 1, 0),
            "{s:?}"
        );
    }
}

#[test]
fn connected_exactly_once() {
    let (mut t, mut b, _) = connected_pair(SRTP_PROFILES);
    assert_eq!(events(&mut t), vec![TransportEvent::Connected]);
    let now = Instant::now();
    // More checks, nominations, retransmitted flights and media: no second Connected.
    for _ in 0..3 {
        send_check(&mut t, b.addr, true, now);
        send_check(&mut t, b.addr, false, now);
    }
    pump(&mut t, &mut b, now);
    browser_to_sfu_rtp(&mut t, &mut b, 1);
    t.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(events(&mut t), vec![]);
    assert!(t.is_connected());
}

#[test]
fn dtls_before_nomination_connects_on_nomination() {
    let sfu_cert = Certificate::generate().expect("certificate");
    let mut b = Browser::new(sfu_cert.fingerprint(), SRTP_PROFILES);
    let mut t = PeerTransport::new(&spec(b.cert.fingerprint()), &sfu_cert).expect("transport");
    let now = Instant::now();
    // A valid check without USE-CANDIDATE validates the pair; DTLS completes on it.
    send_check(&mut t, b.addr, false, now);
    pump(&mut t, &mut b, now);
    assert!(b.dtls.is_connected());
    assert!(!t.is_connected(), "no nominated pair yet");
    assert_eq!(events(&mut t), vec![]);
    assert_eq!(t.media_destination(now), None);
    send_check(&mut t, b.addr, true, now);
    assert_eq!(events(&mut t), vec![TransportEvent::Connected]);
    assert_eq!(t.media_destination(now), Some(b.addr));
    browser_to_sfu_rtp(&mut t, &mut b, 9);
}

#[test]
fn consent_expiry_disconnects() {
    let (mut t, mut b, _) = connected_pair(GCM);
    assert_eq!(events(&mut t), vec![TransportEvent::Connected]);
    let start = Instant::now();
    // A check refreshes consent.
    send_check(&mut t, b.addr, false, start);
    let deadline = t.poll_timeout().expect("consent timer");
    let consent = Duration::from_micros(CONSENT_TIMEOUT_US);
    assert!(deadline <= start + consent, "timer by the consent expiry");
    let before = start + consent - Duration::from_millis(10);
    t.handle_timeout(before);
    assert_eq!(events(&mut t), vec![]);
    assert_eq!(t.media_destination(before), Some(b.addr));

    let after = start + consent + Duration::from_secs(1);
    assert_eq!(t.media_destination(after), None, "no consent, no sending");
    t.handle_timeout(after);
    assert_eq!(events(&mut t), vec![TransportEvent::Disconnected]);
    assert!(!t.is_connected());
    assert_eq!(t.media_destination(after), None);
    assert_eq!(t.poll_timeout(), None);
    let mut buf = [0u8; 256];
    let len = rtp_packet(1, 0x1111_2222, b"late", &mut buf);
    assert_eq!(
        t.protect_rtp(&mut buf, len),
        Err(TransportError::NotConnected)
    );
    // Terminal: a late check does not bring it back.
    send_check(&mut t, b.addr, true, after);
    assert_eq!(events(&mut t), vec![]);
    assert!(!t.is_connected());
    let _ = &mut b;
}

#[test]
fn close_sends_close_notify_and_disconnects() {
    let (mut t, mut b, _) = connected_pair(AES_CM);
    events(&mut t);
    t.close();
    assert_eq!(events(&mut t), vec![TransportEvent::Disconnected]);
    pump(&mut t, &mut b, Instant::now());
    assert!(b.failed, "the browser saw close_notify");
    t.close();
    assert_eq!(events(&mut t), vec![], "Disconnected once");
}

#[test]
fn browser_close_notify_disconnects() {
    let (mut t, mut b, _) = connected_pair(AES_CM);
    events(&mut t);
    b.dtls.close();
    pump(&mut t, &mut b, Instant::now());
    assert_eq!(events(&mut t), vec![TransportEvent::Disconnected]);
}

#[test]
fn bad_credentials_are_refused() {
    let cert = Certificate::generate().expect("certificate");
    let mut s = spec([0; 32]);
    s.local_pwd = "short".into();
    assert!(matches!(
        PeerTransport::new(&s, &cert),
        Err(TransportError::Ice(_))
    ));
}

#[test]
fn length_beyond_the_buffer_is_dropped() {
    let cert = Certificate::generate().expect("certificate");
    let mut t = PeerTransport::new(&spec([0; 32]), &cert).expect("transport");
    let mut buf = [0x80u8; 16];
    let r = t.handle_datagram(
        &mut buf,
        17,
        browser_addr(),
        local(),
        Transport::Udp,
        Instant::now(),
    );
    assert_eq!(r, Received::Handled);
    assert_eq!(t.stats().dropped, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary datagrams on a connected transport never panic, never come out as media
    /// (they cannot carry a valid tag) and never produce an event.
    #[test]
    fn arbitrary_datagrams_on_a_connected_transport(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..16),
        from_browser in any::<bool>(),
    ) {
        let (mut t, b, _) = connected_pair(AES_CM);
        events(&mut t);
        let source = if from_browser { b.addr } else { stranger() };
        let mut out = [0u8; 1500];
        for d in datagrams {
            let mut buf = d.clone();
            buf.resize(d.len() + 32, 0);
            let r = t.handle_datagram(&mut buf, d.len(), source, local(), Transport::Udp, Instant::now());
            prop_assert_eq!(r, Received::Handled);
            while let Some((n, _)) = t.poll_transmit(&mut out) {
                prop_assert!(n <= out.len());
            }
        }
        let ev = events(&mut t);
        prop_assert!(ev.is_empty() || ev == vec![TransportEvent::Disconnected], "{:?}", ev);
    }
}
