//! Internet checksum (RFC 1071) through the `bpf_csum_diff` helper: it sums any
//! multiple of 4 bytes (up to 512) of packet, stack or map memory in one call, which
//! keeps variable-length sums out of the verifier's loop analysis.
//!
//! Sums are kept in "memory order": every term is added as it lies in memory, so the
//! folded result, stored back with native byte order, is the checksum's wire bytes.

use aya_ebpf::helpers::generated::bpf_csum_diff;

/// Adds `size` bytes at `ptr` (a multiple of 4, at most 512) to the running sum `seed`.
/// Returns `None` if the helper refuses (bad size).
///
/// # Safety
/// `ptr` must point at `size` bytes the verifier knows to be readable.
#[inline(always)]
pub unsafe fn add(ptr: *const u8, size: u32, seed: u32) -> Option<u32> {
    // SAFETY: `from` is null with size 0 (allowed by the helper); `to` is readable for
    // `size` bytes per this function's contract; the helper only reads.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr as *mut u32, size, seed) };
    if r < 0 { None } else { Some(r as u32) }
}

/// Folds a 32-bit ones' complement sum to 16 bits (end-around carry).
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum field value for a folded sum computed with the field at zero: the
/// complement, with 0 sent as 0xFFFF (UDP), as native-order bytes for memory.
#[inline(always)]
pub fn finish(sum: u32) -> [u8; 2] {
    let c = !fold(sum);
    if c == 0 {
        [0xff, 0xff]
    } else {
        c.to_ne_bytes()
    }
}
