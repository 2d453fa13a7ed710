//! Published test vectors (RFC 3711 Appendix B, RFC 7714 section 16, libsrtp's
//! srtp_driver end-to-end vectors) and the behaviour the SFU relies on: round trips,
//! tamper and replay rejection with unchanged state, rollover across reordering.

use proptest::prelude::*;

use super::cipher::{cm_iv, cm_xor};
use super::keys::{SessionKeys, StreamKeys, derive};
use super::*;
use aes::Aes128;
use aes::cipher::KeyInit;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

const B3_KEY: &str = "E1F97A0D3E018BE0D64FA32C06DE4139";
const B3_SALT: &str = "0EC675AD498AFEEBB6960B3AABE6";

fn b3_master() -> MasterKey {
    MasterKey::new(Profile::Aes128CmHmacSha1_80, &hex(B3_KEY), &hex(B3_SALT)).expect("B.3 key")
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C")
        .try_into()
        .expect("16 bytes");
    let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
        .try_into()
        .expect("14 bytes");
    let iv = cm_iv(&salt, 0, 0);
    assert_eq!(iv.to_vec(), hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
    let mut stream = vec![0u8; 1_044_512];
    cm_xor(&Aes128::new(&key.into()), &iv, &mut stream);
    assert_eq!(
        stream[..48],
        hex(
            "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0"
        )[..]
    );
    assert_eq!(
        stream[stream.len() - 48..],
        hex(
            "EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE
             6A2CC3787889374FBEB4C81B17BA6C44"
        )[..]
    );
}

#[test]
fn rfc3711_b3_key_derivation() {
    let master = b3_master();
    let mut key = [0u8; 16];
    derive(&master, 0x00, &mut key);
    assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    let mut salt = [0u8; 14];
    derive(&master, 0x02, &mut salt);
    assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    // B.3 lists 94 bytes of the label-1 keystream; HMAC-SHA1 uses the first 20.
    let mut auth = [0u8; 94];
    derive(&master, 0x01, &mut auth);
    assert_eq!(
        auth.to_vec(),
        hex(
            "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
             E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
             6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
        )
    );
    let keys = SessionKeys::derive(&master);
    assert_eq!(
        keys.rtp.key.to_vec(),
        hex("C61E7A93744F39EE10734AFE3FF7A087")
    );
    assert_eq!(keys.rtp.salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    assert_eq!(
        keys.rtp.auth.to_vec(),
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
    // SRTCP labels 3, 4, 5 from the same master key (cross-checked values used by
    // established implementations; the RFC lists only SRTP's).
    assert_eq!(
        keys.rtcp.key.to_vec(),
        hex("4c1aa45a81f73d61c800bbb00fbb1eaa")
    );
    assert_eq!(
        keys.rtcp.auth.to_vec(),
        hex("8d54534feb49ae8e7993a6bd0b844fc323a93dfd")
    );
    assert_eq!(keys.rtcp.salt.to_vec(), hex("9581c7ad87b3e530bf3e4454a8b3"));
}

/// libsrtp's srtp_driver vectors for AES_CM_128_HMAC_SHA1_80 under the B.3 master key:
/// a whole protected RTP packet and a whole SRTCP packet (index 1).
#[test]
fn aes_cm_hmac_sha1_80_end_to_end_vectors() {
    let plain_rtp = hex("800f1234decafbadcafebabe abababababababababababababababab");
    let srtp =
        hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb");
    let mut tx = SrtpSession::new(&b3_master()).expect("session");
    let mut buf = [0u8; 64];
    buf[..plain_rtp.len()].copy_from_slice(&plain_rtp);
    let n = tx.protect_rtp(&mut buf, plain_rtp.len()).expect("protect");
    assert_eq!(buf[..n], srtp[..]);
    let mut rx = SrtpSession::new(&b3_master()).expect("session");
    let n = rx.unprotect_rtp(&mut buf[..n]).expect("unprotect");
    assert_eq!(buf[..n], plain_rtp[..]);

    let plain_rtcp = hex("81c8000bcafebabe abababababababababababababababab");
    let srtcp =
        hex("81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 993e08cd54d6c1230798");
    tx.set_next_srtcp_index(0xcafebabe, 1);
    buf[..plain_rtcp.len()].copy_from_slice(&plain_rtcp);
    let n = tx
        .protect_rtcp(&mut buf, plain_rtcp.len())
        .expect("protect rtcp");
    assert_eq!(buf[..n], srtcp[..]);
    let n = rx.unprotect_rtcp(&mut buf[..n]).expect("unprotect rtcp");
    assert_eq!(buf[..n], plain_rtcp[..]);
}

/// RFC 7714 section 16: session key and salt given directly (no KDF).
fn rfc7714_session() -> SrtpSession {
    let mut salt = [0u8; 14];
    salt[..12].copy_from_slice(&hex("517569642070726f2071756f"));
    let one = StreamKeys {
        key: hex("000102030405060708090a0b0c0d0e0f")
            .try_into()
            .expect("16 bytes"),
        salt,
        auth: [0; 20],
    };
    let keys = SessionKeys {
        rtp: one.clone(),
        rtcp: one,
    };
    SrtpSession::with_session_keys(Profile::AeadAes128Gcm, &keys).expect("session")
}

const RFC7714_RTP: &str = "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
    20646976 69736120 696e2070 61727465 73207472 6573";
const RFC7714_SRTP: &str = "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca
    be633bd5 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce";
const RFC7714_RTCP: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
    4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";
const RFC7714_SRTCP: &str = "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7
    6c06f32d c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872 45d9eade
    800005d4";
const RFC7714_SRTCP_UNENCRYPTED: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a
    0000e930 4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef 841dd968 3dd78ec9 2ae58790
    125f62b3 000005d4";

#[test]
fn rfc7714_aes_128_gcm_rtp() {
    let (plain, protected) = (hex(RFC7714_RTP), hex(RFC7714_SRTP));
    let mut tx = rfc7714_session();
    let mut buf = [0u8; 128];
    buf[..plain.len()].copy_from_slice(&plain);
    let n = tx.protect_rtp(&mut buf, plain.len()).expect("protect");
    assert_eq!(buf[..n], protected[..]);
    let mut rx = rfc7714_session();
    let n = rx.unprotect_rtp(&mut buf[..n]).expect("unprotect");
    assert_eq!(buf[..n], plain[..]);
}

#[test]
fn rfc7714_aes_128_gcm_rtcp() {
    let (plain, protected) = (hex(RFC7714_RTCP), hex(RFC7714_SRTCP));
    let mut tx = rfc7714_session();
    tx.set_next_srtcp_index(0x4d617273, 0x5d4);
    let mut buf = [0u8; 128];
    buf[..plain.len()].copy_from_slice(&plain);
    let n = tx.protect_rtcp(&mut buf, plain.len()).expect("protect");
    assert_eq!(buf[..n], protected[..]);
    let mut rx = rfc7714_session();
    let n = rx.unprotect_rtcp(&mut buf[..n]).expect("unprotect");
    assert_eq!(buf[..n], plain[..]);
    // The authenticated-only form (E = 0) of the same packet.
    let mut unencrypted = hex(RFC7714_SRTCP_UNENCRYPTED);
    let mut rx = rfc7714_session();
    let n = rx.unprotect_rtcp(&mut unencrypted).expect("E=0 unprotect");
    assert_eq!(unencrypted[..n], plain[..]);
    // Its tag does not verify as an encrypted packet.
    let mut flipped = hex(RFC7714_SRTCP_UNENCRYPTED);
    let last = flipped.len() - 4;
    flipped[last] |= 0x80;
    let mut rx = rfc7714_session();
    assert_eq!(rx.unprotect_rtcp(&mut flipped), Err(SrtpError::AuthFailed));
}

const PROFILES: [Profile; 2] = [Profile::Aes128CmHmacSha1_80, Profile::AeadAes128Gcm];

fn pair(profile: Profile) -> (SrtpSession, SrtpSession) {
    let material: Vec<u8> = (0..profile.keying_material_len())
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    let (client_local, client_remote) = session_keys(profile, &material, true).expect("client");
    let (server_local, server_remote) = session_keys(profile, &material, false).expect("server");
    assert_eq!(client_local, server_remote);
    assert_eq!(client_remote, server_local);
    (
        SrtpSession::new(&client_local).expect("tx"),
        SrtpSession::new(&server_remote).expect("rx"),
    )
}

/// An RTP packet with two CSRCs and a one-word header extension.
fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x92, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&u32::from(seq).wrapping_mul(960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

fn rtcp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..24).map(|i| i as u8));
    p
}

fn protect(s: &mut SrtpSession, packet: &[u8]) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + 32, 0);
    let n = s.protect_rtp(&mut buf, packet.len()).expect("protect");
    buf.truncate(n);
    buf
}

fn protect_rtcp(s: &mut SrtpSession, packet: &[u8]) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + 32, 0);
    let n = s
        .protect_rtcp(&mut buf, packet.len())
        .expect("protect rtcp");
    buf.truncate(n);
    buf
}

#[test]
fn keying_material_split_and_lengths() {
    assert_eq!(Profile::Aes128CmHmacSha1_80.keying_material_len(), 60);
    assert_eq!(Profile::AeadAes128Gcm.keying_material_len(), 56);
    assert_eq!(Profile::from_id(0x0001), Some(Profile::Aes128CmHmacSha1_80));
    assert_eq!(Profile::from_id(0x0007), Some(Profile::AeadAes128Gcm));
    assert_eq!(Profile::from_id(0x0002), None);
    assert_eq!(DTLS_SRTP_EXPORTER_LABEL, "EXTRACTOR-dtls_srtp");
    let material: Vec<u8> = (0..60).collect();
    let (local, remote) =
        session_keys(Profile::Aes128CmHmacSha1_80, &material, true).expect("split");
    assert_eq!(local.key()[..], material[0..16]);
    assert_eq!(remote.key()[..], material[16..32]);
    assert_eq!(local.salt(), &material[32..46]);
    assert_eq!(remote.salt(), &material[46..60]);
    let (local, remote) =
        session_keys(Profile::AeadAes128Gcm, &material[..56], false).expect("split");
    assert_eq!(local.key()[..], material[16..32]);
    assert_eq!(remote.key()[..], material[0..16]);
    assert_eq!(local.salt(), &material[44..56]);
    assert_eq!(remote.salt(), &material[32..44]);
    assert_eq!(
        session_keys(Profile::AeadAes128Gcm, &material, true),
        Err(SrtpError::KeyingMaterialLength {
            expected: 56,
            got: 60
        })
    );
}

#[test]
fn round_trips_both_profiles() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        for seq in 0..50u16 {
            let plain = rtp(seq, 0x1111, usize::from(seq) * 13);
            let protected = protect(&mut tx, &plain);
            assert_eq!(protected.len(), plain.len() + profile.tag_len());
            assert_eq!(protected[..28], plain[..28], "header stays clear");
            if plain.len() > 40 {
                assert_ne!(protected[28..plain.len()], plain[28..], "payload encrypted");
            }
            let mut buf = protected.clone();
            let n = rx.unprotect_rtp(&mut buf).expect("unprotect");
            assert_eq!(buf[..n], plain[..], "{profile:?} seq {seq}");

            let plain = rtcp(0x2222);
            let protected = protect_rtcp(&mut tx, &plain);
            assert_eq!(protected.len(), plain.len() + profile.rtcp_overhead());
            assert_ne!(protected[8..plain.len()], plain[8..]);
            let mut buf = protected;
            let n = rx.unprotect_rtcp(&mut buf).expect("unprotect rtcp");
            assert_eq!(buf[..n], plain[..]);
        }
    }
}

#[test]
fn every_bit_flip_is_rejected_and_changes_nothing() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        let first = protect(&mut tx, &rtp(10, 0x3333, 40));
        let second = protect(&mut tx, &rtp(11, 0x3333, 40));
        let ctl = protect_rtcp(&mut tx, &rtcp(0x3333));
        for (packet, is_rtp) in [(&first, true), (&ctl, false)] {
            for byte in 0..packet.len() {
                for bit in (0..8).map(|b| 1u8 << b) {
                    let mut bad = packet.clone();
                    bad[byte] ^= bit;
                    let result = if is_rtp {
                        rx.unprotect_rtp(&mut bad)
                    } else {
                        rx.unprotect_rtcp(&mut bad)
                    };
                    assert!(
                        result.is_err(),
                        "{profile:?} byte {byte} bit {bit:#x} accepted"
                    );
                    assert_eq!(rx.ssrc_count(), 0, "a rejected packet created state");
                }
            }
        }
        // Good packets still decrypt: no state was advanced by the forgeries.
        for packet in [&second, &first] {
            let mut buf = packet.clone();
            rx.unprotect_rtp(&mut buf)
                .expect("good packet after forgeries");
        }
        let mut buf = ctl.clone();
        rx.unprotect_rtcp(&mut buf)
            .expect("good rtcp after forgeries");
    }
}

#[test]
fn replay_and_too_old_are_rejected() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        let packets: Vec<Vec<u8>> = (0..300u16)
            .map(|seq| protect(&mut tx, &rtp(seq, 0x4444, 20)))
            .collect();
        let mut buf = packets[5].clone();
        rx.unprotect_rtp(&mut buf).expect("first");
        let mut buf = packets[5].clone();
        assert_eq!(rx.unprotect_rtp(&mut buf), Err(SrtpError::Replayed));
        let mut buf = packets[299].clone();
        rx.unprotect_rtp(&mut buf).expect("jump ahead");
        // 299 - 172 = 127: still inside the 128-packet window; 171 is not.
        let mut buf = packets[172].clone();
        rx.unprotect_rtp(&mut buf).expect("late but in window");
        let mut buf = packets[171].clone();
        assert_eq!(rx.unprotect_rtp(&mut buf), Err(SrtpError::TooOld));
        let mut buf = packets[299].clone();
        assert_eq!(rx.unprotect_rtp(&mut buf), Err(SrtpError::Replayed));

        let c1 = protect_rtcp(&mut tx, &rtcp(0x4444));
        let c2 = protect_rtcp(&mut tx, &rtcp(0x4444));
        let mut buf = c2.clone();
        rx.unprotect_rtcp(&mut buf).expect("rtcp 2");
        let mut buf = c1.clone();
        rx.unprotect_rtcp(&mut buf).expect("rtcp 1, reordered");
        let mut buf = c1;
        assert_eq!(rx.unprotect_rtcp(&mut buf), Err(SrtpError::Replayed));
    }
}

#[test]
fn rollover_with_reordering_around_the_wrap() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        // Sequence numbers 65500 ..= 65535, 0 ..= 99 (the sender's ROC goes 0 -> 1), then
        // once more around to ROC 2 via a long run.
        let seqs: Vec<u16> = (65500..=65535).chain(0..100).collect();
        let packets: Vec<(u16, Vec<u8>, Vec<u8>)> = seqs
            .iter()
            .map(|&s| {
                let plain = rtp(s, 0x5555, 30);
                (s, protect(&mut tx, &plain), plain)
            })
            .collect();
        // Reorder in blocks of 7, reversed within each block: packets straddling the wrap
        // arrive after ones from the next ROC.
        let mut order: Vec<usize> = Vec::new();
        for block in (0..packets.len()).collect::<Vec<_>>().chunks(7) {
            order.extend(block.iter().rev());
        }
        for i in order {
            let (seq, protected, plain) = &packets[i];
            let mut buf = protected.clone();
            let n = rx
                .unprotect_rtp(&mut buf)
                .unwrap_or_else(|e| panic!("{profile:?} seq {seq}: {e}"));
            assert_eq!(buf[..n], plain[..]);
        }
        // The sender really used ROC 1 after the wrap: a packet protected as if ROC were 0
        // would not authenticate, so the receiver's guess was right. Continue past a
        // second wrap in order.
        for s in (100..=65535).chain(0..10) {
            let plain = rtp(s, 0x5555, 8);
            let mut buf = protect(&mut tx, &plain);
            let n = rx.unprotect_rtp(&mut buf).expect("second wrap");
            assert_eq!(buf[..n], plain[..]);
        }
    }
}

#[test]
fn wrong_roc_does_not_authenticate() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        tx.set_rtp_state(0x6666, 1, 5);
        let mut buf = protect(&mut tx, &rtp(6, 0x6666, 10));
        // The receiver believes ROC 0.
        assert_eq!(rx.unprotect_rtp(&mut buf), Err(SrtpError::AuthFailed));
        let mut buf = protect(&mut tx, &rtp(7, 0x6666, 10));
        rx.set_rtp_state(0x6666, 1, 5);
        rx.unprotect_rtp(&mut buf).expect("same ROC");
    }
}

#[test]
fn ssrc_table_is_bounded() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        for ssrc in 0..MAX_SSRCS as u32 {
            let mut buf = protect(&mut tx, &rtp(1, ssrc, 4));
            rx.unprotect_rtp(&mut buf).expect("within the table");
        }
        let plain = rtp(1, 9999, 4);
        let mut buf = plain.clone();
        buf.resize(plain.len() + 32, 0);
        assert_eq!(
            tx.protect_rtp(&mut buf, plain.len()),
            Err(SrtpError::TooManySsrcs { max: MAX_SSRCS })
        );
        assert!(tx.remove_ssrc(3));
        assert!(!tx.remove_ssrc(3));
        let mut buf = protect(&mut tx, &plain);
        assert_eq!(
            rx.unprotect_rtp(&mut buf),
            Err(SrtpError::TooManySsrcs { max: MAX_SSRCS })
        );
        assert!(rx.remove_ssrc(7));
        let mut again = protect(&mut tx, &rtp(2, 9999, 4));
        rx.unprotect_rtp(&mut again)
            .expect("a freed slot is reused");
        assert_eq!(rx.ssrc_count(), MAX_SSRCS);
        // The other streams kept their state.
        let mut buf = protect(&mut tx, &rtp(2, 63, 4));
        rx.unprotect_rtp(&mut buf).expect("stream 63 intact");
        // The last stream, moved into the freed place by the removal, kept its replay
        // window: its first packet again is a replay, its next one is fine.
        let last = MAX_SSRCS as u32 - 1;
        let mut replayed = protect(&mut tx, &rtp(1, last, 4));
        assert!(
            rx.unprotect_rtp(&mut replayed).is_err(),
            "a replay on the moved stream"
        );
        let mut next = protect(&mut tx, &rtp(2, last, 4));
        rx.unprotect_rtp(&mut next)
            .expect("the moved stream goes on");
    }
}

#[test]
fn bad_input_gets_clean_errors() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        let plain = rtp(1, 1, 10);
        let mut buf = plain.clone();
        buf.resize(plain.len() + profile.tag_len() - 1, 0);
        assert!(matches!(
            tx.protect_rtp(&mut buf, plain.len()),
            Err(SrtpError::NoRoomForTag { .. })
        ));
        let too_long = buf.len() + 1;
        assert!(matches!(
            tx.protect_rtp(&mut buf, too_long),
            Err(SrtpError::Malformed(_))
        ));
        let control = rtcp(1);
        let mut buf = control.clone();
        buf.resize(control.len() + profile.rtcp_overhead() - 1, 0);
        assert!(matches!(
            tx.protect_rtcp(&mut buf, control.len()),
            Err(SrtpError::NoRoomForTag { .. })
        ));
        assert_eq!(rx.unprotect_rtp(&mut [0x80; 5]), Err(SrtpError::TooShort));
        assert_eq!(rx.unprotect_rtcp(&mut [0x80; 7]), Err(SrtpError::TooShort));
        assert!(matches!(
            rx.unprotect_rtp(&mut [0x00; 40]),
            Err(SrtpError::Malformed(_))
        ));
        // A protected packet cut short anywhere is refused.
        let protected = protect(&mut tx, &plain);
        for len in 0..protected.len() {
            let mut cut = protected[..len].to_vec();
            assert!(rx.unprotect_rtp(&mut cut).is_err(), "length {len} accepted");
        }
        let protected = protect_rtcp(&mut tx, &control);
        for len in 0..protected.len() {
            let mut cut = protected[..len].to_vec();
            assert!(
                rx.unprotect_rtcp(&mut cut).is_err(),
                "rtcp length {len} accepted"
            );
        }
        assert_eq!(rx.ssrc_count(), 0);
    }
}

proptest! {
    #[test]
    fn unprotect_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300),
                              gcm in any::<bool>()) {
        let profile = if gcm { Profile::AeadAes128Gcm } else { Profile::Aes128CmHmacSha1_80 };
        let (_, mut rx) = pair(profile);
        let mut a = data.clone();
        prop_assert!(rx.unprotect_rtp(&mut a).is_err());
        let mut b = data;
        prop_assert!(rx.unprotect_rtcp(&mut b).is_err());
    }

    #[test]
    fn protect_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300),
                            room in 0usize..40, gcm in any::<bool>()) {
        let profile = if gcm { Profile::AeadAes128Gcm } else { Profile::Aes128CmHmacSha1_80 };
        let (mut tx, mut rx) = pair(profile);
        let len = data.len();
        let mut a = data.clone();
        a.resize(len + room, 0);
        if let Ok(n) = tx.protect_rtp(&mut a, len) {
            let n = rx.unprotect_rtp(&mut a[..n]).expect("own packet unprotects");
            prop_assert_eq!(&a[..n], &data[..]);
        }
        let mut b = data.clone();
        b.resize(len + room, 0);
        if let Ok(n) = tx.protect_rtcp(&mut b, len) {
            let n = rx.unprotect_rtcp(&mut b[..n]).expect("own rtcp unprotects");
            prop_assert_eq!(&b[..n], &data[..]);
        }
    }
}

/// Rough cost per packet: `cargo test -p relay --lib srtp::tests::cost -- --ignored
/// --nocapture`. A debug build measures mostly unoptimised RustCrypto code (AES-CM and
/// HMAC-SHA1 are ~250x slower than in release; ring's GCM is always optimised), so read
/// it as an upper bound; add `--release` for the real figure.
#[test]
#[ignore]
fn cost_per_packet() {
    for profile in PROFILES {
        let (mut tx, mut rx) = pair(profile);
        let plain = rtp(0, 0x7777, 1200 - 32);
        let mut buf = [0u8; 1300];
        let rounds = 20_000u32;
        let start = std::time::Instant::now();
        for i in 0..rounds {
            buf[..plain.len()].copy_from_slice(&plain);
            buf[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            let n = tx.protect_rtp(&mut buf, plain.len()).expect("protect");
            rx.unprotect_rtp(&mut buf[..n]).expect("unprotect");
        }
        let per = start.elapsed() / rounds;
        println!("{profile:?}: protect+unprotect of a 1200-byte RTP packet: {per:?}");
    }
}
