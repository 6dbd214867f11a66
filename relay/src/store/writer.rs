//! The writer thread: every change to the store goes through it, in batches.
//!
//! A durable commit costs an fsync, and an fsync costs the same whether it
//! carries one envelope or thousands. So one thread owns all write transactions
//! (redb allows one at a time anyway, and blocks while waiting for it): it takes
//! every request already queued, applies them all in one transaction, and hands
//! the transaction to a second thread that commits it with
//! [`Durability::Immediate`] and only then answers each caller. Many senders
//! thus share one fsync, and no caller hears "stored" before it is.
//!
//! While a commit is in progress the writer does not sit idle: it *admits*
//! the envelopes that arrive, checking their mailbox's quota against usage it
//! keeps in memory (exact: it alone changes usage), giving them their id and
//! handing them to live recipients (`live`) at once, so chat delivery never
//! waits for an fsync. They are written by the next transaction, which begins
//! as soon as the commit ends. Other requests wait for that transaction, in
//! arrival order, so an `Ack` of an admitted envelope comes after its insert.
//!
//! Commits are paced: a batch starts at most once per [`COMMIT_INTERVAL`]
//! unless it is full. A lone message finds the last commit long past and is
//! written at once; under load, requests gather for up to that interval, so
//! a commit (redb's page writes, checksums and an fsync, the same cost for
//! one envelope as for thousands) carries many. Nobody's delivery waits for
//! it, only the sender's `Stored`.
//!
//! An `Ack` of an envelope that is admitted but not yet written takes it out
//! of the next transaction instead of having it inserted and deleted again:
//! the recipient has it, so the relay never needs it on disk. Its sender's
//! `Stored` still comes with that transaction's commit, and the id counter
//! that transaction writes covers its id, so no id is ever given twice.
//!
//! Quotas and the storage budget are checked here, where usage is exact: every
//! change to it goes through this thread. Envelope bytes, the stored bytes of
//! blobs and the holds of uploads in progress (`holds`, in this thread's
//! memory) are summed into the relay-wide total that the budget bounds; the
//! sums are read from the tables when the store opens and again after a failed
//! batch, whose changes they would otherwise still count.
//!
//! A request that fails on its own (a full mailbox) is answered with its error
//! and changes nothing, so it cannot spoil the batch. A database error fails
//! the whole batch: the transaction is dropped (rolled back) and every request
//! in it is told, since none of them was stored; so are envelopes admitted
//! meanwhile, whose usage was counted on top of the failed batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use sotto_crypto::file::{chunk_count, sealed_len, MAX_FILE_SIZE, SEALED_CHUNK_LEN};
use sotto_keys::PublicKey;

use super::codec::{
    decode_blob, decode_message, encode_blob, encode_message, BlobId, BlobUsage, ExpiryEntry,
    Recipient, Usage, BLOBS, BLOB_SHARES, BLOB_USAGE, EXPIRY, MESSAGES, META, META_NEXT_ID, USAGE,
};
use super::holds::{Hold, Holds, SourceAddr};
use super::live::Feeds;
use super::{
    sealed_prefix_len, BlobMeta, BlobQuota, QuotaOf, StoreError, StoreLimits, Stored, UploadsFrom,
    Window,
};
use crate::space::OutOfSpace;

/// Most requests applied in one transaction, so a flood of writers still gets
/// answers in bounded time and a batch's bookkeeping stays bounded in memory.
/// Envelopes admitted during a commit count too, so at most two batches of
/// ids are ever handed out without being committed.
pub(super) const MAX_BATCH: usize = 4096;

/// The least time from the start of one batch to the start of the next,
/// unless the next is full (see the module docs).
///
/// 4 ms: under the loaded chat bench (100 pairs, 10,000 msgs/s on two cores)
/// 1 ms meant a commit per millisecond, each an fsync and two thread
/// switches, and the relay's CPU went to those instead of to delivery; at
/// 4 ms a quarter as many commits carry the same envelopes, and a sender's
/// `Stored` waits at most that much longer under load (docs/PERFORMANCE.md).
pub(super) const COMMIT_INTERVAL: Duration = Duration::from_millis(4);

/// Requests that may wait for the writer before senders are made to wait too.
pub(super) const QUEUE_DEPTH: usize = 2 * MAX_BATCH;

/// Mailboxes whose usage is kept in memory between batches; beyond this,
/// those not waiting to be written are forgotten (and read again if needed).
const USAGE_CACHE: usize = 1 << 16;

/// Source of `received_at` (unix seconds); replaceable so tests can age messages.
pub(super) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A change asked of the writer, with where to send its answer.
pub(super) enum Request {
    /// An envelope to store; admitted as soon as the writer sees it.
    Enqueue {
        to: Recipient,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Anything else, applied in the next transaction.
    Change(Change),
}

/// The requests applied inside a transaction.
pub(super) enum Change {
    Ack {
        owner: Recipient,
        ids: Vec<u64>,
        /// Envelopes of `ids` taken out before they were written.
        cancelled: usize,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Expire {
        now: u64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    BlobBegin {
        begin: BlobBegin,
        reply: oneshot::Sender<Result<Begun, StoreError>>,
    },
    BlobUpdate {
        id: BlobId,
        have: u64,
        complete: bool,
        /// Answered with where the upload's window now ends.
        reply: oneshot::Sender<Result<Window, StoreError>>,
    },
    BlobDelete {
        ids: Vec<BlobId>,
        owner: Option<Recipient>,
        updated_at_or_before: Option<u64>,
        reply: oneshot::Sender<Result<Vec<BlobId>, StoreError>>,
    },
    /// The owner of `owner`'s mailbox registers its delivery token's hash.
    SetToken {
        owner: Recipient,
        hash: sotto_crypto::delivery::TokenHash,
        first_contact: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// An upload beginning or resuming, as the writer is asked for it.
pub(super) struct BlobBegin {
    pub(super) id: BlobId,
    pub(super) uploader: Recipient,
    pub(super) to: Recipient,
    pub(super) size: u64,
    pub(super) quota: BlobQuota,
    pub(super) source: SourceAddr,
    /// The upload's token: no hold is made for an upload already gone.
    pub(super) alive: Weak<()>,
}

/// What [`Change::BlobBegin`] is answered with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Begun {
    pub(super) meta: BlobMeta,
    pub(super) created: bool,
    pub(super) allowed: u64,
}

/// Every byte the relay stores, by kind; holds are counted apart (`Holds`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    /// Envelope bytes pending in every mailbox (admitted ones included).
    envelopes: u64,
    /// Sealed bytes the blobs have stored.
    blobs: u64,
}

/// An envelope with its id, counted in its mailbox's usage and already
/// handed to live recipients, waiting for the next transaction to write it.
struct Admitted {
    to: Recipient,
    id: u64,
    received_at: u64,
    /// The stored value (`codec::encode_message`).
    value: Vec<u8>,
    /// Acknowledged by its recipient before it was written: it will not be.
    cancelled: bool,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// What the next transaction will apply, in arrival order.
enum Next {
    Admitted(Admitted),
    Change(Change),
}

impl Next {
    /// Answers a request that was never applied because its batch failed.
    fn fail(self, err: &StoreError) {
        // A caller that stopped waiting has nobody to tell; ignore send errors.
        fn tell<T>(reply: oneshot::Sender<Result<T, StoreError>>, err: &StoreError) {
            drop(reply.send(Err(err.clone())));
        }
        match self {
            Next::Admitted(a) => tell(a.reply, err),
            Next::Change(Change::Ack { reply, .. } | Change::Expire { reply, .. }) => {
                tell(reply, err)
            }
            Next::Change(Change::BlobBegin { reply, .. }) => tell(reply, err),
            Next::Change(Change::BlobUpdate { reply, .. }) => tell(reply, err),
            Next::Change(Change::BlobDelete { reply, .. }) => tell(reply, err),
            Next::Change(Change::SetToken { reply, .. }) => tell(reply, err),
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

/// A transaction handed to the committing thread.
struct Job {
    /// `None` when the batch changed nothing (it was aborted, not committed).
    txn: Option<WriteTransaction>,
    answers: Vec<Answer>,
    /// The first id not in this batch: everything below is settled after it.
    next_id: u64,
    /// Envelopes this batch writes, and those it leaves out because their
    /// recipient acknowledged them first.
    written: u64,
    taken_out: u64,
    done: oneshot::Sender<bool>,
}

/// The state owned by the writer thread.
pub(super) struct Writer {
    /// The database, which this thread reopens after a failed batch.
    pub(super) db: super::DbSlot,
    /// Its file.
    pub(super) path: std::path::PathBuf,
    /// The reserve of free disk space that new data must leave.
    pub(super) space: crate::space::Space,
    /// Whether the disk had room: checked once per batch and for the
    /// admissions during its commit (`None`: to be checked).
    pub(super) room: Option<Result<(), crate::space::OutOfSpace>>,
    pub(super) limits: StoreLimits,
    /// The id the next enqueue gets.
    pub(super) next_id: u64,
    pub(super) clock: Clock,
    pub(super) counters: Arc<Counters>,
    /// Live recipients, handed each envelope as it gets its id.
    pub(super) feeds: Arc<Feeds>,
    /// Mailbox usage including every applied or admitted change; `dirty`
    /// entries are still to be written by the next transaction.
    pub(super) usage: HashMap<Recipient, Cached>,
    /// The id counter as last written to `meta`.
    pub(super) written_next_id: u64,
    /// The least time between the starts of two batches.
    pub(super) interval: Duration,
    /// Where each envelope admitted for the next batch is in it, by id.
    pub(super) unwritten: HashMap<u64, usize>,
    /// The room uploads in progress hold beyond what they have stored.
    pub(super) holds: Holds,
    /// Every byte stored, as committed plus what is admitted or applied
    /// since; `None` until read from the tables (at start, and after a
    /// failed batch).
    pub(super) totals: Option<Totals>,
    /// The relay-wide storage budget (`u64::MAX`: none).
    pub(super) budget: u64,
}

impl Writer {
    /// Serves requests until every sender is gone (the store was closed or
    /// dropped), so everything queued before that is committed before it returns.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(err) => {
                tracing::error!(error = %err, "mailbox store writer cannot wait for commits");
                return;
            }
        };
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let (counters, feeds) = (Arc::clone(&self.counters), Arc::clone(&self.feeds));
        let committer = std::thread::Builder::new()
            .name("sotto-store-commit".into())
            .spawn(move || commit_loop(job_rx, &counters, &feeds));
        let committer = match committer {
            Ok(handle) => handle,
            Err(err) => {
                tracing::error!(error = %err, "mailbox store cannot start its commit thread");
                return;
            }
        };
        let mut next: Vec<Next> = Vec::with_capacity(MAX_BATCH);
        let mut committing: Option<oneshot::Receiver<bool>> = None;
        let mut open = true;
        // When the next batch may start (see `COMMIT_INTERVAL`).
        let mut due = Instant::now();
        loop {
            // Gather (admitting envelopes) until no commit is running, there
            // is something to apply, and the batch is due or full.
            while open
                && (committing.is_some()
                    || next.is_empty()
                    || (next.len() < MAX_BATCH && Instant::now() < due))
            {
                let room = next.len() < MAX_BATCH;
                let waiting = committing.is_none() && !next.is_empty();
                let event = runtime.block_on(async {
                    tokio::select! {
                        biased;
                        ok = async {
                            match committing.as_mut() {
                                Some(done) => done.await.unwrap_or(false),
                                None => std::future::pending().await,
                            }
                        }, if committing.is_some() => Event::Committed(ok),
                        r = rx.recv(), if room => Event::Request(r),
                        () = tokio::time::sleep_until(due.into()), if waiting => Event::Due,
                    }
                });
                match event {
                    Event::Committed(ok) => {
                        committing = None;
                        self.after_commit(ok, &mut next);
                    }
                    Event::Request(Some(request)) => self.take(request, &mut next),
                    Event::Request(None) => open = false,
                    Event::Due => {}
                }
            }
            if let Some(done) = committing.take() {
                let ok = runtime.block_on(done).unwrap_or(false);
                self.after_commit(ok, &mut next);
            }
            while next.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => self.take(request, &mut next),
                    Err(_) => break,
                }
            }
            if next.is_empty() {
                if open {
                    continue;
                }
                break;
            }
            due = Instant::now() + self.interval;
            committing = self.run_batch(&mut next, &jobs);
        }
        drop(jobs);
        if committer.join().is_err() {
            tracing::error!("mailbox store commit thread stopped unexpectedly");
        }
        tracing::debug!("mailbox store writer stopped");
    }

    /// Takes a request into the next batch, admitting an envelope at once.
    fn take(&mut self, request: Request, next: &mut Vec<Next>) {
        match request {
            Request::Enqueue {
                to,
                envelope,
                reply,
            } => match self.admit(to, envelope) {
                Ok((id, received_at, value)) => {
                    self.unwritten.insert(id, next.len());
                    next.push(Next::Admitted(Admitted {
                        to,
                        id,
                        received_at,
                        value,
                        cancelled: false,
                        reply,
                    }));
                }
                Err(err) => drop(reply.send(Err(err))),
            },
            Request::Change(Change::Ack {
                owner,
                mut ids,
                cancelled,
                reply,
            }) => {
                let before = ids.len();
                ids.retain(|id| !self.cancel(&owner, *id, next));
                next.push(Next::Change(Change::Ack {
                    owner,
                    cancelled: cancelled + (before - ids.len()),
                    ids,
                    reply,
                }));
            }
            Request::Change(change) => next.push(Next::Change(change)),
        }
    }

    /// Takes `owner`'s envelope `id` out of the next batch if it is waiting
    /// there, unwritten, and gives its quota back; returns whether it did.
    fn cancel(&mut self, owner: &Recipient, id: u64, next: &mut [Next]) -> bool {
        let Some(&at) = self.unwritten.get(&id) else {
            return false;
        };
        let Some(Next::Admitted(admitted)) = next.get_mut(at) else {
            return false;
        };
        // Another recipient's id is not this owner's to acknowledge.
        if admitted.id != id || admitted.to != *owner || admitted.cancelled {
            return false;
        }
        let len = envelope_len(&admitted.value).unwrap_or(0);
        admitted.cancelled = true;
        admitted.value = Vec::new();
        self.unwritten.remove(&id);
        if let Some(cached) = self.usage.get_mut(owner) {
            cached.usage = shrink(cached.usage, len);
            cached.dirty = true;
        }
        if let Some(totals) = &mut self.totals {
            totals.envelopes = totals.envelopes.saturating_sub(len);
        }
        true
    }

    /// Checks the quota, gives the envelope its id, counts it and hands it
    /// to live recipients; returns what the transaction will write.
    fn admit(
        &mut self,
        to: Recipient,
        envelope: Vec<u8>,
    ) -> Result<(u64, u64, Vec<u8>), StoreError> {
        self.has_room()?;
        let len = u64::try_from(envelope.len()).unwrap_or(u64::MAX);
        let usage = self.cached_usage(&to)?;
        if usage.messages.saturating_add(1) > self.limits.max_messages_per_recipient
            || usage.bytes.saturating_add(len) > self.limits.max_bytes_per_recipient
        {
            return Err(StoreError::QuotaExceeded {
                messages: usage.messages,
                bytes: usage.bytes,
            });
        }
        let totals = self.read_totals()?;
        self.holds.collect();
        let used = used(&totals, &self.holds);
        if used.saturating_add(len) > self.budget {
            return Err(StoreError::OutOfSpace(OutOfSpace::Budget {
                used,
                budget: self.budget,
            }));
        }
        let id = self.next_id;
        // 2^64 ids cannot be used up by arrivals; reaching the end means the
        // stored counter was damaged.
        let Some(next_id) = id.checked_add(1) else {
            tracing::error!("mailbox id counter is at its maximum");
            return Err(StoreError::Corrupt);
        };
        self.next_id = next_id;
        self.totals = Some(Totals {
            envelopes: totals.envelopes.saturating_add(len),
            ..totals
        });
        self.usage.insert(
            to,
            Cached {
                usage: Usage {
                    messages: usage.messages.saturating_add(1),
                    bytes: usage.bytes.saturating_add(len),
                },
                dirty: true,
            },
        );
        let received_at = (self.clock)();
        let value = encode_message(received_at, &envelope);
        self.feeds.push(
            &to,
            Stored {
                id,
                received_at,
                envelope,
            },
        );
        Ok((id, received_at, value))
    }

    /// The totals: from memory, or counted from the tables as last committed
    /// (they are forgotten only when no batch is committing, so that is
    /// exact).
    fn read_totals(&mut self) -> Result<Totals, StoreError> {
        if let Some(totals) = self.totals {
            return Ok(totals);
        }
        let txn = self.database()?.begin_read()?;
        let totals = count_totals(&txn.open_table(USAGE)?, &txn.open_table(BLOB_USAGE)?)?;
        self.totals = Some(totals);
        Ok(totals)
    }

    /// A mailbox's usage: from memory, or as last committed. (A mailbox
    /// changed by a batch still committing is always in memory.)
    fn cached_usage(&mut self, recipient: &Recipient) -> Result<Usage, StoreError> {
        if let Some(cached) = self.usage.get(recipient) {
            return Ok(cached.usage);
        }
        let txn = self.database()?.begin_read()?;
        let (usage, dirty) = load_usage(
            &txn.open_table(USAGE)?,
            &txn.open_table(MESSAGES)?,
            recipient,
        )?;
        self.usage.insert(*recipient, Cached { usage, dirty });
        Ok(usage)
    }

    /// After a commit: on failure, forget usage (the batch's changes and
    /// admissions counted on top of them) and fail what was admitted since.
    fn after_commit(&mut self, ok: bool, next: &mut Vec<Next>) {
        // The next admission looks at the disk again.
        self.room = None;
        if ok {
            if self.usage.len() > USAGE_CACHE {
                self.usage.retain(|_, cached| cached.dirty);
            }
            return;
        }
        self.usage.clear();
        self.totals = None;
        let err = StoreError::Database(
            "an earlier write failed; nothing was stored, try again".to_owned(),
        );
        let mut kept = Vec::with_capacity(next.len());
        self.unwritten.clear();
        for item in next.drain(..) {
            match item {
                admitted @ Next::Admitted(_) => admitted.fail(&err),
                change => kept.push(change),
            }
        }
        *next = kept;
        // Ids are never handed out twice, and the counter must be written.
        self.written_next_id = 0;
        self.reopen_after_failure();
    }

    /// Whether the disk has room for new data, checked once per batch.
    fn has_room(&mut self) -> Result<(), StoreError> {
        let space = &self.space;
        self.room
            .get_or_insert_with(|| space.check(0))
            .map_err(StoreError::OutOfSpace)
    }

    /// After an I/O error redb refuses everything until reopened; a database
    /// that did not fail is reopened as it was.
    fn reopen_after_failure(&mut self) {
        if let Err(e) = self.reopen() {
            tracing::error!(error = %e, "mailbox store not reopened yet; retrying at the next write");
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
        // Ids handed out by a batch that failed are skipped, never reused:
        // live recipients may have seen them.
        self.next_id = self.next_id.max(next_id);
        *super::slot_lock(&self.db) = Some(Arc::new(db));
        tracing::info!("mailbox store reopened");
        Ok(())
    }

    /// Applies `next` in one transaction and hands it to the commit thread;
    /// returns what tells when it is committed.
    fn run_batch(
        &mut self,
        next: &mut Vec<Next>,
        jobs: &std::sync::mpsc::Sender<Job>,
    ) -> Option<oneshot::Receiver<bool>> {
        let size = next.len();
        // The disk is checked afresh for this batch and the admissions
        // during its commit.
        self.room = None;
        let mut answers = Vec::with_capacity(size);
        self.unwritten.clear();
        let mut unapplied = next.drain(..);
        match self.apply(&mut unapplied, &mut answers) {
            Ok((txn, counts)) => {
                drop(unapplied);
                let (done, committed) = oneshot::channel();
                let job = Job {
                    txn,
                    answers,
                    next_id: self.next_id,
                    written: counts.0,
                    taken_out: counts.1,
                    done,
                };
                match jobs.send(job) {
                    Ok(()) => Some(committed),
                    Err(std::sync::mpsc::SendError(job)) => {
                        let err = StoreError::Crashed;
                        for answer in job.answers {
                            answer.send(Some(&err));
                        }
                        None
                    }
                }
            }
            Err(err) => {
                tracing::error!(size, error = %err, "mailbox store batch rolled back");
                for item in unapplied {
                    item.fail(&err);
                }
                for answer in answers {
                    answer.send(Some(&err));
                }
                self.usage.clear();
                self.totals = None;
                self.written_next_id = 0;
                self.feeds.settle(self.next_id);
                self.reopen_after_failure();
                None
            }
        }
    }

    /// Applies requests from `requests` into one transaction. Returns it,
    /// or `None` if it changed nothing (then it is not committed: no fsync
    /// for a refused request or an idle expiry sweep). On error, the
    /// requests not yet taken from `requests` are left there.
    fn apply(
        &mut self,
        requests: &mut impl Iterator<Item = Next>,
        answers: &mut Vec<Answer>,
    ) -> Result<(Option<WriteTransaction>, (u64, u64)), StoreError> {
        let db = self.database()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let now = (self.clock)();
        let write_id = (self.next_id != self.written_next_id).then_some(self.next_id);
        // A full disk refuses what would grow the store, never what shrinks it.
        let room = self.has_room();
        // Envelopes written, and taken out before being written.
        let mut counts = (0, 0);
        if self.totals.is_none() {
            let totals = count_totals(&txn.open_table(USAGE)?, &txn.open_table(BLOB_USAGE)?)?;
            self.totals = Some(totals);
        }
        let mut tokens_set = false;
        let changed = {
            let mut batch = Batch::open(
                &txn,
                Books {
                    limits: &self.limits,
                    usage: &mut self.usage,
                    holds: &mut self.holds,
                    totals: self.totals.get_or_insert_with(Totals::default),
                    budget: self.budget,
                },
                now,
            )?;
            for request in requests {
                match &request {
                    Next::Admitted(a) if a.cancelled => counts.1 += 1,
                    Next::Admitted(_) => counts.0 += 1,
                    Next::Change(_) => {}
                }
                let (answer, fatal) = match request {
                    Next::Admitted(a) if a.cancelled => settle(Ok(Ok(a.id)), a.reply),
                    Next::Admitted(a) => {
                        let step = batch.insert(a.to, a.id, a.received_at, &a.value);
                        settle(step.map(|()| Ok(a.id)), a.reply)
                    }
                    Next::Change(Change::Ack {
                        owner,
                        ids,
                        cancelled,
                        reply,
                    }) => settle(
                        batch
                            .ack(owner, ids)
                            .map(|deleted| deleted.map(|n| n + cancelled)),
                        reply,
                    ),
                    Next::Change(Change::Expire { now, reply }) => settle(batch.expire(now), reply),
                    Next::Change(Change::BlobBegin { begin, reply }) => match &room {
                        Err(full) => settle(Ok(Err(full.clone())), reply),
                        Ok(()) => settle(batch.blob_begin(begin), reply),
                    },
                    Next::Change(Change::BlobUpdate {
                        id,
                        have,
                        complete,
                        reply,
                    }) => settle(batch.blob_update(id, have, complete), reply),
                    Next::Change(Change::BlobDelete {
                        ids,
                        owner,
                        updated_at_or_before,
                        reply,
                    }) => settle(batch.blob_delete(ids, owner, updated_at_or_before), reply),
                    Next::Change(Change::SetToken {
                        owner,
                        hash,
                        first_contact,
                        reply,
                    }) => {
                        tokens_set = true;
                        settle(
                            super::tokens::set(&txn, owner, hash, first_contact, now),
                            reply,
                        )
                    }
                };
                answers.push(answer);
                if let Some(err) = fatal {
                    return Err(err);
                }
            }
            // Every envelope of the batch, written or taken out, had an id.
            batch.finish(write_id, counts != (0, 0))? || tokens_set
        };
        if let Some(id) = write_id.filter(|_| changed) {
            self.written_next_id = id;
        }
        if !changed {
            txn.abort()?;
            return Ok((None, counts));
        }
        Ok((Some(txn), counts))
    }
}

/// What the writer waits for.
enum Event {
    Committed(bool),
    Request(Option<Request>),
    /// The pacing interval since the last batch began has passed.
    Due,
}

/// The commit thread: commits each transaction, settles its ids for live
/// feeds, answers its requests, then tells the writer.
fn commit_loop(jobs: std::sync::mpsc::Receiver<Job>, counters: &Counters, feeds: &Feeds) {
    for job in jobs {
        let outcome = match job.txn {
            None => Ok(()),
            Some(txn) => txn.commit().map_err(StoreError::from).map(|()| {
                counters.commits.fetch_add(1, Ordering::Relaxed);
            }),
        };
        if outcome.is_ok() {
            counters.written.fetch_add(job.written, Ordering::Relaxed);
            counters
                .taken_out
                .fetch_add(job.taken_out, Ordering::Relaxed);
        }
        feeds.settle(job.next_id);
        let failure = outcome.as_ref().err();
        if let Some(err) = failure {
            tracing::error!(size = job.answers.len(), error = %err, "mailbox store commit failed");
        } else {
            tracing::trace!(size = job.answers.len(), "mailbox store batch committed");
        }
        for answer in job.answers {
            answer.send(failure);
        }
        let _ = job.done.send(outcome.is_ok());
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

/// What the store has done since it was opened, counted by the commit thread.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) taken_out: AtomicU64,
}

/// A mailbox's usage as the writer sees it; `dirty` until written back.
pub(super) struct Cached {
    usage: Usage,
    dirty: bool,
}

/// The writer's running accounts, which a batch changes in place.
struct Books<'w> {
    limits: &'w StoreLimits,
    usage: &'w mut HashMap<Recipient, Cached>,
    holds: &'w mut Holds,
    totals: &'w mut Totals,
    budget: u64,
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
    shares_table: Table<'t, (Recipient, Recipient), &'static [u8]>,
    usage: &'t mut HashMap<Recipient, Cached>,
    /// Blob usage as the batch sees it, and whether it must be written back.
    blob_usage: HashMap<Recipient, (BlobUsage, bool)>,
    /// The same per (recipient, uploader).
    shares: HashMap<(Recipient, Recipient), (BlobUsage, bool)>,
    holds: &'t mut Holds,
    totals: &'t mut Totals,
    budget: u64,
    limits: &'t StoreLimits,
    now: u64,
    changed: bool,
}

/// How much more room a quota (or the budget) leaves, and whose it is.
#[derive(Debug, Clone, Copy)]
struct Room {
    bytes: u64,
    /// The refusal for an upload that needs more than `bytes`.
    binding: Binding,
}

#[derive(Debug, Clone, Copy)]
enum Binding {
    Quota { of: QuotaOf, files: u64, bytes: u64 },
    Budget { used: u64, budget: u64 },
}

impl Binding {
    fn refusal(self) -> StoreError {
        match self {
            Binding::Quota { of, files, bytes } => {
                StoreError::BlobQuotaExceeded { of, files, bytes }
            }
            Binding::Budget { used, budget } => {
                StoreError::OutOfSpace(OutOfSpace::Budget { used, budget })
            }
        }
    }
}

/// Every byte stored or held, as the budget counts it.
fn used(totals: &Totals, holds: &Holds) -> u64 {
    totals
        .envelopes
        .saturating_add(totals.blobs)
        .saturating_add(holds.total())
}

impl<'t> Batch<'t> {
    fn open(txn: &'t WriteTransaction, books: Books<'t>, now: u64) -> Result<Self, Fatal> {
        let Books {
            limits,
            usage,
            holds,
            totals,
            budget,
        } = books;
        // Uploads that ended since the last batch leave their room to this one.
        holds.collect();
        Ok(Self {
            messages: txn.open_table(MESSAGES)?,
            expiry: txn.open_table(EXPIRY)?,
            usage_table: txn.open_table(USAGE)?,
            meta: txn.open_table(META)?,
            blobs: txn.open_table(BLOBS)?,
            blob_usage_table: txn.open_table(BLOB_USAGE)?,
            shares_table: txn.open_table(BLOB_SHARES)?,
            usage,
            blob_usage: HashMap::new(),
            shares: HashMap::new(),
            holds,
            totals,
            budget,
            limits,
            now,
            changed: false,
        })
    }

    fn usage(&mut self, recipient: &Recipient) -> Result<Usage, Fatal> {
        if let Some(cached) = self.usage.get(recipient) {
            return Ok(cached.usage);
        }
        let (usage, dirty) = load_usage(&self.usage_table, &self.messages, recipient)?;
        // A rebuilt row is written back.
        self.changed |= dirty;
        self.usage.insert(*recipient, Cached { usage, dirty });
        Ok(usage)
    }

    fn set_usage(&mut self, recipient: Recipient, usage: Usage) {
        self.usage.insert(recipient, Cached { usage, dirty: true });
        self.changed = true;
    }

    /// Writes an admitted envelope (its usage was counted when admitted).
    fn insert(
        &mut self,
        to: Recipient,
        id: u64,
        received_at: u64,
        value: &[u8],
    ) -> Result<(), Fatal> {
        self.messages.insert((to, id), value)?;
        let entry = ExpiryEntry {
            recipient: to,
            received_at,
        };
        self.expiry.insert(id, entry.encode().as_slice())?;
        self.changed = true;
        Ok(())
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
        self.totals.envelopes = self.totals.envelopes.saturating_sub(len);
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
                (
                    recount_blobs(&self.blobs, |meta| meta.recipient.as_bytes() == recipient)?,
                    true,
                )
            }
        };
        self.blob_usage.insert(*recipient, (usage, dirty));
        Ok(usage)
    }

    fn set_blob_usage(&mut self, recipient: Recipient, usage: BlobUsage) {
        self.blob_usage.insert(recipient, (usage, true));
        self.changed = true;
    }

    /// What `uploader`'s blobs for `recipient` take.
    fn share(&mut self, recipient: &Recipient, uploader: &Recipient) -> Result<BlobUsage, Fatal> {
        let key = (*recipient, *uploader);
        if let Some((usage, _)) = self.shares.get(&key) {
            return Ok(*usage);
        }
        let stored = self
            .shares_table
            .get(&key)?
            .map(|guard| BlobUsage::decode(guard.value()));
        let (usage, dirty) = match stored {
            None => (BlobUsage::default(), false),
            Some(Ok(usage)) => (usage, false),
            Some(Err(_)) => {
                tracing::warn!("rebuilding a damaged blob share row");
                self.changed = true;
                let of_share = |meta: &BlobMeta| {
                    meta.recipient.as_bytes() == recipient && meta.uploader.as_bytes() == uploader
                };
                (recount_blobs(&self.blobs, of_share)?, true)
            }
        };
        self.shares.insert(key, (usage, dirty));
        Ok(usage)
    }

    /// Changes what blob `meta`'s recipient, and its uploader's share, hold
    /// by `files` and `bytes`, and the relay-wide total with them.
    fn count_blob(&mut self, meta: &BlobMeta, files: i8, bytes: i128) -> Result<(), Fatal> {
        let (recipient, uploader) = (*meta.recipient.as_bytes(), *meta.uploader.as_bytes());
        let usage = self.blob_usage(&recipient)?;
        let share = self.share(&recipient, &uploader)?;
        let (usage, clamped) = usage.changed(files, bytes);
        let (share, share_clamped) = share.changed(files, bytes);
        if clamped || share_clamped {
            tracing::warn!("blob usage was lower than its blobs; clamping at zero");
        }
        self.set_blob_usage(recipient, usage);
        self.shares.insert((recipient, uploader), (share, true));
        self.totals.blobs = apply_delta(self.totals.blobs, bytes).0;
        Ok(())
    }

    /// The room left for `uploader`'s uploads to `to`: under the recipient's
    /// quota, under the uploader's share of it and under the budget, the
    /// least of the three.
    fn room(
        &mut self,
        to: &Recipient,
        uploader: &Recipient,
        quota: &BlobQuota,
    ) -> Result<Room, Fatal> {
        let usage = self.blob_usage(to)?;
        let share = self.share(to, uploader)?;
        let held = usage.bytes.saturating_add(self.holds.for_recipient(to));
        let shared = share
            .bytes
            .saturating_add(self.holds.for_share(to, uploader));
        let used = used(self.totals, self.holds);
        let rooms = [
            Room {
                bytes: quota.max_bytes.saturating_sub(held),
                binding: Binding::Quota {
                    of: QuotaOf::Recipient,
                    files: usage.files,
                    bytes: held,
                },
            },
            Room {
                bytes: quota.max_bytes_per_uploader.saturating_sub(shared),
                binding: Binding::Quota {
                    of: QuotaOf::Uploader,
                    files: share.files,
                    bytes: shared,
                },
            },
            Room {
                bytes: self.budget.saturating_sub(used),
                binding: Binding::Budget {
                    used,
                    budget: self.budget,
                },
            },
        ];
        // The first of the tightest: the recipient's quota is named before
        // the share it contains, and both before the budget.
        let mut least = rooms[0];
        for room in &rooms[1..] {
            if room.bytes < least.bytes {
                least = *room;
            }
        }
        Ok(least)
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

    /// Begins an upload, or resumes one: admits it if the whole of what it
    /// still has to send fits under every bound now, and gives it a hold on
    /// its first window (see `holds`). Refreshes nothing: beginning again is
    /// not progress.
    fn blob_begin(&mut self, begin: BlobBegin) -> Result<Result<Begun, StoreError>, Fatal> {
        let BlobBegin {
            id,
            uploader,
            to,
            size,
            quota,
            source,
            alive,
        } = begin;
        let existing = match self.blob(&id)? {
            Some(Err(err)) => return Ok(Err(err)),
            Some(Ok(meta)) => {
                if *meta.uploader.as_bytes() != uploader
                    || *meta.recipient.as_bytes() != to
                    || meta.size != size
                {
                    return Ok(Err(StoreError::BlobConflict));
                }
                if meta.complete {
                    return Ok(Ok(Begun {
                        meta,
                        created: false,
                        allowed: meta.chunks(),
                    }));
                }
                Some(meta)
            }
            None => None,
        };
        if size > MAX_FILE_SIZE {
            return Ok(Err(StoreError::BlobTooLarge { size }));
        }
        if alive.strong_count() == 0 {
            // Nobody waits for this upload any more.
            return Ok(Err(StoreError::Closed));
        }
        // A hold this blob still has is its previous upload's, which the
        // caller has stopped before coming here: this one takes its place.
        self.holds.remove(&id);
        if self.holds.uploads_by(&uploader) >= quota.max_uploads_per_key {
            return Ok(Err(StoreError::TooManyUploads(UploadsFrom::Key)));
        }
        if self.holds.uploads_from(&source) >= quota.max_uploads_per_source {
            return Ok(Err(StoreError::TooManyUploads(UploadsFrom::Address)));
        }
        if existing.is_none() {
            let usage = self.blob_usage(&to)?;
            let share = self.share(&to, &uploader)?;
            for (files, max, of, bytes) in [
                (
                    usage.files,
                    quota.max_files,
                    QuotaOf::Recipient,
                    usage.bytes,
                ),
                (
                    share.files,
                    quota.max_files_per_uploader,
                    QuotaOf::Uploader,
                    share.bytes,
                ),
            ] {
                if files.saturating_add(1) > max {
                    return Ok(Err(StoreError::BlobQuotaExceeded { of, files, bytes }));
                }
            }
        }
        let (have, stored) = existing.map_or((0, 0), |meta| (meta.have, meta.stored_bytes()));
        let remaining = sealed_len(size).saturating_sub(stored);
        let room = self.room(&to, &uploader, &quota)?;
        if remaining > room.bytes {
            return Ok(Err(room.binding.refusal()));
        }
        let (meta, created) = match existing {
            Some(meta) => (meta, false),
            None => {
                let meta = BlobMeta {
                    recipient: PublicKey::from_bytes(to),
                    uploader: PublicKey::from_bytes(uploader),
                    size,
                    have: 0,
                    complete: false,
                    created: self.now,
                    updated: self.now,
                };
                self.put_blob(&id, &meta)?;
                self.count_blob(&meta, 1, 0)?;
                (meta, true)
            }
        };
        let upto = have.saturating_add(quota.window).min(meta.chunks());
        let hold = Hold {
            recipient: to,
            uploader,
            source,
            upto,
            extra: sealed_prefix_len(size, upto).saturating_sub(stored),
            quota,
            alive,
        };
        self.holds.insert(id, hold);
        Ok(Ok(Begun {
            meta,
            created,
            allowed: upto,
        }))
    }

    /// Records an upload's progress (`have` chunks durable, maybe complete)
    /// and moves its window on as far as the bounds allow; answers how far
    /// it may now write.
    fn blob_update(
        &mut self,
        id: BlobId,
        have: u64,
        complete: bool,
    ) -> Result<Result<Window, StoreError>, Fatal> {
        let before = match self.blob(&id)? {
            None => return Ok(Err(StoreError::NoSuchBlob)),
            Some(Err(err)) => return Ok(Err(err)),
            Some(Ok(meta)) => meta,
        };
        let chunks = chunk_count(before.size);
        if before.complete || have > chunks || (complete && have != chunks) {
            tracing::error!(have, complete, "refusing an impossible blob update");
            return Ok(Err(StoreError::InvalidBlobUpdate));
        }
        let mut meta = before;
        meta.have = have;
        meta.complete = complete;
        // Only progress keeps a blob from expiring: an upload that comes back
        // without sending anything does not.
        if have > before.have || complete {
            meta.updated = self.now;
        }
        self.put_blob(&id, &meta)?;
        let delta = i128::from(meta.stored_bytes()) - i128::from(before.stored_bytes());
        self.count_blob(&meta, 0, delta)?;
        let window = |allowed, short_of| Ok(Ok(Window { allowed, short_of }));
        if complete {
            self.holds.remove(&id);
            return window(chunks, None);
        }
        let Some(hold) = self.holds.get(&id) else {
            // No upload holds room for it: nothing past what is stored.
            return window(have, None);
        };
        let (to, uploader, quota) = (hold.recipient, hold.uploader, hold.quota);
        let stored = meta.stored_bytes();
        // The window keeps its end; what it covers past the stored chunks is
        // what the checkpoint did not fill.
        let mut upto = hold.upto.max(have);
        self.holds
            .resize(&id, upto, sealed_prefix_len(meta.size, upto) - stored);
        let target = have.saturating_add(quota.window).min(chunks);
        let mut short_of = None;
        if target > upto {
            let room = self.room(&to, &uploader, &quota)?;
            let need = sealed_prefix_len(meta.size, target) - sealed_prefix_len(meta.size, upto);
            upto = if need <= room.bytes {
                target
            } else {
                // As many whole chunks as fit; the rest waits for room.
                short_of = Some(room.binding.refusal());
                upto + room.bytes / SEALED_CHUNK_LEN as u64
            };
            self.holds
                .resize(&id, upto, sealed_prefix_len(meta.size, upto) - stored);
        }
        window(upto, short_of)
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
                self.count_blob(&meta, -1, -i128::from(meta.stored_bytes()))?;
            } else {
                tracing::error!("deleting a damaged blob row");
            }
            self.holds.remove(&id);
            self.blobs.remove(&id)?;
            self.changed = true;
            deleted.push(id);
        }
        Ok(Ok(deleted))
    }

    /// Writes back changed usage rows and, given `write_id`, the id counter
    /// if anything changed or the batch gave out ids (even if all of their
    /// envelopes were acknowledged before being written). Returns whether
    /// the transaction changed anything.
    fn finish(mut self, write_id: Option<u64>, ids_given: bool) -> Result<bool, Fatal> {
        for (recipient, cached) in self.usage.iter_mut() {
            if !cached.dirty {
                continue;
            }
            cached.dirty = false;
            self.changed = true;
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
        for (key, (usage, dirty)) in &self.shares {
            if !dirty {
                continue;
            }
            if usage.files == 0 {
                self.shares_table.remove(key)?;
            } else {
                self.shares_table.insert(key, usage.encode().as_slice())?;
            }
        }
        // Ids were handed out since the counter was last written: it is
        // written even if none of their envelopes is (all acknowledged before
        // being written), since their recipients have seen those ids.
        if let Some(next_id) = write_id.filter(|_| self.changed || ids_given) {
            self.meta
                .insert(META_NEXT_ID, next_id.to_be_bytes().as_slice())?;
            self.changed = true;
        }
        Ok(self.changed)
    }
}

/// `value` changed by `delta`, clamped to `0..=u64::MAX`, and whether it
/// had to be clamped at zero.
fn apply_delta(value: u64, delta: i128) -> (u64, bool) {
    let changed = i128::from(value) + delta;
    (
        u64::try_from(changed.max(0)).unwrap_or(u64::MAX),
        changed < 0,
    )
}

impl BlobUsage {
    /// This usage with `files` and `bytes` more (or fewer), and whether
    /// either would have gone below zero.
    fn changed(self, files: i8, bytes: i128) -> (Self, bool) {
        let (files, files_clamped) = apply_delta(self.files, i128::from(files));
        let (bytes, bytes_clamped) = apply_delta(self.bytes, bytes);
        (Self { files, bytes }, files_clamped || bytes_clamped)
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
/// A mailbox's usage as last committed, and whether it had to be rebuilt
/// (then it is to be written back).
fn load_usage(
    usage: &impl ReadableTable<Recipient, &'static [u8]>,
    messages: &impl ReadableTable<(Recipient, u64), &'static [u8]>,
    recipient: &Recipient,
) -> Result<(Usage, bool), Fatal> {
    let stored = usage
        .get(recipient)?
        .map(|guard| Usage::decode(guard.value()));
    Ok(match stored {
        None => (Usage::default(), false),
        Some(Ok(usage)) => (usage, false),
        // The row is derived data: rebuild it rather than lock the mailbox.
        Some(Err(_)) => {
            tracing::warn!("rebuilding a damaged mailbox usage row");
            (recount(messages, recipient)?, true)
        }
    })
}

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

/// Counts the blobs that `counts` picks (a recipient's, or one uploader's
/// for a recipient), for when their usage row is damaged. Blobs are keyed by
/// id, so this reads them all: it happens only after damage.
pub(super) fn recount_blobs(
    blobs: &impl ReadableTable<BlobId, &'static [u8]>,
    counts: impl Fn(&BlobMeta) -> bool,
) -> Result<BlobUsage, Fatal> {
    let mut usage = BlobUsage::default();
    for item in blobs.iter()? {
        let (_, value) = item?;
        if let Ok(meta) = decode_blob(value.value()) {
            if counts(&meta) {
                usage.files += 1;
                usage.bytes = usage.bytes.saturating_add(meta.stored_bytes());
            }
        }
    }
    Ok(usage)
}

/// Every byte stored, summed from the usage rows (a damaged row counts
/// nothing: the budget is a bound, and the row is rebuilt when next used).
fn count_totals(
    usage: &impl ReadableTable<Recipient, &'static [u8]>,
    blob_usage: &impl ReadableTable<Recipient, &'static [u8]>,
) -> Result<Totals, Fatal> {
    let mut totals = Totals::default();
    for item in usage.iter()? {
        let (_, value) = item?;
        if let Ok(usage) = Usage::decode(value.value()) {
            totals.envelopes = totals.envelopes.saturating_add(usage.bytes);
        }
    }
    for item in blob_usage.iter()? {
        let (_, value) = item?;
        if let Ok(usage) = BlobUsage::decode(value.value()) {
            totals.blobs = totals.blobs.saturating_add(usage.bytes);
        }
    }
    Ok(totals)
}
