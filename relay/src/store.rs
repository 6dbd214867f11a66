//! The relay's storage: sealed envelopes kept per recipient key until the
//! recipient acknowledges them or they expire, the delivery-token rows of the
//! mailboxes, and the metadata of the blind file cache.
//!
//! One interface, [`Store`], over interchangeable backends, so that the relay's
//! promises (an envelope is `Stored` only once it is durable, ids strictly
//! increasing and never reused, quotas per recipient, expiry, live feeds that
//! stay in order and gap-free) are stated once and tested once against each:
//! the embedded redb file (`embedded`, the default), and a NATS JetStream
//! cluster shared by several relay nodes (`jetstream`, its file cache in
//! `cluster_files`). The embedded store keeps only the metadata of files,
//! their chunks being files in the data dir (`crate::blobs`); the JetStream
//! backend keeps the chunks too ([`ChunkSink`], [`ChunkSource`]), so that any
//! node serves any file.
//! A backend is chosen when the store is opened; nothing above this module
//! knows which one it talks to.
//!
//! The store only ever sees sealed bytes. It logs neither envelope contents
//! nor recipient keys; damage is logged by message id.

mod blob;
mod cluster_files;
mod codec;
mod embedded;
#[doc(hidden)]
pub mod fuzzing;
mod holds;
mod jetstream;
mod live;
mod token_cache;
mod tokens;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sotto_crypto::file::FileId;
use sotto_keys::PublicKey;
use tokio::sync::oneshot;

use embedded::unix_now;
use embedded::{prepare, slot_lock, DbSlot, RedbStore};
use jetstream::JetStreamStore;

pub use cluster_files::{ChunkSink, ChunkSource, MAX_UNACKED};
pub use holds::{HoldToken, SourceAddr};
pub use jetstream::JetStreamConfig;
pub use live::{Feed, Taken};
pub use tokens::TokenRow;

/// Default for [`StoreLimits::max_messages_per_recipient`].
pub const DEFAULT_MAX_MESSAGES_PER_RECIPIENT: u64 = 10_000;
/// Default for [`StoreLimits::max_bytes_per_recipient`]: 64 MiB.
pub const DEFAULT_MAX_BYTES_PER_RECIPIENT: u64 = 64 * 1024 * 1024;
/// Default for [`StoreLimits::expiry`]: 7 days.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default for [`StoreLimits::max_envelope_len`].
pub const DEFAULT_MAX_ENVELOPE_LEN: usize = sotto_crypto::envelope::MAX_ENVELOPE_LEN;

/// Bounds on what the store holds: per recipient, so one busy or abusive
/// sender cannot fill a mailbox past its quota, and over the whole relay, so
/// no sender writing to many recipients can fill the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most envelopes pending for one recipient.
    pub max_messages_per_recipient: u64,
    /// Most envelope bytes pending for one recipient (envelope lengths only).
    pub max_bytes_per_recipient: u64,
    /// How long an envelope is kept unacknowledged before [`Store::expire`]
    /// deletes it. Counted in whole seconds.
    pub expiry: Duration,
    /// Longest envelope accepted.
    pub max_envelope_len: usize,
    /// Free bytes kept on the store's filesystem: below this, new envelopes
    /// and uploads are refused with [`StoreError::OutOfSpace`] (0: no check).
    pub min_free_disk: u64,
    /// Most bytes the relay stores, over every mailbox and file: envelope
    /// bytes, the stored chunks of files and the holds of uploads in progress.
    /// Beyond it new data is refused with [`StoreError::OutOfSpace`]. `None`:
    /// half the size of the store's filesystem ([`DEFAULT_BUDGET_SHARE`]);
    /// `Some(0)`: no budget.
    pub max_stored_bytes: Option<u64>,
}

/// The default storage budget is the size of the store's filesystem divided
/// by this: a relay that is flooded keeps the other half of its disk for the
/// system and whatever else runs there, and an operator who gives the relay a
/// disk of its own raises [`StoreLimits::max_stored_bytes`].
pub const DEFAULT_BUDGET_SHARE: u64 = 2;

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_messages_per_recipient: DEFAULT_MAX_MESSAGES_PER_RECIPIENT,
            max_bytes_per_recipient: DEFAULT_MAX_BYTES_PER_RECIPIENT,
            expiry: DEFAULT_EXPIRY,
            max_envelope_len: DEFAULT_MAX_ENVELOPE_LEN,
            min_free_disk: crate::space::DEFAULT_MIN_FREE_DISK,
            max_stored_bytes: None,
        }
    }
}

/// An envelope waiting in a mailbox.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its id: unique in this store, and larger for later arrivals.
    pub id: u64,
    /// When the relay stored it, in unix seconds (the relay's clock).
    pub received_at: u64,
    /// The sealed envelope, exactly as the sender gave it.
    pub envelope: Vec<u8>,
}

// By hand, so that logging a `Stored` never prints the envelope.
impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("id", &self.id)
            .field("received_at", &self.received_at)
            .field("envelope_len", &self.envelope.len())
            .finish()
    }
}

/// What the relay knows about one stored file: its addressing, its layout and
/// how far its upload got. No name, no content, no key: the relay has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobMeta {
    /// The only key that may download or delete it.
    pub recipient: PublicKey,
    /// The only key that may resume its upload.
    pub uploader: PublicKey,
    /// Plaintext size, from which the chunk layout follows.
    pub size: u64,
    /// Chunks `0..have` are durably on disk.
    pub have: u64,
    /// Every chunk is there and the uploader said so: it may be downloaded.
    pub complete: bool,
    /// When the upload began (unix seconds, the relay's clock).
    pub created: u64,
    /// Last durable progress (or resumption) of the upload; expiry counts from here.
    pub updated: u64,
}

impl BlobMeta {
    /// Number of chunks of the file.
    pub fn chunks(&self) -> u64 {
        sotto_crypto::file::chunk_count(self.size)
    }

    /// The sealed bytes it holds durably: what it counts against quotas.
    pub fn stored_bytes(&self) -> u64 {
        sealed_prefix_len(self.size, self.have)
    }
}

/// The sealed bytes of chunks `0..have` of a file of `size` bytes.
pub fn sealed_prefix_len(size: u64, have: u64) -> u64 {
    use sotto_crypto::file::{sealed_len, sealed_offset};
    sealed_offset(have).min(sealed_len(size))
}

/// Counts of [`Store::counters`], since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Envelopes written to disk by those transactions.
    pub envelopes_written: u64,
    /// Envelopes stored for their senders but never written: their
    /// recipients acknowledged them before their transaction began.
    pub envelopes_taken_out: u64,
}

/// The outcome of [`Store::begin_blob`].
pub struct BlobBegun {
    /// The blob as stored (its `updated` time is not refreshed: only progress
    /// counts as activity).
    pub meta: BlobMeta,
    /// Whether this begin recorded it (otherwise it resumes one).
    pub created: bool,
    /// Chunks `0..allowed` may be written while `hold` lives (the whole file
    /// for a complete blob, which has nothing left to write).
    pub allowed: u64,
    /// The upload's hold on its window; dropping it gives the room back.
    pub hold: HoldToken,
}

impl fmt::Debug for BlobBegun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobBegun")
            .field("meta", &self.meta)
            .field("created", &self.created)
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// Where an upload's window ends after a checkpoint
/// ([`Store::update_blob`]).
#[derive(Debug, Clone)]
pub struct Window {
    /// Chunks `0..allowed` may have been written in all.
    pub allowed: u64,
    /// Why the window ends short of a whole window past the checkpoint, if it
    /// does: the recipient's quota, the uploader's share or the budget.
    pub short_of: Option<StoreError>,
}

/// Bounds on the blob cache, checked when an upload begins and each time its
/// window moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobQuota {
    /// Most files held for one recipient, complete or not.
    pub max_files: u64,
    /// Most sealed bytes stored or held for one recipient.
    pub max_bytes: u64,
    /// Most of one recipient's files that come from one uploader.
    pub max_files_per_uploader: u64,
    /// Most of one recipient's sealed bytes (stored or held) that come from
    /// one uploader.
    pub max_bytes_per_uploader: u64,
    /// Chunks an upload may write past its last durable one.
    pub window: u64,
    /// Uploads in progress at once from one uploader key.
    pub max_uploads_per_key: u64,
    /// Uploads in progress at once from one source address.
    pub max_uploads_per_source: u64,
}

impl BlobQuota {
    /// No bound at all, and a window of two chunks (tests).
    pub const UNLIMITED: Self = Self {
        max_files: u64::MAX,
        max_bytes: u64::MAX,
        max_files_per_uploader: u64::MAX,
        max_bytes_per_uploader: u64::MAX,
        window: 2,
        max_uploads_per_key: u64::MAX,
        max_uploads_per_source: u64::MAX,
    };
}

/// Whose file quota refused an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOf {
    /// The recipient's, over every uploader.
    Recipient,
    /// The uploader's share of the recipient's.
    Uploader,
}

/// What too many uploads in progress came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadsFrom {
    /// One uploader key, over all its connections.
    Key,
    /// One source address, over all its keys.
    Address,
}

impl fmt::Display for UploadsFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Key => "key",
            Self::Address => "address",
        })
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The recipient's mailbox is at its message or byte quota, so the
    /// envelope was not stored; the sender should be told and may retry after
    /// the recipient has fetched. The fields are what the mailbox held.
    #[error("the recipient's mailbox is full ({messages} messages, {bytes} bytes pending)")]
    QuotaExceeded {
        /// Envelopes pending for the recipient.
        messages: u64,
        /// Envelope bytes pending for the recipient.
        bytes: u64,
    },
    /// The envelope is longer than [`StoreLimits::max_envelope_len`]; it was
    /// not stored.
    #[error("envelope of {len} bytes is longer than the maximum of {max}")]
    TooLarge {
        /// Length of the refused envelope.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A file quota (files or bytes) would be exceeded: the recipient's, or
    /// the uploader's share of it. Nothing was begun, or the upload's window
    /// did not move on. The fields are what that quota held.
    #[error("a file quota is full ({files} files, {bytes} bytes stored or held)")]
    BlobQuotaExceeded {
        /// Which quota.
        of: QuotaOf,
        /// Files it counted.
        files: u64,
        /// Sealed bytes stored or held under it.
        bytes: u64,
    },
    /// Too many uploads are in progress from this uploader's key, or from its
    /// address; the upload was not begun.
    #[error("too many uploads in progress from this {0}")]
    TooManyUploads(UploadsFrom),
    /// A blob with this id exists for another uploader, recipient or size.
    #[error("another file with this id is stored")]
    BlobConflict,
    /// No blob has this id.
    #[error("no such file")]
    NoSuchBlob,
    /// A blob larger than the file format allows.
    #[error("a file of {size} bytes is larger than the format allows")]
    BlobTooLarge {
        /// The refused size.
        size: u64,
    },
    /// An update that no upload could make (past the last chunk, a complete
    /// blob with chunks missing, a change to a complete blob): a bug in the
    /// caller. Nothing was changed.
    #[error("refused an impossible update of a stored file")]
    InvalidBlobUpdate,
    /// The disk is too full for new data (below the reserve, or a write met
    /// a full disk); nothing was stored. Reads and deletions still work.
    #[error("{0}")]
    OutOfSpace(crate::space::OutOfSpace),
    /// The database is being reopened after a write failed (a full disk,
    /// say); try again in a moment.
    #[error("the mailbox store is being reopened after a disk error")]
    Reopening,
    /// The store was closed with [`Store::close`] (through this handle or a clone).
    #[error("the mailbox store is closed")]
    Closed,
    /// redb failed: an I/O error, a full disk, a damaged file, or the file is
    /// already open elsewhere. Any write that reports this was not stored,
    /// nor were the others committed with it. Holds redb's message (a
    /// string, so one failed commit can be reported to every caller in it).
    #[error("mailbox store database error: {0}")]
    Database(String),
    /// Another process (another relay on the same data dir) holds the
    /// store's lock.
    #[error("another sotto-relay is using {}: its mailbox store is locked; stop that relay first, or give this one another data dir with --data DIR", dir.display())]
    InUse {
        /// The data dir.
        dir: std::path::PathBuf,
    },
    /// A stored value does not have the shape this code writes (damage on
    /// disk or a bug). Details are logged; the value itself is not.
    #[error("the mailbox store holds a damaged value")]
    Corrupt,
    /// The file was written in a layout this version does not know, probably
    /// by a newer relay; it is left untouched.
    #[error("mailbox store format {found} is not supported (this relay reads format {supported})")]
    UnsupportedFormat {
        /// The format recorded in the file.
        found: u64,
        /// The format this code reads and writes.
        supported: u64,
    },
    /// The backend's cluster cannot be reached just now, or did not answer
    /// in time (the JetStream backend); nothing is known to be stored: try
    /// again. Holds the client's message.
    #[error("the store is unavailable, try again ({0})")]
    Unavailable(String),
    /// The writer thread could not be started.
    #[error("could not start the mailbox store writer thread: {0}")]
    WriterSpawn(Arc<std::io::Error>),
    /// A store thread stopped unexpectedly (a panic, which is a bug). The
    /// outcome of the operation is unknown; the store must be reopened.
    #[error("the mailbox store stopped unexpectedly")]
    Crashed,
}

impl From<redb::Error> for StoreError {
    fn from(err: redb::Error) -> Self {
        match &err {
            redb::Error::Io(e) if crate::space::is_out_of_space(e) => {
                Self::OutOfSpace(crate::space::OutOfSpace::DISK_FULL)
            }
            _ => Self::Database(err.to_string()),
        }
    }
}

macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                Self::from(redb::Error::from(err))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A handle to the store. Cloning is cheap; all clones share one backend.
#[derive(Clone)]
pub struct Store(Backend);

#[derive(Clone)]
enum Backend {
    Embedded(RedbStore),
    JetStream(JetStreamStore),
}

/// Calls the same method on whichever backend is open.
macro_rules! on_backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match &$store.0 {
            Backend::Embedded($backend) => $call,
            Backend::JetStream($backend) => $call,
        }
    };
}

impl Store {
    /// Opens the embedded store at `path`, creating the file if it is
    /// missing, and starts its writer thread. Blocking: call it before serving.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<Store, StoreError> {
        RedbStore::open(path, limits).map(|s| Store(Backend::Embedded(s)))
    }

    /// [`Store::open`] with the clock and the commit pacing chosen (tests).
    #[cfg(test)]
    fn open_with(
        path: &Path,
        limits: StoreLimits,
        clock: writer::Clock,
        interval: Duration,
    ) -> Result<Store, StoreError> {
        RedbStore::open_with(path, limits, clock, interval).map(|s| Store(Backend::Embedded(s)))
    }

    /// Connects to a NATS JetStream cluster shared by the relay's nodes,
    /// creating its stream and buckets if missing (see `jetstream`).
    /// `data_dir` is this node's own (for its free-space check).
    pub async fn connect_jetstream(
        config: &JetStreamConfig,
        limits: StoreLimits,
        data_dir: &Path,
    ) -> Result<Store, StoreError> {
        JetStreamStore::connect(config, limits, data_dir, Arc::new(unix_now))
            .await
            .map(|s| Store(Backend::JetStream(s)))
    }

    /// [`Store::connect_jetstream`] with the clock chosen (tests).
    #[cfg(test)]
    async fn connect_jetstream_with(
        config: &JetStreamConfig,
        limits: StoreLimits,
        data_dir: &Path,
        clock: writer::Clock,
    ) -> Result<Store, StoreError> {
        JetStreamStore::connect(config, limits, data_dir, clock)
            .await
            .map(|s| Store(Backend::JetStream(s)))
    }

    /// The storage budget in force, in bytes (`None`: no budget; the
    /// JetStream backend leaves it to the stream's limits).
    pub fn budget(&self) -> Option<u64> {
        match &self.0 {
            Backend::Embedded(s) => s.budget(),
            Backend::JetStream(_) => None,
        }
    }

    /// The limits the store was opened with.
    pub fn limits(&self) -> &StoreLimits {
        on_backend!(self, s => s.limits())
    }

    /// The free-space check of the data dir's filesystem.
    pub fn space(&self) -> &crate::space::Space {
        on_backend!(self, s => s.space())
    }

    /// Durable writes since the store was opened (for the embedded store,
    /// transactions committed, each one fsync). Under load it is far below
    /// the number of writes: that is group commit at work.
    pub fn commits(&self) -> u64 {
        self.counters().commits
    }

    /// What the store has committed since it was opened.
    pub fn counters(&self) -> StoreCounters {
        on_backend!(self, s => s.counters())
    }

    /// Stores `envelope` for `to` and returns its id, only once the write is
    /// durable.
    ///
    /// If this future is dropped after the request was handed over, the
    /// envelope may still be stored.
    pub async fn enqueue(&self, to: PublicKey, envelope: Vec<u8>) -> Result<u64, StoreError> {
        self.enqueue_begin(to, envelope).await?.await
    }

    /// Hands `envelope` for `to` over and returns once it is queued (waiting
    /// only while the backend's queue is full); the returned future gives its
    /// id once the write is durable. A connection keeps several of these in
    /// flight, so its sends share commits.
    ///
    /// Live feeds of `to` may get the envelope as soon as it has an id,
    /// before it is durable (see [`Store::subscribe`]).
    pub async fn enqueue_begin(
        &self,
        to: PublicKey,
        envelope: Vec<u8>,
    ) -> Result<Committing<u64>, StoreError> {
        on_backend!(self, s => s.enqueue_begin(to, envelope).await)
    }

    /// Opens a live feed of the envelopes enqueued for `to` from now on,
    /// handed over as soon as they have an id (before they are durable).
    /// See the `live` module for how a reader stays in order and gap-free.
    pub fn subscribe(&self, to: PublicKey) -> Feed {
        on_backend!(self, s => s.subscribe(to))
    }

    /// [`Store::subscribe`] for a connection with a byte budget: each
    /// envelope pushed takes its room there until the connection lets go of
    /// it, and one that finds none is skipped as if the feed had overflowed.
    pub fn subscribe_within(&self, to: PublicKey, budget: crate::budget::Budget) -> Feed {
        on_backend!(self, s => s.subscribe_within(to, budget))
    }

    /// `owner`'s envelopes with an id above `after` (all if `None`), oldest
    /// first, at most `limit` of them.
    pub async fn pending(
        &self,
        owner: PublicKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let (found, _) = self.pending_within(owner, after, limit, usize::MAX).await?;
        Ok(found)
    }

    /// [`Store::pending`], stopping before what the envelopes are charged
    /// of a byte budget (`crate::budget::charge` of each length) would add
    /// up to more than `max_charge`, even at the first; also says whether it
    /// stopped at a limit, so that more may follow. A damaged envelope goes
    /// out empty (it fails to open at the client, whose ack deletes it)
    /// rather than lock its owner out of the rest of the mailbox.
    pub async fn pending_within(
        &self,
        owner: PublicKey,
        after: Option<u64>,
        limit: usize,
        max_charge: usize,
    ) -> Result<(Vec<Stored>, bool), StoreError> {
        on_backend!(self, s => s.pending_within(owner, after, limit, max_charge).await)
    }

    /// Deletes those of `ids` that are in `owner`'s mailbox and returns how
    /// many were deleted. Ids that are unknown, already deleted or another
    /// recipient's are ignored. Returns once the deletion is durable.
    pub async fn ack(&self, owner: PublicKey, ids: Vec<u64>) -> Result<usize, StoreError> {
        self.ack_begin(owner, ids).await?.await
    }

    /// [`Store::ack`] in two steps, like [`Store::enqueue_begin`]: returns
    /// once the deletion is queued; the returned future gives the count once
    /// it is durable, so a connection reads on meanwhile.
    pub async fn ack_begin(
        &self,
        owner: PublicKey,
        ids: Vec<u64>,
    ) -> Result<Committing<usize>, StoreError> {
        on_backend!(self, s => s.ack_begin(owner, ids).await)
    }

    /// Deletes every envelope stored at least [`StoreLimits::expiry`] before
    /// `now_unix` and returns how many were deleted.
    pub async fn expire(&self, now_unix: u64) -> Result<usize, StoreError> {
        on_backend!(self, s => s.expire(now_unix).await)
    }

    /// Registers `hash` as the delivery token of `owner`'s mailbox (the one
    /// it replaces stays in the row, with when), and whether token-less
    /// deliveries are accepted there. Returns once durable.
    pub async fn set_delivery_token(
        &self,
        owner: PublicKey,
        hash: sotto_crypto::delivery::TokenHash,
        first_contact: bool,
    ) -> Result<(), StoreError> {
        on_backend!(self, s => s.set_delivery_token(owner, hash, first_contact).await)
    }

    /// What `owner` registered of its delivery token, if anything.
    pub async fn delivery_token(&self, owner: PublicKey) -> Result<Option<TokenRow>, StoreError> {
        on_backend!(self, s => s.delivery_token(owner).await)
    }

    /// `(messages, bytes)` pending for `owner`.
    pub async fn usage(&self, owner: PublicKey) -> Result<(u64, u64), StoreError> {
        on_backend!(self, s => s.usage(owner).await)
    }

    /// Begins an upload of blob `id`, `size` bytes from `uploader` (at
    /// `source`) for `to`: records a new blob, or finds the existing one for
    /// a resumption. Admitted only if everything it still has to send fits
    /// now under `to`'s quota, the uploader's share of it and the storage
    /// budget, and the uploader's key and address have fewer than their
    /// most uploads in progress; then it holds room for its first window
    /// (`quota.window` chunks) while [`BlobBegun::hold`] lives. Returns once
    /// durable.
    ///
    /// Refused with [`StoreError::BlobQuotaExceeded`],
    /// [`StoreError::OutOfSpace`] or [`StoreError::TooManyUploads`] (nothing
    /// recorded), [`StoreError::BlobConflict`] if `id` is stored with another
    /// uploader, recipient or size, [`StoreError::BlobTooLarge`] past the
    /// format's limit.
    pub async fn begin_blob(
        &self,
        id: FileId,
        uploader: PublicKey,
        source: SourceAddr,
        to: PublicKey,
        size: u64,
        quota: BlobQuota,
    ) -> Result<BlobBegun, StoreError> {
        on_backend!(self, s => s.begin_blob(id, uploader, source, to, size, quota).await)
    }

    /// Records that chunks `0..have` of blob `id` are durably stored, and
    /// whether the upload is finished; moves the upload's window on as far
    /// as its quotas and the budget allow (see [`Window`]). Returns once
    /// durable.
    pub async fn update_blob(
        &self,
        id: FileId,
        have: u64,
        complete: bool,
    ) -> Result<Window, StoreError> {
        on_backend!(self, s => s.update_blob(id, have, complete).await)
    }

    /// Deletes those of `ids` that belong to `owner` (any, if `None`) and,
    /// if given, made no progress after `updated_at_or_before`; returns the
    /// ids deleted, once durable.
    pub async fn delete_blobs(
        &self,
        ids: Vec<FileId>,
        owner: Option<PublicKey>,
        updated_at_or_before: Option<u64>,
    ) -> Result<Vec<FileId>, StoreError> {
        on_backend!(self, s => s.delete_blobs(ids, owner, updated_at_or_before).await)
    }

    /// Blob `id`'s metadata, if it is stored.
    pub async fn blob(&self, id: FileId) -> Result<Option<BlobMeta>, StoreError> {
        on_backend!(self, s => s.blob(id).await)
    }

    /// The ids of every stored blob.
    pub async fn blob_ids(&self) -> Result<Vec<FileId>, StoreError> {
        on_backend!(self, s => s.blob_ids().await)
    }

    /// The blobs whose last progress was at or before `updated_at_or_before`.
    pub async fn stale_blobs(&self, updated_at_or_before: u64) -> Result<Vec<FileId>, StoreError> {
        on_backend!(self, s => s.stale_blobs(updated_at_or_before).await)
    }

    /// `(files, sealed bytes stored)` for `recipient`.
    pub async fn blob_usage(&self, recipient: PublicKey) -> Result<(u64, u64), StoreError> {
        on_backend!(self, s => s.blob_usage(recipient).await)
    }

    /// `(files, sealed bytes stored)` of `recipient`'s that came from `uploader`.
    pub async fn blob_share(
        &self,
        recipient: PublicKey,
        uploader: PublicKey,
    ) -> Result<(u64, u64), StoreError> {
        on_backend!(self, s => s.blob_share(recipient, uploader).await)
    }

    /// Where the chunks of blob `id` are published, for a backend that keeps
    /// them (the JetStream backend); `None`: they are the caller's to keep.
    pub fn chunk_sink(&self, id: FileId) -> Result<Option<ChunkSink>, StoreError> {
        match &self.0 {
            Backend::Embedded(_) => Ok(None),
            Backend::JetStream(s) => s.chunk_sink(id).map(Some),
        }
    }

    /// Where the chunks of blob `id` are read, for a backend that keeps them.
    pub fn chunk_source(&self, id: FileId) -> Result<Option<ChunkSource>, StoreError> {
        match &self.0 {
            Backend::Embedded(_) => Ok(None),
            Backend::JetStream(s) => s.chunk_source(id).map(Some),
        }
    }

    /// Whether the backend keeps file chunks itself.
    pub fn keeps_chunks(&self) -> bool {
        matches!(self.0, Backend::JetStream(_))
    }

    /// Stops accepting work, waits until every write already queued is
    /// durable and answered, then lets the backend go. Afterwards every call
    /// on any clone returns [`StoreError::Closed`].
    pub async fn close(self) -> Result<(), StoreError> {
        match self.0 {
            Backend::Embedded(s) => s.close().await,
            Backend::JetStream(s) => s.close().await,
        }
    }
}

/// A write handed to the writer; resolves once it is committed (or failed).
#[must_use = "the write may still be committed; await this to learn whether it was"]
pub struct Committing<T>(pub(in crate::store) oneshot::Receiver<Result<T, StoreError>>);

impl<T> std::future::Future for Committing<T> {
    type Output = Result<T, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.map_err(|_| StoreError::Crashed)?)
    }
}
