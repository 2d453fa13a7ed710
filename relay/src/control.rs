//! The operator's control socket: a Unix stream socket taking one JSON request per line
//! (`{"cmd":"stats"}`) and answering one JSON line, plus the client side used by
//! `relay stats`.
//!
//! It exists so that a running daemon can be inspected without a network listener: the
//! socket is created mode 0600 (root or the daemon's user only), a stale file from a
//! crashed daemon is replaced, a live daemon on the same path is refused, and the file is
//! removed on shutdown.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long one client may take to send its request / read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
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
}

/// Fast path state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpStats {
    /// Interfaces and the mode each got.
    pub attached: Vec<Attached>,
    /// Kernel counters by name (`stun_answered_v4`, ...), summed over CPUs; null when
    /// they could not be read.
    pub counters: Option<BTreeMap<String, u64>>,
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
}

#[derive(Debug, Deserialize)]
struct Request {
    cmd: String,
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

    /// Waits up to `timeout` for clients and serves every pending one with `stats`.
    /// Returns early when a signal interrupts the wait.
    pub fn serve_for(&self, timeout: Duration, stats: &dyn Fn() -> Stats) {
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
                    if let Err(e) = serve_connection(stream, stats) {
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

fn serve_connection(stream: UnixStream, stats: &dyn Fn() -> Stats) -> io::Result<()> {
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
        let answer = answer(line.trim(), stats);
        writer.write_all(answer.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// The answer line (without newline) for one request line.
pub fn answer(line: &str, stats: &dyn Fn() -> Stats) -> String {
    let error = |msg: String| serde_json::json!({ "error": msg }).to_string();
    match serde_json::from_str::<Request>(line) {
        Ok(r) if r.cmd == "stats" => {
            serde_json::to_string(&stats()).unwrap_or_else(|e| error(e.to_string()))
        }
        Ok(r) => error(format!(
            "unknown command {:?}; known commands: stats",
            r.cmd
        )),
        Err(e) => error(format!(
            "bad request ({e}); send one JSON object per line, e.g. {{\"cmd\":\"stats\"}}"
        )),
    }
}

/// Sends `{"cmd":cmd}` to the daemon at `path` and returns its raw JSON answer.
pub fn request(path: &Path, cmd: &str) -> Result<String, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(ControlError::Exchange)?;
    let req = serde_json::json!({ "cmd": cmd }).to_string() + "\n";
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

/// Asks the daemon for its stats.
pub fn fetch_stats(path: &Path) -> Result<(Stats, String), ControlError> {
    let raw = request(path, "stats")?;
    let stats = serde_json::from_str(&raw)
        .map_err(|e| ControlError::Exchange(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    Ok((stats, raw))
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
            },
        }
    }

    #[test]
    fn stats_json_has_contract_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&answer("{\"cmd\":\"stats\"}", &sample)).unwrap();
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
        assert!(answer("{\"cmd\":\"reboot\"}", &sample).contains("unknown command"));
        assert!(answer("stats", &sample).contains("bad request"));
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
            server.serve_for(Duration::from_millis(50), &sample);
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
