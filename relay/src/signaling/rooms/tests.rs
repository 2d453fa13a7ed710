//! Tests of the rooms: the two-participant SFU flow with browser offers, every error
//! code, P2P relaying, cleanup, re-offer batching, id allocation, and a property test
//! over random message sequences.

use std::net::SocketAddr;

use super::*;
use crate::sdp::{
    CandidateTransport, Codec, Direction, Fingerprint, LocalCandidate, SessionDescription, Setup,
};
use crate::sfu::control::{InboundTrack, OutboundTrack, TrackCodec, TransportRole, TransportSpec};
use crate::signaling::protocol::{PublishTrack, Source, TrackKind};
use crate::signaling::token::{Claims, sign};

mod props;

const SECRET: &[u8] = b"join-secret";
const TURN_SECRET: &str = "turn-secret";
const NOW: u64 = 1_800_000_000;
const CHROME_AV: &str = include_str!("../../sdp/fixtures/chrome_av_simulcast.sdp");
const FIREFOX_AV: &str = include_str!("../../sdp/fixtures/firefox_av_simulcast.sdp");
const CHROMIUM_REAL: &str = include_str!("../../sdp/fixtures/chromium156_real_offer.sdp");
/// The browser side of the subscriber connection in the tests.
const BROWSER_UFRAG: &str = "brws";
const BROWSER_PWD: &str = "browserpasswordbrowserpw";
const BROWSER_FP: [u8; 32] = [0xab; 32];

fn cfg() -> RoomsConfig {
    let addr: SocketAddr = "192.0.2.1:3478".parse().expect("addr");
    RoomsConfig {
        secrets: vec![SECRET.to_vec()],
        candidates: vec![vec![
            LocalCandidate {
                addr,
                transport: CandidateTransport::Udp,
            },
            LocalCandidate {
                addr,
                transport: CandidateTransport::TcpPassive,
            },
        ]],
        fingerprint: [0x11; 32],
        stun_urls: vec!["stun:relay.example.net:3478".into()],
        turn_urls: vec!["turn:relay.example.net:3478?transport=udp".into()],
        turn_secret: Some(TURN_SECRET.into()),
        turn_ttl_secs: 3600,
        create_rooms: true,
        rooms: Vec::new(),
        max_participants: 50,
    }
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

fn join_msg(room: &str, identity: &str, mode: Mode) -> ClientMessage {
    ClientMessage::Join {
        room: room.into(),
        token: token(room, identity, mode == Mode::P2p, NOW + 60),
        mode,
    }
}

fn drain(r: &mut Rooms) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn commands(out: &[Output]) -> Vec<Command> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn sent_to(out: &[Output], conn: ConnId) -> Vec<ServerMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(c, m) if *c == conn => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn the_offer(out: &[Output], conn: ConnId) -> String {
    let offers: Vec<String> = sent_to(out, conn)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Offer { sdp, from: None } => Some(sdp),
            _ => None,
        })
        .collect();
    assert_eq!(offers.len(), 1, "exactly one offer to {conn}: {out:?}");
    offers.into_iter().next().expect("one offer")
}

/// What a browser answers to one of our subscriber offers: `setup:active`, our
/// `sendonly` sections `recvonly`, its own ICE credentials and certificate, no
/// candidates (it trickles them), no SSRCs of ours; closed sections stay closed.
/// `prefer_h264` puts H.264 first in video sections, as a browser preferring it would.
fn browser_answer(offer_sdp: &str, prefer_h264: bool) -> String {
    let offer = crate::sdp::parse(offer_sdp).expect("our offer parses");
    let mut answer = SessionDescription {
        ice_lite: false,
        ..offer.clone()
    };
    answer.origin.session_id = "4242".into();
    answer.origin.session_version = 2;
    for m in &mut answer.media {
        m.candidates.clear();
        m.end_of_candidates = false;
        m.ssrcs.clear();
        m.ssrc_groups.clear();
        m.msid = None;
        if m.port == 0 {
            continue;
        }
        m.port = 9;
        m.setup = Some(Setup::Active);
        m.ice_ufrag = Some(BROWSER_UFRAG.into());
        m.ice_pwd = Some(BROWSER_PWD.into());
        m.fingerprints = vec![Fingerprint::sha256(BROWSER_FP)];
        if m.direction == Some(Direction::SendOnly) {
            m.direction = Some(Direction::RecvOnly);
        }
        if prefer_h264 {
            m.formats.sort_by_key(|f| match f.as_str() {
                "102" => 0,
                "103" => 1,
                _ => 2,
            });
        }
    }
    answer.to_string()
}

fn publish_av(mids: [&str; 2]) -> ClientMessage {
    ClientMessage::Publish {
        tracks: vec![
            PublishTrack {
                kind: TrackKind::Audio,
                source: Source::Microphone,
                mid: Some(mids[0].into()),
                simulcast: Vec::new(),
            },
            PublishTrack {
                kind: TrackKind::Video,
                source: Source::Camera,
                mid: Some(mids[1].into()),
                simulcast: vec!["q".into(), "h".into(), "f".into()],
            },
        ],
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[track_caller]
fn ok(r: &mut Rooms, conn: ConnId, msg: ClientMessage) -> Vec<Output> {
    let kind = msg.kind();
    if let Err(e) = r.on_message(conn, msg, NOW) {
        panic!("{kind} refused: {e}");
    }
    drain(r)
}

#[track_caller]
fn err(r: &mut Rooms, conn: ConnId, msg: ClientMessage) -> ProtocolError {
    let kind = msg.kind();
    match r.on_message(conn, msg, NOW) {
        Ok(()) => panic!("{kind} accepted: {:?}", drain(r)),
        Err(e) => e,
    }
}

/// Two SFU participants in "standup": A (conn 1, PA_1), B (conn 2, PA_2).
fn two_in_sfu() -> Rooms {
    let mut r = Rooms::new(cfg());
    r.connect(1);
    r.connect(2);
    ok(&mut r, 1, join_msg("standup", "alice", Mode::Sfu));
    ok(&mut r, 2, join_msg("standup", "bob", Mode::Sfu));
    r
}

fn pub_transport(r: &Rooms, conn: ConnId) -> TransportId {
    r.member(conn)
        .and_then(|m| m.publisher.as_ref())
        .expect("publisher")
        .transport
}

fn sub_transport(r: &Rooms, conn: ConnId) -> TransportId {
    r.member(conn)
        .and_then(|m| m.subscriber.as_ref())
        .expect("subscriber")
        .transport
}

#[test]
fn join_lists_others_and_tells_them() {
    let mut r = Rooms::new(cfg());
    r.connect(1);
    r.connect(2);
    let out = ok(&mut r, 1, join_msg("standup", "alice", Mode::Sfu));
    assert_eq!(
        out,
        vec![Output::Send(
            1,
            ServerMessage::Joined {
                participant: "PA_1".into(),
                room: "standup".into(),
                mode: Mode::Sfu,
                participants: vec![],
                tracks: vec![],
                ice_servers: vec![],
            }
        )]
    );
    let out = ok(&mut r, 2, join_msg("standup", "bob", Mode::Sfu));
    assert_eq!(
        out,
        vec![
            Output::Send(
                2,
                ServerMessage::Joined {
                    participant: "PA_2".into(),
                    room: "standup".into(),
                    mode: Mode::Sfu,
                    participants: vec![Participant {
                        id: "PA_1".into(),
                        identity: "alice".into()
                    }],
                    tracks: vec![],
                    ice_servers: vec![],
                }
            ),
            Output::Send(
                1,
                ServerMessage::ParticipantJoined {
                    participant: Participant {
                        id: "PA_2".into(),
                        identity: "bob".into()
                    }
                }
            ),
        ]
    );
    assert_eq!(
        r.stats(),
        RoomsStats {
            rooms: 1,
            participants: 2,
            tracks: 0
        }
    );
}

/// The whole SFU flow: A publishes audio + 3-layer simulcast video from Chrome's
/// offer, B subscribes to both and answers, A leaves.
#[test]
fn two_participant_sfu_flow() {
    let mut r = two_in_sfu();
    let a_pub = pub_transport(&r, 1);
    let b_sub = sub_transport(&r, 2);
    assert_ne!(a_pub, b_sub);

    // publish before offer: nothing bound yet.
    let out = ok(&mut r, 1, publish_av(["0", "1"]));
    assert!(out.is_empty(), "{out:?}");

    let out = ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    );
    // 1. the answer to A.
    let Output::Send(1, ServerMessage::Answer { sdp, from: None }) = &out[0] else {
        panic!("first output is the answer: {out:?}");
    };
    let answer = crate::sdp::parse(sdp).expect("answer parses");
    assert!(answer.ice_lite);
    assert_eq!(answer.media.len(), 3);
    assert_eq!(answer.media[0].direction, Some(Direction::RecvOnly));
    assert_eq!(answer.media[2].port, 0, "data channel rejected");
    let a_ufrag = answer.media[0].ice_ufrag.clone().expect("ufrag");
    assert_eq!(
        Some(a_ufrag.as_str()),
        r.member(1)
            .and_then(|m| m.publisher.as_ref())
            .map(|p| p.ufrag())
    );
    // 2. the transport, 3.-5. the audio track, 6.-8. the video track.
    let Output::Media(Command::AddTransport(spec)) = &out[1] else {
        panic!("AddTransport second: {out:?}");
    };
    assert_eq!(spec.id, a_pub);
    assert_eq!(spec.role, TransportRole::Publisher);
    assert_eq!(spec.room, 1);
    assert_eq!(spec.participant, 1);
    assert_eq!(spec.local_ufrag, a_ufrag);
    assert_eq!(spec.remote_ufrag, "Kx3m");
    let offer = crate::sdp::parse(CHROME_AV).expect("fixture");
    assert_eq!(
        Some(spec.remote_pwd.as_str()),
        offer.ice_pwd_of(&offer.media[0])
    );
    assert_eq!(
        Some(spec.remote_fingerprint),
        offer.sha256_fingerprint_of(&offer.media[0])
    );
    assert!(spec.extensions.mid.is_some() && spec.extensions.rid.is_some());
    let Output::Media(Command::Publish(audio)) = &out[2] else {
        panic!("Publish audio third: {out:?}");
    };
    assert_eq!(audio.id, 1);
    assert_eq!(audio.transport, a_pub);
    assert_eq!((audio.room, audio.participant), (1, 1));
    assert!(!audio.video && !audio.screen);
    assert_eq!(audio.mid, "0");
    assert_eq!(audio.codecs[0].codec, Codec::Opus);
    assert_eq!(audio.codecs[0].payload_type, 111);
    assert!(audio.rids.is_empty());
    let track1 = TrackInfo {
        id: "TR_1".into(),
        participant: "PA_1".into(),
        kind: TrackKind::Audio,
        source: Source::Microphone,
        simulcast: vec![],
    };
    // The whole room hears of it, the publisher first (room order): its copy carries
    // its own participant id and is how it learns the track's id.
    for (i, conn) in [(3, 1), (4, 2)] {
        assert_eq!(
            out[i],
            Output::Send(
                conn,
                ServerMessage::TrackPublished {
                    track: track1.clone()
                }
            )
        );
    }
    let Output::Media(Command::Publish(video)) = &out[5] else {
        panic!("Publish video sixth: {out:?}");
    };
    assert_eq!(video.id, 2);
    assert!(video.video && !video.screen);
    assert_eq!(video.mid, "1");
    assert_eq!(video.rids, ids(&["q", "h", "f"]));
    assert!(
        video.codecs.iter().any(|c| c.codec == Codec::Vp8
            && c.payload_type == 96
            && c.rtx_payload_type == Some(97))
    );
    let track2 = TrackInfo {
        id: "TR_2".into(),
        participant: "PA_1".into(),
        kind: TrackKind::Video,
        source: Source::Camera,
        simulcast: ids(&["q", "h", "f"]),
    };
    for (i, conn) in [(6, 1), (7, 2)] {
        assert_eq!(
            out[i],
            Output::Send(
                conn,
                ServerMessage::TrackPublished {
                    track: track2.clone()
                }
            )
        );
    }
    assert_eq!(out.len(), 8, "{out:?}");
    assert_eq!(r.stats().tracks, 2);

    // A third participant sees both tracks in `joined`.
    r.connect(3);
    let out = ok(&mut r, 3, join_msg("standup", "carol", Mode::Sfu));
    let ServerMessage::Joined { tracks, .. } = &sent_to(&out, 3)[0] else {
        panic!("joined");
    };
    assert_eq!(tracks, &vec![track1, track2]);
    ok(&mut r, 3, ClientMessage::Leave {});

    // B subscribes: one offer with two sendonly sections.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_1", "TR_2"]),
        },
    );
    assert!(commands(&out).is_empty());
    let offer_sdp = the_offer(&out, 2);
    let offer = crate::sdp::parse(&offer_sdp).expect("offer parses");
    assert_eq!(offer.media.len(), 2);
    let b_sub_ufrag = offer.media[0].ice_ufrag.clone().expect("ufrag");
    let b_pub_ufrag = r
        .member(2)
        .and_then(|m| m.publisher.as_ref())
        .map(|p| p.ufrag().to_owned())
        .expect("publisher");
    assert_ne!(b_sub_ufrag, b_pub_ufrag, "two connections, two credentials");
    assert_eq!(offer.media[0].mid.as_deref(), Some("0"));
    assert_eq!(offer.media[1].mid.as_deref(), Some("1"));
    assert_eq!(offer.media[0].direction, Some(Direction::SendOnly));
    let msid = offer.media[1].msid.clone().expect("msid");
    assert_eq!(
        (msid.stream.as_str(), msid.track.as_deref()),
        ("PA_1", Some("TR_2"))
    );
    assert!(offer.media[0].ssrc_groups.is_empty(), "audio: no RTX");
    let fid = &offer.media[1].ssrc_groups[0];
    assert_eq!(fid.semantics, "FID");
    assert!(fid.ssrcs.iter().all(|s| *s != 0));
    let audio_ssrc = offer.media[0].ssrcs[0].ssrc;
    assert_ne!(audio_ssrc, 0);

    // B answers, preferring H.264.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&offer_sdp, true),
        },
    );
    let cmds = commands(&out);
    assert_eq!(cmds.len(), 3, "{cmds:?}");
    let Command::AddTransport(spec) = &cmds[0] else {
        panic!("AddTransport first: {cmds:?}");
    };
    assert_eq!(
        spec,
        &TransportSpec {
            id: b_sub,
            room: 1,
            participant: 2,
            role: TransportRole::Subscriber,
            local_ufrag: b_sub_ufrag.clone(),
            local_pwd: offer.media[0].ice_pwd.clone().expect("pwd"),
            remote_ufrag: BROWSER_UFRAG.into(),
            remote_pwd: BROWSER_PWD.into(),
            remote_fingerprint: BROWSER_FP,
            extensions: spec.extensions,
        }
    );
    assert!(spec.extensions.transport_cc.is_some());
    assert_eq!(
        cmds[1],
        Command::Subscribe(OutboundTrack {
            transport: b_sub,
            track: 1,
            mid: "0".into(),
            ssrc: audio_ssrc,
            rtx_ssrc: None,
            codecs: vec![TrackCodec {
                codec: Codec::Opus,
                payload_type: 111,
                rtx_payload_type: None
            }],
        })
    );
    let Command::Subscribe(v) = &cmds[2] else {
        panic!("Subscribe video: {cmds:?}");
    };
    assert_eq!((v.track, v.mid.as_str()), (2, "1"));
    assert_eq!(
        (Some(v.ssrc), v.rtx_ssrc),
        (fid.ssrcs.first().copied(), fid.ssrcs.get(1).copied())
    );
    assert_eq!(
        v.codecs[0],
        TrackCodec {
            codec: Codec::H264,
            payload_type: 102,
            rtx_payload_type: Some(103)
        },
        "the answer's preference first"
    );
    assert!(
        v.codecs
            .iter()
            .any(|c| c.codec == Codec::Vp8 && c.payload_type == 96)
    );
    assert!(sent_to(&out, 2).is_empty(), "nothing changed: no new offer");

    // set_max_layer, active speaker.
    let out = ok(
        &mut r,
        2,
        ClientMessage::SetMaxLayer {
            track: "TR_2".into(),
            layer: 1,
        },
    );
    assert_eq!(
        commands(&out),
        vec![Command::SetMaxLayer {
            transport: b_sub,
            track: 2,
            layer: 1
        }]
    );
    r.on_media_event(Event::ActiveSpeaker {
        room: 1,
        participant: 1,
    });
    let speaker = ServerMessage::ActiveSpeaker {
        participant: "PA_1".into(),
    };
    assert_eq!(
        drain(&mut r),
        vec![Output::Send(1, speaker.clone()), Output::Send(2, speaker)]
    );
    r.on_media_event(Event::TransportState {
        transport: b_sub,
        connected: false,
    });
    assert!(drain(&mut r).is_empty());

    // A leaves: its tracks go, B's sections close in a re-offer.
    let out = ok(&mut r, 1, ClientMessage::Leave {});
    assert_eq!(
        commands(&out),
        vec![
            Command::Unsubscribe {
                transport: b_sub,
                track: 1
            },
            Command::Unpublish(1),
            Command::Unsubscribe {
                transport: b_sub,
                track: 2
            },
            Command::Unpublish(2),
            Command::RemoveTransport(a_pub),
        ]
    );
    let to_b = sent_to(&out, 2);
    assert_eq!(
        to_b[0],
        ServerMessage::TrackUnpublished {
            track: "TR_1".into()
        }
    );
    assert_eq!(
        to_b[1],
        ServerMessage::TrackUnpublished {
            track: "TR_2".into()
        }
    );
    let reoffer = crate::sdp::parse(&the_offer(&out, 2)).expect("re-offer");
    assert_eq!(reoffer.media.len(), 2, "m-lines are never removed");
    assert!(reoffer.media.iter().all(|m| m.port == 0));
    assert!(reoffer.origin.session_version > offer.origin.session_version);
    assert_eq!(reoffer.origin.session_id, offer.origin.session_id);
    assert_eq!(
        to_b.last(),
        Some(&ServerMessage::ParticipantLeft {
            participant: "PA_1".into()
        })
    );
    assert_eq!(out.last(), Some(&Output::Close(1)));
    assert!(sent_to(&out, 1).is_empty());

    // B answers the closing offer; then B disconnects: its subscriber transport goes.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&reoffer.to_string(), false),
        },
    );
    assert!(out.is_empty(), "{out:?}");
    r.disconnect(2);
    assert_eq!(
        commands(&drain(&mut r)),
        vec![Command::RemoveTransport(b_sub)]
    );
    assert_eq!(r.stats(), RoomsStats::default());
    assert!(r.rooms.is_empty() && r.tracks.is_empty());
}

/// With two media workers, each room's connections are told the candidates of the
/// worker owning the room (room 1 -> worker 1, room 2 -> worker 0), in the publisher
/// answer and the subscriber offer alike, and the transports carry that room.
#[test]
fn rooms_on_two_workers_get_their_workers_ports() {
    let cand = |port: u16| {
        vec![LocalCandidate {
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
            transport: CandidateTransport::Udp,
        }]
    };
    let mut r = Rooms::new(RoomsConfig {
        candidates: vec![cand(4000), cand(4001)],
        ..cfg()
    });
    let ports_of = |sdp: &str| -> Vec<u16> {
        let d = crate::sdp::parse(sdp).expect("sdp");
        let mut ports: Vec<u16> = d
            .media
            .iter()
            .flat_map(|m| m.candidates.iter().map(|c| c.port))
            .collect();
        ports.dedup();
        ports
    };
    // conns 1, 2 in room "one" (id 1); 3, 4 in room "two" (id 2).
    for (conn, room) in [(1, "one"), (2, "one"), (3, "two"), (4, "two")] {
        r.connect(conn);
        ok(&mut r, conn, join_msg(room, &format!("p{conn}"), Mode::Sfu));
    }
    let mut expected = Vec::new();
    for (publisher, subscriber, room_id, port) in [(1, 2, 1, 4001), (3, 4, 2, 4000)] {
        ok(&mut r, publisher, publish_av(["0", "1"]));
        let out = ok(
            &mut r,
            publisher,
            ClientMessage::Offer {
                sdp: CHROME_AV.into(),
            },
        );
        let Output::Send(_, ServerMessage::Answer { sdp, .. }) = &out[0] else {
            panic!("answer first: {out:?}");
        };
        assert_eq!(ports_of(sdp), vec![port], "publisher of room {room_id}");
        let Output::Media(Command::AddTransport(spec)) = &out[1] else {
            panic!("AddTransport: {out:?}");
        };
        assert_eq!(spec.room, room_id);
        let track = if room_id == 1 { "TR_1" } else { "TR_3" };
        let out = ok(
            &mut r,
            subscriber,
            ClientMessage::Subscribe {
                tracks: ids(&[track]),
            },
        );
        assert_eq!(
            ports_of(&the_offer(&out, subscriber)),
            vec![port],
            "subscriber of room {room_id}"
        );
        expected.push(port);
    }
    assert_eq!(expected, vec![4001, 4000], "different ports");
}

/// The publisher hears `track_published` for its own tracks (its own participant id in
/// them), and the ids it learns that way are what `unpublish` takes.
#[test]
fn publisher_learns_its_own_track_ids_and_unpublishes_with_them() {
    let mut r = two_in_sfu();
    let b_sub = sub_transport(&r, 2);
    ok(&mut r, 1, publish_av(["0", "1"]));
    let out = ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    );
    let learned: Vec<String> = sent_to(&out, 1)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::TrackPublished { track } => {
                assert_eq!(track.participant, "PA_1", "its own id: {track:?}");
                Some(track.id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(learned, ids(&["TR_1", "TR_2"]));
    // Its own tracks are not for it to subscribe to.
    let e = err(
        &mut r,
        1,
        ClientMessage::Subscribe {
            tracks: vec![learned[0].clone()],
        },
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    // B subscribes to both and answers: both subscriptions are active.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: learned.clone(),
        },
    );
    let offer = the_offer(&out, 2);
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&offer, false),
        },
    );
    assert_eq!(
        commands(&out)
            .iter()
            .filter(|c| matches!(c, Command::Subscribe(_)))
            .count(),
        2
    );
    // A unpublishes its video by the id it was told.
    let out = ok(
        &mut r,
        1,
        ClientMessage::Unpublish {
            tracks: vec![learned[1].clone()],
        },
    );
    assert_eq!(
        commands(&out),
        vec![
            Command::Unsubscribe {
                transport: b_sub,
                track: 2
            },
            Command::Unpublish(2),
        ]
    );
    assert_eq!(
        sent_to(&out, 2)[0],
        ServerMessage::TrackUnpublished {
            track: "TR_2".into()
        }
    );
    assert!(sent_to(&out, 1).is_empty(), "{out:?}");
    assert_eq!(r.stats().tracks, 1);
    // Gone: a second unpublish of it is refused; the audio one still works.
    let e = err(
        &mut r,
        1,
        ClientMessage::Unpublish {
            tracks: vec![learned[1].clone()],
        },
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    let out = ok(
        &mut r,
        1,
        ClientMessage::Unpublish {
            tracks: vec![learned[0].clone()],
        },
    );
    assert!(commands(&out).contains(&Command::Unpublish(1)), "{out:?}");
    assert_eq!(r.stats().tracks, 0);
}

#[test]
fn offer_before_publish_and_a_mid_that_never_appears() {
    let mut r = two_in_sfu();
    let out = ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROMIUM_REAL.into(),
        },
    );
    let cmds = commands(&out);
    assert!(
        matches!(cmds.as_slice(), [Command::AddTransport(_)]),
        "{cmds:?}"
    );
    // mid 2 is the second video; mid 9 does not exist and stays pending.
    let out = ok(
        &mut r,
        1,
        ClientMessage::Publish {
            tracks: vec![
                PublishTrack {
                    kind: TrackKind::Video,
                    source: Source::Screen,
                    mid: Some("2".into()),
                    simulcast: vec![],
                },
                PublishTrack {
                    kind: TrackKind::Audio,
                    source: Source::Microphone,
                    mid: Some("9".into()),
                    simulcast: vec![],
                },
            ],
        },
    );
    let cmds = commands(&out);
    let [
        Command::Publish(InboundTrack {
            id: 1,
            mid,
            screen: true,
            video: true,
            ..
        }),
    ] = cmds.as_slice()
    else {
        panic!("only the screen track binds: {cmds:?}");
    };
    assert_eq!(mid, "2");
    assert_eq!(r.stats().tracks, 1);
    for conn in [1, 2] {
        assert!(matches!(
            sent_to(&out, conn).as_slice(),
            [ServerMessage::TrackPublished { track }]
                if track.id == "TR_1" && track.participant == "PA_1" && track.source == Source::Screen
        ));
    }
    // The same mid twice is refused; the pending one can be unpublished quietly.
    let dup = err(
        &mut r,
        1,
        ClientMessage::Publish {
            tracks: vec![PublishTrack {
                kind: TrackKind::Video,
                source: Source::Camera,
                mid: Some("2".into()),
                simulcast: vec![],
            }],
        },
    );
    assert_eq!(dup.code, ErrorCode::BadRequest);
    let out = ok(
        &mut r,
        1,
        ClientMessage::Unpublish {
            tracks: ids(&["TR_2"]),
        },
    );
    assert!(out.is_empty(), "pending track: nobody knew it: {out:?}");
    // B cannot subscribe to a pending (or gone) track.
    let e = err(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_2"]),
        },
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
}

#[test]
fn firefox_offer_binds_simulcast_and_ssrcs() {
    let mut r = two_in_sfu();
    ok(
        &mut r,
        1,
        ClientMessage::Publish {
            tracks: vec![PublishTrack {
                kind: TrackKind::Video,
                source: Source::Camera,
                mid: Some("1".into()),
                simulcast: ids(&["l", "m", "h"]),
            }],
        },
    );
    let out = ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: FIREFOX_AV.into(),
        },
    );
    let cmds = commands(&out);
    let Some(Command::Publish(t)) = cmds.get(1) else {
        panic!("{cmds:?}");
    };
    assert_eq!(t.rids, ids(&["h", "m", "l"]), "the offer's order");
    assert!(t.rtx_pairs.contains(&(1_137_478_591, 3_592_387_416)));
    assert!(t.ssrcs.contains(&1_137_478_591));
}

#[test]
fn publisher_reoffer_keeps_credentials_and_ice_restart_recreates_the_transport() {
    let mut r = two_in_sfu();
    ok(&mut r, 1, publish_av(["0", "1"]));
    let out = ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    );
    let answer_of = |out: &[Output]| -> SessionDescription {
        match &out[0] {
            Output::Send(1, ServerMessage::Answer { sdp, .. }) => {
                crate::sdp::parse(sdp).expect("answer")
            }
            o => panic!("answer first: {o:?}"),
        }
    };
    let first = answer_of(&out);
    // Same offer again: same credentials, newer version, no transport change.
    let out = ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    );
    let second = answer_of(&out);
    assert!(commands(&out).is_empty(), "{out:?}");
    assert_eq!(first.media[0].ice_ufrag, second.media[0].ice_ufrag);
    assert_eq!(first.media[0].ice_pwd, second.media[0].ice_pwd);
    assert_eq!(first.origin.session_id, second.origin.session_id);
    assert_eq!(
        second.origin.session_version,
        first.origin.session_version + 1
    );
    // New remote credentials: ICE restart.
    let restarted = CHROME_AV.replace("a=ice-ufrag:Kx3m", "a=ice-ufrag:Zz9q");
    let out = ok(&mut r, 1, ClientMessage::Offer { sdp: restarted });
    let third = answer_of(&out);
    assert_eq!(first.media[0].ice_ufrag, third.media[0].ice_ufrag);
    let cmds = commands(&out);
    let t = pub_transport(&r, 1);
    assert_eq!(cmds[0], Command::RemoveTransport(t));
    assert!(matches!(&cmds[1], Command::AddTransport(s) if s.id == t && s.remote_ufrag == "Zz9q"));
    assert!(matches!(&cmds[2], Command::Publish(p) if p.id == 1 && p.transport == t));
    assert!(matches!(&cmds[3], Command::Publish(p) if p.id == 2 && p.transport == t));
    assert_eq!(cmds.len(), 4);
    assert!(sent_to(&out, 2).is_empty(), "the room sees no change");
}

/// Changes while an offer is outstanding wait for its answer and go out together;
/// a closed section is reused once the browser has seen it closed.
#[test]
fn reoffers_are_batched_and_closed_sections_reused() {
    let mut r = two_in_sfu();
    ok(
        &mut r,
        1,
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
                    simulcast: ids(&["q", "h", "f"]),
                },
                PublishTrack {
                    kind: TrackKind::Video,
                    source: Source::Screen,
                    mid: Some("2".into()),
                    simulcast: vec![],
                },
            ],
        },
    );
    ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROMIUM_REAL.into(),
        },
    );
    let b_sub = sub_transport(&r, 2);

    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_2"]),
        },
    );
    let offer1 = the_offer(&out, 2);
    // While offer1 is outstanding: another subscribe is batched, a repeat ignored.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_1", "TR_2"]),
        },
    );
    assert!(out.is_empty(), "batched: {out:?}");
    // An answer to nothing / a broken answer are refused and change nothing.
    let e = err(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: "v=0\r\nbroken".into(),
        },
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&offer1, false),
        },
    );
    let cmds = commands(&out);
    assert!(
        matches!(&cmds[..], [Command::AddTransport(_), Command::Subscribe(s)] if s.track == 2 && s.mid == "0"),
        "{cmds:?}"
    );
    let offer2 = the_offer(&out, 2);
    let o2 = crate::sdp::parse(&offer2).expect("offer2");
    assert_eq!(o2.media.len(), 2);
    assert_eq!(o2.media[1].mid.as_deref(), Some("1"));
    assert_eq!(
        o2.media[1].msid.as_ref().and_then(|m| m.track.as_deref()),
        Some("TR_1")
    );

    // Video TR_2 unpublished while offer2 is outstanding: unsubscribed at once, the
    // closing re-offer waits for offer2's answer.
    let out = ok(
        &mut r,
        1,
        ClientMessage::Unpublish {
            tracks: ids(&["TR_2"]),
        },
    );
    assert_eq!(
        commands(&out),
        vec![
            Command::Unsubscribe {
                transport: b_sub,
                track: 2
            },
            Command::Unpublish(2)
        ]
    );
    assert_eq!(
        sent_to(&out, 2),
        vec![ServerMessage::TrackUnpublished {
            track: "TR_2".into()
        }]
    );
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&offer2, false),
        },
    );
    let cmds = commands(&out);
    assert!(
        matches!(&cmds[..], [Command::Subscribe(s)] if s.track == 1 && s.mid == "1"),
        "{cmds:?}"
    );
    let offer3 = the_offer(&out, 2);
    let o3 = crate::sdp::parse(&offer3).expect("offer3");
    assert_eq!(o3.media[0].port, 0, "TR_2's section closed");
    assert_eq!(o3.media[0].mid.as_deref(), Some("0"));
    assert_ne!(o3.media[1].port, 0);

    // Before offer3 is answered, the closed section is not reused.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_3"]),
        },
    );
    assert!(out.is_empty());
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&offer3, false),
        },
    );
    assert!(commands(&out).is_empty(), "{out:?}");
    let o4 = crate::sdp::parse(&the_offer(&out, 2)).expect("offer4");
    assert_eq!(o4.media.len(), 3, "TR_3 got a new section");
    assert_eq!(o4.media[2].mid.as_deref(), Some("2"));
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&o4.to_string(), false),
        },
    );
    assert!(matches!(&commands(&out)[..], [Command::Subscribe(s)] if s.track == 3 && s.mid == "2"));

    // Now TR_3 goes too; after that closing round a new video reuses section "0".
    ok(
        &mut r,
        1,
        ClientMessage::Unpublish {
            tracks: ids(&["TR_3"]),
        },
    );
    // mid 1 is free again (TR_2 was unpublished): binds against A's negotiation at once.
    let out = ok(
        &mut r,
        1,
        ClientMessage::Publish {
            tracks: vec![PublishTrack {
                kind: TrackKind::Video,
                source: Source::Camera,
                mid: Some("1".into()),
                simulcast: vec![],
            }],
        },
    );
    assert!(matches!(&commands(&out)[..], [Command::Publish(p)] if p.id == 4));
    let offer5 = r
        .member(2)
        .and_then(|m| m.subscriber.as_ref())
        .and_then(|s| s.outstanding_offer())
        .expect("closing offer outstanding");
    ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&offer5, false),
        },
    );
    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_4"]),
        },
    );
    let o6 = crate::sdp::parse(&the_offer(&out, 2)).expect("offer6");
    assert_eq!(o6.media.len(), 3, "no new m-line");
    assert_eq!(o6.media[0].mid.as_deref(), Some("0"));
    assert_eq!(
        o6.media[0].msid.as_ref().and_then(|m| m.track.as_deref()),
        Some("TR_4")
    );
    assert_eq!(o6.media[2].port, 0);
}

#[test]
fn error_codes() {
    let mut r = Rooms::new(RoomsConfig {
        create_rooms: false,
        rooms: vec!["standup".into()],
        max_participants: 2,
        ..cfg()
    });
    for c in 1..=6 {
        r.connect(c);
    }
    // Not joined yet.
    for msg in [
        ClientMessage::Leave {},
        ClientMessage::Subscribe {
            tracks: ids(&["TR_1"]),
        },
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    ] {
        let e = err(&mut r, 1, msg);
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::BadRequest, "join first")
        );
    }
    assert_eq!(
        ok(&mut r, 1, ClientMessage::Ping { id: Some(7) }),
        vec![Output::Send(1, ServerMessage::Pong { id: Some(7) })]
    );
    // Fatal join errors close the connection.
    let cases = [
        (
            ClientMessage::Join {
                room: "standup".into(),
                token: "garbage".into(),
                mode: Mode::Sfu,
            },
            ErrorCode::BadToken,
        ),
        (
            ClientMessage::Join {
                room: "standup".into(),
                token: token("standup", "a", false, NOW),
                mode: Mode::Sfu,
            },
            ErrorCode::ExpiredToken,
        ),
        (
            ClientMessage::Join {
                room: "standup".into(),
                token: token("other", "a", false, NOW + 9),
                mode: Mode::Sfu,
            },
            ErrorCode::BadToken,
        ),
        (
            ClientMessage::Join {
                room: "standup".into(),
                token: token("standup", "a", false, NOW + 9),
                mode: Mode::P2p,
            },
            ErrorCode::BadToken,
        ),
        (join_msg("nowhere", "a", Mode::Sfu), ErrorCode::UnknownRoom),
    ];
    for (msg, code) in cases {
        let e = err(&mut r, 1, msg);
        assert_eq!(e.code, code, "{e}");
        assert_eq!(drain(&mut r), vec![Output::Close(1)]);
    }
    assert_eq!(r.stats(), RoomsStats::default());
    // Join twice, wrong mode, full room.
    ok(&mut r, 1, join_msg("standup", "alice", Mode::Sfu));
    let e = err(&mut r, 1, join_msg("standup", "alice", Mode::Sfu));
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = err(&mut r, 2, join_msg("standup", "bob", Mode::P2p));
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("sfu mode"), "{e}");
    ok(&mut r, 2, join_msg("standup", "bob", Mode::Sfu));
    let e = err(&mut r, 3, join_msg("standup", "carol", Mode::Sfu));
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("full"), "{e}");
    assert!(drain(&mut r).iter().all(|o| !matches!(o, Output::Close(_))));
    // SFU-mode bad requests.
    let bad_requests = [
        ClientMessage::Offer {
            sdp: "v=0\r\nnot sdp at all".into(),
        },
        ClientMessage::Offer {
            sdp: CHROME_AV.replace("a=mid:1", "a=mid:0"),
        },
        ClientMessage::Answer {
            sdp: CHROME_AV.into(),
        },
        ClientMessage::Subscribe {
            tracks: ids(&["TR_99"]),
        },
        ClientMessage::Subscribe {
            tracks: ids(&["bogus"]),
        },
        ClientMessage::Unpublish {
            tracks: ids(&["TR_1"]),
        },
        ClientMessage::SetMaxLayer {
            track: "TR_1".into(),
            layer: 0,
        },
        ClientMessage::Candidate {
            candidate: "candidate:garbage".into(),
            mid: None,
            target: Default::default(),
        },
    ];
    for msg in bad_requests {
        let kind = msg.kind();
        let e = err(&mut r, 2, msg);
        assert_eq!(e.code, ErrorCode::BadRequest, "{kind}: {e}");
    }
    assert!(commands(&drain(&mut r)).is_empty());
    // Good candidates and end-of-candidates are accepted and ignored.
    for candidate in ["candidate:1 1 udp 2113937151 192.0.2.7 54321 typ host", ""] {
        let out = ok(
            &mut r,
            2,
            ClientMessage::Candidate {
                candidate: candidate.into(),
                mid: Some("0".into()),
                target: Default::default(),
            },
        );
        assert!(out.is_empty());
    }
    // Own track; another's track in unpublish.
    ok(&mut r, 1, publish_av(["0", "1"]));
    ok(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    );
    let e = err(
        &mut r,
        1,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_1"]),
        },
    );
    assert!(e.message.contains("own"), "{e}");
    let e = err(
        &mut r,
        2,
        ClientMessage::Unpublish {
            tracks: ids(&["TR_1"]),
        },
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    // A connection the server never announced.
    let e = err(&mut r, 99, ClientMessage::Ping { id: None });
    assert_eq!(e.code, ErrorCode::Internal);
}

#[test]
fn p2p_relays_between_the_two_peers() {
    let mut r = Rooms::new(cfg());
    for c in 1..=3 {
        r.connect(c);
    }
    let out = ok(&mut r, 1, join_msg("call-42", "alice", Mode::P2p));
    let ServerMessage::Joined {
        ice_servers,
        mode: Mode::P2p,
        ..
    } = &sent_to(&out, 1)[0]
    else {
        panic!("joined: {out:?}");
    };
    assert_eq!(ice_servers.len(), 2);
    assert_eq!(ice_servers[0].urls, cfg().stun_urls);
    assert_eq!(ice_servers[0].username, None);
    let turn = &ice_servers[1];
    assert_eq!(turn.urls, cfg().turn_urls);
    let username = turn.username.clone().expect("username");
    assert_eq!(username, format!("{}:alice", NOW + 3600));
    assert_eq!(
        turn.credential.as_deref(),
        Some(crate::turn::auth::rest_password(TURN_SECRET, &username).as_str())
    );
    assert_ne!(
        turn.credential.as_deref(),
        Some(crate::turn::auth::rest_password("other", &username).as_str())
    );
    // Alone: nobody to send to.
    let e = err(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::BadRequest, "no peer in the room")
    );
    ok(&mut r, 2, join_msg("call-42", "bob", Mode::P2p));
    let e = err(&mut r, 3, join_msg("call-42", "carol", Mode::P2p));
    assert_eq!(e.code, ErrorCode::BadRequest);
    // Offer, answer and candidate go to the other side with `from`.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Offer {
            sdp: CHROME_AV.into(),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send(
            1,
            ServerMessage::Offer {
                sdp: CHROME_AV.into(),
                from: Some("PA_2".into())
            }
        )]
    );
    let out = ok(
        &mut r,
        1,
        ClientMessage::Answer {
            sdp: FIREFOX_AV.into(),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send(
            2,
            ServerMessage::Answer {
                sdp: FIREFOX_AV.into(),
                from: Some("PA_1".into())
            }
        )]
    );
    let cand = "candidate:1 1 udp 2113937151 192.0.2.9 40000 typ host";
    let out = ok(
        &mut r,
        1,
        ClientMessage::Candidate {
            candidate: cand.into(),
            mid: Some("0".into()),
            target: crate::signaling::Target::Subscriber,
        },
    );
    assert_eq!(
        out,
        vec![Output::Send(
            2,
            ServerMessage::Candidate {
                candidate: cand.into(),
                mid: Some("0".into()),
                from: Some("PA_1".into())
            }
        )]
    );
    // Garbage SDP is not relayed; SFU messages are refused.
    let e = err(
        &mut r,
        1,
        ClientMessage::Offer {
            sdp: "v=0\r\nxx".into(),
        },
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = err(&mut r, 1, publish_av(["0", "1"]));
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(drain(&mut r).is_empty());
    // Leave: the peer hears it, no media commands ever.
    let out = ok(&mut r, 1, ClientMessage::Leave {});
    assert_eq!(
        out,
        vec![
            Output::Send(
                2,
                ServerMessage::ParticipantLeft {
                    participant: "PA_1".into()
                }
            ),
            Output::Close(1)
        ]
    );
    r.disconnect(2);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.stats(), RoomsStats::default());
}

#[test]
fn p2p_without_turn_secret_has_only_stun() {
    let mut r = Rooms::new(RoomsConfig {
        turn_secret: None,
        ..cfg()
    });
    r.connect(1);
    let out = ok(&mut r, 1, join_msg("call", "alice", Mode::P2p));
    let ServerMessage::Joined { ice_servers, .. } = &sent_to(&out, 1)[0] else {
        panic!("joined");
    };
    assert_eq!(ice_servers.len(), 1);
    assert!(ice_servers[0].urls[0].starts_with("stun:"));
}

#[test]
fn ids_are_never_reused() {
    let mut r = Rooms::new(cfg());
    r.connect(1);
    r.connect(2);
    let mut seen_participants = Vec::new();
    let mut seen_tracks = Vec::new();
    let mut seen_transports = Vec::new();
    for round in 0..3 {
        for (conn, room) in [(1, "a"), (2, "b")] {
            let out = ok(&mut r, conn, join_msg(room, "x", Mode::Sfu));
            let ServerMessage::Joined { participant, .. } = &sent_to(&out, conn)[0] else {
                panic!("joined");
            };
            assert!(!seen_participants.contains(participant), "round {round}");
            seen_participants.push(participant.clone());
            ok(&mut r, conn, publish_av(["0", "1"]));
            let out = ok(
                &mut r,
                conn,
                ClientMessage::Offer {
                    sdp: CHROME_AV.into(),
                },
            );
            for c in commands(&out) {
                match c {
                    Command::AddTransport(s) => {
                        assert!(!seen_transports.contains(&s.id));
                        seen_transports.push(s.id);
                    }
                    Command::Publish(t) => {
                        assert!(!seen_tracks.contains(&t.id));
                        seen_tracks.push(t.id);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        r.disconnect(1);
        r.disconnect(2);
        let cmds = commands(&drain(&mut r));
        assert_eq!(
            cmds.iter()
                .filter(|c| matches!(c, Command::Unpublish(_)))
                .count(),
            4
        );
        assert_eq!(
            cmds.iter()
                .filter(|c| matches!(c, Command::RemoveTransport(_)))
                .count(),
            2
        );
        assert_eq!(r.stats(), RoomsStats::default());
        r.connect(1);
        r.connect(2);
    }
    assert_eq!(seen_tracks.len(), 12);
    assert_eq!(seen_participants.len(), 6);
}

/// A publisher offer whose video section offers only `encoding` (and its RTX), as a
/// browser restricted with `setCodecPreferences` would.
fn video_only(offer_sdp: &str, encoding: &str) -> String {
    let mut sd = crate::sdp::parse(offer_sdp).expect("fixture parses");
    for m in sd
        .media
        .iter_mut()
        .filter(|m| m.kind == crate::sdp::MediaKind::Video)
    {
        let primary: Vec<u8> = m
            .rtpmaps
            .iter()
            .filter(|r| r.encoding.eq_ignore_ascii_case(encoding))
            .map(|r| r.payload_type)
            .collect();
        let keep: Vec<u8> = m
            .payload_types()
            .filter(|pt| {
                primary.contains(pt)
                    || m.fmtp(*pt)
                        .and_then(|f| f.param("apt"))
                        .and_then(|apt| apt.parse::<u8>().ok())
                        .is_some_and(|apt| primary.contains(&apt))
            })
            .collect();
        m.formats
            .retain(|f| f.parse().is_ok_and(|pt| keep.contains(&pt)));
        m.rtpmaps.retain(|r| keep.contains(&r.payload_type));
        m.fmtps.retain(|f| keep.contains(&f.payload_type));
        m.rtcp_fbs
            .retain(|f| f.payload_type.is_none_or(|pt| keep.contains(&pt)));
    }
    sd.to_string()
}

#[test]
fn a_section_rejected_for_its_codec_is_not_subscribed_and_the_client_is_told() {
    let mut r = two_in_sfu();
    r.connect(3);
    ok(&mut r, 3, join_msg("standup", "carol", Mode::Sfu));
    // A publishes H.264 only (TR_1 audio, TR_2 video), C VP8 only (TR_3, TR_4).
    for (conn, codec) in [(1, "H264"), (3, "VP8")] {
        ok(&mut r, conn, publish_av(["0", "1"]));
        let out = ok(
            &mut r,
            conn,
            ClientMessage::Offer {
                sdp: video_only(CHROME_AV, codec),
            },
        );
        let video: Vec<InboundTrack> = commands(&out)
            .into_iter()
            .filter_map(|c| match c {
                Command::Publish(t) if t.video => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(video.len(), 1, "{out:?}");
        assert!(
            video[0].codecs.iter().all(|c| c.codec.encoding() == codec),
            "{:?}",
            video[0].codecs
        );
    }
    // B subscribes to both videos: each section offers only its publisher's codec.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_2", "TR_4"]),
        },
    );
    let offer_sdp = the_offer(&out, 2);
    let offer = crate::sdp::parse(&offer_sdp).expect("offer parses");
    assert_eq!(offer.media.len(), 2);
    let encodings = |i: usize| -> Vec<String> {
        offer.media[i]
            .payload_types()
            .filter_map(|pt| offer.media[i].rtpmap(pt).map(|m| m.encoding.clone()))
            .collect()
    };
    assert_eq!(encodings(0), ["H264", "rtx"], "TR_2: only H.264");
    assert_eq!(encodings(1), ["VP8", "rtx"], "TR_4: only VP8");

    // B's browser cannot receive H.264 (Firefox without OpenH264): it rejects mid 0.
    let mut answer = crate::sdp::parse(&browser_answer(&offer_sdp, false)).expect("answer");
    answer.media[0].port = 0;
    answer.media[0].direction = Some(Direction::Inactive);
    for g in &mut answer.groups {
        g.mids.retain(|m| m != "0");
    }
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: answer.to_string(),
        },
    );
    let b_sub = sub_transport(&r, 2);
    let subscribed: Vec<OutboundTrack> = commands(&out)
        .into_iter()
        .filter_map(|c| match c {
            Command::Subscribe(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(subscribed.len(), 1, "only the VP8 track: {out:?}");
    assert_eq!((subscribed[0].transport, subscribed[0].track), (b_sub, 4));
    assert_eq!(subscribed[0].mid, "1");
    assert_eq!(subscribed[0].codecs.len(), 1);
    assert_eq!(subscribed[0].codecs[0].codec, Codec::Vp8);
    let told: Vec<(ErrorCode, String)> = sent_to(&out, 2)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Error { code, message } => Some((code, message)),
            _ => None,
        })
        .collect();
    assert_eq!(told.len(), 1, "{out:?}");
    assert_eq!(told[0].0, ErrorCode::CodecUnsupported);
    assert!(told[0].1.contains("TR_2"), "{}", told[0].1);
    assert!(told[0].1.contains("H264"), "{}", told[0].1);
    assert_eq!(ErrorCode::CodecUnsupported.as_str(), "codec_unsupported");
    // The section is closed in the next offer; the VP8 one stays open.
    let reoffer_sdp = the_offer(&out, 2);
    let reoffer = crate::sdp::parse(&reoffer_sdp).expect("re-offer parses");
    assert_eq!(reoffer.media[0].port, 0);
    assert_ne!(reoffer.media[1].port, 0);
    assert_eq!(reoffer.bundle(), ["1"]);
    // Answering it changes nothing on the media plane and tells nothing again.
    let out = ok(
        &mut r,
        2,
        ClientMessage::Answer {
            sdp: browser_answer(&reoffer_sdp, false),
        },
    );
    assert!(commands(&out).is_empty(), "{out:?}");
    assert!(sent_to(&out, 2).is_empty(), "{out:?}");
    // The closed section is reused by the next track of its kind; the H.264 track may
    // be asked for again (and is offered H.264 only again).
    let out = ok(
        &mut r,
        2,
        ClientMessage::Subscribe {
            tracks: ids(&["TR_2"]),
        },
    );
    let again = crate::sdp::parse(&the_offer(&out, 2)).expect("offer parses");
    assert_eq!(again.media.len(), 2, "mid 0 reused");
    assert_eq!(again.media[0].payload_types().collect::<Vec<_>>().len(), 2);
    assert_eq!(
        again.media[0].rtpmaps[0].encoding, "H264",
        "{:?}",
        again.media[0]
    );
}
