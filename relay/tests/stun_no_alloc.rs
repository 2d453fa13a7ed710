//! Proves that the Binding service and the codec's read path never allocate.
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own. The counter is per thread so the test harness's own threads do not
//! disturb it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use relay::stun::binding::{DropReason, Reply, handle_datagram};
use relay::stun::integrity::{
    verify_fingerprint, verify_message_integrity, verify_message_integrity_sha256,
};
use relay::stun::{Attribute, Message, MessageBuilder, MessageType, TransactionId};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

/// Requests covering every branch of the service: success (v4/v6, with SOFTWARE,
/// FINGERPRINT, credentials), 420, 400 (malformed, other method), and drops.
fn requests() -> Vec<Vec<u8>> {
    let tid = TransactionId([3; 12]);
    let build = |t: MessageType, attrs: &[Attribute<'_>], fp: bool| {
        let mut buf = vec![0u8; 1024];
        let mut b = MessageBuilder::new(&mut buf, t, tid).unwrap();
        for a in attrs {
            b.add(a).unwrap();
        }
        if fp {
            b.add_fingerprint().unwrap();
        }
        let n = b.finish();
        buf.truncate(n);
        buf
    };
    let mut with_mi = vec![0u8; 1024];
    let mut b = MessageBuilder::new(&mut with_mi, MessageType::BINDING_REQUEST, tid).unwrap();
    b.add(&Attribute::Username(b"a:b")).unwrap();
    b.add_message_integrity(b"key").unwrap();
    b.add_message_integrity_sha256(b"key").unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    with_mi.truncate(n);

    let unknown = Attribute::Other {
        attr_type: 0x7001,
        value: &[1, 2, 3],
    };
    let mut truncated = build(
        MessageType::BINDING_REQUEST,
        &[Attribute::Software("abcd")],
        false,
    );
    truncated[23] = 200;
    let mut bad_fp = build(MessageType::BINDING_REQUEST, &[], true);
    let last = bad_fp.len() - 1;
    bad_fp[last] ^= 1;
    vec![
        build(MessageType::BINDING_REQUEST, &[], false),
        build(MessageType::BINDING_REQUEST, &[], true),
        build(
            MessageType::BINDING_REQUEST,
            &[Attribute::Software("client 1.0")],
            true,
        ),
        with_mi,
        build(MessageType::BINDING_REQUEST, &[unknown, unknown], true),
        truncated,
        build(
            MessageType::new(
                relay::stun::Method::new(0x003).unwrap(),
                relay::stun::Class::Request,
            ),
            &[],
            true,
        ),
        build(MessageType::BINDING_SUCCESS, &[], true),
        bad_fp,
        vec![0x80; 172],
    ]
}

#[test]
fn binding_service_and_decoder_do_not_allocate() {
    let requests = requests();
    let sources: [SocketAddr; 3] = [
        "192.0.2.1:32853".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
        "[::ffff:10.0.0.1]:5000".parse().unwrap(),
    ];
    let mut out = [0u8; 548];
    let mut tiny = [0u8; 30];
    let mut replies = Vec::with_capacity(requests.len() * sources.len() * 2);

    // Sanity: the counter does count on this thread (otherwise the test proves nothing).
    let sanity = allocations_during(|| drop(std::hint::black_box(Box::new(7u64))));
    assert!(sanity >= 1, "the counting allocator is not in use");

    let allocated = allocations_during(|| {
        for req in &requests {
            for source in sources {
                let r = handle_datagram(req, source, &mut out);
                let small = handle_datagram(req, source, &mut tiny);
                // Pushing into pre-reserved capacity does not allocate.
                replies.push(r);
                replies.push(small);
                if let Ok(msg) = Message::parse(req) {
                    let _ = std::hint::black_box(msg.layout());
                    for a in msg.attributes().flatten() {
                        let _ = std::hint::black_box(a.decode(msg.transaction_id()));
                    }
                    let _ = std::hint::black_box(verify_fingerprint(&msg));
                    let _ = std::hint::black_box(verify_message_integrity(&msg, b"key"));
                    let _ = std::hint::black_box(verify_message_integrity_sha256(&msg, b"key"));
                }
            }
        }
    });
    assert_eq!(allocated, 0, "the STUN read/answer path allocated");

    // The run covered the branches it claims to cover.
    assert!(replies.iter().any(|r| matches!(r, Reply::Send(40))));
    assert!(replies.iter().any(|r| matches!(r, Reply::Send(52))));
    assert!(replies.contains(&Reply::Drop(DropReason::NotStun)));
    assert!(replies.contains(&Reply::Drop(DropReason::BadFingerprint)));
    assert!(replies.contains(&Reply::Drop(DropReason::NotARequest)));
    assert!(replies.contains(&Reply::Drop(DropReason::BufferTooSmall)));
    let error_answers = replies
        .iter()
        .filter(|r| matches!(r, Reply::Send(n) if *n != 40 && *n != 52))
        .count();
    assert!(error_answers >= 3, "400/420 answers were exercised");
}
