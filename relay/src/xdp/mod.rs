//! Loading and attaching the XDP fast path, and reading its counters.
//!
//! Facts the defaults rest on (checked on Linux 6.18 by `tests/xdp_attach.rs`):
//! - `lo` has no native XDP: `Auto` attaches it in generic mode. There the kernel path
//!   answers only datagrams with a complete (or, IPv4, zero) UDP checksum; local senders
//!   over `lo` leave a partial checksum to the (fixed-on) offload, so their requests are
//!   passed up and userspace answers them. Answers XDP_TX'ed on `lo` do reach a local client.
//! - Over a veth, locally sent UDP has a partial checksum too unless the sender's veth has
//!   TX checksumming off (`ethtool -K IFACE tx off`); such requests are passed up.
//! - Frames XDP_TX'ed into a veth are received by its peer only if the peer has an XDP
//!   program attached (e.g. `relay_xdp_pass`); without one they are silently lost.
//!
//! No RLIMIT_MEMLOCK handling: Linux 5.11+ charges BPF memory to the memory cgroup (checked
//! on 6.18: loading and test-running work with `ulimit -l 0`).
//!
//! The kernel program (`ebpf/relay-ebpf`, embedded as [`EBPF_OBJECT`]) answers STUN
//! Binding requests on the configured ports and passes everything else up. This module
//! is the daemon's handle on it ([`FastPath`]); [`testrun`] runs the same program through
//! `BPF_PROG_TEST_RUN` and compares it with the userspace answer (the differential
//! harness). [`rules`] is the TURN fast path's map handle: [`FastPath::turn_maps`] takes
//! the TURN maps out of the loaded object for the workers, which install rules into them.
//! For the AF_XDP data path, [`FastPath::xsk_steering`] ([`xsk_steer`]) steers the frames
//! the program would pass up into the workers' AF_XDP sockets, and
//! [`FastPath::next_hop_probe`] ([`nexthop`]) gives them the next hops the kernel fast
//! path would use.

mod bpf_sys;
pub mod clock;
pub mod driver;
pub mod features;
pub mod fib;
pub mod nexthop;
pub mod rules;
pub mod slot_table;
pub mod testrun;
pub mod turn_frames;
pub mod xsk_steer;

use std::io;
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapError, PerCpuArray},
    programs::{
        ProgramError, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use relay_common::{counter, names};
use tracing::{info, warn};

/// The eBPF object built from `ebpf/relay-ebpf` by build.rs (empty when built with
/// `RELAY_SKIP_EBPF=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("RELAY_EBPF_OBJECT"));

/// How to attach to each interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic per interface; generic on a veth whose
    /// peer takes no XDP frames (see [`features`]).
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// The mode an interface actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver.
    Native,
    /// In the stack (generic XDP, after the skb is built).
    Generic,
}

impl AttachedMode {
    /// Lower-case name, as in `relay stats --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to attach where.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XdpOptions {
    /// Interfaces to attach to (by name).
    pub interfaces: Vec<String>,
    /// Attachment mode.
    pub mode: XdpMode,
    /// UDP ports on which the kernel answers Binding requests.
    pub stun_ports: Vec<u16>,
    /// bpffs directory to pin the maps and the per-interface links in (and to adopt them
    /// from, when a previous daemon left them there); None = nothing pinned, everything
    /// detached when the handle drops.
    pub pin_dir: Option<PathBuf>,
    /// Entries of each TURN rule map ([`TURN_RULE_MAPS`]), [`TURN_RULES_MIN`]..=
    /// `relay_common::turn::MAX_MAP_ENTRIES` (the object's size; `xdp.turn_rules`).
    pub turn_rules: u32,
}

/// The TURN rule maps whose size is configured (`xdp.turn_rules`).
pub const TURN_RULE_MAPS: [&str; 4] = [
    relay_common::turn::maps::CHANNELS,
    relay_common::turn::maps::CHANNELS_V4,
    relay_common::turn::maps::PEERS,
    relay_common::turn::maps::ALLOCS,
];

/// The compact rule tables (`slot_table`), sized by [`slot_table_slots`].
pub const SLOT_TABLES: [&str; 2] = [
    relay_common::turn::maps::CHANNEL_TABLE,
    relay_common::turn::maps::PEER_TABLE,
];

/// Slots of each of [`SLOT_TABLES`] for `xdp.turn_rules`: the next power of two (64 bytes
/// each: 8 MiB per table at the default).
pub fn slot_table_slots(turn_rules: u32) -> u32 {
    turn_rules.checked_next_power_of_two().unwrap_or(1 << 31)
}

/// The smallest `xdp.turn_rules`.
pub const TURN_RULES_MIN: u32 = 1024;

/// Errors of the fast path.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The binary was built with `RELAY_SKIP_EBPF=1`.
    #[error(
        "this relay was built without the XDP program (RELAY_SKIP_EBPF=1); rebuild without \
         RELAY_SKIP_EBPF to use the fast path, or run with --no-xdp"
    )]
    NotBuilt,
    /// Loading the object (maps, programs, BTF) failed.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program or map is missing from the object (a build mismatch).
    #[error("the eBPF object has no {0}; the embedded object does not match this relay")]
    Missing(&'static str),
    /// A program could not be loaded into the kernel (verifier, permissions).
    #[error("loading XDP program {name} failed: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// The interface does not exist.
    #[error("network interface {0:?} not found (see `ip link`)")]
    InterfaceNotFound(String),
    /// Attaching failed.
    #[error("attaching XDP to {interface} in {mode} mode failed: {source}")]
    Attach {
        /// Interface name.
        interface: String,
        /// Mode tried last ("native" or "generic").
        mode: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// Detaching failed.
    #[error("detaching XDP from {interface} failed: {source}")]
    Detach {
        /// Interface name.
        interface: String,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] ProgramError),
    /// The pin directory is not on a mounted bpffs (or cannot be created).
    #[error(
        "xdp.pin_dir {path:?}: {reason}; mount bpffs (mount -t bpf bpf /sys/fs/bpf) or set \
         xdp.pin_dir to a directory on it (or xdp.persist = false to pin nothing)"
    )]
    PinDir {
        /// The configured directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A map pinned under the pin directory has another shape than this build's (type,
    /// key or value size, entries): an incompatible relay version (or another
    /// `xdp.turn_rules`) left it. Adopting it would make the program misread every entry,
    /// so the fast path does not start.
    #[error(
        "the BPF map pinned at {path:?} is {found}, but this relay expects {expected}: a \
         relay version with another map layout, or one run with another xdp.turn_rules, left \
         it, and adopting it would misread every entry (or size the tables wrongly). Remove \
         the old pins with `relay xdp-unload --pin-dir {dir}` (its kernel relaying stops; \
         clients' traffic then goes through userspace once this relay has re-created the \
         allocations) or set xdp.pin_dir to a new directory",
        dir = .path.parent().unwrap_or(.path).display()
    )]
    PinnedMapMismatch {
        /// The pin.
        path: PathBuf,
        /// What the pinned map is.
        found: String,
        /// What this build's object declares.
        expected: String,
    },
    /// The TURN rule clock could not be calibrated.
    #[error("calibrating the TURN rule clock: {0}")]
    Clock(#[source] clock::ClockError),
    /// Pinning, adopting or unpinning a link failed.
    #[error("XDP link pinned at {path:?}: {reason}")]
    Link {
        /// The pin.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl XdpError {
    /// The kernel refused for lack of privileges (EPERM/EACCES anywhere in the cause
    /// chain): the caller should run userspace-only and say so.
    pub fn is_not_permitted(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// The binary carries no XDP program.
    pub fn is_not_built(&self) -> bool {
        matches!(self, XdpError::NotBuilt)
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> XdpError {
    move |source| XdpError::Map { name, source }
}

/// The maps pinned by name under the pin directory (the TURN maps, the counters and the
/// STUN ports): a restarted daemon reuses them, rules, counters and all.
///
/// Deliberately not pinned: the next-hop caches (`TURN_NEXT_HOPS`, `TURN_HOP_SLOTS`:
/// rebuilt from the FIB), the scratch maps, and the AF_XDP steering maps
/// ([`UNPINNED_XSK_MAPS`]).
pub const PINNED_MAPS: [&str; 14] = [
    relay_common::turn::maps::CHANNELS,
    relay_common::turn::maps::CHANNELS_V4,
    relay_common::turn::maps::CHANNEL_TABLE,
    relay_common::turn::maps::CHANNEL_TABLE_INFO,
    relay_common::turn::maps::PEER_TABLE,
    relay_common::turn::maps::PEER_TABLE_INFO,
    relay_common::turn::maps::PEERS,
    relay_common::turn::maps::ALLOCS,
    relay_common::turn::maps::RULE_STATS,
    relay_common::turn::maps::BANDWIDTH,
    relay_common::turn::maps::SETTINGS,
    relay_common::turn::maps::EGRESS,
    names::COUNTERS,
    names::STUN_PORTS,
];

/// The AF_XDP steering maps ([`xsk_steer`]), never pinned: they name sockets and workers
/// of one process, and AF_XDP sockets die with it. A restarted daemon's program (which
/// takes over a pinned link) starts with all of them zero: steering off until its own
/// workers register their sockets. The previous program keeps its own until it is
/// replaced, and passes up what it would have steered once the sockets closed (the kernel
/// removes a closed socket from the socket map; the redirect then falls back to
/// XDP_PASS).
pub const UNPINNED_XSK_MAPS: [&str; 5] = [
    relay_common::turn::maps::XSKS,
    relay_common::turn::maps::XSK_PORTS,
    relay_common::turn::maps::XSK_WORKERS,
    relay_common::turn::maps::XSK_IFACES,
    relay_common::turn::maps::XSK_STATS,
];

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Creates `dir` if needed and checks that it is on a mounted bpffs.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), XdpError> {
    let fail = |reason: String| XdpError::PinDir {
        path: dir.to_owned(),
        reason,
    };
    let parent = dir.parent().unwrap_or(dir);
    if !dir.exists() {
        if !on_bpffs(parent) {
            return Err(fail(format!(
                "{} is not on a mounted bpffs (inside `ip netns exec`, /sys is remounted \
                 and /sys/fs/bpf hidden: mount bpffs elsewhere, e.g. under /run)",
                parent.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
    }
    if !on_bpffs(dir) {
        return Err(fail("not on a mounted bpffs".to_owned()));
    }
    Ok(())
}

fn on_bpffs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is writable; both outlive the call.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The pin of the link on `interface` in `mode` under `dir`.
fn link_pin(dir: &Path, interface: &str, mode: AttachedMode) -> PathBuf {
    dir.join(format!("link_{interface}_{}", mode.as_str()))
}

/// Removes what a persistent fast path left in `dir`: the links first (which detaches the
/// program from each interface), then the maps, then the directory. Returns what was
/// removed. Absent pins are not an error.
pub fn unload_pins(dir: &Path) -> Result<Vec<PathBuf>, XdpError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => {
            return Err(XdpError::PinDir {
                path: dir.to_owned(),
                reason: format!("cannot list it: {e}"),
            });
        }
    };
    let mut links = Vec::new();
    let mut others = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with("link_") {
            links.push(path);
        } else {
            others.push(path);
        }
    }
    for path in links.into_iter().chain(others) {
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| XdpError::Link {
            path: path.clone(),
            reason: format!("cannot remove the pin: {e}"),
        })?;
        removed.push(path);
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), error = %e, "cannot remove the pin directory");
    }
    Ok(removed)
}

/// Loads [`EBPF_OBJECT`] (rule maps of the object's size) and fills `STUN_PORTS`.
pub(crate) fn load_object(stun_ports: &[u16]) -> Result<Ebpf, XdpError> {
    load_object_pinned(stun_ports, None, relay_common::turn::MAX_MAP_ENTRIES)
}

/// As [`load_object`], with [`TURN_RULE_MAPS`] of `turn_rules` entries; with `pin_dir`,
/// the [`PINNED_MAPS`] are reused from (or pinned into) that directory.
pub(crate) fn load_object_pinned(
    stun_ports: &[u16],
    pin_dir: Option<&Path>,
    turn_rules: u32,
) -> Result<Ebpf, XdpError> {
    if EBPF_OBJECT.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    let mut loader = EbpfLoader::new();
    for name in TURN_RULE_MAPS {
        loader.map_max_entries(name, turn_rules);
    }
    for table in SLOT_TABLES {
        loader.map_max_entries(table, slot_table_slots(turn_rules));
    }
    if let Some(dir) = pin_dir {
        check_pinned_shapes(dir, EBPF_OBJECT, turn_rules)?;
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|e| XdpError::Load(Box::new(e)))?;
    let mut ports: HashMap<_, u16, u8> = ebpf
        .map_mut(names::STUN_PORTS)
        .ok_or(XdpError::Missing(names::STUN_PORTS))?
        .try_into()
        .map_err(map_err(names::STUN_PORTS))?;
    for &port in stun_ports {
        ports
            .insert(port, 1, 0)
            .map_err(map_err(names::STUN_PORTS))?;
    }
    Ok(ebpf)
}

/// A map's shape: what must match for a pinned map to be adopted by this build's
/// program. Flags are left out on purpose (e.g. `BPF_F_NO_PREALLOC` changes how entries
/// are allocated, not what they mean).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MapShape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "map type {}, {}-byte keys, {}-byte values, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// Checks every map pinned under `dir` against the declaration of the same name in
/// `object` (so the expectation cannot drift from the program; the [`TURN_RULE_MAPS`]
/// with `turn_rules` entries), before aya reuses the pins: aya adopts a pin by name
/// without comparing anything.
fn check_pinned_shapes(dir: &Path, object: &[u8], turn_rules: u32) -> Result<(), XdpError> {
    let mut parsed = None;
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        if parsed.is_none() {
            let obj = aya_obj::Object::parse(object)
                .map_err(|e| XdpError::Load(Box::new(aya::EbpfError::ParseError(e))))?;
            parsed = Some(obj);
        }
        let Some(obj) = parsed.as_ref() else {
            continue;
        };
        let want = obj.maps.get(name).ok_or(XdpError::Missing(name))?;
        let expected = MapShape {
            map_type: want.map_type(),
            key_size: want.key_size(),
            value_size: want.value_size(),
            max_entries: if TURN_RULE_MAPS.contains(&name) {
                turn_rules
            } else if SLOT_TABLES.contains(&name) {
                slot_table_slots(turn_rules)
            } else {
                want.max_entries()
            },
        };
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        let found = MapShape {
            map_type: info.map_type().map(|t| t as u32).map_err(map_err(name))?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if found != expected {
            return Err(XdpError::PinnedMapMismatch {
                path,
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(())
}

/// Loads the never-attached program `name` of `ebpf` (unless loaded already) and returns
/// a handle of its own on it, for `BPF_PROG_TEST_RUN` (the probes: [`nexthop`],
/// [`clock`]).
pub(crate) fn probe_program_fd(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<std::os::fd::OwnedFd, XdpError> {
    use std::os::fd::AsFd as _;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(XdpError::Missing(name))?
        .try_into()
        .map_err(|source| XdpError::Program { name, source })?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|source| XdpError::Program { name, source })?;
    }
    prog.fd()
        .map_err(|source| XdpError::Program { name, source })?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| XdpError::Program {
            name,
            source: ProgramError::IOError(e),
        })
}

/// For the privileged unit tests: root and an object built with the eBPF toolchain, or
/// skip (with RELAY_REQUIRE_PRIVILEGED=1 a skip is a failure).
#[cfg(test)]
pub(crate) fn can_run_privileged(test: &str) -> bool {
    let required = std::env::var("RELAY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        "needs root"
    } else if EBPF_OBJECT.is_empty() {
        "needs the eBPF object (built with RELAY_SKIP_EBPF=1)"
    } else {
        return true;
    };
    assert!(!required, "{test}: {why} and RELAY_REQUIRE_PRIVILEGED=1");
    eprintln!("{test}: skipped: {why}");
    false
}

/// For the privileged unit tests that need interfaces of their own: a new namespace,
/// `ip link …` commands run in it (`link_setup`, each an argument list), then `f` on a
/// thread moved into it (commands `f` spawns run there too). The namespace is deleted
/// whatever happened; None when a setup command or entering it failed.
#[cfg(test)]
pub(crate) fn in_test_netns<T: Send + 'static>(
    tag: &str,
    link_setup: &[&[&str]],
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    use std::os::fd::AsRawFd;
    let ns = format!("rt{tag}-{}", std::process::id());
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(ip(&["netns", "add", &ns]), "create namespace {ns}");
    let made = link_setup
        .iter()
        .all(|args| ip(&[&["-n", ns.as_str(), "link"][..], args].concat()));
    let path = format!("/run/netns/{ns}");
    let answer = made
        .then(|| {
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).ok()?;
                // SAFETY: setns on this thread only, with an open namespace descriptor.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                Some(f())
            })
            .join()
            .ok()
            .flatten()
        })
        .flatten();
    ip(&["netns", "del", &ns]);
    answer
}

/// Loads (without attaching) the program `name` of `ebpf`.
pub(crate) fn load_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, XdpError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(XdpError::Missing(name))?
        .try_into()
        .map_err(|source| XdpError::Program { name, source })?;
    prog.load()
        .map_err(|source| XdpError::Program { name, source })?;
    Ok(prog)
}

/// Sums the per-CPU counters of `ebpf`.
pub(crate) fn read_counters(ebpf: &Ebpf) -> Result<[u64; counter::COUNT as usize], XdpError> {
    let map: PerCpuArray<_, u64> = ebpf
        .map(names::COUNTERS)
        .ok_or(XdpError::Missing(names::COUNTERS))?
        .try_into()
        .map_err(map_err(names::COUNTERS))?;
    let mut out = [0u64; counter::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let values = map.get(&(i as u32), 0).map_err(map_err(names::COUNTERS))?;
        *slot = values.iter().copied().fold(0u64, u64::wrapping_add);
    }
    Ok(out)
}

/// One attachment's link.
enum LinkHandle {
    /// Owned by the program (no pin): detached when the program drops.
    Owned(XdpLinkId),
    /// Pinned in bpffs: the program stays attached while the pin exists.
    Pinned {
        /// The pin.
        path: PathBuf,
        /// Our reference (closing it does not detach while the pin exists).
        link: FdLink,
        /// Whether this run created the pin (false: adopted from a previous daemon).
        created: bool,
    },
}

/// Which pinned links to remove when taking the fast path down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unpin {
    /// Every pinned link (detach everything).
    All,
    /// Only the pins this run created (undo a failed start).
    Created,
    /// None: pinned links stay and keep the program running.
    None,
}

/// The loaded and attached fast path. Dropping it detaches the attachments it owns and
/// leaves pinned ones in place (see [`FastPath::detach`] and [`FastPath::release`]).
pub struct FastPath {
    ebpf: Ebpf,
    attachments: Vec<(String, AttachedMode)>,
    links: Vec<LinkHandle>,
    pin_dir: Option<PathBuf>,
    adopted: bool,
    /// The next-hop probe program, loaded (never attached); None if it failed to load.
    probe: Option<nexthop::NextHopProbe>,
    /// The AF_XDP steering maps; None if this object has none.
    steering: Option<xsk_steer::XskSteering>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("attachments", &self.attachments)
            .field("pin_dir", &self.pin_dir)
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Loads the program, sets the STUN ports and attaches to every interface in
    /// `opts.interfaces`, logging the mode each one got. With `opts.pin_dir`, the maps are
    /// pinned there (or adopted, rules and counters included, when a previous daemon left
    /// them) and each interface's link is pinned as `link_<iface>_<mode>`; an existing
    /// pinned link gets the new program atomically (`bpf_link_update`: no moment without
    /// a program). On error nothing this call attached stays attached.
    pub fn start(opts: &XdpOptions) -> Result<FastPath, XdpError> {
        if let Some(dir) = &opts.pin_dir {
            prepare_pin_dir(dir)?;
        }
        let mut ebpf =
            load_object_pinned(&opts.stun_ports, opts.pin_dir.as_deref(), opts.turn_rules)?;
        load_program(&mut ebpf, names::XDP_PROGRAM)?;
        // Before attaching, so that the program reads jiffies from its first frame on.
        match clock::install(&mut ebpf) {
            Ok(c) => info!(
                hz = 1_000_000_000 / c.tick_ns.max(1),
                "TURN rule clock calibrated: the fast path reads jiffies"
            ),
            Err(e) => warn!(
                error = %e,
                "TURN rule clock not calibrated: the fast path reads the coarse clock \
                 (correct, about 25 ns slower per relayed frame)"
            ),
        }
        // The AF_XDP data path's helpers: optional, so a failure only costs that path
        // (its workers keep the kernel sockets).
        let probe = nexthop::NextHopProbe::load(&mut ebpf)
            .inspect_err(|e| {
                warn!(error = %e, "next-hop probe unavailable: the AF_XDP data path sends through the kernel sockets")
            })
            .ok();
        let steering = xsk_steer::XskSteering::from_ebpf(&ebpf)
            .inspect_err(|e| {
                warn!(error = %e, "AF_XDP steering unavailable: every frame the fast path does not handle goes to the kernel sockets")
            })
            .ok();
        let mut fp = FastPath {
            ebpf,
            attachments: Vec::new(),
            links: Vec::new(),
            pin_dir: opts.pin_dir.clone(),
            adopted: false,
            probe,
            steering,
        };
        for interface in &opts.interfaces {
            let attached = match opts.pin_dir.clone() {
                Some(dir) => fp.attach_pinned(&dir, interface, opts.mode),
                None => fp
                    .attach_one(interface, opts.mode)
                    .map(|(l, m)| (LinkHandle::Owned(l), m)),
            };
            let (link, mode) = match attached {
                Ok(a) => a,
                Err(e) => {
                    // Logged in take_down; the start error is the one to report.
                    let _ = fp.take_down(Unpin::Created);
                    return Err(e);
                }
            };
            let adopted = matches!(link, LinkHandle::Pinned { created: false, .. });
            fp.adopted |= adopted;
            info!(
                interface = interface.as_str(),
                mode = mode.as_str(),
                ports = ?opts.stun_ports,
                adopted,
                "XDP fast path attached"
            );
            fp.links.push(link);
            fp.attachments.push((interface.clone(), mode));
        }
        Ok(fp)
    }

    /// Whether a pinned link left by a previous daemon was adopted (its maps, with their
    /// rules, were reused).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The pin directory, if the fast path is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn attach_pinned(
        &mut self,
        dir: &Path,
        interface: &str,
        mode: XdpMode,
    ) -> Result<(LinkHandle, AttachedMode), XdpError> {
        for m in [AttachedMode::Native, AttachedMode::Generic] {
            let path = link_pin(dir, interface, m);
            if !path.exists() {
                continue;
            }
            match self.adopt_link(&path) {
                Ok(link) => {
                    return Ok((
                        LinkHandle::Pinned {
                            path,
                            link,
                            created: false,
                        },
                        m,
                    ));
                }
                Err(e) => {
                    warn!(
                        pin = %path.display(),
                        error = %e,
                        "cannot adopt the pinned XDP link (interface gone or recreated?); \
                         removing the stale pin and attaching afresh"
                    );
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (id, m) = self.attach_one(interface, mode)?;
        let path = link_pin(dir, interface, m);
        let link_err = |reason: String| XdpError::Link {
            path: path.clone(),
            reason,
        };
        let prog = self.program()?;
        let link = prog
            .take_link(id)
            .map_err(|e| link_err(format!("cannot take the link: {e}")))?;
        let link = FdLink::try_from(link).map_err(|_| {
            link_err(
                "attached through netlink (no bpf_link on this kernel): cannot be pinned; \
                 set xdp.persist = false"
                    .to_owned(),
            )
        })?;
        let pinned = link
            .pin(&path)
            .map_err(|e| link_err(format!("cannot pin the link: {e}")))?;
        Ok((
            LinkHandle::Pinned {
                path,
                link: pinned.into(),
                created: true,
            },
            m,
        ))
    }

    /// Puts this object's program into the link pinned at `path` (atomic replacement).
    fn adopt_link(&mut self, path: &Path) -> Result<FdLink, XdpError> {
        let link_err = |reason: String| XdpError::Link {
            path: path.to_owned(),
            reason,
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| link_err(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e: LinkError| link_err(format!("not an XDP link: {e}")))?;
        let prog = self.program()?;
        let id = prog
            .attach_to_link(link)
            .map_err(|e| link_err(format!("bpf_link_update failed: {e}")))?;
        let link = prog
            .take_link(id)
            .map_err(|e| link_err(format!("cannot take the link: {e}")))?;
        FdLink::try_from(link).map_err(|e| link_err(e.to_string()))
    }

    fn program(&mut self) -> Result<&mut Xdp, XdpError> {
        let name = names::XDP_PROGRAM;
        self.ebpf
            .program_mut(name)
            .ok_or(XdpError::Missing(name))?
            .try_into()
            .map_err(|source| XdpError::Program { name, source })
    }

    fn attach_one(
        &mut self,
        interface: &str,
        mode: XdpMode,
    ) -> Result<(XdpLinkId, AttachedMode), XdpError> {
        use aya::programs::XdpMode as AyaMode;
        if interface.is_empty() || interface.contains('\0') || !interface_exists(interface) {
            return Err(XdpError::InterfaceNotFound(interface.to_owned()));
        }
        let prog = self.program()?;
        let attach_err = |mode: &'static str| {
            let interface = interface.to_owned();
            move |source: ProgramError| match source {
                ProgramError::UnknownInterface { .. } => XdpError::InterfaceNotFound(interface),
                source => XdpError::Attach {
                    interface,
                    mode,
                    source,
                },
            }
        };
        // A veth whose peer cannot receive XDP frames (see `driver`, `features`): auto mode
        // takes generic there, native mode is warned about.
        let bare_veth = mode != XdpMode::Generic
            && driver::is_veth(interface)
            && features::takes_xdp_frames(interface) != Some(true);
        let mode = match mode {
            XdpMode::Auto if bare_veth => {
                info!(
                    interface,
                    "a veth whose peer takes no XDP frames: generic mode (native XDP would \
                     drop what the kernel sends into it until the peer runs an XDP program \
                     or has GRO on; with either in place at start, auto mode picks native)"
                );
                XdpMode::Generic
            }
            m => m,
        };
        match mode {
            XdpMode::Native => {
                let attached = prog
                    .attach(interface, AyaMode::Driver)
                    .map(|l| (l, AttachedMode::Native))
                    .map_err(attach_err("native"))?;
                if bare_veth {
                    warn!(
                        interface,
                        "native XDP on a veth whose peer takes no XDP frames: the kernel's \
                         STUN answers and relayed TURN frames sent into it are dropped until \
                         the peer runs an XDP program or has GRO on (`ethtool -K <peer> gro \
                         on`); see to that, or set xdp.mode = \"auto\" (generic mode on such \
                         veths)"
                    );
                }
                Ok(attached)
            }
            XdpMode::Generic => prog
                .attach(interface, AyaMode::Skb)
                .map(|l| (l, AttachedMode::Generic))
                .map_err(attach_err("generic")),
            XdpMode::Auto => match prog.attach(interface, AyaMode::Driver) {
                Ok(l) => Ok((l, AttachedMode::Native)),
                Err(native) => {
                    warn!(
                        interface,
                        error = %native,
                        "native XDP not available on this interface; falling back to generic mode"
                    );
                    prog.attach(interface, AyaMode::Skb)
                        .map(|l| (l, AttachedMode::Generic))
                        .map_err(attach_err("generic"))
                }
            },
        }
    }

    /// Interfaces and the mode each got.
    pub fn attachments(&self) -> &[(String, AttachedMode)] {
        &self.attachments
    }

    /// Takes the TURN fast path's maps out of the loaded object (once: a second call
    /// finds them gone), for the workers to install rules into. Err when this build's
    /// XDP program has no TURN maps.
    pub fn turn_maps(&mut self) -> Result<rules::TurnMaps, rules::RulesError> {
        rules::TurnMaps::take(&mut self.ebpf)
    }

    /// A handle on the loaded (never attached) `relay_fib_probe` program: the next hops
    /// the TURN fast path would use, for frames built in userspace. None when it could
    /// not be loaded (logged at start).
    pub fn next_hop_probe(&self) -> Option<nexthop::NextHopProbe> {
        self.probe.clone()
    }

    /// A handle on the AF_XDP steering maps (off until `set_workers`). None when this
    /// object has none (logged at start). Dropping the fast path turns steering off.
    pub fn xsk_steering(&self) -> Option<xsk_steer::XskSteering> {
        self.steering.clone()
    }

    /// The counters (indices in `relay_common::counter`), summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], XdpError> {
        read_counters(&self.ebpf)
    }

    /// Detaches from every interface and removes the link pins (the pinned maps and the
    /// directory stay: [`unload_pins`] removes them), reporting the first failure (all
    /// are tried).
    pub fn detach(mut self) -> Result<(), XdpError> {
        self.take_down(Unpin::All)
    }

    /// Leaves the pinned links and maps in place (the program keeps running, rules keep
    /// relaying until their deadlines) and closes this daemon's handles. Attachments
    /// that are not pinned are detached.
    pub fn release(mut self) -> Result<(), XdpError> {
        self.take_down(Unpin::None)
    }

    fn take_down(&mut self, unpin: Unpin) -> Result<(), XdpError> {
        // Steering off first: a program left running (pinned link) then passes everything
        // up, whatever happens to the sockets of this process.
        if let Some(steering) = self.steering.take()
            && let Err(e) = steering.turn_off()
        {
            warn!(error = %e, "cannot turn the AF_XDP steering off");
        }
        let links = std::mem::take(&mut self.links);
        let attachments = std::mem::take(&mut self.attachments);
        let mut first = None;
        for (link, (interface, _)) in links.into_iter().zip(attachments) {
            let result = match link {
                LinkHandle::Owned(id) => self.program().and_then(|p| {
                    p.detach(id).map_err(|source| XdpError::Detach {
                        interface: interface.clone(),
                        source,
                    })
                }),
                LinkHandle::Pinned {
                    path,
                    link,
                    created,
                } => {
                    let remove = unpin == Unpin::All || (unpin == Unpin::Created && created);
                    if !remove {
                        info!(
                            interface = interface.as_str(),
                            pin = %path.display(),
                            "XDP fast path left attached (pinned link)"
                        );
                        drop(link);
                        continue;
                    }
                    // The link is destroyed (and the program detached) once the pin and
                    // our descriptor are both gone.
                    let r = std::fs::remove_file(&path).map_err(|e| XdpError::Link {
                        path: path.clone(),
                        reason: format!("cannot remove the pin: {e}"),
                    });
                    drop(link);
                    r
                }
            };
            match result {
                Ok(()) => info!(interface = interface.as_str(), "XDP fast path detached"),
                Err(e) => {
                    warn!(error = %e, "detaching XDP failed");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        // Errors are logged in take_down; aya also detaches owned links when the program
        // drops. Pinned links stay: `detach` or `unload_pins` removes them.
        let _ = self.take_down(Unpin::None);
    }
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}
