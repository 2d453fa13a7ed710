//! The daemon's lifecycle: wire the data path, the XDP fast path and the control socket
//! together from a validated [`Config`], serve until SIGINT/SIGTERM, then take everything
//! down again (workers stopped, XDP detached, control socket removed) so that nothing is
//! left behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod af_xdp;
mod operator;
pub mod sfu;
mod state;
mod state_writer;

pub use operator::{DaemonCommands, Reloader, TurnSetupError, turn_json};

use crate::config::{Config, XdpModeChoice, interfaces};
use crate::control::{Attached, ControlError, ControlServer, Stats, UserspaceStats, XdpStats};
use crate::dataplane::{Dataplane, DataplaneConfig, DataplaneError, StunHandler};
use crate::xdp::{FastPath, XdpError, XdpMode, XdpOptions};

/// How often the main loop looks at the shutdown flag (and serves the control socket).
const TICK: Duration = Duration::from_millis(100);
/// How often the metrics snapshot is refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Installing the signal handlers failed.
    #[error("cannot install SIGINT/SIGTERM handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The data path failed.
    #[error("data path: {0}")]
    Dataplane(#[from] DataplaneError),
    /// The fast path failed and the configuration requires it.
    #[error(
        "XDP fast path: {0} (xdp.mode is not \"auto\", so this is fatal; use --no-xdp or \
         --xdp-mode auto to run without it)"
    )]
    Xdp(#[source] XdpError),
    /// The TURN service could not be set up.
    #[error("TURN: {0}")]
    Turn(#[from] TurnSetupError),
    /// The metrics endpoint could not be started.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The SFU could not be started.
    #[error("SFU: {0}")]
    Sfu(#[from] sfu::SfuSetupError),
    /// A worker stopped while the daemon was serving.
    #[error("a data path worker stopped unexpectedly")]
    WorkerExited,
    /// The thread that writes the TURN state file could not be started.
    #[error("cannot start the TURN state writer thread: {0}")]
    StateWriter(#[source] std::io::Error),
}

/// Runs the daemon until SIGINT or SIGTERM. Logging must already be initialised.
/// A reload (SIGHUP, `relay reload`) re-applies `config` (re-reading the TLS files).
pub fn run(config: &Config) -> Result<(), DaemonError> {
    run_reloadable(config, None)
}

/// As [`run`]; a reload calls `reloader` to re-read the configuration file.
pub fn run_reloadable(config: &Config, reloader: Option<&Reloader>) -> Result<(), DaemonError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone()).map_err(DaemonError::Signals)?;
    }
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone())
        .map_err(DaemonError::Signals)?;

    let control = ControlServer::bind(&config.control_socket)?;
    let dp_config = DataplaneConfig {
        listen: config.listen.clone(),
        workers: config.workers,
        backend: config.backend,
    };
    let state_file = state::path(config);
    let (dataplane, shared, restored) = if config.turn.enabled {
        let (turn, shared) = operator::turn_dataplane(config)?;
        // Allocations saved by the previous daemon: ports bound again, held in a pool
        // until the kernel side is settled below.
        let restored = state::load(state_file.as_deref(), &shared, &config.listen);
        let dp = Dataplane::start_turn_with(&dp_config, turn, restored.pool.clone())?;
        (dp, Some(shared), Some(restored))
    } else {
        (Dataplane::start(&dp_config, StunHandler)?, None, None)
    };
    let mut fast_path = start_fast_path(config, dataplane.listen())?;
    let owned = restored.as_ref().and_then(|r| r.owned.as_ref());
    let kernel_turn = match (&mut fast_path, &shared) {
        (Some(fp), Some(shared)) => start_kernel_turn(config, fp, shared, owned),
        _ => false,
    };
    if let Some(r) = &restored {
        state::finish(&r.pool, kernel_turn);
    }
    let xsk = match &fast_path {
        Some(fp) => af_xdp::start(config, fp, &dataplane),
        None => {
            if config.xdp.af_xdp {
                tracing::warn!(
                    "AF_XDP path off (xdp.af_xdp = true): it needs the XDP fast path, which is not attached"
                );
            }
            None
        }
    };

    let sfu = match sfu::SfuService::start(config) {
        Ok(s) => s,
        Err(e) => {
            af_xdp::stop(xsk);
            let _ = dataplane.stop();
            if let Some(fp) = fast_path {
                stop_fast_path(config, fp);
            }
            return Err(e.into());
        }
    };

    let listen: Vec<String> = dataplane.listen().iter().map(ToString::to_string).collect();
    let xdp_summary = match &fast_path {
        Some(fp) => fp
            .attachments()
            .iter()
            .map(|(i, m)| format!("{i} ({m})"))
            .collect::<Vec<_>>()
            .join(", "),
        None => "off".to_owned(),
    };
    let xdp_summary = if kernel_turn {
        format!("{xdp_summary}; TURN relayed in the kernel")
    } else {
        xdp_summary
    };
    let xdp_summary = if xsk.is_some() {
        format!("{xdp_summary}; AF_XDP sockets in the workers")
    } else {
        xdp_summary
    };
    let commands = DaemonCommands {
        dataplane: &dataplane,
        fast_path: fast_path.as_ref(),
        shared,
        config: std::cell::RefCell::new(config.clone()),
        reloader,
        sfu: sfu.as_ref(),
    };
    let snapshot: crate::metrics::Snapshot = Arc::new(std::sync::Mutex::new(None));
    let metrics = match config.metrics.listen {
        Some(addr) => {
            *snapshot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(crate::control::Commands::stats(&commands));
            let m = crate::metrics::MetricsServer::start(addr, snapshot.clone())?;
            tracing::info!(addr = %m.local_addr(), "Prometheus metrics on http://{}/metrics", m.local_addr());
            Some(m)
        }
        None => None,
    };
    // Periodic saves on a low-priority thread of their own (see `state_writer`).
    let writer = match &state_file {
        Some(path) => {
            Some(state_writer::StateWriter::start(path.clone()).map_err(DaemonError::StateWriter)?)
        }
        None => None,
    };
    // Last, once everything (control socket, workers, XDP, metrics) is serving: tests and
    // supervisors wait for this line.
    tracing::info!(
        control = %control.path().display(),
        "relay ready: serving STUN{} on {} ({} workers on {}; XDP fast path: {})",
        if config.turn.enabled { " and TURN" } else { "" },
        listen.join(", "),
        dataplane.workers(),
        dataplane.backend().name(),
        xdp_summary,
    );
    let mut last_snapshot = std::time::Instant::now();
    let mut last_save = std::time::Instant::now();
    let mut result = Ok(());
    while !shutdown.load(Ordering::Relaxed) {
        control.serve_for(TICK, &commands);
        if hangup.swap(false, Ordering::Relaxed) {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = crate::control::Commands::reload(&commands);
        }
        if metrics.is_some() && last_snapshot.elapsed() >= METRICS_REFRESH {
            last_snapshot = std::time::Instant::now();
            let s = crate::control::Commands::stats(&commands);
            *snapshot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(s);
        }
        if let Some(w) = &writer
            && last_save.elapsed() >= state::SAVE_EVERY
        {
            last_save = std::time::Instant::now();
            w.offer(|| state::gather(&dataplane));
        }
        if dataplane.any_worker_exited() {
            tracing::error!("a data path worker stopped; shutting down");
            result = Err(DaemonError::WorkerExited);
            break;
        }
    }
    tracing::info!("shutting down");
    drop(metrics);
    drop(commands);
    if let Some(s) = sfu {
        s.stop();
    }
    // Before the workers stop: the allocations as they are now, for the next daemon
    // (once the periodic save in progress, if any, is on disk).
    if let Some(w) = writer {
        w.finish();
    }
    if let Some(path) = &state_file
        && state::save(path, &dataplane, &mut false)
    {
        tracing::info!(path = %path.display(), "TURN state saved for the next start");
    }

    af_xdp::stop(xsk);
    let stopped = dataplane.stop();
    if let Some(fp) = fast_path {
        stop_fast_path(config, fp);
    }
    drop(control);
    if let Err(e) = stopped {
        tracing::error!(error = %e, "data path worker failed");
        if result.is_ok() {
            result = Err(e.into());
        }
    }
    if result.is_ok() {
        tracing::info!("relay stopped");
    }
    result
}

/// The interfaces the fast path should attach to, or None (with a log line saying why).
fn fast_path_interfaces(config: &Config, listen: &[SocketAddr]) -> Option<Vec<String>> {
    if !config.xdp.enabled {
        tracing::info!(
            "XDP fast path disabled (--no-xdp or xdp.enabled = false): userspace answers everything"
        );
        return None;
    }
    if !config.xdp.interfaces.is_empty() {
        return Some(config.xdp.interfaces.clone());
    }
    match interfaces::default_interfaces(listen) {
        Ok(d) if !d.interfaces.is_empty() => {
            if !d.loopback_skipped.is_empty() {
                tracing::info!(
                    skipped = ?d.loopback_skipped,
                    "XDP fast path not attached to loopback; its listen addresses are served in userspace"
                );
            }
            Some(d.interfaces)
        }
        Ok(d) => {
            tracing::info!(
                loopback = ?d.loopback_skipped,
                unowned = ?d.unowned,
                "XDP fast path off: no listen address is on a non-loopback interface, so \
                 userspace answers everything. To use it, listen on a real interface's \
                 address (e.g. --listen 0.0.0.0:3478) or name the interface with \
                 --xdp-iface IFACE / xdp.interfaces = [\"IFACE\"]"
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot list the interfaces (getifaddrs) to place the XDP fast path; running \
                 userspace-only (set xdp.interfaces to choose them explicitly)"
            );
            None
        }
    }
}

fn start_fast_path(
    config: &Config,
    listen: &[SocketAddr],
) -> Result<Option<FastPath>, DaemonError> {
    let Some(interfaces) = fast_path_interfaces(config, listen) else {
        return Ok(None);
    };
    let mut stun_ports = Vec::new();
    for a in listen {
        if !stun_ports.contains(&a.port()) {
            stun_ports.push(a.port());
        }
    }
    let opts = XdpOptions {
        interfaces,
        mode: match config.xdp.mode {
            XdpModeChoice::Auto => XdpMode::Auto,
            XdpModeChoice::Native => XdpMode::Native,
            XdpModeChoice::Generic => XdpMode::Generic,
        },
        stun_ports,
        pin_dir: pin_dir(config),
        turn_rules: config.xdp.turn_rules,
    };
    match FastPath::start(&opts) {
        Ok(fp) => Ok(Some(fp)),
        Err(e) if e.is_not_permitted() => {
            tracing::warn!(
                error = %e,
                "XDP fast path not permitted: running userspace-only. Run as root (or with \
                 CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON) to enable it, or pass --no-xdp to \
                 silence this"
            );
            Ok(None)
        }
        Err(e) if e.is_not_built() => {
            tracing::warn!(
                error = %e,
                "this relay was built without the eBPF object (RELAY_SKIP_EBPF): running \
                 userspace-only; rebuild with the eBPF toolchain (cargo xtask setup) to \
                 enable the fast path"
            );
            Ok(None)
        }
        Err(e) if config.xdp.mode == XdpModeChoice::Auto => {
            tracing::warn!(
                error = %e,
                "XDP fast path failed to start: running userspace-only (xdp.mode = \"auto\")"
            );
            Ok(None)
        }
        Err(e) => Err(DaemonError::Xdp(e)),
    }
}

/// Where to pin: `xdp.pin_dir` when `xdp.persist` (an unusable directory is then an
/// error naming the key); without persistence, pinned too when bpffs is there (so that
/// pins left by an earlier persistent run are adopted and removed on exit), else nothing.
fn pin_dir(config: &Config) -> Option<std::path::PathBuf> {
    let dir = config.xdp.pin_dir.clone();
    if config.xdp.persist {
        return Some(dir);
    }
    match crate::xdp::prepare_pin_dir(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::info!(error = %e, "XDP fast path not pinned (xdp.persist = false)");
            None
        }
    }
}

/// On exit: with `xdp.persist`, leaves the pinned links and maps in place (the kernel
/// keeps relaying established channels until their deadlines or until a new daemon
/// adopts them); otherwise detaches and removes the pins.
fn stop_fast_path(config: &Config, fp: FastPath) {
    let dir = fp.pin_dir().map(std::path::Path::to_path_buf);
    match (config.xdp.persist, dir) {
        (true, Some(dir)) => match fp.release() {
            Ok(()) => tracing::info!(
                pin_dir = %dir.display(),
                "XDP fast path left running (xdp.persist = true): the program stays attached \
                 through the links pinned in {0} and the maps (rules, counters) stay pinned \
                 there; a restarted relay adopts them. To remove them: relay xdp-unload \
                 --pin-dir {0}",
                dir.display()
            ),
            Err(e) => tracing::warn!(error = %e, "releasing the XDP fast path failed"),
        },
        (_, dir) => {
            match fp.detach() {
                Ok(()) => tracing::info!("XDP fast path detached"),
                Err(e) => tracing::warn!(error = %e, "detaching the XDP fast path failed"),
            }
            if let Some(dir) = dir
                && let Err(e) = crate::xdp::unload_pins(&dir)
            {
                tracing::warn!(error = %e, "removing the XDP pins failed");
            }
        }
    }
}

/// The interfaces the TURN fast path may relay out of: those attached natively that take
/// XDP frames (`takes_frames`: the kernel's `NDO_XMIT` flag, None when it does not say).
/// With no native attachment the program need not check (`SETTING_EGRESS_CHECKED` off).
///
/// A frame received by native XDP can be redirected only into a device that takes XDP
/// frames (`ndo_xdp_xmit`, and for a veth NAPI on its peer). One attached in generic mode
/// may have no XDP transmit at all (a bridge, or any device without native XDP, which is
/// why it got generic mode), and a native NIC may lack it too: the redirect would lose the
/// frame. A frame received by generic XDP is an skb, and its redirect is a plain transmit,
/// which any device takes: so with no native attachment, nothing needs checking.
fn kernel_egress(
    attachments: &[(String, crate::xdp::AttachedMode)],
    takes_frames: impl Fn(&str) -> Option<bool>,
) -> (Vec<&str>, bool) {
    let native: Vec<&str> = attachments
        .iter()
        .filter(|(_, m)| *m == crate::xdp::AttachedMode::Native)
        .map(|(name, _)| name.as_str())
        .collect();
    let checked = !native.is_empty();
    let egress = native
        .into_iter()
        .filter(|name| takes_frames(name) != Some(false))
        .collect();
    (egress, checked)
}

/// Hands the fast path's TURN maps to the workers (through `shared`) and turns TURN
/// relaying in the kernel on. Returns whether it is on; when it cannot be, says why and
/// TURN stays in userspace.
fn start_kernel_turn(
    config: &Config,
    fp: &mut FastPath,
    shared: &Arc<crate::turn::Shared>,
    owned: Option<&(Vec<u32>, Vec<u32>)>,
) -> bool {
    use relay_common::turn::{
        SETTING_DATA_INDICATIONS, SETTING_EGRESS_CHECKED, SETTING_ENABLED,
        SETTING_SEND_INDICATIONS, TurnSettings,
    };
    if !config.xdp.turn {
        tracing::info!(
            "TURN relaying in the kernel is off (xdp.turn = false): TURN stays in userspace"
        );
        return false;
    }
    let maps = match fp.turn_maps() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "TURN relaying in the kernel unavailable: TURN stays in userspace (set \
                 xdp.turn = false to silence this)"
            );
            return false;
        }
    };
    // FIB lookups through `xdp.fib_interface` (forwarding on there only): see xdp::fib.
    let fib_ifindex = match crate::xdp::fib::prepare(&config.xdp.fib_interface) {
        Ok(i) => {
            tracing::info!(
                interface = %config.xdp.fib_interface,
                ifindex = i,
                "IPv4/IPv6 forwarding enabled on this interface only: the TURN fast path's \
                 route lookups go through it, so the relay's own interfaces need no forwarding"
            );
            i
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "TURN relaying in the kernel unavailable: TURN stays in userspace (fix \
                 xdp.fib_interface, or set xdp.turn = false)"
            );
            return false;
        }
    };
    // Relayed frames leave only by the interfaces the program is attached to natively: a
    // redirect to any other may be lost (see SETTING_EGRESS_CHECKED); the stack sends
    // those. With no native attachment there is nothing to check.
    let (native, egress_checked) =
        kernel_egress(fp.attachments(), crate::xdp::features::takes_xdp_frames);
    let checked = if egress_checked {
        SETTING_EGRESS_CHECKED
    } else {
        0
    };
    let mut egress = Vec::new();
    for name in native {
        match crate::xdp::fib::ifindex(name) {
            Ok(i) => egress.push(i),
            Err(e) => tracing::warn!(
                interface = %name,
                error = %e,
                "cannot name this interface to the TURN fast path: frames routed out of it \
                 are sent by the stack"
            ),
        }
    }
    if let Err(e) = maps.set_egress(&egress) {
        tracing::warn!(
            error = %e,
            "cannot tell the TURN fast path which interfaces it may relay out of: TURN stays \
             in userspace"
        );
        return false;
    }
    let settings = TurnSettings {
        flags: SETTING_ENABLED | SETTING_DATA_INDICATIONS | SETTING_SEND_INDICATIONS | checked,
        relay_port_min: config.turn.port_range.0,
        relay_port_max: config.turn.port_range.1,
        // Next hops reused for 1 s: the FIB lookup is most of a relayed frame's cost, and
        // a route or neighbour change is then seen within a second.
        next_hop_ttl_ms: 1000,
        fib_ifindex,
    };
    if let Some((stats, allocs)) = owned {
        // A state file is in use: the restored allocations own their rules (indices
        // reserved); anything else in adopted maps is an orphan and goes.
        match maps.retain_owned(stats, allocs) {
            Ok(a) => tracing::info!(
                kept = a.kept,
                removed = a.removed,
                reserved_rule_indices = stats.len(),
                "TURN rules: those of restored allocations kept, orphans and expired ones removed"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read the adopted TURN rules"),
        }
    } else if fp.adopted() {
        match maps.adopt_existing() {
            Ok(a) => tracing::info!(
                kept = a.kept,
                expired_removed = a.removed,
                "adopted the TURN rules left by the previous daemon: live ones keep \
                 relaying until their deadlines"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read the adopted TURN rules"),
        }
    }
    if let Err(e) = maps.set_settings(&settings) {
        tracing::warn!(error = %e, "cannot enable TURN relaying in the kernel: TURN stays in userspace");
        return false;
    }
    shared.set_fast_rules(Arc::new(maps));
    tracing::info!(
        ports = ?config.turn.port_range,
        "TURN relayed in the kernel for UDP clients (channels, permissions, Send indications)"
    );
    true
}

/// `userspace.af_xdp` of the stats answer: the workers' AF_XDP counters and the frames
/// the XDP program steered to their sockets (`steered`; more than `received` when a
/// socket's receive ring overflowed). Empty while nothing went through AF_XDP.
fn af_xdp_stats(
    workers: [u64; crate::dataplane::counters::XSK_COUNTS],
    fast_path: Option<&FastPath>,
) -> std::collections::BTreeMap<String, u64> {
    let steered = match fast_path.and_then(FastPath::xsk_steering) {
        Some(s) => s.steered_frames().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the AF_XDP steering counter");
            0
        }),
        None => 0,
    };
    if steered == 0 && workers.iter().all(|v| *v == 0) {
        return std::collections::BTreeMap::new();
    }
    crate::dataplane::counters::XSK_COUNT_NAMES
        .iter()
        .zip(workers)
        .map(|(k, v)| ((*k).to_owned(), v))
        .chain(std::iter::once(("steered".to_owned(), steered)))
        .collect()
}

/// The stats answer of the control socket.
pub fn collect_stats(dataplane: &Dataplane, fast_path: Option<&FastPath>) -> Stats {
    let c = dataplane.counts();
    let names = dataplane.drop_reasons();
    let mut by_reason = std::collections::BTreeMap::new();
    for (i, n) in c.dropped_by_handler.iter().enumerate() {
        if *n > 0 {
            let name = names.get(i).copied().unwrap_or("other");
            *by_reason.entry(name.to_owned()).or_insert(0) += n;
        }
    }
    for (i, n) in c.dropped_by_io.iter().enumerate() {
        if *n > 0 {
            let name = crate::dataplane::counters::IO_DROP_NAMES[i];
            *by_reason.entry(name.to_owned()).or_insert(0) += n;
        }
    }
    let xdp = fast_path.map(|fp| XdpStats {
        attached: fp
            .attachments()
            .iter()
            .map(|(i, m)| Attached {
                interface: i.clone(),
                mode: m.as_str().to_owned(),
            })
            .collect(),
        counters: match fp.counters() {
            Ok(values) => Some(
                relay_common::counter::NAMES
                    .iter()
                    .zip(values)
                    .map(|(n, v)| ((*n).to_owned(), v))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the XDP counters");
                None
            }
        },
        // Filled in by the caller that knows the TURN rule maps.
        rule_tables: Default::default(),
    });
    Stats {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: dataplane.backend().name().to_owned(),
        workers: dataplane.workers(),
        listen: dataplane.listen().iter().map(ToString::to_string).collect(),
        xdp,
        userspace: UserspaceStats {
            received: c.received,
            stun_answered: c.answered,
            dropped: c.dropped(),
            errors: c.errors,
            dropped_by_reason: by_reason,
            af_xdp: af_xdp_stats(c.xsk, fast_path),
        },
        turn: None,
        sfu: None,
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_egress;
    use crate::xdp::AttachedMode::{Generic, Native};

    fn attached(
        list: &[(&str, crate::xdp::AttachedMode)],
    ) -> Vec<(String, crate::xdp::AttachedMode)> {
        list.iter().map(|(n, m)| (n.to_string(), *m)).collect()
    }

    #[test]
    fn the_kernel_relays_only_out_of_native_attachments_that_take_xdp_frames() {
        let a = attached(&[
            ("eth0", Native),
            ("br0", Generic),
            ("eth1", Native),
            ("mlx0", Native),
        ]);
        // eth1's features unknown (an older kernel): kept, as before the flag existed.
        let takes = |n: &str| match n {
            "eth0" | "br0" => Some(true),
            "mlx0" => Some(false),
            _ => None,
        };
        assert_eq!(kernel_egress(&a, takes), (vec!["eth0", "eth1"], true));
        // Checked even when no native attachment takes frames: nothing is relayed out.
        let a = attached(&[("mlx0", Native), ("br0", Generic)]);
        assert_eq!(kernel_egress(&a, takes), (vec![], true));
    }

    #[test]
    fn generic_attachments_alone_need_no_egress_check() {
        let a = attached(&[("br0", Generic), ("eth0", Generic)]);
        assert_eq!(kernel_egress(&a, |_| Some(true)), (vec![], false));
        assert_eq!(kernel_egress(&[], |_| Some(true)), (vec![], false));
    }
}
