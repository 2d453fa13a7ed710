//! The ICE-lite agent of one participant connection (RFC 8445 §7.3 from the lite side,
//! RFC 7675 consent from the observer's side).
//!
//! A lite agent sends no checks: it answers the browser's Binding requests, learns valid
//! pairs from them, takes the browser's nominations (USE-CANDIDATE) and watches consent
//! by the checks the browser keeps sending (at least every 5 s per RFC 7675). Bytes and
//! time (µs, from the caller) in, answers and [`IceEvent`]s out.
//!
//! Decisions where the RFCs leave room, or where they need spelling out for lite:
//! - **Credentials.** A request is authenticated with our password alone (short-term
//!   credential, RFC 8489 §9.1): USERNAME must be `local_ufrag:remote_ufrag`. The remote
//!   password is never needed (it signs only checks we would send), and checks that
//!   arrive before the answer's remote ufrag (RFC 8445 §7.3 asks to answer them) are
//!   answered if the part before the colon is ours; once [`IceLite::set_remote`] is
//!   called, the part after it must match as well.
//! - **Failed authentication** follows RFC 8489 §9.1.3: no USERNAME or no
//!   MESSAGE-INTEGRITY → 400; a USERNAME that is not ours or a MESSAGE-INTEGRITY that
//!   does not verify → 401. Neither carries MESSAGE-INTEGRITY, neither creates a pair.
//!   (A check signed only with MESSAGE-INTEGRITY-SHA256 counts as unsigned: ICE uses
//!   HMAC-SHA1.)
//! - **Dropped without answer** (an [`IceError`]): not STUN, broken attributes, no or
//!   wrong FINGERPRINT (mandatory for ICE, RFC 8445 §7.2.2; without it a datagram on a
//!   multiplexed port is not trusted to be STUN), indications, responses, other methods.
//! - **Authenticated but refused** (answered with MESSAGE-INTEGRITY and FINGERPRINT, no
//!   pair): unknown comprehension-required attributes → 420; no PRIORITY, or neither
//!   ICE-CONTROLLING nor ICE-CONTROLLED → 400; ICE-CONTROLLED → 487 Role Conflict. A
//!   lite agent is always controlled (RFC 8445 §6.1.1) and cannot switch roles, so the
//!   tie-breaker comparison of RFC 8445 §7.3.1.1 always goes our way: the browser must
//!   take the controlling role.
//! - **Selection.** The selected pair is the fresh nominated pair with the highest
//!   PRIORITY (the latest nomination wins ties). A pair that was never nominated does not
//!   keep the connection up: when no fresh nominated pair is left, [`IceEvent::Disconnected`];
//!   a later valid check on a nominated pair brings it back ([`IceEvent::Connected`]).

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::credentials::check_credential;
use super::error::IceError;
use super::pair::{Pair, PairTable, Transport};
use crate::stun::attr::{self, is_comprehension_required, is_known};
use crate::stun::header::{Class, MessageType, Method};
use crate::stun::integrity::{check_fingerprint, verify_message_integrity};
use crate::stun::message::{Layout, Message};
use crate::stun::{Attribute, MessageBuilder, StunError};

/// Most events kept unread; older ones are dropped first.
const MAX_EVENTS: usize = 16;

/// Reason phrases of the error responses.
const BAD_REQUEST: &str = "Bad Request";
const UNAUTHORIZED: &str = "Unauthorized";
const UNKNOWN_ATTRIBUTE: &str = "Unknown Attribute";
const ROLE_CONFLICT: &str = "Role Conflict";

/// What to send back for one datagram: `out[..len]`, to the source it came from, over
/// the transport it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A Binding success response (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT).
    /// `pair` is now valid; `nominated` says whether the check carried USE-CANDIDATE.
    Success {
        /// Bytes written into `out`.
        len: usize,
        /// The pair the check validated.
        pair: Pair,
        /// The check nominated the pair.
        nominated: bool,
    },
    /// A Binding error response (400, 401, 420 or 487).
    Error {
        /// Bytes written into `out`.
        len: usize,
        /// The STUN error code.
        code: u16,
    },
}

impl Reply {
    /// Bytes to send from the start of `out`.
    pub fn len(&self) -> usize {
        match *self {
            Reply::Success { len, .. } | Reply::Error { len, .. } => len,
        }
    }

    /// Always false: every reply has at least a STUN header.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Changes of the connection's state, for the endpoint to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceEvent {
    /// A nominated pair is selected where none was (first time, or after
    /// [`IceEvent::Disconnected`]): start (or resume) DTLS and media on it.
    Connected(Pair),
    /// Media moves to another pair.
    SelectedChanged(Pair),
    /// No nominated pair has consent any more: stop sending.
    Disconnected,
}

/// The ICE-lite agent of one participant connection.
#[derive(Debug)]
pub struct IceLite {
    local_ufrag: String,
    local_pwd: String,
    remote_ufrag: Option<String>,
    remote_pwd: Option<String>,
    pairs: PairTable,
    selected: Option<Pair>,
    events: VecDeque<IceEvent>,
}

/// What a request's significant attributes say, gathered in one walk.
#[derive(Default)]
struct CheckAttributes<'a> {
    username: Option<&'a [u8]>,
    priority: Option<u32>,
    controlling: bool,
    controlled: bool,
    use_candidate: bool,
    unknown: bool,
}

impl IceLite {
    /// An agent with our credentials (as put in our SDP: `a=ice-ufrag`, `a=ice-pwd`).
    /// They must follow RFC 8839 §5.4: ice-chars, ufrag 4 to 256, password 22 to 256.
    pub fn new(local_ufrag: &str, local_pwd: &str) -> Result<IceLite, IceError> {
        check_credential(local_ufrag, 4, "ufrag")?;
        check_credential(local_pwd, 22, "password")?;
        Ok(IceLite {
            local_ufrag: local_ufrag.to_owned(),
            local_pwd: local_pwd.to_owned(),
            remote_ufrag: None,
            remote_pwd: None,
            pairs: PairTable::new(),
            selected: None,
            events: VecDeque::with_capacity(MAX_EVENTS),
        })
    }

    /// The browser's credentials, from its SDP. From now on the USERNAME of a check
    /// must end in this ufrag. The password is kept for completeness: a lite agent sends
    /// no checks and never uses it.
    pub fn set_remote(&mut self, remote_ufrag: &str, remote_pwd: &str) -> Result<(), IceError> {
        check_credential(remote_ufrag, 4, "remote ufrag")?;
        check_credential(remote_pwd, 22, "remote password")?;
        self.remote_ufrag = Some(remote_ufrag.to_owned());
        self.remote_pwd = Some(remote_pwd.to_owned());
        Ok(())
    }

    /// Our ufrag.
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// Our password.
    pub fn local_pwd(&self) -> &str {
        &self.local_pwd
    }

    /// The browser's ufrag, once known.
    pub fn remote_ufrag(&self) -> Option<&str> {
        self.remote_ufrag.as_deref()
    }

    /// The browser's password, once known.
    pub fn remote_pwd(&self) -> Option<&str> {
        self.remote_pwd.as_deref()
    }

    /// The pair media goes on: the fresh nominated pair with the highest PRIORITY.
    pub fn selected(&self) -> Option<Pair> {
        self.selected
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// Whether media may be sent on `pair` at `now_us`: a valid pair whose consent has
    /// not expired (RFC 7675 §5.1). Send on [`IceLite::selected`]; this is the guard.
    pub fn may_send(&self, pair: &Pair, now_us: u64) -> bool {
        self.pairs.get(pair).is_some_and(|p| p.is_fresh(now_us))
    }

    /// When [`IceLite::handle_timeout`] should next be called: the earliest consent
    /// expiry of a fresh nominated pair (the only ones that can change the selection).
    pub fn poll_timeout(&self, now_us: u64) -> Option<u64> {
        self.pairs
            .iter()
            .filter(|p| p.nominated.is_some() && p.is_fresh(now_us))
            .map(|p| p.expires_at())
            .min()
    }

    /// Applies consent expiry at `now_us`: the selection moves to another fresh
    /// nominated pair ([`IceEvent::SelectedChanged`]) or, if none, to nothing
    /// ([`IceEvent::Disconnected`]).
    pub fn handle_timeout(&mut self, now_us: u64) {
        self.reselect(now_us);
    }

    /// Handles one datagram that arrived from `source` on our address `local` over
    /// `transport` at `now_us`; an answer is written into `out` (548 bytes hold every
    /// answer). Never allocates for a check on a known pair, never panics.
    ///
    /// `Ok` means "send `out[..reply.len()]` back to `source`"; `Err` means drop (the
    /// error says why). See the module documentation for the rules.
    pub fn handle_stun(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        now_us: u64,
        out: &mut [u8],
    ) -> Result<Reply, IceError> {
        let msg = Message::parse(datagram).map_err(IceError::NotStun)?;
        let layout = msg.layout().map_err(IceError::Malformed)?;
        let fingerprint = layout.fingerprint.ok_or(IceError::MissingFingerprint)?;
        check_fingerprint(&msg, &fingerprint).map_err(|_| IceError::BadFingerprint)?;
        if msg.class() != Class::Request {
            return Err(IceError::NotARequest);
        }
        if msg.method() != Method::BINDING {
            return Err(IceError::NotBinding);
        }
        let attrs = read_attributes(&msg, &layout).map_err(IceError::Malformed)?;

        // Authentication (RFC 8489 §9.1.3), before anything else is revealed.
        let (Some(username), Some(_)) = (attrs.username, layout.integrity) else {
            return error_response(&msg, 400, BAD_REQUEST, None, out);
        };
        if !self.username_matches(username) {
            return error_response(&msg, 401, UNAUTHORIZED, None, out);
        }
        match verify_message_integrity(&msg, self.local_pwd.as_bytes()) {
            Ok(()) => {}
            Err(StunError::IntegrityMismatch) => {
                return error_response(&msg, 401, UNAUTHORIZED, None, out);
            }
            Err(e) => return Err(IceError::Malformed(e)),
        }
        let key = Some(self.local_pwd.as_bytes());
        if attrs.unknown {
            return error_response(&msg, 420, UNKNOWN_ATTRIBUTE, key, out);
        }
        if attrs.controlled {
            return error_response(&msg, 487, ROLE_CONFLICT, key, out);
        }
        let (Some(priority), true) = (attrs.priority, attrs.controlling) else {
            return error_response(&msg, 400, BAD_REQUEST, key, out);
        };

        let pair = Pair {
            local: canonical(local),
            remote: canonical(source),
            transport,
        };
        let len = success_response(&msg, pair.remote, self.local_pwd.as_bytes(), out)?;
        self.pairs
            .record_check(pair, priority, attrs.use_candidate, now_us, self.selected);
        self.reselect(now_us);
        Ok(Reply::Success {
            len,
            pair,
            nominated: attrs.use_candidate,
        })
    }

    /// USERNAME is `local_ufrag:remote_ufrag` (RFC 8445 §7.2.2); before the remote ufrag
    /// is known any non-empty remote part is accepted.
    fn username_matches(&self, username: &[u8]) -> bool {
        let Some(rest) = username.strip_prefix(self.local_ufrag.as_bytes()) else {
            return false;
        };
        let Some(remote) = rest.strip_prefix(b":") else {
            return false;
        };
        match &self.remote_ufrag {
            Some(expected) => remote == expected.as_bytes(),
            None => !remote.is_empty(),
        }
    }

    fn reselect(&mut self, now_us: u64) {
        let best = self.pairs.best_nominated(now_us);
        let event = match (self.selected, best) {
            (None, Some(p)) => Some(IceEvent::Connected(p)),
            (Some(old), Some(new)) if old != new => Some(IceEvent::SelectedChanged(new)),
            (Some(_), None) => Some(IceEvent::Disconnected),
            _ => None,
        };
        self.selected = best;
        if let Some(e) = event {
            if self.events.len() == MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
    }
}

/// Folds an IPv4-mapped IPv6 address (dual-stack socket) to the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// One walk over the significant attributes: decodes the ones ICE uses and every known
/// comprehension-required one (a bad value is an error), notes unknown
/// comprehension-required ones.
fn read_attributes<'a>(
    msg: &Message<'a>,
    layout: &Layout<'a>,
) -> Result<CheckAttributes<'a>, StunError> {
    let mut out = CheckAttributes::default();
    for item in msg.attributes() {
        let a = item?;
        if !layout.is_significant(&a) {
            continue;
        }
        let interesting = matches!(
            a.attr_type,
            attr::USERNAME
                | attr::PRIORITY
                | attr::USE_CANDIDATE
                | attr::ICE_CONTROLLED
                | attr::ICE_CONTROLLING
        );
        if !interesting {
            if is_comprehension_required(a.attr_type) {
                if is_known(a.attr_type) {
                    a.decode(msg.transaction_id())?;
                } else {
                    out.unknown = true;
                }
            }
            continue;
        }
        // The first of each counts (RFC 8489 §14: duplicates are ignored after the first).
        match a.decode(msg.transaction_id())? {
            Attribute::Username(u) if out.username.is_none() => out.username = Some(u),
            Attribute::Priority(p) if out.priority.is_none() => out.priority = Some(p),
            Attribute::UseCandidate => out.use_candidate = true,
            Attribute::IceControlled(_) => out.controlled = true,
            Attribute::IceControlling(_) => out.controlling = true,
            _ => {}
        }
    }
    Ok(out)
}

fn builder_error(e: StunError) -> IceError {
    match e {
        StunError::BufferTooSmall => IceError::BufferTooSmall,
        other => IceError::Malformed(other),
    }
}

/// Binding success: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY (our password), FINGERPRINT.
fn success_response(
    msg: &Message<'_>,
    mapped: SocketAddr,
    key: &[u8],
    out: &mut [u8],
) -> Result<usize, IceError> {
    let mut b = MessageBuilder::new(out, MessageType::BINDING_SUCCESS, *msg.transaction_id())
        .map_err(builder_error)?;
    b.add_xor_mapped_address(mapped).map_err(builder_error)?;
    b.add_message_integrity(key).map_err(builder_error)?;
    b.add_fingerprint().map_err(builder_error)?;
    Ok(b.finish())
}

/// Binding error response: ERROR-CODE, UNKNOWN-ATTRIBUTES for 420, MESSAGE-INTEGRITY when
/// the request was authenticated (`key`), FINGERPRINT.
fn error_response(
    msg: &Message<'_>,
    code: u16,
    reason: &str,
    key: Option<&[u8]>,
    out: &mut [u8],
) -> Result<Reply, IceError> {
    let mut b = MessageBuilder::new(out, MessageType::BINDING_ERROR, *msg.transaction_id())
        .map_err(builder_error)?;
    b.add_error_code(code, reason).map_err(builder_error)?;
    if code == 420 {
        // Only reached after a walk without errors: every item is Ok here.
        let layout = msg.layout().map_err(IceError::Malformed)?;
        let unknown = msg.attributes().filter_map(Result::ok).filter(|a| {
            layout.is_significant(a)
                && is_comprehension_required(a.attr_type)
                && !is_known(a.attr_type)
        });
        b.add_unknown_attributes(unknown.map(|a| a.attr_type))
            .map_err(builder_error)?;
    }
    if let Some(key) = key {
        b.add_message_integrity(key).map_err(builder_error)?;
    }
    b.add_fingerprint().map_err(builder_error)?;
    Ok(Reply::Error {
        len: b.finish(),
        code,
    })
}
