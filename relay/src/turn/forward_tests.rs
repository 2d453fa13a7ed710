//! The forwarding index against the full relay path: the same random sequences of
//! requests, relayed datagrams and clock steps go to two servers, one with the index and
//! one without (`ForwardIndex::off`), and every datagram they send, every counter and
//! every `relay allocations` row must be equal. Plus the cases the index must refuse.

use std::net::SocketAddr;
use std::time::Duration;

use super::attrs::{self, method};
use super::tests::*;
use super::*;
use crate::policy::Quotas;
use crate::stun::Class;

/// xorshift64*: a fixed, reproducible sequence per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

fn pair_world() -> World {
    let mut cfg = config();
    cfg.nonce_lifetime = Duration::from_secs(100_000_000);
    let mut w = world_with_policy(cfg, Quotas::new(0, 0), own_address_policy());
    // Data indications carry transaction ids from a per-server random seed.
    w.server.txn_seed = [7; 12];
    w
}

/// Both servers' view of everything observable.
fn observed(w: &World) -> (String, Vec<AllocationInfo>) {
    let mut rows: Vec<_> = w.server.allocations(w.now).collect();
    for r in &mut rows {
        r.permissions.sort();
        r.channels.sort();
    }
    rows.sort_by_key(|r| (r.client, r.transport as u8));
    (format!("{:?}", w.server.stats()), rows)
}

/// The relayed handle of `client`'s live allocation in `w` for peers of `v4`'s family.
fn handle_of(w: &World, tuple: &FiveTuple, v4: bool) -> Option<RelayHandle> {
    let row = w
        .server
        .allocations(w.now)
        .find(|r| r.client == tuple.client && r.transport == tuple.transport)?;
    w.ports
        .open
        .iter()
        .find(|(_, a)| row.relayed.contains(a) && a.is_ipv4() == v4)
        .map(|(h, _)| *h)
}

/// What one [`run`] did: datagrams relayed, and whether the packed IPv4 maps and the
/// general maps each held entries in both directions at some step.
struct Ran {
    relayed: usize,
    packed: bool,
    general: bool,
}

fn run(seed: u64, steps: usize) -> Ran {
    let mut rng = Rng(seed | 1);
    let mut with = pair_world();
    let mut without = pair_world();
    without.server.fwd.off = true;
    let udp = udp_tuple();
    let mut tcp = udp_tuple();
    tcp.client.set_port(40001);
    tcp.transport = Transport::Tcp;
    // An IPv6 client: its channels, and an IPv4 client's channels to IPv6 peers, take the
    // general maps; the all-IPv4 ones the packed maps.
    let udp6 = FiveTuple {
        client: "[2001:db8:1::7]:40002".parse().expect("a"),
        server: "[2001:db8::1]:3478".parse().expect("a"),
        transport: Transport::Udp,
    };
    let tuples = [udp, tcp, udp6];
    let mut clients: Vec<[Client; 2]> = tuples
        .iter()
        .map(|t| {
            let c = Client::new(*t, "alice", "wonderland");
            [c.clone(), c]
        })
        .collect();
    let peers: [SocketAddr; 7] = [
        "203.0.113.5:7000".parse().expect("a"),
        "203.0.113.5:7001".parse().expect("a"),
        "203.0.113.6:1".parse().expect("a"),
        "192.0.2.10:50000".parse().expect("a"),
        "192.0.2.10:22".parse().expect("a"),
        "[2001:db8:ffff::5]:7000".parse().expect("a"),
        "[2001:db8:ffff::6]:1".parse().expect("a"),
    ];
    let channels = [0x4000u16, 0x4001, 0x4002];
    // Per client, the last relayed handle for IPv4 and for IPv6 peers.
    let mut handles = [[None::<RelayHandle>; 2]; 3];
    let mut relayed = 0;
    let (mut packed, mut general) = (false, false);
    for step in 0..steps {
        let k = (rng.next() % 3) as usize;
        let op = rng.next() % 100;
        let payload_len = (rng.next() % 40) as usize;
        let payload: Vec<u8> = (0..payload_len).map(|i| (i as u8) ^ (step as u8)).collect();
        for w in [&mut with, &mut without] {
            w.sink.client.clear();
            w.sink.peer.clear();
        }
        // Both sides draw the same values.
        let side_seed = rng.next() | 1;
        let peer = rng.pick(&peers);
        let channel = rng.pick(&channels);
        let pad = rng.next().is_multiple_of(2);
        for (w, side) in [(&mut with, 0usize), (&mut without, 1usize)] {
            let c = &mut clients[k][side];
            let mut r = Rng(side_seed);
            match op {
                0..=2 => w.advance(Duration::from_secs(r.pick(&[1, 60, 299, 300, 301, 599]))),
                // Time passes before the timers run (a busy worker): deadlines must hold
                // on their own.
                3..=4 => {
                    let d = Duration::from_secs(r.pick(&[1, 60, 299, 300, 301]));
                    w.now += d;
                    w.wall += d;
                }
                5..=9 => {
                    if handle_of(w, &c.tuple, true).is_none() {
                        // Both families relayed, so peers of either family are valid.
                        allocate(
                            w,
                            c,
                            &[(attrs::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
                        );
                    }
                }
                10..=17 => {
                    bind(w, c, channel, peer);
                }
                18..=24 => {
                    permit(w, c, peer);
                }
                25..=27 => {
                    let lifetime: u32 = r.pick(&[0, 60, 600, 600, 600]);
                    let req = c.request(
                        method::REFRESH,
                        &[(attrs::LIFETIME, lifetime.to_be_bytes().to_vec())],
                    );
                    w.send(&c.tuple, &req);
                }
                28 => {
                    w.server
                        .kick(&KickTarget::Client(c.tuple.client), &mut w.ports);
                }
                29..=31 => {
                    let ind = send_indication(c, peer, &payload);
                    w.send(&c.tuple, &ind);
                }
                32..=65 => {
                    let tuple = c.tuple;
                    w.send(&tuple, &channel_data(channel, &payload, pad));
                }
                _ => {
                    let f = usize::from(peer.is_ipv6());
                    let h = handle_of(w, &c.tuple, peer.is_ipv4()).or(handles[k][f]);
                    if let Some(h) = h {
                        w.server.on_peer(h, peer, &payload, w.now, &mut w.sink);
                    }
                }
            }
        }
        for (f, v4) in [(0, true), (1, false)] {
            handles[k][f] = handle_of(&with, &tuples[k], v4).or(handles[k][f]);
        }
        assert_eq!(
            with.sink.client, without.sink.client,
            "seed {seed} step {step} op {op}: to clients"
        );
        assert_eq!(
            with.sink.peer, without.sink.peer,
            "seed {seed} step {step} op {op}: to peers"
        );
        relayed += with.sink.peer.len() + with.sink.client.len();
        let (all, v4) = (with.server.fwd.len(), with.server.fwd.len_v4());
        packed |= v4.0 > 0 && v4.1 > 0;
        general |= all.0 > v4.0 && all.1 > v4.1;
        if step % 16 == 0 {
            assert_eq!(
                observed(&with),
                observed(&without),
                "seed {seed} step {step}"
            );
        }
    }
    assert_eq!(
        observed(&with),
        observed(&without),
        "seed {seed} at the end"
    );
    Ran {
        relayed,
        packed,
        general,
    }
}

#[test]
fn the_index_relays_exactly_what_the_full_path_relays() {
    let mut relayed = 0;
    let (mut packed, mut general) = (false, false);
    for seed in [1u64, 0x5eed, 0xdead_beef, 42, 7_777_777] {
        let ran = run(seed, 1500);
        relayed += ran.relayed;
        packed |= ran.packed;
        general |= ran.general;
    }
    // The sequences must actually relay, through both kinds of map, or the comparison
    // proves nothing.
    assert!(relayed > 1000, "only {relayed} datagrams relayed");
    assert!(
        packed && general,
        "packed maps used: {packed}, general: {general}"
    );
}

#[test]
fn the_index_answers_channels_and_leaves_the_rest_to_the_full_path() {
    let mut w = world();
    let (mut c, _, handle) = allocated(&mut w);
    assert_eq!(w.server.fwd.len(), (0, 0));
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4000, peer())),
        Class::SuccessResponse
    );
    assert_eq!(w.server.fwd.len(), (1, 1));
    // A permission alone (Data indications) makes no entry.
    let p2: SocketAddr = "203.0.113.6:1".parse().expect("addr");
    permit(&mut w, &mut c, p2);
    assert_eq!(w.server.fwd.len(), (1, 1));
    // Relayed through the index: counted there, folded on removal.
    for _ in 0..3 {
        w.send(&c.tuple, &channel_data(0x4000, b"abc", false));
    }
    w.server.on_peer(handle, peer(), b"xy", w.now, &mut w.sink);
    let row = w.server.allocations(w.now).next().expect("row");
    assert_eq!((row.packets_to_peer, row.bytes_to_peer), (3, 9));
    assert_eq!((row.packets_to_client, row.bytes_to_client), (1, 2));
    // A refresh rebuilds the entries; the counts stay.
    let req = c.request(method::REFRESH, &[]);
    assert_eq!(class_of(&w.one(&c.tuple, &req)), Class::SuccessResponse);
    assert_eq!(w.server.fwd.len(), (1, 1));
    let row = w.server.allocations(w.now).next().expect("row");
    assert_eq!(row.packets_to_peer, 3);
    // The permission lapses at 300 s while the channel lasts 600 s: the entry is not
    // used past its deadline even before the timer removes it.
    w.now += Duration::from_secs(300);
    w.sink.peer.clear();
    w.send(&c.tuple, &channel_data(0x4000, b"late", false));
    assert!(w.sink.peer.is_empty(), "relayed past the permission");
    w.advance(Duration::ZERO);
    assert_eq!(w.server.fwd.len(), (0, 0));
    // Kicked: gone.
    permit(&mut w, &mut c, peer());
    assert_eq!(w.server.fwd.len(), (1, 1));
    w.server
        .kick(&KickTarget::Client(c.tuple.client), &mut w.ports);
    assert_eq!(w.server.fwd.len(), (0, 0));
}

#[test]
fn no_entries_for_allocations_with_a_quota_or_a_bandwidth_limit() {
    let mut cfg = config();
    cfg.bandwidth_limit = 100_000;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4000, peer());
    assert_eq!(w.server.fwd.len(), (0, 0));
    let mut cfg = config();
    cfg.allocation_byte_quota = 10;
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4000, peer());
    assert_eq!(w.server.fwd.len(), (0, 0));
    w.sink.peer.clear();
    w.send(&c.tuple, &channel_data(0x4000, b"12345678", false));
    w.send(&c.tuple, &channel_data(0x4000, b"12345678", false));
    assert_eq!(w.sink.peer.len(), 1, "the quota holds");
}

#[test]
fn channels_with_an_ipv6_side_take_the_general_maps_and_count_there() {
    let mut w = world();
    let p6: SocketAddr = "[2001:db8:ffff::5]:7".parse().expect("addr");
    // An IPv4 client relaying to an IPv6 peer, then an IPv6 client to both families.
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    let dual = [(attrs::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])];
    let a = allocate(&mut w, &mut c, &dual);
    assert_eq!(class_of(&a), Class::SuccessResponse);
    bind(&mut w, &mut c, 0x4000, peer());
    assert_eq!(w.server.fwd.len_v4(), (1, 1));
    bind(&mut w, &mut c, 0x4001, p6);
    assert_eq!(w.server.fwd.len(), (2, 2));
    assert_eq!(w.server.fwd.len_v4(), (1, 1));
    let mut d = Client::new(udp_tuple(), "bob", "builder");
    d.tuple.client = "[2001:db8:1::7]:40002".parse().expect("addr");
    d.tuple.server = "[2001:db8::1]:3478".parse().expect("addr");
    assert_eq!(
        class_of(&allocate(&mut w, &mut d, &dual)),
        Class::SuccessResponse
    );
    bind(&mut w, &mut d, 0x4000, peer());
    bind(&mut w, &mut d, 0x4001, p6);
    assert_eq!(w.server.fwd.len(), (4, 4));
    assert_eq!(w.server.fwd.len_v4(), (1, 1));
    // Each channel relays both ways through its entry and counts there.
    let handles: Vec<(RelayHandle, SocketAddr)> =
        w.ports.open.iter().map(|(h, a)| (*h, *a)).collect();
    for (tuple, client) in [(c.tuple, &c), (d.tuple, &d)] {
        for (channel, p) in [(0x4000u16, peer()), (0x4001, p6)] {
            w.sink.peer.clear();
            w.send(&tuple, &channel_data(channel, b"abcd", false));
            let (h, to, _) = w.sink.peer.last().cloned().expect("relayed to the peer");
            assert_eq!(to, p, "{} channel {channel:#x}", client.tuple.client);
            assert!(
                handles
                    .iter()
                    .any(|(x, a)| *x == h && a.is_ipv4() == p.is_ipv4())
            );
            w.sink.client.clear();
            w.server.on_peer(h, p, b"xyz", w.now, &mut w.sink);
            let got = w
                .sink
                .client
                .last()
                .cloned()
                .expect("relayed to the client");
            assert_eq!(got.0, tuple);
            assert_eq!(&got.1[..4], &[(channel >> 8) as u8, channel as u8, 0, 3]);
        }
    }
    let counted = |w: &World| {
        for row in w.server.allocations(w.now) {
            assert_eq!(
                (row.packets_to_peer, row.bytes_to_peer),
                (2, 8),
                "{}",
                row.client
            );
            assert_eq!((row.packets_to_client, row.bytes_to_client), (2, 6));
        }
    };
    counted(&w);
    // Through the index, not the full path: one datagram each way on each channel, one
    // channel all IPv4, three with an IPv6 side.
    assert_eq!(w.server.fwd.entry_packets(), (2, 6));
    // A refresh rebuilds the entries, folding their counters first: the counts stay.
    for client in [&mut c, &mut d] {
        let req = client.request(method::REFRESH, &[]);
        assert_eq!(
            class_of(&w.one(&client.tuple, &req)),
            Class::SuccessResponse
        );
    }
    assert_eq!(w.server.fwd.len(), (4, 4));
    counted(&w);
    // Kicks empty both kinds of map.
    for tuple in [c.tuple, d.tuple] {
        w.server
            .kick(&KickTarget::Client(tuple.client), &mut w.ports);
    }
    assert_eq!(w.server.fwd.len(), (0, 0));
}
