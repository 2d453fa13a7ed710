//! The operator surface end to end: the daemon started with TURN configured and the
//! metrics endpoint on a free loopback port serves the Prometheus families of contract D;
//! `relay status`, `relay allocations --json`, `relay kick` and `relay reload` talk to it;
//! SIGHUP reloads; SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{Daemon, TempDir, free_udp_port};

const BIN: &str = env!("CARGO_BIN_EXE_relay");
const READY_WITHIN: Duration = Duration::from_secs(20);

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn cli(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--control-socket")
        .arg(socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn metrics_control_and_reload() {
    let dir = TempDir::new("operator");
    let socket = dir.0.join("control.sock");
    let udp = free_udp_port();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = dir.0.join("relay.toml");
    let write_config = |secret: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = [\"127.0.0.1:{udp}\"]\nworkers = 1\n[xdp]\nenabled = false\n\
                 [control]\nsocket = {socket:?}\n[turn]\nrealm = \"test.realm\"\n\
                 [turn.users]\nalice = \"pw\"\n[turn.auth]\nsecrets = [{secret:?}]\n\
                 [policy]\nallow = [\"10.0.0.0/8\"]\n[metrics]\nlisten = \"{metrics}\"\n"
            ),
        )
        .unwrap();
    };
    write_config("s1");
    let mut daemon = Daemon::spawn(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--backend",
        "portable",
    ]);
    daemon.wait_for_line("relay ready", READY_WITHIN);
    assert!(
        daemon
            .lines
            .iter()
            .any(|l| l.contains("Prometheus metrics on")),
        "\"relay ready\" must come after the metrics endpoint is up:\n{}",
        daemon.lines.join("\n")
    );

    // Prometheus endpoint.
    let r = get(metrics, "/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
    for want in [
        "\nrelay_stun_received_total ",
        "\n# TYPE relay_turn_allocations gauge\n",
        "\nrelay_turn_allocations 0\n",
        "\nrelay_turn_permissions 0\n",
        "\nrelay_turn_channels 0\n",
        "\nrelay_turn_packets_total{direction=\"client_to_peer\"} 0\n",
        "\nrelay_turn_bytes_total{direction=\"peer_to_client\"} 0\n",
        "\nrelay_turn_auth_failures_total{reason=\"bad_integrity\"} 0\n",
    ] {
        assert!(r.contains(want), "missing {want:?} in\n{r}");
    }
    assert!(!r.contains("alice"), "no per-user labels");
    assert!(get(metrics, "/").starts_with("HTTP/1.1 404"));

    // Control socket through the CLI.
    let (ok, out, err) = cli(&socket, &["status"]);
    assert!(ok, "status: {err}");
    assert!(out.contains("turn: 0 allocations"), "{out}");
    let (ok, out, err) = cli(&socket, &["allocations", "--json"]);
    assert!(ok, "allocations: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["allocations"], serde_json::json!([]));
    let (ok, out, err) = cli(&socket, &["allocations", "--user", "alice"]);
    assert!(ok && out.contains("0 allocation(s)"), "{out}{err}");
    let (ok, out, err) = cli(&socket, &["kick", "--user", "alice"]);
    assert!(ok && out.contains("kicked 0"), "{out}{err}");
    let (ok, _, err) = cli(&socket, &["kick"]);
    assert!(!ok, "kick without a target is refused: {err}");

    // Reload through the CLI, then a broken file is refused and nothing changes.
    write_config("s2");
    let (ok, out, err) = cli(&socket, &["reload"]);
    assert!(ok, "reload: {err}");
    assert!(
        out.contains("credentials: 1 users, 1 shared secrets"),
        "{out}"
    );
    std::fs::write(&config, "[turn]\nport_range = \"9-1\"\n").unwrap();
    let (ok, _, err) = cli(&socket, &["reload"]);
    assert!(!ok && err.contains("turn.port_range"), "{err}");
    write_config("s3");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_line("configuration reloaded", Duration::from_secs(5));

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(
        TcpStream::connect(metrics).is_err(),
        "metrics listener closed"
    );
    assert!(!socket.exists(), "control socket removed");
}
