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

pub mod fib;
pub mod rules;
pub mod testrun;
pub mod turn_frames;

use std::io;

use aya::{
    Ebpf,
    maps::{HashMap, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, xdp::XdpLinkId},
};
use relay_common::{counter, names};
use tracing::{info, warn};

/// The eBPF object built from `ebpf/relay-ebpf` by build.rs (empty when built with
/// `RELAY_SKIP_EBPF=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("RELAY_EBPF_OBJECT"));

/// How to attach to each interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic per interface.
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
}

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

/// Loads [`EBPF_OBJECT`] and fills `STUN_PORTS`.
pub(crate) fn load_object(stun_ports: &[u16]) -> Result<Ebpf, XdpError> {
    if EBPF_OBJECT.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| XdpError::Load(Box::new(e)))?;
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

/// The loaded and attached fast path. Dropping it detaches every attachment.
pub struct FastPath {
    ebpf: Ebpf,
    attachments: Vec<(String, AttachedMode)>,
    links: Vec<XdpLinkId>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Loads the program, sets the STUN ports and attaches to every interface in
    /// `opts.interfaces`, logging the mode each one got. On error nothing stays attached.
    pub fn start(opts: &XdpOptions) -> Result<FastPath, XdpError> {
        let mut ebpf = load_object(&opts.stun_ports)?;
        load_program(&mut ebpf, names::XDP_PROGRAM)?;
        let mut fp = FastPath {
            ebpf,
            attachments: Vec::new(),
            links: Vec::new(),
        };
        for interface in &opts.interfaces {
            // On error `fp` is dropped, which detaches what was attached so far.
            let (link, mode) = fp.attach_one(interface, opts.mode)?;
            info!(
                interface = interface.as_str(),
                mode = mode.as_str(),
                ports = ?opts.stun_ports,
                "XDP fast path attached"
            );
            fp.links.push(link);
            fp.attachments.push((interface.clone(), mode));
        }
        Ok(fp)
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
        match mode {
            XdpMode::Native => prog
                .attach(interface, AyaMode::Driver)
                .map(|l| (l, AttachedMode::Native))
                .map_err(attach_err("native")),
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

    /// The counters (indices in `relay_common::counter`), summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], XdpError> {
        read_counters(&self.ebpf)
    }

    /// Detaches from every interface, reporting the first failure (all are tried).
    pub fn detach(mut self) -> Result<(), XdpError> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), XdpError> {
        let links = std::mem::take(&mut self.links);
        let attachments = std::mem::take(&mut self.attachments);
        let mut first = None;
        for (link, (interface, _)) in links.into_iter().zip(attachments) {
            let result = self.program().and_then(|p| {
                p.detach(link).map_err(|source| XdpError::Detach {
                    interface: interface.clone(),
                    source,
                })
            });
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
        // Errors are logged in detach_all; aya also detaches links when the program drops.
        let _ = self.detach_all();
    }
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}
