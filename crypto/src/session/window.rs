//! The replay window of one receiving direction (Noise §11.4, "out-of-order
//! transport messages"; the same sliding window as IPsec's, RFC 4303 §3.4.3).
//!
//! It remembers the highest nonce opened and which of the [`WINDOW`] nonces
//! ending there have been opened. A nonce above the highest moves the window;
//! one inside it is accepted once; one below it is refused, since it can no
//! longer be told apart from a replay.

use serde::{Deserialize, Serialize};

/// How many nonces, ending at the highest one opened, are remembered.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// Why a nonce is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Opened before.
    Seen,
    /// Below the window.
    TooOld,
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplayWindow {
    /// The highest nonce opened, if any.
    top: Option<u64>,
    /// Bit `i` (word `i / 64`, bit `i % 64`) is set if nonce `top - i` was opened.
    seen: [u64; WORDS],
}

impl ReplayWindow {
    /// Whether `nonce` may be opened. Checked before decrypting; recorded with
    /// [`ReplayWindow::mark`] only once the message has authenticated, so
    /// forged nonces cannot move the window.
    pub(crate) fn check(&self, nonce: u64) -> Result<(), Refused> {
        let Some(top) = self.top else {
            return Ok(());
        };
        if nonce > top {
            return Ok(());
        }
        let age = top - nonce;
        if age >= WINDOW {
            return Err(Refused::TooOld);
        }
        if self.bit(age) {
            Err(Refused::Seen)
        } else {
            Ok(())
        }
    }

    /// Records `nonce` as opened. Call only after [`ReplayWindow::check`] passed.
    pub(crate) fn mark(&mut self, nonce: u64) {
        match self.top {
            Some(top) if nonce <= top => {
                let age = top - nonce;
                if age < WINDOW {
                    self.seen[(age / 64) as usize] |= 1 << (age % 64);
                }
            }
            Some(top) => {
                self.shift(nonce - top);
                self.top = Some(nonce);
                self.seen[0] |= 1;
            }
            None => {
                self.top = Some(nonce);
                self.seen = [0; WORDS];
                self.seen[0] = 1;
            }
        }
    }

    fn bit(&self, age: u64) -> bool {
        self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0
    }

    /// Ages every remembered nonce by `by`.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..WORDS).rev() {
            let lo = i.checked_sub(words).map_or(0, |j| self.seen[j]);
            let carry = match (bits, i.checked_sub(words + 1)) {
                (0, _) | (_, None) => 0,
                (b, Some(j)) => self.seen[j] >> (64 - b),
            };
            self.seen[i] = (lo << bits) | carry;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn open(w: &mut ReplayWindow, n: u64) -> Result<(), Refused> {
        w.check(n)?;
        w.mark(n);
        Ok(())
    }

    #[test]
    fn duplicates_and_old_nonces_are_refused() {
        let mut w = ReplayWindow::default();
        assert_eq!(open(&mut w, 5), Ok(()));
        assert_eq!(open(&mut w, 5), Err(Refused::Seen));
        assert_eq!(open(&mut w, 3), Ok(()));
        assert_eq!(open(&mut w, 3), Err(Refused::Seen));
        assert_eq!(open(&mut w, 5 + WINDOW - 1), Ok(()));
        // 5 is now the oldest nonce of the window, 4 just below it.
        assert_eq!(open(&mut w, 5), Err(Refused::Seen));
        assert_eq!(open(&mut w, 6), Ok(()));
        assert_eq!(open(&mut w, 4), Err(Refused::TooOld));
        assert_eq!(open(&mut w, 0), Err(Refused::TooOld));
        assert_eq!(open(&mut w, u64::MAX), Ok(()));
        assert_eq!(open(&mut w, u64::MAX), Err(Refused::Seen));
    }

    proptest! {
        /// The bitmap agrees with the plain definition: a nonce opens if it was
        /// never opened and is less than WINDOW below the highest opened.
        #[test]
        fn agrees_with_a_set(steps in proptest::collection::vec((0u64..3000, any::<bool>()), 1..300)) {
            let mut w = ReplayWindow::default();
            let mut opened = BTreeSet::new();
            let mut top: Option<u64> = None;
            for (n, far) in steps {
                // Now and then a big jump, to exercise whole-window shifts.
                let n = if far { n * 97 } else { n };
                let expected = !opened.contains(&n) && top.is_none_or(|t| n + WINDOW > t);
                prop_assert_eq!(open(&mut w, n).is_ok(), expected, "nonce {}", n);
                if expected {
                    opened.insert(n);
                    top = top.max(Some(n));
                }
            }
        }
    }
}
