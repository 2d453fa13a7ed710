//! Types and constants shared by the bench's XDP programs and `relay-bench` (included by
//! path from both sides: plain `#[repr(C)]` data, no dependencies).

/// Array map (1 entry, [`GenConfig`]): the generator's settings.
pub const GEN_CONFIG: &str = "GEN_CONFIG";
/// Per-CPU array (1 entry, u64): frames generated so far on this CPU.
pub const GEN_SEQ: &str = "GEN_SEQ";
/// Array map (1 entry, [`FloorConfig`]): the floor forwarder's rewrite.
pub const FLOOR_CONFIG: &str = "FLOOR_CONFIG";
/// Array map (1 entry, [`SinkConfig`]): what the sink counts.
pub const SINK_CONFIG: &str = "SINK_CONFIG";
/// Array map ([`GEN_PORTS_MAX`] u16, host order): the destination port of each
/// allocation when the generator sends from the peer ([`GenConfig::to_client`]).
pub const GEN_PORTS: &str = "GEN_PORTS";
/// Entries of [`GEN_PORTS`]: the most allocations the bench measures.
pub const GEN_PORTS_MAX: u32 = 20_000;
/// Per-CPU array ([`SINK_STAT_COUNT`] u64): packets, bytes, frames with a bad magic.
pub const SINK_STATS: &str = "SINK_STATS";
/// Per-CPU array ([`HIST_BUCKETS`] u64): one-way latency histogram.
pub const SINK_HIST: &str = "SINK_HIST";

/// XSK map ([`XSK_QUEUES`] entries): `relay-bench xsk-floor`'s receive socket, by queue.
pub const XSKS: &str = "XSKS";
/// Receive queues `bench_xsk` can steer (the socket is bound to queue 0).
pub const XSK_QUEUES: u32 = 4;

/// Program names.
pub const PROG_GEN: &str = "bench_gen";
/// The floor: strips the ChannelData header, rewrites addresses and ports, redirects.
pub const PROG_FLOOR: &str = "bench_floor";
/// The floor of the other direction: adds a ChannelData header to UDP from the peer,
/// rewrites addresses and ports, redirects.
pub const PROG_FLOOR_REV: &str = "bench_floor_rev";
/// Counts, measures latency, drops.
pub const PROG_SINK: &str = "bench_sink";
/// Path (f): steers ChannelData to the listen port into an AF_XDP socket.
pub const PROG_XSK: &str = "bench_xsk";
/// Passes everything (makes a veth receive XDP_TX'ed frames).
pub const PROG_PASS: &str = "bench_pass";
/// Drops everything: on the relay's veth it leaves the generator's own cost per frame
/// (what the XDP paths' CPU time is measured beyond).
pub const PROG_DROP: &str = "bench_drop";

/// Index in [`SINK_STATS`]: packets counted.
pub const SINK_PACKETS: u32 = 0;
/// Index in [`SINK_STATS`]: bytes (whole frames).
pub const SINK_BYTES: u32 = 1;
/// Index in [`SINK_STATS`]: UDP to the sink port without the bench's magic.
pub const SINK_BAD: u32 = 2;
/// Number of sink counters.
pub const SINK_STAT_COUNT: u32 = 3;

/// Histogram: sub-buckets per power of two (log-linear, 12.5% resolution).
pub const HIST_SUB_BITS: u32 = 3;
/// Histogram buckets: 64 powers of two × 8.
pub const HIST_BUCKETS: u32 = 64 << HIST_SUB_BITS;

/// The bench's payload magic (first 4 bytes after the ChannelData header).
pub const MAGIC: u32 = 0x5842_4e54;

/// Frame layout of a generated IPv4 ChannelData frame (no IP options).
pub const ETH_HLEN: usize = 14;
/// Offset of the IPv4 header.
pub const IP_OFF: usize = ETH_HLEN;
/// Offset of the UDP header.
pub const UDP_OFF: usize = IP_OFF + 20;
/// Offset of the UDP payload (the ChannelData header on the client side).
pub const UDP_PAYLOAD: usize = UDP_OFF + 8;
/// Offsets inside the application data (after the ChannelData header on the client side,
/// the whole UDP payload on the peer side): magic, allocation
/// index, sequence number (all u32, little-endian) and send time (u64 ns of
/// `bpf_ktime_get_ns`, little-endian).
pub const APP_MAGIC: usize = 0;
/// See [`APP_MAGIC`].
pub const APP_INDEX: usize = 4;
/// See [`APP_MAGIC`].
pub const APP_SEQ: usize = 8;
/// See [`APP_MAGIC`].
pub const APP_TIME: usize = 12;
/// Bytes of application data the programs read.
pub const APP_MIN: usize = 20;

/// The generator's settings. The frame template is BPF_PROG_TEST_RUN's `data_in`; the
/// program writes the allocation's port, index, sequence number, time and the UDP
/// checksum. From the client (`to_client == 0`) the frame is ChannelData and the port is
/// the source port `first_port + seq % allocations`; from the peer it is plain UDP and
/// the port is the destination, the allocation's relayed port from [`GEN_PORTS`].
///
/// Pacing happens in the program: with `rate` set, a frame is transmitted only while the
/// frames sent since `start_ns` stay within `rate` per second, the others are dropped
/// (cheap). BPF_PROG_TEST_RUN calls have a large fixed cost here (page pool set-up and
/// teardown), so pacing by the size of each call would send bursts that overrun a
/// veth's 256-frame ring; pacing per frame sends them evenly.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Number of allocations (source ports) to cycle through; at least 1.
    pub allocations: u32,
    /// First source port (host order; client side only).
    pub first_port: u32,
    /// Non-zero: the frame goes from the peer to the relayed ports (see above).
    pub to_client: u32,
    /// Zero (keeps the layout free of implicit padding).
    pub _pad: u32,
    /// One's-complement sum (native 16-bit loads, unfolded) of the pseudo-header and the
    /// UDP segment with source port, index, sequence, time and checksum all zero.
    pub csum_base: u64,
    /// Frames per second (0: as fast as possible).
    pub rate: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the step started.
    pub start_ns: u64,
    /// The template's first [`GEN_HEAD_LEN`] bytes, rewritten into every frame: live
    /// frames are recycled with whatever the receiving side's XDP program left in them
    /// (the floor and the relay move the headers), the kernel only resets the pointers.
    pub head: [u8; GEN_HEAD_LEN],
}

/// Bytes of the template restored in each frame: all headers, the ChannelData header and
/// the payload's fixed fields (a multiple of 8: no padding in [`GenConfig`]).
pub const GEN_HEAD_LEN: usize = 56;

/// The floor forwarder's rewrite: ChannelData in on the client side → UDP out of the
/// peer side, from the relay's peer-side address to the sink.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FloorConfig {
    /// Destination MAC (the peer's interface).
    pub dst_mac: [u8; 6],
    /// Source MAC (the relay's peer-side interface).
    pub src_mac: [u8; 6],
    /// The relay's peer-side IPv4 address (network order bytes).
    pub src_ip: [u8; 4],
    /// The peer's IPv4 address (network order bytes).
    pub dst_ip: [u8; 4],
    /// The TURN listen port (host order): only ChannelData to it is forwarded. In the
    /// other direction, the source port of what goes out to the client.
    pub listen_port: u16,
    /// The sink's port (host order). In the other direction, the client's port every
    /// frame goes to: the floor keeps no per-allocation state.
    pub sink_port: u16,
    /// ifindex of the relay's peer-side interface (redirect target); in the other
    /// direction, of its client-side interface.
    pub out_ifindex: u32,
    /// The other direction only: the peer's source port (host order); only UDP from it
    /// is relayed.
    pub peer_port: u16,
    /// Zero.
    pub _pad: u16,
}

/// What `bench_sink` counts: IPv4 UDP to a destination port in `port_lo..=port_hi`
/// carrying the bench's payload, right after the UDP header (peer side) or after a
/// ChannelData header (`channel_data != 0`, client side; there other UDP to those ports,
/// the relay's STUN answers, passes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkConfig {
    /// Lowest destination port (host order).
    pub port_lo: u16,
    /// Highest destination port (host order).
    pub port_hi: u16,
    /// Non-zero: the payload is ChannelData.
    pub channel_data: u16,
    /// Zero.
    pub _pad: u16,
}

/// The UDP checksum of a ChannelData frame once relayed as the floors relay it (`bench_floor`
/// in the kernel, `relay-bench xsk-floor` in userspace): an incremental update (RFC 1624)
/// of the frame's checksum `old`. Out go `removed`: the old source and destination
/// addresses (two words each), destination port, the UDP length twice (pseudo-header and
/// header) and the two words of the ChannelData header. In come `added`: the new
/// addresses, destination port and the new UDP length twice. The data itself moves by 4
/// bytes (even), so its sum is unchanged.
///
/// All words in one byte order, either: a one's-complement sum does not depend on it (RFC
/// 1071), and the result is in that order. No checksum (0) stays no checksum; a computed
/// 0 is sent as 0xFFFF.
///
/// The other direction (`bench_floor_rev`) uses it with the ChannelData header's two words
/// among `added`.
#[inline(always)]
pub fn relayed_udp_checksum<const R: usize, const A: usize>(
    old: u16,
    removed: [u16; R],
    added: [u16; A],
) -> u16 {
    let mut s = u64::from(!old);
    let mut i = 0;
    while i < removed.len() {
        s += u64::from(!removed[i]);
        i += 1;
    }
    let mut i = 0;
    while i < added.len() {
        s += u64::from(added[i]);
        i += 1;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    match !(s as u16) {
        _ if old == 0 => 0,
        0 => 0xffff,
        c => c,
    }
}
