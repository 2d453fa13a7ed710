//! Helpers for end-to-end tests and benches that run the real `relay` binary in network
//! namespaces this suite creates itself.
//!
//! Everything here is a guard: a namespace ([`Netns`]) is deleted, and the processes in it
//! killed, when it is dropped; a daemon ([`Daemon`]) gets SIGTERM then SIGKILL; an XDP
//! program attached for a test ([`XdpPass`]) is detached. Names carry the test process's
//! pid and a counter so tests run in parallel, and leftovers of dead runs of this suite
//! (same prefix, pid no longer alive) are removed on first use.

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex, Once,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

/// Prefix of every namespace this suite creates: `<prefix>-<pid>-<n>-<tag>`.
pub const NS_PREFIX: &str = "rlt";

/// Whether privileged tests can run. Not root: with `RELAY_REQUIRE_PRIVILEGED=1` this
/// panics (the test fails); otherwise it prints "skipped: needs root" and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("RELAY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("{test}: needs root (network namespaces, XDP) and RELAY_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("{test}: skipped: needs root");
    false
}

/// Runs a command, failing with its stderr when it does not succeed.
pub fn sh(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("could not run {program} (is it installed? `cargo xtask setup`)")
    })?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Removes what runs that ended without cleaning up (crashed, or killed before
/// [`clean_up_on_signal`] existed) left with `prefix`: namespaces `<prefix>-<pid>-…`,
/// state files `relay-test-state-<prefix>-<pid>-…` and pin directories
/// `relay-test-<prefix>-<pid>-…` whose pid is not alive ([`remove_leftovers_of`]).
pub fn cleanup_leftovers(prefix: &str) {
    let mut names: Vec<String> = Vec::new();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        names.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned)),
        );
    }
    for (dir, strip) in [
        (std::env::temp_dir(), "relay-test-state-"),
        (PathBuf::from("/sys/fs/bpf"), "relay-test-"),
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            names.extend(entries.flatten().filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(strip).map(str::to_owned)
            }));
        }
    }
    let mut dead: Vec<i32> = names
        .iter()
        .filter_map(|name| {
            let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
            rest.split('-').next()?.parse::<i32>().ok()
        })
        .filter(|&pid| !pid_alive(pid))
        .collect();
    dead.sort_unstable();
    dead.dedup();
    for pid in dead {
        let n = remove_leftovers_of(pid as u32);
        eprintln!("removed {n} leftovers of the ended run {pid} ({prefix})");
    }
}

/// What process `pid` made and may have left behind: its namespaces
/// (`<prefix>-<pid>-<n>-<tag>`, every process in them killed first), its daemons' bpffs
/// pin directories (`/sys/fs/bpf/relay-test-<namespace>`), its temporary files and
/// directories (`<tmp>/relay-…-<pid>-…` and `janus-…`: [`TempDir`]s and the daemons'
/// state files) and the daemons' control sockets (`<tmp>/<namespace>.sock`). Returns how
/// many things it removed.
pub fn remove_leftovers_of(pid: u32) -> usize {
    let pid_s = pid.to_string();
    // The pid follows a word in every name made here (`…-rlx-<pid>-<n>-…`,
    // `relay-bench-turn-xdp-<pid>-<n>`); a part after a number is a counter, not a pid.
    let mine = |name: &str| {
        let parts: Vec<&str> = name.split('-').collect();
        parts
            .windows(2)
            .any(|w| w[1] == pid_s && w[0].parse::<u64>().is_err())
    };
    let mut removed = 0;
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            // `<prefix>-<pid>-…`: the pid is the second field.
            if name.split('-').nth(1) == Some(pid_s.as_str()) {
                kill_all_in(name);
                if Command::new("ip")
                    .args(["netns", "del", name])
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    removed += 1;
                }
            }
        }
    }
    for (dir, prefixes) in [
        (PathBuf::from("/sys/fs/bpf"), &["relay-test-"][..]),
        (std::env::temp_dir(), &["relay-", "janus-"][..]),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Control sockets are `<namespace>.sock`.
            let socket = name.ends_with(".sock") && name.split('-').nth(1) == Some(&pid_s);
            let ours = prefixes.iter().any(|p| name.starts_with(p)) && mine(&name);
            if !ours && !socket {
                continue;
            }
            let path = entry.path();
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// The write end of [`clean_up_on_signal`]'s pipe (-1 before it is set up).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Set when a signal's clean-up has begun ([`await_signal_cleanup`]).
static SIGNAL_CLEANUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// If a signal's clean-up is under way, waits for it: it ends the process when done (with
/// 128 + the signal). Call before returning from `main`, whose work fails once the
/// clean-up deletes its namespaces; returning would end the process half-cleaned.
/// Bounded: after 60 s it returns.
pub fn await_signal_cleanup() {
    if SIGNAL_CLEANUP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_secs(60));
        eprintln!("warning: the signal clean-up did not finish within 60 s");
    }
}

/// The signal handler: passes the signal number to the clean-up thread through the pipe
/// (`write` is async-signal-safe; nothing else is done here).
extern "C" fn on_signal(sig: libc::c_int) {
    // Set here, not in the clean-up thread, so that `main` cannot return in between.
    SIGNAL_CLEANUP.store(true, Ordering::SeqCst);
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: `b` is a valid one-byte buffer; a failed write only loses the clean-up.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// Makes SIGINT, SIGTERM and SIGHUP clean up before the process ends: Drop (which deletes
/// namespaces, stops daemons and removes pins) does not run when a signal kills a
/// process, and an interrupted bench would leave its daemons running in namespaces nobody
/// deletes. A handler (whichever thread the signal lands on) wakes a thread of its own,
/// which runs [`remove_leftovers_of`] for this process and exits with 128 + the signal.
/// Children get default dispositions back at exec.
pub fn clean_up_on_signal() -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    ensure!(rc == 0, "pipe2: {}", std::io::Error::last_os_error());
    let [read_fd, write_fd] = fds;
    SIGNAL_PIPE.store(write_fd, Ordering::Relaxed);
    thread::Builder::new()
        .name("signal-cleanup".into())
        .spawn(move || {
            let mut b = 0u8;
            // SAFETY: `b` is a valid one-byte buffer; `read_fd` is the pipe's read end,
            // owned by this thread.
            let n = unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) };
            if n != 1 {
                return;
            }
            let sig = i32::from(b);
            eprintln!("signal {sig}: removing this run's namespaces, daemons, pins and files");
            let removed = remove_leftovers_of(std::process::id());
            eprintln!("removed {removed} leftovers");
            std::process::exit(128 + sig);
        })
        .context("spawn the signal clean-up thread")?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: sigaction is plain data, fully initialised here; `on_signal` only calls
        // async-signal-safe functions.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        ensure!(
            rc == 0,
            "sigaction({sig}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn kill_all_in(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: sending a signal to a pid has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEANUP: Once = Once::new();

/// A network namespace, deleted (with every process in it killed) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>-<tag>` with loopback up.
    pub fn new(prefix: &str, tag: &str) -> Result<Netns> {
        CLEANUP.call_once(|| cleanup_leftovers(prefix));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}-{tag}", std::process::id());
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs
    /// the program, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Sockets created there
    /// stay in the namespace when used from other threads.
    pub fn enter<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        thread::spawn(move || {
            // SAFETY: setns with a valid namespace fd affects only this thread's network
            // namespace; the fd outlives the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside namespace panicked"))?
    }

    /// A UDP socket bound to `addr` inside this namespace, with a read timeout.
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.enter(move || {
            let s = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(s)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        if let Err(e) = sh("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: could not delete namespace {}: {e:#}", self.name);
        }
        remove_namespace_files(&self.name);
    }
}

/// Removes what [`Daemon::start`] made for daemons in namespace `ns` and a daemon killed
/// by a signal cannot remove itself: its state file, control socket and pin directory.
fn remove_namespace_files(ns: &str) -> usize {
    let tmp = std::env::temp_dir();
    let files = [
        tmp.join(format!("relay-test-state-{ns}.json")),
        tmp.join(format!("{ns}.sock")),
    ];
    let mut removed = 0;
    for f in files {
        removed += usize::from(std::fs::remove_file(f).is_ok());
    }
    let pins = PathBuf::from(format!("/sys/fs/bpf/relay-test-{ns}"));
    removed += usize::from(pins.is_dir() && std::fs::remove_dir_all(&pins).is_ok());
    removed
}

/// Two namespaces joined by a veth pair: `veth-r` in the relay namespace, `veth-c` in
/// the client namespace, with addresses in 10.200.X.0/24 and fd00:200:X::/64 only there.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: the XDP guard before the namespaces.
    client_pass: Option<XdpPass>,
    /// The daemon's namespace.
    pub relay: Netns,
    /// The clients' namespace.
    pub client: Netns,
    /// Address of `veth-r`.
    pub relay_v4: Ipv4Addr,
    /// Address of `veth-c`.
    pub client_v4: Ipv4Addr,
    /// Address of `veth-r`.
    pub relay_v6: Ipv6Addr,
    /// Address of `veth-c`.
    pub client_v6: Ipv6Addr,
}

/// Name of the relay-side veth.
pub const RELAY_IF: &str = "veth-r";
/// Name of the client-side veth.
pub const CLIENT_IF: &str = "veth-c";

impl Topology {
    /// Creates the two namespaces and the veth pair, and prepares the client side to
    /// receive frames the relay side sends with XDP_TX (see [`XdpPass`]) and to send
    /// UDP with a complete checksum.
    pub fn new(prefix: &str) -> Result<Topology> {
        let relay = Netns::new(prefix, "r")?;
        let client = Netns::new(prefix, "c")?;
        let x = (COUNTER.load(Ordering::Relaxed) % 250) as u8;
        let relay_v4 = Ipv4Addr::new(10, 200, x, 1);
        let client_v4 = Ipv4Addr::new(10, 200, x, 2);
        let relay_v6 = Ipv6Addr::new(0xfd00, 0x200, x.into(), 0, 0, 0, 0, 1);
        let client_v6 = Ipv6Addr::new(0xfd00, 0x200, x.into(), 0, 0, 0, 0, 2);
        relay.ip(&[
            "link",
            "add",
            RELAY_IF,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            client.name(),
        ])?;
        for (ns, dev, v4, v6) in [
            (&relay, RELAY_IF, relay_v4, relay_v6),
            (&client, CLIENT_IF, client_v4, client_v6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            // nodad: usable at once, no duplicate address detection delay.
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        // Locally generated UDP over a veth leaves the checksum to "hardware"
        // (CHECKSUM_PARTIAL: only the pseudo-header sum is in the field). The XDP program
        // verifies UDP checksums and would pass such frames up as bad, so the client side
        // computes full checksums in software.
        sh(
            "ip",
            &[
                "netns",
                "exec",
                client.name(),
                "ethtool",
                "-K",
                CLIENT_IF,
                "tx",
                "off",
            ],
        )?;
        let mut topo = Topology {
            client_pass: None,
            relay,
            client,
            relay_v4,
            client_v4,
            relay_v6,
            client_v6,
        };
        // A veth only receives frames its peer sends with XDP_TX when it has an XDP
        // program itself (enabling GRO was tried: not enough on Linux 6.18).
        topo.client_pass = Some(XdpPass::attach(&topo.client, CLIENT_IF)?);
        Ok(topo)
    }

    /// The relay side's address of the given family.
    pub fn relay_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.relay_v6.into()
        } else {
            self.relay_v4.into()
        }
    }

    /// The client side's address of the given family.
    pub fn client_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.client_v6.into()
        } else {
            self.client_v4.into()
        }
    }
}

/// The name of the trivial XDP_PASS program in the relay's eBPF object.
pub use relay_common::names::XDP_PASS_PROGRAM;

/// The relay's `relay_xdp_pass` program attached in native mode to an interface inside a
/// namespace; detached when dropped. A thread holds the loaded object (aya's handle is
/// not moved across threads).
#[derive(Debug)]
pub struct XdpPass {
    stop: Option<mpsc::Sender<()>>,
    holder: Option<thread::JoinHandle<()>>,
}

impl XdpPass {
    /// Loads the relay's embedded eBPF object and attaches [`XDP_PASS_PROGRAM`] to `iface`
    /// in `ns` in native (driver) mode.
    pub fn attach(ns: &Netns, iface: &str) -> Result<XdpPass> {
        let path = format!("/run/netns/{}", ns.name());
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        let iface = iface.to_owned();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            let loaded = (|| -> Result<aya::Ebpf> {
                // SAFETY: see Netns::enter.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                ensure!(
                    !relay::xdp::EBPF_OBJECT.is_empty(),
                    "the relay was built without its eBPF object (RELAY_SKIP_EBPF=1)"
                );
                let mut ebpf =
                    aya::Ebpf::load(relay::xdp::EBPF_OBJECT).context("load the eBPF object")?;
                let prog: &mut aya::programs::Xdp = ebpf
                    .program_mut(XDP_PASS_PROGRAM)
                    .with_context(|| {
                        format!("the eBPF object has no program named {XDP_PASS_PROGRAM}")
                    })?
                    .try_into()
                    .context("not an XDP program")?;
                prog.load().context("load relay_xdp_pass")?;
                prog.attach(&iface, aya::programs::XdpMode::Driver)
                    .with_context(|| format!("attach {XDP_PASS_PROGRAM} to {iface} (native)"))?;
                Ok(ebpf)
            })();
            match loaded {
                Ok(ebpf) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.recv();
                    drop(ebpf);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let result = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("attaching the XDP pass program timed out")?;
        let guard = XdpPass {
            stop: Some(stop_tx),
            holder: Some(holder),
        };
        result.map(|()| guard)
    }
}

impl Drop for XdpPass {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.holder.take() {
            let _ = h.join();
        }
    }
}

/// Path of the `relay` binary: `RELAY_BIN`, else `<target>/debug/relay` of this workspace.
pub fn relay_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RELAY_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.exists(), "RELAY_BIN={} does not exist", p.display());
        return Ok(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let p = target.join("debug/relay");
    ensure!(
        p.exists(),
        "no relay binary at {}: build it with `cargo build -p relay` (or run `cargo xtask test`), or set RELAY_BIN",
        p.display()
    );
    Ok(p)
}

#[derive(Default)]
struct LogState {
    lines: VecDeque<String>,
    ready: bool,
    closed: usize,
}

type Log = Arc<(Mutex<LogState>, Condvar)>;

/// The `relay` daemon (`relay run ...`) running inside a namespace; SIGTERM then SIGKILL
/// on drop.
pub struct Daemon {
    child: Option<Child>,
    log: Log,
    control_socket: PathBuf,
    ns_name: String,
    bin: PathBuf,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("ns", &self.ns_name)
            .field("control_socket", &self.control_socket)
            .finish()
    }
}

/// How long a daemon gets to print `relay ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Daemon {
    /// Starts `relay run <args> --control-socket <unique path>` in `ns` and waits (bounded)
    /// for the log line containing `relay ready`.
    pub fn start(ns: &Netns, args: &[&str]) -> Result<Daemon> {
        Self::start_with(ns, &relay_bin()?, None, args)
    }

    /// Like [`Daemon::start`] with an explicit binary and optional CPU list (taskset).
    pub fn start_with(
        ns: &Netns,
        bin: &std::path::Path,
        cpus: Option<&str>,
        args: &[&str],
    ) -> Result<Daemon> {
        let control_socket = std::env::temp_dir().join(format!("{}.sock", ns.name()));
        let _ = std::fs::remove_file(&control_socket);
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c, "ip", "netns", "exec", ns.name()])
                    .arg(bin);
                cmd
            }
            None => ns.command(bin),
        };
        cmd.arg("run").args(args);
        // A test daemon pins in its own bpffs directory (bpffs is shared by all
        // namespaces, interface names are not) and detaches on exit, unless the test
        // chooses its pin directory itself (restart tests).
        if !args.contains(&"--xdp-pin-dir") {
            cmd.arg("--xdp-pin-dir")
                .arg(format!("/sys/fs/bpf/relay-test-{}", ns.name()))
                .arg("--xdp-no-persist");
        }
        // A test daemon keeps its TURN state file per namespace, fresh at each start,
        // unless the test chooses it (restart tests).
        if !args.contains(&"--turn-state-file") {
            let state = std::env::temp_dir().join(format!("relay-test-state-{}.json", ns.name()));
            let _ = std::fs::remove_file(&state);
            cmd.arg("--turn-state-file").arg(state);
        }
        cmd.arg("--control-socket")
            .arg(&control_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let log: Log = Arc::default();
        let tag = format!("[relay {}]", ns.name());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            let tag = tag.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{tag} {line}");
                    let (m, cv) = &*log;
                    let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
                    if line.contains("relay ready") {
                        st.ready = true;
                    }
                    st.lines.push_back(line);
                    if st.lines.len() > 2000 {
                        st.lines.pop_front();
                    }
                    cv.notify_all();
                }
                let (m, cv) = &*log;
                m.lock().unwrap_or_else(|e| e.into_inner()).closed += 1;
                cv.notify_all();
            });
        }
        let mut daemon = Daemon {
            child: Some(child),
            log,
            control_socket,
            ns_name: ns.name().to_owned(),
            bin: bin.to_owned(),
        };
        daemon.wait_ready(READY_TIMEOUT)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.ready {
                return Ok(());
            }
            if st.closed == 2 {
                drop(st);
                let status = self.child.as_mut().and_then(|c| c.wait().ok());
                bail!(
                    "relay exited before `relay ready` ({status:?}); its log:\n{}",
                    self.log_text()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                bail!(
                    "relay did not print `relay ready` within {timeout:?}; its log:\n{}",
                    self.log_text()
                );
            }
            st = cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything the daemon logged so far (last 2000 lines).
    pub fn log_text(&self) -> String {
        let (m, _) = &*self.log;
        let st = m.lock().unwrap_or_else(|e| e.into_inner());
        st.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The control socket the daemon was started with.
    pub fn control_socket(&self) -> &std::path::Path {
        &self.control_socket
    }

    /// `relay stats --json` run in the daemon's namespace, parsed.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name])
            .arg(&self.bin)
            .arg("stats")
            .arg("--control-socket")
            .arg(&self.control_socket)
            .arg("--json")
            .output()
            .context("run relay stats")?;
        ensure!(
            out.status.success(),
            "relay stats failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "relay stats --json printed invalid JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        terminate(&mut child, timeout)
    }

    /// Sends SIGTERM and panics unless the daemon exits with status 0 within 10 s: the
    /// clean shutdown every test expects at its end.
    pub fn stop_cleanly(self) {
        match self.stop(Duration::from_secs(10)) {
            Ok(status) => assert!(status.success(), "relay exited with {status}"),
            Err(e) => panic!("stop the relay: {e:#}"),
        }
    }
}

/// SIGTERM, wait up to `timeout`, then SIGKILL.
fn terminate(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait()?;
    bail!("process {pid} did not exit within {timeout:?} of SIGTERM; killed ({status})")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child, Duration::from_secs(5))
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Any process started in a namespace, killed (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
}

impl Process {
    /// Wraps a spawned child.
    pub fn new(child: Child) -> Process {
        Process { child: Some(child) }
    }

    /// Sends SIGTERM and waits (bounded).
    pub fn stop(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        terminate(&mut child, timeout)
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(3));
        }
    }
}

/// A minimal STUN Binding request: 20-byte header, the given transaction id, no attributes.
pub fn binding_request(txid: [u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    m[8..20].copy_from_slice(&txid);
    m
}

/// Three namespaces for TURN: `client` ↔ `relay` ↔ `peer`, each side on its own veth
/// pair. The client side is 10.201.X.0/24 (+ fd00:201:X::/64), the peer side
/// 10.202.X.0/24 (+ fd00:202:X::/64), only inside the namespaces. The relay namespace
/// does not forward (a new namespace's default), so client and peer reach each other
/// only through the TURN server.
#[derive(Debug)]
pub struct TurnTopology {
    /// The TURN server's namespace (two veths: `vc` to the client, `vp` to the peer).
    pub relay: Netns,
    /// The TURN clients' namespace (`eth0`).
    pub client: Netns,
    /// The peers' namespace (`eth0`).
    pub peer: Netns,
    /// The relay's address on the client side (where clients connect).
    pub relay_client_v4: Ipv4Addr,
    /// The client's address.
    pub client_v4: Ipv4Addr,
    /// The relay's address on the peer side (relayed transport addresses live here).
    pub relay_peer_v4: Ipv4Addr,
    /// The peer's address.
    pub peer_v4: Ipv4Addr,
    /// The relay's IPv6 address on the client side.
    pub relay_client_v6: Ipv6Addr,
    /// The client's IPv6 address.
    pub client_v6: Ipv6Addr,
    /// The relay's IPv6 address on the peer side.
    pub relay_peer_v6: Ipv6Addr,
    /// The peer's IPv6 address.
    pub peer_v6: Ipv6Addr,
}

/// The CIDR of every peer-side address [`TurnTopology`] hands out (for a relay's allow list).
pub const TURN_PEER_NET_V4: &str = "10.202.0.0/16";
/// The IPv6 counterpart of [`TURN_PEER_NET_V4`].
pub const TURN_PEER_NET_V6: &str = "fd00:202::/32";

impl TurnTopology {
    /// Creates the three namespaces and the two veth pairs.
    pub fn new(prefix: &str) -> Result<TurnTopology> {
        let relay = Netns::new(prefix, "r")?;
        let client = Netns::new(prefix, "c")?;
        let peer = Netns::new(prefix, "p")?;
        let x = (COUNTER.load(Ordering::Relaxed) % 250) as u8;
        let v4 = |net: u8, host: u8| Ipv4Addr::new(10, net, x, host);
        let v6 = |net: u16, host: u16| Ipv6Addr::new(0xfd00, net, x.into(), 0, 0, 0, 0, host);
        let topo = TurnTopology {
            relay_client_v4: v4(201, 1),
            client_v4: v4(201, 2),
            relay_peer_v4: v4(202, 1),
            peer_v4: v4(202, 2),
            relay_client_v6: v6(0x201, 1),
            client_v6: v6(0x201, 2),
            relay_peer_v6: v6(0x202, 1),
            peer_v6: v6(0x202, 2),
            relay,
            client,
            peer,
        };
        for (other, relay_dev, (rv4, rv6), (ov4, ov6)) in [
            (
                &topo.client,
                "vc",
                (topo.relay_client_v4, topo.relay_client_v6),
                (topo.client_v4, topo.client_v6),
            ),
            (
                &topo.peer,
                "vp",
                (topo.relay_peer_v4, topo.relay_peer_v6),
                (topo.peer_v4, topo.peer_v6),
            ),
        ] {
            topo.relay.ip(&[
                "link",
                "add",
                relay_dev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                other.name(),
            ])?;
            for (ns, dev, a4, a6) in [
                (&topo.relay, relay_dev, rv4, rv6),
                (other, "eth0", ov4, ov6),
            ] {
                ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", dev])?;
                ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"])?;
                ns.ip(&["link", "set", dev, "up"])?;
            }
        }
        Ok(topo)
    }
}

/// What a bounded run of a command produced.
#[derive(Debug)]
pub struct BoundedOutput {
    /// The exit status; `None` when it was killed at the time limit.
    pub status: Option<ExitStatus>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl BoundedOutput {
    /// Whether it exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Standard output then standard error.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with piped output, killing it (SIGKILL) when it has not exited within
/// `limit`. The command must exec the program (as `ip netns exec` does) for the kill to
/// reach it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<BoundedOutput> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|s| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
    .collect();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut texts = readers.into_iter().map(|h| h.join().unwrap_or_default());
    Ok(BoundedOutput {
        status,
        stdout: texts.next().unwrap_or_default(),
        stderr: texts.next().unwrap_or_default(),
    })
}

/// The totals `turnutils_uclient` prints at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UclientTotals {
    /// `tot_send_msgs`: messages the clients sent to the peer through the relay.
    pub sent: u64,
    /// `tot_recv_msgs`: messages that came back (the peer echoes).
    pub received: u64,
    /// `Total lost packets N`.
    pub lost: u64,
    /// `total send dropped N`.
    pub send_dropped: u64,
    /// The longest round trip, in whole ms (`Average round trip delay …, max = N ms`);
    /// 0 when the line is missing.
    pub rtt_max_ms: u64,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.trim_start_matches([' ', '=', '~']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl UclientTotals {
    /// Parses the final report of `turnutils_uclient` (coturn 4.6):
    ///
    /// ```text
    /// 5: : start_mclient: tot_send_msgs=200, tot_recv_msgs=200
    /// 5: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
    /// ```
    ///
    /// The progress lines also carry `tot_send_msgs` (with `msz=`): only the final one,
    /// without `msz=`, counts. `None` when either line is missing (the run did not finish).
    pub fn parse(output: &str) -> Option<UclientTotals> {
        let mut t = UclientTotals::default();
        let (mut counts, mut losses) = (false, false);
        for line in output.lines() {
            if line.contains("tot_send_msgs=") && !line.contains("msz=") {
                t.sent = number_after(line, "tot_send_msgs")?;
                t.received = number_after(line, "tot_recv_msgs")?;
                counts = true;
            }
            if line.contains("Total lost packets") {
                t.lost = number_after(line, "Total lost packets")?;
                t.send_dropped = number_after(line, "total send dropped")?;
                losses = true;
            }
            if line.contains("Average round trip delay") {
                t.rtt_max_ms = number_after(line, "max").unwrap_or(0);
            }
        }
        (counts && losses).then_some(t)
    }
}

/// A directory for a test's files (configs, certificates), removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Result<TempDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::write(&p, contents).with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Waits (bounded) until something accepts TCP connections on `addr` inside `ns`.
pub fn wait_tcp_listening(ns: &Netns, addr: SocketAddr, limit: Duration) -> Result<()> {
    ns.enter(move || {
        let deadline = Instant::now() + limit;
        loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!("nothing listens on tcp {addr} after {limit:?}: {e}")
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

/// Starts a process inside `ns` with its output discarded or logged to `log` (a file).
pub fn spawn_in(
    ns: &Netns,
    program: &str,
    args: &[&str],
    log: Option<&std::path::Path>,
) -> Result<Process> {
    let mut cmd = ns.command(program);
    cmd.args(args).stdin(Stdio::null());
    match log {
        Some(p) => {
            let f = File::create(p).with_context(|| format!("create {}", p.display()))?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {program} (is it installed? `cargo xtask setup`)"))?;
    Ok(Process::new(child))
}

/// Runs `program args` in the namespace `ns` and fails the test (panics) if it cannot be
/// started or exits unsuccessfully (with its stderr in the message).
pub fn must_run_in(ns: &Netns, program: &str, args: &[&str]) {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the end-to-end tests of TURN relayed in the kernel (`turn_fastpath`,
/// `turn_restart`) share: the relay's listening port, realm and credentials, the peers'
/// port, the topology's preparation and the relay configuration.
pub mod turn_xdp {
    use std::net::{IpAddr, SocketAddr};

    use super::{TURN_PEER_NET_V4, TURN_PEER_NET_V6, TurnTopology, XdpPass, must_run_in};

    /// The relay's TURN port (on [`TurnTopology::relay_client_v4`]).
    pub const PORT: u16 = 3478;
    /// The peers' port (on [`TurnTopology::peer_v4`]).
    pub const PEER_PORT: u16 = 3480;
    /// The relay's realm.
    pub const REALM: &str = "relay.test";
    /// The one TURN user.
    pub const USER: &str = "alice";
    /// Its password.
    pub const PASSWORD: &str = "alice-secret-pw";

    /// Prepares `topo` for the XDP TURN path, which the daemon attaches natively on the
    /// relay's veths (`vc`, `vp`):
    /// - TX checksumming off on the client's and the peer's `eth0` (`ethtool -K eth0 tx
    ///   off`): the XDP program updates UDP checksums incrementally, so the senders' must
    ///   be complete;
    /// - IPv4 and IPv6 forwarding on every interface of the relay namespace set to
    ///   `forwarding` (`net.ipv4.conf.all.forwarding`, `net.ipv6.conf.all.forwarding`);
    /// - `relay_xdp_pass` on the client's and the peer's `eth0`: frames the relay
    ///   redirects into `vc`/`vp` are received only when the veth's peer has an XDP
    ///   program.
    ///
    /// Returns the pass programs; keep them (they detach on drop) while the test runs.
    pub fn prepare_topology(topo: &TurnTopology, forwarding: bool) -> Vec<XdpPass> {
        for ns in [&topo.client, &topo.peer] {
            must_run_in(ns, "ethtool", &["-K", "eth0", "tx", "off"]);
        }
        prepare_topology_offloading(topo, forwarding)
    }

    /// [`prepare_topology`] with the senders' TX checksumming left on, a veth's default:
    /// their datagrams carry partial checksums (the pseudo-header's sum only), as those
    /// of containers on the relay's host do.
    pub fn prepare_topology_offloading(topo: &TurnTopology, forwarding: bool) -> Vec<XdpPass> {
        let on = u8::from(forwarding);
        for key in [
            format!("net.ipv4.conf.all.forwarding={on}"),
            format!("net.ipv6.conf.all.forwarding={on}"),
        ] {
            must_run_in(&topo.relay, "sysctl", &["-qw", &key]);
        }
        vec![
            XdpPass::attach(&topo.client, "eth0").expect("relay_xdp_pass on the client veth"),
            XdpPass::attach(&topo.peer, "eth0").expect("relay_xdp_pass on the peer veth"),
        ]
    }

    /// The relay configuration (TOML) for `topo`: two workers listening on
    /// [`PORT`] at the relay's client-side address, XDP native on `vc` and `vp` with
    /// TURN relayed in the kernel, TURN with [`REALM`] and [`USER`], relayed addresses on
    /// the peer side, peers allowed in [`TURN_PEER_NET_V4`] and [`TURN_PEER_NET_V6`].
    /// Each `extra_*` is either empty or whole lines (each ending in a newline):
    /// `extra_xdp` is appended to `[xdp]`, `extra_turn` to `[turn]`, and
    /// `extra_sections` (whole sections, each followed by an empty line) comes before
    /// `[policy]`.
    pub fn config(
        topo: &TurnTopology,
        extra_xdp: &str,
        extra_turn: &str,
        extra_sections: &str,
    ) -> String {
        config_attached(
            topo,
            &["vc", "vp"],
            "native",
            extra_xdp,
            extra_turn,
            extra_sections,
        )
    }

    /// [`config`] with XDP on `interfaces` in `mode` (`xdp.mode`) instead of native on
    /// `vc` and `vp`.
    pub fn config_attached(
        topo: &TurnTopology,
        interfaces: &[&str],
        mode: &str,
        extra_xdp: &str,
        extra_turn: &str,
        extra_sections: &str,
    ) -> String {
        let listen = SocketAddr::new(IpAddr::V4(topo.relay_client_v4), PORT);
        let interfaces = interfaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"[server]
listen = ["{listen}"]
workers = 2

[xdp]
enabled = true
interfaces = [{interfaces}]
mode = "{mode}"
turn = true
{extra_xdp}
[log]
level = "info"

[turn]
enabled = true
realm = "{REALM}"
relay_ipv4 = "{relay_v4}"
{extra_turn}
[turn.users]
{USER} = "{PASSWORD}"

{extra_sections}[policy]
allow = ["{TURN_PEER_NET_V4}", "{TURN_PEER_NET_V6}"]
"#,
            relay_v4 = topo.relay_peer_v4,
        )
    }

    /// `turnutils_peer` echoing on [`PEER_PORT`] at the peer address of `topo`, given a
    /// moment to bind.
    pub fn spawn_peer(topo: &TurnTopology) -> super::Process {
        let peer = super::spawn_in(
            &topo.peer,
            "turnutils_peer",
            &[
                "-L",
                &topo.peer_v4.to_string(),
                "-p",
                &PEER_PORT.to_string(),
            ],
            None,
        )
        .expect("start turnutils_peer (is coturn installed? `cargo xtask setup`)");
        std::thread::sleep(std::time::Duration::from_millis(300));
        peer
    }

    /// `turnutils_uclient` in the client namespace against the relay of `topo`: `clients`
    /// clients (`-m`) of `messages` messages (`-n`) of `len` bytes (`-l`) each, echoed by
    /// the peer at [`PEER_PORT`]; channels, or Send indications when `send` (`-s`).
    pub fn uclient_command(
        topo: &TurnTopology,
        send: bool,
        clients: u32,
        messages: u32,
        len: u64,
    ) -> std::process::Command {
        let mut args: Vec<String> = Vec::new();
        if send {
            args.push("-s".into());
        }
        args.extend([
            "-u".into(),
            USER.into(),
            "-w".into(),
            PASSWORD.into(),
            "-p".into(),
            PORT.to_string(),
            "-e".into(),
            topo.peer_v4.to_string(),
            "-r".into(),
            PEER_PORT.to_string(),
            "-m".into(),
            clients.to_string(),
            "-n".into(),
            messages.to_string(),
            "-l".into(),
            len.to_string(),
            topo.relay_client_v4.to_string(),
        ]);
        eprintln!("turnutils_uclient {}", args.join(" "));
        let mut cmd = topo.client.command("turnutils_uclient");
        cmd.args(&args);
        cmd
    }

    /// Whether a failed `turnutils_uclient` run ended on its own channel-number clash,
    /// not on the relay. Each uclient client binds a random channel number to the peer's
    /// port + 1, then draws a second random number for the peer itself
    /// (`start_connection` in coturn's `startuclient.c`); when the draw repeats the first
    /// number, the relay must refuse the bind with 400 (RFC 8656 §12: a channel is bound
    /// to one peer), and uclient gives up. Numbers are drawn from the 16 384 of
    /// 0x4000-0x7FFF, so this ends about one client in 16 384 (about 1% of CI runs, which
    /// start a few hundred clients); a run that ended this way is worth one more try, and
    /// a relay that refused good binds would fail the second run too.
    pub fn uclient_channel_number_clash(output: &str) -> bool {
        output.contains("channel bind: error 400")
    }

    /// Runs [`uclient_command`] bounded by `limit`, once more when a channel run ended on
    /// uclient's own channel-number clash ([`uclient_channel_number_clash`]).
    pub fn run_uclient(
        topo: &TurnTopology,
        send: bool,
        clients: u32,
        messages: u32,
        len: u64,
        limit: std::time::Duration,
    ) -> super::Result<super::BoundedOutput> {
        let out = super::run_bounded(
            &mut uclient_command(topo, send, clients, messages, len),
            limit,
        )?;
        if !out.success() && !send && uclient_channel_number_clash(&out.text()) {
            eprintln!("uclient drew a channel number it had bound already; once more");
            return super::run_bounded(
                &mut uclient_command(topo, send, clients, messages, len),
                limit,
            );
        }
        Ok(out)
    }

    /// Checks a finished [`uclient_command`] run: it exited successfully, lost nothing and
    /// every one of at least `clients × messages` messages came back. Returns its totals.
    pub fn check_uclient(
        out: super::Result<super::BoundedOutput>,
        clients: u32,
        messages: u32,
    ) -> super::UclientTotals {
        let out = out.expect("run turnutils_uclient (is coturn installed? `cargo xtask setup`)");
        let text = out.text();
        let tail: String = {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        assert!(
            out.status.is_some() && out.success(),
            "turnutils_uclient failed or timed out ({:?}); its output ends:\n{tail}",
            out.status
        );
        let totals = super::UclientTotals::parse(&text)
            .unwrap_or_else(|| panic!("no final report in the output:\n{tail}"));
        assert_eq!(totals.lost, 0, "lost packets: {totals:?}\n{tail}");
        assert_eq!(totals.send_dropped, 0, "send dropped: {totals:?}");
        assert!(
            totals.sent >= u64::from(clients) * u64::from(messages),
            "{totals:?}"
        );
        assert_eq!(
            totals.received, totals.sent,
            "not every message came back: {totals:?}"
        );
        totals
    }
}

/// Debian's Chromium, which the browser tests drive (never a downloaded browser).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/browser`: the node scripts and their playwright-core install.
pub fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Fails with what to run when Chromium or playwright-core is missing.
pub fn check_browser_prerequisites() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (`cargo xtask setup`)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: run `cargo xtask setup` (npm ci there)",
        browser_dir().display()
    );
}

/// Serializes the browser tests of one test binary: each runs several headless browsers
/// with fake media, and two such tests at once on a 2-core machine starve each other
/// (page loads time out, frame-rate checks fail). Hold the guard for the whole test.
pub fn browser_test_guard() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `RESULT <json>` line a browser script printed, after asserting that its overall
/// `ok` is true and none of its `checks` failed; the panic shows the failed checks, the
/// script's whole output and `diag()` (the relay's state).
pub fn browser_result(
    text: &str,
    status: impl std::fmt::Debug,
    diag: &dyn Fn() -> String,
) -> serde_json::Value {
    let result: serde_json::Value = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).expect("RESULT is JSON"))
        .unwrap_or_else(|| {
            panic!(
                "the browser script printed no RESULT ({status:?}):\n{text}\nrelay: {}",
                diag()
            )
        });
    let failed: Vec<&serde_json::Value> = result["checks"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["ok"] != true).collect())
        .unwrap_or_default();
    assert!(
        result["ok"] == true && failed.is_empty(),
        "browser checks failed: {}\n--- script output ---\n{text}\n--- relay ---\n{}",
        serde_json::to_string_pretty(&failed).unwrap_or_default(),
        diag()
    );
    result
}

/// Starts `relay run` in `ns` with the configuration `toml` (written into `files`) and
/// waits until its signaling server listens on `signaling`: the start-up of the browser
/// tests, whose configurations differ.
pub fn start_signaling_relay(
    ns: &Netns,
    files: &TempDir,
    toml: &str,
    signaling: SocketAddr,
) -> Daemon {
    let config = files.write("relay.toml", toml).expect("write relay.toml");
    let config_s = config.display().to_string();
    let relay = Daemon::start(ns, &["--config", &config_s]).expect("start the relay");
    wait_tcp_listening(ns, signaling, Duration::from_secs(10))
        .expect("the signaling server listens");
    relay
}

/// What a failing SFU browser test prints: the relay's SFU counters and its log.
pub fn sfu_diagnostics(relay: &Daemon) -> String {
    format!(
        "{}\n{}",
        relay
            .stats()
            .map_or_else(|e| format!("{e:#}"), |s| s["sfu"].to_string()),
        relay.log_text()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uclient_totals_from_a_real_report() {
        let out = "\
0: : Total connect time is 1
2: : start_mclient: msz=4, tot_send_msgs=23, tot_recv_msgs=23, tot_send_bytes ~ 2300, tot_recv_bytes ~ 2300
5: : start_mclient: msz=4, tot_send_msgs=166, tot_recv_msgs=165, tot_send_bytes ~ 16600, tot_recv_bytes ~ 16500
5: : start_mclient: tot_send_msgs=200, tot_recv_msgs=199
5: : start_mclient: tot_send_bytes ~ 20000, tot_recv_bytes ~ 19900
5: : Total transmit time is 5
5: : Total lost packets 1 (0.500000%), total send dropped 2 (0.000000%)
5: : Average round trip delay 0.500000 ms; min = 0 ms, max = 7 ms
";
        assert_eq!(
            UclientTotals::parse(out),
            Some(UclientTotals {
                sent: 200,
                received: 199,
                lost: 1,
                send_dropped: 2,
                rtt_max_ms: 7,
            })
        );
        assert_eq!(
            UclientTotals::parse("0: : ERROR: Cannot complete Allocation\n"),
            None
        );
        let progress_only = out
            .lines()
            .filter(|l| l.contains("msz="))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(UclientTotals::parse(&progress_only), None);
    }
}
