//! Parser, writer and negotiation tests on offers as Chromium 120+ and Firefox write them.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;

const CHROME_AV: &str = include_str!("fixtures/chrome_av_simulcast.sdp");
const CHROME_DC: &str = include_str!("fixtures/chrome_datachannel_only.sdp");
const CHROME_SCREEN: &str = include_str!("fixtures/chrome_screen_share.sdp");
const FIREFOX_AV: &str = include_str!("fixtures/firefox_av_simulcast.sdp");

const OUR_FP: [u8; 32] = [0xab; 32];

fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

fn params() -> LocalParams {
    let udp: SocketAddr = "203.0.113.10:3478".parse().expect("addr");
    let tcp: SocketAddr = "203.0.113.10:443".parse().expect("addr");
    LocalParams::new(
        "sfuU",
        "sfuPasswordSfuPassword24",
        OUR_FP,
        vec![
            LocalCandidate {
                addr: udp,
                transport: CandidateTransport::Udp,
            },
            LocalCandidate {
                addr: tcp,
                transport: CandidateTransport::TcpPassive,
            },
        ],
    )
}

/// Answers, writes, and re-parses the answer (what the browser would read).
fn answer_text(offer_text: &str, p: &LocalParams) -> (SessionDescription, SessionDescription) {
    let offer = parse(&crlf(offer_text)).expect("offer parses");
    let a = answer(&offer, p).expect("answerable");
    let text = a.to_string();
    assert!(text.ends_with("\r\n"));
    assert!(!text.contains("\n\n"));
    let reparsed = parse(&text).expect("our answer parses");
    assert_eq!(reparsed, a, "answer survives write + parse");
    (offer, reparsed)
}

#[test]
fn parses_chrome_offer_fields() {
    let sd = parse(&crlf(CHROME_AV)).expect("parses");
    assert_eq!(sd.origin.session_id, "4611731400430051336");
    assert_eq!(sd.origin.session_version, 2);
    assert_eq!(sd.bundle(), ["0", "1", "2"]);
    assert!(sd.extmap_allow_mixed);
    assert_eq!(sd.media.len(), 3);
    let audio = &sd.media[0];
    assert_eq!(audio.kind, MediaKind::Audio);
    assert_eq!(audio.port, 9);
    assert_eq!(audio.proto, Proto::UdpTlsRtpSavpf);
    assert_eq!(
        audio.payload_types().collect::<Vec<_>>(),
        [111, 63, 9, 0, 8, 13, 110, 126]
    );
    assert_eq!(audio.mid.as_deref(), Some("0"));
    assert_eq!(audio.ice_ufrag.as_deref(), Some("Kx3m"));
    assert_eq!(audio.ice_options, ["trickle"]);
    assert_eq!(audio.setup, Some(Setup::Actpass));
    assert_eq!(audio.direction, Some(Direction::SendOnly));
    assert!(audio.rtcp_mux && audio.rtcp_rsize);
    let fp = sd.sha256_fingerprint_of(audio).expect("fingerprint");
    assert_eq!(fp[0], 0x7b);
    assert_eq!(fp[31], 0x08);
    assert_eq!(
        audio.rtpmap(111),
        Some(&RtpMap {
            payload_type: 111,
            encoding: "opus".into(),
            clock_rate: 48000,
            channels: Some(2)
        })
    );
    assert_eq!(
        audio.fmtp(111).and_then(|f| f.param("useinbandfec")),
        Some("1")
    );
    assert_eq!(audio.extmaps[0].id, 1);
    assert_eq!(audio.extmaps[0].uri, Extension::AudioLevel.uri());
    assert_eq!(audio.ssrcs[0].ssrc, 2_890_844_526);
    assert_eq!(audio.ssrcs[0].attribute, "cname");
    assert_eq!(
        audio.msid.as_ref().map(|m| m.stream.as_str()),
        Some("9d2bc2b5-1f22-4c3d-9d3a-1a1f8c6e2c4b")
    );
    // The unknown `a=rtcp:` line is kept.
    assert!(audio.other.iter().any(|l| l == "a=rtcp:9 IN IP4 0.0.0.0"));

    let video = &sd.media[1];
    assert_eq!(video.rids.len(), 3);
    assert_eq!(video.rids[0].id, "q");
    assert_eq!(video.rids[0].direction, RidDirection::Send);
    let sim = video.simulcast.as_ref().expect("simulcast");
    assert_eq!(sim.send.len(), 3);
    assert!(sim.recv.is_empty());
    assert_eq!(sim.send[2][0].rid, "f");
    let fbs: Vec<_> = video.rtcp_fb_for(96).collect();
    assert_eq!(fbs.len(), 5);
    assert_eq!(fbs[3].kind, "nack");
    assert_eq!(fbs[4].param.as_deref(), Some("pli"));

    let dc = &sd.media[2];
    assert!(dc.is_datachannel());
    assert_eq!(dc.sctp_port, Some(5000));
    assert_eq!(dc.max_message_size, Some(262_144));
}

#[test]
fn parses_firefox_offer_fields() {
    let sd = parse(&crlf(FIREFOX_AV)).expect("parses");
    assert_eq!(sd.origin.username, "mozilla...THIS_IS_SDPARTA-99.0");
    // Firefox puts the fingerprint at session level only.
    assert!(sd.media[0].fingerprints.is_empty());
    assert!(sd.sha256_fingerprint_of(&sd.media[0]).is_some());
    let video = &sd.media[1];
    assert_eq!(video.extmaps[3].direction, Some(Direction::RecvOnly));
    assert_eq!(
        video.rids[0].restrictions[0],
        ("max-width".into(), "1280".into())
    );
    assert_eq!(video.ssrc_groups[0].semantics, "FID");
    assert_eq!(video.ssrc_groups[0].ssrcs, [1_137_478_591, 3_592_387_416]);
    assert_eq!(video.direction, Some(Direction::SendRecv));
}

#[test]
fn parses_candidates_and_end_of_candidates() {
    let sd = parse(CHROME_DC).expect("LF line ends parse too");
    let m = &sd.media[0];
    assert_eq!(m.candidates.len(), 2);
    let host = &m.candidates[0];
    assert!(host.address.ends_with(".local"));
    assert_eq!(host.port, 54321);
    assert_eq!(host.priority, 2_113_937_151);
    assert_eq!(host.extensions[0], ("generation".into(), "0".into()));
    let srflx = &m.candidates[1];
    assert_eq!(srflx.typ, "srflx");
    assert_eq!(srflx.related_port, Some(0));
    let tcp = parse_candidate_line(
        "candidate:2 1 TCP 1518280447 192.0.2.5 9 typ host tcptype active generation 0",
    )
    .expect("tcp candidate");
    assert_eq!(tcp.transport, "tcp");
    assert_eq!(tcp.tcp_type.as_deref(), Some("active"));
    assert!(
        parse("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=end-of-candidates\r\n")
            .expect("parses")
            .media[0]
            .end_of_candidates
    );
}

#[test]
fn parses_simulcast_alternatives_and_paused() {
    let sd = parse(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
         a=rid:1 send pt=96,97;max-width=1280\r\na=rid:2 send\r\na=rid:3 send\r\na=rid:4 recv\r\n\
         a=simulcast:send 1,~2;3 recv 4\r\n",
    )
    .expect("parses");
    let m = &sd.media[0];
    assert_eq!(m.rids[0].payload_types, [96, 97]);
    assert_eq!(
        m.rids[0].restrictions,
        [("max-width".into(), "1280".into())]
    );
    assert_eq!(m.rids[3].direction, RidDirection::Recv);
    let sim = m.simulcast.as_ref().expect("simulcast");
    assert_eq!(sim.send.len(), 2);
    assert_eq!(sim.send[0].len(), 2);
    assert!(!sim.send[0][0].paused);
    assert!(sim.send[0][1].paused);
    assert_eq!(sim.send[0][1].rid, "2");
    assert_eq!(sim.recv[0][0].rid, "4");
    let legacy = parse(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
         a=simulcast: send rid=h;m;l\r\n",
    )
    .expect("draft syntax parses");
    let legacy = legacy.media[0].simulcast.as_ref().expect("simulcast");
    assert_eq!(legacy.send.len(), 3);
    assert_eq!(legacy.send[0][0].rid, "h");
    // And it writes back the same way.
    assert_eq!(sim.to_string(), "simulcast:send 1,~2;3 recv 4");
    assert_eq!(m.rids[0].to_string(), "rid:1 send pt=96,97;max-width=1280");
}

#[test]
fn errors_name_the_line() {
    let base =
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
    let cases: [(&str, SdpError); 10] = [
        (
            "a=rtpmap:111 opus/48000/2\r\na=rtpmap:111 VP8/90000\r\n",
            SdpError::Bad {
                line: 7,
                what: "a=rtpmap (payload type mapped twice)",
            },
        ),
        (
            "a=fingerprint:sha-256 AB:CD\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=fingerprint",
            },
        ),
        (
            "a=rtpmap:111 opus\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=rtpmap clock rate",
            },
        ),
        (
            "a=rtpmap:200 opus/48000/2\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=rtpmap",
            },
        ),
        (
            "a=extmap:0 urn:x\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=extmap id",
            },
        ),
        (
            "a=setup:sideways\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=setup",
            },
        ),
        (
            "a=rid:q sideways\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=rid direction",
            },
        ),
        (
            "a=simulcast:send q;;h\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=simulcast rid",
            },
        ),
        (
            "a=candidate:1 1 udp x 1.2.3.4 5 typ host\r\n",
            SdpError::Bad {
                line: 6,
                what: "a=candidate priority",
            },
        ),
        ("garbage\r\n", SdpError::Syntax { line: 6 }),
    ];
    for (extra, expected) in cases {
        assert_eq!(parse(&format!("{base}{extra}")), Err(expected), "{extra}");
    }
    assert_eq!(
        parse("o=- 1 1 IN IP4 0.0.0.0\r\n"),
        Err(SdpError::NoVersion { line: 1 })
    );
    assert_eq!(parse("v=0\r\ns=-\r\n"), Err(SdpError::Missing("o=")));
    assert_eq!(
        parse("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF opus\r\n"),
        Err(SdpError::Bad {
            line: 3,
            what: "m= payload type"
        })
    );
    let big = "a".repeat(MAX_SDP_LEN + 1);
    assert_eq!(parse(&big), Err(SdpError::TooLarge(MAX_SDP_LEN + 1)));
}

#[test]
fn unknown_attributes_are_kept_and_written() {
    let text = crlf(CHROME_AV);
    let sd = parse(&text).expect("parses");
    let again = parse(&sd.to_string()).expect("written form parses");
    assert_eq!(sd, again);
}

#[test]
fn answers_chrome_audio_video_simulcast() {
    let (offer, a) = answer_text(CHROME_AV, &params());
    assert!(a.ice_lite);
    assert_eq!(a.bundle(), ["0", "1"], "data channel rejected by default");
    assert_eq!(a.media.len(), offer.media.len());
    for (o, m) in offer.media.iter().zip(&a.media) {
        assert_eq!(o.mid, m.mid, "mids and order kept");
        assert_eq!(o.kind, m.kind);
    }
    let dc = &a.media[2];
    assert_eq!(dc.port, 0);
    for m in &a.media[..2] {
        assert_eq!(a.sha256_fingerprint_of(m), Some(OUR_FP));
        assert_eq!(a.setup_of(m), Some(Setup::Passive));
        assert_eq!(a.ice_ufrag_of(m), Some("sfuU"));
        assert_eq!(a.ice_pwd_of(m), Some("sfuPasswordSfuPassword24"));
        assert!(m.rtcp_mux);
        assert_eq!(m.direction, Some(Direction::RecvOnly));
        assert_eq!(m.port, 3478);
        assert_eq!(m.candidates.len(), 2);
        assert_eq!(m.candidates[0].transport, "udp");
        assert_eq!(m.candidates[1].transport, "tcp");
        assert_eq!(m.candidates[1].tcp_type.as_deref(), Some("passive"));
        assert!(m.candidates[0].priority > m.candidates[1].priority);
        assert!(m.end_of_candidates);
    }
    let audio = &a.media[0];
    assert_eq!(audio.payload_types().collect::<Vec<_>>(), [111]);
    assert_eq!(
        audio.fmtp(111).and_then(|f| f.param("useinbandfec")),
        Some("1")
    );
    let audio_ext: Vec<_> = audio
        .extmaps
        .iter()
        .map(|e| (e.id, e.uri.as_str()))
        .collect();
    assert_eq!(
        audio_ext,
        [
            (1, Extension::AudioLevel.uri()),
            (2, Extension::AbsSendTime.uri()),
            (3, Extension::TransportCc.uri()),
            (4, Extension::Mid.uri())
        ]
    );

    let video = &a.media[1];
    // Offer's numbering: VP8 96 + rtx 97, H.264 42e01f mode 1 is 106 + rtx 107.
    assert_eq!(
        video.payload_types().collect::<Vec<_>>(),
        [96, 97, 106, 107]
    );
    assert_eq!(video.fmtp(97).and_then(|f| f.param("apt")), Some("96"));
    assert_eq!(video.fmtp(107).and_then(|f| f.param("apt")), Some("106"));
    assert_eq!(codec_of(video, 106), Some(Codec::H264));
    assert_eq!(codec_of(video, 96), Some(Codec::Vp8));
    let fb: Vec<_> = video
        .rtcp_fb_for(96)
        .map(|f| (f.kind.as_str(), f.param.as_deref()))
        .collect();
    assert_eq!(
        fb,
        [
            ("transport-cc", None),
            ("ccm", Some("fir")),
            ("nack", None),
            ("nack", Some("pli"))
        ]
    );
    let uris: Vec<_> = video
        .extmaps
        .iter()
        .map(|e| (e.id, e.uri.as_str()))
        .collect();
    assert!(uris.contains(&(10, Extension::Rid.uri())));
    assert!(uris.contains(&(11, Extension::RepairedRid.uri())));
    assert!(uris.contains(&(3, Extension::TransportCc.uri())));
    assert!(!uris.iter().any(|(_, u)| u.contains("toffset")));
    // Simulcast recv mirrors the offered rids.
    let rids: Vec<_> = video
        .rids
        .iter()
        .map(|r| (r.id.as_str(), r.direction))
        .collect();
    assert_eq!(
        rids,
        [
            ("q", RidDirection::Recv),
            ("h", RidDirection::Recv),
            ("f", RidDirection::Recv)
        ]
    );
    let sim = video.simulcast.as_ref().expect("simulcast answered");
    assert!(sim.send.is_empty());
    let recv: Vec<_> = sim.recv.iter().map(|s| s[0].rid.as_str()).collect();
    assert_eq!(recv, ["q", "h", "f"]);
}

#[test]
fn answers_data_channel_when_enabled() {
    let mut p = params();
    p.data_channels = true;
    let (_, a) = answer_text(CHROME_AV, &p);
    assert_eq!(a.bundle(), ["0", "1", "2"]);
    let dc = &a.media[2];
    assert!(dc.is_datachannel());
    assert_eq!(dc.sctp_port, Some(5000));
    assert_eq!(dc.max_message_size, Some(262_144));
    assert_eq!(dc.setup, Some(Setup::Passive));

    let (_, only) = answer_text(CHROME_DC, &p);
    assert_eq!(only.bundle(), ["0"]);
    assert!(only.media[0].is_datachannel());
    let (_, rejected) = answer_text(CHROME_DC, &params());
    assert!(rejected.bundle().is_empty());
    assert_eq!(rejected.media[0].port, 0);
    assert_eq!(rejected.media[0].mid.as_deref(), Some("0"));
}

#[test]
fn answers_screen_share_as_second_video() {
    let (_, a) = answer_text(CHROME_SCREEN, &params());
    assert_eq!(a.bundle(), ["0", "1", "2"]);
    let camera = &a.media[1];
    let sim = camera.simulcast.as_ref().expect("simulcast");
    assert_eq!(sim.recv.len(), 3);
    assert!(sim.recv[2][0].paused, "paused layer stays paused");
    let screen = &a.media[2];
    assert!(screen.simulcast.is_none());
    assert!(screen.rids.is_empty());
    assert_eq!(screen.payload_types().collect::<Vec<_>>(), [96, 97]);
    assert_eq!(screen.direction, Some(Direction::RecvOnly));
}

#[test]
fn answers_firefox() {
    let (_, a) = answer_text(FIREFOX_AV, &params());
    assert_eq!(a.bundle(), ["0", "1"]);
    let audio = &a.media[0];
    assert_eq!(audio.payload_types().collect::<Vec<_>>(), [109]);
    let video = &a.media[1];
    // VP8 120 + rtx 124; H.264 126 (mode 1) + rtx 127; 97 (mode 0) not taken.
    assert_eq!(
        video.payload_types().collect::<Vec<_>>(),
        [120, 124, 126, 127]
    );
    assert_eq!(video.fmtp(124).and_then(|f| f.param("apt")), Some("120"));
    assert_eq!(video.direction, Some(Direction::RecvOnly), "sendrecv offer");
    let rids: Vec<_> = video.rids.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(rids, ["h", "m", "l"]);
    let ids: Vec<_> = video.extmaps.iter().map(|e| e.id).collect();
    assert!(ids.contains(&8) && ids.contains(&9) && ids.contains(&7));
}

#[test]
fn rejects_unsupported_and_checks_transport() {
    // Only G722: no codec we forward -> rejected with port 0, mid kept.
    let text = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a\r\n\
                a=fingerprint:sha-256 AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB\r\n\
                a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\n\
                m=audio 9 UDP/TLS/RTP/SAVPF 9\r\na=mid:a\r\na=rtcp-mux\r\na=rtpmap:9 G722/8000\r\n";
    let offer = parse(text).expect("parses");
    let a = answer(&offer, &params()).expect("answer");
    assert_eq!(a.media[0].port, 0);
    assert_eq!(a.media[0].mid.as_deref(), Some("a"));
    assert!(a.bundle().is_empty());

    let opus = text.replace("G722/8000", "opus/48000/2");
    assert_eq!(
        answer(&parse(&opus).expect("parses"), &params())
            .expect("ok")
            .bundle(),
        ["a"]
    );
    let passive = opus.replace("setup:actpass", "setup:passive");
    assert!(matches!(
        answer(&parse(&passive).expect("parses"), &params()),
        Err(NegotiationError::BadSetup(..))
    ));
    let no_fp = opus.replace("sha-256", "sha-1").replace(
        "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB",
        "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB",
    );
    assert_eq!(
        answer(&parse(&no_fp).expect("parses"), &params()),
        Err(NegotiationError::NoFingerprint("a".into()))
    );
    let no_mid = opus.replace("a=mid:a\r\n", "");
    assert_eq!(
        answer(&parse(&no_mid).expect("parses"), &params()),
        Err(NegotiationError::NoMid(0))
    );
    let no_mux = opus.replace("a=rtcp-mux\r\n", "");
    assert_eq!(
        answer(&parse(&no_mux).expect("parses"), &params())
            .expect("ok")
            .media[0]
            .port,
        0
    );
}

#[test]
fn bundle_only_sections_are_answered_and_port_zero_ones_rejected() {
    let text = crlf(CHROME_SCREEN);
    // max-bundle style: the second and third sections ride only on the BUNDLE transport.
    let mut parts: Vec<String> = text.split("m=video 9 ").map(str::to_owned).collect();
    assert_eq!(parts.len(), 3);
    parts[1] = format!("m=video 0 {}a=bundle-only\r\n", parts[1]);
    parts[2] = format!("m=video 0 {}", parts[2]);
    let offer_text = format!("{}{}{}", parts[0], parts[1], parts[2]);
    let offer = parse(&offer_text).expect("parses");
    assert_eq!(offer.media[1].port, 0);
    let a = answer(&offer, &params()).expect("answer");
    assert_eq!(a.bundle(), ["0", "1"]);
    assert_eq!(a.media[1].port, 3478, "bundle-only section accepted");
    assert_eq!(a.media[2].port, 0, "plain port 0 stays rejected");
    assert_eq!(a.media[2].mid.as_deref(), Some("2"));
}

fn tracks() -> Vec<OfferSection> {
    vec![
        OfferSection::Track(OutgoingTrack {
            mid: "0".into(),
            kind: MediaKind::Audio,
            stream_id: "alice".into(),
            track_id: "TR_a1".into(),
            ssrc: 1111,
            rtx_ssrc: None,
            cname: "sfu".into(),
            codecs: Vec::new(),
        }),
        OfferSection::Track(OutgoingTrack {
            mid: "1".into(),
            kind: MediaKind::Video,
            stream_id: "alice".into(),
            track_id: "TR_v1".into(),
            ssrc: 2222,
            rtx_ssrc: Some(3333),
            cname: "sfu".into(),
            codecs: Vec::new(),
        }),
        OfferSection::Closed {
            mid: "2".into(),
            kind: MediaKind::Video,
        },
    ]
}

#[test]
fn builds_subscriber_offer() {
    let o = offer(&params(), &tracks()).expect("offer");
    let o = parse(&o.to_string()).expect("offer parses");
    assert!(o.ice_lite);
    assert_eq!(o.bundle(), ["0", "1"]);
    let audio = &o.media[0];
    assert_eq!(audio.direction, Some(Direction::SendOnly));
    assert_eq!(audio.setup, Some(Setup::Actpass));
    assert_eq!(audio.payload_types().collect::<Vec<_>>(), [111]);
    assert_eq!(audio.ssrcs.iter().filter(|s| s.ssrc == 1111).count(), 2);
    let video = &o.media[1];
    assert_eq!(
        video.payload_types().collect::<Vec<_>>(),
        [96, 97, 102, 103]
    );
    assert_eq!(video.fmtp(103).and_then(|f| f.param("apt")), Some("102"));
    assert_eq!(
        video.ssrc_groups,
        [SsrcGroup {
            semantics: "FID".into(),
            ssrcs: vec![2222, 3333]
        }]
    );
    assert_eq!(
        video.msid,
        Some(Msid {
            stream: "alice".into(),
            track: Some("TR_v1".into())
        })
    );
    assert_eq!(o.media[2].port, 0);
    assert_eq!(o.sha256_fingerprint_of(video), Some(OUR_FP));
    let dup = [tracks(), tracks()].concat();
    assert_eq!(
        offer(&params(), &dup),
        Err(NegotiationError::DuplicateMid("0".into()))
    );
}

#[test]
fn subscriber_offer_lists_only_the_publishers_codecs() {
    let h264 = |mid: &str, codecs: Vec<Codec>| {
        OfferSection::Track(OutgoingTrack {
            mid: mid.into(),
            kind: MediaKind::Video,
            stream_id: "bob".into(),
            track_id: format!("TR_{mid}"),
            ssrc: 4000 + u32::from(mid.as_bytes()[0]),
            rtx_ssrc: Some(5000 + u32::from(mid.as_bytes()[0])),
            cname: "sfu".into(),
            codecs,
        })
    };
    let sections = [
        h264("0", vec![Codec::H264]),
        h264("1", vec![Codec::Vp8]),
        // A publisher that negotiated both: both, in our order.
        h264("2", vec![Codec::H264, Codec::Vp8]),
    ];
    let o = offer(&params(), &sections).expect("offer");
    let o = parse(&o.to_string()).expect("offer parses");
    let only_h264 = &o.media[0];
    assert_eq!(only_h264.payload_types().collect::<Vec<_>>(), [102, 103]);
    assert_eq!(
        only_h264
            .rtpmaps
            .iter()
            .map(|r| r.encoding.as_str())
            .collect::<Vec<_>>(),
        ["H264", "rtx"]
    );
    assert_eq!(
        only_h264.fmtp(103).and_then(|f| f.param("apt")),
        Some("102")
    );
    assert!(
        only_h264.rtcp_fb_for(96).next().is_none(),
        "no VP8 feedback"
    );
    assert_eq!(codec_of(only_h264, 102), Some(Codec::H264));
    assert_eq!(o.media[1].payload_types().collect::<Vec<_>>(), [96, 97]);
    assert_eq!(
        o.media[2].payload_types().collect::<Vec<_>>(),
        [96, 97, 102, 103],
        "both codecs, in our preference order"
    );
}

#[test]
fn checks_subscriber_answer() {
    let o = offer(&params(), &tracks()).expect("offer");
    // A browser-like answer: active, its own fingerprint, VP8 chosen.
    let mut answer_sd = o.clone();
    answer_sd.ice_lite = false;
    for m in &mut answer_sd.media {
        m.candidates.clear();
        if m.port != 0 {
            m.setup = Some(Setup::Active);
            m.fingerprints = vec![Fingerprint::sha256([1; 32])];
            m.ice_ufrag = Some("brws".into());
            m.direction = Some(Direction::RecvOnly);
        }
    }
    let text = answer_sd.to_string();
    let parsed = parse(&text).expect("parses");
    assert_eq!(
        check_answer(&o, &parsed),
        Ok(vec![Some(111), Some(96), None])
    );
    let mut passive = parsed.clone();
    passive.media[0].setup = Some(Setup::Passive);
    assert!(matches!(
        check_answer(&o, &passive),
        Err(NegotiationError::BadSetup(..))
    ));
    let mut short = parsed.clone();
    short.media.pop();
    assert!(matches!(
        check_answer(&o, &short),
        Err(NegotiationError::Mismatch(_))
    ));
    let mut wrong_pt = parsed;
    wrong_pt.media[1].formats = vec!["45".into()];
    assert!(matches!(
        check_answer(&o, &wrong_pt),
        Err(NegotiationError::Mismatch(_))
    ));
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }

    #[test]
    fn mutated_offers_never_panic(cut in 0usize..4000, byte in any::<u8>(), pos in 0usize..4000) {
        let mut text = crlf(CHROME_AV).into_bytes();
        let pos = pos % text.len();
        text[pos] = byte;
        text.truncate(cut.max(pos + 1).min(text.len()));
        let text = String::from_utf8_lossy(&text);
        if let Ok(sd) = parse(&text) {
            let _ = answer(&sd, &params());
            let _ = parse(&sd.to_string());
        }
    }
}

#[test]
fn negotiated_publisher_session() {
    let (offer, a) = answer_text(CHROME_AV, &params());
    let n = negotiated(&offer, &a).expect("negotiated");
    assert_eq!(n.remote_ice_ufrag, "Kx3m");
    assert_eq!(n.remote_ice_pwd, "Yt7nq0rF4h2pPZ8d3ZkX9vUe");
    assert_eq!(n.remote_fingerprint[0], 0x7b);
    assert_eq!(
        n.extensions,
        ExtensionIds {
            audio_level: Some(1),
            transport_cc: Some(3),
            mid: Some(4),
            rid: Some(10),
            repaired_rid: Some(11),
            abs_send_time: Some(2),
        }
    );
    assert_eq!(n.media.len(), 2, "the rejected data channel is left out");
    assert_eq!(
        n.media[0].codecs,
        [NegotiatedCodec {
            payload_type: 111,
            codec: Codec::Opus,
            rtx_payload_type: None
        }]
    );
    assert_eq!(n.media[0].remote_ssrcs, [2_890_844_526]);
    let v = &n.media[1];
    assert_eq!(v.direction, Direction::RecvOnly);
    assert_eq!(v.rids, ["q", "h", "f"]);
    assert_eq!(
        v.codecs,
        [
            NegotiatedCodec {
                payload_type: 96,
                codec: Codec::Vp8,
                rtx_payload_type: Some(97)
            },
            NegotiatedCodec {
                payload_type: 106,
                codec: Codec::H264,
                rtx_payload_type: Some(107)
            }
        ]
    );
    let (ff, fa) = answer_text(FIREFOX_AV, &params());
    let n = negotiated(&ff, &fa).expect("negotiated");
    assert_eq!(n.media[1].rids, ["h", "m", "l"]);
    assert_eq!(
        n.media[1].remote_rtx_pairs,
        [(1_137_478_591, 3_592_387_416)]
    );
    assert_eq!(n.extensions.transport_cc, Some(7));
    assert_eq!(n.extensions.audio_level, Some(1));
}

#[test]
fn negotiated_subscriber_session() {
    let o = offer(&params(), &tracks()).expect("offer");
    let mut ans = o.clone();
    for m in &mut ans.media {
        m.candidates.clear();
        if m.port != 0 {
            m.setup = Some(Setup::Active);
            m.fingerprints = vec![Fingerprint::sha256([9; 32])];
            m.ice_ufrag = Some("brws".into());
            m.ice_pwd = Some("browserPasswordBrowser1".into());
            m.direction = Some(Direction::RecvOnly);
            m.ssrcs.clear();
            m.ssrc_groups.clear();
            // The browser keeps only H.264 + its RTX.
            if m.kind == MediaKind::Video {
                m.formats = vec!["102".into(), "103".into()];
            }
        }
    }
    let n = negotiated(&ans, &o).expect("negotiated");
    assert_eq!(n.remote_fingerprint, [9; 32]);
    assert_eq!(n.remote_ice_ufrag, "brws");
    assert_eq!(n.media.len(), 2);
    assert_eq!(n.media[1].direction, Direction::SendOnly);
    assert_eq!(
        n.media[1].codecs,
        [NegotiatedCodec {
            payload_type: 102,
            codec: Codec::H264,
            rtx_payload_type: Some(103)
        }]
    );
    assert_eq!(n.extensions.audio_level, Some(1));
    assert_eq!(n.extensions.rid, None);
    let mut short = ans;
    short.media.pop();
    assert!(matches!(
        negotiated(&short, &o),
        Err(NegotiationError::Mismatch(_))
    ));
}

/// Browser check helper (run by hand, see docs/SIGNALING.md "Checking with a real
/// browser"): answers the offer in `$SDP_OFFER_FILE` into `$SDP_ANSWER_FILE`, and writes
/// a subscriber offer to `$SDP_SUB_OFFER_FILE`.
#[test]
#[ignore = "manual helper for a real-browser check"]
fn browser_check_helper() {
    let offer_path = std::env::var("SDP_OFFER_FILE").expect("SDP_OFFER_FILE");
    let answer_path = std::env::var("SDP_ANSWER_FILE").expect("SDP_ANSWER_FILE");
    let text = std::fs::read_to_string(offer_path).expect("offer file");
    let o = parse(&text).expect("browser offer parses");
    let mut p = params();
    p.candidates[0].addr = "127.0.0.1:3478".parse().expect("addr");
    p.candidates[1].addr = "127.0.0.1:3479".parse().expect("addr");
    p.data_channels = std::env::var("SDP_DATA_CHANNELS").is_ok();
    let a = answer(&o, &p).expect("answerable");
    std::fs::write(answer_path, a.to_string()).expect("write answer");
    if let Ok(sub) = std::env::var("SDP_SUB_OFFER_FILE") {
        let s = offer(&p, &tracks()).expect("offer");
        std::fs::write(sub, s.to_string()).expect("write offer");
    }
}

/// Captured from Chromium 156 (headless) by the browser check: its offer with audio,
/// 3-layer simulcast video, a second video and a data channel; and its answer to our
/// subscriber offer `offer(params(), tracks())`.
const CHROMIUM_REAL_OFFER: &str = include_str!("fixtures/chromium156_real_offer.sdp");
const CHROMIUM_REAL_SUB_ANSWER: &str =
    include_str!("fixtures/chromium156_real_subscriber_answer.sdp");

#[test]
fn real_chromium_offer_and_answer() {
    let (offer_sd, a) = answer_text(CHROMIUM_REAL_OFFER, &params());
    assert_eq!(offer_sd.bundle(), ["0", "1", "2", "3"]);
    assert_eq!(a.bundle(), ["0", "1", "2"]);
    assert_eq!(a.media[3].port, 0, "data channel rejected by default");
    let rids: Vec<_> = a.media[1].rids.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(rids, ["q", "h", "f"]);
    let n = negotiated(&offer_sd, &a).expect("negotiated");
    assert_eq!(n.media[1].codecs[0].codec, Codec::Vp8);
    assert!(n.media[1].codecs.iter().any(|c| c.codec == Codec::H264));
    assert!(
        n.media[1]
            .codecs
            .iter()
            .all(|c| c.rtx_payload_type.is_some())
    );

    let ours = offer(&params(), &tracks()).expect("offer");
    let theirs = parse(CHROMIUM_REAL_SUB_ANSWER).expect("Chromium's answer parses");
    assert_eq!(
        check_answer(&ours, &theirs),
        Ok(vec![Some(111), Some(96), None])
    );
    let n = negotiated(&theirs, &ours).expect("negotiated");
    assert_eq!(n.media.len(), 2);
    assert_eq!(n.media[1].codecs[0].rtx_payload_type, Some(97));
}

/// Captured from Firefox ESR 153 (headless, `tests/tests/sfu_firefox.rs` with
/// `SFU_FIREFOX_CAPTURE`): its publisher offer (audio + 3-layer simulcast video, the video
/// section `bundle-only` with port 0, rid/repaired-rid extensions at ids 9/10, a=ssrc
/// lines for every layer), our subscriber offer as Firefox re-wrote it, and its answer.
const FIREFOX_REAL_OFFER: &str = include_str!("fixtures/firefox153_real_offer.sdp");
const FIREFOX_REAL_SUB_OFFER: &str = include_str!("fixtures/firefox153_real_subscriber_offer.sdp");
const FIREFOX_REAL_SUB_ANSWER: &str =
    include_str!("fixtures/firefox153_real_subscriber_answer.sdp");

#[test]
fn real_firefox_offer_and_answer() {
    let (offer_sd, a) = answer_text(FIREFOX_REAL_OFFER, &params());
    assert_eq!(offer_sd.bundle(), ["0", "1"]);
    assert_eq!(a.bundle(), ["0", "1"]);
    assert!(
        a.media.iter().all(|m| m.port != 0),
        "both sections accepted"
    );
    // Firefox lists VP8, VP9, AV1, ulpfec, red: we keep VP8 and its RTX only.
    assert_eq!(a.media[1].formats, ["120", "124"]);
    assert_eq!(a.media[0].formats, ["109"]);
    let rids: Vec<_> = a.media[1].rids.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(rids, ["q", "h", "f"]);
    let sim = a.media[1].simulcast.as_ref().expect("simulcast answered");
    assert!(sim.send.is_empty());
    assert_eq!(sim.recv.len(), 3);
    let n = negotiated(&offer_sd, &a).expect("negotiated");
    assert_eq!(n.media.len(), 2, "the bundle-only video section counts");
    assert_eq!(n.extensions.rid, Some(9));
    assert_eq!(n.extensions.repaired_rid, Some(10));
    assert_eq!(n.extensions.mid, Some(3));
    assert_eq!(n.extensions.transport_cc, Some(7));
    assert_eq!(n.extensions.audio_level, Some(1));
    let video = &n.media[1];
    assert_eq!(video.rids, ["q", "h", "f"]);
    assert_eq!(video.codecs.len(), 1);
    assert_eq!(video.codecs[0].codec, Codec::Vp8);
    assert_eq!(video.codecs[0].payload_type, 120);
    assert_eq!(video.codecs[0].rtx_payload_type, Some(124));
    assert_eq!(video.remote_ssrcs.len(), 6, "three layers, each with RTX");
    assert_eq!(
        video.remote_rtx_pairs,
        [
            (1_402_151_917, 3_071_748_216),
            (382_585_001, 3_788_698_650),
            (1_655_187_125, 980_755_463)
        ]
    );

    // Our subscriber offer (as Firefox re-wrote it) and Firefox's answer: Opus, and VP8
    // (Firefox without the OpenH264 plugin drops H.264) with its RTX.
    let ours = parse(FIREFOX_REAL_SUB_OFFER).expect("the offer parses");
    let theirs = parse(FIREFOX_REAL_SUB_ANSWER).expect("Firefox's answer parses");
    assert_eq!(check_answer(&ours, &theirs), Ok(vec![Some(111), Some(96)]));
    let n = negotiated(&theirs, &ours).expect("negotiated");
    assert_eq!(n.media.len(), 2);
    assert_eq!(n.media[1].codecs.len(), 1);
    assert_eq!(n.media[1].codecs[0].codec, Codec::Vp8);
    assert_eq!(n.media[1].codecs[0].rtx_payload_type, Some(97));
    assert_eq!(n.extensions.transport_cc, Some(3));
    assert_eq!(n.extensions.mid, Some(4));
}

/// The SFU's candidate lines: a passive TCP twin of each UDP candidate, with RFC 6544
/// §4.2's priority (host type preference 126; local preference 2^13 * 4 (passive) +
/// 8191) below UDP's (RFC 8445 local preference 65535), each transport numbered on its
/// own, foundations distinct per transport.
#[test]
fn tcp_passive_candidates_have_rfc_6544_priorities() {
    let addr = |a: &str| -> SocketAddr { a.parse().expect("addr") };
    let p = LocalParams::new(
        "sfuU",
        "sfuPasswordSfuPassword24",
        OUR_FP,
        vec![
            LocalCandidate {
                addr: addr("192.0.2.7:4000"),
                transport: CandidateTransport::Udp,
            },
            LocalCandidate {
                addr: addr("198.51.100.2:4000"),
                transport: CandidateTransport::Udp,
            },
            LocalCandidate {
                addr: addr("192.0.2.7:4000"),
                transport: CandidateTransport::TcpPassive,
            },
            LocalCandidate {
                addr: addr("198.51.100.2:4000"),
                transport: CandidateTransport::TcpPassive,
            },
        ],
    );
    let lines: Vec<String> = p
        .candidate_lines()
        .iter()
        .map(ToString::to_string)
        .collect();
    let udp0 = (126u32 << 24) + (65_535 << 8) + 255;
    let udp1 = (126u32 << 24) + (65_534 << 8) + 255;
    let tcp0 = (126u32 << 24) + (((4 << 13) + 8191) << 8) + 255;
    let tcp1 = (126u32 << 24) + (((4 << 13) + 8190) << 8) + 255;
    assert_eq!((udp0, tcp0), (2_130_706_431, 2_124_414_975));
    assert_eq!(
        lines,
        [
            format!("candidate:1 1 udp {udp0} 192.0.2.7 4000 typ host"),
            format!("candidate:2 1 udp {udp1} 198.51.100.2 4000 typ host"),
            format!("candidate:1001 1 tcp {tcp0} 192.0.2.7 4000 typ host tcptype passive"),
            format!("candidate:1002 1 tcp {tcp1} 198.51.100.2 4000 typ host tcptype passive"),
        ]
    );
    // Browsers read them back as written.
    for line in &lines {
        let c = parse_candidate_line(line).expect("parses");
        assert_eq!(c.to_string(), *line);
    }
}
