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

/// The relayed handle of `client`'s live allocation in `w` (or a stale one).
fn handle_of(w: &World, tuple: &FiveTuple) -> Option<RelayHandle> {
    let row = w
        .server
        .allocations(w.now)
        .find(|r| r.client == tuple.client && r.transport == tuple.transport)?;
    w.ports
        .open
        .iter()
        .find(|(_, a)| row.relayed.contains(a))
        .map(|(h, _)| *h)
}

fn run(seed: u64, steps: usize) -> usize {
    let mut rng = Rng(seed | 1);
    let mut with = pair_world();
    let mut without = pair_world();
    without.server.fwd.off = true;
    let udp = udp_tuple();
    let mut tcp = udp_tuple();
    tcp.client.set_port(40001);
    tcp.transport = Transport::Tcp;
    let tuples = [udp, tcp];
    let mut clients: Vec<[Client; 2]> = tuples
        .iter()
        .map(|t| {
            let c = Client::new(*t, "alice", "wonderland");
            [c.clone(), c]
        })
        .collect();
    let peers: [SocketAddr; 5] = [
        "203.0.113.5:7000".parse().expect("a"),
        "203.0.113.5:7001".parse().expect("a"),
        "203.0.113.6:1".parse().expect("a"),
        "192.0.2.10:50000".parse().expect("a"),
        "192.0.2.10:22".parse().expect("a"),
    ];
    let channels = [0x4000u16, 0x4001, 0x4002];
    let mut handles: [Option<RelayHandle>; 2] = [None, None];
    let mut relayed = 0;
    for step in 0..steps {
        let k = (rng.next() % 2) as usize;
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
                    if handle_of(w, &c.tuple).is_none() {
                        allocate(w, c, &[]);
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
                    let h = handle_of(w, &c.tuple).or(handles[k]);
                    if let Some(h) = h {
                        w.server.on_peer(h, peer, &payload, w.now, &mut w.sink);
                    }
                }
            }
        }
        handles[k] = handle_of(&with, &tuples[k]).or(handles[k]);
        assert_eq!(
            with.sink.client, without.sink.client,
            "seed {seed} step {step} op {op}: to clients"
        );
        assert_eq!(
            with.sink.peer, without.sink.peer,
            "seed {seed} step {step} op {op}: to peers"
        );
        relayed += with.sink.peer.len() + with.sink.client.len();
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
    relayed
}

#[test]
fn the_index_relays_exactly_what_the_full_path_relays() {
    let mut relayed = 0;
    for seed in [1u64, 0x5eed, 0xdead_beef, 42, 7_777_777] {
        relayed += run(seed, 1500);
    }
    // The sequences must actually relay, or the comparison proves nothing.
    assert!(relayed > 1000, "only {relayed} datagrams relayed");
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
