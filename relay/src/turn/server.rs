//! The [`TurnServer`]: one per worker. Dispatches client messages (STUN requests and
//! indications, ChannelData) and peer datagrams, answers, and runs the expiry timers.
//!
//! Order of checks for a request (RFC 8489 §6.3, §9.2.4; RFC 8656 §6-§11): parse (drop
//! what is not STUN, a bad FINGERPRINT, responses), retransmitted Allocate (same answer
//! again), malformed layout (400), authentication (401/438/400/drop), unknown
//! comprehension-required attributes (420, signed), then the method's own rules.
//!
//! Answers are written into one scratch buffer owned by the server, so neither requests
//! nor the relay path allocate for their output.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::allocation::{Allocation, Relay, family_index};
use super::attrs;
use super::auth::{AuthResult, Authenticated, Authenticator, PASSWORD_ALGORITHMS_VALUE};
use super::fast::{Env, FastState, quota_exhausted};
use super::forward::ForwardIndex;
use super::stats::{AuthFailure, TurnStats};
use super::timers::{Timer, Timers};
use super::{
    AllocationInfo, FiveTuple, IpFamily, RelayHandle, RelayPorts, Shared, Transmit, TurnConfig,
};
use crate::stun::attr::{self as sattr, Attribute};
use crate::stun::binding::{self, Reply};
use crate::stun::integrity::check_fingerprint;
use crate::stun::{Class, Message, MessageBuilder, MessageType, Method, StunError, TransactionId};

/// Scratch buffer size: the largest ChannelData frame (4 + 65535 + padding) or STUN
/// message (20 + 65532) with room to spare.
pub(super) const SCRATCH: usize = 4 + 65536 + 64;

/// Reason phrase of each error code we send.
pub(super) fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}

/// TURN state of one worker: the allocations whose client 5-tuples land on it.
#[derive(Debug)]
pub struct TurnServer {
    pub(super) config: Arc<TurnConfig>,
    pub(super) shared: Arc<Shared>,
    pub(super) stats: TurnStats,
    pub(super) auth: Authenticator,
    /// Rate limit of answers to unauthenticated UDP requests per source IP (`None`: off).
    pub(super) unauth_replies: Option<Authenticator>,
    pub(super) allocs: super::Map<u64, Allocation>,
    pub(super) by_tuple: super::Map<FiveTuple, u64>,
    pub(super) by_relay: super::Map<RelayHandle, u64>,
    /// Reservation tokens this server obtained and their expiry.
    pub(super) reservations: HashMap<u64, Instant>,
    pub(super) timers: Timers,
    pub(super) next_id: u64,
    /// Transaction ids of Data indications: a counter mixed with a per-server seed.
    pub(super) txn_seed: [u8; 12],
    pub(super) txn_counter: u64,
    pub(super) scratch: Box<[u8]>,
    /// The relay's own addresses (from the policy, fixed for the process's life): a peer
    /// on one of them is reachable only on `config.relay_ports`, checked per datagram.
    pub(super) own: Vec<IpAddr>,
    /// The rules this server installed in the kernel fast path.
    pub(super) fast: FastState,
    /// One-lookup answers for the relay path, derived from `allocs`.
    pub(super) fwd: ForwardIndex,
    /// While a state snapshot is taken a slice at a time: the allocations that changed
    /// or went away since it began ([`super::snapshot_job`]).
    pub(super) snapshot_touched: Option<std::collections::HashSet<u64>>,
}

/// Unix seconds of `wall` (0 before the epoch).
pub(super) fn unix(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `addr` with an IPv4-mapped IPv6 address turned into IPv4.
#[inline]
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl TurnServer {
    /// A server with no allocations.
    pub fn new(config: Arc<TurnConfig>, shared: Arc<Shared>) -> Self {
        let auth = Authenticator::new(
            config.auth_failures_per_sec,
            config.auth_failure_burst,
            config.auth_limiter_entries,
        );
        // The same per-source token buckets, charged for every unauthenticated answer.
        let unauth_replies = (config.unauth_replies_per_sec > 0).then(|| {
            Authenticator::new(
                config.unauth_replies_per_sec,
                config.unauth_reply_burst,
                config.auth_limiter_entries,
            )
        });
        let mut txn_seed = [0u8; 12];
        let k = super::nonce::NonceKey::random().issue(IpAddr::from([0, 0, 0, 0]), 0);
        for (i, b) in k.iter().rev().take(12).enumerate() {
            txn_seed[i] = *b;
        }
        TurnServer {
            config,
            stats: TurnStats::default(),
            auth,
            unauth_replies,
            allocs: super::Map::default(),
            by_tuple: super::Map::default(),
            by_relay: super::Map::default(),
            reservations: HashMap::new(),
            timers: Timers::default(),
            next_id: 1,
            txn_seed,
            txn_counter: 0,
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            own: shared.policy.own_addresses(),
            fast: FastState::default(),
            fwd: ForwardIndex::default(),
            snapshot_touched: None,
            shared,
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
        match msg.first() {
            Some(b) if b >> 6 == 0b01 => return self.channel_data_from_client(tuple, msg, now, tx),
            Some(b) if b >> 6 == 0b00 => {}
            _ => {
                self.stats.dropped_malformed += 1;
                return;
            }
        }
        let Ok(m) = Message::parse(msg) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let layout = m.layout();
        if let Ok(l) = &layout
            && let Some(fp) = &l.fingerprint
            && check_fingerprint(&m, fp).is_err()
        {
            self.stats.dropped_malformed += 1;
            return;
        }
        match m.class() {
            Class::Request => {}
            Class::Indication if m.method().value() == attrs::method::SEND => {
                return self.send_indication(tuple, &m, now, tx);
            }
            _ => {
                self.stats.dropped_malformed += 1;
                return;
            }
        }
        if m.method() == Method::BINDING {
            return self.binding(tuple, msg, tx);
        }
        let method = m.method().value();
        let known = matches!(
            method,
            attrs::method::ALLOCATE
                | attrs::method::REFRESH
                | attrs::method::CREATE_PERMISSION
                | attrs::method::CHANNEL_BIND
        );
        // A retransmitted Allocate gets the answer it got before, even if its nonce has
        // expired since.
        if method == attrs::method::ALLOCATE
            && let Some(id) = self.by_tuple.get(tuple)
            && let Some(a) = self.allocs.get(id)
            && a.txn == *m.transaction_id()
        {
            tx.to_client(tuple, &a.response);
            return;
        }
        if layout.is_err() || !known {
            return self.unauthenticated_error(tuple, &m, 400, now, tx);
        }
        let creds = self.shared.credentials();
        let auth = match self.auth.check(
            &m,
            &creds,
            &self.shared.nonce_key,
            tuple.client.ip(),
            now,
            unix(wall),
        ) {
            AuthResult::Ok(a) => a,
            AuthResult::Unauthorized(why) => {
                self.stats.auth_failure(why);
                return self.challenge(tuple, &m, 401, now, wall, tx);
            }
            AuthResult::StaleNonce => {
                self.stats.auth_failure(AuthFailure::StaleNonce);
                return self.challenge(tuple, &m, 438, now, wall, tx);
            }
            AuthResult::BadRequest => {
                self.stats.auth_failure(AuthFailure::BadRequest);
                return self.unauthenticated_error(tuple, &m, 400, now, tx);
            }
            AuthResult::Drop => {
                self.stats.auth_failure(AuthFailure::RateLimited);
                return;
            }
        };
        match unknown_attributes(&m) {
            Ok(false) => {}
            Ok(true) => {
                return self.error_with(tuple, &m, 420, Some(&auth), tx, |b, m| {
                    add_unknown_list(b, m)
                });
            }
            Err(_) => return self.error(tuple, &m, 400, Some(&auth), tx),
        }
        // Every request but Allocate needs the 5-tuple's allocation, by the same user.
        if method != attrs::method::ALLOCATE {
            let Some(a) = self.by_tuple.get(tuple).and_then(|id| self.allocs.get(id)) else {
                return self.error(tuple, &m, 437, Some(&auth), tx);
            };
            if a.username != auth.username {
                return self.error(tuple, &m, 441, Some(&auth), tx);
            }
        }
        match method {
            attrs::method::ALLOCATE => self.allocate(tuple, &m, &auth, now, ports, tx),
            attrs::method::REFRESH => self.refresh(tuple, &m, &auth, now, ports, tx),
            attrs::method::CREATE_PERMISSION => self.create_permission(tuple, &m, &auth, now, tx),
            _ => self.channel_bind(tuple, &m, &auth, now, tx),
        }
    }

    fn binding(&mut self, tuple: &FiveTuple, msg: &[u8], tx: &mut impl Transmit) {
        match binding::handle_datagram(msg, tuple.client, &mut self.scratch) {
            Reply::Send(n) if n <= self.scratch.len() => tx.to_client(tuple, &self.scratch[..n]),
            _ => self.stats.dropped_malformed += 1,
        }
    }

    /// Starts loading the forwarding entry [`TurnServer::on_peer`] would use for a
    /// datagram from `peer` on relayed socket `relay`: a hint for a batch's first pass, so
    /// that its cache misses overlap. Changes nothing.
    #[inline]
    pub fn prefetch_peer(&self, relay: RelayHandle, peer: SocketAddr) {
        self.fwd.prefetch_to_client(relay, canonical(peer));
    }

    /// As [`TurnServer::prefetch_peer`] for a UDP datagram from a client (`tuple`): the
    /// entry of its channel when it is ChannelData.
    #[inline]
    pub fn prefetch_client(&self, tuple: &FiveTuple, datagram: &[u8]) {
        if let Some(&[c0, c1]) = datagram.first_chunk::<2>() {
            let number = u16::from_be_bytes([c0, c1]);
            if (0x4000..=0x4FFF).contains(&number) {
                self.fwd.prefetch_to_peer(tuple, number);
            }
        }
    }

    /// Handles a datagram from `peer` received on the relayed socket `relay`: relayed to
    /// the client as ChannelData (bound channel) or a Data indication (permission only),
    /// dropped otherwise. Does not allocate.
    pub fn on_peer(
        &mut self,
        relay: RelayHandle,
        peer: SocketAddr,
        datagram: &[u8],
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let peer = canonical(peer);
        if let Ok(len) = u16::try_from(datagram.len())
            && let Some((tuple, channel)) =
                self.fwd.relay_to_client(relay, peer, now, datagram.len())
        {
            let stream = tuple.transport.is_stream();
            let n = write_channel_data(&mut self.scratch, channel, len, datagram, stream);
            self.stats.packets_peer_to_client += 1;
            self.stats.bytes_peer_to_client += datagram.len() as u64;
            tx.to_client(&tuple, &self.scratch[..n]);
            return;
        }
        let Some(a) = self
            .by_relay
            .get(&relay)
            .and_then(|id| self.allocs.get_mut(id))
        else {
            self.stats.dropped_unknown_relay += 1;
            return;
        };
        if a.expires <= now
            || !a.permitted(peer.ip(), now)
            || own_service(&self.own, &self.config.relay_ports, peer)
        {
            self.stats.dropped_peer_no_permission += 1;
            return;
        }
        if !a.within_quota(datagram.len()) {
            self.stats.dropped_quota += 1;
            return;
        }
        if !a.within_bandwidth(datagram.len(), now) {
            self.stats.dropped_bandwidth += 1;
            return;
        }
        let channel = a
            .peer_channels
            .get(&peer)
            .copied()
            .filter(|c| a.channels.get(c).is_some_and(|ch| ch.expires > now));
        let out = &mut self.scratch;
        let n = match channel {
            Some(number) => {
                let Ok(len) = u16::try_from(datagram.len()) else {
                    self.stats.dropped_malformed += 1;
                    return;
                };
                write_channel_data(out, number, len, datagram, a.tuple.transport.is_stream())
            }
            None => {
                self.txn_counter = self.txn_counter.wrapping_add(1);
                let mut tid = self.txn_seed;
                for (t, c) in tid.iter_mut().zip(self.txn_counter.to_be_bytes()) {
                    *t ^= c;
                }
                let tid = TransactionId(tid);
                let built = MessageBuilder::new(
                    out,
                    MessageType::new(attrs::method::m(attrs::method::DATA), Class::Indication),
                    tid,
                )
                .and_then(|mut b| {
                    let mut v = [0u8; attrs::XOR_ADDRESS_MAX];
                    let l = attrs::encode_xor_address(peer, &tid, &mut v);
                    b.add(&Attribute::Other {
                        attr_type: attrs::XOR_PEER_ADDRESS,
                        value: &v[..l],
                    })?;
                    b.add(&Attribute::Other {
                        attr_type: attrs::DATA,
                        value: datagram,
                    })?;
                    Ok(b.finish())
                });
                match built {
                    Ok(n) => n,
                    Err(_) => {
                        self.stats.dropped_malformed += 1;
                        return;
                    }
                }
            }
        };
        a.traffic.packets_to_client += 1;
        a.traffic.bytes_to_client += datagram.len() as u64;
        self.stats.packets_peer_to_client += 1;
        self.stats.bytes_peer_to_client += datagram.len() as u64;
        tx.to_client(&a.tuple, &out[..n]);
    }

    /// ChannelData from the client: relayed to the channel's peer. Does not allocate.
    fn channel_data_from_client(
        &mut self,
        tuple: &FiveTuple,
        frame: &[u8],
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let Some([c0, c1, l0, l1]) = frame.first_chunk::<4>().copied() else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let number = u16::from_be_bytes([c0, c1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        // UDP may carry padding or not; streams hand us the padded frame.
        let Some(payload) = frame.get(4..4 + len) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if let Some((relay, peer)) = self.fwd.relay_to_peer(tuple, number, now, payload.len()) {
            self.stats.packets_client_to_peer += 1;
            self.stats.bytes_client_to_peer += payload.len() as u64;
            tx.to_peer(relay, peer, payload);
            return;
        }
        let Some(a) = self
            .by_tuple
            .get(tuple)
            .and_then(|id| self.allocs.get_mut(id))
        else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        let Some(ch) = a.channels.get(&number).copied() else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        if ch.expires <= now || a.expires <= now || !a.permitted(ch.peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        forward_to_peer(a, &mut self.stats, ch.peer, payload, now, tx);
    }

    /// Send indication: DATA to XOR-PEER-ADDRESS if permitted; silently dropped otherwise
    /// (RFC 8656 §11.2). Does not allocate.
    fn send_indication(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let Some(a) = self
            .by_tuple
            .get(tuple)
            .and_then(|id| self.allocs.get_mut(id))
        else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        let mut peer = None;
        let mut data = None;
        let mut dont_fragment = false;
        for item in m.attributes() {
            let Ok(at) = item else {
                self.stats.dropped_malformed += 1;
                return;
            };
            match at.attr_type {
                attrs::XOR_PEER_ADDRESS if peer.is_none() => {
                    peer = attrs::decode_xor_address(at.value, m.transaction_id());
                }
                attrs::DATA if data.is_none() => data = Some(at.value),
                attrs::DONT_FRAGMENT => dont_fragment = true,
                t if sattr::is_comprehension_required(t)
                    && !sattr::is_known(t)
                    && !attrs::is_known_turn(t) =>
                {
                    self.stats.dropped_malformed += 1;
                    return;
                }
                _ => {}
            }
        }
        let (Some(peer), Some(data)) = (peer, data) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let peer = canonical(peer);
        if a.expires <= now
            || !a.permitted(peer.ip(), now)
            || own_service(&self.own, &self.config.relay_ports, peer)
        {
            self.stats.dropped_no_permission += 1;
            return;
        }
        if dont_fragment {
            forward_to_peer(a, &mut self.stats, peer, data, now, &mut DontFragment(tx));
        } else {
            forward_to_peer(a, &mut self.stats, peer, data, now, tx);
        }
    }

    /// When [`TurnServer::on_timeout`] should next be called (`None`: nothing pending).
    /// May be early (a refreshed entry's old deadline); never late.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Expires allocations, permissions, channels and port reservations due at `now`.
    /// Work is proportional to the entries due, not to the number of allocations.
    pub fn on_timeout(&mut self, now: Instant, ports: &mut impl RelayPorts) {
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Allocation(id) => {
                    if self.allocs.get(&id).is_some_and(|a| a.expires <= now) {
                        self.remove(id, ports);
                        self.stats.allocations_expired += 1;
                    }
                }
                Timer::Permission(id, ip) => {
                    if let Some(a) = self.allocs.get_mut(&id)
                        && a.permissions.get(&ip).is_some_and(|&e| e <= now)
                    {
                        a.permissions.remove(&ip);
                        self.stats.permissions = self.stats.permissions.saturating_sub(1);
                        self.sync_fast(id, now);
                    }
                }
                Timer::Channel(id, number) => {
                    if let Some(a) = self.allocs.get_mut(&id)
                        && let Some(ch) = a.channels.get(&number).copied()
                        && ch.expires <= now
                    {
                        a.channels.remove(&number);
                        a.peer_channels.remove(&ch.peer);
                        let until = now + self.config.channel_cooldown;
                        a.cooldown.insert(number, (ch.peer, until));
                        self.timers.push(until, Timer::Cooldown(id, number));
                        self.stats.channels = self.stats.channels.saturating_sub(1);
                        self.sync_fast(id, now);
                    }
                }
                Timer::Cooldown(id, number) => {
                    if let Some(a) = self.allocs.get_mut(&id)
                        && a.cooldown.get(&number).is_some_and(|&(_, e)| e <= now)
                    {
                        a.cooldown.remove(&number);
                    }
                }
                Timer::Reservation(token) => {
                    if self.reservations.get(&token).is_some_and(|&e| e <= now) {
                        self.reservations.remove(&token);
                        ports.release_reservation(token);
                    }
                }
            }
        }
    }

    /// Deletes allocation `id`: closes its relayed sockets and gives its quota back.
    pub(super) fn remove(&mut self, id: u64, ports: &mut impl RelayPorts) {
        let Some(mut a) = self.allocs.remove(&id) else {
            return;
        };
        self.snapshot_note(id);
        self.fwd.forget(id, &mut a);
        // The kernel stops relaying before the relayed port is given back.
        if let Some(sink) = self.shared.fast_rules() {
            self.fast.clear(&*sink, id, Some(&mut a), &mut self.stats);
            self.stats.fast_rules = self.fast.rules;
        }
        for r in a.relayed() {
            self.by_relay.remove(&r.handle);
            ports.close(r.handle);
        }
        if self.by_tuple.get(&a.tuple) == Some(&id) {
            self.by_tuple.remove(&a.tuple);
        }
        self.stats.allocations = self.stats.allocations.saturating_sub(1);
        self.stats.permissions = self
            .stats
            .permissions
            .saturating_sub(a.permissions.len() as u64);
        self.stats.channels = self.stats.channels.saturating_sub(a.channels.len() as u64);
        tracing::debug!(user = %a.username, client = %a.tuple.client, "allocation removed");
    }

    /// The stream of `tuple` closed (TCP/TLS): its allocation is deleted.
    pub fn on_client_closed(&mut self, tuple: &FiveTuple, ports: &mut impl RelayPorts) {
        if let Some(id) = self.by_tuple.get(tuple).copied() {
            self.remove(id, ports);
            self.stats.allocations_deleted += 1;
        }
    }

    /// The allocations of this server, as of `now`.
    pub fn allocations(&self, now: Instant) -> impl Iterator<Item = AllocationInfo> + '_ {
        self.allocs
            .iter()
            .map(move |(&id, a)| self.allocation_info(id, a, now))
    }

    /// Allocation `id` (`a`) as `relay allocations` shows it, as of `now`.
    pub(super) fn allocation_info(&self, id: u64, a: &Allocation, now: Instant) -> AllocationInfo {
        let traffic = self.fwd.traffic(id, a);
        AllocationInfo {
            user: a.username.clone(),
            client: a.tuple.client,
            server: a.tuple.server,
            transport: a.tuple.transport,
            relayed: a.relayed().map(|r| r.addr).collect(),
            expires_in_s: a.expires.saturating_duration_since(now).as_secs(),
            permissions: a
                .permissions
                .iter()
                .filter(|&(_, &e)| e > now)
                .map(|(ip, _)| *ip)
                .collect(),
            channels: a
                .channels
                .iter()
                .filter(|(_, c)| c.expires > now)
                .map(|(n, c)| (*n, c.peer))
                .collect(),
            packets_to_peer: traffic.packets_to_peer,
            bytes_to_peer: traffic.bytes_to_peer,
            packets_to_client: traffic.packets_to_client,
            bytes_to_client: traffic.bytes_to_client,
        }
    }

    /// Counters of this server.
    pub fn stats(&self) -> &TurnStats {
        &self.stats
    }

    /// Brings allocation `id`'s forwarding-index entries and kernel fast-path rules (if
    /// there is a fast path) in line with its state at `now`. Called after every change
    /// of the allocation.
    pub(super) fn sync_fast(&mut self, id: u64, now: Instant) {
        self.snapshot_note(id);
        if let Some(a) = self.allocs.get_mut(&id) {
            let (own, ports) = (&self.own, &self.config.relay_ports);
            self.fwd
                .sync(id, a, now, |peer| !own_service(own, ports, peer));
        }
        let Some(sink) = self.shared.fast_rules() else {
            return;
        };
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        let env = Env {
            policy: &self.shared.policy,
            own: &self.own,
            relay_ports: self.config.relay_ports.clone(),
            bandwidth: self.config.bandwidth_limit,
        };
        self.fast.sync(&*sink, id, a, &mut self.stats, &env, now);
        self.stats.fast_rules = self.fast.rules;
    }

    /// Folds the kernel fast path's per-rule counters into the allocations' and this
    /// server's counters, and removes the rules of allocations that used up their byte
    /// quota. The worker calls it periodically (about once a second); a no-op without a
    /// fast path.
    pub fn fold_fast_counters(&mut self, now: Instant) {
        let Some(sink) = self.shared.fast_rules() else {
            return;
        };
        // One range read for all rules, not one lookup per rule (see
        // `TurnMaps::stats_range`); if it fails, each fold reads its rules one by one.
        self.fast.read_counters(&*sink);
        for id in self.fast.ids() {
            let Some(a) = self.allocs.get_mut(&id) else {
                continue;
            };
            self.fast.fold(&*sink, id, a, &mut self.stats, now);
            if quota_exhausted(a) {
                tracing::debug!(user = %a.username, client = %a.tuple.client, "allocation byte quota used up; kernel rules removed");
                self.sync_fast(id, now);
            }
        }
        self.fast.forget_counters();
    }

    /// Re-checks every permission and channel against the peer policy (after a reload
    /// replaced it): the ones whose peer is now denied are removed, in userspace and in
    /// the kernel. Returns how many permissions were removed.
    pub fn recheck_policy(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        let ids: Vec<u64> = self.allocs.keys().copied().collect();
        for id in ids {
            let Some(a) = self.allocs.get_mut(&id) else {
                continue;
            };
            let policy = &self.shared.policy;
            let ports = self.config.relay_ports.clone();
            let own = &self.own;
            let denied: Vec<IpAddr> = a
                .permissions
                .keys()
                .copied()
                .filter(|ip| {
                    let verdict = if own.contains(ip) {
                        policy.check_socket(SocketAddr::new(*ip, *ports.start()), ports.clone())
                    } else {
                        policy.check(*ip)
                    };
                    verdict.is_err()
                })
                .collect();
            let dead_channels: Vec<(u16, SocketAddr)> = a
                .channels
                .iter()
                .filter(|(_, c)| {
                    denied.contains(&c.peer.ip())
                        || policy.check_socket(c.peer, ports.clone()).is_err()
                })
                .map(|(n, c)| (*n, c.peer))
                .collect();
            if denied.is_empty() && dead_channels.is_empty() {
                continue;
            }
            for ip in &denied {
                if a.permissions.remove(ip).is_some() {
                    removed += 1;
                    self.stats.permissions = self.stats.permissions.saturating_sub(1);
                }
            }
            for (n, peer) in &dead_channels {
                a.channels.remove(n);
                a.peer_channels.remove(peer);
                self.stats.channels = self.stats.channels.saturating_sub(1);
            }
            tracing::info!(
                user = %a.username,
                client = %a.tuple.client,
                permissions = denied.len(),
                channels = dead_channels.len(),
                "peer policy reloaded: permissions and channels to now-denied peers removed"
            );
            self.sync_fast(id, now);
        }
        removed
    }

    // ---- answers ----

    /// Writes a response to `m` into the scratch buffer and sends it. `auth` signs it
    /// (MESSAGE-INTEGRITY or -SHA256) and adds SOFTWARE; FINGERPRINT always ends it.
    pub(super) fn respond(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        class: Class,
        auth: Option<&Authenticated>,
        tx: &mut impl Transmit,
        body: impl FnOnce(&mut MessageBuilder<'_>, &Message<'_>) -> Result<(), StunError>,
    ) -> Option<usize> {
        let n = build(
            &mut self.scratch,
            m,
            class,
            auth,
            self.config.software.as_deref(),
            true,
            body,
        )
        .ok()?;
        tx.to_client(tuple, &self.scratch[..n]);
        Some(n)
    }

    /// An error response with just ERROR-CODE (signed when `auth`).
    pub(super) fn error(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        code: u16,
        auth: Option<&Authenticated>,
        tx: &mut impl Transmit,
    ) {
        self.error_with(tuple, m, code, auth, tx, |_, _| Ok(()));
    }

    /// An error response with ERROR-CODE then what `extra` adds.
    pub(super) fn error_with(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        code: u16,
        auth: Option<&Authenticated>,
        tx: &mut impl Transmit,
        extra: impl FnOnce(&mut MessageBuilder<'_>, &Message<'_>) -> Result<(), StunError>,
    ) {
        self.stats.error(code);
        self.respond(tuple, m, Class::ErrorResponse, auth, tx, |b, m| {
            b.add_error_code(code, reason(code))?;
            extra(b, m)
        });
    }

    /// Largest answer allowed to an unauthenticated request of `request_len` bytes, or
    /// `None` when the source has used up its rate of unauthenticated answers (charged
    /// here).
    fn unauth_limit(
        &mut self,
        tuple: &FiveTuple,
        request_len: usize,
        now: Instant,
    ) -> Option<usize> {
        if tuple.transport.is_stream() {
            return Some(usize::MAX);
        }
        if let Some(limiter) = &mut self.unauth_replies {
            let ip = tuple.client.ip();
            if !limiter.allowed(ip, now) {
                return None;
            }
            limiter.failed(ip, now);
        }
        Some(request_len.saturating_add(self.config.unauth_reply_allowance))
    }

    /// An unsigned error (400 before authentication), subject to the amplification rule.
    fn unauthenticated_error(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        code: u16,
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let Some(limit) = self.unauth_limit(tuple, m.as_bytes().len(), now) else {
            self.stats.amplification_drops += 1;
            return;
        };
        for compact in [false, true] {
            let built = build(
                &mut self.scratch,
                m,
                Class::ErrorResponse,
                None,
                None,
                !compact,
                |b, _| b.add_error_code(code, if compact { "" } else { reason(code) }),
            );
            if let Ok(n) = built
                && n <= limit
            {
                self.stats.error(code);
                tx.to_client(tuple, &self.scratch[..n]);
                return;
            }
        }
        self.stats.amplification_drops += 1;
    }

    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS, unsigned, subject to
    /// the amplification rule (a compact form without reason phrase and FINGERPRINT is
    /// tried before giving up).
    fn challenge(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        code: u16,
        now: Instant,
        wall: SystemTime,
        tx: &mut impl Transmit,
    ) {
        let creds = self.shared.credentials();
        let realm = creds.realm.as_str();
        let Some(limit) = self.unauth_limit(tuple, m.as_bytes().len(), now) else {
            self.stats.amplification_drops += 1;
            return;
        };
        let expiry = unix(wall) + self.config.nonce_lifetime.as_secs().max(1);
        let nonce = self.shared.nonce_key.issue(tuple.client.ip(), expiry);
        for compact in [false, true] {
            let built = build(
                &mut self.scratch,
                m,
                Class::ErrorResponse,
                None,
                None,
                !compact,
                |b, _| {
                    b.add_error_code(code, if compact { "" } else { reason(code) })?;
                    b.add(&Attribute::Realm(realm.as_bytes()))?;
                    b.add(&Attribute::Nonce(&nonce))?;
                    b.add(&Attribute::PasswordAlgorithms(&PASSWORD_ALGORITHMS_VALUE))
                },
            );
            if let Ok(n) = built
                && n <= limit
            {
                self.stats.error(code);
                tx.to_client(tuple, &self.scratch[..n]);
                return;
            }
        }
        self.stats.amplification_drops += 1;
    }

    /// Schedules the expiry of `a`'s allocation.
    pub(super) fn arm(&mut self, at: Instant, t: Timer) {
        self.timers.push(at, t);
    }

    /// Granted lifetime for a requested one (RFC 8656 §7.2/§7.3): the request capped to
    /// the maximum, never below the default (unless the maximum is).
    pub(super) fn lifetime(&self, requested: Option<u32>) -> Duration {
        let max = self.config.max_lifetime;
        let default = self.config.default_lifetime.min(max);
        match requested {
            None => default,
            Some(s) => Duration::from_secs(u64::from(s)).min(max).max(default),
        }
    }

    /// The relayed socket `r` of allocation `id` is known to the IO layer under `r.handle`.
    pub(super) fn index_relay(&mut self, id: u64, r: Relay) {
        self.by_relay.insert(r.handle, id);
    }

    /// `family`'s slot in `Allocation::relays`.
    pub(super) const fn slot(family: IpFamily) -> usize {
        family_index(family)
    }
}

/// Builds a response of `class` to `m` into `out`: `body`, then SOFTWARE and integrity
/// when `auth`, then FINGERPRINT when `auth` or `fingerprint`. Returns its length.
pub(super) fn build(
    out: &mut [u8],
    m: &Message<'_>,
    class: Class,
    auth: Option<&Authenticated>,
    software: Option<&str>,
    fingerprint: bool,
    body: impl FnOnce(&mut MessageBuilder<'_>, &Message<'_>) -> Result<(), StunError>,
) -> Result<usize, StunError> {
    let mut b = MessageBuilder::new(
        out,
        MessageType::new(m.method(), class),
        *m.transaction_id(),
    )?;
    body(&mut b, m)?;
    if let Some(a) = auth {
        if let Some(s) = software {
            b.add_software(s)?;
        }
        if a.sha256 {
            b.add_message_integrity_sha256(a.key.as_bytes())?;
        } else {
            b.add_message_integrity(a.key.as_bytes())?;
        }
    }
    if auth.is_some() || fingerprint {
        b.add_fingerprint()?;
    }
    Ok(b.finish())
}

/// Whether `m` has significant comprehension-required attributes that neither the STUN
/// codec nor TURN understands. Err when a known STUN attribute is malformed.
fn unknown_attributes(m: &Message<'_>) -> Result<bool, StunError> {
    let layout = m.layout()?;
    let mut any = false;
    for item in m.attributes() {
        let a = item?;
        if !layout.is_significant(&a) || !sattr::is_comprehension_required(a.attr_type) {
            continue;
        }
        if sattr::is_known(a.attr_type) {
            a.decode(m.transaction_id())?;
        } else if !attrs::is_known_turn(a.attr_type) {
            any = true;
        }
    }
    Ok(any)
}

fn add_unknown_list(b: &mut MessageBuilder<'_>, m: &Message<'_>) -> Result<(), StunError> {
    let layout = m.layout()?;
    b.add_unknown_attributes(
        m.attributes()
            .filter_map(Result::ok)
            .filter(|a| {
                layout.is_significant(a)
                    && sattr::is_comprehension_required(a.attr_type)
                    && !sattr::is_known(a.attr_type)
                    && !attrs::is_known_turn(a.attr_type)
            })
            .map(|a| a.attr_type),
    )
}

/// Whether `peer` is one of the relay's own addresses on a port outside the relay range:
/// the relay's own services, never relayed to or from (a permission for an own address
/// only opens its relay ports, i.e. other allocations of this relay).
#[inline]
fn own_service(
    own: &[IpAddr],
    relay_ports: &std::ops::RangeInclusive<u16>,
    peer: SocketAddr,
) -> bool {
    !own.is_empty() && own.contains(&peer.ip()) && !relay_ports.contains(&peer.port())
}

/// Writes a ChannelData frame (channel `number`, `data` of `len` bytes, padded to four
/// bytes for stream clients) at the start of `out`; returns its length. `out` is the
/// server's scratch buffer, large enough for any datagram.
#[inline]
fn write_channel_data(out: &mut [u8], number: u16, len: u16, data: &[u8], stream: bool) -> usize {
    let padded = if stream {
        data.len().next_multiple_of(4)
    } else {
        data.len()
    };
    out[0..2].copy_from_slice(&number.to_be_bytes());
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out[4..4 + data.len()].copy_from_slice(data);
    out[4 + data.len()..4 + padded].fill(0);
    4 + padded
}

/// A [`Transmit`] view that sends to peers with the Don't Fragment bit (one Send
/// indication's worth).
struct DontFragment<'a, T>(&'a mut T);

impl<T: Transmit> Transmit for DontFragment<'_, T> {
    fn to_client(&mut self, tuple: &FiveTuple, bytes: &[u8]) {
        self.0.to_client(tuple, bytes);
    }
    fn to_peer(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        self.0.to_peer_dont_fragment(relay, peer, bytes);
    }
}

/// The last step of relaying client data (ChannelData or a Send indication) to a
/// permitted `peer`: the allocation's relay socket for the peer's family, the bandwidth
/// limit, the counters, the datagram. Does not allocate.
#[inline]
fn forward_to_peer(
    a: &mut Allocation,
    stats: &mut TurnStats,
    peer: SocketAddr,
    data: &[u8],
    now: Instant,
    tx: &mut impl Transmit,
) {
    let Some(relay) = a.relay_for(IpFamily::of(peer.ip())) else {
        stats.dropped_no_permission += 1;
        return;
    };
    if !a.within_quota(data.len()) {
        stats.dropped_quota += 1;
        return;
    }
    if !a.within_bandwidth(data.len(), now) {
        stats.dropped_bandwidth += 1;
        return;
    }
    a.traffic.packets_to_peer += 1;
    a.traffic.bytes_to_peer += data.len() as u64;
    stats.packets_client_to_peer += 1;
    stats.bytes_client_to_peer += data.len() as u64;
    tx.to_peer(relay.handle, peer, data);
}
