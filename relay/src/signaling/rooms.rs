//! The rooms: who is in which room, which tracks they publish and receive, and the SDP
//! negotiation of their peer connections with the SFU (or the relaying of it between
//! the two peers of a P2P call).
//!
//! Exists so the WebSocket server stays a thin pipe: it feeds parsed [`ClientMessage`]s
//! in, and takes [`Output`]s out: messages to send, connections to close, and the
//! [`Command`]s that tell the media plane which transports and tracks exist. Sans-IO
//! and single-threaded (the server holds it under a mutex); docs/SIGNALING.md is the
//! protocol it implements. The publisher side of a participant (client offers, we
//! answer, its tracks get bound to RTP) lives in `publisher`, the subscriber side (we
//! offer, the client answers) in `subscriber`.

mod publisher;
mod subscriber;

use std::collections::{BTreeMap, VecDeque};

use ring::rand::{SecureRandom, SystemRandom};

use super::protocol::{
    ClientMessage, ErrorCode, Mode, Participant, ProtocolError, ServerMessage, Source, TrackInfo,
    TrackKind, authorize_join, ice_servers,
};
use crate::sfu::control::{Command, Event, ParticipantId, RoomId, TrackId, TransportId};

use publisher::PublisherConn;
use subscriber::SubscriberConn;

/// A WebSocket connection, numbered by the server.
pub type ConnId = u64;

/// Most participants of a P2P room.
pub const P2P_ROOM_SIZE: usize = 2;

/// What the rooms need to know about the deployment.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// Join-token secrets (the first signs, all verify).
    pub secrets: Vec<Vec<u8>>,
    /// The SFU's media candidates (ICE-lite host candidates), by media worker: a room's
    /// connections get those of the worker owning it ([`crate::sfu::shards::worker_of`]).
    pub candidates: Vec<Vec<crate::sdp::LocalCandidate>>,
    /// SHA-256 of the SFU's DTLS certificate.
    pub fingerprint: [u8; 32],
    /// STUN URLs for P2P joins' `ice_servers`.
    pub stun_urls: Vec<String>,
    /// TURN URLs for P2P joins' `ice_servers`.
    pub turn_urls: Vec<String>,
    /// TURN REST secret; `None`: no TURN entry.
    pub turn_secret: Option<String>,
    /// Lifetime of the TURN credentials handed out (seconds).
    pub turn_ttl_secs: u64,
    /// A valid token creates its room; otherwise only `rooms` may be joined.
    pub create_rooms: bool,
    /// Rooms that may always be joined.
    pub rooms: Vec<String>,
    /// Most participants of an SFU room.
    pub max_participants: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            candidates: Vec::new(),
            fingerprint: [0; 32],
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_secs: 3600,
            create_rooms: true,
            rooms: Vec::new(),
            max_participants: 50,
        }
    }
}

/// Something the server must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this message on this connection.
    Send(ConnId, ServerMessage),
    /// Close this connection (after a fatal join error, and after `leave`).
    Close(ConnId),
    /// Hand this to the media plane.
    Media(Command),
}

/// Counts for `relay stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomsStats {
    /// Rooms with at least one participant.
    pub rooms: usize,
    /// Joined participants.
    pub participants: usize,
    /// Published tracks bound to RTP.
    pub tracks: usize,
}

/// A room.
#[derive(Debug)]
struct Room {
    id: RoomId,
    mode: Mode,
    /// Connections of its participants, in join order.
    members: Vec<ConnId>,
}

/// A joined participant (one WebSocket connection).
#[derive(Debug)]
struct Member {
    room: String,
    room_id: RoomId,
    mode: Mode,
    id: ParticipantId,
    identity: String,
    /// SFU: the publisher peer connection (created on join).
    publisher: Option<PublisherConn>,
    /// SFU: the subscriber peer connection (created on join).
    subscriber: Option<SubscriberConn>,
}

/// A published track, bound to its publisher's RTP.
#[derive(Debug, Clone)]
struct Track {
    owner: ConnId,
    room: String,
    info: TrackInfo,
}

/// The rooms of one signaling server.
pub struct Rooms {
    cfg: RoomsConfig,
    rng: SystemRandom,
    /// Every open connection; `Some` once joined.
    conns: BTreeMap<ConnId, Option<Member>>,
    rooms: BTreeMap<String, Room>,
    /// Bound tracks (what `joined` lists and `subscribe` may name).
    tracks: BTreeMap<TrackId, Track>,
    out: VecDeque<Output>,
    next_room: RoomId,
    next_participant: ParticipantId,
    next_transport: TransportId,
    next_track: TrackId,
}

/// The wire id of a participant.
pub fn participant_id(id: ParticipantId) -> String {
    format!("PA_{id}")
}

/// The wire id of a track.
pub fn track_id(id: TrackId) -> String {
    format!("TR_{id}")
}

/// The numeric id in a `TR_<n>` wire id.
fn parse_track_id(s: &str) -> Option<TrackId> {
    let n = s.strip_prefix("TR_")?;
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

fn bad(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadRequest, message)
}

fn internal(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, message)
}

/// Takes the next value of an id counter; ids start at 1 and are never reused.
fn take_id(counter: &mut u32) -> Result<u32, ProtocolError> {
    let id = *counter;
    *counter = counter
        .checked_add(1)
        .ok_or_else(|| internal("ran out of ids"))?;
    Ok(id)
}

impl Rooms {
    /// No rooms yet.
    pub fn new(cfg: RoomsConfig) -> Self {
        Self {
            cfg,
            rng: SystemRandom::new(),
            conns: BTreeMap::new(),
            rooms: BTreeMap::new(),
            tracks: BTreeMap::new(),
            out: VecDeque::new(),
            next_room: 1,
            next_participant: 1,
            next_transport: 1,
            next_track: 1,
        }
    }

    /// A WebSocket connection opened.
    pub fn connect(&mut self, conn: ConnId) {
        self.conns.entry(conn).or_insert(None);
    }

    /// The socket is gone: like `leave`, without closing it.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.leave(conn);
        self.conns.remove(&conn);
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Counts for `relay stats`.
    pub fn stats(&self) -> RoomsStats {
        RoomsStats {
            rooms: self.rooms.len(),
            participants: self.conns.values().filter(|m| m.is_some()).count(),
            tracks: self.tracks.len(),
        }
    }

    /// A report from the media plane.
    pub fn on_media_event(&mut self, ev: Event) {
        match ev {
            Event::ActiveSpeaker { room, participant } => {
                let Some(r) = self.rooms.values().find(|r| r.id == room) else {
                    return;
                };
                let members = r.members.clone();
                let id = participant_id(participant);
                for c in members {
                    self.send(
                        c,
                        ServerMessage::ActiveSpeaker {
                            participant: id.clone(),
                        },
                    );
                }
            }
            Event::TransportState {
                transport,
                connected,
            } => {
                if connected {
                    tracing::debug!(transport, "media transport connected");
                } else {
                    tracing::info!(transport, "media transport disconnected or failed");
                }
            }
        }
    }

    /// A parsed client message from `conn`. On `Err` the server sends
    /// `err.to_message()` to `conn`; after the fatal codes (`bad_token`,
    /// `expired_token`, `unknown_room`) an [`Output::Close`] is queued as well.
    pub fn on_message(
        &mut self,
        conn: ConnId,
        msg: ClientMessage,
        now_unix: u64,
    ) -> Result<(), ProtocolError> {
        let joined = match self.conns.get(&conn) {
            None => return Err(internal("unknown connection")),
            Some(m) => m.as_ref().map(|m| m.mode),
        };
        match (msg, joined) {
            (ClientMessage::Ping { id }, _) => {
                self.send(conn, ServerMessage::Pong { id });
                Ok(())
            }
            (ClientMessage::Join { room, token, mode }, None) => {
                let r = self.join(conn, &room, &token, mode, now_unix);
                if let Err(e) = &r
                    && matches!(
                        e.code,
                        ErrorCode::BadToken | ErrorCode::ExpiredToken | ErrorCode::UnknownRoom
                    )
                {
                    self.out.push_back(Output::Close(conn));
                }
                r
            }
            (ClientMessage::Join { .. }, Some(_)) => Err(bad("already joined")),
            (_, None) => Err(bad("join first")),
            (ClientMessage::Leave {}, Some(_)) => {
                self.leave(conn);
                self.out.push_back(Output::Close(conn));
                Ok(())
            }
            (msg, Some(Mode::P2p)) => self.p2p_message(conn, msg),
            (msg, Some(Mode::Sfu)) => self.sfu_message(conn, msg),
        }
    }

    fn send(&mut self, conn: ConnId, msg: ServerMessage) {
        self.out.push_back(Output::Send(conn, msg));
    }

    fn media(&mut self, cmd: Command) {
        self.out.push_back(Output::Media(cmd));
    }

    fn member(&self, conn: ConnId) -> Option<&Member> {
        self.conns.get(&conn).and_then(Option::as_ref)
    }

    fn member_mut(&mut self, conn: ConnId) -> Option<&mut Member> {
        self.conns.get_mut(&conn).and_then(Option::as_mut)
    }

    /// The other participants' connections in `conn`'s room.
    fn others(&self, conn: ConnId) -> Vec<ConnId> {
        self.member(conn)
            .and_then(|m| self.rooms.get(&m.room))
            .map(|r| r.members.iter().copied().filter(|c| *c != conn).collect())
            .unwrap_or_default()
    }

    fn broadcast_others(&mut self, conn: ConnId, msg: &ServerMessage) {
        for c in self.others(conn) {
            self.send(c, msg.clone());
        }
    }

    /// The candidates of the media worker owning room `room`.
    fn candidates_of(&self, room: RoomId) -> Vec<crate::sdp::LocalCandidate> {
        let w = crate::sfu::shards::worker_of(room, self.cfg.candidates.len());
        self.cfg.candidates.get(w).cloned().unwrap_or_default()
    }

    /// Sends `msg` to every participant of `room`.
    fn broadcast_room(&mut self, room: &str, msg: &ServerMessage) {
        let members = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for c in members {
            self.send(c, msg.clone());
        }
    }

    fn random_session_id(&self) -> Result<u64, ProtocolError> {
        random_session_id(&self.rng)
    }

    fn join(
        &mut self,
        conn: ConnId,
        room: &str,
        token: &str,
        mode: Mode,
        now: u64,
    ) -> Result<(), ProtocolError> {
        let claims = authorize_join(room, token, mode, &self.cfg.secrets, now)?;
        match self.rooms.get(room) {
            Some(r) => {
                if r.mode != mode {
                    return Err(bad(format!(
                        "room {room} is in {} mode",
                        match r.mode {
                            Mode::Sfu => "sfu",
                            Mode::P2p => "p2p",
                        }
                    )));
                }
                let cap = match mode {
                    Mode::Sfu => self.cfg.max_participants,
                    Mode::P2p => P2P_ROOM_SIZE,
                };
                if r.members.len() >= cap {
                    return Err(bad(format!("room {room} is full ({cap} participants)")));
                }
            }
            None => {
                if !self.cfg.create_rooms && !self.cfg.rooms.iter().any(|r| r == room) {
                    return Err(ProtocolError::new(
                        ErrorCode::UnknownRoom,
                        format!("no room {room}"),
                    ));
                }
                if mode == Mode::Sfu && self.cfg.max_participants == 0 {
                    return Err(bad("SFU rooms are disabled (max_participants 0)"));
                }
            }
        }
        // Everything that can fail happens before any state changes.
        let pid = take_id(&mut self.next_participant)?;
        let (publisher, subscriber) = match mode {
            Mode::Sfu => {
                let p = PublisherConn::new(
                    take_id(&mut self.next_transport)?,
                    self.random_session_id()?,
                )?;
                let s = SubscriberConn::new(
                    take_id(&mut self.next_transport)?,
                    self.random_session_id()?,
                    format!("relay-{pid}"),
                )?;
                (Some(p), Some(s))
            }
            Mode::P2p => (None, None),
        };
        let room_id = match self.rooms.get(room) {
            Some(r) => r.id,
            None => {
                let id = take_id(&mut self.next_room)?;
                self.rooms.insert(
                    room.to_owned(),
                    Room {
                        id,
                        mode,
                        members: Vec::new(),
                    },
                );
                id
            }
        };
        let participants: Vec<Participant> = self.rooms[room]
            .members
            .iter()
            .filter_map(|c| self.member(*c))
            .map(|m| Participant {
                id: participant_id(m.id),
                identity: m.identity.clone(),
            })
            .collect();
        let tracks: Vec<TrackInfo> = self
            .tracks
            .values()
            .filter(|t| t.room == room)
            .map(|t| t.info.clone())
            .collect();
        let ice = match (mode, &self.cfg.turn_secret) {
            (Mode::Sfu, _) => Vec::new(),
            (Mode::P2p, Some(secret)) => ice_servers(
                &self.cfg.stun_urls,
                &self.cfg.turn_urls,
                secret,
                &claims.identity,
                now,
                self.cfg.turn_ttl_secs,
            ),
            (Mode::P2p, None) => ice_servers(&self.cfg.stun_urls, &[], "", "", now, 0),
        };
        let member = Member {
            room: room.to_owned(),
            room_id,
            mode,
            id: pid,
            identity: claims.identity.clone(),
            publisher,
            subscriber,
        };
        self.conns.insert(conn, Some(member));
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.push(conn);
        }
        self.send(
            conn,
            ServerMessage::Joined {
                participant: participant_id(pid),
                room: room.to_owned(),
                mode,
                participants,
                tracks,
                ice_servers: ice,
            },
        );
        self.broadcast_others(
            conn,
            &ServerMessage::ParticipantJoined {
                participant: Participant {
                    id: participant_id(pid),
                    identity: claims.identity,
                },
            },
        );
        Ok(())
    }

    /// Removes everything of `conn`'s participant (no-op when not joined).
    fn leave(&mut self, conn: ConnId) {
        if self.member(conn).is_none() {
            return;
        }
        // Its published tracks go first, while it is still a member (re-offers to the
        // subscribers of those tracks).
        let own: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.owner == conn)
            .map(|(id, _)| *id)
            .collect();
        self.unpublish_bound(&own);
        let Some(Some(m)) = self.conns.insert(conn, None) else {
            return;
        };
        // Its subscriptions: the transport goes, and with it all it sends.
        if let Some(p) = &m.publisher
            && p.transport_added
        {
            self.media(Command::RemoveTransport(p.transport));
        }
        if let Some(s) = &m.subscriber
            && s.transport_added
        {
            self.media(Command::RemoveTransport(s.transport));
        }
        let others: Vec<ConnId> = match self.rooms.get_mut(&m.room) {
            Some(r) => {
                r.members.retain(|c| *c != conn);
                r.members.clone()
            }
            None => Vec::new(),
        };
        if others.is_empty() {
            self.rooms.remove(&m.room);
        }
        for c in others {
            self.send(
                c,
                ServerMessage::ParticipantLeft {
                    participant: participant_id(m.id),
                },
            );
        }
    }

    fn p2p_message(&mut self, conn: ConnId, msg: ClientMessage) -> Result<(), ProtocolError> {
        let fwd = match msg {
            ClientMessage::Offer { sdp } => {
                check_p2p_sdp(&sdp)?;
                ServerMessage::Offer { sdp, from: None }
            }
            ClientMessage::Answer { sdp } => {
                check_p2p_sdp(&sdp)?;
                ServerMessage::Answer { sdp, from: None }
            }
            ClientMessage::Candidate { candidate, mid, .. } => ServerMessage::Candidate {
                candidate,
                mid,
                from: None,
            },
            other => {
                return Err(bad(format!("{} is not used in p2p mode", other.kind())));
            }
        };
        let Some(me) = self.member(conn) else {
            return Err(bad("join first"));
        };
        let from = Some(participant_id(me.id));
        let Some(peer) = self.others(conn).into_iter().next() else {
            return Err(bad("no peer in the room"));
        };
        let fwd = match fwd {
            ServerMessage::Offer { sdp, .. } => ServerMessage::Offer { sdp, from },
            ServerMessage::Answer { sdp, .. } => ServerMessage::Answer { sdp, from },
            ServerMessage::Candidate { candidate, mid, .. } => ServerMessage::Candidate {
                candidate,
                mid,
                from,
            },
            other => other,
        };
        self.send(peer, fwd);
        Ok(())
    }

    fn sfu_message(&mut self, conn: ConnId, msg: ClientMessage) -> Result<(), ProtocolError> {
        match msg {
            ClientMessage::Publish { tracks } => self.publish(conn, tracks),
            ClientMessage::Unpublish { tracks } => self.unpublish(conn, &tracks),
            ClientMessage::Offer { sdp } => self.publisher_offer(conn, &sdp),
            ClientMessage::Subscribe { tracks } => self.subscribe(conn, &tracks),
            ClientMessage::Answer { sdp } => self.subscriber_answer(conn, &sdp),
            ClientMessage::SetMaxLayer { track, layer } => self.set_max_layer(conn, &track, layer),
            ClientMessage::Candidate { candidate, .. } => {
                // ICE-lite learns the browser's addresses from its STUN checks
                // (peer-reflexive); trickled candidates are only checked.
                if !candidate.is_empty() {
                    crate::sdp::parse_candidate_line(&candidate)
                        .map_err(|e| bad(format!("candidate: {e}")))?;
                }
                Ok(())
            }
            other => Err(bad(format!("{} not allowed now", other.kind()))),
        }
    }

    /// Unpublishes bound tracks: subscribers' sections close (and get re-offered), the
    /// media plane forgets the tracks, the room hears `track_unpublished`.
    fn unpublish_bound(&mut self, ids: &[TrackId]) {
        if ids.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        for id in ids {
            if let Some(t) = self.tracks.remove(id) {
                if let Some(p) = self.member_mut(t.owner).and_then(|m| m.publisher.as_mut()) {
                    p.forget(*id);
                }
                removed.push((*id, t));
            }
        }
        for (id, t) in &removed {
            self.close_subscriptions(&t.room, *id);
            self.media(Command::Unpublish(*id));
            if let Some(r) = self.rooms.get(&t.room) {
                for c in r.members.clone() {
                    if c != t.owner {
                        self.send(
                            c,
                            ServerMessage::TrackUnpublished {
                                track: track_id(*id),
                            },
                        );
                    }
                }
            }
        }
        let rooms: Vec<String> = removed.iter().map(|(_, t)| t.room.clone()).collect();
        for room in rooms {
            self.reoffer_room(&room);
        }
    }
}

/// A random nonzero `u32` (SSRCs).
fn random_u32(rng: &SystemRandom) -> Result<u32, ProtocolError> {
    let mut b = [0u8; 4];
    loop {
        rng.fill(&mut b).map_err(|_| internal("no randomness"))?;
        let v = u32::from_be_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}

/// A random `o=` session id (63 bits, as browsers write them).
fn random_session_id(rng: &SystemRandom) -> Result<u64, ProtocolError> {
    let mut b = [0u8; 8];
    rng.fill(&mut b).map_err(|_| internal("no randomness"))?;
    Ok((u64::from_be_bytes(b) >> 1).max(1))
}

/// P2P descriptions are only relayed: size- and parse-checked so a peer never gets
/// garbage from us.
fn check_p2p_sdp(sdp: &str) -> Result<(), ProtocolError> {
    if sdp.len() > crate::sdp::MAX_SDP_LEN {
        return Err(bad("session description too large"));
    }
    crate::sdp::parse(sdp).map_err(|e| bad(format!("sdp: {e}")))?;
    Ok(())
}

/// The kind of a track as SDP names it.
fn media_kind(kind: TrackKind) -> crate::sdp::MediaKind {
    match kind {
        TrackKind::Audio => crate::sdp::MediaKind::Audio,
        TrackKind::Video => crate::sdp::MediaKind::Video,
    }
}

fn is_screen(source: Source) -> bool {
    source == Source::Screen
}

#[cfg(test)]
mod tests;
