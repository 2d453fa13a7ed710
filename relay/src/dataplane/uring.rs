//! The io_uring backend: one ring per worker, a multishot RecvMsg per socket into a
//! provided buffer ring, replies sent with SendMsg from preallocated slots, one `submit`
//! (which also waits, with a timeout) per completion batch. A worker kept busy by AF_XDP
//! frames enters the kernel only to submit or to run completion work the kernel flagged
//! (see `must_enter`).

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, Submitter, cqueue, opcode, squeue};

use super::bufring::BufRing;
use super::counters::{Counts, IoDrop, WorkerCounters};
use super::slots::SendSlots;
use super::socket::{NAME_LEN, decode_sockaddr};
use super::turn_io::{Op, TurnIo, UdpSend};
use super::xsk_path::{self, Pass, RX_BATCH, XskPath, XskPoll};
use super::{DatagramHandler, DataplaneError, Verdict};

/// Submission queue entries.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries (multishot receives can complete many times per SQE).
const CQ_ENTRIES: u32 = 8192;

/// A ring for one thread that is its only submitter: completion task work is deferred to
/// that thread's own `io_uring_enter` calls instead of interrupting its other syscalls
/// (Linux 6.1+); older kernels get cooperative task work, or the plain set-up. Shared by
/// the TURN workers and the SFU media workers.
///
/// Deferred work runs only in an enter that carries GETEVENTS, so the kernel is asked to
/// flag it (`IORING_SQ_TASKRUN`, [`squeue::SubmissionQueue::taskrun`]): a worker that
/// stays busy without waiting (AF_XDP frames keep coming) must see that flag, or the
/// completions of its kernel sockets (stream accepts and reads, datagrams the XDP program
/// passed up) wait until it next sleeps. The io-uring crate's `submit*` calls add
/// GETEVENTS when the flag is set.
pub(crate) fn owned_ring(sq_entries: u32, cq_entries: u32) -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(sq_entries)
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(cq_entries)
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .build(sq_entries)
        })
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(cq_entries)
                .build(sq_entries)
        })
}
/// Receive buffers in the provided buffer ring (a power of two).
const BUF_COUNT: u16 = 1024;
/// Bytes per receive buffer: recvmsg header + name + payload.
const BUF_SIZE: usize = 2048;
/// Preallocated send slots.
const SEND_SLOTS: u32 = 1024;
/// Buffer group id of the worker's ring.
const BGID: u16 = 0;
/// How long one wait for completions may block (bounds shutdown latency).
const WAIT: Timespec = Timespec::new().nsec(100_000_000);
/// Longest the teardown waits for cancelled operations to complete.
const DRAIN: Duration = Duration::from_secs(1);

const TAG_SHIFT: u32 = 56;
const TAG_RECV: u64 = 1;
const TAG_SEND: u64 = 2;
/// TURN: a relayed socket's multishot receive (index = relay handle).
const TAG_RELAY: u64 = 3;
/// TURN: a stream listener is readable (index = listener index).
const TAG_ACCEPT: u64 = 4;
/// TURN: a client connection is readable (index = connection token).
const TAG_CONN: u64 = 5;
/// TURN: a client connection is writable (index = connection token).
const TAG_CONN_OUT: u64 = 6;
/// An AsyncCancel's own completion (ignored).
const TAG_CANCEL: u64 = 7;
/// An AF_XDP socket is readable (index = its position in the worker's `XskPath`).
const TAG_XSK: u64 = 8;
/// Receive batches drained from one AF_XDP socket per loop round (256 frames, an eighth
/// of its RX ring); what is left is taken next round without sleeping. Bounded so that a
/// saturated round (about 0.3 ms) soon comes back to the kernel sockets' completions: with
/// the whole ring per round (2048 frames, 2.5 ms) a TCP client's Binding, which takes an
/// accept, a readiness poll and a read, one round each, waited 5–9 ms; with 256, about 1
/// ms. Throughput did not change (see docs/BENCHMARKS.md).
const XSK_ROUNDS: usize = 4;
const INDEX_MASK: u64 = (1 << TAG_SHIFT) - 1;

#[inline]
fn tag(kind: u64, index: u64) -> u64 {
    (kind << TAG_SHIFT) | (index & INDEX_MASK)
}

/// Checks that this kernel and process may use the io_uring features the workers need.
/// Returns why not, for the operator.
///
/// The probe runs on a short-lived thread of its own: tearing a ring down may queue task
/// work to the thread that created it, which would interrupt (EINTR) that thread's next
/// blocking system call.
pub(super) fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("relay-uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot spawn the probe thread: {e}"))?
        .join()
        .map_err(|_| "the io_uring probe panicked".to_owned())?
}

pub(crate) fn probe_here() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| describe_setup_error(&e))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11 or later)".into());
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("the kernel's io_uring does not support {name}"));
        }
    }
    let br = BufRing::new(8, 64).map_err(|e| format!("cannot allocate a buffer ring: {e}"))?;
    br.register(&ring.submitter(), BGID)
        .map_err(|e| format!("cannot register a provided buffer ring (needs Linux 5.19+): {e}"))?;
    let _ = ring.submitter().unregister_buf_ring(BGID);
    drop(ring);
    drop(br);
    Ok(())
}

fn describe_setup_error(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "io_uring_setup: {e} (kernel.io_uring_disabled = {disabled}, or a seccomp \
             filter / container policy forbids io_uring)"
        ),
        Some(libc::ENOSYS) => format!("io_uring_setup: {e} (kernel built without io_uring)"),
        _ => format!("io_uring_setup: {e}"),
    }
}

/// One worker's ring and everything its in-flight operations point at.
pub(super) struct UringWorker<H> {
    // Field order matters: the ring closes before the memory it may reference is freed.
    ring: IoUring,
    bufring: BufRing,
    recv_hdr: Box<libc::msghdr>,
    slots: SendSlots,
    sockets: Vec<UdpSocket>,
    armed: Vec<bool>,
    handler: H,
    counters: Arc<WorkerCounters>,
    counts: Counts,
    index: usize,
    /// TURN mode: listen datagrams go to the TURN server instead of `handler`. Declared
    /// after `ring`, so relayed sockets close after the ring stopped using them.
    turn: Option<Box<TurnIo>>,
    /// AF_XDP sockets (`xdp.af_xdp`), opened when the control plane asks. Declared
    /// before `turn`: nothing in it refers to the TURN state.
    xsk: Option<Box<XskPath>>,
}

impl<H: DatagramHandler> UringWorker<H> {
    pub(super) fn new(
        index: usize,
        sockets: Vec<UdpSocket>,
        handler: H,
        counters: Arc<WorkerCounters>,
        mut turn: Option<Box<TurnIo>>,
    ) -> Result<Self, DataplaneError> {
        if let Some(t) = turn.as_deref_mut() {
            t.xsk_capable = true;
        }
        let io = |what: &'static str| {
            move |source| DataplaneError::Io {
                worker: index,
                what,
                source,
            }
        };
        let ring = owned_ring(SQ_ENTRIES, CQ_ENTRIES).map_err(io("io_uring_setup"))?;
        let bufring =
            BufRing::new(BUF_COUNT, BUF_SIZE).map_err(io("allocating receive buffers"))?;
        bufring
            .register(&ring.submitter(), BGID)
            .map_err(io("registering the provided buffer ring"))?;
        // SAFETY: msghdr is a plain C struct; all-zero is valid. Only the name and control
        // lengths matter for a multishot RecvMsg: they fix the layout of each buffer.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        // Room for the destination address of datagrams on wildcard sockets (IP_PKTINFO).
        recv_hdr.msg_controllen = super::socket::CONTROL_LEN as _;
        let armed = vec![false; sockets.len()];
        Ok(UringWorker {
            ring,
            bufring,
            recv_hdr,
            slots: SendSlots::new(SEND_SLOTS),
            sockets,
            armed,
            handler,
            counters,
            counts: Counts::default(),
            index,
            turn,
            xsk: None,
        })
    }

    pub(super) fn run(mut self, shutdown: &AtomicBool) -> Result<(), DataplaneError> {
        let result = self.event_loop(shutdown);
        self.teardown();
        result
    }

    fn event_loop(&mut self, shutdown: &AtomicBool) -> Result<(), DataplaneError> {
        let index = self.index;
        let io = |what: &'static str| {
            move |source| DataplaneError::Io {
                worker: index,
                what,
                source,
            }
        };
        let UringWorker {
            ring,
            bufring,
            recv_hdr,
            slots,
            sockets,
            armed,
            handler,
            counters,
            counts,
            turn,
            xsk,
            index,
            ..
        } = self;
        let index = *index;
        let mut ops: Vec<Op> = Vec::with_capacity(256);
        let fds: Vec<i32> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let args = SubmitArgs::new().timespec(&WAIT);
        {
            let (submitter, mut sq, _) = ring.split();
            for (i, &fd) in fds.iter().enumerate() {
                let e = recv_entry(fd, recv_hdr, i);
                push(&submitter, &mut sq, &e).map_err(io("arming multishot receive"))?;
                armed[i] = true;
            }
            if let Some(t) = turn.as_deref() {
                for (i, l) in t.listeners.iter().enumerate() {
                    let e = poll_entry(l.socket.as_raw_fd(), TAG_ACCEPT, i as u64, true, false);
                    push(&submitter, &mut sq, &e).map_err(io("watching a stream listener"))?;
                }
            }
        }
        // Set when a round stopped taking completions with every send slot in flight and
        // completions still queued: see below.
        let mut starved = false;
        // Frames came from an AF_XDP socket in the last round (more may follow: no sleep).
        let mut xsk_more = false;
        // Busy rounds in a row that did not enter the kernel (see `must_enter`).
        let mut skipped: u32 = 0;
        while !shutdown.load(Ordering::Relaxed) {
            let (submitter, mut sq, mut cq) = ring.split();
            let busy = turn.as_deref().is_some_and(TurnIo::has_pending)
                || xsk_more
                || xsk.as_deref().is_some_and(XskPath::has_pending);
            if !busy && let Some(x) = xsk.as_deref_mut() {
                // About to sleep: ask to be woken when an AF_XDP socket has frames.
                arm_xsk_polls(x, &submitter, &mut sq, counts);
                // Published now, for the enter below (the queue syncs itself only when
                // dropped, at the end of the round).
                sq.sync();
            }
            let want = usize::from(!busy);
            let enter = must_enter(busy, sq.len(), sq.taskrun() || sq.cq_overflow(), skipped);
            skipped = if enter == Enter::Skip { skipped + 1 } else { 0 };
            let entered = match enter {
                Enter::Skip => Ok(0),
                Enter::Submit => submitter.submit_with_args(want, &args),
                Enter::Events => run_deferred_work(&submitter),
            };
            match entered {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(io("io_uring_enter")(e)),
            }
            cq.sync();
            if let Some(t) = turn.as_deref_mut() {
                t.tick_clock();
            }
            // Stop taking completions while every send slot is in flight: the sends are
            // submitted (and usually complete inline) at the next enter, which frees
            // slots; the rest of the queue waits for the next round instead of being
            // dropped for lack of a slot. But those sends' own completions queue up behind
            // the unread ones, so a round that finds every slot still in flight (starved)
            // takes completions anyway: otherwise no slot would ever be freed and the
            // worker would spin. Replies that find no slot then are counted as
            // NoSendSlot drops until the send completions free slots.
            while slots.available() > 0 || starved {
                let Some(cqe) = cq.next() else { break };
                let ud = cqe.user_data();
                let i = (ud & INDEX_MASK) as usize;
                let res = cqe.result();
                let flags = cqe.flags();
                match ud >> TAG_SHIFT {
                    TAG_RECV => {
                        if res < 0 {
                            if res == -libc::ENOBUFS {
                                counts.drop_io(IoDrop::NoBuffer);
                            } else {
                                counts.errors += 1;
                            }
                        } else if let Some(bid) = cqueue::buffer_select(flags) {
                            if let Some(buf) = bufring.buf(bid, res as usize) {
                                if let Some(t) = turn.as_deref_mut() {
                                    on_turn_datagram(
                                        buf,
                                        recv_hdr,
                                        Source::Listen(i),
                                        t,
                                        &mut UringSend {
                                            slots,
                                            submitter: &submitter,
                                            sq: &mut sq,
                                            counts,
                                        },
                                    );
                                } else if let Some(&fd) = fds.get(i) {
                                    on_datagram(
                                        buf, recv_hdr, fd, handler, slots, counts, &submitter,
                                        &mut sq,
                                    );
                                }
                            } else {
                                counts.errors += 1;
                            }
                            bufring.push(bid);
                        } else {
                            counts.errors += 1;
                        }
                        if !cqueue::more(flags)
                            && let Some(&fd) = fds.get(i)
                        {
                            // The multishot ended (buffers ran out, or an error): re-arm.
                            let e = recv_entry(fd, recv_hdr, i);
                            if push(&submitter, &mut sq, &e).is_err() {
                                armed[i] = false;
                                counts.errors += 1;
                            }
                        }
                    }
                    TAG_SEND => {
                        if res < 0 {
                            counts.errors += 1;
                        }
                        slots.release(i as u32);
                    }
                    TAG_XSK => {
                        // Readiness only: every socket is drained below, each round; the
                        // one-shot poll is armed again before the loop next sleeps.
                        if let Some(p) = xsk.as_deref_mut().and_then(|x| x.ports.get_mut(i)) {
                            p.poll = XskPoll::Idle;
                        }
                    }
                    kind @ (TAG_RELAY | TAG_ACCEPT | TAG_CONN | TAG_CONN_OUT) => {
                        let Some(t) = turn.as_deref_mut() else {
                            continue;
                        };
                        let data = ud & INDEX_MASK;
                        let mut tx = UringSend {
                            slots,
                            submitter: &submitter,
                            sq: &mut sq,
                            counts,
                        };
                        on_turn_completion(kind, data, res, flags, bufring, recv_hdr, t, &mut tx);
                    }
                    _ => {}
                }
            }
            starved = slots.available() == 0 && !cq.is_empty();
            if let (Some(t), Some(x)) = (turn.as_deref_mut(), xsk.as_deref_mut()) {
                let mut tx = UringSend {
                    slots,
                    submitter: &submitter,
                    sq: &mut sq,
                    counts,
                };
                xsk_more = drain_xsk(x, t, &mut tx);
                if xsk_more {
                    // Busy from now on: see `disarm_xsk_polls`.
                    disarm_xsk_polls(x, tx.submitter, tx.sq, tx.counts);
                }
                x.read_kernel_counts(t.now);
                tx.counts.xsk = [
                    x.counts.received,
                    x.counts.sent,
                    x.counts.fallback,
                    x.counts.dropped,
                    x.counts.kernel_ring_full,
                    x.counts.kernel_dropped,
                ];
            }
            if let Some(t) = turn.as_deref_mut() {
                t.retry_pending(&mut UringSend {
                    slots,
                    submitter: &submitter,
                    sq: &mut sq,
                    counts,
                });
                t.housekeeping();
                if let Some((setup, reply)) = t.take_xsk_request() {
                    // Its sockets' polls are armed when the loop next sleeps.
                    let answer = open_xsk(&setup, index, t, xsk);
                    let _ = reply.send(answer);
                }
                t.take_ops(&mut ops);
                for op in ops.drain(..) {
                    let e = match op {
                        Op::ArmRelay(h, fd) => {
                            recv_entry_tagged(fd, recv_hdr, TAG_RELAY, u64::from(h))
                        }
                        Op::CancelRelay(h) => cancel_entry(TAG_RELAY, u64::from(h)),
                        Op::WatchConn(token, fd) => poll_entry(fd, TAG_CONN, token, true, false),
                        Op::WantWrite(token, fd) => {
                            poll_entry(fd, TAG_CONN_OUT, token, false, true)
                        }
                        Op::UnwatchConn(token) => {
                            if push(&submitter, &mut sq, &cancel_entry(TAG_CONN_OUT, token))
                                .is_err()
                            {
                                counts.errors += 1;
                            }
                            cancel_entry(TAG_CONN, token)
                        }
                    };
                    if push(&submitter, &mut sq, &e).is_err() {
                        counts.errors += 1;
                        if let Op::CancelRelay(h) = op {
                            // Nothing will complete for it now; the socket closes with the
                            // slot (its receive, if any, is cancelled at shutdown).
                            tracing::debug!(
                                relay = h,
                                "cannot queue the cancel of a relayed socket"
                            );
                        }
                    }
                }
            }
            bufring.publish();
            counters.publish(counts);
            // Re-arm sockets whose re-arm failed earlier (queue was full).
            for (i, &fd) in fds.iter().enumerate() {
                if !armed[i] {
                    let e = recv_entry(fd, recv_hdr, i);
                    if push(&submitter, &mut sq, &e).is_ok() {
                        armed[i] = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Cancels every operation and waits (bounded) until none references our memory.
    fn teardown(&mut self) {
        let _ = self
            .ring
            .submitter()
            .register_sync_cancel(Some(WAIT), CancelBuilder::any());
        let deadline = Instant::now() + DRAIN;
        let mut recv_live = self.armed.iter().filter(|a| **a).count();
        loop {
            {
                let mut cq = self.ring.completion();
                cq.sync();
                for cqe in &mut cq {
                    let ud = cqe.user_data();
                    match ud >> TAG_SHIFT {
                        TAG_RECV if !cqueue::more(cqe.flags()) => {
                            recv_live = recv_live.saturating_sub(1);
                        }
                        TAG_SEND => self.slots.release((ud & INDEX_MASK) as u32),
                        _ => {}
                    }
                }
            }
            if (recv_live == 0 && self.slots.in_flight() == 0) || Instant::now() >= deadline {
                break;
            }
            let _ = self.ring.submitter().submit_with_args(
                1,
                &SubmitArgs::new().timespec(&Timespec::new().nsec(10_000_000)),
            );
        }
        self.counters.publish(&self.counts);
        if recv_live != 0 || self.slots.in_flight() != 0 {
            tracing::warn!(
                worker = self.index,
                "io_uring operations still in flight at shutdown; leaking their buffers"
            );
            self.bufring.leak_buffers();
            return;
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}

#[inline]
fn recv_entry(fd: i32, hdr: &libc::msghdr, i: usize) -> squeue::Entry {
    recv_entry_tagged(fd, hdr, TAG_RECV, i as u64)
}

#[inline]
fn recv_entry_tagged(fd: i32, hdr: &libc::msghdr, kind: u64, data: u64) -> squeue::Entry {
    opcode::RecvMsgMulti::new(Fd(fd), hdr, BGID)
        .build()
        .user_data(tag(kind, data))
}

/// A poll for readability (multishot) or writability (one shot).
#[inline]
fn poll_entry(fd: i32, kind: u64, data: u64, read: bool, write: bool) -> squeue::Entry {
    let mut mask = 0u32;
    if read {
        mask |= libc::POLLIN as u32;
    }
    if write {
        mask |= libc::POLLOUT as u32;
    }
    opcode::PollAdd::new(Fd(fd), mask)
        .multi(read)
        .build()
        .user_data(tag(kind, data))
}

/// Cancels every operation tagged `(kind, data)`.
#[inline]
fn cancel_entry(kind: u64, data: u64) -> squeue::Entry {
    opcode::AsyncCancel2::new(CancelBuilder::user_data(tag(kind, data)).all())
        .build()
        .user_data(tag(TAG_CANCEL, 0))
}

/// [`UdpSend`] through the worker's send slots.
struct UringSend<'a, 'r, 's> {
    slots: &'a mut SendSlots,
    submitter: &'a Submitter<'r>,
    sq: &'a mut squeue::SubmissionQueue<'s>,
    counts: &'a mut Counts,
}

impl UdpSend for UringSend<'_, '_, '_> {
    #[inline]
    fn send(
        &mut self,
        fd: std::os::fd::RawFd,
        to: std::net::SocketAddr,
        from: Option<std::net::IpAddr>,
        bytes: &[u8],
    ) -> bool {
        if bytes.len() > super::slots::SLOT_BYTES {
            self.counts.errors += 1;
            return false;
        }
        let Some(slot) = self.slots.alloc() else {
            self.counts.drop_io(IoDrop::NoSendSlot);
            return false;
        };
        self.slots.buf_mut(slot)[..bytes.len()].copy_from_slice(bytes);
        let hdr = self.slots.prepare_from(slot, bytes.len(), &to, from);
        let e = opcode::SendMsg::new(Fd(fd), hdr)
            .build()
            .user_data(tag(TAG_SEND, u64::from(slot)));
        if push(self.submitter, self.sq, &e).is_ok() {
            self.counts.answered += 1;
            true
        } else {
            self.slots.release(slot);
            self.counts.errors += 1;
            false
        }
    }
}

/// Where a TURN datagram came from.
enum Source {
    Listen(usize),
    Relay(u32),
}

/// One received TURN datagram (client on a listen socket, or peer on a relayed socket).
#[inline]
fn on_turn_datagram(
    buf: &[u8],
    recv_hdr: &libc::msghdr,
    from: Source,
    turn: &mut TurnIo,
    tx: &mut UringSend<'_, '_, '_>,
) {
    let Ok(msg) = RecvMsgOut::parse(buf, recv_hdr) else {
        tx.counts.errors += 1;
        return;
    };
    tx.counts.received += 1;
    if msg.is_payload_truncated() {
        tx.counts.drop_io(IoDrop::Truncated);
        return;
    }
    let Some(source) = decode_sockaddr(msg.name_data()) else {
        tx.counts.drop_io(IoDrop::BadSource);
        return;
    };
    match from {
        Source::Listen(i) => {
            let dst = super::socket::pktinfo_destination(msg.control_data());
            turn.on_client_datagram(tx, i, source, dst, msg.payload_data());
        }
        Source::Relay(h) => turn.on_peer_datagram(tx, h, source, msg.payload_data()),
    }
}

/// A completion of a TURN operation (relay receive, listener / connection poll).
#[allow(clippy::too_many_arguments)]
fn on_turn_completion(
    kind: u64,
    data: u64,
    res: i32,
    flags: u32,
    bufring: &mut BufRing,
    recv_hdr: &libc::msghdr,
    turn: &mut TurnIo,
    tx: &mut UringSend<'_, '_, '_>,
) {
    match kind {
        TAG_RELAY => {
            let handle = data as u32;
            if res >= 0 {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if let Some(buf) = bufring.buf(bid, res as usize) {
                        on_turn_datagram(buf, recv_hdr, Source::Relay(handle), turn, tx);
                    }
                    bufring.push(bid);
                }
            } else if res == -libc::ENOBUFS {
                tx.counts.drop_io(IoDrop::NoBuffer);
            } else if res != -libc::ECANCELED {
                tx.counts.errors += 1;
            }
            if !cqueue::more(flags) {
                let fd = turn.relays.borrow().fd(handle);
                match fd {
                    Some(fd) => {
                        let e = recv_entry_tagged(fd, recv_hdr, TAG_RELAY, data);
                        if push(tx.submitter, tx.sq, &e).is_err() {
                            tx.counts.errors += 1;
                        }
                    }
                    None => turn.relays.borrow_mut().finish_close(handle),
                }
            }
        }
        TAG_ACCEPT => {
            let i = data as usize;
            if res >= 0 {
                turn.on_accept(i);
            }
            if !cqueue::more(flags)
                && res != -libc::ECANCELED
                && let Some(l) = turn.listeners.get(i)
            {
                let e = poll_entry(l.socket.as_raw_fd(), TAG_ACCEPT, data, true, false);
                if push(tx.submitter, tx.sq, &e).is_err() {
                    tx.counts.errors += 1;
                }
            }
        }
        TAG_CONN => {
            if res >= 0 {
                turn.on_readable(tx, data);
            }
            if !cqueue::more(flags)
                && res != -libc::ECANCELED
                && let Some(fd) = turn.conn_fd(data)
            {
                let e = poll_entry(fd, TAG_CONN, data, true, false);
                if push(tx.submitter, tx.sq, &e).is_err() {
                    tx.counts.errors += 1;
                }
            }
        }
        TAG_CONN_OUT if res >= 0 => turn.on_writable(data),
        _ => {}
    }
}

/// Opens the worker's AF_XDP sockets, registers them and its relayed ports with the XDP
/// program; the answer for the control plane.
fn open_xsk(
    setup: &xsk_path::XskSetup,
    index: usize,
    turn: &mut TurnIo,
    xsk: &mut Option<Box<XskPath>>,
) -> Result<usize, String> {
    if xsk.is_some() {
        return Err("AF_XDP sockets are already open".to_owned());
    }
    let path = XskPath::open(setup, index as u32).map_err(|e| e.to_string())?;
    let n = path.ports.len();
    let steering = path.steering();
    let worker = index as u32;
    turn.relays
        .borrow_mut()
        .index_ports(Box::new(move |port, live| {
            let r = if live {
                steering.set_owner(port, worker)
            } else {
                steering.clear_port(port)
            };
            if let Err(e) = r {
                tracing::warn!(port, error = %e, "cannot update the AF_XDP port map; this port's peer traffic stays on the kernel socket");
            }
        }));
    *xsk = Some(Box::new(path));
    Ok(n)
}

/// Busy rounds in a row that may skip `io_uring_enter` before one enters anyway to run
/// deferred completion work: a bound on how long that work can wait should the kernel
/// not flag it (`IORING_SQ_TASKRUN`, which [`owned_ring`] asks for).
const MAX_SKIPPED_ENTERS: u32 = 64;

/// `IORING_ENTER_GETEVENTS` (include/uapi/linux/io_uring.h): run deferred task work and
/// reap, waiting for `min_complete` completions (0 here: no wait).
const ENTER_GETEVENTS: u32 = 1;

/// How a loop round enters the kernel.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Enter {
    /// No system call: busy, nothing queued, no work flagged.
    Skip,
    /// `submit_with_args`: submits what is queued, and waits when the worker is idle (the
    /// crate adds GETEVENTS then, and when work is flagged).
    Submit,
    /// A GETEVENTS enter that does not wait: the periodic run of deferred work.
    Events,
}

/// Whether a round enters the kernel. An idle worker enters to sleep; a busy one (AF_XDP
/// frames keep coming, or sends wait for slots) enters only to submit queued entries or to
/// run completion work the kernel flagged, and otherwise every [`MAX_SKIPPED_ENTERS`]
/// rounds. Before, every busy round made an `io_uring_enter` that did nothing (50 000 to
/// 130 000 a second at 1 Mpps on AF_XDP), and none of them ran deferred work, so a TCP
/// client's Binding waited 0.5–2.8 s for the worker to go idle.
fn must_enter(busy: bool, queued: usize, flagged: bool, skipped: u32) -> Enter {
    if !busy || queued > 0 || flagged {
        Enter::Submit
    } else if skipped + 1 >= MAX_SKIPPED_ENTERS {
        Enter::Events
    } else {
        Enter::Skip
    }
}

/// Runs the ring's deferred completion work without submitting or waiting.
fn run_deferred_work(submitter: &Submitter<'_>) -> io::Result<usize> {
    // SAFETY: nothing is submitted (to_submit 0) and no argument is passed (None: a null
    // pointer with the size of a sigset_t, which the kernel ignores without EXT_ARG).
    unsafe { submitter.enter::<libc::sigset_t>(0, 0, ENTER_GETEVENTS, None) }
}

/// Arms a one-shot readability poll on each AF_XDP socket that has none.
///
/// Why one-shot, and only before the loop sleeps: a worker that is draining its sockets
/// needs no wake-up, and a multishot poll posts a completion for every readiness change
/// and sits on the socket's wait queue all the time (the kernel runs its wake callback on
/// receive and on every send completion). One about to sleep does need it, and arming
/// then loses none: the kernel checks readiness when the poll is armed. (Profiled at
/// saturation, the `sock_wfree` wake-up cost did not go away with this change, so some
/// of it has another cause; throughput stayed within noise.)
fn arm_xsk_polls(
    x: &mut XskPath,
    submitter: &Submitter<'_>,
    sq: &mut squeue::SubmissionQueue<'_>,
    counts: &mut Counts,
) {
    for (i, p) in x.ports.iter_mut().enumerate() {
        if p.poll != XskPoll::Idle {
            continue;
        }
        let e = opcode::PollAdd::new(Fd(p.socket.fd()), libc::POLLIN as u32)
            .build()
            .user_data(tag(TAG_XSK, i as u64));
        if push(submitter, sq, &e).is_ok() {
            p.poll = XskPoll::Armed;
        } else {
            counts.errors += 1;
        }
    }
}

/// Cancels the polls still armed on AF_XDP sockets once the worker is busy draining
/// them (it will not sleep, so it needs no wake-up): a socket that only sends (the
/// peer-side one, when peers are silent) would otherwise keep its poll on its wait queue
/// for as long as the worker stays busy (see [`arm_xsk_polls`]).
fn disarm_xsk_polls(
    x: &mut XskPath,
    submitter: &Submitter<'_>,
    sq: &mut squeue::SubmissionQueue<'_>,
    counts: &mut Counts,
) {
    for (i, p) in x.ports.iter_mut().enumerate() {
        if p.poll != XskPoll::Armed {
            continue;
        }
        if push(submitter, sq, &cancel_entry(TAG_XSK, i as u64)).is_ok() {
            p.poll = XskPoll::Cancelling;
        } else {
            counts.errors += 1;
        }
    }
}

/// Takes what the AF_XDP sockets received (bounded) through the TURN core, handing the
/// frames each batch queued to the kernel before the next batch (the kernel copies them
/// out of the UMEM while they are still in this core's cache). True when any socket gave
/// frames (more may follow).
fn drain_xsk(x: &mut XskPath, turn: &mut TurnIo, tx: &mut UringSend<'_, '_, '_>) -> bool {
    let mut more = false;
    for i in 0..x.ports.len() {
        for _ in 0..XSK_ROUNDS {
            let n = x.with_batch(i, |x, frame, pass| match pass {
                Pass::Prefetch => prefetch_xsk_frame(frame, turn),
                Pass::Handle => on_xsk_frame(frame, x, turn, tx),
            });
            if x.flush() != 0 {
                tx.counts.errors += 1;
            }
            // A round that found frames is followed by one that does not sleep: under
            // load the loop then never arms a poll (see `arm_xsk_polls`), and an idle
            // worker sleeps after one empty look.
            more |= n > 0;
            if n < RX_BATCH {
                break;
            }
        }
    }
    // Frames a previous flush left on a ring (device busy) go now.
    if x.has_pending() && x.flush() != 0 {
        tx.counts.errors += 1;
    }
    more
}

/// The first pass over a frame: its addresses parsed (checksums are checked in the
/// second), and the forwarding entry it will use asked for.
#[inline]
fn prefetch_xsk_frame(frame: &[u8], turn: &TurnIo) {
    if let Ok(f) = crate::wire::parse_udp_frame(frame) {
        turn.prefetch_datagram(f.src, f.dst, f.payload);
    }
}

/// One frame from an AF_XDP socket: a client's datagram to a listen address, or a
/// peer's to one of this worker's relayed addresses.
#[inline]
fn on_xsk_frame(
    frame: &[u8],
    x: &mut XskPath,
    turn: &mut TurnIo,
    inner: &mut UringSend<'_, '_, '_>,
) {
    let Some(r) = xsk_path::check_frame(frame) else {
        x.counts.dropped += 1;
        return;
    };
    inner.counts.received += 1;
    let now = turn.now;
    let mut tx = XskSend {
        inner,
        xsk: x,
        tos: r.tos,
        v4: r.v4,
        now,
    };
    if let Some(i) = turn.listen_index_for(r.dst) {
        turn.on_client_datagram(&mut tx, i, r.src, Some(r.dst.ip()), r.payload);
        return;
    }
    let relay = turn.relays.borrow().by_port(r.dst.port());
    match relay {
        Some((h, local)) if local.ip() == r.dst.ip() => {
            turn.on_peer_datagram(&mut tx, h, r.src, r.payload);
        }
        _ => tx.xsk.counts.dropped += 1,
    }
}

/// [`UdpSend`] for datagrams answering an AF_XDP frame: the frame is built here and sent
/// through the worker's AF_XDP socket when it can be, else through the socket.
struct XskSend<'a, 'b, 'r, 's> {
    inner: &'a mut UringSend<'b, 'r, 's>,
    xsk: &'a mut XskPath,
    /// The received frame's traffic class and IPv4 fields (the output copies them).
    tos: u8,
    v4: crate::xdp::turn_frames::Ipv4Fields,
    now: Instant,
}

impl UdpSend for XskSend<'_, '_, '_, '_> {
    #[inline]
    fn send(
        &mut self,
        fd: std::os::fd::RawFd,
        to: std::net::SocketAddr,
        from: Option<std::net::IpAddr>,
        bytes: &[u8],
    ) -> bool {
        self.inner.send(fd, to, from, bytes)
    }

    #[inline]
    fn send_from(
        &mut self,
        fd: std::os::fd::RawFd,
        local: std::net::SocketAddr,
        to: std::net::SocketAddr,
        from: Option<std::net::IpAddr>,
        bytes: &[u8],
    ) -> bool {
        if self.xsk.send(local, to, self.tos, self.v4, bytes, self.now) {
            self.inner.counts.answered += 1;
            true
        } else {
            self.inner.send(fd, to, from, bytes)
        }
    }
}

/// Queues `e`, submitting once to make room if the queue is full.
#[inline]
fn push(
    submitter: &Submitter<'_>,
    sq: &mut squeue::SubmissionQueue<'_>,
    e: &squeue::Entry,
) -> io::Result<()> {
    for _ in 0..2 {
        // SAFETY: every pointer in our entries (msghdr, buffers, slots) lives in the worker
        // and stays valid until the operation's completion has been reaped.
        if unsafe { sq.push(e) }.is_ok() {
            return Ok(());
        }
        sq.sync();
        submitter.submit()?;
        sq.sync();
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "submission queue full",
    ))
}

/// One received buffer: parse, hand to the handler, queue the reply.
#[allow(clippy::too_many_arguments)]
#[inline]
fn on_datagram<H: DatagramHandler>(
    buf: &[u8],
    recv_hdr: &libc::msghdr,
    fd: i32,
    handler: &mut H,
    slots: &mut SendSlots,
    counts: &mut Counts,
    submitter: &Submitter<'_>,
    sq: &mut squeue::SubmissionQueue<'_>,
) {
    let Ok(msg) = RecvMsgOut::parse(buf, recv_hdr) else {
        counts.errors += 1;
        return;
    };
    counts.received += 1;
    if msg.is_payload_truncated() {
        counts.drop_io(IoDrop::Truncated);
        return;
    }
    let Some(source) = decode_sockaddr(msg.name_data()) else {
        counts.drop_io(IoDrop::BadSource);
        return;
    };
    let Some(slot) = slots.alloc() else {
        counts.drop_io(IoDrop::NoSendSlot);
        return;
    };
    match handler.handle(msg.payload_data(), source, slots.buf_mut(slot)) {
        Verdict::Reply(n) => {
            let hdr = slots.prepare(slot, n, &source);
            let e = opcode::SendMsg::new(Fd(fd), hdr)
                .build()
                .user_data(tag(TAG_SEND, u64::from(slot)));
            if push(submitter, sq, &e).is_ok() {
                counts.answered += 1;
            } else {
                slots.release(slot);
                counts.errors += 1;
            }
        }
        Verdict::Drop(code) => {
            slots.release(slot);
            counts.drop_handler(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = tag(TAG_SEND, 511);
        assert_eq!(t >> TAG_SHIFT, TAG_SEND);
        assert_eq!(t & INDEX_MASK, 511);
    }

    #[test]
    fn busy_rounds_enter_only_to_submit_or_run_flagged_work() {
        // Idle: always enter (to sleep), whatever else holds.
        for (queued, flagged, skipped) in [(0, false, 0), (3, true, 63), (0, false, 200)] {
            assert_eq!(must_enter(false, queued, flagged, skipped), Enter::Submit);
        }
        // Busy: queued entries or flagged work enter at once.
        assert_eq!(must_enter(true, 1, false, 0), Enter::Submit);
        assert_eq!(must_enter(true, 0, true, 0), Enter::Submit);
        // Busy with nothing to do: no system call, except every MAX_SKIPPED_ENTERS rounds.
        let mut skipped = 0;
        let mut entered = Vec::new();
        for round in 0..3 * MAX_SKIPPED_ENTERS {
            let e = must_enter(true, 0, false, skipped);
            skipped = if e == Enter::Skip { skipped + 1 } else { 0 };
            if e != Enter::Skip {
                assert_eq!(e, Enter::Events);
                entered.push(round);
            }
        }
        let m = MAX_SKIPPED_ENTERS;
        assert_eq!(entered, [m - 1, 2 * m - 1, 3 * m - 1]);
    }

    /// What `must_enter` relies on: with the ring [`owned_ring`] builds, completion work
    /// the kernel defers (a receive that completes when a datagram arrives) is flagged in
    /// the SQ ring, and the crate's `submit_with_args(0, ..)` then runs it. Without
    /// `setup_taskrun_flag` the flag never shows and this fails.
    #[test]
    fn deferred_completion_work_is_flagged_and_run_by_a_non_waiting_submit() {
        let mut ring = owned_ring(8, 16).expect("io_uring");
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut buf = [0u8; 64];
        let e = opcode::Recv::new(Fd(rx.as_raw_fd()), buf.as_mut_ptr(), buf.len() as u32)
            .build()
            .user_data(7);
        // SAFETY: `buf` outlives the receive: it completes (asserted below) before the
        // function returns, and the ring is dropped before `buf`'s frame ends otherwise.
        unsafe { ring.submission().push(&e) }.expect("queue the receive");
        ring.submit().expect("submit");
        assert!(ring.completion().is_empty(), "nothing arrived yet");
        tx.send_to(b"hello", rx.local_addr().expect("addr"))
            .expect("send");
        // Only the first set-up (deferred task work) asks for a single issuer. The
        // fall-back ones run the work when a system call of this thread returns (the
        // `send_to` above), so the completion may be there already.
        let deferred = ring.params().is_setup_single_issuer();
        let mut flagged = false;
        for _ in 0..1000 {
            let taskrun = ring.submission().taskrun();
            if taskrun || (!deferred && !ring.completion().is_empty()) {
                flagged = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(flagged, "the datagram's completion work was never flagged");
        let args = SubmitArgs::new().timespec(&WAIT);
        ring.submitter()
            .submit_with_args(0, &args)
            .expect("non-waiting submit");
        let cqe = ring.completion().next().expect("the receive completed");
        assert_eq!((cqe.user_data(), cqe.result()), (7, 5));
        assert_eq!(&buf[..5], b"hello");
    }
}
