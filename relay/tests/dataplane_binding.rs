//! The workers answer STUN Binding over IPv4 and IPv6 on both backends, with the
//! client's own address in XOR-MAPPED-ADDRESS, spread over several workers; non-STUN
//! datagrams are counted as drops and get no answer; shutdown is quick.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay::config::BackendChoice;
use relay::dataplane::{Dataplane, DataplaneConfig, StunHandler, select_backend};
use relay::stun::attr::{self, Attribute};
use relay::stun::{Class, Message, Method};

fn request(txid: [u8; 12]) -> [u8; 20] {
    let mut r = [0u8; 20];
    r[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    r[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    r[8..20].copy_from_slice(&txid);
    r
}

/// One Binding exchange; returns the XOR-MAPPED-ADDRESS of the answer after checking
/// the answer's class, method, transaction id and attribute list.
fn binding(client: &UdpSocket, server: SocketAddr, txid: [u8; 12]) -> SocketAddr {
    client.send_to(&request(txid), server).expect("send");
    let mut buf = [0u8; 1500];
    let (n, from) = client.recv_from(&mut buf).expect("answer within timeout");
    assert_eq!(from, server);
    let msg = Message::parse(&buf[..n]).expect("answer is STUN");
    assert_eq!(msg.class(), Class::SuccessResponse);
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.transaction_id().0, txid);
    let types: Vec<u16> = msg
        .attributes()
        .map(|a| a.expect("tlv").attr_type)
        .collect();
    assert_eq!(types, vec![attr::XOR_MAPPED_ADDRESS, attr::FINGERPRINT]);
    match msg.get(attr::XOR_MAPPED_ADDRESS).expect("decodes") {
        Some(Attribute::XorMappedAddress(a)) => a,
        other => panic!("no XOR-MAPPED-ADDRESS: {other:?}"),
    }
}

fn v6_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

fn serve_both_families(choice: BackendChoice) {
    let mut listen = vec!["127.0.0.1:0".parse().unwrap()];
    if v6_available() {
        listen.push("[::1]:0".parse().unwrap());
    } else {
        eprintln!("note: ::1 unavailable, IPv6 not tested");
    }
    let dp = Dataplane::start(
        &DataplaneConfig {
            listen,
            workers: 2,
            backend: choice,
        },
        StunHandler,
    )
    .expect("data path starts");
    assert_eq!(dp.workers(), 2);
    let servers = dp.listen().to_vec();
    assert!(
        servers.iter().all(|a| a.port() != 0),
        "ports resolved: {servers:?}"
    );

    let mut sent = 0u64;
    for server in &servers {
        let bind = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        // Several clients: distinct source ports spread over the workers by SO_REUSEPORT.
        for c in 0..8u8 {
            let client = UdpSocket::bind(bind).expect("client");
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let me = client.local_addr().unwrap();
            for k in 0..4u8 {
                let txid = [c, k, 1, 2, 3, 4, 5, 6, 7, 8, 9, server.is_ipv6() as u8];
                assert_eq!(
                    binding(&client, *server, txid),
                    me,
                    "mapped address is the client's"
                );
                sent += 1;
            }
        }
        // Not STUN: dropped, no answer.
        let client = UdpSocket::bind(bind).expect("client");
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        client.send_to(b"hello, not stun", server).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            client.recv_from(&mut buf).is_err(),
            "non-STUN must not be answered"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(3);
    let expected_drops = servers.len() as u64;
    loop {
        let c = dp.counts();
        if c.received == sent + expected_drops
            && c.answered == sent
            && c.dropped() == expected_drops
        {
            assert_eq!(
                c.dropped_by_handler[0], expected_drops,
                "counted as not_stun: {c:?}"
            );
            assert_eq!(c.errors, 0, "{c:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters {c:?}, want {sent} answered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dp.drop_reasons()[0], "not_stun");

    let t = Instant::now();
    dp.stop().expect("workers stop cleanly");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn io_uring_answers_binding_v4_and_v6() {
    match select_backend(BackendChoice::IoUring) {
        Ok(_) => serve_both_families(BackendChoice::IoUring),
        Err(e) if std::env::var_os("RELAY_REQUIRE_IO_URING").is_some() => {
            panic!("io_uring required but unavailable: {e}")
        }
        Err(e) => eprintln!("skipped: io_uring unavailable here: {e}"),
    }
}

#[test]
fn portable_answers_binding_v4_and_v6() {
    serve_both_families(BackendChoice::Portable);
}

#[test]
fn auto_picks_a_backend() {
    let (b, why) = select_backend(BackendChoice::Auto).expect("auto never fails");
    assert!(!why.is_empty());
    eprintln!("auto backend: {} ({why})", b.name());
}

#[test]
fn bind_conflict_is_reported() {
    // A socket without SO_REUSEPORT holds the port: the data path must fail, naming it.
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let err = Dataplane::start(
        &DataplaneConfig {
            listen: vec![addr],
            workers: 1,
            backend: BackendChoice::Portable,
        },
        StunHandler,
    )
    .err()
    .expect("port in use must fail");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// A burst far larger than the send slot pool is answered without worker-side drops.
fn burst(choice: BackendChoice) {
    let dp = Dataplane::start(
        &DataplaneConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 1,
            backend: choice,
        },
        StunHandler,
    )
    .expect("data path starts");
    let server = dp.listen()[0];
    let client = relay::dataplane::socket::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    const BURST: u32 = 3000;
    for i in 0..BURST {
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(&i.to_be_bytes());
        client.send_to(&request(txid), server).unwrap();
    }
    let mut got = 0u32;
    let mut buf = [0u8; 128];
    while got < BURST && client.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let c = loop {
        let c = dp.counts();
        let settled = c.answered >= u64::from(got) && c.answered + c.dropped() >= c.received;
        if settled || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The kernel may drop on either socket buffer; the worker itself must not.
    assert_eq!(c.dropped(), 0, "{c:?}");
    assert_eq!(c.errors, 0, "{c:?}");
    assert_eq!(c.answered, c.received, "{c:?}");
    assert!(
        got > 0 && u64::from(got) <= c.answered,
        "client got {got}, {c:?}"
    );
    eprintln!(
        "{choice:?} burst: sent {BURST}, worker received {}, client got {got}",
        c.received
    );
}

#[test]
fn io_uring_burst_without_worker_drops() {
    if select_backend(BackendChoice::IoUring).is_ok() {
        burst(BackendChoice::IoUring);
    }
}

#[test]
fn portable_burst_without_worker_drops() {
    burst(BackendChoice::Portable);
}
