//! The TURN fast path's rule maps: keys and values shared by the XDP program and the
//! daemon's control plane (issue 4).
//!
//! Conventions, so that a key built from packet bytes in the kernel equals the key the
//! daemon wrote:
//! - Addresses are 16 bytes in network order; IPv4 addresses are stored IPv4-mapped
//!   (`::ffff:a.b.c.d`), so one key type serves both families.
//! - Ports and channel numbers are `[u8; 2]` in network (wire) order ([`WirePort`]).
//! - Every struct is `#[repr(C)]` with explicit padding fields (always zero), so the
//!   kernel hashes no uninitialised bytes.
//! - Deadlines (`expires_ns`) are CLOCK_MONOTONIC nanoseconds; the kernel treats a rule
//!   whose deadline has passed as absent (passes the packet up), so a stalled control
//!   plane never relays past a lifetime. The kernel reads the coarse clock
//!   (`bpf_ktime_get_coarse_ns`: the same clock as of the last tick, about 5 ns a read
//!   against 30–40 for the exact one in a VM), which lags by up to one tick; the daemon
//!   therefore writes every rule deadline [`COARSE_CLOCK_SLACK_NS`] early. Once the
//!   daemon has calibrated [`TurnClock`] (`TURN_CLOCK`), the kernel reads jiffies instead
//!   (a plain load, inlined by the verifier) and turns them into the same clock; see
//!   [`TurnClock`] for why that stays within the same slack.

/// A port or channel number in network byte order.
pub type WirePort = [u8; 2];

/// `u16` → network order.
pub const fn wire(v: u16) -> WirePort {
    v.to_be_bytes()
}

/// Network order → `u16`.
pub const fn unwire(v: WirePort) -> u16 {
    u16::from_be_bytes(v)
}

/// An IPv4 address in the 16-byte (IPv4-mapped) form used in keys.
pub const fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The IPv4 address in the last four bytes of an IPv4-mapped key address.
pub const fn ipv4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// Whether a 16-byte key address is an IPv4-mapped one.
pub const fn is_mapped_v4(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// Map names (userspace looks them up by name; pinned under these names too).
pub mod maps {
    /// `HashMap<ChannelKey, ChannelRule>`: ChannelData from a client → UDP to a peer.
    pub const CHANNELS: &str = "TURN_CHANNELS";
    /// `HashMap<ChannelKeyV4, ChannelRule>`: the channel rules of IPv4 clients (client
    /// and listen address IPv4), which the kernel looks up first for an IPv4 frame: a
    /// 16-byte key hashes in less than half the time of a [`super::ChannelKey`], and its
    /// element is 24 bytes smaller (one cache line fewer to miss with many rules). Other
    /// rules stay in [`CHANNELS`], which the kernel also consults when this one has no
    /// entry (rules an older daemon wrote there keep working after an upgrade).
    pub const CHANNELS_V4: &str = "TURN_CHANNELS_V4";
    /// `Array<ChannelSlot>` (mmapable, a power of two of entries): IPv4 channel rules in
    /// an open-addressed table the kernel probes before `TURN_CHANNELS_V4` (one cache
    /// line per lookup); see [`super::ChannelSlot`].
    pub const CHANNEL_TABLE: &str = "TURN_CHANNEL_TABLE";
    /// `Array<SlotTableInfo>` of one entry: the seed and mask of `TURN_CHANNEL_TABLE`
    /// (mask 0: the table is off).
    pub const CHANNEL_TABLE_INFO: &str = "TURN_CHANNEL_TABLE_INFO";
    /// `Array<PeerSlot>` (mmapable, a power of two of entries): the IPv4 channel
    /// bindings' peer rules in an open-addressed table the kernel probes before
    /// `TURN_PEERS`; see [`super::PeerSlot`].
    pub const PEER_TABLE: &str = "TURN_PEER_TABLE";
    /// `Array<SlotTableInfo>` of one entry: the seed and mask of `TURN_PEER_TABLE` (mask
    /// 0: the table is off).
    pub const PEER_TABLE_INFO: &str = "TURN_PEER_TABLE_INFO";
    /// `HashMap<PeerKey, PeerRule>`: UDP from a peer to a relay port → the client, as
    /// ChannelData (exact peer port, `channel != 0`) or as a Data indication (the
    /// permission entry: `peer_port == [0, 0]`, `channel == [0, 0]`).
    pub const PEERS: &str = "TURN_PEERS";
    /// `HashMap<AllocKey, AllocRule>`: a client's UDP 5-tuple → its allocation (used for
    /// Send indications relayed in the kernel).
    pub const ALLOCS: &str = "TURN_ALLOCS";
    /// `PerCpuArray<RuleStats>` of [`super::MAX_RULES`] entries, indexed by a rule's
    /// `stats_idx`: packets and bytes relayed by that rule in the kernel.
    pub const RULE_STATS: &str = "TURN_RULE_STATS";
    /// `Array<Bandwidth>` of [`super::MAX_ALLOCATIONS`] entries, indexed by `alloc_idx`:
    /// the per-allocation bandwidth limit enforced in the kernel.
    pub const BANDWIDTH: &str = "TURN_BANDWIDTH";
    /// `Array<TurnSettings>` of one entry.
    pub const SETTINGS: &str = "TURN_SETTINGS";
    /// `HashMap<u32, u32>` of [`super::MAX_EGRESS`] entries: the ifindexes (value 1) the
    /// kernel may send relayed frames out of, with [`super::SETTING_EGRESS_CHECKED`]:
    /// the interfaces the program is attached to natively that take XDP frames. Pinned: a restarted daemon's program
    /// relays through the same ones until that daemon rewrites them.
    pub const EGRESS: &str = "TURN_EGRESS";
    /// `LruHashMap<NextHopKey, NextHop>`: `bpf_fib_lookup` results reused for
    /// `TurnSettings::next_hop_ttl_ms` (written only by the kernel).
    pub const NEXT_HOPS: &str = "TURN_NEXT_HOPS";
    /// `Array<TurnClock>` of one entry: how the kernel turns jiffies into
    /// CLOCK_MONOTONIC nanoseconds; all zero (the default) = read the coarse clock. Not
    /// pinned: every daemon calibrates its own program's.
    pub const CLOCK: &str = "TURN_CLOCK";
    /// `PerCpuArray<HopSlot>` of [`super::HOP_SLOTS`] entries, indexed by a rule's
    /// `stats_idx` modulo their count: each CPU's copy of the next hops its rules used,
    /// in front of `TURN_NEXT_HOPS` (written only by the kernel, not pinned).
    pub const HOP_SLOTS: &str = "TURN_HOP_SLOTS";
    /// `XskMap` of [`super::XSK_SOCKETS`] entries, indexed by [`super::xsk_key`] (the
    /// ingress interface's slot in `TURN_XSK_IFACES`, then the RX queue): the AF_XDP
    /// socket that frames steered there go to (per process: not pinned).
    pub const XSKS: &str = "TURN_XSKS";
    /// `Array<u8>` of [`super::XSK_PORTS_ENTRIES`] entries, indexed by UDP destination port
    /// (host order): what the port is to the AF_XDP steering ([`super::XSK_PORT_NONE`],
    /// [`super::XSK_PORT_LISTEN`] or [`super::xsk_port_owner`]); not pinned.
    pub const XSK_PORTS: &str = "TURN_XSK_PORTS";
    /// `Array<u32>` of one entry: the number of workers owning AF_XDP sockets; 0 (the
    /// default) turns the steering off. Not pinned.
    pub const XSK_WORKERS: &str = "TURN_XSK_WORKERS";
    /// `Array<u32>` of [`super::MAX_XSK_IFACES`] entries: the ifindexes whose frames are
    /// steered, by slot (0 = a free slot); a frame of any other interface passes up. Not
    /// pinned.
    pub const XSK_IFACES: &str = "TURN_XSK_IFACES";
    /// `PerCpuArray<u64>` of one entry: frames redirected to an AF_XDP socket. Not pinned.
    pub const XSK_STATS: &str = "TURN_XSK_STATS";
}

/// Entries in `TURN_RULE_STATS` (and the largest `stats_idx` + 1).
pub const MAX_RULES: u32 = 131_072;
/// Entries in `TURN_BANDWIDTH` (and the largest `alloc_idx` + 1).
pub const MAX_ALLOCATIONS: u32 = 65_536;
/// Entries in each of the hash maps.
pub const MAX_MAP_ENTRIES: u32 = 131_072;

/// How much earlier than the lifetime's end the daemon writes a rule's `expires_ns`: more
/// than the coarse clock's lag (one tick: 10 ms at HZ=100, 4 ms at 250, 1 ms at 1000),
/// so that the kernel stops relaying before the lifetime ends on any kernel, and
/// userspace relays the last few milliseconds.
pub const COARSE_CLOCK_SLACK_NS: u64 = 20_000_000;

/// Rule flag: set DF on the packets this rule sends (IPv4).
pub const RULE_DONT_FRAGMENT: u16 = 1;

/// The `alloc_idx` a rule carries when its allocation has no bandwidth limit: outside
/// `TURN_BANDWIDTH`, so the kernel finds no budget entry and charges nothing. An
/// unlimited allocation's frames then touch no budget memory at all (one cache line less
/// per frame with many allocations); the daemon still owns a real index for it.
pub const NO_BUDGET: u32 = u32::MAX;

/// Key of `TURN_CHANNELS`: the client's 5-tuple (UDP implied) and the channel number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The client's (source) address.
    pub client_addr: [u8; 16],
    /// The relay's listen (destination) address the client sends to.
    pub server_addr: [u8; 16],
    /// The client's port.
    pub client_port: WirePort,
    /// The listen port.
    pub server_port: WirePort,
    /// The channel number (0x4000–0x4FFF, or 0x7FFF with the legacy range).
    pub channel: WirePort,
    /// Zero.
    pub _pad: [u8; 2],
}

impl ChannelKey {
    /// The compact key of a rule for `TURN_CHANNELS_V4` (client and listen address
    /// both IPv4-mapped); None for any other rule.
    pub const fn v4(&self) -> Option<ChannelKeyV4> {
        if !is_mapped_v4(&self.client_addr) || !is_mapped_v4(&self.server_addr) {
            return None;
        }
        Some(ChannelKeyV4 {
            client_addr: ipv4_of(&self.client_addr),
            server_addr: ipv4_of(&self.server_addr),
            client_port: self.client_port,
            server_port: self.server_port,
            channel: self.channel,
            _pad: [0; 2],
        })
    }
}

/// Key of `TURN_CHANNELS_V4`: a [`ChannelKey`] whose addresses are IPv4, with the
/// addresses in 4 bytes (the layout the kernel builds from an IPv4 frame: source and
/// destination address, then the UDP ports, then the channel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKeyV4 {
    /// The client's (source) IPv4 address.
    pub client_addr: [u8; 4],
    /// The listen (destination) IPv4 address.
    pub server_addr: [u8; 4],
    /// The client's port.
    pub client_port: WirePort,
    /// The listen port.
    pub server_port: WirePort,
    /// The channel number.
    pub channel: WirePort,
    /// Zero.
    pub _pad: [u8; 2],
}

impl ChannelKeyV4 {
    /// The key of a vacated slot ([`VACATED_KEY`]).
    pub const VACATED: ChannelKeyV4 = ChannelKeyV4 {
        client_addr: [0xFF; 4],
        server_addr: [0xFF; 4],
        client_port: [0xFF; 2],
        server_port: [0xFF; 2],
        channel: [0xFF; 2],
        _pad: [0xFF; 2],
    };

    /// The same key in the 16-byte form of `TURN_CHANNELS`.
    pub const fn widen(&self) -> ChannelKey {
        ChannelKey {
            client_addr: mapped_v4(self.client_addr),
            server_addr: mapped_v4(self.server_addr),
            client_port: self.client_port,
            server_port: self.server_port,
            channel: self.channel,
            _pad: [0; 2],
        }
    }
}

/// Value of `TURN_CHANNELS` and `TURN_CHANNELS_V4`: where the channel's data goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelRule {
    /// CLOCK_MONOTONIC deadline: the earliest of the channel's, the permission's and the
    /// allocation's expiry.
    pub expires_ns: u64,
    /// The allocation's relayed address (source of the datagram to the peer).
    pub relay_addr: [u8; 16],
    /// The peer's address.
    pub peer_addr: [u8; 16],
    /// The relayed port.
    pub relay_port: WirePort,
    /// The peer's port.
    pub peer_port: WirePort,
    /// `RULE_*` flags.
    pub flags: u16,
    /// Zero.
    pub _pad: u16,
    /// Index into `TURN_RULE_STATS`.
    pub stats_idx: u32,
    /// Index into `TURN_BANDWIDTH`.
    pub alloc_idx: u32,
}

/// How many consecutive slots of `TURN_CHANNEL_TABLE` or `TURN_PEER_TABLE` a key may
/// occupy, from its home slot on. The kernel probes at most these, and stops at the first
/// empty slot: a key is never stored past an empty slot of its probe sequence, and a
/// removed rule's slot holds [`VACATED_KEY`] (not empty) until the table is rebuilt. A
/// rule that finds no free slot stays in its hash map.
///
/// Why 16: at the most a table is filled (11/16), 4 probes left about 5% of the rules in
/// the hash map, whose lookup cost those frames ~200 ns more (`lookup_nulls_elem_raw`, 2.8%
/// of the relaying CPU at 10 000 allocations); with 16, about 0.2%. A hit still reads
/// 1.4–1.7 slots on average, and a miss stops at the end of its key's cluster.
pub const CHANNEL_PROBES: u32 = 16;

/// The key bytes of a slot whose rule was removed: all `0xFF`. No frame has this key (a
/// frame's key has zero padding), and it is not the all-zero key of an empty slot, so
/// probes go on past it.
pub const VACATED_KEY: [u8; 16] = [0xFF; 16];

/// A slot of `TURN_CHANNEL_TABLE`: an IPv4 client's channel rule whose relayed and peer
/// addresses are IPv4 too, in one cache line with its key.
///
/// Why: with many allocations the kernel hash map costs three cache misses per frame
/// (its bucket, then an element of 120 bytes: key and value straddle two lines) and a
/// helper call; `relay-bench turn-xdp` measured ~60 ns of the ~490 per frame at 10 000
/// allocations in `lookup_nulls_elem_raw`. This table is an array the program indexes
/// itself (the verifier inlines the access): one line per hit.
///
/// Torn reads: the daemon writes a slot in place through an mmap, as a seqlock: `seq`
/// odd while it writes, then even again. The program reads `seq`, the key and value,
/// then `seq` again, and uses the slot only if both reads are equal and even; otherwise
/// it treats the rule as absent and the frame passes up, where userspace relays it. That
/// relies on loads not being reordered with each other (x86's memory order; the daemon
/// only turns the table on for x86_64).
///
/// An empty slot has an all-zero key, which no frame matches (channel numbers start at
/// 0x4000); a vacated one has [`VACATED_KEY`] (see [`CHANNEL_PROBES`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelSlot {
    /// Seqlock word: even when stable, odd while the daemon rewrites the slot.
    pub seq: u32,
    /// Zero.
    pub _pad0: u32,
    /// The rule's key; all zero in an empty slot.
    pub key: ChannelKeyV4,
    /// As [`ChannelRule::expires_ns`].
    pub expires_ns: u64,
    /// The relayed IPv4 address.
    pub relay_addr: [u8; 4],
    /// The peer's IPv4 address.
    pub peer_addr: [u8; 4],
    /// The relayed port.
    pub relay_port: WirePort,
    /// The peer's port.
    pub peer_port: WirePort,
    /// `RULE_*` flags.
    pub flags: u16,
    /// Zero.
    pub _pad1: u16,
    /// Index into `TURN_RULE_STATS`.
    pub stats_idx: u32,
    /// Index into `TURN_BANDWIDTH`.
    pub alloc_idx: u32,
    /// Zero.
    pub _pad2: [u8; 8],
}

impl ChannelSlot {
    /// The slot holding `rule` under `key` (with `seq` 0); None when the rule's relayed
    /// or peer address is not IPv4 (such rules stay in `TURN_CHANNELS_V4`).
    pub const fn compact(key: &ChannelKeyV4, rule: &ChannelRule) -> Option<ChannelSlot> {
        if !is_mapped_v4(&rule.relay_addr) || !is_mapped_v4(&rule.peer_addr) {
            return None;
        }
        Some(ChannelSlot {
            seq: 0,
            _pad0: 0,
            key: *key,
            expires_ns: rule.expires_ns,
            relay_addr: ipv4_of(&rule.relay_addr),
            peer_addr: ipv4_of(&rule.peer_addr),
            relay_port: rule.relay_port,
            peer_port: rule.peer_port,
            flags: rule.flags,
            _pad1: 0,
            stats_idx: rule.stats_idx,
            alloc_idx: rule.alloc_idx,
            _pad2: [0; 8],
        })
    }

    /// The rule this slot holds, in the form of `TURN_CHANNELS`.
    pub const fn rule(&self) -> ChannelRule {
        ChannelRule {
            expires_ns: self.expires_ns,
            relay_addr: mapped_v4(self.relay_addr),
            peer_addr: mapped_v4(self.peer_addr),
            relay_port: self.relay_port,
            peer_port: self.peer_port,
            flags: self.flags,
            _pad: 0,
            stats_idx: self.stats_idx,
            alloc_idx: self.alloc_idx,
        }
    }
}

/// Value of `TURN_CHANNEL_TABLE_INFO[0]` and `TURN_PEER_TABLE_INFO[0]`: how keys map to
/// the slots of their table. `mask == 0` (the default): the table is off, the kernel goes
/// straight to the hash maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotTableInfo {
    /// Random per table, so that slot collisions cannot be aimed at from outside (they
    /// would only push rules back into `TURN_CHANNELS_V4`, never stop relaying).
    pub seed: u64,
    /// Slots − 1 (the slot count is a power of two).
    pub mask: u32,
    /// The table's first slot in its map: slot `i` of the table is map entry
    /// `base + i`. The daemon lays a resized table out beside the one the kernel reads
    /// and then moves `base` and `mask` together, so the kernel keeps a full table
    /// throughout. Zero for a daemon that predates it (the field was padding).
    pub base: u32,
}

/// A [`ChannelKeyV4`] as the two native-order words the kernel builds it from.
pub const fn channel_key_words(k: &ChannelKeyV4) -> (u64, u64) {
    let (a, s, c, v, ch) = (
        k.client_addr,
        k.server_addr,
        k.client_port,
        k.server_port,
        k.channel,
    );
    (
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], s[0], s[1], s[2], s[3]]),
        u64::from_ne_bytes([c[0], c[1], v[0], v[1], ch[0], ch[1], k._pad[0], k._pad[1]]),
    )
}

/// The home slot of a key (its two words) in a `TURN_CHANNEL_TABLE` or
/// `TURN_PEER_TABLE` with `info`: a seeded multiply-xor hash, computed the same way by
/// the kernel and the daemon.
#[inline(always)]
pub const fn slot_home(w0: u64, w1: u64, info: &SlotTableInfo) -> u32 {
    let a = (w0 ^ info.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = (w1 ^ info.seed.rotate_left(32)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let h = (a ^ b.rotate_left(31)).wrapping_mul(0x1656_67B1_9E37_79F9);
    ((h >> 32) as u32) & info.mask
}

/// Key of `TURN_PEERS`: a datagram from `peer` to the relayed address `relay`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The peer's (source) address.
    pub peer_addr: [u8; 16],
    /// The relayed (destination) address.
    pub relay_addr: [u8; 16],
    /// The peer's port; `[0, 0]` in the permission entry (any port).
    pub peer_port: WirePort,
    /// The relayed port.
    pub relay_port: WirePort,
}

/// Value of `TURN_PEERS`: the client to deliver to, and how.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerRule {
    /// CLOCK_MONOTONIC deadline (earliest of permission, channel and allocation expiry).
    pub expires_ns: u64,
    /// The client's address.
    pub client_addr: [u8; 16],
    /// The relay's listen address the client uses (source of what we send it).
    pub server_addr: [u8; 16],
    /// The client's port.
    pub client_port: WirePort,
    /// The listen port.
    pub server_port: WirePort,
    /// The channel to prepend; `[0, 0]`: build a Data indication.
    pub channel: WirePort,
    /// `RULE_*` flags.
    pub flags: u16,
    /// Index into `TURN_RULE_STATS`.
    pub stats_idx: u32,
    /// Index into `TURN_BANDWIDTH`.
    pub alloc_idx: u32,
}

impl PeerKey {
    /// The compact key of a rule for `TURN_PEER_TABLE` (peer and relayed address both
    /// IPv4-mapped); None for any other rule.
    pub const fn v4(&self) -> Option<PeerKeyV4> {
        if !is_mapped_v4(&self.peer_addr) || !is_mapped_v4(&self.relay_addr) {
            return None;
        }
        Some(PeerKeyV4 {
            peer_addr: ipv4_of(&self.peer_addr),
            relay_addr: ipv4_of(&self.relay_addr),
            peer_port: self.peer_port,
            relay_port: self.relay_port,
            _pad: [0; 4],
        })
    }
}

/// The key of a `TURN_PEER_TABLE` slot: a [`PeerKey`] whose addresses are IPv4, in the
/// layout the kernel builds from an IPv4 frame (source and destination address, then the
/// UDP ports, then a zero word).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKeyV4 {
    /// The peer's (source) IPv4 address.
    pub peer_addr: [u8; 4],
    /// The relayed (destination) IPv4 address.
    pub relay_addr: [u8; 4],
    /// The peer's port (never zero in the table: permission entries stay in `TURN_PEERS`).
    pub peer_port: WirePort,
    /// The relayed port.
    pub relay_port: WirePort,
    /// Zero.
    pub _pad: [u8; 4],
}

impl PeerKeyV4 {
    /// The key of a vacated slot ([`VACATED_KEY`]).
    pub const VACATED: PeerKeyV4 = PeerKeyV4 {
        peer_addr: [0xFF; 4],
        relay_addr: [0xFF; 4],
        peer_port: [0xFF; 2],
        relay_port: [0xFF; 2],
        _pad: [0xFF; 4],
    };

    /// The same key in the 36-byte form of `TURN_PEERS`.
    pub const fn widen(&self) -> PeerKey {
        PeerKey {
            peer_addr: mapped_v4(self.peer_addr),
            relay_addr: mapped_v4(self.relay_addr),
            peer_port: self.peer_port,
            relay_port: self.relay_port,
        }
    }

    /// The key as the two native-order words the kernel builds it from.
    pub const fn words(&self) -> (u64, u64) {
        let (a, r, p, v, z) = (
            self.peer_addr,
            self.relay_addr,
            self.peer_port,
            self.relay_port,
            self._pad,
        );
        (
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], r[0], r[1], r[2], r[3]]),
            u64::from_ne_bytes([p[0], p[1], v[0], v[1], z[0], z[1], z[2], z[3]]),
        )
    }
}

/// A slot of `TURN_PEER_TABLE`: the peer rule of an IPv4 channel binding (peer, relayed,
/// client and listen address all IPv4), in one cache line with its key.
///
/// Why: the same as [`ChannelSlot`], for the other direction. A `TURN_PEERS` element is
/// 144 bytes (a 36-byte key hashed per frame, a 56-byte value), three lines to miss with
/// many allocations; `relay-bench turn-xdp --direction peer-to-client` measured the XDP
/// path at 0.63× the floor at 10 000 allocations with it. The slot is written and read
/// as a seqlock exactly like a [`ChannelSlot`] (same offsets for `seq`, the key and the
/// deadline).
///
/// Only channel bindings live here (`channel != 0`, a real peer port). Permission
/// entries (Data indications) and rules with an IPv6 address stay in `TURN_PEERS`, which
/// the kernel consults when the table has no slot for the frame. An empty slot has an
/// all-zero key, which no frame matches (relayed ports are never 0); a vacated one has
/// [`VACATED_KEY`] (see [`CHANNEL_PROBES`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSlot {
    /// Seqlock word: even when stable, odd while the daemon rewrites the slot.
    pub seq: u32,
    /// Zero.
    pub _pad0: u32,
    /// The rule's key; all zero in an empty slot.
    pub key: PeerKeyV4,
    /// As [`PeerRule::expires_ns`].
    pub expires_ns: u64,
    /// The client's IPv4 address.
    pub client_addr: [u8; 4],
    /// The listen IPv4 address.
    pub server_addr: [u8; 4],
    /// The client's port.
    pub client_port: WirePort,
    /// The listen port.
    pub server_port: WirePort,
    /// The channel to prepend (never zero here).
    pub channel: WirePort,
    /// `RULE_*` flags.
    pub flags: u16,
    /// Index into `TURN_RULE_STATS`.
    pub stats_idx: u32,
    /// Index into `TURN_BANDWIDTH`.
    pub alloc_idx: u32,
    /// Zero.
    pub _pad2: [u8; 8],
}

impl PeerSlot {
    /// The slot holding `rule` under `key` (with `seq` 0); None for a rule that stays in
    /// `TURN_PEERS`: a permission entry (no channel, or any peer port), or a client or
    /// listen address that is not IPv4.
    pub const fn compact(key: &PeerKeyV4, rule: &PeerRule) -> Option<PeerSlot> {
        if !is_mapped_v4(&rule.client_addr)
            || !is_mapped_v4(&rule.server_addr)
            || (rule.channel[0] == 0 && rule.channel[1] == 0)
            || (key.peer_port[0] == 0 && key.peer_port[1] == 0)
        {
            return None;
        }
        Some(PeerSlot {
            seq: 0,
            _pad0: 0,
            key: *key,
            expires_ns: rule.expires_ns,
            client_addr: ipv4_of(&rule.client_addr),
            server_addr: ipv4_of(&rule.server_addr),
            client_port: rule.client_port,
            server_port: rule.server_port,
            channel: rule.channel,
            flags: rule.flags,
            stats_idx: rule.stats_idx,
            alloc_idx: rule.alloc_idx,
            _pad2: [0; 8],
        })
    }

    /// The rule this slot holds, in the form of `TURN_PEERS`.
    pub const fn rule(&self) -> PeerRule {
        PeerRule {
            expires_ns: self.expires_ns,
            client_addr: mapped_v4(self.client_addr),
            server_addr: mapped_v4(self.server_addr),
            client_port: self.client_port,
            server_port: self.server_port,
            channel: self.channel,
            flags: self.flags,
            stats_idx: self.stats_idx,
            alloc_idx: self.alloc_idx,
        }
    }
}

/// Key of `TURN_ALLOCS`: a client's UDP 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    /// The client's address.
    pub client_addr: [u8; 16],
    /// The listen address.
    pub server_addr: [u8; 16],
    /// The client's port.
    pub client_port: WirePort,
    /// The listen port.
    pub server_port: WirePort,
}

/// Value of `TURN_ALLOCS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocRule {
    /// CLOCK_MONOTONIC deadline of the allocation.
    pub expires_ns: u64,
    /// The relayed address.
    pub relay_addr: [u8; 16],
    /// The relayed port.
    pub relay_port: WirePort,
    /// `RULE_*` flags.
    pub flags: u16,
    /// Index into `TURN_RULE_STATS` (Send indications relayed in the kernel).
    pub stats_idx: u32,
    /// Index into `TURN_BANDWIDTH`.
    pub alloc_idx: u32,
    /// Zero.
    pub _pad: u32,
}

/// Value of `TURN_RULE_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Packets relayed.
    pub packets: u64,
    /// Bytes relayed: the application data (ChannelData/DATA payload), as userspace counts.
    pub bytes: u64,
}

/// Value of `TURN_BANDWIDTH`: a fixed-window byte budget shared by all CPUs (updated with
/// atomic adds). `rate == 0` means unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bandwidth {
    /// Bytes per second allowed (both directions together, payload bytes).
    pub rate: u64,
    /// Start of the current window (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// Bytes used in the current window.
    pub window_bytes: u64,
    /// Packets dropped for exceeding the budget.
    pub dropped: u64,
}

/// Length of a bandwidth window.
pub const BANDWIDTH_WINDOW_NS: u64 = 100_000_000;

/// Value of `TURN_SETTINGS[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnSettings {
    /// `SETTING_*` flags; 0 = TURN relaying in the kernel off (everything passes up).
    pub flags: u32,
    /// Lowest relayed port (host order).
    pub relay_port_min: u16,
    /// Highest relayed port (host order).
    pub relay_port_max: u16,
    /// How long a next hop found by `bpf_fib_lookup` is reused from `TURN_NEXT_HOPS`
    /// (milliseconds); 0 = no cache (every relayed frame does its own FIB lookup).
    pub next_hop_ttl_ms: u32,
    /// The interface whose FIB input path the lookups take (`params.ifindex`); 0 = the
    /// frame's ingress interface. Forwarding must be on for that interface only.
    pub fib_ifindex: u32,
}

/// Value of `TURN_CLOCK[0]`: the rule clock from jiffies, `now = jiffies × tick_ns +
/// offset_ns` (wrapping), used while `tick_ns != 0`.
///
/// Why: `bpf_ktime_get_coarse_ns` is a helper call with a seqcount read of the
/// timekeeper, about 25 ns per relayed frame in a VM (measured with `relay-bench
/// turn-xdp`, an eighth of the program's time at one allocation), while `bpf_jiffies64`
/// is inlined into one load. The two clocks tick together: the kernel's tick code
/// advances jiffies by whole `TICK_NSEC` steps of CLOCK_MONOTONIC, in the same update as
/// the coarse clock. So the daemon measures the tick once (`TICK_NSEC` of a known `HZ`)
/// and places the offset so that `now` is the END of the current jiffy: it runs ahead of
/// CLOCK_MONOTONIC by at most one tick (rules stop up to a tick early, userspace relays
/// the rest), and lags only as jiffies themselves lag, which the coarse clock does too
/// ([`COARSE_CLOCK_SLACK_NS`] covers it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnClock {
    /// Nanoseconds per jiffy (`TICK_NSEC`); 0 = not calibrated: the coarse clock.
    pub tick_ns: u64,
    /// Added (wrapping) to `jiffies × tick_ns`.
    pub offset_ns: u64,
}

/// The frame given to `relay_clock_probe` through `BPF_PROG_TEST_RUN`: the program
/// overwrites both fields (XDP_PASS), read back from `data_out`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    /// `bpf_jiffies64()`.
    pub jiffies: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC), read right after.
    pub mono_ns: u64,
}

/// Setting: relay ChannelData and peer data in the kernel.
pub const SETTING_ENABLED: u32 = 1;
/// Setting: build Data indications in the kernel (otherwise pass such peer data up).
pub const SETTING_DATA_INDICATIONS: u32 = 2;
/// Setting: relay Send indications in the kernel (otherwise pass them up).
pub const SETTING_SEND_INDICATIONS: u32 = 4;
/// Setting: relay only out of the interfaces in `TURN_EGRESS`; a frame whose next hop is
/// through any other passes up (`TURN_FIB_PASSED`) and the stack sends it. Why: an
/// XDP redirect from native XDP to an interface that cannot take one (a VLAN or bridge
/// device, a driver without `ndo_xdp_xmit`, a NIC whose XDP transmit rings exist only
/// while it has a program of its own, anything attached in generic mode) loses the
/// frame, where userspace would have relayed it. The daemon leaves it off when every
/// attachment is generic: a generic redirect is a plain transmit, which any device takes.
pub const SETTING_EGRESS_CHECKED: u32 = 8;

/// Entries of `TURN_EGRESS`.
pub const MAX_EGRESS: u32 = 64;

/// Entries in `TURN_NEXT_HOPS` (least recently used ones are evicted).
pub const MAX_NEXT_HOPS: u32 = 65_536;

/// Entries in each CPU's `TURN_HOP_SLOTS` (a power of two; 256 KiB per CPU). A rule's
/// slot is its `stats_idx` modulo this: up to this many active rules per CPU never evict
/// each other's next hop.
pub const HOP_SLOTS: u32 = 4096;

/// Value of `TURN_HOP_SLOTS`: a `TURN_NEXT_HOPS` entry with the key it belongs to (a slot
/// is shared by rules whose `stats_idx` differ by a multiple of [`HOP_SLOTS`], and an
/// index is reused by later rules: the key says whose hop it holds). One cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopSlot {
    /// The destination and source the hop was found for.
    pub key: NextHopKey,
    /// The hop, with the deadline of the `TURN_NEXT_HOPS` entry it came from.
    pub hop: NextHop,
}

/// Key of `TURN_NEXT_HOPS`: what the FIB result depends on for a relayed frame (the
/// lookup interface is one per program; TOS and ports only matter to policy rules that
/// select on them, which the cache does not model).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NextHopKey {
    /// Destination address (mapped form).
    pub dst: [u8; 16],
    /// Source address (mapped form): the relay address the frame leaves from.
    pub src: [u8; 16],
}

/// Value of `TURN_NEXT_HOPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// CLOCK_MONOTONIC deadline after which the FIB is asked again.
    pub expires_ns: u64,
    /// Egress interface.
    pub ifindex: u32,
    /// The route's MTU (`mtu_result`); larger frames pass up.
    pub mtu: u16,
    /// Zero.
    pub _pad: u16,
    /// The egress interface's MAC.
    pub smac: [u8; 6],
    /// The next hop's MAC.
    pub dmac: [u8; 6],
    /// Zero.
    pub _pad2: [u8; 4],
}

// ---------- AF_XDP steering (userspace data path) ----------
//
// `relay_xdp` hands frames it would pass up (XDP_PASS) to AF_XDP sockets instead when they
// are UDP for a port in `TURN_XSK_PORTS` (see [`xsk_port_steers`]); the kernel-handled
// cases (Binding answers, TURN frames relayed in the kernel) are unaffected.

/// Entries in `TURN_XSKS`: RX queues 0..64 can have an AF_XDP socket; frames received on
/// a higher queue are passed up as before.
pub const MAX_XSK_QUEUES: u32 = 64;
/// Interfaces whose frames can be steered (slots of `TURN_XSK_IFACES`).
pub const MAX_XSK_IFACES: u32 = 4;
/// Entries in `TURN_XSKS`: a socket per (interface slot, RX queue).
pub const XSK_SOCKETS: u32 = MAX_XSK_IFACES * MAX_XSK_QUEUES;

/// The `TURN_XSKS` key of RX queue `queue` of the interface in slot `slot`, or None
/// when either is out of range (such frames are not steered).
#[inline(always)]
pub const fn xsk_key(slot: u32, queue: u32) -> Option<u32> {
    if slot < MAX_XSK_IFACES && queue < MAX_XSK_QUEUES {
        Some(slot * MAX_XSK_QUEUES + queue)
    } else {
        None
    }
}

/// Entries in `TURN_XSK_PORTS`: one per UDP port.
pub const XSK_PORTS_ENTRIES: u32 = 65_536;
/// `TURN_XSK_PORTS` value: the port is not steered (frames pass up as before).
pub const XSK_PORT_NONE: u8 = 0;
/// `TURN_XSK_PORTS` value: a TURN listen port: steered to the socket of the queue the
/// frame arrived on, whichever worker owns that queue.
pub const XSK_PORT_LISTEN: u8 = 0xFF;
/// The most workers the port encoding can name (`w + 1` for worker `w`: 1..=0xFE).
pub const MAX_XSK_WORKERS: u32 = 0xFE;

/// The `TURN_XSK_PORTS` value of a relayed port owned by worker `worker`, or None when
/// the encoding cannot name it (`worker >= MAX_XSK_WORKERS`).
pub const fn xsk_port_owner(worker: u32) -> Option<u8> {
    if worker < MAX_XSK_WORKERS {
        Some(worker as u8 + 1)
    } else {
        None
    }
}

/// The worker owning a relayed port of `TURN_XSK_PORTS` value `kind`, if `kind` names one
/// (not [`XSK_PORT_NONE`], not [`XSK_PORT_LISTEN`]).
pub const fn xsk_port_worker(kind: u8) -> Option<u32> {
    if kind == XSK_PORT_NONE || kind == XSK_PORT_LISTEN {
        None
    } else {
        Some(kind as u32 - 1)
    }
}

/// Whether a frame for a port of `TURN_XSK_PORTS` value `kind`, received on RX queue
/// `queue`, goes to that queue's AF_XDP socket when `workers` workers own the sockets
/// (queue `q` belongs to worker `q % workers`): never with `workers == 0` (steering off)
/// or an unsteered port; always for a listen port; for a relayed port only on a queue
/// of its owner (elsewhere the owner's kernel socket receives it). The XDP program calls
/// exactly this.
#[inline(always)]
pub const fn xsk_port_steers(kind: u8, queue: u32, workers: u32) -> bool {
    if workers == 0 || kind == XSK_PORT_NONE {
        return false;
    }
    if kind == XSK_PORT_LISTEN {
        return true;
    }
    let owner = kind as u32 - 1;
    owner < workers && queue % workers == owner
}

// ---------- next-hop probe (`relay_fib_probe`) ----------

/// `FibProbeRequest::family` of IPv4 (`AF_INET`).
pub const FIB_PROBE_V4: u8 = 2;
/// `FibProbeRequest::family` of IPv6 (`AF_INET6`).
pub const FIB_PROBE_V6: u8 = 10;

/// What `relay_fib_probe` looks up: the route a relayed frame from `src` to `dst` would
/// take, asked exactly as the TURN fast path asks `bpf_fib_lookup`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibProbeRequest {
    /// [`FIB_PROBE_V4`] or [`FIB_PROBE_V6`].
    pub family: u8,
    /// The IPv4 TOS of the frame (the fast path passes it; IPv6 passes no flow info).
    pub tos: u8,
    /// The IP total length of the frame to send (host order): the route MTU check.
    pub tot_len: u16,
    /// Source port (network order; the fast path passes the output's ports).
    pub sport: WirePort,
    /// Destination port (network order).
    pub dport: WirePort,
    /// The interface whose FIB the lookup takes; 0 = as the fast path does
    /// (`TurnSettings::fib_ifindex`, else the ingress interface: `lo` of the calling
    /// thread's network namespace under `BPF_PROG_TEST_RUN`).
    pub ifindex: u32,
    /// Source address (network order; IPv4 in the first 4 bytes, the rest zero).
    pub src: [u8; 16],
    /// Destination address (same form).
    pub dst: [u8; 16],
}

/// What `relay_fib_probe` found (written into the frame after the request).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibProbeReply {
    /// `bpf_fib_lookup`'s return value: `BPF_FIB_LKUP_RET_*` (0 = success), or a
    /// negative errno; [`FIB_PROBE_NOT_RUN`] until the program wrote the reply.
    pub rc: i32,
    /// The egress interface (also set with `BPF_FIB_LKUP_RET_NO_NEIGH`).
    pub ifindex: u32,
    /// The route's MTU (success, and `BPF_FIB_LKUP_RET_FRAG_NEEDED`).
    pub mtu: u16,
    /// The egress interface's MAC (success only).
    pub smac: [u8; 6],
    /// The next hop's MAC (success only).
    pub dmac: [u8; 6],
    /// Zero.
    pub _pad: [u8; 2],
}

/// `FibProbeReply::rc` as userspace sends it: no `BPF_FIB_LKUP_RET_*` and no errno, so a
/// reply the program did not write is recognised.
pub const FIB_PROBE_NOT_RUN: i32 = i32::MIN;

/// The frame given to `relay_fib_probe` through `BPF_PROG_TEST_RUN`: the program reads
/// `request` and fills `reply`, and returns XDP_PASS (XDP_ABORTED when the frame is too
/// short or its family unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibProbeFrame {
    /// What to look up.
    pub request: FibProbeRequest,
    /// What was found.
    pub reply: FibProbeReply,
    /// Zero (the frame is 96 bytes; `BPF_PROG_TEST_RUN` wants at least an Ethernet header).
    pub _pad: [u8; 28],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays with
    // explicit padding fields, so every bit pattern is valid and there are no hidden
    // padding bytes.
    unsafe impl aya::Pod for super::ChannelKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ChannelRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ChannelKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Bandwidth {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TurnSettings {}
    // SAFETY: as above (64 bytes, every field explicit, no padding).
    unsafe impl aya::Pod for super::ChannelSlot {}
    // SAFETY: as above (64 bytes, every field explicit, no padding).
    unsafe impl aya::Pod for super::PeerSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SlotTableInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NextHopKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NextHop {}
    // SAFETY: as above (two such types, 64 bytes, no padding).
    unsafe impl aya::Pod for super::HopSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FibProbeRequest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FibProbeReply {}
    // SAFETY: as above (the two above and a byte array, 96 bytes, no padding).
    unsafe impl aya::Pod for super::FibProbeFrame {}
    // SAFETY: as above (two u64).
    unsafe impl aya::Pod for super::TurnClock {}
    // SAFETY: as above (two u64).
    unsafe impl aya::Pod for super::ClockSample {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn ipv4_channel_keys_narrow_and_widen_back() {
        let k = ChannelKey {
            client_addr: mapped_v4([192, 0, 2, 7]),
            server_addr: mapped_v4([198, 51, 100, 1]),
            client_port: wire(40000),
            server_port: wire(3478),
            channel: wire(0x4001),
            _pad: [0; 2],
        };
        let n = k.v4().expect("both IPv4");
        assert_eq!(n.client_addr, [192, 0, 2, 7]);
        assert_eq!(n.server_addr, [198, 51, 100, 1]);
        assert_eq!(n.widen(), k);
        let mut v6 = k;
        v6.client_addr[0] = 0x20;
        assert_eq!(v6.v4(), None);
        let mut v6 = k;
        v6.server_addr[10] = 0;
        assert_eq!(v6.v4(), None);
    }

    #[test]
    fn vacated_keys_are_the_contract_bytes_and_match_no_frame() {
        // SAFETY: a ChannelKeyV4 is 16 plain bytes without padding (see below).
        let c: [u8; 16] = unsafe { core::mem::transmute(ChannelKeyV4::VACATED) };
        // SAFETY: as above, for a PeerKeyV4.
        let p: [u8; 16] = unsafe { core::mem::transmute(PeerKeyV4::VACATED) };
        assert_eq!(c, VACATED_KEY);
        assert_eq!(p, VACATED_KEY);
        // The kernel builds a frame's key with zero padding: never these.
        assert_ne!(ChannelKeyV4::VACATED._pad, [0; 2]);
        assert_ne!(PeerKeyV4::VACATED._pad, [0; 4]);
        assert_ne!(ChannelKeyV4::VACATED, ChannelKeyV4::default());
        assert_ne!(PeerKeyV4::VACATED, PeerKeyV4::default());
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ChannelKey>(), 40);
        assert_eq!(size_of::<ChannelRule>(), 56);
        assert_eq!(size_of::<ChannelKeyV4>(), 16);
        assert_eq!(size_of::<PeerKey>(), 36);
        assert_eq!(size_of::<PeerRule>(), 56);
        assert_eq!(size_of::<AllocKey>(), 36);
        assert_eq!(size_of::<AllocRule>(), 40);
        assert_eq!(size_of::<RuleStats>(), 16);
        assert_eq!(size_of::<Bandwidth>(), 32);
        assert_eq!(size_of::<TurnSettings>(), 16);
        assert_eq!(size_of::<TurnClock>(), 16);
        assert_eq!(size_of::<ClockSample>(), 16);
        assert_eq!(size_of::<NextHopKey>(), 32);
        assert_eq!(size_of::<NextHop>(), 32);
        assert_eq!(size_of::<HopSlot>(), 64);
        assert_eq!(size_of::<ChannelSlot>(), 64);
        assert_eq!(core::mem::offset_of!(ChannelSlot, key), 8);
        assert_eq!(core::mem::offset_of!(ChannelSlot, expires_ns), 24);
        assert_eq!(core::mem::offset_of!(ChannelSlot, relay_addr), 32);
        assert_eq!(core::mem::offset_of!(ChannelSlot, relay_port), 40);
        assert_eq!(core::mem::offset_of!(ChannelSlot, stats_idx), 48);
        assert_eq!(size_of::<SlotTableInfo>(), 16);
        // The kernel reads both slots at the same offsets.
        assert_eq!(size_of::<PeerKeyV4>(), 16);
        assert_eq!(size_of::<PeerSlot>(), 64);
        assert_eq!(core::mem::offset_of!(PeerSlot, key), 8);
        assert_eq!(core::mem::offset_of!(PeerSlot, expires_ns), 24);
        assert_eq!(core::mem::offset_of!(PeerSlot, client_addr), 32);
        assert_eq!(core::mem::offset_of!(PeerSlot, client_port), 40);
        assert_eq!(core::mem::offset_of!(PeerSlot, channel), 44);
        assert_eq!(core::mem::offset_of!(PeerSlot, stats_idx), 48);
        assert!(HOP_SLOTS.is_power_of_two());
        assert_eq!(size_of::<FibProbeRequest>(), 44);
        assert_eq!(size_of::<FibProbeReply>(), 24);
        assert_eq!(size_of::<FibProbeFrame>(), 96);
        assert_eq!(core::mem::offset_of!(FibProbeFrame, reply), 44);
    }

    #[test]
    fn xsk_port_encoding_round_trips() {
        assert_eq!(xsk_port_owner(0), Some(1));
        assert_eq!(xsk_port_owner(MAX_XSK_WORKERS - 1), Some(0xFE));
        assert_eq!(xsk_port_owner(MAX_XSK_WORKERS), None);
        for w in 0..MAX_XSK_WORKERS {
            let kind = xsk_port_owner(w).expect("encodable");
            assert_ne!(kind, XSK_PORT_NONE);
            assert_ne!(kind, XSK_PORT_LISTEN);
            assert_eq!(xsk_port_worker(kind), Some(w));
        }
        assert_eq!(xsk_port_worker(XSK_PORT_NONE), None);
        assert_eq!(xsk_port_worker(XSK_PORT_LISTEN), None);
    }

    #[test]
    fn xsk_steering_decision() {
        // Steering off: nothing is steered, whatever the port says.
        for kind in [XSK_PORT_NONE, XSK_PORT_LISTEN, 1, 2, 0xFE] {
            for queue in [0, 1, 63, 64, u32::MAX] {
                assert!(
                    !xsk_port_steers(kind, queue, 0),
                    "kind {kind} queue {queue}"
                );
            }
        }
        // An unsteered port never is.
        for workers in [1, 2, 7, MAX_XSK_WORKERS] {
            for queue in [0, 1, 5, 63] {
                assert!(!xsk_port_steers(XSK_PORT_NONE, queue, workers));
            }
        }
        // A listen port is steered on every queue.
        for workers in [1, 2, 3] {
            for queue in 0..MAX_XSK_QUEUES {
                assert!(xsk_port_steers(XSK_PORT_LISTEN, queue, workers));
            }
        }
        // A relayed port: only on its owner's queues (queue % workers == owner).
        let w1 = xsk_port_owner(1).expect("encodable");
        let on: [u32; 4] = [1, 4, 7, 10];
        for queue in 0..12 {
            assert_eq!(
                xsk_port_steers(w1, queue, 3),
                on.contains(&queue),
                "queue {queue}"
            );
        }
        // One worker owns every queue.
        let w0 = xsk_port_owner(0).expect("encodable");
        for queue in 0..MAX_XSK_QUEUES {
            assert!(xsk_port_steers(w0, queue, 1));
        }
        // An owner beyond the worker count (a stale entry after fewer workers) is not
        // steered anywhere: the queue it would match does not exist among the workers.
        let w5 = xsk_port_owner(5).expect("encodable");
        for queue in 0..MAX_XSK_QUEUES {
            assert!(!xsk_port_steers(w5, queue, 3), "queue {queue}");
        }
        // The largest owner with the most workers.
        let last = xsk_port_owner(MAX_XSK_WORKERS - 1).expect("encodable");
        assert!(xsk_port_steers(last, MAX_XSK_WORKERS - 1, MAX_XSK_WORKERS));
        assert!(!xsk_port_steers(last, 0, MAX_XSK_WORKERS));
    }

    #[test]
    fn wire_order_and_mapping() {
        assert_eq!(wire(0x4001), [0x40, 0x01]);
        assert_eq!(unwire([0x0d, 0x96]), 3478);
        let m = mapped_v4([192, 0, 2, 1]);
        assert!(is_mapped_v4(&m));
        assert_eq!(&m[12..], &[192, 0, 2, 1]);
        assert!(!is_mapped_v4(&[0; 16]));
    }
}
