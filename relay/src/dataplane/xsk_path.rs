//! The AF_XDP side of a TURN worker on the io_uring backend (`xdp.af_xdp`).
//!
//! Why: on this kind of machine every relay whose packets cross the kernel's UDP sockets
//! is capped at about 1.6–2.3× coturn per CPU-second (the socket floor in
//! docs/BENCHMARKS.md), whatever it does in userspace; the same relaying through AF_XDP
//! sockets costs a third to a half of that (the AF_XDP floor). So the XDP program steers
//! UDP frames for the TURN listen ports and for this worker's relayed ports into AF_XDP
//! sockets owned by the worker (`relay::xdp::xsk_steer`), and the worker builds the
//! output frames itself, by the same rules as the kernel fast path
//! ([`crate::xdp::turn_frames`]) with the next hop the kernel's FIB gives
//! ([`crate::xdp::nexthop`]).
//!
//! What stays on the kernel sockets (correct, only slower): frames the XDP program does
//! not steer (fragments, queues without a socket, relayed ports of other workers), and
//! sends whose next hop is not resolved yet (the socket send makes the kernel resolve the
//! neighbour), whose frame would exceed the egress MTU, whose egress interface has no
//! socket of this worker, or that find the TX ring full. Received frames are checked as
//! the kernel would (IPv4 header checksum, UDP checksum) before the TURN core sees them;
//! a UDP checksum that holds only the pseudo-header sum passes too (a local sender's
//! offloaded checksum over a veth pair, which the kernel's own receive path trusts:
//! [`wire::udp_checksum_partial`]).
//!
//! No allocation per packet: received frames are copied into a preallocated batch (the
//! TURN core may send on any interface while a frame is being handled), output frames
//! are written straight into UMEM frames, and the next-hop cache only grows on a miss.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire;
use crate::xdp::nexthop::{NextHopError, NextHopProbe};
use crate::xdp::turn_frames::{self, Hop, Ipv4Fields};
use crate::xdp::xsk_steer::XskSteering;
use crate::xsk::{FRAME_SIZE, XskConfig, XskSocket};

/// Frames taken from one socket per receive batch.
pub(super) const RX_BATCH: usize = 64;
/// UMEM frames per socket for receiving (fill ring) and for sending.
const RX_FRAMES: u32 = 2048;
const TX_FRAMES: u32 = 2048;
/// How long a failed next-hop lookup (no neighbour yet) sends through the socket before
/// the FIB is asked again.
const NEGATIVE_TTL: Duration = Duration::from_millis(50);

/// One interface the XDP program is attached to.
#[derive(Debug, Clone)]
pub struct XskInterface {
    /// Interface name (for logs).
    pub name: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// Its RX queues: worker `w` takes the queues `q` with `q % workers == w`.
    pub queues: u32,
}

/// What a worker needs to open its AF_XDP sockets.
#[derive(Clone)]
pub struct XskSetup {
    /// The maps that steer frames to the sockets.
    pub steering: XskSteering,
    /// The kernel FIB, as the XDP fast path sees it.
    pub probe: NextHopProbe,
    /// Where the fast path is attached.
    pub interfaces: Vec<XskInterface>,
    /// Worker count (queue `q` belongs to worker `q % workers`).
    pub workers: u32,
    /// How long a resolved next hop is reused (`xdp` next-hop TTL).
    pub next_hop_ttl: Duration,
}

impl std::fmt::Debug for XskSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSetup")
            .field("interfaces", &self.interfaces)
            .field("workers", &self.workers)
            .field("next_hop_ttl", &self.next_hop_ttl)
            .finish_non_exhaustive()
    }
}

/// The queues of `interfaces` that worker `index` of `workers` serves: (interface
/// position, queue).
pub fn queues_of(interfaces: &[XskInterface], index: u32, workers: u32) -> Vec<(usize, u32)> {
    let workers = workers.max(1);
    let mut out = Vec::new();
    for (i, itf) in interfaces.iter().enumerate() {
        for q in (0..itf.queues).filter(|q| q % workers == index) {
            out.push((i, q));
        }
    }
    out
}

/// The RX queue count of interface `name` (from sysfs; 1 when it cannot be read).
pub fn rx_queues(name: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// A multiplicative hash for the next-hop cache (keys are two addresses this process
/// chose or saw; SipHash's flooding resistance buys nothing here and costs per packet).
#[derive(Default)]
pub(super) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_ne_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum CachedHop {
    Ready {
        port: usize,
        hop: Hop,
        mtu: u16,
        until: Instant,
    },
    /// Send through the socket until then.
    Socket { until: Instant },
}

/// One AF_XDP socket of the worker.
pub(super) struct XskPort {
    pub(super) ifindex: u32,
    pub(super) queue: u32,
    pub(super) socket: XskSocket,
    /// Frames queued since the last flush.
    dirty: bool,
    /// The socket's one-shot readability poll on the worker's io_uring.
    pub(super) poll: XskPoll,
}

/// Where a socket's one-shot readability poll stands (its completion, whether it fired
/// or was cancelled, makes it [`XskPoll::Idle`] again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum XskPoll {
    /// None armed.
    Idle,
    /// Armed, waiting for frames.
    Armed,
    /// Armed, and its cancel is queued.
    Cancelling,
}

/// Counters of the AF_XDP side (folded into the worker's counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XskCounts {
    /// Frames received through AF_XDP sockets.
    pub received: u64,
    /// Frames sent through AF_XDP sockets.
    pub sent: u64,
    /// Sends that went through a kernel socket instead (see the module doc).
    pub fallback: u64,
    /// Received frames dropped: malformed, bad checksum, or for no listen/relayed address.
    pub dropped: u64,
    /// Frames the kernel could not deliver because this worker's receive ring was full
    /// (the worker fell behind), summed over its sockets (`XDP_STATISTICS`).
    pub kernel_ring_full: u64,
    /// Frames the kernel dropped for want of a free frame (the fill ring was empty),
    /// summed over the worker's sockets (`XDP_STATISTICS` `rx_dropped`).
    pub kernel_dropped: u64,
}

/// How often the kernel's per-socket drop counters are read (two `getsockopt` a socket).
const KERNEL_COUNTS_EVERY: Duration = Duration::from_secs(1);

/// Which of a batch's two passes a frame is handed to [`XskPath::with_batch`]'s callback in.
///
/// Why two: at 10 000 allocations each frame's forwarding entry is a cache miss (about
/// 90 ns). A first pass that only asks the CPU to load every frame's entry lets the
/// batch's misses overlap; the second pass then handles the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Start loading what the frame will need; change nothing.
    Prefetch,
    /// Handle the frame.
    Handle,
}

/// The worker's AF_XDP sockets and what sending through them needs.
pub(super) struct XskPath {
    pub(super) ports: Vec<XskPort>,
    probe: NextHopProbe,
    steering: XskSteering,
    ttl: Duration,
    hops: HashMap<(IpAddr, IpAddr), CachedHop, BuildHasherDefault<AddrHasher>>,
    /// The receive batch: copies of up to [`RX_BATCH`] frames.
    batch: Box<[u8]>,
    batch_len: [usize; RX_BATCH],
    pub(super) counts: XskCounts,
    /// When the kernel's drop counters were last read into `counts`.
    kernel_read: Option<Instant>,
}

/// Why the AF_XDP side could not start.
#[derive(Debug, thiserror::Error)]
pub enum XskPathError {
    /// Opening or registering a socket failed.
    #[error("AF_XDP socket on {iface} queue {queue}: {msg}")]
    Socket {
        /// Interface name.
        iface: String,
        /// Queue.
        queue: u32,
        /// What failed.
        msg: String,
    },
}

impl XskPath {
    /// Opens this worker's sockets and registers them with the XDP program.
    pub(super) fn open(setup: &XskSetup, index: u32) -> Result<XskPath, XskPathError> {
        let mut ports = Vec::new();
        for (i, queue) in queues_of(&setup.interfaces, index, setup.workers) {
            let itf = &setup.interfaces[i];
            let err = |msg: String| XskPathError::Socket {
                iface: itf.name.clone(),
                queue,
                msg,
            };
            let socket = XskSocket::open(&XskConfig {
                ifindex: itf.ifindex,
                queue,
                rx_frames: RX_FRAMES,
                tx_frames: TX_FRAMES,
            })
            .map_err(|e| err(e.to_string()))?;
            setup
                .steering
                .add_socket(itf.ifindex, queue, socket.fd())
                .map_err(|e| err(e.to_string()))?;
            ports.push(XskPort {
                ifindex: itf.ifindex,
                queue,
                socket,
                dirty: false,
                poll: XskPoll::Idle,
            });
        }
        Ok(XskPath {
            ports,
            probe: setup.probe.clone(),
            steering: setup.steering.clone(),
            ttl: setup.next_hop_ttl,
            hops: HashMap::default(),
            batch: vec![0u8; RX_BATCH * FRAME_SIZE].into_boxed_slice(),
            batch_len: [0; RX_BATCH],
            counts: XskCounts::default(),
            kernel_read: None,
        })
    }

    /// Reads the kernel's drop counters of this worker's sockets into `counts`, at most
    /// once per [`KERNEL_COUNTS_EVERY`]. Why: frames the kernel drops at a full ring
    /// never reach the worker, so without these an operator sees loss and no cause.
    pub(super) fn read_kernel_counts(&mut self, now: Instant) {
        if self
            .kernel_read
            .is_some_and(|t| now.duration_since(t) < KERNEL_COUNTS_EVERY)
        {
            return;
        }
        self.kernel_read = Some(now);
        let (mut full, mut dropped) = (0u64, 0u64);
        for p in &self.ports {
            match p.socket.stats() {
                Ok(st) => {
                    full += st.rx_ring_full;
                    dropped += st.rx_dropped;
                }
                Err(e) => {
                    tracing::debug!(error = %e, ifindex = p.ifindex, queue = p.queue, "cannot read an AF_XDP socket's drop counters");
                    return;
                }
            }
        }
        self.counts.kernel_ring_full = full;
        self.counts.kernel_dropped = dropped;
    }

    /// A steering handle (for the relayed-port hook).
    pub(super) fn steering(&self) -> XskSteering {
        self.steering.clone()
    }

    /// Copies up to [`RX_BATCH`] received frames of socket `i` into the batch; returns
    /// how many.
    fn take_batch(&mut self, i: usize) -> usize {
        let Some(port) = self.ports.get_mut(i) else {
            return 0;
        };
        let (mut rx, _) = port.socket.split();
        let mut n = 0;
        let batch = &mut self.batch;
        let lens = &mut self.batch_len;
        rx.recv(RX_BATCH, |frame| {
            let len = frame.len().min(FRAME_SIZE);
            batch[n * FRAME_SIZE..n * FRAME_SIZE + len].copy_from_slice(&frame[..len]);
            lens[n] = len;
            n += 1;
        });
        self.counts.received += n as u64;
        n
    }

    /// Receives a batch from socket `i` and calls `f` with each frame and the path
    /// itself (free to send on any socket while the frame is borrowed): first for every
    /// frame with [`Pass::Prefetch`], then for every frame with [`Pass::Handle`].
    pub(super) fn with_batch(
        &mut self,
        i: usize,
        mut f: impl FnMut(&mut XskPath, &[u8], Pass),
    ) -> usize {
        let n = self.take_batch(i);
        let batch = std::mem::take(&mut self.batch);
        let lens = self.batch_len;
        for pass in [Pass::Prefetch, Pass::Handle] {
            for (k, len) in lens.iter().enumerate().take(n) {
                f(self, &batch[k * FRAME_SIZE..k * FRAME_SIZE + len], pass);
            }
        }
        self.batch = batch;
        n
    }

    fn hop(&mut self, src: IpAddr, dst: IpAddr, now: Instant) -> Option<(usize, Hop, u16)> {
        match self.hops.get(&(src, dst)) {
            Some(CachedHop::Ready {
                port,
                hop,
                mtu,
                until,
            }) if *until > now => return Some((*port, *hop, *mtu)),
            Some(CachedHop::Socket { until }) if *until > now => return None,
            _ => {}
        }
        let entry = match self.probe.resolve(src, dst, 64) {
            Ok(h) => match self.ports.iter().position(|p| p.ifindex == h.ifindex) {
                Some(port) => CachedHop::Ready {
                    port,
                    hop: Hop {
                        src_mac: h.src_mac,
                        dst_mac: h.dst_mac,
                    },
                    mtu: h.mtu,
                    until: now + self.ttl,
                },
                // Routed out of an interface where this worker has no socket.
                None => CachedHop::Socket {
                    until: now + self.ttl,
                },
            },
            Err(NextHopError::NoNeighbour) => CachedHop::Socket {
                until: now + NEGATIVE_TTL,
            },
            Err(e) => {
                tracing::debug!(%src, %dst, error = %e, "no AF_XDP next hop; sending through the socket");
                CachedHop::Socket {
                    until: now + self.ttl,
                }
            }
        };
        self.hops.insert((src, dst), entry);
        match entry {
            CachedHop::Ready { port, hop, mtu, .. } => Some((port, hop, mtu)),
            CachedHop::Socket { .. } => None,
        }
    }

    /// Sends `payload` from `local` to `to` as a frame built by the kernel fast path's
    /// rules; false when it must go through the socket instead (counted).
    #[inline]
    pub(super) fn send(
        &mut self,
        local: SocketAddr,
        to: SocketAddr,
        tos: u8,
        v4: Ipv4Fields,
        payload: &[u8],
        now: Instant,
    ) -> bool {
        let (src, dst) = (local.ip().to_canonical(), to.ip().to_canonical());
        let Some((port, hop, mtu)) = self.hop(src, dst, now) else {
            self.counts.fallback += 1;
            return false;
        };
        let ip_len = payload.len()
            + wire::UDP_HLEN
            + if src.is_ipv4() {
                wire::IPV4_HLEN
            } else {
                wire::IPV6_HLEN
            };
        if ip_len > usize::from(mtu) {
            self.counts.fallback += 1;
            return false;
        }
        let Some(p) = self.ports.get_mut(port) else {
            self.counts.fallback += 1;
            return false;
        };
        let (_, mut tx) = p.socket.split();
        let sent = tx.send_with(|frame| {
            turn_frames::write_relayed_frame(
                frame,
                &hop,
                SocketAddr::new(src, local.port()),
                SocketAddr::new(dst, to.port()),
                tos,
                v4,
                payload,
            )
            .ok()
        });
        if sent {
            p.dirty = true;
            self.counts.sent += 1;
        } else {
            self.counts.fallback += 1;
        }
        sent
    }

    /// Hands queued frames to the kernel.
    pub(super) fn flush(&mut self) -> u64 {
        let mut errors = 0;
        for p in self.ports.iter_mut().filter(|p| p.dirty) {
            let (_, mut tx) = p.socket.split();
            if let Err(e) = tx.flush() {
                errors += 1;
                tracing::debug!(ifindex = p.ifindex, queue = p.queue, error = %e, "AF_XDP transmit kick failed");
            }
            p.dirty = tx.pending() > 0;
        }
        errors
    }

    /// Whether frames are still queued for transmission (the loop must not sleep long).
    pub(super) fn has_pending(&self) -> bool {
        self.ports.iter().any(|p| p.dirty)
    }
}

/// A received frame, checked as the kernel's UDP receive path checks it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Destination (a listen or relayed address, if it is ours).
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
    /// IPv4 TOS / IPv6 traffic class (copied into what is sent in answer).
    pub tos: u8,
    /// The IPv4 fields an answer copies (fast path rules).
    pub v4: Ipv4Fields,
}

/// Parses and checks one received frame (None = drop: what the kernel would drop too).
/// Public for the fuzz target (`relay/fuzz/fuzz_targets/xsk_frame.rs`).
pub fn check_frame(frame: &[u8]) -> Option<Received<'_>> {
    let f = wire::parse_udp_frame(frame).ok()?;
    if !f.ip_checksum_valid()
        || !(f.udp_checksum_valid()
            || wire::udp_checksum_partial(f.src.ip(), f.dst.ip(), f.udp_segment()))
    {
        return None;
    }
    Some(Received {
        src: f.src,
        dst: f.dst,
        payload: f.payload,
        tos: turn_frames::tos_of_frame(&f)?,
        v4: Ipv4Fields::for_frame(&f, false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn itf(name: &str, queues: u32) -> XskInterface {
        XskInterface {
            name: name.into(),
            ifindex: 7,
            queues,
        }
    }

    #[test]
    fn queues_are_dealt_round_robin_over_workers() {
        let itfs = [itf("a", 4), itf("b", 1)];
        assert_eq!(queues_of(&itfs, 0, 2), vec![(0, 0), (0, 2), (1, 0)]);
        assert_eq!(queues_of(&itfs, 1, 2), vec![(0, 1), (0, 3)]);
        assert_eq!(
            queues_of(&itfs, 0, 0),
            vec![(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
        );
        assert!(queues_of(&itfs, 5, 2).is_empty());
    }

    #[test]
    fn received_frames_are_checked_like_the_kernel_does() {
        let hop = Hop {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
        };
        let src: SocketAddr = "192.0.2.9:40000".parse().expect("addr");
        let dst: SocketAddr = "192.0.2.1:3478".parse().expect("addr");
        let v4 = Ipv4Fields {
            id: 0x0102,
            df: true,
        };
        let mut f =
            turn_frames::build_relayed_frame(&hop, src, dst, 0x2e, v4, b"\x40\x00\x00\x02hi")
                .expect("builds");
        let r = check_frame(&f).expect("a good frame passes");
        assert_eq!(
            (r.src, r.dst, r.payload),
            (src, dst, &b"\x40\x00\x00\x02hi"[..])
        );
        assert_eq!((r.tos, r.v4), (0x2e, v4));
        // A flipped payload bit breaks the UDP checksum; a flipped TTL the IP one.
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(check_frame(&f).is_none());
        f[last] ^= 1;
        f[22] ^= 1;
        assert!(check_frame(&f).is_none());
        f[22] ^= 1;
        assert!(check_frame(&f[..f.len() - 1]).is_none(), "truncated");
        // An offloaded checksum (pseudo-header sum only, as a local sender over veth
        // leaves it) passes; one off by one does not.
        let u = f.len() - 6 - 8;
        let seg_len = f.len() - u;
        let mut sum = wire::ones_complement_sum(&[192, 0, 2, 9, 192, 0, 2, 1, 0, 17], 0);
        sum = wire::ones_complement_sum(&(seg_len as u16).to_be_bytes(), sum);
        let partial = wire::fold(sum);
        f[u + 6..u + 8].copy_from_slice(&partial.to_be_bytes());
        assert!(check_frame(&f).is_some(), "partial checksum");
        f[u + 6..u + 8].copy_from_slice(&partial.wrapping_add(1).to_be_bytes());
        assert!(check_frame(&f).is_none());
        assert!(check_frame(&[]).is_none());
    }

    #[test]
    fn the_address_hasher_separates_keys() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u32 {
            let mut h = AddrHasher::default();
            h.write(&i.to_be_bytes());
            h.write(&[10, 0, 0, 1]);
            seen.insert(h.finish());
        }
        assert_eq!(seen.len(), 1000);
    }
}
