//! The agent against checks built by hand the way a browser builds them.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;
use crate::stun::attr::{self, Attribute};
use crate::stun::integrity::{verify_fingerprint, verify_message_integrity};
use crate::stun::{Class, Message, MessageBuilder, MessageType, TransactionId};

const LOCAL_UFRAG: &str = "sfuU";
const LOCAL_PWD: &str = "sfuPasswordSfuPassword12";
const REMOTE_UFRAG: &str = "brws";
const REMOTE_PWD: &str = "browserPasswordBrowser34";
const SEC: u64 = 1_000_000;

fn local_v4() -> SocketAddr {
    "203.0.113.5:3478".parse().expect("addr")
}

fn browser_v4() -> SocketAddr {
    "198.51.100.7:54321".parse().expect("addr")
}

fn agent() -> IceLite {
    let mut a = IceLite::new(LOCAL_UFRAG, LOCAL_PWD).expect("valid credentials");
    a.set_remote(REMOTE_UFRAG, REMOTE_PWD)
        .expect("valid credentials");
    a
}

/// What goes into a hand-built check.
struct Check<'a> {
    username: Option<&'a [u8]>,
    password: Option<&'a str>,
    priority: Option<u32>,
    controlling: bool,
    controlled: bool,
    use_candidate: bool,
    fingerprint: bool,
    extra: Option<Attribute<'a>>,
    tid: [u8; 12],
}

impl Default for Check<'_> {
    fn default() -> Self {
        Check {
            username: Some(b"sfuU:brws"),
            password: Some(LOCAL_PWD),
            priority: Some(1_845_501_695),
            controlling: true,
            controlled: false,
            use_candidate: false,
            fingerprint: true,
            extra: None,
            tid: [7; 12],
        }
    }
}

impl Check<'_> {
    /// USERNAME, (extra), ICE-CONTROLLING/CONTROLLED, PRIORITY, USE-CANDIDATE,
    /// MESSAGE-INTEGRITY, FINGERPRINT: Chromium's order.
    fn build(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::BINDING_REQUEST,
            TransactionId(self.tid),
        )
        .expect("fits");
        if let Some(u) = self.username {
            b.add(&Attribute::Username(u)).expect("fits");
        }
        if let Some(e) = &self.extra {
            b.add(e).expect("fits");
        }
        if self.controlling {
            b.add(&Attribute::IceControlling(0x0123_4567_89AB_CDEF))
                .expect("fits");
        }
        if self.controlled {
            b.add(&Attribute::IceControlled(0x0123_4567_89AB_CDEF))
                .expect("fits");
        }
        if let Some(p) = self.priority {
            b.add(&Attribute::Priority(p)).expect("fits");
        }
        if self.use_candidate {
            b.add(&Attribute::UseCandidate).expect("fits");
        }
        if let Some(pwd) = self.password {
            b.add_message_integrity(pwd.as_bytes()).expect("fits");
        }
        if self.fingerprint {
            b.add_fingerprint().expect("fits");
        }
        let n = b.finish();
        buf.truncate(n);
        buf
    }
}

fn check(
    agent: &mut IceLite,
    req: &[u8],
    source: SocketAddr,
    transport: Transport,
    now: u64,
    out: &mut [u8],
) -> Result<Reply, IceError> {
    agent.handle_stun(req, source, local_v4(), transport, now, out)
}

fn events(agent: &mut IceLite) -> Vec<IceEvent> {
    std::iter::from_fn(|| agent.poll_event()).collect()
}

/// Parses an answer and checks what every answer must carry.
fn parse_answer<'a>(req: &[u8], answer: &'a [u8]) -> Message<'a> {
    let msg = Message::parse(answer).expect("the answer is STUN");
    verify_fingerprint(&msg).expect("the answer carries a correct FINGERPRINT");
    let req = Message::parse(req).expect("request");
    assert_eq!(msg.transaction_id(), req.transaction_id());
    msg
}

fn error_code(msg: &Message<'_>) -> u16 {
    match msg.get(attr::ERROR_CODE).expect("decodes") {
        Some(Attribute::ErrorCode(e)) => e.code,
        other => panic!("no ERROR-CODE: {other:?}"),
    }
}

#[test]
fn browser_check_gets_a_signed_success_with_the_mapped_address_v4_and_v6() {
    for (source, local) in [
        (browser_v4(), local_v4()),
        (
            "[2001:db8::7]:61000".parse().expect("addr"),
            "[2001:db8::5]:3478".parse().expect("addr"),
        ),
    ] {
        let mut a = agent();
        let req = Check {
            use_candidate: true,
            ..Check::default()
        }
        .build();
        let mut out = [0u8; 548];
        let reply = a
            .handle_stun(&req, source, local, Transport::Udp, 0, &mut out)
            .expect("answered");
        let pair = Pair {
            local,
            remote: source,
            transport: Transport::Udp,
        };
        assert_eq!(
            reply,
            Reply::Success {
                len: reply.len(),
                pair,
                nominated: true
            }
        );
        let msg = parse_answer(&req, &out[..reply.len()]);
        assert_eq!(msg.message_type(), MessageType::BINDING_SUCCESS);
        verify_message_integrity(&msg, LOCAL_PWD.as_bytes()).expect("signed with our password");
        assert!(verify_message_integrity(&msg, REMOTE_PWD.as_bytes()).is_err());
        assert_eq!(
            msg.get(attr::XOR_MAPPED_ADDRESS).expect("decodes"),
            Some(Attribute::XorMappedAddress(source))
        );
        // Exactly XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT.
        let types: Vec<u16> = msg
            .attributes()
            .map(|a| a.expect("well-formed").attr_type)
            .collect();
        assert_eq!(
            types,
            vec![
                attr::XOR_MAPPED_ADDRESS,
                attr::MESSAGE_INTEGRITY,
                attr::FINGERPRINT
            ]
        );
        assert_eq!(a.selected(), Some(pair));
        assert_eq!(events(&mut a), vec![IceEvent::Connected(pair)]);
        assert!(a.may_send(&pair, 0));
    }
}

#[test]
fn dual_stack_mapped_source_is_answered_and_paired_as_ipv4() {
    let mut a = agent();
    let req = Check::default().build();
    let mut out = [0u8; 548];
    let mapped: SocketAddr = "[::ffff:198.51.100.7]:54321".parse().expect("addr");
    let reply = check(&mut a, &req, mapped, Transport::Udp, 0, &mut out).expect("answered");
    let Reply::Success { pair, .. } = reply else {
        panic!("not a success: {reply:?}");
    };
    assert_eq!(pair.remote, browser_v4());
    let msg = parse_answer(&req, &out[..reply.len()]);
    assert_eq!(
        msg.get(attr::XOR_MAPPED_ADDRESS).expect("decodes"),
        Some(Attribute::XorMappedAddress(browser_v4()))
    );
}

#[test]
fn wrong_password_or_username_gets_401_and_no_pair() {
    let cases = [
        Check {
            password: Some("notTheRightPasswordAtAll"),
            ..Check::default()
        },
        Check {
            username: Some(b"other:brws"),
            ..Check::default()
        },
        Check {
            username: Some(b"sfuU:other"),
            ..Check::default()
        },
        Check {
            username: Some(b"sfuUbrws"),
            ..Check::default()
        },
        Check {
            username: Some(b"sfu:brws"),
            ..Check::default()
        },
    ];
    for c in cases {
        let mut a = agent();
        let req = Check {
            use_candidate: true,
            ..c
        }
        .build();
        let mut out = [0u8; 548];
        let reply =
            check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
        assert!(matches!(reply, Reply::Error { code: 401, .. }), "{reply:?}");
        let msg = parse_answer(&req, &out[..reply.len()]);
        assert_eq!(msg.class(), Class::ErrorResponse);
        assert_eq!(error_code(&msg), 401);
        assert!(
            msg.layout().expect("ok").integrity.is_none(),
            "401 must not be signed"
        );
        assert_eq!(a.selected(), None);
        assert!(events(&mut a).is_empty());
        let pair = Pair {
            local: local_v4(),
            remote: browser_v4(),
            transport: Transport::Udp,
        };
        assert!(!a.may_send(&pair, 0));
    }
}

#[test]
fn unsigned_check_gets_400() {
    for c in [
        Check {
            password: None,
            ..Check::default()
        },
        Check {
            username: None,
            ..Check::default()
        },
    ] {
        let mut a = agent();
        let req = c.build();
        let mut out = [0u8; 548];
        let reply =
            check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
        assert!(matches!(reply, Reply::Error { code: 400, .. }), "{reply:?}");
        assert_eq!(error_code(&parse_answer(&req, &out[..reply.len()])), 400);
        assert_eq!(a.selected(), None);
    }
}

#[test]
fn checks_before_the_remote_ufrag_are_answered_with_our_password_alone() {
    let mut a = IceLite::new(LOCAL_UFRAG, LOCAL_PWD).expect("valid");
    let mut out = [0u8; 548];
    let req = Check {
        username: Some(b"sfuU:anything"),
        ..Check::default()
    }
    .build();
    let reply = check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
    assert!(matches!(reply, Reply::Success { .. }), "{reply:?}");
    // An empty remote part is never a valid username.
    let req = Check {
        username: Some(b"sfuU:"),
        ..Check::default()
    }
    .build();
    let reply = check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
    assert!(matches!(reply, Reply::Error { code: 401, .. }), "{reply:?}");
    // Once the answer arrives, the remote part must match it.
    a.set_remote(REMOTE_UFRAG, REMOTE_PWD).expect("valid");
    let req = Check {
        username: Some(b"sfuU:anything"),
        ..Check::default()
    }
    .build();
    let reply = check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
    assert!(matches!(reply, Reply::Error { code: 401, .. }), "{reply:?}");
}

#[test]
fn missing_or_wrong_fingerprint_is_dropped() {
    let mut a = agent();
    let mut out = [0u8; 548];
    let req = Check {
        fingerprint: false,
        use_candidate: true,
        ..Check::default()
    }
    .build();
    assert_eq!(
        check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out),
        Err(IceError::MissingFingerprint)
    );
    let mut req = Check {
        use_candidate: true,
        ..Check::default()
    }
    .build();
    let last = req.len() - 1;
    req[last] ^= 1;
    assert_eq!(
        check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out),
        Err(IceError::BadFingerprint)
    );
    assert_eq!(a.selected(), None);
    assert!(events(&mut a).is_empty());
}

#[test]
fn non_requests_other_methods_and_garbage_are_dropped() {
    let mut a = agent();
    let mut out = [0u8; 548];
    let build = |t: MessageType| {
        let mut buf = vec![0u8; 64];
        let mut b = MessageBuilder::new(&mut buf, t, TransactionId([1; 12])).expect("fits");
        b.add_fingerprint().expect("fits");
        let n = b.finish();
        buf.truncate(n);
        buf
    };
    let indication = build(MessageType::new(
        crate::stun::Method::BINDING,
        Class::Indication,
    ));
    assert_eq!(
        check(
            &mut a,
            &indication,
            browser_v4(),
            Transport::Udp,
            0,
            &mut out
        ),
        Err(IceError::NotARequest)
    );
    let response = build(MessageType::BINDING_SUCCESS);
    assert_eq!(
        check(&mut a, &response, browser_v4(), Transport::Udp, 0, &mut out),
        Err(IceError::NotARequest)
    );
    let allocate = build(MessageType::new(
        crate::stun::Method::new(0x003).expect("method"),
        Class::Request,
    ));
    assert_eq!(
        check(&mut a, &allocate, browser_v4(), Transport::Udp, 0, &mut out),
        Err(IceError::NotBinding)
    );
    // A DTLS ClientHello's first bytes.
    let dtls = [
        22u8, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100, 1, 0, 0, 88, 0, 0, 0, 0, 0,
    ];
    assert!(matches!(
        check(&mut a, &dtls, browser_v4(), Transport::Udp, 0, &mut out),
        Err(IceError::NotStun(_))
    ));
    // Broken PRIORITY value (3 bytes) with a good FINGERPRINT: malformed.
    let req = Check {
        extra: Some(Attribute::Other {
            attr_type: attr::PRIORITY,
            value: &[1, 2, 3],
        }),
        priority: None,
        ..Check::default()
    }
    .build();
    assert!(matches!(
        check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out),
        Err(IceError::Malformed(_))
    ));
}

#[test]
fn ice_controlled_gets_a_signed_487_and_no_pair() {
    let mut a = agent();
    let mut out = [0u8; 548];
    for tie_breaker_side in [true, false] {
        // With or without ICE-CONTROLLING alongside: a lite agent never takes control.
        let req = Check {
            controlling: tie_breaker_side,
            controlled: true,
            use_candidate: true,
            ..Check::default()
        }
        .build();
        let reply =
            check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
        assert!(matches!(reply, Reply::Error { code: 487, .. }), "{reply:?}");
        let msg = parse_answer(&req, &out[..reply.len()]);
        assert_eq!(error_code(&msg), 487);
        verify_message_integrity(&msg, LOCAL_PWD.as_bytes()).expect("487 is signed");
    }
    assert_eq!(a.selected(), None);
    assert!(events(&mut a).is_empty());
}

#[test]
fn missing_priority_or_role_gets_400_and_unknown_required_attribute_420() {
    let mut out = [0u8; 548];
    for c in [
        Check {
            priority: None,
            ..Check::default()
        },
        Check {
            controlling: false,
            ..Check::default()
        },
    ] {
        let mut a = agent();
        let req = c.build();
        let reply =
            check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
        assert!(matches!(reply, Reply::Error { code: 400, .. }), "{reply:?}");
        assert_eq!(a.selected(), None);
    }
    let mut a = agent();
    let req = Check {
        extra: Some(Attribute::Other {
            attr_type: 0x7001,
            value: b"x",
        }),
        ..Check::default()
    }
    .build();
    let reply = check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
    assert!(matches!(reply, Reply::Error { code: 420, .. }), "{reply:?}");
    let msg = parse_answer(&req, &out[..reply.len()]);
    let Some(Attribute::UnknownAttributes(list)) =
        msg.get(attr::UNKNOWN_ATTRIBUTES).expect("decodes")
    else {
        panic!("no UNKNOWN-ATTRIBUTES");
    };
    assert!(list.iter().eq([0x7001]));
    // Unknown comprehension-optional attributes are fine.
    let req = Check {
        extra: Some(Attribute::Other {
            attr_type: 0xC057, // Chromium's GOOG-NETWORK-INFO
            value: &[0, 1, 0, 0],
        }),
        ..Check::default()
    }
    .build();
    let reply = check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out).expect("answered");
    assert!(matches!(reply, Reply::Success { .. }), "{reply:?}");
}

#[test]
fn too_small_output_buffer_drops_and_changes_nothing() {
    let mut a = agent();
    let req = Check {
        use_candidate: true,
        ..Check::default()
    }
    .build();
    let mut tiny = [0u8; 40];
    assert_eq!(
        check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut tiny),
        Err(IceError::BufferTooSmall)
    );
    assert_eq!(a.selected(), None);
    assert!(events(&mut a).is_empty());
}

fn nominate(
    a: &mut IceLite,
    source: SocketAddr,
    transport: Transport,
    priority: u32,
    use_candidate: bool,
    now: u64,
) -> Pair {
    let req = Check {
        priority: Some(priority),
        use_candidate,
        ..Check::default()
    }
    .build();
    let mut out = [0u8; 548];
    match check(a, &req, source, transport, now, &mut out) {
        Ok(Reply::Success {
            pair, nominated, ..
        }) => {
            assert_eq!(nominated, use_candidate);
            pair
        }
        other => panic!("check refused: {other:?}"),
    }
}

#[test]
fn valid_pairs_wait_for_nomination_then_renomination_moves_to_higher_priority() {
    let mut a = agent();
    let low_src: SocketAddr = "198.51.100.7:1000".parse().expect("addr");
    let high_src: SocketAddr = "198.51.100.7:2000".parse().expect("addr");
    // Valid but not nominated: nothing selected yet, but the pair has consent.
    let low = nominate(&mut a, low_src, Transport::Udp, 100, false, 0);
    assert_eq!(a.selected(), None);
    assert!(a.may_send(&low, 0));
    assert!(events(&mut a).is_empty());
    // Nomination.
    nominate(&mut a, low_src, Transport::Udp, 100, true, SEC);
    assert_eq!(a.selected(), Some(low));
    assert_eq!(events(&mut a), vec![IceEvent::Connected(low)]);
    // A higher-priority pair, valid only: no change.
    let high = nominate(&mut a, high_src, Transport::Udp, 200, false, 2 * SEC);
    assert_eq!(a.selected(), Some(low));
    assert!(events(&mut a).is_empty());
    // Nominated: media moves.
    nominate(&mut a, high_src, Transport::Udp, 200, true, 3 * SEC);
    assert_eq!(a.selected(), Some(high));
    assert_eq!(events(&mut a), vec![IceEvent::SelectedChanged(high)]);
    // Re-nominating the lower one does not move media back while the higher is fresh.
    nominate(&mut a, low_src, Transport::Udp, 100, true, 4 * SEC);
    assert_eq!(a.selected(), Some(high));
    assert!(events(&mut a).is_empty());
    // Same priority: the latest nomination wins.
    nominate(&mut a, low_src, Transport::Udp, 200, true, 5 * SEC);
    assert_eq!(a.selected(), Some(low));
    assert_eq!(events(&mut a), vec![IceEvent::SelectedChanged(low)]);
}

#[test]
fn consent_expires_after_30_s_without_checks_and_recovers() {
    let mut a = agent();
    let main_src = browser_v4();
    let backup_src: SocketAddr = "198.51.100.7:2000".parse().expect("addr");
    let main = nominate(&mut a, main_src, Transport::Udp, 300, true, 0);
    let backup = nominate(&mut a, backup_src, Transport::Udp, 100, true, 10 * SEC);
    assert_eq!(events(&mut a), vec![IceEvent::Connected(main)]);
    assert_eq!(a.poll_timeout(10 * SEC), Some(30 * SEC));

    // Just before 30 s: still fresh.
    a.handle_timeout(30 * SEC - 1);
    assert_eq!(a.selected(), Some(main));
    assert!(a.may_send(&main, 30 * SEC - 1));
    assert!(events(&mut a).is_empty());
    // At 30 s the main pair's consent is gone: the backup (checked at 10 s) takes over.
    a.handle_timeout(30 * SEC);
    assert!(!a.may_send(&main, 30 * SEC));
    assert_eq!(a.selected(), Some(backup));
    assert_eq!(events(&mut a), vec![IceEvent::SelectedChanged(backup)]);
    assert_eq!(a.poll_timeout(30 * SEC), Some(40 * SEC));
    // At 40 s nothing is fresh: disconnected, nothing may be sent.
    a.handle_timeout(40 * SEC);
    assert_eq!(a.selected(), None);
    assert!(!a.may_send(&backup, 40 * SEC));
    assert_eq!(events(&mut a), vec![IceEvent::Disconnected]);
    assert_eq!(a.poll_timeout(40 * SEC), None);
    a.handle_timeout(50 * SEC);
    assert!(events(&mut a).is_empty(), "Disconnected is reported once");

    // The browser comes back with a check (no USE-CANDIDATE) on the nominated pair.
    nominate(&mut a, main_src, Transport::Udp, 300, false, 60 * SEC);
    assert_eq!(a.selected(), Some(main));
    assert!(a.may_send(&main, 60 * SEC));
    assert_eq!(events(&mut a), vec![IceEvent::Connected(main)]);
}

#[test]
fn regular_checks_keep_consent_alive() {
    let mut a = agent();
    let p = nominate(&mut a, browser_v4(), Transport::Udp, 300, true, 0);
    for t in (5..=120).step_by(5) {
        nominate(&mut a, browser_v4(), Transport::Udp, 300, false, t * SEC);
        a.handle_timeout(t * SEC + 29 * SEC);
        assert_eq!(a.selected(), Some(p));
    }
    assert_eq!(events(&mut a), vec![IceEvent::Connected(p)]);
}

#[test]
fn tcp_pair_is_separate_from_udp() {
    let mut a = agent();
    let udp = nominate(&mut a, browser_v4(), Transport::Udp, 100, true, 0);
    let tcp = nominate(&mut a, browser_v4(), Transport::Tcp, 200, false, SEC);
    assert_ne!(udp, tcp);
    assert_eq!(tcp.transport, Transport::Tcp);
    assert_eq!(udp.remote, tcp.remote);
    assert_eq!(a.selected(), Some(udp), "TCP is valid but not nominated");
    nominate(&mut a, browser_v4(), Transport::Tcp, 200, true, 2 * SEC);
    assert_eq!(a.selected(), Some(tcp));
    assert_eq!(
        events(&mut a),
        vec![IceEvent::Connected(udp), IceEvent::SelectedChanged(tcp)]
    );
    // UDP's consent runs out on its own clock.
    a.handle_timeout(30 * SEC);
    assert!(!a.may_send(&udp, 30 * SEC));
    assert!(a.may_send(&tcp, 30 * SEC));
}

#[test]
fn pair_table_is_bounded_and_keeps_the_selected_pair() {
    let mut a = agent();
    let selected = nominate(&mut a, browser_v4(), Transport::Udp, 1000, true, 0);
    for port in 0..(2 * pair::MAX_PAIRS as u16) {
        let src = SocketAddr::new(browser_v4().ip(), 10_000 + port);
        nominate(&mut a, src, Transport::Udp, 1, false, 1 + u64::from(port));
    }
    assert_eq!(a.selected(), Some(selected));
    assert!(a.may_send(&selected, 100));
    let last = SocketAddr::new(browser_v4().ip(), 10_000 + 2 * pair::MAX_PAIRS as u16 - 1);
    assert!(a.may_send(
        &Pair {
            local: local_v4(),
            remote: last,
            transport: Transport::Udp
        },
        100
    ));
    let first = SocketAddr::new(browser_v4().ip(), 10_000);
    assert!(!a.may_send(
        &Pair {
            local: local_v4(),
            remote: first,
            transport: Transport::Udp
        },
        100
    ));
}

#[test]
fn credentials_are_checked_and_generated_from_the_ice_char_set() {
    assert!(IceLite::new("abc", LOCAL_PWD).is_err(), "ufrag too short");
    assert!(
        IceLite::new("ab:c", LOCAL_PWD).is_err(),
        "colon is not an ice-char"
    );
    assert!(
        IceLite::new(LOCAL_UFRAG, "short").is_err(),
        "password too short"
    );
    assert!(agent().set_remote("brws", "x").is_err());
    let c = random_credentials().expect("random");
    assert_eq!(c.ufrag.len(), 8);
    assert_eq!(c.pwd.len(), 24);
    assert!(
        c.ufrag
            .bytes()
            .chain(c.pwd.bytes())
            .all(credentials::is_ice_char)
    );
    let d = random_credentials().expect("random");
    assert_ne!(c, d, "two draws of 192 bits are never equal");
    IceLite::new(&c.ufrag, &c.pwd).expect("generated credentials are valid");
}

#[test]
fn candidate_lines_follow_rfc_8445_and_6544() {
    // RFC 8445 §5.1.2.1 with type preference 126, local preference 65535, component 1.
    assert_eq!(host_priority(Transport::Udp, 0), 2_130_706_431);
    assert_eq!(host_priority(Transport::Udp, 1), 2_130_706_431 - 256);
    // RFC 6544: local preference 2^13 * 4 + 8191 = 40959.
    assert_eq!(
        host_priority(Transport::Tcp, 0),
        (126 << 24) + (40959 << 8) + 255
    );
    assert!(host_priority(Transport::Tcp, 0) < host_priority(Transport::Udp, 1000));
    let lines = candidate_lines(&[
        HostCandidate {
            addr: local_v4(),
            transport: Transport::Udp,
        },
        HostCandidate {
            addr: "[2001:db8::5]:3478".parse().expect("addr"),
            transport: Transport::Udp,
        },
        HostCandidate {
            addr: "203.0.113.5:443".parse().expect("addr"),
            transport: Transport::Tcp,
        },
    ]);
    assert_eq!(
        lines,
        vec![
            "candidate:1 1 udp 2130706431 203.0.113.5 3478 typ host".to_owned(),
            "candidate:2 1 udp 2130706175 2001:db8::5 3478 typ host".to_owned(),
            format!(
                "candidate:3 1 tcp {} 203.0.113.5 443 typ host tcptype passive",
                (126u32 << 24) + (40959 << 8) + 255
            ),
        ]
    );
    // Same IP and transport share a foundation.
    let same = candidate_lines(&[
        HostCandidate {
            addr: local_v4(),
            transport: Transport::Udp,
        },
        HostCandidate {
            addr: "203.0.113.5:3479".parse().expect("addr"),
            transport: Transport::Udp,
        },
    ]);
    assert!(same[1].starts_with("candidate:1 1 udp 2130706175 "));
}

proptest! {
    #[test]
    fn handle_stun_never_panics_on_arbitrary_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        out_len in 0usize..600,
    ) {
        let mut a = agent();
        let mut out = vec![0u8; out_len];
        if let Ok(reply) = check(&mut a, &data, browser_v4(), Transport::Udp, 0, &mut out) {
            parse_answer(&data, &out[..reply.len()]);
        }
    }

    #[test]
    fn handle_stun_never_panics_on_mutated_checks(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        truncate in any::<usize>(),
    ) {
        let mut a = agent();
        let mut req = Check { use_candidate: true, ..Check::default() }.build();
        for (i, x) in flips {
            let n = req.len();
            req[i % n] ^= x;
        }
        req.truncate(truncate % (req.len() + 1));
        let mut out = [0u8; 548];
        if let Ok(reply) = check(&mut a, &req, browser_v4(), Transport::Udp, 0, &mut out) {
            parse_answer(&req, &out[..reply.len()]);
        }
    }
}
