//! The TURN requests, one method each (RFC 8656 §7 Allocate, §7.3 Refresh, §9
//! CreatePermission, §12 ChannelBind). They run after authentication and the
//! unknown-attribute check in [`super::server`], and the 437/441 checks for methods that
//! need an existing allocation. Allocation on this path is fine (it is not per packet).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::{Allocation, Channel, Relay, Traffic};
use super::attrs;
use super::auth::{Authenticated, user_part};
use super::server::{TurnServer, canonical, reason};
use super::timers::Timer;
use super::{FiveTuple, IpFamily, PortError, PortRequest, RelayPorts, Transmit};
use crate::policy::TokenBucket;
use crate::stun::attr::Attribute;
use crate::stun::{Class, Message, MessageBuilder, StunError};

/// The significant attributes of `m` as (type, value) pairs, in order.
fn significant<'a>(m: &Message<'a>) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
    let layout = m.layout().ok();
    m.attributes()
        .filter_map(Result::ok)
        .filter(move |a| layout.as_ref().is_some_and(|l| l.is_significant(a)))
        .map(|a| (a.attr_type, a.value))
}

fn xor_attr(
    b: &mut MessageBuilder<'_>,
    attr_type: u16,
    addr: SocketAddr,
    tid: &crate::stun::TransactionId,
) -> Result<(), StunError> {
    let mut v = [0u8; attrs::XOR_ADDRESS_MAX];
    let n = attrs::encode_xor_address(addr, tid, &mut v);
    b.add(&Attribute::Other {
        attr_type,
        value: &v[..n],
    })
}

fn open_error_code(e: PortError) -> u16 {
    match e {
        PortError::FamilyUnsupported => 440,
        PortError::Exhausted | PortError::UnknownToken | PortError::Io(_) => 508,
    }
}

impl TurnServer {
    fn family_configured(&self, f: IpFamily) -> bool {
        match f {
            IpFamily::V4 => self.config.relay_ipv4.is_some(),
            IpFamily::V6 => self.config.relay_ipv6.is_some(),
        }
    }

    /// Allocate (RFC 8656 §7.2).
    pub(super) fn allocate(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        auth: &Authenticated,
        now: Instant,
        ports: &mut impl RelayPorts,
        tx: &mut impl Transmit,
    ) {
        if self.by_tuple.contains_key(tuple) {
            return self.error(tuple, m, 437, Some(auth), tx);
        }
        let mut transport = None;
        let mut lifetime = None;
        let mut even = None;
        let mut token = None;
        let mut family = None;
        let mut additional = None;
        let mut dont_fragment = false;
        let mut malformed = false;
        for (t, v) in significant(m) {
            match t {
                attrs::REQUESTED_TRANSPORT => {
                    transport = attrs::decode_requested_transport(v);
                    malformed |= transport.is_none();
                }
                attrs::LIFETIME => {
                    lifetime = attrs::decode_u32(v);
                    malformed |= lifetime.is_none();
                }
                attrs::EVEN_PORT => {
                    even = attrs::decode_even_port(v);
                    malformed |= even.is_none();
                }
                attrs::RESERVATION_TOKEN => {
                    token = attrs::decode_reservation_token(v);
                    malformed |= token.is_none();
                }
                attrs::REQUESTED_ADDRESS_FAMILY => {
                    family = attrs::decode_family(v);
                    malformed |= family.is_none();
                }
                attrs::ADDITIONAL_ADDRESS_FAMILY => {
                    additional = attrs::decode_family(v);
                    malformed |= additional.is_none();
                }
                attrs::DONT_FRAGMENT => dont_fragment = true,
                _ => {}
            }
        }
        let Some(transport) = transport.filter(|_| !malformed) else {
            return self.error(tuple, m, 400, Some(auth), tx);
        };
        if transport != attrs::PROTO_UDP {
            return self.error(tuple, m, 442, Some(auth), tx);
        }
        // Mutually exclusive attributes (RFC 8656 §7.2).
        if (token.is_some() && (even.is_some() || family.is_some() || additional.is_some()))
            || (family.is_some() && additional.is_some())
            || (even.is_some() && additional.is_some())
        {
            return self.error(tuple, m, 400, Some(auth), tx);
        }
        let want_v6_too = match additional {
            None => false,
            Some(Ok(IpFamily::V6)) => true,
            Some(_) => return self.error(tuple, m, 400, Some(auth), tx),
        };
        let family = match family {
            None => IpFamily::V4,
            Some(Ok(f)) => f,
            Some(Err(())) => return self.error(tuple, m, 440, Some(auth), tx),
        };
        if token.is_none() && !self.family_configured(family) {
            return self.error(tuple, m, 440, Some(auth), tx);
        }
        let ticket = match self.shared.quotas.try_acquire(user_part(&auth.username)) {
            Ok(t) => t,
            Err(_) => return self.error(tuple, m, 486, Some(auth), tx),
        };
        let req = match (token, even) {
            (Some(t), _) => PortRequest::Reserved(t),
            (None, Some(r)) => PortRequest::Even { reserve_next: r },
            (None, None) => PortRequest::Any,
        };
        let (handle, addr, reserved) = match ports.open(family, req) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "relay port unavailable");
                return self.error(tuple, m, open_error_code(e), Some(auth), tx);
            }
        };
        if dont_fragment && !ports.set_dont_fragment(handle) {
            ports.close(handle);
            if let Some(r) = reserved {
                ports.release_reservation(r);
            }
            return self.error_with(tuple, m, 420, Some(auth), tx, |b, _| {
                b.add_unknown_attributes([attrs::DONT_FRAGMENT])
            });
        }
        let primary = Relay { handle, addr };
        let mut relays = [None, None];
        relays[Self::slot(IpFamily::of(addr.ip()))] = Some(primary);
        let mut address_error = None;
        if want_v6_too {
            if !self.family_configured(IpFamily::V6) {
                address_error = Some(440);
            } else {
                match ports.open(IpFamily::V6, PortRequest::Any) {
                    Ok((h, a, _)) => {
                        if dont_fragment && !ports.set_dont_fragment(h) {
                            ports.close(h);
                            address_error = Some(508);
                        } else {
                            relays[Self::slot(IpFamily::V6)] = Some(Relay { handle: h, addr: a });
                        }
                    }
                    Err(e) => address_error = Some(open_error_code(e)),
                }
            }
        }
        if let Some(t) = token {
            self.reservations.remove(&t);
        }
        if let Some(r) = reserved {
            let until = now + self.config.reservation_lifetime;
            self.reservations.insert(r, until);
            self.arm(until, Timer::Reservation(r));
        }
        let granted = self.lifetime(lifetime);
        let id = self.next_id;
        self.next_id += 1;
        let client = canonical(tuple.client);
        let secs = u32::try_from(granted.as_secs()).unwrap_or(u32::MAX);
        let relayed: Vec<Relay> = relays.iter().flatten().copied().collect();
        let n = super::server::build(
            &mut self.scratch,
            m,
            Class::SuccessResponse,
            Some(auth),
            self.config.software.as_deref(),
            true,
            |b, m| {
                for r in &relayed {
                    xor_attr(b, attrs::XOR_RELAYED_ADDRESS, r.addr, m.transaction_id())?;
                }
                b.add(&Attribute::Other {
                    attr_type: attrs::LIFETIME,
                    value: &secs.to_be_bytes(),
                })?;
                if let Some(r) = reserved {
                    b.add(&Attribute::Other {
                        attr_type: attrs::RESERVATION_TOKEN,
                        value: &r.to_be_bytes(),
                    })?;
                }
                b.add_xor_mapped_address(client)?;
                if let Some(code) = address_error {
                    let phrase = reason(code).as_bytes();
                    let mut v = [0u8; 64];
                    v[0] = attrs::family_code(IpFamily::V6);
                    v[2] = (code / 100) as u8;
                    v[3] = (code % 100) as u8;
                    v[4..4 + phrase.len()].copy_from_slice(phrase);
                    b.add(&Attribute::Other {
                        attr_type: attrs::ADDRESS_ERROR_CODE,
                        value: &v[..4 + phrase.len()],
                    })?;
                }
                Ok(())
            },
        );
        let Ok(n) = n else {
            for r in &relayed {
                ports.close(r.handle);
            }
            return self.error(tuple, m, 500, Some(auth), tx);
        };
        let response = self.scratch[..n].to_vec();
        tx.to_client(tuple, &response);
        let bandwidth = self.config.bandwidth_limit;
        let expires = now + granted;
        self.allocs.insert(
            id,
            Allocation {
                tuple: *tuple,
                username: auth.username.clone(),
                _ticket: ticket,
                relays,
                expires,
                txn: *m.transaction_id(),
                response,
                permissions: super::Map::default(),
                channels: super::Map::default(),
                peer_channels: super::Map::default(),
                cooldown: HashMap::new(),
                bucket: (bandwidth > 0)
                    .then(|| TokenBucket::new(bandwidth, bandwidth.max(65_536), now)),
                traffic: Traffic::default(),
                dont_fragment,
                byte_quota: self.config.allocation_byte_quota,
            },
        );
        self.by_tuple.insert(*tuple, id);
        for r in relayed {
            self.index_relay(id, r);
        }
        self.arm(expires, Timer::Allocation(id));
        self.sync_fast(id, now);
        self.stats.allocations += 1;
        self.stats.allocations_created += 1;
        self.stats.requests_ok += 1;
        tracing::debug!(user = %auth.username, client = %tuple.client, relay = %addr, "allocation created");
    }

    /// Refresh (RFC 8656 §7.3): LIFETIME 0 deletes.
    pub(super) fn refresh(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        auth: &Authenticated,
        now: Instant,
        ports: &mut impl RelayPorts,
        tx: &mut impl Transmit,
    ) {
        let Some(id) = self.by_tuple.get(tuple).copied() else {
            return self.error(tuple, m, 437, Some(auth), tx);
        };
        let mut lifetime = None;
        let mut family = None;
        let mut malformed = false;
        for (t, v) in significant(m) {
            match t {
                attrs::LIFETIME => {
                    lifetime = attrs::decode_u32(v);
                    malformed |= lifetime.is_none();
                }
                attrs::REQUESTED_ADDRESS_FAMILY => {
                    family = attrs::decode_family(v);
                    malformed |= family.is_none();
                }
                _ => {}
            }
        }
        if malformed {
            return self.error(tuple, m, 400, Some(auth), tx);
        }
        let Some(a) = self.allocs.get_mut(&id) else {
            return self.error(tuple, m, 437, Some(auth), tx);
        };
        let family = match family {
            None => None,
            Some(Ok(f)) if a.relay_for(f).is_some() => Some(f),
            Some(_) => return self.error(tuple, m, 443, Some(auth), tx),
        };
        let granted = if lifetime == Some(0) {
            let dual = a.relayed().count() > 1;
            match family {
                Some(f) if dual => {
                    // Delete only that family's relayed address (RFC 8656 §7.3).
                    let taken = a.relays[Self::slot(f)].take();
                    let left = a.expires.saturating_duration_since(now);
                    if let Some(r) = taken {
                        self.by_relay.remove(&r.handle);
                        // Rules naming that relayed address go before its port does.
                        self.sync_fast(id, now);
                        ports.close(r.handle);
                    }
                    Some(left)
                }
                _ => {
                    self.remove(id, ports);
                    self.stats.allocations_deleted += 1;
                    None
                }
            }
        } else {
            let d = self.lifetime(lifetime);
            if let Some(a) = self.allocs.get_mut(&id) {
                a.expires = now + d;
            }
            self.arm(now + d, Timer::Allocation(id));
            self.sync_fast(id, now);
            Some(d)
        };
        let secs = granted.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        self.stats.requests_ok += 1;
        self.respond(tuple, m, Class::SuccessResponse, Some(auth), tx, |b, _| {
            b.add(&Attribute::Other {
                attr_type: attrs::LIFETIME,
                value: &secs.to_be_bytes(),
            })
        });
    }

    /// Checks a peer address for an allocation: 443 (no relay of its family), 403
    /// (policy). Returns the error code.
    /// `with_port`: ChannelBind names one transport address, checked with its port (an
    /// own address is allowed on the relay port range only); CreatePermission installs a
    /// permission per IP, so an own address passes here and its ports are checked on
    /// every datagram instead (see `own_service` in the server).
    fn check_peer(&self, id: u64, peer: SocketAddr, with_port: bool) -> Result<(), u16> {
        let Some(a) = self.allocs.get(&id) else {
            return Err(437);
        };
        if a.relay_for(IpFamily::of(peer.ip())).is_none() {
            return Err(443);
        }
        let verdict = if with_port {
            self.shared
                .policy
                .check_socket(peer, self.config.relay_ports.clone())
        } else if self.own.contains(&peer.ip()) {
            self.shared.policy.check_socket(
                SocketAddr::new(peer.ip(), *self.config.relay_ports.start()),
                self.config.relay_ports.clone(),
            )
        } else {
            self.shared.policy.check(peer.ip())
        };
        if let Err(d) = verdict {
            tracing::debug!(peer = %peer, reason = d.reason(), "peer denied by policy");
            return Err(403);
        }
        Ok(())
    }

    /// CreatePermission (RFC 8656 §9): every XOR-PEER-ADDRESS is checked before any is
    /// installed, so a refused request changes nothing.
    pub(super) fn create_permission(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        auth: &Authenticated,
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let Some(id) = self.by_tuple.get(tuple).copied() else {
            return self.error(tuple, m, 437, Some(auth), tx);
        };
        let mut peers = Vec::new();
        for (t, v) in significant(m) {
            if t == attrs::XOR_PEER_ADDRESS {
                match attrs::decode_xor_address(v, m.transaction_id()) {
                    Some(p) => peers.push(canonical(p)),
                    None => return self.error(tuple, m, 400, Some(auth), tx),
                }
            }
        }
        if peers.is_empty() {
            return self.error(tuple, m, 400, Some(auth), tx);
        }
        for p in &peers {
            if let Err(code) = self.check_peer(id, *p, false) {
                return self.error(tuple, m, code, Some(auth), tx);
            }
        }
        let max = self.config.max_permissions;
        let lifetime = self.config.permission_lifetime;
        let Some(a) = self.allocs.get_mut(&id) else {
            return self.error(tuple, m, 437, Some(auth), tx);
        };
        let mut fresh: Vec<_> = peers
            .iter()
            .map(|p| p.ip())
            .filter(|ip| !a.permissions.contains_key(ip))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if a.permissions.len() + fresh.len() > max {
            return self.error(tuple, m, 508, Some(auth), tx);
        }
        let until = now + lifetime;
        for p in &peers {
            if a.permissions.insert(p.ip(), until).is_none() {
                self.stats.permissions += 1;
            }
        }
        for p in &peers {
            self.timers.push(until, Timer::Permission(id, p.ip()));
        }
        self.sync_fast(id, now);
        self.stats.requests_ok += 1;
        self.respond(tuple, m, Class::SuccessResponse, Some(auth), tx, |_, _| {
            Ok(())
        });
    }

    /// ChannelBind (RFC 8656 §12.2): binds or refreshes the channel and installs or
    /// refreshes the peer's permission.
    pub(super) fn channel_bind(
        &mut self,
        tuple: &FiveTuple,
        m: &Message<'_>,
        auth: &Authenticated,
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let Some(id) = self.by_tuple.get(tuple).copied() else {
            return self.error(tuple, m, 437, Some(auth), tx);
        };
        let mut number = None;
        let mut peer = None;
        let mut malformed = false;
        for (t, v) in significant(m) {
            match t {
                attrs::CHANNEL_NUMBER if number.is_none() => {
                    number = attrs::decode_channel_number(v);
                    malformed |= number.is_none();
                }
                attrs::XOR_PEER_ADDRESS if peer.is_none() => {
                    peer = attrs::decode_xor_address(v, m.transaction_id()).map(canonical);
                    malformed |= peer.is_none();
                }
                _ => {}
            }
        }
        let (Some(number), Some(peer), false) = (number, peer, malformed) else {
            return self.error(tuple, m, 400, Some(auth), tx);
        };
        let range = if self.config.legacy_channel_range {
            attrs::LEGACY_CHANNEL_RANGE
        } else {
            attrs::CHANNEL_RANGE
        };
        if !range.contains(&number) {
            return self.error(tuple, m, 400, Some(auth), tx);
        }
        if let Err(code) = self.check_peer(id, peer, true) {
            return self.error(tuple, m, code, Some(auth), tx);
        }
        let (max_perm, max_chan) = (self.config.max_permissions, self.config.max_channels);
        let (perm_life, chan_life) = (
            self.config.permission_lifetime,
            self.config.channel_lifetime,
        );
        let Some(a) = self.allocs.get_mut(&id) else {
            return self.error(tuple, m, 437, Some(auth), tx);
        };
        let conflict = a.channels.get(&number).is_some_and(|c| c.peer != peer)
            || a.peer_channels.get(&peer).is_some_and(|&n| n != number)
            || a.cooldown.get(&number).is_some_and(|&(p, _)| p != peer)
            || a.cooldown
                .iter()
                .any(|(&n, &(p, _))| p == peer && n != number);
        if conflict {
            return self.error(tuple, m, 400, Some(auth), tx);
        }
        let new_channel = !a.channels.contains_key(&number);
        let new_permission = !a.permissions.contains_key(&peer.ip());
        if (new_channel && a.channels.len() >= max_chan)
            || (new_permission && a.permissions.len() >= max_perm)
        {
            return self.error(tuple, m, 508, Some(auth), tx);
        }
        let chan_until = now + chan_life;
        let perm_until = now + perm_life;
        a.channels.insert(
            number,
            Channel {
                peer,
                expires: chan_until,
            },
        );
        a.peer_channels.insert(peer, number);
        a.cooldown.remove(&number);
        a.permissions.insert(peer.ip(), perm_until);
        if new_channel {
            self.stats.channels += 1;
        }
        if new_permission {
            self.stats.permissions += 1;
        }
        self.timers.push(chan_until, Timer::Channel(id, number));
        self.timers
            .push(perm_until, Timer::Permission(id, peer.ip()));
        self.sync_fast(id, now);
        self.stats.requests_ok += 1;
        self.respond(tuple, m, Class::SuccessResponse, Some(auth), tx, |_, _| {
            Ok(())
        });
    }
}
