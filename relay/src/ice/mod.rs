//! ICE-lite for the SFU's WebRTC endpoints (issue 5): the relay sits on public
//! addresses, so it offers host candidates only, never checks, and lets the browser (the
//! full, controlling agent) find and nominate the pair. Sans-IO: datagrams and time in,
//! answers and events out.
//!
//! - [`agent`]: [`IceLite`], one per participant connection — answers connectivity
//!   checks, tracks valid and nominated pairs, consent freshness (RFC 7675);
//! - [`pair`]: candidate pairs and their table;
//! - [`credentials`]: random ufrag/password and their syntax;
//! - [`candidate`]: our `a=candidate` lines and their priorities;
//! - [`error`]: why a datagram was dropped.
pub mod agent;
pub mod candidate;
pub mod credentials;
pub mod error;
pub mod pair;

#[cfg(test)]
mod tests;

pub use agent::{IceEvent, IceLite, Reply};
pub use candidate::{HostCandidate, candidate_lines, host_priority};
pub use credentials::{Credentials, random_credentials};
pub use error::IceError;
pub use pair::{CONSENT_TIMEOUT_US, Pair, Transport};
