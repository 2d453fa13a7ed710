//! Restarts lose nothing on the kernel path: a TURN client in a client namespace binds a
//! channel to a peer through the relay daemon (XDP attached natively on the relay's
//! veths, maps and links pinned in a per-test bpffs directory), then a steady,
//! sequence-numbered stream flows client → peer and peer → client through the channel
//! while the daemon is stopped with SIGTERM (xdp.persist: the pinned program keeps
//! relaying) and started again with the same configuration (it adopts the pinned links
//! and maps, swapping the program in atomically). Every sequence number must arrive in
//! both directions, and the XDP counters (pinned, so they span both daemons) must show
//! that the kernel relayed them.
//!
//! With `turn.state_file` the restarted daemon also restores the allocation: the client's
//! Refresh from the same 5-tuple succeeds, a new channel works, and data the kernel
//! passes up is relayed by the restored allocation in userspace.
//!
//! Topology as in `turn_fastpath.rs`: `relay_xdp_pass` on the client's and peer's veths,
//! TX checksumming off on the senders, forwarding on in the relay namespace.
//!
//! Needs root; without it the tests print "skipped: needs root" (or fail when
//! RELAY_REQUIRE_PRIVILEGED=1, as `cargo xtask test` sets).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use relay::stun::attr::{self, Attribute};
use relay::stun::builder::MessageBuilder;
use relay::stun::header::{MessageType, TransactionId};
use relay::stun::{Class, Message, Method};
use relay::turn::attrs::{self as tattr, method};
use relay::turn::auth::{PasswordAlgorithm, long_term_key};
use relay_e2e::turn_xdp::{PASSWORD, PEER_PORT, PORT, REALM, USER};
use relay_e2e::{Daemon, TempDir, TurnTopology, XdpPass, require_root, turn_xdp};

const CHANNEL: u16 = 0x4001;
/// Stream rate per direction and duration.
const PPS: u64 = 2000;
const STREAM: Duration = Duration::from_secs(6);
/// When, into the stream, the daemon is stopped.
const RESTART_AT: Duration = Duration::from_secs(2);
/// Payload: a 4-byte sequence number and a 4-byte direction tag, padded to 100 bytes.
const PAYLOAD: usize = 100;

/// A bpffs mounted for the test (`ip netns exec` remounts /sys, hiding /sys/fs/bpf from
/// the daemon, while other mounts propagate into it) and the pin directory in it. On drop,
/// even on failure: the pins are removed (links first: that detaches the program), then
/// the bpffs is unmounted.
struct Pins {
    mount: PathBuf,
    dir: PathBuf,
}

impl Pins {
    fn new(name: &str) -> Pins {
        let mount = PathBuf::from(format!("/run/relay-test-bpffs-{name}"));
        std::fs::create_dir_all(&mount).expect("create the bpffs mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&mount)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t bpf: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = mount.join("relay");
        Pins { mount, dir }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = relay::xdp::unload_pins(&self.dir) {
            eprintln!("warning: removing the pins in {}: {e}", self.dir.display());
        }
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

struct Setup {
    // Field order is drop order: the daemon, the pins, the XDP pass programs, then the
    // namespaces.
    relay: Option<Daemon>,
    pins: Pins,
    _pass: Vec<XdpPass>,
    topo: TurnTopology,
    _files: TempDir,
    args: Vec<String>,
}

fn setup(prefix: &str) -> Setup {
    let topo = TurnTopology::new(prefix).expect("create the TURN topology");
    let pass = turn_xdp::prepare_topology(&topo, true);
    let pins = Pins::new(topo.relay.name());
    let pin_dir = pins.dir.clone();
    let files = TempDir::new("relay-turn-restart").expect("temp dir");
    let text = turn_xdp::config(
        &topo,
        &format!("pin_dir = \"{}\"\npersist = true\n", pin_dir.display()),
        "",
        "",
    );
    let config = files.write("relay.toml", &text).expect("write relay.toml");
    // One state file for both daemons: the first saves its allocations on SIGTERM, the
    // second restores them.
    let state = files.path().join("turn-state.json");
    let args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--xdp-pin-dir".to_owned(),
        pin_dir.display().to_string(),
        "--turn-state-file".to_owned(),
        state.display().to_string(),
    ];
    let relay = start(&topo, &args);
    assert!(
        relay.log_text().contains("TURN relayed in the kernel"),
        "TURN is not relayed in the kernel; log:\n{}",
        relay.log_text()
    );
    Setup {
        relay: Some(relay),
        pins,
        _pass: pass,
        topo,
        _files: files,
        args,
    }
}

fn start(topo: &TurnTopology, args: &[String]) -> Daemon {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&topo.relay, &refs).expect("start the relay")
}

/// Stops the running daemon in `relay` (SIGTERM) and checks that it exited cleanly.
fn stop_relay(relay: &mut Option<Daemon>) {
    relay.take().expect("relay").stop_cleanly();
}

/// A minimal TURN client over UDP (long-term credentials, MD5 key).
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    nonce: Vec<u8>,
    key: Vec<u8>,
    next_tid: u64,
}

fn other(attr_type: u16, value: &[u8]) -> Attribute<'_> {
    Attribute::Other { attr_type, value }
}

/// A request's attributes (type, value), built from its transaction id.
type Attrs = dyn Fn(&TransactionId) -> Vec<(u16, Vec<u8>)>;

/// What a request got.
enum Outcome {
    Ok(Vec<u8>),
    Error(u16),
}

impl Client {
    fn new(sock: UdpSocket, server: SocketAddr) -> Client {
        let key = long_term_key(
            PasswordAlgorithm::Md5,
            USER.as_bytes(),
            REALM.as_bytes(),
            PASSWORD.as_bytes(),
        );
        Client {
            sock,
            server,
            nonce: Vec::new(),
            key: key.as_bytes().to_vec(),
            next_tid: 0x5eed_0000,
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId(t)
    }

    /// One request; `attrs` built from the transaction id (XOR values depend on it).
    fn once(&mut self, m: u16, attrs: &Attrs) -> Outcome {
        let tid = self.tid();
        let mut buf = vec![0u8; 1500];
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::new(Method::new(m).expect("method"), Class::Request),
            tid,
        )
        .expect("builder");
        for (t, v) in attrs(&tid) {
            b.add(&other(t, &v)).expect("attr");
        }
        if !self.nonce.is_empty() {
            b.add(&Attribute::Username(USER.as_bytes()))
                .expect("username");
            b.add(&Attribute::Realm(REALM.as_bytes())).expect("realm");
            let nonce = self.nonce.clone();
            b.add(&Attribute::Nonce(&nonce)).expect("nonce");
            b.add_message_integrity(&self.key).expect("integrity");
        }
        b.add_fingerprint().expect("fingerprint");
        let n = b.finish();
        self.sock.send_to(&buf[..n], self.server).expect("send");
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut resp = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok((len, _)) = self.sock.recv_from(&mut resp) else {
                break;
            };
            let Ok(msg) = Message::parse(&resp[..len]) else {
                continue; // ChannelData still in flight
            };
            if msg.transaction_id() != &tid {
                continue;
            }
            if msg.class() == Class::SuccessResponse {
                return Outcome::Ok(resp[..len].to_vec());
            }
            let code = match msg.get(attr::ERROR_CODE) {
                Ok(Some(Attribute::ErrorCode(e))) => e.code,
                other => panic!("error response without ERROR-CODE: {other:?}"),
            };
            if let Ok(Some(Attribute::Nonce(n))) = msg.get(attr::NONCE) {
                self.nonce = n.to_vec();
            }
            return Outcome::Error(code);
        }
        panic!("no answer to method {m:#x}");
    }

    /// A request that must succeed after at most two challenges (401, 438).
    fn ok(&mut self, m: u16, attrs: &Attrs) -> Vec<u8> {
        let mut codes = Vec::new();
        for _ in 0..3 {
            match self.once(m, attrs) {
                Outcome::Ok(r) => return r,
                Outcome::Error(c @ (401 | 438)) => codes.push(c),
                Outcome::Error(c) => panic!("method {m:#x} failed with {c} (after {codes:?})"),
            }
        }
        panic!("method {m:#x}: authentication did not converge ({codes:?})");
    }

    fn allocate(&mut self) -> SocketAddr {
        let resp = self.ok(method::ALLOCATE, &|_| {
            vec![(tattr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])]
        });
        let msg = Message::parse(&resp).expect("parse");
        msg.attributes()
            .find_map(|a| {
                let a = a.ok()?;
                (a.attr_type == tattr::XOR_RELAYED_ADDRESS)
                    .then(|| tattr::decode_xor_address(a.value, msg.transaction_id()))
                    .flatten()
            })
            .expect("XOR-RELAYED-ADDRESS")
    }

    fn channel_bind(&mut self, channel: u16, peer: SocketAddr) {
        self.ok(method::CHANNEL_BIND, &move |tid| {
            let mut v = [0u8; tattr::XOR_ADDRESS_MAX];
            let n = tattr::encode_xor_address(peer, tid, &mut v);
            let mut ch = vec![0u8; 4];
            ch[..2].copy_from_slice(&channel.to_be_bytes());
            vec![
                (tattr::CHANNEL_NUMBER, ch),
                (tattr::XOR_PEER_ADDRESS, v[..n].to_vec()),
            ]
        });
    }

    fn refresh(&mut self) -> Outcome {
        let attrs = |_: &TransactionId| vec![(tattr::LIFETIME, 600u32.to_be_bytes().to_vec())];
        match self.once(method::REFRESH, &attrs) {
            Outcome::Error(438) => self.once(method::REFRESH, &attrs),
            o => o,
        }
    }
}

fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + payload.len());
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn payload(seq: u32, tag: u32) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&tag.to_be_bytes());
    p
}

const TAG_TO_PEER: u32 = 0x7065_6572;
const TAG_TO_CLIENT: u32 = 0x636c_6e74;

/// Sends `count` packets paced at [`PPS`]; `frame(seq)` builds each.
fn pace(
    sock: UdpSocket,
    to: SocketAddr,
    count: u32,
    frame: impl Fn(u32) -> Vec<u8> + Send + 'static,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0;
        for seq in 0..count {
            let due = start + Duration::from_micros(u64::from(seq) * 1_000_000 / PPS);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if sock.send_to(&frame(seq), to).is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

/// Collects the sequence numbers carrying `tag` (at `offset` in the datagram) until
/// `stop` is set and the socket has been quiet for a moment.
fn collect(
    sock: UdpSocket,
    offset: usize,
    tag: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashSet<u32>> {
    std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut buf = [0u8; 2048];
        let hard = Instant::now() + STREAM + Duration::from_secs(30);
        while Instant::now() < hard {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if n >= offset + 8 => {
                    let s = &buf[offset..offset + 8];
                    let seq = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
                    if u32::from_be_bytes([s[4], s[5], s[6], s[7]]) == tag {
                        seen.insert(seq);
                    }
                }
                Ok(_) => {}
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        seen
    })
}

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats
        .pointer(&format!("/xdp/counters/{name}"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no XDP counter {name} in {stats}"))
}

fn missing(seen: &HashSet<u32>, count: u32) -> Vec<u32> {
    (0..count).filter(|s| !seen.contains(s)).collect()
}

fn force_rcvbuf(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt on an open socket with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&TEST_RCVBUF as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// What each namespace's kernel counted as dropped (UDP receive buffers, veth queues) and
/// the relay's counters: tells a lost packet in the test's receiver apart from one lost
/// on the relay's path.
fn loss_report(topo: &TurnTopology, relay: Option<&Daemon>) -> String {
    let mut out = String::new();
    for ns in [&topo.client, &topo.relay, &topo.peer] {
        let udp = ns
            .command("cat")
            .arg("/proc/net/snmp")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("Udp:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let links = ns
            .ip(&["-s", "link"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out += &format!("--- {}\n{udp}\n{links}\n", ns.name());
    }
    if let Some(stats) = relay.and_then(|r| r.stats().ok()) {
        out += &format!("--- relay stats\n{stats}\n");
    }
    out
}

/// The restart tests run one at a time: two daemons verifying and attaching their
/// programs at once on a 2-core machine stall the test's own receiver threads long enough
/// to overflow their sockets, which is not the relay losing packets.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Receive buffers of the test's client and peer sockets (SO_RCVBUFFORCE, root): room for
/// a second of the stream in each, so that a stalled receiver thread loses nothing.
const TEST_RCVBUF: libc::c_int = 8 << 20;

fn restart_flow(prefix: &str, check_refresh: bool) {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut s = setup(prefix);
    let topo = &s.topo;
    let server = SocketAddr::new(IpAddr::V4(topo.relay_client_v4), PORT);
    let peer_addr = SocketAddr::new(IpAddr::V4(topo.peer_v4), PEER_PORT);
    let client_sock = topo
        .client
        .udp_socket(SocketAddr::new(IpAddr::V4(topo.client_v4), 0))
        .expect("client socket");
    let peer_sock = topo.peer.udp_socket(peer_addr).expect("peer socket");
    for sock in [&client_sock, &peer_sock] {
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        force_rcvbuf(sock);
    }
    let mut client = Client::new(client_sock.try_clone().expect("clone"), server);
    let relayed = client.allocate();
    client.channel_bind(CHANNEL, peer_addr);

    // Warm up both directions (neighbour entries, next hops) and check they flow.
    let mut warm = false;
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        client_sock
            .send_to(&channel_data(CHANNEL, b"warm-up"), server)
            .expect("send");
        peer_sock.send_to(b"warm-up", relayed).expect("send");
        let to_peer = peer_sock.recv_from(&mut buf).is_ok();
        let to_client = client_sock.recv_from(&mut buf).is_ok();
        if to_peer && to_client {
            warm = true;
            break;
        }
    }
    assert!(warm, "no traffic through the channel before the stream");
    // Drain the warm-up leftovers.
    while peer_sock.recv_from(&mut buf).is_ok() {}
    while client_sock.recv_from(&mut buf).is_ok() {}

    let before = s.relay.as_ref().expect("relay").stats().expect("stats");
    let count = (PPS * STREAM.as_secs()) as u32;
    let stop = Arc::new(AtomicBool::new(false));
    let at_peer = collect(
        peer_sock.try_clone().expect("clone"),
        0,
        TAG_TO_PEER,
        stop.clone(),
    );
    let at_client = collect(
        client_sock.try_clone().expect("clone"),
        4,
        TAG_TO_CLIENT,
        stop.clone(),
    );
    let up = pace(
        client_sock.try_clone().expect("clone"),
        server,
        count,
        |seq| channel_data(CHANNEL, &payload(seq, TAG_TO_PEER)),
    );
    let down = pace(
        peer_sock.try_clone().expect("clone"),
        relayed,
        count,
        |seq| payload(seq, TAG_TO_CLIENT).to_vec(),
    );

    std::thread::sleep(RESTART_AT);
    let t0 = Instant::now();
    stop_relay(&mut s.relay);
    let stopped = t0.elapsed();
    let relay = start(topo, &s.args);
    let log = relay.log_text();
    eprintln!(
        "daemon stopped in {stopped:?}, back after {:?} in total",
        t0.elapsed()
    );
    assert!(
        log.contains("adopted: true") || log.contains("adopted=true"),
        "the restarted daemon did not adopt the pinned links; log:\n{log}"
    );
    s.relay = Some(relay);

    let sent_up = up.join().expect("client sender");
    let sent_down = down.join().expect("peer sender");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen_peer = at_peer.join().expect("peer receiver");
    let seen_client = at_client.join().expect("client receiver");
    assert_eq!(sent_up, count, "the client could not send everything");
    assert_eq!(sent_down, count, "the peer could not send everything");
    let lost_up = missing(&seen_peer, count);
    let lost_down = missing(&seen_client, count);
    eprintln!(
        "client → peer: {} of {count} arrived; peer → client: {} of {count}",
        seen_peer.len(),
        seen_client.len()
    );
    let where_lost = || {
        if lost_up.is_empty() && lost_down.is_empty() {
            return String::new();
        }
        format!(
            "\nwhere (socket-buffer drops, veth drops, relay counters):\n{}",
            loss_report(topo, s.relay.as_ref())
        )
    };
    assert!(
        lost_up.is_empty(),
        "{} of {count} client → peer packets lost across the restart (first: {:?}){}",
        lost_up.len(),
        &lost_up[..lost_up.len().min(20)],
        where_lost()
    );
    assert!(
        lost_down.is_empty(),
        "{} of {count} peer → client packets lost across the restart (first: {:?}){}",
        lost_down.len(),
        &lost_down[..lost_down.len().min(20)],
        where_lost()
    );

    // The counters are pinned: they span both daemons and show the kernel relayed it all.
    let relay = s.relay.as_ref().expect("relay");
    let after = relay.stats().expect("stats");
    let grew = |n: &str| counter(&after, n) - counter(&before, n);
    let (k_up, k_down) = (grew("turn_channel_to_peer"), grew("turn_peer_to_channel"));
    eprintln!("kernel relayed {k_up} client → peer and {k_down} peer → client");
    assert!(
        k_up >= u64::from(count) && k_down >= u64::from(count),
        "the kernel relayed {k_up} / {k_down} of {count} each way"
    );

    if check_refresh {
        check_restored_allocation(&s, &mut client, &client_sock, &peer_sock, relayed);
    }

    stop_relay(&mut s.relay);
    // Persisted: the links are still pinned until the test's guard unloads them.
    let links = std::fs::read_dir(&s.pins.dir)
        .expect("pin dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .count();
    assert_eq!(links, 2, "xdp.persist = true must leave both links pinned");
}

/// Waits (bounded) for a ChannelData frame on `channel` whose payload is `len` bytes
/// long and starts with `head`.
fn await_channel_data(sock: &UdpSocket, channel: u16, len: usize, head: &[u8]) -> bool {
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if n >= 4 + len
            && buf[..2] == channel.to_be_bytes()
            && usize::from(u16::from_be_bytes([buf[2], buf[3]])) == len
            && buf[4..].starts_with(head)
        {
            return true;
        }
    }
    false
}

/// After the restart: the allocation is the restored one (Refresh from the same 5-tuple
/// succeeds after at most one 438), a new channel to a second peer carries data both
/// ways, and a peer datagram the kernel passes up (too large for the path once the
/// ChannelData header is added) reaches the client through the restored allocation in
/// userspace.
fn check_restored_allocation(
    s: &Setup,
    client: &mut Client,
    client_sock: &UdpSocket,
    peer_sock: &UdpSocket,
    relayed: SocketAddr,
) {
    let topo = &s.topo;
    let relay = s.relay.as_ref().expect("relay");
    let log = relay.log_text();
    assert!(
        log.contains("TURN allocations restored"),
        "the restarted daemon restored no allocation; log:\n{log}"
    );
    match client.refresh() {
        Outcome::Ok(_) => {}
        Outcome::Error(code) => {
            panic!(
                "Refresh after the restart failed with {code}: allocation not restored; log:\n{}",
                relay.log_text()
            )
        }
    }
    let server = client.server;
    let peer2 = SocketAddr::new(IpAddr::V4(topo.peer_v4), PEER_PORT + 1);
    let peer2_sock = topo.peer.udp_socket(peer2).expect("second peer socket");
    peer2_sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    client.channel_bind(CHANNEL + 1, peer2);
    let mut buf = [0u8; 2048];
    let mut to_peer2 = false;
    for _ in 0..10 {
        client_sock
            .send_to(&channel_data(CHANNEL + 1, b"to-peer-2"), server)
            .expect("send");
        if matches!(peer2_sock.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"to-peer-2") {
            to_peer2 = true;
            break;
        }
    }
    assert!(
        to_peer2,
        "ChannelData on the new channel did not reach the second peer"
    );
    let mut from_peer2 = false;
    for _ in 0..5 {
        peer2_sock.send_to(b"from-peer-2", relayed).expect("send");
        if await_channel_data(client_sock, CHANNEL + 1, 11, b"from-peer-2") {
            from_peer2 = true;
            break;
        }
    }
    assert!(
        from_peer2,
        "data from the second peer did not reach the client"
    );

    // 1472 bytes fill a 1500-byte frame: with the 4-byte ChannelData header it no longer
    // fits the path, so the kernel passes it up and userspace relays it (fragmented).
    let big: Vec<u8> = (0..1472u32).map(|i| (i % 251) as u8).collect();
    let before = relay.stats().expect("stats");
    let mut arrived = false;
    for _ in 0..3 {
        peer_sock.send_to(&big, relayed).expect("send");
        if await_channel_data(client_sock, CHANNEL, big.len(), &big[..32]) {
            arrived = true;
            break;
        }
    }
    assert!(
        arrived,
        "a peer datagram relayed in userspace did not reach the client through the restored \
         allocation; log:\n{}",
        relay.log_text()
    );
    let after = relay.stats().expect("stats");
    // Relayed in userspace: all peer → client packets minus the kernel's.
    let userspace = |v: &serde_json::Value| {
        let get = |p: &str| {
            v.pointer(p)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or_else(|| panic!("no {p} in {v}"))
        };
        get("/turn/packets/peer_to_client") - get("/turn/kernel_packets/peer_to_client")
    };
    let (u0, u1) = (userspace(&before), userspace(&after));
    eprintln!("peer → client relayed in userspace: {u0} → {u1}");
    assert!(
        u1 > u0,
        "the large peer datagram was not relayed in userspace ({u0} → {u1})"
    );
}

#[test]
fn channel_keeps_flowing_through_a_restart() {
    if !require_root("channel_keeps_flowing_through_a_restart") {
        return;
    }
    restart_flow("rrs", false);
}

#[test]
fn allocation_refreshable_after_a_restart() {
    if !require_root("allocation_refreshable_after_a_restart") {
        return;
    }
    restart_flow("rrf", true);
}
