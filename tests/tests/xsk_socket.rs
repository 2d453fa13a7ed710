//! `relay::xsk` on a real interface: an AF_XDP socket on one end of a veth pair, a plain
//! UDP socket on the other, each end in a network namespace this test creates (deleted,
//! with the veth pair, when the test ends, failed or not).
//!
//! - Sending: hand-built Ethernet/IPv4/UDP frames queued with `send_with` and published
//!   with one `flush` arrive at the peer's UDP socket, all of them (copy mode sends 32
//!   frames per kick: one flush must kick until the TX ring is drained).
//! - Receiving: an XDP program redirects UDP to one port into the socket through an
//!   XSKMAP; the socket answers each datagram from the same loop (`split`: the received
//!   frame is read while the answer is written), and the peer gets every answer.
//! - Opening: the errors for a missing queue and a queue already taken.
//!
//! The XDP program for the receive test is eight lines of BPF assembled here and loaded
//! with the `bpf` system call (no object file): `relay-bench`'s `bench_xsk` would do, but
//! it is built by the bench crate, which depends on this one. The relay's own AF_XDP
//! steering is covered end to end by its own tests.
//!
//! Needs root; without it the tests print "skipped: needs root" (or fail when
//! RELAY_REQUIRE_PRIVILEGED=1, as `cargo xtask test` sets).
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use relay::wire::{build_udp_reply, build_udp_request, parse_udp_frame};
use relay::xsk::{self, XskConfig, XskError, XskSocket};
use relay_e2e::{Netns, require_root};

/// Namespace prefix of this file's tests.
const PREFIX: &str = "rlk";
/// The AF_XDP side's veth and the peer's.
const XSK_IF: &str = "xv";
const PEER_IF: &str = "pv";
const XSK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x02];
const XSK_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The AF_XDP side's UDP port (frames to it are steered to the socket).
const XSK_PORT: u16 = 40_000;
const PEER_PORT: u16 = 40_001;
/// Frames per test.
const FRAMES: usize = 100;
/// The longest any wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(5);

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Two namespaces joined by a veth pair with fixed MACs and addresses. Field order is
/// drop order: nothing here outlives the namespaces, which take the veth pair along.
struct Pair {
    xsk: Netns,
    peer: Netns,
}

impl Pair {
    fn new() -> Pair {
        let xsk = Netns::new(PREFIX, "x").expect("namespace");
        let peer = Netns::new(PREFIX, "p").expect("namespace");
        xsk.ip(&[
            "link",
            "add",
            XSK_IF,
            "address",
            &mac(XSK_MAC),
            "type",
            "veth",
            "peer",
            "name",
            PEER_IF,
            "address",
            &mac(PEER_MAC),
            "netns",
            peer.name(),
        ])
        .expect("veth pair");
        for (ns, dev, ip) in [(&xsk, XSK_IF, XSK_IP), (&peer, PEER_IF, PEER_IP)] {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev])
                .expect("address");
            ns.ip(&["link", "set", dev, "up"]).expect("link up");
        }
        Pair { xsk, peer }
    }

    /// The peer's UDP socket.
    fn peer_socket(&self) -> UdpSocket {
        let s = self
            .peer
            .udp_socket(SocketAddr::new(IpAddr::V4(PEER_IP), PEER_PORT))
            .expect("peer socket");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    }
}

fn config(ifindex: u32, queue: u32) -> XskConfig {
    XskConfig {
        ifindex,
        queue,
        rx_frames: 256,
        tx_frames: 128,
    }
}

fn xsk_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(XSK_IP), XSK_PORT)
}

fn peer_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PEER_IP), PEER_PORT)
}

fn payload(kind: &str, i: usize) -> Vec<u8> {
    let mut p = format!("{kind}-{i:03}-").into_bytes();
    // Some bulk, different per frame, odd lengths included.
    p.extend((0..100 + i).map(|k| (k * 7 + i) as u8));
    p
}

/// Reads datagrams from `sock` until `n` arrived or [`LIMIT`] passed; each with its
/// source.
fn read_datagrams(sock: &UdpSocket, n: usize) -> Vec<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < n && Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => got.push((buf[..len].to_vec(), from)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

/// Nothing more arrives on `sock` within its read timeout.
fn assert_no_more(sock: &UdpSocket) {
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((len, from)) => panic!("an extra datagram of {len} bytes from {from}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "recv: {e}"
        ),
    }
}

/// Flushes until the kernel has completed every queued frame (bounded by [`LIMIT`]).
fn drain(sock: &mut XskSocket) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let (_, mut tx) = sock.split();
        tx.flush().expect("flush");
        if tx.pending() == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} frames still pending after {LIMIT:?}",
            tx.pending()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn frames_sent_through_the_socket_reach_the_peer() {
    if !require_root("frames_sent_through_the_socket_reach_the_peer") {
        return;
    }
    let pair = Pair::new();
    let peer = pair.peer_socket();
    let mut sock = pair
        .xsk
        .enter(|| Ok(XskSocket::open(&config(xsk::ifindex(XSK_IF)?, 0))?))
        .expect("open the AF_XDP socket");
    let (_, mut tx) = sock.split();
    assert_eq!(tx.pending(), 0);
    // Not sending leaves the frame free.
    assert!(!tx.send_with(|_| None));
    assert_eq!(tx.pending(), 0);
    // All frames queued before one flush: more than the 32 that copy mode sends per kick,
    // fewer than the 128 send frames.
    for i in 0..FRAMES {
        let queued = tx.send_with(|frame| {
            let p = payload("tx", i);
            Some(build_udp_request(XSK_MAC, PEER_MAC, xsk_addr(), peer_addr(), &p, frame).unwrap())
        });
        assert!(queued, "frame {i}: no free send frame");
    }
    assert_eq!(tx.pending(), FRAMES as u32);
    // One flush, and no other until they all arrived.
    tx.flush().expect("flush");
    let got = read_datagrams(&peer, FRAMES);
    drain(&mut sock);
    assert_eq!(got.len(), FRAMES, "datagrams received by the peer");
    assert!(got.iter().all(|(_, from)| *from == xsk_addr()));
    let got: BTreeSet<Vec<u8>> = got.into_iter().map(|(d, _)| d).collect();
    let want: BTreeSet<Vec<u8>> = (0..FRAMES).map(|i| payload("tx", i)).collect();
    assert_eq!(got, want, "payloads");
    assert_no_more(&peer);

    // The send frames are all free again: another round fits in one flush too.
    let (_, mut tx) = sock.split();
    for i in 0..128 {
        assert!(
            tx.send_with(|frame| Some(
                build_udp_request(XSK_MAC, PEER_MAC, xsk_addr(), peer_addr(), b"again", frame)
                    .unwrap()
            )),
            "frame {i} of the second round"
        );
    }
    assert!(!tx.send_with(|_| panic!("every send frame is queued")));
    tx.flush().expect("flush");
    assert_eq!(read_datagrams(&peer, 128).len(), 128, "second round");
    drain(&mut sock);

    let st = sock.stats().expect("stats");
    assert_eq!(st.tx_invalid_descs, 0, "{st:?}");
}

#[test]
fn frames_received_through_the_socket_are_answered() {
    if !require_root("frames_received_through_the_socket_are_answered") {
        return;
    }
    let pair = Pair::new();
    let peer = pair.peer_socket();
    let (mut sock, _steer) = pair
        .xsk
        .enter(|| {
            let ifindex = xsk::ifindex(XSK_IF)?;
            let sock = XskSocket::open(&config(ifindex, 0))?;
            let steer = XskSteer::attach(ifindex, XSK_PORT, sock.fd())?;
            Ok((sock, steer))
        })
        .expect("open the AF_XDP socket and steer UDP into it");
    let fd = sock.fd();

    // In rounds of 10: the peer sends, the socket answers each datagram from the receive
    // loop, the peer reads the answers.
    let mut answers = Vec::new();
    for round in 0..FRAMES / 10 {
        for i in round * 10..round * 10 + 10 {
            peer.send_to(&payload("rx", i), xsk_addr()).unwrap();
        }
        let deadline = Instant::now() + LIMIT;
        let mut received = 0;
        while received < 10 {
            assert!(
                Instant::now() < deadline,
                "round {round}: {received} of 10 datagrams reached the socket in {LIMIT:?}: {:?}",
                sock.stats()
            );
            let (mut rx, mut tx) = sock.split();
            let n = rx.recv(64, |frame| {
                let req = parse_udp_frame(frame).expect("a UDP frame");
                assert_eq!(req.dst, xsk_addr());
                assert_eq!(req.src, peer_addr());
                assert_eq!((req.dst_mac, req.src_mac), (XSK_MAC, PEER_MAC));
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(req.payload);
                assert!(tx.send_with(|out| Some(build_udp_reply(&req, &answer, out).unwrap())));
            });
            received += n;
            tx.flush().expect("flush");
            if n == 0 {
                assert!(wait_readable(fd, 100), "poll");
            }
        }
        assert_eq!(received, 10, "round {round}: more datagrams than sent");
        answers.extend(read_datagrams(&peer, 10));
    }
    drain(&mut sock);
    assert_eq!(answers.len(), FRAMES, "answers received by the peer");
    assert!(answers.iter().all(|(_, from)| *from == xsk_addr()));
    let got: BTreeSet<Vec<u8>> = answers.into_iter().map(|(d, _)| d).collect();
    let want: BTreeSet<Vec<u8>> = (0..FRAMES)
        .map(|i| [b"re:".as_slice(), &payload("rx", i)].concat())
        .collect();
    assert_eq!(got, want, "answers");
    assert_no_more(&peer);

    let st = sock.stats().expect("stats");
    assert_eq!(
        (
            st.rx_dropped,
            st.rx_ring_full,
            st.rx_fill_ring_empty_descs,
            st.rx_invalid_descs,
            st.tx_invalid_descs
        ),
        (0, 0, 0, 0, 0),
        "{st:?}"
    );
}

#[test]
fn opening_reports_missing_and_taken_queues() {
    if !require_root("opening_reports_missing_and_taken_queues") {
        return;
    }
    let pair = Pair::new();
    let (missing, taken, first_alive) = pair
        .xsk
        .enter(|| {
            let ifindex = xsk::ifindex(XSK_IF)?;
            // A veth has one queue.
            let missing = XskSocket::open(&config(ifindex, 5)).map(|_| ());
            let first = XskSocket::open(&config(ifindex, 0))?;
            let taken = XskSocket::open(&config(ifindex, 0)).map(|_| ());
            let first_alive = first.stats().is_ok();
            Ok((missing, taken, first_alive))
        })
        .unwrap();
    assert!(
        matches!(&missing, Err(XskError::Bind { queue: 5, .. })),
        "{missing:?}"
    );
    match &taken {
        Err(XskError::Bind {
            queue: 0, source, ..
        }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY), "{source}")
        }
        other => panic!("a second socket on a taken queue: {other:?}"),
    }
    assert!(first_alive);
    let no_such = pair.xsk.enter(|| Ok(xsk::ifindex("nope0"))).unwrap();
    assert!(matches!(no_such, Err(XskError::InterfaceNotFound(_))));
}

/// Waits up to `ms` for the socket to become readable; false on a poll error.
fn wait_readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) >= 0 }
}

/// An XDP program attached (native mode, through a BPF link) to an interface, redirecting
/// IPv4 UDP to `port` into an XSKMAP whose entry 0 is the socket, passing everything else.
/// Closing the link (on drop) detaches it.
struct XskSteer {
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
}

const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_UPDATE_ELEM: i32 = 2;
const BPF_PROG_LOAD: i32 = 5;
const BPF_LINK_CREATE: i32 = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;

/// The leading fields of `union bpf_attr` for BPF_MAP_CREATE.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// For BPF_MAP_UPDATE_ELEM.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// For BPF_PROG_LOAD.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// For BPF_LINK_CREATE.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// One BPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `bpf(cmd, attr, sizeof attr)`: the new descriptor (or 0).
fn bpf<T>(cmd: i32, attr: &T) -> io::Result<i32> {
    // SAFETY: `attr` is a live `#[repr(C)]` prefix of `union bpf_attr` of the size
    // passed; the commands used here only read it (pointers inside it point to live
    // buffers of the sizes they give).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *const T).cast::<libc::c_void>(),
            size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: a fresh descriptor the kernel just returned; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl XskSteer {
    /// Run in the interface's namespace (ifindexes are per namespace).
    fn attach(ifindex: u32, port: u16, xsk_fd: RawFd) -> anyhow::Result<XskSteer> {
        use anyhow::Context;
        let map = owned(
            bpf(
                BPF_MAP_CREATE,
                &MapCreate {
                    map_type: BPF_MAP_TYPE_XSKMAP,
                    key_size: 4,
                    value_size: 4,
                    max_entries: 1,
                    map_flags: 0,
                },
            )
            .context("create the XSKMAP")?,
        );
        let (key, value) = (0u32, xsk_fd as u32);
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &MapUpdate {
                map_fd: map.as_raw_fd() as u32,
                key: &key as *const u32 as u64,
                value: &value as *const u32 as u64,
                flags: 0,
            },
        )
        .context("put the socket in the XSKMAP")?;

        // r6 = ctx; packet bounds in r2..r3; every check jumps to PASS when it fails.
        const PASS: usize = 20;
        let j = |at: usize| (PASS - at - 1) as i16;
        let port_le = i32::from(u16::from_le_bytes(port.to_be_bytes()));
        let map_fd = map.as_raw_fd();
        let prog = [
            insn(0xbf, 6, 1, 0, 0),                     // 0: r6 = r1
            insn(0x61, 2, 6, 0, 0),                     // 1: r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),                     // 2: r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),                     // 3: r4 = r2
            insn(0x07, 4, 0, 0, 38),                    // 4: r4 += 38 (Ethernet, IPv4, UDP ports)
            insn(0x2d, 4, 3, j(5), 0),                  // 5: if r4 > r3 goto PASS
            insn(0x69, 4, 2, 12, 0),                    // 6: r4 = ethertype (as loaded: LE)
            insn(0x55, 4, 0, j(7), 0x0008),             // 7: if r4 != IPv4 goto PASS
            insn(0x71, 4, 2, 14, 0),                    // 8: r4 = version/IHL
            insn(0x55, 4, 0, j(9), 0x45),               // 9: if options goto PASS
            insn(0x71, 4, 2, 23, 0),                    // 10: r4 = protocol
            insn(0x55, 4, 0, j(11), 17),                // 11: if not UDP goto PASS
            insn(0x69, 4, 2, 36, 0),                    // 12: r4 = destination port
            insn(0x55, 4, 0, j(13), port_le),           // 13: if other port goto PASS
            insn(0x61, 2, 6, 16, 0),                    // 14: r2 = ctx->rx_queue_index
            insn(0x18, 1, 1, 0, map_fd),                // 15: r1 = the map (BPF_PSEUDO_MAP_FD)
            insn(0, 0, 0, 0, 0),                        // 16: (second half of 15)
            insn(0xb7, 3, 0, 0, XDP_PASS),              // 17: r3 = XDP_PASS (if no socket)
            insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP), // 18: call bpf_redirect_map
            insn(0x95, 0, 0, 0, 0),                     // 19: exit
            insn(0xb7, 0, 0, 0, XDP_PASS),              // 20 = PASS: r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0),                     // 21: exit
        ];
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"xsk_steer");
        let load = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_XDP,
        };
        let prog = match bpf(BPF_PROG_LOAD, &load) {
            Ok(fd) => owned(fd),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                anyhow::bail!(
                    "load the XDP program: {e}\n{}",
                    String::from_utf8_lossy(&log[..end])
                );
            }
        };
        let link = owned(
            bpf(
                BPF_LINK_CREATE,
                &LinkCreate {
                    prog_fd: prog.as_raw_fd() as u32,
                    target_ifindex: ifindex,
                    attach_type: BPF_XDP,
                    flags: XDP_FLAGS_DRV_MODE,
                },
            )
            .context("attach the XDP program (native)")?,
        );
        Ok(XskSteer {
            _link: link,
            _prog: prog,
            _map: map,
        })
    }
}
