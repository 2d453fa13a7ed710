//! TURN state snapshot: the UDP allocations of a running daemon, written to a state file
//! so that a restarted daemon can take them over (issue 4, "restarts lose nothing").
//!
//! Why: the kernel keeps relaying established channels across a restart (pinned maps),
//! but without the allocations themselves the new daemon answers the client's next
//! Refresh with 437, the kernel rules run unmanaged until their deadlines, and their relay
//! ports and rule indices could be handed out again. The snapshot carries what a new
//! process needs to continue exactly where the old one stopped: per allocation its
//! 5-tuple, user, relayed address(es) and exact port(s), deadlines (allocation,
//! permissions, channels), counters, quota settings and the kernel rule indices it owns
//! (`alloc_idx`, `stats_idx` per rule, with the counter values already folded).
//!
//! Deadlines are CLOCK_MONOTONIC nanoseconds (the clock of the kernel rules, converted
//! with [`MonoClock`]): that clock survives a restart of the process, not of the machine,
//! so a snapshot taken under another boot id (`/proc/sys/kernel/random/boot_id`) is
//! refused.
//!
//! Only UDP allocations are saved: a TCP/TLS allocation lives and dies with its
//! connection, which a restart closes.
//!
//! Credentials: no key is stored. Every request, a restored allocation's too, is
//! authenticated against the daemon's current credentials (the allocation only records
//! the username it was created with, and requests by another user get 441), so the
//! long-term key is not needed to verify the next Refresh. The file still names users and
//! their addresses: it is created mode 0600 and should stay readable by the relay only.
//!
//! The file is written atomically (temporary file, fsync, rename), so a crash while
//! writing leaves the previous snapshot in place.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use super::allocation::{Allocation, Channel, Relay, Traffic, family_index};
use super::fast::Env;
use super::timers::Timer;
use super::{FiveTuple, IpFamily, MonoClock, RelayHandle, Transport, TurnServer};
use crate::policy::{QuotaTicket, TokenBucket};
use crate::stun::TransactionId;

/// The snapshot format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Where the kernel says which boot this is.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a snapshot (corrupted, truncated, or not JSON).
    #[error("{path} is not a valid TURN state snapshot: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The file was written by a build with another format.
    #[error("{path} has snapshot format version {found}; this relay reads version {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// The file was written before the machine rebooted: its deadlines (CLOCK_MONOTONIC)
    /// mean nothing now and its kernel rules are gone.
    #[error(
        "{path} was written under another boot (boot id {found}, now {now}): its \
         allocations did not survive the reboot"
    )]
    OtherBoot {
        /// The file.
        path: PathBuf,
        /// Boot id in the file.
        found: String,
        /// Current boot id.
        now: String,
    },
}

/// A counter snapshot of one allocation (what `relay allocations` shows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTraffic {
    /// Datagrams relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
}

/// A permission: peer IP and deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPermission {
    /// Peer IP (canonical).
    pub peer: IpAddr,
    /// Deadline, CLOCK_MONOTONIC ns.
    pub expires_ns: u64,
}

/// A channel binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedChannel {
    /// Channel number.
    pub number: u16,
    /// Peer transport address (canonical).
    pub peer: SocketAddr,
    /// Deadline, CLOCK_MONOTONIC ns.
    pub expires_ns: u64,
}

/// Which kernel rule of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedRuleId {
    /// `TURN_ALLOCS` entry (Send indications).
    Alloc,
    /// `TURN_PEERS` permission entry for this peer IP.
    Permission(IpAddr),
    /// `TURN_CHANNELS` entry of this channel (client → peer).
    ChannelOut(u16),
    /// `TURN_PEERS` exact-port entry of this channel (peer → client).
    ChannelIn(u16),
}

/// One installed kernel rule: its counter index and the counter values already folded
/// into the allocation's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRule {
    /// Which rule.
    pub rule: SavedRuleId,
    /// Its `stats_idx` in `TURN_RULE_STATS`.
    pub stats_idx: u32,
    /// Packets already folded.
    pub seen_packets: u64,
    /// Bytes already folded.
    pub seen_bytes: u64,
}

/// The kernel state of one allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedKernel {
    /// Its `alloc_idx` (bandwidth entry).
    pub alloc_idx: u32,
    /// Its installed rules.
    pub rules: Vec<SavedRule>,
}

impl SavedKernel {
    /// The `stats_idx` of every rule.
    pub fn stats_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.rules.iter().map(|r| r.stats_idx)
    }
}

/// One UDP allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAllocation {
    /// Client address (the 5-tuple's transport is always UDP).
    pub client: SocketAddr,
    /// Server (listen) address.
    pub server: SocketAddr,
    /// Username it authenticated with.
    pub username: String,
    /// Realm at the time of the snapshot (informational: requests are checked against
    /// the current credentials).
    pub realm: String,
    /// Relayed address(es) with their exact ports: one, or two for a dual allocation.
    pub relayed: Vec<SocketAddr>,
    /// Allocation deadline, CLOCK_MONOTONIC ns.
    pub expires_ns: u64,
    /// Permissions.
    pub permissions: Vec<SavedPermission>,
    /// Channel bindings.
    pub channels: Vec<SavedChannel>,
    /// Relayed datagrams carry DF (DONT-FRAGMENT in Allocate).
    pub dont_fragment: bool,
    /// Byte quota (0 = unlimited).
    pub byte_quota: u64,
    /// Bandwidth limit, bytes per second (0 = none).
    pub bandwidth_limit: u64,
    /// Counters (userspace and folded kernel traffic).
    pub traffic: SavedTraffic,
    /// The kernel rules it owns (None: none installed).
    pub kernel: Option<SavedKernel>,
}

impl SavedAllocation {
    /// Its 5-tuple.
    pub fn tuple(&self) -> super::FiveTuple {
        super::FiveTuple {
            client: self.client,
            server: self.server,
            transport: super::Transport::Udp,
        }
    }

    /// Every `stats_idx` and the `alloc_idx` it owns in the kernel maps.
    pub fn kernel_indices(&self) -> (Vec<u32>, Option<u32>) {
        match &self.kernel {
            Some(k) => (k.stats_indices().collect(), Some(k.alloc_idx)),
            None => (Vec::new(), None),
        }
    }
}

#[cfg(test)]
impl SavedAllocation {
    /// A UDP allocation of "alice" with no permissions, channels, traffic or kernel
    /// rules (a test fixture).
    pub(crate) fn bare(client: SocketAddr, relayed: SocketAddr, expires_ns: u64) -> Self {
        SavedAllocation {
            client,
            server: "127.0.0.1:3478".parse().expect("addr"),
            username: "alice".into(),
            realm: "example.org".into(),
            relayed: vec![relayed],
            expires_ns,
            permissions: Vec::new(),
            channels: Vec::new(),
            dont_fragment: false,
            byte_quota: 0,
            bandwidth_limit: 0,
            traffic: SavedTraffic::default(),
            kernel: None,
        }
    }
}

/// The state file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Boot id of the machine when written.
    pub boot_id: String,
    /// When written, CLOCK_MONOTONIC ns.
    pub taken_ns: u64,
    /// The UDP allocations.
    pub allocations: Vec<SavedAllocation>,
}

/// The current boot id (trimmed), or an empty string when unreadable.
pub fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Snapshot {
    /// A snapshot of `allocations` taken now.
    pub fn new(boot_id: String, taken_ns: u64, allocations: Vec<SavedAllocation>) -> Self {
        Snapshot {
            version: VERSION,
            boot_id,
            taken_ns,
            allocations,
        }
    }

    /// Parses `text` (the content of `path`, named in errors) and checks its version and
    /// boot id against `boot_id`.
    pub fn parse(text: &str, path: &Path, boot_id: &str) -> Result<Snapshot, SnapshotError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SnapshotError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let found = value.get("version").and_then(serde_json::Value::as_u64);
        match found {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(SnapshotError::Version {
                    path: path.to_owned(),
                    found: v,
                });
            }
            None => {
                return Err(SnapshotError::Corrupt {
                    path: path.to_owned(),
                    reason: "no \"version\" field".to_owned(),
                });
            }
        }
        let snap: Snapshot = serde_json::from_value(value).map_err(|e| SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if snap.boot_id != boot_id {
            return Err(SnapshotError::OtherBoot {
                path: path.to_owned(),
                found: snap.boot_id,
                now: boot_id.to_owned(),
            });
        }
        Ok(snap)
    }

    /// Reads `path`; Ok(None) when there is no such file.
    pub fn read(path: &Path, boot_id: &str) -> Result<Option<Snapshot>, SnapshotError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path, boot_id).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(SnapshotError::Corrupt {
                path: path.to_owned(),
                reason: "not UTF-8".to_owned(),
            }),
            Err(source) => Err(SnapshotError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the snapshot to `path` atomically: a temporary file beside it (mode 0600),
    /// fsync, rename over `path`, fsync of the directory. The parent directory is
    /// created (mode 0700) if missing.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io)?;
        }
        let text = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        // Best effort: make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Drops the allocations whose deadline is at or before `now_ns`; returns how many.
    pub fn drop_expired(&mut self, now_ns: u64) -> usize {
        let before = self.allocations.len();
        self.allocations.retain(|a| a.expires_ns > now_ns);
        before - self.allocations.len()
    }
}

/// Why a saved allocation could not be restored into a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The server already has an allocation on that 5-tuple.
    #[error("an allocation already exists on this 5-tuple")]
    AlreadyAllocated,
    /// The relayed sockets handed in do not match the saved relayed addresses.
    #[error("the relayed sockets do not match the saved relayed addresses")]
    RelayMismatch,
}

impl TurnServer {
    /// Whether this server has an allocation on `tuple`.
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// The UDP allocations of this server still alive at `now`, for the state file,
    /// ordered by 5-tuple, taken all at once. Deadlines through `clock`
    /// (CLOCK_MONOTONIC). A worker takes it a slice at a time instead
    /// ([`TurnServer::snapshot_begin`]).
    pub fn snapshot(&mut self, now: Instant, clock: &MonoClock) -> Vec<SavedAllocation> {
        let job = self.snapshot_begin();
        let mut out = self.snapshot_finish(job, now, clock);
        out.sort_by_key(|a| (a.client, a.server));
        out
    }

    /// Allocation `id` as the state file keeps it, if it is a UDP allocation still alive
    /// at `now`.
    pub(super) fn saved_allocation(
        &self,
        id: u64,
        now: Instant,
        clock: &MonoClock,
        realm: &str,
    ) -> Option<SavedAllocation> {
        let a = self.allocs.get(&id)?;
        if a.tuple.transport != Transport::Udp || a.expires <= now {
            return None;
        }
        let mut permissions: Vec<SavedPermission> = a
            .permissions
            .iter()
            .filter(|&(_, &e)| e > now)
            .map(|(ip, e)| SavedPermission {
                peer: *ip,
                expires_ns: clock.ns(*e),
            })
            .collect();
        permissions.sort_by_key(|p| p.peer);
        let mut channels: Vec<SavedChannel> = a
            .channels
            .iter()
            .filter(|(_, c)| c.expires > now)
            .map(|(n, c)| SavedChannel {
                number: *n,
                peer: c.peer,
                expires_ns: clock.ns(c.expires),
            })
            .collect();
        channels.sort_by_key(|c| c.number);
        let t = self.fwd.traffic(id, a);
        Some(SavedAllocation {
            client: a.tuple.client,
            server: a.tuple.server,
            username: a.username.clone(),
            realm: realm.to_owned(),
            relayed: a.relayed().map(|r| r.addr).collect(),
            expires_ns: clock.ns(a.expires),
            permissions,
            channels,
            dont_fragment: a.dont_fragment,
            byte_quota: a.byte_quota,
            bandwidth_limit: a.bucket.as_ref().map_or(0, |_| self.config.bandwidth_limit),
            traffic: SavedTraffic {
                packets_to_peer: t.packets_to_peer,
                bytes_to_peer: t.bytes_to_peer,
                packets_to_client: t.packets_to_client,
                bytes_to_client: t.bytes_to_client,
            },
            kernel: self.fast.export(id),
        })
    }

    /// Re-creates a saved allocation in this server: its relayed sockets are already
    /// bound by the IO layer (`relays`: handle and address, one per saved relayed
    /// address), `ticket` holds its quota slot. Permissions, channels and counters come
    /// back as saved, deadlines converted through `clock`; its kernel rules (when a fast
    /// path is running and the snapshot lists them) are taken over with their indices,
    /// so they are updated in place by later changes. An allocation whose deadline has
    /// passed is restored too and removed by the next [`TurnServer::on_timeout`] (its
    /// kernel rules and sockets with it).
    pub fn restore(
        &mut self,
        saved: &SavedAllocation,
        ticket: QuotaTicket,
        relays: &[(RelayHandle, SocketAddr)],
        clock: &MonoClock,
        now: Instant,
    ) -> Result<(), RestoreError> {
        let tuple = saved.tuple();
        if self.by_tuple.contains_key(&tuple) {
            return Err(RestoreError::AlreadyAllocated);
        }
        if relays.len() != saved.relayed.len()
            || relays.iter().zip(&saved.relayed).any(|((_, a), b)| a != b)
        {
            return Err(RestoreError::RelayMismatch);
        }
        let mut slots = [None, None];
        for &(handle, addr) in relays {
            let slot = &mut slots[family_index(IpFamily::of(addr.ip()))];
            if slot.is_some() {
                return Err(RestoreError::RelayMismatch);
            }
            *slot = Some(Relay { handle, addr });
        }
        // Unrepresentable deadlines count as already passed.
        let at = |ns: u64| clock.instant(ns).unwrap_or(now);
        let expires = at(saved.expires_ns);
        let permissions: super::Map<IpAddr, Instant> = saved
            .permissions
            .iter()
            .map(|p| (p.peer, at(p.expires_ns)))
            .collect();
        let mut channels =
            super::Map::with_capacity_and_hasher(saved.channels.len(), Default::default());
        let mut peer_channels =
            super::Map::with_capacity_and_hasher(saved.channels.len(), Default::default());
        for c in &saved.channels {
            channels.insert(
                c.number,
                Channel {
                    peer: c.peer,
                    expires: at(c.expires_ns),
                },
            );
            peer_channels.insert(c.peer, c.number);
        }
        let bw = saved.bandwidth_limit;
        let id = self.next_id;
        self.next_id += 1;
        for (&ip, &e) in &permissions {
            self.timers.push(e, Timer::Permission(id, ip));
        }
        for (&n, c) in &channels {
            self.timers.push(c.expires, Timer::Channel(id, n));
        }
        self.timers.push(expires, Timer::Allocation(id));
        self.stats.allocations += 1;
        self.stats.permissions += permissions.len() as u64;
        self.stats.channels += channels.len() as u64;
        let a = Allocation {
            tuple,
            username: saved.username.clone(),
            _ticket: ticket,
            relays: slots,
            expires,
            // No Allocate to answer again: a per-server random id no client will send.
            txn: TransactionId(self.txn_seed),
            response: Vec::new(),
            permissions,
            channels,
            peer_channels,
            cooldown: HashMap::new(),
            bucket: (bw > 0).then(|| TokenBucket::new(bw, bw.max(65_536), now)),
            traffic: Traffic {
                packets_to_peer: saved.traffic.packets_to_peer,
                bytes_to_peer: saved.traffic.bytes_to_peer,
                packets_to_client: saved.traffic.packets_to_client,
                bytes_to_client: saved.traffic.bytes_to_client,
            },
            dont_fragment: saved.dont_fragment,
            byte_quota: saved.byte_quota,
        };
        for r in a.relayed() {
            self.by_relay.insert(r.handle, id);
        }
        self.by_tuple.insert(tuple, id);
        if let (Some(sink), Some(k)) = (self.shared.fast_rules(), &saved.kernel) {
            let env = Env {
                policy: &self.shared.policy,
                own: &self.own,
                relay_ports: self.config.relay_ports.clone(),
                bandwidth: self.config.bandwidth_limit,
            };
            self.fast.restore(&*sink, id, &a, k, &env);
        }
        self.allocs.insert(id, a);
        self.sync_fast(id, now);
        tracing::debug!(user = %saved.username, client = %saved.client, "allocation restored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stun::Class;
    use crate::turn::FiveTuple;
    use crate::turn::attrs::{self, method};
    use crate::turn::tests::{
        Client, World, allocated, bind, class_of, error_code, peer, world, world_with,
    };

    const T0_NS: u64 = 7_000_000_000_000;
    const BOOT: &str = "6f1d2c3b-0000-4000-8000-000000000001";

    fn clock(w: &World) -> MonoClock {
        MonoClock::new(w.t0, T0_NS)
    }

    fn refresh(w: &mut World, c: &mut Client) -> Vec<u8> {
        let req = c.request(
            method::REFRESH,
            &[(attrs::LIFETIME, 600u32.to_be_bytes().to_vec())],
        );
        w.one(&c.tuple, &req)
    }

    /// A world with one allocation, a channel to `peer()` and some traffic; its snapshot
    /// through JSON.
    fn saved_world() -> (World, Client, Snapshot) {
        let mut w = world();
        let (mut c, _, handle) = allocated(&mut w);
        assert_eq!(
            class_of(&bind(&mut w, &mut c, 0x4001, peer())),
            Class::SuccessResponse
        );
        let mut sink = crate::turn::tests::Sink::default();
        w.server.on_peer(handle, peer(), b"hello", w.now, &mut sink);
        assert_eq!(sink.client.len(), 1);
        w.advance(Duration::from_secs(10));
        let c0 = clock(&w);
        let snap = Snapshot::new(BOOT.into(), c0.ns(w.now), w.server.snapshot(w.now, &c0));
        let text = serde_json::to_string(&snap).expect("json");
        let back = Snapshot::parse(&text, Path::new("t.json"), BOOT).expect("parse back");
        assert_eq!(back, snap);
        (w, c, back)
    }

    /// A fresh server ("the restarted daemon") 2 s later on the same clock.
    fn restarted(w: &World) -> World {
        let mut w2 = world();
        w2.t0 = w.t0;
        w2.now = w.now + Duration::from_secs(2);
        w2.wall = w.wall + Duration::from_secs(2);
        w2
    }

    /// Binds the saved relayed addresses in the fake IO layer and restores `s`.
    fn restore_into(w2: &mut World, s: &SavedAllocation) -> Vec<(RelayHandle, SocketAddr)> {
        let relays: Vec<(RelayHandle, SocketAddr)> = s
            .relayed
            .iter()
            .map(|a| {
                w2.ports.next += 1;
                w2.ports.open.insert(w2.ports.next, *a);
                (w2.ports.next, *a)
            })
            .collect();
        let ticket = w2.quotas.try_acquire(&s.username).expect("quota");
        let c = clock(w2);
        let now = w2.now;
        w2.server
            .restore(s, ticket, &relays, &c, now)
            .expect("restore");
        relays
    }

    #[test]
    fn round_trip_then_refresh_channel_data_and_peer_data_work() {
        let (w, mut c, snap) = saved_world();
        assert_eq!(snap.version, 1);
        assert_eq!(snap.allocations.len(), 1);
        let s = &snap.allocations[0];
        assert_eq!(s.username, "alice");
        assert_eq!(s.realm, "example.org");
        assert_eq!(s.channels.len(), 1);
        assert_eq!(s.channels[0].number, 0x4001);
        assert_eq!(s.permissions.len(), 1);
        assert_eq!(s.traffic.packets_to_client, 1);
        // Deadlines: allocation 600 s, channel 600 s, permission 300 s after t0 (+ the
        // few requests' zero elapsed time).
        assert_eq!(s.expires_ns, T0_NS + 600_000_000_000);
        assert_eq!(s.permissions[0].expires_ns, T0_NS + 300_000_000_000);

        let mut w2 = restarted(&w);
        let relays = restore_into(&mut w2, s);
        assert_eq!(
            w2.quotas.held_by("alice"),
            1,
            "restored allocations hold quota"
        );
        let ok = refresh(&mut w2, &mut c);
        assert_eq!(
            class_of(&ok),
            Class::SuccessResponse,
            "{:?}",
            error_code(&ok)
        );
        c.verify(&ok);

        // ChannelData from the client leaves through the restored relayed socket.
        let mut frame = 0x4001u16.to_be_bytes().to_vec();
        frame.extend_from_slice(&4u16.to_be_bytes());
        frame.extend_from_slice(b"ping");
        w2.sink.peer.clear();
        w2.send(&c.tuple, &frame);
        assert_eq!(w2.sink.peer.len(), 1);
        assert_eq!(w2.sink.peer[0].0, relays[0].0);
        assert_eq!(w2.sink.peer[0].1, peer());
        // Peer data comes back as ChannelData on the restored channel.
        let mut sink = crate::turn::tests::Sink::default();
        let now = w2.now;
        w2.server
            .on_peer(relays[0].0, peer(), b"pong", now, &mut sink);
        assert_eq!(sink.client.len(), 1);
        assert_eq!(&sink.client[0].1[..2], &0x4001u16.to_be_bytes());
        // Counters continued from the saved ones.
        let info: Vec<_> = w2.server.allocations(now).collect();
        assert_eq!(info[0].packets_to_client, 2);
        assert_eq!(info[0].packets_to_peer, 1);
        // A second snapshot gives the same allocation (deadline refreshed).
        let again = w2.server.snapshot(now, &clock(&w2));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].relayed, s.relayed);
        // The same 5-tuple cannot be restored twice.
        let ticket = w2.quotas.try_acquire("alice").expect("quota");
        assert_eq!(
            w2.server
                .restore(s, ticket, &relays, &clock(&w2), now)
                .err(),
            Some(RestoreError::AlreadyAllocated)
        );
    }

    #[test]
    fn another_user_cannot_use_a_restored_allocation() {
        let (w, c, snap) = saved_world();
        let mut w2 = restarted(&w);
        restore_into(&mut w2, &snap.allocations[0]);
        let mut bob = Client::new(c.tuple, "bob", "builder");
        bob.nonce = c.nonce.clone();
        let ans = refresh(&mut w2, &mut bob);
        assert_eq!(error_code(&ans), Some(441));
    }

    #[test]
    fn expired_entries_are_dropped_and_an_expired_restore_is_removed() {
        let (w, _, mut snap) = saved_world();
        let deadline = snap.allocations[0].expires_ns;
        assert_eq!(snap.drop_expired(deadline - 1), 0);
        let mut late = snap.clone();
        assert_eq!(late.drop_expired(deadline), 1);
        assert!(late.allocations.is_empty());

        // Restored after its deadline (a pool entry nobody claimed): gone at the next
        // timeout, port closed, quota given back.
        let mut w2 = restarted(&w);
        w2.now = w.t0 + Duration::from_secs(601);
        let s = snap.allocations.remove(0);
        restore_into(&mut w2, &s);
        assert_eq!(w2.quotas.held_by("alice"), 1);
        w2.advance(Duration::from_millis(1));
        assert!(!w2.server.has_allocation(&s.tuple()));
        assert!(w2.ports.open.is_empty(), "relayed port not closed");
        assert_eq!(w2.quotas.held_by("alice"), 0);
        assert_eq!(w2.server.stats().allocations, 0);
    }

    #[test]
    fn expired_permissions_and_channels_expire_after_restore() {
        let (w, mut c, snap) = saved_world();
        let mut w2 = restarted(&w);
        // Past the permission (300 s), before the allocation (600 s).
        w2.now = w.t0 + Duration::from_secs(400);
        w2.wall = w.wall + Duration::from_secs(390);
        restore_into(&mut w2, &snap.allocations[0]);
        w2.advance(Duration::from_millis(1));
        let now = w2.now;
        let info: Vec<_> = w2.server.allocations(now).collect();
        assert!(info[0].permissions.is_empty());
        assert_eq!(w2.server.stats().permissions, 0);
        assert_eq!(class_of(&refresh(&mut w2, &mut c)), Class::SuccessResponse);
    }

    #[test]
    fn restored_allocations_count_against_quotas() {
        let (w, _, snap) = saved_world();
        let mut w2 = world_with(
            crate::turn::tests::config(),
            crate::policy::Quotas::new(1, 0),
        );
        w2.t0 = w.t0;
        w2.now = w.now;
        restore_into(&mut w2, &snap.allocations[0]);
        // alice's one slot is taken by the restored allocation.
        let mut other = Client::new(
            FiveTuple {
                client: "198.51.100.8:40001".parse().expect("addr"),
                ..snap.allocations[0].tuple()
            },
            "alice",
            "wonderland",
        );
        let ans = crate::turn::tests::allocate(&mut w2, &mut other, &[]);
        assert_eq!(error_code(&ans), Some(486));
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let p = Path::new("/x/turn-state.json");
        for text in ["", "{", "[1,2]", "{\"allocations\": []}", "\u{0}garbage"] {
            let e = Snapshot::parse(text, p, BOOT).expect_err(text);
            assert!(matches!(e, SnapshotError::Corrupt { .. }), "{text}: {e}");
            assert!(e.to_string().contains("/x/turn-state.json"), "{e}");
        }
        let v2 =
            format!("{{\"version\":2,\"boot_id\":\"{BOOT}\",\"taken_ns\":1,\"allocations\":[]}}");
        let e = Snapshot::parse(&v2, p, BOOT).expect_err("v2");
        assert!(matches!(e, SnapshotError::Version { found: 2, .. }), "{e}");
        assert!(e.to_string().contains("version 2"), "{e}");
        // Right version, wrong shape.
        let bad = format!(
            "{{\"version\":1,\"boot_id\":\"{BOOT}\",\"taken_ns\":1,\"allocations\":[{{\"client\":5}}]}}"
        );
        assert!(matches!(
            Snapshot::parse(&bad, p, BOOT),
            Err(SnapshotError::Corrupt { .. })
        ));
        let ok =
            format!("{{\"version\":1,\"boot_id\":\"{BOOT}\",\"taken_ns\":1,\"allocations\":[]}}");
        let e = Snapshot::parse(&ok, p, "another-boot").expect_err("other boot");
        assert!(matches!(e, SnapshotError::OtherBoot { .. }), "{e}");
        assert!(Snapshot::parse(&ok, p, BOOT).is_ok());
    }

    #[test]
    fn file_is_written_atomically_with_mode_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("relay-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/turn-state.json");
        assert!(Snapshot::read(&path, BOOT).expect("absent").is_none());
        let (_, _, snap) = saved_world();
        snap.write(&path).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join("sub/turn-state.json.tmp").exists());
        assert_eq!(
            Snapshot::read(&path, BOOT).expect("read"),
            Some(snap.clone())
        );
        // Overwritten in place.
        let empty = Snapshot::new(BOOT.into(), 1, Vec::new());
        empty.write(&path).expect("rewrite");
        assert_eq!(Snapshot::read(&path, BOOT).expect("read"), Some(empty));
        std::fs::write(&path, [0xff, 0xfe, 0x00]).expect("corrupt");
        assert!(matches!(
            Snapshot::read(&path, BOOT),
            Err(SnapshotError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tcp_allocations_are_not_saved() {
        let mut w = world();
        let tuple = FiveTuple {
            transport: Transport::Tcp,
            ..crate::turn::tests::udp_tuple()
        };
        let mut c = Client::new(tuple, "alice", "wonderland");
        let ok = crate::turn::tests::allocate(&mut w, &mut c, &[]);
        assert_eq!(class_of(&ok), Class::SuccessResponse);
        assert!(w.server.snapshot(w.now, &clock(&w)).is_empty());
    }
}
