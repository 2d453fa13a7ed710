//! ICE over TCP for one media worker (RFC 6544, passive side): browsers whose network
//! blocks UDP connect to the worker's TCP listener (same address and port as its UDP
//! socket) and send RFC 4571-framed STUN, DTLS and SRTP over the connection.
//!
//! Why it looks like this: the media thread must never block and its UDP path must not
//! get slower. Every connection is a non-blocking socket registered edge-triggered in one
//! epoll instance; the socket layer (poll loop or io_uring loop) only watches that one
//! epoll descriptor next to its UDP socket and calls [`TcpMedia::service`] when it is
//! readable (or when work was left over). Each complete frame goes to the engine as a
//! datagram with `via: Tcp`, the peer's address as source and the listener's address as
//! local; the engine's answers for a TCP destination come back through [`Routed`] and are
//! written, framed, to the connection from that peer.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] per worker (more are accepted and closed at once,
//! counted); a connection that got no answer to a STUN check within [`UNANSWERED_TIMEOUT`]
//! or sent nothing for [`SILENT_TIMEOUT`] is closed; a frame longer than the engine's
//! largest datagram closes its connection (counted); when the kernel's send buffer is full
//! frames wait in a bounded per-connection queue and beyond it are dropped (counted: media
//! tolerates loss, the worker never waits). A closed connection is forgotten; its ICE
//! transport then ends through consent freshness like a vanished UDP peer.
//!
//! Memory: a connection's read buffer is allocated when it is accepted and its out-queue
//! the first time the kernel refuses a write; nothing is allocated per packet.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::IoCounters;
use super::framing::{FrameReader, HEADER, frame_header};
use crate::ice::Transport as IceTransport;
use crate::sfu::engine::{Arrival, Engine, MAX_DATAGRAM, Transmit};

/// Connections per worker at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection none of whose STUN checks was answered (no valid check) within this is
/// closed.
pub const UNANSWERED_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sent nothing for this long is closed (a live ICE peer sends consent
/// checks every few seconds; consent itself expires after 30 s).
pub const SILENT_TIMEOUT: Duration = Duration::from_secs(40);
/// Bytes queued per connection while the kernel's send buffer is full.
pub const OUT_QUEUE: usize = 64 * 1024;
/// Largest packet the engine hands over (a datagram plus SRTP's trailer).
const MAX_SEND: usize = MAX_DATAGRAM + 64;
/// Reads per connection per service round (then it waits for the next round).
const READS_PER_ROUND: usize = 16;
/// Connections accepted per service round.
const ACCEPTS_PER_ROUND: usize = 64;
/// epoll events taken per `epoll_wait`.
const EVENTS: usize = 64;
/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The epoll key of the listener (connections use their slot + 1).
const LISTENER_KEY: u64 = 0;

/// One accepted connection.
struct Conn {
    stream: TcpStream,
    /// The peer's address as accepted (what the engine sees as the source).
    peer: SocketAddr,
    reader: FrameReader,
    /// Frames (with their prefix) the kernel did not take yet; allocated on first need.
    out: VecDeque<u8>,
    opened: Instant,
    last_rx: Instant,
    /// The engine sent this peer something other than a STUN error: a check was valid.
    answered: bool,
    /// A write failed or the peer closed: closed at the next service round.
    dead: bool,
    /// In `TcpMedia::again` (reads left over for the next round).
    queued: bool,
}

/// The connections, and sending to them (what [`Routed`] needs while a frame from one of
/// them is in the engine).
pub(super) struct TcpConns {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Canonical peer address → slot.
    by_peer: HashMap<SocketAddr, usize>,
    /// Prefix + packet, written in one call.
    frame: Box<[u8; HEADER + MAX_SEND]>,
}

/// Folds an IPv4-mapped IPv6 address (a dual-stack listener's form) to IPv4, as the
/// engine's media destinations are.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl TcpConns {
    fn new() -> TcpConns {
        TcpConns {
            slots: Vec::with_capacity(MAX_CONNECTIONS),
            free: Vec::with_capacity(MAX_CONNECTIONS),
            by_peer: HashMap::with_capacity(MAX_CONNECTIONS),
            frame: Box::new([0; HEADER + MAX_SEND]),
        }
    }

    fn open(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Sends `data`, framed, to the connection from `dest`; dropped (counted) when there
    /// is none, the packet is too long or the out-queue is full.
    fn send(&mut self, data: &[u8], dest: SocketAddr, counters: &IoCounters) {
        let slot = self.by_peer.get(&canonical(dest)).copied();
        let Some(conn) = slot
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::as_mut)
        else {
            IoCounters::bump(&counters.tcp_send_drops);
            return;
        };
        let (Some(header), true) = (frame_header(data.len()), data.len() <= MAX_SEND) else {
            IoCounters::bump(&counters.tcp_send_drops);
            return;
        };
        if conn.dead {
            return;
        }
        // Anything but a STUN Binding error response (type 0x0111: a check that failed
        // authentication) means a check on this connection was valid.
        if data.get(..2) != Some(&[0x01, 0x11]) {
            conn.answered = true;
        }
        let total = HEADER + data.len();
        if !conn.out.is_empty() {
            if conn.out.len() + total > OUT_QUEUE {
                IoCounters::bump(&counters.tcp_send_drops);
                return;
            }
            conn.out.extend(header);
            conn.out.extend(data.iter().copied());
            flush(conn);
            return;
        }
        self.frame[..HEADER].copy_from_slice(&header);
        self.frame[HEADER..total].copy_from_slice(data);
        let written = loop {
            match conn.stream.write(&self.frame[..total]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(_) => {
                    conn.dead = true;
                    return;
                }
            }
        };
        if written < total {
            // The rest of this frame must follow before anything else: queue it (it
            // always fits an empty queue). The queue's one allocation happens here.
            if conn.out.capacity() == 0 {
                conn.out.reserve_exact(OUT_QUEUE);
            }
            conn.out.extend(self.frame[written..total].iter().copied());
        }
    }
}

/// Writes as much of the out-queue as the kernel takes.
fn flush(conn: &mut Conn) {
    while !conn.out.is_empty() {
        let (head, _) = conn.out.as_slices();
        match conn.stream.write(head) {
            Ok(0) => {
                conn.dead = true;
                return;
            }
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                conn.dead = true;
                return;
            }
        }
    }
}

/// The engine's [`Transmit`] for a worker with TCP: UDP destinations go to the socket
/// layer's own transmit, TCP ones to their connection.
pub(super) struct Routed<'a> {
    pub(super) udp: &'a mut dyn Transmit,
    pub(super) tcp: Option<&'a mut TcpConns>,
    pub(super) counters: &'a IoCounters,
}

impl Transmit for Routed<'_> {
    #[inline]
    fn send(&mut self, data: &[u8], dest: SocketAddr) {
        self.udp.send(data, dest);
    }

    #[inline]
    fn send_via(&mut self, data: &[u8], dest: SocketAddr, via: IceTransport) {
        match (via, self.tcp.as_deref_mut()) {
            (IceTransport::Udp, _) => self.udp.send(data, dest),
            (IceTransport::Tcp, Some(tcp)) => tcp.send(data, dest, self.counters),
            (IceTransport::Tcp, None) => IoCounters::bump(&self.counters.tcp_send_drops),
        }
    }
}

/// A worker's TCP listener, its connections and their epoll instance.
pub(super) struct TcpMedia {
    listener: TcpListener,
    /// The listener's address (the `local` of every TCP arrival).
    local: SocketAddr,
    epoll: OwnedFd,
    conns: TcpConns,
    events: Vec<libc::epoll_event>,
    /// Connections whose reads were cut by the per-round budget (edge-triggered: no new
    /// event will come for bytes already there).
    again: Vec<usize>,
    accept_again: bool,
    /// Where a frame is copied for the engine (it decrypts in place).
    scratch: Box<[u8]>,
    last_sweep: Instant,
}

impl TcpMedia {
    /// Binds the TCP listener at `addr` (the UDP socket's bound address) and sets up the
    /// epoll instance.
    pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpMedia> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen for ICE-TCP on {addr} (the UDP media socket's address and \
                     port): {e}; free that TCP port, choose another sfu.media_listen, or set \
                     sfu.tcp = false"
                ),
            )
        })?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        // SAFETY: epoll_create1 takes no pointers; the result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own exclusively.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        epoll_add(epoll.as_raw_fd(), listener.as_raw_fd(), LISTENER_KEY)?;
        Ok(TcpMedia {
            listener,
            local,
            epoll,
            conns: TcpConns::new(),
            // SAFETY: epoll_event is a plain C struct; all-zero is valid.
            events: vec![unsafe { std::mem::zeroed() }; EVENTS],
            again: Vec::with_capacity(MAX_CONNECTIONS),
            accept_again: false,
            scratch: vec![0u8; MAX_DATAGRAM + 64].into_boxed_slice(),
            last_sweep: Instant::now(),
        })
    }

    /// The listener's address.
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The descriptor the socket layer watches for readability.
    pub(super) fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Whether a service round should run without waiting for readiness.
    pub(super) fn has_work(&self) -> bool {
        self.accept_again || !self.again.is_empty()
    }

    /// The connections, for a [`Routed`] transmit.
    pub(super) fn conns(&mut self) -> &mut TcpConns {
        &mut self.conns
    }

    /// One round: accept, read frames into the engine, write queued frames, close what
    /// failed; and, every second, close idle connections.
    pub(super) fn service(
        &mut self,
        engine: &mut Engine,
        udp: &mut dyn Transmit,
        counters: &IoCounters,
        now: Instant,
    ) {
        if std::mem::take(&mut self.accept_again) {
            self.accept(counters, now);
        }
        // Leftovers from the last round first (they stay ahead of new events); one cut
        // again is queued again behind them.
        let leftover = self.again.len();
        for i in 0..leftover {
            let slot = self.again[i];
            if let Some(conn) = self.conns.slots.get_mut(slot).and_then(Option::as_mut) {
                conn.queued = false;
            }
            self.read(slot, engine, udp, counters, now);
        }
        self.again.drain(..leftover);
        loop {
            // SAFETY: `events` has room for `EVENTS` entries and lives across the call;
            // timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    EVENTS as i32,
                    0,
                )
            };
            let Ok(n) = usize::try_from(n) else { break };
            for k in 0..n {
                let ev = self.events[k];
                let (key, flags) = (ev.u64, ev.events);
                if key == LISTENER_KEY {
                    self.accept(counters, now);
                    continue;
                }
                let Some(slot) = usize::try_from(key - 1).ok() else {
                    continue;
                };
                if flags & (libc::EPOLLOUT as u32) != 0
                    && let Some(conn) = self.conns.slots.get_mut(slot).and_then(Option::as_mut)
                {
                    flush(conn);
                }
                if flags
                    & ((libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32)
                    != 0
                {
                    self.read(slot, engine, udp, counters, now);
                }
            }
            if n < EVENTS {
                break;
            }
        }
        self.close_dead(counters);
    }

    /// Closes idle and failed connections and retries a refused accept, every second;
    /// called every iteration by the loops (cheap when not due).
    pub(super) fn tick(&mut self, counters: &IoCounters, now: Instant) {
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.sweep(counters, now);
        }
    }

    fn sweep(&mut self, counters: &IoCounters, now: Instant) {
        self.close_dead(counters);
        // An accept that failed for want of descriptors gets no new edge by itself.
        self.accept_again = true;
        for slot in 0..self.conns.slots.len() {
            let idle = self.conns.slots[slot].as_ref().is_some_and(|c| {
                (!c.answered && now.duration_since(c.opened) >= UNANSWERED_TIMEOUT)
                    || now.duration_since(c.last_rx) >= SILENT_TIMEOUT
            });
            if idle {
                IoCounters::bump(&counters.tcp_idle_closed);
                self.close(slot, counters);
            }
        }
    }

    fn accept(&mut self, counters: &IoCounters, now: Instant) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let (stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or a connection reset before it was taken: the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                // Out of descriptors or memory: retried at the next sweep, not spun on.
                Err(_) => {
                    IoCounters::bump(&counters.tcp_refused);
                    return;
                }
            };
            if self.conns.open() >= MAX_CONNECTIONS {
                IoCounters::bump(&counters.tcp_refused);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                IoCounters::bump(&counters.tcp_refused);
                continue;
            }
            // Media is latency-bound: no Nagle delay behind a small RTCP packet.
            let _ = stream.set_nodelay(true);
            let slot = match self.conns.free.pop() {
                Some(s) => s,
                None => {
                    self.conns.slots.push(None);
                    self.conns.slots.len() - 1
                }
            };
            if epoll_add(self.epoll.as_raw_fd(), stream.as_raw_fd(), slot as u64 + 1).is_err() {
                self.conns.free.push(slot);
                IoCounters::bump(&counters.tcp_refused);
                continue;
            }
            self.conns.by_peer.insert(canonical(peer), slot);
            self.conns.slots[slot] = Some(Conn {
                stream,
                peer,
                reader: FrameReader::new(MAX_DATAGRAM),
                out: VecDeque::new(),
                opened: now,
                last_rx: now,
                answered: false,
                dead: false,
                queued: false,
            });
            IoCounters::gauge_up(&counters.tcp_connections);
        }
        // The budget ran out with connections possibly still waiting.
        self.accept_again = true;
    }

    /// Reads what connection `slot` has (up to the round's budget) and hands every
    /// complete frame to the engine.
    fn read(
        &mut self,
        slot: usize,
        engine: &mut Engine,
        udp: &mut dyn Transmit,
        counters: &IoCounters,
        now: Instant,
    ) {
        for _ in 0..READS_PER_ROUND {
            let Some(conn) = self.conns.slots.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            if conn.dead {
                return;
            }
            let got = loop {
                match conn.stream.read(conn.reader.spare()) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match got {
                Ok(0) => {
                    // Closed by the peer (or a full buffer, impossible after the frames
                    // were drained: treated the same).
                    conn.dead = true;
                    return;
                }
                Ok(n) => {
                    conn.reader.commit(n);
                    conn.last_rx = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    conn.dead = true;
                    return;
                }
            }
            let peer = conn.peer;
            loop {
                let Some(conn) = self.conns.slots.get_mut(slot).and_then(Option::as_mut) else {
                    return;
                };
                let len = match conn.reader.next_frame() {
                    Ok(Some(frame)) => {
                        let len = frame.len();
                        self.scratch[..len].copy_from_slice(frame);
                        len
                    }
                    Ok(None) => break,
                    Err(_) => {
                        IoCounters::bump(&counters.tcp_frame_errors);
                        conn.dead = true;
                        return;
                    }
                };
                let at = Arrival {
                    source: peer,
                    local: self.local,
                    via: IceTransport::Tcp,
                    now,
                };
                let mut tx = Routed {
                    udp: &mut *udp,
                    tcp: Some(&mut self.conns),
                    counters,
                };
                engine.handle_datagram(&mut self.scratch, len, at, &mut tx);
            }
        }
        // Budget spent: the rest waits for the next round (no new edge will announce it).
        if let Some(conn) = self.conns.slots.get_mut(slot).and_then(Option::as_mut)
            && !conn.queued
        {
            conn.queued = true;
            self.again.push(slot);
        }
    }

    fn close_dead(&mut self, counters: &IoCounters) {
        for slot in 0..self.conns.slots.len() {
            if self.conns.slots[slot].as_ref().is_some_and(|c| c.dead) {
                self.close(slot, counters);
            }
        }
    }

    fn close(&mut self, slot: usize, counters: &IoCounters) {
        let Some(conn) = self.conns.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let key = canonical(conn.peer);
        if self.conns.by_peer.get(&key) == Some(&slot) {
            self.conns.by_peer.remove(&key);
        }
        self.again.retain(|&s| s != slot);
        self.conns.free.push(slot);
        IoCounters::gauge_down(&counters.tcp_connections);
        // Dropping the stream closes it, which also removes it from the epoll set.
        drop(conn);
    }
}

/// Registers `fd` edge-triggered for input, output and hang-up under `key`.
fn epoll_add(epfd: RawFd, fd: RawFd, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: key,
    };
    // SAFETY: both descriptors are open; `ev` is a valid epoll_event for the call.
    let rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
