//! The io_uring socket layer of the media thread: a multishot RecvMsg into a provided
//! buffer ring receives without a syscall per datagram; every datagram the engine sends
//! is copied into a preallocated send slot and queued as a SendMsg; one
//! `io_uring_enter` per loop iteration submits the queued sends and waits for
//! completions (at most until the engine's next timer, 10 ms at most). Nothing is
//! allocated per packet.
//!
//! Receive timestamps: one `Instant::now()` per completion batch, not per datagram (a
//! batch is what one enter returned; its datagrams arrived within that wait).
//!
//! When every send slot is in flight, a send first submits the queue and reaps the send
//! completions that came back (UDP sends usually complete inline); if still none is free
//! the datagram is dropped and counted, never waited for.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{CompletionQueue, IoUring, cqueue, opcode, squeue};

use super::IoCounters;
use super::chores::Chores;
use super::tcp::{Routed, TcpMedia};
use crate::dataplane::bufring::BufRing;
use crate::dataplane::slots::{SLOT_BYTES, SendSlots};
use crate::dataplane::socket::{NAME_LEN, decode_sockaddr};
use crate::ice::Transport as IceTransport;
use crate::sfu::engine::{Arrival, Engine, Transmit};

/// Submission queue entries.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries (a multishot receive completes many times per SQE).
const CQ_ENTRIES: u32 = 8192;
/// Receive buffers in the provided buffer ring (a power of two).
const BUF_COUNT: u16 = 1024;
/// Bytes per receive buffer: recvmsg header + source address + payload.
const BUF_SIZE: usize = 2048;
/// Preallocated send slots: one received video packet fans out to every subscriber.
const SEND_SLOTS: u32 = 2048;
/// Buffer group of the media ring.
const BGID: u16 = 0;
/// Longest the teardown waits for cancelled operations to complete.
const DRAIN: Duration = Duration::from_secs(1);

const TAG_SHIFT: u32 = 56;
const TAG_RECV: u64 = 1;
const TAG_SEND: u64 = 2;
/// The multishot poll on the ICE-TCP epoll descriptor.
const TAG_TCP: u64 = 3;
const INDEX_MASK: u64 = (1 << TAG_SHIFT) - 1;

// A receive buffer holds the recvmsg header (16 bytes), the source address and the
// largest datagram the engine accepts, so nothing it could use is truncated.
const _: () = assert!(BUF_SIZE >= 16 + NAME_LEN + crate::sfu::engine::MAX_DATAGRAM);

#[inline]
fn tag(kind: u64, index: u64) -> u64 {
    (kind << TAG_SHIFT) | (index & INDEX_MASK)
}

/// A received datagram waiting for the engine: its buffer and the completion's length.
#[derive(Debug, Clone, Copy)]
struct Received {
    bid: u16,
    len: usize,
}

/// The multishot poll on the ICE-TCP epoll descriptor: whether it is live and whether it
/// fired since the last service round.
#[derive(Debug, Default, Clone, Copy)]
struct TcpPoll {
    armed: bool,
    ready: bool,
}

/// The media thread's ring and everything its in-flight operations point at.
pub(super) struct UringMedia {
    // Field order matters: the ring closes before the memory it may reference is freed.
    ring: IoUring,
    bufring: BufRing,
    recv_hdr: Box<libc::msghdr>,
    slots: SendSlots,
    /// Receive completions reaped but not yet handed to the engine. Each holds a receive
    /// buffer, so there are never more than [`BUF_COUNT`]: preallocated, never grows.
    received: VecDeque<Received>,
    /// Where a datagram is copied for the engine (it decrypts in place).
    scratch: Box<[u8]>,
    /// Whether the multishot receive is live.
    armed: bool,
    tcp_poll: TcpPoll,
    socket: UdpSocket,
}

impl UringMedia {
    /// Sets up the ring (on the thread that will use it) and registers the buffer ring.
    pub(super) fn new(socket: UdpSocket) -> io::Result<UringMedia> {
        let ring = crate::dataplane::uring::owned_ring(SQ_ENTRIES, CQ_ENTRIES)?;
        let bufring = BufRing::new(BUF_COUNT, BUF_SIZE)?;
        bufring.register(&ring.submitter(), BGID)?;
        // SAFETY: msghdr is a plain C struct; all-zero is valid. Only the name and control
        // lengths matter for a multishot RecvMsg: they fix the layout of each buffer.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        Ok(UringMedia {
            ring,
            bufring,
            recv_hdr,
            slots: SendSlots::new(SEND_SLOTS),
            received: VecDeque::with_capacity(usize::from(BUF_COUNT)),
            scratch: vec![0u8; BUF_SIZE].into_boxed_slice(),
            armed: false,
            tcp_poll: TcpPoll::default(),
            socket,
        })
    }

    /// Runs until `stop` is set, then cancels and drains every operation.
    pub(super) fn run(
        mut self,
        engine: &mut Engine,
        mut chores: Chores,
        tcp: Option<&mut TcpMedia>,
        local: SocketAddr,
        stop: &AtomicBool,
        counters: &IoCounters,
    ) {
        self.event_loop(engine, &mut chores, tcp, local, stop, counters);
        self.teardown(counters);
    }

    fn event_loop(
        &mut self,
        engine: &mut Engine,
        chores: &mut Chores,
        mut tcp: Option<&mut TcpMedia>,
        local: SocketAddr,
        stop: &AtomicBool,
        counters: &IoCounters,
    ) {
        let fd = self.socket.as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            if !self.armed {
                let e = recv_entry(fd, &self.recv_hdr);
                if push(&mut self.ring, &e).is_ok() {
                    self.armed = true;
                }
            }
            if let Some(t) = tcp.as_deref()
                && !self.tcp_poll.armed
            {
                let e = tcp_poll_entry(t.poll_fd());
                if push(&mut self.ring, &e).is_ok() {
                    self.tcp_poll.armed = true;
                }
            }
            let tcp_work = self.tcp_poll.ready || tcp.as_deref().is_some_and(TcpMedia::has_work);
            let wait = Timespec::from(chores.wait(engine));
            let args = SubmitArgs::new().timespec(&wait);
            // Datagrams reaped by a send that had to free slots during the chores are
            // waiting already (or TCP has work): no sleep then.
            let want = usize::from(self.received.is_empty() && !tcp_work);
            // The one enter of this iteration: submits the sends queued since the last
            // one (and the receive, when re-armed) and waits for completions.
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed; the SFU media thread stops");
                    return;
                }
            }
            let now = Instant::now();
            reap(
                &mut self.ring.completion(),
                &mut self.slots,
                &mut self.received,
                &mut self.bufring,
                &mut self.armed,
                &mut self.tcp_poll,
                counters,
            );
            while let Some(r) = self.received.pop_front() {
                let got = take_datagram(&self.bufring, &self.recv_hdr, r, &mut self.scratch);
                // The payload is copied out: the buffer goes back to the kernel now.
                self.bufring.push(r.bid);
                self.bufring.publish();
                let Some((len, source)) = got else {
                    IoCounters::bump(&counters.recv_drops);
                    continue;
                };
                let (mut udp, scratch) = self.split(counters, fd);
                let mut tx = Routed {
                    udp: &mut udp,
                    tcp: tcp.as_deref_mut().map(TcpMedia::conns),
                    counters,
                };
                let at = Arrival {
                    source,
                    local,
                    via: IceTransport::Udp,
                    now,
                };
                engine.handle_datagram(scratch, len, at, &mut tx);
            }
            if let Some(t) = tcp.as_deref_mut() {
                let now = Instant::now();
                if self.tcp_poll.ready || t.has_work() {
                    self.tcp_poll.ready = false;
                    let (mut udp, _) = self.split(counters, fd);
                    t.service(engine, &mut udp, counters, now);
                }
                t.tick(counters, now);
            }
            let (mut udp, _) = self.split(counters, fd);
            let mut tx = Routed {
                udp: &mut udp,
                tcp: tcp.as_deref_mut().map(TcpMedia::conns),
                counters,
            };
            chores.run(engine, &mut tx);
        }
    }

    /// This iteration's send side, and beside it the scratch buffer the engine decrypts
    /// into while it sends (disjoint fields of the worker).
    fn split<'a>(&'a mut self, counters: &'a IoCounters, fd: RawFd) -> (UringTx<'a>, &'a mut [u8]) {
        (
            UringTx {
                ring: &mut self.ring,
                slots: &mut self.slots,
                received: &mut self.received,
                bufring: &mut self.bufring,
                armed: &mut self.armed,
                tcp_poll: &mut self.tcp_poll,
                counters,
                fd,
            },
            &mut self.scratch,
        )
    }

    /// Cancels every operation and waits (at most [`DRAIN`]) until none references our
    /// memory; leaks the receive buffers if some still might.
    fn teardown(&mut self, counters: &IoCounters) {
        // Sends queued but not submitted yet go out first (and complete like the others).
        let _ = self.ring.submit();
        let _ = self.ring.submitter().register_sync_cancel(
            Some(Timespec::new().nsec(100_000_000)),
            CancelBuilder::any(),
        );
        let deadline = Instant::now() + DRAIN;
        loop {
            reap(
                &mut self.ring.completion(),
                &mut self.slots,
                &mut self.received,
                &mut self.bufring,
                &mut self.armed,
                &mut self.tcp_poll,
                counters,
            );
            self.received.clear();
            let idle = !self.armed && !self.tcp_poll.armed && self.slots.in_flight() == 0;
            if idle || Instant::now() >= deadline {
                break;
            }
            let _ = self.ring.submitter().submit_with_args(
                1,
                &SubmitArgs::new().timespec(&Timespec::new().nsec(10_000_000)),
            );
        }
        if self.armed || self.slots.in_flight() != 0 {
            tracing::warn!(
                "SFU media ring: operations still in flight at shutdown; leaking their buffers"
            );
            self.bufring.leak_buffers();
            let slots = std::mem::replace(&mut self.slots, SendSlots::new(0));
            std::mem::forget(slots);
            return;
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}

/// Takes every completion: frees the slots of finished sends, queues received datagrams
/// for the engine, notes a receive that ended (it is re-armed before the next wait).
fn reap(
    cq: &mut CompletionQueue<'_>,
    slots: &mut SendSlots,
    received: &mut VecDeque<Received>,
    bufring: &mut BufRing,
    armed: &mut bool,
    tcp_poll: &mut TcpPoll,
    counters: &IoCounters,
) {
    cq.sync();
    for cqe in &mut *cq {
        let ud = cqe.user_data();
        let res = cqe.result();
        let flags = cqe.flags();
        match ud >> TAG_SHIFT {
            TAG_SEND => {
                if res < 0 {
                    IoCounters::bump(&counters.send_errors);
                    if !counters.send_error_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            error = %io::Error::from_raw_os_error(-res),
                            "SFU media send failed (later failures are only counted)"
                        );
                    }
                }
                slots.release((ud & INDEX_MASK) as u32);
            }
            TAG_TCP => {
                if !cqueue::more(flags) {
                    tcp_poll.armed = false;
                }
                if res != -libc::ECANCELED {
                    tcp_poll.ready = true;
                }
            }
            TAG_RECV => {
                if !cqueue::more(flags) {
                    *armed = false;
                }
                if let Some(bid) = cqueue::buffer_select(flags) {
                    match usize::try_from(res) {
                        Ok(len) if received.len() < received.capacity() => {
                            received.push_back(Received { bid, len });
                        }
                        _ => {
                            bufring.push(bid);
                            bufring.publish();
                            IoCounters::bump(&counters.recv_drops);
                        }
                    }
                } else if res != -libc::ECANCELED {
                    // No buffer (ENOBUFS: the ring ran dry) or a receive error.
                    IoCounters::bump(&counters.recv_drops);
                }
            }
            _ => {}
        }
    }
}

/// Copies datagram `r` into `scratch`: its length and source, or None if unusable.
#[inline]
fn take_datagram(
    bufring: &BufRing,
    recv_hdr: &libc::msghdr,
    r: Received,
    scratch: &mut [u8],
) -> Option<(usize, SocketAddr)> {
    let buf = bufring.buf(r.bid, r.len)?;
    let msg = RecvMsgOut::parse(buf, recv_hdr).ok()?;
    if msg.is_payload_truncated() || msg.is_name_data_truncated() {
        return None;
    }
    let source = decode_sockaddr(msg.name_data())?;
    let payload = msg.payload_data();
    scratch.get_mut(..payload.len())?.copy_from_slice(payload);
    Some((payload.len(), source))
}

/// [`Transmit`] through the send slots.
struct UringTx<'a> {
    ring: &'a mut IoUring,
    slots: &'a mut SendSlots,
    received: &'a mut VecDeque<Received>,
    bufring: &'a mut BufRing,
    armed: &'a mut bool,
    tcp_poll: &'a mut TcpPoll,
    counters: &'a IoCounters,
    fd: RawFd,
}

impl UringTx<'_> {
    /// Every slot is in flight: submit the queue and take the completions that came back.
    fn flush(&mut self) {
        let _ = self.ring.submit();
        reap(
            &mut self.ring.completion(),
            self.slots,
            self.received,
            self.bufring,
            self.armed,
            self.tcp_poll,
            self.counters,
        );
    }
}

impl Transmit for UringTx<'_> {
    #[inline]
    fn send(&mut self, data: &[u8], dest: SocketAddr) {
        if data.len() > SLOT_BYTES {
            IoCounters::bump(&self.counters.send_errors);
            return;
        }
        let slot = match self.slots.alloc() {
            Some(s) => s,
            None => {
                self.flush();
                match self.slots.alloc() {
                    Some(s) => s,
                    None => {
                        IoCounters::bump(&self.counters.send_slot_full);
                        return;
                    }
                }
            }
        };
        self.slots.buf_mut(slot)[..data.len()].copy_from_slice(data);
        let hdr = self.slots.prepare(slot, data.len(), &dest);
        let e = opcode::SendMsg::new(Fd(self.fd), hdr)
            .build()
            .user_data(tag(TAG_SEND, u64::from(slot)));
        if push(self.ring, &e).is_err() {
            self.slots.release(slot);
            IoCounters::bump(&self.counters.send_errors);
        }
    }
}

#[inline]
fn recv_entry(fd: RawFd, hdr: &libc::msghdr) -> squeue::Entry {
    opcode::RecvMsgMulti::new(Fd(fd), hdr, BGID)
        .build()
        .user_data(tag(TAG_RECV, 0))
}

/// A multishot poll for readability of the ICE-TCP epoll descriptor.
#[inline]
fn tcp_poll_entry(epfd: RawFd) -> squeue::Entry {
    opcode::PollAdd::new(Fd(epfd), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(tag(TAG_TCP, 0))
}

/// Queues `e`, submitting once to make room if the queue is full.
#[inline]
fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    for _ in 0..2 {
        // SAFETY: every pointer in our entries (the receive msghdr, the send slots and
        // their payloads) lives in `UringMedia` and stays valid until the operation's
        // completion has been reaped (the teardown drains them or leaks the memory).
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "submission queue full",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = tag(TAG_SEND, SEND_SLOTS as u64 - 1);
        assert_eq!(t >> TAG_SHIFT, TAG_SEND);
        assert_eq!(t & INDEX_MASK, SEND_SLOTS as u64 - 1);
    }
}
