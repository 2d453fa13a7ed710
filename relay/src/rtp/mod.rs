//! RTP and RTCP on the wire, sans-IO, for the SFU (issue 5): zero-copy views of RTP
//! packets and RTCP compounds, in-place rewriting of the fields the SFU changes per
//! receiver, the header extensions it reads, builders of the RTCP feedback it sends
//! (receiver reports, NACK, PLI, FIR, REMB, transport-cc) into the caller's buffers, and
//! the transport-wide congestion-control recorder that produces TWCC feedback.
//!
//! Everything here runs per packet on the workers: parsing is bounds-checked and never
//! panics on network input, nothing allocates per packet, time is passed in.
//!
//! - [`packet`][]: `RtpView` / `RtpMut`, RFC 8285 extension elements, `classify` (RFC 7983).
//! - [`ext`][]: `ExtMap` and the extension value decoders.
//! - [`rtcp`][]: the compound iterator, typed views and builders.
//! - [`twcc`][]: `TwccRecorder`.

pub mod ext;
pub mod packet;
pub mod rtcp;
pub mod twcc;

pub use ext::{AudioLevel, ExtError, ExtMap, KnownExtensions};
pub use packet::{Demux, ExtensionForm, RtpError, RtpMut, RtpView, classify};
pub use rtcp::{RtcpError, RtcpPacket, compound};
pub use twcc::TwccRecorder;

/// Wrap-aware extension of a 16-bit sequence number to 64 bits: the value nearest to
/// `reference` (an already extended number) whose low 16 bits are `seq`.
pub fn unwrap_seq(reference: u64, seq: u16) -> u64 {
    let delta = i64::from(seq.wrapping_sub(reference as u16) as i16);
    let v = reference as i64 + delta;
    // Below zero only before the first wrap: keep the 16-bit value as is.
    if v < 0 { u64::from(seq) } else { v as u64 }
}
