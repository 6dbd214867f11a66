//! The blind file cache of the JetStream backend: sealed chunks, blob
//! metadata and file quotas kept in the cluster, so an upload begun through
//! one relay node resumes through another, and any node serves a download.
//!
//! Why a stream with a subject per chunk and not JetStream's Object Store:
//! an object becomes visible only once it is whole, and cannot be written on
//! from where a cut upload stopped, which is the one thing the file cache
//! must do. So the chunks are one stream, `<prefix>_CHUNKS`, with the subject
//! `<prefix>.chunk.<f>.<index>`, where `f` is a keyed BLAKE3 hash of the file
//! id (as the mailboxes hash keys), and one message kept per subject: a chunk
//! written again after a cut replaces the old one, a download reads chunk `i`
//! by its subject, and deleting a file purges `<prefix>.chunk.<f>.>`.
//!
//! Chunks are streamed: each one is published as it arrives, and at most
//! [`MAX_UNACKED`] wait for their acknowledgement at once, so a node holds a
//! few chunks of an upload in memory, never a file. A checkpoint waits for the
//! acknowledgements of every chunk below it (each given once the stream's
//! replicas have the chunk) before it records the larger `have`, so `have`
//! never claims a chunk the cluster could lose.
//!
//! Metadata is a KV bucket, `<prefix>_FILES`, keyed by `f`, holding the file
//! id and the same row the embedded store keeps; changed by compare-and-set
//! on its revision. The quotas are one KV entry per recipient, a *book* in
//! `<prefix>_FILE_BOOKS` keyed by the recipient's hash: its files and stored
//! bytes, each uploader's share of them, and the holds of its uploads in
//! progress (see `holds`). Every decision about a recipient's files is one
//! compare-and-set of its book, so the quotas and the windows hold across
//! nodes. A hold names the node that made it and carries a lease, renewed
//! by that node while the upload lives: a node that dies leaves holds that
//! lapse with their lease, a node that lives frees them as soon as their
//! uploads end. The counts of uploads in progress per key and per address
//! are this node's only (as rate limits are), since they guard a node's own
//! connections.
//!
//! Order of steps, where a crash between two can leave the counts off:
//! begin counts the file in the book before it creates the metadata (a node
//! that dies between counts one file too many for that recipient); a
//! checkpoint records the metadata, then the bytes in the book (one that dies
//! between counts up to a window's bytes too few); deletion purges the
//! chunks, then deletes the metadata, then gives the book its room back (one
//! that dies between counts a file that is gone). Nothing recounts the books
//! from the metadata yet. No order leaves chunks that nothing names, except an
//! upload still running on another node after its file was deleted: that one
//! finds the metadata gone at its next checkpoint, and purges what it wrote
//! since.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sotto_crypto::file::{
    chunk_count, sealed_chunk_len, sealed_len, FileId, MAX_FILE_SIZE, SEALED_CHUNK_LEN,
};
use sotto_keys::PublicKey;

use super::codec::{decode_blob, encode_blob, BlobId, Recipient};
use super::holds::{HoldToken, Released};
use super::writer::Clock;
use super::{
    sealed_prefix_len, BlobBegun, BlobMeta, BlobQuota, QuotaOf, SourceAddr, StoreError,
    UploadsFrom, Window,
};

/// Chunks of one upload published but not yet acknowledged, at most: the
/// memory one upload takes on a node, and enough to keep the link to the
/// cluster busy.
pub const MAX_UNACKED: usize = 8;

/// How long a hold outlives its node's last renewal: a hold of a node that
/// died keeps its room this long.
const LEASE_SECS: u64 = 120;
/// How often a node renews its holds' leases and frees the holds of uploads
/// that ended (which are also freed at the next decision on the same book).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a write waits for a stream to have a leader again (after the
/// server that led it was lost, JetStream elects another within seconds).
pub(super) const LEADERLESS_FOR: Duration = Duration::from_secs(20);
/// Pause between tries while a stream has no leader.
pub(super) const LEADERLESS_PAUSE: Duration = Duration::from_millis(200);

/// Whether a write failed because no server answered for its stream: the
/// stream is electing a leader, and nothing was written, so trying again
/// cannot write twice.
pub(super) fn leaderless(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<jetstream::context::PublishError>()
            .is_some_and(|p| p.kind() == jetstream::context::PublishErrorKind::StreamNotFound)
        {
            return true;
        }
        if e.downcast_ref::<stream::DirectGetError>().is_some_and(|d| {
            matches!(d.kind(), stream::DirectGetErrorKind::ErrorResponse(code, _)
                if code == async_nats::StatusCode::NO_RESPONDERS)
        }) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The file cache's buckets and stream, and this node's holds.
pub(super) struct ClusterFiles {
    meta: kv::Store,
    books: kv::Store,
    chunks: stream::Stream,
    js: jetstream::Context,
    prefix: String,
    clock: Clock,
    /// Names this node in the holds it makes.
    node: u64,
    local: Arc<Mutex<HashMap<BlobId, LocalHold>>>,
    released: Arc<Released>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterFiles {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

/// A hold this node made, with what only this node knows of it.
#[derive(Clone)]
struct LocalHold {
    recipient: Recipient,
    uploader: Recipient,
    source: SourceAddr,
    nonce: u64,
    alive: Weak<()>,
}

/// One recipient's files, as every node sees them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Book {
    files: u64,
    bytes: u64,
    /// By the uploader's hash.
    shares: BTreeMap<Recipient, Counted>,
    /// By the file's hash.
    holds: BTreeMap<Recipient, BookHold>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Counted {
    files: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct BookHold {
    uploader: Recipient,
    node: u64,
    nonce: u64,
    /// Chunks `0..upto` may be written.
    upto: u64,
    /// Bytes of the window beyond what the blob has stored.
    extra: u64,
    /// Unix seconds after which any node may drop it.
    lease_until: u64,
    window: u64,
    max_bytes: u64,
    max_bytes_per_uploader: u64,
}

impl Book {
    fn held(&self) -> u64 {
        self.holds
            .values()
            .fold(0u64, |sum, h| sum.saturating_add(h.extra))
    }

    fn held_by(&self, uploader: &Recipient) -> u64 {
        self.holds
            .values()
            .filter(|h| h.uploader == *uploader)
            .fold(0u64, |sum, h| sum.saturating_add(h.extra))
    }

    fn share(&self, uploader: &Recipient) -> Counted {
        self.shares.get(uploader).copied().unwrap_or_default()
    }

    /// Changes what the recipient and `uploader`'s share hold.
    fn count(&mut self, uploader: Recipient, files: i64, bytes: i128) {
        let (f, b) = apply(self.files, self.bytes, files, bytes);
        (self.files, self.bytes) = (f, b);
        let share = self.share(&uploader);
        let (files, bytes) = apply(share.files, share.bytes, files, bytes);
        if files == 0 && bytes == 0 {
            self.shares.remove(&uploader);
        } else {
            self.shares.insert(uploader, Counted { files, bytes });
        }
    }

    /// The room left for `uploader` under the recipient's quota and under
    /// its share, the least of the two (the recipient's named first).
    fn room(&self, uploader: &Recipient, max_bytes: u64, max_share: u64) -> (u64, StoreError) {
        let held = self.bytes.saturating_add(self.held());
        let share = self.share(uploader);
        let shared = share.bytes.saturating_add(self.held_by(uploader));
        let recipient = (
            max_bytes.saturating_sub(held),
            StoreError::BlobQuotaExceeded {
                of: QuotaOf::Recipient,
                files: self.files,
                bytes: held,
            },
        );
        let of_share = (
            max_share.saturating_sub(shared),
            StoreError::BlobQuotaExceeded {
                of: QuotaOf::Uploader,
                files: share.files,
                bytes: shared,
            },
        );
        if of_share.0 < recipient.0 {
            of_share
        } else {
            recipient
        }
    }
}

fn apply(files: u64, bytes: u64, df: i64, db: i128) -> (u64, u64) {
    let files = if df < 0 {
        files.saturating_sub(df.unsigned_abs())
    } else {
        files.saturating_add(df.unsigned_abs())
    };
    let bytes = u64::try_from((i128::from(bytes) + db).max(0)).unwrap_or(u64::MAX);
    (files, bytes)
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only map operations happen under these locks: poisoning is moot.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hash of a file id that names its chunks and metadata.
fn file_hash(id: &BlobId) -> Recipient {
    *blake3::Hasher::new_derive_key("sotto relay jetstream file name v1")
        .update(id)
        .finalize()
        .as_bytes()
}

fn key_hash(key: &[u8; 32]) -> Recipient {
    super::jetstream::hashed(&PublicKey::from_bytes(*key))
}

use super::jetstream::{hex, lost_the_race};

/// The metadata entry's value: the file id, then the blob row.
fn encode_meta(id: &BlobId, meta: &BlobMeta) -> Vec<u8> {
    let mut value = id.to_vec();
    value.extend_from_slice(&encode_blob(meta));
    value
}

fn decode_meta(value: &[u8]) -> (Option<BlobId>, Result<BlobMeta, StoreError>) {
    let id = value.get(..16).and_then(|id| BlobId::try_from(id).ok());
    let meta = match value.get(16..) {
        Some(row) => decode_blob(row),
        None => Err(StoreError::Corrupt),
    };
    (id, meta)
}

impl ClusterFiles {
    /// Creates (or finds) the stream and buckets of the file cache and starts
    /// the sweeper of this node's holds.
    pub(super) async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let chunks = js
            .get_or_create_stream(stream::Config {
                name: format!("{prefix}_CHUNKS"),
                subjects: vec![format!("{prefix}.chunk.>")],
                num_replicas: replicas,
                max_messages_per_subject: 1,
                max_message_size: i32::try_from(SEALED_CHUNK_LEN + 4096).unwrap_or(i32::MAX),
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let bucket = |name: String| kv::Config {
            bucket: name,
            history: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let meta = super::jetstream::create_bucket(js, bucket(format!("{prefix}_FILES"))).await?;
        let books =
            super::jetstream::create_bucket(js, bucket(format!("{prefix}_FILE_BOOKS"))).await?;
        let local: Arc<Mutex<HashMap<BlobId, LocalHold>>> = Arc::default();
        let released = Arc::new(Released::default());
        let node = rand_u64();
        let sweeper = tokio::spawn(sweep(
            books.clone(),
            Arc::clone(&local),
            Arc::clone(&released),
            node,
            Arc::clone(&clock),
        ));
        Ok(Self {
            meta,
            books,
            chunks,
            js: js.clone(),
            prefix: prefix.to_owned(),
            clock,
            node,
            local,
            released,
            sweeper,
        })
    }

    fn chunk_base(&self, id: &BlobId) -> String {
        format!("{}.chunk.{}", self.prefix, hex(&file_hash(id)))
    }

    /// Where the chunks of `id` are written.
    pub(super) fn sink(&self, id: FileId) -> ChunkSink {
        ChunkSink {
            js: self.js.clone(),
            chunks: self.chunks.clone(),
            base: self.chunk_base(&id.0),
            unacked: tokio::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Where the chunks of `id` are read.
    pub(super) fn source(&self, id: FileId) -> ChunkSource {
        ChunkSource {
            chunks: self.chunks.clone(),
            base: self.chunk_base(&id.0),
        }
    }

    async fn meta_entry(&self, id: &BlobId) -> Result<Option<kv::Entry>, StoreError> {
        let until = tokio::time::Instant::now() + LEADERLESS_FOR;
        loop {
            match self.meta.entry(hex(&file_hash(id))).await {
                Ok(entry) => return Ok(entry.filter(|e| e.operation == kv::Operation::Put)),
                Err(err) if leaderless(&err) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LEADERLESS_PAUSE).await;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
    }

    pub(super) async fn blob(&self, id: FileId) -> Result<Option<BlobMeta>, StoreError> {
        match self.meta_entry(&id.0).await? {
            None => Ok(None),
            Some(entry) => decode_meta(&entry.value).1.map(Some),
        }
    }

    /// Applies `change` to recipient `r`'s book by compare-and-set, retrying
    /// when another node got there first. Before `change` sees the book, the
    /// holds this node knows have ended and the holds whose lease ran out
    /// are dropped from it.
    async fn change_book<T>(
        &self,
        r: &Recipient,
        mut change: impl FnMut(&mut Book) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let key = hex(r);
        let until = tokio::time::Instant::now() + LEADERLESS_FOR;
        loop {
            let entry = match self.books.entry(key.clone()).await {
                Ok(entry) => entry,
                Err(err) if leaderless(&err) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LEADERLESS_PAUSE).await;
                    continue;
                }
                Err(err) => return Err(unavailable(err)),
            };
            let (revision, mut book) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (e.revision, read_book(&e.value)?),
                Some(e) => (e.revision, Book::default()),
                None => (0, Book::default()),
            };
            self.prune(&mut book, (self.clock)());
            let out = change(&mut book)?;
            let value = postcard::to_allocvec(&book).map_err(|_| StoreError::Corrupt)?;
            match self.books.update(&key, value.into(), revision).await {
                Ok(_) => return Ok(out),
                Err(err)
                    if err.kind() == kv::UpdateErrorKind::WrongLastRevision
                        || lost_the_race(&err) =>
                {
                    continue
                }
                Err(err) if leaderless(&err) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LEADERLESS_PAUSE).await;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
    }

    fn prune(&self, book: &mut Book, now: u64) {
        let local = lock(&self.local);
        prune_book(book, &local, self.node, now);
    }

    pub(super) async fn begin_blob(
        &self,
        id: FileId,
        uploader: PublicKey,
        source: SourceAddr,
        to: PublicKey,
        size: u64,
        quota: BlobQuota,
    ) -> Result<BlobBegun, StoreError> {
        let hold = HoldToken::new(id.0, &self.released);
        let (r, u, f) = (
            key_hash(to.as_bytes()),
            key_hash(uploader.as_bytes()),
            file_hash(&id.0),
        );
        loop {
            let found = self.meta_entry(&id.0).await?;
            let existing = match &found {
                Some(entry) => {
                    let meta = decode_meta(&entry.value).1?;
                    if meta.uploader != uploader || meta.recipient != to || meta.size != size {
                        return Err(StoreError::BlobConflict);
                    }
                    if meta.complete {
                        return Ok(BlobBegun {
                            meta,
                            created: false,
                            allowed: meta.chunks(),
                            hold,
                        });
                    }
                    Some(meta)
                }
                None => None,
            };
            if size > MAX_FILE_SIZE {
                return Err(StoreError::BlobTooLarge { size });
            }
            let nonce = rand_u64();
            {
                let mut local = lock(&self.local);
                local.retain(|_, h| h.alive.strong_count() > 0);
                // This blob's earlier upload has been stopped by the caller:
                // this one takes its place.
                local.remove(&id.0);
                if local.values().filter(|h| h.uploader == u).count() as u64
                    >= quota.max_uploads_per_key
                {
                    return Err(StoreError::TooManyUploads(UploadsFrom::Key));
                }
                if local.values().filter(|h| h.source == source).count() as u64
                    >= quota.max_uploads_per_source
                {
                    return Err(StoreError::TooManyUploads(UploadsFrom::Address));
                }
                local.insert(
                    id.0,
                    LocalHold {
                        recipient: r,
                        uploader: u,
                        source,
                        nonce,
                        alive: hold.watch(),
                    },
                );
            }
            let (have, stored) = existing.map_or((0, 0), |m| (m.have, m.stored_bytes()));
            let chunks = chunk_count(size);
            let now = (self.clock)();
            let node = self.node;
            let new = existing.is_none();
            let booked = self
                .change_book(&r, |book| {
                    book.holds.remove(&f);
                    if new {
                        let share = book.share(&u);
                        for (files, max, of, bytes) in [
                            (book.files, quota.max_files, QuotaOf::Recipient, book.bytes),
                            (
                                share.files,
                                quota.max_files_per_uploader,
                                QuotaOf::Uploader,
                                share.bytes,
                            ),
                        ] {
                            if files.saturating_add(1) > max {
                                return Err(StoreError::BlobQuotaExceeded { of, files, bytes });
                            }
                        }
                    }
                    let remaining = sealed_len(size).saturating_sub(stored);
                    let (room, refusal) =
                        book.room(&u, quota.max_bytes, quota.max_bytes_per_uploader);
                    if remaining > room {
                        return Err(refusal);
                    }
                    if new {
                        book.count(u, 1, 0);
                    }
                    let upto = have.saturating_add(quota.window).min(chunks);
                    book.holds.insert(
                        f,
                        BookHold {
                            uploader: u,
                            node,
                            nonce,
                            upto,
                            extra: sealed_prefix_len(size, upto).saturating_sub(stored),
                            lease_until: now.saturating_add(LEASE_SECS),
                            window: quota.window,
                            max_bytes: quota.max_bytes,
                            max_bytes_per_uploader: quota.max_bytes_per_uploader,
                        },
                    );
                    Ok(upto)
                })
                .await;
            let upto = match booked {
                Ok(upto) => upto,
                Err(err) => {
                    self.forget_local(&id.0, nonce);
                    return Err(err);
                }
            };
            if let Some(meta) = existing {
                return Ok(BlobBegun {
                    meta,
                    created: false,
                    allowed: upto,
                    hold,
                });
            }
            let meta = BlobMeta {
                recipient: to,
                uploader,
                size,
                have: 0,
                complete: false,
                created: now,
                updated: now,
            };
            let created = self
                .meta
                .create(hex(&f), encode_meta(&id.0, &meta).into())
                .await;
            let err = match created {
                Ok(_) => {
                    return Ok(BlobBegun {
                        meta,
                        created: true,
                        allowed: upto,
                        hold,
                    })
                }
                Err(err) => err,
            };
            // Undo the count; if another node created it meanwhile, begin
            // again as a resumption (or a conflict).
            let undo = self
                .change_book(&r, |book| {
                    if book.holds.get(&f).is_some_and(|h| h.nonce == nonce) {
                        book.holds.remove(&f);
                    }
                    book.count(u, -1, 0);
                    Ok(())
                })
                .await;
            self.forget_local(&id.0, nonce);
            if let Err(e) = undo {
                tracing::warn!("could not give back a file that was not begun: {e}");
            }
            if err.kind() != kv::CreateErrorKind::AlreadyExists {
                return Err(unavailable(err));
            }
        }
    }

    fn forget_local(&self, id: &BlobId, nonce: u64) {
        let mut local = lock(&self.local);
        if local.get(id).is_some_and(|h| h.nonce == nonce) {
            local.remove(id);
        }
    }

    pub(super) async fn update_blob(
        &self,
        id: FileId,
        have: u64,
        complete: bool,
    ) -> Result<Window, StoreError> {
        let f = file_hash(&id.0);
        let key = hex(&f);
        let until = tokio::time::Instant::now() + LEADERLESS_FOR;
        let (before, meta) = loop {
            let Some(entry) = self.meta_entry(&id.0).await? else {
                return Err(StoreError::NoSuchBlob);
            };
            let before = decode_meta(&entry.value).1?;
            let chunks = chunk_count(before.size);
            if before.complete || have > chunks || (complete && have != chunks) {
                tracing::error!(have, complete, "refusing an impossible blob update");
                return Err(StoreError::InvalidBlobUpdate);
            }
            let mut meta = before;
            meta.have = have;
            meta.complete = complete;
            if have > before.have || complete {
                meta.updated = (self.clock)();
            }
            match self
                .meta
                .update(&key, encode_meta(&id.0, &meta).into(), entry.revision)
                .await
            {
                Ok(_) => break (before, meta),
                Err(err)
                    if err.kind() == kv::UpdateErrorKind::WrongLastRevision
                        || lost_the_race(&err) =>
                {
                    continue
                }
                Err(err) if leaderless(&err) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LEADERLESS_PAUSE).await;
                }
                Err(err) => return Err(unavailable(err)),
            }
        };
        let delta = i128::from(meta.stored_bytes()) - i128::from(before.stored_bytes());
        let (r, u) = (
            key_hash(meta.recipient.as_bytes()),
            key_hash(meta.uploader.as_bytes()),
        );
        let mine = lock(&self.local).get(&id.0).map(|h| h.nonce);
        let now = (self.clock)();
        let node = self.node;
        let chunks = meta.chunks();
        self.change_book(&r, |book| {
            book.count(u, 0, delta);
            if complete {
                book.holds.remove(&f);
                return Ok(Window {
                    allowed: chunks,
                    short_of: None,
                });
            }
            let Some(mut hold) = book
                .holds
                .get(&f)
                .copied()
                .filter(|h| h.node == node && Some(h.nonce) == mine)
            else {
                // No upload of this node holds room for it: nothing past
                // what is stored.
                return Ok(Window {
                    allowed: have,
                    short_of: None,
                });
            };
            let stored = meta.stored_bytes();
            let mut upto = hold.upto.max(have);
            hold.upto = upto;
            hold.extra = sealed_prefix_len(meta.size, upto) - stored;
            hold.lease_until = now.saturating_add(LEASE_SECS);
            book.holds.insert(f, hold);
            let target = have.saturating_add(hold.window).min(chunks);
            let mut short_of = None;
            if target > upto {
                let (room, refusal) = book.room(&u, hold.max_bytes, hold.max_bytes_per_uploader);
                let need =
                    sealed_prefix_len(meta.size, target) - sealed_prefix_len(meta.size, upto);
                upto = if need <= room {
                    target
                } else {
                    short_of = Some(refusal);
                    upto + room / SEALED_CHUNK_LEN as u64
                };
                hold.upto = upto;
                hold.extra = sealed_prefix_len(meta.size, upto) - stored;
                book.holds.insert(f, hold);
            }
            Ok(Window {
                allowed: upto,
                short_of,
            })
        })
        .await
        .inspect(|_| {
            if complete {
                lock(&self.local).remove(&id.0);
            }
        })
    }

    pub(super) async fn delete_blobs(
        &self,
        ids: Vec<FileId>,
        owner: Option<PublicKey>,
        updated_at_or_before: Option<u64>,
    ) -> Result<Vec<FileId>, StoreError> {
        let mut deleted = Vec::new();
        for id in ids {
            let Some(entry) = self.meta_entry(&id.0).await? else {
                continue;
            };
            let meta = match decode_meta(&entry.value).1 {
                Ok(meta) => {
                    if owner.is_some_and(|owner| owner != meta.recipient)
                        || updated_at_or_before.is_some_and(|at| meta.updated > at)
                    {
                        continue;
                    }
                    Some(meta)
                }
                // A damaged entry is nobody's, and goes only with age.
                Err(_) if owner.is_none() => None,
                Err(_) => continue,
            };
            self.source(id).purge().await?;
            let f = file_hash(&id.0);
            match self
                .meta
                .delete_expect_revision(hex(&f), Some(entry.revision))
                .await
            {
                Ok(()) => {}
                Err(err)
                    if err.kind() == kv::DeleteErrorKind::WrongLastRevision
                        || lost_the_race(&err) =>
                {
                    continue
                }
                Err(err) => return Err(unavailable(err)),
            }
            lock(&self.local).remove(&id.0);
            if let Some(meta) = meta {
                let (r, u) = (
                    key_hash(meta.recipient.as_bytes()),
                    key_hash(meta.uploader.as_bytes()),
                );
                let stored = i128::from(meta.stored_bytes());
                self.change_book(&r, |book| {
                    book.holds.remove(&f);
                    book.count(u, -1, -stored);
                    Ok(())
                })
                .await?;
            }
            deleted.push(id);
        }
        Ok(deleted)
    }

    /// Every metadata entry: its file id (if readable) and row.
    async fn all(&self) -> Result<Vec<(BlobId, Result<BlobMeta, StoreError>)>, StoreError> {
        let mut keys = self.meta.keys().await.map_err(unavailable)?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(unavailable)?);
        }
        let mut out = Vec::new();
        for name in names {
            let Some(value) = self.meta.get(name).await.map_err(unavailable)? else {
                continue;
            };
            match decode_meta(&value) {
                (Some(id), meta) => out.push((id, meta)),
                (None, _) => tracing::error!("a file metadata entry without its id"),
            }
        }
        Ok(out)
    }

    pub(super) async fn blob_ids(&self) -> Result<Vec<FileId>, StoreError> {
        let mut ids: Vec<FileId> = self
            .all()
            .await?
            .into_iter()
            .map(|(id, _)| FileId(id))
            .collect();
        ids.sort_unstable_by_key(|id| id.0);
        Ok(ids)
    }

    pub(super) async fn stale_blobs(
        &self,
        updated_at_or_before: u64,
    ) -> Result<Vec<FileId>, StoreError> {
        let mut ids: Vec<FileId> = self
            .all()
            .await?
            .into_iter()
            .filter(|(_, meta)| {
                meta.as_ref()
                    .map_or(true, |meta| meta.updated <= updated_at_or_before)
            })
            .map(|(id, _)| FileId(id))
            .collect();
        ids.sort_unstable_by_key(|id| id.0);
        Ok(ids)
    }

    async fn book(&self, r: &Recipient) -> Result<Book, StoreError> {
        match self.books.get(hex(r)).await.map_err(unavailable)? {
            Some(value) => read_book(&value),
            None => Ok(Book::default()),
        }
    }

    pub(super) async fn blob_usage(&self, recipient: PublicKey) -> Result<(u64, u64), StoreError> {
        let book = self.book(&key_hash(recipient.as_bytes())).await?;
        Ok((book.files, book.bytes))
    }

    pub(super) async fn blob_share(
        &self,
        recipient: PublicKey,
        uploader: PublicKey,
    ) -> Result<(u64, u64), StoreError> {
        let book = self.book(&key_hash(recipient.as_bytes())).await?;
        let share = book.share(&key_hash(uploader.as_bytes()));
        Ok((share.files, share.bytes))
    }
}

/// A book is derived data; one that cannot be read is a bug or damage.
fn read_book(value: &[u8]) -> Result<Book, StoreError> {
    postcard::from_bytes(value).map_err(|_| {
        tracing::error!("a damaged file quota book");
        StoreError::Corrupt
    })
}

/// Drops from `book` the holds of `node` whose uploads have ended (known
/// from `local`), and the holds of other nodes whose lease ran out.
fn prune_book(book: &mut Book, local: &HashMap<BlobId, LocalHold>, node: u64, now: u64) {
    let live: HashMap<u64, ()> = local
        .values()
        .filter(|h| h.alive.strong_count() > 0)
        .map(|h| (h.nonce, ()))
        .collect();
    book.holds.retain(|_, hold| {
        if hold.node == node {
            live.contains_key(&hold.nonce)
        } else {
            hold.lease_until >= now
        }
    });
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Hashing the time and a counter is plenty for a name that only has to
    // differ between nodes and holds; no secret rests on it.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let hash = blake3::Hasher::new_derive_key("sotto relay jetstream hold name v1")
        .update(&now.to_le_bytes())
        .update(&n.to_le_bytes())
        .update(&std::process::id().to_le_bytes())
        .finalize();
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(bytes)
}

/// Renews the leases of this node's live holds and drops those whose uploads
/// ended, book by book, so that other nodes see the room come back.
async fn sweep(
    books: kv::Store,
    local: Arc<Mutex<HashMap<BlobId, LocalHold>>>,
    released: Arc<Released>,
    node: u64,
    clock: Clock,
) {
    let mut ended: HashMap<BlobId, Recipient> = HashMap::new();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        // Which books hold this node's holds, live or ended.
        let released_ids = released.take();
        let recipients: Vec<Recipient> = {
            let mut local = lock(&local);
            for (id, hold) in local.iter() {
                if hold.alive.strong_count() == 0 {
                    ended.insert(*id, hold.recipient);
                }
            }
            local.retain(|_, h| h.alive.strong_count() > 0);
            let mut rs: Vec<Recipient> = local.values().map(|h| h.recipient).collect();
            rs.extend(ended.values().copied());
            rs.sort_unstable();
            rs.dedup();
            rs
        };
        drop(released_ids);
        let now = clock();
        let mut failed = false;
        for r in recipients {
            let key = hex(&r);
            let done = async {
                loop {
                    let Some(entry) = books.entry(key.clone()).await.map_err(unavailable)? else {
                        return Ok::<(), StoreError>(());
                    };
                    if entry.operation != kv::Operation::Put {
                        return Ok(());
                    }
                    let mut book = read_book(&entry.value)?;
                    let before = book.holds.len();
                    let snapshot = lock(&local).clone();
                    prune_book(&mut book, &snapshot, node, now);
                    let mut renewed = false;
                    for hold in book.holds.values_mut() {
                        if hold.node == node && hold.lease_until < now + LEASE_SECS / 2 {
                            hold.lease_until = now.saturating_add(LEASE_SECS);
                            renewed = true;
                        }
                    }
                    if book.holds.len() == before && !renewed {
                        return Ok(());
                    }
                    let value = postcard::to_allocvec(&book).map_err(|_| StoreError::Corrupt)?;
                    match books.update(&key, value.into(), entry.revision).await {
                        Ok(_) => return Ok(()),
                        Err(err)
                            if err.kind() == kv::UpdateErrorKind::WrongLastRevision
                                || lost_the_race(&err) => {}
                        Err(err) => return Err(unavailable(err)),
                    }
                }
            }
            .await;
            if let Err(err) = done {
                failed = true;
                tracing::debug!(error = %err, "could not sweep a file quota book; retrying");
            }
        }
        if !failed {
            ended.clear();
        }
    }
}

/// Where one upload's chunks go: published as they come, acknowledged by the
/// cluster before a checkpoint records them.
pub struct ChunkSink {
    js: jetstream::Context,
    chunks: stream::Stream,
    base: String,
    unacked: tokio::sync::Mutex<VecDeque<Unacked>>,
}

/// A chunk published and not yet acknowledged, kept to publish again should
/// its stream have had no leader.
struct Unacked {
    index: u64,
    data: bytes::Bytes,
    ack: PublishAckFuture,
}

impl ChunkSink {
    async fn publish(&self, index: u64, data: bytes::Bytes) -> Result<Unacked, StoreError> {
        let ack = self
            .js
            .publish(format!("{}.{index}", self.base), data.clone())
            .await
            .map_err(unavailable)?;
        Ok(Unacked { index, data, ack })
    }

    /// Waits for `chunk`'s acknowledgement, publishing it again while its
    /// stream has no leader (a chunk written twice is one chunk: the stream
    /// keeps one message per subject).
    async fn acknowledged(&self, mut chunk: Unacked) -> Result<(), StoreError> {
        let until = tokio::time::Instant::now() + LEADERLESS_FOR;
        loop {
            match chunk.ack.await {
                Ok(_) => return Ok(()),
                Err(err) if leaderless(&err) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LEADERLESS_PAUSE).await;
                    chunk = self.publish(chunk.index, chunk.data).await?;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
    }

    /// Publishes sealed chunks `first, first + 1, …`; waits for the oldest
    /// acknowledgements whenever more than [`MAX_UNACKED`] are outstanding.
    pub async fn write_run(&self, first: u64, run: Vec<Vec<u8>>) -> Result<(), StoreError> {
        for (index, data) in (first..).zip(run) {
            let chunk = self.publish(index, data.into()).await?;
            let mut unacked = self.unacked.lock().await;
            unacked.push_back(chunk);
            while unacked.len() > MAX_UNACKED {
                if let Some(chunk) = unacked.pop_front() {
                    self.acknowledged(chunk).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits until every chunk below `have` that was published is durable.
    pub async fn settle(&self, have: u64) -> Result<(), StoreError> {
        let mut unacked = self.unacked.lock().await;
        while unacked.front().is_some_and(|chunk| chunk.index < have) {
            if let Some(chunk) = unacked.pop_front() {
                self.acknowledged(chunk).await?;
            }
        }
        Ok(())
    }

    /// Removes every chunk of the file (its metadata is gone).
    pub async fn purge(&self) -> Result<(), StoreError> {
        purge(&self.chunks, &self.base).await
    }
}

async fn purge(chunks: &stream::Stream, base: &str) -> Result<(), StoreError> {
    chunks
        .purge()
        .filter(format!("{base}.>"))
        .await
        .map(drop)
        .map_err(unavailable)
}

/// Where one complete file's chunks are read, from any node.
#[derive(Clone)]
pub struct ChunkSource {
    chunks: stream::Stream,
    base: String,
}

impl ChunkSource {
    /// Sealed chunk `index` of a file of `size` bytes; `None` if the cluster
    /// does not have it, or has it at another length (damage).
    pub async fn read(&self, size: u64, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(len) = sealed_chunk_len(size, index) else {
            return Ok(None);
        };
        // Read through the stream's leader, not a replica that may lag.
        match self
            .chunks
            .get_last_raw_message_by_subject(&format!("{}.{index}", self.base))
            .await
        {
            Ok(message) if message.payload.len() == len => Ok(Some(message.payload.to_vec())),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn purge(&self) -> Result<(), StoreError> {
        purge(&self.chunks, &self.base).await
    }
}
