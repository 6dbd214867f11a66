//! Which nonces a receiving direction of a session has opened lately.
//!
//! A session transport message carries a random 192-bit nonce (module
//! documentation, §2), so there is no order to slide a window along: this
//! remembers the last [`RECENT`] nonces opened and refuses those again, which
//! catches the re-deliveries and replays that come soon after the original
//! (a lost `Ack`, a reconnect). It never refuses a nonce it has not seen:
//! an envelope that was never opened is never mistaken for a replay, however
//! many came after it. Replays older than what is kept here open again, and
//! are shown once all the same because the client deduplicates bodies by
//! sender and message id (PROTOCOL §7.6).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::transport::Nonce;

/// How many recently opened nonces each receiving direction remembers.
pub const RECENT: usize = 128;

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecentNonces(VecDeque<Nonce>);

impl RecentNonces {
    /// Whether `nonce` was opened lately.
    pub(crate) fn contains(&self, nonce: &Nonce) -> bool {
        self.0.iter().any(|n| n == nonce)
    }

    /// Records `nonce` as opened; call only once its message authenticated,
    /// so forged nonces cannot push real ones out.
    pub(crate) fn insert(&mut self, nonce: Nonce) {
        if self.contains(&nonce) {
            return;
        }
        if self.0.len() >= RECENT {
            self.0.pop_front();
        }
        self.0.push_back(nonce);
    }

    /// How many nonces are remembered.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> Nonce {
        let mut n = [0u8; 24];
        n[..4].copy_from_slice(&i.to_le_bytes());
        n
    }

    #[test]
    fn recent_nonces_are_caught_and_unseen_ones_never_are() {
        let mut r = RecentNonces::default();
        assert!(!r.contains(&n(1)));
        r.insert(n(1));
        r.insert(n(1));
        assert!(r.contains(&n(1)));
        assert_eq!(r.len(), 1);
        for i in 2..=RECENT as u32 {
            r.insert(n(i));
        }
        assert_eq!(r.len(), RECENT);
        assert!(r.contains(&n(1)));
        // One more pushes out the oldest; nothing unseen is ever refused.
        r.insert(n(RECENT as u32 + 1));
        assert_eq!(r.len(), RECENT);
        assert!(!r.contains(&n(1)));
        assert!(r.contains(&n(2)));
        assert!(!r.contains(&n(100_000)));
    }
}
