//! `relay allocations` answered a slice at a time.
//!
//! Why: a worker built the whole listing of its allocations in one loop round, about
//! 0.2–1 µs per allocation measured in the unit-test world (4 000 allocations: 0.8–4 ms),
//! and the state snapshot, which does much the same work, took 2 µs each on the bench
//! machine with 10 000. With 100 000 allocations an operator's `relay allocations` would
//! stop the worker for a good part of a second, longer than its receive ring lasts under
//! load: a listing asked for to look at a busy relay would drop that relay's packets. A
//! [`ListingJob`] notes the allocation ids when it begins and builds a bounded number of
//! rows per call, between the worker's batches of packets (as
//! [`super::snapshot_job`] does for the state file).
//!
//! Consistency: each row is taken at its own moment, as of the call that takes it. An
//! allocation deleted before its row is taken is left out; one created after the job
//! began is not listed. That is what a listing asked for a moment earlier or later would
//! show, which is all an operator's listing promises.

use std::net::SocketAddr;
use std::time::Instant;

use super::id_cursor::IdCursor;
use super::{AllocationInfo, TurnServer};

/// Which allocations a listing keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListingFilter {
    /// Only this user.
    pub user: Option<String>,
    /// Only allocations whose client, server or relayed address has this IP (and port,
    /// when non-zero).
    pub addr: Option<SocketAddr>,
}

impl ListingFilter {
    /// Whether `a` is listed.
    pub fn matches(&self, a: &AllocationInfo) -> bool {
        self.user.as_ref().is_none_or(|u| &a.user == u)
            && self.addr.is_none_or(|f| {
                let hit =
                    |s: &SocketAddr| s.ip() == f.ip() && (f.port() == 0 || s.port() == f.port());
                hit(&a.client) || hit(&a.server) || a.relayed.iter().any(hit)
            })
    }
}

/// A listing in progress (see the module doc).
#[derive(Debug)]
pub struct ListingJob {
    /// The allocations when the job began, and how many were looked at.
    ids: IdCursor,
    filter: ListingFilter,
    /// The rows taken so far.
    rows: Vec<AllocationInfo>,
}

impl ListingJob {
    /// Whether every allocation listed at the start was looked at.
    pub fn is_done(&self) -> bool {
        self.ids.is_done()
    }

    /// The rows, in no particular order.
    pub fn into_rows(self) -> Vec<AllocationInfo> {
        self.rows
    }
}

impl TurnServer {
    /// Starts a listing of the allocations `filter` keeps.
    pub fn listing_begin(&self, filter: ListingFilter) -> ListingJob {
        ListingJob {
            ids: IdCursor::new(self.allocs.keys().copied().collect()),
            filter,
            rows: Vec::new(),
        }
    }

    /// Looks at up to `max` more allocations of `job`, as of `now`; true when it is done.
    pub fn listing_step(&self, job: &mut ListingJob, now: Instant, max: usize) -> bool {
        for &id in job.ids.next_slice(max) {
            let Some(a) = self.allocs.get(&id) else {
                continue;
            };
            let row = self.allocation_info(id, a, now);
            if job.filter.matches(&row) {
                job.rows.push(row);
            }
        }
        job.is_done()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::turn::tests::{World, numbered_clients, one_gone_one_new, world};

    fn sorted(mut v: Vec<AllocationInfo>) -> Vec<AllocationInfo> {
        v.sort_by_key(|a| a.client);
        v
    }

    /// Runs `job` in slices of `max`, counting the calls that leave work.
    fn run(w: &World, job: &mut ListingJob, max: usize) -> usize {
        let mut unfinished = 0;
        while !w.server.listing_step(job, w.now, max) {
            unfinished += 1;
            assert!(unfinished < 100, "the job does not end");
        }
        unfinished
    }

    #[test]
    fn a_job_in_slices_lists_what_one_pass_lists() {
        let mut w = world();
        numbered_clients(&mut w, 0, 7, "alice");
        let whole: Vec<_> = w.server.allocations(w.now).collect();
        assert_eq!(whole.len(), 7);
        assert!(whole.iter().all(|a| a.channels.len() == 1));
        let mut job = w.server.listing_begin(ListingFilter::default());
        // 3 + 3 + 1: two calls that leave work, the third ends it.
        assert_eq!(run(&w, &mut job, 3), 2);
        assert_eq!(sorted(job.into_rows()), sorted(whole));
    }

    #[test]
    fn a_slice_takes_no_more_than_asked() {
        let mut w = world();
        numbered_clients(&mut w, 0, 5, "alice");
        let mut job = w.server.listing_begin(ListingFilter::default());
        assert!(!w.server.listing_step(&mut job, w.now, 2));
        assert_eq!(job.rows.len(), 2);
        assert!(!w.server.listing_step(&mut job, w.now, 2));
        assert_eq!(job.rows.len(), 4);
        assert!(w.server.listing_step(&mut job, w.now, 2));
        assert_eq!(job.rows.len(), 5);
    }

    #[test]
    fn allocations_deleted_during_a_job_are_left_out_and_new_ones_not_listed() {
        let mut w = world();
        let mut cs = numbered_clients(&mut w, 0, 4, "alice");
        let mut job = w.server.listing_begin(ListingFilter::default());
        assert!(!w.server.listing_step(&mut job, w.now, 1));
        let taken = job.rows[0].client;
        // Delete one allocation the job has not looked at yet, and make a new one.
        let (gone, fresh) = one_gone_one_new(&mut w, &mut cs, taken, "alice");
        w.advance(Duration::from_secs(1));
        run(&w, &mut job, 10);
        let rows = job.into_rows();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|a| a.client != gone && a.client != fresh));
        assert!(rows.iter().any(|a| a.client == taken));
    }

    #[test]
    fn the_filter_keeps_a_user_or_an_address() {
        let mut w = world();
        numbered_clients(&mut w, 0, 3, "alice");
        let bob = numbered_clients(&mut w, 3, 2, "bob");
        let by_user = ListingFilter {
            user: Some("bob".into()),
            addr: None,
        };
        let mut job = w.server.listing_begin(by_user);
        run(&w, &mut job, 2);
        let rows = job.into_rows();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|a| a.user == "bob"));

        // The client's IP with one client's port: that allocation only; with port 0:
        // every allocation of that IP.
        let one = ListingFilter {
            user: None,
            addr: Some(bob[0].tuple.client),
        };
        let mut job = w.server.listing_begin(one);
        run(&w, &mut job, 2);
        let rows = job.into_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].client, bob[0].tuple.client);
        let any_port = ListingFilter {
            user: None,
            addr: Some(SocketAddr::new(bob[0].tuple.client.ip(), 0)),
        };
        let mut job = w.server.listing_begin(any_port);
        run(&w, &mut job, 2);
        assert_eq!(job.into_rows().len(), 5);

        // A relayed address matches too; an address nobody has matches nothing.
        let relayed = w
            .server
            .allocations(w.now)
            .find(|a| a.client == bob[1].tuple.client)
            .expect("bob's second allocation")
            .relayed[0];
        let mut job = w.server.listing_begin(ListingFilter {
            user: None,
            addr: Some(relayed),
        });
        run(&w, &mut job, 2);
        let rows = job.into_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].client, bob[1].tuple.client);
        let mut job = w.server.listing_begin(ListingFilter {
            user: None,
            addr: Some("203.0.113.250:0".parse().expect("addr")),
        });
        run(&w, &mut job, 2);
        assert!(job.into_rows().is_empty());
    }

    #[test]
    fn an_empty_server_lists_nothing_at_once() {
        let w = world();
        let mut job = w.server.listing_begin(ListingFilter::default());
        assert!(job.is_done());
        assert!(w.server.listing_step(&mut job, w.now, 0));
        assert!(job.into_rows().is_empty());
    }
}
