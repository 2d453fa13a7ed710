//! Synthetic media of one publisher: Opus-rate audio with RFC 6464 levels and a talk
//! pattern, and three-layer simulcast VP8 at realistic rates and packet sizes, written as
//! plain RTP into a caller's buffer (the peer connection protects it in place).
//!
//! Exists so the SFU sees what a browser sends (MID and RID header extensions, VP8
//! payload descriptors with picture ids, keyframes every 2 s and on PLI, marker bits at
//! frame ends) without a browser. No allocation per packet.

use std::time::Duration;

use relay::rtp::ExtMap;

/// Audio packet interval (Opus 20 ms frames: 50 packets/s).
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Opus-like payload bytes per audio packet.
pub const AUDIO_PAYLOAD: usize = 80;
/// Video frame rate of every layer.
pub const FPS: u32 = 30;
/// Largest RTP payload of a video packet (VP8 descriptor included).
pub const MAX_VIDEO_PAYLOAD: usize = 1100;
/// A keyframe at least this often.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_secs(2);
/// Keyframes are this many times larger than delta frames.
const KEYFRAME_FACTOR: usize = 3;
/// VP8 payload descriptor: X|S byte, I byte, 15-bit picture id (2 bytes).
const VP8_DESCRIPTOR: usize = 4;

/// The simulcast layers: rid and target bitrate (bit/s).
pub const LAYERS: [(&str, u32); 3] = [("q", 150_000), ("h", 500_000), ("f", 1_500_000)];

/// The audio level (RFC 6464, -dBov: 0 loudest, 127 silence) of one participant over
/// time. Talkers speak in 3 s bursts (levels 20–40 dBov) separated by 1 s pauses; the
/// others stay near silence (100–127).
#[derive(Debug, Clone, Copy)]
pub struct LevelPattern {
    /// Whether this participant talks.
    pub talker: bool,
    /// Shifts the pattern so that talkers do not all talk at once.
    pub phase: u64,
}

impl LevelPattern {
    /// The level of the `n`-th audio packet (20 ms each).
    pub fn level(&self, n: u64) -> u8 {
        let t = n + self.phase;
        let wobble = (t.wrapping_mul(2_654_435_761) >> 7) % 21;
        let wobble = u8::try_from(wobble).unwrap_or(0);
        // 200 packets = 4 s: 150 talking, 50 pause.
        if self.talker && t % 200 < 150 {
            20 + wobble
        } else {
            100 + wobble + (wobble / 3)
        }
    }
}

/// Writes an RTP header with one-byte header extensions (RFC 8285) into `buf`; returns
/// its length. `exts` are (id, value) pairs; ids outside 1..=14 and empty or longer than
/// 16-byte values are skipped.
pub fn write_header(
    buf: &mut [u8],
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    exts: &[(Option<u8>, &[u8])],
) -> usize {
    buf[0] = 0x90; // V=2, X=1
    buf[1] = (u8::from(marker) << 7) | (pt & 0x7f);
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..14].copy_from_slice(&[0xBE, 0xDE]);
    let mut at = 16;
    for (id, value) in exts {
        let Some(id) = *id else { continue };
        if !(1..=14).contains(&id) || value.is_empty() || value.len() > 16 {
            continue;
        }
        buf[at] = (id << 4) | (u8::try_from(value.len() - 1).unwrap_or(0) & 0x0f);
        buf[at + 1..at + 1 + value.len()].copy_from_slice(value);
        at += 1 + value.len();
    }
    while (at - 16) % 4 != 0 {
        buf[at] = 0;
        at += 1;
    }
    let words = u16::try_from((at - 16) / 4).unwrap_or(0);
    buf[14..16].copy_from_slice(&words.to_be_bytes());
    at
}

/// One publisher's audio stream.
#[derive(Debug, Clone)]
pub struct AudioSource {
    /// SSRC (declared in the offer).
    pub ssrc: u32,
    seq: u16,
    n: u64,
    pattern: LevelPattern,
}

impl AudioSource {
    /// A stream with this SSRC, talking per `pattern`.
    pub fn new(ssrc: u32, seq: u16, pattern: LevelPattern) -> AudioSource {
        AudioSource {
            ssrc,
            seq,
            n: 0,
            pattern,
        }
    }

    /// Writes the next packet (header with audio level and MID "0", 80 bytes payload)
    /// into `buf`; returns its length.
    pub fn next(&mut self, buf: &mut [u8], pt: u8, ext: &ExtMap) -> usize {
        let level = self.pattern.level(self.n);
        let voice = level < 60;
        let lvl = [(u8::from(voice) << 7) | level];
        let ts = u32::try_from(self.n.wrapping_mul(960) & 0xffff_ffff).unwrap_or(0);
        let h = write_header(
            buf,
            false,
            pt,
            self.seq,
            ts,
            self.ssrc,
            &[(ext.audio_level, &lvl), (ext.mid, b"0")],
        );
        let payload = &mut buf[h..h + AUDIO_PAYLOAD];
        payload[0] = 0x78; // Opus TOC: SILK-only 20 ms, mono
        let fill = u8::try_from(self.n & 0xff).unwrap_or(0);
        payload[1..].fill(fill);
        self.seq = self.seq.wrapping_add(1);
        self.n += 1;
        h + AUDIO_PAYLOAD
    }
}

/// One simulcast layer: its frames cut into packets.
#[derive(Debug, Clone)]
pub struct VideoLayer {
    /// The rid (`q`, `h`, `f`).
    pub rid: &'static str,
    /// SSRC (not declared: the SFU learns it from the RID extension).
    pub ssrc: u32,
    frame_bytes: usize,
    seq: u16,
    picture_id: u16,
    frames: u64,
    /// The next frame is a keyframe (set on PLI/FIR and every 2 s).
    pub want_keyframe: bool,
    // The frame being sent: bytes left, first packet pending.
    left: usize,
    first: bool,
    keyframe: bool,
}

impl VideoLayer {
    /// A layer of `bitrate` bit/s at [`FPS`].
    pub fn new(rid: &'static str, ssrc: u32, bitrate: u32, seq: u16) -> VideoLayer {
        VideoLayer {
            rid,
            ssrc,
            frame_bytes: usize::try_from(bitrate / 8 / FPS).unwrap_or(1000),
            seq,
            picture_id: seq & 0x7fff,
            frames: 0,
            want_keyframe: true,
            left: 0,
            first: false,
            keyframe: false,
        }
    }

    /// Starts the next frame (call every 1/[`FPS`] s); returns how many packets it
    /// takes.
    pub fn start_frame(&mut self) -> usize {
        let every = u64::from(FPS) * KEYFRAME_INTERVAL.as_secs();
        self.keyframe = self.want_keyframe || self.frames.is_multiple_of(every);
        self.want_keyframe = false;
        self.left = if self.keyframe {
            self.frame_bytes * KEYFRAME_FACTOR
        } else {
            self.frame_bytes
        };
        self.first = true;
        self.frames += 1;
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.left.div_ceil(MAX_VIDEO_PAYLOAD - VP8_DESCRIPTOR)
    }

    /// Whether the current frame is a keyframe.
    #[cfg(test)]
    pub fn is_keyframe(&self) -> bool {
        self.keyframe
    }

    /// Writes the next packet of the current frame into `buf` (None when the frame is
    /// sent). Packets of a frame have equal sizes (within one byte), the last one the
    /// marker bit.
    pub fn next(&mut self, buf: &mut [u8], pt: u8, ext: &ExtMap) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        let packets = self.left.div_ceil(MAX_VIDEO_PAYLOAD - VP8_DESCRIPTOR);
        let chunk = self.left.div_ceil(packets);
        self.left -= chunk;
        let marker = self.left == 0;
        let ts = u32::try_from((self.frames * u64::from(90_000 / FPS)) & 0xffff_ffff).unwrap_or(0);
        let h = write_header(
            buf,
            marker,
            pt,
            self.seq,
            ts,
            self.ssrc,
            &[(ext.mid, b"1"), (ext.rid, self.rid.as_bytes())],
        );
        let d = &mut buf[h..h + VP8_DESCRIPTOR + chunk];
        d[0] = 0x80 | if self.first { 0x10 } else { 0 }; // X, S (partition 0)
        d[1] = 0x80; // I: picture id present
        let pid = self.picture_id.to_be_bytes();
        d[2] = 0x80 | pid[0]; // M: 15-bit picture id
        d[3] = pid[1];
        let body = &mut d[VP8_DESCRIPTOR..];
        body.fill(0x5a);
        if self.first {
            // VP8 frame tag: P bit (bit 0) 0 = keyframe; show_frame; a keyframe carries
            // the start code and a 320x180 size.
            body[0] = if self.keyframe { 0x10 } else { 0x11 };
            if self.keyframe && body.len() >= 10 {
                body[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                body[6..8].copy_from_slice(&320u16.to_le_bytes());
                body[8..10].copy_from_slice(&180u16.to_le_bytes());
            }
        }
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        Some(h + VP8_DESCRIPTOR + chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::rtp::ExtMap;

    fn ext() -> ExtMap {
        ExtMap {
            audio_level: Some(1),
            mid: Some(4),
            rid: Some(10),
            ..ExtMap::default()
        }
    }

    #[test]
    fn talkers_burst_and_pause_silent_ones_stay_quiet() {
        let talker = LevelPattern {
            talker: true,
            phase: 0,
        };
        let quiet = LevelPattern {
            talker: false,
            phase: 0,
        };
        let loud = (0..150)
            .filter(|&n| (20..=40).contains(&talker.level(n)))
            .count();
        assert_eq!(loud, 150, "a talker is at 20-40 dBov for 3 s");
        assert!(
            (150..200).all(|n| talker.level(n) >= 100),
            "then pauses 1 s"
        );
        assert!((0..1000).all(|n| (100..=127).contains(&quiet.level(n))));
        let shifted = LevelPattern {
            talker: true,
            phase: 100,
        };
        assert!(shifted.level(60) >= 100, "phases make talkers alternate");
    }

    #[test]
    fn audio_packet_carries_level_and_mid_and_parses() {
        let mut a = AudioSource::new(
            0xdead_beef,
            100,
            LevelPattern {
                talker: true,
                phase: 0,
            },
        );
        let mut buf = [0u8; 1500];
        let n = a.next(&mut buf, 111, &ext());
        let p = relay::rtp::RtpView::parse(&buf[..n]).expect("valid RTP");
        assert_eq!(p.ssrc(), 0xdead_beef);
        assert_eq!(p.sequence(), 100);
        assert_eq!(p.payload().len(), AUDIO_PAYLOAD);
        // Extension block: level element (id 1, len 0), mid element (id 4, "0").
        assert_eq!(&buf[12..14], &[0xBE, 0xDE]);
        assert_eq!(buf[16], 0x10);
        assert_eq!(
            buf[17] & 0x7f,
            LevelPattern {
                talker: true,
                phase: 0
            }
            .level(0)
        );
        assert_eq!(buf[17] & 0x80, 0x80, "voice flag on a talker");
        assert_eq!(&buf[18..20], &[0x40, b'0']);
        let n2 = a.next(&mut buf, 111, &ext());
        assert_eq!(n2, n);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 101);
    }

    #[test]
    fn video_layers_have_realistic_rates_sizes_and_keyframes() {
        let mut buf = [0u8; 1500];
        for (rid, bitrate) in LAYERS {
            let mut l = VideoLayer::new(rid, 7, bitrate, 0);
            let (mut bytes, mut packets, mut keyframes) = (0usize, 0usize, 0usize);
            for _ in 0..FPS * 4 {
                let expect = l.start_frame();
                let mut got = 0;
                let mut last_marker = false;
                while let Some(n) = l.next(&mut buf, 96, &ext()) {
                    assert!(n <= 12 + 12 + MAX_VIDEO_PAYLOAD, "{rid}: {n} B");
                    let p = relay::rtp::RtpView::parse(&buf[..n]).expect("valid RTP");
                    let info = relay::sfu::codec::parse_vp8(p.payload()).expect("valid VP8");
                    if got == 0 {
                        assert!(info.start_of_frame);
                        assert_eq!(info.keyframe, l.is_keyframe());
                        keyframes += usize::from(info.keyframe);
                    } else {
                        assert!(!info.start_of_frame);
                    }
                    last_marker = p.marker();
                    bytes += p.payload().len();
                    got += 1;
                }
                assert_eq!(got, expect);
                assert!(last_marker, "the last packet of a frame has the marker");
                packets += got;
            }
            // 4 s: keyframes at 0 s and 2 s.
            assert_eq!(keyframes, 2, "{rid}");
            let kbps = bytes * 8 / 4 / 1000;
            let target = usize::try_from(bitrate / 1000).expect("fits");
            assert!(
                kbps >= target && kbps <= target * 13 / 10,
                "{rid}: {kbps} kbit/s"
            );
            assert!(packets >= usize::try_from(FPS * 4).expect("fits"));
        }
        let mut l = VideoLayer::new("h", 7, 500_000, 0);
        l.start_frame();
        while l.next(&mut buf, 96, &ext()).is_some() {}
        l.start_frame();
        assert!(!l.is_keyframe());
        l.want_keyframe = true;
        l.start_frame();
        assert!(l.is_keyframe(), "a PLI makes the next frame a keyframe");
    }
}
