//! The daemon's side of the compact rule tables the XDP program probes before the hash
//! maps: `TURN_CHANNEL_TABLE` (IPv4 channel rules, in front of `TURN_CHANNELS_V4`) and
//! `TURN_PEER_TABLE` (the peer rules of IPv4 channel bindings, in front of `TURN_PEERS`).
//! Layouts and the reasons in `relay_common::turn::{ChannelSlot, PeerSlot}`.
//!
//! Why the daemon manages the tables itself: a kernel hash map costs three cache misses
//! per lookup with many rules, a slot here one. The price is that the kernel no longer
//! protects readers from a half-written entry, so slots are written in place through an
//! mmap of the map as a seqlock (`seq` odd while writing), and the program ignores a slot
//! whose `seq` was odd or changed while it read it. A rule finds a home within
//! [`CHANNEL_PROBES`] slots of its hash or stays in the hash map: a table is a faster
//! place for most rules, never the only one, so collisions (or a table turned off) only
//! cost speed.
//!
//! [`SlotTable`] holds the logic over any slot memory ([`HeapSlots`] in unit tests) of
//! any [`CompactSlot`] type; [`MappedSlots`] is the mmap of a real map.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use relay_common::turn::{
    CHANNEL_PROBES, ChannelKeyV4, ChannelRule, ChannelSlot, PeerKeyV4, PeerRule, PeerSlot,
    SlotTableInfo, channel_key_words, slot_home,
};

/// A slot type of a compact table: 64 bytes, a seqlock word first, then its 16-byte key
/// (all zero: an empty slot).
pub trait CompactSlot: Copy + Default + PartialEq + Send {
    /// The slot's key.
    type Key: Copy + Eq + Default + std::fmt::Debug;
    /// The rule, in the form of its hash map.
    type Rule;
    /// The slot holding `rule` under `key`; None when the rule has no compact form.
    fn compact(key: &Self::Key, rule: &Self::Rule) -> Option<Self>;
    /// The slot's key.
    fn key(&self) -> Self::Key;
    /// The seqlock word.
    fn seq(&self) -> u32;
    /// The rule the slot holds.
    fn rule(&self) -> Self::Rule;
    /// The key as the two words the kernel hashes.
    fn words(key: &Self::Key) -> (u64, u64);
}

impl CompactSlot for ChannelSlot {
    type Key = ChannelKeyV4;
    type Rule = ChannelRule;
    fn compact(key: &ChannelKeyV4, rule: &ChannelRule) -> Option<Self> {
        ChannelSlot::compact(key, rule)
    }
    fn key(&self) -> ChannelKeyV4 {
        self.key
    }
    fn seq(&self) -> u32 {
        self.seq
    }
    fn rule(&self) -> ChannelRule {
        ChannelSlot::rule(self)
    }
    fn words(key: &ChannelKeyV4) -> (u64, u64) {
        channel_key_words(key)
    }
}

impl CompactSlot for PeerSlot {
    type Key = PeerKeyV4;
    type Rule = PeerRule;
    fn compact(key: &PeerKeyV4, rule: &PeerRule) -> Option<Self> {
        PeerSlot::compact(key, rule)
    }
    fn key(&self) -> PeerKeyV4 {
        self.key
    }
    fn seq(&self) -> u32 {
        self.seq
    }
    fn rule(&self) -> PeerRule {
        PeerSlot::rule(self)
    }
    fn words(key: &PeerKeyV4) -> (u64, u64) {
        key.words()
    }
}

/// Slot memory: `slot_count` slots from `base`, valid and writable while the owner
/// lives.
pub trait Slots: Send {
    /// The slot type.
    type Slot: CompactSlot;
    /// The first slot.
    fn base(&self) -> *mut Self::Slot;
    /// Number of slots (a power of two).
    fn slot_count(&self) -> usize;
}

/// The daemon's `TURN_CHANNEL_TABLE`.
pub type ChannelTable = SlotTable<MappedSlots<ChannelSlot>>;
/// The daemon's `TURN_PEER_TABLE`.
pub type PeerTable = SlotTable<MappedSlots<PeerSlot>>;

/// Zeroed slots on the heap (the unit tests' table).
#[derive(Debug)]
pub struct HeapSlots<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the allocation is owned by this value alone; see `MappedSlots`.
unsafe impl<T: Send> Send for HeapSlots<T> {}

impl<T: CompactSlot> HeapSlots<T> {
    /// `len` empty slots.
    pub fn new(len: usize) -> HeapSlots<T> {
        let b = vec![T::default(); len].into_boxed_slice();
        HeapSlots {
            ptr: Box::into_raw(b).cast(),
            len,
        }
    }
}

impl<T> Drop for HeapSlots<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from `Box::into_raw` of a boxed slice of `len` slots,
        // freed once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

impl<T: CompactSlot> Slots for HeapSlots<T> {
    type Slot = T;
    fn base(&self) -> *mut T {
        self.ptr
    }
    fn slot_count(&self) -> usize {
        self.len
    }
}

/// A shared, writable mmap of a `BPF_F_MMAPABLE` array map of slots `T`.
#[derive(Debug)]
pub struct MappedSlots<T> {
    ptr: *mut T,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access goes
// through `SlotTable`, which its owner keeps behind a mutex.
unsafe impl<T: Send> Send for MappedSlots<T> {}

impl<T: CompactSlot> MappedSlots<T> {
    /// Maps `len` slots of the array map `fd`.
    pub fn map(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> io::Result<MappedSlots<T>> {
        use std::os::fd::AsRawFd;
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: a fresh shared mapping of the map's value area (the kernel checks the
        // length against the map and that the map is mmapable); nothing else aliases it
        // in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedSlots {
            ptr: ptr.cast(),
            len,
            bytes,
        })
    }
}

impl<T> Drop for MappedSlots<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`bytes` are exactly the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

impl<T: CompactSlot> Slots for MappedSlots<T> {
    type Slot = T;
    fn base(&self) -> *mut T {
        self.ptr
    }
    fn slot_count(&self) -> usize {
        self.len
    }
}

/// A key of table `S` (all zero: an empty slot).
type Key<S> = <<S as Slots>::Slot as CompactSlot>::Key;
/// A rule of table `S`.
type Rule<S> = <<S as Slots>::Slot as CompactSlot>::Rule;

/// The table logic over slot memory `S`. One writer at a time (`&mut self`); the XDP
/// program reads concurrently.
pub struct SlotTable<S: Slots> {
    slots: S,
    info: SlotTableInfo,
}

impl<S: Slots> std::fmt::Debug for SlotTable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTable")
            .field("slots", &self.slots.slot_count())
            .finish_non_exhaustive()
    }
}

impl<S: Slots> SlotTable<S> {
    /// The table over `slots` with `seed`, using the largest power of two of them (all
    /// of them: the daemon sizes the map so).
    pub fn new(slots: S, seed: u64) -> SlotTable<S> {
        let n = slots.slot_count();
        let usable = if n == 0 { 0 } else { 1usize << n.ilog2() };
        let mask = u32::try_from(usable.saturating_sub(1)).unwrap_or(0);
        SlotTable {
            slots,
            info: SlotTableInfo {
                seed,
                mask,
                _pad: 0,
            },
        }
    }

    /// What the kernel must be told (`TURN_CHANNEL_TABLE_INFO[0]`).
    pub fn info(&self) -> SlotTableInfo {
        self.info
    }

    fn read(&self, i: usize) -> S::Slot {
        debug_assert!(i < self.slots.slot_count());
        // SAFETY: `i` is below the slot count (callers mask it), the memory lives as
        // long as `self.slots`, and only this writer changes it (the kernel only reads).
        unsafe { std::ptr::read_volatile(self.slots.base().add(i)) }
    }

    /// Writes slot `i` as a seqlock: `seq` odd, the other 60 bytes, `seq` even again.
    fn write(&mut self, i: usize, v: &S::Slot) {
        debug_assert!(i < self.slots.slot_count());
        // SAFETY: slot `i` is inside the memory (as in `read`); `seq` is its first,
        // 4-aligned word (slots are 64-aligned), used only atomically by this writer.
        let (seq, words) = unsafe {
            let p = self.slots.base().add(i);
            (AtomicU32::from_ptr(p.cast::<u32>()), p.cast::<u32>().add(1))
        };
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        let src = (v as *const S::Slot).cast::<u32>();
        for w in 0..(std::mem::size_of::<S::Slot>() / 4 - 1) {
            // SAFETY: word `w + 1` of both 64-byte slots (after `seq`).
            unsafe { std::ptr::write_volatile(words.add(w), *src.add(w + 1)) };
        }
        fence(Ordering::Release);
        seq.store(odd.wrapping_add(1), Ordering::Release);
    }

    /// The slots a key may occupy, home first.
    fn probes(&self, k: &Key<S>) -> impl Iterator<Item = usize> + use<S> {
        let (w0, w1) = S::Slot::words(k);
        let home = slot_home(w0, w1, &self.info);
        let mask = self.info.mask;
        (0..CHANNEL_PROBES).map(move |i| (home.wrapping_add(i) & mask) as usize)
    }

    fn find(&self, k: &Key<S>) -> Option<usize> {
        self.probes(k).find(|&i| self.read(i).key() == *k)
    }

    /// Stores `rule` under `k` (replacing its slot, else in the first free one);
    /// false when the rule has no compact form or its slots are all taken: it belongs in
    /// the hash map. A slot `k` already has then keeps the old rule: the caller removes
    /// it once the new one is in the map, so that the kernel never finds neither.
    pub fn put(&mut self, k: &Key<S>, rule: &Rule<S>) -> bool {
        let Some(slot) = S::Slot::compact(k, rule) else {
            return false;
        };
        let empty = Key::<S>::default();
        let at = self
            .find(k)
            .or_else(|| self.probes(k).find(|&i| self.read(i).key() == empty));
        match at {
            Some(i) => {
                self.write(i, &slot);
                true
            }
            None => false,
        }
    }

    /// The rule under `k`.
    pub fn get(&self, k: &Key<S>) -> Option<Rule<S>> {
        self.find(k).map(|i| self.read(i).rule())
    }

    /// Removes the rule under `k`; false if there was none.
    pub fn remove(&mut self, k: &Key<S>) -> bool {
        match self.find(k) {
            Some(i) => {
                self.write(i, &S::Slot::default());
                true
            }
            None => false,
        }
    }

    /// Sets the seqlock word of `k`'s slot to `seq` (an odd value: a write in progress),
    /// for tests of the kernel's reader; false if `k` has no slot.
    #[doc(hidden)]
    pub fn set_seq_for_test(&mut self, k: &Key<S>, seq: u32) -> bool {
        let Some(i) = self.find(k) else {
            return false;
        };
        // SAFETY: slot `i` is inside the memory; `seq` is its first word (see `write`).
        unsafe { AtomicU32::from_ptr(self.slots.base().add(i).cast::<u32>()) }
            .store(seq, Ordering::Release);
        true
    }

    /// Keeps the rules for which `keep` is true and empties the other slots, along with
    /// any slot left half-written (odd `seq`: a daemon stopped mid-write) or stored where
    /// no probe of its key would find it (a table whose seed was lost). Returns (kept,
    /// removed).
    pub fn retain(&mut self, mut keep: impl FnMut(&Key<S>, &Rule<S>) -> bool) -> (usize, usize) {
        let empty = Key::<S>::default();
        let (mut kept, mut removed) = (0, 0);
        for i in 0..self.slots.slot_count() {
            let s = self.read(i);
            let (key, seq) = (s.key(), s.seq());
            if key == empty && seq & 1 == 0 {
                continue;
            }
            let reachable = key != empty && self.probes(&key).any(|p| p == i);
            if seq & 1 == 0 && reachable && keep(&key, &s.rule()) {
                kept += 1;
            } else {
                self.write(i, &S::Slot::default());
                removed += 1;
            }
        }
        (kept, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_common::turn::{mapped_v4, wire};

    fn table(slots: usize, seed: u64) -> SlotTable<HeapSlots<ChannelSlot>> {
        SlotTable::new(HeapSlots::new(slots), seed)
    }

    fn key(port: u16, channel: u16) -> ChannelKeyV4 {
        ChannelKeyV4 {
            client_addr: [192, 0, 2, 7],
            server_addr: [198, 51, 100, 1],
            client_port: wire(port),
            server_port: wire(3478),
            channel: wire(channel),
            _pad: [0; 2],
        }
    }

    fn rule(stats_idx: u32) -> ChannelRule {
        ChannelRule {
            expires_ns: 1_000 + u64::from(stats_idx),
            relay_addr: mapped_v4([203, 0, 113, 9]),
            peer_addr: mapped_v4([10, 202, 0, 2]),
            relay_port: wire(50_000),
            peer_port: wire(9),
            flags: 1,
            _pad: 0,
            stats_idx,
            alloc_idx: stats_idx + 7,
        }
    }

    #[test]
    fn rules_round_trip_replace_and_go() {
        let mut t = table(64, 5);
        let k = key(40_000, 0x4000);
        assert!(t.put(&k, &rule(1)));
        assert_eq!(t.get(&k), Some(rule(1)));
        assert!(t.put(&k, &rule(2)), "replaced in place");
        assert_eq!(t.get(&k), Some(rule(2)));
        let used = (0..64)
            .filter(|&i| t.read(i).key != ChannelKeyV4::default())
            .count();
        assert_eq!(used, 1, "one slot per key");
        assert!(t.remove(&k));
        assert_eq!(t.get(&k), None);
        assert!(!t.remove(&k));
        // Every slot ends with an even seq (stable for the kernel).
        assert!((0..64).all(|i| t.read(i).seq & 1 == 0));
    }

    #[test]
    fn a_rule_without_a_compact_form_is_refused_and_the_old_one_kept_until_removed() {
        let mut t = table(64, 5);
        let k = key(40_000, 0x4000);
        assert!(t.put(&k, &rule(1)));
        let mut v6 = rule(1);
        v6.peer_addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert!(!t.put(&k, &v6));
        // The caller puts the new rule in the hash map first, then removes this one.
        assert_eq!(t.get(&k), Some(rule(1)));
        assert!(t.remove(&k));
        assert_eq!(t.get(&k), None);
    }

    #[test]
    fn keys_beyond_their_probe_window_are_refused_not_misplaced() {
        // 8 slots, 200 keys: most cannot find a free slot near home.
        let mut t = table(8, 9);
        let mut placed = Vec::new();
        for p in 0..200u16 {
            let k = key(30_000 + p, 0x4001);
            if t.put(&k, &rule(u32::from(p))) {
                placed.push((k, u32::from(p)));
            }
        }
        assert_eq!(placed.len(), 8, "every slot used, no more");
        for (k, p) in &placed {
            assert_eq!(t.get(k), Some(rule(*p)));
            // And where the kernel looks for it.
            let (w0, w1) = channel_key_words(k);
            let home = slot_home(w0, w1, &t.info());
            let at = t.find(k).expect("placed");
            assert!((0..CHANNEL_PROBES).any(|i| (home + i) & 7 == at as u32));
        }
    }

    #[test]
    fn ten_thousand_ports_spread_over_the_table() {
        // The bench's shape: one client address, consecutive ports, one channel.
        let mut t = table(16_384, 0x1234_5678_9abc_def0);
        let refused = (0..10_000u16)
            .filter(|&p| !t.put(&key(20_000 + p, 0x4000), &rule(u32::from(p))))
            .count();
        // At a load of 0.61 with 4 probes a few percent overflow at most.
        assert!(refused < 500, "{refused} refused");
        // Uniform hashing puts 10 000 keys on 16 384 × (1 − e^−0.61) ≈ 7 485 distinct
        // home slots; a weak hash of these near-identical keys would use far fewer.
        let homes: std::collections::HashSet<u32> = (0..10_000u16)
            .map(|p| {
                let (w0, w1) = channel_key_words(&key(20_000 + p, 0x4000));
                slot_home(w0, w1, &t.info())
            })
            .collect();
        assert!(homes.len() > 7_200, "{} distinct homes", homes.len());
    }

    #[test]
    fn the_seed_changes_where_keys_live() {
        let k = key(40_000, 0x4000);
        let (w0, w1) = channel_key_words(&k);
        let homes: std::collections::HashSet<u32> = (0..16u64)
            .map(|seed| {
                slot_home(
                    w0,
                    w1,
                    &SlotTableInfo {
                        seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        mask: 4095,
                        _pad: 0,
                    },
                )
            })
            .collect();
        assert!(homes.len() >= 12, "{homes:?}");
    }

    #[test]
    fn retain_keeps_live_rules_and_clears_torn_and_unreachable_slots() {
        let mut t = table(64, 5);
        let (a, b) = (key(1, 0x4000), key(2, 0x4000));
        assert!(t.put(&a, &rule(1)));
        assert!(t.put(&b, &rule(2)));
        // A write interrupted half way: seq odd.
        let torn = t.find(&b).expect("placed");
        // SAFETY: slot `torn` is inside the table's memory.
        unsafe { (*t.slots.base().add(torn)).seq |= 1 };
        // A slot no probe reaches (written under another seed).
        let stray = (0..64)
            .find(|&i| {
                t.read(i).key == ChannelKeyV4::default()
                    && !t.probes(&key(3, 0x4000)).any(|p| p == i)
            })
            .expect("a free slot outside key 3's window");
        let mut s = ChannelSlot::compact(&key(3, 0x4000), &rule(3)).expect("compact");
        s.seq = 2;
        // SAFETY: as above.
        unsafe { *t.slots.base().add(stray) = s };
        let (kept, removed) = t.retain(|_, r| r.stats_idx == 1);
        assert_eq!((kept, removed), (1, 2));
        assert_eq!(t.get(&a), Some(rule(1)));
        assert_eq!(t.get(&b), None);
        assert_eq!(t.read(stray).key, ChannelKeyV4::default());
        assert!((0..64).all(|i| t.read(i).seq & 1 == 0));
        // A rule failing `keep` goes too.
        assert_eq!(t.retain(|_, _| false), (0, 1));
        assert_eq!(t.get(&a), None);
    }

    #[test]
    fn the_key_words_are_the_keys_memory() {
        let k = key(0x1234, 0x4567);
        let (w0, w1) = channel_key_words(&k);
        // SAFETY: ChannelKeyV4 is 16 plain bytes.
        let raw: [u8; 16] = unsafe { std::mem::transmute(k) };
        assert_eq!(w0.to_ne_bytes(), raw[..8]);
        assert_eq!(w1.to_ne_bytes(), raw[8..]);
    }
}
