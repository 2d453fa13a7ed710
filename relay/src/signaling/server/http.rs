//! HTTP/1.1 request heads and responses, sans-IO.
//!
//! The signaling port speaks just enough HTTP to serve the demo page, hand out demo
//! tokens and upgrade `/ws` to a WebSocket. Parsing is separate from the sockets so the
//! limits (8 KiB head, header count, strict request line) are unit-tested and fuzzed
//! without a network. One request per TCP connection: every response closes it.

use std::fmt::Write as _;

/// Largest request head accepted (request line + headers + the blank line).
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;

/// Why a request head is refused (answered with 400, or 431 for [`HttpError::TooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head did not end within [`MAX_HEAD_LEN`] bytes.
    #[error("request head larger than {MAX_HEAD_LEN} bytes")]
    TooLarge,
    /// Not an HTTP/1.x request head.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What follows `?` in the target, if anything.
    pub query: Option<String>,
    /// Header names (as sent) and values (trimmed).
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header lists `token` (case-insensitive), as
    /// `Connection: keep-alive, Upgrade` does.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete, read more.
/// `Ok(Some((head, n)))`: the head took `n` bytes (anything after is the body or, after
/// a WebSocket upgrade, the first frames).
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD_LEN)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD_LEN {
            Err(HttpError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&window[..end])
        .map_err(|_| HttpError::Malformed("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return Err(HttpError::Malformed("bad method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Malformed("only HTTP/1.0 and HTTP/1.1"));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::Malformed("bad request target"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::Malformed("too many headers"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("header line without ':'"));
        };
        // Also refuses obsolete line folding (a line starting with whitespace).
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(HttpError::Malformed("bad header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::Malformed("control character in a header value"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Some((
        RequestHead {
            method: method.to_owned(),
            path,
            query,
            headers,
        },
        end + 4,
    )))
}

/// The value of query parameter `name` (`a=1&b=x%20y`), percent- and `+`-decoded.
/// `Ok(None)`: absent. Errors on bad percent escapes or non-UTF-8 results.
pub fn query_param(query: &str, name: &str) -> Result<Option<String>, HttpError> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k)? == name {
            return percent_decode(v).map(Some);
        }
    }
    Ok(None)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Result<String, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(HttpError::Malformed("bad percent escape in the query"));
                };
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::Malformed("query is not UTF-8"))
}

/// A complete response that closes the connection, with the headers every response of
/// this server carries (no caching, no sniffing, no referrer).
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A plain-text error response.
pub fn text_response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(
        status,
        reason,
        "text/plain; charset=utf-8",
        &[],
        format!("{body}\n").as_bytes(),
    )
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade.
pub fn switching_protocols(accept_key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_websocket_upgrade_head() {
        let raw = b"GET /ws?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n\
                    Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Version: 13\r\n\r\n\x81\x00";
        let (head, n) = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(
            n,
            raw.len() - 2,
            "the frame bytes after the head are not consumed"
        );
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query.as_deref(), Some("x=1"));
        assert_eq!(head.header("host"), Some("127.0.0.1:8080"));
        assert!(head.header_has_token("connection", "upgrade"));
        assert!(!head.header_has_token("connection", "close"));
        assert_eq!(head.header("sec-websocket-version"), Some("13"));
    }

    #[test]
    fn incomplete_head_asks_for_more_until_the_cap() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(parse_head(b""), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD_LEN - 1, b'a');
        assert_eq!(parse_head(&big), Ok(None));
        big.push(b'a');
        assert_eq!(parse_head(&big), Err(HttpError::TooLarge));
        // A head that ends just past the cap is refused too, even once complete.
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&big), Err(HttpError::TooLarge));
    }

    #[test]
    fn refuses_malformed_heads() {
        for raw in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 x\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(raw), Err(HttpError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_head(&many),
            Err(HttpError::Malformed("too many headers"))
        );
    }

    #[test]
    fn query_params_are_decoded() {
        let q = "room=stand%2Dup&identity=al+ice&p2p=1&empty=&flag";
        assert_eq!(query_param(q, "room"), Ok(Some("stand-up".to_owned())));
        assert_eq!(query_param(q, "identity"), Ok(Some("al ice".to_owned())));
        assert_eq!(query_param(q, "p2p"), Ok(Some("1".to_owned())));
        assert_eq!(query_param(q, "empty"), Ok(Some(String::new())));
        assert_eq!(query_param(q, "flag"), Ok(Some(String::new())));
        assert_eq!(query_param(q, "missing"), Ok(None));
        assert!(query_param("room=%4", "room").is_err());
        assert!(query_param("room=%zz", "room").is_err());
        assert!(query_param("room=%ff", "room").is_err(), "not UTF-8");
    }

    #[test]
    fn responses_carry_length_and_no_store() {
        let r = response(
            200,
            "OK",
            "text/html; charset=utf-8",
            &[("X-A", "b")],
            b"hello",
        );
        let text = String::from_utf8(r).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("Cache-Control: no-store\r\n"));
        assert!(text.contains("X-A: b\r\n"));
        assert!(text.ends_with("\r\n\r\nhello"));
        let (head, _) = parse_head(b"GET / HTTP/1.1\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(head.headers.is_empty());
    }
}
