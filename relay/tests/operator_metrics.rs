//! The operator surface end to end: the daemon started with TURN configured and the
//! metrics endpoint on a free loopback port serves the Prometheus families of contract D;
//! `relay status`, `relay allocations --json`, `relay kick` and `relay reload` talk to it;
//! SIGHUP reloads; SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relay");
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!("relay-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon process; killed on drop if the test fails before stopping it.
struct Daemon {
    child: Option<Child>,
    log: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Daemon {
    fn spawn(args: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child: Some(child),
            log: rx,
            lines: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `needle`.
    fn wait_for_line(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.log.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.lines.push(line);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no log line with {needle:?} within {within:?}; log:\n{}",
            self.lines.join("\n")
        );
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits (bounded) for the exit; returns whether it succeeded.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("relay did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
