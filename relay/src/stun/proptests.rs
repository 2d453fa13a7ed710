//! Property tests of the codec and the Binding service: decode(encode(m)) == m for
//! generated messages; arbitrary bytes never panic the decoder or the service; every
//! answer the service sends is STUN our decoder accepts, with a correct FINGERPRINT.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::attr::{self, Attribute, ErrorCode, UnknownAttributes};
use super::binding::{Reply, handle_datagram};
use super::builder::MessageBuilder;
use super::header::{Class, MAGIC_COOKIE, MessageType, Method, TransactionId};
use super::integrity::{
    verify_fingerprint, verify_message_integrity, verify_message_integrity_sha256,
};
use super::message::Message;

/// Owned material for one generated attribute; [`Gen::attr`] borrows it.
#[derive(Debug, Clone)]
struct Gen {
    kind: u8,
    bytes: Vec<u8>,
    text: String,
    n: u64,
    addr: SocketAddr,
    other_type: u16,
    password_algorithm: Vec<u8>,
    unknown_list: Vec<u8>,
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn gen_attr() -> impl Strategy<Value = Gen> {
    (
        0u8..21,
        proptest::collection::vec(any::<u8>(), 0..800),
        "\\PC{0,100}",
        any::<u64>(),
        socket_addr(),
        any::<u16>().prop_filter("not a type we decode", |t| !attr::is_known(*t)),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::collection::vec(any::<u16>(), 0..20),
    )
        .prop_map(
            |(kind, bytes, text, n, addr, other_type, (alg, params), unknown)| {
                let mut password_algorithm = alg.to_be_bytes().to_vec();
                password_algorithm.extend_from_slice(&(params.len() as u16).to_be_bytes());
                password_algorithm.extend_from_slice(&params);
                let unknown_list = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
                Gen {
                    kind,
                    bytes,
                    text,
                    n,
                    addr,
                    other_type,
                    password_algorithm,
                    unknown_list,
                }
            },
        )
}

impl Gen {
    fn attr(&self) -> Attribute<'_> {
        let b = &self.bytes;
        let upto = |max: usize| &b[..b.len().min(max)];
        let fixed = |len: usize| -> &[u8] {
            if b.len() >= len {
                &b[..len]
            } else {
                &[0x5A; 32][..len]
            }
        };
        match self.kind {
            0 => Attribute::MappedAddress(self.addr),
            1 => Attribute::XorMappedAddress(self.addr),
            2 => Attribute::AlternateServer(self.addr),
            3 => Attribute::Username(upto(attr::MAX_USERNAME_LEN)),
            4 => Attribute::Userhash(fixed(32)),
            5 => Attribute::Realm(upto(attr::MAX_TEXT_LEN)),
            6 => Attribute::Nonce(upto(attr::MAX_TEXT_LEN)),
            7 => Attribute::PasswordAlgorithm(&self.password_algorithm),
            8 => Attribute::PasswordAlgorithms(upto(64)),
            9 => Attribute::AlternateDomain(upto(attr::MAX_TEXT_LEN)),
            10 => Attribute::MessageIntegrity(fixed(20)),
            11 => Attribute::MessageIntegritySha256(fixed(16 + 4 * (self.n % 5) as usize)),
            12 => Attribute::Fingerprint(self.n as u32),
            13 => Attribute::ErrorCode(ErrorCode {
                code: 300 + (self.n % 400) as u16,
                reason: &self.text,
            }),
            14 => Attribute::UnknownAttributes(
                // Round-trip through the decoder's own constructor.
                match Attribute::decode(
                    attr::UNKNOWN_ATTRIBUTES,
                    &self.unknown_list,
                    &TransactionId::default(),
                ) {
                    Ok(Attribute::UnknownAttributes(u)) => u,
                    _ => unreachable_list(),
                },
            ),
            15 => Attribute::Software(&self.text),
            16 => Attribute::Priority(self.n as u32),
            17 => Attribute::UseCandidate,
            18 => Attribute::IceControlled(self.n),
            19 => Attribute::IceControlling(self.n),
            _ => Attribute::Other {
                attr_type: self.other_type,
                value: upto(64),
            },
        }
    }
}

fn unreachable_list() -> UnknownAttributes<'static> {
    panic!("an even-length list always decodes as UNKNOWN-ATTRIBUTES")
}

fn message_type() -> impl Strategy<Value = MessageType> {
    (0u16..0x1000, 0u8..4).prop_map(|(m, c)| {
        let class = match c {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        };
        MessageType::new(Method::new(m).unwrap(), class)
    })
}

/// A header that passes the checks, followed by `body` (length made a multiple of 4).
fn with_header(first: u16, tid: [u8; 12], mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len() / 4 * 4);
    let mut m = Vec::with_capacity(20 + body.len());
    m.extend_from_slice(&(first & 0x3FFF).to_be_bytes());
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(&tid);
    m.extend_from_slice(&body);
    m
}

/// Bodies made of plausible TLVs (types near the interesting ones, lengths that may
/// lie), so that the decoder and the service get past the header often.
fn tlv_body() -> impl Strategy<Value = Vec<u8>> {
    let tlv = (
        prop_oneof![
            Just(attr::FINGERPRINT),
            Just(attr::MESSAGE_INTEGRITY),
            Just(attr::MESSAGE_INTEGRITY_SHA256),
            Just(attr::XOR_MAPPED_ADDRESS),
            Just(attr::MAPPED_ADDRESS),
            Just(attr::ERROR_CODE),
            Just(attr::UNKNOWN_ATTRIBUTES),
            Just(attr::SOFTWARE),
            Just(attr::USERNAME),
            any::<u16>(),
        ],
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<Option<u16>>(),
    )
        .prop_map(|(t, v, lie)| {
            let mut out = t.to_be_bytes().to_vec();
            out.extend_from_slice(&lie.unwrap_or(v.len() as u16).to_be_bytes());
            out.extend_from_slice(&v);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out
        });
    proptest::collection::vec(tlv, 0..8).prop_map(|v| v.concat())
}

/// Exercises every reading entry point on `bytes`; must never panic.
fn read_everything(bytes: &[u8]) {
    let Ok(msg) = Message::parse(bytes) else {
        return;
    };
    let _ = msg.layout();
    for a in msg.attributes().take(20_000).flatten() {
        let _ = a.decode(msg.transaction_id());
    }
    let _ = msg.get(attr::XOR_MAPPED_ADDRESS);
    let _ = verify_fingerprint(&msg);
    let _ = verify_message_integrity(&msg, b"key");
    let _ = verify_message_integrity_sha256(&msg, b"key");
}

/// Runs the service and checks what it sends.
fn serve_and_check(datagram: &[u8], source: SocketAddr, out_len: usize) {
    let mut out = vec![0u8; out_len];
    if let Reply::Send(n) = handle_datagram(datagram, source, &mut out) {
        assert!(n <= out_len);
        let answer = Message::parse(&out[..n]).expect("answers are STUN");
        verify_fingerprint(&answer).expect("answers carry a correct FINGERPRINT");
        let request = Message::parse(datagram).expect("only STUN is answered");
        assert_eq!(
            request.class(),
            Class::Request,
            "only requests are answered"
        );
        assert_eq!(answer.transaction_id(), request.transaction_id());
        assert_eq!(answer.method(), request.method());
        for a in answer.attributes() {
            a.and_then(|a| a.decode(answer.transaction_id()))
                .expect("answer attributes decode");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_encode_is_identity(
        message_type in message_type(),
        tid in any::<[u8; 12]>(),
        gens in proptest::collection::vec(gen_attr(), 0..8),
    ) {
        let attrs: Vec<Attribute<'_>> = gens.iter().map(Gen::attr).collect();
        let mut buf = vec![0u8; 0x1_0000];
        let mut b = MessageBuilder::new(&mut buf, message_type, TransactionId(tid)).unwrap();
        for a in &attrs {
            b.add(a).unwrap();
        }
        let n = b.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        prop_assert_eq!(msg.message_type(), message_type);
        prop_assert_eq!(*msg.transaction_id(), TransactionId(tid));
        let decoded: Vec<Attribute<'_>> = msg
            .attributes()
            .map(|a| a.and_then(|a| a.decode(msg.transaction_id())).unwrap())
            .collect();
        prop_assert_eq!(decoded, attrs);
    }

    #[test]
    fn computed_integrity_and_fingerprint_verify(
        tid in any::<[u8; 12]>(),
        gens in proptest::collection::vec(gen_attr(), 0..4),
        key in proptest::collection::vec(any::<u8>(), 0..80),
        sha256_len in (4usize..=8).prop_map(|q| q * 4),
    ) {
        // Generated MI/FINGERPRINT attributes would change what is verified: skip them.
        let attrs: Vec<Attribute<'_>> = gens
            .iter()
            .map(Gen::attr)
            .filter(|a| !matches!(
                a,
                Attribute::MessageIntegrity(_)
                    | Attribute::MessageIntegritySha256(_)
                    | Attribute::Fingerprint(_)
            ))
            .collect();
        let mut buf = vec![0u8; 0x1_0000];
        let mut b =
            MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, TransactionId(tid))
                .unwrap();
        for a in &attrs {
            b.add(a).unwrap();
        }
        b.add_message_integrity(&key).unwrap();
        b.add_message_integrity_sha256_truncated(&key, sha256_len).unwrap();
        b.add_fingerprint().unwrap();
        let n = b.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        prop_assert!(verify_message_integrity(&msg, &key).is_ok());
        prop_assert!(verify_message_integrity_sha256(&msg, &key).is_ok());
        prop_assert!(verify_fingerprint(&msg).is_ok());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        read_everything(&bytes);
    }

    #[test]
    fn decoding_tlv_shaped_bytes_never_panics(
        first in any::<u16>(),
        tid in any::<[u8; 12]>(),
        body in tlv_body(),
    ) {
        read_everything(&with_header(first, tid, body));
    }

    #[test]
    fn service_never_panics_and_answers_are_valid(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        source in socket_addr(),
        out_len in prop_oneof![Just(548usize), 0usize..600],
    ) {
        serve_and_check(&bytes, source, out_len);
    }

    #[test]
    fn service_on_tlv_shaped_requests(
        method in prop_oneof![Just(0x001u16), any::<u16>()],
        class_bits in prop_oneof![Just(0u16), any::<u16>()],
        tid in any::<[u8; 12]>(),
        body in tlv_body(),
        source in socket_addr(),
        out_len in prop_oneof![Just(548usize), 0usize..600],
    ) {
        let t = MessageType::new(
            Method::new(method & 0x0FFF).unwrap(),
            MessageType::from_u16(class_bits & 0x0110).class,
        );
        serve_and_check(&with_header(t.to_u16(), tid, body), source, out_len);
    }

    #[test]
    fn generated_binding_requests_are_answered_or_refused_with_a_reason(
        tid in any::<[u8; 12]>(),
        gens in proptest::collection::vec(gen_attr(), 0..6),
        fingerprint in any::<bool>(),
        source in socket_addr(),
    ) {
        let attrs: Vec<Attribute<'_>> = gens
            .iter()
            .map(Gen::attr)
            .filter(|a| !matches!(a, Attribute::Fingerprint(_)))
            .collect();
        let mut buf = vec![0u8; 0x1_0000];
        let mut b =
            MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, TransactionId(tid))
                .unwrap();
        for a in &attrs {
            b.add(a).unwrap();
        }
        if fingerprint {
            b.add_fingerprint().unwrap();
        }
        let n = b.finish();
        let mut out = [0u8; 548];
        let reply = handle_datagram(&buf[..n], source, &mut out);
        // Well-formed requests are always answered: success, or 420 when a generated
        // unknown comprehension-required attribute precedes any MESSAGE-INTEGRITY.
        let Reply::Send(len) = reply else {
            return Err(TestCaseError::fail(format!("dropped: {reply:?}")));
        };
        let answer = Message::parse(&out[..len]).unwrap();
        let significant_unknown = attrs
            .iter()
            .take_while(|a| !matches!(
                a,
                Attribute::MessageIntegrity(_) | Attribute::MessageIntegritySha256(_)
            ))
            .any(|a| matches!(a, Attribute::Other { attr_type, .. } if *attr_type < 0x8000));
        let expected = if significant_unknown {
            Class::ErrorResponse
        } else {
            Class::SuccessResponse
        };
        prop_assert_eq!(answer.class(), expected);
        serve_and_check(&buf[..n], source, 548);
    }
}
