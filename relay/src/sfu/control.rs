//! What the signaling plane tells the media plane, and what the media plane reports back.
//!
//! The signaling plane (WebSocket connections, rooms, SDP negotiation) runs on its own
//! threads and never touches packets; the media plane (the SFU worker: ICE, DTLS, SRTP,
//! forwarding) never parses JSON or SDP. Everything one needs from the other crosses
//! this boundary as a [`Command`] or an [`Event`], over channels, so the packet path
//! takes no lock that signaling could hold.

use crate::rtp::ExtMap;
use crate::sdp::Codec;

/// A room, numbered by the signaling plane.
pub type RoomId = u32;
/// A participant, numbered by the signaling plane (unique across rooms).
pub type ParticipantId = u32;
/// One ICE/DTLS transport (one browser `RTCPeerConnection`), numbered by the signaling
/// plane (unique across rooms).
pub type TransportId = u32;
/// A published track, numbered by the signaling plane (unique across rooms).
pub type TrackId = u32;

/// Which way media flows on a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportRole {
    /// The browser sends media to us on it (browser offers, we answer).
    Publisher,
    /// We send media to the browser on it (we offer, the browser answers).
    Subscriber,
}

/// A transport to create: the ICE and DTLS parameters of both sides, from the SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportSpec {
    /// Its id.
    pub id: TransportId,
    /// The room it belongs to.
    pub room: RoomId,
    /// Whose it is.
    pub participant: ParticipantId,
    /// Publisher or subscriber connection.
    pub role: TransportRole,
    /// Our ICE ufrag (what the browser puts first in its STUN USERNAME).
    pub local_ufrag: String,
    /// Our ICE password.
    pub local_pwd: String,
    /// The browser's ICE ufrag.
    pub remote_ufrag: String,
    /// The browser's ICE password.
    pub remote_pwd: String,
    /// SHA-256 fingerprint of the browser's DTLS certificate (from its SDP); the
    /// handshake fails on any other certificate.
    pub remote_fingerprint: [u8; 32],
    /// Header extension ids negotiated on this transport (BUNDLE: one map for all of
    /// its sections).
    pub extensions: ExtMap,
}

/// One codec of a track, as negotiated on one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackCodec {
    /// The codec.
    pub codec: Codec,
    /// Its payload type on that transport.
    pub payload_type: u8,
    /// Its RTX payload type on that transport (video with NACK).
    pub rtx_payload_type: Option<u8>,
}

/// A published track, bound to the RTP of its publisher transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundTrack {
    /// Its id.
    pub id: TrackId,
    /// The publisher transport carrying it.
    pub transport: TransportId,
    /// The room.
    pub room: RoomId,
    /// The publishing participant.
    pub participant: ParticipantId,
    /// Audio or video.
    pub video: bool,
    /// A screen share (forwarded at its highest layer; not subject to speaker policy).
    pub screen: bool,
    /// The mid of its section: RTP carrying this mid in the SDES MID extension belongs
    /// to the track.
    pub mid: String,
    /// Codecs as the publisher's offer numbered them.
    pub codecs: Vec<TrackCodec>,
    /// Simulcast rids, lowest layer first; empty: one layer.
    pub rids: Vec<String>,
    /// SSRCs the SDP declared (primary first); RTP with these SSRCs belongs to the track
    /// even without the MID extension. Simulcast tracks are learned from MID/RID.
    pub ssrcs: Vec<u32>,
    /// Declared (primary, RTX) SSRC pairs.
    pub rtx_pairs: Vec<(u32, u32)>,
}

/// A track to send on a subscriber transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundTrack {
    /// The subscriber transport.
    pub transport: TransportId,
    /// The published track it carries.
    pub track: TrackId,
    /// The mid of its section in our offer.
    pub mid: String,
    /// The SSRC we send it with.
    pub ssrc: u32,
    /// The RTX SSRC we retransmit with (video).
    pub rtx_ssrc: Option<u32>,
    /// Codecs as the subscriber's answer accepted them, with its payload types.
    pub codecs: Vec<TrackCodec>,
}

/// Signaling plane to media plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create a transport (it waits for the browser's ICE checks).
    AddTransport(TransportSpec),
    /// Close a transport and forget everything bound to it.
    RemoveTransport(TransportId),
    /// Bind a published track to its publisher's RTP.
    Publish(InboundTrack),
    /// Stop forwarding a track to anyone and forget it.
    Unpublish(TrackId),
    /// Start sending a track to a subscriber.
    Subscribe(OutboundTrack),
    /// Stop sending a track to a subscriber.
    Unsubscribe {
        /// The subscriber transport.
        transport: TransportId,
        /// The track.
        track: TrackId,
    },
    /// Cap the simulcast layer a subscriber gets of a track (0 = lowest).
    SetMaxLayer {
        /// The subscriber transport.
        transport: TransportId,
        /// The track.
        track: TrackId,
        /// Highest layer index.
        layer: u8,
    },
}

/// Media plane to signaling plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transport's ICE and DTLS completed (media can flow), or it failed / timed out
    /// (consent expired, DTLS failed).
    TransportState {
        /// The transport.
        transport: TransportId,
        /// Connected (true) or gone (false).
        connected: bool,
    },
    /// A room's dominant speaker changed.
    ActiveSpeaker {
        /// The room.
        room: RoomId,
        /// The new dominant speaker.
        participant: ParticipantId,
    },
}
