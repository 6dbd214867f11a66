//! Blob metadata: the store's half of the file cache.
//!
//! Changes go through the writer thread like every other write, so an upload's
//! checkpoint is group committed with whatever else is pending; reads run on
//! the blocking pool. What a row means and when it may change is decided by
//! `crate::blobs`, which holds the files; this module only keeps the rows and
//! the usage per recipient and per uploader consistent with each other in one
//! transaction, and hands out the holds of uploads in progress (`holds`).

use redb::ReadableTable;
use sotto_crypto::file::{FileId, MAX_FILE_SIZE};
use sotto_keys::PublicKey;
use tokio::sync::oneshot;

use super::codec::{decode_blob, BlobUsage, BLOBS, BLOB_SHARES, BLOB_USAGE};
use super::embedded::{blocking, RedbStore};
use super::holds::HoldToken;
use super::writer::{self, BlobBegin, Change, Request};
use super::{BlobBegun, BlobMeta, BlobQuota, SourceAddr, StoreError, Window};

impl RedbStore {
    /// Begins an upload of blob `id`, `size` bytes from `uploader` (at
    /// `source`) for `to`: records a new blob, or finds the existing one for
    /// a resumption. Admitted only if everything it still has to send fits
    /// now under `to`'s quota, the uploader's share of it and the storage
    /// budget, and the uploader's key and address have fewer than their
    /// most uploads in progress; then it holds room for its first window
    /// (`quota.window` chunks) while [`BlobBegun::hold`] lives. Returns once
    /// committed.
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
        if size > MAX_FILE_SIZE {
            return Err(StoreError::BlobTooLarge { size });
        }
        let hold = HoldToken::new(id.0, &self.inner.released);
        let begun = self
            .ask(|reply| {
                Request::Change(Change::BlobBegin {
                    begin: BlobBegin {
                        id: id.0,
                        uploader: *uploader.as_bytes(),
                        to: *to.as_bytes(),
                        size,
                        quota,
                        source,
                        alive: hold.watch(),
                    },
                    reply,
                })
            })
            .await?;
        Ok(BlobBegun {
            meta: begun.meta,
            created: begun.created,
            allowed: begun.allowed,
            hold,
        })
    }

    /// Records that chunks `0..have` of blob `id` are durably on disk, and
    /// with `complete` that the upload is finished (then `have` must be the
    /// chunk count). Refreshes the blob's `updated` time if it progressed.
    /// Moves the window of the upload that holds it on, as far as the
    /// bounds allow, and returns how many chunks that upload may now have
    /// written in all. Returns once committed.
    pub async fn update_blob(
        &self,
        id: FileId,
        have: u64,
        complete: bool,
    ) -> Result<Window, StoreError> {
        self.ask(|reply| {
            Request::Change(Change::BlobUpdate {
                id: id.0,
                have,
                complete,
                reply,
            })
        })
        .await
    }

    /// Deletes those of `ids` that are stored, addressed to `owner` (any
    /// recipient if `None`) and, with `updated_at_or_before`, not updated
    /// after that time; gives their quota back and returns the ids deleted,
    /// once committed. The files are the caller's to remove.
    pub async fn delete_blobs(
        &self,
        ids: Vec<FileId>,
        owner: Option<PublicKey>,
        updated_at_or_before: Option<u64>,
    ) -> Result<Vec<FileId>, StoreError> {
        if ids.is_empty() {
            self.db()?;
            return Ok(Vec::new());
        }
        let deleted = self
            .ask(|reply| {
                Request::Change(Change::BlobDelete {
                    ids: ids.iter().map(|id| id.0).collect(),
                    owner: owner.map(|key| *key.as_bytes()),
                    updated_at_or_before,
                    reply,
                })
            })
            .await?;
        Ok(deleted.into_iter().map(FileId).collect())
    }

    /// The metadata of blob `id`, if it is stored.
    pub async fn blob(&self, id: FileId) -> Result<Option<BlobMeta>, StoreError> {
        let db = self.db()?;
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(BLOBS)?;
            let meta = table
                .get(&id.0)?
                .map(|guard| decode_blob(guard.value()))
                .transpose()?;
            Ok(meta)
        })
        .await
    }

    /// Every stored blob id, damaged rows included (for finding files that
    /// have no row).
    pub async fn blob_ids(&self) -> Result<Vec<FileId>, StoreError> {
        let db = self.db()?;
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(BLOBS)?;
            let mut ids = Vec::new();
            for item in table.iter()? {
                let (id, _) = item?;
                ids.push(FileId(id.value()));
            }
            Ok(ids)
        })
        .await
    }

    /// Blobs not updated after `updated_at_or_before` (complete or not), and
    /// damaged rows, which nothing else would ever remove.
    pub async fn stale_blobs(&self, updated_at_or_before: u64) -> Result<Vec<FileId>, StoreError> {
        let db = self.db()?;
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(BLOBS)?;
            let mut ids = Vec::new();
            for item in table.iter()? {
                let (id, value) = item?;
                let stale = decode_blob(value.value())
                    .map_or(true, |meta| meta.updated <= updated_at_or_before);
                if stale {
                    ids.push(FileId(id.value()));
                }
            }
            Ok(ids)
        })
        .await
    }

    /// `(files, sealed bytes stored)` for `recipient`, as committed; the
    /// holds of uploads in progress are not in it.
    pub async fn blob_usage(&self, recipient: PublicKey) -> Result<(u64, u64), StoreError> {
        let db = self.db()?;
        let recipient = *recipient.as_bytes();
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(BLOB_USAGE)?;
            let stored = table
                .get(&recipient)?
                .map(|guard| BlobUsage::decode(guard.value()));
            let usage = match stored {
                None => BlobUsage::default(),
                Some(Ok(usage)) => usage,
                Some(Err(_)) => writer::recount_blobs(&txn.open_table(BLOBS)?, |meta| {
                    *meta.recipient.as_bytes() == recipient
                })
                .map_err(StoreError::from)?,
            };
            Ok((usage.files, usage.bytes))
        })
        .await
    }

    /// `(files, sealed bytes stored)` for `recipient` that came from
    /// `uploader`, as committed.
    pub async fn blob_share(
        &self,
        recipient: PublicKey,
        uploader: PublicKey,
    ) -> Result<(u64, u64), StoreError> {
        let db = self.db()?;
        let key = (*recipient.as_bytes(), *uploader.as_bytes());
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(BLOB_SHARES)?;
            let stored = table
                .get(&key)?
                .map(|guard| BlobUsage::decode(guard.value()));
            let usage = match stored {
                None => BlobUsage::default(),
                Some(Ok(usage)) => usage,
                Some(Err(_)) => writer::recount_blobs(&txn.open_table(BLOBS)?, |meta| {
                    (*meta.recipient.as_bytes(), *meta.uploader.as_bytes()) == key
                })
                .map_err(StoreError::from)?,
            };
            Ok((usage.files, usage.bytes))
        })
        .await
    }

    /// Submits a request built around a fresh reply channel and waits for
    /// its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(request(reply)).await?;
        answer.await.map_err(|_| StoreError::Crashed)?
    }
}
