//! Rate-limited logging of connections that end before they are served:
//! closed before or at their handshake, or refused for being over a limit.
//!
//! A flood of sockets must not turn into a flood of log lines (one per
//! timeout is thousands a minute), yet an operator must still see what
//! happens and why. So these closures are counted by kind, each kind with
//! the words of its first occurrence, and the relay logs one summary line
//! per interval in which any happened (and one at shutdown). Each closure
//! is still logged on its own at debug level.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How often the relay logs the summary.
pub(crate) const INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts by kind since the last summary.
#[derive(Default)]
pub(crate) struct Tally {
    kinds: Mutex<BTreeMap<&'static str, Count>>,
}

struct Count {
    n: u64,
    first: String,
}

impl Tally {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Count>> {
        // Every change under the lock is completed before it is released.
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one closure of `kind`, described by `what`.
    pub(crate) fn note(&self, kind: &'static str, what: &dyn Display) {
        let mut kinds = self.lock();
        match kinds.get_mut(kind) {
            Some(count) => count.n += 1,
            None => {
                kinds.insert(
                    kind,
                    Count {
                        n: 1,
                        first: what.to_string(),
                    },
                );
            }
        }
    }

    /// The summary of what was counted since the last one, most frequent
    /// first, and a fresh count; `None` if nothing was.
    pub(crate) fn take(&self) -> Option<String> {
        let kinds = std::mem::take(&mut *self.lock());
        let total: u64 = kinds.values().map(|c| c.n).sum();
        if total == 0 {
            return None;
        }
        let mut counts: Vec<Count> = kinds.into_values().collect();
        counts.sort_by(|a, b| b.n.cmp(&a.n).then_with(|| a.first.cmp(&b.first)));
        let mut line = format!("{total} connections closed before they were served: ");
        for (i, c) in counts.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            let _ = write!(line, "{sep}{} × {}", c.n, c.first);
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_are_summed_by_kind_with_the_first_words_of_each() {
        let tally = Tally::default();
        assert_eq!(tally.take(), None);
        for i in 0..3 {
            tally.note("timeout", &format!("handshake not finished within {i}s"));
        }
        tally.note("bad preamble", &"handshake failed: bad preamble");
        assert_eq!(
            tally.take().unwrap(),
            "4 connections closed before they were served: \
             3 × handshake not finished within 0s; 1 × handshake failed: bad preamble"
        );
        assert_eq!(tally.take(), None, "each summary starts a fresh count");
    }
}
