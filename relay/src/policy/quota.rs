//! Allocation quotas per user and for the whole server, shared by every worker.
//!
//! Why: one user (or a leaked credential) must not be able to take every relay port. The
//! count is touched only on Allocate and when an allocation goes away, so a mutex is
//! cheap enough; the [`QuotaTicket`] held by the allocation gives its slot back when it
//! is dropped, whatever the reason the allocation ended (expiry, refresh 0, kick,
//! connection closed, worker shutdown), so the count cannot leak.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why an allocation was refused (the TURN server answers 486 Allocation Quota Reached).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The user already holds `limit` allocations.
    #[error("user {user:?} already holds {limit} allocations (quota.per_user)")]
    PerUser {
        /// The user.
        user: String,
        /// The configured limit.
        limit: u32,
    },
    /// The server already holds `limit` allocations.
    #[error("the relay already holds {limit} allocations (quota.total)")]
    Total {
        /// The configured limit.
        limit: u32,
    },
}

impl QuotaError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            QuotaError::PerUser { .. } => "per_user",
            QuotaError::Total { .. } => "total",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_user: HashMap<String, u32>,
}

#[derive(Debug)]
struct Inner {
    per_user_limit: AtomicU32,
    total_limit: AtomicU32,
    counts: Mutex<Counts>,
}

impl Inner {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A panic while holding the lock cannot leave the counts half-updated (each
        // update is a pair of plain integer writes), so a poisoned lock is still usable.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Allocation counters with limits; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Quotas {
    inner: Arc<Inner>,
}

/// One allocation's slot; releases it on drop.
#[derive(Debug)]
pub struct QuotaTicket {
    inner: Arc<Inner>,
    user: String,
}

impl QuotaTicket {
    /// The user the slot is counted against.
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for QuotaTicket {
    fn drop(&mut self) {
        let mut c = self.inner.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_user.remove(&self.user);
            }
        }
    }
}

impl Quotas {
    /// Limits: allocations per user and in total; 0 means unlimited (as in coturn's
    /// `user-quota` / `total-quota`).
    pub fn new(per_user: u32, total: u32) -> Self {
        Quotas {
            inner: Arc::new(Inner {
                per_user_limit: AtomicU32::new(per_user),
                total_limit: AtomicU32::new(total),
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Changes the limits (on reload). Existing allocations are kept even if they now
    /// exceed a lowered limit; new ones are refused until the count drops below it.
    pub fn set_limits(&self, per_user: u32, total: u32) {
        self.inner.per_user_limit.store(per_user, Ordering::Relaxed);
        self.inner.total_limit.store(total, Ordering::Relaxed);
    }

    /// The current limits `(per_user, total)`.
    pub fn limits(&self) -> (u32, u32) {
        (
            self.inner.per_user_limit.load(Ordering::Relaxed),
            self.inner.total_limit.load(Ordering::Relaxed),
        )
    }

    /// Takes one slot for `user`, or says which limit is reached.
    pub fn try_acquire(&self, user: &str) -> Result<QuotaTicket, QuotaError> {
        let (per_user, total) = self.limits();
        let mut c = self.inner.counts();
        if total != 0 && c.total >= total {
            return Err(QuotaError::Total { limit: total });
        }
        let held = c.per_user.get(user).copied().unwrap_or(0);
        if per_user != 0 && held >= per_user {
            return Err(QuotaError::PerUser {
                user: user.to_owned(),
                limit: per_user,
            });
        }
        c.total += 1;
        *c.per_user.entry(user.to_owned()).or_insert(0) += 1;
        Ok(QuotaTicket {
            inner: self.inner.clone(),
            user: user.to_owned(),
        })
    }

    /// Allocations currently held in total.
    pub fn total(&self) -> u32 {
        self.inner.counts().total
    }

    /// Allocations currently held by `user`.
    pub fn held_by(&self, user: &str) -> u32 {
        self.inner.counts().per_user.get(user).copied().unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn per_user_limit_and_release_on_drop() {
        let q = Quotas::new(2, 0);
        let a = q.try_acquire("alice").unwrap();
        let b = q.try_acquire("alice").unwrap();
        assert_eq!(
            q.try_acquire("alice").unwrap_err(),
            QuotaError::PerUser {
                user: "alice".into(),
                limit: 2
            }
        );
        let _c = q.try_acquire("bob").unwrap();
        assert_eq!(q.held_by("alice"), 2);
        assert_eq!(q.total(), 3);
        drop(a);
        assert_eq!(q.held_by("alice"), 1);
        let _d = q.try_acquire("alice").unwrap();
        drop(b);
        assert_eq!(q.total(), 2);
    }

    #[test]
    fn total_limit() {
        let q = Quotas::new(0, 2);
        let _a = q.try_acquire("a").unwrap();
        let b = q.try_acquire("b").unwrap();
        let e = q.try_acquire("c").unwrap_err();
        assert_eq!(e, QuotaError::Total { limit: 2 });
        assert_eq!(e.reason(), "total");
        drop(b);
        assert!(q.try_acquire("c").is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let q = Quotas::new(0, 0);
        let t: Vec<_> = (0..1000).map(|_| q.try_acquire("u").unwrap()).collect();
        assert_eq!(q.total(), 1000);
        drop(t);
        assert_eq!(q.total(), 0);
        assert_eq!(q.held_by("u"), 0);
    }

    #[test]
    fn lowered_limit_keeps_existing_refuses_new() {
        let q = Quotas::new(5, 0);
        let _t: Vec<_> = (0..3).map(|_| q.try_acquire("u").unwrap()).collect();
        q.set_limits(2, 0);
        assert!(q.try_acquire("u").is_err());
        assert_eq!(q.held_by("u"), 3);
        assert_eq!(q.limits(), (2, 0));
    }

    #[test]
    fn concurrent_acquire_never_exceeds_limits() {
        const THREADS: usize = 8;
        const TRIES: usize = 2000;
        let q = Quotas::new(3, 10);
        let peak = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let q = q.clone();
                let peak = peak.clone();
                s.spawn(move || {
                    let user = format!("user{}", t % 4);
                    let mut held = Vec::new();
                    for i in 0..TRIES {
                        if let Ok(ticket) = q.try_acquire(&user) {
                            held.push(ticket);
                        }
                        let total = q.total();
                        assert!(total <= 10, "total {total} over limit");
                        assert!(q.held_by(&user) <= 3, "per-user over limit");
                        peak.fetch_max(total, Ordering::Relaxed);
                        if i % 3 == 0 {
                            held.pop();
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) >= 3, "the test raced at all");
        assert_eq!(q.total(), 0, "every ticket released");
        for u in 0..4 {
            assert_eq!(q.held_by(&format!("user{u}")), 0);
        }
    }
}
