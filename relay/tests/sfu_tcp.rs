//! ICE over TCP on a real SFU media worker (RFC 6544 passive, RFC 4571 framing), on each
//! socket layer: the worker listens on TCP at its UDP address and port; a framed ICE
//! check over a TCP connection gets a framed, signed Binding success back over the same
//! connection (also when many checks arrive in one write or one check arrives byte by
//! byte); a framed non-STUN packet is dropped without harm; an oversize frame closes that
//! connection only (counted), while other TCP connections and the UDP path keep working;
//! a connection that never sends a valid check (nothing, or a check failing
//! authentication) is closed after ~10 s (counted); beyond
//! the per-worker cap a connection is closed at once (counted); a peer that stops
//! reading gets its answers dropped (counted) once the out-queue is full, never a stuck
//! worker, and receives only whole frames in order; a taken TCP port fails start-up
//! with a message naming it and `sfu.tcp = false`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use relay::config::BackendChoice;
use relay::sfu::control::Command;
use relay::sfu::runtime::{MediaBackend, MediaIoStats, SfuRuntime, TCP_MAX_CONNECTIONS};
use relay::stun::TransactionId;

#[path = "common/sfu_runtime_fixture.rs"]
mod fixture;

/// `packet` with its RFC 4571 length prefix.
fn framed(packet: &[u8]) -> Vec<u8> {
    let len = u16::try_from(packet.len()).expect("short packet");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(packet);
    out
}

/// A framed Binding request for the fixture's transport.
fn framed_check(id: TransactionId) -> Vec<u8> {
    let mut req = [0u8; 512];
    let n = fixture::binding_request(&mut req, fixture::UFRAG, fixture::PWD, id);
    framed(&req[..n])
}

/// Reads one RFC 4571 frame (the stream has a read timeout).
fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn connect(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("TCP connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Sends checks until one is answered (the AddTransport command is applied within ~10 ms).
fn first_tcp_answer(s: &mut TcpStream, id: TransactionId) -> Vec<u8> {
    for _ in 0..25 {
        s.write_all(&framed_check(id)).expect("write");
        if let Ok(answer) = read_frame(s) {
            return answer;
        }
    }
    panic!("no framed answer to the framed check within 5 s");
}

/// Whether the SFU closed `s` within `within` (EOF or reset; a timeout is not).
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The socket layer's counters once `ok` holds for them (they are live atomics, but the
/// connection count changes only when the thread gets to it).
fn io_stats_when(rt: &SfuRuntime, ok: impl Fn(&MediaIoStats) -> bool) -> MediaIoStats {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s = rt.io_stats();
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tcp_checks(choice: BackendChoice, expect: MediaBackend, check_idle: bool) {
    let Some(run) = fixture::start(choice) else {
        return;
    };
    assert_eq!(run.runtime.backend(), expect);
    let udp_addr = run.runtime.local_addr();
    let tcp_addr = run.runtime.tcp_addr().expect("TCP is on");
    assert_eq!(
        tcp_addr, udp_addr,
        "TCP listens on the UDP socket's address and port"
    );

    // Opened first, never sends anything: closed after ~10 s (checked at the end).
    let mut idle = check_idle.then(|| connect(tcp_addr));
    let opened = Instant::now();

    run.commands
        .send(Command::AddTransport(fixture::spec(1)))
        .expect("command");
    let mut a = connect(tcp_addr);
    let me = a.local_addr().expect("addr");
    let id = TransactionId([7; 12]);
    let answer = first_tcp_answer(&mut a, id);
    fixture::check_answer(&answer, &id, me);

    // The idle connection sends a check signed with the wrong password: it gets a framed
    // 401 error back, which does not count as a valid check (it is still closed at ~10 s).
    if let Some(idle) = idle.as_mut() {
        let mut req = [0u8; 512];
        let n = fixture::binding_request(
            &mut req,
            fixture::UFRAG,
            "wrongPasswordWrongPassword",
            TransactionId([9; 12]),
        );
        idle.write_all(&framed(&req[..n])).expect("write");
        idle.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let answer = read_frame(idle).expect("an error answer");
        assert_eq!(&answer[..2], &[0x01, 0x11], "a Binding error response");
        idle.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
    }

    // Many checks in one write: one framed answer each, in order.
    a.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let ids: Vec<TransactionId> = (0..40u8).map(|i| TransactionId([i; 12])).collect();
    let burst: Vec<u8> = ids.iter().flat_map(|id| framed_check(*id)).collect();
    a.write_all(&burst).expect("write");
    for id in &ids {
        let answer = read_frame(&mut a).expect("an answer to every check");
        fixture::check_answer(&answer, id, me);
    }

    // One check byte by byte (the length split too): answered once it is complete.
    let id = TransactionId([0xB; 12]);
    for byte in framed_check(id) {
        a.write_all(&[byte]).expect("write");
        a.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(1));
    }
    fixture::check_answer(&read_frame(&mut a).expect("answer"), &id, me);

    // A framed packet that is no STUN (and a zero-length frame): dropped, the connection
    // stays and still answers.
    a.write_all(&framed(&[0xEE; 100])).expect("write");
    a.write_all(&[0, 0]).expect("write");
    let id = TransactionId([0xC; 12]);
    a.write_all(&framed_check(id)).expect("write");
    fixture::check_answer(&read_frame(&mut a).expect("answer"), &id, me);

    // An oversize frame closes that connection only.
    let mut b = connect(tcp_addr);
    let mut bad = 1501u16.to_be_bytes().to_vec();
    bad.extend_from_slice(&[0u8; 1501]);
    b.write_all(&bad).expect("write");
    assert!(
        closed_by_peer(&mut b, Duration::from_secs(3)),
        "an oversize frame closes its connection"
    );
    let io = io_stats_when(&run.runtime, |s| s.tcp_frame_errors >= 1);
    assert_eq!(io.tcp_frame_errors, 1, "{io:?}");
    let id = TransactionId([0xD; 12]);
    a.write_all(&framed_check(id)).expect("write");
    fixture::check_answer(
        &read_frame(&mut a).expect("the other connection still answers"),
        &id,
        me,
    );

    // The UDP path still works next to TCP.
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let id = TransactionId([0xE; 12]);
    let answer = fixture::first_answer(&client, udp_addr, id);
    fixture::check_answer(&answer, &id, client.local_addr().expect("addr"));

    let open = if check_idle { 2 } else { 1 };
    let io = io_stats_when(&run.runtime, |s| s.tcp_connections == open);
    assert_eq!(io.tcp_connections, open, "a and the idle one: {io:?}");
    assert_eq!(io.tcp_refused, 0);
    assert_eq!(io.tcp_send_drops, 0);

    if let Some(idle) = idle.as_mut() {
        let left = Duration::from_secs(13).saturating_sub(opened.elapsed());
        assert!(
            closed_by_peer(idle, left),
            "a connection without a valid check is closed after ~10 s"
        );
        assert!(
            opened.elapsed() >= Duration::from_secs(9),
            "not before ~10 s: {:?}",
            opened.elapsed()
        );
        let io = io_stats_when(&run.runtime, |s| s.tcp_idle_closed >= 1);
        assert_eq!(io.tcp_idle_closed, 1, "{io:?}");
        assert_eq!(io.tcp_connections, 1, "the answered one stays: {io:?}");
        let id = TransactionId([0xF; 12]);
        a.write_all(&framed_check(id)).expect("write");
        fixture::check_answer(&read_frame(&mut a).expect("still answers"), &id, me);
    }
    drop(a);
    let io = io_stats_when(&run.runtime, |s| s.tcp_connections == 0);
    assert_eq!(io.tcp_connections, 0, "a closed connection is forgotten");
    let started = Instant::now();
    run.runtime.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown is prompt"
    );
}

#[test]
fn portable_poll_loop_speaks_ice_tcp() {
    tcp_checks(BackendChoice::Portable, MediaBackend::Portable, true);
}

#[test]
fn io_uring_loop_speaks_ice_tcp() {
    tcp_checks(BackendChoice::IoUring, MediaBackend::IoUring, true);
}

#[test]
fn connections_beyond_the_cap_are_refused() {
    let Some(run) = fixture::start(BackendChoice::Portable) else {
        return;
    };
    let to = run.runtime.tcp_addr().expect("TCP is on");
    let held: Vec<TcpStream> = (0..TCP_MAX_CONNECTIONS).map(|_| connect(to)).collect();
    let io = io_stats_when(&run.runtime, |s| {
        s.tcp_connections == TCP_MAX_CONNECTIONS as u64
    });
    assert_eq!(io.tcp_connections, TCP_MAX_CONNECTIONS as u64, "{io:?}");
    assert_eq!(io.tcp_refused, 0);
    let mut one_more = connect(to);
    assert!(
        closed_by_peer(&mut one_more, Duration::from_secs(3)),
        "the connection past the cap is closed"
    );
    let io = io_stats_when(&run.runtime, |s| s.tcp_refused >= 1);
    assert_eq!(io.tcp_refused, 1, "{io:?}");
    assert_eq!(io.tcp_connections, TCP_MAX_CONNECTIONS as u64);
    // A freed place is taken again.
    drop(held);
    let io = io_stats_when(&run.runtime, |s| s.tcp_connections == 0);
    assert_eq!(io.tcp_connections, 0, "{io:?}");
    run.commands
        .send(Command::AddTransport(fixture::spec(1)))
        .expect("command");
    let mut again = connect(to);
    let me = again.local_addr().expect("addr");
    let id = TransactionId([0x42; 12]);
    fixture::check_answer(&first_tcp_answer(&mut again, id), &id, me);
    run.runtime.shutdown();
}

/// A peer that stops reading: answers first fill the kernel's buffers, then the
/// connection's out-queue, then are dropped (counted), never waited for; what does get
/// through is whole frames in order (a partly written frame is always finished first);
/// once the peer reads again the connection works as before.
#[test]
fn a_peer_that_does_not_read_gets_drops_not_a_stuck_worker() {
    let Some(run) = fixture::start(BackendChoice::Portable) else {
        return;
    };
    let to = run.runtime.tcp_addr().expect("TCP is on");
    run.commands
        .send(Command::AddTransport(fixture::spec(1)))
        .expect("command");
    // A small receive buffer, set before connecting, keeps the window small.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    sock.connect_timeout(&to.into(), Duration::from_secs(2))
        .expect("connect");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let me = s.local_addr().expect("addr");
    let _ = first_tcp_answer(&mut s, TransactionId([1; 12]));
    // Checks, never reading the answers, until the SFU reports drops.
    let mut sent = 0u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut chunk = Vec::new();
    while run.runtime.io_stats().tcp_send_drops == 0 {
        assert!(
            Instant::now() < deadline,
            "no drops after {sent} unread checks"
        );
        chunk.clear();
        for _ in 0..500 {
            let mut tid = [0u8; 12];
            tid[..4].copy_from_slice(&sent.to_be_bytes());
            chunk.extend(framed_check(TransactionId(tid)));
            sent += 1;
        }
        s.write_all(&chunk).expect("the SFU keeps reading");
    }
    // The worker was never stuck: the UDP path answers at once.
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let id = TransactionId([0xAB; 12]);
    let answer = fixture::first_answer(&client, run.runtime.local_addr(), id);
    fixture::check_answer(&answer, &id, client.local_addr().expect("addr"));
    // Read everything queued: whole, signed answers for increasing checks.
    std::thread::sleep(Duration::from_millis(300));
    let mut last: Option<u32> = None;
    let mut answers = 0u32;
    while let Ok(frame) = read_frame(&mut s) {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&frame[8..20]);
        fixture::check_answer(&frame, &TransactionId(tid), me);
        let n = u32::from_be_bytes([tid[0], tid[1], tid[2], tid[3]]);
        if tid != [1; 12] {
            assert!(last.is_none_or(|l| n > l), "answers in order");
            last = Some(n);
        }
        answers += 1;
    }
    let io = run.runtime.io_stats();
    assert!(io.tcp_send_drops > 0);
    assert!(
        u64::from(answers) + io.tcp_send_drops >= u64::from(sent),
        "every check answered or its answer counted as dropped: {answers} + {} of {sent}",
        io.tcp_send_drops
    );
    eprintln!(
        "{sent} checks, {answers} answers read, {} dropped",
        io.tcp_send_drops
    );
    // Reading again, the connection works.
    let id = TransactionId([0xCD; 12]);
    s.write_all(&framed_check(id)).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    fixture::check_answer(&read_frame(&mut s).expect("answer"), &id, me);
    assert_eq!(run.runtime.io_stats().tcp_connections, 1);
    run.runtime.shutdown();
}

/// The TCP port equal to the worker's UDP port is taken: start-up fails and says which
/// address, and how to get out of it.
#[test]
fn a_taken_tcp_port_fails_start_up_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let start = |tcp: bool| {
        let (_cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, _ev_rx) = crossbeam_channel::bounded(16);
        SfuRuntime::start(
            relay::sfu::runtime::RuntimeConfig {
                listen: addr,
                engine: relay::sfu::engine::EngineConfig::default(),
                backend: BackendChoice::Portable,
                core: None,
                tcp,
            },
            std::sync::Arc::new(relay::dtls::Certificate::generate().expect("certificate")),
            cmd_rx,
            ev_tx,
        )
    };
    let Err(e) = start(true) else {
        panic!("started although TCP {addr} is taken");
    };
    let text = e.to_string();
    assert!(
        text.contains(&addr.to_string())
            && text.contains("ICE-TCP")
            && text.contains("sfu.tcp = false"),
        "{text}"
    );
    // UDP only: the same port is fine.
    let rt = start(false).expect("UDP only starts");
    assert_eq!(rt.tcp_addr(), None);
    assert_eq!(rt.local_addr(), addr);
    rt.shutdown();
}
