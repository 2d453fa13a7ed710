//! Rooms sharded over several media workers (one thread, one socket, one port each, as
//! mediasoup does): which worker owns a room, and the router that hands each
//! [`Command`] from the signaling plane's single channel to the worker owning what it
//! names.
//!
//! Exists so one SFU uses every core without sharing anything on the packet path: a
//! room's transports and tracks all live on one worker (its participants forward to
//! each other only), so the workers never talk to each other and take no lock. The
//! rooms hand out the candidates of the room's worker ([`worker_of`]); the router sends
//! the room's commands to the same worker by the same rule.
//!
//! [`Router`] is sans-IO (commands in, a worker index out); [`RouterThread`] runs it
//! between the channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::control::{Command, RoomId, TrackId, TransportId};

/// The worker (of `workers`) owning room `room`: `room % workers`. Rooms are numbered
/// from 1 in join order, so consecutive rooms land on consecutive workers.
pub fn worker_of(room: RoomId, workers: usize) -> usize {
    match workers {
        0 | 1 => 0,
        n => usize::try_from(room).map_or(0, |r| r % n),
    }
}

/// Routes commands to workers, learning where transports and tracks live from the
/// commands that create them (`AddTransport` and `Publish` carry their room) and
/// forgetting them when they go.
#[derive(Debug)]
pub struct Router {
    workers: usize,
    transports: HashMap<TransportId, usize>,
    /// Track -> (worker, its publisher transport).
    tracks: HashMap<TrackId, (usize, TransportId)>,
    unroutable: u64,
}

impl Router {
    /// A router over `workers` workers (at least 1).
    pub fn new(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            transports: HashMap::new(),
            tracks: HashMap::new(),
            unroutable: 0,
        }
    }

    /// How many workers it routes to.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Commands dropped because they named a transport or track no worker has.
    pub fn unroutable(&self) -> u64 {
        self.unroutable
    }

    /// The worker `cmd` goes to; `None` (logged, counted): it names an unknown transport
    /// or track, and is dropped.
    pub fn route(&mut self, cmd: &Command) -> Option<usize> {
        let w = match cmd {
            Command::AddTransport(spec) => {
                let w = worker_of(spec.room, self.workers);
                self.transports.insert(spec.id, w);
                Some(w)
            }
            Command::RemoveTransport(id) => {
                let w = self.transports.remove(id);
                if w.is_some() {
                    // The worker forgets what was bound to the transport; an ICE
                    // restart publishes its tracks again (and so teaches them again).
                    self.tracks.retain(|_, (_, t)| t != id);
                }
                w
            }
            Command::Publish(t) => {
                let w = worker_of(t.room, self.workers);
                self.tracks.insert(t.id, (w, t.transport));
                Some(w)
            }
            Command::Unpublish(id) => self.tracks.remove(id).map(|(w, _)| w),
            Command::Subscribe(o) => self.transports.get(&o.transport).copied(),
            Command::Unsubscribe { transport, .. } | Command::SetMaxLayer { transport, .. } => {
                self.transports.get(transport).copied()
            }
        };
        if w.is_none() {
            self.unroutable += 1;
            tracing::warn!(
                ?cmd,
                "SFU command names an unknown transport or track: dropped"
            );
        }
        w
    }
}

/// The router between the signaling plane's command channel and one channel per
/// worker, on its own small thread (signaling keeps its single channel; the workers
/// keep theirs; no lock on either side).
pub struct RouterThread {
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// How often the router thread looks at its stop flag while no command comes.
const STOP_POLL: Duration = Duration::from_millis(50);

impl RouterThread {
    /// Starts routing `commands` to `workers` (worker i gets `workers[i]`). Ends when
    /// stopped or when the command channel's senders are all gone.
    pub fn start(
        commands: Receiver<Command>,
        workers: Vec<Sender<Command>>,
    ) -> std::io::Result<RouterThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let dropped = dropped.clone();
            std::thread::Builder::new()
                .name("relay-sfu-router".into())
                .spawn(move || route_loop(&commands, &workers, &stop, &dropped))?
        };
        Ok(RouterThread {
            stop,
            dropped,
            thread: Some(thread),
        })
    }

    /// Commands dropped: unknown transport or track, or a worker gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the SFU command router panicked");
        }
    }
}

impl Drop for RouterThread {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn route_loop(
    commands: &Receiver<Command>,
    workers: &[Sender<Command>],
    stop: &AtomicBool,
    dropped: &AtomicU64,
) {
    let mut router = Router::new(workers.len());
    while !stop.load(Ordering::Relaxed) {
        let cmd = match commands.recv_timeout(STOP_POLL) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let sent = router
            .route(&cmd)
            .and_then(|w| workers.get(w))
            .is_some_and(|tx| tx.send(cmd).is_ok());
        if !sent {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::ExtMap;
    use crate::sfu::control::{InboundTrack, OutboundTrack, TransportRole, TransportSpec};

    fn add(id: TransportId, room: RoomId) -> Command {
        Command::AddTransport(TransportSpec {
            id,
            room,
            participant: 1,
            role: TransportRole::Publisher,
            local_ufrag: "l".into(),
            local_pwd: "lp".into(),
            remote_ufrag: "r".into(),
            remote_pwd: "rp".into(),
            remote_fingerprint: [0; 32],
            extensions: ExtMap::default(),
        })
    }

    fn publish(id: TrackId, transport: TransportId, room: RoomId) -> Command {
        Command::Publish(InboundTrack {
            id,
            transport,
            room,
            participant: 1,
            video: false,
            screen: false,
            mid: "0".into(),
            codecs: Vec::new(),
            rids: Vec::new(),
            ssrcs: Vec::new(),
            rtx_pairs: Vec::new(),
        })
    }

    fn subscribe(transport: TransportId, track: TrackId) -> Command {
        Command::Subscribe(OutboundTrack {
            transport,
            track,
            mid: "0".into(),
            ssrc: 1,
            rtx_ssrc: None,
            codecs: Vec::new(),
        })
    }

    #[test]
    fn rooms_spread_over_workers_by_id() {
        assert_eq!(worker_of(7, 0), 0);
        assert_eq!(worker_of(7, 1), 0);
        assert_eq!(
            (1..=5).map(|r| worker_of(r, 2)).collect::<Vec<_>>(),
            [1, 0, 1, 0, 1]
        );
        assert_eq!(worker_of(RoomId::MAX, 64), (RoomId::MAX % 64) as usize);
    }

    #[test]
    fn commands_follow_their_room() {
        let mut r = Router::new(2);
        // Room 1 -> worker 1, room 2 -> worker 0.
        assert_eq!(r.route(&add(10, 1)), Some(1));
        assert_eq!(r.route(&add(11, 1)), Some(1));
        assert_eq!(r.route(&add(20, 2)), Some(0));
        assert_eq!(r.route(&add(21, 2)), Some(0));
        assert_eq!(r.route(&publish(100, 10, 1)), Some(1));
        assert_eq!(r.route(&publish(200, 20, 2)), Some(0));
        // By transport id.
        assert_eq!(r.route(&subscribe(11, 100)), Some(1));
        assert_eq!(r.route(&subscribe(21, 200)), Some(0));
        let set = |transport| Command::SetMaxLayer {
            transport,
            track: 100,
            layer: 1,
        };
        assert_eq!(r.route(&set(11)), Some(1));
        assert_eq!(
            r.route(&Command::Unsubscribe {
                transport: 21,
                track: 200
            }),
            Some(0)
        );
        // By track id; then forgotten.
        assert_eq!(r.route(&Command::Unpublish(200)), Some(0));
        assert_eq!(r.route(&Command::Unpublish(200)), None);
        assert_eq!(r.route(&Command::RemoveTransport(21)), Some(0));
        assert_eq!(r.route(&Command::RemoveTransport(21)), None);
        assert_eq!(r.route(&set(21)), None);
        assert_eq!(r.unroutable(), 3);
        // Room 1 untouched.
        assert_eq!(r.route(&set(11)), Some(1));
    }

    #[test]
    fn unknown_ids_are_dropped() {
        let mut r = Router::new(4);
        assert_eq!(r.route(&Command::RemoveTransport(5)), None);
        assert_eq!(r.route(&Command::Unpublish(5)), None);
        assert_eq!(r.route(&subscribe(5, 1)), None);
        assert_eq!(
            r.route(&Command::Unsubscribe {
                transport: 5,
                track: 1
            }),
            None
        );
        assert_eq!(r.unroutable(), 4);
        assert!(r.transports.is_empty() && r.tracks.is_empty());
    }

    #[test]
    fn removing_a_transport_forgets_its_tracks_and_ice_restart_relearns_them() {
        let mut r = Router::new(3);
        assert_eq!(r.route(&add(1, 4)), Some(1));
        assert_eq!(r.route(&publish(7, 1, 4)), Some(1));
        assert_eq!(r.route(&publish(8, 1, 4)), Some(1));
        // ICE restart: remove, add, publish again (what the rooms send).
        assert_eq!(r.route(&Command::RemoveTransport(1)), Some(1));
        assert!(r.tracks.is_empty());
        assert_eq!(r.route(&add(1, 4)), Some(1));
        assert_eq!(r.route(&publish(7, 1, 4)), Some(1));
        assert_eq!(r.route(&Command::Unpublish(7)), Some(1));
        assert_eq!(r.route(&Command::Unpublish(8)), None, "not published again");
    }

    #[test]
    fn the_thread_delivers_in_order_to_the_owner() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (w0, r0) = crossbeam_channel::unbounded();
        let (w1, r1) = crossbeam_channel::unbounded();
        let t = RouterThread::start(rx, vec![w0, w1]).expect("thread");
        for c in [
            add(1, 1),
            add(2, 2),
            publish(3, 1, 1),
            Command::Unpublish(99),
            Command::RemoveTransport(1),
        ] {
            tx.send(c).expect("send");
        }
        drop(tx);
        let wait = Duration::from_secs(5);
        assert_eq!(r1.recv_timeout(wait).expect("add 1"), add(1, 1));
        assert_eq!(r1.recv_timeout(wait).expect("publish"), publish(3, 1, 1));
        assert_eq!(
            r1.recv_timeout(wait).expect("remove"),
            Command::RemoveTransport(1)
        );
        assert_eq!(r0.recv_timeout(wait).expect("add 2"), add(2, 2));
        t.shutdown();
        assert!(r0.try_recv().is_err() && r1.try_recv().is_err());
    }
}
