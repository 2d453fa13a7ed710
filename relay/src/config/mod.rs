//! The daemon's configuration: a TOML file (or the embedded default), command-line
//! overrides on top, and validation that names the offending key.
//!
//! It exists so that every operator mistake is caught once, at start-up, with a message
//! saying which key is wrong, on which line, and what would be accepted — before any
//! socket is bound or any eBPF program is loaded.

mod error;
pub mod interfaces;
mod sfu;
mod turn;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use sfu::SfuSettings;
pub use turn::{
    DEFAULT_STATE_FILE, MetricsSettings, QuotaSettings, Secret, TurnSettings, parse_port_range,
};

use crate::policy::PolicyConfig;

/// The configuration used when no file is given (also the reference for every default).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Default path of the operator's control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/relay/control.sock";

/// Most worker threads accepted (a typo guard, far above any machine's core count).
pub const MAX_WORKERS: usize = 1024;

/// Longest path a Unix socket address can hold (`sun_path` minus the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Which userspace data path backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// io_uring when the kernel permits it, the portable backend otherwise.
    #[default]
    Auto,
    /// io_uring only (start-up fails if it is unavailable).
    IoUring,
    /// recvmmsg/sendmmsg, works everywhere.
    Portable,
}

impl BackendChoice {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::IoUring => "io-uring",
            BackendChoice::Portable => "portable",
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic per interface; generic on veths.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode.
    Generic,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP addresses served (STUN).
    pub listen: Vec<SocketAddr>,
    /// Worker threads; 0 = one per online CPU.
    pub workers: usize,
    /// Userspace backend.
    pub backend: BackendChoice,
    /// Kernel fast path settings.
    pub xdp: XdpConfig,
    /// Path of the control socket.
    pub control_socket: PathBuf,
    /// Log filter (a level or a tracing filter directive).
    pub log_level: String,
    /// The TURN service (`[turn]`, `[turn.users]`, `[turn.auth]`).
    pub turn: TurnSettings,
    /// Peer allow/deny lists (`[policy]`).
    pub policy: PolicyConfig,
    /// Allocation quotas (`[quota]`).
    pub quota: QuotaSettings,
    /// The Prometheus endpoint (`[metrics]`).
    pub metrics: MetricsSettings,
    /// The SFU and its signaling server (`[sfu]`).
    pub sfu: SfuSettings,
}

/// The `[xdp]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpConfig {
    /// Whether the fast path is started at all.
    pub enabled: bool,
    /// Interfaces to attach to; empty = derive them from the listen addresses.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub mode: XdpModeChoice,
    /// Whether TURN is relayed in the kernel too (channel and peer rules installed in the
    /// XDP program's maps) when the fast path is attached and TURN is on.
    pub turn: bool,
    /// bpffs directory where the maps and the per-interface links are pinned
    /// (`xdp.pin_dir`), so that a restarted or upgraded daemon adopts them.
    pub pin_dir: PathBuf,
    /// Leave the pinned program and maps in place on exit (`xdp.persist`), so that the
    /// kernel keeps relaying while the daemon restarts; false = detach on exit.
    pub persist: bool,
    /// The interface the TURN fast path's FIB lookups go through (`xdp.fib_interface`;
    /// forwarding is enabled on it only; see `relay::xdp::fib`).
    pub fib_interface: String,
    /// Entries of each kernel TURN rule map (`xdp.turn_rules`), within
    /// [`crate::xdp::TURN_RULES_MIN`]..=[`relay_common::turn::MAX_MAP_ENTRIES`].
    pub turn_rules: u32,
    /// Serve TURN over UDP through AF_XDP sockets in the io_uring workers
    /// (`xdp.af_xdp`): what the kernel does not relay itself reaches userspace without
    /// the kernel's UDP sockets. See `relay::dataplane::xsk_path`.
    pub af_xdp: bool,
}

/// Values given on the command line; each set one replaces the file's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen` (replaces `server.listen` when non-empty).
    pub listen: Vec<SocketAddr>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--backend`.
    pub backend: Option<BackendChoice>,
    /// `--no-xdp`.
    pub no_xdp: bool,
    /// `--no-sfu`.
    pub no_sfu: bool,
    /// `--xdp-iface` (replaces `xdp.interfaces` when non-empty).
    pub xdp_interfaces: Vec<String>,
    /// `--xdp-mode`.
    pub xdp_mode: Option<XdpModeChoice>,
    /// `--control-socket`.
    pub control_socket: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
}

// ---- the file's shape (serde) ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    dataplane: DataplaneSection,
    #[serde(default)]
    xdp: XdpSection,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    turn: turn::TurnSection,
    #[serde(default)]
    policy: turn::PolicySection,
    #[serde(default)]
    quota: turn::QuotaSection,
    #[serde(default)]
    metrics: turn::MetricsSection,
    #[serde(default)]
    sfu: sfu::SfuSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    #[serde(default)]
    workers: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            workers: 0,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:3478".to_owned(), "[::1]:3478".to_owned()]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataplaneSection {
    #[serde(default)]
    backend: BackendChoice,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct XdpSection {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    mode: XdpModeChoice,
    #[serde(default = "default_true")]
    turn: bool,
    #[serde(default = "default_pin_dir")]
    pin_dir: PathBuf,
    #[serde(default = "default_true")]
    persist: bool,
    #[serde(default = "default_fib_interface")]
    fib_interface: String,
    #[serde(default = "default_turn_rules")]
    turn_rules: u32,
    #[serde(default)]
    af_xdp: bool,
}

fn default_turn_rules() -> u32 {
    relay_common::turn::MAX_MAP_ENTRIES
}

fn default_fib_interface() -> String {
    "lo".into()
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/relay")
}

impl Default for XdpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
            mode: XdpModeChoice::Auto,
            turn: true,
            pin_dir: default_pin_dir(),
            // The TURN state file (turn.state_file) brings the allocations back, so the
            // kernel keeps relaying through a restart and the rules stay managed.
            persist: true,
            fib_interface: default_fib_interface(),
            turn_rules: default_turn_rules(),
            af_xdp: false,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    #[serde(default = "default_socket")]
    socket: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            socket: default_socket(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    #[serde(default = "default_level")]
    level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}

impl Config {
    /// The embedded default configuration (STUN on 127.0.0.1:3478 and [::1]:3478).
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_TOML, "embedded default")
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| error::from_toml(&e, text, origin))?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            message,
        };
        let mut listen = Vec::with_capacity(file.server.listen.len());
        for (i, raw) in file.server.listen.iter().enumerate() {
            let addr: SocketAddr = raw.trim().parse().map_err(|_| {
                invalid(
                    format!("server.listen[{i}]"),
                    format!(
                        "{raw:?} is not a socket address (expected IP:PORT, \
                         e.g. \"127.0.0.1:3478\" or \"[::1]:3478\")"
                    ),
                )
            })?;
            listen.push(addr);
        }
        let (turn, policy, quota, metrics) =
            turn::build(file.turn, file.policy, file.quota, file.metrics)
                .map_err(|(key, message)| invalid(key, message))?;
        let sfu = sfu::build(file.sfu).map_err(|(key, message)| invalid(key, message))?;
        let config = Config {
            listen,
            workers: file.server.workers,
            backend: file.dataplane.backend,
            xdp: XdpConfig {
                enabled: file.xdp.enabled,
                interfaces: file.xdp.interfaces,
                mode: file.xdp.mode,
                turn: file.xdp.turn,
                pin_dir: file.xdp.pin_dir,
                persist: file.xdp.persist,
                fib_interface: file.xdp.fib_interface,
                turn_rules: file.xdp.turn_rules,
                af_xdp: file.xdp.af_xdp,
            },
            control_socket: file.control.socket,
            log_level: file.log.level,
            turn,
            policy,
            quota,
            metrics,
            sfu,
        };
        config
            .check()
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(config)
    }

    /// Applies command-line overrides and validates the result again.
    pub fn apply(mut self, o: &Overrides) -> Result<Config, ConfigError> {
        if !o.listen.is_empty() {
            self.listen = o.listen.clone();
        }
        if let Some(w) = o.workers {
            self.workers = w;
        }
        if let Some(b) = o.backend {
            self.backend = b;
        }
        if o.no_xdp {
            self.xdp.enabled = false;
        }
        if o.no_sfu {
            self.sfu.enabled = false;
        }
        if !o.xdp_interfaces.is_empty() {
            self.xdp.interfaces = o.xdp_interfaces.clone();
        }
        if let Some(m) = o.xdp_mode {
            self.xdp.mode = m;
        }
        if let Some(p) = &o.control_socket {
            self.control_socket = p.clone();
        }
        if let Some(l) = &o.log_level {
            self.log_level = l.clone();
        }
        if let Some(m) = o.metrics_listen {
            self.metrics.listen = Some(m);
        }
        self.check()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: "command line".to_owned(),
                key,
                message,
            })?;
        Ok(self)
    }

    /// The distinct UDP ports served, in listen order.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for a in &self.listen {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
            }
        }
        ports
    }

    /// Checks the invariants that do not depend on the text's shape.
    /// Returns the key and what is wrong with it.
    fn check(&self) -> Result<(), (String, String)> {
        if self.listen.is_empty() {
            return Err((
                "server.listen".into(),
                "is empty: give at least one address to serve, e.g. [\"0.0.0.0:3478\"]".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, a) in self.listen.iter().enumerate() {
            if !seen.insert(*a) {
                return Err((
                    format!("server.listen[{i}]"),
                    format!("\"{a}\" is listed twice"),
                ));
            }
            if a.port() == 0 && self.listen.len() > 1 {
                return Err((
                    format!("server.listen[{i}]"),
                    format!(
                        "\"{a}\" has port 0 (any free port), which is only allowed \
                         when it is the only listen address"
                    ),
                ));
            }
        }
        if self.workers > MAX_WORKERS {
            return Err((
                "server.workers".into(),
                format!(
                    "{} is more than {MAX_WORKERS}; use 0 for one per online CPU",
                    self.workers
                ),
            ));
        }
        let rules = crate::xdp::TURN_RULES_MIN..=relay_common::turn::MAX_MAP_ENTRIES;
        if !rules.contains(&self.xdp.turn_rules) {
            return Err((
                "xdp.turn_rules".into(),
                format!(
                    "{} is outside {}..={} (entries of each kernel TURN rule table; rules \
                     beyond it stay in userspace)",
                    self.xdp.turn_rules,
                    rules.start(),
                    rules.end()
                ),
            ));
        }
        for (i, name) in self.xdp.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\t', '\n', ':']) {
                return Err((
                    format!("xdp.interfaces[{i}]"),
                    format!(
                        "{name:?} is not an interface name (1 to 15 characters, \
                         no '/', ':' or spaces; see `ip link`)"
                    ),
                ));
            }
        }
        let sock = self.control_socket.as_os_str();
        if sock.is_empty() {
            return Err(("control.socket".into(), "is empty: give a path".into()));
        }
        if sock.len() > MAX_SOCKET_PATH {
            return Err((
                "control.socket".into(),
                format!(
                    "{:?} is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                    self.control_socket,
                    sock.len()
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err((
                "log.level".into(),
                format!(
                    "{:?} is not a log level or filter ({e}); use one of error, warn, \
                     info, debug, trace",
                    self.log_level
                ),
            ));
        }
        self.turn.check()?;
        turn::check_policy(&self.policy)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml")
            .expect_err("config must be rejected")
            .to_string()
    }

    #[test]
    fn embedded_default_serves_loopback_v4_and_v6() {
        let c = Config::embedded_default().expect("embedded default must parse");
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:3478".parse::<SocketAddr>().unwrap(),
                "[::1]:3478".parse().unwrap()
            ]
        );
        assert_eq!(c.workers, 0);
        assert_eq!(c.backend, BackendChoice::Auto);
        assert!(c.xdp.enabled);
        assert!(c.xdp.interfaces.is_empty());
        assert_eq!(c.xdp.mode, XdpModeChoice::Auto);
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.ports(), vec![3478]);
    }

    #[test]
    fn empty_file_equals_embedded_default() {
        let mut empty = Config::parse("", "empty").expect("empty file is valid");
        // The two keys a file leaves off and the embedded default turns on (local demo).
        assert!(!empty.sfu.enabled && !empty.sfu.demo_tokens);
        empty.sfu.enabled = true;
        empty.sfu.demo_tokens = true;
        assert_eq!(empty, Config::embedded_default().expect("default"));
    }

    #[test]
    fn turn_rule_table_size_is_configured_within_its_range() {
        let d = Config::embedded_default().expect("default");
        assert_eq!(d.xdp.turn_rules, relay_common::turn::MAX_MAP_ENTRIES);
        let c = Config::parse("[xdp]\nturn_rules = 16384\n", "t").expect("in range");
        assert_eq!(c.xdp.turn_rules, 16384);
        assert!(!d.xdp.af_xdp, "AF_XDP is opt-in");
        let c = Config::parse("[xdp]\naf_xdp = true\n", "t").expect("parses");
        assert!(c.xdp.af_xdp);
        for bad in [0, 1023, relay_common::turn::MAX_MAP_ENTRIES + 1] {
            let e = err(&format!("[xdp]\nturn_rules = {bad}\n"));
            assert!(
                e.contains("xdp.turn_rules") && e.contains("1024..=131072"),
                "{e}"
            );
        }
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
[server]
listen = ["0.0.0.0:3479"]
workers = 3
[dataplane]
backend = "portable"
[xdp]
enabled = false
interfaces = ["eth0", "veth-r"]
mode = "generic"
turn = false
[control]
socket = "/tmp/r.sock"
[log]
level = "relay=debug,info"
"#,
            "t",
        )
        .expect("valid");
        assert_eq!(
            c.listen,
            vec!["0.0.0.0:3479".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.workers, 3);
        assert_eq!(c.backend, BackendChoice::Portable);
        assert!(!c.xdp.enabled);
        assert_eq!(c.xdp.interfaces, vec!["eth0", "veth-r"]);
        assert_eq!(c.xdp.mode, XdpModeChoice::Generic);
        assert!(!c.xdp.turn);
        assert!(Config::embedded_default().expect("default").xdp.turn);
        assert_eq!(c.control_socket, PathBuf::from("/tmp/r.sock"));
        assert_eq!(c.log_level, "relay=debug,info");
    }

    #[test]
    fn bad_listen_names_index_and_value() {
        let e = err("[server]\nlisten = [\"127.0.0.1:3478\", \"1.2.3.4:99999\"]\n");
        assert!(
            e.contains("server.listen[1]: \"1.2.3.4:99999\" is not a socket address"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_path_line_and_known_keys() {
        let e = err("[server]\nworkers = 1\nlisten_on = []\n");
        assert!(e.contains("server.listen_on"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("listen") && e.contains("workers"), "{e}");
    }

    #[test]
    fn unknown_section_is_named() {
        let e = err("[sever]\nworkers = 1\n");
        assert!(e.contains("sever"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        assert!(e.contains("server"), "known sections listed: {e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = err("[server]\nworkers = \"two\"\n");
        assert!(e.contains("server.workers"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_backend_lists_choices() {
        let e = err("[dataplane]\nbackend = \"dpdk\"\n");
        assert!(e.contains("dataplane.backend"), "{e}");
        assert!(e.contains("io-uring") && e.contains("portable"), "{e}");
    }

    #[test]
    fn bad_xdp_mode_is_named() {
        let e = err("[xdp]\nmode = \"offload\"\n");
        assert!(e.contains("xdp.mode"), "{e}");
        assert!(e.contains("native") && e.contains("generic"), "{e}");
    }

    #[test]
    fn multi_line_array_error_names_key() {
        let e = err("[xdp]\ninterfaces = [\n  \"eth0\",\n  7,\n]\n");
        assert!(e.contains("xdp.interfaces"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn toml_syntax_error_has_line() {
        let e = err("[server]\nworkers = = 2\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn empty_listen_rejected() {
        let e = err("[server]\nlisten = []\n");
        assert!(e.contains("server.listen: is empty"), "{e}");
    }

    #[test]
    fn duplicate_listen_rejected() {
        let e = err("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n");
        assert!(e.contains("server.listen[1]") && e.contains("twice"), "{e}");
    }

    #[test]
    fn port_zero_only_alone() {
        assert!(Config::parse("[server]\nlisten = [\"127.0.0.1:0\"]\n", "t").is_ok());
        let e = err("[server]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\n");
        assert!(
            e.contains("server.listen[0]") && e.contains("port 0"),
            "{e}"
        );
    }

    #[test]
    fn too_many_workers_rejected() {
        let e = err("[server]\nworkers = 100000\n");
        assert!(e.contains("server.workers: 100000"), "{e}");
    }

    #[test]
    fn negative_workers_rejected() {
        let e = err("[server]\nworkers = -1\n");
        assert!(e.contains("server.workers"), "{e}");
    }

    #[test]
    fn bad_interface_name_rejected() {
        let e = err("[xdp]\ninterfaces = [\"eth0\", \"this-name-is-too-long\"]\n");
        assert!(e.contains("xdp.interfaces[1]"), "{e}");
    }

    #[test]
    fn bad_log_level_rejected() {
        let e = err("[log]\nlevel = \"loud!!=[\"\n");
        assert!(e.contains("log.level"), "{e}");
    }

    #[test]
    fn long_socket_path_rejected() {
        let long = "/tmp/".to_owned() + &"x".repeat(120);
        let e = err(&format!("[control]\nsocket = \"{long}\"\n"));
        assert!(e.contains("control.socket"), "{e}");
    }

    #[test]
    fn error_names_origin() {
        let e = err("[log]\nlevel = 3\n");
        assert!(e.starts_with("test.toml"), "{e}");
    }

    #[test]
    fn overrides_replace_file_values() {
        let c = Config::embedded_default()
            .expect("default")
            .apply(&Overrides {
                listen: vec!["127.0.0.1:4000".parse().unwrap()],
                workers: Some(1),
                backend: Some(BackendChoice::Portable),
                no_xdp: true,
                no_sfu: true,
                xdp_interfaces: vec!["veth0".into()],
                xdp_mode: Some(XdpModeChoice::Native),
                control_socket: Some("/tmp/c.sock".into()),
                log_level: Some("debug".into()),
                metrics_listen: Some("127.0.0.1:9000".parse().unwrap()),
            })
            .expect("valid overrides");
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:4000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.workers, 1);
        assert_eq!(c.backend, BackendChoice::Portable);
        assert!(!c.xdp.enabled);
        assert!(!c.sfu.enabled, "--no-sfu");
        assert_eq!(c.xdp.interfaces, vec!["veth0"]);
        assert_eq!(c.xdp.mode, XdpModeChoice::Native);
        assert_eq!(c.control_socket, PathBuf::from("/tmp/c.sock"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9000".parse().unwrap()));
    }

    fn write_tmp(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("relay-cfg-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn turn_defaults_are_safe() {
        let c = Config::embedded_default().unwrap();
        assert!(c.turn.enabled);
        assert_eq!(c.turn.realm, "relay.local");
        assert!(
            !c.turn.has_credentials(),
            "no credentials: every Allocate refused"
        );
        assert!(c.turn.listen_tcp.is_empty() && c.turn.listen_tls.is_empty());
        assert_eq!(c.turn.port_range, (49152, 65535));
        assert_eq!((c.turn.default_lifetime, c.turn.max_lifetime), (600, 3600));
        assert_eq!(c.turn.nonce_lifetime, 600);
        assert_eq!(c.turn.bandwidth_limit, 0);
        assert_eq!(c.policy, PolicyConfig::default());
        assert_eq!((c.quota.per_user, c.quota.total), (0, 0));
        assert_eq!(c.metrics.listen, None);
        let (v4, v6, notes) = c.turn.relay_addrs(&c.listen);
        assert_eq!(v4, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(v6, Some("::1".parse().unwrap()));
        assert!(notes.is_empty());
    }

    #[test]
    fn full_turn_file_parses() {
        let c = Config::parse(
            r#"
[turn]
realm = "example.org"
listen_tcp = ["0.0.0.0:3478"]
relay_ipv4 = "203.0.113.10"
relay_ipv6 = "2001:db8::10"
port_range = "40000-40100"
default_lifetime = 300
max_lifetime = 1200
max_permissions = 10
bandwidth_limit = 125000
allocation_byte_quota = 1000000
unauth_reply_allowance = 0
legacy_channel_range = true
[turn.users]
alice = "pw1"
"bob@example.org" = "pw2"
[turn.auth]
secrets = ["s1", "s2"]
nonce_lifetime = 120
[policy]
allow = ["10.0.0.0/8"]
deny = ["10.9.0.0/16"]
[quota]
per_user = 3
total = 1000
[metrics]
listen = "127.0.0.1:9641"
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.turn.realm, "example.org");
        assert_eq!(
            c.turn.listen_tcp,
            vec!["0.0.0.0:3478".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.turn.port_range, (40000, 40100));
        assert_eq!(c.turn.users.len(), 2);
        assert_eq!(c.turn.users["alice"].expose(), "pw1");
        assert_eq!(c.turn.secrets.len(), 2);
        assert_eq!(c.turn.nonce_lifetime, 120);
        assert_eq!(c.turn.max_permissions, 10);
        assert_eq!(c.turn.bandwidth_limit, 125_000);
        assert_eq!(c.turn.allocation_byte_quota, 1_000_000);
        assert_eq!(
            c.turn.unauth_reply_allowance, 0,
            "strict mode is expressible"
        );
        assert!(c.turn.legacy_channel_range);
        assert!(
            !Config::embedded_default()
                .unwrap()
                .turn
                .legacy_channel_range
        );
        assert_eq!(
            Config::embedded_default()
                .unwrap()
                .turn
                .unauth_reply_allowance,
            128,
            "the default leaves room for the compact 401 challenge"
        );
        assert_eq!(c.policy.deny, vec!["10.9.0.0/16"]);
        assert_eq!((c.quota.per_user, c.quota.total), (3, 1000));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9641".parse().unwrap()));
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("pw1") && !dbg.contains("s2\""),
            "secrets redacted: {dbg}"
        );
    }

    #[test]
    fn relay_addrs_from_unspecified_listen_need_config() {
        let c = Config::parse("[server]\nlisten = [\"0.0.0.0:3478\"]\n", "t").unwrap();
        let (v4, v6, notes) = c.turn.relay_addrs(&c.listen);
        assert_eq!((v4, v6), (None, None));
        assert!(notes[0].contains("turn.relay_ipv4"), "{notes:?}");
    }

    #[test]
    fn turn_validation_errors_name_the_key() {
        for (text, key, what) in [
            (
                "[turn]\nport_range = \"50000\"\n",
                "turn.port_range",
                "LOW-HIGH",
            ),
            (
                "[turn]\nport_range = \"60000-50000\"\n",
                "turn.port_range",
                "lower port first",
            ),
            (
                "[turn]\nport_range = \"0-100\"\n",
                "turn.port_range",
                "port 0",
            ),
            (
                "[turn]\nport_range = \"1-70000\"\n",
                "turn.port_range",
                "LOW-HIGH",
            ),
            (
                "[turn]\ndefault_lifetime = 0\n",
                "turn.default_lifetime",
                "above 0",
            ),
            ("[turn]\nmax_lifetime = 0\n", "turn.max_lifetime", "1..="),
            (
                "[turn]\ndefault_lifetime = 900\nmax_lifetime = 600\n",
                "turn.max_lifetime",
                "at least the default",
            ),
            ("[turn]\nrealm = \" \"\n", "turn.realm", "empty"),
            (
                "[turn.auth]\nnonce_lifetime = 0\n",
                "turn.auth.nonce_lifetime",
                "above 0",
            ),
            (
                "[turn.auth]\nsecrets = [\"a\", \"\"]\n",
                "turn.auth.secrets[1]",
                "empty",
            ),
            (
                "[turn.users]\n\"\" = \"pw\"\n",
                "turn.users",
                "name is empty",
            ),
            (
                "[turn.users]\nalice = \"\"\n",
                "turn.users.\"alice\"",
                "password is empty",
            ),
            (
                "[turn]\nlisten_tcp = [\"x\"]\n",
                "turn.listen_tcp[0]",
                "socket address",
            ),
            (
                "[turn]\nlisten_tcp = [\"0.0.0.0:1\"]\nlisten_tls = [\"0.0.0.0:1\"]\ntls_cert = \"/c\"\ntls_key = \"/k\"\n",
                "turn.listen_tls[0]",
                "already",
            ),
            ("[turn]\nrelay_ipv4 = \"::1\"\n", "turn.relay_ipv4", "IPv4"),
            (
                "[turn]\nrelay_ipv4 = \"0.0.0.0\"\n",
                "turn.relay_ipv4",
                "IPv4",
            ),
            (
                "[turn]\nrelay_ipv6 = \"10.0.0.1\"\n",
                "turn.relay_ipv6",
                "IPv6",
            ),
            (
                "[turn]\nlisten_tls = [\"0.0.0.0:5349\"]\n",
                "turn.tls_cert",
                "missing",
            ),
            (
                "[turn]\nlisten_tls = [\"0.0.0.0:5349\"]\ntls_cert = \"/nonexistent/c.pem\"\n",
                "turn.tls_key",
                "missing",
            ),
            (
                "[turn]\nlisten_tls = [\"0.0.0.0:5349\"]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
                "turn.tls_cert",
                "/nonexistent/c.pem: cannot read",
            ),
            (
                "[policy]\nallow = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n",
                "policy.allow[1]",
                "host bits",
            ),
            (
                "[policy]\ndeny = [\"bogus\"]\n",
                "policy.deny[0]",
                "not an IP",
            ),
            (
                "[metrics]\nlisten = \"localhost\"\n",
                "metrics.listen",
                "socket address",
            ),
            ("[quota]\nper_user = -1\n", "quota.per_user", ""),
            ("[turn]\nrealms = \"x\"\n", "turn.realms", ""),
            ("[turn.auth]\nsecret = \"x\"\n", "turn.auth.secret", ""),
        ] {
            let e = err(text);
            assert!(
                e.contains(&format!("{key}:")) || e.contains(&format!("{key} ")),
                "{text:?}: {e}"
            );
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn tls_files_are_parsed() {
        let ck = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).unwrap();
        let cert = write_tmp("cert.pem", &ck.cert.pem());
        let key = write_tmp("key.pem", &ck.signing_key.serialize_pem());
        let junk = write_tmp("junk.pem", "not pem at all\n");
        let tls = |c: &Path, k: &Path| {
            format!(
                "[turn]\nlisten_tls = [\"127.0.0.1:5349\"]\ntls_cert = {:?}\ntls_key = {:?}\n",
                c.display().to_string(),
                k.display().to_string()
            )
        };
        let c = Config::parse(&tls(&cert, &key), "t").expect("valid TLS files");
        assert_eq!(c.turn.tls_cert.as_deref(), Some(cert.as_path()));
        let e = err(&tls(&junk, &key));
        assert!(
            e.contains("turn.tls_cert")
                && e.contains("junk.pem")
                && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(&tls(&cert, &junk));
        assert!(
            e.contains("turn.tls_key")
                && e.contains("junk.pem")
                && e.contains("no PEM private key"),
            "{e}"
        );
        // A certificate given as the key is refused too.
        let e = err(&tls(&cert, &cert));
        assert!(e.contains("turn.tls_key"), "{e}");
        for p in [cert, key, junk] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn check_config_and_port_range_helper() {
        assert_eq!(parse_port_range(" 1000 - 2000 "), Ok((1000, 2000)));
        assert_eq!(parse_port_range("5-5"), Ok((5, 5)));
        assert!(parse_port_range("a-b").is_err());
        assert!(parse_port_range("-5").is_err());
    }

    #[test]
    fn empty_overrides_change_nothing() {
        let d = Config::embedded_default().expect("default");
        assert_eq!(d.clone().apply(&Overrides::default()).expect("ok"), d);
    }

    #[test]
    fn invalid_override_is_reported() {
        let e = Config::embedded_default()
            .expect("default")
            .apply(&Overrides {
                log_level: Some("[[".into()),
                ..Overrides::default()
            })
            .expect_err("bad level")
            .to_string();
        assert!(e.contains("command line") && e.contains("log.level"), "{e}");
    }

    #[test]
    fn turn_state_file_defaults_on_and_empty_turns_it_off() {
        let c = Config::parse("", "empty").expect("default");
        assert_eq!(
            c.turn.state_file,
            Some(PathBuf::from(turn::DEFAULT_STATE_FILE))
        );
        assert!(
            c.xdp.persist,
            "persist is on by default now that state is restored"
        );
        let off = Config::parse("[turn]\nstate_file = \"\"\n", "off").expect("off");
        assert_eq!(off.turn.state_file, None);
        let set =
            Config::parse("[turn]\nstate_file = \"/var/lib/relay/s.json\"\n", "set").expect("set");
        assert_eq!(
            set.turn.state_file,
            Some(PathBuf::from("/var/lib/relay/s.json"))
        );
    }
}
