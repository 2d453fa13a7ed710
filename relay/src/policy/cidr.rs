//! CIDR ranges as the operator writes them (`10.0.0.0/8`, `2001:db8::/32`, a bare address),
//! parsed strictly so that a typo is an error at start-up rather than a silently wider or
//! narrower rule.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range. IPv4-mapped IPv6 ranges (`::ffff:a.b.c.d/96+n`) are stored as the
/// IPv4 range they denote, so they match the canonical form of peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part does not parse.
    #[error("{0:?} is not an IP address or CIDR range (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")")]
    Address(String),
    /// The prefix length does not parse or is too long for the family.
    #[error("{text:?}: prefix length must be 0..={max}")]
    Prefix {
        /// The entry.
        text: String,
        /// 32 or 128.
        max: u8,
    },
    /// Bits beyond the prefix are set (`10.1.2.3/8`): ambiguous, so refused.
    #[error("{text:?} has host bits set; did you mean \"{suggested}\"?")]
    HostBits {
        /// The entry.
        text: String,
        /// The network the operator probably meant.
        suggested: String,
    },
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl Cidr {
    /// A compile-time IPv4 range (the caller guarantees a masked address and len <= 32).
    pub(crate) const fn v4_const(addr: Ipv4Addr, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(addr),
            prefix,
        }
    }

    /// A compile-time IPv6 range (the caller guarantees a masked address and len <= 128).
    pub(crate) const fn v6_const(addr: Ipv6Addr, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(addr),
            prefix,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (same family) lies in the range. No canonicalisation here: the
    /// policy passes every form of a peer address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = mask32(self.prefix);
                u32::from(a) & m == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = mask128(self.prefix);
                u128::from(a) & m == u128::from(n)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (addr_s, prefix_s) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(CidrError::Prefix {
                        text: text.to_owned(),
                        max,
                    });
                }
            },
        };
        let (masked, set) = match addr {
            IpAddr::V4(a) => {
                let m = u32::from(a) & mask32(prefix);
                (IpAddr::V4(Ipv4Addr::from(m)), m != u32::from(a))
            }
            IpAddr::V6(a) => {
                let m = u128::from(a) & mask128(prefix);
                (IpAddr::V6(Ipv6Addr::from(m)), m != u128::from(a))
            }
        };
        if set {
            return Err(CidrError::HostBits {
                text: text.to_owned(),
                suggested: format!("{masked}/{prefix}"),
            });
        }
        // ::ffff:a.b.c.d/96+n is the IPv4 range a.b.c.d/n.
        if let IpAddr::V6(a) = masked
            && prefix >= 96
            && u128::from(a) >> 32 == 0xffff
        {
            return Ok(Cidr {
                addr: IpAddr::V4(Ipv4Addr::from(u128::from(a) as u32)),
                prefix: prefix - 96,
            });
        }
        Ok(Cidr {
            addr: masked,
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ranges_and_bare_addresses() {
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(c(" 192.0.2.1 ").to_string(), "192.0.2.1/32");
        assert_eq!(c("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(c("::1").to_string(), "::1/128");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("::/0").to_string(), "::/0");
        assert_eq!(c("::ffff:192.168.0.0/112").to_string(), "192.168.0.0/16");
    }

    #[test]
    fn contains_checks_family_and_prefix() {
        let n = c("172.16.0.0/12");
        assert!(n.contains("172.16.0.0".parse().unwrap()));
        assert!(n.contains("172.31.255.255".parse().unwrap()));
        assert!(!n.contains("172.32.0.0".parse().unwrap()));
        assert!(!n.contains("::ffff:172.16.0.1".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(c("::/0").contains("2001:db8::1".parse().unwrap()));
        assert!(!c("::/0").contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_entries() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "host.example",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn host_bits_suggest_the_network() {
        let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("did you mean \"10.0.0.0/8\""), "{e}");
        let e = "2001:db8::1/32".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("2001:db8::/32"), "{e}");
    }
}
