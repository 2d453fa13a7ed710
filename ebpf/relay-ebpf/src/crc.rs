//! CRC-32 (IEEE 802.3, reflected: the CRC STUN's FINGERPRINT uses), slicing-by-4: four
//! table lookups per 32-bit word instead of four byte steps. The tables are computed at
//! compile time and live in `.rodata`; every index is masked so the verifier sees it
//! stay inside them.

const fn make_tables() -> [[u32; 256]; 4] {
    let mut t = [[0u32; 256]; 4];
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
        t[0][n] = c;
        n += 1;
    }
    let mut s = 1;
    while s < 4 {
        let mut n = 0;
        while n < 256 {
            let prev = t[s - 1][n];
            t[s][n] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            n += 1;
        }
        s += 1;
    }
    t
}

static CRC_TABLES: [[u32; 256]; 4] = make_tables();

#[inline(always)]
fn lookup(table: usize, index: u32) -> u32 {
    // SAFETY: `table` is a constant below 4 at every call site and `index` is masked to
    // 0..=255, so the read stays inside the 4 x 256 tables.
    unsafe {
        *CRC_TABLES
            .as_ptr()
            .cast::<u32>()
            .add(table * 256 + (index & 0xff) as usize)
    }
}

/// CRC-32 of `buf[..len]`, where `len` is a multiple of 4 and at most `MAX`. Offsets are
/// masked with `MASK`, so at most `MASK + 1` bytes from `buf` are ever read. The loop
/// runs at most `MAX / 4` times whatever `len` is, so the verifier can bound it.
///
/// # Safety
/// `buf` must point at `MASK + 1` readable bytes.
#[inline(always)]
pub unsafe fn crc32<const MAX: usize, const MASK: usize>(buf: *const u8, len: usize) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    let mut i = 0usize;
    while i < MAX {
        if i >= len {
            break;
        }
        let at = |k: usize| {
            // SAFETY: the offset is masked into the MASK + 1 readable bytes.
            u32::from(unsafe { *buf.add((i + k) & MASK) })
        };
        crc ^= at(0) | (at(1) << 8) | (at(2) << 16) | (at(3) << 24);
        crc = lookup(3, crc) ^ lookup(2, crc >> 8) ^ lookup(1, crc >> 16) ^ lookup(0, crc >> 24);
        i += 4;
    }
    !crc
}

/// One step of the CRC-32 (before the final complement) over a word of four bytes in
/// memory order, starting from `0xFFFF_FFFF`.
#[inline(always)]
pub fn step(crc: u32, word: u32) -> u32 {
    let c = crc ^ word;
    lookup(3, c) ^ lookup(2, c >> 8) ^ lookup(1, c >> 16) ^ lookup(0, c >> 24)
}
