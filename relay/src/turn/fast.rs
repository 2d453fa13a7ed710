//! Rule changes out of the sans-IO core, for the kernel fast path (issue 4).
//!
//! Why here: the core is the one place that knows when an allocation, a permission or a
//! channel binding starts, is refreshed or ends, and on which 5-tuple, relayed address and
//! peer. After every such change [`TurnServer`](super::TurnServer) recomputes the rules
//! one allocation should have in the kernel (`desired`) and diffs them against what it
//! installed, through a [`FastRules`] sink: the daemon's BPF map handle
//! (`crate::xdp::rules::TurnMaps`), a recording fake in tests, or nothing at all (no fast
//! path: [`Shared::fast_rules`](super::Shared::fast_rules) is empty and nothing is
//! computed). The map layouts are the contract in `relay_common::turn`.
//!
//! Rules exist only for UDP clients (TCP/TLS clients stay in userspace), only for peers
//! the policy allows at install time (re-checked on reload), and only while the
//! allocation's byte quota is not used up. Each rule's deadline is the earliest of its own
//! expiry (permission, channel) and the allocation's, in CLOCK_MONOTONIC nanoseconds
//! ([`MonoClock`]): the kernel treats a rule past its deadline as absent, so a stalled
//! control plane never relays past a lifetime.
//!
//! Kernel counters: every rule has a `stats_idx` into the per-CPU `TURN_RULE_STATS`; the
//! worker folds the growth of each rule's counters into the allocation's and the server's
//! counters once a second ([`TurnServer::fold_fast_counters`](super::TurnServer)) and once
//! more when a rule is removed, so kernel-relayed traffic shows up exactly like userspace
//! traffic (metrics, `relay allocations`, quotas).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use relay_common::turn::{
    AllocKey, AllocRule, ChannelKey, ChannelRule, NO_BUDGET, PeerKey, PeerRule, RULE_DONT_FRAGMENT,
    RuleStats, mapped_v4, wire,
};

use super::allocation::Allocation;
use super::snapshot::{SavedKernel, SavedRule, SavedRuleId};
use super::stats::TurnStats;
use super::{IpFamily, Transport};
use crate::policy::PeerPolicy;

/// Where the core's rule changes go: the kernel's TURN maps (implemented by the daemon's
/// map handle; shared by all workers, so `&self` and thread-safe). Every method is
/// best-effort: a failure is logged by the implementation and the traffic concerned
/// simply stays in userspace.
pub trait FastRules: Send + Sync {
    /// The kernel deadline for a lifetime ending at `at`: CLOCK_MONOTONIC nanoseconds,
    /// `relay_common::turn::COARSE_CLOCK_SLACK_NS` early (the kernel reads the coarse
    /// clock).
    fn monotonic_ns(&self, at: Instant) -> u64;
    /// A free `alloc_idx` whose `TURN_BANDWIDTH` entry now holds `rate` bytes/s (0 =
    /// unlimited) and an empty window. None when all are in use.
    fn take_alloc_index(&self, rate: u64) -> Option<u32>;
    /// Gives an `alloc_idx` back.
    fn release_alloc_index(&self, idx: u32);
    /// A free `stats_idx` whose `TURN_RULE_STATS` entry now reads zero. None when all are
    /// in use.
    fn take_stats_index(&self) -> Option<u32>;
    /// Gives a `stats_idx` back.
    fn release_stats_index(&self, idx: u32);
    /// Inserts or replaces a `TURN_CHANNELS` entry; false if that failed.
    fn put_channel(&self, key: &ChannelKey, rule: &ChannelRule) -> bool;
    /// Removes a `TURN_CHANNELS` entry (absent is fine).
    fn del_channel(&self, key: &ChannelKey);
    /// Inserts or replaces a `TURN_PEERS` entry; false if that failed.
    fn put_peer(&self, key: &PeerKey, rule: &PeerRule) -> bool;
    /// Removes a `TURN_PEERS` entry (absent is fine).
    fn del_peer(&self, key: &PeerKey);
    /// Inserts or replaces a `TURN_ALLOCS` entry; false if that failed.
    fn put_alloc(&self, key: &AllocKey, rule: &AllocRule) -> bool;
    /// Removes a `TURN_ALLOCS` entry (absent is fine).
    fn del_alloc(&self, key: &AllocKey);
    /// The packets and bytes relayed so far by the rule with `stats_idx`, summed over CPUs
    /// (zero when unreadable).
    fn rule_stats(&self, stats_idx: u32) -> RuleStats;
    /// The counters of the rules `first..first + out.len()` into `out`, as
    /// [`FastRules::rule_stats`] gives them; false when they could not be read (`out` is
    /// then not to be used). The default reads them one by one; the kernel maps read
    /// them in batches.
    fn rule_stats_range(&self, first: u32, out: &mut [RuleStats]) -> bool {
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.rule_stats(first + i as u32);
        }
        true
    }
    /// After a restart: marks the indices owned by restored allocations (`stats` per rule,
    /// `allocs` per allocation) as in use, and removes from the maps every rule that is
    /// expired or owned by none of them (orphans left by the previous daemon). Returns
    /// how many rules were removed. The default (no maps) does nothing.
    fn adopt_owned(&self, stats: &[u32], allocs: &[u32]) -> usize {
        let _ = (stats, allocs);
        0
    }
    /// The kernel rule tables' state for operators (`xdp.rule_tables` of `relay stats`):
    /// names to values, see `TurnMaps`. The default (no maps) reports nothing.
    fn table_report(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }
}

/// The sink used when there is no fast path: takes no index, so nothing is installed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFastRules;

impl FastRules for NoFastRules {
    fn monotonic_ns(&self, _at: Instant) -> u64 {
        0
    }
    fn take_alloc_index(&self, _rate: u64) -> Option<u32> {
        None
    }
    fn release_alloc_index(&self, _idx: u32) {}
    fn take_stats_index(&self) -> Option<u32> {
        None
    }
    fn release_stats_index(&self, _idx: u32) {}
    fn put_channel(&self, _key: &ChannelKey, _rule: &ChannelRule) -> bool {
        false
    }
    fn del_channel(&self, _key: &ChannelKey) {}
    fn put_peer(&self, _key: &PeerKey, _rule: &PeerRule) -> bool {
        false
    }
    fn del_peer(&self, _key: &PeerKey) {}
    fn put_alloc(&self, _key: &AllocKey, _rule: &AllocRule) -> bool {
        false
    }
    fn del_alloc(&self, _key: &AllocKey) {}
    fn rule_stats(&self, _stats_idx: u32) -> RuleStats {
        RuleStats::default()
    }
}

/// Converts the core's [`Instant`]s to CLOCK_MONOTONIC nanoseconds from one pair of
/// readings taken together at start. On Linux, std's `Instant` *is* CLOCK_MONOTONIC
/// (`clock_gettime(CLOCK_MONOTONIC)`), so the offset between the two is constant and the
/// conversion exact up to the few nanoseconds between the two readings.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    at: Instant,
    ns: u64,
}

impl MonoClock {
    /// `at` and the CLOCK_MONOTONIC nanoseconds read at the same moment.
    pub const fn new(at: Instant, ns: u64) -> Self {
        MonoClock { at, ns }
    }

    /// The [`Instant`] of CLOCK_MONOTONIC nanoseconds `ns` (the inverse of
    /// [`MonoClock::ns`]); None when `Instant` cannot represent it.
    pub fn instant(&self, ns: u64) -> Option<Instant> {
        if ns >= self.ns {
            self.at
                .checked_add(std::time::Duration::from_nanos(ns - self.ns))
        } else {
            self.at
                .checked_sub(std::time::Duration::from_nanos(self.ns - ns))
        }
    }

    /// `t` in CLOCK_MONOTONIC nanoseconds (saturating; an instant before the anchor
    /// converts by subtraction).
    pub fn ns(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(d) => self
                .ns
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            None => self.ns.saturating_sub(
                u64::try_from(self.at.duration_since(t).as_nanos()).unwrap_or(u64::MAX),
            ),
        }
    }
}

/// A 16-byte key address: IPv4 mapped, IPv6 as is.
pub fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip.to_canonical() {
        IpAddr::V4(a) => mapped_v4(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Which rule of an allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum RuleId {
    /// `TURN_ALLOCS`: Send indications.
    Alloc,
    /// `TURN_PEERS` permission entry (any peer port → Data indication).
    Permission(IpAddr),
    /// `TURN_CHANNELS`: ChannelData from the client on this channel.
    ChannelOut(u16),
    /// `TURN_PEERS` exact-port entry: peer data onto this channel.
    ChannelIn(u16),
}

/// One map entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Entry {
    Channel(ChannelKey, ChannelRule),
    Peer(PeerKey, PeerRule),
    Alloc(AllocKey, AllocRule),
}

impl Entry {
    fn set_indices(&mut self, stats_idx: u32, alloc_idx: u32) {
        match self {
            Entry::Channel(_, r) => (r.stats_idx, r.alloc_idx) = (stats_idx, alloc_idx),
            Entry::Peer(_, r) => (r.stats_idx, r.alloc_idx) = (stats_idx, alloc_idx),
            Entry::Alloc(_, r) => (r.stats_idx, r.alloc_idx) = (stats_idx, alloc_idx),
        }
    }

    /// Whether this entry relays toward the peer (else toward the client).
    fn toward_peer(&self) -> bool {
        !matches!(self, Entry::Peer(..))
    }

    fn same_key(&self, o: &Entry) -> bool {
        match (self, o) {
            (Entry::Channel(a, _), Entry::Channel(b, _)) => a == b,
            (Entry::Peer(a, _), Entry::Peer(b, _)) => a == b,
            (Entry::Alloc(a, _), Entry::Alloc(b, _)) => a == b,
            _ => false,
        }
    }

    fn put(&self, sink: &dyn FastRules) -> bool {
        match self {
            Entry::Channel(k, r) => sink.put_channel(k, r),
            Entry::Peer(k, r) => sink.put_peer(k, r),
            Entry::Alloc(k, r) => sink.put_alloc(k, r),
        }
    }

    fn del(&self, sink: &dyn FastRules) {
        match self {
            Entry::Channel(k, _) => sink.del_channel(k),
            Entry::Peer(k, _) => sink.del_peer(k),
            Entry::Alloc(k, _) => sink.del_alloc(k),
        }
    }
}

/// An installed rule.
#[derive(Debug)]
struct Installed {
    entry: Entry,
    stats_idx: u32,
    /// The rule's kernel counters as last folded.
    seen: RuleStats,
}

/// The kernel state of one allocation.
#[derive(Debug)]
struct FastAlloc {
    alloc_idx: u32,
    /// Whether its `TURN_BANDWIDTH` entry holds a limit. Without one, its rules carry
    /// [`NO_BUDGET`] instead of `alloc_idx`, so the kernel skips the budget entry.
    limited: bool,
    rules: HashMap<RuleId, Installed>,
}

impl FastAlloc {
    /// The `alloc_idx` its kernel rules carry.
    fn rule_alloc_idx(&self) -> u32 {
        if self.limited {
            self.alloc_idx
        } else {
            NO_BUDGET
        }
    }
}

/// What the rules depend on besides the allocation.
pub(super) struct Env<'a> {
    pub policy: &'a PeerPolicy,
    pub own: &'a [IpAddr],
    pub relay_ports: std::ops::RangeInclusive<u16>,
    pub bandwidth: u64,
}

/// The rules installed by one [`TurnServer`](super::TurnServer), by allocation id.
#[derive(Debug, Default)]
pub(super) struct FastState {
    allocs: HashMap<u64, FastAlloc>,
    /// Rules installed (gauge).
    pub(super) rules: u64,
    /// Counters of rules `read_first..`, read at once for [`FastState::fold`] by
    /// [`FastState::read_counters`] (reused: no allocation per fold once grown).
    read: Vec<RuleStats>,
    read_first: u32,
}

/// Whether `a` has used up its byte quota (`a.byte_quota` > 0).
pub(super) fn quota_exhausted(a: &Allocation) -> bool {
    a.byte_quota > 0
        && a.traffic
            .bytes_to_peer
            .saturating_add(a.traffic.bytes_to_client)
            >= a.byte_quota
}

/// The rules allocation `a` should have at `now` (indices left zero).
fn desired(
    a: &Allocation,
    env: &Env<'_>,
    clock: &dyn FastRules,
    now: Instant,
) -> Vec<(RuleId, Entry)> {
    let mut out = Vec::new();
    if a.tuple.transport != Transport::Udp || a.expires <= now || quota_exhausted(a) {
        return out;
    }
    let client = a.tuple.client;
    let server = a.tuple.server;
    let (client_addr, server_addr) = (key_addr(client.ip()), key_addr(server.ip()));
    let (client_port, server_port) = (wire(client.port()), wire(server.port()));
    let alloc_ns = clock.monotonic_ns(a.expires);
    let flags = if a.dont_fragment {
        RULE_DONT_FRAGMENT
    } else {
        0
    };
    let mut relays = a.relayed();
    if let (Some(relay), None) = (relays.next(), relays.next()) {
        // Send indications: only single-family allocations (the rule names one relayed
        // address; a dual-stack allocation's Send indications stay in userspace).
        out.push((
            RuleId::Alloc,
            Entry::Alloc(
                AllocKey {
                    client_addr,
                    server_addr,
                    client_port,
                    server_port,
                },
                AllocRule {
                    expires_ns: alloc_ns,
                    relay_addr: key_addr(relay.addr.ip()),
                    relay_port: wire(relay.addr.port()),
                    flags,
                    ..AllocRule::default()
                },
            ),
        ));
    }
    for (&ip, &until) in &a.permissions {
        // The permission entry admits any peer port: not for the relay's own addresses,
        // which are reachable on the relay port range only (checked per datagram in
        // userspace).
        if until <= now || env.own.contains(&ip) || env.policy.check(ip).is_err() {
            continue;
        }
        let Some(relay) = a.relay_for(IpFamily::of(ip)) else {
            continue;
        };
        out.push((
            RuleId::Permission(ip),
            Entry::Peer(
                PeerKey {
                    peer_addr: key_addr(ip),
                    relay_addr: key_addr(relay.addr.ip()),
                    peer_port: [0, 0],
                    relay_port: wire(relay.addr.port()),
                },
                PeerRule {
                    expires_ns: clock.monotonic_ns(until.min(a.expires)),
                    client_addr,
                    server_addr,
                    client_port,
                    server_port,
                    channel: [0, 0],
                    flags: 0,
                    ..PeerRule::default()
                },
            ),
        ));
    }
    for (&number, ch) in &a.channels {
        let peer: SocketAddr = ch.peer;
        let Some(&perm) = a.permissions.get(&peer.ip()) else {
            continue;
        };
        if ch.expires <= now
            || perm <= now
            || env
                .policy
                .check_socket(peer, env.relay_ports.clone())
                .is_err()
        {
            continue;
        }
        let Some(relay) = a.relay_for(IpFamily::of(peer.ip())) else {
            continue;
        };
        let expires_ns = clock.monotonic_ns(ch.expires.min(perm).min(a.expires));
        let (peer_addr, relay_addr) = (key_addr(peer.ip()), key_addr(relay.addr.ip()));
        let (peer_port, relay_port) = (wire(peer.port()), wire(relay.addr.port()));
        out.push((
            RuleId::ChannelOut(number),
            Entry::Channel(
                ChannelKey {
                    client_addr,
                    server_addr,
                    client_port,
                    server_port,
                    channel: wire(number),
                    _pad: [0, 0],
                },
                ChannelRule {
                    expires_ns,
                    relay_addr,
                    peer_addr,
                    relay_port,
                    peer_port,
                    flags,
                    ..ChannelRule::default()
                },
            ),
        ));
        out.push((
            RuleId::ChannelIn(number),
            Entry::Peer(
                PeerKey {
                    peer_addr,
                    relay_addr,
                    peer_port,
                    relay_port,
                },
                PeerRule {
                    expires_ns,
                    client_addr,
                    server_addr,
                    client_port,
                    server_port,
                    channel: wire(number),
                    flags: 0,
                    ..PeerRule::default()
                },
            ),
        ));
    }
    out
}

/// Adds a rule's counter growth to the allocation and the server.
fn account(a: Option<&mut Allocation>, stats: &mut TurnStats, to_peer: bool, d: RuleStats) {
    if d.packets == 0 && d.bytes == 0 {
        return;
    }
    if to_peer {
        stats.packets_client_to_peer += d.packets;
        stats.bytes_client_to_peer += d.bytes;
        stats.kernel_packets_client_to_peer += d.packets;
    } else {
        stats.packets_peer_to_client += d.packets;
        stats.bytes_peer_to_client += d.bytes;
        stats.kernel_packets_peer_to_client += d.packets;
    }
    if let Some(a) = a {
        if to_peer {
            a.traffic.packets_to_peer += d.packets;
            a.traffic.bytes_to_peer += d.bytes;
        } else {
            a.traffic.packets_to_client += d.packets;
            a.traffic.bytes_to_client += d.bytes;
        }
    }
}

/// Reads rule `r`'s counters and returns the growth since the last fold.
fn growth(sink: &dyn FastRules, r: &mut Installed) -> RuleStats {
    growth_to(sink.rule_stats(r.stats_idx), r)
}

/// What rule `r` counted since it was last folded, given its counters `now`.
fn growth_to(now: RuleStats, r: &mut Installed) -> RuleStats {
    let d = RuleStats {
        packets: now.packets.saturating_sub(r.seen.packets),
        bytes: now.bytes.saturating_sub(r.seen.bytes),
    };
    r.seen = now;
    d
}

impl FastState {
    /// Brings allocation `id`'s kernel rules in line with `a` at `now`: installs what is
    /// missing, rewrites what changed (deadlines after a refresh), removes what is gone
    /// (counters folded first).
    pub(super) fn sync(
        &mut self,
        sink: &dyn FastRules,
        id: u64,
        a: &mut Allocation,
        stats: &mut TurnStats,
        env: &Env<'_>,
        now: Instant,
    ) {
        let want = desired(a, env, sink, now);
        if want.is_empty() && !self.allocs.contains_key(&id) {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = self.allocs.entry(id) {
            let Some(alloc_idx) = sink.take_alloc_index(env.bandwidth) else {
                tracing::debug!(client = %a.tuple.client, "no free kernel allocation index; relaying in userspace");
                return;
            };
            v.insert(FastAlloc {
                alloc_idx,
                limited: env.bandwidth > 0,
                rules: HashMap::new(),
            });
        }
        let FastState { allocs, rules, .. } = self;
        let Some(fa) = allocs.get_mut(&id) else {
            return;
        };
        // Removed rules first, so that a replaced key is never deleted after its
        // replacement was written.
        let gone: Vec<RuleId> = fa
            .rules
            .iter()
            .filter(|(rid, inst)| {
                !want
                    .iter()
                    .any(|(w, e)| w == *rid && e.same_key(&inst.entry))
            })
            .map(|(rid, _)| *rid)
            .collect();
        for rid in gone {
            if let Some(mut inst) = fa.rules.remove(&rid) {
                inst.entry.del(sink);
                let d = growth(sink, &mut inst);
                account(Some(a), stats, inst.entry.toward_peer(), d);
                sink.release_stats_index(inst.stats_idx);
                *rules = rules.saturating_sub(1);
            }
        }
        let rule_alloc_idx = fa.rule_alloc_idx();
        for (rid, mut entry) in want {
            match fa.rules.get_mut(&rid) {
                Some(inst) => {
                    entry.set_indices(inst.stats_idx, rule_alloc_idx);
                    if entry != inst.entry {
                        // Same key, new contents (a deadline): an in-place update.
                        if entry.put(sink) {
                            inst.entry = entry;
                        }
                    }
                }
                None => {
                    let Some(stats_idx) = sink.take_stats_index() else {
                        stats.fast_rules_refused += 1;
                        continue;
                    };
                    entry.set_indices(stats_idx, rule_alloc_idx);
                    if entry.put(sink) {
                        fa.rules.insert(
                            rid,
                            Installed {
                                entry,
                                stats_idx,
                                seen: RuleStats::default(),
                            },
                        );
                        *rules += 1;
                    } else {
                        stats.fast_rules_refused += 1;
                        sink.release_stats_index(stats_idx);
                    }
                }
            }
        }
        if fa.rules.is_empty() {
            sink.release_alloc_index(fa.alloc_idx);
            allocs.remove(&id);
        }
    }

    /// Removes every rule of allocation `id` (it is being deleted), folding their last
    /// counts into `a` (if still there) and `stats`.
    pub(super) fn clear(
        &mut self,
        sink: &dyn FastRules,
        id: u64,
        mut a: Option<&mut Allocation>,
        stats: &mut TurnStats,
    ) {
        let Some(fa) = self.allocs.remove(&id) else {
            return;
        };
        for (_, mut inst) in fa.rules {
            inst.entry.del(sink);
            let d = growth(sink, &mut inst);
            account(a.as_deref_mut(), stats, inst.entry.toward_peer(), d);
            sink.release_stats_index(inst.stats_idx);
            self.rules = self.rules.saturating_sub(1);
        }
        sink.release_alloc_index(fa.alloc_idx);
    }

    /// Reads the counters of every installed rule with one range read
    /// ([`FastRules::rule_stats_range`]) for the [`FastState::fold`] calls that follow,
    /// until [`FastState::forget_counters`]. When they cannot be read, the folds read
    /// each rule on its own.
    pub(super) fn read_counters(&mut self, sink: &dyn FastRules) {
        let (mut lo, mut hi) = (u32::MAX, 0u32);
        for inst in self.allocs.values().flat_map(|fa| fa.rules.values()) {
            lo = lo.min(inst.stats_idx);
            hi = hi.max(inst.stats_idx);
        }
        self.forget_counters();
        if lo > hi {
            return;
        }
        self.read
            .resize((hi - lo) as usize + 1, RuleStats::default());
        self.read_first = lo;
        if !sink.rule_stats_range(lo, &mut self.read) {
            self.forget_counters();
        }
    }

    /// Drops what [`FastState::read_counters`] read (keeps the buffer).
    pub(super) fn forget_counters(&mut self) {
        self.read.clear();
        self.read_first = 0;
    }

    /// Folds the counter growth of allocation `id`'s rules into `a` and `stats`: from
    /// what [`FastState::read_counters`] read, and for rules it did not cover (installed
    /// since, or the read failed) from the rule's own counters.
    pub(super) fn fold(
        &mut self,
        sink: &dyn FastRules,
        id: u64,
        a: &mut Allocation,
        stats: &mut TurnStats,
        now: Instant,
    ) {
        let FastState {
            allocs,
            read,
            read_first,
            ..
        } = self;
        let Some(fa) = allocs.get_mut(&id) else {
            return;
        };
        for inst in fa.rules.values_mut() {
            let counters = inst
                .stats_idx
                .checked_sub(*read_first)
                .and_then(|k| read.get(k as usize))
                .copied()
                .unwrap_or_else(|| sink.rule_stats(inst.stats_idx));
            let d = growth_to(counters, inst);
            account(Some(&mut *a), stats, inst.entry.toward_peer(), d);
            // One budget for both paths: the kernel enforces the limit on its own share
            // (TURN_BANDWIDTH), and its bytes are charged here to the bucket userspace
            // relays from, so the sum stays within `turn.bandwidth_limit` over time.
            a.charge_bandwidth(d.bytes, now);
        }
    }

    /// Ids of the allocations with rules.
    pub(super) fn ids(&self) -> Vec<u64> {
        self.allocs.keys().copied().collect()
    }
}

// ---- restart (snapshot / restore) ----

impl RuleId {
    fn saved(self) -> SavedRuleId {
        match self {
            RuleId::Alloc => SavedRuleId::Alloc,
            RuleId::Permission(ip) => SavedRuleId::Permission(ip),
            RuleId::ChannelOut(n) => SavedRuleId::ChannelOut(n),
            RuleId::ChannelIn(n) => SavedRuleId::ChannelIn(n),
        }
    }

    fn from_saved(s: SavedRuleId) -> RuleId {
        match s {
            SavedRuleId::Alloc => RuleId::Alloc,
            SavedRuleId::Permission(ip) => RuleId::Permission(ip),
            SavedRuleId::ChannelOut(n) => RuleId::ChannelOut(n),
            SavedRuleId::ChannelIn(n) => RuleId::ChannelIn(n),
        }
    }
}

impl FastState {
    /// The kernel state of allocation `id`, for a snapshot.
    pub(super) fn export(&self, id: u64) -> Option<SavedKernel> {
        let fa = self.allocs.get(&id)?;
        let mut rules: Vec<SavedRule> = fa
            .rules
            .iter()
            .map(|(rid, inst)| SavedRule {
                rule: rid.saved(),
                stats_idx: inst.stats_idx,
                seen_packets: inst.seen.packets,
                seen_bytes: inst.seen.bytes,
            })
            .collect();
        rules.sort_by_key(|r| r.stats_idx);
        Some(SavedKernel {
            alloc_idx: fa.alloc_idx,
            rules,
        })
    }

    /// Takes over the kernel rules a previous daemon installed for the restored
    /// allocation `id` (its indices and folded counters in `saved`): they count as
    /// installed, so the diffing of [`FastState::sync`] updates them in place rather
    /// than installing duplicates. Each is written once more (the maps may be fresh, or
    /// the rule may have been dropped as expired); the caller then runs a normal sync,
    /// which removes what has expired since. Rules that no longer match the allocation
    /// (a peer now denied by the policy) keep their index reserved until the process
    /// ends and are left to their kernel deadline.
    pub(super) fn restore(
        &mut self,
        sink: &dyn FastRules,
        id: u64,
        a: &Allocation,
        saved: &SavedKernel,
        env: &Env<'_>,
    ) {
        // Rule keys as of just before the earliest deadline: every saved rule is
        // recognised, even one that expired while the daemon was down.
        let earliest = a
            .permissions
            .values()
            .copied()
            .chain(a.channels.values().map(|c| c.expires))
            .fold(a.expires, Instant::min);
        let keys_at = earliest
            .checked_sub(std::time::Duration::from_nanos(1))
            .unwrap_or(earliest);
        let want = desired(a, env, sink, keys_at);
        let mut fa = FastAlloc {
            alloc_idx: saved.alloc_idx,
            limited: a.bucket.is_some(),
            rules: HashMap::new(),
        };
        for r in &saved.rules {
            let rid = RuleId::from_saved(r.rule);
            let Some((_, entry)) = want.iter().find(|(w, _)| *w == rid) else {
                tracing::debug!(client = %a.tuple.client, rule = ?r.rule, "restored kernel rule no longer matches its allocation; left to its deadline");
                continue;
            };
            let mut entry = *entry;
            entry.set_indices(r.stats_idx, fa.rule_alloc_idx());
            entry.put(sink);
            fa.rules.insert(
                rid,
                Installed {
                    entry,
                    stats_idx: r.stats_idx,
                    seen: RuleStats {
                        packets: r.seen_packets,
                        bytes: r.seen_bytes,
                    },
                },
            );
            self.rules += 1;
        }
        if fa.rules.is_empty() {
            sink.release_alloc_index(saved.alloc_idx);
        } else {
            self.allocs.insert(id, fa);
        }
    }
}
