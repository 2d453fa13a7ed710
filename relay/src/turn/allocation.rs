//! One allocation (RFC 8656 §2.2, §5): its relayed address(es), permissions (per peer IP,
//! port ignored), channel bindings (both directions looked up in O(1)), the channel
//! numbers in their post-expiry quarantine, its quota ticket and bandwidth bucket.
//!
//! The maps are filled on CreatePermission/ChannelBind (allocation is fine there) and only
//! read on the relay path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{FiveTuple, IpFamily, RelayHandle};
use crate::policy::{QuotaTicket, TokenBucket};
use crate::stun::TransactionId;

/// One relayed socket of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Relay {
    /// IO layer handle.
    pub handle: RelayHandle,
    /// Relayed transport address.
    pub addr: SocketAddr,
}

/// A channel binding.
#[derive(Clone, Copy, Debug)]
pub(super) struct Channel {
    /// The peer (canonical address).
    pub peer: SocketAddr,
    /// When it expires unless refreshed.
    pub expires: Instant,
}

/// Relay counters of one allocation.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Traffic {
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

/// An allocation.
#[derive(Debug)]
pub(super) struct Allocation {
    pub tuple: FiveTuple,
    pub username: String,
    /// Released (quota given back) when the allocation is dropped.
    pub _ticket: QuotaTicket,
    /// Relayed sockets: index 0 IPv4, 1 IPv6.
    pub relays: [Option<Relay>; 2],
    pub expires: Instant,
    /// Transaction id of the Allocate that created it, and the success answer sent, so a
    /// retransmitted Allocate gets the same answer (RFC 8656 §7.2, RFC 8489 §6.3.1).
    pub txn: TransactionId,
    pub response: Vec<u8>,
    /// Peer IP (canonical) → permission expiry.
    pub permissions: super::Map<IpAddr, Instant>,
    pub channels: super::Map<u16, Channel>,
    pub peer_channels: super::Map<SocketAddr, u16>,
    /// Expired channel numbers that may only be rebound to the same peer until the instant.
    pub cooldown: HashMap<u16, (SocketAddr, Instant)>,
    pub bucket: Option<TokenBucket>,
    pub traffic: Traffic,
    /// Relayed datagrams to peers carry DF (DONT-FRAGMENT in Allocate).
    pub dont_fragment: bool,
    /// Bytes it may relay in total (0 = unlimited).
    pub byte_quota: u64,
}

pub(super) const fn family_index(f: IpFamily) -> usize {
    match f {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

impl Allocation {
    /// The relayed socket for peers of `family`.
    pub fn relay_for(&self, family: IpFamily) -> Option<Relay> {
        self.relays[family_index(family)]
    }

    /// Whether datagrams to/from `ip` are permitted at `now`.
    #[inline]
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|&e| e > now)
    }

    /// Whether the bandwidth limit lets `bytes` through at `now`.
    #[inline]
    pub fn within_bandwidth(&mut self, bytes: usize, now: Instant) -> bool {
        match &mut self.bucket {
            Some(b) => b.allow(bytes, now),
            None => true,
        }
    }

    /// Charges `bytes` the kernel relayed for this allocation to its bandwidth bucket, so
    /// that the kernel's and userspace's shares together stay within the limit.
    #[inline]
    pub fn charge_bandwidth(&mut self, bytes: u64, now: Instant) {
        if let Some(b) = &mut self.bucket {
            b.charge(bytes, now);
        }
    }

    /// Whether relaying `bytes` more stays within the byte quota.
    #[inline]
    pub fn within_quota(&self, bytes: usize) -> bool {
        self.byte_quota == 0
            || self
                .traffic
                .bytes_to_peer
                .saturating_add(self.traffic.bytes_to_client)
                .saturating_add(bytes as u64)
                <= self.byte_quota
    }

    /// Relayed addresses.
    pub fn relayed(&self) -> impl Iterator<Item = Relay> + '_ {
        self.relays.iter().flatten().copied()
    }
}
