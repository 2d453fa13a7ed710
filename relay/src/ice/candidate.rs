//! Our host candidates as SDP `a=candidate` values (RFC 8839 §5.1), with priorities by
//! RFC 8445 §5.1.2.1 and, for TCP, RFC 6544 §4.2.
//!
//! The SFU has only host candidates (it sits on a public address): UDP, and TCP passive
//! (the browser connects to us, RFC 6544). Component is always 1 (rtcp-mux, BUNDLE).

use std::net::SocketAddr;

use super::pair::Transport;

/// Type preference of host candidates (RFC 8445 §5.1.2.2).
pub const HOST_TYPE_PREFERENCE: u32 = 126;
/// The only component: RTP and RTCP are multiplexed (RFC 5761) and media bundled.
pub const COMPONENT: u32 = 1;
/// RFC 6544 §4.2 direction preference of a passive host candidate (active 6, passive 4,
/// simultaneous-open 2).
const TCP_PASSIVE_DIRECTION_PREF: u32 = 4;

/// One of our host candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCandidate {
    /// Address and port we listen on.
    pub addr: SocketAddr,
    /// UDP, or TCP passive.
    pub transport: Transport,
}

/// RFC 8445 §5.1.2.1: `2^24 * type preference + 2^8 * local preference + (256 - component)`.
pub const fn priority(type_preference: u32, local_preference: u32, component: u32) -> u32 {
    (type_preference << 24) + (local_preference << 8) + (256 - component)
}

/// Priority of the `index`-th (0-based, in order of preference) host candidate of
/// `transport`. UDP: local preference 65535 down. TCP: RFC 6544 §4.2's
/// `2^13 * direction preference + other preference`, which always stays below UDP's, so
/// browsers prefer UDP.
pub fn host_priority(transport: Transport, index: usize) -> u32 {
    let local_preference = match transport {
        Transport::Udp => 65535u32.saturating_sub(u32::try_from(index).unwrap_or(u32::MAX)),
        Transport::Tcp => {
            (TCP_PASSIVE_DIRECTION_PREF << 13)
                + 8191u32.saturating_sub(u32::try_from(index).unwrap_or(u32::MAX))
        }
    };
    priority(HOST_TYPE_PREFERENCE, local_preference, COMPONENT)
}

/// The `a=candidate` values (without `a=`) for `candidates`, in the order given (most
/// preferred first within each transport). Candidates sharing IP and transport share a
/// foundation (RFC 8445 §5.1.1.3); foundations are small decimal numbers.
pub fn candidate_lines(candidates: &[HostCandidate]) -> Vec<String> {
    let mut udp_index = 0;
    let mut tcp_index = 0;
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ip = c.addr.ip().to_canonical();
            let foundation = 1 + candidates[..i]
                .iter()
                .position(|o| o.addr.ip().to_canonical() == ip && o.transport == c.transport)
                .unwrap_or(i);
            let (proto, suffix, index) = match c.transport {
                Transport::Udp => ("udp", "", &mut udp_index),
                Transport::Tcp => ("tcp", " tcptype passive", &mut tcp_index),
            };
            let prio = host_priority(c.transport, *index);
            *index += 1;
            format!(
                "candidate:{foundation} {COMPONENT} {proto} {prio} {ip} {} typ host{suffix}",
                c.addr.port()
            )
        })
        .collect()
}
