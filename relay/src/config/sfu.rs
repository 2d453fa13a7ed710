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

/// The `[sfu]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfuSettings {
    /// Whether the SFU and its signaling server run.
    pub enabled: bool,
    /// HTTP + WebSocket signaling, and the demo page at `/`.
    pub signaling_listen: SocketAddr,
    /// UDP media address (ICE-lite host candidate).
    pub media_listen: SocketAddr,
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
    if s.enabled && media_listen.port() == 0 {
        return Err((
            "sfu.media_listen".into(),
            "needs a fixed port: it is announced in every SDP answer".into(),
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
    /// The addresses announced as host candidates.
    pub fn candidate_addrs(&self) -> Vec<SocketAddr> {
        if self.announce.is_empty() {
            vec![self.media_listen]
        } else {
            self.announce
                .iter()
                .map(|ip| SocketAddr::new(*ip, self.media_listen.port()))
                .collect()
        }
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
            s.candidate_addrs(),
            vec!["127.0.0.1:3479".parse().expect("addr")]
        );
        assert_eq!(s.audio_speakers, 3);
    }

    #[test]
    fn unspecified_media_needs_announce() {
        let e =
            parse("enabled = true\nmedia_listen = \"0.0.0.0:3479\"").expect_err("needs announce");
        assert_eq!(e.0, "sfu.announce");
        let s = parse("media_listen = \"0.0.0.0:3479\"\nannounce = [\"192.0.2.7\"]").expect("ok");
        assert_eq!(
            s.candidate_addrs(),
            vec!["192.0.2.7:3479".parse().expect("addr")]
        );
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
            parse("enabled = true\nmedia_listen = \"127.0.0.1:0\"")
                .expect_err("bad")
                .0,
            "sfu.media_listen"
        );
    }
}
