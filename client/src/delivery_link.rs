//! Delivering to a mailbox over a delivery link: the relay proves its key,
//! this client proves none.
//!
//! The owner link ([`crate::relay_client`]) shows the relay who I am, which
//! is right for reading my own mailbox and wrong for writing to someone
//! else's: the relay would learn who sends to whom. A delivery link's
//! handshake (`sotto_crypto::link`, Noise `NX`) uses an ephemeral key only,
//! so nothing on it names me; the recipient authenticates me inside the
//! end-to-end envelope, as before. What it carries instead is the
//! recipient's delivery token, given to me by them, which their relay
//! checks against the hash they registered. Without one a delivery is a
//! first contact, which the relay may take under tighter limits or refuse.
//!
//! A link may carry deliveries to any number of mailboxes of its relay, but
//! the client opens one per relay *and recipient* ([`crate::delivery_pool`]),
//! so that no connection shows a relay two of its mailboxes with a
//! correspondent in common. The same limits and error words as the owner link
//! apply (time limits, the relay's words neutralised).

use std::fmt;

use serde_bytes::ByteBuf;
use sotto_crypto::delivery::ResumeSecret;
use sotto_crypto::file::FileId;
use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_crypto::wire::{DeliveryMsg, RelayHello, RelayMsg};
use sotto_keys::{DeliveryToken, PublicKey, RelayAddr, RelayKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::relay_client::{
    answer_to, describe_io, handshake_error, stream_upload, upload_state, write_to, RelayError,
    SealedChunk, Upload, UploadEnd, ANSWER_TIMEOUT, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT,
};

/// A delivery link to one relay.
pub struct DeliveryConn<R, W> {
    reader: LinkReader<R>,
    writer: LinkWriter<W>,
    addr: RelayAddr,
    hello: RelayHello,
    next_req: u32,
}

impl<R, W> fmt::Debug for DeliveryConn<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryConn")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Opens a delivery link to the relay at `addr`, which must prove `pinned`.
pub async fn connect_delivery(
    addr: &RelayAddr,
    pinned: &RelayKey,
) -> Result<DeliveryConn<OwnedReadHalf, OwnedWriteHalf>, RelayError> {
    let (r, w) = dial(addr).await?;
    delivery_handshake(r, w, addr.clone(), pinned).await
}

/// Opens the TCP connection to the relay at `addr`, within the connect
/// timeout, its errors told in a few words.
pub(crate) async fn dial(addr: &RelayAddr) -> Result<(OwnedReadHalf, OwnedWriteHalf), RelayError> {
    let addr = addr.clone();
    let stream = match timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((addr.host(), addr.port())),
    )
    .await
    {
        Err(_) => {
            return Err(RelayError::Unreachable {
                addr,
                reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            })
        }
        Ok(Err(e)) => {
            return Err(RelayError::Unreachable {
                addr,
                reason: describe_io(&e),
            })
        }
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream.into_split())
}

/// Runs the delivery link's handshake on an open stream.
pub async fn delivery_handshake<R, W>(
    r: R,
    w: W,
    addr: RelayAddr,
    pinned: &RelayKey,
) -> Result<DeliveryConn<R, W>, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (reader, writer, hello) =
        match timeout(HANDSHAKE_TIMEOUT, link::connect_delivery(r, w, pinned)).await {
            Err(_) => return Err(RelayError::HandshakeTimeout { addr }),
            Ok(Err(e)) => return Err(handshake_error(addr, e)),
            Ok(Ok(done)) => done,
        };
    Ok(DeliveryConn {
        reader,
        writer,
        addr,
        hello,
        next_req: 1,
    })
}

impl<R, W> DeliveryConn<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The relay's address.
    pub fn addr(&self) -> &RelayAddr {
        &self.addr
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

    /// Sends `msg`, then waits for the answer to `req` that `answer`
    /// recognises; the relay's error for it (or for the link) ends the wait.
    async fn request<T>(
        &mut self,
        req: u32,
        msg: &DeliveryMsg,
        waiting_for: &'static str,
        answer: impl FnMut(&RelayMsg) -> Option<T>,
    ) -> Result<T, RelayError> {
        write_to(&mut self.writer, &self.addr, msg, true).await?;
        answer_to(&mut self.reader, &self.addr, req, waiting_for, answer).await
    }

    /// Hands `envelope` to the relay for `to`'s mailbox, presenting `token`
    /// (`None`: a first contact); returns once it is stored durably.
    pub async fn send_envelope(
        &mut self,
        to: &PublicKey,
        token: Option<&DeliveryToken>,
        envelope: Vec<u8>,
    ) -> Result<(), RelayError> {
        let req = self.req();
        let msg = DeliveryMsg::Send {
            req,
            to: *to,
            token: token.cloned(),
            envelope: ByteBuf::from(envelope),
        };
        self.request(req, &msg, "Stored", |m| {
            matches!(m, RelayMsg::Stored { req: r } if *r == req).then_some(())
        })
        .await
    }

    /// Sends a live-only notice for `to`. Never answered: whether it was
    /// refused, dropped or delivered is not the sender's to know.
    pub async fn notify(
        &mut self,
        to: &PublicKey,
        token: Option<&DeliveryToken>,
        envelope: Vec<u8>,
    ) -> Result<(), RelayError> {
        let msg = DeliveryMsg::Notify {
            to: *to,
            token: token.cloned(),
            envelope: ByteBuf::from(envelope),
        };
        write_to(&mut self.writer, &self.addr, &msg, true).await
    }

    /// Begins, or resumes, uploading file `file_id` of `size` plaintext
    /// bytes for `to`; returns how many chunks the relay already holds. Only
    /// the same `resume` secret ([`ResumeSecret::for_file`]) resumes an
    /// upload begun before.
    pub async fn upload_begin(
        &mut self,
        file_id: FileId,
        to: &PublicKey,
        token: Option<&DeliveryToken>,
        size: u64,
        resume: &ResumeSecret,
    ) -> Result<u64, RelayError> {
        let req = self.req();
        let msg = DeliveryMsg::UploadBegin {
            req,
            file_id,
            to: *to,
            token: token.cloned(),
            size,
            resume: resume.clone(),
        };
        write_to(&mut self.writer, &self.addr, &msg, true).await?;
        upload_state(&mut self.reader, &self.addr, req, file_id, size).await
    }

    /// Sends the sealed chunks `from..` of an upload begun with
    /// [`upload_begin`](Self::upload_begin) as `chunks` yields them, then
    /// `UploadEnd`, and returns once the relay answers `UploadDone`. A
    /// source that closes early leaves the upload unfinished
    /// ([`UploadEnd::SourceEnded`]), to be resumed with the same secret.
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
            |index, data| DeliveryMsg::UploadChunk {
                file_id,
                index,
                data,
            },
            DeliveryMsg::UploadEnd {
                req: end_req,
                file_id,
            },
        )
        .await
    }

    /// Closes the link (best effort).
    pub async fn close(mut self) {
        let _ = timeout(ANSWER_TIMEOUT, self.writer.shutdown()).await;
    }
}

/// The delivery links of [`crate::delivery_pool`]: real ones, over TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryLinks;

impl crate::delivery_pool::Connect for DeliveryLinks {
    type Link = DeliveryConn<OwnedReadHalf, OwnedWriteHalf>;

    async fn connect(&self, pin: &crate::config::RelayPin) -> Result<Self::Link, RelayError> {
        connect_delivery(&pin.addr, &pin.key).await
    }
}

impl<R, W> crate::delivery_pool::Deliver for DeliveryConn<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn send(
        &mut self,
        to: &PublicKey,
        token: Option<&DeliveryToken>,
        envelope: &[u8],
    ) -> Result<(), RelayError> {
        self.send_envelope(to, token, envelope.to_vec()).await
    }

    async fn notify(
        &mut self,
        to: &PublicKey,
        token: Option<&DeliveryToken>,
        envelope: &[u8],
    ) -> Result<(), RelayError> {
        DeliveryConn::notify(self, to, token, envelope.to_vec()).await
    }
}
