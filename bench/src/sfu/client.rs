//! The load client: synthetic participants, each a WebSocket to the signaling server and
//! two peer connections (publisher, subscriber) to the SFU, driven by a few worker
//! threads that wait in poll(2) on all their sockets and send media on time.
//!
//! Exists to put a browser-shaped load on the SFU (join, publish, subscribe to everyone,
//! audio with talk patterns, simulcast video) and count what each receiver gets, without
//! browsers. Everything is bounded: the participant count is fixed, each message queue is
//! tungstenite's, each peer connection owns one socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use relay::dtls::{Certificate, Role};
use relay::rtp::{RtcpPacket, compound};
use relay::signaling::{
    ClientMessage, Mode, PublishTrack, ServerMessage, Source, Target, TrackKind,
};
use tungstenite::{Message, WebSocket};

use super::media::{AUDIO_INTERVAL, AudioSource, FPS, LAYERS, LevelPattern, VideoLayer};
use super::peer::{MTU, PcState, PeerConn, Received};
use super::sdp::{
    RemoteParams, offer_transport, publisher_offer, remote_params, subscriber_answer,
};

/// How often pending subscriptions are sent (one `subscribe` per batch).
const SUBSCRIBE_BATCH: Duration = Duration::from_millis(300);
/// Longest wait in poll(2).
const MAX_WAIT: Duration = Duration::from_millis(5);
/// A sender that fell this far behind its schedule skips ahead instead of bursting.
const MAX_LAG: Duration = Duration::from_millis(100);

/// Counters of one participant, read by the measuring thread.
#[derive(Debug, Default)]
pub struct Counters {
    /// RTP packets sent (audio + video).
    pub sent: AtomicU64,
    /// RTP packets received on the subscriber connection that unprotected.
    pub received: AtomicU64,
    /// Their bytes (plain RTP).
    pub received_bytes: AtomicU64,
    /// RTP sequence numbers skipped on the subscriber connection (per SSRC, forward
    /// jumps only): packets lost between the SFU and the receiver, or never sent by an
    /// SFU that does not renumber what it drops.
    pub seq_gaps: AtomicU64,
    /// SRTP/SRTCP packets that failed to unprotect.
    pub invalid: AtomicU64,
    /// PLI/FIR received on the publisher connection.
    pub keyframe_requests: AtomicU64,
    /// Signaling errors received.
    pub errors: AtomicU64,
    /// The publisher connection is keyed.
    pub publisher_up: AtomicBool,
    /// The subscriber connection is keyed.
    pub subscriber_up: AtomicBool,
    /// How far the participant got, for diagnostics: 1 joined, 2 publisher answer, 3
    /// subscriber offer.
    pub stage: AtomicU64,
    /// Publisher and subscriber connection states (`PcState as u64 + 1`, 0 = none).
    pub pc_states: AtomicU64,
}

/// Who a participant is.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Room name.
    pub room: String,
    /// Identity (unique).
    pub identity: String,
    /// Signed join token.
    pub token: String,
    /// Whether it publishes simulcast video (all publish audio).
    pub video: bool,
    /// Whether it talks (audio levels).
    pub talker: bool,
    /// Disable the high video layer.
    pub no_high: bool,
}

/// Settings of a load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The signaling server (ws://ADDR/ws).
    pub signaling: SocketAddr,
    /// Our address (where the sockets bind).
    pub local_ip: IpAddr,
    /// Participants to create.
    pub participants: Vec<Spec>,
    /// Worker threads.
    pub threads: usize,
    /// CPU to pin the workers on.
    pub cpu: Option<usize>,
    /// Participants joined per second while ramping up.
    pub join_rate: u32,
}

/// A running load: its counters and its workers.
pub struct Load {
    /// One per participant, in the order of [`LoadConfig::participants`].
    pub counters: Vec<Arc<Counters>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// How many publisher and subscriber connections are keyed.
    pub fn connected(&self) -> (usize, usize) {
        let p = self
            .counters
            .iter()
            .filter(|c| c.publisher_up.load(Ordering::Relaxed))
            .count();
        let s = self
            .counters
            .iter()
            .filter(|c| c.subscriber_up.load(Ordering::Relaxed))
            .count();
        (p, s)
    }

    /// Stops the workers (participants leave) and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// How many sequence numbers a packet of `ssrc` with `seq` skipped since the last one
/// (0 for the first, a duplicate or a reordered packet); remembers `seq` when it moves
/// forward.
fn seq_gap(last: &mut HashMap<u32, u16>, ssrc: u32, seq: u16) -> u64 {
    match last.get_mut(&ssrc) {
        None => {
            last.insert(ssrc, seq);
            0
        }
        Some(prev) => {
            let delta = seq.wrapping_sub(*prev);
            if delta == 0 || delta >= 0x8000 {
                return 0;
            }
            *prev = seq;
            u64::from(delta - 1)
        }
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ice_string(rng: &mut u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| char::from(ALPHABET[usize::try_from(splitmix(rng) % 64).unwrap_or(0)]))
        .collect()
}

/// Starts the workers and joins every participant (ramping at `join_rate`); returns
/// once all have joined (their peer connections come up in the background). Call from a
/// thread inside the client namespace: the workers inherit it.
pub fn start(cfg: LoadConfig) -> Result<Load> {
    start_with(cfg, |spec, cfg, certificate, shared, seed| {
        Ok(Box::new(Participant::join(
            spec.clone(),
            cfg,
            certificate,
            shared,
            seed,
        )?))
    })
}

/// One participant as the workers drive it, whatever SFU and signaling it speaks.
pub trait Driven: Send {
    /// The sockets to wait on (signaling, publisher, subscriber).
    fn fds(&self) -> [Option<i32>; 3];
    /// Reads what arrived, answers, sends media that is due.
    fn service(&mut self, now: Instant, buf: &mut [u8]);
    /// When it next wants [`Driven::service`] without input.
    fn next_due(&self) -> Instant;
    /// Says goodbye on the signaling channel.
    fn leave(&mut self);
}

/// [`start`] with another way of joining (another SFU's signaling).
pub fn start_with(
    cfg: LoadConfig,
    mut join: impl FnMut(
        &Spec,
        &LoadConfig,
        &Certificate,
        Arc<Counters>,
        u64,
    ) -> Result<Box<dyn Driven>>,
) -> Result<Load> {
    let certificate = Certificate::generate().context("generate the client certificate")?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads = cfg.threads.max(1);
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for t in 0..threads {
        let (tx, rx) = mpsc::channel::<Box<dyn Driven>>();
        let stop = Arc::clone(&stop);
        let cpu = cfg.cpu;
        senders.push(tx);
        workers.push(
            std::thread::Builder::new()
                .name(format!("sfu-load-{t}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        let _ = crate::sfu::pin_this_thread(cpu);
                    }
                    worker(&rx, &stop);
                })
                .context("spawn a worker")?,
        );
    }
    let mut counters = Vec::new();
    let gap = Duration::from_secs(1) / cfg.join_rate.max(1);
    let mut rng = u64::from(std::process::id()) << 20;
    for (i, spec) in cfg.participants.iter().enumerate() {
        let started = Instant::now();
        let shared = Arc::new(Counters::default());
        let p = join(
            spec,
            &cfg,
            &certificate,
            Arc::clone(&shared),
            splitmix(&mut rng),
        )
        .with_context(|| format!("participant {} joins {}", spec.identity, spec.room))?;
        counters.push(shared);
        if senders[i % threads].send(p).is_err() {
            bail!("a load worker died");
        }
        std::thread::sleep(gap.saturating_sub(started.elapsed()));
    }
    Ok(Load {
        counters,
        stop,
        workers,
    })
}

fn worker(rx: &mpsc::Receiver<Box<dyn Driven>>, stop: &AtomicBool) {
    let mut parts: Vec<Box<dyn Driven>> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut buf = vec![0u8; MTU + 64];
    loop {
        if stop.load(Ordering::Relaxed) {
            for p in &mut parts {
                p.leave();
            }
            return;
        }
        while let Ok(p) = rx.try_recv() {
            parts.push(p);
        }
        let now = Instant::now();
        let mut due = now + MAX_WAIT;
        fds.clear();
        for p in &parts {
            due = due.min(p.next_due());
            for fd in p.fds().into_iter().flatten() {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let wait = due.saturating_duration_since(now);
        let ms = i32::try_from(wait.as_millis()).unwrap_or(5);
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: `fds` is a valid, initialised array of `nfds` pollfd structs that lives
        // for the whole call.
        unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) };
        let now = Instant::now();
        let mut at = 0;
        for p in &mut parts {
            let n = p.fds().iter().flatten().count();
            let readable = fds[at..at + n].iter().any(|f| f.revents != 0);
            at += n;
            if readable || p.next_due() <= now {
                p.service(now, &mut buf);
            }
        }
    }
}

/// A participant's media side, whatever its signaling: the two peer connections, the
/// media it publishes and what it counts. Shared by our signaling's participant and
/// Janus's.
pub struct Peers {
    /// Its counters.
    pub shared: Arc<Counters>,
    /// Our address.
    pub local_ip: IpAddr,
    /// The load's certificate.
    pub certificate: Certificate,
    /// Publisher and subscriber ICE credentials (ufrag, pwd).
    pub pub_creds: (String, String),
    /// Subscriber ICE credentials.
    pub sub_creds: (String, String),
    /// The publisher connection, once the SFU answered.
    pub publisher: Option<PeerConn>,
    /// The subscriber connection, once the SFU offered.
    pub subscriber: Option<PeerConn>,
    /// The audio stream.
    pub audio: AudioSource,
    video: Vec<VideoLayer>,
    /// Last sequence number received per SSRC (subscriber side).
    last_seq: HashMap<u32, u16>,
    next_audio: Instant,
    next_frame: Instant,
    /// Seed for connections' ICE tie-breakers.
    pub seed: u64,
}

impl Peers {
    /// The media of `spec`, its ICE credentials and SSRCs drawn from `rng`.
    pub fn new(
        spec: &Spec,
        local_ip: IpAddr,
        certificate: &Certificate,
        shared: Arc<Counters>,
        rng: &mut u64,
    ) -> Peers {
        let audio_ssrc = u32::try_from(splitmix(rng) & 0xffff_ffff).unwrap_or(1) | 1;
        let audio = AudioSource::new(
            audio_ssrc,
            u16::try_from(splitmix(rng) & 0x7fff).unwrap_or(0),
            LevelPattern {
                talker: spec.talker,
                phase: splitmix(rng) % 200,
            },
        );
        let layers = if spec.no_high {
            &LAYERS[..2]
        } else {
            &LAYERS[..]
        };
        let video = if spec.video {
            layers
                .iter()
                .map(|(rid, rate)| {
                    VideoLayer::new(
                        rid,
                        u32::try_from(splitmix(rng) & 0xffff_ffff).unwrap_or(2) | 2,
                        *rate,
                        u16::try_from(splitmix(rng) & 0x7fff).unwrap_or(0),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let now = Instant::now();
        Peers {
            shared,
            local_ip,
            certificate: certificate.clone(),
            pub_creds: (ice_string(rng, 8), ice_string(rng, 24)),
            sub_creds: (ice_string(rng, 8), ice_string(rng, 24)),
            publisher: None,
            subscriber: None,
            audio,
            video,
            last_seq: HashMap::new(),
            next_audio: now,
            next_frame: now,
            seed: splitmix(rng),
        }
    }

    /// Whether it publishes video.
    pub fn has_video(&self) -> bool {
        !self.video.is_empty()
    }

    /// The rids of its simulcast layers.
    pub fn rids(&self) -> Vec<String> {
        self.video.iter().map(|l| l.rid.to_owned()).collect()
    }

    /// The publisher's offer.
    pub fn publisher_offer(&self) -> String {
        publisher_offer(
            &self.pub_creds.0,
            &self.pub_creds.1,
            &self.certificate.fingerprint_string(),
            self.audio.ssrc,
        )
    }

    /// A peer connection with our ICE credentials for one side to the SFU described by
    /// `remote`, in DTLS role `role`.
    pub fn connect(
        &mut self,
        publisher: bool,
        remote: RemoteParams,
        role: Role,
    ) -> Result<PeerConn> {
        let (ufrag, pwd) = if publisher {
            self.pub_creds.clone()
        } else {
            self.sub_creds.clone()
        };
        PeerConn::new(
            self.local_ip,
            ufrag,
            pwd,
            remote,
            &self.certificate,
            splitmix(&mut self.seed),
            role,
        )
    }

    /// The publisher and subscriber sockets.
    pub fn fds(&self) -> [Option<i32>; 2] {
        [
            self.publisher.as_ref().map(|p| p.socket.as_raw_fd()),
            self.subscriber.as_ref().map(|p| p.socket.as_raw_fd()),
        ]
    }

    /// Counts what the subscriber received, handles keyframe requests on the publisher,
    /// sends media that is due; returns when it next wants to run.
    pub fn service(&mut self, now: Instant, buf: &mut [u8]) -> Instant {
        let mut due = now + Duration::from_secs(1);
        // Subscriber: count what arrives.
        if let Some(s) = self.subscriber.as_mut() {
            while let Some(r) = s.recv(buf, now) {
                match r {
                    Received::Rtp(n) => {
                        self.shared.received.fetch_add(1, Ordering::Relaxed);
                        if n >= 12 {
                            let seq = u16::from_be_bytes([buf[2], buf[3]]);
                            let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                            let gap = seq_gap(&mut self.last_seq, ssrc, seq);
                            if gap > 0 {
                                self.shared.seq_gaps.fetch_add(gap, Ordering::Relaxed);
                            }
                        }
                        self.shared
                            .received_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Received::Invalid => {
                        self.shared.invalid.fetch_add(1, Ordering::Relaxed);
                    }
                    Received::Rtcp(_) | Received::Nothing => {}
                }
            }
            due = due.min(s.tick(now));
            if s.state == PcState::Connected {
                self.shared.subscriber_up.store(true, Ordering::Relaxed);
            }
        }
        // Publisher: keyframe requests in, media out.
        if let Some(p) = self.publisher.as_mut() {
            while let Some(r) = p.recv(buf, now) {
                match r {
                    Received::Rtcp(n) => {
                        for pkt in compound(&buf[..n]).flatten() {
                            let ssrc = match pkt {
                                RtcpPacket::Pli(p) => Some(p.media_ssrc()),
                                RtcpPacket::Fir(f) => f.entries().next().map(|e| e.ssrc),
                                _ => None,
                            };
                            if let Some(ssrc) = ssrc {
                                self.shared
                                    .keyframe_requests
                                    .fetch_add(1, Ordering::Relaxed);
                                for l in self.video.iter_mut().filter(|l| l.ssrc == ssrc) {
                                    l.want_keyframe = true;
                                }
                            }
                        }
                    }
                    Received::Invalid => {
                        self.shared.invalid.fetch_add(1, Ordering::Relaxed);
                    }
                    Received::Rtp(_) | Received::Nothing => {}
                }
            }
            due = due.min(p.tick(now));
            if p.state == PcState::Connected {
                self.shared.publisher_up.store(true, Ordering::Relaxed);
                self.send_media(now, buf);
                due = due.min(self.next_audio);
                if !self.video.is_empty() {
                    due = due.min(self.next_frame);
                }
            }
        }
        let st = |p: &Option<PeerConn>| p.as_ref().map_or(0, |p| p.state as u64 + 1);
        self.shared.pc_states.store(
            st(&self.publisher) * 10 + st(&self.subscriber),
            Ordering::Relaxed,
        );
        due
    }

    fn send_media(&mut self, now: Instant, buf: &mut [u8]) {
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        let remote = p.remote().clone();
        if now.saturating_duration_since(self.next_audio) > MAX_LAG {
            self.next_audio = now;
        }
        while self.next_audio <= now {
            let n = self
                .audio
                .next(buf, remote.opus_pt.unwrap_or(111), &remote.ext);
            if p.send_rtp(buf, n) {
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            self.next_audio += AUDIO_INTERVAL;
        }
        if self.video.is_empty() {
            return;
        }
        let frame = Duration::from_secs(1) / FPS;
        if now.saturating_duration_since(self.next_frame) > MAX_LAG {
            self.next_frame = now;
        }
        while self.next_frame <= now {
            for l in &mut self.video {
                l.start_frame();
                while let Some(n) = l.next(buf, remote.vp8_pt.unwrap_or(96), &remote.ext) {
                    if p.send_rtp(buf, n) {
                        self.shared.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.next_frame += frame;
        }
    }
}

/// One synthetic participant speaking our signaling.
struct Participant {
    spec: Spec,
    ws: WebSocket<TcpStream>,
    me: Option<String>,
    peers: Peers,
    pending: Vec<String>,
    next_subscribe: Instant,
    next_due: Instant,
    ws_dead: bool,
}

impl Driven for Participant {
    fn fds(&self) -> [Option<i32>; 3] {
        let [p, s] = self.peers.fds();
        [(!self.ws_dead).then(|| self.ws.get_ref().as_raw_fd()), p, s]
    }
    fn service(&mut self, now: Instant, buf: &mut [u8]) {
        Participant::service(self, now, buf);
    }
    fn next_due(&self) -> Instant {
        self.next_due
    }
    fn leave(&mut self) {
        let _ = send(&mut self.ws, &ClientMessage::Leave {});
        let _ = self.ws.flush();
    }
}

impl Participant {
    fn join(
        spec: Spec,
        cfg: &LoadConfig,
        certificate: &Certificate,
        shared: Arc<Counters>,
        seed: u64,
    ) -> Result<Participant> {
        let mut rng = seed;
        let stream = TcpStream::connect_timeout(&cfg.signaling, Duration::from_secs(5))
            .with_context(|| format!("connect to {}", cfg.signaling))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{}/ws", cfg.signaling);
        let (mut ws, _) = tungstenite::client(url.as_str(), stream)
            .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
        send(
            &mut ws,
            &ClientMessage::Join {
                room: spec.room.clone(),
                token: spec.token.clone(),
                mode: Mode::Sfu,
            },
        )?;
        ws.get_ref().set_nonblocking(true)?;
        let peers = Peers::new(&spec, cfg.local_ip, certificate, shared, &mut rng);
        let now = Instant::now();
        Ok(Participant {
            spec,
            ws,
            me: None,
            peers,
            pending: Vec::new(),
            next_subscribe: now,
            next_due: now,
            ws_dead: false,
        })
    }

    fn service(&mut self, now: Instant, buf: &mut [u8]) {
        self.read_signaling(now);
        let mut due = self.peers.service(now, buf);
        if !self.pending.is_empty() && now >= self.next_subscribe {
            let tracks: Vec<String> = self.pending.drain(..self.pending.len().min(256)).collect();
            if send(&mut self.ws, &ClientMessage::Subscribe { tracks }).is_err() {
                self.ws_dead = true;
            }
            self.next_subscribe = now + SUBSCRIBE_BATCH;
        }
        if !self.pending.is_empty() {
            due = due.min(self.next_subscribe);
        }
        let _ = self.ws.flush();
        self.next_due = due;
    }

    fn read_signaling(&mut self, now: Instant) {
        while !self.ws_dead {
            let msg = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return;
                }
                Err(e) => {
                    eprintln!("{}: signaling closed: {e}", self.spec.identity);
                    self.ws_dead = true;
                    return;
                }
            };
            // Not `parse_server`: it caps messages at the server's 1 MiB description cap,
            // and this client should see whatever the SFU sends (one section per track in
            // a large room); tungstenite bounds a message at 64 MiB.
            match serde_json::from_str::<ServerMessage>(msg.as_str()) {
                Ok(m) => {
                    if let Err(e) = self.on_message(m, now) {
                        eprintln!("{}: {e:#}", self.spec.identity);
                        self.peers.shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => eprintln!("{}: bad server message: {e:?}", self.spec.identity),
            }
        }
    }

    fn on_message(&mut self, m: ServerMessage, _now: Instant) -> Result<()> {
        match m {
            ServerMessage::Joined {
                participant,
                tracks,
                ..
            } => {
                self.pending.extend(
                    tracks
                        .into_iter()
                        .filter(|t| t.participant != participant)
                        .map(|t| t.id),
                );
                self.me = Some(participant);
                self.peers.shared.stage.fetch_max(1, Ordering::Relaxed);
                let mut tracks = vec![PublishTrack {
                    kind: TrackKind::Audio,
                    source: Source::Microphone,
                    mid: Some("0".into()),
                    simulcast: Vec::new(),
                }];
                if self.peers.has_video() {
                    tracks.push(PublishTrack {
                        kind: TrackKind::Video,
                        source: Source::Camera,
                        mid: Some("1".into()),
                        simulcast: self.peers.rids(),
                    });
                }
                send(&mut self.ws, &ClientMessage::Publish { tracks })?;
                let sdp = self.peers.publisher_offer();
                send(&mut self.ws, &ClientMessage::Offer { sdp })?;
            }
            ServerMessage::Answer { sdp, .. } => {
                let remote = remote_params(&sdp)?;
                self.peers.shared.stage.fetch_max(2, Ordering::Relaxed);
                if self.peers.publisher.is_none() {
                    let pc = self.peers.connect(true, remote, Role::Client)?;
                    self.announce(&pc, Target::Publisher)?;
                    self.peers.publisher = Some(pc);
                }
            }
            ServerMessage::Offer { sdp, .. } => {
                let answer = subscriber_answer(
                    &sdp,
                    &self.peers.sub_creds.0,
                    &self.peers.sub_creds.1,
                    self.peers.certificate.fingerprint(),
                )?;
                send(&mut self.ws, &ClientMessage::Answer { sdp: answer })?;
                self.peers.shared.stage.fetch_max(3, Ordering::Relaxed);
                if self.peers.subscriber.is_none() {
                    let remote = offer_transport(&sdp)?;
                    let pc = self.peers.connect(false, remote, Role::Client)?;
                    self.announce(&pc, Target::Subscriber)?;
                    self.peers.subscriber = Some(pc);
                }
            }
            ServerMessage::TrackPublished { track }
                if Some(&track.participant) != self.me.as_ref() =>
            {
                self.pending.push(track.id);
            }
            ServerMessage::Error { code, message } => {
                self.peers.shared.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("{}: server error {code:?}: {message}", self.spec.identity);
            }
            _ => {}
        }
        Ok(())
    }

    /// Trickles our host candidate for a connection, then end-of-candidates.
    fn announce(&mut self, pc: &PeerConn, target: Target) -> Result<()> {
        let local = pc.socket.local_addr()?;
        let candidate = format!(
            "candidate:1 1 udp 2122260223 {} {} typ host generation 0",
            local.ip(),
            local.port()
        );
        for candidate in [candidate, String::new()] {
            send(
                &mut self.ws,
                &ClientMessage::Candidate {
                    candidate,
                    mid: Some("0".into()),
                    target,
                },
            )?;
        }
        Ok(())
    }
}

/// Sends a message; a full socket (WouldBlock) leaves it queued in tungstenite's buffer.
fn send(ws: &mut WebSocket<TcpStream>, m: &ClientMessage) -> Result<()> {
    let text = serde_json::to_string(m).context("serialize")?;
    match ws.send(Message::text(text)) {
        Ok(()) => Ok(()),
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(anyhow::anyhow!("send: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_forward_jumps_only() {
        let mut last = HashMap::new();
        assert_eq!(seq_gap(&mut last, 1, 100), 0, "first packet");
        assert_eq!(seq_gap(&mut last, 1, 101), 0);
        assert_eq!(seq_gap(&mut last, 1, 104), 2, "102 and 103 missing");
        assert_eq!(seq_gap(&mut last, 1, 103), 0, "late packet");
        assert_eq!(seq_gap(&mut last, 1, 104), 0, "duplicate");
        assert_eq!(seq_gap(&mut last, 2, 7), 0, "another SSRC");
        assert_eq!(seq_gap(&mut last, 1, 105), 0);
        let mut w = HashMap::new();
        assert_eq!(seq_gap(&mut w, 9, 65_534), 0);
        assert_eq!(seq_gap(&mut w, 9, 1), 2, "wraps: 65535 and 0 missing");
    }
}
