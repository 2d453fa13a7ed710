//! STUN (RFC 8489), sans-IO: a zero-copy codec and the Binding service.
//!
//! - [`header`]: the 20-byte header, method/class, magic cookie, transaction id;
//! - [`attr`]: attribute types and value decoding;
//! - [`message`]: a zero-copy view over a received message and its TLVs;
//! - [`builder`]: writes messages into a caller's buffer;
//! - [`integrity`]: MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT;
//! - [`binding`]: the Binding service shared by the io_uring path (and mirrored byte for
//!   byte by the XDP program).
//!
//! Nothing in this module allocates to read or answer a message.
pub mod attr;
pub mod binding;
pub mod builder;
pub mod error;
pub mod header;
pub mod integrity;
pub mod message;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod rfc5769;

pub use attr::Attribute;
pub use builder::MessageBuilder;
pub use error::StunError;
pub use header::{Class, Header, MessageType, Method, TransactionId};
pub use message::{Message, RawAttribute};
