//! The portable socket layer: poll(2) for readability, then up to a batch of non-blocking
//! recv_from calls, and one send_to per datagram the engine sends. Works on every kernel
//! (and where io_uring is forbidden); the io_uring loop replaces it where it can.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::chores::Chores;
use super::tcp::{Routed, TcpMedia};
use super::{IoCounters, MAX_DATAGRAM_ROOM};
use crate::ice::Transport as IceTransport;
use crate::sfu::engine::{Arrival, Engine, Transmit};

/// Most datagrams handled between two looks at the timers and the command channel.
const BATCH: usize = 64;

struct SocketTx<'a> {
    socket: &'a UdpSocket,
    counters: &'a IoCounters,
}

impl Transmit for SocketTx<'_> {
    fn send(&mut self, data: &[u8], dest: SocketAddr) {
        if let Err(e) = self.socket.send_to(data, dest) {
            IoCounters::bump(&self.counters.send_errors);
            if !self
                .counters
                .send_error_logged
                .swap(true, Ordering::Relaxed)
            {
                tracing::warn!(error = %e, %dest, "SFU media send failed (later failures are only counted)");
            }
        }
    }
}

/// Runs until `stop` is set.
pub(super) fn run(
    socket: &UdpSocket,
    engine: &mut Engine,
    mut chores: Chores,
    mut tcp: Option<&mut TcpMedia>,
    local: SocketAddr,
    stop: &AtomicBool,
    counters: &IoCounters,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM_ROOM];
    while !stop.load(Ordering::Relaxed) {
        let tcp_work = tcp.as_ref().is_some_and(|t| t.has_work());
        let wait = if tcp_work {
            Duration::ZERO
        } else {
            chores.wait(engine)
        };
        let tcp_ready = wait_readable(socket, tcp.as_ref().map(|t| t.poll_fd()), wait);
        let mut udp = SocketTx { socket, counters };
        {
            let mut tx = Routed {
                udp: &mut udp,
                tcp: tcp.as_deref_mut().map(TcpMedia::conns),
                counters,
            };
            for _ in 0..BATCH {
                match socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        let at = Arrival {
                            source,
                            local,
                            via: IceTransport::Udp,
                            now: Instant::now(),
                        };
                        engine.handle_datagram(&mut buf, n, at, &mut tx);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // ICMP errors reported on the socket (a browser went away): not fatal.
                    Err(_) => continue,
                }
            }
        }
        if let Some(t) = tcp.as_deref_mut() {
            let now = Instant::now();
            if tcp_ready || tcp_work {
                t.service(engine, &mut udp, counters, now);
            }
            t.tick(counters, now);
        }
        let mut tx = Routed {
            udp: &mut udp,
            tcp: tcp.as_deref_mut().map(TcpMedia::conns),
            counters,
        };
        chores.run(engine, &mut tx);
    }
}

/// Waits until the socket (or the TCP epoll descriptor) is readable or `wait` passes;
/// whether the TCP descriptor is.
fn wait_readable(socket: &UdpSocket, tcp: Option<RawFd>, wait: Duration) -> bool {
    let mut pfd = [
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: tcp.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let nfds: libc::nfds_t = if tcp.is_some() { 2 } else { 1 };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(10).max(0);
    // SAFETY: `pfd` holds `nfds` valid pollfds for the duration of the call.
    unsafe {
        libc::poll(pfd.as_mut_ptr(), nfds, ms);
    }
    tcp.is_some() && pfd[1].revents != 0
}
