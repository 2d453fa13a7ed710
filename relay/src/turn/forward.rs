//! The relay path's forwarding index: one hash lookup per relayed datagram.
//!
//! Why: relaying a ChannelData frame through the allocation table takes five dependent
//! lookups (5-tuple → id, id → allocation, channel, permission, then the allocation's
//! counters), each in its own heap block. With thousands of allocations none of them is
//! in cache, and at 10 000 allocations `perf` put those misses at a quarter of the AF_XDP
//! worker's time. This index answers the common case with one entry holding everything
//! the datagram needs: for ChannelData from a client, (5-tuple, channel) → peer and
//! relayed socket; for data from a peer, (relayed socket, peer) → client 5-tuple and
//! channel. Each entry carries the earliest of the deadlines that govern it (allocation,
//! permission, channel), so an entry past its deadline is simply not used, and its own
//! packet and byte counters.
//!
//! What it holds is derived from the allocation table: [`ForwardIndex::sync`] rebuilds one
//! allocation's entries from its state and runs at every point where an allocation
//! changes (the same points that sync the kernel fast path's rules), and
//! [`ForwardIndex::forget`] removes them when the allocation goes. Datagrams the index
//! does not answer take the full path, which stays the reference: no entry is made for
//! allocations with a byte quota or a bandwidth limit (both need the allocation's own
//! state per datagram), for peers on the relay's own addresses, nor for Send and Data
//! indications.
//!
//! Counters: the entries' counters are folded into the allocation's when its entries are
//! rebuilt or removed, and [`ForwardIndex::traffic`] adds what is not folded yet, so
//! `relay allocations`, the snapshot and the final log line see exact totals.

use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::{Allocation, Traffic};
use super::{FiveTuple, IpFamily, RelayHandle};

/// ChannelData from a client: where it goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct ToPeer {
    pub peer: SocketAddr,
    pub relay: RelayHandle,
    /// Usable while `now < until`.
    pub until: Instant,
    pub packets: u64,
    pub bytes: u64,
}

/// Data from a peer on a bound channel: where it goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct ToClient {
    pub tuple: FiveTuple,
    pub channel: u16,
    /// Usable while `now < until`.
    pub until: Instant,
    pub packets: u64,
    pub bytes: u64,
}

/// One channel's pair of entries, as installed (to find them again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Installed {
    channel: u16,
    relay: RelayHandle,
    peer: SocketAddr,
}

/// The index of one [`super::TurnServer`].
#[derive(Debug, Default)]
pub(super) struct ForwardIndex {
    pub to_peer: super::Map<(FiveTuple, u16), ToPeer>,
    pub to_client: super::Map<(RelayHandle, SocketAddr), ToClient>,
    installed: super::Map<u64, Vec<Installed>>,
    /// No entries are made (tests compare the full path against the index with it).
    pub off: bool,
}

impl ForwardIndex {
    /// Removes allocation `id`'s entries, folding their counters into `a`.
    pub fn forget(&mut self, id: u64, a: &mut Allocation) {
        let Some(list) = self.installed.remove(&id) else {
            return;
        };
        for i in &list {
            let out = self.to_peer.remove(&(a.tuple, i.channel));
            let back = self.to_client.remove(&(i.relay, i.peer));
            add(&mut a.traffic, out.as_ref(), back.as_ref());
        }
    }

    /// Rebuilds allocation `id`'s entries from its state at `now`. `peer_allowed` says
    /// whether data from a peer may take the index (false for the relay's own services).
    pub fn sync(
        &mut self,
        id: u64,
        a: &mut Allocation,
        now: Instant,
        peer_allowed: impl Fn(SocketAddr) -> bool,
    ) {
        self.forget(id, a);
        if self.off || a.byte_quota != 0 || a.bucket.is_some() || a.expires <= now {
            return;
        }
        let mut list = Vec::new();
        for (&channel, ch) in &a.channels {
            let Some(&perm) = a.permissions.get(&ch.peer.ip()) else {
                continue;
            };
            let until = a.expires.min(perm).min(ch.expires);
            let Some(relay) = a.relay_for(IpFamily::of(ch.peer.ip())) else {
                continue;
            };
            if until <= now {
                continue;
            }
            self.to_peer.insert(
                (a.tuple, channel),
                ToPeer {
                    peer: ch.peer,
                    relay: relay.handle,
                    until,
                    packets: 0,
                    bytes: 0,
                },
            );
            if a.peer_channels.get(&ch.peer) == Some(&channel) && peer_allowed(ch.peer) {
                self.to_client.insert(
                    (relay.handle, ch.peer),
                    ToClient {
                        tuple: a.tuple,
                        channel,
                        until,
                        packets: 0,
                        bytes: 0,
                    },
                );
            }
            list.push(Installed {
                channel,
                relay: relay.handle,
                peer: ch.peer,
            });
        }
        if !list.is_empty() {
            self.installed.insert(id, list);
        }
    }

    /// Allocation `id`'s counters including what its entries counted since the last fold.
    pub fn traffic(&self, id: u64, a: &Allocation) -> Traffic {
        let mut t = a.traffic;
        for i in self.installed.get(&id).into_iter().flatten() {
            let out = self.to_peer.get(&(a.tuple, i.channel));
            let back = self.to_client.get(&(i.relay, i.peer));
            add(&mut t, out, back);
        }
        t
    }

    /// Entries in both directions (for tests and stats).
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.to_peer.len(), self.to_client.len())
    }
}

/// Adds one channel's entry counters to `t`.
fn add(t: &mut Traffic, out: Option<&ToPeer>, back: Option<&ToClient>) {
    if let Some(e) = out {
        t.packets_to_peer += e.packets;
        t.bytes_to_peer += e.bytes;
    }
    if let Some(e) = back {
        t.packets_to_client += e.packets;
        t.bytes_to_client += e.bytes;
    }
}
