//! The parsed shape of a session description: the session level, its media sections and
//! the attributes a WebRTC SFU acts on. Anything else is kept verbatim in `other` so a
//! description survives a parse/write round trip.

use std::fmt;

/// A whole session description (RFC 8866), as Chromium and Firefox write them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionDescription {
    /// `o=` line.
    pub origin: Origin,
    /// `s=` line (browsers write `-`).
    pub session_name: String,
    /// Session-level `c=` (`IN IP4 0.0.0.0`), if any.
    pub connection: Option<String>,
    /// `a=group:` lines (BUNDLE, LS, ...).
    pub groups: Vec<Group>,
    /// Session-level `a=ice-ufrag`.
    pub ice_ufrag: Option<String>,
    /// Session-level `a=ice-pwd`.
    pub ice_pwd: Option<String>,
    /// Session-level `a=ice-options` tokens.
    pub ice_options: Vec<String>,
    /// `a=ice-lite`.
    pub ice_lite: bool,
    /// Session-level `a=fingerprint` lines (Firefox writes them here).
    pub fingerprints: Vec<Fingerprint>,
    /// Session-level `a=setup`.
    pub setup: Option<Setup>,
    /// Session-level `a=extmap` lines.
    pub extmaps: Vec<Extmap>,
    /// `a=extmap-allow-mixed` (RFC 8285 one- and two-byte headers mixed).
    pub extmap_allow_mixed: bool,
    /// `a=msid-semantic:` value (`WMS *`, ` WMS`).
    pub msid_semantic: Option<String>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    /// Other session-level lines (`b=`, `t=` extras, unknown attributes), kept verbatim.
    pub other: Vec<String>,
    /// The `m=` sections in order.
    pub media: Vec<MediaDescription>,
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Username (`-` or `mozilla...THIS_IS_SDPARTA-...`).
    pub username: String,
    /// Session id (decimal digits; Chromium uses up to 19 digits, kept as text).
    pub session_id: String,
    /// Session version, bumped on every new offer/answer.
    pub session_version: u64,
    /// `IN IP4 127.0.0.1` etc.
    pub address: String,
}

impl Default for Origin {
    fn default() -> Self {
        Self {
            username: "-".into(),
            session_id: "0".into(),
            session_version: 0,
            address: "IN IP4 127.0.0.1".into(),
        }
    }
}

/// `a=group:<semantics> <mid>...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `BUNDLE`, `LS`, ...
    pub semantics: String,
    /// The mids in the group.
    pub mids: Vec<String>,
}

/// `a=fingerprint:<hash> <hex:hex:...>` (RFC 8122).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hash function name, lower case (`sha-256`).
    pub hash: String,
    /// The digest bytes.
    pub value: Vec<u8>,
}

impl Fingerprint {
    /// A SHA-256 fingerprint.
    pub fn sha256(value: [u8; 32]) -> Self {
        Self {
            hash: "sha-256".into(),
            value: value.to_vec(),
        }
    }
}

/// `a=setup` (RFC 4145 / RFC 8842): which side opens the DTLS association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Offerer lets the answerer choose.
    Actpass,
    /// This side is the DTLS client.
    Active,
    /// This side is the DTLS server.
    Passive,
    /// `holdconn` (not used by browsers).
    Holdconn,
}

impl Setup {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "actpass" => Self::Actpass,
            "active" => Self::Active,
            "passive" => Self::Passive,
            "holdconn" => Self::Holdconn,
            _ => return None,
        })
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Actpass => "actpass",
            Self::Active => "active",
            Self::Passive => "passive",
            Self::Holdconn => "holdconn",
        }
    }
}

/// Media direction attribute (RFC 8866 6.7) and extmap direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `sendrecv`.
    SendRecv,
    /// `sendonly`.
    SendOnly,
    /// `recvonly`.
    RecvOnly,
    /// `inactive`.
    Inactive,
}

impl Direction {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sendrecv" => Self::SendRecv,
            "sendonly" => Self::SendOnly,
            "recvonly" => Self::RecvOnly,
            "inactive" => Self::Inactive,
            _ => return None,
        })
    }

    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction seen from the other side (sendonly <-> recvonly).
    pub fn reversed(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            d => d,
        }
    }
}

/// `m=` media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaKind {
    /// `audio`.
    Audio,
    /// `video`.
    Video,
    /// `application` (data channels).
    Application,
    /// Anything else, verbatim.
    Other(String),
}

impl MediaKind {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "audio" => Self::Audio,
            "video" => Self::Video,
            "application" => Self::Application,
            o => Self::Other(o.to_owned()),
        }
    }

    /// The `m=` token.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Application => "application",
            Self::Other(o) => o,
        }
    }
}

/// `m=` transport protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proto {
    /// `UDP/TLS/RTP/SAVPF` (RFC 5764): DTLS-SRTP with feedback, what browsers offer.
    UdpTlsRtpSavpf,
    /// `UDP/DTLS/SCTP` (RFC 8841): data channels.
    UdpDtlsSctp,
    /// Anything else (`RTP/AVP`, `TCP/DTLS/SCTP`, ...), verbatim.
    Other(String),
}

impl Proto {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "UDP/TLS/RTP/SAVPF" => Self::UdpTlsRtpSavpf,
            "UDP/DTLS/SCTP" => Self::UdpDtlsSctp,
            o => Self::Other(o.to_owned()),
        }
    }

    /// The `m=` token.
    pub fn as_str(&self) -> &str {
        match self {
            Self::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
            Self::UdpDtlsSctp => "UDP/DTLS/SCTP",
            Self::Other(o) => o,
        }
    }
}

/// `a=extmap:<id>[/<direction>] <uri> [<attributes>]` (RFC 8285).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extmap {
    /// Extension id, 1-255 (1-14 one-byte, up to 255 two-byte).
    pub id: u8,
    /// Optional direction.
    pub direction: Option<Direction>,
    /// Extension URI.
    pub uri: String,
    /// Extension attributes, verbatim.
    pub attributes: Option<String>,
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type (0-127).
    pub payload_type: u8,
    /// Encoding name as written (`opus`, `VP8`, `H264`, `rtx`).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channels (audio).
    pub channels: Option<u16>,
}

/// `a=fmtp:<pt> <params>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    /// Payload type.
    pub payload_type: u8,
    /// The parameters verbatim (`minptime=10;useinbandfec=1`).
    pub params: String,
}

impl Fmtp {
    /// The value of `key=value` in a `;`-separated parameter list (keys compared
    /// case-insensitively, spaces around items ignored).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.split(';').find_map(|item| {
            let (k, v) = item.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
        })
    }
}

/// `a=rtcp-fb:<pt|*> <type> [<param>]` (RFC 4585).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcpFb {
    /// Payload type, `None` for `*`.
    pub payload_type: Option<u8>,
    /// `nack`, `ccm`, `goog-remb`, `transport-cc`, ...
    pub kind: String,
    /// `pli`, `fir`, ...
    pub param: Option<String>,
}

/// `a=ssrc:<ssrc> <attribute>[:<value>]` (RFC 5576).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrcAttr {
    /// The SSRC.
    pub ssrc: u32,
    /// `cname`, `msid`, ...
    pub attribute: String,
    /// Its value.
    pub value: Option<String>,
}

/// `a=ssrc-group:<semantics> <ssrc>...` (FID for RTX, SIM for legacy simulcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrcGroup {
    /// `FID`, `SIM`, `FEC-FR`, ...
    pub semantics: String,
    /// The SSRCs.
    pub ssrcs: Vec<u32>,
}

/// `a=msid:<stream id> [<track id>]` (RFC 8830).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msid {
    /// Stream id (`-` for none).
    pub stream: String,
    /// Track id (application data).
    pub track: Option<String>,
}

/// Direction of an `a=rid` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RidDirection {
    /// The writer of the SDP sends this rid.
    Send,
    /// The writer of the SDP receives this rid.
    Recv,
}

impl RidDirection {
    /// The token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Recv => "recv",
        }
    }
}

/// `a=rid:<id> <send|recv> [pt=<fmt>,...;][<restriction>=<value>;...]` (RFC 8851).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rid {
    /// The rid (alphanumeric, `-`, `_`).
    pub id: String,
    /// Send or receive.
    pub direction: RidDirection,
    /// `pt=` restriction: the payload types this rid may use (empty: any).
    pub payload_types: Vec<u8>,
    /// Other restrictions (`max-width=1280`, ...) as key and value.
    pub restrictions: Vec<(String, String)>,
}

/// One rid in a simulcast list, paused if written with `~`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulcastRid {
    /// The rid.
    pub rid: String,
    /// Written with a `~` prefix: initially paused.
    pub paused: bool,
}

/// `a=simulcast:` (RFC 8853): each stream is a list of alternatives (`;` separates
/// streams, `,` alternatives).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Simulcast {
    /// Streams the writer sends.
    pub send: Vec<Vec<SimulcastRid>>,
    /// Streams the writer receives.
    pub recv: Vec<Vec<SimulcastRid>>,
}

/// `a=candidate:` (RFC 8839), parsed only (ICE-lite: we check connectivity, not gather).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Foundation.
    pub foundation: String,
    /// Component id (1 with rtcp-mux).
    pub component: u16,
    /// `udp` / `tcp` (lower-cased).
    pub transport: String,
    /// Priority.
    pub priority: u32,
    /// Address (IP or an mDNS `.local` name).
    pub address: String,
    /// Port.
    pub port: u16,
    /// `host`, `srflx`, `prflx`, `relay`.
    pub typ: String,
    /// `raddr`, if any.
    pub related_address: Option<String>,
    /// `rport`, if any.
    pub related_port: Option<u16>,
    /// `tcptype`, if any.
    pub tcp_type: Option<String>,
    /// Other extension pairs (`generation 0`, `network-id 1`, `ufrag ...`).
    pub extensions: Vec<(String, String)>,
}

/// One `m=` section with its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// Media type.
    pub kind: MediaKind,
    /// Port (0 = rejected/disabled; 9 = the discard placeholder browsers use).
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// Formats: payload types for RTP, `webrtc-datachannel` for SCTP.
    pub formats: Vec<String>,
    /// `c=` line.
    pub connection: Option<String>,
    /// `a=mid`.
    pub mid: Option<String>,
    /// `a=ice-ufrag`.
    pub ice_ufrag: Option<String>,
    /// `a=ice-pwd`.
    pub ice_pwd: Option<String>,
    /// `a=ice-options` tokens.
    pub ice_options: Vec<String>,
    /// `a=fingerprint` lines.
    pub fingerprints: Vec<Fingerprint>,
    /// `a=setup`.
    pub setup: Option<Setup>,
    /// Direction attribute.
    pub direction: Option<Direction>,
    /// `a=rtcp-mux`.
    pub rtcp_mux: bool,
    /// `a=rtcp-rsize`.
    pub rtcp_rsize: bool,
    /// `a=extmap` lines.
    pub extmaps: Vec<Extmap>,
    /// `a=rtpmap` lines.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` lines.
    pub fmtps: Vec<Fmtp>,
    /// `a=rtcp-fb` lines.
    pub rtcp_fbs: Vec<RtcpFb>,
    /// `a=ssrc` lines.
    pub ssrcs: Vec<SsrcAttr>,
    /// `a=ssrc-group` lines.
    pub ssrc_groups: Vec<SsrcGroup>,
    /// `a=msid`.
    pub msid: Option<Msid>,
    /// `a=rid` lines.
    pub rids: Vec<Rid>,
    /// `a=simulcast`.
    pub simulcast: Option<Simulcast>,
    /// `a=candidate` lines.
    pub candidates: Vec<Candidate>,
    /// `a=end-of-candidates`.
    pub end_of_candidates: bool,
    /// `a=sctp-port` (RFC 8841).
    pub sctp_port: Option<u16>,
    /// `a=max-message-size` (RFC 8841).
    pub max_message_size: Option<u64>,
    /// Other lines of the section (`b=`, unknown attributes), verbatim.
    pub other: Vec<String>,
}

impl MediaDescription {
    /// An empty section of this kind, port and protocol.
    pub fn new(kind: MediaKind, port: u16, proto: Proto, formats: Vec<String>) -> Self {
        Self {
            kind,
            port,
            proto,
            formats,
            connection: None,
            mid: None,
            ice_ufrag: None,
            ice_pwd: None,
            ice_options: Vec::new(),
            fingerprints: Vec::new(),
            setup: None,
            direction: None,
            rtcp_mux: false,
            rtcp_rsize: false,
            extmaps: Vec::new(),
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            rtcp_fbs: Vec::new(),
            ssrcs: Vec::new(),
            ssrc_groups: Vec::new(),
            msid: None,
            rids: Vec::new(),
            simulcast: None,
            candidates: Vec::new(),
            end_of_candidates: false,
            sctp_port: None,
            max_message_size: None,
            other: Vec::new(),
        }
    }

    /// The payload types of an RTP section (formats that are numbers 0-127).
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok().filter(|pt| *pt < 128))
    }

    /// The `rtpmap` of a payload type.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|r| r.payload_type == pt)
    }

    /// The `fmtp` of a payload type.
    pub fn fmtp(&self, pt: u8) -> Option<&Fmtp> {
        self.fmtps.iter().find(|f| f.payload_type == pt)
    }

    /// The `rtcp-fb` lines that apply to a payload type (its own and `*`).
    pub fn rtcp_fb_for(&self, pt: u8) -> impl Iterator<Item = &RtcpFb> + '_ {
        self.rtcp_fbs
            .iter()
            .filter(move |f| f.payload_type.is_none_or(|p| p == pt))
    }

    /// Whether this is a data channel section (`UDP/DTLS/SCTP webrtc-datachannel`).
    pub fn is_datachannel(&self) -> bool {
        self.proto == Proto::UdpDtlsSctp && self.formats.iter().any(|f| f == "webrtc-datachannel")
    }
}

impl SessionDescription {
    /// The mids of the first BUNDLE group (empty if none).
    pub fn bundle(&self) -> &[String] {
        self.groups
            .iter()
            .find(|g| g.semantics == "BUNDLE")
            .map_or(&[], |g| &g.mids)
    }

    /// The ICE username fragment of a section (its own, else the session's).
    pub fn ice_ufrag_of<'a>(&'a self, m: &'a MediaDescription) -> Option<&'a str> {
        m.ice_ufrag.as_deref().or(self.ice_ufrag.as_deref())
    }

    /// The ICE password of a section (its own, else the session's).
    pub fn ice_pwd_of<'a>(&'a self, m: &'a MediaDescription) -> Option<&'a str> {
        m.ice_pwd.as_deref().or(self.ice_pwd.as_deref())
    }

    /// The SHA-256 certificate fingerprint of a section (its own, else the session's):
    /// what the DTLS handshake verifies the peer's certificate against.
    pub fn sha256_fingerprint_of(&self, m: &MediaDescription) -> Option<[u8; 32]> {
        m.fingerprints
            .iter()
            .chain(&self.fingerprints)
            .find(|f| f.hash == "sha-256")
            .and_then(|f| <[u8; 32]>::try_from(f.value.as_slice()).ok())
    }

    /// The setup role of a section (its own, else the session's).
    pub fn setup_of(&self, m: &MediaDescription) -> Option<Setup> {
        m.setup.or(self.setup)
    }

    /// The section with this mid.
    pub fn media_by_mid(&self, mid: &str) -> Option<&MediaDescription> {
        self.media.iter().find(|m| m.mid.as_deref() == Some(mid))
    }
}

/// Upper-case hex with colons, as `a=fingerprint` writes digests.
pub(crate) struct HexColons<'a>(pub &'a [u8]);

impl fmt::Display for HexColons<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}
