//! TURN ChannelData relaying, our relay and coturn side by side in one run, on one
//! [`TurnTopology`] (client namespace ↔ relay namespace ↔ peer namespace): for each
//! server, the generator (`relay-bench turn-load`, client namespace, sink thread in the
//! peer namespace) sets up many allocations with a channel each and steps the ChannelData
//! rate up (doubling, then bisecting, a bounded number of steps) to find the highest rate
//! relayed with < 0.1% loss; the table shows that rate and the one-way latency
//! percentiles measured at it.
//!
//! Placement: generator and sink pinned to `--client-cpu`, the server to `--server-cpu`
//! (our relay with one worker, coturn with one relay thread, `-m 1`).

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use relay_e2e::{Daemon, Process, TURN_PEER_NET_V4, TempDir, TurnTopology, wait_tcp_listening};

/// Settings of the comparison.
#[derive(Debug, clap::Args)]
pub struct TurnCompareArgs {
    /// The relay binary to measure.
    #[arg(long)]
    pub relay_bin: PathBuf,
    /// Allocations (each with one channel to the sink; at most 20000).
    #[arg(long, default_value_t = 500)]
    pub allocations: usize,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 3.0)]
    pub step_seconds: f64,
    /// First rate tried (ChannelData messages/s).
    #[arg(long, default_value_t = 20_000)]
    pub start_rate: u64,
    /// Most rate steps per server.
    #[arg(long, default_value_t = 9)]
    pub max_steps: u32,
    /// Application bytes per ChannelData message.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// CPU for the generator and the sink.
    #[arg(long, default_value_t = 0)]
    pub client_cpu: usize,
    /// CPU for the server (default: the last one).
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Where to write the table as Markdown.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// A few seconds in all: 20 allocations, two short steps per server; checks that
    /// both servers relay and that our relay's counters saw the traffic.
    #[arg(long)]
    pub smoke: bool,
}

const PORT: u16 = 3478;
const SINK_PORT: u16 = 4000;
const USER: &str = "u";
const PASSWORD: &str = "p";
const REALM: &str = "bench.relay";
/// A step passes when it loses less than this share of messages, in percent.
const LOSS_LIMIT_PCT: f64 = 0.1;

struct Found {
    /// The highest passing step's summary (None: even the first step lost too much).
    best: Option<serde_json::Value>,
    steps: Vec<(u64, f64)>,
}

/// Runs so far in this process: each uses fresh client ports (see `--first-port`).
static STEPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn load_step(
    topo: &TurnTopology,
    args: &TurnCompareArgs,
    rate: u64,
    seconds: f64,
) -> Result<serde_json::Value> {
    // Ports 10000..32000, below Linux's default ephemeral range.
    let n = STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = 22_000usize.saturating_sub(args.allocations).max(1);
    let first_port = 10_000 + (n * args.allocations) % span;
    let me = std::env::current_exe().context("locate relay-bench")?;
    let server = SocketAddr::new(IpAddr::V4(topo.relay_client_v4), PORT);
    let sink = SocketAddr::new(IpAddr::V4(topo.peer_v4), SINK_PORT);
    let out = Command::new("taskset")
        .args(["-c", &args.client_cpu.to_string()])
        .args(["ip", "netns", "exec", topo.client.name()])
        .arg(me)
        .arg("turn-load")
        .args(["--server", &server.to_string()])
        .args(["--sink", &sink.to_string()])
        .args(["--sink-netns", topo.peer.name()])
        .args(["--allocations", &args.allocations.to_string()])
        .args(["--user", USER, "--password", PASSWORD])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &seconds.to_string()])
        .args(["--size", &args.size.to_string()])
        .args(["--first-port", &first_port.to_string()])
        .arg("--json")
        .stderr(Stdio::inherit())
        .output()
        .context("run the TURN generator")?;
    ensure!(
        out.status.success(),
        "the TURN generator failed ({})",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("generator summary")
}

/// Doubles the rate while steps pass, then bisects between the last pass and the first
/// failure; at most `max_steps` steps.
fn search(topo: &TurnTopology, args: &TurnCompareArgs) -> Result<Found> {
    let seconds = if args.smoke { 1.0 } else { args.step_seconds };
    let max_steps = if args.smoke { 2 } else { args.max_steps.max(1) };
    let mut found = Found {
        best: None,
        steps: Vec::new(),
    };
    let (mut good, mut bad): (u64, Option<u64>) = (0, None);
    let mut rate = args.start_rate.max(1);
    for _ in 0..max_steps {
        let s = load_step(topo, args, rate, seconds)?;
        let loss = s["loss_pct"].as_f64().unwrap_or(100.0);
        eprintln!(
            "   rate {rate}/s: received {}/s, loss {loss:.3}%, one-way p50 {:.1}us p99 {:.1}us",
            s["received_per_sec"].as_f64().unwrap_or(0.0).round(),
            s["latency_us"]["p50"].as_f64().unwrap_or(0.0),
            s["latency_us"]["p99"].as_f64().unwrap_or(0.0)
        );
        found.steps.push((rate, loss));
        if loss < LOSS_LIMIT_PCT {
            good = rate;
            found.best = Some(s);
        } else {
            bad = Some(rate);
        }
        rate = match bad {
            None => rate * 2,
            Some(b) => {
                let next = (good + b) / 2;
                // Stop when the bracket is within 5%.
                if b.saturating_sub(good) * 20 <= b {
                    break;
                }
                next
            }
        };
    }
    Ok(found)
}

fn relay_config(topo: &TurnTopology, files: &TempDir) -> Result<PathBuf> {
    let listen = SocketAddr::new(IpAddr::V4(topo.relay_client_v4), PORT);
    files.write(
        "relay.toml",
        &format!(
            r#"[server]
listen = ["{listen}"]
workers = 1

[dataplane]
backend = "io-uring"

[xdp]
enabled = false

[log]
level = "info"

[turn]
enabled = true
realm = "{REALM}"
relay_ipv4 = "{relay}"

[turn.users]
{USER} = "{PASSWORD}"

[policy]
allow = ["{TURN_PEER_NET_V4}"]
"#,
            relay = topo.relay_peer_v4
        ),
    )
}

fn counter(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, p| &v[*p]).as_u64().unwrap_or(0)
}

fn relay_case(
    topo: &TurnTopology,
    args: &TurnCompareArgs,
    server_cpu: &str,
    files: &TempDir,
) -> Result<Found> {
    let config = relay_config(topo, files)?;
    let config_s = config.display().to_string();
    let daemon = Daemon::start_with(
        &topo.relay,
        &args.relay_bin,
        Some(server_cpu),
        &["--config", &config_s],
    )?;
    let before = daemon.stats()?;
    let found = search(topo, args)?;
    let after = daemon.stats()?;
    let relayed = counter(&after, &["turn", "packets", "client_to_peer"])
        .saturating_sub(counter(&before, &["turn", "packets", "client_to_peer"]));
    eprintln!("   relay stats: {relayed} ChannelData relayed client -> peer");
    if args.smoke {
        ensure!(
            relayed > 0,
            "the relay's counters did not see the ChannelData: {}",
            after["turn"]
        );
    }
    let status = daemon.stop(Duration::from_secs(10))?;
    ensure!(status.success(), "relay exited with {status}");
    Ok(found)
}

fn coturn_case(topo: &TurnTopology, args: &TurnCompareArgs, server_cpu: &str) -> Result<Found> {
    let listen = topo.relay_client_v4.to_string();
    let relay = topo.relay_peer_v4.to_string();
    let child = Command::new("taskset")
        .args(["-c", server_cpu, "ip", "netns", "exec", topo.relay.name()])
        .args(["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls"])
        .args(["--lt-cred-mech", "--user", &format!("{USER}:{PASSWORD}")])
        .args(["--realm", REALM, "-L", &listen, "-p", &PORT.to_string()])
        .args(["--relay-ip", &relay])
        .args(["--allowed-peer-ip", "10.202.0.0-10.202.255.255"])
        .args([
            "-m",
            "1",
            "--no-rfc5780",
            "--simple-log",
            "--log-file",
            "stdout",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start turnserver (coturn); install it with `cargo xtask setup`")?;
    let server = Process::new(child);
    wait_tcp_listening(
        &topo.relay,
        SocketAddr::new(IpAddr::V4(topo.relay_client_v4), PORT),
        Duration::from_secs(10),
    )?;
    let found = search(topo, args)?;
    let _ = server.stop(Duration::from_secs(5));
    Ok(found)
}

/// Runs both servers and prints (and writes) the table.
pub fn run(args: &TurnCompareArgs) -> Result<()> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpu = args.server_cpu.unwrap_or(ncpu.saturating_sub(1));
    if server_cpu >= ncpu || args.client_cpu >= ncpu {
        bail!("CPU numbers must be below {ncpu}");
    }
    ensure!(
        (1..=20_000).contains(&args.allocations),
        "--allocations must be 1..=20000"
    );
    ensure!(
        args.relay_bin.exists(),
        "no relay binary at {}",
        args.relay_bin.display()
    );
    let smoke_args;
    let args = if args.smoke {
        smoke_args = TurnCompareArgs {
            relay_bin: args.relay_bin.clone(),
            allocations: 20,
            step_seconds: 1.0,
            start_rate: 2_000,
            max_steps: 2,
            size: args.size,
            client_cpu: args.client_cpu,
            server_cpu: Some(server_cpu),
            markdown: args.markdown.clone(),
            smoke: true,
        };
        &smoke_args
    } else {
        args
    };
    let server_cpu_s = server_cpu.to_string();
    let topo = TurnTopology::new("rlb").context("create the TURN topology")?;
    let files = TempDir::new("relay-bench-turn")?;

    eprintln!("== relay (io_uring, 1 worker)");
    let ours = relay_case(&topo, args, &server_cpu_s, &files)?;
    eprintln!("== coturn turnserver (-m 1)");
    let theirs = coturn_case(&topo, args, &server_cpu_s)?;
    if args.smoke {
        for (name, f) in [("relay", &ours), ("coturn", &theirs)] {
            ensure!(
                f.best.is_some(),
                "{name}: even {} ChannelData/s lost more than {LOSS_LIMIT_PCT}% (steps: {:?})",
                args.start_rate,
                f.steps
            );
        }
    }

    let rate_of = |f: &Found| {
        f.best
            .as_ref()
            .and_then(|s| s["received_per_sec"].as_f64())
            .unwrap_or(0.0)
    };
    let coturn_rate = rate_of(&theirs);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| server | ChannelData/s at < {LOSS_LIMIT_PCT}% loss | payload Mbit/s | vs coturn | loss | one-way p50 | p90 | p99 | p99.9 | max | steps (rate/s: loss %) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, f) in [
        ("relay (io_uring, 1 worker)", &ours),
        ("coturn 4.6 (turnserver -m 1)", &theirs),
    ] {
        let steps = f
            .steps
            .iter()
            .map(|(r, l)| format!("{r}: {l:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        match &f.best {
            Some(s) => {
                let rps = s["received_per_sec"].as_f64().unwrap_or(0.0);
                let l = |q: &str| s["latency_us"][q].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    md,
                    "| {name} | {rps:.0} | {:.1} | {} | {:.3}% | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {steps} |",
                    rps * args.size as f64 * 8.0 / 1e6,
                    if coturn_rate > 0.0 {
                        format!("{:.2}×", rps / coturn_rate)
                    } else {
                        "-".into()
                    },
                    s["loss_pct"].as_f64().unwrap_or(0.0),
                    l("p50"),
                    l("p90"),
                    l("p99"),
                    l("p999"),
                    l("max"),
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {name} | no step under {LOSS_LIMIT_PCT}% loss | | | | | | | | | {steps} |"
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nLoad: {} allocations (one UDP 5-tuple each, long-term credentials), one channel each to a sink in the peer namespace, {}-byte payloads in ChannelData, round-robin over the allocations; {} s per rate step, the rate doubled from {}/s then bisected (at most {} steps). One-way latency = sink receive time − send time carried in the payload (same clock).",
        args.allocations,
        args.size,
        if args.smoke { 1.0 } else { args.step_seconds },
        args.start_rate,
        if args.smoke { 2 } else { args.max_steps }
    );
    let _ = writeln!(
        md,
        "Placement: generator and sink (one process, kernel UDP sockets, sendmmsg/recvmmsg) pinned to CPU {}; server pinned to CPU {} (relay: one worker; coturn: -m 1).",
        args.client_cpu, server_cpu
    );
    let _ = writeln!(
        md,
        "Machine: {} CPUs, {}, Linux {}.",
        ncpu,
        crate::compare::cpu_model(),
        crate::compare::kernel()
    );
    println!("\n{md}");
    if let Some(path) = &args.markdown {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(path, &md).with_context(|| format!("write {}", path.display()))?;
        eprintln!("table written to {}", path.display());
    }
    Ok(())
}
