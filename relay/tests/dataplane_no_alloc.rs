//! Proves the worker's steady state allocates nothing: a counting global allocator counts
//! allocations made on the worker thread only, and 10,000 Binding requests answered after
//! a warm-up must not add a single one; likewise 10,000 TURN ChannelData frames relayed
//! each way (client socket ↔ worker ↔ peer socket on loopback) after an authenticated
//! Allocate, CreatePermission and ChannelBind, over a UDP, a TCP and a TLS client leg
//! (TLS 1.3 and 1.2, a rustls client in the test; the handshake is not measured, every
//! record after it is). Runs for both backends.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use relay::config::BackendChoice;
use relay::dataplane::{
    Backend, RelaySpec, StunHandler, TurnSetup, Worker, WorkerCounters, select_backend, socket,
};
use relay::policy::{PeerPolicy, PolicyConfig, Quotas};
use relay::stun::attr::{self, Attribute};
use relay::stun::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use relay::turn::attrs::{self as tattr, method};
use relay::turn::auth::{Credentials, PasswordAlgorithm, long_term_key};
use relay::turn::{Shared, TurnConfig};

#[path = "common/thread_alloc.rs"]
#[allow(dead_code)] // thread_tid: these workers name themselves by calling watch
mod thread_alloc;

/// Counts the calling thread's allocations from now on (the worker threads call it first).
fn watch_this_thread() {
    // SAFETY: gettid has no preconditions and cannot fail.
    thread_alloc::watch(unsafe { libc::gettid() });
}

const WARM_UP: u64 = 1_000;
const N: u64 = 10_000;
const WINDOW: u64 = 32;

fn request(id: u64) -> [u8; 20] {
    let mut r = [0u8; 20];
    r[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    r[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    r[8..16].copy_from_slice(&id.to_be_bytes());
    r[16..20].copy_from_slice(b"nall");
    r
}

/// Sends `count` requests starting at `first` in windows, checks every answer is a
/// Binding success response for one of the window's transactions.
fn exchange(client: &UdpSocket, server: SocketAddr, first: u64, count: u64) {
    let mut buf = [0u8; 1500];
    let mut id = first;
    while id < first + count {
        let n = WINDOW.min(first + count - id);
        for k in 0..n {
            client.send_to(&request(id + k), server).expect("send");
        }
        for _ in 0..n {
            let (len, from) = client
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no answer within the window at id {id}: {e}"));
            assert_eq!(from, server);
            assert!(len >= 20, "answer too short: {len}");
            assert_eq!(
                &buf[0..2],
                &0x0101u16.to_be_bytes(),
                "Binding success response"
            );
            let answered = u64::from_be_bytes(buf[8..16].try_into().unwrap());
            assert!(
                (id..id + n).contains(&answered),
                "answer {answered} outside window {id}"
            );
            assert_eq!(&buf[16..20], b"nall");
        }
        id += n;
    }
}

fn wait_for(counters: &WorkerCounters, received: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = counters.snapshot();
        if c.received >= received && c.answered >= received {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counters stuck at {c:?}, want {received}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One watched thread at a time (thread_alloc watches a single thread id).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn steady_state_allocates_nothing(backend: Backend) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sock = socket::bind_udp("127.0.0.1:0".parse().unwrap()).expect("bind");
    let server = sock.local_addr().unwrap();
    let counters = Arc::new(WorkerCounters::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker = {
        let counters = counters.clone();
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            watch_this_thread();
            let w = Worker::new(0, backend, vec![sock], StunHandler, counters);
            let ok = w.is_ok();
            ready_tx.send(ok).unwrap();
            w.expect("worker set-up").run(&shutdown)
        })
    };
    assert!(
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("worker ready")
    );

    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    exchange(&client, server, 0, WARM_UP);
    wait_for(&counters, WARM_UP);
    let before = thread_alloc::allocations();
    exchange(&client, server, WARM_UP, N);
    wait_for(&counters, WARM_UP + N);
    let after = thread_alloc::allocations();

    let stop = Instant::now();
    shutdown.store(true, Ordering::Relaxed);
    worker.join().expect("worker thread").expect("worker loop");
    let stopped_in = stop.elapsed();

    let c = counters.snapshot();
    assert_eq!(c.received, WARM_UP + N, "{c:?}");
    assert_eq!(c.answered, WARM_UP + N, "{c:?}");
    assert_eq!(c.dropped(), 0, "{c:?}");
    assert_eq!(c.errors, 0, "{c:?}");
    assert!(
        before > 0,
        "the counting allocator saw the worker's set-up allocations"
    );
    assert_eq!(
        after - before,
        0,
        "{} allocations on the worker thread while answering {N} requests ({backend:?})",
        after - before
    );
    assert!(
        stopped_in < Duration::from_millis(300),
        "worker took {stopped_in:?} to stop"
    );
}

#[test]
fn io_uring_worker_does_not_allocate_per_packet() {
    match select_backend(BackendChoice::IoUring) {
        Ok((b, _)) => steady_state_allocates_nothing(b),
        Err(e) if std::env::var_os("RELAY_REQUIRE_IO_URING").is_some() => {
            panic!("io_uring required but unavailable: {e}")
        }
        Err(e) => eprintln!("skipped: io_uring unavailable here: {e}"),
    }
}

#[test]
fn portable_worker_does_not_allocate_per_packet() {
    steady_state_allocates_nothing(Backend::Portable);
}

// ---------------------------------------------------------------------------------------
// TURN ChannelData through a worker

const REALM: &str = "noalloc.test";

/// Builds a request's attributes for its transaction id (XOR values depend on it).
type AttrsFor<'a> = &'a dyn Fn(&TransactionId) -> Vec<(u16, Vec<u8>)>;

/// The client's transport to the worker.
enum Link {
    Udp(UdpSocket, SocketAddr),
    Tcp(std::net::TcpStream, Vec<u8>),
    Tls(
        Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
        Vec<u8>,
    ),
}

/// Which client leg a TURN run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Udp,
    Tcp,
    Tls13,
    Tls12,
}

/// Reads one STUN/ChannelData frame off a stream.
fn read_frame(s: &mut impl std::io::Read, pending: &mut Vec<u8>) -> Vec<u8> {
    for _ in 0..10_000 {
        if let Some(r) = relay::turn::framing::frame_len(pending) {
            let n = r.expect("valid framing");
            if pending.len() >= n {
                return pending.drain(..n).collect();
            }
        }
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).expect("client receives");
        assert!(n > 0, "server closed the connection");
        pending.extend_from_slice(&b[..n]);
    }
    panic!("no complete frame after 10000 reads");
}

/// A self-signed certificate for "localhost" as PEM files (removed on drop).
struct TestCert {
    dir: std::path::PathBuf,
    der: rustls_pki_types::CertificateDer<'static>,
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn test_cert() -> TestCert {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("relay-noalloc-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), ck.signing_key.serialize_pem()).unwrap();
    TestCert {
        dir,
        der: ck.cert.der().clone(),
    }
}

fn tls_link(server: SocketAddr, cert: &TestCert, leg: Leg) -> Link {
    let s = std::net::TcpStream::connect(server).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let version = if leg == Leg::Tls12 {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        rustls_pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut stream = rustls::StreamOwned::new(conn, s);
    // Complete the handshake before any TURN traffic.
    for _ in 0..100 {
        if !stream.conn.is_handshaking() {
            break;
        }
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    assert!(!stream.conn.is_handshaking(), "TLS handshake completed");
    let want = if leg == Leg::Tls12 {
        rustls::ProtocolVersion::TLSv1_2
    } else {
        rustls::ProtocolVersion::TLSv1_3
    };
    assert_eq!(stream.conn.protocol_version(), Some(want));
    Link::Tls(Box::new(stream), Vec::new())
}

impl Link {
    fn send(&mut self, bytes: &[u8]) {
        match self {
            Link::Udp(s, to) => {
                s.send_to(bytes, *to).unwrap();
            }
            Link::Tcp(s, _) => std::io::Write::write_all(s, bytes).unwrap(),
            Link::Tls(s, _) => {
                std::io::Write::write_all(s, bytes).unwrap();
                std::io::Write::flush(s).unwrap();
            }
        }
    }

    /// The next datagram / frame.
    fn recv(&mut self) -> Vec<u8> {
        match self {
            Link::Udp(s, server) => {
                let mut b = [0u8; 1500];
                let (n, from) = s.recv_from(&mut b).expect("client receives");
                assert_eq!(from, *server);
                b[..n].to_vec()
            }
            Link::Tcp(s, pending) => read_frame(s, pending),
            Link::Tls(s, pending) => read_frame(&mut **s, pending),
        }
    }
}

struct TurnClient {
    link: Link,
    key: Vec<u8>,
    nonce: Vec<u8>,
    tid: u64,
}

impl TurnClient {
    /// One request (XOR values are built for `tid`), retried once after a 401 challenge.
    fn ok(&mut self, method_code: u16, attrs: AttrsFor<'_>) {
        for _ in 0..2 {
            self.tid += 1;
            let mut t = [0u8; 12];
            t[4..].copy_from_slice(&self.tid.to_be_bytes());
            let tid = TransactionId(t);
            let mut buf = [0u8; 1500];
            let mut b = MessageBuilder::new(
                &mut buf,
                MessageType::new(Method::new(method_code).unwrap(), Class::Request),
                tid,
            )
            .unwrap();
            for (ty, v) in attrs(&tid) {
                b.add(&Attribute::Other {
                    attr_type: ty,
                    value: &v,
                })
                .unwrap();
            }
            if !self.nonce.is_empty() {
                b.add(&Attribute::Username(b"bob")).unwrap();
                b.add(&Attribute::Realm(REALM.as_bytes())).unwrap();
                b.add(&Attribute::Nonce(&self.nonce)).unwrap();
                b.add_message_integrity(&self.key).unwrap();
            }
            let n = b.finish();
            self.link.send(&buf[..n]);
            let rb = self.link.recv();
            let msg = Message::parse(&rb).unwrap();
            assert_eq!(msg.transaction_id(), &tid);
            if msg.class() == Class::SuccessResponse {
                return;
            }
            match msg.get(attr::NONCE).unwrap() {
                Some(Attribute::Nonce(n)) => self.nonce = n.to_vec(),
                other => panic!("method {method_code:#x} failed: {other:?} {msg:?}"),
            }
        }
        panic!("method {method_code:#x} not accepted");
    }
}

fn xor_peer(peer: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    let mut v = [0u8; tattr::XOR_ADDRESS_MAX];
    let n = tattr::encode_xor_address(peer, tid, &mut v);
    v[..n].to_vec()
}

fn turn_steady_state_allocates_nothing(backend: Backend, leg: Leg) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sock = socket::bind_udp("127.0.0.1:0".parse().unwrap()).expect("bind");
    let server = sock.local_addr().unwrap();
    let counters = Arc::new(WorkerCounters::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let policy = PeerPolicy::new(
        &PolicyConfig {
            allow: vec!["127.0.0.0/8".into()],
            deny: vec![],
        },
        &[],
    )
    .unwrap();
    let mut users = std::collections::HashMap::new();
    users.insert("bob".to_owned(), "secret".to_owned());
    let shared = Arc::new(Shared::new(
        Credentials {
            realm: REALM.into(),
            users,
            secrets: vec![],
        },
        Arc::new(policy),
        Arc::new(Quotas::new(10, 10)),
    ));
    let config = Arc::new(TurnConfig {
        relay_ipv4: Some("127.0.0.1".parse().unwrap()),
        unauth_reply_allowance: 512,
        ..TurnConfig::default()
    });
    let (_commands_tx, commands) = std::sync::mpsc::channel();
    let tcp_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_server = tcp_listener.local_addr().unwrap();
    let tls_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_server = tls_listener.local_addr().unwrap();
    let cert = test_cert();
    let tls = Arc::new(
        relay::tls::TlsReloader::load(&cert.dir.join("c.pem"), &cert.dir.join("k.pem"))
            .expect("certificate loads"),
    );
    let setup = TurnSetup {
        config: config.clone(),
        shared,
        relay: RelaySpec {
            ipv4: config.relay_ipv4,
            ipv6: None,
            ports: (40000, 60999),
        },
        tcp: vec![tcp_listener.try_clone().unwrap()],
        tls: vec![tls_listener.try_clone().unwrap()],
        tls_config: Some(tls),
        commands,
        reservations: Arc::default(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker = {
        let counters = counters.clone();
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            watch_this_thread();
            let w = Worker::with_turn(0, backend, vec![sock], StunHandler, counters, setup);
            ready_tx.send(w.is_ok()).unwrap();
            w.expect("worker set-up").run(&shutdown)
        })
    };
    assert!(
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("worker ready")
    );

    let link = match leg {
        Leg::Tcp => {
            let s = std::net::TcpStream::connect(tcp_server).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.set_nodelay(true).unwrap();
            Link::Tcp(s, Vec::new())
        }
        Leg::Tls13 | Leg::Tls12 => tls_link(tls_server, &cert, leg),
        Leg::Udp => {
            let client = UdpSocket::bind("127.0.0.1:0").expect("client");
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            Link::Udp(client, server)
        }
    };
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TurnClient {
        link,
        key: long_term_key(PasswordAlgorithm::Md5, b"bob", REALM.as_bytes(), b"secret")
            .as_bytes()
            .to_vec(),
        nonce: Vec::new(),
        tid: 0,
    };
    c.ok(method::ALLOCATE, &|_| {
        vec![(tattr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])]
    });
    c.ok(method::CREATE_PERMISSION, &|tid| {
        vec![(tattr::XOR_PEER_ADDRESS, xor_peer(peer_addr, tid))]
    });
    c.ok(method::CHANNEL_BIND, &|tid| {
        vec![
            (tattr::CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0]),
            (tattr::XOR_PEER_ADDRESS, xor_peer(peer_addr, tid)),
        ]
    });

    // One datagram from the peer tells us the relayed address (learned from the first
    // client → peer frame).
    let mut relay_both_ways = |first: u64, count: u64| -> SocketAddr {
        let mut relayed = None;
        let mut frame = [0u8; 4 + 8];
        frame[..2].copy_from_slice(&0x4000u16.to_be_bytes());
        frame[2..4].copy_from_slice(&8u16.to_be_bytes());
        let mut buf = [0u8; 256];
        let mut id = first;
        while id < first + count {
            let n = WINDOW.min(first + count - id);
            for k in 0..n {
                frame[4..].copy_from_slice(&(id + k).to_be_bytes());
                c.link.send(&frame);
            }
            for _ in 0..n {
                let (len, from) = peer.recv_from(&mut buf).expect("peer receives");
                assert_eq!(len, 8, "payload only");
                let got = u64::from_be_bytes(buf[..8].try_into().unwrap());
                assert!((id..id + n).contains(&got), "{got} outside window {id}");
                relayed = Some(from);
            }
            let to = relayed.unwrap();
            for k in 0..n {
                peer.send_to(&(id + k).to_be_bytes(), to).unwrap();
            }
            for _ in 0..n {
                let got = c.link.recv();
                let len = got.len();
                buf[..len].copy_from_slice(&got);
                assert_eq!(len, 12, "ChannelData header + 8 bytes");
                assert_eq!(&buf[..2], &0x4000u16.to_be_bytes());
                let got = u64::from_be_bytes(buf[4..12].try_into().unwrap());
                assert!((id..id + n).contains(&got), "{got} outside window {id}");
            }
            id += n;
        }
        relayed.unwrap()
    };
    relay_both_ways(0, WARM_UP);
    let before = thread_alloc::allocations();
    relay_both_ways(WARM_UP, N);
    let after = thread_alloc::allocations();

    shutdown.store(true, Ordering::Relaxed);
    worker.join().expect("worker thread").expect("worker loop");
    let c = counters.snapshot();
    assert_eq!(c.errors, 0, "{c:?}");
    assert_eq!(c.dropped(), 0, "{c:?}");
    // Datagrams counted: peer → relay always, client → worker only over UDP.
    let per_way = WARM_UP + N;
    assert!(
        c.received
            >= if leg == Leg::Udp {
                2 * per_way
            } else {
                per_way
            },
        "datagrams counted: {c:?}"
    );
    assert!(before > 0, "the counting allocator saw the worker's set-up");
    assert_eq!(
        after - before,
        0,
        "{} allocations on the worker thread while relaying {N} ChannelData each way ({backend:?}, {leg:?})",
        after - before
    );
}

#[test]
fn io_uring_turn_worker_does_not_allocate_per_packet() {
    match select_backend(BackendChoice::IoUring) {
        Ok((b, _)) => {
            for leg in [Leg::Udp, Leg::Tcp, Leg::Tls13, Leg::Tls12] {
                turn_steady_state_allocates_nothing(b, leg);
            }
        }
        Err(e) if std::env::var_os("RELAY_REQUIRE_IO_URING").is_some() => {
            panic!("io_uring required but unavailable: {e}")
        }
        Err(e) => eprintln!("skipped: io_uring unavailable here: {e}"),
    }
}

#[test]
fn portable_turn_worker_does_not_allocate_per_packet() {
    for leg in [Leg::Udp, Leg::Tcp, Leg::Tls13, Leg::Tls12] {
        turn_steady_state_allocates_nothing(Backend::Portable, leg);
    }
}
