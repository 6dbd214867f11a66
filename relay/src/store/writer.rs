//! The writer thread: every change to the store goes through it, in batches.
//!
//! A durable commit costs an fsync, and an fsync costs the same whether it
//! carries one envelope or thousands. So one thread owns all write transactions
//! (redb allows one at a time anyway, and blocks while waiting for it): it takes
//! every request already queued, applies them all in one transaction, commits
//! once with [`Durability::Immediate`], and only then answers each caller. Many
//! senders thus share one fsync, and no caller hears "stored" before it is.
//!
//! A request that fails on its own (a full mailbox) is answered with its error
//! and changes nothing, so it cannot spoil the batch. A database error fails
//! the whole batch: the transaction is dropped (rolled back) and every request
//! in it is told, since none of them was stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use sotto_crypto::file::{chunk_count, sealed_len, MAX_FILE_SIZE};
use sotto_keys::PublicKey;

use super::codec::{
    decode_blob, decode_message, encode_blob, encode_message, BlobId, BlobUsage, ExpiryEntry,
    Recipient, Usage, BLOBS, BLOB_USAGE, EXPIRY, MESSAGES, META, META_NEXT_ID, USAGE,
};
use super::{BlobBegun, BlobMeta, BlobQuota, StoreError, StoreLimits};

/// Most requests applied in one transaction, so a flood of writers still gets
/// answers in bounded time and a batch's bookkeeping stays bounded in memory.
pub(super) const MAX_BATCH: usize = 4096;

/// Requests that may wait for the writer before senders are made to wait too.
pub(super) const QUEUE_DEPTH: usize = 2 * MAX_BATCH;

/// Source of `received_at` (unix seconds); replaceable so tests can age messages.
pub(super) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A change asked of the writer, with where to send its answer.
pub(super) enum Request {
    Enqueue {
        to: Recipient,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Ack {
        owner: Recipient,
        ids: Vec<u64>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Expire {
        now: u64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    BlobBegin {
        id: BlobId,
        uploader: Recipient,
        to: Recipient,
        size: u64,
        quota: BlobQuota,
        reply: oneshot::Sender<Result<BlobBegun, StoreError>>,
    },
    BlobUpdate {
        id: BlobId,
        have: u64,
        complete: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    BlobDelete {
        ids: Vec<BlobId>,
        owner: Option<Recipient>,
        updated_at_or_before: Option<u64>,
        reply: oneshot::Sender<Result<Vec<BlobId>, StoreError>>,
    },
}

impl Request {
    /// Answers a request that was never applied because its batch failed.
    fn fail(self, err: &StoreError) {
        // A caller that stopped waiting has nobody to tell; ignore send errors.
        fn tell<T>(reply: oneshot::Sender<Result<T, StoreError>>, err: &StoreError) {
            drop(reply.send(Err(err.clone())));
        }
        match self {
            Request::Enqueue { reply, .. } => tell(reply, err),
            Request::Ack { reply, .. } | Request::Expire { reply, .. } => tell(reply, err),
            Request::BlobBegin { reply, .. } => tell(reply, err),
            Request::BlobUpdate { reply, .. } => tell(reply, err),
            Request::BlobDelete { reply, .. } => tell(reply, err),
        }
    }
}

/// Sends one request's answer, given the batch's failure if it had one.
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A request that has been applied, holding its answer until the commit.
struct Answer(Reply);

impl Answer {
    fn new<T: Send + 'static>(
        reply: oneshot::Sender<Result<T, StoreError>>,
        own: Result<T, StoreError>,
    ) -> Self {
        Self(Box::new(move |failure| {
            let answer = match failure {
                Some(err) => Err(err.clone()),
                None => own,
            };
            drop(reply.send(answer));
        }))
    }

    /// Sends the request's own result, or the batch's error if the batch was
    /// not committed (then nothing of it was stored, whatever it said).
    fn send(self, batch_failure: Option<&StoreError>) {
        (self.0)(batch_failure)
    }
}

/// The state owned by the writer thread.
pub(super) struct Writer {
    /// The database, which this thread reopens after a failed batch.
    pub(super) db: super::DbSlot,
    /// Its file.
    pub(super) path: std::path::PathBuf,
    /// The reserve of free disk space that new data must leave.
    pub(super) space: crate::space::Space,
    pub(super) limits: StoreLimits,
    /// The id the next enqueue gets.
    pub(super) next_id: u64,
    pub(super) clock: Clock,
    pub(super) commits: Arc<AtomicU64>,
}

impl Writer {
    /// Serves requests until every sender is gone (the store was closed or
    /// dropped), so everything queued before that is committed before it returns.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch);
        }
        tracing::debug!("mailbox store writer stopped");
    }

    fn run_batch(&mut self, batch: &mut Vec<Request>) {
        let size = batch.len();
        let mut answers = Vec::with_capacity(size);
        let mut unapplied = batch.drain(..);
        match self.apply_and_commit(&mut unapplied, &mut answers) {
            Ok(committed) => {
                if committed {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                }
                tracing::trace!(size, committed, "mailbox store batch done");
                for answer in answers {
                    answer.send(None);
                }
            }
            Err(err) => {
                tracing::error!(size, error = %err, "mailbox store batch rolled back");
                for answer in answers {
                    answer.send(Some(&err));
                }
                for request in unapplied {
                    request.fail(&err);
                }
                // After an I/O error redb refuses everything until reopened;
                // a database that did not fail is reopened as it was.
                if let Err(e) = self.reopen() {
                    tracing::error!(error = %e, "mailbox store not reopened yet; retrying at the next write");
                }
            }
        }
    }

    /// The open database, reopening it first if a previous reopen failed.
    fn database(&mut self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = super::slot_lock(&self.db).clone() {
            return Ok(db);
        }
        self.reopen()?;
        super::slot_lock(&self.db)
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Closes the database (once the readers still using it are done) and
    /// opens it again, which repairs it; committed data is untouched.
    fn reopen(&mut self) -> Result<(), StoreError> {
        const READERS_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
        let taken = super::slot_lock(&self.db).take();
        if let Some(mut db) = taken {
            let deadline = std::time::Instant::now() + READERS_GRACE;
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if std::time::Instant::now() < deadline => {
                        db = still_shared;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(still_shared) => {
                        *super::slot_lock(&self.db) = Some(still_shared);
                        return Err(StoreError::Database(
                            "readers held the database for too long to reopen it".into(),
                        ));
                    }
                }
            }
        }
        let db = Database::create(&self.path)?;
        let next_id = super::prepare(&db)?;
        // Ids handed out by a commit that failed are skipped, never reused.
        self.next_id = self.next_id.max(next_id);
        *super::slot_lock(&self.db) = Some(Arc::new(db));
        tracing::info!("mailbox store reopened");
        Ok(())
    }

    /// Applies requests from `requests` into one transaction and commits it.
    /// Returns whether anything was committed (a batch that changed nothing is
    /// not committed: no fsync for a refused enqueue or an idle expiry sweep).
    /// On error, the requests not yet taken from `requests` are left there.
    fn apply_and_commit(
        &mut self,
        requests: &mut impl Iterator<Item = Request>,
        answers: &mut Vec<Answer>,
    ) -> Result<bool, StoreError> {
        let db = self.database()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let now = (self.clock)();
        let mut batch = Batch::open(&txn, &self.limits, self.next_id, now)?;
        // Checked once per batch, and only if it brings new data: a full disk
        // refuses what would grow the store, never what shrinks it.
        let mut room: Option<Result<(), StoreError>> = None;
        let mut has_room = |space: &crate::space::Space| {
            room.get_or_insert_with(|| space.check(0).map_err(StoreError::OutOfSpace))
                .clone()
        };
        for request in requests {
            let (answer, fatal) = match request {
                Request::Enqueue {
                    to,
                    envelope,
                    reply,
                } => match has_room(&self.space) {
                    Err(full) => settle(Ok(Err(full)), reply),
                    Ok(()) => settle(batch.enqueue(to, &envelope), reply),
                },
                Request::Ack { owner, ids, reply } => settle(batch.ack(owner, ids), reply),
                Request::Expire { now, reply } => settle(batch.expire(now), reply),
                Request::BlobBegin {
                    id,
                    uploader,
                    to,
                    size,
                    quota,
                    reply,
                } => match has_room(&self.space) {
                    Err(full) => settle(Ok(Err(full)), reply),
                    Ok(()) => settle(batch.blob_begin(id, uploader, to, size, quota), reply),
                },
                Request::BlobUpdate {
                    id,
                    have,
                    complete,
                    reply,
                } => settle(batch.blob_update(id, have, complete), reply),
                Request::BlobDelete {
                    ids,
                    owner,
                    updated_at_or_before,
                    reply,
                } => settle(batch.blob_delete(ids, owner, updated_at_or_before), reply),
            };
            answers.push(answer);
            if let Some(err) = fatal {
                return Err(err);
            }
        }
        let (changed, next_id) = batch.finish()?;
        if !changed {
            txn.abort()?;
            return Ok(false);
        }
        // Taken before committing: a commit that reports failure may still
        // have reached the disk, and an id must never be handed out twice.
        // Skipped ids are harmless; ids only have to increase.
        self.next_id = next_id;
        txn.commit()?;
        Ok(true)
    }
}

/// A database error, which ends the batch it happens in. Boxed: redb's error
/// is large, and every step of a batch returns one.
pub(super) struct Fatal(Box<redb::Error>);

macro_rules! fatal_from {
    ($($ty:ty),*) => {$(
        impl From<$ty> for Fatal {
            fn from(err: $ty) -> Self {
                Self(Box::new(err.into()))
            }
        }
    )*};
}
fatal_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

impl From<Fatal> for StoreError {
    fn from(err: Fatal) -> Self {
        Self::from(*err.0)
    }
}

/// Splits a step's result into the caller's answer and, for a database error,
/// the error that must end the batch (the caller is then told that error too).
fn settle<T: Send + 'static>(
    step: Result<Result<T, StoreError>, Fatal>,
    reply: oneshot::Sender<Result<T, StoreError>>,
) -> (Answer, Option<StoreError>) {
    match step {
        Ok(own) => (Answer::new(reply, own), None),
        Err(err) => {
            let err = StoreError::from(err);
            (Answer::new(reply, Err(err.clone())), Some(err))
        }
    }
}

/// A mailbox's usage as the batch sees it; written back once, at the end.
struct Cached {
    usage: Usage,
    dirty: bool,
}

/// The tables and pending bookkeeping of one write transaction.
///
/// Each step returns `Ok(Err(_))` for a failure of that request alone (it has
/// then changed nothing) and `Err(_)` for a database error, which ends the batch.
struct Batch<'t> {
    messages: Table<'t, (Recipient, u64), &'static [u8]>,
    expiry: Table<'t, u64, &'static [u8]>,
    usage_table: Table<'t, Recipient, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    blobs: Table<'t, BlobId, &'static [u8]>,
    blob_usage_table: Table<'t, Recipient, &'static [u8]>,
    usage: HashMap<Recipient, Cached>,
    /// Blob usage as the batch sees it, and whether it must be written back.
    blob_usage: HashMap<Recipient, (BlobUsage, bool)>,
    limits: &'t StoreLimits,
    first_id: u64,
    next_id: u64,
    now: u64,
    changed: bool,
}

impl<'t> Batch<'t> {
    fn open(
        txn: &'t WriteTransaction,
        limits: &'t StoreLimits,
        next_id: u64,
        now: u64,
    ) -> Result<Self, Fatal> {
        Ok(Self {
            messages: txn.open_table(MESSAGES)?,
            expiry: txn.open_table(EXPIRY)?,
            usage_table: txn.open_table(USAGE)?,
            meta: txn.open_table(META)?,
            blobs: txn.open_table(BLOBS)?,
            blob_usage_table: txn.open_table(BLOB_USAGE)?,
            usage: HashMap::new(),
            blob_usage: HashMap::new(),
            limits,
            first_id: next_id,
            next_id,
            now,
            changed: false,
        })
    }

    fn usage(&mut self, recipient: &Recipient) -> Result<Usage, Fatal> {
        if let Some(cached) = self.usage.get(recipient) {
            return Ok(cached.usage);
        }
        let stored = self
            .usage_table
            .get(recipient)?
            .map(|guard| Usage::decode(guard.value()));
        let (usage, dirty) = match stored {
            None => (Usage::default(), false),
            Some(Ok(usage)) => (usage, false),
            // The row is derived data: rebuild it rather than lock the mailbox.
            Some(Err(_)) => {
                tracing::warn!("rebuilding a damaged mailbox usage row");
                self.changed = true;
                (recount(&self.messages, recipient)?, true)
            }
        };
        self.usage.insert(*recipient, Cached { usage, dirty });
        Ok(usage)
    }

    fn set_usage(&mut self, recipient: Recipient, usage: Usage) {
        self.usage.insert(recipient, Cached { usage, dirty: true });
        self.changed = true;
    }

    fn enqueue(
        &mut self,
        to: Recipient,
        envelope: &[u8],
    ) -> Result<Result<u64, StoreError>, Fatal> {
        let len = u64::try_from(envelope.len()).unwrap_or(u64::MAX);
        let usage = self.usage(&to)?;
        if usage.messages.saturating_add(1) > self.limits.max_messages_per_recipient
            || usage.bytes.saturating_add(len) > self.limits.max_bytes_per_recipient
        {
            return Ok(Err(StoreError::QuotaExceeded {
                messages: usage.messages,
                bytes: usage.bytes,
            }));
        }
        let id = self.next_id;
        // 2^64 ids cannot be used up by arrivals; reaching the end means the
        // stored counter was damaged.
        let Some(next_id) = id.checked_add(1) else {
            tracing::error!("mailbox id counter is at its maximum");
            return Ok(Err(StoreError::Corrupt));
        };
        self.messages
            .insert((to, id), encode_message(self.now, envelope).as_slice())?;
        let entry = ExpiryEntry {
            recipient: to,
            received_at: self.now,
        };
        self.expiry.insert(id, entry.encode().as_slice())?;
        self.next_id = next_id;
        self.set_usage(
            to,
            Usage {
                messages: usage.messages.saturating_add(1),
                bytes: usage.bytes.saturating_add(len),
            },
        );
        Ok(Ok(id))
    }

    fn ack(
        &mut self,
        owner: Recipient,
        mut ids: Vec<u64>,
    ) -> Result<Result<usize, StoreError>, Fatal> {
        ids.sort_unstable();
        ids.dedup();
        let mut usage = self.usage(&owner)?;
        let mut removed = 0;
        for id in ids {
            // Keyed by owner: another mailbox's id is simply not found here.
            let Some(len) = self.remove_message(owner, id)? else {
                continue;
            };
            self.expiry.remove(id)?;
            usage = shrink(usage, len);
            removed += 1;
        }
        if removed > 0 {
            self.set_usage(owner, usage);
        }
        Ok(Ok(removed))
    }

    fn expire(&mut self, now: u64) -> Result<Result<usize, StoreError>, Fatal> {
        let max_age = self.limits.expiry.as_secs();
        let mut due = Vec::new();
        let mut damaged = Vec::new();
        for item in self.expiry.iter()? {
            let (id, value) = item?;
            let id = id.value();
            match ExpiryEntry::decode(value.value()) {
                // Ids follow arrival, so everything after a young message is
                // young too. (A clock set back can make a later message look
                // older; stopping here only delays its expiry, never hastens one.)
                Ok(entry) if entry.received_at.saturating_add(max_age) > now => break,
                Ok(entry) => due.push((id, entry.recipient)),
                // The message cannot be found from a damaged entry. Dropping the
                // entry keeps expiry moving; the message stays until acknowledged.
                Err(_) => damaged.push(id),
            }
        }
        for id in damaged {
            tracing::error!(id, "dropping a damaged expiry entry");
            self.expiry.remove(id)?;
            self.changed = true;
        }
        // Usage is read before anything is removed, so a damaged row rebuilt
        // from the messages is not then shrunk a second time.
        for &(_, recipient) in &due {
            self.usage(&recipient)?;
        }
        let mut shrunk: HashMap<Recipient, (u64, u64)> = HashMap::new();
        let mut removed = 0;
        for &(id, recipient) in &due {
            self.expiry.remove(id)?;
            self.changed = true;
            if let Some(len) = self.remove_message(recipient, id)? {
                let total = shrunk.entry(recipient).or_default();
                total.0 += 1;
                total.1 = total.1.saturating_add(len);
                removed += 1;
            }
        }
        for (recipient, (messages, bytes)) in shrunk {
            let usage = self.usage(&recipient)?;
            let usage = Usage {
                messages: usage.messages.saturating_sub(messages),
                bytes: usage.bytes.saturating_sub(bytes),
            };
            self.set_usage(recipient, usage);
        }
        Ok(Ok(removed))
    }

    /// Removes one message; returns its envelope length if it was there.
    fn remove_message(&mut self, owner: Recipient, id: u64) -> Result<Option<u64>, Fatal> {
        let Some(old) = self.messages.remove((owner, id))? else {
            return Ok(None);
        };
        self.changed = true;
        let len = envelope_len(old.value()).unwrap_or_else(|| {
            tracing::error!(id, "deleting a damaged message");
            0
        });
        Ok(Some(len))
    }

    fn blob_usage(&mut self, recipient: &Recipient) -> Result<BlobUsage, Fatal> {
        if let Some((usage, _)) = self.blob_usage.get(recipient) {
            return Ok(*usage);
        }
        let stored = self
            .blob_usage_table
            .get(recipient)?
            .map(|guard| BlobUsage::decode(guard.value()));
        let (usage, dirty) = match stored {
            None => (BlobUsage::default(), false),
            Some(Ok(usage)) => (usage, false),
            Some(Err(_)) => {
                tracing::warn!("rebuilding a damaged blob usage row");
                self.changed = true;
                (recount_blobs(&self.blobs, recipient)?, true)
            }
        };
        self.blob_usage.insert(*recipient, (usage, dirty));
        Ok(usage)
    }

    fn set_blob_usage(&mut self, recipient: Recipient, usage: BlobUsage) {
        self.blob_usage.insert(recipient, (usage, true));
        self.changed = true;
    }

    /// Reads one blob row; a damaged row is reported as the request's own
    /// failure (logged by the codec), so it cannot fail a whole batch.
    fn blob(&self, id: &BlobId) -> Result<Option<Result<BlobMeta, StoreError>>, Fatal> {
        Ok(self.blobs.get(id)?.map(|guard| decode_blob(guard.value())))
    }

    fn put_blob(&mut self, id: &BlobId, meta: &BlobMeta) -> Result<(), Fatal> {
        self.blobs.insert(id, encode_blob(meta).as_slice())?;
        self.changed = true;
        Ok(())
    }

    fn blob_begin(
        &mut self,
        id: BlobId,
        uploader: Recipient,
        to: Recipient,
        size: u64,
        quota: BlobQuota,
    ) -> Result<Result<BlobBegun, StoreError>, Fatal> {
        let (uploader, to) = (PublicKey::from_bytes(uploader), PublicKey::from_bytes(to));
        match self.blob(&id)? {
            Some(Err(err)) => return Ok(Err(err)),
            Some(Ok(mut meta)) => {
                if meta.uploader != uploader || meta.recipient != to || meta.size != size {
                    return Ok(Err(StoreError::BlobConflict));
                }
                // Resuming is activity: an upload that keeps coming back is not
                // abandoned. A complete blob's age counts from its completion.
                if !meta.complete {
                    meta.updated = self.now;
                    self.put_blob(&id, &meta)?;
                }
                return Ok(Ok(BlobBegun::Existing(meta)));
            }
            None => {}
        }
        if size > MAX_FILE_SIZE {
            return Ok(Err(StoreError::BlobTooLarge { size }));
        }
        let usage = self.blob_usage(to.as_bytes())?;
        let reserved = sealed_len(size);
        if usage.files.saturating_add(1) > quota.max_files
            || usage.bytes.saturating_add(reserved) > quota.max_bytes
        {
            return Ok(Err(StoreError::BlobQuotaExceeded {
                files: usage.files,
                bytes: usage.bytes,
            }));
        }
        let meta = BlobMeta {
            recipient: to,
            uploader,
            size,
            have: 0,
            complete: false,
            created: self.now,
            updated: self.now,
        };
        self.put_blob(&id, &meta)?;
        self.set_blob_usage(
            *to.as_bytes(),
            BlobUsage {
                files: usage.files.saturating_add(1),
                bytes: usage.bytes.saturating_add(reserved),
            },
        );
        Ok(Ok(BlobBegun::Created(meta)))
    }

    fn blob_update(
        &mut self,
        id: BlobId,
        have: u64,
        complete: bool,
    ) -> Result<Result<(), StoreError>, Fatal> {
        let mut meta = match self.blob(&id)? {
            None => return Ok(Err(StoreError::NoSuchBlob)),
            Some(Err(err)) => return Ok(Err(err)),
            Some(Ok(meta)) => meta,
        };
        let chunks = chunk_count(meta.size);
        if meta.complete || have > chunks || (complete && have != chunks) {
            tracing::error!(have, complete, "refusing an impossible blob update");
            return Ok(Err(StoreError::InvalidBlobUpdate));
        }
        meta.have = have;
        meta.complete = complete;
        meta.updated = self.now;
        self.put_blob(&id, &meta)?;
        Ok(Ok(()))
    }

    fn blob_delete(
        &mut self,
        ids: Vec<BlobId>,
        owner: Option<Recipient>,
        updated_at_or_before: Option<u64>,
    ) -> Result<Result<Vec<BlobId>, StoreError>, Fatal> {
        let mut deleted = Vec::new();
        for id in ids {
            let meta = match self.blob(&id)? {
                None => continue,
                Some(Ok(meta)) => Some(meta),
                // Nobody can be shown to own a damaged row, so only expiry
                // (which asks for no owner) removes it; its usage cannot be
                // given back, since its recipient is unknown.
                Some(Err(_)) if owner.is_none() => None,
                Some(Err(_)) => continue,
            };
            if let Some(meta) = meta {
                if owner.is_some_and(|owner| owner != *meta.recipient.as_bytes())
                    || updated_at_or_before.is_some_and(|cutoff| meta.updated > cutoff)
                {
                    continue;
                }
                let recipient = *meta.recipient.as_bytes();
                let usage = self.blob_usage(&recipient)?;
                let freed = sealed_len(meta.size);
                if usage.files == 0 || usage.bytes < freed {
                    tracing::warn!("blob usage was lower than its blobs; clamping at zero");
                }
                self.set_blob_usage(
                    recipient,
                    BlobUsage {
                        files: usage.files.saturating_sub(1),
                        bytes: usage.bytes.saturating_sub(freed),
                    },
                );
            } else {
                tracing::error!("deleting a damaged blob row");
            }
            self.blobs.remove(&id)?;
            self.changed = true;
            deleted.push(id);
        }
        Ok(Ok(deleted))
    }

    /// Writes back changed usage rows and the id counter. Returns whether the
    /// transaction changed anything, and the next id to adopt if it commits.
    fn finish(mut self) -> Result<(bool, u64), Fatal> {
        for (recipient, cached) in &self.usage {
            if !cached.dirty {
                continue;
            }
            if cached.usage.messages == 0 {
                self.usage_table.remove(recipient)?;
            } else {
                self.usage_table
                    .insert(recipient, cached.usage.encode().as_slice())?;
            }
        }
        for (recipient, (usage, dirty)) in &self.blob_usage {
            if !dirty {
                continue;
            }
            if usage.files == 0 {
                self.blob_usage_table.remove(recipient)?;
            } else {
                self.blob_usage_table
                    .insert(recipient, usage.encode().as_slice())?;
            }
        }
        if self.next_id != self.first_id {
            self.meta
                .insert(META_NEXT_ID, self.next_id.to_be_bytes().as_slice())?;
        }
        Ok((self.changed, self.next_id))
    }
}

/// Takes a removed message off a mailbox's usage.
fn shrink(usage: Usage, len: u64) -> Usage {
    if usage.messages == 0 || usage.bytes < len {
        tracing::warn!("mailbox usage was lower than its messages; clamping at zero");
    }
    Usage {
        messages: usage.messages.saturating_sub(1),
        bytes: usage.bytes.saturating_sub(len),
    }
}

/// The envelope length of a stored message, or `None` if the value is damaged.
/// Callers deleting or counting such a message go on with a length of zero:
/// a deletion was asked for, and the byte count is only a quota.
fn envelope_len(value: &[u8]) -> Option<u64> {
    let (_, envelope) = decode_message(value).ok()?;
    Some(u64::try_from(envelope.len()).unwrap_or(u64::MAX))
}

/// Counts a mailbox from its messages, for when its usage row is damaged.
pub(super) fn recount(
    messages: &impl ReadableTable<(Recipient, u64), &'static [u8]>,
    recipient: &Recipient,
) -> Result<Usage, Fatal> {
    let mut usage = Usage::default();
    for item in messages.range((*recipient, 0)..=(*recipient, u64::MAX))? {
        let (_, value) = item?;
        usage.messages += 1;
        usage.bytes = usage
            .bytes
            .saturating_add(envelope_len(value.value()).unwrap_or(0));
    }
    Ok(usage)
}

/// Counts a recipient's blobs, for when its usage row is damaged. Blobs are
/// keyed by id, so this reads them all: it happens only after damage.
pub(super) fn recount_blobs(
    blobs: &impl ReadableTable<BlobId, &'static [u8]>,
    recipient: &Recipient,
) -> Result<BlobUsage, Fatal> {
    let mut usage = BlobUsage::default();
    for item in blobs.iter()? {
        let (_, value) = item?;
        if let Ok(meta) = decode_blob(value.value()) {
            if meta.recipient.as_bytes() == recipient {
                usage.files += 1;
                usage.bytes = usage.bytes.saturating_add(sealed_len(meta.size));
            }
        }
    }
    Ok(usage)
}
