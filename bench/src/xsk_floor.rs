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
//! batches of up to [`BATCH`]; when none wait, the process sleeps in `poll`. The sockets
//! are the relay's own ([`relay::xsk`]), as its workers use them.
//!
//! The bench hands the receive socket to `bench_xsk`'s map itself (`pidfd_getfd`): this
//! process prints `ready <fd>` once both sockets are bound.

use std::{io::Write, net::Ipv4Addr};

use anyhow::{Context, Result};
use clap::Args;
use relay::xsk::{self, XskConfig, XskSocket, XskStats};

use crate::turn_xdp::common::{FloorConfig, relayed_udp_checksum};

/// Frames per receive batch.
pub const BATCH: usize = 64;
/// Receive frames of the receive socket and send frames of the send socket (entries of
/// their rings).
const FRAMES: u32 = 4096;
/// The other direction's frames of each socket: its rings must exist, nothing uses them.
const UNUSED_FRAMES: u32 = 64;
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

/// A socket on queue 0 of `dev` (a veth has one).
fn open(dev: &str, rx_frames: u32, tx_frames: u32) -> Result<XskSocket> {
    let cfg = XskConfig {
        ifindex: xsk::ifindex(dev)?,
        queue: 0,
        rx_frames,
        tx_frames,
    };
    XskSocket::open(&cfg).with_context(|| format!("AF_XDP socket on {dev}"))
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
        peer_port: 0,
        _pad: 0,
    };
    let mut rx = open(&args.rx_dev, FRAMES, UNUSED_FRAMES)?;
    let mut tx = open(&args.tx_dev, UNUSED_FRAMES, FRAMES)?;
    let mut drops = [0u64; 3];
    println!("ready {}", rx.fd());
    std::io::stdout().flush()?;

    let (_, mut out) = tx.split();
    loop {
        // Each frame is copied (or dropped) and goes back to the fill ring at once; the
        // relayed frames leave in one flush per batch.
        let (mut inp, _) = rx.split();
        let n = inp.recv(BATCH, |frame| {
            out.send_with(|buf| rewrite(frame, buf, &r));
        });
        // Also when idle: what a busy device left on the TX ring (no system call when
        // nothing is left).
        out.flush().context("AF_XDP transmit")?;
        if n == 0 {
            let mut p = libc::pollfd {
                fd: rx.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 100) } == 0 {
                // Idle for 100 ms: a step is over.
                if let Ok(st) = rx.stats() {
                    report_drops(&st, &mut drops);
                }
            }
        }
    }
}

/// Prints the receive socket's drop counters to stderr when they changed (called once
/// the forwarder has been idle for a while, so about once per bench step): frames the kernel could not hand over are the forwarder's loss, not the relay
/// path's, and a bench reader needs to tell them apart.
fn report_drops(st: &XskStats, last: &mut [u64; 3]) {
    let now = [st.rx_dropped, st.rx_ring_full, st.rx_fill_ring_empty_descs];
    if now != *last {
        eprintln!(
            "   xsk-floor: receive drops so far: {} dropped, {} with the RX ring full, {} with the fill ring empty",
            now[0], now[1], now[2]
        );
        *last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::xsk::FRAME_SIZE;

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
            peer_port: 0,
            _pad: 0,
        }
    }

    /// The relayed frame is the payload in a fresh IPv4/UDP frame whose two checksums are
    /// exactly what a computation from scratch gives, for odd and even payload lengths.
    #[test]
    fn rewrite_strips_the_header_and_keeps_checksums_exact() {
        for len in [0usize, 1, 7, 200, 1201] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let inp = frame(&payload, 0x4001, true);
            let mut out = [0u8; FRAME_SIZE];
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
        let mut out = [0u8; FRAME_SIZE];
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
        let mut out = [0u8; FRAME_SIZE];
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
