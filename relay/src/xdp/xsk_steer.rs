//! The userspace side of the XDP program's AF_XDP steering (`ebpf/relay-ebpf/src/xsk.rs`,
//! map contract in `relay_common::turn`): which UDP ports go to AF_XDP sockets, which
//! socket serves which RX queue, and the switch that turns it all on and off.
//!
//! How it is used: each worker opens one AF_XDP socket per RX queue it owns (queue `q`
//! belongs to worker `q % workers`) on the interface the program is attached to,
//! registers it with [`XskSteering::add_socket`], marks the TURN listen ports with
//! [`XskSteering::mark_listen`] and its relayed ports with [`XskSteering::set_owner`];
//! then [`XskSteering::set_workers`] turns steering on. From then on every UDP frame
//! `relay_xdp` would pass up to the stack for such a port is redirected to the socket of
//! its queue instead (a relayed port only on its owner's queues); frames the kernel
//! handles itself (Binding answers, TURN relayed in the kernel) are not affected. At
//! shutdown [`XskSteering::turn_off`] comes before the sockets close.
//!
//! What is safe by construction: a queue without a socket passes its frames up (the
//! redirect falls back to XDP_PASS), the kernel removes a closed socket from the map, and
//! with workers = 0 (the default of a freshly loaded program) nothing is steered.
//!
//! Interfaces: a socket is bound to one queue of one interface, and the kernel drops a
//! frame redirected to a socket of another interface; so `TURN_XSKS` is keyed by the
//! ingress interface's slot and the queue (`relay_common::turn::xsk_key`), and only the
//! interfaces added with [`XskSteering::add_interface`] (up to
//! `relay_common::turn::MAX_XSK_IFACES`) are steered. RX queues from
//! `relay_common::turn::MAX_XSK_QUEUES` up are never steered.
//!
//! Not pinned: the maps are per process (AF_XDP sockets die with it). A restarted daemon
//! that adopts a pinned link gives it a program with fresh, all-zero steering maps.
//!
//! Concurrency: every method is one `bpf(2)` map syscall on a shared descriptor (the
//! kernel makes each single update atomic), so the handle is `Clone + Send + Sync` and
//! needs no lock; no allocation except in [`XskSteering::steered_frames`].

use std::io;
use std::os::fd::{AsFd as _, OwnedFd, RawFd};
use std::sync::Arc;

use aya::{Ebpf, maps::Map};
use relay_common::turn::{
    MAX_XSK_IFACES, MAX_XSK_QUEUES, MAX_XSK_WORKERS, XSK_PORT_LISTEN, XSK_PORT_NONE, maps,
    xsk_port_owner, xsk_port_worker,
};

use super::bpf_sys::{self, BPF_ANY};

/// Errors of the steering handle.
#[derive(Debug, thiserror::Error)]
pub enum XskSteerError {
    /// The loaded object lacks a steering map, or has it with another type.
    #[error(
        "the eBPF object has no {0} map of the expected type: this build's XDP program cannot \
         steer to AF_XDP sockets (rebuild the relay, or turn the AF_XDP data path off)"
    )]
    Missing(&'static str),
    /// Duplicating a map descriptor failed.
    #[error("cannot duplicate the descriptor of BPF map {name}: {source}")]
    Dup {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The queue is beyond the socket map.
    #[error(
        "RX queue {queue} cannot get an AF_XDP socket: the XDP program holds sockets for \
         queues 0..{max} only (reduce the interface's queues with `ethtool -L`, or leave \
         this queue to the kernel sockets)",
        max = MAX_XSK_QUEUES
    )]
    QueueOutOfRange {
        /// The queue asked for.
        queue: u32,
    },
    /// More workers than the port encoding names.
    #[error(
        "worker {worker} cannot own relayed ports for the AF_XDP steering: at most {max} \
         workers (0..{max}) are supported",
        max = MAX_XSK_WORKERS
    )]
    TooManyWorkers {
        /// The worker index or count asked for.
        worker: u32,
    },
    /// The descriptor is not an AF_XDP socket the kernel accepts in the map.
    #[error(
        "fd {fd} cannot serve RX queue {queue}: not an AF_XDP socket bound to a queue with an \
         RX ring ({source}); bind the socket before registering it"
    )]
    NotASocket {
        /// The descriptor given.
        fd: RawFd,
        /// The queue.
        queue: u32,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Every interface slot is taken.
    #[error(
        "interface {ifindex} cannot be steered to AF_XDP sockets: the XDP program steers at \
         most {max} interfaces (attach the fast path to fewer, or turn xdp.af_xdp off)",
        max = MAX_XSK_IFACES
    )]
    TooManyInterfaces {
        /// The interface asked for.
        ifindex: u32,
    },
    /// A socket for an interface that was not added first.
    #[error("interface {ifindex} is not steered: add it (add_interface) before its sockets")]
    UnknownInterface {
        /// The interface.
        ifindex: u32,
    },
    /// The number of possible CPUs (the per-CPU counter's size) could not be read.
    #[error("cannot read the number of possible CPUs ({0}): {1}")]
    Cpus(&'static str, #[source] io::Error),
    /// Any other failed map syscall.
    #[error("BPF map {name}: {op} failed: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What was done ("update", "lookup", "delete").
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What a UDP port is to the steering ([`XskSteering::port`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskPort {
    /// Not steered: frames pass up to the stack.
    None,
    /// A TURN listen port: steered on every queue.
    Listen,
    /// A relayed port owned by this worker: steered on its queues only.
    Owner(u32),
}

struct Fds {
    xsks: OwnedFd,
    ports: OwnedFd,
    workers: OwnedFd,
    iface: OwnedFd,
    stats: OwnedFd,
    cpus: usize,
}

/// The steering maps of one loaded XDP object. Cheap to clone; see the module doc.
#[derive(Clone)]
pub struct XskSteering {
    fds: Arc<Fds>,
}

impl std::fmt::Debug for XskSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSteering").finish_non_exhaustive()
    }
}

fn map_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, XskSteerError> {
    let data = match (name, ebpf.map(name)) {
        (maps::XSKS, Some(Map::XskMap(d))) => d,
        (maps::XSK_STATS, Some(Map::PerCpuArray(d))) => d,
        (maps::XSK_PORTS | maps::XSK_WORKERS | maps::XSK_IFACES, Some(Map::Array(d))) => d,
        _ => return Err(XskSteerError::Missing(name)),
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| XskSteerError::Dup { name, source })
}

impl XskSteering {
    /// A handle on the steering maps of `ebpf` (their descriptors duplicated: the handle
    /// keeps them alive on its own).
    pub fn from_ebpf(ebpf: &Ebpf) -> Result<XskSteering, XskSteerError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| XskSteerError::Cpus(what, e))?;
        Ok(XskSteering {
            fds: Arc::new(Fds {
                xsks: map_fd(ebpf, maps::XSKS)?,
                ports: map_fd(ebpf, maps::XSK_PORTS)?,
                workers: map_fd(ebpf, maps::XSK_WORKERS)?,
                iface: map_fd(ebpf, maps::XSK_IFACES)?,
                stats: map_fd(ebpf, maps::XSK_STATS)?,
                cpus,
            }),
        })
    }

    /// Turns steering on for `n` workers (queue `q` belongs to worker `q % n`); 0 turns
    /// it off.
    pub fn set_workers(&self, n: u32) -> Result<(), XskSteerError> {
        if n > MAX_XSK_WORKERS {
            return Err(XskSteerError::TooManyWorkers { worker: n });
        }
        update(&self.fds.workers, maps::XSK_WORKERS, &0u32, &n)
    }

    /// The worker count (0: steering off).
    pub fn workers(&self) -> Result<u32, XskSteerError> {
        lookup(&self.fds.workers, maps::XSK_WORKERS, &0u32)
    }

    /// Steering off (workers = 0): every frame passes up again. Call it before the
    /// sockets close at shutdown.
    pub fn turn_off(&self) -> Result<(), XskSteerError> {
        self.set_workers(0)
    }

    /// Steers frames received on interface `ifindex` from now on (to the sockets added
    /// for it); returns its slot. Idempotent. Not for concurrent use with itself (the
    /// daemon adds interfaces once, before the workers open sockets).
    pub fn add_interface(&self, ifindex: u32) -> Result<u32, XskSteerError> {
        if let Some(slot) = self.slot_of(ifindex)? {
            return Ok(slot);
        }
        for slot in 0..MAX_XSK_IFACES {
            if lookup::<u32>(&self.fds.iface, maps::XSK_IFACES, &slot)? == 0 {
                update(&self.fds.iface, maps::XSK_IFACES, &slot, &ifindex)?;
                return Ok(slot);
            }
        }
        Err(XskSteerError::TooManyInterfaces { ifindex })
    }

    /// The steered interfaces, by slot (0 = a free slot).
    pub fn interfaces(&self) -> Result<Vec<u32>, XskSteerError> {
        (0..MAX_XSK_IFACES)
            .map(|slot| lookup(&self.fds.iface, maps::XSK_IFACES, &slot))
            .collect()
    }

    fn slot_of(&self, ifindex: u32) -> Result<Option<u32>, XskSteerError> {
        if ifindex == 0 {
            return Ok(None);
        }
        for slot in 0..MAX_XSK_IFACES {
            if lookup::<u32>(&self.fds.iface, maps::XSK_IFACES, &slot)? == ifindex {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// The `TURN_XSKS` key of (`ifindex`, `queue`).
    fn key(&self, ifindex: u32, queue: u32) -> Result<u32, XskSteerError> {
        if queue >= MAX_XSK_QUEUES {
            return Err(XskSteerError::QueueOutOfRange { queue });
        }
        let slot = self
            .slot_of(ifindex)?
            .ok_or(XskSteerError::UnknownInterface { ifindex })?;
        relay_common::turn::xsk_key(slot, queue).ok_or(XskSteerError::QueueOutOfRange { queue })
    }

    /// Registers the AF_XDP socket `xsk_fd` (bound to RX queue `queue` of interface
    /// `ifindex`, added before, with an RX ring) as the receiver of that queue's steered
    /// frames, replacing any previous one. The map does not keep the socket open: closing
    /// it removes it.
    pub fn add_socket(&self, ifindex: u32, queue: u32, xsk_fd: RawFd) -> Result<(), XskSteerError> {
        let key = self.key(ifindex, queue)?;
        let value = xsk_fd as u32;
        bpf_sys::map_update(self.fds.xsks.as_fd(), &key, &value, BPF_ANY).map_err(|source| {
            match source.raw_os_error() {
                Some(libc::EBADF | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EINVAL) => {
                    XskSteerError::NotASocket {
                        fd: xsk_fd,
                        queue,
                        source,
                    }
                }
                _ => XskSteerError::Map {
                    name: maps::XSKS,
                    op: "update",
                    source,
                },
            }
        })
    }

    /// Unregisters the socket of queue `queue` of interface `ifindex`, if any (its frames
    /// pass up again). Idempotent: the kernel does not say whether there was one.
    pub fn remove_socket(&self, ifindex: u32, queue: u32) -> Result<(), XskSteerError> {
        let key = self.key(ifindex, queue)?;
        bpf_sys::map_delete(self.fds.xsks.as_fd(), &key).map_err(|source| XskSteerError::Map {
            name: maps::XSKS,
            op: "delete",
            source,
        })
    }

    /// Marks `port` as a TURN listen port: steered on every queue.
    pub fn mark_listen(&self, port: u16) -> Result<(), XskSteerError> {
        self.set_port(port, XSK_PORT_LISTEN)
    }

    /// Marks `port` as a relayed port owned by worker `worker`: steered on that worker's
    /// queues only (elsewhere it passes up, to the owner's kernel socket).
    pub fn set_owner(&self, port: u16, worker: u32) -> Result<(), XskSteerError> {
        let kind = xsk_port_owner(worker).ok_or(XskSteerError::TooManyWorkers { worker })?;
        self.set_port(port, kind)
    }

    /// Stops steering `port`.
    pub fn clear_port(&self, port: u16) -> Result<(), XskSteerError> {
        self.set_port(port, XSK_PORT_NONE)
    }

    /// What `port` is to the steering.
    pub fn port(&self, port: u16) -> Result<XskPort, XskSteerError> {
        let kind: u8 = lookup(&self.fds.ports, maps::XSK_PORTS, &u32::from(port))?;
        Ok(match kind {
            XSK_PORT_NONE => XskPort::None,
            XSK_PORT_LISTEN => XskPort::Listen,
            k => XskPort::Owner(xsk_port_worker(k).unwrap_or(u32::from(k) - 1)),
        })
    }

    fn set_port(&self, port: u16, kind: u8) -> Result<(), XskSteerError> {
        update(&self.fds.ports, maps::XSK_PORTS, &u32::from(port), &kind)
    }

    /// Frames the program redirected to a socket, summed over CPUs (counted when the
    /// queue had a socket; the kernel may still drop one if that socket's ring is full,
    /// which the socket's own statistics count).
    pub fn steered_frames(&self) -> Result<u64, XskSteerError> {
        let mut per_cpu = vec![0u64; self.fds.cpus];
        bpf_sys::map_lookup(self.fds.stats.as_fd(), &0u32, &mut per_cpu).map_err(|source| {
            XskSteerError::Map {
                name: maps::XSK_STATS,
                op: "lookup",
                source,
            }
        })?;
        Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
    }
}

fn update<V: aya::Pod>(
    fd: &OwnedFd,
    name: &'static str,
    key: &u32,
    value: &V,
) -> Result<(), XskSteerError> {
    bpf_sys::map_update(fd.as_fd(), key, value, BPF_ANY).map_err(|source| XskSteerError::Map {
        name,
        op: "update",
        source,
    })
}

fn lookup<V: aya::Pod + Default>(
    fd: &OwnedFd,
    name: &'static str,
    key: &u32,
) -> Result<V, XskSteerError> {
    let mut v = [V::default()];
    bpf_sys::map_lookup(fd.as_fd(), key, &mut v).map_err(|source| XskSteerError::Map {
        name,
        op: "lookup",
        source,
    })?;
    Ok(v[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_is_shared_by_workers() {
        fn shared<T: Clone + Send + Sync + 'static>() {}
        shared::<XskSteering>();
    }

    #[test]
    fn errors_name_the_limit_and_the_fix() {
        let e = XskSteerError::QueueOutOfRange { queue: 70 };
        assert!(e.to_string().contains("queues 0..64"), "{e}");
        assert!(e.to_string().contains("ethtool -L"), "{e}");
        let e = XskSteerError::TooManyWorkers { worker: 300 };
        assert!(e.to_string().contains("at most 254"), "{e}");
    }
}
