//! The Binding service: one datagram in, at most one datagram out.
//!
//! CONTRACT shared with the XDP program and the data path (do not change lightly):
//! a valid Binding request is answered with a Binding success response carrying exactly
//! XOR-MAPPED-ADDRESS (of `source`) then FINGERPRINT, nothing else.
//!
//! The rest follows RFC 8489 §6.3 for an unauthenticated server:
//! - not STUN (header checks) → dropped;
//! - FINGERPRINT present but wrong → dropped (it may be another protocol's packet);
//! - indications and responses → dropped, nothing answered;
//! - a request whose attributes are broken (truncated TLV, FINGERPRINT not last, a value
//!   that breaks its attribute's definition) → 400;
//! - a request carrying comprehension-required attributes we do not understand → 420 with
//!   UNKNOWN-ATTRIBUTES (attributes after MESSAGE-INTEGRITY are ignored, as the RFC says);
//! - a request for another method → 400 for now (TURN methods arrive with TURN).
//!
//! Every answer ends with FINGERPRINT. Credentials in a Binding request (USERNAME,
//! MESSAGE-INTEGRITY...) are understood and ignored: this service does not authenticate.

use std::net::SocketAddr;

use super::attr::{is_comprehension_required, is_known};
use super::builder::MessageBuilder;
use super::error::StunError;
use super::header::{Class, MessageType, Method};
use super::integrity::check_fingerprint;
use super::message::{Layout, Message};

/// Why a datagram got no answer. The data path counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a STUN message at all (too short, top bits, magic cookie or length).
    NotStun,
    /// FINGERPRINT present but does not match (or has the wrong size).
    BadFingerprint,
    /// An indication or a response: the server never answers those.
    NotARequest,
    /// The answer does not fit in the caller's `out` buffer.
    BufferTooSmall,
}

/// What the service decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Send `out[..n]` back to the source.
    Send(usize),
    /// Send nothing.
    Drop(DropReason),
}

/// Reason phrase of 400 answers.
pub const BAD_REQUEST: &str = "Bad Request";
/// Reason phrase of 420 answers.
pub const UNKNOWN_ATTRIBUTE: &str = "Unknown Attribute";

/// Size of the Binding success response for an IPv4 source.
pub const SUCCESS_LEN_V4: usize = 20 + 12 + 8;
/// Size of the Binding success response for an IPv6 source.
pub const SUCCESS_LEN_V6: usize = 20 + 24 + 8;

/// Answers one datagram received from `source`, writing any reply into `out`.
///
/// Never allocates and never panics. `out` of 548 bytes or more holds every answer
/// except a 420 listing more than about 250 unknown attributes; answers that do not fit
/// are dropped with [`DropReason::BufferTooSmall`]. An IPv4-mapped IPv6 `source`
/// (dual-stack socket) is answered as the IPv4 address it is, as the kernel path does.
pub fn handle_datagram(datagram: &[u8], source: SocketAddr, out: &mut [u8]) -> Reply {
    let Ok(msg) = Message::parse(datagram) else {
        return Reply::Drop(DropReason::NotStun);
    };
    let layout = msg.layout();
    if let Ok(Layout {
        fingerprint: Some(fp),
        ..
    }) = &layout
        && check_fingerprint(&msg, fp).is_err()
    {
        return Reply::Drop(DropReason::BadFingerprint);
    }
    if msg.class() != Class::Request {
        return Reply::Drop(DropReason::NotARequest);
    }
    let Ok(layout) = layout else {
        return error_reply(&msg, 400, BAD_REQUEST, false, out);
    };
    if msg.method() != Method::BINDING {
        // No other method is served yet: TURN (Allocate, Refresh, ...) arrives with its
        // own issue. RFC 8489 leaves the answer to an unsupported method to the usage;
        // 400 tells the client it will not succeed here.
        return error_reply(&msg, 400, BAD_REQUEST, false, out);
    }
    match check_attributes(&msg, &layout) {
        Ok(false) => {}
        Ok(true) => return error_reply(&msg, 420, UNKNOWN_ATTRIBUTE, true, out),
        Err(_) => return error_reply(&msg, 400, BAD_REQUEST, false, out),
    }
    let source = SocketAddr::new(source.ip().to_canonical(), source.port());
    finish(
        MessageBuilder::new(out, MessageType::BINDING_SUCCESS, *msg.transaction_id()).and_then(
            |mut b| {
                b.add_xor_mapped_address(source)?;
                b.add_fingerprint()?;
                Ok(b.finish())
            },
        ),
    )
}

/// Decodes every significant comprehension-required attribute we know (a bad value is
/// an error → 400) and reports whether any is unknown (→ 420). Comprehension-optional
/// attributes are not decoded: we ignore them, so a quirk in one is no reason to refuse.
fn check_attributes(msg: &Message<'_>, layout: &Layout<'_>) -> Result<bool, StunError> {
    let mut any_unknown = false;
    for item in msg.attributes() {
        let a = item?;
        if !layout.is_significant(&a) || !is_comprehension_required(a.attr_type) {
            continue;
        }
        if is_known(a.attr_type) {
            a.decode(msg.transaction_id())?;
        } else {
            any_unknown = true;
        }
    }
    Ok(any_unknown)
}

/// Writes an error response (same method, error class) with ERROR-CODE, optionally
/// UNKNOWN-ATTRIBUTES, then FINGERPRINT.
fn error_reply(
    msg: &Message<'_>,
    code: u16,
    reason: &str,
    list_unknown: bool,
    out: &mut [u8],
) -> Reply {
    let message_type = MessageType::new(msg.method(), Class::ErrorResponse);
    finish(
        MessageBuilder::new(out, message_type, *msg.transaction_id()).and_then(|mut b| {
            b.add_error_code(code, reason)?;
            if list_unknown {
                let layout = msg.layout()?;
                b.add_unknown_attributes(
                    msg.attributes()
                        .filter_map(Result::ok)
                        .filter(|a| {
                            layout.is_significant(a)
                                && is_comprehension_required(a.attr_type)
                                && !is_known(a.attr_type)
                        })
                        .map(|a| a.attr_type),
                )?;
            }
            b.add_fingerprint()?;
            Ok(b.finish())
        }),
    )
}

fn finish(result: Result<usize, StunError>) -> Reply {
    match result {
        Ok(n) => Reply::Send(n),
        // Only buffer space can fail when writing these fixed, valid attributes.
        Err(_) => Reply::Drop(DropReason::BufferTooSmall),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::attr::{self, Attribute, ErrorCode};
    use crate::stun::header::TransactionId;
    use crate::stun::integrity::verify_fingerprint;

    const TID: TransactionId = TransactionId([
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
    ]);

    fn v4() -> SocketAddr {
        "192.0.2.1:32853".parse().expect("addr")
    }

    fn v6() -> SocketAddr {
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .expect("addr")
    }

    /// A request built with our own builder: `attrs` then optionally FINGERPRINT.
    fn request(
        message_type: MessageType,
        attrs: &[Attribute<'_>],
        fingerprint: bool,
        buf: &mut [u8],
    ) -> usize {
        let mut b = MessageBuilder::new(buf, message_type, TID).expect("fits");
        for a in attrs {
            b.add(a).expect("fits");
        }
        if fingerprint {
            b.add_fingerprint().expect("fits");
        }
        b.finish()
    }

    fn answer(datagram: &[u8], source: SocketAddr) -> (Reply, Vec<u8>) {
        let mut out = [0u8; 548];
        let reply = handle_datagram(datagram, source, &mut out);
        let bytes = match reply {
            Reply::Send(n) => out[..n].to_vec(),
            Reply::Drop(_) => Vec::new(),
        };
        (reply, bytes)
    }

    /// Decodes an answer: checks header, FINGERPRINT last and correct, returns attributes.
    fn decode(bytes: &[u8]) -> (MessageType, Vec<Attribute<'_>>) {
        let msg = Message::parse(bytes).expect("answer is STUN");
        assert_eq!(*msg.transaction_id(), TID, "same transaction id");
        verify_fingerprint(&msg).expect("answer carries a correct FINGERPRINT");
        let attrs = msg
            .attributes()
            .map(|a| {
                a.and_then(|a| a.decode(msg.transaction_id()))
                    .expect("answer attribute decodes")
            })
            .collect();
        (msg.message_type(), attrs)
    }

    fn assert_success(bytes: &[u8], source: SocketAddr) {
        let (t, attrs) = decode(bytes);
        assert_eq!(t, MessageType::BINDING_SUCCESS);
        assert_eq!(
            attrs.len(),
            2,
            "exactly XOR-MAPPED-ADDRESS then FINGERPRINT"
        );
        assert_eq!(attrs[0], Attribute::XorMappedAddress(source));
        assert!(matches!(attrs[1], Attribute::Fingerprint(_)));
    }

    fn assert_error(bytes: &[u8], code: u16) -> Vec<u16> {
        let (t, attrs) = decode(bytes);
        assert_eq!(t.class, Class::ErrorResponse);
        let Attribute::ErrorCode(ErrorCode { code: got, .. }) = attrs[0] else {
            panic!("first attribute is not ERROR-CODE: {attrs:?}");
        };
        assert_eq!(got, code);
        assert!(matches!(attrs.last(), Some(Attribute::Fingerprint(_))));
        match attrs.get(1) {
            Some(Attribute::UnknownAttributes(list)) => list.iter().collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn plain_binding_requests_get_exactly_the_contract_answer() {
        let software = [Attribute::Software("test client")];
        for source in [v4(), v6()] {
            for attrs in [&[][..], &software[..]] {
                for fingerprint in [false, true] {
                    let mut req = [0u8; 128];
                    let n = request(MessageType::BINDING_REQUEST, attrs, fingerprint, &mut req);
                    let (reply, bytes) = answer(&req[..n], source);
                    let expect_len = if source.is_ipv4() {
                        SUCCESS_LEN_V4
                    } else {
                        SUCCESS_LEN_V6
                    };
                    assert_eq!(reply, Reply::Send(expect_len), "{source} {attrs:?}");
                    assert_success(&bytes, source);
                }
            }
        }
    }

    #[test]
    fn ipv4_answer_bytes_are_the_contract_bytes() {
        // Built by hand from RFC 8489 so the XDP program has a fixed reference.
        let mut req = [0u8; 20];
        let n = request(MessageType::BINDING_REQUEST, &[], false, &mut req);
        let (_, bytes) = answer(&req[..n], v4());
        let mut expect = vec![0x01, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42];
        expect.extend_from_slice(&TID.0);
        // XOR-MAPPED-ADDRESS: port 32853 ^ 0x2112, 192.0.2.1 ^ 0x2112a442.
        expect.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47]);
        expect.extend_from_slice(&[0xe1, 0x12, 0xa6, 0x43]);
        let crc = crc32fast::hash(&expect) ^ 0x5354_554E;
        expect.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
        expect.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(bytes, expect);
    }

    #[test]
    fn ipv4_mapped_sources_are_answered_as_ipv4() {
        let mut req = [0u8; 20];
        let n = request(MessageType::BINDING_REQUEST, &[], false, &mut req);
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:32853".parse().expect("addr");
        let (reply, bytes) = answer(&req[..n], mapped);
        assert_eq!(reply, Reply::Send(SUCCESS_LEN_V4));
        assert_success(&bytes, v4());
    }

    #[test]
    fn not_stun_is_dropped() {
        let mut req = [0u8; 20];
        let n = request(MessageType::BINDING_REQUEST, &[], false, &mut req);
        assert_eq!(answer(&[], v4()).0, Reply::Drop(DropReason::NotStun));
        assert_eq!(answer(&req[..19], v4()).0, Reply::Drop(DropReason::NotStun));
        let mut bad = req;
        bad[4] ^= 0xff;
        assert_eq!(answer(&bad[..n], v4()).0, Reply::Drop(DropReason::NotStun));
        let mut bad = req;
        bad[0] |= 0x80;
        assert_eq!(answer(&bad[..n], v4()).0, Reply::Drop(DropReason::NotStun));
        let mut long = [0u8; 24];
        long[..20].copy_from_slice(&req);
        assert_eq!(answer(&long, v4()).0, Reply::Drop(DropReason::NotStun));
        // RTP-ish bytes.
        assert_eq!(
            answer(&[0x80; 172], v4()).0,
            Reply::Drop(DropReason::NotStun)
        );
    }

    #[test]
    fn wrong_fingerprint_is_dropped() {
        let mut req = [0u8; 64];
        let n = request(
            MessageType::BINDING_REQUEST,
            &[Attribute::Software("x")],
            true,
            &mut req,
        );
        req[n - 1] ^= 1;
        assert_eq!(
            answer(&req[..n], v4()).0,
            Reply::Drop(DropReason::BadFingerprint)
        );
        // A FINGERPRINT of the wrong size is "wrong" too.
        let mut req = [0u8; 64];
        let n = request(
            MessageType::BINDING_REQUEST,
            &[Attribute::Other {
                attr_type: attr::FINGERPRINT,
                value: &[0; 8],
            }],
            false,
            &mut req,
        );
        assert_eq!(
            answer(&req[..n], v4()).0,
            Reply::Drop(DropReason::BadFingerprint)
        );
    }

    #[test]
    fn indications_and_responses_get_no_answer() {
        for t in [
            MessageType::new(Method::BINDING, Class::Indication),
            MessageType::BINDING_SUCCESS,
            MessageType::BINDING_ERROR,
            MessageType::new(Method::new(0x003).expect("12 bits"), Class::SuccessResponse),
        ] {
            let mut req = [0u8; 64];
            let n = request(t, &[], true, &mut req);
            assert_eq!(
                answer(&req[..n], v4()).0,
                Reply::Drop(DropReason::NotARequest)
            );
        }
        // Even a broken indication gets nothing (no 400 for non-requests).
        let mut req = [0u8; 64];
        let n = request(
            MessageType::new(Method::BINDING, Class::Indication),
            &[Attribute::Software("abcd")],
            false,
            &mut req,
        );
        req[23] = 200; // SOFTWARE length past the end
        assert_eq!(
            answer(&req[..n], v4()).0,
            Reply::Drop(DropReason::NotARequest)
        );
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let attrs = [
            Attribute::Other {
                attr_type: 0x0019, // REQUESTED-TRANSPORT: not understood yet
                value: &[17, 0, 0, 0],
            },
            Attribute::Other {
                attr_type: 0x9999, // comprehension-optional: ignored
                value: &[1],
            },
            Attribute::Other {
                attr_type: 0x7001,
                value: &[],
            },
        ];
        let mut req = [0u8; 128];
        let n = request(MessageType::BINDING_REQUEST, &attrs, true, &mut req);
        let (reply, bytes) = answer(&req[..n], v6());
        assert!(matches!(reply, Reply::Send(_)));
        assert_eq!(assert_error(&bytes, 420), vec![0x0019, 0x7001]);
        assert_eq!(decode(&bytes).0, MessageType::BINDING_ERROR);
    }

    #[test]
    fn known_and_optional_attributes_are_ignored() {
        let attrs = [
            Attribute::Username(b"abcd:efgh"),
            Attribute::Priority(0x6e00_01ff),
            Attribute::UseCandidate,
            Attribute::IceControlling(0x1234),
            Attribute::Other {
                attr_type: 0xC057, // Chrome's network cost: optional
                value: &[0, 1, 0, 10],
            },
            Attribute::MessageIntegrity(&[7; 20]),
            // After MESSAGE-INTEGRITY: ignored even though unknown and required.
            Attribute::Other {
                attr_type: 0x7001,
                value: &[],
            },
        ];
        let mut req = [0u8; 256];
        let n = request(MessageType::BINDING_REQUEST, &attrs, true, &mut req);
        let (reply, bytes) = answer(&req[..n], v4());
        assert_eq!(reply, Reply::Send(SUCCESS_LEN_V4));
        assert_success(&bytes, v4());
    }

    #[test]
    fn malformed_requests_get_400() {
        // Truncated TLV.
        let mut req = [0u8; 64];
        let n = request(
            MessageType::BINDING_REQUEST,
            &[Attribute::Software("abcd")],
            false,
            &mut req,
        );
        req[23] = 200;
        let (_, bytes) = answer(&req[..n], v4());
        assert_error(&bytes, 400);

        // Bad XOR-MAPPED-ADDRESS family.
        let mut req = [0u8; 64];
        let n = request(
            MessageType::BINDING_REQUEST,
            &[Attribute::Other {
                attr_type: attr::XOR_MAPPED_ADDRESS,
                value: &[0, 3, 0, 0, 1, 2, 3, 4],
            }],
            false,
            &mut req,
        );
        let (_, bytes) = answer(&req[..n], v4());
        assert_error(&bytes, 400);

        // MESSAGE-INTEGRITY of the wrong size.
        let mut req = [0u8; 64];
        let n = request(
            MessageType::BINDING_REQUEST,
            &[Attribute::MessageIntegrity(&[0; 12])],
            false,
            &mut req,
        );
        let (_, bytes) = answer(&req[..n], v4());
        assert_error(&bytes, 400);

        // FINGERPRINT not last (its value is then never checked).
        let mut req = [0u8; 64];
        let n = request(
            MessageType::BINDING_REQUEST,
            &[Attribute::Fingerprint(0), Attribute::Software("x")],
            false,
            &mut req,
        );
        let (_, bytes) = answer(&req[..n], v4());
        assert_error(&bytes, 400);
    }

    #[test]
    fn other_methods_get_400() {
        let allocate = MessageType::new(Method::new(0x003).expect("12 bits"), Class::Request);
        let mut req = [0u8; 64];
        let n = request(allocate, &[], true, &mut req);
        let (_, bytes) = answer(&req[..n], v4());
        assert_error(&bytes, 400);
        let (t, _) = decode(&bytes);
        assert_eq!(t, MessageType::new(allocate.method, Class::ErrorResponse));
    }

    #[test]
    fn small_out_buffers_drop_instead_of_panicking() {
        let mut req = [0u8; 20];
        let n = request(MessageType::BINDING_REQUEST, &[], false, &mut req);
        for size in 0..SUCCESS_LEN_V6 {
            let mut out = vec![0u8; size];
            let reply = handle_datagram(&req[..n], v6(), &mut out);
            assert_eq!(reply, Reply::Drop(DropReason::BufferTooSmall), "{size}");
        }
        let mut out = [0u8; SUCCESS_LEN_V6];
        assert_eq!(
            handle_datagram(&req[..n], v6(), &mut out),
            Reply::Send(SUCCESS_LEN_V6)
        );
    }
}
