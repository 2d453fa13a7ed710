//! The Prometheus endpoint: `GET /metrics` over plain HTTP/1.1 on its own small thread,
//! rendering the latest stats snapshot in the text exposition format (0.0.4).
//!
//! Why this shape: scraping must never touch the data path, so the daemon's main loop
//! publishes a [`Stats`] snapshot (the same one the control socket serves) and this thread
//! only formats it. The server is deliberately tiny and defensive — one request per
//! connection, bounded request size, read/write timeouts, only `GET /metrics` — because
//! it is a network listener on a production relay. Labels come from fixed sets
//! (direction, reason, error code, counter name), never from users or addresses, so the
//! number of series is bounded.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::control::Stats;

/// Largest request head accepted.
const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request / read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// The latest snapshot, shared between the daemon (writer) and the server (reader).
pub type Snapshot = Arc<Mutex<Option<Stats>>>;

/// Metrics server failures.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error(
        "cannot listen for metrics on {addr}: {source} (choose another metrics.listen or \
         --metrics-listen, or leave it out to turn metrics off)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The thread could not be started.
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] io::Error),
}

/// The running endpoint; stopped and joined on drop.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `snapshot` until dropped.
    pub fn start(addr: SocketAddr, snapshot: Snapshot) -> Result<MetricsServer, MetricsError> {
        let bind_err = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("relay-metrics".into())
                .spawn(move || serve(&listener, &snapshot, &stop))
                .map_err(MetricsError::Thread)?
        };
        Ok(MetricsServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the port is resolved when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the metrics thread panicked");
        }
    }
}

fn serve(listener: &TcpListener, snapshot: &Snapshot, stop: &AtomicBool) {
    let ms = i32::try_from(POLL.as_millis()).unwrap_or(100);
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r <= 0 {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = serve_connection(stream, snapshot) {
                        tracing::debug!(error = %e, "metrics client went away");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    break;
                }
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::BadRequest;
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

fn serve_connection(mut stream: TcpStream, snapshot: &Snapshot) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let complete = loop {
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
            || buf[..len].windows(2).any(|w| w == b"\n\n")
        {
            break true;
        }
        if len == buf.len() {
            break false;
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    };
    let (status, body, head_only) = if !complete {
        (
            "431 Request Header Fields Too Large",
            "request too large\n".to_owned(),
            false,
        )
    } else {
        match route(&buf[..len]) {
            Route::Metrics { head_only } => {
                let stats = snapshot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                match stats {
                    Some(s) => ("200 OK", render(&s), head_only),
                    None => (
                        "503 Service Unavailable",
                        "no stats yet, retry\n".to_owned(),
                        head_only,
                    ),
                }
            }
            Route::NotFound => (
                "404 Not Found",
                "only /metrics is served\n".to_owned(),
                false,
            ),
            Route::MethodNotAllowed => (
                "405 Method Not Allowed",
                "only GET /metrics\n".to_owned(),
                false,
            ),
            Route::BadRequest => ("400 Bad Request", "bad request\n".to_owned(), false),
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// Writes one metric family: HELP, TYPE and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Escapes a label value (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labelled<'a>(
    key: &str,
    map: impl IntoIterator<Item = (&'a String, &'a u64)>,
) -> Vec<(String, u64)> {
    map.into_iter()
        .map(|(k, v)| (format!("{key}=\"{}\"", label(k)), *v))
        .collect()
}

/// The auth-failure reason of a request that simply had no credentials yet.
const CHALLENGE_REASON: &str = "missing_credentials";

/// The text exposition of `s`.
pub fn render(s: &Stats) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "relay_info",
        "gauge",
        "Relay version and data path backend (always 1).",
        &[(
            format!(
                "version=\"{}\",backend=\"{}\"",
                label(&s.version),
                label(&s.backend)
            ),
            1,
        )],
    );
    family(
        &mut out,
        "relay_workers",
        "gauge",
        "Userspace data path workers.",
        &[(String::new(), s.workers as u64)],
    );
    let u = &s.userspace;
    family(
        &mut out,
        "relay_stun_received_total",
        "counter",
        "Datagrams received by the userspace data path.",
        &[(String::new(), u.received)],
    );
    let mut answered = vec![("path=\"userspace\"".to_owned(), u.stun_answered)];
    if let Some(c) = s.xdp.as_ref().and_then(|x| x.counters.as_ref()) {
        let xdp: u64 = c
            .iter()
            .filter(|(k, _)| k.starts_with("stun_answered"))
            .map(|(_, v)| *v)
            .sum();
        answered.push(("path=\"xdp\"".to_owned(), xdp));
    }
    family(
        &mut out,
        "relay_stun_answered_total",
        "counter",
        "STUN Binding requests answered, by path (kernel fast path or userspace).",
        &answered,
    );
    family(
        &mut out,
        "relay_stun_dropped_total",
        "counter",
        "Datagrams dropped by the userspace data path, by reason.",
        &labelled("reason", &u.dropped_by_reason),
    );
    if !u.af_xdp.is_empty() {
        family(
            &mut out,
            "relay_af_xdp_frames_total",
            "counter",
            "The workers' AF_XDP side (xdp.af_xdp): frames received and sent through AF_XDP \
             sockets, sends that took a kernel socket instead (fallback), received frames \
             dropped (malformed or bad checksum), frames the XDP program steered to the \
             sockets (steered; above received when a receive ring overflowed), and frames \
             the kernel dropped before a worker saw them: receive ring full \
             (kernel_ring_full) or no free frame (kernel_dropped).",
            &labelled("event", &u.af_xdp),
        );
    }
    family(
        &mut out,
        "relay_stun_errors_total",
        "counter",
        "Receive/send errors in the userspace data path.",
        &[(String::new(), u.errors)],
    );
    if let Some(c) = s.xdp.as_ref().and_then(|x| x.counters.as_ref()) {
        family(
            &mut out,
            "relay_xdp_events_total",
            "counter",
            "Kernel fast path counters, by name.",
            &labelled("counter", c),
        );
    }
    if let Some(t) = s
        .xdp
        .as_ref()
        .map(|x| &x.rule_tables)
        .filter(|t| !t.is_empty())
    {
        family(
            &mut out,
            "relay_xdp_rule_tables",
            "gauge",
            "The TURN rule tables, by stat: slots in use and rules per table, resizes by a \
             move or rebuilt in place (slow: raise xdp.turn_rules), the longest resize in \
             microseconds, and the rules in the slower hash maps behind the tables.",
            &labelled("stat", t),
        );
    }
    let Some(t) = &s.turn else {
        return out;
    };
    for (name, help, v) in [
        (
            "relay_turn_allocations",
            "Live TURN allocations.",
            t.allocations,
        ),
        (
            "relay_turn_permissions",
            "Live permissions over all allocations.",
            t.permissions,
        ),
        (
            "relay_turn_channels",
            "Live channel bindings over all allocations.",
            t.channels,
        ),
    ] {
        family(&mut out, name, "gauge", help, &[(String::new(), v)]);
    }
    family(
        &mut out,
        "relay_turn_allocations_created_total",
        "counter",
        "TURN allocations created.",
        &[(String::new(), t.allocations_created)],
    );
    let dirs = |m: &std::collections::BTreeMap<String, u64>| -> Vec<(String, u64)> {
        ["client_to_peer", "peer_to_client"]
            .iter()
            .map(|d| {
                (
                    format!("direction=\"{d}\""),
                    m.get(*d).copied().unwrap_or(0),
                )
            })
            .collect()
    };
    family(
        &mut out,
        "relay_turn_packets_total",
        "counter",
        "Datagrams relayed, by direction.",
        &dirs(&t.packets),
    );
    family(
        &mut out,
        "relay_turn_bytes_total",
        "counter",
        "Payload bytes relayed, by direction.",
        &dirs(&t.bytes),
    );
    family(
        &mut out,
        "relay_turn_kernel_packets_total",
        "counter",
        "Of relay_turn_packets_total: datagrams relayed by the XDP fast path, by direction.",
        &dirs(&t.kernel_packets),
    );
    family(
        &mut out,
        "relay_turn_fast_rules",
        "gauge",
        "Rules installed in the XDP fast path (channels, permissions, allocations).",
        &[(String::new(), t.fast_rules)],
    );
    family(
        &mut out,
        "relay_turn_fast_rules_refused_total",
        "counter",
        "Rules the XDP fast path could not take (a full table: raise xdp.turn_rules); that \
         traffic stays in userspace.",
        &[(String::new(), t.fast_rules_refused)],
    );
    family(
        &mut out,
        "relay_turn_auth_challenges_total",
        "counter",
        "401 challenges to requests without credentials (every client's first request).",
        &[(
            String::new(),
            t.auth_failures.get(CHALLENGE_REASON).copied().unwrap_or(0),
        )],
    );
    // The normal first-request challenge is not a failure: alerting on this family must
    // not fire on healthy traffic.
    family(
        &mut out,
        "relay_turn_auth_failures_total",
        "counter",
        "Failed TURN authentications, by reason.",
        &labelled(
            "reason",
            t.auth_failures
                .iter()
                .filter(|(k, _)| *k != CHALLENGE_REASON),
        ),
    );
    family(
        &mut out,
        "relay_turn_errors_total",
        "counter",
        "TURN error responses sent, by code.",
        &labelled("code", &t.errors),
    );
    family(
        &mut out,
        "relay_turn_dropped_total",
        "counter",
        "TURN datagrams dropped, by reason.",
        &labelled("reason", &t.dropped),
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::control::{TurnStatsJson, UserspaceStats, XdpStats};
    use std::collections::BTreeMap;

    fn stats(turn: bool) -> Stats {
        Stats {
            version: "0.1.0".into(),
            backend: "io_uring".into(),
            workers: 2,
            listen: vec!["127.0.0.1:3478".into()],
            xdp: Some(XdpStats {
                attached: vec![],
                counters: Some(BTreeMap::from([
                    ("stun_answered_v4".into(), 5),
                    ("stun_answered_v6".into(), 2),
                    ("passed".into(), 9),
                ])),
                rule_tables: BTreeMap::from([("channel_table_moves".into(), 3)]),
            }),
            userspace: UserspaceStats {
                received: 10,
                stun_answered: 8,
                dropped: 2,
                errors: 0,
                dropped_by_reason: BTreeMap::from([("not_stun".into(), 2)]),
                af_xdp: BTreeMap::from([("sent".into(), 4)]),
            },
            turn: turn.then(|| TurnStatsJson {
                allocations: 3,
                permissions: 4,
                channels: 1,
                allocations_created: 7,
                packets: BTreeMap::from([
                    ("client_to_peer".into(), 100),
                    ("peer_to_client".into(), 90),
                ]),
                bytes: BTreeMap::from([("client_to_peer".into(), 10_000)]),
                auth_failures: BTreeMap::from([
                    ("stale_nonce".into(), 2),
                    ("bad_integrity".into(), 1),
                    ("missing_credentials".into(), 5),
                ]),
                errors: BTreeMap::from([("401".into(), 6)]),
                dropped: BTreeMap::new(),
                kernel_packets: BTreeMap::from([("client_to_peer".into(), 60)]),
                fast_rules: 3,
                fast_rules_refused: 2,
            }),
            sfu: None,
        }
    }

    /// Every non-comment line is `name{labels} value` or `name value`, every family has
    /// HELP and TYPE before its samples, and names are valid.
    fn assert_well_formed(text: &str) {
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split(' ');
                let name = p.next().unwrap();
                assert!(matches!(p.next(), Some("gauge" | "counter")), "{line}");
                assert!(declared.insert(name.to_owned()), "TYPE twice: {line}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line}"
            );
            assert!(declared.contains(name), "sample before TYPE: {line}");
            if let Some(l) = series.strip_prefix(name)
                && !l.is_empty()
            {
                assert!(l.starts_with('{') && l.ends_with('}'), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn text_format_with_turn() {
        let t = render(&stats(true));
        assert_well_formed(&t);
        for want in [
            "relay_info{version=\"0.1.0\",backend=\"io_uring\"} 1",
            "relay_stun_answered_total{path=\"userspace\"} 8",
            "relay_stun_answered_total{path=\"xdp\"} 7",
            "relay_stun_dropped_total{reason=\"not_stun\"} 2",
            "relay_af_xdp_frames_total{event=\"sent\"} 4",
            "relay_xdp_events_total{counter=\"passed\"} 9",
            "relay_xdp_rule_tables{stat=\"channel_table_moves\"} 3",
            "# TYPE relay_turn_allocations gauge",
            "relay_turn_allocations 3",
            "relay_turn_permissions 4",
            "relay_turn_channels 1",
            "relay_turn_packets_total{direction=\"client_to_peer\"} 100",
            "relay_turn_packets_total{direction=\"peer_to_client\"} 90",
            "relay_turn_bytes_total{direction=\"peer_to_client\"} 0",
            "relay_turn_auth_failures_total{reason=\"stale_nonce\"} 2",
            "relay_turn_auth_challenges_total 5",
            "relay_turn_errors_total{code=\"401\"} 6",
            "# TYPE relay_turn_packets_total counter",
            "relay_turn_fast_rules 3",
            "# TYPE relay_turn_fast_rules_refused_total counter",
            "relay_turn_fast_rules_refused_total 2",
        ] {
            assert!(t.lines().any(|l| l == want), "missing {want:?} in\n{t}");
        }
        assert!(
            !t.contains("reason=\"missing_credentials\""),
            "the normal challenge is not an auth failure:\n{t}"
        );
    }

    #[test]
    fn no_turn_families_without_turn() {
        let t = render(&stats(false));
        assert_well_formed(&t);
        assert!(!t.contains("relay_turn_"), "{t}");
        assert!(t.contains("relay_stun_received_total 10"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
    }

    fn http(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn server_serves_snapshot_and_refuses_the_rest() {
        let snap: Snapshot = Arc::new(Mutex::new(None));
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), snap.clone()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert!(
            http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 503")
        );
        *snap.lock().unwrap() = Some(stats(true));
        let ok = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Connection: close\r\n"));
        let body = ok.split_once("\r\n\r\n").unwrap().1;
        let len: usize = ok
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        assert!(body.contains("relay_turn_allocations 3"));
        assert!(http(addr, b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(http(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let big = [b'a'; MAX_REQUEST + 10];
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        drop(server);
        assert!(TcpStream::connect(addr).is_err(), "listener closed on drop");
    }
}
