//! Round trips of every message and the error code of every kind of bad input.

use proptest::prelude::*;

use super::*;
use crate::turn::auth::rest_password;

fn client_samples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Join {
            room: "standup".into(),
            token: "eyJyb29tIjoic3RhbmR1cCJ9.c2ln".into(),
            mode: Mode::Sfu,
        },
        ClientMessage::Join {
            room: "call-1".into(),
            token: "t.s".into(),
            mode: Mode::P2p,
        },
        ClientMessage::Leave {},
        ClientMessage::Publish {
            tracks: vec![
                PublishTrack {
                    kind: TrackKind::Audio,
                    source: Source::Microphone,
                    mid: Some("0".into()),
                    simulcast: vec![],
                },
                PublishTrack {
                    kind: TrackKind::Video,
                    source: Source::Camera,
                    mid: Some("1".into()),
                    simulcast: vec!["q".into(), "h".into(), "f".into()],
                },
                PublishTrack {
                    kind: TrackKind::Video,
                    source: Source::Screen,
                    mid: None,
                    simulcast: vec![],
                },
            ],
        },
        ClientMessage::Unpublish {
            tracks: vec!["TR_1".into()],
        },
        ClientMessage::Subscribe {
            tracks: vec!["TR_1".into(), "TR_2".into()],
        },
        ClientMessage::Offer {
            sdp: "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n".into(),
        },
        ClientMessage::Answer {
            sdp: "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n".into(),
        },
        ClientMessage::Candidate {
            candidate: "candidate:1 1 udp 2113937151 192.0.2.1 5000 typ host".into(),
            mid: Some("0".into()),
            target: Target::Subscriber,
        },
        ClientMessage::Candidate {
            candidate: String::new(),
            mid: None,
            target: Target::Publisher,
        },
        ClientMessage::SetMaxLayer {
            track: "TR_2".into(),
            layer: 1,
        },
        ClientMessage::Ping { id: Some(7) },
        ClientMessage::Ping { id: None },
    ]
}

fn server_samples() -> Vec<ServerMessage> {
    let alice = Participant {
        id: "PA_1".into(),
        identity: "alice".into(),
    };
    let track = TrackInfo {
        id: "TR_1".into(),
        participant: "PA_1".into(),
        kind: TrackKind::Video,
        source: Source::Camera,
        simulcast: vec!["q".into(), "h".into(), "f".into()],
    };
    vec![
        ServerMessage::Joined {
            participant: "PA_2".into(),
            room: "standup".into(),
            mode: Mode::Sfu,
            participants: vec![alice.clone()],
            tracks: vec![track.clone()],
            ice_servers: vec![],
        },
        ServerMessage::Joined {
            participant: "PA_2".into(),
            room: "call".into(),
            mode: Mode::P2p,
            participants: vec![],
            tracks: vec![],
            ice_servers: ice_servers(
                &["stun:relay.example:3478".into()],
                &["turn:relay.example:3478?transport=udp".into()],
                "turnsecret",
                "bob",
                1_000,
                600,
            ),
        },
        ServerMessage::ParticipantJoined { participant: alice },
        ServerMessage::ParticipantLeft {
            participant: "PA_1".into(),
        },
        ServerMessage::TrackPublished { track },
        ServerMessage::TrackUnpublished {
            track: "TR_1".into(),
        },
        ServerMessage::Offer {
            sdp: "v=0\r\n".into(),
            from: None,
        },
        ServerMessage::Answer {
            sdp: "v=0\r\n".into(),
            from: Some("PA_1".into()),
        },
        ServerMessage::Candidate {
            candidate: "candidate:1 1 udp 1 192.0.2.1 5000 typ host".into(),
            mid: Some("0".into()),
            from: Some("PA_1".into()),
        },
        ServerMessage::ActiveSpeaker {
            participant: "PA_1".into(),
        },
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        },
        ServerMessage::Pong { id: Some(7) },
    ]
}

#[test]
fn every_client_message_round_trips() {
    for m in client_samples() {
        let json = serde_json::to_string(&m).expect("serialize");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["type"], m.kind(), "{json}");
        assert_eq!(parse_client(json.as_bytes()), Ok(m), "{json}");
    }
}

#[test]
fn every_server_message_round_trips() {
    for m in server_samples() {
        let json = m.to_json();
        assert_eq!(parse_server(json.as_bytes()), Ok(m), "{json}");
    }
}

#[test]
fn wire_shapes_are_as_documented() {
    let join = parse_client(br#"{"type":"join","room":"standup","token":"a.b","mode":"sfu"}"#)
        .expect("join");
    assert_eq!(
        join,
        ClientMessage::Join {
            room: "standup".into(),
            token: "a.b".into(),
            mode: Mode::Sfu
        }
    );
    assert_eq!(
        parse_client(br#"{"type":"leave"}"#),
        Ok(ClientMessage::Leave {})
    );
    assert_eq!(
        parse_client(br#"{"type":"set_max_layer","track":"TR_1","layer":0}"#),
        Ok(ClientMessage::SetMaxLayer {
            track: "TR_1".into(),
            layer: 0
        })
    );
    // target defaults to the publisher connection.
    assert_eq!(
        parse_client(br#"{"type":"candidate","candidate":"","mid":"0"}"#),
        Ok(ClientMessage::Candidate {
            candidate: String::new(),
            mid: Some("0".into()),
            target: Target::Publisher
        })
    );
    let err = ServerMessage::Error {
        code: ErrorCode::ExpiredToken,
        message: "token expired".into(),
    };
    assert_eq!(
        err.to_json(),
        r#"{"type":"error","code":"expired_token","message":"token expired"}"#
    );
    assert_eq!(
        ServerMessage::ActiveSpeaker {
            participant: "PA_1".into()
        }
        .to_json(),
        r#"{"type":"active_speaker","participant":"PA_1"}"#
    );
}

fn code(bytes: &[u8]) -> ErrorCode {
    parse_client(bytes).expect_err("must be refused").code
}

#[test]
fn bad_input_maps_to_stable_codes() {
    assert_eq!(code(b"{not json"), ErrorCode::BadJson);
    assert_eq!(code(b""), ErrorCode::BadJson);
    assert_eq!(code(b"\xff\xfe"), ErrorCode::BadJson);
    assert_eq!(code(br#"{"type":"join","room":"r""#), ErrorCode::BadJson);
    assert_eq!(code(br#"{"type":"dance"}"#), ErrorCode::BadRequest);
    assert_eq!(code(br#"{"room":"r"}"#), ErrorCode::BadRequest, "no type");
    assert_eq!(code(br#"[1,2]"#), ErrorCode::BadRequest);
    assert_eq!(
        code(br#"{"type":"join","room":"r","mode":"sfu"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"join","room":"r","token":"t","mode":"sfu","admin":true}"#),
        ErrorCode::BadRequest,
        "unknown field"
    );
    assert_eq!(
        code(br#"{"type":"join","room":"r","token":"t","mode":"mesh"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"join","room":"a b","token":"t","mode":"sfu"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"join","room":"r","token":"","mode":"sfu"}"#),
        ErrorCode::BadToken
    );
    assert_eq!(
        code(br#"{"type":"set_max_layer","track":"TR_1","layer":3}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"set_max_layer","track":"TR_1","layer":-1}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"subscribe","tracks":[]}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"offer","sdp":"hello"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"candidate","candidate":"x"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"publish","tracks":[{"kind":"audio","source":"camera"}]}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"publish","tracks":[{"kind":"audio","source":"microphone","simulcast":["a"]}]}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"publish","tracks":[{"kind":"video","source":"camera","simulcast":["a","b","c","d"]}]}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"publish","tracks":[{"kind":"video","source":"camera","simulcast":["a","a"]}]}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"publish","tracks":[{"kind":"video","source":"camera","simulcast":["a;b"]}]}"#),
        ErrorCode::BadRequest
    );

    assert_eq!(code(br#"{"type":"leave","x":1}"#), ErrorCode::BadRequest);
    assert_eq!(code(br#"{"type":"ping","id":"x"}"#), ErrorCode::BadRequest);
    assert_eq!(
        code(br#"{"type":"Join","room":"r","token":"t","mode":"sfu"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(br#"{"type":"candidate","candidate":"","target":"sideways"}"#),
        ErrorCode::BadRequest
    );

    // Oversized: past the SDP cap, refused before parsing, even if it is valid JSON.
    let big = format!(
        r#"{{"type":"offer","sdp":"v=0{}"}}"#,
        "a".repeat(MAX_SDP_MESSAGE_LEN - 27)
    );
    assert_eq!(big.len(), MAX_SDP_MESSAGE_LEN + 1);
    assert_eq!(code(big.as_bytes()), ErrorCode::TooLarge);
    let just_fits = format!(
        r#"{{"type":"answer","sdp":"v=0{}"}}"#,
        "a".repeat(MAX_SDP_MESSAGE_LEN - 29)
    );
    assert_eq!(just_fits.len(), MAX_SDP_MESSAGE_LEN);
    assert!(parse_client(just_fits.as_bytes()).is_ok());
    // A description over the general cap is fine (a big room's answer)...
    let big_answer = format!(
        r#"{{"type":"answer","sdp":"v=0{}"}}"#,
        "a".repeat(4 * MAX_MESSAGE_LEN)
    );
    assert!(parse_client(big_answer.as_bytes()).is_ok());
    // ...but no other message may use the room: the general cap still holds for them,
    // at its exact boundary.
    let padded = |n: usize| format!(r#"{{"type":"leave"{}}}"#, " ".repeat(n));
    let over = padded(MAX_MESSAGE_LEN + 1 - padded(0).len());
    assert_eq!(over.len(), MAX_MESSAGE_LEN + 1);
    assert_eq!(code(over.as_bytes()), ErrorCode::TooLarge);
    let at = padded(MAX_MESSAGE_LEN - padded(0).len());
    assert_eq!(at.len(), MAX_MESSAGE_LEN);
    assert!(parse_client(at.as_bytes()).is_ok(), "a message at the cap");
}

#[test]
fn token_errors_map_to_codes() {
    assert_eq!(
        ErrorCode::from(&TokenError::Expired),
        ErrorCode::ExpiredToken
    );
    assert_eq!(
        ErrorCode::from(&TokenError::BadSignature),
        ErrorCode::BadToken
    );
    assert_eq!(ErrorCode::from(&TokenError::WrongRoom), ErrorCode::BadToken);
    assert_eq!(ErrorCode::from(&TokenError::BadFormat), ErrorCode::BadToken);
    assert_eq!(ErrorCode::from(&TokenError::NoSecret), ErrorCode::Internal);
    let e = ProtocolError::from(&TokenError::Expired).to_message();
    assert_eq!(
        e,
        ServerMessage::Error {
            code: ErrorCode::ExpiredToken,
            message: "token expired".into()
        }
    );
    for c in [
        ErrorCode::BadJson,
        ErrorCode::BadToken,
        ErrorCode::ExpiredToken,
        ErrorCode::UnknownRoom,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::BadRequest,
        ErrorCode::Internal,
    ] {
        assert_eq!(
            serde_json::to_string(&c).expect("serialize"),
            format!("\"{}\"", c.as_str())
        );
    }
}

#[test]
fn ice_servers_carry_turn_rest_credentials() {
    let s = ice_servers(
        &["stun:relay.example:3478".into()],
        &[
            "turn:relay.example:3478".into(),
            "turns:relay.example:443?transport=tcp".into(),
        ],
        "turnsecret",
        "bob",
        1_700_000_000,
        3_600,
    );
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].urls, ["stun:relay.example:3478"]);
    assert!(s[0].username.is_none() && s[0].credential.is_none());
    assert_eq!(s[1].username.as_deref(), Some("1700003600:bob"));
    assert_eq!(
        s[1].credential.as_deref(),
        Some(rest_password("turnsecret", "1700003600:bob").as_str())
    );
    assert_eq!(
        crate::turn::auth::rest_expiry("1700003600:bob"),
        Some(1_700_003_600)
    );
    assert!(ice_servers(&[], &[], "x", "bob", 0, 1).is_empty());
}

#[test]
fn join_authorization() {
    use crate::signaling::token::{Claims, sign};
    let secret: &[u8] = b"signing secret";
    let sfu_only = Claims {
        room: "standup".into(),
        identity: "alice".into(),
        exp: 100,
        p2p: false,
    };
    let t = sign(&sfu_only, secret).expect("sign");
    assert_eq!(
        authorize_join("standup", &t, Mode::Sfu, &[secret], 99),
        Ok(sfu_only.clone())
    );
    let e = authorize_join("standup", &t, Mode::P2p, &[secret], 99).expect_err("no p2p claim");
    assert_eq!(e.code, ErrorCode::BadToken);
    let e = authorize_join("standup", &t, Mode::Sfu, &[secret], 100).expect_err("expired");
    assert_eq!(e.code, ErrorCode::ExpiredToken);
    let e = authorize_join("other", &t, Mode::Sfu, &[secret], 0).expect_err("room");
    assert_eq!(e.code, ErrorCode::BadToken);
    let e = authorize_join("standup", &t, Mode::Sfu, &[b"nope".as_slice()], 0).expect_err("sig");
    assert_eq!(e.code, ErrorCode::BadToken);
    let none: [&[u8]; 0] = [];
    let e = authorize_join("standup", &t, Mode::Sfu, &none, 0).expect_err("no secret");
    assert_eq!(e.code, ErrorCode::Internal);
    let p2p = Claims {
        p2p: true,
        ..sfu_only
    };
    let t = sign(&p2p, secret).expect("sign");
    assert_eq!(
        authorize_join("standup", &t, Mode::P2p, &[secret], 0),
        Ok(p2p)
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = parse_client(&bytes) {
            prop_assert!(matches!(e.code, ErrorCode::BadJson | ErrorCode::BadRequest | ErrorCode::BadToken));
        }
    }

    #[test]
    fn arbitrary_strings_in_fields_never_panic(room in ".{0,40}", track in ".{0,80}", layer in any::<u8>()) {
        let join = serde_json::json!({"type":"join","room":room,"token":"a.b","mode":"sfu"});
        let _ = parse_client(join.to_string().as_bytes());
        let sml = serde_json::json!({"type":"set_max_layer","track":track,"layer":layer});
        let _ = parse_client(sml.to_string().as_bytes());
    }
}
