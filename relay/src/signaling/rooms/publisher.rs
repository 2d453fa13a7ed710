//! A participant's publisher peer connection: the browser offers, we answer, and the
//! tracks it announced with `publish` are bound to the sections of its offer (by mid)
//! and handed to the media plane as [`Command::Publish`].
//!
//! `publish` and `offer` may come in either order: announced tracks wait (pending) until
//! an accepted section with their mid exists; one whose mid never appears stays pending.

use std::collections::BTreeMap;

use super::{ConnId, Rooms, Track, bad, internal, is_screen, media_kind, parse_track_id, track_id};
use crate::ice::credentials::{Credentials, random_credentials};
use crate::sdp::{Direction, LocalParams, Negotiated};
use crate::sfu::control::{
    Command, InboundTrack, TrackCodec, TrackId, TransportId, TransportRole, TransportSpec,
};
use crate::signaling::protocol::{ProtocolError, PublishTrack, ServerMessage, TrackInfo};

/// Most tracks (pending and bound) one participant may have at once.
pub const MAX_TRACKS_PER_PARTICIPANT: usize = 64;

/// A track announced with `publish`, not bound yet.
#[derive(Debug, Clone)]
struct PendingTrack {
    id: TrackId,
    announced: PublishTrack,
}

/// The publisher connection's state.
#[derive(Debug)]
pub(super) struct PublisherConn {
    /// Its transport id (fixed for the connection's life).
    pub transport: TransportId,
    /// Whether `AddTransport` went out (the first offer with an accepted section).
    pub transport_added: bool,
    /// Our ICE credentials, the same in every answer on this connection.
    creds: Credentials,
    session_id: u64,
    session_version: u64,
    /// The browser's ICE ufrag and password in force.
    remote_ice: Option<(String, String)>,
    /// The latest negotiation.
    last: Option<Negotiated>,
    pending: Vec<PendingTrack>,
    /// Bound tracks, as the media plane was told.
    bound: BTreeMap<TrackId, InboundTrack>,
}

impl PublisherConn {
    pub(super) fn new(transport: TransportId, session_id: u64) -> Result<Self, ProtocolError> {
        let creds = random_credentials().map_err(|e| internal(format!("ice credentials: {e}")))?;
        Ok(Self {
            transport,
            transport_added: false,
            creds,
            session_id,
            session_version: 0,
            remote_ice: None,
            last: None,
            pending: Vec::new(),
            bound: BTreeMap::new(),
        })
    }

    /// Our ICE ufrag (tests tell the two connections apart by it).
    #[cfg(test)]
    pub(super) fn ufrag(&self) -> &str {
        &self.creds.ufrag
    }

    fn mid_taken(&self, mid: &str) -> bool {
        self.pending
            .iter()
            .any(|p| p.announced.mid.as_deref() == Some(mid))
            || self.bound.values().any(|b| b.mid == mid)
    }

    /// Forgets a bound track (it was unpublished).
    pub(super) fn forget(&mut self, id: TrackId) {
        self.bound.remove(&id);
    }
}

impl Rooms {
    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        tracks: Vec<PublishTrack>,
    ) -> Result<(), ProtocolError> {
        let Some(p) = self.member(conn).and_then(|m| m.publisher.as_ref()) else {
            return Err(bad("join first"));
        };
        if p.pending.len() + p.bound.len() + tracks.len() > MAX_TRACKS_PER_PARTICIPANT {
            return Err(bad(format!(
                "at most {MAX_TRACKS_PER_PARTICIPANT} tracks per participant"
            )));
        }
        for (i, t) in tracks.iter().enumerate() {
            if let Some(mid) = &t.mid
                && (p.mid_taken(mid) || tracks[..i].iter().any(|o| o.mid == t.mid))
            {
                return Err(bad(format!("mid {mid} already carries a track")));
            }
        }
        let mut ids = Vec::with_capacity(tracks.len());
        for _ in &tracks {
            ids.push(super::take_id(&mut self.next_track)?);
        }
        let Some(p) = self.member_mut(conn).and_then(|m| m.publisher.as_mut()) else {
            return Err(bad("join first"));
        };
        for (id, announced) in ids.into_iter().zip(tracks) {
            p.pending.push(PendingTrack { id, announced });
        }
        self.bind_pending(conn);
        Ok(())
    }

    pub(super) fn unpublish(&mut self, conn: ConnId, ids: &[String]) -> Result<(), ProtocolError> {
        let Some(p) = self.member(conn).and_then(|m| m.publisher.as_ref()) else {
            return Err(bad("join first"));
        };
        let mut numeric = Vec::with_capacity(ids.len());
        for s in ids {
            let id = parse_track_id(s)
                .filter(|id| p.bound.contains_key(id) || p.pending.iter().any(|t| t.id == *id))
                .ok_or_else(|| bad(format!("{s} is not one of your tracks")))?;
            if !numeric.contains(&id) {
                numeric.push(id);
            }
        }
        if let Some(p) = self.member_mut(conn).and_then(|m| m.publisher.as_mut()) {
            p.pending.retain(|t| !numeric.contains(&t.id));
        }
        self.unpublish_bound(&numeric);
        Ok(())
    }

    /// The browser's offer on the publisher connection: answer it, create or restart
    /// the transport, bind announced tracks to accepted sections.
    pub(super) fn publisher_offer(&mut self, conn: ConnId, sdp: &str) -> Result<(), ProtocolError> {
        let offer = crate::sdp::parse(sdp).map_err(|e| bad(format!("sdp: {e}")))?;
        let fingerprint = self.cfg.fingerprint;
        let Some(m) = self.member(conn) else {
            return Err(bad("join first"));
        };
        let candidates = self.candidates_of(m.room_id);
        let Some(m) = self.member_mut(conn) else {
            return Err(bad("join first"));
        };
        let (room_id, pid) = (m.room_id, m.id);
        let Some(p) = m.publisher.as_mut() else {
            return Err(bad("join first"));
        };
        let mut params = LocalParams::new(
            p.creds.ufrag.clone(),
            p.creds.pwd.clone(),
            fingerprint,
            candidates,
        );
        params.session_id = p.session_id;
        params.session_version = p.session_version + 1;
        let answer = crate::sdp::answer(&offer, &params).map_err(|e| bad(format!("offer: {e}")))?;
        p.session_version += 1;
        // An offer with nothing we can accept negotiates no transport (yet).
        let negotiated = crate::sdp::negotiated(&offer, &answer).ok();
        let mut cmds = Vec::new();
        if let Some(n) = &negotiated {
            let remote = (n.remote_ice_ufrag.clone(), n.remote_ice_pwd.clone());
            let spec = TransportSpec {
                id: p.transport,
                room: room_id,
                participant: pid,
                role: TransportRole::Publisher,
                local_ufrag: p.creds.ufrag.clone(),
                local_pwd: p.creds.pwd.clone(),
                remote_ufrag: remote.0.clone(),
                remote_pwd: remote.1.clone(),
                remote_fingerprint: n.remote_fingerprint,
                extensions: n.extensions,
            };
            if !p.transport_added {
                cmds.push(Command::AddTransport(spec));
                p.transport_added = true;
            } else if p.remote_ice.as_ref() != Some(&remote) {
                // ICE restart: a new transport under the same id, and what was bound
                // to the old one bound again.
                cmds.push(Command::RemoveTransport(p.transport));
                cmds.push(Command::AddTransport(spec));
                for t in p.bound.values_mut() {
                    if let Some(media) = n.media.iter().find(|x| x.mid == t.mid) {
                        t.codecs = track_codecs(media);
                        t.rids = media.rids.clone();
                        t.ssrcs = media.remote_ssrcs.clone();
                        t.rtx_pairs = media.remote_rtx_pairs.clone();
                    }
                    cmds.push(Command::Publish(t.clone()));
                }
            }
            p.remote_ice = Some(remote);
        }
        p.last = negotiated;
        self.send(
            conn,
            ServerMessage::Answer {
                sdp: answer.to_string(),
                from: None,
            },
        );
        for c in cmds {
            self.media(c);
        }
        self.bind_pending(conn);
        Ok(())
    }

    /// Binds every pending track whose mid names an accepted `recvonly` section of the
    /// latest negotiation: `Publish` to the media plane, `track_published` to the whole room
    /// (the publisher too).
    fn bind_pending(&mut self, conn: ConnId) {
        let Some(m) = self.member_mut(conn) else {
            return;
        };
        let (room_id, pid, room) = (m.room_id, m.id, m.room.clone());
        let Some(p) = m.publisher.as_mut() else {
            return;
        };
        let Some(n) = &p.last else { return };
        let mut newly = Vec::new();
        let mut still = Vec::new();
        for t in std::mem::take(&mut p.pending) {
            let media = t.announced.mid.as_deref().and_then(|mid| {
                n.media.iter().find(|x| {
                    x.mid == mid
                        && x.direction == Direction::RecvOnly
                        && x.kind == media_kind(t.announced.kind)
                        && !x.codecs.is_empty()
                })
            });
            match media {
                Some(media) if !p.bound.values().any(|b| b.mid == media.mid) => {
                    let inbound = InboundTrack {
                        id: t.id,
                        transport: p.transport,
                        room: room_id,
                        participant: pid,
                        video: media.kind == crate::sdp::MediaKind::Video,
                        screen: is_screen(t.announced.source),
                        mid: media.mid.clone(),
                        codecs: track_codecs(media),
                        rids: media.rids.clone(),
                        ssrcs: media.remote_ssrcs.clone(),
                        rtx_pairs: media.remote_rtx_pairs.clone(),
                    };
                    p.bound.insert(t.id, inbound.clone());
                    newly.push((inbound, t.announced));
                }
                _ => still.push(t),
            }
        }
        p.pending = still;
        for (inbound, announced) in newly {
            let info = TrackInfo {
                id: track_id(inbound.id),
                participant: super::participant_id(pid),
                kind: announced.kind,
                source: announced.source,
                simulcast: announced.simulcast,
            };
            self.tracks.insert(
                inbound.id,
                Track {
                    owner: conn,
                    room: room.clone(),
                    info: info.clone(),
                },
            );
            self.media(Command::Publish(inbound));
            // Everyone in the room, the publisher included: its copy is how it learns
            // the ids it may `unpublish` (its own `participant` tells it apart).
            self.broadcast_room(&room, &ServerMessage::TrackPublished { track: info });
        }
    }
}

impl PublisherConn {
    /// The codecs a bound track's publisher negotiated (what subscribers are offered).
    pub(super) fn codecs_of(&self, track: TrackId) -> Option<Vec<crate::sdp::Codec>> {
        self.bound
            .get(&track)
            .map(|t| t.codecs.iter().map(|c| c.codec).collect())
    }
}

fn track_codecs(media: &crate::sdp::NegotiatedMedia) -> Vec<TrackCodec> {
    media
        .codecs
        .iter()
        .map(|c| TrackCodec {
            codec: c.codec,
            payload_type: c.payload_type,
            rtx_payload_type: c.rtx_payload_type,
        })
        .collect()
}
