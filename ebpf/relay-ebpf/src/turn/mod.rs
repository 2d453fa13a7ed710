//! TURN relaying in the kernel (issue 4), driven only by the rule maps of the contract
//! (`relay_common::turn`) that the daemon's control plane writes.
//!
//! - ChannelData from a client with a live `TURN_CHANNELS_V4` (IPv4 client) or
//!   `TURN_CHANNELS` rule → a UDP datagram from the relayed address to the peer (header
//!   and padding stripped).
//! - UDP from a peer to a relayed port with a live `TURN_PEER_TABLE` slot (an IPv4
//!   channel binding) or `TURN_PEERS` rule → ChannelData to the client (exact peer port,
//!   `channel != 0`), or a Data indication built here (the permission entry,
//!   `peer_port == 0`) when `SETTING_DATA_INDICATIONS` is on.
//! - Send indications from a client with a live `TURN_ALLOCS` rule and a permission
//!   entry for the XOR-PEER-ADDRESS → the DATA as UDP from the relayed address, when
//!   `SETTING_SEND_INDICATIONS` is on and the message has the shape [`send`] accepts.
//!
//! Frame rules (the same as `relay/src/xdp/turn_frames.rs`, byte for byte): see
//! [`emit`]. Every check happens before the packet is touched: whatever passes up is
//! unchanged.
//!
//! Layout: [`pkt`] parses the frame, this module classifies it and finds the rule,
//! [`send`] parses Send indications, [`emit`] finds the next hop, charges the budget and
//! rewrites the frame; [`words`] holds the word-wide memory access they all use (the
//! reason the path is fast).

mod emit;
mod pkt;
mod send;
mod words;

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use relay_common::{
    counter::{
        TURN_CHANNEL_TO_PEER, TURN_NO_RULE_PASSED, TURN_PEER_TO_CHANNEL,
        TURN_PEER_TO_DATA_INDICATION, TURN_UNHANDLED_PASSED,
    },
    turn::{
        AllocKey, AllocRule, Bandwidth, CHANNEL_PROBES, ChannelKey, ChannelKeyV4, ChannelRule,
        ChannelSlot, HOP_SLOTS, HopSlot, MAX_ALLOCATIONS, MAX_EGRESS, MAX_MAP_ENTRIES,
        MAX_NEXT_HOPS, MAX_RULES, NextHop, NextHopKey, PeerKey, PeerRule, PeerSlot, RuleStats,
        SETTING_DATA_INDICATIONS, SETTING_EGRESS_CHECKED, SETTING_ENABLED,
        SETTING_SEND_INDICATIONS, SlotTableInfo, TurnClock, TurnSettings,
    },
};

use pkt::Pkt;
use words::{Addr, MAPPED_W2, host, is_mapped, rd_addr, rd16, rd32};

// The contract's maps. Declared without `pinned(...)` on purpose: aya's loader pins
// ByName maps under /sys/fs/bpf at EVERY load (test runs included), which would make
// every loaded copy share one set of rules. Userspace pins them by name where it wants
// with `EbpfLoader::map_pin_path(NAME, dir/NAME)` (reuses an existing pin: adoption).
#[map(name = "TURN_CHANNELS")]
static TURN_CHANNELS: HashMap<ChannelKey, ChannelRule> =
    HashMap::with_max_entries(MAX_MAP_ENTRIES, 0);
/// The IPv4 clients' channel rules under a 16-byte key (see relay_common::turn::maps).
#[map(name = "TURN_CHANNELS_V4")]
static TURN_CHANNELS_V4: HashMap<ChannelKeyV4, ChannelRule> =
    HashMap::with_max_entries(MAX_MAP_ENTRIES, 0);
/// `BPF_F_MMAPABLE`: the daemon writes `TURN_CHANNEL_TABLE` slots through an mmap (a
/// seqlock, which a `bpf_map_update_elem` copy could not be).
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// IPv4 channel rules in an open-addressed table probed before `TURN_CHANNELS_V4` (see
/// relay_common::turn::ChannelSlot); sized by the daemon (a power of two).
#[map(name = "TURN_CHANNEL_TABLE")]
static TURN_CHANNEL_TABLE: Array<ChannelSlot> =
    Array::with_max_entries(MAX_MAP_ENTRIES, BPF_F_MMAPABLE);
/// The table's seed and mask (mask 0: off).
#[map(name = "TURN_CHANNEL_TABLE_INFO")]
static TURN_CHANNEL_TABLE_INFO: Array<SlotTableInfo> = Array::with_max_entries(1, 0);
/// The peer rules of IPv4 channel bindings in an open-addressed table probed before
/// `TURN_PEERS` (see relay_common::turn::PeerSlot); sized by the daemon (a power of two).
#[map(name = "TURN_PEER_TABLE")]
static TURN_PEER_TABLE: Array<PeerSlot> = Array::with_max_entries(MAX_MAP_ENTRIES, BPF_F_MMAPABLE);
/// The peer table's seed and mask (mask 0: off).
#[map(name = "TURN_PEER_TABLE_INFO")]
static TURN_PEER_TABLE_INFO: Array<SlotTableInfo> = Array::with_max_entries(1, 0);
#[map(name = "TURN_PEERS")]
static TURN_PEERS: HashMap<PeerKey, PeerRule> = HashMap::with_max_entries(MAX_MAP_ENTRIES, 0);
#[map(name = "TURN_ALLOCS")]
static TURN_ALLOCS: HashMap<AllocKey, AllocRule> = HashMap::with_max_entries(MAX_MAP_ENTRIES, 0);
#[map(name = "TURN_RULE_STATS")]
static TURN_RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map(name = "TURN_BANDWIDTH")]
static TURN_BANDWIDTH: Array<Bandwidth> = Array::with_max_entries(MAX_ALLOCATIONS, 0);
#[map(name = "TURN_SETTINGS")]
pub static TURN_SETTINGS: Array<TurnSettings> = Array::with_max_entries(1, 0);
/// The interfaces relayed frames may leave by, with `SETTING_EGRESS_CHECKED` (see
/// relay_common::turn::maps::EGRESS).
#[map(name = "TURN_EGRESS")]
static TURN_EGRESS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_EGRESS, 0);
/// The rule clock's calibration (see `TurnClock`); written by the daemon, not pinned.
#[map(name = "TURN_CLOCK")]
static TURN_CLOCK: Array<TurnClock> = Array::with_max_entries(1, 0);
/// Next hops found by `bpf_fib_lookup`, reused for `next_hop_ttl_ms` (the lookup is most
/// of a relayed frame's cost). One map shared by all CPUs: a hit only reads it, and a
/// route or neighbour change is one entry to age out, not one per CPU.
#[map(name = "TURN_NEXT_HOPS")]
static TURN_NEXT_HOPS: LruHashMap<NextHopKey, NextHop> =
    LruHashMap::with_max_entries(MAX_NEXT_HOPS, 0);

/// Each CPU's next hops per rule slot, checked before `TURN_NEXT_HOPS`: a slot hit is an
/// index and a key compare instead of hashing a 32-byte key (about a sixth of a relayed
/// frame's program time at 1 allocation). Per CPU, so a slot is written and read only by
/// its CPU: no torn entry, unlike a next hop kept in the shared rule. A slot never
/// outlives the `TURN_NEXT_HOPS` entry it was copied from (same deadline), so a changed
/// route or neighbour is seen as soon as before.
#[map(name = "TURN_HOP_SLOTS")]
static TURN_HOP_SLOTS: PerCpuArray<HopSlot> = PerCpuArray::with_max_entries(HOP_SLOTS, 0);

/// Per-CPU scratch memory of the TURN path (the verifier caps the stack of a whole call
/// chain at 512 bytes).
#[map(name = "TURN_SCRATCH")]
static TURN_SCRATCH: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

/// What the TURN path keeps in [`TURN_SCRATCH`].
pub struct Work {
    pkt: Pkt,
    out: Out,
    hop: Hop,
    fib: bpf_fib_lookup,
    /// Map keys are built here, not on the stack: the crate allows LLVM misaligned
    /// accesses (for packet headers), and it would merge word stores to a key on the
    /// stack into misaligned 8-byte ones, which the verifier rejects on the stack only.
    key: [u32; 10],
    /// A `TURN_NEXT_HOPS` value being built (same reason).
    hop_value: [u64; 4],
}

/// What to send. `repr(C)` with the fields ordered so that no constructor writes two
/// adjacent constant zeros: LLVM would merge those into a call to the byte-loop `memset`.
#[repr(C)]
pub struct Out {
    v6: bool,
    /// Set DF (an IPv4 output).
    df: bool,
    /// The channel to prepend (peer → ChannelData), memory order.
    channel: u16,
    /// The counter of a relayed frame (which of the four cases).
    counter: u32,
    src: Addr,
    dst: Addr,
    /// Source then destination port of the output (memory order), one word.
    ports: u32,
    stats_idx: u32,
    alloc_idx: u32,
    /// Bytes between the UDP header and the payload in the output (0, 4, 36 or 48).
    extra: usize,
    /// Ones' complement sum of the words between the input's UDP header and its payload
    /// (the ChannelData header, the Send indication's header and attribute headers),
    /// which leave the datagram.
    prefix_sum: u64,
    /// Offset of the payload in the input frame.
    payload_off: usize,
    /// Padding bytes after the payload in the input (they leave the datagram too).
    in_pad: usize,
    payload_len: usize,
    /// Zero bytes after the payload in the output (Data indication padding).
    out_pad: usize,
}

/// What `emit` needs from the settings, read once per frame.
pub struct Hop {
    ttl_ms: u32,
    fib_ifindex: u32,
    now: u64,
    /// `SETTING_EGRESS_CHECKED`.
    egress_checked: bool,
}

/// [`relay`]'s result, packed in one register (a BPF-to-BPF call returns one value):
/// below 0x100 an XDP action; `PASS_COUNTED | counter`; or [`NOT_TURN`].
pub const PASS_COUNTED: u32 = 0x100;
/// Not a TURN frame (or the kernel TURN path is off): the STUN path decides.
pub const NOT_TURN: u32 = 0x200;

/// Relays the frame if it is TURN traffic the kernel handles; see [`PASS_COUNTED`].
/// A separate BPF function so that its stack frame is not added to the STUN path's. It
/// calls [`classify`] and then [`emit::emit`], two BPF functions of their own, so that
/// their stack frames are never on the stack together (the verifier caps a call chain
/// at 512 bytes).
#[inline(never)]
pub fn relay_packed(ctx: &XdpContext) -> u32 {
    let Some(work) = TURN_SCRATCH.get_ptr_mut(0) else {
        return NOT_TURN;
    };
    let c = classify(ctx, work);
    if c != RELAY {
        return c;
    }
    match emit::emit(ctx, work) {
        Ok(action) => action,
        Err(Some(counter)) => PASS_COUNTED | counter,
        Err(None) => NOT_TURN,
    }
}

/// [`classify`]'s result when the frame is to be relayed per the scratch `out`.
const RELAY: u32 = 0x400;

/// Parses the frame and finds its rule: [`RELAY`] with the scratch entry filled, else
/// what [`relay_packed`] returns.
#[inline(never)]
fn classify(ctx: &XdpContext, work: *mut Work) -> u32 {
    match find_rule(ctx, work) {
        Ok(()) => RELAY,
        Err(Some(counter)) => PASS_COUNTED | counter,
        Err(None) => NOT_TURN,
    }
}

/// `Ok`: relay per the scratch entry. `Err(Some(counter))`: a TURN frame passed up
/// unchanged. `Err(None)`: not TURN (or the kernel path is off): the STUN path decides,
/// exactly as before.
#[inline(always)]
fn find_rule(ctx: &XdpContext, work: *mut Work) -> Result<(), Option<u32>> {
    let settings = TURN_SETTINGS.get(0).ok_or(None)?;
    let flags = settings.flags;
    if flags & SETTING_ENABLED == 0 {
        return Err(None);
    }
    // SAFETY: this CPU's scratch entry; the fields are disjoint and live for the whole
    // program run (XDP is not preempted on a CPU).
    let (p, o, hop, key) = unsafe {
        (
            &mut (*work).pkt,
            &mut (*work).out,
            &mut (*work).hop,
            &mut (*work).key,
        )
    };
    pkt::parse(ctx, p)?;
    let now = rule_clock();
    *hop = Hop {
        ttl_ms: settings.next_hop_ttl_ms,
        fib_ifindex: settings.fib_ifindex,
        now,
        egress_checked: flags & SETTING_EGRESS_CHECKED != 0,
    };
    let dport = host(p.dport());
    let payload = p.ulen - 8;
    if dport >= settings.relay_port_min && dport <= settings.relay_port_max {
        if p.unusual {
            return Err(Some(TURN_UNHANDLED_PASSED));
        }
        from_peer(p, flags, payload, now, o, key)
    } else {
        let at = ctx.data() + p.l4() + 8;
        if at + 1 > ctx.data_end() {
            return Err(None);
        }
        // SAFETY: the byte is inside the packet (checked above).
        let b0 = unsafe { *(at as *const u8) };
        // ChannelData: channel numbers 0x4000–0x4FFF, or up to 0x7FFF with the legacy
        // (RFC 5766) range coturn's turnutils_uclient uses; the rule lookup decides.
        if payload >= 4 && (0x40..0x80).contains(&b0) {
            if p.unusual {
                return Err(Some(TURN_UNHANDLED_PASSED));
            }
            from_client(ctx, p, payload, now, o, key)
        } else if b0 == 0 && flags & SETTING_SEND_INDICATIONS != 0 {
            if at + 2 > ctx.data_end() {
                return Err(None);
            }
            // SAFETY: the two bytes are inside the packet (checked above).
            if unsafe { rd16(at) } != u16::from_ne_bytes([0x00, 0x16]) {
                return Err(None);
            }
            if p.unusual {
                return Err(Some(TURN_UNHANDLED_PASSED));
            }
            // Its own BPF function: its keys and parse state would not fit in this
            // frame's share of the 512-byte stack.
            match send::from_send(ctx, work, settings, now) {
                0 => Ok(()),
                c => Err(Some(c)),
            }
        } else {
            Err(None)
        }
    }
}

/// CLOCK_MONOTONIC nanoseconds for rule deadlines, budgets and next-hop ages: from
/// jiffies once `TURN_CLOCK` is calibrated (an inlined load, ahead by at most a tick),
/// else the coarse clock (a seqcount read: about 25 ns more per frame in a VM). Both lag
/// by up to a tick, which the deadlines' `COARSE_CLOCK_SLACK_NS` covers; see
/// relay_common::turn::TurnClock.
#[inline(always)]
fn rule_clock() -> u64 {
    if let Some(c) = TURN_CLOCK.get(0) {
        if c.tick_ns != 0 {
            // SAFETY: plain helper call (the verifier inlines it into a load).
            let j = unsafe { bpf_jiffies64() };
            return j.wrapping_mul(c.tick_ns).wrapping_add(c.offset_ns);
        }
    }
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn live(expires_ns: u64, now: u64) -> bool {
    expires_ns > now
}

/// ChannelData from a client → UDP to the peer.
#[inline(always)]
fn from_client(
    ctx: &XdpContext,
    p: &Pkt,
    payload: usize,
    now: u64,
    o: &mut Out,
    key: &mut [u32; 10],
) -> Result<(), Option<u32>> {
    let at = ctx.data() + p.l4() + 8;
    if at + 4 > ctx.data_end() {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    // SAFETY: the 4 bytes are inside the packet (checked above).
    let h = unsafe { rd32(at) };
    let len = host((h >> 16) as u16) as usize;
    let mut found = None;
    let mut slot = None;
    if !p.v6 {
        key[0] = p.src[3];
        key[1] = p.dst[3];
        key[2] = p.ports;
        key[3] = h & 0xffff;
        if let Slot::Hit((expires, relay, peer, ports, _, stats_idx, alloc_idx)) =
            table_slot(&TURN_CHANNEL_TABLE, &TURN_CHANNEL_TABLE_INFO, key)
        {
            slot = Some((
                expires,
                [0, 0, MAPPED_W2, relay],
                [0, 0, MAPPED_W2, peer],
                ports,
                stats_idx,
                alloc_idx,
            ));
        }
        if slot.is_none() {
            // SAFETY: the first 16 bytes of `key` have the layout of a ChannelKeyV4
            // (client address, server address, client port, server port, channel, zero
            // padding).
            found = unsafe { TURN_CHANNELS_V4.get_ptr(&*(key.as_ptr() as *const ChannelKeyV4)) };
        }
    }
    let (expires, relay_addr, peer_addr, ports, stats_idx, alloc_idx) = match slot {
        Some(r) => r,
        None => map_rule(p, h, found, key)?,
    };
    if !live(expires, now) {
        return Err(Some(TURN_NO_RULE_PASSED));
    }
    // Padding of 1–3 bytes is taken out of the checksum one aligned word at a time
    // (`emit::checksum`), which needs it to end the message on a multiple of 4, as
    // RFC 8656 §12.5 pads; odder padding (userspace relays it too) passes up.
    if payload < 4 + len || payload > 4 + len + 3 || (payload != 4 + len && payload & 3 != 0) {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    let v6 = !is_mapped(&peer_addr);
    if v6 == is_mapped(&relay_addr) {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    *o = Out {
        v6,
        df: p.df,
        src: relay_addr,
        dst: peer_addr,
        // The rule holds relay port then peer port: the output's source and destination.
        ports,
        extra: 0,
        payload_off: p.l4() + 12,
        payload_len: len,
        prefix_sum: h as u64,
        in_pad: payload - 4 - len,
        out_pad: 0,
        stats_idx,
        alloc_idx,
        channel: 0,
        counter: TURN_CHANNEL_TO_PEER,
    };
    Ok(())
}

/// What the channel path needs of a rule: deadline, relayed and peer address, relayed
/// then peer port (one memory-order word), `stats_idx`, `alloc_idx`.
type ChannelFields = (u64, Addr, Addr, u32, u32, u32);

/// A compact table slot's words after its key: deadline, the two IPv4 addresses, the
/// ports word, the word at offset 44 (a peer slot's channel), `stats_idx`, `alloc_idx`.
type SlotWords = (u64, u32, u32, u32, u32, u32, u32);

/// What [`table_slot`] found.
enum Slot {
    /// The table is off or holds no such key.
    Miss,
    /// The key's slot is being rewritten (seqlock): the hash map decides, and a rule the
    /// daemon is moving is there first.
    Torn,
    /// The slot's words.
    Hit(SlotWords),
}

/// The slot for the 16-byte key in `key[0..4]` from `table` (a `TURN_CHANNEL_TABLE` or
/// `TURN_PEER_TABLE`, whose slots share the layout this reads) with its `info`.
#[inline(always)]
fn table_slot<T>(table: &Array<T>, info: &Array<SlotTableInfo>, key: &[u32; 10]) -> Slot {
    let Some(info) = info.get(0) else {
        return Slot::Miss;
    };
    let (mask, base) = (info.mask, info.base);
    if mask == 0 {
        return Slot::Miss;
    }
    #[cfg(target_endian = "little")]
    let (w0, w1) = (
        key[0] as u64 | (key[1] as u64) << 32,
        key[2] as u64 | (key[3] as u64) << 32,
    );
    #[cfg(target_endian = "big")]
    let (w0, w1) = (
        (key[0] as u64) << 32 | key[1] as u64,
        (key[2] as u64) << 32 | key[3] as u64,
    );
    let home = relay_common::turn::slot_home(w0, w1, info);
    for i in 0..CHANNEL_PROBES {
        // Past the map's end (a base and mask no daemon writes): no slot.
        let Some(s) = table.get_ptr(base.wrapping_add((home + i) & mask)) else {
            return Slot::Miss;
        };
        let s = s as usize;
        let rd = |off: usize| {
            // SAFETY: `s` points at a 64-byte slot (ChannelSlot or PeerSlot), `off` is a
            // 4-aligned offset inside it. Volatile: the loads stay in this order (the
            // seqlock).
            unsafe { core::ptr::read_volatile((s + off) as *const u32) }
        };
        let seq = rd(0);
        let k0 = rd(8);
        if k0 != key[0] || rd(12) != key[1] || rd(16) != key[2] || rd(20) != key[3] {
            // An empty slot (all-zero key) ends the key's cluster: the daemon never stores
            // a key past one (see relay_common::turn::CHANNEL_PROBES). Read while a key
            // is being written into it, the key was not in the table a moment ago either.
            if k0 | rd(12) | rd(16) | rd(20) == 0 {
                return Slot::Miss;
            }
            continue;
        }
        // SAFETY: as `rd`, for the 8-aligned deadline.
        let expires = unsafe { core::ptr::read_volatile((s + 24) as *const u64) };
        let words = (expires, rd(32), rd(36), rd(40), rd(44), rd(48), rd(52));
        if seq & 1 != 0 || rd(0) != seq {
            return Slot::Torn;
        }
        return Slot::Hit(words);
    }
    Slot::Miss
}

/// The rule from `TURN_CHANNELS_V4` (`found`), else from `TURN_CHANNELS`.
#[inline(always)]
fn map_rule(
    p: &Pkt,
    h: u32,
    found: Option<*const ChannelRule>,
    key: &mut [u32; 10],
) -> Result<ChannelFields, Option<u32>> {
    let rule = match found {
        Some(r) => r,
        None => {
            // IPv6 clients, and IPv4 rules an older daemon left in TURN_CHANNELS.
            *key = [
                p.src[0],
                p.src[1],
                p.src[2],
                p.src[3],
                p.dst[0],
                p.dst[1],
                p.dst[2],
                p.dst[3],
                p.ports,
                h & 0xffff,
            ];
            // SAFETY: `key` has the size and layout of a ChannelKey (client address,
            // server address, client port, server port, channel, zero padding); the value
            // is read at once through the map's pointer.
            unsafe { TURN_CHANNELS.get_ptr(&*(key.as_ptr() as *const ChannelKey)) }
                .ok_or(Some(TURN_NO_RULE_PASSED))?
        }
    };
    let r = rule as usize;
    // SAFETY: `r` points at a live ChannelRule value (56 bytes, 8-aligned).
    Ok(unsafe {
        (
            (*rule).expires_ns,
            rd_addr(r + 8),
            rd_addr(r + 24),
            rd32(r + 40),
            (*rule).stats_idx,
            (*rule).alloc_idx,
        )
    })
}

/// The peer rule from `TURN_PEERS`: the exact entry when it has a channel and is live,
/// else the permission entry (any peer port; a Data indication, when they are on) unless
/// the frame's `TURN_PEER_TABLE` slot was `torn` (its channel binding is being
/// rewritten: the frame passes up rather than go out as a Data indication). Returns its
/// fields and channel (0: a Data indication).
#[inline(always)]
fn peer_map_rule(
    p: &Pkt,
    flags: u32,
    now: u64,
    torn: bool,
    key: &mut [u32; 10],
) -> Result<(PeerFields, u16), Option<u32>> {
    *key = [
        p.src[0], p.src[1], p.src[2], p.src[3], p.dst[0], p.dst[1], p.dst[2], p.dst[3], p.ports, 0,
    ];
    // SAFETY: `key` has the size and layout of a PeerKey (peer address, relayed address,
    // peer port, relayed port).
    let exact = unsafe { TURN_PEERS.get_ptr(&*(key.as_ptr() as *const PeerKey)) };
    let mut rule = core::ptr::null();
    let mut channel = 0u16;
    if let Some(r) = exact {
        // SAFETY: `r` points at a live PeerRule value.
        let (c, e) = unsafe { (rd16(r as usize + 44), (*r).expires_ns) };
        if c != 0 && live(e, now) {
            rule = r;
            channel = c;
        }
    }
    if rule.is_null() {
        if torn {
            return Err(Some(TURN_NO_RULE_PASSED));
        }
        // The permission entry: any peer port.
        key[8] = p.ports & 0xffff_0000;
        // SAFETY: as above.
        let r = unsafe { TURN_PEERS.get_ptr(&*(key.as_ptr() as *const PeerKey)) }
            .ok_or(Some(TURN_NO_RULE_PASSED))?;
        // SAFETY: `r` points at a live PeerRule value.
        if !live(unsafe { (*r).expires_ns }, now) {
            return Err(Some(TURN_NO_RULE_PASSED));
        }
        if flags & SETTING_DATA_INDICATIONS == 0 {
            return Err(Some(TURN_UNHANDLED_PASSED));
        }
        rule = r;
    }
    let r = rule as usize;
    // SAFETY: `rule` points at a live PeerRule value (56 bytes, 8-aligned).
    let fields = unsafe {
        (
            rd_addr(r + 8),
            rd_addr(r + 24),
            rd32(r + 40),
            (*rule).stats_idx,
            (*rule).alloc_idx,
        )
    };
    Ok((fields, channel))
}

/// What the peer path needs of a rule: client and listen address, client then listen
/// port (one memory-order word), `stats_idx`, `alloc_idx`.
type PeerFields = (Addr, Addr, u32, u32, u32);

/// UDP from a peer to a relayed port → ChannelData or a Data indication to the client.
#[inline(always)]
fn from_peer(
    p: &Pkt,
    flags: u32,
    payload: usize,
    now: u64,
    o: &mut Out,
    key: &mut [u32; 10],
) -> Result<(), Option<u32>> {
    let mut fields: Option<PeerFields> = None;
    let mut channel = 0u16;
    let mut torn = false;
    if !p.v6 {
        // The compact key: peer address, relayed address, ports, a zero word.
        key[0] = p.src[3];
        key[1] = p.dst[3];
        key[2] = p.ports;
        key[3] = 0;
        let found = table_slot(&TURN_PEER_TABLE, &TURN_PEER_TABLE_INFO, key);
        torn = matches!(found, Slot::Torn);
        if let Slot::Hit((e, client, server, ports, w44, stats_idx, alloc_idx)) = found {
            let b = w44.to_ne_bytes();
            let c = u16::from_ne_bytes([b[0], b[1]]);
            if c != 0 && live(e, now) {
                channel = c;
                fields = Some((
                    [0, 0, MAPPED_W2, client],
                    [0, 0, MAPPED_W2, server],
                    ports,
                    stats_idx,
                    alloc_idx,
                ));
            }
        }
    }
    let (client_addr, server_addr, ports, stats_idx, alloc_idx) = match fields {
        Some(f) => f,
        None => {
            let (f, c) = peer_map_rule(p, flags, now, torn, key)?;
            channel = c;
            f
        }
    };
    let v6 = !is_mapped(&client_addr);
    if v6 == is_mapped(&server_addr) {
        return Err(Some(TURN_UNHANDLED_PASSED));
    }
    let (extra, out_pad, counter) = if channel != 0 {
        (4, 0, TURN_PEER_TO_CHANNEL)
    } else {
        let xor = if p.v6 { 24 } else { 12 };
        (
            20 + xor + 4,
            (4 - (payload & 3)) & 3,
            TURN_PEER_TO_DATA_INDICATION,
        )
    };
    *o = Out {
        v6,
        df: p.df,
        src: server_addr,
        dst: client_addr,
        // The rule holds client port then server port: swapped for the output.
        ports: ports.rotate_left(16),
        extra,
        payload_off: p.l4() + 8,
        payload_len: payload,
        prefix_sum: 0,
        in_pad: 0,
        out_pad,
        stats_idx,
        alloc_idx,
        channel,
        counter,
    };
    Ok(())
}
