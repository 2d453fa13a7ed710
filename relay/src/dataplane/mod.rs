//! The userspace data path: one pinned worker thread per core, each with its own
//! io_uring (or, where io_uring is unavailable, a portable recvmmsg/sendmmsg loop) and its
//! own SO_REUSEPORT socket per listen address.
//!
//! It exists to move datagrams between sockets and the sans-IO protocol logic as cheaply
//! as possible: no locks, no allocation and no system call per packet beyond the ring.
//! What to answer is decided by a [`DatagramHandler`] chosen at start-up (the STUN
//! Binding service, [`StunHandler`]) or, with [`Dataplane::start_turn`], by one
//! [`TurnServer`](crate::turn::TurnServer) per worker ([`turn_io`]): client datagrams on
//! the listen sockets, peer datagrams on relayed sockets bound and armed in the worker
//! that owns the allocation, TCP/TLS clients on per-worker SO_REUSEPORT listeners, and a
//! command channel per worker for the control plane — never by the IO code.
//!
//! Wildcard listen addresses (0.0.0.0, ::) work for TURN: those sockets report each
//! datagram's destination (IP_PKTINFO / IPV6_RECVPKTINFO), which becomes the server half
//! of the client's 5-tuple, and TURN answers and relayed data leave from that address
//! (pktinfo on the send), so multi-homed hosts answer from the address the client used.
//! The STUN-only handler still replies with the kernel's source choice.

pub(crate) mod bufring;
pub mod counters;
mod portable;
pub mod slots;
pub mod socket;
pub mod turn_io;
pub(crate) mod uring;
mod worker;
pub mod xsk_path;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use counters::{Counts, WorkerCounters};
pub use turn_io::{RelaySpec, Reservations, Restored, TurnSetup, WorkerCommand};
pub use worker::Worker;
pub use xsk_path::{XskCounts, XskInterface, XskSetup};

use crate::config::BackendChoice;
use crate::stun::binding::{self, DropReason, Reply};
use crate::tls::{TlsError, TlsReloader};
use crate::turn::listing_job::ListingFilter;
use crate::turn::snapshot::SavedAllocation;
use crate::turn::{AllocationInfo, KickTarget, Shared, TurnConfig, TurnStats};

/// What a handler decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send `out[..n]` back to the datagram's source from the socket it arrived on.
    Reply(usize),
    /// Send nothing; the code indexes [`DatagramHandler::drop_reasons`].
    Drop(u8),
}

/// The protocol logic a worker drives: bytes in, a decision and bytes out. Each worker
/// owns its own handler (cloned at start-up), so handlers need no synchronisation.
/// Implementations must not allocate, block or panic on any input.
pub trait DatagramHandler: Send + 'static {
    /// Handles one datagram from `source`, writing any reply into `out`.
    fn handle(&mut self, datagram: &[u8], source: SocketAddr, out: &mut [u8]) -> Verdict;

    /// Names of the drop reason codes, index = code (at most
    /// [`counters::MAX_DROP_REASONS`]; larger codes count as the last).
    fn drop_reasons(&self) -> &'static [&'static str];
}

/// The STUN Binding service ([`binding::handle_datagram`]) as a worker handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct StunHandler;

/// Drop reason names of [`StunHandler`].
pub const STUN_DROP_REASONS: [&str; 5] = [
    "not_stun",
    "bad_fingerprint",
    "not_a_request",
    "buffer_too_small",
    "reply_too_long",
];

impl DatagramHandler for StunHandler {
    #[inline]
    fn handle(&mut self, datagram: &[u8], source: SocketAddr, out: &mut [u8]) -> Verdict {
        match binding::handle_datagram(datagram, source, out) {
            Reply::Send(n) if n <= out.len() => Verdict::Reply(n),
            Reply::Send(_) => Verdict::Drop(4),
            Reply::Drop(reason) => Verdict::Drop(stun_drop_code(reason)),
        }
    }

    fn drop_reasons(&self) -> &'static [&'static str] {
        &STUN_DROP_REASONS
    }
}

#[inline]
fn stun_drop_code(reason: DropReason) -> u8 {
    match reason {
        DropReason::NotStun => 0,
        DropReason::BadFingerprint => 1,
        DropReason::NotARequest => 2,
        DropReason::BufferTooSmall => 3,
    }
}

/// The backend the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: multishot RecvMsg into a provided buffer ring, batched SendMsg.
    IoUring,
    /// recvmmsg/sendmmsg after poll.
    Portable,
}

impl Backend {
    /// Name used in logs and in the stats JSON (`io_uring` / `portable`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Portable => "portable",
        }
    }
}

/// Why the data path could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A listen socket could not be created or bound.
    #[error("cannot bind UDP {addr}: {source} (is another process using the port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// io_uring was asked for explicitly but cannot be used.
    #[error(
        "io_uring is unavailable: {0}; use `backend = \"auto\"` or \"portable\" in [dataplane]"
    )]
    IoUringUnavailable(String),
    /// A system call of a worker's set-up or loop failed.
    #[error("worker {worker}: {what}: {source}")]
    Io {
        /// Worker index.
        worker: usize,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A TCP/TLS listener could not be created or bound.
    #[error("cannot listen on TCP {addr}: {source} (is another process using the port?)")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// TLS listeners were configured without a certificate.
    #[error(
        "turn.listen_tls is set but no certificate is loaded: set turn.tls_cert and turn.tls_key"
    )]
    NoCertificate,
    /// A worker thread could not be spawned or panicked.
    #[error("worker {0} thread failed: {1}")]
    Thread(usize, String),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Addresses to serve (port 0 = any free port, shared by all workers).
    pub listen: Vec<SocketAddr>,
    /// Worker count; 0 = one per online CPU.
    pub workers: usize,
    /// Backend choice.
    pub backend: BackendChoice,
}

/// TURN on top of [`DataplaneConfig`]: what [`Dataplane::start_turn`] needs besides the
/// UDP listen addresses.
pub struct TurnDataplane {
    /// TURN settings (relay addresses are taken from `relay_ipv4` / `relay_ipv6`).
    pub config: Arc<TurnConfig>,
    /// Credentials, policy, quotas, nonce key.
    pub shared: Arc<Shared>,
    /// Relay port range, inclusive.
    pub port_range: (u16, u16),
    /// TCP listen addresses (port 0 = any, resolved once for all workers).
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listen addresses.
    pub listen_tls: Vec<SocketAddr>,
    /// Certificate for the TLS listeners.
    pub tls: Option<Arc<TlsReloader>>,
}

/// How long the control plane waits for a worker's answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long it waits for a worker's state snapshot, which the worker takes a slice per
/// loop round (`turn::snapshot_job`): a few hundred rounds with 100 000 allocations.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds one worker's TCP listener on `addr` (SO_REUSEPORT so every worker has its own
/// accept queue; v6-only for IPv6).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds `addrs` once per worker; port 0 resolves at the first bind.
fn bind_tcp_all(
    addrs: &mut [SocketAddr],
    workers: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, DataplaneError> {
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut v = Vec::with_capacity(addrs.len());
        for addr in addrs.iter_mut() {
            let l = bind_tcp(*addr).map_err(|source| DataplaneError::BindTcp {
                addr: *addr,
                source,
            })?;
            if addr.port() == 0 {
                let bound = l.local_addr().map_err(|source| DataplaneError::BindTcp {
                    addr: *addr,
                    source,
                })?;
                addr.set_port(bound.port());
            }
            v.push(l);
        }
        out.push(v);
    }
    Ok(out)
}

/// Picks the backend for `choice`, probing io_uring; returns it and why, for the log.
pub fn select_backend(choice: BackendChoice) -> Result<(Backend, String), DataplaneError> {
    match choice {
        BackendChoice::Portable => Ok((
            Backend::Portable,
            "forced by configuration (dataplane.backend = \"portable\")".to_owned(),
        )),
        BackendChoice::IoUring => match uring::probe() {
            Ok(()) => Ok((Backend::IoUring, "forced by configuration".to_owned())),
            Err(why) => Err(DataplaneError::IoUringUnavailable(why)),
        },
        BackendChoice::Auto => match uring::probe() {
            Ok(()) => Ok((
                Backend::IoUring,
                "io_uring with provided buffer rings is available".to_owned(),
            )),
            Err(why) => Ok((
                Backend::Portable,
                format!("io_uring is unavailable ({why}); falling back to recvmmsg/sendmmsg"),
            )),
        },
    }
}

/// The running workers. Dropping it stops them.
pub struct Dataplane {
    backend: Backend,
    listen: Vec<SocketAddr>,
    counters: Vec<Arc<WorkerCounters>>,
    drop_reasons: &'static [&'static str],
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), DataplaneError>>>,
    commands: Vec<mpsc::Sender<WorkerCommand>>,
    listen_tcp: Vec<SocketAddr>,
    listen_tls: Vec<SocketAddr>,
    tls: Option<Arc<TlsReloader>>,
    /// Held ports and restored allocations, shared by the workers.
    pool: Arc<Reservations>,
}

impl Dataplane {
    /// Binds the sockets, starts the workers and returns once every worker is ready.
    pub fn start<H: DatagramHandler + Clone>(
        config: &DataplaneConfig,
        handler: H,
    ) -> Result<Dataplane, DataplaneError> {
        Self::start_inner(config, handler, None, Arc::new(Reservations::default()))
    }

    /// Starts workers that serve TURN (and STUN Binding) on the UDP listen addresses and
    /// on `turn`'s TCP/TLS listeners, with relayed sockets bound in the worker that owns
    /// the allocation.
    pub fn start_turn(
        config: &DataplaneConfig,
        turn: TurnDataplane,
    ) -> Result<Dataplane, DataplaneError> {
        Self::start_turn_with(config, turn, Arc::new(Reservations::default()))
    }

    /// As [`Dataplane::start_turn`], with a pool of held ports that may already hold
    /// allocations restored after a restart ([`Reservations::hold_restored`]): the worker
    /// that receives a restored allocation's client datagrams takes it over.
    pub fn start_turn_with(
        config: &DataplaneConfig,
        turn: TurnDataplane,
        pool: Arc<Reservations>,
    ) -> Result<Dataplane, DataplaneError> {
        if !turn.listen_tls.is_empty() && turn.tls.is_none() {
            return Err(DataplaneError::NoCertificate);
        }
        Self::start_inner(config, StunHandler, Some(turn), pool)
    }

    fn start_inner<H: DatagramHandler + Clone>(
        config: &DataplaneConfig,
        handler: H,
        turn: Option<TurnDataplane>,
        reservations: Arc<Reservations>,
    ) -> Result<Dataplane, DataplaneError> {
        let (backend, why) = select_backend(config.backend)?;
        tracing::info!(
            backend = backend.name(),
            "data path backend: {} ({why})",
            backend.name()
        );
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };

        // Worker 0 binds first so that a port 0 resolves to one port for everyone.
        let mut listen = config.listen.clone();
        let mut per_worker: Vec<Vec<UdpSocket>> = Vec::with_capacity(workers);
        for _ in 0..workers {
            let mut sockets = Vec::with_capacity(listen.len());
            for addr in &mut listen {
                let s = socket::bind_udp(*addr).map_err(|source| DataplaneError::Bind {
                    addr: *addr,
                    source,
                })?;
                if addr.port() == 0 {
                    let bound = s.local_addr().map_err(|source| DataplaneError::Bind {
                        addr: *addr,
                        source,
                    })?;
                    addr.set_port(bound.port());
                }
                sockets.push(s);
            }
            per_worker.push(sockets);
        }
        let mut listen_tcp = turn
            .as_ref()
            .map_or_else(Vec::new, |t| t.listen_tcp.clone());
        let mut listen_tls = turn
            .as_ref()
            .map_or_else(Vec::new, |t| t.listen_tls.clone());
        let mut tcp_per_worker = bind_tcp_all(&mut listen_tcp, workers)?;
        let mut tls_per_worker = bind_tcp_all(&mut listen_tls, workers)?;
        let mut setups: Vec<Option<TurnSetup>> = Vec::with_capacity(workers);
        let mut commands = Vec::new();
        for _ in 0..workers {
            let setup = turn.as_ref().map(|t| {
                let (tx, rx) = mpsc::channel();
                commands.push(tx);
                TurnSetup {
                    config: t.config.clone(),
                    shared: t.shared.clone(),
                    relay: RelaySpec {
                        ipv4: t.config.relay_ipv4,
                        ipv6: t.config.relay_ipv6,
                        ports: t.port_range,
                    },
                    tcp: tcp_per_worker.pop().unwrap_or_default(),
                    tls: tls_per_worker.pop().unwrap_or_default(),
                    tls_config: t.tls.clone(),
                    commands: rx,
                    reservations: reservations.clone(),
                }
            });
            setups.push(setup);
        }

        let shutdown = Arc::new(AtomicBool::new(false));
        let drop_reasons = handler.drop_reasons();
        let mut dp = Dataplane {
            backend,
            listen,
            counters: Vec::with_capacity(workers),
            drop_reasons,
            shutdown: shutdown.clone(),
            threads: Vec::with_capacity(workers),
            commands,
            listen_tcp,
            listen_tls,
            tls: turn.as_ref().and_then(|t| t.tls.clone()),
            pool: reservations,
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), DataplaneError>>();
        for (index, (sockets, setup)) in per_worker.into_iter().zip(setups).enumerate() {
            let counters = Arc::new(WorkerCounters::default());
            dp.counters.push(counters.clone());
            let core = if cores.is_empty() {
                None
            } else {
                Some(cores[index % cores.len()])
            };
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("relay-worker-{index}"))
                .spawn(move || {
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core)
                    {
                        tracing::warn!(
                            worker = index,
                            core = core.id,
                            "cannot pin worker to its core; it will float"
                        );
                    }
                    let built = match setup {
                        Some(setup) => {
                            Worker::with_turn(index, backend, sockets, handler, counters, setup)
                        }
                        None => Worker::new(index, backend, sockets, handler, counters),
                    };
                    let worker = match built {
                        Ok(w) => {
                            let _ = ready.send(Ok(()));
                            w
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return Ok(());
                        }
                    };
                    drop(ready);
                    worker.run(&shutdown)
                });
            match spawned {
                Ok(t) => dp.threads.push(t),
                Err(e) => return Err(DataplaneError::Thread(index, e.to_string())),
            }
        }
        drop(ready_tx);
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(DataplaneError::Thread(0, "exited during set-up".into())),
            }
        }
        tracing::info!(
            workers,
            backend = backend.name(),
            listen = ?dp.listen,
            "data path running"
        );
        Ok(dp)
    }

    /// The backend the workers run.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The addresses served (port 0 resolved).
    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// TCP addresses served by TURN (port 0 resolved).
    pub fn listen_tcp(&self) -> &[SocketAddr] {
        &self.listen_tcp
    }

    /// TLS addresses served by TURN (port 0 resolved).
    pub fn listen_tls(&self) -> &[SocketAddr] {
        &self.listen_tls
    }

    /// Whether the workers serve TURN.
    pub fn is_turn(&self) -> bool {
        !self.commands.is_empty()
    }

    /// Sends a command to every worker and collects the answers (a worker answers within
    /// one loop iteration; one that does not within [`COMMAND_TIMEOUT`] is skipped with a
    /// warning).
    fn ask_all<T>(&self, make: impl Fn(mpsc::Sender<T>) -> WorkerCommand) -> Vec<T> {
        self.ask_all_within(COMMAND_TIMEOUT, make).0
    }

    /// [`Dataplane::ask_all`] with its own deadline; also says how many workers did not
    /// answer in time.
    fn ask_all_within<T>(
        &self,
        timeout: Duration,
        make: impl Fn(mpsc::Sender<T>) -> WorkerCommand,
    ) -> (Vec<T>, usize) {
        let mut pending = Vec::with_capacity(self.commands.len());
        let mut missing = 0;
        for (i, c) in self.commands.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            if c.send(make(tx)).is_ok() {
                pending.push((i, rx));
            } else {
                missing += 1;
            }
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(pending.len());
        for (i, rx) in pending {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(v) => out.push(v),
                Err(_) => {
                    missing += 1;
                    tracing::warn!(worker = i, "worker did not answer a control command");
                }
            }
        }
        (out, missing)
    }

    /// Asks every worker to open its AF_XDP sockets (`xdp.af_xdp`); returns the sockets
    /// opened in all, or the first worker's reason why not (workers that did open theirs
    /// keep them: their frames are served either way).
    pub fn enable_xsk(&self, setup: &XskSetup) -> Result<usize, String> {
        if self.commands.is_empty() {
            return Err("AF_XDP serves TURN, which is off".to_owned());
        }
        let answers = self.ask_all(|reply| WorkerCommand::EnableXsk {
            setup: Box::new(setup.clone()),
            reply,
        });
        if answers.len() < self.commands.len() {
            return Err("a worker did not answer in time".to_owned());
        }
        let mut total = 0;
        for a in answers {
            total += a?;
        }
        Ok(total)
    }

    /// The allocations of all workers, optionally only of `user` and/or touching `addr`
    /// (its IP, and its port when non-zero, as client, server or relayed address).
    pub fn allocations(&self, user: Option<&str>, addr: Option<SocketAddr>) -> Vec<AllocationInfo> {
        self.allocations_answered(user, addr).0
    }

    /// [`Dataplane::allocations`], and how many workers did not answer within
    /// [`COMMAND_TIMEOUT`] (their allocations are missing from the list).
    pub fn allocations_answered(
        &self,
        user: Option<&str>,
        addr: Option<SocketAddr>,
    ) -> (Vec<AllocationInfo>, usize) {
        let (answers, silent) =
            self.ask_all_within(COMMAND_TIMEOUT, |reply| WorkerCommand::Allocations {
                filter: ListingFilter {
                    user: user.map(str::to_owned),
                    addr,
                },
                reply,
            });
        let mut all: Vec<AllocationInfo> = answers.into_iter().flatten().collect();
        all.sort_by(|a, b| (a.user.as_str(), a.client).cmp(&(b.user.as_str(), b.client)));
        (all, silent)
    }

    /// Deletes the allocations matching `target` on every worker; returns how many, and
    /// how many workers did not answer within [`COMMAND_TIMEOUT`] (their part of the
    /// kick goes on, but is not counted).
    pub fn kick(&self, target: &KickTarget) -> (usize, usize) {
        let (answers, silent) = self.ask_all_within(COMMAND_TIMEOUT, |reply| WorkerCommand::Kick {
            target: target.clone(),
            reply,
        });
        (answers.into_iter().sum(), silent)
    }

    /// Re-checks every worker's permissions and channels against the (replaced) peer
    /// policy; returns how many permissions were removed.
    pub fn recheck_policy(&self) -> usize {
        self.ask_all(|reply| WorkerCommand::RecheckPolicy { reply })
            .into_iter()
            .sum()
    }

    /// Every UDP allocation for the state file, ordered by 5-tuple: the workers' and the
    /// restored ones no worker has claimed yet. None when a worker did not answer within
    /// [`SNAPSHOT_TIMEOUT`]: a file written without its allocations would make a
    /// restarted daemon forget them.
    pub fn snapshot(&self) -> Option<Vec<SavedAllocation>> {
        let (answers, missing) =
            self.ask_all_within(SNAPSHOT_TIMEOUT, |reply| WorkerCommand::Snapshot { reply });
        if missing > 0 {
            return None;
        }
        let mut all: Vec<SavedAllocation> = answers.into_iter().flatten().collect();
        all.extend(self.pool.restored_snapshot());
        all.sort_by_key(|a| (a.client, a.server));
        Some(all)
    }

    /// The shared pool of held ports and restored allocations.
    pub fn pool(&self) -> &Arc<Reservations> {
        &self.pool
    }

    /// TURN counters summed over the workers (None when not serving TURN).
    pub fn turn_stats(&self) -> Option<TurnStats> {
        if !self.is_turn() {
            return None;
        }
        let mut total = TurnStats::default();
        for s in self.ask_all(|reply| WorkerCommand::Stats { reply }) {
            total.add(&s);
        }
        Some(total)
    }

    /// Re-reads the TLS certificate and key: new handshakes use them, established
    /// connections and all allocations stay. Ok(false) when no TLS is configured.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.counters.len()
    }

    /// Counters summed over the workers.
    pub fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for c in &self.counters {
            total.add(&c.snapshot());
        }
        total
    }

    /// Names of the handler's drop reason codes.
    pub fn drop_reasons(&self) -> &'static [&'static str] {
        self.drop_reasons
    }

    /// Whether any worker thread has exited (it only does on shutdown or on an error).
    pub fn any_worker_exited(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Stops the workers and waits for them; returns the first worker error.
    pub fn stop(mut self) -> Result<(), DataplaneError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), DataplaneError> {
        self.shutdown.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            let r = match t.join() {
                Ok(r) => r,
                Err(_) => Err(DataplaneError::Thread(i, "panicked".into())),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!(error = %e, "data path worker failed");
        }
    }
}
