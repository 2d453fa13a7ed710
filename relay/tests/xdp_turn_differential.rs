//! The TURN fast path against the real userspace relay, byte for byte (issue 4, point 5).
//!
//! The reference is a real `relay::turn::TurnServer` (sans-IO, with small fakes for its
//! relay sockets and transmit side), given allocations, permissions and channels through
//! real, authenticated STUN requests. The same datagrams go (a) to that server, whose
//! output is wrapped in headers per `relay::xdp::turn_frames`, and (b) through
//! `relay_xdp` under `BPF_PROG_TEST_RUN`, with the kernel rules written into the maps
//! from the same allocation state. The runs happen inside a network namespace this test
//! creates (a veth with the relay's addresses, permanent neighbour entries for client and
//! peers, forwarding on `lo` ONLY) and name the veth as the ingress interface; the
//! program's `bpf_fib_lookup` goes through `lo` (`fib_ifindex`, as the daemon sets it),
//! so the MACs in the output can only come from that namespace's veth neighbour table,
//! reached without forwarding on the veth.
//!
//! Invariants checked: relayed frames equal the reference exactly (Data indications with
//! the kernel's random transaction id copied into the reference); passed frames are
//! unchanged and counted; the bandwidth drop is the only drop.

use std::{
    collections::HashMap as StdMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    process::Command,
    sync::Arc,
    time::{Instant, SystemTime},
};

use aya::maps::{Array, HashMap, PerCpuArray};
use relay::{
    policy::{PeerPolicy, PolicyConfig, Quotas},
    stun::{Attribute, Class, Message, MessageBuilder, MessageType, TransactionId},
    turn::{
        Credentials, FiveTuple, IpFamily, PortError, PortRequest, RelayHandle, RelayPorts, Shared,
        Transmit, Transport, TurnConfig, TurnServer,
        attrs::{self, method},
        auth::{self, PasswordAlgorithm},
    },
    wire,
    xdp::{
        rules::{open_channel_table, open_peer_table},
        slot_table::{ChannelTable, PeerTable},
        testrun::{XdpAction, XdpOutcome, XdpTestRun},
        turn_frames::{Hop, Ipv4Fields, build_relayed_frame},
    },
};
use relay_common::{counter, turn as rc};

const LISTEN_PORT: u16 = 3478;
const CLIENT_PORT: u16 = 40000;
const PEER_PORT: u16 = 7000;
const CHANNEL: u16 = 0x4001;
const REALM: &str = "example.org";
const USER: &str = "alice";
const PASS: &str = "wonderland";
const MAC_RELAY: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
const MTU: usize = 1500;
/// `lo` in a new network namespace.
const LO_IFINDEX: u32 = 1;

#[path = "common/root.rs"]
mod root;
use root::{forward_on_lo_only, ip, privileged};
#[path = "common/mutate.rs"]
mod mutate;
use mutate::{Rng, fix_checksums};

// ---------- addresses ----------

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, 0, last))
}
fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, last))
}

struct Family {
    listen: IpAddr,
    relay: IpAddr,
    client: IpAddr,
    peer: IpAddr,
    stranger: IpAddr,
    unresolved: IpAddr,
}

fn fam(is_v6: bool) -> Family {
    if is_v6 {
        Family {
            listen: v6(1),
            relay: v6(2),
            client: v6(0x100),
            peer: v6(0x200),
            stranger: v6(0x201),
            unresolved: v6(0x250),
        }
    } else {
        Family {
            listen: v4(1),
            relay: v4(2),
            client: v4(100),
            peer: v4(200),
            stranger: v4(201),
            unresolved: v4(250),
        }
    }
}

fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => rc::mapped_v4(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

// ---------- the namespace ----------

/// A network namespace with veth v0 (the relay's addresses) ↔ v1; removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("xdpturn{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        let n = ns.name.as_str();
        ip(&[
            "-n", n, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ]);
        ip(&["-n", n, "link", "set", "v0", "address", "02:00:00:00:00:01"]);
        for dev in ["lo", "v0", "v1"] {
            ip(&["-n", n, "link", "set", dev, "up"]);
        }
        for a in ["10.77.0.1/24", "10.77.0.2/24"] {
            ip(&["-n", n, "addr", "add", a, "dev", "v0"]);
        }
        for a in ["fd77::1/64", "fd77::2/64"] {
            ip(&["-n", n, "addr", "add", a, "dev", "v0", "nodad"]);
        }
        for (a, mac) in [
            ("10.77.0.100", "02:00:00:00:00:c1"),
            ("10.77.0.200", "02:00:00:00:00:b1"),
            ("fd77::100", "02:00:00:00:00:c1"),
            ("fd77::200", "02:00:00:00:00:b1"),
        ] {
            neighbour(&["-n", n], "add", a, mac);
        }
        forward_on_lo_only(n);
        ns
    }

    /// Moves the calling thread into the namespace until the guard drops.
    fn enter(&self) -> Entered {
        let orig = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let r = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns into {}", self.name);
        Entered { orig }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Entered {
    orig: File,
}

/// The ifindex of `v0` in the namespace the calling thread has entered.
fn v0_ifindex() -> u32 {
    // SAFETY: a NUL-terminated name; looked up in this thread's (new) namespace.
    let ifindex = unsafe { libc::if_nametoindex(c"v0".as_ptr()) };
    assert_ne!(ifindex, 0, "v0 exists in the namespace");
    ifindex
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; back to the thread's original namespace.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

// ---------- the userspace reference ----------

#[derive(Default)]
struct Ports {
    next: u32,
    next_port: u16,
    open: StdMap<RelayHandle, SocketAddr>,
    relay_v4: Option<IpAddr>,
    relay_v6: Option<IpAddr>,
}

impl RelayPorts for Ports {
    fn open(
        &mut self,
        family: IpFamily,
        _req: PortRequest,
    ) -> Result<(RelayHandle, SocketAddr, Option<u64>), PortError> {
        let ip = match family {
            IpFamily::V4 => self.relay_v4,
            IpFamily::V6 => self.relay_v6,
        }
        .ok_or(PortError::FamilyUnsupported)?;
        self.next += 1;
        self.next_port += 1;
        let a = SocketAddr::new(ip, self.next_port);
        self.open.insert(self.next, a);
        Ok((self.next, a, None))
    }
    fn close(&mut self, relay: RelayHandle) {
        self.open.remove(&relay);
    }
    fn release_reservation(&mut self, _token: u64) {}
    fn set_dont_fragment(&mut self, _relay: RelayHandle) -> bool {
        true
    }
}

#[derive(Default)]
struct Sink {
    client: Vec<(FiveTuple, Vec<u8>)>,
    /// Datagrams to peers, and whether userspace sent them with DF (DONT-FRAGMENT).
    peer: Vec<(RelayHandle, SocketAddr, Vec<u8>, bool)>,
}

impl Transmit for Sink {
    fn to_client(&mut self, tuple: &FiveTuple, bytes: &[u8]) {
        self.client.push((*tuple, bytes.to_vec()));
    }
    fn to_peer(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        self.peer.push((relay, peer, bytes.to_vec(), false));
    }
    fn to_peer_dont_fragment(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        self.peer.push((relay, peer, bytes.to_vec(), true));
    }
}

struct Reference {
    server: TurnServer,
    ports: Ports,
    sink: Sink,
}

/// One allocation made through real STUN requests.
#[derive(Clone, Copy)]
struct Alloc {
    tuple: FiveTuple,
    handle: RelayHandle,
    relay: SocketAddr,
    peer: SocketAddr,
}

impl Reference {
    fn new() -> Reference {
        let cfg = TurnConfig {
            relay_ipv4: Some(Ipv4Addr::new(10, 77, 0, 2)),
            relay_ipv6: Some(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2)),
            // The first (unauthenticated) Allocate must get its 401 challenge.
            unauth_reply_allowance: 1000,
            ..TurnConfig::default()
        };
        let creds = Credentials {
            realm: REALM.into(),
            users: [(USER.to_string(), PASS.to_string())].into(),
            secrets: Vec::new(),
        };
        let policy = PeerPolicy::new(
            &PolicyConfig {
                allow: vec!["0.0.0.0/0".into(), "::/0".into()],
                ..PolicyConfig::default()
            },
            &[],
        )
        .expect("policy");
        let shared = Shared::new(creds, Arc::new(policy), Arc::new(Quotas::new(0, 0)));
        Reference {
            server: TurnServer::new(Arc::new(cfg), Arc::new(shared)),
            ports: Ports {
                next_port: 50000,
                relay_v4: Some(v4(2)),
                relay_v6: Some(v6(2)),
                ..Ports::default()
            },
            sink: Sink::default(),
        }
    }

    fn client_sends(&mut self, tuple: &FiveTuple, msg: &[u8]) {
        self.sink = Sink::default();
        self.server.on_client(
            tuple,
            msg,
            Instant::now(),
            SystemTime::now(),
            &mut self.ports,
            &mut self.sink,
        );
    }

    fn peer_sends(&mut self, handle: RelayHandle, peer: SocketAddr, data: &[u8]) {
        self.sink = Sink::default();
        self.server
            .on_peer(handle, peer, data, Instant::now(), &mut self.sink);
    }

    /// One request → its single answer.
    fn ask(&mut self, tuple: &FiveTuple, msg: &[u8]) -> Vec<u8> {
        self.client_sends(tuple, msg);
        assert_eq!(self.sink.client.len(), 1, "one answer expected");
        self.sink.client.remove(0).1
    }

    /// Allocate (+ family) → CreatePermission → ChannelBind, all authenticated.
    fn allocate(&mut self, tuple: FiveTuple, relay_v6: bool, peer: SocketAddr, tid0: u8) -> Alloc {
        let mut tid = tid0;
        let mut next = || {
            tid = tid.wrapping_add(1);
            TransactionId([tid; 12])
        };
        let transport = (attrs::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        let first = request(
            method::ALLOCATE,
            std::slice::from_ref(&transport),
            next(),
            None,
        );
        let challenge = self.ask(&tuple, &first);
        let m = Message::parse(&challenge).expect("401 parses");
        let Ok(Some(Attribute::Nonce(n))) = m.get(relay::stun::attr::NONCE) else {
            panic!("401 carries a NONCE");
        };
        let nonce = n.to_vec();
        let mut attrs_ = vec![transport];
        if relay_v6 {
            // The default relayed family is IPv4, whatever the client's (RFC 8656 §7.1).
            attrs_.push((attrs::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]));
        }
        let ok = self.ask(
            &tuple,
            &request(method::ALLOCATE, &attrs_, next(), Some(&nonce)),
        );
        assert_success(&ok, "Allocate");
        let (&handle, &relay) = self
            .ports
            .open
            .iter()
            .max_by_key(|(h, _)| **h)
            .expect("a relay");
        let t = next();
        let cp = request(
            method::CREATE_PERMISSION,
            &[(attrs::XOR_PEER_ADDRESS, xor(peer, &t))],
            t,
            Some(&nonce),
        );
        assert_success(&self.ask(&tuple, &cp), "CreatePermission");
        let t = next();
        let cb = request(
            method::CHANNEL_BIND,
            &[
                (
                    attrs::CHANNEL_NUMBER,
                    vec![(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0],
                ),
                (attrs::XOR_PEER_ADDRESS, xor(peer, &t)),
            ],
            t,
            Some(&nonce),
        );
        assert_success(&self.ask(&tuple, &cb), "ChannelBind");
        Alloc {
            tuple,
            handle,
            relay,
            peer,
        }
    }
}

fn xor(a: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    let mut v = [0u8; attrs::XOR_ADDRESS_MAX];
    let n = attrs::encode_xor_address(a, tid, &mut v);
    v[..n].to_vec()
}

fn request(m: u16, attrs_: &[(u16, Vec<u8>)], tid: TransactionId, nonce: Option<&[u8]>) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(method::m(m), Class::Request),
        tid,
    )
    .expect("fits");
    for (t, v) in attrs_ {
        b.add(&Attribute::Other {
            attr_type: *t,
            value: v,
        })
        .expect("fits");
    }
    if let Some(nonce) = nonce {
        b.add(&Attribute::Username(USER.as_bytes())).expect("fits");
        b.add(&Attribute::Realm(REALM.as_bytes())).expect("fits");
        b.add(&Attribute::Nonce(nonce)).expect("fits");
        let key = auth::long_term_key(
            PasswordAlgorithm::Md5,
            USER.as_bytes(),
            REALM.as_bytes(),
            PASS.as_bytes(),
        );
        b.add_message_integrity(key.as_bytes()).expect("fits");
    }
    b.add_fingerprint().expect("fits");
    let n = b.finish();
    buf.truncate(n);
    buf
}

fn assert_success(answer: &[u8], what: &str) {
    let ty = u16::from_be_bytes([answer[0], answer[1]]);
    let code = Message::parse(answer)
        .ok()
        .and_then(|m| m.attributes().flatten().find(|a| a.attr_type == 0x0009))
        .map(|a| u16::from(a.value[2]) * 100 + u16::from(a.value[3]));
    assert_eq!(
        ty & 0x0110,
        0x0100,
        "{what} succeeded (type {ty:#06x}, error {code:?})"
    );
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let tid = TransactionId([0x5e; 12]);
    let mut buf = vec![0u8; 2048];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(method::m(method::SEND), Class::Indication),
        tid,
    )
    .expect("fits");
    b.add(&Attribute::Other {
        attr_type: attrs::XOR_PEER_ADDRESS,
        value: &xor(peer, &tid),
    })
    .expect("fits");
    b.add(&Attribute::Other {
        attr_type: attrs::DATA,
        value: data,
    })
    .expect("fits");
    let n = b.finish();
    buf.truncate(n);
    buf
}

/// A Send indication with the attributes in `order` (coturn's turnutils_uclient sends
/// DATA, XOR-PEER-ADDRESS, FINGERPRINT), optionally DONT-FRAGMENT and a FINGERPRINT
/// (correct, or with its last byte flipped when `bad_fingerprint`).
fn send_indication_with(
    peer: SocketAddr,
    data: &[u8],
    data_first: bool,
    dont_fragment: bool,
    fingerprint: Option<bool>,
) -> Vec<u8> {
    let tid = TransactionId([0x61; 12]);
    let mut m = vec![0x00, 0x16, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&tid.0);
    let attr = |m: &mut Vec<u8>, ty: u16, v: &[u8]| {
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&(v.len() as u16).to_be_bytes());
        m.extend_from_slice(v);
        m.resize(m.len().div_ceil(4) * 4, 0);
    };
    let xpa = xor(peer, &tid);
    if data_first {
        attr(&mut m, attrs::DATA, data);
        attr(&mut m, attrs::XOR_PEER_ADDRESS, &xpa);
    } else {
        attr(&mut m, attrs::XOR_PEER_ADDRESS, &xpa);
        attr(&mut m, attrs::DATA, data);
    }
    if dont_fragment {
        attr(&mut m, 0x001A, &[]);
    }
    if let Some(bad) = fingerprint {
        let len = (m.len() - 20 + 8) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let mut crc = crc32fast::hash(&m) ^ 0x5354_554E;
        if bad {
            crc ^= 1;
        }
        attr(&mut m, 0x8028, &crc.to_be_bytes());
    } else {
        let len = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
    }
    m
}

// ---------- frames ----------

fn frame(src_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, payload: &[u8], tos: u8) -> Vec<u8> {
    let mut out = vec![0u8; payload.len() + 100];
    let n = wire::build_udp_request(src_mac, MAC_RELAY, src, dst, payload, &mut out)
        .expect("frame builds");
    out.truncate(n);
    set_tos(&mut out, tos);
    if out[12..14] == [0x08, 0x00] {
        // Identification from the payload; DF cleared on odd lengths: both DF values and
        // varied IDs reach the kernel (RFC 8656 §14: both are copied).
        let id = (payload.len() as u16).wrapping_mul(0x9e37) ^ 0x5a5a;
        out[18..20].copy_from_slice(&id.to_be_bytes());
        out[20] = if payload.len() % 2 == 1 { 0 } else { 0x40 };
        out[24] = 0;
        out[25] = 0;
        let c = wire::ipv4_header_checksum(&out[14..34]);
        out[24..26].copy_from_slice(&c.to_be_bytes());
    }
    out
}

/// The reference IPv4 fields for relaying `input`.
fn v4f(input: &[u8], send: bool) -> Ipv4Fields {
    Ipv4Fields::for_input(input, send).expect("input frame parses")
}

fn set_tos(f: &mut [u8], tos: u8) {
    if f[12..14] == [0x08, 0x00] {
        f[15] = tos;
        f[24] = 0;
        f[25] = 0;
        let c = wire::ipv4_header_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    } else {
        f[14] = 0x60 | (tos >> 4);
        f[15] = (tos << 4) | (f[15] & 0x0f);
    }
}

fn channel_data(len: usize, pad: usize, seed: u8) -> Vec<u8> {
    let mut m = vec![(CHANNEL >> 8) as u8, CHANNEL as u8];
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.extend((0..len).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31)));
    m.extend(std::iter::repeat_n(0xAAu8, pad));
    m
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed ^ (i as u8).wrapping_mul(7)).collect()
}

// ---------- the kernel side ----------

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `TURN_CHANNELS` key of ChannelData from `client` to `listen` on `channel`.
fn channel_key(client: SocketAddr, listen: SocketAddr, channel: u16) -> rc::ChannelKey {
    rc::ChannelKey {
        client_addr: key_addr(client.ip()),
        server_addr: key_addr(listen.ip()),
        client_port: rc::wire(client.port()),
        server_port: rc::wire(listen.port()),
        channel: rc::wire(channel),
        _pad: [0; 2],
    }
}
/// The rule the daemon writes for `a`'s channel to `peer`.
fn channel_rule(
    a: &Alloc,
    channel: u16,
    peer: SocketAddr,
    expires_ns: u64,
    idx: u32,
) -> (rc::ChannelKey, rc::ChannelRule) {
    let k = channel_key(a.tuple.client, a.tuple.server, channel);
    let v = rc::ChannelRule {
        expires_ns,
        relay_addr: key_addr(a.relay.ip()),
        peer_addr: key_addr(peer.ip()),
        relay_port: rc::wire(a.relay.port()),
        peer_port: rc::wire(peer.port()),
        flags: 0,
        _pad: 0,
        stats_idx: idx,
        alloc_idx: a.handle,
    };
    (k, v)
}

fn peer_rule(
    a: &Alloc,
    peer_port: u16,
    channel: u16,
    expires_ns: u64,
    idx: u32,
) -> (rc::PeerKey, rc::PeerRule) {
    let k = rc::PeerKey {
        peer_addr: key_addr(a.peer.ip()),
        relay_addr: key_addr(a.relay.ip()),
        peer_port: rc::wire(peer_port),
        relay_port: rc::wire(a.relay.port()),
    };
    let v = rc::PeerRule {
        expires_ns,
        client_addr: key_addr(a.tuple.client.ip()),
        server_addr: key_addr(a.tuple.server.ip()),
        client_port: rc::wire(a.tuple.client.port()),
        server_port: rc::wire(a.tuple.server.port()),
        channel: rc::wire(channel),
        flags: 0,
        stats_idx: idx,
        alloc_idx: a.handle,
    };
    (k, v)
}

struct Rules<'a> {
    x: &'a mut XdpTestRun,
}

impl Rules<'_> {
    fn settings(&mut self, flags: u32) {
        self.settings_with(flags, 1000, LO_IFINDEX);
    }

    fn settings_with(&mut self, flags: u32, next_hop_ttl_ms: u32, fib_ifindex: u32) {
        let mut m: Array<_, rc::TurnSettings> = map_as(self.x, rc::maps::SETTINGS);
        m.set(
            0,
            rc::TurnSettings {
                flags,
                relay_port_min: 49152,
                relay_port_max: 65535,
                next_hop_ttl_ms,
                fib_ifindex,
            },
            0,
        )
        .expect("set settings");
    }

    /// The channel table as the daemon maps it (the seed set on first use).
    fn table(&mut self) -> ChannelTable {
        open_channel_table(self.x.ebpf_mut())
            .expect("open the channel table")
            .expect("the table is on (x86_64)")
    }

    /// The peer table as the daemon maps it (the seed set on first use).
    fn peer_table(&mut self) -> PeerTable {
        open_peer_table(self.x.ebpf_mut())
            .expect("open the peer table")
            .expect("the table is on (x86_64)")
    }

    /// A channel rule where the daemon writes it: an IPv4 client's in TURN_CHANNEL_TABLE
    /// when it has a compact form (IPv4 relayed and peer address), else under the compact
    /// key in TURN_CHANNELS_V4 (no wide copy); any other in TURN_CHANNELS.
    fn channel(&mut self, a: &Alloc, channel: u16, peer: SocketAddr, expires_ns: u64, idx: u32) {
        let (k, v) = channel_rule(a, channel, peer, expires_ns, idx);
        let in_table = k.v4().is_some_and(|k4| self.table().put(&k4, &v));
        let mut wide: HashMap<_, rc::ChannelKey, rc::ChannelRule> =
            map_as(self.x, rc::maps::CHANNELS);
        match k.v4() {
            Some(k4) => {
                let _ = wide.remove(&k);
                let mut m: HashMap<_, rc::ChannelKeyV4, rc::ChannelRule> =
                    map_as(self.x, rc::maps::CHANNELS_V4);
                if in_table {
                    let _ = m.remove(&k4);
                } else {
                    m.insert(k4, v, 0).expect("insert channel");
                    self.table().remove(&k4);
                }
            }
            None => wide.insert(k, v, 0).expect("insert channel"),
        }
    }

    /// An IPv4 client's channel rule in TURN_CHANNELS_V4 only (where the daemon puts one
    /// that found no free table slot); returns whether the table had it.
    fn channel_in_v4_map(&mut self, a: &Alloc, channel: u16, peer: SocketAddr, idx: u32) -> bool {
        let (k, v) = channel_rule(a, channel, peer, monotonic_ns() + 60_000_000_000, idx);
        let k4 = k.v4().expect("an IPv4 client");
        let had = self.table().remove(&k4);
        let mut m: HashMap<_, rc::ChannelKeyV4, rc::ChannelRule> =
            map_as(self.x, rc::maps::CHANNELS_V4);
        m.insert(k4, v, 0).expect("insert channel");
        had
    }

    /// A channel rule as an older daemon left it: under the wide key in TURN_CHANNELS
    /// only, whatever the family.
    fn channel_left_wide(&mut self, a: &Alloc, channel: u16, peer: SocketAddr, idx: u32) {
        let (k, v) = channel_rule(a, channel, peer, monotonic_ns() + 60_000_000_000, idx);
        if let Some(k4) = k.v4() {
            self.table().remove(&k4);
            let mut m: HashMap<_, rc::ChannelKeyV4, rc::ChannelRule> =
                map_as(self.x, rc::maps::CHANNELS_V4);
            let _ = m.remove(&k4);
        }
        let mut wide: HashMap<_, rc::ChannelKey, rc::ChannelRule> =
            map_as(self.x, rc::maps::CHANNELS);
        wide.insert(k, v, 0).expect("insert channel");
    }

    /// A peer rule where the daemon writes it: an IPv4 channel binding's in
    /// TURN_PEER_TABLE (compact form: every address IPv4, a channel), any other in
    /// TURN_PEERS.
    fn peer(&mut self, a: &Alloc, peer_port: u16, channel: u16, expires_ns: u64, idx: u32) {
        let (k, v) = peer_rule(a, peer_port, channel, expires_ns, idx);
        let in_table = k.v4().is_some_and(|k4| self.peer_table().put(&k4, &v));
        let mut m: HashMap<_, rc::PeerKey, rc::PeerRule> = map_as(self.x, rc::maps::PEERS);
        if in_table {
            let _ = m.remove(&k);
        } else {
            m.insert(k, v, 0).expect("insert peer");
            if let Some(k4) = k.v4() {
                self.peer_table().remove(&k4);
            }
        }
    }

    /// A peer rule in TURN_PEERS only (where the daemon puts one that found no free table
    /// slot, and where an older daemon left every one); returns whether the table had it.
    fn peer_in_map(&mut self, a: &Alloc, channel: u16, idx: u32) -> bool {
        let exp = monotonic_ns() + 60_000_000_000;
        let (k, v) = peer_rule(a, a.peer.port(), channel, exp, idx);
        let had = k.v4().is_some_and(|k4| self.peer_table().remove(&k4));
        let mut m: HashMap<_, rc::PeerKey, rc::PeerRule> = map_as(self.x, rc::maps::PEERS);
        m.insert(k, v, 0).expect("insert peer");
        had
    }

    fn alloc(&mut self, a: &Alloc, expires_ns: u64, idx: u32) {
        let mut m: HashMap<_, rc::AllocKey, rc::AllocRule> = map_as(self.x, rc::maps::ALLOCS);
        let k = rc::AllocKey {
            client_addr: key_addr(a.tuple.client.ip()),
            server_addr: key_addr(a.tuple.server.ip()),
            client_port: rc::wire(a.tuple.client.port()),
            server_port: rc::wire(a.tuple.server.port()),
        };
        let v = rc::AllocRule {
            expires_ns,
            relay_addr: key_addr(a.relay.ip()),
            relay_port: rc::wire(a.relay.port()),
            flags: 0,
            stats_idx: idx,
            alloc_idx: a.handle,
            _pad: 0,
        };
        m.insert(k, v, 0).expect("insert alloc");
    }

    /// The rules the control plane derives from the allocation's state.
    fn install(&mut self, a: &Alloc, base_idx: u32) {
        let exp = monotonic_ns() + 300_000_000_000;
        self.alloc(a, exp, base_idx + 3);
        self.channel(a, CHANNEL, a.peer, exp, base_idx);
        self.peer(a, a.peer.port(), CHANNEL, exp, base_idx + 1);
        self.peer(a, 0, 0, exp, base_idx + 2);
    }

    fn bandwidth(&mut self, idx: u32, rate: u64) -> rc::Bandwidth {
        let mut m: Array<_, rc::Bandwidth> = map_as(self.x, rc::maps::BANDWIDTH);
        let old = m.get(&idx, 0).expect("read bandwidth");
        m.set(
            idx,
            rc::Bandwidth {
                rate,
                ..rc::Bandwidth::default()
            },
            0,
        )
        .expect("set bandwidth");
        old
    }

    fn stats(&mut self, idx: u32) -> rc::RuleStats {
        let m: PerCpuArray<_, rc::RuleStats> = map_as(self.x, rc::maps::RULE_STATS);
        let v = m.get(&idx, 0).expect("read stats");
        v.iter()
            .fold(rc::RuleStats::default(), |a, s| rc::RuleStats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
            })
    }
}

// ---------- checks ----------

fn run(x: &XdpTestRun, ifindex: u32, f: &[u8]) -> XdpOutcome {
    x.run_on(f, ifindex).expect("BPF_PROG_TEST_RUN")
}

fn assert_relayed(out: &XdpOutcome, reference: &[u8], what: &str) {
    assert_eq!(out.action, XdpAction::Tx, "{what}: XDP_TX expected");
    if out.frame != reference {
        let first = out
            .frame
            .iter()
            .zip(reference)
            .position(|(a, b)| a != b)
            .unwrap_or(out.frame.len().min(reference.len()));
        panic!(
            "{what}: kernel frame differs from the reference at byte {first} (lengths {} vs {})\nkernel    {:02x?}\nreference {:02x?}",
            out.frame.len(),
            reference.len(),
            &out.frame[..out.frame.len().min(96)],
            &reference[..reference.len().min(96)]
        );
    }
}

fn assert_passed(out: &XdpOutcome, input: &[u8], what: &str) {
    assert_eq!(out.action, XdpAction::Pass, "{what}: XDP_PASS expected");
    assert_eq!(out.frame, input, "{what}: passed frame must be unchanged");
}

/// Reference for ChannelData from the client: what userspace sends to the peer, framed.
fn ref_to_peer(
    r: &mut Reference,
    a: &Alloc,
    msg: &[u8],
    tos: u8,
    v4: Ipv4Fields,
) -> Option<Vec<u8>> {
    r.client_sends(&a.tuple, msg);
    let (handle, peer, bytes, dont_fragment) = r.sink.peer.pop()?;
    let src = *r.ports.open.get(&handle)?;
    let hop = Hop {
        src_mac: MAC_RELAY,
        dst_mac: MAC_PEER,
    };
    // A Send indication with DONT-FRAGMENT: userspace sends it with DF.
    let v4 = Ipv4Fields {
        df: v4.df || dont_fragment,
        ..v4
    };
    Some(build_relayed_frame(&hop, src, peer, tos, v4, &bytes).expect("reference frame"))
}

/// Reference for peer data: what userspace sends to the client, framed; a Data
/// indication gets `txid` (the kernel's) in place of the server's.
fn ref_to_client(
    r: &mut Reference,
    a: &Alloc,
    from: SocketAddr,
    payload: &[u8],
    tos: u8,
    v4: Ipv4Fields,
    txid: Option<[u8; 12]>,
) -> Option<Vec<u8>> {
    r.peer_sends(a.handle, from, payload);
    let (tuple, mut bytes) = r.sink.client.pop()?;
    if let Some(t) = txid {
        with_kernel_txid(&mut bytes, t);
    }
    let hop = Hop {
        src_mac: MAC_RELAY,
        dst_mac: MAC_CLIENT,
    };
    Some(build_relayed_frame(&hop, tuple.server, tuple.client, tos, v4, &bytes).expect("reference"))
}

/// The frame `build(x)` for the first `x` whose (complete, right) UDP checksum equals
/// the pseudo-header's sum, the value a partial checksum has.
fn equal_to_partial(build: impl Fn(u16) -> Vec<u8>) -> Vec<u8> {
    (0..=u16::MAX)
        .map(build)
        .find(|f| {
            let p = wire::parse_udp_frame(f).expect("parses");
            let seg = p.udp_segment();
            let field = u16::from_be_bytes([seg[6], seg[7]]);
            p.udp_checksum_valid()
                && field == wire::udp_partial_checksum(p.src.ip(), p.dst.ip(), seg.len())
        })
        .expect("some value gives the checksum any value")
}

/// Userspace's Data indication `bytes` with transaction id `t` (the kernel's random one)
/// in place of its own, and its XOR-PEER-ADDRESS encoded under `t`.
fn with_kernel_txid(bytes: &mut [u8], t: [u8; 12]) {
    let tid = TransactionId(t);
    let peer = {
        let m = Message::parse(bytes).expect("Data indication parses");
        assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), 0x0017);
        assert_eq!(bytes[20..22], [0x00, 0x12], "XOR-PEER-ADDRESS first");
        let Ok(Some(Attribute::Other { value, .. })) = m.get(attrs::XOR_PEER_ADDRESS) else {
            panic!("XOR-PEER-ADDRESS present");
        };
        attrs::decode_xor_address(value, m.transaction_id()).expect("decodes")
    };
    bytes[8..20].copy_from_slice(&t);
    let v = xor(peer, &tid);
    bytes[24..24 + v.len()].copy_from_slice(&v);
}

fn kernel_txid(out: &XdpOutcome) -> [u8; 12] {
    let f = wire::parse_udp_frame(&out.frame).expect("kernel frame parses");
    let mut t = [0u8; 12];
    t.copy_from_slice(&f.payload[8..20]);
    t
}

fn counters(x: &XdpTestRun) -> [u64; counter::COUNT as usize] {
    x.counters().expect("counters")
}

/// One scenario: client of family `client_v6`, relay/peer of family `peer_v6`.
fn scenario(
    x: &mut XdpTestRun,
    ifindex: u32,
    r: &mut Reference,
    client_v6: bool,
    peer_v6: bool,
    n: u32,
) {
    let cf = fam(client_v6);
    let pf = fam(peer_v6);
    let tuple = FiveTuple {
        // One allocation per client 5-tuple: a port per scenario.
        client: SocketAddr::new(cf.client, CLIENT_PORT + n as u16),
        server: SocketAddr::new(cf.listen, LISTEN_PORT),
        transport: Transport::Udp,
    };
    let peer = SocketAddr::new(pf.peer, PEER_PORT);
    let a = r.allocate(tuple, peer_v6, peer, (n * 16) as u8);
    assert_eq!(a.relay.ip(), pf.relay);
    let base = n * 8;
    Rules { x }.install(&a, base);
    let tag = format!(
        "client {} / peer {}",
        fam_name(client_v6),
        fam_name(peer_v6)
    );
    let c_hlen = if client_v6 { 40 } else { 20 };
    let p_hlen = if peer_v6 { 40 } else { 20 };

    // ChannelData client → peer: padded and unpadded, 0..=max.
    let max_in = MTU - c_hlen - 8 - 4; // the largest ChannelData the client's MTU carries
    let max_out = MTU - p_hlen - 8; // the largest datagram to the peer
    let mut relayed = 0u64;
    let mut bytes = 0u64;
    for (len, tos) in [
        (0usize, 0u8),
        (1, 0),
        (2, 0x2e),
        (3, 0),
        (4, 0xb8),
        (5, 1),
        (100, 0),
        (1000, 0x48),
    ]
    .into_iter()
    .chain([(max_in.min(max_out), 0)])
    {
        for padded in [false, true] {
            let pad = if padded { (4 - len % 4) % 4 } else { 0 };
            let msg = channel_data(len, pad, len as u8);
            let f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, tos);
            let reference = ref_to_peer(r, &a, &msg, tos, v4f(&f, false))
                .expect("userspace relays ChannelData");
            let out = run(x, ifindex, &f);
            assert_relayed(
                &out,
                &reference,
                &format!("{tag}: ChannelData len {len} pad {pad}"),
            );
            relayed += 1;
            bytes += len as u64;
        }
    }
    let s = Rules { x }.stats(base);
    assert_eq!(
        (s.packets, s.bytes),
        (relayed, bytes),
        "{tag}: rule stats of the channel"
    );
    // A rule an older daemon left under the wide key in TURN_CHANNELS still relays (the
    // kernel falls back to it), until the daemon rewrites it under the compact key.
    Rules { x }.channel_left_wide(&a, CHANNEL, a.peer, base);
    let msg = channel_data(10, 2, 3);
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, 0);
    let reference =
        ref_to_peer(r, &a, &msg, 0, v4f(&f, false)).expect("userspace relays ChannelData");
    assert_relayed(
        &run(x, ifindex, &f),
        &reference,
        &format!("{tag}: ChannelData on a rule under the wide key"),
    );
    Rules { x }.install(&a, base);
    if !client_v6 {
        // A rule that found no free table slot relays from TURN_CHANNELS_V4.
        let was_in_table = Rules { x }.channel_in_v4_map(&a, CHANNEL, a.peer, base);
        assert_eq!(
            was_in_table, !peer_v6,
            "{tag}: where the daemon put the rule"
        );
        assert_relayed(
            &run(x, ifindex, &f),
            &reference,
            &format!("{tag}: ChannelData on a rule in {}", rc::maps::CHANNELS_V4),
        );
        Rules { x }.install(&a, base);
    }
    if !client_v6 && !peer_v6 {
        // A table slot caught mid-write (seqlock word odd, or changed while the program
        // read it; both look the same to one run) is not used: the frame passes up
        // unchanged and userspace relays it.
        let mut t = Rules { x }.table();
        let k4 = channel_rule(&a, CHANNEL, a.peer, 0, base)
            .0
            .v4()
            .expect("IPv4");
        assert!(
            t.set_seq_for_test(&k4, 1),
            "{tag}: the rule is in the table"
        );
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: ChannelData on a slot being written"),
        );
        assert!(t.set_seq_for_test(&k4, 2));
        assert_relayed(
            &run(x, ifindex, &f),
            &reference,
            &format!("{tag}: ChannelData on the slot once written"),
        );
    }

    // One byte over the peer-side MTU (only reachable when the peer's header is larger).
    if max_out < max_in {
        let msg = channel_data(max_out + 1, 0, 9);
        let f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, 0);
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: ChannelData over the MTU"),
        );
    }

    // Padding that does not end the message on a multiple of 4 (5 bytes and 1 of
    // padding): userspace relays the 5 bytes; the kernel, which takes padding out of the
    // checksum a word at a time, passes it up (it once relayed it with a wrong checksum).
    let msg = channel_data(5, 1, 4);
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, 0);
    assert!(ref_to_peer(r, &a, &msg, 0, v4f(&f, false)).is_some());
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: ChannelData with padding to an odd length"),
    );

    // Send indications (the plain shape: XOR-PEER-ADDRESS, DATA).
    for (len, tos) in [
        (0usize, 0u8),
        (1, 0),
        (3, 0x2e),
        (4, 0),
        (100, 0xb8),
        (1000, 0),
    ] {
        let msg = send_indication(peer, &data(len, 0x33));
        let f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, tos);
        let reference =
            ref_to_peer(r, &a, &msg, tos, v4f(&f, true)).expect("userspace relays the Send");
        let out = run(x, ifindex, &f);
        assert_relayed(
            &out,
            &reference,
            &format!("{tag}: Send indication len {len}"),
        );
    }
    let s = Rules { x }.stats(base + 3);
    assert_eq!(s.packets, 6, "{tag}: rule stats of Send indications");

    // Peer → client as ChannelData: 0..=max, then one byte over the MTU.
    let max_cd = MTU - c_hlen - 8 - 4;
    for (len, tos) in [(0usize, 0u8), (1, 0), (3, 0x2e), (100, 0xb8), (max_cd, 0)] {
        let payload = data(len, len as u8);
        let f = frame(MAC_PEER, peer, a.relay, &payload, tos);
        let reference = ref_to_client(r, &a, peer, &payload, tos, v4f(&f, false), None)
            .expect("userspace relays");
        let out = run(x, ifindex, &f);
        assert_relayed(
            &out,
            &reference,
            &format!("{tag}: peer→ChannelData len {len}"),
        );
    }
    // Where the rule is: an IPv4 channel binding (client and peer IPv4) in
    // TURN_PEER_TABLE, any other in TURN_PEERS; from either, the same output.
    let payload = data(50, 7);
    let f = frame(MAC_PEER, peer, a.relay, &payload, 0);
    let reference =
        ref_to_client(r, &a, peer, &payload, 0, v4f(&f, false), None).expect("userspace relays");
    let was_in_table = Rules { x }.peer_in_map(&a, CHANNEL, base + 1);
    assert_eq!(
        was_in_table,
        !client_v6 && !peer_v6,
        "{tag}: where the daemon put the peer rule"
    );
    assert_relayed(
        &run(x, ifindex, &f),
        &reference,
        &format!("{tag}: peer→ChannelData on a rule in {}", rc::maps::PEERS),
    );
    Rules { x }.install(&a, base);
    if !client_v6 && !peer_v6 {
        // A peer slot caught mid-write is not used: the frame passes up unchanged.
        let mut t = Rules { x }.peer_table();
        let k4 = peer_rule(&a, peer.port(), CHANNEL, 0, 0)
            .0
            .v4()
            .expect("IPv4");
        assert!(
            t.set_seq_for_test(&k4, 1),
            "{tag}: the peer rule is in the table"
        );
        let before = counters(x);
        let out = run(x, ifindex, &f);
        assert_passed(
            &out,
            &f,
            &format!("{tag}: peer→ChannelData on a slot being written"),
        );
        assert!(t.set_seq_for_test(&k4, 2));
        assert_relayed(
            &run(x, ifindex, &f),
            &reference,
            &format!("{tag}: peer→ChannelData on the slot once written"),
        );
        // A slot whose deadline has passed relays nothing as ChannelData (the permission
        // entry, expired too here, does not relay either).
        let ended = monotonic_ns() - rc::COARSE_CLOCK_SLACK_NS;
        Rules { x }.peer(&a, peer.port(), CHANNEL, ended, base + 1);
        Rules { x }.peer(&a, 0, 0, ended, base + 2);
        assert!(
            Rules { x }.peer_table().set_seq_for_test(&k4, 4),
            "{tag}: the expired rule is still in the table"
        );
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: peer→ChannelData on an expired slot"),
        );
        let no_rule = counters(x)[counter::TURN_NO_RULE_PASSED as usize]
            - before[counter::TURN_NO_RULE_PASSED as usize];
        assert_eq!(
            no_rule, 2,
            "{tag}: the slot being written and the expired one passed for want of a rule"
        );
        Rules { x }.install(&a, base);
    }
    if max_cd + 1 + p_hlen + 8 <= MTU + 40 {
        let payload = data(max_cd + 1, 3);
        let f = frame(MAC_PEER, peer, a.relay, &payload, 0);
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: peer→ChannelData over the MTU"),
        );
    }

    // Peer → client as a Data indication (another port of the permitted peer: no channel).
    let other = SocketAddr::new(pf.peer, PEER_PORT + 1);
    let xor_len = if peer_v6 { 24 } else { 12 };
    let max_di = (MTU - c_hlen - 8 - 20 - xor_len - 4) & !3;
    for (len, tos) in [
        (0usize, 0u8),
        (1, 0),
        (2, 0),
        (3, 0x2e),
        (4, 0),
        (101, 0xb8),
        (max_di, 0),
    ] {
        let payload = data(len, 0x5a);
        let f = frame(MAC_PEER, other, a.relay, &payload, tos);
        let out = run(x, ifindex, &f);
        assert_eq!(
            out.action,
            XdpAction::Tx,
            "{tag}: Data indication len {len}"
        );
        let t = kernel_txid(&out);
        let reference = ref_to_client(r, &a, other, &payload, tos, v4f(&f, false), Some(t))
            .expect("userspace relays");
        assert_relayed(
            &out,
            &reference,
            &format!("{tag}: Data indication len {len}"),
        );
    }
    {
        let payload = data(max_di + 1, 1);
        let f = frame(MAC_PEER, other, a.relay, &payload, 0);
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: Data indication over the MTU"),
        );
    }

    // Passes: unknown channel, wrong 5-tuple, peer without permission, expired rule, bad
    // ChannelData length, TTL 1, Send indication, unresolved next hop.
    let before = counters(x);
    let msg = channel_data(10, 2, 1);
    let mut unknown = msg.clone();
    unknown[1] = 0x02;
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &unknown, 0);
    assert_passed(&run(x, ifindex, &f), &f, &format!("{tag}: unknown channel"));
    let wrong = SocketAddr::new(cf.client, CLIENT_PORT + 100);
    let f = frame(MAC_CLIENT, wrong, tuple.server, &msg, 0);
    assert_passed(&run(x, ifindex, &f), &f, &format!("{tag}: wrong 5-tuple"));
    let stranger = SocketAddr::new(pf.stranger, PEER_PORT);
    let f = frame(MAC_PEER, stranger, a.relay, &data(20, 1), 0);
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: peer without permission"),
    );
    let no_rule = counters(x)[counter::TURN_NO_RULE_PASSED as usize]
        - before[counter::TURN_NO_RULE_PASSED as usize];
    assert_eq!(no_rule, 3, "{tag}: three frames passed for want of a rule");

    let mut bad_len = msg.clone();
    bad_len[3] = 40; // says 40 bytes, carries 12
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &bad_len, 0);
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: ChannelData length too long"),
    );
    let mut extra = channel_data(10, 6, 2); // 6 bytes after the data: more than padding
    extra[3] = 10;
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &extra, 0);
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: ChannelData with 6 trailing bytes"),
    );
    let mut f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, 0);
    if client_v6 {
        f[21] = 1;
    } else {
        f[22] = 1;
        f[24] = 0;
        f[25] = 0;
        let c = wire::ipv4_header_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    assert_passed(&run(x, ifindex, &f), &f, &format!("{tag}: TTL 1"));
    if !client_v6 {
        let mut f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, 0);
        f[40] = 0;
        f[41] = 0;
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: IPv4 UDP checksum 0"),
        );
    }
    // A partial UDP checksum (the pseudo-header's sum only), as a sender on this host with
    // checksum offload leaves it over a veth: passed up in every direction (updated
    // incrementally, it would leave unfinished and the receiver would drop the datagram).
    for (mut f, what) in [
        (
            frame(
                MAC_CLIENT,
                tuple.client,
                tuple.server,
                &channel_data(10, 2, 3),
                0,
            ),
            "ChannelData",
        ),
        (frame(MAC_PEER, peer, a.relay, &data(20, 5), 0), "peer data"),
        (
            frame(
                MAC_PEER,
                SocketAddr::new(peer.ip(), PEER_PORT + 1),
                a.relay,
                &data(9, 1),
                0,
            ),
            "peer data for a Data indication",
        ),
        (
            frame(
                MAC_CLIENT,
                tuple.client,
                tuple.server,
                &send_indication(peer, b"hi"),
                0,
            ),
            "Send indication",
        ),
    ] {
        let p = wire::parse_udp_frame(&f).expect("the frame parses");
        let (at, len) = (p.udp_offset + 6, p.udp_segment().len());
        let partial = wire::udp_partial_checksum(p.src.ip(), p.dst.ip(), len);
        f[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: {what} with a partial UDP checksum"),
        );
    }
    // A complete checksum that equals the pseudo-header's sum (a partial checksum's
    // value; in a stream of numbered packets one in a few thousand has it): relayed as
    // userspace relays it, at every length modulo 4 (the kernel sums such a datagram to
    // tell, lane by lane to its last byte).
    for len in [20usize, 21, 22, 23] {
        let ch = equal_to_partial(|x| {
            let mut m = channel_data(len, 0, 7);
            m[8..10].copy_from_slice(&x.to_be_bytes());
            frame(MAC_CLIENT, tuple.client, tuple.server, &m, 0)
        });
        let p = wire::parse_udp_frame(&ch).expect("parses");
        let msg = p.payload.to_vec();
        let reference = ref_to_peer(r, &a, &msg, 0, v4f(&ch, false)).expect("userspace relays");
        assert_relayed(
            &run(x, ifindex, &ch),
            &reference,
            &format!("{tag}: ChannelData len {len} whose checksum equals a partial one"),
        );
        let pd = equal_to_partial(|v| {
            let mut d = data(len, 3);
            d[4..6].copy_from_slice(&v.to_be_bytes());
            frame(MAC_PEER, peer, a.relay, &d, 0)
        });
        let p = wire::parse_udp_frame(&pd).expect("parses");
        let payload = p.payload.to_vec();
        let reference = ref_to_client(r, &a, peer, &payload, 0, v4f(&pd, false), None)
            .expect("userspace relays");
        assert_relayed(
            &run(x, ifindex, &pd),
            &reference,
            &format!("{tag}: peer data len {len} whose checksum equals a partial one"),
        );
    }
    // Send indications of other shapes: attributes in uclient's order, DONT-FRAGMENT,
    // FINGERPRINT (verified in the kernel); relayed exactly as userspace relays them.
    let mut sends = 0;
    for (len, data_first, df, fp) in [
        (100usize, true, false, Some(false)),
        (3, true, false, Some(false)),
        (0, false, false, Some(false)),
        (1000, false, true, None),
        (5, true, true, Some(false)),
    ] {
        let si = send_indication_with(peer, &data(len, 0x44), data_first, df, fp);
        let f = frame(MAC_CLIENT, tuple.client, tuple.server, &si, 0);
        let reference =
            ref_to_peer(r, &a, &si, 0, v4f(&f, true)).expect("userspace relays the Send");
        let tag2 =
            format!("{tag}: Send indication len {len} data_first {data_first} DF {df} FP {fp:?}");
        assert_relayed(&run(x, ifindex, &f), &reference, &tag2);
        sends += 1;
    }
    let s = Rules { x }.stats(base + 3);
    assert_eq!(
        s.packets,
        6 + sends,
        "{tag}: rule stats of Send indications"
    );
    // A wrong FINGERPRINT: userspace drops it, the kernel passes it up.
    let bad = send_indication_with(peer, b"hello peer", true, false, Some(true));
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &bad, 0);
    assert!(
        ref_to_peer(r, &a, &bad, 0, v4f(&f, true)).is_none(),
        "{tag}: userspace relays a Send indication with a wrong FINGERPRINT"
    );
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: Send indication with a wrong FINGERPRINT"),
    );
    // An attribute the kernel does not know (SOFTWARE): passed up.
    let mut software = send_indication(peer, b"hello peer");
    software.extend_from_slice(&[0x80, 0x22, 0, 4, b't', b'e', b's', b't']);
    let len = (software.len() - 20) as u16;
    software[2..4].copy_from_slice(&len.to_be_bytes());
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &software, 0);
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: Send indication with SOFTWARE"),
    );
    let si = send_indication(stranger, b"hello stranger");
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &si, 0);
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: Send to a peer without permission"),
    );

    // Expired: a lifetime that ended just now, written as the daemon writes it
    // (COARSE_CLOCK_SLACK_NS early, as the kernel reads the coarse clock, which lags by up
    // to a tick). Repeated across a few ticks: a slack shorter than the lag would relay
    // some of these frames past the lifetime.
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, 0);
    for i in 0..24 {
        let ended_now = monotonic_ns() - rc::COARSE_CLOCK_SLACK_NS;
        Rules { x: &mut *x }.channel(&a, CHANNEL, a.peer, ended_now, base);
        assert_passed(
            &run(x, ifindex, &f),
            &f,
            &format!("{tag}: channel rule whose lifetime just ended (try {i})"),
        );
        std::thread::sleep(std::time::Duration::from_micros(700));
    }
    // Unresolved next hop: a channel rule towards a peer with no neighbour entry.
    let unresolved = SocketAddr::new(pf.unresolved, PEER_PORT);
    let fib_before = counters(x)[counter::TURN_FIB_PASSED as usize];
    Rules { x }.channel(
        &a,
        CHANNEL,
        unresolved,
        monotonic_ns() + 60_000_000_000,
        base,
    );
    assert_passed(
        &run(x, ifindex, &f),
        &f,
        &format!("{tag}: no neighbour entry"),
    );
    assert_eq!(
        counters(x)[counter::TURN_FIB_PASSED as usize],
        fib_before + 1,
        "{tag}: counted as TURN_FIB_PASSED"
    );

    // Bandwidth: a budget of 1 byte per window drops (the only drop), and is counted.
    Rules { x }.install(&a, base);
    Rules { x }.bandwidth(a.handle, 10);
    let out = run(x, ifindex, &f);
    assert_eq!(
        out.action,
        XdpAction::Drop,
        "{tag}: over the bandwidth budget"
    );
    let bw = Rules { x }.bandwidth(a.handle, 0);
    assert_eq!(bw.dropped, 1, "{tag}: the allocation's dropped count");
    let out = run(x, ifindex, &f);
    assert_eq!(out.action, XdpAction::Tx, "{tag}: unlimited again");
}

fn fam_name(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

#[test]
fn turn_fast_path_matches_the_userspace_relay() {
    if !privileged() {
        return;
    }
    let ns = Netns::create("d");
    let mut x = XdpTestRun::load(&[LISTEN_PORT]).expect("load the XDP program");
    let _in = ns.enter();
    let ifindex = v0_ifindex();
    let mut r = Reference::new();

    // Off: everything passes (the STUN path decides).
    Rules { x: &mut x }.settings(0);
    let probe = frame(
        MAC_CLIENT,
        SocketAddr::new(v4(100), CLIENT_PORT),
        SocketAddr::new(v4(1), LISTEN_PORT),
        &channel_data(8, 0, 1),
        0,
    );
    assert_passed(&run(&x, ifindex, &probe), &probe, "TURN off");
    assert_eq!(counters(&x)[counter::TURN_NO_RULE_PASSED as usize], 0);

    Rules { x: &mut x }.settings(
        rc::SETTING_ENABLED | rc::SETTING_DATA_INDICATIONS | rc::SETTING_SEND_INDICATIONS,
    );
    // Every case with each rule clock: the coarse clock (TURN_CLOCK zero, as before the
    // daemon calibrates it), then jiffies (TURN_CLOCK calibrated, as the daemon runs it):
    // live rules relay and rules whose lifetime just ended pass up with both.
    let families = [(false, false), (true, true), (false, true), (true, false)];
    for (n, (c6, p6)) in (1..).zip(families) {
        scenario(&mut x, ifindex, &mut r, c6, p6, n);
    }
    let clock = relay::xdp::clock::install(x.ebpf_mut()).expect("calibrate the rule clock");
    assert_ne!(clock.tick_ns, 0);
    for (n, (c6, p6)) in (5..).zip(families) {
        scenario(&mut x, ifindex, &mut r, c6, p6, n);
    }
    let c = counters(&x);
    for i in [
        counter::TURN_CHANNEL_TO_PEER,
        counter::TURN_PEER_TO_CHANNEL,
        counter::TURN_PEER_TO_DATA_INDICATION,
        counter::TURN_SEND_TO_PEER,
        counter::TURN_NO_RULE_PASSED,
        counter::TURN_UNHANDLED_PASSED,
        counter::TURN_FIB_PASSED,
        counter::TURN_BANDWIDTH_DROPPED,
    ] {
        assert!(
            c[i as usize] > 0,
            "counter {} moved",
            counter::NAMES[i as usize]
        );
    }

    // Data indications off: permission-only peer data passes up.
    Rules { x: &mut x }.settings(rc::SETTING_ENABLED);
    let cf = fam(false);
    let relay = r.ports.open.get(&1).copied().expect("first relay");
    let f = frame(
        MAC_PEER,
        SocketAddr::new(cf.peer, PEER_PORT + 1),
        relay,
        &data(10, 1),
        0,
    );
    assert_passed(&run(&x, ifindex, &f), &f, "Data indications off");
}

// ---------- mutated frames ----------

/// The frames the mutation test starts from, for allocation `a` (its client of family
/// `c6`; a channel to `a.peer` and a permission for its address): ChannelData and Send
/// indications from the client, peer data on the channel and, from another port of the
/// peer, for a Data indication. Each of them relays unmutated.
fn seed_frames(a: &Alloc, c6: bool) -> Vec<Vec<u8>> {
    let c_hlen = if c6 { 40 } else { 20 };
    let p_hlen = if a.peer.is_ipv6() { 40 } else { 20 };
    let max_cd = (MTU - c_hlen - 8 - 4).min(MTU - p_hlen - 8);
    let other_port = SocketAddr::new(a.peer.ip(), PEER_PORT + 1);
    let mut seeds = Vec::new();
    for (i, len) in (0u8..).zip([0usize, 1, 3, 4, 5, 64, 201, 1000]) {
        let pad = (4 - len % 4) % 4;
        for p in [0, pad] {
            let msg = channel_data(len, p, i);
            seeds.push(frame(
                MAC_CLIENT,
                a.tuple.client,
                a.tuple.server,
                &msg,
                i << 2,
            ));
        }
        seeds.push(frame(MAC_PEER, a.peer, a.relay, &data(len, i), i << 3));
        seeds.push(frame(MAC_PEER, other_port, a.relay, &data(len, i), 0));
    }
    let msg = channel_data(max_cd, 0, 9);
    seeds.push(frame(MAC_CLIENT, a.tuple.client, a.tuple.server, &msg, 0));
    for (len, data_first, df, fp) in [
        (0usize, false, false, None),
        (3, false, false, None),
        (100, true, false, Some(false)),
        (7, false, true, Some(false)),
    ] {
        let si = send_indication_with(a.peer, &data(len, 0x21), data_first, df, fp);
        seeds.push(frame(MAC_CLIENT, a.tuple.client, a.tuple.server, &si, 0));
    }
    seeds
}

/// One to three of these per case: a bit flipped in the headers (from the ethertype on:
/// the destination MAC is the NIC's filter's business, and the source MAC is not read
/// for relaying) or anywhere, a length or port field nudged or replaced, a header byte
/// set to a value with a meaning (version, IHL, fragment flags, TTL 0/1, protocol), the
/// frame truncated (to an Ethernet header at least), or bytes appended.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let v6 = f.get(12..14) == Some(&[0x86, 0xdd][..]);
    let l4 = if v6 { 54 } else { 34 };
    // IP length; UDP ports and length; the TURN message's first two words (channel or
    // STUN type, length); the first STUN attribute's type and length.
    let words = [
        if v6 { 18 } else { 16 },
        l4,
        l4 + 2,
        l4 + 4,
        l4 + 8,
        l4 + 10,
        l4 + 28,
        l4 + 30,
    ];
    // Version (and IHL / traffic class), TOS or traffic class and flow label, fragment
    // flags or next header, TTL or hop limit, protocol or flow label.
    let header_bytes = if v6 {
        [14, 15, 20, 21, 17]
    } else {
        [14, 15, 20, 22, 23]
    };
    let len = f.len();
    match rng.below(6) {
        0 if len > 12 => {
            let i = 12 + rng.below((len.min(l4 + 8 + 48) - 12) as u64) as usize;
            f[i] ^= 1 << rng.below(8);
        }
        1 if len > 12 => {
            let i = 12 + rng.below((len - 12) as u64) as usize;
            f[i] ^= 1 << rng.below(8);
        }
        2 => {
            let at = words[rng.below(words.len() as u64) as usize];
            if at + 2 <= len {
                let old = u16::from_be_bytes([f[at], f[at + 1]]);
                let step = 1 + rng.below(4) as u16;
                let new = match rng.below(3) {
                    0 => old.wrapping_add(step),
                    1 => old.wrapping_sub(step),
                    _ => rng.next() as u16,
                };
                f[at..at + 2].copy_from_slice(&new.to_be_bytes());
            }
        }
        3 => {
            let at = header_bytes[rng.below(header_bytes.len() as u64) as usize];
            let values = [0, 1, 2, 6, 17, 0x20, 0x40, 0x45, 0x46, 0x60, 0xff];
            if at < len {
                f[at] = values[rng.below(values.len() as u64) as usize];
            }
        }
        // No shorter than an Ethernet header: no NIC delivers less (and the test run
        // refuses it).
        4 if len > 14 => f.truncate(14 + rng.below(len as u64 - 14) as usize),
        _ => {
            for _ in 0..1 + rng.below(8) {
                f.push(rng.next() as u8);
            }
        }
    }
}

/// What became of one mutated frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    /// Passed up unchanged.
    Passed,
    /// Relayed, equal to what userspace sends for it.
    Relayed,
    /// Relayed with its wrong UDP checksum kept wrong (userspace drops it, the kernel
    /// does not read the payload, and the receiver drops it).
    BadStaysBad,
    /// Answered by the STUN path (a mutation made a Binding request: see
    /// `xdp_differential.rs`).
    Answered,
}

/// Checks the kernel's verdict `out` on `f` against the userspace relay's: a relayed
/// frame must be one the stack accepts and equal what the reference sends for it; a
/// passed frame must be unchanged; nothing is dropped (no budget is set). `moved`: the
/// counters' increments during the run.
fn judge(
    r: &mut Reference,
    allocs: &[Alloc],
    f: &[u8],
    out: &XdpOutcome,
    moved: &[u64],
    what: &str,
) -> Fate {
    let relayed_counters = [
        counter::TURN_CHANNEL_TO_PEER,
        counter::TURN_PEER_TO_CHANNEL,
        counter::TURN_PEER_TO_DATA_INDICATION,
        counter::TURN_SEND_TO_PEER,
    ];
    let relayed: u64 = relayed_counters.iter().map(|&c| moved[c as usize]).sum();
    match out.action {
        XdpAction::Pass => {
            assert_passed(out, f, what);
            assert_eq!(relayed, 0, "{what}: passed but counted as relayed");
            return Fate::Passed;
        }
        XdpAction::Tx | XdpAction::Redirect => {}
        other => panic!("{what}: {other:?} (only an exhausted budget drops): {f:02x?}"),
    }
    let answered =
        moved[counter::STUN_ANSWERED_V4 as usize] + moved[counter::STUN_ANSWERED_V6 as usize];
    if answered == 1 && relayed == 0 {
        return Fate::Answered;
    }
    assert_eq!(
        (relayed, answered),
        (1, 0),
        "{what}: one relayed counter per relayed frame"
    );
    let p = wire::parse_udp_frame(f)
        .unwrap_or_else(|e| panic!("{what}: relayed a frame the stack refuses ({e}): {f:02x?}"));
    assert!(
        p.ip_checksum_valid(),
        "{what}: relayed a frame with a wrong IPv4 header checksum: {f:02x?}"
    );
    if !p.udp_checksum_valid() {
        let o = wire::parse_udp_frame(&out.frame).expect("the kernel's output parses");
        assert!(
            !o.udp_checksum_valid(),
            "{what}: a datagram with a wrong UDP checksum left with a right one: {f:02x?}"
        );
        return Fate::BadStaysBad;
    }
    let tos = relay::xdp::turn_frames::tos_of_frame(&p).expect("TOS");
    let refused = || format!("{what}: userspace does not relay it: {f:02x?}");
    let expected = if let Some(a) = allocs.iter().find(|a| a.relay == p.dst) {
        let v4 = Ipv4Fields::for_frame(&p, false).expect("IPv4 fields");
        let indication = moved[counter::TURN_PEER_TO_DATA_INDICATION as usize] == 1;
        let txid = indication.then(|| kernel_txid(out));
        ref_to_client(r, a, p.src, p.payload, tos, v4, txid)
            .unwrap_or_else(|| panic!("{}", refused()))
    } else {
        let a = allocs
            .iter()
            .find(|a| a.tuple.client == p.src && a.tuple.server == p.dst)
            .unwrap_or_else(|| panic!("{what}: relayed from a client without an allocation"));
        let send = p.payload.starts_with(&[0x00, 0x16]);
        let v4 = Ipv4Fields::for_frame(&p, send).expect("IPv4 fields");
        ref_to_peer(r, a, p.payload, tos, v4).unwrap_or_else(|| panic!("{}", refused()))
    };
    assert!(
        r.sink.peer.is_empty() && r.sink.client.is_empty(),
        "{what}: userspace sent more than one datagram for it"
    );
    assert_relayed(out, &expected, what);
    Fate::Relayed
}

/// Mutated ChannelData, peer data and Send indications of every family pair: whatever
/// the kernel relays is byte for byte what the userspace relay sends for the same frame
/// (and a frame the stack would drop is never relayed, except that a wrong UDP checksum
/// goes out wrong: see [`Fate::BadStaysBad`]); whatever it does not relay passes up
/// unchanged. The fuzzing of the TURN fast path's parser, against the real program:
/// 40 000 cases by default (about 2 s); `RELAY_MUTATION_CASES` and `RELAY_MUTATION_SEED`
/// run more, or others (a failure names its case, which replays under the same seed).
#[test]
fn mutated_frames_are_relayed_as_userspace_relays_them_or_passed_unchanged() {
    if !privileged() {
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let cases = env("RELAY_MUTATION_CASES", 40_000) as usize;
    let seed = env("RELAY_MUTATION_SEED", 0x7e57_ab1e_5eed_0004);
    let mut loaded = loaded_with("m", ALL_TURN);
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    let mut r = Reference::new();
    let families = [(false, false), (true, true), (false, true), (true, false)];
    let mut allocs = Vec::new();
    let mut seeds = Vec::new();
    for (n, (c6, p6)) in (1u32..).zip(families) {
        let (cf, pf) = (fam(c6), fam(p6));
        let tuple = FiveTuple {
            client: SocketAddr::new(cf.client, CLIENT_PORT + n as u16),
            server: SocketAddr::new(cf.listen, LISTEN_PORT),
            transport: Transport::Udp,
        };
        let a = r.allocate(
            tuple,
            p6,
            SocketAddr::new(pf.peer, PEER_PORT),
            (n * 16) as u8,
        );
        Rules { x: &mut *x }.install(&a, n * 8);
        seeds.extend(seed_frames(&a, c6));
        allocs.push(a);
    }
    let judged = |r: &mut Reference, f: &[u8], what: &str| {
        let before = counters(x);
        let out = run(x, ifindex, f);
        let after = counters(x);
        let moved: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        (judge(r, &allocs, f, &out, &moved, what), out)
    };
    for (i, s) in seeds.iter().enumerate() {
        let (fate, _) = judged(&mut r, s, &format!("seed {i}"));
        assert_eq!(fate, Fate::Relayed, "seed {i} relays unmutated");
    }

    let mut rng = Rng(seed);
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    let mut fates: StdMap<Fate, usize> = StdMap::new();
    let mut mutated_relayed = 0;
    for case in 0..cases {
        assert!(
            Instant::now() < deadline,
            "still at case {case} after 600 s"
        );
        let s = rng.below(seeds.len() as u64) as usize;
        let mut f = seeds[s].clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut f);
        }
        if rng.below(4) != 0 {
            fix_checksums(&mut f);
        }
        let (fate, _) = judged(&mut r, &f, &format!("case {case} (seed {s})"));
        *fates.entry(fate).or_default() += 1;
        if fate == Fate::Relayed && f != seeds[s] {
            mutated_relayed += 1;
        }
    }
    eprintln!(
        "{cases} mutated frames (seed {seed}): {fates:?}; relayed with a mutation: {mutated_relayed}"
    );
    // Mutations of TOS, identification, DF, padding or payload keep a frame relayable:
    // many must have been relayed, and compared, and many refused.
    assert!(
        mutated_relayed > cases / 20,
        "only {mutated_relayed} mutated frames relayed"
    );
    let count = |fate| fates.get(&fate).copied().unwrap_or(0);
    assert!(
        count(Fate::Passed) > cases / 4,
        "too few mutated frames passed up"
    );
    assert!(
        count(Fate::BadStaysBad) > 0,
        "no relayed frame had a wrong UDP checksum"
    );
}

fn sysctl(kv: &str) {
    let st = Command::new("sysctl")
        .args(["-qw", kv])
        .status()
        .expect("run sysctl");
    assert!(st.success(), "sysctl {kv}");
}

fn forwarding(dev: &str, v6: bool) -> String {
    let fam = if v6 { "ipv6" } else { "ipv4" };
    std::fs::read_to_string(format!("/proc/sys/net/{fam}/conf/{dev}/forwarding"))
        .expect("forwarding sysctl")
        .trim()
        .to_owned()
}

/// The relayed frame of `f` with next-hop MAC `dmac` (else the reference's).
fn with_dmac(mut reference: Vec<u8>, dmac: [u8; 6]) -> Vec<u8> {
    reference[..6].copy_from_slice(&dmac);
    reference
}

/// FIB lookups through `lo` (forwarding on there only) resolve the veth's routes and
/// neighbours; with forwarding off everywhere the frame passes up (FWD_DISABLED); the
/// next-hop cache serves hits without a lookup until its TTL, then looks up again
/// (a changed neighbour is seen, a removed one makes the frame pass up).
#[test]
fn fib_through_lo_and_next_hop_cache() {
    if !privileged() {
        return;
    }
    let ns = Netns::create("n");
    let mut x = XdpTestRun::load(&[LISTEN_PORT]).expect("load the XDP program");
    let _in = ns.enter();
    let ifindex = v0_ifindex();
    // SAFETY: a NUL-terminated name; looked up in this thread's (new) namespace.
    assert_eq!(unsafe { libc::if_nametoindex(c"lo".as_ptr()) }, LO_IFINDEX);
    for v6 in [false, true] {
        assert_eq!(forwarding("v0", v6), "0", "no forwarding on the veth");
        assert_eq!(forwarding("lo", v6), "1", "forwarding on lo");
    }
    let mut r = Reference::new();
    let flags = rc::SETTING_ENABLED | rc::SETTING_DATA_INDICATIONS | rc::SETTING_SEND_INDICATIONS;
    let mut allocs = Vec::new();
    for (v6, n) in [(false, 1u32), (true, 2)] {
        let f = fam(v6);
        let tuple = FiveTuple {
            client: SocketAddr::new(f.client, CLIENT_PORT + n as u16),
            server: SocketAddr::new(f.listen, LISTEN_PORT),
            transport: Transport::Udp,
        };
        let peer = SocketAddr::new(f.peer, PEER_PORT);
        let a = r.allocate(tuple, v6, peer, (n * 16) as u8);
        Rules { x: &mut x }.install(&a, n * 8);
        allocs.push((v6, a));
    }
    let msg = channel_data(100, 0, 7);
    let fib_passed = |x: &XdpTestRun| counters(x)[counter::TURN_FIB_PASSED as usize];

    for (v6, a) in &allocs {
        let tag = fam_name(*v6);
        let f = frame(MAC_CLIENT, a.tuple.client, a.tuple.server, &msg, 0);
        let reference = ref_to_peer(&mut r, a, &msg, 0, v4f(&f, false)).expect("relays");

        // Through lo, no cache: relayed with the veth's neighbour.
        Rules { x: &mut x }.settings_with(flags, 0, LO_IFINDEX);
        assert_relayed(&run(&x, ifindex, &f), &reference, &format!("{tag}: via lo"));
        // Through the ingress veth (forwarding off there): FWD_DISABLED → passes up.
        Rules { x: &mut x }.settings_with(flags, 0, 0);
        let before = fib_passed(&x);
        assert_passed(&run(&x, ifindex, &f), &f, &format!("{tag}: via v0"));
        assert_eq!(
            fib_passed(&x),
            before + 1,
            "{tag}: counted as TURN_FIB_PASSED"
        );
        // Forwarding off everywhere: passes up through lo too.
        let fam_s = if *v6 { "ipv6" } else { "ipv4" };
        sysctl(&format!("net.{fam_s}.conf.lo.forwarding=0"));
        Rules { x: &mut x }.settings_with(flags, 0, LO_IFINDEX);
        assert_passed(
            &run(&x, ifindex, &f),
            &f,
            &format!("{tag}: forwarding off everywhere"),
        );
        assert_eq!(
            fib_passed(&x),
            before + 2,
            "{tag}: counted as TURN_FIB_PASSED"
        );
        sysctl(&format!("net.{fam_s}.conf.lo.forwarding=1"));

        // Cache: a miss stores, a hit ignores a changed neighbour until the TTL passes.
        let peer_ip = a.peer.ip().to_string();
        let ttl_ms = 300u32;
        Rules { x: &mut x }.settings_with(flags, ttl_ms, LO_IFINDEX);
        assert_relayed(&run(&x, ifindex, &f), &reference, &format!("{tag}: miss"));
        let new_mac = [0x02, 0, 0, 0, 0, 0xb2];
        set_neighbour(a.peer.ip(), "02:00:00:00:00:b2");
        let t0 = Instant::now();
        let out = run(&x, ifindex, &f);
        assert!(
            t0.elapsed().as_millis() < u128::from(ttl_ms),
            "{tag}: the hit ran within the TTL"
        );
        assert_relayed(&out, &reference, &format!("{tag}: cache hit (old MAC)"));
        std::thread::sleep(std::time::Duration::from_millis(u64::from(ttl_ms) + 50));
        assert_relayed(
            &run(&x, ifindex, &f),
            &with_dmac(reference.clone(), new_mac),
            &format!("{tag}: expired entry looked up again (new MAC)"),
        );
        // Neighbour removed: still served until the TTL, then passes up.
        ip(&["neigh", "del", &peer_ip, "dev", "v0"]);
        let before = fib_passed(&x);
        let t0 = Instant::now();
        let out = run(&x, ifindex, &f);
        assert!(
            t0.elapsed().as_millis() < u128::from(ttl_ms),
            "{tag}: within the TTL"
        );
        assert_relayed(
            &out,
            &with_dmac(reference.clone(), new_mac),
            &format!("{tag}: removed neighbour, cached"),
        );
        std::thread::sleep(std::time::Duration::from_millis(u64::from(ttl_ms) + 50));
        assert_passed(
            &run(&x, ifindex, &f),
            &f,
            &format!("{tag}: removed neighbour, after the TTL"),
        );
        assert_eq!(
            fib_passed(&x),
            before + 1,
            "{tag}: counted as TURN_FIB_PASSED"
        );
        set_neighbour(a.peer.ip(), "02:00:00:00:00:b1");
        // Without a cache every frame looks up: a change is seen at once.
        Rules { x: &mut x }.settings_with(flags, 0, LO_IFINDEX);
        assert_relayed(
            &run(&x, ifindex, &f),
            &reference,
            &format!("{tag}: no cache"),
        );
    }
}

/// `ip [prefix] neigh <verb> <addr> lladdr <mac> dev v0 nud permanent`.
fn neighbour(prefix: &[&str], verb: &str, addr: &str, mac: &str) {
    let mut args = prefix.to_vec();
    args.extend([
        "neigh",
        verb,
        addr,
        "lladdr",
        mac,
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ip(&args);
}

/// Sets the permanent neighbour entry of `addr` on v0 (inside the namespace).
fn set_neighbour(addr: IpAddr, mac: &str) {
    neighbour(&[], "replace", &addr.to_string(), mac);
}

/// Pins the calling thread to CPU 0: per-CPU map entries are then the ones it sees.
fn pin_to_cpu0() {
    // SAFETY: cpu_set_t is plain data (all-zero is an empty set); CPU 0 always exists;
    // sched_setaffinity(0, ..) changes only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin the test thread to CPU 0"
        );
    }
}

/// Map `name` of the loaded program as the aya map type the caller names.
fn map_as<'a, T>(x: &'a mut XdpTestRun, name: &str) -> T
where
    T: TryFrom<&'a mut aya::maps::Map>,
    T::Error: std::fmt::Debug,
{
    let map = x
        .ebpf_mut()
        .map_mut(name)
        .unwrap_or_else(|| panic!("no map {name}"));
    T::try_from(map).unwrap_or_else(|e| panic!("map {name} has another type: {e:?}"))
}

/// With `SETTING_EGRESS_CHECKED`, a relayed frame leaves only by an interface in
/// TURN_EGRESS (the daemon's attached ones): one whose next hop is out of any other is
/// passed up unchanged, counted as TURN_FIB_PASSED, for the stack to send (an XDP
/// redirect to, say, a VLAN or bridge device would lose it). Without the setting, as
/// before, any interface the FIB names.
#[test]
fn relayed_frames_leave_only_by_the_interfaces_in_turn_egress() {
    if !privileged() {
        return;
    }
    let mut loaded = loaded_with("e", ALL_TURN);
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    let mut r = Reference::new();
    let (cf, pf) = (fam(false), fam(false));
    let tuple = FiveTuple {
        client: SocketAddr::new(cf.client, CLIENT_PORT),
        server: SocketAddr::new(cf.listen, LISTEN_PORT),
        transport: Transport::Udp,
    };
    let a = r.allocate(tuple, false, SocketAddr::new(pf.peer, PEER_PORT), 16);
    Rules { x: &mut *x }.install(&a, 8);
    let msg = channel_data(40, 0, 1);
    let f = frame(MAC_CLIENT, tuple.client, tuple.server, &msg, 0);
    let reference = ref_to_peer(&mut r, &a, &msg, 0, v4f(&f, false)).expect("userspace relays");
    let set_egress = |x: &mut XdpTestRun, ifindexes: &[u32]| {
        let mut m: HashMap<_, u32, u32> = map_as(x, rc::maps::EGRESS);
        let old: Vec<u32> = m.keys().map(|k| k.expect("key")).collect();
        for k in old {
            m.remove(&k).expect("remove");
        }
        for &i in ifindexes {
            m.insert(i, 1, 0).expect("insert");
        }
    };
    // No next-hop cache: every frame asks the FIB, and meets the check.
    let checked = ALL_TURN | rc::SETTING_EGRESS_CHECKED;
    Rules { x: &mut *x }.settings_with(checked, 0, LO_IFINDEX);
    for (egress, relayed, what) in [
        (vec![], false, "no interface allowed"),
        (
            vec![LO_IFINDEX, ifindex + 100],
            false,
            "other interfaces allowed",
        ),
        (vec![ifindex], true, "its interface allowed"),
        (
            vec![LO_IFINDEX, ifindex],
            true,
            "its interface among others",
        ),
    ] {
        set_egress(x, &egress);
        let fib_before = counters(x)[counter::TURN_FIB_PASSED as usize];
        let out = run(x, ifindex, &f);
        if relayed {
            assert_relayed(&out, &reference, what);
        } else {
            assert_passed(&out, &f, what);
            assert_eq!(
                counters(x)[counter::TURN_FIB_PASSED as usize],
                fib_before + 1,
                "{what}: counted as TURN_FIB_PASSED"
            );
        }
    }
    // Unchecked, the set is not read.
    set_egress(x, &[]);
    Rules { x: &mut *x }.settings_with(ALL_TURN, 0, LO_IFINDEX);
    assert_relayed(&run(x, ifindex, &f), &reference, "egress not checked");
}

/// Empties TURN_NEXT_HOPS (the shared cache behind the per-CPU slots).
fn clear_next_hops(x: &mut XdpTestRun) {
    let mut m: HashMap<_, rc::NextHopKey, rc::NextHop> = map_as(x, rc::maps::NEXT_HOPS);
    let keys: Vec<rc::NextHopKey> = m.keys().map(|k| k.expect("key")).collect();
    for k in keys {
        m.remove(&k).expect("remove next hop");
    }
}

/// CPU 0's TURN_HOP_SLOTS slot `idx`.
fn hop_slot(x: &mut XdpTestRun, idx: u32) -> rc::HopSlot {
    let m: PerCpuArray<_, rc::HopSlot> = map_as(x, rc::maps::HOP_SLOTS);
    m.get(&idx, 0).expect("read slot")[0]
}

/// The per-CPU next-hop slots: a rule's frames are served from its slot (even with
/// TURN_NEXT_HOPS emptied and the neighbour changed, within the TTL), and two rules
/// whose statistics indices share a slot, towards peers with different MACs, each get
/// their own next hop every time (the slot's key decides, not its index).
#[test]
fn hop_slots_serve_each_rule_its_own_next_hop() {
    if !privileged() {
        return;
    }
    pin_to_cpu0();
    let ns = Netns::create("s");
    let mut x = XdpTestRun::load(&[LISTEN_PORT]).expect("load the XDP program");
    let _in = ns.enter();
    let ifindex = v0_ifindex();
    let mac2 = [0x02, 0, 0, 0, 0, 0xb2];
    let mac3 = [0x02, 0, 0, 0, 0, 0xb3];
    let flags = rc::SETTING_ENABLED;
    Rules { x: &mut x }.settings_with(flags, 60_000, LO_IFINDEX);
    let mut r = Reference::new();
    for (is_v6, n) in [(false, 1u16), (true, 3)] {
        let tag = fam_name(is_v6);
        let f = fam(is_v6);
        let peer2_ip = if is_v6 { v6(0x210) } else { v4(210) };
        set_neighbour(peer2_ip, "02:00:00:00:00:b2");
        let tuple = |k: u16| FiveTuple {
            client: SocketAddr::new(f.client, CLIENT_PORT + k),
            server: SocketAddr::new(f.listen, LISTEN_PORT),
            transport: Transport::Udp,
        };
        let a = r.allocate(
            tuple(n),
            is_v6,
            SocketAddr::new(f.peer, PEER_PORT),
            40 + n as u8,
        );
        let b = r.allocate(
            tuple(n + 1),
            is_v6,
            SocketAddr::new(peer2_ip, PEER_PORT),
            80 + n as u8,
        );
        // Channel rules at statistics indices `base` and `base + HOP_SLOTS`: one slot.
        let base = 16 * u32::from(n);
        Rules { x: &mut x }.install(&a, base);
        Rules { x: &mut x }.install(&b, base + rc::HOP_SLOTS);
        let msg = channel_data(60, 0, 9);
        let fa = frame(MAC_CLIENT, a.tuple.client, a.tuple.server, &msg, 0);
        let fb = frame(MAC_CLIENT, b.tuple.client, b.tuple.server, &msg, 0);
        let ra = ref_to_peer(&mut r, &a, &msg, 0, v4f(&fa, false)).expect("relays");
        let rb = with_dmac(
            ref_to_peer(&mut r, &b, &msg, 0, v4f(&fb, false)).expect("relays"),
            mac2,
        );
        for i in 0..3 {
            assert_relayed(&run(&x, ifindex, &fa), &ra, &format!("{tag}: a, turn {i}"));
            assert_relayed(&run(&x, ifindex, &fb), &rb, &format!("{tag}: b, turn {i}"));
        }
        let slot = hop_slot(&mut x, base);
        assert_eq!(
            slot.key.dst,
            key_addr(peer2_ip),
            "{tag}: b's hop in the slot"
        );
        assert_eq!(slot.hop.dmac, mac2, "{tag}: b's MAC in the slot");

        // Served from the slot: b's frames keep the slot's MAC with TURN_NEXT_HOPS
        // emptied and the neighbour changed (a lookup would see the new MAC).
        set_neighbour(peer2_ip, "02:00:00:00:00:b3");
        clear_next_hops(&mut x);
        assert_relayed(
            &run(&x, ifindex, &fb),
            &rb,
            &format!("{tag}: b from its slot"),
        );
        // a takes the slot over (a lookup: TURN_NEXT_HOPS is empty), then b's next frame
        // finds a's key there and looks up again: the new MAC.
        assert_relayed(&run(&x, ifindex, &fa), &ra, &format!("{tag}: a looked up"));
        assert_eq!(
            hop_slot(&mut x, base).key.dst,
            key_addr(f.peer),
            "{tag}: a's slot"
        );
        assert_relayed(
            &run(&x, ifindex, &fb),
            &with_dmac(rb.clone(), mac3),
            &format!("{tag}: b looked up again (new MAC)"),
        );
        // With the cache off (TTL 0) neither the slot nor TURN_NEXT_HOPS is used.
        set_neighbour(peer2_ip, "02:00:00:00:00:b2");
        Rules { x: &mut x }.settings_with(flags, 0, LO_IFINDEX);
        assert_relayed(&run(&x, ifindex, &fb), &rb, &format!("{tag}: b, no cache"));
        Rules { x: &mut x }.settings_with(flags, 60_000, LO_IFINDEX);
    }
}

/// Measurements for the report: verified instructions and ns per frame of each case.
#[test]
fn turn_fast_path_cost() {
    if !privileged() {
        return;
    }
    let mut loaded = loaded_with("c", ALL_TURN);
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    let mut r = Reference::new();
    let mut cases = Vec::new();
    for (v6, n) in [(false, 1u32), (true, 2)] {
        let f = fam(v6);
        let tuple = FiveTuple {
            client: SocketAddr::new(f.client, CLIENT_PORT),
            server: SocketAddr::new(f.listen, LISTEN_PORT),
            transport: Transport::Udp,
        };
        let peer = SocketAddr::new(f.peer, PEER_PORT);
        let a = r.allocate(tuple, v6, peer, (n * 16) as u8);
        Rules { x: &mut *x }.install(&a, n * 8);
        let name = fam_name(v6);
        cases.push((
            format!("ChannelData→peer {name} (172 B)"),
            frame(
                MAC_CLIENT,
                tuple.client,
                tuple.server,
                &channel_data(172, 0, 1),
                0,
            ),
            XdpAction::Tx,
        ));
        cases.push((
            format!("peer→ChannelData {name} (172 B)"),
            frame(MAC_PEER, peer, a.relay, &data(172, 1), 0),
            XdpAction::Tx,
        ));
        cases.push((
            format!("peer→Data indication {name} (172 B)"),
            frame(
                MAC_PEER,
                SocketAddr::new(f.peer, PEER_PORT + 1),
                a.relay,
                &data(172, 1),
                0,
            ),
            XdpAction::Tx,
        ));
        cases.push((
            format!("Send indication→peer {name} (172 B)"),
            frame(
                MAC_CLIENT,
                tuple.client,
                tuple.server,
                &send_indication(peer, &data(172, 1)),
                0,
            ),
            XdpAction::Tx,
        ));
        let unresolved = SocketAddr::new(f.unresolved, PEER_PORT);
        Rules { x: &mut *x }.channel(&a, 0x4003, unresolved, monotonic_ns() + 60_000_000_000, 7);
        let mut cd = channel_data(172, 0, 1);
        cd[1] = 0x03;
        cases.push((
            format!("pass (rule, FIB: no neighbour) {name}"),
            frame(MAC_CLIENT, tuple.client, tuple.server, &cd, 0),
            XdpAction::Pass,
        ));
        cases.push((
            format!("pass (no rule) {name}"),
            frame(
                MAC_PEER,
                SocketAddr::new(f.stranger, PEER_PORT),
                a.relay,
                &data(172, 1),
                0,
            ),
            XdpAction::Pass,
        ));
    }
    eprintln!(
        "relay_xdp: verified instructions {:?}, translated {:?}",
        x.verified_instructions(),
        x.translated_instructions()
    );
    for ttl in [0u32, 1000] {
        Rules { x: &mut *x }.settings_with(
            rc::SETTING_ENABLED | rc::SETTING_DATA_INDICATIONS | rc::SETTING_SEND_INDICATIONS,
            ttl,
            LO_IFINDEX,
        );
        eprintln!("-- next_hop_ttl_ms = {ttl} (FIB through lo)");
        time_cases(x, ifindex, &cases);
    }
}

fn time_cases(x: &XdpTestRun, ifindex: u32, cases: &[(String, Vec<u8>, XdpAction)]) {
    for (name, f, want) in cases {
        assert_eq!(run(x, ifindex, f).action, *want, "{name}");
        let d = x
            .mean_single_run_on(f, ifindex, 20_000)
            .expect("timed runs");
        eprintln!(
            "{name}: {} ns/frame (mean of 20000 single runs, timer included)",
            d.as_nanos()
        );
        if *want == XdpAction::Pass {
            // A passed frame is left alone, so one call can repeat it.
            let (d, _) = x.bench(f, 1_000_000).expect("repeat run");
            eprintln!(
                "{name}: {} ns/frame (repeat 1000000 in one call)",
                d.as_nanos()
            );
        }
    }
}

/// A namespace of its own, entered, with the program loaded and TURN relaying on: where
/// the tests of the tables against the real program start. Fields drop in order: the
/// namespace is left, then the program unloaded, then the namespace deleted.
struct Loaded {
    _in: Entered,
    x: XdpTestRun,
    ifindex: u32,
    _ns: Netns,
}

/// `tag` names the namespace: one per test (tests run in parallel in one process).
fn loaded_with_turn_on(tag: &str) -> Loaded {
    loaded_with(tag, rc::SETTING_ENABLED)
}

/// Every kernel TURN case on: channels, Data indications and Send indications.
const ALL_TURN: u32 =
    rc::SETTING_ENABLED | rc::SETTING_DATA_INDICATIONS | rc::SETTING_SEND_INDICATIONS;

/// [`loaded_with_turn_on`] with the settings `flags`.
fn loaded_with(tag: &str, flags: u32) -> Loaded {
    let ns = Netns::create(tag);
    let mut x = XdpTestRun::load(&[LISTEN_PORT]).expect("load the XDP program");
    let entered = ns.enter();
    let ifindex = v0_ifindex();
    Rules { x: &mut x }.settings(flags);
    Loaded {
        _in: entered,
        x,
        ifindex,
        _ns: ns,
    }
}

/// The daemon's record of which keys its rule hash maps hold (so that it skips deleting
/// keys they do not hold) against the real maps: a rule an older daemon left under the
/// wide key is known from the moment the maps are taken, and goes when the daemon writes
/// that channel into its table; removing the channel then leaves the program no rule to
/// relay by. An IPv6 client's rule, which lives in a hash map, is known and removed too.
#[test]
fn the_daemon_knows_which_rules_its_hash_maps_hold() {
    if !privileged() {
        return;
    }
    use relay::xdp::rules::TurnMaps;
    let mut loaded = loaded_with_turn_on("k");
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    // A channel of a client of `f`'s family to its peer (no userspace allocation needed:
    // the rules are written by hand).
    let alloc = |f: &Family, port: u16| Alloc {
        tuple: FiveTuple {
            client: SocketAddr::new(f.client, port),
            server: SocketAddr::new(f.listen, LISTEN_PORT),
            transport: Transport::Udp,
        },
        handle: 0,
        relay: SocketAddr::new(f.relay, port + 10_000),
        peer: SocketAddr::new(f.peer, PEER_PORT),
    };
    let (v4f, v6f) = (fam(false), fam(true));
    let a = alloc(&v4f, CLIENT_PORT + 7);
    let exp = monotonic_ns() + 60_000_000_000;
    let (k, v) = channel_rule(&a, CHANNEL, a.peer, exp, 3);
    Rules { x }.channel_left_wide(&a, CHANNEL, a.peer, 3);
    // What the program does with ChannelData from `a`'s client.
    let action = |x: &XdpTestRun, a: &Alloc| {
        let f = frame(
            MAC_CLIENT,
            a.tuple.client,
            a.tuple.server,
            &channel_data(10, 0, 1),
            0,
        );
        run(x, ifindex, &f).action
    };
    assert_eq!(action(x, &a), XdpAction::Tx, "the left rule relays");

    let maps = TurnMaps::take(x.ebpf_mut()).expect("the TURN maps");
    assert_eq!(
        maps.hash_map_keys(),
        [Some(1), Some(0), Some(0), Some(0)],
        "the left rule is known"
    );
    maps.insert_channel(&k, &v).expect("the channel rule");
    assert_eq!(
        maps.hash_map_keys(),
        [Some(0), Some(0), Some(0), Some(0)],
        "written into the table, its wide copy deleted"
    );
    assert_eq!(action(x, &a), XdpAction::Tx, "the table relays");
    assert!(maps.remove_channel(&k).expect("remove"));
    assert_eq!(
        action(x, &a),
        XdpAction::Pass,
        "no copy left anywhere for the program to relay by"
    );

    let a6 = alloc(&v6f, CLIENT_PORT + 8);
    let (k6, v6rule) = channel_rule(&a6, CHANNEL, a6.peer, exp, 4);
    maps.insert_channel(&k6, &v6rule)
        .expect("the IPv6 channel rule");
    assert_eq!(
        maps.hash_map_keys()[0],
        Some(1),
        "an IPv6 rule is in TURN_CHANNELS"
    );
    assert_eq!(action(x, &a6), XdpAction::Tx, "the IPv6 rule relays");
    assert!(maps.remove_channel(&k6).expect("remove"));
    assert_eq!(maps.hash_map_keys()[0], Some(0));
    assert_eq!(action(x, &a6), XdpAction::Pass, "and is gone");
    assert!(
        !maps.remove_channel(&k6).expect("a second remove"),
        "nothing left to remove"
    );
}

/// The channel table's seqlock against the real program: while another thread rewrites
/// a slot back and forth between two rules as fast as it can, every frame the program
/// relays is exactly one rule's output (never addresses of one and ports of the other),
/// or passes up unchanged (a slot caught mid-write). Bounded: 40 000 runs or 20 s.
#[test]
fn channel_table_slots_are_never_read_half_written() {
    if !privileged() {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut loaded = loaded_with_turn_on("q");
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    let client = SocketAddr::new(v4(100), CLIENT_PORT + 100);
    let listen = SocketAddr::new(v4(1), LISTEN_PORT);
    let k = channel_key(client, listen, CHANNEL).v4().expect("IPv4");
    // Two rules differing in every word the program reads.
    let far = monotonic_ns() + 600_000_000_000;
    let rule = |relay: u8, peer: u8, port: u16, idx: u32| rc::ChannelRule {
        expires_ns: far + u64::from(idx),
        relay_addr: rc::mapped_v4([10, 77, 0, relay]),
        peer_addr: rc::mapped_v4([10, 77, 0, peer]),
        relay_port: rc::wire(50_000 + port),
        peer_port: rc::wire(7_000 + port),
        flags: 0,
        _pad: 0,
        stats_idx: idx,
        alloc_idx: rc::NO_BUDGET,
    };
    let (a, b) = (rule(2, 200, 0, 1), rule(1, 100, 2, 2));
    let f = frame(MAC_CLIENT, client, listen, &channel_data(40, 0, 7), 0);
    let mut table = Rules { x }.table();
    let mut expect = Vec::new();
    for r in [&a, &b] {
        assert!(table.put(&k, r), "a free slot");
        let out = run(x, ifindex, &f);
        assert_eq!(out.action, XdpAction::Tx, "the rule relays");
        expect.push(out.frame);
    }
    assert_ne!(expect[0], expect[1]);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + std::time::Duration::from_secs(25);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for r in [&a, &b] {
                    assert!(table.put(&k, r));
                }
                writes.fetch_add(2, Ordering::Relaxed);
            }
        })
    };
    let (mut seen, mut passed) = ([0u32; 2], 0u32);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    for i in 0..40_000 {
        if i % 1000 == 0 && Instant::now() > deadline {
            break;
        }
        let out = run(x, ifindex, &f);
        match out.action {
            XdpAction::Pass => {
                assert_eq!(out.frame, f, "a passed frame is unchanged");
                passed += 1;
            }
            XdpAction::Tx => match expect.iter().position(|e| *e == out.frame) {
                Some(which) => seen[which] += 1,
                None => {
                    stop.store(true, Ordering::Relaxed);
                    panic!(
                        "run {i}: a frame of neither rule (a torn slot):\n{:02x?}\nA {:02x?}\nB {:02x?}",
                        &out.frame[..60],
                        &expect[0][..60],
                        &expect[1][..60]
                    );
                }
            },
            other => panic!("run {i}: {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    eprintln!(
        "rule A {} times, rule B {}, passed up {passed}, {} slot writes",
        seen[0],
        seen[1],
        writes.load(Ordering::Relaxed)
    );
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both rules seen: the writer raced the reader"
    );
}

/// Removed rules' slots against the real program: three channel rules whose keys share a
/// home slot fill three consecutive slots; once the first is removed, the other two are
/// still relayed from the table exactly as before (its slot is vacated, so the program's
/// probe, which stops at an empty slot, goes on past it), and the removed one passes up
/// unchanged. Once all are gone, every frame passes up.
#[test]
fn rules_past_a_removed_one_are_still_relayed_from_the_table() {
    if !privileged() {
        return;
    }
    let mut loaded = loaded_with_turn_on("v");
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    let listen = SocketAddr::new(v4(1), LISTEN_PORT);
    let key = |port: u16| {
        channel_key(SocketAddr::new(v4(100), port), listen, CHANNEL)
            .v4()
            .expect("IPv4")
    };
    let mut table = Rules { x }.table();
    let home = |port: u16| {
        let (w0, w1) = rc::channel_key_words(&key(port));
        rc::slot_home(w0, w1, &table.info())
    };
    let h = home(CLIENT_PORT);
    let ports: Vec<u16> = (CLIENT_PORT..CLIENT_PORT + 20_000)
        .filter(|&p| home(p) == h)
        .take(3)
        .collect();
    assert_eq!(ports.len(), 3, "three keys of one home");
    let far = monotonic_ns() + 600_000_000_000;
    let rule = |i: u16| rc::ChannelRule {
        expires_ns: far,
        relay_addr: rc::mapped_v4([10, 77, 0, 2]),
        peer_addr: rc::mapped_v4([10, 77, 0, 100]),
        relay_port: rc::wire(50_000 + i),
        peer_port: rc::wire(7_000 + i),
        flags: 0,
        _pad: 0,
        stats_idx: u32::from(i) + 1,
        alloc_idx: rc::NO_BUDGET,
    };
    let frames: Vec<Vec<u8>> = ports
        .iter()
        .map(|&p| {
            let client = SocketAddr::new(v4(100), p);
            frame(MAC_CLIENT, client, listen, &channel_data(40, 0, 7), 0)
        })
        .collect();
    let mut relayed = Vec::new();
    for (i, &p) in ports.iter().enumerate() {
        assert!(table.put(&key(p), &rule(i as u16)), "a free slot");
        let out = run(x, ifindex, &frames[i]);
        assert_eq!(out.action, XdpAction::Tx, "rule {i} relays");
        relayed.push(out.frame);
    }
    assert!(table.remove(&key(ports[0])));
    for i in 1..3 {
        let out = run(x, ifindex, &frames[i]);
        assert_eq!(out.action, XdpAction::Tx, "rule {i} past the removed one");
        assert_eq!(out.frame, relayed[i], "rule {i} relayed as before");
    }
    let out = run(x, ifindex, &frames[0]);
    assert_eq!(out.action, XdpAction::Pass, "the removed rule's frame");
    assert_eq!(out.frame, frames[0], "passed up unchanged");
    for &p in &ports[1..] {
        assert!(table.remove(&key(p)));
    }
    assert_eq!((table.live(), table.vacated()), (0, 0), "all emptied");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(run(x, ifindex, f).action, XdpAction::Pass, "frame {i}");
    }
}

/// Tables that grow and shrink with their rules (`TurnMaps` resizing them as the daemon
/// does) against the real program: while another thread adds and removes enough rules
/// to move both tables between 1 024 and 2 048 slots and back, a frame of a rule that
/// stays (client → peer through the channel table, peer → client through the peer
/// table) is relayed exactly as before every single time: never passed up, never a Data
/// indication. Bounded: 6 cycles or 30 s for the writer, 400 000 runs for the reader.
#[test]
fn resized_tables_never_hide_a_rule_from_the_program() {
    if !privileged() {
        return;
    }
    use relay::xdp::rules::TurnMaps;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut loaded = loaded_with_turn_on("r");
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    let maps = Arc::new(TurnMaps::take(x.ebpf_mut()).expect("the TURN maps"));
    assert_eq!(
        maps.table_sizes(),
        [(1024, 0), (1024, 0)],
        "fresh tables start small"
    );
    let client = SocketAddr::new(v4(100), CLIENT_PORT + 100);
    let listen = SocketAddr::new(v4(1), LISTEN_PORT);
    let relayed = SocketAddr::new(v4(2), 50_000);
    let peer = SocketAddr::new(v4(200), PEER_PORT);
    let far = monotonic_ns() + 600_000_000_000;
    let key_at = move |port: u16| channel_key(SocketAddr::new(client.ip(), port), listen, CHANNEL);
    let channel = move |idx: u32| rc::ChannelRule {
        expires_ns: far,
        relay_addr: key_addr(relayed.ip()),
        peer_addr: key_addr(peer.ip()),
        relay_port: rc::wire(relayed.port()),
        peer_port: rc::wire(peer.port()),
        flags: 0,
        _pad: 0,
        stats_idx: idx,
        alloc_idx: rc::NO_BUDGET,
    };
    let peer_key = move |relay_port: u16| rc::PeerKey {
        peer_addr: key_addr(peer.ip()),
        relay_addr: key_addr(relayed.ip()),
        peer_port: rc::wire(peer.port()),
        relay_port: rc::wire(relay_port),
    };
    let peer_rule = move |idx: u32| rc::PeerRule {
        expires_ns: far,
        client_addr: key_addr(client.ip()),
        server_addr: key_addr(listen.ip()),
        client_port: rc::wire(client.port()),
        server_port: rc::wire(listen.port()),
        channel: rc::wire(CHANNEL),
        flags: 0,
        stats_idx: idx,
        alloc_idx: rc::NO_BUDGET,
    };
    maps.insert_channel(&key_at(client.port()), &channel(1))
        .expect("the channel rule");
    maps.insert_peer(&peer_key(relayed.port()), &peer_rule(2))
        .expect("the peer rule");
    let to_peer = frame(MAC_CLIENT, client, listen, &channel_data(40, 0, 7), 0);
    let to_client = frame(MAC_PEER, peer, relayed, &data(40, 9), 0);
    let expect: Vec<Vec<u8>> = [&to_peer, &to_client]
        .iter()
        .map(|f| {
            let out = run(x, ifindex, f);
            assert_eq!(out.action, XdpAction::Tx, "the rule relays");
            out.frame
        })
        .collect();
    let passed_before = counters(x)[counter::TURN_NO_RULE_PASSED as usize];

    let stop = Arc::new(AtomicBool::new(false));
    let resizes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, resizes, maps) = (stop.clone(), resizes.clone(), maps.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            // 800 more rules each: past 11/16 of 1 024 slots (a rebuild at 2 048), then
            // back below 1/8 of 2 048 (a rebuild at 1 024).
            for cycle in 0..6u32 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                for i in 0..800u16 {
                    let idx = 10 + u32::from(i);
                    maps.insert_channel(&key_at(20_000 + i), &channel(idx))
                        .expect("filler channel rule");
                    maps.insert_peer(&peer_key(51_000 + i), &peer_rule(idx + 1000))
                        .expect("filler peer rule");
                }
                let grown = maps.table_sizes();
                assert_eq!(
                    (grown[0].0, grown[1].0),
                    (2048, 2048),
                    "cycle {cycle}: both tables grew"
                );
                for i in 0..800u16 {
                    assert!(maps.remove_channel(&key_at(20_000 + i)).expect("remove"));
                    assert!(maps.remove_peer(&peer_key(51_000 + i)).expect("remove"));
                }
                assert_eq!(
                    maps.table_sizes(),
                    [(1024, 1), (1024, 1)],
                    "cycle {cycle}: both tables shrank back to the one rule each"
                );
                resizes.fetch_add(4, Ordering::Relaxed);
            }
        })
    };
    let mut runs = 0u32;
    for i in 0..400_000u32 {
        if writer.is_finished() {
            break;
        }
        let which = (i % 2) as usize;
        let out = run(x, ifindex, if which == 0 { &to_peer } else { &to_client });
        if out.action != XdpAction::Tx || out.frame != expect[which] {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "run {i} ({}): {:?}, a frame other than the rule's own",
                ["client → peer", "peer → client"][which],
                out.action
            );
        }
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer's own checks");
    let done = resizes.load(Ordering::Relaxed);
    eprintln!("{runs} runs during {done} table resizes");
    assert!(done >= 4, "at least one grow-and-shrink cycle ran");
    assert!(runs > 100, "the reader ran while the tables were resized");
    assert_eq!(
        counters(x)[counter::TURN_NO_RULE_PASSED as usize],
        passed_before,
        "no frame passed up for want of its rule"
    );
    // Both rules are back in their tables (not only in the hash maps).
    assert!(maps.peer_in_table(&peer_key(relayed.port())));
}

/// A table that grew or shrank is laid out in another part of its map and the program is
/// told where (`SlotTableInfo::base`): a rule written after the move lives only there,
/// and the program relays by it. (A program that ignored the base would look where the
/// table was, find nothing, and pass the frame up.)
#[test]
fn the_program_reads_a_moved_table_where_it_now_is() {
    if !privileged() {
        return;
    }
    use relay::xdp::rules::TurnMaps;
    let mut loaded = loaded_with_turn_on("b");
    let (x, ifindex) = (&mut loaded.x, loaded.ifindex);
    let maps = TurnMaps::take(x.ebpf_mut()).expect("the TURN maps");
    let listen = SocketAddr::new(v4(1), LISTEN_PORT);
    let peer = SocketAddr::new(v4(200), PEER_PORT);
    let far = monotonic_ns() + 600_000_000_000;
    let alloc = |port: u16| Alloc {
        tuple: FiveTuple {
            client: SocketAddr::new(v4(100), port),
            server: listen,
            transport: Transport::Udp,
        },
        handle: 0,
        relay: SocketAddr::new(v4(2), port + 10_000),
        peer,
    };
    let put = |port: u16, idx: u32| {
        let a = alloc(port);
        let (k, v) = channel_rule(&a, CHANNEL, a.peer, far, idx);
        maps.insert_channel(&k, &v).expect("the channel rule");
        k
    };
    let relayed = |x: &XdpTestRun, port: u16| {
        let a = alloc(port);
        let f = frame(
            MAC_CLIENT,
            a.tuple.client,
            a.tuple.server,
            &channel_data(24, 0, 3),
            0,
        );
        run(x, ifindex, &f).action
    };
    // 800 rules: past 11/16 of 1 024 slots, so the table moved to 2 048 slots elsewhere.
    let fillers: Vec<_> = (0..800u16)
        .map(|i| put(20_000 + i, 10 + u32::from(i)))
        .collect();
    assert_eq!(maps.table_sizes()[0].0, 2048, "the table grew");
    put(CLIENT_PORT, 3);
    assert_eq!(
        relayed(x, CLIENT_PORT),
        XdpAction::Tx,
        "a rule written after the move"
    );
    assert_eq!(relayed(x, 20_123), XdpAction::Tx, "a rule the move carried");
    // And back: the table shrinks to another place again.
    for k in &fillers {
        assert!(maps.remove_channel(k).expect("remove"));
    }
    assert_eq!(maps.table_sizes()[0], (1024, 1), "the table shrank");
    put(CLIENT_PORT + 1, 4);
    assert_eq!(
        relayed(x, CLIENT_PORT + 1),
        XdpAction::Tx,
        "written after the shrink"
    );
    assert_eq!(
        relayed(x, CLIENT_PORT),
        XdpAction::Tx,
        "carried by the shrink"
    );
    assert_eq!(relayed(x, 20_123), XdpAction::Pass, "removed");
}

/// 20 000 channel bindings' rules (a channel rule and its peer rule each) set up into
/// empty tables and removed again, three rounds, then 1 000 on top of 3 000: the tables
/// grow to 32 768 slots by moves and shrink back, every rule found where the kernel
/// looks at each end. Prints what a pair costs the calling worker, on average and at
/// worst (one call that moved a table): the figures in docs/BENCHMARKS.md, "Rule tables
/// that move instead of rebuilding in place".
#[test]
fn rule_tables_grow_to_twenty_thousand_channels_and_back() {
    if !privileged() {
        return;
    }
    use relay::xdp::rules::TurnMaps;
    use std::time::Duration;
    let mut loaded = loaded_with_turn_on("g");
    let maps = TurnMaps::take(loaded.x.ebpf_mut()).expect("the TURN maps");
    let listen = SocketAddr::new(v4(1), LISTEN_PORT);
    let (relayed, peer) = (v4(2), SocketAddr::new(v4(200), PEER_PORT));
    let far = monotonic_ns() + 600_000_000_000;
    // Binding `i`: client 10.0.x.y:(1000 + i % 30 000), relayed port 30 000 + i.
    let client = |i: u32| {
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, (i / 30_000) as u8, 100));
        SocketAddr::new(ip, 1000 + (i % 30_000) as u16)
    };
    let alloc = |i: u32| Alloc {
        tuple: FiveTuple {
            client: client(i),
            server: listen,
            transport: Transport::Udp,
        },
        handle: rc::NO_BUDGET,
        relay: SocketAddr::new(relayed, 30_000 + i as u16),
        peer,
    };
    let rules = |i: u32| {
        let a = alloc(i);
        let (ck, cr) = channel_rule(&a, CHANNEL, peer, far, i);
        let (pk, pr) = peer_rule(&a, peer.port(), CHANNEL, far, i + 30_000);
        (ck, cr, pk, pr)
    };
    let timed = |range: std::ops::Range<u32>, add: bool| {
        let (start, mut worst, n) = (Instant::now(), Duration::ZERO, range.len() as f64);
        for i in range {
            let (ck, cr, pk, pr) = rules(i);
            let t = Instant::now();
            if add {
                maps.insert_channel(&ck, &cr).expect("channel rule");
                maps.insert_peer(&pk, &pr).expect("peer rule");
            } else {
                assert!(maps.remove_channel(&ck).expect("remove"), "channel {i}");
                assert!(maps.remove_peer(&pk).expect("remove"), "peer {i}");
            }
            worst = worst.max(t.elapsed());
        }
        (start.elapsed().as_secs_f64() * 1e6 / n, worst)
    };
    let all_found = |range: std::ops::Range<u32>| {
        range.into_iter().all(|i| {
            let (ck, cr, pk, pr) = rules(i);
            maps.channel(&ck).ok().flatten() == Some(cr)
                && maps.peer(&pk).ok().flatten() == Some(pr)
        })
    };
    for round in 0..3 {
        let (grow, grow_worst) = timed(0..20_000, true);
        let sizes = maps.table_sizes();
        assert_eq!(
            (sizes[0].0, sizes[1].0),
            (32_768, 32_768),
            "both tables grew"
        );
        assert!(all_found(0..20_000), "every rule where the kernel looks");
        let (shrink, shrink_worst) = timed(0..20_000, false);
        assert_eq!(
            maps.table_sizes(),
            [(1024, 0), (1024, 0)],
            "both shrank back"
        );
        timed(0..3_000, true);
        let (add, add_worst) = timed(3_000..4_000, true);
        assert!(all_found(0..4_000));
        let (del, del_worst) = timed(3_000..4_000, false);
        timed(0..3_000, false);
        eprintln!(
            "round {round}: 20 000 pairs into empty tables {grow:.2} µs a pair (worst call \
             {grow_worst:?}), out again {shrink:.2} µs (worst {shrink_worst:?}); 1 000 on top \
             of 3 000: in {add:.2} µs (worst {add_worst:?}), out {del:.2} µs (worst {del_worst:?})"
        );
    }
}
