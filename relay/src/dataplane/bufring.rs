//! The provided buffer ring shared by the io_uring loops (the TURN/STUN workers and the
//! SFU media thread): the kernel picks a free buffer for each datagram a multishot
//! RecvMsg receives, and the owner hands it back once the datagram is consumed, so
//! receiving needs neither a syscall nor an allocation per packet.

use std::alloc::Layout;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

/// A provided buffer ring: the ring of entries (page-aligned, shared with the kernel) and
/// the buffers it hands out.
pub(crate) struct BufRing {
    entries: *mut BufRingEntry,
    layout: Layout,
    bufs: Box<[u8]>,
    count: u16,
    size: usize,
    tail: u16,
}

impl BufRing {
    pub(crate) fn new(count: u16, size: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "count must be a power of two",
            ));
        }
        let layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (count >= 1, entries are 16 bytes).
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"));
        }
        let mut br = BufRing {
            entries,
            layout,
            bufs: vec![0u8; usize::from(count) * size].into_boxed_slice(),
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Registers the ring with `submitter`'s io_uring as buffer group `bgid`.
    pub(crate) fn register(&self, submitter: &Submitter<'_>, bgid: u16) -> io::Result<()> {
        // SAFETY: the entries stay allocated until this BufRing drops, and every owner
        // unregisters (or closes the ring) and drains in-flight receives before that.
        unsafe { submitter.register_buf_ring_with_flags(self.entries as u64, self.count, bgid, 0) }
    }

    /// Hands buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    #[inline]
    pub(crate) fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        let index = usize::from(self.tail & mask);
        // SAFETY: index < count, inside the allocation; the kernel only reads entries
        // between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        let offset = usize::from(bid) * self.size;
        entry.set_addr(self.bufs[offset..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the pushed buffers to the kernel.
    #[inline]
    pub(crate) fn publish(&self) {
        // SAFETY: `entries` is the base of the ring; the tail field overlays the first
        // entry's reserved field, is 2-byte aligned and shared with the kernel, so it is
        // accessed atomically.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid` (None if out of range).
    #[inline]
    pub(crate) fn buf(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.count || len > self.size {
            return None;
        }
        let offset = usize::from(bid) * self.size;
        self.bufs.get(offset..offset + len)
    }
}

impl BufRing {
    /// Gives up the receive buffers for good: at a teardown that could not confirm every
    /// receive ended, the kernel may still write into them.
    pub(crate) fn leak_buffers(&mut self) {
        let leaked = std::mem::replace(&mut self.bufs, Box::new([]));
        std::mem::forget(leaked);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buf_ring_bounds() {
        let br = BufRing::new(8, 64).expect("alloc");
        assert!(br.buf(7, 64).is_some());
        assert!(br.buf(8, 1).is_none());
        assert!(br.buf(0, 65).is_none());
        assert!(BufRing::new(6, 64).is_err());
    }
}
