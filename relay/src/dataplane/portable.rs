//! The portable backend for kernels or sandboxes without io_uring: poll the worker's
//! sockets with a short timeout, drain each readable one with recvmmsg, answer with one
//! sendmmsg per batch. All message headers and buffers are allocated once.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::counters::{Counts, IoDrop, WorkerCounters};
use super::socket::{
    CONTROL_LEN, NAME_LEN, decode_sockaddr, encode_pktinfo_source, encode_sockaddr,
    pktinfo_destination, storage_bytes,
};
use super::turn_io::{Op, TurnIo, UdpSend};
use super::{DatagramHandler, DataplaneError, Verdict};

/// Datagrams per recvmmsg/sendmmsg call.
const BATCH: usize = 64;
/// Bytes per datagram buffer.
const BUF: usize = 2048;
/// recvmmsg rounds per readable socket before polling again (fairness between sockets).
const ROUNDS: usize = 8;
/// Poll timeout (bounds shutdown latency).
const POLL_MS: i32 = 100;

/// One batch of message headers with their buffers; all-zero is a valid initial state.
#[repr(C)]
struct Batch {
    hdrs: [libc::mmsghdr; BATCH],
    iovs: [libc::iovec; BATCH],
    names: [libc::sockaddr_in6; BATCH],
    bufs: [[u8; BUF]; BATCH],
    /// Ancillary data (IP_PKTINFO of datagrams on wildcard sockets; TURN only).
    ctrl: [[u8; CONTROL_LEN]; BATCH],
}

fn new_batch() -> Box<Batch> {
    // SAFETY: Batch consists only of C structs and byte arrays, for which all-zero bytes
    // are valid values.
    unsafe { Box::<Batch>::new_zeroed().assume_init() }
}

pub(super) struct PortableWorker<H> {
    rx: Box<Batch>,
    tx: Box<Batch>,
    sockets: Vec<UdpSocket>,
    pollfds: Vec<libc::pollfd>,
    handler: H,
    counters: Arc<WorkerCounters>,
    counts: Counts,
    index: usize,
    turn: Option<Box<TurnIo>>,
    /// TURN mode: what each pollfd is.
    kinds: Vec<Watch>,
    ops: Vec<Op>,
}

/// What a pollfd watches in TURN mode.
#[derive(Debug, Clone, Copy)]
enum Watch {
    Listen(usize),
    Relay(u32),
    Acceptor(usize),
    Conn(u64),
}

/// [`UdpSend`] by plain sendto (the portable backend's TURN path).
struct PortableSend<'a> {
    counts: &'a mut Counts,
}

impl UdpSend for PortableSend<'_> {
    #[inline]
    fn send(
        &mut self,
        fd: std::os::fd::RawFd,
        to: std::net::SocketAddr,
        from: Option<std::net::IpAddr>,
        bytes: &[u8],
    ) -> bool {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
        let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let namelen = encode_sockaddr(&to, &mut name);
        let mut control = [0u8; CONTROL_LEN];
        let controllen = from.map_or(0, |ip| encode_pktinfo_source(ip, &mut control));
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = std::ptr::from_mut(&mut name).cast();
        hdr.msg_namelen = namelen;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if controllen > 0 {
            hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_controllen = controllen as _;
        }
        loop {
            // SAFETY: every pointer in `hdr` (name, iovec over `bytes`, control) is live
            // for the call; the kernel only reads the payload.
            let r = unsafe { libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT) };
            if r >= 0 {
                self.counts.answered += 1;
                return true;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                self.counts.errors += 1;
                return false;
            }
        }
    }
}

impl<H: DatagramHandler> PortableWorker<H> {
    pub(super) fn new(
        index: usize,
        sockets: Vec<UdpSocket>,
        handler: H,
        counters: Arc<WorkerCounters>,
        turn: Option<Box<TurnIo>>,
    ) -> Result<Self, DataplaneError> {
        let pollfds = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(PortableWorker {
            rx: new_batch(),
            tx: new_batch(),
            sockets,
            pollfds,
            handler,
            counters,
            counts: Counts::default(),
            index,
            turn,
            kinds: Vec::new(),
            ops: Vec::with_capacity(64),
        })
    }

    pub(super) fn run(mut self, shutdown: &AtomicBool) -> Result<(), DataplaneError> {
        if self.turn.is_some() {
            return self.run_turn(shutdown);
        }
        while !shutdown.load(Ordering::Relaxed) {
            // SAFETY: pollfds is a live slice of pollfd of the given length.
            let r = unsafe {
                libc::poll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    POLL_MS,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(DataplaneError::Io {
                        worker: self.index,
                        what: "poll",
                        source: e,
                    });
                }
                continue;
            }
            for i in 0..self.pollfds.len() {
                if self.pollfds[i].revents & libc::POLLIN != 0 {
                    self.drain(i);
                }
            }
            self.counters.publish(&self.counts);
        }
        self.counters.publish(&self.counts);
        Ok(())
    }

    /// Rebuilds the watch list from the listen sockets, listeners, relays and connections.
    fn rebuild_watch(&mut self) {
        let Some(turn) = self.turn.as_deref() else {
            return;
        };
        self.pollfds.clear();
        self.kinds.clear();
        let mut add = |fd: i32, events: i16, w: Watch| {
            self.pollfds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            self.kinds.push(w);
        };
        for (i, s) in self.sockets.iter().enumerate() {
            add(s.as_raw_fd(), libc::POLLIN, Watch::Listen(i));
        }
        for (i, l) in turn.listeners.iter().enumerate() {
            add(l.socket.as_raw_fd(), libc::POLLIN, Watch::Acceptor(i));
        }
        for (h, fd) in turn.relays.borrow().live() {
            add(fd, libc::POLLIN, Watch::Relay(h));
        }
        for (token, fd, out) in turn.streams.borrow().live() {
            let events = if out {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            };
            add(fd, events, Watch::Conn(token));
        }
    }

    fn run_turn(mut self, shutdown: &AtomicBool) -> Result<(), DataplaneError> {
        self.rebuild_watch();
        while !shutdown.load(Ordering::Relaxed) {
            let pending = self.turn.as_deref().is_some_and(TurnIo::has_pending);
            // SAFETY: pollfds is a live slice of pollfd of the given length.
            let r = unsafe {
                libc::poll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    if pending { 0 } else { POLL_MS },
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(DataplaneError::Io {
                        worker: self.index,
                        what: "poll",
                        source: e,
                    });
                }
                continue;
            }
            if let Some(t) = self.turn.as_deref_mut() {
                t.tick_clock();
            }
            for i in 0..self.pollfds.len() {
                let revents = self.pollfds[i].revents;
                if revents == 0 {
                    continue;
                }
                let fd = self.pollfds[i].fd;
                match self.kinds[i] {
                    Watch::Listen(l) => self.drain_turn(fd, Watch::Listen(l)),
                    Watch::Relay(h) => self.drain_turn(fd, Watch::Relay(h)),
                    Watch::Acceptor(a) => {
                        if let Some(t) = self.turn.as_deref_mut() {
                            t.on_accept(a);
                        }
                    }
                    Watch::Conn(token) => {
                        let Some(t) = self.turn.as_deref_mut() else {
                            continue;
                        };
                        if revents & libc::POLLOUT != 0 {
                            t.on_writable(token);
                        }
                        if revents & !libc::POLLOUT != 0 {
                            t.on_readable(
                                &mut PortableSend {
                                    counts: &mut self.counts,
                                },
                                token,
                            );
                        }
                    }
                }
            }
            let Some(t) = self.turn.as_deref_mut() else {
                break;
            };
            t.retry_pending(&mut PortableSend {
                counts: &mut self.counts,
            });
            t.housekeeping();
            t.take_ops(&mut self.ops);
            if !self.ops.is_empty() {
                for op in self.ops.drain(..) {
                    if let Op::CancelRelay(h) = op {
                        // No receive is in flight here: the socket can close now.
                        t.relays.borrow_mut().finish_close(h);
                    }
                }
                self.rebuild_watch();
            } else {
                // A writability wish changes the events of an existing entry.
                self.refresh_out_events();
            }
            self.counters.publish(&self.counts);
        }
        if let Some(t) = self.turn.as_deref_mut() {
            t.close_all();
        }
        self.counters.publish(&self.counts);
        Ok(())
    }

    fn refresh_out_events(&mut self) {
        let Some(turn) = self.turn.as_deref() else {
            return;
        };
        for (p, k) in self.pollfds.iter_mut().zip(&self.kinds) {
            if let Watch::Conn(token) = k {
                p.events = if turn.conn_wants_write(*token) {
                    libc::POLLIN | libc::POLLOUT
                } else {
                    libc::POLLIN
                };
            }
        }
    }

    /// Receives what a listen or relayed socket has queued and feeds it to TURN.
    fn drain_turn(&mut self, fd: i32, from: Watch) {
        let Some(turn) = self.turn.as_deref_mut() else {
            return;
        };
        for _ in 0..ROUNDS {
            let rx = &mut *self.rx;
            for j in 0..BATCH {
                rx.iovs[j].iov_base = rx.bufs[j].as_mut_ptr().cast();
                rx.iovs[j].iov_len = BUF;
                let h = &mut rx.hdrs[j];
                h.msg_hdr.msg_name = std::ptr::from_mut(&mut rx.names[j]).cast();
                h.msg_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut rx.iovs[j];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = rx.ctrl[j].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = CONTROL_LEN as _;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            let Some(n) = recv_batch(fd, &mut rx.hdrs, &mut self.counts.errors) else {
                return;
            };
            for j in 0..n {
                self.counts.received += 1;
                // msg_controllen is size_t on glibc, socklen_t on musl.
                #[allow(clippy::unnecessary_cast)]
                let clen = (rx.hdrs[j].msg_hdr.msg_controllen as usize).min(CONTROL_LEN);
                let dst = pktinfo_destination(&rx.ctrl[j][..clen]);
                let h = &rx.hdrs[j];
                if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.counts.drop_io(IoDrop::Truncated);
                    continue;
                }
                let Some(source) =
                    decode_sockaddr(storage_bytes(&rx.names[j], h.msg_hdr.msg_namelen))
                else {
                    self.counts.drop_io(IoDrop::BadSource);
                    continue;
                };
                let len = (h.msg_len as usize).min(BUF);
                let mut tx = PortableSend {
                    counts: &mut self.counts,
                };
                match from {
                    Watch::Listen(i) => {
                        turn.on_client_datagram(&mut tx, i, source, dst, &rx.bufs[j][..len]);
                    }
                    Watch::Relay(handle) => {
                        turn.on_peer_datagram(&mut tx, handle, source, &rx.bufs[j][..len]);
                    }
                    _ => {}
                }
            }
            if n < BATCH {
                return;
            }
        }
    }

    /// Receives and answers what socket `i` has queued (bounded rounds).
    fn drain(&mut self, i: usize) {
        let fd = self.sockets[i].as_raw_fd();
        for _ in 0..ROUNDS {
            let rx = &mut *self.rx;
            for j in 0..BATCH {
                rx.iovs[j].iov_base = rx.bufs[j].as_mut_ptr().cast();
                rx.iovs[j].iov_len = BUF;
                let h = &mut rx.hdrs[j];
                h.msg_hdr.msg_name = std::ptr::from_mut(&mut rx.names[j]).cast();
                h.msg_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut rx.iovs[j];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            let Some(n) = recv_batch(fd, &mut rx.hdrs, &mut self.counts.errors) else {
                return;
            };
            let tx = &mut *self.tx;
            let mut out = 0usize;
            for j in 0..n {
                self.counts.received += 1;
                let h = &rx.hdrs[j];
                if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.counts.drop_io(IoDrop::Truncated);
                    continue;
                }
                let Some(source) =
                    decode_sockaddr(storage_bytes(&rx.names[j], h.msg_hdr.msg_namelen))
                else {
                    self.counts.drop_io(IoDrop::BadSource);
                    continue;
                };
                let len = (h.msg_len as usize).min(BUF);
                match self
                    .handler
                    .handle(&rx.bufs[j][..len], source, &mut tx.bufs[out])
                {
                    Verdict::Reply(m) => {
                        let namelen = encode_sockaddr(&source, &mut tx.names[out]);
                        tx.iovs[out].iov_base = tx.bufs[out].as_mut_ptr().cast();
                        tx.iovs[out].iov_len = m.min(BUF);
                        let th = &mut tx.hdrs[out];
                        th.msg_hdr.msg_name = std::ptr::from_mut(&mut tx.names[out]).cast();
                        th.msg_hdr.msg_namelen = namelen;
                        th.msg_hdr.msg_iov = &mut tx.iovs[out];
                        th.msg_hdr.msg_iovlen = 1;
                        th.msg_hdr.msg_control = std::ptr::null_mut();
                        th.msg_hdr.msg_controllen = 0;
                        th.msg_hdr.msg_flags = 0;
                        th.msg_len = 0;
                        out += 1;
                    }
                    Verdict::Drop(code) => self.counts.drop_handler(code),
                }
            }
            let mut sent = 0usize;
            while sent < out {
                // SAFETY: headers [sent, out) point at buffers inside `tx`, alive for the call.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        tx.hdrs[sent..].as_mut_ptr(),
                        (out - sent) as libc::c_uint,
                        0,
                    )
                };
                if r <= 0 {
                    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                    {
                        continue;
                    }
                    // Skip the datagram that failed and go on with the rest.
                    self.counts.errors += 1;
                    sent += 1;
                    continue;
                }
                self.counts.answered += r as u64;
                sent += r as usize;
            }
            if n < BATCH {
                return;
            }
        }
    }
}

/// One non-blocking `recvmmsg` into `hdrs` (set up by the caller, pointing at buffers that
/// outlive the call). `None` when nothing was read; errors other than EAGAIN/EINTR are
/// counted in `errors`.
#[inline]
fn recv_batch(fd: i32, hdrs: &mut [libc::mmsghdr], errors: &mut u64) -> Option<usize> {
    // SAFETY: every header points at buffers owned by the caller that stay alive for the
    // call; `hdrs.len()` headers are writable.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
            *errors += 1;
        }
        return None;
    }
    Some(n as usize)
}
