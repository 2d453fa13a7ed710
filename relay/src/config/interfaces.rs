//! Which interfaces the XDP fast path attaches to when `xdp.interfaces` is empty: the
//! interfaces that own the listen addresses.
//!
//! Loopback is left out: XDP_TX on `lo` (generic mode only) is not a path clients on the
//! same host can rely on, so a loopback-only configuration runs userspace-only and the
//! daemon says how to enable the fast path on a real interface.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// The address.
    pub addr: IpAddr,
    /// IFF_LOOPBACK is set.
    pub loopback: bool,
}

/// The outcome of deriving interfaces from listen addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultInterfaces {
    /// Interfaces to attach to (no duplicates, in discovery order).
    pub interfaces: Vec<String>,
    /// Loopback interfaces that own a listen address but were left out.
    pub loopback_skipped: Vec<String>,
    /// Listen addresses no interface owns (the fast path cannot serve them).
    pub unowned: Vec<SocketAddr>,
}

/// Derives the interfaces from the system's addresses (getifaddrs).
pub fn default_interfaces(listen: &[SocketAddr]) -> io::Result<DefaultInterfaces> {
    Ok(choose(listen, &system_addresses()?))
}

/// Pure part of [`default_interfaces`]: an unspecified listen address (0.0.0.0 / ::)
/// selects every non-loopback interface with an address of that family; a specific one
/// selects the interface(s) owning it.
pub fn choose(listen: &[SocketAddr], addrs: &[IfAddr]) -> DefaultInterfaces {
    let mut out = DefaultInterfaces::default();
    for l in listen {
        let ip = l.ip();
        let owners: Vec<&IfAddr> = addrs
            .iter()
            .filter(|a| {
                if ip.is_unspecified() {
                    a.addr.is_ipv4() == ip.is_ipv4()
                } else {
                    a.addr == ip
                }
            })
            .collect();
        if owners.is_empty() {
            out.unowned.push(*l);
        }
        for a in owners {
            let list = if a.loopback {
                &mut out.loopback_skipped
            } else {
                &mut out.interfaces
            };
            if !list.contains(&a.name) {
                list.push(a.name.clone());
            }
        }
    }
    out
}

/// Every IPv4/IPv6 address of every interface, from getifaddrs(3).
pub fn system_addresses() -> io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into the pointer we pass; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, alive until
        // freeifaddrs below.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least sa_family.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let addr = match family {
            libc::AF_INET => {
                // SAFETY: family AF_INET means the storage is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6 means the storage is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push(IfAddr {
            name,
            addr,
            loopback: ifa.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0,
        });
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(name: &str, addr: &str, loopback: bool) -> IfAddr {
        IfAddr {
            name: name.into(),
            addr: addr.parse().unwrap(),
            loopback,
        }
    }

    fn sys() -> Vec<IfAddr> {
        vec![
            a("lo", "127.0.0.1", true),
            a("lo", "::1", true),
            a("eth0", "10.0.0.2", false),
            a("eth0", "fe80::1", false),
            a("veth-r", "10.99.0.1", false),
        ]
    }

    #[test]
    fn loopback_only_selects_nothing() {
        let d = choose(
            &[
                "127.0.0.1:3478".parse().unwrap(),
                "[::1]:3478".parse().unwrap(),
            ],
            &sys(),
        );
        assert!(d.interfaces.is_empty());
        assert_eq!(d.loopback_skipped, vec!["lo"]);
        assert!(d.unowned.is_empty());
    }

    #[test]
    fn specific_address_selects_owner() {
        let d = choose(&["10.99.0.1:3478".parse().unwrap()], &sys());
        assert_eq!(d.interfaces, vec!["veth-r"]);
    }

    #[test]
    fn unspecified_selects_all_of_family_without_loopback() {
        let d = choose(&["0.0.0.0:3478".parse().unwrap()], &sys());
        assert_eq!(d.interfaces, vec!["eth0", "veth-r"]);
        assert_eq!(d.loopback_skipped, vec!["lo"]);
        let d6 = choose(&["[::]:3478".parse().unwrap()], &sys());
        assert_eq!(d6.interfaces, vec!["eth0"]);
    }

    #[test]
    fn unowned_address_reported() {
        let d = choose(&["192.0.2.7:3478".parse().unwrap()], &sys());
        assert_eq!(d.unowned, vec!["192.0.2.7:3478".parse().unwrap()]);
    }

    #[test]
    fn system_has_loopback() {
        let all = system_addresses().expect("getifaddrs");
        assert!(
            all.iter().any(|x| x.loopback && x.addr.is_loopback()),
            "{all:?}"
        );
    }
}
