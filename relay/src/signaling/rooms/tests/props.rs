//! Random message sequences from several connections: nothing panics, and the outputs
//! stay consistent with what the connections and the media plane were told.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Disconnect,
    Join(u8, bool),
    JoinBadToken,
    Leave,
    PublishAv,
    PublishMid(u8),
    Unpublish(u32),
    Subscribe(Vec<u32>),
    Offer(u8),
    AnswerLast,
    AnswerGarbage,
    Candidate(bool),
    SetMaxLayer(u32, u8),
    Ping,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Connect),
        1 => Just(Op::Disconnect),
        4 => (0u8..2, any::<bool>()).prop_map(|(r, p)| Op::Join(r, p)),
        1 => Just(Op::JoinBadToken),
        1 => Just(Op::Leave),
        3 => Just(Op::PublishAv),
        2 => (0u8..4).prop_map(Op::PublishMid),
        2 => (1u32..12).prop_map(Op::Unpublish),
        4 => proptest::collection::vec(1u32..12, 1..4).prop_map(Op::Subscribe),
        4 => (0u8..4).prop_map(Op::Offer),
        4 => Just(Op::AnswerLast),
        1 => Just(Op::AnswerGarbage),
        1 => any::<bool>().prop_map(Op::Candidate),
        1 => (1u32..12, 0u8..3).prop_map(|(t, l)| Op::SetMaxLayer(t, l)),
        1 => Just(Op::Ping),
    ]
}

/// What the outputs told the outside world, checked as they come.
#[derive(Default)]
struct World {
    connected: BTreeSet<ConnId>,
    published: BTreeSet<TrackId>,
    transports: BTreeSet<TransportId>,
    last_offer: BTreeMap<ConnId, String>,
}

impl World {
    fn absorb(&mut self, r: &mut Rooms) {
        while let Some(o) = r.poll_output() {
            match o {
                Output::Send(c, m) => {
                    assert!(
                        self.connected.contains(&c),
                        "send to closed conn {c}: {m:?}"
                    );
                    if let ServerMessage::Offer { sdp, .. } = m {
                        self.last_offer.insert(c, sdp);
                    }
                }
                Output::Close(c) => assert!(self.connected.contains(&c), "close {c}"),
                Output::Media(Command::AddTransport(s)) => {
                    self.transports.insert(s.id);
                }
                Output::Media(Command::RemoveTransport(t)) => {
                    assert!(self.transports.remove(&t), "remove unknown transport {t}");
                }
                Output::Media(Command::Publish(t)) => {
                    assert!(self.transports.contains(&t.transport));
                    self.published.insert(t.id);
                }
                Output::Media(Command::Unpublish(t)) => {
                    assert!(self.published.remove(&t), "unpublish unknown {t}");
                }
                Output::Media(Command::Subscribe(s)) => {
                    assert!(self.published.contains(&s.track), "subscribe to gone {s:?}");
                    assert!(self.transports.contains(&s.transport));
                }
                Output::Media(Command::Unsubscribe { transport, .. })
                | Output::Media(Command::SetMaxLayer { transport, .. }) => {
                    assert!(self.transports.contains(&transport));
                }
            }
        }
    }
}

fn message(op: &Op, last_offer: Option<&String>) -> Option<ClientMessage> {
    let offers = [
        CHROME_AV,
        FIREFOX_AV,
        CHROMIUM_REAL,
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n",
    ];
    Some(match op {
        Op::Connect | Op::Disconnect => return None,
        Op::Join(room, p2p) => join_msg(
            &format!("r{room}"),
            "someone",
            if *p2p { Mode::P2p } else { Mode::Sfu },
        ),
        Op::JoinBadToken => ClientMessage::Join {
            room: "r0".into(),
            token: "x.y".into(),
            mode: Mode::Sfu,
        },
        Op::Leave => ClientMessage::Leave {},
        Op::PublishAv => publish_av(["0", "1"]),
        Op::PublishMid(mid) => ClientMessage::Publish {
            tracks: vec![PublishTrack {
                kind: if *mid == 0 {
                    TrackKind::Audio
                } else {
                    TrackKind::Video
                },
                source: if *mid == 0 {
                    Source::Microphone
                } else {
                    Source::Screen
                },
                mid: Some(mid.to_string()),
                simulcast: vec![],
            }],
        },
        Op::Unpublish(t) => ClientMessage::Unpublish {
            tracks: vec![format!("TR_{t}")],
        },
        Op::Subscribe(ts) => ClientMessage::Subscribe {
            tracks: ts.iter().map(|t| format!("TR_{t}")).collect(),
        },
        Op::Offer(i) => ClientMessage::Offer {
            sdp: offers[usize::from(*i) % offers.len()].into(),
        },
        Op::AnswerLast => ClientMessage::Answer {
            sdp: last_offer
                .map(|o| browser_answer(o, false))
                .unwrap_or_else(|| "v=0\r\n".into()),
        },
        Op::AnswerGarbage => ClientMessage::Answer {
            sdp: "v=0\r\nm=audio 9 RTP/AVP 0\r\n".into(),
        },
        Op::Candidate(good) => ClientMessage::Candidate {
            candidate: if *good {
                "candidate:1 1 udp 1 192.0.2.1 9 typ host".into()
            } else {
                "candidate:x".into()
            },
            mid: None,
            target: Default::default(),
        },
        Op::SetMaxLayer(t, l) => ClientMessage::SetMaxLayer {
            track: format!("TR_{t}"),
            layer: *l,
        },
        Op::Ping => ClientMessage::Ping { id: None },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_the_invariants(
        ops in proptest::collection::vec((1u64..4, op()), 1..60)
    ) {
        let mut r = Rooms::new(cfg());
        let mut w = World::default();
        for c in 1..4 {
            r.connect(c);
            w.connected.insert(c);
        }
        for (conn, op) in &ops {
            match op {
                Op::Connect => {
                    r.connect(*conn);
                    w.connected.insert(*conn);
                }
                Op::Disconnect => {
                    r.disconnect(*conn);
                    w.connected.remove(conn);
                    w.last_offer.remove(conn);
                }
                op => {
                    if let Some(msg) = message(op, w.last_offer.get(conn)) {
                        let res = r.on_message(*conn, msg, NOW);
                        if !w.connected.contains(conn) {
                            prop_assert!(res.is_err());
                        }
                    }
                }
            }
            w.absorb(&mut r);
            prop_assert!(r.stats().tracks <= w.published.len());
        }
        for c in 1..4 {
            r.disconnect(c);
            w.connected.remove(&c);
            w.absorb(&mut r);
        }
        prop_assert_eq!(r.stats(), RoomsStats::default());
        prop_assert!(r.rooms.is_empty());
        prop_assert!(r.tracks.is_empty());
        prop_assert!(r.conns.is_empty());
        prop_assert!(w.published.is_empty(), "still published: {:?}", w.published);
        prop_assert!(w.transports.is_empty(), "still open: {:?}", w.transports);
    }
}
