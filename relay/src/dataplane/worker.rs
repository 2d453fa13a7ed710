//! One worker: its sockets, its handler and the backend loop that drives them.
//!
//! A worker is built and run on its own thread (its ring and buffers hold raw pointers
//! and never cross threads). It is public so that tests can run one on a thread they
//! control (e.g. to count allocations on that thread only).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::counters::WorkerCounters;
use super::portable::PortableWorker;
use super::turn_io::{TurnIo, TurnSetup};
use super::uring::UringWorker;
use super::{Backend, DatagramHandler, DataplaneError};

/// A worker ready to run.
pub struct Worker<H> {
    inner: Inner<H>,
}

enum Inner<H> {
    Uring(Box<UringWorker<H>>),
    Portable(Box<PortableWorker<H>>),
}

impl<H: DatagramHandler> Worker<H> {
    /// Sets up the backend (ring, buffers, slots) for `sockets`. Allocates; call it on
    /// the thread that will [`Worker::run`] it.
    pub fn new(
        index: usize,
        backend: Backend,
        sockets: Vec<UdpSocket>,
        handler: H,
        counters: Arc<WorkerCounters>,
    ) -> Result<Self, DataplaneError> {
        Self::build(index, backend, sockets, handler, counters, None)
    }

    /// As [`Worker::new`], serving TURN (and STUN Binding, which the TURN server answers
    /// too) on `sockets` instead of running `handler`, with relayed sockets, stream
    /// listeners and the control channel of `turn`.
    pub fn with_turn(
        index: usize,
        backend: Backend,
        sockets: Vec<UdpSocket>,
        handler: H,
        counters: Arc<WorkerCounters>,
        turn: TurnSetup,
    ) -> Result<Self, DataplaneError> {
        let mut listen = Vec::with_capacity(sockets.len());
        for s in &sockets {
            let local = s.local_addr().map_err(|source| DataplaneError::Io {
                worker: index,
                what: "reading a listen socket's address",
                source,
            })?;
            listen.push((local, std::os::fd::AsRawFd::as_raw_fd(s)));
        }
        let io = TurnIo::new(index, turn, listen).map_err(|source| DataplaneError::Io {
            worker: index,
            what: "setting up TURN",
            source,
        })?;
        Self::build(
            index,
            backend,
            sockets,
            handler,
            counters,
            Some(Box::new(io)),
        )
    }

    fn build(
        index: usize,
        backend: Backend,
        sockets: Vec<UdpSocket>,
        handler: H,
        counters: Arc<WorkerCounters>,
        turn: Option<Box<TurnIo>>,
    ) -> Result<Self, DataplaneError> {
        let inner = match backend {
            Backend::IoUring => Inner::Uring(Box::new(UringWorker::new(
                index, sockets, handler, counters, turn,
            )?)),
            Backend::Portable => Inner::Portable(Box::new(PortableWorker::new(
                index, sockets, handler, counters, turn,
            )?)),
        };
        Ok(Worker { inner })
    }

    /// Serves until `shutdown` becomes true (noticed within ~100 ms). Does not allocate
    /// per datagram.
    pub fn run(self, shutdown: &AtomicBool) -> Result<(), DataplaneError> {
        match self.inner {
            Inner::Uring(w) => w.run(shutdown),
            Inner::Portable(w) => w.run(shutdown),
        }
    }
}
