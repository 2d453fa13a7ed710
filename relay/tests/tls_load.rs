//! Loading the TLS certificate and key: errors name the file at fault and say what is
//! wrong; a good pair loads and offers TLS 1.3 and 1.2. And [`TlsStream`], the relay's
//! record layer after a rustls handshake, against a real rustls client over an in-memory
//! pipe: every cipher suite of both versions both ways, client key updates, close_notify
//! both ways, tampered records and garbage refused cleanly; plus the handshake cost on
//! the server side (the worker thread's share), printed.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::tls::{ReadStatus, TlsError, TlsReloader, TlsStream, load_server_config};
use rustls::crypto::ring::cipher_suite as suites;
use rustls::{ClientConfig, ClientConnection, SupportedCipherSuite};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    // Unique per call: tests run in parallel and several use the same tag ("stream"); a
    // shared directory was removed by one test's Drop while another wrote into it.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("relay-tls-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

fn pair(d: &Dir, name: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = d.0.join(format!("{name}.crt"));
    let key = d.0.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn good_pair_loads_with_tls12_and_tls13() {
    let d = dir("good");
    let (cert, key) = pair(&d, "a");
    let cfg = load_server_config(&cert, &key).expect("loads");
    // Both versions are enabled: a server connection can be made and the config is not
    // restricted to one version (checked through a handshake in dataplane_turn).
    assert!(rustls::ServerConnection::new(cfg).is_ok());
    let r = TlsReloader::load(&cert, &key).unwrap();
    assert_eq!(r.cert_path(), cert.as_path());
    r.reload().expect("reload of the same pair");
}

#[test]
fn missing_files_are_named() {
    let d = dir("missing");
    let (cert, key) = pair(&d, "a");
    let nope = d.0.join("nope.pem");
    let e = load_server_config(&nope, &key).unwrap_err();
    assert!(
        matches!(
            e,
            TlsError::Read {
                what: "certificate",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&nope.display().to_string()), "{e}");
    let e = load_server_config(&cert, &nope).unwrap_err();
    assert!(
        matches!(
            e,
            TlsError::Read {
                what: "private key",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&nope.display().to_string()), "{e}");
}

#[test]
fn wrong_contents_are_explained() {
    let d = dir("wrong");
    let (cert, key) = pair(&d, "a");
    let (_, other_key) = pair(&d, "b");
    // Key where the certificate should be, and vice versa.
    let e = load_server_config(&key, &key).unwrap_err();
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
    assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    let e = load_server_config(&cert, &cert).unwrap_err();
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
    // A key that does not belong to the certificate.
    let e = load_server_config(&cert, &other_key).unwrap_err();
    assert!(matches!(e, TlsError::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("does the key belong"), "{e}");
}

#[test]
fn failed_reload_keeps_the_current_config() {
    let d = dir("reload");
    let (cert, key) = pair(&d, "a");
    let r = TlsReloader::load(&cert, &key).unwrap();
    let before = r.current();
    std::fs::write(&key, "garbage").unwrap();
    let e = r.reload().unwrap_err();
    assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    assert!(
        std::sync::Arc::ptr_eq(&before, &r.current()),
        "old config kept"
    );
}

// ---------------------------------------------------------------------------------------
// TlsStream against a rustls client, in memory

/// The server's socket: reads what the client sent, collects what the server writes.
#[derive(Default)]
struct Pipe {
    to_server: VecDeque<u8>,
    to_client: Vec<u8>,
    eof: bool,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_server.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        self.to_server.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.to_client.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Pair {
    client: ClientConnection,
    server: TlsStream,
    pipe: Pipe,
    /// Plaintext the server delivered.
    got: Vec<u8>,
    /// Time spent in server calls.
    server_time: Duration,
}

fn server_config() -> (
    Arc<rustls::ServerConfig>,
    rustls_pki_types::CertificateDer<'static>,
) {
    let d = dir("stream");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = d.0.join("s.crt");
    let key = d.0.join("s.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        load_server_config(&cert, &key).unwrap(),
        ck.cert.der().clone(),
    )
}

fn client_config(
    trust: &rustls_pki_types::CertificateDer<'static>,
    suite: SupportedCipherSuite,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let version = match suite {
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
    };
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl Pair {
    fn new(server: Arc<rustls::ServerConfig>, client: Arc<ClientConfig>) -> Pair {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let start = Instant::now();
        let server = TlsStream::new(server, 64 * 1024).expect("server session");
        Pair {
            client: ClientConnection::new(client, name).unwrap(),
            server_time: start.elapsed(),
            server,
            pipe: Pipe::default(),
            got: Vec::new(),
        }
    }

    /// Client → server bytes, then one server read + flush.
    fn server_turn(&mut self) -> io::Result<ReadStatus> {
        while self.client.wants_write() {
            let mut b = Vec::new();
            self.client.write_tls(&mut b).unwrap();
            self.pipe.to_server.extend(b);
        }
        let start = Instant::now();
        let mut buf = [0u8; 16 * 1024];
        let mut last = ReadStatus::Progress {
            copied: 0,
            more: false,
        };
        for _ in 0..64 {
            last = self.server.read(&mut self.pipe, &mut buf)?;
            let more = match last {
                ReadStatus::Progress { copied, more } => {
                    self.got.extend_from_slice(&buf[..copied]);
                    more
                }
                ReadStatus::Eof => false,
            };
            if !more {
                break;
            }
        }
        self.server.flush(&mut self.pipe)?;
        self.server_time += start.elapsed();
        Ok(last)
    }

    /// Server → client bytes; returns the client's plaintext (and whether it saw EOF).
    fn client_turn(&mut self) -> Result<(Vec<u8>, bool), rustls::Error> {
        let bytes = std::mem::take(&mut self.pipe.to_client);
        let mut at = &bytes[..];
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if !at.is_empty() {
                self.client.read_tls(&mut at).unwrap();
                self.client.process_new_packets()?;
            }
            loop {
                match self.client.reader().read(&mut buf) {
                    Ok(0) => return Ok((out, true)),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
            if at.is_empty() {
                return Ok((out, false));
            }
        }
    }

    fn handshake(&mut self) {
        for _ in 0..10 {
            if !self.client.is_handshaking() && !self.server.is_handshaking() {
                return;
            }
            self.server_turn().expect("server handshake");
            self.client_turn().expect("client handshake");
        }
        panic!("handshake did not complete in 10 round trips");
    }
}

fn exchange_both_ways(p: &mut Pair, rounds: usize) {
    for round in 0..rounds {
        // Sizes around record boundaries, one above the largest record.
        for size in [1usize, 100, 1500, 16 * 1024, 16 * 1024 + 1, 40_000] {
            let msg: Vec<u8> = (0..size).map(|i| (i + round * 7) as u8).collect();
            p.got.clear();
            p.client.writer().write_all(&msg).unwrap();
            for _ in 0..8 {
                if p.got.len() >= msg.len() {
                    break;
                }
                p.server_turn().expect("server reads");
            }
            assert_eq!(p.got, msg, "client → server, {size} bytes");
            assert!(p.server.write(&msg), "server queues {size} bytes");
            p.server.flush(&mut p.pipe).unwrap();
            let (back, eof) = p.client_turn().expect("client decrypts");
            assert!(!eof);
            assert_eq!(back, msg, "server → client, {size} bytes");
        }
    }
}

fn all_suites() -> Vec<SupportedCipherSuite> {
    vec![
        suites::TLS13_AES_128_GCM_SHA256,
        suites::TLS13_AES_256_GCM_SHA384,
        suites::TLS13_CHACHA20_POLY1305_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

#[test]
fn stream_relays_both_ways_with_every_suite() {
    let (server, trust) = server_config();
    for suite in all_suites() {
        let mut p = Pair::new(server.clone(), client_config(&trust, suite));
        p.handshake();
        assert_eq!(p.client.negotiated_cipher_suite(), Some(suite));
        exchange_both_ways(&mut p, 2);
        if matches!(suite, SupportedCipherSuite::Tls13(_)) {
            // The client rekeys (and asks us to): both directions keep working.
            p.client.refresh_traffic_keys().unwrap();
            exchange_both_ways(&mut p, 1);
        }
        // close_notify from the client ends the stream after its data.
        p.client.writer().write_all(b"last").unwrap();
        p.client.send_close_notify();
        p.got.clear();
        let mut eof = false;
        for _ in 0..4 {
            if p.server_turn().unwrap() == ReadStatus::Eof {
                eof = true;
                break;
            }
        }
        assert_eq!(p.got, b"last", "{suite:?}");
        assert!(eof, "close_notify seen ({suite:?})");
        // Our close_notify reaches the client as a clean end.
        p.server.close(&mut p.pipe);
        let (_, client_eof) = p.client_turn().expect("clean close");
        assert!(client_eof, "client saw close_notify ({suite:?})");
    }
}

#[test]
fn record_limit_rekeys_tls13_and_closes_tls12() {
    let (server, trust) = server_config();
    for suite in all_suites() {
        let mut p = Pair::new(server.clone(), client_config(&trust, suite));
        p.handshake();
        p.server.limit_records_for_tests(3);
        let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
        let mut sent = 0;
        for i in 0..10u8 {
            if !p.server.write(&[i; 100]) {
                break;
            }
            sent += 1;
            if i % 4 == 3 {
                // After a key update the new key has the full limit again: cut it short
                // once more so that several updates happen.
                p.server.limit_records_for_tests(3);
            }
        }
        p.server.flush(&mut p.pipe).unwrap();
        let (back, eof) = p.client_turn().expect("client follows the key updates");
        assert!(!eof);
        let want: Vec<u8> = (0..sent).flat_map(|i| [i; 100]).collect();
        assert_eq!(back, want, "{suite:?}");
        if tls13 {
            assert_eq!(sent, 10, "TLS 1.3 rekeys instead of stopping");
            // And the client → server direction is unaffected.
            exchange_both_ways(&mut p, 1);
        } else {
            assert!(
                sent < 10,
                "TLS 1.2 cannot rekey: the connection stops ({suite:?})"
            );
            assert!(!p.server.write(b"x"), "stays closed");
        }
    }
}

#[test]
fn stream_refuses_bad_input_without_panicking() {
    let (server, trust) = server_config();
    // Not TLS at all.
    let mut s = TlsStream::new(server.clone(), 64 * 1024).unwrap();
    let mut pipe = Pipe::default();
    pipe.to_server
        .extend(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".iter());
    let mut buf = [0u8; 1024];
    assert!(s.read(&mut pipe, &mut buf).is_err(), "garbage refused");
    assert!(!pipe.to_client.is_empty(), "an alert was sent");
    assert!(s.read(&mut pipe, &mut buf).is_err(), "stays failed");

    for suite in all_suites() {
        let mut p = Pair::new(server.clone(), client_config(&trust, suite));
        p.handshake();
        // A tampered record: flip one ciphertext bit.
        p.client.writer().write_all(b"hello there").unwrap();
        let mut rec = Vec::new();
        p.client.write_tls(&mut rec).unwrap();
        let last = rec.len() - 1;
        rec[last] ^= 1;
        p.pipe.to_server.extend(rec);
        let r = p.server.read(&mut p.pipe, &mut buf);
        assert!(r.is_err(), "tampered record refused ({suite:?})");
        p.server.flush(&mut p.pipe).unwrap();
        let e = p.client_turn().expect_err("client gets a fatal alert");
        assert!(
            e.to_string().contains("BadRecordMac") || e.to_string().contains("bad"),
            "{e} ({suite:?})"
        );
        assert!(!p.server.write(b"x"), "no writes after a failure");
    }

    // A record header announcing more than TLS allows.
    let suite = suites::TLS13_AES_128_GCM_SHA256;
    let mut p = Pair::new(server.clone(), client_config(&trust, suite));
    p.handshake();
    p.pipe.to_server.extend([23u8, 3, 3, 0xFF, 0xFF]);
    assert!(
        p.server.read(&mut p.pipe, &mut buf).is_err(),
        "oversized record"
    );

    // The peer vanishes mid-handshake: a clean end, not an error loop.
    let mut p = Pair::new(server, client_config(&trust, suite));
    p.server_turn().unwrap();
    p.pipe.eof = true;
    p.pipe.to_server.clear();
    assert_eq!(p.server_turn().unwrap(), ReadStatus::Eof);
}

#[test]
fn handshake_cost_on_the_server_side() {
    let (server, trust) = server_config();
    for suite in [
        suites::TLS13_AES_128_GCM_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ] {
        for resumed in [false, true] {
            let mut client = client_config(&trust, suite);
            if !resumed {
                let mut c = (*client).clone();
                c.resumption = rustls::client::Resumption::disabled();
                client = Arc::new(c);
            }
            const N: usize = 21;
            // Warm-up (lazy initialisation in the crypto provider; a session to resume).
            Pair::new(server.clone(), client.clone()).handshake();
            let mut times = Vec::with_capacity(N);
            for _ in 0..N {
                let mut p = Pair::new(server.clone(), client.clone());
                p.handshake();
                times.push(p.server_time);
            }
            times.sort();
            let median = times[N / 2];
            println!(
                "server-side handshake cost ({suite:?}, {}, ECDSA P-256 certificate, \
                 debug={}): median {} us, min {} us over {N}",
                if resumed { "resumed" } else { "full" },
                cfg!(debug_assertions),
                median.as_micros(),
                times[0].as_micros()
            );
            assert!(median < Duration::from_secs(1), "{median:?} per handshake");
        }
    }
}
