//! `relay-bench xsk-floor`: the least work a ChannelData relay in userspace does when its
//! packets bypass the kernel's socket layer through AF_XDP, path (f) of the four-way bench
//! (`turn-xdp`).
//!
//! Why: the userspace target (3× coturn per core) is out of reach on kernel UDP
//! sockets here, as path (e) measured. The design that could reach it moves the userspace
//! path onto AF_XDP (the XDP program steers frames into a ring shared with the process).
//! This forwarder measures what that costs per packet on this machine before anything is
//! built on it: no lookup, no state, one fixed peer, as (e) does for sockets.
//!
//! Shape: `bench_xsk` on the relay's client-side veth redirects UDP to the listen port into
//! an AF_XDP socket bound to that veth's queue 0 (copy mode: veth has no zero-copy). For
//! each received frame this process writes the relayed frame (ChannelData header
//! stripped; MACs, addresses, destination port, lengths, a fresh IPv4 header checksum and
//! an incremental UDP checksum, as `bench_floor` does) into a frame of a second socket,
//! bound to the peer-side veth, and the kernel transmits it. Frames are received in
//! batches of up to [`BATCH`]; when none wait, the process sleeps in `poll`.
//!
//! The bench hands the receive socket to `bench_xsk`'s map itself (`pidfd_getfd`): this
//! process prints `ready <fd>` once both sockets are bound.

use std::{
    io::Write,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::turn_xdp::common::{FloorConfig, relayed_udp_checksum};

/// Frames per receive batch.
pub const BATCH: usize = 64;
/// Bytes per UMEM frame.
const FRAME: usize = 2048;
/// Frames per UMEM, and entries per ring.
const FRAMES: usize = 4096;
/// Ethernet + IPv4 (no options) + UDP.
const ETH: usize = 14;
const IP: usize = ETH;
const UDP: usize = IP + 20;
const PAYLOAD: usize = UDP + 8;

#[derive(Args, Debug, Clone)]
pub struct XskFloorArgs {
    /// The relay's client-side interface (frames arrive there).
    #[arg(long)]
    pub rx_dev: String,
    /// The relay's peer-side interface (frames leave there).
    #[arg(long)]
    pub tx_dev: String,
    /// Destination MAC of relayed frames (the peer's), as aa:bb:cc:dd:ee:ff.
    #[arg(long, value_parser = parse_mac)]
    pub dst_mac: [u8; 6],
    /// Source MAC of relayed frames (the peer-side interface's).
    #[arg(long, value_parser = parse_mac)]
    pub src_mac: [u8; 6],
    /// Source address of relayed frames (the relay's peer-side address).
    #[arg(long)]
    pub src_ip: Ipv4Addr,
    /// The peer's address.
    #[arg(long)]
    pub dst_ip: Ipv4Addr,
    /// The ChannelData listen port (frames to other ports are not relayed).
    #[arg(long)]
    pub listen_port: u16,
    /// The peer's port.
    #[arg(long)]
    pub peer_port: u16,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        let p = parts.next().ok_or_else(|| format!("{s:?}: not a MAC"))?;
        *b = u8::from_str_radix(p, 16).map_err(|e| format!("{s:?}: {e}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{s:?}: not a MAC"));
    }
    Ok(m)
}

fn word(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Writes the relayed frame of the ChannelData frame `inp` into `out`; its length, or
/// `None` when `inp` is not an unfragmented IPv4/UDP ChannelData frame to the listen port
/// with exactly its data (channel 0x4000–0x4FFF; the same frames `bench_floor` relays) or
/// `out` is too small.
pub fn rewrite(inp: &[u8], out: &mut [u8], r: &FloorConfig) -> Option<usize> {
    if inp.len() < PAYLOAD + 4
        || word(inp, 12) != 0x0800
        || inp[IP] != 0x45
        || inp[IP + 9] != 17
        || word(inp, IP + 6) & 0x3fff != 0
        || word(inp, UDP + 2) != r.listen_port
    {
        return None;
    }
    let channel = word(inp, PAYLOAD);
    let clen = usize::from(word(inp, PAYLOAD + 2));
    let udp_len = usize::from(word(inp, UDP + 4));
    if !(0x4000..=0x4fff).contains(&channel)
        || clen + 12 != udp_len
        || UDP + udp_len > inp.len()
        || PAYLOAD + clen > out.len()
    {
        return None;
    }
    let new_udp_len = (udp_len - 4) as u16;
    // Big-endian words throughout (the sum does not depend on the byte order).
    let udp_csum = relayed_udp_checksum(
        word(inp, UDP + 6),
        [
            word(inp, IP + 12),
            word(inp, IP + 14),
            word(inp, IP + 16),
            word(inp, IP + 18),
            word(inp, UDP + 2),
            word(inp, UDP + 4),
            word(inp, UDP + 4),
            word(inp, PAYLOAD),
            word(inp, PAYLOAD + 2),
        ],
        [
            word(&r.src_ip, 0),
            word(&r.src_ip, 2),
            word(&r.dst_ip, 0),
            word(&r.dst_ip, 2),
            r.sink_port,
            new_udp_len,
            new_udp_len,
        ],
    );

    out[0..6].copy_from_slice(&r.dst_mac);
    out[6..12].copy_from_slice(&r.src_mac);
    out[12..14].copy_from_slice(&inp[12..14]);
    out[IP..UDP].copy_from_slice(&inp[IP..UDP]);
    out[IP + 2..IP + 4].copy_from_slice(&(word(inp, IP + 2) - 4).to_be_bytes());
    out[IP + 8] = 64;
    out[IP + 10..IP + 12].fill(0);
    out[IP + 12..IP + 16].copy_from_slice(&r.src_ip);
    out[IP + 16..IP + 20].copy_from_slice(&r.dst_ip);
    let ip_sum: u32 = (IP..UDP).step_by(2).map(|i| u32::from(word(out, i))).sum();
    out[IP + 10..IP + 12].copy_from_slice(&(!fold(ip_sum)).to_be_bytes());
    out[UDP..UDP + 2].copy_from_slice(&inp[UDP..UDP + 2]);
    out[UDP + 2..UDP + 4].copy_from_slice(&r.sink_port.to_be_bytes());
    out[UDP + 4..UDP + 6].copy_from_slice(&new_udp_len.to_be_bytes());
    out[UDP + 6..UDP + 8].copy_from_slice(&udp_csum.to_be_bytes());
    out[PAYLOAD..PAYLOAD + clen].copy_from_slice(&inp[PAYLOAD + 4..PAYLOAD + 4 + clen]);
    Some(PAYLOAD + clen)
}

/// One mmapped AF_XDP ring: entries of `T` (a u64 frame address for the fill and
/// completion rings, an `xdp_desc` for RX and TX).
struct Ring<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    entries: *mut T,
    map: *mut libc::c_void,
    map_len: usize,
    /// Our copy of the index this side owns (producer of a ring we fill, consumer of a
    /// ring we drain).
    local: u32,
}

impl<T: Copy> Ring<T> {
    /// Maps the ring of `fd` at page offset `pgoff` described by `off`.
    fn map(fd: i32, off: &libc::xdp_ring_offset, pgoff: u64, producer_side: bool) -> Result<Self> {
        let map_len = off.desc as usize + FRAMES * std::mem::size_of::<T>();
        // SAFETY: a fresh shared mapping of the socket's ring; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            bail!("mmap AF_XDP ring: {}", std::io::Error::last_os_error());
        }
        let at = |o: u64| (map as usize + o as usize) as *mut u8;
        let mut ring = Ring {
            producer: at(off.producer) as *const AtomicU32,
            consumer: at(off.consumer) as *const AtomicU32,
            entries: at(off.desc) as *mut T,
            map,
            map_len,
            local: 0,
        };
        // SAFETY: both indices lie inside the mapping (kernel-given offsets), u32-aligned.
        ring.local = unsafe {
            if producer_side {
                (*ring.producer).load(Ordering::Relaxed)
            } else {
                (*ring.consumer).load(Ordering::Relaxed)
            }
        };
        Ok(ring)
    }

    /// Free entries of a ring we produce into.
    fn free(&self) -> u32 {
        // SAFETY: the consumer index lies inside the mapping.
        let cons = unsafe { (*self.consumer).load(Ordering::Acquire) };
        FRAMES as u32 - self.local.wrapping_sub(cons)
    }

    /// Puts `v` at our producer index (the caller checked [`Ring::free`]); published by
    /// [`Ring::publish_producer`].
    fn push(&mut self, v: T) {
        // SAFETY: the index is masked into the ring's FRAMES entries.
        unsafe {
            self.entries
                .add(self.local as usize & (FRAMES - 1))
                .write(v)
        };
        self.local = self.local.wrapping_add(1);
    }

    fn publish_producer(&self) {
        // SAFETY: the producer index lies inside the mapping; Release orders the entries
        // written before it.
        unsafe { (*self.producer).store(self.local, Ordering::Release) };
    }

    /// Entries waiting in a ring we consume from.
    fn ready(&self) -> u32 {
        // SAFETY: the producer index lies inside the mapping; Acquire orders the entries.
        let prod = unsafe { (*self.producer).load(Ordering::Acquire) };
        prod.wrapping_sub(self.local)
    }

    /// The `i`-th waiting entry of a ring we consume from.
    fn peek(&self, i: u32) -> T {
        // SAFETY: the index is masked into the ring's FRAMES entries.
        unsafe {
            self.entries
                .add(self.local.wrapping_add(i) as usize & (FRAMES - 1))
                .read()
        }
    }

    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        // SAFETY: the consumer index lies inside the mapping.
        unsafe { (*self.consumer).store(self.local, Ordering::Release) };
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// An AF_XDP socket with its own UMEM of FRAMES frames and its four rings.
struct Xsk {
    fd: OwnedFd,
    umem: *mut u8,
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
}

fn setsockopt<T>(fd: i32, name: i32, v: &T) -> Result<()> {
    // SAFETY: `v` is a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    ensure!(
        r == 0,
        "setsockopt(SOL_XDP, {name}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

impl Xsk {
    /// A socket bound to queue 0 of `dev` in copy mode.
    fn open(dev: &str) -> Result<Xsk> {
        let ifindex = if_index(dev)?;
        // SAFETY: plain socket call; the fd is owned below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        ensure!(
            raw >= 0,
            "socket(AF_XDP): {} (needs a kernel with AF_XDP and root)",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = FRAME * FRAMES;
        // SAFETY: a fresh private anonymous mapping; checked below.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        ensure!(
            umem != libc::MAP_FAILED,
            "mmap UMEM: {}",
            std::io::Error::last_os_error()
        );
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: len as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(raw, libc::XDP_UMEM_REG, &reg)?;
        let n = FRAMES as u32;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            setsockopt(raw, opt, &n)?;
        }
        // SAFETY: xdp_mmap_offsets is plain data filled by the kernel.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut olen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` has the size passed in `olen`.
        let r = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut olen,
            )
        };
        ensure!(
            r == 0,
            "getsockopt(XDP_MMAP_OFFSETS): {}",
            std::io::Error::last_os_error()
        );
        let fill = Ring::map(raw, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, true)?;
        let comp = Ring::map(raw, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING, false)?;
        let rx = Ring::map(raw, &off.rx, libc::XDP_PGOFF_RX_RING as u64, false)?;
        let tx = Ring::map(raw, &off.tx, libc::XDP_PGOFF_TX_RING as u64, true)?;
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: 0,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a complete sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        ensure!(
            r == 0,
            "bind AF_XDP socket to {dev} queue 0: {}",
            std::io::Error::last_os_error()
        );
        Ok(Xsk {
            fd,
            umem: umem.cast(),
            fill,
            comp,
            rx,
            tx,
        })
    }

    /// Frame `addr`'s bytes (`len` of them from `addr`, inside the UMEM).
    fn frame(&self, addr: u64, len: usize) -> &[u8] {
        let addr = addr as usize;
        assert!(addr + len <= FRAME * FRAMES);
        // SAFETY: inside the UMEM (checked above); the kernel does not write a frame while
        // userspace owns it (taken from RX, not yet given back to the fill ring).
        unsafe { std::slice::from_raw_parts(self.umem.add(addr), len) }
    }

    /// Frame `addr`, writable (a frame this process owns: not on the TX ring).
    fn frame_mut(&mut self, addr: u64) -> &mut [u8] {
        let addr = addr as usize & !(FRAME - 1);
        assert!(addr + FRAME <= FRAME * FRAMES);
        // SAFETY: one whole frame inside the UMEM, owned by this process (free list).
        unsafe { std::slice::from_raw_parts_mut(self.umem.add(addr), FRAME) }
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once. The kernel pinned the UMEM's pages when
        // it was registered and keeps them until the socket (closed right after this) is
        // released, so it never writes into unmapped memory.
        unsafe { libc::munmap(self.umem.cast(), FRAME * FRAMES) };
    }
}

fn if_index(dev: &str) -> Result<u32> {
    let c = std::ffi::CString::new(dev).context("interface name")?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(i != 0, "no interface {dev}");
    Ok(i)
}

/// Runs the forwarder until the process is killed.
pub fn run(args: &XskFloorArgs) -> Result<()> {
    let r = FloorConfig {
        dst_mac: args.dst_mac,
        src_mac: args.src_mac,
        src_ip: args.src_ip.octets(),
        dst_ip: args.dst_ip.octets(),
        listen_port: args.listen_port,
        sink_port: args.peer_port,
        out_ifindex: 0,
    };
    let mut rx = Xsk::open(&args.rx_dev)?;
    let mut tx = Xsk::open(&args.tx_dev)?;
    // Every receive frame goes on the fill ring; every send frame is free.
    for i in 0..FRAMES {
        rx.fill.push((i * FRAME) as u64);
    }
    rx.fill.publish_producer();
    let mut free: Vec<u64> = (0..FRAMES).map(|i| (i * FRAME) as u64).collect();
    let mut drops = [0u64; 3];
    println!("ready {}", rx.fd.as_raw_fd());
    std::io::stdout().flush()?;

    loop {
        // Send frames the kernel is done with become free again.
        let done = tx.comp.ready();
        for i in 0..done {
            free.push(tx.comp.peek(i));
        }
        tx.comp.release(done);

        let n = rx.rx.ready().min(BATCH as u32);
        if n == 0 {
            let mut p = libc::pollfd {
                fd: rx.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 100) } == 0 {
                // Idle for 100 ms: a step is over.
                report_drops(&rx, &mut drops);
            }
            continue;
        }
        let room = tx.tx.free().min(free.len() as u32);
        let mut sent = 0;
        for i in 0..n {
            let d = rx.rx.peek(i);
            if sent < room
                && let Some(out) = free.last().copied()
                && let Some(len) = rewrite(rx.frame(d.addr, d.len as usize), tx.frame_mut(out), &r)
            {
                free.pop();
                tx.tx.push(libc::xdp_desc {
                    addr: out,
                    len: len as u32,
                    options: 0,
                });
                sent += 1;
            }
            // Copied (or dropped): the receive frame goes back at once.
            rx.fill.push(d.addr & !(FRAME as u64 - 1));
        }
        rx.rx.release(n);
        rx.fill.publish_producer();
        if sent > 0 {
            tx.tx.publish_producer();
            kick(&tx)?;
        }
    }
}

/// Prints the receive socket's drop counters to stderr when they changed (called once
/// the forwarder has been idle for a while, so about once per bench step): frames the kernel could not hand over are the forwarder's loss, not the relay
/// path's, and a bench reader needs to tell them apart.
fn report_drops(rx: &Xsk, last: &mut [u64; 3]) {
    // SAFETY: xdp_statistics is plain data filled by the kernel.
    let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: `st` has the size passed in `len`.
    let r = unsafe {
        libc::getsockopt(
            rx.fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            (&mut st as *mut libc::xdp_statistics).cast(),
            &mut len,
        )
    };
    let now = [st.rx_dropped, st.rx_ring_full, st.rx_fill_ring_empty_descs];
    if r == 0 && now != *last {
        eprintln!(
            "   xsk-floor: receive drops so far: {} dropped, {} with the RX ring full, {} with the fill ring empty",
            now[0], now[1], now[2]
        );
        *last = now;
    }
}

/// Makes the kernel transmit what the TX ring holds. In copy mode it does so in `sendto`,
/// at most 32 frames per call (answering EAGAIN while more wait), so it is called until
/// the ring is drained, a bounded number of times.
fn kick(tx: &Xsk) -> Result<()> {
    for _ in 0..FRAMES / 32 {
        // SAFETY: a zero-length send on our own socket only starts transmission.
        let k = unsafe {
            libc::sendto(
                tx.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if k >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => continue,
            // The device is busy or out of buffers: what is left goes on the next kick.
            Some(libc::EBUSY) | Some(libc::ENOBUFS) => return Ok(()),
            _ => bail!("sendto (AF_XDP transmit): {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sum over 16-bit words (one's complement, folded), for a checksum from scratch.
    fn sum(b: &[u8]) -> u32 {
        b.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }

    fn frame(payload: &[u8], channel: u16, with_csum: bool) -> Vec<u8> {
        let mut f = vec![0u8; PAYLOAD + 4 + payload.len()];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[IP] = 0x45;
        let ip_len = (f.len() - ETH) as u16;
        f[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
        f[IP + 6] = 0x40;
        f[IP + 8] = 63;
        f[IP + 9] = 17;
        f[IP + 12..IP + 16].copy_from_slice(&[10, 201, 0, 2]);
        f[IP + 16..IP + 20].copy_from_slice(&[10, 201, 0, 1]);
        f[UDP..UDP + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[UDP + 2..UDP + 4].copy_from_slice(&3478u16.to_be_bytes());
        f[UDP + 4..UDP + 6].copy_from_slice(&((8 + 4 + payload.len()) as u16).to_be_bytes());
        f[PAYLOAD..PAYLOAD + 2].copy_from_slice(&channel.to_be_bytes());
        f[PAYLOAD + 2..PAYLOAD + 4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        f[PAYLOAD + 4..].copy_from_slice(payload);
        if with_csum {
            let c = udp_csum(&f);
            f[UDP + 6..UDP + 8].copy_from_slice(&c.to_be_bytes());
        }
        f
    }

    fn udp_csum(f: &[u8]) -> u16 {
        let ulen = usize::from(word(f, UDP + 4));
        let s = sum(&f[IP + 12..IP + 20]) + 17 + ulen as u32 + sum(&f[UDP..UDP + ulen]);
        match !fold(s) {
            0 => 0xffff,
            c => c,
        }
    }

    fn rw() -> FloorConfig {
        FloorConfig {
            dst_mac: [2, 0, 0, 0, 0, 9],
            src_mac: [2, 0, 0, 0, 0, 8],
            src_ip: [10, 202, 0, 1],
            dst_ip: [10, 202, 0, 2],
            listen_port: 3478,
            sink_port: 4000,
            out_ifindex: 0,
        }
    }

    /// The relayed frame is the payload in a fresh IPv4/UDP frame whose two checksums are
    /// exactly what a computation from scratch gives, for odd and even payload lengths.
    #[test]
    fn rewrite_strips_the_header_and_keeps_checksums_exact() {
        for len in [0usize, 1, 7, 200, 1201] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let inp = frame(&payload, 0x4001, true);
            let mut out = [0u8; FRAME];
            let n = rewrite(&inp, &mut out, &rw()).expect("relayed");
            let out = &out[..n];
            assert_eq!(n, inp.len() - 4);
            assert_eq!(&out[PAYLOAD..], &payload[..]);
            assert_eq!(&out[0..12], &[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 8]);
            assert_eq!(word(out, IP + 2) as usize, n - ETH);
            assert_eq!(fold(sum(&out[IP..UDP])), 0xffff, "IPv4 header checksum");
            assert_eq!(&out[IP + 12..IP + 20], &[10, 202, 0, 1, 10, 202, 0, 2]);
            assert_eq!(word(out, UDP), 40000);
            assert_eq!(word(out, UDP + 2), 4000);
            assert_eq!(word(out, UDP + 4) as usize, 8 + len);
            let mut zeroed = out.to_vec();
            zeroed[UDP + 6..UDP + 8].fill(0);
            assert_eq!(
                word(out, UDP + 6),
                udp_csum(&zeroed),
                "UDP checksum, {len} bytes"
            );
        }
        // No checksum stays no checksum.
        let mut out = [0u8; FRAME];
        let n = rewrite(&frame(b"abc", 0x4000, false), &mut out, &rw()).expect("relayed");
        assert_eq!(word(&out[..n], UDP + 6), 0);
    }

    /// bench_floor feeds the shared checksum native-order (little-endian) words, this
    /// forwarder big-endian ones: the results must be the same checksum, byte-swapped.
    #[test]
    fn relayed_checksum_does_not_depend_on_byte_order() {
        let removed = [0x0ac9, 0x0002, 0x0ac9, 0x0001, 3478, 216, 216, 0x4001, 208];
        let added = [0x0aca, 0x0001, 0x0aca, 0x0002, 4000, 212, 212];
        for old in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
            let be = relayed_udp_checksum(old, removed, added);
            let le = relayed_udp_checksum(
                old.swap_bytes(),
                removed.map(u16::swap_bytes),
                added.map(u16::swap_bytes),
            );
            assert_eq!(le, be.swap_bytes(), "old checksum {old:#06x}");
        }
        assert_eq!(
            relayed_udp_checksum(0, removed, added),
            0,
            "none stays none"
        );
    }

    /// What bench_floor would not relay is not relayed here either.
    #[test]
    fn rewrite_refuses_what_the_floor_refuses() {
        let mut out = [0u8; FRAME];
        let ok = frame(b"data", 0x4000, true);
        assert!(rewrite(&ok, &mut out, &rw()).is_some());
        assert!(rewrite(&frame(b"data", 0x5000, true), &mut out, &rw()).is_none());
        let mut padded = frame(b"dat", 0x4000, true);
        padded.push(0);
        let ul = word(&padded, UDP + 4) + 1;
        padded[UDP + 4..UDP + 6].copy_from_slice(&ul.to_be_bytes());
        assert!(rewrite(&padded, &mut out, &rw()).is_none(), "padding");
        let mut frag = ok.clone();
        frag[IP + 6] = 0x20;
        assert!(rewrite(&frag, &mut out, &rw()).is_none(), "fragment");
        let mut other_port = ok.clone();
        other_port[UDP + 3] ^= 1;
        assert!(rewrite(&other_port, &mut out, &rw()).is_none());
        assert!(
            rewrite(&ok[..ok.len() - 1], &mut out, &rw()).is_none(),
            "short"
        );
        assert!(
            rewrite(&ok[..PAYLOAD + 2], &mut out, &rw()).is_none(),
            "runt"
        );
        assert!(
            rewrite(&ok, &mut out[..PAYLOAD + 3], &rw()).is_none(),
            "small out"
        );
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Ok([2, 0, 10, 255, 0, 1]));
        assert!(parse_mac("02:00:0a:ff:00").is_err());
        assert!(parse_mac("02:00:0a:ff:00:01:02").is_err());
        assert!(parse_mac("zz:00:0a:ff:00:01").is_err());
    }
}
