//! The JSON messages of the signaling WebSocket (documented in docs/SIGNALING.md).
//!
//! Every message is one JSON object with a `"type"` field. Client messages are parsed
//! with [`parse_client`], which enforces the size cap, rejects unknown types and fields,
//! and validates values, mapping every failure to a stable [`ErrorCode`] the server
//! sends back in an `error` message. Server messages are written with
//! [`ServerMessage::to_json`].

use serde::{Deserialize, Serialize};

use super::token::{Claims, MAX_NAME_LEN, MAX_TOKEN_LEN, TokenError, verify};

/// Largest message the server accepts (WebSocket message payload, bytes), except for
/// `offer` and `answer` ([`MAX_SDP_MESSAGE_LEN`]).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Largest `offer` or `answer` message. A subscriber's description grows with the room:
/// one m-section per subscribed track, and Chromium writes 300-900 bytes per section in
/// its answer, so a 200-participant room's answer is well over [`MAX_MESSAGE_LEN`]. The
/// same bound as the SDP parser's ([`crate::sdp::MAX_SDP_LEN`]): a description that fits
/// in a message always fits the parser (JSON only adds escapes).
pub const MAX_SDP_MESSAGE_LEN: usize = crate::sdp::MAX_SDP_LEN;
/// Most tracks one `publish` may announce.
pub const MAX_PUBLISH_TRACKS: usize = 16;
/// Most track ids in one `subscribe` / `unpublish`.
pub const MAX_TRACK_IDS: usize = 256;
/// Most simulcast layers per track.
pub const MAX_SIMULCAST_LAYERS: usize = 3;
/// Longest trickled candidate string.
pub const MAX_CANDIDATE_LEN: usize = 1024;
/// Longest id (track id, mid, participant id).
pub const MAX_ID_LEN: usize = 64;

/// Stable error codes sent in `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not JSON.
    BadJson,
    /// The join token is malformed, badly signed or for another room.
    BadToken,
    /// The join token has expired.
    ExpiredToken,
    /// The room does not exist (and the token does not allow creating it).
    UnknownRoom,
    /// The message is larger than [`MAX_MESSAGE_LEN`] ([`MAX_SDP_MESSAGE_LEN`] for
    /// `offer` and `answer`).
    TooLarge,
    /// Too many messages; slow down.
    RateLimited,
    /// JSON, but not a valid message: unknown type or field, missing field, bad value,
    /// or a message not allowed in the current state.
    BadRequest,
    /// The server failed.
    Internal,
    /// A subscribed track's codec is one the subscriber's browser cannot receive (it
    /// rejected the section); the track is not forwarded to it.
    CodecUnsupported,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadToken => "bad_token",
            Self::ExpiredToken => "expired_token",
            Self::UnknownRoom => "unknown_room",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
            Self::CodecUnsupported => "codec_unsupported",
        }
    }
}

impl From<&TokenError> for ErrorCode {
    fn from(e: &TokenError) -> Self {
        match e {
            TokenError::Expired => Self::ExpiredToken,
            TokenError::NoSecret | TokenError::Secret(_) => Self::Internal,
            _ => Self::BadToken,
        }
    }
}

/// A refused client message: the code and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    /// Stable code.
    pub code: ErrorCode,
    /// Reason, for people.
    pub message: String,
}

impl ProtocolError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The `error` message to send back.
    pub fn to_message(&self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl From<&TokenError> for ProtocolError {
    fn from(e: &TokenError) -> Self {
        Self::new(ErrorCode::from(e), e.to_string())
    }
}

/// Room mode: media through the SFU, or peer-to-peer with only signaling and our
/// STUN/TURN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Selective forwarding through the relay.
    Sfu,
    /// 1:1 peer-to-peer; the relay forwards offers/answers/candidates between the two.
    P2p,
}

/// Which of a participant's two peer connections a message is about (SFU mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The connection the client publishes on (client offers, server answers).
    #[default]
    Publisher,
    /// The connection the client receives on (server offers, client answers).
    Subscriber,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// Where a track comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Camera video.
    Camera,
    /// Microphone audio.
    Microphone,
    /// Screen share (video, or its audio).
    Screen,
}

/// A track a client announces in `publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishTrack {
    /// Audio or video.
    pub kind: TrackKind,
    /// Camera, microphone or screen.
    pub source: Source,
    /// The mid of the publisher connection's section carrying it (from the client's
    /// local description), so the SFU can tie the track to its RTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// Simulcast rids, lowest layer first (empty: one layer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub simulcast: Vec<String>,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    /// Server-assigned id.
    pub id: String,
    /// The identity from the join token.
    pub identity: String,
}

/// A published track as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackInfo {
    /// Server-assigned track id (what `subscribe` names).
    pub id: String,
    /// Who publishes it.
    pub participant: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Camera, microphone or screen.
    pub source: Source,
    /// Simulcast rids, lowest layer first (empty: one layer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub simulcast: Vec<String>,
}

/// An ICE server for the browser's `RTCPeerConnection` configuration (same field
/// names as `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (`expiry:identity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (HMAC of the username, TURN REST API style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Messages from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Join a room with a token.
    Join {
        /// Room name.
        room: String,
        /// Signed join token.
        token: String,
        /// SFU or peer-to-peer.
        mode: Mode,
    },
    /// Leave the room (the server closes the connection after). A struct variant so
    /// that unknown fields are refused like everywhere else.
    Leave {},
    /// Announce tracks about to be sent on the publisher connection.
    Publish {
        /// The tracks.
        tracks: Vec<PublishTrack>,
    },
    /// Stop publishing tracks.
    Unpublish {
        /// Track ids.
        tracks: Vec<String>,
    },
    /// Receive these tracks (the server re-offers the subscriber connection).
    Subscribe {
        /// Track ids.
        tracks: Vec<String>,
    },
    /// SDP offer: SFU mode, for the publisher connection; P2P, for the peer.
    Offer {
        /// The session description.
        sdp: String,
    },
    /// SDP answer: SFU mode, to the server's subscriber offer; P2P, for the peer.
    Answer {
        /// The session description.
        sdp: String,
    },
    /// A trickled ICE candidate (`""` = end of candidates).
    Candidate {
        /// `candidate:...` as `RTCIceCandidate.candidate` gives it.
        candidate: String,
        /// `RTCIceCandidate.sdpMid`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mid: Option<String>,
        /// Which connection (SFU mode; ignored in P2P).
        #[serde(default)]
        target: Target,
    },
    /// Cap the simulcast layer received for a track (0 = lowest).
    SetMaxLayer {
        /// Track id.
        track: String,
        /// Highest layer index to receive.
        layer: u8,
    },
    /// Keep-alive; answered with `pong`.
    Ping {
        /// Echoed back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// Messages from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        /// The new participant's id.
        participant: String,
        /// Room name.
        room: String,
        /// Room mode.
        mode: Mode,
        /// Who else is in the room.
        participants: Vec<Participant>,
        /// Tracks already published in the room.
        tracks: Vec<TrackInfo>,
        /// STUN/TURN for the browser (P2P mode; empty in SFU mode).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: Participant,
    },
    /// Someone left.
    ParticipantLeft {
        /// Their id.
        participant: String,
    },
    /// A track was published.
    TrackPublished {
        /// The track.
        track: TrackInfo,
    },
    /// A track was unpublished.
    TrackUnpublished {
        /// Track id.
        track: String,
    },
    /// SDP offer: SFU mode, for the subscriber connection; P2P, from the peer.
    Offer {
        /// The session description.
        sdp: String,
        /// P2P: the sending participant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// SDP answer: SFU mode, to the publisher offer; P2P, from the peer.
    Answer {
        /// The session description.
        sdp: String,
        /// P2P: the sending participant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// A peer's trickled candidate (P2P only: the SFU's candidates are in its SDP).
    Candidate {
        /// `candidate:...`.
        candidate: String,
        /// `sdpMid`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mid: Option<String>,
        /// The sending participant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// The dominant speaker changed.
    ActiveSpeaker {
        /// Participant id.
        participant: String,
    },
    /// A request failed; the connection stays open unless the code says otherwise
    /// (bad_token, expired_token, unknown_room close it).
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Reason, for people.
        message: String,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ServerMessage {
    /// The JSON text to send.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail (string keys, no maps of other keys).
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization"}"#.to_owned()
        })
    }
}

fn json_error(e: &serde_json::Error) -> ProtocolError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ProtocolError::new(ErrorCode::BadJson, format!("not JSON: {e}"))
        }
        Category::Data => ProtocolError::bad(e.to_string()),
    }
}

/// Parses and validates one client message.
pub fn parse_client(bytes: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let too_large = || {
        ProtocolError::new(
            ErrorCode::TooLarge,
            format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_LEN} ({MAX_SDP_MESSAGE_LEN} for \
                 offer and answer)",
                bytes.len()
            ),
        )
    };
    if bytes.len() > MAX_SDP_MESSAGE_LEN {
        return Err(too_large());
    }
    // Only a valid offer or answer may be over the general cap (the parse is bounded by
    // the SDP cap); anything else that large is `too_large`, whatever else is wrong with it.
    let parsed = serde_json::from_slice::<ClientMessage>(bytes);
    if bytes.len() > MAX_MESSAGE_LEN
        && !matches!(
            parsed,
            Ok(ClientMessage::Offer { .. } | ClientMessage::Answer { .. })
        )
    {
        return Err(too_large());
    }
    let msg = parsed.map_err(|e| json_error(&e))?;
    msg.validate()?;
    Ok(msg)
}

/// Parses a server message (for clients, the load generator and tests).
pub fn parse_server(bytes: &[u8]) -> Result<ServerMessage, ProtocolError> {
    if bytes.len() > MAX_SDP_MESSAGE_LEN {
        return Err(ProtocolError::new(ErrorCode::TooLarge, "message too large"));
    }
    serde_json::from_slice(bytes).map_err(|e| json_error(&e))
}

/// Room names: 1-128 bytes of ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_NAME_LEN
        && room
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Ids (track ids, mids): 1-64 bytes, printable ASCII without spaces.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|c| c.is_ascii_graphic())
}

fn check_ids(ids: &[String]) -> Result<(), ProtocolError> {
    if ids.is_empty() || ids.len() > MAX_TRACK_IDS {
        return Err(ProtocolError::bad(format!(
            "tracks: 1-{MAX_TRACK_IDS} track ids"
        )));
    }
    if let Some(bad) = ids.iter().find(|i| !valid_id(i)) {
        return Err(ProtocolError::bad(format!("bad track id {bad:?}")));
    }
    Ok(())
}

fn check_sdp(sdp: &str) -> Result<(), ProtocolError> {
    if !sdp.starts_with("v=0") {
        return Err(ProtocolError::bad("sdp must start with v=0"));
    }
    Ok(())
}

impl ClientMessage {
    /// The message's `type` value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Leave {} => "leave",
            Self::Publish { .. } => "publish",
            Self::Unpublish { .. } => "unpublish",
            Self::Subscribe { .. } => "subscribe",
            Self::Offer { .. } => "offer",
            Self::Answer { .. } => "answer",
            Self::Candidate { .. } => "candidate",
            Self::SetMaxLayer { .. } => "set_max_layer",
            Self::Ping { .. } => "ping",
        }
    }

    /// Checks values beyond their JSON shape.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Self::Join { room, token, .. } => {
                if !valid_room(room) {
                    return Err(ProtocolError::bad("room: 1-128 of A-Z a-z 0-9 - _ ."));
                }
                if token.is_empty() || token.len() > MAX_TOKEN_LEN {
                    return Err(ProtocolError::new(
                        ErrorCode::BadToken,
                        format!("token: 1-{MAX_TOKEN_LEN} bytes"),
                    ));
                }
            }
            Self::Publish { tracks } => {
                if tracks.is_empty() || tracks.len() > MAX_PUBLISH_TRACKS {
                    return Err(ProtocolError::bad(format!(
                        "tracks: 1-{MAX_PUBLISH_TRACKS} tracks"
                    )));
                }
                for (i, t) in tracks.iter().enumerate() {
                    validate_publish_track(t)?;
                    if t.mid.is_some() && tracks[..i].iter().any(|p| p.mid == t.mid) {
                        return Err(ProtocolError::bad("two tracks with the same mid"));
                    }
                }
            }
            Self::Unpublish { tracks } | Self::Subscribe { tracks } => check_ids(tracks)?,
            Self::Offer { sdp } | Self::Answer { sdp } => check_sdp(sdp)?,
            Self::Candidate { candidate, mid, .. } => {
                if candidate.len() > MAX_CANDIDATE_LEN {
                    return Err(ProtocolError::bad("candidate too long"));
                }
                if !candidate.is_empty() && !candidate.starts_with("candidate:") {
                    return Err(ProtocolError::bad("candidate must start with candidate:"));
                }
                if mid.as_deref().is_some_and(|m| !valid_id(m)) {
                    return Err(ProtocolError::bad("bad mid"));
                }
            }
            Self::SetMaxLayer { track, layer } => {
                if !valid_id(track) {
                    return Err(ProtocolError::bad("bad track id"));
                }
                if usize::from(*layer) >= MAX_SIMULCAST_LAYERS {
                    return Err(ProtocolError::bad(format!(
                        "layer: 0-{}",
                        MAX_SIMULCAST_LAYERS - 1
                    )));
                }
            }
            Self::Leave {} | Self::Ping { .. } => {}
        }
        Ok(())
    }
}

fn validate_publish_track(t: &PublishTrack) -> Result<(), ProtocolError> {
    let source_ok = matches!(
        (t.kind, t.source),
        (TrackKind::Audio, Source::Microphone | Source::Screen)
            | (TrackKind::Video, Source::Camera | Source::Screen)
    );
    if !source_ok {
        return Err(ProtocolError::bad("source does not fit the kind"));
    }
    if t.mid.as_deref().is_some_and(|m| !valid_id(m)) {
        return Err(ProtocolError::bad("bad mid"));
    }
    if !t.simulcast.is_empty() {
        if t.kind != TrackKind::Video {
            return Err(ProtocolError::bad("simulcast is for video"));
        }
        if t.simulcast.len() > MAX_SIMULCAST_LAYERS {
            return Err(ProtocolError::bad(format!(
                "simulcast: at most {MAX_SIMULCAST_LAYERS} rids"
            )));
        }
        for (i, rid) in t.simulcast.iter().enumerate() {
            if !crate::sdp::valid_rid(rid) {
                return Err(ProtocolError::bad(format!("bad rid {rid:?}")));
            }
            if t.simulcast[..i].contains(rid) {
                return Err(ProtocolError::bad("repeated rid"));
            }
        }
    }
    Ok(())
}

/// Checks a `join`: the token must verify with one of `secrets` for `room` at `now`,
/// and a P2P join needs a token with `"p2p": true`. Errors carry the code to send
/// (`bad_token`, `expired_token`; `internal` when no secret is configured).
pub fn authorize_join<S: AsRef<[u8]>>(
    room: &str,
    token: &str,
    mode: Mode,
    secrets: &[S],
    now: u64,
) -> Result<Claims, ProtocolError> {
    let claims = verify(token, secrets, room, now).map_err(|e| ProtocolError::from(&e))?;
    if mode == Mode::P2p && !claims.p2p {
        return Err(ProtocolError::new(
            ErrorCode::BadToken,
            "token does not allow peer-to-peer mode",
        ));
    }
    Ok(claims)
}

/// ICE servers for a P2P join: our STUN URLs, and our TURN URLs with a time-limited
/// TURN REST credential (`username = "<now + ttl>:<identity>"`, password =
/// base64(HMAC-SHA1(turn secret, username)) as [`crate::turn::auth::rest_password`]
/// computes and the TURN server checks).
pub fn ice_servers(
    stun_urls: &[String],
    turn_urls: &[String],
    turn_secret: &str,
    identity: &str,
    now: u64,
    ttl: u64,
) -> Vec<IceServer> {
    let mut out = Vec::new();
    if !stun_urls.is_empty() {
        out.push(IceServer {
            urls: stun_urls.to_vec(),
            username: None,
            credential: None,
        });
    }
    if !turn_urls.is_empty() {
        let username = format!("{}:{identity}", now.saturating_add(ttl));
        let credential = crate::turn::auth::rest_password(turn_secret, &username);
        out.push(IceServer {
            urls: turn_urls.to_vec(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    out
}

#[cfg(test)]
mod tests;
