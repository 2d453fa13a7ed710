//! Fuzzes a browser peer connection's transport (`relay::sfu::transport::PeerTransport`)
//! with arbitrary datagrams: it must never panic, never hand out media it could not
//! authenticate, never connect on forged input, and everything it sends must fit the
//! caller's buffer.
//!
//! The first byte picks the starting state: fresh, ICE-validated (a genuine nominating
//! check from the browser's address), or fully connected (a genuine DTLS handshake with a
//! browser endpoint). The rest is cut into datagrams by a length byte before each; the
//! length byte's top bits pick the source (browser or stranger), UDP or TCP, and whether
//! time jumps forward (past the consent timeout, eventually) with the timers run.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay::dtls::{Certificate, DtlsEndpoint, Role};
use relay::ice::Transport;
use relay::rtp::ExtMap;
use relay::sfu::control::{TransportRole, TransportSpec};
use relay::sfu::transport::{PeerTransport, Received, TransportError, TransportEvent};
use relay::stun::{Attribute, MessageBuilder, MessageType, TransactionId};

const LOCAL_PWD: &str = "fuzzPasswordFuzzPassword";

fn certs() -> &'static (Certificate, Certificate) {
    static CERTS: OnceLock<(Certificate, Certificate)> = OnceLock::new();
    CERTS.get_or_init(|| {
        (
            Certificate::generate().expect("certificate"),
            Certificate::generate().expect("certificate"),
        )
    })
}

fn local() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 5], 3478))
}

fn browser() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 54321))
}

fn stranger() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 40000))
}

fn nominating_check(buf: &mut [u8]) -> usize {
    let mut b = MessageBuilder::new(buf, MessageType::BINDING_REQUEST, TransactionId([9; 12]))
        .expect("fits");
    b.add(&Attribute::Username(b"fuzz:peer")).expect("fits");
    b.add(&Attribute::IceControlling(1)).expect("fits");
    b.add(&Attribute::Priority(1_845_501_695)).expect("fits");
    b.add(&Attribute::UseCandidate).expect("fits");
    b.add_message_integrity(LOCAL_PWD.as_bytes()).expect("fits");
    b.add_fingerprint().expect("fits");
    b.finish()
}

fn drain(t: &mut PeerTransport, out: &mut [u8]) {
    while let Some((n, _)) = t.poll_transmit(out) {
        assert!(n <= out.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let (ours, theirs) = certs();
    let spec = TransportSpec {
        id: 1,
        room: 1,
        participant: 1,
        role: TransportRole::Publisher,
        local_ufrag: "fuzz".into(),
        local_pwd: LOCAL_PWD.into(),
        remote_ufrag: "peer".into(),
        remote_pwd: "peerPasswordPeerPassword".into(),
        remote_fingerprint: theirs.fingerprint(),
        extensions: ExtMap::default(),
    };
    let mut t = PeerTransport::new(&spec, ours).expect("transport");
    let mut now = Instant::now();
    let mut buf = [0u8; 2048];
    let mut out = [0u8; 1500];
    let mode = data.first().copied().unwrap_or(0) % 3;
    let mut connected = false;
    if mode >= 1 {
        let n = nominating_check(&mut buf);
        t.handle_datagram(&mut buf, n, browser(), local(), Transport::Udp, now);
        drain(&mut t, &mut out);
    }
    if mode == 2 {
        let mut client =
            DtlsEndpoint::new(theirs, Role::Client, ours.fingerprint()).expect("client");
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
        connected = true;
    }

    let mut rest = data.get(1..).unwrap_or(&[]);
    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x3F) * 8 + usize::from(control & 0x07);
        let len = len.min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        let source = if control & 0x40 == 0 {
            browser()
        } else {
            stranger()
        };
        let transport = if control & 0x07 == 7 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        if control & 0x80 != 0 {
            now += Duration::from_secs(u64::from(control & 0x3F));
            t.handle_timeout(now);
        }
        buf[..len].copy_from_slice(datagram);
        // The length may also exceed the buffer: a clean drop.
        let claimed = if control == 0xFF { buf.len() + 1 } else { len };
        match t.handle_datagram(&mut buf, claimed, source, local(), transport, now) {
            Received::Handled => {}
            Received::Rtp { len: n } | Received::Rtcp { len: n } => {
                panic!("forged media of {n} bytes authenticated")
            }
        }
        drain(&mut t, &mut out);
        let _ = t.media_destination(now);
        let _ = t.poll_timeout();
        let _ = t.stats();
    }
    while let Some(e) = t.poll_event() {
        assert_eq!(e, TransportEvent::Disconnected, "forged input connected");
    }
    if !connected {
        assert!(!t.is_connected());
        let n = 12;
        buf[..n].copy_from_slice(&[0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        assert!(matches!(
            t.protect_rtp(&mut buf, n),
            Err(TransportError::NotConnected)
        ));
    } else if t.is_connected() {
        // Protection still works on whatever the fuzzer left.
        buf[..12].copy_from_slice(&[0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        t.protect_rtp(&mut buf, 12).expect("protect after fuzz");
    }
});
