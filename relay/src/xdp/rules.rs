//! The userspace side of the TURN fast path's maps (contract: `relay_common::turn`):
//! insert, update and remove the channel, peer and allocation rules, read the per-rule
//! kernel counters, set the per-allocation bandwidth budget and the global settings.
//!
//! Why a separate handle: the maps are written by every worker's TURN core (through
//! [`FastRules`]) and read by the control plane, while the program and its attachments
//! stay with [`super::FastPath`]. [`TurnMaps`] owns the map file descriptors (taken out of
//! the loaded object), is `Send + Sync` and is shared as an `Arc`. One mutex per map is
//! enough: rules change on requests and expiries, never per packet.
//!
//! It also hands out the rule (`stats_idx`) and allocation (`alloc_idx`) indices from free
//! lists shared by all workers ([`IndexPool`]), resetting the entry an index names when it
//! is reused (counters to zero, a fresh bandwidth window).

use std::collections::HashSet;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::{Ebpf, Pod};
use relay_common::turn::{
    AllocKey, AllocRule, Bandwidth, COARSE_CLOCK_SLACK_NS, ChannelKey, ChannelKeyV4, ChannelRule,
    ChannelSlot, MAX_ALLOCATIONS, MAX_RULES, PeerKey, PeerKeyV4, PeerRule, PeerSlot, RuleStats,
    SlotTableInfo, TurnSettings, maps,
};

use super::bpf_sys;
use super::slot_table::{ChannelTable, CompactSlot, MappedSlots, PeerTable, SlotTable, Slots};

/// A compact rule table and what its owner keeps beside it across resizes.
pub struct OwnedTable<T: CompactSlot> {
    slots: SlotTable<MappedSlots<T>>,
    /// When the kernel was last told a new region: a frame that read the old one just
    /// before may still be reading it until [`RESIZE_GRACE`] has passed.
    moved_at: Option<Instant>,
    /// Keys that the last move gave a slot while their rules were in the hash map (the
    /// table had refused them): their copies there go once [`RESIZE_GRACE`] has passed
    /// (see [`OwnedTable::settle`]).
    stale_copies: Vec<T::Key>,
    /// Resizes so far by a move, and in place (see [`resize_table`]).
    moves: u64,
    rebuilt_in_place: u64,
    /// The longest a resize held its caller.
    longest_resize: Duration,
}

/// Slots of the place a moved table left that each later change of the table empties
/// (64 KiB: a few microseconds), so that no change pays for a whole region.
const RETIRED_CLEARED_PER_CHANGE: usize = 1024;

impl<T: CompactSlot> OwnedTable<T> {
    fn new(slots: SlotTable<MappedSlots<T>>) -> Self {
        OwnedTable {
            slots,
            moved_at: None,
            stale_copies: Vec::new(),
            moves: 0,
            rebuilt_in_place: 0,
            longest_resize: Duration::ZERO,
        }
    }

    /// Once the grace period since the last move has passed: empties up to
    /// [`RETIRED_CLEARED_PER_CHANGE`] slots of the place the table left, and returns the
    /// keys whose hash-map copies can go: those of [`OwnedTable::stale_copies`] still in
    /// the table (a key removed since, or refused again, has no copy to drop, or its
    /// only rule there). Before then, nothing.
    fn settle(&mut self, now: Instant) -> Vec<T::Key> {
        if self
            .moved_at
            .is_some_and(|at| now.saturating_duration_since(at) < RESIZE_GRACE)
        {
            return Vec::new();
        }
        self.slots.clear_retired(RETIRED_CLEARED_PER_CHANGE);
        let mut keys = std::mem::take(&mut self.stale_copies);
        keys.retain(|k| self.slots.contains(k));
        keys
    }
}

impl<T: CompactSlot> std::ops::Deref for OwnedTable<T> {
    type Target = SlotTable<MappedSlots<T>>;
    fn deref(&self) -> &Self::Target {
        &self.slots
    }
}

impl<T: CompactSlot> std::ops::DerefMut for OwnedTable<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.slots
    }
}
use crate::turn::{FastRules, MonoClock};

/// Errors of the TURN map handle.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The loaded object has no such map (an XDP program without TURN support).
    #[error(
        "the eBPF object has no map {0}: this build's XDP program does not relay TURN; \
         TURN is relayed in userspace"
    )]
    Missing(&'static str),
    /// A map operation failed.
    #[error("BPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// A rule table is full (`bpf_map_update_elem` answered E2BIG).
    #[error(
        "the kernel rule table {0} is full (xdp.turn_rules entries): the rules beyond it stay \
         in userspace; raise xdp.turn_rules (with pinned maps, run `relay xdp-unload` first)"
    )]
    Full(&'static str),
    /// The number of possible CPUs could not be read.
    #[error("cannot read the number of possible CPUs ({0}): {1}")]
    Cpus(&'static str, #[source] io::Error),
    /// CLOCK_MONOTONIC could not be read.
    #[error("clock_gettime(CLOCK_MONOTONIC) failed: {0}")]
    Clock(#[source] io::Error),
    /// A compact table's seed and mask could not be told to the kernel.
    #[error(
        "cannot tell the kernel the seed and mask of its rule table through {0}: {1}; the \
         rules stay where the kernel finds them, in the hash maps if the table is off (a \
         little slower with many allocations)"
    )]
    TableInfo(&'static str, #[source] io::Error),
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> RulesError {
    move |source| RulesError::Map { name, source }
}

/// Whether `e` says the key was absent.
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A free list of indices below a limit: fresh ones are handed out in order, returned
/// ones are reused first.
#[derive(Debug)]
pub struct IndexPool {
    next: u32,
    limit: u32,
    free: Vec<u32>,
}

impl IndexPool {
    /// Indices `0..limit`.
    pub fn new(limit: u32) -> Self {
        IndexPool {
            next: 0,
            limit,
            free: Vec::new(),
        }
    }

    /// A free index, or None when all `limit` are in use.
    pub fn take(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.next < self.limit {
            self.next += 1;
            return Some(self.next - 1);
        }
        None
    }

    /// Gives `i` back (ignored if out of range).
    pub fn release(&mut self, i: u32) {
        if i < self.next {
            self.free.push(i);
        }
    }

    /// Indices in use.
    pub fn in_use(&self) -> u32 {
        self.next - self.free.len() as u32
    }
}

/// A pair of (`Instant`, CLOCK_MONOTONIC ns) read back to back.
pub fn monotonic_anchor() -> Result<MonoClock, RulesError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let at = Instant::now();
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if r != 0 {
        return Err(RulesError::Clock(io::Error::last_os_error()));
    }
    let ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(MonoClock::new(at, ns))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A rule map (channels, peers or allocations) behind its mutex, with the keys it holds.
type RuleMap<K, V> = Mutex<Tracked<K, V>>;

/// A rule hash map and the keys it holds, as far as this daemon knows.
///
/// Why: most IPv4 rules live in the slot tables, written as plain memory, but every insert
/// and removal of one also deleted its key from the hash maps behind the tables in case a
/// copy was there: two to four `bpf` syscalls per channel. With the keys known, the
/// delete of a key the map does not hold is skipped, and so is the lookup: a channel's
/// channel and peer rules now go in 0.36 µs instead of 3.0 µs and come in 1.0 µs instead
/// of 3.7 µs (docs/BENCHMARKS.md, "What an operator's kick costs a worker").
///
/// The daemon is the maps' only writer while it runs (the program only reads them), so
/// the keys stay exact once known: they are read from the map when it is taken (rules an
/// earlier daemon left included) and follow every insert and delete made here. When they
/// cannot be read (`keys` None) every delete and lookup is tried, as before.
struct Tracked<K, V> {
    map: HashMap<MapData, K, V>,
    keys: Option<HashSet<K>>,
}

/// A rule map's key: what the map stores, and what [`Tracked`] keeps in a set.
trait RuleKey: Pod + Eq + std::hash::Hash {}
impl<K: Pod + Eq + std::hash::Hash> RuleKey for K {}

impl<K: RuleKey, V: Pod> Tracked<K, V> {
    fn new(map: HashMap<MapData, K, V>) -> Self {
        let keys = map.keys().collect::<Result<HashSet<K>, _>>().ok();
        Tracked { map, keys }
    }

    /// Whether the map may hold `k` (false only when it is known not to).
    fn may_hold(&self, k: &K) -> bool {
        self.keys.as_ref().is_none_or(|keys| keys.contains(k))
    }

    fn note_inserted(&mut self, k: &K) {
        if let Some(keys) = &mut self.keys {
            keys.insert(*k);
        }
    }

    fn note_removed(&mut self, k: &K) {
        if let Some(keys) = &mut self.keys {
            keys.remove(k);
        }
    }
}

/// Inserts or replaces the rule under `k` in map `name`.
fn insert_rule<K: RuleKey, V: Pod>(
    m: &RuleMap<K, V>,
    name: &'static str,
    k: &K,
    v: &V,
) -> Result<(), RulesError> {
    let mut m = lock(m);
    m.map.insert(k, v, 0).map_err(|e| match &e {
        MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            RulesError::Full(name)
        }
        _ => map_err(name)(e),
    })?;
    m.note_inserted(k);
    Ok(())
}

/// The rule under `k` in map `name`, None if there is none.
fn get_rule<K: RuleKey, V: Pod>(
    m: &RuleMap<K, V>,
    name: &'static str,
    k: &K,
) -> Result<Option<V>, RulesError> {
    let m = lock(m);
    if !m.may_hold(k) {
        return Ok(None);
    }
    match m.map.get(k, 0) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// Removes the rule under `k` from map `name`; Ok(false) if there was none.
fn remove_rule<K: RuleKey, V: Pod>(
    m: &RuleMap<K, V>,
    name: &'static str,
    k: &K,
) -> Result<bool, RulesError> {
    let mut m = lock(m);
    if !m.may_hold(k) {
        return Ok(false);
    }
    // A failed delete leaves the key noted: the next delete tries again.
    let removed = match m.map.remove(k) {
        Ok(()) => true,
        Err(e) if is_not_found(&e) => false,
        Err(e) => return Err(map_err(name)(e)),
    };
    m.note_removed(k);
    Ok(removed)
}

/// Rules read per `BPF_MAP_LOOKUP_BATCH` in [`TurnMaps::stats_range`] (32 KiB of
/// values per possible CPU).
const STATS_BATCH: usize = 2048;

/// The TURN maps of a loaded XDP object, shared by the workers.
pub struct TurnMaps {
    channels: RuleMap<ChannelKey, ChannelRule>,
    /// The IPv4 clients' channel rules (see `maps::CHANNELS_V4`).
    channels_v4: RuleMap<ChannelKeyV4, ChannelRule>,
    /// `TURN_CHANNEL_TABLE`, in front of `channels_v4` (None: off, see [`open_channel_table`]).
    table: Option<Mutex<OwnedTable<ChannelSlot>>>,
    peers: RuleMap<PeerKey, PeerRule>,
    /// `TURN_PEER_TABLE`, in front of `peers` (None: off, as `table`).
    peer_table: Option<Mutex<OwnedTable<PeerSlot>>>,
    allocs: RuleMap<AllocKey, AllocRule>,
    stats: Mutex<PerCpuArray<MapData, RuleStats>>,
    bandwidth: Mutex<Array<MapData, Bandwidth>>,
    settings: Mutex<Array<MapData, TurnSettings>>,
    /// `TURN_EGRESS`: the interfaces relayed frames may leave by.
    egress: Mutex<HashMap<MapData, u32, u32>>,
    stats_pool: Mutex<IndexPool>,
    alloc_pool: Mutex<IndexPool>,
    cpus: usize,
    clock: MonoClock,
}

impl std::fmt::Debug for TurnMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnMaps")
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl TurnMaps {
    /// Takes the TURN maps out of `ebpf` (the object keeps its programs; the maps live as
    /// long as this handle or a program using them).
    pub fn take(ebpf: &mut Ebpf) -> Result<TurnMaps, RulesError> {
        // Check all names first so that a missing map takes nothing.
        for name in [
            maps::CHANNELS,
            maps::CHANNELS_V4,
            maps::CHANNEL_TABLE,
            maps::CHANNEL_TABLE_INFO,
            maps::PEER_TABLE,
            maps::PEER_TABLE_INFO,
            maps::PEERS,
            maps::ALLOCS,
            maps::RULE_STATS,
            maps::BANDWIDTH,
            maps::SETTINGS,
            maps::EGRESS,
        ] {
            if ebpf.map(name).is_none() {
                return Err(RulesError::Missing(name));
            }
        }
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, RulesError> {
            let map = ebpf.take_map(name).ok_or(RulesError::Missing(name))?;
            T::try_from(map).map_err(map_err(name))
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| RulesError::Cpus(what, e))?;
        let table = open_channel_table(ebpf)?.map(|t| Mutex::new(OwnedTable::new(t)));
        let peer_table = open_peer_table(ebpf)?.map(|t| Mutex::new(OwnedTable::new(t)));
        Ok(TurnMaps {
            channels: Mutex::new(Tracked::new(take(ebpf, maps::CHANNELS)?)),
            channels_v4: Mutex::new(Tracked::new(take(ebpf, maps::CHANNELS_V4)?)),
            table,
            peers: Mutex::new(Tracked::new(take(ebpf, maps::PEERS)?)),
            peer_table,
            allocs: Mutex::new(Tracked::new(take(ebpf, maps::ALLOCS)?)),
            stats: Mutex::new(take(ebpf, maps::RULE_STATS)?),
            bandwidth: Mutex::new(take(ebpf, maps::BANDWIDTH)?),
            settings: Mutex::new(take(ebpf, maps::SETTINGS)?),
            egress: Mutex::new(take(ebpf, maps::EGRESS)?),
            stats_pool: Mutex::new(IndexPool::new(MAX_RULES)),
            alloc_pool: Mutex::new(IndexPool::new(MAX_ALLOCATIONS)),
            cpus,
            clock: monotonic_anchor()?,
        })
    }

    /// Inserts or replaces a channel rule where the kernel looks first: an IPv4 client's
    /// in `TURN_CHANNEL_TABLE` when it has a compact form and a free slot, else in
    /// `TURN_CHANNELS_V4`; any other in `TURN_CHANNELS`. Copies elsewhere go after the new
    /// one is in place (the kernel finds the old or the new rule meanwhile, never none),
    /// including one an older daemon left under the wide key.
    pub fn insert_channel(&self, k: &ChannelKey, v: &ChannelRule) -> Result<(), RulesError> {
        let Some(k4) = k.v4() else {
            return insert_rule(&self.channels, maps::CHANNELS, k, v);
        };
        let in_table = match &self.table {
            Some(t) => {
                let mut t = lock(t);
                self.settle_channel_table(&mut t);
                if !t.contains(&k4)
                    && let Some(mask) = t.grow_mask()
                {
                    self.resize_channel_table(&mut t, mask);
                }
                t.put(&k4, v)
            }
            None => false,
        };
        if in_table {
            remove_rule(&self.channels_v4, maps::CHANNELS_V4, &k4)?;
        } else {
            insert_rule(&self.channels_v4, maps::CHANNELS_V4, &k4, v)?;
            if let Some(t) = &self.table {
                lock(t).vacate(&k4);
            }
        }
        remove_rule(&self.channels, maps::CHANNELS, k).map(|_| ())
    }

    /// The channel rule under `k`, if any (where the kernel would find it).
    pub fn channel(&self, k: &ChannelKey) -> Result<Option<ChannelRule>, RulesError> {
        if let Some(k4) = k.v4() {
            if let Some(t) = &self.table
                && let Some(v) = lock(t).get(&k4)
            {
                return Ok(Some(v));
            }
            if let Some(v) = get_rule(&self.channels_v4, maps::CHANNELS_V4, &k4)? {
                return Ok(Some(v));
            }
        }
        get_rule(&self.channels, maps::CHANNELS, k)
    }

    /// Removes a channel rule (from the table and both maps); Ok(false) if there was
    /// none.
    pub fn remove_channel(&self, k: &ChannelKey) -> Result<bool, RulesError> {
        let narrow = match k.v4() {
            Some(k4) => {
                let slot = self.table.as_ref().is_some_and(|t| {
                    let mut t = lock(t);
                    self.settle_channel_table(&mut t);
                    let removed = t.remove(&k4);
                    if let Some(mask) = t.shrink_mask() {
                        self.resize_channel_table(&mut t, mask);
                    }
                    removed
                });
                remove_rule(&self.channels_v4, maps::CHANNELS_V4, &k4)? || slot
            }
            None => false,
        };
        Ok(remove_rule(&self.channels, maps::CHANNELS, k)? || narrow)
    }

    /// How many keys the daemon knows each rule hash map to hold: `TURN_CHANNELS`,
    /// `TURN_CHANNELS_V4`, `TURN_PEERS`, `TURN_ALLOCS` (None: unknown, so every delete
    /// is tried; see [`Tracked`]).
    pub fn hash_map_keys(&self) -> [Option<usize>; 4] {
        fn known<K, V>(m: &RuleMap<K, V>) -> Option<usize> {
            lock(m).keys.as_ref().map(HashSet::len)
        }
        [
            known(&self.channels),
            known(&self.channels_v4),
            known(&self.peers),
            known(&self.allocs),
        ]
    }

    /// What `relay stats` shows of the rule tables (`xdp.rule_tables`): per table
    /// (`channel_table_*`, `peer_table_*`) the slots in use, the rules in it, how many
    /// resizes were moves and how many were rebuilt in place (the slow way, only in a
    /// map too small to halve), and the longest time a resize held a worker, in µs; and
    /// the rules in the hash maps behind the tables (`*_hash_map_rules`: slower lookups;
    /// IPv6 and permission rules live there too; many IPv4 channel rules there mean
    /// `xdp.turn_rules` is too small for the load).
    pub fn table_report(&self) -> std::collections::BTreeMap<String, u64> {
        fn table<T: CompactSlot>(
            out: &mut std::collections::BTreeMap<String, u64>,
            name: &str,
            t: &Option<Mutex<OwnedTable<T>>>,
        ) {
            let Some(t) = t else {
                return;
            };
            let t = lock(t);
            let us = u64::try_from(t.longest_resize.as_micros()).unwrap_or(u64::MAX);
            for (what, v) in [
                ("slots", t.in_use() as u64),
                ("rules", t.live() as u64),
                ("moves", t.moves),
                ("rebuilt_in_place", t.rebuilt_in_place),
                ("longest_resize_us", us),
            ] {
                out.insert(format!("{name}_table_{what}"), v);
            }
        }
        let mut out = std::collections::BTreeMap::new();
        table(&mut out, "channel", &self.table);
        table(&mut out, "peer", &self.peer_table);
        let [channels, channels_v4, peers, _] = self.hash_map_keys();
        if let (Some(a), Some(b)) = (channels, channels_v4) {
            out.insert("channel_hash_map_rules".into(), (a + b) as u64);
        }
        if let Some(p) = peers {
            out.insert("peer_hash_map_rules".into(), p as u64);
        }
        out
    }

    /// Whether `TURN_CHANNEL_TABLE` is in use.
    pub fn has_channel_table(&self) -> bool {
        self.table.is_some()
    }

    /// Slots in use and rules held, of the channel table then the peer table (zeros for
    /// a table that is off).
    pub fn table_sizes(&self) -> [(usize, usize); 2] {
        fn sizes<S: super::slot_table::Slots>(t: &SlotTable<S>) -> (usize, usize) {
            (t.in_use(), t.live())
        }
        [
            self.table.as_ref().map_or((0, 0), |t| sizes(&lock(t))),
            self.peer_table.as_ref().map_or((0, 0), |t| sizes(&lock(t))),
        ]
    }

    /// Inserts or replaces a peer rule where the kernel looks first: an IPv4 channel
    /// binding's in `TURN_PEER_TABLE` when it has a compact form and a free slot, any
    /// other in `TURN_PEERS`. The copy in the other place goes after the new one is in
    /// place (the kernel finds the old or the new rule meanwhile, never none).
    pub fn insert_peer(&self, k: &PeerKey, v: &PeerRule) -> Result<(), RulesError> {
        let k4 = k.v4();
        let in_table = match (&self.peer_table, &k4) {
            (Some(t), Some(k4)) => {
                let mut t = lock(t);
                self.settle_peer_table(&mut t);
                if !t.contains(k4)
                    && let Some(mask) = t.grow_mask()
                {
                    self.resize_peer_table(&mut t, mask);
                }
                t.put(k4, v)
            }
            _ => false,
        };
        if in_table {
            return remove_rule(&self.peers, maps::PEERS, k).map(|_| ());
        }
        insert_rule(&self.peers, maps::PEERS, k, v)?;
        if let (Some(t), Some(k4)) = (&self.peer_table, &k4) {
            lock(t).vacate(k4);
        }
        Ok(())
    }

    /// The peer rule under `k`, if any (where the kernel would find it).
    pub fn peer(&self, k: &PeerKey) -> Result<Option<PeerRule>, RulesError> {
        if let (Some(t), Some(k4)) = (&self.peer_table, k.v4())
            && let Some(v) = lock(t).get(&k4)
        {
            return Ok(Some(v));
        }
        get_rule(&self.peers, maps::PEERS, k)
    }

    /// Whether the peer rule under `k` is in `TURN_PEER_TABLE`.
    pub fn peer_in_table(&self, k: &PeerKey) -> bool {
        match (&self.peer_table, k.v4()) {
            (Some(t), Some(k4)) => lock(t).get(&k4).is_some(),
            _ => false,
        }
    }

    /// Removes a peer rule (from the table and the map); Ok(false) if there was none.
    pub fn remove_peer(&self, k: &PeerKey) -> Result<bool, RulesError> {
        let slot = match (&self.peer_table, k.v4()) {
            (Some(t), Some(k4)) => {
                let mut t = lock(t);
                self.settle_peer_table(&mut t);
                let removed = t.remove(&k4);
                if let Some(mask) = t.shrink_mask() {
                    self.resize_peer_table(&mut t, mask);
                }
                removed
            }
            _ => false,
        };
        Ok(remove_rule(&self.peers, maps::PEERS, k)? || slot)
    }

    /// Once a table move's grace period has passed, empties part of the place it left
    /// and drops the hash-map copies of the channel rules it placed (see
    /// [`OwnedTable::settle`]); a failure is logged (a copy left behind is only a second,
    /// identical place for the rule, dropped when the rule is next written).
    fn settle_channel_table(&self, t: &mut OwnedTable<ChannelSlot>) {
        for k in t.settle(Instant::now()) {
            logged(
                "drop a moved channel rule's hash-map copy",
                remove_rule(&self.channels_v4, maps::CHANNELS_V4, &k),
            );
        }
    }

    /// As [`TurnMaps::settle_channel_table`], for the peer table.
    fn settle_peer_table(&self, t: &mut OwnedTable<PeerSlot>) {
        for k in t.settle(Instant::now()) {
            logged(
                "drop a moved peer rule's hash-map copy",
                remove_rule(&self.peers, maps::PEERS, &k.widen()),
            );
        }
    }

    /// Moves the channel table to `mask + 1` slots (see [`resize_table`]); a failure is
    /// logged: the rules stay where the kernel finds them.
    fn resize_channel_table(&self, t: &mut OwnedTable<ChannelSlot>, mask: u32) {
        let copy = |k: &ChannelKeyV4, v: &ChannelRule| {
            insert_rule(&self.channels_v4, maps::CHANNELS_V4, k, v)
        };
        let drop_copy = |k: &ChannelKeyV4| remove_rule(&self.channels_v4, maps::CHANNELS_V4, k);
        let get = |k: &ChannelKeyV4| get_rule(&self.channels_v4, maps::CHANNELS_V4, k);
        log_resize(
            maps::CHANNEL_TABLE,
            resize_table(t, mask, maps::CHANNEL_TABLE_INFO, get, copy, drop_copy),
        );
    }

    /// As [`TurnMaps::resize_channel_table`], for the peer table.
    fn resize_peer_table(&self, t: &mut OwnedTable<PeerSlot>, mask: u32) {
        let copy =
            |k: &PeerKeyV4, v: &PeerRule| insert_rule(&self.peers, maps::PEERS, &k.widen(), v);
        let drop_copy = |k: &PeerKeyV4| remove_rule(&self.peers, maps::PEERS, &k.widen());
        let get = |k: &PeerKeyV4| get_rule(&self.peers, maps::PEERS, &k.widen());
        log_resize(
            maps::PEER_TABLE,
            resize_table(t, mask, maps::PEER_TABLE_INFO, get, copy, drop_copy),
        );
    }

    /// Inserts or replaces an allocation rule.
    pub fn insert_alloc(&self, k: &AllocKey, v: &AllocRule) -> Result<(), RulesError> {
        insert_rule(&self.allocs, maps::ALLOCS, k, v)
    }

    /// The allocation rule under `k`, if any.
    pub fn alloc(&self, k: &AllocKey) -> Result<Option<AllocRule>, RulesError> {
        get_rule(&self.allocs, maps::ALLOCS, k)
    }

    /// Removes an allocation rule; Ok(false) if there was none.
    pub fn remove_alloc(&self, k: &AllocKey) -> Result<bool, RulesError> {
        remove_rule(&self.allocs, maps::ALLOCS, k)
    }

    /// Rule `idx`'s packets and bytes, summed over CPUs.
    pub fn stats(&self, idx: u32) -> Result<RuleStats, RulesError> {
        let values = lock(&self.stats)
            .get(&idx, 0)
            .map_err(map_err(maps::RULE_STATS))?;
        Ok(values.iter().fold(RuleStats::default(), |a, v| RuleStats {
            packets: a.packets.wrapping_add(v.packets),
            bytes: a.bytes.wrapping_add(v.bytes),
        }))
    }

    /// The counters of rules `first..first + out.len()`, summed over CPUs, into `out`:
    /// one `BPF_MAP_LOOKUP_BATCH` per [`STATS_BATCH`] rules instead of one lookup each.
    /// Why: the workers fold every rule's counters once a second, and at 10 000
    /// allocations one lookup per rule kept a worker in the kernel for about 0.1 s of
    /// every second, delaying all the userspace traffic it serves. Falls back to one
    /// lookup per rule on kernels without batch commands.
    pub fn stats_range(&self, first: u32, out: &mut [RuleStats]) -> Result<(), RulesError> {
        self.stats_range_by(first, out, STATS_BATCH)
    }

    /// [`TurnMaps::stats_range`], `batch` rules per read.
    fn stats_range_by(
        &self,
        first: u32,
        out: &mut [RuleStats],
        batch: usize,
    ) -> Result<(), RulesError> {
        let batch = batch.max(1);
        let guard = lock(&self.stats);
        let fd = std::os::fd::AsFd::as_fd(aya::maps::IterableMap::map(&*guard).fd());
        let cpus = self.cpus.max(1);
        let mut keys = vec![0u32; batch];
        let mut values = vec![RuleStats::default(); batch * cpus];
        let mut done = 0usize;
        while done < out.len() {
            let n = (out.len() - done).min(batch);
            let after = (first as usize + done).checked_sub(1).map(|a| a as u32);
            let read = match bpf_sys::array_lookup_batch(
                fd,
                after,
                &mut keys[..n],
                &mut values[..n * cpus],
            ) {
                Ok(r) => r,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
                    // No batch commands (524 = ENOTSUPP inside the kernel): one by one.
                    drop(guard);
                    for (i, o) in out.iter_mut().enumerate().skip(done) {
                        *o = self.stats(first + i as u32)?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    return Err(RulesError::Map {
                        name: maps::RULE_STATS,
                        source: MapError::IoError(e),
                    });
                }
            };
            for (k, o) in out[done..done + read].iter_mut().enumerate() {
                *o = values[k * cpus..(k + 1) * cpus]
                    .iter()
                    .fold(RuleStats::default(), |a, v| RuleStats {
                        packets: a.packets.wrapping_add(v.packets),
                        bytes: a.bytes.wrapping_add(v.bytes),
                    });
            }
            if read < n {
                // Past the array's end: nothing there counts.
                out[done + read..].fill(RuleStats::default());
                return Ok(());
            }
            done += n;
        }
        Ok(())
    }

    /// Sets rule `idx`'s counters on every CPU to `v` (zero to reset).
    pub fn set_stats(&self, idx: u32, v: RuleStats) -> Result<(), RulesError> {
        let values = PerCpuValues::try_from(vec![v; self.cpus]).map_err(|e| RulesError::Map {
            name: maps::RULE_STATS,
            source: MapError::IoError(e),
        })?;
        lock(&self.stats)
            .set(idx, values, 0)
            .map_err(map_err(maps::RULE_STATS))
    }

    /// Allocation `idx`'s bandwidth entry.
    pub fn bandwidth(&self, idx: u32) -> Result<Bandwidth, RulesError> {
        lock(&self.bandwidth)
            .get(&idx, 0)
            .map_err(map_err(maps::BANDWIDTH))
    }

    /// Writes allocation `idx`'s bandwidth entry.
    pub fn set_bandwidth(&self, idx: u32, v: &Bandwidth) -> Result<(), RulesError> {
        lock(&self.bandwidth)
            .set(idx, v, 0)
            .map_err(map_err(maps::BANDWIDTH))
    }

    /// The settings entry.
    pub fn settings(&self) -> Result<TurnSettings, RulesError> {
        lock(&self.settings)
            .get(&0, 0)
            .map_err(map_err(maps::SETTINGS))
    }

    /// Writes the settings entry (`flags` 0 turns TURN relaying in the kernel off).
    pub fn set_settings(&self, v: &TurnSettings) -> Result<(), RulesError> {
        lock(&self.settings)
            .set(0, v, 0)
            .map_err(map_err(maps::SETTINGS))
    }

    /// Makes `ifindexes` the interfaces the kernel may relay out of (`TURN_EGRESS`, read
    /// with `SETTING_EGRESS_CHECKED`; at most `MAX_EGRESS`): the new ones are added
    /// before the others go, so that an interface in both sets is never missing.
    pub fn set_egress(&self, ifindexes: &[u32]) -> Result<(), RulesError> {
        let mut m = lock(&self.egress);
        for &i in ifindexes {
            m.insert(i, 1, 0).map_err(map_err(maps::EGRESS))?;
        }
        let old: Vec<u32> = m
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::EGRESS))?;
        for i in old.into_iter().filter(|i| !ifindexes.contains(i)) {
            m.remove(&i).map_err(map_err(maps::EGRESS))?;
        }
        Ok(())
    }

    /// Rule and allocation indices in use.
    pub fn indices_in_use(&self) -> (u32, u32) {
        (
            lock(&self.stats_pool).in_use(),
            lock(&self.alloc_pool).in_use(),
        )
    }
}

/// Maps `TURN_CHANNEL_TABLE` of `ebpf` and tells the kernel its seed and mask; see
/// [`open_slot_table`].
pub fn open_channel_table(ebpf: &mut Ebpf) -> Result<Option<ChannelTable>, RulesError> {
    open_slot_table(
        ebpf,
        maps::CHANNEL_TABLE,
        maps::CHANNEL_TABLE_INFO,
        "IPv4 channel rules go to TURN_CHANNELS_V4",
    )
}

/// Maps `TURN_PEER_TABLE` of `ebpf` and tells the kernel its seed and mask; see
/// [`open_slot_table`].
pub fn open_peer_table(ebpf: &mut Ebpf) -> Result<Option<PeerTable>, RulesError> {
    open_slot_table(
        ebpf,
        maps::PEER_TABLE,
        maps::PEER_TABLE_INFO,
        "IPv4 channel bindings' peer rules go to TURN_PEERS",
    )
}

/// Maps the compact table `name` of `ebpf` and tells the kernel its seed and mask (in
/// `info_name`): the seed of a table already in use (adopted from a previous daemon: its
/// slots stay where they are), else a fresh random one. None (the table off, its info
/// left as it is) off x86_64, whose load order the kernel's seqlock reader relies on,
/// and when the map cannot be mapped (logged with `instead`): the rules then all go to
/// the hash maps. The maps stay in `ebpf` (the mapping holds its own reference).
pub fn open_slot_table<T: CompactSlot>(
    ebpf: &mut Ebpf,
    name: &'static str,
    info_name: &'static str,
    instead: &str,
) -> Result<Option<SlotTable<MappedSlots<T>>>, RulesError> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(None);
    }
    let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
        return Err(RulesError::Missing(name));
    };
    let len = data.info().map_err(map_err(name))?.max_entries() as usize;
    let info = {
        let Some(aya::maps::Map::Array(info)) = ebpf.map(info_name) else {
            return Err(RulesError::Missing(info_name));
        };
        let fd = std::os::fd::AsFd::as_fd(info.fd())
            .try_clone_to_owned()
            .map_err(|e| RulesError::TableInfo(info_name, e))?;
        let data = MapData::from_fd(fd).map_err(map_err(info_name))?;
        Array::<MapData, SlotTableInfo>::try_from(aya::maps::Map::Array(data))
            .map_err(map_err(info_name))?
    };
    let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
        return Err(RulesError::Missing(name));
    };
    let slots = match MappedSlots::map(std::os::fd::AsFd::as_fd(data.fd()), len, info) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot mmap the kernel rule table {name}: {instead} (a little slower with \
                 many allocations)"
            );
            return Ok(None);
        }
    };
    let old: SlotTableInfo = {
        let info: Array<&MapData, SlotTableInfo> = ebpf
            .map(info_name)
            .ok_or(RulesError::Missing(info_name))
            .and_then(|m| Array::try_from(m).map_err(map_err(info_name)))?;
        info.get(&0, 0).map_err(map_err(info_name))?
    };
    // A table in use (adopted: its slots stay where they are) keeps its seed and mask.
    let in_use = old.mask != 0
        && (old.mask as usize + 1).is_power_of_two()
        && (old.mask as usize) < len
        && (old.base as usize + old.mask as usize) < len;
    let table = if in_use {
        SlotTable::new(slots, old.seed, Some((old.mask, old.base)))
    } else {
        SlotTable::new(slots, random_seed(), None)
    };
    let mut table = table;
    table
        .publish()
        .map_err(|e| RulesError::TableInfo(info_name, e))?;
    Ok(Some(table))
}

/// How long after the kernel was told a table's new place the old place stays as it was:
/// a program run that read the old base (or the old "off") just before still finds its
/// rules there (a run takes well under a microsecond; this also covers one interrupted
/// for long).
const RESIZE_GRACE: std::time::Duration = std::time::Duration::from_millis(2);

/// What a resize did: slots before and after, rules moved, rules left in the hash map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// Slots in use before.
    pub from: usize,
    /// Slots in use after.
    pub to: usize,
    /// Rules the table held.
    pub rules: usize,
    /// Of them, those that found no free slot under the new mask (now in the hash map).
    pub in_hash_map: usize,
}

/// Moves table `t` to `mask + 1` slots so that the kernel finds every rule throughout,
/// taking in the rules it had refused for want of a slot (read back from the hash map
/// with `get`).
///
/// Where the map has room beside the table ([`SlotTable::region_beside`]), the rules are
/// laid out there while the kernel reads the old place ([`SlotTable::stage`]); those
/// without a slot in the new layout are copied to their hash map (`copy`), then the
/// kernel is told the new place. The refused rules now placed keep their hash-map copies
/// until [`RESIZE_GRACE`] has passed ([`OwnedTable::settle`]). On an error the
/// table stays where it was, and the copies made are removed.
///
/// Otherwise (a map too small to halve, whose table is all of it) the table is rebuilt
/// in place: each rule is copied to its hash map, then [`SlotTable::rebuild`] turns the
/// table off, re-places the rules and turns it on at the new mask; after
/// [`RESIZE_GRACE`] the hash-map entries of the rules now in the table are removed
/// (`drop_copy`). If a copy fails, the copies made so far are removed and the table
/// keeps its size; if the rebuild fails, the table stays off and every copy stays.
pub fn resize_table<T: CompactSlot>(
    t: &mut OwnedTable<T>,
    mask: u32,
    info_name: &'static str,
    get: impl Fn(&T::Key) -> Result<Option<T::Rule>, RulesError>,
    copy: impl Fn(&T::Key, &T::Rule) -> Result<(), RulesError>,
    drop_copy: impl Fn(&T::Key) -> Result<bool, RulesError>,
) -> Result<Resized, RulesError> {
    let started = Instant::now();
    let mut rules = t.rules();
    let (from, own) = (t.in_use(), rules.len());
    for k in t.refused() {
        if let Some(v) = get(&k)? {
            rules.push((k, v));
        }
    }
    if let Some(region) = t.region_beside(mask) {
        if region.reuses_retired
            && let Some(at) = t.moved_at
        {
            std::thread::sleep(RESIZE_GRACE.saturating_sub(at.elapsed()));
        }
        let staged = t.slots.stage(region, mask, &rules);
        let unplaced = staged.unplaced().to_vec();
        // The table's own rules without a slot go to the hash map before the kernel is
        // told; on an error `staged` is dropped uncommitted (the table as it was).
        let mut copied = Vec::new();
        let outcome = unplaced
            .iter()
            .filter(|&&i| i < own)
            .try_for_each(|&i| {
                copy(&rules[i].0, &rules[i].1)?;
                copied.push(&rules[i].0);
                Ok(())
            })
            .and_then(|()| {
                staged
                    .commit()
                    .map_err(|e| RulesError::TableInfo(info_name, e))
            });
        if let Err(e) = outcome {
            for k in copied {
                // Best effort: these rules are still in the table the kernel reads.
                let _ = drop_copy(k);
            }
            return Err(e);
        }
        t.moved_at = Some(Instant::now());
        t.moves += 1;
        t.longest_resize = t.longest_resize.max(started.elapsed());
        let unplaced: HashSet<usize> = unplaced.into_iter().collect();
        let placed_refused = (own..rules.len()).filter(|i| !unplaced.contains(i));
        t.stale_copies.extend(placed_refused.map(|i| rules[i].0));
        return Ok(Resized {
            from,
            to: t.in_use(),
            rules: rules.len(),
            in_hash_map: unplaced.len(),
        });
    }
    for (i, (k, v)) in rules[..own].iter().enumerate() {
        if let Err(e) = copy(k, v) {
            for (k, _) in &rules[..i] {
                // Best effort: a copy left behind only costs the kernel a slower lookup
                // once the table entry is gone.
                let _ = drop_copy(k);
            }
            return Err(e);
        }
    }
    let unplaced: HashSet<T::Key> = t
        .slots
        .rebuild(mask, &rules)
        .map_err(|e| RulesError::TableInfo(info_name, e))?
        .into_iter()
        .collect();
    std::thread::sleep(RESIZE_GRACE);
    for (k, _) in rules.iter().filter(|(k, _)| !unplaced.contains(k)) {
        drop_copy(k)?;
    }
    t.rebuilt_in_place += 1;
    t.longest_resize = t.longest_resize.max(started.elapsed());
    Ok(Resized {
        from,
        to: t.in_use(),
        rules: rules.len(),
        in_hash_map: unplaced.len(),
    })
}

/// The table's own mask when some of its keys are stored where the kernel's probe never
/// reaches (see [`SlotTable::hidden`]): a rebuild at the same size places them again.
fn rebuild_in_place<S: Slots>(t: &SlotTable<S>) -> Option<u32> {
    (t.in_use() > 0 && t.hidden() > 0).then(|| t.info().mask)
}

fn log_resize(table: &'static str, r: Result<Resized, RulesError>) {
    match r {
        Ok(r) if r.from == r.to => tracing::info!(
            table,
            slots = r.to,
            rules = r.rules,
            in_hash_map = r.in_hash_map,
            "kernel rule table rebuilt at its size (removed rules' slots emptied, every rule where the kernel probes)"
        ),
        Ok(r) => tracing::info!(
            table,
            from = r.from,
            to = r.to,
            rules = r.rules,
            in_hash_map = r.in_hash_map,
            "kernel rule table resized to its number of rules"
        ),
        Err(e) => tracing::warn!(
            table,
            error = %e,
            "kernel rule table not resized: its rules stay where the kernel finds them, which costs speed only"
        ),
    }
}

/// 8 bytes from getrandom(2), else from the clock (the seed only spreads keys).
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: `b` is a valid writable buffer of 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// How often a full rule table is reported (it can refuse thousands of rules a second).
const FULL_WARN_EVERY: Duration = Duration::from_secs(60);

/// Refusals by a full table since the last report, and when that was.
static FULL_REFUSALS: Mutex<FullReports> = Mutex::new(FullReports {
    last: None,
    since: 0,
});

/// The rate limit of the "table full" warning.
#[derive(Debug)]
struct FullReports {
    last: Option<Instant>,
    since: u64,
}

impl FullReports {
    /// Counts one refusal at `now`; Some(refusals to report) when a warning is due (the
    /// first one at once, then at most one per [`FULL_WARN_EVERY`]).
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        match self.last {
            Some(t) if now.duration_since(t) < FULL_WARN_EVERY => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.since))
            }
        }
    }
}

fn logged<T>(what: &'static str, r: Result<T, RulesError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e @ RulesError::Full(_)) => {
            if let Some(n) = lock(&FULL_REFUSALS).refused(Instant::now()) {
                tracing::warn!(
                    error = %e,
                    refused = n,
                    "TURN fast path: {what} failed (reported at most once a minute, with \
                     the rules refused since)"
                );
            }
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "TURN fast path: {what} failed; that traffic stays in userspace");
            None
        }
    }
}

impl FastRules for TurnMaps {
    fn monotonic_ns(&self, at: Instant) -> u64 {
        self.clock.ns(at).saturating_sub(COARSE_CLOCK_SLACK_NS)
    }

    fn take_alloc_index(&self, rate: u64) -> Option<u32> {
        let idx = lock(&self.alloc_pool).take()?;
        let fresh = Bandwidth {
            rate,
            ..Bandwidth::default()
        };
        if logged(
            "resetting a bandwidth entry",
            self.set_bandwidth(idx, &fresh),
        )
        .is_none()
        {
            lock(&self.alloc_pool).release(idx);
            return None;
        }
        Some(idx)
    }

    fn release_alloc_index(&self, idx: u32) {
        lock(&self.alloc_pool).release(idx);
    }

    fn take_stats_index(&self) -> Option<u32> {
        let idx = lock(&self.stats_pool).take()?;
        if logged(
            "resetting rule counters",
            self.set_stats(idx, RuleStats::default()),
        )
        .is_none()
        {
            lock(&self.stats_pool).release(idx);
            return None;
        }
        Some(idx)
    }

    fn release_stats_index(&self, idx: u32) {
        lock(&self.stats_pool).release(idx);
    }

    fn put_channel(&self, key: &ChannelKey, rule: &ChannelRule) -> bool {
        logged("installing a channel rule", self.insert_channel(key, rule)).is_some()
    }

    fn del_channel(&self, key: &ChannelKey) {
        logged("removing a channel rule", self.remove_channel(key));
    }

    fn put_peer(&self, key: &PeerKey, rule: &PeerRule) -> bool {
        logged("installing a peer rule", self.insert_peer(key, rule)).is_some()
    }

    fn del_peer(&self, key: &PeerKey) {
        logged("removing a peer rule", self.remove_peer(key));
    }

    fn put_alloc(&self, key: &AllocKey, rule: &AllocRule) -> bool {
        logged(
            "installing an allocation rule",
            self.insert_alloc(key, rule),
        )
        .is_some()
    }

    fn del_alloc(&self, key: &AllocKey) {
        logged("removing an allocation rule", self.remove_alloc(key));
    }

    fn table_report(&self) -> std::collections::BTreeMap<String, u64> {
        TurnMaps::table_report(self)
    }

    fn rule_stats(&self, stats_idx: u32) -> RuleStats {
        logged("reading rule counters", self.stats(stats_idx)).unwrap_or_default()
    }

    fn rule_stats_range(&self, first: u32, out: &mut [RuleStats]) -> bool {
        logged("reading rule counters", self.stats_range(first, out)).is_some()
    }

    fn adopt_owned(&self, stats: &[u32], allocs: &[u32]) -> usize {
        match self.retain_owned(stats, allocs) {
            Ok(a) => a.removed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot clean up the adopted TURN rules; orphans stay until their deadlines");
                0
            }
        }
    }
}

impl IndexPool {
    /// Marks `i` as in use (an index a previous daemon handed out, found in adopted maps).
    /// Ignored if out of range.
    pub fn reserve(&mut self, i: u32) {
        if i >= self.limit {
            return;
        }
        if i >= self.next {
            self.free.extend(self.next..i);
            self.next = i + 1;
        } else {
            self.free.retain(|&f| f != i);
        }
    }
}

/// What [`TurnMaps::adopt_existing`] found in maps left by a previous daemon.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Live rules kept (channel, peer and allocation rules), their indices reserved.
    pub kept: usize,
    /// Expired rules removed.
    pub removed: usize,
}

/// The fields of a rule that adoption looks at.
trait AdoptedRule {
    /// (`expires_ns`, `stats_idx`, `alloc_idx`).
    fn indices(&self) -> (u64, u32, u32);
}

macro_rules! adopted_rule {
    ($($t:ty),*) => {$(
        impl AdoptedRule for $t {
            fn indices(&self) -> (u64, u32, u32) {
                (self.expires_ns, self.stats_idx, self.alloc_idx)
            }
        }
    )*};
}
adopted_rule!(ChannelRule, PeerRule, AllocRule);

/// Removes the rules of `m` for which `keep(expires_ns, stats_idx, alloc_idx)` is false,
/// and adds the `stats_idx` of every rule it held to `seen`.
fn sweep_map<K: RuleKey, V: Pod + AdoptedRule>(
    m: &RuleMap<K, V>,
    keep: &mut impl FnMut(u64, u32, u32) -> bool,
    seen: &mut HashSet<u32>,
    out: &mut Adopted,
) {
    let mut m = lock(m);
    let rules: Vec<_> = m.map.iter().filter_map(Result::ok).collect();
    for (k, v) in rules {
        let (e, s, a) = v.indices();
        seen.insert(s);
        if keep(e, s, a) {
            out.kept += 1;
        } else {
            if m.map.remove(&k).is_ok() {
                m.note_removed(&k);
            }
            out.removed += 1;
        }
    }
}

impl TurnMaps {
    /// Keeps the rules of every map and of the channel table for which `keep(expires_ns,
    /// stats_idx, alloc_idx)` is true and removes the others, the table's torn or
    /// unreachable slots, and its shadowed ones (see [`shadowed_slot`]).
    fn sweep_all(&self, mut keep: impl FnMut(u64, u32, u32) -> bool) -> Adopted {
        let mut out = Adopted::default();
        let mut in_maps = HashSet::new();
        sweep_map(&self.channels, &mut keep, &mut in_maps, &mut out);
        sweep_map(&self.channels_v4, &mut keep, &mut in_maps, &mut out);
        sweep_map(&self.peers, &mut keep, &mut in_maps, &mut out);
        sweep_map(&self.allocs, &mut keep, &mut in_maps, &mut out);
        if let Some(t) = &self.table {
            let mut t = lock(t);
            let (kept, removed) = t.retain(|k, v| {
                !self.shadowed_slot(k, v, &in_maps) && keep(v.expires_ns, v.stats_idx, v.alloc_idx)
            });
            out.kept += kept;
            out.removed += removed;
            if let Some(mask) = t.shrink_mask().or_else(|| rebuild_in_place(&t)) {
                self.resize_channel_table(&mut t, mask);
            }
        }
        if let Some(t) = &self.peer_table {
            let mut t = lock(t);
            let (kept, removed) = t.retain(|k, v| {
                !self.shadowed_peer_slot(k, v, &in_maps)
                    && keep(v.expires_ns, v.stats_idx, v.alloc_idx)
            });
            out.kept += kept;
            out.removed += removed;
            if let Some(mask) = t.shrink_mask().or_else(|| rebuild_in_place(&t)) {
                self.resize_peer_table(&mut t, mask);
            }
        }
        out
    }
}

impl TurnMaps {
    /// Whether the table slot `k` → `v` is stale: its key also has a rule in a hash map,
    /// or its `stats_idx` belongs to a rule there (`in_maps`). This build never leaves a
    /// key in two places or gives two rules one index, so such a slot was left by a
    /// daemon that did not manage the table: an older one, run after this one on the same
    /// pins. Its program never read the table, and it removed and reassigned rules in the
    /// hash maps only, so the slot may name a channel it has since removed, a relayed
    /// address it freed, or another rule's counters. (A daemon stopped between writing a
    /// key's slot and removing its hash-map copy also leaves two: the hash map's is then
    /// the one kept, and the restored allocation rewrites it.)
    fn shadowed_slot(&self, k: &ChannelKeyV4, v: &ChannelRule, in_maps: &HashSet<u32>) -> bool {
        in_maps.contains(&v.stats_idx)
            || !matches!(get_rule(&self.channels_v4, maps::CHANNELS_V4, k), Ok(None))
            || !matches!(
                get_rule(&self.channels, maps::CHANNELS, &k.widen()),
                Ok(None)
            )
    }

    /// As [`TurnMaps::shadowed_slot`], for a `TURN_PEER_TABLE` slot and `TURN_PEERS`.
    fn shadowed_peer_slot(&self, k: &PeerKeyV4, v: &PeerRule, in_maps: &HashSet<u32>) -> bool {
        in_maps.contains(&v.stats_idx)
            || !matches!(get_rule(&self.peers, maps::PEERS, &k.widen()), Ok(None))
    }
}

impl TurnMaps {
    /// For maps adopted from a previous daemon: removes the rules whose deadline has
    /// passed and reserves the `stats_idx`/`alloc_idx` of the live ones, so that new
    /// rules never share an index with a rule the kernel still applies. The live rules
    /// keep relaying until their deadlines.
    pub fn adopt_existing(&self) -> Result<Adopted, RulesError> {
        let now = monotonic_anchor()?.ns(Instant::now());
        let mut idx = Vec::new();
        let out = self.sweep_all(|expires_ns, stats_idx, alloc_idx| {
            let live = expires_ns > now;
            if live {
                idx.push((stats_idx, alloc_idx));
            }
            live
        });
        let mut stats = lock(&self.stats_pool);
        let mut allocs = lock(&self.alloc_pool);
        // Out-of-range indices (none set) are ignored by `reserve`.
        for (s, a) in idx {
            stats.reserve(s);
            allocs.reserve(a);
        }
        Ok(out)
    }
}

/// Whether an adopted rule stays: not expired at `now_ns`, and its `stats_idx` owned by a
/// restored allocation.
fn keep_adopted(expires_ns: u64, stats_idx: u32, now_ns: u64, owned: &[u32]) -> bool {
    expires_ns > now_ns && owned.contains(&stats_idx)
}

impl TurnMaps {
    /// After a restart with restored allocations: removes every rule that is expired or
    /// whose `stats_idx` is not in `stats` (orphans: rules of allocations the state file
    /// does not know), and reserves the indices in `stats` and `allocs` (whether or not
    /// the maps still hold their rules: the restored allocations rewrite them). Used
    /// instead of [`TurnMaps::adopt_existing`] when a snapshot was restored.
    pub fn retain_owned(&self, stats: &[u32], allocs: &[u32]) -> Result<Adopted, RulesError> {
        let now = monotonic_anchor()?.ns(Instant::now());
        let out = self
            .sweep_all(|expires_ns, stats_idx, _| keep_adopted(expires_ns, stats_idx, now, stats));
        let mut sp = lock(&self.stats_pool);
        for &s in stats {
            sp.reserve(s);
        }
        drop(sp);
        let mut ap = lock(&self.alloc_pool);
        for &a in allocs {
            ap.reserve(a);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_is_reported_at_once_then_once_a_minute_with_the_count() {
        let mut r = FullReports {
            last: None,
            since: 0,
        };
        let t0 = Instant::now();
        assert_eq!(r.refused(t0), Some(1));
        for i in 1..=500u64 {
            assert_eq!(r.refused(t0 + Duration::from_millis(i)), None);
        }
        let later = t0 + FULL_WARN_EVERY;
        assert_eq!(r.refused(later), Some(501));
        assert_eq!(r.refused(later + Duration::from_secs(1)), None);
    }

    #[test]
    fn adopted_rules_stay_only_when_live_and_owned() {
        assert!(keep_adopted(10, 3, 5, &[1, 3]));
        assert!(!keep_adopted(10, 4, 5, &[1, 3]), "orphan");
        assert!(!keep_adopted(5, 3, 5, &[1, 3]), "expired");
        assert!(!keep_adopted(10, 3, 5, &[]), "nothing restored");
    }

    #[test]
    fn pool_hands_out_in_order_reuses_and_stops_at_the_limit() {
        let mut p = IndexPool::new(3);
        assert_eq!(p.take(), Some(0));
        assert_eq!(p.take(), Some(1));
        assert_eq!(p.take(), Some(2));
        assert_eq!(p.take(), None);
        assert_eq!(p.in_use(), 3);
        p.release(1);
        p.release(7); // never handed out: ignored
        assert_eq!(p.in_use(), 2);
        assert_eq!(p.take(), Some(1));
        assert_eq!(p.take(), None);
    }

    #[test]
    fn reserved_indices_are_not_handed_out() {
        let mut p = IndexPool::new(8);
        p.reserve(3);
        p.reserve(1);
        p.reserve(3);
        p.reserve(99); // out of range: ignored
        assert_eq!(p.in_use(), 2);
        let mut got: Vec<u32> = std::iter::from_fn(|| p.take()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn anchor_converts_instants_monotonically() {
        let c = monotonic_anchor().expect("clock");
        let t = Instant::now();
        let a = c.ns(t);
        let b = c.ns(t + std::time::Duration::from_secs(300));
        assert_eq!(b - a, 300_000_000_000);
        // The anchor agrees with a fresh CLOCK_MONOTONIC reading within a second.
        let again = monotonic_anchor().expect("clock");
        let now = Instant::now();
        let diff = c.ns(now).abs_diff(again.ns(now));
        assert!(diff < 1_000_000_000, "{diff} ns apart");
    }
}

/// Round trip through the real maps of the embedded object (loaded, not attached).
#[cfg(test)]
mod privileged {
    use super::*;
    use relay_common::turn::{
        SETTING_DATA_INDICATIONS, SETTING_ENABLED, SETTING_SEND_INDICATIONS, mapped_v4, wire,
    };

    use crate::xdp::can_run_privileged as can_run;

    /// The embedded object with rule maps of the smallest size, and its TURN maps.
    fn small_maps() -> (aya::Ebpf, TurnMaps) {
        let mut ebpf = super::super::load_object_pinned(&[3478], None, crate::xdp::TURN_RULES_MIN)
            .expect("load the embedded object with small rule maps");
        let m = TurnMaps::take(&mut ebpf).expect("the object has the TURN maps");
        (ebpf, m)
    }

    #[test]
    fn the_egress_set_is_replaced_whole() {
        if !can_run("the_egress_set_is_replaced_whole") {
            return;
        }
        let (_ebpf, m) = small_maps();
        // The interfaces in TURN_EGRESS, in ascending order.
        let egress = |m: &TurnMaps| {
            let mut v: Vec<u32> = lock(&m.egress).keys().map(|k| k.expect("key")).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(egress(&m), Vec::<u32>::new());
        m.set_egress(&[5, 3]).expect("set");
        assert_eq!(egress(&m), vec![3, 5]);
        m.set_egress(&[7, 5]).expect("set");
        assert_eq!(egress(&m), vec![5, 7]);
        m.set_egress(&[]).expect("set");
        assert_eq!(egress(&m), Vec::<u32>::new());
    }

    /// Channel key `i`: IPv4 client 198.51.x.y:40000 to 192.0.2.1:3478, channel 0x4001.
    fn numbered_key(i: u32) -> ChannelKey {
        ChannelKey {
            client_addr: mapped_v4([198, 51, (i >> 8) as u8, i as u8]),
            server_addr: mapped_v4([192, 0, 2, 1]),
            client_port: wire(40000),
            server_port: wire(3478),
            channel: wire(0x4001),
            _pad: [0; 2],
        }
    }

    /// A channel rule that never expires, from the relayed 192.0.2.10:50000 to the peer
    /// 203.0.113.`peer`:7000, with its counter and budget indices.
    fn far_rule(stats_idx: u32, peer: u8, alloc_idx: u32) -> ChannelRule {
        ChannelRule {
            expires_ns: u64::MAX,
            relay_addr: mapped_v4([192, 0, 2, 10]),
            peer_addr: mapped_v4([203, 0, 113, peer]),
            relay_port: wire(50000),
            peer_port: wire(7000),
            flags: 0,
            _pad: 0,
            stats_idx,
            alloc_idx,
        }
    }

    /// The once-a-second fold reads rule counters in batches: what a batch read gives
    /// is what reading each rule alone gives, across batch boundaries, from an offset,
    /// and past the map's end (zero there).
    #[test]
    fn rule_counters_read_in_batches_match_one_by_one() {
        if !can_run("rule_counters_read_in_batches_match_one_by_one") {
            return;
        }
        let (_ebpf, m) = small_maps();
        let len = lock(&m.stats).len();
        assert!(len > 300, "{len}");
        for i in (0..len).step_by(7) {
            let v = RuleStats {
                packets: u64::from(i) + 1,
                bytes: 3 * u64::from(i) + 5,
            };
            m.set_stats(i, v).expect("set");
        }
        let one_by_one: Vec<RuleStats> = (0..len).map(|i| m.stats(i).expect("read")).collect();
        assert!(one_by_one.iter().filter(|v| v.packets != 0).count() > 100);
        for batch in [100, STATS_BATCH] {
            let mut all = vec![RuleStats::default(); len as usize];
            m.stats_range_by(0, &mut all, batch).expect("batch read");
            assert_eq!(all, one_by_one, "batch {batch}");
            let first = 150;
            let mut mid = vec![RuleStats::default(); 250];
            m.stats_range_by(first, &mut mid, batch)
                .expect("from an offset");
            assert_eq!(mid[..], one_by_one[first as usize..first as usize + 250]);
            let tail_from = len - 5;
            let mut tail = vec![
                RuleStats {
                    packets: 99,
                    bytes: 99
                };
                12
            ];
            m.stats_range_by(tail_from, &mut tail, batch)
                .expect("past the end");
            assert_eq!(tail[..5], one_by_one[tail_from as usize..]);
            assert!(tail[5..].iter().all(|v| *v == RuleStats::default()));
        }
    }

    #[test]
    fn a_full_rule_table_is_reported_as_full() {
        if !can_run("a_full_rule_table_is_reported_as_full") {
            return;
        }
        let small = crate::xdp::TURN_RULES_MIN;
        let (_ebpf, m) = small_maps();
        let key = numbered_key;
        let rule = ChannelRule::default();
        for i in 0..small {
            m.insert_channel(&key(i), &rule)
                .expect("within the table's size");
        }
        let e = m
            .insert_channel(&key(small), &rule)
            .expect_err("one past the table's size");
        // IPv4 clients' rules live in the compact map.
        assert!(matches!(e, RulesError::Full(maps::CHANNELS_V4)), "{e}");
        assert!(e.to_string().contains("xdp.turn_rules"), "{e}");
        // Replacing an existing rule still works in a full table.
        m.insert_channel(&key(0), &rule)
            .expect("replace in a full table");
    }

    /// A table moved to a bigger place takes in the rules it had refused for want of a
    /// slot. Their hash-map copies, and the old place, stay for the grace period (a frame
    /// that read the old place may look there, or in the hash map) and go with the first
    /// rule change after it.
    #[test]
    fn a_moved_table_takes_in_refused_rules_and_drops_their_copies_after_the_grace() {
        if !can_run("a_moved_table_takes_in_refused_rules_and_drops_their_copies_after_the_grace") {
            return;
        }
        let mut ebpf = super::super::load_object_pinned(&[3478], None, 8192)
            .expect("load the embedded object");
        let m = TurnMaps::take(&mut ebpf).expect("the TURN maps");
        let t = m.table.as_ref().expect("the table is on (x86_64)");
        let info = lock(t).info();
        assert_eq!((info.base, info.mask), (0, 1023));
        // 20 keys with one home slot: 16 probes place 16, the other 4 are refused.
        let home = |k: &ChannelKey| {
            let (w0, w1) = relay_common::turn::channel_key_words(&k.v4().expect("IPv4"));
            relay_common::turn::slot_home(w0, w1, &info)
        };
        let h = home(&numbered_key(0));
        let keys: Vec<ChannelKey> = (0..60_000)
            .map(numbered_key)
            .filter(|k| home(k) == h)
            .take(20)
            .collect();
        assert_eq!(keys.len(), 20);
        for (i, k) in keys.iter().enumerate() {
            m.insert_channel(k, &far_rule(i as u32, 5, 0))
                .expect("insert");
        }
        assert_eq!(lock(t).refused().len(), 4);
        assert_eq!(m.hash_map_keys()[1], Some(4), "the refused rules' home");

        let mut guard = lock(t);
        m.resize_channel_table(&mut guard, 2047);
        assert_eq!(
            (guard.info().base, guard.info().mask),
            (2048, 2047),
            "moved beside"
        );
        assert_eq!(guard.live(), 20, "all taken in");
        drop(guard);
        assert_eq!(
            m.hash_map_keys()[1],
            Some(4),
            "copies kept through the grace"
        );
        assert_eq!(
            lock(t).outside(),
            16,
            "the old place kept through the grace"
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.channel(k).expect("get"), Some(far_rule(i as u32, 5, 0)));
        }
        std::thread::sleep(RESIZE_GRACE);
        // Any change of the table after the grace drops them; the rules stay in the table.
        m.insert_channel(&numbered_key(60_001), &far_rule(30, 5, 0))
            .expect("insert");
        assert_eq!(m.hash_map_keys()[1], Some(0), "copies dropped");
        assert_eq!(lock(t).outside(), 0, "the old place emptied");
        let report = m.table_report();
        for (what, want) in [
            ("channel_table_slots", 2048),
            ("channel_table_rules", 21),
            ("channel_table_moves", 1),
            ("channel_table_rebuilt_in_place", 0),
            ("channel_hash_map_rules", 0),
            ("peer_table_slots", 1024),
            ("peer_hash_map_rules", 0),
        ] {
            assert_eq!(report.get(what), Some(&want), "{what} in {report:?}");
        }
        assert!(report["channel_table_longest_resize_us"] > 0);
        for (i, k) in keys.iter().enumerate() {
            let k4 = k.v4().expect("IPv4");
            assert_eq!(lock(t).get(&k4), Some(far_rule(i as u32, 5, 0)), "key {i}");
        }
    }

    #[test]
    fn rules_beyond_the_channel_table_go_to_the_hash_map() {
        if !can_run("rules_beyond_the_channel_table_go_to_the_hash_map") {
            return;
        }
        let small = crate::xdp::TURN_RULES_MIN;
        let (_ebpf, m) = small_maps();
        assert!(m.has_channel_table(), "the table is on (x86_64)");
        let key = numbered_key;
        let rule = |i: u32| far_rule(i, 5, i);
        // Twice the table's slots: it cannot hold them all, the hash map takes the rest.
        let n = 2 * small - 64;
        for i in 0..n {
            m.insert_channel(&key(i), &rule(i))
                .expect("table + map hold them");
        }
        let (mut in_table, mut in_map) = (0, 0);
        for i in 0..n {
            let k4 = key(i).v4().expect("IPv4");
            let t = m.table.as_ref().and_then(|t| lock(t).get(&k4));
            let h = get_rule(&m.channels_v4, maps::CHANNELS_V4, &k4).expect("get");
            assert!(t.is_some() != h.is_some(), "rule {i}: in exactly one place");
            assert_eq!(t.or(h), Some(rule(i)));
            assert_eq!(m.channel(&key(i)).expect("get"), Some(rule(i)));
            in_table += usize::from(t.is_some());
            in_map += usize::from(h.is_some());
        }
        assert!(in_table > small as usize * 3 / 4, "{in_table} in the table");
        assert!(in_map > 0);
        // Removing frees slots: a new rule takes one again.
        for i in 0..n {
            assert!(m.remove_channel(&key(i)).expect("remove"));
        }
        m.insert_channel(&key(0), &rule(0)).expect("insert");
        let k4 = key(0).v4().expect("IPv4");
        assert!(m.table.as_ref().and_then(|t| lock(t).get(&k4)).is_some());
        // Adoption keeps the live rule and clears an expired one.
        m.insert_channel(
            &key(1),
            &ChannelRule {
                expires_ns: 1,
                ..rule(1)
            },
        )
        .expect("insert");
        let a = m.adopt_existing().expect("sweep");
        assert_eq!((a.kept, a.removed), (1, 1));
        assert_eq!(m.channel(&key(1)).expect("get"), None);
        assert_eq!(m.channel(&key(0)).expect("get"), Some(rule(0)));
    }

    #[test]
    fn adoption_drops_table_slots_an_older_daemon_left_stale() {
        if !can_run("adoption_drops_table_slots_an_older_daemon_left_stale") {
            return;
        }
        let (_ebpf, m) = small_maps();
        assert!(m.has_channel_table(), "the table is on (x86_64)");
        let key = numbered_key;
        let rule = |stats_idx: u32, peer: u8| far_rule(stats_idx, peer, 0);
        let in_table = |i: u32| {
            let k4 = key(i).v4().expect("IPv4");
            m.table.as_ref().and_then(|t| lock(t).get(&k4))
        };
        // This build's rules, all in the table.
        for i in [0, 1, 2, 4] {
            m.insert_channel(&key(i), &rule(i, 1)).expect("insert");
            assert_eq!(in_table(i), Some(rule(i, 1)), "rule {i} in the table");
        }
        // An older daemon on the same pins writes the hash maps only: it removed channel
        // 1 and gave its index to channel 9, bound channel 2 afresh to another peer, and
        // keeps channel 4 under the wide key.
        let v4 = |i: u32| key(i).v4().expect("IPv4");
        insert_rule(&m.channels_v4, maps::CHANNELS_V4, &v4(9), &rule(1, 2)).expect("insert");
        insert_rule(&m.channels_v4, maps::CHANNELS_V4, &v4(2), &rule(3, 2)).expect("insert");
        insert_rule(&m.channels, maps::CHANNELS, &key(4), &rule(5, 2)).expect("insert");

        let a = m.adopt_existing().expect("sweep");
        assert_eq!((a.kept, a.removed), (4, 3), "{a:?}");
        assert_eq!(in_table(0), Some(rule(0, 1)), "an untouched slot stays");
        for i in [1, 2, 4] {
            assert_eq!(in_table(i), None, "stale slot {i} removed");
        }
        assert_eq!(m.channel(&key(1)).expect("get"), None, "removed channel");
        assert_eq!(m.channel(&key(9)).expect("get"), Some(rule(1, 2)));
        assert_eq!(
            m.channel(&key(2)).expect("get"),
            Some(rule(3, 2)),
            "the new binding"
        );
        assert_eq!(m.channel(&key(4)).expect("get"), Some(rule(5, 2)));
        // The kept rules' indices are reserved; those of the removed slots are free.
        let mut pool = lock(&m.stats_pool);
        assert_eq!(pool.in_use(), 4);
        let mut fresh = [pool.take(), pool.take()];
        fresh.sort_unstable();
        assert_eq!(fresh, [Some(2), Some(4)]);
    }

    #[test]
    fn adoption_replaces_rules_an_older_daemon_left_past_an_emptied_slot() {
        if !can_run("adoption_replaces_rules_an_older_daemon_left_past_an_emptied_slot") {
            return;
        }
        let (_ebpf, m) = small_maps();
        let t = m.table.as_ref().expect("the table is on (x86_64)");
        let v4 = |i: u32| numbered_key(i).v4().expect("IPv4");
        let home = |i: u32| {
            let (w0, w1) = relay_common::turn::channel_key_words(&v4(i));
            relay_common::turn::slot_home(w0, w1, &lock(t).info())
        };
        let same: Vec<u32> = (1..60_000)
            .filter(|&i| home(i) == home(0))
            .take(1)
            .collect();
        let (a, b) = (0, same[0]);
        let rule = |stats_idx: u32| far_rule(stats_idx, 1, 0);
        m.insert_channel(&numbered_key(a), &rule(1))
            .expect("insert");
        m.insert_channel(&numbered_key(b), &rule(2))
            .expect("insert");
        // The daemon before vacated slots removed `a` by emptying its slot (and then
        // stopped): `b`, stored one slot on, is past an empty slot.
        assert!(lock(t).empty_slot_for_test(&v4(a)));
        assert_eq!(lock(t).hidden(), 1);
        let adopted = m.adopt_existing().expect("sweep");
        assert_eq!((adopted.kept, adopted.removed), (1, 0), "{adopted:?}");
        let t = lock(t);
        assert_eq!(t.hidden(), 0, "placed again where the kernel probes");
        assert_eq!(t.get(&v4(b)), Some(rule(2)));
        assert_eq!(t.live(), 1);
    }

    #[test]
    fn peer_rules_of_ipv4_channel_bindings_live_in_the_peer_table() {
        if !can_run("peer_rules_of_ipv4_channel_bindings_live_in_the_peer_table") {
            return;
        }
        let (_ebpf, m) = small_maps();
        // Peer 203.0.113.x:7000 to the relayed 192.0.2.10:(50000 + i).
        let key = |i: u32, peer_port: u16| PeerKey {
            peer_addr: mapped_v4([203, 0, 113, i as u8]),
            relay_addr: mapped_v4([192, 0, 2, 10]),
            peer_port: wire(peer_port),
            relay_port: wire(50_000 + i as u16),
        };
        let rule = |stats_idx: u32, channel: u16| PeerRule {
            expires_ns: u64::MAX,
            client_addr: mapped_v4([198, 51, 100, 7]),
            server_addr: mapped_v4([192, 0, 2, 1]),
            client_port: wire(40_000),
            server_port: wire(3478),
            channel: wire(channel),
            flags: 0,
            stats_idx,
            alloc_idx: 0,
        };
        let in_map = |k: &PeerKey| get_rule(&m.peers, maps::PEERS, k).expect("get");
        // A channel binding: in the table, not in the map.
        m.insert_peer(&key(0, 7000), &rule(0, 0x4000))
            .expect("insert");
        assert!(m.peer_in_table(&key(0, 7000)));
        assert_eq!(in_map(&key(0, 7000)), None);
        assert_eq!(m.peer(&key(0, 7000)).expect("get"), Some(rule(0, 0x4000)));
        // A permission entry (any port, no channel) and an IPv6 client's binding: in the
        // map only.
        m.insert_peer(&key(0, 0), &rule(1, 0)).expect("insert");
        assert!(!m.peer_in_table(&key(0, 0)));
        assert_eq!(in_map(&key(0, 0)), Some(rule(1, 0)));
        let mut v6 = rule(2, 0x4001);
        v6.client_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        m.insert_peer(&key(0, 7000), &v6).expect("replace");
        assert!(
            !m.peer_in_table(&key(0, 7000)),
            "no compact form: out of the table"
        );
        assert_eq!(m.peer(&key(0, 7000)).expect("get"), Some(v6));
        // Back to IPv4: into the table again, the map's copy gone.
        m.insert_peer(&key(0, 7000), &rule(0, 0x4000))
            .expect("replace");
        assert!(m.peer_in_table(&key(0, 7000)));
        assert_eq!(in_map(&key(0, 7000)), None);
        assert!(m.remove_peer(&key(0, 7000)).expect("remove"));
        assert_eq!(m.peer(&key(0, 7000)).expect("get"), None);
        assert!(!m.remove_peer(&key(0, 7000)).expect("remove"));

        // Adoption drops slots an older daemon (hash map only) made stale: a key it
        // rewrote in the map, and a stats index it gave to another rule.
        for i in [1, 2, 3] {
            m.insert_peer(&key(i, 7000), &rule(10 + i, 0x4000))
                .expect("insert");
        }
        insert_rule(&m.peers, maps::PEERS, &key(2, 7000), &rule(20, 0x4002)).expect("insert");
        insert_rule(&m.peers, maps::PEERS, &key(9, 7000), &rule(13, 0x4003)).expect("insert");
        let a = m.adopt_existing().expect("sweep");
        // Kept: the permission entry, slot 1, and the two map rules; removed: slots 2, 3.
        assert_eq!((a.kept, a.removed), (4, 2), "{a:?}");
        assert!(m.peer_in_table(&key(1, 7000)), "an untouched slot stays");
        assert_eq!(m.peer(&key(2, 7000)).expect("get"), Some(rule(20, 0x4002)));
        assert_eq!(
            m.peer(&key(3, 7000)).expect("get"),
            None,
            "index reused: gone"
        );
        assert_eq!(m.peer(&key(9, 7000)).expect("get"), Some(rule(13, 0x4003)));
    }

    #[test]
    fn turn_maps_round_trip_through_the_kernel() {
        if !can_run("turn_maps_round_trip_through_the_kernel") {
            return;
        }
        let mut ebpf = super::super::load_object(&[3478]).expect("load the embedded object");
        let m = TurnMaps::take(&mut ebpf).expect("the object has the TURN maps");
        // A second take finds nothing: the handle owns them.
        assert!(matches!(
            TurnMaps::take(&mut ebpf),
            Err(RulesError::Missing(_))
        ));

        let ck = ChannelKey {
            client_addr: mapped_v4([198, 51, 100, 7]),
            server_addr: mapped_v4([192, 0, 2, 1]),
            client_port: wire(40000),
            server_port: wire(3478),
            channel: wire(0x4001),
            _pad: [0; 2],
        };
        let cr = ChannelRule {
            expires_ns: 123_456_789,
            relay_addr: mapped_v4([192, 0, 2, 10]),
            peer_addr: mapped_v4([203, 0, 113, 5]),
            relay_port: wire(50000),
            peer_port: wire(7000),
            flags: 1,
            _pad: 0,
            stats_idx: 17,
            alloc_idx: 3,
        };
        assert_eq!(m.channel(&ck).expect("get"), None);
        m.insert_channel(&ck, &cr).expect("insert");
        assert_eq!(m.channel(&ck).expect("get"), Some(cr));
        let updated = ChannelRule {
            expires_ns: 999,
            ..cr
        };
        m.insert_channel(&ck, &updated).expect("update");
        assert_eq!(m.channel(&ck).expect("get"), Some(updated));
        assert!(m.remove_channel(&ck).expect("remove"));
        assert!(!m.remove_channel(&ck).expect("remove absent"));
        assert_eq!(m.channel(&ck).expect("get"), None);

        // Where the kernel looks: an IPv4 client's rule in the channel table when it is
        // IPv4 throughout, else under the compact key (a copy anywhere else goes on
        // insert, including a wide one an older daemon left); an IPv6 client's wide.
        let k4 = ck.v4().expect("an IPv4 key");
        assert!(m.has_channel_table(), "the table is on (x86_64)");
        let in_table = |m: &TurnMaps| m.table.as_ref().and_then(|t| lock(t).get(&k4));
        insert_rule(&m.channels, maps::CHANNELS, &ck, &cr).expect("an older daemon's rule");
        assert_eq!(m.channel(&ck).expect("get the old rule"), Some(cr));
        m.insert_channel(&ck, &updated).expect("insert");
        assert_eq!(in_table(&m), Some(updated));
        assert_eq!(
            get_rule(&m.channels_v4, maps::CHANNELS_V4, &k4).expect("get"),
            None
        );
        assert_eq!(
            get_rule(&m.channels, maps::CHANNELS, &ck).expect("get"),
            None
        );
        let to_v6_peer = ChannelRule {
            peer_addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            ..updated
        };
        m.insert_channel(&ck, &to_v6_peer).expect("insert");
        assert_eq!(in_table(&m), None, "no compact form: out of the table");
        assert_eq!(
            get_rule(&m.channels_v4, maps::CHANNELS_V4, &k4).expect("get"),
            Some(to_v6_peer)
        );
        assert_eq!(m.channel(&ck).expect("get"), Some(to_v6_peer));
        m.insert_channel(&ck, &updated).expect("back to IPv4");
        assert_eq!(in_table(&m), Some(updated));
        assert_eq!(
            get_rule(&m.channels_v4, maps::CHANNELS_V4, &k4).expect("get"),
            None
        );
        insert_rule(&m.channels, maps::CHANNELS, &ck, &cr).expect("an older daemon's rule");
        assert!(m.remove_channel(&ck).expect("remove both"));
        assert_eq!(
            get_rule(&m.channels, maps::CHANNELS, &ck).expect("get"),
            None
        );
        assert_eq!(m.channel(&ck).expect("get"), None);
        let ck6 = ChannelKey {
            client_addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            ..ck
        };
        m.insert_channel(&ck6, &cr)
            .expect("insert an IPv6 client's rule");
        assert_eq!(
            get_rule(&m.channels, maps::CHANNELS, &ck6).expect("get"),
            Some(cr)
        );
        assert_eq!(m.channel(&ck6).expect("get"), Some(cr));
        assert!(m.remove_channel(&ck6).expect("remove"));

        let pk = PeerKey {
            peer_addr: mapped_v4([203, 0, 113, 5]),
            relay_addr: mapped_v4([192, 0, 2, 10]),
            peer_port: [0, 0],
            relay_port: wire(50000),
        };
        let pr = PeerRule {
            expires_ns: 5,
            client_addr: ck.client_addr,
            server_addr: ck.server_addr,
            client_port: ck.client_port,
            server_port: ck.server_port,
            channel: [0, 0],
            flags: 0,
            stats_idx: 18,
            alloc_idx: 3,
        };
        m.insert_peer(&pk, &pr).expect("insert peer");
        assert_eq!(m.peer(&pk).expect("get peer"), Some(pr));
        assert!(m.remove_peer(&pk).expect("remove peer"));
        assert_eq!(m.peer(&pk).expect("get peer"), None);

        let ak = AllocKey {
            client_addr: ck.client_addr,
            server_addr: ck.server_addr,
            client_port: ck.client_port,
            server_port: ck.server_port,
        };
        let ar = AllocRule {
            expires_ns: 77,
            relay_addr: cr.relay_addr,
            relay_port: cr.relay_port,
            flags: 0,
            stats_idx: 19,
            alloc_idx: 3,
            _pad: 0,
        };
        m.insert_alloc(&ak, &ar).expect("insert alloc");
        assert_eq!(m.alloc(&ak).expect("get alloc"), Some(ar));
        assert!(m.remove_alloc(&ak).expect("remove alloc"));

        // Per-CPU counters: set on every CPU, read back as the sum.
        let one = RuleStats {
            packets: 2,
            bytes: 100,
        };
        m.set_stats(17, one).expect("set stats");
        let cpus = aya::util::nr_cpus().expect("cpus") as u64;
        assert_eq!(
            m.stats(17).expect("stats"),
            RuleStats {
                packets: 2 * cpus,
                bytes: 100 * cpus
            }
        );
        // Handing an index out resets its counters and its bandwidth entry.
        let idx = FastRules::take_stats_index(&m).expect("index");
        m.set_stats(idx, one).expect("dirty");
        FastRules::release_stats_index(&m, idx);
        let again = FastRules::take_stats_index(&m).expect("index");
        assert_eq!(again, idx, "freed indices are reused");
        assert_eq!(FastRules::rule_stats(&m, again), RuleStats::default());

        let a = FastRules::take_alloc_index(&m, 1000).expect("alloc index");
        m.set_bandwidth(
            a,
            &Bandwidth {
                rate: 1000,
                window_start_ns: 9,
                window_bytes: 500,
                dropped: 4,
            },
        )
        .expect("dirty bandwidth");
        FastRules::release_alloc_index(&m, a);
        let b = FastRules::take_alloc_index(&m, 2000).expect("alloc index");
        assert_eq!(b, a);
        assert_eq!(
            m.bandwidth(b).expect("bandwidth"),
            Bandwidth {
                rate: 2000,
                ..Bandwidth::default()
            }
        );

        let s = TurnSettings {
            flags: SETTING_ENABLED | SETTING_DATA_INDICATIONS | SETTING_SEND_INDICATIONS,
            relay_port_min: 49152,
            relay_port_max: 65535,
            next_hop_ttl_ms: 1000,
            fib_ifindex: 1,
        };
        m.set_settings(&s).expect("settings");
        assert_eq!(m.settings().expect("settings"), s);
    }
}
