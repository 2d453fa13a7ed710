//! The SFU engine against hand-played browsers, without sockets: one publisher (Opus and
//! VP8) and two subscribers connect over ICE-lite + DTLS-SRTP through
//! `Engine::handle_datagram`; the test checks what the subscribers decrypt (their SSRCs
//! and payload types, continuous sequence numbers, the publisher's payload), that video
//! waits for a keyframe and asks the publisher for one (PLI), that a subscriber's NACK is
//! answered with RTX, and that steady-state forwarding allocates nothing.
//!
//! Its own binary: the counting `#[global_allocator]` can exist only once per binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use relay::dtls::{Certificate, DtlsEndpoint, DtlsEvent, Role};
use relay::ice::Transport as IceTransport;
use relay::rtp::rtcp::{RtcpPacket, compound, write_nack};
use relay::rtp::{ExtMap, RtpView};
use relay::sdp::Codec;
use relay::sfu::control::{
    Command, InboundTrack, OutboundTrack, TrackCodec, TransportRole, TransportSpec,
};
use relay::sfu::engine::{Arrival, Engine, EngineConfig, Transmit};
use relay::srtp::{Profile, SrtpSession, session_keys};
use relay::stun::{Attribute, MessageBuilder, MessageType, TransactionId};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

const SFU: &str = "203.0.113.5:3479";
const PUB_AUDIO_SSRC: u32 = 0x1111_0001;
const PUB_VIDEO_SSRC: u32 = 0x1111_0002;

/// Datagrams the engine sent, by destination.
#[derive(Default)]
struct Sent(HashMap<SocketAddr, Vec<Vec<u8>>>);

impl Transmit for Sent {
    fn send(&mut self, data: &[u8], dest: SocketAddr) {
        self.0.entry(dest).or_default().push(data.to_vec());
    }
}

/// Drops what the engine sends (for the allocation count).
struct Discard(u64);

impl Transmit for Discard {
    fn send(&mut self, _data: &[u8], _dest: SocketAddr) {
        self.0 += 1;
    }
}

/// One browser peer connection: its address, ICE credentials, DTLS client, SRTP.
struct Browser {
    addr: SocketAddr,
    /// The ICE transport its datagrams arrive on.
    via: IceTransport,
    sfu_ufrag: String,
    sfu_pwd: String,
    cert: Certificate,
    dtls: Option<DtlsEndpoint>,
    tx: Option<SrtpSession>,
    rx: Option<SrtpSession>,
}

impl Browser {
    fn new(addr: &str, sfu_ufrag: &str) -> Browser {
        Browser {
            addr: addr.parse().expect("addr"),
            via: IceTransport::Udp,
            sfu_ufrag: sfu_ufrag.into(),
            sfu_pwd: format!("{sfu_ufrag}PasswordPassword1234"),
            cert: Certificate::generate().expect("certificate"),
            dtls: None,
            tx: None,
            rx: None,
        }
    }

    fn spec(&self, id: u32, role: TransportRole) -> TransportSpec {
        TransportSpec {
            id,
            room: 1,
            participant: id,
            role,
            local_ufrag: self.sfu_ufrag.clone(),
            local_pwd: self.sfu_pwd.clone(),
            remote_ufrag: "brws".into(),
            remote_pwd: "browserPasswordBrowser34".into(),
            remote_fingerprint: self.cert.fingerprint(),
            extensions: ExtMap::default(),
        }
    }

    fn arrival(&self) -> Arrival {
        Arrival {
            source: self.addr,
            local: SFU.parse().expect("addr"),
            via: self.via,
            now: Instant::now(),
        }
    }

    /// Nominates the pair and runs the DTLS handshake through the engine.
    fn connect(&mut self, engine: &mut Engine, sfu_fp: [u8; 32]) {
        let mut buf = [0u8; 2048];
        let username = format!("{}:brws", self.sfu_ufrag);
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::BINDING_REQUEST,
            TransactionId([7; 12]),
        )
        .expect("fits");
        b.add(&Attribute::Username(username.as_bytes()))
            .expect("fits");
        b.add(&Attribute::IceControlling(42)).expect("fits");
        b.add(&Attribute::Priority(1_845_501_695)).expect("fits");
        b.add(&Attribute::UseCandidate).expect("fits");
        b.add_message_integrity(self.sfu_pwd.as_bytes())
            .expect("fits");
        b.add_fingerprint().expect("fits");
        let n = b.finish();
        let mut sent = Sent::default();
        engine.handle_datagram(&mut buf, n, self.arrival(), &mut sent);
        assert_eq!(
            sent.0.get(&self.addr).map(Vec::len),
            Some(1),
            "a STUN answer"
        );
        let mut dtls = DtlsEndpoint::with_srtp_profiles(
            &self.cert,
            Role::Client,
            sfu_fp,
            "SRTP_AEAD_AES_128_GCM",
        )
        .expect("client");
        for _ in 0..32 {
            let mut moved = 0;
            while let Some(n) = dtls.poll_transmit(&mut buf) {
                moved += 1;
                let mut sent = Sent::default();
                engine.handle_datagram(&mut buf, n, self.arrival(), &mut sent);
                for d in sent.0.remove(&self.addr).unwrap_or_default() {
                    moved += 1;
                    dtls.handle_datagram(&d, Instant::now());
                }
            }
            if moved == 0 {
                break;
            }
        }
        while let Some(e) = dtls.poll_event() {
            if let DtlsEvent::Connected {
                profile,
                keying_material,
                ..
            } = e
            {
                let profile = Profile::from_id(profile).expect("profile");
                let (tx, rx) =
                    session_keys(profile, keying_material.as_bytes(), true).expect("keys");
                self.tx = Some(SrtpSession::new(&tx).expect("tx"));
                self.rx = Some(SrtpSession::new(&rx).expect("rx"));
            }
        }
        assert!(self.tx.is_some(), "DTLS-SRTP completed");
        self.dtls = Some(dtls);
    }

    /// Sends one plain RTP packet (protected) to the engine.
    fn send_rtp(&mut self, engine: &mut Engine, plain: &[u8], tx: &mut dyn Transmit) {
        self.send(engine, plain, false, tx);
    }

    fn send_rtcp(&mut self, engine: &mut Engine, plain: &[u8], tx: &mut dyn Transmit) {
        self.send(engine, plain, true, tx);
    }

    fn send(&mut self, engine: &mut Engine, plain: &[u8], rtcp: bool, tx: &mut dyn Transmit) {
        let mut buf = [0u8; 1600];
        buf[..plain.len()].copy_from_slice(plain);
        let srtp = self.tx.as_mut().expect("keys");
        let n = if rtcp {
            srtp.protect_rtcp(&mut buf, plain.len())
        } else {
            srtp.protect_rtp(&mut buf, plain.len())
        }
        .expect("protect");
        engine.handle_datagram(&mut buf, n, self.arrival(), tx);
    }

    /// Decrypts what the engine sent this browser: (RTP packets, RTCP compounds).
    fn receive(&mut self, sent: &mut Sent) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut rtp, mut rtcp) = (Vec::new(), Vec::new());
        for mut d in sent.0.remove(&self.addr).unwrap_or_default() {
            let rx = self.rx.as_mut().expect("keys");
            if (64..=95).contains(&(d[1] & 0x7F)) {
                let n = rx.unprotect_rtcp(&mut d).expect("SRTCP from the SFU");
                rtcp.push(d[..n].to_vec());
            } else {
                let n = rx.unprotect_rtp(&mut d).expect("SRTP from the SFU");
                rtp.push(d[..n].to_vec());
            }
        }
        (rtp, rtcp)
    }
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A VP8 payload: descriptor with a 15-bit picture id, then the frame header byte
/// (P bit 0 = keyframe).
fn vp8(picture_id: u16, keyframe: bool, start: bool) -> Vec<u8> {
    let mut p = vec![
        0x80 | if start { 0x10 } else { 0 },
        0x80,
        0x80 | (picture_id >> 8) as u8,
        picture_id as u8,
    ];
    p.push(if keyframe { 0x00 } else { 0x01 });
    p.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
    p.extend(std::iter::repeat_n(0x55, 600));
    p
}

struct Setup {
    engine: Engine,
    publisher: Browser,
    subs: Vec<Browser>,
    /// The SFU's certificate fingerprint (for connecting more browsers).
    sfu_fp: [u8; 32],
}

fn setup() -> Setup {
    let cert = Arc::new(Certificate::generate().expect("certificate"));
    let sfu_fp = cert.fingerprint();
    let mut engine = Engine::new(EngineConfig::default(), cert, Instant::now());
    let mut publisher = Browser::new("198.51.100.1:50000", "pubA");
    let mut subs = vec![
        Browser::new("198.51.100.2:50000", "subB"),
        Browser::new("198.51.100.3:50000", "subC"),
    ];
    let now = Instant::now();
    engine.handle_command(
        Command::AddTransport(publisher.spec(1, TransportRole::Publisher)),
        now,
    );
    for (i, s) in subs.iter().enumerate() {
        engine.handle_command(
            Command::AddTransport(s.spec(2 + i as u32, TransportRole::Subscriber)),
            now,
        );
    }
    publisher.connect(&mut engine, sfu_fp);
    for s in &mut subs {
        s.connect(&mut engine, sfu_fp);
    }
    let track = |id, video: bool, ssrc| {
        Command::Publish(InboundTrack {
            id,
            transport: 1,
            room: 1,
            participant: 1,
            video,
            screen: false,
            mid: if video { "1" } else { "0" }.into(),
            codecs: vec![if video {
                TrackCodec {
                    codec: Codec::Vp8,
                    payload_type: 96,
                    rtx_payload_type: Some(97),
                }
            } else {
                TrackCodec {
                    codec: Codec::Opus,
                    payload_type: 111,
                    rtx_payload_type: None,
                }
            }],
            rids: Vec::new(),
            ssrcs: vec![ssrc],
            rtx_pairs: Vec::new(),
        })
    };
    engine.handle_command(track(10, false, PUB_AUDIO_SSRC), now);
    engine.handle_command(track(11, true, PUB_VIDEO_SSRC), now);
    for i in 0..2u32 {
        let transport = 2 + i;
        engine.handle_command(
            Command::Subscribe(OutboundTrack {
                transport,
                track: 10,
                mid: "0".into(),
                ssrc: 0x2000 + i,
                rtx_ssrc: None,
                codecs: vec![TrackCodec {
                    codec: Codec::Opus,
                    payload_type: 109,
                    rtx_payload_type: None,
                }],
            }),
            now,
        );
        engine.handle_command(
            Command::Subscribe(OutboundTrack {
                transport,
                track: 11,
                mid: "1".into(),
                ssrc: 0x3000 + i,
                rtx_ssrc: Some(0x4000 + i),
                codecs: vec![TrackCodec {
                    codec: Codec::Vp8,
                    payload_type: 100,
                    rtx_payload_type: Some(101),
                }],
            }),
            now,
        );
    }
    Setup {
        engine,
        publisher,
        subs,
        sfu_fp,
    }
}

#[test]
fn forwards_audio_and_video_with_keyframe_request_and_rtx() {
    let Setup {
        mut engine,
        mut publisher,
        mut subs,
        ..
    } = setup();
    let mut sent = Sent::default();
    // Audio: forwarded at once with the subscribers' SSRC and payload type.
    for seq in 0..5u16 {
        let p = rtp(
            111,
            1000 + seq,
            960 * u32::from(seq),
            PUB_AUDIO_SSRC,
            b"opus-frame",
        );
        publisher.send_rtp(&mut engine, &p, &mut sent);
    }
    // Video before any keyframe: nothing forwarded, a PLI goes to the publisher.
    publisher.send_rtp(
        &mut engine,
        &rtp(96, 500, 9000, PUB_VIDEO_SSRC, &vp8(7, false, true)),
        &mut sent,
    );
    let (_, rtcp) = publisher.receive(&mut sent);
    let plis = rtcp
        .iter()
        .flat_map(|c| compound(c).filter_map(Result::ok).collect::<Vec<_>>())
        .filter(|p| matches!(p, RtcpPacket::Pli(pli) if pli.media_ssrc() == PUB_VIDEO_SSRC))
        .count();
    assert_eq!(
        plis, 1,
        "one (rate-limited) PLI for two waiting subscribers"
    );
    // The keyframe, then deltas.
    for (k, seq) in (501..511u16).enumerate() {
        let payload = vp8(8 + k as u16, k == 0, true);
        publisher.send_rtp(
            &mut engine,
            &rtp(96, seq, 12_000 + 3000 * k as u32, PUB_VIDEO_SSRC, &payload),
            &mut sent,
        );
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        let (packets, _) = sub.receive(&mut sent);
        let audio: Vec<_> = packets
            .iter()
            .filter(|p| RtpView::parse(p).expect("rtp").ssrc() == 0x2000 + i as u32)
            .collect();
        assert_eq!(audio.len(), 5, "subscriber {i} gets every audio packet");
        let video: Vec<RtpView<'_>> = packets
            .iter()
            .map(|p| RtpView::parse(p).expect("rtp"))
            .filter(|v| v.ssrc() == 0x3000 + i as u32)
            .collect();
        assert_eq!(
            video.len(),
            10,
            "subscriber {i} gets the video from the keyframe on"
        );
        for (k, v) in video.iter().enumerate() {
            assert_eq!(v.payload_type(), 100, "the subscriber's payload type");
            assert_eq!(
                v.sequence(),
                video[0].sequence().wrapping_add(k as u16),
                "continuous"
            );
            assert_eq!(
                &v.payload()[4..],
                &vp8(0, k == 0, true)[4..],
                "the publisher's frame"
            );
        }
        for (k, a) in audio.iter().enumerate() {
            let v = RtpView::parse(a).expect("rtp");
            assert_eq!(v.payload_type(), 109);
            assert_eq!(v.payload(), b"opus-frame");
            assert_eq!(
                v.sequence(),
                RtpView::parse(audio[0])
                    .expect("rtp")
                    .sequence()
                    .wrapping_add(k as u16)
            );
        }
    }
    // Subscriber 0 NACKs its third video packet: RTX on its RTX SSRC and payload type,
    // with the original sequence number in front of the payload (RFC 4588).
    let mut sent = Sent::default();
    publisher.send_rtp(
        &mut engine,
        &rtp(96, 511, 50_000, PUB_VIDEO_SSRC, &vp8(30, false, true)),
        &mut sent,
    );
    let (packets, _) = subs[0].receive(&mut sent);
    let last = RtpView::parse(&packets[0]).expect("rtp").sequence();
    let lost = last.wrapping_sub(8);
    let mut nack = [0u8; 64];
    let n = write_nack(&mut nack, 0xABCD, 0x3000, &[lost]).expect("nack");
    let mut sent = Sent::default();
    subs[0].send_rtcp(&mut engine, &nack[..n], &mut sent);
    let (rtx, _) = subs[0].receive(&mut sent);
    assert_eq!(rtx.len(), 1, "one retransmission");
    let v = RtpView::parse(&rtx[0]).expect("rtp");
    assert_eq!((v.ssrc(), v.payload_type()), (0x4000, 101));
    assert_eq!(&v.payload()[..2], &lost.to_be_bytes(), "OSN");
    assert_eq!(engine.stats().rtx_out, 1);
}

#[test]
fn steady_state_forwarding_does_not_allocate() {
    let Setup {
        mut engine,
        mut publisher,
        mut subs,
        ..
    } = setup();
    let mut sent = Sent::default();
    publisher.send_rtp(
        &mut engine,
        &rtp(96, 1, 0, PUB_VIDEO_SSRC, &vp8(1, true, true)),
        &mut sent,
    );
    for s in &mut subs {
        s.receive(&mut sent);
    }
    // Pre-encrypted packets, so the count covers only the engine.
    let mut datagrams = Vec::new();
    for k in 0..400u16 {
        let (p, len) = if k % 3 == 0 {
            let p = rtp(
                111,
                100 + k,
                960 * u32::from(k),
                PUB_AUDIO_SSRC,
                b"opus-frame",
            );
            (p.clone(), p.len())
        } else {
            let p = rtp(
                96,
                2 + k,
                3000 * u32::from(k),
                PUB_VIDEO_SSRC,
                &vp8(2 + k, false, true),
            );
            (p.clone(), p.len())
        };
        let mut buf = vec![0u8; 1600];
        buf[..len].copy_from_slice(&p);
        let n = publisher
            .tx
            .as_mut()
            .expect("keys")
            .protect_rtp(&mut buf, len)
            .expect("protect");
        buf.truncate(n);
        datagrams.push(buf);
    }
    let at = publisher.arrival();
    let mut discard = Discard(0);
    let mut scratch = vec![0u8; 1600];
    let allocs = allocations_during(|| {
        for d in &datagrams {
            scratch[..d.len()].copy_from_slice(d);
            engine.handle_datagram(&mut scratch, d.len(), at, &mut discard);
        }
    });
    assert_eq!(discard.0, 800, "every packet forwarded to both subscribers");
    assert_eq!(allocs, 0, "forwarding allocated");
}

#[test]
fn a_tcp_peer_at_a_udp_peers_address_is_a_different_peer() {
    let Setup {
        mut engine,
        mut publisher,
        mut subs,
        sfu_fp,
    } = setup();
    // Another participant whose TCP connection has the publisher's UDP address and port
    // (a NAT numbers TCP and UDP independently).
    let mut tcp_peer = Browser::new(&publisher.addr.to_string(), "tcpT");
    tcp_peer.via = IceTransport::Tcp;
    engine.handle_command(
        Command::AddTransport(tcp_peer.spec(4, TransportRole::Subscriber)),
        Instant::now(),
    );
    tcp_peer.connect(&mut engine, sfu_fp);
    // The publisher's media still reaches the subscribers: its UDP datagrams are not
    // taken for the TCP participant's.
    let mut sent = Sent::default();
    publisher.send_rtp(
        &mut engine,
        &rtp(111, 900, 48_000, PUB_AUDIO_SSRC, &[0xAB; 40]),
        &mut sent,
    );
    let (audio, _) = subs[0].receive(&mut sent);
    assert_eq!(
        audio.len(),
        1,
        "forwarded to the subscriber: {:?}",
        engine.stats()
    );
}

#[test]
fn packets_for_a_receiver_without_the_codec_are_counted() {
    let Setup {
        mut engine,
        mut publisher,
        mut subs,
        ..
    } = setup();
    let now = Instant::now();
    // Subscriber 0 takes the VP8 track again, but its answer had only H.264.
    engine.handle_command(
        Command::Unsubscribe {
            transport: 2,
            track: 11,
        },
        now,
    );
    engine.handle_command(
        Command::Subscribe(OutboundTrack {
            transport: 2,
            track: 11,
            mid: "1".into(),
            ssrc: 0x3000,
            rtx_ssrc: Some(0x4000),
            codecs: vec![TrackCodec {
                codec: Codec::H264,
                payload_type: 102,
                rtx_payload_type: Some(103),
            }],
        }),
        now,
    );
    assert_eq!(engine.stats().bad_commands, 0);
    let mut sent = Sent::default();
    for (k, seq) in (600..603u16).enumerate() {
        let payload = vp8(40 + k as u16, k == 0, true);
        publisher.send_rtp(
            &mut engine,
            &rtp(96, seq, 3000 * k as u32, PUB_VIDEO_SSRC, &payload),
            &mut sent,
        );
    }
    let (to_h264, _) = subs[0].receive(&mut sent);
    assert!(to_h264.is_empty(), "nothing the receiver cannot decode");
    let (to_vp8, _) = subs[1].receive(&mut sent);
    assert_eq!(to_vp8.len(), 3, "the VP8 receiver still gets every packet");
    assert_eq!(engine.stats().no_codec_drops, 3);
    assert_eq!(engine.stats().rtp_out, 3);
}
