//! Types shared between the eBPF programs (`ebpf/relay-ebpf`, built for bpfel) and the
//! daemon (`relay`). Everything here is `no_std`, `#[repr(C)]` and plain old data, so
//! that a map's key and value have one layout on both sides of the syscall boundary.
#![no_std]

pub mod turn;

/// Names of the maps and programs in the eBPF object; userspace looks them up by name.
pub mod names {
    /// The XDP program that answers STUN Binding requests (and, later, relays TURN).
    pub const XDP_PROGRAM: &str = "relay_xdp";
    /// An XDP program that passes every frame: attached to the peer of a veth so that
    /// frames XDP_TX'ed (or redirected) into the pair are received there.
    pub const XDP_PASS_PROGRAM: &str = "relay_xdp_pass";
    /// An XDP program that is never attached: run through `BPF_PROG_TEST_RUN` on a
    /// `turn::FibProbeFrame`, it asks `bpf_fib_lookup` what the TURN fast path would ask
    /// and writes the answer into the frame (next hops for the AF_XDP data path).
    pub const FIB_PROBE_PROGRAM: &str = "relay_fib_probe";
    /// An XDP program that is never attached: run through `BPF_PROG_TEST_RUN` on a
    /// `turn::ClockSample`, it writes the kernel's jiffies and CLOCK_MONOTONIC into it
    /// (the daemon calibrates `turn::TurnClock` from such samples).
    pub const CLOCK_PROBE_PROGRAM: &str = "relay_clock_probe";
    /// `PerCpuArray<u64>` of [`crate::counter`] indices.
    pub const COUNTERS: &str = "RELAY_COUNTERS";
    /// `HashMap<u16, u8>`: UDP ports (host byte order) on which Binding is answered.
    pub const STUN_PORTS: &str = "STUN_PORTS";
}

/// Indices into the per-CPU counter array. Keep in sync with [`counter::NAMES`].
pub mod counter {
    /// Binding requests over IPv4 answered in the kernel.
    pub const STUN_ANSWERED_V4: u32 = 0;
    /// Binding requests over IPv6 answered in the kernel.
    pub const STUN_ANSWERED_V6: u32 = 1;
    /// STUN on a served port that the kernel passed up (attributes it does not handle,
    /// not a request, bad FINGERPRINT, too long): userspace decides.
    pub const STUN_PASSED: u32 = 2;
    /// Frames that are not for a served UDP port (or not IP/UDP at all).
    pub const OTHER_PASSED: u32 = 3;
    /// Frames on a served port that are truncated or malformed below STUN, or that the
    /// kernel does not answer by rule (bad lengths, fragments, IP options, multicast or
    /// unspecified addresses, multicast source MAC, source port 0): passed up for the
    /// stack to judge.
    pub const MALFORMED_PASSED: u32 = 4;
    /// Frames on a served port whose IPv4 header checksum or UDP checksum is wrong (an IPv6
    /// zero UDP checksum included): passed up (the stack drops them). Locally sent UDP
    /// over veth/lo with checksum offload carries a partial checksum and lands here too.
    pub const BAD_CHECKSUM_PASSED: u32 = 5;
    /// ChannelData from a client relayed to its peer in the kernel.
    pub const TURN_CHANNEL_TO_PEER: u32 = 6;
    /// Peer data relayed to a client as ChannelData in the kernel.
    pub const TURN_PEER_TO_CHANNEL: u32 = 7;
    /// Peer data relayed to a client as a Data indication built in the kernel.
    pub const TURN_PEER_TO_DATA_INDICATION: u32 = 8;
    /// Send indications relayed to their peer in the kernel.
    pub const TURN_SEND_TO_PEER: u32 = 9;
    /// TURN-shaped frames (ChannelData on a listen port, UDP to a relay port, Send
    /// indications) with no live rule (unknown, expired, or the kernel path is off):
    /// passed up for userspace.
    pub const TURN_NO_RULE_PASSED: u32 = 10;
    /// TURN frames with a rule that the kernel does not relay (fragments, IP options, bad
    /// lengths, too large once a header is added, TTL exhausted, unusual attributes, a
    /// partial UDP checksum from a sender on this host with checksum offload): passed up.
    pub const TURN_UNHANDLED_PASSED: u32 = 11;
    /// TURN frames whose next hop the FIB could not resolve yet (no neighbour entry, or
    /// not forwardable), or is out of an interface the program is not attached to:
    /// passed up so that the stack resolves it or sends the frame.
    pub const TURN_FIB_PASSED: u32 = 12;
    /// TURN frames dropped for exceeding the allocation's bandwidth limit in the kernel.
    pub const TURN_BANDWIDTH_DROPPED: u32 = 13;
    /// Number of counters.
    pub const COUNT: u32 = 14;
    /// Human-readable names, in index order (metrics, `relay stats`).
    pub const NAMES: [&str; COUNT as usize] = [
        "stun_answered_v4",
        "stun_answered_v6",
        "stun_passed",
        "other_passed",
        "malformed_passed",
        "bad_checksum_passed",
        "turn_channel_to_peer",
        "turn_peer_to_channel",
        "turn_peer_to_data_indication",
        "turn_send_to_peer",
        "turn_no_rule_passed",
        "turn_unhandled_passed",
        "turn_fib_passed",
        "turn_bandwidth_dropped",
    ];
}

/// The largest STUN message (header included) the kernel answers; longer requests pass up.
/// Bounds the verifier's loops over the message.
pub const XDP_MAX_STUN_LEN: usize = 512;
