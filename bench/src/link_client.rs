//! Bare clients: a fresh identity, the link handshake, and nothing else, so
//! the relay is measured with as little client code in the way as possible.
//!
//! Two kinds, as a relay sees them: an owner link ([`connect`]), which
//! proves a key and reads that key's mailbox, and a delivery link
//! ([`connect_delivery`]), which proves none and delivers to mailboxes whose
//! token it presents ([`register_token`] registers one, as `sotto` does).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sotto_crypto::delivery::token_hash;
use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_keys::{DeliveryToken, PublicKey, RelayKey, SecretKey};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Envelope size of the chat and throughput runs (the smallest padding bucket).
pub const ENVELOPE_LEN: usize = 256;

/// Handshakes in flight at once: well under the relay's `max_handshakes`.
const CONNECTING: usize = 64;

/// One authenticated client connection.
pub struct Client {
    /// Its address on the relay.
    pub key: PublicKey,
    /// Receiving half.
    pub reader: LinkReader<OwnedReadHalf>,
    /// Sending half.
    pub writer: LinkWriter<OwnedWriteHalf>,
}

/// Connects one client with a new identity.
pub async fn connect(addr: SocketAddr, relay: RelayKey) -> anyhow::Result<Client> {
    let me = SecretKey::generate();
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let (reader, writer, _hello) = link::connect(r, w, &me, &relay).await?;
    Ok(Client {
        key: me.public(),
        reader,
        writer,
    })
}

/// One delivery link: the relay proves its key, the client none.
pub struct DeliveryClient {
    /// Receiving half (`Stored` answers and refusals).
    pub reader: LinkReader<OwnedReadHalf>,
    /// Sending half.
    pub writer: LinkWriter<OwnedWriteHalf>,
}

/// Opens one delivery link.
pub async fn connect_delivery(addr: SocketAddr, relay: RelayKey) -> anyhow::Result<DeliveryClient> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let (reader, writer, _hello) = link::connect_delivery(r, w, &relay).await?;
    Ok(DeliveryClient { reader, writer })
}

/// Connects `n` clients, a bounded number of handshakes at a time, in order.
pub async fn connect_many(
    addr: SocketAddr,
    relay: RelayKey,
    n: usize,
) -> anyhow::Result<Vec<Client>> {
    bounded(n, move || connect(addr, relay)).await
}

/// Opens `n` delivery links, as [`connect_many`].
pub async fn connect_delivery_many(
    addr: SocketAddr,
    relay: RelayKey,
    n: usize,
) -> anyhow::Result<Vec<DeliveryClient>> {
    bounded(n, move || connect_delivery(addr, relay)).await
}

/// Runs `n` handshakes, [`CONNECTING`] at a time; the results in order.
async fn bounded<T, F, Fut>(n: usize, connect: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONNECTING));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await?;
        let connecting = connect();
        set.spawn(async move {
            let c = connecting.await;
            drop(permit);
            (i, c)
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, c) = done?;
        out[i] = Some(c?);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Registers a fresh delivery token for `client`'s mailbox (first contact
/// refused, so a delivery without it would be refused, not merely slowed)
/// and returns the token, once the relay has committed it.
pub async fn register_token(client: &mut Client) -> anyhow::Result<DeliveryToken> {
    let token = DeliveryToken::generate();
    let req = 1;
    client
        .writer
        .send(&ClientMsg::SetDeliveryToken {
            req,
            token_hash: token_hash(&token),
            first_contact: false,
        })
        .await?;
    client.writer.flush().await?;
    loop {
        match client.reader.recv::<RelayMsg>().await? {
            Some(RelayMsg::TokenSet { req: r }) if r == req => return Ok(token),
            Some(RelayMsg::Error { detail, .. }) => {
                anyhow::bail!("the relay refused the delivery token: {detail}")
            }
            Some(_) => {}
            None => anyhow::bail!("the relay closed the connection"),
        }
    }
}

/// [`register_token`] for every client, at once; the tokens in order.
pub async fn register_tokens(clients: Vec<Client>) -> anyhow::Result<Vec<(Client, DeliveryToken)>> {
    let mut set = JoinSet::new();
    let n = clients.len();
    for (i, mut c) in clients.into_iter().enumerate() {
        set.spawn(async move {
            let token = register_token(&mut c).await;
            (i, token.map(|t| (c, t)))
        });
    }
    let mut out: Vec<Option<(Client, DeliveryToken)>> = (0..n).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, c) = done?;
        out[i] = Some(c?);
    }
    Ok(out.into_iter().flatten().collect())
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// An opaque 256-byte envelope carrying its send time. The relay neither
/// opens nor parses envelopes, so sealing one would only add client work
/// unrelated to the relay's latency.
pub fn stamped_envelope() -> Vec<u8> {
    let mut env = vec![0x42u8; ENVELOPE_LEN];
    let nanos = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
    env[..8].copy_from_slice(&nanos.to_le_bytes());
    env
}

/// Time since an envelope from [`stamped_envelope`] was made.
pub fn age(envelope: &[u8]) -> Option<Duration> {
    let stamp: [u8; 8] = envelope.get(..8)?.try_into().ok()?;
    let sent = Duration::from_nanos(u64::from_le_bytes(stamp));
    epoch().elapsed().checked_sub(sent)
}
