//! Janus's API (1.x, the VideoRoom plugin) as the SFU load client speaks it over the
//! WebSocket transport (subprotocol `janus-protocol`): the requests it sends (create a
//! session, attach the VideoRoom plugin, create a room, join as publisher and
//! `configure` with an offer, join as a multistream subscriber and `start` with an
//! answer, trickle a candidate, keepalive) and what it reads back (success with an id,
//! ack, plugin events with their JSEP, errors, webrtcup/hangup).
//!
//! Exists so that the bench can put the same synthetic load on Janus as on our relay
//! (issue 5, point 7) without a browser: message building and parsing only, no I/O, so
//! that it is unit-tested against a recorded Janus response.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The WebSocket subprotocol Janus's transport requires.
pub const SUBPROTOCOL: &str = "janus-protocol";
/// The plugin the bench drives.
pub const VIDEOROOM: &str = "janus.plugin.videoroom";
/// Janus drops a session that sent nothing for 60 s (its default `session_timeout`).
pub const KEEPALIVE_SECS: u64 = 25;

/// `{"janus":"create"}`: a new session.
pub fn create_session(transaction: &str) -> String {
    json!({"janus": "create", "transaction": transaction}).to_string()
}

/// `{"janus":"attach"}`: a handle on the VideoRoom plugin in `session`.
pub fn attach(session: u64, transaction: &str) -> String {
    json!({
        "janus": "attach",
        "session_id": session,
        "plugin": VIDEOROOM,
        "transaction": transaction,
    })
    .to_string()
}

/// `{"janus":"keepalive"}` for `session`.
pub fn keepalive(session: u64, transaction: &str) -> String {
    json!({"janus": "keepalive", "session_id": session, "transaction": transaction}).to_string()
}

/// A plugin message (`body`) on `handle`, with an SDP (`jsep`: type and text) if given.
pub fn message(
    session: u64,
    handle: u64,
    transaction: &str,
    body: &Value,
    jsep: Option<(&str, &str)>,
) -> String {
    let mut m = json!({
        "janus": "message",
        "session_id": session,
        "handle_id": handle,
        "transaction": transaction,
        "body": body,
    });
    if let Some((kind, sdp)) = jsep {
        m["jsep"] = json!({"type": kind, "sdp": sdp});
    }
    m.to_string()
}

/// A trickled candidate line (`candidate:...`, without `a=`) for the first m-line (one
/// bundled transport), or end-of-candidates when `None`.
pub fn trickle(session: u64, handle: u64, transaction: &str, candidate: Option<&str>) -> String {
    let c = match candidate {
        Some(line) => json!({"sdpMid": "0", "sdpMLineIndex": 0, "candidate": line}),
        None => json!({"completed": true}),
    };
    json!({
        "janus": "trickle",
        "session_id": session,
        "handle_id": handle,
        "transaction": transaction,
        "candidate": c,
    })
    .to_string()
}

/// The VideoRoom `create` body: room `room` with room for `publishers` publishers, VP8
/// video, Opus audio, the audio-level extension negotiated (no talking events), no
/// bitrate cap, not saved to the configuration.
pub fn create_room_body(room: u64, publishers: usize) -> Value {
    json!({
        "request": "create",
        "room": room,
        "publishers": publishers,
        "audiocodec": "opus",
        "videocodec": "vp8",
        "audiolevel_ext": true,
        "audiolevel_event": false,
        "bitrate": 0,
        "permanent": false,
        "is_private": false,
    })
}

/// The VideoRoom `join` body of a publisher with our chosen feed id.
pub fn join_publisher_body(room: u64, feed: u64, display: &str) -> Value {
    json!({
        "request": "join",
        "ptype": "publisher",
        "room": room,
        "id": feed,
        "display": display,
    })
}

/// The VideoRoom `configure` body that goes with the publisher's offer.
pub fn configure_body() -> Value {
    json!({"request": "configure", "audio": true, "video": true})
}

/// The VideoRoom `join` body of a multistream subscriber to every stream of `feeds`
/// (no `substream`: Janus's default layer).
pub fn join_subscriber_body(room: u64, feeds: &[u64]) -> Value {
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    json!({
        "request": "join",
        "ptype": "subscriber",
        "room": room,
        "streams": streams,
    })
}

/// The VideoRoom `start` body that goes with the subscriber's answer.
pub fn start_body() -> Value {
    json!({"request": "start"})
}

/// An SDP Janus sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jsep {
    /// `offer` or `answer`.
    pub kind: String,
    /// The description.
    pub sdp: String,
}

/// What Janus sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request succeeded: `data.id` (a new session or handle) or, for a synchronous
    /// plugin request, the plugin's data.
    Success {
        /// The request's transaction.
        transaction: String,
        /// `data.id`, if present.
        id: Option<u64>,
        /// `plugindata.data`, if present.
        plugin: Option<Value>,
    },
    /// An asynchronous request was accepted; its event follows.
    Ack {
        /// The request's transaction.
        transaction: String,
    },
    /// A plugin event (the reply to a request when `transaction` is set).
    Event {
        /// The request's transaction, if this answers one.
        transaction: Option<String>,
        /// The handle it concerns.
        sender: u64,
        /// `plugindata.data`.
        data: Value,
        /// The SDP it carries, if any.
        jsep: Option<Jsep>,
    },
    /// A request failed at the Janus level.
    Error {
        /// The request's transaction.
        transaction: Option<String>,
        /// Janus's error code.
        code: i64,
        /// Its reason text.
        reason: String,
    },
    /// A handle's PeerConnection is up (ICE + DTLS).
    WebrtcUp {
        /// The handle.
        sender: u64,
    },
    /// A handle's PeerConnection went down.
    Hangup {
        /// The handle.
        sender: u64,
        /// Janus's reason text.
        reason: String,
    },
    /// Anything else (media, slowlink, trickle, timeout, ...).
    Other(String),
}

/// Parses one Janus message.
pub fn parse(text: &str) -> Result<Incoming> {
    let v: Value = serde_json::from_str(text).context("Janus sent invalid JSON")?;
    let kind = v["janus"]
        .as_str()
        .context("a Janus message without \"janus\"")?;
    let transaction = v["transaction"].as_str().map(str::to_owned);
    let sender = v["sender"].as_u64().unwrap_or(0);
    Ok(match kind {
        "success" => Incoming::Success {
            transaction: transaction.context("success without a transaction")?,
            id: v["data"]["id"].as_u64(),
            plugin: v.get("plugindata").and_then(|p| p.get("data")).cloned(),
        },
        "ack" => Incoming::Ack {
            transaction: transaction.context("ack without a transaction")?,
        },
        "event" => {
            let data = v
                .get("plugindata")
                .and_then(|p| p.get("data"))
                .cloned()
                .context("an event without plugindata.data")?;
            let jsep = match v.get("jsep") {
                Some(j) => Some(Jsep {
                    kind: j["type"].as_str().context("jsep without type")?.to_owned(),
                    sdp: j["sdp"].as_str().context("jsep without sdp")?.to_owned(),
                }),
                None => None,
            };
            Incoming::Event {
                transaction,
                sender,
                data,
                jsep,
            }
        }
        "error" => Incoming::Error {
            transaction,
            code: v["error"]["code"].as_i64().unwrap_or(0),
            reason: v["error"]["reason"].as_str().unwrap_or("").to_owned(),
        },
        "webrtcup" => Incoming::WebrtcUp { sender },
        "hangup" => Incoming::Hangup {
            sender,
            reason: v["reason"].as_str().unwrap_or("").to_owned(),
        },
        other => Incoming::Other(other.to_owned()),
    })
}

/// The VideoRoom's error in a plugin reply (`error_code`, `error`), if it is one.
pub fn plugin_error(data: &Value) -> Option<(i64, String)> {
    let code = data.get("error_code")?.as_i64().unwrap_or(0);
    Some((code, data["error"].as_str().unwrap_or("").to_owned()))
}

/// Checks a plugin reply is the expected VideoRoom answer (`"videoroom": want`).
pub fn expect_videoroom(data: &Value, want: &str) -> Result<()> {
    if let Some((code, text)) = plugin_error(data) {
        bail!("VideoRoom error {code}: {text}");
    }
    match data["videoroom"].as_str() {
        Some(got) if got == want => Ok(()),
        got => bail!("VideoRoom replied {got:?}, expected {want:?}: {data}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber `join` reply (to feeds 1 and 3) as Debian's Janus 1.1.2 sent it in
    /// this bench's namespaces, recorded whole (`SFU_BENCH_DEBUG=1` prints it).
    const ATTACHED: &str = include_str!("fixtures/janus_attached.json");

    #[test]
    fn requests_carry_ids_transactions_and_bodies() {
        let v: Value = serde_json::from_str(&create_session("t1")).expect("json");
        assert_eq!(v, json!({"janus": "create", "transaction": "t1"}));
        let v: Value = serde_json::from_str(&attach(7, "t2")).expect("json");
        assert_eq!(v["plugin"], "janus.plugin.videoroom");
        assert_eq!(v["session_id"], 7);
        let v: Value = serde_json::from_str(&message(
            7,
            9,
            "t3",
            &configure_body(),
            Some(("offer", "v=0\r\n")),
        ))
        .expect("json");
        assert_eq!(v["janus"], "message");
        assert_eq!(v["handle_id"], 9);
        assert_eq!(v["body"]["request"], "configure");
        assert_eq!(v["jsep"], json!({"type": "offer", "sdp": "v=0\r\n"}));
        let v: Value =
            serde_json::from_str(&message(7, 9, "t4", &start_body(), None)).expect("json");
        assert!(v.get("jsep").is_none());
        let v: Value = serde_json::from_str(&trickle(
            7,
            9,
            "t5",
            Some("candidate:1 1 udp 1 10.0.0.2 5000 typ host"),
        ))
        .expect("json");
        assert_eq!(v["candidate"]["sdpMLineIndex"], 0);
        assert_eq!(v["candidate"]["sdpMid"], "0");
        let v: Value = serde_json::from_str(&trickle(7, 9, "t6", None)).expect("json");
        assert_eq!(v["candidate"], json!({"completed": true}));
        let v: Value = serde_json::from_str(&keepalive(7, "t7")).expect("json");
        assert_eq!(v["janus"], "keepalive");
    }

    #[test]
    fn videoroom_bodies() {
        let c = create_room_body(1001, 50);
        assert_eq!(c["request"], "create");
        assert_eq!(c["publishers"], 50);
        assert_eq!(c["videocodec"], "vp8");
        assert_eq!(c["audiolevel_ext"], true);
        let j = join_publisher_body(1001, 42, "r0p1");
        assert_eq!(j["ptype"], "publisher");
        assert_eq!(j["id"], 42);
        let s = join_subscriber_body(1001, &[1, 2, 3]);
        assert_eq!(s["ptype"], "subscriber");
        assert_eq!(s["streams"], json!([{"feed": 1}, {"feed": 2}, {"feed": 3}]));
        assert!(s["streams"][0].get("substream").is_none());
    }

    #[test]
    fn parses_a_recorded_subscriber_offer_event() {
        let m = parse(ATTACHED).expect("parses");
        let Incoming::Event {
            transaction,
            sender,
            data,
            jsep,
        } = m
        else {
            panic!("not an event: {m:?}");
        };
        assert_eq!(transaction.as_deref(), Some("t8"));
        assert_ne!(sender, 0);
        expect_videoroom(&data, "attached").expect("attached");
        assert!(expect_videoroom(&data, "joined").is_err());
        let streams = data["streams"].as_array().expect("streams");
        assert_eq!(streams.len(), 4, "audio + video of two feeds");
        let feeds: Vec<u64> = streams
            .iter()
            .filter_map(|s| s["feed_id"].as_u64())
            .collect();
        assert_eq!(feeds, [1, 1, 3, 3]);
        // Janus's default simulcast target: substream 2 (what the docs call the top).
        assert_eq!(streams[1]["simulcast"]["substream-target"], 2);
        let jsep = jsep.expect("an offer");
        assert_eq!(jsep.kind, "offer");
        assert!(jsep.sdp.starts_with("v=0\r\n"));
        assert!(jsep.sdp.contains("a=setup:actpass"));
        // The bench reads the offer's transport the way it reads our relay's.
        let t = crate::sfu::sdp::offer_transport(&jsep.sdp).expect("transport");
        assert!(t.candidate.is_ipv4());
        assert_eq!(
            crate::sfu::sdp::our_dtls_role(&jsep.sdp),
            relay::dtls::Role::Client
        );
        // Our answer to it: every section recvonly with setup:active in the section
        // (Janus ignores a session-level a=setup and then times out the handshake).
        let answer =
            crate::sfu::sdp::subscriber_answer(&jsep.sdp, "cliU", &"q".repeat(24), [0xAB; 32])
                .expect("we answer Janus's offer");
        assert_eq!(answer.matches("\r\na=setup:active\r\n").count(), 4);
        assert_eq!(answer.matches("\r\na=recvonly\r\n").count(), 4);
        let parsed = relay::sdp::parse(&answer).expect("our answer parses");
        assert_eq!(parsed.media.len(), 4);
    }

    /// Bad input is an error or an `Other`, never a panic: the recorded reply truncated
    /// at every length and with bytes overwritten at many places.
    #[test]
    fn mangled_replies_never_panic() {
        let bytes = ATTACHED.as_bytes();
        for cut in 0..bytes.len() {
            let _ = parse(&String::from_utf8_lossy(&bytes[..cut]));
        }
        let mut state = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut m = bytes.to_vec();
            for _ in 0..4 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let at = usize::try_from(state >> 33).expect("fits") % m.len();
                const ALPHABET: &[u8] = b"{}[]\":,0aZ \\";
                m[at] = ALPHABET[usize::try_from(state & 0xff).expect("fits") % ALPHABET.len()];
            }
            if let Ok(Incoming::Event { data, .. }) = parse(&String::from_utf8_lossy(&m)) {
                let _ = expect_videoroom(&data, "attached");
                let _ = plugin_error(&data);
            }
        }
    }

    #[test]
    fn parses_success_ack_errors_and_notifications() {
        assert_eq!(
            parse(r#"{"janus":"success","transaction":"a","data":{"id":123}}"#).expect("ok"),
            Incoming::Success {
                transaction: "a".into(),
                id: Some(123),
                plugin: None
            }
        );
        let created = parse(r#"{"janus":"success","session_id":1,"transaction":"r","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"created","room":1001,"permanent":false}}}"#).expect("ok");
        let Incoming::Success {
            plugin: Some(data), ..
        } = created
        else {
            panic!("{created:?}");
        };
        expect_videoroom(&data, "created").expect("created");
        assert_eq!(
            parse(r#"{"janus":"ack","session_id":1,"transaction":"b"}"#).expect("ok"),
            Incoming::Ack {
                transaction: "b".into()
            }
        );
        assert_eq!(
            parse(r#"{"janus":"error","transaction":"c","error":{"code":458,"reason":"No such session 5"}}"#)
                .expect("ok"),
            Incoming::Error {
                transaction: Some("c".into()),
                code: 458,
                reason: "No such session 5".into()
            }
        );
        let ev = parse(r#"{"janus":"event","sender":3,"transaction":"d","plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","error_code":428,"error":"No such feed (9)"}}}"#).expect("ok");
        let Incoming::Event { data, .. } = ev else {
            panic!()
        };
        assert_eq!(plugin_error(&data), Some((428, "No such feed (9)".into())));
        assert!(expect_videoroom(&data, "event").is_err());
        assert_eq!(
            parse(r#"{"janus":"webrtcup","session_id":1,"sender":4}"#).expect("ok"),
            Incoming::WebrtcUp { sender: 4 }
        );
        assert_eq!(
            parse(r#"{"janus":"hangup","session_id":1,"sender":4,"reason":"DTLS alert"}"#)
                .expect("ok"),
            Incoming::Hangup {
                sender: 4,
                reason: "DTLS alert".into()
            }
        );
        assert!(matches!(
            parse(r#"{"janus":"media","sender":4,"type":"audio","receiving":true}"#),
            Ok(Incoming::Other(k)) if k == "media"
        ));
        // Bad input: errors, never a panic.
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"no":"janus"}"#).is_err());
        assert!(parse(r#"{"janus":"event","sender":1}"#).is_err());
        assert!(
            parse(r#"{"janus":"event","plugindata":{"data":{}},"jsep":{"type":"offer"}}"#).is_err()
        );
        assert!(parse(r#"{"janus":"success"}"#).is_err());
    }
}
