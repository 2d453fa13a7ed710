//! A participant's subscriber peer connection: we offer one `sendonly` section per
//! subscribed track, the browser answers, and each accepted section becomes a
//! [`Command::Subscribe`].
//!
//! One offer is outstanding at a time: changes made while we wait for the answer (new
//! subscriptions, tracks that went away) are batched into the next offer, sent when
//! the answer arrives. Sections are never removed: a removed track's section is closed
//! (port 0, mid kept), and once the browser has seen it closed a new track of the same
//! kind may take its place.
//!
//! A section offers only the codecs its publisher sends: a browser that cannot receive
//! them rejects the section (port 0), and instead of a subscription that would never
//! carry a packet the client gets a `codec_unsupported` error naming the track, and the
//! section is closed in the next offer.

use super::{ConnId, Rooms, bad, internal, media_kind, parse_track_id, random_u32, track_id};
use crate::ice::credentials::{Credentials, random_credentials};
use crate::sdp::{
    Codec, LocalParams, MAX_MEDIA_SECTIONS, MediaKind, OfferSection, OutgoingTrack,
    SessionDescription,
};
use crate::sfu::control::{
    Command, OutboundTrack, ParticipantId, TrackCodec, TrackId, TransportId, TransportRole,
    TransportSpec,
};
use crate::signaling::protocol::{ErrorCode, ProtocolError, ServerMessage};

/// A track carried in a section.
#[derive(Debug, Clone)]
struct SectionTrack {
    id: TrackId,
    publisher: ParticipantId,
    ssrc: u32,
    rtx_ssrc: Option<u32>,
    /// The codecs its publisher sends (the only ones offered).
    codecs: Vec<Codec>,
    /// `Subscribe` went out (the browser accepted the section).
    active: bool,
    /// The layer cap asked for (sent once active).
    max_layer: Option<u8>,
}

/// One m-line of the subscriber connection.
#[derive(Debug, Clone)]
struct Section {
    mid: String,
    kind: MediaKind,
    track: Option<SectionTrack>,
    /// Closed, and the browser answered an offer that had it closed: reusable.
    reusable: bool,
}

/// The subscriber connection's state.
#[derive(Debug)]
pub(super) struct SubscriberConn {
    /// Its transport id (fixed for the connection's life).
    pub transport: TransportId,
    /// Whether `AddTransport` went out (the first answer with an accepted section).
    pub transport_added: bool,
    /// Our ICE credentials (distinct from the publisher connection's).
    creds: Credentials,
    session_id: u64,
    session_version: u64,
    cname: String,
    sections: Vec<Section>,
    next_mid: u32,
    /// The offer waiting for its answer, with the track each section carried.
    outstanding: Option<(SessionDescription, Vec<Option<TrackId>>)>,
    /// Changes not offered yet.
    dirty: bool,
    remote_ice: Option<(String, String)>,
}

impl SubscriberConn {
    pub(super) fn new(
        transport: TransportId,
        session_id: u64,
        cname: String,
    ) -> Result<Self, ProtocolError> {
        let creds = random_credentials().map_err(|e| internal(format!("ice credentials: {e}")))?;
        Ok(Self {
            transport,
            transport_added: false,
            creds,
            session_id,
            session_version: 0,
            cname,
            sections: Vec::new(),
            next_mid: 0,
            outstanding: None,
            dirty: false,
            remote_ice: None,
        })
    }

    /// The offer waiting for its answer (tests).
    #[cfg(test)]
    pub(super) fn outstanding_offer(&self) -> Option<String> {
        self.outstanding.as_ref().map(|(o, _)| o.to_string())
    }

    fn section_of(&self, track: TrackId) -> Option<usize> {
        self.sections
            .iter()
            .position(|s| s.track.as_ref().is_some_and(|t| t.id == track))
    }

    fn ssrc_used(&self, ssrc: u32) -> bool {
        self.sections
            .iter()
            .filter_map(|s| s.track.as_ref())
            .any(|t| t.ssrc == ssrc || t.rtx_ssrc == Some(ssrc))
    }
}

impl Rooms {
    pub(super) fn subscribe(&mut self, conn: ConnId, ids: &[String]) -> Result<(), ProtocolError> {
        let Some(m) = self.member(conn) else {
            return Err(bad("join first"));
        };
        let Some(s) = m.subscriber.as_ref() else {
            return Err(bad("join first"));
        };
        // Check everything first: a refused subscribe changes nothing.
        let mut wanted: Vec<(TrackId, MediaKind, ParticipantId, Vec<Codec>)> = Vec::new();
        for name in ids {
            let track = parse_track_id(name)
                .and_then(|id| self.tracks.get(&id).map(|t| (id, t)))
                .filter(|(_, t)| t.room == m.room)
                .ok_or_else(|| bad(format!("no track {name} in this room")))?;
            let (id, t) = track;
            if t.owner == conn {
                return Err(bad(format!("{name} is your own track")));
            }
            if s.section_of(id).is_some() || wanted.iter().any(|w| w.0 == id) {
                continue;
            }
            let owner = self.member(t.owner);
            let publisher = owner.map(|o| o.id).unwrap_or_default();
            let codecs = owner
                .and_then(|o| o.publisher.as_ref())
                .and_then(|p| p.codecs_of(id))
                .unwrap_or_default();
            wanted.push((id, media_kind(t.info.kind), publisher, codecs));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let reusable = s.sections.iter().filter(|x| x.reusable).count();
        if s.sections.len() + wanted.len().saturating_sub(reusable) > MAX_MEDIA_SECTIONS {
            return Err(bad(format!(
                "at most {MAX_MEDIA_SECTIONS} sections on the subscriber connection"
            )));
        }
        let rng = &self.rng;
        let Some(s) = self
            .conns
            .get_mut(&conn)
            .and_then(Option::as_mut)
            .and_then(|m| m.subscriber.as_mut())
        else {
            return Err(bad("join first"));
        };
        for (id, kind, publisher, codecs) in wanted {
            let mut ssrc = random_u32(rng)?;
            while s.ssrc_used(ssrc) {
                ssrc = random_u32(rng)?;
            }
            let rtx_ssrc = if kind == MediaKind::Video {
                let mut r = random_u32(rng)?;
                while r == ssrc || s.ssrc_used(r) {
                    r = random_u32(rng)?;
                }
                Some(r)
            } else {
                None
            };
            let track = SectionTrack {
                id,
                publisher,
                ssrc,
                rtx_ssrc,
                codecs,
                active: false,
                max_layer: None,
            };
            match s
                .sections
                .iter_mut()
                .find(|x| x.reusable && x.track.is_none() && x.kind == kind)
            {
                Some(slot) => {
                    slot.track = Some(track);
                    slot.reusable = false;
                }
                None => {
                    let mid = s.next_mid.to_string();
                    s.next_mid += 1;
                    s.sections.push(Section {
                        mid,
                        kind,
                        track: Some(track),
                        reusable: false,
                    });
                }
            }
        }
        s.dirty = true;
        self.flush_offer(conn);
        Ok(())
    }

    pub(super) fn set_max_layer(
        &mut self,
        conn: ConnId,
        name: &str,
        layer: u8,
    ) -> Result<(), ProtocolError> {
        let Some(s) = self.member_mut(conn).and_then(|m| m.subscriber.as_mut()) else {
            return Err(bad("join first"));
        };
        let transport = s.transport;
        let t = parse_track_id(name)
            .and_then(|id| s.section_of(id))
            .and_then(|i| s.sections[i].track.as_mut())
            .ok_or_else(|| bad(format!("{name} is not subscribed")))?;
        t.max_layer = Some(layer);
        if t.active {
            let track = t.id;
            self.media(Command::SetMaxLayer {
                transport,
                track,
                layer,
            });
        }
        Ok(())
    }

    /// Closes the sections carrying `track` in every subscriber of `room` (the track
    /// is going away); the re-offers go out in [`Rooms::reoffer_room`].
    pub(super) fn close_subscriptions(&mut self, room: &str, track: TrackId) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let mut cmds = Vec::new();
        for c in r.members.clone() {
            let Some(s) = self
                .conns
                .get_mut(&c)
                .and_then(Option::as_mut)
                .and_then(|m| m.subscriber.as_mut())
            else {
                continue;
            };
            let transport = s.transport;
            for sec in &mut s.sections {
                if sec.track.as_ref().is_some_and(|t| t.id == track) {
                    if sec.track.as_ref().is_some_and(|t| t.active) {
                        cmds.push(Command::Unsubscribe { transport, track });
                    }
                    sec.track = None;
                    sec.reusable = false;
                    s.dirty = true;
                }
            }
        }
        for c in cmds {
            self.media(c);
        }
    }

    /// Sends the pending re-offers of a room's subscribers.
    pub(super) fn reoffer_room(&mut self, room: &str) {
        let members = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for c in members {
            self.flush_offer(c);
        }
    }

    /// Offers the subscriber connection's current sections if something changed and no
    /// offer is outstanding.
    fn flush_offer(&mut self, conn: ConnId) {
        let fingerprint = self.cfg.fingerprint;
        let Some(m) = self.member(conn) else {
            return;
        };
        let candidates = self.candidates_of(m.room_id);
        let Some(m) = self.member_mut(conn) else {
            return;
        };
        let Some(s) = m.subscriber.as_mut() else {
            return;
        };
        if !s.dirty || s.outstanding.is_some() {
            return;
        }
        let mut params = LocalParams::new(
            s.creds.ufrag.clone(),
            s.creds.pwd.clone(),
            fingerprint,
            candidates,
        );
        params.session_id = s.session_id;
        params.session_version = s.session_version + 1;
        let sections: Vec<OfferSection> = s
            .sections
            .iter()
            .map(|sec| match &sec.track {
                Some(t) => OfferSection::Track(OutgoingTrack {
                    mid: sec.mid.clone(),
                    kind: sec.kind.clone(),
                    stream_id: super::participant_id(t.publisher),
                    track_id: track_id(t.id),
                    ssrc: t.ssrc,
                    rtx_ssrc: t.rtx_ssrc,
                    cname: s.cname.clone(),
                    codecs: t.codecs.clone(),
                }),
                None => OfferSection::Closed {
                    mid: sec.mid.clone(),
                    kind: sec.kind.clone(),
                },
            })
            .collect();
        let offer = match crate::sdp::offer(&params, &sections) {
            Ok(o) => o,
            Err(e) => {
                // Our own sections have unique mids; this cannot happen.
                tracing::error!(conn, error = %e, "building the subscriber offer failed");
                return;
            }
        };
        s.session_version += 1;
        s.dirty = false;
        let carried = s
            .sections
            .iter()
            .map(|sec| sec.track.as_ref().map(|t| t.id))
            .collect();
        let sdp = offer.to_string();
        s.outstanding = Some((offer, carried));
        self.send(conn, ServerMessage::Offer { sdp, from: None });
    }

    /// The browser's answer to our subscriber offer.
    pub(super) fn subscriber_answer(
        &mut self,
        conn: ConnId,
        sdp: &str,
    ) -> Result<(), ProtocolError> {
        let Some(m) = self.member_mut(conn) else {
            return Err(bad("join first"));
        };
        let (room_id, pid) = (m.room_id, m.id);
        let Some(s) = m.subscriber.as_mut() else {
            return Err(bad("join first"));
        };
        let Some((offer, _)) = &s.outstanding else {
            return Err(bad("no offer to answer"));
        };
        let answer = crate::sdp::parse(sdp).map_err(|e| bad(format!("sdp: {e}")))?;
        crate::sdp::check_answer(offer, &answer).map_err(|e| bad(format!("answer: {e}")))?;
        let Some((offer, carried)) = s.outstanding.take() else {
            return Err(bad("no offer to answer"));
        };
        // All sections closed or rejected: nothing negotiated.
        let negotiated = crate::sdp::negotiated(&answer, &offer).ok();
        let mut cmds = Vec::new();
        if let Some(n) = &negotiated {
            let remote = (n.remote_ice_ufrag.clone(), n.remote_ice_pwd.clone());
            let spec = TransportSpec {
                id: s.transport,
                room: room_id,
                participant: pid,
                role: TransportRole::Subscriber,
                local_ufrag: s.creds.ufrag.clone(),
                local_pwd: s.creds.pwd.clone(),
                remote_ufrag: remote.0.clone(),
                remote_pwd: remote.1.clone(),
                remote_fingerprint: n.remote_fingerprint,
                extensions: n.extensions,
            };
            if !s.transport_added {
                cmds.push(Command::AddTransport(spec));
                s.transport_added = true;
            } else if s.remote_ice.as_ref() != Some(&remote) {
                // ICE restart: the new transport starts empty; subscribe again.
                cmds.push(Command::RemoveTransport(s.transport));
                cmds.push(Command::AddTransport(spec));
                for sec in &mut s.sections {
                    if let Some(t) = &mut sec.track {
                        t.active = false;
                    }
                }
            }
            s.remote_ice = Some(remote);
        }
        let transport = s.transport;
        let mut unsupported = Vec::new();
        for (i, sec) in s.sections.iter_mut().enumerate() {
            let offered = carried.get(i).copied().flatten();
            let accepted = negotiated
                .as_ref()
                .and_then(|n| n.media.iter().find(|x| x.mid == sec.mid));
            match (&mut sec.track, offered) {
                (None, None) if i < carried.len() => sec.reusable = true,
                (Some(t), Some(o)) if t.id == o => match accepted {
                    Some(media) if !t.active => {
                        let answered = answer.media.get(i);
                        let mut codecs: Vec<TrackCodec> = media
                            .codecs
                            .iter()
                            .map(|c| TrackCodec {
                                codec: c.codec,
                                payload_type: c.payload_type,
                                rtx_payload_type: c.rtx_payload_type,
                            })
                            .collect();
                        // The answer's order is the browser's preference.
                        if let Some(a) = answered {
                            let order: Vec<u8> = a.payload_types().collect();
                            codecs.sort_by_key(|c| {
                                order
                                    .iter()
                                    .position(|pt| *pt == c.payload_type)
                                    .unwrap_or(usize::MAX)
                            });
                        }
                        t.active = true;
                        cmds.push(Command::Subscribe(OutboundTrack {
                            transport,
                            track: t.id,
                            mid: sec.mid.clone(),
                            ssrc: t.ssrc,
                            rtx_ssrc: t.rtx_ssrc,
                            codecs,
                        }));
                        if let Some(layer) = t.max_layer {
                            cmds.push(Command::SetMaxLayer {
                                transport,
                                track: t.id,
                                layer,
                            });
                        }
                    }
                    None if t.active => {
                        // The browser rejected a section it had accepted.
                        t.active = false;
                        cmds.push(Command::Unsubscribe {
                            transport,
                            track: t.id,
                        });
                    }
                    None if answer.media.get(i).is_some_and(|a| a.port == 0) => {
                        // Rejected at once: it cannot receive the publisher's codecs.
                        // No subscription; the section is closed in the next offer.
                        unsupported.push((t.id, t.codecs.clone()));
                        sec.track = None;
                        sec.reusable = false;
                        s.dirty = true;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        for c in cmds {
            self.media(c);
        }
        for (track, codecs) in unsupported {
            let names: Vec<&str> = codecs.iter().map(|c| c.encoding()).collect();
            let err = ProtocolError::new(
                ErrorCode::CodecUnsupported,
                format!(
                    "{}: your browser rejected its codec ({}); not subscribed",
                    track_id(track),
                    names.join(", ")
                ),
            );
            self.send(conn, err.to_message());
        }
        self.flush_offer(conn);
        Ok(())
    }
}
