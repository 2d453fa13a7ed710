//! Fuzzes the ICE-TCP RFC 4571 frame reader: arbitrary bytes, delivered in arbitrary read
//! sizes, must never panic, every read must find room once the complete frames were
//! taken, and the frames (and the oversize error) must be exactly those a plain reading
//! of the whole stream gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::sfu::runtime::framing::{FrameError, FrameReader};

const MAX: usize = 1500;

/// The frames of the whole stream, and whether it ends in an oversize frame.
fn reference(stream: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(h) = stream.get(at..at + 2) {
        let len = usize::from(u16::from_be_bytes([h[0], h[1]]));
        if len > MAX {
            return (frames, true);
        }
        let Some(body) = stream.get(at + 2..at + 2 + len) else {
            break;
        };
        if len > 0 {
            frames.push(body);
        }
        at += 2 + len;
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sizes_seed, stream)) = data.split_first() else {
        return;
    };
    let (want, want_error) = reference(stream);
    let mut reader = FrameReader::new(MAX);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut error = false;
    let mut at = 0;
    let mut step = 0usize;
    'feed: while at < stream.len() {
        // Read sizes cycle through 1..=256 driven by the seed.
        step = step.wrapping_mul(31).wrapping_add(usize::from(sizes_seed)) % 256 + 1;
        let spare = reader.spare();
        assert!(
            !spare.is_empty(),
            "no room for a read after the frames were taken"
        );
        let n = step.min(spare.len()).min(stream.len() - at);
        spare[..n].copy_from_slice(&stream[at..at + n]);
        reader.commit(n);
        at += n;
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => got.push(f.to_vec()),
                Ok(None) => break,
                Err(FrameError::Oversize { len, max }) => {
                    assert!(len > max && max == MAX);
                    error = true;
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(error, want_error, "the oversize error differs");
    assert_eq!(got.len(), want.len(), "a different number of frames");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_slice(), *w);
    }
});
