//! The blind file cache: sealed file chunks on disk, their metadata in the store.
//!
//! That is the embedded backend's arrangement, described below. A store that
//! keeps the chunks itself (the JetStream backend of relay nodes, see
//! `store::cluster_files`) gets them published instead of written to a file,
//! and the durability rule is the same with the cluster's acknowledgement in
//! place of the fsync: a checkpoint records `have` only once every chunk below
//! it is acknowledged. No file is made in the data dir then, and the claims
//! below are per node: an upload resumed on another node does not stop the
//! stale half on the first, which finds at its next checkpoint that its hold
//! is gone (no window past what is stored) and stops.
//!
//! A dropped file can be gigabytes, so its chunks never sit in memory: each one
//! is written at its place in `DATA/blobs/<hex file id>` (0600, in a 0700
//! directory) as it arrives, and read back by position for downloads. The
//! relay holds sealed bytes only; it sees no name, no key and no plaintext.
//! Beside the file, the store (`crate::store`) keeps one metadata row per blob:
//! recipient, uploader, size, how many chunks are durable (`have`), whether
//! the upload is complete, and when it began and last progressed. Metadata
//! changes go through the store's single writer thread, so they share its
//! group commits.
//!
//! What bounds the cache: a blob counts against its recipient's file quota,
//! and against its uploader's share of that quota, with what it has stored;
//! an upload in progress holds room for a window of a few checkpoints beyond
//! that, in memory, and only while it is in progress (`store::holds`). Nothing
//! is reserved for an upload that sends nothing, so a stranger cannot block a
//! recipient's file drop by beginning uploads, and one uploader never takes
//! more than its share (a quarter by default) of what a recipient may hold.
//! Across recipients, the store's storage budget bounds the whole relay: a
//! sender writing to many recipients is refused once it is used up.
//!
//! Durability follows one rule: a file's data is fsynced *before* a larger
//! `have` is committed, and the client hears of it only after the commit. So
//! `have` never claims bytes that a crash could lose, and resuming is always
//! safe: bytes past `have` may be garbage after a crash, and a resumption cuts
//! the file back to `have` before writing on.
//!
//! Each operation orders its file and metadata steps so that a crash between
//! them leaves something the next start repairs:
//! - begin: the metadata row (counting one file) before the empty file; a row
//!   without a file is treated as a file with nothing in it when resumed;
//! - delete and expiry: the row (committed) before the file; a file without a
//!   row is removed at the next start ([`Blobs::remove_orphans`]).
//!
//! Within the process, every change to one blob holds its *claim* (a lock per
//! file id): an upload holds it for as long as it runs, a deletion takes it,
//! expiry skips files that are claimed. A new claimant asks the holder to
//! stop, so a client that reconnects after a dropped connection takes its
//! upload over from the relay's stale half of the old one, which first makes
//! what it wrote durable.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sotto_crypto::file::{
    chunk_count, sealed_chunk_len, sealed_len, sealed_offset, FileId, CHUNK_LEN, MAX_FILE_SIZE,
    SEALED_CHUNK_LEN,
};
use sotto_keys::PublicKey;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::store::{
    sealed_prefix_len, BlobMeta, BlobQuota, ChunkSink, ChunkSource, HoldToken, QuotaOf, SourceAddr,
    Store, StoreError, UploadsFrom, Window, DEFAULT_EXPIRY,
};

/// Name of the blob directory inside the data dir.
pub const BLOBS_DIR: &str = "blobs";
/// Default for [`BlobLimits::max_file_size`]: 8 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 8 << 30;
/// Default for [`BlobLimits::max_bytes_per_recipient`]: 32 GiB, so that one
/// uploader's default share of a quarter is about the largest file (8 GiB).
pub const DEFAULT_MAX_BYTES_PER_RECIPIENT: u64 = 32 << 30;
/// Default for [`BlobLimits::max_files_per_recipient`].
pub const DEFAULT_MAX_FILES_PER_RECIPIENT: u64 = 1000;
/// Default for [`BlobLimits::checkpoint_bytes`]: 16 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 16 << 20;
/// Default for [`BlobLimits::uploader_share_percent`]: a quarter. One
/// sender then leaves three quarters of a recipient's file drop to everyone
/// else, and it takes four keys to fill it, each uploading the bytes for real.
pub const DEFAULT_UPLOADER_SHARE_PERCENT: u8 = 25;
/// Default for [`BlobLimits::upload_idle_timeout`]: 30 seconds, far more
/// than a working client ever pauses between two chunks, and short enough
/// that an upload left open holds its window only briefly.
pub const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`BlobLimits::max_uploads_per_key`]: two connections' worth.
pub const DEFAULT_MAX_UPLOADS_PER_KEY: u64 = 32;
/// Default for [`BlobLimits::max_uploads_per_address`]: room for a few
/// people behind one NAT, but a bound on one machine's many keys.
pub const DEFAULT_MAX_UPLOADS_PER_ADDRESS: u64 = 128;
/// An upload's window (the room it holds beyond its stored chunks) in
/// checkpoint intervals: two, so the next window is granted while the chunks
/// of the current one are still being written and a steady upload never
/// waits for room.
const WINDOW_CHECKPOINTS: u64 = 2;

/// Most blobs deleted in one store request by expiry, so a large sweep is
/// several bounded transactions rather than one huge one.
const EXPIRY_BATCH: usize = 1024;

/// Bounds on the file cache, so that no sender can take a recipient's file
/// drop from others (the relay-wide bound is the store's storage budget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLimits {
    /// Largest file accepted, in plaintext bytes (never more than the format's
    /// [`MAX_FILE_SIZE`]).
    pub max_file_size: u64,
    /// Most sealed bytes stored for one recipient, plus the windows held by
    /// uploads to it in progress.
    pub max_bytes_per_recipient: u64,
    /// Most files held for one recipient, complete or not.
    pub max_files_per_recipient: u64,
    /// The most of one recipient's file quota (its bytes and its files) that
    /// one uploader key may hold, in percent (1 to 100); for bytes never
    /// less than one file of the largest size.
    pub uploader_share_percent: u8,
    /// An upload that sends no chunk for this long gives up the room it
    /// holds; what it stored stays, and sending again takes room again if
    /// the quotas allow. One with nothing stored is forgotten.
    pub upload_idle_timeout: Duration,
    /// Uploads in progress at once from one key, over all its connections.
    pub max_uploads_per_key: u64,
    /// Uploads in progress at once from one address (IPv6: one /64), over
    /// all its keys.
    pub max_uploads_per_address: u64,
    /// A blob not updated for this long (a complete one not fetched and
    /// deleted, an upload not resumed) is deleted. Counted in whole seconds.
    pub expiry: Duration,
    /// Plaintext bytes of an upload between durability checkpoints (an fsync
    /// and a commit, then `UploadProgress`). A relay that crashes loses at
    /// most this much of each upload; a smaller value costs more fsyncs.
    pub checkpoint_bytes: u64,
}

impl BlobLimits {
    /// Chunks between checkpoints (at least one).
    pub fn checkpoint_chunks(&self) -> u64 {
        (self.checkpoint_bytes / CHUNK_LEN as u64).max(1)
    }

    /// `n` of a quota, cut to the uploader's share (rounded down, but never
    /// to nothing).
    fn share_of(&self, n: u64) -> u64 {
        let percent = u128::from(self.uploader_share_percent.clamp(1, 100));
        let share = u128::from(n) * percent / 100;
        u64::try_from(share).unwrap_or(u64::MAX).max(1)
    }

    /// The bounds the store checks an upload against. An uploader's share of
    /// a recipient's bytes is never less than one file of the largest size
    /// (within the recipient's quota), so the share refuses no file that
    /// the relay would otherwise take.
    pub fn quota(&self) -> BlobQuota {
        let largest = sealed_len(self.max_file_size.min(MAX_FILE_SIZE));
        let bytes_share = self
            .share_of(self.max_bytes_per_recipient)
            .max(largest)
            .min(self.max_bytes_per_recipient);
        BlobQuota {
            max_files: self.max_files_per_recipient,
            max_bytes: self.max_bytes_per_recipient,
            max_files_per_uploader: self.share_of(self.max_files_per_recipient),
            max_bytes_per_uploader: bytes_share,
            window: WINDOW_CHECKPOINTS.saturating_mul(self.checkpoint_chunks()),
            max_uploads_per_key: self.max_uploads_per_key,
            max_uploads_per_source: self.max_uploads_per_address,
        }
    }
}

impl Default for BlobLimits {
    fn default() -> Self {
        Self {
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_bytes_per_recipient: DEFAULT_MAX_BYTES_PER_RECIPIENT,
            max_files_per_recipient: DEFAULT_MAX_FILES_PER_RECIPIENT,
            uploader_share_percent: DEFAULT_UPLOADER_SHARE_PERCENT,
            upload_idle_timeout: DEFAULT_UPLOAD_IDLE_TIMEOUT,
            max_uploads_per_key: DEFAULT_MAX_UPLOADS_PER_KEY,
            max_uploads_per_address: DEFAULT_MAX_UPLOADS_PER_ADDRESS,
            expiry: DEFAULT_EXPIRY,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
        }
    }
}

/// Why a file-cache operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    /// The file is larger than this relay accepts; nothing was stored.
    #[error("a file of {size} bytes is larger than this relay accepts ({max} bytes)")]
    TooLarge {
        /// The refused size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The recipient's file quota, or the uploader's share of it, would be
    /// exceeded: nothing was begun, or nothing more of the upload was taken
    /// (what was checkpointed stays). The fields are what that quota held.
    #[error("a file quota is full ({files} files, {bytes} bytes stored or held)")]
    QuotaExceeded {
        /// Which quota.
        of: QuotaOf,
        /// Files it counted.
        files: u64,
        /// Sealed bytes stored or held under it.
        bytes: u64,
    },
    /// Too many uploads are in progress from this key or this address.
    #[error("too many uploads in progress from this {0}")]
    TooManyUploads(UploadsFrom),
    /// The upload sent no chunk for [`BlobLimits::upload_idle_timeout`] and
    /// gave up its room; what it had stored is durable. Beginning it again
    /// resumes it.
    #[error("the upload sent nothing for too long")]
    Lapsed,
    /// The file id is taken by another uploader's file, or one for another
    /// recipient or of another size.
    #[error("this file id belongs to another upload")]
    Conflict,
    /// No such file for this key: unknown, someone else's, or not complete.
    /// One answer for all three, so it reveals nothing about other keys' files.
    #[error("no such file")]
    NotFound,
    /// Another request for the same file (a resumption from another
    /// connection, or its deletion) took it over; this one stopped after
    /// making what it had written durable.
    #[error("another request took this file over")]
    Superseded,
    /// The file on disk is missing or shorter than its metadata says.
    #[error("stored file damaged")]
    Damaged,
    /// A file or directory operation failed (a full disk, say).
    #[error("file cache: {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: Arc<io::Error>,
    },
    /// The disk is too full for new data; nothing more of the upload was
    /// stored (what was checkpointed before stays).
    #[error("{0}")]
    OutOfSpace(crate::space::OutOfSpace),
    /// The metadata store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A blocking task stopped unexpectedly (a panic, which is a bug).
    #[error("a file cache task stopped unexpectedly")]
    Crashed,
}

impl From<StoreError> for BlobError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::BlobQuotaExceeded { of, files, bytes } => {
                Self::QuotaExceeded { of, files, bytes }
            }
            StoreError::TooManyUploads(from) => Self::TooManyUploads(from),
            StoreError::BlobConflict => Self::Conflict,
            StoreError::NoSuchBlob => Self::NotFound,
            StoreError::BlobTooLarge { size } => Self::TooLarge {
                size,
                max: MAX_FILE_SIZE,
            },
            StoreError::OutOfSpace(full) => Self::OutOfSpace(full),
            other => Self::Store(other),
        }
    }
}

fn io_error(action: &'static str) -> impl FnOnce(io::Error) -> BlobError {
    move |source| {
        if crate::space::is_out_of_space(&source) {
            return BlobError::OutOfSpace(crate::space::OutOfSpace::DISK_FULL);
        }
        BlobError::Io {
            action,
            source: Arc::new(source),
        }
    }
}

/// Runs file I/O on tokio's blocking pool, so the async runtime never waits
/// for the disk.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| BlobError::Crashed)?
}

/// The file cache. Cloning is cheap; clones share one set of claims.
#[derive(Clone)]
pub struct Blobs {
    dir: PathBuf,
    store: Store,
    limits: BlobLimits,
    claims: Arc<Claims>,
}

/// The outcome of [`Blobs::begin`].
pub enum Begun {
    /// The blob is complete already: nothing to upload.
    Complete {
        /// Its chunk count.
        chunks: u64,
    },
    /// Upload from chunk [`BlobWriter::have`] on.
    Upload(BlobWriter),
}

impl Blobs {
    /// Opens the blob directory under `data_dir`, creating it (0700) if
    /// needed. Blocking: call it before serving.
    pub fn open(data_dir: &Path, store: Store, limits: BlobLimits) -> Result<Self, BlobError> {
        let dir = data_dir.join(BLOBS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error("creating the blob directory"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("restricting the blob directory"))?;
        Ok(Self {
            dir,
            store,
            limits,
            claims: Arc::default(),
        })
    }

    /// The limits the cache was opened with.
    pub fn limits(&self) -> &BlobLimits {
        &self.limits
    }

    /// The directory holding the blob files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: FileId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Removes blob files that have no metadata (a crash between deleting a
    /// row and its file), and returns how many. Files whose name is not a
    /// file id are left alone: they are not ours. Meant for startup, before
    /// any upload can create a file whose row is not yet committed.
    pub async fn remove_orphans(&self) -> Result<usize, BlobError> {
        if self.store.keeps_chunks() {
            // The store keeps the chunks, and removes them before the
            // metadata: there are no files to sweep.
            return Ok(0);
        }
        let dir = self.dir.clone();
        let found = blocking(move || {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(io_error("listing the blob directory"))? {
                let entry = entry.map_err(io_error("listing the blob directory"))?;
                let is_file = entry
                    .file_type()
                    .map_err(io_error("listing the blob directory"))?
                    .is_file();
                let id = if is_file {
                    parse_id(&entry.file_name())
                } else {
                    None
                };
                found.push((id, entry.path()));
            }
            Ok(found)
        })
        .await?;
        let known: HashSet<FileId> = self.store.blob_ids().await?.into_iter().collect();
        let mut foreign = 0;
        let mut orphans = Vec::new();
        for (id, path) in found {
            match id {
                Some(id) if known.contains(&id) => {}
                Some(_) => orphans.push(path),
                None => foreign += 1,
            }
        }
        if foreign > 0 {
            tracing::warn!(
                foreign,
                "files in the blob directory that are not blobs were left alone"
            );
        }
        blocking(move || {
            let mut removed = 0;
            for path in orphans {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // Not fatal: an orphan only takes space, and the next
                    // start tries again.
                    Err(e) => tracing::warn!("could not remove an orphaned blob: {e}"),
                }
            }
            Ok(removed)
        })
        .await
    }

    /// Begins an upload of `id`, `size` plaintext bytes from `uploader` (at
    /// `source`) to `to`, or resumes it.
    ///
    /// It is admitted if what it still has to send fits under `to`'s quota,
    /// the uploader's share of it and the storage budget right now; then it
    /// holds room for its first window only, for as long as its
    /// [`BlobWriter`] lives, and each checkpoint moves the window on while
    /// there is room (so a sender learns at once whether its file fits, and
    /// an upload that stops holds nothing). An existing blob resumes only for
    /// the same uploader, recipient and size ([`BlobError::Conflict`]
    /// otherwise): its file is cut back to the last durable chunk, and an
    /// upload of it still running (from a connection that dropped) is stopped
    /// first.
    pub async fn begin(
        &self,
        uploader: PublicKey,
        source: std::net::IpAddr,
        id: FileId,
        to: PublicKey,
        size: u64,
    ) -> Result<Begun, BlobError> {
        self.begin_as(Claiming::TakeOver, uploader, source, id, to, size)
            .await
    }

    /// [`Blobs::begin`] for an upload that gave its room back for want of
    /// chunks and whose client goes on: only if no other request has taken
    /// the blob since ([`BlobError::Superseded`] otherwise), since the
    /// client's newest request for it must win.
    pub async fn resume_idle(
        &self,
        uploader: PublicKey,
        source: std::net::IpAddr,
        id: FileId,
        to: PublicKey,
        size: u64,
    ) -> Result<Begun, BlobError> {
        self.begin_as(Claiming::IfFree, uploader, source, id, to, size)
            .await
    }

    async fn begin_as(
        &self,
        claiming: Claiming,
        uploader: PublicKey,
        source: std::net::IpAddr,
        id: FileId,
        to: PublicKey,
        size: u64,
    ) -> Result<Begun, BlobError> {
        let max = self.limits.max_file_size.min(MAX_FILE_SIZE);
        if size > max {
            return Err(BlobError::TooLarge { size, max });
        }
        // Checked before claiming, so that nobody but the uploader can
        // interrupt an upload in progress.
        if let Some(meta) = self.store.blob(id).await? {
            if meta.uploader != uploader || meta.recipient != to || meta.size != size {
                return Err(BlobError::Conflict);
            }
            if meta.complete {
                return Ok(Begun::Complete {
                    chunks: meta.chunks(),
                });
            }
        }
        let claim = match claiming {
            Claiming::TakeOver => self.claims.claim(id).await?,
            Claiming::IfFree => self.claims.try_claim(id).ok_or(BlobError::Superseded)?,
        };
        let quota: BlobQuota = self.limits.quota();
        let begun = self
            .store
            .begin_blob(id, uploader, SourceAddr::from(source), to, size, quota)
            .await?;
        let (meta, created, mut allowed, hold) =
            (begun.meta, begun.created, begun.allowed, begun.hold);
        if meta.complete {
            return Ok(Begun::Complete {
                chunks: meta.chunks(),
            });
        }
        if let Some(sink) = self.store.chunk_sink(id)? {
            // The cluster keeps the chunks: a resumption writes on from
            // `have`, replacing whatever an interrupted upload left beyond.
            return Ok(Begun::Upload(BlobWriter {
                id,
                size,
                have: meta.have,
                allowed,
                recipient: to,
                _hold: hold,
                sink: Sink::Cluster(Box::new(sink)),
                store: self.store.clone(),
                claim,
            }));
        }
        let path = self.path(id);
        let dir = self.dir.clone();
        let opened = blocking(move || open_for_upload(&path, &dir, &meta, created)).await;
        let (file, have) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                if created {
                    // Nothing was uploaded: give the quota back at once.
                    if let Err(e) = self.store.delete_blobs(vec![id], Some(to), None).await {
                        tracing::warn!("could not undo a failed upload start: {e}");
                    }
                }
                return Err(err);
            }
        };
        if have != meta.have {
            tracing::warn!(
                recorded = meta.have,
                found = have,
                "a stored upload was shorter than recorded; resuming from what is there"
            );
            allowed = self.store.update_blob(id, have, false).await?.allowed;
        }
        Ok(Begun::Upload(BlobWriter {
            id,
            size,
            have,
            allowed,
            recipient: to,
            _hold: hold,
            sink: Sink::Disk {
                file: Arc::new(file),
                path: self.path(id),
            },
            store: self.store.clone(),
            claim,
        }))
    }

    /// Opens blob `id` for download by `owner`: only its recipient, only once
    /// complete; [`BlobError::NotFound`] otherwise, whatever the reason.
    pub async fn open_download(
        &self,
        owner: PublicKey,
        id: FileId,
    ) -> Result<BlobReader, BlobError> {
        let meta = match self.store.blob(id).await {
            Ok(Some(meta)) if meta.recipient == owner && meta.complete => meta,
            // A damaged row cannot be shown to be `owner`'s.
            Ok(_) | Err(StoreError::Corrupt) => return Err(BlobError::NotFound),
            Err(e) => return Err(e.into()),
        };
        if let Some(source) = self.store.chunk_source(id)? {
            return Ok(BlobReader {
                source: Source::Cluster(Box::new(source)),
                size: meta.size,
            });
        }
        let path = self.path(id);
        let file = blocking(move || match File::open(&path) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::error!("a complete blob has no file");
                Err(BlobError::Damaged)
            }
            Err(e) => Err(io_error("opening a blob for download")(e)),
        })
        .await?;
        Ok(BlobReader {
            source: Source::Disk(Arc::new(file)),
            size: meta.size,
        })
    }

    /// Deletes blob `id` if `owner` is its recipient, stopping an upload of
    /// it in progress; gives its quota back. Returns whether it was deleted
    /// (`false` for an unknown id and for someone else's, alike).
    pub async fn delete(&self, owner: PublicKey, id: FileId) -> Result<bool, BlobError> {
        match self.store.blob(id).await {
            Ok(Some(meta)) if meta.recipient == owner => {}
            Ok(_) | Err(StoreError::Corrupt) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let claim = self.claims.claim(id).await?;
        let deleted = self.store.delete_blobs(vec![id], Some(owner), None).await?;
        if deleted.is_empty() {
            return Ok(false);
        }
        self.remove_files(deleted).await;
        drop(claim);
        Ok(true)
    }

    /// Deletes every blob, complete or not, not updated for
    /// [`BlobLimits::expiry`] before `now_unix`, except those in use right
    /// now; returns how many were deleted.
    pub async fn expire(&self, now_unix: u64) -> Result<usize, BlobError> {
        let Some(cutoff) = now_unix.checked_sub(self.limits.expiry.as_secs()) else {
            return Ok(0);
        };
        let stale = self.store.stale_blobs(cutoff).await?;
        let mut removed = 0;
        for batch in stale.chunks(EXPIRY_BATCH) {
            // Claimed blobs are being uploaded or deleted right now: not abandoned.
            let claims: Vec<Claim> = batch
                .iter()
                .filter_map(|id| self.claims.try_claim(*id))
                .collect();
            let ids = claims.iter().map(|claim| claim.id).collect();
            let deleted = self.store.delete_blobs(ids, None, Some(cutoff)).await?;
            removed += deleted.len();
            self.remove_files(deleted).await;
            drop(claims);
        }
        Ok(removed)
    }

    /// Removes the files of blobs whose rows are deleted. A failure leaves an
    /// orphan for the next start to remove; the deletion itself stands.
    async fn remove_files(&self, ids: Vec<FileId>) {
        if self.store.keeps_chunks() {
            // Removed by the store with the metadata.
            return;
        }
        let paths: Vec<PathBuf> = ids.into_iter().map(|id| self.path(id)).collect();
        let result = blocking(move || {
            for path in paths {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("removing a deleted blob")(e)),
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            tracing::warn!("{e}; the file will be removed at the next start");
        }
    }
}

/// How a begin takes the blob's claim.
enum Claiming {
    /// Asking any holder to stop (a client's newest request wins).
    TakeOver,
    /// Only if nobody holds it.
    IfFree,
}

/// Opens (creating it if needed) the file of an upload and cuts it back to
/// the chunks that are durable; returns it with the chunk count to resume at.
fn open_for_upload(
    path: &Path,
    dir: &Path,
    meta: &BlobMeta,
    created: bool,
) -> Result<(File, u64), BlobError> {
    let existed = !created && path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(created)
        .mode(0o600)
        .open(path)
        .map_err(io_error("creating a blob"))?;
    if !existed {
        // Make the new name durable too, or a crash could lose the whole file
        // while its row says chunks are stored.
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("syncing the blob directory"))?;
    }
    let len = file
        .metadata()
        .map_err(io_error("reading a blob's length"))?
        .len();
    let mut have = meta.have;
    if len < sealed_prefix_len(meta.size, have) {
        // Only the last chunk can be short, and a file shorter than its
        // recorded prefix lacks at least that: what is there is whole chunks.
        have = (len / SEALED_CHUNK_LEN as u64).min(have);
    }
    file.set_len(sealed_prefix_len(meta.size, have))
        .map_err(io_error("cutting a blob back to its last checkpoint"))?;
    Ok((file, have))
}

/// Parses a blob file name: exactly the lowercase hex of a file id.
fn parse_id(name: &std::ffi::OsStr) -> Option<FileId> {
    let name = name.to_str()?;
    if name.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        let pair = name.get(2 * i..2 * i + 2)?;
        if pair
            .bytes()
            .any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(FileId(id))
}

/// The writing end of one upload, holding the blob's claim and the room its
/// window takes; dropping it gives both back.
pub struct BlobWriter {
    id: FileId,
    size: u64,
    have: u64,
    /// Chunks `0..allowed` may be written, as the store last said.
    allowed: u64,
    recipient: PublicKey,
    /// Declared before `claim`, so the room is given back before another
    /// request can take the blob over.
    _hold: HoldToken,
    sink: Sink,
    store: Store,
    claim: Claim,
}

/// Where an upload's chunks go.
enum Sink {
    /// The blob's file in the data dir.
    Disk { file: Arc<File>, path: PathBuf },
    /// The store's cluster.
    Cluster(Box<ChunkSink>),
}

impl BlobWriter {
    /// The file.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Its plaintext size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunks durable when the upload (re)started: the next chunk expected.
    pub fn have(&self) -> u64 {
        self.have
    }

    /// Chunks `0..allowed` may be written before a checkpoint moves the
    /// upload's window on.
    pub fn allowed(&self) -> u64 {
        self.allowed
    }

    /// Completes when another request wants this blob: the upload should make
    /// what it wrote durable and stop.
    pub fn superseded(&self) -> WaitForCancellationFuture<'_> {
        self.claim.token.cancelled()
    }

    /// Writes sealed chunk `index` at its place. The caller has checked its
    /// length. Not durable until a [`BlobWriter::checkpoint`] covers it.
    pub async fn write(&self, index: u64, data: Vec<u8>) -> Result<(), BlobError> {
        self.write_run(index, vec![data]).await
    }

    /// Writes sealed chunks `first, first + 1, …` at their places, in one trip
    /// to the blocking pool and after one free-space check for all of them.
    /// The caller has checked their lengths. Not durable until a
    /// [`BlobWriter::checkpoint`] covers them.
    pub async fn write_run(&self, first: u64, run: Vec<Vec<u8>>) -> Result<(), BlobError> {
        let file = match &self.sink {
            Sink::Disk { file, .. } => Arc::clone(file),
            Sink::Cluster(sink) => return Ok(sink.write_run(first, run).await?),
        };
        let space = self.store.space().clone();
        blocking(move || {
            let len = run.iter().map(|data| data.len() as u64).sum();
            space.check(len).map_err(BlobError::OutOfSpace)?;
            for (index, data) in (first..).zip(&run) {
                file.write_all_at(data, sealed_offset(index))
                    .map_err(io_error("writing a chunk"))?;
            }
            Ok(())
        })
        .await
    }

    /// Makes chunks `0..have` durable (fsync), then records so (commit), with
    /// `complete` as the end of the upload. Every chunk below `have` must
    /// have been written. Returns how many chunks may now have been written
    /// in all: the window moved on if the quotas left room.
    pub async fn checkpoint(&self, have: u64, complete: bool) -> Result<Window, BlobError> {
        match &self.sink {
            Sink::Disk { file, .. } => {
                let file = Arc::clone(file);
                blocking(move || file.sync_data().map_err(io_error("syncing a blob"))).await?;
            }
            Sink::Cluster(sink) => sink.settle(have).await?,
        }
        match self.store.update_blob(self.id, have, complete).await {
            Ok(window) => Ok(window),
            Err(StoreError::NoSuchBlob) => {
                if let Sink::Cluster(sink) = &self.sink {
                    // Deleted (through another node) while this upload ran:
                    // what it wrote since belongs to nobody.
                    if let Err(e) = sink.purge().await {
                        tracing::warn!("could not remove the chunks of a deleted upload: {e}");
                    }
                }
                Err(BlobError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the blob, row then file, for an upload that stopped before any
    /// chunk of it was durable: it holds nothing worth keeping, and it would
    /// still count as one of its recipient's files.
    pub async fn forget(&self) -> Result<(), BlobError> {
        let deleted = self
            .store
            .delete_blobs(vec![self.id], Some(self.recipient), None)
            .await?;
        let Sink::Disk { path, .. } = &self.sink else {
            return Ok(());
        };
        if deleted.is_empty() {
            return Ok(());
        }
        let path = path.clone();
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing a forgotten upload")(e)),
        })
        .await
    }
}

/// The reading end of one complete blob.
pub struct BlobReader {
    source: Source,
    size: u64,
}

/// Where a download's chunks come from.
enum Source {
    Disk(Arc<File>),
    Cluster(Box<ChunkSource>),
}

/// Chunks read by [`BlobReader::read`].
pub struct ReadChunks {
    /// The sealed chunks, in order.
    pub chunks: Vec<Vec<u8>>,
    /// The file ended before the chunks asked for: it is damaged.
    pub damaged: bool,
}

impl BlobReader {
    /// The blob's chunk count.
    pub fn chunks(&self) -> u64 {
        chunk_count(self.size)
    }

    /// Reads up to `n` sealed chunks from `first` by position, in one trip
    /// to the blocking pool. Stops short, with `damaged` set, where the file
    /// ends before them.
    pub async fn read(&self, first: u64, n: u64) -> Result<ReadChunks, BlobError> {
        let size = self.size;
        let file = match &self.source {
            Source::Disk(file) => Arc::clone(file),
            Source::Cluster(source) => {
                let mut chunks = Vec::new();
                for index in first..first.saturating_add(n).min(chunk_count(size)) {
                    match source.read(size, index).await? {
                        Some(chunk) => chunks.push(chunk),
                        None => {
                            tracing::error!("a complete blob lacks a chunk in the cluster");
                            return Ok(ReadChunks {
                                chunks,
                                damaged: true,
                            });
                        }
                    }
                }
                return Ok(ReadChunks {
                    chunks,
                    damaged: false,
                });
            }
        };
        blocking(move || {
            let mut chunks = Vec::new();
            for index in first..first.saturating_add(n) {
                let Some(len) = sealed_chunk_len(size, index) else {
                    break;
                };
                let mut buf = vec![0; len];
                match file.read_exact_at(&mut buf, sealed_offset(index)) {
                    Ok(()) => chunks.push(buf),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        tracing::error!("a complete blob is shorter than its metadata says");
                        return Ok(ReadChunks {
                            chunks,
                            damaged: true,
                        });
                    }
                    Err(e) => return Err(io_error("reading a chunk")(e)),
                }
            }
            Ok(ReadChunks {
                chunks,
                damaged: false,
            })
        })
        .await
    }
}

/// The claims on blobs currently in use, by file id. Entries exist only while
/// somebody holds or waits for a claim.
#[derive(Default)]
struct Claims {
    // A std Mutex: held for map operations only, never across an `.await`.
    slots: Mutex<HashMap<FileId, Arc<Slot>>>,
}

struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// The token of the newest claimant, cancelled when a newer one comes.
    newest: Mutex<CancellationToken>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            lock: Arc::new(tokio::sync::Mutex::new(())),
            newest: Mutex::new(CancellationToken::new()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map or token operation: nothing is
    // left half-done by a panic, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Claims {
    /// Claims `id`, asking its holder (if any) to stop and waiting until it
    /// has. Fails with [`BlobError::Superseded`] if a newer claimant came
    /// while this one waited: the newest wins.
    async fn claim(self: &Arc<Self>, id: FileId) -> Result<Claim, BlobError> {
        let token = CancellationToken::new();
        let slot = {
            let mut slots = lock(&self.slots);
            let slot = Arc::clone(slots.entry(id).or_default());
            let previous = std::mem::replace(&mut *lock(&slot.newest), token.clone());
            previous.cancel();
            slot
        };
        let mutex = Arc::clone(&slot.lock);
        // Built before waiting, so a waiter that is dropped still cleans up.
        let mut claim = Claim {
            claims: Arc::clone(self),
            id,
            slot: Some(slot),
            guard: None,
            token,
        };
        claim.guard = Some(mutex.lock_owned().await);
        if claim.token.is_cancelled() {
            return Err(BlobError::Superseded);
        }
        Ok(claim)
    }

    /// Claims `id` only if nobody holds it.
    fn try_claim(self: &Arc<Self>, id: FileId) -> Option<Claim> {
        let token = CancellationToken::new();
        let (slot, guard) = {
            let mut slots = lock(&self.slots);
            let slot = Arc::clone(slots.entry(id).or_default());
            let guard = Arc::clone(&slot.lock).try_lock_owned().ok();
            if guard.is_some() {
                *lock(&slot.newest) = token.clone();
            }
            (slot, guard)
        };
        let claim = Claim {
            claims: Arc::clone(self),
            id,
            slot: Some(slot),
            guard,
            token,
        };
        // Dropped without the lock, an unsuccessful claim just cleans up.
        claim.guard.is_some().then_some(claim)
    }
}

/// The right to change one blob, held until dropped.
struct Claim {
    claims: Arc<Claims>,
    id: FileId,
    /// Always `Some` until dropped: `drop` lets go of it under the map's lock.
    slot: Option<Arc<Slot>>,
    guard: Option<OwnedMutexGuard<()>>,
    token: CancellationToken,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut slots = lock(&self.claims.slots);
        self.guard.take();
        // Every claim lets go of its slot under the lock, so the last one to
        // do so sees the map's reference alone, and removes the entry.
        self.slot.take();
        if slots
            .get(&self.id)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests;
