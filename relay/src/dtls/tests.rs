//! In-process handshakes between two endpoints (no sockets): keys, profiles, fingerprint
//! checks, loss and retransmission, garbage input, application data and close.

use std::time::{Duration, Instant};

use super::*;
use crate::srtp::{self, SrtpSession};

fn cert() -> Certificate {
    Certificate::generate().expect("certificate generation")
}

/// Moves every queued datagram from `from` to `to`, unless `drop` says to lose it.
/// Returns how many were moved or dropped.
fn deliver(
    from: &mut DtlsEndpoint,
    to: &mut DtlsEndpoint,
    now: Instant,
    drop: &mut dyn FnMut(&[u8]) -> bool,
) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Some(len) = from.poll_transmit(&mut buf) {
        assert!(
            len <= MTU as usize,
            "datagram of {len} bytes exceeds the MTU"
        );
        n += 1;
        if !drop(&buf[..len]) {
            to.handle_datagram(&buf[..len], now);
        }
    }
    n
}

/// Runs the exchange (bounded) until neither side has anything to send; returns the
/// events of each side.
fn pump(a: &mut DtlsEndpoint, b: &mut DtlsEndpoint) -> (Vec<DtlsEvent>, Vec<DtlsEvent>) {
    let now = Instant::now();
    let mut keep = |_: &[u8]| false;
    for _ in 0..32 {
        let moved = deliver(a, b, now, &mut keep) + deliver(b, a, now, &mut keep);
        if moved == 0 {
            break;
        }
    }
    (events(a), events(b))
}

fn events(e: &mut DtlsEndpoint) -> Vec<DtlsEvent> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

struct Pair {
    client: DtlsEndpoint,
    server: DtlsEndpoint,
}

fn pair_with(client_profiles: &str, server_profiles: &str) -> Pair {
    let (cc, sc) = (cert(), cert());
    let client =
        DtlsEndpoint::with_srtp_profiles(&cc, Role::Client, sc.fingerprint(), client_profiles)
            .expect("client");
    let server =
        DtlsEndpoint::with_srtp_profiles(&sc, Role::Server, cc.fingerprint(), server_profiles)
            .expect("server");
    Pair { client, server }
}

fn connected(events: &[DtlsEvent]) -> (u16, KeyingMaterial, bool) {
    match events {
        [
            DtlsEvent::Connected {
                profile,
                keying_material,
                we_are_client,
            },
        ] => (*profile, keying_material.clone(), *we_are_client),
        other => panic!("expected exactly Connected, got {other:?}"),
    }
}

fn rtp_packet(seq: u16, payload: &[u8], buf: &mut [u8]) -> usize {
    buf[0] = 0x80;
    buf[1] = 111;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    buf[8..12].copy_from_slice(&0xCAFE_F00Du32.to_be_bytes());
    buf[12..12 + payload.len()].copy_from_slice(payload);
    12 + payload.len()
}

/// Handshakes, checks both sides agree, and sends SRTP both ways with the derived keys.
fn handshake_and_srtp(client_profiles: &str, server_profiles: &str, want_profile: u16) {
    let mut p = pair_with(client_profiles, server_profiles);
    let (ce, se) = pump(&mut p.client, &mut p.server);
    let (cp, ckm, c_is_client) = connected(&ce);
    let (sp, skm, s_is_client) = connected(&se);
    assert!(p.client.is_connected() && p.server.is_connected());
    assert_eq!(
        p.client.poll_timeout(),
        None,
        "client timer after the handshake"
    );
    assert_eq!(
        p.server.poll_timeout(),
        None,
        "server timer after the handshake"
    );
    assert_eq!((cp, sp), (want_profile, want_profile));
    assert!(c_is_client && !s_is_client);
    let profile = srtp::Profile::from_id(cp).expect("supported profile");
    assert_eq!(ckm.as_bytes().len(), profile.keying_material_len());
    assert_eq!(
        ckm.as_bytes(),
        skm.as_bytes(),
        "both sides export the same material"
    );
    assert!(ckm.as_bytes().iter().any(|&b| b != 0));

    let (c_local, c_remote) = srtp::session_keys(profile, ckm.as_bytes(), true).expect("keys");
    let (s_local, s_remote) = srtp::session_keys(profile, skm.as_bytes(), false).expect("keys");
    assert_eq!(c_local, s_remote);
    assert_eq!(c_remote, s_local);
    assert_ne!(c_local, c_remote);

    let payload = b"opus frame bytes";
    for (tx_key, rx_key) in [(&c_local, &s_remote), (&s_local, &c_remote)] {
        let mut tx = SrtpSession::new(tx_key).expect("tx session");
        let mut rx = SrtpSession::new(rx_key).expect("rx session");
        let mut buf = [0u8; 128];
        let len = rtp_packet(7, payload, &mut buf);
        let protected = tx.protect_rtp(&mut buf, len).expect("protect");
        assert_ne!(&buf[12..12 + payload.len()], payload, "payload encrypted");
        let n = rx
            .unprotect_rtp(&mut buf[..protected])
            .expect("unprotect on the other side");
        assert_eq!(&buf[12..n], payload);
    }
}

#[test]
fn handshake_prefers_gcm_and_keys_match() {
    handshake_and_srtp(SRTP_PROFILES, SRTP_PROFILES, 0x0007);
}

#[test]
fn handshake_aes_cm_when_only_offered() {
    handshake_and_srtp("SRTP_AES128_CM_SHA1_80", SRTP_PROFILES, 0x0001);
    handshake_and_srtp(SRTP_PROFILES, "SRTP_AES128_CM_SHA1_80", 0x0001);
}

#[test]
fn handshake_gcm_when_only_offered() {
    handshake_and_srtp("SRTP_AEAD_AES_128_GCM", SRTP_PROFILES, 0x0007);
}

#[test]
fn no_common_srtp_profile_fails() {
    let mut p = pair_with("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80");
    let (ce, se) = pump(&mut p.client, &mut p.server);
    let failed = ce
        .iter()
        .chain(&se)
        .any(|e| matches!(e, DtlsEvent::Failed(DtlsError::NoSrtpProfile)));
    assert!(failed, "client {ce:?} server {se:?}");
    assert!(
        !ce.iter()
            .chain(&se)
            .any(|e| matches!(e, DtlsEvent::Connected { .. }))
    );
}

#[test]
fn wrong_server_fingerprint_fails_on_the_client() {
    let (cc, sc) = (cert(), cert());
    let mut wrong = sc.fingerprint();
    wrong[0] ^= 1;
    let mut client = DtlsEndpoint::new(&cc, Role::Client, wrong).expect("client");
    let mut server = DtlsEndpoint::new(&sc, Role::Server, cc.fingerprint()).expect("server");
    let (ce, se) = pump(&mut client, &mut server);
    assert_eq!(
        ce,
        vec![DtlsEvent::Failed(DtlsError::FingerprintMismatch {
            expected: wrong,
            received: sc.fingerprint(),
        })]
    );
    assert!(client.is_finished() && !client.is_connected());
    // The alert reached the server: it fails too, and never reports Connected.
    assert!(
        matches!(se.as_slice(), [DtlsEvent::Failed(_)]),
        "server: {se:?}"
    );
    let text = match &ce[0] {
        DtlsEvent::Failed(e) => e.to_string(),
        _ => unreachable!(),
    };
    assert!(text.contains(&sc.fingerprint_string()), "{text}");
}

#[test]
fn wrong_client_fingerprint_fails_on_the_server() {
    let (cc, sc) = (cert(), cert());
    let other = cert();
    let mut client = DtlsEndpoint::new(&cc, Role::Client, sc.fingerprint()).expect("client");
    let mut server = DtlsEndpoint::new(&sc, Role::Server, other.fingerprint()).expect("server");
    let (ce, se) = pump(&mut client, &mut server);
    assert_eq!(
        se,
        vec![DtlsEvent::Failed(DtlsError::FingerprintMismatch {
            expected: other.fingerprint(),
            received: cc.fingerprint(),
        })]
    );
    assert!(
        !ce.iter().any(|e| matches!(e, DtlsEvent::Connected { .. })),
        "{ce:?}"
    );
}

#[test]
fn lost_first_flight_is_retransmitted_after_the_timer() {
    let mut p = pair_with(SRTP_PROFILES, SRTP_PROFILES);
    let start = Instant::now();
    // Lose the ClientHello.
    let lost = deliver(&mut p.client, &mut p.server, start, &mut |_| true);
    assert!(lost >= 1);
    assert!(p.server.poll_event().is_none());
    let deadline = p
        .client
        .poll_timeout()
        .expect("a retransmission timer runs");
    let wait = deadline.saturating_duration_since(start);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(1050),
        "first timeout {wait:?} (OpenSSL starts at 1 s)"
    );
    // Before the deadline nothing is resent (checked only if this thread was not stalled
    // past it: a loaded CI machine can take that long).
    p.client.handle_timeout(Instant::now());
    let resent = deliver(&mut p.client, &mut p.server, start, &mut |_| false);
    if Instant::now() + Duration::from_millis(50) < deadline {
        assert_eq!(resent, 0, "resent before the timer expired");
    }
    // OpenSSL's timer runs on the system clock: really wait for it.
    fire_timer(&mut p.client, deadline);
    let (ce, se) = pump(&mut p.client, &mut p.server);
    assert!(
        matches!(ce.as_slice(), [DtlsEvent::Connected { .. }]),
        "{ce:?}"
    );
    assert!(
        matches!(se.as_slice(), [DtlsEvent::Connected { .. }]),
        "{se:?}"
    );
    // The client got the server's final flight: nothing is left to retransmit.
    assert!(
        p.client.poll_timeout().is_none(),
        "client timer still running"
    );
}

#[test]
fn lost_final_flight_is_recovered_by_the_client_retransmitting() {
    let mut p = pair_with(SRTP_PROFILES, SRTP_PROFILES);
    let now = Instant::now();
    let mut keep = |_: &[u8]| false;
    let mut lose = |_: &[u8]| true;
    let mut lost_final = false;
    for _ in 0..16 {
        let mut moved = deliver(&mut p.client, &mut p.server, now, &mut keep);
        // Lose what the server sends in the flight that completes its side.
        let drop: &mut dyn FnMut(&[u8]) -> bool = if p.server.is_connected() && !lost_final {
            lost_final = true;
            &mut lose
        } else {
            &mut keep
        };
        moved += deliver(&mut p.server, &mut p.client, now, drop);
        if moved == 0 {
            break;
        }
    }
    assert!(lost_final);
    let se = events(&mut p.server);
    assert!(
        matches!(se.as_slice(), [DtlsEvent::Connected { .. }]),
        "{se:?}"
    );
    assert!(
        events(&mut p.client).is_empty(),
        "client connected without the final flight"
    );
    let deadline = p
        .client
        .poll_timeout()
        .expect("client waits for the final flight");
    fire_timer(&mut p.client, deadline);
    // The client resends its last flight; the (connected) server answers with its own.
    let (ce, se) = pump(&mut p.client, &mut p.server);
    assert!(
        matches!(ce.as_slice(), [DtlsEvent::Connected { .. }]),
        "{ce:?}"
    );
    assert!(se.is_empty(), "{se:?}");
    let (_, ckm, _) = connected(&ce);
    p.client
        .send_application_data(b"after recovery")
        .expect("send");
    let (_, se) = pump(&mut p.client, &mut p.server);
    assert_eq!(se, vec![DtlsEvent::ApplicationData(14)]);
    assert_eq!(ckm.as_bytes().len(), 56);
}

#[test]
fn garbage_is_dropped_and_a_later_handshake_succeeds() {
    let mut p = pair_with(SRTP_PROFILES, SRTP_PROFILES);
    let now = Instant::now();
    let mut record = vec![22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend_from_slice(&[0xff, 0xff]); // length far beyond the datagram
    record.extend_from_slice(&[1, 2, 3]);
    let mut bad_version = record.clone();
    bad_version[1] = 0x03;
    bad_version[11..13].copy_from_slice(&[0, 3]);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![22],
        vec![0u8; 12],
        vec![0x80; 100],              // RTP-looking
        vec![0x00, 0x01, 0x00, 0x00], // STUN-looking
        (0..=255u8).collect(),
        record,
        bad_version,
        vec![23u8; 1500], // application data record header with nonsense
        vec![21u8; 40],   // alert-looking, epoch 21
    ];
    for g in &garbage {
        p.server.handle_datagram(g, now);
        p.client.handle_datagram(g, now);
    }
    assert!(p.server.poll_event().is_none());
    assert!(!p.server.is_finished() && !p.client.is_finished());
    assert!(p.server.dropped_datagrams() >= 5);
    let (ce, se) = pump(&mut p.client, &mut p.server);
    assert!(
        matches!(ce.as_slice(), [DtlsEvent::Connected { .. }]),
        "{ce:?}"
    );
    assert!(
        matches!(se.as_slice(), [DtlsEvent::Connected { .. }]),
        "{se:?}"
    );
    // And garbage after the handshake leaves the association up.
    for g in &garbage {
        p.server.handle_datagram(g, now);
    }
    assert!(p.server.is_connected());
    assert!(p.server.poll_event().is_none());
}

#[test]
fn application_data_and_close() {
    let mut p = pair_with(SRTP_PROFILES, SRTP_PROFILES);
    let _ = pump(&mut p.client, &mut p.server);
    assert!(p.client.is_connected());
    let msg = b"sctp packet would go here";
    p.client.send_application_data(msg).expect("send");
    p.server.send_application_data(b"pong").expect("send");
    let (ce, se) = pump(&mut p.client, &mut p.server);
    assert_eq!(se, vec![DtlsEvent::ApplicationData(msg.len())]);
    assert_eq!(ce, vec![DtlsEvent::ApplicationData(4)]);
    let mut buf = [0u8; 64];
    let n = p.server.read_application_data(&mut buf).expect("data");
    assert_eq!(&buf[..n], msg);
    assert!(p.server.read_application_data(&mut buf).is_none());
    let n = p.client.read_application_data(&mut buf).expect("data");
    assert_eq!(&buf[..n], b"pong");

    p.client.close();
    assert!(p.client.is_finished());
    let (_, se) = pump(&mut p.client, &mut p.server);
    assert_eq!(se, vec![DtlsEvent::Closed]);
    assert_eq!(
        p.server.send_application_data(b"late"),
        Err(DtlsError::NotConnected)
    );
}

#[test]
fn application_data_before_connect_is_refused() {
    let mut p = pair_with(SRTP_PROFILES, SRTP_PROFILES);
    assert_eq!(
        p.client.send_application_data(b"early"),
        Err(DtlsError::NotConnected)
    );
}

#[test]
fn fingerprint_string_format() {
    assert_eq!(format_fingerprint(&[0xab, 0x01, 0xff]), "AB:01:FF");
    assert_eq!(format_fingerprint(&[]), "");
    let c = cert();
    let s = c.fingerprint_string();
    assert_eq!(s.len(), 32 * 3 - 1);
    for (i, ch) in s.chars().enumerate() {
        if i % 3 == 2 {
            assert_eq!(ch, ':');
        } else {
            assert!(ch.is_ascii_digit() || ('A'..='F').contains(&ch), "{s}");
        }
    }
    // The fingerprint is SHA-256 over the certificate's DER, computed independently.
    use sha2::Digest;
    let der = c.x509().to_der().expect("der");
    let digest: [u8; 32] = sha2::Sha256::digest(&der).into();
    assert_eq!(c.fingerprint(), digest);
}

#[test]
fn certificate_is_self_signed_p256_relay_30_days() {
    let c = cert();
    let x = c.x509();
    let cn = x
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .expect("CN")
        .data()
        .to_string()
        .expect("CN as text");
    assert_eq!(cn, "relay");
    let ec = c.private_key().ec_key().expect("EC key");
    assert_eq!(
        ec.group().curve_name(),
        Some(openssl::nid::Nid::X9_62_PRIME256V1)
    );
    assert!(x.verify(c.private_key()).expect("verify"), "self-signed");
    let days = x.not_before().diff(x.not_after()).expect("diff").days;
    assert_eq!(days, 30);
    // Two certificates differ (fresh key, random serial).
    let d = cert();
    assert_ne!(c.fingerprint(), d.fingerprint());
    assert_ne!(
        x.serial_number().to_bn().expect("bn"),
        d.x509().serial_number().to_bn().expect("bn")
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Arbitrary datagrams (biased towards DTLS-looking first bytes) never panic either
    /// role, never connect it, and nothing it sends exceeds the MTU.
    #[test]
    fn arbitrary_datagrams_never_panic_or_connect(
        datagrams in proptest::collection::vec(
            (20u8..=63, proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
            1..12,
        ),
        timeouts in proptest::bool::ANY,
    ) {
        let (ours, theirs) = (cert(), cert());
        let now = Instant::now();
        for role in [Role::Server, Role::Client] {
            let mut e = DtlsEndpoint::new(&ours, role, theirs.fingerprint()).expect("endpoint");
            for (first, rest) in &datagrams {
                let mut d = vec![*first];
                d.extend_from_slice(rest);
                e.handle_datagram(&d, now);
                if timeouts {
                    e.handle_timeout(now);
                }
                let mut out = [0u8; 2048];
                while let Some(n) = e.poll_transmit(&mut out) {
                    proptest::prop_assert!(n <= MTU as usize);
                }
                while let Some(ev) = e.poll_event() {
                    let connected = matches!(ev, DtlsEvent::Connected { .. });
                    proptest::prop_assert!(!connected);
                }
            }
        }
    }
}

/// Waits (on the real clock, which OpenSSL's DTLS timer reads) until just past
/// `deadline`, then lets `endpoint` handle its timeout.
fn fire_timer(endpoint: &mut DtlsEndpoint, deadline: Instant) {
    std::thread::sleep(
        deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(20),
    );
    endpoint.handle_timeout(Instant::now());
}
