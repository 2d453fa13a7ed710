//! Proves the media thread's ICE-TCP path allocates nothing per packet, on each socket
//! layer: after a warm-up on one connection, 2,000 framed ICE checks (sent in bursts of
//! five frames per write, so reads end inside frames) are reassembled, handed to the
//! engine and answered, framed, over the same connection without an allocation on the
//! media thread. Once the connection exists its buffers exist; nothing more is needed.
//!
//! Its own binary: the counting `#[global_allocator]` can exist only once per binary.

use std::io::{Read, Write};
use std::net::TcpStream;
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
const BURST: u32 = 5;

fn framed_check(buf: &mut Vec<u8>, i: u32) {
    let mut tid = [0u8; 12];
    tid[..4].copy_from_slice(&i.to_be_bytes());
    let mut req = [0u8; 512];
    let n = fixture::binding_request(&mut req, fixture::UFRAG, fixture::PWD, TransactionId(tid));
    buf.extend_from_slice(&u16::try_from(n).expect("short").to_be_bytes());
    buf.extend_from_slice(&req[..n]);
}

/// Sends checks `from..from + BURST` in one write and reads their framed answers.
fn burst(s: &mut TcpStream, from: u32) {
    let mut out = Vec::new();
    for i in from..from + BURST {
        framed_check(&mut out, i);
    }
    s.write_all(&out).expect("write");
    for i in from..from + BURST {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("an answer to every check");
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut answer).expect("the whole answer");
        assert_eq!(&answer[8..12], &i.to_be_bytes(), "the answer to this check");
    }
}

/// Allocations on the media thread while it answers `MEASURED` framed checks.
fn allocations_per_tcp_check(choice: BackendChoice) -> Option<u64> {
    let run = fixture::start(choice)?;
    let to = run.runtime.tcp_addr().expect("TCP is on");
    run.commands
        .send(Command::AddTransport(fixture::spec(1)))
        .expect("command");
    std::thread::sleep(Duration::from_millis(100));
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    for i in (0..WARM_UP).step_by(BURST as usize) {
        burst(&mut s, i);
    }
    thread_alloc::watch(thread_alloc::thread_tid("relay-sfu"));
    let before = thread_alloc::allocations();
    for i in (WARM_UP..WARM_UP + MEASURED).step_by(BURST as usize) {
        burst(&mut s, i);
    }
    let allocs = thread_alloc::allocations() - before;
    // Positive control: a new connection allocates its buffers on the media thread, and
    // the counter sees it.
    let before = thread_alloc::allocations();
    let mut other = TcpStream::connect(to).expect("connect");
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    burst(&mut other, 900_000);
    let control = thread_alloc::allocations() - before;
    assert!(
        control > 0,
        "the counter sees the media thread's allocations"
    );
    thread_alloc::watch(0);
    let io = run.runtime.io_stats();
    assert_eq!((io.tcp_send_drops, io.tcp_frame_errors), (0, 0), "{io:?}");
    run.runtime.shutdown();
    Some(allocs)
}

// One test function: both backends run one after the other (the thread lookup expects
// a single media thread).
#[test]
fn answering_framed_ice_checks_over_tcp_allocates_nothing_on_the_media_thread() {
    for choice in [BackendChoice::IoUring, BackendChoice::Portable] {
        if let Some(allocs) = allocations_per_tcp_check(choice) {
            assert_eq!(
                allocs, 0,
                "{MEASURED} framed checks answered with {choice:?} allocated {allocs} times on the media thread"
            );
        }
    }
}
