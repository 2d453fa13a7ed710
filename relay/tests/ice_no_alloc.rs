//! Proves that the ICE-lite agent answers connectivity checks on a known pair, and
//! handles consent timeouts, without allocating: browsers send a check every few
//! seconds per pair, on the data path's thread.
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use relay::ice::{IceEvent, IceLite, Reply, Transport};
use relay::stun::{Attribute, MessageBuilder, MessageType, TransactionId};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

const PWD: &str = "sfuPasswordSfuPassword12";

fn browser_check(tid: u8, use_candidate: bool, password: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([tid; 12]),
    )
    .unwrap();
    b.add(&Attribute::Username(b"sfuU:brws")).unwrap();
    b.add(&Attribute::IceControlling(42)).unwrap();
    b.add(&Attribute::Priority(1_845_501_695)).unwrap();
    if use_candidate {
        b.add(&Attribute::UseCandidate).unwrap();
    }
    b.add_message_integrity(password.as_bytes()).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    buf.truncate(n);
    buf
}

#[test]
fn answering_10000_checks_on_a_known_pair_allocates_nothing() {
    let mut agent = IceLite::new("sfuU", PWD).unwrap();
    agent
        .set_remote("brws", "browserPasswordBrowser34")
        .unwrap();
    let local: SocketAddr = "203.0.113.5:3478".parse().unwrap();
    let v4: SocketAddr = "198.51.100.7:54321".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:61000".parse().unwrap();
    let nominating = browser_check(1, true, PWD);
    let plain = browser_check(2, false, PWD);
    let wrong = browser_check(3, false, "notTheRightPasswordAtAll");
    let mut out = [0u8; 548];

    // Establish the pairs (this may allocate: a new pair, an event).
    for source in [v4, v6] {
        agent
            .handle_stun(&nominating, source, local, Transport::Udp, 0, &mut out)
            .unwrap();
    }
    assert!(matches!(agent.poll_event(), Some(IceEvent::Connected(_))));
    while agent.poll_event().is_some() {}

    let sanity = allocations_during(|| drop(std::hint::black_box(Box::new(7u64))));
    assert!(sanity >= 1, "the counting allocator is not in use");

    let mut successes = 0u32;
    let mut refusals = 0u32;
    let allocated = allocations_during(|| {
        for i in 0..10_000u64 {
            let now = i * 1_000;
            let source = if i % 2 == 0 { v4 } else { v6 };
            let req = if i % 3 == 0 { &nominating } else { &plain };
            match agent.handle_stun(req, source, local, Transport::Udp, now, &mut out) {
                Ok(Reply::Success { len, .. }) if len > 0 => successes += 1,
                other => panic!("check refused: {other:?}"),
            }
            if i % 100 == 0 {
                // Refusals answer too (401), without allocating either.
                if let Ok(Reply::Error { code: 401, .. }) =
                    agent.handle_stun(&wrong, source, local, Transport::Udp, now, &mut out)
                {
                    refusals += 1;
                }
                agent.handle_timeout(now);
                std::hint::black_box(agent.poll_timeout(now));
                std::hint::black_box(agent.may_send(&agent.selected().unwrap(), now));
            }
        }
    });
    assert_eq!(allocated, 0, "answering checks on a known pair allocated");
    assert_eq!(successes, 10_000);
    assert_eq!(refusals, 100);
    assert!(agent.selected().is_some());
}
