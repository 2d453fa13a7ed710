//! Fuzzes the SFU's payload parsers and the VP8 rewrite: VP8 descriptors, H.264
//! single/STAP-A/FU-A payloads and Opus must never panic, and a VP8 rewrite must leave a
//! descriptor that reads back with the written picture id and TL0PICIDX.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::sfu::codec::{Codec, parse, parse_vp8, rewrite_vp8};

fuzz_target!(|data: &[u8]| {
    for c in [Codec::Opus, Codec::Vp8, Codec::H264] {
        let _ = parse(c, data);
    }
    let (pid, tl0) = match data {
        [a, b, c, ..] => (u16::from_be_bytes([*a, *b]), *c),
        _ => (0, 0),
    };
    let mut buf = data.to_vec();
    match rewrite_vp8(&mut buf, Some(pid), Some(tl0)) {
        Err(_) => assert_eq!(buf, data, "a failed rewrite changed the payload"),
        Ok(before) => {
            let after = parse_vp8(&buf).expect("a rewrite broke the descriptor");
            assert_eq!(after.header_len, before.header_len);
            assert_eq!(after.keyframe, before.keyframe);
            if let Some((_, long)) = before.picture_id {
                let mask = if long { 0x7fff } else { 0x7f };
                assert_eq!(after.picture_id, Some((pid & mask, long)));
            }
            if before.tl0picidx.is_some() {
                assert_eq!(after.tl0picidx, Some(tl0));
            }
            assert_eq!(buf[after.header_len..], data[before.header_len..]);
        }
    }
});
