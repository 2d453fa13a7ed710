//! Proves that a connected `PeerTransport` unprotects and protects RTP and RTCP, answers
//! consent checks on its pair and runs its timers without allocating: every media packet
//! of a browser connection goes through it on the data path's thread.
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own (the lib's unit tests cannot hold it).

use std::net::SocketAddr;
use std::time::Instant;

use relay::dtls::{Certificate, DtlsEndpoint, DtlsEvent, Role};
use relay::ice::Transport;
use relay::rtp::ExtMap;
use relay::sfu::control::{TransportRole, TransportSpec};
use relay::sfu::transport::{PeerTransport, Received, TransportEvent};
use relay::srtp::{Profile, SrtpSession, session_keys};
use relay::stun::{Attribute, MessageBuilder, MessageType, TransactionId};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

const LOCAL_PWD: &str = "sfuPasswordSfuPassword12";

fn local() -> SocketAddr {
    "203.0.113.5:3478".parse().expect("addr")
}

fn browser() -> SocketAddr {
    "198.51.100.7:54321".parse().expect("addr")
}

/// A controlling browser's nominating check, signed with our password.
fn check(buf: &mut [u8], tid: u8) -> usize {
    let mut b = MessageBuilder::new(buf, MessageType::BINDING_REQUEST, TransactionId([tid; 12]))
        .expect("fits");
    b.add(&Attribute::Username(b"sfuU:brws")).expect("fits");
    b.add(&Attribute::IceControlling(42)).expect("fits");
    b.add(&Attribute::Priority(1_845_501_695)).expect("fits");
    b.add(&Attribute::UseCandidate).expect("fits");
    b.add_message_integrity(LOCAL_PWD.as_bytes()).expect("fits");
    b.add_fingerprint().expect("fits");
    b.finish()
}

fn rtp(seq: u16, ssrc: u32, buf: &mut [u8]) -> usize {
    buf[0] = 0x80;
    buf[1] = 96;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..1012].fill(seq as u8);
    1012
}

fn rtcp(ssrc: u32, buf: &mut [u8]) -> usize {
    buf[..4].copy_from_slice(&[0x80, 201, 0, 1]);
    buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
    8
}

/// A connected transport and the browser's (tx, rx) SRTP sessions.
fn connected(profiles: &str) -> (PeerTransport, SrtpSession, SrtpSession) {
    let sfu_cert = Certificate::generate().expect("certificate");
    let browser_cert = Certificate::generate().expect("certificate");
    let spec = TransportSpec {
        id: 1,
        room: 1,
        participant: 1,
        role: TransportRole::Subscriber,
        local_ufrag: "sfuU".into(),
        local_pwd: LOCAL_PWD.into(),
        remote_ufrag: "brws".into(),
        remote_pwd: "browserPasswordBrowser34".into(),
        remote_fingerprint: browser_cert.fingerprint(),
        extensions: ExtMap::default(),
    };
    let mut t = PeerTransport::new(&spec, &sfu_cert).expect("transport");
    let mut client = DtlsEndpoint::with_srtp_profiles(
        &browser_cert,
        Role::Client,
        sfu_cert.fingerprint(),
        profiles,
    )
    .expect("client");
    let now = Instant::now();
    let mut buf = [0u8; 2048];
    let n = check(&mut buf, 1);
    t.handle_datagram(&mut buf, n, browser(), local(), Transport::Udp, now);
    for _ in 0..32 {
        let mut moved = 0;
        while let Some(n) = client.poll_transmit(&mut buf) {
            moved += 1;
            t.handle_datagram(&mut buf, n, browser(), local(), Transport::Udp, now);
        }
        while let Some((n, _)) = t.poll_transmit(&mut buf) {
            moved += 1;
            client.handle_datagram(&buf[..n], now);
        }
        if moved == 0 {
            break;
        }
    }
    assert_eq!(t.poll_event(), Some(TransportEvent::Connected));
    let mut keys = None;
    while let Some(e) = client.poll_event() {
        if let DtlsEvent::Connected {
            profile,
            keying_material,
            ..
        } = e
        {
            let profile = Profile::from_id(profile).expect("profile");
            keys = Some(session_keys(profile, keying_material.as_bytes(), true).expect("keys"));
        }
    }
    let (tx, rx) = keys.expect("browser connected");
    (
        t,
        SrtpSession::new(&tx).expect("tx"),
        SrtpSession::new(&rx).expect("rx"),
    )
}

#[test]
fn connected_transport_media_path_does_not_allocate() {
    for profiles in ["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"] {
        let (mut t, mut tx, mut rx) = connected(profiles);
        let mut buf = vec![0u8; 1500];
        let mut out = vec![0u8; 1500];
        let run = |t: &mut PeerTransport,
                   tx: &mut SrtpSession,
                   rx: &mut SrtpSession,
                   buf: &mut [u8],
                   out: &mut [u8],
                   seqs: std::ops::Range<u16>|
         -> (u64, u64) {
            let (mut rtp_ok, mut rtcp_ok) = (0u64, 0u64);
            for seq in seqs {
                let now = Instant::now();
                // Browser → SFU: RTP on two SSRCs, and RTCP.
                for ssrc in [0x1111_0001, 0x1111_0002] {
                    let len = rtp(seq, ssrc, buf);
                    let n = tx.protect_rtp(buf, len).expect("protect");
                    let r = t.handle_datagram(buf, n, browser(), local(), Transport::Udp, now);
                    if r == (Received::Rtp { len }) {
                        rtp_ok += 1;
                    }
                }
                let len = rtcp(0x1111_0001, buf);
                let n = tx.protect_rtcp(buf, len).expect("protect");
                if t.handle_datagram(buf, n, browser(), local(), Transport::Udp, now)
                    == (Received::Rtcp { len })
                {
                    rtcp_ok += 1;
                }
                // SFU → browser.
                let len = rtp(seq, 0x2222_0001, buf);
                let n = t.protect_rtp(buf, len).expect("protect");
                rx.unprotect_rtp(&mut buf[..n]).expect("browser unprotects");
                let len = rtcp(0x2222_0001, buf);
                let n = t.protect_rtcp(buf, len).expect("protect");
                rx.unprotect_rtcp(&mut buf[..n])
                    .expect("browser unprotects");
                assert_eq!(t.media_destination(now), Some(browser()));
                // A consent check now and then, its answer, the timers.
                if seq % 100 == 0 {
                    let n = check(buf, seq as u8);
                    t.handle_datagram(buf, n, browser(), local(), Transport::Udp, now);
                    while t.poll_transmit(out).is_some() {}
                }
                if t.poll_timeout().is_some_and(|deadline| deadline <= now) {
                    t.handle_timeout(now);
                }
                assert!(t.poll_event().is_none());
            }
            (rtp_ok, rtcp_ok)
        };
        // Warm-up: first packets of each SSRC, first answer.
        run(&mut t, &mut tx, &mut rx, &mut buf, &mut out, 0..10);
        let mut counts = (0, 0);
        let allocations = allocations_during(|| {
            counts = run(&mut t, &mut tx, &mut rx, &mut buf, &mut out, 10..2010);
        });
        assert_eq!(
            counts,
            (4000, 2000),
            "{profiles}: every packet came through"
        );
        assert_eq!(allocations, 0, "{profiles}: allocations on the media path");
        let s = t.stats();
        assert_eq!(s.rtp_in, 4020);
        assert_eq!(
            s.srtp_auth_failures + s.srtp_replays + s.dropped,
            0,
            "{s:?}"
        );
    }
}
