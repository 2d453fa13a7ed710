//! AF_XDP sockets (XSK) in copy mode: frames between an XDP program and this process
//! without the kernel's socket layer.
//!
//! # Why this exists
//!
//! The bench measured two floors for a userspace ChannelData relay (docs/BENCHMARKS.md,
//! "The kernel-socket floor" and "The AF_XDP floor"). On kernel UDP sockets the least a
//! relay can do (one batched receive, one batched send, no lookup) reaches 1.2–2.4×
//! coturn per CPU-second, so the 3× target is out of reach for any relay whose packets
//! cross the socket layer. The same least relay on AF_XDP (an XDP program steers the
//! frames into a ring this process shares with the kernel; it writes the relayed frames
//! into a ring of its own) reaches 4.2–5.3× coturn. This module is that socket, made
//! reusable: `relay-bench xsk-floor` runs on it, and the io_uring workers can relay TURN
//! on it.
//!
//! # Shape
//!
//! One [`XskSocket`] owns a UMEM (one anonymous mapping of `rx_frames + tx_frames` frames
//! of [`FRAME_SIZE`] bytes) and its four rings, all sized as the frames they carry:
//!
//! - frames `0..rx_frames` receive: all of them start on the fill ring, the kernel copies
//!   a received frame into one and puts it on the RX ring, [`XskRx::recv`] hands it to
//!   its caller and puts it straight back on the fill ring;
//! - frames `rx_frames..rx_frames + tx_frames` send: they start on a free stack (allocated
//!   once, at open), [`XskTx::send_with`] lets its caller write one and queues it on the
//!   TX ring, the kernel returns it on the completion ring once sent, and the next
//!   `send_with` takes it back.
//!
//! The rings are single-producer single-consumer queues shared with the kernel: the side
//! that produces writes entries, then publishes its producer index with a Release store;
//! the side that consumes reads the producer index with an Acquire load, reads the
//! entries, then publishes its consumer index with a Release store (the kernel's half is
//! `net/xdp/xsk_queue.h`). Each side keeps a private copy of the index it owns and a
//! cached copy of the other side's, reloaded only when the cache says the ring is full
//! (or empty).
//!
//! [`XskSocket::split`] borrows the receive and the send half separately, so a relay can
//! write its answer into a send frame while it reads the received one, with no copy in
//! between and no allocation per packet.
//!
//! # Limits
//!
//! - **Copy mode only** (`XDP_COPY`). veth has no zero-copy AF_XDP, and copy mode works on
//!   every driver. The kernel copies each frame once into the UMEM on receive and once out
//!   of it on send, and it transmits only inside a `sendto` (or `poll`) on the socket, at
//!   most 32 frames per call; [`XskTx::flush`] therefore kicks until the TX ring is
//!   drained: frames left on the ring wait for whatever kicks next (with one kick per
//!   flush, 32 of 100 queued frames left in `tests/xsk_socket.rs`, the others never did).
//! - **`need_wakeup` is not used.** It works in copy mode on veth but saves nothing there:
//!   bound with `XDP_USE_NEED_WAKEUP` (tried on Linux 6.18), the TX ring's wakeup flag
//!   stays set and the fill ring's stays clear, i.e. every send needs a kick and
//!   receiving never needs one (the driver's NAPI poll feeds the socket), which is what
//!   copy mode does without the flag. The sockets are bound without it, and `flush` kicks
//!   whenever the TX ring holds frames.
//! - **One queue per socket.** A socket is bound to one (interface, receive queue) pair
//!   and sees only frames that queue's XDP program redirects into it (`bpf_redirect_map`
//!   on an XSKMAP, indexed by the receive queue, holding [`XskSocket::fd`]). A multi-queue
//!   interface needs one socket per queue; a queue takes one socket (a second bind answers
//!   EBUSY). UMEMs are not shared between sockets.
//! - **Frame sizes.** A received frame starts 256 bytes (`XDP_PACKET_HEADROOM`) into its
//!   UMEM frame in copy mode, so at most 1792 bytes arrive; a sent frame has up to
//!   [`FRAME_SIZE`] bytes.
//! - The kernel needs CAP_NET_RAW for the socket and CAP_IPC_LOCK (or RLIMIT_MEMLOCK
//!   room) for the UMEM; the interface belongs to the network namespace of the thread that
//!   calls [`XskSocket::open`].

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

/// Bytes per UMEM frame (the chunk size registered with the kernel).
pub const FRAME_SIZE: usize = 2048;

/// Frames the kernel sends per `sendto` in copy mode (`MAX_PER_SOCKET_BUDGET`, the
/// default `max_tx_budget`); it answers EAGAIN while more wait.
const COPY_TX_BUDGET: u32 = 32;

/// The socket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// The interface (ifindex in the opening thread's network namespace; see [`ifindex`]).
    pub ifindex: u32,
    /// The interface's receive queue (0 on a veth).
    pub queue: u32,
    /// Receive frames, and entries of the fill and RX rings: a power of two, > 0.
    pub rx_frames: u32,
    /// Send frames, and entries of the TX and completion rings: a power of two, > 0.
    pub tx_frames: u32,
}

impl XskConfig {
    /// Checks what the kernel would refuse, or what cannot be mapped: frame counts that
    /// are not powers of two > 0 (ring sizes), ifindex 0, a UMEM too large to address.
    pub fn validate(&self) -> Result<(), XskError> {
        for (ring, count) in [("rx_frames", self.rx_frames), ("tx_frames", self.tx_frames)] {
            if !count.is_power_of_two() {
                return Err(XskError::FrameCount { ring, count });
            }
        }
        if self.ifindex == 0 {
            return Err(XskError::NoInterface);
        }
        self.umem_len().map(|_| ())
    }

    /// Bytes of the UMEM.
    fn umem_len(&self) -> Result<usize, XskError> {
        self.rx_frames
            .checked_add(self.tx_frames)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| n.checked_mul(FRAME_SIZE))
            .filter(|&len| isize::try_from(len).is_ok())
            .ok_or(XskError::UmemTooLarge {
                rx_frames: self.rx_frames,
                tx_frames: self.tx_frames,
            })
    }

    /// Kicks [`XskTx::flush`] makes at most: enough for a full TX ring at
    /// [`COPY_TX_BUDGET`] frames each, and one more (a kick can also answer EAGAIN while
    /// the socket's send buffer is full).
    fn max_kicks(&self) -> u32 {
        self.tx_frames.div_ceil(COPY_TX_BUDGET) + 1
    }
}

/// Why an AF_XDP socket could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A frame count is not a power of two greater than 0 (ring sizes must be).
    #[error("AF_XDP {ring} = {count}: must be a power of two greater than 0")]
    FrameCount {
        /// Which count (`rx_frames` or `tx_frames`).
        ring: &'static str,
        /// The count given.
        count: u32,
    },
    /// The UMEM would not fit in the address space.
    #[error("AF_XDP UMEM of {rx_frames} + {tx_frames} frames is too large")]
    UmemTooLarge {
        /// Receive frames asked for.
        rx_frames: u32,
        /// Send frames asked for.
        tx_frames: u32,
    },
    /// ifindex 0 names no interface.
    #[error("AF_XDP: ifindex 0 names no interface")]
    NoInterface,
    /// No interface of that name in this thread's network namespace.
    #[error("network interface {0:?} not found (see `ip link`)")]
    InterfaceNotFound(String),
    /// Binding to the interface's queue failed (no such queue, queue taken, interface
    /// gone).
    #[error("binding an AF_XDP socket to ifindex {ifindex} queue {queue} (copy mode): {source}")]
    Bind {
        /// The interface.
        ifindex: u32,
        /// Its receive queue.
        queue: u32,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A system call failed; `op` says which.
    #[error("{op}: {source}")]
    Sys {
        /// The call and what it was for.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

impl XskError {
    fn sys(op: &'static str) -> XskError {
        XskError::Sys {
            op,
            source: io::Error::last_os_error(),
        }
    }
}

/// The ifindex of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, XskError> {
    let c = CString::new(name).map_err(|_| XskError::InterfaceNotFound(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(XskError::InterfaceNotFound(name.to_owned()));
    }
    Ok(i)
}

/// The socket's drop and error counters (`XDP_STATISTICS`), totals since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames dropped on receive for reasons other than the two below (e.g. too large).
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the TX ring (outside the UMEM, too long, zero length).
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full (the process did not keep up).
    pub rx_ring_full: u64,
    /// Frames dropped because the fill ring was empty (no frame to copy them into).
    pub rx_fill_ring_empty_descs: u64,
    /// Kicks that found the TX ring empty.
    pub tx_ring_empty_descs: u64,
}

/// A mapping of ours (the UMEM, or one ring of the socket), unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    /// `mmap(len, prot RW, flags, fd, offset)`.
    fn new(
        len: usize,
        flags: i32,
        fd: RawFd,
        offset: u64,
        op: &'static str,
    ) -> Result<Mmap, XskError> {
        let offset = libc::off_t::try_from(offset).map_err(|_| XskError::Sys {
            op,
            source: io::Error::from_raw_os_error(libc::EOVERFLOW),
        })?;
        // SAFETY: a fresh mapping chosen by the kernel (no address hint), so it overlaps
        // nothing of ours; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(XskError::sys(op));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(XskError::Sys {
            op,
            source: io::Error::from_raw_os_error(libc::EFAULT),
        })?;
        Ok(Mmap { ptr, len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes, unmapped once; nothing borrows it past
        // its owner (the rings and frame slices are tied to the socket that owns this).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One AF_XDP ring: `size` entries of `T` (a u64 UMEM address for the fill and
/// completion rings, an `xdp_desc` for RX and TX) and the two shared indices.
///
/// For a ring this process produces into (fill, TX), `local` is its producer index,
/// ahead of the shared one until [`Ring::publish`], and `cached` is the consumer index as
/// last read plus `size` (so `cached - local` entries are free). For a ring it consumes
/// from (RX, completion), `local` is its consumer index and `cached` the producer index as
/// last read (so `cached - local` entries wait). All indices wrap at 2^32.
struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    entries: NonNull<T>,
    mask: u32,
    local: u32,
    cached: u32,
    /// The mapping the pointers point into (`None` in unit tests, over plain memory).
    _map: Option<Mmap>,
}

impl<T: Copy> Ring<T> {
    /// Maps ring `pgoff` of socket `fd` with `size` entries laid out as `off` says.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        pgoff: u64,
        size: u32,
        produce: bool,
    ) -> Result<Self, XskError> {
        let len = usize::try_from(off.desc)
            .ok()
            .and_then(|d| d.checked_add((size as usize).checked_mul(size_of::<T>())?))
            .ok_or(XskError::Sys {
                op: "mmap an AF_XDP ring",
                source: io::Error::from_raw_os_error(libc::EOVERFLOW),
            })?;
        let map = Mmap::new(
            len,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            pgoff,
            "mmap an AF_XDP ring",
        )?;
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie inside the ring's mapping of `len` bytes
            // (the indices before `desc`, the entries from `desc` on).
            unsafe { NonNull::new_unchecked(map.ptr.as_ptr().add(o as usize)) }
        };
        let (producer, consumer, entries) = (at(off.producer), at(off.consumer), at(off.desc));
        // SAFETY: the kernel lays the indices out as u32 and the entries as `T` at these
        // offsets, aligned, in memory that lives as long as `map` (moved into the ring).
        Ok(unsafe {
            Ring::from_raw(
                producer.cast(),
                consumer.cast(),
                entries.cast(),
                size,
                produce,
                Some(map),
            )
        })
    }

    /// A ring over `size` entries at `entries` (a power of two) with its indices at
    /// `producer` and `consumer`.
    ///
    /// # Safety
    ///
    /// The three pointers are valid, aligned, and stay so (and shared only with the
    /// other side of the ring) for as long as the ring exists; `entries` holds `size`
    /// values of `T`.
    unsafe fn from_raw(
        producer: NonNull<AtomicU32>,
        consumer: NonNull<AtomicU32>,
        entries: NonNull<T>,
        size: u32,
        produce: bool,
        map: Option<Mmap>,
    ) -> Self {
        debug_assert!(size.is_power_of_two());
        let mut ring = Ring {
            producer,
            consumer,
            entries,
            mask: size - 1,
            local: 0,
            cached: 0,
            _map: map,
        };
        if produce {
            ring.local = ring.producer().load(Ordering::Relaxed);
            ring.cached = ring.consumer().load(Ordering::Acquire).wrapping_add(size);
        } else {
            ring.local = ring.consumer().load(Ordering::Relaxed);
            ring.cached = ring.producer().load(Ordering::Acquire);
        }
        ring
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: valid for the ring's life (see `from_raw`); only accessed atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn size(&self) -> u32 {
        self.mask + 1
    }

    // --- producing (fill, TX) ---

    /// Free entries, reloading the consumer index when the cache shows fewer than `want`.
    fn free(&mut self, want: u32) -> u32 {
        let free = self.cached.wrapping_sub(self.local);
        if free >= want {
            return free;
        }
        // Acquire: the other side has finished reading the entries it released.
        self.cached = self
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.size());
        self.cached.wrapping_sub(self.local)
    }

    /// Writes `v` at the local producer index (the caller checked [`Ring::free`]); the
    /// other side sees it after [`Ring::publish`].
    fn push(&mut self, v: T) {
        // SAFETY: the index is masked into the ring's `size` entries.
        unsafe { self.entries.add((self.local & self.mask) as usize).write(v) };
        self.local = self.local.wrapping_add(1);
    }

    /// Entries pushed and not yet published.
    fn unpublished(&self) -> u32 {
        // Relaxed: this side is the only writer of the producer index.
        self.local
            .wrapping_sub(self.producer().load(Ordering::Relaxed))
    }

    /// Forgets what was pushed and not published.
    fn discard_unpublished(&mut self) {
        self.local = self.producer().load(Ordering::Relaxed);
    }

    /// Publishes what was pushed (Release: the entries before the index).
    fn publish(&self) {
        self.producer().store(self.local, Ordering::Release);
    }

    /// Whether the other side has consumed everything published and nothing waits to be.
    fn drained(&self) -> bool {
        self.consumer().load(Ordering::Acquire) == self.local && self.unpublished() == 0
    }

    // --- consuming (RX, completion) ---

    /// Entries waiting (at most `max`), reloading the producer index when the cache
    /// shows fewer than `max`.
    fn ready(&mut self, max: u32) -> u32 {
        let mut n = self.cached.wrapping_sub(self.local);
        if n < max {
            // Acquire: the entries the other side wrote before publishing.
            self.cached = self.producer().load(Ordering::Acquire);
            n = self.cached.wrapping_sub(self.local);
        }
        n.min(max)
    }

    /// Entries waiting now (a fresh load; no cache update).
    fn ready_now(&self) -> u32 {
        self.producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.local)
    }

    /// The `i`-th waiting entry (`i` below what [`Ring::ready`] returned).
    fn entry(&self, i: u32) -> T {
        // SAFETY: the index is masked into the ring's `size` entries.
        unsafe {
            self.entries
                .add((self.local.wrapping_add(i) & self.mask) as usize)
                .read()
        }
    }

    /// Gives `n` entries back to the producer (Release: after reading them).
    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.consumer().store(self.local, Ordering::Release);
    }
}

/// The receive half's state: the fill and RX rings over frames `0..frames`.
struct RxState {
    fill: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    umem: NonNull<u8>,
    frames: u32,
}

/// The send half's state: the TX and completion rings over frames
/// `first..first + frames` and the stack of free ones.
struct TxState {
    tx: Ring<libc::xdp_desc>,
    comp: Ring<u64>,
    umem: NonNull<u8>,
    first: u32,
    frames: u32,
    /// UMEM addresses of free send frames (capacity `frames`, never reallocated).
    free: Vec<u64>,
    fd: RawFd,
    max_kicks: u32,
}

/// The UMEM address of frame `i`.
fn frame_addr(i: u32) -> u64 {
    u64::from(i) * FRAME_SIZE as u64
}

/// The frame holding UMEM address `addr`, and `addr`'s offset in it.
fn frame_of(addr: u64) -> (u64, usize) {
    (
        addr / FRAME_SIZE as u64,
        (addr % FRAME_SIZE as u64) as usize,
    )
}

impl RxState {
    /// Gives every receive frame to the fill ring (at open; the ring is as large as the
    /// frames).
    fn fill_all(&mut self) {
        for i in 0..self.frames {
            self.fill.push(frame_addr(i));
        }
        self.fill.publish();
    }

    fn recv(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let n = self.rx.ready(u32::try_from(max).unwrap_or(u32::MAX));
        if n == 0 {
            return 0;
        }
        // Every call publishes what it pushed, unless `f` panicked half-way: then the RX
        // entries were not released and come again now, so their frames must not stay
        // on the fill ring twice.
        if self.fill.unpublished() != 0 {
            self.fill.discard_unpublished();
        }
        // Every receive frame is on the fill ring, in the kernel's hands or on the RX
        // ring, and the fill ring holds them all, so the `n` taken from RX fit once the
        // kernel has released the fill entries those frames came from. But it publishes
        // the RX entries first and releases the fill entries after (`xsk_flush`), so in
        // between the fill ring looks fuller than it is: take only what fits now and
        // leave the rest on RX for the next call (an e2e run hit that window).
        let n = n.min(self.fill.free(n));
        if n == 0 {
            return 0;
        }
        for i in 0..n {
            let d = self.rx.entry(i);
            let (frame, off) = frame_of(d.addr);
            if frame >= u64::from(self.frames) {
                // Not a receive frame: the kernel only returns what the fill ring gave.
                continue;
            }
            let len = d.len as usize;
            if off + len <= FRAME_SIZE {
                // SAFETY: `off + len` bytes of receive frame `frame`, inside the UMEM
                // (checked above); the kernel does not write a frame between handing it
                // over on the RX ring and getting it back on the fill ring (below, after
                // `f` returns), and the send half never touches receive frames.
                let data = unsafe {
                    std::slice::from_raw_parts(
                        self.umem.as_ptr().add(frame as usize * FRAME_SIZE + off),
                        len,
                    )
                };
                f(data);
            }
            self.fill.push(frame * FRAME_SIZE as u64);
        }
        self.rx.release(n);
        self.fill.publish();
        n as usize
    }
}

impl TxState {
    /// Takes back the send frames the kernel has completed.
    fn reclaim(&mut self) {
        let n = self.comp.ready(u32::MAX);
        if n == 0 {
            return;
        }
        for i in 0..n {
            let (frame, _) = frame_of(self.comp.entry(i));
            let ours = frame >= u64::from(self.first)
                && frame < u64::from(self.first) + u64::from(self.frames);
            // The length check keeps the stack within its capacity even if an address
            // came back twice.
            if ours && self.free.len() < self.frames as usize {
                self.free.push(frame * FRAME_SIZE as u64);
            }
        }
        self.comp.release(n);
    }

    fn send_with(&mut self, write: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        self.reclaim();
        let Some(&addr) = self.free.last() else {
            return false;
        };
        // Frames on the TX ring are not free, so with one free the ring has room; checked
        // anyway (from the cache, usually without touching the shared index).
        if self.tx.free(1) == 0 {
            return false;
        }
        // SAFETY: `addr` is a free send frame: FRAME_SIZE bytes inside the UMEM that
        // neither the kernel (not on the TX ring, or completed) nor the receive half
        // touches; the slice lives only during `write`.
        let frame = unsafe {
            std::slice::from_raw_parts_mut(self.umem.as_ptr().add(addr as usize), FRAME_SIZE)
        };
        let len = match write(frame) {
            Some(len) if len > 0 && len <= FRAME_SIZE => len,
            _ => return false,
        };
        self.free.pop();
        self.tx.push(libc::xdp_desc {
            addr,
            len: len as u32,
            options: 0,
        });
        true
    }

    fn pending(&self) -> u32 {
        let completed = self.comp.ready_now().min(self.frames);
        (self.frames - self.free.len() as u32).saturating_sub(completed)
    }

    fn flush(&mut self) -> Result<(), XskError> {
        if self.tx.unpublished() > 0 {
            self.tx.publish();
        }
        let mut kicks = 0;
        while !self.tx.drained() && kicks < self.max_kicks {
            kicks += 1;
            // SAFETY: a zero-length send on our own socket: the kernel only starts
            // transmitting what the TX ring holds.
            let r = unsafe {
                libc::sendto(
                    self.fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r >= 0 {
                continue;
            }
            let e = io::Error::last_os_error();
            match kick_outcome(e.raw_os_error()) {
                Kick::Again => continue,
                Kick::Later => break,
                Kick::Fail => {
                    return Err(XskError::Sys {
                        op: "sendto (AF_XDP transmit)",
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

/// What a failed kick means.
#[derive(Debug, PartialEq, Eq)]
enum Kick {
    /// More frames wait than one call sends (copy mode: 32 per call), or the socket's
    /// send buffer or the completion ring is momentarily full: kick again.
    Again,
    /// The device is busy or out of buffers: the frames stay on the TX ring for the next
    /// flush.
    Later,
    /// A real error (interface gone, socket unbound).
    Fail,
}

fn kick_outcome(errno: Option<i32>) -> Kick {
    match errno {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Kick::Again,
        Some(libc::EBUSY) | Some(libc::ENOBUFS) => Kick::Later,
        _ => Kick::Fail,
    }
}

/// An AF_XDP socket bound to one queue of one interface in copy mode, with its UMEM and
/// rings (see the module documentation).
pub struct XskSocket {
    // Field order is drop order: the rings are unmapped first, then the socket is closed,
    // then the UMEM is unmapped.
    rx: RxState,
    tx: TxState,
    fd: OwnedFd,
    /// The UMEM. Unmapping it is safe even while the socket lives on elsewhere (a
    /// duplicate of its descriptor, e.g. taken with `pidfd_getfd`): the kernel pinned the
    /// pages when the UMEM was registered and keeps them until the socket is released, so
    /// it never writes into memory that was given back.
    _umem: Mmap,
}

// SAFETY: the raw pointers point into mappings this value owns alone (the UMEM and the
// rings' own); nothing in it is tied to the thread that opened it (the socket's network
// namespace is fixed when it is created). Moving it to another thread moves that
// exclusive ownership along.
unsafe impl Send for XskSocket {}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("rx_frames", &self.rx.frames)
            .field("tx_frames", &self.tx.frames)
            .finish_non_exhaustive()
    }
}

fn setsockopt<T>(fd: RawFd, name: i32, v: &T, op: &'static str) -> Result<(), XskError> {
    // SAFETY: `v` is a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(XskError::sys(op));
    }
    Ok(())
}

impl XskSocket {
    /// Opens a socket as `cfg` says: creates it, registers a fresh UMEM, sizes and maps
    /// its four rings, gives every receive frame to the fill ring and binds it to the
    /// queue in copy mode. Call it in the interface's network namespace.
    pub fn open(cfg: &XskConfig) -> Result<XskSocket, XskError> {
        cfg.validate()?;
        let umem_len = cfg.umem_len()?;
        // SAFETY: plain socket call; the result is checked and owned at once.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(XskError::sys(
                "socket(AF_XDP) (needs a kernel with AF_XDP and CAP_NET_RAW)",
            ));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mmap::new(
            umem_len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
            "mmap the AF_XDP UMEM",
        )?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(
            raw,
            libc::XDP_UMEM_REG,
            &reg,
            "setsockopt(XDP_UMEM_REG) (CAP_IPC_LOCK or RLIMIT_MEMLOCK)",
        )?;
        for (opt, n, op) in [
            (
                libc::XDP_UMEM_FILL_RING,
                cfg.rx_frames,
                "setsockopt(XDP_UMEM_FILL_RING)",
            ),
            (
                libc::XDP_UMEM_COMPLETION_RING,
                cfg.tx_frames,
                "setsockopt(XDP_UMEM_COMPLETION_RING)",
            ),
            (libc::XDP_RX_RING, cfg.rx_frames, "setsockopt(XDP_RX_RING)"),
            (libc::XDP_TX_RING, cfg.tx_frames, "setsockopt(XDP_TX_RING)"),
        ] {
            setsockopt(raw, opt, &n, op)?;
        }
        // SAFETY: xdp_mmap_offsets is plain data (integers); all zeroes is a valid value.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut olen = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` is writable and has the size passed in `olen`.
        let r = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut olen,
            )
        };
        if r != 0 {
            return Err(XskError::sys("getsockopt(XDP_MMAP_OFFSETS)"));
        }
        let fill = Ring::map(
            raw,
            &off.fr,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            cfg.rx_frames,
            true,
        )?;
        let comp = Ring::map(
            raw,
            &off.cr,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            cfg.tx_frames,
            false,
        )?;
        let rx = Ring::map(
            raw,
            &off.rx,
            libc::XDP_PGOFF_RX_RING as u64,
            cfg.rx_frames,
            false,
        )?;
        let tx = Ring::map(
            raw,
            &off.tx,
            libc::XDP_PGOFF_TX_RING as u64,
            cfg.tx_frames,
            true,
        )?;

        let mut rx = RxState {
            fill,
            rx,
            umem: umem.ptr,
            frames: cfg.rx_frames,
        };
        // Before binding: frames arriving at once find somewhere to go.
        rx.fill_all();
        let mut free = Vec::with_capacity(cfg.tx_frames as usize);
        free.extend((cfg.rx_frames..cfg.rx_frames + cfg.tx_frames).map(frame_addr));
        let tx = TxState {
            tx,
            comp,
            umem: umem.ptr,
            first: cfg.rx_frames,
            frames: cfg.tx_frames,
            free,
            fd: raw,
            max_kicks: cfg.max_kicks(),
        };

        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: cfg.ifindex,
            sxdp_queue_id: cfg.queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a complete sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(XskError::Bind {
                ifindex: cfg.ifindex,
                queue: cfg.queue,
                source: io::Error::last_os_error(),
            });
        }
        Ok(XskSocket {
            rx,
            tx,
            fd,
            _umem: umem,
        })
    }

    /// The socket's descriptor: for the XSKMAP entry of its queue, and for readiness
    /// (POLLIN when the RX ring holds frames).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The receive and the send half, borrowed separately.
    pub fn split(&mut self) -> (XskRx<'_>, XskTx<'_>) {
        (XskRx(&mut self.rx), XskTx(&mut self.tx))
    }

    /// The kernel's counters for this socket (`XDP_STATISTICS`). Kernels older than 5.9
    /// report only the first three; the others read 0 there.
    pub fn stats(&self) -> Result<XskStats, XskError> {
        // SAFETY: xdp_statistics is plain data (integers); all zeroes is a valid value.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st` is writable and has the size passed in `len`.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut st as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(XskError::sys("getsockopt(XDP_STATISTICS)"));
        }
        Ok(XskStats {
            rx_dropped: st.rx_dropped,
            rx_invalid_descs: st.rx_invalid_descs,
            tx_invalid_descs: st.tx_invalid_descs,
            rx_ring_full: st.rx_ring_full,
            rx_fill_ring_empty_descs: st.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: st.tx_ring_empty_descs,
        })
    }
}

/// The receive half of an [`XskSocket`] ([`XskSocket::split`]).
pub struct XskRx<'a>(&'a mut RxState);

impl XskRx<'_> {
    /// Calls `f` with each received frame (at most `max`, in arrival order), then gives
    /// the frames back to the fill ring (one producer publish per batch). Returns the
    /// count, 0 when none waited; never blocks (wait for POLLIN on [`XskSocket::fd`]).
    ///
    /// A frame is valid only inside `f`. If `f` panics, the next call hands the whole
    /// batch over again.
    pub fn recv(&mut self, max: usize, f: impl FnMut(&[u8])) -> usize {
        self.0.recv(max, f)
    }
}

/// The send half of an [`XskSocket`] ([`XskSocket::split`]).
pub struct XskTx<'a>(&'a mut TxState);

impl XskTx<'_> {
    /// Takes back the send frames the kernel has completed (completion ring), then, if a
    /// send frame is free, calls `write` with that frame's [`FRAME_SIZE`] bytes
    /// (whatever an earlier send left there); `write` returns the length to send, or
    /// `None` not to send (the frame stays free; so does it for `Some(0)` or a length
    /// above [`FRAME_SIZE`]). Returns whether a frame was queued.
    ///
    /// Queued frames reach the kernel only at [`XskTx::flush`], never earlier: when all
    /// send frames are queued, this returns false (without calling `write`) until a
    /// flush hands them over and the kernel completes some.
    pub fn send_with(&mut self, write: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        self.0.send_with(write)
    }

    /// Publishes the queued frames on the TX ring and kicks the kernel (`sendto` with
    /// MSG_DONTWAIT) until the TX ring is drained, at most `tx_frames / 32 + 1` times:
    /// copy mode sends at most 32 frames per kick, and frames left on the ring wait for
    /// the next kick, however late that comes. Does nothing (no system call) when the ring
    /// is drained already.
    ///
    /// EAGAIN (more to send) kicks again; EBUSY and ENOBUFS (device busy, no buffers)
    /// stop kicking and leave the rest on the ring for the next flush, and so does running
    /// out of kicks: call `flush` again while [`XskTx::pending`] is not 0. Other errors are
    /// returned.
    pub fn flush(&mut self) -> Result<(), XskError> {
        self.0.flush()
    }

    /// Send frames not free: queued by [`XskTx::send_with`] and not yet completed by the
    /// kernel (unpublished, on the TX ring, or in flight).
    pub fn pending(&self) -> u32 {
        self.0.pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring over plain memory, with the test as the kernel's side.
    struct Fake<T> {
        prod: Box<AtomicU32>,
        cons: Box<AtomicU32>,
        entries: Vec<T>,
    }

    impl<T: Copy + Default> Fake<T> {
        /// Indices start at `start` (near 2^32 to cross the wrap).
        fn new(size: u32, start: u32) -> Fake<T> {
            Fake::filled(size, start, T::default())
        }
    }

    impl<T: Copy> Fake<T> {
        fn filled(size: u32, start: u32, v: T) -> Fake<T> {
            Fake {
                prod: Box::new(AtomicU32::new(start)),
                cons: Box::new(AtomicU32::new(start)),
                entries: vec![v; size as usize],
            }
        }

        fn ring(&mut self, produce: bool) -> Ring<T> {
            let size = self.entries.len() as u32;
            // SAFETY: the boxes and the vector outlive the ring in every test (the fake
            // is declared first, so it drops last) and are not moved while it lives.
            unsafe {
                Ring::from_raw(
                    NonNull::from(&*self.prod),
                    NonNull::from(&*self.cons),
                    NonNull::new(self.entries.as_mut_ptr()).expect("vec pointer"),
                    size,
                    produce,
                    None,
                )
            }
        }

        fn prod(&self) -> u32 {
            self.prod.load(Ordering::Acquire)
        }

        fn cons(&self) -> u32 {
            self.cons.load(Ordering::Acquire)
        }

        /// The kernel consumes `n` entries of a ring we produce into; returns them.
        fn consume(&self, n: u32) -> Vec<T> {
            let c = self.cons();
            assert!(
                self.prod().wrapping_sub(c) >= n,
                "consuming unpublished entries"
            );
            let mask = self.entries.len() as u32 - 1;
            // SAFETY: inside the vector (the index is masked); read through a raw pointer,
            // as the ring does, single-threaded.
            let v = (0..n)
                .map(|i| unsafe {
                    self.entries
                        .as_ptr()
                        .add((c.wrapping_add(i) & mask) as usize)
                        .read()
                })
                .collect();
            self.cons.store(c.wrapping_add(n), Ordering::Release);
            v
        }

        /// The kernel produces `vals` into a ring we consume from.
        fn produce(&mut self, vals: &[T]) {
            let p = self.prod();
            let mask = self.entries.len() as u32 - 1;
            for (i, v) in vals.iter().enumerate() {
                // SAFETY: as in `consume` (inside the vector: the index is masked).
                unsafe {
                    self.entries
                        .as_mut_ptr()
                        .add((p.wrapping_add(i as u32) & mask) as usize)
                        .write(*v)
                };
            }
            self.prod
                .store(p.wrapping_add(vals.len() as u32), Ordering::Release);
        }
    }

    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    struct Desc(u64, u32);

    #[test]
    fn producer_ring_counts_free_entries_across_the_wrap() {
        let mut k = Fake::<u64>::new(8, u32::MAX - 2);
        let mut r = k.ring(true);
        assert_eq!(r.free(1), 8);
        for v in 0..8 {
            r.push(v);
        }
        assert_eq!(r.unpublished(), 8);
        assert_eq!(r.free(1), 0, "full");
        assert!(!r.drained());
        r.publish();
        assert_eq!(k.prod(), (u32::MAX - 2).wrapping_add(8));
        assert_eq!(r.unpublished(), 0);
        assert_eq!(k.consume(3), vec![0, 1, 2]);
        // The cache says 0 free: one reload finds the three.
        assert_eq!(r.free(1), 3);
        for v in 8..11 {
            r.push(v);
        }
        assert_eq!(r.free(1), 0);
        r.publish();
        assert_eq!(k.consume(8), vec![3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(r.drained());
        assert_eq!(r.free(8), 8);
    }

    #[test]
    fn producer_ring_trusts_its_cache_until_it_runs_short() {
        let mut k = Fake::<u64>::new(4, 0);
        let mut r = k.ring(true);
        r.push(1);
        r.push(2);
        r.publish();
        k.consume(2);
        // Two free by the cache, enough for one: no reload.
        assert_eq!(r.free(1), 2);
        // Asking for more reloads.
        assert_eq!(r.free(3), 4);
    }

    #[test]
    fn consumer_ring_reads_in_order_across_the_wrap_and_caps_at_max() {
        let mut k = Fake::<Desc>::new(4, u32::MAX - 1);
        let mut r = k.ring(false);
        assert_eq!(r.ready(16), 0);
        k.produce(&[Desc(1, 10), Desc(2, 20), Desc(3, 30)]);
        assert_eq!(r.ready_now(), 3);
        assert_eq!(r.ready(2), 2);
        assert_eq!((r.entry(0), r.entry(1)), (Desc(1, 10), Desc(2, 20)));
        r.release(2);
        assert_eq!(k.cons(), (u32::MAX - 1).wrapping_add(2));
        k.produce(&[Desc(4, 40), Desc(5, 50), Desc(6, 60)]);
        assert_eq!(r.ready(16), 4);
        let got: Vec<_> = (0..4).map(|i| r.entry(i)).collect();
        assert_eq!(
            got,
            vec![Desc(3, 30), Desc(4, 40), Desc(5, 50), Desc(6, 60)]
        );
        r.release(4);
        assert_eq!(r.ready(16), 0);
        assert_eq!(r.ready_now(), 0);
    }

    fn desc(addr: u64, len: u32) -> libc::xdp_desc {
        libc::xdp_desc {
            addr,
            len,
            options: 0,
        }
    }

    /// The socket's halves over plain memory: a UMEM of `rx + tx` frames and four fake
    /// rings.
    struct FakeSocket {
        fill: Fake<u64>,
        rxr: Fake<libc::xdp_desc>,
        txr: Fake<libc::xdp_desc>,
        comp: Fake<u64>,
        umem: Vec<u8>,
    }

    impl FakeSocket {
        fn new(rx: u32, tx: u32) -> FakeSocket {
            FakeSocket {
                fill: Fake::new(rx, 0),
                rxr: Fake::filled(rx, 0, desc(0, 0)),
                txr: Fake::filled(tx, 0, desc(0, 0)),
                comp: Fake::new(tx, 0),
                umem: vec![0; (rx + tx) as usize * FRAME_SIZE],
            }
        }

        fn rx_state(&mut self) -> RxState {
            let frames = self.fill.entries.len() as u32;
            let mut s = RxState {
                fill: self.fill.ring(true),
                rx: self.rxr.ring(false),
                umem: NonNull::new(self.umem.as_mut_ptr()).expect("umem"),
                frames,
            };
            s.fill_all();
            s
        }

        fn tx_state(&mut self, first: u32) -> TxState {
            let frames = self.comp.entries.len() as u32;
            TxState {
                tx: self.txr.ring(true),
                comp: self.comp.ring(false),
                umem: NonNull::new(self.umem.as_mut_ptr()).expect("umem"),
                first,
                frames,
                free: (first..first + frames).map(frame_addr).collect(),
                fd: -1,
                max_kicks: 1,
            }
        }
    }

    /// `(addr, len)` of descriptors.
    fn pairs(d: Vec<libc::xdp_desc>) -> Vec<(u64, u32)> {
        d.into_iter().map(|d| (d.addr, d.len)).collect()
    }

    #[test]
    fn receive_hands_over_frames_and_refills_them_in_one_publish() {
        let mut k = FakeSocket::new(4, 2);
        let mut rx = k.rx_state();
        // At open: every receive frame on the fill ring, published.
        assert_eq!(k.fill.prod(), 4);
        let given = k.fill.consume(4);
        assert_eq!(given, vec![0, 2048, 4096, 6144]);
        // The kernel copies frames at 256 bytes into frames 2 and 0.
        k.umem[4096 + 256..4096 + 256 + 3].copy_from_slice(b"abc");
        k.umem[256..256 + 2].copy_from_slice(b"xy");
        k.rxr.produce(&[desc(4096 + 256, 3), desc(256, 2)]);
        let mut seen = Vec::new();
        let n = rx.recv(1, |f: &[u8]| seen.push(f.to_vec()));
        assert_eq!(n, 1);
        assert_eq!(seen, vec![b"abc".to_vec()]);
        assert_eq!(k.fill.prod(), 5, "frame 2 back on the fill ring");
        assert_eq!(k.rxr.cons(), 1);
        let n = rx.recv(64, |f: &[u8]| seen.push(f.to_vec()));
        assert_eq!(n, 1);
        assert_eq!(seen[1], b"xy".to_vec());
        assert_eq!(
            k.fill.consume(2),
            vec![4096, 0],
            "chunk bases, not data addresses"
        );
        assert_eq!(rx.recv(64, |_: &[u8]| panic!("nothing waits")), 0);
        // A descriptor running past its frame is not handed over, but the frame is
        // recycled; one outside the receive frames is neither.
        k.rxr.produce(&[desc(2048 + 2000, 100), desc(4 * 2048, 10)]);
        assert_eq!(
            rx.recv(64, |_: &[u8]| panic!("invalid frame handed over")),
            2
        );
        assert_eq!(k.fill.consume(1), vec![2048]);
        assert_eq!(k.fill.prod(), k.fill.cons());
    }

    #[test]
    fn receive_takes_only_what_the_fill_ring_has_room_for() {
        let mut k = FakeSocket::new(4, 2);
        let mut rx = k.rx_state();
        // The kernel reads all four fill entries and puts three frames on RX, but has
        // not released the fill entries yet (it publishes RX first).
        assert_eq!(k.fill.consume(4).len(), 4);
        k.fill.cons.store(0, Ordering::Release);
        k.rxr
            .produce(&[desc(256, 1), desc(2048 + 256, 1), desc(4096 + 256, 1)]);
        let mut seen = 0;
        assert_eq!(
            rx.recv(64, |_| seen += 1),
            0,
            "no room on the fill ring yet"
        );
        assert_eq!((seen, k.rxr.cons(), k.fill.prod()), (0, 0, 4));
        // Two released: two frames taken, one left on RX.
        k.fill.cons.store(2, Ordering::Release);
        assert_eq!(rx.recv(64, |_| seen += 1), 2);
        assert_eq!((seen, k.rxr.cons(), k.fill.prod()), (2, 2, 6));
        k.fill.cons.store(4, Ordering::Release);
        assert_eq!(rx.recv(64, |_| seen += 1), 1);
        assert_eq!(
            k.fill.consume(3),
            vec![0, 2048, 4096],
            "each frame back once"
        );
        assert_eq!(k.fill.prod(), k.fill.cons());
    }

    #[test]
    fn a_panic_in_the_receive_callback_hands_the_batch_over_again() {
        let mut k = FakeSocket::new(4, 2);
        let mut rx = k.rx_state();
        assert_eq!(k.fill.consume(4).len(), 4);
        k.rxr
            .produce(&[desc(256, 1), desc(2048 + 256, 1), desc(4096 + 256, 1)]);
        let mut calls = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rx.recv(64, |_| {
                calls += 1;
                if calls == 2 {
                    panic!("callback fails on the second frame");
                }
            })
        }));
        assert!(r.is_err());
        assert_eq!(k.fill.prod(), 4, "nothing published");
        let mut seen = 0;
        assert_eq!(rx.recv(64, |_| seen += 1), 3);
        assert_eq!(seen, 3, "the whole batch again");
        assert_eq!(
            k.fill.consume(3),
            vec![0, 2048, 4096],
            "each frame back once"
        );
        assert_eq!(k.fill.prod(), k.fill.cons());
    }

    #[test]
    fn send_takes_free_frames_queues_them_until_flush_and_reclaims_completions() {
        let mut k = FakeSocket::new(2, 4);
        let mut tx = k.tx_state(2);
        assert_eq!(tx.pending(), 0);
        // `None` and out-of-range lengths send nothing and keep the frame free.
        assert!(!tx.send_with(|_| None));
        assert!(!tx.send_with(|_| Some(0)));
        assert!(!tx.send_with(|_| Some(FRAME_SIZE + 1)));
        assert_eq!(tx.pending(), 0);
        let mut addrs = Vec::new();
        for i in 0..4u8 {
            assert!(tx.send_with(|f| {
                assert_eq!(f.len(), FRAME_SIZE);
                f[..3].copy_from_slice(&[i, i, i]);
                Some(3 + usize::from(i))
            }));
        }
        assert_eq!(tx.pending(), 4);
        assert!(!tx.send_with(|_| panic!("no frame is free")), "all queued");
        // Nothing reaches the ring's shared index before flush.
        assert_eq!(k.txr.prod(), 0);
        assert_eq!(tx.tx.unpublished(), 4);
        tx.tx.publish();
        let sent = pairs(k.txr.consume(4));
        for (i, &(addr, len)) in sent.iter().enumerate() {
            let (frame, off) = frame_of(addr);
            assert!((2..6).contains(&frame), "a send frame");
            assert_eq!(off, 0);
            assert_eq!(len, 3 + i as u32);
            let a = addr as usize;
            assert_eq!(&k.umem[a..a + 3], &[i as u8; 3]);
            addrs.push(addr);
        }
        assert!(tx.tx.drained());
        // The kernel completes two: pending drops at once, the frames come back on the
        // next send.
        k.comp.produce(&[addrs[1], addrs[0]]);
        assert_eq!(tx.pending(), 2);
        assert!(tx.send_with(|_| Some(60)));
        assert_eq!(tx.pending(), 3);
        assert_eq!(k.comp.cons(), 2, "completions consumed");
        tx.tx.publish();
        let again = pairs(k.txr.consume(1));
        assert!(again[0].0 == addrs[0] || again[0].0 == addrs[1]);
        assert_eq!(again[0].1, 60);
    }

    #[test]
    fn nothing_to_flush_makes_no_system_call() {
        let mut k = FakeSocket::new(2, 2);
        let mut tx = k.tx_state(2);
        // fd -1: a kick would fail with EBADF.
        tx.flush().expect("drained: no kick");
        assert!(tx.send_with(|_| Some(64)));
        match tx.flush() {
            Err(XskError::Sys { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EBADF))
            }
            other => panic!("expected the kick's EBADF, got {other:?}"),
        }
        assert_eq!(k.txr.prod(), 1, "published before the kick");
    }

    #[test]
    fn kick_errors_are_classified() {
        assert_eq!(kick_outcome(Some(libc::EAGAIN)), Kick::Again);
        assert_eq!(kick_outcome(Some(libc::EINTR)), Kick::Again);
        assert_eq!(kick_outcome(Some(libc::EBUSY)), Kick::Later);
        assert_eq!(kick_outcome(Some(libc::ENOBUFS)), Kick::Later);
        assert_eq!(kick_outcome(Some(libc::ENETDOWN)), Kick::Fail);
        assert_eq!(kick_outcome(Some(libc::ENXIO)), Kick::Fail);
        assert_eq!(kick_outcome(None), Kick::Fail);
    }

    #[test]
    fn config_validation() {
        let ok = XskConfig {
            ifindex: 3,
            queue: 0,
            rx_frames: 4096,
            tx_frames: 1,
        };
        ok.validate().expect("valid");
        for (rx, tx) in [(0, 8), (8, 0), (3, 8), (8, 6), (4095, 4096)] {
            let c = XskConfig {
                rx_frames: rx,
                tx_frames: tx,
                ..ok
            };
            assert!(
                matches!(c.validate(), Err(XskError::FrameCount { .. })),
                "{rx}, {tx}"
            );
        }
        assert!(matches!(
            XskConfig { ifindex: 0, ..ok }.validate(),
            Err(XskError::NoInterface)
        ));
        let huge = XskConfig {
            rx_frames: 1 << 31,
            tx_frames: 1 << 31,
            ..ok
        };
        assert!(matches!(
            huge.validate(),
            Err(XskError::UmemTooLarge { .. })
        ));
        assert_eq!(ok.umem_len().expect("len"), 4097 * FRAME_SIZE);
    }

    #[test]
    fn kicks_cover_a_full_ring() {
        let c = |tx_frames| XskConfig {
            ifindex: 1,
            queue: 0,
            rx_frames: 1,
            tx_frames,
        };
        assert_eq!(c(1).max_kicks(), 2);
        assert_eq!(c(32).max_kicks(), 2);
        assert_eq!(c(64).max_kicks(), 3);
        assert_eq!(c(4096).max_kicks(), 129);
    }

    #[test]
    fn frame_addresses() {
        assert_eq!(frame_addr(3), 6144);
        assert_eq!(frame_of(6144 + 256), (3, 256));
        assert_eq!(frame_of(2047), (0, 2047));
    }

    #[test]
    fn unknown_interface() {
        assert!(matches!(
            ifindex("no-such-if0"),
            Err(XskError::InterfaceNotFound(_))
        ));
        assert!(matches!(
            ifindex("nul\0name"),
            Err(XskError::InterfaceNotFound(_))
        ));
        assert!(ifindex("lo").is_ok());
    }
}
