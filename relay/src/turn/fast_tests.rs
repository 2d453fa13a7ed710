//! Unit tests of the fast-path rules the core computes ([`super::fast`]), with a recording
//! [`FastRules`] fake standing in for the BPF maps and the manual clock of the flow tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_common::turn::{
    AllocKey, AllocRule, ChannelKey, ChannelRule, NO_BUDGET, PeerKey, PeerRule, RULE_DONT_FRAGMENT,
    RuleStats,
};

use super::attrs::{self, method};
use super::tests::{
    Client, World, allocate, allocated, bind, class_of, config, error_code, peer, permit,
    udp_tuple, world, world_with,
};
use super::*;
use crate::policy::{PeerPolicy, PolicyConfig, Quotas};
use crate::stun::Class;

/// CLOCK_MONOTONIC of the fake at the world's `t0`.
const T0_NS: u64 = 5_000_000_000_000;
const SEC: u64 = 1_000_000_000;

#[derive(Default, Debug)]
struct Maps {
    channels: HashMap<ChannelKey, ChannelRule>,
    peers: HashMap<PeerKey, PeerRule>,
    allocs: HashMap<AllocKey, AllocRule>,
    /// Kernel counters by stats_idx (what the XDP program would have counted).
    stats: HashMap<u32, RuleStats>,
    stats_used: Vec<u32>,
    stats_free: Vec<u32>,
    next_stats: u32,
    alloc_used: Vec<u32>,
    next_alloc: u32,
    /// Bandwidth rate written per alloc_idx.
    bandwidth: HashMap<u32, u64>,
    /// Every put (for "updated in place" checks).
    puts: usize,
    /// Most channel rules the fake takes (None: no limit), as a full kernel table.
    channel_capacity: Option<usize>,
    /// Counter reads one rule at a time, and range reads.
    single_reads: usize,
    range_reads: usize,
    /// Range reads fail (a kernel without batch lookups that also failed rule by rule).
    range_fails: bool,
}

/// The recording fake.
#[derive(Debug)]
struct Recorder {
    clock: MonoClock,
    maps: Mutex<Maps>,
}

impl Recorder {
    fn new(t0: Instant) -> Arc<Recorder> {
        Arc::new(Recorder {
            clock: MonoClock::new(t0, T0_NS),
            maps: Mutex::new(Maps::default()),
        })
    }

    fn m(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().expect("fake maps")
    }

    /// The single channel rule (asserts there is exactly one).
    fn one_channel(&self) -> (ChannelKey, ChannelRule) {
        let m = self.m();
        assert_eq!(m.channels.len(), 1, "{:?}", m.channels);
        m.channels
            .iter()
            .map(|(k, v)| (*k, *v))
            .next()
            .expect("one")
    }

    fn peer_rules(&self) -> Vec<(PeerKey, PeerRule)> {
        let mut v: Vec<_> = self.m().peers.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|(k, _)| k.peer_port);
        v
    }

    fn counts(&self) -> (usize, usize, usize) {
        let m = self.m();
        (m.channels.len(), m.peers.len(), m.allocs.len())
    }
}

impl FastRules for Recorder {
    fn monotonic_ns(&self, at: Instant) -> u64 {
        self.clock.ns(at)
    }
    fn take_alloc_index(&self, rate: u64) -> Option<u32> {
        let mut m = self.m();
        let i = m.next_alloc;
        m.next_alloc += 1;
        m.alloc_used.push(i);
        m.bandwidth.insert(i, rate);
        Some(i)
    }
    fn release_alloc_index(&self, idx: u32) {
        let mut m = self.m();
        let pos = m.alloc_used.iter().position(|&i| i == idx);
        assert!(pos.is_some(), "alloc_idx {idx} released twice");
        m.alloc_used.retain(|&i| i != idx);
    }
    fn take_stats_index(&self) -> Option<u32> {
        let mut m = self.m();
        let i = match m.stats_free.pop() {
            Some(i) => i,
            None => {
                m.next_stats += 1;
                m.next_stats - 1
            }
        };
        m.stats.insert(i, RuleStats::default());
        m.stats_used.push(i);
        Some(i)
    }
    fn release_stats_index(&self, idx: u32) {
        let mut m = self.m();
        assert!(
            m.stats_used.contains(&idx),
            "stats_idx {idx} released twice"
        );
        m.stats_used.retain(|&i| i != idx);
        m.stats_free.push(idx);
    }
    fn put_channel(&self, key: &ChannelKey, rule: &ChannelRule) -> bool {
        let mut m = self.m();
        m.puts += 1;
        if m.channel_capacity.is_some_and(|c| m.channels.len() >= c)
            && !m.channels.contains_key(key)
        {
            return false;
        }
        m.channels.insert(*key, *rule);
        true
    }
    fn del_channel(&self, key: &ChannelKey) {
        self.m().channels.remove(key);
    }
    fn put_peer(&self, key: &PeerKey, rule: &PeerRule) -> bool {
        let mut m = self.m();
        m.puts += 1;
        m.peers.insert(*key, *rule);
        true
    }
    fn del_peer(&self, key: &PeerKey) {
        self.m().peers.remove(key);
    }
    fn put_alloc(&self, key: &AllocKey, rule: &AllocRule) -> bool {
        let mut m = self.m();
        m.puts += 1;
        m.allocs.insert(*key, *rule);
        true
    }
    fn del_alloc(&self, key: &AllocKey) {
        self.m().allocs.remove(key);
    }
    fn rule_stats(&self, stats_idx: u32) -> RuleStats {
        let mut m = self.m();
        m.single_reads += 1;
        m.stats.get(&stats_idx).copied().unwrap_or_default()
    }
    fn rule_stats_range(&self, first: u32, out: &mut [RuleStats]) -> bool {
        let mut m = self.m();
        if m.range_fails {
            return false;
        }
        m.range_reads += 1;
        for (i, o) in out.iter_mut().enumerate() {
            *o = m
                .stats
                .get(&(first + i as u32))
                .copied()
                .unwrap_or_default();
        }
        true
    }
    fn adopt_owned(&self, stats: &[u32], allocs: &[u32]) -> usize {
        let mut m = self.m();
        let before = m.channels.len() + m.peers.len() + m.allocs.len();
        m.channels.retain(|_, r| stats.contains(&r.stats_idx));
        m.peers.retain(|_, r| stats.contains(&r.stats_idx));
        m.allocs.retain(|_, r| stats.contains(&r.stats_idx));
        let after = m.channels.len() + m.peers.len() + m.allocs.len();
        for &s in stats {
            if !m.stats_used.contains(&s) {
                m.stats_used.push(s);
            }
            m.stats_free.retain(|&f| f != s);
            m.next_stats = m.next_stats.max(s + 1);
        }
        for &a in allocs {
            if !m.alloc_used.contains(&a) {
                m.alloc_used.push(a);
            }
            m.next_alloc = m.next_alloc.max(a + 1);
        }
        before - after
    }
}

fn with_fast(w: &World) -> Arc<Recorder> {
    let rec = Recorder::new(w.t0);
    assert!(w.server.shared.set_fast_rules(rec.clone()));
    rec
}

fn mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

fn refresh(w: &mut World, c: &mut Client, lifetime: u32) -> Vec<u8> {
    let req = c.request(
        method::REFRESH,
        &[(attrs::LIFETIME, lifetime.to_be_bytes().to_vec())],
    );
    w.one(&c.tuple, &req)
}

fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn channel_bind_installs_both_directions_permission_and_allocation_rules() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, relayed, _) = allocated(&mut w);
    // The allocation alone: its Send-indication rule, deadline = its lifetime (600 s).
    assert_eq!(rec.counts(), (0, 0, 1));
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4001, peer())),
        Class::SuccessResponse
    );
    assert_eq!(rec.counts(), (1, 2, 1));

    let client = [198, 51, 100, 7];
    let server = [192, 0, 2, 1];
    let (ck, cr) = rec.one_channel();
    assert_eq!(
        ck,
        ChannelKey {
            client_addr: mapped(client),
            server_addr: mapped(server),
            client_port: [0x9c, 0x40], // 40000
            server_port: [0x0d, 0x96], // 3478
            channel: [0x40, 0x01],
            _pad: [0, 0],
        }
    );
    assert_eq!(cr.relay_addr, mapped([192, 0, 2, 10]));
    assert_eq!(cr.relay_port, relayed.port().to_be_bytes());
    assert_eq!(cr.peer_addr, mapped([203, 0, 113, 5]));
    assert_eq!(cr.peer_port, [0x1b, 0x58]); // 7000
    assert_eq!(cr.flags, 0);
    assert_eq!(cr._pad, 0);
    // Earliest of channel (600 s), permission (300 s) and allocation (600 s).
    assert_eq!(cr.expires_ns, T0_NS + 300 * SEC);

    let peers = rec.peer_rules();
    // The permission entry (port 0: Data indication) and the channel's exact port.
    let (pk0, pr0) = peers[0];
    assert_eq!(
        pk0,
        PeerKey {
            peer_addr: mapped([203, 0, 113, 5]),
            relay_addr: mapped([192, 0, 2, 10]),
            peer_port: [0, 0],
            relay_port: relayed.port().to_be_bytes(),
        }
    );
    assert_eq!(pr0.channel, [0, 0]);
    assert_eq!(pr0.expires_ns, T0_NS + 300 * SEC);
    let (pk1, pr1) = peers[1];
    assert_eq!(pk1.peer_port, [0x1b, 0x58]);
    assert_eq!(pr1.channel, [0x40, 0x01]);
    for pr in [pr0, pr1] {
        assert_eq!(pr.client_addr, mapped(client));
        assert_eq!(pr.server_addr, mapped(server));
        assert_eq!(pr.client_port, [0x9c, 0x40]);
        assert_eq!(pr.server_port, [0x0d, 0x96]);
    }

    let m = rec.m();
    let (ak, ar) = m.allocs.iter().next().expect("alloc rule");
    assert_eq!(ak.client_addr, mapped(client));
    assert_eq!(ak.client_port, [0x9c, 0x40]);
    assert_eq!(ar.relay_addr, mapped([192, 0, 2, 10]));
    assert_eq!(ar.expires_ns, T0_NS + 600 * SEC);
    // No limit configured: the allocation owns a budget entry (rate 0), but its rules
    // point the kernel at none, so frames skip the budget. A distinct stats_idx per rule.
    assert!(
        [cr.alloc_idx, pr0.alloc_idx, pr1.alloc_idx, ar.alloc_idx]
            .iter()
            .all(|&i| i == NO_BUDGET)
    );
    let mut idx = vec![cr.stats_idx, pr0.stats_idx, pr1.stats_idx, ar.stats_idx];
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(idx.len(), 4);
    assert_eq!(m.bandwidth.len(), 1, "one budget entry taken");
    assert_eq!(m.bandwidth.values().next(), Some(&0), "no limit configured");
    drop(m);
    assert_eq!(w.server.stats().fast_rules, 4);
}

#[test]
fn rules_a_full_table_refuses_are_counted_and_stay_in_userspace() {
    let mut w = world();
    let rec = with_fast(&w);
    rec.m().channel_capacity = Some(0);
    let (mut c, _, _) = allocated(&mut w);
    assert_eq!(w.server.stats().fast_rules_refused, 0);
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4001, peer())),
        Class::SuccessResponse,
        "the binding itself succeeds"
    );
    // The channel rule was refused; the peer rules and the allocation rule fit.
    assert_eq!(rec.counts(), (0, 2, 1));
    assert_eq!(w.server.stats().fast_rules, 3);
    assert_eq!(w.server.stats().fast_rules_refused, 1);
    // Its counter index went back: none leaks per refusal.
    assert_eq!(rec.m().stats_used.len(), 3);
}

#[test]
fn refreshes_move_the_deadlines() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4001, peer());
    w.advance(Duration::from_secs(100));
    // CreatePermission at 100 s: permission until 400 s; channel rule follows it.
    assert_eq!(
        class_of(&permit(&mut w, &mut c, peer())),
        Class::SuccessResponse
    );
    assert_eq!(rec.one_channel().1.expires_ns, T0_NS + 400 * SEC);
    // Refresh to 1200 s at 100 s: the allocation rule moves; the channel stays bounded by
    // the permission.
    let puts = rec.m().puts;
    assert_eq!(
        class_of(&refresh(&mut w, &mut c, 1200)),
        Class::SuccessResponse
    );
    let ar = *rec.m().allocs.values().next().expect("alloc rule");
    assert_eq!(ar.expires_ns, T0_NS + 1300 * SEC);
    assert!(rec.m().puts > puts, "rules rewritten in place");
    // A ChannelBind refresh at 350 s: channel until 950 s, permission until 650 s.
    w.advance(Duration::from_secs(250));
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4001, peer())),
        Class::SuccessResponse
    );
    assert_eq!(rec.one_channel().1.expires_ns, T0_NS + 650 * SEC);
    let stats_before = rec.m().stats_used.len();
    assert_eq!(stats_before, 4, "updates reuse the rules' indices");
}

#[test]
fn permission_and_channel_expiry_remove_their_rules() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4001, peer());
    let other: SocketAddr = "203.0.113.9:9000".parse().expect("addr");
    w.advance(Duration::from_secs(200));
    permit(&mut w, &mut c, other); // until 500 s
    refresh(&mut w, &mut c, 3600);
    assert_eq!(rec.counts(), (1, 3, 1));
    // 301 s: the channel's permission expired: channel rules and its permission go.
    w.advance(Duration::from_secs(101));
    assert_eq!(rec.counts(), (0, 1, 1));
    let left = rec.peer_rules();
    assert_eq!(left[0].0.peer_addr, mapped([203, 0, 113, 9]));
    // 501 s: the other permission expires too; only the allocation rule is left.
    w.advance(Duration::from_secs(200));
    assert_eq!(rec.counts(), (0, 0, 1));
    assert_eq!(rec.m().stats_used.len(), 1, "indices given back");
}

#[test]
fn channel_expiry_alone_keeps_the_permission_entry() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4001, peer());
    refresh(&mut w, &mut c, 3600);
    // Keep the permission alive past the channel's 600 s.
    for _ in 0..2 {
        w.advance(Duration::from_secs(290));
        permit(&mut w, &mut c, peer());
    }
    assert_eq!(rec.counts(), (1, 2, 1));
    w.advance(Duration::from_secs(30)); // 610 s: channel gone, permission until 880 s
    assert_eq!(rec.counts(), (0, 1, 1));
    assert_eq!(rec.peer_rules()[0].0.peer_port, [0, 0]);
}

#[test]
fn refresh_zero_kick_close_and_allocation_expiry_remove_everything() {
    for how in ["refresh0", "kick", "close", "expiry"] {
        let mut w = world();
        let rec = with_fast(&w);
        let (mut c, _, _) = allocated(&mut w);
        bind(&mut w, &mut c, 0x4001, peer());
        assert_eq!(rec.counts(), (1, 2, 1), "{how}");
        match how {
            "refresh0" => {
                assert_eq!(
                    class_of(&refresh(&mut w, &mut c, 0)),
                    Class::SuccessResponse
                );
            }
            "close" => w.server.on_client_closed(&c.tuple, &mut w.ports),
            "kick" => {
                let n = w
                    .server
                    .kick(&KickTarget::User("alice".into()), &mut w.ports);
                assert_eq!(n, 1);
            }
            _ => {
                // Permission and channel refreshed, the allocation not: it expires at 600 s.
                w.advance(Duration::from_secs(290));
                bind(&mut w, &mut c, 0x4001, peer());
                w.advance(Duration::from_secs(311));
                assert_eq!(w.server.stats().allocations, 0);
            }
        }
        assert_eq!(rec.counts(), (0, 0, 0), "{how}");
        let m = rec.m();
        assert!(m.stats_used.is_empty(), "{how}: stats indices released");
        assert!(m.alloc_used.is_empty(), "{how}: alloc index released");
        drop(m);
        assert_eq!(w.server.stats().fast_rules, 0, "{how}");
    }
}

#[test]
fn stream_clients_get_no_rules() {
    for transport in [Transport::Tcp, Transport::Tls] {
        let mut w = world();
        let rec = with_fast(&w);
        let mut tuple = udp_tuple();
        tuple.transport = transport;
        let mut c = Client::new(tuple, "alice", "wonderland");
        let ok = allocate(&mut w, &mut c, &[]);
        assert_eq!(class_of(&ok), Class::SuccessResponse);
        assert_eq!(
            class_of(&bind(&mut w, &mut c, 0x4001, peer())),
            Class::SuccessResponse
        );
        assert_eq!(rec.counts(), (0, 0, 0), "{transport:?}");
        assert!(rec.m().alloc_used.is_empty());
    }
}

#[test]
fn ipv6_rules_use_the_raw_address_and_dual_stack_skips_send_rules() {
    let mut w = world();
    let rec = with_fast(&w);
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    // Dual stack: IPv4 + ADDITIONAL-ADDRESS-FAMILY IPv6.
    let ok = allocate(
        &mut w,
        &mut c,
        &[(attrs::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(
        class_of(&ok),
        Class::SuccessResponse,
        "{:?}",
        error_code(&ok)
    );
    let v6peer: SocketAddr = "[2001:db8:1::5]:7000".parse().expect("addr");
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4002, v6peer)),
        Class::SuccessResponse
    );
    let (_, cr) = rec.one_channel();
    assert_eq!(
        cr.peer_addr,
        "2001:db8:1::5"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets()
    );
    assert_eq!(
        cr.relay_addr,
        "2001:db8::10"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets(),
        "the IPv6 relayed address serves the IPv6 peer"
    );
    assert!(
        rec.m().allocs.is_empty(),
        "no Send rule for a dual-stack allocation"
    );
}

#[test]
fn dont_fragment_allocations_mark_their_rules() {
    let mut w = world();
    let rec = with_fast(&w);
    let mut c = Client::new(udp_tuple(), "alice", "wonderland");
    let ok = allocate(&mut w, &mut c, &[(attrs::DONT_FRAGMENT, vec![])]);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    bind(&mut w, &mut c, 0x4001, peer());
    assert_eq!(rec.one_channel().1.flags, RULE_DONT_FRAGMENT);
    let ar = *rec.m().allocs.values().next().expect("alloc rule");
    assert_eq!(ar.flags, RULE_DONT_FRAGMENT);
}

#[test]
fn deny_list_is_enforced_at_install_and_on_reload() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    let second: SocketAddr = "10.1.2.3:5000".parse().expect("addr"); // private: denied
    bind(&mut w, &mut c, 0x4001, peer());
    // Denied by the default list: no permission, no rule.
    assert_eq!(error_code(&permit(&mut w, &mut c, second)), Some(403));
    assert_eq!(rec.counts(), (1, 2, 1));

    // The policy changes under the server (a reload): the next install no longer
    // includes the peer, even before the re-check.
    let deny = PolicyConfig {
        allow: vec![],
        deny: vec!["203.0.113.0/24".into()],
    };
    w.server
        .shared
        .policy
        .replace(PeerPolicy::new(&deny, &[]).expect("policy"));
    refresh(&mut w, &mut c, 600);
    assert_eq!(rec.counts(), (0, 0, 1), "deny-list checked at (re)install");
    // The reload's re-check removes the permission and channel in userspace too.
    assert_eq!(w.server.recheck_policy(w.now), 1);
    let info: Vec<_> = w.server.allocations(w.now).collect();
    assert!(info[0].permissions.is_empty() && info[0].channels.is_empty());
    assert_eq!(w.server.stats().permissions, 0);
    assert_eq!(w.server.stats().channels, 0);
    // And the peer's data is no longer relayed by userspace either.
    w.sink.peer.clear();
    w.send(&c.tuple, &channel_data(0x4001, b"x"));
    assert!(w.sink.peer.is_empty());
}

/// The once-a-second fold reads all rules' counters with one range read, not one
/// lookup per rule (which at 10 000 allocations held a worker in the kernel for about
/// 0.1 s a second); when the range read fails it still folds, rule by rule.
#[test]
fn counters_of_all_allocations_fold_from_one_range_read() {
    let mut w = world();
    let rec = with_fast(&w);
    let mut clients = Vec::new();
    for i in 0..3u16 {
        let mut tuple = udp_tuple();
        tuple.client.set_port(41_000 + i);
        let mut c = Client::new(tuple, "alice", "wonderland");
        assert_eq!(
            class_of(&allocate(&mut w, &mut c, &[])),
            Class::SuccessResponse
        );
        assert_eq!(
            class_of(&bind(&mut w, &mut c, 0x4001, peer())),
            Class::SuccessResponse
        );
        clients.push(c);
    }
    let idx: Vec<u32> = rec.m().stats_used.clone();
    assert!(idx.len() >= 6, "rules of three allocations: {idx:?}");
    {
        let mut m = rec.m();
        for (n, &i) in idx.iter().enumerate() {
            let n = n as u64 + 1;
            m.stats.insert(
                i,
                RuleStats {
                    packets: n,
                    bytes: 100 * n,
                },
            );
        }
        m.single_reads = 0;
    }
    let total: u64 = (1..=idx.len() as u64).sum();
    w.server.fold_fast_counters(w.now);
    {
        let m = rec.m();
        assert_eq!(
            (m.range_reads, m.single_reads),
            (1, 0),
            "one range read, no lookups"
        );
    }
    let s = w.server.stats().clone();
    assert_eq!(s.packets_client_to_peer + s.packets_peer_to_client, total);
    assert_eq!(s.bytes_client_to_peer + s.bytes_peer_to_client, 100 * total);
    // A failing range read: the fold goes rule by rule and loses nothing.
    {
        let mut m = rec.m();
        m.range_fails = true;
        for &i in &idx {
            if let Some(v) = m.stats.get_mut(&i) {
                v.packets += 10;
                v.bytes += 1000;
            }
        }
    }
    w.server.fold_fast_counters(w.now);
    let grown = 10 * idx.len() as u64;
    let s = w.server.stats().clone();
    assert_eq!(
        s.packets_client_to_peer + s.packets_peer_to_client,
        total + grown
    );
    assert!(rec.m().single_reads >= idx.len());
}

#[test]
fn kernel_counters_fold_into_allocations_and_stats() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4001, peer());
    let (_, cr) = rec.one_channel();
    let into_channel = rec
        .peer_rules()
        .into_iter()
        .find(|(_, r)| r.channel != [0, 0])
        .expect("peer→channel rule")
        .1;
    {
        let mut m = rec.m();
        m.stats.insert(
            cr.stats_idx,
            RuleStats {
                packets: 10,
                bytes: 1000,
            },
        );
        m.stats.insert(
            into_channel.stats_idx,
            RuleStats {
                packets: 4,
                bytes: 400,
            },
        );
    }
    w.server.fold_fast_counters(w.now);
    let s = w.server.stats().clone();
    assert_eq!(s.packets_client_to_peer, 10);
    assert_eq!(s.bytes_client_to_peer, 1000);
    assert_eq!(s.kernel_packets_client_to_peer, 10);
    assert_eq!(s.packets_peer_to_client, 4);
    assert_eq!(s.kernel_packets_peer_to_client, 4);
    // Folding again adds only the growth.
    rec.m().stats.insert(
        cr.stats_idx,
        RuleStats {
            packets: 15,
            bytes: 1500,
        },
    );
    w.server.fold_fast_counters(w.now);
    let a = w.server.allocations(w.now).next().expect("allocation");
    assert_eq!((a.packets_to_peer, a.bytes_to_peer), (15, 1500));
    assert_eq!((a.packets_to_client, a.bytes_to_client), (4, 400));
    // Removing the rules folds their last counts.
    rec.m().stats.insert(
        cr.stats_idx,
        RuleStats {
            packets: 16,
            bytes: 1600,
        },
    );
    refresh(&mut w, &mut c, 0);
    assert_eq!(w.server.stats().packets_client_to_peer, 16);
}

#[test]
fn kernel_bytes_are_charged_to_the_userspace_bandwidth_bucket() {
    let cfg = TurnConfig {
        bandwidth_limit: 100_000,
        ..config()
    };
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4001, peer());
    // A limited allocation's rules name its budget entry, which holds the rate.
    let (_, cr) = rec.one_channel();
    assert_ne!(cr.alloc_idx, NO_BUDGET);
    assert_eq!(rec.m().bandwidth.get(&cr.alloc_idx), Some(&100_000));
    // Userspace relays while the bucket has tokens.
    w.sink.peer.clear();
    w.send(&c.tuple, &channel_data(0x4001, &[7; 400]));
    assert_eq!(w.sink.peer.len(), 1);
    // The kernel relayed 150 kB for this allocation: more than the bucket holds.
    let (_, cr) = rec.one_channel();
    rec.m().stats.insert(
        cr.stats_idx,
        RuleStats {
            packets: 150,
            bytes: 150_000,
        },
    );
    w.server.fold_fast_counters(w.now);
    // Userspace now refuses: kernel and userspace share one budget.
    w.send(&c.tuple, &channel_data(0x4001, &[7; 400]));
    assert_eq!(
        w.sink.peer.len(),
        1,
        "userspace relayed past the shared budget"
    );
}

#[test]
fn byte_quota_removes_the_rules_and_stops_userspace() {
    let cfg = TurnConfig {
        allocation_byte_quota: 2000,
        ..config()
    };
    let mut w = world_with(cfg, Quotas::new(0, 0));
    let rec = with_fast(&w);
    let (mut c, _, handle) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4001, peer());
    let (_, cr) = rec.one_channel();
    rec.m().stats.insert(
        cr.stats_idx,
        RuleStats {
            packets: 3,
            bytes: 1500,
        },
    );
    w.server.fold_fast_counters(w.now);
    assert_eq!(rec.counts(), (1, 2, 1), "under the quota: rules stay");
    // Userspace relays up to the quota (1500 + 400 = 1900)...
    w.sink.peer.clear();
    w.send(&c.tuple, &channel_data(0x4001, &[7; 400]));
    assert_eq!(w.sink.peer.len(), 1);
    // ...and not past it.
    w.send(&c.tuple, &channel_data(0x4001, &[7; 200]));
    assert_eq!(w.sink.peer.len(), 1);
    assert_eq!(w.server.stats().dropped_quota, 1);
    w.server
        .on_peer(handle, peer(), &[1; 200], w.now, &mut w.sink);
    assert_eq!(w.server.stats().dropped_quota, 2);
    // The kernel went on and crossed it: the next fold removes every rule.
    rec.m().stats.insert(
        cr.stats_idx,
        RuleStats {
            packets: 5,
            bytes: 2500,
        },
    );
    w.server.fold_fast_counters(w.now);
    assert_eq!(rec.counts(), (0, 0, 0));
    assert!(rec.m().stats_used.is_empty());
    // And a refresh does not bring them back.
    refresh(&mut w, &mut c, 600);
    assert_eq!(rec.counts(), (0, 0, 0));
}

#[test]
fn without_a_fast_path_nothing_is_computed() {
    let mut w = world();
    let (mut c, _, _) = allocated(&mut w);
    bind(&mut w, &mut c, 0x4001, peer());
    w.server.fold_fast_counters(w.now);
    assert_eq!(w.server.stats().fast_rules, 0);
    // NoFastRules takes no index, so it installs nothing either.
    let none = NoFastRules;
    assert_eq!(none.take_stats_index(), None);
    assert_eq!(none.take_alloc_index(0), None);
}

#[test]
fn mono_clock_converts_both_sides_of_the_anchor() {
    let t0 = Instant::now() + Duration::from_secs(10);
    let c = MonoClock::new(t0, 100 * SEC);
    assert_eq!(c.ns(t0), 100 * SEC);
    assert_eq!(c.ns(t0 + Duration::from_millis(1500)), 101 * SEC + SEC / 2);
    assert_eq!(c.ns(t0 - Duration::from_secs(4)), 96 * SEC);
}

/// Restart: the restored allocation takes over the rules the previous daemon installed
/// (same indices, updated in place), orphans are removed, counters are not counted twice.
#[test]
fn restore_takes_over_installed_rules_and_orphans_are_removed() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4001, peer())),
        Class::SuccessResponse
    );
    assert_eq!(rec.counts(), (1, 2, 1));
    // The kernel relays 10 packets on the channel; folded once.
    let (_, cr) = rec.one_channel();
    rec.m().stats.insert(
        cr.stats_idx,
        RuleStats {
            packets: 10,
            bytes: 1000,
        },
    );
    w.server.fold_fast_counters(w.now);
    let clock = MonoClock::new(w.t0, T0_NS);
    let saved = w.server.snapshot(w.now, &clock);
    let kernel = saved[0].kernel.clone().expect("kernel state saved");
    assert_eq!(kernel.rules.len(), 4);

    // "The restarted daemon": the same maps (pinned), plus an orphan left by an
    // allocation the snapshot does not know, and 5 more packets relayed meanwhile.
    let mut w2 = world();
    w2.t0 = w.t0;
    w2.now = w.now + Duration::from_secs(1);
    let rec2 = Recorder::new(w2.t0);
    {
        let old = rec.m();
        let mut m = rec2.m();
        m.channels = old.channels.clone();
        m.peers = old.peers.clone();
        m.allocs = old.allocs.clone();
        m.stats = old.stats.clone();
        m.stats.insert(
            cr.stats_idx,
            RuleStats {
                packets: 15,
                bytes: 1500,
            },
        );
        let orphan_key = ChannelKey {
            channel: [0x40, 0x09],
            ..old.channels.keys().next().copied().expect("key")
        };
        m.channels.insert(
            orphan_key,
            ChannelRule {
                stats_idx: 77,
                alloc_idx: 9,
                ..cr
            },
        );
    }
    assert!(w2.server.shared.set_fast_rules(rec2.clone()));
    let (stats_idx, alloc_idx) = saved[0].kernel_indices();
    let removed = rec2.adopt_owned(&stats_idx, &alloc_idx.into_iter().collect::<Vec<_>>());
    assert_eq!(removed, 1, "the orphan rule is removed");
    assert_eq!(rec2.counts(), (1, 2, 1));
    let next_before = rec2.m().next_stats;

    let relays: Vec<(RelayHandle, SocketAddr)> = saved[0]
        .relayed
        .iter()
        .map(|a| {
            w2.ports.next += 1;
            w2.ports.open.insert(w2.ports.next, *a);
            (w2.ports.next, *a)
        })
        .collect();
    let ticket = w2.quotas.try_acquire("alice").expect("quota");
    let now = w2.now;
    w2.server
        .restore(&saved[0], ticket, &relays, &clock, now)
        .expect("restore");
    assert_eq!(rec2.counts(), (1, 2, 1), "no duplicate rules");
    assert_eq!(rec2.m().next_stats, next_before, "no new rule index taken");
    assert_eq!(w2.server.stats().fast_rules, 4);

    // Refresh: the same rules, updated in place with the new deadline.
    let mut c2 = c.clone();
    let ok = refresh(&mut w2, &mut c2, 600);
    assert_eq!(class_of(&ok), Class::SuccessResponse);
    let (_, cr2) = rec2.one_channel();
    assert_eq!(cr2.stats_idx, cr.stats_idx);
    assert_eq!(cr2.alloc_idx, cr.alloc_idx);
    let m = rec2.m();
    let ar = m.allocs.values().next().expect("alloc rule");
    assert_eq!(ar.expires_ns, T0_NS + 601 * SEC);
    drop(m);

    // Only the 5 packets relayed since the snapshot's fold are added.
    w2.server.fold_fast_counters(now);
    let info: Vec<_> = w2.server.allocations(now).collect();
    assert_eq!(info[0].packets_to_peer, 15);
    assert_eq!(info[0].bytes_to_peer, 1500);

    // Deleting it removes the taken-over rules and gives their indices back.
    let gone = refresh(&mut w2, &mut c2, 0);
    assert_eq!(class_of(&gone), Class::SuccessResponse);
    assert_eq!(rec2.counts(), (0, 0, 0));
    assert!(rec2.m().stats_used.is_empty());
    assert!(rec2.m().alloc_used.is_empty());
}

/// A restored allocation nobody claimed before its deadline: restored at expiry, its
/// taken-over kernel rules are removed and their indices given back.
#[test]
fn restore_after_the_deadline_removes_the_kernel_rules() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut c, _, _) = allocated(&mut w);
    assert_eq!(
        class_of(&bind(&mut w, &mut c, 0x4001, peer())),
        Class::SuccessResponse
    );
    let clock = MonoClock::new(w.t0, T0_NS);
    let saved = w.server.snapshot(w.now, &clock);

    let mut w2 = world();
    w2.t0 = w.t0;
    w2.now = w.t0 + Duration::from_secs(601);
    let rec2 = Recorder::new(w2.t0);
    {
        let old = rec.m();
        let mut m = rec2.m();
        m.channels = old.channels.clone();
        m.peers = old.peers.clone();
        m.allocs = old.allocs.clone();
    }
    assert!(w2.server.shared.set_fast_rules(rec2.clone()));
    let (stats_idx, alloc_idx) = saved[0].kernel_indices();
    assert_eq!(
        rec2.adopt_owned(&stats_idx, &[alloc_idx.expect("alloc idx")]),
        0
    );
    w2.ports.next += 1;
    w2.ports.open.insert(w2.ports.next, saved[0].relayed[0]);
    let relays = [(w2.ports.next, saved[0].relayed[0])];
    let ticket = w2.quotas.try_acquire("alice").expect("quota");
    let now = w2.now;
    w2.server
        .restore(&saved[0], ticket, &relays, &clock, now)
        .expect("restore");
    assert_eq!(rec2.counts(), (0, 0, 0), "expired rules removed at once");
    assert!(rec2.m().stats_used.is_empty());
    assert!(rec2.m().alloc_used.is_empty());
    w2.advance(Duration::from_millis(1));
    assert!(w2.ports.open.is_empty(), "port closed");
    assert_eq!(w2.quotas.held_by("alice"), 0);
}

/// A state snapshot taken a slice at a time never names one kernel counter index twice:
/// here the allocation taken first goes away, and another's new channel takes its freed
/// indices before the job ends (`super::snapshot_job`).
#[test]
fn a_sliced_snapshot_never_names_a_kernel_index_twice() {
    let mut w = world();
    let rec = with_fast(&w);
    let (mut a, _, _) = allocated(&mut w);
    assert_eq!(
        class_of(&bind(&mut w, &mut a, 0x4001, peer())),
        Class::SuccessResponse
    );
    let a_indices: Vec<u32> = rec.m().stats_used.clone();
    let mut b = Client::new(
        FiveTuple {
            client: "192.0.2.99:50000".parse().expect("addr"),
            ..udp_tuple()
        },
        "alice",
        "wonderland",
    );
    assert_eq!(
        class_of(&allocate(&mut w, &mut b, &[])),
        Class::SuccessResponse
    );
    let clock = MonoClock::new(w.t0, T0_NS);
    let mut job = w.server.snapshot_begin();
    // The first allocation (lowest id) is taken, with its indices.
    assert!(!w.server.snapshot_step(&mut job, w.now, &clock, 1));
    assert_eq!(
        class_of(&refresh(&mut w, &mut a, 0)),
        Class::SuccessResponse
    );
    assert_eq!(
        class_of(&bind(&mut w, &mut b, 0x4002, peer())),
        Class::SuccessResponse
    );
    let reused = rec
        .m()
        .stats_used
        .iter()
        .filter(|i| a_indices.contains(i))
        .count();
    assert!(reused > 0, "the fake hands freed indices out again");
    assert!(w.server.snapshot_step(&mut job, w.now, &clock, 1));
    let saved = w.server.snapshot_finish(job, w.now, &clock);
    assert_eq!(saved.len(), 1, "the deleted allocation is left out");
    let mut named: Vec<u32> = saved.iter().flat_map(|s| s.kernel_indices().0).collect();
    named.sort_unstable();
    let mut used = rec.m().stats_used.clone();
    used.sort_unstable();
    assert_eq!(named, used, "each installed index named once");
}
