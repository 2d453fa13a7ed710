//! A fixed pool of send slots for the io_uring backend.
//!
//! A SendMsg SQE points at a `msghdr`, which points at an `iovec` and a socket address,
//! which point at the payload: all of it must stay put until the completion arrives. Each
//! slot holds that whole set at a stable address, allocated once at start-up; the hot path
//! only pops and pushes slot indices on a preallocated free list.

use std::net::{IpAddr, SocketAddr};

use super::socket::{CONTROL_LEN, encode_pktinfo_source, encode_sockaddr};

/// Bytes of payload a slot can hold (a reply never exceeds one MTU-sized datagram).
pub const SLOT_BYTES: usize = 2048;

/// One in-flight (or free) send.
#[repr(C)]
pub struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_in6,
    /// Ancillary data (the source address for sends from a wildcard socket).
    control: [u8; CONTROL_LEN],
    /// The reply is written here by the handler.
    pub buf: [u8; SLOT_BYTES],
}

/// The pool. Slots live in one boxed slice that is never resized, so their addresses are
/// stable for the pool's lifetime.
pub struct SendSlots {
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
}

impl SendSlots {
    /// Allocates `count` slots, all free.
    pub fn new(count: u32) -> Self {
        let mut slots = Vec::with_capacity(count as usize);
        for _ in 0..count {
            slots.push(SendSlot {
                // SAFETY: msghdr, iovec and sockaddr_in6 are plain C structs; all-zero is
                // a valid (empty) value for each.
                hdr: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                name: unsafe { std::mem::zeroed() },
                control: [0; CONTROL_LEN],
                buf: [0; SLOT_BYTES],
            });
        }
        let free = (0..count).rev().collect();
        Self {
            slots: slots.into_boxed_slice(),
            free,
        }
    }

    /// Takes a free slot, if any.
    #[inline]
    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns a slot to the pool (its send completed, or it was not used).
    #[inline]
    pub fn release(&mut self, index: u32) {
        debug_assert!(self.free.len() < self.slots.len());
        if self.free.len() < self.free.capacity() {
            self.free.push(index);
        }
    }

    /// Number of free slots.
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Number of slots currently taken.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The payload buffer of slot `index`.
    #[inline]
    pub fn buf_mut(&mut self, index: u32) -> &mut [u8; SLOT_BYTES] {
        &mut self.slots[index as usize].buf
    }

    /// Points slot `index`'s msghdr at its first `len` payload bytes and at `to`; returns
    /// the msghdr for a SendMsg SQE. It stays valid until the slot is released.
    #[inline]
    pub fn prepare(&mut self, index: u32, len: usize, to: &SocketAddr) -> *const libc::msghdr {
        self.prepare_from(index, len, to, None)
    }

    /// As [`SendSlots::prepare`], sending from `from` (IP_PKTINFO / IPV6_PKTINFO) when
    /// given: a wildcard socket then answers from the address the client used.
    #[inline]
    pub fn prepare_from(
        &mut self,
        index: u32,
        len: usize,
        to: &SocketAddr,
        from: Option<IpAddr>,
    ) -> *const libc::msghdr {
        let slot = &mut self.slots[index as usize];
        let controllen = match from {
            Some(ip) => encode_pktinfo_source(ip, &mut slot.control),
            None => 0,
        };
        let namelen = encode_sockaddr(to, &mut slot.name);
        slot.iov.iov_base = slot.buf.as_mut_ptr().cast();
        slot.iov.iov_len = len.min(SLOT_BYTES);
        slot.hdr.msg_name = std::ptr::from_mut(&mut slot.name).cast();
        slot.hdr.msg_namelen = namelen;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        if controllen == 0 {
            slot.hdr.msg_control = std::ptr::null_mut();
        } else {
            slot.hdr.msg_control = slot.control.as_mut_ptr().cast();
        }
        slot.hdr.msg_controllen = controllen as _;
        slot.hdr.msg_flags = 0;
        &slot.hdr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_cycle_is_bounded() {
        let mut s = SendSlots::new(2);
        let a = s.alloc().expect("slot");
        let b = s.alloc().expect("slot");
        assert_ne!(a, b);
        assert!(s.alloc().is_none(), "pool of 2 is exhausted");
        assert_eq!(s.in_flight(), 2);
        s.release(a);
        assert_eq!(s.alloc(), Some(a));
        s.release(a);
        s.release(b);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn prepare_points_inside_slot() {
        let mut s = SendSlots::new(1);
        let i = s.alloc().expect("slot");
        s.buf_mut(i)[..3].copy_from_slice(b"abc");
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let hdr = s.prepare(i, 3, &to);
        // SAFETY: `hdr` points into the live pool.
        let h = unsafe { &*hdr };
        assert_eq!(h.msg_iovlen, 1);
        // SAFETY: msg_iov was set to the slot's iovec.
        let iov = unsafe { &*h.msg_iov };
        assert_eq!(iov.iov_len, 3);
        assert_eq!(
            h.msg_namelen as usize,
            std::mem::size_of::<libc::sockaddr_in>()
        );
    }
}
