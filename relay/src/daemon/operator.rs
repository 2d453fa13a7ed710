//! The operator side of the daemon: the TURN service built from the configuration
//! (credentials, peer policy, quotas), the control-socket [`Commands`] on top of the data
//! path, the reload (SIGHUP or `relay reload`) and the metrics snapshot.
//!
//! Why apart from `mod.rs`: the lifecycle (start, serve, stop) and the operator surface
//! change for different reasons; keeping the latter here keeps the lifecycle readable.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::control::{AllocationRow, Commands, KickTarget, ReloadReport, Stats, TurnStatsJson};
use crate::dataplane::{Dataplane, TurnDataplane};
use crate::policy::{PeerPolicy, PolicyError, Quotas};
use crate::tls::{TlsError, TlsReloader};
use crate::turn::stats::{AuthFailure, ERROR_CODES};
use crate::turn::{Credentials, Shared, TurnConfig, TurnStats};
use crate::xdp::FastPath;

/// Why the TURN service could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TurnSetupError {
    /// The peer policy lists are invalid (normally caught by config validation).
    #[error("peer policy: {0}")]
    Policy(#[from] PolicyError),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS (turn.tls_cert / turn.tls_key): {0}")]
    Tls(#[from] TlsError),
}

/// Re-reads the configuration for a reload (file + command-line overrides).
pub type Reloader = dyn Fn() -> Result<Config, ConfigError>;

/// The credentials of `config`.
pub fn credentials(config: &Config) -> Credentials {
    Credentials {
        realm: config.turn.realm.clone(),
        users: config
            .turn
            .users
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect::<HashMap<_, _>>(),
        secrets: config
            .turn
            .secrets
            .iter()
            .map(|s| s.expose().to_owned())
            .collect(),
    }
}

/// The relay's own addresses (never valid peers).
fn own_addresses(config: &Config, v4: Option<IpAddr>, v6: Option<IpAddr>) -> Vec<IpAddr> {
    let mut own: Vec<IpAddr> = config
        .listen
        .iter()
        .chain(&config.turn.listen_tcp)
        .chain(&config.turn.listen_tls)
        .map(SocketAddr::ip)
        .chain(v4)
        .chain(v6)
        .collect();
    own.sort();
    own.dedup();
    own
}

/// Builds what [`Dataplane::start_turn`] needs from the configuration.
pub fn turn_dataplane(config: &Config) -> Result<(TurnDataplane, Arc<Shared>), TurnSetupError> {
    let t = &config.turn;
    let (v4, v6, notes) = t.relay_addrs(&config.listen);
    for n in notes {
        tracing::warn!("{n}");
    }
    if !t.has_credentials() {
        tracing::warn!(
            "TURN has no credentials: every Allocate is refused (401). Add [turn.users] or \
             [turn.auth] secrets to the configuration to relay"
        );
    }
    let turn_config = TurnConfig {
        software: Some(format!("relay {}", env!("CARGO_PKG_VERSION"))),
        default_lifetime: Duration::from_secs(t.default_lifetime),
        max_lifetime: Duration::from_secs(t.max_lifetime),
        nonce_lifetime: Duration::from_secs(t.nonce_lifetime),
        max_permissions: if t.max_permissions == 0 {
            usize::MAX
        } else {
            t.max_permissions as usize
        },
        bandwidth_limit: t.bandwidth_limit,
        allocation_byte_quota: t.allocation_byte_quota,
        unauth_reply_allowance: t.unauth_reply_allowance as usize,
        unauth_replies_per_sec: t.unauth_replies_per_sec,
        unauth_reply_burst: t.unauth_reply_burst.max(1),
        legacy_channel_range: t.legacy_channel_range,
        relay_ports: t.port_range.0..=t.port_range.1,
        relay_ipv4: match v4 {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        relay_ipv6: match v6 {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        },
        ..TurnConfig::default()
    };
    let policy = PeerPolicy::new(&config.policy, &own_addresses(config, v4, v6))?;
    let quotas = Quotas::new(config.quota.per_user, config.quota.total);
    let shared = Arc::new(Shared::new(
        credentials(config),
        Arc::new(policy),
        Arc::new(quotas),
    ));
    let tls = match (&t.tls_cert, &t.tls_key) {
        (Some(c), Some(k)) if !t.listen_tls.is_empty() => Some(Arc::new(TlsReloader::load(c, k)?)),
        _ => None,
    };
    Ok((
        TurnDataplane {
            config: Arc::new(turn_config),
            shared: shared.clone(),
            port_range: t.port_range,
            listen_tcp: t.listen_tcp.clone(),
            listen_tls: t.listen_tls.clone(),
            tls,
        },
        shared,
    ))
}

/// The "turn" object of the stats answer.
pub fn turn_json(s: &TurnStats) -> TurnStatsJson {
    let dir = |a: u64, b: u64| {
        [
            ("client_to_peer".to_owned(), a),
            ("peer_to_client".to_owned(), b),
        ]
        .into_iter()
        .collect()
    };
    TurnStatsJson {
        allocations: s.allocations,
        permissions: s.permissions,
        channels: s.channels,
        allocations_created: s.allocations_created,
        packets: dir(s.packets_client_to_peer, s.packets_peer_to_client),
        kernel_packets: dir(
            s.kernel_packets_client_to_peer,
            s.kernel_packets_peer_to_client,
        ),
        fast_rules: s.fast_rules,
        fast_rules_refused: s.fast_rules_refused,
        bytes: dir(s.bytes_client_to_peer, s.bytes_peer_to_client),
        auth_failures: AuthFailure::ALL
            .iter()
            .map(|f| (f.name().to_owned(), s.auth_failures[*f as usize]))
            .collect(),
        errors: ERROR_CODES
            .iter()
            .zip(s.errors)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (c.to_string(), n))
            .collect(),
        dropped: [
            ("no_permission", s.dropped_no_permission),
            ("peer_no_permission", s.dropped_peer_no_permission),
            ("bandwidth", s.dropped_bandwidth),
            ("malformed", s.dropped_malformed),
            ("unknown_relay", s.dropped_unknown_relay),
            ("amplification", s.amplification_drops),
            ("quota", s.dropped_quota),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    }
}

/// The daemon's answers to the control socket.
pub struct DaemonCommands<'a> {
    /// The data path.
    pub dataplane: &'a Dataplane,
    /// The kernel fast path, if running.
    pub fast_path: Option<&'a FastPath>,
    /// Credentials, policy and quotas (None without TURN).
    pub shared: Option<Arc<Shared>>,
    /// The configuration in force (for reload comparisons).
    pub config: std::cell::RefCell<Config>,
    /// Re-reads the configuration.
    pub reloader: Option<&'a Reloader>,
    /// The SFU, if running.
    pub sfu: Option<&'a super::sfu::SfuService>,
}

impl DaemonCommands<'_> {
    /// Applies a new configuration's live-changeable parts.
    fn apply(&self, new: Config) -> Result<ReloadReport, String> {
        let mut report = ReloadReport::default();
        // Build everything first so that an error changes nothing.
        let mut new_policy = None;
        if let Some(shared) = &self.shared {
            let (v4, v6, _) = new.turn.relay_addrs(&new.listen);
            new_policy = Some(
                PeerPolicy::new(&new.policy, &own_addresses(&new, v4, v6))
                    .map_err(|e| e.to_string())?,
            );
            let _ = shared;
        }
        match self.dataplane.reload_tls() {
            Ok(true) => report.reloaded.push(format!(
                "tls certificate and key ({})",
                new.turn
                    .tls_cert
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )),
            Ok(false) => {}
            Err(e) => return Err(format!("TLS: {e} (the old certificate stays in service)")),
        }
        if let (Some(shared), Some(policy)) = (&self.shared, new_policy) {
            shared.set_credentials(credentials(&new));
            report.reloaded.push(format!(
                "credentials: {} users, {} shared secrets, realm {:?}",
                new.turn.users.len(),
                new.turn.secrets.len(),
                new.turn.realm
            ));
            shared.policy.replace(policy);
            // Existing permissions and channels (and their kernel rules) to peers the new
            // policy denies go now, not at their expiry.
            let revoked = self.dataplane.recheck_policy();
            report.reloaded.push(format!(
                "peer policy: {} allow, {} deny entries ({revoked} permissions to now-denied \
                 peers removed)",
                new.policy.allow.len(),
                new.policy.deny.len()
            ));
            shared
                .quotas
                .set_limits(new.quota.per_user, new.quota.total);
            report.reloaded.push(format!(
                "quotas: per user {}, total {} (0 = unlimited)",
                new.quota.per_user, new.quota.total
            ));
        }
        let old = self.config.borrow();
        let mut restart = |what: &str, changed: bool| {
            if changed {
                report.needs_restart.push(what.to_owned());
            }
        };
        restart("server.listen", old.listen != new.listen);
        restart("server.workers", old.workers != new.workers);
        restart("dataplane.backend", old.backend != new.backend);
        restart("xdp", old.xdp != new.xdp);
        restart("control.socket", old.control_socket != new.control_socket);
        restart("metrics.listen", old.metrics != new.metrics);
        restart("turn.enabled", old.turn.enabled != new.turn.enabled);
        restart(
            "turn listeners (listen_tcp / listen_tls)",
            old.turn.listen_tcp != new.turn.listen_tcp
                || old.turn.listen_tls != new.turn.listen_tls,
        );
        restart(
            "turn relay settings (relay addresses, port range, lifetimes, limits)",
            old.turn.relay_ipv4 != new.turn.relay_ipv4
                || old.turn.relay_ipv6 != new.turn.relay_ipv6
                || old.turn.port_range != new.turn.port_range
                || old.turn.default_lifetime != new.turn.default_lifetime
                || old.turn.max_lifetime != new.turn.max_lifetime
                || old.turn.max_permissions != new.turn.max_permissions
                || old.turn.bandwidth_limit != new.turn.bandwidth_limit
                || old.turn.allocation_byte_quota != new.turn.allocation_byte_quota
                || old.turn.unauth_reply_allowance != new.turn.unauth_reply_allowance
                || old.turn.unauth_replies_per_sec != new.turn.unauth_replies_per_sec
                || old.turn.unauth_reply_burst != new.turn.unauth_reply_burst
                || old.turn.legacy_channel_range != new.turn.legacy_channel_range
                || old.turn.nonce_lifetime != new.turn.nonce_lifetime,
        );
        drop(old);
        *self.config.borrow_mut() = new;
        Ok(report)
    }
}

impl Commands for DaemonCommands<'_> {
    fn stats(&self) -> Stats {
        let mut s = super::collect_stats(self.dataplane, self.fast_path);
        if let (Some(x), Some(rules)) = (
            s.xdp.as_mut(),
            self.shared.as_ref().and_then(|sh| sh.fast_rules()),
        ) {
            x.rule_tables = rules.table_report();
        }
        s.turn = self.dataplane.turn_stats().map(|t| turn_json(&t));
        s.sfu = self.sfu.map(super::sfu::SfuService::stats);
        s
    }

    fn allocations(&self) -> Result<Vec<AllocationRow>, String> {
        let (rows, silent) = self.dataplane.allocations_answered(None, None);
        if silent > 0 {
            return Err(format!(
                "{silent} of {} worker(s) did not answer within {:?} (busy or stuck; see the \
                 daemon's log), so the listing would be incomplete; try again",
                self.dataplane.workers(),
                crate::dataplane::COMMAND_TIMEOUT
            ));
        }
        Ok(rows
            .into_iter()
            .map(|a| AllocationRow {
                user: a.user,
                client: a.client,
                server: a.server,
                transport: a.transport.name().to_owned(),
                relayed: a.relayed,
                expires_in_s: a.expires_in_s,
                permissions: a.permissions,
                channels: a.channels,
                packets_to_peer: a.packets_to_peer,
                bytes_to_peer: a.bytes_to_peer,
                packets_to_client: a.packets_to_client,
                bytes_to_client: a.bytes_to_client,
            })
            .collect())
    }

    fn kick(&self, target: &KickTarget) -> Result<usize, String> {
        let t = match target {
            KickTarget::User(u) => crate::turn::KickTarget::User(u.clone()),
            KickTarget::Client(a) => crate::turn::KickTarget::Client(*a),
            KickTarget::Relayed(a) => crate::turn::KickTarget::Relay(*a),
        };
        let (n, silent) = self.dataplane.kick(&t);
        tracing::info!(target = ?target, kicked = n, silent, "kick from the control socket");
        if silent > 0 {
            return Err(format!(
                "kicked {n} allocation(s) on the workers that answered, but {silent} of {} \
                 worker(s) did not answer within {:?} (busy or stuck; see the daemon's log); \
                 their part of the kick goes on when they get to it: check with `relay \
                 allocations`",
                self.dataplane.workers(),
                crate::dataplane::COMMAND_TIMEOUT
            ));
        }
        Ok(n)
    }

    fn reload(&self) -> Result<ReloadReport, String> {
        let new = match self.reloader {
            Some(r) => r().map_err(|e| e.to_string())?,
            None => self.config.borrow().clone(),
        };
        let r = self.apply(new);
        match &r {
            Ok(report) => tracing::info!(
                reloaded = ?report.reloaded,
                needs_restart = ?report.needs_restart,
                "configuration reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "reload failed; the running configuration stays"),
        }
        r
    }
}
