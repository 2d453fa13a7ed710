//! Which kernel driver an interface has (`ETHTOOL_GDRVINFO`), for the attach decisions
//! that depend on it.
//!
//! Why: native XDP on a veth works for receiving, but what the program sends back into a
//! veth (a STUN answer by XDP_TX, a TURN frame redirected there) is received only when
//! the veth's peer runs NAPI: an XDP program on the peer, or GRO turned on there
//! ([`super::features`] reads whether it does). Without it every such frame is dropped
//! (all 1 200 of a uclient run, measured). In generic mode the same frames are plain
//! transmits, which the peer always receives.

/// `SIOCETHTOOL`'s `ETHTOOL_GDRVINFO` command.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver's name of `interface` (as `ethtool -i` prints it), or None when the kernel
/// does not say (no such interface, a name too long, no ethtool support).
pub fn driver(interface: &str) -> Option<String> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` names the interface (NUL-terminated: the name is shorter than
    // IFNAMSIZ and the rest is zero) and points at `info`, a live ethtool_drvinfo the
    // kernel fills; both outlive the call.
    let r = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut req as *mut libc::ifreq) };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if r < 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// Whether `interface` is one end of a veth pair.
pub fn is_veth(interface: &str) -> bool {
    driver(interface).as_deref() == Some("veth")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_a_veth() {
        // Every namespace has `lo`; its driver answers (an empty name on some kernels).
        assert!(!is_veth("lo"));
    }

    #[test]
    fn bad_names_get_no_answer() {
        assert_eq!(driver(""), None);
        assert_eq!(driver("no-such-if-x9"), None);
        assert_eq!(driver("a-name-far-too-long-for-ifnamsiz"), None);
        assert_eq!(driver("nul\0inside"), None);
    }

    #[test]
    fn a_veth_is_named_one() {
        // Needs root, for a namespace of its own.
        if !crate::xdp::can_run_privileged("a_veth_is_named_one") {
            return;
        }
        let answer = crate::xdp::in_test_netns(
            "drv",
            &[&["add", "dv0", "type", "veth", "peer", "name", "dv1"]],
            || (is_veth("dv0"), is_veth("lo")),
        );
        assert_eq!(answer, Some((true, false)));
    }
}
