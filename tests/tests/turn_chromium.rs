//! TURN interop with a real browser: headless Chromium (Debian's `/usr/bin/chromium`,
//! driven by `tests/browser/turn_datachannel.mjs` through playwright-core) opens two
//! RTCPeerConnections with `iceTransportPolicy: "relay"` and the server under test as
//! their only ICE server, exchanges messages and a 3 MB file over a DataChannel, and
//! reports the SHA-256 of both ends and the selected candidate pairs. The test asserts
//! the bytes arrived intact and that both selected pairs are relay candidates on the
//! server's relayed address.
//!
//! The server runs in the relay namespace of a [`TurnTopology`], node and the browser in
//! its client namespace (10.201.X.0/24, inside the namespaces only). Not loopback:
//! Chromium gathers nothing on a host whose only interface is `lo`, and a namespace of
//! our own keeps the test from colliding with anything on the machine's loopback.
//!
//! `chromium_harness_against_coturn` runs the same script against coturn's turnserver,
//! so a failure against our relay is known not to come from the browser harness.
//!
//! Needs root (namespaces), node with `npm ci` done in tests/browser and Debian's
//! chromium: `cargo xtask setup` installs both.
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use relay_e2e::{
    CHROMIUM, Daemon, Netns, TempDir, TurnTopology, browser_dir, check_browser_prerequisites,
    require_root, run_bounded, spawn_in, wait_tcp_listening,
};

const PORT: u16 = 3478;
const REALM: &str = "relay.test";
const USER: &str = "browser";
const PASSWORD: &str = "browser-secret-pw";
const FILE_BYTES: u64 = 3_000_000;

/// Runs the browser script in `ns` against `turn` and returns its parsed result after
/// asserting everything the test is about.
fn browser_run(ns: &Netns, turn: SocketAddr, diag: &dyn Fn() -> String) -> serde_json::Value {
    let script = browser_dir().join("turn_datachannel.mjs");
    let out = run_bounded(
        ns.command("node")
            .arg(&script)
            .args(["--turn", &turn.to_string()])
            .args(["--user", USER, "--pass", PASSWORD])
            .args(["--bytes", &FILE_BYTES.to_string()])
            .args(["--timeout-ms", "45000"])
            .args(["--chromium", CHROMIUM])
            .current_dir(browser_dir()),
        Duration::from_secs(120),
    )
    .expect("run node (is nodejs installed? `cargo xtask setup`)");
    let text = out.text();
    assert!(
        out.status.is_some(),
        "the browser script did not finish within 120 s:\n{text}"
    );
    let result: serde_json::Value = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).expect("RESULT is JSON"))
        .unwrap_or_else(|| {
            panic!(
                "the browser script printed no RESULT ({:?}):\n{text}\nserver: {}",
                out.status,
                diag()
            )
        });
    eprintln!("browser result: {result}");
    assert_eq!(result["textsOk"], true, "messages differ: {result}");
    assert_eq!(
        result["bytesReceived"].as_u64(),
        Some(FILE_BYTES),
        "file size: {result}"
    );
    let sent = result["sentSha"].as_str().unwrap_or_default();
    assert_eq!(sent.len(), 64, "no SHA-256 of the sent file: {result}");
    assert_eq!(
        result["receivedSha"].as_str(),
        Some(sent),
        "the file arrived corrupted: {result}"
    );
    for pc in ["pc1", "pc2"] {
        let pair = &result[pc];
        for side in ["local", "remote"] {
            let c = &pair[side];
            assert_eq!(
                c["type"], "relay",
                "{pc}'s selected pair {side} candidate is not a relay candidate: {pair}"
            );
            assert_eq!(
                c["address"].as_str(),
                Some(turn.ip().to_string().as_str()),
                "{pc}'s selected pair {side} candidate is not on the server's relayed address: {pair}"
            );
        }
        assert_eq!(
            pair["local"]["url"].as_str(),
            Some(format!("turn:{turn}?transport=udp").as_str()),
            "{pc}'s local relay candidate came from another server: {pair}"
        );
    }
    assert!(out.success(), "the browser script failed:\n{text}");
    result
}

#[test]
fn chromium_datachannel_through_relay() {
    if !require_root("chromium_datachannel_through_relay") {
        return;
    }
    check_browser_prerequisites();
    let topo = TurnTopology::new("rlt").expect("create the topology");
    let files = TempDir::new("relay-turn-chromium").unwrap();
    let turn = SocketAddr::new(topo.relay_client_v4.into(), PORT);
    let relay_ip = topo.relay_client_v4;
    // Both browser peers are relay-only through this one relay, so each peer address is
    // the other peer's relayed address: one of the relay's own addresses (its relayed
    // addresses live on the client-side veth here). The relay lets its own addresses be
    // peers only on its relay port range (another allocation), and 10.201.X.1 is also
    // RFC 1918, denied by default: the test allows the range explicitly, as an operator
    // with a private media network would.
    let config = files
        .write(
            "relay.toml",
            &format!(
                r#"[server]
listen = ["{turn}"]
workers = 2

[xdp]
enabled = false

[turn]
enabled = true
realm = "{REALM}"
relay_ipv4 = "{relay_ip}"

[turn.users]
{USER} = "{PASSWORD}"

[policy]
allow = ["10.201.0.0/16"]
"#
            ),
        )
        .unwrap();
    let config_s = config.display().to_string();
    let relay = Daemon::start(&topo.relay, &["--config", &config_s]).expect("start the relay");
    let before = relay.stats().unwrap();
    browser_run(&topo.client, turn, &|| {
        relay
            .stats()
            .map_or_else(|e| format!("{e:#}"), |s| s["turn"].to_string())
    });
    let after = relay.stats().unwrap();
    let turn_before = &before["turn"];
    let turn_after = &after["turn"];
    assert!(
        turn_after.is_object(),
        "relay stats --json has no \"turn\" object: {after}"
    );
    // The file crossed the relay twice (client -> relay -> peer relay address -> client).
    let bytes = |v: &serde_json::Value| sum_bytes(v);
    assert!(
        bytes(turn_after).saturating_sub(bytes(turn_before)) >= 2 * FILE_BYTES,
        "the relay's byte counters did not see the file twice: {turn_after}"
    );
    relay.stop_cleanly();
}

/// Sum of every number under a key containing "bytes".
fn sum_bytes(v: &serde_json::Value) -> u64 {
    fn walk(v: &serde_json::Value, inside: bool) -> u64 {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, x)| walk(x, inside || k.contains("bytes")))
                .sum(),
            serde_json::Value::Number(n) if inside => n.as_u64().unwrap_or(0),
            _ => 0,
        }
    }
    walk(v, false)
}

/// Validates the browser harness against coturn's turnserver on the same loopback setup.
#[test]
fn chromium_harness_against_coturn() {
    if !require_root("chromium_harness_against_coturn") {
        return;
    }
    check_browser_prerequisites();
    let topo = TurnTopology::new("rlt").expect("create the topology");
    let turn = SocketAddr::new(topo.relay_client_v4.into(), PORT);
    let ip = topo.relay_client_v4.to_string();
    let _coturn = spawn_in(
        &topo.relay,
        "turnserver",
        &[
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--lt-cred-mech",
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--realm",
            REALM,
            "-L",
            &ip,
            "-p",
            &PORT.to_string(),
            "--relay-ip",
            &ip,
            "--allowed-peer-ip",
            "10.201.0.0-10.201.255.255",
            "-m",
            "1",
        ],
        None,
    )
    .expect("start coturn's turnserver");
    wait_tcp_listening(&topo.relay, turn, Duration::from_secs(10)).expect("turnserver listening");
    browser_run(&topo.client, turn, &|| "coturn".to_owned());
}
