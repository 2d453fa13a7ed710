//! The next-hop probe (`relay_fib_probe` through `relay::xdp::nexthop`) against a real
//! FIB and neighbour table, in a network namespace this test creates (needs root).
//!
//! The namespace has a veth v0 with IPv4/IPv6 addresses, permanent neighbour entries for
//! some addresses of its subnets (none for others), a route with an MTU through a
//! gateway, a blackhole and an unreachable route, and forwarding on `lo` ONLY (as the
//! daemon does for `xdp.fib_interface`). The probe comes from `FastPath::start` (loaded,
//! nothing attached) and runs on threads inside the namespace: it must return the veth's
//! ifindex and MAC with the neighbour's MAC, `NoNeighbour` where there is no entry, the
//! route's MTU, the FIB's refusal codes, and it must take the lookup interface from
//! `TurnSettings::fib_ifindex` as the fast path does.
#![allow(clippy::unwrap_used)]

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
};

use relay::xdp::{
    FastPath, TURN_RULES_MIN, XdpMode, XdpOptions,
    nexthop::{NextHop, NextHopError, NextHopProbe},
};
use relay_common::turn::TurnSettings;

const V0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
const NEW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
/// `lo` in a new network namespace.
const LO_IFINDEX: u32 = 1;

#[path = "common/root.rs"]
mod root;
use root::{forward_on_lo_only, ip, privileged};

fn a4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}
fn a6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd79, 0, 0, 0, 0, 0, 0, last))
}

/// The test's namespace; deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let name = format!("nexthop{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ns.ip(&["link", "set", "v0", "address", "02:00:00:00:00:01"]);
        for dev in ["lo", "v0", "v1"] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        ns.ip(&["addr", "add", "10.79.0.1/24", "dev", "v0"]);
        ns.ip(&["addr", "add", "fd79::1/64", "dev", "v0", "nodad"]);
        for a in ["10.79.0.200", "fd79::200"] {
            ns.ip(&[
                "neigh",
                "add",
                a,
                "lladdr",
                "02:00:00:00:00:b1",
                "dev",
                "v0",
                "nud",
                "permanent",
            ]);
        }
        // A gateway route with its own MTU, and routes the FIB refuses to forward.
        ns.ip(&[
            "route",
            "add",
            "10.79.1.0/24",
            "via",
            "10.79.0.200",
            "dev",
            "v0",
            // Locked: the forwarding path honours a route MTU only then (or with
            // net.ipv4.ip_forward_use_pmtu), and so does the FIB helper.
            "mtu",
            "lock",
            "1400",
        ]);
        ns.ip(&["route", "add", "blackhole", "198.51.100.0/24"]);
        ns.ip(&["route", "add", "unreachable", "203.0.113.0/24"]);
        forward_on_lo_only(&ns.0);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a new thread inside the namespace (the probe's lookups happen in the
    /// calling thread's namespace).
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let file = File::open(format!("/run/netns/{}", self.0)).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn v0_ifindex(ns: &Netns) -> u32 {
    ns.run(|| {
        // SAFETY: a valid NUL-terminated name.
        unsafe { libc::if_nametoindex(c"v0".as_ptr()) }
    })
}

#[test]
fn resolves_like_the_fast_path() {
    if !privileged() {
        return;
    }
    let ns = Netns::create();
    let v0 = v0_ifindex(&ns);
    assert_ne!(v0, 0);
    let mut fp = FastPath::start(&XdpOptions {
        interfaces: Vec::new(),
        mode: XdpMode::Auto,
        stun_ports: Vec::new(),
        pin_dir: None,
        turn_rules: TURN_RULES_MIN,
    })
    .expect("load the XDP object");
    let probe = fp.next_hop_probe().expect("the probe program loaded");
    let turn = fp.turn_maps().expect("TURN maps");
    let settings = |fib_ifindex| TurnSettings {
        fib_ifindex,
        ..TurnSettings::default()
    };
    let veth_hop = |dst_mac, mtu| NextHop {
        ifindex: v0,
        src_mac: V0_MAC,
        dst_mac,
        mtu,
    };

    // fib_ifindex = lo, as the daemon sets it.
    turn.set_settings(&settings(LO_IFINDEX)).unwrap();
    let p = probe.clone();
    let got = ns.run(move || {
        [
            p.resolve(a4(10, 79, 0, 1), a4(10, 79, 0, 200), 100),
            p.resolve(a6(1), a6(0x200), 100),
            p.resolve(a4(10, 79, 0, 1), a4(10, 79, 0, 200), 1500),
            // The MTU route through the gateway: its MTU, the gateway's MAC.
            p.resolve(a4(10, 79, 0, 1), a4(10, 79, 1, 5), 1400),
        ]
    });
    let [v4, v6, full, gw] = got.map(|r| r.expect("resolved"));
    assert_eq!(v4, veth_hop(PEER_MAC, 1500), "IPv4 neighbour");
    assert_eq!(v6, veth_hop(PEER_MAC, 1500), "IPv6 neighbour");
    assert_eq!(full, v4, "a frame of exactly the MTU");
    assert_eq!(gw, veth_hop(PEER_MAC, 1400), "via the gateway");

    // On the subnet but no neighbour entry: NoNeighbour (the socket resolves it).
    let p = probe.clone();
    let got = ns.run(move || {
        [
            p.resolve(a4(10, 79, 0, 1), a4(10, 79, 0, 201), 100),
            p.resolve(a6(1), a6(0x201), 100),
        ]
    });
    for r in got {
        assert!(matches!(r, Err(NextHopError::NoNeighbour)), "{r:?}");
    }

    // Larger than the route's MTU.
    let p = probe.clone();
    let got = ns.run(move || {
        [
            p.resolve(a4(10, 79, 0, 1), a4(10, 79, 0, 200), 1501),
            p.resolve(a4(10, 79, 0, 1), a4(10, 79, 1, 5), 1401),
            p.resolve(a6(1), a6(0x200), 1501),
        ]
    });
    for (r, mtu) in got.into_iter().zip([1500, 1400, 1500]) {
        match r {
            Err(NextHopError::FragNeeded { mtu: m, .. }) => assert_eq!(m, mtu),
            other => panic!("frag needed at {mtu}: {other:?}"),
        }
    }

    // What the FIB does not forward, with its code.
    let p = probe.clone();
    let got = ns.run(move || {
        [
            p.resolve(a4(10, 79, 0, 1), a4(198, 51, 100, 1), 100),
            p.resolve(a4(10, 79, 0, 1), a4(203, 0, 113, 1), 100),
            p.resolve(a4(10, 79, 0, 1), a4(192, 0, 2, 1), 100),
        ]
    });
    for (r, code) in got.into_iter().zip([1u32, 2, 4]) {
        match r {
            Err(NextHopError::NotForwarded { code: c }) => assert_eq!(c, code),
            other => panic!("code {code}: {other:?}"),
        }
    }
    // Mixed families never reach the kernel.
    assert!(matches!(
        probe.resolve(a4(10, 79, 0, 1), a6(0x200), 100),
        Err(NextHopError::FamilyMismatch { .. })
    ));

    // The lookup interface is the fast path's: fib_ifindex = v0 (forwarding off there)
    // makes the FIB refuse (FWD_DISABLED); an explicit override wins over the settings.
    turn.set_settings(&settings(v0)).unwrap();
    let p = probe.clone();
    let got = ns.run(move || {
        (
            p.resolve(a4(10, 79, 0, 1), a4(10, 79, 0, 200), 100),
            p.resolve(a6(1), a6(0x200), 100),
            p.clone().with_lookup_ifindex(LO_IFINDEX).resolve(
                a4(10, 79, 0, 1),
                a4(10, 79, 0, 200),
                100,
            ),
        )
    });
    for r in [got.0, got.1] {
        assert!(
            matches!(r, Err(NextHopError::NotForwarded { code: 5 })),
            "{r:?}"
        );
    }
    assert_eq!(got.2.expect("through lo"), veth_hop(PEER_MAC, 1500));
    // fib_ifindex = 0: the frame's ingress interface, which is `lo` under the test run.
    turn.set_settings(&settings(0)).unwrap();
    let p = probe.clone();
    let r = ns.run(move || p.resolve(a4(10, 79, 0, 1), a4(10, 79, 0, 200), 100));
    assert_eq!(r.expect("through the ingress lo"), veth_hop(PEER_MAC, 1500));
    turn.set_settings(&settings(LO_IFINDEX)).unwrap();

    // No cache in the probe: a changed neighbour is seen at once.
    ns.ip(&[
        "neigh",
        "replace",
        "10.79.0.200",
        "lladdr",
        "02:00:00:00:00:b2",
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    let p = probe.clone();
    let r = ns.run(move || p.resolve(a4(10, 79, 0, 1), a4(10, 79, 0, 200), 100));
    assert_eq!(r.expect("new MAC"), veth_hop(NEW_MAC, 1500));

    // Shared by threads at once (one descriptor, one syscall per call).
    let mut threads = Vec::new();
    for t in 0..4u8 {
        let p: NextHopProbe = probe.clone();
        let file = File::open(format!("/run/netns/{}", ns.0)).expect("open netns");
        threads.push(std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let mut hops = Vec::new();
            for i in 0..200u16 {
                let dst = if (i + u16::from(t)) % 2 == 0 {
                    a4(10, 79, 0, 200)
                } else {
                    a6(0x200)
                };
                let src = if dst.is_ipv4() {
                    a4(10, 79, 0, 1)
                } else {
                    a6(1)
                };
                hops.push(p.resolve(src, dst, 100).expect("resolved"));
            }
            hops
        }));
    }
    for t in threads {
        for hop in t.join().expect("thread") {
            assert_eq!(hop.ifindex, v0);
            assert_eq!(hop.src_mac, V0_MAC);
            // IPv4's neighbour was replaced above, IPv6's was not.
            assert!(hop.dst_mac == NEW_MAC || hop.dst_mac == PEER_MAC);
        }
    }
}
