//! `relay_clock_probe`: the two kernel clocks the TURN rule clock is built from, read
//! for userspace.
//!
//! Never attached. The daemon (`relay/src/xdp/clock.rs`) runs it through
//! `BPF_PROG_TEST_RUN` on a `relay_common::turn::ClockSample` and reads jiffies and
//! CLOCK_MONOTONIC back from `data_out`, to calibrate `TURN_CLOCK` (userspace has no
//! other way to read jiffies).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns},
    programs::XdpContext,
};
use relay_common::turn::ClockSample;

/// Writes the sample: XDP_PASS, or XDP_ABORTED for a frame shorter than a ClockSample.
#[inline(always)]
pub fn probe(ctx: &XdpContext) -> u32 {
    let data = ctx.data();
    if data + core::mem::size_of::<ClockSample>() > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: plain helper calls; jiffies first, so that the monotonic reading is never
    // older than the jiffy it is paired with.
    let (jiffies, mono_ns) = unsafe { (bpf_jiffies64(), bpf_ktime_get_ns()) };
    // SAFETY: the 16 bytes lie inside the packet (checked above); packet memory may be
    // written unaligned.
    unsafe {
        core::ptr::write_unaligned(data as *mut u64, jiffies);
        core::ptr::write_unaligned((data + 8) as *mut u64, mono_ns);
    }
    xdp_action::XDP_PASS
}
