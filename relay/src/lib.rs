//! The relay: STUN/TURN server, SFU and their data paths.
//!
//! Protocol logic is sans-IO (bytes and time in, bytes and decisions out): [`stun`].
//! The IO that drives it lives apart: [`dataplane`] (io_uring workers, one per core, and a
//! portable fallback), [`xdp`] (loading the kernel fast path and reading its counters),
//! [`control`] (the operator's control socket), [`daemon`] (wiring, signals, lifecycle),
//! [`xsk`] (AF_XDP sockets: frames between an XDP program and a worker, bypassing the
//! socket layer).
//! [`wire`] builds and parses Ethernet/IP/UDP frames: the differential harness and the
//! bench use it to put userspace answers in the same frames the kernel path emits.

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod dtls;
pub mod ice;
pub mod metrics;
pub mod policy;
pub mod rtp;
pub mod sdp;
pub mod sfu;
pub mod signaling;
pub mod srtp;
pub mod stun;
pub mod tls;
pub mod turn;
pub mod wire;
pub mod xdp;
pub mod xsk;
