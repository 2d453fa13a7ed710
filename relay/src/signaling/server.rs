//! The signaling server: HTTP and WebSocket on one TCP port, blocking threads.
//!
//! Exists to put the sans-IO signaling pieces (message parsing in `protocol`, room
//! state in `rooms`) on the network: browsers load the demo page, fetch demo tokens
//! (when enabled) and open one WebSocket per participant at `/ws`. One accept thread,
//! one thread per connection, and one thread feeding the media plane's events into the
//! rooms. The rooms sit behind one mutex that is never held during socket I/O: what
//! the rooms want sent goes into each connection's bounded outbound queue (a client
//! that does not read fast enough is disconnected instead of blocking everyone), and
//! media-plane commands go to the media plane's channel.

mod connection;
pub mod http;
pub mod limits;
pub mod routes;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::protocol::{ErrorCode, ServerMessage};
use super::rooms::{ConnId, Output, Rooms, RoomsStats};
use crate::sfu::control::{Command, Event};

/// Messages queued for one connection before it counts as too slow and is closed.
pub const OUTBOUND_QUEUE_LEN: usize = 512;
/// How long `shutdown` waits for connection threads to finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// How the signaling server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (HTTP and WebSocket).
    pub listen: SocketAddr,
    /// Most open TCP connections; beyond, new ones get `503` and are closed.
    pub max_connections: usize,
    /// `Some(secret)`: `GET /token?room=R&identity=I[&p2p=1]` hands out tokens valid
    /// for an hour signed with it (demo page and tests only: anyone can get one).
    /// `None`: `/token` is 404.
    pub demo_tokens: Option<Vec<u8>>,
    /// Messages per second per connection (burst twice that); more are dropped with a
    /// `rate_limited` error, ten times more for two seconds closes the connection.
    pub messages_per_sec: u32,
    /// A WebSocket silent (no message, no pong) this long is closed; the server pings
    /// every 20 s (or a third of this, if shorter).
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 1024,
            demo_tokens: None,
            messages_per_sec: 50,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of the server (for `relay stats`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerStats {
    /// TCP connections open now (HTTP requests and WebSockets).
    pub connections_open: u64,
    /// TCP connections accepted since start.
    pub connections_total: u64,
    /// WebSocket connections opened since start.
    pub websockets_total: u64,
    /// Signaling messages received (text and binary, including refused ones).
    pub messages_in: u64,
    /// Signaling messages sent.
    pub messages_out: u64,
    /// `error` messages sent, per code (every code listed, zero included).
    pub errors: Vec<(ErrorCode, u64)>,
    /// Connections refused with `503` (over `max_connections`).
    pub rejected: u64,
    /// Connections closed because their outbound queue was full (slow readers).
    pub slow_closed: u64,
    /// Connection threads that panicked (caught; the server went on).
    pub panics: u64,
    /// The rooms' own counts.
    pub rooms: RoomsStats,
}

const ERROR_CODES: [ErrorCode; 9] = [
    ErrorCode::BadJson,
    ErrorCode::BadToken,
    ErrorCode::ExpiredToken,
    ErrorCode::UnknownRoom,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::BadRequest,
    ErrorCode::Internal,
    ErrorCode::CodecUnsupported,
];

fn code_index(code: ErrorCode) -> usize {
    ERROR_CODES.iter().position(|c| *c == code).unwrap_or(7)
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    total: AtomicU64,
    websockets: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    errors: [AtomicU64; 9],
    rejected: AtomicU64,
    slow_closed: AtomicU64,
    panics: AtomicU64,
}

/// What a connection thread writes, in order.
#[derive(Debug)]
enum Outbound {
    /// A JSON text message.
    Text(String),
    /// Send everything before, then close the WebSocket.
    Close,
}

/// The outbound side of one connection, as the dispatcher sees it.
struct ConnHandle {
    tx: Sender<Outbound>,
    /// Set when the queue overflowed: the connection thread closes the connection.
    kill: Arc<AtomicBool>,
}

/// Everything behind the one lock.
struct Core {
    rooms: Rooms,
    conns: HashMap<ConnId, ConnHandle>,
}

impl Core {
    /// Queues a message for `conn`; a full queue marks the connection for closing.
    fn enqueue(&mut self, conn: ConnId, item: Outbound, counters: &Counters) {
        let Some(handle) = self.conns.get(&conn) else {
            tracing::debug!(conn, "output for a connection already gone");
            return;
        };
        match handle.tx.try_send(item) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                if !handle.kill.swap(true, Ordering::Relaxed) {
                    counters.slow_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        conn,
                        queued = OUTBOUND_QUEUE_LEN,
                        "signaling client does not read its messages fast enough; closing it"
                    );
                }
            }
        }
    }

    /// Queues an `error` message for `conn`.
    fn enqueue_error(&mut self, conn: ConnId, msg: &ServerMessage, counters: &Counters) {
        if let ServerMessage::Error { code, .. } = msg {
            counters.errors[code_index(*code)].fetch_add(1, Ordering::Relaxed);
        }
        self.enqueue(conn, Outbound::Text(msg.to_json()), counters);
    }
}

/// State shared by all the server's threads.
struct Shared {
    cfg: ServerConfig,
    core: Mutex<Core>,
    commands: Sender<Command>,
    stop: AtomicBool,
    counters: Counters,
    next_conn: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock (caught per connection) must not stop every
        // other connection: keep using the state.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the rooms under the lock, then delivers everything the rooms want
    /// done, still under the lock so every connection sees messages in the order the
    /// rooms produced them. Delivering never blocks on a socket: outbound queues are
    /// `try_send`, and the media plane's command channel is expected to be unbounded.
    fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut core = self.lock();
        let r = f(&mut core);
        while let Some(out) = core.rooms.poll_output() {
            match out {
                Output::Send(conn, msg) => {
                    if matches!(msg, ServerMessage::Error { .. }) {
                        core.enqueue_error(conn, &msg, &self.counters);
                    } else {
                        core.enqueue(conn, Outbound::Text(msg.to_json()), &self.counters);
                    }
                }
                Output::Close(conn) => core.enqueue(conn, Outbound::Close, &self.counters),
                Output::Media(cmd) => {
                    if let Err(e) = self.commands.send(cmd) {
                        tracing::error!(
                            command = ?e.0,
                            "the media plane is gone (its command channel is closed); dropped a command"
                        );
                    }
                }
            }
        }
        r
    }
}

/// The running server. Dropping it (or [`SignalingServer::shutdown`]) stops every
/// thread, waiting a bounded time for connections to close.
pub struct SignalingServer {
    shared: Arc<Shared>,
    local: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SignalingServer {
    /// Binds, spawns: an accept thread, one thread per connection, and one thread
    /// draining `events` into [`Rooms::on_media_event`].
    pub fn start(
        cfg: ServerConfig,
        rooms: Rooms,
        commands: Sender<Command>,
        events: Receiver<Event>,
    ) -> std::io::Result<SignalingServer> {
        let listener = TcpListener::bind(cfg.listen)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        if cfg.demo_tokens.is_some() {
            tracing::warn!(
                %local,
                "demo tokens are enabled: anyone who can reach GET /token gets a join token for any room; use this for the demo page and tests only"
            );
        }
        let shared = Arc::new(Shared {
            cfg,
            core: Mutex::new(Core {
                rooms,
                conns: HashMap::new(),
            }),
            commands,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            next_conn: AtomicU64::new(1),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("signaling-accept".into())
                .spawn(move || accept_loop(&shared, &listener))?
        };
        let events = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("signaling-events".into())
                .spawn(move || event_loop(&shared, &events))
        };
        let events = match events {
            Ok(t) => t,
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                let _ = accept.join();
                return Err(e);
            }
        };
        tracing::info!(%local, "signaling server listening (HTTP + WebSocket /ws)");
        Ok(SignalingServer {
            shared,
            local,
            threads: vec![accept, events],
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            connections_open: get(&c.open),
            connections_total: get(&c.total),
            websockets_total: get(&c.websockets),
            messages_in: get(&c.messages_in),
            messages_out: get(&c.messages_out),
            errors: ERROR_CODES
                .iter()
                .map(|code| (*code, get(&c.errors[code_index(*code)])))
                .collect(),
            rejected: get(&c.rejected),
            slow_closed: get(&c.slow_closed),
            panics: get(&c.panics),
            rooms: self.shared.lock().rooms.stats(),
        }
    }

    /// Stops accepting, closes every connection (WebSocket close `1001`) and joins the
    /// threads, waiting at most a few seconds.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.shared.counters.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.shared.counters.open.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                left,
                "signaling server stopped with connections still closing"
            );
        } else {
            tracing::info!("signaling server stopped");
        }
    }
}

impl Drop for SignalingServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let c = &shared.counters;
                c.total.fetch_add(1, Ordering::Relaxed);
                if c.open.load(Ordering::SeqCst) >= shared.cfg.max_connections as u64 {
                    c.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, max = shared.cfg.max_connections, "too many connections; refusing with 503");
                    connection::reject(stream);
                    continue;
                }
                c.open.fetch_add(1, Ordering::SeqCst);
                let thread_shared = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("signaling-conn".into())
                    .spawn(move || connection::run(&thread_shared, stream, peer));
                if let Err(e) = spawned {
                    c.open.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!(%peer, error = %e, "cannot start a connection thread; dropping the connection");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn event_loop(shared: &Arc<Shared>, events: &Receiver<Event>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => shared.with_core(|core| core.rooms.on_media_event(ev)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                tracing::info!("media event channel closed; no more media events");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_own_counter() {
        let mut seen = std::collections::HashSet::new();
        for c in ERROR_CODES {
            assert!(seen.insert(code_index(c)));
        }
        assert_eq!(seen.len(), ERROR_CODES.len());
    }

    #[test]
    fn a_full_outbound_queue_marks_only_that_connection_for_closing() {
        let counters = Counters::default();
        let mut core = Core {
            rooms: Rooms::new(crate::signaling::rooms::RoomsConfig::default()),
            conns: HashMap::new(),
        };
        let (slow_tx, slow_rx) = crossbeam_channel::bounded(2);
        let (fast_tx, fast_rx) = crossbeam_channel::bounded(2);
        let slow_kill = Arc::new(AtomicBool::new(false));
        let fast_kill = Arc::new(AtomicBool::new(false));
        core.conns.insert(
            1,
            ConnHandle {
                tx: slow_tx,
                kill: Arc::clone(&slow_kill),
            },
        );
        core.conns.insert(
            2,
            ConnHandle {
                tx: fast_tx,
                kill: Arc::clone(&fast_kill),
            },
        );
        for i in 0..3 {
            core.enqueue(1, Outbound::Text(format!("m{i}")), &counters);
            core.enqueue(2, Outbound::Text(format!("m{i}")), &counters);
            // The fast one reads.
            assert!(matches!(fast_rx.try_recv(), Ok(Outbound::Text(t)) if t == format!("m{i}")));
        }
        assert!(
            slow_kill.load(Ordering::Relaxed),
            "overflow marks the slow connection"
        );
        assert!(!fast_kill.load(Ordering::Relaxed));
        assert_eq!(counters.slow_closed.load(Ordering::Relaxed), 1);
        assert_eq!(slow_rx.len(), 2, "what fitted stays queued in order");
        // Unknown connections are ignored, errors are counted by code.
        core.enqueue(9, Outbound::Close, &counters);
        let err = ServerMessage::Error {
            code: ErrorCode::BadJson,
            message: "x".into(),
        };
        core.enqueue_error(2, &err, &counters);
        assert_eq!(
            counters.errors[code_index(ErrorCode::BadJson)].load(Ordering::Relaxed),
            1
        );
    }
}
