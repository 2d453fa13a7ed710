//! Proves that SRTP/SRTCP protect and unprotect never allocate: 10,000 packets each way per
//! profile, including replayed and forged ones, with zero allocations once the sessions
//! exist (the SSRC table is allocated at session set-up).
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own.

use relay::srtp::{Profile, SrtpSession, session_keys};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

fn sessions(profile: Profile) -> (SrtpSession, SrtpSession) {
    let material: Vec<u8> = (0..profile.keying_material_len())
        .map(|i| i as u8)
        .collect();
    let (local, _) = session_keys(profile, &material, true).expect("client keys");
    let (_, remote) = session_keys(profile, &material, false).expect("server keys");
    (
        SrtpSession::new(&local).expect("tx session"),
        SrtpSession::new(&remote).expect("rx session"),
    )
}

#[test]
fn protect_and_unprotect_do_not_allocate() {
    for profile in [Profile::Aes128CmHmacSha1_80, Profile::AeadAes128Gcm] {
        let (mut tx, mut rx) = sessions(profile);
        let mut rtp = [0u8; 1300];
        rtp[0] = 0x80;
        rtp[1] = 111;
        let mut rtcp = [0u8; 200];
        rtcp[..4].copy_from_slice(&[0x81, 201, 0, 7]);
        let mut ok = 0u32;
        let allocations = allocations_during(|| {
            for i in 0..10_000u32 {
                // Sequence numbers wrap five times over the run; eight SSRCs.
                let seq = (i.wrapping_mul(7)) as u16;
                let ssrc = 0x1000 + (i % 8);
                rtp[2..4].copy_from_slice(&seq.to_be_bytes());
                rtp[8..12].copy_from_slice(&ssrc.to_be_bytes());
                let len = 100 + (i as usize % 1100);
                let n = tx.protect_rtp(&mut rtp, len).expect("protect");
                if rx.unprotect_rtp(&mut rtp[..n]).is_ok() {
                    ok += 1;
                }
                // A replay and a forgery: errors must not allocate either.
                let n = tx.protect_rtp(&mut rtp, len).expect("protect again");
                let _ = rx.unprotect_rtp(&mut rtp[..n]);
                rtp[20] ^= 1;
                let _ = rx.unprotect_rtp(&mut rtp[..n]);

                rtcp[4..8].copy_from_slice(&ssrc.to_be_bytes());
                let n = tx.protect_rtcp(&mut rtcp, 32).expect("protect rtcp");
                if rx.unprotect_rtcp(&mut rtcp[..n]).is_ok() {
                    ok += 1;
                }
            }
        });
        assert_eq!(allocations, 0, "{profile:?}: protect/unprotect allocated");
        // The first copy of every RTP packet and every RTCP packet got through.
        assert_eq!(ok, 20_000, "{profile:?}");
    }
}
