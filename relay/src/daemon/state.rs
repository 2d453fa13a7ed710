//! The TURN state file across restarts (`turn.state_file`): read and rebound at start,
//! written every few seconds and on graceful shutdown.
//!
//! Why in the daemon: restoring spans the data path (relayed ports bound again, the pool
//! the workers claim from) and the XDP maps (indices reserved, orphan rules removed), and
//! only the daemon sees both. The format and the per-server snapshot/restore live in
//! [`crate::turn::snapshot`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::{Dataplane, Reservations, turn_io};
use crate::turn::Shared;
use crate::turn::snapshot::{SavedAllocation, Snapshot, boot_id};

/// How often the state file is rewritten while serving (a crash loses at most this much).
pub(super) const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What was restored at start.
pub(super) struct Restored {
    /// The pool the workers claim from (handed to the data path).
    pub pool: Arc<Reservations>,
    /// Kernel indices owned by the restored allocations: (`stats_idx`es, `alloc_idx`es).
    /// None when no state file is configured (adopted rules are then kept to their
    /// deadlines, as before).
    pub owned: Option<(Vec<u32>, Vec<u32>)>,
}

/// CLOCK_MONOTONIC now, in ns (0 if unreadable, which makes every entry look live; the
/// workers' own clocks then decide).
fn mono_now() -> u64 {
    crate::xdp::rules::monotonic_anchor().map_or(0, |c| c.ns(Instant::now()))
}

/// Reads the state file, drops expired entries, rebinds the relayed ports and puts the
/// allocations in a pool held back until [`finish`]. Any problem with the file is a
/// warning and the daemon starts empty.
pub(super) fn load(
    path: Option<&Path>,
    shared: &Arc<Shared>,
    listen: &[std::net::SocketAddr],
) -> Restored {
    let pool = Arc::new(Reservations::default());
    let Some(path) = path else {
        return Restored { pool, owned: None };
    };
    let saved = match Snapshot::read(path, &boot_id()) {
        Ok(Some(mut snap)) => {
            let expired = snap.drop_expired(mono_now());
            tracing::info!(
                path = %path.display(),
                allocations = snap.allocations.len(),
                expired,
                "TURN state file read"
            );
            snap.allocations
        }
        Ok(None) => {
            tracing::info!(path = %path.display(), "no TURN state file yet: starting with no allocations");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "TURN state not restored: starting with no allocations (the file is \
                 replaced at the next save; clients allocate anew)"
            );
            Vec::new()
        }
    };
    // A 5-tuple whose server address this daemon no longer listens on can never come
    // back (the configuration changed, or the file is another daemon's).
    let (saved, foreign): (Vec<_>, Vec<_>) =
        saved.into_iter().partition(|s| serves(listen, s.server));
    if !foreign.is_empty() {
        tracing::warn!(
            dropped = foreign.len(),
            "restored allocations dropped: their server address is not among server.listen              (the configuration changed, or the state file belongs to another relay)"
        );
    }
    let restored = turn_io::rebind_restored(saved, &shared.quotas);
    let mut stats = Vec::new();
    let mut allocs = Vec::new();
    for r in &restored {
        let (s, a) = r.saved.kernel_indices();
        stats.extend(s);
        allocs.extend(a);
    }
    if !restored.is_empty() {
        tracing::info!(
            allocations = restored.len(),
            "TURN allocations restored: relayed ports bound again; each is taken over by the \
             worker that receives its client's next datagram"
        );
    }
    pool.hold_restored(restored, true);
    Restored {
        pool,
        owned: Some((stats, allocs)),
    }
}

/// Whether a listen address in `listen` (port 0 = any, unspecified IP = any) serves
/// `server`.
fn serves(listen: &[std::net::SocketAddr], server: std::net::SocketAddr) -> bool {
    listen.iter().any(|l| {
        (l.ip() == server.ip() || l.ip().is_unspecified())
            && l.is_ipv4() == server.is_ipv4()
            && (l.port() == 0 || l.port() == server.port())
    })
}

/// Once the kernel side is settled: without TURN in the kernel, the restored
/// allocations forget their kernel rules (their rules are installed afresh if the fast
/// path comes back); then the workers may claim them.
pub(super) fn finish(pool: &Reservations, kernel_turn: bool) {
    if !kernel_turn {
        pool.update_restored(|s| s.kernel = None);
    }
    pool.release_restored();
}

/// Writes the current allocations (workers' and unclaimed restored ones) to `path`, on
/// the calling thread (the last save at shutdown; the periodic ones go through
/// [`super::state_writer::StateWriter`]).
pub(super) fn save(path: &Path, dataplane: &Dataplane, failing: &mut bool) -> bool {
    match gather(dataplane) {
        Some(all) => write(path, all, failing),
        None => false,
    }
}

/// The allocations to save, or None (with a warning) when a worker did not hand over
/// its own in time.
pub(super) fn gather(dataplane: &Dataplane) -> Option<Vec<SavedAllocation>> {
    let all = dataplane.snapshot();
    if all.is_none() {
        // The previous file stays: it still names the allocations of the worker that
        // did not answer.
        tracing::warn!(
            "TURN state not saved: a worker did not hand over its allocations in time (it \
             may be overloaded); the state file keeps the previous save"
        );
    }
    all
}

/// Writes `all` to `path`. Says so once (at warning level) when writing fails, then only
/// at debug level until a write succeeds again.
pub(super) fn write(path: &Path, all: Vec<SavedAllocation>, failing: &mut bool) -> bool {
    let n = all.len();
    match Snapshot::new(boot_id(), mono_now(), all).write(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), allocations = n, "TURN state saved");
            *failing = false;
            true
        }
        Err(e) if *failing => {
            tracing::debug!(error = %e, "cannot save the TURN state (still)");
            false
        }
        Err(e) => {
            *failing = true;
            tracing::warn!(
                error = %e,
                "cannot save the TURN state: a restart would lose the allocations (check that \
                 the directory of turn.state_file is writable, or set turn.state_file = \"\" \
                 to turn this off)"
            );
            false
        }
    }
}

/// The state file path when TURN is on and a file is configured.
pub(super) fn path(config: &crate::config::Config) -> Option<PathBuf> {
    if config.turn.enabled {
        config.turn.state_file.clone()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::serves;

    #[test]
    fn restored_tuples_must_match_a_listen_address() {
        let a = |s: &str| s.parse().expect("addr");
        let listen = [a("192.0.2.1:3478"), a("[::]:3478")];
        assert!(serves(&listen, a("192.0.2.1:3478")));
        assert!(!serves(&listen, a("192.0.2.1:3479")));
        assert!(!serves(&listen, a("192.0.2.2:3478")));
        assert!(serves(&listen, a("[2001:db8::1]:3478")));
        assert!(serves(&[a("0.0.0.0:0")], a("198.51.100.1:9")));
        assert!(!serves(&[a("0.0.0.0:0")], a("[2001:db8::1]:9")));
    }
}
