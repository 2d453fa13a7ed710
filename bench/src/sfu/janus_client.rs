//! Synthetic participants that speak Janus's VideoRoom API instead of our signaling, with
//! the same media side ([`Peers`]: ICE checks, DTLS, SRTP, the same offer and media) as
//! the participants of our relay.
//!
//! Per participant: one WebSocket (`janus-protocol`), one session, two handles. Joining
//! (blocking, at the load's join rate): create the session, attach the publisher and
//! subscriber handles, `join` as publisher with a feed id the bench chooses, `configure`
//! with the publisher offer, read Janus's answer (its `a=setup` decides our DTLS role),
//! trickle our candidate. Then, in the workers: once the bench publishes the subscribe
//! plan (every publisher of the room up), `join` as a multistream subscriber to every
//! other feed of the room, answer Janus's offer (recvonly, `setup:active`) with `start`,
//! trickle our candidate; a keepalive every 25 s.
//!
//! Why the subscription waits for the publishers: the VideoRoom refuses a subscription
//! to a feed that is not publishing yet ("No such feed"), and one subscription to the
//! whole room gives the same end state as our relay's incremental subscriptions without
//! a renegotiation per joining publisher.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use relay::dtls::Certificate;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use super::client::{Counters, Driven, LoadConfig, Peers, Spec};
use super::janus::{self, Incoming};
use super::sdp::{offer_transport, our_dtls_role, remote_params, subscriber_answer};

/// How long a blocking request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Rooms' feeds to subscribe to, published by the bench once the publishers are up:
/// room id → feed ids.
pub type SubscribePlan = Arc<Mutex<Option<HashMap<u64, Vec<u64>>>>>;

/// The Janus room id of the bench's room `name`.
pub fn room_id(name: &str, rooms: &HashMap<String, u64>) -> Result<u64> {
    rooms
        .get(name)
        .copied()
        .with_context(|| format!("no Janus room for {name}"))
}

/// A WebSocket to Janus at `addr` with the `janus-protocol` subprotocol; blocking, with a
/// read timeout.
pub fn connect(addr: SocketAddr) -> Result<WebSocket<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}/");
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| anyhow::anyhow!("request {url}: {e}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static(janus::SUBPROTOCOL),
    );
    let (ws, _) = tungstenite::client(req, stream)
        .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
    Ok(ws)
}

/// Transaction ids of one connection.
#[derive(Debug, Default)]
struct Transactions(u64);

impl Transactions {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("t{}", self.0)
    }
}

/// Sends `text` and waits (blocking) for the reply to `transaction`: a success, an event
/// or an error (acks and unrelated notifications are skipped).
fn call(ws: &mut WebSocket<TcpStream>, text: String, transaction: &str) -> Result<Incoming> {
    ws.send(Message::text(text))
        .map_err(|e| anyhow::anyhow!("send to Janus: {e}"))?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        if Instant::now() > deadline {
            bail!("Janus did not answer {transaction}");
        }
        let msg = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(_) => continue,
            Err(e) => bail!("Janus connection: {e}"),
        };
        let m = janus::parse(msg.as_str())?;
        let tx = match &m {
            Incoming::Success { transaction, .. } => Some(transaction.as_str()),
            Incoming::Event { transaction, .. } | Incoming::Error { transaction, .. } => {
                transaction.as_deref()
            }
            _ => None,
        };
        if tx != Some(transaction) {
            continue;
        }
        if let Incoming::Error { code, reason, .. } = &m {
            bail!("Janus error {code}: {reason}");
        }
        return Ok(m);
    }
}

/// Creates a session (returns its id) on `ws`.
fn create_session(ws: &mut WebSocket<TcpStream>, txs: &mut Transactions) -> Result<u64> {
    let t = txs.next();
    match call(ws, janus::create_session(&t), &t)? {
        Incoming::Success { id: Some(id), .. } => Ok(id),
        m => bail!("create: unexpected reply {m:?}"),
    }
}

/// Attaches a VideoRoom handle (returns its id).
fn attach(ws: &mut WebSocket<TcpStream>, txs: &mut Transactions, session: u64) -> Result<u64> {
    let t = txs.next();
    match call(ws, janus::attach(session, &t), &t)? {
        Incoming::Success { id: Some(id), .. } => Ok(id),
        m => bail!("attach: unexpected reply {m:?}"),
    }
}

/// Creates the VideoRoom rooms (ids from `rooms`, `publishers` each) over a control
/// connection of its own, closed afterwards (the rooms stay).
pub fn create_rooms(
    addr: SocketAddr,
    rooms: &HashMap<String, u64>,
    publishers: usize,
) -> Result<()> {
    let mut ws = connect(addr)?;
    let mut txs = Transactions::default();
    let session = create_session(&mut ws, &mut txs)?;
    let handle = attach(&mut ws, &mut txs, session)?;
    for id in rooms.values() {
        let t = txs.next();
        let body = janus::create_room_body(*id, publishers);
        match call(
            &mut ws,
            janus::message(session, handle, &t, &body, None),
            &t,
        )? {
            Incoming::Success {
                plugin: Some(data), ..
            } => janus::expect_videoroom(&data, "created")
                .with_context(|| format!("create room {id}"))?,
            m => bail!("create room {id}: unexpected reply {m:?}"),
        }
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(())
}

/// One synthetic participant speaking Janus's API.
pub struct JanusParticipant {
    spec: Spec,
    ws: WebSocket<TcpStream>,
    txs: Transactions,
    session: u64,
    sub_handle: u64,
    room: u64,
    feed: u64,
    peers: Peers,
    plan: SubscribePlan,
    subscribed: bool,
    next_keepalive: Instant,
    next_due: Instant,
    ws_dead: bool,
}

impl JanusParticipant {
    /// Joins `spec` to Janus room `room` as publisher with feed id `feed` and sends its
    /// offer; returns once Janus answered (the connection comes up in the workers).
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        spec: &Spec,
        cfg: &LoadConfig,
        certificate: &Certificate,
        shared: Arc<Counters>,
        seed: u64,
        room: u64,
        feed: u64,
        plan: SubscribePlan,
    ) -> Result<JanusParticipant> {
        let mut rng = seed;
        let mut ws = connect(cfg.signaling)?;
        let mut txs = Transactions::default();
        let session = create_session(&mut ws, &mut txs)?;
        let pub_handle = attach(&mut ws, &mut txs, session)?;
        let sub_handle = attach(&mut ws, &mut txs, session)?;
        let t = txs.next();
        let body = janus::join_publisher_body(room, feed, &spec.identity);
        match call(
            &mut ws,
            janus::message(session, pub_handle, &t, &body, None),
            &t,
        )? {
            Incoming::Event { data, .. } => {
                janus::expect_videoroom(&data, "joined").context("join as publisher")?
            }
            m => bail!("join: unexpected reply {m:?}"),
        }
        shared.stage.fetch_max(1, Ordering::Relaxed);
        let mut peers = Peers::new(spec, cfg.local_ip, certificate, shared, &mut rng);
        let offer = peers.publisher_offer();
        let t = txs.next();
        let answer = match call(
            &mut ws,
            janus::message(
                session,
                pub_handle,
                &t,
                &janus::configure_body(),
                Some(("offer", &offer)),
            ),
            &t,
        )? {
            Incoming::Event {
                data,
                jsep: Some(jsep),
                ..
            } if jsep.kind == "answer" => {
                if let Some((code, text)) = janus::plugin_error(&data) {
                    bail!("configure: VideoRoom error {code}: {text}");
                }
                jsep.sdp
            }
            m => bail!("configure: no answer in {m:?}"),
        };
        if std::env::var_os("SFU_BENCH_DEBUG").is_some() {
            eprintln!("{}: Janus's answer:\n{answer}", spec.identity);
        }
        let remote = remote_params(&answer).context("Janus's answer")?;
        let role = our_dtls_role(&answer);
        let pc = peers.connect(true, remote, role)?;
        peers.shared.stage.fetch_max(2, Ordering::Relaxed);
        let local = pc.socket.local_addr()?;
        peers.publisher = Some(pc);
        for c in [Some(candidate_line(local.ip(), local.port())), None] {
            let t = txs.next();
            ws.send(Message::text(janus::trickle(
                session,
                pub_handle,
                &t,
                c.as_deref(),
            )))
            .map_err(|e| anyhow::anyhow!("trickle: {e}"))?;
        }
        ws.get_ref().set_nonblocking(true)?;
        let now = Instant::now();
        Ok(JanusParticipant {
            spec: spec.clone(),
            ws,
            txs,
            session,
            sub_handle,
            room,
            feed,
            peers,
            plan,
            subscribed: false,
            next_keepalive: now + Duration::from_secs(janus::KEEPALIVE_SECS),
            next_due: now,
            ws_dead: false,
        })
    }

    fn send(&mut self, text: String) {
        match self.ws.send(Message::text(text)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                eprintln!("{}: Janus connection: {e}", self.spec.identity);
                self.ws_dead = true;
            }
        }
    }

    fn maybe_subscribe(&mut self) {
        if self.subscribed {
            return;
        }
        let feeds: Vec<u64> = {
            let Ok(plan) = self.plan.lock() else { return };
            let Some(plan) = plan.as_ref() else { return };
            plan.get(&self.room)
                .map(|f| f.iter().copied().filter(|&f| f != self.feed).collect())
                .unwrap_or_default()
        };
        self.subscribed = true;
        if feeds.is_empty() {
            return;
        }
        let t = self.txs.next();
        let body = janus::join_subscriber_body(self.room, &feeds);
        let text = janus::message(self.session, self.sub_handle, &t, &body, None);
        self.send(text);
    }

    fn read_signaling(&mut self) {
        while !self.ws_dead {
            let msg = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return;
                }
                Err(e) => {
                    eprintln!("{}: Janus connection closed: {e}", self.spec.identity);
                    self.ws_dead = true;
                    return;
                }
            };
            if std::env::var_os("SFU_BENCH_DEBUG").is_some()
                && msg.as_str().contains("\"attached\"")
            {
                eprintln!("JANUS-ATTACHED {}", msg.as_str());
            }
            match janus::parse(msg.as_str()) {
                Ok(m) => {
                    if let Err(e) = self.on_message(m) {
                        eprintln!("{}: {e:#}", self.spec.identity);
                        self.peers.shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => eprintln!("{}: bad Janus message: {e:#}", self.spec.identity),
            }
        }
    }

    fn on_message(&mut self, m: Incoming) -> Result<()> {
        match m {
            Incoming::Event {
                sender,
                data,
                jsep: Some(jsep),
                ..
            } if sender == self.sub_handle && jsep.kind == "offer" => {
                janus::expect_videoroom(&data, "attached").context("subscribe")?;
                self.peers.shared.stage.fetch_max(3, Ordering::Relaxed);
                let answer = subscriber_answer(
                    &jsep.sdp,
                    &self.peers.sub_creds.0,
                    &self.peers.sub_creds.1,
                    self.peers.certificate.fingerprint(),
                )?;
                let t = self.txs.next();
                let text = janus::message(
                    self.session,
                    self.sub_handle,
                    &t,
                    &janus::start_body(),
                    Some(("answer", &answer)),
                );
                self.send(text);
                if self.peers.subscriber.is_none() {
                    let remote = offer_transport(&jsep.sdp)?;
                    let role = our_dtls_role(&jsep.sdp);
                    let pc = self.peers.connect(false, remote, role)?;
                    let local = pc.socket.local_addr()?;
                    self.peers.subscriber = Some(pc);
                    for c in [Some(candidate_line(local.ip(), local.port())), None] {
                        let t = self.txs.next();
                        let text = janus::trickle(self.session, self.sub_handle, &t, c.as_deref());
                        self.send(text);
                    }
                }
            }
            Incoming::Event { data, .. } => {
                if let Some((code, text)) = janus::plugin_error(&data) {
                    bail!("VideoRoom error {code}: {text}");
                }
            }
            Incoming::Error { code, reason, .. } => bail!("Janus error {code}: {reason}"),
            Incoming::Hangup { sender, reason } => {
                bail!("Janus hung up handle {sender}: {reason}")
            }
            _ => {}
        }
        Ok(())
    }
}

/// Our host candidate as an SDP candidate line (without `a=`).
fn candidate_line(ip: IpAddr, port: u16) -> String {
    format!("candidate:1 1 udp 2122260223 {ip} {port} typ host generation 0")
}

impl Driven for JanusParticipant {
    fn fds(&self) -> [Option<i32>; 3] {
        let [p, s] = self.peers.fds();
        [(!self.ws_dead).then(|| self.ws.get_ref().as_raw_fd()), p, s]
    }

    fn service(&mut self, now: Instant, buf: &mut [u8]) {
        self.read_signaling();
        self.maybe_subscribe();
        let mut due = self.peers.service(now, buf);
        if now >= self.next_keepalive {
            let t = self.txs.next();
            let text = janus::keepalive(self.session, &t);
            self.send(text);
            self.next_keepalive = now + Duration::from_secs(janus::KEEPALIVE_SECS);
        }
        due = due.min(self.next_keepalive);
        if !self.subscribed {
            due = due.min(now + Duration::from_millis(50));
        }
        let _ = self.ws.flush();
        self.next_due = due;
    }

    fn next_due(&self) -> Instant {
        self.next_due
    }

    fn leave(&mut self) {
        let t = self.txs.next();
        let text = serde_json::json!({
            "janus": "destroy",
            "session_id": self.session,
            "transaction": t,
        })
        .to_string();
        self.send(text);
        let _ = self.ws.flush();
    }
}
