//! Proves the media thread's per-packet path allocates nothing, on each socket layer:
//! after a warm-up, 2,000 ICE checks received, handed to the engine and answered through
//! the socket layer (io_uring: the provided buffer ring, a send slot and a SendMsg) add
//! no allocation on the media thread. The counting allocator counts only allocations
//! made by the thread named `relay-sfu` (found by its kernel thread id).
//!
//! Its own binary: the counting `#[global_allocator]` can exist only once per binary.

use std::net::UdpSocket;
use std::time::Duration;

use relay::config::BackendChoice;
use relay::sfu::control::Command;
use relay::stun::TransactionId;

#[path = "common/sfu_runtime_fixture.rs"]
mod fixture;

#[path = "common/thread_alloc.rs"]
mod thread_alloc;

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
    thread_alloc::watch(thread_alloc::thread_tid("relay-sfu"));
    let before = thread_alloc::allocations();
    for i in 0..MEASURED {
        exchange(WARM_UP + i);
    }
    let allocs = thread_alloc::allocations() - before;
    // Positive control: adding a transport does allocate on the media thread, and the
    // counter sees it (so the zero above is not a counter that never counts).
    let before = thread_alloc::allocations();
    run.commands
        .send(Command::AddTransport(fixture::spec(2)))
        .expect("command");
    std::thread::sleep(Duration::from_millis(100));
    let control = thread_alloc::allocations() - before;
    assert!(
        control > 0,
        "the counter sees the media thread's allocations"
    );
    thread_alloc::watch(0);
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
