//! TURN relayed in the kernel, end to end: coturn's `turnutils_uclient` (unchanged) in a
//! client namespace talks to the relay daemon in a relay namespace with the XDP fast path
//! attached natively on both of its veths (`vc` toward the clients, `vp` toward the
//! peers), and `turnutils_peer` echoes in a peer namespace. The daemon installs a kernel
//! rule per channel binding and permission; the XDP program relays what matches.
//!
//! What must hold, per run: uclient reports zero loss and every message back; the XDP
//! program's own counters (`relay stats --json`, `xdp.counters`) show that at least 90%
//! of the relayed datagrams went through the kernel (ChannelData both ways for channel
//! runs; for Send-indication runs the peer → client Data indications, since Send
//! indications themselves are relayed by userspace); the folded kernel counters appear
//! in the TURN stats (`turn.kernel_packets`) and, while uclient runs, in
//! `relay allocations`.
//!
//! Topology details the kernel path needs: the peer ends of the relay's veths run
//! `relay_xdp_pass` (frames redirected into a veth are only received when its peer has an
//! XDP program), the senders' veths have TX checksumming off (`ethtool -K eth0 tx off`:
//! the XDP program updates UDP checksums incrementally, so they must be complete), and
//! the relay namespace does NOT forward: the daemon enables forwarding on `lo` only and the
//! program's `bpf_fib_lookup` goes through it (`xdp.fib_interface`).
//!
//! `peer_side_behind_a_bridge_is_sent_by_the_stack` puts the relay's peer side behind a
//! bridge, out of which the program may not relay (it is not attached there).
//!
//! Needs root; without it the tests print "skipped: needs root" (or fail when
//! RELAY_REQUIRE_PRIVILEGED=1, as `cargo xtask test` sets).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use relay_e2e::{
    Daemon, Process, TempDir, TurnTopology, XdpPass, relay_bin, require_root, turn_xdp,
};

/// Longest a single uclient run may take.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// uclient's message length (`-l`).
const MSG_LEN: u64 = 180;
/// Share of the relayed datagrams that must have gone through the kernel.
const KERNEL_SHARE: f64 = 0.9;

fn relay_config(topo: &TurnTopology, variant: Variant, files: &TempDir) -> std::path::PathBuf {
    let (interfaces, mode) = match variant {
        Variant::BridgeAttached => (&["vc", "brp"][..], "auto"),
        Variant::PeerBridgeGeneric => (&["vc", "vp"][..], "generic"),
        Variant::AutoBareVeths | Variant::AutoVeths => (&["vc", "vp"][..], "auto"),
        _ => (&["vc", "vp"][..], "native"),
    };
    let text = turn_xdp::config_attached(
        topo,
        interfaces,
        mode,
        "",
        "# turnutils_uclient draws channel numbers from RFC 5766's 0x4000-0x7FFF.\n\
         legacy_channel_range = true\n",
        "[quota]\nper_user = 1000\ntotal = 10000\n\n",
    );
    files.write("relay.toml", &text).unwrap()
}

struct Setup {
    // Field order is drop order: processes, then the XDP pass programs, then namespaces.
    relay: Option<Daemon>,
    _peer: Process,
    _pass: Vec<XdpPass>,
    topo: TurnTopology,
    _files: TempDir,
}

/// How a test's topology departs from the plain one.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// As [`turn_xdp::prepare_topology`] leaves it.
    Plain,
    /// The senders' TX checksumming stays on (partial checksums).
    Offloading,
    /// The relay's peer-side veth `vp` is a port of a bridge, `brp`, which holds the
    /// relay's peer-side addresses: routes to the peers name `brp`, to which the program
    /// is not attached.
    PeerBridge,
    /// As [`Variant::PeerBridge`], with the program attached to `vc` and to the bridge
    /// `brp` itself (mode `auto`: native on `vc`, whose peer runs an XDP program, generic
    /// on `brp`, which has no native XDP), not to `vp`.
    BridgeAttached,
    /// As [`Variant::PeerBridge`], with the program in generic mode on `vc` and `vp`.
    PeerBridgeGeneric,
    /// `xdp.mode = "auto"` on `vc` and `vp`, and no XDP program (nor GRO) on the veths'
    /// other ends, as when the relay runs in a container.
    AutoBareVeths,
    /// `xdp.mode = "auto"` on `vc` and `vp`, whose other ends run `relay_xdp_pass`.
    AutoVeths,
}

/// Moves the relay's peer-side addresses from `vp` to a new bridge `brp` with `vp` as
/// its one port (no STP, so the port forwards at once). The XDP program stays on `vp`
/// (a bridge port's XDP program sees its frames before the bridge does).
fn bridge_peer_side(topo: &TurnTopology) {
    let r = &topo.relay;
    let v4 = format!("{}/24", topo.relay_peer_v4);
    let v6 = format!("{}/64", topo.relay_peer_v6);
    for args in [
        &["link", "add", "brp", "type", "bridge", "stp_state", "0"][..],
        &["addr", "del", &v4, "dev", "vp"],
        &["addr", "del", &v6, "dev", "vp"],
        &["link", "set", "vp", "master", "brp"],
        &["addr", "add", &v4, "dev", "brp"],
        &["addr", "add", &v6, "dev", "brp", "nodad"],
        &["link", "set", "brp", "up"],
    ] {
        r.ip(args).expect("bridge the relay's peer side");
    }
}

fn setup(variant: Variant) -> Setup {
    let topo = TurnTopology::new("rlf").expect("create the TURN topology");
    if matches!(
        variant,
        Variant::PeerBridge | Variant::BridgeAttached | Variant::PeerBridgeGeneric
    ) {
        bridge_peer_side(&topo);
    }
    // Senders' checksums complete (unless `offloading`), relay_xdp_pass on the client's
    // and peer's veths, and forwarding OFF on every interface of the relay namespace (a
    // new namespace inherits IPv4's from the host): the daemon turns it on for `lo` only
    // (xdp.fib_interface) and looks routes up through it, so the relay's veths never
    // route.
    let mut pass = if variant == Variant::Offloading {
        turn_xdp::prepare_topology_offloading(&topo, false)
    } else {
        turn_xdp::prepare_topology(&topo, false)
    };
    if variant == Variant::AutoBareVeths {
        pass.clear(); // detached on drop
    }
    let files = TempDir::new("relay-turn-fastpath").unwrap();
    let config = relay_config(&topo, variant, &files);
    let peer = turn_xdp::spawn_peer(&topo);
    let config_s = config.display().to_string();
    let relay = Daemon::start(&topo.relay, &["--config", &config_s]).expect("start the relay");
    let log = relay.log_text();
    assert!(
        log.contains("TURN relayed in the kernel"),
        "the daemon did not turn TURN relaying in the kernel on (is the XDP program's TURN \
         part in this build?); its log:\n{log}"
    );
    Setup {
        relay: Some(relay),
        _peer: peer,
        _pass: pass,
        topo,
        _files: files,
    }
}

/// XDP counters by name.
type Counters = serde_json::Map<String, serde_json::Value>;

/// The XDP counters of `relay stats --json`.
fn xdp_counters(stats: &serde_json::Value) -> Counters {
    stats
        .pointer("/xdp/counters")
        .and_then(serde_json::Value::as_object)
        .cloned()
        .unwrap_or_else(|| panic!("relay stats --json has no xdp.counters: {stats}"))
}

fn counter(c: &Counters, name: &str) -> u64 {
    c.get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no XDP counter {name}: {c:?}"))
}

fn get_u64(v: &serde_json::Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// `relay allocations --json`, parsed: (packets, bytes) summed over every allocation.
fn allocation_totals(relay: &Daemon, ns: &relay_e2e::Netns) -> (u64, u64) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(relay_bin().unwrap())
        .arg("allocations")
        .arg("--control-socket")
        .arg(relay.control_socket())
        .arg("--json")
        .output()
        .expect("relay allocations --json");
    assert!(
        out.status.success(),
        "relay allocations failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("relay allocations --json is JSON");
    let rows = v
        .as_array()
        .cloned()
        .or_else(|| v.get("allocations").and_then(|a| a.as_array().cloned()))
        .unwrap_or_else(|| panic!("unexpected relay allocations --json: {v}"));
    let mut packets = 0;
    let mut bytes = 0;
    for r in &rows {
        packets += get_u64(r, "/packets_to_peer") + get_u64(r, "/packets_to_client");
        bytes += get_u64(r, "/bytes_to_peer") + get_u64(r, "/bytes_to_client");
    }
    (packets, bytes)
}

/// One uclient run against the fast path. `send`: Send indications (`-s`).
fn run(s: &Setup, send: bool, clients: u32, messages: u32) {
    let relay = s.relay.as_ref().unwrap();
    let topo = &s.topo;
    let before = relay.stats().expect("relay stats --json");
    let xdp0 = xdp_counters(&before);

    let (out, best, tables) = std::thread::scope(|scope| {
        let runner = scope
            .spawn(|| turn_xdp::run_uclient(topo, send, clients, messages, MSG_LEN, RUN_LIMIT));

        // While it runs: the allocations' counters must carry the kernel's traffic (folded
        // about once a second), not only what userspace relayed.
        let mut best: Option<(u64, u64)> = None; // (allocation packets, kernel packets then)
        // The most rules `xdp.rule_tables` showed in the channel table and in the peer hash
        // map (where permissions live), and the table's slots.
        let mut tables = (0u64, 0u64, 0u64);
        let deadline = Instant::now() + 2 * RUN_LIMIT; // a clash may run uclient twice
        while !runner.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(400));
            let (alloc_packets, _) = allocation_totals(relay, &topo.relay);
            let stats = relay.stats().expect("stats");
            tables.0 = tables
                .0
                .max(get_u64(&stats, "/xdp/rule_tables/channel_table_rules"));
            tables.1 = tables
                .1
                .max(get_u64(&stats, "/xdp/rule_tables/peer_hash_map_rules"));
            tables.2 = tables
                .2
                .max(get_u64(&stats, "/xdp/rule_tables/channel_table_slots"));
            let now = xdp_counters(&stats);
            let kernel: u64 = [
                "turn_channel_to_peer",
                "turn_peer_to_channel",
                "turn_peer_to_data_indication",
            ]
            .iter()
            .map(|n| counter(&now, n) - counter(&xdp0, n))
            .sum();
            if best.is_none_or(|(a, _)| alloc_packets > a) {
                best = Some((alloc_packets, kernel));
            }
        }
        (runner.join().expect("uclient thread"), best, tables)
    });
    let totals = turn_xdp::check_uclient(out, clients, messages);

    // Let the workers fold the last kernel counts (once a second).
    std::thread::sleep(Duration::from_millis(2500));
    let after = relay.stats().expect("relay stats --json");
    let xdp1 = xdp_counters(&after);
    let grew = |n: &str| counter(&xdp1, n) - counter(&xdp0, n);
    let echoed = totals.received;
    let (kernel, expected, what) = if send {
        // uclient's Send indications (DATA, XOR-PEER-ADDRESS, FINGERPRINT) are parsed and
        // their FINGERPRINT verified in the kernel; the echoes come back as Data
        // indications built in the kernel.
        (
            grew("turn_send_to_peer") + grew("turn_peer_to_data_indication"),
            2 * echoed,
            "Send indications and Data indications",
        )
    } else {
        (
            grew("turn_channel_to_peer") + grew("turn_peer_to_channel"),
            2 * echoed,
            "ChannelData both ways",
        )
    };
    eprintln!(
        "send={send}: {totals:?}; kernel relayed {kernel} of {expected} ({what}); xdp counters \
         after: {xdp1:?}"
    );
    assert!(
        kernel as f64 >= KERNEL_SHARE * expected as f64,
        "only {kernel} of {expected} datagrams ({what}) went through the kernel; xdp counters \
         before {xdp0:?}, after {xdp1:?}; relay log:\n{}",
        relay.log_text()
    );
    // Folded into the TURN stats: the kernel's share, and the totals that include it.
    let turn_kernel = get_u64(&after, "/turn/kernel_packets/client_to_peer")
        + get_u64(&after, "/turn/kernel_packets/peer_to_client")
        - get_u64(&before, "/turn/kernel_packets/client_to_peer")
        - get_u64(&before, "/turn/kernel_packets/peer_to_client");
    assert!(
        turn_kernel >= kernel,
        "turn.kernel_packets grew by {turn_kernel}, the XDP counters by {kernel}: the kernel's \
         traffic was not folded into the TURN stats; turn: {}",
        after["turn"]
    );
    let turn_bytes = get_u64(&after, "/turn/bytes/client_to_peer")
        + get_u64(&after, "/turn/bytes/peer_to_client")
        - get_u64(&before, "/turn/bytes/client_to_peer")
        - get_u64(&before, "/turn/bytes/peer_to_client");
    assert!(
        turn_bytes >= 2 * echoed * MSG_LEN,
        "turn bytes grew by {turn_bytes}, expected at least {} (both directions of every \
         echoed {MSG_LEN}-byte message)",
        2 * echoed * MSG_LEN
    );
    // `relay allocations` during the run: it showed more than userspace alone relayed
    // (at most 10% of the datagrams), i.e. the kernel's counts were folded in.
    // `xdp.rule_tables` showed the rules: channels in the channel table, permissions in
    // the peer hash map.
    let (channel_rules, permission_rules, slots) = tables;
    assert!(
        slots >= 1024,
        "xdp.rule_tables showed {slots} channel table slots"
    );
    if send {
        assert!(
            permission_rules >= 1,
            "no permission rule in xdp.rule_tables: {tables:?}"
        );
    } else {
        assert!(
            channel_rules >= 1,
            "no channel rule in xdp.rule_tables: {tables:?}"
        );
    }
    let (alloc_packets, kernel_then) = best.unwrap_or((0, 0));
    assert!(
        kernel_then > 0 && alloc_packets as f64 >= 0.5 * kernel_then as f64,
        "relay allocations showed {alloc_packets} packets while the kernel had relayed \
         {kernel_then}: kernel traffic is not folded into the allocations"
    );
}

/// A whole test: the topology and daemon, one uclient run (`send`: Send indications)
/// of 5 clients with 200 messages each, then a clean stop of the daemon.
fn uclient_through_the_kernel(test: &str, send: bool) {
    if !require_root(test) {
        return;
    }
    let mut s = setup(Variant::Plain);
    run(&s, send, 5, 200);
    s.relay.take().unwrap().stop_cleanly();
}

/// One clean uclient channel run (5 clients × 200 messages) on `s`: its totals and the
/// XDP counters before and after it.
fn channel_run(s: &Setup) -> (relay_e2e::UclientTotals, Counters, Counters) {
    let relay = s.relay.as_ref().unwrap();
    let xdp0 = xdp_counters(&relay.stats().expect("relay stats --json"));
    let (clients, messages) = (5, 200);
    let out = turn_xdp::run_uclient(&s.topo, false, clients, messages, MSG_LEN, RUN_LIMIT);
    let totals = turn_xdp::check_uclient(out, clients, messages);
    let xdp1 = xdp_counters(&relay.stats().expect("relay stats --json"));
    (totals, xdp0, xdp1)
}

/// Senders with TX checksumming on (a veth's default, as for containers on the relay's
/// host) leave partial UDP checksums. The kernel must not relay those (updated
/// incrementally they would leave unfinished, and the receivers drop them: before the
/// check, every datagram of this run was lost): each is passed up, counted as
/// `turn_unhandled_passed`, and userspace relays it, with nothing lost (the rare one whose
/// partial checksum is also its complete one is relayed in the kernel).
#[test]
fn uclient_with_checksum_offload_is_relayed_by_userspace() {
    if !require_root("uclient_with_checksum_offload_is_relayed_by_userspace") {
        return;
    }
    let mut s = setup(Variant::Offloading);
    let (totals, xdp0, xdp1) = channel_run(&s);
    let grew = |n: &str| counter(&xdp1, n) - counter(&xdp0, n);
    // A partial checksum that happens to be the datagram's complete checksum too (its
    // sum is right) is relayed in the kernel, correctly: a rare few of the 2 400 may be.
    // Nothing was lost (check_uclient), so every one the kernel relayed left right.
    let in_kernel = grew("turn_channel_to_peer") + grew("turn_peer_to_channel");
    assert!(
        in_kernel * 100 <= 2 * totals.received,
        "the kernel relayed {in_kernel} datagrams with partial checksums; xdp counters {xdp1:?}"
    );
    assert!(
        grew("turn_unhandled_passed") + in_kernel >= 2 * totals.received,
        "{totals:?}: fewer datagrams passed up than relayed both ways; xdp counters {xdp1:?}"
    );
    s.relay.take().unwrap().stop_cleanly();
}

#[test]
fn uclient_channels_through_the_kernel() {
    uclient_through_the_kernel("uclient_channels_through_the_kernel", false);
}

#[test]
fn uclient_send_indications_data_through_the_kernel() {
    uclient_through_the_kernel("uclient_send_indications_data_through_the_kernel", true);
}

/// The relay's peer side behind a bridge (`vp` a port of `brp`, the addresses on `brp`),
/// as on a host whose uplink is bridged for containers or VMs. Routes to the peers name
/// `brp`, which the program is not attached to and which has no XDP transmit: a frame
/// redirected there would be lost. So client → peer ChannelData passes up
/// (`turn_fib_passed`) and the stack sends it through the bridge, while peer → client
/// ChannelData (out of `vc`, attached) is still relayed in the kernel, and nothing is
/// lost. Without the egress check (52fe9c0) 1 199 of this run's 1 200 messages were lost.
#[test]
fn peer_side_behind_a_bridge_is_sent_by_the_stack() {
    channel_run_checked(
        "peer_side_behind_a_bridge_is_sent_by_the_stack",
        Variant::PeerBridge,
        "vc (native), vp (native)",
        ToPeer::Stack,
    );
}

/// Where a test expects client → peer ChannelData to be relayed.
#[derive(Clone, Copy, PartialEq)]
enum ToPeer {
    /// In the kernel.
    Kernel,
    /// Passed up (`turn_fib_passed`) for the stack to send: none in the kernel.
    Stack,
}

/// One channel run on `variant`, whose daemon must say `attached` (its modes, as the
/// "relay ready" line lists them). Nothing may be lost; at least [`KERNEL_SHARE`] of the
/// echoed messages must come back peer → client through the kernel, and client → peer
/// must go as `to_peer` says.
fn channel_run_checked(test: &str, variant: Variant, attached: &str, to_peer: ToPeer) {
    if !require_root(test) {
        return;
    }
    let mut s = setup(variant);
    let log = s.relay.as_ref().unwrap().log_text();
    assert!(
        log.contains(attached),
        "the daemon's log does not say {attached:?}; relay log:\n{log}"
    );
    let (totals, xdp0, xdp1) = channel_run(&s);
    let grew = |n: &str| counter(&xdp1, n) - counter(&xdp0, n);
    eprintln!("{totals:?}; xdp counters after: {xdp1:?}");
    let in_kernel = |n: &str| grew(n) as f64 >= KERNEL_SHARE * totals.received as f64;
    assert!(
        in_kernel("turn_peer_to_channel"),
        "{totals:?}: peer → client was not relayed in the kernel; xdp counters {xdp1:?}"
    );
    match to_peer {
        ToPeer::Kernel => assert!(
            in_kernel("turn_channel_to_peer"),
            "{totals:?}: client → peer was not relayed in the kernel; xdp counters {xdp1:?}"
        ),
        ToPeer::Stack => {
            assert_eq!(
                grew("turn_channel_to_peer"),
                0,
                "the kernel relayed ChannelData out of an interface it may not send by; \
                 xdp counters {xdp1:?}"
            );
            assert!(
                grew("turn_fib_passed") >= totals.received,
                "{totals:?}: fewer ChannelData messages passed up for the stack to send \
                 than were echoed; xdp counters {xdp1:?}"
            );
        }
    }
    s.relay.take().unwrap().stop_cleanly();
}

/// The operator lists the bridge itself in `xdp.interfaces` (with `vc`, mode `auto`):
/// `vc`, a veth whose peer runs an XDP program, gets native XDP, and `brp` generic (a
/// bridge has no native XDP). A redirect from native XDP into the generic-mode bridge
/// would be lost (1 199 of 1 200 messages before 0c3874e), so client → peer ChannelData
/// passes up (`turn_fib_passed`) and the stack sends it; peer → client frames, seen by the
/// bridge's generic program, are relayed in the kernel (a generic redirect can go to any
/// device). Nothing is lost.
#[test]
fn bridge_attached_in_auto_mode_loses_nothing() {
    channel_run_checked(
        "bridge_attached_in_auto_mode_loses_nothing",
        Variant::BridgeAttached,
        "vc (native), brp (generic)",
        ToPeer::Stack,
    );
}

/// Generic mode on both veths, the peer side behind a bridge: every frame the program sees
/// is an skb, so the daemon turns the egress check off and the kernel relays both ways,
/// into the bridge too.
#[test]
fn generic_mode_relays_into_a_bridge_in_the_kernel() {
    channel_run_checked(
        "generic_mode_relays_into_a_bridge_in_the_kernel",
        Variant::PeerBridgeGeneric,
        "vc (generic), vp (generic)",
        ToPeer::Kernel,
    );
}

/// The relay on veths whose other ends have no XDP program and no GRO (a container's
/// view), with `xdp.mode = "auto"`: native XDP there would drop everything the kernel
/// sends into the veths (all 1 200 messages of this run, measured), and the kernel says
/// they take no XDP frames, so the daemon attaches them in generic mode, and the kernel
/// relays both ways with nothing lost.
#[test]
fn auto_mode_on_bare_veths_relays_in_generic_mode() {
    channel_run_checked(
        "auto_mode_on_bare_veths_relays_in_generic_mode",
        Variant::AutoBareVeths,
        "vc (generic), vp (generic)",
        ToPeer::Kernel,
    );
}

/// `xdp.mode = "auto"` on veths whose other ends run an XDP program: the kernel says the
/// veths take XDP frames (`NDO_XMIT` in their `xdp-features`), so auto mode attaches them
/// natively, and the kernel relays both ways.
#[test]
fn auto_mode_on_veths_with_receiving_peers_is_native() {
    channel_run_checked(
        "auto_mode_on_veths_with_receiving_peers_is_native",
        Variant::AutoVeths,
        "vc (native), vp (native)",
        ToPeer::Kernel,
    );
}
