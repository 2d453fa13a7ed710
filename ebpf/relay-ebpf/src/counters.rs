//! Per-CPU counters of what the program did with each frame (indices in
//! `relay_common::counter`). Per-CPU so that counting never contends between cores;
//! userspace sums the CPUs.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use relay_common::counter;

#[map(name = "RELAY_COUNTERS")]
static RELAY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Adds one to counter `index` of this CPU.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = RELAY_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful map lookup of this CPU's slot; XDP
        // programs are not preempted on a CPU, so no other writer races this slot.
        unsafe { *slot += 1 };
    }
}
