//! The client<->relay link, in two kinds.
//!
//! The **owner link**, `Noise_XX_25519_ChaChaPoly_BLAKE2s`, client as initiator:
//!
//! ```text
//! client -> relay   preamble "sotto" | 00 | version u16 BE
//! client -> relay   -> e                       (no payload: message 1 is replayable)
//! relay  -> client  <- e, ee, s, es            payload RelayHello
//! client -> relay   -> s, se                   payload ClientHello
//! ```
//!
//! `XX` rather than `IK`: the client sees the key the relay proves in message 2
//! and compares it with the pinned one before revealing its own identity, so a
//! wrong relay is named precisely ("expected X, the relay presented Y") instead
//! of showing up as an unexplained failure, and a client's static key is only
//! ever sent to the pinned relay. The client's static key, proven in message 3,
//! is its address on the relay: the owner link reads, acknowledges, downloads
//! and deletes its own mailbox.
//!
//! The **delivery link**, `Noise_NX_25519_ChaChaPoly_BLAKE2s`, client as
//! initiator:
//!
//! ```text
//! client -> relay   preamble "sotto" | 01 | version u16 BE
//! client -> relay   -> e                       (no payload)
//! relay  -> client  <- e, ee, s, es            payload RelayHello
//! ```
//!
//! The relay proves the pinned key exactly as on the owner link (a wrong one
//! is named before anything is sent), and the client proves nothing: it has
//! no static key, only an ephemeral one drawn for this connection. So the
//! relay cannot tell which key delivers what ("sealed sender"); the sender is
//! authenticated to the recipient inside the end-to-end envelope instead.
//! Its messages are [`crate::wire::DeliveryMsg`], which can express
//! deliveries and nothing else.
//!
//! After the handshake the two directions are independent: each side keeps its
//! own send counter and receive counter as the Noise nonce (snow's stateless
//! transport, so the reader and the writer can live in different tasks).
//! Messages are a `u32` little-endian length then the bytes, carried in one or
//! more records; every message starts a new record, and the declared length is
//! checked against [`MAX_MESSAGE_LEN`] before anything is buffered.
//!
//! Buffers are the link's own rather than tokio's `BufReader`/`BufWriter`:
//! a relay holds thousands of idle links, so each half allocates its buffer
//! when bytes come or go and releases it when the connection goes quiet (the
//! read buffer when a read would block with nothing left in it, the write
//! buffer after a flush). Records are decrypted straight out of the read
//! buffer and encrypted straight into the write buffer, with no copy between.

use std::future::Future;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use snow::{HandshakeState, StatelessTransportState};
use sotto_keys::{PublicKey, RelayKey, SecretKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::LinkError;
use crate::frame::MAX_RECORD_LEN;
use crate::wire::{self, ClientHello, RelayHello};

/// Link protocol version, in the preamble and both hellos.
pub const LINK_VERSION: u16 = 1;
/// The first bytes a client sends, before the link kind.
pub const PREAMBLE_MAGIC: [u8; 5] = *b"sotto";
/// The whole preamble: magic, link kind, version.
pub const PREAMBLE_LEN: usize = 8;
/// The Noise protocol name of the owner link.
pub const LINK_NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The owner link's Noise prologue: binds the protocol name and version
/// into the handshake hash.
pub const LINK_PROLOGUE: &[u8] = b"sotto link v1";
/// The Noise protocol name of the delivery link.
pub const DELIVERY_NOISE_PARAMS: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";
/// The delivery link's Noise prologue.
pub const DELIVERY_PROLOGUE: &[u8] = b"sotto delivery link v1";
/// Largest message on the link, in bytes (a file chunk with its headers fits).
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;

/// What a client sends before the relay says anything: the preamble, then
/// Noise message 1 (one ephemeral key) in its record. The same for both
/// link kinds.
pub const FIRST_MESSAGE_LEN: usize = PREAMBLE_LEN + RECORD_HEADER + MSG1_LEN;

/// Which link a client opens, told by the preamble's sixth byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// `XX`: the client proves its key; its own mailbox and files.
    Owner,
    /// `NX`: the client proves no key; deliveries to anyone's mailbox.
    Delivery,
}

impl LinkKind {
    /// The preamble byte of this kind.
    pub const fn byte(self) -> u8 {
        match self {
            Self::Owner => 0,
            Self::Delivery => 1,
        }
    }

    /// The kind a preamble byte names, if any.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Owner),
            1 => Some(Self::Delivery),
            _ => None,
        }
    }
}

const TAG_LEN: usize = 16;
/// Message 1 is exactly one ephemeral key.
const MSG1_LEN: usize = 32;
/// Messages 2 and 3 carry a static key and a small hello.
const MSG23_MAX: usize = 512;
const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - TAG_LEN;
const LEN_PREFIX: usize = 4;
/// Length field of a record.
const RECORD_HEADER: usize = 2;
/// Room reserved for a read when the read buffer has none (a whole record
/// fits, so a chat message arrives in one read).
const READ_CHUNK: usize = 16 * 1024;
/// Bytes queued before a send writes them out without waiting for a flush.
const WRITE_HIGH: usize = 2 * MAX_RECORD_LEN;
/// Buffers at most this large are kept for the next burst; larger ones are
/// released once drained, so a burst (a file) does not pin memory.
const KEEP: usize = 4 * 1024;

/// The handshake of `kind`, with the static key `secret` if the side has
/// one. `fixed_ephemeral` is `Some` only in the known-answer tests;
/// everywhere else snow draws a fresh ephemeral key for every handshake.
fn handshake_builder<'a>(
    kind: LinkKind,
    secret: Option<&'a [u8; 32]>,
    fixed_ephemeral: Option<&'a [u8; 32]>,
) -> Result<snow::Builder<'a>, LinkError> {
    let (params, prologue) = match kind {
        LinkKind::Owner => (LINK_NOISE_PARAMS, LINK_PROLOGUE),
        LinkKind::Delivery => (DELIVERY_NOISE_PARAMS, DELIVERY_PROLOGUE),
    };
    let params = params.parse().map_err(|_| LinkError::Handshake)?;
    let mut builder = snow::Builder::new(params)
        .prologue(prologue)
        .map_err(|_| LinkError::Handshake)?;
    if let Some(secret) = secret {
        builder = builder
            .local_private_key(secret)
            .map_err(|_| LinkError::Handshake)?;
    }
    Ok(match fixed_ephemeral {
        Some(e) => builder.fixed_ephemeral_key_for_testing_only(e),
        None => builder,
    })
}

fn preamble(kind: LinkKind) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..5].copy_from_slice(&PREAMBLE_MAGIC);
    p[5] = kind.byte();
    p[6..].copy_from_slice(&LINK_VERSION.to_be_bytes());
    p
}

/// Runs the client side of the handshake on a fresh connection.
///
/// Fails with [`LinkError::RelayKeyMismatch`] before revealing the client's
/// identity if the relay proves any key but `relay`.
pub async fn connect<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    relay: &RelayKey,
) -> Result<(LinkReader<R>, LinkWriter<W>, RelayHello), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    connect_inner(r, w, me, relay, None).await
}

/// [`connect`] with a chosen ephemeral key, for the known-answer vectors of
/// docs/PROTOCOL.md. An ephemeral key must never be chosen outside a test.
#[cfg(test)]
pub(crate) async fn connect_with_ephemeral<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    relay: &RelayKey,
    ephemeral: &[u8; 32],
) -> Result<(LinkReader<R>, LinkWriter<W>, RelayHello), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    connect_inner(r, w, me, relay, Some(ephemeral)).await
}

async fn connect_inner<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    relay: &RelayKey,
    fixed_ephemeral: Option<&[u8; 32]>,
) -> Result<(LinkReader<R>, LinkWriter<W>, RelayHello), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = Inbound::new(r);
    let mut w = w;
    let secret = me.to_bytes();
    let mut hs = handshake_builder(LinkKind::Owner, Some(&secret), fixed_ephemeral)?
        .build_initiator()
        .map_err(|_| LinkError::Handshake)?;
    let mut buf = vec![0u8; MSG23_MAX];
    let (hello, _) = open_relay_hello(
        &mut hs,
        &mut r,
        &mut w,
        LinkKind::Owner,
        Some(relay),
        &mut buf,
    )
    .await?;

    // -> s, se
    let payload = wire::encode(&ClientHello {
        version: LINK_VERSION,
    });
    let n = hs
        .write_message(&payload, &mut buf)
        .map_err(|_| LinkError::Handshake)?;
    w.write_all(&record(&buf[..n])?).await?;
    w.flush().await?;

    let (reader, writer) = split(hs, r, w)?;
    Ok((reader, writer, hello))
}

/// Sends the preamble of `kind` and message 1 (`-> e`), then reads message 2
/// (`<- e, ee, s, es`): checks that the relay proved `relay` (when one is
/// pinned) before decoding anything it says, and returns its hello and the
/// key it proved.
async fn open_relay_hello<R, W>(
    hs: &mut HandshakeState,
    r: &mut Inbound<R>,
    w: &mut W,
    kind: LinkKind,
    relay: Option<&RelayKey>,
    buf: &mut [u8],
) -> Result<(RelayHello, RelayKey), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // -> e
    let n = hs
        .write_message(&[], buf)
        .map_err(|_| LinkError::Handshake)?;
    let mut first = preamble(kind).to_vec();
    first.extend_from_slice(&record(&buf[..n])?);
    w.write_all(&first).await?;
    w.flush().await?;

    // <- e, ee, s, es
    let rec = r.handshake_record(MSG23_MAX).await?;
    let n = hs
        .read_message(r.slice(rec), buf)
        .map_err(|_| LinkError::Handshake)?;
    let got = remote_static(hs)?;
    if let Some(relay) = relay.filter(|relay| got != *relay.as_bytes()) {
        return Err(LinkError::RelayKeyMismatch {
            expected: *relay,
            got: RelayKey::from_bytes(got),
        });
    }
    let hello: RelayHello = wire::decode(&buf[..n])?;
    if hello.version != LINK_VERSION {
        return Err(LinkError::UnsupportedVersion {
            got: hello.version,
            ours: LINK_VERSION,
        });
    }
    Ok((hello, RelayKey::from_bytes(got)))
}

/// Opens a delivery link on a fresh connection: the relay proves `relay`,
/// the client proves nothing (its only key is this handshake's ephemeral).
///
/// Fails with [`LinkError::RelayKeyMismatch`] before anything is sent past
/// message 1 if the relay proves any key but `relay`.
pub async fn connect_delivery<R, W>(
    r: R,
    w: W,
    relay: &RelayKey,
) -> Result<(LinkReader<R>, LinkWriter<W>, RelayHello), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    connect_delivery_inner(r, w, Some(relay), None)
        .await
        .map(|(r, w, hello, _)| (r, w, hello))
}

/// Opens a delivery link to a relay whose key is not known yet, and returns
/// the key it proved. Only for a first contact by a short code (`sotto pair
/// --relay`), where that key is compared with the one the inviter's
/// PAKE-protected invite names before anything relies on it; everything else
/// pins the relay's key.
pub async fn connect_delivery_unpinned<R, W>(
    r: R,
    w: W,
) -> Result<(LinkReader<R>, LinkWriter<W>, RelayHello, RelayKey), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    connect_delivery_inner(r, w, None, None).await
}

/// [`connect_delivery`] with a chosen ephemeral key, for the known-answer
/// vectors of docs/PROTOCOL.md. An ephemeral key must never be chosen
/// outside a test.
#[cfg(test)]
pub(crate) async fn connect_delivery_with_ephemeral<R, W>(
    r: R,
    w: W,
    relay: &RelayKey,
    ephemeral: &[u8; 32],
) -> Result<(LinkReader<R>, LinkWriter<W>, RelayHello), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    connect_delivery_inner(r, w, Some(relay), Some(ephemeral))
        .await
        .map(|(r, w, hello, _)| (r, w, hello))
}

async fn connect_delivery_inner<R, W>(
    r: R,
    w: W,
    relay: Option<&RelayKey>,
    fixed_ephemeral: Option<&[u8; 32]>,
) -> Result<(LinkReader<R>, LinkWriter<W>, RelayHello, RelayKey), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = Inbound::new(r);
    let mut w = w;
    let mut hs = handshake_builder(LinkKind::Delivery, None, fixed_ephemeral)?
        .build_initiator()
        .map_err(|_| LinkError::Handshake)?;
    let mut buf = vec![0u8; MSG23_MAX];
    let (hello, proved) =
        open_relay_hello(&mut hs, &mut r, &mut w, LinkKind::Delivery, relay, &mut buf).await?;
    // NX ends with message 2: the client's first request follows at once.
    let (reader, writer) = split(hs, r, w)?;
    Ok((reader, writer, hello, proved))
}

/// A link the relay accepted, of either kind.
pub enum Accepted<R, W> {
    /// An owner link: the client proved `client`.
    Owner {
        /// The receiving half.
        reader: LinkReader<R>,
        /// The sending half.
        writer: LinkWriter<W>,
        /// The client's proven key.
        client: PublicKey,
    },
    /// A delivery link: the client proved nothing.
    Delivery {
        /// The receiving half.
        reader: LinkReader<R>,
        /// The sending half.
        writer: LinkWriter<W>,
    },
}

/// Runs the relay side of an owner link's handshake; returns the client's
/// proven key. A client that opens a delivery link is refused
/// ([`LinkError::WrongLinkKind`]).
pub async fn accept<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    hello: &RelayHello,
) -> Result<(LinkReader<R>, LinkWriter<W>, PublicKey), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    owner_only(accept_inner(r, w, me, hello, None, Some(LinkKind::Owner)).await?)
}

/// [`accept`] with a chosen ephemeral key, for the known-answer vectors of
/// docs/PROTOCOL.md. An ephemeral key must never be chosen outside a test.
#[cfg(test)]
pub(crate) async fn accept_with_ephemeral<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    hello: &RelayHello,
    ephemeral: &[u8; 32],
) -> Result<(LinkReader<R>, LinkWriter<W>, PublicKey), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    owner_only(accept_inner(r, w, me, hello, Some(ephemeral), Some(LinkKind::Owner)).await?)
}

fn owner_only<R, W>(
    accepted: Accepted<R, W>,
) -> Result<(LinkReader<R>, LinkWriter<W>, PublicKey), LinkError> {
    match accepted {
        Accepted::Owner {
            reader,
            writer,
            client,
        } => Ok((reader, writer, client)),
        Accepted::Delivery { .. } => Err(LinkError::WrongLinkKind),
    }
}

/// Runs the relay side of the handshake of whichever link kind the client's
/// preamble names.
pub async fn accept_link<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    hello: &RelayHello,
) -> Result<Accepted<R, W>, LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    accept_inner(r, w, me, hello, None, None).await
}

/// [`accept_link`] with a chosen ephemeral key, for the known-answer vectors
/// of docs/PROTOCOL.md. An ephemeral key must never be chosen outside a test.
#[cfg(test)]
pub(crate) async fn accept_link_with_ephemeral<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    hello: &RelayHello,
    ephemeral: &[u8; 32],
) -> Result<Accepted<R, W>, LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    accept_inner(r, w, me, hello, Some(ephemeral), None).await
}

/// Reads the preamble and runs the handshake it names (only `want`, if given).
async fn accept_inner<R, W>(
    r: R,
    w: W,
    me: &SecretKey,
    hello: &RelayHello,
    fixed_ephemeral: Option<&[u8; 32]>,
    want: Option<LinkKind>,
) -> Result<Accepted<R, W>, LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = Inbound::new(r);
    let mut w = w;

    let pre = match r.take(PREAMBLE_LEN).await {
        Ok(Some(pre)) => pre,
        Ok(None) | Err(LinkError::UnexpectedEof) => return Err(LinkError::ClosedDuringHandshake),
        Err(e) => return Err(e),
    };
    let pre = r.slice(pre);
    if pre[..5] != PREAMBLE_MAGIC {
        return Err(LinkError::BadPreamble);
    }
    let Some(kind) = LinkKind::from_byte(pre[5]) else {
        return Err(LinkError::BadPreamble);
    };
    let version = u16::from_be_bytes([pre[6], pre[7]]);
    if version != LINK_VERSION {
        return Err(LinkError::UnsupportedVersion {
            got: version,
            ours: LINK_VERSION,
        });
    }
    if want.is_some_and(|want| want != kind) {
        return Err(LinkError::WrongLinkKind);
    }

    let secret = me.to_bytes();
    let mut hs = handshake_builder(kind, Some(&secret), fixed_ephemeral)?
        .build_responder()
        .map_err(|_| LinkError::Handshake)?;
    let mut buf = vec![0u8; MSG23_MAX];

    // -> e
    let rec = r.handshake_record(MSG1_LEN).await?;
    if rec.len() != MSG1_LEN {
        return Err(LinkError::Handshake);
    }
    hs.read_message(r.slice(rec), &mut buf)
        .map_err(|_| LinkError::Handshake)?;

    // <- e, ee, s, es
    let n = hs
        .write_message(&wire::encode(hello), &mut buf)
        .map_err(|_| LinkError::Handshake)?;
    w.write_all(&record(&buf[..n])?).await?;
    w.flush().await?;

    if kind == LinkKind::Delivery {
        // NX is complete: the client has no static key to prove.
        let (reader, writer) = split(hs, r, w)?;
        return Ok(Accepted::Delivery { reader, writer });
    }

    // -> s, se
    let rec = r.handshake_record(MSG23_MAX).await?;
    let n = hs
        .read_message(r.slice(rec), &mut buf)
        .map_err(|_| LinkError::Handshake)?;
    let client: ClientHello = wire::decode(&buf[..n])?;
    if client.version != LINK_VERSION {
        return Err(LinkError::UnsupportedVersion {
            got: client.version,
            ours: LINK_VERSION,
        });
    }
    let peer = PublicKey::from_bytes(remote_static(&hs)?);
    if peer.is_weak() {
        // Anyone can complete a handshake as a low-order key.
        return Err(LinkError::Handshake);
    }
    let (reader, writer) = split(hs, r, w)?;
    Ok(Accepted::Owner {
        reader,
        writer,
        client: peer,
    })
}

/// One record (its length field and body) as bytes, for the handshake.
fn record(body: &[u8]) -> Result<Vec<u8>, LinkError> {
    let len = u16::try_from(body.len()).map_err(|_| LinkError::RecordTooLarge {
        len: body.len(),
        max: MAX_RECORD_LEN,
    })?;
    let mut out = Vec::with_capacity(RECORD_HEADER + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn remote_static(hs: &HandshakeState) -> Result<[u8; 32], LinkError> {
    hs.get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(LinkError::Handshake)
}

fn split<R, W>(
    hs: HandshakeState,
    r: Inbound<R>,
    w: W,
) -> Result<(LinkReader<R>, LinkWriter<W>), LinkError> {
    let transport = Arc::new(
        hs.into_stateless_transport_mode()
            .map_err(|_| LinkError::Handshake)?,
    );
    Ok(halves(r, w, transport.clone(), transport))
}

/// A link's two halves, each starting at nonce 0.
fn halves<R, W>(
    r: Inbound<R>,
    w: W,
    receiving: Arc<StatelessTransportState>,
    sending: Arc<StatelessTransportState>,
) -> (LinkReader<R>, LinkWriter<W>) {
    (
        LinkReader {
            io: r,
            transport: receiving,
            nonce: 0,
            plain: Vec::new(),
        },
        LinkWriter {
            io: w,
            out: Vec::new(),
            sent: 0,
            transport: sending,
            nonce: 0,
        },
    )
}

/// A reader of what a writer wrote, with no peer and no network: both halves
/// of one in-memory `NN` handshake (done once per process), the writer on the
/// initiator's side. For the fuzz targets of the message framing and their
/// regression tests ([`crate::fuzzing`]); it authenticates nobody, so nothing
/// else may use it.
pub(crate) fn loopback<R: AsyncRead + Unpin, W: AsyncWrite>(
    r: R,
    w: W,
) -> Result<(LinkReader<R>, LinkWriter<W>), LinkError> {
    type Pair = (Arc<StatelessTransportState>, Arc<StatelessTransportState>);
    static PAIR: std::sync::OnceLock<Option<Pair>> = std::sync::OnceLock::new();
    fn handshake() -> Option<Pair> {
        let params: snow::params::NoiseParams = "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().ok()?;
        let mut i = snow::Builder::new(params.clone()).build_initiator().ok()?;
        let mut r = snow::Builder::new(params).build_responder().ok()?;
        let (mut msg, mut out) = ([0u8; 128], [0u8; 128]);
        let n = i.write_message(&[], &mut msg).ok()?;
        r.read_message(&msg[..n], &mut out).ok()?;
        let n = r.write_message(&[], &mut msg).ok()?;
        i.read_message(&msg[..n], &mut out).ok()?;
        Some((
            Arc::new(i.into_stateless_transport_mode().ok()?),
            Arc::new(r.into_stateless_transport_mode().ok()?),
        ))
    }
    let (writer, reader) = PAIR
        .get_or_init(handshake)
        .clone()
        .ok_or(LinkError::Handshake)?;
    Ok(halves(Inbound::new(r), w, reader, writer))
}

/// The receiving stream with its buffer: `buf[pos..]` is received and not
/// yet consumed. The buffer is allocated when a read is attempted and
/// released when that read would block with nothing left in it.
struct Inbound<R> {
    io: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: AsyncRead + Unpin> Inbound<R> {
    fn new(io: R) -> Self {
        Self {
            io,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn slice(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Consumes the next `n` bytes and returns where they are in the buffer
    /// (valid until the next read). `None` on a clean end of stream before
    /// the first of them, [`LinkError::UnexpectedEof`] after.
    async fn take(&mut self, n: usize) -> Result<Option<std::ops::Range<usize>>, LinkError> {
        if !self.fill(n, &mut Vec::new()).await? {
            return Ok(None);
        }
        let start = self.pos;
        self.pos += n;
        Ok(Some(start..self.pos))
    }

    /// The next record's body, refused before it is buffered if its declared
    /// length exceeds `max`. `idle` is released along with the read buffer
    /// if the connection goes quiet between records.
    async fn next_record(
        &mut self,
        max: usize,
        idle: &mut Vec<u8>,
    ) -> Result<Option<std::ops::Range<usize>>, LinkError> {
        if !self.fill(RECORD_HEADER, idle).await? {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([
            self.buf[self.pos],
            self.buf[self.pos + 1],
        ]));
        if len > max {
            return Err(LinkError::RecordTooLarge { len, max });
        }
        if len == 0 {
            return Err(LinkError::Malformed("empty record"));
        }
        if !self.fill(RECORD_HEADER + len, idle).await? {
            return Err(LinkError::UnexpectedEof);
        }
        let start = self.pos + RECORD_HEADER;
        self.pos = start + len;
        Ok(Some(start..self.pos))
    }

    async fn handshake_record(&mut self, max: usize) -> Result<std::ops::Range<usize>, LinkError> {
        match self.next_record(max, &mut Vec::new()).await {
            Ok(Some(rec)) => Ok(rec),
            Ok(None) | Err(LinkError::UnexpectedEof) => Err(LinkError::ClosedDuringHandshake),
            Err(e) => Err(e),
        }
    }

    /// Reads until `need` bytes are buffered. `Ok(false)` on a clean end of
    /// stream with nothing buffered; [`LinkError::UnexpectedEof`] on an end
    /// of stream in the middle of something.
    async fn fill(&mut self, need: usize, idle: &mut Vec<u8>) -> Result<bool, LinkError> {
        loop {
            let have = self.buf.len() - self.pos;
            if have >= need {
                return Ok(true);
            }
            if have == 0 {
                self.buf.clear();
                self.pos = 0;
            } else if self.buf.capacity() - self.pos < need {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let room = (need - have).max(READ_CHUNK);
            let n = std::future::poll_fn(|cx| {
                if self.buf.capacity() - self.buf.len() < room {
                    self.buf.reserve(room);
                }
                let read = {
                    let fut = self.io.read_buf(&mut self.buf);
                    std::pin::pin!(fut).poll(cx)
                };
                if read.is_pending() && self.buf.len() == self.pos {
                    // Quiet between messages: hold no buffers while waiting.
                    self.buf = Vec::new();
                    self.pos = 0;
                    if idle.is_empty() {
                        *idle = Vec::new();
                    }
                }
                read
            })
            .await?;
            if n == 0 {
                return match have {
                    0 => Ok(false),
                    _ => Err(LinkError::UnexpectedEof),
                };
            }
        }
    }
}

/// The receiving half of an established link.
pub struct LinkReader<R> {
    io: Inbound<R>,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    /// The message being assembled; released with the read buffer when the
    /// link goes quiet.
    plain: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LinkReader<R> {
    /// Receives and decodes the next message; `None` when the peer closed the
    /// connection cleanly between messages.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, LinkError> {
        let received = self.recv_admitted(|_| std::future::ready(())).await?;
        Ok(received.map(|(msg, ())| msg))
    }

    /// [`LinkReader::recv`] for a receiver that bounds what it buffers. Once
    /// the first record has told the message's length (at most
    /// [`MAX_MESSAGE_LEN`]), and before the rest of the message is read,
    /// `admit(len)` is awaited; what it gives comes back with the message.
    /// While it waits nothing more is read, so the peer is held back by TCP,
    /// and the message is then buffered in one allocation of its length.
    pub async fn recv_admitted<M, T, A, F>(&mut self, admit: A) -> Result<Option<(M, T)>, LinkError>
    where
        M: DeserializeOwned,
        A: FnOnce(usize) -> F,
        F: Future<Output = T>,
    {
        let Some(admitted) = self.recv_message(admit).await? else {
            return Ok(None);
        };
        let msg = wire::decode(&self.plain[LEN_PREFIX..]);
        // Decoded: a large message's buffer is not kept while it is handled.
        self.release_plain();
        Ok(Some((msg?, admitted)))
    }

    /// Receives the next message's bytes.
    pub async fn recv_bytes(&mut self) -> Result<Option<&[u8]>, LinkError> {
        match self.recv_message(|_| std::future::ready(())).await? {
            Some(()) => Ok(Some(&self.plain[LEN_PREFIX..])),
            None => Ok(None),
        }
    }

    fn release_plain(&mut self) {
        self.plain.clear();
        if self.plain.capacity() > KEEP {
            self.plain = Vec::new();
        }
    }

    /// Assembles the next message in `self.plain`, its length prefix first.
    async fn recv_message<T, A, F>(&mut self, admit: A) -> Result<Option<T>, LinkError>
    where
        A: FnOnce(usize) -> F,
        F: Future<Output = T>,
    {
        self.release_plain();
        if !self.next_record().await? {
            return Ok(None);
        }
        if self.plain.len() < LEN_PREFIX {
            return Err(LinkError::Malformed("record shorter than a message header"));
        }
        let mut len = [0u8; LEN_PREFIX];
        len.copy_from_slice(&self.plain[..LEN_PREFIX]);
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_MESSAGE_LEN {
            return Err(LinkError::MessageTooLarge {
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        if len == 0 {
            return Err(LinkError::Malformed("empty message"));
        }
        let admitted = admit(len).await;
        let total = LEN_PREFIX + len;
        self.plain
            .reserve_exact(total.saturating_sub(self.plain.len()));
        while self.plain.len() < total {
            if !self.next_record().await? {
                return Err(LinkError::UnexpectedEof);
            }
        }
        if self.plain.len() > total {
            return Err(LinkError::Malformed(
                "record runs past the end of its message",
            ));
        }
        Ok(Some(admitted))
    }

    /// Reads one record and appends its plaintext to `self.plain`.
    async fn next_record(&mut self) -> Result<bool, LinkError> {
        let Some(rec) = self.io.next_record(MAX_RECORD_LEN, &mut self.plain).await? else {
            return Ok(false);
        };
        if rec.len() <= TAG_LEN {
            return Err(LinkError::Malformed("record shorter than its tag"));
        }
        let start = self.plain.len();
        self.plain.resize(start + rec.len() - TAG_LEN, 0);
        let n = self
            .transport
            .read_message(self.nonce, self.io.slice(rec), &mut self.plain[start..])
            .map_err(|_| LinkError::Decrypt)?;
        self.plain.truncate(start + n);
        self.nonce += 1;
        Ok(true)
    }
}

/// The sending half of an established link. Writes are buffered: call
/// [`LinkWriter::flush`] when a batch is complete.
pub struct LinkWriter<W> {
    io: W,
    /// Records queued; `out[..sent]` is already written.
    out: Vec<u8>,
    sent: usize,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
}

impl<W: AsyncWrite + Unpin> LinkWriter<W> {
    /// Encodes and queues a message.
    pub async fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), LinkError> {
        self.send_bytes(&wire::encode(msg)).await
    }

    /// Queues a message given as bytes.
    pub async fn send_bytes(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(LinkError::MessageTooLarge {
                len: msg.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        if msg.is_empty() {
            return Err(LinkError::Malformed("empty message"));
        }
        // The length prefix and the start of the message share the first record.
        let first = msg.len().min(MAX_RECORD_PLAINTEXT - LEN_PREFIX);
        let mut head = Vec::with_capacity(LEN_PREFIX + first);
        head.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        head.extend_from_slice(&msg[..first]);
        self.send_record_plaintext(&head).await?;
        for chunk in msg[first..].chunks(MAX_RECORD_PLAINTEXT) {
            self.send_record_plaintext(chunk).await?;
        }
        Ok(())
    }

    /// Encrypts `plain` as exactly one record. The message layer is built on
    /// this; conformance tests use it to send deliberately malformed messages.
    pub async fn send_record_plaintext(&mut self, plain: &[u8]) -> Result<(), LinkError> {
        if plain.len() > MAX_RECORD_PLAINTEXT {
            return Err(LinkError::RecordTooLarge {
                len: plain.len(),
                max: MAX_RECORD_PLAINTEXT,
            });
        }
        let record = RECORD_HEADER + plain.len() + TAG_LEN;
        if !self.out.is_empty() && self.out.len() + record > WRITE_HIGH {
            // Mid-burst: the buffer is kept for the rest of it.
            self.write_out().await?;
        }
        let start = self.out.len();
        self.out.resize(start + record, 0);
        let sealed =
            self.transport
                .write_message(self.nonce, plain, &mut self.out[start + RECORD_HEADER..]);
        let n = match sealed {
            Ok(n) if n == plain.len() + TAG_LEN => n,
            _ => {
                self.out.truncate(start);
                return Err(LinkError::Handshake);
            }
        };
        // `n` fits: `plain` is at most a record's plaintext.
        let len = u16::try_from(n).map_err(|_| LinkError::RecordTooLarge {
            len: n,
            max: MAX_RECORD_LEN,
        })?;
        self.out[start..start + RECORD_HEADER].copy_from_slice(&len.to_be_bytes());
        self.nonce += 1;
        Ok(())
    }

    /// Writes everything queued to the stream.
    async fn write_out(&mut self) -> Result<(), LinkError> {
        while self.sent < self.out.len() {
            let n = self.io.write(&self.out[self.sent..]).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Ok(())
    }

    /// Sends everything queued; the end of a burst, so a large buffer is
    /// released.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.write_out().await?;
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Flushes and closes the sending direction.
    pub async fn shutdown(&mut self) -> Result<(), LinkError> {
        self.write_out().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ClientMsg, RelayMsg};
    use serde_bytes::ByteBuf;
    use tokio::io::duplex;

    fn hello() -> RelayHello {
        RelayHello {
            version: LINK_VERSION,
            max_envelope_len: 65_536,
        }
    }

    type Pipe = tokio::io::DuplexStream;
    type Halves = (tokio::io::ReadHalf<Pipe>, tokio::io::WriteHalf<Pipe>);

    fn pipes() -> (Halves, Halves) {
        let (a, b) = duplex(1 << 20);
        (tokio::io::split(a), tokio::io::split(b))
    }

    #[tokio::test]
    async fn handshake_authenticates_both_sides_and_carries_messages() {
        let client = SecretKey::generate();
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        let ((cr, cw), (rr, rw)) = pipes();
        let server = tokio::spawn(async move { accept(rr, rw, &relay, &hello()).await });
        let (mut creader, mut cwriter, h) = connect(cr, cw, &client, &relay_key).await.unwrap();
        assert_eq!(h, hello());
        let (mut rreader, mut rwriter, peer) = server.await.unwrap().unwrap();
        assert_eq!(peer, client.public());

        // A message spanning several records, in both directions.
        let big = ClientMsg::Send {
            req: 9,
            to: PublicKey::from_bytes([3; 32]),
            envelope: ByteBuf::from(vec![0x5A; 200_000]),
        };
        cwriter.send(&big).await.unwrap();
        cwriter.send(&ClientMsg::Ping).await.unwrap();
        cwriter.flush().await.unwrap();
        assert_eq!(rreader.recv::<ClientMsg>().await.unwrap().unwrap(), big);
        assert_eq!(
            rreader.recv::<ClientMsg>().await.unwrap().unwrap(),
            ClientMsg::Ping
        );
        rwriter.send(&RelayMsg::Pong).await.unwrap();
        rwriter.shutdown().await.unwrap();
        assert_eq!(
            creader.recv::<RelayMsg>().await.unwrap().unwrap(),
            RelayMsg::Pong
        );
        assert!(creader.recv::<RelayMsg>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn messages_cross_a_narrow_pipe_and_idle_links_hold_no_buffers() {
        let client = SecretKey::generate();
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        // A 61-byte pipe: every record arrives in pieces and leaves in pieces.
        let (a, b) = duplex(61);
        let ((cr, cw), (rr, rw)) = (tokio::io::split(a), tokio::io::split(b));
        let server = tokio::spawn(async move { accept(rr, rw, &relay, &hello()).await });
        let (_creader, mut cwriter, _) = connect(cr, cw, &client, &relay_key).await.unwrap();
        let (mut rreader, _rwriter, _) = server.await.unwrap().unwrap();
        let msgs: Vec<Vec<u8>> = [1usize, 300, 70_000, 5]
            .iter()
            .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
            .collect();
        let sending = {
            let msgs = msgs.clone();
            tokio::spawn(async move {
                for m in &msgs {
                    cwriter.send_bytes(m).await.unwrap();
                }
                cwriter.flush().await.unwrap();
                assert_eq!(cwriter.out.capacity(), 0, "a large write buffer is kept");
                cwriter
            })
        };
        for m in &msgs {
            assert_eq!(rreader.recv_bytes().await.unwrap().unwrap(), &m[..]);
        }
        let _cwriter = sending.await.unwrap();
        // Nothing more to read: the waiting receive releases its buffers.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), rreader.recv_bytes()).await;
        assert!(waited.is_err());
        assert_eq!(rreader.io.buf.capacity(), 0);
        assert_eq!(rreader.plain.capacity(), 0);
    }

    #[tokio::test]
    async fn a_message_waits_for_its_admission_before_the_rest_of_it_is_read() {
        let client = SecretKey::generate();
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        // Narrower than the message: the sender finishes only if the
        // receiver reads on.
        let (a, b) = duplex(4096);
        let ((cr, cw), (rr, rw)) = (tokio::io::split(a), tokio::io::split(b));
        let server = tokio::spawn(async move { accept(rr, rw, &relay, &hello()).await });
        let (_creader, mut cwriter, _) = connect(cr, cw, &client, &relay_key).await.unwrap();
        let (mut rreader, _rwriter, _) = server.await.unwrap().unwrap();
        let msg = ByteBuf::from(vec![7u8; 200_000]);
        let sending = tokio::spawn({
            let msg = msg.clone();
            async move {
                cwriter.send(&msg).await.unwrap();
                cwriter.flush().await.unwrap();
            }
        });
        let (asked, asked_len) = tokio::sync::oneshot::channel::<usize>();
        let (admit, admitted) = tokio::sync::oneshot::channel::<()>();
        let receiving = tokio::spawn(async move {
            let got = rreader
                .recv_admitted::<ByteBuf, _, _, _>(|len| async move {
                    let _ = asked.send(len);
                    let _ = admitted.await;
                    "token"
                })
                .await;
            (got, rreader.plain.capacity())
        });
        // The encoded length: a 3-byte varint, then the bytes.
        assert_eq!(asked_len.await.unwrap(), 200_003);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!sending.is_finished(), "the rest was read before admission");
        admit.send(()).unwrap();
        let (got, plain) = receiving.await.unwrap();
        assert_eq!(got.unwrap(), Some((msg, "token")));
        assert_eq!(plain, 0, "a large message's buffer outlived its decoding");
        sending.await.unwrap();
    }

    #[tokio::test]
    async fn a_relay_with_another_key_is_named_and_never_sees_the_client_key() {
        let client = SecretKey::generate();
        let impostor = SecretKey::generate();
        let pinned = RelayKey::from(SecretKey::generate().public());
        let impostor_key = RelayKey::from(impostor.public());
        let ((cr, cw), (rr, rw)) = pipes();
        let server = tokio::spawn(async move { accept(rr, rw, &impostor, &hello()).await });
        let err = connect(cr, cw, &client, &pinned).await.err().unwrap();
        match err {
            LinkError::RelayKeyMismatch { expected, got } => {
                assert_eq!(expected, pinned);
                assert_eq!(got, impostor_key);
            }
            other => panic!("unexpected {other:?}"),
        }
        // The client hung up before message 3: the impostor learns nothing.
        assert!(matches!(
            server.await.unwrap(),
            Err(LinkError::ClosedDuringHandshake)
        ));
    }

    #[tokio::test]
    async fn a_delivery_link_proves_the_relay_and_nothing_of_the_client() {
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        let ((cr, cw), (rr, rw)) = pipes();
        let server = tokio::spawn(async move { accept_link(rr, rw, &relay, &hello()).await });
        let (mut creader, mut cwriter, h) = connect_delivery(cr, cw, &relay_key).await.unwrap();
        assert_eq!(h, hello());
        let Ok(Accepted::Delivery {
            mut reader,
            mut writer,
        }) = server.await.unwrap()
        else {
            panic!("a delivery preamble must give a delivery link");
        };
        cwriter.send(&crate::wire::DeliveryMsg::Ping).await.unwrap();
        cwriter.flush().await.unwrap();
        assert_eq!(
            reader.recv::<crate::wire::DeliveryMsg>().await.unwrap(),
            Some(crate::wire::DeliveryMsg::Ping)
        );
        writer.send(&RelayMsg::Pong).await.unwrap();
        writer.flush().await.unwrap();
        assert_eq!(
            creader.recv::<RelayMsg>().await.unwrap(),
            Some(RelayMsg::Pong)
        );
    }

    #[tokio::test]
    async fn the_same_relay_accepts_an_owner_link_with_its_client_key() {
        let client = SecretKey::generate();
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        let ((cr, cw), (rr, rw)) = pipes();
        let server = tokio::spawn(async move { accept_link(rr, rw, &relay, &hello()).await });
        connect(cr, cw, &client, &relay_key).await.unwrap();
        match server.await.unwrap() {
            Ok(Accepted::Owner { client: got, .. }) => assert_eq!(got, client.public()),
            _ => panic!("an owner preamble must give an owner link"),
        }
    }

    #[tokio::test]
    async fn a_delivery_link_to_another_relay_is_named() {
        let impostor = SecretKey::generate();
        let pinned = RelayKey::from(SecretKey::generate().public());
        let impostor_key = RelayKey::from(impostor.public());
        let ((cr, cw), (rr, rw)) = pipes();
        let _server = tokio::spawn(async move { accept_link(rr, rw, &impostor, &hello()).await });
        match connect_delivery(cr, cw, &pinned).await.err().unwrap() {
            LinkError::RelayKeyMismatch { expected, got } => {
                assert_eq!(expected, pinned);
                assert_eq!(got, impostor_key);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_owner_only_accept_refuses_a_delivery_link_and_unknown_kinds() {
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        let ((cr, cw), (rr, rw)) = pipes();
        let server = tokio::spawn(async move { accept(rr, rw, &relay, &hello()).await });
        assert!(connect_delivery(cr, cw, &relay_key).await.is_err());
        assert!(matches!(
            server.await.unwrap(),
            Err(LinkError::WrongLinkKind)
        ));

        let relay = SecretKey::generate();
        let (mut c, s) = duplex(1 << 16);
        let (sr, sw) = tokio::io::split(s);
        let mut bad = preamble(LinkKind::Owner);
        bad[5] = 2;
        c.write_all(&bad).await.unwrap();
        let err = accept_link(sr, sw, &relay, &hello()).await.err().unwrap();
        assert!(matches!(err, LinkError::BadPreamble));
    }

    #[tokio::test]
    async fn garbage_and_oversized_first_messages_are_refused() {
        let relay = SecretKey::generate();
        let (mut c, s) = duplex(1 << 16);
        let (sr, sw) = tokio::io::split(s);
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let err = accept(sr, sw, &relay, &hello()).await.err().unwrap();
        assert!(matches!(err, LinkError::BadPreamble));

        let (mut c, s) = duplex(1 << 16);
        let (sr, sw) = tokio::io::split(s);
        c.write_all(&preamble(LinkKind::Owner)).await.unwrap();
        c.write_all(&0xFFFFu16.to_be_bytes()).await.unwrap();
        let err = accept(sr, sw, &relay, &hello()).await.err().unwrap();
        assert!(matches!(err, LinkError::RecordTooLarge { len: 65535, .. }));
    }

    #[tokio::test]
    async fn oversized_and_tampered_messages_are_errors() {
        let client = SecretKey::generate();
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        let ((cr, cw), (rr, rw)) = pipes();
        let server = tokio::spawn(async move { accept(rr, rw, &relay, &hello()).await });
        let (_cr, mut cwriter, _) = connect(cr, cw, &client, &relay_key).await.unwrap();
        let (mut rreader, _rw, _) = server.await.unwrap().unwrap();
        // A header declaring a 1 GiB message.
        cwriter
            .send_record_plaintext(&(1u32 << 30).to_le_bytes())
            .await
            .unwrap();
        cwriter.flush().await.unwrap();
        let err = rreader.recv_bytes().await.err().unwrap();
        assert!(matches!(err, LinkError::MessageTooLarge { .. }));
    }

    #[tokio::test]
    async fn a_flipped_bit_fails_decryption() {
        let client = SecretKey::generate();
        let relay = SecretKey::generate();
        let relay_key = RelayKey::from(relay.public());
        let (c, s) = duplex(1 << 16);
        let (cr, cw) = tokio::io::split(c);
        // A man in the middle that flips a bit of the first transport record.
        let (m, s2) = duplex(1 << 16);
        let (mut mr, mut mw) = tokio::io::split(m);
        let (mut sr_, mut sw_) = tokio::io::split(s);
        tokio::spawn(async move {
            // relay -> client untouched
            let _ = tokio::io::copy(&mut mr, &mut sw_).await;
        });
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = match sr_.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let start = seen.len();
                seen.extend_from_slice(&buf[..n]);
                // preamble 8 + msg1 (2+32) + msg3 (2+48+payload+16): flip the last byte seen
                // once more than the handshake has passed.
                let handshake =
                    8 + 2 + 32 + 2 + 48 + wire::encode(&ClientHello { version: 1 }).len() + 16;
                let mut out = buf[..n].to_vec();
                if start + n > handshake + 5 && start <= handshake + 5 {
                    out[handshake + 5 - start] ^= 1;
                }
                if mw.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let server = tokio::spawn(async move {
            let (r, w) = tokio::io::split(s2);
            accept(r, w, &relay, &hello()).await
        });
        let (_cr, mut cwriter, _) = connect(cr, cw, &client, &relay_key).await.unwrap();
        let (mut rreader, _rw, _) = server.await.unwrap().unwrap();
        cwriter.send(&ClientMsg::Ping).await.unwrap();
        cwriter.flush().await.unwrap();
        assert!(matches!(
            rreader.recv_bytes().await,
            Err(LinkError::Decrypt)
        ));
    }
}
