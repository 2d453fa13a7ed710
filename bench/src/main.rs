//! `relay-bench`: load generators and side-by-side benchmarks of the relay.
//!
//! `load` is the STUN Binding generator (run it inside a client namespace), `probe` waits
//! for a server to answer, and `compare` builds the namespace topology and measures the
//! relay's XDP path, its io_uring path and coturn in one run (`cargo xtask bench stun`).
//! `turn-load` is the TURN ChannelData generator and sink, and `turn-compare` measures the
//! relay and coturn relaying ChannelData on a three-namespace topology
//! (`cargo xtask bench turn`). `turn-xdp` is the four-way ChannelData bench (our XDP
//! fast path, our io_uring path, coturn, an XDP floor, and a kernel-socket floor) driven
//! by a BPF live-frame generator (`cargo xtask bench turn-xdp`); `socket-floor` is that
//! last path's forwarder.

mod compare;
mod load;
mod sfu;
mod socket_floor;
mod tcp_probe;
mod turn_compare;
mod turn_load;
mod turn_xdp;
mod xsk_floor;

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "relay-bench",
    about = "Load generators and benchmarks of the relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a STUN server with Binding requests; prints progress every second.
    Load(load::LoadArgs),
    /// Wait until a STUN server answers a Binding request.
    Probe {
        #[arg(long)]
        target: SocketAddr,
        /// Seconds to wait.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// XDP vs io_uring vs coturn on a namespace topology, one table (needs root).
    Compare(compare::CompareArgs),
    /// TURN ChannelData load through a TURN server to a sink; prints a summary.
    TurnLoad(turn_load::TurnLoadArgs),
    /// TURN ChannelData relaying, the relay vs coturn, one table (needs root).
    TurnCompare(turn_compare::TurnCompareArgs),
    /// TURN ChannelData four ways (XDP, io_uring, coturn, XDP floor) with a BPF
    /// live-frame generator, throughput vs allocations (needs root).
    TurnXdp(turn_xdp::TurnXdpArgs),
    /// The least a ChannelData relay on kernel UDP sockets does (recvmmsg, strip the
    /// header, sendmmsg to one peer): path (e) of `turn-xdp`, which starts it.
    SocketFloor(socket_floor::SocketFloorArgs),
    /// Path (f) of `turn-xdp`: the least a ChannelData relay on AF_XDP does (one fixed
    /// peer, no lookup); started by the bench in the relay namespace, not by hand.
    XskFloor(xsk_floor::XskFloorArgs),
    /// SFU load: synthetic publishers and subscribers (signaling, ICE, DTLS, SRTP)
    /// against `relay run` with the SFU on, in network namespaces (needs root).
    Sfu(sfu::SfuArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // An interrupted run (Ctrl-C, a timeout's SIGTERM) removes its namespaces, daemons and
    // pins instead of leaving them running.
    relay_e2e::clean_up_on_signal()?;
    let result = run(cli);
    // The clean-up pulls the namespaces from under the bench, which then fails; let the
    // clean-up finish and set the exit status instead.
    relay_e2e::await_signal_cleanup();
    result
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Load(args) => {
            let s = load::run(&args)?;
            eprintln!(
                "sent {} answered {} invalid {} in {:.1}s: {:.0} answers/s, loss {:.2}%, rtt p50 {:.1}us p90 {:.1}us p99 {:.1}us p99.9 {:.1}us max {:.1}us",
                s.sent,
                s.answered,
                s.invalid,
                s.seconds,
                s.answers_per_sec(),
                s.loss_pct(),
                s.quantile_us(0.5),
                s.quantile_us(0.9),
                s.quantile_us(0.99),
                s.quantile_us(0.999),
                s.hist.max() as f64 / 1000.0
            );
            if args.json {
                println!("{}", s.to_json());
            }
            Ok(())
        }
        Cmd::Probe { target, timeout } => {
            let t = load::probe(target, Duration::from_secs(timeout))?;
            eprintln!("{target} answered after {t:.0?}");
            Ok(())
        }
        Cmd::Compare(args) => compare::run(&args),
        Cmd::TurnLoad(args) => {
            let s = turn_load::run(&args)?;
            let j = s.to_json(&args);
            eprintln!(
                "sent {} received {} invalid {} in {:.1}s: loss {:.3}%, one-way p50 {:.1}us p99 {:.1}us",
                s.sent,
                s.received,
                s.invalid,
                s.seconds,
                s.loss_pct(),
                j["latency_us"]["p50"].as_f64().unwrap_or(0.0),
                j["latency_us"]["p99"].as_f64().unwrap_or(0.0),
            );
            if args.json {
                println!("{j}");
            }
            Ok(())
        }
        Cmd::TurnCompare(args) => turn_compare::run(&args),
        Cmd::TurnXdp(args) => turn_xdp::run(&args),
        Cmd::SocketFloor(args) => socket_floor::run(&args),
        Cmd::XskFloor(args) => xsk_floor::run(&args),
        Cmd::Sfu(args) => sfu::run(&args),
    }
}
