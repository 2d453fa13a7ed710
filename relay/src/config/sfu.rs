//! The `[sfu]` section: the SFU's media socket, its signaling server (WebSocket and demo
//! page) and the join-token secrets.
//!
//! A separate file because it carries secrets (never printed) and because the addresses
//! the browser is told (ICE candidates, STUN/TURN URLs for P2P calls) are derived here
//! once, with a clear error when they cannot be, instead of at the first join.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::turn::Secret;
use crate::ice::Transport as IceTransport;

/// The `[sfu]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfuSettings {
    /// Whether the SFU and its signaling server run.
    pub enabled: bool,
    /// HTTP + WebSocket signaling, and the demo page at `/`.
    pub signaling_listen: SocketAddr,
    /// UDP media address (ICE-lite host candidate) of media worker 0; worker i listens
    /// on port + i (port 0: an ephemeral port for each).
    pub media_listen: SocketAddr,
    /// Media workers (threads, each with its own socket and rooms); resolved: at least 1.
    pub workers: usize,
    /// Each worker also accepts ICE over TCP (RFC 6544 passive) on the TCP port equal to
    /// its UDP port, and rooms announce a passive TCP host candidate next to the UDP one
    /// (for browsers whose network blocks UDP). False: UDP only.
    pub tcp: bool,
    /// Addresses announced as ICE candidates; empty = media_listen's address.
    pub announce: Vec<IpAddr>,
    /// Join-token secrets: the first signs (demo tokens), all verify.
    pub token_secrets: Vec<Secret>,
    /// A file holding one more secret (trailing newline ignored), read at start.
    pub token_secret_file: Option<PathBuf>,
    /// Serve `GET /token` (demo and tests only).
    pub demo_tokens: bool,
    /// A valid token creates its room; false: only `rooms` exist.
    pub create_rooms: bool,
    /// Rooms that exist when `create_rooms` is false.
    pub rooms: Vec<String>,
    /// Participants per SFU room.
    pub max_participants: usize,
    /// Loudest speakers each receiver hears.
    pub audio_speakers: usize,
    /// Signaling messages per second per connection.
    pub messages_per_sec: u32,
    /// Lifetime of the TURN credentials handed to P2P participants, seconds.
    pub turn_credential_ttl: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SfuSection {
    /// Off unless a file turns it on (the embedded default does, for the local demo):
    /// daemons started from older files must not start binding new ports.
    #[serde(default)]
    enabled: bool,
    #[serde(default = "default_signaling")]
    signaling_listen: String,
    #[serde(default = "default_media")]
    media_listen: String,
    /// 0: one per CPU core the process may use.
    #[serde(default)]
    workers: usize,
    /// On unless set false: UDP-blocked browsers reach the SFU over TCP.
    #[serde(default = "default_true")]
    tcp: bool,
    #[serde(default)]
    announce: Vec<String>,
    #[serde(default)]
    token_secrets: Vec<Secret>,
    #[serde(default)]
    token_secret_file: Option<PathBuf>,
    /// Off unless set: anyone reaching the signaling address could mint tokens.
    #[serde(default)]
    demo_tokens: bool,
    #[serde(default = "default_true")]
    create_rooms: bool,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default = "default_participants")]
    max_participants: usize,
    #[serde(default = "default_speakers")]
    audio_speakers: usize,
    #[serde(default = "default_rate")]
    messages_per_sec: u32,
    #[serde(default = "default_ttl")]
    turn_credential_ttl: u64,
}

fn default_true() -> bool {
    true
}
fn default_signaling() -> String {
    "127.0.0.1:8080".into()
}
fn default_media() -> String {
    "127.0.0.1:3479".into()
}
fn default_participants() -> usize {
    50
}
fn default_speakers() -> usize {
    3
}
fn default_rate() -> u32 {
    50
}
fn default_ttl() -> u64 {
    3600
}

impl Default for SfuSection {
    fn default() -> Self {
        SfuSection {
            enabled: false,
            signaling_listen: default_signaling(),
            media_listen: default_media(),
            workers: 0,
            tcp: true,
            announce: Vec::new(),
            token_secrets: Vec::new(),
            token_secret_file: None,
            demo_tokens: false,
            create_rooms: true,
            rooms: Vec::new(),
            max_participants: default_participants(),
            audio_speakers: default_speakers(),
            messages_per_sec: default_rate(),
            turn_credential_ttl: default_ttl(),
        }
    }
}

/// Most media workers (and what `workers = 0` is capped at).
pub const MAX_MEDIA_WORKERS: usize = 64;

/// What `workers = 0` means: one per CPU core the process may use, capped.
fn auto_workers() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(MAX_MEDIA_WORKERS)
}

fn addr(key: &str, raw: &str) -> Result<SocketAddr, (String, String)> {
    raw.trim().parse().map_err(|_| {
        (
            format!("sfu.{key}"),
            format!("{raw:?} is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:8080\")"),
        )
    })
}

pub(super) fn build(s: SfuSection) -> Result<SfuSettings, (String, String)> {
    let signaling_listen = addr("signaling_listen", &s.signaling_listen)?;
    let media_listen = addr("media_listen", &s.media_listen)?;
    let mut announce = Vec::with_capacity(s.announce.len());
    for (i, raw) in s.announce.iter().enumerate() {
        let ip: IpAddr = raw.trim().parse().map_err(|_| {
            (
                format!("sfu.announce[{i}]"),
                format!("{raw:?} is not an IP address"),
            )
        })?;
        if ip.is_unspecified() {
            return Err((
                format!("sfu.announce[{i}]"),
                "an unspecified address cannot be a candidate: give the address browsers reach"
                    .into(),
            ));
        }
        announce.push(ip);
    }
    if s.enabled && media_listen.ip().is_unspecified() && announce.is_empty() {
        return Err((
            "sfu.announce".into(),
            format!(
                "is empty while sfu.media_listen is {media_listen} (any address): list the \
                 address(es) browsers should send media to, e.g. [\"203.0.113.10\"]"
            ),
        ));
    }
    if s.workers > MAX_MEDIA_WORKERS {
        return Err((
            "sfu.workers".into(),
            format!(
                "{} is out of range (0-{MAX_MEDIA_WORKERS}; 0 = one per CPU core)",
                s.workers
            ),
        ));
    }
    let workers = if s.workers == 0 {
        auto_workers()
    } else {
        s.workers
    };
    let port = usize::from(media_listen.port());
    if port != 0 && port + workers - 1 > usize::from(u16::MAX) {
        return Err((
            "sfu.workers".into(),
            format!(
                "{workers} media workers listen on ports {port}-{} (sfu.media_listen port + \
                 worker): past 65535; lower sfu.media_listen's port or sfu.workers",
                port + workers - 1
            ),
        ));
    }
    if s.max_participants == 0 || s.max_participants > 10_000 {
        return Err((
            "sfu.max_participants".into(),
            format!("{} is out of range (1-10000)", s.max_participants),
        ));
    }
    if s.audio_speakers == 0 || s.audio_speakers > 16 {
        return Err((
            "sfu.audio_speakers".into(),
            format!("{} is out of range (1-16)", s.audio_speakers),
        ));
    }
    if s.messages_per_sec == 0 {
        return Err(("sfu.messages_per_sec".into(), "must be at least 1".into()));
    }
    for (i, r) in s.rooms.iter().enumerate() {
        if !crate::signaling::protocol::valid_room(r) {
            return Err((
                format!("sfu.rooms[{i}]"),
                format!("{r:?} is not a room name (1-128 of A-Z a-z 0-9 - _ .)"),
            ));
        }
    }
    for (i, sec) in s.token_secrets.iter().enumerate() {
        if sec.expose().len() < 16 {
            return Err((
                format!("sfu.token_secrets[{i}]"),
                "is shorter than 16 bytes: use a long random secret (e.g. `openssl rand -hex 32`)"
                    .into(),
            ));
        }
    }
    Ok(SfuSettings {
        enabled: s.enabled,
        signaling_listen,
        media_listen,
        workers,
        tcp: s.tcp,
        announce,
        token_secrets: s.token_secrets,
        token_secret_file: s.token_secret_file,
        demo_tokens: s.demo_tokens,
        create_rooms: s.create_rooms,
        rooms: s.rooms,
        max_participants: s.max_participants,
        audio_speakers: s.audio_speakers,
        messages_per_sec: s.messages_per_sec,
        turn_credential_ttl: s.turn_credential_ttl,
    })
}

impl SfuSettings {
    /// Where media worker `worker` listens: `media_listen`'s port + `worker` (port 0
    /// stays 0: the kernel picks one for each worker).
    pub fn worker_listen(&self, worker: usize) -> SocketAddr {
        let port = match self.media_listen.port() {
            0 => 0,
            p => u16::try_from(usize::from(p) + worker).unwrap_or(u16::MAX),
        };
        SocketAddr::new(self.media_listen.ip(), port)
    }

    /// The addresses announced as host candidates for a worker whose socket is bound to
    /// `bound`: the `announce` addresses (or the bound one) with its port.
    pub fn candidate_addrs_for(&self, bound: SocketAddr) -> Vec<SocketAddr> {
        if self.announce.is_empty() {
            vec![bound]
        } else {
            self.announce
                .iter()
                .map(|ip| SocketAddr::new(*ip, bound.port()))
                .collect()
        }
    }

    /// The host candidates (address, transport) of a worker whose sockets are bound to
    /// `bound`: every UDP candidate, then (with `tcp`) a passive TCP candidate on the same
    /// addresses and port.
    pub fn host_candidates_for(&self, bound: SocketAddr) -> Vec<(SocketAddr, IceTransport)> {
        let addrs = self.candidate_addrs_for(bound);
        let mut out: Vec<(SocketAddr, IceTransport)> =
            addrs.iter().map(|a| (*a, IceTransport::Udp)).collect();
        if self.tcp {
            out.extend(addrs.iter().map(|a| (*a, IceTransport::Tcp)));
        }
        out
    }

    /// The host candidates of every worker, by worker, when the ports are fixed (with
    /// port 0 the bound ports are only known once the sockets exist: use
    /// [`SfuSettings::candidate_addrs_for`] then).
    pub fn candidate_addrs(&self) -> Vec<Vec<SocketAddr>> {
        (0..self.workers)
            .map(|w| self.candidate_addrs_for(self.worker_listen(w)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SfuSettings, (String, String)> {
        let s: SfuSection = toml::from_str(text).expect("toml");
        build(s)
    }

    #[test]
    fn defaults_serve_loopback() {
        let s = parse("").expect("defaults");
        assert!(!s.enabled, "a file without [sfu] does not start it");
        assert_eq!(s.signaling_listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            s.candidate_addrs()[0],
            vec!["127.0.0.1:3479".parse().expect("addr")]
        );
        assert_eq!(s.audio_speakers, 3);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(s.workers, cores.min(MAX_MEDIA_WORKERS), "one per core");
    }

    #[test]
    fn unspecified_media_needs_announce() {
        let e =
            parse("enabled = true\nmedia_listen = \"0.0.0.0:3479\"").expect_err("needs announce");
        assert_eq!(e.0, "sfu.announce");
        let s = parse("media_listen = \"0.0.0.0:3479\"\nannounce = [\"192.0.2.7\"]").expect("ok");
        assert_eq!(
            s.candidate_addrs()[0],
            vec!["192.0.2.7:3479".parse().expect("addr")]
        );
    }

    #[test]
    fn workers_listen_on_consecutive_ports() {
        let s = parse(
            "enabled = true\nworkers = 3\nmedia_listen = \"0.0.0.0:4000\"\n\
             announce = [\"192.0.2.7\", \"198.51.100.2\"]",
        )
        .expect("ok");
        assert_eq!(s.workers, 3);
        let addr = |a: &str| -> SocketAddr { a.parse().expect("addr") };
        assert_eq!(s.worker_listen(2), addr("0.0.0.0:4002"));
        assert_eq!(
            s.candidate_addrs(),
            vec![
                vec![addr("192.0.2.7:4000"), addr("198.51.100.2:4000")],
                vec![addr("192.0.2.7:4001"), addr("198.51.100.2:4001")],
                vec![addr("192.0.2.7:4002"), addr("198.51.100.2:4002")],
            ]
        );
        // One worker: today's single port.
        let s = parse("workers = 1").expect("ok");
        assert_eq!(s.candidate_addrs(), vec![vec![addr("127.0.0.1:3479")]]);
        // Port 0: each worker gets an ephemeral port; candidates follow the bound one.
        let s = parse("enabled = true\nworkers = 2\nmedia_listen = \"127.0.0.1:0\"").expect("ok");
        assert_eq!(s.worker_listen(1), addr("127.0.0.1:0"));
        assert_eq!(
            s.candidate_addrs_for(addr("127.0.0.1:40000")),
            vec![addr("127.0.0.1:40000")]
        );
        // The last port is 65535 at most.
        assert!(parse("workers = 2\nmedia_listen = \"127.0.0.1:65534\"").is_ok());
        let e = parse("workers = 3\nmedia_listen = \"127.0.0.1:65534\"").expect_err("past 65535");
        assert_eq!(e.0, "sfu.workers");
        assert!(
            e.1.contains("sfu.media_listen") && e.1.contains("65536"),
            "{}",
            e.1
        );
        let e = parse("workers = 65").expect_err("too many");
        assert_eq!(e.0, "sfu.workers");
    }

    #[test]
    fn tcp_is_on_by_default_and_can_be_turned_off() {
        let addr = |a: &str| -> SocketAddr { a.parse().expect("addr") };
        let s = parse("enabled = true\nworkers = 2\nmedia_listen = \"0.0.0.0:4000\"\nannounce = [\"192.0.2.7\"]")
            .expect("ok");
        assert!(s.tcp, "TCP candidates by default");
        assert_eq!(
            s.host_candidates_for(s.worker_listen(1)),
            vec![
                (addr("192.0.2.7:4001"), IceTransport::Udp),
                (addr("192.0.2.7:4001"), IceTransport::Tcp),
            ],
            "worker 1: UDP and TCP on its port"
        );
        let s = parse("tcp = false").expect("ok");
        assert!(!s.tcp);
        assert_eq!(
            s.host_candidates_for(addr("127.0.0.1:3479")),
            vec![(addr("127.0.0.1:3479"), IceTransport::Udp)],
            "UDP only"
        );
        // Port 0: the TCP candidate takes the port the UDP socket got.
        let s = parse("media_listen = \"127.0.0.1:0\"").expect("ok");
        assert_eq!(
            s.host_candidates_for(addr("127.0.0.1:40001")),
            vec![
                (addr("127.0.0.1:40001"), IceTransport::Udp),
                (addr("127.0.0.1:40001"), IceTransport::Tcp),
            ]
        );
        // Not a boolean: refused by the parser.
        assert!(toml::from_str::<SfuSection>("tcp = \"yes\"").is_err());
        assert!(toml::from_str::<SfuSection>("tcp = 1").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            parse("signaling_listen = \"nope\"").expect_err("bad").0,
            "sfu.signaling_listen"
        );
        assert_eq!(
            parse("audio_speakers = 0").expect_err("bad").0,
            "sfu.audio_speakers"
        );
        assert_eq!(
            parse("rooms = [\"a b\"]").expect_err("bad").0,
            "sfu.rooms[0]"
        );
        assert_eq!(
            parse("token_secrets = [\"short\"]").expect_err("bad").0,
            "sfu.token_secrets[0]"
        );
        assert_eq!(
            parse("media_listen = \"127.0.0.1\"").expect_err("bad").0,
            "sfu.media_listen"
        );
    }
}
