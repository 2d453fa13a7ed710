//! What the kernel says a device's XDP can do: the `xdp-features` of the netdev generic
//! netlink family (Linux 6.3 and later).
//!
//! Why: one flag there, `NDO_XMIT`, says whether a device takes XDP frames: the target of
//! a redirect from native XDP, and for a veth also what XDP_TX sends into it. A frame sent
//! to a device without it is dropped. For a veth the kernel sets it while the veth's peer
//! can receive such frames (an XDP program in native mode on the peer, or GRO on there),
//! which the daemon cannot see directly when the peer is in another namespace. A NIC with
//! native XDP may lack it too (no `ndo_xdp_xmit`).

/// `NETDEV_XDP_ACT_NDO_XMIT` (linux/netdev.h).
pub const XDP_ACT_NDO_XMIT: u64 = 4;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// nlmsghdr (16 bytes) + genlmsghdr (4 bytes).
const HEADERS: usize = 20;

/// The `xdp-features` bits of the interface with index `ifindex`, or None when the kernel
/// does not say (no netdev family before 6.3, no such interface, an unexpected answer).
pub fn xdp_features(ifindex: u32) -> Option<u64> {
    let sock = Netlink::open()?;
    let family = sock.ask(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
        1,
    )?;
    let id = find_attr(&family, CTRL_ATTR_FAMILY_ID)?;
    let id = u16::from_ne_bytes(id.get(..2)?.try_into().ok()?);
    let dev = sock.ask(
        id,
        NETDEV_CMD_DEV_GET,
        &attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
        2,
    )?;
    let f = find_attr(&dev, NETDEV_A_DEV_XDP_FEATURES)?;
    Some(u64::from_ne_bytes(f.get(..8)?.try_into().ok()?))
}

/// Whether `interface` takes XDP frames (`NDO_XMIT`); None when the kernel does not say.
pub fn takes_xdp_frames(interface: &str) -> Option<bool> {
    let ifindex = crate::xdp::fib::ifindex(interface).ok()?;
    xdp_features(ifindex).map(|f| f & XDP_ACT_NDO_XMIT != 0)
}

/// One netlink attribute: length, type, value, padded to 4 bytes.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// The value of the first attribute of type `kind` in `attrs` (nested flag bits masked).
fn find_attr(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    let mut rest = attrs;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let t = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if t == kind {
            return Some(&rest[4..len]);
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    None
}

/// A generic netlink socket, closed on drop.
struct Netlink(libc::c_int);

impl Netlink {
    fn open() -> Option<Netlink> {
        // SAFETY: plain socket call; the descriptor is owned by the Netlink returned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return None;
        }
        let sock = Netlink(fd);
        // An answer comes at once or not at all; never wait long for it.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a live timeval of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        (r == 0).then_some(sock)
    }

    /// Sends one request (`cmd` of family `family`, version 1, with `attrs`) and returns
    /// the attributes of its answer; None on an error answer or anything unexpected.
    fn ask(&self, family: u16, cmd: u8, attrs: &[u8], seq: u32) -> Option<Vec<u8>> {
        let len = HEADERS + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        msg.extend_from_slice(&[cmd, 1, 0, 0]);
        msg.extend_from_slice(attrs);
        // SAFETY: `msg` is a live buffer of the length given.
        let sent = unsafe { libc::send(self.0, msg.as_ptr().cast(), msg.len(), 0) };
        if sent != msg.len() as isize {
            return None;
        }
        let mut buf = vec![0u8; 8192];
        // SAFETY: `buf` is a live, writable buffer of the length given.
        let got = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let got = usize::try_from(got).ok()?;
        let answer = buf.get(..got)?;
        let len = u32::from_ne_bytes(answer.get(..4)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
        let answer_seq = u32::from_ne_bytes(answer.get(8..12)?.try_into().ok()?);
        if kind == NLMSG_ERROR || kind != family || answer_seq != seq || len > answer.len() {
            return None;
        }
        answer.get(HEADERS..len).map(<[u8]>::to_vec)
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_found() {
        let mut all = attr(7, b"abc");
        assert_eq!(all.len(), 8);
        all.extend(attr(3, &42u64.to_ne_bytes()));
        assert_eq!(find_attr(&all, 7), Some(&b"abc"[..]));
        assert_eq!(find_attr(&all, 3), Some(&42u64.to_ne_bytes()[..]));
        assert_eq!(find_attr(&all, 9), None);
    }

    #[test]
    fn malformed_attributes_get_no_answer() {
        assert_eq!(find_attr(&[], 1), None);
        assert_eq!(find_attr(&[3, 0, 1, 0], 1), None, "length below the header");
        assert_eq!(find_attr(&[40, 0, 1, 0, 0], 1), None, "length past the end");
    }

    #[test]
    fn loopback_takes_no_xdp_frames() {
        // Every namespace has `lo`; None only on kernels without the netdev family.
        assert_ne!(takes_xdp_frames("lo"), Some(true));
        assert_eq!(takes_xdp_frames("no-such-if-x9"), None);
    }

    #[test]
    fn a_veth_takes_xdp_frames_once_its_peer_can_receive_them() {
        let test = "a_veth_takes_xdp_frames_once_its_peer_can_receive_them";
        if !crate::xdp::can_run_privileged(test) {
            return;
        }
        let answer = crate::xdp::in_test_netns(
            "feat",
            &[
                &["add", "fv0", "type", "veth", "peer", "name", "fv1"],
                &["set", "fv0", "up"],
                &["set", "fv1", "up"],
            ],
            || {
                let before = takes_xdp_frames("fv0");
                let gro = std::process::Command::new("ethtool")
                    .args(["-K", "fv1", "gro", "on"])
                    .status()
                    .is_ok_and(|s| s.success());
                (
                    before,
                    gro,
                    takes_xdp_frames("fv0"),
                    takes_xdp_frames("fv1"),
                )
            },
        );
        assert_eq!(
            answer,
            Some((Some(false), true, Some(true), Some(false))),
            "(fv0 before, GRO turned on on fv1, fv0 after, fv1 after)"
        );
    }
}
