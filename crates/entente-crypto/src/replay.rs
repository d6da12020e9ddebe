//! A sliding replay window over sequence numbers, as in IPsec (RFC 4303 §3.4.3) and DTLS.

/// How far behind the highest accepted sequence number a late message may still arrive.
pub const REPLAY_WINDOW: u64 = 1024;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// This sequence number was already accepted.
    #[error("sequence number {0} was already received")]
    Duplicate(u64),
    /// The number is older than the window can judge.
    #[error("sequence number {0} is older than the replay window")]
    TooOld(u64),
}

/// The accepted sequence numbers of one (sender, channel, epoch).
///
/// `check` then `accept` lets the caller authenticate a message between the two, so forged
/// numbers never move the window.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: Option<u64>,
    seen: [u64; WORDS],
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `seq` would be accepted now.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if seq > highest {
            return Ok(());
        }
        if highest - seq >= REPLAY_WINDOW {
            return Err(ReplayError::TooOld(seq));
        }
        if self.is_set(seq) {
            return Err(ReplayError::Duplicate(seq));
        }
        Ok(())
    }

    /// Records `seq` as received. Call only after `check` passed and the message authenticated.
    pub fn accept(&mut self, seq: u64) {
        match self.highest {
            Some(highest) if seq <= highest => {}
            Some(highest) if seq - highest < REPLAY_WINDOW => {
                for skipped in highest + 1..seq {
                    self.clear(skipped);
                }
                self.highest = Some(seq);
            }
            _ => {
                self.seen = [0; WORDS];
                self.highest = Some(seq);
            }
        }
        self.set(seq);
    }

    /// `check`, then `accept` on success.
    pub fn check_and_accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        self.accept(seq);
        Ok(())
    }

    /// The highest sequence number accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn slot(seq: u64) -> (usize, u64) {
        let bit = seq % REPLAY_WINDOW;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, mask) = Self::slot(seq);
        self.seen.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set(&mut self, seq: u64) {
        let (word, mask) = Self::slot(seq);
        if let Some(w) = self.seen.get_mut(word) {
            *w |= mask;
        }
    }

    fn clear(&mut self, seq: u64) {
        let (word, mask) = Self::slot(seq);
        if let Some(w) = self.seen.get_mut(word) {
            *w &= !mask;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn duplicates_and_old_numbers_are_refused() {
        let mut w = ReplayWindow::new();
        w.check_and_accept(5).unwrap();
        assert_eq!(w.check_and_accept(5), Err(ReplayError::Duplicate(5)));
        w.check_and_accept(3).unwrap();
        assert_eq!(w.check(3), Err(ReplayError::Duplicate(3)));
        w.check_and_accept(5 + REPLAY_WINDOW).unwrap();
        assert_eq!(w.check(5), Err(ReplayError::TooOld(5)));
        w.check_and_accept(6).unwrap();
        assert_eq!(w.check(6), Err(ReplayError::Duplicate(6)));
    }

    #[test]
    fn a_jump_clears_stale_bits() {
        let mut w = ReplayWindow::new();
        w.check_and_accept(1).unwrap();
        // 1 + 1024 maps to the same bit as 1: it must not look like a duplicate.
        w.check_and_accept(1 + REPLAY_WINDOW).unwrap();
        w.check_and_accept(2 + 3 * REPLAY_WINDOW).unwrap();
        // After a jump of more than the window, every bit is stale: nearby numbers are new,
        // the old highest is too old.
        w.check_and_accept(2 + 3 * REPLAY_WINDOW - 5).unwrap();
        assert_eq!(
            w.check(1 + REPLAY_WINDOW),
            Err(ReplayError::TooOld(1 + REPLAY_WINDOW))
        );
        assert_eq!(
            w.check(2 + 3 * REPLAY_WINDOW - 5),
            Err(ReplayError::Duplicate(2 + 3 * REPLAY_WINDOW - 5))
        );
    }

    proptest! {
        /// Against a model: a number is accepted iff it is new and within the window.
        #[test]
        fn matches_a_set_model(seqs in proptest::collection::vec(0u64..3000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest: Option<u64> = None;
            for seq in seqs {
                let expected_ok = !seen.contains(&seq)
                    && highest.is_none_or(|h| seq > h || h - seq < REPLAY_WINDOW);
                prop_assert_eq!(w.check_and_accept(seq).is_ok(), expected_ok, "seq {}", seq);
                if expected_ok {
                    seen.insert(seq);
                    highest = Some(highest.map_or(seq, |h| h.max(seq)));
                }
            }
        }
    }
}
