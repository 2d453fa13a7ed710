//! Fuzzes the TURN core (`relay::turn::server::TurnServer`, the userspace path of every
//! TURN request, indication and relayed datagram) with sequences of operations: raw
//! datagrams from clients, authenticated requests built around fuzzed attributes (random
//! bytes alone never pass MESSAGE-INTEGRITY), ChannelData, datagrams from peers, time
//! jumps, kicks (carried out a slice at a time, as a worker does, with other operations
//! in between) and closed connections. Raw bytes on the stream client's tuple are cut
//! into frames by `relay::turn::framing::frame_len`, as the workers cut TCP and TLS.
//!
//! It must never panic, and:
//! - everything sent to a client goes to a known client and is STUN with a right
//!   FINGERPRINT or ChannelData whose length field fits the datagram;
//! - everything sent to a peer leaves from an open relayed socket to an address the peer
//!   policy allows;
//! - no relayed socket is closed twice, and once every allocation is kicked and the
//!   reservations have expired, no relayed socket or reserved port is left (no lost
//!   state).
//!
//! Input: one byte picks the operation and its subject, one byte the body's length, then
//! the body; at most 48 operations.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use relay::policy::{PeerPolicy, PolicyConfig, Quotas};
use relay::stun::integrity::verify_fingerprint;
use relay::stun::{Attribute, Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use relay::turn::attrs::{self, method};
use relay::turn::auth::{Credentials, PasswordAlgorithm, long_term_key};
use relay::turn::framing::frame_len;
use relay::turn::kick_job::KickJob;
use relay::turn::server::TurnServer;
use relay::turn::{
    FiveTuple, IpFamily, KickTarget, PortError, PortRequest, RelayHandle, RelayPorts, Shared,
    Transmit, Transport, TurnConfig,
};

const REALM: &str = "fuzz.example";
const USER: &str = "alice";
const PASS: &str = "wonderland";

/// Relayed sockets as a set of handles, checking that each is closed once.
#[derive(Default)]
struct Ports {
    next: u32,
    next_port: u16,
    open: HashMap<RelayHandle, SocketAddr>,
    reserved: HashMap<u64, SocketAddr>,
}

impl RelayPorts for Ports {
    fn open(
        &mut self,
        family: IpFamily,
        req: PortRequest,
    ) -> Result<(RelayHandle, SocketAddr, Option<u64>), PortError> {
        if self.open.len() >= 64 {
            return Err(PortError::Exhausted);
        }
        let ip: IpAddr = match family {
            IpFamily::V4 => [192, 0, 2, 10].into(),
            IpFamily::V6 => "2001:db8::10".parse().expect("ip"),
        };
        self.next_port = self.next_port.wrapping_add(2).max(50_000);
        let (addr, token) = match req {
            PortRequest::Reserved(t) => match self.reserved.remove(&t) {
                Some(a) => (a, None),
                None => return Err(PortError::UnknownToken),
            },
            PortRequest::Even { reserve_next } => {
                let a = SocketAddr::new(ip, self.next_port & !1);
                let token = reserve_next.then(|| {
                    let t = 0xA000 + u64::from(self.next);
                    self.reserved.insert(t, SocketAddr::new(ip, a.port() + 1));
                    t
                });
                (a, token)
            }
            PortRequest::Any => (SocketAddr::new(ip, self.next_port), None),
        };
        self.next += 1;
        self.open.insert(self.next, addr);
        Ok((self.next, addr, token))
    }

    fn close(&mut self, relay: RelayHandle) {
        assert!(
            self.open.remove(&relay).is_some(),
            "relayed socket {relay} closed twice or never opened"
        );
    }

    fn release_reservation(&mut self, token: u64) {
        self.reserved.remove(&token);
    }

    fn set_dont_fragment(&mut self, _relay: RelayHandle) -> bool {
        true
    }
}

#[derive(Default)]
struct Sink {
    client: Vec<(FiveTuple, Vec<u8>)>,
    peer: Vec<(RelayHandle, SocketAddr, Vec<u8>)>,
}

impl Transmit for Sink {
    fn to_client(&mut self, tuple: &FiveTuple, bytes: &[u8]) {
        self.client.push((*tuple, bytes.to_vec()));
    }
    fn to_peer(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        self.peer.push((relay, peer, bytes.to_vec()));
    }
}

/// A client's 5-tuple and what it learnt from the server's challenge.
struct Session {
    tuple: FiveTuple,
    nonce: Vec<u8>,
    tid: u64,
}

struct Harness {
    server: TurnServer,
    policy: Arc<PeerPolicy>,
    ports: Ports,
    sink: Sink,
    sessions: Vec<Session>,
    key: Vec<u8>,
    now: Instant,
    wall: SystemTime,
    /// A kick in progress: one allocation deleted per kick operation.
    kick: Option<KickJob>,
}

/// Peers the operations pick from: two the set-up permits, the first one's IP on
/// another port, a stranger, an IPv6 peer, and one the default deny-list refuses.
fn peers() -> [SocketAddr; 6] {
    [
        "203.0.113.5:7000".parse().expect("addr"),
        "203.0.113.6:7001".parse().expect("addr"),
        "203.0.113.5:9999".parse().expect("addr"),
        "198.18.0.9:1234".parse().expect("addr"),
        "[2001:db8::5]:7000".parse().expect("addr"),
        "127.0.0.1:7000".parse().expect("addr"),
    ]
}

/// Attribute types an authenticated request draws from (index by a fuzzed byte).
const TYPES: [u16; 13] = [
    attrs::CHANNEL_NUMBER,
    attrs::LIFETIME,
    attrs::XOR_PEER_ADDRESS,
    attrs::DATA,
    attrs::REQUESTED_ADDRESS_FAMILY,
    attrs::EVEN_PORT,
    attrs::REQUESTED_TRANSPORT,
    attrs::DONT_FRAGMENT,
    attrs::RESERVATION_TOKEN,
    attrs::ADDITIONAL_ADDRESS_FAMILY,
    attrs::ICMP,
    0x8022, // SOFTWARE
    0x0003, // CHANGE-REQUEST (comprehension-required, unknown to TURN)
];

const METHODS: [u16; 7] = [
    method::ALLOCATE,
    method::REFRESH,
    method::CREATE_PERMISSION,
    method::CHANNEL_BIND,
    method::SEND,
    method::DATA,
    0x001, // Binding
];

fn m(v: u16) -> Method {
    Method::new(v).expect("a method code")
}

impl Harness {
    fn new() -> Harness {
        let policy = Arc::new(PeerPolicy::new(&PolicyConfig::default(), &[]).expect("policy"));
        let shared = Shared::new(
            Credentials {
                realm: REALM.into(),
                users: HashMap::from([(USER.to_owned(), PASS.to_owned())]),
                secrets: vec!["fuzz-secret".into()],
            },
            Arc::clone(&policy),
            Arc::new(Quotas::new(0, 0)),
        );
        let config = TurnConfig {
            relay_ipv4: Some([192, 0, 2, 10].into()),
            relay_ipv6: Some("2001:db8::10".parse().expect("ip")),
            unauth_reply_allowance: 512,
            nonce_lifetime: Duration::from_secs(1_000_000),
            ..TurnConfig::default()
        };
        let tuple = |last: u8, port: u16, transport| FiveTuple {
            client: SocketAddr::from(([198, 51, 100, last], port)),
            server: SocketAddr::from(([192, 0, 2, 1], 3478)),
            transport,
        };
        let session = |t| Session {
            tuple: t,
            nonce: Vec::new(),
            tid: 0,
        };
        Harness {
            server: TurnServer::new(Arc::new(config), Arc::new(shared)),
            policy,
            ports: Ports::default(),
            sink: Sink::default(),
            sessions: vec![
                session(tuple(7, 40_000, Transport::Udp)),
                session(tuple(8, 40_001, Transport::Udp)),
                session(tuple(9, 40_002, Transport::Tcp)),
            ],
            key: long_term_key(
                PasswordAlgorithm::Md5,
                USER.as_bytes(),
                REALM.as_bytes(),
                PASS.as_bytes(),
            )
            .as_bytes()
            .to_vec(),
            now: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            kick: None,
        }
    }

    /// Raw bytes from session `s`: one datagram, or on the stream session a piece of
    /// stream cut into frames by `frame_len` as the workers cut it (up to the first bad
    /// or incomplete frame).
    fn raw(&mut self, s: usize, bytes: &[u8]) {
        if self.sessions[s].tuple.transport == Transport::Udp {
            return self.client_sends(s, bytes);
        }
        let mut rest = bytes;
        while let Some(Ok(n)) = frame_len(rest) {
            assert!(n >= 4, "a frame shorter than its header");
            if n > rest.len() {
                break;
            }
            let (frame, tail) = rest.split_at(n);
            self.client_sends(s, frame);
            rest = tail;
        }
    }

    fn client_sends(&mut self, s: usize, bytes: &[u8]) {
        let tuple = self.sessions[s].tuple;
        self.server.on_client(
            &tuple,
            bytes,
            self.now,
            self.wall,
            &mut self.ports,
            &mut self.sink,
        );
        self.check();
    }

    /// Checks and forgets what the server sent; learns nonces from challenges.
    fn check(&mut self) {
        for (tuple, bytes) in std::mem::take(&mut self.sink.client) {
            let s = self
                .sessions
                .iter_mut()
                .find(|s| s.tuple == tuple)
                .expect("sent to a client that never sent anything");
            match bytes.first().map(|b| b >> 6) {
                Some(0b01) => {
                    assert!(bytes.len() >= 4, "ChannelData shorter than its header");
                    let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                    let whole = if tuple.transport == Transport::Udp {
                        4 + len
                    } else {
                        (4 + len).next_multiple_of(4)
                    };
                    assert_eq!(whole, bytes.len(), "ChannelData length field");
                }
                _ => {
                    let msg = Message::parse(&bytes).expect("the server sent something not STUN");
                    // Every message carries a right FINGERPRINT, except that a Data
                    // indication may have none (built as the kernel path builds it; RFC
                    // 8489 §14.7 makes FINGERPRINT optional per usage).
                    let data_indication = bytes[..2] == [0x00, 0x17];
                    match verify_fingerprint(&msg) {
                        Err(relay::stun::StunError::MissingFingerprint) if data_indication => {}
                        r => r.unwrap_or_else(|e| {
                            panic!(
                                "the server sent a wrong FINGERPRINT ({e}) in a message of type \
                                 {:02x}{:02x}",
                                bytes[0], bytes[1]
                            )
                        }),
                    }
                    if let Ok(Some(Attribute::Nonce(n))) = msg.get(relay::stun::attr::NONCE) {
                        s.nonce = n.to_vec();
                    }
                }
            }
        }
        for (relay, peer, _) in std::mem::take(&mut self.sink.peer) {
            assert!(
                self.ports.open.contains_key(&relay),
                "sent from relayed socket {relay}, which is not open"
            );
            assert!(
                self.policy.check(peer.ip()).is_ok(),
                "relayed to {peer}, which the peer policy denies"
            );
        }
    }

    /// An authenticated message of `method` (`class`) from session `s` with `attrs`.
    fn authenticated(&mut self, s: usize, method: u16, class: Class, attrs: &[Attribute<'_>]) {
        let session = &mut self.sessions[s];
        session.tid += 1;
        let mut t = [0u8; 12];
        t[0] = s as u8;
        t[4..].copy_from_slice(&session.tid.to_be_bytes());
        let tid = TransactionId(t);
        let mut buf = vec![0u8; 2048];
        let Ok(mut b) = MessageBuilder::new(&mut buf, MessageType::new(m(method), class), tid)
        else {
            return;
        };
        let nonce = session.nonce.clone();
        let built = attrs.iter().try_for_each(|a| b.add(a)).is_ok()
            && b.add(&Attribute::Username(USER.as_bytes())).is_ok()
            && b.add(&Attribute::Realm(REALM.as_bytes())).is_ok()
            && b.add(&Attribute::Nonce(&nonce)).is_ok()
            && b.add_message_integrity(&self.key).is_ok()
            && b.add_fingerprint().is_ok();
        if !built {
            return;
        }
        let n = b.finish();
        buf.truncate(n);
        self.client_sends(s, &buf);
    }

    /// The XOR-PEER-ADDRESS of peer `i` for the next transaction of session `s`.
    fn xor_peer(&self, s: usize, i: usize) -> Vec<u8> {
        let mut t = [0u8; 12];
        t[0] = s as u8;
        t[4..].copy_from_slice(&(self.sessions[s].tid + 1).to_be_bytes());
        let mut out = [0u8; attrs::XOR_ADDRESS_MAX];
        let n = attrs::encode_xor_address(peers()[i % 6], &TransactionId(t), &mut out);
        out[..n].to_vec()
    }

    /// A nonce for every session; for session 0 an allocation with a channel to peer 0
    /// and a permission for peer 1, for session 1 a dual-stack allocation, for the stream
    /// session an even port with the next one reserved. So the fuzzed operations start
    /// inside the authenticated paths, with every kind of relayed socket to lose.
    fn set_up(&mut self) {
        let udp = [17u8, 0, 0, 0];
        let transport = [Attribute::Other {
            attr_type: attrs::REQUESTED_TRANSPORT,
            value: &udp,
        }];
        for s in 0..self.sessions.len() {
            let mut buf = vec![0u8; 256];
            let tid = TransactionId([0xEE, s as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            let mut b = MessageBuilder::new(
                &mut buf,
                MessageType::new(m(method::ALLOCATE), Class::Request),
                tid,
            )
            .expect("fits");
            b.add(&transport[0]).expect("fits");
            let n = b.finish();
            buf.truncate(n);
            self.client_sends(s, &buf);
            assert!(!self.sessions[s].nonce.is_empty(), "no challenge");
        }
        self.authenticated(0, method::ALLOCATE, Class::Request, &transport);
        let channel = [0x40, 0, 0, 0];
        let p0 = self.xor_peer(0, 0);
        self.authenticated(
            0,
            method::CHANNEL_BIND,
            Class::Request,
            &[
                Attribute::Other {
                    attr_type: attrs::CHANNEL_NUMBER,
                    value: &channel,
                },
                Attribute::Other {
                    attr_type: attrs::XOR_PEER_ADDRESS,
                    value: &p0,
                },
            ],
        );
        let p1 = self.xor_peer(0, 1);
        self.authenticated(
            0,
            method::CREATE_PERMISSION,
            Class::Request,
            &[Attribute::Other {
                attr_type: attrs::XOR_PEER_ADDRESS,
                value: &p1,
            }],
        );
        // Session 1: a dual-stack allocation (two relayed sockets); the stream session:
        // an even port with the next one reserved (a reservation to give back).
        let v6 = [2u8, 0, 0, 0];
        self.authenticated(
            1,
            method::ALLOCATE,
            Class::Request,
            &[
                transport[0],
                Attribute::Other {
                    attr_type: attrs::ADDITIONAL_ADDRESS_FAMILY,
                    value: &v6,
                },
            ],
        );
        let reserve = [0x80u8];
        self.authenticated(
            2,
            method::ALLOCATE,
            Class::Request,
            &[
                transport[0],
                Attribute::Other {
                    attr_type: attrs::EVEN_PORT,
                    value: &reserve,
                },
            ],
        );
        assert_eq!(self.ports.open.len(), 4, "the set-up allocations' sockets");
        assert_eq!(self.ports.reserved.len(), 1, "the set-up reservation");
    }

    /// A fuzzed authenticated message: method, class and attributes from `body`.
    fn fuzzed_request(&mut self, s: usize, body: &[u8]) {
        let Some((&sel, mut rest)) = body.split_first() else {
            return;
        };
        let method = METHODS[usize::from(sel) % METHODS.len()];
        let class = if method == method::SEND || method == method::DATA || sel & 0x80 != 0 {
            Class::Indication
        } else {
            Class::Request
        };
        // Each attribute: a type byte (top bit: a raw type from the next two bytes), a
        // length byte (top bit, for XOR-PEER-ADDRESS: a well-formed address of peer
        // `len & 7`), then the value.
        let mut values: Vec<(u16, Vec<u8>)> = Vec::new();
        while values.len() < 8 {
            let Some((&t, r)) = rest.split_first() else {
                break;
            };
            rest = r;
            let attr_type = if t & 0x80 != 0 {
                let Some((raw, r)) = rest.split_first_chunk::<2>() else {
                    break;
                };
                rest = r;
                u16::from_be_bytes(*raw)
            } else {
                TYPES[usize::from(t) % TYPES.len()]
            };
            let Some((&l, r)) = rest.split_first() else {
                break;
            };
            rest = r;
            if attr_type == attrs::XOR_PEER_ADDRESS && l & 0x80 != 0 {
                values.push((attr_type, self.xor_peer(s, usize::from(l & 7))));
                continue;
            }
            let n = usize::from(l & 0x7f).min(rest.len());
            values.push((attr_type, rest[..n].to_vec()));
            rest = &rest[n..];
        }
        let list: Vec<Attribute<'_>> = values
            .iter()
            .map(|(attr_type, value)| Attribute::Other {
                attr_type: *attr_type,
                value,
            })
            .collect();
        self.authenticated(s, method, class, &list);
    }

    /// ChannelData from session `s`: a channel number near the bound one, the length
    /// field right or taken from `body`.
    fn channel_data(&mut self, s: usize, sel: u8, body: &[u8]) {
        let (channel, right, data) = match body.split_first_chunk::<2>() {
            Some((c, d)) if sel & 0x20 != 0 => (u16::from_be_bytes(*c), false, d),
            _ => (0x4000 + u16::from(sel & 0x03), true, body),
        };
        let mut frame = Vec::with_capacity(4 + data.len());
        frame.extend_from_slice(&channel.to_be_bytes());
        let len = if right {
            data.len() as u16
        } else {
            u16::from(sel)
        };
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(data);
        if sel & 0x40 != 0 {
            frame.resize(frame.len().next_multiple_of(4), 0);
        }
        self.client_sends(s, &frame);
    }

    fn peer_sends(&mut self, sel: u8, body: &[u8]) {
        let mut handles: Vec<RelayHandle> = self.ports.open.keys().copied().collect();
        handles.sort_unstable();
        // An unknown handle too (a socket closed while its datagram was in flight).
        let relay = handles
            .get(usize::from(sel >> 3) % (handles.len() + 1))
            .copied()
            .unwrap_or(u32::MAX);
        let peer = peers()[usize::from(sel & 7) % 6];
        self.server
            .on_peer(relay, peer, body, self.now, &mut self.sink);
        self.check();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d;
        self.server.on_timeout(self.now, &mut self.ports);
        self.check();
    }

    /// Begins a kick, or takes the next slice (one allocation) of the one in progress.
    fn kick(&mut self, sel: u8) {
        let mut job = match self.kick.take() {
            Some(job) => job,
            None => {
                let target = match sel % 3 {
                    0 => KickTarget::User(USER.into()),
                    1 => KickTarget::Client(self.sessions[usize::from(sel >> 2) % 3].tuple.client),
                    _ => match self.ports.open.values().next() {
                        Some(a) => KickTarget::Relay(*a),
                        None => return,
                    },
                };
                self.server.kick_begin(&target)
            }
        };
        let before = job.kicked();
        let mut tuples = Vec::new();
        let done = self
            .server
            .kick_step(&mut job, &mut self.ports, 1, &mut tuples);
        assert_eq!(
            job.kicked() - before,
            tuples.len(),
            "one tuple per kicked allocation"
        );
        assert!(tuples.len() <= 1, "a slice of 1 deleted {}", tuples.len());
        if !done {
            self.kick = Some(job);
        }
        self.check();
    }

    /// Everything kicked and every reservation expired: nothing may be left open.
    fn tear_down(&mut self) {
        while self.kick.is_some() {
            self.kick(0);
        }
        self.server
            .kick(&KickTarget::User(USER.into()), &mut self.ports);
        self.check();
        assert_eq!(self.server.allocations(self.now).count(), 0);
        assert!(
            self.ports.open.is_empty(),
            "relayed sockets left open with no allocation: {:?}",
            self.ports.open
        );
        self.advance(Duration::from_secs(3600));
        assert!(
            self.ports.reserved.is_empty(),
            "reserved ports never given back: {:?}",
            self.ports.reserved
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    h.set_up();
    let mut rest = data;
    for _ in 0..48 {
        let Some(([op, len], tail)) = rest.split_first_chunk::<2>().map(|(a, t)| (*a, t)) else {
            break;
        };
        let n = usize::from(len).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        let s = usize::from(op >> 3) % 3;
        match op & 7 {
            0 => h.raw(s, body),
            1 | 2 => h.fuzzed_request(s, body),
            3 => h.channel_data(s, op, body),
            4 => h.peer_sends(op, body),
            5 => h.advance(Duration::from_secs(
                u64::from(body.first().copied().unwrap_or(1)) * 5,
            )),
            6 => h.kick(op >> 3),
            _ => {
                let tuple = h.sessions[s].tuple;
                h.server.on_client_closed(&tuple, &mut h.ports);
                h.check();
                let _ = h.server.allocations(h.now).count();
                h.server.recheck_policy(h.now);
                h.check();
            }
        }
    }
    h.tear_down();
});
