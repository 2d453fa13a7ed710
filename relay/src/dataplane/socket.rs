//! UDP sockets for the workers and socket-address conversion without allocation.
//!
//! Every worker binds its own socket per listen address with SO_REUSEPORT, so the kernel
//! spreads flows over the workers and no socket is shared between threads. IPv6 sockets
//! are v6-only so that an IPv4 and an IPv6 address can share a port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for (the kernel caps it at net.core.{r,w}mem_max).
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Binds one worker socket on `addr` (SO_REUSEPORT, v6-only for IPv6, large buffers).
/// Failing to enlarge the buffers is tolerated (logged at debug). On a wildcard address
/// the socket also reports each datagram's destination address (IP_PKTINFO /
/// IPV6_RECVPKTINFO), so that TURN knows the server half of the 5-tuple and answers from
/// the address the client used.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if addr.ip().is_unspecified() {
        let (level, opt) = if addr.is_ipv6() {
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
        } else {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        };
        let one: libc::c_int = 1;
        // SAFETY: passes a c_int option value of the right size to a socket we own.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                level,
                opt,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    socket.set_reuse_port(true)?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::debug!(%addr, error = %e, "cannot enlarge SO_RCVBUF; keeping the default");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::debug!(%addr, error = %e, "cannot enlarge SO_SNDBUF; keeping the default");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Bytes reserved for ancillary data (one IP_PKTINFO or IPV6_PKTINFO message, with room).
pub const CONTROL_LEN: usize = 64;

/// The destination address of a received datagram, from its IP_PKTINFO / IPV6_PKTINFO
/// control message (None if there is none).
pub fn pktinfo_destination(control: &[u8]) -> Option<IpAddr> {
    let hdr_len = std::mem::size_of::<libc::cmsghdr>();
    // SAFETY: CMSG_LEN is a pure computation on a length.
    let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
    let mut at = 0usize;
    while at + hdr_len <= control.len() {
        // SAFETY: `at + hdr_len` is within `control`; read_unaligned copes with any
        // alignment of the caller's buffer.
        let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control.as_ptr().add(at).cast()) };
        let len = h.cmsg_len as usize;
        if len < data_offset || at + len > control.len() {
            return None;
        }
        let data = &control[at + data_offset..at + len];
        if h.cmsg_level == libc::IPPROTO_IP
            && h.cmsg_type == libc::IP_PKTINFO
            && data.len() >= std::mem::size_of::<libc::in_pktinfo>()
        {
            // SAFETY: `data` holds at least one in_pktinfo; unaligned read.
            let info: libc::in_pktinfo = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
            return Some(IpAddr::V4(Ipv4Addr::from(
                info.ipi_addr.s_addr.to_ne_bytes(),
            )));
        }
        if h.cmsg_level == libc::IPPROTO_IPV6
            && h.cmsg_type == libc::IPV6_PKTINFO
            && data.len() >= std::mem::size_of::<libc::in6_pktinfo>()
        {
            // SAFETY: `data` holds at least one in6_pktinfo; unaligned read.
            let info: libc::in6_pktinfo = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
            return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
        }
        // SAFETY: CMSG_SPACE is a pure computation on a length.
        let step = unsafe { libc::CMSG_SPACE((len - data_offset) as u32) } as usize;
        at += step.max(data_offset);
    }
    None
}

/// Writes a control message asking the kernel to send from `source` (IP_PKTINFO /
/// IPV6_PKTINFO) into `buf`; returns its length, or 0 if `buf` is too small.
pub fn encode_pktinfo_source(source: IpAddr, buf: &mut [u8; CONTROL_LEN]) -> usize {
    let (level, kind, payload_len) = match source {
        IpAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            std::mem::size_of::<libc::in_pktinfo>(),
        ),
        IpAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            std::mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    // SAFETY: pure computations on lengths.
    let (len, space, data_offset) = unsafe {
        (
            libc::CMSG_LEN(payload_len as u32) as usize,
            libc::CMSG_SPACE(payload_len as u32) as usize,
            libc::CMSG_LEN(0) as usize,
        )
    };
    if space > buf.len() {
        return 0;
    }
    buf[..space].fill(0);
    // SAFETY: all-zero is a valid cmsghdr; fields are set below.
    let mut h: libc::cmsghdr = unsafe { std::mem::zeroed() };
    h.cmsg_len = len as _;
    h.cmsg_level = level;
    h.cmsg_type = kind;
    // SAFETY: the header fits in `buf` (space >= header size); unaligned write.
    unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast(), h) };
    match source {
        IpAddr::V4(ip) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            // SAFETY: data_offset + sizeof(in_pktinfo) = len <= space <= buf.len().
            unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(data_offset).cast(), info) };
        }
        IpAddr::V6(ip) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            // SAFETY: data_offset + sizeof(in6_pktinfo) = len <= space <= buf.len().
            unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(data_offset).cast(), info) };
        }
    }
    space
}

/// Size of a `sockaddr_in6`, the largest name the workers receive.
pub const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// Decodes a `sockaddr_in`/`sockaddr_in6` given as raw bytes (as the kernel wrote it).
#[inline]
pub fn decode_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope: [u8; 4] = name.get(24..28)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                u32::from_be_bytes(flow),
                u32::from_ne_bytes(scope),
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `storage` as a `sockaddr_in`/`sockaddr_in6`; returns its length.
#[inline]
pub fn encode_sockaddr(addr: &SocketAddr, storage: &mut libc::sockaddr_in6) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in (16 bytes) fits in sockaddr_in6 (28 bytes); both are
            // plain C structs and the write is unaligned-safe.
            unsafe {
                std::ptr::from_mut(storage)
                    .cast::<libc::sockaddr_in>()
                    .write_unaligned(sin);
            }
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            *storage = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The bytes of a `sockaddr_in6` storage (for decoding what the kernel wrote).
#[inline]
pub fn storage_bytes(storage: &libc::sockaddr_in6, len: libc::socklen_t) -> &[u8] {
    let len = (len as usize).min(NAME_LEN);
    // SAFETY: sockaddr_in6 is plain old data of NAME_LEN bytes; `len` is clamped to it.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(storage).cast::<u8>(), len) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn zeroed() -> libc::sockaddr_in6 {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn round_trip_v4_and_v6() {
        for a in [
            "192.0.2.1:3478",
            "[2001:db8::7]:65535",
            "[fe80::1%3]:1",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut s = zeroed();
            let len = encode_sockaddr(&addr, &mut s);
            assert_eq!(decode_sockaddr(storage_bytes(&s, len)), Some(addr), "{a}");
        }
    }

    #[test]
    fn garbage_names_decode_to_none() {
        assert_eq!(decode_sockaddr(&[]), None);
        assert_eq!(decode_sockaddr(&[2, 0, 0]), None);
        assert_eq!(decode_sockaddr(&[99, 0, 1, 2, 3, 4, 5, 6]), None);
        let mut v6 = [0u8; 20];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(decode_sockaddr(&v6), None, "too short for sockaddr_in6");
    }

    #[test]
    fn pktinfo_round_trip() {
        for ip in ["192.0.2.7", "2001:db8::9"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; CONTROL_LEN];
            let n = encode_pktinfo_source(ip, &mut buf);
            assert!(n > 0);
            // The encoder fills spec_dst / ipi6_addr; for IPv6 that is the same field the
            // receiver reads, for IPv4 the receiver reads ipi_addr (left zero).
            let got = pktinfo_destination(&buf[..n]);
            match ip {
                IpAddr::V6(_) => assert_eq!(got, Some(ip)),
                IpAddr::V4(_) => assert_eq!(got, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
            }
        }
        assert_eq!(pktinfo_destination(&[]), None);
        assert_eq!(pktinfo_destination(&[0xFF; 7]), None);
        assert_eq!(pktinfo_destination(&[0xFF; 40]), None);
    }

    #[test]
    fn wildcard_socket_reports_the_destination() {
        let s = bind_udp("0.0.0.0:0".parse().unwrap()).expect("bind");
        let port = s.local_addr().unwrap().port();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"x", ("127.0.0.1", port)).unwrap();
        let mut data = [0u8; 16];
        let mut control = [0u8; CONTROL_LEN];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = control.as_mut_ptr().cast();
        h.msg_controllen = CONTROL_LEN;
        // SAFETY: every pointer in `h` is live for the call.
        let n = unsafe { libc::recvmsg(std::os::fd::AsRawFd::as_raw_fd(&s), &mut h, 0) };
        assert_eq!(n, 1);
        assert_eq!(
            pktinfo_destination(&control[..h.msg_controllen]),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn v4_and_v6_share_a_port() {
        let v4 = bind_udp("127.0.0.1:0".parse().unwrap()).expect("bind v4");
        let port = v4.local_addr().unwrap().port();
        let second = bind_udp(SocketAddr::from(([127, 0, 0, 1], port))).expect("reuseport");
        assert_eq!(second.local_addr().unwrap().port(), port);
        if let Ok(v6) = bind_udp(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
            assert_eq!(v6.local_addr().unwrap().port(), port);
        }
    }
}
