//! `relay-bench socket-floor`: the least work a ChannelData relay built on kernel UDP
//! sockets can do, path (e) of the four-way bench (`turn-xdp`).
//!
//! It receives batches from one socket (`recvmmsg`, up to [`BATCH`] datagrams per call),
//! strips the 4-byte ChannelData header of each, and sends the payloads in one
//! `sendmmsg` from a second socket to one fixed peer: no allocation, no permission or
//! channel lookup, no authentication, no per-allocation socket. What it costs per packet
//! is what the kernel's UDP receive and send paths cost, so the io_uring path (b) and
//! coturn (c) can be read against it the way the XDP path is read against the XDP floor
//! (d): a userspace relay on kernel sockets cannot be cheaper per packet than this.

use std::{
    io::Write,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result, ensure};
use clap::Args;
use socket2::SockRef;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Bytes per receive buffer (larger datagrams are truncated and dropped).
const BUF: usize = 2048;
/// Receive buffer of the listening socket, as the relay's data path sets it.
const RCVBUF: usize = 8 << 20;

#[derive(Args, Debug, Clone)]
pub struct SocketFloorArgs {
    /// Where clients send ChannelData (the relay's listen address).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where the payloads leave from (the relay's peer-side address; port 0 = any).
    #[arg(long)]
    pub source: SocketAddr,
    /// The one peer every payload goes to.
    #[arg(long)]
    pub peer: SocketAddr,
}

/// The ChannelData payload of `d`: `None` unless the channel number is in 0x4000–0x7FFF
/// and the length field fits the datagram (padding after it is allowed).
pub fn channel_payload(d: &[u8]) -> Option<&[u8]> {
    let (h, rest) = d.split_first_chunk::<4>()?;
    if !(0x40..0x80).contains(&h[0]) {
        return None;
    }
    rest.get(..usize::from(u16::from_be_bytes([h[2], h[3]])))
}

/// Runs the forwarder until the process is killed; prints `ready` once both sockets are
/// bound (the bench waits for that line).
pub fn run(args: &SocketFloorArgs) -> Result<()> {
    let rx = UdpSocket::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    if let Err(e) = SockRef::from(&rx).set_recv_buffer_size(RCVBUF) {
        eprintln!("warning: SO_RCVBUF {RCVBUF}: {e}");
    }
    let tx = UdpSocket::bind(args.source).with_context(|| format!("bind {}", args.source))?;
    tx.connect(args.peer)
        .with_context(|| format!("connect to {}", args.peer))?;
    println!("ready");
    std::io::stdout().flush()?;

    let mut bufs = vec![[0u8; BUF]; BATCH];
    // SAFETY: iovec and mmsghdr are plain data; every pointer is set below before use.
    let mut rx_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above.
    let mut rx_hdr: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above.
    let mut tx_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above.
    let mut tx_hdr: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for (i, b) in bufs.iter_mut().enumerate() {
        rx_iov[i] = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        };
    }
    for i in 0..BATCH {
        rx_hdr[i].msg_hdr.msg_iov = &mut rx_iov[i];
        rx_hdr[i].msg_hdr.msg_iovlen = 1;
        tx_hdr[i].msg_hdr.msg_iov = &mut tx_iov[i];
        tx_hdr[i].msg_hdr.msg_iovlen = 1;
    }
    let (rfd, tfd) = (rx.as_raw_fd(), tx.as_raw_fd());
    loop {
        // SAFETY: `rx_hdr` holds BATCH headers, each pointing at its own iovec over a
        // BUF-byte buffer that lives for the whole loop.
        let n = unsafe {
            libc::recvmmsg(
                rfd,
                rx_hdr.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            ensure!(e.kind() == std::io::ErrorKind::Interrupted, "recvmmsg: {e}");
            continue;
        }
        let mut out = 0;
        for i in 0..n as usize {
            let len = (rx_hdr[i].msg_len as usize).min(BUF);
            if let Some(p) = channel_payload(&bufs[i][..len]) {
                tx_iov[out] = libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                };
                out += 1;
            }
        }
        let mut sent = 0;
        while sent < out {
            // SAFETY: the first `out` headers point at iovecs over payloads inside
            // `bufs`, unchanged until the next recvmmsg.
            let m =
                unsafe { libc::sendmmsg(tfd, tx_hdr[sent..].as_mut_ptr(), (out - sent) as u32, 0) };
            if m <= 0 {
                // A full send buffer or an ICMP error from the peer: drop the rest of
                // the batch, as a relay would.
                break;
            }
            sent += m as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::channel_payload;

    #[test]
    fn payload_of_channel_data_only() {
        assert_eq!(
            channel_payload(&[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0]),
            Some(&[1u8, 2, 3][..])
        );
        assert_eq!(channel_payload(&[0x7f, 0xff, 0x00, 0x00]), Some(&[][..]));
        // Length beyond the datagram, STUN, and runts are not relayed.
        assert_eq!(channel_payload(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3]), None);
        assert_eq!(channel_payload(&[0x00, 0x01, 0x00, 0x00]), None);
        assert_eq!(channel_payload(&[0x40, 0x00, 0x00]), None);
    }
}
