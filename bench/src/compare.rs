//! One run, one table: the relay with its XDP fast path, the relay on its io_uring path,
//! and coturn's `turnserver`, each loaded by the same generator on the same namespace
//! topology (client namespace ↔ veth ↔ server namespace).
//!
//! Placement: the generator is pinned to `--client-cpu`, the server to `--server-cpu`
//! (taskset; the relay runs one worker). The XDP program runs in the veth's receive
//! path, which here is inline on the generator's CPU.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use relay_e2e::{Daemon, Process, RELAY_IF, Topology};

/// Settings of the comparison.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The relay binary to measure.
    #[arg(long)]
    pub relay_bin: PathBuf,
    /// Seconds of load per server.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Target requests/s; 0 = as fast as possible (closed loop).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Client sockets (source ports).
    #[arg(long, default_value_t = 64)]
    pub sockets: usize,
    /// Most requests in flight.
    #[arg(long, default_value_t = 1024)]
    pub window: u64,
    /// CPU for the generator.
    #[arg(long, default_value_t = 0)]
    pub client_cpu: usize,
    /// CPU for the server (default: the last one).
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Where to write the table as Markdown.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Short run (2 s each) that also checks each case was served by the intended path.
    #[arg(long)]
    pub smoke: bool,
}

struct Row {
    name: &'static str,
    path: String,
    summary: serde_json::Value,
}

const PORT: u16 = 3478;

fn run_load(topo: &Topology, args: &CompareArgs, target: SocketAddr) -> Result<serde_json::Value> {
    let me = std::env::current_exe().context("locate relay-bench")?;
    let out = Command::new("taskset")
        .args(["-c", &args.client_cpu.to_string()])
        .args(["ip", "netns", "exec", topo.client.name()])
        .arg(me)
        .arg("load")
        .args(["--target", &target.to_string()])
        .args(["--sockets", &args.sockets.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--duration", &args.duration.to_string()])
        .args(["--window", &args.window.to_string()])
        .arg("--json")
        .stderr(Stdio::inherit())
        .output()
        .context("run the generator")?;
    ensure!(
        out.status.success(),
        "the generator failed ({})",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("generator summary")
}

fn probe(topo: &Topology, target: SocketAddr) -> Result<()> {
    let me = std::env::current_exe().context("locate relay-bench")?;
    let st = topo
        .client
        .command(me)
        .args(["probe", "--target", &target.to_string(), "--timeout", "15"])
        .status()
        .context("run the probe")?;
    ensure!(st.success(), "{target} does not answer STUN Binding");
    Ok(())
}

fn counter(stats: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

/// (kernel answered, userspace answered) from a before/after pair of `relay stats`.
fn paths(before: &serde_json::Value, after: &serde_json::Value) -> (u64, u64) {
    let k = |s| {
        counter(s, &["xdp", "counters", "stun_answered_v4"])
            + counter(s, &["xdp", "counters", "stun_answered_v6"])
    };
    let u = |s| counter(s, &["userspace", "stun_answered"]);
    (
        k(after).saturating_sub(k(before)),
        u(after).saturating_sub(u(before)),
    )
}

fn relay_case(
    topo: &Topology,
    args: &CompareArgs,
    server_cpu: &str,
    target: SocketAddr,
    xdp: bool,
) -> Result<(String, serde_json::Value)> {
    let listen = target.to_string();
    let mut flags = vec!["--listen", &listen, "--workers", "1"];
    if xdp {
        flags.extend(["--xdp-iface", RELAY_IF, "--xdp-mode", "native"]);
    } else {
        flags.extend(["--no-xdp", "--backend", "io-uring"]);
    }
    let daemon = Daemon::start_with(&topo.relay, &args.relay_bin, Some(server_cpu), &flags)?;
    probe(topo, target)?;
    let before = daemon.stats()?;
    let summary = run_load(topo, args, target)?;
    let after = daemon.stats()?;
    let (kernel, user) = paths(&before, &after);
    let backend = after["backend"].as_str().unwrap_or("?").to_owned();
    let path = format!("kernel {kernel} / userspace {user} ({backend})");
    if args.smoke {
        let answered = summary["answered"].as_u64().unwrap_or(0);
        ensure!(answered > 0, "no answers at all");
        if xdp {
            ensure!(
                kernel >= answered && user * 10 <= answered,
                "the XDP case was not answered by the kernel: {path}, {answered} answers"
            );
        } else {
            ensure!(
                kernel == 0 && user >= answered && backend == "io_uring",
                "the io_uring case was not answered by io_uring: {path}, {answered} answers"
            );
        }
    }
    let status = daemon.stop(Duration::from_secs(10))?;
    ensure!(status.success(), "relay exited with {status}");
    Ok((path, summary))
}

fn coturn_case(
    topo: &Topology,
    args: &CompareArgs,
    server_cpu: &str,
    target: SocketAddr,
) -> Result<serde_json::Value> {
    let pidfile = std::env::temp_dir().join(format!("{}-turnserver.pid", topo.relay.name()));
    let child = Command::new("taskset")
        .args(["-c", server_cpu, "ip", "netns", "exec", topo.relay.name()])
        .args([
            "turnserver",
            "-n",
            "-S",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
        ])
        .args(["-L", &target.ip().to_string(), "-p", &PORT.to_string()])
        .args([
            "-m",
            "1",
            "--no-rfc5780",
            "--simple-log",
            "--log-file",
            "stdout",
        ])
        .arg("--pidfile")
        .arg(&pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start turnserver (coturn); install it with `cargo xtask setup`")?;
    let server = Process::new(child);
    probe(topo, target)?;
    let summary = run_load(topo, args, target)?;
    if args.smoke {
        ensure!(
            summary["answered"].as_u64().unwrap_or(0) > 0,
            "coturn: no answers"
        );
    }
    let _ = server.stop(Duration::from_secs(5));
    let _ = std::fs::remove_file(pidfile);
    Ok(summary)
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub(crate) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Runs the three cases and prints (and writes) the table.
pub fn run(args: &CompareArgs) -> Result<()> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpu = args.server_cpu.unwrap_or(ncpu.saturating_sub(1));
    if server_cpu >= ncpu || args.client_cpu >= ncpu {
        bail!("CPU numbers must be below {ncpu}");
    }
    let server_cpu_s = server_cpu.to_string();
    let mut args_eff = CompareArgs {
        relay_bin: args.relay_bin.clone(),
        duration: args.duration,
        rate: args.rate,
        sockets: args.sockets,
        window: args.window,
        client_cpu: args.client_cpu,
        server_cpu: Some(server_cpu),
        markdown: args.markdown.clone(),
        smoke: args.smoke,
    };
    if args.smoke {
        args_eff.duration = 2.0;
    }
    let args = &args_eff;
    ensure!(
        args.relay_bin.exists(),
        "no relay binary at {}",
        args.relay_bin.display()
    );
    let topo = Topology::new("rlb").context("create the namespace topology")?;
    let target = SocketAddr::new(IpAddr::V4(topo.relay_v4), PORT);

    let mut rows = Vec::new();
    eprintln!("== relay, XDP fast path (native) on {RELAY_IF}");
    let (path, s) = relay_case(&topo, args, &server_cpu_s, target, true)?;
    rows.push(Row {
        name: "relay, XDP (native)",
        path,
        summary: s,
    });
    eprintln!("== relay, io_uring (--no-xdp)");
    let (path, s) = relay_case(&topo, args, &server_cpu_s, target, false)?;
    rows.push(Row {
        name: "relay, io_uring",
        path,
        summary: s,
    });
    eprintln!("== coturn turnserver -S");
    let s = coturn_case(&topo, args, &server_cpu_s, target)?;
    rows.push(Row {
        name: "coturn 4.6 (turnserver -S)",
        path: "userspace (epoll)".into(),
        summary: s,
    });

    let coturn = rows
        .last()
        .and_then(|r| r.summary["answers_per_sec"].as_f64())
        .unwrap_or(0.0);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| server | answers/s | vs coturn | loss | RTT p50 | RTT p99 | RTT p99.9 | RTT max | answered by (relay stats) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let s = &r.summary;
        let aps = s["answers_per_sec"].as_f64().unwrap_or(0.0);
        let rtt = |q: &str| s["rtt_us"][q].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.2}% | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {} |",
            r.name,
            aps,
            if coturn > 0.0 {
                format!("{:.2}×", aps / coturn)
            } else {
                "-".into()
            },
            s["loss_pct"].as_f64().unwrap_or(0.0),
            rtt("p50"),
            rtt("p99"),
            rtt("p999"),
            rtt("max"),
            r.path
        );
    }
    let _ = writeln!(
        md,
        "\nLoad: {} s per server, {} client sockets, {}, window {} requests in flight, 20-byte Binding requests over IPv4.",
        args.duration,
        args.sockets,
        if args.rate == 0 {
            "as fast as possible".to_owned()
        } else {
            format!("target {} requests/s", args.rate)
        },
        args.window
    );
    let _ = writeln!(
        md,
        "Placement: generator (kernel UDP sockets, sendmmsg/recvmmsg, one thread) pinned to CPU {}; server pinned to CPU {} (relay: one worker); the XDP program runs inline in the veth receive path on the generator's CPU.",
        args.client_cpu, server_cpu
    );
    let _ = writeln!(
        md,
        "Note: the generator is kernel UDP sockets (about 0.8 Mpps per core on this machine kind), so the XDP figure is bounded by the generator, not by the fast path."
    );
    let _ = writeln!(
        md,
        "Machine: {} CPUs, {}, Linux {}.",
        ncpu,
        cpu_model(),
        kernel()
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
