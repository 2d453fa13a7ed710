//! CRC-32 (IEEE 802.3, reflected, the polynomial STUN's FINGERPRINT uses), table-driven.
//! The table is computed at compile time and lives in `.rodata`; every index is masked
//! so the verifier can see it stays inside the table.

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = make_table();

/// Feeds one byte into a running (pre-inverted) CRC state.
#[inline(always)]
pub fn step(state: u32, byte: u8) -> u32 {
    let index = ((state ^ byte as u32) & 0xff) as usize;
    // SAFETY: `index` is masked to 0..=255, inside the 256-entry table.
    let entry = unsafe { *CRC_TABLE.as_ptr().add(index) };
    entry ^ (state >> 8)
}

/// CRC-32 of `buf[..len]` where `buf` points at `cap` readable bytes and `len <= MAX`.
/// The loop runs at most `MAX` times whatever `len` is, so the verifier can bound it.
///
/// # Safety
/// `buf` must point at least `MASK + 1` readable bytes.
#[inline(always)]
pub unsafe fn crc32<const MAX: usize, const MASK: usize>(buf: *const u8, len: usize) -> u32 {
    let mut state = 0xFFFF_FFFFu32;
    let mut i = 0usize;
    while i < MAX {
        if i >= len {
            break;
        }
        // SAFETY: `i & MASK` stays below MASK + 1, which the caller guarantees readable.
        let byte = unsafe { *buf.add(i & MASK) };
        state = step(state, byte);
        i += 1;
    }
    !state
}
