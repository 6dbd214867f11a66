//! File drop on one connection: uploads, downloads and deletions.
//!
//! An upload is a stream of `UploadChunk`s that are not answered one by one, so
//! the relay checks each (begun on this connection, the next index, the exact
//! sealed length for that index) before accepting it, and closes the connection
//! on the first that is wrong: after that, nothing on the stream can be trusted
//! to mean what the client thought.
//!
//! Memory stays bounded whatever the file sizes. Each upload has a disk task
//! fed by a queue of a few chunks: the reading task hands a chunk over and goes
//! on reading, and when the disk falls behind the queue fills and the reader
//! (hence the client, through TCP) waits. The disk task writes each chunk on
//! the blocking pool, and every `checkpoint_bytes` (16 MiB) it starts a checkpoint
//! (fsync, commit `have`, `UploadProgress`) that runs while the next chunks
//! are written. Each chunk received holds its bytes of the connection's budget
//! (`crate::budget`) until it is on disk. Each download reads a few chunks per
//! trip to the blocking pool and queues them for the writer; their bytes are
//! reserved from the budget before the read and travel with the chunks until
//! they are written, so a slow reader holds no more than the budget allows.
//!
//! When the connection ends, for whatever reason (including the relay's
//! shutdown), every chunk already received is still written and checkpointed,
//! so the upload resumes exactly after it; downloads simply stop, and the
//! client resumes them with `from`.

use std::collections::HashMap;
use std::sync::Arc;

use sotto_crypto::file::{chunk_count, sealed_chunk_len, FileId, SEALED_CHUNK_LEN};
use sotto_crypto::wire::{ErrorCode, RelayMsg};
use sotto_keys::PublicKey;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{refusal, Closed, Outbox, Outgoing, Session};
use crate::blobs::{Begun, BlobError, BlobReader, BlobWriter};
use crate::budget::{self, Budget, Reservation};

/// Uploads in progress at once on one connection.
pub(super) const MAX_UPLOADS: usize = 16;
/// Downloads in progress at once on one connection.
pub(super) const MAX_DOWNLOADS: usize = 16;
/// Chunks queued for an upload's disk task before the reader waits.
const UPLOAD_QUEUE: usize = 8;
/// Chunks read per trip to the blocking pool by a download.
const READ_BATCH: u64 = 4;

/// The file-drop state of one connection.
pub(super) struct Files {
    uploads: HashMap<FileId, Upload>,
    /// Every upload's disk task, including those finishing after `UploadEnd`.
    disk_tasks: JoinSet<()>,
    downloads: JoinSet<()>,
    budget: Budget,
}

/// An upload begun on this connection, as the reading task sees it.
struct Upload {
    size: u64,
    /// The index the next chunk must have.
    next: u64,
    queue: mpsc::Sender<ToDisk>,
    /// Why the disk task stopped, if it failed.
    failure: oneshot::Receiver<BlobError>,
    /// The disk filled up: the client has been told, and the rest of the
    /// stream is read and dropped until its `UploadEnd`, which is refused.
    /// The connection stays, and so does what was checkpointed.
    out_of_space: bool,
}

enum ToDisk {
    /// A chunk, holding its bytes of the budget until it is written.
    Chunk(Vec<u8>, Reservation),
    /// Every chunk has been queued: make the blob complete and answer `req`.
    Finish { req: u32 },
}

impl Files {
    pub(super) fn new(budget: Budget) -> Self {
        Self {
            uploads: HashMap::new(),
            disk_tasks: JoinSet::new(),
            downloads: JoinSet::new(),
            budget,
        }
    }

    /// Whether a download is streaming.
    pub(super) fn downloading(&mut self) -> bool {
        while self.downloads.try_join_next().is_some() {}
        !self.downloads.is_empty()
    }

    /// Ends the connection's file work: uploads write and checkpoint what was
    /// received and stop; downloads, whose stop token the caller has
    /// cancelled, stop. Returns when every task has.
    pub(super) async fn close(&mut self) {
        // Dropping the queues tells the disk tasks the stream has ended.
        self.uploads.clear();
        while self.disk_tasks.join_next().await.is_some() {}
        while self.downloads.join_next().await.is_some() {}
    }
}

impl Session {
    pub(super) async fn upload_begin(
        &mut self,
        req: u32,
        file_id: FileId,
        to: PublicKey,
        size: u64,
    ) -> RelayMsg {
        while self.files.disk_tasks.try_join_next().is_some() {}
        // Beginning an upload again on the same connection restarts it from
        // its last checkpoint; the old stream's disk task makes that durable
        // and lets go of the blob.
        let restarted = self.files.uploads.remove(&file_id).is_some();
        if !restarted && self.files.uploads.len() >= MAX_UPLOADS {
            return RelayMsg::Error {
                req,
                code: ErrorCode::RateLimited,
                detail: format!("at most {MAX_UPLOADS} uploads at once on one connection"),
            };
        }
        let writer = match self
            .shared
            .blobs
            .begin(self.client, file_id, to, size)
            .await
        {
            Ok(Begun::Complete { chunks }) => {
                return RelayMsg::UploadState {
                    req,
                    file_id,
                    have: chunks,
                }
            }
            Ok(Begun::Upload(writer)) => writer,
            Err(e) => return blob_refusal(req, &e),
        };
        let have = writer.have();
        let (queue, chunks) = mpsc::channel(UPLOAD_QUEUE);
        let (failed, failure) = oneshot::channel();
        let every = self.shared.blobs.limits().checkpoint_chunks();
        self.files.disk_tasks.spawn(store_upload(
            writer,
            chunks,
            Reporter {
                out: self.tx.clone(),
                closing: self.shutdown.clone(),
            },
            failed,
            every,
        ));
        self.files.uploads.insert(
            file_id,
            Upload {
                size,
                next: have,
                queue,
                failure,
                out_of_space: false,
            },
        );
        RelayMsg::UploadState { req, file_id, have }
    }

    pub(super) async fn upload_chunk(
        &mut self,
        file_id: FileId,
        index: u64,
        data: Vec<u8>,
        held: Reservation,
    ) -> Result<(), Closed> {
        let Some(upload) = self.files.uploads.get_mut(&file_id) else {
            return Err(Closed::Protocol(
                "UploadChunk for a file with no upload begun on this connection".into(),
            ));
        };
        if index != upload.next {
            return Err(Closed::Protocol(
                format!(
                    "UploadChunk {index} where chunk {} was expected",
                    upload.next
                )
                .into(),
            ));
        }
        match sealed_chunk_len(upload.size, index) {
            None => {
                return Err(Closed::Protocol(
                    format!("UploadChunk {index} is past the last chunk").into(),
                ))
            }
            Some(len) if len != data.len() => {
                return Err(Closed::Protocol(
                    format!(
                        "UploadChunk {index} has {} bytes where {len} belong",
                        data.len()
                    )
                    .into(),
                ))
            }
            Some(_) => {}
        }
        upload.next += 1;
        if upload.out_of_space {
            return Ok(());
        }
        // Over the key's upload rate: stop reading for a while, which slows
        // the client down through TCP.
        let pause = self.limit.upload(data.len());
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
        if upload.queue.send(ToDisk::Chunk(data, held)).await.is_ok() {
            return Ok(());
        }
        // The disk task stopped; it said why before letting go of its queue.
        let (_, gone) = oneshot::channel();
        let reason = std::mem::replace(&mut upload.failure, gone)
            .await
            .unwrap_or(BlobError::Crashed);
        if let BlobError::OutOfSpace(_) = reason {
            // Not the client's fault, and nothing it sent is in doubt: say
            // so at once and keep the connection for its other requests.
            upload.out_of_space = true;
            let notice = RelayMsg::Error {
                req: 0,
                code: ErrorCode::OutOfSpace,
                detail: format!("{}; begin the upload again to resume later", out_of_space()),
            };
            let _ = self.tx.send(notice.into()).await;
            return Ok(());
        }
        self.files.uploads.remove(&file_id);
        Err(Closed::Upload(reason))
    }

    /// Returns the answer, or `None` when the disk task will give it.
    pub(super) async fn upload_end(&mut self, req: u32, file_id: FileId) -> Option<RelayMsg> {
        let Some(upload) = self.files.uploads.remove(&file_id) else {
            // Not in progress here: it may be finished already (the client
            // lost the connection before it heard `UploadDone`).
            return Some(match self.shared.store.blob(file_id).await {
                Ok(Some(meta)) if meta.uploader == self.client && meta.complete => {
                    RelayMsg::UploadDone { req, file_id }
                }
                Ok(_) => RelayMsg::Error {
                    req,
                    code: ErrorCode::BadRequest,
                    detail: "no upload of this file is in progress on this connection".into(),
                },
                Err(e) => refusal(req, e).unwrap_or_else(|_| internal(req)),
            });
        };
        if upload.out_of_space {
            return Some(RelayMsg::Error {
                req,
                code: ErrorCode::OutOfSpace,
                detail: out_of_space(),
            });
        }
        let chunks = chunk_count(upload.size);
        if upload.next != chunks {
            let detail = format!("only {} of {chunks} chunks were sent", upload.next);
            self.files.uploads.insert(file_id, upload);
            return Some(RelayMsg::Error {
                req,
                code: ErrorCode::BadRequest,
                detail,
            });
        }
        if upload.queue.send(ToDisk::Finish { req }).await.is_ok() {
            return None;
        }
        let reason = upload.failure.await.unwrap_or(BlobError::Crashed);
        Some(blob_refusal(req, &reason))
    }

    /// Returns the answer, or `None` when the download task will give it.
    pub(super) async fn download(
        &mut self,
        req: u32,
        file_id: FileId,
        from: u64,
    ) -> Option<RelayMsg> {
        if self.files.downloading() && self.files.downloads.len() >= MAX_DOWNLOADS {
            return Some(RelayMsg::Error {
                req,
                code: ErrorCode::RateLimited,
                detail: format!("at most {MAX_DOWNLOADS} downloads at once on one connection"),
            });
        }
        let reader = match self.shared.blobs.open_download(self.client, file_id).await {
            Ok(reader) => reader,
            Err(e) => return Some(blob_refusal(req, &e)),
        };
        if from > reader.chunks() {
            return Some(RelayMsg::Error {
                req,
                code: ErrorCode::BadRequest,
                detail: format!(
                    "Download from chunk {from}, past the last of {}",
                    reader.chunks()
                ),
            });
        }
        self.files.downloads.spawn(stream_download(
            reader,
            Download { req, file_id, from },
            self.tx.clone(),
            self.files.budget.clone(),
            self.shutdown.clone(),
        ));
        None
    }

    pub(super) async fn delete_blob(&mut self, req: u32, file_id: FileId) -> RelayMsg {
        match self.shared.blobs.delete(self.client, file_id).await {
            Ok(deleted) => RelayMsg::BlobDeleted { req, deleted },
            Err(e) => blob_refusal(req, &e),
        }
    }
}

/// The answer to request `req` that failed with `e`. Failures of the relay
/// itself are logged here, without the file id.
fn blob_refusal(req: u32, e: &BlobError) -> RelayMsg {
    let (code, detail) = match e {
        BlobError::TooLarge { .. } => (ErrorCode::TooLarge, e.to_string()),
        BlobError::QuotaExceeded { .. } => (
            ErrorCode::QuotaExceeded,
            "the recipient's file quota is full".to_owned(),
        ),
        BlobError::Conflict => (
            ErrorCode::BadRequest,
            "this file id belongs to another upload".to_owned(),
        ),
        BlobError::NotFound => (ErrorCode::BadRequest, "no such file".to_owned()),
        BlobError::Superseded => (
            ErrorCode::Internal,
            "another request for this file came first; try again".to_owned(),
        ),
        BlobError::Damaged => (ErrorCode::Internal, "stored file damaged".to_owned()),
        BlobError::OutOfSpace(_) => (ErrorCode::OutOfSpace, out_of_space()),
        BlobError::Store(crate::store::StoreError::Closed) => (
            ErrorCode::ShuttingDown,
            "the relay is shutting down".to_owned(),
        ),
        BlobError::Io { .. } | BlobError::Store(_) | BlobError::Crashed => {
            tracing::warn!("file cache failure: {e}");
            return internal(req);
        }
    };
    RelayMsg::Error { req, code, detail }
}

/// What a client is told when the relay's disk is full.
pub(super) fn out_of_space() -> String {
    "disk full".to_owned()
}

fn internal(req: u32) -> RelayMsg {
    RelayMsg::Error {
        req,
        code: ErrorCode::Internal,
        detail: "the relay could not do this; try again later".to_owned(),
    }
}

/// An upload's disk task: writes the chunks the reader queues, checkpoints,
/// completes. On failure it reports why through `failed` before it drops its
/// queue, so the reader that finds the queue closed can say why.
async fn store_upload(
    writer: BlobWriter,
    mut chunks: mpsc::Receiver<ToDisk>,
    report: Reporter,
    failed: oneshot::Sender<BlobError>,
    checkpoint_every: u64,
) {
    let mut disk = Disk {
        checkpoint_every,
        have: writer.have(),
        durable: writer.have(),
        writer: Arc::new(writer),
        checkpoint: None,
        report,
    };
    let result = disk.run(&mut chunks).await;
    // A checkpoint still running holds the blob; let it end first.
    let settled = disk.settle().await;
    match result.and(settled) {
        Ok(()) => {}
        Err(BlobError::Superseded) => {
            tracing::debug!("an upload was taken over by another request");
            let _ = failed.send(BlobError::Superseded);
        }
        Err(e) => {
            tracing::warn!("an upload stopped: {e}");
            let _ = failed.send(e);
        }
    }
    drop(disk);
    drop(chunks);
}

struct Disk {
    writer: Arc<BlobWriter>,
    /// Chunks between checkpoints.
    checkpoint_every: u64,
    /// Chunks written (not necessarily durable).
    have: u64,
    /// Chunks covered by the last checkpoint started.
    durable: u64,
    checkpoint: Option<JoinHandle<Result<(), BlobError>>>,
    report: Reporter,
}

/// How an upload's tasks talk to the client.
#[derive(Clone)]
struct Reporter {
    out: Outbox,
    /// Cancelled when the connection is ending.
    closing: CancellationToken,
}

impl Reporter {
    /// Queues `msg` for the client, waiting for room only while that is
    /// worth it: not once the blob is wanted elsewhere, nor once the
    /// connection is ending (then only if there is room at once). A client
    /// that does not read must not keep its blob claimed or its connection
    /// from closing.
    async fn tell(&self, msg: RelayMsg, writer: &BlobWriter) {
        let room = tokio::select! {
            // Room first: a queue with room takes the message whatever else.
            biased;
            room = self.out.reserve() => room,
            _ = writer.superseded() => return,
            _ = self.closing.cancelled() => {
                let _ = self.out.try_send(msg.into());
                return;
            }
        };
        if let Ok(room) = room {
            room.send(msg.into());
        }
    }
}

impl Disk {
    async fn run(&mut self, chunks: &mut mpsc::Receiver<ToDisk>) -> Result<(), BlobError> {
        loop {
            let next = tokio::select! {
                next = chunks.recv() => next,
                _ = self.writer.superseded() => {
                    // Whoever took over reads `have` once we let go: leave
                    // them every chunk already accepted from the client.
                    while let Ok(next) = chunks.try_recv() {
                        if let Some(req) = self.queued(next, chunks).await? {
                            return self.finish(req).await;
                        }
                    }
                    self.settle().await?;
                    self.checkpoint_now().await?;
                    return Err(BlobError::Superseded);
                }
            };
            match next {
                // Chunks queued behind it go to disk together: one trip to
                // the blocking pool (and one free-space check) for all.
                Some(next) => {
                    if let Some(req) = self.queued(next, chunks).await? {
                        return self.finish(req).await;
                    }
                }
                None => {
                    // The connection is ending: keep every chunk received.
                    self.settle().await?;
                    if self.checkpoint_now().await? {
                        // The client may be gone or not reading: best effort.
                        let progress = RelayMsg::UploadProgress {
                            file_id: self.writer.id(),
                            have: self.have,
                        };
                        self.report.tell(progress, &self.writer).await;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Writes `first` and the chunks queued behind it in one go; returns the
    /// `req` of a `Finish` found among them (after writing what came first).
    async fn queued(
        &mut self,
        first: ToDisk,
        chunks: &mut mpsc::Receiver<ToDisk>,
    ) -> Result<Option<u32>, BlobError> {
        let mut run = Vec::new();
        let mut held = Vec::new();
        let mut finish = None;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                ToDisk::Chunk(data, bytes) => {
                    run.push(data);
                    held.push(bytes);
                }
                ToDisk::Finish { req } => {
                    finish = Some(req);
                    break;
                }
            }
            if run.len() < UPLOAD_QUEUE {
                next = chunks.try_recv().ok();
            }
        }
        if !run.is_empty() {
            self.write_run(run).await?;
        }
        drop(held);
        Ok(finish)
    }

    /// Writes consecutive chunks from the next index on, and starts a
    /// checkpoint when one is due.
    /// A run that crosses a checkpoint is split there, so checkpoints fall
    /// every `checkpoint_every` chunks exactly.
    async fn write_run(&mut self, mut run: Vec<Vec<u8>>) -> Result<(), BlobError> {
        while !run.is_empty() {
            let to_checkpoint = self.checkpoint_every - (self.have - self.durable);
            let take = usize::try_from(to_checkpoint).map_or(run.len(), |n| n.min(run.len()));
            let rest = run.split_off(take);
            let n = u64::try_from(run.len()).unwrap_or(u64::MAX);
            self.writer.write_run(self.have, run).await?;
            self.have += n;
            run = rest;
            if self.have - self.durable >= self.checkpoint_every {
                self.settle().await?;
                self.durable = self.have;
                self.checkpoint = Some(tokio::spawn(checkpoint(
                    Arc::clone(&self.writer),
                    self.have,
                    self.report.clone(),
                )));
            }
        }
        Ok(())
    }

    /// Makes the blob durable and complete, and answers `UploadEnd` `req`.
    async fn finish(&mut self, req: u32) -> Result<(), BlobError> {
        let file_id = self.writer.id();
        let done = match self.settle().await {
            Ok(()) => self.writer.checkpoint(self.have, true).await,
            Err(e) => Err(e),
        };
        let answer = match &done {
            Ok(()) => RelayMsg::UploadDone { req, file_id },
            Err(e) => blob_refusal(req, e),
        };
        self.report.tell(answer, &self.writer).await;
        done
    }

    /// Waits for the checkpoint in flight, if any.
    async fn settle(&mut self) -> Result<(), BlobError> {
        match self.checkpoint.take() {
            Some(task) => task.await.map_err(|_| BlobError::Crashed)?,
            None => Ok(()),
        }
    }

    /// Makes every chunk written durable, if some are not yet; says whether
    /// it had to. Call it with no checkpoint in flight.
    async fn checkpoint_now(&mut self) -> Result<bool, BlobError> {
        if self.have == self.durable {
            return Ok(false);
        }
        self.writer.checkpoint(self.have, false).await?;
        self.durable = self.have;
        Ok(true)
    }
}

/// Makes chunks `0..have` durable, then tells the client.
async fn checkpoint(writer: Arc<BlobWriter>, have: u64, report: Reporter) -> Result<(), BlobError> {
    writer.checkpoint(have, false).await?;
    let progress = RelayMsg::UploadProgress {
        file_id: writer.id(),
        have,
    };
    report.tell(progress, &writer).await;
    Ok(())
}

/// What a download was asked for.
struct Download {
    req: u32,
    file_id: FileId,
    from: u64,
}

/// Streams chunks `from..` of a blob, then `DownloadEnd`; on a short file,
/// what is there and then an error. Stops when the connection ends.
async fn stream_download(
    reader: BlobReader,
    ask: Download,
    out: Outbox,
    budget: Budget,
    stop: CancellationToken,
) {
    let Download { req, file_id, from } = ask;
    let send = |msg: Outgoing| {
        let out = out.clone();
        let stop = stop.clone();
        async move {
            tokio::select! {
                sent = out.send(msg) => sent.is_ok(),
                _ = stop.cancelled() => false,
            }
        }
    };
    let chunks = reader.chunks();
    let mut index = from;
    while index < chunks {
        let n = (chunks - index).min(READ_BATCH);
        // `n` is at most READ_BATCH.
        let most = usize::try_from(n).unwrap_or(1) * budget::charge(SEALED_CHUNK_LEN);
        let mut room = tokio::select! {
            room = budget.reserve(most) => room,
            _ = stop.cancelled() => return,
        };
        let read = match reader.read(index, n).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!("a download failed: {e}");
                let _ = send(internal(req).into()).await;
                return;
            }
        };
        for data in read.chunks {
            let held = room.split(budget::charge(data.len())).unwrap_or_default();
            let msg = Outgoing::holding(
                RelayMsg::DownloadChunk {
                    file_id,
                    index,
                    data: serde_bytes::ByteBuf::from(data),
                },
                held,
            );
            if !send(msg).await {
                return;
            }
            index += 1;
        }
        if read.damaged {
            let damaged = RelayMsg::Error {
                req,
                code: ErrorCode::Internal,
                detail: "stored file damaged".to_owned(),
            };
            let _ = send(damaged.into()).await;
            return;
        }
    }
    let _ = send(RelayMsg::DownloadEnd { req, file_id }.into()).await;
}
