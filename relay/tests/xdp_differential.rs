//! The XDP Binding responder against the userspace path, frame by frame, through
//! BPF_PROG_TEST_RUN (needs root; see `privileged()`).
//!
//! For valid Binding requests (IPv4/IPv6, with and without SOFTWARE/FINGERPRINT, many
//! transaction ids, ports, MACs and addresses) the kernel must answer (XDP_TX) with the
//! exact frame userspace would send; for a corpus of malformed, truncated and
//! out-of-scope frames it must never answer when userspace would not, never answer
//! differently, and pass frames unchanged.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use relay::{
    wire,
    xdp::testrun::{Comparison, XdpAction, XdpTestRun, stun_binding_reference},
};
use relay_common::counter;

const PORT: u16 = 3478;
const PORTS: &[u16] = &[PORT, 5349];
const COOKIE: u32 = 0x2112_A442;

/// Privileged-test rule: run as root; otherwise fail under RELAY_REQUIRE_PRIVILEGED=1,
/// else say "skipped: needs root".
fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("RELAY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("this test needs root (BPF_PROG_TEST_RUN) and RELAY_REQUIRE_PRIVILEGED=1 is set");
    }
    eprintln!("skipped: needs root");
    false
}

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = self.next() as u8;
        }
        b
    }
}

/// Attributes to put in a request.
#[derive(Clone, Copy, Debug)]
struct Extras<'a> {
    software: Option<&'a [u8]>,
    fingerprint: bool,
}

const PLAIN: Extras<'static> = Extras {
    software: None,
    fingerprint: false,
};

/// A Binding request (built here, independently of the codec under test).
fn binding_request(txid: [u8; 12], extras: Extras<'_>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&COOKIE.to_be_bytes());
    m.extend_from_slice(&txid);
    if let Some(sw) = extras.software {
        push_attr(&mut m, 0x8022, sw);
    }
    if extras.fingerprint {
        add_fingerprint(&mut m);
    }
    set_len(&mut m);
    m
}

fn push_attr(m: &mut Vec<u8>, ty: u16, value: &[u8]) {
    m.extend_from_slice(&ty.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    while m.len() % 4 != 0 {
        m.push(0);
    }
}

fn set_len(m: &mut [u8]) {
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

fn add_fingerprint(m: &mut Vec<u8>) {
    let len = (m.len() - 20 + 8) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(m) ^ 0x5354_554E;
    push_attr(m, 0x8028, &crc.to_be_bytes());
}

const MAC_C: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const MAC_R: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; payload.len() + 64];
    let n = wire::build_udp_request(src_mac, dst_mac, src, dst, payload, &mut out).expect("build frame");
    out.truncate(n);
    out
}

fn client_v4() -> SocketAddr {
    v4([10, 0, 0, 1], 40000)
}
fn server_v4() -> SocketAddr {
    v4([10, 0, 0, 2], PORT)
}
fn client_v6() -> SocketAddr {
    "[fd00::1]:40000".parse().expect("addr")
}
fn server_v6() -> SocketAddr {
    "[fd00::2]:3478".parse().expect("addr")
}

fn reference(f: &[u8]) -> Option<Vec<u8>> {
    stun_binding_reference(f, PORTS)
}

fn compare(x: &XdpTestRun, f: &[u8]) -> Comparison {
    let c = x.compare(f, &mut reference).expect("BPF_PROG_TEST_RUN");
    if let Err(d) = c.check() {
        panic!(
            "divergence: {d}\ninput     {:02x?}\nkernel    {:?} {:02x?}\nreference {:02x?}",
            c.input, c.kernel.action, c.kernel.frame, c.reference
        );
    }
    c
}

/// Independent check of a kernel answer: headers per contract 2 and the
/// XOR-MAPPED-ADDRESS decoding to the request's source.
fn check_answer(request: &[u8], answer: &[u8]) {
    let req = wire::parse_udp_frame(request).expect("request parses");
    let ans = wire::parse_udp_frame(answer).expect("answer parses");
    assert_eq!((ans.src, ans.dst), (req.dst, req.src));
    assert_eq!((ans.src_mac, ans.dst_mac), (req.dst_mac, req.src_mac));
    assert!(ans.ip_checksum_valid() && ans.udp_checksum_valid());
    assert_eq!(answer.len(), ans.payload_offset + ans.payload.len(), "no trailing bytes");
    let p = ans.payload;
    assert_eq!(&p[0..2], &[0x01, 0x01], "Binding success response");
    assert_eq!(&p[4..20], &req.payload[4..20], "cookie and transaction id");
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])) + 20, p.len());
    assert_eq!(&p[20..22], &[0x00, 0x20], "XOR-MAPPED-ADDRESS first");
    let port = u16::from_be_bytes([p[26], p[27]]) ^ 0x2112;
    let ip = match req.src.ip() {
        IpAddr::V4(_) => {
            let x = u32::from_be_bytes([p[28], p[29], p[30], p[31]]) ^ COOKIE;
            IpAddr::V4(Ipv4Addr::from(x))
        }
        IpAddr::V6(_) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&COOKIE.to_be_bytes());
            key[4..].copy_from_slice(&req.payload[8..20]);
            let mut a = [0u8; 16];
            for i in 0..16 {
                a[i] = p[28 + i] ^ key[i];
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    assert_eq!(SocketAddr::new(ip, port), req.src, "mapped address is the source");
    let fp = p.len() - 8;
    assert_eq!(&p[fp..fp + 4], &[0x80, 0x28, 0, 4], "FINGERPRINT last");
    let crc = crc32fast::hash(&p[..fp]) ^ 0x5354_554E;
    assert_eq!(&p[fp + 4..], &crc.to_be_bytes());
}

fn load() -> XdpTestRun {
    XdpTestRun::load(PORTS).expect("load the XDP program (is the eBPF object built?)")
}

#[test]
fn plain_binding_requests_are_answered_in_the_kernel() {
    if !privileged() {
        return;
    }
    let x = load();
    for (src, dst) in [(client_v4(), server_v4()), (client_v6(), server_v6())] {
        let req = frame(MAC_C, MAC_R, src, dst, &binding_request([7; 12], PLAIN));
        let c = compare(&x, &req);
        assert_eq!(c.kernel.action, XdpAction::Tx, "plain Binding over {src} must be answered in the kernel");
        check_answer(&req, &c.kernel.frame);
    }
    let counters = x.counters().expect("counters");
    assert_eq!(counters[counter::STUN_ANSWERED_V4 as usize], 1);
    assert_eq!(counters[counter::STUN_ANSWERED_V6 as usize], 1);
}
