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
#[path = "common/root.rs"]
mod root;
use root::privileged;

#[path = "common/mutate.rs"]
mod mutate;
use mutate::{Rng, fix_checksums};

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
    while !m.len().is_multiple_of(4) {
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

fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; payload.len() + 64];
    let n = wire::build_udp_request(src_mac, dst_mac, src, dst, payload, &mut out)
        .expect("build frame");
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
    assert_eq!(
        answer.len(),
        ans.payload_offset + ans.payload.len(),
        "no trailing bytes"
    );
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
    assert_eq!(
        SocketAddr::new(ip, port),
        req.src,
        "mapped address is the source"
    );
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
        assert_eq!(
            c.kernel.action,
            XdpAction::Tx,
            "plain Binding over {src} must be answered in the kernel"
        );
        check_answer(&req, &c.kernel.frame);
    }
    let counters = x.counters().expect("counters");
    assert_eq!(counters[counter::STUN_ANSWERED_V4 as usize], 1);
    assert_eq!(counters[counter::STUN_ANSWERED_V6 as usize], 1);
}

fn random_case(rng: &mut Rng) -> (Vec<u8>, bool) {
    let v6 = rng.below(2) == 1;
    let (src, dst) = if v6 {
        let mut s: [u8; 16] = rng.bytes();
        let mut d: [u8; 16] = rng.bytes();
        s[0] = 0x20; // global unicast, never multicast or unspecified
        d[0] = 0xfd;
        (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), 1 + rng.below(65535) as u16),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), PORTS[rng.below(2) as usize]),
        )
    } else {
        let mut s: [u8; 4] = rng.bytes();
        let mut d: [u8; 4] = rng.bytes();
        s[0] = 1 + (rng.below(223) as u8); // 1..=223: unicast
        d[0] = 1 + (rng.below(223) as u8);
        (
            v4(s, 1 + rng.below(65535) as u16),
            v4(d, PORTS[rng.below(2) as usize]),
        )
    };
    let mut src_mac: [u8; 6] = rng.bytes();
    src_mac[0] &= 0xfe; // unicast
    let dst_mac: [u8; 6] = rng.bytes();
    let txid: [u8; 12] = rng.bytes();
    let sw_len = rng.below(60) as usize;
    // Printable ASCII, or (one case in four) arbitrary bytes: SOFTWARE's value is
    // not interpreted by either path.
    let arbitrary = rng.below(4) == 0;
    let software: Vec<u8> = (0..sw_len)
        .map(|_| {
            if arbitrary {
                rng.next() as u8
            } else {
                b' ' + (rng.below(95) as u8)
            }
        })
        .collect();
    let extras = Extras {
        software: (rng.below(2) == 1).then_some(&software[..]),
        fingerprint: rng.below(2) == 1,
    };
    let mut f = frame(src_mac, dst_mac, src, dst, &binding_request(txid, extras));
    // Sometimes Ethernet padding after the IP packet.
    if rng.below(4) == 0 {
        f.extend(std::iter::repeat_n(0u8, rng.below(20) as usize + 1));
    }
    (f, v6)
}

#[test]
fn generated_binding_requests_match_userspace_byte_for_byte() {
    if !privileged() {
        return;
    }
    let x = load();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut n4, mut n6) = (0u64, 0u64);
    for i in 0..2000 {
        let (req, v6) = random_case(&mut rng);
        let c = compare(&x, &req);
        assert_eq!(
            c.kernel.action,
            XdpAction::Tx,
            "case {i} must be answered in the kernel: {req:02x?}"
        );
        check_answer(&req, &c.kernel.frame);
        if v6 {
            n6 += 1;
        } else {
            n4 += 1;
        }
    }
    let counters = x.counters().expect("counters");
    assert_eq!(counters[counter::STUN_ANSWERED_V4 as usize], n4);
    assert_eq!(counters[counter::STUN_ANSWERED_V6 as usize], n6);
    assert_eq!(
        counters.iter().sum::<u64>(),
        n4 + n6,
        "nothing else counted: {counters:?}"
    );
}

fn v4_req(payload: &[u8]) -> Vec<u8> {
    frame(MAC_C, MAC_R, client_v4(), server_v4(), payload)
}

fn v6_req(payload: &[u8]) -> Vec<u8> {
    frame(MAC_C, MAC_R, client_v6(), server_v6(), payload)
}

/// Frames the kernel must pass (it may not answer them), by name.
fn must_pass_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let txid = [0x42; 12];
    let plain = binding_request(txid, PLAIN);
    let fp = binding_request(
        txid,
        Extras {
            software: Some(b"relay test"),
            fingerprint: true,
        },
    );
    let mut c: Vec<(&'static str, Vec<u8>)> = Vec::new();

    let mut m = plain.clone();
    m[4] ^= 1;
    c.push(("bad cookie", v4_req(&m)));
    let mut m = plain.clone();
    m.extend_from_slice(&[0, 0, 0, 0]);
    c.push(("length field short of the datagram", v4_req(&m)));
    let mut m = plain.clone();
    m[3] = 2;
    m.extend_from_slice(&[0, 0]);
    c.push(("length not a multiple of 4", v4_req(&m)));
    let mut m = plain.clone();
    m[3] = 4;
    c.push(("length field beyond the datagram", v4_req(&m)));
    let mut m = fp.clone();
    let last = m.len() - 1;
    m[last] ^= 0x01;
    c.push(("bad FINGERPRINT", v4_req(&m)));
    c.push(("bad FINGERPRINT v6", v6_req(&m)));
    let mut m = binding_request(txid, PLAIN);
    push_attr(&mut m, 0x0006, b"alice:bob");
    set_len(&mut m);
    c.push(("USERNAME (comprehension-required, unhandled)", v4_req(&m)));
    let mut m = binding_request(txid, PLAIN);
    push_attr(&mut m, 0x0006, b"alice:bob");
    push_attr(&mut m, 0x0008, &[0xaa; 20]);
    set_len(&mut m);
    c.push(("MESSAGE-INTEGRITY", v4_req(&m)));
    let mut m = binding_request(txid, PLAIN);
    push_attr(&mut m, 0x7777, b"x");
    set_len(&mut m);
    c.push(("unknown comprehension-required attribute", v4_req(&m)));
    let mut m = binding_request(txid, PLAIN);
    push_attr(&mut m, 0xC001, b"opt");
    set_len(&mut m);
    c.push(("unknown comprehension-optional attribute", v6_req(&m)));
    let mut m = binding_request(txid, PLAIN);
    add_fingerprint(&mut m);
    push_attr(&mut m, 0x8022, b"after");
    set_len(&mut m);
    c.push(("attribute after FINGERPRINT", v4_req(&m)));
    let mut m = plain.clone();
    m[1] = 0x11;
    c.push(("Binding indication", v4_req(&m)));
    let mut m = plain.clone();
    m[0] = 0x01;
    m[1] = 0x01;
    c.push(("Binding success response", v4_req(&m)));
    let mut m = plain.clone();
    m[1] = 0x03;
    c.push(("Allocate request", v4_req(&m)));
    let mut m = vec![0u8; 600];
    m[..20].copy_from_slice(&plain);
    m[20..24].copy_from_slice(&[0x80, 0x22, 0x02, 0x40]);
    set_len(&mut m);
    c.push(("longer than XDP_MAX_STUN_LEN", v4_req(&m)));
    c.push(("not STUN", v4_req(b"hello world, not stun at all")));
    c.push(("empty UDP payload", v4_req(b"")));

    let base4 = v4_req(&plain);
    let base6 = v6_req(&fp);
    let mut f = base4.clone();
    f[41] ^= 0x10;
    c.push(("bad UDP checksum v4", f));
    let mut f = base6.clone();
    f[61] ^= 0x10;
    c.push(("bad UDP checksum v6", f));
    let mut f = base6.clone();
    f[60..62].copy_from_slice(&[0, 0]);
    c.push(("zero UDP checksum v6", f));
    let mut f = base4.clone();
    f[24] ^= 0x01;
    c.push(("bad IPv4 header checksum", f));
    let mut f = base4.clone();
    f[36..38].copy_from_slice(&5349u16.to_be_bytes());
    f[36..38].copy_from_slice(&9999u16.to_be_bytes());
    fix_checksums(&mut f);
    c.push(("port not served", f));
    let mut f = base4.clone();
    f[34..36].copy_from_slice(&[0, 0]);
    fix_checksums(&mut f);
    c.push(("source port 0", f));
    let mut f = base4.clone();
    f[20] = 0x20; // MF
    fix_checksums(&mut f);
    c.push(("first fragment (MF)", f));
    let mut f = base4.clone();
    f[21] = 0x10; // fragment offset
    fix_checksums(&mut f);
    c.push(("later fragment", f));
    // IPv4 with 4 bytes of options (NOPs): the stack delivers it, userspace answers.
    let mut f = base4[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 1]);
    f.extend_from_slice(&base4[34..]);
    f[14] = 0x46;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_checksums(&mut f);
    c.push(("IPv4 options", f));
    // 802.1Q tag.
    let mut f = base4[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    f.extend_from_slice(&base4[12..]);
    c.push(("VLAN tag", f));
    let mut f = base4.clone();
    f[6] |= 1;
    c.push(("multicast source MAC", f));
    for (name, addr) in [
        ("multicast source", [224, 0, 0, 1]),
        ("broadcast source", [255, 255, 255, 255]),
        ("zero source", [0, 0, 0, 0]),
    ] {
        let mut f = base4.clone();
        f[26..30].copy_from_slice(&addr);
        fix_checksums(&mut f);
        c.push((name, f));
    }
    let mut f = base4.clone();
    f[30..34].copy_from_slice(&[239, 1, 2, 3]);
    fix_checksums(&mut f);
    c.push(("multicast destination", f));
    let mut f = base6.clone();
    f[22] = 0xff;
    fix_checksums(&mut f);
    c.push(("IPv6 multicast source", f));
    let mut f = base6.clone();
    f[20] = 0; // hop-by-hop extension header
    c.push(("IPv6 extension header", f));
    let mut f = base4.clone();
    f[23] = 6;
    c.push(("TCP", f));
    let mut f = base4.clone();
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    c.push(("ARP ethertype", f));
    let mut f = base4.clone();
    let udp_len = u16::from_be_bytes([f[38], f[39]]) - 4;
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    fix_checksums(&mut f);
    c.push(("UDP length shorter than IP payload", f));
    let mut f = base4.clone();
    let tot = u16::from_be_bytes([f[16], f[17]]) + 8;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_checksums(&mut f);
    c.push(("IP total length beyond the frame", f));
    let mut f = base6.clone();
    let pl = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&pl.to_be_bytes());
    c.push(("IPv6 payload length beyond the frame", f));
    let mut f = base4.clone();
    f[14] = 0x65; // IP version 6 in an IPv4 ethertype
    c.push(("IP version mismatch", f));
    c
}

#[test]
fn malformed_and_out_of_scope_frames_are_passed_unchanged() {
    if !privileged() {
        return;
    }
    let x = load();
    let corpus = must_pass_corpus();
    let mut reference_answers = 0;
    for (name, f) in &corpus {
        let c = compare(&x, f);
        assert_eq!(
            c.kernel.action,
            XdpAction::Pass,
            "{name}: the kernel must pass it"
        );
        if c.reference.is_some() {
            reference_answers += 1;
        }
    }
    // Some of these are answered by userspace (IPv4 options, unknown optional attribute,
    // USERNAME -> 4xx...); the kernel leaves them to it.
    eprintln!(
        "{} frames passed, {reference_answers} of them answered by userspace",
        corpus.len()
    );
    let counters = x.counters().expect("counters");
    assert_eq!(counters[counter::STUN_ANSWERED_V4 as usize], 0);
    assert_eq!(counters[counter::STUN_ANSWERED_V6 as usize], 0);
    assert_eq!(
        counters.iter().sum::<u64>(),
        corpus.len() as u64,
        "one count per frame: {counters:?}"
    );
    assert!(
        counters[counter::STUN_PASSED as usize] >= 10,
        "{counters:?}"
    );
    assert!(
        counters[counter::BAD_CHECKSUM_PASSED as usize] >= 4,
        "{counters:?}"
    );
    assert!(
        counters[counter::MALFORMED_PASSED as usize] >= 5,
        "{counters:?}"
    );
    assert!(
        counters[counter::OTHER_PASSED as usize] >= 4,
        "{counters:?}"
    );
}

#[test]
fn truncated_frames_are_never_answered() {
    if !privileged() {
        return;
    }
    let x = load();
    let txid = [0x99; 12];
    let bases = [
        v4_req(&binding_request(txid, PLAIN)),
        v6_req(&binding_request(txid, PLAIN)),
        v4_req(&binding_request(
            txid,
            Extras {
                software: Some(b"abcdefg"),
                fingerprint: true,
            },
        )),
        v6_req(&binding_request(
            txid,
            Extras {
                software: Some(b"xyz"),
                fingerprint: true,
            },
        )),
    ];
    let mut runs = 0u64;
    for base in &bases {
        for len in wire::ETH_HLEN..base.len() {
            let c = compare(&x, &base[..len]);
            assert_eq!(c.kernel.action, XdpAction::Pass, "truncated to {len}");
            runs += 1;
        }
        // And the whole frame is answered.
        assert!(compare(&x, base).kernel_answered());
    }
    let counters = x.counters().expect("counters");
    let answered =
        counters[counter::STUN_ANSWERED_V4 as usize] + counters[counter::STUN_ANSWERED_V6 as usize];
    assert_eq!(answered, bases.len() as u64);
    assert_eq!(counters.iter().sum::<u64>(), runs + bases.len() as u64);
}

#[test]
fn random_mutations_never_diverge() {
    if !privileged() {
        return;
    }
    let x = load();
    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    let mut answered = 0;
    for _ in 0..3000 {
        let (mut f, _) = random_case(&mut rng);
        // Flip 1..3 random bytes, sometimes repairing the checksums so that the
        // mutation reaches the STUN checks.
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(f.len() as u64) as usize;
            f[i] ^= 1 << rng.below(8);
        }
        if rng.below(2) == 0 {
            fix_checksums(&mut f);
        }
        if compare(&x, &f).kernel_answered() {
            answered += 1;
        }
    }
    // Mutations in the MACs, addresses, ports, transaction id or SOFTWARE keep the
    // request valid: some must still be answered (and were identical to userspace).
    assert!(answered > 100, "only {answered} mutated requests answered");
}

#[test]
fn pass_program_passes() {
    if !privileged() {
        return;
    }
    let x = XdpTestRun::load_program(relay_common::names::XDP_PASS_PROGRAM, PORTS).expect("load");
    let f = v4_req(&binding_request([1; 12], PLAIN));
    let out = x.run(&f).expect("run");
    assert_eq!(out.action, XdpAction::Pass);
    assert_eq!(out.frame, f);
}

/// Cost per frame, printed (run with --nocapture to see); fails only if the kernel
/// stops answering or the numbers are absurd.
#[test]
fn cost_per_frame() {
    if !privileged() {
        return;
    }
    let x = load();
    let req4 = v4_req(&binding_request([3; 12], PLAIN));
    let req4_fp = v4_req(&binding_request(
        [3; 12],
        Extras {
            software: Some(&[b'a'; 100]),
            fingerprint: true,
        },
    ));
    let other = frame(
        MAC_C,
        MAC_R,
        client_v4(),
        v4([10, 0, 0, 2], 9999),
        b"not for us",
    );
    const N: u32 = 1_000_000;
    const SINGLE: u32 = 200_000;
    let (d, action) = x.bench(&other, N).expect("bench");
    eprintln!(
        "other UDP (passed): {} ns per run (repeat {N} in one call)",
        d.as_nanos()
    );
    assert_eq!(action, XdpAction::Pass);
    let mut bad_csum = req4.clone();
    bad_csum[41] ^= 0x10;
    let mut bad_type = req4.clone();
    bad_type[43] = 0x03;
    fix_checksums(&mut bad_type);
    for (name, f) in [
        ("other UDP (passed)", &other),
        (
            "v4 Allocate request on the STUN port (passed after the STUN header)",
            &bad_type,
        ),
        (
            "v4 Binding with a bad UDP checksum (passed after the checksum)",
            &bad_csum,
        ),
        ("v4 Binding (plain, answered)", &req4),
        (
            "v4 Binding (SOFTWARE 100 B + FINGERPRINT, answered)",
            &req4_fp,
        ),
    ] {
        let d = x.mean_single_run(f, SINGLE).expect("single runs");
        eprintln!(
            "{name}: {} ns per run (mean of {SINGLE} single runs, timer included)",
            d.as_nanos()
        );
        assert!(d.as_micros() < 50, "{name}: {d:?}");
    }
    let c = x.counters().expect("counters");
    eprintln!("counters after the benches: {c:?}");
    eprintln!(
        "verifier: {:?} instructions processed, program size {:?} instructions",
        x.verified_instructions(),
        x.translated_instructions()
    );
    assert_eq!(c[counter::STUN_ANSWERED_V4 as usize], 2 * u64::from(SINGLE));
}
