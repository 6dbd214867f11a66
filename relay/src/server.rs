//! The accept loop and graceful shutdown.
//!
//! A connection permit is taken *before* `accept`, so a flood waits in the
//! kernel's backlog instead of growing the relay's memory. Connections that
//! have not authenticated cannot hold the permits against newcomers: while
//! fewer than `max_handshakes` permits are free (at most half of them), each
//! new connection closes the oldest half-open one (see `crate::half_open`).
//! Each connection runs
//! in its own task, tracked so that shutdown can wait for in-flight work: on
//! the shutdown signal the loop stops accepting, every connection is told to
//! finish what it is doing (a `Send` being committed is committed and
//! acknowledged, every chunk of an upload received is written and made
//! durable), then the store's writer drains and closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sotto_crypto::link::LINK_VERSION;
use sotto_crypto::wire::RelayHello;
use sotto_keys::{RelayKey, SecretKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::blobs::{BlobError, Blobs};
use crate::budget;
use crate::config::RelayConfig;
use crate::config::StoreBackend;
use crate::connection;
use crate::half_open::HalfOpen;
use crate::limits::RateLimiter;
use crate::occupancy::Occupancy;
use crate::registry::Registry;
use crate::relay_key::{self, RelayKeyError};
use crate::store::{Store, StoreError};
use crate::tally::{self, Tally};

/// State shared by every connection.
pub(crate) struct Shared {
    pub config: RelayConfig,
    pub key: SecretKey,
    pub store: Store,
    pub blobs: Blobs,
    /// Live connections' queues of notices.
    pub registry: Arc<Registry>,
    /// Connections that have not authenticated yet.
    pub half_open: Arc<HalfOpen>,
    /// Authenticated connections per key and per address.
    pub occupancy: Arc<Occupancy>,
    /// The relay-wide byte budget every connection's buffers draw from.
    pub buffers: Arc<Semaphore>,
    /// Closures before a connection was served, for the periodic summary.
    pub tally: Tally,
    pub rate: Arc<RateLimiter>,
    /// The delivery links' buckets: per connection, address and
    /// first-contact recipient.
    pub delivery_rate: crate::delivery::Rates,
    /// Rendezvous slots for pairing clients.
    pub rendezvous: Arc<crate::rendezvous::Rendezvous<crate::connection::Outgoing>>,
    pub hello: RelayHello,
}

/// A relay that failed to start or stop.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] RelayKeyError),
    /// The store could not be opened or closed.
    #[error("{}", store_failure(.0))]
    Store(#[from] StoreError),
    /// The file cache could not be opened or swept.
    #[error("file cache: {0}")]
    Blobs(#[from] BlobError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {}", bind_failure(.source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a store that failed to open says: another relay holding it needs
/// no prefix.
fn store_failure(e: &StoreError) -> String {
    match e {
        StoreError::InUse { .. } => e.to_string(),
        other => format!("mailbox store: {other}"),
    }
}

/// Why a bind failed, with the fix for the common case.
fn bind_failure(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "address already in use (by another sotto-relay, or another program); choose another with --listen ADDR".to_owned()
        }
        _ => e.to_string(),
    }
}

/// A bound relay, ready to [`Relay::run`].
pub struct Relay {
    listener: TcpListener,
    shared: Arc<Shared>,
    key_created: bool,
}

/// File name of the mailbox store inside the data dir.
pub const STORE_FILE: &str = "mailboxes.redb";

/// Opens the embedded store in the data dir, private to the relay's user.
async fn open_embedded(config: &RelayConfig) -> Result<Store, StoreError> {
    let store_path = config.data_dir.join(STORE_FILE);
    let limits = config.mailbox.clone();
    tokio::task::spawn_blocking(move || {
        let store = Store::open(&store_path, limits)?;
        // The data dir is 0700 already; the file is private on its own too.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Database(format!("{}: {e}", store_path.display())))?;
        Ok::<_, StoreError>(store)
    })
    .await
    .map_err(|_| StoreError::Crashed)?
}

impl Relay {
    /// Loads (or creates) the key, opens the store and binds the socket.
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        let (key, key_created) = relay_key::load_or_create(&config.data_dir)?;
        let store = match &config.store {
            StoreBackend::Embedded => open_embedded(&config).await?,
            StoreBackend::JetStream(js) => {
                let store =
                    Store::connect_jetstream(js, config.mailbox.clone(), &config.data_dir).await?;
                info!(servers = ?js.servers, replicas = js.replicas, "mailboxes on NATS JetStream");
                store
            }
        };
        let blobs = {
            let (data_dir, store, limits) =
                (config.data_dir.clone(), store.clone(), config.files.clone());
            tokio::task::spawn_blocking(move || Blobs::open(&data_dir, store, limits))
                .await
                .map_err(|_| BlobError::Crashed)??
        };
        // Before serving: no upload can have a file without its row yet.
        match blobs.remove_orphans().await? {
            0 => {}
            n => info!("removed {n} blob files left behind without metadata"),
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| RelayError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let hello = RelayHello {
            version: LINK_VERSION,
            max_envelope_len: u32::try_from(config.mailbox.max_envelope_len).unwrap_or(u32::MAX),
        };
        let shared = Arc::new(Shared {
            half_open: HalfOpen::new(config.max_handshakes, config.max_handshakes_per_address),
            occupancy: Occupancy::new(
                config.max_connections_per_key,
                config.max_connections_per_address,
                config.buffers,
            ),
            buffers: budget::pool(config.buffers.total),
            tally: Tally::default(),
            rate: RateLimiter::new(config.rate),
            delivery_rate: crate::delivery::Rates::new(&config.delivery),
            rendezvous: crate::rendezvous::Rendezvous::new(config.pairing),
            registry: Arc::new(Registry::default()),
            config,
            key,
            store,
            blobs,
            hello,
        });
        Ok(Self {
            listener,
            shared,
            key_created,
        })
    }

    /// The address actually bound (the real port when given port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The relay's public key, which clients pin.
    pub fn public_key(&self) -> RelayKey {
        RelayKey::from(self.shared.key.public())
    }

    /// Whether this start generated the relay's key.
    pub fn key_created(&self) -> bool {
        self.key_created
    }

    /// A handle for maintenance work that also runs periodically, usable
    /// while the relay runs.
    pub fn maintenance(&self) -> Maintenance {
        Maintenance {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes, then finishes in-flight work.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let Self {
            listener, shared, ..
        } = self;
        let max_connections = shared.config.max_connections;
        let connections = Arc::new(Semaphore::new(max_connections));
        // Permits kept free for newcomers while half-open connections hold
        // the others.
        let reserve = shared
            .config
            .max_handshakes
            .clamp(1, max_connections.div_ceil(2).max(1));
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(collect_garbage(shared.clone(), token.clone()));
        tracker.spawn(report_closures(shared.clone(), token.clone()));

        tokio::pin!(shutdown);
        loop {
            if connections.available_permits() < reserve {
                shared.half_open.evict_oldest();
            }
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, addr) = tokio::select! {
                _ = &mut shutdown => break,
                r = accept(&listener) => r,
            };
            configure(&stream);
            let shared = shared.clone();
            let token = token.clone();
            tracker.spawn(async move {
                connection::serve(stream, addr, shared, token).await;
                drop(permit);
            });
        }

        info!("shutting down: no new connections, finishing in-flight work");
        drop(listener);
        token.cancel();
        tracker.close();
        if tokio::time::timeout(shared.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within the shutdown grace period");
        }
        log_closures(&shared.tally);
        shared.store.clone().close().await?;
        info!("stopped");
        Ok(())
    }
}

/// Logs the summary of connections closed before they were served, once
/// per interval in which there were any.
async fn report_closures(shared: Arc<Shared>, token: CancellationToken) {
    let mut tick = tokio::time::interval(tally::INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => log_closures(&shared.tally),
        }
    }
}

fn log_closures(tally: &Tally) {
    if let Some(summary) = tally.take() {
        info!("{summary}");
    }
}

/// Accepts the next connection, riding out transient errors (such as running
/// out of file descriptors) with a short backoff instead of exiting.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!("could not enable TCP keepalive: {e}");
    }
}

/// Maintenance of a relay's stored data; see [`Relay::maintenance`].
#[derive(Clone)]
pub struct Maintenance {
    shared: Arc<Shared>,
}

/// What one garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Envelopes past the mailbox expiry.
    pub envelopes: usize,
    /// Blobs, complete or abandoned, not updated within the file expiry.
    pub blobs: usize,
}

impl Maintenance {
    /// What the mailbox store has committed since the relay started.
    pub fn store_counters(&self) -> crate::store::StoreCounters {
        self.shared.store.counters()
    }

    /// Deletes what has expired as of `now_unix`: envelopes and blobs alike.
    /// Runs every `gc_interval` on its own; a test passes a time in the future
    /// instead of waiting for it.
    pub async fn collect_garbage(&self, now_unix: u64) -> Result<Collected, RelayError> {
        let envelopes = self.shared.store.expire(now_unix).await;
        let blobs = self.shared.blobs.expire(now_unix).await;
        Ok(Collected {
            envelopes: envelopes?,
            blobs: blobs?,
        })
    }
}

async fn collect_garbage(shared: Arc<Shared>, token: CancellationToken) {
    let maintenance = Maintenance { shared };
    let mut tick = tokio::time::interval(maintenance.shared.config.gc_interval);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match maintenance.collect_garbage(now).await {
            Ok(Collected {
                envelopes: 0,
                blobs: 0,
            }) => {}
            Ok(Collected { envelopes, blobs }) => {
                info!("expired {envelopes} undelivered envelopes and {blobs} files")
            }
            Err(e) => warn!("expiry failed: {e}"),
        }
    }
}
