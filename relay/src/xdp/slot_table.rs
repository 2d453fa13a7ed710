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
//! A table uses only as many of its map's slots as its rules need (at most 11/16 of them
//! taken, at least [`MIN_SLOTS`]): the rule of a frame is one random line of the table,
//! and with many rules the time per frame is the wait for that line. 10 000 rules spread
//! over the 8 MiB of the default map's 131 072 slots, one per 4 KiB page, missed the
//! caches and TLB far more often than packed into 1 MiB (`relay-bench turn-xdp` at 10 000
//! allocations with `--turn-rules 16384`, docs/BENCHMARKS.md).
//!
//! The table is a region of its map (`SlotTableInfo::base`, `mask`). It grows and shrinks
//! by laying the rules out in a region beside the one the kernel reads
//! ([`SlotTable::region_beside`], [`SlotTable::stage`]) and then telling the kernel the
//! new base and mask in one write ([`Staged::commit`]): the kernel reads a whole table
//! throughout, and the owner copies into the hash map only the rules the new layout has
//! no slot for. A frame that read the old base just before keeps reading the old region,
//! so a later resize does not write there until a grace period has passed (the owner's
//! clock: [`Region::reuses_retired`]). A table grows to half its map at most, so that it
//! always has a region beside it; only in a map too small to halve is the table all of
//! it, and resized in place by [`SlotTable::rebuild`], which turns it off meanwhile and
//! which the owner brackets with copies of every rule in the hash map (see `TurnMaps` in
//! `rules`).
//!
//! The kernel's probe stops at the first empty slot, so that a frame without a table
//! rule (an IPv6 or cross-family rule, a Data indication's permission, unknown traffic)
//! costs the length of its key's cluster rather than all 16 probes. That holds only if no
//! key is ever stored past an empty slot of its probe sequence: a removed rule's slot is
//! therefore vacated ([`CompactSlot::VACATED`], a key no frame has), not emptied, and
//! reused by the next rule that probes it. Vacated slots at the end of a cluster are
//! emptied at once ([`SlotTable::remove`]); the others count as taken until a rebuild,
//! which the owner runs at the same size when they pile up ([`SlotTable::grow_mask`]).
//!
//! [`SlotTable`] holds the logic over any slot memory ([`HeapSlots`] in unit tests) of
//! any [`CompactSlot`] type; [`MappedSlots`] is the mmap of a real map.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use aya::maps::{Array, MapData};
use relay_common::turn::{
    CHANNEL_PROBES, ChannelKeyV4, ChannelRule, ChannelSlot, PeerKeyV4, PeerRule, PeerSlot,
    SlotTableInfo, channel_key_words, slot_home,
};

/// The fewest slots a table uses (64 KiB): smaller saves little and rebuilds more often.
pub const MIN_SLOTS: usize = 1024;

/// A table in use grows once more than `GROW_NUM / GROW_DEN` of its slots are taken by
/// rules and vacated slots (with [`CHANNEL_PROBES`] probes, about 0.6% of the rules then
/// find no free slot and go to the hash map; at half that load, none in practice).
const GROW_NUM: usize = 11;
const GROW_DEN: usize = 16;
/// ... and shrinks once fewer than `1 / SHRINK_DEN` are, to where at most
/// `GROW_NUM / (2 GROW_DEN)` are (so that neither happens again soon).
const SHRINK_DEN: usize = 8;
/// A table whose live rules fit its size is rebuilt at that size, to empty its vacated
/// slots, once these are `1 / VACATED_DEN` of it and it would otherwise grow.
const VACATED_DEN: usize = 16;

/// A slot type of a compact table: 64 bytes, a seqlock word first, then its 16-byte key
/// (all zero: an empty slot; [`CompactSlot::VACATED`]: a removed rule's).
pub trait CompactSlot: Copy + Default + PartialEq + Send {
    /// The slot's key.
    type Key: Copy + Eq + std::hash::Hash + Default + std::fmt::Debug;
    /// The key of a vacated slot (`relay_common::turn::VACATED_KEY`).
    const VACATED: Self::Key;
    /// The rule, in the form of its hash map.
    type Rule;
    /// The slot holding `rule` under `key`; None when the rule has no compact form.
    fn compact(key: &Self::Key, rule: &Self::Rule) -> Option<Self>;
    /// The slot's key.
    fn key(&self) -> Self::Key;
    /// The seqlock word.
    fn seq(&self) -> u32;
    /// A slot holding [`CompactSlot::VACATED`] and nothing else.
    fn vacated() -> Self;
    /// The rule the slot holds.
    fn rule(&self) -> Self::Rule;
    /// The key as the two words the kernel hashes.
    fn words(key: &Self::Key) -> (u64, u64);
}

/// `CompactSlot` for a relay_common slot type whose inherent `compact`/`rule` and fields
/// `key`/`seq` already say it all; `$words` hashes a key.
macro_rules! compact_slot {
    ($slot:ty, $key:ty, $rule:ty, $words:expr) => {
        impl CompactSlot for $slot {
            type Key = $key;
            type Rule = $rule;
            const VACATED: $key = <$key>::VACATED;
            fn compact(key: &$key, rule: &$rule) -> Option<Self> {
                <$slot>::compact(key, rule)
            }
            fn key(&self) -> $key {
                self.key
            }
            fn seq(&self) -> u32 {
                self.seq
            }
            fn vacated() -> Self {
                Self {
                    key: <$key>::VACATED,
                    ..Self::default()
                }
            }
            fn rule(&self) -> $rule {
                <$slot>::rule(self)
            }
            fn words(key: &$key) -> (u64, u64) {
                $words(key)
            }
        }
    };
}

compact_slot!(ChannelSlot, ChannelKeyV4, ChannelRule, channel_key_words);
compact_slot!(PeerSlot, PeerKeyV4, PeerRule, PeerKeyV4::words);

/// Slot memory: `slot_count` slots from `base`, valid and writable while the owner
/// lives.
pub trait Slots: Send {
    /// The slot type.
    type Slot: CompactSlot;
    /// The first slot.
    fn base(&self) -> *mut Self::Slot;
    /// Number of slots (a power of two).
    fn slot_count(&self) -> usize;
    /// Tells the kernel the table's seed and mask (`TURN_*_TABLE_INFO[0]`).
    fn publish(&mut self, info: &SlotTableInfo) -> io::Result<()>;
}

/// The daemon's `TURN_CHANNEL_TABLE`.
pub type ChannelTable = SlotTable<MappedSlots<ChannelSlot>>;
/// The daemon's `TURN_PEER_TABLE`.
pub type PeerTable = SlotTable<MappedSlots<PeerSlot>>;

/// Zeroed slots on the heap (the unit tests' table), with every info it published.
#[derive(Debug)]
pub struct HeapSlots<T> {
    ptr: *mut T,
    len: usize,
    /// What [`Slots::publish`] was given, in order.
    pub published: Vec<SlotTableInfo>,
    /// Make the next publish fail (a test of the error path).
    pub fail_publish: bool,
    /// Make the publish after the next one fail.
    pub fail_second_publish: bool,
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
            published: Vec::new(),
            fail_publish: false,
            fail_second_publish: false,
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
    fn publish(&mut self, info: &SlotTableInfo) -> io::Result<()> {
        if std::mem::take(&mut self.fail_publish) {
            return Err(io::Error::other("publish refused by the test"));
        }
        if std::mem::take(&mut self.fail_second_publish) {
            self.fail_publish = true;
        }
        self.published.push(*info);
        Ok(())
    }
}

/// A shared, writable mmap of a `BPF_F_MMAPABLE` array map of slots `T`, and the
/// array that tells the kernel its seed and mask.
pub struct MappedSlots<T> {
    ptr: *mut T,
    len: usize,
    bytes: usize,
    info: Array<MapData, SlotTableInfo>,
}

impl<T> std::fmt::Debug for MappedSlots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedSlots")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

// SAFETY: the mapping is plain shared memory owned by this value; every access goes
// through `SlotTable`, which its owner keeps behind a mutex.
unsafe impl<T: Send> Send for MappedSlots<T> {}

impl<T: CompactSlot> MappedSlots<T> {
    /// Maps `len` slots of the array map `fd`; `info` is its `TURN_*_TABLE_INFO`.
    pub fn map(
        fd: std::os::fd::BorrowedFd<'_>,
        len: usize,
        info: Array<MapData, SlotTableInfo>,
    ) -> io::Result<MappedSlots<T>> {
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
            info,
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
    fn publish(&mut self, info: &SlotTableInfo) -> io::Result<()> {
        self.info.set(0, *info, 0).map_err(io::Error::other)
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
    /// What the kernel was told last; `mask + 1` slots in use (mask 0: off).
    info: SlotTableInfo,
    /// Slots holding a rule.
    live: usize,
    /// Slots in use holding [`CompactSlot::VACATED`] (a removed rule's, until a rebuild).
    vacated: usize,
    /// Keys [`SlotTable::put`] found no free slot for (their rules are in the hash map):
    /// a rebuild takes them in.
    refused: std::collections::HashSet<Key<S>>,
    /// The region (first slot, slots) the kernel read before the last [`Staged::commit`].
    retired: Option<(usize, usize)>,
}

/// Where [`SlotTable::stage`] may lay a table out: slots `base..base + size` of the map,
/// apart from the region the kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The first slot.
    pub base: u32,
    /// Whether it overlaps the region the kernel read before the last commit: the owner
    /// lets a grace period pass since that commit before staging there, so that a frame
    /// that read the old base is not handed slots being rewritten.
    pub reuses_retired: bool,
}

impl<S: Slots> std::fmt::Debug for SlotTable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTable")
            .field("slots", &self.slots.slot_count())
            .finish_non_exhaustive()
    }
}

impl<S: Slots> SlotTable<S> {
    /// The table over `slots` with `seed`, using the `mask + 1` slots from `base` when
    /// `adopted` = (`mask`, `base`) is a region a table of this map can have (adopted
    /// from a previous daemon), else the first [`MIN_SLOTS`]. Not yet told to the kernel:
    /// see [`SlotTable::publish`].
    pub fn new(slots: S, seed: u64, adopted: Option<(u32, u32)>) -> SlotTable<S> {
        let count = slots.slot_count();
        let usable = usable(count);
        let (in_use, base) = match adopted {
            Some((m, b))
                if m != 0
                    && (m as usize + 1).is_power_of_two()
                    && (m as usize) < usable
                    && (b as usize + m as usize) < count =>
            {
                (m as usize + 1, b)
            }
            _ => (MIN_SLOTS.min(usable), 0),
        };
        let mut t = SlotTable {
            slots,
            info: SlotTableInfo {
                seed,
                mask: u32::try_from(in_use.saturating_sub(1)).unwrap_or(0),
                base,
            },
            live: 0,
            vacated: 0,
            refused: Default::default(),
            retired: None,
        };
        t.count();
        t
    }

    /// Recounts the live and vacated slots in use.
    fn count(&mut self) {
        let empty = Key::<S>::default();
        let (mut live, mut vacated) = (0, 0);
        for i in 0..self.in_use() {
            let k = self.read(i).key();
            if k == S::Slot::VACATED {
                vacated += 1;
            } else if k != empty {
                live += 1;
            }
        }
        (self.live, self.vacated) = (live, vacated);
    }

    /// What the kernel is told (`TURN_*_TABLE_INFO[0]`).
    pub fn info(&self) -> SlotTableInfo {
        self.info
    }

    /// Tells the kernel the seed and mask.
    pub fn publish(&mut self) -> io::Result<()> {
        self.slots.publish(&self.info)
    }

    /// Slots in use (0: the table is off).
    pub fn in_use(&self) -> usize {
        if self.info.mask == 0 {
            0
        } else {
            self.info.mask as usize + 1
        }
    }

    /// Slots holding a rule.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slots in use holding a removed rule's [`CompactSlot::VACATED`] key.
    pub fn vacated(&self) -> usize {
        self.vacated
    }

    /// The mask to rebuild at before one more rule is put, if the table should grow, or
    /// be rebuilt at its size to empty its vacated slots (they lengthen probes as rules
    /// do): only once they are `1 / VACATED_DEN` of it, so that a full table whose rules
    /// come and go is not rebuilt at every change.
    pub fn grow_mask(&self) -> Option<u32> {
        let size = self.in_use();
        if size == 0 || (self.live + self.vacated + 1) * GROW_DEN <= size * GROW_NUM {
            return None;
        }
        let target = self.size_for(self.live + 1, GROW_NUM, GROW_DEN);
        (target > size || self.vacated * VACATED_DEN >= size).then(|| (target - 1) as u32)
    }

    /// The mask to rebuild at, if the table should shrink.
    pub fn shrink_mask(&self) -> Option<u32> {
        let size = self.in_use();
        if size <= MIN_SLOTS || self.live * SHRINK_DEN >= size {
            return None;
        }
        let target = self.size_for(self.live, GROW_NUM, 2 * GROW_DEN);
        (target < size).then(|| (target - 1) as u32)
    }

    /// The fewest slots (a power of two, [`MIN_SLOTS`] to [`largest`]) at which `live`
    /// rules take at most `num / den` of them.
    fn size_for(&self, live: usize, num: usize, den: usize) -> usize {
        let all = largest(self.slots.slot_count());
        let mut n = MIN_SLOTS.min(all);
        while n < all && live * den > n * num {
            n *= 2;
        }
        n
    }

    /// The rules in the table (whole, reachable slots).
    pub fn rules(&self) -> Vec<(Key<S>, Rule<S>)> {
        let empty = Key::<S>::default();
        (0..self.in_use())
            .map(|i| (i, self.read(i)))
            .filter(|(i, s)| {
                let k = s.key();
                k != empty
                    && k != S::Slot::VACATED
                    && s.seq() & 1 == 0
                    && self.probes(&k).any(|p| p == *i)
            })
            .map(|(_, s)| (s.key(), s.rule()))
            .collect()
    }

    /// Keys refused for want of a free slot since the last rebuild (see `put`).
    pub fn refused(&self) -> Vec<Key<S>> {
        self.refused.iter().copied().collect()
    }

    /// Moves the table to the first `mask + 1` slots of its map, holding `rules` (its
    /// own, from [`SlotTable::rules`], and those of [`SlotTable::refused`]) in place: tells
    /// the kernel the table is off, empties every slot, puts the rules under the new mask
    /// and tells the kernel the new mask. For a table that has no region beside it (see
    /// [`SlotTable::region_beside`], which costs the kernel nothing). Returns the
    /// keys that found no free slot. The kernel must find these rules elsewhere
    /// meanwhile (the owner copies them to the hash map first). On an error the table
    /// stays off (empty, every `put` refused): the kernel may not have heard of the new
    /// mask, and slots it does not read would strand rules.
    pub fn rebuild(&mut self, mask: u32, rules: &[(Key<S>, Rule<S>)]) -> io::Result<Vec<Key<S>>> {
        let off = SlotTableInfo {
            mask: 0,
            ..self.info
        };
        self.slots.publish(&off)?;
        self.clear_all();
        self.refused.clear();
        self.retired = None;
        (self.info.mask, self.info.base) = (mask, 0);
        let unplaced = rules
            .iter()
            .filter(|(k, v)| !self.put_fresh(k, v))
            .map(|(k, _)| *k)
            .collect();
        if let Err(e) = self.publish() {
            self.clear_all();
            return Err(e);
        }
        Ok(unplaced)
    }

    /// A region of the map for a table of `mask + 1` slots beside the one the kernel
    /// reads: aligned to its size, preferably apart from the region the kernel read
    /// before that too. None when there is none (a table over half its map, which only
    /// a map too small to halve has).
    pub fn region_beside(&self, mask: u32) -> Option<Region> {
        let size = mask as usize + 1;
        let count = self.slots.slot_count();
        if !size.is_power_of_two() || size > usable(count) {
            return None;
        }
        let overlaps = |r: Option<(usize, usize)>, b: usize| {
            r.is_some_and(|(rb, rs)| b < rb + rs && rb < b + size)
        };
        let current = (self.in_use() > 0).then(|| (self.info.base as usize, self.in_use()));
        let free = || {
            (0..=count - size)
                .step_by(size)
                .filter(move |&b| !overlaps(current, b))
        };
        let b = free()
            .find(|&b| !overlaps(self.retired, b))
            .or_else(|| free().next())?;
        Some(Region {
            base: u32::try_from(b).ok()?,
            reuses_retired: overlaps(self.retired, b),
        })
    }

    /// Lays the table out at `mask + 1` slots from `region`, holding `rules` (as for
    /// [`SlotTable::rebuild`]), while the kernel goes on reading the region it was told
    /// of. The kernel hears of the new one at [`Staged::commit`]; dropped uncommitted,
    /// the table is as it was. Nothing here can fail: the map is plain memory.
    pub fn stage<'a>(
        &'a mut self,
        region: Region,
        mask: u32,
        rules: &[(Key<S>, Rule<S>)],
    ) -> Staged<'a, S> {
        let saved = Saved {
            info: self.info,
            live: self.live,
            vacated: self.vacated,
            refused: std::mem::take(&mut self.refused),
        };
        let (base, size) = (region.base as usize, mask as usize + 1);
        debug_assert!(base + size <= self.slots.slot_count());
        self.clear(base..base + size);
        (self.info.mask, self.info.base) = (mask, region.base);
        (self.live, self.vacated) = (0, 0);
        let unplaced = rules
            .iter()
            .enumerate()
            .filter(|(_, (k, v))| !self.put_fresh(k, v))
            .map(|(i, _)| i)
            .collect();
        Staged {
            table: self,
            saved: Some(saved),
            unplaced,
        }
    }

    /// Empties up to `max` slots of the region the kernel read before the last commit,
    /// for an owner who knows that no frame reads it any more; returns how many slots
    /// of it are left. So the map holds no rule outside the table: a daemon adopting
    /// the map (one that predates `SlotTableInfo::base` included) finds none there.
    pub fn clear_retired(&mut self, max: usize) -> usize {
        let Some((base, len)) = self.retired else {
            return 0;
        };
        let n = len.min(max);
        self.clear(base..base + n);
        self.retired = (n < len).then_some((base + n, len - n));
        len - n
    }

    /// Empties every slot and turns the table off on this side.
    fn clear_all(&mut self) {
        self.clear(0..self.slots.slot_count());
        self.info.mask = 0;
        self.live = 0;
        self.vacated = 0;
    }

    /// Empties map slots `range` (those not empty already).
    fn clear(&mut self, range: std::ops::Range<usize>) {
        let (empty, none) = (S::Slot::default(), Key::<S>::default());
        for p in range {
            let s = self.read_at(p);
            if s.key() != none || s.seq() & 1 != 0 {
                self.write_at(p, &empty);
            }
        }
    }

    /// Slot `i` of the table.
    fn read(&self, i: usize) -> S::Slot {
        self.read_at(self.info.base as usize + i)
    }

    /// Writes slot `i` of the table (see [`SlotTable::write_at`]).
    fn write(&mut self, i: usize, v: &S::Slot) {
        self.write_at(self.info.base as usize + i, v);
    }

    /// Map slot `i`.
    fn read_at(&self, i: usize) -> S::Slot {
        debug_assert!(i < self.slots.slot_count());
        // SAFETY: `i` is below the slot count (callers mask it), the memory lives as
        // long as `self.slots`, and only this writer changes it (the kernel only reads).
        unsafe { std::ptr::read_volatile(self.slots.base().add(i)) }
    }

    /// Writes map slot `i` as a seqlock: `seq` odd, the other 60 bytes, `seq` even again.
    fn write_at(&mut self, i: usize, v: &S::Slot) {
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
        if self.info.mask == 0 {
            return None;
        }
        self.probes(k).find(|&i| self.read(i).key() == *k)
    }

    /// Stores `rule` under `k` (replacing its slot, else in the first free one);
    /// false when the rule has no compact form or its slots are all taken: it belongs in
    /// the hash map. A slot `k` already has then keeps the old rule: the caller removes
    /// it once the new one is in the map, so that the kernel never finds neither.
    pub fn put(&mut self, k: &Key<S>, rule: &Rule<S>) -> bool {
        self.place(k, rule, Self::slot_for)
    }

    /// As [`SlotTable::put`], into a table being filled from empty (a rebuild or a
    /// staged move); see [`SlotTable::fresh_slot_for`].
    fn put_fresh(&mut self, k: &Key<S>, rule: &Rule<S>) -> bool {
        self.place(k, rule, Self::fresh_slot_for)
    }

    /// Writes `rule` under `k` in the slot `find` gives, noting `k` as refused if none.
    fn place(
        &mut self,
        k: &Key<S>,
        rule: &Rule<S>,
        find: impl FnOnce(&mut Self, &Key<S>) -> Option<usize>,
    ) -> bool {
        let Some(slot) = S::Slot::compact(k, rule) else {
            self.refused.remove(k);
            return false;
        };
        if self.info.mask == 0 {
            return false;
        }
        match find(self, k) {
            Some(i) => {
                self.write(i, &slot);
                self.refused.remove(k);
                true
            }
            None => {
                self.refused.insert(*k);
                false
            }
        }
    }

    /// The slot `k` has, else the first empty or vacated one (now counted as taken):
    /// never past an empty one, where the kernel's probe stops.
    fn slot_for(&mut self, k: &Key<S>) -> Option<usize> {
        if let Some(i) = self.find(k) {
            return Some(i);
        }
        let empty = Key::<S>::default();
        let free = self.probes(k).find(|&i| {
            let o = self.read(i).key();
            o == empty || o == S::Slot::VACATED
        })?;
        if self.read(free).key() == S::Slot::VACATED {
            self.vacated -= 1;
        }
        self.live += 1;
        Some(free)
    }

    /// [`SlotTable::slot_for`] in a table being filled from empty: nothing there is
    /// vacated or stored past an empty slot, so the first empty slot of `k`'s probes ends
    /// the search (the slot `k` already took, if any, comes before it). One or two cache
    /// lines per rule where `slot_for` reads all 16 probes of a new key: a move of 11 000
    /// rules took 1.7 ms with it.
    fn fresh_slot_for(&mut self, k: &Key<S>) -> Option<usize> {
        let empty = Key::<S>::default();
        for i in self.probes(k) {
            let at = self.read(i).key();
            if at == *k {
                return Some(i);
            }
            if at == empty {
                self.live += 1;
                return Some(i);
            }
        }
        None
    }

    /// Whether `k` has a slot.
    pub fn contains(&self, k: &Key<S>) -> bool {
        self.find(k).is_some()
    }

    /// The rule under `k`.
    pub fn get(&self, k: &Key<S>) -> Option<Rule<S>> {
        self.find(k).map(|i| self.read(i).rule())
    }

    /// Removes the rule under `k`, leaving its slot vacated (emptying it could end the
    /// kernel's probe before a key stored further on); false if there was none.
    pub fn remove(&mut self, k: &Key<S>) -> bool {
        self.refused.remove(k);
        self.vacate(k)
    }

    /// Removes the slot of `k` (as [`SlotTable::remove`]) but keeps `k` among the
    /// refused keys if it is one: for the owner that has just put `k`'s rule in the hash
    /// map because [`SlotTable::put`] refused it, so that a rebuild still takes it in.
    pub fn vacate(&mut self, k: &Key<S>) -> bool {
        match self.find(k) {
            Some(i) => {
                self.write(i, &S::Slot::vacated());
                self.live -= 1;
                self.vacated += 1;
                self.trim(i);
                true
            }
            None => false,
        }
    }

    /// Empties the vacated slots that end at slot `i` when the slot after `i` is empty:
    /// no key is stored past an empty slot, so none is past them either, and the kernel
    /// may stop there. Keeps vacated slots from piling up while rules come and go.
    fn trim(&mut self, mut i: usize) {
        let mask = self.info.mask as usize;
        if mask == 0 || self.read((i + 1) & mask).key() != Key::<S>::default() {
            return;
        }
        while self.read(i).key() == S::Slot::VACATED {
            self.write(i, &S::Slot::default());
            self.vacated -= 1;
            i = i.wrapping_sub(1) & mask;
        }
    }

    /// Live keys stored past an empty slot of their probe sequence, where the kernel's
    /// probe never reaches: left by a daemon that emptied removed rules' slots (before
    /// slots were vacated instead). A rebuild places them again.
    pub fn hidden(&self) -> usize {
        let empty = Key::<S>::default();
        (0..self.in_use())
            .filter(|&i| {
                let k = self.read(i).key();
                k != empty
                    && k != S::Slot::VACATED
                    && self
                        .probes(&k)
                        .take_while(|&p| p != i)
                        .any(|p| self.read(p).key() == empty)
            })
            .count()
    }

    /// Slots of the map outside the table that are not empty (a place the table left,
    /// until [`SlotTable::clear_retired`] has emptied it).
    pub fn outside(&self) -> usize {
        let (b, n) = (self.info.base as usize, self.in_use());
        (0..self.slots.slot_count())
            .filter(|&p| !(b..b + n).contains(&p))
            .filter(|&p| {
                let s = self.read_at(p);
                s.key() != Key::<S>::default() || s.seq() & 1 != 0
            })
            .count()
    }

    /// Empties `k`'s slot as a daemon before vacated slots did (for tests of adoption);
    /// false if `k` has no slot.
    #[doc(hidden)]
    pub fn empty_slot_for_test(&mut self, k: &Key<S>) -> bool {
        let Some(i) = self.find(k) else {
            return false;
        };
        self.write(i, &S::Slot::default());
        self.live -= 1;
        true
    }

    /// Sets the seqlock word of `k`'s slot to `seq` (an odd value: a write in progress),
    /// for tests of the kernel's reader; false if `k` has no slot.
    #[doc(hidden)]
    pub fn set_seq_for_test(&mut self, k: &Key<S>, seq: u32) -> bool {
        let Some(i) = self.find(k) else {
            return false;
        };
        // SAFETY: slot `i` is inside the memory; `seq` is its first word (see `write`).
        unsafe {
            AtomicU32::from_ptr(
                self.slots
                    .base()
                    .add(self.info.base as usize + i)
                    .cast::<u32>(),
            )
        }
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
        for p in 0..self.slots.slot_count() {
            let s = self.read_at(p);
            let (key, seq) = (s.key(), s.seq());
            if (key == empty || key == S::Slot::VACATED) && seq & 1 == 0 {
                continue;
            }
            // Its index in the table, if it is in the table's region.
            let i = p
                .checked_sub(self.info.base as usize)
                .filter(|&i| i < self.in_use());
            let reachable = key != empty
                && key != S::Slot::VACATED
                && i.is_some_and(|i| self.probes(&key).any(|q| q == i));
            if i.is_none() {
                // Outside the table: what a region the table left still held (see
                // `stage`), or a table without its info. The kernel never reads it.
                self.write_at(p, &S::Slot::default());
            } else if seq & 1 == 0 && reachable && keep(&key, &s.rule()) {
                kept += 1;
            } else {
                // Vacated, not emptied, where the kernel probes (see `remove`).
                self.write_at(p, &S::Slot::vacated());
                removed += 1;
            }
        }
        self.count();
        for i in 0..self.in_use() {
            if self.read(i).key() == S::Slot::VACATED {
                self.trim(i);
            }
        }
        (kept, removed)
    }
}

/// What a table was before [`SlotTable::stage`].
struct Saved<K> {
    info: SlotTableInfo,
    live: usize,
    vacated: usize,
    refused: std::collections::HashSet<K>,
}

/// A table laid out in a new region that the kernel has not been told of yet (see
/// [`SlotTable::stage`]).
pub struct Staged<'a, S: Slots> {
    table: &'a mut SlotTable<S>,
    /// The table before staging; None once committed.
    saved: Option<Saved<Key<S>>>,
    unplaced: Vec<usize>,
}

impl<S: Slots> Staged<'_, S> {
    /// The table as staged (for tests: the kernel's view is still the old one).
    #[cfg(test)]
    fn table(&self) -> &SlotTable<S> {
        self.table
    }

    /// The positions in the staged rules of those that found no slot: the kernel must
    /// find them in the hash map before the commit.
    pub fn unplaced(&self) -> &[usize] {
        &self.unplaced
    }

    /// Tells the kernel the new base and mask. On an error the kernel still reads the
    /// old region, and the table is as it was.
    pub fn commit(mut self) -> io::Result<()> {
        self.table.publish()?;
        if let Some(old) = self.saved.take() {
            self.table.retired =
                (old.info.mask != 0).then(|| (old.info.base as usize, old.info.mask as usize + 1));
        }
        Ok(())
    }
}

impl<S: Slots> Drop for Staged<'_, S> {
    fn drop(&mut self) {
        if let Some(old) = self.saved.take() {
            // The kernel was never told of the new region: the old one is intact, and
            // the new one is emptied again.
            let t = &mut *self.table;
            let (base, size) = (t.info.base as usize, t.in_use());
            t.clear(base..base + size);
            (t.info, t.live, t.vacated, t.refused) = (old.info, old.live, old.vacated, old.refused);
        }
    }
}

/// The most slots a table of a map of `n` slots grows to: half the map's usable slots,
/// so that a table can always be moved rather than rebuilt in place (see
/// [`SlotTable::region_beside`]), except in a map too small to halve (then all of it).
/// Rebuilding in place copies every rule to the hash map and back (about 2.3 µs a rule,
/// 100 ms for 45 000) on the worker that set up one allocation; past half the map, the
/// rules that find no slot wait in the hash map instead (slower lookups for those only).
fn largest(n: usize) -> usize {
    let all = usable(n);
    if all / 2 >= MIN_SLOTS { all / 2 } else { all }
}

/// The largest power of two of `n` slots (0 for none).
fn usable(n: usize) -> usize {
    if n == 0 { 0 } else { 1usize << n.ilog2() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_common::turn::{mapped_v4, wire};

    fn table(slots: usize, seed: u64) -> SlotTable<HeapSlots<ChannelSlot>> {
        SlotTable::new(HeapSlots::new(slots), seed, Some((slots as u32 - 1, 0)))
    }

    pub(super) fn key(port: u16, channel: u16) -> ChannelKeyV4 {
        ChannelKeyV4 {
            client_addr: [192, 0, 2, 7],
            server_addr: [198, 51, 100, 1],
            client_port: wire(port),
            server_port: wire(3478),
            channel: wire(channel),
            _pad: [0; 2],
        }
    }

    pub(super) fn rule(stats_idx: u32) -> ChannelRule {
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
        // At a load of 0.61 with 16 probes about 0.2% overflow (4 probes left ~5%).
        assert!(refused < 60, "{refused} refused");
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

    /// Where the kernel finds `k` (relay-ebpf's `table_slot`): its probes in order, up
    /// to the first empty slot.
    fn kernel_find(t: &SlotTable<HeapSlots<ChannelSlot>>, k: &ChannelKeyV4) -> Option<usize> {
        for i in t.probes(k) {
            let at = t.read(i).key;
            if at == *k {
                return Some(i);
            }
            if at == ChannelKeyV4::default() {
                return None;
            }
        }
        None
    }

    /// `n` keys sharing one home slot in `t`, and that slot.
    fn same_home(t: &SlotTable<HeapSlots<ChannelSlot>>, n: usize) -> (Vec<ChannelKeyV4>, usize) {
        let home = |k: &ChannelKeyV4| {
            let (w0, w1) = channel_key_words(k);
            slot_home(w0, w1, &t.info()) as usize
        };
        let h = home(&key(1, 0x4000));
        let keys: Vec<_> = (1..u16::MAX)
            .map(|p| key(p, 0x4000))
            .filter(|k| home(k) == h)
            .take(n)
            .collect();
        assert_eq!(keys.len(), n);
        (keys, h)
    }

    #[test]
    fn a_removed_rule_leaves_its_slot_vacated_so_later_keys_stay_reachable() {
        let mut t = table(1024, 3);
        let (k, h) = same_home(&t, 4);
        let at = |i: usize| (h + i) & 1023;
        for (i, key) in k[..3].iter().enumerate() {
            assert!(t.put(key, &rule(i as u32)));
            assert_eq!(kernel_find(&t, key), Some(at(i)));
        }
        // The first goes: its slot is vacated, not emptied, or the kernel's probe for the
        // other two would stop there.
        assert!(t.remove(&k[0]));
        assert_eq!(t.read(at(0)).key, ChannelKeyV4::VACATED);
        assert_eq!((t.live(), t.vacated()), (2, 1));
        assert_eq!(kernel_find(&t, &k[1]), Some(at(1)));
        assert_eq!(kernel_find(&t, &k[2]), Some(at(2)));
        assert_eq!(kernel_find(&t, &k[0]), None);
        // A new key of that home takes the vacated slot.
        assert!(t.put(&k[3], &rule(3)));
        assert_eq!(kernel_find(&t, &k[3]), Some(at(0)));
        assert_eq!((t.live(), t.vacated()), (3, 0));
        // The last of the cluster goes: nothing is past it, so it is emptied.
        assert!(t.remove(&k[2]));
        assert_eq!(t.read(at(2)).key, ChannelKeyV4::default());
        // The middle one goes: vacated, then emptied as the end of the cluster.
        assert!(t.remove(&k[1]));
        assert_eq!(t.read(at(1)).key, ChannelKeyV4::default());
        assert_eq!((t.live(), t.vacated()), (1, 0));
        assert!(t.remove(&k[3]));
        assert!((0..1024).all(|i| t.read(i).key == ChannelKeyV4::default()));
        assert_eq!((t.live(), t.vacated()), (0, 0));
    }

    #[test]
    fn rules_coming_and_going_stay_where_the_kernel_finds_them() {
        // 3 000 random puts and removes of 900 keys in 1 024 slots (loads up to 0.88,
        // far past the 11/16 a daemon allows): after each, every key in the table is
        // where the kernel's probe finds it, and the counts are right.
        let mut t = table(1024, 11);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut inside = std::collections::HashSet::new();
        for op in 0..3_000 {
            let p = (next() % 900) as u16 + 1;
            let k = key(p, 0x4000);
            if next() % 3 == 0 {
                assert_eq!(t.remove(&k), inside.remove(&p), "op {op}");
            } else if t.put(&k, &rule(u32::from(p))) {
                inside.insert(p);
            }
            for q in &inside {
                let at = kernel_find(&t, &key(*q, 0x4000));
                assert!(at.is_some(), "op {op}: key {q} hidden from the kernel");
            }
            assert_eq!(t.hidden(), 0, "op {op}");
            let (live, vacated) = (t.live(), t.vacated());
            t.count();
            assert_eq!((live, vacated), (t.live(), t.vacated()), "op {op}");
            assert_eq!(live, inside.len(), "op {op}");
        }
    }

    #[test]
    fn vacated_slots_count_towards_a_rebuild_at_the_same_size() {
        // 4 096 slots, 1 024 in use: 700 rules, 200 removed (most vacated), then new
        // rules until the table asks to be rebuilt: at its size, since its live rules
        // fit, and the rebuild empties the vacated slots.
        let mut t = SlotTable::new(HeapSlots::<ChannelSlot>::new(4096), 21, Some((1023, 0)));
        for p in 1..=700u16 {
            t.put(&key(p, 0x4000), &rule(u32::from(p)));
        }
        for p in 1..=200u16 {
            assert!(t.remove(&key(p, 0x4000)) || !t.contains(&key(p, 0x4000)));
        }
        let mut p = 1_000u16;
        while t.grow_mask().is_none() {
            t.put(&key(p, 0x4000), &rule(u32::from(p)));
            p += 1;
        }
        assert!(t.vacated() >= 64, "{} vacated slots left", t.vacated());
        assert!((t.live() + 1) * 16 <= 1024 * 11, "the live rules fit");
        assert_eq!(t.grow_mask(), Some(1023), "rebuilt at its size");
        let rules = t.rules();
        let unplaced = t.rebuild(1023, &rules).expect("rebuilt");
        assert_eq!(t.vacated(), 0);
        for (k, _) in rules.iter().filter(|(k, _)| !unplaced.contains(k)) {
            assert!(kernel_find(&t, k).is_some(), "{k:?}");
        }
    }

    #[test]
    fn a_full_table_whose_rules_come_and_go_is_not_rebuilt_at_every_change() {
        // A map of 1 024 slots, all in use, holding more than 11/16 of them: it cannot
        // grow, and a few vacated slots are not worth a rebuild.
        let mut t = table(1024, 8);
        let mut p = 1u16;
        while t.live() < 720 {
            t.put(&key(p, 0x4000), &rule(u32::from(p)));
            p += 1;
        }
        assert_eq!(t.grow_mask(), None, "at its map's size, nothing vacated");
        let mut removed = 0;
        for q in 1..p {
            if t.vacated() >= 63 {
                break;
            }
            removed += usize::from(t.remove(&key(q, 0x4000)));
            assert_eq!(t.grow_mask(), None, "{} vacated", t.vacated());
        }
        assert!(removed > 0);
        // One more vacated slot: a sixteenth of the table, worth emptying.
        let q = (1..p).find(|&q| {
            let k = key(q, 0x4000);
            t.contains(&k) && {
                let at = t.find(&k).expect("in the table");
                t.read((at + 1) & 1023).key != ChannelKeyV4::default()
            }
        });
        assert!(t.remove(&key(q.expect("a rule inside a cluster"), 0x4000)));
        assert_eq!(t.vacated(), 64);
        assert_eq!(t.grow_mask(), Some(1023));
    }

    #[test]
    fn keys_an_older_daemon_hid_behind_an_emptied_slot_are_found_and_replaced() {
        let mut t = table(1024, 3);
        let (k, h) = same_home(&t, 2);
        assert!(t.put(&k[0], &rule(0)));
        assert!(t.put(&k[1], &rule(1)));
        assert_eq!(t.hidden(), 0);
        // An older daemon emptied the first key's slot when it removed it.
        t.write(h, &ChannelSlot::default());
        assert_eq!(kernel_find(&t, &k[1]), None, "hidden from the kernel");
        assert_eq!(t.hidden(), 1);
        let rules = t.rules();
        assert_eq!(t.rebuild(1023, &rules).expect("rebuilt"), Vec::new());
        assert_eq!(t.hidden(), 0);
        assert_eq!(kernel_find(&t, &k[1]), Some(h));
        // `retain` vacates what it drops where a later key may lie.
        assert!(t.put(&k[0], &rule(0)));
        assert_eq!(kernel_find(&t, &k[0]), Some((h + 1) & 1023));
        assert_eq!(t.retain(|_, r| r.stats_idx == 0), (1, 1));
        assert_eq!(t.read(h).key, ChannelKeyV4::VACATED);
        assert_eq!(kernel_find(&t, &k[0]), Some((h + 1) & 1023));
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
                        base: 0,
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
        let k = t.read(stray).key;
        assert!(k == ChannelKeyV4::default() || k == ChannelKeyV4::VACATED);
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

    /// What `TurnMaps` does around a table (see `rules::resize_table`), with a set for
    /// the hash map: rebuild before a new key when the table should grow, after a
    /// removal when it should shrink; beside the old place where there is room, in
    /// place otherwise. (The hash-map copies of refused rules a move placed are dropped
    /// at once here: there is no concurrent reader.)
    pub(super) struct Owner {
        pub(super) t: SlotTable<HeapSlots<ChannelSlot>>,
        pub(super) map: std::collections::HashMap<ChannelKeyV4, ChannelRule>,
        pub(super) resizes: Vec<(usize, usize)>,
    }

    impl Owner {
        pub(super) fn new(slots: usize, seed: u64) -> Owner {
            Owner {
                t: SlotTable::new(HeapSlots::new(slots), seed, None),
                map: Default::default(),
                resizes: Vec::new(),
            }
        }
        fn resize(&mut self, mask: u32) {
            let mut rules = self.t.rules();
            let from = self.t.in_use();
            let own = rules.len();
            rules.extend(self.t.refused().iter().map(|k| (*k, self.map[k])));
            if let Some(region) = self.t.region_beside(mask) {
                let staged = self.t.stage(region, mask, &rules);
                let unplaced = staged.unplaced().to_vec();
                for &i in unplaced.iter().filter(|&&i| i < own) {
                    self.map.insert(rules[i].0, rules[i].1);
                }
                staged.commit().expect("publish");
                for (i, (k, _)) in rules.iter().enumerate().skip(own) {
                    if !unplaced.contains(&i) {
                        self.map.remove(k);
                    }
                }
            } else {
                self.map.extend(rules.iter().copied());
                let unplaced = self.t.rebuild(mask, &rules).expect("publish");
                for (k, _) in &rules {
                    if !unplaced.contains(k) {
                        self.map.remove(k);
                    }
                }
            }
            self.resizes.push((from, self.t.in_use()));
        }
        pub(super) fn insert(&mut self, k: &ChannelKeyV4, v: &ChannelRule) {
            if !self.t.contains(k)
                && let Some(m) = self.t.grow_mask()
            {
                self.resize(m);
            }
            if self.t.put(k, v) {
                self.map.remove(k);
            } else {
                self.map.insert(*k, *v);
                self.t.vacate(k);
            }
        }
        /// (base, mask) of everything told to the kernel, in order.
        fn places(&self) -> Vec<(u32, u32)> {
            let p = &self.t.slots.published;
            p.iter().map(|i| (i.base, i.mask)).collect()
        }
        pub(super) fn remove(&mut self, k: &ChannelKeyV4) {
            if !self.t.remove(k) {
                assert!(self.map.remove(k).is_some(), "{k:?} was somewhere");
            }
            if let Some(m) = self.t.shrink_mask() {
                self.resize(m);
            }
        }
    }

    #[test]
    fn a_table_uses_as_many_slots_as_its_rules_need() {
        let mut o = Owner::new(131_072, 77);
        assert_eq!(o.t.in_use(), MIN_SLOTS, "a fresh table starts small");
        for p in 0..10_000u16 {
            o.insert(&key(20_000 + p, 0x4000), &rule(u32::from(p)));
        }
        // 10 000 rules take at most 11/16 of 16 384 slots: the size the bench found
        // fastest; reached by doubling from 1 024.
        assert_eq!(o.t.in_use(), 16_384);
        assert_eq!(
            o.resizes,
            [(1024, 2048), (2048, 4096), (4096, 8192), (8192, 16_384)]
        );
        assert_eq!(o.t.live() + o.map.len(), 10_000, "every rule in one place");
        // Rules refused by a smaller table moved in at each rebuild: only those the
        // last size refused are left (about 0.2% at a load of 0.61 with 16 probes; with
        // 4, about 5%, and 12% before the rebuild took them in).
        assert!(o.map.len() < 60, "{} rules in the hash map", o.map.len());
        for p in 0..10_000u16 {
            let k = key(20_000 + p, 0x4000);
            let v = rule(u32::from(p));
            assert!(o.t.get(&k) == Some(v) || o.map.get(&k) == Some(&v));
        }
        // Every move told the kernel the new place and size in one write, same seed,
        // never "off": each table was laid out beside the one before.
        let places = o.places();
        assert_eq!(
            places,
            [(2048, 2047), (4096, 4095), (8192, 8191), (16_384, 16_383)]
        );
        assert!(o.t.slots.published.iter().all(|i| i.seed == 77));
        // No slot past the table holds anything (the regions it left below it still
        // do, unread).
        let none = ChannelKeyV4::default();
        assert!((32_768..131_072).all(|i| o.t.read_at(i).key == none));

        // Going back down: shrinks once fewer than 1/8 of the slots hold rules, to
        // where at most 11/32 do.
        for p in 0..9_000u16 {
            o.remove(&key(20_000 + p, 0x4000));
        }
        assert_eq!(o.t.live() + o.map.len(), 1_000);
        assert_eq!(o.t.in_use(), 4096, "{:?}", o.resizes);
        for p in 9_000..10_000u16 {
            let k = key(20_000 + p, 0x4000);
            let v = rule(u32::from(p));
            assert!(o.t.get(&k) == Some(v) || o.map.get(&k) == Some(&v));
        }
        for p in 9_000..10_000u16 {
            o.remove(&key(20_000 + p, 0x4000));
        }
        assert_eq!((o.t.in_use(), o.t.live(), o.map.len()), (MIN_SLOTS, 0, 0));
    }

    #[test]
    fn a_table_grows_to_half_its_map_by_moves_only() {
        let mut o = Owner::new(4096, 3);
        for p in 0..3_000u16 {
            o.insert(&key(20_000 + p, 0x4000), &rule(u32::from(p)));
        }
        assert_eq!(o.t.in_use(), 2048);
        assert_eq!(o.resizes, [(1024, 2048)]);
        // Moved beside, never "off".
        let places = o.places();
        assert_eq!(places, [(2048, 2047)]);
        assert_eq!(o.t.live() + o.map.len(), 3_000);
        assert_eq!(
            o.t.grow_mask(),
            None,
            "half the map: the rest goes to the hash map"
        );
    }

    #[test]
    fn a_map_too_small_to_halve_is_rebuilt_in_place() {
        // 1 024 slots: the table is the whole map, so a rebuild to empty its vacated
        // slots has no room beside it.
        let mut o = Owner::new(1024, 3);
        let ports: Vec<u16> = (0..700).collect();
        for &p in &ports {
            o.insert(&key(20_000 + p, 0x4000), &rule(u32::from(p)));
        }
        for &p in &ports[..300] {
            o.remove(&key(20_000 + p, 0x4000));
        }
        let vacated = o.t.vacated();
        for p in 700..1_100u16 {
            o.insert(&key(20_000 + p, 0x4000), &rule(u32::from(p)));
        }
        assert!(
            vacated > 0 && !o.resizes.is_empty(),
            "{vacated} vacated, {:?}",
            o.resizes
        );
        assert!(
            o.resizes
                .iter()
                .all(|&(from, to)| (from, to) == (1024, 1024))
        );
        let places = o.places();
        assert_eq!(
            places[..2],
            [(0, 0), (0, 1023)],
            "off, then on at the same size"
        );
        assert_eq!(o.t.vacated(), 0, "emptied");
        for p in 300..1_100u16 {
            let k = key(20_000 + p, 0x4000);
            assert!(o.t.get(&k).or(o.map.get(&k).copied()) == Some(rule(u32::from(p))));
        }
    }

    #[test]
    fn an_adopted_mask_is_kept_and_a_foreign_one_is_not() {
        let mut t = table(4096, 9);
        t.info.mask = 2047;
        assert!(t.put(&key(1, 0x4000), &rule(1)));
        let slots = std::mem::replace(&mut t.slots, HeapSlots::new(1));
        let adopted = SlotTable::new(slots, 9, Some((2047, 0)));
        assert_eq!((adopted.in_use(), adopted.live()), (2048, 1));
        assert_eq!(adopted.get(&key(1, 0x4000)), Some(rule(1)));
        for bad in [0, 3000, 8191, 4095] {
            let t =
                SlotTable::<HeapSlots<ChannelSlot>>::new(HeapSlots::new(4096), 9, Some((bad, 0)));
            let want = if bad == 4095 { 4096 } else { MIN_SLOTS };
            assert_eq!(t.in_use(), want, "mask {bad}");
        }
        // A table an earlier daemon moved keeps its place; one past the map's end is
        // not adopted.
        for (base, want) in [
            (2048, (2048, 2048)),
            (1024, (2048, 1024)),
            (3000, (1024, 0)),
        ] {
            let t = SlotTable::<HeapSlots<ChannelSlot>>::new(
                HeapSlots::new(4096),
                9,
                Some((2047, base)),
            );
            assert_eq!((t.in_use(), t.info().base as usize), want, "base {base}");
        }
    }

    /// Where the kernel finds `k` by what it was told last (relay-ebpf's `table_slot`:
    /// slot `base + (home + i) & mask`, up to the first empty one).
    pub(super) fn kernel_sees(
        t: &SlotTable<HeapSlots<ChannelSlot>>,
        k: &ChannelKeyV4,
    ) -> Option<ChannelRule> {
        let info = *t.slots.published.last()?;
        if info.mask == 0 {
            return None;
        }
        let (w0, w1) = channel_key_words(k);
        let home = slot_home(w0, w1, &info);
        for i in 0..CHANNEL_PROBES {
            let s = t.read_at((info.base + ((home + i) & info.mask)) as usize);
            if s.key == *k {
                return Some(s.rule());
            }
            if s.key == ChannelKeyV4::default() {
                return None;
            }
        }
        None
    }

    /// A published table of `slots` slots holding `n` rules.
    fn published_with(slots: usize, n: u16) -> SlotTable<HeapSlots<ChannelSlot>> {
        let mut t = SlotTable::new(HeapSlots::new(slots), 7, None);
        t.publish().expect("publish");
        for p in 0..n {
            assert!(t.put(&key(10_000 + p, 0x4000), &rule(u32::from(p))));
        }
        t
    }

    #[test]
    fn a_table_is_moved_beside_the_one_the_kernel_reads() {
        let mut t = published_with(8192, 500);
        let all = |t: &SlotTable<HeapSlots<ChannelSlot>>| {
            (0..500u16)
                .all(|p| kernel_sees(t, &key(10_000 + p, 0x4000)) == Some(rule(u32::from(p))))
        };
        assert!(all(&t));
        let region = t.region_beside(2047).expect("room beside");
        assert_eq!(
            region,
            Region {
                base: 2048,
                reuses_retired: false
            },
            "the first place of its size clear of the table"
        );
        let rules = t.rules();
        let staged = t.stage(region, 2047, &rules);
        assert!(staged.unplaced().is_empty());
        // Laid out, not yet told: the kernel reads the old place, whole.
        assert_eq!(staged.table().slots.published.len(), 1);
        assert!(all(staged.table()));
        staged.commit().expect("publish");
        assert_eq!(
            t.slots
                .published
                .iter()
                .map(|i| (i.base, i.mask))
                .collect::<Vec<_>>(),
            [(0, 1023), (2048, 2047)],
            "told the new place in one write, never \"off\""
        );
        assert!(all(&t));
        assert_eq!((t.in_use(), t.live()), (2048, 500));
        // The old place stays as it was for frames that read it just before, until the
        // owner has it emptied, a part at a time.
        assert_eq!(t.outside(), 500);
        assert_eq!(t.clear_retired(1000), 24);
        assert_eq!(t.clear_retired(1000), 0);
        assert_eq!((t.outside(), t.clear_retired(1000)), (0, 0));
        assert!(all(&t));
        // Rules come and go in the new place.
        assert!(t.remove(&key(10_000, 0x4000)));
        assert!(t.put(&key(9_000, 0x4000), &rule(900)));
        assert_eq!(kernel_sees(&t, &key(9_000, 0x4000)), Some(rule(900)));
        assert_eq!(kernel_sees(&t, &key(10_000, 0x4000)), None);
    }

    #[test]
    fn a_move_avoids_the_table_and_the_place_the_kernel_read_before() {
        let mut t = published_with(4096, 10);
        let go = |t: &mut SlotTable<HeapSlots<ChannelSlot>>, mask: u32| {
            let region = t.region_beside(mask)?;
            let rules = t.rules();
            t.stage(region, mask, &rules).commit().expect("publish");
            Some(region)
        };
        let at = |base, reuses_retired| {
            Some(Region {
                base,
                reuses_retired,
            })
        };
        assert_eq!(go(&mut t, 2047), at(2048, false));
        // The same size again: only the place read before is clear of the table; the
        // owner waits out the grace period before staging there.
        assert_eq!(t.region_beside(2047), at(0, true));
        assert_eq!(
            go(&mut t, 1023),
            at(1024, false),
            "clear of the table and of the place read before"
        );
        assert_eq!(go(&mut t, 1023), at(0, false), "clear of 1024 and 2048");
        assert_eq!(t.region_beside(4095), None, "the whole map: no room beside");
        assert_eq!(t.live(), 10);
    }

    #[test]
    fn a_move_the_kernel_never_heard_of_leaves_the_table_as_it_was() {
        let mut t = published_with(8192, 300);
        t.remove(&key(10_000, 0x4000));
        let before = (t.info(), t.live(), t.vacated(), t.in_use());
        let rules = t.rules();
        let region = t.region_beside(2047).expect("room");
        drop(t.stage(region, 2047, &rules));
        assert_eq!(
            (t.info(), t.live(), t.vacated(), t.in_use()),
            before,
            "dropped"
        );
        assert_eq!(t.outside(), 0, "the staged place emptied again");
        t.slots.fail_publish = true;
        assert!(t.stage(region, 2047, &rules).commit().is_err());
        assert_eq!(
            (t.info(), t.live(), t.vacated(), t.in_use()),
            before,
            "refused"
        );
        // Still the kernel's table, and this side's.
        for p in 1..300u16 {
            assert_eq!(
                kernel_sees(&t, &key(10_000 + p, 0x4000)),
                Some(rule(u32::from(p)))
            );
            assert_eq!(t.get(&key(10_000 + p, 0x4000)), Some(rule(u32::from(p))));
        }
        assert!(t.put(&key(9_000, 0x4000), &rule(900)));
        assert_eq!(kernel_sees(&t, &key(9_000, 0x4000)), Some(rule(900)));
        assert_eq!(t.slots.published.len(), 1);
    }

    #[test]
    fn a_move_places_the_rules_it_was_given_and_says_which_found_no_slot() {
        // 8 slots can take at most 8 of 20 rules.
        let mut t = published_with(2048, 0);
        let rules: Vec<_> = (0..20u16)
            .map(|p| (key(30_000 + p, 0x4001), rule(u32::from(p))))
            .collect();
        let region = t.region_beside(7).expect("room");
        let staged = t.stage(region, 7, &rules);
        let unplaced = staged.unplaced().to_vec();
        staged.commit().expect("publish");
        assert_eq!(unplaced.len(), 12);
        for (i, (k, v)) in rules.iter().enumerate() {
            let placed = !unplaced.contains(&i);
            assert_eq!(kernel_sees(&t, k), placed.then_some(*v), "rule {i}");
        }
        // The rules without a slot are the refused ones a later move takes in.
        let mut refused = t.refused();
        refused.sort_by_key(|k| k.client_port);
        let mut want: Vec<_> = unplaced.iter().map(|&i| rules[i].0).collect();
        want.sort_by_key(|k| k.client_port);
        assert_eq!(refused, want);
    }

    #[test]
    fn retain_clears_the_places_a_moved_table_left() {
        let mut t = published_with(8192, 200);
        let rules = t.rules();
        let region = t.region_beside(2047).expect("room");
        t.stage(region, 2047, &rules).commit().expect("publish");
        // A restarted daemon adopts the moved table: its rules are kept, the 200 stale
        // copies in the old place are emptied and not counted as rules removed.
        let slots = std::mem::replace(&mut t.slots, HeapSlots::new(1));
        let mut adopted = SlotTable::new(slots, 7, Some((2047, 2048)));
        assert_eq!(adopted.live(), 200);
        assert_eq!(adopted.retain(|_, _| true), (200, 0));
        let none = ChannelKeyV4::default();
        assert!((0..1024).all(|i| adopted.read_at(i).key == none));
        assert_eq!(adopted.get(&key(10_005, 0x4000)), Some(rule(5)));
    }

    #[test]
    fn a_rebuild_the_kernel_did_not_hear_of_leaves_the_table_off() {
        let mut t = table(4096, 9);
        for p in 0..100u16 {
            assert!(t.put(&key(p, 0x4000), &rule(u32::from(p))));
        }
        let rules = t.rules();
        assert_eq!(rules.len(), 100);
        // The "off" is refused: nothing changed.
        t.slots.fail_publish = true;
        assert!(t.rebuild(2047, &rules).is_err());
        assert_eq!((t.in_use(), t.live()), (4096, 100));
        assert_eq!(t.get(&key(5, 0x4000)), Some(rule(5)));
        // The new mask is refused: the kernel reads no table (it was told "off"), so
        // this side keeps none either, and every rule goes to the hash map from now on.
        t.slots.fail_publish = false;
        t.slots.fail_second_publish = true;
        assert!(t.rebuild(2047, &rules).is_err());
        assert_eq!(t.slots.published.last().map(|i| i.mask), Some(0));
        assert_eq!((t.in_use(), t.live()), (0, 0));
        assert!(!t.put(&key(5, 0x4000), &rule(5)));
        assert!(!t.contains(&key(5, 0x4000)));
        let none = ChannelKeyV4::default();
        assert!((0..4096).all(|i| t.read(i).key == none && t.read(i).seq & 1 == 0));
    }
}

/// Random rule traffic through the owner's moves and in-place rebuilds, with restarts
/// (a new table adopting the map) and the owner emptying left places: after every step
/// the kernel, reading by what it was last told, finds exactly the installed rule of the
/// key touched, and after every resize or restart that holds for every key.
#[cfg(test)]
mod moves_proptest {
    use super::tests::{Owner, kernel_sees, key, rule};
    use super::*;
    use proptest::prelude::*;

    /// Every key of `0..keys`: installed ones found (table or map, one place only),
    /// others nowhere; no key stored past an empty slot; counts right.
    fn check_all(o: &mut Owner, model: &std::collections::HashMap<u16, u32>, keys: u16) {
        for p in 0..keys {
            let k = key(p, 0x4000);
            let want = model.get(&p).map(|&i| rule(i));
            let kernel = kernel_sees(&o.t, &k);
            let map = o.map.get(&k).copied();
            assert!(kernel.is_none() || map.is_none(), "key {p} in two places");
            assert_eq!(kernel.or(map), want, "key {p}");
            assert_eq!(o.t.get(&k).or(map), want, "key {p} on this side");
        }
        assert_eq!(o.t.hidden(), 0);
        let (live, vacated) = (o.t.live(), o.t.vacated());
        o.t.count();
        assert_eq!((live, vacated), (o.t.live(), o.t.vacated()));
        assert_eq!(live + o.map.len(), model.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn the_kernel_finds_every_rule_through_moves_rebuilds_and_restarts(seed in any::<u64>()) {
            const KEYS: u16 = 5_000;
            let mut rng = seed | 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            // 8 192 slots: 1 024 → 2 048 → 4 096 (half the map), all moves.
            let mut o = Owner::new(8192, next());
            o.t.publish().expect("publish");
            let mut model = std::collections::HashMap::new();
            for step in 0..16_000u32 {
                // Waves: 2 000 steps of mostly inserts, then 2 000 of mostly removals, so
                // that the table moves back and forth over places it used before.
                let insert = (next() % 10) < if (step / 2_000) % 2 == 0 { 8 } else { 2 };
                let p = (next() % 2_200) as u16;
                let k = key(p, 0x4000);
                let resizes = o.resizes.len();
                if insert {
                    let idx = (next() % 1_000_000) as u32;
                    o.insert(&k, &rule(idx));
                    model.insert(p, idx);
                } else if model.remove(&p).is_some() {
                    o.remove(&k);
                }
                let want = model.get(&p).map(|&i| rule(i));
                prop_assert_eq!(kernel_sees(&o.t, &k).or(o.map.get(&k).copied()), want);
                match next() % 1_000 {
                    0 => {
                        // A restart: a new table adopts the map where the kernel reads it.
                        let info = *o.t.slots.published.last().expect("published");
                        let slots = std::mem::replace(&mut o.t.slots, HeapSlots::new(1));
                        o.t = SlotTable::new(slots, info.seed, Some((info.mask, info.base)));
                        o.t.retain(|_, _| true);
                        check_all(&mut o, &model, KEYS);
                    }
                    1 => {
                        o.t.clear_retired((next() % 2048) as usize);
                    }
                    _ => {}
                }
                if o.resizes.len() != resizes {
                    check_all(&mut o, &model, KEYS);
                }
            }
            check_all(&mut o, &model, KEYS);
            // Every key in: the table grows to half the map.
            for p in 0..KEYS {
                let resizes = o.resizes.len();
                let idx = (next() % 1_000_000) as u32;
                o.insert(&key(p, 0x4000), &rule(idx));
                model.insert(p, idx);
                if o.resizes.len() != resizes {
                    check_all(&mut o, &model, KEYS);
                }
            }
            // And every rule out again, in key order: the table shrinks back.
            let mut left: Vec<u16> = model.keys().copied().collect();
            left.sort_unstable();
            for p in left {
                let resizes = o.resizes.len();
                model.remove(&p);
                o.remove(&key(p, 0x4000));
                if o.resizes.len() != resizes {
                    check_all(&mut o, &model, KEYS);
                }
            }
            check_all(&mut o, &model, KEYS);
            prop_assert_eq!((o.t.in_use(), o.t.live()), (MIN_SLOTS, 0));
            // The traffic made the table move up to half the map and back, never "off".
            let sizes: std::collections::HashSet<usize> =
                o.resizes.iter().map(|&(_, to)| to).collect();
            let shrank = o.resizes.iter().any(|&(from, to)| to < from);
            prop_assert!(sizes.contains(&4096) && !sizes.contains(&8192) && shrank, "{:?}", o.resizes);
            prop_assert!(o.t.slots.published.iter().all(|i| i.mask != 0));
        }
    }
}
