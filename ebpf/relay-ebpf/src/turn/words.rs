//! Word-wide access to packet, map and stack memory for the TURN path.
//!
//! Why: byte-wise copies of 16-byte addresses and byte-wise header building made the
//! first version of this path cost 700–900 ns per frame, most of it in LLVM's byte-loop
//! `memset`/`memmove` calls. Here addresses are four `u32` words holding the network-order
//! bytes as they lie in memory ("memory order"), every header is read and written a word
//! at a time (the crate is built with `allows-misaligned-mem-access`: IP headers sit at
//! 2-byte-aligned offsets), and the Internet checksum is summed in registers over those
//! same words, so a sum stored back in native order is the checksum's wire bytes.

/// A 16-byte address of the key form (IPv4 mapped), as four memory-order words.
pub type Addr = [u32; 4];

/// The third word of an IPv4-mapped address: bytes `00 00 ff ff`.
pub const MAPPED_W2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// The STUN magic cookie as a memory-order word.
pub const MAGIC_W: u32 = u32::from_ne_bytes([0x21, 0x12, 0xA4, 0x42]);

/// Reads a word at `p`.
///
/// # Safety
/// `p` must be valid for 4 bytes of reads, and (packet memory) bounds-checked for the
/// verifier.
#[inline(always)]
pub unsafe fn rd32(p: usize) -> u32 {
    // SAFETY: forwarded from the contract; unaligned reads are allowed (see module doc).
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

/// Reads a 16-bit word at `p` (memory order).
///
/// # Safety
/// As [`rd32`], for 2 bytes.
#[inline(always)]
pub unsafe fn rd16(p: usize) -> u16 {
    // SAFETY: as above.
    unsafe { core::ptr::read_unaligned(p as *const u16) }
}

/// Writes a word at `p`.
///
/// # Safety
/// `p` must be valid for 4 bytes of writes, and (packet memory) bounds-checked.
#[inline(always)]
pub unsafe fn wr32(p: usize, v: u32) {
    // SAFETY: forwarded from the contract.
    unsafe { core::ptr::write_unaligned(p as *mut u32, v) }
}

/// Writes a 16-bit word at `p`.
///
/// # Safety
/// As [`wr32`], for 2 bytes.
#[inline(always)]
pub unsafe fn wr16(p: usize, v: u16) {
    // SAFETY: forwarded from the contract.
    unsafe { core::ptr::write_unaligned(p as *mut u16, v) }
}

/// Reads a 16-byte address at `p`.
///
/// # Safety
/// As [`rd32`], for 16 bytes.
#[inline(always)]
pub unsafe fn rd_addr(p: usize) -> Addr {
    // SAFETY: forwarded from the contract.
    unsafe { [rd32(p), rd32(p + 4), rd32(p + 8), rd32(p + 12)] }
}

/// Writes a 16-byte address at `p`.
///
/// # Safety
/// As [`wr32`], for 16 bytes.
#[inline(always)]
pub unsafe fn wr_addr(p: usize, a: &Addr) {
    // SAFETY: forwarded from the contract.
    unsafe {
        wr32(p, a[0]);
        wr32(p + 4, a[1]);
        wr32(p + 8, a[2]);
        wr32(p + 12, a[3]);
    }
}

/// The key form of an IPv4 address word.
#[inline(always)]
pub fn mapped(v4: u32) -> Addr {
    [0, 0, MAPPED_W2, v4]
}

/// Whether a key-form address is IPv4-mapped.
#[inline(always)]
pub fn is_mapped(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == MAPPED_W2
}

/// Whether two addresses are equal.
#[inline(always)]
pub fn same(a: &Addr, b: &Addr) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// A host-order 16-bit value as the memory-order word of its wire (big-endian) bytes.
#[inline(always)]
pub fn be(v: u16) -> u16 {
    u16::from_ne_bytes(v.to_be_bytes())
}

/// The host-order value of a memory-order 16-bit word holding wire bytes.
#[inline(always)]
pub fn host(v: u16) -> u16 {
    u16::from_be_bytes(v.to_ne_bytes())
}

/// Ones' complement sum of the words of an address as it appears in a pseudo-header:
/// all four words for IPv6, the last one for IPv4.
#[inline(always)]
pub fn addr_sum(a: &Addr, v6: bool) -> u64 {
    if v6 {
        a[0] as u64 + a[1] as u64 + a[2] as u64 + a[3] as u64
    } else {
        a[3] as u64
    }
}

/// The same terms negated (ones' complement: each word's complement).
#[inline(always)]
pub fn addr_neg(a: &Addr, v6: bool) -> u64 {
    if v6 {
        !a[0] as u64 + !a[1] as u64 + !a[2] as u64 + !a[3] as u64
    } else {
        !a[3] as u64
    }
}

/// Folds a 64-bit sum of 32-bit words to the 16-bit ones' complement sum.
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Mask of a variable packet offset (the verifier needs a bound; a linear XDP frame is at
/// most a page, far smaller).
pub const OFF_MASK: usize = 0x3fff;

/// The address of the `N` packet bytes at offset `at`, if the packet is long enough.
///
/// The length is checked twice: on plain numbers (so that the offset is known to be in
/// the frame, which is smaller than [`OFF_MASK`]), then on the masked pointer itself,
/// which is what the verifier needs (a bounded offset, and a comparison of the very
/// register that is dereferenced). The offset goes through a volatile stack slot in
/// between: otherwise LLVM proves the two checks equal and drops the second, or folds the
/// mask away and compares another register.
#[inline(always)]
pub fn packet_ptr<const N: usize>(
    ctx: &aya_ebpf::programs::XdpContext,
    at: usize,
) -> Option<usize> {
    let data = ctx.data();
    let end = ctx.data_end();
    if at + N > end - data {
        return None;
    }
    // SAFETY: a read of a local.
    let opaque = unsafe { core::ptr::read_volatile(&at) };
    let p = data + (opaque & OFF_MASK);
    if p + N > end {
        return None;
    }
    Some(p)
}
