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

use super::codec::{
    decode_message, encode_message, ExpiryEntry, Recipient, Usage, EXPIRY, MESSAGES, META,
    META_NEXT_ID, USAGE,
};
use super::{StoreError, StoreLimits};

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
}

impl Request {
    /// Answers a request that was never applied because its batch failed.
    fn fail(self, err: &StoreError) {
        // A caller that stopped waiting has nobody to tell; ignore send errors.
        match self {
            Request::Enqueue { reply, .. } => drop(reply.send(Err(err.clone()))),
            Request::Ack { reply, .. } | Request::Expire { reply, .. } => {
                drop(reply.send(Err(err.clone())))
            }
        }
    }
}

/// A request that has been applied, holding its answer until the commit.
enum Answer {
    Id(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
    Count(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
}

impl Answer {
    /// Sends the request's own result, or the batch's error if the batch was
    /// not committed (then nothing of it was stored, whatever it said).
    fn send(self, batch_failure: Option<&StoreError>) {
        fn pick<T>(
            own: Result<T, StoreError>,
            failure: Option<&StoreError>,
        ) -> Result<T, StoreError> {
            match failure {
                Some(err) => Err(err.clone()),
                None => own,
            }
        }
        match self {
            Answer::Id(reply, own) => drop(reply.send(pick(own, batch_failure))),
            Answer::Count(reply, own) => drop(reply.send(pick(own, batch_failure))),
        }
    }
}

/// The state owned by the writer thread.
pub(super) struct Writer {
    pub(super) db: Arc<Database>,
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
            }
        }
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
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let now = (self.clock)();
        let mut batch = Batch::open(&txn, &self.limits, self.next_id, now)?;
        for request in requests {
            let (answer, fatal) = match request {
                Request::Enqueue {
                    to,
                    envelope,
                    reply,
                } => settle(batch.enqueue(to, &envelope), |own| Answer::Id(reply, own)),
                Request::Ack { owner, ids, reply } => {
                    settle(batch.ack(owner, ids), |own| Answer::Count(reply, own))
                }
                Request::Expire { now, reply } => {
                    settle(batch.expire(now), |own| Answer::Count(reply, own))
                }
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
fn settle<T>(
    step: Result<Result<T, StoreError>, Fatal>,
    answer: impl FnOnce(Result<T, StoreError>) -> Answer,
) -> (Answer, Option<StoreError>) {
    match step {
        Ok(own) => (answer(own), None),
        Err(err) => {
            let err = StoreError::from(err);
            (answer(Err(err.clone())), Some(err))
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
    usage: HashMap<Recipient, Cached>,
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
            usage: HashMap::new(),
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
