//! Fuzzes SRTP and SRTCP unprotect on arbitrary datagrams for both profiles: the RTP
//! header walk (CSRCs, extension), index estimation, replay checks and both transforms
//! must never panic, and nothing unauthenticated may be accepted or create state. Then
//! the input, taken as plaintext, must survive a protect/unprotect round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::srtp::{Profile, SrtpSession, session_keys};

fn sessions(profile: Profile) -> (SrtpSession, SrtpSession) {
    let material: Vec<u8> = (0..profile.keying_material_len())
        .map(|i| (i as u8).wrapping_mul(31))
        .collect();
    let (local, _) = session_keys(profile, &material, true).expect("client keys");
    let (_, remote) = session_keys(profile, &material, false).expect("server keys");
    (
        SrtpSession::new(&local).expect("tx"),
        SrtpSession::new(&remote).expect("rx"),
    )
}

fuzz_target!(|data: &[u8]| {
    for profile in [Profile::Aes128CmHmacSha1_80, Profile::AeadAes128Gcm] {
        let (mut tx, mut rx) = sessions(profile);
        let mut buf = data.to_vec();
        // A random datagram cannot carry a valid tag under these keys.
        assert!(rx.unprotect_rtp(&mut buf).is_err());
        let mut buf = data.to_vec();
        assert!(rx.unprotect_rtcp(&mut buf).is_err());
        assert_eq!(rx.ssrc_count(), 0, "a rejected packet created state");

        let mut buf = data.to_vec();
        buf.resize(data.len() + profile.rtcp_overhead(), 0);
        if let Ok(n) = tx.protect_rtp(&mut buf, data.len()) {
            let n = rx.unprotect_rtp(&mut buf[..n]).expect("own SRTP packet");
            assert_eq!(&buf[..n], data);
        }
        let mut buf = data.to_vec();
        buf.resize(data.len() + profile.rtcp_overhead(), 0);
        if let Ok(n) = tx.protect_rtcp(&mut buf, data.len()) {
            let n = rx.unprotect_rtcp(&mut buf[..n]).expect("own SRTCP packet");
            assert_eq!(&buf[..n], data);
        }
    }
});
