//! Bare clients: a fresh identity, the link handshake, and nothing else, so
//! the relay is measured with as little client code in the way as possible.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_keys::{PublicKey, RelayKey, SecretKey};
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

/// Connects `n` clients, a bounded number of handshakes at a time, in order.
pub async fn connect_many(
    addr: SocketAddr,
    relay: RelayKey,
    n: usize,
) -> anyhow::Result<Vec<Client>> {
    let limit = Arc::new(Semaphore::new(CONNECTING));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await?;
        set.spawn(async move {
            let c = connect(addr, relay).await;
            drop(permit);
            (i, c)
        });
    }
    let mut out: Vec<Option<Client>> = (0..n).map(|_| None).collect();
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
