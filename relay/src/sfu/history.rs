//! The per-stream packet cache that answers NACKs (RFC 4585 §6.2.1): receivers lose
//! packets between the SFU and themselves, and the SFU, not the publisher, retransmits
//! them (as RTX, see [`super::rtx`]), so it keeps the last N plain RTP packets of every
//! inbound stream (one simulcast layer's SSRC).
//!
//! The ring is allocated once, at [`PacketHistory::new`]: a slot per sequence number
//! modulo the capacity, each with room for [`MAX_PACKET`] bytes. `insert` and `get` are
//! a copy and an index, never an allocation, and `get` checks that the slot still holds
//! the sequence number asked for (a newer packet may have overwritten it).

/// The largest packet the cache stores (a full Ethernet MTU); larger ones are ignored.
pub const MAX_PACKET: usize = 1500;

/// The largest capacity: the whole 16-bit sequence space.
pub const MAX_CAPACITY: usize = 1 << 16;

/// Bookkeeping of one slot; its bytes live in the shared buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Whether the slot holds a packet at all.
    used: bool,
    /// The packet's RTP sequence number.
    seq: u16,
    /// The packet's length in bytes (at most [`MAX_PACKET`]).
    len: u16,
    /// When it arrived, in the caller's microseconds.
    arrival_us: u64,
}

/// The last `capacity` packets of one inbound RTP stream, by sequence number.
#[derive(Debug)]
pub struct PacketHistory {
    slots: Box<[Slot]>,
    bytes: Box<[u8]>,
    mask: usize,
}

impl PacketHistory {
    /// A cache of `capacity` packets, rounded up to a power of two (at least 1, at most
    /// [`MAX_CAPACITY`]). 512 holds about 1 s of 720p video at 1.5 Mbit/s with 1200-byte
    /// packets, longer than a NACK stays useful. Allocates `capacity × 1500` bytes here,
    /// once.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_CAPACITY).next_power_of_two();
        Self {
            slots: vec![Slot::default(); capacity].into_boxed_slice(),
            bytes: vec![0u8; capacity * MAX_PACKET].into_boxed_slice(),
            mask: capacity - 1,
        }
    }

    /// How many packets the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Stores `packet` (plain RTP, header and payload) under `seq`, replacing whatever
    /// the slot held. A packet longer than [`MAX_PACKET`] is ignored.
    pub fn insert(&mut self, seq: u16, packet: &[u8], now_us: u64) {
        let Ok(len) = u16::try_from(packet.len()) else {
            return;
        };
        if packet.len() > MAX_PACKET {
            return;
        }
        let i = usize::from(seq) & self.mask;
        let start = i * MAX_PACKET;
        self.bytes[start..start + packet.len()].copy_from_slice(packet);
        self.slots[i] = Slot {
            used: true,
            seq,
            len,
            arrival_us: now_us,
        };
    }

    /// The packet stored under `seq`, if it is still there.
    pub fn get(&self, seq: u16) -> Option<&[u8]> {
        self.get_with_arrival(seq).map(|(p, _)| p)
    }

    /// The packet stored under `seq` and when it arrived, so that the caller can refuse
    /// to retransmit a packet too old to be of use.
    pub fn get_with_arrival(&self, seq: u16) -> Option<(&[u8], u64)> {
        let i = usize::from(seq) & self.mask;
        let slot = self.slots[i];
        if !slot.used || slot.seq != seq {
            return None;
        }
        let start = i * MAX_PACKET;
        Some((
            &self.bytes[start..start + usize::from(slot.len)],
            slot.arrival_us,
        ))
    }

    /// Forgets every packet (e.g. when the publisher's stream restarts).
    pub fn clear(&mut self) {
        self.slots.fill(Slot::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, len: usize) -> Vec<u8> {
        let mut p = vec![seq as u8; len];
        p[..2].copy_from_slice(&seq.to_be_bytes());
        p
    }

    #[test]
    fn stores_and_overwrites_by_sequence() {
        let mut h = PacketHistory::new(8);
        assert_eq!(h.capacity(), 8);
        assert_eq!(h.get(0), None, "empty slot is not seq 0");
        for seq in 0..8u16 {
            h.insert(seq, &packet(seq, 100 + usize::from(seq)), u64::from(seq));
        }
        for seq in 0..8u16 {
            assert_eq!(h.get(seq), Some(&packet(seq, 100 + usize::from(seq))[..]));
        }
        assert_eq!(h.get_with_arrival(5).map(|(_, t)| t), Some(5));
        // Seq 8 takes slot 0: 0 is gone, 8 is there, and 16 (same slot) is not.
        h.insert(8, &packet(8, 50), 8);
        assert_eq!(h.get(0), None);
        assert_eq!(h.get(8), Some(&packet(8, 50)[..]));
        assert_eq!(h.get(16), None);
        h.clear();
        assert_eq!(h.get(8), None);
    }

    #[test]
    fn wraps_around_the_sequence_space() {
        let mut h = PacketHistory::new(512);
        for i in 0..600u32 {
            let seq = 65_300u16.wrapping_add(i as u16);
            h.insert(seq, &packet(seq, 200), u64::from(i));
        }
        // The last 512 inserted (65388.. through the wrap to 363) are there.
        for i in 88..600u32 {
            let seq = 65_300u16.wrapping_add(i as u16);
            assert_eq!(h.get(seq), Some(&packet(seq, 200)[..]), "seq {seq}");
        }
        for i in 0..88u32 {
            assert_eq!(h.get(65_300u16.wrapping_add(i as u16)), None);
        }
    }

    #[test]
    fn oversize_is_ignored_and_sizes_round_up() {
        let mut h = PacketHistory::new(3);
        assert_eq!(h.capacity(), 4);
        assert_eq!(PacketHistory::new(0).capacity(), 1);
        assert_eq!(PacketHistory::new(usize::MAX).capacity(), MAX_CAPACITY);
        h.insert(1, &packet(1, MAX_PACKET), 0);
        assert_eq!(h.get(1).map(<[u8]>::len), Some(MAX_PACKET));
        h.insert(1, &packet(1, MAX_PACKET + 1), 0);
        assert_eq!(
            h.get(1).map(<[u8]>::len),
            Some(MAX_PACKET),
            "the old packet stays"
        );
        h.insert(2, &[], 7);
        assert_eq!(h.get(2), Some(&[][..]));
    }

    proptest::proptest! {
        /// Whatever is inserted, `get` returns exactly the last packet stored under that
        /// sequence number or nothing, never bytes of another packet.
        #[test]
        fn get_returns_the_last_insert_or_nothing(
            ops in proptest::collection::vec((proptest::prelude::any::<u16>(), 0usize..1600), 1..200)
        ) {
            let mut h = PacketHistory::new(16);
            let mut last = std::collections::HashMap::new();
            for (seq, len) in &ops {
                let p = packet(*seq, (*len).max(2));
                h.insert(*seq, &p, 0);
                if p.len() <= MAX_PACKET {
                    last.insert(*seq, p);
                }
            }
            for (seq, _) in &ops {
                if let Some(got) = h.get(*seq) {
                    proptest::prop_assert_eq!(Some(&got.to_vec()), last.get(seq));
                }
            }
        }
    }
}
