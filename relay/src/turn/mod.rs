//! TURN server (RFC 8656), sans-IO: client messages, peer datagrams and time in; answers,
//! relayed datagrams and relay-socket requests out.
//!
//! Why sans-IO: the same state machine is driven by the io_uring workers, the portable
//! fallback and the unit tests (fake sockets, manual clock), and the kernel fast path of
//! the next issue mirrors what it decides. Nothing here reads a clock or touches a socket:
//! time comes in as arguments, relayed sockets are opened through [`RelayPorts`] and bytes
//! leave through [`Transmit`], both implemented by the IO layer.
//!
//! One [`TurnServer`] per worker owns the allocations whose client 5-tuples land on that
//! worker. What the workers share lives in [`Shared`]: credentials (swapped on reload), the
//! peer policy and the allocation quotas.
//!
//! Layout:
//! - [`server`]: the [`TurnServer`] and request dispatch;
//! - `allocation`: allocations, permissions and channels;
//! - `handlers`: one function per method (Allocate, Refresh, CreatePermission, ChannelBind,
//!   Send, Binding);
//! - [`auth`] and [`nonce`]: long-term credentials, REST credentials, stateless nonces;
//! - [`attrs`]: TURN attribute codes and value decoding;
//! - [`framing`]: message boundaries on stream transports;
//! - [`stats`]: plain counters;
//! - [`snapshot`]: the state file a restarted daemon restores UDP allocations from;
//! - `forward`: the relay path's one-lookup forwarding index, derived from the
//!   allocations;
//! - `timers`: the expiry heap.
//!
//! Amplification: an answer to an unauthenticated UDP request (the 401/438 challenge, a
//! 400 before authentication) is never larger than the request plus
//! [`TurnConfig::unauth_reply_allowance`] (default 0, i.e. never larger than the request).
//! The challenge is tried in full, then compact (no reason phrase, no FINGERPRINT); if it
//! still does not fit it is not sent and [`TurnStats::amplification_drops`] counts it.
//! On top of the per-answer bound, [`TurnConfig::unauth_replies_per_sec`] caps the rate of
//! such answers per source IP, which bounds the total a spoofed flood can reflect at one
//! victim.
//! Beware: a minimal first Allocate (REQUESTED-TRANSPORT only, 28 bytes) cannot be
//! challenged within its own size, so clients that send one (browsers may) need an
//! allowance; about 100 bytes covers a short realm. TCP and TLS are exempt.
//!
//! The relay hot path (ChannelData and Send/Data relaying) never allocates: it looks up
//! hash maps that were sized when the allocation, permission or channel was created, and
//! builds outgoing Data indications / ChannelData frames in one scratch buffer owned by the
//! server.

mod allocation;
pub mod attrs;
pub mod auth;
pub mod fast;
mod forward;
pub mod framing;
mod handlers;
mod id_cursor;
pub mod kick_job;
pub mod listing_job;
pub mod nonce;
pub mod server;
mod slot_map;
pub mod snapshot;
pub mod snapshot_job;
pub mod stats;
mod timers;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fast_tests;

#[cfg(test)]
mod forward_tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::Serialize;

/// The hash maps of the TURN state that every relayed datagram looks up (allocations by
/// 5-tuple and by relay, channels, permissions). foldhash instead of the standard
/// SipHash: those lookups were a fifth of the AF_XDP path's CPU time at 10 000
/// allocations, and foldhash's per-map random seed still keeps an attacker who chooses
/// the 5-tuples from predicting collisions.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use auth::Credentials;
pub use fast::{FastRules, MonoClock, NoFastRules};
pub use server::TurnServer;
pub use stats::TurnStats;

use crate::policy::{PeerPolicy, Quotas};

/// Transport between the client and the server (the relayed transport is always UDP).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP datagrams: one STUN message or ChannelData frame per datagram.
    Udp,
    /// TCP stream: framed with [`framing::frame_len`], ChannelData padded to 4 bytes.
    Tcp,
    /// TLS over TCP: as [`Transport::Tcp`].
    Tls,
}

impl Transport {
    /// Whether messages travel in a byte stream (TCP, TLS): ChannelData toward the client
    /// is padded to a multiple of 4 bytes (RFC 8656 §12.5).
    pub const fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// Lower-case name, for logs and listings.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// The client's 5-tuple as the server sees it: client address, server (listen) address and
/// transport. An allocation is keyed by it (RFC 8656 §2.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FiveTuple {
    /// The client's address (as seen by the server: after NAT).
    pub client: SocketAddr,
    /// The server address the client talks to.
    pub server: SocketAddr,
    /// UDP, TCP or TLS.
    pub transport: Transport,
}

/// Opaque identifier of one relayed socket, chosen by the IO layer.
pub type RelayHandle = u32;

/// Address family of a relayed address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub enum IpFamily {
    /// IPv4 (REQUESTED-ADDRESS-FAMILY 0x01).
    V4,
    /// IPv6 (REQUESTED-ADDRESS-FAMILY 0x02).
    V6,
}

impl IpFamily {
    /// The family of `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip.to_canonical() {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// Which port [`RelayPorts::open`] should bind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PortRequest {
    /// Any free port in the configured range.
    Any,
    /// An even port (EVEN-PORT). With `reserve_next`, the next higher port is reserved too
    /// and its token returned (RFC 8656 §7.2; the core expires unused reservations after
    /// [`TurnConfig::reservation_lifetime`] through [`RelayPorts::release_reservation`]).
    Even {
        /// Reserve port + 1 for a later RESERVATION-TOKEN allocation.
        reserve_next: bool,
    },
    /// The port reserved earlier under this RESERVATION-TOKEN.
    Reserved(u64),
}

/// Why a relayed socket could not be opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PortError {
    /// No relay address of that family is configured (→ 440).
    #[error("no relay address of this address family is configured")]
    FamilyUnsupported,
    /// Every port of the range is in use (→ 508).
    #[error("no free port in the relay port range")]
    Exhausted,
    /// The reservation token is unknown or expired (→ 508, as RFC 8656 §7.2 says).
    #[error("unknown or expired reservation token")]
    UnknownToken,
    /// The socket could not be created or bound (→ 508).
    #[error("relay socket failed: {0:?}")]
    Io(std::io::ErrorKind),
}

/// Relayed sockets, implemented by the IO layer (a fake in tests).
pub trait RelayPorts {
    /// Binds a relayed UDP socket of `family` on the relay address of that family, within
    /// the configured port range, and starts receiving on it (datagrams go to
    /// [`TurnServer::on_peer`] with the returned handle). Returns the handle, the relayed
    /// address and, for `PortRequest::Even { reserve_next: true }`, the reservation token.
    /// For `PortRequest::Reserved`, `family` is only a hint (IPv4): the reserved port's
    /// own family wins. Tokens are global to the process (a token obtained through one
    /// worker may be claimed through another).
    fn open(
        &mut self,
        family: IpFamily,
        req: PortRequest,
    ) -> Result<(RelayHandle, SocketAddr, Option<u64>), PortError>;

    /// Closes a relayed socket opened by [`RelayPorts::open`]. The handle is not used again.
    fn close(&mut self, relay: RelayHandle);

    /// Gives back a port reserved by `PortRequest::Even { reserve_next: true }` that no
    /// allocation claimed in time. Releasing a token that was already claimed or
    /// released must be a no-op (the core tracks expiry per worker).
    fn release_reservation(&mut self, token: u64);

    /// Asks that datagrams sent from `relay` carry the IP Don't Fragment bit (DONT-FRAGMENT
    /// in Allocate; e.g. IP_MTU_DISCOVER = IP_PMTUDISC_DO on the socket). Return false when
    /// that is not possible: the Allocate then fails with 420 listing DONT-FRAGMENT, as
    /// RFC 8656 §7.2 asks.
    fn set_dont_fragment(&mut self, relay: RelayHandle) -> bool;
}

/// Outgoing bytes, implemented by the IO layer. The bytes are copied before return.
pub trait Transmit {
    /// Sends `bytes` to the client of `tuple` (on the listen socket, or the stream).
    fn to_client(&mut self, tuple: &FiveTuple, bytes: &[u8]);
    /// Sends `bytes` from the relayed socket `relay` to `peer`.
    fn to_peer(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]);
    /// Like [`Transmit::to_peer`], with the IP Don't Fragment bit set on this one datagram
    /// (a Send indication carrying DONT-FRAGMENT, RFC 8656 §11.2). The default is only
    /// right for IO layers whose relay sockets always set DF; the workers override it.
    fn to_peer_dont_fragment(&mut self, relay: RelayHandle, peer: SocketAddr, bytes: &[u8]) {
        self.to_peer(relay, peer, bytes);
    }
}

/// TURN settings (plain data). The realm lives in [`Credentials`], which can be swapped on
/// reload; everything here is fixed for the life of a [`TurnServer`].
#[derive(Clone, Debug)]
pub struct TurnConfig {
    /// SOFTWARE attribute in answers to authenticated requests (none if `None`).
    pub software: Option<String>,
    /// Allocation lifetime when the client asks for none (RFC 8656: 600 s).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted (requested lifetimes are capped to it).
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656: 300 s, not negotiable).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// How long a channel number (and its peer) stay unusable for another binding after
    /// the binding expired (RFC 8656 §12: 5 minutes).
    pub channel_cooldown: Duration,
    /// How long a nonce stays valid; afterwards requests get 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// How long a reserved port (EVEN-PORT R bit) waits for its RESERVATION-TOKEN.
    pub reservation_lifetime: Duration,
    /// Most permissions (peer IPs) per allocation; more → 508 Insufficient Capacity.
    pub max_permissions: usize,
    /// Most channels per allocation; more → 508.
    pub max_channels: usize,
    /// Per-allocation relay bandwidth limit in bytes per second, both directions together
    /// (0 = none). Excess datagrams are dropped and counted.
    pub bandwidth_limit: u64,
    /// Relay address for IPv4 allocations (`None`: IPv4 requests get 440).
    pub relay_ipv4: Option<Ipv4Addr>,
    /// Relay address for IPv6 allocations (`None`: IPv6 requests get 440).
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Failed authentications allowed per source IP per second (token refill rate).
    pub auth_failures_per_sec: u32,
    /// Burst of failed authentications per source IP before requests are dropped.
    pub auth_failure_burst: u32,
    /// Most source IPs tracked by the failed-authentication limiter (bounded memory;
    /// the stalest entry is evicted when full).
    pub auth_limiter_entries: usize,
    /// Bytes by which an answer to an unauthenticated UDP request may exceed the request.
    /// 0 (the default) means an unauthenticated request never gets a larger answer: the
    /// 401/438 challenge is built as small as possible and dropped (counted in
    /// [`TurnStats::amplification_drops`]) when it would still be larger than the request.
    /// Stream transports (TCP, TLS) are exempt: their handshake proves the source address.
    pub unauth_reply_allowance: usize,
    /// Answers to unauthenticated UDP requests (challenges, 400s) per second per source
    /// IP (0 = unlimited). Bounds what a spoofed flood can reflect at one victim address,
    /// whatever the per-answer gain; excess requests get no answer (counted in
    /// [`TurnStats::amplification_drops`]). Stream transports are exempt.
    pub unauth_replies_per_sec: u32,
    /// Burst of such answers per source IP.
    pub unauth_reply_burst: u32,
    /// Accept ChannelBind numbers 0x5000–0x7FFF as RFC 5766 did (RFC 8656 allows only
    /// 0x4000–0x4FFF). Off by default; for older clients such as `turnutils_uclient`.
    pub legacy_channel_range: bool,
    /// The relayed port range. A peer on one of the relay's own addresses is reachable
    /// on these ports only (another allocation of this relay: two users of one relay
    /// calling each other); its other ports (the relay's own services) never are.
    pub relay_ports: std::ops::RangeInclusive<u16>,
    /// Bytes one allocation may relay in total, both directions, userspace and kernel
    /// together (0 = unlimited). Past it, relayed data is dropped (counted in
    /// [`TurnStats::dropped_quota`]) and the allocation's kernel rules are removed.
    pub allocation_byte_quota: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            software: None,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            channel_cooldown: Duration::from_secs(300),
            nonce_lifetime: Duration::from_secs(600),
            reservation_lifetime: Duration::from_secs(30),
            max_permissions: 64,
            max_channels: 64,
            bandwidth_limit: 0,
            relay_ipv4: None,
            relay_ipv6: None,
            auth_failures_per_sec: 2,
            auth_failure_burst: 20,
            auth_limiter_entries: 4096,
            unauth_reply_allowance: 0,
            unauth_replies_per_sec: 0,
            unauth_reply_burst: 1,
            legacy_channel_range: false,
            relay_ports: 49152..=65535,
            allocation_byte_quota: 0,
        }
    }
}

/// What all workers share: credentials (swappable on reload), the peer policy, the
/// allocation quotas and the nonce key.
pub struct Shared {
    /// Current credentials; replace the `Arc` to reload (new requests see the new ones,
    /// existing allocations stay).
    pub credentials: RwLock<Arc<Credentials>>,
    /// Which peer addresses may be relayed to (403 otherwise).
    pub policy: Arc<PeerPolicy>,
    /// Per-user and total allocation quotas (486 when reached).
    pub quotas: Arc<Quotas>,
    /// Per-process random key of the stateless nonces (shared so that a nonce issued by
    /// one worker is accepted by another).
    pub nonce_key: nonce::NonceKey,
    /// The kernel fast path's rule sink, set once when it is running (empty: no rules
    /// are computed, everything is relayed in userspace).
    fast: OnceLock<Arc<dyn FastRules>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Shares `credentials`, `policy` and `quotas`, with a fresh random nonce key.
    pub fn new(credentials: Credentials, policy: Arc<PeerPolicy>, quotas: Arc<Quotas>) -> Self {
        Self::with_nonce_key(credentials, policy, quotas, nonce::NonceKey::random())
    }

    /// As [`Shared::new`] with a given nonce key (tests).
    pub fn with_nonce_key(
        credentials: Credentials,
        policy: Arc<PeerPolicy>,
        quotas: Arc<Quotas>,
        nonce_key: nonce::NonceKey,
    ) -> Self {
        Shared {
            credentials: RwLock::new(Arc::new(credentials)),
            policy,
            quotas,
            nonce_key,
            fast: OnceLock::new(),
        }
    }

    /// Hands the kernel fast path's rule sink to every worker's server: from now on rule
    /// changes are installed (an allocation's rules appear at its next change). False if
    /// one was set already (it stays).
    pub fn set_fast_rules(&self, rules: Arc<dyn FastRules>) -> bool {
        self.fast.set(rules).is_ok()
    }

    /// The kernel fast path's rule sink, if one is running.
    pub fn fast_rules(&self) -> Option<Arc<dyn FastRules>> {
        self.fast.get().cloned()
    }

    /// The current credentials.
    pub fn credentials(&self) -> Arc<Credentials> {
        match self.credentials.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the credentials (reload). Existing allocations keep their key until their
    /// next request, which is checked against the new credentials.
    pub fn set_credentials(&self, credentials: Credentials) {
        let new = Arc::new(credentials);
        match self.credentials.write() {
            Ok(mut c) => *c = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// Which allocations [`TurnServer::kick`] removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KickTarget {
    /// Every allocation of this user (for REST credentials: the part after `expiry:`,
    /// and the full username too).
    User(String),
    /// The allocation(s) of this client address (any transport).
    Client(SocketAddr),
    /// The allocation that owns this relayed address.
    Relay(SocketAddr),
}

/// One allocation, for `relay allocations`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AllocationInfo {
    /// The username it authenticated with.
    pub user: String,
    /// Client address.
    pub client: SocketAddr,
    /// Server (listen) address.
    pub server: SocketAddr,
    /// Client transport.
    pub transport: Transport,
    /// Relayed address(es): one, or two for a dual-stack allocation.
    pub relayed: Vec<SocketAddr>,
    /// Seconds until it expires unless refreshed.
    pub expires_in_s: u64,
    /// Peer IPs with a permission.
    pub permissions: Vec<IpAddr>,
    /// Bound channels: number and peer.
    pub channels: Vec<(u16, SocketAddr)>,
    /// Datagrams relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
}
