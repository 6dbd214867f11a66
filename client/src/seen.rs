//! Which messages have already been shown: persistent duplicate suppression.
//!
//! One-shot envelopes (Noise `X`) can be replayed, and a relay re-delivers
//! whatever was not acknowledged (a crash between printing and `Ack`, a lost
//! `Acked`), so each message's random [`MessageId`] is recorded with its
//! authenticated sender ([`SeenId`]), durably, before its envelope is
//! acknowledged, and a message already recorded is not shown again. The sender
//! is part of the key: otherwise anyone who learned an id (every member of a
//! group sees the same one) could send a message under it first and so
//! suppress the real one.
//!
//! The store must not grow forever, so an entry is kept for [`RETENTION`] after
//! the later of "first seen" and the message's own date. A message dated
//! earlier than that window could be a replay whose entry has been pruned, so
//! such a message is refused as stale ([`is_stale`]) rather than shown: with
//! both rules using the same window, every replay is caught by one or the other.
//!
//! The store is a small `redb` file in the home (`seen.redb`): crash-safe
//! commits without a server, and a lock so two `sotto inbox` at once cannot
//! both show a message.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use redb::{Database, DatabaseError, ReadableTable, TableDefinition};
use sotto_crypto::envelope::MessageId;
use sotto_keys::PublicKey;

/// How long a message id is remembered, and the oldest message date accepted.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Sender key | message id -> unix seconds from which its retention runs.
const SEEN: TableDefinition<[u8; 48], u64> = TableDefinition::new("seen_by_sender");

/// A message as duplicate suppression knows it: who sent it, and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeenId {
    sender: PublicKey,
    id: MessageId,
}

impl SeenId {
    /// The message `id` from the authenticated `sender`.
    pub fn new(sender: PublicKey, id: MessageId) -> Self {
        Self { sender, id }
    }

    fn key(&self) -> [u8; 48] {
        let mut key = [0u8; 48];
        key[..32].copy_from_slice(self.sender.as_bytes());
        key[32..].copy_from_slice(&self.id.0);
        key
    }
}

/// The seen-message store.
pub struct SeenStore {
    db: Database,
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a message dated `sent_at_ms` is too old to be checked for replay.
pub fn is_stale(sent_at_ms: u64, now: u64) -> bool {
    sent_at_ms / 1000 < now.saturating_sub(RETENTION.as_secs())
}

impl SeenStore {
    /// Opens (or creates) the store at `path` and prunes expired entries.
    pub fn open(path: &Path, now: u64) -> Result<Self> {
        // What was received when is nobody else's business: create the file
        // private (redb initialises an empty file) unless it exists already.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "{} is in use by another sotto command; try again when it has finished",
                path.display()
            ),
            other => anyhow::Error::new(other).context(format!("cannot open {}", path.display())),
        })?;
        let store = Self { db };
        store.prune(now)?;
        Ok(store)
    }

    /// Whether this message has been shown.
    pub fn contains(&self, id: &SeenId) -> Result<bool> {
        let txn = self.db.begin_read().context("seen store")?;
        let table = match txn.open_table(SEEN) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(anyhow::Error::new(e).context("seen store")),
        };
        Ok(table.get(id.key()).context("seen store")?.is_some())
    }

    /// Records ids as shown, in one durable commit. Each entry is an id and
    /// the message's date in milliseconds; its retention runs from the later of
    /// `now` and that date.
    pub fn record(&self, entries: &[(SeenId, u64)], now: u64) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().context("seen store")?;
        {
            let mut table = txn.open_table(SEEN).context("seen store")?;
            for (id, sent_at_ms) in entries {
                let from = now.max(sent_at_ms / 1000);
                let key = id.key();
                let keep = match table.get(key).context("seen store")? {
                    Some(old) => old.value().max(from),
                    None => from,
                };
                table.insert(key, keep).context("seen store")?;
            }
        }
        // redb's default durability commits with fsync: the ids are on disk
        // before the caller acknowledges the envelopes.
        txn.commit().context("cannot save the seen-message store")?;
        Ok(())
    }

    /// Deletes entries whose retention is over; returns how many.
    pub fn prune(&self, now: u64) -> Result<usize> {
        let cutoff = now.saturating_sub(RETENTION.as_secs());
        let txn = self.db.begin_write().context("seen store")?;
        let removed = {
            let mut table = txn.open_table(SEEN).context("seen store")?;
            let removed = table
                .extract_if(|_, from| from < cutoff)
                .context("seen store")?
                .count();
            removed
        };
        txn.commit().context("cannot save the seen-message store")?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 60 * 60;

    #[test]
    fn duplicates_are_caught_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.redb");
        let now = 1_800_000_000;
        let alice = PublicKey::from_bytes([7; 32]);
        let a = SeenId::new(alice, MessageId([1; 16]));
        let b = SeenId::new(alice, MessageId([2; 16]));
        // The same id from someone else is another message.
        let forged = SeenId::new(PublicKey::from_bytes([8; 32]), MessageId([1; 16]));
        {
            let store = SeenStore::open(&path, now).unwrap();
            assert!(!store.contains(&a).unwrap());
            store.record(&[(a, now * 1000)], now).unwrap();
            assert!(store.contains(&a).unwrap());
            assert!(!store.contains(&b).unwrap());
            assert!(!store.contains(&forged).unwrap());
        }
        let store = SeenStore::open(&path, now + DAY).unwrap();
        assert!(store.contains(&a).unwrap());
        assert!(!store.contains(&b).unwrap());
    }

    #[test]
    fn a_second_opener_is_told_to_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.redb");
        let _first = SeenStore::open(&path, 0).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = SeenStore::open(&path, 0).err().unwrap().to_string();
        assert!(err.contains("in use by another sotto command"), "{err}");
    }

    #[test]
    fn old_entries_are_pruned_and_old_messages_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.redb");
        let now = 1_800_000_000;
        let sender = PublicKey::from_bytes([7; 32]);
        let old = SeenId::new(sender, MessageId([1; 16]));
        let future = SeenId::new(sender, MessageId([3; 16]));
        let store = SeenStore::open(&path, now).unwrap();
        store.record(&[(old, (now - DAY) * 1000)], now).unwrap();
        // A sender whose clock runs 40 days ahead: kept from that date on.
        store
            .record(&[(future, (now + 40 * DAY) * 1000)], now)
            .unwrap();

        let later = now + 31 * DAY;
        assert_eq!(store.prune(later).unwrap(), 1);
        assert!(!store.contains(&old).unwrap());
        assert!(store.contains(&future).unwrap());
        // ... and the pruned message, replayed now, is refused by its date.
        assert!(is_stale((now - DAY) * 1000, later));
        assert!(!is_stale(later * 1000, later));
        assert!(!is_stale((later - 29 * DAY) * 1000, later));
    }
}
