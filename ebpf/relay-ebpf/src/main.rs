//! The relay's XDP programs.
//!
//! `relay_xdp` relays TURN traffic per the rule maps of `relay_common::turn` (issue 4,
//! [`turn`]; only while `TURN_SETTINGS` enables it), answers STUN Binding requests on the
//! ports in `STUN_PORTS` inside the kernel (contracts 1 and 2 of issue 2) and passes
//! every other frame up unchanged;
//! frames it would pass up go to an AF_XDP socket instead when userspace asked for
//! their UDP port ([`xsk`]; off unless `TURN_XSK_WORKERS` is set);
//! `relay_xdp_pass` passes everything (attached to the peer of a veth so that frames
//! XDP_TX'ed into the pair are received there);
//! `relay_fib_probe` is never attached: userspace runs it through `BPF_PROG_TEST_RUN` to
//! ask the FIB what the TURN fast path would ask ([`fib_probe`]); `relay_clock_probe`
//! likewise reads the kernel clocks the TURN rule clock is calibrated from
//! ([`clock_probe`]).
//!
//! Modules: [`turn`] (TURN relaying), [`parse`] (Ethernet/IP/UDP), [`stun`] (Binding
//! checks and the answer frame), [`xsk`] (AF_XDP steering), [`fib_probe`],
//! [`csum`] (Internet checksum), [`crc`] (FINGERPRINT CRC-32), [`counters`].
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod clock_probe;
mod counters;
mod crc;
mod csum;
mod fib_probe;
mod parse;
mod stun;
mod turn;
mod xsk;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use relay_common::counter::{
    BAD_CHECKSUM_PASSED, OTHER_PASSED, STUN_ANSWERED_V4, STUN_ANSWERED_V6, STUN_PASSED,
};

use crate::stun::Scratch;

/// One scratch area per CPU (too big for the 512-byte BPF stack).
#[map(name = "RELAY_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    let turn = turn::relay_packed(&ctx);
    if turn < turn::PASS_COUNTED {
        if turn == xdp_action::XDP_PASS {
            return xsk::steer_or_pass(&ctx);
        }
        return turn;
    }
    if turn != turn::NOT_TURN {
        counters::bump(turn & 0xff);
        return xsk::steer_or_pass(&ctx);
    }
    // Every frame the kernel does not handle (answer or relay) is passed up unchanged,
    // or steered to an AF_XDP socket whose owner takes the place of the stack.
    match stun_path(&ctx) {
        xdp_action::XDP_PASS => xsk::steer_or_pass(&ctx),
        action => action,
    }
}

#[xdp]
pub fn relay_fib_probe(ctx: XdpContext) -> u32 {
    fib_probe::probe(&ctx)
}

#[xdp]
pub fn relay_clock_probe(ctx: XdpContext) -> u32 {
    clock_probe::probe(&ctx)
}

/// The STUN Binding path, a separate BPF function so that its stack frame and the TURN
/// path's are never on the stack together (the verifier caps the sum at 512 bytes).
#[inline(never)]
fn stun_path(ctx: &XdpContext) -> u32 {
    match answer_binding(ctx) {
        Ok(action) => action,
        Err(counter) => {
            counters::bump(counter);
            xdp_action::XDP_PASS
        }
    }
}

#[xdp]
pub fn relay_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Answers the frame if it is a Binding request the kernel handles: `Ok(action)` once
/// the frame was rewritten, `Err(counter)` to pass it up unchanged.
#[inline(always)]
fn answer_binding(ctx: &XdpContext) -> Result<u32, u32> {
    let udp = parse::parse(ctx)?;
    let l4 = if udp.v6 { parse::L4_V6 } else { parse::L4_V4 };
    let stun_off = l4 + parse::UDP_HLEN;
    let stun_len = udp.udp_len - parse::UDP_HLEN;

    let header = parse::bytes_at::<{ stun::HEADER_LEN }>(ctx, stun_off).ok_or(STUN_PASSED)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    if !stun::is_binding_request(unsafe { &*header }, stun_len) {
        return Err(STUN_PASSED);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(OTHER_PASSED)?;
    // SAFETY: the pointer comes from a successful lookup of this CPU's scratch entry.
    let msg = unsafe { (*scratch).msg.as_mut_ptr() };
    // SAFETY: as above.
    let frame = unsafe { (*scratch).frame.as_mut_ptr() };

    // Copy the message out of the packet; 20 <= stun_len <= XDP_MAX_STUN_LEN < buffer.
    let n = stun_len & stun::MSG_MASK;
    if n < stun::HEADER_LEN {
        return Err(STUN_PASSED);
    }
    // SAFETY: `msg` has MSG_MASK + 1 >= n writable bytes; the helper bounds-checks the
    // packet side itself.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, stun_off as u32, msg.cast(), n as u32) } != 0 {
        return Err(STUN_PASSED);
    }

    // UDP checksum of the request (an IPv4 zero checksum means "none").
    if !udp.no_checksum && !udp_checksum_ok(ctx, udp.v6, l4, msg, n)? {
        return Err(BAD_CHECKSUM_PASSED);
    }
    // SAFETY: `msg` points at the whole scratch message buffer.
    if !unsafe { stun::attributes_ok(msg, n) } {
        return Err(STUN_PASSED);
    }

    let peer = read_peer(ctx, udp.v6).ok_or(STUN_PASSED)?;
    let mut txid = [0u8; 12];
    let mut i = 0;
    while i < 12 {
        // SAFETY: 8 + i < 20 <= n bytes of the message were loaded.
        txid[i] = unsafe { *msg.add(8 + i) };
        i += 1;
    }
    // SAFETY: `frame` is the FRAME_CAP-byte scratch frame buffer.
    let total = unsafe { stun::build_answer(frame, udp.v6, &peer, &txid) }.ok_or(STUN_PASSED)?;

    // Resize the packet at its head (works in every mode and in BPF_PROG_TEST_RUN; the
    // tail may have no room), dropping any Ethernet padding too.
    let delta = udp.frame_len as i32 - total as i32;
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(STUN_PASSED);
    }
    let written = if udp.v6 {
        store(ctx, frame, stun::ANSWER_V6)
    } else {
        store(ctx, frame, stun::ANSWER_V4)
    };
    if !written {
        // The packet was already resized: it cannot be passed up unchanged any more.
        return Ok(xdp_action::XDP_ABORTED);
    }
    counters::bump(if udp.v6 {
        STUN_ANSWERED_V6
    } else {
        STUN_ANSWERED_V4
    });
    Ok(xdp_action::XDP_TX)
}

#[inline(always)]
fn store(ctx: &XdpContext, frame: *mut u8, len: usize) -> bool {
    // SAFETY: `frame` holds FRAME_CAP >= len readable bytes; the helper checks the packet.
    unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, frame.cast(), len as u32) == 0 }
}

/// Verifies the request's UDP checksum: pseudo-header + UDP header from the packet,
/// payload from the scratch copy (`n` bytes, a multiple of 4).
#[inline(always)]
fn udp_checksum_ok(
    ctx: &XdpContext,
    v6: bool,
    l4: usize,
    msg: *const u8,
    n: usize,
) -> Result<bool, u32> {
    let udp_hdr = parse::bytes_at::<{ parse::UDP_HLEN }>(ctx, l4).ok_or(STUN_PASSED)?;
    // SAFETY: `msg` holds `n` loaded bytes (n <= 512, a multiple of 4).
    let sum = unsafe { csum::add(msg, n as u32, 0) }.ok_or(STUN_PASSED)?;
    // SAFETY: `bytes_at` checked the 8 UDP header bytes.
    let sum = unsafe { csum::add(udp_hdr as *const u8, 8, sum) }.ok_or(STUN_PASSED)?;
    let sum = if v6 {
        let a = parse::bytes_at::<32>(ctx, parse::ETH_HLEN + 8).ok_or(STUN_PASSED)?;
        // SAFETY: `bytes_at` checked the 32 address bytes.
        unsafe { csum::add(a as *const u8, 32, sum) }.ok_or(STUN_PASSED)?
    } else {
        let a = parse::bytes_at::<8>(ctx, parse::ETH_HLEN + 12).ok_or(STUN_PASSED)?;
        // SAFETY: `bytes_at` checked the 8 address bytes.
        unsafe { csum::add(a as *const u8, 8, sum) }.ok_or(STUN_PASSED)?
    };
    let udp_len = n + parse::UDP_HLEN;
    let pseudo = [0u8, 17, (udp_len >> 8) as u8, udp_len as u8];
    // SAFETY: `pseudo` is a 4-byte stack array.
    let sum = unsafe { csum::add(pseudo.as_ptr(), 4, sum) }.ok_or(STUN_PASSED)?;
    Ok(csum::fold(sum) == 0xffff)
}

#[inline(always)]
fn read_peer(ctx: &XdpContext, v6: bool) -> Option<stun::Peer> {
    let eth = parse::bytes_at::<14>(ctx, 0)?;
    // SAFETY: `bytes_at` checked these bytes.
    let eth = unsafe { &*eth };
    let mut peer = stun::Peer {
        dst_mac: [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
        src_mac: [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
        src_ip: [0; 16],
        dst_ip: [0; 16],
        src_port: [0; 2],
        dst_port: [0; 2],
    };
    let l4 = if v6 {
        let ip = parse::bytes_at::<40>(ctx, parse::ETH_HLEN)?;
        // SAFETY: `bytes_at` checked these bytes.
        let ip = unsafe { &*ip };
        peer.src_ip.copy_from_slice(&ip[8..24]);
        peer.dst_ip.copy_from_slice(&ip[24..40]);
        parse::L4_V6
    } else {
        let ip = parse::bytes_at::<20>(ctx, parse::ETH_HLEN)?;
        // SAFETY: `bytes_at` checked these bytes.
        let ip = unsafe { &*ip };
        peer.src_ip[..4].copy_from_slice(&ip[12..16]);
        peer.dst_ip[..4].copy_from_slice(&ip[16..20]);
        parse::L4_V4
    };
    let udp = parse::bytes_at::<8>(ctx, l4)?;
    // SAFETY: `bytes_at` checked these bytes.
    let udp = unsafe { &*udp };
    peer.src_port = [udp[0], udp[1]];
    peer.dst_port = [udp[2], udp[3]];
    Some(peer)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
