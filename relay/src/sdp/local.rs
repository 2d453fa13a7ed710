//! What the SFU brings to a negotiation: its ICE credentials, certificate fingerprint,
//! host candidates, and the codecs and header extensions it forwards.

use std::net::SocketAddr;

use super::model::{Candidate, Fingerprint, Fmtp};
use crate::ice::{Transport as IceTransport, host_priority};

/// Codecs the SFU can forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus 48000/2 with in-band FEC.
    Opus,
    /// VP8.
    Vp8,
    /// H.264 constrained baseline (`profile-level-id=42e01f`), `packetization-mode=1`.
    H264,
}

impl Codec {
    /// The `rtpmap` encoding name.
    pub fn encoding(self) -> &'static str {
        match self {
            Self::Opus => "opus",
            Self::Vp8 => "VP8",
            Self::H264 => "H264",
        }
    }

    /// Clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Opus => 48_000,
            Self::Vp8 | Self::H264 => 90_000,
        }
    }

    /// Channels written in `rtpmap`.
    pub fn channels(self) -> Option<u16> {
        match self {
            Self::Opus => Some(2),
            _ => None,
        }
    }

    /// Whether this is a video codec (then it gets RTX and video feedback).
    pub fn is_video(self) -> bool {
        !matches!(self, Self::Opus)
    }

    /// The `fmtp` the SFU writes for it.
    pub fn fmtp(self) -> Option<&'static str> {
        match self {
            Self::Opus => Some("minptime=10;useinbandfec=1"),
            Self::Vp8 => None,
            Self::H264 => {
                Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
            }
        }
    }

    /// The payload type used in SFU-initiated offers (and its RTX payload type).
    pub fn default_payload_types(self) -> (u8, Option<u8>) {
        match self {
            Self::Opus => (111, None),
            Self::Vp8 => (96, Some(97)),
            Self::H264 => (102, Some(103)),
        }
    }

    /// Whether an offered `rtpmap` (+ `fmtp`) is this codec in a form we forward.
    pub fn matches(
        self,
        encoding: &str,
        clock_rate: u32,
        channels: Option<u16>,
        fmtp: Option<&Fmtp>,
    ) -> bool {
        if !encoding.eq_ignore_ascii_case(self.encoding()) || clock_rate != self.clock_rate() {
            return false;
        }
        match self {
            Self::Opus => channels == Some(2),
            Self::Vp8 => true,
            Self::H264 => {
                let Some(fmtp) = fmtp else { return false };
                let mode = fmtp.param("packetization-mode") == Some("1");
                // Constrained baseline: profile_idc 0x42 with constraint_set1 (0x40)
                // set; any level (we forward, we do not decode).
                let profile = fmtp.param("profile-level-id").is_some_and(|p| {
                    p.len() == 6
                        && p.is_ascii()
                        && p[..2].eq_ignore_ascii_case("42")
                        && u8::from_str_radix(&p[2..4], 16).is_ok_and(|c| c & 0x40 != 0)
                        && u8::from_str_radix(&p[4..6], 16).is_ok()
                });
                mode && profile
            }
        }
    }
}

/// RTP header extensions the SFU understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// RFC 6464 client-to-mixer audio level (speaker detection).
    AudioLevel,
    /// Transport-wide sequence numbers (TWCC feedback).
    TransportCc,
    /// RFC 8843 mid (BUNDLE demultiplexing).
    Mid,
    /// RFC 8852 rid (simulcast layer).
    Rid,
    /// RFC 8852 repaired-rid (RTX of a simulcast layer).
    RepairedRid,
    /// abs-send-time (REMB-era senders).
    AbsSendTime,
}

impl Extension {
    /// Every extension, in the order of their ids in SFU offers (id = index + 1).
    pub const ALL: [Self; 6] = [
        Self::AudioLevel,
        Self::AbsSendTime,
        Self::TransportCc,
        Self::Mid,
        Self::Rid,
        Self::RepairedRid,
    ];

    /// The URI.
    pub fn uri(self) -> &'static str {
        match self {
            Self::AudioLevel => "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            Self::TransportCc => {
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
            }
            Self::Mid => "urn:ietf:params:rtp-hdrext:sdes:mid",
            Self::Rid => "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            Self::RepairedRid => "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
            Self::AbsSendTime => "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        }
    }

    /// The extension with this URI.
    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.uri() == uri)
    }

    /// Whether it is used on audio sections.
    pub fn for_audio(self) -> bool {
        matches!(
            self,
            Self::AudioLevel | Self::TransportCc | Self::Mid | Self::AbsSendTime
        )
    }

    /// Whether it is used on video sections.
    pub fn for_video(self) -> bool {
        !matches!(self, Self::AudioLevel)
    }
}

/// Transport of a local host candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateTransport {
    /// UDP.
    Udp,
    /// ICE-TCP passive (RFC 6544): browsers connect to us.
    TcpPassive,
}

/// One of the SFU's host candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCandidate {
    /// Address browsers reach.
    pub addr: SocketAddr,
    /// UDP or TCP.
    pub transport: CandidateTransport,
}

impl LocalCandidate {
    /// The `candidate` line for it, as the `index`-th (0-based, most preferred first)
    /// candidate of its transport. Priority by [`crate::ice::host_priority`]: RFC 8445
    /// §5.1.2.1 with host type preference 126; a passive TCP candidate's local preference
    /// follows RFC 6544 §4.2 (direction preference 4), always below UDP's, so browsers
    /// use TCP only when UDP fails. The foundation differs per transport (RFC 8445
    /// §5.1.1.3) and per address.
    pub fn to_candidate(&self, index: usize) -> Candidate {
        let (transport, ice_transport, tcp_type, base) = match self.transport {
            CandidateTransport::Udp => ("udp", IceTransport::Udp, None, 1u32),
            CandidateTransport::TcpPassive => (
                "tcp",
                IceTransport::Tcp,
                Some("passive".to_owned()),
                1001u32,
            ),
        };
        let index = index.min(999);
        Candidate {
            foundation: format!("{}", base + u32::try_from(index).unwrap_or(999)),
            component: 1,
            transport: transport.to_owned(),
            priority: host_priority(ice_transport, index),
            address: self.addr.ip().to_string(),
            // RFC 6544: a passive candidate advertises its listening port.
            port: self.addr.port(),
            typ: "host".to_owned(),
            related_address: None,
            related_port: None,
            tcp_type,
            extensions: Vec::new(),
        }
    }
}

/// The SFU's side of a negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalParams {
    /// ICE username fragment (short-term credential, RFC 8445).
    pub ice_ufrag: String,
    /// ICE password.
    pub ice_pwd: String,
    /// SHA-256 of our DTLS certificate.
    pub fingerprint_sha256: [u8; 32],
    /// Host candidates (ICE-lite: all of them, no trickle).
    pub candidates: Vec<LocalCandidate>,
    /// Codecs, in preference order.
    pub codecs: Vec<Codec>,
    /// Header extensions.
    pub extensions: Vec<Extension>,
    /// Accept `webrtc-datachannel` sections (otherwise they are rejected with port 0).
    pub data_channels: bool,
    /// `o=` session id (keep it for the life of the peer connection).
    pub session_id: u64,
    /// `o=` session version (bump for every new description).
    pub session_version: u64,
}

impl LocalParams {
    /// Parameters with every supported codec and extension, no data channels.
    pub fn new(
        ice_ufrag: impl Into<String>,
        ice_pwd: impl Into<String>,
        fingerprint_sha256: [u8; 32],
        candidates: Vec<LocalCandidate>,
    ) -> Self {
        Self {
            ice_ufrag: ice_ufrag.into(),
            ice_pwd: ice_pwd.into(),
            fingerprint_sha256,
            candidates,
            codecs: vec![Codec::Opus, Codec::Vp8, Codec::H264],
            extensions: Extension::ALL.to_vec(),
            data_channels: false,
            session_id: 1,
            session_version: 1,
        }
    }

    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint::sha256(self.fingerprint_sha256)
    }

    /// The candidates as `candidate` lines (each numbered within its transport).
    pub fn candidate_lines(&self) -> Vec<Candidate> {
        let (mut udp, mut tcp) = (0, 0);
        self.candidates
            .iter()
            .map(|c| {
                let n = match c.transport {
                    CandidateTransport::Udp => &mut udp,
                    CandidateTransport::TcpPassive => &mut tcp,
                };
                *n += 1;
                c.to_candidate(*n - 1)
            })
            .collect()
    }

    /// `c=` and port of the m-lines: the first UDP candidate (else the first one).
    pub(crate) fn default_address(&self) -> (String, u16) {
        let first = self
            .candidates
            .iter()
            .find(|c| c.transport == CandidateTransport::Udp)
            .or(self.candidates.first());
        match first {
            Some(c) => {
                let fam = if c.addr.is_ipv4() { "IP4" } else { "IP6" };
                (format!("IN {fam} {}", c.addr.ip()), c.addr.port())
            }
            None => ("IN IP4 0.0.0.0".to_owned(), 9),
        }
    }
}
