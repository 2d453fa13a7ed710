//! The SFU's media plane for one worker, sans-IO: datagrams, commands and time in;
//! datagrams and events out.
//!
//! The engine owns every transport (one per browser peer connection), every published
//! track and every subscription. A datagram is matched to its transport by source
//! address, or, for the first STUN check from a new address, by the ufrag in its
//! USERNAME; the transport turns it into plain RTP/RTCP (ICE, DTLS and SRTP live there);
//! the engine then forwards RTP to each subscriber with that subscriber's rewritten
//! numbers, encrypts once per receiver and hands the datagram to the caller's
//! [`Transmit`]. RTCP is terminated per hop: the engine answers NACKs from its packet
//! cache with RTX, turns receivers' PLI/FIR into rate-limited keyframe requests to the
//! publisher, NACKs publishers' losses, sends TWCC feedback to publishers, and writes its
//! own SRs and RRs.
//!
//! Why sans-IO: the same engine runs under the io_uring worker, in the load bench and in
//! tests with simulated browsers, and its per-packet path can be checked for
//! allocations without sockets.

mod forward;
mod rtcp;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dtls::Certificate;
use crate::ice::Transport as IceTransport;
use crate::sfu::control::{Command, Event, RoomId, TrackId, TransportId};
use crate::sfu::speaker::{SpeakerConfig, SpeakerDetector, SpeakerEvent};
use crate::sfu::transport::{PeerTransport, Received, TransportEvent};
use crate::stun::Message;

use state::{Room, Subscription, Track, TransportSlot};

/// Largest datagram the engine reads or writes.
pub const MAX_DATAGRAM: usize = 1500;
/// Room for the SRTP/SRTCP trailer on top of the plain packet.
const SRTP_OVERHEAD: usize = 32;

/// Where the engine's datagrams go (the socket layer).
///
/// The engine calls [`Transmit::send_via`], naming the ICE transport of the destination:
/// a TCP peer (RFC 6544) is reached over its own connection, and the same remote
/// ip:port may exist over UDP and TCP at once. A UDP-only caller implements
/// [`Transmit::send`] alone (the default `send_via` sends everything through it).
pub trait Transmit {
    /// Sends `data` to `dest` from the engine's UDP socket.
    fn send(&mut self, data: &[u8], dest: SocketAddr);

    /// Sends `data` to `dest` over `via`: UDP, or the TCP connection from `dest`
    /// (framed by the caller, RFC 4571).
    fn send_via(&mut self, data: &[u8], dest: SocketAddr, via: IceTransport) {
        let _ = via;
        self.send(data, dest);
    }
}

/// Where and when a datagram arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The sender's address.
    pub source: SocketAddr,
    /// Our address it arrived on.
    pub local: SocketAddr,
    /// UDP or TCP (RFC 6544 framing removed by the caller).
    pub via: IceTransport,
    /// When.
    pub now: Instant,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How many of a room's loudest speakers each receiver hears.
    pub audio_speakers: usize,
    /// Minimum gap between keyframe requests to one publisher stream.
    pub keyframe_interval: Duration,
    /// Packets kept per video stream for NACK answers (a power of two).
    pub history_packets: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            audio_speakers: 3,
            keyframe_interval: Duration::from_millis(300),
            history_packets: 512,
        }
    }
}

/// Counters for `relay stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams from an address and ufrag no transport knows.
    pub unknown_source: u64,
    /// Plain RTP packets from publishers.
    pub rtp_in: u64,
    /// RTP packets for no known track (unknown SSRC/MID/RID).
    pub rtp_unrouted: u64,
    /// RTP packets forwarded (one per receiver).
    pub rtp_out: u64,
    /// RTX retransmissions sent to receivers.
    pub rtx_out: u64,
    /// NACKed packets no longer in the cache.
    pub nack_misses: u64,
    /// RTCP compounds received.
    pub rtcp_in: u64,
    /// RTCP compounds sent.
    pub rtcp_out: u64,
    /// Keyframe requests (PLI/FIR) sent to publishers.
    pub keyframe_requests: u64,
    /// NACKs sent to publishers.
    pub nacks_out: u64,
    /// Packets that could not be encrypted or built (dropped).
    pub send_errors: u64,
    /// Commands that named unknown objects or failed.
    pub bad_commands: u64,
    /// TWCC feedback messages sent to publishers.
    pub twcc_feedback_out: u64,
    /// SRTP/SRTCP packets that failed authentication or replay checks (live transports).
    pub srtp_failures: u64,
    /// Datagrams the transports dropped (live transports).
    pub transport_drops: u64,
    /// RTP packets not forwarded to a receiver because its answer has no payload type
    /// for the packet's codec (one per receiver; a subscriber offered the wrong codec).
    pub no_codec_drops: u64,
}

/// The media plane of one worker.
pub struct Engine {
    cfg: EngineConfig,
    cert: Arc<Certificate>,
    base: Instant,
    transports: HashMap<TransportId, TransportSlot>,
    by_ufrag: HashMap<String, TransportId>,
    /// Media destinations by address and ICE transport: a UDP and a TCP peer may share an
    /// address and port (NATs number the two protocols independently).
    by_addr: HashMap<(SocketAddr, IceTransport), TransportId>,
    tracks: HashMap<TrackId, Track>,
    subs: HashMap<(TransportId, TrackId), Subscription>,
    rooms: HashMap<RoomId, Room>,
    events: Vec<Event>,
    stats: EngineStats,
    /// Scratch for one outgoing packet (plain, then encrypted in place).
    out: Box<[u8; MAX_DATAGRAM + SRTP_OVERHEAD]>,
    /// Scratch for a second packet built from the first (RTX, unwrapped RTX).
    aux: Box<[u8; MAX_DATAGRAM + SRTP_OVERHEAD]>,
    next_report_us: u64,
    next_feedback_us: u64,
}

impl Engine {
    /// An engine with no transports, using `cert` for every DTLS handshake.
    pub fn new(cfg: EngineConfig, cert: Arc<Certificate>, now: Instant) -> Engine {
        Engine {
            cfg,
            cert,
            base: now,
            transports: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            tracks: HashMap::new(),
            subs: HashMap::new(),
            rooms: HashMap::new(),
            events: Vec::new(),
            stats: EngineStats::default(),
            out: Box::new([0; MAX_DATAGRAM + SRTP_OVERHEAD]),
            aux: Box::new([0; MAX_DATAGRAM + SRTP_OVERHEAD]),
            next_report_us: 0,
            next_feedback_us: 0,
        }
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats;
        for slot in self.transports.values() {
            let t = slot.transport.stats();
            s.srtp_failures += t.srtp_auth_failures + t.srtp_replays;
            s.transport_drops += t.dropped;
        }
        s
    }

    /// How many transports, tracks and subscriptions exist.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.transports.len(), self.tracks.len(), self.subs.len())
    }

    fn us(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    /// The next event for the signaling plane.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// Applies one command from the signaling plane.
    pub fn handle_command(&mut self, cmd: Command, now: Instant) {
        let now_us = self.us(now);
        match cmd {
            Command::AddTransport(spec) => {
                if self.transports.contains_key(&spec.id) {
                    self.remove_transport(spec.id);
                }
                match PeerTransport::new(&spec, &self.cert) {
                    Ok(pt) => {
                        self.by_ufrag.insert(pt.local_ufrag().to_owned(), spec.id);
                        let room = self.rooms.entry(spec.room).or_insert_with(|| {
                            Room::new(SpeakerDetector::new(SpeakerConfig {
                                top_n: self.cfg.audio_speakers,
                                ..SpeakerConfig::default()
                            }))
                        });
                        room.transports += 1;
                        self.transports
                            .insert(spec.id, TransportSlot::new(spec, pt, now_us));
                    }
                    Err(e) => {
                        tracing::warn!(transport = spec.id, error = %e, "cannot create the transport");
                        self.stats.bad_commands += 1;
                    }
                }
            }
            Command::RemoveTransport(id) => self.remove_transport(id),
            Command::Publish(spec) => {
                if !self.transports.contains_key(&spec.transport) {
                    self.stats.bad_commands += 1;
                    return;
                }
                let id = spec.id;
                if let Some(room) = self.rooms.get_mut(&spec.room)
                    && !spec.video
                {
                    room.speakers.add(spec.participant, now_us);
                    room.audio_publishers += 1;
                }
                let track = Track::new(spec, &self.cfg);
                if let Some(slot) = self.transports.get_mut(&track.spec.transport) {
                    slot.published.push(id);
                    for &ssrc in &track.spec.ssrcs {
                        slot.streams.remove(&ssrc);
                    }
                }
                self.tracks.insert(id, track);
            }
            Command::Unpublish(id) => self.unpublish(id),
            Command::Subscribe(out) => {
                let key = (out.transport, out.track);
                let Some(track) = self.tracks.get_mut(&out.track) else {
                    self.stats.bad_commands += 1;
                    return;
                };
                let Some(slot) = self.transports.get_mut(&out.transport) else {
                    self.stats.bad_commands += 1;
                    return;
                };
                if !track.subscribers.contains(&out.transport) {
                    track.subscribers.push(out.transport);
                }
                slot.out_ssrcs.insert(out.ssrc, out.track);
                if let Some(rtx) = out.rtx_ssrc {
                    slot.out_ssrcs.insert(rtx, out.track);
                }
                let sub = Subscription::new(out, track.spec.video, track.clock_hz);
                self.subs.insert(key, sub);
            }
            Command::Unsubscribe { transport, track } => self.unsubscribe(transport, track),
            Command::SetMaxLayer {
                transport,
                track,
                layer,
            } => match self.subs.get_mut(&(transport, track)) {
                Some(sub) => sub.max_layer = Some(layer),
                None => self.stats.bad_commands += 1,
            },
        }
    }

    fn unsubscribe(&mut self, transport: TransportId, track: TrackId) {
        if let Some(sub) = self.subs.remove(&(transport, track))
            && let Some(slot) = self.transports.get_mut(&transport)
        {
            slot.out_ssrcs.remove(&sub.spec.ssrc);
            if let Some(rtx) = sub.spec.rtx_ssrc {
                slot.out_ssrcs.remove(&rtx);
            }
        }
        if let Some(t) = self.tracks.get_mut(&track) {
            t.subscribers.retain(|&s| s != transport);
        }
    }

    fn unpublish(&mut self, id: TrackId) {
        let Some(track) = self.tracks.remove(&id) else {
            return;
        };
        for sub in &track.subscribers {
            if let Some(s) = self.subs.remove(&(*sub, id))
                && let Some(slot) = self.transports.get_mut(sub)
            {
                slot.out_ssrcs.remove(&s.spec.ssrc);
                if let Some(rtx) = s.spec.rtx_ssrc {
                    slot.out_ssrcs.remove(&rtx);
                }
            }
        }
        if let Some(slot) = self.transports.get_mut(&track.spec.transport) {
            slot.published.retain(|&t| t != id);
            slot.streams.retain(|_, s| s.track != id);
        }
        if !track.spec.video {
            if let Some(room) = self.rooms.get_mut(&track.spec.room) {
                room.audio_publishers = room.audio_publishers.saturating_sub(1);
            }
            let still_audio = self
                .tracks
                .values()
                .any(|t| !t.spec.video && t.spec.participant == track.spec.participant);
            if !still_audio && let Some(room) = self.rooms.get_mut(&track.spec.room) {
                room.speakers.remove(track.spec.participant);
            }
        }
    }

    fn remove_transport(&mut self, id: TransportId) {
        let Some(slot) = self.transports.remove(&id) else {
            return;
        };
        self.by_ufrag.retain(|_, t| *t != id);
        self.by_addr.retain(|_, t| *t != id);
        for track in slot.published.clone() {
            self.unpublish(track);
        }
        let subscribed: Vec<TrackId> = self
            .subs
            .keys()
            .filter(|(t, _)| *t == id)
            .map(|(_, track)| *track)
            .collect();
        for track in subscribed {
            self.unsubscribe(id, track);
        }
        let room_id = slot.spec.room;
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.transports = room.transports.saturating_sub(1);
            if room.transports == 0 {
                self.rooms.remove(&room_id);
            }
        }
    }

    /// One datagram that arrived (see [`Arrival`]). `buf` holds it in `buf[..len]` and is
    /// used as scratch (decryption in place).
    pub fn handle_datagram(
        &mut self,
        buf: &mut [u8],
        len: usize,
        at: Arrival,
        tx: &mut dyn Transmit,
    ) {
        let Arrival {
            source,
            local,
            via,
            now,
        } = at;
        self.stats.datagrams_in += 1;
        let len = len.min(buf.len());
        let id = match self.by_addr.get(&(source, via)) {
            Some(&id) => id,
            None => match stun_local_ufrag(&buf[..len]).and_then(|u| self.by_ufrag.get(u)) {
                Some(&id) => id,
                None => {
                    self.stats.unknown_source += 1;
                    return;
                }
            },
        };
        let Some(slot) = self.transports.get_mut(&id) else {
            return;
        };
        slot.last_via = via;
        let received = slot
            .transport
            .handle_datagram(buf, len, source, local, via, now);
        self.after_transport(id, now, tx);
        match received {
            Received::Handled => {}
            Received::Rtp { len } => {
                let now_us = self.us(now);
                self.on_rtp(id, &mut buf[..len], now_us, tx);
            }
            Received::Rtcp { len } => {
                let now_us = self.us(now);
                self.on_rtcp(id, &buf[..len], now_us, tx);
            }
        }
    }

    /// Sends what a transport queued (STUN answers, DTLS flights) and reports its events.
    ///
    /// STUN answers and DTLS flights go back over the transport the transport's last
    /// datagram came on (answers follow their check; a DTLS flight follows the last
    /// accepted DTLS datagram, or the selected pair on a retransmission timer).
    fn after_transport(&mut self, id: TransportId, now: Instant, tx: &mut dyn Transmit) {
        let Some(slot) = self.transports.get_mut(&id) else {
            return;
        };
        let via = slot.last_via;
        while let Some((n, dest)) = slot.transport.poll_transmit(&mut self.out[..]) {
            tx.send_via(&self.out[..n], dest, via);
        }
        while let Some(ev) = slot.transport.poll_event() {
            let connected = matches!(ev, TransportEvent::Connected);
            if connected {
                tracing::debug!(transport = id, "transport connected");
            } else {
                tracing::info!(
                    transport = id,
                    "transport disconnected (ICE consent or DTLS ended)"
                );
            }
            slot.connected = connected;
            self.events.push(Event::TransportState {
                transport: id,
                connected,
            });
        }
        if let Some(dest) = slot.transport.media_destination(now) {
            let via = slot
                .transport
                .selected_pair()
                .map_or(slot.dest_via, |pair| pair.transport);
            if let Some(old) = slot.dest
                && (old, slot.dest_via) != (dest, via)
                && self.by_addr.get(&(old, slot.dest_via)) == Some(&id)
            {
                self.by_addr.remove(&(old, slot.dest_via));
            }
            slot.dest = Some(dest);
            slot.dest_via = via;
            self.by_addr.insert((dest, via), id);
        }
    }

    /// When [`Engine::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.base + Duration::from_micros(self.next_feedback_us);
        for slot in self.transports.values() {
            if let Some(t) = slot.transport.poll_timeout() {
                next = next.min(t);
            }
        }
        next
    }

    /// Runs timers: transports' ICE/DTLS timers, speaker detection, NACKs, keyframe
    /// requests and TWCC feedback to publishers (every 50 ms), SR/RR (every second).
    pub fn handle_timeout(&mut self, now: Instant, tx: &mut dyn Transmit) {
        let ids: Vec<TransportId> = self
            .transports
            .iter()
            .filter(|(_, s)| s.transport.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(slot) = self.transports.get_mut(&id) {
                // A retransmitted DTLS flight goes where media goes, once a pair is
                // selected.
                if let Some(pair) = slot.transport.selected_pair() {
                    slot.last_via = pair.transport;
                }
                slot.transport.handle_timeout(now);
            }
            self.after_transport(id, now, tx);
        }
        let now_us = self.us(now);
        if now_us >= self.next_feedback_us {
            self.next_feedback_us = now_us + 50_000;
            self.speaker_tick(now_us);
            self.publisher_feedback(now_us, tx);
        }
        if now_us >= self.next_report_us {
            self.next_report_us = now_us + 1_000_000;
            self.reports(now_us, tx);
        }
    }

    fn speaker_tick(&mut self, now_us: u64) {
        for (&room_id, room) in &mut self.rooms {
            room.speakers.tick(now_us);
            while let Some(ev) = room.speakers.poll_event() {
                if let SpeakerEvent::Dominant(Some(p)) = ev {
                    room.dominant = Some(p);
                    self.events.push(Event::ActiveSpeaker {
                        room: room_id,
                        participant: p,
                    });
                } else if let SpeakerEvent::Dominant(None) = ev {
                    room.dominant = None;
                }
            }
        }
    }
}

/// The local ufrag of a STUN Binding request's USERNAME ("ours:theirs"), if the datagram
/// is one.
fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !matches!(datagram.first(), Some(0..=3)) {
        return None;
    }
    let msg = Message::parse(datagram).ok()?;
    let username = msg
        .attributes()
        .map_while(Result::ok)
        .find(|a| a.attr_type == crate::stun::attr::USERNAME)?
        .value;
    let username = std::str::from_utf8(username).ok()?;
    username.split(':').next()
}
