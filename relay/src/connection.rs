//! One client connection: handshake, then requests and live delivery.
//!
//! A connection is cooperating parts: this task reads requests; a writer task
//! owns the sending half and flushes once per burst; a delivery task, started
//! by `Fetch`, streams the mailbox and then waits for wake-ups and live-only
//! notices (`Notify`, which is never stored: see `crate::registry`); each upload
//! has a disk task and each download a streaming task (see `files`). Every
//! way a connection can end (clean close, idle, bad input, shutdown) ends here
//! with one logged reason, and never affects another connection or the store.
//!
//! Everything bound for the client goes through one bounded queue to the
//! writer, so a client that reads slowly slows down what is produced for it
//! instead of growing the relay's memory.

mod files;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_bytes::ByteBuf;
use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_crypto::LinkError;
use sotto_keys::PublicKey;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::limits::KeyLimit;
use crate::registry::Notices;
use crate::server::Shared;
use crate::store::{Committing, StoreError};

/// How many envelopes one store read hands to the delivery loop.
const DELIVERY_BATCH: usize = 256;
/// Messages queued for the writer before readers wait (backpressure).
const OUTBOX: usize = 256;
/// `Send`s and `Ack`s of one connection waiting for their commit before the
/// connection reads on (see [`Session::send`]).
const SENDS_IN_FLIGHT: usize = 64;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("too many handshakes in flight")]
    HandshakeBusy,
    #[error("handshake failed: {0}")]
    Handshake(LinkError),
    #[error("{0} is not on the allow-list")]
    NotAllowed(PublicKey),
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
    #[error("the client took nothing of what was sent to it for {0:?}")]
    WriteStalled(std::time::Duration),
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("protocol violation: {0}")]
    Protocol(Cow<'static, str>),
    #[error("store failure: {0}")]
    Store(StoreError),
    #[error("upload stopped: {0}")]
    Upload(crate::blobs::BlobError),
}

impl Closed {
    /// The last message for a client whose connection is closed for this
    /// reason, if it is one the client should be told.
    fn notice(&self) -> Option<RelayMsg> {
        let (code, detail) = match self {
            Closed::Protocol(detail) => (ErrorCode::BadRequest, detail.to_string()),
            Closed::Upload(crate::blobs::BlobError::OutOfSpace(_)) => (
                ErrorCode::OutOfSpace,
                format!(
                    "{}; begin the upload again to resume later",
                    files::out_of_space()
                ),
            ),
            Closed::Upload(crate::blobs::BlobError::Superseded) => (
                ErrorCode::BadRequest,
                "another request took an upload of this connection over; begin it again to resume"
                    .to_owned(),
            ),
            Closed::Upload(_) => (
                ErrorCode::Internal,
                "the relay could not store an upload; begin it again to resume".to_owned(),
            ),
            _ => return None,
        };
        Some(RelayMsg::Error {
            req: 0,
            code,
            detail,
        })
    }
}

/// A message for the writer task. A download chunk carries its share of the
/// connection's download budget until it is written, which is what bounds the
/// chunks read ahead of a slow client.
/// The message is boxed: the queue's slots are allocated a block at a time
/// whether used or not, and an idle connection should not pay for a block of
/// whole messages.
pub(crate) struct Outgoing {
    msg: Box<RelayMsg>,
    _budget: Option<OwnedSemaphorePermit>,
}

impl From<RelayMsg> for Outgoing {
    fn from(msg: RelayMsg) -> Self {
        Self {
            msg: Box::new(msg),
            _budget: None,
        }
    }
}

/// The queue to the writer task.
type Outbox = mpsc::Sender<Outgoing>;

/// Serves one connection to its end and logs why it ended.
pub(crate) async fn serve(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    match run(stream, &shared, &shutdown).await {
        Ok(Some(client)) => debug!(%addr, client = %client.short(), "connection closed"),
        Ok(None) => debug!(%addr, "connection closed before the handshake"),
        Err(e) => info!(%addr, "connection closed: {e}"),
    }
}

async fn run(
    stream: TcpStream,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<Option<PublicKey>, Closed> {
    // Upload limits count by address too; an unknown one is counted with the others.
    let peer = stream
        .peer_addr()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |addr| addr.ip());
    let (r, w) = stream.into_split();
    let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
        return Err(Closed::HandshakeBusy);
    };
    let timeout = shared.config.handshake_timeout;
    // Boxed: the handshake's state is large and over once it is done; kept
    // inline it would size this task's allocation for its whole life.
    let handshake = Box::pin(link::accept(r, w, &shared.key, &shared.hello));
    let (mut reader, writer, client) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        r = tokio::time::timeout(timeout, handshake) => match r {
            Err(_) => return Err(Closed::HandshakeTimeout(timeout)),
            Ok(Err(LinkError::ClosedDuringHandshake)) => return Ok(None),
            Ok(Err(e)) => return Err(Closed::Handshake(e)),
            Ok(Ok(done)) => done,
        },
    };
    drop(permit);
    if let Some(allow) = &shared.config.allow {
        if !allow.contains(&client) {
            let mut writer = writer;
            let refusal = RelayMsg::Error {
                req: 0,
                code: ErrorCode::NotAllowed,
                detail: "this is a private relay and your key is not on its allow-list".into(),
            };
            // Best effort: the client may already be gone.
            if writer.send(&refusal).await.is_ok() {
                let _ = writer.shutdown().await;
            }
            return Err(Closed::NotAllowed(client));
        }
    }
    debug!(client = %client.short(), "authenticated");

    let (tx, rx) = mpsc::channel(OUTBOX);
    let writer = tokio::spawn(write_loop(writer, rx, shared.config.write_timeout));
    let mut session = Session {
        shared: shared.clone(),
        limit: shared.rate.connect(client),
        client,
        peer,
        tx,
        delivery: None,
        shutdown: shutdown.child_token(),
        files: files::Files::new(),
        storing: VecDeque::new(),
    };
    let result = session.read_loop(&mut reader, shutdown).await;
    // Sends already handed to the store are answered, whatever ended the loop.
    session.answer_stored().await;
    session.shutdown.cancel();
    if let Some(d) = session.delivery.take() {
        let _ = d.await;
    }
    // Uploads write and checkpoint every chunk received; downloads stop.
    session.files.close().await;
    if let Some(notice) = result.as_ref().err().and_then(Closed::notice) {
        let _ = session.tx.send(notice.into()).await;
    }
    if shutdown.is_cancelled() {
        let _ = session
            .tx
            .send(
                RelayMsg::Error {
                    req: 0,
                    code: ErrorCode::ShuttingDown,
                    detail: "the relay is shutting down; reconnect later".into(),
                }
                .into(),
            )
            .await;
    }
    drop(session);
    // The writer ends once every queued message is written and flushed.
    let written = writer.await;
    result?;
    match written {
        Ok(Err(e)) => Err(e),
        _ => Ok(Some(client)),
    }
}

struct Session {
    shared: Arc<Shared>,
    client: PublicKey,
    /// The client's IP address, for the limits on uploads in progress.
    peer: std::net::IpAddr,
    /// The key's rate limits, shared with its other connections.
    limit: KeyLimit,
    tx: Outbox,
    delivery: Option<JoinHandle<Result<(), Closed>>>,
    /// Cancelled when the connection ends: stops delivery and downloads.
    shutdown: CancellationToken,
    files: files::Files,
    /// Sends and Acks handed to the store, oldest first, waiting for their
    /// commit.
    storing: VecDeque<(u32, Landing)>,
}

impl Session {
    async fn read_loop(
        &mut self,
        reader: &mut LinkReader<OwnedReadHalf>,
        shutdown: &CancellationToken,
    ) -> Result<(), Closed> {
        let idle = self.shared.config.idle_timeout;
        loop {
            let received = {
                // One receive, kept across idle checks: dropping it part-way
                // through a message would lose the bytes already read.
                let recv = reader.recv::<ClientMsg>();
                tokio::pin!(recv);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        // The writer stopped (it reports why): nothing more
                        // can reach the client, so stop reading too.
                        _ = self.tx.closed() => return Ok(()),
                        r = &mut recv => break r,
                        (req, r) = next_stored(&mut self.storing), if !self.storing.is_empty() => {
                            if self.tx.send(stored_reply(req, r)?.into()).await.is_err() {
                                return Ok(()); // the writer failed; it reports why
                            }
                        }
                        _ = tokio::time::sleep(idle) => {
                            // Streaming a download is not idleness, though
                            // the client may send nothing while it receives.
                            if !self.files.downloading() {
                                return Err(Closed::Idle(idle));
                            }
                        }
                    }
                }
            };
            let msg = match received {
                Err(e) => return Err(e.into()),
                Ok(None) => return Ok(()),
                Ok(Some(msg)) => msg,
            };
            if let Some(reply) = self.handle(msg).await? {
                if self.tx.send(reply.into()).await.is_err() {
                    return Ok(()); // the writer failed; it reports why
                }
            }
            if let Some(d) = &self.delivery {
                if d.is_finished() {
                    if let Some(d) = self.delivery.take() {
                        if let Ok(Err(e)) = d.await {
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    async fn handle(&mut self, msg: ClientMsg) -> Result<Option<RelayMsg>, Closed> {
        Ok(Some(match msg {
            ClientMsg::Send { req, to, envelope } => {
                if let Err(limited) = self.limit.envelope() {
                    return Ok(Some(RelayMsg::Error {
                        req,
                        code: ErrorCode::RateLimited,
                        detail: limited.to_string(),
                    }));
                }
                return self.send(req, to, envelope.into_vec()).await;
            }
            ClientMsg::Fetch { live } => {
                if let Some(previous) = self.delivery.take() {
                    if !previous.is_finished() {
                        return Err(Closed::Protocol(
                            "a Fetch while another is still running".into(),
                        ));
                    }
                    previous
                        .await
                        .map_err(|_| Closed::Protocol("delivery task failed".into()))??;
                }
                self.delivery = Some(tokio::spawn(deliver(
                    self.shared.clone(),
                    self.client,
                    self.tx.clone(),
                    live,
                    self.shutdown.clone(),
                )));
                return Ok(None);
            }
            ClientMsg::Ack { req, ids } => return self.ack(req, ids).await,
            ClientMsg::Ping => RelayMsg::Pong,
            ClientMsg::UploadBegin {
                req,
                file_id,
                to,
                size,
            } => self.upload_begin(req, file_id, to, size).await,
            ClientMsg::UploadChunk {
                file_id,
                index,
                data,
            } => {
                self.upload_chunk(file_id, index, data.into_vec()).await?;
                return Ok(None);
            }
            ClientMsg::UploadEnd { req, file_id } => {
                return Ok(self.upload_end(req, file_id).await);
            }
            ClientMsg::Download { req, file_id, from } => {
                return Ok(self.download(req, file_id, from).await);
            }
            ClientMsg::DeleteBlob { req, file_id } => self.delete_blob(req, file_id).await,
            ClientMsg::Notify { to, envelope } => {
                // A notice takes a token like a `Send`; one over the rate is
                // dropped, as a notice nobody is there for would be (a
                // notice is never answered).
                if self.limit.envelope().is_err() {
                    debug!(client = %self.client.short(), "a notice over the rate limit dropped");
                    return Ok(None);
                }
                self.notice(to, &envelope)?;
                return Ok(None);
            }
        }))
    }
}

impl Session {
    /// `Notify`: hands the notice to `to`'s live connections, if any. Never
    /// answered and never logged with whom it was for, so neither the sender
    /// nor the log learns whether `to` is connected. A notice larger than an
    /// envelope may be is a protocol violation: the client knows the limit
    /// from the handshake.
    fn notice(&self, to: PublicKey, envelope: &[u8]) -> Result<(), Closed> {
        let max = self.shared.config.mailbox.max_envelope_len;
        if envelope.len() > max {
            return Err(Closed::Protocol(
                format!(
                    "a notice of {} bytes exceeds the relay's limit of {max}",
                    envelope.len()
                )
                .into(),
            ));
        }
        self.shared.registry.notice(&to, envelope);
        Ok(())
    }

    /// Hands an envelope to the store without waiting for its commit, so a
    /// client's Sends share commits instead of queueing behind one another;
    /// `Stored` follows from the read loop as each commit lands (clients
    /// match answers by `req`). At most [`SENDS_IN_FLIGHT`] wait at once.
    async fn send(
        &mut self,
        req: u32,
        to: PublicKey,
        envelope: Vec<u8>,
    ) -> Result<Option<RelayMsg>, Closed> {
        if !self.make_room().await? {
            return Ok(None);
        }
        match self.shared.store.enqueue_begin(to, envelope).await {
            Ok(committing) => {
                self.storing.push_back((req, Landing::Stored(committing)));
                Ok(None)
            }
            Err(e) => refusal(req, e).map(Some),
        }
    }

    /// `Ack`: hands the deletion to the store without waiting for its
    /// commit, like a Send, so a client that both receives and sends keeps
    /// its Sends flowing; `Acked` follows from the read loop.
    async fn ack(&mut self, req: u32, ids: Vec<u64>) -> Result<Option<RelayMsg>, Closed> {
        if ids.is_empty() {
            // Nothing to commit: answered at once.
            return Ok(Some(match self.shared.store.ack(self.client, ids).await {
                Ok(_) => RelayMsg::Acked { req, deleted: 0 },
                Err(e) => refusal(req, e)?,
            }));
        }
        if !self.make_room().await? {
            return Ok(None);
        }
        match self.shared.store.ack_begin(self.client, ids).await {
            Ok(committing) => {
                self.storing.push_back((req, Landing::Acked(committing)));
                Ok(None)
            }
            Err(e) => refusal(req, e).map(Some),
        }
    }

    /// Waits for the oldest request in flight and answers it if
    /// [`SENDS_IN_FLIGHT`] are; false once the writer is gone.
    async fn make_room(&mut self) -> Result<bool, Closed> {
        if self.storing.len() >= SENDS_IN_FLIGHT {
            let (oldest, r) = next_stored(&mut self.storing).await;
            if self.tx.send(stored_reply(oldest, r)?.into()).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits for every Send in flight and answers it.
    async fn answer_stored(&mut self) {
        while !self.storing.is_empty() {
            let (req, r) = next_stored(&mut self.storing).await;
            let Ok(reply) = stored_reply(req, r) else {
                return;
            };
            if self.tx.send(reply.into()).await.is_err() {
                return;
            }
        }
    }
}

/// A request handed to the store, waiting for its commit.
enum Landing {
    /// A Send: answered `Stored`.
    Stored(Committing<u64>),
    /// An Ack: answered `Acked` with the number deleted.
    Acked(Committing<usize>),
}

/// What a [`Landing`] came to.
enum Landed {
    Stored(Result<u64, StoreError>),
    Acked(Result<usize, StoreError>),
}

/// The oldest request's outcome, once committed. The store's writer commits
/// in the order it was handed work, so the oldest is always the next to land.
/// Pending while there is none.
async fn next_stored(storing: &mut VecDeque<(u32, Landing)>) -> (u32, Landed) {
    let (req, result) = std::future::poll_fn(|cx| match storing.front_mut() {
        Some((req, Landing::Stored(c))) => std::pin::Pin::new(c)
            .poll(cx)
            .map(|r| (*req, Landed::Stored(r))),
        Some((req, Landing::Acked(c))) => std::pin::Pin::new(c)
            .poll(cx)
            .map(|r| (*req, Landed::Acked(r))),
        None => std::task::Poll::Pending,
    })
    .await;
    storing.pop_front();
    (req, result)
}

/// The answer to a request whose write has landed.
fn stored_reply(req: u32, landed: Landed) -> Result<RelayMsg, Closed> {
    match landed {
        Landed::Stored(Ok(_)) => Ok(RelayMsg::Stored { req }),
        Landed::Acked(Ok(n)) => Ok(RelayMsg::Acked {
            req,
            deleted: u32::try_from(n).unwrap_or(u32::MAX),
        }),
        Landed::Stored(Err(e)) | Landed::Acked(Err(e)) => refusal(req, e),
    }
}

/// Turns a store error into an answer for the client. A failing store (a full
/// disk, say) is logged here and reported to the client as an internal error:
/// the request fails, the connection and everything stored before stay.
fn refusal(req: u32, e: StoreError) -> Result<RelayMsg, Closed> {
    let (code, detail) = match &e {
        StoreError::QuotaExceeded { .. } => (
            ErrorCode::QuotaExceeded,
            "the recipient's mailbox is full".to_owned(),
        ),
        StoreError::TooLarge { len, max } => (
            ErrorCode::TooLarge,
            format!("envelope of {len} bytes exceeds the relay's limit of {max}"),
        ),
        StoreError::Closed => (
            ErrorCode::ShuttingDown,
            "the relay is shutting down".to_owned(),
        ),
        StoreError::OutOfSpace(full) => {
            tracing::warn!("refused a message: {full}");
            (ErrorCode::OutOfSpace, files::out_of_space())
        }
        _ => {
            tracing::warn!("store failure: {e}");
            (
                ErrorCode::Internal,
                "the relay could not store this; try again later".to_owned(),
            )
        }
    };
    Ok(RelayMsg::Error { req, code, detail })
}

/// Streams the mailbox in order, then (if `live`) forwards new envelopes as
/// the store's writer hands them over (see `store::live`): from the feed while
/// it keeps up, from the store after it lagged. `after` (the last id sent)
/// drops anything seen twice, so ids reach the client strictly increasing.
async fn deliver(
    shared: Arc<Shared>,
    client: PublicKey,
    tx: Outbox,
    live: bool,
    shutdown: CancellationToken,
) -> Result<(), Closed> {
    let mut feed = shared.store.subscribe(client);
    let wake = feed.waker();
    // Notices only, and only for live delivery: envelopes come through the
    // store's feed.
    let mut notices = live.then(|| shared.registry.subscribe(client));
    let mut after = None;
    let mut drained = false;
    loop {
        // Armed before taking from the feed, so a push between the take and
        // the wait still wakes us.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        let taken = feed.take();
        for m in taken.pushed {
            if !forward(&tx, &mut after, m).await {
                return Ok(());
            }
        }
        let mut lagged = taken.lagged;
        if lagged {
            // Read before the store, so that whatever is settled by then is
            // in the snapshot the read sees.
            let settled = feed.settled();
            loop {
                let batch = shared
                    .store
                    .pending(client, after, DELIVERY_BATCH)
                    .await
                    .map_err(Closed::Store)?;
                let full = batch.len() == DELIVERY_BATCH;
                for m in batch {
                    if !forward(&tx, &mut after, m).await {
                        return Ok(());
                    }
                }
                if !full {
                    break;
                }
            }
            if !drained {
                drained = true;
                if tx.send(RelayMsg::Drained.into()).await.is_err() || !live {
                    return Ok(());
                }
            }
            lagged = !feed.caught_up(settled);
        }
        // Notices queued meanwhile go out now, after `Drained`; then each
        // as it comes, until the store has something new.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = &mut woken => {
                    // Notices queued before this wake-up were sent before
                    // the envelope that caused it: they go first.
                    while let Some(envelope) = notices.as_mut().and_then(Notices::try_next) {
                        if !forward_notice(&tx, envelope).await {
                            return Ok(());
                        }
                    }
                    break;
                }
                _ = feed.settled_changed(), if lagged => break,
                Some(envelope) = next_notice(&mut notices), if drained => {
                    if !forward_notice(&tx, envelope).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The next notice for a live connection; `None` at once for another.
async fn next_notice(notices: &mut Option<Notices>) -> Option<Vec<u8>> {
    match notices {
        Some(n) => Some(n.next().await),
        None => None,
    }
}

/// Queues a notice for the client; false once the connection is gone.
async fn forward_notice(tx: &Outbox, envelope: Vec<u8>) -> bool {
    let msg = RelayMsg::Notice {
        envelope: ByteBuf::from(envelope),
    };
    tx.send(msg.into()).await.is_ok()
}

/// Sends one envelope unless the client has had it already; `false` once the
/// writer is gone.
async fn forward(tx: &Outbox, after: &mut Option<u64>, m: crate::store::Stored) -> bool {
    if after.is_some_and(|a| m.id <= a) {
        return true;
    }
    *after = Some(m.id);
    let msg = RelayMsg::Deliver {
        id: m.id,
        received_at: m.received_at,
        envelope: ByteBuf::from(m.envelope),
    };
    tx.send(msg.into()).await.is_ok()
}

pin_project_lite::pin_project! {
    /// A write that must make progress within `stall`. Its timer is started,
    /// and boxed, only if the write has to wait: most go straight into the
    /// link's buffer or the socket, and an idle connection's task is not made
    /// larger by a timer it does not need (`tokio::time::timeout` keeps one
    /// inline).
    struct Within<F> {
        #[pin]
        write: F,
        stall: std::time::Duration,
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F, T> Future for Within<F>
where
    F: Future<Output = Result<T, LinkError>>,
{
    type Output = Result<T, Closed>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(written) = this.write.poll(cx) {
            return std::task::Poll::Ready(written.map_err(Closed::from));
        }
        let stall = *this.stall;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        timer
            .as_mut()
            .poll(cx)
            .map(|()| Err(Closed::WriteStalled(stall)))
    }
}

/// Writes what is queued for the client, one flush per burst. Every write
/// must make progress within `stall`: a client that stops reading fills its
/// socket, and then the connection is closed rather than held.
async fn write_loop(
    mut w: LinkWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Outgoing>,
    stall: std::time::Duration,
) -> Result<(), Closed> {
    fn within<F>(stall: std::time::Duration, write: F) -> Within<F> {
        Within {
            write,
            stall,
            timer: None,
        }
    }
    while let Some(out) = rx.recv().await {
        within(stall, w.send(&out.msg)).await?;
        // Everything already queued goes out with one flush.
        while let Ok(out) = rx.try_recv() {
            within(stall, w.send(&out.msg)).await?;
        }
        within(stall, w.flush()).await?;
    }
    within(stall, w.shutdown()).await
}
