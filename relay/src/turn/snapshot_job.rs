//! The state-file snapshot taken a slice at a time.
//!
//! Why: the daemon saves the TURN state every few seconds, and each worker builds the
//! records of its own allocations. Built in one go, that stopped a worker with 10 000
//! allocations for 17–29 ms every 5 s (measured on the bench machine): longer than its
//! AF_XDP receive ring lasts at a few hundred thousand packets a second, so every save
//! dropped packets. A [`SnapshotJob`] lists the allocation ids at the start and builds
//! a bounded number of records per call, between the worker's batches of packets.
//!
//! Consistency: each record is taken at one moment, but not all at the same one. That
//! matters for the kernel rule indices only: an allocation taken early may change later
//! (a channel expires and its counter index goes back to the pool, where another
//! allocation's new rule takes it), and a restarted daemon must never find one index
//! claimed twice. So while a job runs the server notes every allocation whose rules
//! change or that goes away ([`TurnServer::sync_fast`], [`TurnServer::remove`]), and
//! the job takes those again at its end, or drops them if they are gone. The finished
//! snapshot then says what the server holds at that end, except for counters, which
//! may be up to one job old (as they are up to one save interval old anyway).

use std::collections::HashSet;
use std::time::Instant;

use super::id_cursor::IdCursor;
use super::snapshot::SavedAllocation;
use super::{MonoClock, Transport, TurnServer};

/// A snapshot in progress (see the module doc).
#[derive(Debug)]
pub struct SnapshotJob {
    /// The UDP allocations when the job began, in id order, and how many were taken.
    ids: IdCursor,
    /// The records taken, with their allocation ids.
    taken: Vec<(u64, SavedAllocation)>,
}

impl SnapshotJob {
    /// Whether every allocation listed at the start was taken (the job may finish).
    pub fn is_done(&self) -> bool {
        self.ids.is_done()
    }
}

impl TurnServer {
    /// Starts a snapshot: lists the UDP allocations and from now on notes the ones that
    /// change, until [`TurnServer::snapshot_finish`]. One job at a time: beginning
    /// another forgets what the first noted.
    pub fn snapshot_begin(&mut self) -> SnapshotJob {
        let mut ids: Vec<u64> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.tuple.transport == Transport::Udp)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        self.snapshot_touched = Some(HashSet::new());
        SnapshotJob {
            taken: Vec::with_capacity(ids.len()),
            ids: IdCursor::new(ids),
        }
    }

    /// Takes up to `max` more allocations of `job`; true when it is done.
    pub fn snapshot_step(
        &mut self,
        job: &mut SnapshotJob,
        now: Instant,
        clock: &MonoClock,
        max: usize,
    ) -> bool {
        let ids = job.ids.next_slice(max);
        if !ids.is_empty() {
            let realm = self.shared.credentials().realm.clone();
            for &id in ids {
                if let Some(s) = self.saved_allocation(id, now, clock, &realm) {
                    job.taken.push((id, s));
                }
            }
        }
        job.is_done()
    }

    /// Ends `job` (taking what it has not taken yet): the allocations that changed while
    /// it ran are taken again as they are at `now`, the ones that went away are dropped.
    /// The records come in no particular order.
    pub fn snapshot_finish(
        &mut self,
        mut job: SnapshotJob,
        now: Instant,
        clock: &MonoClock,
    ) -> Vec<SavedAllocation> {
        self.snapshot_step(&mut job, now, clock, usize::MAX);
        let touched = self.snapshot_touched.take().unwrap_or_default();
        let mut taken = job.taken;
        if !touched.is_empty() {
            taken.retain(|(id, _)| !touched.contains(id));
            let realm = self.shared.credentials().realm.clone();
            for &id in &touched {
                if let Some(s) = self.saved_allocation(id, now, clock, &realm) {
                    taken.push((id, s));
                }
            }
        }
        taken.into_iter().map(|(_, s)| s).collect()
    }

    /// Notes that allocation `id` changed (or went away) while a snapshot job runs.
    pub(super) fn snapshot_note(&mut self, id: u64) {
        if let Some(t) = &mut self.snapshot_touched {
            t.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::stun::Class;
    use crate::turn::attrs::{self, method};
    use crate::turn::tests::{
        Client, World, allocate, class_of, numbered_client, numbered_clients, permit, world,
    };

    fn clock(w: &World) -> MonoClock {
        MonoClock::new(w.t0, 9_000_000_000_000)
    }

    fn sorted(mut v: Vec<SavedAllocation>) -> Vec<SavedAllocation> {
        v.sort_by_key(|a| (a.client, a.server));
        v
    }

    fn delete(w: &mut World, c: &mut Client) {
        let req = c.request(
            method::REFRESH,
            &[(attrs::LIFETIME, 0u32.to_be_bytes().to_vec())],
        );
        assert_eq!(class_of(&w.one(&c.tuple, &req)), Class::SuccessResponse);
    }

    #[test]
    fn a_job_in_slices_takes_what_one_pass_takes() {
        let mut w = world();
        numbered_clients(&mut w, 0, 7, "alice");
        let c = clock(&w);
        let whole = w.server.snapshot(w.now, &c);
        assert_eq!(whole.len(), 7);
        let mut job = w.server.snapshot_begin();
        let mut steps = 0;
        while !w.server.snapshot_step(&mut job, w.now, &c, 3) {
            steps += 1;
            assert!(steps < 10, "the job does not end");
        }
        // 3 + 3 + 1: two calls that leave work, the third ends it.
        assert_eq!(steps, 2);
        assert_eq!(sorted(w.server.snapshot_finish(job, w.now, &c)), whole);
        assert!(
            w.server.snapshot_touched.is_none(),
            "noting stops with the job"
        );
    }

    #[test]
    fn allocations_changed_created_or_deleted_during_a_job_are_taken_as_they_end() {
        let mut w = world();
        let mut cs = numbered_clients(&mut w, 0, 4, "alice");
        let c = clock(&w);
        let mut job = w.server.snapshot_begin();
        // The first two are taken; then the first gets a new permission, the second is
        // deleted, and a fifth allocation appears.
        assert!(!w.server.snapshot_step(&mut job, w.now, &c, 2));
        let other: SocketAddr = "198.51.100.77:5000".parse().expect("addr");
        assert_eq!(
            class_of(&permit(&mut w, &mut cs[0], other)),
            Class::SuccessResponse
        );
        delete(&mut w, &mut cs[1]);
        let mut fifth = numbered_client(4, "alice");
        assert_eq!(
            class_of(&allocate(&mut w, &mut fifth, &[])),
            Class::SuccessResponse
        );
        w.advance(Duration::from_secs(1));
        assert!(w.server.snapshot_step(&mut job, w.now, &c, 10));
        let got = sorted(w.server.snapshot_finish(job, w.now, &c));
        assert_eq!(got, w.server.snapshot(w.now, &c));
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|a| a.client != cs[1].tuple.client));
        assert!(got.iter().any(|a| a.client == fifth.tuple.client));
        let first = got
            .iter()
            .find(|a| a.client == cs[0].tuple.client)
            .expect("first kept");
        assert!(first.permissions.iter().any(|p| p.peer == other.ip()));
    }

    #[test]
    fn an_allocation_that_expires_during_a_job_is_left_out() {
        let mut w = world();
        numbered_clients(&mut w, 0, 2, "alice");
        let c = clock(&w);
        let mut job = w.server.snapshot_begin();
        // Past every lifetime, without the timers having run: the deadline alone
        // decides.
        w.advance(Duration::from_secs(3600));
        assert!(w.server.snapshot_step(&mut job, w.now, &c, 10));
        assert!(w.server.snapshot_finish(job, w.now, &c).is_empty());
    }
}
