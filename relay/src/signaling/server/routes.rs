//! What each path of the signaling port serves, sans-IO: a request head in, the
//! response bytes (or a WebSocket upgrade) out.
//!
//! Kept apart from the sockets so every route, the demo-token endpoint and the upgrade
//! checks are unit-tested without a network.

use super::http::{self, HttpError, RequestHead};
use crate::signaling::protocol::valid_room;
use crate::signaling::token::{Claims, sign};

/// The demo page (another module owns its content; served as is).
pub const DEMO_HTML: &str = include_str!("../../../assets/demo.html");
/// The demo page's script.
pub const DEMO_JS: &str = include_str!("../../../assets/demo.js");
/// The demo page's style sheet.
pub const DEMO_CSS: &str = include_str!("../../../assets/demo.css");
/// How long a demo token is valid.
pub const DEMO_TOKEN_TTL_SECS: u64 = 3600;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Send these bytes and close.
    Respond(Vec<u8>),
    /// Send this `101` response and speak WebSocket (signaling) from then on.
    Upgrade(Vec<u8>),
}

/// The response to a head that could not be parsed.
pub fn head_error(e: &HttpError) -> Vec<u8> {
    match e {
        HttpError::TooLarge => {
            http::text_response(431, "Request Header Fields Too Large", &e.to_string())
        }
        HttpError::Malformed(_) => http::text_response(400, "Bad Request", &e.to_string()),
    }
}

/// The `Host` header if it is a plain `host[:port]` (safe to echo into the CSP).
fn clean_host(head: &RequestHead) -> Option<&str> {
    head.header("host").filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    })
}

/// Content-Security-Policy for the demo page: scripts only from this origin (no inline
/// script, no eval), network only to this origin and its WebSocket, nothing framed,
/// no forms. Inline styles are allowed (the page has no stylesheet route).
pub fn content_security_policy(head: &RequestHead) -> String {
    let connect = match clean_host(head) {
        Some(host) => format!("'self' ws://{host} wss://{host}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; connect-src {connect}; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn not_found() -> Vec<u8> {
    http::text_response(404, "Not Found", "not found")
}

/// Routes one request. `demo_secret`: the demo-token signing secret when `/token` is
/// enabled; `now_unix`: the clock for token expiry.
pub fn route(head: &RequestHead, demo_secret: Option<&[u8]>, now_unix: u64) -> Route {
    let known = matches!(
        head.path.as_str(),
        "/" | "/demo.js" | "/demo.css" | "/token" | "/ws"
    );
    if !known || (head.path == "/token" && demo_secret.is_none()) {
        return Route::Respond(not_found());
    }
    if head.method != "GET" {
        return Route::Respond(http::response(
            405,
            "Method Not Allowed",
            "text/plain; charset=utf-8",
            &[("Allow", "GET")],
            b"only GET\n",
        ));
    }
    match head.path.as_str() {
        "/" => {
            let csp = content_security_policy(head);
            Route::Respond(http::response(
                200,
                "OK",
                "text/html; charset=utf-8",
                &[
                    ("Content-Security-Policy", &csp),
                    ("X-Frame-Options", "DENY"),
                ],
                DEMO_HTML.as_bytes(),
            ))
        }
        "/demo.js" => Route::Respond(http::response(
            200,
            "OK",
            "application/javascript; charset=utf-8",
            &[],
            DEMO_JS.as_bytes(),
        )),
        "/demo.css" => Route::Respond(http::response(
            200,
            "OK",
            "text/css; charset=utf-8",
            &[],
            DEMO_CSS.as_bytes(),
        )),
        "/token" => match demo_secret {
            Some(secret) => Route::Respond(demo_token(head, secret, now_unix)),
            None => Route::Respond(not_found()),
        },
        _ => upgrade(head),
    }
}

fn demo_token(head: &RequestHead, secret: &[u8], now_unix: u64) -> Vec<u8> {
    let bad = |msg: &str| http::text_response(400, "Bad Request", msg);
    let query = head.query.as_deref().unwrap_or("");
    let (room, identity, p2p) = match (
        http::query_param(query, "room"),
        http::query_param(query, "identity"),
        http::query_param(query, "p2p"),
    ) {
        (Ok(Some(r)), Ok(Some(i)), Ok(p)) => (r, i, matches!(p.as_deref(), Some("1" | "true"))),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(&e.to_string()),
        _ => return bad("usage: /token?room=ROOM&identity=NAME[&p2p=1]"),
    };
    if !valid_room(&room) {
        return bad("room names are 1-128 of A-Z a-z 0-9 - _ .");
    }
    let claims = Claims {
        room,
        identity,
        exp: now_unix.saturating_add(DEMO_TOKEN_TTL_SECS),
        p2p,
    };
    match sign(&claims, secret) {
        Ok(token) => http::response(
            200,
            "OK",
            "application/json",
            &[],
            serde_json::json!({ "token": token }).to_string().as_bytes(),
        ),
        Err(e) => bad(&e.to_string()),
    }
}

/// Checks a WebSocket upgrade request (RFC 6455 section 4.2.1) and builds the `101`.
fn upgrade(head: &RequestHead) -> Route {
    if !head.header_has_token("upgrade", "websocket")
        || !head.header_has_token("connection", "upgrade")
    {
        return Route::Respond(http::text_response(
            400,
            "Bad Request",
            "/ws is the signaling WebSocket: connect with a WebSocket client",
        ));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Route::Respond(http::response(
            426,
            "Upgrade Required",
            "text/plain; charset=utf-8",
            &[("Sec-WebSocket-Version", "13")],
            b"WebSocket version 13 required\n",
        ));
    }
    let key = head.header("sec-websocket-key").unwrap_or("");
    let key_ok = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
    };
    if !key_ok {
        return Route::Respond(http::text_response(
            400,
            "Bad Request",
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Route::Upgrade(http::switching_protocols(&accept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::token::verify;

    fn get(target: &str, extra: &str) -> RequestHead {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n{extra}\r\n");
        http::parse_head(raw.as_bytes())
            .expect("valid")
            .expect("complete")
            .0
    }

    fn text(r: &Route) -> String {
        match r {
            Route::Respond(b) | Route::Upgrade(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }

    #[test]
    fn serves_the_page_with_a_strict_policy() {
        let r = route(&get("/", ""), None, 0);
        let t = text(&r);
        assert!(t.starts_with("HTTP/1.1 200 OK"));
        assert!(t.contains("Content-Type: text/html; charset=utf-8"));
        assert!(t.contains("script-src 'self';"));
        assert!(t.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"));
        assert!(t.contains("default-src 'none'"));
        assert!(t.ends_with(DEMO_HTML));
        let js = text(&route(&get("/demo.js", ""), None, 0));
        assert!(js.contains("Content-Type: application/javascript"));
        assert!(js.ends_with(DEMO_JS));
    }

    #[test]
    fn a_hostile_host_header_is_not_echoed() {
        let head = get("/", "").headers.into_iter().collect::<Vec<_>>();
        let mut h = RequestHead {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: head,
        };
        h.headers[0].1 = "evil.example; script-src *".into();
        assert!(
            content_security_policy(&h)
                .starts_with("default-src 'none'; script-src 'self'; connect-src 'self';")
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert!(text(&route(&get("/etc/passwd", ""), None, 0)).starts_with("HTTP/1.1 404"));
        assert!(
            text(&route(&get("/token?room=a&identity=b", ""), None, 0)).starts_with("HTTP/1.1 404")
        );
        let mut post = get("/", "");
        post.method = "POST".into();
        assert!(text(&route(&post, None, 0)).starts_with("HTTP/1.1 405"));
        assert!(head_error(&HttpError::TooLarge).starts_with(b"HTTP/1.1 431"));
        assert!(head_error(&HttpError::Malformed("x")).starts_with(b"HTTP/1.1 400"));
    }

    #[test]
    fn demo_tokens_verify_and_expire_in_an_hour() {
        let secret = b"demo secret";
        let now = 1_700_000_000;
        let r = text(&route(
            &get("/token?room=standup&identity=alice&p2p=1", ""),
            Some(secret),
            now,
        ));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let body = r.split("\r\n\r\n").nth(1).expect("body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        let token = v["token"].as_str().expect("token");
        let claims = verify(token, &[secret], "standup", now + 3599).expect("valid for an hour");
        assert_eq!(claims.identity, "alice");
        assert!(claims.p2p);
        assert!(
            verify(token, &[secret], "standup", now + 3600).is_err(),
            "expired after an hour"
        );
        assert!(verify(token, &[b"other"], "standup", now).is_err());

        for bad in [
            "/token",
            "/token?room=standup",
            "/token?room=bad%20room&identity=a",
            "/token?room=a&identity=x:y",
            "/token?room=%zz&identity=a",
        ] {
            let r = text(&route(&get(bad, ""), Some(secret), now));
            assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
        }
    }

    #[test]
    fn websocket_upgrade_checks() {
        let good = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        match route(&get("/ws", good), None, 0) {
            // The example of RFC 6455 section 1.3.
            Route::Upgrade(b) => assert!(
                String::from_utf8_lossy(&b)
                    .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")
            ),
            other => panic!("{other:?}"),
        }
        assert!(text(&route(&get("/ws", ""), None, 0)).starts_with("HTTP/1.1 400"));
        let v12 = good.replace("Version: 13", "Version: 12");
        assert!(text(&route(&get("/ws", &v12), None, 0)).starts_with("HTTP/1.1 426"));
        let short_key = good.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
        assert!(text(&route(&get("/ws", &short_key), None, 0)).starts_with("HTTP/1.1 400"));
    }
}
