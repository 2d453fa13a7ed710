//! The STUN Binding load generator: N connected UDP sockets (N source ports), batched
//! `sendmmsg`/`recvmmsg`, one thread, paced to a target rate or closed-loop "as fast as
//! possible" with a bounded number of requests in flight.
//!
//! The send time travels in the transaction id (bytes 0..8, nanoseconds since the start),
//! so an answer alone gives its round-trip time: no per-request table, no allocation in
//! the loop. Answers are checked (Binding success, magic cookie, a transaction id we
//! could have sent) before they count.

use std::{
    mem::MaybeUninit,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::json;

/// Settings of one load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The STUN server to load (ip:port).
    #[arg(long)]
    pub target: SocketAddr,
    /// Number of client sockets (distinct source ports).
    #[arg(long, default_value_t = 64)]
    pub sockets: usize,
    /// Requests per second in total; 0 = as fast as possible (closed loop, see --window).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per sendmmsg/recvmmsg call.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Most requests in flight (sent, not answered); lost ones are written off after
    /// 20 ms without any answer.
    #[arg(long, default_value_t = 1024)]
    pub window: u64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    pub sent: u64,
    pub answered: u64,
    pub invalid: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
}

impl Summary {
    pub fn answers_per_sec(&self) -> f64 {
        self.answered as f64 / self.seconds
    }
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * (self.sent.saturating_sub(self.answered)) as f64 / self.sent as f64
    }
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "sent": self.sent,
            "answered": self.answered,
            "invalid": self.invalid,
            "seconds": self.seconds,
            "answers_per_sec": self.answers_per_sec(),
            "loss_pct": self.loss_pct(),
            "rtt_us": {
                "p50": self.quantile_us(0.5),
                "p90": self.quantile_us(0.9),
                "p99": self.quantile_us(0.99),
                "p999": self.quantile_us(0.999),
                "max": self.hist.max() as f64 / 1000.0,
            }
        })
    }
}

const MAGIC: u32 = 0x2112_A442;
const MAX_BATCH: usize = 256;
const BUF: usize = 128;

fn request(out: &mut [u8; 20], sent_ns: u64, sock: u16, seq: u16) {
    out[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    out[2..4].copy_from_slice(&0u16.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    out[16..18].copy_from_slice(&sock.to_be_bytes());
    out[18..20].copy_from_slice(&seq.to_be_bytes());
}

/// The send time carried by a valid answer, if it is one.
fn answer_sent_ns(msg: &[u8], sock: u16, now_ns: u64) -> Option<u64> {
    if msg.len() < 20
        || msg[0..2] != 0x0101u16.to_be_bytes()
        || msg[4..8] != MAGIC.to_be_bytes()
        || msg[16..18] != sock.to_be_bytes()
    {
        return None;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&msg[8..16]);
    let sent = u64::from_be_bytes(t);
    (sent <= now_ns).then_some(sent)
}

struct Batch {
    bufs: Vec<[u8; BUF]>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(n: usize) -> Batch {
        let mut b = Batch {
            bufs: vec![[0u8; BUF]; n],
            iov: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
        };
        for buf in &mut b.bufs {
            b.iov.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: BUF,
            });
        }
        for iov in &mut b.iov {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(h);
        }
        b
    }
}

fn is_would_block(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR)
    )
}

/// Runs the load and returns what it measured; prints a progress line every second.
pub fn run(args: &LoadArgs) -> Result<Summary> {
    if args.sockets == 0 || args.sockets > u16::MAX as usize {
        bail!("--sockets must be 1..=65535");
    }
    let batch = args.batch.clamp(1, MAX_BATCH);
    let bind: SocketAddr = if args.target.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut sockets = Vec::with_capacity(args.sockets);
    for _ in 0..args.sockets {
        let s = UdpSocket::bind(bind).context("bind a client socket")?;
        s.connect(args.target)
            .with_context(|| format!("connect to {}", args.target))?;
        s.set_nonblocking(true)?;
        let s2 = socket2::SockRef::from(&s);
        let _ = s2.set_recv_buffer_size(1 << 20);
        let _ = s2.set_send_buffer_size(1 << 20);
        sockets.push(s);
    }
    // SAFETY: epoll_create1 has no preconditions; the result is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: `ep` is a fresh fd we own.
    let _ep_guard = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ep) };
    for (i, s) in sockets.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: valid epoll fd, valid socket fd, valid event pointer.
        let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_ctl");
        }
    }

    let mut tx = Batch::new(batch);
    let mut rx = Batch::new(MAX_BATCH);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; args.sockets.min(256)];
    let mut hist =
        Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3).context("histogram bounds")?;
    let mut progress = hist.clone();

    let start = Instant::now();
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let drain = Duration::from_millis(300);
    let (mut sent, mut answered, mut invalid, mut written_off) = (0u64, 0u64, 0u64, 0u64);
    let mut rr = 0usize;
    let mut seq = 0u16;
    let mut last_answer = start;
    let mut next_report = Duration::from_secs(1);
    let (mut rep_sent, mut rep_ans) = (0u64, 0u64);
    let mut sending_until = duration;

    loop {
        let elapsed = start.elapsed();
        if elapsed >= sending_until + drain {
            break;
        }
        let sending = elapsed < sending_until;
        // How many to send now.
        let mut n = 0usize;
        if sending {
            let allowed = if args.rate > 0 {
                let due = (args.rate as f64 * elapsed.as_secs_f64()) as u64;
                due.saturating_sub(sent)
            } else {
                u64::MAX
            };
            // Saturating: requests written off as lost may still be answered later.
            let inflight = sent.saturating_sub(answered).saturating_sub(written_off);
            let room = args.window.saturating_sub(inflight);
            n = (batch as u64).min(allowed).min(room) as usize;
            if room == 0 && last_answer.elapsed() > Duration::from_millis(20) {
                written_off += inflight;
                last_answer = Instant::now();
            }
        }
        if n > 0 {
            let now_ns = start.elapsed().as_nanos() as u64;
            let sock = rr % sockets.len();
            rr = rr.wrapping_add(1);
            for i in 0..n {
                let mut req = [0u8; 20];
                request(&mut req, now_ns, sock as u16, seq);
                seq = seq.wrapping_add(1);
                tx.bufs[i][..20].copy_from_slice(&req);
                tx.iov[i].iov_len = 20;
            }
            // SAFETY: the headers point at iovecs and buffers owned by `tx`, alive
            // for the call; `n` <= their length.
            let rc = unsafe {
                libc::sendmmsg(
                    sockets[sock].as_raw_fd(),
                    tx.hdrs.as_mut_ptr(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if !is_would_block(&e) && e.raw_os_error() != Some(libc::ECONNREFUSED) {
                    return Err(e).context("sendmmsg");
                }
            } else {
                sent += rc as u64;
            }
        }
        // Collect answers. Paced runs spin (the generator has its own CPU) so that sends
        // leave on time, one or a few at a time, instead of in bursts after a 1 ms sleep
        // that would show up as queueing in the RTT. Closed-loop runs sleep until an
        // answer arrives when the window is full.
        let timeout = if n > 0 || args.rate > 0 { 0 } else { 1 };
        // SAFETY: `events` is a valid buffer of the given length.
        let ready =
            unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout) };
        for ev in events.iter().take(ready.max(0) as usize) {
            let idx = ev.u64 as usize;
            let Some(s) = sockets.get(idx) else { continue };
            loop {
                for i in 0..MAX_BATCH {
                    rx.iov[i].iov_len = BUF;
                    rx.hdrs[i].msg_len = 0;
                }
                // SAFETY: headers point at rx's iovecs and buffers, valid for the call.
                let rc = unsafe {
                    libc::recvmmsg(
                        s.as_raw_fd(),
                        rx.hdrs.as_mut_ptr(),
                        MAX_BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if rc <= 0 {
                    break;
                }
                let now_ns = start.elapsed().as_nanos() as u64;
                for i in 0..rc as usize {
                    let len = (rx.hdrs[i].msg_len as usize).min(BUF);
                    match answer_sent_ns(&rx.bufs[i][..len], idx as u16, now_ns) {
                        Some(t) => {
                            answered += 1;
                            let rtt = (now_ns - t).max(100);
                            let _ = hist.record(rtt);
                            let _ = progress.record(rtt);
                        }
                        None => invalid += 1,
                    }
                }
                last_answer = Instant::now();
                if (rc as usize) < MAX_BATCH {
                    break;
                }
            }
        }
        if elapsed >= next_report && sending {
            eprintln!(
                "[{:>4.0}s] sent {:>9}/s  answers {:>9}/s  loss {:>5.1}%  rtt p50 {:>7.1}us p99 {:>8.1}us",
                elapsed.as_secs_f64(),
                sent - rep_sent,
                answered - rep_ans,
                if sent > rep_sent {
                    100.0 * (sent - rep_sent).saturating_sub(answered - rep_ans) as f64
                        / (sent - rep_sent) as f64
                } else {
                    0.0
                },
                progress.value_at_quantile(0.5) as f64 / 1000.0,
                progress.value_at_quantile(0.99) as f64 / 1000.0,
            );
            progress.reset();
            rep_sent = sent;
            rep_ans = answered;
            next_report += Duration::from_secs(1);
        }
        if !sending && sent == answered {
            sending_until = Duration::ZERO; // all answered: stop draining at once
        }
    }
    Ok(Summary {
        sent,
        answered,
        invalid,
        seconds: duration.as_secs_f64(),
        hist,
    })
}

/// Sends one Binding request every 100 ms until one is answered or `timeout` passes.
pub fn probe(target: SocketAddr, timeout: Duration) -> Result<Duration> {
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let mut n = 0u16;
    while start.elapsed() < timeout {
        let mut req = [0u8; 20];
        request(&mut req, 0, 0xffff, n);
        n = n.wrapping_add(1);
        let _ = s.send(&req);
        if let Ok(len) = s.recv(&mut buf)
            && answer_sent_ns(&buf[..len], 0xffff, 0).is_some()
        {
            return Ok(start.elapsed());
        }
    }
    bail!("no STUN answer from {target} within {timeout:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_carries_send_time() {
        let mut req = [0u8; 20];
        request(&mut req, 123_456, 7, 9);
        let mut ans = req;
        ans[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        assert_eq!(answer_sent_ns(&ans, 7, 200_000), Some(123_456));
        assert_eq!(answer_sent_ns(&ans, 8, 200_000), None, "other socket");
        assert_eq!(answer_sent_ns(&req, 7, 200_000), None, "a request");
        assert_eq!(answer_sent_ns(&ans[..19], 7, 200_000), None, "truncated");
        assert_eq!(answer_sent_ns(&ans, 7, 1), None, "from the future");
    }
}
