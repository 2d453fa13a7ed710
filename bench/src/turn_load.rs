//! The TURN ChannelData generator and sink: many allocations (one UDP socket each, so
//! many 5-tuples), each with a channel bound to one sink address in the peer namespace,
//! then ChannelData at a paced total rate, round-robin over the allocations.
//!
//! The handshakes use the relay's own STUN builder and long-term key (Allocate → 401 →
//! Allocate with MESSAGE-INTEGRITY; ChannelBind), so the generator speaks exactly what
//! any RFC 8656 client would, and the same run works against coturn.
//!
//! The sink is a thread of this process that has entered the peer namespace: sender and
//! sink read the same clock (nanoseconds since one `Instant`), so each payload's send
//! time gives its one-way latency through the relay. Payload: magic, allocation index,
//! sequence number, send time.

use std::{
    fs::File,
    mem::MaybeUninit,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;
use relay::{
    stun::{Attribute, Class, Message, MessageBuilder, MessageType, TransactionId, attr},
    turn::{
        attrs::{self, method},
        auth::{PasswordAlgorithm, long_term_key},
    },
};
use serde_json::json;

/// Settings of one TURN load run.
#[derive(Debug, Clone, clap::Args)]
pub struct TurnLoadArgs {
    /// The TURN server (UDP).
    #[arg(long)]
    pub server: SocketAddr,
    /// Where the sink listens (inside --sink-netns); every channel is bound to it.
    #[arg(long)]
    pub sink: SocketAddr,
    /// Network namespace of the sink (a name under /run/netns); none: this one.
    #[arg(long)]
    pub sink_netns: Option<String>,
    /// Allocations (client sockets), each with one channel to the sink.
    #[arg(long, default_value_t = 200)]
    pub allocations: usize,
    /// Long-term credential user name.
    #[arg(long, default_value = "u")]
    pub user: String,
    /// Its password.
    #[arg(long, default_value = "p")]
    pub password: String,
    /// ChannelData messages per second in total.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Application bytes per ChannelData message (at least 24).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Bind the client sockets to consecutive ports from this one (0: ephemeral ports).
    /// Successive runs use fresh ports: coturn keeps a deleted allocation's 5-tuple for a
    /// while and answers 437 to a new Allocate from it.
    #[arg(long, default_value_t = 0)]
    pub first_port: u16,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

const MAGIC: u32 = 0x7475_726e; // "turn"
const CHANNEL: u16 = 0x4000;
const BATCH: usize = 32;
const MAX_SIZE: usize = 1400;

/// What one run measured.
#[derive(Debug)]
pub struct TurnSummary {
    pub sent: u64,
    pub received: u64,
    pub invalid: u64,
    pub seconds: f64,
    pub setup_seconds: f64,
    pub hist: Histogram<u64>,
}

impl TurnSummary {
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 100.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }
    pub fn to_json(&self, args: &TurnLoadArgs) -> serde_json::Value {
        let q = |x: f64| self.hist.value_at_quantile(x) as f64 / 1000.0;
        json!({
            "allocations": args.allocations,
            "rate": args.rate,
            "size": args.size,
            "sent": self.sent,
            "received": self.received,
            "invalid": self.invalid,
            "seconds": self.seconds,
            "setup_seconds": self.setup_seconds,
            "received_per_sec": self.received as f64 / self.seconds,
            "loss_pct": self.loss_pct(),
            "latency_us": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": self.hist.max() as f64 / 1000.0,
            }
        })
    }
}

fn txid(alloc: usize, step: u8, attempt: u8) -> TransactionId {
    let mut t = [0u8; 12];
    t[0..4].copy_from_slice(&0x6265_6e63u32.to_be_bytes());
    t[4..8].copy_from_slice(&(alloc as u32).to_be_bytes());
    t[8] = step;
    t[9] = attempt;
    t[10..12].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
    TransactionId(t)
}

pub(crate) struct Auth {
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: Vec<u8>,
}

/// Builds a TURN request; `auth` adds USERNAME/REALM/NONCE/MESSAGE-INTEGRITY.
fn request(
    buf: &mut [u8],
    m: u16,
    tid: TransactionId,
    user: &str,
    auth: Option<&Auth>,
    extra: &[(u16, &[u8])],
) -> Result<usize> {
    let mut b = MessageBuilder::new(buf, MessageType::new(method::m(m), Class::Request), tid)?;
    for (t, v) in extra {
        b.add(&Attribute::Other {
            attr_type: *t,
            value: v,
        })?;
    }
    if let Some(a) = auth {
        b.add(&Attribute::Username(user.as_bytes()))?;
        b.add(&Attribute::Realm(&a.realm))?;
        b.add(&Attribute::Nonce(&a.nonce))?;
        b.add_message_integrity(&a.key)?;
    }
    Ok(b.finish())
}

/// Sends `req` and waits for the answer with the same transaction id (3 tries).
fn transact<'a>(sock: &UdpSocket, req: &[u8], buf: &'a mut [u8]) -> Result<&'a [u8]> {
    for _ in 0..3 {
        sock.send(req).context("send a request")?;
        let deadline = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < deadline {
            match sock.recv(buf) {
                Ok(n) if n >= 20 && buf[8..20] == req[8..20] => return Ok(&buf[..n]),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("receive an answer"),
            }
        }
    }
    bail!("no answer from the server after 3 tries")
}

/// Sends `req` once and waits up to `wait` for the answer with its transaction id.
fn transact_once<'a>(
    sock: &UdpSocket,
    req: &[u8],
    buf: &'a mut [u8],
    wait: Duration,
) -> Result<&'a [u8]> {
    sock.send(req).context("send a request")?;
    let deadline = Instant::now() + wait;
    let mut len = None;
    while Instant::now() < deadline {
        match sock.recv(buf) {
            Ok(n) if n >= 20 && buf[8..20] == req[8..20] => {
                len = Some(n);
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receive an answer"),
        }
    }
    let n = len.context("no answer in time")?;
    Ok(&buf[..n])
}

fn error_code(msg: &Message<'_>) -> Option<u16> {
    match msg.get(attr::ERROR_CODE).ok()? {
        Some(Attribute::ErrorCode(e)) => Some(e.code),
        _ => None,
    }
}

fn text_attr(msg: &Message<'_>, t: u16) -> Option<Vec<u8>> {
    msg.attributes()
        .filter_map(|a| a.ok())
        .find(|a| a.attr_type == t)
        .map(|a| a.value.to_vec())
}

/// Allocate (with the 401/438 dance) and ChannelBind `CHANNEL` → `sink` on one socket.
/// `auth` carries the realm and nonce learnt so far across allocations.
fn handshake(
    sock: &UdpSocket,
    idx: usize,
    args: &TurnLoadArgs,
    auth: &mut Option<Auth>,
) -> Result<SocketAddr> {
    let mut out = [0u8; 512];
    let mut inb = [0u8; 1500];
    let transport = [attrs::PROTO_UDP, 0, 0, 0];
    let mut relayed = None;
    for attempt in 0..4u8 {
        let n = request(
            &mut out,
            method::ALLOCATE,
            txid(idx, 1, attempt),
            &args.user,
            auth.as_ref(),
            &[(attrs::REQUESTED_TRANSPORT, &transport)],
        )?;
        let ans = transact(sock, &out[..n], &mut inb)?;
        let msg = Message::parse(ans).context("the Allocate answer is not STUN")?;
        if msg.class() == Class::SuccessResponse {
            let v = text_attr(&msg, attrs::XOR_RELAYED_ADDRESS)
                .context("Allocate success without XOR-RELAYED-ADDRESS")?;
            relayed = attrs::decode_xor_address(&v, msg.transaction_id());
            break;
        }
        match error_code(&msg) {
            Some(401 | 438) => {
                let realm = text_attr(&msg, attr::REALM).context("401 without REALM")?;
                let nonce = text_attr(&msg, attr::NONCE).context("401 without NONCE")?;
                let key = long_term_key(
                    PasswordAlgorithm::Md5,
                    args.user.as_bytes(),
                    &realm,
                    args.password.as_bytes(),
                )
                .as_bytes()
                .to_vec();
                *auth = Some(Auth { realm, nonce, key });
            }
            code => bail!("Allocate refused: error {code:?}"),
        }
    }
    let relayed = relayed.context("Allocate did not succeed after 4 tries")?;
    let mut peer = [0u8; attrs::XOR_ADDRESS_MAX];
    for attempt in 0..3u8 {
        let tid = txid(idx, 2, attempt);
        let plen = attrs::encode_xor_address(args.sink, &tid, &mut peer);
        let chan = [(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0];
        let n = request(
            &mut out,
            method::CHANNEL_BIND,
            tid,
            &args.user,
            auth.as_ref(),
            &[
                (attrs::CHANNEL_NUMBER, &chan),
                (attrs::XOR_PEER_ADDRESS, &peer[..plen]),
            ],
        )?;
        let ans = transact(sock, &out[..n], &mut inb)?;
        let msg = Message::parse(ans).context("the ChannelBind answer is not STUN")?;
        if msg.class() == Class::SuccessResponse {
            return Ok(relayed);
        }
        match (error_code(&msg), auth.as_mut()) {
            (Some(438), Some(a)) => {
                a.nonce = text_attr(&msg, attr::NONCE).context("438 without NONCE")?;
            }
            (code, _) => bail!("ChannelBind refused: error {code:?}"),
        }
    }
    bail!("ChannelBind did not succeed after 3 tries")
}

/// Deletes every allocation (Refresh with LIFETIME 0), as a well-behaved client does, so
/// that the next run's sockets (the kernel may hand out the same ports) do not meet 437
/// Allocation Mismatch. A 438 (coturn's nonces belong to one 5-tuple) is retried with the
/// new nonce. Best effort, bounded: two tries per allocation.
pub(crate) fn release(socks: &[UdpSocket], args: &TurnLoadArgs, auth: Option<&Auth>) {
    let Some(auth) = auth else { return };
    let mut a = Auth {
        realm: auth.realm.clone(),
        nonce: auth.nonce.clone(),
        key: auth.key.clone(),
    };
    let mut out = [0u8; 512];
    let mut inb = [0u8; 1500];
    let zero = 0u32.to_be_bytes();
    let mut failed = 0usize;
    let started = Instant::now();
    let limit = Duration::from_secs(5);
    for (i, s) in socks.iter().enumerate() {
        if started.elapsed() > limit {
            failed += socks.len() - i;
            break;
        }
        // Drain what is queued (non-blocking), then wait for answers with a timeout.
        while s.recv(&mut inb).is_ok() {}
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        let mut done = false;
        for attempt in 0..2u8 {
            let Ok(n) = request(
                &mut out,
                method::REFRESH,
                txid(i, 3, attempt),
                &args.user,
                Some(&a),
                &[(attrs::LIFETIME, &zero)],
            ) else {
                break;
            };
            let Ok(ans) = transact_once(s, &out[..n], &mut inb, Duration::from_millis(200)) else {
                break;
            };
            let Ok(msg) = Message::parse(ans) else { break };
            if msg.class() == Class::SuccessResponse {
                done = true;
                break;
            }
            match (error_code(&msg), text_attr(&msg, attr::NONCE)) {
                (Some(438), Some(nonce)) => a.nonce = nonce,
                _ => break,
            }
        }
        failed += usize::from(!done);
    }
    eprintln!(
        "released {} of {} allocations in {:.2}s",
        socks.len() - failed,
        socks.len(),
        started.elapsed().as_secs_f64()
    );
}

struct SinkResult {
    received: u64,
    invalid: u64,
    hist: Histogram<u64>,
}

fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns with a valid namespace fd changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

fn mmsg_headers(bufs: &mut [[u8; 1500]], iov: &mut Vec<libc::iovec>) -> Vec<libc::mmsghdr> {
    iov.clear();
    for b in bufs.iter_mut() {
        iov.push(libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        });
    }
    iov.iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect()
}

/// The sink: counts valid payloads and records their one-way latency until `stop`.
fn sink(sock: UdpSocket, start: Instant, stop: Arc<AtomicBool>) -> Result<SinkResult> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut hist = Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3)?;
    let (mut received, mut invalid) = (0u64, 0u64);
    let mut bufs = vec![[0u8; 1500]; 64];
    let mut iov = Vec::new();
    let mut hdrs = mmsg_headers(&mut bufs, &mut iov);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the headers point at `iov` and `bufs`, alive and unmoved for the call.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            continue;
        }
        let now = start.elapsed().as_nanos() as u64;
        for (h, b) in hdrs.iter().zip(bufs.iter()).take(rc as usize) {
            let p = &b[..(h.msg_len as usize).min(b.len())];
            // Payload (after the 4-byte ChannelData header the relay strips): magic,
            // allocation index, sequence number, send time.
            if p.len() < 20 || p[0..4] != MAGIC.to_be_bytes() {
                invalid += 1;
                continue;
            }
            let sent = u64::from_be_bytes(p[12..20].try_into().unwrap_or_default());
            received += 1;
            let _ = hist.record(now.saturating_sub(sent).max(100));
        }
    }
    Ok(SinkResult {
        received,
        invalid,
        hist,
    })
}

/// Opens one UDP socket per allocation (consecutive ports from `--first-port`, or
/// ephemeral ones), each connected to the server, and does Allocate + ChannelBind to
/// `--sink` on each (in the calling thread's network namespace). The sockets are left
/// non-blocking; returned with them are the relayed addresses (in the same order) and the
/// auth state [`release`] needs.
pub(crate) fn open_allocations(
    args: &TurnLoadArgs,
) -> Result<(Vec<UdpSocket>, Vec<SocketAddr>, Option<Auth>)> {
    let bind: SocketAddr = if args.server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut socks = Vec::with_capacity(args.allocations);
    let mut relayed = Vec::with_capacity(args.allocations);
    let mut auth = None;
    for i in 0..args.allocations {
        let mut local = bind;
        if args.first_port != 0 {
            let port = u16::try_from(usize::from(args.first_port) + i)
                .context("--first-port + --allocations beyond port 65535")?;
            local.set_port(port);
        }
        let s =
            UdpSocket::bind(local).with_context(|| format!("bind a client socket to {local}"))?;
        s.connect(args.server)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let _ = socket2::SockRef::from(&s).set_send_buffer_size(1 << 20);
        let r = handshake(&s, i, args, &mut auth)
            .with_context(|| format!("allocation {i} of {}", args.allocations))?;
        s.set_nonblocking(true)?;
        socks.push(s);
        relayed.push(r);
    }
    Ok((socks, relayed, auth))
}

/// Sets up the allocations and channels, runs the load, returns what the sink saw.
pub fn run(args: &TurnLoadArgs) -> Result<TurnSummary> {
    ensure!(args.allocations > 0, "--allocations must be at least 1");
    ensure!(
        (24..=MAX_SIZE).contains(&args.size),
        "--size must be 24..={MAX_SIZE}"
    );
    let start = Instant::now();
    // The sink first, in its namespace, so nothing sent is missed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let sink_addr = args.sink;
    let netns = args.sink_netns.clone();
    let stop2 = Arc::clone(&stop);
    let sink_thread = thread::spawn(move || -> Result<SinkResult> {
        let setup = (|| -> Result<UdpSocket> {
            if let Some(ns) = &netns {
                enter_netns(ns)?;
            }
            let s =
                UdpSocket::bind(sink_addr).with_context(|| format!("bind the sink {sink_addr}"))?;
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(8 << 20);
            Ok(s)
        })();
        match setup {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                sink(s, start, stop2)
            }
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                Err(e)
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the sink did not start")??;

    let (socks, _, auth) = open_allocations(args)?;
    let setup_seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "{} allocations with a channel to {} ready in {setup_seconds:.2}s",
        args.allocations, args.sink
    );

    // ChannelData frames: header (channel, length) + payload, padded to 4 (not needed
    // over UDP, but harmless for the relay and the sink ignores the tail).
    let frame_len = 4 + args.size;
    let mut bufs = vec![[0u8; 1500]; BATCH];
    for b in bufs.iter_mut() {
        b[0..2].copy_from_slice(&CHANNEL.to_be_bytes());
        b[2..4].copy_from_slice(&(args.size as u16).to_be_bytes());
        b[4..8].copy_from_slice(&MAGIC.to_be_bytes());
    }
    let mut iov = Vec::new();
    let mut hdrs = mmsg_headers(&mut bufs, &mut iov);
    for v in iov.iter_mut() {
        v.iov_len = frame_len;
    }
    let load_start = Instant::now();
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let mut sent = 0u64;
    let mut seq = 0u64;
    let mut rr = 0usize;
    while load_start.elapsed() < duration {
        let due = (args.rate as f64 * load_start.elapsed().as_secs_f64()) as u64;
        let n = due.saturating_sub(sent).min(BATCH as u64) as usize;
        if n == 0 {
            // The sink shares this CPU: sleep (a few tens of µs) rather than spin, so it
            // is not starved, which would show up as latency of the relay.
            thread::sleep(Duration::from_micros(20));
            continue;
        }
        let idx = rr % socks.len();
        rr = rr.wrapping_add(1);
        let now = start.elapsed().as_nanos() as u64;
        for b in bufs.iter_mut().take(n) {
            b[8..12].copy_from_slice(&(idx as u32).to_be_bytes());
            b[12..16].copy_from_slice(&(seq as u32).to_be_bytes());
            b[16..24].copy_from_slice(&now.to_be_bytes());
            seq += 1;
        }
        // SAFETY: the headers point at `iov` and `bufs`, alive and unmoved for the call;
        // `n` <= their length.
        let rc = unsafe {
            libc::sendmmsg(
                socks[idx].as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if rc > 0 {
            sent += rc as u64;
        } else if rc < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR | libc::ECONNREFUSED)
            ) {
                return Err(e).context("sendmmsg");
            }
        }
    }
    let seconds = load_start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(300));
    release(&socks, args, auth.as_ref());
    stop.store(true, Ordering::Relaxed);
    let r = sink_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the sink thread panicked"))??;
    Ok(TurnSummary {
        sent,
        received: r.received,
        invalid: r.invalid,
        seconds,
        setup_seconds,
        hist: r.hist,
    })
}
