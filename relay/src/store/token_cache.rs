//! The delivery-token rows of recently delivered-to mailboxes, in memory.
//!
//! Every delivery is checked against its mailbox's token row. Read from the
//! database, that is a read transaction on the blocking pool per envelope:
//! two thread hand-offs that cost more than the rest of a delivery, and a
//! delivery link's next request waits behind them. Rows change only when an
//! owner registers a token, so the store keeps what it read here and drops a
//! mailbox's entry once a registration for it is committed.
//!
//! A lookup that raced with a registration must not put back the row it read
//! before that commit: each registration bumps a generation, and a row read
//! from disk is kept only if no registration finished since its read began.
//! The cache holds at most [`ENTRIES`] rows (a mailbox without a token is
//! cached too, as `None`); when full, an arbitrary entry makes room, which
//! costs the evicted mailbox one read from disk later, never a wrong answer.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::codec::Recipient;
use super::TokenRow;

/// Rows kept: as many mailboxes as the relay's default connection limit,
/// about 2 MiB.
pub(super) const ENTRIES: usize = 16_384;

/// The cached rows, and the registrations finished so far.
#[derive(Debug, Default)]
pub(super) struct TokenCache {
    inner: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    rows: HashMap<Recipient, Option<TokenRow>>,
    generation: u64,
}

/// Taken before a row is read from disk; hands the row back to the cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fill(u64);

impl TokenCache {
    fn lock(&self) -> MutexGuard<'_, Cached> {
        // Every update leaves the map consistent: poisoning is moot.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached row of `owner` (`Ok(None)`: known to have none), or, on a
    /// miss, what to hand [`TokenCache::fill`] with the row read from disk.
    pub(super) fn get(&self, owner: &Recipient) -> Result<Option<TokenRow>, Fill> {
        let cached = self.lock();
        match cached.rows.get(owner) {
            Some(row) => Ok(*row),
            None => Err(Fill(cached.generation)),
        }
    }

    /// Keeps `row`, read from disk after `fill` was taken, unless a
    /// registration finished since (the row may predate it).
    pub(super) fn fill(&self, fill: Fill, owner: Recipient, row: Option<TokenRow>) {
        let mut cached = self.lock();
        if cached.generation != fill.0 {
            return;
        }
        if cached.rows.len() >= ENTRIES && !cached.rows.contains_key(&owner) {
            if let Some(evicted) = cached.rows.keys().next().copied() {
                cached.rows.remove(&evicted);
            }
        }
        cached.rows.insert(owner, row);
    }

    /// A registration for `owner` has finished (committed or not): its row
    /// is read from disk again next time.
    pub(super) fn invalidate(&self, owner: &Recipient) {
        let mut cached = self.lock();
        cached.generation = cached.generation.wrapping_add(1);
        cached.rows.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use sotto_crypto::delivery::TokenHash;

    use super::*;

    fn row(b: u8) -> Option<TokenRow> {
        Some(TokenRow {
            current: TokenHash([b; 32]),
            previous: None,
            first_contact: false,
        })
    }

    #[test]
    fn a_registration_drops_the_cached_row() {
        let cache = TokenCache::default();
        let owner = [1; 32];
        let Err(fill) = cache.get(&owner) else {
            panic!("an empty cache answered");
        };
        cache.fill(fill, owner, row(1));
        assert_eq!(cache.get(&owner).ok(), Some(row(1)));
        cache.invalidate(&owner);
        assert!(cache.get(&owner).is_err());
    }

    #[test]
    fn a_row_read_before_a_registration_finished_is_not_kept() {
        let cache = TokenCache::default();
        let owner = [1; 32];
        let Err(fill) = cache.get(&owner) else {
            panic!("an empty cache answered");
        };
        // The registration commits and finishes while the old row is read.
        cache.invalidate(&owner);
        cache.fill(fill, owner, row(1));
        assert!(cache.get(&owner).is_err());
    }

    #[test]
    fn a_full_cache_makes_room() {
        let cache = TokenCache::default();
        for i in 0..=ENTRIES {
            let mut owner = [0u8; 32];
            owner[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let Err(fill) = cache.get(&owner) else {
                panic!("not cached yet");
            };
            cache.fill(fill, owner, None);
            assert_eq!(cache.get(&owner).ok(), Some(None));
        }
        assert_eq!(cache.lock().rows.len(), ENTRIES);
    }
}
