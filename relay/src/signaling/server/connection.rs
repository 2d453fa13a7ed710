//! One TCP connection of the signaling port, on its own thread: read the request head
//! (size-capped, with a deadline against slow clients), answer it, or run the signaling
//! WebSocket until either side closes.
//!
//! The WebSocket loop alternates between reading (with a short socket timeout) and
//! writing what the rooms queued for this connection, so one thread per connection
//! needs no async runtime and never waits on another connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tungstenite::Message;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};

use super::http::{self, HttpError, MAX_HEAD_LEN, RequestHead};
use super::limits::{RateLimiter, Verdict};
use super::routes::{self, Route};
use super::{ConnHandle, OUTBOUND_QUEUE_LEN, Outbound, Shared, unix_now};
use crate::signaling::protocol::{
    ErrorCode, MAX_MESSAGE_LEN, MAX_SDP_MESSAGE_LEN, ProtocolError, parse_client,
};
use crate::signaling::rooms::ConnId;

/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket read timeout of a WebSocket: how long a read waits before the thread looks
/// at its outbound queue again (the latency of messages pushed by other connections).
pub const READ_TICK: Duration = Duration::from_millis(20);
/// A blocked socket write gives up after this (the data stays buffered; a client that
/// never reads ends up over the write buffer cap and is closed).
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// Largest WebSocket message or frame read at all. Messages between
/// [`MAX_MESSAGE_LEN`] and this are answered with `too_large` and the connection stays
/// usable; larger ones get `too_large` and a close with 1009.
pub const WS_READ_CAP: usize = MAX_SDP_MESSAGE_LEN + 16 * 1024;
/// Bytes the WebSocket may hold unsent before the client counts as too slow.
const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// The server pings this often (or a third of the idle timeout, if shorter).
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long a close waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Refuses a connection over the limit: best-effort `503` without blocking the accept
/// thread.
pub(super) fn reject(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let body = http::text_response(
        503,
        "Service Unavailable",
        "too many connections; try again later",
    );
    let _ = (&stream).write(&body);
    let _ = stream.shutdown(Shutdown::Both);
}

/// Decrements the open-connection count however the thread ends.
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The body of a connection thread.
pub(super) fn run(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _open = OpenGuard(shared);
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| serve(shared, stream, peer))) {
        shared.counters.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%peer, panic = %panic_message(p.as_ref()), "signaling connection thread panicked; that connection is dropped, the server goes on");
    }
}

/// Why reading a request head ended without a head.
enum HeadEnd {
    Closed,
    Timeout,
    Stop,
    Http(HttpError),
    Io(std::io::Error),
}

fn is_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    matches!(kind, WouldBlock | TimedOut | Interrupted)
}

fn read_head(shared: &Shared, stream: &mut TcpStream) -> Result<(RequestHead, Vec<u8>), HeadEnd> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some((head, n)) = http::parse_head(&buf).map_err(HeadEnd::Http)? {
            return Ok((head, buf.split_off(n)));
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Err(HeadEnd::Stop);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HeadEnd::Timeout);
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        stream.set_read_timeout(Some(wait)).map_err(HeadEnd::Io)?;
        // Never read past the cap: parse_head reports TooLarge once it is reached.
        let want = MAX_HEAD_LEN.saturating_sub(buf.len()).clamp(1, chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(HeadEnd::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_transient(e.kind()) => {}
            Err(e) => return Err(HeadEnd::Io(e)),
        }
    }
}

/// Writes a whole response, then closes, reading (and discarding) briefly what the
/// client still sends so the close does not turn into a reset that eats the response.
fn respond(mut stream: TcpStream, bytes: &[u8]) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(bytes).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while Instant::now() < deadline && total < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

fn serve(shared: &Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (head, leftover) = match read_head(shared, &mut stream) {
        Ok(h) => h,
        Err(HeadEnd::Http(e)) => {
            tracing::debug!(%peer, error = %e, "bad HTTP request");
            respond(stream, &routes::head_error(&e));
            return;
        }
        Err(HeadEnd::Timeout) => {
            tracing::info!(%peer, "client did not send its request head within {HEAD_TIMEOUT:?}; closing");
            respond(
                stream,
                &http::text_response(408, "Request Timeout", "request head too slow"),
            );
            return;
        }
        Err(HeadEnd::Closed | HeadEnd::Stop) => return,
        Err(HeadEnd::Io(e)) => {
            tracing::debug!(%peer, error = %e, "reading a request head failed");
            return;
        }
    };
    match routes::route(&head, shared.cfg.demo_tokens.as_deref(), unix_now()) {
        Route::Respond(bytes) => {
            tracing::debug!(%peer, method = %head.method, path = %head.path, "HTTP request");
            respond(stream, &bytes);
        }
        Route::Upgrade(bytes) => {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            if let Err(e) = stream.write_all(&bytes) {
                tracing::debug!(%peer, error = %e, "writing the WebSocket handshake failed");
                return;
            }
            websocket(shared, stream, peer, leftover);
        }
    }
}

/// Why a signaling WebSocket ended (logged).
#[derive(Debug)]
enum Ended {
    PeerClosed,
    ServerClosed,
    Shutdown,
    Idle,
    SlowReader,
    Flood,
    TooLarge,
    Io(String),
    Panicked,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PeerClosed => f.write_str("client closed"),
            Self::ServerClosed => f.write_str("closed by the server (leave or refused join)"),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::Idle => f.write_str("idle: no message or pong within the idle timeout"),
            Self::SlowReader => f.write_str("client reads too slowly (outbound queue full)"),
            Self::Flood => f.write_str("message flood (10x the rate limit for 2 s)"),
            Self::TooLarge => f.write_str("message over the read cap"),
            Self::Io(e) => write!(f, "connection error: {e}"),
            Self::Panicked => f.write_str("connection handler panicked"),
        }
    }
}

fn websocket(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, leftover: Vec<u8>) {
    if let Err(e) = stream
        .set_read_timeout(Some(READ_TICK))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
    {
        tracing::debug!(%peer, error = %e, "cannot set socket timeouts");
        return;
    }
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(WS_READ_CAP);
    config.max_frame_size = Some(WS_READ_CAP);
    config.read_buffer_size = 16 * 1024;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = MAX_WRITE_BUFFER;
    let mut ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(config));

    let conn: ConnId = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::bounded(OUTBOUND_QUEUE_LEN);
    let kill = Arc::new(AtomicBool::new(false));
    let local_tx = tx.clone();
    shared.with_core(|core| {
        core.conns.insert(
            conn,
            ConnHandle {
                tx,
                kill: Arc::clone(&kill),
            },
        );
        core.rooms.connect(conn);
    });
    shared.counters.websockets.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%peer, conn, "signaling connection open");

    let mut session = Session {
        shared,
        conn,
        local_tx,
        rx,
        kill,
    };
    let ended = catch_unwind(AssertUnwindSafe(|| session.run(&mut ws))).unwrap_or_else(|p| {
        shared.counters.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%peer, conn, panic = %panic_message(p.as_ref()), "signaling connection panicked; closing it, the server goes on");
        Ended::Panicked
    });
    let cleanup = catch_unwind(AssertUnwindSafe(|| {
        shared.with_core(|core| {
            core.conns.remove(&conn);
            core.rooms.disconnect(conn);
        });
    }));
    if cleanup.is_err() {
        shared.counters.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%peer, conn, "rooms panicked while removing a closed connection");
    }
    tracing::info!(%peer, conn, reason = %ended, "signaling connection closed");
}

fn transient(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if is_transient(io.kind()))
}

/// The signaling side of one WebSocket.
struct Session<'a> {
    shared: &'a Arc<Shared>,
    conn: ConnId,
    /// This connection's own queue, for errors that do not go through the rooms.
    local_tx: Sender<Outbound>,
    rx: Receiver<Outbound>,
    kill: Arc<AtomicBool>,
}

impl Session<'_> {
    fn run(&mut self, ws: &mut WebSocket<TcpStream>) -> Ended {
        let cfg = &self.shared.cfg;
        let mut limiter = RateLimiter::new(cfg.messages_per_sec, Instant::now());
        let ping_every = PING_INTERVAL.min((cfg.idle_timeout / 3).max(Duration::from_millis(100)));
        let mut last_heard = Instant::now();
        let mut last_ping = Instant::now();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                close(ws, CloseCode::Away, "server shutting down");
                return Ended::Shutdown;
            }
            if let Some(ended) = self.write_queued(ws) {
                return ended;
            }
            let now = Instant::now();
            if now.duration_since(last_heard) >= cfg.idle_timeout {
                close(ws, CloseCode::Away, "idle");
                return Ended::Idle;
            }
            if now.duration_since(last_ping) >= ping_every {
                last_ping = now;
                match ws.write(Message::Ping(Default::default())) {
                    Ok(()) => {}
                    Err(e) if transient(&e) => {}
                    Err(e) => return Ended::Io(e.to_string()),
                }
            }
            match ws.read() {
                Ok(Message::Text(text)) => {
                    last_heard = Instant::now();
                    if let Some(ended) = self.on_data(ws, &mut limiter, Some(text.as_bytes())) {
                        return ended;
                    }
                }
                Ok(Message::Binary(_)) => {
                    last_heard = Instant::now();
                    if let Some(ended) = self.on_data(ws, &mut limiter, None) {
                        return ended;
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    last_heard = Instant::now();
                }
                Ok(Message::Close(_)) => {
                    // tungstenite queued the close reply; send it.
                    let _ = ws.flush();
                    return Ended::PeerClosed;
                }
                Err(e) if transient(&e) => {}
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Ended::PeerClosed;
                }
                Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                    self.count_error(ErrorCode::TooLarge);
                    let err = ProtocolError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "message is {size} bytes; the limit is {MAX_MESSAGE_LEN} \
                             ({MAX_SDP_MESSAGE_LEN} for offer and answer)"
                        ),
                    );
                    let _ = ws.write(Message::text(err.to_message().to_json()));
                    tracing::info!(
                        conn = self.conn,
                        size,
                        max_size,
                        "message over the WebSocket read cap; closing with 1009"
                    );
                    close_unreadable(ws, CloseCode::Size, "message too large");
                    return Ended::TooLarge;
                }
                Err(e) => return Ended::Io(e.to_string()),
            }
        }
    }

    /// Writes everything queued for this connection and flushes.
    fn write_queued(&mut self, ws: &mut WebSocket<TcpStream>) -> Option<Ended> {
        if self.kill.load(Ordering::Relaxed) {
            close(ws, CloseCode::Policy, "too slow: messages were not read");
            return Some(Ended::SlowReader);
        }
        loop {
            match self.rx.try_recv() {
                Ok(Outbound::Text(text)) => {
                    // Counted before the write so a client never sees more than this.
                    self.count_out();
                    match ws.write(Message::text(text)) {
                        Ok(()) => {}
                        // The socket is full (tungstenite keeps the frame): leave the
                        // rest queued; if the client never catches up the queue
                        // overflows and the connection is closed.
                        Err(e) if transient(&e) => break,
                        Err(WsError::WriteBufferFull(_)) => {
                            self.shared
                                .counters
                                .slow_closed
                                .fetch_add(1, Ordering::Relaxed);
                            close(ws, CloseCode::Policy, "too slow: messages were not read");
                            return Some(Ended::SlowReader);
                        }
                        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                            return Some(Ended::PeerClosed);
                        }
                        Err(e) => return Some(Ended::Io(e.to_string())),
                    }
                }
                Ok(Outbound::Close) => {
                    close(ws, CloseCode::Normal, "");
                    return Some(Ended::ServerClosed);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        match ws.flush() {
            Ok(()) => None,
            Err(e) if transient(&e) => None,
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Some(Ended::PeerClosed),
            Err(e) => Some(Ended::Io(e.to_string())),
        }
    }

    fn count_out(&self) {
        self.shared
            .counters
            .messages_out
            .fetch_add(1, Ordering::Relaxed);
    }

    fn count_error(&self, code: ErrorCode) {
        self.shared.counters.errors[super::code_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// Queues an error that did not come from the rooms.
    fn send_error(&self, err: &ProtocolError) {
        self.count_error(err.code);
        if let Err(TrySendError::Full(_)) = self
            .local_tx
            .try_send(Outbound::Text(err.to_message().to_json()))
        {
            self.kill.store(true, Ordering::Relaxed);
        }
    }

    /// One data message (`None`: binary). `Some`: the connection ended.
    fn on_data(
        &self,
        ws: &mut WebSocket<TcpStream>,
        limiter: &mut RateLimiter,
        text: Option<&[u8]>,
    ) -> Option<Ended> {
        self.shared
            .counters
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        match limiter.on_message(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Drop { notify } => {
                if notify {
                    let per_sec = self.shared.cfg.messages_per_sec;
                    self.send_error(&ProtocolError::new(
                        ErrorCode::RateLimited,
                        format!("too many messages: at most {per_sec} per second; messages are being dropped"),
                    ));
                }
                return None;
            }
            Verdict::Close => {
                tracing::info!(conn = self.conn, "message flood; closing");
                close(ws, CloseCode::Policy, "message flood");
                return Some(Ended::Flood);
            }
        }
        let Some(bytes) = text else {
            self.send_error(&ProtocolError::new(
                ErrorCode::BadRequest,
                "binary messages are not accepted: send JSON text messages",
            ));
            return None;
        };
        match parse_client(bytes) {
            Ok(msg) => {
                let conn = self.conn;
                let counters = &self.shared.counters;
                self.shared.with_core(|core| {
                    if let Err(e) = core.rooms.on_message(conn, msg, unix_now()) {
                        // Queued before the rooms' outputs, so an error precedes the
                        // close that follows a refused join.
                        core.enqueue_error(conn, &e.to_message(), counters);
                    }
                });
            }
            Err(e) => self.send_error(&e),
        }
        None
    }
}

/// Sends a close frame and waits (bounded) for the client's close.
fn close(ws: &mut WebSocket<TcpStream>, code: CloseCode, reason: &str) {
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let deadline = Instant::now() + CLOSE_WAIT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(e) if transient(&e) => {
                let _ = ws.flush();
            }
            Err(_) => break,
        }
    }
}

/// Sends a close frame when the incoming stream cannot be parsed any more (a message
/// over the read cap was left half read): discards what arrives for a moment instead of
/// parsing it, so the close does not become a reset that loses our last frames.
fn close_unreadable(ws: &mut WebSocket<TcpStream>, code: CloseCode, reason: &str) {
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let deadline = Instant::now() + CLOSE_WAIT;
    let mut sink = [0u8; 16 * 1024];
    let mut total = 0usize;
    while Instant::now() < deadline && total < 4 * WS_READ_CAP {
        let _ = ws.flush();
        match ws.get_mut().read(&mut sink) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if is_transient(e.kind()) => {}
            Err(_) => break,
        }
    }
    let _ = ws.get_mut().shutdown(Shutdown::Both);
}
