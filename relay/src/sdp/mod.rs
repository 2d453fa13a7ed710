//! SDP offer/answer with browsers (RFC 8866 syntax, RFC 8829 JSEP, RFC 8843 BUNDLE).
//!
//! Exists because a browser only sends media to the SFU after a session description
//! exchange: this module reads what Chromium and Firefox write (`parse`), answers a
//! publisher's offer and builds the SFU's offers to subscribers (`negotiate`) from the
//! SFU's own parameters (`local`), and writes descriptions back (`write`). Sans-IO: text
//! in, text out; the signaling layer carries it and the workers use the negotiated
//! values (ICE credentials, peer fingerprint, payload types, extension ids, rids) that
//! `session::negotiated` reads out of a finished exchange.

mod local;
mod model;
mod negotiate;
mod parse;
mod session;
mod write;

pub use local::{CandidateTransport, Codec, Extension, LocalCandidate, LocalParams};
pub use model::{
    Candidate, Direction, Extmap, Fingerprint, Fmtp, Group, MediaDescription, MediaKind, Msid,
    Origin, Proto, Rid, RidDirection, RtcpFb, RtpMap, SessionDescription, Setup, Simulcast,
    SimulcastRid, SsrcAttr, SsrcGroup,
};
pub use negotiate::{
    NegotiationError, OfferSection, OutgoingTrack, answer, check_answer, codec_of, offer,
};
pub use parse::{
    MAX_MEDIA_SECTIONS, MAX_SDP_LEN, SdpError, parse, parse_candidate_line, valid_rid,
};
pub use session::{ExtensionIds, Negotiated, NegotiatedCodec, NegotiatedMedia, negotiated};

#[cfg(test)]
mod tests;
