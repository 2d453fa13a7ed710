//! Fuzzes what a signaling WebSocket client sends before the rooms see it: the JSON
//! message parser with its validation (`relay::signaling::protocol::parse_client`) and
//! the join-token check (`relay::signaling::token::verify`, whose input is the client's
//! `token` field). The rooms' state machine behind them has its own property test over
//! random message sequences (`signaling/rooms/tests/props.rs`).
//!
//! It must never panic, and:
//! - a message the parser accepts, written back as JSON, parses to the same message;
//! - a token never verifies unless it is exactly one signed with the secret: random
//!   bytes, a signed token with one byte changed, and one signed with another secret are
//!   all refused; a signed one verifies to its own claims, for its own room only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::signaling::protocol::parse_client;
use relay::signaling::token::{Claims, sign, verify};

const SECRET: &[u8] = b"fuzz join secret";
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = parse_client(data) {
        let json = serde_json::to_vec(&msg).expect("a parsed message serializes");
        let again = parse_client(&json).expect("a parsed message, written back, parses");
        assert_eq!(again, msg, "written back, the message changed");
    }

    let text = String::from_utf8_lossy(data);
    assert!(
        verify(&text, &[SECRET], "room", NOW).is_err(),
        "a token nobody signed verified"
    );

    // Claims from the input: room and identity split at the first 0xff byte, then an
    // expiry byte and a p2p flag.
    let (head, tail) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (room, identity) = head.split_at(head.len() / 2);
    let claims = Claims {
        room: String::from_utf8_lossy(room).into_owned(),
        identity: String::from_utf8_lossy(identity).into_owned(),
        exp: NOW - 10 + u64::from(tail.first().copied().unwrap_or(0)),
        p2p: tail.get(1).is_some_and(|b| b & 1 == 1),
    };
    let Ok(token) = sign(&claims, SECRET) else {
        return;
    };
    let verified = verify(&token, &[SECRET], &claims.room, NOW);
    if claims.exp > NOW {
        assert_eq!(verified.expect("a signed token verifies"), claims);
    } else {
        assert!(verified.is_err(), "an expired token verified");
    }
    let other_room = format!("{}x", claims.room);
    assert!(verify(&token, &[SECRET], &other_room, NOW).is_err());
    assert!(verify(&token, &[b"another secret".as_slice()], &claims.room, NOW).is_err());
    // One byte changed, anywhere the input points.
    let mut bytes = token.clone().into_bytes();
    let at = usize::from(tail.get(2).copied().unwrap_or(0)) * 7 % bytes.len();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    if let Ok(changed) = String::from_utf8(bytes)
        && changed != token
    {
        assert!(
            verify(&changed, &[SECRET], &claims.room, NOW).is_err(),
            "a token with byte {at} changed verified"
        );
    }
});
