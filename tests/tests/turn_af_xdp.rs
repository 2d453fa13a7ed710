//! TURN through the workers' AF_XDP sockets (`xdp.af_xdp = true`), end to end: the same
//! topology as `turn_fastpath.rs` (coturn's `turnutils_uclient` in a client namespace,
//! the daemon with XDP native on `vc` and `vp`, `turnutils_peer` echoing in a peer
//! namespace), but with TURN relaying in the kernel OFF (`xdp.turn = false`): the XDP
//! program steers every TURN frame to an AF_XDP socket of a worker, and the worker
//! relays it by building the output frame itself.
//!
//! What must hold, per run: uclient reports zero loss and every message back; the
//! daemon's AF_XDP counters (`relay stats --json`, `userspace.af_xdp`) show that at least
//! 90% of the datagrams uclient and the peer exchanged with the relay were received
//! through AF_XDP, and that at least 90% of what the relay sent went out through AF_XDP
//! (the rest: the first sends towards a not yet resolved neighbour take the kernel socket,
//! which resolves it). Two workers on single-queue veths: all steered traffic lands on
//! worker 0 (the one owning queue 0), which is also what makes the allocations and their
//! traffic meet on one worker.
//!
//! Needs root; without it the tests print "skipped: needs root" (or fail when
//! RELAY_REQUIRE_PRIVILEGED=1, as `cargo xtask test` sets).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use relay_e2e::{Daemon, Process, TempDir, TurnTopology, XdpPass, require_root, turn_xdp};

/// Longest a single uclient run may take.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// uclient's message length (`-l`).
const MSG_LEN: u64 = 180;
/// Share of the relay's datagrams that must have gone through AF_XDP.
const XSK_SHARE: f64 = 0.9;

struct Setup {
    // Field order is drop order: processes, then the XDP pass programs, then namespaces.
    relay: Option<Daemon>,
    _peer: Process,
    _pass: Vec<XdpPass>,
    topo: TurnTopology,
    _files: TempDir,
}

fn setup() -> Setup {
    let topo = TurnTopology::new("rla").expect("create the TURN topology");
    let pass = turn_xdp::prepare_topology(&topo, false);
    let files = TempDir::new("relay-turn-af-xdp").unwrap();
    let text = turn_xdp::config(
        &topo,
        "af_xdp = true\n",
        "legacy_channel_range = true\n",
        "[quota]\nper_user = 1000\ntotal = 10000\n\n",
    )
    .replace("turn = true\n", "turn = false\n");
    assert!(text.contains("turn = false\n"), "{text}");
    let config = files.write("relay.toml", &text).unwrap();
    let peer = turn_xdp::spawn_peer(&topo);
    let config_s = config.display().to_string();
    let relay = Daemon::start(&topo.relay, &["--config", &config_s]).expect("start the relay");
    let log = relay.log_text();
    assert!(
        log.contains("AF_XDP path on"),
        "the daemon did not turn the AF_XDP path on; its log:\n{log}"
    );
    assert!(
        !log.contains("TURN relayed in the kernel"),
        "kernel TURN relaying should be off here; its log:\n{log}"
    );
    Setup {
        relay: Some(relay),
        _peer: peer,
        _pass: pass,
        topo,
        _files: files,
    }
}

/// `userspace.af_xdp.<name>` of `relay stats --json` (0 when absent).
fn af_xdp(stats: &serde_json::Value, name: &str) -> u64 {
    stats
        .pointer(&format!("/userspace/af_xdp/{name}"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// One uclient run. `send`: Send indications (`-s`) instead of channels.
fn run(s: &Setup, send: bool, clients: u32, messages: u32) {
    let relay = s.relay.as_ref().unwrap();
    let topo = &s.topo;
    let before = relay.stats().expect("relay stats --json");
    let out = turn_xdp::run_uclient(topo, send, clients, messages, MSG_LEN, RUN_LIMIT);
    let totals = turn_xdp::check_uclient(out, clients, messages);
    // Counters are published every loop round; give the workers one.
    std::thread::sleep(Duration::from_millis(500));
    let after = relay.stats().expect("relay stats --json");
    let grew = |n: &str| af_xdp(&after, n) - af_xdp(&before, n);
    let echoed = totals.received;
    // Each echoed message: client → relay and peer → relay received, relay → peer and
    // relay → client sent (allocation, refresh and permission traffic comes on top).
    let (received, sent, fallback, dropped, steered) = (
        grew("received"),
        grew("sent"),
        grew("fallback"),
        grew("dropped"),
        grew("steered"),
    );
    eprintln!(
        "send={send}: {totals:?}; af_xdp received {received}, sent {sent}, fallback \
         {fallback}, dropped {dropped}, steered {steered}; userspace: {}",
        after["userspace"]
    );
    // Every frame a worker received through AF_XDP was steered there by the program.
    assert!(
        steered >= received && received > 0,
        "the program steered {steered} frames, the workers received {received}; stats: {after}"
    );
    assert!(
        received as f64 >= XSK_SHARE * (2 * echoed) as f64,
        "only {received} of at least {} datagrams arrived through AF_XDP; stats: {after}; \
         relay log:\n{}",
        2 * echoed,
        relay.log_text()
    );
    assert!(
        sent as f64 >= XSK_SHARE * (2 * echoed) as f64 && sent as f64 >= 9.0 * fallback as f64,
        "only {sent} datagrams left through AF_XDP ({fallback} through sockets) for {echoed} \
         echoes; stats: {after}"
    );
    assert_eq!(dropped, 0, "AF_XDP frames dropped; stats: {after}");
    // The kernel's own drop counters are reported, and account for no more than the
    // frames that were steered and never received.
    for name in ["kernel_ring_full", "kernel_dropped"] {
        assert!(
            after
                .pointer(&format!("/userspace/af_xdp/{name}"))
                .is_some(),
            "relay stats has no af_xdp.{name}: {after}"
        );
    }
    let lost_in_kernel = grew("kernel_ring_full") + grew("kernel_dropped");
    assert!(
        lost_in_kernel <= steered - received,
        "{lost_in_kernel} frames counted as dropped in the kernel, but only {} steered frames \
         were not received; stats: {after}",
        steered - received
    );
    let turn_bytes = after
        .pointer("/turn/bytes/client_to_peer")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    assert!(
        turn_bytes >= echoed * MSG_LEN,
        "the TURN byte counters did not see the traffic: {}",
        after["turn"]
    );
}

/// Round trips of an unauthenticated Allocate request (answered 401 by a worker; the XDP
/// program answers plain Binding requests itself) after the worker has been idle: each
/// answer must come well before the worker's longest sleep (100 ms), i.e. the frame
/// arriving on the AF_XDP socket woke the worker. Catches a worker that sleeps with no
/// readiness poll armed on its sockets (it would answer only when its wait times out).
/// The gaps mix long idles with short ones: a poll armed late (say, one round after the
/// worker went to sleep) shows only when the next request comes within that sleep.
fn allocate_after_idle(s: &Setup) {
    const GAPS_MS: [u64; 8] = [250, 30, 30, 60, 250, 10, 30, 60];
    const LIMIT: Duration = Duration::from_millis(20);
    // One answer may be late (a scheduling hiccup of the VM); a worker that sleeps
    // through its frames makes most of them late (7 of 8 when its polls were never armed).
    const LATE_ALLOWED: usize = 1;
    let relay = s.relay.as_ref().unwrap();
    let topo = &s.topo;
    let server = SocketAddr::new(IpAddr::V4(topo.relay_client_v4), turn_xdp::PORT);
    let sock = topo
        .client
        .udp_socket(SocketAddr::new(IpAddr::V4(topo.client_v4), 0))
        .expect("client socket");
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let before = relay.stats().expect("relay stats --json");
    let (mut times, mut slow) = (Vec::new(), Vec::new());
    for (round, gap) in (0u8..).zip(GAPS_MS) {
        std::thread::sleep(Duration::from_millis(gap));
        // An Allocate request: type 0x0003, the magic cookie, a fresh id,
        // REQUESTED-TRANSPORT (0x0019) = UDP, no credentials.
        let mut req = [0u8; 28];
        req[..2].copy_from_slice(&3u16.to_be_bytes());
        req[2..4].copy_from_slice(&8u16.to_be_bytes());
        req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        req[8..20].fill(0xa0 + round);
        req[20..24].copy_from_slice(&[0x00, 0x19, 0x00, 0x04]);
        req[24] = 17;
        let t0 = Instant::now();
        sock.send_to(&req, server)
            .expect("send an Allocate request");
        let mut buf = [0u8; 512];
        let (n, _) = sock
            .recv_from(&mut buf)
            .expect("an Allocate answer within 1 s");
        let took = t0.elapsed();
        assert!(
            n >= 20 && buf[..2] == [0x01, 0x13] && buf[8..20] == req[8..20],
            "not an Allocate error answer to our request: {:02x?}",
            &buf[..n]
        );
        times.push(took);
        if took > LIMIT {
            slow.push(took);
        }
    }
    eprintln!("round trips after gaps of {GAPS_MS:?} ms: {times:?}");
    std::thread::sleep(Duration::from_millis(500));
    let after = relay.stats().expect("relay stats --json");
    let received = af_xdp(&after, "received") - af_xdp(&before, "received");
    assert!(
        received >= GAPS_MS.len() as u64,
        "the Allocate requests did not arrive through AF_XDP ({received} frames); stats: {after}"
    );
    assert!(
        slow.len() <= LATE_ALLOWED,
        "answers after idle gaps of {GAPS_MS:?} ms took longer than {LIMIT:?}: {slow:?}"
    );
}

fn uclient_through_af_xdp(test: &str, send: bool) {
    if !require_root(test) {
        return;
    }
    let mut s = setup();
    run(&s, send, 5, 200);
    allocate_after_idle(&s);
    s.relay.take().unwrap().stop_cleanly();
}

#[test]
fn uclient_channels_through_af_xdp() {
    uclient_through_af_xdp("uclient_channels_through_af_xdp", false);
}

#[test]
fn uclient_send_indications_through_af_xdp() {
    uclient_through_af_xdp("uclient_send_indications_through_af_xdp", true);
}
