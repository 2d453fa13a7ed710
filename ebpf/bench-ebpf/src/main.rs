//! The TURN bench's XDP programs (`cargo xtask bench turn-xdp`, `relay-bench turn-xdp`).
//!
//! - `bench_gen`: the load generator. Run by BPF_PROG_TEST_RUN with
//!   BPF_F_TEST_XDP_LIVE_FRAMES on the client's veth, it stamps each copy of a ChannelData
//!   frame template with a source port (one per allocation, round-robin from a per-CPU
//!   counter), an index, a sequence number and the send time, fixes the UDP checksum and
//!   returns XDP_TX: the kernel transmits it. This outruns kernel UDP sockets by an order
//!   of magnitude, so the relay, not the generator, is the bottleneck.
//! - `bench_floor`: the floor. The least header work a ChannelData relay needs (strip the
//!   4-byte ChannelData header, rewrite MACs, addresses, ports, lengths and checksums) and
//!   a redirect to the peer side; no rule lookup, no state.
//!   Measuring the other direction (`--direction peer-to-client`), it runs on the peer's
//!   veth and sends plain UDP to each allocation's relayed port instead.
//! - `bench_floor_rev`: the floor of that direction: add the 4-byte ChannelData header,
//!   rewrite the rest as `bench_floor` does, redirect to the client side.
//! - `bench_sink`: on the far side's veth (the peer's, or the client's for the other
//!   direction), counts the bench's frames and their bytes, records the one-way latency
//!   (same clock as the generator's stamp) in a log-linear histogram, and drops them.
//!   Everything else (ARP, the relay's STUN answers, ...) passes.
//! - `bench_xsk`: path (f), the AF_XDP floor: redirects UDP to the listen port into the
//!   AF_XDP socket of `relay-bench xsk-floor` (`XSKS`, by receive queue); everything else,
//!   and everything while no socket is there, passes.
//! - `bench_pass`: passes everything; makes a veth receive frames XDP_TX'ed into its pair
//!   (needed in front of the userspace relays).
#![no_std]
#![no_main]

#[allow(dead_code)] // shared with userspace, which uses the rest
mod common;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_redirect, generated::bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, XskMap},
    programs::XdpContext,
};

use crate::common::*;

#[map(name = "GEN_CONFIG")]
static GEN_CFG: Array<GenConfig> = Array::with_max_entries(1, 0);
#[map(name = "GEN_SEQ")]
static GEN_SEQ_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "FLOOR_CONFIG")]
static FLOOR_CFG: Array<FloorConfig> = Array::with_max_entries(1, 0);
#[map(name = "SINK_CONFIG")]
static SINK_CFG: Array<SinkConfig> = Array::with_max_entries(1, 0);
#[map(name = "GEN_PORTS")]
static GEN_PORTS_MAP: Array<u16> = Array::with_max_entries(GEN_PORTS_MAX, 0);
#[map(name = "SINK_STATS")]
static SINK_STATS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(SINK_STAT_COUNT, 0);
#[map(name = "XSKS")]
static XSKS_MAP: XskMap = XskMap::with_max_entries(XSK_QUEUES, 0);
#[map(name = "SINK_HIST")]
static SINK_HIST_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIST_BUCKETS, 0);

/// Pointer to `off` in the packet if `len` bytes from there are inside it.
#[inline(always)]
fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut u8)
}

/// Reads a 16-bit word as the checksum sees it (native load).
#[inline(always)]
fn rd16(p: *const u8) -> u16 {
    // SAFETY: callers pass pointers the packet bounds check covered.
    unsafe { core::ptr::read_unaligned(p.cast::<u16>()) }
}

#[inline(always)]
fn wr16(p: *mut u8, v: u16) {
    // SAFETY: as for `rd16`.
    unsafe { core::ptr::write_unaligned(p.cast::<u16>(), v) }
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[inline(always)]
fn sum32(v: u32) -> u64 {
    u64::from(v & 0xffff) + u64::from(v >> 16)
}

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    generate(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<u32> {
    let cfg = GEN_CFG.get(0)?;
    let seq_p = GEN_SEQ_MAP.get_ptr_mut(0)?;
    // SAFETY: a successful lookup of this CPU's entry; programs on one CPU do not nest.
    let seq = unsafe { *seq_p };
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if cfg.rate != 0 {
        let allowed = now.saturating_sub(cfg.start_ns) * cfg.rate / 1_000_000_000;
        if seq >= allowed {
            return Some(xdp_action::XDP_DROP);
        }
    }
    // SAFETY: as above.
    unsafe { *seq_p = seq + 1 };
    let n = if cfg.allocations == 0 {
        1
    } else {
        cfg.allocations
    };
    let idx = (seq % u64::from(n)) as u32;
    let head = at(ctx, 0, GEN_HEAD_LEN)?;
    // SAFETY: `head` covers GEN_HEAD_LEN bytes of the packet; the source is the map
    // value's array of that length.
    unsafe { core::ptr::copy_nonoverlapping(cfg.head.as_ptr(), head, GEN_HEAD_LEN) };
    let udp = at(ctx, UDP_OFF, 8)?;
    // From the client: ChannelData from the allocation's source port. From the peer:
    // plain UDP to the allocation's relayed port.
    let (port, port_at, app) = if cfg.to_client == 0 {
        let p = (cfg.first_port + idx) as u16;
        (p, udp, at(ctx, UDP_PAYLOAD + 4, APP_MIN)?)
    } else {
        let p = *GEN_PORTS_MAP.get(idx)?;
        // SAFETY: `udp` covers the 8-byte UDP header.
        (p, unsafe { udp.add(2) }, at(ctx, UDP_PAYLOAD, APP_MIN)?)
    };
    let seq32 = seq as u32;
    let port_word = port.to_be();
    wr16(port_at, port_word);
    // SAFETY: `app` covers APP_MIN bytes (checked by `at`).
    unsafe {
        core::ptr::write_unaligned(app.add(APP_INDEX).cast::<u32>(), idx.to_le());
        core::ptr::write_unaligned(app.add(APP_SEQ).cast::<u32>(), seq32.to_le());
        core::ptr::write_unaligned(app.add(APP_TIME).cast::<u64>(), now.to_le());
    }
    let sum = cfg.csum_base
        + u64::from(port_word)
        + sum32(idx)
        + sum32(seq32)
        + sum32(now as u32)
        + sum32((now >> 32) as u32);
    let mut c = !fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    // SAFETY: `udp` covers the 8-byte UDP header.
    wr16(unsafe { udp.add(6) }, c);
    Some(xdp_action::XDP_TX)
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    sink(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn bump(i: u32, by: u64) {
    if let Some(p) = SINK_STATS_MAP.get_ptr_mut(i) {
        // SAFETY: this CPU's entry, from a successful lookup.
        unsafe { *p += by };
    }
}

/// Log-linear bucket of a latency in ns: values below 8 map to themselves, above to
/// (power of two, top 3 bits after the leading one).
#[inline(always)]
fn bucket(v: u64) -> u32 {
    if v < 8 {
        return v as u32;
    }
    let e = 63 - v.leading_zeros();
    let sub = ((v >> (e - HIST_SUB_BITS)) & 7) as u32;
    ((e << HIST_SUB_BITS) | sub) & (HIST_BUCKETS - 1)
}

#[inline(always)]
fn sink(ctx: &XdpContext) -> Option<u32> {
    let cfg = SINK_CFG.get(0)?;
    let h = at(ctx, 0, UDP_PAYLOAD)?;
    // SAFETY: `h` covers the Ethernet, IPv4 and UDP headers.
    let (ether, vihl, proto, dport) = unsafe {
        (
            rd16(h.add(12)),
            *h.add(IP_OFF),
            *h.add(IP_OFF + 9),
            u16::from_be(rd16(h.add(UDP_OFF + 2))),
        )
    };
    if ether != 0x0800u16.to_be()
        || vihl != 0x45
        || proto != 17
        || dport < cfg.port_lo
        || dport > cfg.port_hi
    {
        return None;
    }
    let app = if cfg.channel_data == 0 {
        // SAFETY: `at` checked UDP_PAYLOAD + APP_MIN bytes from the start.
        unsafe { at(ctx, 0, UDP_PAYLOAD + APP_MIN)?.add(UDP_PAYLOAD) }
    } else {
        let h = at(ctx, 0, UDP_PAYLOAD + 4 + APP_MIN)?;
        // SAFETY: as above, for UDP_PAYLOAD + 4 + APP_MIN bytes. Channel numbers start
        // with the bits 01 (RFC 8656, section 12); STUN messages with 00.
        unsafe {
            if *h.add(UDP_PAYLOAD) & 0xc0 != 0x40 {
                return None;
            }
            h.add(UDP_PAYLOAD + 4)
        }
    };
    // SAFETY: `app` covers APP_MIN bytes (checked above).
    unsafe {
        let magic = u32::from_le(core::ptr::read_unaligned(app.add(APP_MAGIC).cast::<u32>()));
        if magic != MAGIC {
            bump(SINK_BAD, 1);
            return Some(xdp_action::XDP_DROP);
        }
        let sent = u64::from_le(core::ptr::read_unaligned(app.add(APP_TIME).cast::<u64>()));
        let now = bpf_ktime_get_ns();
        let b = bucket(now.saturating_sub(sent));
        if let Some(p) = SINK_HIST_MAP.get_ptr_mut(b) {
            *p += 1;
        }
    }
    bump(SINK_PACKETS, 1);
    bump(SINK_BYTES, (ctx.data_end() - ctx.data()) as u64);
    Some(xdp_action::XDP_DROP)
}

/// The floors' Ethernet and IPv4 rewrite in the header copy `hdr`: MACs, total length
/// `tot_len`, TTL 64, the configured addresses and a fresh header checksum.
#[inline(always)]
fn rewrite_eth_ip(hdr: &mut [u8; UDP_PAYLOAD + 4], cfg: &FloorConfig, tot_len: u16) {
    hdr[0..6].copy_from_slice(&cfg.dst_mac);
    hdr[6..12].copy_from_slice(&cfg.src_mac);
    let tot = tot_len.to_be_bytes();
    hdr[IP_OFF + 2] = tot[0];
    hdr[IP_OFF + 3] = tot[1];
    hdr[IP_OFF + 8] = 64;
    hdr[IP_OFF + 10] = 0;
    hdr[IP_OFF + 11] = 0;
    hdr[IP_OFF + 12..IP_OFF + 16].copy_from_slice(&cfg.src_ip);
    hdr[IP_OFF + 16..IP_OFF + 20].copy_from_slice(&cfg.dst_ip);
    let mut ips: u64 = 0;
    let mut i = IP_OFF;
    while i < UDP_OFF {
        ips += u64::from(u16::from_ne_bytes([hdr[i], hdr[i + 1]]));
        i += 2;
    }
    let ipc = (!fold(ips)).to_ne_bytes();
    hdr[IP_OFF + 10] = ipc[0];
    hdr[IP_OFF + 11] = ipc[1];
}

#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    floor(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn floor(ctx: &XdpContext) -> Option<u32> {
    let cfg = FLOOR_CFG.get(0)?;
    let h = at(ctx, 0, UDP_PAYLOAD + 4)?;
    let mut hdr = [0u8; UDP_PAYLOAD + 4];
    // SAFETY: `h` covers UDP_PAYLOAD + 4 bytes; `hdr` is a local of that size.
    unsafe { core::ptr::copy_nonoverlapping(h, hdr.as_mut_ptr(), UDP_PAYLOAD + 4) };
    let w = |off: usize| u16::from_ne_bytes([hdr[off], hdr[off + 1]]);
    if w(12) != 0x0800u16.to_be()
        || hdr[IP_OFF] != 0x45
        || hdr[IP_OFF + 9] != 17
        || w(IP_OFF + 6) & 0x3fffu16.to_be() != 0
        || w(UDP_OFF + 2) != cfg.listen_port.to_be()
    {
        return None;
    }
    let channel = u16::from_be(w(UDP_PAYLOAD));
    let clen = u16::from_be(w(UDP_PAYLOAD + 2));
    let udp_len = u16::from_be(w(UDP_OFF + 4));
    // Channel numbers 0x4000..=0x4FFF; exactly the data, no padding (the floor does not
    // trim tails: padded frames pass).
    if !(0x4000..=0x4fff).contains(&channel) || u32::from(clen) + 12 != u32::from(udp_len) {
        return None;
    }
    let tot_len = u16::from_be(w(IP_OFF + 2));
    let new_udp_len = (udp_len - 4).to_be();
    let old_csum = w(UDP_OFF + 6);
    // Native-order words throughout (the sum does not depend on the byte order).
    let ip = |b: [u8; 4], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let c = relayed_udp_checksum(
        old_csum,
        [
            w(IP_OFF + 12),
            w(IP_OFF + 14),
            w(IP_OFF + 16),
            w(IP_OFF + 18),
            w(UDP_OFF + 2),
            w(UDP_OFF + 4),
            w(UDP_OFF + 4),
            w(UDP_PAYLOAD),
            w(UDP_PAYLOAD + 2),
        ],
        [
            ip(cfg.src_ip, 0),
            ip(cfg.src_ip, 2),
            ip(cfg.dst_ip, 0),
            ip(cfg.dst_ip, 2),
            cfg.sink_port.to_be(),
            new_udp_len,
            new_udp_len,
        ],
    );
    // New headers, written 4 bytes further on, then the head moves by 4.
    rewrite_eth_ip(&mut hdr, cfg, tot_len - 4);
    let dp = cfg.sink_port.to_be_bytes();
    hdr[UDP_OFF + 2] = dp[0];
    hdr[UDP_OFF + 3] = dp[1];
    let ul = new_udp_len.to_ne_bytes();
    hdr[UDP_OFF + 4] = ul[0];
    hdr[UDP_OFF + 5] = ul[1];
    let cb = c.to_ne_bytes();
    hdr[UDP_OFF + 6] = cb[0];
    hdr[UDP_OFF + 7] = cb[1];
    // SAFETY: `h` covers UDP_PAYLOAD + 4 bytes, so [h + 4, h + 4 + UDP_PAYLOAD) is inside.
    unsafe { core::ptr::copy_nonoverlapping(hdr.as_ptr(), h.add(4), UDP_PAYLOAD) };
    // SAFETY: the context pointer is the program's own.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) } != 0 {
        return Some(xdp_action::XDP_ABORTED);
    }
    // SAFETY: `bpf_redirect` only records the target for after the program returns.
    Some(unsafe { bpf_redirect(cfg.out_ifindex, 0) } as u32)
}

#[xdp]
pub fn bench_floor_rev(ctx: XdpContext) -> u32 {
    floor_rev(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// The least a relay does for UDP from a peer on a channel: add the ChannelData header
/// (channel 0x4000, no padding: the floor does not pad), rewrite MACs, addresses, ports,
/// lengths and checksums, redirect to the client side. No rule lookup: every frame goes
/// to one client port ([`FloorConfig::sink_port`]).
#[inline(always)]
fn floor_rev(ctx: &XdpContext) -> Option<u32> {
    let cfg = FLOOR_CFG.get(0)?;
    let h = at(ctx, 0, UDP_PAYLOAD)?;
    let mut hdr = [0u8; UDP_PAYLOAD + 4];
    // SAFETY: `h` covers UDP_PAYLOAD bytes; `hdr` is a local longer than that.
    unsafe { core::ptr::copy_nonoverlapping(h, hdr.as_mut_ptr(), UDP_PAYLOAD) };
    let w = |off: usize| u16::from_ne_bytes([hdr[off], hdr[off + 1]]);
    let udp_len = u16::from_be(w(UDP_OFF + 4));
    let tot_len = u16::from_be(w(IP_OFF + 2));
    if w(12) != 0x0800u16.to_be()
        || hdr[IP_OFF] != 0x45
        || hdr[IP_OFF + 9] != 17
        || w(IP_OFF + 6) & 0x3fffu16.to_be() != 0
        || w(UDP_OFF) != cfg.peer_port.to_be()
        || udp_len < 8
        || u32::from(udp_len) + 20 != u32::from(tot_len)
        || tot_len > 1500 - 4
    {
        return None;
    }
    let new_udp_len = (udp_len + 4).to_be();
    let chan = 0x4000u16.to_be();
    let clen = (udp_len - 8).to_be();
    let ip = |b: [u8; 4], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let c = relayed_udp_checksum(
        w(UDP_OFF + 6),
        [
            w(IP_OFF + 12),
            w(IP_OFF + 14),
            w(IP_OFF + 16),
            w(IP_OFF + 18),
            w(UDP_OFF),
            w(UDP_OFF + 2),
            w(UDP_OFF + 4),
            w(UDP_OFF + 4),
        ],
        [
            ip(cfg.src_ip, 0),
            ip(cfg.src_ip, 2),
            ip(cfg.dst_ip, 0),
            ip(cfg.dst_ip, 2),
            cfg.listen_port.to_be(),
            cfg.sink_port.to_be(),
            new_udp_len,
            new_udp_len,
            chan,
            clen,
        ],
    );
    rewrite_eth_ip(&mut hdr, cfg, tot_len + 4);
    hdr[UDP_OFF..UDP_OFF + 2].copy_from_slice(&cfg.listen_port.to_be_bytes());
    hdr[UDP_OFF + 2..UDP_OFF + 4].copy_from_slice(&cfg.sink_port.to_be_bytes());
    hdr[UDP_OFF + 4..UDP_OFF + 6].copy_from_slice(&new_udp_len.to_ne_bytes());
    hdr[UDP_OFF + 6..UDP_OFF + 8].copy_from_slice(&c.to_ne_bytes());
    hdr[UDP_PAYLOAD..UDP_PAYLOAD + 2].copy_from_slice(&chan.to_ne_bytes());
    hdr[UDP_PAYLOAD + 2..UDP_PAYLOAD + 4].copy_from_slice(&clen.to_ne_bytes());
    // SAFETY: the context pointer is the program's own.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -4) } != 0 {
        return None;
    }
    // The frame grew by 4 bytes, so this holds; were it not, the head is now garbage.
    let Some(h) = at(ctx, 0, UDP_PAYLOAD + 4) else {
        return Some(xdp_action::XDP_ABORTED);
    };
    // SAFETY: `h` covers UDP_PAYLOAD + 4 bytes of the moved head; `hdr` is that long.
    unsafe { core::ptr::copy_nonoverlapping(hdr.as_ptr(), h, UDP_PAYLOAD + 4) };
    // SAFETY: `bpf_redirect` only records the target for after the program returns.
    Some(unsafe { bpf_redirect(cfg.out_ifindex, 0) } as u32)
}

#[xdp]
pub fn bench_xsk(ctx: XdpContext) -> u32 {
    to_xsk(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn to_xsk(ctx: &XdpContext) -> Option<u32> {
    let cfg = FLOOR_CFG.get(0)?;
    let h = at(ctx, 0, UDP_PAYLOAD)?;
    // SAFETY: `h` covers UDP_PAYLOAD bytes, past every offset read here.
    let (ether, vihl, proto, dport) = unsafe {
        (
            rd16(h.add(12)),
            *h.add(IP_OFF),
            *h.add(IP_OFF + 9),
            rd16(h.add(UDP_OFF + 2)),
        )
    };
    if ether != 0x0800u16.to_be() || vihl != 0x45 || proto != 17 || dport != cfg.listen_port.to_be()
    {
        return None;
    }
    // SAFETY: the context pointer is the program's own.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    Some(
        XSKS_MAP
            .redirect(queue, u64::from(xdp_action::XDP_PASS))
            .unwrap_or(xdp_action::XDP_PASS),
    )
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
