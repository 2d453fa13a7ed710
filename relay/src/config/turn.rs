//! The TURN-related sections of the configuration: `[turn]` (with `[turn.users]` and
//! `[turn.auth]`), `[policy]`, `[quota]` and `[metrics]`.
//!
//! Why a separate file: these sections carry secrets (passwords, shared secrets) and file
//! references (TLS certificate and key) that need more care than the STUN settings —
//! secrets never appear in `Debug` output or logs, and files are read and parsed at
//! validation time so that `relay check-config` and `relay reload` catch a bad
//! certificate before it is put in service.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{Cidr, PolicyConfig};

/// A password or shared secret: compared and used, never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself (for the authentication code only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Longest USERNAME attribute value (RFC 8489 §14.3: < 513 bytes).
const MAX_USERNAME: usize = 512;
/// Longest REALM value (RFC 8489 §14.9: < 763 bytes).
const MAX_REALM: usize = 762;
/// Highest allowed allocation lifetime (a typo guard: one day).
const MAX_LIFETIME_S: u64 = 86_400;

/// The `[turn]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnSettings {
    /// Whether TURN is served at all (on the UDP `server.listen` addresses, and on the
    /// TCP / TLS addresses below).
    pub enabled: bool,
    /// The long-term credential realm.
    pub realm: String,
    /// TCP client listeners.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS client listeners (need `tls_cert` and `tls_key`).
    pub listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain for TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
    /// Address relayed IPv4 sockets bind to and that clients are told; None = derived
    /// from the listen addresses (see [`TurnSettings::relay_addrs`]).
    pub relay_ipv4: Option<IpAddr>,
    /// Address relayed IPv6 sockets bind to; None = derived as for IPv4.
    pub relay_ipv6: Option<IpAddr>,
    /// Relayed ports, inclusive.
    pub port_range: (u16, u16),
    /// Allocation lifetime when the client asks for none (seconds).
    pub default_lifetime: u64,
    /// Longest allocation lifetime granted (seconds).
    pub max_lifetime: u64,
    /// Permissions per allocation (0 = unlimited).
    pub max_permissions: u32,
    /// Per-allocation bandwidth limit in bytes per second (0 = none).
    pub bandwidth_limit: u64,
    /// Bytes one allocation may relay in total, both directions (0 = unlimited).
    pub allocation_byte_quota: u64,
    /// How many bytes an answer to an unauthenticated UDP request (the 401/438
    /// challenge, a 400) may exceed the request by. 0 = never larger than the request.
    pub unauth_reply_allowance: u32,
    /// Answers to unauthenticated UDP requests per second per source IP and worker
    /// (0 = unlimited): bounds what a spoofed flood reflects at one victim.
    pub unauth_replies_per_sec: u32,
    /// Burst of such answers per source IP.
    pub unauth_reply_burst: u32,
    /// Accept RFC 5766's channel numbers 0x5000–0x7FFF too (RFC 8656: 0x4000–0x4FFF).
    pub legacy_channel_range: bool,
    /// Static users: name → password.
    pub users: BTreeMap<String, Secret>,
    /// Shared secrets for time-limited (REST) credentials; the first signs nothing, all
    /// are accepted (rotation).
    pub secrets: Vec<Secret>,
    /// How long a nonce stays valid (seconds) before 438 Stale Nonce.
    pub nonce_lifetime: u64,
    /// Where the UDP allocations are saved (every few seconds and on SIGTERM/SIGINT) and
    /// restored from at start, so a restart keeps them; None (empty string) = off. The
    /// file names users and addresses: it is created mode 0600.
    pub state_file: Option<PathBuf>,
}

/// Default `turn.state_file`.
pub const DEFAULT_STATE_FILE: &str = "/run/relay/turn-state.json";

/// The `[quota]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Allocations per user (0 = unlimited).
    pub per_user: u32,
    /// Allocations in total (0 = unlimited).
    pub total: u32,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSettings {
    /// Where the Prometheus endpoint listens; None = off.
    pub listen: Option<SocketAddr>,
}

// ---- the file's shape ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TurnSection {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    listen_tcp: Vec<String>,
    #[serde(default)]
    listen_tls: Vec<String>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    relay_ipv4: Option<String>,
    #[serde(default)]
    relay_ipv6: Option<String>,
    #[serde(default = "default_port_range")]
    port_range: String,
    #[serde(default = "default_lifetime")]
    default_lifetime: u64,
    #[serde(default = "default_max_lifetime")]
    max_lifetime: u64,
    #[serde(default = "default_max_permissions")]
    max_permissions: u32,
    #[serde(default)]
    bandwidth_limit: u64,
    #[serde(default)]
    allocation_byte_quota: u64,
    #[serde(default = "default_unauth_reply_allowance")]
    unauth_reply_allowance: u32,
    #[serde(default = "default_unauth_replies_per_sec")]
    unauth_replies_per_sec: u32,
    #[serde(default = "default_unauth_reply_burst")]
    unauth_reply_burst: u32,
    #[serde(default)]
    legacy_channel_range: bool,
    #[serde(default)]
    users: BTreeMap<String, Secret>,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default = "default_state_file")]
    state_file: String,
}

fn default_state_file() -> String {
    DEFAULT_STATE_FILE.to_owned()
}

impl Default for TurnSection {
    fn default() -> Self {
        TurnSection {
            enabled: true,
            realm: default_realm(),
            listen_tcp: Vec::new(),
            listen_tls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            relay_ipv4: None,
            relay_ipv6: None,
            port_range: default_port_range(),
            default_lifetime: default_lifetime(),
            max_lifetime: default_max_lifetime(),
            max_permissions: default_max_permissions(),
            bandwidth_limit: 0,
            allocation_byte_quota: 0,
            unauth_reply_allowance: default_unauth_reply_allowance(),
            unauth_replies_per_sec: default_unauth_replies_per_sec(),
            unauth_reply_burst: default_unauth_reply_burst(),
            legacy_channel_range: false,
            users: BTreeMap::new(),
            auth: AuthSection::default(),
            state_file: default_state_file(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthSection {
    #[serde(default)]
    secrets: Vec<Secret>,
    #[serde(default = "default_nonce_lifetime")]
    nonce_lifetime: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            secrets: Vec::new(),
            nonce_lifetime: default_nonce_lifetime(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicySection {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QuotaSection {
    #[serde(default)]
    per_user: u32,
    #[serde(default)]
    total: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsSection {
    #[serde(default)]
    listen: Option<String>,
}

fn yes() -> bool {
    true
}
fn default_realm() -> String {
    "relay.local".to_owned()
}
fn default_port_range() -> String {
    "49152-65535".to_owned()
}
fn default_lifetime() -> u64 {
    600
}
fn default_max_lifetime() -> u64 {
    3600
}
fn default_max_permissions() -> u32 {
    256
}
/// Room for the compact 401 challenge (about 90 bytes with a short realm) above the
/// smallest first Allocate (28 bytes): browsers and coturn's clients send such Allocates
/// over UDP, and with 0 they would never get the challenge. Bounds the reflection gain of
/// a spoofed unauthenticated request to about 4x (a STUN Binding answer is 2x).
fn default_unauth_reply_allowance() -> u32 {
    128
}
/// A browser needs one or two challenges per allocation; 50/s with bursts of 100 per
/// source IP (per worker) leaves room for a busy NAT and bounds reflection at one victim
/// to about 6 KB/s per worker with the default allowance.
fn default_unauth_replies_per_sec() -> u32 {
    50
}
fn default_unauth_reply_burst() -> u32 {
    100
}
fn default_nonce_lifetime() -> u64 {
    600
}

type Invalid = (String, String);

fn sockets(key: &str, raw: &[String]) -> Result<Vec<SocketAddr>, Invalid> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            r.trim().parse().map_err(|_| {
                (
                    format!("{key}[{i}]"),
                    format!(
                        "{r:?} is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:3478\")"
                    ),
                )
            })
        })
        .collect()
}

fn ip(key: &str, raw: &Option<String>, v6: bool) -> Result<Option<IpAddr>, Invalid> {
    let Some(r) = raw else { return Ok(None) };
    let family = if v6 { "an IPv6" } else { "an IPv4" };
    match r.trim().parse::<IpAddr>() {
        Ok(a) if a.is_ipv6() == v6 && !a.is_unspecified() && !a.is_multicast() => Ok(Some(a)),
        _ => Err((
            key.to_owned(),
            format!(
                "{r:?} is not {family} unicast address; give the address relayed sockets \
                 bind to, which clients are told (e.g. the host's public address)"
            ),
        )),
    }
}

/// Parses `"LOW-HIGH"` (inclusive).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "{s:?} is not a port range; write \"LOW-HIGH\" with 1 <= LOW <= HIGH <= 65535, \
             e.g. \"49152-65535\""
        )
    };
    let (lo, hi) = s.trim().split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 {
        return Err(format!(
            "{s:?}: port 0 cannot be relayed; start at 1 or above"
        ));
    }
    if lo > hi {
        return Err(format!(
            "{s:?}: {lo} is above {hi}; write the lower port first"
        ));
    }
    Ok((lo, hi))
}

/// Checks that `path` holds at least one PEM certificate.
fn check_cert(key: &str, path: &Path) -> Result<(), Invalid> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let err = |m: String| (key.to_owned(), format!("{}: {m}", path.display()));
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut n = 0;
    for c in iter {
        c.map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(err(
            "contains no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    Ok(())
}

/// Checks that `path` holds a PEM private key.
fn check_key(key: &str, path: &Path) -> Result<(), Invalid> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let err = |m: String| (key.to_owned(), format!("{}: {m}", path.display()));
    match PrivateKeyDer::from_pem_file(path) {
        Ok(_) => Ok(()),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(err(
            "contains no PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
        )),
        Err(rustls_pki_types::pem::Error::Io(e)) => Err(err(format!("cannot read: {e}"))),
        Err(e) => Err(err(format!("not a PEM private key file: {e}"))),
    }
}

/// Turns the TURN-related sections into settings, checking each key.
pub(super) fn build(
    turn: TurnSection,
    policy: PolicySection,
    quota: QuotaSection,
    metrics: MetricsSection,
) -> Result<(TurnSettings, PolicyConfig, QuotaSettings, MetricsSettings), Invalid> {
    let port_range =
        parse_port_range(&turn.port_range).map_err(|m| ("turn.port_range".to_owned(), m))?;
    let settings = TurnSettings {
        enabled: turn.enabled,
        realm: turn.realm,
        listen_tcp: sockets("turn.listen_tcp", &turn.listen_tcp)?,
        listen_tls: sockets("turn.listen_tls", &turn.listen_tls)?,
        tls_cert: turn.tls_cert,
        tls_key: turn.tls_key,
        relay_ipv4: ip("turn.relay_ipv4", &turn.relay_ipv4, false)?,
        relay_ipv6: ip("turn.relay_ipv6", &turn.relay_ipv6, true)?,
        port_range,
        default_lifetime: turn.default_lifetime,
        max_lifetime: turn.max_lifetime,
        max_permissions: turn.max_permissions,
        bandwidth_limit: turn.bandwidth_limit,
        allocation_byte_quota: turn.allocation_byte_quota,
        unauth_reply_allowance: turn.unauth_reply_allowance,
        unauth_replies_per_sec: turn.unauth_replies_per_sec,
        unauth_reply_burst: turn.unauth_reply_burst,
        legacy_channel_range: turn.legacy_channel_range,
        users: turn.users,
        secrets: turn.auth.secrets,
        nonce_lifetime: turn.auth.nonce_lifetime,
        state_file: match turn.state_file.trim() {
            "" => None,
            p => Some(PathBuf::from(p)),
        },
    };
    let metrics = MetricsSettings {
        listen: match metrics.listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) => Some(r.parse().map_err(|_| {
                (
                    "metrics.listen".to_owned(),
                    format!(
                        "{r:?} is not a socket address (expected IP:PORT, e.g. \
                         \"127.0.0.1:9641\"; leave it out to turn metrics off)"
                    ),
                )
            })?),
        },
    };
    Ok((
        settings,
        PolicyConfig {
            allow: policy.allow,
            deny: policy.deny,
        },
        QuotaSettings {
            per_user: quota.per_user,
            total: quota.total,
        },
        metrics,
    ))
}

impl TurnSettings {
    /// Checks the invariants; returns the key and what is wrong.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        let e = |k: &str, m: String| Err((k.to_owned(), m));
        if self.realm.trim().is_empty() {
            return e(
                "turn.realm",
                "is empty: give a realm, e.g. \"example.org\"".into(),
            );
        }
        if self.realm.len() > MAX_REALM {
            return e(
                "turn.realm",
                format!(
                    "is {} bytes long; a realm holds at most {MAX_REALM}",
                    self.realm.len()
                ),
            );
        }
        if self.default_lifetime == 0 {
            return e(
                "turn.default_lifetime",
                "must be above 0 seconds (RFC 8656: 600)".into(),
            );
        }
        if self.max_lifetime == 0 || self.max_lifetime > MAX_LIFETIME_S {
            return e(
                "turn.max_lifetime",
                format!("{} must be 1..={MAX_LIFETIME_S} seconds", self.max_lifetime),
            );
        }
        if self.max_lifetime < self.default_lifetime {
            return e(
                "turn.max_lifetime",
                format!(
                    "{} is below turn.default_lifetime ({}); the maximum must be at least the default",
                    self.max_lifetime, self.default_lifetime
                ),
            );
        }
        if self.nonce_lifetime == 0 {
            return e(
                "turn.auth.nonce_lifetime",
                "must be above 0 seconds (e.g. 600)".into(),
            );
        }
        for (name, password) in &self.users {
            let key = format!("turn.users.{name:?}");
            if name.trim().is_empty() {
                return e("turn.users", "a user name is empty".into());
            }
            if name.len() > MAX_USERNAME {
                return e(
                    &key,
                    format!("the name is longer than {MAX_USERNAME} bytes"),
                );
            }
            if password.expose().is_empty() {
                return e(&key, "the password is empty".into());
            }
        }
        for (i, s) in self.secrets.iter().enumerate() {
            if s.expose().is_empty() {
                return e(&format!("turn.auth.secrets[{i}]"), "is empty".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (key, list) in [
            ("turn.listen_tcp", &self.listen_tcp),
            ("turn.listen_tls", &self.listen_tls),
        ] {
            for (i, a) in list.iter().enumerate() {
                if !seen.insert(*a) {
                    return e(
                        &format!("{key}[{i}]"),
                        format!("\"{a}\" is already a TCP or TLS listen address"),
                    );
                }
            }
        }
        if !self.listen_tls.is_empty() || self.tls_cert.is_some() || self.tls_key.is_some() {
            let Some(cert) = &self.tls_cert else {
                return e(
                    "turn.tls_cert",
                    "is missing: TLS needs a PEM certificate chain (tls_cert) and its key (tls_key)"
                        .into(),
                );
            };
            let Some(key) = &self.tls_key else {
                return e(
                    "turn.tls_key",
                    "is missing: TLS needs a PEM certificate chain (tls_cert) and its key (tls_key)"
                        .into(),
                );
            };
            check_cert("turn.tls_cert", cert)?;
            check_key("turn.tls_key", key)?;
        }
        Ok(())
    }

    /// Whether any credential is configured (without one every Allocate is refused).
    pub fn has_credentials(&self) -> bool {
        !self.users.is_empty() || !self.secrets.is_empty()
    }

    /// The relay address per family: the configured one, else the first specific
    /// listen address of that family. A family whose listen addresses are all
    /// unspecified (0.0.0.0 / ::) and has no relay address configured is not relayed;
    /// the returned notes say so, for the log.
    pub fn relay_addrs(
        &self,
        listen: &[SocketAddr],
    ) -> (Option<IpAddr>, Option<IpAddr>, Vec<String>) {
        let mut notes = Vec::new();
        let mut pick = |configured: Option<IpAddr>, v6: bool, key: &str| {
            if configured.is_some() {
                return configured;
            }
            let fam: Vec<IpAddr> = listen
                .iter()
                .map(SocketAddr::ip)
                .filter(|a| a.is_ipv6() == v6)
                .collect();
            if let Some(a) = fam.iter().find(|a| !a.is_unspecified()) {
                return Some(*a);
            }
            if !fam.is_empty() {
                notes.push(format!(
                    "{} relaying off: the listen address is unspecified; set {key} to the \
                     address clients should be given",
                    if v6 { "IPv6" } else { "IPv4" }
                ));
            }
            None
        };
        let v4 = pick(self.relay_ipv4, false, "turn.relay_ipv4");
        let v6 = pick(self.relay_ipv6, true, "turn.relay_ipv6");
        (v4, v6, notes)
    }
}

/// Checks the policy lists (every entry parses).
pub(super) fn check_policy(p: &PolicyConfig) -> Result<(), Invalid> {
    for (list, key) in [(&p.allow, "policy.allow"), (&p.deny, "policy.deny")] {
        for (i, s) in list.iter().enumerate() {
            if let Err(err) = s.parse::<Cidr>() {
                return Err((format!("{key}[{i}]"), err.to_string()));
            }
        }
    }
    Ok(())
}
