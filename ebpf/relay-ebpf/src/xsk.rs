//! Steering to AF_XDP sockets: a frame that `relay_xdp` would pass up (XDP_PASS) goes to
//! the AF_XDP socket of its RX queue instead when it is UDP for a port the userspace data
//! path takes over (`TURN_XSK_PORTS`, decided by `relay_common::turn::xsk_port_steers`).
//! What the kernel handles itself (Binding answers, TURN frames relayed here) never
//! reaches this point.
//!
//! Only frames whose UDP header is at a fixed place are steered: untagged Ethernet, IPv4
//! without options and not a fragment (MF clear, offset 0), or IPv6 whose next header is
//! UDP. Everything else passes up as before, so the kernel sockets still see it. The
//! redirect falls back to XDP_PASS when the queue has no socket in `TURN_XSKS` (a queue
//! without a worker, or sockets closed by an exiting process: the kernel removes a closed
//! socket from the map). Nothing is validated beyond that (checksums, addresses): the
//! socket's owner checks what the stack would have checked.
//!
//! The maps are per process, never pinned: AF_XDP sockets die with the process that
//! opened them, and a restarted daemon's program starts with steering off (every entry
//! zero) until its workers open their sockets again.

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, PerCpuArray, XskMap},
    programs::XdpContext,
};
use relay_common::turn::{
    MAX_XSK_IFACES, XSK_PORTS_ENTRIES, XSK_SOCKETS, xsk_key, xsk_port_steers,
};

use crate::parse::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN, bytes_at};

/// The AF_XDP socket of each (interface slot, RX queue): `xsk_key`.
#[map(name = "TURN_XSKS")]
static TURN_XSKS: XskMap = XskMap::with_max_entries(XSK_SOCKETS, 0);
/// What each UDP port (host order) is to the steering.
#[map(name = "TURN_XSK_PORTS")]
static TURN_XSK_PORTS: Array<u8> = Array::with_max_entries(XSK_PORTS_ENTRIES, 0);
/// Number of workers owning the sockets; 0 = steering off.
#[map(name = "TURN_XSK_WORKERS")]
static TURN_XSK_WORKERS: Array<u32> = Array::with_max_entries(1, 0);
/// The interfaces whose frames are steered, by slot (0 = free): a socket is bound to one
/// interface's queue, and a frame redirected to a socket of another interface would be
/// dropped by the kernel, so each interface has its own keys in `TURN_XSKS`.
#[map(name = "TURN_XSK_IFACES")]
static TURN_XSK_IFACES: Array<u32> = Array::with_max_entries(MAX_XSK_IFACES, 0);
/// Frames redirected to a socket (per CPU).
#[map(name = "TURN_XSK_STATS")]
static TURN_XSK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The verdict for a frame `relay_xdp` would pass up: XDP_REDIRECT to its queue's AF_XDP
/// socket when steered, else XDP_PASS. A BPF function of its own, called after the TURN
/// and STUN paths returned, so its small stack frame never adds to theirs.
#[inline(never)]
pub fn steer_or_pass(ctx: &XdpContext) -> u32 {
    let workers = match TURN_XSK_WORKERS.get(0) {
        Some(w) => *w,
        None => return xdp_action::XDP_PASS,
    };
    if workers == 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(port) = udp_dport(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let kind = match TURN_XSK_PORTS.get(port as u32) {
        Some(k) => *k,
        None => return xdp_action::XDP_PASS,
    };
    // SAFETY: `ctx.ctx` is the program's valid `xdp_md` context.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    if !xsk_port_steers(kind, queue, workers) {
        return xdp_action::XDP_PASS;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    let mut slot = MAX_XSK_IFACES;
    let mut i = 0;
    while i < MAX_XSK_IFACES {
        if let Some(s) = TURN_XSK_IFACES.get(i)
            && *s == ifindex
            && ifindex != 0
        {
            slot = i;
            break;
        }
        i += 1;
    }
    let Some(key) = xsk_key(slot, queue) else {
        return xdp_action::XDP_PASS;
    };
    match TURN_XSKS.redirect(key, xdp_action::XDP_PASS as u64) {
        Ok(action) => {
            if let Some(n) = TURN_XSK_STATS.get_ptr_mut(0) {
                // SAFETY: this CPU's slot from a successful lookup; XDP is not preempted
                // on a CPU, so no other writer races it.
                unsafe { *n += 1 };
            }
            action
        }
        Err(fallback) => fallback,
    }
}

/// The UDP destination port (host order) of an untagged IPv4 (no options, not a
/// fragment) or IPv6 (next header UDP) frame.
#[inline(always)]
fn udp_dport(ctx: &XdpContext) -> Option<u16> {
    let eth = bytes_at::<ETH_HLEN>(ctx, 0)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    let eth = unsafe { &*eth };
    let l4 = match [eth[12], eth[13]] {
        [0x08, 0x00] => {
            let ip = bytes_at::<IPV4_HLEN>(ctx, ETH_HLEN)?;
            // SAFETY: as above.
            let ip = unsafe { &*ip };
            // Version 4, IHL 5, UDP; MF clear and fragment offset 0 (DF may be set).
            if ip[0] != 0x45 || ip[9] != 17 || ip[6] & 0x3f != 0 || ip[7] != 0 {
                return None;
            }
            ETH_HLEN + IPV4_HLEN
        }
        [0x86, 0xDD] => {
            let ip = bytes_at::<IPV6_HLEN>(ctx, ETH_HLEN)?;
            // SAFETY: as above.
            let ip = unsafe { &*ip };
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return None;
            }
            ETH_HLEN + IPV6_HLEN
        }
        _ => return None,
    };
    let udp = bytes_at::<8>(ctx, l4)?;
    // SAFETY: as above.
    let udp = unsafe { &*udp };
    Some(u16::from_be_bytes([udp[2], udp[3]]))
}
