//! The SFU's media thread: one UDP socket, one [`Engine`], the command channel from
//! signaling and the event channel back.
//!
//! The socket layer is io_uring where the kernel permits it (`uring_loop`: a multishot
//! receive into a provided buffer ring, sends queued from preallocated slots, one
//! `io_uring_enter` per loop iteration) and a portable poll(2) loop otherwise
//! (`poll_loop`); the choice follows the `[dataplane] backend` setting, the same rule as
//! the TURN workers. Either way the thread waits at most until the engine's next timer and
//! never longer than 10 ms (so commands are applied promptly), hands each datagram to the
//! engine, runs its timers, applies queued commands and forwards its events. All sending
//! happens inline from the engine through [`Transmit`].
//!
//! With `tcp` on, the thread also accepts ICE over TCP (RFC 6544 passive) on a listener
//! at the UDP socket's address and port (`tcp`, framing in [`framing`]); either loop
//! watches that listener's one epoll descriptor next to the UDP socket, and the engine's
//! sends to a TCP peer go back over its connection.

mod chores;
pub mod framing;
mod poll_loop;
mod tcp;
mod uring_loop;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use self::chores::Chores;
use self::tcp::TcpMedia;
pub use self::tcp::{
    MAX_CONNECTIONS as TCP_MAX_CONNECTIONS, OUT_QUEUE as TCP_OUT_QUEUE,
    SILENT_TIMEOUT as TCP_SILENT_TIMEOUT, UNANSWERED_TIMEOUT as TCP_UNANSWERED_TIMEOUT,
};
use self::uring_loop::UringMedia;
use super::control::{Command, Event};
use super::engine::{Engine, EngineConfig, EngineStats, MAX_DATAGRAM};
use crate::config::BackendChoice;
use crate::dtls::Certificate;

/// Room for one received datagram (more than the engine accepts, so an oversized one
/// is seen and dropped by the engine rather than cut).
const MAX_DATAGRAM_ROOM: usize = MAX_DATAGRAM + 64;
/// Receive buffer asked for on the media socket.
const RECV_BUFFER: usize = 4 << 20;

/// How often an ephemeral media port is tried again when its TCP twin is taken.
const EPHEMERAL_BIND_ATTEMPTS: usize = 32;

/// Binds the worker's UDP media socket (non-blocking, receive buffer enlarged) and, with
/// `tcp`, its ICE-TCP listener on the same address and port. With port 0 the kernel picks
/// the UDP port, and that port number may already be taken for TCP (by any outgoing
/// connection's ephemeral port): then both are released and another port is tried, up to
/// [`EPHEMERAL_BIND_ATTEMPTS`] times. A configured port is tried once (the error names it).
fn bind_media(
    listen: SocketAddr,
    tcp: bool,
) -> io::Result<(UdpSocket, SocketAddr, Option<TcpMedia>)> {
    bind_media_with(listen, tcp, TcpMedia::bind)
}

/// [`bind_media`] with the TCP side given (tests make it refuse).
fn bind_media_with<T>(
    listen: SocketAddr,
    tcp: bool,
    mut bind_tcp: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<(UdpSocket, SocketAddr, Option<T>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let socket = UdpSocket::bind(listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the SFU media socket {listen}: {e} (set sfu.media_listen to a free local address)"),
            )
        })?;
        socket.set_nonblocking(true)?;
        // Video arrives in frame-sized bursts from every publisher at once; the default
        // receive buffer (~200 KB) overflowed in the load bench at 50 participants while
        // the thread was far from busy. The kernel caps this at net.core.rmem_max.
        let sock = socket2::SockRef::from(&socket);
        if let Err(e) = sock.set_recv_buffer_size(RECV_BUFFER) {
            tracing::warn!(error = %e, "cannot enlarge the SFU media socket's receive buffer");
        }
        let local = socket.local_addr()?;
        if !tcp {
            return Ok((socket, local, None));
        }
        // Same address and port as the UDP socket (with port 0, the one it got).
        match bind_tcp(local) {
            Ok(t) => return Ok((socket, local, Some(t))),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && listen.port() == 0
                    && attempt < EPHEMERAL_BIND_ATTEMPTS =>
            {
                tracing::debug!(%local, "ephemeral media port taken for TCP; trying another");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The media thread's settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The UDP address media arrives on (what the candidates announce).
    pub listen: SocketAddr,
    /// Engine settings.
    pub engine: EngineConfig,
    /// The socket layer: io_uring, the portable poll(2) loop, or io_uring when the kernel
    /// permits it (the `[dataplane] backend` setting, same rule as the TURN workers).
    pub backend: BackendChoice,
    /// The CPU the media thread is pinned to (None: wherever the scheduler puts it).
    pub core: Option<usize>,
    /// Also accept ICE over TCP (RFC 6544 passive, RFC 4571 framing) on a TCP listener
    /// at the UDP socket's bound address and port.
    pub tcp: bool,
}

/// The socket layer the media thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaBackend {
    /// Multishot RecvMsg into a provided buffer ring, SendMsg from preallocated slots.
    IoUring,
    /// poll(2), then recv_from / send_to per datagram.
    Portable,
}

/// The socket layer's own counters (the engine's are in [`EngineStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaIoStats {
    /// The backend in use.
    pub backend: MediaBackend,
    /// Sends the kernel refused (or that could not be queued).
    pub send_errors: u64,
    /// Datagrams the engine sent while every send slot was in flight (io_uring only):
    /// dropped, never waited for.
    pub send_slot_full: u64,
    /// Received datagrams dropped by the socket layer: no free receive buffer, truncated,
    /// an unreadable source address, or a receive error.
    pub recv_drops: u64,
    /// ICE-TCP connections open now.
    pub tcp_connections: u64,
    /// ICE-TCP connections closed at once: the per-worker cap was reached, or the
    /// connection could not be set up.
    pub tcp_refused: u64,
    /// ICE-TCP connections closed for an RFC 4571 frame longer than the largest datagram.
    pub tcp_frame_errors: u64,
    /// Packets for a TCP peer dropped: its out-queue was full, or no connection from it.
    pub tcp_send_drops: u64,
    /// ICE-TCP connections closed idle (no valid STUN check in 10 s, or silent for 40 s).
    pub tcp_idle_closed: u64,
}

/// Counters the media thread bumps (only on the rare paths) and `stats` reads.
#[derive(Debug, Default)]
struct IoCounters {
    send_errors: AtomicU64,
    send_slot_full: AtomicU64,
    recv_drops: AtomicU64,
    tcp_connections: AtomicU64,
    tcp_refused: AtomicU64,
    tcp_frame_errors: AtomicU64,
    tcp_send_drops: AtomicU64,
    tcp_idle_closed: AtomicU64,
    /// The first send error is logged with its cause, the rest only counted.
    send_error_logged: AtomicBool,
}

impl IoCounters {
    #[inline]
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn gauge_up(gauge: &AtomicU64) {
        gauge.fetch_add(1, Ordering::Relaxed);
    }

    fn gauge_down(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

/// A running media thread.
pub struct SfuRuntime {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<EngineStats>>,
    io: Arc<IoCounters>,
    backend: MediaBackend,
    local: SocketAddr,
    tcp_local: Option<SocketAddr>,
}

impl SfuRuntime {
    /// Binds the media socket, picks the socket layer and starts the thread. Fails when
    /// the socket cannot be bound, or when io_uring is forced but unavailable.
    pub fn start(
        cfg: RuntimeConfig,
        cert: Arc<Certificate>,
        commands: Receiver<Command>,
        events: Sender<Event>,
    ) -> io::Result<SfuRuntime> {
        let (socket, local, tcp) = bind_media(cfg.listen, cfg.tcp)?;
        let tcp_local = tcp.as_ref().map(TcpMedia::local_addr);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let io_counters = Arc::new(IoCounters::default());
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<MediaBackend, String>>(1);
        let thread = {
            let stop = stop.clone();
            let io_counters = io_counters.clone();
            let chores = Chores::new(commands, events, stats.clone());
            let (choice, core, engine_cfg) = (cfg.backend, cfg.core, cfg.engine);
            std::thread::Builder::new()
                .name("relay-sfu".into())
                .spawn(move || {
                    pin(core);
                    // The ring is built on the thread that uses it (it is set up for a
                    // single issuer).
                    let uring = match choose(choice, &socket) {
                        Ok(u) => u,
                        Err(why) => {
                            let _ = ready_tx.send(Err(why));
                            return;
                        }
                    };
                    let backend = if uring.is_some() {
                        MediaBackend::IoUring
                    } else {
                        MediaBackend::Portable
                    };
                    let _ = ready_tx.send(Ok(backend));
                    let mut engine = Engine::new(engine_cfg, cert, Instant::now());
                    tracing::info!(%local, backend = ?backend, tcp = tcp.is_some(), "SFU media socket ready");
                    let mut tcp = tcp;
                    match uring {
                        Some(u) => u.run(&mut engine, chores, tcp.as_mut(), local, &stop, &io_counters),
                        None => poll_loop::run(
                            &socket,
                            &mut engine,
                            chores,
                            tcp.as_mut(),
                            local,
                            &stop,
                            &io_counters,
                        ),
                    }
                    tracing::info!("SFU media thread stopped");
                })?
        };
        let backend = match ready_rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(why)) => {
                let _ = thread.join();
                return Err(io::Error::other(format!(
                    "dataplane.backend = \"io-uring\" but the SFU media thread cannot use \
                     io_uring: {why} (set dataplane.backend to \"auto\" or \"portable\")"
                )));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("the SFU media thread ended at start-up"));
            }
        };
        Ok(SfuRuntime {
            stop,
            thread: Some(thread),
            stats,
            io: io_counters,
            backend,
            local,
            tcp_local,
        })
    }

    /// The media socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The ICE-TCP listener's address (the media socket's, over TCP), if TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_local
    }

    /// The backend the media thread runs.
    pub fn backend(&self) -> MediaBackend {
        self.backend
    }

    /// The engine's counters (updated every few milliseconds) and socket send errors.
    pub fn stats(&self) -> (EngineStats, u64) {
        let s = self.stats.lock().map(|s| *s).unwrap_or_default();
        (s, self.io.send_errors.load(Ordering::Relaxed))
    }

    /// The socket layer's counters and backend.
    pub fn io_stats(&self) -> MediaIoStats {
        MediaIoStats {
            backend: self.backend,
            send_errors: self.io.send_errors.load(Ordering::Relaxed),
            send_slot_full: self.io.send_slot_full.load(Ordering::Relaxed),
            recv_drops: self.io.recv_drops.load(Ordering::Relaxed),
            tcp_connections: self.io.tcp_connections.load(Ordering::Relaxed),
            tcp_refused: self.io.tcp_refused.load(Ordering::Relaxed),
            tcp_frame_errors: self.io.tcp_frame_errors.load(Ordering::Relaxed),
            tcp_send_drops: self.io.tcp_send_drops.load(Ordering::Relaxed),
            tcp_idle_closed: self.io.tcp_idle_closed.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the SFU media thread panicked");
        }
    }
}

impl Drop for SfuRuntime {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Applies the `[dataplane] backend` rule on the media thread: `io-uring` forces it (an
/// error names why it is unavailable), `auto` probes and falls back to the poll loop with
/// a warning naming why, `portable` forces the poll loop.
fn choose(choice: BackendChoice, socket: &UdpSocket) -> Result<Option<UringMedia>, String> {
    let attempt = || {
        crate::dataplane::uring::probe_here()?;
        let dup = socket
            .try_clone()
            .map_err(|e| format!("cannot duplicate the media socket: {e}"))?;
        let ring =
            UringMedia::new(dup).map_err(|e| format!("cannot set up the media ring: {e}"))?;
        // io_uring honours O_NONBLOCK: a send to a full socket buffer would fail with
        // EAGAIN instead of waiting (in the kernel) for room. Blocking mode only matters
        // to io_uring here; the poll loop is not used with this socket.
        socket
            .set_nonblocking(false)
            .map_err(|e| format!("cannot make the media socket blocking: {e}"))?;
        Ok(ring)
    };
    match choice {
        BackendChoice::Portable => {
            tracing::info!("SFU media thread: poll loop (dataplane.backend = \"portable\")");
            Ok(None)
        }
        BackendChoice::IoUring => attempt().map(Some),
        BackendChoice::Auto => match attempt() {
            Ok(u) => Ok(Some(u)),
            Err(why) => {
                tracing::warn!(
                    "SFU media thread: io_uring is unavailable ({why}); falling back to the \
                     poll(2) loop"
                );
                Ok(None)
            }
        },
    }
}

/// Pins the calling thread to `core` when one is configured (a warning if refused).
fn pin(core: Option<usize>) {
    let Some(id) = core else { return };
    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
        tracing::warn!(core = id, "cannot pin the SFU media thread to its core");
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    fn in_use() -> io::Error {
        io::Error::new(io::ErrorKind::AddrInUse, "taken")
    }

    #[test]
    fn an_ephemeral_port_whose_tcp_twin_is_taken_is_replaced() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut tried = Vec::new();
        let (socket, local, tcp) = bind_media_with(any, true, |a| {
            tried.push(a);
            if tried.len() < 4 {
                Err(in_use())
            } else {
                Ok(a.port())
            }
        })
        .expect("a free pair is found");
        assert_eq!(tried.len(), 4);
        assert_eq!(tcp, Some(local.port()), "TCP took the UDP socket's port");
        assert_eq!(socket.local_addr().expect("addr"), local);
        // The refused attempts' UDP sockets were released (each got its own port).
        for earlier in &tried[..3] {
            assert!(
                UdpSocket::bind(earlier).is_ok() || earlier.port() == local.port(),
                "{earlier} still held"
            );
        }
    }

    #[test]
    fn a_configured_port_or_endless_refusals_end_with_the_error() {
        let fixed = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = fixed.local_addr().expect("addr");
        drop(fixed);
        let mut calls = 0;
        let err = bind_media_with(port, true, |_| -> io::Result<()> {
            calls += 1;
            Err(in_use())
        })
        .expect_err("a configured port is tried once");
        assert_eq!((calls, err.kind()), (1, io::ErrorKind::AddrInUse));

        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut calls = 0;
        let err = bind_media_with(any, true, |_| -> io::Result<()> {
            calls += 1;
            Err(in_use())
        })
        .expect_err("bounded");
        assert_eq!(calls, EPHEMERAL_BIND_ATTEMPTS);
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // Another error is not retried; without TCP nothing is asked.
        let mut calls = 0;
        let _ = bind_media_with(any, true, |_| -> io::Result<()> {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        });
        assert_eq!(calls, 1);
        let (_, _, none) =
            bind_media_with(any, false, |_| -> io::Result<()> { panic!("no TCP asked") })
                .expect("UDP only");
        assert!(none.is_none());
    }
}
