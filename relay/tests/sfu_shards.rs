//! The SFU with two media workers, through its real front door: `SfuService` started
//! from a configuration with `[sfu] workers = 2`, browsers played by WebSocket clients
//! that join two rooms and offer a publisher connection, and ICE checks played by a UDP
//! socket. Each room must be told the port of its own worker (room 1 -> worker 1, room
//! 2 -> worker 0), and each worker must answer STUN for its own room's transport only:
//! the signaling plane's commands reached the worker owning the room, and no other.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use relay::config::Config;
use relay::daemon::sfu::SfuService;
use relay::signaling::{Claims, ServerMessage, parse_server, sign};
use relay::stun::{Attribute, Message, MessageBuilder, MessageType, TransactionId};
use tungstenite::{Message as WsMessage, WebSocket};

const SECRET: &str = "sfu shards integration test secret";
const CHROME_OFFER: &str = include_str!("../src/sdp/fixtures/chrome_av_simulcast.sdp");
/// The browser's ICE ufrag in the fixture offer.
const BROWSER_UFRAG: &str = "Kx3m";
const WAIT: Duration = Duration::from_secs(5);

fn config() -> Config {
    Config::parse(
        &format!(
            r#"
[server]
listen = ["127.0.0.1:0"]

[sfu]
enabled = true
workers = 2
signaling_listen = "127.0.0.1:0"
media_listen = "127.0.0.1:0"
token_secrets = ["{SECRET}"]
"#
        ),
        "sfu_shards test",
    )
    .expect("config")
}

struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        let (ws, _) =
            tungstenite::client::client(format!("ws://{addr}/ws"), stream).expect("handshake");
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        Client { ws }
    }

    fn send(&mut self, v: &serde_json::Value) {
        self.ws.send(WsMessage::text(v.to_string())).expect("send");
    }

    /// The next message the predicate picks (others are skipped); panics after `WAIT`.
    fn wait_for<T>(&mut self, mut pick: impl FnMut(ServerMessage) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(WsMessage::Text(t)) => {
                    let m = parse_server(t.as_bytes()).expect("valid server message");
                    if let ServerMessage::Error { code, message } = &m {
                        panic!("server error {code:?}: {message}");
                    }
                    if let Some(x) = pick(m) {
                        return x;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("websocket: {e}"),
            }
        }
        panic!("no such message within {WAIT:?}");
    }
}

fn token(room: &str, identity: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    sign(
        &Claims {
            room: room.into(),
            identity: identity.into(),
            exp,
            p2p: false,
        },
        SECRET.as_bytes(),
    )
    .expect("sign")
}

/// A participant who joins `room`, publishes audio + video and offers: returns the SFU's
/// candidate ports and its ICE ufrag and password from the answer.
fn publish_in(signaling: SocketAddr, room: &str) -> (Client, Vec<u16>, String, String) {
    let mut c = Client::connect(signaling);
    c.send(&serde_json::json!({
        "type": "join", "room": room, "token": token(room, "alice"), "mode": "sfu"
    }));
    c.wait_for(|m| matches!(m, ServerMessage::Joined { .. }).then_some(()));
    c.send(&serde_json::json!({
        "type": "publish",
        "tracks": [
            {"kind": "audio", "source": "microphone", "mid": "0"},
            {"kind": "video", "source": "camera", "mid": "1", "simulcast": ["q", "h", "f"]},
        ]
    }));
    c.send(&serde_json::json!({"type": "offer", "sdp": CHROME_OFFER}));
    let sdp = c.wait_for(|m| match m {
        ServerMessage::Answer { sdp, .. } => Some(sdp),
        _ => None,
    });
    let answer = relay::sdp::parse(&sdp).expect("answer parses");
    let mut ports: Vec<u16> = answer
        .media
        .iter()
        .flat_map(|m| m.candidates.iter().map(|c| c.port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let m = &answer.media[0];
    let ufrag = answer.ice_ufrag_of(m).expect("ufrag").to_owned();
    let pwd = answer.ice_pwd_of(m).expect("pwd").to_owned();
    (c, ports, ufrag, pwd)
}

/// A browser's ICE check for the SFU transport with these credentials.
fn binding_request(sfu_ufrag: &str, sfu_pwd: &str, buf: &mut [u8]) -> usize {
    let username = format!("{sfu_ufrag}:{BROWSER_UFRAG}");
    let mut b = MessageBuilder::new(buf, MessageType::BINDING_REQUEST, TransactionId([9; 12]))
        .expect("fits");
    b.add(&Attribute::Username(username.as_bytes()))
        .expect("fits");
    b.add(&Attribute::IceControlling(42)).expect("fits");
    b.add(&Attribute::Priority(1_845_501_695)).expect("fits");
    b.add(&Attribute::UseCandidate).expect("fits");
    b.add_message_integrity(sfu_pwd.as_bytes()).expect("fits");
    b.add_fingerprint().expect("fits");
    b.finish()
}

/// Whether `to` answers the check with a binding success within `within` (the request
/// is sent again every 100 ms: the transport reaches the worker asynchronously).
fn answers_check(sock: &UdpSocket, to: SocketAddr, request: &[u8], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        sock.send_to(request, to).expect("send");
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == to => {
                    let m = Message::parse(&buf[..n]).expect("a STUN answer");
                    if m.message_type() == MessageType::BINDING_SUCCESS {
                        return true;
                    }
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
    false
}

#[test]
fn two_rooms_on_two_workers_get_their_workers_ports_and_stun_answers() {
    let svc = SfuService::start(&config())
        .expect("SFU starts")
        .expect("enabled");
    let media = svc.media_addrs();
    assert_eq!(media.len(), 2, "two media workers: {media:?}");
    assert_ne!(media[0].port(), media[1].port());
    assert_eq!(svc.stats().get("media_workers"), Some(&2));
    let signaling = svc.signaling_addr().expect("signaling");

    // Room ids come in join order: "alpha" is room 1 (worker 1), "beta" room 2 (worker 0).
    let (_a, alpha_ports, alpha_ufrag, alpha_pwd) = publish_in(signaling, "alpha");
    let (_b, beta_ports, beta_ufrag, beta_pwd) = publish_in(signaling, "beta");
    assert_eq!(alpha_ports, vec![media[1].port()], "alpha is on worker 1");
    assert_eq!(beta_ports, vec![media[0].port()], "beta is on worker 0");

    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut alpha_check = [0u8; 512];
    let n = binding_request(&alpha_ufrag, &alpha_pwd, &mut alpha_check);
    let alpha_check = &alpha_check[..n];
    let mut beta_check = [0u8; 512];
    let n = binding_request(&beta_ufrag, &beta_pwd, &mut beta_check);
    let beta_check = &beta_check[..n];

    // Each worker knows its own room's transport...
    assert!(
        answers_check(&sock, media[1], alpha_check, WAIT),
        "worker 1 answers alpha's check"
    );
    assert!(
        answers_check(&sock, media[0], beta_check, WAIT),
        "worker 0 answers beta's check"
    );
    // ...and not the other's.
    let short = Duration::from_millis(500);
    assert!(
        !answers_check(&sock, media[0], alpha_check, short),
        "worker 0 must not know alpha's transport"
    );
    assert!(
        !answers_check(&sock, media[1], beta_check, short),
        "worker 1 must not know beta's transport"
    );
    let stats = svc.stats();
    assert_eq!(stats.get("commands_unroutable"), Some(&0), "{stats:?}");
    assert_eq!(stats.get("rooms"), Some(&2), "{stats:?}");
    svc.stop();
}
