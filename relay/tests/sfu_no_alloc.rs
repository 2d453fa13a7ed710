//! Proves that the SFU's per-packet decisions never allocate: codec parsing and VP8
//! rewriting, the layer and audio rewriters' `on_packet`, and the speaker detector's level
//! updates and decisions (once its publishers are known).
//!
//! A counting `#[global_allocator]` can only exist once per binary, so this test has a
//! binary of its own.

use relay::sfu::codec::{Codec, parse, rewrite_vp8};
use relay::sfu::rewrite::{AudioRewriter, Incoming, LayerRewriter, OPUS_CLOCK_HZ, Vp8Ids};
use relay::sfu::speaker::{SpeakerConfig, SpeakerDetector};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_during;

#[test]
fn codec_and_rewriters_do_not_allocate() {
    let mut vp8 = [0x90u8, 0xe0, 0x92, 0x34, 0x07, 0x40, 0x10, 0x02, 0x00];
    let h264 = [
        0x78u8, 0x00, 0x04, 0x67, 0x42, 0x00, 0x1f, 0x00, 0x02, 0x68, 0xce,
    ];
    let mut video = LayerRewriter::new(0);
    let mut audio = AudioRewriter::new(OPUS_CLOCK_HZ);
    audio.set_source(Some(1));
    let mut forwarded = 0u32;
    let n = allocations_during(|| {
        for i in 0..5_000u32 {
            let seq = (i as u16).wrapping_add(65_000);
            for layer in 0..3u8 {
                let info = parse(Codec::Vp8, &vp8).expect("vp8");
                let _ = parse(Codec::H264, &h264);
                let _ = parse(Codec::Opus, &h264);
                let p = Incoming {
                    seq,
                    ts: i.wrapping_mul(3_000),
                    arrival_us: u64::from(i) * 33_000,
                    keyframe_start: i % 100 == 0,
                    vp8: info.vp8.map(|v| Vp8Ids {
                        picture_id: v.picture_id,
                        tl0picidx: v.tl0picidx,
                    }),
                };
                if let relay::sfu::rewrite::Decision::Forward(f) = video.on_packet(layer, &p) {
                    rewrite_vp8(&mut vp8, f.picture_id, f.tl0picidx).expect("rewrite");
                    forwarded += 1;
                }
            }
            if i % 250 == 0 {
                video.set_target((i / 250 % 3) as u8);
                audio.set_source(Some(i / 250 % 5));
            }
            for src in 0..5 {
                let _ = audio.on_packet(src, &Incoming::new(seq, i * 960, u64::from(i) * 20_000));
            }
        }
    });
    assert!(forwarded > 4_000, "the loop really forwarded ({forwarded})");
    assert_eq!(n, 0, "codec/rewriter path allocated {n} times");
}

#[test]
fn speaker_updates_do_not_allocate() {
    let mut d = SpeakerDetector::new(SpeakerConfig::default());
    for id in 0..20u32 {
        d.add(id, 0);
    }
    let mut events = 0;
    let n = allocations_during(|| {
        for tick in 0..3_000u64 {
            let now = tick * 20_000;
            for id in 0..20u32 {
                // Speakers take turns, 2 s each; the others are silent or idle.
                let talking = (tick / 100) % 20 == u64::from(id);
                if talking || id % 2 == 0 {
                    d.on_level(id, if talking { 30 } else { 127 }, now);
                }
            }
            d.tick(now);
            while d.poll_event().is_some() {
                events += 1;
            }
            let _ = d.top_n(3).count();
        }
    });
    assert!(events > 10, "the detector really decided ({events} events)");
    assert_eq!(n, 0, "speaker detector allocated {n} times");
}

#[test]
fn the_counter_sees_a_table_growing_past_capacity() {
    // The harness can fail: a publisher beyond the configured capacity does allocate.
    let mut d = SpeakerDetector::new(SpeakerConfig {
        capacity: 0,
        ..SpeakerConfig::default()
    });
    let n = allocations_during(|| d.on_level(1u32, 30, 0));
    assert!(n > 0, "the counting allocator saw nothing");
}
