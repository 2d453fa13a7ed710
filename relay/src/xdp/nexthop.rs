//! Next hops for frames userspace builds itself (the AF_XDP data path), from the same
//! kernel FIB lookup the TURN fast path makes.
//!
//! Why: a frame sent through an AF_XDP socket bypasses the stack, so its Ethernet header
//! (egress interface MAC, next hop MAC) must be known up front. The kernel fast path gets
//! them from `bpf_fib_lookup`; to give userspace exactly the same answer (same routes,
//! same neighbour table, same lookup interface `xdp.fib_interface`, same MTU check) the
//! eBPF object carries a second XDP program, `relay_fib_probe`, that is never attached:
//! [`NextHopProbe::resolve`] runs it once through `BPF_PROG_TEST_RUN` on a
//! [`FibProbeFrame`] and reads the answer back. One syscall, no allocation; a few
//! microseconds, so callers cache the answer (as the fast path does for
//! `next_hop_ttl_ms`).
//!
//! The lookup runs in the network namespace of the calling thread (the test run's device
//! is that namespace's `lo`), i.e. the daemon's. A neighbour that is not resolved yet
//! gives [`NextHopError::NoNeighbour`]: the FIB helper never triggers ARP/ND itself, so
//! the caller sends that frame through its kernel socket, which resolves the neighbour
//! for the next lookup.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;

use aya::Ebpf;
use relay_common::{
    names,
    turn::{
        FIB_PROBE_NOT_RUN, FIB_PROBE_V4, FIB_PROBE_V6, FibProbeFrame, FibProbeReply,
        FibProbeRequest, wire,
    },
};

use super::{XdpError, bpf_sys};

/// `BPF_FIB_LKUP_RET_*` (include/uapi/linux/bpf.h).
const RET_SUCCESS: i32 = 0;
const RET_NO_NEIGH: i32 = 7;
const RET_FRAG_NEEDED: i32 = 8;
/// XDP_PASS: the probe's verdict once it wrote the reply.
const XDP_PASS: u32 = 2;

/// Where a frame to a destination leaves: interface, MACs and the route's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// The egress interface's MAC (the frame's source MAC).
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the frame's destination MAC).
    pub dst_mac: [u8; 6],
    /// The route's MTU (largest IP packet): larger frames must not be sent this way.
    pub mtu: u16,
}

/// Why no next hop was found.
#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    /// The route is fine but the next hop's MAC is not known yet (no neighbour entry, or
    /// one still being resolved). The kernel resolves it when a packet to it goes
    /// through the stack: send through the kernel socket and ask again later.
    #[error(
        "the next hop's MAC is not resolved yet (no valid ARP/NDP neighbour entry): send \
         through the kernel socket, which resolves it"
    )]
    NoNeighbour,
    /// The frame is larger than the route's MTU.
    #[error(
        "an IP packet of {tot_len} bytes exceeds the route's MTU of {mtu} bytes: send through \
         the kernel socket (it fragments or reports the MTU)"
    )]
    FragNeeded {
        /// The route's MTU.
        mtu: u16,
        /// The IP total length asked for.
        tot_len: u16,
    },
    /// The FIB does not forward this: blackhole, unreachable or prohibited route, not a
    /// forwarding route, forwarding disabled on the lookup interface, lightweight tunnel,
    /// no source address (`BPF_FIB_LKUP_RET_*` `code`).
    #[error("no route to send through: {} (bpf_fib_lookup code {code})", fib_code_text(*code))]
    NotForwarded {
        /// The `BPF_FIB_LKUP_RET_*` value.
        code: u32,
    },
    /// Source and destination are of different families.
    #[error("cannot route from {src} to {dst}: different address families")]
    FamilyMismatch {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
    },
    /// `bpf_fib_lookup` refused the parameters (a negative errno).
    #[error("bpf_fib_lookup refused the lookup: {0}")]
    Lookup(#[source] io::Error),
    /// The `BPF_PROG_TEST_RUN` syscall failed.
    #[error("BPF_PROG_TEST_RUN of {program} failed: {0}", program = names::FIB_PROBE_PROGRAM)]
    Syscall(#[source] io::Error),
    /// The program ran but gave no answer (another object than this build's).
    #[error(
        "{program} returned XDP action {action} without an answer: the loaded eBPF object \
         does not match this relay",
        program = names::FIB_PROBE_PROGRAM
    )]
    NoAnswer {
        /// The program's return value.
        action: u32,
    },
}

/// What a `BPF_FIB_LKUP_RET_*` code means, for operators.
pub fn fib_code_text(code: u32) -> &'static str {
    match code {
        0 => "success",
        1 => "blackhole route",
        2 => "unreachable route",
        3 => "prohibited route",
        4 => "not a forwarding route (a local or broadcast destination, or a policy rule)",
        5 => {
            "forwarding is disabled on the lookup interface (xdp.fib_interface; the daemon \
             enables it there)"
        }
        6 => "the route needs a lightweight tunnel encapsulation",
        7 => "no neighbour entry",
        8 => "the packet exceeds the route's MTU",
        9 => "no source address",
        _ => "unknown code",
    }
}

/// A handle on the loaded `relay_fib_probe` program: cheap to clone (one shared
/// descriptor), `Send + Sync`, usable from any number of threads at once (each call is
/// one independent syscall with its own buffers on the caller's stack).
#[derive(Debug, Clone)]
pub struct NextHopProbe {
    prog: Arc<OwnedFd>,
    lookup_ifindex: u32,
}

impl NextHopProbe {
    /// Loads (without attaching) `relay_fib_probe` of `ebpf` and takes a handle on it. The
    /// program shares the object's maps: with no override it reads
    /// `TurnSettings::fib_ifindex` from the object's `TURN_SETTINGS`, as the fast path.
    pub fn load(ebpf: &mut Ebpf) -> Result<NextHopProbe, XdpError> {
        Ok(NextHopProbe {
            prog: Arc::new(super::probe_program_fd(ebpf, names::FIB_PROBE_PROGRAM)?),
            lookup_ifindex: 0,
        })
    }

    /// The same probe looking routes up through interface `ifindex` instead of the fast
    /// path's `fib_ifindex` (0: back to the fast path's). Forwarding must be on for that
    /// interface (see [`super::fib`]).
    pub fn with_lookup_ifindex(mut self, ifindex: u32) -> NextHopProbe {
        self.lookup_ifindex = ifindex;
        self
    }

    /// The next hop of an IP packet of `tot_len` bytes (IP header included) from `src`
    /// (a local address) to `dst`, as the fast path would find it for a relayed frame.
    /// IPv4-mapped IPv6 addresses count as IPv4.
    pub fn resolve(&self, src: IpAddr, dst: IpAddr, tot_len: u16) -> Result<NextHop, NextHopError> {
        self.resolve_flow(SocketAddr::new(src, 0), SocketAddr::new(dst, 0), 0, tot_len)
    }

    /// As [`Self::resolve`], with the ports and the IPv4 TOS of the frame too (the fast
    /// path passes them; only policy routing rules that select on them can change the
    /// answer).
    pub fn resolve_flow(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        tos: u8,
        tot_len: u16,
    ) -> Result<NextHop, NextHopError> {
        let request = request(src, dst, tos, tot_len, self.lookup_ifindex)?;
        let reply = self.query(&request)?;
        match reply.rc {
            RET_SUCCESS => Ok(NextHop {
                ifindex: reply.ifindex,
                src_mac: reply.smac,
                dst_mac: reply.dmac,
                mtu: reply.mtu,
            }),
            RET_NO_NEIGH => Err(NextHopError::NoNeighbour),
            RET_FRAG_NEEDED => Err(NextHopError::FragNeeded {
                mtu: reply.mtu,
                tot_len,
            }),
            rc if rc < 0 => Err(NextHopError::Lookup(io::Error::from_raw_os_error(-rc))),
            rc => Err(NextHopError::NotForwarded { code: rc as u32 }),
        }
    }

    /// Runs the probe on `request` and returns its raw reply (`rc` is the helper's
    /// return value).
    pub fn query(&self, request: &FibProbeRequest) -> Result<FibProbeReply, NextHopError> {
        let frame = FibProbeFrame {
            request: *request,
            reply: FibProbeReply {
                rc: FIB_PROBE_NOT_RUN,
                ..FibProbeReply::default()
            },
            _pad: [0; 28],
        };
        let mut out = FibProbeFrame::default();
        let r = bpf_sys::prog_test_run(self.prog.as_fd(), &frame, &mut out)
            .map_err(NextHopError::Syscall)?;
        if r.retval != XDP_PASS
            || r.data_size_out as usize != std::mem::size_of::<FibProbeFrame>()
            || out.reply.rc == FIB_PROBE_NOT_RUN
        {
            return Err(NextHopError::NoAnswer { action: r.retval });
        }
        Ok(out.reply)
    }
}

/// The probe's request for a frame from `src` to `dst`.
fn request(
    src: SocketAddr,
    dst: SocketAddr,
    tos: u8,
    tot_len: u16,
    ifindex: u32,
) -> Result<FibProbeRequest, NextHopError> {
    let (s, d) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let mut r = FibProbeRequest {
        tot_len,
        sport: wire(src.port()),
        dport: wire(dst.port()),
        ifindex,
        ..FibProbeRequest::default()
    };
    match (s, d) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            r.family = FIB_PROBE_V4;
            r.tos = tos;
            r.src[..4].copy_from_slice(&a.octets());
            r.dst[..4].copy_from_slice(&b.octets());
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            r.family = FIB_PROBE_V6;
            r.src = a.octets();
            r.dst = b.octets();
        }
        _ => return Err(NextHopError::FamilyMismatch { src: s, dst: d }),
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn requests_carry_the_fast_path_parameters() {
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 50000);
        let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 3478);
        let r = request(src, dst, 0xb8, 1200, 0).expect("v4");
        assert_eq!(r.family, FIB_PROBE_V4);
        assert_eq!(r.tos, 0xb8);
        assert_eq!(r.tot_len, 1200);
        assert_eq!(r.sport, [0xc3, 0x50]);
        assert_eq!(r.dport, [0x0d, 0x96]);
        assert_eq!(&r.src[..4], &[192, 0, 2, 1]);
        assert_eq!(&r.src[4..], &[0; 12]);
        assert_eq!(&r.dst[..4], &[198, 51, 100, 7]);

        // IPv4-mapped addresses are IPv4; IPv6 carries no TOS (as the fast path).
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()), 1);
        assert_eq!(
            request(mapped, dst, 0, 100, 0).expect("mapped").family,
            FIB_PROBE_V4
        );
        let v6 =
            |a: u16| SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, a)), 9);
        let r = request(v6(1), v6(2), 0xb8, 1280, 4).expect("v6");
        assert_eq!(r.family, FIB_PROBE_V6);
        assert_eq!(r.tos, 0);
        assert_eq!(r.ifindex, 4);
        assert_eq!(r.dst, Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());

        match request(src, v6(2), 0, 100, 0) {
            Err(NextHopError::FamilyMismatch { .. }) => {}
            other => panic!("mixed families: {other:?}"),
        }
    }

    #[test]
    fn the_probe_is_shared_by_workers() {
        fn shared<T: Clone + Send + Sync + 'static>() {}
        shared::<NextHopProbe>();
    }

    #[test]
    fn codes_are_named_for_operators() {
        let e = NextHopError::NotForwarded { code: 5 };
        assert!(e.to_string().contains("forwarding is disabled"), "{e}");
        assert!(e.to_string().contains("code 5"), "{e}");
        assert_eq!(fib_code_text(42), "unknown code");
        let e = NextHopError::FragNeeded {
            mtu: 1400,
            tot_len: 1500,
        };
        assert!(e.to_string().contains("1400"), "{e}");
    }
}
