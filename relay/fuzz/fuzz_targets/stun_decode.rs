//! Fuzzes the STUN read path and the Binding service on arbitrary datagrams: header
//! checks, the TLV walk, value decoding, integrity and fingerprint checks must never
//! panic, and every answer the service sends must be STUN with a correct FINGERPRINT.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use relay::stun::attr;
use relay::stun::binding::{Reply, handle_datagram};
use relay::stun::integrity::{
    verify_fingerprint, verify_message_integrity, verify_message_integrity_sha256,
};
use relay::stun::{Class, Message};

fn check_answer(request: &[u8], answer: &[u8]) {
    let answer = Message::parse(answer).expect("the service sent something that is not STUN");
    verify_fingerprint(&answer).expect("the service sent a wrong FINGERPRINT");
    for a in answer.attributes() {
        a.and_then(|a| a.decode(answer.transaction_id()))
            .expect("the service sent an attribute it cannot decode");
    }
    let request = Message::parse(request).expect("the service answered non-STUN");
    assert_eq!(request.class(), Class::Request, "answered a non-request");
    assert_eq!(answer.transaction_id(), request.transaction_id());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::parse(data) {
        let _ = msg.layout();
        for a in msg.attributes().flatten() {
            let _ = a.decode(msg.transaction_id());
        }
        let _ = msg.get(attr::XOR_MAPPED_ADDRESS);
        let _ = verify_fingerprint(&msg);
        let _ = verify_message_integrity(&msg, b"fuzz key");
        let _ = verify_message_integrity_sha256(&msg, b"fuzz key");
    }

    let sources: [SocketAddr; 3] = [
        SocketAddr::from(([192, 0, 2, 1], 32853)),
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 443)),
        SocketAddr::from(([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001], 5000)),
    ];
    let mut out = [0u8; 548];
    for source in sources {
        if let Reply::Send(n) = handle_datagram(data, source, &mut out) {
            check_answer(data, &out[..n]);
        }
    }
    // A buffer size chosen by the input: too small must drop, never panic.
    let small = usize::from(data.first().copied().unwrap_or(0) % 80);
    if let Reply::Send(n) = handle_datagram(data, sources[0], &mut out[..small]) {
        check_answer(data, &out[..n]);
    }
});
