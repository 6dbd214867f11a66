//! The embedded backend: mailboxes, delivery tokens and blob metadata in one
//! redb file in the data dir. The default, and all a relay on one machine needs.
//!
//! The relay promises a sender that an envelope is stored only once it is on
//! disk, so a crash after "stored" loses nothing. Paying one fsync per envelope
//! would cap the relay at a few hundred envelopes a second, so writes are group
//! committed: a single writer thread (see `writer`) applies every request
//! waiting for it in one redb transaction and answers them all after one
//! durable commit. Reads never wait for the writer; they run their own redb
//! read transactions on tokio's blocking pool, so the async runtime never
//! blocks on disk.
//!
//! Layout (see `codec` for the byte formats): `messages` keyed by
//! `(recipient, id)`; `usage` per recipient, updated in the same transaction so
//! a quota check is one lookup; `expiry` keyed by id so expiry walks from the
//! oldest message and stops at the first young one; `meta` with the next id,
//! so ids are global, strictly increasing and never reused, across restarts.
//!
//! The blob cache keeps its metadata here too (`blob`): one row per stored
//! file, a usage row per recipient and one per (recipient, uploader), changed
//! only by the same writer thread, so a checkpoint of an upload shares its
//! fsync with whatever else is being committed. Uploads in progress hold room
//! in memory only (`holds`).
//!
//! What bounds the disk: per-recipient quotas bound one mailbox and one
//! recipient's files, not the relay, since a sender can write to any number of
//! keys. So the writer also counts every byte stored (envelope bytes, the
//! stored chunks of blobs, the holds of uploads in progress) against one
//! relay-wide budget ([`StoreLimits::max_stored_bytes`]), refusing new data
//! beyond it with [`StoreError::OutOfSpace`]; the free-space reserve
//! (`crate::space`) stays beneath it for the database's own overhead and for
//! whatever else shares the disk.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTable};
use sotto_keys::PublicKey;
use tokio::sync::{mpsc, oneshot};

use super::codec::{
    self, decode_blob, decode_message, decode_u64, BlobUsage, Usage, BLOBS, BLOB_ACCOUNTING,
    BLOB_SHARES, BLOB_USAGE, EXPIRY, FORMAT_VERSION, MESSAGES, META, META_BLOB_ACCOUNTING,
    META_FORMAT, META_NEXT_ID, USAGE,
};
use super::live::{Feed, Feeds};
use super::writer::{
    self, Change, Clock, Request, Writer, COMMIT_INTERVAL, MAX_BATCH, QUEUE_DEPTH,
};
use super::{
    holds, tokens, Committing, StoreCounters, StoreError, StoreLimits, Stored, TokenRow,
    DEFAULT_BUDGET_SHARE,
};

/// A handle to the mailbox store. Cloning is cheap; all clones share one
/// database and one writer.
#[derive(Clone)]
pub struct RedbStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    /// `None` once closed. A std mutex: it guards a few clones and a take,
    /// and is never held across an `.await`.
    open: Mutex<Option<Open>>,
    limits: StoreLimits,
    counters: Arc<writer::Counters>,
    feeds: Arc<Feeds>,
    space: crate::space::Space,
    /// Where dropped upload holds are named for the writer.
    pub(super) released: Arc<holds::Released>,
    /// The storage budget in force (`None`: none).
    budget: Option<u64>,
    /// Token rows already read, so a delivery need not read its own.
    tokens: super::token_cache::TokenCache,
}

struct Open {
    requests: mpsc::Sender<Request>,
    db: DbSlot,
    writer: JoinHandle<()>,
}

/// The open database, shared by the readers and the writer. redb refuses
/// every operation after an I/O error (a full disk, say) until the database
/// is reopened, so after a failed batch the writer empties the slot, waits for
/// the readers to let go, and reopens the file (which repairs it) in its place.
/// Readers that come in between get [`StoreError::Reopening`].
pub(super) type DbSlot = Arc<Mutex<Option<Arc<Database>>>>;

pub(super) fn slot_lock(slot: &DbSlot) -> MutexGuard<'_, Option<Arc<Database>>> {
    // Only ever a take or a put under this lock: poisoning is moot.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if it is missing, and
    /// starts its writer thread. Blocking: call it before serving.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<RedbStore, StoreError> {
        Self::open_with(path, limits, Arc::new(unix_now), COMMIT_INTERVAL)
    }

    /// [`RedbStore::open`] with the clock and the commit pacing chosen (tests).
    pub(super) fn open_with(
        path: &Path,
        limits: StoreLimits,
        clock: Clock,
        interval: std::time::Duration,
    ) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                dir: path
                    .parent()
                    .map_or_else(|| path.to_path_buf(), Path::to_path_buf),
            },
            other => StoreError::from(redb::Error::from(other)),
        })?;
        // Envelopes are pushed to live recipients before their batch commits,
        // so a crash may leave ids that a client saw but the file never
        // recorded: at most two batches' worth (see `writer`). Skipping past them keeps an id
        // from ever naming two envelopes.
        let next_id = prepare(&db)?.saturating_add(2 * MAX_BATCH as u64);
        let feeds = Feeds::new(next_id);
        let db: DbSlot = Arc::new(Mutex::new(Some(Arc::new(db))));
        let counters = Arc::new(writer::Counters::default());
        let (requests, rx) = mpsc::channel(QUEUE_DEPTH);
        let dir = path.parent().unwrap_or(Path::new("."));
        let space = crate::space::Space::new(dir, limits.min_free_disk);
        let budget = match limits.max_stored_bytes {
            Some(0) => None,
            Some(budget) => Some(budget),
            None => match crate::space::filesystem_size(dir) {
                Some(size) => Some(size / DEFAULT_BUDGET_SHARE),
                None => {
                    tracing::warn!(
                        "cannot read the size of the data dir's filesystem; no storage budget"
                    );
                    None
                }
            },
        };
        let released = Arc::new(holds::Released::default());
        let writer = Writer {
            db: Arc::clone(&db),
            path: path.to_owned(),
            space: space.clone(),
            limits: limits.clone(),
            next_id,
            clock,
            counters: Arc::clone(&counters),
            feeds: Arc::clone(&feeds),
            usage: std::collections::HashMap::new(),
            written_next_id: 0,
            interval,
            unwritten: std::collections::HashMap::new(),
            room: None,
            holds: holds::Holds::new(Arc::clone(&released)),
            totals: None,
            budget: budget.unwrap_or(u64::MAX),
        };
        let writer = std::thread::Builder::new()
            .name("sotto-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|err| StoreError::WriterSpawn(Arc::new(err)))?;
        tracing::debug!(path = %path.display(), next_id, ?budget, "mailbox store open");
        Ok(RedbStore {
            inner: Arc::new(Inner {
                open: Mutex::new(Some(Open {
                    requests,
                    db,
                    writer,
                })),
                limits,
                counters,
                feeds,
                space,
                released,
                budget,
                tokens: super::token_cache::TokenCache::default(),
            }),
        })
    }

    /// The storage budget in force, in bytes (`None`: no budget).
    pub fn budget(&self) -> Option<u64> {
        self.inner.budget
    }

    /// The limits the store was opened with.
    pub fn limits(&self) -> &StoreLimits {
        &self.inner.limits
    }

    /// The free-space check of the store's filesystem (the data dir).
    pub fn space(&self) -> &crate::space::Space {
        &self.inner.space
    }

    /// What the store has committed since it was opened.
    pub fn counters(&self) -> StoreCounters {
        let c = &self.inner.counters;
        StoreCounters {
            commits: c.commits.load(Ordering::Relaxed),
            envelopes_written: c.written.load(Ordering::Relaxed),
            envelopes_taken_out: c.taken_out.load(Ordering::Relaxed),
        }
    }

    /// Hands `envelope` for `to` to the writer and returns once it is queued
    /// (waiting only while the writer's queue is full); the returned future
    /// gives its id once the write is durably committed. A connection keeps
    /// several of these in flight, so its sends share commits.
    ///
    /// Live feeds of `to` get the envelope when the writer assigns its id,
    /// before the commit (see [`RedbStore::subscribe`]).
    pub async fn enqueue_begin(
        &self,
        to: PublicKey,
        envelope: Vec<u8>,
    ) -> Result<Committing<u64>, StoreError> {
        let max = self.inner.limits.max_envelope_len;
        if envelope.len() > max {
            return Err(StoreError::TooLarge {
                len: envelope.len(),
                max,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Enqueue {
            to: *to.as_bytes(),
            envelope,
            reply,
        })
        .await?;
        Ok(Committing(answer))
    }

    /// Opens a live feed of the envelopes enqueued for `to` from now on,
    /// handed over as soon as they have an id (before they are durable).
    /// See the `live` module for how a reader stays in order and gap-free.
    pub fn subscribe(&self, to: PublicKey) -> Feed {
        self.inner.feeds.subscribe(*to.as_bytes(), None)
    }

    /// [`RedbStore::subscribe`] for a connection with a byte budget: each
    /// envelope pushed takes its room there until the connection lets go of
    /// it, and one that finds none is skipped as if the feed had overflowed.
    pub fn subscribe_within(&self, to: PublicKey, budget: crate::budget::Budget) -> Feed {
        self.inner.feeds.subscribe(*to.as_bytes(), Some(budget))
    }

    /// [`Store::pending`](super::Store::pending), stopping before what the envelopes are charged
    /// of a byte budget (`crate::budget::charge` of each length) would add
    /// up to more than `max_charge`, even at the first; also says whether it
    /// stopped at a limit, so that more may follow.
    pub async fn pending_within(
        &self,
        owner: PublicKey,
        after: Option<u64>,
        limit: usize,
        max_charge: usize,
    ) -> Result<(Vec<Stored>, bool), StoreError> {
        let db = self.db()?;
        let Some(first) = after.map_or(Some(0), |after| after.checked_add(1)) else {
            return Ok((Vec::new(), false));
        };
        if limit == 0 {
            return Ok((Vec::new(), true));
        }
        let owner = *owner.as_bytes();
        blocking(move || {
            let txn = db.begin_read()?;
            let messages = txn.open_table(MESSAGES)?;
            let mut out = Vec::new();
            let mut charged = 0usize;
            for item in messages.range((owner, first)..=(owner, u64::MAX))? {
                let (key, value) = item?;
                if out.len() == limit {
                    return Ok((out, true));
                }
                let (_, id) = key.value();
                // A damaged row must not lock its owner out of the rest of the
                // mailbox: it goes out empty, fails to open at the client, and
                // the client's ack deletes it.
                let stored = match decode_message(value.value()) {
                    Ok((received_at, envelope)) => Stored {
                        id,
                        received_at,
                        envelope: envelope.to_vec(),
                    },
                    Err(_) => {
                        tracing::error!(id, "damaged message delivered empty");
                        Stored {
                            id,
                            received_at: 0,
                            envelope: Vec::new(),
                        }
                    }
                };
                charged = charged.saturating_add(crate::budget::charge(stored.envelope.len()));
                if charged > max_charge {
                    return Ok((out, true));
                }
                out.push(stored);
            }
            Ok((out, false))
        })
        .await
    }

    /// [`Store::ack`](super::Store::ack) in two steps, like [`RedbStore::enqueue_begin`]: returns
    /// once the deletion is queued; the returned future gives the count once
    /// it is committed, so a connection reads on meanwhile.
    pub async fn ack_begin(
        &self,
        owner: PublicKey,
        ids: Vec<u64>,
    ) -> Result<Committing<usize>, StoreError> {
        let (reply, answer) = oneshot::channel();
        if ids.is_empty() {
            self.db()?;
            // The receiver is held just below, so this cannot fail.
            let _ = reply.send(Ok(0));
            return Ok(Committing(answer));
        }
        self.submit(Request::Change(Change::Ack {
            owner: *owner.as_bytes(),
            ids,
            cancelled: 0,
            reply,
        }))
        .await?;
        Ok(Committing(answer))
    }

    /// Deletes every envelope stored at least [`StoreLimits::expiry`] before
    /// `now_unix` and returns how many were deleted.
    pub async fn expire(&self, now_unix: u64) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Change(Change::Expire {
            now: now_unix,
            reply,
        }))
        .await?;
        answer.await.map_err(|_| StoreError::Crashed)?
    }

    /// Registers `hash` as the delivery token of `owner`'s mailbox (the one
    /// it replaces stays in the row, with when), and whether token-less
    /// deliveries are accepted there. Returns once committed.
    pub async fn set_delivery_token(
        &self,
        owner: PublicKey,
        hash: sotto_crypto::delivery::TokenHash,
        first_contact: bool,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let owner = *owner.as_bytes();
        self.submit(Request::Change(Change::SetToken {
            owner,
            hash,
            first_contact,
            reply,
        }))
        .await?;
        let done = answer.await.map_err(|_| StoreError::Crashed);
        // Whether or not it committed, the cached row may be out of date.
        self.inner.tokens.invalidate(&owner);
        done?
    }

    /// What `owner` registered of its delivery token, if anything; read
    /// from disk only if not cached.
    pub async fn delivery_token(&self, owner: PublicKey) -> Result<Option<TokenRow>, StoreError> {
        let owner = *owner.as_bytes();
        let fill = match self.inner.tokens.get(&owner) {
            Ok(row) => {
                // Closed is closed, cached or not.
                if self.lock().is_none() {
                    return Err(StoreError::Closed);
                }
                return Ok(row);
            }
            Err(fill) => fill,
        };
        let db = self.db()?;
        let row = blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(tokens::TOKENS)?;
            let row = table.get(&owner)?;
            row.map(|g| TokenRow::decode(g.value())).transpose()
        })
        .await?;
        self.inner.tokens.fill(fill, owner, row);
        Ok(row)
    }

    /// `(messages, bytes)` pending for `owner`.
    pub async fn usage(&self, owner: PublicKey) -> Result<(u64, u64), StoreError> {
        let db = self.db()?;
        let owner = *owner.as_bytes();
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(USAGE)?;
            let stored = table.get(&owner)?.map(|guard| Usage::decode(guard.value()));
            let usage = match stored {
                None => Usage::default(),
                Some(Ok(usage)) => usage,
                // Derived data: count the messages instead (the writer rebuilds
                // the row on its next change to this mailbox).
                Some(Err(_)) => writer::recount(&txn.open_table(MESSAGES)?, &owner)?,
            };
            Ok((usage.messages, usage.bytes))
        })
        .await
    }

    /// Stops accepting work, waits until every write already queued is
    /// committed and answered, then stops the writer. Afterwards every call
    /// on any clone returns [`StoreError::Closed`].
    ///
    /// The file is released once reads still in flight finish.
    pub async fn close(self) -> Result<(), StoreError> {
        let Open {
            requests,
            db,
            writer,
        } = self.lock().take().ok_or(StoreError::Closed)?;
        // The writer stops once every sender is gone: this one, and those of
        // calls already in `submit`, whose requests it commits first.
        drop(requests);
        drop(db);
        let joined = tokio::task::spawn_blocking(move || writer.join()).await;
        match joined {
            Ok(Ok(())) => {
                let c = self.counters();
                tracing::info!(
                    commits = c.commits,
                    written = c.envelopes_written,
                    taken_out = c.envelopes_taken_out,
                    "mailbox store closed"
                );
                Ok(())
            }
            _ => Err(StoreError::Crashed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Open>> {
        // Nothing can be left half-done under this lock, so poisoning is moot.
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self
            .lock()
            .as_ref()
            .map(|open| Arc::clone(&open.db))
            .ok_or(StoreError::Closed)?;
        let db = slot_lock(&slot).clone();
        db.ok_or(StoreError::Reopening)
    }

    pub(super) async fn submit(&self, request: Request) -> Result<(), StoreError> {
        let requests = self
            .lock()
            .as_ref()
            .map(|open| open.requests.clone())
            .ok_or(StoreError::Closed)?;
        // The writer runs until every sender is dropped, and we hold one: a
        // closed channel means the writer died.
        requests
            .send(request)
            .await
            .map_err(|_| StoreError::Crashed)
    }
}

/// Runs a read on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|_| StoreError::Crashed)?
}

/// Creates the tables if missing, checks the format, and returns the next id.
pub(super) fn prepare(db: &Database) -> Result<u64, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    let next_id = {
        let mut meta = txn.open_table(META)?;
        let format = meta
            .get(META_FORMAT)?
            .map(|guard| decode_u64("format", guard.value()))
            .transpose()?;
        match format {
            None => {
                meta.insert(META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
            }
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                })
            }
        }
        let stored = meta
            .get(META_NEXT_ID)?
            .map(|guard| decode_u64("next id", guard.value()))
            .transpose()?;
        txn.open_table(MESSAGES)?;
        txn.open_table(USAGE)?;
        txn.open_table(BLOBS)?;
        txn.open_table(BLOB_USAGE)?;
        txn.open_table(BLOB_SHARES)?;
        txn.open_table(tokens::TOKENS)?;
        let accounting = meta
            .get(META_BLOB_ACCOUNTING)?
            .map(|guard| decode_u64("blob accounting", guard.value()))
            .transpose()?;
        if accounting != Some(BLOB_ACCOUNTING) {
            recount_blob_usage(&txn)?;
            meta.insert(
                META_BLOB_ACCOUNTING,
                BLOB_ACCOUNTING.to_be_bytes().as_slice(),
            )?;
        }
        let expiry = txn.open_table(EXPIRY)?;
        // Every live message has an expiry entry, so this guards the counter
        // against having fallen behind the ids in use.
        let after_last = match expiry.last()? {
            Some((id, _)) => id.value().saturating_add(1),
            None => 1,
        };
        if stored.is_some_and(|next| next < after_last) {
            tracing::warn!("mailbox id counter was behind the stored ids; moving it on");
        }
        stored.unwrap_or(1).max(after_last).max(1)
    };
    txn.commit()?;
    Ok(next_id)
}

/// Rebuilds the blob usage rows (per recipient, and per recipient and
/// uploader) from the blobs, counting what each has stored: for a store whose
/// usage counted unfinished uploads at their whole size.
fn recount_blob_usage(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    use std::collections::HashMap;
    let mut usage: HashMap<codec::Recipient, BlobUsage> = HashMap::new();
    let mut shares: HashMap<(codec::Recipient, codec::Recipient), BlobUsage> = HashMap::new();
    for item in txn.open_table(BLOBS)?.iter()? {
        let (_, value) = item?;
        // A damaged row counts for nobody: nobody can be shown to own it.
        let Ok(meta) = decode_blob(value.value()) else {
            continue;
        };
        let (recipient, uploader) = (*meta.recipient.as_bytes(), *meta.uploader.as_bytes());
        for counted in [
            usage.entry(recipient).or_default(),
            shares.entry((recipient, uploader)).or_default(),
        ] {
            counted.files += 1;
            counted.bytes = counted.bytes.saturating_add(meta.stored_bytes());
        }
    }
    txn.delete_table(BLOB_USAGE)?;
    txn.delete_table(BLOB_SHARES)?;
    let mut usage_table = txn.open_table(BLOB_USAGE)?;
    for (recipient, counted) in usage {
        usage_table.insert(&recipient, counted.encode().as_slice())?;
    }
    let mut shares_table = txn.open_table(BLOB_SHARES)?;
    for (key, counted) in shares {
        shares_table.insert(&key, counted.encode().as_slice())?;
    }
    tracing::info!("blob usage recounted from the stored blobs");
    Ok(())
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}
