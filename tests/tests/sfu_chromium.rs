//! The SFU and its signaling with real browsers: headless Chromium (Debian's, driven by
//! `tests/browser/sfu_room.mjs` through playwright-core) loads the relay's own demo page
//! and runs the scenarios of that script:
//!
//! - `sfu_three_participants_layer_switch_and_bad_input`: three participants in one room
//!   each decode the other two's video and audio; a receiver capped to the lowest layer
//!   keeps decoding across the switch; bad signaling input (malformed JSON, badly signed
//!   and expired tokens, an unknown room, an oversized message, a flood) gets its error
//!   code while the participants keep receiving.
//! - `sfu_h264_and_screen_share`: one participant publishes H.264 (the page's `codec`
//!   option), another VP8; each receiver decodes them as those codecs (getStats codec
//!   mimeType); then the first shares its screen and the others decode the screen track.
//! - `sfu_tcp_only`: two participants whose page drops the SFU's UDP candidates (the
//!   page's `tcpOnly` option: simulates a UDP-blocked network, this machine has no
//!   packet filter) reach the SFU over ICE-TCP only (RFC 6544): both decode each other's
//!   video and audio and every selected candidate pair is TCP on both ends.
//! - `p2p_file_through_turn`: two participants in a P2P room, relay-only ICE policy, move
//!   a file over a DataChannel through the relay's TURN with the time-limited credentials
//!   the join handed them.
//!
//! The relay runs in the relay namespace of a [`TurnTopology`], node and Chromium in the
//! client namespace (10.201.X.0/24, inside the namespaces only). Needs root, node with
//! `npm ci` done in tests/browser, and Debian's chromium: `cargo xtask setup` installs
//! them.
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use relay::signaling::{Claims, sign};
use relay_e2e::{
    CHROMIUM, Daemon, Netns, TempDir, TurnTopology, browser_dir, browser_result,
    browser_test_guard, check_browser_prerequisites, require_root, run_bounded, sfu_diagnostics,
    start_signaling_relay,
};

const SECRET: &str = "sfu-e2e-signing-secret-0123456789";
const TURN_SECRET: &str = "sfu-e2e-turn-secret";
const SIGNALING_PORT: u16 = 8080;
const MEDIA_PORT: u16 = 3479;
const TURN_PORT: u16 = 3478;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(room: &str, identity: &str, exp: u64, p2p: bool, secret: &str) -> String {
    sign(
        &Claims {
            room: room.into(),
            identity: identity.into(),
            exp,
            p2p,
        },
        secret.as_bytes(),
    )
    .unwrap()
}

/// The relay with TURN (REST secret) and the SFU on the relay's client-side address.
fn start_relay(topo: &TurnTopology, files: &TempDir) -> Daemon {
    let ip = topo.relay_client_v4;
    let toml = format!(
        r#"[server]
listen = ["{ip}:{TURN_PORT}"]
workers = 2

[xdp]
enabled = false

[turn]
enabled = true
realm = "relay.test"
relay_ipv4 = "{ip}"

[turn.auth]
secrets = ["{TURN_SECRET}"]

[policy]
allow = ["10.201.0.0/16"]

[sfu]
enabled = true
signaling_listen = "{ip}:{SIGNALING_PORT}"
media_listen = "{ip}:{MEDIA_PORT}"
token_secrets = ["{SECRET}"]
create_rooms = false
rooms = ["standup", "call-1", "media"]
"#
    );
    start_signaling_relay(
        &topo.relay,
        files,
        &toml,
        SocketAddr::new(ip.into(), SIGNALING_PORT),
    )
}

/// Runs one scenario of the browser script in `ns` and returns its parsed result after
/// asserting that every check passed.
fn browser_run(
    ns: &Netns,
    url: &str,
    scenario: &str,
    tokens: &serde_json::Value,
    diag: &dyn Fn() -> String,
) -> serde_json::Value {
    let script = browser_dir().join("sfu_room.mjs");
    let out = run_bounded(
        ns.command("node")
            .arg(&script)
            .args(["--url", url, "--scenario", scenario])
            .args(["--tokens", &tokens.to_string()])
            .args(["--timeout-ms", "120000"])
            .args(["--chromium", CHROMIUM])
            .current_dir(browser_dir()),
        Duration::from_secs(180),
    )
    .expect("run node (is nodejs installed? `cargo xtask setup`)");
    browser_result(&out.text(), out.status, diag)
}

#[test]
fn sfu_three_participants_layer_switch_and_bad_input() {
    if !require_root("sfu_three_participants_layer_switch_and_bad_input") {
        return;
    }
    check_browser_prerequisites();
    let _one_at_a_time = browser_test_guard();
    let topo = TurnTopology::new("rsf").expect("create the topology");
    let files = TempDir::new("relay-sfu-chromium").unwrap();
    let relay = start_relay(&topo, &files);
    let url = format!("http://{}:{SIGNALING_PORT}/", topo.relay_client_v4);
    let exp = now() + 600;
    let tokens = serde_json::json!({
        "room": "standup",
        "participants": (0..3).map(|i| token("standup", &format!("p{i}"), exp, false, SECRET)).collect::<Vec<_>>(),
        "bad": token("standup", "mallory", exp, false, "not-the-secret-at-all-0123456789"),
        "expired": token("standup", "late", now() - 10, false, SECRET),
        "unknownRoom": "nosuchroom",
        "unknownRoomToken": token("nosuchroom", "lost", exp, false, SECRET),
    });
    let diag = || {
        format!(
            "{}\n{}",
            relay
                .stats()
                .map_or_else(|e| format!("{e:#}"), |s| s.to_string()),
            relay.log_text()
        )
    };
    let result = browser_run(&topo.client, &url, "sfu", &tokens, &diag);
    eprintln!(
        "layer switch: {} -> {}",
        result["layerBefore"], result["layerSamples"]
    );
    let stats = relay.stats().unwrap();
    let sfu = &stats["sfu"];
    assert!(
        sfu["rtp_out"].as_u64().unwrap_or(0) > 1000,
        "the relay's SFU counters do not show the forwarding: {sfu}"
    );
    relay.stop_cleanly();
}

#[test]
fn sfu_h264_and_screen_share() {
    if !require_root("sfu_h264_and_screen_share") {
        return;
    }
    check_browser_prerequisites();
    let _one_at_a_time = browser_test_guard();
    let topo = TurnTopology::new("rsh").expect("create the topology");
    let files = TempDir::new("relay-sfu-h264").unwrap();
    let relay = start_relay(&topo, &files);
    let url = format!("http://{}:{SIGNALING_PORT}/", topo.relay_client_v4);
    let exp = now() + 600;
    let tokens = serde_json::json!({
        "room": "media",
        "participants": (0..3).map(|i| token("media", &format!("p{i}"), exp, false, SECRET)).collect::<Vec<_>>(),
    });
    let diag = || sfu_diagnostics(&relay);
    let result = browser_run(&topo.client, &url, "codecs", &tokens, &diag);
    eprintln!(
        "p0 published {}; screen shared via {}",
        result["published"], result["screenPath"]
    );
    relay.stop_cleanly();
}

#[test]
fn sfu_tcp_only() {
    if !require_root("sfu_tcp_only") {
        return;
    }
    check_browser_prerequisites();
    let _one_at_a_time = browser_test_guard();
    let topo = TurnTopology::new("rst").expect("create the topology");
    let files = TempDir::new("relay-sfu-tcp").unwrap();
    let relay = start_relay(&topo, &files);
    let url = format!("http://{}:{SIGNALING_PORT}/", topo.relay_client_v4);
    let exp = now() + 600;
    let tokens = serde_json::json!({
        "room": "media",
        "participants": (0..2).map(|i| token("media", &format!("t{i}"), exp, false, SECRET)).collect::<Vec<_>>(),
    });
    let diag = || sfu_diagnostics(&relay);
    let result = browser_run(&topo.client, &url, "tcp", &tokens, &diag);
    eprintln!(
        "TCP pairs: {}; growth: {}",
        result["pairs"], result["growth"]
    );
    let stats = relay.stats().unwrap();
    let sfu = &stats["sfu"];
    eprintln!(
        "tcp_connections {} tcp_refused {} tcp_frame_errors {} tcp_send_drops {} tcp_idle_closed {}",
        sfu["tcp_connections"],
        sfu["tcp_refused"],
        sfu["tcp_frame_errors"],
        sfu["tcp_send_drops"],
        sfu["tcp_idle_closed"]
    );
    assert!(
        sfu["rtp_out"].as_u64().unwrap_or(0) > 500,
        "the SFU forwarded media: {sfu}"
    );
    assert_eq!(sfu["tcp_frame_errors"].as_u64(), Some(0), "{sfu}");
    relay.stop_cleanly();
}

#[test]
fn p2p_file_through_turn() {
    if !require_root("p2p_file_through_turn") {
        return;
    }
    check_browser_prerequisites();
    let _one_at_a_time = browser_test_guard();
    let topo = TurnTopology::new("rsp").expect("create the topology");
    let files = TempDir::new("relay-p2p-chromium").unwrap();
    let relay = start_relay(&topo, &files);
    let url = format!("http://{}:{SIGNALING_PORT}/", topo.relay_client_v4);
    let exp = now() + 600;
    let callers: Vec<String> = ["a", "b"]
        .iter()
        .map(|i| token("call-1", &format!("caller-{i}"), exp, true, SECRET))
        .collect();
    let tokens = serde_json::json!({
        "room": "call-1",
        "participants": callers,
        "bytes": 2_000_000,
    });
    let diag = || {
        format!(
            "{}\n{}",
            relay
                .stats()
                .map_or_else(|e| format!("{e:#}"), |s| s["turn"].to_string()),
            relay.log_text()
        )
    };
    let result = browser_run(&topo.client, &url, "p2p", &tokens, &diag);
    let turn_ip = topo.relay_client_v4.to_string();
    for pair in ["pairA", "pairB"] {
        assert_eq!(
            result[pair]["local"]["address"].as_str(),
            Some(turn_ip.as_str()),
            "{pair}'s relay candidate is not on our TURN server: {}",
            result[pair]
        );
    }
    relay.stop_cleanly();
}
