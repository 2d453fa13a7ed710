//! TURN relaying in the kernel (issue 4), driven only by the rule maps of the contract
//! (`relay_common::turn`) that the daemon's control plane writes.
//!
//! - ChannelData from a client with a live `TURN_CHANNELS` rule → a UDP datagram from the
//!   relayed address to the peer (header and padding stripped).
//! - UDP from a peer to a relayed port with a live `TURN_PEERS` rule → ChannelData to the
//!   client (exact peer port, `channel != 0`), or a Data indication built here (the
//!   permission entry, `peer_port == 0`) when `SETTING_DATA_INDICATIONS` is on.
//! - Send indications from a client with a live `TURN_ALLOCS` rule and a permission
//!   entry for the XOR-PEER-ADDRESS → the DATA as UDP from the relayed address, when
//!   `SETTING_SEND_INDICATIONS` is on and the message has exactly the plain shape
//!   (XOR-PEER-ADDRESS, DATA, padding): fixed offsets, no attribute loop. Any other
//!   shape (FINGERPRINT, DONT-FRAGMENT, other attributes) passes up.
//!
//! Frame rules (the same as `relay/src/xdp/turn_frames.rs`, byte for byte): Ethernet MACs
//! from `bpf_fib_lookup` (or its result cached in `TURN_NEXT_HOPS` for
//! `next_hop_ttl_ms`); IPv4 `0x45`, TOS copied, ID and DF per the input (see
//! `turn_frames.rs`), TTL 64, UDP, header checksum;
//! IPv6 traffic class copied, flow label 0, hop limit 64; UDP checksum updated
//! incrementally from the incoming one (RFC 1624), so it is exact when that one was.
//! Both families and the cross-family cases are handled: the whole header is rebuilt.
//!
//! Every check happens before the packet is touched: whatever passes up is unchanged.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action,
    },
    helpers::generated::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns,
        bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use relay_common::{
    counter::{
        TURN_BANDWIDTH_DROPPED, TURN_CHANNEL_TO_PEER, TURN_FIB_PASSED, TURN_NO_RULE_PASSED,
        TURN_PEER_TO_CHANNEL, TURN_PEER_TO_DATA_INDICATION, TURN_SEND_TO_PEER,
        TURN_UNHANDLED_PASSED,
    },
    turn::{
        AllocKey, AllocRule, BANDWIDTH_WINDOW_NS, Bandwidth, ChannelKey, ChannelRule,
        MAX_ALLOCATIONS, MAX_MAP_ENTRIES, MAX_NEXT_HOPS, MAX_RULES, NextHop, NextHopKey, PeerKey,
        PeerRule, RuleStats, SETTING_DATA_INDICATIONS, SETTING_ENABLED, SETTING_SEND_INDICATIONS,
        TurnSettings,
    },
};

use crate::{counters, csum, parse::bytes_at};

// The contract's maps. Declared without `pinned(...)` on purpose: aya's loader pins
// ByName maps under /sys/fs/bpf at EVERY load (test runs included), which would make
// every loaded copy share one set of rules. Userspace pins them by name where it wants
// with `EbpfLoader::map_pin_path(NAME, dir/NAME)` (reuses an existing pin: adoption).
#[map(name = "TURN_CHANNELS")]
static TURN_CHANNELS: HashMap<ChannelKey, ChannelRule> =
    HashMap::with_max_entries(MAX_MAP_ENTRIES, 0);
#[map(name = "TURN_PEERS")]
static TURN_PEERS: HashMap<PeerKey, PeerRule> = HashMap::with_max_entries(MAX_MAP_ENTRIES, 0);
#[map(name = "TURN_ALLOCS")]
static TURN_ALLOCS: HashMap<AllocKey, AllocRule> = HashMap::with_max_entries(MAX_MAP_ENTRIES, 0);
#[map(name = "TURN_RULE_STATS")]
static TURN_RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map(name = "TURN_BANDWIDTH")]
static TURN_BANDWIDTH: Array<Bandwidth> = Array::with_max_entries(MAX_ALLOCATIONS, 0);
#[map(name = "TURN_SETTINGS")]
static TURN_SETTINGS: Array<TurnSettings> = Array::with_max_entries(1, 0);
/// Next hops found by `bpf_fib_lookup`, reused for `next_hop_ttl_ms` (the lookup is most
/// of a relayed frame's cost). One map shared by all CPUs: a hit only reads it, and a
/// route or neighbour change is one entry to age out, not one per CPU.
#[map(name = "TURN_NEXT_HOPS")]
static TURN_NEXT_HOPS: LruHashMap<NextHopKey, NextHop> =
    LruHashMap::with_max_entries(MAX_NEXT_HOPS, 0);

/// Per-CPU scratch memory of the TURN path (too big for the 512-byte stack).
#[map(name = "TURN_SCRATCH")]
static TURN_SCRATCH: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

const ETH: usize = 14;
const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Bytes of the header scratch area used (a power of two, for masking).
const HDR_MASK: usize = 127;
/// Checksum work buffers: pseudo-header (36) + UDP header (8) + data words (48) + pad (4).
const CS_LEN: usize = 96;
const CS_DATA: usize = 44;
const CS_PAD: usize = 92;

/// Scratch memory of the TURN path (lives in the per-CPU scratch map).
pub struct Work {
    pkt: Pkt,
    out: Out,
    pub fib: bpf_fib_lookup,
    pub hdr: [u8; HDR_MASK + 1],
    pub old: [u8; CS_LEN],
    pub new: [u8; CS_LEN],
}

/// What the incoming frame is.
struct Pkt {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    /// UDP length (header included).
    ulen: usize,
    /// TOS / traffic class.
    tos: u8,
    /// IPv4 input with DF set.
    df: bool,
    /// Identification of an IPv4 output: the input's (IPv4) or the input's UDP checksum
    /// (IPv6).
    ipid: [u8; 2],
    csum: [u8; 2],
    /// Offset of the UDP header.
    l4: usize,
    frame_len: usize,
    /// Frame is a first fragment or otherwise not relayable (found after classification).
    unusual: bool,
}

/// What to send.
struct Out {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    /// Bytes between the UDP header and the payload in the output (0, 4, 36 or 48).
    extra: usize,
    /// Offset of the payload in the input frame.
    payload_off: usize,
    payload_len: usize,
    /// Zero bytes after the payload in the output (Data indication padding).
    out_pad: usize,
    stats_idx: u32,
    alloc_idx: u32,
    /// The channel to prepend (peer → ChannelData).
    channel: [u8; 2],
    /// The counter of a relayed frame (which of the three cases).
    counter: u32,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// [`relay`]'s result, packed in one register (a BPF-to-BPF call returns one value):
/// below 0x100 an XDP action; `PASS_COUNTED | counter`; or [`NOT_TURN`].
pub const PASS_COUNTED: u32 = 0x100;
/// Not a TURN frame (or the kernel TURN path is off): the STUN path decides.
pub const NOT_TURN: u32 = 0x200;

/// Relays the frame if it is TURN traffic the kernel handles; see [`PASS_COUNTED`].
/// A separate BPF function so that its stack frame is not added to the STUN path's.
#[inline(never)]
pub fn relay_packed(ctx: &XdpContext) -> u32 {
    match relay(ctx) {
        Ok(action) => action,
        Err(Some(counter)) => PASS_COUNTED | counter,
        Err(None) => NOT_TURN,
    }
}

/// `Ok(action)`: the frame was relayed (or dropped by the bandwidth limit).
/// `Err(Some(counter))`: a TURN frame passed up unchanged. `Err(None)`: not TURN (or the
/// kernel path is off): the STUN path decides, exactly as before.
#[inline(always)]
fn relay(ctx: &XdpContext) -> Result<u32, Option<u32>> {
    let settings = TURN_SETTINGS.get(0).ok_or(None)?;
    if settings.flags & SETTING_ENABLED == 0 {
        return Err(None);
    }
    let work = TURN_SCRATCH.get_ptr_mut(0).ok_or(None)?;
    // SAFETY: this CPU's scratch entry; the two fields are disjoint and live for the
    // whole program run (XDP is not preempted on a CPU).
    let (p, o) = unsafe { (&mut (*work).pkt, &mut (*work).out) };
    parse(ctx, p)?;
    let dport = u16::from_be_bytes(p.dport);
    let payload = p.ulen - 8;
    if dport >= settings.relay_port_min && dport <= settings.relay_port_max {
        if p.unusual {
            return Err(Some(TURN_UNHANDLED_PASSED));
        }
        from_peer(p, settings.flags, payload, o)?;
    } else {
        let first = bytes_at::<1>(ctx, l4_of(p) + 8).ok_or(None)?;
        // SAFETY: `bytes_at` checked the byte.
        let b0 = unsafe { (*first)[0] };
        // ChannelData: channel numbers 0x4000–0x4FFF, or up to 0x7FFF with the legacy
        // (RFC 5766) range coturn's turnutils_uclient uses; the rule lookup decides.
        if payload >= 4 && (0x40..0x80).contains(&b0) {
            if p.unusual {
                return Err(Some(TURN_UNHANDLED_PASSED));
            }
            from_client(ctx, p, payload, o)?;
        } else if b0 == 0 && settings.flags & SETTING_SEND_INDICATIONS != 0 {
            let ty = bytes_at::<2>(ctx, l4_of(p) + 8).ok_or(None)?;
            // SAFETY: `bytes_at` checked the bytes.
            if unsafe { *ty } != [0x00, 0x16] {
                return Err(None);
            }
            if p.unusual {
                return Err(Some(TURN_UNHANDLED_PASSED));
            }
            // Its own BPF function: its keys and parse state would not fit in this
            // frame's share of the 512-byte stack.
            match from_send(ctx, p, o, work) {
                0 => {}
                c => return Err(Some(c)),
            }
        } else {
            return Err(None);
        }
    }
    emit(ctx, p, o, work)
}

/// Ethernet → IP → UDP with the checks every relayed frame needs.
#[inline(always)]
fn parse(ctx: &XdpContext, p: &mut Pkt) -> Result<(), Option<u32>> {
    let eth = bytes_at::<ETH>(ctx, 0).ok_or(None)?;
    // SAFETY: `bytes_at` checked these bytes.
    let eth = unsafe { &*eth };
    let frame_len = ctx.data_end() - ctx.data();
    p.v6 = false;
    p.src = [0; 16];
    p.dst = [0; 16];
    p.ulen = 0;
    p.frame_len = frame_len;
    p.unusual = eth[6] & 1 != 0;
    let ttl;
    match be16(eth, 12) {
        0x0800 => {
            let ipp = bytes_at::<20>(ctx, ETH).ok_or(None)?;
            // SAFETY: `bytes_at` checked these bytes.
            let ip = unsafe { &*ipp };
            let frag = be16(ip, 6);
            if ip[0] != 0x45 || ip[9] != 17 || frag & 0x1fff != 0 {
                // Options, later fragments, not UDP: the STUN path's business.
                return Err(None);
            }
            p.l4 = ETH + 20;
            p.tos = ip[1];
            p.df = frag & 0x4000 != 0;
            p.ipid = [ip[4], ip[5]];
            ttl = ip[8];
            p.src = relay_common::turn::mapped_v4([ip[12], ip[13], ip[14], ip[15]]);
            p.dst = relay_common::turn::mapped_v4([ip[16], ip[17], ip[18], ip[19]]);
            let total = be16(ip, 2) as usize;
            if frag & 0x2000 != 0 || total < 28 || ETH + total > frame_len {
                p.unusual = true;
            }
            // SAFETY: the 20 header bytes are inside the packet.
            let sum = unsafe { csum::add(ipp as *const u8, 20, 0) }.ok_or(None)?;
            if csum::fold(sum) != 0xffff {
                p.unusual = true;
            }
            let udp = bytes_at::<8>(ctx, ETH + 20).ok_or(None)?;
            // SAFETY: `bytes_at` checked these bytes.
            let udp = unsafe { &*udp };
            p.ulen = be16(udp, 4) as usize;
            if p.ulen + 20 != total {
                p.unusual = true;
            }
            p.sport = [udp[0], udp[1]];
            p.dport = [udp[2], udp[3]];
            p.csum = [udp[6], udp[7]];
            if p.csum == [0, 0] {
                // No checksum to update incrementally: userspace relays it.
                p.unusual = true;
            }
        }
        0x86DD => {
            let ip = bytes_at::<40>(ctx, ETH).ok_or(None)?;
            // SAFETY: `bytes_at` checked these bytes.
            let ip = unsafe { &*ip };
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return Err(None);
            }
            p.v6 = true;
            p.df = false;
            p.l4 = ETH + 40;
            p.tos = (ip[0] << 4) | (ip[1] >> 4);
            ttl = ip[7];
            let mut i = 0;
            while i < 16 {
                p.src[i] = ip[8 + i];
                p.dst[i] = ip[24 + i];
                i += 1;
            }
            let plen = be16(ip, 4) as usize;
            let udp = bytes_at::<8>(ctx, ETH + 40).ok_or(None)?;
            // SAFETY: `bytes_at` checked these bytes.
            let udp = unsafe { &*udp };
            p.ulen = be16(udp, 4) as usize;
            if p.ulen != plen || ETH + 40 + plen > frame_len || p.src[0] == 0xff {
                p.unusual = true;
            }
            p.sport = [udp[0], udp[1]];
            p.dport = [udp[2], udp[3]];
            p.csum = [udp[6], udp[7]];
            p.ipid = p.csum;
            if p.csum == [0, 0] {
                p.unusual = true;
            }
        }
        _ => return Err(None),
    }
    if p.ulen < 8 {
        // Nothing sane to classify by.
        return Err(None);
    }
    if ttl <= 1 || p.sport == [0, 0] {
        p.unusual = true;
    }
    Ok(())
}

#[inline(always)]
fn live(expires_ns: u64) -> bool {
    // SAFETY: plain helper call.
    expires_ns > unsafe { bpf_ktime_get_ns() }
}

/// ChannelData from a client → UDP to the peer.
#[inline(always)]
fn from_client(ctx: &XdpContext, p: &Pkt, payload: usize, o: &mut Out) -> Result<(), Option<u32>> {
    let h = bytes_at::<4>(ctx, l4_of(p) + 8).ok_or(Some(TURN_UNHANDLED_PASSED))?;
    // SAFETY: `bytes_at` checked these bytes.
    let h = unsafe { *h };
    let len = be16(&h, 2) as usize;
    let key = ChannelKey {
        client_addr: p.src,
        server_addr: p.dst,
        client_port: p.sport,
        server_port: p.dport,
        channel: [h[0], h[1]],
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    let rule = unsafe { TURN_CHANNELS.get(&key) }.ok_or(Some(TURN_NO_RULE_PASSED))?;
    if !live(rule.expires_ns) {
        return Err(Some(TURN_NO_RULE_PASSED));
    }
    if payload < 4 + len || payload > 4 + len + 3 {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    let v6 = !relay_common::turn::is_mapped_v4(&rule.peer_addr);
    if v6 == relay_common::turn::is_mapped_v4(&rule.relay_addr) {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    o.v6 = v6;
    o.src = rule.relay_addr;
    o.dst = rule.peer_addr;
    o.sport = rule.relay_port;
    o.dport = rule.peer_port;
    o.extra = 0;
    o.payload_off = p.l4 + 12;
    o.payload_len = len;
    o.out_pad = 0;
    o.stats_idx = rule.stats_idx;
    o.alloc_idx = rule.alloc_idx;
    o.channel = [0, 0];
    o.counter = TURN_CHANNEL_TO_PEER;
    Ok(())
}

/// A Send indication from a client, in the one shape relayed here: exactly
/// XOR-PEER-ADDRESS then DATA (zero-padded), nothing else (no FINGERPRINT, which the
/// kernel would have to verify over the whole message; no DONT-FRAGMENT; no unknown
/// attributes). Every other shape passes up, where userspace applies the full rules.
/// Returns 0 when `o` is filled, else the counter to pass the frame up under.
#[inline(never)]
fn from_send(ctx: &XdpContext, p: &Pkt, o: &mut Out, work: *mut Work) -> u32 {
    match parse_send(ctx, p, o, work) {
        Ok(()) => 0,
        Err(c) => c,
    }
}

#[inline(always)]
fn parse_send(ctx: &XdpContext, p: &Pkt, o: &mut Out, work: *mut Work) -> Result<(), u32> {
    let settings = TURN_SETTINGS.get(0).ok_or(TURN_UNHANDLED_PASSED)?;
    let payload = p.ulen - 8;
    if payload < 36 {
        return Err(TURN_UNHANDLED_PASSED);
    }
    // SAFETY: this CPU's scratch entry; `hdr` is free until `emit` builds the header.
    let h = unsafe { (*work).hdr.as_mut_ptr() };
    // SAFETY: `hdr` has 128 >= 36 bytes; the helper checks the packet.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, (l4_of(p) + 8) as u32, h.cast(), 36) } != 0 {
        return Err(TURN_UNHANDLED_PASSED);
    }
    // SAFETY: `h` points at 128 initialised bytes (36 just loaded, the rest scratch).
    let b = unsafe { &*(h as *const [u8; HDR_MASK + 1]) };
    let msg_len = be16(b, 2) as usize;
    if b[4..8] != MAGIC || 20 + msg_len != payload || be16(b, 20) != 0x0012 || b[24] != 0 {
        return Err(TURN_UNHANDLED_PASSED);
    }
    let v6 = match (be16(b, 22), b[25]) {
        (8, 1) => false,
        (20, 2) => true,
        _ => return Err(TURN_UNHANDLED_PASSED),
    };
    let data_at = if v6 { 44 } else { 32 };
    if v6 {
        if payload < 48 {
            return Err(TURN_UNHANDLED_PASSED);
        }
        // SAFETY: as above, 48 bytes.
        if unsafe { bpf_xdp_load_bytes(ctx.ctx, (l4_of(p) + 8) as u32, h.cast(), 48) } != 0 {
            return Err(TURN_UNHANDLED_PASSED);
        }
    }
    // SAFETY: as above.
    let b = unsafe { &*(h as *const [u8; HDR_MASK + 1]) };
    let dlen = be16(b, (data_at + 2) & 63) as usize;
    if be16(b, data_at & 63) != 0x0013 || data_at + 4 + ((dlen + 3) & !3) != payload {
        return Err(TURN_UNHANDLED_PASSED);
    }
    let mut peer = [0u8; 16];
    if v6 {
        let mut i = 0;
        while i < 16 {
            let key = if i < 4 { MAGIC[i] } else { b[(8 + i - 4) & 63] };
            peer[i] = b[(28 + i) & 63] ^ key;
            i += 1;
        }
    } else {
        peer = relay_common::turn::mapped_v4([
            b[28] ^ MAGIC[0],
            b[29] ^ MAGIC[1],
            b[30] ^ MAGIC[2],
            b[31] ^ MAGIC[3],
        ]);
    }
    let peer_port = [b[26] ^ MAGIC[0], b[27] ^ MAGIC[1]];

    let akey = AllocKey {
        client_addr: p.src,
        server_addr: p.dst,
        client_port: p.sport,
        server_port: p.dport,
    };
    // SAFETY: read at once.
    let alloc = unsafe { TURN_ALLOCS.get(&akey) }.ok_or(TURN_NO_RULE_PASSED)?;
    if !live(alloc.expires_ns) {
        return Err(TURN_NO_RULE_PASSED);
    }
    if v6 == relay_common::turn::is_mapped_v4(&alloc.relay_addr) {
        // The peer's family is not the relayed address's: userspace answers that.
        return Err(TURN_UNHANDLED_PASSED);
    }
    let pp = u16::from_be_bytes(peer_port);
    if (pp < settings.relay_port_min || pp > settings.relay_port_max)
        && (peer == alloc.relay_addr || peer == p.dst)
    {
        // One of the relay's own services: userspace refuses it.
        return Err(TURN_UNHANDLED_PASSED);
    }
    let pkey = PeerKey {
        peer_addr: peer,
        relay_addr: alloc.relay_addr,
        peer_port: [0, 0],
        relay_port: alloc.relay_port,
    };
    // SAFETY: read at once.
    let perm = unsafe { TURN_PEERS.get(&pkey) }.ok_or(TURN_NO_RULE_PASSED)?;
    if !live(perm.expires_ns) {
        return Err(TURN_NO_RULE_PASSED);
    }
    o.v6 = v6;
    o.src = alloc.relay_addr;
    o.dst = peer;
    o.sport = alloc.relay_port;
    o.dport = peer_port;
    o.extra = 0;
    o.payload_off = l4_of(p) + 8 + data_at + 4;
    o.payload_len = dlen;
    o.out_pad = 0;
    o.stats_idx = alloc.stats_idx;
    o.alloc_idx = alloc.alloc_idx;
    o.channel = [0, 0];
    o.counter = TURN_SEND_TO_PEER;
    Ok(())
}

/// UDP from a peer to a relayed port → ChannelData or a Data indication to the client.
#[inline(always)]
fn from_peer(p: &Pkt, flags: u32, payload: usize, o: &mut Out) -> Result<(), Option<u32>> {
    let mut key = PeerKey {
        peer_addr: p.src,
        relay_addr: p.dst,
        peer_port: p.sport,
        relay_port: p.dport,
    };
    // SAFETY: the value is copied out at once.
    let exact = unsafe { TURN_PEERS.get(&key) };
    let (rule, channel) = match exact {
        Some(r) if r.channel != [0, 0] && live(r.expires_ns) => (r, r.channel),
        _ => {
            key.peer_port = [0, 0];
            // SAFETY: the value is copied out at once.
            let r = unsafe { TURN_PEERS.get(&key) }.ok_or(Some(TURN_NO_RULE_PASSED))?;
            if !live(r.expires_ns) {
                return Err(Some(TURN_NO_RULE_PASSED));
            }
            if flags & SETTING_DATA_INDICATIONS == 0 {
                return Err(Some(TURN_UNHANDLED_PASSED));
            }
            (r, [0, 0])
        }
    };
    let v6 = !relay_common::turn::is_mapped_v4(&rule.client_addr);
    if v6 == relay_common::turn::is_mapped_v4(&rule.server_addr) {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    let (extra, out_pad, counter) = if channel != [0, 0] {
        (4, 0, TURN_PEER_TO_CHANNEL)
    } else {
        let xor = if p.v6 { 24 } else { 12 };
        (
            20 + xor + 4,
            (4 - (payload & 3)) & 3,
            TURN_PEER_TO_DATA_INDICATION,
        )
    };
    o.v6 = v6;
    o.src = rule.server_addr;
    o.dst = rule.client_addr;
    o.sport = rule.server_port;
    o.dport = rule.client_port;
    o.extra = extra;
    o.payload_off = p.l4 + 8;
    o.payload_len = payload;
    o.out_pad = out_pad;
    o.stats_idx = rule.stats_idx;
    o.alloc_idx = rule.alloc_idx;
    o.channel = channel;
    o.counter = counter;
    Ok(())
}

#[inline(always)]
fn put(f: *mut u8, off: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        // SAFETY: masked into the HDR_MASK + 1 (or larger) byte buffer.
        unsafe { *f.add((off + i) & HDR_MASK) = bytes[i] };
        i += 1;
    }
}

#[inline(always)]
fn zero(f: *mut u8, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: callers pass n <= the buffer's size.
        unsafe { *f.add(i) = 0 };
        i += 1;
    }
}

/// Writes the address of `a` (mapped form) for the IP header of family `v6`.
#[inline(always)]
fn put_addr(f: *mut u8, off: usize, a: &[u8; 16], v6: bool) {
    if v6 {
        put(f, off, a);
    } else {
        put(f, off, &[a[12], a[13], a[14], a[15]]);
    }
}

/// Pseudo-header + UDP header words (checksum field zero) into a checksum buffer.
#[inline(always)]
fn cs_words(
    b: *mut u8,
    v6: bool,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    ulen: usize,
) {
    let l = (ulen as u16).to_be_bytes();
    if v6 {
        put(b, 0, src);
        put(b, 16, dst);
    } else {
        put(b, 0, &[src[12], src[13], src[14], src[15]]);
        put(b, 16, &[dst[12], dst[13], dst[14], dst[15]]);
    }
    put(b, 32, &[0, 17, l[0], l[1]]);
    put(
        b,
        36,
        &[sport[0], sport[1], dport[0], dport[1], l[0], l[1], 0, 0],
    );
}

/// Relays the frame per `o` (all checks done): next hop, budget, counters, rewrite.
#[inline(never)]
fn emit(ctx: &XdpContext, p: &Pkt, o: &Out, work: *mut Work) -> Result<u32, Option<u32>> {
    let channel = o.channel;
    let counter = o.counter;
    let ip_hlen = if o.v6 { 40 } else { 20 };
    let ulen = 8 + o.extra + o.payload_len + o.out_pad;
    let ip_total = ip_hlen + ulen;
    let new_hdr = ETH + ip_hlen + 8 + o.extra;
    if ip_total > 0xffff || new_hdr > HDR_MASK {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }

    // Next hop: from TURN_NEXT_HOPS while the cached entry is fresh, else from
    // bpf_fib_lookup (also the MTU check), stored on success. The kernel answers
    // FWD_DISABLED unless forwarding is on for the lookup's interface (checked on 6.18,
    // with and without BPF_FIB_LOOKUP_OUTPUT): the daemon turns it on for
    // `fib_ifindex` only (`lo` by default), else everything passes up counted as
    // TURN_FIB_PASSED.
    let settings = TURN_SETTINGS.get(0).ok_or(Some(TURN_UNHANDLED_PASSED))?;
    let ttl_ms = settings.next_hop_ttl_ms;
    let fib_ifindex = settings.fib_ifindex;
    // SAFETY: `work` points at this CPU's scratch entry, not aliased elsewhere.
    let fib = unsafe { &mut (*work).fib };
    let hop_key = NextHopKey {
        dst: o.dst,
        src: o.src,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut cached = false;
    if ttl_ms != 0 {
        // SAFETY: the value is copied out at once.
        if let Some(h) = unsafe { TURN_NEXT_HOPS.get(&hop_key) } {
            if h.expires_ns > now {
                if ip_total > h.mtu as usize {
                    return Err(Some(TURN_UNHANDLED_PASSED));
                }
                fib.ifindex = h.ifindex;
                fib.smac = h.smac;
                fib.dmac = h.dmac;
                cached = true;
            }
        }
    }
    if !cached {
        lookup(ctx, p, o, fib, ip_total, fib_ifindex)?;
        if ttl_ms != 0 {
            let hop = NextHop {
                expires_ns: now + ttl_ms as u64 * 1_000_000,
                ifindex: fib.ifindex,
                // SAFETY: on success the kernel wrote the route's MTU into the union.
                mtu: unsafe { fib.__bindgen_anon_1.mtu_result },
                _pad: 0,
                smac: fib.smac,
                dmac: fib.dmac,
                _pad2: [0; 4],
            };
            // A failed insert only costs the next frame another lookup.
            let _ = TURN_NEXT_HOPS.insert(&hop_key, &hop, 0);
        }
    }

    // SAFETY: `work` points at this CPU's scratch entry.
    let (f, old, new) = unsafe {
        (
            (*work).hdr.as_mut_ptr(),
            (*work).old.as_mut_ptr(),
            (*work).new.as_mut_ptr(),
        )
    };

    // Incremental UDP checksum: words leaving the datagram vs words entering it.
    zero(old, CS_LEN);
    zero(new, CS_LEN);
    cs_words(old, p.v6, &p.src, &p.dst, p.sport, p.dport, p.ulen);
    cs_words(new, o.v6, &o.src, &o.dst, o.sport, o.dport, ulen);
    if counter == TURN_CHANNEL_TO_PEER || counter == TURN_SEND_TO_PEER {
        // The ChannelData header / STUN header and attribute headers, and the padding,
        // leave the datagram.
        let prefix = o.payload_off - (l4_of(p) + 8);
        let at = (l4_of(p) + 8) as u32;
        // SAFETY: `old` has CS_LEN >= CS_DATA + 48 bytes; the helper checks the packet.
        let r = unsafe {
            let dst = old.add(CS_DATA).cast();
            if prefix == 4 {
                bpf_xdp_load_bytes(ctx.ctx, at, dst, 4)
            } else if prefix == 36 {
                bpf_xdp_load_bytes(ctx.ctx, at, dst, 36)
            } else if prefix == 48 {
                bpf_xdp_load_bytes(ctx.ctx, at, dst, 48)
            } else {
                -1
            }
        };
        if r != 0 {
            return Err(Some(TURN_UNHANDLED_PASSED));
        }
        let pad_off = o.payload_off + o.payload_len;
        let npad = p.ulen - 8 - prefix - o.payload_len;
        if npad > 0 {
            let mut pad = [0u8; 4];
            // SAFETY: `pad` has 4 bytes and npad <= 3; the helper checks the packet.
            if unsafe {
                bpf_xdp_load_bytes(
                    ctx.ctx,
                    pad_off as u32,
                    pad.as_mut_ptr().cast(),
                    (((npad - 1) & 3) + 1) as u32,
                )
            } != 0
            {
                return Err(Some(TURN_UNHANDLED_PASSED));
            }
            // Lane of the first pad byte within its 16-bit word of the segment (the
            // prefix and the UDP header have even lengths).
            let lane = o.payload_len & 1;
            let mut i = 0;
            while i < 3 {
                if i < npad {
                    put(old, CS_PAD + lane + i, &[pad[i]]);
                }
                i += 1;
            }
        }
    }

    // Bandwidth budget (payload bytes, both directions), then the rule's counters.
    if let Some(bw) = TURN_BANDWIDTH.get_ptr_mut(o.alloc_idx) {
        // SAFETY: a valid pointer into the shared array entry. Races between CPUs are
        // benign: a window reset may lose a concurrent add (the budget errs generous),
        // and the byte count is added atomically.
        let over = unsafe { over_budget(bw, o.payload_len as u64) };
        if over {
            counters::bump(TURN_BANDWIDTH_DROPPED);
            return Ok(xdp_action::XDP_DROP);
        }
    }

    // Build the new header (Ethernet, IP, UDP, ChannelData / STUN prefix).
    put(f, 0, &fib.dmac);
    put(f, 6, &fib.smac);
    let ip = ETH;
    let l4 = ETH + ip_hlen;
    if o.v6 {
        put(f, 12, &[0x86, 0xDD]);
        put(f, ip, &[0x60 | (p.tos >> 4), p.tos << 4, 0, 0]);
        put(f, ip + 4, &(ulen as u16).to_be_bytes());
        put(f, ip + 6, &[17, 64]);
        put_addr(f, ip + 8, &o.src, true);
        put_addr(f, ip + 24, &o.dst, true);
    } else {
        put(f, 12, &[0x08, 0x00]);
        put(f, ip, &[0x45, p.tos]);
        put(f, ip + 2, &(ip_total as u16).to_be_bytes());
        // DF copied from an IPv4 input (RFC 8656 §14 preferred behaviour); 0 from an
        // IPv6 input (alternate behaviour) and for Send indications without
        // DONT-FRAGMENT (those with it pass up).
        let df = if p.df && counter != TURN_SEND_TO_PEER {
            0x40
        } else {
            0
        };
        put(f, ip + 4, &[p.ipid[0], p.ipid[1], df, 0, 64, 17, 0, 0]);
        put_addr(f, ip + 12, &o.src, false);
        put_addr(f, ip + 16, &o.dst, false);
        // SAFETY: the 20 header bytes are inside the scratch buffer (14 + 20 <= 128).
        let sum = unsafe { csum::add(f.add(ip), 20, 0) }.ok_or(Some(TURN_UNHANDLED_PASSED))?;
        put(f, ip + 10, &(!csum::fold(sum)).to_ne_bytes());
    }
    put(f, l4, &o.sport);
    put(f, l4 + 2, &o.dport);
    put(f, l4 + 4, &(ulen as u16).to_be_bytes());
    let d = l4 + 8;
    if counter == TURN_PEER_TO_CHANNEL {
        let pl = (o.payload_len as u16).to_be_bytes();
        put(f, d, &[channel[0], channel[1], pl[0], pl[1]]);
        put(new, CS_DATA, &[channel[0], channel[1], pl[0], pl[1]]);
    } else if counter == TURN_PEER_TO_DATA_INDICATION {
        let xor = if p.v6 { 24usize } else { 12 };
        let msg_len = (xor + 4 + o.payload_len + o.out_pad) as u16;
        // SAFETY: plain helper calls.
        let t = unsafe {
            [
                bpf_get_prandom_u32(),
                bpf_get_prandom_u32(),
                bpf_get_prandom_u32(),
            ]
        };
        let mut txid = [0u8; 12];
        let mut i = 0;
        while i < 3 {
            let w = t[i].to_ne_bytes();
            txid[4 * i] = w[0];
            txid[4 * i + 1] = w[1];
            txid[4 * i + 2] = w[2];
            txid[4 * i + 3] = w[3];
            i += 1;
        }
        let ml = msg_len.to_be_bytes();
        put(f, d, &[0x00, 0x17, ml[0], ml[1]]);
        put(f, d + 4, &MAGIC);
        put(f, d + 8, &txid);
        // XOR-PEER-ADDRESS of the peer (the packet's source).
        put(
            f,
            d + 20,
            &[0x00, 0x12, 0, (xor - 4) as u8, 0, if p.v6 { 2 } else { 1 }],
        );
        put(f, d + 26, &[p.sport[0] ^ MAGIC[0], p.sport[1] ^ MAGIC[1]]);
        let a = if p.v6 { 0 } else { 12 };
        put(
            f,
            d + 28,
            &[
                p.src[a] ^ MAGIC[0],
                p.src[a + 1] ^ MAGIC[1],
                p.src[a + 2] ^ MAGIC[2],
                p.src[a + 3] ^ MAGIC[3],
            ],
        );
        if p.v6 {
            let mut i = 0;
            while i < 12 {
                put(f, d + 32 + i, &[p.src[4 + i] ^ txid[i]]);
                i += 1;
            }
        }
        // DATA header.
        let dl = (o.payload_len as u16).to_be_bytes();
        put(f, d + 20 + xor, &[0, 0x13, dl[0], dl[1]]);
        let mut i = 0;
        while i < 48 {
            if i < o.extra {
                // SAFETY: d + i < 128 (masked) and CS_DATA + i < CS_LEN.
                unsafe { *new.add(CS_DATA + i) = *f.add((d + i) & HDR_MASK) };
            }
            i += 1;
        }
    }
    // SAFETY: both buffers hold CS_LEN (a multiple of 4, <= 512) bytes.
    let diff = unsafe {
        bpf_csum_diff(
            old.cast(),
            CS_LEN as u32,
            new.cast(),
            CS_LEN as u32,
            !u16::from_ne_bytes(p.csum) as u32,
        )
    };
    if diff < 0 {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    put(f, l4 + 6, &csum::finish(diff as u32));

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
    // SAFETY: `f` holds HDR_MASK + 1 >= new_hdr readable bytes; the helper checks the packet.
    if unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            0,
            f.cast(),
            (((new_hdr - 1) & HDR_MASK) + 1) as u32,
        )
    } != 0
    {
        // The packet was already resized: it cannot be passed up unchanged any more.
        return Ok(xdp_action::XDP_ABORTED);
    }
    if o.out_pad > 0 {
        let z = [0u8; 4];
        let at = (new_hdr + o.payload_len) as u32;
        // SAFETY: `z` has 4 >= out_pad readable bytes; the helper checks the packet.
        if unsafe {
            bpf_xdp_store_bytes(
                ctx.ctx,
                at,
                z.as_ptr() as *mut _,
                (((o.out_pad - 1) & 3) + 1) as u32,
            )
        } != 0
        {
            return Ok(xdp_action::XDP_ABORTED);
        }
    }

    if let Some(st) = TURN_RULE_STATS.get_ptr_mut(o.stats_idx) {
        // SAFETY: this CPU's entry; XDP is not preempted on a CPU.
        unsafe {
            (*st).packets += 1;
            (*st).bytes += o.payload_len as u64;
        }
    }
    counters::bump(counter);
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        Ok(xdp_action::XDP_TX)
    } else {
        // SAFETY: plain helper call.
        Ok(unsafe { bpf_redirect(fib.ifindex, 0) } as u32)
    }
}

/// Charges `bytes` to the allocation's fixed window; true when over budget (then the
/// entry's `dropped` is incremented too).
///
/// # Safety
/// `bw` must point at a live `TURN_BANDWIDTH` entry.
#[inline(always)]
unsafe fn over_budget(bw: *mut Bandwidth, bytes: u64) -> bool {
    // The stable atomics need compare-and-swap, which BPF lacks; the intrinsic lowers to
    // the BPF atomic add.
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: forwarded from the contract; the map value is 8-byte aligned.
    unsafe {
        let rate = core::ptr::read_volatile(&(*bw).rate);
        if rate == 0 {
            return false;
        }
        // SAFETY: plain helper call.
        let now = bpf_ktime_get_ns();
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

/// Offset of the UDP header, as a constant per family (a value read back from the
/// scratch map is unbounded for the verifier; packet pointers need a known offset).
#[inline(always)]
fn l4_of(p: &Pkt) -> usize {
    if p.v6 { ETH + 40 } else { ETH + 20 }
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
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    *fib = unsafe { core::mem::zeroed() };
    fib.l4_protocol = 17;
    fib.sport = u16::from_ne_bytes(o.sport);
    fib.dport = u16::from_ne_bytes(o.dport);
    fib.__bindgen_anon_1.tot_len = ip_total as u16;
    fib.ifindex = if fib_ifindex != 0 {
        fib_ifindex
    } else {
        ctx.ingress_ifindex() as u32
    };
    if o.v6 {
        fib.family = AF_INET6;
        let mut s = [0u32; 4];
        let mut d = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            s[i] = u32::from_ne_bytes([
                o.src[4 * i],
                o.src[4 * i + 1],
                o.src[4 * i + 2],
                o.src[4 * i + 3],
            ]);
            d[i] = u32::from_ne_bytes([
                o.dst[4 * i],
                o.dst[4 * i + 1],
                o.dst[4 * i + 2],
                o.dst[4 * i + 3],
            ]);
            i += 1;
        }
        fib.__bindgen_anon_3.ipv6_src = s;
        fib.__bindgen_anon_4.ipv6_dst = d;
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = p.tos;
        fib.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([o.src[12], o.src[13], o.src[14], o.src[15]]);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([o.dst[12], o.dst[13], o.dst[14], o.dst[15]]);
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
