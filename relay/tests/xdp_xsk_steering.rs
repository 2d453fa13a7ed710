//! The AF_XDP steering of `relay_xdp` (`ebpf/relay-ebpf/src/xsk.rs`) and its userspace
//! handle (`relay::xdp::xsk_steer`), through `BPF_PROG_TEST_RUN` (needs root).
//!
//! - Off by default: with `TURN_XSK_WORKERS` = 0 every frame the program passes up
//!   still passes up unchanged, whatever the port map says; with steering on but no
//!   socket in `TURN_XSKS` the redirect falls back to XDP_PASS.
//! - With a real AF_XDP socket (bound, in copy mode, to queue 0 of a multi-queue veth in
//!   a namespace this test creates, and registered for every queue: `BPF_PROG_TEST_RUN`
//!   only runs the program, the queue check happens when a redirect is carried out) the
//!   verdict is XDP_REDIRECT exactly where `relay_common::turn::xsk_port_steers` says so:
//!   listen ports on every queue, relayed ports on their owner's queues only, nothing
//!   for fragments, IPv4 options, IPv6 extension headers, VLAN tags, non-UDP, other
//!   ports or other interfaces. Binding requests the kernel answers stay XDP_TX, TURN
//!   frames it relays stay relayed; TURN frames it passes up (no rule) are steered.
//! - The handle's writes land in the maps (read back), bad input is refused with typed
//!   errors, a closed socket stops being a target.
//! - The steering maps are per process: never pinned, fresh (off) in a daemon that
//!   adopts a previous one's pins, turned off when the fast path goes.
#![allow(clippy::unwrap_used)]

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

use relay::{
    wire,
    xdp::{
        FastPath, PINNED_MAPS, TURN_RULES_MIN, UNPINNED_XSK_MAPS, XdpMode, XdpOptions,
        rules::TurnMaps,
        testrun::{XdpAction, XdpOutcome, XdpTestRun},
        xsk_steer::{XskPort, XskSteerError, XskSteering},
    },
};
use relay_common::turn::{self as rc, MAX_XSK_QUEUES, MAX_XSK_WORKERS, xsk_port_steers};

const LISTEN: u16 = 3478;
const RELAYED: u16 = 50_000;
const OTHER: u16 = 9999;
const QUEUES: u32 = 4;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
const RELAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// `lo` in a new network namespace.
const LO_IFINDEX: u32 = 1;

#[path = "common/root.rs"]
mod root;
use root::{forward_on_lo_only, ip, privileged};

// ---------- frames ----------

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 78, 0, last))
}
fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, last))
}

fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 1600];
    let n = wire::build_udp_request(CLIENT_MAC, RELAY_MAC, src, dst, payload, &mut out)
        .expect("build frame");
    out.truncate(n);
    out
}

/// A UDP frame from a client (IPv4 or IPv6) to `port` on the relay.
fn to_port(is_v6: bool, port: u16, payload: &[u8]) -> Vec<u8> {
    let (c, r) = if is_v6 {
        (v6(100), v6(1))
    } else {
        (v4(100), v4(1))
    };
    udp(
        SocketAddr::new(c, 40_000),
        SocketAddr::new(r, port),
        payload,
    )
}

/// Not STUN, not ChannelData: the kernel passes it up on any port.
const PLAIN: &[u8] = b"\xff plain datagram, neither STUN nor ChannelData";

fn fix_ipv4_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = wire::checksum::ipv4_header_checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// The IPv4 frame with its flags/fragment-offset field set to `frag`.
fn with_frag(mut f: Vec<u8>, frag: u16) -> Vec<u8> {
    f[20..22].copy_from_slice(&frag.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    f
}

/// The IPv4 frame with 4 bytes of NOP options (IHL 6).
fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut o = f[..34].to_vec();
    o.extend_from_slice(&[1, 1, 1, 1]);
    o.extend_from_slice(&f[34..]);
    o[14] = 0x46;
    let total = u16::from_be_bytes([o[16], o[17]]) + 4;
    o[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut o);
    o
}

/// The IPv4 frame with protocol `proto` instead of UDP (the "ports" stay in place).
fn with_protocol(mut f: Vec<u8>, proto: u8) -> Vec<u8> {
    f[23] = proto;
    fix_ipv4_checksum(&mut f);
    f
}

/// The IPv6 frame with an empty hop-by-hop options header before the UDP header.
fn with_hop_by_hop(f: &[u8]) -> Vec<u8> {
    let mut o = f[..54].to_vec();
    o[20] = 0; // next header: hop-by-hop
    o.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // UDP next, PadN
    o.extend_from_slice(&f[54..]);
    let plen = u16::from_be_bytes([o[18], o[19]]) + 8;
    o[18..20].copy_from_slice(&plen.to_be_bytes());
    o
}

/// The frame with an 802.1Q tag.
fn with_vlan(f: &[u8]) -> Vec<u8> {
    let mut o = f[..12].to_vec();
    o.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    o.extend_from_slice(&f[12..]);
    o
}

fn binding_request() -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[7; 12]);
    m
}

/// A STUN request the kernel does not answer (an Allocate request): passed up.
fn allocate_request() -> Vec<u8> {
    let mut m = vec![0x00, 0x03, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[9; 12]);
    m
}

fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = channel.to_be_bytes().to_vec();
    m.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    m.extend_from_slice(payload);
    while !m.len().is_multiple_of(4) {
        m.push(0);
    }
    m
}

// ---------- the namespace ----------

/// A namespace with a 4-queue veth v0 (the relay's addresses) ↔ v1, permanent
/// neighbour entries for the client and the peer, forwarding on `lo` only; deleted on
/// drop.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("xskst{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        let n = ns.0.as_str();
        let q = QUEUES.to_string();
        ip(&[
            "-n",
            n,
            "link",
            "add",
            "v0",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        ip(&["-n", n, "link", "set", "v0", "address", "02:00:00:00:00:01"]);
        for dev in ["lo", "v0", "v1"] {
            ip(&["-n", n, "link", "set", dev, "up"]);
        }
        for a in ["10.78.0.1/24", "10.78.0.2/24"] {
            ip(&["-n", n, "addr", "add", a, "dev", "v0"]);
        }
        for (a, mac) in [
            ("10.78.0.100", "02:00:00:00:00:c1"),
            ("10.78.0.200", "02:00:00:00:00:b1"),
        ] {
            ip(&[
                "-n",
                n,
                "neigh",
                "add",
                a,
                "lladdr",
                mac,
                "dev",
                "v0",
                "nud",
                "permanent",
            ]);
        }
        forward_on_lo_only(n);
        ns
    }

    /// Moves the calling thread into the namespace until the guard drops.
    fn enter(&self) -> Entered {
        let orig = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(format!("/run/netns/{}", self.0)).expect("netns file");
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let r = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns into {}", self.0);
        Entered { orig }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Entered {
    orig: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; back to the thread's original namespace.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

// ---------- a minimal AF_XDP socket ----------

const UMEM_FRAMES: usize = 16;
const FRAME: usize = 4096;
const RING: u32 = 64;

/// An AF_XDP socket with a UMEM, fill/completion/RX rings, bound in copy mode. Enough
/// for the kernel to accept it in an XSKMAP; it never receives anything here.
struct Xsk {
    fd: Option<OwnedFd>,
    umem: *mut libc::c_void,
}

impl Xsk {
    fn bind(ifindex: u32, queue: u32) -> io::Result<Xsk> {
        fn check(r: libc::c_int) -> io::Result<()> {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        // SAFETY: plain socket(2) call.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(raw)?;
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an anonymous private mapping; the result is checked.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                UMEM_FRAMES * FRAME,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let x = Xsk { fd: Some(fd), umem };
        let s = x.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: (UMEM_FRAMES * FRAME) as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let setopt = |opt: libc::c_int, v: *const libc::c_void, len: usize| {
            // SAFETY: `v` points at `len` readable bytes of the option's type.
            check(unsafe { libc::setsockopt(s, libc::SOL_XDP, opt, v, len as libc::socklen_t) })
        };
        setopt(
            libc::XDP_UMEM_REG,
            (&raw const reg).cast(),
            size_of::<libc::xdp_umem_reg>(),
        )?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
        ] {
            let ring: u32 = RING;
            setopt(opt, (&raw const ring).cast(), 4)?;
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp of the size passed.
        check(unsafe {
            libc::bind(
                s,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        })?;
        Ok(x)
    }

    fn raw(&self) -> i32 {
        self.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        drop(self.fd.take());
        // SAFETY: the mapping made in `bind`, unmapped once, after its socket closed.
        unsafe { libc::munmap(self.umem, UMEM_FRAMES * FRAME) };
    }
}

fn ifindex(name: &std::ffi::CStr) -> u32 {
    // SAFETY: a valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(i, 0, "no interface {name:?}");
    i
}

// ---------- checks ----------

fn action(x: &XdpTestRun, f: &[u8], ifindex: u32, queue: u32) -> XdpOutcome {
    x.run_on_queue(f, ifindex, queue)
        .expect("BPF_PROG_TEST_RUN")
}

#[track_caller]
fn assert_passed(out: &XdpOutcome, input: &[u8], what: &str) {
    assert_eq!(out.action, XdpAction::Pass, "{what}: verdict");
    assert_eq!(out.frame, input, "{what}: passed unchanged");
}

#[track_caller]
fn assert_steered(out: &XdpOutcome, input: &[u8], what: &str) {
    assert_eq!(out.action, XdpAction::Redirect, "{what}: verdict");
    assert_eq!(out.frame, input, "{what}: redirected unchanged");
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------- tests ----------

/// Steering off (the default) changes nothing; steering on without sockets falls back to
/// XDP_PASS; the handle's writes land in the maps and bad input is refused.
#[test]
fn off_by_default_and_without_sockets() {
    if !privileged() {
        return;
    }
    let x = XdpTestRun::load(&[LISTEN]).expect("load relay_xdp");
    let s = XskSteering::from_ebpf(x.ebpf()).expect("steering maps");

    // A fresh program: steering off, no port marked, no interface filter.
    assert_eq!(s.workers().unwrap(), 0);
    assert_eq!(
        s.interfaces().unwrap(),
        vec![0; rc::MAX_XSK_IFACES as usize]
    );
    for port in [0, LISTEN, RELAYED, u16::MAX] {
        assert_eq!(s.port(port).unwrap(), XskPort::None, "port {port}");
    }

    // Writes land in the maps.
    s.mark_listen(LISTEN).unwrap();
    s.set_owner(RELAYED, 3).unwrap();
    s.set_owner(u16::MAX, MAX_XSK_WORKERS - 1).unwrap();
    assert_eq!(s.add_interface(7).unwrap(), 0);
    assert_eq!(s.add_interface(9).unwrap(), 1);
    assert_eq!(s.add_interface(7).unwrap(), 0, "idempotent");
    assert_eq!(s.port(LISTEN).unwrap(), XskPort::Listen);
    assert_eq!(s.port(RELAYED).unwrap(), XskPort::Owner(3));
    assert_eq!(
        s.port(u16::MAX).unwrap(),
        XskPort::Owner(MAX_XSK_WORKERS - 1)
    );
    assert_eq!(s.port(OTHER).unwrap(), XskPort::None);
    assert_eq!(&s.interfaces().unwrap()[..3], &[7, 9, 0]);
    s.clear_port(u16::MAX).unwrap();
    assert_eq!(s.port(u16::MAX).unwrap(), XskPort::None);

    // Marked ports, steering still off: everything passes up unchanged.
    let frames = [
        to_port(false, LISTEN, PLAIN),
        to_port(true, LISTEN, PLAIN),
        to_port(false, RELAYED, PLAIN),
        to_port(false, LISTEN, &allocate_request()),
    ];
    for f in &frames {
        assert_passed(&x.run(f).unwrap(), f, "steering off");
    }

    // On, one worker, but no socket in TURN_XSKS: the redirect falls back to XDP_PASS.
    s.set_workers(1).unwrap();
    assert_eq!(s.workers().unwrap(), 1);
    s.set_owner(RELAYED, 0).unwrap();
    for f in &frames {
        assert_passed(&x.run(f).unwrap(), f, "no socket");
    }
    assert_eq!(s.steered_frames().unwrap(), 0, "nothing was redirected");
    s.remove_socket(7, 0)
        .expect("removing an absent socket is no error");
    assert!(matches!(
        s.remove_socket(8, 0),
        Err(XskSteerError::UnknownInterface { ifindex: 8 })
    ));

    // Clones share the maps.
    let c = s.clone();
    c.turn_off().unwrap();
    assert_eq!(s.workers().unwrap(), 0);

    // Bad input is refused with typed errors, before any syscall.
    assert!(matches!(
        s.add_socket(7, MAX_XSK_QUEUES, 0),
        Err(XskSteerError::QueueOutOfRange { queue }) if queue == MAX_XSK_QUEUES
    ));
    assert!(matches!(
        s.remove_socket(7, MAX_XSK_QUEUES),
        Err(XskSteerError::QueueOutOfRange { .. })
    ));
    assert!(matches!(
        s.set_owner(RELAYED, MAX_XSK_WORKERS),
        Err(XskSteerError::TooManyWorkers { .. })
    ));
    assert!(matches!(
        s.set_workers(MAX_XSK_WORKERS + 1),
        Err(XskSteerError::TooManyWorkers { .. })
    ));
    assert_eq!(s.port(RELAYED).unwrap(), XskPort::Owner(0), "unchanged");
    // A UDP socket is no AF_XDP socket: the kernel refuses it.
    let udp_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = s
        .add_socket(7, 0, udp_sock.as_raw_fd())
        .expect_err("not an AF_XDP socket");
    assert!(
        matches!(e, XskSteerError::NotASocket { queue: 0, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("AF_XDP"), "{e}");
}

/// The steering decisions end to end, with a real AF_XDP socket in `TURN_XSKS`.
#[test]
fn steers_exactly_what_the_decision_says() {
    if !privileged() {
        return;
    }
    let ns = Netns::create("s");
    let x = XdpTestRun::load(&[LISTEN]).expect("load relay_xdp");
    let _in = ns.enter();
    let v0 = ifindex(c"v0");
    let s = XskSteering::from_ebpf(x.ebpf()).expect("steering maps");
    let xsk = Xsk::bind(v0, 0).expect("bind an AF_XDP socket to v0 queue 0");
    // The same socket for every queue: BPF_PROG_TEST_RUN returns the verdict without
    // delivering, so the redirect only needs an entry.
    s.add_interface(v0).unwrap();
    for q in 0..QUEUES {
        s.add_socket(v0, q, xsk.raw()).expect("register the socket");
    }
    s.mark_listen(LISTEN).unwrap();
    let run = |f: &[u8], q: u32| action(&x, f, v0, q);

    // Off: passes.
    for is_v6 in [false, true] {
        let f = to_port(is_v6, LISTEN, PLAIN);
        assert_passed(&run(&f, 0), &f, "workers = 0");
    }

    s.set_workers(1).unwrap();
    let mut steered = 0;
    for is_v6 in [false, true] {
        let fam = if is_v6 { "IPv6" } else { "IPv4" };
        for q in 0..QUEUES {
            let f = to_port(is_v6, LISTEN, PLAIN);
            assert_steered(&run(&f, q), &f, &format!("{fam} listen port, queue {q}"));
            steered += 1;
        }
        let f = to_port(is_v6, OTHER, PLAIN);
        assert_passed(&run(&f, 0), &f, &format!("{fam} unmarked port"));
        // A STUN request the kernel does not answer is passed up, hence steered.
        let f = to_port(is_v6, LISTEN, &allocate_request());
        assert_steered(&run(&f, 0), &f, &format!("{fam} Allocate request"));
        steered += 1;
        // A Binding request on a served port stays answered in the kernel.
        let f = to_port(is_v6, LISTEN, &binding_request());
        assert_eq!(run(&f, 0).action, XdpAction::Tx, "{fam} Binding answered");
    }
    assert_eq!(s.steered_frames().unwrap(), steered, "counted per redirect");

    // Frames whose UDP header is not at the fixed place, or not UDP: passed up.
    let f4 = to_port(false, LISTEN, PLAIN);
    let f6 = to_port(true, LISTEN, PLAIN);
    assert_steered(
        &run(&with_frag(f4.clone(), 0x4000), 0),
        &with_frag(f4.clone(), 0x4000),
        "DF only",
    );
    for (f, what) in [
        (with_frag(f4.clone(), 0x2000), "first fragment (MF)"),
        (with_frag(f4.clone(), 0x0010), "later fragment (offset)"),
        (with_frag(f4.clone(), 0x6010), "DF, MF and offset"),
        (with_ip_options(&f4), "IPv4 options"),
        (with_protocol(f4.clone(), 6), "TCP"),
        (with_hop_by_hop(&f6), "IPv6 hop-by-hop header"),
        (with_vlan(&f4), "VLAN-tagged IPv4"),
        (with_vlan(&f6), "VLAN-tagged IPv6"),
        (f4[..40].to_vec(), "truncated UDP header"),
    ] {
        assert_passed(&run(&f, 0), &f, what);
    }

    // Relayed ports: only on the owner's queues (queue % workers == owner).
    for workers in [1u32, 2, 3] {
        s.set_workers(workers).unwrap();
        for owner in 0..workers {
            s.set_owner(RELAYED, owner).unwrap();
            let kind = rc::xsk_port_owner(owner).unwrap();
            for q in 0..QUEUES {
                let f = to_port(false, RELAYED, PLAIN);
                let out = run(&f, q);
                let what = format!("relayed port of worker {owner}/{workers}, queue {q}");
                if xsk_port_steers(kind, q, workers) {
                    assert_steered(&out, &f, &what);
                } else {
                    assert_passed(&out, &f, &what);
                }
                assert_eq!(
                    out.action == XdpAction::Redirect,
                    q % workers == owner,
                    "{what}"
                );
            }
        }
    }
    // A stale owner beyond the worker count: nowhere.
    s.set_workers(2).unwrap();
    s.set_owner(RELAYED, 5).unwrap();
    for q in 0..QUEUES {
        let f = to_port(false, RELAYED, PLAIN);
        assert_passed(&run(&f, q), &f, "owner beyond the workers");
    }
    s.clear_port(RELAYED).unwrap();
    let f = to_port(false, RELAYED, PLAIN);
    assert_passed(&run(&f, 0), &f, "cleared port");

    // Interfaces: a frame of an interface without sockets (not added) passes, and one
    // added for another interface's sockets does not take them.
    s.set_workers(1).unwrap();
    assert_steered(&run(&f4, 0), &f4, "this interface");
    // `lo` (ifindex 1) stands for another interface of the namespace.
    assert_passed(&action(&x, &f4, 1, 0), &f4, "an interface not added");
    s.add_interface(1).unwrap();
    assert_passed(&action(&x, &f4, 1, 0), &f4, "an interface without sockets");
    assert_steered(&run(&f4, 0), &f4, "still this interface");

    // Removing the socket of a queue: that queue passes, the others still steer.
    s.remove_socket(v0, 1).unwrap();
    assert_passed(&run(&f4, 1), &f4, "queue without a socket");
    assert_steered(&run(&f4, 2), &f4, "queue with a socket");
    // Off again.
    s.turn_off().unwrap();
    assert_passed(&run(&f4, 0), &f4, "turned off");
    // Closing the socket removes it from the map: steering on again, nothing steered.
    s.set_workers(1).unwrap();
    assert_steered(&run(&f4, 0), &f4, "before close");
    drop(xsk);
    for q in 0..QUEUES {
        assert_passed(&run(&f4, q), &f4, &format!("socket closed, queue {q}"));
    }
}

/// What the kernel relays stays relayed; TURN frames it passes up are steered.
#[test]
fn kernel_relayed_turn_stays_in_the_kernel() {
    if !privileged() {
        return;
    }
    let ns = Netns::create("t");
    let mut x = XdpTestRun::load(&[LISTEN]).expect("load relay_xdp");
    let _in = ns.enter();
    let v0 = ifindex(c"v0");
    let s = XskSteering::from_ebpf(x.ebpf()).expect("steering maps");
    let xsk = Xsk::bind(v0, 0).expect("bind an AF_XDP socket to v0 queue 0");
    s.add_interface(v0).unwrap();
    s.add_socket(v0, 0, xsk.raw()).unwrap();
    s.mark_listen(LISTEN).unwrap();
    s.set_owner(RELAYED, 0).unwrap();
    s.set_workers(1).unwrap();

    let client = SocketAddr::new(v4(100), 40_000);
    let server = SocketAddr::new(v4(1), LISTEN);
    let relay = SocketAddr::new(v4(2), RELAYED);
    let peer = SocketAddr::new(v4(200), 7000);
    let key = |ip: IpAddr| match ip {
        IpAddr::V4(a) => rc::mapped_v4(a.octets()),
        IpAddr::V6(a) => a.octets(),
    };
    let maps = TurnMaps::take(x.ebpf_mut()).expect("TURN maps");
    maps.set_settings(&rc::TurnSettings {
        flags: rc::SETTING_ENABLED | rc::SETTING_DATA_INDICATIONS,
        relay_port_min: 49_152,
        relay_port_max: 65_535,
        next_hop_ttl_ms: 0,
        fib_ifindex: LO_IFINDEX,
    })
    .unwrap();
    let expires_ns = monotonic_ns() + 300_000_000_000;
    maps.insert_channel(
        &rc::ChannelKey {
            client_addr: key(client.ip()),
            server_addr: key(server.ip()),
            client_port: rc::wire(client.port()),
            server_port: rc::wire(server.port()),
            channel: rc::wire(0x4001),
            _pad: [0; 2],
        },
        &rc::ChannelRule {
            expires_ns,
            relay_addr: key(relay.ip()),
            peer_addr: key(peer.ip()),
            relay_port: rc::wire(relay.port()),
            peer_port: rc::wire(peer.port()),
            flags: 0,
            _pad: 0,
            stats_idx: 1,
            alloc_idx: rc::NO_BUDGET,
        },
    )
    .unwrap();
    maps.insert_peer(
        &rc::PeerKey {
            peer_addr: key(peer.ip()),
            relay_addr: key(relay.ip()),
            peer_port: rc::wire(peer.port()),
            relay_port: rc::wire(relay.port()),
        },
        &rc::PeerRule {
            expires_ns,
            client_addr: key(client.ip()),
            server_addr: key(server.ip()),
            client_port: rc::wire(client.port()),
            server_port: rc::wire(server.port()),
            channel: rc::wire(0x4001),
            flags: 0,
            stats_idx: 2,
            alloc_idx: rc::NO_BUDGET,
        },
    )
    .unwrap();
    let run = |f: &[u8]| action(&x, f, v0, 0);

    // ChannelData with a rule: relayed in the kernel (rewritten, sent back out of v0).
    let f = udp(client, server, &channel_data(0x4001, b"media"));
    let out = run(&f);
    assert_eq!(out.action, XdpAction::Tx, "relayed to the peer");
    assert_ne!(out.frame, f, "rewritten");
    // An unknown channel: passed up by the TURN path, so steered.
    let f = udp(client, server, &channel_data(0x4002, b"media"));
    assert_steered(&run(&f), &f, "ChannelData without a rule");
    // Peer data with a rule: relayed to the client.
    let f = udp(peer, relay, b"from the peer");
    let out = run(&f);
    assert_eq!(out.action, XdpAction::Tx, "relayed to the client");
    assert_ne!(out.frame, f, "rewritten");
    // From a peer without permission: passed up, steered to the owner.
    let stranger = SocketAddr::new(v4(201), 7000);
    let f = udp(stranger, relay, b"from a stranger");
    assert_steered(&run(&f), &f, "peer data without a rule");
    assert_eq!(s.steered_frames().unwrap(), 2);
    drop(xsk);
}

/// The steering maps are never pinned: a second daemon adopting the pins of a first
/// starts with steering off, and a fast path turns its steering off when it goes.
#[test]
fn steering_maps_are_per_process() {
    if !privileged() {
        return;
    }
    let root = std::path::Path::new("/sys/fs/bpf");
    if !root.exists() {
        eprintln!("skipped: /sys/fs/bpf does not exist");
        return;
    }
    let dir = root.join(format!("relay-test-xsk-{}", std::process::id()));
    let _ = relay::xdp::unload_pins(&dir);
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = relay::xdp::unload_pins(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let opts = XdpOptions {
        interfaces: Vec::new(),
        mode: XdpMode::Auto,
        stun_ports: vec![LISTEN],
        pin_dir: Some(dir.clone()),
        turn_rules: TURN_RULES_MIN,
    };
    for name in UNPINNED_XSK_MAPS {
        assert!(!PINNED_MAPS.contains(&name), "{name} must not be pinned");
    }

    let first = FastPath::start(&opts).expect("first start");
    let s1 = first.xsk_steering().expect("steering maps");
    s1.set_workers(3).unwrap();
    s1.mark_listen(LISTEN).unwrap();
    assert!(
        dir.join(rc::maps::SETTINGS).exists(),
        "the TURN maps are pinned"
    );
    for name in UNPINNED_XSK_MAPS {
        assert!(!dir.join(name).exists(), "{name} pinned");
    }

    // A second start adopts the pinned maps but gets its own, fresh steering maps.
    let second = FastPath::start(&opts).expect("second start adopts the pins");
    let s2 = second.xsk_steering().expect("steering maps");
    assert_eq!(s2.workers().unwrap(), 0, "steering off in the new program");
    assert_eq!(s2.port(LISTEN).unwrap(), XskPort::None);
    assert_eq!(
        s1.workers().unwrap(),
        3,
        "the first program's maps untouched"
    );

    // Going away turns the steering off (a pinned program left running passes up).
    drop(first);
    assert_eq!(s1.workers().unwrap(), 0, "turned off on drop");
    s2.set_workers(1).unwrap();
    second.release().expect("release");
    assert_eq!(s2.workers().unwrap(), 0, "turned off on release");
}
