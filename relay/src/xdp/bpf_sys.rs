//! The few `bpf(2)` commands the per-worker handles ([`super::xsk_steer`],
//! [`super::nexthop`]) issue themselves, on file descriptors they own.
//!
//! Why not aya: its map handles write through `&mut self` (so sharing one between
//! threads needs a lock) and its test run takes the whole program object; a map update
//! or a test run is one syscall that the kernel serialises itself, so these wrappers take
//! `&self`-friendly borrowed descriptors and caller-owned buffers: no lock, no
//! allocation.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `BPF_ANY`: create or update.
pub(crate) const BPF_ANY: u64 = 0;

/// `union bpf_attr` as the `BPF_MAP_*_ELEM` commands read it.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` as the `BPF_MAP_*_BATCH` commands read it.
#[repr(C)]
struct MapBatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` as `BPF_PROG_TEST_RUN` reads it.
#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
/// `attr` must be the attribute layout of `cmd`, and every pointer in it valid for what
/// the kernel does with it under `cmd` for the duration of the call.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: forwarded from the contract; the size passed is the attribute's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `bpf_map_update_elem(map, key, value, flags)`. `K` and `V` must be the map's key and
/// value types (the kernel reads exactly its key and value sizes).
pub(crate) fn map_update<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    key: &K,
    value: &V,
    flags: u64,
) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags,
    };
    // SAFETY: the map-element layout; `key` and `value` are live references of the
    // map's key and value size (the caller's contract), read by the kernel only.
    unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(|_| ())
}

/// `bpf_map_lookup_elem(map, key)` into `value` (for a per-CPU map, `value` must hold
/// one rounded-up value per possible CPU: pass a slice of `V` of that length).
pub(crate) fn map_lookup<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    key: &K,
    value: &mut [V],
) -> io::Result<()> {
    if value.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the map-element layout; `key` is a live reference of the key size, and
    // `value` is writable for the size the caller sized it to (the kernel writes the
    // map's value size, or one value per CPU for per-CPU maps).
    unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.map(|_| ())
}

/// `bpf_map_delete_elem(map, key)`.
pub(crate) fn map_delete<K: aya::Pod>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: the map-element layout; `key` is a live reference of the key size.
    unsafe { sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) }.map(|_| ())
}

/// `BPF_MAP_LOOKUP_BATCH` on an array map (u32 keys): reads the entries after index
/// `after` (from index 0 when None), as many as `keys` holds, into `keys` and `values`
/// (for a per-CPU map `values` holds one rounded-up value per possible CPU per entry:
/// `keys.len() × CPUs` of `V`). Returns how many entries were read; fewer than asked
/// means the array ended. Kernels before 5.6 have no batch commands (EINVAL).
pub(crate) fn array_lookup_batch<V: aya::Pod>(
    map: BorrowedFd<'_>,
    after: Option<u32>,
    keys: &mut [u32],
    values: &mut [V],
) -> io::Result<usize> {
    let count = u32::try_from(keys.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    if count == 0 || values.len() < keys.len() || !values.len().is_multiple_of(keys.len()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let start = after.unwrap_or(0);
    let mut next = 0u32;
    let mut attr = MapBatchAttr {
        in_batch: after.map_or(0, |_| &start as *const u32 as u64),
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the batch layout; `start` and `next` are live u32s (the array's key size),
    // `keys` is writable for `count` keys and `values` for `count` entries of the sizes
    // the caller's contract gives (one value, or one per possible CPU); all outlive the
    // call.
    match unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(_) => Ok(attr.count as usize),
        // The array ended within this batch: `count` says how many were read.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(attr.count as usize),
        Err(e) => Err(e),
    }
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TestRunResult {
    /// The program's return value (an XDP action).
    pub(crate) retval: u32,
    /// Bytes written to `data_out`.
    pub(crate) data_size_out: u32,
}

/// Runs `prog` once on `data_in` (no context: an XDP program then sees the calling
/// thread's network namespace's `lo`, queue 0), the resulting frame written to
/// `data_out` (which must be at least as long as the frame the program leaves).
pub(crate) fn prog_test_run<I: aya::Pod, O: aya::Pod>(
    prog: BorrowedFd<'_>,
    data_in: &I,
    data_out: &mut O,
) -> io::Result<TestRunResult> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: size_of::<I>() as u32,
        data_size_out: size_of::<O>() as u32,
        data_in: data_in as *const I as u64,
        data_out: data_out as *mut O as u64,
        repeat: 1,
        duration: 0,
        ctx_size_in: 0,
        ctx_size_out: 0,
        ctx_in: 0,
        ctx_out: 0,
        flags: 0,
        cpu: 0,
        batch_size: 0,
        _pad: 0,
    };
    // SAFETY: the test-run layout; `data_in` is readable for `data_size_in` bytes and
    // `data_out` writable for `data_size_out` bytes (the kernel writes at most that and
    // fails with ENOSPC rather than overflow); both live across the call.
    unsafe { sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(TestRunResult {
        retval: attr.retval,
        data_size_out: attr.data_size_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        // include/uapi/linux/bpf.h: map_fd at 0, key at 8, value at 16, flags at 24;
        // test: prog_fd 0, data_in 16, data_out 24, repeat 32, ctx_in 48, flags 64,
        // batch_size 72.
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(std::mem::offset_of!(MapElemAttr, key), 8);
        assert_eq!(std::mem::offset_of!(MapElemAttr, flags), 24);
        assert_eq!(std::mem::offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(std::mem::offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(std::mem::offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(std::mem::offset_of!(TestRunAttr, flags), 64);
        assert_eq!(std::mem::offset_of!(TestRunAttr, batch_size), 72);
        assert_eq!(size_of::<TestRunAttr>(), 80);
        // batch: in_batch 0, out_batch 8, keys 16, values 24, count 32, map_fd 36,
        // elem_flags 40, flags 48.
        assert_eq!(std::mem::offset_of!(MapBatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(MapBatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(MapBatchAttr, flags), 48);
        assert_eq!(size_of::<MapBatchAttr>(), 56);
    }

    #[test]
    fn a_descriptor_that_is_no_map_is_an_error() {
        use std::os::fd::AsFd as _;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // bpf(2) refuses unprivileged callers before it looks at the descriptor.
            eprintln!("skipped: needs root");
            return;
        }
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let e = map_update(file.as_fd(), &0u32, &0u32, BPF_ANY).expect_err("not a map");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let mut v = [0u32; 1];
        let e = map_lookup(file.as_fd(), &0u32, &mut v).expect_err("not a map");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let e = map_lookup::<u32, u32>(file.as_fd(), &0u32, &mut []).expect_err("no room");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }
}
