//! The sliding replay window of RFC 3711 section 3.3.2, 128 packets wide (as libsrtp):
//! the highest index authenticated so far and a bitmap of which of the 127 indices below it
//! were seen. Checking and recording are separate so that a packet is recorded only after
//! it authenticated.

use super::SrtpError;

/// Width of the window in packets.
pub const WINDOW: u64 = 128;

/// A replay window over 64-bit packet indices (48-bit SRTP index, 31-bit SRTCP index).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// None until the first packet is recorded.
    highest: Option<u64>,
    /// Bit `k` set: index `highest - k` was recorded.
    seen: u128,
}

impl ReplayWindow {
    /// Whether `index` may be accepted (not seen, not behind the window).
    pub fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if index > highest {
            return Ok(());
        }
        let behind = highest - index;
        if behind >= WINDOW {
            return Err(SrtpError::TooOld);
        }
        if self.seen & (1u128 << behind) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Records `index` as received (after [`check`](Self::check) and authentication).
    pub fn record(&mut self, index: u64) {
        match self.highest {
            None => {
                self.highest = Some(index);
                self.seen = 1;
            }
            Some(highest) if index > highest => {
                let ahead = index - highest;
                self.seen = if ahead >= WINDOW {
                    0
                } else {
                    self.seen << ahead
                };
                self.seen |= 1;
                self.highest = Some(index);
            }
            Some(highest) => {
                let behind = highest - index;
                if behind < WINDOW {
                    self.seen |= 1u128 << behind;
                }
            }
        }
    }

    /// The highest recorded index.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_new_rejects_seen_and_old() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(1000), Ok(()));
        w.record(1000);
        assert_eq!(w.check(1000), Err(SrtpError::Replayed));
        assert_eq!(w.check(999), Ok(()));
        assert_eq!(w.check(1000 - 127), Ok(()));
        assert_eq!(w.check(1000 - 128), Err(SrtpError::TooOld));
        w.record(990);
        assert_eq!(w.check(990), Err(SrtpError::Replayed));
        w.record(1100);
        assert_eq!(w.check(1000), Err(SrtpError::Replayed));
        assert_eq!(w.check(990), Err(SrtpError::Replayed));
        assert_eq!(w.check(991), Ok(()));
        w.record(5000);
        assert_eq!(w.check(1100), Err(SrtpError::TooOld));
        assert_eq!(w.check(4999), Ok(()));
        assert_eq!(w.highest(), Some(5000));
    }
}
