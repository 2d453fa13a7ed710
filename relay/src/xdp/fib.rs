//! Where the TURN fast path's `bpf_fib_lookup` looks routes up, without making the host
//! a router on its real interfaces.
//!
//! Why: the kernel's FIB helper answers `FWD_DISABLED` unless IP forwarding is on for
//! the interface named in the lookup (`params.ifindex`; `BPF_FIB_LOOKUP_OUTPUT` does not
//! avoid that check on 6.18). Turning forwarding on for the interfaces the relay listens
//! on would make the host route anything that arrives there. Instead the daemon names
//! one interface, `xdp.fib_interface` (default `lo`), enables forwarding on THAT
//! interface only, and writes its ifindex into `TurnSettings::fib_ifindex`: the program
//! looks routes up as if the frame had arrived on `lo`, and uses the result's egress
//! interface and MACs (the real routes and neighbours of the egress interface).
//!
//! Why that is safe: `lo` only carries traffic the host generated itself, and its
//! packets are addressed to the host, so forwarding on `lo` lets nothing new be routed
//! through the host; the real interfaces keep `forwarding = 0`.
//!
//! Limits: policy routing rules that select on the input interface (`ip rule ... iif`)
//! see `lo`, not the interface the frame arrived on; reverse-path filtering is not
//! applied to the lookup; the next-hop cache keys on destination and source address
//! only, so rules selecting on TOS or ports are not modelled.

use std::{ffi::CString, path::PathBuf};

/// Why the lookup interface cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FibError {
    /// The name is not an interface of this network namespace.
    #[error("xdp.fib_interface: no interface named {0:?} (see `ip link`)")]
    NoSuchInterface(String),
    /// Writing the forwarding sysctl failed.
    #[error("xdp.fib_interface: cannot enable forwarding on {iface:?} ({path}): {source}")]
    Sysctl {
        /// The interface.
        iface: String,
        /// The sysctl file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The ifindex of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, FibError> {
    let c = CString::new(name).map_err(|_| FibError::NoSuchInterface(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(FibError::NoSuchInterface(name.to_owned()));
    }
    Ok(i)
}

/// The IPv4 and IPv6 forwarding sysctl files of `name`.
pub fn forwarding_paths(name: &str) -> [PathBuf; 2] {
    [
        PathBuf::from(format!("/proc/sys/net/ipv4/conf/{name}/forwarding")),
        PathBuf::from(format!("/proc/sys/net/ipv6/conf/{name}/forwarding")),
    ]
}

/// Enables IPv4 and IPv6 forwarding on `name` only, and returns its ifindex: the value
/// for `TurnSettings::fib_ifindex`.
pub fn prepare(name: &str) -> Result<u32, FibError> {
    let idx = ifindex(name)?;
    for path in forwarding_paths(name) {
        std::fs::write(&path, b"1").map_err(|source| FibError::Sysctl {
            iface: name.to_owned(),
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_and_unknown_names_are_named() {
        assert!(ifindex("lo").expect("lo exists") > 0);
        let e = ifindex("nosuchif0").expect_err("no such interface");
        assert!(e.to_string().contains("xdp.fib_interface"), "{e}");
        assert!(ifindex("bad\0name").is_err());
        let [v4, v6] = forwarding_paths("lo");
        assert_eq!(v4, PathBuf::from("/proc/sys/net/ipv4/conf/lo/forwarding"));
        assert_eq!(v6, PathBuf::from("/proc/sys/net/ipv6/conf/lo/forwarding"));
    }
}
