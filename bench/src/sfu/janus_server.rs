//! Janus (Debian's `janus` package, 1.1.2) as the SFU bench runs it beside our relay:
//! installed on demand with apt-get, configured from a temporary directory (ICE-lite so
//! that the load client's controlling checks work unchanged, ICE restricted to the
//! bench's veth, no STUN, a fixed RTP port range; only the VideoRoom plugin and the
//! WebSockets transport loaded), started in the relay's namespace pinned to the same CPU
//! with taskset, in the foreground, logging to a file that is shown when it fails; killed
//! and cleaned up when dropped.
//!
//! Exists so that the comparison runs Janus under the same placement and load as the
//! relay (issue 5, point 7).

use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use relay_e2e::{Netns, TempDir};

/// Where Debian installs Janus's modules.
const MODULES: &str = "/usr/lib/x86_64-linux-gnu/janus";
/// The WebSocket transport's port.
pub const WS_PORT: u16 = 8188;
/// Janus's RTP/RTCP port range (one port per PeerConnection with bundle).
const RTP_PORTS: &str = "20000-40000";

/// Finds `janus`, installing Debian's package when it is missing.
pub fn ensure_installed() -> Result<PathBuf> {
    let found = |p: &str| Path::new(p).is_file().then(|| PathBuf::from(p));
    if let Some(p) = found("/usr/bin/janus") {
        return Ok(p);
    }
    eprintln!("   janus not found: apt-get install -y janus");
    let st = Command::new("apt-get")
        .args(["install", "-y", "janus"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get")?;
    if !st.success() {
        bail!("apt-get install -y janus failed ({st})");
    }
    found("/usr/bin/janus").context("janus is still missing after apt-get install")
}

/// The contents of `janus.jcfg` for a Janus whose modules, configuration and logs live
/// in `dir`, listening on `ip` (the interface `iface`).
pub fn janus_jcfg(dir: &Path, iface: &str) -> String {
    let d = dir.display();
    // Janus's log level (4 = info); SFU_BENCH_JANUS_DEBUG=7 for a diagnosis.
    let level: u8 = std::env::var("SFU_BENCH_JANUS_DEBUG")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|l| *l <= 7)
        .unwrap_or(4);
    let nice = level == 7;
    format!(
        r#"general: {{
	configs_folder = "{d}"
	plugins_folder = "{d}/plugins"
	transports_folder = "{d}/transports"
	events_folder = "{d}/events"
	loggers_folder = "{d}/loggers"
	debug_level = {level}
	debug_colors = false
	session_timeout = 60
	server_name = "relay-sfu-bench"
}}
certificates: {{
}}
media: {{
	ipv6 = false
	rtp_port_range = "{RTP_PORTS}"
}}
nat: {{
	nice_debug = {nice}
	ice_lite = true
	ice_tcp = false
	full_trickle = false
	ignore_mdns = true
	ice_enforce_list = "{iface}"
}}
plugins: {{
}}
transports: {{
}}
events: {{
	broadcast = false
}}
"#
    )
}

/// The contents of `janus.transport.websockets.jcfg`: plain ws on `ip`, no admin API.
pub fn websockets_jcfg(ip: Ipv4Addr) -> String {
    format!(
        r#"general: {{
	json = "compact"
	ws = true
	ws_port = {WS_PORT}
	ws_ip = "{ip}"
	wss = false
}}
admin: {{
	admin_ws = false
	admin_wss = false
}}
"#
    )
}

/// A running Janus.
pub struct JanusServer {
    child: Child,
    log: PathBuf,
    _files: TempDir,
}

impl JanusServer {
    /// Writes the configuration and starts `bin` in `ns` pinned to `cpu`, ICE on `iface`
    /// (address `ip`).
    pub fn start(
        bin: &Path,
        ns: &Netns,
        iface: &str,
        ip: Ipv4Addr,
        cpu: usize,
    ) -> Result<JanusServer> {
        let files = TempDir::new("janus-sfu-bench")?;
        let dir = files.path().to_path_buf();
        for sub in ["plugins", "transports", "events", "loggers"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Only the VideoRoom plugin and the WebSockets transport.
        for (sub, lib) in [
            ("plugins", "libjanus_videoroom.so"),
            ("transports", "libjanus_websockets.so"),
        ] {
            let src = Path::new(MODULES).join(sub).join(lib);
            if !src.exists() {
                bail!(
                    "{} is missing (is Debian's janus installed?)",
                    src.display()
                );
            }
            symlink(&src, dir.join(sub).join(lib))?;
        }
        files.write("janus.jcfg", &janus_jcfg(&dir, iface))?;
        files.write("janus.transport.websockets.jcfg", &websockets_jcfg(ip))?;
        files.write(
            "janus.plugin.videoroom.jcfg",
            "general: {\n\tstring_ids = false\n}\n",
        )?;
        let log = dir.join("janus.log");
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("taskset");
        // If the bench dies without dropping us (a signal), Janus gets SIGTERM too: the
        // death signal survives the execs of taskset and ip into janus.
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["-c", &cpu.to_string(), "ip", "netns", "exec", ns.name()])
            .arg(bin)
            .arg("-F")
            .arg(&dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("--disable-colors")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("start janus")?;
        Ok(JanusServer {
            child,
            log,
            _files: files,
        })
    }

    /// The Janus process id (taskset and `ip netns exec` exec into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of its log that contain `needle` (at most `max`).
    pub fn log_grep(&self, needle: &str, max: usize) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .take(max)
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for JanusServer {
    fn drop(&mut self) {
        // SIGTERM first (Janus shuts down cleanly on it); never pid 0 (the group).
        if let Ok(pid) = i32::try_from(self.child.id())
            && pid > 0
        {
            // SAFETY: kill has no memory preconditions; the pid is our own child's, not
            // yet reaped (we wait for it below), so it cannot name another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_lite_restricted_and_local() {
        let j = janus_jcfg(Path::new("/tmp/x"), "veth-r");
        assert!(j.contains("ice_lite = true"));
        assert!(j.contains("ice_enforce_list = \"veth-r\""));
        assert!(j.contains("plugins_folder = \"/tmp/x/plugins\""));
        assert!(!j.contains("stun_server"));
        assert!(j.contains("rtp_port_range = \"20000-40000\""));
        let w = websockets_jcfg(Ipv4Addr::new(10, 0, 0, 1));
        assert!(w.contains("ws_ip = \"10.0.0.1\""));
        assert!(w.contains("ws_port = 8188"));
        assert!(w.contains("admin_ws = false"));
    }
}
