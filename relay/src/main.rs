//! The `relay` binary: the daemon (`relay run`) and the operator CLI (`relay stats`,
//! `relay check-config`).
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use relay::config::{BackendChoice, Config, DEFAULT_CONTROL_SOCKET, Overrides, XdpModeChoice};
use relay::control::{self, Stats};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Exit code for a configuration the daemon refuses.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "Kernel-bypass WebRTC media relay: STUN, TURN and an SFU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (with no config: STUN and TURN on 127.0.0.1:3478 and [::1]:3478,
    /// the SFU's signaling on 127.0.0.1:8080).
    Run(RunArgs),
    /// Print the running daemon's counters.
    Stats {
        /// Control socket of the daemon.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// One-screen summary of the running daemon (STUN, XDP and TURN).
    Status {
        /// Control socket of the daemon.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// List TURN allocations.
    Allocations {
        /// Only this user (also matches the user part of "expiry:user").
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only allocations whose client or relayed address is this IP or IP:PORT.
        #[arg(long, value_name = "ADDR")]
        addr: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Control socket of the daemon.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Remove TURN allocations: every allocation of a user, or one client's / relayed address's.
    Kick {
        /// Every allocation of this user.
        #[arg(long, value_name = "USER", group = "target", required_unless_present_any = ["client", "relayed"])]
        user: Option<String>,
        /// The allocation(s) of this client address (IP:PORT).
        #[arg(long, value_name = "ADDR", group = "target")]
        client: Option<SocketAddr>,
        /// The allocation owning this relayed address (IP:PORT).
        #[arg(long, value_name = "ADDR", group = "target")]
        relayed: Option<SocketAddr>,
        /// Control socket of the daemon.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Reload TLS certificate/key, credentials, peer policy and quotas (as SIGHUP does);
    /// allocations stay.
    Reload {
        /// Control socket of the daemon.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Detach the pinned XDP fast path left by a daemon run with xdp.persist = true and
    /// remove its pins (links, then maps).
    XdpUnload {
        /// The pin directory (xdp.pin_dir).
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/relay")]
        pin_dir: PathBuf,
    },
    /// Print a signed join token for the signaling server (the secret is never printed).
    #[command(group(clap::ArgGroup::new("secret").required(true)))]
    Token {
        /// File holding the signing secret (a trailing newline is ignored).
        #[arg(long, value_name = "FILE", group = "secret")]
        secret_file: Option<PathBuf>,
        /// Environment variable holding the signing secret.
        #[arg(long, value_name = "VAR", group = "secret")]
        secret_env: Option<String>,
        /// Room the token admits to.
        #[arg(long)]
        room: String,
        /// Identity of the holder.
        #[arg(long)]
        identity: String,
        /// Validity in seconds from now.
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        ttl: u64,
        /// Allow the peer-to-peer mode.
        #[arg(long)]
        p2p: bool,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file (default: the embedded configuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve (repeatable; replaces server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Worker threads (0 = one per online CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Userspace data path backend.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Do not start the XDP fast path.
    #[arg(long)]
    no_xdp: bool,
    /// Do not start the SFU and its signaling server (sfu.enabled = false).
    #[arg(long)]
    no_sfu: bool,
    /// Interface for the XDP fast path (repeatable; replaces xdp.interfaces).
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    xdp_iface: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeChoice>,
    /// bpffs directory for the pinned XDP links and maps (replaces xdp.pin_dir).
    #[arg(long, value_name = "DIR")]
    xdp_pin_dir: Option<PathBuf>,
    /// Detach the XDP fast path on exit (sets xdp.persist = false).
    #[arg(long)]
    xdp_no_persist: bool,
    /// TURN state file for restarts (replaces turn.state_file; "" = off).
    // clap's PathBuf parser refuses an empty value, which is how this option says "off".
    #[arg(long, value_name = "PATH", value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from))]
    turn_state_file: Option<PathBuf>,
    /// Control socket path (replaces control.socket).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Log level or filter (overrides RUST_LOG and log.level).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Serve Prometheus metrics on this address (replaces metrics.listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Stats {
            control_socket,
            json,
        } => report(stats(&control_socket, json)),
        Command::CheckConfig { file } => check_config(&file),
        Command::Status { control_socket } => report(status(&control_socket)),
        Command::Allocations {
            user,
            addr,
            json,
            control_socket,
        } => report(allocations(
            &control_socket,
            user.as_deref(),
            addr.as_deref(),
            json,
        )),
        Command::Kick {
            user,
            client,
            relayed,
            control_socket,
        } => report(kick(&control_socket, user, client, relayed)),
        Command::Reload { control_socket } => report(reload(&control_socket)),
        Command::XdpUnload { pin_dir } => report(xdp_unload(&pin_dir)),
        Command::Token {
            secret_file,
            secret_env,
            room,
            identity,
            ttl,
            p2p,
        } => report(
            relay::signaling::token::issue(
                secret_file.as_deref(),
                secret_env.as_deref(),
                &room,
                &identity,
                ttl,
                p2p,
            )
            .map(|token| println!("{token}"))
            .map_err(anyhow::Error::from),
        ),
    }
}

fn xdp_unload(pin_dir: &Path) -> anyhow::Result<()> {
    let removed = relay::xdp::unload_pins(pin_dir)
        .with_context(|| format!("removing the pinned XDP fast path in {}", pin_dir.display()))?;
    if removed.is_empty() {
        println!("nothing pinned in {}", pin_dir.display());
    }
    for path in removed {
        println!("removed {}", path.display());
    }
    Ok(())
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping causes whose text the message already contains
/// (many errors print their source themselves).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn load(args: &RunArgs) -> Result<Config, relay::config::ConfigError> {
    let base = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default()?,
    };
    let mut config = base.apply(&Overrides {
        listen: args.listen.clone(),
        workers: args.workers,
        backend: args.backend,
        no_xdp: args.no_xdp,
        no_sfu: args.no_sfu,
        xdp_interfaces: args.xdp_iface.clone(),
        xdp_mode: args.xdp_mode,
        control_socket: args.control_socket.clone(),
        log_level: args.log_level.clone(),
        metrics_listen: args.metrics_listen,
    })?;
    if let Some(dir) = &args.xdp_pin_dir {
        config.xdp.pin_dir = dir.clone();
    }
    if args.xdp_no_persist {
        config.xdp.persist = false;
    }
    if let Some(p) = &args.turn_state_file {
        config.turn.state_file = (!p.as_os_str().is_empty()).then(|| p.clone());
    }
    Ok(config)
}

fn run(args: RunArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config, args.log_level.is_some());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %args.config.as_deref().map_or("embedded default".into(), |p| p.display().to_string()),
        "relay starting"
    );
    let reloader = move || load(&args);
    report(relay::daemon::run_reloadable(&config, Some(&reloader)).context("relay run"))
}

/// Logs to stderr. Filter: --log-level, else RUST_LOG, else log.level.
fn init_logging(config: &Config, from_flag: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !from_flag && !env.trim().is_empty() => {
            EnvFilter::try_new(&env).unwrap_or_else(|e| {
                eprintln!("warning: ignoring RUST_LOG={env:?}: {e}");
                EnvFilter::new(&config.log_level)
            })
        }
        _ => EnvFilter::new(&config.log_level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn stats(path: &Path, json: bool) -> anyhow::Result<()> {
    let (stats, raw) = control::fetch_stats(path)?;
    if json {
        println!("{raw}");
    } else {
        print!("{}", table(&stats));
    }
    Ok(())
}

/// The human view of the stats.
fn table(s: &Stats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "relay {} | backend {} | {} workers | listening on {}",
        s.version,
        s.backend,
        s.workers,
        s.listen.join(", ")
    );
    let _ = writeln!(out, "\nuserspace");
    let u = &s.userspace;
    for (k, v) in [
        ("received", u.received),
        ("stun_answered", u.stun_answered),
        ("dropped", u.dropped),
        ("errors", u.errors),
    ] {
        let _ = writeln!(out, "  {k:<22}{v:>14}");
    }
    for (k, v) in &u.dropped_by_reason {
        let _ = writeln!(out, "    dropped {k:<20}{v:>12}");
    }
    for (k, v) in &u.af_xdp {
        let _ = writeln!(out, "    af_xdp {k:<21}{v:>12}");
    }
    match &s.xdp {
        None => {
            let _ = writeln!(out, "\nxdp fast path: off");
        }
        Some(x) => {
            let attached: Vec<String> = x
                .attached
                .iter()
                .map(|a| format!("{} ({})", a.interface, a.mode))
                .collect();
            let _ = writeln!(out, "\nxdp fast path: {}", attached.join(", "));
            match &x.counters {
                Some(c) => {
                    for name in relay_common::counter::NAMES {
                        let v = c.get(name).copied().unwrap_or(0);
                        let _ = writeln!(out, "  {name:<22}{v:>14}");
                    }
                }
                None => {
                    let _ = writeln!(out, "  counters unavailable (see the daemon's log)");
                }
            }
        }
    }
    out
}

fn status(path: &Path) -> anyhow::Result<()> {
    use std::fmt::Write;
    let (s, _) = control::fetch_stats(path)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "relay {} running | backend {} | {} workers | UDP {}",
        s.version,
        s.backend,
        s.workers,
        s.listen.join(", ")
    );
    let xdp = match &s.xdp {
        None => "off".to_owned(),
        Some(x) => x
            .attached
            .iter()
            .map(|a| format!("{} ({})", a.interface, a.mode))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let _ = writeln!(out, "xdp fast path: {xdp}");
    let u = &s.userspace;
    let _ = writeln!(
        out,
        "stun: {} received, {} answered, {} dropped, {} errors",
        u.received, u.stun_answered, u.dropped, u.errors
    );
    match &s.turn {
        None => {
            let _ = writeln!(out, "turn: off");
        }
        Some(t) => {
            let g = |m: &std::collections::BTreeMap<String, u64>, k: &str| {
                m.get(k).copied().unwrap_or(0)
            };
            let _ = writeln!(
                out,
                "turn: {} allocations ({} created), {} permissions, {} channels",
                t.allocations, t.allocations_created, t.permissions, t.channels
            );
            let _ = writeln!(
                out,
                "  relayed client->peer {} packets / {} bytes, peer->client {} packets / {} bytes",
                g(&t.packets, "client_to_peer"),
                g(&t.bytes, "client_to_peer"),
                g(&t.packets, "peer_to_client"),
                g(&t.bytes, "peer_to_client")
            );
            let fails: Vec<String> = t
                .auth_failures
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                out,
                "  auth failures: {}",
                if fails.is_empty() {
                    "none".to_owned()
                } else {
                    fails.join(", ")
                }
            );
            let errs: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            if !errs.is_empty() {
                let _ = writeln!(out, "  error responses: {}", errs.join(", "));
            }
        }
    }
    print!("{out}");
    Ok(())
}

fn allocations(
    path: &Path,
    user: Option<&str>,
    addr: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (rows, raw) = control::fetch_allocations(path, user, addr)?;
    if json {
        println!("{raw}");
        return Ok(());
    }
    println!(
        "{:<24} {:<5} {:<42} {:<42} {:>7} {:>5} {:>4} {:>12} {:>12}",
        "USER", "PROTO", "CLIENT", "RELAYED", "EXPIRES", "PERMS", "CHAN", "BYTES_OUT", "BYTES_IN"
    );
    for r in &rows {
        let relayed: Vec<String> = r.relayed.iter().map(ToString::to_string).collect();
        println!(
            "{:<24} {:<5} {:<42} {:<42} {:>6}s {:>5} {:>4} {:>12} {:>12}",
            r.user,
            r.transport,
            r.client.to_string(),
            relayed.join(","),
            r.expires_in_s,
            r.permissions.len(),
            r.channels.len(),
            r.bytes_to_peer,
            r.bytes_to_client
        );
    }
    println!("{} allocation(s)", rows.len());
    Ok(())
}

fn kick(
    path: &Path,
    user: Option<String>,
    client: Option<SocketAddr>,
    relayed: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let target = match (user, client, relayed) {
        (Some(u), _, _) => control::KickTarget::User(u),
        (_, Some(c), _) => control::KickTarget::Client(c),
        (_, _, Some(r)) => control::KickTarget::Relayed(r),
        _ => anyhow::bail!("give --user, --client or --relayed"),
    };
    let n = control::kick(path, &target)?;
    println!("kicked {n} allocation(s)");
    Ok(())
}

fn reload(path: &Path) -> anyhow::Result<()> {
    let r = control::reload(path)?;
    for line in &r.reloaded {
        println!("reloaded: {line}");
    }
    for line in &r.needs_restart {
        println!("changed but needs a restart: {line}");
    }
    Ok(())
}

fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            let listen: Vec<String> = c.listen.iter().map(ToString::to_string).collect();
            println!(
                "{}: ok (serves {}; backend {}; XDP {})",
                file.display(),
                listen.join(", "),
                c.backend.as_str(),
                if c.xdp.enabled { "on" } else { "off" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--turn-state-file ""` is the documented way to turn the state file off: clap's
    /// default path parser rejected it as a missing value.
    #[test]
    fn an_empty_turn_state_file_turns_it_off() {
        let cli = Cli::try_parse_from(["relay", "run", "--turn-state-file", ""])
            .expect("an empty state file is accepted");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(
            args.turn_state_file.as_deref(),
            Some(std::path::Path::new(""))
        );
        assert_eq!(load(&args).expect("config").turn.state_file, None);
        let cli = Cli::try_parse_from(["relay", "run", "--turn-state-file", "/tmp/s.json"])
            .expect("a path is accepted");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(
            load(&args).expect("config").turn.state_file.as_deref(),
            Some(std::path::Path::new("/tmp/s.json"))
        );
    }
}
