//! Proves the media thread's per-packet path allocates nothing, on each socket layer:
//! after a warm-up, 2,000 ICE checks received, handed to the engine and answered through
//! the socket layer (io_uring: the provided buffer ring, a send slot and a SendMsg) add
//! no allocation on the media thread. The counting allocator counts only allocations
//! made by the thread named `relay-sfu` (found by its kernel thread id).
//!
//! Its own binary: the counting `#[global_allocator]` can exist only once per binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use relay::config::BackendChoice;
use relay::sfu::control::Command;
use relay::stun::TransactionId;

#[path = "common/sfu_runtime_fixture.rs"]
mod fixture;

struct Counting;

/// The kernel thread id of the media thread (0: none yet).
static MEDIA_TID: AtomicI32 = AtomicI32::new(0);
static MEDIA_ALLOCS: AtomicU64 = AtomicU64::new(0);

#[inline]
fn note() {
    let tid = MEDIA_TID.load(Ordering::Relaxed);
    // SAFETY: gettid has no preconditions and cannot fail.
    if tid != 0 && unsafe { libc::gettid() } == tid {
        MEDIA_ALLOCS.fetch_add(1, Ordering::Relaxed);
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

/// The thread id of this process's `relay-sfu` thread.
fn media_thread_tid() -> i32 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    let mut found = Vec::new();
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "relay-sfu" {
            found.push(t.file_name().to_string_lossy().parse::<i32>().expect("tid"));
        }
    }
    assert_eq!(found.len(), 1, "exactly one media thread is running");
    found[0]
}

const WARM_UP: u32 = 200;
const MEASURED: u32 = 2_000;

/// Allocations on the media thread while it answers `MEASURED` checks after a warm-up.
fn allocations_per_check_path(choice: BackendChoice) -> Option<u64> {
    let run = fixture::start(choice)?;
    let sfu = run.runtime.local_addr();
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    run.commands
        .send(Command::AddTransport(fixture::spec(1)))
        .expect("command");
    let id = TransactionId([5; 12]);
    let first = fixture::first_answer(&client, sfu, id);
    fixture::check_answer(&first, &id, client.local_addr().expect("addr"));
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut req = [0u8; 512];
    let mut buf = [0u8; 2048];
    let mut exchange = |i: u32| {
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&i.to_be_bytes());
        let n =
            fixture::binding_request(&mut req, fixture::UFRAG, fixture::PWD, TransactionId(tid));
        client.send_to(&req[..n], sfu).expect("send");
        let (m, _) = client
            .recv_from(&mut buf)
            .expect("an answer to every check");
        assert_eq!(&buf[8..20], &tid, "the answer to this check");
        assert!(m > 20);
    };
    for i in 0..WARM_UP {
        exchange(i);
    }
    MEDIA_TID.store(media_thread_tid(), Ordering::SeqCst);
    let before = MEDIA_ALLOCS.load(Ordering::SeqCst);
    for i in 0..MEASURED {
        exchange(WARM_UP + i);
    }
    let allocs = MEDIA_ALLOCS.load(Ordering::SeqCst) - before;
    // Positive control: adding a transport does allocate on the media thread, and the
    // counter sees it (so the zero above is not a counter that never counts).
    let before = MEDIA_ALLOCS.load(Ordering::SeqCst);
    run.commands
        .send(Command::AddTransport(fixture::spec(2)))
        .expect("command");
    std::thread::sleep(Duration::from_millis(100));
    let control = MEDIA_ALLOCS.load(Ordering::SeqCst) - before;
    assert!(
        control > 0,
        "the counter sees the media thread's allocations"
    );
    MEDIA_TID.store(0, Ordering::SeqCst);
    let io = run.runtime.io_stats();
    assert_eq!(io.send_slot_full, 0);
    run.runtime.shutdown();
    Some(allocs)
}

// One test function: both backends run one after the other (the thread lookup expects
// a single media thread).
#[test]
fn answering_ice_checks_allocates_nothing_on_the_media_thread() {
    for choice in [BackendChoice::IoUring, BackendChoice::Portable] {
        if let Some(allocs) = allocations_per_check_path(choice) {
            assert_eq!(
                allocs, 0,
                "{MEASURED} checks answered with {choice:?} allocated {allocs} times on the media thread"
            );
        }
    }
}
