//! Per-worker counters the control plane reads while the workers run.
//!
//! Each worker counts in plain local integers on its hot path and publishes them once
//! per completion batch with Relaxed stores into its own cache-line-aligned block, so
//! workers never share a cache line and never execute an atomic read-modify-write per
//! packet. Readers sum the blocks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Drop reasons a handler can report (codes at or above this count as the last one).
pub const MAX_DROP_REASONS: usize = 8;

/// Drops decided by the worker itself, not by the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum IoDrop {
    /// The datagram was larger than a receive buffer.
    Truncated = 0,
    /// Every send slot was in flight: the reply was not sent.
    NoSendSlot = 1,
    /// The source address could not be decoded.
    BadSource = 2,
    /// The kernel had no free receive buffer (the buffer ring ran dry).
    NoBuffer = 3,
}

/// Number of [`IoDrop`] reasons.
pub const IO_DROP_REASONS: usize = 4;

/// AF_XDP counters per worker, in the order of [`XSK_COUNT_NAMES`].
pub const XSK_COUNTS: usize = 6;
/// Names of the AF_XDP counters in `relay stats` (`af_xdp`).
pub const XSK_COUNT_NAMES: [&str; XSK_COUNTS] = [
    "received",
    "sent",
    "fallback",
    "dropped",
    "kernel_ring_full",
    "kernel_dropped",
];

/// Names of the [`IoDrop`] reasons, in order.
pub const IO_DROP_NAMES: [&str; IO_DROP_REASONS] =
    ["truncated", "no_send_slot", "bad_source", "no_buffer"];

/// What one worker counted; the worker's private copy (plain integers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams received.
    pub received: u64,
    /// Replies queued for sending (STUN answers with the Binding handler).
    pub answered: u64,
    /// Drops by handler reason code.
    pub dropped_by_handler: [u64; MAX_DROP_REASONS],
    /// Drops by worker reason ([`IoDrop`]).
    pub dropped_by_io: [u64; IO_DROP_REASONS],
    /// Failed system calls / completions (receive or send errors).
    pub errors: u64,
    /// AF_XDP side (`xdp.af_xdp`): frames received, frames sent, sends that went through
    /// a kernel socket instead, received frames dropped, and what the kernel dropped
    /// before the worker saw it: at a full receive ring, for want of a free frame.
    pub xsk: [u64; XSK_COUNTS],
}

impl Counts {
    /// Counts a handler drop with reason `code`.
    #[inline]
    pub fn drop_handler(&mut self, code: u8) {
        let i = usize::from(code).min(MAX_DROP_REASONS - 1);
        self.dropped_by_handler[i] += 1;
    }

    /// Counts a worker drop.
    #[inline]
    pub fn drop_io(&mut self, why: IoDrop) {
        self.dropped_by_io[why as usize] += 1;
    }

    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_by_handler.iter().sum::<u64>() + self.dropped_by_io.iter().sum::<u64>()
    }

    /// Adds another worker's counts.
    pub fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.answered += o.answered;
        self.errors += o.errors;
        for (a, b) in self.xsk.iter_mut().zip(o.xsk) {
            *a += b;
        }
        for (a, b) in self.dropped_by_handler.iter_mut().zip(o.dropped_by_handler) {
            *a += b;
        }
        for (a, b) in self.dropped_by_io.iter_mut().zip(o.dropped_by_io) {
            *a += b;
        }
    }
}

/// One worker's published counters; aligned so two workers never share a cache line
/// (128 bytes covers adjacent-line prefetch on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    received: AtomicU64,
    answered: AtomicU64,
    errors: AtomicU64,
    xsk: [AtomicU64; XSK_COUNTS],
    dropped_by_handler: [AtomicU64; MAX_DROP_REASONS],
    dropped_by_io: [AtomicU64; IO_DROP_REASONS],
}

impl WorkerCounters {
    /// Publishes the worker's local counts (only the owning worker calls this).
    #[inline]
    pub fn publish(&self, c: &Counts) {
        self.received.store(c.received, Relaxed);
        self.answered.store(c.answered, Relaxed);
        self.errors.store(c.errors, Relaxed);
        for (a, v) in self.xsk.iter().zip(c.xsk) {
            a.store(v, Relaxed);
        }
        for (a, v) in self.dropped_by_handler.iter().zip(c.dropped_by_handler) {
            a.store(v, Relaxed);
        }
        for (a, v) in self.dropped_by_io.iter().zip(c.dropped_by_io) {
            a.store(v, Relaxed);
        }
    }

    /// Reads the last published counts.
    pub fn snapshot(&self) -> Counts {
        let mut c = Counts {
            received: self.received.load(Relaxed),
            answered: self.answered.load(Relaxed),
            errors: self.errors.load(Relaxed),
            ..Counts::default()
        };
        for (v, a) in c
            .dropped_by_handler
            .iter_mut()
            .zip(&self.dropped_by_handler)
        {
            *v = a.load(Relaxed);
        }
        for (v, a) in c.dropped_by_io.iter_mut().zip(&self.dropped_by_io) {
            *v = a.load(Relaxed);
        }
        for (v, a) in c.xsk.iter_mut().zip(&self.xsk) {
            *v = a.load(Relaxed);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_snapshot_and_sum() {
        let w = WorkerCounters::default();
        let mut c = Counts {
            received: 5,
            answered: 3,
            ..Counts::default()
        };
        c.drop_handler(1);
        c.drop_handler(200);
        c.drop_io(IoDrop::NoSendSlot);
        c.errors = 2;
        w.publish(&c);
        let s = w.snapshot();
        assert_eq!(s, c);
        assert_eq!(s.dropped(), 3);
        assert_eq!(s.dropped_by_handler[MAX_DROP_REASONS - 1], 1);
        let mut total = Counts::default();
        total.add(&s);
        total.add(&s);
        assert_eq!(total.received, 10);
        assert_eq!(total.dropped(), 6);
        assert_eq!(std::mem::align_of::<WorkerCounters>(), 128);
    }
}
