//! Fuzzes the SDP reader and everything downstream of it: parsing arbitrary text must
//! never panic; whatever parses must answer (or refuse) cleanly, and what we write must
//! parse again and be a fixed point of write(parse(_)).
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use relay::sdp::{self, CandidateTransport, LocalCandidate, LocalParams};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sdp::parse_candidate_line(&text);
    let Ok(offer) = sdp::parse(&text) else {
        return;
    };
    let written = offer.to_string();
    if written.len() <= sdp::MAX_SDP_LEN {
        let again = sdp::parse(&written).expect("our own output must parse");
        assert_eq!(
            again.to_string(),
            written,
            "write(parse(written)) must be stable"
        );
    }
    let udp: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 3478));
    let mut params = LocalParams::new(
        "fuzz",
        "fuzzfuzzfuzzfuzzfuzzfuzz",
        [7; 32],
        vec![LocalCandidate {
            addr: udp,
            transport: CandidateTransport::Udp,
        }],
    );
    params.data_channels = data.len().is_multiple_of(2);
    if let Ok(answer) = sdp::answer(&offer, &params) {
        let text = answer.to_string();
        if text.len() > sdp::MAX_SDP_LEN {
            return;
        }
        let reparsed = sdp::parse(&text).expect("our answer must parse");
        assert_eq!(reparsed.media.len(), offer.media.len());
        let _ = sdp::check_answer(&offer, &reparsed);
        let _ = sdp::negotiated(&offer, &reparsed);
    }
});
