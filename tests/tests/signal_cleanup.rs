//! A run ended by a signal (Ctrl-C on a bench, a CI timeout's SIGTERM) leaves nothing
//! behind: `relay_e2e::clean_up_on_signal` removes the namespaces with their processes,
//! the bpffs pin directories and the temporary files that Drop would have removed.
//!
//! The test runs itself again as a child (selected by an environment variable) that sets
//! all of these up and waits; the parent sends SIGTERM and checks that everything is gone.
//!
//! Needs root; without it the test prints "skipped: needs root".
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use relay_e2e::{Netns, Process, TempDir, clean_up_on_signal, require_root};

const CHILD: &str = "RELAY_SIGNAL_CLEANUP_CHILD";
const TEST: &str = "a_signal_leaves_nothing_behind";

/// The child: everything a bench makes, then a bounded wait for the signal.
fn child() {
    clean_up_on_signal().unwrap();
    let ns = Netns::new("rls", "s").unwrap();
    let sleeper = Process::new(ns.command("sleep").arg("120").spawn().unwrap());
    let files = TempDir::new("relay-signal-test").unwrap();
    let pin = format!("/sys/fs/bpf/relay-test-{}", ns.name());
    std::fs::create_dir_all(&pin).unwrap();
    let state = std::env::temp_dir().join(format!("relay-test-state-{}.json", ns.name()));
    std::fs::write(&state, "{}").unwrap();
    println!(
        "ready {} {} {} {} {}",
        ns.name(),
        sleeper.id().unwrap(),
        files.path().display(),
        pin,
        state.display()
    );
    thread::sleep(Duration::from_secs(60));
    panic!("no signal came within 60 s");
}

#[test]
fn a_signal_leaves_nothing_behind() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    if !require_root(TEST) {
        return;
    }
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints the test's name before it, on the same line.
            if let Some(at) = line.find("ready ") {
                let _ = tx.send(line[at + "ready ".len()..].to_owned());
            }
        }
    });
    let ready = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(r) => r,
        Err(e) => {
            let _ = proc.kill();
            panic!("the child did not get ready: {e}");
        }
    };
    let parts: Vec<&str> = ready.split(' ').collect();
    let [ns, sleeper, dir, pin, state] = parts[..] else {
        panic!("unexpected ready line {ready:?}");
    };
    let sleeper: i32 = sleeper.parse().unwrap();
    assert!(std::path::Path::new(dir).is_dir());
    assert!(std::path::Path::new(pin).is_dir());

    // SAFETY: sending a signal to our own child has no memory-safety preconditions.
    unsafe { libc::kill(proc.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = proc.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = proc.kill();
            panic!("the child did not exit within 30 s of SIGTERM");
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "exit status after SIGTERM"
    );

    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns)),
        "namespace {ns} still exists"
    );
    for path in [dir, pin, state] {
        assert!(!std::path::Path::new(path).exists(), "{path} still exists");
    }
    // The sleeper was in the namespace: killed (it is not our child, so it does not stay
    // a zombie of ours; give init a moment to reap it).
    let gone = (0..100).any(|_| {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(sleeper, 0) } == 0
            && !std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
                .is_ok_and(|s| s.contains(") Z "));
        if alive {
            thread::sleep(Duration::from_millis(50));
        }
        !alive
    });
    assert!(gone, "the process in the namespace ({sleeper}) still runs");
}
