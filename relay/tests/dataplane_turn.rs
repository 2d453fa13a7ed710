//! TURN through real workers on 127.0.0.1: a hand-written client (STUN builder, long-term
//! credentials) allocates, creates a permission for a peer socket, relays with Send/Data
//! indications and with ChannelData both ways, deletes with Refresh 0 — over UDP, TCP
//! and TLS (self-signed rcgen certificate trusted by the rustls client), on both
//! backends. The peer policy allows 127.0.0.0/8 explicitly (loopback is denied by
//! default). Also: the control commands (allocations, kick, stats) and TLS reload.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::config::BackendChoice;
use relay::dataplane::{Dataplane, DataplaneConfig, TurnDataplane, select_backend};
use relay::policy::{PeerPolicy, PolicyConfig, Quotas};
use relay::stun::attr::{self, Attribute};
use relay::stun::builder::MessageBuilder;
use relay::stun::header::{MessageType, TransactionId};
use relay::stun::{Class, Message, Method};
use relay::tls::TlsReloader;
use relay::turn::attrs::{self as tattr, method};
use relay::turn::auth::{Credentials, PasswordAlgorithm, long_term_key};
use relay::turn::{KickTarget, Shared, TurnConfig, framing};

const USER: &str = "alice";
const PASS: &str = "wonderland";
const REALM: &str = "relay.test";
const TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// Test fixtures

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "relay-{tag}-{}-{:016x}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_ne_bytes(b)
}

/// A self-signed certificate for "localhost" / 127.0.0.1 written as PEM files.
struct Cert {
    der: rustls_pki_types::CertificateDer<'static>,
    cert: PathBuf,
    key: PathBuf,
}

fn write_cert(dir: &TempDir, name: &str) -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.0.join(format!("{name}.crt"));
    let key = dir.0.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Cert {
        der: ck.cert.der().clone(),
        cert,
        key,
    }
}

struct Server {
    dp: Dataplane,
    _dir: TempDir,
    cert: Cert,
}

fn start(choice: BackendChoice, workers: usize) -> Server {
    start_on(choice, workers, "127.0.0.1:0".parse().unwrap())
}

fn start_on(choice: BackendChoice, workers: usize, udp: SocketAddr) -> Server {
    start_with_quotas(choice, workers, udp, Quotas::new(100, 1000))
}

/// [`start_on`] with its own allocation quotas.
fn start_with_quotas(
    choice: BackendChoice,
    workers: usize,
    udp: SocketAddr,
    quotas: Quotas,
) -> Server {
    let dir = TempDir::new("turn-test");
    let cert = write_cert(&dir, "a");
    let tls = Arc::new(TlsReloader::load(&cert.cert, &cert.key).expect("certificate loads"));
    let policy = PeerPolicy::new(
        &PolicyConfig {
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            deny: vec![],
        },
        &[],
    )
    .unwrap();
    let mut users = HashMap::new();
    users.insert(USER.to_owned(), PASS.to_owned());
    let shared = Shared::new(
        Credentials {
            realm: REALM.into(),
            users,
            secrets: vec![],
        },
        Arc::new(policy),
        Arc::new(quotas),
    );
    let config = TurnConfig {
        relay_ipv4: Some("127.0.0.1".parse().unwrap()),
        relay_ipv6: v6_available().then(|| "::1".parse().unwrap()),
        // Loopback clients: the 401 challenge may be larger than the bare request.
        unauth_reply_allowance: 512,
        ..TurnConfig::default()
    };
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let dp = Dataplane::start_turn(
        &DataplaneConfig {
            listen: vec![udp],
            workers,
            backend: choice,
        },
        TurnDataplane {
            config: Arc::new(config),
            shared: Arc::new(shared),
            port_range: (40000, 60999),
            listen_tcp: vec![local],
            listen_tls: vec![local],
            tls: Some(tls),
        },
    )
    .expect("TURN data path starts");
    Server {
        dp,
        _dir: dir,
        cert,
    }
}

// ---------------------------------------------------------------------------------------
// A minimal TURN client over one transport

enum Link {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, Vec<u8>),
    Tls(
        Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
        Vec<u8>,
    ),
}

impl Link {
    fn udp(server: SocketAddr) -> Link {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        Link::Udp(s, server)
    }

    fn tcp(server: SocketAddr) -> Link {
        let s = TcpStream::connect_timeout(&server, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        Link::Tcp(s, Vec::new())
    }

    fn tls(server: SocketAddr, trust: &rustls_pki_types::CertificateDer<'static>) -> Link {
        let s = TcpStream::connect_timeout(&server, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trust.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        Link::Tls(Box::new(rustls::StreamOwned::new(conn, s)), Vec::new())
    }

    fn is_stream(&self) -> bool {
        !matches!(self, Link::Udp(..))
    }

    fn send(&mut self, bytes: &[u8]) {
        match self {
            Link::Udp(s, to) => {
                s.send_to(bytes, *to).unwrap();
            }
            Link::Tcp(s, _) => s.write_all(bytes).unwrap(),
            Link::Tls(s, _) => {
                s.write_all(bytes).unwrap();
                s.flush().unwrap();
            }
        }
    }

    /// The next message or ChannelData frame (None on timeout).
    fn recv(&mut self) -> Option<Vec<u8>> {
        match self {
            Link::Udp(s, from) => {
                let mut buf = [0u8; 2048];
                match s.recv_from(&mut buf) {
                    Ok((n, a)) => {
                        assert_eq!(a, *from, "answer from the listen address");
                        Some(buf[..n].to_vec())
                    }
                    Err(_) => None,
                }
            }
            Link::Tcp(s, pending) => read_frame(s, pending),
            Link::Tls(s, pending) => read_frame(&mut **s, pending),
        }
    }
}

fn read_frame(s: &mut impl Read, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(r) = framing::frame_len(pending) {
            let n = r.expect("server sends valid framing");
            if pending.len() >= n {
                return Some(pending.drain(..n).collect());
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

struct Client {
    link: Link,
    nonce: Vec<u8>,
    key: Vec<u8>,
    next_tid: u64,
}

fn m(v: u16) -> Method {
    Method::new(v).unwrap()
}

fn other(attr_type: u16, value: &[u8]) -> Attribute<'_> {
    Attribute::Other { attr_type, value }
}

impl Client {
    fn new(link: Link) -> Client {
        Client {
            link,
            nonce: Vec::new(),
            key: long_term_key(
                PasswordAlgorithm::Md5,
                USER.as_bytes(),
                REALM.as_bytes(),
                PASS.as_bytes(),
            )
            .as_bytes()
            .to_vec(),
            next_tid: rand_u64(),
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId(t)
    }

    /// Builds a request of `method` with `attrs`, authenticated when a nonce is known.
    fn build(&mut self, method: u16, attrs: &[Attribute<'_>], tid: TransactionId) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(m(method), Class::Request), tid)
            .unwrap();
        for a in attrs {
            b.add(a).unwrap();
        }
        if !self.nonce.is_empty() {
            b.add(&Attribute::Username(USER.as_bytes())).unwrap();
            b.add(&Attribute::Realm(REALM.as_bytes())).unwrap();
            let nonce = self.nonce.clone();
            b.add(&Attribute::Nonce(&nonce)).unwrap();
            b.add_message_integrity(&self.key).unwrap();
        }
        b.add_fingerprint().unwrap();
        let n = b.finish();
        buf.truncate(n);
        buf
    }

    /// Sends a request and returns the matching response (skipping indications).
    fn transact(&mut self, method: u16, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let tid = self.tid();
        let req = self.build(method, attrs, tid);
        self.link.send(&req);
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            let Some(resp) = self.link.recv() else { break };
            if let Ok(msg) = Message::parse(&resp)
                && msg.transaction_id() == &tid
            {
                assert_eq!(msg.method(), m(method));
                return resp;
            }
        }
        panic!("no answer to method {method:#x}");
    }

    /// A request that must succeed (authenticating first if challenged).
    fn ok(&mut self, method: u16, attrs: &[Attribute<'_>]) -> Vec<u8> {
        for _ in 0..3 {
            let resp = self.transact(method, attrs);
            let msg = Message::parse(&resp).unwrap();
            match msg.class() {
                Class::SuccessResponse => {
                    relay::stun::integrity::verify_message_integrity(&msg, &self.key)
                        .expect("success response carries a valid MESSAGE-INTEGRITY");
                    return resp;
                }
                Class::ErrorResponse => {
                    let code = match msg.get(attr::ERROR_CODE).unwrap() {
                        Some(Attribute::ErrorCode(e)) => e.code,
                        other => panic!("error without ERROR-CODE: {other:?}"),
                    };
                    assert!(
                        code == 401 || code == 438,
                        "method {method:#x} failed with {code}"
                    );
                    match msg.get(attr::NONCE).unwrap() {
                        Some(Attribute::Nonce(n)) => self.nonce = n.to_vec(),
                        other => panic!("{code} without NONCE: {other:?}"),
                    }
                    match msg.get(attr::REALM).unwrap() {
                        Some(Attribute::Realm(r)) => assert_eq!(r, REALM.as_bytes()),
                        other => panic!("{code} without REALM: {other:?}"),
                    }
                }
                c => panic!("unexpected class {c:?}"),
            }
        }
        panic!("authentication did not converge");
    }

    fn allocate(&mut self) -> (SocketAddr, SocketAddr) {
        let resp = self.ok(
            method::ALLOCATE,
            &[other(tattr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])],
        );
        let msg = Message::parse(&resp).unwrap();
        let relayed = xor_attr(&msg, tattr::XOR_RELAYED_ADDRESS).expect("XOR-RELAYED-ADDRESS");
        let mapped = match msg.get(attr::XOR_MAPPED_ADDRESS).unwrap() {
            Some(Attribute::XorMappedAddress(a)) => a,
            other => panic!("no XOR-MAPPED-ADDRESS: {other:?}"),
        };
        (relayed, mapped)
    }

    fn peer_attr(peer: SocketAddr, tid: &TransactionId) -> ([u8; tattr::XOR_ADDRESS_MAX], usize) {
        let mut v = [0u8; tattr::XOR_ADDRESS_MAX];
        let n = tattr::encode_xor_address(peer, tid, &mut v);
        (v, n)
    }

    fn create_permission(&mut self, peer: SocketAddr) {
        // The XOR is over the request's transaction id: build by hand.
        let tid = self.tid();
        let (v, n) = Self::peer_attr(peer, &tid);
        self.next_tid -= 1; // `ok` → `transact` takes the same id again.
        let resp = self.ok_with_tid(
            method::CREATE_PERMISSION,
            &[other(tattr::XOR_PEER_ADDRESS, &v[..n])],
        );
        let _ = resp;
    }

    /// `ok` whose first transaction id is the next one (so XOR values match it). On a
    /// challenge the request is rebuilt by the caller's closure semantics: XOR values
    /// depend on the id, so retry with the same id.
    fn ok_with_tid(&mut self, method: u16, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let start = self.next_tid;
        for _ in 0..3 {
            self.next_tid = start;
            let resp = self.transact(method, attrs);
            let msg = Message::parse(&resp).unwrap();
            if msg.class() == Class::SuccessResponse {
                relay::stun::integrity::verify_message_integrity(&msg, &self.key).unwrap();
                self.next_tid = start + 1;
                return resp;
            }
            match msg.get(attr::ERROR_CODE).unwrap() {
                Some(Attribute::ErrorCode(e)) if e.code == 401 || e.code == 438 => {}
                other => panic!("method {method:#x} failed: {other:?}"),
            }
            if let Some(Attribute::Nonce(n)) = msg.get(attr::NONCE).unwrap() {
                self.nonce = n.to_vec();
            }
        }
        panic!("authentication did not converge");
    }

    fn channel_bind(&mut self, channel: u16, peer: SocketAddr) {
        let tid = self.tid();
        let (v, n) = Self::peer_attr(peer, &tid);
        self.next_tid -= 1;
        let mut ch = [0u8; 4];
        ch[..2].copy_from_slice(&channel.to_be_bytes());
        self.ok_with_tid(
            method::CHANNEL_BIND,
            &[
                other(tattr::CHANNEL_NUMBER, &ch),
                other(tattr::XOR_PEER_ADDRESS, &v[..n]),
            ],
        );
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let tid = self.tid();
        let (v, n) = Self::peer_attr(peer, &tid);
        let mut buf = vec![0u8; 1500];
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::new(m(method::SEND), Class::Indication),
            tid,
        )
        .unwrap();
        b.add(&other(tattr::XOR_PEER_ADDRESS, &v[..n])).unwrap();
        b.add(&other(tattr::DATA, data)).unwrap();
        let len = b.finish();
        self.link.send(&buf[..len]);
    }

    fn channel_data(&mut self, channel: u16, data: &[u8]) {
        let mut f = Vec::with_capacity(4 + data.len() + 3);
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(data.len() as u16).to_be_bytes());
        f.extend_from_slice(data);
        if self.link.is_stream() {
            while f.len() % 4 != 0 {
                f.push(0);
            }
        }
        self.link.send(&f);
    }

    fn refresh_zero(&mut self) {
        self.ok(
            method::REFRESH,
            &[other(tattr::LIFETIME, &0u32.to_be_bytes())],
        );
    }

    /// The next frame that is not a STUN response (Data indication or ChannelData).
    fn recv_data(&mut self) -> Vec<u8> {
        self.link
            .recv()
            .expect("relayed data arrives at the client")
    }
}

fn xor_attr(msg: &Message<'_>, t: u16) -> Option<SocketAddr> {
    msg.attributes().find_map(|a| {
        let a = a.ok()?;
        (a.attr_type == t)
            .then(|| tattr::decode_xor_address(a.value, msg.transaction_id()))
            .flatten()
    })
}

fn raw_attr<'a>(msg: &Message<'a>, t: u16) -> Option<&'a [u8]> {
    msg.attributes().find_map(|a| {
        let a = a.ok()?;
        (a.attr_type == t).then_some(a.value)
    })
}

// ---------------------------------------------------------------------------------------
// The scenario

fn scenario(server: &Server, mut client: Client, label: &str) {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let peer_addr = peer.local_addr().unwrap();

    let (relayed, mapped) = client.allocate();
    assert_eq!(relayed.ip(), IpAddr::from([127, 0, 0, 1]), "{label}");
    assert!(
        (40000..=60999).contains(&relayed.port()),
        "{label}: {relayed}"
    );
    let listed = server.dp.allocations(Some(USER), None);
    assert!(
        listed
            .iter()
            .any(|a| a.relayed.contains(&relayed) && a.client == mapped),
        "{label}: allocation listed: {listed:?}"
    );

    client.create_permission(peer_addr);

    // Send indication → peer.
    client.send_indication(peer_addr, b"hello via send");
    let mut buf = [0u8; 2048];
    let (n, from) = peer
        .recv_from(&mut buf)
        .expect("peer receives the Send payload");
    assert_eq!(&buf[..n], b"hello via send", "{label}");
    assert_eq!(from, relayed, "{label}: relayed from the relayed address");

    // Peer → Data indication.
    peer.send_to(b"hello back", relayed).unwrap();
    let frame = client.recv_data();
    let msg = Message::parse(&frame).expect("Data indication is STUN");
    assert_eq!(msg.class(), Class::Indication, "{label}");
    assert_eq!(msg.method(), m(method::DATA), "{label}");
    assert_eq!(
        xor_attr(&msg, tattr::XOR_PEER_ADDRESS),
        Some(peer_addr),
        "{label}"
    );
    assert_eq!(
        raw_attr(&msg, tattr::DATA),
        Some(&b"hello back"[..]),
        "{label}"
    );

    // ChannelBind → ChannelData both ways (odd length: padding over streams).
    client.channel_bind(0x4001, peer_addr);
    client.channel_data(0x4001, b"chan up!!");
    let (n, from) = peer
        .recv_from(&mut buf)
        .expect("peer receives ChannelData payload");
    assert_eq!(&buf[..n], b"chan up!!", "{label}");
    assert_eq!(from, relayed, "{label}");
    peer.send_to(b"chan down", relayed).unwrap();
    let frame = client.recv_data();
    assert_eq!(
        &frame[..2],
        &0x4001u16.to_be_bytes(),
        "{label}: ChannelData"
    );
    let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
    assert_eq!(&frame[4..4 + len], b"chan down", "{label}");
    if client.link.is_stream() {
        assert_eq!(frame.len() % 4, 0, "{label}: padded over streams");
    }

    let stats = server.dp.turn_stats().expect("TURN stats");
    assert!(stats.packets_client_to_peer >= 2, "{label}: {stats:?}");
    assert!(stats.packets_peer_to_client >= 2, "{label}: {stats:?}");

    // Refresh 0 deletes: the allocation disappears and the relayed port stops relaying.
    client.refresh_zero();
    let left = server.dp.allocations(None, Some(relayed));
    assert!(left.is_empty(), "{label}: deleted: {left:?}");
    peer.send_to(b"too late", relayed).unwrap();
    if let Some(f) = client.link_recv_short() {
        panic!("{label}: data after Refresh 0: {f:?}");
    }
    // The relayed socket is really closed (its receive cancelled first): the port can be
    // bound again.
    let deadline = Instant::now() + TIMEOUT;
    while UdpSocket::bind(relayed).is_err() {
        assert!(
            Instant::now() < deadline,
            "{label}: relayed port {relayed} still bound after Refresh 0"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Client {
    fn link_recv_short(&mut self) -> Option<Vec<u8>> {
        if let Link::Udp(s, _) = &self.link {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let r = self.link.recv();
            if let Link::Udp(s, _) = &self.link {
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
            }
            return r;
        }
        None
    }
}

fn all_transports(choice: BackendChoice) {
    let server = start(choice, 2);
    let udp = server.dp.listen()[0];
    let tcp = server.dp.listen_tcp()[0];
    let tls = server.dp.listen_tls()[0];
    scenario(&server, Client::new(Link::udp(udp)), "udp");
    scenario(&server, Client::new(Link::tcp(tcp)), "tcp");
    scenario(
        &server,
        Client::new(Link::tls(tls, &server.cert.der)),
        "tls",
    );
}

fn with_backend(choice: BackendChoice, f: impl FnOnce(BackendChoice)) {
    if choice == BackendChoice::IoUring
        && let Err(e) = select_backend(choice)
    {
        if std::env::var_os("RELAY_REQUIRE_IO_URING").is_some() {
            panic!("io_uring required but unavailable: {e}");
        }
        eprintln!("skipped: io_uring unavailable here: {e}");
        return;
    }
    f(choice);
}

#[test]
fn io_uring_relays_udp_tcp_tls() {
    with_backend(BackendChoice::IoUring, all_transports);
}

#[test]
fn portable_relays_udp_tcp_tls() {
    with_backend(BackendChoice::Portable, all_transports);
}

fn kick_and_close(choice: BackendChoice) {
    let server = start(choice, 1);
    // A TCP client's allocation goes when its connection closes.
    let mut c = Client::new(Link::tcp(server.dp.listen_tcp()[0]));
    let (relayed, _) = c.allocate();
    assert_eq!(server.dp.allocations(None, Some(relayed)).len(), 1);
    drop(c);
    let deadline = Instant::now() + TIMEOUT;
    while !server.dp.allocations(None, Some(relayed)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "allocation outlived its TCP connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kick by user.
    let mut c = Client::new(Link::udp(server.dp.listen()[0]));
    let (relayed, _) = c.allocate();
    assert_eq!(server.dp.kick(&KickTarget::User(USER.into())), (1, 0));
    assert!(server.dp.allocations(None, Some(relayed)).is_empty());
    assert_eq!(server.dp.kick(&KickTarget::User(USER.into())), (0, 0));
    // Kicking a TCP client's allocation also closes its connection.
    let mut c = Client::new(Link::tcp(server.dp.listen_tcp()[0]));
    let (relayed, _) = c.allocate();
    assert_eq!(server.dp.kick(&KickTarget::Relay(relayed)), (1, 0));
    let Link::Tcp(stream, _) = &mut c.link else {
        unreachable!("a TCP link")
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the kicked client's TCP connection stayed open: {other:?}"),
    }
}

#[test]
fn io_uring_kick_and_connection_close() {
    with_backend(BackendChoice::IoUring, kick_and_close);
}

#[test]
fn portable_kick_and_connection_close() {
    with_backend(BackendChoice::Portable, kick_and_close);
}

/// The certificate the server presented on a fresh TLS connection (its DER).
fn presented(tls: SocketAddr, trust: &rustls_pki_types::CertificateDer<'static>) -> Vec<u8> {
    let mut link = Link::tls(tls, trust);
    // A Binding request drives the handshake and proves the session works.
    binding_over(&mut link);
    match &link {
        Link::Tls(s, _) => s.conn.peer_certificates().unwrap()[0].to_vec(),
        _ => unreachable!(),
    }
}

fn binding_over(link: &mut Link) {
    let mut c = Client::new(std::mem::replace(
        link,
        Link::udp("127.0.0.1:9".parse().unwrap()),
    ));
    let tid = c.tid();
    let mut buf = [0u8; 64];
    let b = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, tid).unwrap();
    let n = b.finish();
    c.link.send(&buf[..n]);
    let resp = c.link.recv().expect("Binding answered");
    let msg = Message::parse(&resp).unwrap();
    assert_eq!(msg.class(), Class::SuccessResponse);
    assert_eq!(msg.transaction_id(), &tid);
    *link = c.link;
}

fn tls_reload(choice: BackendChoice) {
    let server = start(choice, 1);
    let tls = server.dp.listen_tls()[0];
    assert_eq!(presented(tls, &server.cert.der), server.cert.der.to_vec());
    // An established TLS client with an allocation.
    let mut old = Client::new(Link::tls(tls, &server.cert.der));
    let (relayed, _) = old.allocate();

    // New certificate at the same paths, then reload.
    let dir = TempDir::new("turn-reload");
    let b = write_cert(&dir, "b");
    std::fs::copy(&b.cert, &server.cert.cert).unwrap();
    std::fs::copy(&b.key, &server.cert.key).unwrap();
    assert!(server.dp.reload_tls().expect("reload succeeds"));
    assert_eq!(
        presented(tls, &b.der),
        b.der.to_vec(),
        "new handshakes use the new certificate"
    );

    // The old connection and its allocation are untouched.
    assert_eq!(server.dp.allocations(None, Some(relayed)).len(), 1);
    old.refresh_zero();

    // A broken file keeps the current certificate and names the file.
    std::fs::write(&server.cert.key, "not a key").unwrap();
    let err = server.dp.reload_tls().unwrap_err().to_string();
    assert!(
        err.contains(&server.cert.key.display().to_string()),
        "error names the file: {err}"
    );
    assert_eq!(presented(tls, &b.der), b.der.to_vec());
}

#[test]
fn io_uring_tls_reload_keeps_connections() {
    with_backend(BackendChoice::IoUring, tls_reload);
}

#[test]
fn portable_tls_reload_keeps_connections() {
    with_backend(BackendChoice::Portable, tls_reload);
}

/// EVEN-PORT with the R bit reserves port + 1 under a token; another client (another
/// 5-tuple, which SO_REUSEPORT may hash to another worker) claims it with
/// RESERVATION-TOKEN. Several rounds over two workers, so a per-worker reservation table
/// would fail with high probability.
fn reservation_across_workers(choice: BackendChoice) {
    let server = start(choice, 2);
    let udp = server.dp.listen()[0];
    for round in 0..6 {
        let mut a = Client::new(Link::udp(udp));
        let resp = a.ok(
            method::ALLOCATE,
            &[
                other(tattr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
                other(tattr::EVEN_PORT, &[0x80]),
            ],
        );
        let msg = Message::parse(&resp).unwrap();
        let relayed = xor_attr(&msg, tattr::XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(relayed.port() % 2, 0, "round {round}: even port {relayed}");
        let token: [u8; 8] = raw_attr(&msg, tattr::RESERVATION_TOKEN)
            .expect("RESERVATION-TOKEN")
            .try_into()
            .unwrap();

        let mut b = Client::new(Link::udp(udp));
        let resp = b.ok(
            method::ALLOCATE,
            &[
                other(tattr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
                other(tattr::RESERVATION_TOKEN, &token),
            ],
        );
        let msg = Message::parse(&resp).unwrap();
        let second = xor_attr(&msg, tattr::XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(
            second.port(),
            relayed.port() + 1,
            "round {round}: the reserved port"
        );
        // The claimed port relays: permission + Send from b reaches a peer from it.
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(TIMEOUT)).unwrap();
        let peer_addr = peer.local_addr().unwrap();
        b.create_permission(peer_addr);
        b.send_indication(peer_addr, b"from the reserved port");
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).expect("relayed");
        assert_eq!(&buf[..n], b"from the reserved port");
        assert_eq!(from, second);
        a.refresh_zero();
        b.refresh_zero();
    }
}

#[test]
fn io_uring_reservation_token_across_workers() {
    with_backend(BackendChoice::IoUring, reservation_across_workers);
}

#[test]
fn portable_reservation_token_across_workers() {
    with_backend(BackendChoice::Portable, reservation_across_workers);
}

/// A TCP client that stops reading is disconnected once its bounded write queue is full
/// (its allocation goes with the connection) instead of growing the relay's memory.
fn slow_stream_client_is_disconnected(choice: BackendChoice) {
    let server = start(choice, 1);
    let mut c = Client::new(Link::tcp(server.dp.listen_tcp()[0]));
    let (relayed, _) = c.allocate();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    c.channel_bind(0x4002, peer_addr);
    // The client reads nothing from now on; the peer sends ~64 MB at most.
    let payload = [0xA5u8; 1200];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0u64;
    loop {
        for _ in 0..256 {
            let _ = peer.send_to(&payload, relayed);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
        if server.dp.allocations(None, Some(relayed)).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline && sent < 55_000,
            "slow client still connected after {sent} datagrams"
        );
    }
    // The connection is closed by the server: reading reaches EOF after what was already
    // in the socket buffers, which is bounded (the relay queued at most its write limit).
    if let Link::Tcp(s, _) = &mut c.link {
        let mut buf = vec![0u8; 1 << 16];
        let end = Instant::now() + Duration::from_secs(10);
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("no EOF after {total} bytes: {e}"),
                Ok(n) => {
                    total += n;
                    assert!(
                        Instant::now() < end,
                        "connection not closed after {total} bytes"
                    );
                }
            }
        }
        assert!(
            total < 48 << 20,
            "{total} bytes were buffered for a client that did not read"
        );
    }
}

#[test]
fn io_uring_slow_stream_client_is_disconnected() {
    with_backend(BackendChoice::IoUring, slow_stream_client_is_disconnected);
}

#[test]
fn portable_slow_stream_client_is_disconnected() {
    with_backend(BackendChoice::Portable, slow_stream_client_is_disconnected);
}

/// On a wildcard UDP listen address the server half of the 5-tuple is the address the
/// client used (IP_PKTINFO), and answers and relayed data come back from it: a client
/// talking to 127.0.0.2 gets everything from 127.0.0.2, not from the kernel's default
/// source 127.0.0.1.
fn wildcard_listen(choice: BackendChoice) {
    let server = start_on(choice, 2, "0.0.0.0:0".parse().unwrap());
    let port = server.dp.listen()[0].port();
    let target = SocketAddr::from(([127, 0, 0, 2], port));
    // Link::udp checks that every answer comes from `target`.
    scenario(&server, Client::new(Link::udp(target)), "wildcard udp");
    let mut c = Client::new(Link::udp(target));
    let (relayed, _) = c.allocate();
    let listed = server.dp.allocations(None, Some(relayed));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].server, target, "server half of the 5-tuple");
}

#[test]
fn io_uring_wildcard_listen_answers_from_the_destination() {
    with_backend(BackendChoice::IoUring, wildcard_listen);
}

#[test]
fn portable_wildcard_listen_answers_from_the_destination() {
    with_backend(BackendChoice::Portable, wildcard_listen);
}

fn v6_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// A server with `workers` workers and a UDP client of it, or None (the test is skipped,
/// with a note) when ::1 is unavailable.
fn v6_server(choice: BackendChoice, workers: usize) -> Option<(Server, Client)> {
    if !v6_available() {
        eprintln!("skipped: ::1 unavailable");
        return None;
    }
    let server = start(choice, workers);
    let c = Client::new(Link::udp(server.dp.listen()[0]));
    Some((server, c))
}

/// A UDP Allocate from `c` with `family_attr` (REQUESTED- or ADDITIONAL-ADDRESS-FAMILY)
/// asking for IPv6; the XOR-RELAYED-ADDRESSes of the success, in order.
fn allocate_ipv6(c: &mut Client, family_attr: u16) -> Vec<SocketAddr> {
    let resp = c.ok(
        method::ALLOCATE,
        &[
            other(tattr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
            other(family_attr, &[0x02, 0, 0, 0]),
        ],
    );
    relayed_addresses(&Message::parse(&resp).unwrap())
}

/// REQUESTED-ADDRESS-FAMILY IPv6: the relayed socket is bound on the IPv6 relay address
/// (::1 here) in the worker and relays to an IPv6 peer both ways, for an IPv4 client.
fn ipv6_relay(choice: BackendChoice) {
    let Some((_server, mut c)) = v6_server(choice, 1) else {
        return;
    };
    let relayed = *allocate_ipv6(&mut c, tattr::REQUESTED_ADDRESS_FAMILY)
        .first()
        .unwrap();
    assert_eq!(relayed.ip(), "::1".parse::<IpAddr>().unwrap());
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    c.create_permission(peer_addr);
    c.send_indication(peer_addr, b"over v6");
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).expect("v6 peer receives");
    assert_eq!(&buf[..n], b"over v6");
    assert_eq!(from, relayed);
    peer.send_to(b"v6 back", relayed).unwrap();
    let frame = c.recv_data();
    let msg = Message::parse(&frame).unwrap();
    assert_eq!(msg.method(), m(method::DATA));
    assert_eq!(xor_attr(&msg, tattr::XOR_PEER_ADDRESS), Some(peer_addr));
    assert_eq!(raw_attr(&msg, tattr::DATA), Some(&b"v6 back"[..]));
    c.refresh_zero();
}

#[test]
fn io_uring_ipv6_relay() {
    with_backend(BackendChoice::IoUring, ipv6_relay);
}

#[test]
fn portable_ipv6_relay() {
    with_backend(BackendChoice::Portable, ipv6_relay);
}

/// `relay allocations` and `relay kick` on a worker with more allocations than one slice
/// (a listing looks at 256 per loop round, `turn::listing_job`; a kick deletes 64,
/// `turn::kick_job`): every allocation is listed once, then every one is kicked once, and
/// the worker carries either job on round after round instead of waiting for traffic
/// between slices.
fn listing_and_kick_span_slices(choice: BackendChoice) {
    const N: usize = 800;
    raise_fd_limit(N as u64 + 256);
    let server = start_with_quotas(
        choice,
        1,
        "127.0.0.1:0".parse().unwrap(),
        Quotas::new(N as u32, N as u32),
    );
    let udp = server.dp.listen()[0];
    let mut clients: Vec<Client> = (0..N).map(|_| Client::new(Link::udp(udp))).collect();
    let mut relayed: Vec<SocketAddr> = clients.iter_mut().map(|c| c.allocate().0).collect();
    relayed.sort();
    // An idle worker only wakes every 100 ms (its wait timeout) to see a command, so an
    // answer takes up to that long; had it gone back to waiting between its 4 slices,
    // the answer would take at least 300 ms. The quickest of three answers decides.
    let mut quickest = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let listed = server.dp.allocations(Some(USER), None);
        quickest = quickest.min(t.elapsed());
        let mut got: Vec<SocketAddr> = listed.iter().flat_map(|a| a.relayed.clone()).collect();
        got.sort();
        assert_eq!(got.len(), N, "every allocation listed once");
        assert_eq!(got, relayed);
    }
    assert!(
        quickest < Duration::from_millis(250),
        "the listing took {quickest:?}: the worker waited between slices"
    );
    // 13 kick slices; waiting 100 ms between them would take over a second (checked on
    // the portable backend: 1.3 s. The io_uring one is woken between slices anyway, by
    // the completions of the relayed sockets each slice closes).
    let t = Instant::now();
    assert_eq!(server.dp.kick(&KickTarget::User(USER.into())), (N, 0));
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(250),
        "the kick took {took:?}: the worker waited between slices"
    );
    assert!(server.dp.allocations(None, None).is_empty());
    assert_eq!(server.dp.kick(&KickTarget::User(USER.into())), (0, 0));
    // The user's quota (N) was given back: a kicked client allocates again.
    assert!(!clients[0].allocate().0.ip().is_unspecified());
    assert_eq!(server.dp.allocations(Some(USER), None).len(), 1);
    drop(clients);
}

/// Lifts this process's open-file limit to at least `n` (within its hard limit).
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < n {
        lim.rlim_cur = n.min(lim.rlim_max);
        // SAFETY: setrlimit reads one rlimit from `lim`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

#[test]
fn io_uring_listing_and_kick_span_slices() {
    with_backend(BackendChoice::IoUring, listing_and_kick_span_slices);
}

#[test]
fn portable_listing_and_kick_span_slices() {
    with_backend(BackendChoice::Portable, listing_and_kick_span_slices);
}

/// Many TCP clients connecting at once are all accepted and served (accept bursts are
/// bounded per event and resumed, not lost).
fn many_stream_clients(choice: BackendChoice) {
    let server = start(choice, 1);
    let tcp = server.dp.listen_tcp()[0];
    let mut links: Vec<Link> = (0..150).map(|_| Link::tcp(tcp)).collect();
    for l in &mut links {
        binding_over(l);
    }
}

#[test]
fn io_uring_many_stream_clients() {
    with_backend(BackendChoice::IoUring, many_stream_clients);
}

#[test]
fn portable_many_stream_clients() {
    with_backend(BackendChoice::Portable, many_stream_clients);
}

/// Every XOR-RELAYED-ADDRESS of an Allocate success (a dual allocation has two).
fn relayed_addresses(msg: &Message<'_>) -> Vec<SocketAddr> {
    msg.attributes()
        .filter_map(|a| {
            let a = a.ok()?;
            (a.attr_type == tattr::XOR_RELAYED_ADDRESS)
                .then(|| tattr::decode_xor_address(a.value, msg.transaction_id()))
                .flatten()
        })
        .collect()
}

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7): one Allocate from an IPv4 client gets an IPv4
/// and an IPv6 relayed address from the worker, and each relays to a peer of its family
/// both ways (Send/Data and ChannelData); Refresh 0 closes both relayed ports.
fn dual_allocation(choice: BackendChoice) {
    let Some((server, mut c)) = v6_server(choice, 2) else {
        return;
    };
    let relayed = allocate_ipv6(&mut c, tattr::ADDITIONAL_ADDRESS_FAMILY);
    assert_eq!(relayed.len(), 2, "two relayed addresses: {relayed:?}");
    let r4 = *relayed.iter().find(|a| a.is_ipv4()).expect("an IPv4 one");
    let r6 = *relayed.iter().find(|a| a.is_ipv6()).expect("an IPv6 one");
    assert_eq!(r6.ip(), "::1".parse::<IpAddr>().unwrap());
    let listed = server.dp.allocations(Some(USER), None);
    assert_eq!(listed.len(), 1, "one allocation: {listed:?}");
    assert!(
        listed[0].relayed.contains(&r4) && listed[0].relayed.contains(&r6),
        "{listed:?}"
    );

    let peers = [
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("[::1]:0").unwrap(),
    ];
    let mut buf = [0u8; 256];
    for (i, (peer, relayed)) in peers.iter().zip([r4, r6]).enumerate() {
        peer.set_read_timeout(Some(TIMEOUT)).unwrap();
        let peer_addr = peer.local_addr().unwrap();
        c.create_permission(peer_addr);
        c.send_indication(peer_addr, format!("send {i}").as_bytes());
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!(&buf[..n], format!("send {i}").as_bytes());
        assert_eq!(
            from, relayed,
            "sent from the relayed address of the peer's family"
        );
        peer.send_to(b"data back", relayed).unwrap();
        let frame = c.recv_data();
        let msg = Message::parse(&frame).unwrap();
        assert_eq!(msg.method(), m(method::DATA));
        assert_eq!(xor_attr(&msg, tattr::XOR_PEER_ADDRESS), Some(peer_addr));

        let channel = 0x4001 + i as u16;
        c.channel_bind(channel, peer_addr);
        c.channel_data(channel, b"chan");
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives ChannelData");
        assert_eq!((&buf[..n], from), (&b"chan"[..], relayed));
        peer.send_to(b"chan back", relayed).unwrap();
        let frame = c.recv_data();
        assert_eq!(
            &frame[..2],
            &channel.to_be_bytes(),
            "ChannelData on {channel:#x}"
        );
        assert_eq!(&frame[4..], b"chan back");
    }
    c.refresh_zero();
    let deadline = Instant::now() + TIMEOUT;
    for r in [r4, r6] {
        while UdpSocket::bind(r).is_err() {
            assert!(Instant::now() < deadline, "{r} still bound after Refresh 0");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn io_uring_dual_allocation() {
    with_backend(BackendChoice::IoUring, dual_allocation);
}

#[test]
fn portable_dual_allocation() {
    with_backend(BackendChoice::Portable, dual_allocation);
}

/// Whether this test may create a network namespace; fails instead of skipping under
/// RELAY_REQUIRE_PRIVILEGED=1.
fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("RELAY_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs root (RELAY_REQUIRE_PRIVILEGED=1)"
    );
    eprintln!("skipped: needs root");
    false
}

impl Client {
    fn send_indication_dont_fragment(&mut self, peer: SocketAddr, data: &[u8]) {
        let tid = self.tid();
        let (v, n) = Self::peer_attr(peer, &tid);
        let mut buf = vec![0u8; 2048];
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::new(m(method::SEND), Class::Indication),
            tid,
        )
        .unwrap();
        b.add(&other(tattr::XOR_PEER_ADDRESS, &v[..n])).unwrap();
        b.add(&other(tattr::DATA, data)).unwrap();
        b.add(&other(tattr::DONT_FRAGMENT, &[])).unwrap();
        let len = b.finish();
        self.link.send(&buf[..len]);
    }
}

/// DONT-FRAGMENT in a Send indication sets DF on that one datagram (RFC 8656 §11.2), and
/// only on it. Observed through the path MTU: in a network namespace of its own whose
/// loopback has MTU 1280, a 1400-byte datagram without DF is fragmented and arrives, with
/// DF it cannot leave (EMSGSIZE), and the next one without DF arrives again.
fn send_dont_fragment(choice: BackendChoice) {
    if !privileged("send_dont_fragment") {
        return;
    }
    // The namespace belongs to this thread (and to the workers it starts): the test
    // process's other threads keep theirs.
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) only changes this thread's network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        let ok = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up", "mtu", "1280"])
            .status()
            .expect("ip runs");
        assert!(ok.success(), "ip link set lo up mtu 1280");
        let server = start(choice, 1);
        let mut c = Client::new(Link::udp(server.dp.listen()[0]));
        let (relayed, _) = c.allocate();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let peer_addr = peer.local_addr().unwrap();
        c.create_permission(peer_addr);
        let mut buf = [0u8; 2048];
        let big = [7u8; 1400];

        c.send_indication(peer_addr, &big);
        let (n, from) = peer
            .recv_from(&mut buf)
            .expect("fragmented datagram arrives");
        assert_eq!((n, from), (1400, relayed));

        c.send_indication_dont_fragment(peer_addr, &big);
        c.send_indication_dont_fragment(peer_addr, b"small with DF");
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("the small DF datagram arrives");
        assert_eq!(
            &buf[..n],
            b"small with DF",
            "the large DF datagram was not sent"
        );

        c.send_indication(peer_addr, &big);
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("without DF the socket fragments again");
        assert_eq!(n, 1400);
        let stats = server.dp.turn_stats().expect("stats");
        assert_eq!(stats.packets_client_to_peer, 4, "{stats:?}");
    })
    .join()
    .expect("test thread");
}

#[test]
fn io_uring_send_indication_dont_fragment() {
    with_backend(BackendChoice::IoUring, send_dont_fragment);
}

#[test]
fn portable_send_indication_dont_fragment() {
    with_backend(BackendChoice::Portable, send_dont_fragment);
}
