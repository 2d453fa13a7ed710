//! STUN Binding end to end: the real `relay` daemon in one network namespace, clients in
//! another, joined by a veth pair. Proves the XDP fast path (native mode) and the io_uring
//! path each answer correctly, that the counters say which path answered, that coturn's
//! own client agrees on the mapped address, and that shutdown leaves nothing behind.
//!
//! Needs root; without it the tests print "skipped: needs root" (or fail when
//! RELAY_REQUIRE_PRIVILEGED=1, as `cargo xtask test` sets).
#![allow(clippy::unwrap_used)]

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use relay::stun::{
    Attribute, Class, Message, MessageBuilder, MessageType, Method, TransactionId,
    attr::XOR_MAPPED_ADDRESS,
    binding::{Reply, handle_datagram},
};
use relay_e2e::{Daemon, RELAY_IF, Topology};

const PORT: u16 = 3478;
/// Requests per family and per kind in each test.
const ROUNDS: u8 = 10;

fn listen_args(topo: &Topology) -> Vec<String> {
    vec![
        "--listen".into(),
        SocketAddr::new(topo.relay_addr(false), PORT).to_string(),
        "--listen".into(),
        SocketAddr::new(topo.relay_addr(true), PORT).to_string(),
    ]
}

fn start(topo: &Topology, extra: &[&str]) -> Daemon {
    let mut args = listen_args(topo);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&topo.relay, &refs).expect("start the relay daemon")
}

/// Two kinds of request: the bare header, and one with SOFTWARE and FINGERPRINT.
fn request(n: u8, v6: bool, with_attrs: bool) -> Vec<u8> {
    let mut txid = [0u8; 12];
    txid[0] = n;
    txid[1] = u8::from(v6);
    txid[2] = u8::from(with_attrs);
    txid[4..12].copy_from_slice(&0x5eed_1234_abcd_0042u64.to_be_bytes());
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, TransactionId(txid))
        .expect("builder");
    if with_attrs {
        b.add_software("relay-e2e").expect("software");
        b.add_fingerprint().expect("fingerprint");
    }
    let len = b.finish();
    buf[..len].to_vec()
}

/// Sends `req` and waits for an answer (a few tries: the first may wait for ARP/ND).
fn exchange(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        sock.send_to(req, to).expect("send");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, to, "answer from the wrong address");
                return buf[..n].to_vec();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no answer from {to} after 5 tries");
}

/// Checks one answer: byte-identical to the userspace service's answer for the same
/// request and source, a Binding success with the right transaction id, and an
/// XOR-MAPPED-ADDRESS equal to the client socket's address.
fn check_answer(req: &[u8], answer: &[u8], client: SocketAddr) {
    let mut expected = [0u8; 1500];
    let Reply::Send(n) = handle_datagram(req, client, &mut expected) else {
        panic!("the userspace service does not answer this request");
    };
    assert_eq!(
        answer,
        &expected[..n],
        "answer differs from the userspace service's answer"
    );
    let msg = Message::parse(answer).expect("answer parses as STUN");
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.class(), Class::SuccessResponse);
    assert_eq!(msg.transaction_id().0, req[8..20]);
    match msg.get(XOR_MAPPED_ADDRESS).expect("attributes") {
        Some(Attribute::XorMappedAddress(a)) => assert_eq!(a, client, "mapped address"),
        other => panic!("no XOR-MAPPED-ADDRESS: {other:?}"),
    }
}

/// Sends ROUNDS requests of each kind over IPv4 and IPv6, checking every answer.
/// Returns the number of requests per family.
fn binding_round_trips(topo: &Topology) -> u64 {
    for v6 in [false, true] {
        let bind = SocketAddr::new(topo.client_addr(v6), 0);
        let sock = topo.client.udp_socket(bind).expect("client socket");
        let local = sock.local_addr().expect("local addr");
        let to = SocketAddr::new(topo.relay_addr(v6), PORT);
        for n in 0..ROUNDS {
            for with_attrs in [false, true] {
                let req = request(n, v6, with_attrs);
                let answer = exchange(&sock, to, &req);
                check_answer(&req, &answer, local);
            }
        }
    }
    u64::from(ROUNDS) * 2
}

fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("relay stats has no number at {path:?}: {v}"))
}

fn xdp(v: &serde_json::Value, name: &str) -> u64 {
    num(v, &["xdp", "counters", name])
}

#[test]
fn binding_answered_by_xdp_native() {
    if !relay_e2e::require_root("binding_answered_by_xdp_native") {
        return;
    }
    let topo = Topology::new(relay_e2e::NS_PREFIX).expect("topology");
    let daemon = start(&topo, &["--xdp-iface", RELAY_IF, "--xdp-mode", "native"]);
    let before = daemon.stats().expect("stats");
    assert_eq!(
        before["xdp"]["attached"],
        serde_json::json!([{"interface": RELAY_IF, "mode": "native"}]),
        "XDP must be attached in native mode on {RELAY_IF}: {before}"
    );
    let per_family = binding_round_trips(&topo);
    let after = daemon.stats().expect("stats");
    let d = |name| xdp(&after, name) - xdp(&before, name);
    assert!(
        d("stun_answered_v4") >= per_family && d("stun_answered_v6") >= per_family,
        "the kernel did not answer the requests: before {before}, after {after}"
    );
    assert_eq!(
        d("bad_checksum_passed"),
        0,
        "frames failed the UDP checksum check: {after}"
    );
    assert_eq!(
        num(&after, &["userspace", "stun_answered"]),
        num(&before, &["userspace", "stun_answered"]),
        "userspace answered although the fast path is on: {after}"
    );
    daemon.stop_cleanly();
}

#[test]
fn binding_answered_by_io_uring_without_xdp() {
    if !relay_e2e::require_root("binding_answered_by_io_uring_without_xdp") {
        return;
    }
    let topo = Topology::new(relay_e2e::NS_PREFIX).expect("topology");
    let daemon = start(&topo, &["--no-xdp", "--backend", "io-uring"]);
    let before = daemon.stats().expect("stats");
    assert_eq!(before["backend"], "io_uring", "{before}");
    assert!(before["xdp"].is_null(), "XDP should be off: {before}");
    let per_family = binding_round_trips(&topo);
    let after = daemon.stats().expect("stats");
    let answered = num(&after, &["userspace", "stun_answered"])
        - num(&before, &["userspace", "stun_answered"]);
    assert!(
        answered >= 2 * per_family,
        "userspace answered {answered}, expected at least {}: {after}",
        2 * per_family
    );
    daemon.stop_cleanly();
}

/// Runs coturn's `turnutils_stunclient` in the client namespace and returns the
/// reflexive addresses it printed.
fn stunclient(topo: &Topology, server: IpAddr) -> Vec<String> {
    let out = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", topo.client.name()])
        .args(["turnutils_stunclient", "-p", &PORT.to_string()])
        .arg(server.to_string())
        .output()
        .expect("run turnutils_stunclient (coturn; `cargo xtask setup` installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "turnutils_stunclient against {server} failed ({}):\n{text}",
        out.status
    );
    let found: Vec<String> = text
        .lines()
        .filter_map(|l| l.split("reflexive addr: ").nth(1))
        .map(|s| s.trim().to_owned())
        .collect();
    assert!(
        !found.is_empty(),
        "turnutils_stunclient printed no reflexive address:\n{text}"
    );
    found
}

fn assert_mapped(found: &[String], client: IpAddr) {
    for a in found {
        // "10.200.x.2:PORT" or "fd00:200:x::2:PORT": the address, then ':' and a port.
        let (ip, port) = a.rsplit_once(':').expect("addr:port");
        assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "bad port in {a}");
        assert_eq!(
            ip.parse::<IpAddr>().ok(),
            Some(client),
            "turnutils_stunclient got mapped address {a}, expected {client}:port"
        );
    }
}

#[test]
fn coturn_stunclient_gets_mapped_address_from_both_paths() {
    if !relay_e2e::require_root("coturn_stunclient_gets_mapped_address_from_both_paths") {
        return;
    }
    let topo = Topology::new(relay_e2e::NS_PREFIX).expect("topology");
    for fast_path in [true, false] {
        let extra: &[&str] = if fast_path {
            &["--xdp-iface", RELAY_IF, "--xdp-mode", "native"]
        } else {
            &["--no-xdp"]
        };
        let daemon = start(&topo, extra);
        let before = daemon.stats().expect("stats");
        for v6 in [false, true] {
            let found = stunclient(&topo, topo.relay_addr(v6));
            assert_mapped(&found, topo.client_addr(v6));
        }
        let after = daemon.stats().expect("stats");
        let user = num(&after, &["userspace", "stun_answered"])
            - num(&before, &["userspace", "stun_answered"]);
        if fast_path {
            let kernel = xdp(&after, "stun_answered_v4") - xdp(&before, "stun_answered_v4")
                + xdp(&after, "stun_answered_v6")
                - xdp(&before, "stun_answered_v6");
            assert!(
                kernel >= 2 && user == 0,
                "with the fast path on, the kernel should answer stunclient: kernel {kernel}, userspace {user}"
            );
        } else {
            assert!(
                user >= 2,
                "userspace answered {user} of stunclient's requests"
            );
        }
        daemon.stop_cleanly();
    }
}

#[test]
fn sigterm_detaches_xdp_and_leaves_nothing() {
    if !relay_e2e::require_root("sigterm_detaches_xdp_and_leaves_nothing") {
        return;
    }
    let topo = Topology::new(relay_e2e::NS_PREFIX).expect("topology");
    let link = || {
        let out = topo
            .relay
            .ip(&["link", "show", "dev", RELAY_IF])
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !link().contains("xdp"),
        "XDP attached before the daemon ran"
    );
    let daemon = start(&topo, &["--xdp-iface", RELAY_IF, "--xdp-mode", "native"]);
    let shown = link();
    assert!(
        shown.contains("xdp") && !shown.contains("xdpgeneric"),
        "XDP not attached in native mode: {shown}"
    );
    let socket = daemon.control_socket().to_owned();
    assert!(socket.exists(), "no control socket at {}", socket.display());
    let status = daemon.stop(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "SIGTERM should give exit 0, got {status}");
    let shown = link();
    assert!(
        !shown.contains("xdp"),
        "XDP still attached after exit: {shown}"
    );
    assert!(
        !socket.exists(),
        "control socket {} left behind",
        socket.display()
    );
    let pids = Command::new("ip")
        .args(["netns", "pids", topo.relay.name()])
        .output()
        .expect("ip netns pids");
    assert!(
        String::from_utf8_lossy(&pids.stdout).trim().is_empty(),
        "processes left in the relay namespace: {}",
        String::from_utf8_lossy(&pids.stdout)
    );
}
