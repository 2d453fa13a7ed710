//! `cargo xtask`: the project's two front-door commands (`run`, `test`) and the helpers
//! behind them (`setup`, `fuzz`, `bench`).
//!
//! It exists so that a fresh machine needs nothing done by hand: every command first runs
//! the idempotent `scripts/setup.sh`, then the cargo steps, printing each command before it
//! runs and stopping at the first failure with a message naming the step.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test, fuzz and bench the relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (Debian packages, rust-src, bpf-linker, bpffs).
    Setup {
        /// Also install cargo-fuzz.
        #[arg(long)]
        fuzz: bool,
    },
    /// Set up, build in release and run the daemon (`relay run`); arguments after `--`
    /// go to `relay run` (none: the embedded default, STUN on 127.0.0.1:3478 and [::1]:3478).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// THE test command: set-up, fmt, clippy, all tests (privileged ones must run),
    /// the namespace end-to-end tests, a fuzz smoke run and a bench smoke run.
    Test {
        /// Seconds of fuzzing in the smoke run.
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Skip the fuzz smoke run (for quick local iterations only).
        #[arg(long)]
        no_fuzz: bool,
        /// Skip the bench smoke run (for quick local iterations only).
        #[arg(long)]
        no_bench: bool,
    },
    /// Run a cargo-fuzz target for a bounded time.
    Fuzz {
        #[arg(long, default_value = "stun_decode")]
        target: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Benchmarks on a namespace topology.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// STUN Binding: our relay with XDP, our relay on io_uring, coturn; one table.
    Stun {
        /// Seconds of load per server.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Target request rate (requests/s); 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Client sockets (source ports).
        #[arg(long, default_value_t = 64)]
        sockets: usize,
        /// Two seconds per server, debug build, no Markdown file: proves the bench works.
        #[arg(long)]
        smoke: bool,
        /// Where to write the Markdown table.
        #[arg(long, default_value = "target/bench/stun.md")]
        markdown: PathBuf,
    },
    /// TURN ChannelData relaying: our relay vs coturn, highest rate at < 0.1% loss and
    /// one-way latency; one table.
    Turn {
        /// Allocations, each with a channel to the sink.
        #[arg(long, default_value_t = 500)]
        allocations: usize,
        /// Seconds per rate step.
        #[arg(long, default_value_t = 3.0)]
        step_seconds: f64,
        /// First rate tried (ChannelData messages/s); doubled, then bisected.
        #[arg(long, default_value_t = 20_000)]
        start_rate: u64,
        /// Application bytes per ChannelData message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// A few seconds, debug build, 20 allocations: proves the bench works.
        #[arg(long)]
        smoke: bool,
        /// Where to write the Markdown table.
        #[arg(long, default_value = "target/bench/turn.md")]
        markdown: PathBuf,
    },
    /// TURN ChannelData four ways in one run: our XDP fast path, our io_uring path,
    /// coturn and an XDP floor, with a BPF live-frame generator; throughput vs number of
    /// allocations, latency, CPU per packet.
    TurnXdp {
        /// Allocation counts (comma-separated).
        #[arg(long, default_value = "1,100,1000,10000")]
        allocations: String,
        /// Seconds per rate step.
        #[arg(long, default_value_t = 2.0)]
        step_seconds: f64,
        /// Application bytes per ChannelData message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Paths (comma-separated: xdp, io-uring, coturn, floor, socket-floor, xsk-floor).
        #[arg(
            long,
            default_value = "xdp,io-uring,io-uring-xsk,coturn,floor,socket-floor,xsk-floor"
        )]
        paths: String,
        /// Receive processing of the relay's veth in threaded NAPI on the server CPU
        /// instead of inline on the generator's CPU.
        #[arg(long)]
        threaded_rx: bool,
        /// Receive processing of the sink's veth in threaded NAPI on the generator's CPU
        /// instead of inline in each relay's transmit (the relays' CPU then holds their own
        /// work only).
        #[arg(long)]
        threaded_sink: bool,
        /// Measure every path this many times in alternating order and report each
        /// ratio's median and range over the rounds.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// A few seconds, debug build, 10 allocations: proves every path relays.
        #[arg(long)]
        smoke: bool,
        /// The relayed direction: client-to-peer (ChannelData in) or peer-to-client (UDP
        /// in; the socket and AF_XDP floors are left out).
        #[arg(long, default_value = "client-to-peer")]
        direction: String,
        /// Where to write the Markdown report (CSV and SVG next to it).
        #[arg(long, default_value = "target/bench/turn-xdp.md")]
        markdown: PathBuf,
    },
    /// SFU load: synthetic participants (signaling, ICE, DTLS, SRTP, simulcast VP8 and
    /// Opus-rate audio with levels) against the relay's SFU; forwarded packets/s, relay
    /// CPU, receiver packet rates per room size.
    Sfu {
        /// Scenarios ROOMSxPARTICIPANTSxVIDEO_PUBLISHERS (per room; all publish audio).
        #[arg(long, default_value = "1x10x10,1x50x10,1x200x10")]
        scenarios: String,
        /// Measured seconds per scenario.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// 2 rooms x 3 participants for 3 s, debug build; fails when nothing is forwarded.
        #[arg(long)]
        smoke: bool,
        /// Where to write the Markdown table.
        #[arg(long, default_value = "target/bench/sfu.md")]
        markdown: PathBuf,
        /// SFUs to measure, each scenario against each: relay (ours), janus (Debian's
        /// Janus VideoRoom; the bench installs the package with apt-get when missing).
        #[arg(long, default_value = "relay")]
        targets: String,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match cli.command {
        Cmd::Setup { fuzz } => setup(&root, fuzz, false),
        Cmd::Run { args } => {
            setup(&root, false, true)?;
            let mut cmd = cargo();
            cmd.args(["run", "--release", "-p", "relay", "--", "run"])
                .args(args);
            // exec-like: the daemon's exit status is ours.
            run("run the relay", &mut cmd)
        }
        Cmd::Test {
            fuzz_seconds,
            no_fuzz,
            no_bench,
        } => test(&root, fuzz_seconds, no_fuzz, no_bench),
        Cmd::Fuzz { target, seconds } => {
            setup(&root, true, true)?;
            fuzz(&root, &target, seconds)
        }
        Cmd::Bench {
            what:
                BenchCmd::Stun {
                    duration,
                    rate,
                    sockets,
                    smoke,
                    markdown,
                },
        } => {
            setup(&root, false, false)?;
            bench_stun(&root, duration, rate, sockets, smoke, &markdown)
        }
        Cmd::Bench {
            what:
                BenchCmd::Turn {
                    allocations,
                    step_seconds,
                    start_rate,
                    size,
                    smoke,
                    markdown,
                },
        } => {
            setup(&root, false, false)?;
            let t = TurnBench {
                allocations,
                step_seconds,
                start_rate,
                size,
                smoke,
            };
            bench_turn(&root, &t, &markdown)
        }
        Cmd::Bench {
            what:
                BenchCmd::TurnXdp {
                    allocations,
                    step_seconds,
                    size,
                    paths,
                    threaded_rx,
                    threaded_sink,
                    rounds,
                    smoke,
                    direction,
                    markdown,
                },
        } => {
            setup(&root, false, false)?;
            let t = TurnXdpBench {
                allocations,
                step_seconds,
                size,
                paths,
                threaded_rx,
                threaded_sink,
                rounds,
                smoke,
                direction,
            };
            // A smoke run does not overwrite the real report.
            let markdown = if smoke && markdown == Path::new("target/bench/turn-xdp.md") {
                PathBuf::from("target/bench/turn-xdp-smoke.md")
            } else {
                markdown
            };
            bench_turn_xdp(&root, &t, &markdown)
        }
        Cmd::Bench {
            what:
                BenchCmd::Sfu {
                    scenarios,
                    duration,
                    smoke,
                    markdown,
                    targets,
                },
        } => {
            setup(&root, false, false)?;
            // A smoke run does not overwrite the real report.
            let markdown = if smoke && markdown == Path::new("target/bench/sfu.md") {
                PathBuf::from("target/bench/sfu-smoke.md")
            } else {
                markdown
            };
            bench_sfu(&root, &scenarios, duration, smoke, &markdown, &targets)
        }
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Prints the command, runs it with inherited stdio, fails naming `step` if it fails.
fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    eprintln!("\n==> [{step}] {shown}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("step '{step}': could not start `{shown}`"))?;
    if !status.success() {
        bail!(
            "step '{step}' failed ({status}) after {:.0?}: `{shown}`",
            started.elapsed()
        );
    }
    eprintln!("==> [{step}] ok ({:.0?})", started.elapsed());
    Ok(())
}

/// Like [`run`], but also keeps cargo test's "Running ..." and "test result:" lines
/// (forwarding all output as it comes) so that they can be shown again at the end.
fn run_test_step(step: &str, cmd: &mut Command, summary: &mut Vec<String>) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};

    let shown = show(cmd);
    eprintln!("\n==> [{step}] {shown}");
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("step '{step}': could not start `{shown}`"))?;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    let streams: [(Box<dyn std::io::Read + Send>, bool); 2] = [
        (Box::new(child.stdout.take().context("stdout")?), true),
        (Box::new(child.stderr.take().context("stderr")?), false),
    ];
    for (stream, is_stdout) in streams {
        let kept = Arc::clone(&kept);
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                if is_stdout {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&line);
                    let _ = out.write_all(b"\n");
                } else {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&line);
                    let _ = err.write_all(b"\n");
                }
                let text = String::from_utf8_lossy(&line);
                let t = text.trim_start();
                if t.starts_with("Running ")
                    || t.starts_with("Doc-tests ")
                    || t.starts_with("test result:")
                {
                    kept.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(text.into_owned());
                }
            }
        }));
    }
    let status = child.wait()?;
    for t in threads {
        let _ = t.join();
    }
    summary.push(format!("[{step}]"));
    summary.extend(kept.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    if !status.success() {
        eprintln!("\n==> summary of the cargo test runs so far:");
        for l in summary.iter() {
            eprintln!("{l}");
        }
        bail!(
            "step '{step}' failed ({status}) after {:.0?}: `{shown}`",
            started.elapsed()
        );
    }
    eprintln!("==> [{step}] ok ({:.0?})", started.elapsed());
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!("(cd {}) ", dir.display()));
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn setup(root: &Path, fuzz: bool, minimal: bool) -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/setup.sh"));
    if fuzz {
        cmd.env("SETUP_FUZZ", "1");
    }
    if minimal {
        cmd.env("SETUP_MINIMAL", "1");
    }
    run("setup", &mut cmd)
}

/// Crates outside the workspace (its `exclude` list), checked by `fmt` one by one.
const OUT_OF_WORKSPACE: [&str; 3] = ["ebpf/relay-ebpf", "ebpf/bench-ebpf", "relay/fuzz"];

fn test(root: &Path, fuzz_seconds: u64, no_fuzz: bool, no_bench: bool) -> Result<()> {
    let started = Instant::now();
    setup(root, !no_fuzz, false)?;
    run("fmt", cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    // The crates the workspace excludes (BPF programs, fuzz targets) are formatted too.
    for krate in OUT_OF_WORKSPACE {
        let manifest = root.join(krate).join("Cargo.toml");
        run(
            "fmt",
            cargo()
                .args(["fmt", "--manifest-path"])
                .arg(&manifest)
                .args(["--", "--check"]),
        )
        .with_context(|| {
            format!(
                "formatting differs in {krate}: run `cargo fmt --manifest-path {}`",
                manifest.display()
            )
        })?;
    }
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The fuzz targets are linted too (they are outside the workspace). The workspace's
    // target directory lets them reuse what the clippy run above already checked.
    run(
        "clippy fuzz targets",
        cargo()
            .args(["clippy", "--manifest-path"])
            .arg(root.join("relay/fuzz/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir(root))
            .args(["--bins", "--", "-D", "warnings"]),
    )?;
    // The end-to-end tests run the `relay` binary; a dependent crate cannot build another
    // package's binary, so build it here and hand its path over.
    run(
        "build relay",
        cargo().args(["build", "-p", "relay", "--bins"]),
    )?;
    let relay_bin = target_dir(root).join("debug/relay");
    let mut summary = Vec::new();
    run_test_step(
        "unit and integration tests",
        cargo()
            .args(["test", "--workspace", "--exclude", "relay-e2e"])
            .env("RELAY_REQUIRE_PRIVILEGED", "1"),
        &mut summary,
    )?;
    run_test_step(
        "namespace end-to-end tests",
        cargo()
            .args(["test", "-p", "relay-e2e"])
            .env("RELAY_REQUIRE_PRIVILEGED", "1")
            .env("RELAY_BIN", &relay_bin),
        &mut summary,
    )?;
    if !no_fuzz {
        // Every parser of network input has a target: each gets the smoke run's seconds.
        for target in fuzz_targets(root)? {
            fuzz(root, &target, fuzz_seconds)?;
        }
    }
    if !no_bench {
        bench_stun(
            root,
            2,
            0,
            16,
            true,
            &target_dir(root).join("bench/stun-smoke.md"),
        )?;
        bench_turn(
            root,
            &TurnBench {
                allocations: 20,
                step_seconds: 1.0,
                start_rate: 2_000,
                size: 200,
                smoke: true,
            },
            &target_dir(root).join("bench/turn-smoke.md"),
        )?;
        // Both directions; the socket and AF_XDP floors relay client → peer only. The
        // peer → client run puts the sink's receive processing in its own thread, so the
        // smoke covers that placement too.
        for (direction, paths, threaded_sink, report) in [
            (
                "client-to-peer",
                "xdp,xdp-generic,io-uring,io-uring-xsk,coturn,floor,socket-floor,xsk-floor",
                false,
                "bench/turn-xdp-smoke.md",
            ),
            (
                "peer-to-client",
                "xdp,xdp-generic,io-uring,io-uring-xsk,coturn,floor",
                true,
                "bench/turn-xdp-smoke-peer-to-client.md",
            ),
        ] {
            bench_turn_xdp(
                root,
                &TurnXdpBench {
                    allocations: "10".into(),
                    step_seconds: 1.0,
                    size: 200,
                    paths: paths.into(),
                    threaded_rx: false,
                    threaded_sink,
                    rounds: 1,
                    smoke: true,
                    direction: direction.into(),
                },
                &target_dir(root).join(report),
            )?;
        }
        bench_sfu(
            root,
            "",
            3.0,
            true,
            &target_dir(root).join("bench/sfu-smoke.md"),
            "relay",
        )?;
    }
    eprintln!("\n==> cargo test summary");
    for l in &summary {
        eprintln!("{l}");
    }
    eprintln!(
        "\nxtask test: all steps passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// The `[[bin]]` names of the fuzz crate (relay/fuzz/Cargo.toml), in file order.
fn fuzz_targets(root: &Path) -> Result<Vec<String>> {
    let path = root.join("relay/fuzz/Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(value) = line.strip_prefix("name")
            && let Some(value) = value.trim_start().strip_prefix('=')
        {
            targets.push(value.trim().trim_matches('"').to_string());
        }
    }
    if targets.is_empty() {
        bail!(
            "{} lists no fuzz targets ([[bin]] sections)",
            path.display()
        );
    }
    Ok(targets)
}

fn fuzz(root: &Path, target: &str, seconds: u64) -> Result<()> {
    let fuzz_dir = root.join("relay/fuzz");
    if !fuzz_dir.join("Cargo.toml").exists() {
        bail!(
            "no fuzz crate at {}: the fuzz target '{target}' does not exist yet",
            fuzz_dir.display()
        );
    }
    run(
        "fuzz",
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .args(["--", &format!("-max_total_time={seconds}")])
            // The fuzzer only exercises the codec: no eBPF object needed.
            .env("RELAY_SKIP_EBPF", "1")
            // The stable toolchain's cargo must not leak into the nightly build.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .current_dir(root.join("relay")),
    )
}

fn bench_stun(
    root: &Path,
    duration: u64,
    rate: u64,
    sockets: usize,
    smoke: bool,
    markdown: &Path,
) -> Result<()> {
    let bin_dir = build_bench(root, smoke)?;
    let duration = if smoke { 2 } else { duration };
    let mut cmd = Command::new(bin_dir.join("relay-bench"));
    cmd.arg("compare")
        .arg("--relay-bin")
        .arg(bin_dir.join("relay"))
        .args(["--duration", &duration.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--sockets", &sockets.to_string()])
        .arg("--markdown")
        .arg(if markdown.is_absolute() {
            markdown.to_path_buf()
        } else {
            root.join(markdown)
        });
    if smoke {
        cmd.arg("--smoke");
    }
    run("bench stun", &mut cmd)
}

struct TurnBench {
    allocations: usize,
    step_seconds: f64,
    start_rate: u64,
    size: usize,
    smoke: bool,
}

fn bench_turn(root: &Path, t: &TurnBench, markdown: &Path) -> Result<()> {
    let bin_dir = build_bench(root, t.smoke)?;
    let mut cmd = Command::new(bin_dir.join("relay-bench"));
    cmd.arg("turn-compare")
        .arg("--relay-bin")
        .arg(bin_dir.join("relay"))
        .args(["--allocations", &t.allocations.to_string()])
        .args(["--step-seconds", &t.step_seconds.to_string()])
        .args(["--start-rate", &t.start_rate.to_string()])
        .args(["--size", &t.size.to_string()])
        .arg("--markdown")
        .arg(if markdown.is_absolute() {
            markdown.to_path_buf()
        } else {
            root.join(markdown)
        });
    if t.smoke {
        cmd.arg("--smoke");
    }
    run("bench turn", &mut cmd)
}

struct TurnXdpBench {
    allocations: String,
    step_seconds: f64,
    size: usize,
    paths: String,
    threaded_rx: bool,
    threaded_sink: bool,
    rounds: u32,
    smoke: bool,
    direction: String,
}

fn bench_turn_xdp(root: &Path, t: &TurnXdpBench, markdown: &Path) -> Result<()> {
    let bin_dir = build_bench(root, t.smoke)?;
    let mut cmd = Command::new(bin_dir.join("relay-bench"));
    cmd.arg("turn-xdp")
        .arg("--relay-bin")
        .arg(bin_dir.join("relay"))
        .args(["--allocations", &t.allocations])
        .args(["--step-seconds", &t.step_seconds.to_string()])
        .args(["--size", &t.size.to_string()])
        .args(["--paths", &t.paths])
        .args(["--rounds", &t.rounds.to_string()])
        .args(["--direction", &t.direction])
        .arg("--markdown")
        .arg(if markdown.is_absolute() {
            markdown.to_path_buf()
        } else {
            root.join(markdown)
        });
    if t.threaded_rx {
        cmd.arg("--threaded-rx");
    }
    if t.threaded_sink {
        cmd.arg("--threaded-sink");
    }
    if t.smoke {
        cmd.arg("--smoke");
    }
    run("bench turn-xdp", &mut cmd)
}

fn bench_sfu(
    root: &Path,
    scenarios: &str,
    duration: f64,
    smoke: bool,
    markdown: &Path,
    targets: &str,
) -> Result<()> {
    let bin_dir = build_bench(root, smoke)?;
    let mut cmd = Command::new(bin_dir.join("relay-bench"));
    cmd.arg("sfu")
        .args(["--targets", targets])
        .arg("--relay-bin")
        .arg(bin_dir.join("relay"))
        .args(["--duration", &duration.to_string()])
        .arg("--markdown")
        .arg(if markdown.is_absolute() {
            markdown.to_path_buf()
        } else {
            root.join(markdown)
        });
    if !scenarios.is_empty() {
        cmd.args(["--scenarios", scenarios]);
    }
    if smoke {
        cmd.arg("--smoke");
    }
    run("bench sfu", &mut cmd)
}

/// Builds the relay and the bench binaries (debug for a smoke run, release otherwise) and
/// returns the directory holding them.
fn build_bench(root: &Path, smoke: bool) -> Result<PathBuf> {
    let (profile, profile_dir) = if smoke {
        ("dev", "debug")
    } else {
        ("release", "release")
    };
    run(
        "build bench",
        cargo().args([
            "build",
            "--profile",
            profile,
            "-p",
            "relay",
            "-p",
            "relay-bench",
            "--bins",
        ]),
    )?;
    Ok(target_dir(root).join(profile_dir))
}
