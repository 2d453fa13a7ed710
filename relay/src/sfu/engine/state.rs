//! What the engine keeps per transport, per published track (per simulcast layer), per
//! subscription and per room. Everything a packet needs is allocated when the command
//! that creates it arrives, never per packet.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::EngineConfig;
use crate::ice::Transport as IceTransport;
use crate::rtp::TwccRecorder;
use crate::sdp::Codec;
use crate::sfu::control::{
    InboundTrack, OutboundTrack, ParticipantId, TrackCodec, TrackId, TransportId, TransportSpec,
};
use crate::sfu::history::PacketHistory;
use crate::sfu::keyframe::KeyframeLimiter;
use crate::sfu::reports::{ReceiveStats, SendStats};
use crate::sfu::rewrite::{AudioRewriter, LayerRewriter, OPUS_CLOCK_HZ, VIDEO_CLOCK_HZ};
use crate::sfu::rtx::NackGenerator;
use crate::sfu::speaker::SpeakerDetector;
use crate::sfu::transport::PeerTransport;

/// Which stream of a track an incoming SSRC carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StreamRef {
    pub track: TrackId,
    pub layer: u8,
    /// RTX (RFC 4588) of that layer.
    pub rtx: bool,
}

/// One transport and what is bound to it.
pub(super) struct TransportSlot {
    pub spec: TransportSpec,
    pub transport: PeerTransport,
    pub connected: bool,
    /// Where media goes (the nominated pair), once known.
    pub dest: Option<SocketAddr>,
    /// The ICE transport (UDP or TCP) of `dest`: the selected pair's.
    pub dest_via: IceTransport,
    /// The ICE transport of the last datagram handed to the transport (where its STUN
    /// answers and DTLS flights go back).
    pub last_via: IceTransport,
    /// Publisher: incoming SSRC -> stream.
    pub streams: HashMap<u32, StreamRef>,
    /// Publisher: tracks published on it.
    pub published: Vec<TrackId>,
    /// Subscriber: our outgoing SSRC (primary or RTX) -> track.
    pub out_ssrcs: HashMap<u32, TrackId>,
    /// Publisher: transport-wide sequence numbers received, for TWCC feedback.
    pub twcc: TwccRecorder,
    /// Our RTCP sender SSRC on this transport.
    pub rtcp_ssrc: u32,
    /// Scratch for the NACK list of one stream.
    pub nack_scratch: [u16; 64],
}

impl TransportSlot {
    pub fn new(spec: TransportSpec, transport: PeerTransport, _now_us: u64) -> Self {
        let rtcp_ssrc = spec.id.wrapping_mul(0x9E37_79B9) | 1;
        TransportSlot {
            spec,
            transport,
            connected: false,
            dest: None,
            dest_via: IceTransport::Udp,
            last_via: IceTransport::Udp,
            streams: HashMap::new(),
            published: Vec::new(),
            out_ssrcs: HashMap::new(),
            twcc: TwccRecorder::new(rtcp_ssrc, 0),
            rtcp_ssrc,
            nack_scratch: [0; 64],
        }
    }
}

/// One simulcast layer (or the only stream) of a published track.
pub(super) struct Layer {
    pub ssrc: Option<u32>,
    pub rtx_ssrc: Option<u32>,
    /// Plain packets by sequence number, for NACKs (video only).
    pub history: Option<PacketHistory>,
    pub stats: ReceiveStats,
    pub nacks: NackGenerator,
    pub keyframes: KeyframeLimiter,
    /// When the last packet arrived (µs), for the layer fallback.
    pub last_packet_us: Option<u64>,
}

/// A published track.
pub(super) struct Track {
    pub spec: InboundTrack,
    pub layers: Vec<Layer>,
    pub subscribers: Vec<TransportId>,
    pub clock_hz: u32,
}

impl Track {
    pub fn new(spec: InboundTrack, cfg: &EngineConfig) -> Track {
        let n = spec.rids.len().clamp(1, 3);
        let interval_us = u64::try_from(cfg.keyframe_interval.as_micros()).unwrap_or(300_000);
        let layers = (0..n)
            .map(|i| Layer {
                ssrc: if spec.rids.is_empty() {
                    spec.ssrcs.first().copied()
                } else {
                    None
                },
                rtx_ssrc: if spec.rids.is_empty() && i == 0 {
                    spec.rtx_pairs.first().map(|p| p.1)
                } else {
                    None
                },
                history: spec
                    .video
                    .then(|| PacketHistory::new(cfg.history_packets.next_power_of_two())),
                stats: ReceiveStats::new(),
                nacks: NackGenerator::default(),
                keyframes: KeyframeLimiter::new(interval_us),
                last_packet_us: None,
            })
            .collect();
        let clock_hz = if spec.video {
            VIDEO_CLOCK_HZ
        } else {
            OPUS_CLOCK_HZ
        };
        Track {
            spec,
            layers,
            subscribers: Vec::new(),
            clock_hz,
        }
    }

    /// The codec of an incoming payload type.
    pub fn codec(&self, pt: u8) -> Option<Codec> {
        self.spec
            .codecs
            .iter()
            .find(|c| c.payload_type == pt)
            .map(|c| c.codec)
    }

    /// The primary payload type of an incoming RTX payload type.
    pub fn primary_of_rtx(&self, rtx_pt: u8) -> Option<u8> {
        self.spec
            .codecs
            .iter()
            .find(|c| c.rtx_payload_type == Some(rtx_pt))
            .map(|c| c.payload_type)
    }

    /// The layer of a RID.
    pub fn layer_of_rid(&self, rid: &str) -> Option<u8> {
        self.spec
            .rids
            .iter()
            .position(|r| r == rid)
            .and_then(|i| u8::try_from(i).ok())
    }
}

/// How one subscriber receives one track.
pub(super) enum Rewriter {
    Video(LayerRewriter),
    Audio(AudioRewriter),
}

/// One track sent to one subscriber.
pub(super) struct Subscription {
    pub spec: OutboundTrack,
    pub rewriter: Rewriter,
    /// Cap from signaling.
    pub max_layer: Option<u8>,
    pub send: SendStats,
    pub rtx_seq: u16,
}

impl Subscription {
    pub fn new(spec: OutboundTrack, video: bool, clock_hz: u32) -> Self {
        let rewriter = if video {
            Rewriter::Video(LayerRewriter::new(0))
        } else {
            Rewriter::Audio(AudioRewriter::new(clock_hz))
        };
        let rtx_seq = (spec.ssrc >> 8) as u16;
        Subscription {
            spec,
            rewriter,
            max_layer: None,
            send: SendStats::new(clock_hz),
            rtx_seq,
        }
    }

    /// The subscriber's payload type (and RTX payload type) for a codec.
    pub fn payload_type(&self, codec: Codec) -> Option<TrackCodec> {
        self.spec.codecs.iter().find(|c| c.codec == codec).copied()
    }
}

/// A room's speaker state.
pub(super) struct Room {
    pub speakers: SpeakerDetector<ParticipantId>,
    pub dominant: Option<ParticipantId>,
    pub transports: usize,
    /// Audio tracks published in the room: while at most the configured number of
    /// speakers, everyone is heard without waiting for the detector.
    pub audio_publishers: usize,
}

impl Room {
    pub fn new(speakers: SpeakerDetector<ParticipantId>) -> Self {
        Room {
            speakers,
            dominant: None,
            transports: 0,
            audio_publishers: 0,
        }
    }
}
