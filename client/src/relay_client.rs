//! Talking to the relay: connect, prove who we are, send, fetch, acknowledge.
//!
//! Every step has a time limit, because a CLI that hangs on a dead relay or a
//! black-holed address is worse than one that says so. Failures are mapped to
//! [`RelayError`], whose messages name the relay's address and, where there is
//! one, the fix; the commands add what they know (the recipient's name).
//!
//! Anything the relay says in words (an error's `detail`) is neutralised
//! before it can reach a terminal: the relay is not trusted.

use std::fmt;
use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::file::{self, FileId};
use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayHello, RelayMsg};
use sotto_crypto::LinkError;
use sotto_keys::{PublicKey, RelayAddr, RelayKey, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::config::RelayPin;
use crate::display::sanitize;

/// Time allowed to open the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the Noise handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the relay to answer one request (or send the next
/// envelope of a fetch). A durable commit can take a while on a busy disk.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most ids acknowledged in one `Ack`, keeping each message small.
const ACK_BATCH: usize = 1024;

/// Why talking to the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No TCP connection could be made.
    #[error("cannot reach the relay at {addr} ({reason}): is sotto-relay running there?")]
    Unreachable {
        /// The relay's address.
        addr: RelayAddr,
        /// Why, in a few words ("connection refused").
        reason: String,
    },
    /// The relay proved a key other than the pinned one.
    #[error("relay key mismatch: {addr} proved {got} but config.toml pins {pinned}; if the relay was really re-keyed, run `sotto relay set` with the new key")]
    KeyMismatch {
        /// The relay's address.
        addr: RelayAddr,
        /// The key it proved.
        got: RelayKey,
        /// The key in config.toml.
        pinned: RelayKey,
    },
    /// The handshake did not finish in time.
    #[error("the relay at {addr} did not complete the handshake within {} s: is it a sotto relay?", HANDSHAKE_TIMEOUT.as_secs())]
    HandshakeTimeout {
        /// The relay's address.
        addr: RelayAddr,
    },
    /// The relay speaks another protocol version.
    #[error("the relay at {addr} speaks protocol version {got}, this sotto speaks {ours}: upgrade whichever is older")]
    Version {
        /// The relay's address.
        addr: RelayAddr,
        /// Its version.
        got: u16,
        /// Ours.
        ours: u16,
    },
    /// The handshake failed for another reason.
    #[error("the handshake with the relay at {addr} failed ({source}): is it a sotto relay?")]
    Handshake {
        /// The relay's address.
        addr: RelayAddr,
        /// What failed.
        source: LinkError,
    },
    /// The connection failed after the handshake.
    #[error("the connection to the relay at {addr} failed: {source}")]
    Link {
        /// The relay's address.
        addr: RelayAddr,
        /// What failed.
        source: LinkError,
    },
    /// The relay hung up before answering.
    #[error("the relay at {addr} closed the connection before answering; try again")]
    Closed {
        /// The relay's address.
        addr: RelayAddr,
    },
    /// The relay did not answer in time.
    #[error("the relay at {addr} did not answer within {} s; try again", ANSWER_TIMEOUT.as_secs())]
    NoAnswer {
        /// The relay's address.
        addr: RelayAddr,
    },
    /// The relay stopped taking what we send.
    #[error("the relay at {addr} stopped accepting data for {} s; try again", ANSWER_TIMEOUT.as_secs())]
    Stalled {
        /// The relay's address.
        addr: RelayAddr,
    },
    /// The relay said something that makes no sense at this point.
    #[error("the relay at {addr} sent an unexpected message ({what})")]
    Protocol {
        /// The relay's address.
        addr: RelayAddr,
        /// What was expected.
        what: &'static str,
    },
    /// The relay refused the request.
    #[error("{}", refusal(.addr, *.code, .detail))]
    Refused {
        /// The relay's address.
        addr: RelayAddr,
        /// Its error code.
        code: ErrorCode,
        /// Its explanation, neutralised.
        detail: String,
    },
}

fn refusal(addr: &RelayAddr, code: ErrorCode, detail: &str) -> String {
    let why = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    match code {
        ErrorCode::QuotaExceeded => {
            format!("the recipient's mailbox on the relay at {addr} is full{why}; try again once they have read their messages")
        }
        ErrorCode::TooLarge => format!("the relay at {addr} refused the message as too large{why}"),
        ErrorCode::BadRequest => format!("the relay at {addr} refused the request as invalid{why}"),
        ErrorCode::Internal => {
            format!("the relay at {addr} failed internally{why}; try again later")
        }
        ErrorCode::ShuttingDown => {
            format!("the relay at {addr} is shutting down{why}; try again in a moment")
        }
        ErrorCode::RateLimited => {
            format!("the relay at {addr} is rate limiting you{why}; try again in a moment")
        }
        ErrorCode::OutOfSpace => {
            format!("the relay at {addr} is out of disk space{why}; nothing was stored, try again later")
        }
        ErrorCode::NotAllowed => format!(
            "the relay at {addr} is private and does not serve your key{why}; ask its operator to add the key `sotto id` prints"
        ),
        ErrorCode::WrongToken => format!(
            "the relay at {addr} refused the delivery: the recipient's delivery token has changed{why}; ask them for a new invite"
        ),
        ErrorCode::FirstContactRefused => format!(
            "the relay at {addr} refused the delivery: the recipient accepts messages only from contacts given their invite{why}"
        ),
        ErrorCode::NoSuchSlot => {
            format!("no such code on the relay at {addr} (expired or already used){why}")
        }
    }
}

/// A few words for an I/O error: "connection refused", not
/// "Connection refused (os error 111)".
pub fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let words = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::TimedOut => "timed out",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::PermissionDenied => "permission denied",
        _ => {
            let s = e.to_string();
            let s = match s.find(" (os error") {
                Some(i) => &s[..i],
                None => &s,
            };
            let mut chars = s.chars();
            return match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => "unknown error".to_owned(),
            };
        }
    };
    words.to_owned()
}

/// One envelope fetched from the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The relay's id, to acknowledge it.
    pub id: u64,
    /// When the relay stored it (unix seconds, the relay's word).
    pub received_at: u64,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

/// What one fetch collected.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The envelopes, in the relay's order.
    pub deliveries: Vec<Delivery>,
    /// The relay had more than one fetch collects: run again for the rest.
    pub more: bool,
}

/// Most envelopes one fetch keeps in memory: a relay's default mailbox quota.
/// A relay cannot make a client hold more, however much it sends.
pub const FETCH_MAX_ENVELOPES: usize = 10_000;
/// Most envelope bytes one fetch keeps in memory (the default mailbox quota).
pub const FETCH_MAX_BYTES: usize = 64 * 1024 * 1024;

/// One sealed chunk of a file, on its way to or from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunk {
    /// Its index in the file.
    pub index: u64,
    /// The sealed bytes.
    pub data: Vec<u8>,
}

/// How [`RelayConn::upload_chunks`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadEnd {
    /// The relay holds the whole blob durably.
    Done,
    /// The source of chunks closed before the last one; nothing was ended.
    SourceEnded,
}

/// How [`RelayConn::download`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadEnd {
    /// The relay sent `DownloadEnd`: every chunk it had to send was passed on.
    Ended,
    /// The sink closed first.
    SinkClosed,
}

/// An authenticated connection to the relay.
pub struct RelayConn<R, W> {
    reader: LinkReader<R>,
    writer: LinkWriter<W>,
    addr: RelayAddr,
    hello: RelayHello,
    next_req: u32,
}

impl<R, W> fmt::Debug for RelayConn<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConn")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Connects to the pinned relay over TCP (at the first of its addresses
/// that answers, see [`crate::dial`]) and runs the handshake.
pub async fn connect(
    pin: &RelayPin,
    me: &SecretKey,
) -> Result<RelayConn<OwnedReadHalf, OwnedWriteHalf>, RelayError> {
    crate::dial::dial(&pin.addr, &pin.nodes, |stream, addr| {
        let (r, w) = stream.into_split();
        handshake(r, w, addr, &pin.key, me)
    })
    .await
}

/// Runs the handshake on an open stream (separate from [`connect`] so tests
/// can use an in-memory pipe).
pub async fn handshake<R, W>(
    r: R,
    w: W,
    addr: RelayAddr,
    pinned: &RelayKey,
    me: &SecretKey,
) -> Result<RelayConn<R, W>, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (reader, writer, hello) =
        match timeout(HANDSHAKE_TIMEOUT, link::connect(r, w, me, pinned)).await {
            Err(_) => return Err(RelayError::HandshakeTimeout { addr }),
            Ok(Err(e)) => return Err(handshake_error(addr, e)),
            Ok(Ok(done)) => done,
        };
    tracing::debug!(relay = %addr, max_envelope = hello.max_envelope_len, "handshake done");
    Ok(RelayConn {
        reader,
        writer,
        addr,
        hello,
        next_req: 1,
    })
}

pub(crate) fn handshake_error(addr: RelayAddr, e: LinkError) -> RelayError {
    match e {
        LinkError::RelayKeyMismatch { expected, got } => RelayError::KeyMismatch {
            addr,
            got,
            pinned: expected,
        },
        LinkError::UnsupportedVersion { got, ours } => RelayError::Version { addr, got, ours },
        LinkError::Io(io) => RelayError::Unreachable {
            addr,
            reason: describe_io(&io),
        },
        other => RelayError::Handshake {
            addr,
            source: other,
        },
    }
}

fn link_error(addr: &RelayAddr, source: LinkError) -> RelayError {
    use std::io::ErrorKind as K;
    match source {
        // A peer that went away, whichever way the system noticed. Told as
        // such, and without the I/O error as a cause: a broken pipe to the
        // relay must not pass for a closed stdout.
        LinkError::UnexpectedEof => RelayError::Closed { addr: addr.clone() },
        LinkError::Io(e)
            if matches!(
                e.kind(),
                K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof
            ) =>
        {
            RelayError::Closed { addr: addr.clone() }
        }
        source => RelayError::Link {
            addr: addr.clone(),
            source,
        },
    }
}

pub(crate) fn refused(addr: &RelayAddr, code: ErrorCode, detail: &str) -> RelayError {
    RelayError::Refused {
        addr: addr.clone(),
        code,
        detail: sanitize(detail.chars().take(200).collect::<String>().trim()),
    }
}

/// The next message from the relay; within `limit` when there is one.
///
/// Not cancel-safe (a message may be half read): callers that race it
/// against something else keep the future alive across the race.
pub(crate) async fn recv_from<R: AsyncRead + Unpin>(
    reader: &mut LinkReader<R>,
    addr: &RelayAddr,
    limit: Option<Duration>,
) -> Result<RelayMsg, RelayError> {
    let received = match limit {
        Some(limit) => match timeout(limit, reader.recv::<RelayMsg>()).await {
            Err(_) => return Err(RelayError::NoAnswer { addr: addr.clone() }),
            Ok(r) => r,
        },
        None => reader.recv::<RelayMsg>().await,
    };
    match received {
        Err(e) => Err(link_error(addr, e)),
        Ok(None) => Err(RelayError::Closed { addr: addr.clone() }),
        Ok(Some(msg)) => Ok(msg),
    }
}

/// Waits for the answer to request `req` that `answer` recognises. The
/// relay's error for that request, or for the whole connection (`req` 0),
/// ends the wait; anything else is skipped. The same on both link kinds.
pub(crate) async fn answer_to<R: AsyncRead + Unpin, T>(
    reader: &mut LinkReader<R>,
    addr: &RelayAddr,
    req: u32,
    waiting_for: &'static str,
    mut answer: impl FnMut(&RelayMsg) -> Option<T>,
) -> Result<T, RelayError> {
    loop {
        let msg = recv_from(reader, addr, Some(ANSWER_TIMEOUT)).await?;
        if let RelayMsg::Error {
            req: r,
            code,
            detail,
        } = &msg
        {
            if *r == req || *r == 0 {
                return Err(refused(addr, *code, detail));
            }
        }
        if let Some(found) = answer(&msg) {
            return Ok(found);
        }
        if msg != RelayMsg::Pong {
            tracing::debug!(?msg, "ignoring a message while waiting for {waiting_for}");
        }
    }
}

/// The relay's answer to `UploadBegin` request `req` for `file_id` of
/// `size` bytes: how many chunks it already holds (never more than the
/// file has).
pub(crate) async fn upload_state<R: AsyncRead + Unpin>(
    reader: &mut LinkReader<R>,
    addr: &RelayAddr,
    req: u32,
    file_id: FileId,
    size: u64,
) -> Result<u64, RelayError> {
    let have = answer_to(reader, addr, req, "UploadState", |m| match m {
        RelayMsg::UploadState {
            req: r,
            file_id: f,
            have,
        } if *r == req && *f == file_id => Some(*have),
        _ => None,
    })
    .await?;
    if have > file::chunk_count(size) {
        return Err(RelayError::Protocol {
            addr: addr.clone(),
            what: "more chunks stored than the file has",
        });
    }
    Ok(have)
}

/// One upload's numbers, for [`stream_upload`].
pub(crate) struct Upload {
    /// The file.
    pub file_id: FileId,
    /// Its plaintext size.
    pub size: u64,
    /// The first chunk to send.
    pub from: u64,
    /// The request number of its `UploadEnd`.
    pub end_req: u32,
}

/// Sends the sealed chunks `from..` of an upload as `chunks` yields them,
/// then `end`, and returns once the relay answers `UploadDone`; the same on
/// the owner link and the delivery link, which differ only in the messages
/// (`chunk_msg`, `end`). A source that closes early leaves the upload
/// unfinished ([`UploadEnd::SourceEnded`]). `on_sent(n)` is called once
/// chunks up to `n` are written.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_upload<R, W, M>(
    reader: &mut LinkReader<R>,
    writer: &mut LinkWriter<W>,
    addr: &RelayAddr,
    upload: &Upload,
    chunks: &mut mpsc::Receiver<SealedChunk>,
    on_sent: &mut (dyn FnMut(u64) + Send),
    chunk_msg: impl Fn(u64, ByteBuf) -> M,
    end: M,
) -> Result<UploadEnd, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    M: serde::Serialize,
{
    let Upload {
        file_id,
        size,
        from,
        end_req,
    } = *upload;
    let total = file::chunk_count(size);
    let send_all = async {
        let mut next = from;
        while next < total {
            let Some(chunk) = chunks.recv().await else {
                return Ok(false);
            };
            if chunk.index != next {
                return Err(RelayError::Protocol {
                    addr: addr.clone(),
                    what: "a chunk out of order from the local reader",
                });
            }
            let msg = chunk_msg(chunk.index, ByteBuf::from(chunk.data));
            // Flushed only when nothing else is ready: a burst of chunks
            // goes out in as few writes as the buffer allows.
            write_to(writer, addr, &msg, chunks.is_empty()).await?;
            next += 1;
            on_sent(next);
        }
        write_to(writer, addr, &end, true).await?;
        Ok::<bool, RelayError>(true)
    };

    // Runs for the whole upload, so that a refusal or a dropped connection
    // is noticed while chunks are still going out. No time limit while
    // sending: checkpoints can be minutes apart on a slow link, and a
    // stalled relay shows up as a stalled write instead.
    let read_all = async {
        loop {
            match recv_from(reader, addr, None).await? {
                RelayMsg::UploadProgress { file_id: f, have } if f == file_id => {
                    tracing::debug!(have, "durable on the relay");
                }
                RelayMsg::UploadDone { req, file_id: f } if req == end_req && f == file_id => {
                    return Ok::<(), RelayError>(());
                }
                // Nothing else is outstanding on this connection: any
                // refusal is about this upload.
                RelayMsg::Error { code, detail, .. } => return Err(refused(addr, code, &detail)),
                RelayMsg::Pong => {}
                other => tracing::debug!(?other, "ignoring a message during an upload"),
            }
        }
    };

    tokio::pin!(send_all);
    tokio::pin!(read_all);
    tokio::select! {
        sent = &mut send_all => {
            if !sent? {
                return Ok(UploadEnd::SourceEnded);
            }
            match timeout(ANSWER_TIMEOUT, &mut read_all).await {
                Err(_) => Err(RelayError::NoAnswer { addr: addr.clone() }),
                Ok(r) => r.map(|()| UploadEnd::Done),
            }
        }
        done = &mut read_all => {
            done?;
            Err(RelayError::Protocol {
                addr: addr.clone(),
                what: "UploadDone before the upload was complete",
            })
        }
    }
}

/// Queues one message on the link without flushing, within [`ANSWER_TIMEOUT`]:
/// a relay that stops reading must not hang the client forever.
pub(crate) async fn write_to<W: AsyncWrite + Unpin, M: serde::Serialize>(
    writer: &mut LinkWriter<W>,
    addr: &RelayAddr,
    msg: &M,
    flush: bool,
) -> Result<(), RelayError> {
    let write = async {
        writer.send(msg).await?;
        if flush {
            writer.flush().await?;
        }
        Ok(())
    };
    match timeout(ANSWER_TIMEOUT, write).await {
        Err(_) => Err(RelayError::Stalled { addr: addr.clone() }),
        Ok(r) => r.map_err(|e| link_error(addr, e)),
    }
}

impl<R, W> RelayConn<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The relay's address.
    pub fn addr(&self) -> &RelayAddr {
        &self.addr
    }

    /// The two halves of the link and the relay's address, for a long-lived
    /// session (`sotto chat`) that reads and writes at the same time.
    pub fn into_parts(self) -> (LinkReader<R>, LinkWriter<W>, RelayAddr) {
        (self.reader, self.writer, self.addr)
    }

    /// The largest envelope the relay accepts, in bytes.
    pub fn max_envelope_len(&self) -> usize {
        self.hello.max_envelope_len as usize
    }

    fn req(&mut self) -> u32 {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        req
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), RelayError> {
        let r = async {
            self.writer.send(msg).await?;
            self.writer.flush().await
        }
        .await;
        r.map_err(|source| self.link_error(source))
    }

    fn link_error(&self, source: LinkError) -> RelayError {
        link_error(&self.addr, source)
    }

    /// The next message from the relay, within [`ANSWER_TIMEOUT`].
    async fn recv(&mut self) -> Result<RelayMsg, RelayError> {
        recv_from(&mut self.reader, &self.addr, Some(ANSWER_TIMEOUT)).await
    }

    fn refused(&self, code: ErrorCode, detail: &str) -> RelayError {
        refused(&self.addr, code, detail)
    }

    /// Sends request `req` and waits for its answer, which `answer`
    /// recognises. The relay's error for that request, or for the whole
    /// connection (`req` 0), ends the wait; anything else is skipped.
    async fn request<T>(
        &mut self,
        req: u32,
        msg: &ClientMsg,
        waiting_for: &'static str,
        answer: impl FnMut(&RelayMsg) -> Option<T>,
    ) -> Result<T, RelayError> {
        self.send(msg).await?;
        answer_to(&mut self.reader, &self.addr, req, waiting_for, answer).await
    }

    /// Registers my mailbox's delivery token with the relay, as its hash
    /// ([`sotto_crypto::delivery::token_hash`]), and whether it accepts
    /// deliveries without a token (first contact); returns once committed.
    pub async fn set_delivery_token(
        &mut self,
        token_hash: sotto_crypto::delivery::TokenHash,
        first_contact: bool,
    ) -> Result<(), RelayError> {
        let req = self.req();
        let msg = ClientMsg::SetDeliveryToken {
            req,
            token_hash,
            first_contact,
        };
        self.request(req, &msg, "TokenSet", |m| {
            matches!(m, RelayMsg::TokenSet { req: r } if *r == req).then_some(())
        })
        .await
    }

    /// Hands an envelope to the relay for `to`; returns once the relay has
    /// stored it durably (`Stored`).
    pub async fn send_envelope(
        &mut self,
        to: &PublicKey,
        envelope: Vec<u8>,
    ) -> Result<(), RelayError> {
        let req = self.req();
        let msg = ClientMsg::Send {
            req,
            to: *to,
            envelope: ByteBuf::from(envelope),
        };
        self.request(req, &msg, "Stored", |m| {
            matches!(m, RelayMsg::Stored { req: r } if *r == req).then_some(())
        })
        .await
    }

    /// Fetches the pending envelopes, in the relay's order, up to `Drained`
    /// or to [`FETCH_MAX_ENVELOPES`] / [`FETCH_MAX_BYTES`], whichever comes
    /// first. Envelopes past the limit stay on the relay (the caller
    /// acknowledges only what it got) and the next fetch brings them.
    pub async fn fetch_pending(&mut self) -> Result<Fetched, RelayError> {
        self.fetch_pending_limited(FETCH_MAX_ENVELOPES, FETCH_MAX_BYTES)
            .await
    }

    async fn fetch_pending_limited(
        &mut self,
        max_envelopes: usize,
        max_bytes: usize,
    ) -> Result<Fetched, RelayError> {
        self.send(&ClientMsg::Fetch { live: false }).await?;
        let mut out = Fetched::default();
        let mut bytes = 0usize;
        loop {
            match self.recv().await? {
                RelayMsg::Deliver {
                    id,
                    received_at,
                    envelope,
                } => {
                    bytes = bytes.saturating_add(envelope.len());
                    if out.deliveries.len() >= max_envelopes || bytes > max_bytes {
                        // Later Delivers are skipped by whatever waits for
                        // the next answer on this connection.
                        out.more = true;
                        return Ok(out);
                    }
                    out.deliveries.push(Delivery {
                        id,
                        received_at,
                        envelope: envelope.into_vec(),
                    });
                }
                RelayMsg::Drained => return Ok(out),
                RelayMsg::Error { code, detail, .. } => return Err(self.refused(code, &detail)),
                // A notice is live-only and this fetch is not live: harmless.
                RelayMsg::Pong | RelayMsg::Notice { .. } => {}
                RelayMsg::Stored { .. }
                | RelayMsg::Acked { .. }
                | RelayMsg::UploadState { .. }
                | RelayMsg::UploadProgress { .. }
                | RelayMsg::UploadDone { .. }
                | RelayMsg::DownloadChunk { .. }
                | RelayMsg::DownloadEnd { .. }
                | RelayMsg::BlobDeleted { .. }
                | RelayMsg::TokenSet { .. }
                | RelayMsg::PairSlot { .. }
                | RelayMsg::PairJoined { .. }
                | RelayMsg::PairMessage { .. }
                | RelayMsg::PairGone => {
                    return Err(RelayError::Protocol {
                        addr: self.addr.clone(),
                        what: "an answer to a request that was not made, while fetching",
                    })
                }
            }
        }
    }

    /// Deletes fetched envelopes from the mailbox; returns how many the relay
    /// deleted.
    pub async fn ack(&mut self, ids: &[u64]) -> Result<u64, RelayError> {
        let mut deleted = 0u64;
        for batch in ids.chunks(ACK_BATCH) {
            let req = self.req();
            let msg = ClientMsg::Ack {
                req,
                ids: batch.to_vec(),
            };
            deleted += self
                .request(req, &msg, "Acked", |m| match m {
                    RelayMsg::Acked { req: r, deleted } if *r == req => Some(u64::from(*deleted)),
                    _ => None,
                })
                .await?;
        }
        Ok(deleted)
    }

    /// Begins, or resumes, uploading file `file_id` of `size` plaintext
    /// bytes for `to`; returns how many chunks the relay already holds
    /// durably (the upload continues from there).
    pub async fn upload_begin(
        &mut self,
        file_id: FileId,
        to: &PublicKey,
        size: u64,
    ) -> Result<u64, RelayError> {
        let req = self.req();
        let msg = ClientMsg::UploadBegin {
            req,
            file_id,
            to: *to,
            size,
        };
        self.send(&msg).await?;
        upload_state(&mut self.reader, &self.addr, req, file_id, size).await
    }

    /// Sends the sealed chunks `from..` of an upload begun with
    /// [`upload_begin`](Self::upload_begin), as `chunks` yields them, without
    /// waiting for the relay between chunks; then `UploadEnd`, and returns once
    /// the relay answers `UploadDone` (the whole blob is durable).
    ///
    /// Chunks must come in order, starting at `from`. If `chunks` closes before
    /// the last chunk of the file has come, the upload is left unfinished (no
    /// `UploadEnd`) and [`UploadEnd::SourceEnded`] is returned: the caller knows
    /// why its source stopped. `on_sent(n)` is called once chunks `0..n` have
    /// been handed to the link.
    pub async fn upload_chunks(
        &mut self,
        file_id: FileId,
        size: u64,
        from: u64,
        chunks: &mut mpsc::Receiver<SealedChunk>,
        on_sent: &mut (dyn FnMut(u64) + Send),
    ) -> Result<UploadEnd, RelayError> {
        let end_req = self.req();
        let upload = Upload {
            file_id,
            size,
            from,
            end_req,
        };
        stream_upload(
            &mut self.reader,
            &mut self.writer,
            &self.addr,
            &upload,
            chunks,
            on_sent,
            |index, data| ClientMsg::UploadChunk {
                file_id,
                index,
                data,
            },
            ClientMsg::UploadEnd {
                req: end_req,
                file_id,
            },
        )
        .await
    }

    /// Streams the sealed chunks of file `file_id` (addressed to me) from
    /// chunk `from` into `sink`, up to the relay's `DownloadEnd`.
    ///
    /// Chunks are passed on as they come, unchecked (the receiver opens them);
    /// only their file id is checked here. Waiting on a full `sink` is the
    /// backpressure that keeps memory bounded. If `sink` closes (its reader
    /// stopped), [`DownloadEnd::SinkClosed`] is returned with the stream still
    /// running: the connection must not be used for anything else afterwards.
    /// `on_chunk(index)` is called once a chunk is in `sink`.
    pub async fn download(
        &mut self,
        file_id: FileId,
        from: u64,
        sink: &mpsc::Sender<SealedChunk>,
        on_chunk: &mut (dyn FnMut(u64) + Send),
    ) -> Result<DownloadEnd, RelayError> {
        let req = self.req();
        self.send(&ClientMsg::Download { req, file_id, from })
            .await?;
        loop {
            match self.recv().await? {
                RelayMsg::DownloadChunk {
                    file_id: f,
                    index,
                    data,
                } if f == file_id => {
                    let chunk = SealedChunk {
                        index,
                        data: data.into_vec(),
                    };
                    if sink.send(chunk).await.is_err() {
                        return Ok(DownloadEnd::SinkClosed);
                    }
                    on_chunk(index);
                }
                RelayMsg::DownloadEnd { req: r, file_id: f } if r == req && f == file_id => {
                    return Ok(DownloadEnd::Ended)
                }
                RelayMsg::Error {
                    req: r,
                    code,
                    detail,
                } if r == req || r == 0 => return Err(self.refused(code, &detail)),
                RelayMsg::DownloadChunk { .. } | RelayMsg::DownloadEnd { .. } => {
                    return Err(RelayError::Protocol {
                        addr: self.addr.clone(),
                        what: "a chunk of a file that was not asked for",
                    })
                }
                RelayMsg::Pong => {}
                other => tracing::debug!(?other, "ignoring a message during a download"),
            }
        }
    }

    /// Deletes file `file_id` (addressed to me) from the relay; returns
    /// whether there was one to delete.
    pub async fn delete_blob(&mut self, file_id: FileId) -> Result<bool, RelayError> {
        let req = self.req();
        let msg = ClientMsg::DeleteBlob { req, file_id };
        self.request(req, &msg, "BlobDeleted", |m| match m {
            RelayMsg::BlobDeleted { req: r, deleted } if *r == req => Some(*deleted),
            _ => None,
        })
        .await
    }

    /// Says goodbye: flushes and closes our direction. Failures are ignored,
    /// everything that mattered has been answered already.
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(2), self.writer.shutdown()).await;
    }
}

/// A scripted relay for the tests of the modules built on this one.
#[cfg(test)]
pub(crate) mod test_relay {
    use super::*;
    use sotto_crypto::link::LINK_VERSION;

    type Reader = LinkReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>;
    type Writer = LinkWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>;
    /// The client's end of a scripted relay.
    pub(crate) type TestConn = RelayConn<
        tokio::io::ReadHalf<tokio::io::DuplexStream>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
    >;

    /// A relay in a task on the other end of a pipe, answering from a script.
    pub(crate) async fn fake_relay<F, Fut>(script: F) -> TestConn
    where
        F: FnOnce(Reader, Writer) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let relay = SecretKey::generate();
        let pinned = RelayKey::from(relay.public());
        let (c, s) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let (r, w) = tokio::io::split(s);
            let hello = RelayHello {
                version: LINK_VERSION,
                max_envelope_len: 70_000,
            };
            let (rr, rw, _peer) = link::accept(r, w, &relay, &hello).await.unwrap();
            script(rr, rw).await;
        });
        let (r, w) = tokio::io::split(c);
        handshake(
            r,
            w,
            "127.0.0.1:7300".parse().unwrap(),
            &pinned,
            &SecretKey::generate(),
        )
        .await
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_relay::fake_relay;
    use super::*;

    fn addr() -> RelayAddr {
        "127.0.0.1:7300".parse().unwrap()
    }

    #[test]
    fn rate_limit_and_full_disk_refusals_say_so_in_one_line() {
        let limited = refused(&addr(), ErrorCode::RateLimited, "retry in 20 ms").to_string();
        assert!(limited.contains("is rate limiting you"), "{limited}");
        assert!(limited.contains("try again in a moment"), "{limited}");
        let full = refused(&addr(), ErrorCode::OutOfSpace, "disk full").to_string();
        assert!(full.contains("out of disk space"), "{full}");
        assert!(full.contains("nothing was stored"), "{full}");
        assert!(!limited.contains('\n') && !full.contains('\n'));
    }

    #[test]
    fn unreachable_and_mismatch_messages_say_what_to_do() {
        let e = RelayError::Unreachable {
            addr: addr(),
            reason: describe_io(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the relay at 127.0.0.1:7300 (connection refused): is sotto-relay running there?"
        );
        let got = RelayKey::from_bytes([1; 32]);
        let pinned = RelayKey::from_bytes([2; 32]);
        let e = handshake_error(
            addr(),
            LinkError::RelayKeyMismatch {
                expected: pinned,
                got,
            },
        );
        assert_eq!(
            e.to_string(),
            format!("relay key mismatch: 127.0.0.1:7300 proved {got} but config.toml pins {pinned}; if the relay was really re-keyed, run `sotto relay set` with the new key")
        );
        let e = handshake_error(addr(), LinkError::UnsupportedVersion { got: 9, ours: 1 });
        assert!(e.to_string().contains("protocol version 9"), "{e}");
    }

    #[test]
    fn a_relay_that_went_away_is_closed_not_a_broken_pipe() {
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
        ] {
            let e = link_error(&addr(), LinkError::Io(kind.into()));
            assert!(matches!(e, RelayError::Closed { .. }), "{e}");
            assert!(std::error::Error::source(&e).is_none());
        }
    }

    #[test]
    fn io_errors_are_described_in_a_few_words() {
        let e = std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        );
        assert_eq!(
            describe_io(&e),
            "failed to lookup address information: Name or service not known"
        );
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(describe_io(&e), "connection refused");
    }

    #[test]
    fn a_relays_detail_cannot_inject_escapes() {
        let conn_addr = addr();
        let e = RelayError::Refused {
            addr: conn_addr,
            code: ErrorCode::Internal,
            detail: sanitize("disk \x1b[31mfull\n"),
        };
        let s = e.to_string();
        assert!(!s.contains('\x1b') && !s.contains('\n'), "{s}");
        assert!(s.contains("failed internally"), "{s}");
    }

    #[tokio::test]
    async fn send_waits_for_stored_and_maps_a_full_mailbox() {
        let mut conn = fake_relay(|mut r, mut w| async move {
            let Some(ClientMsg::Send { req, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::Pong).await.unwrap();
            w.send(&RelayMsg::Stored { req }).await.unwrap();
            w.flush().await.unwrap();
            let Some(ClientMsg::Send { req, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::Error {
                req,
                code: ErrorCode::QuotaExceeded,
                detail: "mailbox full".into(),
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
        })
        .await;
        assert_eq!(conn.max_envelope_len(), 70_000);
        let to = PublicKey::from_bytes([5; 32]);
        conn.send_envelope(&to, vec![1, 2, 3]).await.unwrap();
        let err = conn.send_envelope(&to, vec![4]).await.unwrap_err();
        assert!(
            matches!(
                err,
                RelayError::Refused {
                    code: ErrorCode::QuotaExceeded,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fetch_collects_until_drained_and_ack_waits_for_acked() {
        let mut conn = fake_relay(|mut r, mut w| async move {
            assert_eq!(
                r.recv::<ClientMsg>().await.unwrap(),
                Some(ClientMsg::Fetch { live: false })
            );
            for id in [7u64, 9] {
                w.send(&RelayMsg::Deliver {
                    id,
                    received_at: 100,
                    envelope: ByteBuf::from(vec![id as u8]),
                })
                .await
                .unwrap();
            }
            w.send(&RelayMsg::Drained).await.unwrap();
            w.flush().await.unwrap();
            let Some(ClientMsg::Ack { req, ids }) = r.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(ids, vec![7, 9]);
            w.send(&RelayMsg::Acked { req, deleted: 2 }).await.unwrap();
            w.flush().await.unwrap();
            // Then hang up.
        })
        .await;
        let got = conn.fetch_pending().await.unwrap();
        assert!(!got.more);
        let got = got.deliveries;
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![7, 9]);
        assert_eq!(got[1].envelope, vec![9]);
        assert_eq!(conn.ack(&[7, 9]).await.unwrap(), 2);
        assert!(matches!(
            conn.fetch_pending().await,
            Err(RelayError::Closed { .. }) | Err(RelayError::Link { .. })
        ));
    }

    #[tokio::test]
    async fn a_relay_that_floods_a_fetch_cannot_make_the_client_hold_more_than_its_limit() {
        let mut conn = fake_relay(|mut r, mut w| async move {
            let Some(ClientMsg::Fetch { live: false }) = r.recv().await.unwrap() else {
                panic!()
            };
            for id in 1..=5u64 {
                w.send(&RelayMsg::Deliver {
                    id,
                    received_at: 0,
                    envelope: ByteBuf::from(vec![0u8; 10]),
                })
                .await
                .unwrap();
            }
            w.flush().await.unwrap();
            // Only what was kept is acknowledged; the rest waits for later.
            let Some(ClientMsg::Ack { req, ids }) = r.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(ids, vec![1, 2]);
            w.send(&RelayMsg::Acked { req, deleted: 2 }).await.unwrap();
            w.flush().await.unwrap();
        })
        .await;
        let got = conn.fetch_pending_limited(2, 1 << 20).await.unwrap();
        assert!(got.more);
        assert_eq!(
            got.deliveries.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // The Delivers that followed are skipped while waiting for Acked.
        assert_eq!(conn.ack(&[1, 2]).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_relay_that_hangs_up_mid_request_is_reported_as_closed() {
        let mut conn = fake_relay(|mut r, _w| async move {
            let _ = r.recv::<ClientMsg>().await;
        })
        .await;
        let err = conn
            .send_envelope(&PublicKey::from_bytes([1; 32]), vec![1])
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::Closed { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("closed the connection before answering"));
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_is_unreachable() {
        // Bind then drop a listener: the port is very likely closed afterwards.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pin = RelayPin {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            key: RelayKey::from_bytes([1; 32]),
            nodes: Vec::new(),
        };
        let err = connect(&pin, &SecretKey::generate()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach the relay at 127.0.0.1:{port} (connection refused): is sotto-relay running there?")
        );
    }
}
