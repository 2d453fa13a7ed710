//! The Binding service: one datagram in, at most one datagram out.
//!
//! CONTRACT shared with the XDP program and the data path (do not change lightly):
//! a valid Binding request is answered with a Binding success response carrying exactly
//! XOR-MAPPED-ADDRESS (of `source`) then FINGERPRINT, nothing else.

use std::net::SocketAddr;

/// Why a datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a STUN message at all.
    NotStun,
    /// Placeholder until the codec lands.
    Unimplemented,
}

/// What the service decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Send `out[..n]` back to the source.
    Send(usize),
    /// Send nothing.
    Drop(DropReason),
}

/// Answers one datagram received from `source`, writing any reply into `out`.
/// Never allocates; `out` must be at least 548 bytes (smaller buffers drop replies).
pub fn handle_datagram(_datagram: &[u8], _source: SocketAddr, _out: &mut [u8]) -> Reply {
    Reply::Drop(DropReason::Unimplemented)
}
