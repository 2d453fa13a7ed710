//! `relay_fib_probe`: the TURN fast path's next-hop question, asked for userspace.
//!
//! Never attached. Userspace (the AF_XDP data path, `relay/src/xdp/nexthop.rs`) runs it
//! through `BPF_PROG_TEST_RUN` on a `relay_common::turn::FibProbeFrame`; the program
//! calls `bpf_fib_lookup` with the parameters and flags `turn::emit::lookup` uses for a
//! relayed frame (keep the two in step) and writes the helper's answer into the frame's
//! reply, which userspace reads back from `data_out`. The lookup runs in the network
//! namespace of the calling thread (`BPF_PROG_TEST_RUN`'s device is that namespace's
//! `lo`).

use core::{
    mem::{MaybeUninit, offset_of, size_of},
    ptr::{addr_of, addr_of_mut, read_unaligned, read_volatile, write_unaligned, write_volatile},
};

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use relay_common::turn::{
    FIB_PROBE_V4, FIB_PROBE_V6, FibProbeFrame, FibProbeReply, FibProbeRequest,
};

use crate::turn::TURN_SETTINGS;

/// The lookup parameters on the stack, 8-aligned: the verifier rejects misaligned stack
/// access, so every store and load below is volatile (LLVM would otherwise merge
/// neighbouring fields into wider, misaligned accesses) and of the field's own width.
#[repr(C, align(8))]
struct Params(bpf_fib_lookup);

const _: () = assert!(size_of::<bpf_fib_lookup>() == 64);

const REQ: usize = offset_of!(FibProbeFrame, request);
const REPLY: usize = offset_of!(FibProbeFrame, reply);

/// Reads the request, looks the route up, writes the reply: XDP_PASS, or XDP_ABORTED for
/// a frame shorter than a `FibProbeFrame` or of an unknown family (reply untouched).
#[inline(always)]
pub fn probe(ctx: &XdpContext) -> u32 {
    let data = ctx.data();
    if data + size_of::<FibProbeFrame>() > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let req = data + REQ;
    let at = |field: usize| req + field;
    // SAFETY: the whole FibProbeFrame lies inside the packet (checked above); packet
    // memory may be read unaligned.
    let (family, tos, tot_len, sport, dport, ifindex) = unsafe {
        (
            *(at(offset_of!(FibProbeRequest, family)) as *const u8),
            *(at(offset_of!(FibProbeRequest, tos)) as *const u8),
            read_unaligned(at(offset_of!(FibProbeRequest, tot_len)) as *const u16),
            read_unaligned(at(offset_of!(FibProbeRequest, sport)) as *const u16),
            read_unaligned(at(offset_of!(FibProbeRequest, dport)) as *const u16),
            read_unaligned(at(offset_of!(FibProbeRequest, ifindex)) as *const u32),
        )
    };
    let v6 = match family {
        FIB_PROBE_V4 => false,
        FIB_PROBE_V6 => true,
        _ => return xdp_action::XDP_ABORTED,
    };
    let src = at(offset_of!(FibProbeRequest, src));
    let dst = at(offset_of!(FibProbeRequest, dst));
    // SAFETY: as above (16 bytes each).
    let (src, dst) = unsafe { (words(src), words(dst)) };

    // The interface: the request's, else the fast path's (`fib_ifindex`, else ingress).
    let lookup_ifindex = if ifindex != 0 {
        ifindex
    } else {
        match TURN_SETTINGS.get(0) {
            Some(s) if s.fib_ifindex != 0 => s.fib_ifindex,
            _ => ctx.ingress_ifindex() as u32,
        }
    };

    // Zeroed below a word at a time (an initialiser would become a byte-loop memset).
    let mut params = MaybeUninit::<Params>::uninit();
    let p = params.as_mut_ptr() as *mut bpf_fib_lookup;
    // SAFETY: `p` points at the 64-byte, 8-aligned stack buffer (`Params` is
    // `repr(C)` around the struct); the eight word writes initialise all of it first,
    // then every write is to a field of it, at its natural alignment.
    unsafe {
        let w = p as *mut u64;
        let mut i = 0;
        while i < 8 {
            write_volatile(w.add(i), 0);
            i += 1;
        }
        // The fast path's parameters (turn::emit::lookup): UDP, the output's ports, the
        // IP total length for the MTU check, the lookup interface, family and addresses,
        // the IPv4 TOS; flags 0.
        write_volatile(addr_of_mut!((*p).l4_protocol), 17);
        write_volatile(addr_of_mut!((*p).sport), sport);
        write_volatile(addr_of_mut!((*p).dport), dport);
        write_volatile(addr_of_mut!((*p).__bindgen_anon_1.tot_len), tot_len);
        write_volatile(addr_of_mut!((*p).ifindex), lookup_ifindex);
        if v6 {
            write_volatile(addr_of_mut!((*p).family), FIB_PROBE_V6);
            let s = addr_of_mut!((*p).__bindgen_anon_3.ipv6_src) as *mut u32;
            let d = addr_of_mut!((*p).__bindgen_anon_4.ipv6_dst) as *mut u32;
            let mut i = 0;
            while i < 4 {
                write_volatile(s.add(i), src[i]);
                write_volatile(d.add(i), dst[i]);
                i += 1;
            }
        } else {
            write_volatile(addr_of_mut!((*p).family), FIB_PROBE_V4);
            write_volatile(addr_of_mut!((*p).__bindgen_anon_2.tos), tos);
            write_volatile(addr_of_mut!((*p).__bindgen_anon_3.ipv4_src), src[0]);
            write_volatile(addr_of_mut!((*p).__bindgen_anon_4.ipv4_dst), dst[0]);
        }
    }
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe { fib_lookup(ctx.ctx.cast(), p, size_of::<bpf_fib_lookup>() as i32, 0) };

    // SAFETY: reads of the stack buffer at each field's natural alignment (the MACs as
    // 2-byte words: they start at offsets 52 and 58).
    let (out_ifindex, mtu, macs) = unsafe {
        let m = addr_of!((*p).smac) as *const u16;
        (
            read_volatile(addr_of!((*p).ifindex)),
            read_volatile(addr_of!((*p).__bindgen_anon_1.mtu_result)),
            [
                read_volatile(m),
                read_volatile(m.add(1)),
                read_volatile(m.add(2)),
                read_volatile(m.add(3)),
                read_volatile(m.add(4)),
                read_volatile(m.add(5)),
            ],
        )
    };
    let reply = data + REPLY;
    let r = |field: usize| reply + field;
    // SAFETY: the reply lies inside the packet (checked at the top); packet memory may
    // be written unaligned.
    unsafe {
        write_unaligned(r(offset_of!(FibProbeReply, rc)) as *mut i32, rc as i32);
        write_unaligned(
            r(offset_of!(FibProbeReply, ifindex)) as *mut u32,
            out_ifindex,
        );
        write_unaligned(r(offset_of!(FibProbeReply, mtu)) as *mut u16, mtu);
        let m = r(offset_of!(FibProbeReply, smac));
        let mut i = 0;
        while i < 6 {
            write_unaligned((m + 2 * i) as *mut u16, macs[i]);
            i += 1;
        }
    }
    xdp_action::XDP_PASS
}

/// Four memory-order words at `p`.
///
/// # Safety
/// `p` must be valid for 16 bytes of reads (bounds-checked packet memory).
#[inline(always)]
unsafe fn words(p: usize) -> [u32; 4] {
    // SAFETY: forwarded from the contract; packet memory may be read unaligned.
    unsafe {
        [
            read_unaligned(p as *const u32),
            read_unaligned((p + 4) as *const u32),
            read_unaligned((p + 8) as *const u32),
            read_unaligned((p + 12) as *const u32),
        ]
    }
}
