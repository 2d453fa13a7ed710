//! The operator's control socket: a Unix stream socket taking one JSON request per line
//! and answering one JSON line, plus the client side used by `relay stats`, `relay status`,
//! `relay allocations`, `relay kick` and `relay reload`.
//!
//! Requests: `{"cmd":"stats"}`, `{"cmd":"allocations","user":?,"addr":?}`,
//! `{"cmd":"kick","user":?|"client":?|"relayed":?}`, `{"cmd":"reload"}`. The daemon side
//! answers them through the [`Commands`] trait, so this module knows nothing about
//! workers or TURN state: the daemon implements it on top of the data path.
//!
//! It exists so that a running daemon can be inspected without a network listener: the
//! socket is created mode 0600 (root or the daemon's user only), a stale file from a
//! crashed daemon is replaced, a live daemon on the same path is refused, and the file is
//! removed on shutdown.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long one client may take to send its request / read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the CLI waits for an answer (a reload reads files and asks every worker).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// Requests served per connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 16;

/// The answer to `{"cmd":"stats"}` (contract 4 of the project).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Daemon version.
    pub version: String,
    /// `io_uring` or `portable`.
    pub backend: String,
    /// Number of userspace workers.
    pub workers: usize,
    /// Addresses served.
    pub listen: Vec<String>,
    /// The kernel fast path, or null when it is off.
    pub xdp: Option<XdpStats>,
    /// The userspace data path, summed over workers.
    pub userspace: UserspaceStats,
    /// The TURN service, summed over workers; null when TURN is disabled.
    #[serde(default)]
    pub turn: Option<TurnStatsJson>,
    /// The SFU and its signaling server (fixed counter names); null when it is off.
    #[serde(default)]
    pub sfu: Option<std::collections::BTreeMap<String, u64>>,
}

/// TURN counters in the stats answer (and the source of the Prometheus families).
/// Maps only contain fixed, bounded keys (reasons, error codes), never user names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnStatsJson {
    /// Live allocations.
    pub allocations: u64,
    /// Live permissions over all allocations.
    pub permissions: u64,
    /// Live channel bindings over all allocations.
    pub channels: u64,
    /// Allocations created since start.
    #[serde(default)]
    pub allocations_created: u64,
    /// Datagrams relayed, by direction: `client_to_peer`, `peer_to_client`.
    #[serde(default)]
    pub packets: BTreeMap<String, u64>,
    /// Payload bytes relayed, by direction: `client_to_peer`, `peer_to_client`.
    #[serde(default)]
    pub bytes: BTreeMap<String, u64>,
    /// Failed authentications by reason (e.g. `bad_integrity`, `unknown_user`,
    /// `stale_nonce`, `rate_limited`).
    #[serde(default)]
    pub auth_failures: BTreeMap<String, u64>,
    /// Error responses sent, by code (`"403"`, `"486"`, ...).
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// Datagrams dropped, by reason (no permission, bandwidth limit, ...).
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
    /// Of `packets`: relayed by the kernel fast path, by direction.
    #[serde(default)]
    pub kernel_packets: BTreeMap<String, u64>,
    /// Rules installed in the kernel fast path.
    #[serde(default)]
    pub fast_rules: u64,
    /// Rules the kernel fast path refused (a full table: raise `xdp.turn_rules`).
    #[serde(default)]
    pub fast_rules_refused: u64,
}

/// One allocation as the control socket reports it (`relay allocations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRow {
    /// The username it authenticated with.
    pub user: String,
    /// Client address.
    pub client: SocketAddr,
    /// Server (listen) address the client talks to.
    pub server: SocketAddr,
    /// Client transport: `udp`, `tcp` or `tls`.
    pub transport: String,
    /// Relayed address(es): one, or two for a dual-stack allocation.
    pub relayed: Vec<SocketAddr>,
    /// Seconds until it expires unless refreshed.
    pub expires_in_s: u64,
    /// Peer addresses with a permission.
    pub permissions: Vec<IpAddr>,
    /// Bound channels: number and peer.
    pub channels: Vec<(u16, SocketAddr)>,
    /// Datagrams relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
}

/// Which allocations `relay allocations` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationFilter {
    /// Exact username, or the user part of a REST username `expiry:user`.
    pub user: Option<String>,
    /// An IP (matches any port) or IP:port, compared with the client and relayed
    /// addresses.
    pub addr: Option<AddrFilter>,
}

/// An address filter: a bare IP or a socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrFilter {
    /// Any port on this IP.
    Ip(IpAddr),
    /// Exactly this address.
    Socket(SocketAddr),
}

impl AddrFilter {
    /// Parses `IP` or `IP:PORT` (`[v6]:port`).
    pub fn parse(s: &str) -> Option<AddrFilter> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(AddrFilter::Socket(a));
        }
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(AddrFilter::Ip)
    }

    fn matches(&self, a: SocketAddr) -> bool {
        match self {
            AddrFilter::Ip(ip) => a.ip() == *ip,
            AddrFilter::Socket(s) => a == *s,
        }
    }
}

/// Whether `user` (as stored on an allocation) is `wanted`, directly or as the user
/// part of a REST username `expiry:user`.
pub fn user_matches(user: &str, wanted: &str) -> bool {
    user == wanted || user.split_once(':').is_some_and(|(_, u)| u == wanted)
}

impl AllocationFilter {
    /// Whether `row` passes the filter.
    pub fn matches(&self, row: &AllocationRow) -> bool {
        if let Some(u) = &self.user
            && !user_matches(&row.user, u)
        {
            return false;
        }
        if let Some(a) = &self.addr
            && !a.matches(row.client)
            && !row.relayed.iter().any(|r| a.matches(*r))
        {
            return false;
        }
        true
    }
}

/// What `relay kick` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KickTarget {
    /// Every allocation of this user (also matching the user part of `expiry:user`).
    User(String),
    /// The allocation(s) of this client address.
    Client(SocketAddr),
    /// The allocation owning this relayed address.
    Relayed(SocketAddr),
}

/// What a reload changed, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// What was reloaded, one line each (e.g. "tls certificate /etc/relay/cert.pem").
    pub reloaded: Vec<String>,
    /// Settings that changed in the file but need a restart to take effect.
    #[serde(default)]
    pub needs_restart: Vec<String>,
}

/// The daemon side of the control socket. The daemon implements it on top of its data
/// path; every call returns promptly (workers answer within one loop iteration).
pub trait Commands {
    /// The stats answer.
    fn stats(&self) -> Stats;
    /// Every live allocation (the control socket applies the filter), or why the list
    /// would be incomplete.
    fn allocations(&self) -> Result<Vec<AllocationRow>, String>;
    /// Removes the matching allocations; returns how many went, or why that count would
    /// be incomplete.
    fn kick(&self, target: &KickTarget) -> Result<usize, String>;
    /// Re-reads the configuration file and applies what can change live (TLS
    /// certificate and key, users and shared secrets, peer policy, quotas) without
    /// dropping allocations. On error nothing is changed.
    fn reload(&self) -> Result<ReloadReport, String>;
}

/// A [`Commands`] answering only `stats` (the rest are empty / refused): for tests and
/// daemons without TURN.
pub struct StatsOnly<F: Fn() -> Stats>(pub F);

impl<F: Fn() -> Stats> Commands for StatsOnly<F> {
    fn stats(&self) -> Stats {
        (self.0)()
    }
    fn allocations(&self) -> Result<Vec<AllocationRow>, String> {
        Ok(Vec::new())
    }
    fn kick(&self, _: &KickTarget) -> Result<usize, String> {
        Ok(0)
    }
    fn reload(&self) -> Result<ReloadReport, String> {
        Err("reload is not supported by this daemon".into())
    }
}

/// Fast path state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpStats {
    /// Interfaces and the mode each got.
    pub attached: Vec<Attached>,
    /// Kernel counters by name (`stun_answered_v4`, ...), summed over CPUs; null when
    /// they could not be read.
    pub counters: Option<BTreeMap<String, u64>>,
    /// The TURN rule tables (with TURN relayed in the kernel): per table
    /// (`channel_table_*`, `peer_table_*`) `slots` in use, `rules` in it, resizes done
    /// as `moves` and `rebuilt_in_place` (slow; only in a map too small to halve),
    /// `longest_resize_us` a resize held a worker; and the rules in the slower hash maps
    /// behind them (`channel_hash_map_rules`, `peer_hash_map_rules`). Absent without
    /// kernel TURN.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_tables: BTreeMap<String, u64>,
}

/// One attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// Interface name.
    pub interface: String,
    /// `native` or `generic`.
    pub mode: String,
}

/// Userspace counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserspaceStats {
    /// Datagrams received.
    pub received: u64,
    /// Binding requests answered.
    pub stun_answered: u64,
    /// Datagrams dropped (all reasons).
    pub dropped: u64,
    /// Receive/send errors.
    pub errors: u64,
    /// Drops by reason (only reasons seen at least once).
    #[serde(default)]
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// The AF_XDP side (`xdp.af_xdp`): frames `received` and `sent` through AF_XDP
    /// sockets, sends that took a kernel socket instead (`fallback`), received frames
    /// `dropped`, and frames the XDP program `steered` to the sockets (more than
    /// `received` when a socket's receive ring overflowed). Empty when it is off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub af_xdp: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    cmd: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    addr: Option<String>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    relayed: Option<String>,
}

/// Control socket failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket's directory could not be created.
    #[error("cannot create directory {path:?} for the control socket: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another daemon answers on the path.
    #[error(
        "another relay is already serving the control socket {0:?}; stop it first or choose \
         another path with --control-socket"
    )]
    InUse(PathBuf),
    /// The path exists and is not a socket: we refuse to delete it.
    #[error("{0:?} exists and is not a socket; remove it or choose another --control-socket")]
    NotASocket(PathBuf),
    /// Binding or preparing the socket failed.
    #[error("cannot create the control socket {path:?}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The client could not reach the daemon.
    #[error(
        "cannot connect to the control socket {path:?}: {source} (is `relay run` running \
         with this --control-socket?)"
    )]
    Connect {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The exchange with the daemon failed.
    #[error("control socket exchange failed: {0}")]
    Exchange(#[source] io::Error),
    /// The daemon answered with an error.
    #[error("the daemon answered: {0}")]
    Daemon(String),
}

/// The listening control socket; removes its file when dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Creates the parent directory, replaces a stale socket file, binds, sets 0600.
    pub fn bind(path: &Path) -> Result<ControlServer, ControlError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| ControlError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(ControlError::InUse(path.to_owned()));
                }
                tracing::info!(path = %path.display(), "removing stale control socket");
                std::fs::remove_file(path).map_err(|source| ControlError::Bind {
                    path: path.to_owned(),
                    source,
                })?;
            }
            Ok(_) => return Err(ControlError::NotASocket(path.to_owned())),
            Err(_) => {}
        }
        let bind_err = |source| ControlError::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let server = ControlServer {
            listener,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        server.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for clients and serves every pending one with `commands`.
    /// Returns early when a signal interrupts the wait.
    pub fn serve_for(&self, timeout: Duration, commands: &dyn Commands) {
        let mut pfd = libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r <= 0 {
            return;
        }
        for _ in 0..MAX_REQUESTS_PER_CONNECTION {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = serve_connection(stream, commands) {
                        tracing::debug!(error = %e, "control client went away");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    return;
                }
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
        }
    }
}

fn serve_connection(stream: UnixStream, commands: &dyn Commands) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.take(MAX_REQUEST * MAX_REQUESTS_PER_CONNECTION as u64));
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let answer = answer(line.trim(), commands);
        writer.write_all(answer.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// The answer line (without newline) for one request line.
pub fn answer(line: &str, commands: &dyn Commands) -> String {
    let error = |msg: String| serde_json::json!({ "error": msg }).to_string();
    let to_json = |v: Result<String, serde_json::Error>| v.unwrap_or_else(|e| error(e.to_string()));
    let r = match serde_json::from_str::<Request>(line) {
        Ok(r) => r,
        Err(e) => {
            return error(format!(
                "bad request ({e}); send one JSON object per line, e.g. {{\"cmd\":\"stats\"}}"
            ));
        }
    };
    let sock = |key: &str, v: &str| -> Result<SocketAddr, String> {
        v.trim().parse().map_err(|_| {
            format!("{key}: {v:?} is not an address (IP:PORT, e.g. \"192.0.2.1:50000\")")
        })
    };
    match r.cmd.as_str() {
        "stats" => to_json(serde_json::to_string(&commands.stats())),
        "allocations" => {
            let addr = match r.addr.as_deref().map(|a| (a, AddrFilter::parse(a))) {
                None => None,
                Some((_, Some(f))) => Some(f),
                Some((a, None)) => {
                    return error(format!("addr: {a:?} is not an IP or IP:PORT"));
                }
            };
            let filter = AllocationFilter { user: r.user, addr };
            let rows = match commands.allocations() {
                Ok(rows) => rows,
                Err(e) => return error(e),
            };
            let rows: Vec<AllocationRow> =
                rows.into_iter().filter(|row| filter.matches(row)).collect();
            to_json(serde_json::to_string(
                &serde_json::json!({ "allocations": rows }),
            ))
        }
        "kick" => {
            let target = match (r.user, r.client, r.relayed) {
                (Some(u), None, None) if !u.is_empty() => KickTarget::User(u),
                (None, Some(c), None) => match sock("client", &c) {
                    Ok(a) => KickTarget::Client(a),
                    Err(e) => return error(e),
                },
                (None, None, Some(c)) => match sock("relayed", &c) {
                    Ok(a) => KickTarget::Relayed(a),
                    Err(e) => return error(e),
                },
                _ => {
                    return error(
                        "kick needs exactly one of \"user\" (non-empty), \"client\" or \"relayed\""
                            .into(),
                    );
                }
            };
            match commands.kick(&target) {
                Ok(n) => serde_json::json!({ "kicked": n }).to_string(),
                Err(e) => error(e),
            }
        }
        "reload" => match commands.reload() {
            Ok(report) => to_json(serde_json::to_string(&report)),
            Err(e) => error(format!("reload failed, nothing changed: {e}")),
        },
        other => error(format!(
            "unknown command {other:?}; known commands: stats, allocations, kick, reload"
        )),
    }
}

/// Sends one JSON request to the daemon at `path` and returns its raw JSON answer
/// (an `{"error":..}` answer becomes [`ControlError::Daemon`]).
pub fn request_value(path: &Path, req: &serde_json::Value) -> Result<String, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(RELOAD_TIMEOUT))
        .map_err(ControlError::Exchange)?;
    let req = req.to_string() + "\n";
    stream
        .write_all(req.as_bytes())
        .map_err(ControlError::Exchange)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(ControlError::Exchange)?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        return Err(ControlError::Exchange(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without answering",
        )));
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&line)
        && let Some(serde_json::Value::String(e)) = map.get("error")
    {
        return Err(ControlError::Daemon(e.clone()));
    }
    Ok(line)
}

/// Sends `{"cmd":cmd}` to the daemon at `path` and returns its raw JSON answer.
pub fn request(path: &Path, cmd: &str) -> Result<String, ControlError> {
    request_value(path, &serde_json::json!({ "cmd": cmd }))
}

fn invalid_answer(e: serde_json::Error) -> ControlError {
    ControlError::Exchange(io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Asks the daemon for its stats.
pub fn fetch_stats(path: &Path) -> Result<(Stats, String), ControlError> {
    let raw = request(path, "stats")?;
    let stats = serde_json::from_str(&raw).map_err(invalid_answer)?;
    Ok((stats, raw))
}

/// Asks the daemon for its allocations, filtered by user and/or address.
pub fn fetch_allocations(
    path: &Path,
    user: Option<&str>,
    addr: Option<&str>,
) -> Result<(Vec<AllocationRow>, String), ControlError> {
    let mut req = serde_json::json!({ "cmd": "allocations" });
    if let Some(u) = user {
        req["user"] = u.into();
    }
    if let Some(a) = addr {
        req["addr"] = a.into();
    }
    let raw = request_value(path, &req)?;
    #[derive(Deserialize)]
    struct Answer {
        allocations: Vec<AllocationRow>,
    }
    let a: Answer = serde_json::from_str(&raw).map_err(invalid_answer)?;
    Ok((a.allocations, raw))
}

/// Asks the daemon to remove allocations; returns how many went.
pub fn kick(path: &Path, target: &KickTarget) -> Result<usize, ControlError> {
    let req = match target {
        KickTarget::User(u) => serde_json::json!({ "cmd": "kick", "user": u }),
        KickTarget::Client(a) => serde_json::json!({ "cmd": "kick", "client": a.to_string() }),
        KickTarget::Relayed(a) => serde_json::json!({ "cmd": "kick", "relayed": a.to_string() }),
    };
    let raw = request_value(path, &req)?;
    #[derive(Deserialize)]
    struct Answer {
        kicked: usize,
    }
    let a: Answer = serde_json::from_str(&raw).map_err(invalid_answer)?;
    Ok(a.kicked)
}

/// Asks the daemon to reload its configuration.
pub fn reload(path: &Path) -> Result<ReloadReport, ControlError> {
    let raw = request(path, "reload")?;
    serde_json::from_str(&raw).map_err(invalid_answer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        Stats {
            version: "0.1.0".into(),
            backend: "io_uring".into(),
            workers: 2,
            listen: vec!["127.0.0.1:3478".into()],
            xdp: None,
            userspace: UserspaceStats {
                received: 3,
                stun_answered: 2,
                dropped: 1,
                errors: 0,
                dropped_by_reason: BTreeMap::from([("not_stun".into(), 1)]),
                af_xdp: BTreeMap::new(),
            },
            turn: None,
            sfu: None,
        }
    }

    struct Fake {
        kicked: std::cell::RefCell<Vec<KickTarget>>,
        /// Answer as a daemon with a worker that did not answer in time.
        silent: bool,
    }

    fn row(user: &str, client: &str, relayed: &str) -> AllocationRow {
        AllocationRow {
            user: user.into(),
            client: client.parse().unwrap(),
            server: "127.0.0.1:3478".parse().unwrap(),
            transport: "udp".into(),
            relayed: vec![relayed.parse().unwrap()],
            expires_in_s: 600,
            permissions: vec!["192.0.2.9".parse().unwrap()],
            channels: vec![(0x4000, "192.0.2.9:7000".parse().unwrap())],
            packets_to_peer: 1,
            bytes_to_peer: 100,
            packets_to_client: 2,
            bytes_to_client: 200,
        }
    }

    impl Commands for Fake {
        fn stats(&self) -> Stats {
            let mut s = sample();
            s.turn = Some(TurnStatsJson {
                allocations: 2,
                auth_failures: BTreeMap::from([("stale_nonce".into(), 4)]),
                ..TurnStatsJson::default()
            });
            s
        }
        fn allocations(&self) -> Result<Vec<AllocationRow>, String> {
            if self.silent {
                return Err("1 of 2 worker(s) did not answer".into());
            }
            Ok(vec![
                row("alice", "198.51.100.1:5000", "203.0.113.1:50000"),
                row("1700000000:bob", "198.51.100.2:5000", "203.0.113.1:50002"),
            ])
        }
        fn kick(&self, target: &KickTarget) -> Result<usize, String> {
            self.kicked.borrow_mut().push(target.clone());
            if self.silent {
                return Err("kicked 1 allocation(s) on the workers that answered".into());
            }
            Ok(1)
        }
        fn reload(&self) -> Result<ReloadReport, String> {
            Err("tls_cert: cannot read".into())
        }
    }

    fn fake() -> Fake {
        Fake {
            kicked: std::cell::RefCell::new(Vec::new()),
            silent: false,
        }
    }

    fn users(answer_line: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(answer_line).unwrap();
        v["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn stats_carry_turn_object() {
        let v: serde_json::Value =
            serde_json::from_str(&answer("{\"cmd\":\"stats\"}", &fake())).unwrap();
        assert_eq!(v["turn"]["allocations"], 2);
        assert_eq!(v["turn"]["auth_failures"]["stale_nonce"], 4);
        // Without TURN the key is null, and old answers without it still parse.
        let v: serde_json::Value =
            serde_json::from_str(&answer("{\"cmd\":\"stats\"}", &StatsOnly(sample))).unwrap();
        assert!(v["turn"].is_null());
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("turn");
        let s: Stats = serde_json::from_value(old).unwrap();
        assert_eq!(s, sample());
    }

    #[test]
    fn allocations_filter_by_user_and_addr() {
        let f = fake();
        let all = answer("{\"cmd\":\"allocations\"}", &f);
        assert_eq!(users(&all), ["alice", "1700000000:bob"]);
        let bob = answer("{\"cmd\":\"allocations\",\"user\":\"bob\"}", &f);
        assert_eq!(users(&bob), ["1700000000:bob"]);
        let by_ip = answer("{\"cmd\":\"allocations\",\"addr\":\"198.51.100.1\"}", &f);
        assert_eq!(users(&by_ip), ["alice"]);
        let by_relay = answer(
            "{\"cmd\":\"allocations\",\"addr\":\"203.0.113.1:50002\"}",
            &f,
        );
        assert_eq!(users(&by_relay), ["1700000000:bob"]);
        let none = answer(
            "{\"cmd\":\"allocations\",\"user\":\"alice\",\"addr\":\"198.51.100.2\"}",
            &f,
        );
        assert!(users(&none).is_empty());
        let bad = answer("{\"cmd\":\"allocations\",\"addr\":\"nope\"}", &f);
        assert!(bad.contains("error") && bad.contains("addr"), "{bad}");
    }

    #[test]
    fn kick_needs_exactly_one_target() {
        let f = fake();
        assert_eq!(
            answer("{\"cmd\":\"kick\",\"user\":\"alice\"}", &f),
            "{\"kicked\":1}"
        );
        assert_eq!(
            answer("{\"cmd\":\"kick\",\"client\":\"198.51.100.1:5000\"}", &f),
            "{\"kicked\":1}"
        );
        assert_eq!(
            answer("{\"cmd\":\"kick\",\"relayed\":\"[2001:db8::1]:50000\"}", &f),
            "{\"kicked\":1}"
        );
        assert_eq!(
            *f.kicked.borrow(),
            vec![
                KickTarget::User("alice".into()),
                KickTarget::Client("198.51.100.1:5000".parse().unwrap()),
                KickTarget::Relayed("[2001:db8::1]:50000".parse().unwrap()),
            ]
        );
        for bad in [
            "{\"cmd\":\"kick\"}",
            "{\"cmd\":\"kick\",\"user\":\"\"}",
            "{\"cmd\":\"kick\",\"user\":\"a\",\"client\":\"1.2.3.4:5\"}",
            "{\"cmd\":\"kick\",\"client\":\"1.2.3.4\"}",
            "{\"cmd\":\"kick\",\"who\":\"a\"}",
        ] {
            assert!(answer(bad, &f).contains("error"), "{bad}");
        }
        assert_eq!(f.kicked.borrow().len(), 3, "no kick on a bad request");
    }

    #[test]
    fn a_worker_that_does_not_answer_is_an_error_not_a_short_answer() {
        let f = Fake {
            silent: true,
            ..fake()
        };
        let v: serde_json::Value =
            serde_json::from_str(&answer("{\"cmd\":\"allocations\"}", &f)).unwrap();
        assert_eq!(v["error"], "1 of 2 worker(s) did not answer");
        assert!(v.get("allocations").is_none(), "{v}");
        let v: serde_json::Value =
            serde_json::from_str(&answer("{\"cmd\":\"kick\",\"user\":\"alice\"}", &f)).unwrap();
        assert_eq!(
            v["error"],
            "kicked 1 allocation(s) on the workers that answered"
        );
        assert!(v.get("kicked").is_none(), "{v}");
    }

    #[test]
    fn reload_error_is_reported() {
        let a = answer("{\"cmd\":\"reload\"}", &fake());
        assert!(
            a.contains("reload failed, nothing changed: tls_cert"),
            "{a}"
        );
    }

    #[test]
    fn stats_json_has_contract_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&answer("{\"cmd\":\"stats\"}", &StatsOnly(sample))).unwrap();
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["backend"], "io_uring");
        assert_eq!(v["workers"], 2);
        assert_eq!(v["listen"][0], "127.0.0.1:3478");
        assert!(v["xdp"].is_null());
        assert_eq!(v["userspace"]["received"], 3);
        assert_eq!(v["userspace"]["stun_answered"], 2);
        assert_eq!(v["userspace"]["dropped"], 1);
        assert_eq!(v["userspace"]["errors"], 0);
    }

    #[test]
    fn bad_requests_get_errors() {
        assert!(answer("{\"cmd\":\"reboot\"}", &StatsOnly(sample)).contains("unknown command"));
        assert!(answer("stats", &StatsOnly(sample)).contains("bad request"));
    }

    #[test]
    fn server_round_trip_permissions_and_cleanup() {
        let dir = std::env::temp_dir().join(format!("relay-ctl-{}", std::process::id()));
        let path = dir.join("sub/c.sock");
        let server = ControlServer::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon on the same path is refused.
        assert!(matches!(
            ControlServer::bind(&path),
            Err(ControlError::InUse(_))
        ));
        let client = {
            let path = path.clone();
            std::thread::spawn(move || fetch_stats(&path))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !client.is_finished() && std::time::Instant::now() < deadline {
            server.serve_for(Duration::from_millis(50), &StatsOnly(sample));
        }
        let (stats, raw) = client.join().unwrap().expect("stats");
        assert_eq!(stats, sample());
        assert!(raw.starts_with('{'));
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
        // A stale socket file (no listener) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let again = ControlServer::bind(&path).expect("stale socket replaced");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn not_a_socket_is_left_alone() {
        let path = std::env::temp_dir().join(format!("relay-ctl-file-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            ControlServer::bind(&path),
            Err(ControlError::NotASocket(_))
        ));
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
    }
}
