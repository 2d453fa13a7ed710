//! Per-receiver rewriting of sequence numbers, timestamps and VP8 picture ids, so that a
//! receiver sees one continuous stream per slot while the SFU switches the slot between
//! incoming streams: a video track's simulcast layers ([`LayerRewriter`], switching only
//! at a keyframe of the new layer) or the speakers forwarded in an audio slot
//! ([`AudioRewriter`], switching at once).
//!
//! Each run of packets taken from one incoming stream is an *epoch*. Inside an epoch the
//! output is the input plus fixed offsets, so a retransmission or a reordered packet maps
//! to the same output numbers as the original. A new epoch continues the output where the
//! previous one stopped: the sequence number at last+1, the timestamp advanced by the
//! wall-clock time since the last forwarded packet (at least one tick), the VP8 picture id
//! at last+1 and TL0PICIDX at last+1. Packets of the new stream older than its first
//! forwarded packet, and every packet of a stream that is not current, are dropped.
//! 16-bit sequence numbers, 32-bit timestamps, 7/15-bit picture ids and 8-bit TL0PICIDX
//! are unwrapped to 64 bits internally, so wraps are invisible to the logic.
//!
//! Sans-IO, no allocation: all state is a few integers per receiver slot.

/// The RTP clock of video codecs.
pub const VIDEO_CLOCK_HZ: u32 = 90_000;
/// The RTP clock of Opus.
pub const OPUS_CLOCK_HZ: u32 = 48_000;

/// The VP8 fields the rewriter keeps continuous, as read by
/// [`crate::sfu::codec::parse_vp8`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Ids {
    /// The picture id and whether it is the 15-bit form.
    pub picture_id: Option<(u16, bool)>,
    /// TL0PICIDX.
    pub tl0picidx: Option<u8>,
}

/// One incoming packet, as far as the rewriter cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The RTP sequence number.
    pub seq: u16,
    /// The RTP timestamp.
    pub ts: u32,
    /// When the packet arrived, in µs of the caller's monotonic clock.
    pub arrival_us: u64,
    /// A keyframe starts in this packet (see [`crate::sfu::codec::FrameInfo`]).
    pub keyframe_start: bool,
    /// VP8 descriptor fields, for VP8 tracks.
    pub vp8: Option<Vp8Ids>,
}

impl Incoming {
    /// A packet with no keyframe and no VP8 fields (audio, or H.264 continuation).
    pub fn new(seq: u16, ts: u32, arrival_us: u64) -> Self {
        Incoming {
            seq,
            ts,
            arrival_us,
            keyframe_start: false,
            vp8: None,
        }
    }
}

/// The numbers a forwarded packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The outgoing sequence number.
    pub seq: u16,
    /// The outgoing timestamp.
    pub ts: u32,
    /// The outgoing VP8 picture id (15-bit value; write it with
    /// [`crate::sfu::codec::rewrite_vp8`], which keeps the packet's field width).
    pub picture_id: Option<u16>,
    /// The outgoing TL0PICIDX.
    pub tl0picidx: Option<u8>,
    /// This packet starts a new epoch: the slot just switched to another stream (for
    /// audio, the caller may set the RTP marker bit on it, as at the start of a talkspurt).
    pub switched: bool,
}

/// What to do with one incoming packet for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it with these numbers.
    Forward(Forward),
    /// Do not send it (a stream that is not current, or a packet from before the switch).
    Drop,
    /// Do not send it; the receiver waits for a keyframe on this packet's layer, so the
    /// caller should ask the publisher for one (PLI/FIR, rate-limited by the caller).
    DropNeedKeyframe,
}

/// Unwraps `value` (taken modulo `modulus`) to the 64-bit number nearest `reference`.
fn unwrap_near(reference: i64, value: u64, modulus: i64) -> i64 {
    let value = i64::try_from(value).unwrap_or(0).rem_euclid(modulus);
    let mut d = (value - reference.rem_euclid(modulus)).rem_euclid(modulus);
    if d >= modulus / 2 {
        d -= modulus;
    }
    reference.saturating_add(d)
}

/// A counter unwrapped in one epoch and its offset to the output.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    highest: i64,
    offset: i64,
}

impl Mapped {
    fn start(first: i64, last_out: Option<i64>, step: i64) -> Self {
        Mapped {
            highest: first,
            offset: last_out.map_or(0, |l| l.saturating_add(step).saturating_sub(first)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Epoch<K> {
    source: K,
    start_seq: i64,
    seq: Mapped,
    ts: Mapped,
    pid: Option<Mapped>,
    tl0: Option<Mapped>,
}

/// The output side shared by both rewriters.
#[derive(Debug, Clone, Copy)]
struct Continuity<K> {
    clock_hz: u32,
    last_seq: Option<i64>,
    last_ts: Option<i64>,
    last_ts_arrival_us: u64,
    last_pid: Option<i64>,
    last_tl0: Option<i64>,
    epoch: Option<Epoch<K>>,
}

impl<K: Copy + PartialEq> Continuity<K> {
    fn new(clock_hz: u32) -> Self {
        Continuity {
            clock_hz,
            last_seq: None,
            last_ts: None,
            last_ts_arrival_us: 0,
            last_pid: None,
            last_tl0: None,
            epoch: None,
        }
    }

    fn ticks_since_last(&self, now_us: u64) -> i64 {
        let elapsed = u128::from(now_us.saturating_sub(self.last_ts_arrival_us));
        let ticks = elapsed * u128::from(self.clock_hz) / 1_000_000;
        i64::try_from(ticks)
            .unwrap_or(i64::MAX / 4)
            .clamp(1, i64::MAX / 4)
    }

    fn start_epoch(&mut self, source: K, p: &Incoming) {
        let step_ts = self.ticks_since_last(p.arrival_us);
        let first_seq = i64::from(p.seq);
        self.epoch = Some(Epoch {
            source,
            start_seq: first_seq,
            seq: Mapped::start(first_seq, self.last_seq, 1),
            ts: Mapped::start(i64::from(p.ts), self.last_ts, step_ts),
            pid: None,
            tl0: None,
        });
    }

    fn current(&self) -> Option<K> {
        self.epoch.map(|e| e.source)
    }

    /// Maps a packet of the current epoch's stream.
    fn forward(&mut self, p: &Incoming, switched: bool) -> Decision {
        let Some(e) = self.epoch.as_mut() else {
            return Decision::Drop;
        };
        let seq = unwrap_near(e.seq.highest, u64::from(p.seq), 1 << 16);
        if seq < e.start_seq {
            return Decision::Drop;
        }
        e.seq.highest = e.seq.highest.max(seq);
        let out_seq = seq.saturating_add(e.seq.offset);
        self.last_seq = Some(self.last_seq.map_or(out_seq, |l| l.max(out_seq)));

        let ts = unwrap_near(e.ts.highest, u64::from(p.ts), 1 << 32);
        e.ts.highest = e.ts.highest.max(ts);
        let out_ts = ts.saturating_add(e.ts.offset);
        if self.last_ts.is_none_or(|l| out_ts >= l) {
            self.last_ts = Some(out_ts);
            self.last_ts_arrival_us = p.arrival_us;
        }

        let mut picture_id = None;
        let mut tl0picidx = None;
        if let Some(ids) = p.vp8 {
            if let Some((pid, long)) = ids.picture_id {
                let modulus = if long { 1 << 15 } else { 1 << 7 };
                let m = match e.pid.as_mut() {
                    Some(m) => {
                        let v = unwrap_near(m.highest, u64::from(pid), modulus);
                        m.highest = m.highest.max(v);
                        v.saturating_add(m.offset)
                    }
                    None => {
                        let m = Mapped::start(i64::from(pid), self.last_pid, 1);
                        e.pid = Some(m);
                        m.highest.saturating_add(m.offset)
                    }
                };
                self.last_pid = Some(self.last_pid.map_or(m, |l| l.max(m)));
                picture_id = Some((m.rem_euclid(1 << 15)) as u16);
            }
            if let Some(t) = ids.tl0picidx {
                let m = match e.tl0.as_mut() {
                    Some(m) => {
                        let v = unwrap_near(m.highest, u64::from(t), 1 << 8);
                        m.highest = m.highest.max(v);
                        v.saturating_add(m.offset)
                    }
                    None => {
                        let m = Mapped::start(i64::from(t), self.last_tl0, 1);
                        e.tl0 = Some(m);
                        m.highest.saturating_add(m.offset)
                    }
                };
                self.last_tl0 = Some(self.last_tl0.map_or(m, |l| l.max(m)));
                tl0picidx = Some(m.rem_euclid(1 << 8) as u8);
            }
        }
        Decision::Forward(Forward {
            seq: out_seq.rem_euclid(1 << 16) as u16,
            ts: out_ts.rem_euclid(1 << 32) as u32,
            picture_id,
            tl0picidx,
            switched,
        })
    }

    /// The incoming sequence number an outgoing one came from, in the current epoch.
    fn original_seq(&self, out_seq: u16) -> Option<(K, u16)> {
        let e = self.epoch.as_ref()?;
        let last = self.last_seq?;
        let out = unwrap_near(last, u64::from(out_seq), 1 << 16);
        let input = out.saturating_sub(e.seq.offset);
        (input >= e.start_seq && input <= e.seq.highest)
            .then(|| (e.source, input.rem_euclid(1 << 16) as u16))
    }
}

/// One receiver's view of one video track published with up to three simulcast layers
/// (each its own incoming SSRC): the receiver gets one outgoing stream, switched to the
/// target layer at that layer's next keyframe.
#[derive(Debug, Clone)]
pub struct LayerRewriter {
    core: Continuity<u8>,
    target: u8,
}

impl Default for LayerRewriter {
    fn default() -> Self {
        Self::new(0)
    }
}

impl LayerRewriter {
    /// A rewriter that will start on `target` at its first keyframe (90 kHz clock).
    pub fn new(target: u8) -> Self {
        LayerRewriter {
            core: Continuity::new(VIDEO_CLOCK_HZ),
            target,
        }
    }

    /// Asks for `layer`; the switch happens at its next keyframe.
    pub fn set_target(&mut self, layer: u8) {
        self.target = layer;
    }

    /// The layer asked for.
    pub fn target(&self) -> u8 {
        self.target
    }

    /// The layer being forwarded, if any.
    pub fn current(&self) -> Option<u8> {
        self.core.current()
    }

    /// The layer a keyframe is awaited on (the target, while it is not current).
    pub fn needs_keyframe(&self) -> Option<u8> {
        (self.current() != Some(self.target)).then_some(self.target)
    }

    /// Decides what to do with a packet of `layer` for this receiver.
    pub fn on_packet(&mut self, layer: u8, p: &Incoming) -> Decision {
        let current = self.core.current();
        if layer == self.target && current != Some(layer) {
            if !p.keyframe_start {
                return Decision::DropNeedKeyframe;
            }
            self.core.start_epoch(layer, p);
            return self.core.forward(p, true);
        }
        if current == Some(layer) {
            return self.core.forward(p, false);
        }
        Decision::Drop
    }

    /// For a NACK from the receiver: the layer and incoming sequence number an outgoing
    /// sequence number came from, if it belongs to the current epoch.
    pub fn original_seq(&self, out_seq: u16) -> Option<(u8, u16)> {
        self.core.original_seq(out_seq)
    }
}

/// One receiver's audio slot, forwarding one speaker at a time (sources are the caller's
/// ids, e.g. incoming SSRCs): lets the SFU forward only the N loudest speakers without
/// the receiver's SSRC count growing with the room.
#[derive(Debug, Clone)]
pub struct AudioRewriter {
    core: Continuity<u32>,
    source: Option<u32>,
}

impl AudioRewriter {
    /// An idle slot with an RTP clock of `clock_hz` ([`OPUS_CLOCK_HZ`] for Opus).
    pub fn new(clock_hz: u32) -> Self {
        AudioRewriter {
            core: Continuity::new(clock_hz),
            source: None,
        }
    }

    /// Which source the slot forwards from now on (`None`: nothing). The switch happens at
    /// the new source's next packet. Any change ends the current epoch, also a pause
    /// (`Some(a)` → `None` → `Some(a)`): the packets `a` sent meanwhile were never
    /// forwarded, so its next one starts a new epoch at the next sequence number; resuming
    /// the old epoch would leave a gap the receiver counts as loss.
    pub fn set_source(&mut self, source: Option<u32>) {
        if source != self.source {
            self.core.epoch = None;
        }
        self.source = source;
    }

    /// The source asked for.
    pub fn source(&self) -> Option<u32> {
        self.source
    }

    /// Decides what to do with a packet of `source` for this slot.
    pub fn on_packet(&mut self, source: u32, p: &Incoming) -> Decision {
        if self.source != Some(source) {
            return Decision::Drop;
        }
        if self.core.current() != Some(source) {
            self.core.start_epoch(source, p);
            return self.core.forward(p, true);
        }
        self.core.forward(p, false)
    }

    /// For a NACK: the source and incoming sequence number of an outgoing one.
    pub fn original_seq(&self, out_seq: u16) -> Option<(u32, u16)> {
        self.core.original_seq(out_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulcast publisher: per layer its own sequence, timestamp and VP8 id bases.
    struct Layer {
        seq: u16,
        ts: u32,
        pid: u16,
        tl0: u8,
    }

    const PACKETS_PER_FRAME: u16 = 3;
    const FRAME_US: u64 = 33_000;
    const FRAME_TICKS: u32 = 3_000;

    fn frame_packets(l: &Layer, frame: u16, keyframe: bool, at_us: u64) -> Vec<Incoming> {
        (0..PACKETS_PER_FRAME)
            .map(|k| Incoming {
                seq: l.seq.wrapping_add(frame * PACKETS_PER_FRAME + k),
                ts: l.ts.wrapping_add(u32::from(frame) * FRAME_TICKS),
                arrival_us: at_us + u64::from(k) * 100,
                keyframe_start: keyframe && k == 0,
                vp8: Some(Vp8Ids {
                    picture_id: Some((l.pid.wrapping_add(frame) & 0x7fff, true)),
                    tl0picidx: Some(l.tl0.wrapping_add(frame as u8)),
                }),
            })
            .collect()
    }

    fn forwarded(d: Decision) -> Option<Forward> {
        match d {
            Decision::Forward(f) => Some(f),
            _ => None,
        }
    }

    #[test]
    fn three_layer_switches_stay_continuous() {
        let layers = [
            Layer {
                seq: 100,
                ts: 1_000,
                pid: 10,
                tl0: 250,
            },
            // Its timestamps wrap 32 bits during the run.
            Layer {
                seq: 40_000,
                ts: u32::MAX - 50_000,
                pid: 20_000,
                tl0: 3,
            },
            // Its sequence numbers wrap while it is current; its picture ids wrap too.
            Layer {
                seq: 65_455,
                ts: 123_456,
                pid: 0x7ff0,
                tl0: 100,
            },
        ];
        let keyframes = |layer: usize, frame: u16| match layer {
            0 => frame == 0,
            1 => frame == 5 || frame == 33,
            _ => frame == 15,
        };
        let mut rw = LayerRewriter::new(0);
        let mut last: Option<Forward> = None;
        let mut last_frame_out: Option<(u32, u16, u8)> = None;
        let mut per_frame_layer = Vec::new();
        let mut retransmit_probe = None;
        let mut last_at = 0u64;
        let mut switch_steps = Vec::new();
        for frame in 0..45u16 {
            if frame == 10 {
                rw.set_target(2);
            }
            if frame == 30 {
                rw.set_target(1);
            }
            let at = 1_000_000 + u64::from(frame) * FRAME_US;
            let mut forwarded_layer = None;
            for (i, l) in layers.iter().enumerate() {
                let layer = i as u8;
                for p in frame_packets(l, frame, keyframes(i, frame), at) {
                    let d = rw.on_packet(layer, &p);
                    match d {
                        Decision::Forward(f) => {
                            if let Some(prev) = last {
                                assert_eq!(
                                    f.seq,
                                    prev.seq.wrapping_add(1),
                                    "frame {frame} layer {layer}: seq continuous"
                                );
                                let dt = f.ts.wrapping_sub(prev.ts);
                                assert!(dt < 1 << 31, "ts monotonic at frame {frame}");
                            }
                            if f.switched {
                                assert!(p.keyframe_start, "a switch only at a keyframe");
                                if let Some(prev) = last {
                                    // The wall-clock time since the last forwarded packet
                                    // at 90 kHz, at least one tick.
                                    let elapsed = p.arrival_us.saturating_sub(last_at) * 9 / 100;
                                    assert_eq!(
                                        u64::from(f.ts.wrapping_sub(prev.ts)),
                                        elapsed.max(1)
                                    );
                                    switch_steps.push(elapsed.max(1));
                                }
                            }
                            if frame == 20 && layer == 2 && retransmit_probe.is_none() {
                                retransmit_probe = Some((p, f));
                            }
                            last = Some(f);
                            last_at = p.arrival_us;
                            forwarded_layer = Some(layer);
                            let ids = (f.ts, f.picture_id.expect("pid"), f.tl0picidx.expect("tl0"));
                            if let Some((ts, pid, tl0)) = last_frame_out
                                && ts != ids.0
                            {
                                assert_eq!(ids.1, (pid + 1) & 0x7fff, "pid +1 per frame");
                                assert_eq!(ids.2, tl0.wrapping_add(1), "tl0 +1 per frame");
                            }
                            last_frame_out = Some(ids);
                        }
                        Decision::DropNeedKeyframe => {
                            assert_eq!(layer, rw.target());
                            assert_ne!(rw.current(), Some(layer));
                        }
                        Decision::Drop => assert_ne!(rw.current(), Some(layer)),
                    }
                }
            }
            per_frame_layer.push(forwarded_layer);
            if frame == 25 {
                // A retransmission of a frame-20 packet maps to its first output.
                let (p, f) = retransmit_probe.expect("probe");
                let again = forwarded(rw.on_packet(2, &p)).expect("retransmission forwarded");
                assert_eq!(
                    (again.seq, again.ts, again.picture_id),
                    (f.seq, f.ts, f.picture_id)
                );
                assert!(!again.switched);
                assert_eq!(rw.original_seq(f.seq), Some((2, p.seq)));
            }
        }
        let expect: Vec<Option<u8>> = (0..45)
            .map(|f| match f {
                0..15 => Some(0),
                15..33 => Some(2),
                _ => Some(1),
            })
            .collect();
        assert_eq!(
            per_frame_layer, expect,
            "no switch before the target's keyframe"
        );
        // 0->2: layer 2's keyframe arrives with layer 0's packets of the same frame (+1
        // tick); 2->1: 33 ms after the first packet of layer 2's previous frame, less the
        // 200 µs to its last packet.
        assert_eq!(switch_steps, [1, 2_952]);
        assert_eq!(rw.current(), Some(1));
        assert_eq!(rw.needs_keyframe(), None);

        // After the switch to 1, layer 2's retransmissions are dropped...
        let (p, _) = retransmit_probe.expect("probe");
        assert_eq!(rw.on_packet(2, &p), Decision::Drop);
        // ...and so are layer 1's packets from before its keyframe.
        let old = frame_packets(&layers[1], 32, false, 5_000_000)[2];
        assert_eq!(rw.on_packet(1, &old), Decision::Drop);
    }

    #[test]
    fn waits_for_the_first_keyframe() {
        let mut rw = LayerRewriter::new(2);
        assert_eq!(rw.needs_keyframe(), Some(2));
        let p = Incoming::new(10, 10, 0);
        assert_eq!(rw.on_packet(2, &p), Decision::DropNeedKeyframe);
        assert_eq!(rw.on_packet(0, &p), Decision::Drop);
        let k = Incoming {
            keyframe_start: true,
            ..Incoming::new(11, 10, 0)
        };
        // A keyframe on a layer that is not the target does not start the stream.
        assert_eq!(rw.on_packet(1, &k), Decision::Drop);
        let f = forwarded(rw.on_packet(2, &k)).expect("start");
        assert!(f.switched);
        // The first epoch passes numbers through.
        assert_eq!((f.seq, f.ts), (11, 10));
        // The packet before the keyframe, arriving late, is from before the switch.
        assert_eq!(rw.on_packet(2, &p), Decision::Drop);
        // Back to the target after asking for another layer: the switch is cancelled.
        rw.set_target(0);
        assert_eq!(rw.needs_keyframe(), Some(0));
        rw.set_target(2);
        assert_eq!(rw.needs_keyframe(), None);
        let n = forwarded(rw.on_packet(2, &Incoming::new(12, 3_010, 33_000))).expect("next");
        assert_eq!((n.seq, n.ts), (12, 3_010));
    }

    #[test]
    fn switch_timestamp_is_at_least_one_tick() {
        let mut rw = LayerRewriter::new(0);
        let k = |seq, ts, at| Incoming {
            keyframe_start: true,
            ..Incoming::new(seq, ts, at)
        };
        let a = forwarded(rw.on_packet(0, &k(1, 500, 10))).expect("a");
        rw.set_target(1);
        // Same arrival time, and a clock going backwards: still +1 tick.
        let b = forwarded(rw.on_packet(1, &k(9_000, 77, 10))).expect("b");
        assert_eq!((b.seq, b.ts), (a.seq + 1, a.ts + 1));
        rw.set_target(0);
        let c = forwarded(rw.on_packet(0, &k(2, 3_500, 5))).expect("c");
        assert_eq!((c.seq, c.ts), (b.seq + 1, b.ts + 1));
    }

    #[test]
    fn audio_slot_switches_between_five_speakers() {
        struct Src {
            seq: u16,
            ts: u32,
        }
        let mut srcs: Vec<Src> = (0..5u32)
            .map(|i| Src {
                seq: 65_000u16.wrapping_add(i as u16 * 200),
                ts: (u32::MAX - 30_000).wrapping_add(i * 7_777),
            })
            .collect();
        let mut slot = AudioRewriter::new(OPUS_CLOCK_HZ);
        let mut last: Option<(Forward, u64)> = None;
        let mut switches = 0;
        let mut forwarded_from = [0u32; 5];
        for tick in 0..500u64 {
            let now = tick * 20_000;
            if tick % 50 == 0 {
                slot.set_source(Some(((tick / 50) % 5) as u32));
            }
            for (i, s) in srcs.iter_mut().enumerate() {
                let p = Incoming::new(s.seq, s.ts, now + i as u64 * 10);
                s.seq = s.seq.wrapping_add(1);
                s.ts = s.ts.wrapping_add(960);
                match slot.on_packet(i as u32, &p) {
                    Decision::Forward(f) => {
                        assert_eq!(Some(i as u32), slot.source());
                        forwarded_from[i] += 1;
                        if let Some((prev, prev_at)) = last {
                            assert_eq!(f.seq, prev.seq.wrapping_add(1), "tick {tick}");
                            let dt = f.ts.wrapping_sub(prev.ts);
                            if f.switched {
                                switches += 1;
                                let elapsed = (p.arrival_us - prev_at) * 48 / 1_000;
                                assert_eq!(u64::from(dt), elapsed.max(1), "tick {tick}");
                            } else {
                                assert_eq!(dt, 960, "tick {tick}");
                            }
                        }
                        last = Some((f, p.arrival_us));
                    }
                    Decision::Drop => assert_ne!(Some(i as u32), slot.source()),
                    Decision::DropNeedKeyframe => panic!("audio never waits for a keyframe"),
                }
            }
        }
        assert_eq!(switches, 9);
        assert_eq!(forwarded_from, [100; 5]);
        slot.set_source(None);
        assert_eq!(slot.on_packet(4, &Incoming::new(1, 1, 0)), Decision::Drop);
    }

    #[test]
    fn a_paused_speaker_resumes_without_a_sequence_gap() {
        let mut slot = AudioRewriter::new(OPUS_CLOCK_HZ);
        slot.set_source(Some(7));
        let (mut seq, mut ts) = (40_000u16, 1_000_000u32);
        let mut last = None;
        let mut resumed = None;
        for tick in 0..300u64 {
            let now = tick * 20_000;
            // Loud for 1 s, quiet (not forwarded) for 2 s, loud again.
            if tick == 50 {
                slot.set_source(None);
            }
            if tick == 150 {
                slot.set_source(Some(7));
            }
            let p = Incoming::new(seq, ts, now);
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
            match slot.on_packet(7, &p) {
                Decision::Forward(f) => {
                    if let Some((prev, prev_at)) = last {
                        let prev: Forward = prev;
                        assert_eq!(f.seq, prev.seq.wrapping_add(1), "tick {tick}: no gap");
                        if tick == 150 {
                            // The timestamp still shows the 2 s of silence.
                            let elapsed = (now - prev_at) * 48 / 1_000;
                            assert_eq!(u64::from(f.ts.wrapping_sub(prev.ts)), elapsed);
                            assert!(f.switched);
                            resumed = Some(f);
                        }
                    }
                    last = Some((f, now));
                }
                Decision::Drop => assert!((50..150).contains(&tick), "tick {tick}"),
                Decision::DropNeedKeyframe => panic!("audio never waits for a keyframe"),
            }
        }
        assert!(resumed.is_some(), "the speaker was forwarded again");
    }

    #[test]
    fn unwrap_near_handles_wraps() {
        assert_eq!(unwrap_near(65_535, 0, 1 << 16), 65_536);
        assert_eq!(unwrap_near(65_536, 65_535, 1 << 16), 65_535);
        assert_eq!(unwrap_near(10, 65_530, 1 << 16), -6);
        assert_eq!(unwrap_near(i64::from(u32::MAX), 5, 1 << 32), (1 << 32) + 5);
        assert_eq!(unwrap_near(127, 0, 1 << 7), 128);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Debug, Clone)]
        enum Step {
            Packet {
                layer: u8,
                seq: u16,
                ts: u32,
                key: bool,
                dt: u16,
                pid: u16,
                long: bool,
            },
            Target(u8),
        }

        fn step() -> impl Strategy<Value = Step> {
            // Sequence numbers within a realistic window (reordering, retransmissions, a
            // wrap for layer 0); timestamps and VP8 ids anything.
            prop_oneof![
                8 => (
                    0u8..3,
                    0u16..3_000,
                    any::<u32>(),
                    any::<bool>(),
                    any::<u16>(),
                    any::<u16>(),
                    any::<bool>()
                )
                    .prop_map(|(layer, off, ts, key, dt, pid, long)| Step::Packet {
                        layer,
                        seq: [64_000u16, 1_000, 30_000][usize::from(layer)].wrapping_add(off),
                        ts,
                        key,
                        dt,
                        pid,
                        long
                    }),
                1 => (0u8..4).prop_map(Step::Target),
            ]
        }

        proptest! {
            /// Whatever arrives: no panic, a forward only of the current layer, a switch only
            /// at a keyframe of the target, and within an epoch the same input always maps
            /// to the same output, distinct inputs to distinct outputs.
            #[test]
            fn layer_rewriter_is_consistent(steps in proptest::collection::vec(step(), 0..200)) {
                let mut rw = LayerRewriter::new(0);
                let mut now = 0u64;
                let mut epoch: HashMap<u16, u16> = HashMap::new();
                let mut ts_map: HashMap<u32, u32> = HashMap::new();
                let mut outs: HashMap<u16, u16> = HashMap::new();
                for s in steps {
                    match s {
                        Step::Target(t) => rw.set_target(t),
                        Step::Packet { layer, seq, ts, key, dt, pid, long } => {
                            now += u64::from(dt);
                            let before = rw.current();
                            let p = Incoming {
                                seq, ts, arrival_us: now, keyframe_start: key,
                                vp8: Some(Vp8Ids { picture_id: Some((pid & 0x7fff, long)), tl0picidx: Some(pid as u8) }),
                            };
                            match rw.on_packet(layer, &p) {
                                Decision::Forward(f) => {
                                    prop_assert_eq!(rw.current(), Some(layer));
                                    if f.switched {
                                        prop_assert!(key && layer == rw.target());
                                        prop_assert_ne!(before, Some(layer));
                                        epoch.clear();
                                        outs.clear();
                                        ts_map.clear();
                                    } else {
                                        prop_assert_eq!(before, Some(layer));
                                    }
                                    if let Some(&prev) = epoch.get(&seq) {
                                        prop_assert_eq!(prev, f.seq);
                                    } else if let Some(&other) = outs.get(&f.seq) {
                                        prop_assert_eq!(other, seq, "two inputs, one output");
                                    }
                                    if let Some(&prev) = ts_map.get(&ts) {
                                        prop_assert_eq!(prev, f.ts, "one input ts, two outputs");
                                    }
                                    epoch.insert(seq, f.seq);
                                    outs.insert(f.seq, seq);
                                    ts_map.insert(ts, f.ts);
                                    prop_assert_eq!(rw.original_seq(f.seq), Some((layer, seq)));
                                }
                                Decision::DropNeedKeyframe => {
                                    prop_assert_eq!(layer, rw.target());
                                    prop_assert_ne!(rw.current(), Some(layer));
                                }
                                Decision::Drop => {}
                            }
                        }
                    }
                }
            }
        }
    }
}
