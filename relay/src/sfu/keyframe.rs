//! When the SFU asks a publisher for a keyframe (PLI, RFC 4585 §6.3.1, or FIR, RFC 5104
//! §4.3.1, where the publisher negotiated only FIR), per inbound stream (simulcast layer).
//!
//! Receivers need a keyframe when they join, when they switch layer, and when they lose
//! what they cannot repair. In a large room many of those happen together (a layer
//! switch for everyone when the speaker changes, a burst of joins), and each request
//! forwarded to the publisher would cost a keyframe: several times the size of a delta
//! frame, sent to every receiver of the layer. [`KeyframeLimiter`] sends the first
//! request at once and folds every later one within the interval into one deferred
//! request, cancelled if a keyframe arrives meanwhile (it serves everyone waiting).
//!
//! A PLI can be lost too: while a requested keyframe has not arrived, the request is
//! repeated every [`KEYFRAME_RETRY_US`].

/// The default least time between two keyframe requests to one stream.
///
/// 300 ms: the answer to a request takes about one round trip plus the encoder's
/// reaction (typically 100–300 ms), so requests closer together than that would mostly
/// be answered by the same keyframe anyway, while a receiver waiting for a keyframe
/// stalls visibly only beyond a few hundred milliseconds. It is the order of magnitude
/// other SFUs use.
pub const DEFAULT_MIN_INTERVAL_US: u64 = 300_000;

/// How long to wait for a requested keyframe before asking again (the PLI, or the
/// keyframe, may have been lost).
pub const KEYFRAME_RETRY_US: u64 = 1_000_000;

/// The keyframe-request rate limiter of one inbound stream.
#[derive(Debug, Clone)]
pub struct KeyframeLimiter {
    min_interval_us: u64,
    /// When the last request was sent.
    last_sent_us: Option<u64>,
    /// A request arrived within the interval and waits.
    pending: bool,
    /// A request was sent and its keyframe has not arrived.
    awaiting: bool,
    fir_seq: u8,
}

impl Default for KeyframeLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MIN_INTERVAL_US)
    }
}

impl KeyframeLimiter {
    /// A limiter sending at most one request per `min_interval_us`
    /// ([`DEFAULT_MIN_INTERVAL_US`] is a good value).
    pub fn new(min_interval_us: u64) -> Self {
        Self {
            min_interval_us,
            last_sent_us: None,
            pending: false,
            awaiting: false,
            fir_seq: 0,
        }
    }

    fn may_send(&self, now_us: u64) -> bool {
        self.last_sent_us
            .is_none_or(|t| now_us.saturating_sub(t) >= self.min_interval_us)
    }

    fn sent(&mut self, now_us: u64) {
        self.last_sent_us = Some(now_us);
        self.pending = false;
        self.awaiting = true;
    }

    /// A receiver needs a keyframe; returns true if a PLI (or FIR) should be sent now.
    /// Otherwise the request is deferred: see [`Self::poll_timeout`].
    pub fn request(&mut self, now_us: u64) -> bool {
        if self.may_send(now_us) {
            self.sent(now_us);
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// A keyframe arrived: cancels a deferred request and ends the wait for the last.
    pub fn on_keyframe(&mut self, _now_us: u64) {
        self.pending = false;
        self.awaiting = false;
    }

    /// When the engine should call [`Self::handle_timeout`]: the end of the interval if
    /// a request is deferred, the retry time if a requested keyframe has not arrived.
    pub fn poll_timeout(&self) -> Option<u64> {
        let last = self.last_sent_us?;
        if self.pending {
            Some(last.saturating_add(self.min_interval_us))
        } else if self.awaiting {
            Some(last.saturating_add(KEYFRAME_RETRY_US.max(self.min_interval_us)))
        } else {
            None
        }
    }

    /// Returns true if the deferred (or repeated) request should be sent now.
    pub fn handle_timeout(&mut self, now_us: u64) -> bool {
        match self.poll_timeout() {
            Some(at) if now_us >= at => {
                self.sent(now_us);
                true
            }
            _ => false,
        }
    }

    /// The command sequence number for the next FIR (RFC 5104 §4.3.1.1: one more per new
    /// request, modulo 256).
    pub fn fir_seq(&mut self) -> u8 {
        let seq = self.fir_seq;
        self.fir_seq = seq.wrapping_add(1);
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_goes_out_later_ones_fold_into_one() {
        let mut k = KeyframeLimiter::default();
        assert_eq!(k.poll_timeout(), None);
        assert!(k.request(1_000));
        // Ten subscribers within the interval: one deferred request.
        for t in 0..10 {
            assert!(!k.request(2_000 + t * 10_000));
        }
        assert_eq!(k.poll_timeout(), Some(301_000));
        assert!(!k.handle_timeout(300_999));
        assert!(k.handle_timeout(301_000));
        assert!(!k.handle_timeout(301_000), "sent once");
        // Now awaiting the keyframe: a retry after 1 s.
        assert_eq!(k.poll_timeout(), Some(1_301_000));
        k.on_keyframe(400_000);
        assert_eq!(k.poll_timeout(), None);
        // After the interval a request goes out at once again.
        assert!(!k.request(600_999));
        assert!(k.poll_timeout().is_some());
        k.on_keyframe(601_000);
        assert_eq!(
            k.poll_timeout(),
            None,
            "the keyframe served the deferred request"
        );
        assert!(k.request(901_000));
    }

    #[test]
    fn lost_request_is_retried() {
        let mut k = KeyframeLimiter::new(100_000);
        assert!(k.request(0));
        assert_eq!(k.poll_timeout(), Some(KEYFRAME_RETRY_US));
        assert!(!k.handle_timeout(KEYFRAME_RETRY_US - 1));
        assert!(k.handle_timeout(KEYFRAME_RETRY_US));
        assert_eq!(k.poll_timeout(), Some(2 * KEYFRAME_RETRY_US));
        k.on_keyframe(2 * KEYFRAME_RETRY_US);
        assert!(!k.handle_timeout(u64::MAX));
    }

    #[test]
    fn fir_sequence_increments_and_wraps() {
        let mut k = KeyframeLimiter::new(0);
        let seqs: Vec<u8> = (0..258).map(|_| k.fir_seq()).collect();
        assert_eq!(&seqs[..3], &[0, 1, 2]);
        assert_eq!(&seqs[255..], &[255, 0, 1]);
        // Interval 0: every request is sent, clocks going backwards included.
        assert!(k.request(10) && k.request(10) && k.request(5));
    }
}
