//! The load client's session descriptions: the publisher offer (Chromium's audio +
//! three-layer simulcast offer from the relay's SDP fixtures, with our ICE credentials,
//! certificate fingerprint and audio SSRC), the subscriber answer to the SFU's offer, and
//! what the client needs out of the SFU's descriptions (its ICE credentials, certificate
//! fingerprint, UDP candidate, payload types and header extension ids).
//!
//! Exists so a synthetic participant negotiates exactly like a browser would, through the
//! same `relay::sdp` parser the SFU uses, without a browser.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use relay::rtp::ExtMap;
use relay::sdp::{Extension, MediaKind, parse};

/// Chromium's audio + VP8/H.264 simulcast (q, h, f) offer, as kept in the relay's tests.
const TEMPLATE: &str = include_str!("../../../relay/src/sdp/fixtures/chrome_av_simulcast.sdp");
/// The template's audio SSRC (replaced by the participant's own).
const TEMPLATE_AUDIO_SSRC: &str = "2890844526";

/// The publisher connection's offer: the template's audio (mid 0) and video (mid 1,
/// rids q/h/f) sections with our ICE credentials, fingerprint and audio SSRC. The data
/// channel section is left out (the SFU terminates no SCTP).
pub fn publisher_offer(ufrag: &str, pwd: &str, fingerprint: &str, audio_ssrc: u32) -> String {
    let mut out = String::with_capacity(TEMPLATE.len());
    for line in TEMPLATE.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=application") {
            break;
        }
        let rewritten = if line.starts_with("a=group:BUNDLE") {
            "a=group:BUNDLE 0 1".to_owned()
        } else if line.starts_with("a=ice-ufrag:") {
            format!("a=ice-ufrag:{ufrag}")
        } else if line.starts_with("a=ice-pwd:") {
            format!("a=ice-pwd:{pwd}")
        } else if line.starts_with("a=fingerprint:") {
            format!("a=fingerprint:sha-256 {fingerprint}")
        } else if let Some(rest) = line.strip_prefix("a=ssrc:") {
            let rest = rest.strip_prefix(TEMPLATE_AUDIO_SSRC).unwrap_or(rest);
            format!("a=ssrc:{audio_ssrc}{rest}")
        } else {
            line.to_owned()
        };
        out.push_str(&rewritten);
        out.push_str("\r\n");
    }
    out
}

/// Our answer to the SFU's subscriber offer, written from the offer's text (not through
/// `relay::sdp::parse`, which caps descriptions at 64 KiB: the SFU's offer in a
/// 200-participant room has one section per subscribed track, ~600 bytes each). Compact
/// like a minimal browser answer so that it stays below the server's 64 KiB message cap:
/// ICE credentials and fingerprint at session level; per section its mid, the direction
/// flipped (`sendonly` → `recvonly`), `setup:active` (per section as browsers write it:
/// Janus reads it only there), rtcp-mux, and the first non-RTX
/// payload type the SFU offered with its rtpmap/fmtp. Rejected sections (port 0) stay
/// rejected. No candidates: the SFU is ICE-lite and learns our address from our checks.
pub fn subscriber_answer(
    offer: &str,
    ufrag: &str,
    pwd: &str,
    fingerprint: [u8; 32],
) -> Result<String> {
    let mut out = String::with_capacity(offer.len() / 4);
    out.push_str("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in offer.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("m=") {
            sections.push(vec![line]);
        } else if let Some(s) = sections.last_mut() {
            s.push(line);
        } else if line.starts_with("a=group:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if sections.is_empty() {
        bail!("the SFU's offer has no m= section");
    }
    out.push_str(&format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {}\r\n",
        relay::dtls::format_fingerprint(&fingerprint)
    ));
    for lines in &sections {
        let m: Vec<&str> = lines[0]
            .trim_start_matches("m=")
            .split_whitespace()
            .collect();
        let [kind, port, proto, formats @ ..] = &m[..] else {
            bail!("bad m= line {:?}", lines[0]);
        };
        let mid = lines
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .context("a section without a=mid")?;
        let is_rtx = |pt: &str| {
            lines.iter().any(|l| {
                l.strip_prefix("a=rtpmap:")
                    .is_some_and(|r| r.starts_with(&format!("{pt} rtx/")))
            })
        };
        let pt = formats
            .iter()
            .find(|pt| !is_rtx(pt))
            .context("no payload type")?;
        let accepted = *port != "0";
        out.push_str(&format!(
            "m={kind} {} {proto} {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n",
            if accepted { "9" } else { "0" }
        ));
        if !accepted {
            continue;
        }
        let direction = if lines.contains(&"a=sendonly") || lines.contains(&"a=sendrecv") {
            "recvonly"
        } else {
            "inactive"
        };
        out.push_str(&format!(
            "a={direction}\r\na=setup:active\r\na=rtcp-mux\r\n"
        ));
        for prefix in [format!("a=rtpmap:{pt} "), format!("a=fmtp:{pt} ")] {
            if let Some(l) = lines.iter().find(|l| l.starts_with(&prefix)) {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
    }
    Ok(out)
}

/// The SFU's ICE credentials, fingerprint and first UDP IPv4 candidate, read from the
/// text of its (possibly > 64 KiB) subscriber offer.
pub fn offer_transport(sdp: &str) -> Result<RemoteParams> {
    let attr = |name: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(name))
            .map(str::to_owned)
    };
    let ufrag = attr("a=ice-ufrag:").context("no ice-ufrag")?;
    let pwd = attr("a=ice-pwd:").context("no ice-pwd")?;
    let fp_text = attr("a=fingerprint:sha-256 ").context("no sha-256 fingerprint")?;
    let bytes: Vec<u8> = fp_text
        .split(':')
        .map(|h| u8::from_str_radix(h.trim(), 16))
        .collect::<Result<_, _>>()
        .context("bad fingerprint")?;
    let fingerprint = <[u8; 32]>::try_from(bytes.as_slice())
        .ok()
        .context("fingerprint is not 32 bytes")?;
    let candidate = sdp
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("a="))
        .filter_map(|c| relay::sdp::parse_candidate_line(c).ok())
        .filter(|c| c.transport == "udp" && c.component == 1)
        .find_map(|c| Some(SocketAddr::new(c.address.parse().ok()?, c.port)))
        .filter(SocketAddr::is_ipv4)
        .context("no UDP IPv4 candidate")?;
    Ok(RemoteParams {
        ufrag,
        pwd,
        fingerprint,
        candidate,
        ext: ExtMap::default(),
        opus_pt: None,
        vp8_pt: None,
    })
}

/// Our DTLS role against a description from the SFU, from its first `a=setup:`: it
/// says `active` (Janus's answers do) → we are the DTLS server; `passive` → client; an
/// offer's `actpass` → client (we answer `setup:active`, as browsers do).
pub fn our_dtls_role(sdp: &str) -> relay::dtls::Role {
    let setup = sdp
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=setup:"));
    match setup {
        Some(s) if s.trim() == "active" => relay::dtls::Role::Server,
        _ => relay::dtls::Role::Client,
    }
}

/// What the client reads out of one of the SFU's descriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParams {
    /// The SFU's ICE username fragment.
    pub ufrag: String,
    /// The SFU's ICE password.
    pub pwd: String,
    /// SHA-256 of the SFU's DTLS certificate.
    pub fingerprint: [u8; 32],
    /// The SFU's first UDP IPv4 host candidate.
    pub candidate: SocketAddr,
    /// Header extension ids of the bundle.
    pub ext: ExtMap,
    /// Opus payload type (audio), if an audio section is accepted.
    pub opus_pt: Option<u8>,
    /// VP8 payload type (video), if a video section is accepted.
    pub vp8_pt: Option<u8>,
}

/// Reads [`RemoteParams`] from the SFU's answer (publisher) or offer (subscriber).
pub fn remote_params(sdp: &str) -> Result<RemoteParams> {
    let d = parse(sdp).context("parse the SFU's description")?;
    let Some(first) = d.media.iter().find(|m| m.port != 0) else {
        bail!("the SFU accepted no section");
    };
    let ufrag = d.ice_ufrag_of(first).context("no ice-ufrag")?.to_owned();
    let pwd = d.ice_pwd_of(first).context("no ice-pwd")?.to_owned();
    let fingerprint = d
        .sha256_fingerprint_of(first)
        .context("no sha-256 fingerprint")?;
    let candidate = d
        .media
        .iter()
        .flat_map(|m| &m.candidates)
        .filter(|c| c.transport == "udp" && c.component == 1)
        .find_map(|c| Some(SocketAddr::new(c.address.parse().ok()?, c.port)))
        .filter(SocketAddr::is_ipv4)
        .context("no UDP IPv4 candidate")?;
    let mut ext = ExtMap::default();
    let mut opus_pt = None;
    let mut vp8_pt = None;
    for m in d.media.iter().filter(|m| m.port != 0) {
        for e in d.extmaps.iter().chain(&m.extmaps) {
            let slot = match Extension::from_uri(&e.uri) {
                Some(Extension::AudioLevel) => &mut ext.audio_level,
                Some(Extension::TransportCc) => &mut ext.transport_cc,
                Some(Extension::Mid) => &mut ext.mid,
                Some(Extension::Rid) => &mut ext.rid,
                Some(Extension::RepairedRid) => &mut ext.repaired_rid,
                Some(Extension::AbsSendTime) => &mut ext.abs_send_time,
                None => continue,
            };
            slot.get_or_insert(e.id);
        }
        for r in &m.rtpmaps {
            match m.kind {
                MediaKind::Audio if r.encoding.eq_ignore_ascii_case("opus") => {
                    opus_pt.get_or_insert(r.payload_type);
                }
                MediaKind::Video if r.encoding.eq_ignore_ascii_case("vp8") => {
                    vp8_pt.get_or_insert(r.payload_type);
                }
                _ => {}
            }
        }
    }
    Ok(RemoteParams {
        ufrag,
        pwd,
        fingerprint,
        candidate,
        ext,
        opus_pt,
        vp8_pt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::dtls::format_fingerprint;
    use relay::sdp::{
        CandidateTransport, LocalCandidate, LocalParams, OutgoingTrack, answer, check_answer,
    };

    const FP: [u8; 32] = [0xAB; 32];

    #[test]
    fn dtls_role_follows_the_sfus_setup() {
        use relay::dtls::Role;
        assert_eq!(our_dtls_role("v=0\r\na=setup:active\r\n"), Role::Server);
        assert_eq!(our_dtls_role("v=0\r\na=setup:passive\r\n"), Role::Client);
        assert_eq!(our_dtls_role("v=0\r\na=setup:actpass\r\n"), Role::Client);
        assert_eq!(our_dtls_role("v=0\r\n"), Role::Client);
    }

    #[test]
    fn publisher_offer_carries_our_credentials_and_two_sections() {
        let text = publisher_offer(
            "uFrg",
            "passwordpasswordpassword",
            &format_fingerprint(&FP),
            12345,
        );
        let d = parse(&text).expect("our offer parses");
        assert_eq!(d.media.len(), 2);
        assert_eq!(d.media[0].mid.as_deref(), Some("0"));
        assert_eq!(d.media[1].mid.as_deref(), Some("1"));
        assert_eq!(d.bundle(), ["0", "1"]);
        for m in &d.media {
            assert_eq!(d.ice_ufrag_of(m), Some("uFrg"));
            assert_eq!(d.ice_pwd_of(m), Some("passwordpasswordpassword"));
            assert_eq!(d.sha256_fingerprint_of(m), Some(FP));
        }
        let rids: Vec<&str> = d.media[1].rids.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(rids, ["q", "h", "f"]);
        assert!(d.media[0].ssrcs.iter().all(|s| s.ssrc == 12345));
        assert!(!text.contains(TEMPLATE_AUDIO_SSRC));
        assert!(!text.contains("Kx3m"));
    }

    fn sfu_params() -> LocalParams {
        LocalParams::new(
            "sfuU",
            "sfupasswordsfupassword00",
            [0x11; 32],
            vec![
                LocalCandidate {
                    addr: "10.1.2.3:3479".parse().expect("addr"),
                    transport: CandidateTransport::TcpPassive,
                },
                LocalCandidate {
                    addr: "10.1.2.3:3479".parse().expect("addr"),
                    transport: CandidateTransport::Udp,
                },
            ],
        )
    }

    #[test]
    fn sfu_answer_to_our_offer_gives_its_credentials_candidate_and_ids() {
        let offer = parse(&publisher_offer(
            "ab12",
            "p".repeat(24).as_str(),
            &format_fingerprint(&FP),
            7,
        ))
        .expect("offer parses");
        let a = answer(&offer, &sfu_params()).expect("the SFU answers our offer");
        let r = remote_params(&a.to_string()).expect("we read the answer");
        assert_eq!(r.ufrag, "sfuU");
        assert_eq!(r.pwd, "sfupasswordsfupassword00");
        assert_eq!(r.fingerprint, [0x11; 32]);
        assert_eq!(r.candidate, "10.1.2.3:3479".parse().expect("addr"));
        // The answer keeps the offer's ids (template: audio level 1, mid 4, rid 10).
        assert_eq!(r.ext.audio_level, Some(1));
        assert_eq!(r.ext.mid, Some(4));
        assert_eq!(r.ext.rid, Some(10));
        assert_eq!(r.opus_pt, Some(111));
        assert_eq!(r.vp8_pt, Some(96));
        assert_eq!(a.media[1].rids.len(), 3, "simulcast mirrored");
    }

    #[test]
    fn our_subscriber_answer_passes_the_sfus_check() {
        let tracks = vec![
            relay::sdp::OfferSection::Track(OutgoingTrack {
                mid: "0".into(),
                kind: MediaKind::Audio,
                stream_id: "PA_1".into(),
                track_id: "TR_1".into(),
                ssrc: 1111,
                rtx_ssrc: None,
                cname: "sfu".into(),
                codecs: Vec::new(),
            }),
            relay::sdp::OfferSection::Track(OutgoingTrack {
                mid: "1".into(),
                kind: MediaKind::Video,
                stream_id: "PA_1".into(),
                track_id: "TR_2".into(),
                ssrc: 2222,
                rtx_ssrc: Some(3333),
                cname: "sfu".into(),
                codecs: Vec::new(),
            }),
            relay::sdp::OfferSection::Closed {
                mid: "2".into(),
                kind: MediaKind::Video,
            },
        ];
        let offer = relay::sdp::offer(&sfu_params(), &tracks).expect("SFU offer");
        let text =
            subscriber_answer(&offer.to_string(), "cliU", &"q".repeat(24), FP).expect("we answer");
        let ans = parse(&text).expect("answer parses");
        let chosen = check_answer(&offer, &ans).expect("the SFU accepts our answer");
        assert_eq!(chosen[2], None, "the closed section stays closed");
        assert!(chosen[0].is_some() && chosen[1].is_some());
        assert_eq!(
            ans.media[0].direction,
            Some(relay::sdp::Direction::RecvOnly)
        );
        assert!(!ans.ice_lite);
        assert!(
            ans.media
                .iter()
                .all(|m| m.candidates.is_empty() && m.ssrcs.is_empty())
        );
        assert_eq!(ans.sha256_fingerprint_of(&ans.media[1]), Some(FP));
        let r = offer_transport(&offer.to_string()).expect("offer readable");
        assert_eq!(r.ufrag, "sfuU");
        assert_eq!(r.pwd, "sfupasswordsfupassword00");
        assert_eq!(r.fingerprint, [0x11; 32]);
        assert_eq!(r.candidate, "10.1.2.3:3479".parse().expect("addr"));
    }

    #[test]
    fn answer_to_a_200_participant_offer_fits_the_message_cap() {
        let tracks: Vec<relay::sdp::OfferSection> = (0..210)
            .map(|i| {
                relay::sdp::OfferSection::Track(OutgoingTrack {
                    mid: i.to_string(),
                    kind: if i < 200 {
                        MediaKind::Audio
                    } else {
                        MediaKind::Video
                    },
                    stream_id: format!("PA_{i}"),
                    track_id: format!("TR_{i}"),
                    ssrc: 1000 + i,
                    rtx_ssrc: (i >= 200).then_some(5000 + i),
                    cname: "sfu".into(),
                    codecs: Vec::new(),
                })
            })
            .collect();
        let offer = relay::sdp::offer(&sfu_params(), &tracks).expect("SFU offer");
        let text = offer.to_string();
        // Bigger than a client message may be: the answer must be much smaller.
        assert!(
            text.len() > relay::signaling::MAX_MESSAGE_LEN,
            "the offer is {} bytes",
            text.len()
        );
        let answer = subscriber_answer(&text, "cliU", &"q".repeat(24), FP).expect("we answer");
        assert!(
            answer.len() < relay::signaling::MAX_MESSAGE_LEN - 200,
            "{} bytes",
            answer.len()
        );
        let ans = parse(&answer).expect("answer parses");
        let chosen = check_answer(&offer, &ans).expect("the SFU accepts our answer");
        assert!(chosen.iter().all(Option::is_some));
        assert_eq!(offer_transport(&text).expect("transport").ufrag, "sfuU");
    }
}
