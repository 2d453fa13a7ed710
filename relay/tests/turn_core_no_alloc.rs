//! Proves that the TURN relay hot path never allocates: ChannelData client → peer and
//! peer → client (UDP and stream padding), Send indications, Data indications, and the
//! drops (no permission, unbound channel, unknown relay).
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own. The counter is per thread so the harness's threads do not disturb it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use relay::policy::{PeerPolicy, PolicyConfig, Quotas};
use relay::stun::attr::NONCE;
use relay::stun::{Attribute, Class, Message, MessageBuilder, MessageType, TransactionId};
use relay::turn::attrs::{self, method};
use relay::turn::auth::{PasswordAlgorithm, long_term_key};
use relay::turn::{
    Credentials, FiveTuple, IpFamily, PortError, PortRequest, RelayHandle, RelayPorts, Shared,
    Transmit, Transport, TurnConfig, TurnServer,
};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

struct Ports {
    next: u32,
}

impl RelayPorts for Ports {
    fn open(
        &mut self,
        _family: IpFamily,
        _req: PortRequest,
    ) -> Result<(RelayHandle, SocketAddr, Option<u64>), PortError> {
        self.next += 1;
        let addr: SocketAddr = format!("192.0.2.10:{}", 50000 + self.next).parse().unwrap();
        Ok((self.next, addr, None))
    }
    fn close(&mut self, _relay: RelayHandle) {}
    fn release_reservation(&mut self, _token: u64) {}
    fn set_dont_fragment(&mut self, _relay: RelayHandle) -> bool {
        true
    }
}

/// Remembers the last datagram each way in fixed buffers (no allocation).
struct Sink {
    client: [u8; 2048],
    client_len: usize,
    client_count: u64,
    peer: [u8; 2048],
    peer_len: usize,
    peer_count: u64,
}

impl Transmit for Sink {
    fn to_client(&mut self, _tuple: &FiveTuple, bytes: &[u8]) {
        self.client[..bytes.len()].copy_from_slice(bytes);
        self.client_len = bytes.len();
        self.client_count += 1;
    }
    fn to_peer(&mut self, _relay: RelayHandle, _peer: SocketAddr, bytes: &[u8]) {
        self.peer[..bytes.len()].copy_from_slice(bytes);
        self.peer_len = bytes.len();
        self.peer_count += 1;
    }
}

fn xor(p: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    let mut v = [0u8; attrs::XOR_ADDRESS_MAX];
    let n = attrs::encode_xor_address(p, tid, &mut v);
    v[..n].to_vec()
}

fn request(
    method_: u16,
    class: Class,
    tid: u8,
    extra: &[(u16, Vec<u8>)],
    nonce: Option<&[u8]>,
) -> Vec<u8> {
    let tid = TransactionId([tid; 12]);
    let mut buf = vec![0u8; 1024];
    let mut b =
        MessageBuilder::new(&mut buf, MessageType::new(method::m(method_), class), tid).unwrap();
    for (t, v) in extra {
        let v = if *t == attrs::XOR_PEER_ADDRESS {
            // Encoded against this transaction id.
            let p = attrs::decode_xor_address(v, &TransactionId([0; 12])).unwrap();
            xor(p, &tid)
        } else {
            v.clone()
        };
        b.add(&Attribute::Other {
            attr_type: *t,
            value: &v,
        })
        .unwrap();
    }
    if let Some(n) = nonce {
        b.add(&Attribute::Username(b"alice")).unwrap();
        b.add(&Attribute::Realm(b"example.org")).unwrap();
        b.add(&Attribute::Nonce(n)).unwrap();
        let key = long_term_key(PasswordAlgorithm::Md5, b"alice", b"example.org", b"pw");
        b.add_message_integrity(key.as_bytes()).unwrap();
    }
    b.add_fingerprint().unwrap();
    let n = b.finish();
    buf.truncate(n);
    buf
}

fn channel_data(number: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    while pad && !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

#[test]
fn relay_hot_path_does_not_allocate() {
    // The counter sees allocations at all (so a 0 below means something).
    assert!(allocations_during(|| drop(std::hint::black_box(vec![1u8]))) > 0);
    let creds = Credentials {
        realm: "example.org".into(),
        users: HashMap::from([("alice".to_owned(), "pw".to_owned())]),
        secrets: vec![],
    };
    let policy = PeerPolicy::new(&PolicyConfig::default(), &[]).unwrap();
    let shared = Arc::new(Shared::new(
        creds,
        Arc::new(policy),
        Arc::new(Quotas::new(0, 0)),
    ));
    let config = Arc::new(TurnConfig {
        relay_ipv4: Some("192.0.2.10".parse().unwrap()),
        unauth_reply_allowance: 512,
        bandwidth_limit: 1 << 30,
        ..TurnConfig::default()
    });
    let mut server = TurnServer::new(config, shared);
    let mut ports = Ports { next: 0 };
    let mut sink = Box::new(Sink {
        client: [0; 2048],
        client_len: 0,
        client_count: 0,
        peer: [0; 2048],
        peer_len: 0,
        peer_count: 0,
    });
    let now = Instant::now();
    let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let peer: SocketAddr = "203.0.113.5:7000".parse().unwrap();
    let chan_peer: SocketAddr = "203.0.113.6:7000".parse().unwrap();
    let stranger: SocketAddr = "203.0.113.99:1".parse().unwrap();
    let peer_attr = |p: SocketAddr| (attrs::XOR_PEER_ADDRESS, xor(p, &TransactionId([0; 12])));

    for (i, transport) in [Transport::Udp, Transport::Tcp].into_iter().enumerate() {
        let tuple = FiveTuple {
            client: format!("198.51.100.7:{}", 40000 + i).parse().unwrap(),
            server: "192.0.2.1:3478".parse().unwrap(),
            transport,
        };
        macro_rules! on_client {
            ($msg:expr) => {
                server.on_client(&tuple, $msg, now, wall, &mut ports, &mut *sink)
            };
        }
        // Set-up (allocation allowed here).
        let first = request(
            method::ALLOCATE,
            Class::Request,
            1,
            &[(attrs::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            None,
        );
        on_client!(&first);
        let challenge = sink.client[..sink.client_len].to_vec();
        let m = Message::parse(&challenge).unwrap();
        let Some(Attribute::Nonce(nonce)) = m.get(NONCE).unwrap() else {
            panic!("no nonce in the challenge");
        };
        let nonce = nonce.to_vec();
        let transport_attr = (attrs::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        for (tid, msg) in [
            request(
                method::ALLOCATE,
                Class::Request,
                2,
                &[transport_attr],
                Some(&nonce),
            ),
            request(
                method::CREATE_PERMISSION,
                Class::Request,
                3,
                &[peer_attr(peer)],
                Some(&nonce),
            ),
            request(
                method::CHANNEL_BIND,
                Class::Request,
                4,
                &[
                    (attrs::CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]),
                    peer_attr(chan_peer),
                ],
                Some(&nonce),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            on_client!(&msg);
            let answer = Message::parse(&sink.client[..sink.client_len]).unwrap();
            assert_eq!(answer.class(), Class::SuccessResponse, "set-up step {tid}");
        }
        let relay = ports.next;

        let payload = [0xA5u8; 101];
        let send = request(
            method::SEND,
            Class::Indication,
            5,
            &[peer_attr(peer), (attrs::DATA, payload.to_vec())],
            None,
        );
        let send_stranger = request(
            method::SEND,
            Class::Indication,
            6,
            &[peer_attr(stranger), (attrs::DATA, payload.to_vec())],
            None,
        );
        let cd = channel_data(0x4001, &payload, transport.is_stream());
        let cd_unbound = channel_data(0x4002, &payload, false);

        // Warm up once (first use of the maps' capacity, tracing callsites, ...).
        on_client!(&send);
        on_client!(&cd);
        server.on_peer(relay, peer, &payload, now, &mut *sink);
        server.on_peer(relay, chan_peer, &payload, now, &mut *sink);

        let (to_peer_before, to_client_before) = (sink.peer_count, sink.client_count);
        let n = allocations_during(|| {
            for _ in 0..100 {
                on_client!(&send);
                on_client!(&cd);
                on_client!(&send_stranger);
                on_client!(&cd_unbound);
                server.on_peer(relay, peer, &payload, now, &mut *sink);
                server.on_peer(relay, chan_peer, &payload, now, &mut *sink);
                server.on_peer(relay, stranger, &payload, now, &mut *sink);
                server.on_peer(relay + 100, peer, &payload, now, &mut *sink);
            }
        });
        assert_eq!(n, 0, "{transport:?}: the relay path allocated {n} times");
        assert_eq!(sink.peer_count - to_peer_before, 200);
        assert_eq!(sink.client_count - to_client_before, 200);
        // The last peer → client datagram was ChannelData, padded on streams.
        let expect = if transport.is_stream() {
            4 + 104
        } else {
            4 + 101
        };
        assert_eq!(sink.client_len, expect);
    }
    let s = server.stats();
    assert!(s.dropped_no_permission >= 200);
    assert!(s.dropped_peer_no_permission >= 200);
    assert!(s.dropped_unknown_relay >= 200);
}
