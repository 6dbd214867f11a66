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
//! Before the handshake a connection waits for its first message without a
//! handshake slot, and may be closed to make room for newer connections
//! (`crate::half_open`); once authenticated it takes a seat of its key and
//! its address (`crate::occupancy`) or is refused.
//!
//! Everything bound for the client goes through one queue to the writer, and
//! every payload the connection holds (queued for the client, read ahead from
//! the store or a blob, being received, waiting for a commit or the disk)
//! holds its bytes of the connection's budget (`crate::budget`), so a client
//! that reads slowly, or sends slowly, slows down what is done for it
//! instead of growing the relay's memory.

mod files;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_bytes::ByteBuf;
use sotto_crypto::link::{self, LinkReader, LinkWriter, FIRST_MESSAGE_LEN, PREAMBLE_MAGIC};
use sotto_crypto::wire::{self, ClientMsg, DeliveryMsg, ErrorCode, RelayMsg};
use sotto_crypto::LinkError;
use sotto_keys::PublicKey;
use tokio::io::{AsyncReadExt, Chain};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::budget::{self, Budget, Reservation};
use crate::delivery::{Admitted, ConnectionRates};
use crate::half_open::Eviction;
use crate::limits::KeyLimit;
use crate::occupancy::OverLimit;
use crate::registry::Notices;
use crate::server::Shared;
use crate::source::Source;
use crate::store::{Committing, StoreError};

/// How many envelopes one store read hands to the delivery loop.
const DELIVERY_BATCH: usize = 256;
/// Bytes one store read of the delivery loop reserves (and reads at most),
/// at least one largest envelope's charge.
const DELIVERY_BYTES: usize = 256 * 1024;
/// Bytes the first read of a catch-up reserves: a mailbox is most often
/// empty or holds a few small envelopes, and a thousand connections that
/// fetch at once should not each hold [`DELIVERY_BYTES`] to find that out.
const FIRST_READ_BYTES: usize = 16 * 1024;
/// Messages queued for the writer before readers wait (backpressure on
/// answers; payloads are held back by the byte budget first).
const OUTBOX: usize = 256;
/// `Send`s and `Ack`s of one connection waiting for their commit before the
/// connection reads on (see [`Session::send`]).
const SENDS_IN_FLIGHT: usize = 64;

/// The stream a link reads: the first message, read before the handshake
/// took a slot, then the socket.
type Inbound = Chain<std::io::Cursor<[u8; FIRST_MESSAGE_LEN]>, OwnedReadHalf>;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("first handshake message not received within {0:?}")]
    FirstMessageTimeout(std::time::Duration),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("{0}")]
    Evicted(Eviction),
    #[error("handshake failed: {0}")]
    Handshake(LinkError),
    #[error("{0} is not on the allow-list")]
    NotAllowed(PublicKey),
    #[error("a delivery link sent {0}, which only an owner link may")]
    NotOnDeliveryLink(&'static str),
    #[error("refused: {0}")]
    OverLimit(OverLimit),
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
    /// The kind of closure, if it is one counted for the periodic summary
    /// instead of being logged one by one: everything that can happen before
    /// a connection is served, which a flood of sockets makes by the thousand.
    fn tallied(&self) -> Option<&'static str> {
        Some(match self {
            Closed::FirstMessageTimeout(_) => "first message timeout",
            Closed::HandshakeTimeout(_) => "handshake timeout",
            Closed::Evicted(Eviction::Address(_)) => "evicted: address",
            Closed::Evicted(Eviction::Handshakes(_)) => "evicted: handshakes",
            Closed::Evicted(Eviction::Slots) => "evicted: slots",
            Closed::Handshake(e) => match e {
                LinkError::BadPreamble => "bad preamble",
                LinkError::UnsupportedVersion { .. } => "unsupported version",
                LinkError::RecordTooLarge { .. } => "record too large",
                LinkError::Io(_) => "handshake i/o",
                _ => "handshake failed",
            },
            Closed::NotAllowed(_) => "not allowed",
            Closed::OverLimit(OverLimit::Key { .. }) => "over the key's limit",
            Closed::OverLimit(OverLimit::Address { .. }) => "over the address's limit",
            _ => return None,
        })
    }

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

/// A message for the writer task. One that carries a payload (an envelope, a
/// notice, a download chunk) holds its bytes of the connection's budget until
/// it is written, which is what bounds what is queued for a slow client.
/// The message is boxed: the queue's slots are allocated a block at a time
/// whether used or not, and an idle connection should not pay for a block of
/// whole messages.
pub(crate) struct Outgoing(Box<Out>);

struct Out {
    msg: RelayMsg,
    held: Reservation,
}

impl Outgoing {
    /// `msg`, holding `held` until it is written.
    pub(crate) fn holding(msg: RelayMsg, held: Reservation) -> Self {
        Self(Box::new(Out { msg, held }))
    }
}

impl From<RelayMsg> for Outgoing {
    fn from(msg: RelayMsg) -> Self {
        Self::holding(msg, Reservation::default())
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
    match run(stream, Source::from(addr.ip()), &shared, &shutdown).await {
        Ok(Some(Some(client))) => debug!(%addr, client = %client.short(), "connection closed"),
        // A delivery link names nobody, and nothing is logged of whom it
        // delivered to.
        Ok(Some(None)) => debug!(%addr, "delivery connection closed"),
        Ok(None) => debug!(%addr, "connection closed before the handshake"),
        Err(e) => match e.tallied() {
            Some(kind) => {
                debug!(%addr, "connection closed: {e}");
                shared.tally.note(kind, &e);
            }
            None => info!(%addr, "connection closed: {e}"),
        },
    }
}

async fn run(
    stream: TcpStream,
    source: Source,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<Option<Option<PublicKey>>, Closed> {
    // Upload limits count by address too; an unknown one is counted with the others.
    let peer = stream
        .peer_addr()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |addr| addr.ip());
    let config = &shared.config;
    let (mut r, w) = stream.into_split();
    let mut ticket = shared.half_open.admit(source);
    let accepted = Instant::now();
    let handshake_timeout = config.handshake_timeout;
    let first_timeout = config.first_message_timeout.min(handshake_timeout);
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        why = ticket.evicted() => return Err(Closed::Evicted(why)),
        r = tokio::time::timeout_at(accepted + first_timeout, first_message(&mut r)) => match r {
            Err(_) if first_timeout < handshake_timeout => {
                return Err(Closed::FirstMessageTimeout(first_timeout))
            }
            Err(_) => return Err(Closed::HandshakeTimeout(handshake_timeout)),
            Ok(r) => match r? {
                Some(first) => first,
                None => return Ok(None),
            },
        },
    };
    ticket.handshaking();
    let r: Inbound = std::io::Cursor::new(first).chain(r);
    // Boxed: the handshake's state is large and over once it is done; kept
    // inline it would size this task's allocation for its whole life.
    let handshake = Box::pin(link::accept_link(r, w, &shared.key, &shared.hello));
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        why = ticket.evicted() => return Err(Closed::Evicted(why)),
        r = tokio::time::timeout_at(accepted + handshake_timeout, handshake) => match r {
            Err(_) => return Err(Closed::HandshakeTimeout(handshake_timeout)),
            Ok(Err(LinkError::ClosedDuringHandshake)) => return Ok(None),
            Ok(Err(e)) => return Err(Closed::Handshake(e)),
            Ok(Ok(done)) => done,
        },
    };
    drop(ticket);
    let (mut reader, writer, who, seat) = match accepted {
        link::Accepted::Owner {
            reader,
            writer,
            client,
        } => {
            // The allow-list bounds who owns a mailbox here; deliverers
            // holding a token come over delivery links and are not on it.
            if let Some(allow) = &config.allow {
                if !allow.contains(&client) {
                    let detail = "this is a private relay and your key is not on its allow-list";
                    refuse(writer, ErrorCode::NotAllowed, detail.into(), config).await;
                    return Err(Closed::NotAllowed(client));
                }
            }
            let seat = match shared.occupancy.seat(client, source) {
                Ok(seat) => seat,
                Err(over) => {
                    refuse(writer, ErrorCode::RateLimited, over.for_client(), config).await;
                    return Err(Closed::OverLimit(over));
                }
            };
            debug!(client = %client.short(), "authenticated");
            let limit = shared.rate.connect(client);
            (reader, writer, Who::Owner { client, limit }, seat)
        }
        link::Accepted::Delivery { reader, writer } => {
            let seat = match shared.occupancy.seat_delivery(source) {
                Ok(seat) => seat,
                Err(over) => {
                    refuse(writer, ErrorCode::RateLimited, over.for_client(), config).await;
                    return Err(Closed::OverLimit(over));
                }
            };
            debug!("delivery link");
            let rates = shared.delivery_rate.connect(source);
            (reader, writer, Who::Delivery { rates }, seat)
        }
    };
    let client = who.client();
    let mut levels = vec![budget::pool(config.buffers.per_connection)];
    levels.extend(seat.key_budget());
    levels.push(seat.source_budget());
    levels.push(Arc::clone(&shared.buffers));
    let budget = Budget::new(levels);

    let (tx, rx) = mpsc::channel(OUTBOX);
    let writer = tokio::spawn(write_loop(writer, rx, config.write_timeout));
    let mut session = Session {
        shared: shared.clone(),
        who,
        source,
        pairing: None,
        resumes: Vec::new(),
        peer,
        tx,
        delivery: None,
        shutdown: shutdown.child_token(),
        files: files::Files::new(budget.clone()),
        budget,
        storing: VecDeque::new(),
    };
    let result = match session.who {
        Who::Owner { .. } => session.read_loop::<ClientMsg>(&mut reader, shutdown).await,
        Who::Delivery { .. } => {
            session
                .read_loop::<DeliveryMsg>(&mut reader, shutdown)
                .await
        }
    };
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
    drop(seat);
    result?;
    match written {
        Ok(Err(e)) => Err(e),
        _ => Ok(Some(client)),
    }
}

/// Reads a client's first message: the preamble and Noise message 1, and
/// not a byte more (the client sends nothing else before the relay
/// answers). `None` if the client hangs up first. A stream that does not
/// begin with the preamble's magic is refused as soon as that shows.
async fn first_message(r: &mut OwnedReadHalf) -> Result<Option<[u8; FIRST_MESSAGE_LEN]>, Closed> {
    let mut first = [0u8; FIRST_MESSAGE_LEN];
    let mut have = 0;
    while have < FIRST_MESSAGE_LEN {
        let n = r
            .read(&mut first[have..])
            .await
            .map_err(|e| Closed::Handshake(e.into()))?;
        if n == 0 {
            return Ok(None);
        }
        have += n;
        let magic = have.min(PREAMBLE_MAGIC.len());
        if first[..magic] != PREAMBLE_MAGIC[..magic] {
            return Err(Closed::Handshake(LinkError::BadPreamble));
        }
    }
    Ok(Some(first))
}

/// Tells a client just authenticated why it is not served, and closes;
/// best effort, and never for longer than the write timeout.
async fn refuse<W>(
    mut writer: LinkWriter<W>,
    code: ErrorCode,
    detail: String,
    config: &crate::RelayConfig,
) where
    W: tokio::io::AsyncWrite + Unpin,
{
    let refusal = RelayMsg::Error {
        req: 0,
        code,
        detail,
    };
    let _ = tokio::time::timeout(config.write_timeout, async {
        if writer.send(&refusal).await.is_ok() {
            let _ = writer.shutdown().await;
        }
    })
    .await;
}

/// Who is at the other end of a connection, and the rate limits that follow.
enum Who {
    /// An owner link: `client` proved its key.
    Owner {
        client: PublicKey,
        /// The key's rate limits, shared with its other connections.
        limit: KeyLimit,
    },
    /// A delivery link: nobody the relay can name.
    Delivery {
        /// This connection's and its address's buckets.
        rates: ConnectionRates,
    },
}

impl Who {
    fn client(&self) -> Option<PublicKey> {
        match self {
            Who::Owner { client, .. } => Some(*client),
            Who::Delivery { .. } => None,
        }
    }
}

/// How many uploads a delivery connection remembers having begun (for an
/// `UploadEnd` of one that turned out complete).
const RESUMES_KEPT: usize = 64;

struct Session {
    shared: Arc<Shared>,
    who: Who,
    /// The client's source address, for the limits on pairing slots.
    source: Source,
    /// The rendezvous slot this delivery link holds, if it is pairing;
    /// dropped (closing the slot) when the connection ends.
    pairing: Option<crate::rendezvous::Seat<Outgoing>>,
    /// Uploads begun on this delivery link, with the proof that stands for
    /// their uploader, newest last.
    resumes: Vec<(sotto_crypto::file::FileId, PublicKey)>,
    /// The client's IP address, for the limits on uploads in progress.
    peer: std::net::IpAddr,
    tx: Outbox,
    delivery: Option<JoinHandle<Result<(), Closed>>>,
    /// Cancelled when the connection ends: stops delivery and downloads.
    shutdown: CancellationToken,
    files: files::Files,
    /// What this connection's buffers draw from.
    budget: Budget,
    /// Sends and Acks handed to the store, oldest first, waiting for their
    /// commit.
    storing: VecDeque<InFlight>,
}

/// A Send or Ack handed to the store, holding its message's bytes of the
/// budget until its commit lands.
struct InFlight {
    req: u32,
    landing: Landing,
    _held: Reservation,
}

/// The requests of one link kind: what its read loop decodes and how each
/// is handled. A delivery link decodes [`DeliveryMsg`], which cannot express
/// reading, acknowledging, downloading or deleting.
trait Requests: serde::de::DeserializeOwned + Send {
    fn handle(
        self,
        session: &mut Session,
        held: Reservation,
    ) -> impl Future<Output = Result<Option<RelayMsg>, Closed>> + Send;
}

impl Requests for ClientMsg {
    fn handle(
        self,
        session: &mut Session,
        held: Reservation,
    ) -> impl Future<Output = Result<Option<RelayMsg>, Closed>> + Send {
        session.handle(self, held)
    }
}

impl Requests for DeliveryMsg {
    fn handle(
        self,
        session: &mut Session,
        held: Reservation,
    ) -> impl Future<Output = Result<Option<RelayMsg>, Closed>> + Send {
        session.handle_delivery(self, held)
    }
}

impl Session {
    async fn read_loop<M: Requests>(
        &mut self,
        reader: &mut LinkReader<Inbound>,
        shutdown: &CancellationToken,
    ) -> Result<(), Closed> {
        let idle = self.shared.config.idle_timeout;
        loop {
            let received = {
                // One receive, kept across idle checks: dropping it part-way
                // through a message would lose the bytes already read. The
                // rest of a message is read once its bytes are reserved.
                let budget = self.budget.clone();
                let recv = reader.recv_admitted::<M, _, _, _>(move |len| async move {
                    budget.reserve(budget::charge(len)).await
                });
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
            let (msg, held) = match received {
                Err(e) => return Err(e.into()),
                Ok(None) => return Ok(()),
                Ok(Some(received)) => received,
            };
            if let Some(reply) = msg.handle(self, held).await? {
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

    /// Handles one request; `held` is its bytes of the budget, kept as long
    /// as its payload is (until its commit, or until its chunk is on disk).
    ///
    /// The file-drop requests are boxed: their futures (resuming an upload,
    /// opening a blob) are large, and inline they would size every
    /// connection's task, idle ones included, by the largest of them; one
    /// small allocation per request is nothing beside a 64 KiB chunk.
    async fn handle(
        &mut self,
        msg: ClientMsg,
        held: Reservation,
    ) -> Result<Option<RelayMsg>, Closed> {
        let Some(client) = self.who.client() else {
            // Not reached: a delivery link decodes `DeliveryMsg` only.
            return Err(Closed::NotOnDeliveryLink("an owner link's request"));
        };
        Ok(Some(match msg {
            ClientMsg::Send { req, to, envelope } => {
                if let Err(limited) = self.envelope_token() {
                    return Ok(Some(RelayMsg::Error {
                        req,
                        code: ErrorCode::RateLimited,
                        detail: limited.to_string(),
                    }));
                }
                return self.send(req, to, envelope.into_vec(), held).await;
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
                    client,
                    Delivery {
                        tx: self.tx.clone(),
                        budget: self.budget.clone(),
                        live,
                        shutdown: self.shutdown.clone(),
                    },
                )));
                return Ok(None);
            }
            ClientMsg::Ack { req, ids } => return self.ack(client, req, ids, held).await,
            ClientMsg::Ping => RelayMsg::Pong,
            ClientMsg::UploadBegin {
                req,
                file_id,
                to,
                size,
            } => Box::pin(self.upload_begin(req, file_id, client, to, size)).await,
            ClientMsg::UploadChunk {
                file_id,
                index,
                data,
            } => {
                Box::pin(self.upload_chunk(file_id, index, data.into_vec(), held)).await?;
                return Ok(None);
            }
            ClientMsg::UploadEnd { req, file_id } => {
                return Ok(Box::pin(self.upload_end(req, file_id, Some(client))).await);
            }
            ClientMsg::Download { req, file_id, from } => {
                return Ok(Box::pin(self.download(req, file_id, from, client)).await);
            }
            ClientMsg::DeleteBlob { req, file_id } => {
                Box::pin(self.delete_blob(req, file_id, client)).await
            }
            ClientMsg::Notify { to, envelope } => {
                // A notice takes a token like a `Send`; one over the rate is
                // dropped, as a notice nobody is there for would be (a
                // notice is never answered).
                if self.envelope_token().is_err() {
                    debug!(client = %client.short(), "a notice over the rate limit dropped");
                    return Ok(None);
                }
                self.notice(to, &envelope)?;
                return Ok(None);
            }
            ClientMsg::SetDeliveryToken {
                req,
                token_hash,
                first_contact,
            } => match self
                .shared
                .store
                .set_delivery_token(client, token_hash, first_contact)
                .await
            {
                Ok(()) => RelayMsg::TokenSet { req },
                Err(e) => refusal(req, e)?,
            },
        }))
    }

    /// Handles one request of a delivery link. Each names its mailbox and
    /// presents its token (or none); nothing here is logged with the
    /// recipient, and there is no sender to log.
    async fn handle_delivery(
        &mut self,
        msg: DeliveryMsg,
        held: Reservation,
    ) -> Result<Option<RelayMsg>, Closed> {
        Ok(Some(match msg {
            DeliveryMsg::Send {
                req,
                to,
                token,
                envelope,
            } => {
                if let Err(refused) = self.admit(to, token.as_ref(), req).await? {
                    return Ok(Some(refused));
                }
                return self.send(req, to, envelope.into_vec(), held).await;
            }
            DeliveryMsg::Notify {
                to,
                token,
                envelope,
            } => {
                // Never answered, refused or not: a sender must not learn
                // from the relay whether `to` is connected.
                if let Ok(Ok(())) = self.admit(to, token.as_ref(), 0).await {
                    self.notice(to, &envelope)?;
                }
                return Ok(None);
            }
            DeliveryMsg::Ping => RelayMsg::Pong,
            DeliveryMsg::UploadBegin {
                req,
                file_id,
                to,
                token,
                size,
                resume,
            } => {
                if let Err(refused) = self.admit_upload(to, token.as_ref(), req).await? {
                    return Ok(Some(refused));
                }
                // The proof stands where an owner link's upload keeps its
                // uploader's key: only the same secret resumes it.
                let uploader = PublicKey::from_bytes(resume.proof().0);
                if self.resumes.len() >= RESUMES_KEPT {
                    self.resumes.remove(0);
                }
                self.resumes.retain(|(id, _)| *id != file_id);
                self.resumes.push((file_id, uploader));
                Box::pin(self.upload_begin(req, file_id, uploader, to, size)).await
            }
            DeliveryMsg::UploadChunk {
                file_id,
                index,
                data,
            } => {
                Box::pin(self.upload_chunk(file_id, index, data.into_vec(), held)).await?;
                return Ok(None);
            }
            DeliveryMsg::UploadEnd { req, file_id } => {
                let uploader = self
                    .resumes
                    .iter()
                    .find(|(id, _)| *id == file_id)
                    .map(|(_, proof)| *proof);
                return Ok(Box::pin(self.upload_end(req, file_id, uploader)).await);
            }
            DeliveryMsg::PairOpen { req } => return self.pair_open(req),
            DeliveryMsg::PairJoin { req, slot, message } => {
                return self.pair_join(req, slot, message.into_vec())
            }
            DeliveryMsg::PairSend { message } => {
                self.pair_send(message.into_vec())?;
                return Ok(None);
            }
        }))
    }

    /// Opens a rendezvous slot with this connection as its inviter. Nothing
    /// of it is logged but that a slot was opened: its number is half of
    /// a code.
    fn pair_open(&mut self, req: u32) -> Result<Option<RelayMsg>, Closed> {
        if self.pairing.is_some() {
            return Err(Closed::Protocol(
                "a second pairing on one connection".into(),
            ));
        }
        Ok(Some(
            match self.shared.rendezvous.open(self.source, self.tx.clone()) {
                Ok(seat) => {
                    let answer = RelayMsg::PairSlot {
                        req,
                        slot: seat.slot(),
                        expires_in: seat.expires_in(),
                    };
                    self.pairing = Some(seat);
                    debug!("pairing slot opened");
                    answer
                }
                Err(refused) => RelayMsg::Error {
                    req,
                    code: ErrorCode::RateLimited,
                    detail: refused.to_string(),
                },
            },
        ))
    }

    /// Joins a slot as its one joiner, handing the inviter `message`.
    fn pair_join(
        &mut self,
        req: u32,
        slot: u32,
        message: Vec<u8>,
    ) -> Result<Option<RelayMsg>, Closed> {
        if self.pairing.is_some() {
            return Err(Closed::Protocol(
                "a second pairing on one connection".into(),
            ));
        }
        let joined = self
            .shared
            .rendezvous
            .join(slot, self.tx.clone(), message)
            .map_err(|e| Closed::Protocol(e.to_string().into()))?;
        Ok(Some(match joined {
            Some(seat) => {
                self.pairing = Some(seat);
                RelayMsg::PairJoined { req }
            }
            None => RelayMsg::Error {
                req,
                code: ErrorCode::NoSuchSlot,
                detail: "no such pairing slot (expired or already used)".into(),
            },
        }))
    }

    /// Forwards a pairing message to the other party of this connection's
    /// slot. A slot whose other party is gone was told `PairGone`; what
    /// arrives after that is dropped, as it would be in flight.
    fn pair_send(&mut self, message: Vec<u8>) -> Result<(), Closed> {
        let Some(seat) = &self.pairing else {
            return Err(Closed::Protocol("a pairing message without a slot".into()));
        };
        if self.envelope_token().is_err() {
            return Err(Closed::Protocol(
                "pairing messages over the rate limit".into(),
            ));
        }
        match seat.send(message) {
            Ok(()) | Err(crate::rendezvous::SendRefused::Alone) => Ok(()),
            Err(e) => Err(Closed::Protocol(e.to_string().into())),
        }
    }

    /// Takes a token of this connection's envelope buckets.
    fn envelope_token(&self) -> Result<(), crate::limits::Limited> {
        match &self.who {
            Who::Owner { limit, .. } => limit.envelope(),
            Who::Delivery { rates } => rates.envelope(),
        }
    }

    /// Accounts for `len` upload bytes; how long to stop reading.
    fn upload_pause(&self, len: usize) -> std::time::Duration {
        match &self.who {
            Who::Owner { limit, .. } => limit.upload(len),
            Who::Delivery { rates } => rates.upload(len),
        }
    }

    /// Decides on a delivery's token and takes its rate tokens: `Ok(Err)`
    /// is the answer refusing it, `Err` a store failure that ends the
    /// connection.
    async fn admit(
        &self,
        to: PublicKey,
        token: Option<&sotto_keys::DeliveryToken>,
        req: u32,
    ) -> Result<Result<(), RelayMsg>, Closed> {
        let refused = |code, detail: String| Ok(Err(RelayMsg::Error { req, code, detail }));
        let admitted = match self.check_token(to, token).await? {
            Ok(admitted) => admitted,
            Err(refused) => return Ok(Err(refused.into_answer(req))),
        };
        if let Err(limited) = self.envelope_token() {
            return refused(ErrorCode::RateLimited, limited.to_string());
        }
        if admitted == Admitted::FirstContact {
            if let Err(limited) = self.shared.delivery_rate.first_contact(to) {
                return refused(
                    ErrorCode::RateLimited,
                    format!("deliveries without the recipient's token: {limited}"),
                );
            }
            let max = self.shared.config.delivery.first_contact_max_messages;
            let (messages, _) = self.shared.store.usage(to).await.map_err(Closed::Store)?;
            if messages >= max {
                return refused(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "the recipient's mailbox holds {max} messages or more, the most it takes from senders without its token"
                    ),
                );
            }
        }
        Ok(Ok(()))
    }

    /// [`Session::admit`] for an upload: the token decides, and a first
    /// contact is held to its rate (the file quotas apply as to anyone).
    async fn admit_upload(
        &self,
        to: PublicKey,
        token: Option<&sotto_keys::DeliveryToken>,
        req: u32,
    ) -> Result<Result<(), RelayMsg>, Closed> {
        match self.check_token(to, token).await? {
            Err(refused) => Ok(Err(refused.into_answer(req))),
            Ok(Admitted::Contact) => Ok(Ok(())),
            Ok(Admitted::FirstContact) => match self.shared.delivery_rate.first_contact(to) {
                Ok(()) => Ok(Ok(())),
                Err(limited) => Ok(Err(RelayMsg::Error {
                    req,
                    code: ErrorCode::RateLimited,
                    detail: format!("deliveries without the recipient's token: {limited}"),
                })),
            },
        }
    }

    async fn check_token(
        &self,
        to: PublicKey,
        token: Option<&sotto_keys::DeliveryToken>,
    ) -> Result<Result<Admitted, crate::delivery::Refused>, Closed> {
        let row = self
            .shared
            .store
            .delivery_token(to)
            .await
            .map_err(Closed::Store)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(crate::delivery::admit(
            &self.shared.config.delivery,
            row.as_ref(),
            token,
            now,
        ))
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
        held: Reservation,
    ) -> Result<Option<RelayMsg>, Closed> {
        if !self.make_room().await? {
            return Ok(None);
        }
        match self.shared.store.enqueue_begin(to, envelope).await {
            Ok(committing) => {
                self.storing.push_back(InFlight {
                    req,
                    landing: Landing::Stored(committing),
                    _held: held,
                });
                Ok(None)
            }
            Err(e) => refusal(req, e).map(Some),
        }
    }

    /// `Ack`: hands the deletion to the store without waiting for its
    /// commit, like a Send, so a client that both receives and sends keeps
    /// its Sends flowing; `Acked` follows from the read loop.
    async fn ack(
        &mut self,
        client: PublicKey,
        req: u32,
        ids: Vec<u64>,
        held: Reservation,
    ) -> Result<Option<RelayMsg>, Closed> {
        if ids.is_empty() {
            // Nothing to commit: answered at once.
            return Ok(Some(match self.shared.store.ack(client, ids).await {
                Ok(_) => RelayMsg::Acked { req, deleted: 0 },
                Err(e) => refusal(req, e)?,
            }));
        }
        if !self.make_room().await? {
            return Ok(None);
        }
        match self.shared.store.ack_begin(client, ids).await {
            Ok(committing) => {
                self.storing.push_back(InFlight {
                    req,
                    landing: Landing::Acked(committing),
                    _held: held,
                });
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
async fn next_stored(storing: &mut VecDeque<InFlight>) -> (u32, Landed) {
    let (req, result) = std::future::poll_fn(|cx| match storing.front_mut() {
        Some(InFlight {
            req,
            landing: Landing::Stored(c),
            ..
        }) => std::pin::Pin::new(c)
            .poll(cx)
            .map(|r| (*req, Landed::Stored(r))),
        Some(InFlight {
            req,
            landing: Landing::Acked(c),
            ..
        }) => std::pin::Pin::new(c)
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
        StoreError::Unavailable(why) => {
            tracing::warn!("store unavailable: {why}");
            (
                ErrorCode::Internal,
                "store unavailable, try again".to_owned(),
            )
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

/// What a delivery task needs of its connection.
struct Delivery {
    tx: Outbox,
    budget: Budget,
    live: bool,
    shutdown: CancellationToken,
}

/// Streams the mailbox in order, then (if `live`) forwards new envelopes as
/// the store's writer hands them over (see `store::live`): from the feed while
/// it keeps up, from the store after it lagged. `after` (the last id sent)
/// drops anything seen twice, so ids reach the client strictly increasing.
/// Every envelope holds its bytes of the connection's budget from before it
/// is read (or pushed) until it is written: a reader that does not keep up
/// stops the reads from the store, and the feed lags instead of growing.
async fn deliver(shared: Arc<Shared>, client: PublicKey, d: Delivery) -> Result<(), Closed> {
    let Delivery {
        tx,
        budget,
        live,
        shutdown,
    } = d;
    let mut feed = shared.store.subscribe_within(client, budget.clone());
    let wake = feed.waker();
    // Notices only, and only for live delivery: envelopes come through the
    // store's feed.
    let mut notices = live.then(|| shared.registry.subscribe(client, budget.clone()));
    let mut after = None;
    let mut drained = false;
    loop {
        // Armed before taking from the feed, so a push between the take and
        // the wait still wakes us.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        let taken = feed.take();
        let mut held = taken.held;
        for m in taken.pushed {
            let part = held
                .split(budget::charge(m.envelope.len()))
                .unwrap_or_default();
            if !forward(&tx, &mut after, m, part).await {
                return Ok(());
            }
        }
        drop(held);
        let mut lagged = taken.lagged;
        if lagged {
            // Read before the store, so that whatever is settled by then is
            // in the snapshot the read sees.
            let settled = feed.settled();
            let mailbox = Mailbox {
                shared: &shared,
                client,
                tx: &tx,
                budget: &budget,
                shutdown: &shutdown,
            };
            // Boxed: its state is large and lives only while catching up,
            // whereas a live connection waits in the loop below for hours.
            if !Box::pin(mailbox.send_after(&mut after)).await? {
                return Ok(());
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
                    while let Some(notice) = notices.as_mut().and_then(Notices::try_next) {
                        if !forward_notice(&tx, notice).await {
                            return Ok(());
                        }
                    }
                    break;
                }
                _ = feed.settled_changed(), if lagged => break,
                Some(notice) = next_notice(&mut notices), if drained => {
                    if !forward_notice(&tx, notice).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A delivery's reads of the mailbox from the store.
struct Mailbox<'a> {
    shared: &'a Shared,
    client: PublicKey,
    tx: &'a Outbox,
    budget: &'a Budget,
    shutdown: &'a CancellationToken,
}

impl Mailbox<'_> {
    /// Sends every envelope after `after`, one budgeted read at a time (a
    /// read reads only what its reservation covers); false once the
    /// connection is gone.
    async fn send_after(&self, after: &mut Option<u64>) -> Result<bool, Closed> {
        let mut want = FIRST_READ_BYTES;
        loop {
            let mut room = tokio::select! {
                room = self.budget.reserve(want) => room,
                _ = self.shutdown.cancelled() => return Ok(false),
                _ = self.tx.closed() => return Ok(false),
            };
            let (batch, more) = self
                .shared
                .store
                .pending_within(self.client, *after, DELIVERY_BATCH, room.bytes())
                .await
                .map_err(Closed::Store)?;
            for m in batch {
                let charge = budget::charge(m.envelope.len());
                let part = match room.split(charge) {
                    Some(part) => part,
                    None => self.budget.reserve(charge).await,
                };
                if !forward(self.tx, after, m, part).await {
                    return Ok(false);
                }
            }
            drop(room);
            if !more {
                return Ok(true);
            }
            want = DELIVERY_BYTES;
        }
    }
}

/// The next notice for a live connection; `None` at once for another.
async fn next_notice(notices: &mut Option<Notices>) -> Option<crate::registry::Notice> {
    match notices {
        Some(n) => Some(n.next().await),
        None => None,
    }
}

/// Queues a notice for the client; false once the connection is gone.
async fn forward_notice(tx: &Outbox, notice: crate::registry::Notice) -> bool {
    let msg = RelayMsg::Notice {
        envelope: ByteBuf::from(notice.envelope),
    };
    tx.send(Outgoing::holding(msg, notice.held)).await.is_ok()
}

/// Sends one envelope unless the client has had it already; `false` once the
/// writer is gone.
async fn forward(
    tx: &Outbox,
    after: &mut Option<u64>,
    m: crate::store::Stored,
    held: Reservation,
) -> bool {
    if after.is_some_and(|a| m.id <= a) {
        return true;
    }
    *after = Some(m.id);
    let msg = RelayMsg::Deliver {
        id: m.id,
        received_at: m.received_at,
        envelope: ByteBuf::from(m.envelope),
    };
    tx.send(Outgoing::holding(msg, held)).await.is_ok()
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
        write_one(&mut w, out, stall).await?;
        // Everything already queued goes out with one flush.
        while let Ok(out) = rx.try_recv() {
            write_one(&mut w, out, stall).await?;
        }
        within(stall, w.flush()).await?;
    }
    within(stall, w.shutdown()).await
}

/// Writes one message. The message is let go of once encoded, so that its
/// payload is held once, not twice, while the write waits; its bytes of the
/// budget are given back once it has gone into the link's buffer.
async fn write_one(
    w: &mut LinkWriter<OwnedWriteHalf>,
    out: Outgoing,
    stall: std::time::Duration,
) -> Result<(), Closed> {
    let Out { msg, held } = *out.0;
    let bytes = wire::encode(&msg);
    drop(msg);
    Within {
        write: w.send_bytes(&bytes),
        stall,
        timer: None,
    }
    .await?;
    drop(held);
    Ok(())
}
