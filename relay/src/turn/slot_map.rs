//! An open-addressing hash map whose entries are one cache line each and whose first
//! probe follows from the key's hash alone, so a batch can prefetch its entries.
//!
//! Why: with thousands of active allocations the forwarding index's entry is a cache miss
//! on every relayed datagram (about 90 ns of 900 on the AF_XDP worker at 10 000
//! allocations), and hashbrown cannot hide it: its bucket is known only after a probe of
//! its control bytes, and the lookup waits on the bucket's key. Here the home slot is
//! `hash & mask`, so [`SlotMap::prefetch`] can ask for the line of every frame in a batch
//! before the first frame is handled, and the misses overlap instead of adding up.
//!
//! Layout: linear probing over a power-of-two array of 64-byte aligned slots, at most half
//! full (so probe runs stay short and an empty slot always ends a search), deletion by
//! backward shift (no tombstones). A slot is `Option<(K, V)>`; callers pick `K` and `V`
//! whose niche keeps the `Option` within the line (a test checks the forwarding index's
//! types).

use std::hash::{BuildHasher, Hash};

/// One slot: an entry or nothing, on a cache line of its own.
#[repr(align(64))]
#[derive(Clone, Copy)]
pub(super) struct Slot<K, V>(Option<(K, V)>);

/// See the module doc.
#[derive(Clone)]
pub(super) struct SlotMap<K, V> {
    slots: Vec<Slot<K, V>>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<K, V> std::fmt::Debug for SlotMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotMap")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl<K, V> Default for SlotMap<K, V> {
    fn default() -> Self {
        SlotMap {
            slots: Vec::new(),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// Slots of a map's first allocation.
const MIN_SLOTS: usize = 16;

impl<K: Hash + Eq + Copy, V: Copy> SlotMap<K, V> {
    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `key`'s home slot (the map has slots).
    #[inline]
    fn home(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.slots.len() - 1)
    }

    /// The slot holding `key`, if any.
    #[inline]
    fn find(&self, key: &K) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        // At most half full: an empty slot ends every run long before this bound.
        for _ in 0..self.slots.len() {
            match &self.slots[i].0 {
                None => return None,
                Some((k, _)) if k == key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
        None
    }

    /// Asks the CPU to start loading `key`'s home slot; no effect on the map's contents.
    #[inline]
    pub fn prefetch(&self, key: &K) {
        if self.len == 0 {
            return;
        }
        let slot: *const Slot<K, V> = &self.slots[self.home(key)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults and reads nothing into the
        // program; the pointer is to a live slot besides.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// The value for `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        let i = self.find(key)?;
        self.slots[i].0.as_ref().map(|(_, v)| v)
    }

    /// The value for `key`, to change in place.
    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key)?;
        self.slots[i].0.as_mut().map(|(_, v)| v)
    }

    /// Sets `key`'s value, replacing one it had.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(i) = self.find(&key) {
            self.slots[i].0 = Some((key, value));
            return;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.place(key, value);
        self.len += 1;
    }

    /// Puts a key known to be absent into the first free slot of its run.
    fn place(&mut self, key: K, value: V) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(&key);
        while self.slots[i].0.is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i].0 = Some((key, value));
    }

    /// Doubles the slots (or makes the first ones) and places every entry again.
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![Slot(None); n]);
        for (k, v) in old.into_iter().filter_map(|s| s.0) {
            self.place(k, v);
        }
    }

    /// Takes `key`'s entry out, closing the gap so no other key's run is broken.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let mut gap = self.find(key)?;
        let out = self.slots[gap].0.take().map(|(_, v)| v);
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut j = gap;
        loop {
            j = (j + 1) & mask;
            let Some((k, _)) = &self.slots[j].0 else {
                break;
            };
            // The entry at j may fill the gap unless its home lies cyclically in
            // (gap, j]: moving it before its home would hide it from searches.
            let h = self.home(k);
            let stays = if gap <= j {
                gap < h && h <= j
            } else {
                gap < h || h <= j
            };
            if !stays {
                self.slots[gap].0 = self.slots[j].0.take();
                gap = j;
            }
        }
        out
    }

    /// Every value (for tests).
    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots
            .iter()
            .filter_map(|s| s.0.as_ref().map(|(_, v)| v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// xorshift64*: a fixed sequence per seed.
    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_inserts_and_removals_match_a_hash_map() {
        for seed in [1u64, 7, 0xfeed, 99_991] {
            let mut next = rng(seed);
            let mut m = SlotMap::<u32, u64>::default();
            let mut reference = HashMap::new();
            // Keys from a small range so runs collide and the map grows; after 15 000
            // steps only removals, so it empties again.
            for step in 0..20_000u64 {
                let key = (next() % 600) as u32;
                match next() % 3 {
                    0 | 1 if step < 15_000 => {
                        m.insert(key, step);
                        reference.insert(key, step);
                    }
                    _ => assert_eq!(m.remove(&key), reference.remove(&key), "seed {seed}"),
                }
                assert_eq!(m.len(), reference.len());
                if step % 97 == 0 {
                    for k in 0..600u32 {
                        assert_eq!(m.get(&k), reference.get(&k), "seed {seed} step {step}");
                    }
                    assert!(m.len() * 2 <= m.slots.len().max(1), "more than half full");
                }
            }
            let rest: Vec<u32> = reference.keys().copied().collect();
            for k in rest {
                assert_eq!(m.remove(&k), reference.remove(&k), "seed {seed}");
            }
            assert!(m.is_empty() && m.values().next().is_none(), "seed {seed}");
        }
    }

    /// A key whose hash ignores its value: every key has the same home slot.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Same(u32);

    impl Hash for Same {
        fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
            0u8.hash(h);
        }
    }

    #[test]
    fn removal_keeps_every_key_of_a_wrapped_run_findable() {
        // One home for all keys; a map whose home is in the last quarter, so that a run of
        // eight wraps past the end of its sixteen slots.
        let mut m = (0..200)
            .map(|_| {
                let mut m = SlotMap::<Same, u32>::default();
                m.insert(Same(0), 0);
                m
            })
            .find(|m| m.home(&Same(0)) >= 12)
            .expect("a map whose home slot is in the last quarter");
        for k in 1..8 {
            m.insert(Same(k), k);
        }
        assert_eq!((m.len(), m.slots.len()), (8, 16));
        let mut live: Vec<u32> = (0..8).collect();
        for k in [3, 0, 7, 5] {
            assert_eq!(m.remove(&Same(k)), Some(k));
            assert_eq!(m.remove(&Same(k)), None);
            live.retain(|x| *x != k);
            for j in &live {
                assert_eq!(m.get(&Same(*j)), Some(j), "after removing {k}");
            }
        }
        assert_eq!(m.len(), 4);
        assert_eq!(
            m.get_mut(&Same(6)).map(|v| std::mem::replace(v, 60)),
            Some(6)
        );
        m.insert(Same(6), 61);
        assert_eq!((m.get(&Same(6)), m.len()), (Some(&61), 4));
        // A prefetch changes nothing.
        m.prefetch(&Same(6));
        assert_eq!(m.get(&Same(6)), Some(&61));
    }
}
