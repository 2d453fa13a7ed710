//! Candidate pairs as a lite agent sees them: the (local, remote, transport) triples on
//! which the browser's connectivity checks arrived, with what those checks told us
//! (PRIORITY, nomination) and when the last one arrived (consent freshness, RFC 7675).
//!
//! The table has a fixed capacity allocated once; refreshing a known pair never
//! allocates.

use std::net::SocketAddr;

/// How long consent lasts after the last valid check (RFC 7675 §5.1: 30 seconds).
pub const CONSENT_TIMEOUT_US: u64 = 30_000_000;

/// Most pairs remembered per agent. A browser has a handful of candidates per
/// connection; beyond this the stalest pair is forgotten.
pub const MAX_PAIRS: usize = 16;

/// The transport a check arrived on. TCP here means RFC 6544 framing (RFC 4571) on a
/// passive host candidate: the framing is the data path's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (passive candidate, RFC 6544).
    Tcp,
}

/// A candidate pair: our address the check arrived on, the browser's address it came
/// from, and the transport. Addresses are canonical (IPv4-mapped IPv6 folded to IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pair {
    /// Our address (the local candidate's).
    pub local: SocketAddr,
    /// The browser's address as seen by us (its host, server-reflexive, relayed or
    /// peer-reflexive candidate).
    pub remote: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
}

/// What we know of one valid pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PairState {
    pub(crate) pair: Pair,
    /// PRIORITY of the latest valid check on the pair.
    pub(crate) priority: u32,
    /// When the latest valid check arrived (µs).
    pub(crate) last_check_us: u64,
    /// Sequence number of the latest nomination (USE-CANDIDATE), if any.
    pub(crate) nominated: Option<u64>,
}

impl PairState {
    /// Whether consent still holds at `now_us` (a clock that went backwards counts as
    /// fresh).
    pub(crate) fn is_fresh(&self, now_us: u64) -> bool {
        now_us.saturating_sub(self.last_check_us) < CONSENT_TIMEOUT_US
    }

    /// When consent expires.
    pub(crate) fn expires_at(&self) -> u64 {
        self.last_check_us.saturating_add(CONSENT_TIMEOUT_US)
    }
}

/// The valid pairs of one agent, at most [`MAX_PAIRS`].
#[derive(Debug)]
pub(crate) struct PairTable {
    pairs: Vec<PairState>,
    nominations: u64,
}

impl PairTable {
    pub(crate) fn new() -> PairTable {
        PairTable {
            pairs: Vec::with_capacity(MAX_PAIRS),
            nominations: 0,
        }
    }

    pub(crate) fn get(&self, pair: &Pair) -> Option<&PairState> {
        self.pairs.iter().find(|p| p.pair == *pair)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &PairState> {
        self.pairs.iter()
    }

    /// Records a valid check on `pair` at `now_us`. `keep` is a pair never evicted to
    /// make room (the selected one).
    pub(crate) fn record_check(
        &mut self,
        pair: Pair,
        priority: u32,
        use_candidate: bool,
        now_us: u64,
        keep: Option<Pair>,
    ) {
        let nomination = use_candidate.then(|| {
            self.nominations += 1;
            self.nominations
        });
        if let Some(p) = self.pairs.iter_mut().find(|p| p.pair == pair) {
            p.priority = priority;
            p.last_check_us = now_us;
            if nomination.is_some() {
                p.nominated = nomination;
            }
            return;
        }
        let state = PairState {
            pair,
            priority,
            last_check_us: now_us,
            nominated: nomination,
        };
        if self.pairs.len() < MAX_PAIRS {
            self.pairs.push(state);
            return;
        }
        // Full: replace the pair checked least recently (expired ones first, by
        // construction), never the selected one.
        let victim = self
            .pairs
            .iter_mut()
            .filter(|p| Some(p.pair) != keep)
            .min_by_key(|p| p.last_check_us);
        if let Some(v) = victim {
            *v = state;
        }
    }

    /// The fresh nominated pair with the highest PRIORITY; the latest nomination wins
    /// ties.
    pub(crate) fn best_nominated(&self, now_us: u64) -> Option<Pair> {
        self.pairs
            .iter()
            .filter(|p| p.is_fresh(now_us))
            .filter_map(|p| p.nominated.map(|seq| (p.priority, seq, p.pair)))
            .max_by_key(|&(priority, seq, _)| (priority, seq))
            .map(|(_, _, pair)| pair)
    }
}
