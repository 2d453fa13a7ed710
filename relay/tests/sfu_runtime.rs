//! The SFU media thread over real sockets, on each socket layer: a transport added by
//! command answers a browser's ICE check (a real datagram in, a real signed answer out),
//! an unknown ufrag gets no answer, the stats name the backend, and shutdown joins within
//! a second. io_uring is skipped, with the reason printed, where the kernel refuses it.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use relay::config::BackendChoice;
use relay::sfu::control::Command;
use relay::sfu::runtime::MediaBackend;
use relay::stun::TransactionId;

#[path = "common/sfu_runtime_fixture.rs"]
mod fixture;

/// One runtime at a time in this binary: the idle test finds its thread by name.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn answers_ice_checks(choice: BackendChoice, expect: MediaBackend) {
    let _one = serial();
    let Some(run) = fixture::start(choice) else {
        return;
    };
    assert_eq!(run.runtime.backend(), expect, "the backend asked for");
    let sfu = run.runtime.local_addr();
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let me = client.local_addr().expect("addr");

    // Nobody has this ufrag yet: no answer.
    let mut req = [0u8; 512];
    let n = fixture::binding_request(&mut req, "nobody", fixture::PWD, TransactionId([3; 12]));
    client.send_to(&req[..n], sfu).expect("send");
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    assert!(
        client.recv_from(&mut buf).is_err(),
        "an unknown ufrag is not answered"
    );

    run.commands
        .send(Command::AddTransport(fixture::spec(1)))
        .expect("command");
    let id = TransactionId([5; 12]);
    let answer = fixture::first_answer(&client, sfu, id);
    fixture::check_answer(&answer, &id, me);

    // Many checks in a row, each answered (the loop keeps receiving and sending).
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    for i in 0..200u32 {
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&i.to_be_bytes());
        let id = TransactionId(tid);
        let n = fixture::binding_request(&mut req, fixture::UFRAG, fixture::PWD, id);
        client.send_to(&req[..n], sfu).expect("send");
        let (m, _) = client
            .recv_from(&mut buf)
            .expect("an answer to every check");
        fixture::check_answer(&buf[..m], &id, me);
    }

    // The engine's counters are published every 100 ms.
    std::thread::sleep(Duration::from_millis(250));
    let (engine, send_errors) = run.runtime.stats();
    assert!(engine.datagrams_in >= 202, "{engine:?}");
    assert_eq!(send_errors, 0);
    let io = run.runtime.io_stats();
    assert_eq!(io.backend, expect);
    assert_eq!(io.send_slot_full, 0);
    assert_eq!(io.recv_drops, 0);

    let t = Instant::now();
    run.runtime.shutdown();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}",
        t.elapsed()
    );
}

#[test]
fn portable_poll_loop_answers_ice_checks() {
    answers_ice_checks(BackendChoice::Portable, MediaBackend::Portable);
}

#[test]
fn io_uring_loop_answers_ice_checks() {
    answers_ice_checks(BackendChoice::IoUring, MediaBackend::IoUring);
}

#[test]
fn auto_picks_io_uring_where_the_kernel_permits_it() {
    let _one = serial();
    let expect = match relay::dataplane::select_backend(BackendChoice::IoUring) {
        Ok(_) => MediaBackend::IoUring,
        Err(_) => MediaBackend::Portable,
    };
    let run = fixture::start(BackendChoice::Auto).expect("auto always starts");
    assert_eq!(run.runtime.backend(), expect);
}

/// CPU time (user + system, in clock ticks) the thread named `relay-sfu` used so far.
fn media_thread_ticks() -> u64 {
    for t in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "relay-sfu" {
            let stat = std::fs::read_to_string(t.path().join("stat")).expect("stat");
            // Fields after the command name (which ends with ')'): utime is the 12th and
            // stime the 13th of them.
            let rest = &stat[stat.rfind(')').expect("comm") + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            return f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        }
    }
    panic!("no relay-sfu thread");
}

#[test]
fn an_idle_media_thread_sleeps() {
    let _one = serial();
    for choice in [BackendChoice::IoUring, BackendChoice::Portable] {
        let Some(run) = fixture::start(choice) else {
            continue;
        };
        run.commands
            .send(Command::AddTransport(fixture::spec(1)))
            .expect("command");
        std::thread::sleep(Duration::from_millis(100));
        let before = media_thread_ticks();
        std::thread::sleep(Duration::from_secs(1));
        let used = media_thread_ticks() - before;
        // 100 ticks = one busy core for the second; waking every 10 ms costs next to none.
        assert!(
            used < 20,
            "{choice:?}: the idle media thread used {used} ticks in 1 s"
        );
        run.runtime.shutdown();
    }
}
