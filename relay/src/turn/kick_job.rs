//! `relay kick` carried out a slice per loop round.
//!
//! Why: a worker deleted every allocation a kick matched in one loop round. Deleting one
//! costs about 0.5 µs in userspace (800 in 0.39 ms, measured in the dataplane tests), and
//! with the kernel fast path on, its channels' rules leave the BPF maps too: 3 µs per
//! channel when this was measured, 5–8 µs while the slot tables shrink (0.36 µs since the
//! daemon skips deletes of keys the hash maps do not hold, `xdp::rules::Tracked`). A kick
//! of a user with tens of thousands of allocations (REST credentials share the part after
//! `expiry:` across every session of an application) stopped the worker for tens of
//! milliseconds or more, longer than its receive ring lasts under load, so ending one user's
//! sessions would drop every other user's packets on that worker. A [`KickJob`] notes the
//! matching allocations when it begins and deletes a bounded number per call, between the
//! worker's batches of packets (as [`super::listing_job`] does for listings).
//!
//! Consistency: the allocations matching when the job began are deleted, each at its own
//! moment; their clients may use them until then, as they could have before a kick that
//! came a moment later. One deleted meanwhile (expired, refreshed to 0) is not counted.
//! One created after the job began is not kicked: a kick ends sessions, it does not revoke
//! credentials, so a client that allocates again a moment after the kick keeps its new
//! allocation either way.

use super::allocation::Allocation;
use super::id_cursor::IdCursor;
use super::server::canonical;
use super::{FiveTuple, KickTarget, RelayPorts, TurnServer};

impl KickTarget {
    /// Whether `a` is one of the allocations this target names.
    fn matches(&self, a: &Allocation) -> bool {
        match self {
            KickTarget::User(u) => {
                a.username == *u || super::auth::user_part(&a.username) == u.as_str()
            }
            KickTarget::Client(c) => canonical(a.tuple.client) == canonical(*c),
            KickTarget::Relay(r) => a.relayed().any(|x| canonical(x.addr) == canonical(*r)),
        }
    }
}

/// A kick in progress (see the module doc).
#[derive(Debug)]
pub struct KickJob {
    /// The matching allocations when the job began, and how many were handed out.
    ids: IdCursor,
    /// How many were deleted so far.
    kicked: usize,
}

impl KickJob {
    /// Whether every allocation noted at the start was dealt with.
    pub fn is_done(&self) -> bool {
        self.ids.is_done()
    }

    /// How many allocations the job deleted so far.
    pub fn kicked(&self) -> usize {
        self.kicked
    }
}

impl TurnServer {
    /// Starts a kick of the allocations `target` matches now. Matching is a comparison
    /// per allocation (no allocation is touched), so it is done here, in one pass.
    pub fn kick_begin(&self, target: &KickTarget) -> KickJob {
        let ids = self
            .allocs
            .iter()
            .filter(|(_, a)| target.matches(a))
            .map(|(id, _)| *id)
            .collect();
        KickJob {
            ids: IdCursor::new(ids),
            kicked: 0,
        }
    }

    /// Deletes up to `max` more allocations of `job`; the client 5-tuple of each deleted
    /// one is appended to `tuples`, so that the IO layer can also close the TCP/TLS
    /// connections of kicked stream clients. True when the job is done.
    pub fn kick_step(
        &mut self,
        job: &mut KickJob,
        ports: &mut impl RelayPorts,
        max: usize,
        tuples: &mut Vec<FiveTuple>,
    ) -> bool {
        for &id in job.ids.next_slice(max) {
            let Some(tuple) = self.allocs.get(&id).map(|a| a.tuple) else {
                continue;
            };
            self.remove(id, ports);
            self.stats.allocations_deleted += 1;
            job.kicked += 1;
            tuples.push(tuple);
        }
        job.is_done()
    }

    /// Deletes the allocations matching `target` at once; returns how many. For callers
    /// without packets to keep moving (tests, tools); a worker uses [`Self::kick_begin`].
    pub fn kick(&mut self, target: &KickTarget, ports: &mut impl RelayPorts) -> usize {
        let mut job = self.kick_begin(target);
        self.kick_step(&mut job, ports, usize::MAX, &mut Vec::new());
        job.kicked
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::turn::tests::{World, numbered_clients, one_gone_one_new, world};

    /// Runs `job` in slices of `max`; returns the calls that left work and the tuples.
    fn run(w: &mut World, job: &mut KickJob, max: usize) -> (usize, Vec<FiveTuple>) {
        let (mut unfinished, mut tuples) = (0, Vec::new());
        while !w.server.kick_step(job, &mut w.ports, max, &mut tuples) {
            unfinished += 1;
            assert!(unfinished < 100, "the job does not end");
        }
        (unfinished, tuples)
    }

    #[test]
    fn a_kick_in_slices_deletes_what_it_matched_and_nothing_else() {
        let mut w = world();
        let alice = numbered_clients(&mut w, 0, 7, "alice");
        let bob = numbered_clients(&mut w, 7, 2, "bob");
        let open_before = w.ports.open.len();
        let mut job = w.server.kick_begin(&KickTarget::User("alice".into()));
        // A slice deletes no more than asked.
        let mut tuples = Vec::new();
        assert!(!w.server.kick_step(&mut job, &mut w.ports, 3, &mut tuples));
        assert_eq!((job.kicked(), tuples.len()), (3, 3));
        assert_eq!(w.server.allocations(w.now).count(), 6);
        // 3 + 1: one more call that leaves work, the next ends it.
        let (unfinished, rest) = run(&mut w, &mut job, 3);
        assert_eq!(unfinished, 1);
        tuples.extend(rest);
        assert_eq!(job.kicked(), 7);
        let mut kicked: Vec<_> = tuples.iter().map(|t| t.client).collect();
        let mut expected: Vec<_> = alice.iter().map(|c| c.tuple.client).collect();
        kicked.sort();
        expected.sort();
        assert_eq!(kicked, expected, "each of alice's allocations once");
        let left: Vec<_> = w.server.allocations(w.now).map(|a| a.client).collect();
        assert_eq!(left.len(), 2);
        assert!(bob.iter().all(|c| left.contains(&c.tuple.client)));
        assert_eq!(
            w.ports.open.len(),
            open_before - 7,
            "relayed sockets closed"
        );
        assert_eq!(w.server.stats().allocations_deleted, 7);
        assert_eq!(w.server.stats().allocations, 2);
    }

    #[test]
    fn allocations_gone_before_their_turn_are_not_counted_and_new_ones_not_kicked() {
        let mut w = world();
        let mut cs = numbered_clients(&mut w, 0, 4, "alice");
        let mut job = w.server.kick_begin(&KickTarget::User("alice".into()));
        let mut tuples = Vec::new();
        assert!(!w.server.kick_step(&mut job, &mut w.ports, 1, &mut tuples));
        let first = tuples[0].client;
        // One allocation the job has not reached yet is refreshed to 0; a new one comes.
        let (gone, fresh) = one_gone_one_new(&mut w, &mut cs, first, "alice");
        w.advance(Duration::from_secs(1));
        let (_, rest) = run(&mut w, &mut job, 10);
        assert_eq!(job.kicked(), 3);
        assert!(rest.iter().all(|t| t.client != gone));
        let left: Vec<_> = w.server.allocations(w.now).map(|a| a.client).collect();
        assert_eq!(left, vec![fresh]);
        // Refreshed away and kicked: four deletions in all.
        assert_eq!(w.server.stats().allocations_deleted, 4);
    }

    #[test]
    fn a_kick_that_matches_nothing_is_done_at_once() {
        let mut w = world();
        numbered_clients(&mut w, 0, 3, "alice");
        for target in [
            KickTarget::User("nobody".into()),
            KickTarget::Client("203.0.113.9:1".parse().expect("addr")),
            KickTarget::Relay("203.0.113.9:1".parse().expect("addr")),
        ] {
            let mut job = w.server.kick_begin(&target);
            assert!(job.is_done(), "{target:?}");
            assert!(
                w.server
                    .kick_step(&mut job, &mut w.ports, 0, &mut Vec::new())
            );
            assert_eq!(job.kicked(), 0);
        }
        assert_eq!(w.server.allocations(w.now).count(), 3);
    }
}
