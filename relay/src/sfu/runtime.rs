//! The SFU's media thread: one UDP socket, one [`Engine`], the command channel from
//! signaling and the event channel back.
//!
//! The thread waits in poll(2) for the socket (at most until the engine's next timer, and
//! never longer than 10 ms so commands are applied promptly), drains up to a batch of
//! datagrams without blocking, runs the engine's timers, applies queued commands, and
//! forwards the engine's events. All sending happens inline from the engine through
//! [`Transmit`]: the engine encrypts into its scratch buffer and the socket copies it out.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::control::{Command, Event};
use super::engine::{Arrival, Engine, EngineConfig, EngineStats, MAX_DATAGRAM, Transmit};
use crate::config::BackendChoice;
use crate::dtls::Certificate;
use crate::ice::Transport as IceTransport;

/// Most datagrams handled between two looks at the timers and the command channel.
const BATCH: usize = 64;
/// Receive buffer asked for on the media socket.
const RECV_BUFFER: usize = 4 << 20;
/// Longest wait in poll(2).
const MAX_WAIT: Duration = Duration::from_millis(10);

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
}

/// A running media thread.
pub struct SfuRuntime {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<EngineStats>>,
    send_errors: Arc<AtomicU64>,
    local: SocketAddr,
}

struct SocketTx<'a> {
    socket: &'a UdpSocket,
    errors: &'a AtomicU64,
}

impl Transmit for SocketTx<'_> {
    fn send(&mut self, data: &[u8], dest: SocketAddr) {
        if self.socket.send_to(data, dest).is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl SfuRuntime {
    /// Binds the media socket and starts the thread.
    pub fn start(
        cfg: RuntimeConfig,
        cert: Arc<Certificate>,
        commands: Receiver<Command>,
        events: Sender<Event>,
    ) -> io::Result<SfuRuntime> {
        let socket = UdpSocket::bind(cfg.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the SFU media socket {}: {e} (set sfu.media_listen to a free local address)", cfg.listen),
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
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let send_errors = Arc::new(AtomicU64::new(0));
        let core = cfg.core;
        let thread = {
            let stop = stop.clone();
            let stats = stats.clone();
            let send_errors = send_errors.clone();
            std::thread::Builder::new()
                .name("relay-sfu".into())
                .spawn(move || {
                    pin(core);
                    run(
                        socket,
                        local,
                        cfg.engine,
                        cert,
                        commands,
                        events,
                        &stop,
                        &stats,
                        &send_errors,
                    )
                })?
        };
        Ok(SfuRuntime {
            stop,
            thread: Some(thread),
            stats,
            send_errors,
            local,
        })
    }

    /// The media socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The engine's counters (updated every few milliseconds) and socket send errors.
    pub fn stats(&self) -> (EngineStats, u64) {
        let s = self.stats.lock().map(|s| *s).unwrap_or_default();
        (s, self.send_errors.load(Ordering::Relaxed))
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

#[allow(clippy::too_many_arguments)]
fn run(
    socket: UdpSocket,
    local: SocketAddr,
    cfg: EngineConfig,
    cert: Arc<Certificate>,
    commands: Receiver<Command>,
    events: Sender<Event>,
    stop: &AtomicBool,
    stats: &Mutex<EngineStats>,
    send_errors: &AtomicU64,
) {
    let mut engine = Engine::new(cfg, cert, Instant::now());
    let mut buf = vec![0u8; MAX_DATAGRAM + 64];
    let mut last_stats = Instant::now();
    tracing::info!(%local, "SFU media socket ready");
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = engine
            .poll_timeout()
            .saturating_duration_since(now)
            .min(MAX_WAIT);
        wait_readable(&socket, wait);
        let mut tx = SocketTx {
            socket: &socket,
            errors: send_errors,
        };
        for _ in 0..BATCH {
            match socket.recv_from(&mut buf) {
                Ok((n, source)) => {
                    let now = Instant::now();
                    let at = Arrival {
                        source,
                        local,
                        via: IceTransport::Udp,
                        now,
                    };
                    engine.handle_datagram(&mut buf, n, at, &mut tx);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors reported on the socket (a browser went away): not fatal.
                Err(_) => continue,
            }
        }
        let now = Instant::now();
        if engine.poll_timeout() <= now {
            engine.handle_timeout(now, &mut tx);
        }
        for cmd in commands.try_iter().take(256) {
            engine.handle_command(cmd, now);
        }
        while let Some(ev) = engine.poll_event() {
            // The signaling side is gone only at shutdown.
            let _ = events.try_send(ev);
        }
        if now.duration_since(last_stats) >= Duration::from_millis(100) {
            last_stats = now;
            if let Ok(mut s) = stats.lock() {
                *s = engine.stats();
            }
        }
    }
    tracing::info!("SFU media thread stopped");
}

/// Pins the calling thread to `core` when one is configured (a warning if refused).
fn pin(core: Option<usize>) {
    let Some(id) = core else { return };
    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
        tracing::warn!(core = id, "cannot pin the SFU media thread to its core");
    }
}

/// Waits until the socket is readable or `wait` passes.
fn wait_readable(socket: &UdpSocket, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(10).max(0);
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
    }
}
