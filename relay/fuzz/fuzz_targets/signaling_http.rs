//! Fuzzes the signaling port's HTTP side on arbitrary request bytes: head parsing (size
//! cap, request line, headers), query decoding and routing (demo tokens, WebSocket
//! upgrade checks) must never panic, never consume more than the input or the cap, and
//! always produce a complete HTTP response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::signaling::server::http::{MAX_HEAD_LEN, parse_head, query_param};
use relay::signaling::server::routes::{Route, route};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some((head, n))) => {
            assert!(
                n <= data.len() && n <= MAX_HEAD_LEN,
                "consumed {n} of {}",
                data.len()
            );
            if let Some(q) = &head.query {
                let _ = query_param(q, "room");
            }
            for secret in [None, Some(&b"fuzz secret"[..])] {
                let (Route::Respond(bytes) | Route::Upgrade(bytes)) =
                    route(&head, secret, 1_700_000_000);
                assert!(bytes.starts_with(b"HTTP/1.1 "), "not an HTTP response");
                assert!(
                    bytes.windows(4).any(|w| w == b"\r\n\r\n"),
                    "response head not terminated"
                );
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEAD_LEN, "asked for more past the cap"),
        Err(_) => {}
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = query_param(s, "identity");
    }
});
