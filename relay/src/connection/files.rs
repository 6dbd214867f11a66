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
//!
//! An upload holds room only while it sends (see `store::holds`): its disk
//! task writes no further than the window the store granted, asks for the
//! next one at each checkpoint, and when none is left (the recipient's quota,
//! the uploader's share of it or the storage budget is used up) the client is
//! told `QuotaExceeded` or `OutOfSpace` and the rest of that upload's stream is
//! dropped, as for a full disk. A disk task that receives no chunk for
//! `upload_idle_timeout` makes what it has durable and gives its room back
//! (forgetting the upload altogether if nothing of it was durable); if the
//! client then goes on, the upload is begun again in place, from exactly where
//! it stopped, if the quotas still allow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sotto_crypto::file::{chunk_count, sealed_chunk_len, FileId, SEALED_CHUNK_LEN};
use sotto_crypto::wire::{ErrorCode, RelayMsg};
use sotto_keys::PublicKey;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{refusal, Closed, Outbox, Outgoing, Session};
use crate::blobs::{Begun, BlobError, BlobReader, BlobWriter};
use crate::budget::{self, Budget, Reservation};
use crate::store::{QuotaOf, Window};

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
    /// Whose upload it is: the client's key on an owner link, the
    /// [`sotto_crypto::delivery::ResumeProof`] of its secret on a delivery
    /// link.
    uploader: PublicKey,
    to: PublicKey,
    size: u64,
    /// The index the next chunk must have.
    next: u64,
    queue: mpsc::Sender<ToDisk>,
    /// Why the disk task stopped, if it failed.
    failure: oneshot::Receiver<BlobError>,
    /// The relay took no more of it (its disk, its storage budget or a file
    /// quota is full): the client has been told with this error, and the rest
    /// of the stream is read and dropped until its `UploadEnd`, which is
    /// refused the same way. The connection stays, and so does what was
    /// checkpointed.
    refused: Option<BlobError>,
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
        uploader: PublicKey,
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
            .begin(uploader, self.peer, file_id, to, size)
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
        let (queue, failure) = self.start_disk(writer);
        self.files.uploads.insert(
            file_id,
            Upload {
                uploader,
                to,
                size,
                next: have,
                queue,
                failure,
                refused: None,
            },
        );
        RelayMsg::UploadState { req, file_id, have }
    }

    /// Starts the disk task of an upload; returns its queue and where it
    /// says why it stopped.
    fn start_disk(
        &mut self,
        writer: BlobWriter,
    ) -> (mpsc::Sender<ToDisk>, oneshot::Receiver<BlobError>) {
        let (queue, chunks) = mpsc::channel(UPLOAD_QUEUE);
        let (failed, failure) = oneshot::channel();
        let limits = self.shared.blobs.limits();
        self.files.disk_tasks.spawn(store_upload(
            writer,
            chunks,
            Reporter {
                out: self.tx.clone(),
                closing: self.shutdown.clone(),
            },
            failed,
            Pace {
                checkpoint_every: limits.checkpoint_chunks(),
                idle: limits.upload_idle_timeout,
            },
        ));
        (queue, failure)
    }

    /// Hands `item` to upload `file_id`'s disk task. If the task gave its
    /// room back for want of chunks, the upload is begun again in place,
    /// from `next` (every chunk accepted before is durable by then), and the
    /// item goes to the new task.
    async fn hand_to_disk(
        &mut self,
        file_id: FileId,
        next: u64,
        item: ToDisk,
    ) -> Result<(), Closed> {
        let Some(upload) = self.files.uploads.get_mut(&file_id) else {
            return Ok(());
        };
        let Err(mpsc::error::SendError(item)) = upload.queue.send(item).await else {
            return Ok(());
        };
        // The disk task stopped; it said why before letting go of its queue.
        let Some(mut upload) = self.files.uploads.remove(&file_id) else {
            return Ok(());
        };
        let mut item = item;
        let mut revived = false;
        // A disk task that stops for want of room tells the client itself.
        let mut told = true;
        let reason = loop {
            let (_, gone) = oneshot::channel();
            let reason = std::mem::replace(&mut upload.failure, gone)
                .await
                .unwrap_or(BlobError::Crashed);
            if revived || !matches!(reason, BlobError::Lapsed) {
                break reason;
            }
            revived = true;
            told = false;
            let resumed = self
                .shared
                .blobs
                .resume_idle(upload.uploader, self.peer, file_id, upload.to, upload.size)
                .await;
            match resumed {
                Ok(Begun::Upload(writer)) if writer.have() == next => {
                    (upload.queue, upload.failure) = self.start_disk(writer);
                }
                // Not where this connection left it: someone else changed it.
                Ok(_) => break BlobError::Superseded,
                Err(e) => break e,
            }
            match upload.queue.send(item).await {
                Ok(()) => {
                    self.files.uploads.insert(file_id, upload);
                    return Ok(());
                }
                Err(mpsc::error::SendError(back)) => item = back,
            }
        };
        if refusable(&reason) {
            // Not the client's fault, and nothing it sent is in doubt: say
            // so at once and keep the connection for its other requests.
            if let Some(notice) = stopped_notice(&reason).filter(|_| !told) {
                let _ = self.tx.send(notice.into()).await;
            }
            upload.refused = Some(reason);
            self.files.uploads.insert(file_id, upload);
            return Ok(());
        }
        Err(Closed::Upload(reason))
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
        if upload.refused.is_some() {
            return Ok(());
        }
        // Over the key's upload rate: stop reading for a while, which slows
        // the client down through TCP.
        let pause = self.upload_pause(data.len());
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
        self.hand_to_disk(file_id, index, ToDisk::Chunk(data, held))
            .await
    }

    /// Returns the answer, or `None` when the disk task will give it.
    /// `uploader` is who may hear that an upload not in progress here is
    /// complete already.
    pub(super) async fn upload_end(
        &mut self,
        req: u32,
        file_id: FileId,
        uploader: Option<PublicKey>,
    ) -> Option<RelayMsg> {
        let Some(upload) = self.files.uploads.remove(&file_id) else {
            // Not in progress here: it may be finished already (the client
            // lost the connection before it heard `UploadDone`).
            return Some(match self.shared.store.blob(file_id).await {
                Ok(Some(meta)) if Some(meta.uploader) == uploader && meta.complete => {
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
        if let Some(refused) = &upload.refused {
            return Some(blob_refusal(req, refused));
        }
        let chunks = chunk_count(upload.size);
        let next = upload.next;
        self.files.uploads.insert(file_id, upload);
        if next != chunks {
            return Some(RelayMsg::Error {
                req,
                code: ErrorCode::BadRequest,
                detail: format!("only {next} of {chunks} chunks were sent"),
            });
        }
        let sent = self
            .hand_to_disk(file_id, next, ToDisk::Finish { req })
            .await;
        // Handed over, the upload is the disk task's to finish and answer;
        // one that stopped instead is answered here, and is over either way.
        let refused = self
            .files
            .uploads
            .remove(&file_id)
            .and_then(|stopped| stopped.refused);
        match (sent, refused) {
            (Ok(()), None) => None,
            (_, Some(refused)) => Some(blob_refusal(req, &refused)),
            (Err(Closed::Upload(reason)), None) => Some(blob_refusal(req, &reason)),
            (Err(_), None) => Some(internal(req)),
        }
    }

    /// Returns the answer, or `None` when the download task will give it.
    pub(super) async fn download(
        &mut self,
        req: u32,
        file_id: FileId,
        from: u64,
        client: PublicKey,
    ) -> Option<RelayMsg> {
        if self.files.downloading() && self.files.downloads.len() >= MAX_DOWNLOADS {
            return Some(RelayMsg::Error {
                req,
                code: ErrorCode::RateLimited,
                detail: format!("at most {MAX_DOWNLOADS} downloads at once on one connection"),
            });
        }
        let reader = match self.shared.blobs.open_download(client, file_id).await {
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

    pub(super) async fn delete_blob(
        &mut self,
        req: u32,
        file_id: FileId,
        client: PublicKey,
    ) -> RelayMsg {
        match self.shared.blobs.delete(client, file_id).await {
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
        BlobError::QuotaExceeded {
            of: QuotaOf::Recipient,
            ..
        } => (
            ErrorCode::QuotaExceeded,
            "the recipient's file quota is full".to_owned(),
        ),
        BlobError::QuotaExceeded {
            of: QuotaOf::Uploader,
            ..
        } => (
            ErrorCode::QuotaExceeded,
            "the recipient holds as much from you as one sender may; they must receive it first"
                .to_owned(),
        ),
        BlobError::TooManyUploads(from) => (
            ErrorCode::RateLimited,
            format!("too many uploads in progress from this {from}; finish some first"),
        ),
        BlobError::Lapsed => (
            ErrorCode::Internal,
            "the upload sent nothing for too long; begin it again to resume".to_owned(),
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
        BlobError::Store(crate::store::StoreError::Unavailable(why)) => {
            tracing::warn!("store unavailable: {why}");
            (
                ErrorCode::Internal,
                "store unavailable, try again".to_owned(),
            )
        }
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

/// Whether an upload that stopped for this reason leaves its connection
/// open: the relay has no room for it, which is neither the client's fault
/// nor a reason to doubt what it sent.
fn refusable(e: &BlobError) -> bool {
    matches!(
        e,
        BlobError::OutOfSpace(_) | BlobError::QuotaExceeded { .. } | BlobError::TooManyUploads(_)
    )
}

/// The notice (`req` 0) for an upload that stopped part-way for `e`.
fn stopped_notice(e: &BlobError) -> Option<RelayMsg> {
    let RelayMsg::Error { code, detail, .. } = blob_refusal(0, e) else {
        return None;
    };
    Some(RelayMsg::Error {
        req: 0,
        code,
        detail: format!("{detail}; begin the upload again to resume later"),
    })
}

fn internal(req: u32) -> RelayMsg {
    RelayMsg::Error {
        req,
        code: ErrorCode::Internal,
        detail: "the relay could not do this; try again later".to_owned(),
    }
}

/// How an upload's disk task paces itself.
#[derive(Clone, Copy)]
struct Pace {
    /// Chunks between checkpoints.
    checkpoint_every: u64,
    /// No chunk for this long: give the upload's room back.
    idle: Duration,
}

/// An upload's disk task: writes the chunks the reader queues, checkpoints,
/// completes. On failure it reports why through `failed` before it drops its
/// queue, so the reader that finds the queue closed can say why.
async fn store_upload(
    writer: BlobWriter,
    mut chunks: mpsc::Receiver<ToDisk>,
    report: Reporter,
    failed: oneshot::Sender<BlobError>,
    pace: Pace,
) {
    let mut disk = Disk {
        checkpoint_every: pace.checkpoint_every,
        idle: pace.idle,
        have: writer.have(),
        durable: writer.have(),
        allowed: writer.allowed(),
        short_of: None,
        writer: Arc::new(writer),
        checkpoint: None,
        report,
        told: false,
    };
    let result = disk.run(&mut chunks).await;
    // A checkpoint still running holds the blob; let it end first.
    let settled = disk.settle().await;
    let result = result.and(settled);
    if let Err(e) = &result {
        // An `UploadEnd` queued behind the failure is answered, not lost.
        chunks.close();
        while let Ok(item) = chunks.try_recv() {
            if let ToDisk::Finish { req } = item {
                disk.stopped(e, Some(req)).await;
            }
        }
        disk.stopped(e, None).await;
    }
    match result {
        Ok(()) => {}
        Err(BlobError::Superseded) => {
            tracing::debug!("an upload was taken over by another request");
            let _ = failed.send(BlobError::Superseded);
        }
        Err(BlobError::Lapsed) => {
            tracing::debug!("an upload sent nothing for a while and gave its room back");
            let _ = failed.send(BlobError::Lapsed);
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
    /// No chunk for this long: give the room back.
    idle: Duration,
    /// Chunks written (not necessarily durable).
    have: u64,
    /// Chunks covered by the last checkpoint started.
    durable: u64,
    /// Chunks `0..allowed` may be written: the end of the upload's window.
    allowed: u64,
    /// Why the window last stopped short of where it was asked to go.
    short_of: Option<BlobError>,
    checkpoint: Option<JoinHandle<Result<Window, BlobError>>>,
    report: Reporter,
    /// The client has been told why the upload stopped.
    told: bool,
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
                () = tokio::time::sleep(self.idle) => return self.lapse(chunks).await,
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

    /// Nothing came for a while: makes what was received durable (chunks
    /// that slipped into the queue meanwhile included) and gives the
    /// upload's room back, forgetting it if nothing of it was durable.
    async fn lapse(&mut self, chunks: &mut mpsc::Receiver<ToDisk>) -> Result<(), BlobError> {
        chunks.close();
        while let Ok(next) = chunks.try_recv() {
            if let Some(req) = self.queued(next, chunks).await? {
                return self.finish(req).await;
            }
        }
        self.settle().await?;
        if self.checkpoint_now().await? {
            let progress = RelayMsg::UploadProgress {
                file_id: self.writer.id(),
                have: self.have,
            };
            self.report.tell(progress, &self.writer).await;
        }
        if self.durable == 0 {
            self.writer.forget().await?;
        }
        Err(BlobError::Lapsed)
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
            if let Err(e) = self.write_run(run).await {
                self.stopped(&e, finish).await;
                return Err(e);
            }
        }
        drop(held);
        Ok(finish)
    }

    /// The upload stopped for `e`: if for want of room, the client hears so
    /// at once (once); an `UploadEnd` `finish` it sent is answered.
    async fn stopped(&mut self, e: &BlobError, finish: Option<u32>) {
        if !self.told && refusable(e) {
            self.told = true;
            if let Some(notice) = stopped_notice(e) {
                self.report.tell(notice, &self.writer).await;
            }
        }
        if let Some(req) = finish {
            self.report.tell(blob_refusal(req, e), &self.writer).await;
        }
    }

    /// Writes consecutive chunks from the next index on, and starts a
    /// checkpoint when one is due.
    /// A run that crosses a checkpoint is split there, so checkpoints fall
    /// every `checkpoint_every` chunks exactly; one that reaches the end of
    /// the window waits for the window to move on.
    async fn write_run(&mut self, mut run: Vec<Vec<u8>>) -> Result<(), BlobError> {
        while !run.is_empty() {
            if self.have >= self.allowed {
                self.make_room().await?;
            }
            let to_checkpoint = self.checkpoint_every - (self.have - self.durable);
            let room = self.allowed - self.have;
            let take =
                usize::try_from(to_checkpoint.min(room)).map_or(run.len(), |n| n.min(run.len()));
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

    /// At the end of the window: the checkpoint in flight may have moved it
    /// on; if not, a checkpoint of what is written asks for more. Fails with
    /// why there is none (a full quota or budget).
    async fn make_room(&mut self) -> Result<(), BlobError> {
        self.settle().await?;
        if self.have < self.allowed {
            return Ok(());
        }
        let window = self.writer.checkpoint(self.have, false).await?;
        self.durable = self.have;
        self.moved(window);
        if self.have < self.allowed {
            return Ok(());
        }
        Err(self.short_of.take().unwrap_or(BlobError::QuotaExceeded {
            of: crate::store::QuotaOf::Recipient,
            files: 0,
            bytes: 0,
        }))
    }

    /// Takes in where a checkpoint left the window.
    fn moved(&mut self, window: Window) {
        self.allowed = self.allowed.max(window.allowed);
        self.short_of = window.short_of.map(BlobError::from);
    }

    /// Makes the blob durable and complete, and answers `UploadEnd` `req`.
    async fn finish(&mut self, req: u32) -> Result<(), BlobError> {
        let file_id = self.writer.id();
        let done = match self.settle().await {
            Ok(()) => self.writer.checkpoint(self.have, true).await.map(drop),
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
        let Some(task) = self.checkpoint.take() else {
            return Ok(());
        };
        let window = task.await.map_err(|_| BlobError::Crashed)??;
        self.moved(window);
        Ok(())
    }

    /// Makes every chunk written durable, if some are not yet; says whether
    /// it had to. Call it with no checkpoint in flight.
    async fn checkpoint_now(&mut self) -> Result<bool, BlobError> {
        if self.have == self.durable {
            return Ok(false);
        }
        let window = self.writer.checkpoint(self.have, false).await?;
        self.durable = self.have;
        self.moved(window);
        Ok(true)
    }
}

/// Makes chunks `0..have` durable, then tells the client; returns where the
/// upload's window now ends.
async fn checkpoint(
    writer: Arc<BlobWriter>,
    have: u64,
    report: Reporter,
) -> Result<Window, BlobError> {
    let window = writer.checkpoint(have, false).await?;
    let progress = RelayMsg::UploadProgress {
        file_id: writer.id(),
        have,
    };
    report.tell(progress, &writer).await;
    Ok(window)
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
