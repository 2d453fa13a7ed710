//! Fuzzes the ICE-lite agent on arbitrary datagrams: it must never panic, and every
//! answer must be STUN with the request's transaction id and a correct FINGERPRINT; a
//! success must be signed with our password, and the selected pair must have consent.
//! Each input gets a fresh agent and is cut into several datagrams (at 0xFF 0xFF), fed
//! at increasing times, so state bugs can show within one input.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use relay::ice::{IceLite, Reply, Transport};
use relay::stun::integrity::{verify_fingerprint, verify_message_integrity};
use relay::stun::{Class, Message};

const PWD: &str = "fuzzPasswordFuzzPassword";

fn check_answer(request: &[u8], reply: &Reply, answer: &[u8]) {
    let answer = Message::parse(answer).expect("the agent sent something that is not STUN");
    verify_fingerprint(&answer).expect("the agent sent a wrong FINGERPRINT");
    for a in answer.attributes() {
        a.and_then(|a| a.decode(answer.transaction_id()))
            .expect("the agent sent an attribute it cannot decode");
    }
    let request = Message::parse(request).expect("the agent answered non-STUN");
    assert_eq!(request.class(), Class::Request, "answered a non-request");
    assert_eq!(answer.transaction_id(), request.transaction_id());
    if let Reply::Success { .. } = reply {
        verify_message_integrity(&answer, PWD.as_bytes()).expect("unsigned success");
        verify_message_integrity(&request, PWD.as_bytes()).expect("accepted a bad signature");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut agent = IceLite::new("fuzz", PWD).expect("valid credentials");
    if data.first().is_some_and(|b| b & 1 == 1) {
        agent
            .set_remote("peer", "peerPasswordPeerPassword")
            .expect("valid credentials");
    }
    let local = SocketAddr::from(([203, 0, 113, 5], 3478));
    let sources: [SocketAddr; 3] = [
        SocketAddr::from(([192, 0, 2, 1], 32853)),
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 443)),
        SocketAddr::from(([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001], 5000)),
    ];
    let mut out = [0u8; 548];
    // The whole input, then its pieces split at 0xFF 0xFF, at increasing times.
    let pieces = std::iter::once(data).chain(data.split(|&b| b == 0xFF));
    for (i, piece) in pieces.enumerate().take(16) {
        let source = sources[i % sources.len()];
        let transport = if i % 4 == 3 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let now = (i as u64) * 7_000_000;
        let small = usize::from(piece.first().copied().unwrap_or(0)) % 100;
        let buf = if i % 5 == 4 {
            &mut out[..small]
        } else {
            &mut out[..]
        };
        if let Ok(reply) = agent.handle_stun(piece, source, local, transport, now, buf) {
            check_answer(piece, &reply, &buf[..reply.len()]);
        }
        agent.handle_timeout(now);
        while agent.poll_event().is_some() {}
        if let Some(p) = agent.selected() {
            assert!(agent.may_send(&p, now), "selected pair without consent");
        }
    }
});
