//! What a completed offer/answer means for the data path: the peer's ICE credentials
//! and certificate fingerprint, the header extension ids, and per section the codecs,
//! RTX payload types, rids and SSRCs. The workers configure a participant's endpoint
//! from this instead of walking descriptions themselves.

use super::local::{Codec, Extension};
use super::model::{
    Direction, MediaDescription, MediaKind, Proto, RidDirection, SessionDescription,
};
use super::negotiate::{NegotiationError, codec_of};

/// Header extension ids in force on the BUNDLE transport (RFC 8843 7.2.2: one id per
/// URI across the bundle): the same table the RTP layer reads packets with.
pub use crate::rtp::ExtMap as ExtensionIds;

impl ExtensionIds {
    fn set(&mut self, ext: Extension, id: u8) {
        let slot = match ext {
            Extension::AudioLevel => &mut self.audio_level,
            Extension::TransportCc => &mut self.transport_cc,
            Extension::Mid => &mut self.mid,
            Extension::Rid => &mut self.rid,
            Extension::RepairedRid => &mut self.repaired_rid,
            Extension::AbsSendTime => &mut self.abs_send_time,
        };
        slot.get_or_insert(id);
    }
}

/// One negotiated codec of a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedCodec {
    /// Payload type.
    pub payload_type: u8,
    /// The codec.
    pub codec: Codec,
    /// Its RTX payload type, if negotiated.
    pub rtx_payload_type: Option<u8>,
}

/// One accepted section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    /// mid.
    pub mid: String,
    /// Audio, video or application.
    pub kind: MediaKind,
    /// Our direction for it (`recvonly`: we receive; `sendonly`: we send).
    pub direction: Direction,
    /// Codecs both sides agreed on, preferred first (empty for data channels).
    pub codecs: Vec<NegotiatedCodec>,
    /// Simulcast rids we receive, in the offer's order (lowest layer first for
    /// Chromium's q/h/f); empty without simulcast.
    pub rids: Vec<String>,
    /// SSRCs the peer declared for this section (primary first, then RTX per
    /// `ssrc-group:FID`); simulcast publishers usually declare none (rids instead).
    pub remote_ssrcs: Vec<u32>,
    /// `ssrc-group:FID` pairs the peer declared: (primary, RTX).
    pub remote_rtx_pairs: Vec<(u32, u32)>,
}

/// The outcome of an offer/answer exchange, from the SFU's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's ICE username fragment (for STUN checks: `ours:theirs`).
    pub remote_ice_ufrag: String,
    /// The peer's ICE password.
    pub remote_ice_pwd: String,
    /// SHA-256 of the peer's DTLS certificate, to check in the handshake.
    pub remote_fingerprint: [u8; 32],
    /// Header extension ids.
    pub extensions: ExtensionIds,
    /// Accepted sections in order (rejected ones are left out).
    pub media: Vec<NegotiatedMedia>,
}

/// Reads the result of a negotiation: `remote` is the browser's description (its
/// offer, or its answer to ours), `local` ours (our answer, or our offer). Only
/// sections accepted on both sides (port != 0 in `local` and in `remote`, or
/// `bundle-only` in `remote`) are listed.
pub fn negotiated(
    remote: &SessionDescription,
    local: &SessionDescription,
) -> Result<Negotiated, NegotiationError> {
    if remote.media.len() != local.media.len() {
        return Err(NegotiationError::Mismatch("number of media sections"));
    }
    let mut out: Option<Negotiated> = None;
    let mut media = Vec::new();
    let mut extensions = ExtensionIds::default();
    for (i, (r, l)) in remote.media.iter().zip(&local.media).enumerate() {
        if r.mid != l.mid {
            return Err(NegotiationError::Mismatch("mid of a section"));
        }
        let remote_open = r.port != 0 || r.other.iter().any(|x| x == "a=bundle-only");
        if l.port == 0 || !remote_open {
            continue;
        }
        let mid = l.mid.clone().ok_or(NegotiationError::NoMid(i))?;
        if out.is_none() {
            let ufrag = remote.ice_ufrag_of(r);
            let pwd = remote.ice_pwd_of(r);
            let (Some(ufrag), Some(pwd)) = (ufrag, pwd) else {
                return Err(NegotiationError::NoIceCredentials(mid));
            };
            let fp = remote
                .sha256_fingerprint_of(r)
                .ok_or_else(|| NegotiationError::NoFingerprint(mid.clone()))?;
            out = Some(Negotiated {
                remote_ice_ufrag: ufrag.to_owned(),
                remote_ice_pwd: pwd.to_owned(),
                remote_fingerprint: fp,
                extensions: ExtensionIds::default(),
                media: Vec::new(),
            });
        }
        for e in &l.extmaps {
            if let Some(ext) = Extension::from_uri(&e.uri) {
                extensions.set(ext, e.id);
            }
        }
        media.push(negotiated_media(r, l, mid));
    }
    let mut n = out.ok_or(NegotiationError::Mismatch("no accepted media section"))?;
    n.extensions = extensions;
    n.media = media;
    Ok(n)
}

fn negotiated_media(r: &MediaDescription, l: &MediaDescription, mid: String) -> NegotiatedMedia {
    let mut codecs = Vec::new();
    if l.proto == Proto::UdpTlsRtpSavpf {
        let remote_pts: Vec<u8> = r.payload_types().collect();
        for pt in l.payload_types().filter(|pt| remote_pts.contains(pt)) {
            let Some(codec) = codec_of(l, pt) else {
                continue;
            };
            let rtx = l.payload_types().find(|&x| {
                remote_pts.contains(&x)
                    && l.rtpmap(x)
                        .is_some_and(|m| m.encoding.eq_ignore_ascii_case("rtx"))
                    && l.fmtp(x)
                        .and_then(|f| f.param("apt"))
                        .is_some_and(|apt| apt == pt.to_string())
            });
            codecs.push(NegotiatedCodec {
                payload_type: pt,
                codec,
                rtx_payload_type: rtx,
            });
        }
    }
    let rids = match &l.simulcast {
        Some(sim) => sim
            .recv
            .iter()
            .filter_map(|stream| stream.first())
            .filter(|alt| {
                l.rids
                    .iter()
                    .any(|x| x.id == alt.rid && x.direction == RidDirection::Recv)
            })
            .map(|alt| alt.rid.clone())
            .collect(),
        None => Vec::new(),
    };
    let mut remote_ssrcs: Vec<u32> = Vec::new();
    for s in &r.ssrcs {
        if !remote_ssrcs.contains(&s.ssrc) {
            remote_ssrcs.push(s.ssrc);
        }
    }
    let remote_rtx_pairs = r
        .ssrc_groups
        .iter()
        .filter(|g| g.semantics == "FID" && g.ssrcs.len() == 2)
        .map(|g| (g.ssrcs[0], g.ssrcs[1]))
        .collect();
    NegotiatedMedia {
        mid,
        kind: l.kind.clone(),
        direction: l.direction.unwrap_or(Direction::SendRecv),
        codecs,
        rids,
        remote_ssrcs,
        remote_rtx_pairs,
    }
}
