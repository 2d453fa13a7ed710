//! The SFU's side of offer/answer (RFC 8829 JSEP, RFC 8843 BUNDLE): answering a
//! publisher's offer, and building the offers that carry subscribed tracks.
//!
//! Roles: the SFU is ICE-lite (RFC 8445 2.5, always controlled) and the DTLS server.
//! Browsers offer `a=setup:actpass`; we answer `passive`, so the browser, which is the
//! full ICE agent and knows first when a pair works, opens the DTLS handshake right
//! after ICE nominates; the SFU never needs to initiate towards a NAT-ed address. Our own
//! offers say `actpass` (what RFC 5763 required of offerers and every browser accepts;
//! RFC 8842 now also allows a fixed role there, which older browsers refuse) and
//! [`check_answer`] accepts only `active` back (RFC 5763 recommends browsers answer
//! `active` to `actpass`), so the SFU is the DTLS server on every connection.

use super::local::{Codec, Extension, LocalParams};
use super::model::{
    Direction, Extmap, Fmtp, Group, MediaDescription, MediaKind, Msid, Origin, Proto, Rid,
    RidDirection, RtcpFb, RtpMap, SessionDescription, Setup, Simulcast, SsrcAttr, SsrcGroup,
};

/// Why an offer cannot be answered (or an answer to our offer is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// An accepted section has no ICE ufrag/pwd (own or session-level).
    #[error("mid {0}: no ICE credentials")]
    NoIceCredentials(String),
    /// An accepted section has no SHA-256 fingerprint.
    #[error("mid {0}: no sha-256 fingerprint")]
    NoFingerprint(String),
    /// The DTLS role is one we cannot take (we are always the DTLS server).
    #[error("mid {0}: setup {1:?} leaves us no DTLS server role")]
    BadSetup(String, Option<Setup>),
    /// A section without a mid (JSEP requires one with BUNDLE).
    #[error("media section {0} has no mid")]
    NoMid(usize),
    /// Two sections with the same mid.
    #[error("mid {0} appears twice")]
    DuplicateMid(String),
    /// The answer does not match our offer (count/order of sections, mids).
    #[error("answer does not match the offer: {0}")]
    Mismatch(&'static str),
}

/// Header extensions of an offered section that we understand, with the offer's ids.
fn accepted_extmaps(
    offered: &MediaDescription,
    session: &[Extmap],
    params: &LocalParams,
    video: bool,
) -> Vec<Extmap> {
    offered
        .extmaps
        .iter()
        .chain(session)
        .filter_map(|e| {
            let ext = Extension::from_uri(&e.uri)?;
            let wanted = params.extensions.contains(&ext)
                && if video {
                    ext.for_video()
                } else {
                    ext.for_audio()
                };
            wanted.then(|| Extmap {
                id: e.id,
                direction: None,
                uri: e.uri.clone(),
                attributes: None,
            })
        })
        .fold(Vec::new(), |mut acc, e| {
            if !acc.iter().any(|x: &Extmap| x.id == e.id || x.uri == e.uri) {
                acc.push(e);
            }
            acc
        })
}

/// Feedback we accept for a codec.
fn wanted_fb(video: bool, fb: &RtcpFb) -> bool {
    match (fb.kind.as_str(), fb.param.as_deref()) {
        ("transport-cc", None) => true,
        ("nack", None) | ("nack", Some("pli")) | ("ccm", Some("fir")) => video,
        _ => false,
    }
}

/// Picks, in the offer's order, the codecs we forward and their RTX payload types, and
/// fills the answer section's rtpmap/fmtp/rtcp-fb with the offer's numbering.
fn choose_codecs(offered: &MediaDescription, params: &LocalParams, out: &mut MediaDescription) {
    let video = offered.kind == MediaKind::Video;
    let mut formats = Vec::new();
    for pt in offered.payload_types() {
        let Some(map) = offered.rtpmap(pt) else {
            continue;
        };
        let fmtp = offered.fmtp(pt);
        let Some(codec) = params.codecs.iter().copied().find(|c| {
            c.is_video() == video && c.matches(&map.encoding, map.clock_rate, map.channels, fmtp)
        }) else {
            continue;
        };
        // One payload type per codec is enough (Chromium offers H.264 several times).
        if out
            .rtpmaps
            .iter()
            .any(|r| r.encoding.eq_ignore_ascii_case(codec.encoding()))
        {
            continue;
        }
        formats.push(pt.to_string());
        out.rtpmaps.push(RtpMap {
            payload_type: pt,
            encoding: map.encoding.clone(),
            clock_rate: map.clock_rate,
            channels: map.channels,
        });
        if let Some(f) = codec.fmtp() {
            out.fmtps.push(Fmtp {
                payload_type: pt,
                params: f.to_owned(),
            });
        }
        for fb in offered.rtcp_fb_for(pt).filter(|fb| wanted_fb(video, fb)) {
            out.rtcp_fbs.push(RtcpFb {
                payload_type: Some(pt),
                kind: fb.kind.clone(),
                param: fb.param.clone(),
            });
        }
        if !codec.is_video() {
            continue;
        }
        // The offer's RTX for this payload type (rtx/90000 with apt=<pt>).
        let rtx = offered.payload_types().find(|&r| {
            offered
                .rtpmap(r)
                .is_some_and(|m| m.encoding.eq_ignore_ascii_case("rtx") && m.clock_rate == 90_000)
                && offered
                    .fmtp(r)
                    .and_then(|f| f.param("apt"))
                    .is_some_and(|apt| apt == pt.to_string())
        });
        if let Some(r) = rtx {
            formats.push(r.to_string());
            out.rtpmaps.push(RtpMap {
                payload_type: r,
                encoding: "rtx".to_owned(),
                clock_rate: 90_000,
                channels: None,
            });
            out.fmtps.push(Fmtp {
                payload_type: r,
                params: format!("apt={pt}"),
            });
        }
    }
    out.formats = formats;
}

/// A rejected section: port 0, the offered protocol and first format, the mid kept.
fn rejected(offered: &MediaDescription) -> MediaDescription {
    let first = offered
        .formats
        .first()
        .cloned()
        .unwrap_or_else(|| "0".into());
    let mut m = MediaDescription::new(offered.kind.clone(), 0, offered.proto.clone(), vec![first]);
    m.connection = Some("IN IP4 0.0.0.0".into());
    m.mid = offered.mid.clone();
    if offered.proto == Proto::UdpTlsRtpSavpf {
        m.direction = Some(Direction::Inactive);
    }
    m
}

/// Transport attributes shared by every section we accept (BUNDLE: one transport).
fn add_transport(m: &mut MediaDescription, params: &LocalParams, setup: Setup) {
    let (conn, port) = params.default_address();
    m.port = port;
    m.connection = Some(conn);
    m.ice_ufrag = Some(params.ice_ufrag.clone());
    m.ice_pwd = Some(params.ice_pwd.clone());
    m.fingerprints = vec![params.fingerprint()];
    m.setup = Some(setup);
    m.candidates = params.candidate_lines();
    m.end_of_candidates = true;
}

fn session_shell(params: &LocalParams) -> SessionDescription {
    SessionDescription {
        origin: Origin {
            username: "-".into(),
            session_id: params.session_id.to_string(),
            session_version: params.session_version,
            address: "IN IP4 127.0.0.1".into(),
        },
        session_name: "-".into(),
        ice_lite: true,
        msid_semantic: Some("WMS *".into()),
        other: vec!["t=0 0".into()],
        ..SessionDescription::default()
    }
}

/// Checks an offered section's transport and returns its mid.
fn check_transport(
    offer: &SessionDescription,
    m: &MediaDescription,
    index: usize,
) -> Result<String, NegotiationError> {
    let mid = m.mid.clone().ok_or(NegotiationError::NoMid(index))?;
    if offer.ice_ufrag_of(m).is_none() || offer.ice_pwd_of(m).is_none() {
        return Err(NegotiationError::NoIceCredentials(mid));
    }
    if offer.sha256_fingerprint_of(m).is_none() {
        return Err(NegotiationError::NoFingerprint(mid));
    }
    match offer.setup_of(m) {
        Some(Setup::Actpass | Setup::Active) => Ok(mid),
        s => Err(NegotiationError::BadSetup(mid, s)),
    }
}

/// Answers a browser's offer (the publisher direction).
///
/// Every section is answered in order with its mid. Audio and video sections over
/// `UDP/TLS/RTP/SAVPF` with rtcp-mux and at least one codec we forward are accepted
/// `recvonly` (an offered `sendonly`/`sendrecv`; `recvonly` and `inactive` offers are
/// answered `inactive`: subscribed media travels in SFU-initiated offers, see
/// docs/SIGNALING.md), with the offer's payload type numbers and extension ids,
/// RTX mapped with `apt`, and offered simulcast (`a=simulcast:send` + `a=rid ... send`)
/// mirrored as `recv`. Data channel sections are accepted when
/// [`LocalParams::data_channels`] is set. Everything else gets port 0. All accepted
/// sections form one BUNDLE group; the transport is ICE-lite with our host candidates.
pub fn answer(
    offer: &SessionDescription,
    params: &LocalParams,
) -> Result<SessionDescription, NegotiationError> {
    let mut sd = session_shell(params);
    sd.extmap_allow_mixed = offer.extmap_allow_mixed;
    let mut bundle = Vec::new();
    for (i, om) in offer.media.iter().enumerate() {
        let mid = om.mid.clone().ok_or(NegotiationError::NoMid(i))?;
        if offer.media[..i]
            .iter()
            .any(|p| p.mid.as_deref() == Some(&mid))
        {
            return Err(NegotiationError::DuplicateMid(mid));
        }
        // Port 0 rejects a section unless it is `a=bundle-only` (RFC 8843 6: an offerer
        // that wants it only inside the BUNDLE transport).
        let bundle_only = om.other.iter().any(|l| l == "a=bundle-only");
        if om.port == 0 && !bundle_only {
            sd.media.push(rejected(om));
            continue;
        }
        let m = match (&om.kind, &om.proto) {
            (MediaKind::Audio | MediaKind::Video, Proto::UdpTlsRtpSavpf) if om.rtcp_mux => {
                answer_rtp(offer, om, params)
            }
            (MediaKind::Application, Proto::UdpDtlsSctp)
                if params.data_channels && om.is_datachannel() =>
            {
                let mut m = MediaDescription::new(
                    MediaKind::Application,
                    9,
                    Proto::UdpDtlsSctp,
                    vec!["webrtc-datachannel".into()],
                );
                m.sctp_port = Some(5000);
                m.max_message_size = Some(om.max_message_size.unwrap_or(65_536).min(262_144));
                Some(m)
            }
            _ => None,
        };
        match m {
            Some(mut m) => {
                check_transport(offer, om, i)?;
                m.mid = Some(mid.clone());
                add_transport(&mut m, params, Setup::Passive);
                bundle.push(mid);
                sd.media.push(m);
            }
            None => sd.media.push(rejected(om)),
        }
    }
    if !bundle.is_empty() {
        sd.groups.push(Group {
            semantics: "BUNDLE".into(),
            mids: bundle,
        });
    }
    Ok(sd)
}

fn answer_rtp(
    offer: &SessionDescription,
    om: &MediaDescription,
    params: &LocalParams,
) -> Option<MediaDescription> {
    let video = om.kind == MediaKind::Video;
    let mut m = MediaDescription::new(om.kind.clone(), 9, Proto::UdpTlsRtpSavpf, Vec::new());
    choose_codecs(om, params, &mut m);
    if m.formats.is_empty() {
        return None;
    }
    m.extmaps = accepted_extmaps(om, &offer.extmaps, params, video);
    m.rtcp_mux = true;
    m.rtcp_rsize = om.rtcp_rsize;
    let offered_dir = om
        .direction
        .or(offer.direction)
        .unwrap_or(Direction::SendRecv);
    m.direction = Some(match offered_dir {
        Direction::SendOnly | Direction::SendRecv => Direction::RecvOnly,
        Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
    });
    if m.direction == Some(Direction::RecvOnly) {
        mirror_simulcast(om, &mut m);
    }
    Some(m)
}

/// Offered send rids and `a=simulcast:send` become our `recv` rids and list.
fn mirror_simulcast(om: &MediaDescription, m: &mut MediaDescription) {
    let Some(sim) = &om.simulcast else { return };
    if sim.send.is_empty() {
        return;
    }
    let accepted: Vec<u8> = m.payload_types().collect();
    // Keep only rids that were declared `send` in the offer.
    let declared = |rid: &str| {
        om.rids
            .iter()
            .any(|r| r.id == rid && r.direction == RidDirection::Send)
    };
    let recv: Vec<Vec<_>> = sim
        .send
        .iter()
        .map(|stream| {
            stream
                .iter()
                .filter(|alt| declared(&alt.rid))
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if recv.is_empty() {
        return;
    }
    for alt in recv.iter().flatten() {
        if let Some(r) = om.rids.iter().find(|r| r.id == alt.rid) {
            m.rids.push(Rid {
                id: r.id.clone(),
                direction: RidDirection::Recv,
                // Keep a pt= restriction only where it names payload types we accepted.
                payload_types: r
                    .payload_types
                    .iter()
                    .copied()
                    .filter(|pt| accepted.contains(pt))
                    .collect(),
                restrictions: Vec::new(),
            });
        }
    }
    m.simulcast = Some(Simulcast {
        send: Vec::new(),
        recv,
    });
}

/// One track the SFU sends to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingTrack {
    /// The section's mid (stable for the life of the peer connection).
    pub mid: String,
    /// Audio (Opus) or video (VP8/H.264).
    pub kind: MediaKind,
    /// `msid` stream id (the publishing participant).
    pub stream_id: String,
    /// `msid` track id (the SFU's track id).
    pub track_id: String,
    /// The SSRC the SFU sends it with.
    pub ssrc: u32,
    /// The RTX SSRC (video).
    pub rtx_ssrc: Option<u32>,
    /// RTCP CNAME.
    pub cname: String,
    /// The codecs its publisher sends (what the publisher's section negotiated): only
    /// these (and their RTX) are offered, so a browser that cannot receive them rejects
    /// the section instead of accepting one the SFU would never send anything in.
    /// Empty: every codec of the kind we support.
    pub codecs: Vec<Codec>,
}

/// A section of an SFU-initiated offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferSection {
    /// A track being sent (`sendonly`).
    Track(OutgoingTrack),
    /// A section whose track was removed: kept (m-lines are never deleted, RFC 8829
    /// 5.2.2) with port 0 so the mid can be recycled later.
    Closed {
        /// Its mid.
        mid: String,
        /// Its kind.
        kind: MediaKind,
    },
}

/// Builds the SFU's offer to a subscriber: one `sendonly` section per track with our
/// SSRCs, RTX in an `ssrc-group:FID`, `msid`, the codecs its publisher sends (those we
/// support, see [`OutgoingTrack::codecs`]; the browser picks in its answer or rejects
/// the section), our extension ids, BUNDLE over all open sections,
/// `setup:actpass`, ICE-lite with our candidates. Sections must keep their order across
/// re-offers (the caller appends new tracks and closes removed ones).
pub fn offer(
    params: &LocalParams,
    sections: &[OfferSection],
) -> Result<SessionDescription, NegotiationError> {
    let mut sd = session_shell(params);
    sd.extmap_allow_mixed = true;
    let mut bundle = Vec::new();
    for (i, s) in sections.iter().enumerate() {
        let mid = match s {
            OfferSection::Track(t) => &t.mid,
            OfferSection::Closed { mid, .. } => mid,
        };
        if sections[..i].iter().any(|p| match p {
            OfferSection::Track(t) => &t.mid == mid,
            OfferSection::Closed { mid: m, .. } => m == mid,
        }) {
            return Err(NegotiationError::DuplicateMid(mid.clone()));
        }
        match s {
            OfferSection::Closed { mid, kind } => {
                let mut m = MediaDescription::new(
                    kind.clone(),
                    0,
                    Proto::UdpTlsRtpSavpf,
                    vec![
                        if *kind == MediaKind::Audio {
                            "111"
                        } else {
                            "96"
                        }
                        .into(),
                    ],
                );
                m.connection = Some("IN IP4 0.0.0.0".into());
                m.mid = Some(mid.clone());
                m.direction = Some(Direction::Inactive);
                sd.media.push(m);
            }
            OfferSection::Track(t) => {
                sd.media.push(offer_track(params, t));
                bundle.push(t.mid.clone());
            }
        }
    }
    if !bundle.is_empty() {
        sd.groups.push(Group {
            semantics: "BUNDLE".into(),
            mids: bundle,
        });
    }
    Ok(sd)
}

fn offer_track(params: &LocalParams, t: &OutgoingTrack) -> MediaDescription {
    let video = t.kind == MediaKind::Video;
    let mut m = MediaDescription::new(t.kind.clone(), 9, Proto::UdpTlsRtpSavpf, Vec::new());
    for codec in params
        .codecs
        .iter()
        .copied()
        .filter(|c| c.is_video() == video && (t.codecs.is_empty() || t.codecs.contains(c)))
    {
        let (pt, rtx) = codec.default_payload_types();
        m.formats.push(pt.to_string());
        m.rtpmaps.push(RtpMap {
            payload_type: pt,
            encoding: codec.encoding().into(),
            clock_rate: codec.clock_rate(),
            channels: codec.channels(),
        });
        if let Some(f) = codec.fmtp() {
            m.fmtps.push(Fmtp {
                payload_type: pt,
                params: f.into(),
            });
        }
        let mut fb = vec![("transport-cc", None)];
        if video {
            fb.extend([("ccm", Some("fir")), ("nack", None), ("nack", Some("pli"))]);
        }
        for (kind, param) in fb {
            m.rtcp_fbs.push(RtcpFb {
                payload_type: Some(pt),
                kind: kind.into(),
                param: param.map(Into::into),
            });
        }
        if let Some(r) = rtx.filter(|_| video) {
            m.formats.push(r.to_string());
            m.rtpmaps.push(RtpMap {
                payload_type: r,
                encoding: "rtx".into(),
                clock_rate: 90_000,
                channels: None,
            });
            m.fmtps.push(Fmtp {
                payload_type: r,
                params: format!("apt={pt}"),
            });
        }
    }
    for (i, ext) in Extension::ALL.iter().copied().enumerate() {
        // rid/repaired-rid are for receiving simulcast; we send one layer per track.
        let useful = !matches!(ext, Extension::Rid | Extension::RepairedRid)
            && params.extensions.contains(&ext)
            && if video {
                ext.for_video()
            } else {
                ext.for_audio()
            };
        if useful {
            m.extmaps.push(Extmap {
                id: u8::try_from(i + 1).unwrap_or(14),
                direction: None,
                uri: ext.uri().into(),
                attributes: None,
            });
        }
    }
    m.mid = Some(t.mid.clone());
    m.direction = Some(Direction::SendOnly);
    m.rtcp_mux = true;
    m.rtcp_rsize = true;
    m.msid = Some(Msid {
        stream: t.stream_id.clone(),
        track: Some(t.track_id.clone()),
    });
    let mut ssrcs = vec![t.ssrc];
    if let Some(rtx) = t.rtx_ssrc.filter(|_| video) {
        ssrcs.push(rtx);
        m.ssrc_groups.push(SsrcGroup {
            semantics: "FID".into(),
            ssrcs: ssrcs.clone(),
        });
    }
    for s in ssrcs {
        m.ssrcs.push(SsrcAttr {
            ssrc: s,
            attribute: "cname".into(),
            value: Some(t.cname.clone()),
        });
        m.ssrcs.push(SsrcAttr {
            ssrc: s,
            attribute: "msid".into(),
            value: Some(format!("{} {}", t.stream_id, t.track_id)),
        });
    }
    add_transport(&mut m, params, Setup::Actpass);
    m
}

/// Checks a subscriber's answer to our offer: same sections in the same order with the
/// same mids, DTLS `active` with a SHA-256 fingerprint, ICE credentials, and for every
/// accepted section the payload types it chose are ones we offered. Returns, per
/// section, the chosen primary payload type (`None` for a rejected section).
pub fn check_answer(
    offer: &SessionDescription,
    answer: &SessionDescription,
) -> Result<Vec<Option<u8>>, NegotiationError> {
    if offer.media.len() != answer.media.len() {
        return Err(NegotiationError::Mismatch("number of media sections"));
    }
    let mut chosen = Vec::with_capacity(answer.media.len());
    for (i, (o, a)) in offer.media.iter().zip(&answer.media).enumerate() {
        if o.mid != a.mid || o.kind != a.kind {
            return Err(NegotiationError::Mismatch("mid or kind of a section"));
        }
        if a.port == 0 || o.port == 0 {
            chosen.push(None);
            continue;
        }
        check_transport_answer(answer, a, i)?;
        let offered: Vec<u8> = o.payload_types().collect();
        let pt = a
            .payload_types()
            .find(|pt| offered.contains(pt) && o.rtpmap(*pt).is_some_and(|m| m.encoding != "rtx"))
            .ok_or(NegotiationError::Mismatch("payload type not offered"))?;
        chosen.push(Some(pt));
    }
    Ok(chosen)
}

fn check_transport_answer(
    answer: &SessionDescription,
    m: &MediaDescription,
    index: usize,
) -> Result<String, NegotiationError> {
    let mid = m.mid.clone().ok_or(NegotiationError::NoMid(index))?;
    if answer.ice_ufrag_of(m).is_none() || answer.ice_pwd_of(m).is_none() {
        return Err(NegotiationError::NoIceCredentials(mid));
    }
    if answer.sha256_fingerprint_of(m).is_none() {
        return Err(NegotiationError::NoFingerprint(mid));
    }
    match answer.setup_of(m) {
        Some(Setup::Active) => Ok(mid),
        s => Err(NegotiationError::BadSetup(mid, s)),
    }
}

/// The codec of a payload type in a description section (for the forwarding tables).
pub fn codec_of(m: &MediaDescription, pt: u8) -> Option<Codec> {
    let map = m.rtpmap(pt)?;
    [Codec::Opus, Codec::Vp8, Codec::H264]
        .into_iter()
        .find(|c| c.matches(&map.encoding, map.clock_rate, map.channels, m.fmtp(pt)))
}
