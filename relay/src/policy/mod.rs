//! Which peers a TURN allocation may talk to, how many allocations a user (and the whole
//! server) may hold, and how fast one allocation may send.
//!
//! Why: a TURN relay is an open proxy into whatever network it sits in. Without a peer
//! policy, any authenticated user can reach the relay's loopback services, the cloud
//! metadata endpoint (169.254.169.254), RFC 1918 networks behind it, or the relay itself.
//! So everything that is not plainly a public unicast address is denied unless the
//! operator allows it, and the check is made on the *canonical* IPv4 address of every
//! IPv6 form that embeds one (IPv4-mapped, IPv4-compatible, SIIT, 6to4, NAT64), so
//! `::ffff:127.0.0.1` or `64:ff9b::a9fe:a9fe` cannot sneak past a rule written for IPv4.
//!
//! Precedence, from strongest: the relay's own addresses are denied (except, with [`PeerPolicy::check_socket`], on the relay's own port range:
//! those are other allocations of this relay, which two users of one relay need to reach
//! each other; the relay's own services on other ports stay unreachable); then an
//! explicit `deny` entry; then an explicit `allow` entry; then the default deny-list; then
//! allow. An `allow` only lifts the default deny-list for the addresses it covers.
//!
//! [`Quotas`] and [`TokenBucket`] live here too: they are the other per-user and
//! per-allocation limits the operator configures next to the peer lists.

mod bucket;
mod cidr;
mod quota;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{RwLock, RwLockReadGuard};

pub use bucket::TokenBucket;
pub use cidr::{Cidr, CidrError};
pub use quota::{QuotaError, QuotaTicket, Quotas};

/// The operator's peer lists, as written in the `[policy]` section (CIDR strings, or bare
/// addresses meaning /32 or /128).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Ranges allowed even though the default deny-list covers them (e.g. a private
    /// media network behind the relay).
    pub allow: Vec<String>,
    /// Ranges always denied (beats `allow`).
    pub deny: Vec<String>,
}

/// Why a [`PolicyConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An `allow` entry does not parse.
    #[error("policy.allow[{index}]: {source}")]
    Allow {
        /// Position in the list.
        index: usize,
        /// What is wrong.
        #[source]
        source: CidrError,
    },
    /// A `deny` entry does not parse.
    #[error("policy.deny[{index}]: {source}")]
    Deny {
        /// Position in the list.
        index: usize,
        /// What is wrong.
        #[source]
        source: CidrError,
    },
}

/// Why a peer address was refused (the TURN server answers 403 Forbidden).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The address (or the IPv4 address it embeds) is one of the relay's own.
    #[error("{addr} is one of the relay's own addresses")]
    OwnAddress {
        /// The offending (canonical) address.
        addr: IpAddr,
    },
    /// The address matches an entry of the operator's deny list.
    #[error("{addr} is in the deny list entry {cidr}")]
    DenyList {
        /// The offending (canonical) address.
        addr: IpAddr,
        /// The matching entry.
        cidr: Cidr,
    },
    /// The address is in a range denied by default and no allow entry covers it.
    #[error(
        "{addr} is in {range} ({what}), denied by default; add it to policy.allow to permit it"
    )]
    Default {
        /// The offending (canonical) address.
        addr: IpAddr,
        /// The default range, e.g. `127.0.0.0/8`.
        range: &'static str,
        /// What the range is, e.g. `loopback`.
        what: &'static str,
    },
}

impl Denied {
    /// A short, fixed label for metrics (bounded cardinality).
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::OwnAddress { .. } => "own_address",
            Denied::DenyList { .. } => "deny_list",
            Denied::Default { .. } => "default_deny",
        }
    }
}

/// One default-denied range: prefix, length, text, what it is.
struct DefaultRange {
    cidr: Cidr,
    text: &'static str,
    what: &'static str,
}

const fn v4(
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    len: u8,
    text: &'static str,
    what: &'static str,
) -> DefaultRange {
    DefaultRange {
        cidr: Cidr::v4_const(Ipv4Addr::new(a, b, c, d), len),
        text,
        what,
    }
}

const fn v6(seg0: u16, last: u16, len: u8, text: &'static str, what: &'static str) -> DefaultRange {
    DefaultRange {
        cidr: Cidr::v6_const(Ipv6Addr::new(seg0, 0, 0, 0, 0, 0, 0, last), len),
        text,
        what,
    }
}

/// The ranges denied unless allowed. IPv6 forms that embed IPv4 are not listed: they are
/// canonicalised first and checked against the IPv4 ranges.
const DEFAULT_DENY: &[DefaultRange] = &[
    v4(0, 0, 0, 0, 8, "0.0.0.0/8", "\"this network\""),
    v4(10, 0, 0, 0, 8, "10.0.0.0/8", "private (RFC 1918)"),
    v4(
        100,
        64,
        0,
        0,
        10,
        "100.64.0.0/10",
        "shared address space / CGNAT",
    ),
    v4(127, 0, 0, 0, 8, "127.0.0.0/8", "loopback"),
    v4(
        169,
        254,
        0,
        0,
        16,
        "169.254.0.0/16",
        "link-local and cloud metadata",
    ),
    v4(172, 16, 0, 0, 12, "172.16.0.0/12", "private (RFC 1918)"),
    v4(192, 168, 0, 0, 16, "192.168.0.0/16", "private (RFC 1918)"),
    v4(224, 0, 0, 0, 4, "224.0.0.0/4", "multicast"),
    v4(240, 0, 0, 0, 4, "240.0.0.0/4", "reserved and broadcast"),
    v6(0, 0, 128, "::/128", "unspecified"),
    v6(0, 1, 128, "::1/128", "loopback"),
    v6(0xfe80, 0, 10, "fe80::/10", "link-local"),
    v6(0xfc00, 0, 7, "fc00::/7", "unique local"),
    v6(0xff00, 0, 8, "ff00::/8", "multicast"),
];

/// The peer policy: built from the configuration, consulted on CreatePermission,
/// ChannelBind and Send (no allocation), and replaced in place on reload
/// ([`PeerPolicy::replace`]) so that every holder of the shared `Arc` sees the new lists.
#[derive(Debug)]
pub struct PeerPolicy {
    lists: RwLock<Lists>,
}

#[derive(Debug, Clone)]
struct Lists {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    own: Vec<IpAddr>,
}

/// At most this many addresses are derived from one peer address (itself plus its
/// embedded IPv4 forms).
const MAX_FORMS: usize = 6;

/// The address itself followed by every IPv4 address it may embed.
///
/// The NAT64 local-use prefix 64:ff9b:1::/48 may be subdivided with any RFC 6052 prefix
/// length of /48 or longer, so each possible embedding is returned and all must pass.
fn forms(addr: IpAddr) -> ([IpAddr; MAX_FORMS], usize) {
    let mut out = [addr; MAX_FORMS];
    let mut n = 1;
    let IpAddr::V6(a) = addr else {
        return (out, n);
    };
    let s = a.segments();
    let bits = u128::from(a);
    let o = a.octets();
    let v4_at = |i: usize| IpAddr::V4(Ipv4Addr::new(o[i], o[i + 1], o[i + 2], o[i + 3]));
    let low32 = IpAddr::V4(Ipv4Addr::from(bits as u32));
    let mut push = |x: IpAddr| {
        if n < MAX_FORMS {
            out[n] = x;
            n += 1;
        }
    };
    if bits >> 32 == 0xffff {
        // ::ffff:a.b.c.d, IPv4-mapped.
        push(low32);
    } else if bits >> 32 == 0xffff_0000 {
        // ::ffff:0:a.b.c.d, IPv4-translated (SIIT, RFC 2765).
        push(low32);
    } else if bits >> 32 == 0 && bits > 1 {
        // ::a.b.c.d, IPv4-compatible (deprecated), except :: and ::1.
        push(low32);
    } else if s[0] == 0x2002 {
        // 2002:AABB:CCDD::/48, 6to4.
        push(v4_at(2));
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        // 64:ff9b::a.b.c.d, NAT64 well-known prefix (RFC 6052).
        push(low32);
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // 64:ff9b:1::/48, NAT64 local-use (RFC 8215), subdivided by the operator with an
        // RFC 6052 prefix of /48, /56, /64 or /96. Every layout the address is well
        // formed for (reserved "u" octet, bits 64..72, zero and the suffix after the
        // IPv4 address zero) is checked, so whichever the NAT64 uses is covered.
        let zero = |r: std::ops::Range<usize>| o[r].iter().all(|&b| b == 0);
        if o[8] == 0 && zero(11..16) {
            push(IpAddr::V4(Ipv4Addr::new(o[6], o[7], o[9], o[10]))); // /48
        }
        if o[8] == 0 && zero(12..16) {
            push(IpAddr::V4(Ipv4Addr::new(o[7], o[9], o[10], o[11]))); // /56
        }
        if o[8] == 0 && zero(13..16) {
            push(v4_at(9)); // /64
        }
        push(low32); // /96
    }
    (out, n)
}

impl PeerPolicy {
    /// Parses the lists. `own` are the relay's addresses (listen and relay addresses);
    /// unspecified addresses among them are ignored (they are denied by default anyway).
    pub fn new(cfg: &PolicyConfig, own: &[IpAddr]) -> Result<Self, PolicyError> {
        let allow = cfg
            .allow
            .iter()
            .enumerate()
            .map(|(index, s)| {
                s.parse::<Cidr>()
                    .map_err(|source| PolicyError::Allow { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deny = cfg
            .deny
            .iter()
            .enumerate()
            .map(|(index, s)| {
                s.parse::<Cidr>()
                    .map_err(|source| PolicyError::Deny { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut own_all = Vec::new();
        for a in own {
            if a.is_unspecified() {
                continue;
            }
            let (f, n) = forms(*a);
            for x in &f[..n] {
                if !own_all.contains(x) {
                    own_all.push(*x);
                }
            }
        }
        Ok(PeerPolicy {
            lists: RwLock::new(Lists {
                allow,
                deny,
                own: own_all,
            }),
        })
    }

    fn lists(&self) -> RwLockReadGuard<'_, Lists> {
        // Lists are replaced whole; a panic elsewhere cannot leave them half-written.
        self.lists
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `other`'s lists (reload): checks made afterwards use them; permissions
    /// already granted stay.
    pub fn replace(&self, other: PeerPolicy) {
        let new = other
            .lists
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut w = self
            .lists
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *w = new;
    }

    /// Whether `peer` may be relayed to. Allocation-free.
    pub fn check(&self, peer: IpAddr) -> Result<(), Denied> {
        let l = self.lists();
        let (f, n) = forms(peer);
        let forms = &f[..n];
        for &a in forms {
            if l.own.contains(&a) {
                return Err(Denied::OwnAddress { addr: a });
            }
        }
        for &a in forms {
            if let Some(c) = l.deny.iter().find(|c| c.contains(a)) {
                return Err(Denied::DenyList { addr: a, cidr: *c });
            }
        }
        for &a in forms {
            if let Some(r) = DEFAULT_DENY.iter().find(|r| r.cidr.contains(a))
                && !l.allow.iter().any(|c| c.contains(a))
            {
                return Err(Denied::Default {
                    addr: a,
                    range: r.text,
                    what: r.what,
                });
            }
        }
        Ok(())
    }

    /// Whether `peer` (address and port) may be relayed to, where `relay_ports` is the
    /// relay's own port range. Like [`PeerPolicy::check`], except that one of the relay's
    /// own addresses is allowed on a port inside `relay_ports` (another allocation of this
    /// relay) unless an explicit `deny` entry covers it. Allocation-free.
    pub fn check_socket(
        &self,
        peer: std::net::SocketAddr,
        relay_ports: std::ops::RangeInclusive<u16>,
    ) -> Result<(), Denied> {
        if relay_ports.contains(&peer.port()) && self.is_own(peer.ip()) {
            let l = self.lists();
            let (f, n) = forms(peer.ip());
            for &a in &f[..n] {
                if let Some(c) = l.deny.iter().find(|c| c.contains(a)) {
                    return Err(Denied::DenyList { addr: a, cidr: *c });
                }
            }
            return Ok(());
        }
        self.check(peer.ip())
    }

    /// Whether `peer` is one of the relay's own addresses (in any embedded form).
    pub fn is_own(&self, peer: IpAddr) -> bool {
        let l = self.lists();
        let (f, n) = forms(peer);
        f[..n].iter().any(|a| l.own.contains(a))
    }

    /// The relay's own addresses (with their embedded forms), for the data path's
    /// per-datagram port check on permissions to them.
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        self.lists().own.clone()
    }

    /// The allow entries (canonical form), for logs and `relay status`.
    pub fn allow(&self) -> Vec<Cidr> {
        self.lists().allow.clone()
    }

    /// The deny entries (canonical form).
    pub fn deny(&self) -> Vec<Cidr> {
        self.lists().deny.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn default_policy() -> PeerPolicy {
        PeerPolicy::new(&PolicyConfig::default(), &[]).unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str], own: &[&str]) -> PeerPolicy {
        PeerPolicy::new(
            &PolicyConfig {
                allow: allow.iter().map(|s| (*s).to_owned()).collect(),
                deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            },
            &own.iter().map(|s| ip(s)).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[track_caller]
    fn denied(p: &PeerPolicy, a: &str) -> Denied {
        match p.check(ip(a)) {
            Err(d) => d,
            Ok(()) => panic!("{a} must be denied"),
        }
    }

    #[test]
    fn every_default_range_is_denied_at_both_ends() {
        let p = default_policy();
        for a in [
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.0.0",
            "169.254.169.254",
            "169.254.255.255",
            "172.16.0.0",
            "172.31.255.255",
            "192.168.0.0",
            "192.168.255.255",
            "224.0.0.0",
            "239.255.255.255",
            "240.0.0.0",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fc00::",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "ff00::",
            "ff02::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(matches!(denied(&p, a), Denied::Default { .. }), "{a}");
        }
    }

    #[test]
    fn neighbours_of_default_ranges_are_allowed() {
        let p = default_policy();
        for a in [
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "223.255.255.255",
            "8.8.8.8",
            "203.0.113.7",
            "2001:db8::1",
            "2a00:1450:4001::1",
            "fec0::1",
            "fbff::1",
            // NAT64 local-use with a /64 prefix: 8.8.8.8.
            "64:ff9b:1:0:8:808:800:0",
        ] {
            assert_eq!(p.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn embedded_ipv4_forms_are_canonicalised() {
        let p = default_policy();
        for (a, canon) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:169.254.169.254", "169.254.169.254"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("::ffff:0.0.0.0", "0.0.0.0"),
            ("::ffff:255.255.255.255", "255.255.255.255"),
            ("::127.0.0.1", "127.0.0.1"),
            ("::10.0.0.1", "10.0.0.1"),
            ("::0.0.0.2", "0.0.0.2"),
            ("::ffff:0:127.0.0.1", "127.0.0.1"),
            ("2002:7f00:1::", "127.0.0.1"),
            ("2002:a9fe:a9fe:1234::1", "169.254.169.254"),
            ("2002:c0a8:0101::", "192.168.1.1"),
            ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
            ("64:ff9b::127.0.0.1", "127.0.0.1"),
            ("64:ff9b::e000:1", "224.0.0.1"),
            ("64:ff9b:1::7f00:1", "127.0.0.1"),
            // /48 layout: 127.0 in bits 48..64, u octet, 0.1 in bits 72..88.
            ("64:ff9b:1:7f00:0:0100::", "127.0.0.1"),
            // /64 layout: u octet then 10.0.0.1.
            ("64:ff9b:1:0:a:0:100:0", "10.0.0.1"),
        ] {
            match denied(&p, a) {
                Denied::Default { addr, .. } => assert_eq!(addr, ip(canon), "{a}"),
                d => panic!("{a}: unexpected {d:?}"),
            }
        }
    }

    #[test]
    fn embedded_public_ipv4_is_allowed() {
        let p = default_policy();
        for a in [
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::808:808",
            "64:ff9b:1::808:808",
        ] {
            assert_eq!(p.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn allow_lifts_default_deny_only_where_it_covers() {
        let p = policy(&["10.0.0.0/8", "fd00::/8"], &[], &[]);
        assert_eq!(p.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(p.check(ip("::ffff:10.1.2.3")), Ok(()));
        assert_eq!(p.check(ip("64:ff9b::a01:203")), Ok(()));
        assert_eq!(p.check(ip("fd12::1")), Ok(()));
        assert!(p.check(ip("fc00::1")).is_err());
        assert!(p.check(ip("192.168.1.1")).is_err());
        assert!(p.check(ip("127.0.0.1")).is_err());
    }

    #[test]
    fn allow_written_as_mapped_is_canonical() {
        let p = policy(&["::ffff:10.0.0.0/104"], &[], &[]);
        assert_eq!(p.check(ip("10.9.9.9")), Ok(()));
        assert_eq!(p.allow()[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn allowing_6to4_prefix_does_not_allow_embedded_loopback() {
        let p = policy(&["2002::/16"], &[], &[]);
        assert!(matches!(
            denied(&p, "2002:7f00:1::"),
            Denied::Default { .. }
        ));
        assert_eq!(p.check(ip("2002:808:808::")), Ok(()));
    }

    #[test]
    fn deny_beats_allow() {
        let p = policy(&["10.0.0.0/8"], &["10.1.0.0/16"], &[]);
        assert_eq!(p.check(ip("10.2.0.1")), Ok(()));
        assert!(matches!(denied(&p, "10.1.0.1"), Denied::DenyList { .. }));
        assert!(matches!(
            denied(&p, "::ffff:10.1.0.1"),
            Denied::DenyList { .. }
        ));
    }

    #[test]
    fn deny_list_blocks_public_and_v6_prefixes() {
        let p = policy(&[], &["8.8.8.0/24", "2002::/16", "2001:db8::/32"], &[]);
        assert!(matches!(denied(&p, "8.8.8.8"), Denied::DenyList { .. }));
        assert!(matches!(
            denied(&p, "64:ff9b::808:808"),
            Denied::DenyList { .. }
        ));
        assert!(matches!(
            denied(&p, "2002:101:101::"),
            Denied::DenyList { .. }
        ));
        assert!(matches!(denied(&p, "2001:db8::5"), Denied::DenyList { .. }));
        assert_eq!(p.check(ip("8.8.4.4")), Ok(()));
    }

    #[test]
    fn own_addresses_reachable_only_on_the_relay_port_range() {
        let p = policy(&["0.0.0.0/0"], &[], &["203.0.113.5"]);
        let range = 49152..=65535;
        let sock = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        // Another allocation of this relay: allowed, in any embedded form.
        assert_eq!(
            p.check_socket(sock("203.0.113.5:50000"), range.clone()),
            Ok(())
        );
        assert_eq!(
            p.check_socket(sock("[::ffff:203.0.113.5]:50000"), range.clone()),
            Ok(())
        );
        // The relay's own services (SSH, metrics, DNS...): denied.
        for s in [
            "203.0.113.5:22",
            "203.0.113.5:9641",
            "[::ffff:203.0.113.5]:53",
        ] {
            assert!(
                matches!(
                    p.check_socket(sock(s), range.clone()),
                    Err(Denied::OwnAddress { .. })
                ),
                "{s}"
            );
        }
        // An explicit deny still wins.
        let d = policy(&[], &["203.0.113.0/24"], &["203.0.113.5"]);
        assert!(matches!(
            d.check_socket(sock("203.0.113.5:50000"), range.clone()),
            Err(Denied::DenyList { .. })
        ));
        // Other addresses are checked as before (default deny-list, no allow entries).
        let plain = policy(&[], &[], &["203.0.113.5"]);
        assert!(matches!(
            plain.check_socket(sock("127.0.0.1:50000"), range.clone()),
            Err(Denied::Default { .. })
        ));
        assert_eq!(plain.check_socket(sock("8.8.8.8:50000"), range), Ok(()));
        assert!(p.is_own(ip("::ffff:203.0.113.5")));
        assert!(!p.is_own(ip("203.0.113.6")));
    }

    #[test]
    fn own_addresses_always_denied_even_if_allowed() {
        let p = policy(
            &["0.0.0.0/0", "::/0"],
            &[],
            &["203.0.113.5", "2001:db8::5", "0.0.0.0"],
        );
        assert!(matches!(
            denied(&p, "203.0.113.5"),
            Denied::OwnAddress { .. }
        ));
        assert!(matches!(
            denied(&p, "::ffff:203.0.113.5"),
            Denied::OwnAddress { .. }
        ));
        assert!(matches!(
            denied(&p, "2002:cb00:7105::"),
            Denied::OwnAddress { .. }
        ));
        assert!(matches!(
            denied(&p, "2001:db8::5"),
            Denied::OwnAddress { .. }
        ));
        // Allow-all lifts the default list.
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("203.0.113.6")), Ok(()));
    }

    #[test]
    fn replace_swaps_lists_in_place() {
        let p = std::sync::Arc::new(default_policy());
        let held = p.clone();
        assert!(held.check(ip("10.1.1.1")).is_err());
        p.replace(policy(&["10.0.0.0/8"], &["8.8.8.8"], &[]));
        assert_eq!(held.check(ip("10.1.1.1")), Ok(()));
        assert!(matches!(denied(&held, "8.8.8.8"), Denied::DenyList { .. }));
    }

    #[test]
    fn bad_entries_name_list_and_index() {
        let e = PeerPolicy::new(
            &PolicyConfig {
                allow: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
                deny: vec![],
            },
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("policy.allow[1]:"), "{e}");
        let e = PeerPolicy::new(
            &PolicyConfig {
                allow: vec![],
                deny: vec!["nonsense".into()],
            },
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("policy.deny[0]:"), "{e}");
    }

    #[test]
    fn denied_messages_say_what_to_do() {
        let d = denied(&default_policy(), "::ffff:169.254.169.254");
        let m = d.to_string();
        assert!(
            m.contains("169.254.169.254") && m.contains("policy.allow"),
            "{m}"
        );
        assert_eq!(d.reason(), "default_deny");
    }
}
