//! The differential harness: runs the XDP program on one frame through
//! `BPF_PROG_TEST_RUN` and compares what it did with what userspace would send.
//!
//! The invariant of the project is that both paths put the same bytes on the wire. For
//! every frame: if the kernel answers (XDP_TX), userspace must answer with exactly that
//! frame; if the kernel passes (XDP_PASS), the frame must leave unchanged (userspace then
//! decides); the kernel never drops, aborts or redirects here. Later fast-path features
//! (TURN, RTP) reuse [`XdpTestRun`] and [`Comparison`] with their own reference.
//!
//! Needs CAP_BPF/CAP_SYS_ADMIN (root). Allocates freely: this is test and bench code.

use std::{net::IpAddr, time::Duration};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use relay_common::{counter, names};

use super::XdpError;
use crate::{
    stun::binding::{Reply, handle_datagram},
    wire,
};

/// Room the program may add in front of a frame (the kernel's XDP headroom).
const MAX_GROWTH: usize = 256;
/// Smallest frame BPF_PROG_TEST_RUN accepts for XDP (an Ethernet header).
pub const MIN_FRAME: usize = wire::ETH_HLEN;

/// An XDP verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAction {
    /// XDP_ABORTED.
    Aborted,
    /// XDP_DROP.
    Drop,
    /// XDP_PASS.
    Pass,
    /// XDP_TX.
    Tx,
    /// XDP_REDIRECT.
    Redirect,
    /// Anything else.
    Other(u32),
}

impl XdpAction {
    fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            v => Self::Other(v),
        }
    }
}

/// What the kernel program did with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpOutcome {
    /// The verdict.
    pub action: XdpAction,
    /// The frame after the program ran (what XDP_TX would send, or what XDP_PASS hands up).
    pub frame: Vec<u8>,
}

/// The relay's XDP program, loaded (not attached) for `BPF_PROG_TEST_RUN`.
pub struct XdpTestRun {
    ebpf: Ebpf,
    program: &'static str,
}

impl XdpTestRun {
    /// Loads `relay_xdp` with Binding answered on `stun_ports`.
    pub fn load(stun_ports: &[u16]) -> Result<Self, XdpError> {
        Self::load_program(names::XDP_PROGRAM, stun_ports)
    }

    /// Loads the program `program` of the embedded object.
    pub fn load_program(program: &'static str, stun_ports: &[u16]) -> Result<Self, XdpError> {
        let mut ebpf = super::load_object(stun_ports)?;
        super::load_program(&mut ebpf, program)?;
        Ok(Self { ebpf, program })
    }

    fn prog(&self) -> Result<&Xdp, XdpError> {
        let name = self.program;
        self.ebpf
            .program(name)
            .ok_or(XdpError::Missing(name))?
            .try_into()
            .map_err(|source| XdpError::Program { name, source })
    }

    /// Runs the program once on `frame` (at least [`MIN_FRAME`] bytes).
    pub fn run(&self, frame: &[u8]) -> Result<XdpOutcome, XdpError> {
        let mut out = vec![0u8; frame.len() + MAX_GROWTH];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let r = self.prog()?.test_run(opts).map_err(XdpError::TestRun)?;
        out.truncate(r.data_size_out as usize);
        Ok(XdpOutcome {
            action: XdpAction::from_raw(r.return_value),
            frame: out,
        })
    }

    /// Runs the program once on `frame` as if received on interface `ingress_ifindex` of
    /// the calling thread's network namespace (the `xdp_md` context of
    /// `BPF_PROG_TEST_RUN`): `bpf_fib_lookup` then resolves in that namespace.
    pub fn run_on(&self, frame: &[u8], ingress_ifindex: u32) -> Result<XdpOutcome, XdpError> {
        self.run_on_queue(frame, ingress_ifindex, 0)
    }

    /// As [`Self::run_on`], received on RX queue `rx_queue` of that interface (which must
    /// have that many queues).
    pub fn run_on_queue(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        rx_queue: u32,
    ) -> Result<XdpOutcome, XdpError> {
        let mut out = vec![0u8; frame.len() + MAX_GROWTH];
        let ctx = xdp_md(frame.len(), ingress_ifindex, rx_queue);
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let r = self.prog()?.test_run(opts).map_err(XdpError::TestRun)?;
        out.truncate(r.data_size_out as usize);
        Ok(XdpOutcome {
            action: XdpAction::from_raw(r.return_value),
            frame: out,
        })
    }

    /// As [`Self::mean_single_run`], received on `ingress_ifindex` (see [`Self::run_on`]).
    pub fn mean_single_run_on(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        runs: u32,
    ) -> Result<Duration, XdpError> {
        let ctx = xdp_md(frame.len(), ingress_ifindex, 0);
        self.mean_of_single_runs(frame, Some(&ctx), runs)
    }

    /// The mean kernel-measured time of `runs` single runs of `frame` (one syscall each,
    /// a fresh copy every time), with `ctx_in` as the `xdp_md` context if given.
    fn mean_of_single_runs(
        &self,
        frame: &[u8],
        ctx_in: Option<&[u8]>,
        runs: u32,
    ) -> Result<Duration, XdpError> {
        let mut out = vec![0u8; frame.len() + MAX_GROWTH];
        let mut total = Duration::ZERO;
        for _ in 0..runs {
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in,
                repeat: 1,
                ..TestRunOptions::default()
            };
            total += self
                .prog()?
                .test_run(opts)
                .map_err(XdpError::TestRun)?
                .duration;
        }
        Ok(total / runs.max(1))
    }

    /// The loaded object, to reach its maps (e.g. to write TURN rules in a test).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The loaded object (e.g. for `XskSteering::from_ebpf`).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Runs the program `repeat` times on `frame` in one `BPF_PROG_TEST_RUN` call and
    /// returns the kernel's mean time per run and the last verdict. The kernel does not
    /// restore the frame between repetitions, so this measures a frame the program
    /// leaves alone (XDP_PASS); for answered frames use [`Self::mean_single_run`].
    pub fn bench(&self, frame: &[u8], repeat: u32) -> Result<(Duration, XdpAction), XdpError> {
        let mut out = vec![0u8; frame.len() + MAX_GROWTH];
        // A long repeat loop returns EINTR when a signal is pending (the kernel checks
        // between repeats); such a run measured nothing, so it is run again (bounded).
        let mut attempts = 0;
        loop {
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            };
            match self.prog()?.test_run(opts) {
                Ok(r) => return Ok((r.duration, XdpAction::from_raw(r.return_value))),
                Err(aya::programs::ProgramError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::Interrupted && attempts < 10 =>
                {
                    attempts += 1;
                }
                Err(e) => return Err(XdpError::TestRun(e)),
            }
        }
    }

    /// Runs the program `runs` times on a fresh copy of `frame` (one syscall each) and
    /// returns the mean of the kernel-measured run times: each includes the kernel's
    /// timer overhead, so compare with a passed frame measured the same way.
    pub fn mean_single_run(&self, frame: &[u8], runs: u32) -> Result<Duration, XdpError> {
        self.mean_of_single_runs(frame, None, runs)
    }

    /// The program's counters summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], XdpError> {
        super::read_counters(&self.ebpf)
    }

    /// Instructions the verifier processed to accept the program, if the kernel says.
    pub fn verified_instructions(&self) -> Option<u32> {
        self.prog().ok()?.info().ok()?.verified_instruction_count()
    }

    /// Size of the program in BPF instructions (8 bytes each), if the kernel says.
    pub fn translated_instructions(&self) -> Option<u32> {
        Some(self.prog().ok()?.info().ok()?.size_translated()? / 8)
    }

    /// Runs `frame` through the kernel and through `reference` (userspace: the frame it
    /// would send back, if any) and returns both.
    pub fn compare(
        &self,
        frame: &[u8],
        reference: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Comparison, XdpError> {
        Ok(Comparison {
            input: frame.to_vec(),
            kernel: self.run(frame)?,
            reference: reference(frame),
        })
    }
}

/// The `struct xdp_md` given to `BPF_PROG_TEST_RUN` as `ctx_in`: data from 0 to the
/// frame's end, received on `ingress_ifindex`, queue `rx_queue`.
fn xdp_md(len: usize, ingress_ifindex: u32, rx_queue: u32) -> Vec<u8> {
    let fields = [0u32, len as u32, 0, ingress_ifindex, rx_queue, 0];
    fields.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

/// One frame seen by both paths.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The frame given to both.
    pub input: Vec<u8>,
    /// What the kernel did.
    pub kernel: XdpOutcome,
    /// What userspace would send back (None: nothing).
    pub reference: Option<Vec<u8>>,
}

/// A way the kernel departed from userspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Divergence {
    /// XDP_TX although userspace would not answer.
    #[error("the kernel answered a frame userspace does not answer")]
    AnsweredWhenReferenceSilent,
    /// XDP_TX with other bytes than userspace would send.
    #[error("the kernel's answer differs from userspace's (first difference at byte {first_diff})")]
    DifferentAnswer {
        /// Index of the first differing byte (or the shorter length).
        first_diff: usize,
    },
    /// XDP_PASS but the frame was modified.
    #[error("the kernel passed a modified frame")]
    PassedModified,
    /// A verdict the fast path must not give (drop, abort, redirect).
    #[error("unexpected verdict {0:?}")]
    UnexpectedAction(XdpAction),
}

impl Comparison {
    /// Checks the invariant; `Ok` when the two paths agree.
    pub fn check(&self) -> Result<(), Divergence> {
        match self.kernel.action {
            XdpAction::Pass if self.kernel.frame == self.input => Ok(()),
            XdpAction::Pass => Err(Divergence::PassedModified),
            XdpAction::Tx => {
                let Some(reference) = &self.reference else {
                    return Err(Divergence::AnsweredWhenReferenceSilent);
                };
                if *reference == self.kernel.frame {
                    return Ok(());
                }
                let first_diff = reference
                    .iter()
                    .zip(&self.kernel.frame)
                    .position(|(a, b)| a != b)
                    .unwrap_or(reference.len().min(self.kernel.frame.len()));
                Err(Divergence::DifferentAnswer { first_diff })
            }
            other => Err(Divergence::UnexpectedAction(other)),
        }
    }

    /// The kernel answered.
    pub fn kernel_answered(&self) -> bool {
        self.kernel.action == XdpAction::Tx
    }
}

/// The userspace reference for STUN Binding: what the host stack plus the relay's
/// Binding service send back for `frame` when the relay listens on `ports`.
///
/// It models the stack's receive checks that decide whether a datagram reaches the
/// socket at all: parseable Eth/IP/UDP, a served destination port, valid IPv4 header and
/// UDP checksums, unicast non-zero addresses and a non-zero source port (the socket
/// could not answer port 0). Then [`handle_datagram`] decides, and [`wire`] wraps its
/// answer per contract 2.
pub fn stun_binding_reference(frame: &[u8], ports: &[u16]) -> Option<Vec<u8>> {
    let f = wire::parse_udp_frame(frame).ok()?;
    if !ports.contains(&f.dst.port()) || f.src.port() == 0 {
        return None;
    }
    if !f.ip_checksum_valid() || !f.udp_checksum_valid() {
        return None;
    }
    if f.src_mac[0] & 1 != 0 || !deliverable(f.src.ip()) || !deliverable(f.dst.ip()) {
        return None;
    }
    let mut stun = [0u8; 1500];
    let n = match handle_datagram(f.payload, f.src, &mut stun) {
        Reply::Send(n) => n,
        Reply::Drop(_) => return None,
    };
    let mut out = vec![0u8; n + wire::ETH_HLEN + wire::IPV6_HLEN + wire::UDP_HLEN];
    let len = wire::build_udp_reply(&f, stun.get(..n)?, &mut out).ok()?;
    out.truncate(len);
    Some(out)
}

fn deliverable(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.octets()[0] >= 224),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}
