//! RFC 5769 test vectors: parse each sample, verify its MESSAGE-INTEGRITY and FINGERPRINT,
//! and re-encode it from its fields with our builder, comparing bytes.
//!
//! The samples pad with spaces (0x20) where RFC 8489 suggests zeros (USERNAME in §2.1,
//! SOFTWARE in §2.2/§2.3; §2.4 pads with zeros). Padding is covered by MI and FINGERPRINT,
//! so to reproduce the samples byte for byte we build with the same padding byte
//! ([`MessageBuilder::with_padding_byte`]); receivers ignore padding either way.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use super::attr::{self, Attribute};
use super::builder::MessageBuilder;
use super::error::StunError;
use super::header::{Class, MessageType, Method, TransactionId};
use super::integrity::{verify_fingerprint, verify_message_integrity};
use super::message::Message;

/// The short-term password of §2.1-§2.3.
const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
const TID: TransactionId = TransactionId([
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
]);

/// §2.1 Sample Request (short-term credentials).
const REQUEST: &str = "00010058 2112a442 b7e7a701 bc34d686 fa87dfae
    80220010 5354554e 20746573 7420636c 69656e74
    00240004 6e0001ff
    80290008 932ff9b1 51263b36
    00060009 6576746a 3a683676 59202020
    00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
    80280004 e57a3bcf";

/// §2.2 Sample IPv4 Response.
const RESPONSE_V4: &str = "0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200008 0001a147 e112a643
    00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
    80280004 c07d4c96";

/// §2.3 Sample IPv6 Response.
const RESPONSE_V6: &str = "01010048 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
    00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
    80280004 c8fb0b4c";

/// §2.4 Sample Request with Long-Term Authentication (no FINGERPRINT in this sample).
const LONG_TERM_REQUEST: &str = "00010060 2112a442 78ad3433 c6ad72c0 29da412e
    00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
    0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
    0014000b 6578616d 706c652e 6f726700
    00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";

/// §2.4's long-term key, MD5("<username>:example.org:TheMatrIX") with the username
/// U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9 and the password after SASLprep
/// ("The\u{AD}M\u{AA}tr\u{2168}" → "TheMatrIX"). Computed once with Python's hashlib; key
/// derivation arrives with TURN, and MI verification takes the key as bytes.
const LONG_TERM_KEY: [u8; 16] = [
    0xe8, 0xca, 0x7a, 0xd5, 0x9d, 0x5e, 0xb0, 0x51, 0x8e, 0x31, 0x29, 0x11, 0xd2, 0xda, 0xb2, 0xa9,
];

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks_exact(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn decode_all<'a>(msg: &Message<'a>) -> Vec<Attribute<'a>> {
    msg.attributes()
        .map(|a| a.and_then(|a| a.decode(msg.transaction_id())).unwrap())
        .collect()
}

#[test]
fn sample_request() {
    let raw = hex(REQUEST);
    let msg = Message::parse(&raw).unwrap();
    assert_eq!(msg.message_type(), MessageType::BINDING_REQUEST);
    assert_eq!(*msg.transaction_id(), TID);
    verify_message_integrity(&msg, PASSWORD).unwrap();
    verify_fingerprint(&msg).unwrap();
    assert_eq!(
        verify_message_integrity(&msg, b"wrong"),
        Err(StunError::IntegrityMismatch)
    );
    let attrs = decode_all(&msg);
    assert_eq!(attrs[0], Attribute::Software("STUN test client"));
    assert_eq!(attrs[1], Attribute::Priority(0x6e00_01ff));
    assert_eq!(attrs[2], Attribute::IceControlled(0x932f_f9b1_5126_3b36));
    assert_eq!(attrs[3], Attribute::Username(b"evtj:h6vY"));
    assert!(matches!(attrs[4], Attribute::MessageIntegrity(_)));
    assert!(matches!(attrs[5], Attribute::Fingerprint(0xe57a_3bcf)));

    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, TID)
        .unwrap()
        .with_padding_byte(b' ');
    for a in &attrs[..4] {
        b.add(a).unwrap();
    }
    b.add_message_integrity(PASSWORD).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &raw[..]);
}

fn response(vector: &str, mapped: &str) {
    let raw = hex(vector);
    let msg = Message::parse(&raw).unwrap();
    assert_eq!(msg.message_type(), MessageType::BINDING_SUCCESS);
    verify_message_integrity(&msg, PASSWORD).unwrap();
    verify_fingerprint(&msg).unwrap();
    let mapped: SocketAddr = mapped.parse().unwrap();
    let attrs = decode_all(&msg);
    assert_eq!(attrs[0], Attribute::Software("test vector"));
    assert_eq!(attrs[1], Attribute::XorMappedAddress(mapped));
    assert_eq!(
        msg.get(attr::XOR_MAPPED_ADDRESS).unwrap(),
        Some(Attribute::XorMappedAddress(mapped))
    );

    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, TID)
        .unwrap()
        .with_padding_byte(b' ');
    b.add_software("test vector").unwrap();
    b.add_xor_mapped_address(mapped).unwrap();
    b.add_message_integrity(PASSWORD).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &raw[..]);

    // With zero padding (our default) the bytes differ only in that padding byte and in
    // the MI and FINGERPRINT that cover it; the result still verifies.
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, TID).unwrap();
    b.add_software("test vector").unwrap();
    b.add_xor_mapped_address(mapped).unwrap();
    b.add_message_integrity(PASSWORD).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    assert_eq!(n, raw.len());
    assert_eq!(buf[35], 0);
    assert_eq!(&buf[..35], &raw[..35]);
    assert_eq!(&buf[36..n - 32], &raw[36..n - 32]);
    let ours = Message::parse(&buf[..n]).unwrap();
    verify_message_integrity(&ours, PASSWORD).unwrap();
    verify_fingerprint(&ours).unwrap();
}

#[test]
fn sample_ipv4_response() {
    response(RESPONSE_V4, "192.0.2.1:32853");
}

#[test]
fn sample_ipv6_response() {
    response(RESPONSE_V6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853");
}

#[test]
fn sample_long_term_request() {
    let raw = hex(LONG_TERM_REQUEST);
    let msg = Message::parse(&raw).unwrap();
    assert_eq!(
        msg.message_type(),
        MessageType::new(Method::BINDING, Class::Request)
    );
    verify_message_integrity(&msg, &LONG_TERM_KEY).unwrap();
    assert_eq!(
        verify_message_integrity(&msg, PASSWORD),
        Err(StunError::IntegrityMismatch)
    );
    assert_eq!(verify_fingerprint(&msg), Err(StunError::MissingFingerprint));
    let attrs = decode_all(&msg);
    let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    assert_eq!(attrs[0], Attribute::Username(username.as_bytes()));
    assert_eq!(attrs[1], Attribute::Nonce(b"f//499k954d6OL34oL9FSTvy64sA"));
    assert_eq!(attrs[2], Attribute::Realm(b"example.org"));

    let tid = *msg.transaction_id();
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, tid).unwrap();
    for a in &attrs[..3] {
        b.add(a).unwrap();
    }
    b.add_message_integrity(&LONG_TERM_KEY).unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &raw[..]);
}

#[test]
fn binding_service_answers_the_sample_request() {
    // §2.1 carries USERNAME, PRIORITY, ICE-CONTROLLED and MESSAGE-INTEGRITY: all known,
    // so the unauthenticated Binding service answers it like any Binding request.
    let raw = hex(REQUEST);
    let source: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let mut out = [0u8; 548];
    let reply = super::binding::handle_datagram(&raw, source, &mut out);
    assert_eq!(
        reply,
        super::binding::Reply::Send(super::binding::SUCCESS_LEN_V4)
    );
    let answer = Message::parse(&out[..super::binding::SUCCESS_LEN_V4]).unwrap();
    assert_eq!(*answer.transaction_id(), TID);
    assert_eq!(decode_all(&answer)[0], Attribute::XorMappedAddress(source));
    // The XOR-MAPPED-ADDRESS bytes are those of §2.2.
    assert_eq!(&out[20..32], &hex(RESPONSE_V4)[36..48]);
}
