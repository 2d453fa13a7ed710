//! What the media thread does between two batches of datagrams, whatever its socket
//! layer: run the engine's due timers, apply queued commands, forward the engine's events
//! and publish its counters; and how long the next wait for datagrams may last.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::sfu::control::{Command, Event};
use crate::sfu::engine::{Engine, EngineStats, Transmit};

/// Longest wait for datagrams: commands are applied at least this often.
pub(super) const MAX_WAIT: Duration = Duration::from_millis(10);
/// Commands applied per round at most (the rest wait for the next round).
const COMMANDS_PER_ROUND: usize = 256;
/// How often the engine's counters are published.
const STATS_EVERY: Duration = Duration::from_millis(100);

/// The channels and the published counters.
pub(super) struct Chores {
    commands: Receiver<Command>,
    events: Sender<Event>,
    stats: Arc<Mutex<EngineStats>>,
    last_stats: Instant,
}

impl Chores {
    pub(super) fn new(
        commands: Receiver<Command>,
        events: Sender<Event>,
        stats: Arc<Mutex<EngineStats>>,
    ) -> Chores {
        Chores {
            commands,
            events,
            stats,
            last_stats: Instant::now(),
        }
    }

    /// How long the next wait may last: until the engine's next timer, at most
    /// [`MAX_WAIT`].
    pub(super) fn wait(&self, engine: &Engine) -> Duration {
        engine
            .poll_timeout()
            .saturating_duration_since(Instant::now())
            .min(MAX_WAIT)
    }

    /// Timers, commands, events, counters.
    pub(super) fn run(&mut self, engine: &mut Engine, tx: &mut dyn Transmit) {
        let now = Instant::now();
        if engine.poll_timeout() <= now {
            engine.handle_timeout(now, tx);
        }
        for cmd in self.commands.try_iter().take(COMMANDS_PER_ROUND) {
            engine.handle_command(cmd, now);
        }
        while let Some(ev) = engine.poll_event() {
            // The signaling side is gone only at shutdown.
            let _ = self.events.try_send(ev);
        }
        if now.duration_since(self.last_stats) >= STATS_EVERY {
            self.last_stats = now;
            if let Ok(mut s) = self.stats.lock() {
                *s = engine.stats();
            }
        }
    }
}
