//! The `relay` binary end to end on loopback: start with `--no-xdp`, wait for `relay
//! ready`, answer Binding requests, report them through `relay stats`, stop on SIGTERM /
//! SIGINT with exit 0 leaving no control socket behind; bad configurations are refused
//! with an error naming the key.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use relay::stun::attr::{self, Attribute};
use relay::stun::{Class, Message};

mod common;
use common::{Daemon, TempDir, free_udp_port};

const BIN: &str = env!("CARGO_BIN_EXE_relay");
const READY_WITHIN: Duration = Duration::from_secs(20);
const EXIT_WITHIN: Duration = Duration::from_secs(3);

fn binding(client: &UdpSocket, server: SocketAddr, txid: [u8; 12]) -> SocketAddr {
    let mut req = [0u8; 20];
    req[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    req[8..20].copy_from_slice(&txid);
    client.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = client.recv_from(&mut buf).expect("Binding answer");
    assert_eq!(from, server);
    let msg = Message::parse(&buf[..n]).expect("STUN answer");
    assert_eq!(msg.class(), Class::SuccessResponse);
    assert_eq!(msg.transaction_id().0, txid);
    match msg.get(attr::XOR_MAPPED_ADDRESS).unwrap() {
        Some(Attribute::XorMappedAddress(a)) => a,
        other => panic!("no XOR-MAPPED-ADDRESS: {other:?}"),
    }
}

fn stats_json(socket: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["stats", "--json", "--control-socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "relay stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats is JSON")
}

fn lifecycle(backend: &str, stop_signal: i32) {
    let dir = TempDir::new("life");
    let socket = dir.0.join("run/control.sock");
    let port = free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::spawn(&[
        "run",
        "--no-xdp",
        // Two lifecycle tests run at once; the embedded default's SFU ports are fixed.
        "--no-sfu",
        "--listen",
        &listen,
        "--workers",
        "2",
        "--backend",
        backend,
        "--control-socket",
        socket.to_str().unwrap(),
        "--log-level",
        "info",
    ]);
    daemon.wait_for_line("relay ready", READY_WITHIN);
    assert!(socket.exists(), "control socket exists once ready");

    let server: SocketAddr = listen.parse().unwrap();
    let n = 20u8;
    for i in 0..n {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let me = client.local_addr().unwrap();
        assert_eq!(binding(&client, server, [i; 12]), me);
    }

    let deadline = Instant::now() + Duration::from_secs(3);
    let stats = loop {
        let s = stats_json(&socket);
        if s["userspace"]["stun_answered"] == u64::from(n) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let expected_backend = if backend == "portable" {
        "portable"
    } else {
        "io_uring"
    };
    assert_eq!(stats["backend"], expected_backend, "{stats}");
    assert_eq!(stats["workers"], 2, "{stats}");
    assert_eq!(stats["listen"][0], listen.as_str(), "{stats}");
    assert!(stats["xdp"].is_null(), "--no-xdp: {stats}");
    assert_eq!(stats["userspace"]["received"], u64::from(n), "{stats}");
    assert_eq!(stats["userspace"]["stun_answered"], u64::from(n), "{stats}");
    assert_eq!(stats["userspace"]["dropped"], 0, "{stats}");
    assert_eq!(stats["userspace"]["errors"], 0, "{stats}");
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));

    let table = Command::new(BIN)
        .args(["stats", "--control-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("stun_answered") && table.contains(&listen),
        "{table}"
    );

    daemon.signal(stop_signal);
    let status = daemon.wait_exit(EXIT_WITHIN);
    assert!(
        status.success(),
        "relay exits 0 on signal {stop_signal}, got {status:?}"
    );
    daemon.wait_for_line("relay stopped", Duration::from_secs(1));
    assert!(!socket.exists(), "control socket removed on shutdown");
    let rebind = UdpSocket::bind(server);
    assert!(rebind.is_ok(), "UDP port released: {rebind:?}");
}

#[test]
fn lifecycle_io_uring_sigterm() {
    lifecycle("io-uring", libc::SIGTERM);
}

#[test]
fn lifecycle_portable_sigint() {
    lifecycle("portable", libc::SIGINT);
}

#[test]
fn bad_config_names_the_key_and_fails() {
    let dir = TempDir::new("badcfg");
    for (text, key) in [
        (
            "[server]\nlisten = [\"127.0.0.1:1\", \"1.2.3.4:99999\"]\n",
            "server.listen[1]",
        ),
        (
            "[server]\nworkers = 1\nlisten_on = []\n",
            "server.listen_on",
        ),
        ("[dataplane]\nbackend = \"dpdk\"\n", "dataplane.backend"),
    ] {
        let file = dir.0.join("bad.toml");
        std::fs::write(&file, text).unwrap();
        for args in [
            vec!["run", "--no-xdp", "--config", file.to_str().unwrap()],
            vec!["check-config", file.to_str().unwrap()],
        ] {
            let out = Command::new(BIN)
                .args(&args)
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} must fail for {text:?}");
            assert!(err.contains(key), "{args:?}: stderr names {key}: {err}");
        }
    }
    let good = dir.0.join("good.toml");
    std::fs::write(&good, "[server]\nworkers = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stats_without_daemon_fails_clearly() {
    let dir = TempDir::new("nostats");
    let out = Command::new(BIN)
        .args(["stats", "--control-socket"])
        .arg(dir.0.join("none.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the control socket"),
        "{err}"
    );
}
