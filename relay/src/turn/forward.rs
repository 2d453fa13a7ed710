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
//! Layout: IPv4 channels (client, server and peer all IPv4: nearly every deployment) have
//! maps of their own with packed keys and values, 64 bytes an entry instead of 144–152 in
//! the general maps (10 000 channels: 2 MiB of slots per direction at most half full,
//! against about 2.4 MB).
//! Everything else (IPv6, or families mixed within a channel) keeps the general maps,
//! which a lookup reaches only when they hold something. The packed maps are
//! [`SlotMap`]s, whose slot follows from the hash alone, so the AF_XDP worker asks for
//! every frame's entry before handling a batch ([`ForwardIndex::prefetch_to_client`],
//! [`ForwardIndex::prefetch_to_peer`]). Why: with every allocation active, an entry's line
//! is evicted between two of its datagrams whatever the table's size, and that one miss
//! was about 90 ns of 900 per datagram at 10 000 allocations; packing alone saved about
//! 3%, the prefetch removed the miss from the profile.
//!
//! Counters: the entries' counters are folded into the allocation's when its entries are
//! rebuilt or removed, and [`ForwardIndex::traffic`] adds what is not folded yet, so
//! `relay allocations`, the snapshot and the final log line see exact totals.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use super::allocation::{Allocation, Traffic};
use super::slot_map::SlotMap;
use super::{FiveTuple, IpFamily, RelayHandle, Transport};

/// Packets and payload bytes one entry relayed since it was made.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    packets: u64,
    bytes: u64,
}

impl Counts {
    #[inline]
    fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// ChannelData from a client: where it goes.
#[derive(Debug, Clone, Copy)]
struct ToPeer {
    peer: SocketAddr,
    relay: RelayHandle,
    /// Usable while `now < until`.
    until: Instant,
    counts: Counts,
}

/// Data from a peer on a bound channel: where it goes.
#[derive(Debug, Clone, Copy)]
struct ToClient {
    tuple: FiveTuple,
    channel: u16,
    /// Usable while `now < until`.
    until: Instant,
    counts: Counts,
}

/// [`ToPeer`]'s key for an all-IPv4 channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChannelKeyV4 {
    client: SocketAddrV4,
    server: SocketAddrV4,
    transport: Transport,
    channel: u16,
}

/// [`ToPeer`] for an all-IPv4 channel.
#[derive(Debug, Clone, Copy)]
struct ToPeerV4 {
    peer: SocketAddrV4,
    relay: RelayHandle,
    until: Instant,
    counts: Counts,
}

/// [`ToClient`] for an all-IPv4 channel (keyed by relayed handle and peer).
#[derive(Debug, Clone, Copy)]
struct ToClientV4 {
    client: SocketAddrV4,
    server: SocketAddrV4,
    transport: Transport,
    channel: u16,
    until: Instant,
    counts: Counts,
}

/// One channel's pair of entries, as installed (to find them again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Installed {
    channel: u16,
    relay: RelayHandle,
    peer: SocketAddr,
}

/// The client side of `tuple` when the tuple and `peer` are all IPv4: the channel's
/// entries then live in the packed maps.
#[inline]
fn packed(
    tuple: &FiveTuple,
    peer: SocketAddr,
) -> Option<(SocketAddrV4, SocketAddrV4, SocketAddrV4)> {
    match (tuple.client, tuple.server, peer) {
        (SocketAddr::V4(c), SocketAddr::V4(s), SocketAddr::V4(p)) => Some((c, s, p)),
        _ => None,
    }
}

/// Where one installed channel's two entries are, by map.
enum Keys {
    Packed(ChannelKeyV4, (RelayHandle, SocketAddrV4)),
    General((FiveTuple, u16), (RelayHandle, SocketAddr)),
}

impl Installed {
    /// The keys of this channel's entries for an allocation with 5-tuple `tuple`.
    fn keys(&self, tuple: &FiveTuple) -> Keys {
        match packed(tuple, self.peer) {
            Some((client, server, peer)) => Keys::Packed(
                ChannelKeyV4 {
                    client,
                    server,
                    transport: tuple.transport,
                    channel: self.channel,
                },
                (self.relay, peer),
            ),
            None => Keys::General((*tuple, self.channel), (self.relay, self.peer)),
        }
    }
}

/// The index of one [`super::TurnServer`].
#[derive(Debug, Default)]
pub(super) struct ForwardIndex {
    to_peer: super::Map<(FiveTuple, u16), ToPeer>,
    to_client: super::Map<(RelayHandle, SocketAddr), ToClient>,
    to_peer_v4: SlotMap<ChannelKeyV4, ToPeerV4>,
    to_client_v4: SlotMap<(RelayHandle, SocketAddrV4), ToClientV4>,
    installed: super::Map<u64, Vec<Installed>>,
    /// No entries are made (tests compare the full path against the index with it).
    pub off: bool,
}

impl ForwardIndex {
    /// Starts loading the entry [`ForwardIndex::relay_to_peer`] would look at for
    /// ChannelData `channel` from `tuple` (all-IPv4 channels; a hint, nothing changes).
    #[inline]
    pub fn prefetch_to_peer(&self, tuple: &FiveTuple, channel: u16) {
        if let (SocketAddr::V4(client), SocketAddr::V4(server)) = (tuple.client, tuple.server) {
            self.to_peer_v4.prefetch(&ChannelKeyV4 {
                client,
                server,
                transport: tuple.transport,
                channel,
            });
        }
    }

    /// Starts loading the entry [`ForwardIndex::relay_to_client`] would look at for a
    /// datagram from `peer` (canonical) to relayed handle `relay` (IPv4 peers; a hint).
    #[inline]
    pub fn prefetch_to_client(&self, relay: RelayHandle, peer: SocketAddr) {
        if let SocketAddr::V4(p) = peer {
            self.to_client_v4.prefetch(&(relay, p));
        }
    }

    /// ChannelData `channel` from `tuple` with a `len`-byte payload: the relayed handle
    /// and peer to send it from and to, if an entry is live at `now` (then counted).
    #[inline]
    pub fn relay_to_peer(
        &mut self,
        tuple: &FiveTuple,
        channel: u16,
        now: Instant,
        len: usize,
    ) -> Option<(RelayHandle, SocketAddr)> {
        if let (SocketAddr::V4(client), SocketAddr::V4(server)) = (tuple.client, tuple.server) {
            let key = ChannelKeyV4 {
                client,
                server,
                transport: tuple.transport,
                channel,
            };
            if let Some(e) = self.to_peer_v4.get_mut(&key) {
                if e.until <= now {
                    return None;
                }
                e.counts.add(len);
                return Some((e.relay, SocketAddr::V4(e.peer)));
            }
        }
        if self.to_peer.is_empty() {
            return None;
        }
        let e = self.to_peer.get_mut(&(*tuple, channel))?;
        if e.until <= now {
            return None;
        }
        e.counts.add(len);
        Some((e.relay, e.peer))
    }

    /// A `len`-byte datagram from `peer` (canonical) to relayed handle `relay`: the
    /// client's 5-tuple and the channel to send it on, if an entry is live at `now`
    /// (then counted).
    #[inline]
    pub fn relay_to_client(
        &mut self,
        relay: RelayHandle,
        peer: SocketAddr,
        now: Instant,
        len: usize,
    ) -> Option<(FiveTuple, u16)> {
        if let SocketAddr::V4(p) = peer
            && let Some(e) = self.to_client_v4.get_mut(&(relay, p))
        {
            if e.until <= now {
                return None;
            }
            e.counts.add(len);
            let tuple = FiveTuple {
                client: SocketAddr::V4(e.client),
                server: SocketAddr::V4(e.server),
                transport: e.transport,
            };
            return Some((tuple, e.channel));
        }
        if self.to_client.is_empty() {
            return None;
        }
        let e = self.to_client.get_mut(&(relay, peer))?;
        if e.until <= now {
            return None;
        }
        e.counts.add(len);
        Some((e.tuple, e.channel))
    }

    /// Removes allocation `id`'s entries, folding their counters into `a`.
    pub fn forget(&mut self, id: u64, a: &mut Allocation) {
        let Some(list) = self.installed.remove(&id) else {
            return;
        };
        for i in &list {
            let (out, back) = match i.keys(&a.tuple) {
                Keys::Packed(o, b) => (
                    self.to_peer_v4.remove(&o).map(|e| e.counts),
                    self.to_client_v4.remove(&b).map(|e| e.counts),
                ),
                Keys::General(o, b) => (
                    self.to_peer.remove(&o).map(|e| e.counts),
                    self.to_client.remove(&b).map(|e| e.counts),
                ),
            };
            add(&mut a.traffic, out, back);
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
            let back = a.peer_channels.get(&ch.peer) == Some(&channel) && peer_allowed(ch.peer);
            let counts = Counts::default();
            match packed(&a.tuple, ch.peer) {
                Some((client, server, peer)) => {
                    let key = ChannelKeyV4 {
                        client,
                        server,
                        transport: a.tuple.transport,
                        channel,
                    };
                    let out = ToPeerV4 {
                        peer,
                        relay: relay.handle,
                        until,
                        counts,
                    };
                    self.to_peer_v4.insert(key, out);
                    if back {
                        let e = ToClientV4 {
                            client,
                            server,
                            transport: a.tuple.transport,
                            channel,
                            until,
                            counts,
                        };
                        self.to_client_v4.insert((relay.handle, peer), e);
                    }
                }
                None => {
                    let out = ToPeer {
                        peer: ch.peer,
                        relay: relay.handle,
                        until,
                        counts,
                    };
                    self.to_peer.insert((a.tuple, channel), out);
                    if back {
                        let e = ToClient {
                            tuple: a.tuple,
                            channel,
                            until,
                            counts,
                        };
                        self.to_client.insert((relay.handle, ch.peer), e);
                    }
                }
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
            let (out, back) = match i.keys(&a.tuple) {
                Keys::Packed(o, b) => (
                    self.to_peer_v4.get(&o).map(|e| e.counts),
                    self.to_client_v4.get(&b).map(|e| e.counts),
                ),
                Keys::General(o, b) => (
                    self.to_peer.get(&o).map(|e| e.counts),
                    self.to_client.get(&b).map(|e| e.counts),
                ),
            };
            add(&mut t, out, back);
        }
        t
    }

    /// Entries in both directions (for tests and stats).
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (
            self.to_peer.len() + self.to_peer_v4.len(),
            self.to_client.len() + self.to_client_v4.len(),
        )
    }

    /// Packets the packed and the general entries counted since they were made (for
    /// tests: what took the index rather than the full path).
    #[cfg(test)]
    pub fn entry_packets(&self) -> (u64, u64) {
        let packed = self
            .to_peer_v4
            .values()
            .map(|e| e.counts.packets)
            .sum::<u64>()
            + self
                .to_client_v4
                .values()
                .map(|e| e.counts.packets)
                .sum::<u64>();
        let general = self.to_peer.values().map(|e| e.counts.packets).sum::<u64>()
            + self
                .to_client
                .values()
                .map(|e| e.counts.packets)
                .sum::<u64>();
        (packed, general)
    }

    /// Entries in the packed IPv4 maps, both directions (for tests).
    #[cfg(test)]
    pub fn len_v4(&self) -> (usize, usize) {
        (self.to_peer_v4.len(), self.to_client_v4.len())
    }
}

/// Adds one channel's entry counters to `t`.
fn add(t: &mut Traffic, out: Option<Counts>, back: Option<Counts>) {
    if let Some(c) = out {
        t.packets_to_peer += c.packets;
        t.bytes_to_peer += c.bytes;
    }
    if let Some(c) = back {
        t.packets_to_client += c.packets;
        t.bytes_to_client += c.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::super::slot_map::Slot;
    use super::*;

    /// The layout the module doc promises: one 64-byte bucket per packed entry.
    #[test]
    fn packed_entries_take_64_bytes() {
        assert_eq!(size_of::<Slot<ChannelKeyV4, ToPeerV4>>(), 64);
        assert_eq!(
            size_of::<Slot<(RelayHandle, SocketAddrV4), ToClientV4>>(),
            64
        );
        assert!(size_of::<((FiveTuple, u16), ToPeer)>() > 128);
    }
}
