//! Plain counters of one [`super::TurnServer`]: the worker publishes a copy periodically
//! (no shared atomics per packet) and the control plane sums the workers' copies.
//!
//! Label sets are bounded by construction: auth failures by [`AuthFailure`], errors by the
//! fixed [`ERROR_CODES`] list. Nothing is keyed by user or address.

use serde::Serialize;

/// Why an authentication failed (bounded label set for metrics).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY(-SHA256): the normal first request (401 challenge).
    MissingCredentials,
    /// Unknown user (or USERHASH that matches no user).
    UnknownUser,
    /// MESSAGE-INTEGRITY(-SHA256) did not verify (wrong password).
    BadIntegrity,
    /// NONCE expired or forged: 438 with a fresh nonce.
    StaleNonce,
    /// REST username whose expiry has passed.
    ExpiredCredentials,
    /// REALM differs from ours, or USERNAME/NONCE/REALM missing or malformed.
    BadRequest,
    /// Dropped: the source exceeded its failed-authentication budget.
    RateLimited,
}

impl AuthFailure {
    /// Every reason, index = `self as usize`.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::MissingCredentials,
        AuthFailure::UnknownUser,
        AuthFailure::BadIntegrity,
        AuthFailure::StaleNonce,
        AuthFailure::ExpiredCredentials,
        AuthFailure::BadRequest,
        AuthFailure::RateLimited,
    ];

    /// Metric label.
    pub const fn name(self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "missing_credentials",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::ExpiredCredentials => "expired_credentials",
            AuthFailure::BadRequest => "bad_request",
            AuthFailure::RateLimited => "rate_limited",
        }
    }
}

/// Error codes counted in [`TurnStats::errors`] (index = position; anything else is
/// counted under the last entry, 500).
pub const ERROR_CODES: [u16; 14] = [
    300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508, 500,
];

fn error_index(code: u16) -> usize {
    ERROR_CODES
        .iter()
        .position(|&c| c == code)
        .unwrap_or(ERROR_CODES.len() - 1)
}

/// Counters and gauges of one TURN server (one worker).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TurnStats {
    /// Live allocations (gauge).
    pub allocations: u64,
    /// Live permissions over all allocations (gauge).
    pub permissions: u64,
    /// Live channel bindings over all allocations (gauge).
    pub channels: u64,
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that expired.
    pub allocations_expired: u64,
    /// Allocations deleted by Refresh 0, kick or connection close.
    pub allocations_deleted: u64,
    /// Datagrams relayed client → peer.
    pub packets_client_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_client_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub packets_peer_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_peer_to_client: u64,
    /// Send indications or ChannelData toward a peer without permission (or unbound
    /// channel), dropped silently as RFC 8656 says.
    pub dropped_no_permission: u64,
    /// Peer datagrams from an address without permission, dropped.
    pub dropped_peer_no_permission: u64,
    /// Datagrams dropped by the per-allocation bandwidth limit.
    pub dropped_bandwidth: u64,
    /// Client messages that were neither STUN nor valid ChannelData, or indications
    /// without allocation; dropped.
    pub dropped_malformed: u64,
    /// Peer datagrams on an unknown relay handle.
    pub dropped_unknown_relay: u64,
    /// Unauthenticated answers not sent because they would have been larger than the
    /// request (no amplification).
    pub amplification_drops: u64,
    /// Datagrams dropped because their allocation used up its byte quota.
    pub dropped_quota: u64,
    /// Of `packets_client_to_peer`: relayed by the kernel fast path (folded from its
    /// per-rule counters).
    pub kernel_packets_client_to_peer: u64,
    /// Of `packets_peer_to_client`: relayed by the kernel fast path.
    pub kernel_packets_peer_to_client: u64,
    /// Rules installed in the kernel fast path (gauge).
    pub fast_rules: u64,
    /// Rules the kernel fast path could not take (a full table: `xdp.turn_rules`; no free
    /// counter index); their traffic stays in userspace. Counted per attempt: a refused
    /// rule is tried again at the allocation's next change.
    pub fast_rules_refused: u64,
    /// Requests answered with success.
    pub requests_ok: u64,
    /// Failed authentications by reason, index = [`AuthFailure`] as usize.
    pub auth_failures: [u64; 7],
    /// Error responses by code, index = position in [`ERROR_CODES`].
    pub errors: [u64; 14],
}

impl TurnStats {
    /// Counts one failed authentication.
    pub fn auth_failure(&mut self, why: AuthFailure) {
        self.auth_failures[why as usize] += 1;
    }

    /// Counts one error response.
    pub fn error(&mut self, code: u16) {
        self.errors[error_index(code)] += 1;
    }

    /// Error responses sent with `code`.
    pub fn errors_of(&self, code: u16) -> u64 {
        self.errors[error_index(code)]
    }

    /// Failed authentications for `why`.
    pub fn auth_failures_of(&self, why: AuthFailure) -> u64 {
        self.auth_failures[why as usize]
    }

    /// Adds `o` into `self` (summing workers).
    pub fn add(&mut self, o: &TurnStats) {
        self.allocations += o.allocations;
        self.permissions += o.permissions;
        self.channels += o.channels;
        self.allocations_created += o.allocations_created;
        self.allocations_expired += o.allocations_expired;
        self.allocations_deleted += o.allocations_deleted;
        self.packets_client_to_peer += o.packets_client_to_peer;
        self.bytes_client_to_peer += o.bytes_client_to_peer;
        self.packets_peer_to_client += o.packets_peer_to_client;
        self.bytes_peer_to_client += o.bytes_peer_to_client;
        self.dropped_no_permission += o.dropped_no_permission;
        self.dropped_peer_no_permission += o.dropped_peer_no_permission;
        self.dropped_bandwidth += o.dropped_bandwidth;
        self.dropped_malformed += o.dropped_malformed;
        self.dropped_unknown_relay += o.dropped_unknown_relay;
        self.amplification_drops += o.amplification_drops;
        self.dropped_quota += o.dropped_quota;
        self.kernel_packets_client_to_peer += o.kernel_packets_client_to_peer;
        self.kernel_packets_peer_to_client += o.kernel_packets_peer_to_client;
        self.fast_rules += o.fast_rules;
        self.fast_rules_refused += o.fast_rules_refused;
        self.requests_ok += o.requests_ok;
        for (a, b) in self.auth_failures.iter_mut().zip(o.auth_failures) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_and_sums() {
        let mut s = TurnStats::default();
        s.error(437);
        s.error(999);
        s.auth_failure(AuthFailure::StaleNonce);
        assert_eq!(s.errors_of(437), 1);
        assert_eq!(s.errors_of(500), 1);
        assert_eq!(s.auth_failures_of(AuthFailure::StaleNonce), 1);
        for (i, a) in AuthFailure::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
        }
        let mut t = TurnStats::default();
        t.add(&s);
        t.add(&s);
        assert_eq!(t.errors_of(437), 2);
        assert_eq!(t.auth_failures_of(AuthFailure::StaleNonce), 2);
    }
}
