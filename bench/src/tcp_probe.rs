//! STUN Binding requests over TCP to a relay while its UDP data path is loaded.
//!
//! Why: a relay whose worker stays busy with UDP (AF_XDP frames keep arriving) must still
//! serve what reaches it through kernel sockets: TURN over TCP and TLS, stream accepts,
//! datagrams the XDP program passes up. On io_uring with deferred task work those
//! completions run only when the worker asks for them; a worker that never did while
//! busy answered a TCP client's Binding 0.5–2.8 s late at saturation. The probe measures
//! that wait during each bench step, and the smoke run fails when it is long.
//!
//! Each probe is a fresh connection (so the relay's accept path is measured too), one
//! Binding request, and the response's header checked against the request.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use relay_e2e::binding_request;

/// How long one probe may take before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the probes of one step saw.
#[derive(Debug, Default, Clone)]
pub struct TcpProbes {
    /// Round-trip times (connect + request + response) of the answered probes.
    pub rtts: Vec<Duration>,
    /// Why the others failed.
    pub failures: Vec<String>,
}

impl TcpProbes {
    /// The median and the largest round-trip time, if any probe was answered.
    pub fn p50_max(&self) -> Option<(Duration, Duration)> {
        let mut v = self.rtts.clone();
        v.sort_unstable();
        let max = *v.last()?;
        Some((v[v.len() / 2], max))
    }

    /// One line for the step's report.
    pub fn summary(&self) -> String {
        let n = self.rtts.len() + self.failures.len();
        match self.p50_max() {
            Some((p50, max)) => format!(
                "TCP Binding p50 {:.1} ms max {:.1} ms ({}/{n} answered)",
                p50.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3,
                self.rtts.len()
            ),
            None => format!("TCP Binding: none of {n} answered"),
        }
    }
}

/// Probes `server` every `every` from `delay` on until `stop` is set (an in-flight probe
/// finishes first, within [`PROBE_TIMEOUT`]), at most `limit` times.
pub fn run(
    server: SocketAddr,
    stop: &AtomicBool,
    delay: Duration,
    every: Duration,
    limit: usize,
) -> TcpProbes {
    let mut out = TcpProbes::default();
    let start = Instant::now();
    while start.elapsed() < delay && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..limit {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t0 = Instant::now();
        match binding(server, i as u32) {
            Ok(()) => out.rtts.push(t0.elapsed()),
            Err(e) => out.failures.push(e),
        }
        let next = t0 + every;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    out
}

/// Whether `header` (the first 20 bytes of a response) is a Binding success response to
/// the request with transaction id `id`.
fn answers(header: &[u8; 20], id: &[u8; 12]) -> bool {
    header[..2] == 0x0101u16.to_be_bytes()
        && header[4..8] == 0x2112_a442u32.to_be_bytes()
        && &header[8..] == id
}

fn binding(server: SocketAddr, seq: u32) -> Result<(), String> {
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&seq.to_be_bytes());
    id[4..].copy_from_slice(&(std::process::id() as u64 ^ 0x5eed).to_be_bytes());
    let mut s = TcpStream::connect_timeout(&server, PROBE_TIMEOUT)
        .map_err(|e| format!("connect to {server}: {e}"))?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    s.write_all(&binding_request(id))
        .map_err(|e| format!("send the Binding request: {e}"))?;
    let mut header = [0u8; 20];
    s.read_exact(&mut header)
        .map_err(|e| format!("read the Binding response: {e}"))?;
    if answers(&header, &id) {
        Ok(())
    } else {
        Err(format!(
            "not a Binding success for our request: {header:02x?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn request_and_response_checks() {
        let id = [7u8; 12];
        let r = binding_request(id);
        assert_eq!(&r[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
        let mut resp = r;
        resp[..2].copy_from_slice(&[0x01, 0x01]);
        assert!(answers(&resp, &id));
        assert!(!answers(&r, &id), "a request is not a response");
        let mut other = resp;
        other[19] ^= 1;
        assert!(!answers(&other, &id), "another transaction");
        let mut error = resp;
        error[..2].copy_from_slice(&[0x01, 0x11]);
        assert!(!answers(&error, &id), "an error response");
    }

    /// A local server that answers after `lag`, or with a wrong transaction id.
    fn server(lag: Duration, wrong: bool) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for c in l.incoming().take(8) {
                let Ok(mut c) = c else { continue };
                let mut req = [0u8; 20];
                if c.read_exact(&mut req).is_err() {
                    continue;
                }
                std::thread::sleep(lag);
                req[..2].copy_from_slice(&[0x01, 0x01]);
                if wrong {
                    req[8] ^= 0xff;
                }
                let _ = c.write_all(&req);
            }
        });
        addr
    }

    #[test]
    fn measures_round_trips_and_reports_failures() {
        let stop = AtomicBool::new(false);
        let slow = run(
            server(Duration::from_millis(30), false),
            &stop,
            Duration::ZERO,
            Duration::ZERO,
            3,
        );
        assert_eq!((slow.rtts.len(), slow.failures.len()), (3, 0));
        let (p50, max) = slow.p50_max().expect("answered");
        assert!(p50 >= Duration::from_millis(30) && max < PROBE_TIMEOUT);
        assert!(slow.summary().contains("3/3 answered"));

        let wrong = run(
            server(Duration::ZERO, true),
            &stop,
            Duration::ZERO,
            Duration::ZERO,
            2,
        );
        assert_eq!((wrong.rtts.len(), wrong.failures.len()), (0, 2));
        assert!(wrong.summary().contains("none of 2"));

        stop.store(true, Ordering::Relaxed);
        let stopped = run(
            server(Duration::ZERO, false),
            &stop,
            Duration::ZERO,
            Duration::ZERO,
            5,
        );
        assert!(stopped.rtts.is_empty() && stopped.failures.is_empty());
    }
}
