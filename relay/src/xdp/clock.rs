//! The TURN fast path's rule clock: calibrating `TURN_CLOCK` so that the XDP program can
//! read jiffies instead of the coarse clock (see `relay_common::turn::TurnClock`).
//!
//! Why: the coarse-clock helper call was about 25 ns of the program's ~185 ns per relayed
//! frame at one allocation (`relay-bench turn-xdp`), and `bpf_jiffies64` is inlined into
//! one load. Jiffies are the same clock in whole ticks: the kernel's tick code advances
//! them by `TICK_NSEC` steps of CLOCK_MONOTONIC. Userspace cannot read jiffies, so the
//! never-attached `relay_clock_probe` reads both clocks through `BPF_PROG_TEST_RUN`.
//!
//! Calibration (about three ticks plus 40 ms, once at start, before the program is
//! attached): find two jiffy edges by polling ([`edge`]), take the tick length from them
//! rounded to the exact `TICK_NSEC` of a configurable `HZ` ([`fit`]), place the offset so
//! that the clock reads the end of the current jiffy, and check the result against fresh
//! samples ([`check`]). Anything odd leaves `TURN_CLOCK` zero: the program keeps the
//! coarse clock, which is only slower.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::time::{Duration, Instant};

use aya::{Ebpf, maps::Array};
use relay_common::{
    names,
    turn::{ClockSample, TurnClock, maps},
};

use super::{XdpError, bpf_sys};

/// The `HZ` values Linux can be configured with (`kernel/Kconfig.hz` and the other
/// architectures' choices).
const HZ_CHOICES: [u64; 14] = [
    24, 32, 48, 64, 100, 128, 200, 250, 256, 300, 512, 1000, 1024, 1200,
];
/// How far apart the two edges must be: the edges are seen up to a poll interval late,
/// so this keeps the tick estimate within 0.5% (HZ choices differ by at least 2.4%).
const MIN_SPAN: Duration = Duration::from_millis(40);
/// How long to wait between samples while looking for an edge.
const POLL: Duration = Duration::from_micros(50);
/// The whole calibration gives up after this (HZ=24 needs about 170 ms; more when edges
/// seen late are skipped).
const BUDGET: Duration = Duration::from_millis(1000);
/// The longest gap between the last sample before a jiffy edge and the first after it
/// for [`edge`] to take that sample as the edge: with both edges at most this late, the
/// tick estimate over [`MIN_SPAN`] stays within [`fit`]'s 1%.
const MAX_EDGE_GAP: Duration = Duration::from_micros(300);
/// How far the clock may read behind CLOCK_MONOTONIC in [`check`] (jiffies updated
/// late), and beyond one tick ahead of it (the edge seen late).
const TOLERANCE_NS: u64 = 2_000_000;
/// Samples [`calibrate`] checks the fitted clock against.
const CHECKS: usize = 8;

/// Why the rule clock stays the coarse clock.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The `BPF_PROG_TEST_RUN` syscall failed.
    #[error("BPF_PROG_TEST_RUN of {program} failed: {0}", program = names::CLOCK_PROBE_PROGRAM)]
    Syscall(#[source] io::Error),
    /// The program ran but wrote no sample (another object than this build's).
    #[error(
        "{program} returned XDP action {action} without a sample: the loaded eBPF object \
         does not match this relay",
        program = names::CLOCK_PROBE_PROGRAM
    )]
    NoSample {
        /// The program's return value.
        action: u32,
    },
    /// Jiffies did not advance as expected within the time allowed.
    #[error("jiffies did not advance within {0:?} (is the tick stopped?)")]
    Stalled(Duration),
    /// The measured tick matches no `HZ` Linux can be built with.
    #[error("measured {measured_ns} ns per jiffy, which matches no kernel HZ")]
    UnknownTick {
        /// The measured tick length.
        measured_ns: u64,
    },
    /// The fitted clock disagrees with CLOCK_MONOTONIC.
    #[error(
        "the jiffies clock read {ahead_ns} ns ahead of CLOCK_MONOTONIC (allowed: \
         -{TOLERANCE_NS} to {max_ns})"
    )]
    Disagrees {
        /// The clock minus CLOCK_MONOTONIC (negative: behind).
        ahead_ns: i64,
        /// The largest difference allowed.
        max_ns: u64,
    },
}

/// `TICK_NSEC` of a kernel built with `hz` (include/linux/jiffies.h).
pub const fn tick_nsec(hz: u64) -> u64 {
    (1_000_000_000 + hz / 2) / hz
}

/// The clock from two samples taken just after jiffy edges (`b` later): the tick is
/// the `TICK_NSEC` of the `HZ` closest to the measured one (within 1%), and the offset
/// makes the clock read the end of the jiffy `b` saw.
pub fn fit(a: ClockSample, b: ClockSample) -> Result<TurnClock, ClockError> {
    let jiffies = b.jiffies.wrapping_sub(a.jiffies);
    let span = b.mono_ns.saturating_sub(a.mono_ns);
    if jiffies == 0 || jiffies > 1 << 32 {
        return Err(ClockError::Stalled(Duration::from_nanos(span)));
    }
    let measured_ns = span / jiffies;
    let tick_ns = HZ_CHOICES
        .iter()
        .map(|&hz| tick_nsec(hz))
        .min_by_key(|t| t.abs_diff(measured_ns))
        .filter(|t| t.abs_diff(measured_ns) * 100 <= *t)
        .ok_or(ClockError::UnknownTick { measured_ns })?;
    let end_of_jiffy = b.mono_ns.wrapping_add(tick_ns);
    Ok(TurnClock {
        tick_ns,
        offset_ns: end_of_jiffy.wrapping_sub(b.jiffies.wrapping_mul(tick_ns)),
    })
}

/// What `clock` reads at `s.jiffies`, the way the XDP program computes it.
pub fn read(clock: &TurnClock, jiffies: u64) -> u64 {
    jiffies
        .wrapping_mul(clock.tick_ns)
        .wrapping_add(clock.offset_ns)
}

/// Whether `clock` agrees with the sample: at most [`TOLERANCE_NS`] behind its
/// CLOCK_MONOTONIC reading, and at most a tick plus that ahead.
pub fn check(clock: &TurnClock, s: ClockSample) -> Result<(), ClockError> {
    let ahead_ns = read(clock, s.jiffies).wrapping_sub(s.mono_ns) as i64;
    let max_ns = clock.tick_ns + TOLERANCE_NS;
    if ahead_ns < -(TOLERANCE_NS as i64) || ahead_ns > max_ns as i64 {
        return Err(ClockError::Disagrees { ahead_ns, max_ns });
    }
    Ok(())
}

/// The loaded (never attached) `relay_clock_probe`.
#[derive(Debug)]
pub struct ClockProbe {
    prog: OwnedFd,
}

impl ClockProbe {
    /// Loads `relay_clock_probe` of `ebpf` (if not loaded yet) and takes a handle on it.
    pub fn load(ebpf: &mut Ebpf) -> Result<ClockProbe, XdpError> {
        let prog = super::probe_program_fd(ebpf, names::CLOCK_PROBE_PROGRAM)?;
        Ok(ClockProbe { prog })
    }

    /// Jiffies and CLOCK_MONOTONIC, read together in the kernel.
    pub fn sample(&self) -> Result<ClockSample, ClockError> {
        let frame = ClockSample::default();
        let mut out = ClockSample::default();
        let r = bpf_sys::prog_test_run(self.prog.as_fd(), &frame, &mut out)
            .map_err(ClockError::Syscall)?;
        if r.retval != 2 || r.data_size_out as usize != size_of::<ClockSample>() {
            return Err(ClockError::NoSample { action: r.retval });
        }
        if out.mono_ns == 0 {
            return Err(ClockError::NoSample { action: r.retval });
        }
        Ok(out)
    }
}

/// The first sample after jiffies move past `after`, polling until `deadline`, that
/// was taken within [`MAX_EDGE_GAP`] of the sample before it (still in the old jiffy).
/// An edge seen after a longer gap (the thread preempted between two polls, as on a
/// loaded machine) may be milliseconds late, which would skew the tick estimate by more
/// than the HZ choices differ: such an edge is skipped and the next one awaited.
fn edge(
    sample: &mut impl FnMut() -> Result<ClockSample, ClockError>,
    mut after: u64,
    deadline: Instant,
) -> Result<ClockSample, ClockError> {
    let mut prev: Option<u64> = None;
    loop {
        let s = sample()?;
        if s.jiffies != after {
            if prev.is_some_and(|p| s.mono_ns.saturating_sub(p) <= MAX_EDGE_GAP.as_nanos() as u64) {
                return Ok(s);
            }
            after = s.jiffies;
        }
        prev = Some(s.mono_ns);
        if Instant::now() >= deadline {
            return Err(ClockError::Stalled(BUDGET));
        }
        std::thread::sleep(POLL);
    }
}

/// Measures the rule clock (see the module doc); bounded by [`BUDGET`].
pub fn calibrate(probe: &ClockProbe) -> Result<TurnClock, ClockError> {
    let deadline = Instant::now() + BUDGET;
    let mut sample = || probe.sample();
    let first = sample()?;
    let a = edge(&mut sample, first.jiffies, deadline)?;
    let mut s = a;
    while Duration::from_nanos(s.mono_ns.saturating_sub(a.mono_ns)) < MIN_SPAN {
        if Instant::now() >= deadline {
            return Err(ClockError::Stalled(BUDGET));
        }
        std::thread::sleep(POLL * 20);
        s = sample()?;
    }
    let b = edge(&mut sample, s.jiffies, deadline)?;
    let clock = fit(a, b)?;
    for _ in 0..CHECKS {
        check(&clock, probe.sample()?)?;
        std::thread::sleep(POLL * 20);
    }
    Ok(clock)
}

/// Calibrates the rule clock of `ebpf`'s TURN program and writes it into `TURN_CLOCK`;
/// returns it. On error `TURN_CLOCK` is left as it was (zero: the coarse clock).
pub fn install(ebpf: &mut Ebpf) -> Result<TurnClock, XdpError> {
    let probe = ClockProbe::load(ebpf)?;
    let clock = calibrate(&probe).map_err(XdpError::Clock)?;
    let map = ebpf
        .map_mut(maps::CLOCK)
        .ok_or(XdpError::Missing(maps::CLOCK))?;
    let mut array: Array<_, TurnClock> = Array::try_from(map).map_err(|source| XdpError::Map {
        name: maps::CLOCK,
        source,
    })?;
    array.set(0, clock, 0).map_err(|source| XdpError::Map {
        name: maps::CLOCK,
        source,
    })?;
    Ok(clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(jiffies: u64, mono_ns: u64) -> ClockSample {
        ClockSample { jiffies, mono_ns }
    }

    #[test]
    fn tick_lengths_are_the_kernels() {
        assert_eq!(tick_nsec(250), 4_000_000);
        assert_eq!(tick_nsec(1000), 1_000_000);
        assert_eq!(tick_nsec(100), 10_000_000);
        assert_eq!(tick_nsec(300), 3_333_333);
    }

    #[test]
    fn edges_give_the_exact_tick_and_the_end_of_the_jiffy() {
        // HZ=250, jiffies near their 64-bit start value; edges seen 30 and 80 µs late.
        let j0 = (1u64 << 32) - 75_000;
        let base = 17_000_000_000_000u64;
        for (hz, late_a, late_b) in [(250, 30_000, 80_000), (1000, 0, 90_000), (100, 60_000, 0)] {
            let t = tick_nsec(hz);
            let a = s(j0 + 7, base + 7 * t + late_a);
            let b = s(j0 + 7 + 12, base + 19 * t + late_b);
            let c = fit(a, b).expect("a known HZ");
            assert_eq!(c.tick_ns, t, "HZ={hz}");
            // At b it reads the end of b's jiffy (as seen from b's sample).
            assert_eq!(read(&c, b.jiffies), b.mono_ns + t);
            // Later in the same jiffy, and several jiffies on, it is ahead by < a tick.
            for (dj, into) in [(0, t / 2), (5, 0), (5, t - 1), (1000, t / 3)] {
                let mono = base + (19 + dj) * t + into;
                let sample = s(b.jiffies + dj, mono);
                check(&c, sample).expect("agrees");
                let ahead = read(&c, sample.jiffies) as i64 - mono as i64;
                assert!(ahead > 0 && ahead <= (t + late_b) as i64, "{ahead}");
            }
        }
    }

    #[test]
    fn an_edge_seen_after_a_long_gap_is_skipped_for_the_next() {
        // Jiffy 10 until 4 ms, polled every 100 µs, then a 3.5 ms gap (preempted) into
        // jiffy 11; polled again, the next edge (12) is seen 100 µs after the last poll.
        let mut seq = vec![s(10, 3_800_000), s(10, 3_900_000), s(11, 7_400_000)];
        seq.extend((0..5).map(|i| s(11, 7_500_000 + i * 100_000)));
        seq.push(s(12, 8_050_000));
        let mut it = seq.into_iter();
        let mut sample = || Ok(it.next().expect("a sample left"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = edge(&mut sample, 10, deadline).expect("an edge");
        assert_eq!(e, s(12, 8_050_000));
        // The first sample is already past the edge: its lateness is unknown, skipped.
        let mut it = vec![s(5, 0), s(5, 100_000), s(6, 150_000)].into_iter();
        let mut sample = || Ok(it.next().expect("a sample left"));
        assert_eq!(edge(&mut sample, 4, deadline).expect("edge"), s(6, 150_000));
    }

    #[test]
    fn unknown_ticks_and_stalls_are_refused() {
        // 3.7 ms per jiffy: between HZ=250 and HZ=300, within 1% of neither.
        let e = fit(s(10, 0), s(20, 37_000_000)).expect_err("no HZ matches");
        assert!(
            matches!(
                e,
                ClockError::UnknownTick {
                    measured_ns: 3_700_000
                }
            ),
            "{e}"
        );
        assert!(matches!(
            fit(s(10, 0), s(10, 50_000_000)),
            Err(ClockError::Stalled(_))
        ));
        // Jiffies going backwards (another probe's samples mixed in) is a stall too.
        assert!(matches!(
            fit(s(10, 0), s(9, 50_000_000)),
            Err(ClockError::Stalled(_))
        ));
    }

    #[test]
    fn a_clock_far_off_is_caught_by_the_check() {
        let t = tick_nsec(250);
        let c = fit(s(100, 1_000_000_000), s(120, 1_000_000_000 + 20 * t)).expect("fit");
        // Behind by 3 ms (more than the tolerance), or ahead by 2 ticks.
        let e = check(&c, s(130, read(&c, 130) + 3_000_000)).expect_err("3 ms behind");
        assert!(
            matches!(
                e,
                ClockError::Disagrees {
                    ahead_ns: -3_000_000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(check(&c, s(130, read(&c, 130) - 2 * t)).is_err());
        check(&c, s(130, read(&c, 130) - t / 2)).expect("half a tick ahead is fine");
    }

    use crate::xdp::can_run_privileged as can_run;

    /// The real kernel: the probe's clocks, the calibration, and the clock it installs
    /// staying within a tick of CLOCK_MONOTONIC over 100 ms of samples.
    #[test]
    fn the_kernel_clock_calibrates_and_tracks_monotonic() {
        if !can_run("the_kernel_clock_calibrates_and_tracks_monotonic") {
            return;
        }
        let mut ebpf = super::super::load_object(&[3478]).expect("load the object");
        let probe = ClockProbe::load(&mut ebpf).expect("load the clock probe");
        let a = probe.sample().expect("sample");
        let user = super::super::rules::monotonic_anchor()
            .expect("clock")
            .ns(Instant::now());
        assert!(
            user >= a.mono_ns && user - a.mono_ns < 1_000_000_000,
            "the probe's monotonic reading {} vs userspace's {user}",
            a.mono_ns
        );
        let clock = install(&mut ebpf).expect("calibrate");
        assert!(HZ_CHOICES.iter().any(|&hz| tick_nsec(hz) == clock.tick_ns));
        let map = ebpf.map(maps::CLOCK).expect("TURN_CLOCK");
        let array: Array<_, TurnClock> = Array::try_from(map).expect("array");
        assert_eq!(array.get(&0, 0).expect("read back"), clock);
        let end = Instant::now() + Duration::from_millis(100);
        let mut n = 0;
        while Instant::now() < end && n < 1000 {
            check(&clock, probe.sample().expect("sample")).expect("tracks monotonic");
            std::thread::sleep(Duration::from_millis(1));
            n += 1;
        }
        assert!(n >= 10, "only {n} samples in 100 ms");
    }
}
