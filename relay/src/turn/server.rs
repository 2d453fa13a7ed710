//! The [`TurnServer`]: one per worker. Dispatches client messages (STUN requests and
//! indications, ChannelData) and peer datagrams, and runs the expiry timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::stats::TurnStats;
use super::{
    AllocationInfo, FiveTuple, KickTarget, RelayHandle, RelayPorts, Shared, Transmit, TurnConfig,
};

/// TURN state of one worker: the allocations whose client 5-tuples land on it.
#[derive(Debug)]
pub struct TurnServer {
    config: Arc<TurnConfig>,
    shared: Arc<Shared>,
    stats: TurnStats,
}

impl TurnServer {
    /// A server with no allocations.
    pub fn new(config: Arc<TurnConfig>, shared: Arc<Shared>) -> Self {
        TurnServer {
            config,
            shared,
            stats: TurnStats::default(),
        }
    }

    /// Handles one message from a client: a STUN request or indication (one datagram, or
    /// one frame cut by [`super::framing::frame_len`] on streams) or a ChannelData frame.
    /// `now` drives lifetimes; `wall` (unix time) drives nonces and REST credentials.
    pub fn on_client(
        &mut self,
        tuple: &FiveTuple,
        msg: &[u8],
        now: Instant,
        wall: SystemTime,
        ports: &mut impl RelayPorts,
        tx: &mut impl Transmit,
    ) {
        let _ = (tuple, msg, now, wall, ports, tx, &self.config, &self.shared);
    }

    /// Handles a datagram from `peer` received on the relayed socket `relay`: relayed to
    /// the client as ChannelData (bound channel) or a Data indication (permission only),
    /// dropped otherwise.
    pub fn on_peer(
        &mut self,
        relay: RelayHandle,
        peer: SocketAddr,
        datagram: &[u8],
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let _ = (relay, peer, datagram, now, tx);
    }

    /// When [`TurnServer::on_timeout`] should next be called (`None`: nothing pending).
    /// May be early (a refreshed entry's old deadline); never late.
    pub fn next_timeout(&self) -> Option<Instant> {
        None
    }

    /// Expires allocations, permissions, channels and port reservations due at `now`.
    pub fn on_timeout(&mut self, now: Instant, ports: &mut impl RelayPorts) {
        let _ = (now, ports);
    }

    /// The stream of `tuple` closed (TCP/TLS): its allocation is deleted.
    pub fn on_client_closed(&mut self, tuple: &FiveTuple, ports: &mut impl RelayPorts) {
        let _ = (tuple, ports);
    }

    /// The allocations of this server, as of `now`.
    pub fn allocations(&self, now: Instant) -> impl Iterator<Item = AllocationInfo> + '_ {
        let _ = now;
        std::iter::empty()
    }

    /// Deletes the allocations matching `target`; returns how many.
    pub fn kick(&mut self, target: &KickTarget, ports: &mut impl RelayPorts) -> usize {
        let _ = (target, ports);
        0
    }

    /// Counters of this server.
    pub fn stats(&self) -> &TurnStats {
        &self.stats
    }
}
