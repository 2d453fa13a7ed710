//! Expiry timers: a min-heap of (deadline, what). Refreshing pushes a new entry and leaves
//! the old one in place; when an entry comes due, the owner checks the live deadline and
//! ignores entries that were refreshed or whose object is gone. So every expiry costs
//! O(log n) and `on_timeout` only touches entries that are due, never the whole table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::time::Instant;

/// What a timer entry is for. Allocation ids are never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) enum Timer {
    /// The allocation's lifetime.
    Allocation(u64),
    /// A permission of an allocation.
    Permission(u64, IpAddr),
    /// A channel binding of an allocation.
    Channel(u64, u16),
    /// The end of a channel number's post-expiry quarantine.
    Cooldown(u64, u16),
    /// An unclaimed port reservation (token).
    Reservation(u64),
}

/// The heap.
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    /// Schedules `what` at `at`.
    pub(super) fn push(&mut self, at: Instant, what: Timer) {
        self.heap.push(Reverse((at, what)));
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns one entry due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, t))| t),
            _ => None,
        }
    }

    /// Entries held (live and stale).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.push(t0 + Duration::from_secs(5), Timer::Allocation(2));
        t.push(t0 + Duration::from_secs(1), Timer::Allocation(1));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(
            t.pop_due(t0 + Duration::from_secs(9)),
            Some(Timer::Allocation(1))
        );
        assert_eq!(
            t.pop_due(t0 + Duration::from_secs(9)),
            Some(Timer::Allocation(2))
        );
        assert_eq!(t.pop_due(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.len(), 0);
    }
}
