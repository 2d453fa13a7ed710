//! The IO half of TURN inside one worker: relayed UDP sockets, TCP/TLS client
//! connections, the per-worker control channel, and the glue that feeds
//! [`TurnServer`] and carries out what it asks for.
//!
//! Why it is shared: both backends (io_uring and portable) need the same bookkeeping —
//! which relayed socket a handle names, which connection a 5-tuple names, how a stream is
//! cut into messages, when a slow client is disconnected — and differ only in how a
//! socket is watched and how a datagram leaves. The backend supplies a `UdpSend` and
//! carries out the queued `Op`s (arm a receive, cancel it, watch a connection).
//!
//! The sans-IO core takes `&mut impl RelayPorts` and `&mut impl Transmit` in the same
//! call, and both need the relay table; so the tables sit in `RefCell`s and the two trait
//! objects are thin views over them. Nothing here allocates per relayed packet: UDP bytes
//! go straight into the backend's send path, stream bytes into a bounded, preallocated
//! write queue (TLS seals records in place into the connection's own buffer, see
//! [`TlsStream`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};

use crate::policy::QuotaTicket;
use crate::tls::{ReadStatus, TlsReloader, TlsStream};
use crate::turn::kick_job::KickJob;
use crate::turn::listing_job::{ListingFilter, ListingJob};
use crate::turn::snapshot::SavedAllocation;
use crate::turn::snapshot_job::SnapshotJob;
use crate::turn::{
    AllocationInfo, FiveTuple, IpFamily, KickTarget, MonoClock, PortError, PortRequest,
    RelayHandle, RelayPorts, Shared, Transmit, Transport, TurnConfig, TurnServer, TurnStats,
    framing,
};

/// Bytes buffered per connection for reading (one message must fit; larger frames
/// disconnect the client: TURN messages are relayed as UDP datagrams, so nothing useful
/// is that big).
pub const STREAM_READ_BYTES: usize = 16 * 1024;
/// Bytes queued per connection for writing before the client counts as too slow and is
/// disconnected (bounded memory per client). A TLS connection allocates this much
/// (ciphertext) at accept, plus [`crate::tls::TLS_IN_BYTES`] for reading; both are zeroed
/// allocations whose pages the kernel backs only once touched.
pub const STREAM_WRITE_BYTES: usize = 256 * 1024;
/// Open stream connections per worker; more are refused at accept (bounded memory).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 16 * 1024;
/// A connection must deliver its first complete message (after the TLS handshake) within
/// this time, or it is closed (no idle half-open connections holding buffers).
pub const FIRST_MESSAGE_DEADLINE: Duration = Duration::from_secs(10);
/// Connections accepted per listener readiness event (fairness).
const ACCEPT_BURST: usize = 32;
/// Backstop for reserved ports: the core releases unused reservations after its
/// `reservation_lifetime` (30 s); this only catches a token the core lost track of.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(120);
/// Random port picks before giving up with "no port".
const PORT_TRIES: usize = 64;

/// Where relayed sockets are bound.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// Relay address for IPv4 allocations (None: IPv4 relays unsupported).
    pub ipv4: Option<Ipv4Addr>,
    /// Relay address for IPv6 allocations.
    pub ipv6: Option<Ipv6Addr>,
    /// Inclusive port range.
    pub ports: (u16, u16),
}

/// Ports reserved by EVEN-PORT (R bit), by RESERVATION-TOKEN. Process-wide: the
/// allocation that claims a token usually comes from another 5-tuple, which SO_REUSEPORT
/// may hash to another worker; the claiming worker takes the socket over and arms it in
/// its own ring. Touched only on Allocate, never per packet.
///
/// It also holds the allocations restored from the state file after a restart
/// ([`Reservations::hold_restored`]): their relayed ports are bound at start, but which
/// worker receives the client's datagrams is decided by SO_REUSEPORT hashing, which the
/// daemon cannot predict. So they wait here, keyed by client 5-tuple, until the worker
/// that gets a datagram from that 5-tuple claims one (taking its sockets into its own
/// relay table and the allocation into its TURN server); peer datagrams wait in the
/// socket's buffer meanwhile. Entries nobody claims before their deadline are taken by
/// any worker's housekeeping and expire there normally (kernel rules removed, ports
/// closed). A datagram path only reads one atomic counter while the pool is empty.
#[derive(Debug, Default)]
pub struct Reservations {
    held: Mutex<HashMap<u64, (UdpSocket, Instant)>>,
    restored: Mutex<HashMap<FiveTuple, Restored>>,
    /// Entries in `restored` (read without the lock on the datagram path).
    restored_len: AtomicUsize,
    /// Claims wait until the daemon has settled the kernel side (rule indices reserved,
    /// orphans removed, or kernel state discarded).
    held_back: AtomicBool,
}

/// One restored allocation waiting in the pool: what the state file said, its quota slot
/// and its relayed sockets (bound at start, one per `saved.relayed`, in that order).
#[derive(Debug)]
pub struct Restored {
    /// The saved allocation.
    pub saved: SavedAllocation,
    /// Its quota slot.
    pub ticket: QuotaTicket,
    /// Its relayed sockets, not yet receiving.
    pub sockets: Vec<UdpSocket>,
}

/// Binds the relayed ports of saved allocations again (exact address and port) and takes
/// a quota slot for each, for [`Reservations::hold_restored`]. An allocation whose port
/// cannot be bound (taken meanwhile, address gone) or that exceeds a quota is dropped
/// with a warning; the returned list is what could be restored.
pub fn rebind_restored(
    saved: Vec<SavedAllocation>,
    quotas: &crate::policy::Quotas,
) -> Vec<Restored> {
    let mut out = Vec::with_capacity(saved.len());
    'next: for s in saved {
        let ticket = match quotas.try_acquire(crate::turn::auth::user_part(&s.username)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(user = %s.username, client = %s.client, error = %e, "restored allocation dropped: over quota");
                continue;
            }
        };
        let mut sockets = Vec::with_capacity(s.relayed.len());
        for addr in &s.relayed {
            match Relays::bind(addr.ip(), addr.port()) {
                Ok(sock) => sockets.push(sock),
                Err(e) => {
                    tracing::warn!(
                        user = %s.username,
                        client = %s.client,
                        relayed = %addr,
                        error = %e,
                        "restored allocation dropped: its relayed port cannot be bound again \
                         (its kernel rules are removed; the client must allocate anew)"
                    );
                    continue 'next;
                }
            }
        }
        out.push(Restored {
            saved: s,
            ticket,
            sockets,
        });
    }
    out
}

/// What [`Reservations::claim_restored`] found.
#[derive(Debug)]
pub(super) enum Claim {
    /// No restored allocation for that 5-tuple.
    None,
    /// There is one, but claims are held back for now: drop the datagram (the client
    /// retransmits).
    Wait,
    /// This worker takes it.
    Take(Box<Restored>),
}

impl Reservations {
    fn restored_map<T>(&self, f: impl FnOnce(&mut HashMap<FiveTuple, Restored>) -> T) -> T {
        let mut g = self
            .restored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut g);
        self.restored_len.store(g.len(), Ordering::Release);
        out
    }

    /// Puts restored allocations in the pool. With `hold_back`, nobody claims them
    /// until [`Reservations::release_restored`].
    pub fn hold_restored(&self, entries: Vec<Restored>, hold_back: bool) {
        self.held_back.store(hold_back, Ordering::Release);
        self.restored_map(|m| {
            for r in entries {
                m.insert(r.saved.tuple(), r);
            }
        });
    }

    /// Lets workers claim the restored allocations.
    pub fn release_restored(&self) {
        self.held_back.store(false, Ordering::Release);
    }

    /// Applies `f` to every restored allocation still waiting (e.g. to drop the kernel
    /// state when the kernel fast path did not come back).
    pub fn update_restored(&self, mut f: impl FnMut(&mut SavedAllocation)) {
        self.restored_map(|m| m.values_mut().for_each(|r| f(&mut r.saved)));
    }

    /// Restored allocations still waiting for their worker.
    pub fn restored_len(&self) -> usize {
        self.restored_len.load(Ordering::Acquire)
    }

    /// Copies of the restored allocations still waiting (they belong in the next
    /// snapshot too).
    pub fn restored_snapshot(&self) -> Vec<SavedAllocation> {
        self.restored_map(|m| m.values().map(|r| r.saved.clone()).collect())
    }

    /// Takes the restored allocation of `tuple`, if any and if claims are allowed.
    pub(super) fn claim_restored(&self, tuple: &FiveTuple) -> Claim {
        if self.restored_len() == 0 {
            return Claim::None;
        }
        let held_back = self.held_back.load(Ordering::Acquire);
        self.restored_map(|m| {
            if held_back {
                return if m.contains_key(tuple) {
                    Claim::Wait
                } else {
                    Claim::None
                };
            }
            m.remove(tuple)
                .map_or(Claim::None, |r| Claim::Take(Box::new(r)))
        })
    }

    /// Takes the restored allocations whose deadline is at or before `now_ns`
    /// (CLOCK_MONOTONIC).
    pub(super) fn take_expired_restored(&self, now_ns: u64) -> Vec<Restored> {
        if self.restored_len() == 0 || self.held_back.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.restored_map(|m| {
            let due: Vec<FiveTuple> = m
                .iter()
                .filter(|(_, r)| r.saved.expires_ns <= now_ns)
                .map(|(t, _)| *t)
                .collect();
            due.iter().filter_map(|t| m.remove(t)).collect()
        })
    }
}

impl Reservations {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u64, (UdpSocket, Instant)>) -> T) -> T {
        match self.held.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Number of ports currently held.
    pub fn len(&self) -> usize {
        self.with(|h| h.len())
    }

    /// Whether no port is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request from the control plane to one worker, answered within one loop iteration.
#[derive(Debug)]
pub enum WorkerCommand {
    /// The allocations of this worker matching the filter, built a slice per loop round
    /// (`turn::listing_job`).
    Allocations {
        /// Which allocations to list.
        filter: ListingFilter,
        /// Where to answer.
        reply: mpsc::Sender<Vec<AllocationInfo>>,
    },
    /// Deletes matching allocations, a slice per loop round (`turn::kick_job`); answers
    /// how many.
    Kick {
        /// What to delete.
        target: KickTarget,
        /// Where to answer.
        reply: mpsc::Sender<usize>,
    },
    /// A copy of the worker's TURN counters.
    Stats {
        /// Where to answer.
        reply: mpsc::Sender<TurnStats>,
    },
    /// The peer policy was replaced (reload): re-check every permission and channel
    /// against it; answers how many permissions were removed.
    RecheckPolicy {
        /// Where to answer.
        reply: mpsc::Sender<usize>,
    },
    /// The worker's UDP allocations for the state file (restart).
    Snapshot {
        /// Where to answer.
        reply: mpsc::Sender<Vec<SavedAllocation>>,
    },
    /// Serve UDP through AF_XDP sockets as well (`xdp.af_xdp`, io_uring backend only);
    /// answers how many sockets the worker opened, or why it could not.
    EnableXsk {
        /// What the worker needs.
        setup: Box<super::xsk_path::XskSetup>,
        /// Where to answer.
        reply: mpsc::Sender<Result<usize, String>>,
    },
}

/// An [`WorkerCommand::EnableXsk`] waiting for the backend.
pub(super) type XskRequest = (
    Box<super::xsk_path::XskSetup>,
    mpsc::Sender<Result<usize, String>>,
);

/// Everything a worker needs to serve TURN (built by [`super::Dataplane::start_turn`]).
pub struct TurnSetup {
    /// The TURN configuration.
    pub config: Arc<TurnConfig>,
    /// Credentials, peer policy and quotas shared by all workers.
    pub shared: Arc<Shared>,
    /// Where relayed sockets go.
    pub relay: RelaySpec,
    /// This worker's TCP listeners (SO_REUSEPORT copies, one per address).
    pub tcp: Vec<TcpListener>,
    /// This worker's TLS listeners.
    pub tls: Vec<TcpListener>,
    /// The TLS config (required when `tls` is not empty).
    pub tls_config: Option<Arc<TlsReloader>>,
    /// Control-plane requests.
    pub commands: mpsc::Receiver<WorkerCommand>,
    /// Reserved ports, shared by all workers.
    pub reservations: Arc<Reservations>,
}

/// A backend operation the shared code asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Start receiving on relayed socket `handle`.
    ArmRelay(RelayHandle, RawFd),
    /// Stop receiving on it; call [`Relays::finish_close`] once nothing references it.
    CancelRelay(RelayHandle),
    /// Watch connection `token` for readability (and keep watching).
    WatchConn(u64, RawFd),
    /// Connection `token` has queued output: tell when it is writable.
    WantWrite(u64, RawFd),
    /// Stop watching connection `token` (it is closed already).
    UnwatchConn(u64),
}

/// How a backend sends one UDP datagram (copying `bytes`). Returns false if it was
/// dropped (no slot, queue full, send error); the backend counts why.
pub(super) trait UdpSend {
    /// `from`: source address to send from (a wildcard listen socket), else None.
    fn send(&mut self, fd: RawFd, to: SocketAddr, from: Option<IpAddr>, bytes: &[u8]) -> bool;

    /// [`UdpSend::send`] with the datagram's full source address (`local`: the listen
    /// address it answers on, or the relayed address), for a backend that builds the
    /// frame itself (AF_XDP) instead of handing it to the socket `fd`.
    #[inline]
    fn send_from(
        &mut self,
        fd: RawFd,
        local: SocketAddr,
        to: SocketAddr,
        from: Option<IpAddr>,
        bytes: &[u8],
    ) -> bool {
        let _ = local;
        self.send(fd, to, from, bytes)
    }
}

/// Called with (port, live) when a relayed port opens (true) or starts closing (false):
/// the AF_XDP path tells the XDP program which worker owns the port.
pub(super) type PortHook = Box<dyn FnMut(u16, bool) + Send>;

/// No relayed port in the index.
const NO_RELAY: u32 = u32::MAX;

// ---------------------------------------------------------------------------------------
// Relayed sockets

enum RelayState {
    Live,
    Closing,
}

struct Relay {
    socket: UdpSocket,
    /// The relayed transport address (the socket's local address).
    local: SocketAddr,
    generation: u16,
    state: RelayState,
}

/// The relayed sockets of one worker, by handle (`generation << 16 | index`).
pub(super) struct Relays {
    spec: RelaySpec,
    slots: Vec<Option<Relay>>,
    generations: Vec<u16>,
    free: Vec<u16>,
    reservations: Arc<Reservations>,
    rng: u64,
    ops: Vec<Op>,
    /// Relayed port → handle, kept only for the AF_XDP path (whose frames name the port,
    /// not a socket): 65 536 entries, [`NO_RELAY`] where no live relay has the port.
    by_port: Option<Box<[u32]>>,
    port_hook: Option<PortHook>,
}

impl Relays {
    pub(super) fn new(spec: RelaySpec, reservations: Arc<Reservations>, seed: u64) -> Self {
        Relays {
            spec,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            reservations,
            rng: seed | 1,
            ops: Vec::with_capacity(64),
            by_port: None,
            port_hook: None,
        }
    }

    /// Starts keeping the port index (AF_XDP path), calling `hook` for every relayed port
    /// that opens or closes from now on and for those already open.
    pub(super) fn index_ports(&mut self, mut hook: PortHook) {
        let mut index = vec![NO_RELAY; 1 << 16].into_boxed_slice();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(r) = s
                && matches!(r.state, RelayState::Live)
            {
                index[usize::from(r.local.port())] = (u32::from(r.generation) << 16) | i as u32;
                hook(r.local.port(), true);
            }
        }
        self.by_port = Some(index);
        self.port_hook = Some(hook);
    }

    /// The handle registered for `port` (AF_XDP path), without checking the relay
    /// behind it: for prefetch hints, which must not wait on the relay's slot.
    #[inline]
    pub(super) fn handle_by_port(&self, port: u16) -> Option<RelayHandle> {
        let h = *self.by_port.as_ref()?.get(usize::from(port))?;
        (h != NO_RELAY).then_some(h)
    }

    /// The live relay on `port` (AF_XDP path) and its relayed address.
    #[inline]
    pub(super) fn by_port(&self, port: u16) -> Option<(RelayHandle, SocketAddr)> {
        let h = self.handle_by_port(port)?;
        self.local(h).map(|(_, local)| (h, local))
    }

    /// The socket of a live relay and its relayed address.
    #[inline]
    pub(super) fn local(&self, handle: RelayHandle) -> Option<(RawFd, SocketAddr)> {
        let index = (handle & 0xFFFF) as usize;
        match self.slots.get(index) {
            Some(Some(r)) if u32::from(r.generation) == handle >> 16 => {
                matches!(r.state, RelayState::Live).then(|| (r.socket.as_raw_fd(), r.local))
            }
            _ => None,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: port choice only needs to be spread, not secret.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The socket of a live relay.
    #[inline]
    pub(super) fn fd(&self, handle: RelayHandle) -> Option<RawFd> {
        let index = (handle & 0xFFFF) as usize;
        match self.slots.get(index) {
            Some(Some(r)) if u32::from(r.generation) == handle >> 16 => {
                matches!(r.state, RelayState::Live).then(|| r.socket.as_raw_fd())
            }
            _ => None,
        }
    }

    /// Whether `handle` names a slot that is still occupied (live or closing).
    #[inline]
    pub(super) fn is_current(&self, handle: RelayHandle) -> bool {
        let index = (handle & 0xFFFF) as usize;
        matches!(self.slots.get(index), Some(Some(r)) if u32::from(r.generation) == handle >> 16)
    }

    /// Frees the slot of a relay whose receive is gone.
    pub(super) fn finish_close(&mut self, handle: RelayHandle) {
        let index = (handle & 0xFFFF) as usize;
        if self.is_current(handle)
            && let Some(slot) = self.slots.get_mut(index)
        {
            *slot = None;
            self.free.push(index as u16);
        }
    }

    /// Takes the queued backend operations (into `out`, reusing its capacity).
    pub(super) fn take_ops(&mut self, out: &mut Vec<Op>) {
        out.append(&mut self.ops);
    }

    /// Live relays (handle, fd): for backends that rebuild a watch list.
    pub(super) fn live(&self) -> impl Iterator<Item = (RelayHandle, RawFd)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Some(r) if matches!(r.state, RelayState::Live) => Some((
                (u32::from(r.generation) << 16) | i as u32,
                r.socket.as_raw_fd(),
            )),
            _ => None,
        })
    }

    /// Drops reservations whose token was not used in time.
    pub(super) fn expire_reservations(&mut self, now: Instant) {
        self.reservations.with(|h| {
            if !h.is_empty() {
                h.retain(|_, (_, until)| *until > now);
            }
        });
    }

    fn bind(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
        let addr = SocketAddr::new(ip, port);
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // No SO_REUSEPORT: a relayed port belongs to exactly one allocation.
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    }

    fn pick(&mut self, ip: IpAddr, even: bool) -> Result<(UdpSocket, u16), PortError> {
        let (lo, hi) = self.spec.ports;
        let span = u64::from(hi - lo) + 1;
        for _ in 0..PORT_TRIES {
            let mut port = lo as u64 + self.next_random() % span;
            if even {
                port &= !1;
                if port < u64::from(lo) {
                    port += 2;
                }
                // EVEN-PORT with R bit needs port + 1 in range too; the caller checks.
            }
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if port > hi {
                continue;
            }
            match Self::bind(ip, port) {
                Ok(s) => return Ok((s, port)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    tracing::warn!(%ip, port, error = %e, "cannot bind a relayed socket");
                    return Err(PortError::Io(e.kind()));
                }
            }
        }
        Err(PortError::Exhausted)
    }

    fn insert(&mut self, socket: UdpSocket) -> Result<RelayHandle, PortError> {
        let local = socket.local_addr().map_err(|e| PortError::Io(e.kind()))?;
        let index = match self.free.pop() {
            Some(i) => usize::from(i),
            None => {
                if self.slots.len() > usize::from(u16::MAX) {
                    return Err(PortError::Exhausted);
                }
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        let generation = self.generations[index].wrapping_add(1);
        self.generations[index] = generation;
        let fd = socket.as_raw_fd();
        self.slots[index] = Some(Relay {
            socket,
            local,
            generation,
            state: RelayState::Live,
        });
        let handle = (u32::from(generation) << 16) | index as u32;
        if let Some(by_port) = self.by_port.as_mut() {
            by_port[usize::from(local.port())] = handle;
            if let Some(hook) = self.port_hook.as_mut() {
                hook(local.port(), true);
            }
        }
        self.ops.push(Op::ArmRelay(handle, fd));
        Ok(handle)
    }

    fn random_token(&mut self) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: writes at most 8 bytes into `b`.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
        if n == 8 {
            u64::from_ne_bytes(b)
        } else {
            self.next_random()
        }
    }

    fn open(
        &mut self,
        family: IpFamily,
        req: PortRequest,
    ) -> Result<(RelayHandle, SocketAddr, Option<u64>), PortError> {
        if let PortRequest::Reserved(token) = req {
            let Some((socket, _)) = self.reservations.with(|h| h.remove(&token)) else {
                return Err(PortError::UnknownToken);
            };
            let local = socket.local_addr().map_err(|e| PortError::Io(e.kind()))?;
            let handle = self.insert(socket)?;
            return Ok((handle, local, None));
        }
        let ip: IpAddr = match family {
            IpFamily::V4 => self.spec.ipv4.map(IpAddr::V4),
            IpFamily::V6 => self.spec.ipv6.map(IpAddr::V6),
        }
        .ok_or(PortError::FamilyUnsupported)?;
        let (socket, port, token) = match req {
            PortRequest::Any => {
                let (s, p) = self.pick(ip, false)?;
                (s, p, None)
            }
            PortRequest::Even {
                reserve_next: false,
            } => {
                let (s, p) = self.pick(ip, true)?;
                (s, p, None)
            }
            PortRequest::Even { reserve_next: true } => {
                let mut found = None;
                for _ in 0..PORT_TRIES {
                    let (s, p) = self.pick(ip, true)?;
                    if p >= self.spec.ports.1 {
                        continue;
                    }
                    if let Ok(next) = Self::bind(ip, p + 1) {
                        found = Some((s, p, next));
                        break;
                    }
                }
                let (s, p, next) = found.ok_or(PortError::Exhausted)?;
                let token = self.random_token();
                let until = Instant::now() + RESERVATION_LIFETIME;
                self.reservations.with(|h| h.insert(token, (next, until)));
                (s, p, Some(token))
            }
            PortRequest::Reserved(_) => return Err(PortError::UnknownToken),
        };
        let handle = self.insert(socket)?;
        Ok((handle, SocketAddr::new(ip, port), token))
    }

    fn close(&mut self, handle: RelayHandle) {
        let index = (handle & 0xFFFF) as usize;
        if let Some(Some(r)) = self.slots.get_mut(index)
            && u32::from(r.generation) == handle >> 16
            && matches!(r.state, RelayState::Live)
        {
            r.state = RelayState::Closing;
            self.ops.push(Op::CancelRelay(handle));
            let port = r.local.port();
            if let Some(by_port) = self.by_port.as_mut()
                && by_port[usize::from(port)] == handle
            {
                by_port[usize::from(port)] = NO_RELAY;
                if let Some(hook) = self.port_hook.as_mut() {
                    hook(port, false);
                }
            }
        }
    }
}

/// [`RelayPorts`] over the shared relay table.
pub(super) struct Ports<'a>(pub(super) &'a RefCell<Relays>);

impl RelayPorts for Ports<'_> {
    fn open(
        &mut self,
        family: IpFamily,
        req: PortRequest,
    ) -> Result<(RelayHandle, SocketAddr, Option<u64>), PortError> {
        self.0.borrow_mut().open(family, req)
    }

    fn close(&mut self, relay: RelayHandle) {
        self.0.borrow_mut().close(relay);
    }

    fn release_reservation(&mut self, token: u64) {
        // Idempotent: a claimed or already released token is simply absent.
        self.0.borrow().reservations.with(|h| h.remove(&token));
    }

    fn set_dont_fragment(&mut self, relay: RelayHandle) -> bool {
        let Some(fd) = self.0.borrow().fd(relay) else {
            return false;
        };
        set_dont_fragment(fd)
    }
}

/// The path-MTU-discovery socket option of `fd`'s family: (level, option, "do" value).
fn mtu_discover_option(fd: RawFd) -> Option<(libc::c_int, libc::c_int, libc::c_int)> {
    let mut name: libc::sockaddr_in6 = unsafe_zeroed_sockaddr();
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `name` is a writable sockaddr_in6 of `len` bytes.
    let r = unsafe { libc::getsockname(fd, std::ptr::from_mut(&mut name).cast(), &mut len) };
    if r != 0 {
        return None;
    }
    Some(if i32::from(name.sin6_family) == libc::AF_INET6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    })
}

fn set_int_option(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: passes a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

fn int_option(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable c_int and `len` says so.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(value)
}

/// Sets the Don't Fragment bit on everything `fd` sends (path MTU discovery "do").
fn set_dont_fragment(fd: RawFd) -> bool {
    mtu_discover_option(fd).is_some_and(|(level, opt, on)| set_int_option(fd, level, opt, on))
}

/// Sends one datagram from `fd` to `to` with the Don't Fragment bit, leaving the socket's
/// own setting as it was: path MTU discovery is a per-socket option in Linux (no per-message
/// control for IPv4), so it is switched to "do" around a direct `sendto`. Only Send
/// indications carrying DONT-FRAGMENT take this path (rare; three syscalls). A datagram too
/// large for the path is dropped (EMSGSIZE), as DF asks. The datagram may overtake sends
/// still queued in the backend's batch: UDP promises no order.
fn send_dont_fragment(fd: RawFd, to: SocketAddr, bytes: &[u8]) -> bool {
    let Some((level, opt, on)) = mtu_discover_option(fd) else {
        return false;
    };
    let Some(before) = int_option(fd, level, opt) else {
        return false;
    };
    if before != on && !set_int_option(fd, level, opt, on) {
        return false;
    }
    let mut storage = unsafe_zeroed_sockaddr();
    let len = super::socket::encode_sockaddr(&to, &mut storage);
    // SAFETY: `bytes` is a readable slice; `storage` holds a socket address of `len` bytes.
    let sent = unsafe {
        libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            std::ptr::from_ref(&storage).cast(),
            len,
        )
    };
    if before != on {
        set_int_option(fd, level, opt, before);
    }
    sent >= 0
}

fn unsafe_zeroed_sockaddr() -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

// ---------------------------------------------------------------------------------------
// Stream connections

/// One TCP or TLS client connection.
struct Conn {
    stream: TcpStream,
    tuple: FiveTuple,
    tls: Option<Box<TlsStream>>,
    rbuf: Box<[u8]>,
    rlen: usize,
    wq: VecDeque<u8>,
    generation: u32,
    /// A writability watch is armed (io_uring) / wanted (portable).
    want_write: bool,
    /// When it was accepted.
    accepted: Instant,
    /// When bytes last arrived.
    last_rx: Instant,
    /// Whether a complete message arrived yet.
    spoke: bool,
}

/// Connection tokens: `generation << 24 | index`.
const CONN_INDEX_BITS: u32 = 24;
const CONN_INDEX_MASK: u64 = (1 << CONN_INDEX_BITS) - 1;

/// The stream connections of one worker.
pub(super) struct Streams {
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    by_tuple: HashMap<FiveTuple, u64>,
    /// Connections to close after the current call into the TURN core returns.
    doomed: Vec<u64>,
    ops: Vec<Op>,
}

impl Streams {
    pub(super) fn new() -> Self {
        Streams {
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::new(),
            doomed: Vec::with_capacity(16),
            ops: Vec::with_capacity(64),
        }
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut Conn> {
        conn_mut(&mut self.conns, token)
    }

    /// Takes the queued backend operations.
    pub(super) fn take_ops(&mut self, out: &mut Vec<Op>) {
        out.append(&mut self.ops);
    }

    /// Live connections (token, fd, wants POLLOUT): for backends that rebuild a watch list.
    pub(super) fn live(&self) -> impl Iterator<Item = (u64, RawFd, bool)> + '_ {
        self.conns.iter().enumerate().filter_map(|(i, c)| {
            c.as_ref().map(|c| {
                let token = (u64::from(c.generation) << CONN_INDEX_BITS) | i as u64;
                (token, c.stream.as_raw_fd(), c.want_write)
            })
        })
    }

    fn add(&mut self, conn: Conn) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            }
        };
        let generation = self.generations[index].wrapping_add(1) & 0xFF_FFFF;
        self.generations[index] = generation;
        let token = (u64::from(generation) << CONN_INDEX_BITS) | index as u64;
        let fd = conn.stream.as_raw_fd();
        self.by_tuple.insert(conn.tuple, token);
        self.conns[index] = Some(Conn { generation, ..conn });
        self.ops.push(Op::WatchConn(token, fd));
        token
    }

    /// Removes a connection; returns its 5-tuple. The socket is shut down and closed.
    fn remove(&mut self, token: u64) -> Option<FiveTuple> {
        let index = (token & CONN_INDEX_MASK) as usize;
        let slot = self.conns.get_mut(index)?;
        match slot {
            Some(c) if u64::from(c.generation) == token >> CONN_INDEX_BITS => {}
            _ => return None,
        }
        let mut conn = slot.take()?;
        if let Some(tls) = &mut conn.tls {
            // Best effort: tell a TLS client we are closing on purpose.
            tls.close(&mut &conn.stream);
        }
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        self.by_tuple.remove(&conn.tuple);
        self.free.push(index as u32);
        self.ops.push(Op::UnwatchConn(token));
        Some(conn.tuple)
    }

    /// Queues `bytes` (one whole message) for the client of `tuple`; a client whose
    /// queue would overflow is marked for disconnection.
    fn write(&mut self, tuple: &FiveTuple, bytes: &[u8]) -> bool {
        let Some(&token) = self.by_tuple.get(tuple) else {
            return false;
        };
        let Some(conn) = conn_mut(&mut self.conns, token) else {
            return false;
        };
        let ok = match &mut conn.tls {
            // Sealed into the connection's bounded buffer; false when it is full.
            Some(tls) => tls.write(bytes),
            None => {
                if conn.wq.is_empty() {
                    match (&conn.stream).write(bytes) {
                        Ok(n) if n == bytes.len() => return true,
                        Ok(n) => enqueue(&mut conn.wq, &bytes[n..]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            enqueue(&mut conn.wq, bytes)
                        }
                        Err(_) => false,
                    }
                } else {
                    enqueue(&mut conn.wq, bytes)
                }
            }
        };
        if !ok {
            tracing::debug!(client = %tuple.client, "stream client too slow or gone; disconnecting");
            self.doomed.push(token);
            return false;
        }
        let flushed = flush(conn);
        match flushed {
            Ok(true) => {}
            Ok(false) => {
                if !conn.want_write {
                    conn.want_write = true;
                    self.ops.push(Op::WantWrite(token, conn.stream.as_raw_fd()));
                }
            }
            Err(_) => self.doomed.push(token),
        }
        true
    }
}

fn conn_mut(conns: &mut [Option<Conn>], token: u64) -> Option<&mut Conn> {
    let index = (token & CONN_INDEX_MASK) as usize;
    match conns.get_mut(index) {
        Some(Some(c)) if u64::from(c.generation) == token >> CONN_INDEX_BITS => Some(c),
        _ => None,
    }
}

fn enqueue(wq: &mut VecDeque<u8>, bytes: &[u8]) -> bool {
    if wq.len() + bytes.len() > STREAM_WRITE_BYTES {
        return false;
    }
    wq.extend(bytes);
    true
}

/// Writes what is queued; Ok(true) when nothing is left.
fn flush(conn: &mut Conn) -> io::Result<bool> {
    match &mut conn.tls {
        Some(tls) => tls.flush(&mut &conn.stream),
        None => {
            while !conn.wq.is_empty() {
                let (a, _) = conn.wq.as_slices();
                match (&conn.stream).write(a) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        conn.wq.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Transmit

/// [`Transmit`] for one call into the TURN core.
pub(super) struct Tx<'a, S> {
    pub(super) udp: &'a mut S,
    /// Listen UDP sockets: (local address, fd).
    pub(super) listen: &'a [(SocketAddr, RawFd)],
    pub(super) relays: &'a RefCell<Relays>,
    pub(super) streams: &'a RefCell<Streams>,
}

impl<S: UdpSend> Transmit for Tx<'_, S> {
    #[inline]
    fn to_client(&mut self, tuple: &FiveTuple, bytes: &[u8]) {
        match tuple.transport {
            Transport::Udp => {
                if let Some((fd, from)) = listen_socket_for(self.listen, tuple.server) {
                    self.udp
                        .send_from(fd, tuple.server, tuple.client, from, bytes);
                }
            }
            Transport::Tcp | Transport::Tls => {
                self.streams.borrow_mut().write(tuple, bytes);
            }
        }
    }

    #[inline]
    fn to_peer(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        let socket = self.relays.borrow().local(relay);
        if let Some((fd, local)) = socket {
            self.udp.send_from(fd, local, peer, None, bytes);
        }
    }

    fn to_peer_dont_fragment(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        let fd = self.relays.borrow().fd(relay);
        if let Some(fd) = fd {
            send_dont_fragment(fd, peer, bytes);
        }
    }
}

/// The listen socket serving `server` and, for a wildcard socket, the source address to
/// send from.
#[inline]
fn listen_socket_for(
    listen: &[(SocketAddr, RawFd)],
    server: SocketAddr,
) -> Option<(RawFd, Option<IpAddr>)> {
    if let Some(&(_, fd)) = listen.iter().find(|(a, _)| *a == server) {
        return Some((fd, None));
    }
    listen
        .iter()
        .find(|(a, _)| {
            a.ip().is_unspecified() && a.port() == server.port() && a.is_ipv4() == server.is_ipv4()
        })
        .map(|&(_, fd)| (fd, (!server.ip().is_unspecified()).then_some(server.ip())))
}

// ---------------------------------------------------------------------------------------
// The per-worker TURN state

/// A stream listener of this worker.
pub(super) struct Listener {
    pub(super) socket: TcpListener,
    pub(super) transport: Transport,
    pub(super) local: SocketAddr,
}

/// One worker's TURN server and the IO state around it.
pub(super) struct TurnIo {
    pub(super) server: TurnServer,
    pub(super) relays: RefCell<Relays>,
    pub(super) streams: RefCell<Streams>,
    pub(super) listeners: Vec<Listener>,
    tls: Option<Arc<TlsReloader>>,
    commands: mpsc::Receiver<WorkerCommand>,
    /// Listen UDP sockets (local address, fd).
    pub(super) listen: Vec<(SocketAddr, RawFd)>,
    ops: Vec<Op>,
    /// Connections that may have more to read than one readiness event handled.
    pending_read: Vec<u64>,
    pending_swap: Vec<u64>,
    /// Listeners that had more waiting connections than one burst accepted.
    pending_accept: Vec<usize>,
    scratch: Box<[u8]>,
    last_sweep: Instant,
    pub(super) now: Instant,
    pub(super) wall: SystemTime,
    /// A connection silent this long is closed: longer than any allocation lifetime, so
    /// a client that keeps its allocation refreshed never hits it.
    idle_limit: Duration,
    refused_logged: Instant,
    /// Reserved ports and restored allocations, shared by all workers.
    pool: Arc<Reservations>,
    /// `Instant` ↔ CLOCK_MONOTONIC, for snapshots and restored deadlines.
    clock: MonoClock,
    /// Whether the backend can serve AF_XDP sockets (io_uring).
    pub(super) xsk_capable: bool,
    xsk_request: Option<XskRequest>,
    /// The state snapshot being taken, and who waits for it.
    snapshot: Option<(SnapshotJob, Vec<mpsc::Sender<Vec<SavedAllocation>>>)>,
    /// Listings being built (the first one advances), and who waits for each.
    listings: VecDeque<(ListingJob, mpsc::Sender<Vec<AllocationInfo>>)>,
    /// Kicks in progress (the first one advances), and who waits for each.
    kicks: VecDeque<(KickJob, mpsc::Sender<usize>)>,
    /// The kicked clients' 5-tuples of the current slice (reused).
    kicked: Vec<FiveTuple>,
}

/// Allocations a state snapshot in progress takes per loop round: about half a
/// millisecond of work (2 µs each were measured with 10 000 allocations), so a save never
/// holds up the packets for long (`turn::snapshot_job`).
const SNAPSHOT_SLICE: usize = 256;

/// Allocations a listing in progress looks at per loop round: a row costs about what a
/// snapshot record does (`turn::listing_job`), so the same bound.
const LISTING_SLICE: usize = SNAPSHOT_SLICE;

/// Allocations a kick in progress deletes per loop round: about 0.5 µs each in
/// userspace, plus 0.36 µs per channel with kernel rules, up to 5.5 µs while the slot
/// tables shrink (`turn::kick_job`); 64 keep a round within the half millisecond of a
/// snapshot slice even then.
const KICK_SLICE: usize = 64;

impl TurnIo {
    pub(super) fn new(
        index: usize,
        setup: TurnSetup,
        listen: Vec<(SocketAddr, RawFd)>,
    ) -> io::Result<Self> {
        let mut listeners = Vec::new();
        for (list, transport) in [(setup.tcp, Transport::Tcp), (setup.tls, Transport::Tls)] {
            for socket in list {
                socket.set_nonblocking(true)?;
                let local = socket.local_addr()?;
                listeners.push(Listener {
                    socket,
                    transport,
                    local,
                });
            }
        }
        if listeners.iter().any(|l| l.transport == Transport::Tls) && setup.tls_config.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS listeners need a certificate (turn.tls_cert / turn.tls_key)",
            ));
        }
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((index as u64) << 48);
        let idle_limit = setup.config.max_lifetime + Duration::from_secs(60);
        let clock = crate::xdp::rules::monotonic_anchor().map_err(io::Error::other)?;
        Ok(TurnIo {
            pool: setup.reservations.clone(),
            clock,
            idle_limit,
            refused_logged: Instant::now() - Duration::from_secs(60),
            server: TurnServer::new(setup.config, setup.shared),
            relays: RefCell::new(Relays::new(setup.relay, setup.reservations, seed)),
            streams: RefCell::new(Streams::new()),
            listeners,
            tls: setup.tls_config,
            commands: setup.commands,
            listen,
            ops: Vec::with_capacity(64),
            pending_read: Vec::with_capacity(64),
            pending_swap: Vec::with_capacity(64),
            pending_accept: Vec::new(),
            scratch: vec![0u8; STREAM_READ_BYTES].into_boxed_slice(),
            last_sweep: Instant::now(),
            now: Instant::now(),
            wall: SystemTime::now(),
            xsk_capable: false,
            xsk_request: None,
            snapshot: None,
            listings: VecDeque::new(),
            kicks: VecDeque::new(),
            kicked: Vec::new(),
        })
    }

    /// A pending request to open AF_XDP sockets, for the backend.
    pub(super) fn take_xsk_request(&mut self) -> Option<XskRequest> {
        self.xsk_request.take()
    }

    /// The listen socket index serving UDP destination `dst` (AF_XDP frames name the
    /// address, not the socket).
    #[inline]
    pub(super) fn listen_index_for(&self, dst: SocketAddr) -> Option<usize> {
        self.listen.iter().position(|(a, _)| *a == dst).or_else(|| {
            self.listen.iter().position(|(a, _)| {
                a.ip().is_unspecified() && a.port() == dst.port() && a.is_ipv4() == dst.is_ipv4()
            })
        })
    }

    /// Reads the clocks once per loop iteration.
    #[inline]
    pub(super) fn tick_clock(&mut self) {
        self.now = Instant::now();
        self.wall = SystemTime::now();
    }

    /// A datagram from a client on listen socket `listen_index`; `destination` is the
    /// address it was sent to when the socket is a wildcard (IP_PKTINFO).
    #[inline]
    pub(super) fn on_client_datagram<S: UdpSend>(
        &mut self,
        udp: &mut S,
        listen_index: usize,
        source: SocketAddr,
        destination: Option<IpAddr>,
        bytes: &[u8],
    ) {
        let Some(tuple) = self.client_tuple(listen_index, source, destination) else {
            return;
        };
        if self.pool.restored_len() != 0 && !self.server.has_allocation(&tuple) {
            match self.pool.claim_restored(&tuple) {
                Claim::None => {}
                Claim::Wait => return,
                Claim::Take(r) => self.adopt_restored(*r),
            }
        }
        let mut ports = Ports(&self.relays);
        let mut tx = Tx {
            udp,
            listen: &self.listen,
            relays: &self.relays,
            streams: &self.streams,
        };
        self.server
            .on_client(&tuple, bytes, self.now, self.wall, &mut ports, &mut tx);
        self.after_call();
    }

    /// Starts loading what handling a UDP datagram from `source` to `destination` will
    /// touch first (the forwarding entry), for the first pass over an AF_XDP batch.
    /// Changes nothing; a datagram for no address of ours costs a failed lookup.
    #[inline]
    pub(super) fn prefetch_datagram(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) {
        if let Some(i) = self.listen_index_for(destination) {
            if let Some(tuple) = self.client_tuple(i, source, Some(destination.ip())) {
                self.server.prefetch_client(&tuple, bytes);
            }
        } else if let Some(h) = self.relays.borrow().handle_by_port(destination.port()) {
            self.server.prefetch_peer(h, source);
        }
    }

    /// The 5-tuple of a UDP datagram from `source` to listen socket `listen_index`; a
    /// wildcard listen address takes the datagram's `destination` when it is known.
    #[inline]
    fn client_tuple(
        &self,
        listen_index: usize,
        source: SocketAddr,
        destination: Option<IpAddr>,
    ) -> Option<FiveTuple> {
        let &(mut server, _) = self.listen.get(listen_index)?;
        if let Some(ip) = destination
            && server.ip().is_unspecified()
        {
            server.set_ip(ip);
        }
        Some(FiveTuple {
            client: source,
            server,
            transport: Transport::Udp,
        })
    }

    /// A datagram from a peer on relayed socket `relay`.
    #[inline]
    pub(super) fn on_peer_datagram<S: UdpSend>(
        &mut self,
        udp: &mut S,
        relay: RelayHandle,
        source: SocketAddr,
        bytes: &[u8],
    ) {
        if self.relays.borrow().fd(relay).is_none() {
            return;
        }
        let mut tx = Tx {
            udp,
            listen: &self.listen,
            relays: &self.relays,
            streams: &self.streams,
        };
        self.server.on_peer(relay, source, bytes, self.now, &mut tx);
        self.after_call();
    }

    /// Takes a restored allocation into this worker: its sockets into the relay table
    /// (armed by the backend with the next operations), the allocation into the server.
    fn adopt_restored(&mut self, r: Restored) {
        let Restored {
            saved,
            ticket,
            sockets,
        } = r;
        let mut relays = Vec::with_capacity(sockets.len());
        for (socket, addr) in sockets.into_iter().zip(&saved.relayed) {
            match self.relays.borrow_mut().insert(socket) {
                Ok(h) => relays.push((h, *addr)),
                Err(e) => {
                    tracing::warn!(client = %saved.client, error = %e, "no relay slot for a restored allocation; dropped");
                }
            }
        }
        let restored = if relays.len() == saved.relayed.len() {
            self.server
                .restore(&saved, ticket, &relays, &self.clock, self.now)
                .map_err(|e| e.to_string())
        } else {
            Err("relay slots exhausted".to_owned())
        };
        match restored {
            Ok(()) => {
                tracing::info!(user = %saved.username, client = %saved.client, relayed = ?saved.relayed, "restored allocation taken over by this worker");
            }
            Err(e) => {
                tracing::warn!(client = %saved.client, error = %e, "cannot restore an allocation; dropped");
                let mut ports = Ports(&self.relays);
                for (h, _) in relays {
                    ports.close(h);
                }
            }
        }
    }

    /// Closes connections the last call marked as doomed.
    fn after_call(&mut self) {
        loop {
            let token = self.streams.borrow_mut().doomed.pop();
            let Some(token) = token else { break };
            self.close_conn(token);
        }
    }

    fn close_conn(&mut self, token: u64) {
        let tuple = self.streams.borrow_mut().remove(token);
        if let Some(tuple) = tuple {
            let mut ports = Ports(&self.relays);
            self.server.on_client_closed(&tuple, &mut ports);
        }
    }

    /// Listener `i` is readable: accept what is waiting.
    pub(super) fn on_accept(&mut self, i: usize) {
        for round in 0..=ACCEPT_BURST {
            if round == ACCEPT_BURST {
                // More may be waiting; readiness is edge-like: come back next iteration.
                if !self.pending_accept.contains(&i) {
                    self.pending_accept.push(i);
                }
                return;
            }
            let Some(l) = self.listeners.get(i) else {
                return;
            };
            let (stream, client) = match l.socket.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: say so and try again at the next readiness.
                    tracing::warn!(listen = %l.local, error = %e, "accept failed");
                    return;
                }
            };
            let transport = l.transport;
            if self.streams.borrow().by_tuple.len() >= MAX_CONNECTIONS_PER_WORKER {
                if self.now.duration_since(self.refused_logged) >= Duration::from_secs(10) {
                    self.refused_logged = self.now;
                    tracing::warn!(
                        %client,
                        limit = MAX_CONNECTIONS_PER_WORKER,
                        "too many TCP/TLS clients on this worker; refusing new connections"
                    );
                }
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let server = stream.local_addr().unwrap_or(l.local);
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let tls = if transport == Transport::Tls {
                let Some(cfg) = &self.tls else { continue };
                match TlsStream::new(cfg.current(), STREAM_WRITE_BYTES) {
                    Ok(c) => Some(Box::new(c)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a TLS session");
                        continue;
                    }
                }
            } else {
                None
            };
            let conn = Conn {
                stream,
                tuple: FiveTuple {
                    client,
                    server,
                    transport,
                },
                tls,
                rbuf: vec![0u8; STREAM_READ_BYTES].into_boxed_slice(),
                rlen: 0,
                wq: VecDeque::with_capacity(4096),
                generation: 0,
                want_write: false,
                accepted: self.now,
                last_rx: self.now,
                spoke: false,
            };
            tracing::debug!(%client, %server, ?transport, "stream client connected");
            self.streams.borrow_mut().add(conn);
        }
    }

    /// Connection `token` is writable.
    pub(super) fn on_writable(&mut self, token: u64) {
        let mut guard = self.streams.borrow_mut();
        let streams = &mut *guard;
        let Some(conn) = conn_mut(&mut streams.conns, token) else {
            return;
        };
        conn.want_write = false;
        match flush(conn) {
            Ok(true) => {}
            Ok(false) => {
                conn.want_write = true;
                let fd = conn.stream.as_raw_fd();
                streams.ops.push(Op::WantWrite(token, fd));
            }
            Err(_) => streams.doomed.push(token),
        }
        drop(guard);
        self.after_call();
    }

    /// Whether connection `token` has output waiting for writability.
    pub(super) fn conn_wants_write(&self, token: u64) -> bool {
        let mut streams = self.streams.borrow_mut();
        streams.get_mut(token).is_some_and(|c| c.want_write)
    }

    /// The socket of connection `token`, if it is open.
    pub(super) fn conn_fd(&self, token: u64) -> Option<RawFd> {
        let mut streams = self.streams.borrow_mut();
        streams.get_mut(token).map(|c| c.stream.as_raw_fd())
    }

    /// Continues reading connections that had more than one round's worth (readiness
    /// events are edge-like: nothing else would wake us for the rest).
    pub(super) fn retry_pending<S: UdpSend>(&mut self, udp: &mut S) {
        if !self.pending_accept.is_empty() {
            let list = std::mem::take(&mut self.pending_accept);
            for i in list {
                self.on_accept(i);
            }
        }
        if self.pending_read.is_empty() {
            return;
        }
        std::mem::swap(&mut self.pending_read, &mut self.pending_swap);
        let mut list = std::mem::take(&mut self.pending_swap);
        for token in list.drain(..) {
            self.on_readable(udp, token);
        }
        self.pending_swap = list;
    }

    /// Whether some connection waits in [`TurnIo::retry_pending`] (the loop should not
    /// block).
    pub(super) fn has_pending(&self) -> bool {
        !self.pending_read.is_empty()
            || !self.pending_accept.is_empty()
            || self.snapshot.is_some()
            || !self.listings.is_empty()
            || !self.kicks.is_empty()
    }

    /// Connection `token` is readable: read, cut into messages, hand them to the core.
    pub(super) fn on_readable<S: UdpSend>(&mut self, udp: &mut S, token: u64) {
        // Bounded: one socket read per round, a few rounds; the rest next iteration.
        for round in 0..16 {
            if round == 15 {
                if !self.pending_read.contains(&token) {
                    self.pending_read.push(token);
                }
                return;
            }
            let now = self.now;
            let (tuple, got) = {
                let mut streams = self.streams.borrow_mut();
                let Some(conn) = streams.get_mut(token) else {
                    return;
                };
                let tuple = conn.tuple;
                let got = read_some(conn);
                if matches!(got, Ok(ReadOutcome::Data(_))) {
                    conn.last_rx = now;
                }
                (tuple, got)
            };
            let more = match got {
                Ok(ReadOutcome::Data(more)) => more,
                Ok(ReadOutcome::Eof) | Err(_) => {
                    self.streams.borrow_mut().doomed.push(token);
                    self.after_call();
                    return;
                }
            };
            if !self.process_frames(udp, token, &tuple) {
                self.streams.borrow_mut().doomed.push(token);
                self.after_call();
                return;
            }
            self.after_call();
            // TLS may have produced handshake bytes to send.
            {
                let mut guard = self.streams.borrow_mut();
                let streams = &mut *guard;
                if let Some(conn) = conn_mut(&mut streams.conns, token)
                    && conn.tls.is_some()
                {
                    match flush(conn) {
                        Ok(true) => {}
                        Ok(false) => {
                            if !conn.want_write {
                                conn.want_write = true;
                                let fd = conn.stream.as_raw_fd();
                                streams.ops.push(Op::WantWrite(token, fd));
                            }
                        }
                        Err(_) => streams.doomed.push(token),
                    }
                }
            }
            self.after_call();
            if !more {
                return;
            }
        }
    }

    /// Cuts complete frames out of the connection's buffer and feeds them to the core.
    /// False if the stream is unusable (bad framing, frame too large).
    fn process_frames<S: UdpSend>(&mut self, udp: &mut S, token: u64, tuple: &FiveTuple) -> bool {
        loop {
            let len = {
                let mut streams = self.streams.borrow_mut();
                let Some(conn) = streams.get_mut(token) else {
                    return true;
                };
                let have = &conn.rbuf[..conn.rlen];
                match framing::frame_len(have) {
                    None => {
                        if conn.rlen == conn.rbuf.len() {
                            tracing::debug!(client = %tuple.client, "frame larger than the read buffer");
                            return false;
                        }
                        return true;
                    }
                    Some(Err(_)) => {
                        tracing::debug!(client = %tuple.client, "stream is not STUN/ChannelData");
                        return false;
                    }
                    Some(Ok(n)) if n > conn.rbuf.len() => return false,
                    Some(Ok(n)) if n > conn.rlen => return true,
                    Some(Ok(n)) => {
                        conn.spoke = true;
                        self.scratch[..n].copy_from_slice(&conn.rbuf[..n]);
                        conn.rbuf.copy_within(n..conn.rlen, 0);
                        conn.rlen -= n;
                        n
                    }
                }
            };
            let mut ports = Ports(&self.relays);
            let mut tx = Tx {
                udp: &mut *udp,
                listen: &self.listen,
                relays: &self.relays,
                streams: &self.streams,
            };
            self.server.on_client(
                tuple,
                &self.scratch[..len],
                self.now,
                self.wall,
                &mut ports,
                &mut tx,
            );
        }
    }

    /// Once per loop iteration: timers, control commands, reservation expiry. Returns
    /// the backend operations to carry out (in `self.take_ops`).
    pub(super) fn housekeeping(&mut self) {
        if let Some(t) = self.server.next_timeout()
            && t <= self.now
        {
            let mut ports = Ports(&self.relays);
            self.server.on_timeout(self.now, &mut ports);
        }
        while let Ok(cmd) = self.commands.try_recv() {
            self.command(cmd);
        }
        self.continue_snapshot();
        self.continue_listing();
        self.continue_kick();
        if self.now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.last_sweep = self.now;
            self.relays.borrow_mut().expire_reservations(self.now);
            // Restored allocations nobody claimed before their deadline expire here.
            for r in self.pool.take_expired_restored(self.clock.ns(self.now)) {
                self.adopt_restored(r);
            }
            if let Some(t) = self.server.next_timeout()
                && t <= self.now
            {
                let mut ports = Ports(&self.relays);
                self.server.on_timeout(self.now, &mut ports);
            }
            self.sweep_connections();
            // Kernel-relayed traffic into the allocations' counters (and byte quotas).
            self.server.fold_fast_counters(self.now);
        }
    }

    /// Takes the next slice of the first listing in progress; answers once it is done.
    fn continue_listing(&mut self) {
        let Some((job, _)) = self.listings.front_mut() else {
            return;
        };
        if !self.server.listing_step(job, self.now, LISTING_SLICE) {
            return;
        }
        if let Some((job, reply)) = self.listings.pop_front() {
            // The asker may have given up waiting: nothing to do then.
            let _ = reply.send(job.into_rows());
        }
    }

    /// Deletes the next slice of the first kick in progress; answers once it is done.
    fn continue_kick(&mut self) {
        let Some((job, _)) = self.kicks.front_mut() else {
            return;
        };
        let mut ports = Ports(&self.relays);
        let mut kicked = std::mem::take(&mut self.kicked);
        let done = self
            .server
            .kick_step(job, &mut ports, KICK_SLICE, &mut kicked);
        // A kicked TCP/TLS client loses its connection too, so it cannot keep using (or
        // re-allocating over) the session the operator ended.
        for tuple in kicked.drain(..) {
            let token = self.streams.borrow().by_tuple.get(&tuple).copied();
            if let Some(token) = token {
                self.close_conn(token);
            }
        }
        self.kicked = kicked;
        if done && let Some((job, reply)) = self.kicks.pop_front() {
            // The asker may have given up waiting: nothing to do then.
            let _ = reply.send(job.kicked());
        }
    }

    /// Takes the next slice of the state snapshot in progress; answers once it is done.
    fn continue_snapshot(&mut self) {
        let Some((job, _)) = &mut self.snapshot else {
            return;
        };
        if !self
            .server
            .snapshot_step(job, self.now, &self.clock, SNAPSHOT_SLICE)
        {
            return;
        }
        let Some((job, waiting)) = self.snapshot.take() else {
            return;
        };
        let saved = self.server.snapshot_finish(job, self.now, &self.clock);
        if let Some((last, others)) = waiting.split_last() {
            for w in others {
                let _ = w.send(saved.clone());
            }
            let _ = last.send(saved);
        }
    }

    /// Closes connections that never said anything in time, or went silent for longer
    /// than any allocation could live.
    fn sweep_connections(&mut self) {
        let now = self.now;
        let idle_limit = self.idle_limit;
        {
            let mut guard = self.streams.borrow_mut();
            let streams = &mut *guard;
            for (i, c) in streams.conns.iter().enumerate() {
                let Some(c) = c else { continue };
                let mute = !c.spoke && now.duration_since(c.accepted) >= FIRST_MESSAGE_DEADLINE;
                let idle = now.duration_since(c.last_rx) >= idle_limit;
                if mute || idle {
                    tracing::debug!(client = %c.tuple.client, mute, idle, "closing a stream client");
                    streams
                        .doomed
                        .push((u64::from(c.generation) << CONN_INDEX_BITS) | i as u64);
                }
            }
        }
        self.after_call();
    }

    fn command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Allocations { filter, reply } => {
                let job = self.server.listing_begin(filter);
                self.listings.push_back((job, reply));
            }
            WorkerCommand::Kick { target, reply } => {
                let job = self.server.kick_begin(&target);
                self.kicks.push_back((job, reply));
            }
            WorkerCommand::Stats { reply } => {
                let _ = reply.send(self.server.stats().clone());
            }
            WorkerCommand::RecheckPolicy { reply } => {
                let _ = reply.send(self.server.recheck_policy(self.now));
            }
            WorkerCommand::Snapshot { reply } => match &mut self.snapshot {
                // One job serves every request that arrives while it runs.
                Some((_, waiting)) => waiting.push(reply),
                None => self.snapshot = Some((self.server.snapshot_begin(), vec![reply])),
            },
            WorkerCommand::EnableXsk { setup, reply } => {
                if self.xsk_capable {
                    self.xsk_request = Some((setup, reply));
                } else {
                    let _ = reply.send(Err(
                        "AF_XDP sockets need the io_uring backend (this worker runs the portable one)"
                            .to_owned(),
                    ));
                }
            }
        }
    }

    /// Moves the queued backend operations into `out`.
    pub(super) fn take_ops(&mut self, out: &mut Vec<Op>) {
        self.relays.borrow_mut().take_ops(out);
        self.streams.borrow_mut().take_ops(out);
        out.append(&mut self.ops);
    }

    /// Closes every connection and relay (shutdown).
    pub(super) fn close_all(&mut self) {
        let tokens: Vec<u64> = self.streams.borrow().by_tuple.values().copied().collect();
        for t in tokens {
            self.close_conn(t);
        }
    }
}

enum ReadOutcome {
    /// Read something (true: the socket may have more).
    Data(bool),
    Eof,
}

/// One read from the socket into the connection's buffer (through TLS if any).
fn read_some(conn: &mut Conn) -> io::Result<ReadOutcome> {
    match &mut conn.tls {
        None => {
            let space = &mut conn.rbuf[conn.rlen..];
            if space.is_empty() {
                return Ok(ReadOutcome::Data(false));
            }
            match (&conn.stream).read(space) {
                Ok(0) => Ok(ReadOutcome::Eof),
                Ok(n) => {
                    conn.rlen += n;
                    Ok(ReadOutcome::Data(true))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::Data(false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Data(true)),
                Err(e) => Err(e),
            }
        }
        Some(tls) => match tls.read(&mut &conn.stream, &mut conn.rbuf[conn.rlen..])? {
            ReadStatus::Progress { copied, more } => {
                conn.rlen += copied;
                Ok(ReadOutcome::Data(more))
            }
            ReadStatus::Eof => Ok(ReadOutcome::Eof),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Quotas;

    fn saved(client: &str, relayed: SocketAddr, expires_ns: u64) -> SavedAllocation {
        SavedAllocation::bare(client.parse().expect("addr"), relayed, expires_ns)
    }

    fn free_port() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    }

    #[test]
    fn rebinding_keeps_exact_ports_takes_quota_and_drops_what_cannot_bind() {
        let quotas = Quotas::new(0, 0);
        let busy = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let taken = busy.local_addr().expect("addr");
        let free = free_port();
        let got = rebind_restored(
            vec![
                saved("198.51.100.7:40000", free, 10),
                saved("198.51.100.8:40000", taken, 10),
            ],
            &quotas,
        );
        assert_eq!(
            got.len(),
            1,
            "the allocation whose port is taken is dropped"
        );
        assert_eq!(got[0].sockets[0].local_addr().expect("addr"), free);
        assert_eq!(quotas.held_by("alice"), 1);
        drop(got);
        assert_eq!(quotas.held_by("alice"), 0, "dropping gives the quota back");

        // Over quota: dropped.
        let one = Quotas::new(1, 0);
        let got = rebind_restored(
            vec![
                saved("198.51.100.7:40000", free_port(), 10),
                saved("198.51.100.9:40000", free_port(), 10),
            ],
            &one,
        );
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn pool_claims_wait_until_released_then_go_to_one_worker() {
        let quotas = Quotas::new(0, 0);
        let pool = Reservations::default();
        let a = saved("198.51.100.7:40000", free_port(), 100);
        let b = saved("198.51.100.8:40000", free_port(), 5);
        let (ta, tb) = (a.tuple(), b.tuple());
        pool.hold_restored(rebind_restored(vec![a.clone(), b], &quotas), true);
        assert_eq!(pool.restored_len(), 2);
        let stranger = FiveTuple {
            client: "198.51.100.99:1".parse().expect("addr"),
            ..ta
        };
        assert!(matches!(pool.claim_restored(&stranger), Claim::None));
        assert!(matches!(pool.claim_restored(&ta), Claim::Wait));
        assert!(pool.take_expired_restored(1000).is_empty(), "held back");
        assert_eq!(
            pool.restored_snapshot().len(),
            2,
            "unclaimed ones are saved too"
        );

        pool.update_restored(|s| s.byte_quota = 7);
        pool.release_restored();
        match pool.claim_restored(&ta) {
            Claim::Take(r) => {
                assert_eq!(r.saved.client, a.client);
                assert_eq!(r.saved.byte_quota, 7);
                assert_eq!(r.sockets.len(), 1);
            }
            other => panic!("expected the allocation, got {other:?}"),
        }
        assert!(
            matches!(pool.claim_restored(&ta), Claim::None),
            "claimed once"
        );
        assert_eq!(pool.restored_len(), 1);
        // Expiry: only what is due.
        assert!(pool.take_expired_restored(4).is_empty());
        let due = pool.take_expired_restored(5);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].saved.tuple(), tb);
        assert_eq!(pool.restored_len(), 0);
        assert!(matches!(pool.claim_restored(&tb), Claim::None));
    }
}
