//! The signaling server over real loopback TCP: a real `SignalingServer` with real
//! `Rooms`, browsers played by tungstenite clients, and the media plane played by the
//! ends of the Command/Event channels (the real boundary: the test reads the Commands
//! the server emits and pushes Events in).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use relay::sdp::{CandidateTransport, LocalCandidate};
use relay::sfu::control::{Command, Event, TransportRole};
use relay::signaling::rooms::{Rooms, RoomsConfig};
use relay::signaling::server::{ServerConfig, SignalingServer};
use relay::signaling::{Claims, ErrorCode, Mode, ServerMessage, parse_server, sign};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const SECRET: &[u8] = b"signaling integration test secret";
const DEMO_SECRET: &[u8] = b"demo token secret";
const CHROME_OFFER: &str = include_str!("../src/sdp/fixtures/chrome_av_simulcast.sdp");
const WAIT: Duration = Duration::from_secs(5);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

struct Harness {
    server: SignalingServer,
    commands: Receiver<Command>,
    events: Sender<Event>,
}

fn rooms_config() -> RoomsConfig {
    RoomsConfig {
        secrets: vec![SECRET.to_vec()],
        candidates: vec![vec![LocalCandidate {
            addr: "127.0.0.1:3478".parse().expect("addr"),
            transport: CandidateTransport::Udp,
        }]],
        fingerprint: [0x5a; 32],
        stun_urls: vec!["stun:127.0.0.1:3478".into()],
        turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        turn_secret: Some("turn secret".into()),
        turn_ttl_secs: 3600,
        create_rooms: false,
        rooms: vec!["standup".into(), "call".into(), "flood".into()],
        max_participants: 50,
    }
}

fn start_with(cfg: ServerConfig) -> Harness {
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
    let server = SignalingServer::start(cfg, Rooms::new(rooms_config()), cmd_tx, ev_rx)
        .expect("server starts");
    Harness {
        server,
        commands: cmd_rx,
        events: ev_tx,
    }
}

fn base_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        demo_tokens: Some(DEMO_SECRET.to_vec()),
        ..ServerConfig::default()
    }
}

fn start() -> Harness {
    start_with(base_config())
}

fn token(room: &str, identity: &str, p2p: bool, exp: u64) -> String {
    sign(
        &Claims {
            room: room.into(),
            identity: identity.into(),
            exp,
            p2p,
        },
        SECRET,
    )
    .expect("sign")
}

/// One raw HTTP request; the whole response as text.
fn http(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(raw).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, target: &str) -> String {
    http(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let (ws, resp) =
            tungstenite::client::client(format!("ws://{addr}/ws"), stream).expect("handshake");
        assert_eq!(resp.status(), 101);
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        Client { ws }
    }

    fn send(&mut self, json: &str) {
        self.ws.send(Message::text(json)).expect("send");
    }

    /// The next signaling message, or `None` when the server closed the connection
    /// (close frame or EOF). Panics after `WAIT`.
    fn next(&mut self) -> Option<ServerMessage> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Some(parse_server(t.as_bytes()).expect("valid server message"));
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
        panic!("no message within {WAIT:?}");
    }

    fn recv(&mut self) -> ServerMessage {
        self.next().expect("a message, not a close")
    }

    /// Skips messages until one matches.
    fn until(&mut self, what: &str, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        for _ in 0..2000 {
            let m = self.recv();
            if pred(&m) {
                return m;
            }
        }
        panic!("never got {what}");
    }

    /// Expects the server to close: a close frame (its code returned) or EOF.
    fn expect_close(&mut self) -> Option<CloseCode> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(Message::Text(t)) => panic!("expected a close, got {t}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
        panic!("connection not closed within {WAIT:?}");
    }

    fn join(&mut self, room: &str, identity: &str, mode: Mode) -> ServerMessage {
        let p2p = mode == Mode::P2p;
        let mode = if p2p { "p2p" } else { "sfu" };
        let t = token(room, identity, p2p, now() + 600);
        self.send(&format!(
            r#"{{"type":"join","room":"{room}","token":"{t}","mode":"{mode}"}}"#
        ));
        let m = self.recv();
        assert!(matches!(m, ServerMessage::Joined { .. }), "{m:?}");
        m
    }
}

fn participant_of(joined: &ServerMessage) -> String {
    match joined {
        ServerMessage::Joined { participant, .. } => participant.clone(),
        other => panic!("{other:?}"),
    }
}

fn error_code(m: &ServerMessage) -> ErrorCode {
    match m {
        ServerMessage::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn next_command(rx: &Receiver<Command>) -> Command {
    rx.recv_timeout(WAIT).expect("a command within the wait")
}

#[test]
fn http_routes_page_token_and_limits() {
    let h = start();
    let addr = h.server.local_addr();

    // A slow client that never finishes its request head holds only its own thread.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");

    let page = get(addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(page.contains("Cache-Control: no-store\r\n"));
    assert!(page.contains("Content-Security-Policy: default-src 'none'; script-src 'self';"));
    assert!(page.ends_with(include_str!("../assets/demo.html")));
    let js = get(addr, "/demo.js");
    assert!(js.contains("Content-Type: application/javascript"));
    assert!(js.ends_with(include_str!("../assets/demo.js")));
    assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    assert!(
        get(addr, "/ws").starts_with("HTTP/1.1 400"),
        "no upgrade headers"
    );
    assert!(http(addr, b"NONSENSE\r\n\r\n").starts_with("HTTP/1.1 400"));
    let mut huge = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.resize(9000, b'a');
    assert!(http(addr, &huge).starts_with("HTTP/1.1 431"));

    // Demo tokens: a real token that joins.
    let resp = get(addr, "/token?room=standup&identity=alice");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).expect("body")).expect("json");
    let t = body["token"].as_str().expect("token").to_owned();
    let claims = relay::signaling::verify(&t, &[DEMO_SECRET], "standup", now()).expect("valid");
    assert!(claims.exp >= now() + 3590 && claims.exp <= now() + 3600);

    // The slow one is still waiting (its deadline is 10 s), not answered half-read.
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(slow.read(&mut byte).is_err(), "answered an incomplete head");

    // Disabled: 404.
    let off = start_with(ServerConfig {
        demo_tokens: None,
        ..base_config()
    });
    assert!(
        get(
            off.server.local_addr(),
            "/token?room=standup&identity=alice"
        )
        .starts_with("HTTP/1.1 404")
    );
}

#[test]
fn a_demo_token_joins_when_the_rooms_accept_its_secret() {
    // The demo secret signs; rooms that verify with it accept the token.
    let (cmd_tx, _cmd_rx) = crossbeam_channel::unbounded();
    let (_ev_tx, ev_rx) = crossbeam_channel::unbounded();
    let rooms = Rooms::new(RoomsConfig {
        secrets: vec![DEMO_SECRET.to_vec()],
        ..rooms_config()
    });
    let server = SignalingServer::start(base_config(), rooms, cmd_tx, ev_rx).expect("start");
    let addr = server.local_addr();
    let resp = get(addr, "/token?room=call&identity=bob&p2p=1");
    let body: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).expect("body")).expect("json");
    let t = body["token"].as_str().expect("token");
    let mut c = Client::connect(addr);
    c.send(&format!(
        r#"{{"type":"join","room":"call","token":"{t}","mode":"p2p"}}"#
    ));
    assert!(matches!(
        c.recv(),
        ServerMessage::Joined {
            mode: Mode::P2p,
            ..
        }
    ));
}

#[test]
fn join_bad_json_keeps_the_connection() {
    let h = start();
    let mut c = Client::connect(h.server.local_addr());
    c.send(r#"{"type":"ping","id":1}"#);
    assert_eq!(c.recv(), ServerMessage::Pong { id: Some(1) });
    let joined = c.join("standup", "alice", Mode::Sfu);
    assert!(participant_of(&joined).starts_with("PA_"));
    c.send("{not json");
    assert_eq!(error_code(&c.recv()), ErrorCode::BadJson);
    c.send(r#"{"type":"dance"}"#);
    assert_eq!(error_code(&c.recv()), ErrorCode::BadRequest);
    c.ws.send(Message::binary(vec![1u8, 2, 3])).expect("send");
    assert_eq!(error_code(&c.recv()), ErrorCode::BadRequest);
    c.send(r#"{"type":"ping","id":2}"#);
    assert_eq!(c.recv(), ServerMessage::Pong { id: Some(2) });
    let stats = h.server.stats();
    assert_eq!(stats.rooms.participants, 1);
    let count = |code| {
        stats
            .errors
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(ErrorCode::BadJson), Some(1));
    assert_eq!(count(ErrorCode::BadRequest), Some(2));
    assert!(
        stats.messages_in >= 6 && stats.messages_out >= 6,
        "{stats:?}"
    );
}

#[test]
fn fatal_join_errors_close_the_connection() {
    let h = start();
    let addr = h.server.local_addr();
    let cases = [
        ("standup", "garbage.token".to_owned(), ErrorCode::BadToken),
        (
            "standup",
            token("call", "alice", false, now() + 600),
            ErrorCode::BadToken,
        ),
        (
            "standup",
            token("standup", "alice", false, now() - 1),
            ErrorCode::ExpiredToken,
        ),
        (
            "nowhere",
            token("nowhere", "alice", false, now() + 600),
            ErrorCode::UnknownRoom,
        ),
    ];
    for (room, t, code) in cases {
        let mut c = Client::connect(addr);
        c.send(&format!(
            r#"{{"type":"join","room":"{room}","token":"{t}","mode":"sfu"}}"#
        ));
        assert_eq!(error_code(&c.recv()), code, "{room} {t}");
        assert_eq!(c.expect_close(), Some(CloseCode::Normal), "{code:?}");
    }
    // The server forgot them all.
    let deadline = Instant::now() + WAIT;
    while h.server.stats().connections_open > 0 {
        assert!(Instant::now() < deadline, "connections still open");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.server.stats().rooms.participants, 0);
}

#[test]
fn oversized_messages_get_too_large() {
    let h = start();
    let mut c = Client::connect(h.server.local_addr());
    c.join("standup", "alice", Mode::Sfu);
    // Over 64 KiB but within the read cap: refused, the connection stays.
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000));
    c.send(&big);
    assert_eq!(error_code(&c.recv()), ErrorCode::TooLarge);
    c.send(r#"{"type":"ping","id":3}"#);
    assert_eq!(c.recv(), ServerMessage::Pong { id: Some(3) });
    // A description may be larger (a big room's answer): past the size gate, it gets
    // whatever its content deserves (here: no offer is pending), not too_large.
    let answer = format!(r#"{{"type":"answer","sdp":"v=0{}"}}"#, "a".repeat(200_000));
    c.send(&answer);
    let reply = c.recv();
    assert!(
        !matches!(
            reply,
            ServerMessage::Error {
                code: ErrorCode::TooLarge,
                ..
            }
        ),
        "a 200 KB answer is within the description cap: {reply:?}"
    );
    c.send(r#"{"type":"ping","id":4}"#);
    assert_eq!(c.recv(), ServerMessage::Pong { id: Some(4) });
    // Far over the read cap (1 MiB + 16 KiB): too_large, then closed with 1009.
    c.send(&"y".repeat(1_200_000));
    assert_eq!(error_code(&c.recv()), ErrorCode::TooLarge);
    assert_eq!(c.expect_close(), Some(CloseCode::Size));
}

#[test]
fn a_flood_is_rate_limited_without_slowing_the_others() {
    let h = start();
    let addr = h.server.local_addr();
    let mut flooder = Client::connect(addr);
    flooder.join("flood", "mallory", Mode::Sfu);
    let mut bob = Client::connect(addr);
    bob.join("flood", "bob", Mode::Sfu);
    // mallory hears of bob.
    flooder.until("participant_joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });

    let flood = std::thread::spawn(move || {
        for i in 0..1000u32 {
            flooder
                .ws
                .write(Message::text(format!(r#"{{"type":"ping","id":{i}}}"#)))
                .expect("write");
        }
        flooder.ws.flush().expect("flush");
        let mut pongs = 0;
        let mut limited = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match flooder.ws.read() {
                Ok(Message::Text(t)) => match parse_server(t.as_bytes()).expect("valid") {
                    ServerMessage::Pong { .. } => pongs += 1,
                    ServerMessage::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    } => limited += 1,
                    _ => {}
                },
                Ok(_) => {}
                Err(tungstenite::Error::Io(_)) => {}
                Err(e) => panic!("flooder connection failed: {e}"),
            }
        }
        (pongs, limited)
    });

    // Meanwhile bob's pings are answered promptly, and he hears of carol at once.
    let mut worst = Duration::ZERO;
    for i in 0..20u64 {
        let t0 = Instant::now();
        bob.send(&format!(r#"{{"type":"ping","id":{i}}}"#));
        let m = bob.until("pong", |m| matches!(m, ServerMessage::Pong { .. }));
        assert_eq!(m, ServerMessage::Pong { id: Some(i) });
        worst = worst.max(t0.elapsed());
    }
    let mut carol = Client::connect(addr);
    let t0 = Instant::now();
    carol.join("flood", "carol", Mode::Sfu);
    bob.until("participant_joined", |m| matches!(m, ServerMessage::ParticipantJoined { participant } if participant.identity == "carol"));
    let join_seen = t0.elapsed();
    assert!(
        worst < Duration::from_millis(500),
        "bob's worst ping {worst:?}"
    );
    assert!(
        join_seen < Duration::from_millis(500),
        "participant_joined after {join_seen:?}"
    );

    let (pongs, limited) = flood.join().expect("flood thread");
    assert!(limited >= 1, "no rate_limited error");
    assert!(
        limited <= 3,
        "rate_limited is sent at most once per second, got {limited}"
    );
    // 100 in the burst plus what 50/s refills in the flood's short life.
    assert!((100..300).contains(&pongs), "{pongs} pongs");
    let stats = h.server.stats();
    let limited_count = stats
        .errors
        .iter()
        .find(|(c, _)| *c == ErrorCode::RateLimited)
        .map(|(_, n)| *n);
    assert_eq!(limited_count, Some(limited));
}

#[test]
fn p2p_peers_exchange_offer_answer_candidates() {
    let h = start();
    let addr = h.server.local_addr();
    let mut alice = Client::connect(addr);
    let ja = alice.join("call", "alice", Mode::P2p);
    let ServerMessage::Joined {
        ice_servers,
        participants,
        ..
    } = &ja
    else {
        unreachable!()
    };
    assert!(participants.is_empty());
    assert!(
        ice_servers
            .iter()
            .any(|s| s.urls.iter().any(|u| u.starts_with("turn:"))
                && s.username.as_deref().is_some_and(|u| u.ends_with(":alice")))
    );
    let alice_id = participant_of(&ja);
    let mut bob = Client::connect(addr);
    let jb = bob.join("call", "bob", Mode::P2p);
    let bob_id = participant_of(&jb);
    let ServerMessage::Joined { participants, .. } = &jb else {
        unreachable!()
    };
    assert_eq!(participants.len(), 1);
    assert_eq!(participants[0].id, alice_id);
    match alice.recv() {
        ServerMessage::ParticipantJoined { participant } => assert_eq!(participant.id, bob_id),
        other => panic!("{other:?}"),
    }
    let sdp = CHROME_OFFER.replace('\n', "\\n").replace('\r', "\\r");
    bob.send(&format!(r#"{{"type":"offer","sdp":"{sdp}"}}"#));
    match alice.recv() {
        ServerMessage::Offer { sdp, from } => {
            assert_eq!(sdp, CHROME_OFFER);
            assert_eq!(from.as_deref(), Some(bob_id.as_str()));
        }
        other => panic!("{other:?}"),
    }
    alice.send(&format!(r#"{{"type":"answer","sdp":"{sdp}"}}"#));
    match bob.recv() {
        ServerMessage::Answer { from, .. } => assert_eq!(from.as_deref(), Some(alice_id.as_str())),
        other => panic!("{other:?}"),
    }
    let cand = "candidate:1 1 udp 2113937151 192.0.2.7 54321 typ host";
    alice.send(&format!(
        r#"{{"type":"candidate","candidate":"{cand}","mid":"0"}}"#
    ));
    assert_eq!(
        bob.recv(),
        ServerMessage::Candidate {
            candidate: cand.into(),
            mid: Some("0".into()),
            from: Some(alice_id.clone()),
        }
    );
    bob.send(r#"{"type":"candidate","candidate":""}"#);
    assert_eq!(
        alice.recv(),
        ServerMessage::Candidate {
            candidate: String::new(),
            mid: None,
            from: Some(bob_id.clone()),
        }
    );
    // P2P carries no media: nothing for the media plane.
    assert!(h.commands.try_recv().is_err());
    // Leaving: the other hears of it; the leaver is closed.
    bob.send(r#"{"type":"leave"}"#);
    assert_eq!(bob.expect_close(), Some(CloseCode::Normal));
    assert_eq!(
        alice.recv(),
        ServerMessage::ParticipantLeft {
            participant: bob_id
        }
    );
}

#[test]
fn sfu_publish_offer_answer_commands_and_active_speaker() {
    let h = start();
    let addr = h.server.local_addr();
    let mut alice = Client::connect(addr);
    let alice_id = participant_of(&alice.join("standup", "alice", Mode::Sfu));
    let mut bob = Client::connect(addr);
    bob.join("standup", "bob", Mode::Sfu);
    alice.until("participant_joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });

    alice.send(
        r#"{"type":"publish","tracks":[{"kind":"audio","source":"microphone","mid":"0"},
            {"kind":"video","source":"camera","mid":"1","simulcast":["q","h","f"]}]}"#,
    );
    let sdp = CHROME_OFFER.replace('\n', "\\n").replace('\r', "\\r");
    alice.send(&format!(r#"{{"type":"offer","sdp":"{sdp}"}}"#));
    let answer = alice.until("answer", |m| matches!(m, ServerMessage::Answer { .. }));
    let ServerMessage::Answer { sdp, from } = answer else {
        unreachable!()
    };
    assert_eq!(from, None);
    assert!(sdp.starts_with("v=0"));
    assert!(sdp.contains("a=ice-lite"));
    assert!(sdp.contains("a=setup:passive"));
    assert!(sdp.contains("a=simulcast:recv q;h;f"));

    // The media plane gets the transport, then both tracks.
    let spec = match next_command(&h.commands) {
        Command::AddTransport(spec) => spec,
        other => panic!("expected AddTransport, got {other:?}"),
    };
    assert_eq!(spec.role, TransportRole::Publisher);
    assert_eq!(spec.remote_ufrag, "Kx3m");
    assert_eq!(format!("PA_{}", spec.participant), alice_id);
    let mut published = Vec::new();
    for _ in 0..2 {
        match next_command(&h.commands) {
            Command::Publish(t) => {
                assert_eq!(t.transport, spec.id);
                assert_eq!(t.room, spec.room);
                published.push(t);
            }
            other => panic!("expected Publish, got {other:?}"),
        }
    }
    published.sort_by(|a, b| a.mid.cmp(&b.mid));
    assert!(!published[0].video && published[0].mid == "0");
    assert!(published[1].video && published[1].mid == "1");
    assert_eq!(published[1].rids, ["q", "h", "f"]);
    // bob sees both tracks.
    for _ in 0..2 {
        bob.until("track_published", |m| matches!(m, ServerMessage::TrackPublished { track } if track.participant == alice_id));
    }

    // The media plane reports alice speaking: both hear it.
    h.events
        .send(Event::ActiveSpeaker {
            room: spec.room,
            participant: spec.participant,
        })
        .expect("event channel");
    for c in [&mut alice, &mut bob] {
        let m = c.until("active_speaker", |m| {
            matches!(m, ServerMessage::ActiveSpeaker { .. })
        });
        assert_eq!(
            m,
            ServerMessage::ActiveSpeaker {
                participant: alice_id.clone()
            }
        );
    }

    // alice's socket goes away: the media plane is told to drop her tracks and transport.
    drop(alice);
    let mut seen = Vec::new();
    while let Ok(cmd) = h.commands.recv_timeout(Duration::from_secs(2)) {
        seen.push(cmd);
        if seen
            .iter()
            .any(|c| matches!(c, Command::RemoveTransport(id) if *id == spec.id))
        {
            break;
        }
    }
    assert_eq!(
        seen.iter()
            .filter(|c| matches!(c, Command::Unpublish(_)))
            .count(),
        2,
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|c| matches!(c, Command::RemoveTransport(id) if *id == spec.id)),
        "{seen:?}"
    );
    assert_eq!(
        bob.until("participant_left", |m| matches!(
            m,
            ServerMessage::ParticipantLeft { .. }
        )),
        ServerMessage::ParticipantLeft {
            participant: alice_id
        }
    );
}

#[test]
fn connection_limit_idle_timeout_and_shutdown() {
    let h = start_with(ServerConfig {
        max_connections: 2,
        idle_timeout: Duration::from_millis(600),
        ..base_config()
    });
    let addr = h.server.local_addr();
    // A client that keeps reading answers the server's pings and stays.
    let mut live = Client::connect(addr);
    // A client that never reads never answers them and is closed as idle.
    let mut silent = Client::connect(addr);
    // Over the limit: 503.
    let resp = get(addr, "/");
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert_eq!(h.server.stats().rejected, 1);

    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let _ = live.ws.read();
    }
    live.send(r#"{"type":"ping","id":9}"#);
    assert_eq!(live.recv(), ServerMessage::Pong { id: Some(9) });
    assert_eq!(silent.expect_close(), Some(CloseCode::Away));

    let t0 = Instant::now();
    h.server.shutdown();
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        t0.elapsed()
    );
    assert_eq!(live.expect_close(), Some(CloseCode::Away));
    assert!(
        TcpStream::connect(addr).is_err() || get(addr, "/").is_empty(),
        "still serving"
    );
}
