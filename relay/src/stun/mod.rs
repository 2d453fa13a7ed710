//! STUN (RFC 8489), sans-IO: a zero-copy codec and the Binding service.
pub mod binding;
