//! Fuzzes the DTLS endpoint's input path with arbitrary datagrams: a server endpoint (and a
//! client one, which has sent its ClientHello) must drop or reject anything, never panic,
//! and whatever they answer must fit the MTU.
//!
//! The input is cut into datagrams by a length byte before each; a length byte with the
//! top bit set also fires the retransmission path.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use relay::dtls::{Certificate, DtlsEndpoint, DtlsEvent, MTU, Role};

fn certs() -> &'static (Certificate, Certificate) {
    static CERTS: OnceLock<(Certificate, Certificate)> = OnceLock::new();
    CERTS.get_or_init(|| {
        (
            Certificate::generate().expect("certificate"),
            Certificate::generate().expect("certificate"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (ours, theirs) = certs();
    let now = Instant::now();
    let mut endpoints = [
        DtlsEndpoint::new(ours, Role::Server, theirs.fingerprint()).expect("server"),
        DtlsEndpoint::new(ours, Role::Client, theirs.fingerprint()).expect("client"),
    ];
    let mut out = [0u8; 2048];
    for endpoint in &mut endpoints {
        let mut rest = data;
        while let Some((&len, tail)) = rest.split_first() {
            let n = usize::from(len & 0x7f).min(tail.len());
            let (datagram, tail) = tail.split_at(n);
            rest = tail;
            endpoint.handle_datagram(datagram, now);
            if len & 0x80 != 0 {
                endpoint.handle_timeout(now);
                let _ = endpoint.poll_timeout();
            }
            while let Some(sent) = endpoint.poll_transmit(&mut out) {
                assert!(sent <= MTU as usize, "datagram over the MTU");
            }
            while let Some(event) = endpoint.poll_event() {
                assert!(
                    !matches!(event, DtlsEvent::Connected { .. }),
                    "connected without the peer's private key"
                );
                let _ = endpoint.read_application_data(&mut out);
            }
        }
        // The whole input as one datagram too (long records).
        endpoint.handle_datagram(data, now);
        while endpoint.poll_transmit(&mut out).is_some() {}
        while endpoint.poll_event().is_some() {}
    }
});
