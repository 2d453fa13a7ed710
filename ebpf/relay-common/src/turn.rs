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
//!   therefore writes every rule deadline [`COARSE_CLOCK_SLACK_NS`] early.

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
    /// `LruHashMap<NextHopKey, NextHop>`: `bpf_fib_lookup` results reused for
    /// `TurnSettings::next_hop_ttl_ms` (written only by the kernel).
    pub const NEXT_HOPS: &str = "TURN_NEXT_HOPS";
    /// `PerCpuArray<HopSlot>` of [`super::HOP_SLOTS`] entries, indexed by a rule's
    /// `stats_idx` modulo their count: each CPU's copy of the next hops its rules used,
    /// in front of `TURN_NEXT_HOPS` (written only by the kernel, not pinned).
    pub const HOP_SLOTS: &str = "TURN_HOP_SLOTS";
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

/// Value of `TURN_CHANNELS`: where the channel's data goes.
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

/// Setting: relay ChannelData and peer data in the kernel.
pub const SETTING_ENABLED: u32 = 1;
/// Setting: build Data indications in the kernel (otherwise pass such peer data up).
pub const SETTING_DATA_INDICATIONS: u32 = 2;
/// Setting: relay Send indications in the kernel (otherwise pass them up).
pub const SETTING_SEND_INDICATIONS: u32 = 4;

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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays with
    // explicit padding fields, so every bit pattern is valid and there are no hidden
    // padding bytes.
    unsafe impl aya::Pod for super::ChannelKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ChannelRule {}
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NextHopKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NextHop {}
    // SAFETY: as above (two such types, 64 bytes, no padding).
    unsafe impl aya::Pod for super::HopSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ChannelKey>(), 40);
        assert_eq!(size_of::<ChannelRule>(), 56);
        assert_eq!(size_of::<PeerKey>(), 36);
        assert_eq!(size_of::<PeerRule>(), 56);
        assert_eq!(size_of::<AllocKey>(), 36);
        assert_eq!(size_of::<AllocRule>(), 40);
        assert_eq!(size_of::<RuleStats>(), 16);
        assert_eq!(size_of::<Bandwidth>(), 32);
        assert_eq!(size_of::<TurnSettings>(), 16);
        assert_eq!(size_of::<NextHopKey>(), 32);
        assert_eq!(size_of::<NextHop>(), 32);
        assert_eq!(size_of::<HopSlot>(), 64);
        assert!(HOP_SLOTS.is_power_of_two());
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
