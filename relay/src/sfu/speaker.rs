//! Who is speaking: per-publisher audio levels (RFC 6464, already decoded by the caller),
//! the dominant speaker, and the N loudest current speakers whose audio each receiver
//! gets, so that a receiver's packet rate does not grow with the size of the room.
//!
//! Dominant-speaker detection follows the idea of Volfin and Cohen, "Dominant speaker
//! identification for multipoint videoconferencing" (also behind Jitsi's and mediasoup's
//! detectors): each level is quantised above the speaker's noise floor into 13 sub-bands
//! (the *immediate* interval, one packet); a *medium* interval (5 packets, 100 ms) counts
//! the immediates that look like speech, and a *long* interval (10 mediums, 1 s) counts
//! the mediums that do. Each interval gets a speech-activity score (the log-likelihood of
//! its count under a binomial speech model against an exponential non-speech one); another
//! speaker replaces the dominant one only when the log-ratios of its three scores to the
//! dominant's all exceed their thresholds, so a short burst never takes the floor and a
//! silent room keeps its last speaker.
//!
//! The top-N set ranks publishers by how much of the last second they spent speaking and
//! changes with hysteresis: a challenger replaces the weakest member only when it spoke
//! clearly more, and the dominant speaker is always in it.
//!
//! Sans-IO: time is an argument (µs of the caller's monotonic clock). Memory is bounded: a
//! fixed ring of levels per publisher, a publisher table with a capacity fixed up front
//! (level updates of known publishers never allocate), a bounded event queue.

use std::collections::VecDeque;

/// Levels kept per publisher: one second of 20 ms packets (the long interval).
const LEVELS: usize = 50;
/// Sub-bands of the immediate interval.
const N1: u32 = 13;
/// Immediates per medium interval.
const N2: u32 = 5;
/// Mediums per long interval.
const N3: u32 = 10;
/// The noise floor taken into account at most (loudness units, about -97 dBov): a
/// speaker who talked through a whole floor window must not make their speech the floor.
const MAX_FLOOR: u8 = 30;
/// An immediate above this counts as speech in its medium interval.
const MEDIUM_THRESHOLD: u8 = 7;
/// A medium above this counts as speech in its long interval.
const LONG_THRESHOLD: u32 = 4;
/// Thresholds on the log-ratios of the immediate, medium and long scores.
const C1: f64 = 3.0;
const C2: f64 = 2.0;
const C3: f64 = 0.0;
/// Floor of an activity score (a silent interval).
const MIN_SCORE: f64 = 1e-10;
/// Speech-model parameters: binomial p and the non-speech exponential's lambda per interval.
const P: f64 = 0.5;
const LAMBDA1: f64 = 0.78;
const LAMBDA2: f64 = 24.0;
const LAMBDA3: f64 = 47.0;
/// Speech packets (of N2) a 100 ms slot needs to count for the top-N ranking.
const SPEECH_SLOT_MIN: u32 = 4;
/// One packet's worth of time.
const PACKET_US: u64 = 20_000;
/// Levels over which the noise floor is re-estimated (15 s of packets).
const FLOOR_WINDOW: u32 = 750;

/// Tuning of [`SpeakerDetector`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerConfig {
    /// How many speakers' audio each receiver gets.
    pub top_n: usize,
    /// Publishers the table holds without allocating.
    pub capacity: usize,
    /// How often decisions are taken, in µs.
    pub decision_interval_us: u64,
    /// A publisher with no level for this long is fed silence, in µs.
    pub level_idle_us: u64,
    /// How many more speech packets (of the last 50, counted in 100 ms slots that
    /// are mostly speech) a challenger needs than the weakest top-N member to replace it.
    pub top_n_margin: u8,
    /// Speech packets in the last second a publisher needs to enter the top-N set.
    pub top_n_min_speech: u8,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            top_n: 3,
            capacity: 64,
            decision_interval_us: 300_000,
            level_idle_us: 60_000,
            top_n_margin: 10,
            top_n_min_speech: 5,
        }
    }
}

/// Something the caller should tell clients about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeakerEvent<Id> {
    /// The dominant speaker changed (`None`: the dominant one left).
    Dominant(Option<Id>),
    /// The top-N set changed: read it again with [`SpeakerDetector::top_n`].
    TopN,
}

#[derive(Debug, Clone)]
struct Speaker<Id> {
    id: Id,
    /// Loudness (127 - dBov: 0 silence, 127 loudest), a ring; `head` is the next slot.
    levels: [u8; LEVELS],
    head: usize,
    floor: u8,
    window_min: u8,
    window_len: u32,
    smoothed: f32,
    last_level_us: u64,
    scores: [f64; 3],
    speech: u8,
}

impl<Id> Speaker<Id> {
    fn new(id: Id, now_us: u64) -> Self {
        Speaker {
            id,
            levels: [0; LEVELS],
            head: 0,
            floor: 0,
            window_min: u8::MAX,
            window_len: 0,
            smoothed: 0.0,
            last_level_us: now_us,
            scores: [MIN_SCORE; 3],
            speech: 0,
        }
    }

    fn push(&mut self, loudness: u8) {
        self.levels[self.head] = loudness;
        self.head = (self.head + 1) % LEVELS;
        self.smoothed += (f32::from(loudness) - self.smoothed) * 0.2;
        if loudness > 0 {
            self.window_min = self.window_min.min(loudness);
        }
        self.window_len += 1;
        if self.window_len >= FLOOR_WINDOW {
            if self.window_min != u8::MAX {
                self.floor = self.window_min;
            }
            self.window_min = u8::MAX;
            self.window_len = 0;
        }
    }

    /// The i-th most recent level (0: the latest).
    fn recent(&self, i: usize) -> u8 {
        self.levels[(self.head + LEVELS - 1 - i % LEVELS) % LEVELS]
    }

    /// The i-th most recent level quantised above the noise floor into 0..=N1: the range
    /// floor..=127 is split into N1 sub-bands.
    fn immediate(&self, i: usize) -> u8 {
        let floor = self.floor.min(MAX_FLOOR);
        let above = u32::from(self.recent(i).saturating_sub(floor));
        (above * N1 / u32::from(127 - floor)).min(N1) as u8
    }

    fn update_scores(&mut self) {
        let mut mediums = [0u32; N3 as usize];
        let mut speech = 0u8;
        for (m, medium) in mediums.iter_mut().enumerate() {
            for k in 0..N2 as usize {
                if self.immediate(m * N2 as usize + k) > MEDIUM_THRESHOLD {
                    *medium += 1;
                }
            }
            // Speech for the top-N ranking: packets of 100 ms slots that are mostly speech
            // (isolated noise bursts never fill four of five packets).
            if *medium >= SPEECH_SLOT_MIN {
                speech += *medium as u8;
            }
        }
        let long = mediums.iter().filter(|&&m| m > LONG_THRESHOLD).count() as u32;
        self.scores = [
            activity_score(u32::from(self.immediate(0)), N1, LAMBDA1),
            activity_score(mediums[0], N2, LAMBDA2),
            activity_score(long, N3, LAMBDA3),
        ];
        self.speech = speech;
    }
}

fn ln_binomial(n: u32, k: u32) -> f64 {
    (1..=k)
        .map(|i| f64::from(n - k + i).ln() - f64::from(i).ln())
        .sum()
}

/// The speech-activity score of `v` active sub-units out of `n`.
fn activity_score(v: u32, n: u32, lambda: f64) -> f64 {
    let v = v.min(n);
    let s = ln_binomial(n, v) + f64::from(v) * P.ln() + f64::from(n - v) * (1.0 - P).ln()
        - lambda.ln()
        + lambda * f64::from(v);
    s.max(MIN_SCORE)
}

/// Levels in, dominant speaker and top-N set out.
#[derive(Debug, Clone)]
pub struct SpeakerDetector<Id> {
    cfg: SpeakerConfig,
    speakers: Vec<Speaker<Id>>,
    dominant: Option<Id>,
    top: Vec<Id>,
    events: VecDeque<SpeakerEvent<Id>>,
    last_decision_us: Option<u64>,
}

const EVENT_CAPACITY: usize = 32;

impl<Id: Copy + Eq> SpeakerDetector<Id> {
    /// An empty detector.
    pub fn new(cfg: SpeakerConfig) -> Self {
        SpeakerDetector {
            cfg,
            speakers: Vec::with_capacity(cfg.capacity),
            dominant: None,
            top: Vec::with_capacity(cfg.top_n),
            events: VecDeque::with_capacity(EVENT_CAPACITY),
            last_decision_us: None,
        }
    }

    fn push_event(&mut self, e: SpeakerEvent<Id>) {
        if self.events.len() == EVENT_CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Adds a publisher (also done by its first level). Allocates only when the table is
    /// past its configured capacity.
    pub fn add(&mut self, id: Id, now_us: u64) {
        if !self.speakers.iter().any(|s| s.id == id) {
            self.speakers.push(Speaker::new(id, now_us));
        }
    }

    /// Removes a publisher that left; it leaves the dominant and top-N roles at once.
    pub fn remove(&mut self, id: Id) {
        self.speakers.retain(|s| s.id != id);
        if self.dominant == Some(id) {
            self.dominant = None;
            self.push_event(SpeakerEvent::Dominant(None));
        }
        if self.top.contains(&id) {
            self.top.retain(|&t| t != id);
            self.push_event(SpeakerEvent::TopN);
        }
    }

    /// Records one audio level of `id`: `dbov` is the RFC 6464 value (0 loudest, 127
    /// silence; larger values are taken as 127). Call it once per audio packet; an unknown
    /// `id` is added (see [`SpeakerDetector::add`]). The lookup is a linear scan of the
    /// room's publishers.
    pub fn on_level(&mut self, id: Id, dbov: u8, now_us: u64) {
        let loudness = 127 - dbov.min(127);
        let i = match self.speakers.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                self.speakers.push(Speaker::new(id, now_us));
                self.speakers.len() - 1
            }
        };
        let s = &mut self.speakers[i];
        s.push(loudness);
        s.last_level_us = s.last_level_us.max(now_us);
    }

    /// Advances time: publishers gone quiet are fed silence, and at most every
    /// `decision_interval_us` the dominant speaker and the top-N set are decided.
    pub fn tick(&mut self, now_us: u64) {
        if self
            .last_decision_us
            .is_some_and(|t| now_us < t.saturating_add(self.cfg.decision_interval_us))
        {
            return;
        }
        self.last_decision_us = Some(now_us);
        for s in &mut self.speakers {
            let idle = now_us.saturating_sub(s.last_level_us);
            if idle > self.cfg.level_idle_us {
                let missing = (idle / PACKET_US).min(LEVELS as u64);
                for _ in 0..missing {
                    s.push(0);
                }
                s.last_level_us = s.last_level_us.saturating_add(missing * PACKET_US);
                if idle / PACKET_US > LEVELS as u64 {
                    s.last_level_us = now_us;
                }
            }
            s.update_scores();
        }
        self.decide_dominant();
        self.decide_top();
    }

    fn decide_dominant(&mut self) {
        let dom = self
            .dominant
            .and_then(|d| self.speakers.iter().find(|s| s.id == d))
            .map_or([MIN_SCORE; 3], |s| s.scores);
        let mut best: Option<(Id, f64)> = None;
        for s in &self.speakers {
            if Some(s.id) == self.dominant {
                continue;
            }
            let c1 = (s.scores[0] / dom[0]).ln();
            let c2 = (s.scores[1] / dom[1]).ln();
            let c3 = (s.scores[2] / dom[2]).ln();
            if c1 > C1 && c2 > C2 && c3 > C3 && best.is_none_or(|(_, b)| c2 > b) {
                best = Some((s.id, c2));
            }
        }
        if let Some((id, _)) = best {
            self.dominant = Some(id);
            self.push_event(SpeakerEvent::Dominant(Some(id)));
        }
    }

    fn speech_of(&self, id: Id) -> u8 {
        self.speakers
            .iter()
            .find(|s| s.id == id)
            .map_or(0, |s| s.speech)
    }

    fn decide_top(&mut self) {
        let n = self.cfg.top_n;
        let mut changed = false;
        if n == 0 {
            return;
        }
        // The dominant speaker is always in: it takes the weakest other member's place.
        if let Some(d) = self.dominant
            && !self.top.contains(&d)
        {
            if self.top.len() >= n
                && let Some(w) = self.weakest(None)
            {
                self.top.retain(|&t| t != w);
            }
            self.top.push(d);
            changed = true;
        }
        // Then challengers, strongest first, one replacement per candidate at most.
        loop {
            let challenger = self
                .speakers
                .iter()
                .filter(|s| !self.top.contains(&s.id) && s.speech >= self.cfg.top_n_min_speech)
                .max_by_key(|s| (s.speech, s.smoothed as u32))
                .map(|s| (s.id, s.speech));
            let Some((c, c_speech)) = challenger else {
                break;
            };
            if self.top.len() < n {
                self.top.push(c);
                changed = true;
                continue;
            }
            let Some(w) = self.weakest(self.dominant) else {
                break;
            };
            if c_speech >= self.speech_of(w).saturating_add(self.cfg.top_n_margin) {
                self.top.retain(|&t| t != w);
                self.top.push(c);
                changed = true;
            } else {
                break;
            }
        }
        // Dominant speaker first, then by speech in the last second.
        let dominant = self.dominant;
        let speakers = &self.speakers;
        let key = |id: &Id| {
            let speech = speakers
                .iter()
                .find(|s| s.id == *id)
                .map_or(0, |s| s.speech);
            (Some(*id) != dominant, u8::MAX - speech)
        };
        self.top.sort_by_key(key);
        if changed {
            self.push_event(SpeakerEvent::TopN);
        }
    }

    /// The top-N member with the least speech, other than `keep`.
    fn weakest(&self, keep: Option<Id>) -> Option<Id> {
        self.top
            .iter()
            .copied()
            .filter(|&t| Some(t) != keep)
            .min_by_key(|&t| self.speech_of(t))
    }

    /// The dominant speaker, if any has been found.
    pub fn dominant(&self) -> Option<Id> {
        self.dominant
    }

    /// Up to `n` of the current top-N speakers, the dominant one first.
    pub fn top_n(&self, n: usize) -> impl Iterator<Item = Id> + '_ {
        self.top.iter().copied().take(n)
    }

    /// Is `id` in the top-N set?
    pub fn is_top(&self, id: Id) -> bool {
        self.top.contains(&id)
    }

    /// The smoothed loudness of `id` (127 - dBov), for statistics.
    pub fn smoothed_level(&self, id: Id) -> Option<u8> {
        self.speakers
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.smoothed.clamp(0.0, 127.0) as u8)
    }

    /// Takes the oldest pending event.
    pub fn poll_event(&mut self) -> Option<SpeakerEvent<Id>> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;
    const D: u32 = 4;

    /// A deterministic xorshift, for natural-looking level variation and noise.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn around(&mut self, dbov: u8) -> u8 {
            dbov - 5 + (self.next() % 11) as u8
        }
    }

    fn drain(d: &mut SpeakerDetector<u32>, at: u64, out: &mut Vec<(u64, SpeakerEvent<u32>)>) {
        while let Some(e) = d.poll_event() {
            out.push((at, e));
        }
    }

    /// A talks (0-3.5 s, then mutes: no levels at all), B starts louder at 3 s and talks
    /// until 6 s, silence until 7.5 s, then C talks. D only makes 20 ms noise bursts, and
    /// so does everyone while not talking.
    #[test]
    fn scripted_scene() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut events = Vec::new();
        for tick in 0..500u64 {
            let now = tick * PACKET_US;
            let ms = tick * 20;
            for id in [A, B, C, D] {
                let talking = match id {
                    A => ms < 3_500,
                    B => (3_000..6_000).contains(&ms),
                    C => ms >= 7_500,
                    _ => false,
                };
                if id == A && ms >= 3_500 {
                    continue; // muted: no packets, no levels
                }
                let level = if talking {
                    rng.around(if id == B { 20 } else { 30 })
                } else if rng.next().is_multiple_of(7) {
                    rng.around(12) // a 20 ms burst of noise, louder than speech
                } else {
                    127
                };
                d.on_level(id, level, now + id as u64 * 100);
            }
            d.tick(now + 1_000);
            drain(&mut d, now, &mut events);
        }
        let dominant: Vec<(u64, Option<u32>)> = events
            .iter()
            .filter_map(|&(at, e)| match e {
                SpeakerEvent::Dominant(id) => Some((at / 1_000, id)),
                SpeakerEvent::TopN => None,
            })
            .collect();
        let ids: Vec<Option<u32>> = dominant.iter().map(|&(_, id)| id).collect();
        assert_eq!(ids, [Some(A), Some(B), Some(C)], "changes: {dominant:?}");
        assert!(dominant[0].0 <= 700, "A found quickly: {dominant:?}");
        assert!(
            (3_500..=4_700).contains(&dominant[1].0),
            "B takes over after A stops, not while both talk: {dominant:?}"
        );
        assert!((7_500..=8_700).contains(&dominant[2].0), "{dominant:?}");
        assert_eq!(d.dominant(), Some(C));

        // The top-3 set: the three speakers, never the noise maker, few changes.
        let top: Vec<u32> = d.top_n(3).collect();
        assert_eq!(top[0], C, "the dominant speaker first");
        let mut sorted = top.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [A, B, C]);
        let top_changes = events
            .iter()
            .filter(|(_, e)| *e == SpeakerEvent::TopN)
            .count();
        assert!(top_changes <= 4, "top-N flapped {top_changes} times");
        assert!(!d.is_top(D));
        assert_eq!(d.top_n(1).collect::<Vec<_>>(), [C]);
    }

    #[test]
    fn noise_bursts_never_take_the_floor() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut rng = Rng(7);
        let mut burst_before = [false; 3];
        for tick in 0..1_000u64 {
            let now = tick * PACKET_US;
            for (i, id) in [A, B, C].into_iter().enumerate() {
                // Loud 20 ms bursts, a third of the time, never two in a row.
                let burst = !burst_before[i] && rng.next().is_multiple_of(2);
                burst_before[i] = burst;
                d.on_level(id, if burst { rng.around(10) } else { 127 }, now);
            }
            d.tick(now);
        }
        assert_eq!(d.dominant(), None);
        assert_eq!(d.poll_event(), None);
        assert_eq!(d.top_n(3).count(), 0);
    }

    #[test]
    fn top_n_has_hysteresis() {
        let cfg = SpeakerConfig {
            top_n: 2,
            ..SpeakerConfig::default()
        };
        let mut d = SpeakerDetector::new(cfg);
        let mut changes = Vec::new();
        for tick in 0..400u64 {
            let now = tick * PACKET_US;
            let ms = tick * 20;
            // A and B talk from the start; C joins at 2 s as active as them; A stops at 5 s.
            let talking = [ms < 5_000, true, ms >= 2_000];
            for (id, t) in [A, B, C].into_iter().zip(talking) {
                d.on_level(id, if t { 30 } else { 127 }, now);
            }
            d.tick(now);
            while let Some(e) = d.poll_event() {
                if e == SpeakerEvent::TopN {
                    let mut set: Vec<u32> = d.top_n(2).collect();
                    set.sort_unstable();
                    changes.push((ms, set));
                }
            }
        }
        // Filled with A and B; C, equally active, does not displace anyone; when A
        // stops, C replaces it within a second.
        let sets: Vec<&Vec<u32>> = changes.iter().map(|(_, s)| s).collect();
        assert!(changes.len() <= 4, "{changes:?}");
        assert_eq!(sets.last().copied(), Some(&vec![B, C]), "{changes:?}");
        assert!(
            changes
                .iter()
                .all(|(ms, s)| !s.contains(&C) || *ms >= 5_000)
        );
        let c_in = changes
            .iter()
            .find(|(_, s)| s.contains(&C))
            .map(|(ms, _)| *ms);
        assert!(c_in.is_some_and(|ms| ms <= 6_000), "{changes:?}");
    }

    #[test]
    fn leaving_dominant_is_reported() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        for tick in 0..100u64 {
            d.on_level(A, 30, tick * PACKET_US);
            d.tick(tick * PACKET_US);
        }
        assert_eq!(d.dominant(), Some(A));
        while d.poll_event().is_some() {}
        d.remove(A);
        assert_eq!(d.dominant(), None);
        assert_eq!(d.poll_event(), Some(SpeakerEvent::Dominant(None)));
        assert_eq!(d.poll_event(), Some(SpeakerEvent::TopN));
        assert_eq!(d.top_n(3).count(), 0);
        assert_eq!(d.smoothed_level(A), None);
    }

    #[test]
    fn event_queue_is_bounded() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        for i in 0..100 {
            d.add(i, 0);
            d.remove(i);
        }
        for i in 0..(EVENT_CAPACITY as u32 * 2) {
            d.dominant = Some(i);
            d.remove(i);
        }
        assert_eq!(d.events.len(), EVENT_CAPACITY);
    }

    #[test]
    fn activity_scores_order() {
        // More speech, higher score; none, the floor.
        assert_eq!(activity_score(0, N3, LAMBDA3), MIN_SCORE);
        assert!(activity_score(10, N3, LAMBDA3) > activity_score(1, N3, LAMBDA3));
        assert!(activity_score(5, N2, LAMBDA2) > activity_score(1, N2, LAMBDA2));
        assert!((ln_binomial(13, 2) - 78f64.ln()).abs() < 1e-9);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any levels, gaps, joins and leaves: no panic, at most N in the top set, no
            /// duplicates, and the dominant speaker and top set are known publishers.
            #[test]
            fn detector_invariants(
                steps in proptest::collection::vec((0u32..6, any::<u8>(), 0u64..200_000, 0u8..20), 0..400),
                n in 0usize..4,
            ) {
                let mut d = SpeakerDetector::new(SpeakerConfig { top_n: n, ..SpeakerConfig::default() });
                let mut now = 0u64;
                for (id, level, dt, action) in steps {
                    now += dt;
                    match action {
                        0 => d.remove(id),
                        1 => d.tick(now.saturating_mul(1_000)), // a jump far ahead
                        _ => d.on_level(id, level, now),
                    }
                    d.tick(now);
                    let top: Vec<u32> = d.top_n(usize::MAX).collect();
                    prop_assert!(top.len() <= n);
                    for (i, t) in top.iter().enumerate() {
                        prop_assert!(!top[..i].contains(t));
                        prop_assert!(d.smoothed_level(*t).is_some());
                    }
                    if let Some(dom) = d.dominant() {
                        prop_assert!(d.smoothed_level(dom).is_some());
                        if n > 0 {
                            prop_assert_eq!(top.first(), Some(&dom));
                        }
                    }
                    prop_assert!(d.events.len() <= EVENT_CAPACITY);
                }
            }
        }
    }
}
