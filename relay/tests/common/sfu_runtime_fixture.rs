//! Shared by the SFU runtime tests: starting an `SfuRuntime` on 127.0.0.1:0 with a given
//! backend (or learning why io_uring is unavailable here), the transport a hand-played
//! browser connects to, and that browser's ICE Binding request and the check of the answer.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use relay::config::BackendChoice;
use relay::dtls::Certificate;
use relay::rtp::ExtMap;
use relay::sfu::control::{Command, Event, TransportRole, TransportSpec};
use relay::sfu::engine::EngineConfig;
use relay::sfu::runtime::{RuntimeConfig, SfuRuntime};
use relay::stun::integrity::verify_message_integrity;
use relay::stun::{Attribute, Class, Message, MessageBuilder, MessageType, Method, TransactionId};

/// The SFU's ICE credentials for the test transport.
pub const UFRAG: &str = "sfuT";
pub const PWD: &str = "sfuTPasswordPassword1234";

/// A started runtime and its channels.
pub struct Running {
    pub runtime: SfuRuntime,
    pub commands: Sender<Command>,
    pub events: Receiver<Event>,
}

/// Starts the runtime with `backend`; None (with the reason printed) when the test must
/// skip io_uring because this kernel or sandbox refuses it.
pub fn start(backend: BackendChoice) -> Option<Running> {
    if backend == BackendChoice::IoUring
        && let Err(e) = relay::dataplane::select_backend(BackendChoice::IoUring)
    {
        eprintln!("skipping the io_uring backend: {e}");
        return None;
    }
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    let (ev_tx, ev_rx) = crossbeam_channel::bounded(4096);
    let cert = Arc::new(Certificate::generate().expect("certificate"));
    let runtime = SfuRuntime::start(
        RuntimeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            engine: EngineConfig::default(),
            backend,
            core: None,
            tcp: true,
        },
        cert,
        cmd_rx,
        ev_tx,
    )
    .expect("the SFU runtime starts");
    Some(Running {
        runtime,
        commands: cmd_tx,
        events: ev_rx,
    })
}

/// The transport the test browser connects to.
pub fn spec(id: u32) -> TransportSpec {
    TransportSpec {
        id,
        room: 1,
        participant: id,
        role: TransportRole::Publisher,
        local_ufrag: UFRAG.into(),
        local_pwd: PWD.into(),
        remote_ufrag: "brws".into(),
        remote_pwd: "browserPasswordBrowser34".into(),
        remote_fingerprint: [9; 32],
        extensions: ExtMap::default(),
    }
}

/// A browser's ICE connectivity check for `ufrag` (signed with `pwd`): its length in
/// `buf`.
pub fn binding_request(buf: &mut [u8], ufrag: &str, pwd: &str, id: TransactionId) -> usize {
    let username = format!("{ufrag}:brws");
    let mut b = MessageBuilder::new(buf, MessageType::BINDING_REQUEST, id).expect("fits");
    b.add(&Attribute::Username(username.as_bytes()))
        .expect("fits");
    b.add(&Attribute::IceControlling(42)).expect("fits");
    b.add(&Attribute::Priority(1_845_501_695)).expect("fits");
    b.add(&Attribute::UseCandidate).expect("fits");
    b.add_message_integrity(pwd.as_bytes()).expect("fits");
    b.add_fingerprint().expect("fits");
    b.finish()
}

/// Checks `answer` is the SFU's signed Binding success for request `id` from `client`.
pub fn check_answer(answer: &[u8], id: &TransactionId, client: SocketAddr) {
    let msg = Message::parse(answer).expect("the answer is STUN");
    assert_eq!(msg.method(), Method::BINDING, "a Binding answer");
    assert_eq!(msg.class(), Class::SuccessResponse, "a success answer");
    assert_eq!(msg.transaction_id(), id, "the request's transaction id");
    let mapped = msg
        .attributes()
        .filter_map(|a| a.ok()?.decode(id).ok())
        .find_map(|a| match a {
            Attribute::XorMappedAddress(x) => Some(x),
            _ => None,
        });
    assert_eq!(mapped, Some(client), "XOR-MAPPED-ADDRESS is the client");
    verify_message_integrity(&msg, PWD.as_bytes()).expect("signed with the SFU's password");
}

/// Sends requests until one is answered (the AddTransport command is applied within
/// ~10 ms of being sent); the answer's bytes.
pub fn first_answer(client: &UdpSocket, to: SocketAddr, id: TransactionId) -> Vec<u8> {
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut req = [0u8; 512];
    let mut buf = [0u8; 2048];
    for _ in 0..25 {
        let n = binding_request(&mut req, UFRAG, PWD, id);
        client.send_to(&req[..n], to).expect("send");
        if let Ok((m, from)) = client.recv_from(&mut buf) {
            assert_eq!(from, to, "the answer comes from the media socket");
            return buf[..m].to_vec();
        }
    }
    panic!("no answer to the Binding request within 5 s");
}
