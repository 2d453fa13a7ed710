//! The portable backend for kernels or sandboxes without io_uring: poll the worker's
//! sockets with a short timeout, drain each readable one with recvmmsg, answer with one
//! sendmmsg per batch. All message headers and buffers are allocated once.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::counters::{Counts, IoDrop, WorkerCounters};
use super::socket::{NAME_LEN, decode_sockaddr, encode_sockaddr, storage_bytes};
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
}

impl<H: DatagramHandler> PortableWorker<H> {
    pub(super) fn new(
        index: usize,
        sockets: Vec<UdpSocket>,
        handler: H,
        counters: Arc<WorkerCounters>,
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
        })
    }

    pub(super) fn run(mut self, shutdown: &AtomicBool) -> Result<(), DataplaneError> {
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
            // SAFETY: every header points at buffers inside `rx`, alive for the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    rx.hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                    self.counts.errors += 1;
                }
                return;
            }
            let n = n as usize;
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
