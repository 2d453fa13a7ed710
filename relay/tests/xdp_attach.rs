//! The fast path attached for real (needs root): `FastPath` on a veth inside a network
//! namespace answers a client in another namespace through XDP_TX, counts it, and
//! detaches cleanly; plus the facts the daemon's defaults rest on (does a veth peer need
//! an XDP program to receive XDP_TX'ed frames? does generic XDP on `lo` answer a local
//! client?). Namespaces are created per test and deleted on drop, also on failure.
#![allow(clippy::unwrap_used)]

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::mpsc,
    thread,
    time::Duration,
};

use relay::xdp::{AttachedMode, FastPath, XdpMode, XdpOptions};
use relay_common::counter;

#[path = "common/root.rs"]
mod root;
use root::{ip, privileged};

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("rxdp-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }
    /// Runs `f` on a thread inside the namespace (sockets and XDP attachments made
    /// there belong to it).
    fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let file = File::open(format!("/run/netns/{}", self.0)).expect("open netns");
        thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace")
    }
    /// `ethtool -K <iface> tx off` inside the namespace: locally sent UDP then carries a
    /// complete checksum instead of a partial one left to "hardware".
    fn tx_checksum_off(&self, iface: &str) {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "ethtool", "-K", iface, "tx", "off",
            ])
            .output()
            .expect("run ethtool");
        assert!(
            out.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fn socket(&self, addr: SocketAddr) -> UdpSocket {
        self.enter(move || {
            let s = UdpSocket::bind(addr).expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            s
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn binding_request(txid: [u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[..8].copy_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]);
    m[8..].copy_from_slice(&txid);
    m
}

/// Sends Binding requests (up to 5 tries) and returns the mapped address of the first
/// answer, if any.
fn ask(sock: &UdpSocket, server: SocketAddr) -> Option<SocketAddr> {
    for attempt in 0..5u8 {
        let txid = [attempt; 12];
        sock.send_to(&binding_request(txid), server).expect("send");
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from != server || n < 32 || buf[..2] != [0x01, 0x01] || buf[8..20] != txid {
                continue;
            }
            let port = u16::from_be_bytes([buf[26], buf[27]]) ^ 0x2112;
            let ip = match buf[25] {
                0x01 => {
                    let x = u32::from_be_bytes([buf[28], buf[29], buf[30], buf[31]]) ^ 0x2112_A442;
                    IpAddr::from(x.to_be_bytes())
                }
                _ => {
                    let mut a = [0u8; 16];
                    for i in 0..16 {
                        let key = if i < 4 {
                            0x2112_A442u32.to_be_bytes()[i]
                        } else {
                            txid[i - 4]
                        };
                        a[i] = buf[28 + i] ^ key;
                    }
                    IpAddr::from(a)
                }
            };
            return Some(SocketAddr::new(ip, port));
        }
    }
    None
}

/// Holds a FastPath on a thread inside a namespace; dropping it detaches.
struct Attached {
    stop: Option<mpsc::Sender<()>>,
    counters: mpsc::Receiver<[u64; counter::COUNT as usize]>,
    ask_counters: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
    attachments: Vec<(String, AttachedMode)>,
}

impl Attached {
    fn start(ns: &Netns, opts: XdpOptions) -> Attached {
        let file = File::open(format!("/run/netns/{}", ns.0)).expect("open netns");
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (ask_tx, ask_rx) = mpsc::channel::<()>();
        let (cnt_tx, cnt_rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let fp = match FastPath::start(&opts) {
                Ok(fp) => fp,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(fp.attachments().to_vec()));
            loop {
                // Stop on a message or when the sender is gone.
                if !matches!(stop_rx.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    break;
                }
                if ask_rx.recv_timeout(Duration::from_millis(20)).is_ok() {
                    let _ = cnt_tx.send(fp.counters().expect("counters"));
                }
            }
            fp.detach().expect("detach");
        });
        let attachments = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("FastPath::start timed out")
            .expect("FastPath::start");
        Attached {
            stop: Some(stop_tx),
            counters: cnt_rx,
            ask_counters: ask_tx,
            thread: Some(thread),
            attachments,
        }
    }
    fn counters(&self) -> [u64; counter::COUNT as usize] {
        self.ask_counters.send(()).expect("ask counters");
        self.counters
            .recv_timeout(Duration::from_secs(5))
            .expect("counters")
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn xdp_prog_attached(ns: &Netns, iface: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.0, "link", "show", iface])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn fast_path_answers_over_veth_in_native_mode() {
    if !privileged() {
        return;
    }
    let client = Netns::new("c");
    let relay = Netns::new("r");
    ip(&[
        "link", "add", "rxdp-c", "netns", &client.0, "type", "veth", "peer", "name", "rxdp-r",
        "netns", &relay.0,
    ]);
    client.ip(&["addr", "add", "10.201.0.1/24", "dev", "rxdp-c"]);
    relay.ip(&["addr", "add", "10.201.0.2/24", "dev", "rxdp-r"]);
    client.ip(&["addr", "add", "fd00:201::1/64", "dev", "rxdp-c", "nodad"]);
    relay.ip(&["addr", "add", "fd00:201::2/64", "dev", "rxdp-r", "nodad"]);
    client.ip(&["link", "set", "rxdp-c", "up"]);
    relay.ip(&["link", "set", "rxdp-r", "up"]);

    let fp = Attached::start(
        &relay,
        XdpOptions {
            interfaces: vec!["rxdp-r".into()],
            mode: XdpMode::Native,
            stun_ports: vec![3478],
            pin_dir: None,
            turn_rules: relay_common::turn::MAX_MAP_ENTRIES,
        },
    );
    assert_eq!(
        fp.attachments,
        vec![("rxdp-r".to_owned(), AttachedMode::Native)]
    );
    assert!(xdp_prog_attached(&relay, "rxdp-r"));

    let s4 = client.socket("10.201.0.1:0".parse().expect("addr"));
    let s6 = client.socket("[fd00:201::1]:0".parse().expect("addr"));
    let server4: SocketAddr = "10.201.0.2:3478".parse().expect("addr");
    let server6: SocketAddr = "[fd00:201::2]:3478".parse().expect("addr");

    // Nothing listens on 3478 in the relay namespace: only the kernel can answer.
    // 1. Locally sent UDP over a veth carries a partial checksum (offload): the kernel
    //    path cannot verify it and passes the request up.
    let answer = ask(&s4, server4);
    let c1 = fp.counters();
    eprintln!("veth with TX checksum offload: answer {answer:?}, counters {c1:?}");
    assert_eq!(c1[counter::STUN_ANSWERED_V4 as usize], 0, "{c1:?}");
    assert!(c1[counter::BAD_CHECKSUM_PASSED as usize] >= 1, "{c1:?}");

    // 2. Full checksums, no XDP program on the client veth.
    client.tx_checksum_off("rxdp-c");
    let answer = ask(&s4, server4);
    let c2 = fp.counters();
    eprintln!(
        "XDP_TX into a veth whose peer has no XDP program: {} (counters {c2:?})",
        if answer.is_some() {
            "received"
        } else {
            "NOT received"
        }
    );
    assert!(
        c2[counter::STUN_ANSWERED_V4 as usize] >= 1,
        "the kernel answered: {c2:?}"
    );

    // 3. With an XDP program (pass) on the receiving veth the answers arrive.
    let pass = PassOn::attach(&client, "rxdp-c");
    assert_eq!(ask(&s4, server4), Some(s4.local_addr().expect("addr")));
    assert_eq!(ask(&s6, server6), Some(s6.local_addr().expect("addr")));
    let c3 = fp.counters();
    assert!(
        c3[counter::STUN_ANSWERED_V4 as usize] > c2[counter::STUN_ANSWERED_V4 as usize],
        "{c3:?}"
    );
    assert!(c3[counter::STUN_ANSWERED_V6 as usize] >= 1, "{c3:?}");
    drop(pass);
    drop(fp);
    assert!(!xdp_prog_attached(&relay, "rxdp-r"), "detached on drop");
}

/// `relay_xdp_pass` attached natively to an interface in a namespace.
struct PassOn(Option<mpsc::Sender<()>>, Option<thread::JoinHandle<()>>);

impl PassOn {
    fn attach(ns: &Netns, iface: &str) -> PassOn {
        let file = File::open(format!("/run/netns/{}", ns.0)).expect("open netns");
        let iface = iface.to_owned();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let t = thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let mut ebpf = aya::Ebpf::load(relay::xdp::EBPF_OBJECT).expect("load object");
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(relay_common::names::XDP_PASS_PROGRAM)
                .expect("pass program")
                .try_into()
                .expect("xdp");
            prog.load().expect("load pass");
            prog.attach(&iface, aya::programs::XdpMode::Driver)
                .expect("attach pass");
            let _ = ready_tx.send(());
            let _ = stop_rx.recv();
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("pass attached");
        PassOn(Some(stop_tx), Some(t))
    }
}

impl Drop for PassOn {
    fn drop(&mut self) {
        drop(self.0.take());
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn generic_mode_on_loopback() {
    if !privileged() {
        return;
    }
    let ns = Netns::new("lo");
    let fp = Attached::start(
        &ns,
        XdpOptions {
            interfaces: vec!["lo".into()],
            mode: XdpMode::Auto,
            stun_ports: vec![3478],
            pin_dir: None,
            turn_rules: relay_common::turn::MAX_MAP_ENTRIES,
        },
    );
    eprintln!("lo attached as {:?}", fp.attachments);
    assert_eq!(
        fp.attachments,
        vec![("lo".to_owned(), AttachedMode::Generic)],
        "lo has no native XDP: Auto falls back"
    );
    let s = ns.socket("127.0.0.1:0".parse().expect("addr"));
    let server: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
    let answer = ask(&s, server);
    let c1 = fp.counters();
    eprintln!("generic XDP on lo, checksum offload on: answer {answer:?}, counters {c1:?}");
    // lo's checksum offload is fixed on: locally sent UDP always carries a partial
    // checksum there, which the kernel path cannot verify. A zero IPv4 checksum
    // (SO_NO_CHECK) means "none" and lets the kernel path answer.
    assert_eq!(c1[counter::STUN_ANSWERED_V4 as usize], 0, "{c1:?}");
    assert!(c1[counter::BAD_CHECKSUM_PASSED as usize] >= 1, "{c1:?}");
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd, option value points at a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
    let answer = ask(&s, server);
    let c2 = fp.counters();
    eprintln!("generic XDP on lo, no UDP checksum: answer {answer:?}, counters {c2:?}");
    assert!(c2[counter::STUN_ANSWERED_V4 as usize] >= 1, "{c2:?}");
    // XDP_TX on lo in generic mode loops the answer back to the local client.
    assert_eq!(answer, Some(s.local_addr().expect("addr")));
}

#[test]
fn errors_are_typed() {
    if !privileged() {
        return;
    }
    let ns = Netns::new("err");
    let ns_file = format!("/run/netns/{}", ns.0);
    let err = ns.enter(move || {
        let _keep = ns_file;
        FastPath::start(&XdpOptions {
            interfaces: vec!["no-such-if0".into()],
            mode: XdpMode::Auto,
            stun_ports: vec![3478],
            pin_dir: None,
            turn_rules: relay_common::turn::MAX_MAP_ENTRIES,
        })
        .expect_err("missing interface")
        .to_string()
    });
    assert!(
        err.contains("no-such-if0") && err.contains("not found"),
        "{err}"
    );
    // Native mode on loopback is refused with a typed attach error naming the mode.
    let err = ns.enter(|| {
        FastPath::start(&XdpOptions {
            interfaces: vec!["lo".into()],
            mode: XdpMode::Native,
            stun_ports: vec![3478],
            pin_dir: None,
            turn_rules: relay_common::turn::MAX_MAP_ENTRIES,
        })
        .expect_err("lo has no native XDP")
        .to_string()
    });
    assert!(err.contains("lo") && err.contains("native"), "{err}");
}

#[test]
fn fast_path_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<FastPath>();
}

/// Without privileges, loading fails with an error the daemon recognises
/// (`is_not_permitted`) so that it can run userspace-only. As root the test re-runs
/// itself as `nobody` (with setpriv) to see that.
#[test]
fn unprivileged_load_is_not_permitted() {
    const CHILD: &str = "RELAY_XDP_UNPRIVILEGED_CHILD";
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if std::env::var(CHILD).is_ok_and(|v| v == "1") {
        assert_ne!(euid, 0, "the child must not be root");
        let err = FastPath::start(&XdpOptions {
            interfaces: vec![],
            mode: XdpMode::Auto,
            stun_ports: vec![3478],
            pin_dir: None,
            turn_rules: relay_common::turn::MAX_MAP_ENTRIES,
        })
        .expect_err("an unprivileged user cannot load BPF maps and programs");
        assert!(
            err.is_not_permitted(),
            "not recognised as a permission error: {err}"
        );
        assert!(!err.is_not_built());
        return;
    }
    if !privileged() {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "unprivileged_load_is_not_permitted",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("setpriv (util-linux) is needed to run this test as nobody: {e}"),
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "unprivileged child failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "child did not run the check:\n{text}"
    );
}

/// Creates a BPF hash map with 4-byte keys and values and pins it at `path` (raw
/// syscalls: the test needs a map of the wrong shape, which no object of ours declares).
fn pin_small_hash_map(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt as _;
    // bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, rest zero.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[1, 4, 4, 16]);
    // SAFETY: BPF_MAP_CREATE (0) reads `size` bytes of a zero-padded bpf_attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // bpf_attr for BPF_OBJ_PIN: pathname (u64), bpf_fd (u32), file_flags, rest zero.
    let mut pin = [0u64; 16];
    pin[0] = c_path.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: BPF_OBJ_PIN (6) reads the pathname pointer (valid while `c_path` lives) and
    // the fd from a zero-padded bpf_attr.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is our own open descriptor; the pin keeps the map alive.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn pinned_maps_of_another_shape_are_refused_not_adopted() {
    if !privileged() {
        return;
    }
    let root = std::path::Path::new("/sys/fs/bpf");
    if !root.exists() {
        eprintln!("skipped: /sys/fs/bpf does not exist");
        return;
    }
    let dir = root.join(format!("relay-test-shape-{}", std::process::id()));
    let _ = relay::xdp::unload_pins(&dir);
    let _ = std::fs::remove_dir_all(&dir);
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
        stun_ports: vec![3478],
        pin_dir: Some(dir.clone()),
        turn_rules: relay_common::turn::MAX_MAP_ENTRIES,
    };

    // Positive control: a fresh directory gets this build's maps pinned, and a second
    // start adopts them.
    // A channel rule in the pinned channel table is found again by the next daemon: the
    // table's seed is adopted with it (a new seed would strand every slot), and the
    // slot stays where the kernel probes.
    let key = relay_common::turn::ChannelKey {
        client_addr: relay_common::turn::mapped_v4([198, 51, 100, 7]),
        server_addr: relay_common::turn::mapped_v4([192, 0, 2, 1]),
        client_port: relay_common::turn::wire(40000),
        server_port: relay_common::turn::wire(3478),
        channel: relay_common::turn::wire(0x4001),
        _pad: [0; 2],
    };
    let rule = relay_common::turn::ChannelRule {
        expires_ns: u64::MAX,
        relay_addr: relay_common::turn::mapped_v4([192, 0, 2, 10]),
        peer_addr: relay_common::turn::mapped_v4([203, 0, 113, 5]),
        relay_port: relay_common::turn::wire(50000),
        peer_port: relay_common::turn::wire(7000),
        flags: 0,
        _pad: 0,
        stats_idx: 5,
        alloc_idx: 5,
    };
    let seed = |dir: &std::path::Path| {
        let m =
            aya::maps::MapData::from_pin(dir.join(relay_common::turn::maps::CHANNEL_TABLE_INFO))
                .expect("pinned table info");
        let a: aya::maps::Array<_, relay_common::turn::SlotTableInfo> =
            aya::maps::Array::try_from(aya::maps::Map::Array(m)).expect("an array");
        a.get(&0, 0).expect("info")
    };
    let mut first = FastPath::start(&opts).expect("fresh pin directory");
    let maps = first.turn_maps().expect("TURN maps");
    assert!(maps.has_channel_table(), "the table is on (x86_64)");
    maps.insert_channel(&key, &rule).expect("insert");
    let info = seed(&dir);
    assert_ne!(info.mask, 0, "the table is on");
    drop(maps);
    drop(first);
    assert!(dir.join("TURN_CHANNELS").exists(), "maps were pinned");
    let mut second = FastPath::start(&opts).expect("this build's own pins are adopted");
    let maps = second.turn_maps().expect("TURN maps");
    assert_eq!(seed(&dir), info, "the seed and mask are adopted");
    let a = maps.adopt_existing().expect("sweep the adopted maps");
    assert_eq!((a.kept, a.removed), (1, 0));
    assert_eq!(maps.channel(&key).expect("get"), Some(rule));
    drop(maps);
    drop(second);

    // The same pins under another xdp.turn_rules: refused (both sizes named), not adopted
    // at the old size.
    let resized = XdpOptions {
        turn_rules: 4096,
        ..opts.clone()
    };
    let err = FastPath::start(&resized)
        .expect_err("pins of another xdp.turn_rules")
        .to_string();
    assert!(err.contains("TURN_CHANNELS"), "{err}");
    assert!(err.contains("131072 entries"), "{err}");
    assert!(err.contains("4096 entries"), "{err}");
    assert!(err.contains("xdp.turn_rules"), "{err}");
    // In a fresh directory the rule maps get the configured size, and that is adopted.
    let sized_dir = root.join(format!("relay-test-sized-{}", std::process::id()));
    let _cleanup_sized = Cleanup(sized_dir.clone());
    let sized = XdpOptions {
        pin_dir: Some(sized_dir.clone()),
        ..resized
    };
    drop(FastPath::start(&sized).expect("fresh directory, 4096-entry rule maps"));
    for name in relay::xdp::TURN_RULE_MAPS {
        let info = aya::maps::MapInfo::from_pin(sized_dir.join(name)).expect("pinned map info");
        assert_eq!(info.max_entries(), 4096, "{name}");
    }
    drop(FastPath::start(&sized).expect("its own sized pins are adopted"));

    // A TURN_CHANNELS of another layout (as an older relay version would leave) is
    // refused with the path, both shapes and what to do.
    std::fs::remove_file(dir.join("TURN_CHANNELS")).expect("unpin TURN_CHANNELS");
    pin_small_hash_map(&dir.join("TURN_CHANNELS"));
    let err = FastPath::start(&opts)
        .expect_err("a pinned map of another shape")
        .to_string();
    assert!(err.contains("TURN_CHANNELS"), "{err}");
    assert!(
        err.contains("4-byte keys, 4-byte values, 16 entries"),
        "{err}"
    );
    assert!(err.contains("40-byte keys, 56-byte values"), "{err}");
    assert!(err.contains("relay xdp-unload --pin-dir"), "{err}");
}
