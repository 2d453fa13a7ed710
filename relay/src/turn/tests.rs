//! Flow tests of the TURN core with a fake IO layer and a manual clock: the client side
//! builds real STUN messages (long-term credentials included) and checks the answers
//! with the STUN codec.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::attrs::{self, method};
use super::auth::{self, PasswordAlgorithm};
use super::nonce::NonceKey;
use super::stats::AuthFailure;
use super::*;
use crate::policy::{PeerPolicy, PolicyConfig, Quotas};
use crate::stun::attr::{self as sattr, Attribute};
use crate::stun::integrity::{
    verify_fingerprint, verify_message_integrity, verify_message_integrity_sha256,
};
use crate::stun::{Class, Message, MessageBuilder, MessageType, TransactionId};

const REALM: &str = "example.org";

// ---------- fakes ----------

#[derive(Default)]
pub(super) struct FakePorts {
    pub next: u32,
    pub open: HashMap<RelayHandle, SocketAddr>,
    pub next_port: u16,
    pub fail: Option<PortError>,
    pub reserved: HashMap<u64, SocketAddr>,
    pub released: Vec<u64>,
    pub df_ok: bool,
    pub df: Vec<RelayHandle>,
    pub no_v6: bool,
}

impl FakePorts {
    pub fn new() -> Self {
        FakePorts {
            next_port: 50000,
            df_ok: true,
            ..FakePorts::default()
        }
    }
}

impl RelayPorts for FakePorts {
    fn open(
        &mut self,
        family: IpFamily,
        req: PortRequest,
    ) -> Result<(RelayHandle, SocketAddr, Option<u64>), PortError> {
        if let Some(e) = self.fail {
            return Err(e);
        }
        if family == IpFamily::V6 && self.no_v6 {
            return Err(PortError::FamilyUnsupported);
        }
        let ip: IpAddr = match family {
            IpFamily::V4 => "192.0.2.10".parse().expect("ip"),
            IpFamily::V6 => "2001:db8::10".parse().expect("ip"),
        };
        let (addr, token) = match req {
            PortRequest::Reserved(t) => match self.reserved.remove(&t) {
                Some(a) => (a, None),
                None => return Err(PortError::UnknownToken),
            },
            PortRequest::Even { reserve_next } => {
                self.next_port = self.next_port.next_multiple_of(2);
                let a = SocketAddr::new(ip, self.next_port);
                self.next_port += 2;
                let token = reserve_next.then(|| {
                    let t = 0xA000 + u64::from(self.next);
                    self.reserved.insert(t, SocketAddr::new(ip, a.port() + 1));
                    t
                });
                (a, token)
            }
            PortRequest::Any => {
                self.next_port += 1;
                (SocketAddr::new(ip, self.next_port), None)
            }
        };
        self.next += 1;
        self.open.insert(self.next, addr);
        Ok((self.next, addr, token))
    }

    fn close(&mut self, relay: RelayHandle) {
        assert!(self.open.remove(&relay).is_some(), "closing {relay} twice");
    }

    fn release_reservation(&mut self, token: u64) {
        self.reserved.remove(&token);
        self.released.push(token);
    }

    fn set_dont_fragment(&mut self, relay: RelayHandle) -> bool {
        if self.df_ok {
            self.df.push(relay);
        }
        self.df_ok
    }
}

#[derive(Default)]
pub(super) struct Sink {
    pub client: Vec<(FiveTuple, Vec<u8>)>,
    pub peer: Vec<(RelayHandle, SocketAddr, Vec<u8>)>,
    /// Indices into `peer` of the datagrams sent with Don't Fragment.
    pub peer_df: Vec<usize>,
}

impl Transmit for Sink {
    fn to_client(&mut self, tuple: &FiveTuple, bytes: &[u8]) {
        self.client.push((*tuple, bytes.to_vec()));
    }
    fn to_peer(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        self.peer.push((relay, peer, bytes.to_vec()));
    }
    fn to_peer_dont_fragment(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        self.peer_df.push(self.peer.len());
        self.to_peer(relay, peer, bytes);
    }
}

// ---------- harness ----------

pub(super) fn creds() -> Credentials {
    Credentials {
        realm: REALM.into(),
        users: HashMap::from([
            ("alice".to_owned(), "wonderland".to_owned()),
            ("bob".to_owned(), "builder".to_owned()),
        ]),
        secrets: vec!["new-secret".into(), "old-secret".into()],
    }
}

pub(super) fn config() -> TurnConfig {
    TurnConfig {
        relay_ipv4: Some("192.0.2.10".parse().expect("ip")),
        relay_ipv6: Some("2001:db8::10".parse().expect("ip")),
        software: Some("relay-test".into()),
        // The test client's first Allocate is minimal (36 bytes); the amplification rule
        // itself is tested with the default (0) below.
        unauth_reply_allowance: 512,
        // Long enough that the expiry tests need not re-learn nonces; the 438 test sets
        // its own.
        nonce_lifetime: Duration::from_secs(100_000),
        ..TurnConfig::default()
    }
}

pub(super) struct World {
    pub server: TurnServer,
    pub ports: FakePorts,
    pub sink: Sink,
    pub t0: Instant,
    pub now: Instant,
    pub wall: SystemTime,
    pub quotas: Arc<Quotas>,
}

pub(super) fn world_with(cfg: TurnConfig, quotas: Quotas) -> World {
    world_with_policy(
        cfg,
        quotas,
        PeerPolicy::new(&PolicyConfig::default(), &[]).expect("policy"),
    )
}

pub(super) fn world_with_policy(cfg: TurnConfig, quotas: Quotas, policy: PeerPolicy) -> World {
    let quotas = Arc::new(quotas);
    let shared = Shared::with_nonce_key(
        creds(),
        Arc::new(policy),
        Arc::clone(&quotas),
        NonceKey::from_bytes([9; 32]),
    );
    let t0 = Instant::now();
    World {
        server: TurnServer::new(Arc::new(cfg), Arc::new(shared)),
        ports: FakePorts::new(),
        sink: Sink::default(),
        t0,
        now: t0,
        wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        quotas,
    }
}

pub(super) fn world() -> World {
    world_with(config(), Quotas::new(0, 0))
}

pub(super) fn udp_tuple() -> FiveTuple {
    FiveTuple {
        client: "198.51.100.7:40000".parse().expect("addr"),
        server: "192.0.2.1:3478".parse().expect("addr"),
        transport: Transport::Udp,
    }
}

pub(super) fn peer() -> SocketAddr {
    "203.0.113.5:7000".parse().expect("addr")
}

/// Client `i` of `user` ("alice" or "bob", with the password [`creds`] gives them) on UDP
/// port 40 000 + `i` of the usual client address.
pub(super) fn numbered_client(i: u16, user: &str) -> Client {
    let tuple = FiveTuple {
        client: SocketAddr::new(udp_tuple().client.ip(), 40_000 + i),
        server: udp_tuple().server,
        transport: Transport::Udp,
    };
    let password = if user == "bob" {
        "builder"
    } else {
        "wonderland"
    };
    Client::new(tuple, user, password)
}

/// `n` allocations of `user` from clients numbered from `from`, each with channel
/// 0x4000 + its number bound to [`peer`].
pub(super) fn numbered_clients(w: &mut World, from: u16, n: u16, user: &str) -> Vec<Client> {
    (from..from + n)
        .map(|i| {
            let mut c = numbered_client(i, user);
            assert_eq!(class_of(&allocate(w, &mut c, &[])), Class::SuccessResponse);
            assert_eq!(
                class_of(&bind(w, &mut c, 0x4000 + i, peer())),
                Class::SuccessResponse
            );
            c
        })
        .collect()
}

/// What a sliced job (listing, kick) meets between two of its slices: one of `cs` other
/// than `not` is refreshed to 0, and a new allocation of `user` (client number 10) comes.
/// Returns the deleted and the new client addresses.
pub(super) fn one_gone_one_new(
    w: &mut World,
    cs: &mut [Client],
    not: SocketAddr,
    user: &str,
) -> (SocketAddr, SocketAddr) {
    let gone = cs
        .iter_mut()
        .find(|c| c.tuple.client != not)
        .expect("another allocation");
    let req = gone.request(
        method::REFRESH,
        &[(attrs::LIFETIME, 0u32.to_be_bytes().to_vec())],
    );
    assert_eq!(class_of(&w.one(&gone.tuple, &req)), Class::SuccessResponse);
    let gone = gone.tuple.client;
    let fresh = numbered_clients(w, 10, 1, user)[0].tuple.client;
    (gone, fresh)
}

impl World {
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d;
        self.server.on_timeout(self.now, &mut self.ports);
    }

    pub fn send(&mut self, tuple: &FiveTuple, msg: &[u8]) -> Vec<Vec<u8>> {
        self.sink.client.clear();
        self.server.on_client(
            tuple,
            msg,
            self.now,
            self.wall,
            &mut self.ports,
            &mut self.sink,
        );
        self.sink.client.iter().map(|(_, b)| b.clone()).collect()
    }

    pub fn one(&mut self, tuple: &FiveTuple, msg: &[u8]) -> Vec<u8> {
        let mut out = self.send(tuple, msg);
        assert_eq!(out.len(), 1, "expected exactly one answer");
        out.remove(0)
    }
}

/// How a test client authenticates.
#[derive(Clone)]
pub(super) struct Client {
    pub tuple: FiveTuple,
    pub username: String,
    pub password: String,
    pub nonce: Option<Vec<u8>>,
    pub sha256_mi: bool,
    pub sha256_key: bool,
    pub userhash: bool,
    pub tid: u8,
}

impl Client {
    pub fn new(tuple: FiveTuple, username: &str, password: &str) -> Self {
        Client {
            tuple,
            username: username.into(),
            password: password.into(),
            nonce: None,
            sha256_mi: false,
            sha256_key: false,
            userhash: false,
            tid: 0,
        }
    }

    pub fn next_tid(&mut self) -> TransactionId {
        self.tid = self.tid.wrapping_add(1);
        TransactionId([self.tid; 12])
    }

    pub fn key(&self) -> auth::Key {
        let alg = if self.sha256_key {
            PasswordAlgorithm::Sha256
        } else {
            PasswordAlgorithm::Md5
        };
        auth::long_term_key(
            alg,
            self.username.as_bytes(),
            REALM.as_bytes(),
            self.password.as_bytes(),
        )
    }

    /// A request of `method` with `attrs`, signed when a nonce is known.
    pub fn request(&mut self, method: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let tid = self.next_tid();
        self.request_with(method, attrs, tid)
    }

    pub fn request_with(
        &self,
        method: u16,
        attrs: &[(u16, Vec<u8>)],
        tid: TransactionId,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::new(method::m(method), Class::Request),
            tid,
        )
        .expect("fits");
        for (t, v) in attrs {
            b.add(&Attribute::Other {
                attr_type: *t,
                value: v,
            })
            .expect("fits");
        }
        if let Some(nonce) = &self.nonce {
            if self.userhash {
                let h = auth::userhash(self.username.as_bytes(), REALM.as_bytes());
                b.add(&Attribute::Userhash(&h)).expect("fits");
            } else {
                b.add(&Attribute::Username(self.username.as_bytes()))
                    .expect("fits");
            }
            b.add(&Attribute::Realm(REALM.as_bytes())).expect("fits");
            b.add(&Attribute::Nonce(nonce)).expect("fits");
            if self.sha256_key {
                b.add(&Attribute::PasswordAlgorithm(&[0, 2, 0, 0]))
                    .expect("fits");
                b.add(&Attribute::PasswordAlgorithms(
                    &auth::PASSWORD_ALGORITHMS_VALUE,
                ))
                .expect("fits");
            }
            let key = self.key();
            if self.sha256_mi {
                b.add_message_integrity_sha256(key.as_bytes())
                    .expect("fits");
            } else {
                b.add_message_integrity(key.as_bytes()).expect("fits");
            }
        }
        b.add_fingerprint().expect("fits");
        let n = b.finish();
        buf.truncate(n);
        buf
    }

    /// Learns the nonce from a 401/438.
    pub fn learn(&mut self, answer: &[u8]) {
        let m = Message::parse(answer).expect("answer parses");
        if let Ok(Some(Attribute::Nonce(n))) = m.get(sattr::NONCE) {
            self.nonce = Some(n.to_vec());
        }
    }

    /// Checks the integrity of an answer signed with our key.
    pub fn verify(&self, answer: &[u8]) {
        let m = Message::parse(answer).expect("answer parses");
        let key = self.key();
        if self.sha256_mi {
            verify_message_integrity_sha256(&m, key.as_bytes()).expect("MI-SHA256");
        } else {
            verify_message_integrity(&m, key.as_bytes()).expect("MI");
        }
        verify_fingerprint(&m).expect("FINGERPRINT");
    }
}

pub(super) fn transport_udp() -> (u16, Vec<u8>) {
    (attrs::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

pub(super) fn xor_peer(p: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    let mut v = [0u8; attrs::XOR_ADDRESS_MAX];
    let n = attrs::encode_xor_address(p, tid, &mut v);
    v[..n].to_vec()
}

pub(super) fn class_of(answer: &[u8]) -> Class {
    Message::parse(answer).expect("parses").class()
}

pub(super) fn error_code(answer: &[u8]) -> Option<u16> {
    let m = Message::parse(answer).expect("parses");
    match m.get(sattr::ERROR_CODE) {
        Ok(Some(Attribute::ErrorCode(e))) => Some(e.code),
        _ => None,
    }
}

pub(super) fn attr_value(answer: &[u8], t: u16) -> Option<Vec<u8>> {
    let m = Message::parse(answer).expect("parses");
    m.attributes()
        .filter_map(Result::ok)
        .find(|a| a.attr_type == t)
        .map(|a| a.value.to_vec())
}

pub(super) fn relayed_of(answer: &[u8]) -> Vec<SocketAddr> {
    let m = Message::parse(answer).expect("parses");
    m.attributes()
        .filter_map(Result::ok)
        .filter(|a| a.attr_type == attrs::XOR_RELAYED_ADDRESS)
        .filter_map(|a| attrs::decode_xor_address(a.value, m.transaction_id()))
        .collect()
}

/// 401 then authenticated Allocate with `extra` attributes; returns the success answer.
pub(super) fn allocate(w: &mut World, c: &mut Client, extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut attrs = vec![transport_udp()];
    attrs.extend_from_slice(extra);
    if c.nonce.is_none() {
        let first = c.request(method::ALLOCATE, &attrs);
        let a = w.one(&c.tuple, &first);
        assert_eq!(error_code(&a), Some(401));
        c.learn(&a);
    }
    let req = c.request(method::ALLOCATE, &attrs);
    w.one(&c.tuple, &req)
}

/// A policy where the relay's own address is 192.0.2.10 (its relay_ipv4), allowed
/// through the default deny-list (TEST-NET) so that only the own-address rule applies.
pub(super) fn own_address_policy() -> PeerPolicy {
    PeerPolicy::new(
        &PolicyConfig {
            allow: vec!["192.0.2.0/24".into()],
            deny: vec![],
        },
        &["192.0.2.10".parse().expect("ip")],
    )
    .expect("policy")
}

/// A client with a successful allocation.
pub(super) fn allocated(w: &mut World) -> (Client, SocketAddr, RelayHandle) {
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    let ok = allocate(w, &mut c, &[]);
    assert_eq!(
        class_of(&ok),
        Class::SuccessResponse,
        "{:?}",
        error_code(&ok)
    );
    c.verify(&ok);
    let relayed = relayed_of(&ok)[0];
    let handle = *w
        .ports
        .open
        .iter()
        .find(|(_, a)| **a == relayed)
        .expect("opened")
        .0;
    (c, relayed, handle)
}

pub(super) fn permit(w: &mut World, c: &mut Client, p: SocketAddr) -> Vec<u8> {
    let tid = c.next_tid();
    let req = c.request_with(
        method::CREATE_PERMISSION,
        &[(attrs::XOR_PEER_ADDRESS, xor_peer(p, &tid))],
        tid,
    );
    w.one(&c.tuple, &req)
}

pub(super) fn bind(w: &mut World, c: &mut Client, number: u16, p: SocketAddr) -> Vec<u8> {
    let tid = c.next_tid();
    let req = c.request_with(
        method::CHANNEL_BIND,
        &[
            (
                attrs::CHANNEL_NUMBER,
                vec![(number >> 8) as u8, number as u8, 0, 0],
            ),
            (attrs::XOR_PEER_ADDRESS, xor_peer(p, &tid)),
        ],
        tid,
    );
    w.one(&c.tuple, &req)
}

pub(super) fn send_indication(c: &mut Client, p: SocketAddr, data: &[u8]) -> Vec<u8> {
    let tid = c.next_tid();
    let mut buf = vec![0u8; 2048];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(method::m(method::SEND), Class::Indication),
        tid,
    )
    .expect("fits");
    b.add(&Attribute::Other {
        attr_type: attrs::XOR_PEER_ADDRESS,
        value: &xor_peer(p, &tid),
    })
    .expect("fits");
    b.add(&Attribute::Other {
        attr_type: attrs::DATA,
        value: data,
    })
    .expect("fits");
    let n = b.finish();
    buf.truncate(n);
    buf
}

pub(super) fn channel_data(number: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    if pad {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    v
}

// ---------- flows ----------

#[test]
fn full_flow_udp_send_data_channel() {
    let mut w = world();
    let (mut c, relayed, handle) = allocated(&mut w);
    assert_eq!(relayed.ip(), "192.0.2.10".parse::<IpAddr>().expect("ip"));
    assert_eq!(w.server.stats().allocations, 1);

    // Send before permission: silently dropped.
    let ind = send_indication(&mut c, peer(), b"early");
    assert!(w.send(&c.tuple, &ind).is_empty());
    assert!(w.sink.peer.is_empty());
    assert_eq!(w.server.stats().dropped_no_permission, 1);

    let ok = permit(&mut w, &mut c, peer());
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    c.verify(&ok);

    let ind = send_indication(&mut c, peer(), b"hello peer");
    assert!(w.send(&c.tuple, &ind).is_empty());
    assert_eq!(w.sink.peer.len(), 1);
    assert_eq!(w.sink.peer[0], (handle, peer(), b"hello peer".to_vec()));

    // Permission is per IP: another port of the same peer IP gets through too.
    let other_port: SocketAddr = "203.0.113.5:9999".parse().expect("addr");
    w.sink.client.clear();
    w.server
        .on_peer(handle, other_port, b"back", w.now, &mut w.sink);
    assert_eq!(w.sink.client.len(), 1);
    let data = &w.sink.client[0].1;
    let m = Message::parse(data).expect("data indication");
    assert_eq!(m.class(), Class::Indication);
    assert_eq!(m.method().value(), method::DATA);
    assert_eq!(attr_value(data, attrs::DATA).as_deref(), Some(&b"back"[..]));
    let p = attrs::decode_xor_address(
        &attr_value(data, attrs::XOR_PEER_ADDRESS).expect("peer"),
        m.transaction_id(),
    );
    assert_eq!(p, Some(other_port));

    // Unpermitted peer IP: dropped.
    w.sink.client.clear();
    let stranger: SocketAddr = "203.0.113.99:1".parse().expect("addr");
    w.server.on_peer(handle, stranger, b"x", w.now, &mut w.sink);
    assert!(w.sink.client.is_empty());
    assert_eq!(w.server.stats().dropped_peer_no_permission, 1);

    // Channel: both ways.
    let ok = bind(&mut w, &mut c, 0x4001, peer());
    assert_eq!(
        class_of(&ok),
        Class::SuccessResponse,
        "{:?}",
        error_code(&ok)
    );
    w.sink.peer.clear();
    assert!(
        w.send(&c.tuple, &channel_data(0x4001, b"abcde", false))
            .is_empty()
    );
    assert_eq!(w.sink.peer, vec![(handle, peer(), b"abcde".to_vec())]);
    // Padded ChannelData from UDP is accepted too.
    assert!(
        w.send(&c.tuple, &channel_data(0x4001, b"abcde", true))
            .is_empty()
    );
    assert_eq!(w.sink.peer.len(), 2);
    // Unbound channel: dropped.
    assert!(
        w.send(&c.tuple, &channel_data(0x4002, b"x", false))
            .is_empty()
    );
    assert_eq!(w.sink.peer.len(), 2);
    // Truncated frame: dropped.
    let mut bad = channel_data(0x4001, b"abcde", false);
    bad.truncate(6);
    assert!(w.send(&c.tuple, &bad).is_empty());
    assert_eq!(w.sink.peer.len(), 2);

    w.sink.client.clear();
    w.server.on_peer(handle, peer(), b"xyz", w.now, &mut w.sink);
    assert_eq!(w.sink.client.len(), 1);
    assert_eq!(w.sink.client[0].1, channel_data(0x4001, b"xyz", false));
    let s = w.server.stats();
    assert_eq!(s.packets_client_to_peer, 3);
    assert_eq!(s.packets_peer_to_client, 2);
    assert_eq!(s.bytes_peer_to_client, 4 + 3);
    assert_eq!(s.channels, 1);
    assert_eq!(s.permissions, 1);

    let info: Vec<_> = w.server.allocations(w.now).collect();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].user, "alice");
    assert_eq!(info[0].relayed, vec![relayed]);
    assert_eq!(info[0].channels, vec![(0x4001, peer())]);
    assert_eq!(info[0].permissions, vec![peer().ip()]);
    assert_eq!(info[0].packets_to_peer, 3);
    assert_eq!(info[0].expires_in_s, 600);
}

#[test]
fn stream_clients_get_padded_channel_data() {
    let mut w = world();
    let mut tuple = udp_tuple();
    tuple.transport = Transport::Tcp;
    let mut c = Client::new(tuple, "alice", "wonderland");
    let ok = allocate(&mut w, &mut c, &[]);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    let handle = *w.ports.open.keys().next().expect("open");
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4FFF, peer())),
        Class::SuccessResponse
    );
    w.sink.client.clear();
    w.server
        .on_peer(handle, peer(), b"12345", w.now, &mut w.sink);
    assert_eq!(w.sink.client[0].1, channel_data(0x4FFF, b"12345", true));
    assert_eq!(w.sink.client[0].1.len(), 12);
    // Padded frame from the stream relays the unpadded payload.
    w.sink.peer.clear();
    w.send(&tuple, &channel_data(0x4FFF, b"12345", true));
    assert_eq!(w.sink.peer[0].2, b"12345");
    // Connection closed: allocation and port gone.
    w.server.on_client_closed(&tuple, &mut w.ports);
    assert!(w.ports.open.is_empty());
    assert_eq!(w.server.stats().allocations, 0);
    assert_eq!(w.quotas.total(), 0);
}

#[test]
fn refresh_zero_deletes_and_frees_port_and_quota() {
    let mut w = world_with(config(), Quotas::new(1, 0));
    let (mut c, _, _) = allocated(&mut w);
    assert_eq!(w.quotas.held_by("alice"), 1);
    let req = c.request(method::REFRESH, &[(attrs::LIFETIME, vec![0, 0, 0, 0])]);
    let ok = w.one(&c.tuple, &req);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    c.verify(&ok);
    assert_eq!(attr_value(&ok, attrs::LIFETIME), Some(vec![0, 0, 0, 0]));
    assert!(w.ports.open.is_empty());
    assert_eq!(w.quotas.held_by("alice"), 0);
    assert_eq!(w.server.stats().allocations, 0);
    // Now gone: 437.
    let req = c.request(method::REFRESH, &[]);
    assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(437));
    // And a new Allocate works again (quota released).
    let ok = allocate(&mut w, &mut c, &[]);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
}

#[test]
fn refresh_extends_and_caps_lifetime() {
    let mut w = world();
    let (mut c, _, _) = allocated(&mut w);
    let req = c.request(
        method::REFRESH,
        &[(attrs::LIFETIME, 100_000u32.to_be_bytes().to_vec())],
    );
    let ok = w.one(&c.tuple, &req);
    assert_eq!(
        attr_value(&ok, attrs::LIFETIME),
        Some(3600u32.to_be_bytes().to_vec())
    );
    let req = c.request(
        method::REFRESH,
        &[(attrs::LIFETIME, 30u32.to_be_bytes().to_vec())],
    );
    let ok = w.one(&c.tuple, &req);
    assert_eq!(
        attr_value(&ok, attrs::LIFETIME),
        Some(600u32.to_be_bytes().to_vec())
    );
}

#[test]
fn expiry_of_permission_channel_and_allocation() {
    let mut w = world();
    let (mut c, _, handle) = allocated(&mut w);
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, peer())),
        Class::SuccessResponse
    );
    let p2: SocketAddr = "203.0.113.6:1".parse().expect("addr");
    assert_eq!(
        class_of(&permit(&mut w, &mut c, p2)),
        Class::SuccessResponse
    );
    // Just before 300 s: still permitted.
    w.advance(Duration::from_secs(299));
    w.sink.client.clear();
    w.server.on_peer(handle, p2, b"a", w.now, &mut w.sink);
    assert_eq!(w.sink.client.len(), 1);
    w.advance(Duration::from_secs(1));
    w.sink.client.clear();
    w.server.on_peer(handle, p2, b"a", w.now, &mut w.sink);
    assert!(w.sink.client.is_empty(), "permission expired at 300 s");
    assert_eq!(w.server.stats().permissions, 0);
    // The channel (600 s) is still bound but its permission expired at 300 s: no relay.
    w.sink.peer.clear();
    w.send(&c.tuple, &channel_data(0x4000, b"x", false));
    assert!(w.sink.peer.is_empty());
    assert_eq!(w.server.stats().channels, 1);
    // Keep the allocation alive, let the channel expire at 600 s.
    let req = c.request(method::REFRESH, &[]);
    assert_eq!(class_of(&w.one(&c.tuple, &req)), Class::SuccessResponse);
    w.advance(Duration::from_secs(300));
    assert_eq!(w.server.stats().channels, 0);
    // Quarantine: channel 0x4000 cannot go to another peer, and the peer cannot take
    // another channel, for 5 minutes; the same pair can be rebound.
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x4000, p2)), Some(400));
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x4001, peer())), Some(400));
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, peer())),
        Class::SuccessResponse
    );
    // Allocation expires 600 s after the refresh at t=300: t=900.
    assert_eq!(w.now - w.t0, Duration::from_secs(600));
    w.advance(Duration::from_secs(299));
    assert_eq!(w.server.stats().allocations, 1);
    w.advance(Duration::from_secs(1));
    assert_eq!(w.server.stats().allocations, 0);
    assert_eq!(w.server.stats().allocations_expired, 1);
    assert!(w.ports.open.is_empty());
    assert_eq!(w.server.stats().channels, 0);
    assert_eq!(w.server.stats().permissions, 0);
    // Stale heap entries (refreshed deadlines) may remain until they come due.
    assert!(w.server.next_timeout().is_some());
    w.advance(Duration::from_secs(3600));
    assert_eq!(w.server.next_timeout(), None);
}

#[test]
fn channel_cooldown_ends_after_five_minutes() {
    let mut w = world();
    let (mut c, _, _) = allocated(&mut w);
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, peer())),
        Class::SuccessResponse
    );
    let req = c.request(
        method::REFRESH,
        &[(attrs::LIFETIME, 3600u32.to_be_bytes().to_vec())],
    );
    w.one(&c.tuple, &req);
    w.advance(Duration::from_secs(600));
    let p2: SocketAddr = "203.0.113.6:1".parse().expect("addr");
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x4000, p2)), Some(400));
    w.advance(Duration::from_secs(300));
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, p2)),
        Class::SuccessResponse
    );
}

// ---------- auth ----------

#[test]
fn first_request_gets_401_with_realm_nonce_and_algorithms() {
    let strict = TurnConfig {
        unauth_reply_allowance: 0,
        ..config()
    };
    let mut w = world_with(strict, Quotas::new(0, 0));
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    // Padded with SOFTWARE so the challenge fits the amplification rule.
    let req = c.request(
        method::ALLOCATE,
        &[transport_udp(), (sattr::SOFTWARE, vec![b'x'; 96])],
    );
    let a = w.one(&c.tuple, &req);
    assert!(a.len() <= req.len());
    assert_eq!(error_code(&a), Some(401));
    assert_eq!(
        attr_value(&a, sattr::REALM),
        Some(REALM.as_bytes().to_vec())
    );
    let nonce = attr_value(&a, sattr::NONCE).expect("nonce");
    assert!(nonce.starts_with(b"obMatJos2"));
    assert_eq!(
        attr_value(&a, sattr::PASSWORD_ALGORITHMS),
        Some(auth::PASSWORD_ALGORITHMS_VALUE.to_vec())
    );
    assert!(attr_value(&a, sattr::MESSAGE_INTEGRITY).is_none());
    assert_eq!(
        w.server
            .stats()
            .auth_failures_of(AuthFailure::MissingCredentials),
        1
    );
}

#[test]
fn unauthenticated_answers_never_exceed_the_request_on_udp() {
    let strict = TurnConfig {
        unauth_reply_allowance: 0,
        ..config()
    };
    let mut w = world_with(strict, Quotas::new(0, 0));
    let c = Client::new(udp_tuple(), "alice", "wonderland");
    // A 36-byte Allocate (REQUESTED-TRANSPORT + FINGERPRINT): the challenge cannot fit.
    let req = c.request_with(method::ALLOCATE, &[transport_udp()], TransactionId([1; 12]));
    assert_eq!(req.len(), 36);
    assert!(w.send(&c.tuple, &req).is_empty());
    assert_eq!(w.server.stats().amplification_drops, 1);
    // Over TCP the same request is answered (the handshake proved the address).
    let mut tcp = udp_tuple();
    tcp.transport = Transport::Tcp;
    let a = w.one(&tcp, &req);
    assert_eq!(error_code(&a), Some(401));
    // With an operator allowance the UDP challenge goes out, at most that much larger.
    let mut cfg = config();
    cfg.unauth_reply_allowance = 128;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let a = w.one(&c.tuple, &req);
    assert_eq!(error_code(&a), Some(401));
    assert!(a.len() <= req.len() + 128);
    // A compact challenge (no reason phrase, no FINGERPRINT) is used when only it fits.
    let mut cfg = config();
    cfg.unauth_reply_allowance = 0;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let big = c.request_with(
        method::ALLOCATE,
        &[transport_udp(), (sattr::SOFTWARE, vec![b'x'; 60])],
        TransactionId([2; 12]),
    );
    let a = w.one(&c.tuple, &big);
    assert!(a.len() <= big.len(), "{} > {}", a.len(), big.len());
    assert_eq!(error_code(&a), Some(401));
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source_on_udp() {
    let cfg = TurnConfig {
        unauth_reply_allowance: 256,
        unauth_replies_per_sec: 2,
        unauth_reply_burst: 3,
        ..config()
    };
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let c = Client::new(udp_tuple(), "alice", "wonderland");
    let req = c.request_with(method::ALLOCATE, &[transport_udp()], TransactionId([1; 12]));
    // The burst: three challenges, then silence for this source (a spoofed flood's victim).
    for _ in 0..3 {
        assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(401));
    }
    for _ in 0..5 {
        assert!(w.send(&c.tuple, &req).is_empty());
    }
    assert_eq!(w.server.stats().amplification_drops, 5);
    // 400s to unauthenticated requests are charged to the same bucket.
    let bad = c.request_with(0x0FF, &[], TransactionId([3; 12]));
    assert!(w.send(&c.tuple, &bad).is_empty());
    // Another source is not affected; over TCP nothing is limited.
    let mut other = c.tuple;
    other.client = "198.51.100.8:40000".parse().expect("addr");
    assert_eq!(error_code(&w.one(&other, &req)), Some(401));
    let mut tcp = c.tuple;
    tcp.transport = Transport::Tcp;
    assert_eq!(error_code(&w.one(&tcp, &req)), Some(401));
    // The bucket refills at the configured rate.
    w.advance(Duration::from_millis(600));
    assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(401));
    assert!(w.send(&c.tuple, &req).is_empty());
}

#[test]
fn wrong_password_unknown_user_and_rate_limit() {
    let mut cfg = config();
    cfg.auth_failure_burst = 3;
    cfg.auth_failures_per_sec = 1;
    cfg.unauth_reply_allowance = 256;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let mut c = Client::new(udp_tuple(), "alice", "not-the-password");
    let ok = allocate(&mut w, &mut c, &[]);
    assert_eq!(error_code(&ok), Some(401));
    assert!(attr_value(&ok, sattr::NONCE).is_some());
    assert_eq!(
        w.server.stats().auth_failures_of(AuthFailure::BadIntegrity),
        1
    );
    let mut u = Client::new(udp_tuple(), "mallory", "x");
    u.nonce = c.nonce.clone();
    let req = u.request(method::ALLOCATE, &[transport_udp()]);
    assert_eq!(error_code(&w.one(&u.tuple, &req)), Some(401));
    assert_eq!(
        w.server.stats().auth_failures_of(AuthFailure::UnknownUser),
        1
    );
    let req = c.request(method::ALLOCATE, &[transport_udp()]);
    assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(401));
    // Burst of 3 spent: dropped silently, counted.
    let req = c.request(method::ALLOCATE, &[transport_udp()]);
    assert!(w.send(&c.tuple, &req).is_empty());
    assert_eq!(
        w.server.stats().auth_failures_of(AuthFailure::RateLimited),
        1
    );
    // Even the right password is not looked at until the bucket refills.
    let mut good = Client::new(udp_tuple(), "alice", "wonderland");
    good.nonce = c.nonce.clone();
    let req = good.request(method::ALLOCATE, &[transport_udp()]);
    assert!(w.send(&c.tuple, &req).is_empty());
    w.advance(Duration::from_secs(1));
    let req = good.request(method::ALLOCATE, &[transport_udp()]);
    let ok = w.one(&good.tuple, &req);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    // Another source is unaffected.
    let mut other = Client::new(udp_tuple(), "bob", "builder");
    other.tuple.client = "198.51.100.8:1".parse().expect("addr");
    let ok = allocate(&mut w, &mut other, &[]);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_one() {
    let cfg = TurnConfig {
        nonce_lifetime: Duration::from_secs(60),
        ..config()
    };
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let (mut c, _, _) = allocated(&mut w);
    let old = c.nonce.clone();
    w.advance(Duration::from_secs(59));
    let req = c.request(method::REFRESH, &[]);
    assert_eq!(class_of(&w.one(&c.tuple, &req)), Class::SuccessResponse);
    w.advance(Duration::from_secs(1));
    let req = c.request(method::REFRESH, &[]);
    let a = w.one(&c.tuple, &req);
    assert_eq!(error_code(&a), Some(438));
    let fresh = attr_value(&a, sattr::NONCE);
    assert!(fresh.is_some() && fresh != old);
    assert!(attr_value(&a, sattr::MESSAGE_INTEGRITY).is_none());
    c.learn(&a);
    let req = c.request(method::REFRESH, &[]);
    assert_eq!(class_of(&w.one(&c.tuple, &req)), Class::SuccessResponse);
    // A nonce issued to another IP is stale here.
    let mut other = c.clone();
    other.tuple.client = "198.51.100.9:5".parse().expect("addr");
    let req = other.request(method::ALLOCATE, &[transport_udp()]);
    assert_eq!(error_code(&w.one(&other.tuple, &req)), Some(438));
}

#[test]
fn rest_credentials_valid_expired_wrong_and_rotated() {
    let mut w = world();
    let now = 1_700_000_000u64;
    let user = format!("{}:carol", now + 3600);
    for secret in ["new-secret", "old-secret"] {
        let mut c = Client::new(udp_tuple(), &user, &auth::rest_password(secret, &user));
        c.tuple
            .client
            .set_port(if secret == "new-secret" { 1 } else { 2 });
        let ok = allocate(&mut w, &mut c, &[]);
        assert_eq!(class_of(&ok), Class::SuccessResponse, "secret {secret}");
        c.verify(&ok);
    }
    let mut c = Client::new(udp_tuple(), &user, &auth::rest_password("wrong", &user));
    c.tuple.client.set_port(3);
    assert_eq!(error_code(&allocate(&mut w, &mut c, &[])), Some(401));
    let expired = format!("{}:carol", now - 1);
    let mut c = Client::new(
        udp_tuple(),
        &expired,
        &auth::rest_password("new-secret", &expired),
    );
    c.tuple.client.set_port(4);
    assert_eq!(error_code(&allocate(&mut w, &mut c, &[])), Some(401));
    assert_eq!(
        w.server
            .stats()
            .auth_failures_of(AuthFailure::ExpiredCredentials),
        1
    );
    // Quota and kick use the user part.
    assert_eq!(w.quotas.held_by("carol"), 2);
    assert_eq!(
        w.server
            .kick(&KickTarget::User("carol".into()), &mut w.ports),
        2
    );
    assert!(w.ports.open.is_empty());
    assert_eq!(w.quotas.held_by("carol"), 0);
}

#[test]
fn rotated_out_secret_is_refused_after_reload() {
    let mut w = world();
    let now = 1_700_000_000u64;
    let user = format!("{}:dave", now + 3600);
    let mut c = Client::new(
        udp_tuple(),
        &user,
        &auth::rest_password("old-secret", &user),
    );
    let ok = allocate(&mut w, &mut c, &[]);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    let mut creds = creds();
    creds.secrets = vec!["newest".into()];
    w.server.shared.set_credentials(creds);
    let req = c.request(method::REFRESH, &[]);
    assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(401));
}

#[test]
fn userhash_and_sha256_integrity() {
    let mut w = world();
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    c.userhash = true;
    c.sha256_mi = true;
    c.sha256_key = true;
    let ok = allocate(&mut w, &mut c, &[]);
    assert_eq!(
        class_of(&ok),
        Class::SuccessResponse,
        "{:?}",
        error_code(&ok)
    );
    c.verify(&ok);
    assert!(attr_value(&ok, sattr::MESSAGE_INTEGRITY_SHA256).is_some());
    assert!(attr_value(&ok, sattr::MESSAGE_INTEGRITY).is_none());
    assert_eq!(
        w.server.allocations(w.now).next().map(|a| a.user),
        Some("alice".into())
    );
    // MD5 key with MI-SHA256 works too.
    let mut d = Client::new(udp_tuple(), "bob", "builder");
    d.tuple.client.set_port(2);
    d.sha256_mi = true;
    let ok = allocate(&mut w, &mut d, &[]);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    d.verify(&ok);
    // Bid-down: PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS → 400.
    let mut e = Client::new(udp_tuple(), "bob", "builder");
    e.tuple.client.set_port(3);
    e.nonce = d.nonce.clone();
    let tid = e.next_tid();
    let mut buf = vec![0u8; 512];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(method::m(method::ALLOCATE), Class::Request),
        tid,
    )
    .expect("fits");
    b.add(&Attribute::Other {
        attr_type: attrs::REQUESTED_TRANSPORT,
        value: &[17, 0, 0, 0],
    })
    .expect("fits");
    b.add(&Attribute::Username(b"bob")).expect("fits");
    b.add(&Attribute::Realm(REALM.as_bytes())).expect("fits");
    b.add(&Attribute::Nonce(e.nonce.as_deref().expect("nonce")))
        .expect("fits");
    b.add(&Attribute::PasswordAlgorithm(&[0, 2, 0, 0]))
        .expect("fits");
    b.add_message_integrity(e.key().as_bytes()).expect("fits");
    let n = b.finish();
    let a = w.one(&e.tuple, &buf[..n]);
    assert_eq!(error_code(&a), Some(400));
}

// ---------- errors ----------

type Attrs = Vec<(u16, Vec<u8>)>;

#[test]
fn allocate_errors_400_420_437_440_442_and_retransmit() {
    let mut w = world();
    let (mut c, relayed, _) = allocated(&mut w);
    // Retransmission of the Allocate: same answer, no second allocation.
    let tid = TransactionId([c.tid; 12]);
    let again = c.request_with(method::ALLOCATE, &[transport_udp()], tid);
    let a = w.one(&c.tuple, &again);
    assert_eq!(class_of(&a), Class::SuccessResponse);
    assert_eq!(relayed_of(&a), vec![relayed]);
    assert_eq!(w.ports.open.len(), 1);
    // A new Allocate on the same 5-tuple: 437.
    let req = c.request(method::ALLOCATE, &[transport_udp()]);
    let a = w.one(&c.tuple, &req);
    assert_eq!(error_code(&a), Some(437));
    c.verify(&a);

    let mut d = Client::new(udp_tuple(), "bob", "builder");
    d.tuple.client.set_port(2);
    d.nonce = c.nonce.clone();
    let cases: Vec<(Attrs, u16)> = vec![
        (vec![], 400),
        (vec![(attrs::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])], 442),
        (vec![(attrs::REQUESTED_TRANSPORT, vec![17])], 400),
        (vec![transport_udp(), (0x7777, vec![1, 2, 3, 4])], 420),
        (
            vec![
                transport_udp(),
                (attrs::REQUESTED_ADDRESS_FAMILY, vec![3, 0, 0, 0]),
            ],
            440,
        ),
        (
            vec![
                transport_udp(),
                (attrs::EVEN_PORT, vec![0]),
                (attrs::RESERVATION_TOKEN, vec![0; 8]),
            ],
            400,
        ),
        (
            vec![
                transport_udp(),
                (attrs::REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0]),
                (attrs::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
            ],
            400,
        ),
        (
            vec![
                transport_udp(),
                (attrs::ADDITIONAL_ADDRESS_FAMILY, vec![1, 0, 0, 0]),
            ],
            400,
        ),
        (
            vec![transport_udp(), (attrs::RESERVATION_TOKEN, vec![0; 8])],
            508,
        ),
    ];
    for (attrs_, code) in cases {
        let req = d.request(method::ALLOCATE, &attrs_);
        let a = w.one(&d.tuple, &req);
        assert_eq!(error_code(&a), Some(code), "attrs {attrs_:?}");
        d.verify(&a);
        if code == 420 {
            assert_eq!(
                attr_value(&a, sattr::UNKNOWN_ATTRIBUTES),
                Some(vec![0x77, 0x77])
            );
        }
    }
    assert_eq!(w.ports.open.len(), 1);
    assert!(w.server.stats().errors_of(400) >= 4);
}

#[test]
fn ipv6_unsupported_is_440() {
    let mut cfg = config();
    cfg.relay_ipv6 = None;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    let a = allocate(
        &mut w,
        &mut c,
        &[(attrs::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(error_code(&a), Some(440));
    // Dual request: IPv4 granted, ADDRESS-ERROR-CODE 440 for IPv6.
    let req = c.request(
        method::ALLOCATE,
        &[
            transport_udp(),
            (attrs::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
        ],
    );
    let a = w.one(&c.tuple, &req);
    assert_eq!(class_of(&a), Class::SuccessResponse);
    assert_eq!(relayed_of(&a).len(), 1);
    let e = attr_value(&a, attrs::ADDRESS_ERROR_CODE).expect("address error");
    assert_eq!(&e[..4], &[2, 0, 4, 40]);
}

#[test]
fn ipv6_and_dual_allocations() {
    let mut w = world();
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    let a = allocate(
        &mut w,
        &mut c,
        &[(attrs::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(class_of(&a), Class::SuccessResponse);
    let r = relayed_of(&a);
    assert_eq!(r.len(), 2);
    assert!(r[0].is_ipv4() && r[1].is_ipv6());
    // Peers of both families; the IPv6 one goes out of the IPv6 relay.
    let p6: SocketAddr = "[2001:db8:ffff::5]:7".parse().expect("addr");
    // 2001:db8::/32 is documentation space, not in the default deny-list.
    assert_eq!(
        class_of(&permit(&mut w, &mut c, p6)),
        Class::SuccessResponse
    );
    let ind = send_indication(&mut c, p6, b"v6");
    w.send(&c.tuple, &ind);
    let h6 = *w
        .ports
        .open
        .iter()
        .find(|(_, a)| a.is_ipv6())
        .expect("v6")
        .0;
    assert_eq!(w.sink.peer.last().map(|x| x.0), Some(h6));
    // Refresh 0 for IPv6 only drops that relayed address.
    let req = c.request(
        method::REFRESH,
        &[
            (attrs::LIFETIME, vec![0; 4]),
            (attrs::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
        ],
    );
    assert_eq!(class_of(&w.one(&c.tuple, &req)), Class::SuccessResponse);
    assert_eq!(w.ports.open.len(), 1);
    // Now an IPv6 family refresh is a mismatch.
    let req = c.request(
        method::REFRESH,
        &[(attrs::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(443));
    // IPv6-only allocation.
    let mut d = Client::new(udp_tuple(), "bob", "builder");
    d.tuple.client.set_port(9);
    let a = allocate(
        &mut w,
        &mut d,
        &[(attrs::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert!(relayed_of(&a)[0].is_ipv6());
    // IPv4 peer on an IPv6 allocation: 443.
    assert_eq!(error_code(&permit(&mut w, &mut d, peer())), Some(443));
}

#[test]
fn permission_errors_403_443_508_and_437_441() {
    let mut cfg = config();
    cfg.max_permissions = 2;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let (mut c, _, _) = allocated(&mut w);
    for denied in [
        "127.0.0.1:1",
        "10.0.0.1:1",
        "[::ffff:127.0.0.1]:1",
        "169.254.169.254:80",
    ] {
        let a = permit(&mut w, &mut c, denied.parse().expect("addr"));
        assert_eq!(error_code(&a), Some(403), "{denied}");
    }
    assert_eq!(
        error_code(&permit(
            &mut w,
            &mut c,
            "[2001:db8::1]:1".parse().expect("a")
        )),
        Some(443)
    );
    assert_eq!(
        class_of(&permit(&mut w, &mut c, "203.0.113.1:1".parse().expect("a"))),
        Class::SuccessResponse
    );
    assert_eq!(
        class_of(&permit(&mut w, &mut c, "203.0.113.2:1".parse().expect("a"))),
        Class::SuccessResponse
    );
    // Refreshing an existing one is fine; a third IP is over capacity.
    assert_eq!(
        class_of(&permit(&mut w, &mut c, "203.0.113.2:9".parse().expect("a"))),
        Class::SuccessResponse
    );
    assert_eq!(
        error_code(&permit(&mut w, &mut c, "203.0.113.3:1".parse().expect("a"))),
        Some(508)
    );
    // No XOR-PEER-ADDRESS: 400.
    let req = c.request(method::CREATE_PERMISSION, &[]);
    assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(400));
    // Another user on this 5-tuple: 441.
    let mut b = Client::new(c.tuple, "bob", "builder");
    b.nonce = c.nonce.clone();
    let req = b.request(method::REFRESH, &[]);
    let a = w.one(&b.tuple, &req);
    assert_eq!(error_code(&a), Some(441));
    b.verify(&a);
    // No allocation on this 5-tuple: 437.
    let mut o = c.clone();
    o.tuple.client.set_port(1234);
    assert_eq!(error_code(&permit(&mut w, &mut o, peer())), Some(437));
}

#[test]
fn channel_bind_errors() {
    let mut w = world();
    let (mut c, _, _) = allocated(&mut w);
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x3FFF, peer())), Some(400));
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x5000, peer())), Some(400));
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x7FFF, peer())), Some(400));
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, peer())),
        Class::SuccessResponse
    );
    // Refresh of the same binding is fine.
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, peer())),
        Class::SuccessResponse
    );
    let p2: SocketAddr = "203.0.113.6:1".parse().expect("addr");
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x4000, p2)), Some(400));
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x4001, peer())), Some(400));
    assert_eq!(
        error_code(&bind(
            &mut w,
            &mut c,
            0x4001,
            "127.0.0.1:5".parse().expect("a")
        )),
        Some(403)
    );
    // ChannelBind installed the permission: a Send indication goes through.
    let ind = send_indication(&mut c, peer(), b"p");
    w.send(&c.tuple, &ind);
    assert_eq!(w.sink.peer.len(), 1);
    assert!(w.sink.peer_df.is_empty(), "no DONT-FRAGMENT, no DF");
    // With DONT-FRAGMENT (appended after DATA) that one datagram asks for DF.
    let mut ind = send_indication(&mut c, peer(), b"q");
    let len = u16::from_be_bytes([ind[2], ind[3]]) + 4;
    ind[2..4].copy_from_slice(&len.to_be_bytes());
    ind.extend_from_slice(&attrs::DONT_FRAGMENT.to_be_bytes());
    ind.extend_from_slice(&[0, 0]);
    w.send(&c.tuple, &ind);
    assert_eq!(w.sink.peer.len(), 2);
    assert_eq!(w.sink.peer[1].2, b"q");
    assert_eq!(w.sink.peer_df, vec![1]);
    let req = c.request(method::CHANNEL_BIND, &[]);
    assert_eq!(error_code(&w.one(&c.tuple, &req)), Some(400));
}

#[test]
fn quota_486_and_no_port_508() {
    let mut w = world_with(config(), Quotas::new(1, 0));
    let (_c, _, _) = allocated(&mut w);
    let mut c2 = Client::new(udp_tuple(), "alice", "wonderland");
    c2.tuple.client.set_port(2);
    assert_eq!(error_code(&allocate(&mut w, &mut c2, &[])), Some(486));
    let mut b = Client::new(udp_tuple(), "bob", "builder");
    b.tuple.client.set_port(3);
    w.ports.fail = Some(PortError::Exhausted);
    assert_eq!(error_code(&allocate(&mut w, &mut b, &[])), Some(508));
    // The failed Allocate gave its quota slot back.
    assert_eq!(w.quotas.held_by("bob"), 0);
}

#[test]
fn even_port_reservation_and_expiry() {
    let mut w = world();
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    let a = allocate(&mut w, &mut c, &[(attrs::EVEN_PORT, vec![0x80])]);
    assert_eq!(class_of(&a), Class::SuccessResponse);
    assert_eq!(relayed_of(&a)[0].port() % 2, 0);
    let token = attr_value(&a, attrs::RESERVATION_TOKEN).expect("token");
    // Another client claims the reserved port with the token.
    let mut d = Client::new(udp_tuple(), "bob", "builder");
    d.tuple.client.set_port(2);
    let b = allocate(&mut w, &mut d, &[(attrs::RESERVATION_TOKEN, token.clone())]);
    assert_eq!(class_of(&b), Class::SuccessResponse, "{:?}", error_code(&b));
    assert_eq!(relayed_of(&b)[0].port(), relayed_of(&a)[0].port() + 1);
    // Used: the expiry releases nothing that was claimed... it is no longer tracked.
    w.advance(Duration::from_secs(31));
    assert!(w.ports.released.is_empty());
    // An unclaimed reservation is released after 30 s.
    let mut e = Client::new(udp_tuple(), "bob", "builder");
    e.tuple.client.set_port(3);
    let x = allocate(&mut w, &mut e, &[(attrs::EVEN_PORT, vec![0x80])]);
    let t = u64::from_be_bytes(
        attr_value(&x, attrs::RESERVATION_TOKEN)
            .expect("token")
            .try_into()
            .expect("8 bytes"),
    );
    w.advance(Duration::from_secs(29));
    assert!(w.ports.released.is_empty());
    w.advance(Duration::from_secs(1));
    assert_eq!(w.ports.released, vec![t]);
}

#[test]
fn dont_fragment_is_set_or_refused_with_420() {
    let mut w = world();
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    let a = allocate(&mut w, &mut c, &[(attrs::DONT_FRAGMENT, vec![])]);
    assert_eq!(class_of(&a), Class::SuccessResponse);
    assert_eq!(w.ports.df.len(), 1);
    let mut d = Client::new(udp_tuple(), "bob", "builder");
    d.tuple.client.set_port(2);
    w.ports.df_ok = false;
    let a = allocate(&mut w, &mut d, &[(attrs::DONT_FRAGMENT, vec![])]);
    assert_eq!(error_code(&a), Some(420));
    assert_eq!(
        attr_value(&a, sattr::UNKNOWN_ATTRIBUTES),
        Some(attrs::DONT_FRAGMENT.to_be_bytes().to_vec())
    );
    assert_eq!(w.ports.open.len(), 1);
}

#[test]
fn bandwidth_limit_drops_excess() {
    let mut cfg = config();
    cfg.bandwidth_limit = 1000;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let (mut c, _, _) = allocated(&mut w);
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, peer())),
        Class::SuccessResponse
    );
    let payload = vec![0u8; 1200];
    for _ in 0..100 {
        w.send(&c.tuple, &channel_data(0x4000, &payload, false));
    }
    let s = w.server.stats();
    assert!(s.dropped_bandwidth > 0, "{s:?}");
    assert!(s.packets_client_to_peer < 100);
}

#[test]
fn kick_by_client_and_relay() {
    let mut w = world();
    let (_c, relayed, _) = allocated(&mut w);
    assert_eq!(
        w.server.kick(
            &KickTarget::Relay("203.0.113.1:1".parse().expect("a")),
            &mut w.ports
        ),
        0
    );
    assert_eq!(w.server.kick(&KickTarget::Relay(relayed), &mut w.ports), 1);
    let (c, _, _) = allocated(&mut w);
    assert_eq!(
        w.server
            .kick(&KickTarget::Client(c.tuple.client), &mut w.ports),
        1
    );
    assert!(w.ports.open.is_empty());
    assert_eq!(w.server.stats().allocations_deleted, 2);
}

#[test]
fn binding_is_answered_and_garbage_dropped() {
    let mut w = world();
    let mut buf = [0u8; 64];
    let n = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([3; 12]),
    )
    .expect("fits")
    .finish();
    let a = w.one(&udp_tuple(), &buf[..n]);
    assert_eq!(class_of(&a), Class::SuccessResponse);
    assert!(w.send(&udp_tuple(), &[0x80, 1, 2, 3]).is_empty());
    assert!(w.send(&udp_tuple(), &[]).is_empty());
    assert!(w.send(&udp_tuple(), &[0x40, 0, 0, 4, 1]).is_empty());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

        #[test]
        fn on_client_and_on_peer_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            stun in any::<bool>(),
            method_ in 0u16..16,
            handle in 0u32..4,
        ) {
            let mut w = world();
            let (c, _, h) = allocated(&mut w);
            let mut msg = bytes.clone();
            if stun && msg.len() >= 20 {
                // Make it look like STUN so the deeper paths run.
                let t = MessageType::new(method::m(method_), Class::Request).to_u16();
                msg[0..2].copy_from_slice(&t.to_be_bytes());
                let len = ((msg.len() - 20) / 4 * 4) as u16;
                msg.truncate(20 + usize::from(len));
                msg[2..4].copy_from_slice(&len.to_be_bytes());
                msg[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            }
            w.send(&c.tuple, &msg);
            w.server.on_peer(h + handle, peer(), &bytes, w.now, &mut w.sink);
            w.advance(Duration::from_secs(700));
        }
    }
}

#[test]
fn legacy_channel_range_accepts_rfc5766_numbers_only_when_enabled() {
    let cfg = TurnConfig {
        legacy_channel_range: true,
        ..config()
    };
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let (mut c, _, handle) = allocated(&mut w);
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x7FFF, peer())),
        Class::SuccessResponse
    );
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x8000, peer())), Some(400));
    assert_eq!(error_code(&bind(&mut w, &mut c, 0x3FFF, peer())), Some(400));
    // The bound legacy channel relays both ways.
    w.sink.client.clear();
    w.server.on_peer(handle, peer(), b"abc", w.now, &mut w.sink);
    assert_eq!(w.sink.client[0].1, channel_data(0x7FFF, b"abc", false));
    w.sink.peer.clear();
    let tuple = c.tuple;
    w.send(&tuple, &channel_data(0x7FFF, b"xyz", false));
    assert_eq!(w.sink.peer[0].2, b"xyz");
}

#[test]
fn own_address_reachable_on_relay_ports_only() {
    let own: std::net::IpAddr = "192.0.2.10".parse().expect("ip");
    let mut w = world_with_policy(config(), Quotas::new(0, 0), own_address_policy());
    let (mut c, _, handle) = allocated(&mut w);
    let other_allocation = SocketAddr::new(own, 50_000);
    let own_service = SocketAddr::new(own, 22);
    // A permission for the own IP is granted (ports are checked per datagram)...
    assert_eq!(
        class_of(&permit(&mut w, &mut c, own_service)),
        Class::SuccessResponse
    );
    // ...a channel to another allocation of this relay too, but not to its services.
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4001, other_allocation)),
        Class::SuccessResponse
    );
    assert_eq!(
        error_code(&bind(&mut w, &mut c, 0x4002, own_service)),
        Some(403)
    );
    // Send indications reach the relay port range only.
    w.sink.peer.clear();
    let tuple = c.tuple;
    let si = send_indication(&mut c, other_allocation, b"to-alloc");
    w.send(&tuple, &si);
    let si = send_indication(&mut c, own_service, b"to-ssh");
    w.send(&tuple, &si);
    assert_eq!(
        w.sink.peer.len(),
        1,
        "only the relay-range datagram is relayed"
    );
    assert_eq!(w.sink.peer[0].1, other_allocation);
    // Inbound: from another allocation relayed, from an own service dropped.
    w.sink.client.clear();
    w.server
        .on_peer(handle, other_allocation, b"hi", w.now, &mut w.sink);
    w.server
        .on_peer(handle, own_service, b"x", w.now, &mut w.sink);
    assert_eq!(w.sink.client.len(), 1);
}
