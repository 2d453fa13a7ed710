//! UDP sockets for the workers and socket-address conversion without allocation.
//!
//! Every worker binds its own socket per listen address with SO_REUSEPORT, so the kernel
//! spreads flows over the workers and no socket is shared between threads. IPv6 sockets
//! are v6-only so that an IPv4 and an IPv6 address can share a port.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for (the kernel caps it at net.core.{r,w}mem_max).
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Binds one worker socket on `addr` (SO_REUSEPORT, v6-only for IPv6, large buffers).
/// Failing to enlarge the buffers is tolerated (logged at debug).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
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
