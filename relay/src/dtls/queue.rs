//! The in-memory "socket" OpenSSL runs over: one incoming datagram at a time and a queue
//! of outgoing datagrams, with buffers recycled so that steady-state traffic does not
//! allocate in this layer.
//!
//! OpenSSL's DTLS reads one datagram per `read` call and, with its write buffering and the
//! MTU we set, hands over one datagram per `write` call; so a `write` here is a datagram.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

/// Most outgoing datagrams held before new ones are dropped (like a full socket buffer).
/// A handshake flight is a few datagrams; application data is drained after every call.
pub const MAX_QUEUED: usize = 64;

/// A bounded FIFO of datagrams whose buffers are reused.
#[derive(Debug, Default)]
pub struct DatagramFifo {
    queued: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
    dropped: u64,
}

impl DatagramFifo {
    /// Appends a copy of `data`; drops it (counted) when [`MAX_QUEUED`] are waiting.
    pub fn push(&mut self, data: &[u8]) {
        if self.queued.len() >= MAX_QUEUED {
            self.dropped += 1;
            return;
        }
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.queued.push_back(buf);
    }

    /// Copies the oldest datagram into `out` and returns its length; a datagram longer than
    /// `out` is dropped (counted) and the next one tried.
    pub fn pop_into(&mut self, out: &mut [u8]) -> Option<usize> {
        while let Some(buf) = self.queued.pop_front() {
            let n = buf.len();
            let fits = n <= out.len();
            if fits {
                out[..n].copy_from_slice(&buf);
            } else {
                self.dropped += 1;
            }
            self.free.push(buf);
            if fits {
                return Some(n);
            }
        }
        None
    }

    /// Length of the oldest datagram.
    pub fn peek_len(&self) -> Option<usize> {
        self.queued.front().map(Vec::len)
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Datagrams dropped because the queue was full or the caller's buffer too small.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Drops every waiting datagram (keeps the buffers for reuse).
    pub fn clear(&mut self) {
        while let Some(buf) = self.queued.pop_front() {
            self.free.push(buf);
        }
    }
}

/// The stream type OpenSSL's BIO wraps: `read` yields the current incoming datagram once,
/// then `WouldBlock`; `write` queues an outgoing datagram.
#[derive(Debug, Default)]
pub struct MemoryChannel {
    incoming: Vec<u8>,
    incoming_pending: bool,
    /// Datagrams OpenSSL wants sent.
    pub outgoing: DatagramFifo,
}

impl MemoryChannel {
    /// A channel with its incoming buffer sized for a typical datagram.
    pub fn new() -> MemoryChannel {
        MemoryChannel {
            incoming: Vec::with_capacity(2048),
            ..MemoryChannel::default()
        }
    }

    /// Makes `datagram` the next thing OpenSSL reads (replacing any unread one).
    pub fn set_incoming(&mut self, datagram: &[u8]) {
        self.incoming.clear();
        self.incoming.extend_from_slice(datagram);
        self.incoming_pending = true;
    }

    /// Whether the incoming datagram has not been read yet.
    pub fn incoming_pending(&self) -> bool {
        self.incoming_pending
    }

    /// Forgets an unread incoming datagram.
    pub fn discard_incoming(&mut self) {
        self.incoming_pending = false;
    }
}

impl Read for MemoryChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.incoming_pending {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.incoming_pending = false;
        // OpenSSL's DTLS read buffer holds a maximal datagram; a longer one is truncated,
        // which its record layer then discards, as a datagram socket would.
        let n = self.incoming.len().min(buf.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        Ok(n)
    }
}

impl Write for MemoryChannel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
