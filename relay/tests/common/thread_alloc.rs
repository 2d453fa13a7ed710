//! A `#[global_allocator]` that counts the allocations of one other thread, named by its
//! kernel thread id: for the tests that prove a worker thread the library starts itself
//! (so a thread-local counter of the test cannot reach it) allocates nothing per packet.
//! Include it with `#[path]` only from such a test binary (a binary has one global
//! allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// The global allocator of the test binary: `System`, counting the watched thread's
/// allocations.
pub struct Counting;

/// The kernel thread id being watched (0: none).
static WATCHED_TID: AtomicI32 = AtomicI32::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[inline]
fn note() {
    let tid = WATCHED_TID.load(Ordering::Relaxed);
    // SAFETY: gettid has no preconditions and cannot fail.
    if tid != 0 && unsafe { libc::gettid() } == tid {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no
// effect on the memory returned and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts the allocations of thread `tid` from now on (0: of no thread).
pub fn watch(tid: i32) {
    WATCHED_TID.store(tid, Ordering::SeqCst);
}

/// Allocations counted so far (of every thread watched).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// The kernel thread id of this process's only thread named `comm`.
pub fn thread_tid(comm: &str) -> i32 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    let mut found = Vec::new();
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if name.trim_end() == comm {
            found.push(t.file_name().to_string_lossy().parse::<i32>().expect("tid"));
        }
    }
    assert_eq!(found.len(), 1, "exactly one {comm} thread is running");
    found[0]
}
