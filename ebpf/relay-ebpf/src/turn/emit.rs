//! The rewrite of a frame whose rule was found: next hop, bandwidth budget, checksum,
//! resize, new headers, counters.
//!
//! Frame rules (the same as `relay/src/xdp/turn_frames.rs`, byte for byte): Ethernet MACs
//! from `bpf_fib_lookup` (or its result cached in `TURN_NEXT_HOPS` and this CPU's
//! `TURN_HOP_SLOTS` slot of the rule for `next_hop_ttl_ms`); IPv4 `0x45`, TOS copied, ID
//! and DF per the input (see `turn_frames.rs`), TTL 64, UDP, header checksum; IPv6
//! traffic class copied, flow label 0, hop limit 64; UDP checksum updated incrementally
//! from the incoming one (RFC 1624), so it is exact when that one was. Both families and
//! the cross-family cases are handled: the whole header is rebuilt.
//!
//! Everything is word-wide ([`super::words`]): the checksum update is summed in
//! registers from the words that leave and enter the datagram, and the new headers are
//! written straight into the packet once it has its final size.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_redirect, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use relay_common::{
    counter::{
        TURN_BANDWIDTH_DROPPED, TURN_FIB_PASSED, TURN_PEER_TO_CHANNEL,
        TURN_PEER_TO_DATA_INDICATION, TURN_UNHANDLED_PASSED,
    },
    turn::{BANDWIDTH_WINDOW_NS, Bandwidth, HOP_SLOTS, NextHop, NextHopKey},
};

use super::{
    Hop, Out, TURN_BANDWIDTH, TURN_EGRESS, TURN_HOP_SLOTS, TURN_NEXT_HOPS, TURN_RULE_STATS, Work,
    pkt::{ETH, Pkt},
    words::{
        Addr, MAGIC_W, addr_neg, addr_sum, be, fold, packet_ptr, rd_addr, rd16, rd32, same,
        wr_addr, wr16, wr32,
    },
};
use crate::counters;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Where the frame goes: egress interface and MACs (memory-order words).
struct NextHopWords {
    ifindex: u32,
    dmac_lo: u32,
    dmac_hi: u16,
    smac_lo: u16,
    smac_hi: u32,
}

/// Relays the frame per `o` (all checks done): next hop, budget, counters, rewrite.
#[inline(never)]
pub fn emit(ctx: &XdpContext, work: *mut Work) -> Result<u32, Option<u32>> {
    // SAFETY: this CPU's scratch entry (see `relay_packed`); disjoint fields.
    let (p, o, hop, fib, key, value) = unsafe {
        (
            &(*work).pkt,
            &(*work).out,
            &(*work).hop,
            &mut (*work).fib,
            &mut (*work).key,
            &mut (*work).hop_value,
        )
    };
    let ip_hlen = if o.v6 { 40 } else { 20 };
    let ulen = 8 + o.extra + o.payload_len + o.out_pad;
    let ip_total = ip_hlen + ulen;
    let new_hdr = ETH + ip_hlen + 8 + o.extra;
    if ip_total > 0xffff {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    // The rule's counters are read here and written at the end: with many rules the
    // entry (and the per-CPU pointer to it) is a cache miss, which the rest of the
    // rewrite then hides instead of waiting for it at the end. Only this CPU writes its
    // entry and XDP is not preempted, so the read stays current (userspace only zeroes an
    // index before reusing it, when no rule points at it any more).
    let stats = TURN_RULE_STATS.get_ptr_mut(o.stats_idx);
    let counted = match stats {
        // SAFETY: this CPU's entry (see above); volatile so that the loads are issued
        // here, not sunk to their use.
        Some(st) => unsafe {
            (
                core::ptr::read_volatile(&(*st).packets),
                core::ptr::read_volatile(&(*st).bytes),
            )
        },
        None => (0, 0),
    };
    let nh = next_hop(ctx, p, o, hop, ip_total, fib, key, value)?;
    let sum = checksum(ctx, p, o, ulen)?;

    // Bandwidth budget (payload bytes, both directions), then the rule's counters.
    if let Some(bw) = TURN_BANDWIDTH.get_ptr_mut(o.alloc_idx) {
        // SAFETY: a valid pointer into the shared array entry. Races between CPUs are
        // benign: a window reset may lose a concurrent add (the budget errs generous),
        // and the byte count is added atomically.
        if unsafe { over_budget(bw, o.payload_len as u64, hop.now) } {
            counters::bump(TURN_BANDWIDTH_DROPPED);
            return Ok(xdp_action::XDP_DROP);
        }
    }

    // Resize: head to the new header length, tail to the new end (padding/Ethernet
    // padding dropped, Data indication padding added). Undo on failure.
    let head_delta = o.payload_off as i32 - new_hdr as i32;
    let old_end = o.payload_off + o.payload_len;
    let tail_delta = (old_end + o.out_pad) as i32 - p.frame_len as i32;
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, head_delta) } != 0 {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    if tail_delta != 0 {
        // SAFETY: as above.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, tail_delta) } != 0 {
            // SAFETY: as above; restores the original start (bytes untouched so far).
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, -head_delta) } != 0 {
                return Ok(xdp_action::XDP_ABORTED);
            }
            return Err(Some(TURN_UNHANDLED_PASSED));
        }
    }
    // The packet was resized: from here on it cannot be passed up unchanged any more.
    let written = if o.v6 {
        write_family::<true>(ctx, p, o, &nh, ulen, ip_total, sum)
    } else {
        write_family::<false>(ctx, p, o, &nh, ulen, ip_total, sum)
    };
    if !written {
        return Ok(xdp_action::XDP_ABORTED);
    }
    if o.out_pad > 0 && !zero_pad(ctx, new_hdr + o.payload_len + o.out_pad, o.out_pad) {
        return Ok(xdp_action::XDP_ABORTED);
    }

    if let Some(st) = stats {
        // SAFETY: this CPU's entry, read above.
        unsafe {
            (*st).packets = counted.0 + 1;
            (*st).bytes = counted.1 + o.payload_len as u64;
        }
    }
    counters::bump(o.counter);
    if nh.ifindex == ctx.ingress_ifindex() as u32 {
        Ok(xdp_action::XDP_TX)
    } else {
        // SAFETY: plain helper call.
        Ok(unsafe { bpf_redirect(nh.ifindex, 0) } as u32)
    }
}

/// The next hop: from this CPU's `TURN_HOP_SLOTS` slot of the rule, else from
/// `TURN_NEXT_HOPS`, while the entry is fresh; else from `bpf_fib_lookup` (also the MTU
/// check), stored in both on success. The kernel answers FWD_DISABLED unless forwarding
/// is on for the lookup's interface (checked on 6.18, with and without
/// BPF_FIB_LOOKUP_OUTPUT): the daemon turns it on for `fib_ifindex` only (`lo` by
/// default), else everything passes up counted as TURN_FIB_PASSED; so does a hop out of
/// an interface not in `TURN_EGRESS` (with `SETTING_EGRESS_CHECKED`).
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    p: &Pkt,
    o: &Out,
    hop: &Hop,
    ip_total: usize,
    fib: &mut bpf_fib_lookup,
    key: &mut [u32; 10],
    value: &mut [u64; 4],
) -> Result<NextHopWords, Option<u32>> {
    let slot = if hop.ttl_ms != 0 {
        TURN_HOP_SLOTS.get_ptr_mut(o.stats_idx & (HOP_SLOTS - 1))
    } else {
        None
    };
    if let Some(s) = slot {
        let a = s as usize;
        // SAFETY: `s` points at this CPU's slot (a HopSlot: the key's two addresses at 0
        // and 16, a NextHop at 32), which only this CPU writes.
        let (dst, src) = unsafe { (rd_addr(a), rd_addr(a + 16)) };
        if same(&dst, &o.dst) && same(&src, &o.src) {
            // SAFETY: as above.
            let (expires, mtu, nh) = unsafe { read_hop(a + 32) };
            if expires > hop.now {
                return fits(nh, mtu, ip_total);
            }
        }
    }
    *key = [
        o.dst[0], o.dst[1], o.dst[2], o.dst[3], o.src[0], o.src[1], o.src[2], o.src[3], 0, 0,
    ];
    // SAFETY: `key` has the size and layout of a NextHopKey (destination, source).
    let key = unsafe { &*(key.as_ptr() as *const NextHopKey) };
    if hop.ttl_ms != 0 {
        if let Some(h) = TURN_NEXT_HOPS.get_ptr(key) {
            let a = h as usize;
            // SAFETY: `h` points at a live NextHop value.
            let (expires, mtu, nh) = unsafe { read_hop(a) };
            if expires > hop.now {
                if let Some(s) = slot {
                    // SAFETY: `h` points at 32 readable bytes (a NextHop, 8-aligned).
                    let v = unsafe {
                        [
                            *(a as *const u64),
                            *((a + 8) as *const u64),
                            *((a + 16) as *const u64),
                            *((a + 24) as *const u64),
                        ]
                    };
                    // SAFETY: `s` is this CPU's slot (see above).
                    unsafe { fill_slot(s as usize, o, &v) };
                }
                return fits(nh, mtu, ip_total);
            }
        }
    }
    lookup(ctx, p, o, fib, ip_total, hop.fib_ifindex)?;
    // Out of an interface that may not take a redirect: the stack sends it. Checked
    // before the hop is cached, so cached hops need no check.
    let egress = fib.ifindex;
    // SAFETY: the value is only tested for presence.
    if hop.egress_checked && unsafe { TURN_EGRESS.get(&egress) }.is_none() {
        return Err(Some(TURN_FIB_PASSED));
    }
    let f = fib as *const bpf_fib_lookup as usize;
    let smac = core::mem::offset_of!(bpf_fib_lookup, smac);
    let dmac = core::mem::offset_of!(bpf_fib_lookup, dmac);
    // SAFETY: the MACs are inside the scratch entry.
    let nh = unsafe {
        NextHopWords {
            ifindex: fib.ifindex,
            smac_lo: rd16(f + smac),
            smac_hi: rd32(f + smac + 2),
            dmac_lo: rd32(f + dmac),
            dmac_hi: rd16(f + dmac + 4),
        }
    };
    if hop.ttl_ms != 0 {
        // SAFETY: on success the kernel wrote the route's MTU into the union.
        let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
        // A NextHop as four words: expires; ifindex, mtu, zero; smac, dmac[0..2];
        // dmac[2..6], zero.
        *value = [
            hop.now + hop.ttl_ms as u64 * 1_000_000,
            nh.ifindex as u64 | (mtu as u64) << 32,
            nh.smac_lo as u64 | (nh.smac_hi as u64) << 16 | (nh.dmac_lo as u64 & 0xffff) << 48,
            (nh.dmac_lo >> 16) as u64 | (nh.dmac_hi as u64) << 16,
        ];
        // SAFETY: `v` has the size and layout of a NextHop (see above).
        let v = unsafe { &*(value.as_ptr() as *const NextHop) };
        // A failed insert only costs the next frame another lookup.
        let _ = TURN_NEXT_HOPS.insert(key, v, 0);
        if let Some(s) = slot {
            // SAFETY: `s` is this CPU's slot (see above).
            unsafe { fill_slot(s as usize, o, value) };
        }
    }
    Ok(nh)
}

/// Reads a NextHop at `a`: its deadline, MTU and the words of the frame's next hop.
///
/// # Safety
/// `a` must point at a NextHop (32 bytes, 8-aligned: expires 0, ifindex 8, mtu 12, smac
/// 16, dmac 22).
#[inline(always)]
unsafe fn read_hop(a: usize) -> (u64, u16, NextHopWords) {
    // SAFETY: forwarded from the contract.
    unsafe {
        (
            *(a as *const u64),
            rd16(a + 12),
            NextHopWords {
                ifindex: rd32(a + 8),
                smac_lo: rd16(a + 16),
                smac_hi: rd32(a + 18),
                dmac_lo: rd32(a + 22),
                dmac_hi: rd16(a + 26),
            },
        )
    }
}

/// A fresh cached hop, unless the frame is larger than its route's MTU.
#[inline(always)]
fn fits(nh: NextHopWords, mtu: u16, ip_total: usize) -> Result<NextHopWords, Option<u32>> {
    if ip_total > mtu as usize {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    Ok(nh)
}

/// Stores the frame's key and a NextHop (as four words) in a `TURN_HOP_SLOTS` slot.
///
/// # Safety
/// `s` must point at this CPU's slot (a HopSlot, 64 bytes, 64-aligned).
#[inline(always)]
unsafe fn fill_slot(s: usize, o: &Out, v: &[u64; 4]) {
    // SAFETY: forwarded from the contract; the key goes first so that a reader on this CPU
    // (the only one) never runs between the writes anyway: XDP is not preempted.
    unsafe {
        wr_addr(s, &o.dst);
        wr_addr(s + 16, &o.src);
        *((s + 32) as *mut u64) = v[0];
        *((s + 40) as *mut u64) = v[1];
        *((s + 48) as *mut u64) = v[2];
        *((s + 56) as *mut u64) = v[3];
    }
}

/// The UDP checksum sum of the output (before the final complement): the incoming
/// checksum, minus the words that leave the datagram (old pseudo-header and UDP header,
/// the removed prefix and padding), plus the words that enter it (new pseudo-header and
/// UDP header, the ChannelData header; the Data indication's prefix is added by
/// [`write_family`], which builds it).
#[inline(always)]
fn checksum(ctx: &XdpContext, p: &Pkt, o: &Out, ulen: usize) -> Result<u64, Option<u32>> {
    let old_len = u32::from_ne_bytes([0, 17, (p.ulen >> 8) as u8, p.ulen as u8]);
    let new_len = u32::from_ne_bytes([0, 17, (ulen >> 8) as u8, ulen as u8]);
    let old_ulen = be(p.ulen as u16) as u32;
    let new_ulen = be(ulen as u16) as u32;
    let mut s = (!p.csum) as u64;
    s += addr_neg(&p.src, p.v6) + addr_neg(&p.dst, p.v6);
    s += (!old_len) as u64 + (!p.ports) as u64 + (!old_ulen) as u64;
    s += addr_sum(&o.src, o.v6) + addr_sum(&o.dst, o.v6);
    s += new_len as u64 + o.ports as u64 + new_ulen as u64;
    // The removed prefix: a multiple of 4 bytes, so the payload keeps its lane.
    s += fold_neg(o.prefix_sum);
    if o.in_pad > 0 {
        // The removed padding: the last `in_pad` bytes of the word that ends it. That
        // word lies inside the payload and padding (their length is a positive multiple
        // of 4: `from_client` passes other padding up) and starts at an even offset of
        // the datagram, so its bytes keep their checksum lanes and the masked word is the
        // term to remove.
        let at = o.payload_off + o.payload_len + o.in_pad - 4;
        let w = word_at(ctx, at).ok_or(Some(TURN_UNHANDLED_PASSED))?;
        s += (!(w & top_bytes(o.in_pad))) as u64;
    }
    if o.counter == TURN_PEER_TO_CHANNEL {
        s += channel_header(o) as u64;
    }
    Ok(s)
}

/// The ones' complement negation of a sum (as a 16-bit term).
#[inline(always)]
fn fold_neg(sum: u64) -> u64 {
    (!fold(sum)) as u64
}

/// The ChannelData header of the output: channel then length.
#[inline(always)]
fn channel_header(o: &Out) -> u32 {
    o.channel as u32 | (be(o.payload_len as u16) as u32) << 16
}

/// Writes Ethernet, IP, UDP and the prefix (family `V6` of the output) into the resized
/// packet; false if the packet is not as large as computed (cannot happen after a
/// successful resize).
#[inline(always)]
fn write_family<const V6: bool>(
    ctx: &XdpContext,
    p: &Pkt,
    o: &Out,
    nh: &NextHopWords,
    ulen: usize,
    ip_total: usize,
    sum: u64,
) -> bool {
    let l4 = if V6 { ETH + 40 } else { ETH + 20 };
    let f = ctx.data();
    let end = ctx.data_end();
    if f + l4 + 8 > end {
        return false;
    }
    let ulen_w = be(ulen as u16);
    let mut sum = sum;
    // SAFETY: every write below is inside the first `l4 + 8` bytes, checked above.
    unsafe {
        wr32(f, nh.dmac_lo);
        wr16(f + 4, nh.dmac_hi);
        wr16(f + 6, nh.smac_lo);
        wr32(f + 8, nh.smac_hi);
        let ip = f + ETH;
        if V6 {
            wr16(f + 12, u16::from_ne_bytes([0x86, 0xDD]));
            wr32(
                ip,
                u32::from_ne_bytes([0x60 | (p.tos >> 4), p.tos << 4, 0, 0]),
            );
            wr32(ip + 4, ulen_w as u32 | u32::from_ne_bytes([0, 0, 17, 64]));
            wr_addr(ip + 8, &o.src);
            wr_addr(ip + 24, &o.dst);
        } else {
            wr16(f + 12, u16::from_ne_bytes([0x08, 0x00]));
            let w0 = u32::from_ne_bytes([0x45, p.tos, 0, 0]) | (be(ip_total as u16) as u32) << 16;
            // DF per `o.df`: copied from an IPv4 input (RFC 8656 §14 preferred
            // behaviour), 0 from an IPv6 input (alternate behaviour); for a Send
            // indication, set iff it carries DONT-FRAGMENT.
            let df = if o.df { 0x40u32 } else { 0 };
            let w1 = p.ipid as u32 | df << 16;
            let w2 = u32::from_ne_bytes([64, 17, 0, 0]);
            let hs = w0 as u64 + w1 as u64 + w2 as u64 + o.src[3] as u64 + o.dst[3] as u64;
            wr32(ip, w0);
            wr32(ip + 4, w1);
            wr32(ip + 8, w2 | ((!fold(hs)) as u32) << 16);
            wr32(ip + 12, o.src[3]);
            wr32(ip + 16, o.dst[3]);
        }
    }
    let u = f + l4;
    if o.counter == TURN_PEER_TO_CHANNEL {
        if u + 12 > end {
            return false;
        }
        // SAFETY: checked above.
        unsafe { wr32(u + 8, channel_header(o)) };
    } else if o.counter == TURN_PEER_TO_DATA_INDICATION {
        let s = if p.v6 {
            data_indication::<true>(u + 8, end, p, o)
        } else {
            data_indication::<false>(u + 8, end, p, o)
        };
        match s {
            Some(s) => sum += s,
            None => return false,
        }
    }
    let c = !fold(sum);
    let c = if c == 0 { 0xffff } else { c };
    // SAFETY: inside the first `l4 + 8` bytes, checked above.
    unsafe {
        wr32(u, o.ports);
        wr32(u + 4, ulen_w as u32 | (c as u32) << 16);
    }
    true
}

/// Writes the Data indication's header, XOR-PEER-ADDRESS of the peer (the packet's
/// source; `PEER_V6` its family) and DATA header at `d`; returns the sum of the words
/// written (they enter the datagram).
#[inline(always)]
fn data_indication<const PEER_V6: bool>(d: usize, end: usize, p: &Pkt, o: &Out) -> Option<u64> {
    let xor: usize = if PEER_V6 { 24 } else { 12 };
    if d + 20 + xor + 4 > end {
        return None;
    }
    let msg_len = xor + 4 + o.payload_len + o.out_pad;
    // SAFETY: plain helper calls.
    let t = unsafe {
        [
            bpf_get_prandom_u32(),
            bpf_get_prandom_u32(),
            bpf_get_prandom_u32(),
        ]
    };
    let w0 = u32::from_ne_bytes([0x00, 0x17, 0, 0]) | (be(msg_len as u16) as u32) << 16;
    let a0 = u32::from_ne_bytes([0x00, 0x12, 0, (xor - 4) as u8]);
    let a1 = u32::from_ne_bytes([0, if PEER_V6 { 2 } else { 1 }, 0, 0])
        | ((p.sport() ^ MAGIC_W as u16) as u32) << 16;
    let dh = u32::from_ne_bytes([0x00, 0x13, 0, 0]) | (be(o.payload_len as u16) as u32) << 16;
    let mut s = w0 as u64 + MAGIC_W as u64 + t[0] as u64 + t[1] as u64 + t[2] as u64;
    s += a0 as u64 + a1 as u64 + dh as u64;
    // SAFETY: `20 + xor + 4` bytes from `d` are inside the packet (checked above).
    unsafe {
        wr32(d, w0);
        wr32(d + 4, MAGIC_W);
        wr32(d + 8, t[0]);
        wr32(d + 12, t[1]);
        wr32(d + 16, t[2]);
        wr32(d + 20, a0);
        wr32(d + 24, a1);
        if PEER_V6 {
            let x: Addr = [
                p.src[0] ^ MAGIC_W,
                p.src[1] ^ t[0],
                p.src[2] ^ t[1],
                p.src[3] ^ t[2],
            ];
            wr_addr(d + 28, &x);
            s += x[0] as u64 + x[1] as u64 + x[2] as u64 + x[3] as u64;
        } else {
            let x = p.src[3] ^ MAGIC_W;
            wr32(d + 28, x);
            s += x as u64;
        }
        wr32(d + 20 + xor, dh);
    }
    Some(s)
}

/// Zeroes the `n` (1–3) Data indication padding bytes that end at `end` (a multiple of 4
/// bytes after the payload's start, which is at least 4 bytes before it).
#[inline(always)]
fn zero_pad(ctx: &XdpContext, end: usize, n: usize) -> bool {
    let Some(p) = packet_ptr::<4>(ctx, end - 4) else {
        return false;
    };
    // SAFETY: `packet_ptr` checked the 4 bytes.
    unsafe { wr32(p, rd32(p) & !top_bytes(n)) };
    true
}

/// The word at packet offset `at`, if the packet is long enough.
#[inline(always)]
fn word_at(ctx: &XdpContext, at: usize) -> Option<u32> {
    // SAFETY: `packet_ptr` checked the 4 bytes.
    packet_ptr::<4>(ctx, at).map(|p| unsafe { rd32(p) })
}

/// The mask of the last `n` (1–3) bytes of a memory-order word.
#[inline(always)]
fn top_bytes(n: usize) -> u32 {
    u32::MAX << (8 * ((4 - n) & 3))
}

/// Charges `bytes` to the allocation's fixed window; true when over budget (then the
/// entry's `dropped` is incremented too).
///
/// # Safety
/// `bw` must point at a live `TURN_BANDWIDTH` entry.
#[inline(always)]
unsafe fn over_budget(bw: *mut Bandwidth, bytes: u64, now: u64) -> bool {
    // The stable atomics need compare-and-swap, which BPF lacks; the intrinsic lowers to
    // the BPF atomic add.
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: forwarded from the contract; the map value is 8-byte aligned.
    unsafe {
        let rate = core::ptr::read_volatile(&(*bw).rate);
        if rate == 0 {
            return false;
        }
        let start = core::ptr::read_volatile(&(*bw).window_start_ns);
        if now.wrapping_sub(start) >= BANDWIDTH_WINDOW_NS {
            core::ptr::write_volatile(&mut (*bw).window_start_ns, now);
            core::ptr::write_volatile(&mut (*bw).window_bytes, 0);
        }
        let budget = rate / (1_000_000_000 / BANDWIDTH_WINDOW_NS);
        let used = core::ptr::read_volatile(&(*bw).window_bytes);
        if used + bytes > budget {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*bw).dropped, 1);
            return true;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*bw).window_bytes, bytes);
        false
    }
}

/// `bpf_fib_lookup` for the frame to send per `o`: `fib` filled on success.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    p: &Pkt,
    o: &Out,
    fib: &mut bpf_fib_lookup,
    ip_total: usize,
    fib_ifindex: u32,
) -> Result<(), Option<u32>> {
    // Zeroed a word at a time (a struct assignment would call a byte-loop memset).
    const WORDS: usize = core::mem::size_of::<bpf_fib_lookup>() / 8;
    const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>() == 64);
    let w = fib as *mut bpf_fib_lookup as *mut u64;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: `w` points at the 64-byte, 8-aligned scratch entry. Volatile: LLVM
        // would turn plain stores back into a memset call.
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
    fib.l4_protocol = 17;
    fib.sport = o.ports as u16;
    fib.dport = (o.ports >> 16) as u16;
    fib.__bindgen_anon_1.tot_len = ip_total as u16;
    fib.ifindex = if fib_ifindex != 0 {
        fib_ifindex
    } else {
        ctx.ingress_ifindex() as u32
    };
    if o.v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = o.src;
        fib.__bindgen_anon_4.ipv6_dst = o.dst;
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = p.tos;
        fib.__bindgen_anon_3.ipv4_src = o.src[3];
        fib.__bindgen_anon_4.ipv4_dst = o.dst[3];
    }
    // SAFETY: `fib` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            fib as *mut bpf_fib_lookup,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Some(TURN_FIB_PASSED));
    }
    Ok(())
}
