//! The JetStream backend: the mailboxes of a relay whose nodes share one NATS
//! JetStream cluster, so any node serves any client and losing a machine
//! loses nothing acknowledged.
//!
//! It stands on JetStream's replicated (Raft) streams rather than a cluster
//! protocol of our own:
//!
//! - **Mailboxes** are one stream, `<prefix>_MAIL`, with a subject per
//!   recipient: `<prefix>.mail.<h>` where `h` is a keyed BLAKE3 hash of the
//!   recipient's key, so NATS subject names, logs and monitoring never show a
//!   key. An envelope's id is its stream sequence: unique cluster-wide,
//!   increasing, never reused. A send is `Stored` only once the publish is
//!   acknowledged, which JetStream gives after the stream's replicas (a
//!   quorum of `replicas`) have it. Reads walk the recipient's subject in
//!   sequence order with direct gets, which any replica answers: one outside
//!   the quorum may not have the newest envelopes yet, so a fetch through
//!   another node just after a `Stored` can miss them for a moment (the live
//!   feed, served by the leader, still brings them, and the next fetch finds
//!   them). An ack reads the envelope through the stream's leader, so it
//!   always finds what was stored, then deletes by sequence after checking
//!   the subject.
//! - **Quotas** (count and bytes per recipient) are one KV entry per
//!   recipient, `<prefix>_USAGE`, changed by compare-and-set before a publish
//!   and after a deletion, so they hold across nodes. A node that dies
//!   between the reservation and the publish leaves the reservation counted
//!   (never too little); each node's hourly expiry sets an entry unchanged
//!   for two minutes back to what the stream holds where they disagree
//!   ([`JetStreamStore::recount_usage`]), which gives such room back.
//! - **Expiry** walks the stream from its first sequence, by the
//!   `Sotto-Received` header each envelope carries (the relay's clock, as the
//!   embedded store), and the stream's max age (expiry plus a day) is a
//!   backstop should no node run expiry.
//! - **Live delivery across nodes**: each node follows the whole stream with
//!   an ordered push consumer (new messages only) and hands each envelope to
//!   its local feeds (`live`), in stream order; a message reaches a feed only
//!   once it is durable, and "settled" is the last sequence the consumer
//!   delivered. A node that dies mid-delivery loses only its feeds: its
//!   clients reconnect elsewhere and fetch from the stream, where everything
//!   unacknowledged still is; a client's ack of an envelope it was shown
//!   twice deletes nothing twice.
//! - **Delivery tokens** are a KV bucket, `<prefix>_TOKENS`, keyed like the
//!   subjects.
//!
//! - **The blind file cache** (chunks, metadata, file quotas and the holds
//!   of uploads in progress) is in `cluster_files`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use sotto_keys::PublicKey;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::cluster_files::{
    leaderless, ChunkSink, ChunkSource, ClusterFiles, LEADERLESS_FOR, LEADERLESS_PAUSE,
};
use super::codec::{Recipient, Usage};
use super::live::{Feed, Feeds};
use super::writer::Clock;
use super::{
    BlobBegun, BlobMeta, BlobQuota, Committing, SourceAddr, StoreCounters, StoreError, StoreLimits,
    Stored, TokenRow, Window,
};
use sotto_crypto::file::FileId;

/// The header with an envelope's arrival time (unix seconds, relay clock).
const RECEIVED: &str = "Sotto-Received";

/// How long a JetStream request may take before it counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A usage entry unchanged for this long holds no reservation whose
/// envelope may still come (a publish gives up after `REQUEST_TIMEOUT`, and
/// waits out a leader election for at most `LEADERLESS_FOR`), so it may be
/// recounted from the stream.
const RECOUNT_AFTER: Duration = Duration::from_secs(120);

/// What a relay's nodes need to reach their shared cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// NATS server URLs; the client fails over between them.
    pub servers: Vec<String>,
    /// Copies of every stream (1, 3 or 5; a publish is acknowledged by a
    /// quorum of them).
    pub replicas: usize,
    /// Prefix of the stream, bucket and subject names, so several relays
    /// can share one cluster.
    pub prefix: String,
    /// A NATS credentials file (JWT and nkey seed), if the cluster asks.
    pub credentials: Option<std::path::PathBuf>,
    /// A CA certificate to trust for TLS to the servers; TLS is required
    /// when this is set.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// A handle to the JetStream backend; clones share one connection.
#[derive(Clone)]
pub(super) struct JetStreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    mail: stream::Stream,
    usage: kv::Store,
    tokens: kv::Store,
    mail_name: String,
    prefix: String,
    limits: StoreLimits,
    clock: Clock,
    feeds: Arc<Feeds>,
    space: crate::space::Space,
    closed: AtomicBool,
    /// Publishes and deletions in flight: `close` waits for them.
    tasks: TaskTracker,
    writes: AtomicU64,
    /// Serializes this node's quota reservations per recipient, so the
    /// compare-and-set rarely loses to a neighbour on the same node.
    reserving: Mutex<HashMap<Recipient, Arc<tokio::sync::Mutex<()>>>>,
    /// The blind file cache (`cluster_files`).
    files: ClusterFiles,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Whether a compare-and-set that async-nats reports as a plain failure in
/// fact lost to another writer (so it is tried again on what that writer
/// left, as a `WrongLastRevision` is).
///
/// async-nats names the loss `WrongLastRevision` only for the server's error
/// code 10071; nats-server 2.11 and later answer a lost compare-and-set on
/// one subject with 10164 ("wrong last sequence"), which reaches us as
/// `Other` with the server's error as its source. `ErrorCode` has no public
/// constructor, so that code is recognised by its debug form.
pub(super) fn lost_the_race(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            let code = js.error_code();
            return code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || format!("{code:?}") == "ErrorCode(10164)";
        }
        source = e.source();
    }
    false
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// The hash of a recipient's key that names its subject and KV entries.
pub(super) fn hashed(key: &PublicKey) -> Recipient {
    *blake3::Hasher::new_derive_key("sotto relay jetstream mailbox name v1")
        .update(key.as_bytes())
        .finalize()
        .as_bytes()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl JetStreamStore {
    /// Connects to the cluster, creates the stream and buckets if missing
    /// (or checks them), and starts following the stream for live feeds.
    pub(super) async fn connect(
        config: &JetStreamConfig,
        limits: StoreLimits,
        data_dir: &std::path::Path,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let mut options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .request_timeout(Some(REQUEST_TIMEOUT));
        if let Some(creds) = &config.credentials {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| StoreError::Database(format!("nats credentials: {e}")))?;
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .connect(config.servers.as_slice())
            .await
            .map_err(unavailable)?;
        let js = jetstream::new(client.clone());
        let prefix = config.prefix.clone();
        let mail_name = format!("{prefix}_MAIL");
        let max_age = limits.expiry.saturating_add(Duration::from_secs(24 * 3600));
        let mail = js
            .get_or_create_stream(stream::Config {
                name: mail_name.clone(),
                subjects: vec![format!("{prefix}.mail.*")],
                num_replicas: config.replicas,
                max_age,
                max_message_size: i32::try_from(limits.max_envelope_len.saturating_add(4096))
                    .unwrap_or(i32::MAX),
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let bucket = |name: String| kv::Config {
            bucket: name,
            history: 1,
            num_replicas: config.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let usage = create_bucket(&js, bucket(format!("{prefix}_USAGE"))).await?;
        let tokens = create_bucket(&js, bucket(format!("{prefix}_TOKENS"))).await?;
        let files = ClusterFiles::open(&js, &prefix, config.replicas, Arc::clone(&clock)).await?;
        let last = mail
            .get_info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        let feeds = Feeds::new(last.saturating_add(1));
        // Following starts before this returns, from just past what the
        // stream held, so a feed opened from now on misses nothing.
        let messages = following(&client, &js, &mail_name, last.saturating_add(1)).await?;
        let follower = tokio::spawn(follow(
            client,
            js.clone(),
            mail_name.clone(),
            prefix.clone(),
            Arc::clone(&feeds),
            messages,
            last.saturating_add(1),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                js,
                mail,
                usage,
                tokens,
                mail_name,
                prefix,
                space: crate::space::Space::new(data_dir, limits.min_free_disk),
                limits,
                clock,
                feeds,
                closed: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                writes: AtomicU64::new(0),
                reserving: Mutex::new(HashMap::new()),
                files,
                follower,
            }),
        })
    }

    fn open(&self) -> Result<&Inner, StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(&self.inner)
    }

    pub(super) fn limits(&self) -> &StoreLimits {
        &self.inner.limits
    }

    pub(super) fn space(&self) -> &crate::space::Space {
        &self.inner.space
    }

    pub(super) fn counters(&self) -> StoreCounters {
        let writes = self.inner.writes.load(Ordering::Relaxed);
        StoreCounters {
            commits: writes,
            envelopes_written: writes,
            envelopes_taken_out: 0,
        }
    }

    pub(super) async fn enqueue_begin(
        &self,
        to: PublicKey,
        envelope: Vec<u8>,
    ) -> Result<Committing<u64>, StoreError> {
        let inner = self.open()?;
        let max = inner.limits.max_envelope_len;
        if envelope.len() > max {
            return Err(StoreError::TooLarge {
                len: envelope.len(),
                max,
            });
        }
        // The reservation and the publish happen here, in call order, so
        // one connection's envelopes get increasing ids in the order it sent
        // them (one NATS connection keeps its publishes in order); only the
        // wait for the acknowledgement runs on, concurrently.
        let h = hashed(&to);
        let len = envelope.len() as u64;
        self.change_usage(h, |usage| {
            if usage.messages >= inner.limits.max_messages_per_recipient
                || usage.bytes.saturating_add(len) > inner.limits.max_bytes_per_recipient
            {
                return Err(StoreError::QuotaExceeded {
                    messages: usage.messages,
                    bytes: usage.bytes,
                });
            }
            Ok(Usage {
                messages: usage.messages + 1,
                bytes: usage.bytes + len,
            })
        })
        .await?;
        let mut headers = HeaderMap::new();
        headers.insert(RECEIVED, (inner.clock)().to_string().as_str());
        let subject = format!("{}.mail.{}", inner.prefix, hex(&h));
        let sent = inner
            .js
            .publish_with_headers(subject, headers, envelope.into())
            .await;
        let (reply, answer) = oneshot::channel();
        let store = self.clone();
        inner.tasks.spawn(async move {
            let acked = match sent {
                Ok(ack) => ack.await.map_err(unavailable),
                Err(err) => Err(unavailable(err)),
            };
            let answer = match acked {
                Ok(ack) => {
                    store.inner.writes.fetch_add(1, Ordering::Relaxed);
                    Ok(ack.sequence)
                }
                Err(err) => {
                    // Not stored, or not known to be: give the reservation
                    // back. Should the publish have landed after all, usage
                    // counts one envelope short until it is acknowledged or
                    // expires.
                    let _ = store
                        .change_usage(h, |u| {
                            Ok(Usage {
                                messages: u.messages.saturating_sub(1),
                                bytes: u.bytes.saturating_sub(len),
                            })
                        })
                        .await;
                    Err(err)
                }
            };
            drop(reply.send(answer));
        });
        Ok(Committing(answer))
    }

    /// Applies `change` to `h`'s usage entry by compare-and-set, retrying
    /// when another writer got there first.
    pub(super) async fn change_usage(
        &self,
        h: Recipient,
        change: impl Fn(Usage) -> Result<Usage, StoreError>,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let lock = {
            let mut map = inner
                .reserving
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(h).or_default())
        };
        let guard = lock.lock().await;
        let key = hex(&h);
        // While the bucket's stream elects a leader (a server was lost),
        // nothing is read or written: wait for it rather than refuse.
        let until = tokio::time::Instant::now() + LEADERLESS_FOR;
        let result = loop {
            let entry = match inner.usage.entry(key.clone()).await {
                Ok(entry) => entry,
                Err(err) if leaderless(&err) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LEADERLESS_PAUSE).await;
                    continue;
                }
                Err(err) => break Err(unavailable(err)),
            };
            let (revision, usage) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (e.revision, Usage::decode(&e.value).unwrap_or_default())
                }
                Some(e) => (e.revision, Usage::default()),
                None => (0, Usage::default()),
            };
            let new = change(usage)?;
            match inner
                .usage
                .update(&key, new.encode().to_vec().into(), revision)
                .await
            {
                Ok(_) => break Ok(()),
                Err(err)
                    if err.kind() == kv::UpdateErrorKind::WrongLastRevision
                        || lost_the_race(&err) =>
                {
                    continue
                }
                Err(err) if leaderless(&err) && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LEADERLESS_PAUSE).await;
                }
                Err(err) => break Err(unavailable(err)),
            }
        };
        drop(guard);
        let mut map = inner
            .reserving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&lock) == 2 {
            map.remove(&h);
        }
        result
    }

    pub(super) fn subscribe(&self, to: PublicKey) -> Feed {
        self.inner.feeds.subscribe(hashed(&to), None)
    }

    pub(super) fn subscribe_within(&self, to: PublicKey, budget: crate::budget::Budget) -> Feed {
        self.inner.feeds.subscribe(hashed(&to), Some(budget))
    }

    pub(super) async fn pending_within(
        &self,
        owner: PublicKey,
        after: Option<u64>,
        limit: usize,
        max_charge: usize,
    ) -> Result<(Vec<Stored>, bool), StoreError> {
        let inner = self.open()?;
        let Some(mut next) = after.map_or(Some(1), |after| after.checked_add(1)) else {
            return Ok((Vec::new(), false));
        };
        if limit == 0 {
            return Ok((Vec::new(), true));
        }
        let subject = format!("{}.mail.{}", inner.prefix, hex(&hashed(&owner)));
        let mut out = Vec::new();
        let mut charged = 0usize;
        loop {
            let Some(stored) = self.next_on(&subject, next).await? else {
                return Ok((out, false));
            };
            if out.len() == limit {
                return Ok((out, true));
            }
            charged = charged.saturating_add(crate::budget::charge(stored.envelope.len()));
            if charged > max_charge {
                return Ok((out, true));
            }
            next = stored.id.saturating_add(1);
            out.push(stored);
        }
    }

    /// The first message at or after sequence `from` on `subject`.
    async fn next_on(&self, subject: &str, from: u64) -> Result<Option<Stored>, StoreError> {
        match self
            .inner
            .mail
            .direct_get_next_for_subject(subject, Some(from))
            .await
        {
            Ok(message) => Ok(Some(stored_from(&message.message)?)),
            Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    pub(super) async fn ack_begin(
        &self,
        owner: PublicKey,
        ids: Vec<u64>,
    ) -> Result<Committing<usize>, StoreError> {
        let inner = self.open()?;
        let (reply, answer) = oneshot::channel();
        let store = self.clone();
        inner.tasks.spawn(async move {
            drop(reply.send(store.ack(owner, ids).await));
        });
        Ok(Committing(answer))
    }

    async fn ack(&self, owner: PublicKey, mut ids: Vec<u64>) -> Result<usize, StoreError> {
        ids.sort_unstable();
        ids.dedup();
        let h = hashed(&owner);
        let subject = format!("{}.mail.{}", self.inner.prefix, hex(&h));
        let mut deleted = 0;
        for id in ids {
            if self.delete_if(id, |s| s == subject).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes message `id` if it exists and `check` accepts it, giving its
    /// room back to its recipient's usage.
    async fn delete_if(
        &self,
        id: u64,
        check: impl FnOnce(&str) -> bool,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        // Through the stream's leader, not a replica that may lag behind the
        // quorum: an ack through one node of what another just stored must
        // find it, or the envelope would be delivered again.
        let message = match inner.mail.get_raw_message(id).await {
            Ok(m) => m,
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(false)
            }
            Err(err) => return Err(unavailable(err)),
        };
        if !check(message.subject.as_str()) {
            return Ok(false);
        }
        let len = message.payload.len() as u64;
        let Some(h) = message.subject.as_str().rsplit('.').next().and_then(unhex) else {
            return Err(StoreError::Corrupt);
        };
        match inner.mail.delete_message(id).await {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            // Deleted meanwhile (by another node's ack or expiry): not ours to count.
            Err(err) if err.to_string().contains("no message found") => return Ok(false),
            Err(err) => return Err(unavailable(err)),
        }
        self.change_usage(h, |u| {
            Ok(Usage {
                messages: u.messages.saturating_sub(1),
                bytes: u.bytes.saturating_sub(len),
            })
        })
        .await?;
        Ok(true)
    }

    pub(super) async fn expire(&self, now_unix: u64) -> Result<usize, StoreError> {
        let inner = self.open()?;
        let expiry = inner.limits.expiry.as_secs();
        let all = format!("{}.mail.*", inner.prefix);
        let mut next = 1;
        let mut deleted = 0;
        while let Some(stored) = self.next_on(&all, next).await? {
            if stored.received_at.saturating_add(expiry) > now_unix {
                break;
            }
            if self.delete_if(stored.id, |_| true).await? {
                deleted += 1;
            }
            next = stored.id.saturating_add(1);
        }
        if let Err(err) = self.recount_usage(RECOUNT_AFTER).await {
            tracing::warn!(error = %err, "could not recount mailbox usage");
        }
        Ok(deleted)
    }

    /// Sets the usage entry of every mailbox that has not changed for
    /// `older_than` back to what its subject holds, where the two disagree;
    /// returns how many were set. A node that died between a reservation
    /// and its publish leaves its reservation counted: this gives it back.
    /// Only an entry left alone that long is touched, since a reservation
    /// younger than a publish's timeout may still be followed by its
    /// envelope; the compare-and-set leaves an entry that changed meanwhile.
    pub(super) async fn recount_usage(&self, older_than: Duration) -> Result<usize, StoreError> {
        let inner = self.open()?;
        let start = format!("{}.mail.", inner.prefix);
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut subjects = inner
            .mail
            .info_with_subjects(format!("{start}*"))
            .await
            .map_err(unavailable)?;
        while let Some(item) = subjects.next().await {
            let (subject, n) = item.map_err(unavailable)?;
            if let Some(h) = subject.strip_prefix(&start) {
                counts.insert(h.to_owned(), n as u64);
            }
        }
        let mut keys = inner.usage.keys().await.map_err(unavailable)?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(unavailable)?);
        }
        // Against the servers' timestamps: the real clock, not the relay's
        // (which tests set).
        let now = i64::try_from(super::embedded::unix_now()).unwrap_or(i64::MAX);
        let older = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let mut set = 0;
        for name in names {
            let Some(entry) = inner.usage.entry(name.clone()).await.map_err(unavailable)? else {
                continue;
            };
            if entry.operation != kv::Operation::Put
                || entry.created.unix_timestamp().saturating_add(older) > now
            {
                continue;
            }
            let Ok(usage) = Usage::decode(&entry.value) else {
                continue;
            };
            let messages = counts.get(&name).copied().unwrap_or(0);
            if messages == usage.messages {
                continue;
            }
            // The count disagrees: walk the subject for the bytes too.
            let subject = format!("{start}{name}");
            let (mut bytes, mut found, mut next) = (0u64, 0u64, 1);
            while let Some(stored) = self.next_on(&subject, next).await? {
                bytes = bytes.saturating_add(stored.envelope.len() as u64);
                found += 1;
                next = stored.id.saturating_add(1);
            }
            let counted = Usage {
                messages: found,
                bytes,
            };
            match inner
                .usage
                .update(&name, counted.encode().to_vec().into(), entry.revision)
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        from = usage.messages,
                        to = found,
                        "a mailbox's usage was recounted from its envelopes"
                    );
                    set += 1;
                }
                Err(err)
                    if err.kind() == kv::UpdateErrorKind::WrongLastRevision
                        || lost_the_race(&err) => {}
                Err(err) => return Err(unavailable(err)),
            }
        }
        Ok(set)
    }

    pub(super) async fn set_delivery_token(
        &self,
        owner: PublicKey,
        hash: sotto_crypto::delivery::TokenHash,
        first_contact: bool,
    ) -> Result<(), StoreError> {
        let inner = self.open()?;
        let key = hex(&hashed(&owner));
        let old = self.delivery_token(owner).await.unwrap_or(None);
        let now = (inner.clock)();
        let previous = match old {
            Some(old) if old.current == hash => old.previous,
            Some(old) => Some((old.current, now)),
            None => None,
        };
        let row = TokenRow {
            current: hash,
            previous,
            first_contact,
        };
        inner
            .tokens
            .put(key, row.encode().to_vec().into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn delivery_token(
        &self,
        owner: PublicKey,
    ) -> Result<Option<TokenRow>, StoreError> {
        let inner = self.open()?;
        let value = inner
            .tokens
            .get(hex(&hashed(&owner)))
            .await
            .map_err(unavailable)?;
        value.map(|v| TokenRow::decode(&v)).transpose()
    }

    pub(super) async fn usage(&self, owner: PublicKey) -> Result<(u64, u64), StoreError> {
        let inner = self.open()?;
        let entry = inner
            .usage
            .get(hex(&hashed(&owner)))
            .await
            .map_err(unavailable)?;
        let usage = entry
            .map(|v| Usage::decode(&v))
            .transpose()?
            .unwrap_or_default();
        Ok((usage.messages, usage.bytes))
    }

    pub(super) async fn begin_blob(
        &self,
        id: FileId,
        uploader: PublicKey,
        source: SourceAddr,
        to: PublicKey,
        size: u64,
        quota: BlobQuota,
    ) -> Result<BlobBegun, StoreError> {
        let inner = self.open()?;
        inner
            .files
            .begin_blob(id, uploader, source, to, size, quota)
            .await
    }

    pub(super) async fn update_blob(
        &self,
        id: FileId,
        have: u64,
        complete: bool,
    ) -> Result<Window, StoreError> {
        self.open()?.files.update_blob(id, have, complete).await
    }

    pub(super) async fn delete_blobs(
        &self,
        ids: Vec<FileId>,
        owner: Option<PublicKey>,
        updated_at_or_before: Option<u64>,
    ) -> Result<Vec<FileId>, StoreError> {
        let inner = self.open()?;
        inner
            .files
            .delete_blobs(ids, owner, updated_at_or_before)
            .await
    }

    pub(super) async fn blob(&self, id: FileId) -> Result<Option<BlobMeta>, StoreError> {
        self.open()?.files.blob(id).await
    }

    pub(super) async fn blob_ids(&self) -> Result<Vec<FileId>, StoreError> {
        self.open()?.files.blob_ids().await
    }

    pub(super) async fn stale_blobs(
        &self,
        updated_at_or_before: u64,
    ) -> Result<Vec<FileId>, StoreError> {
        self.open()?.files.stale_blobs(updated_at_or_before).await
    }

    pub(super) async fn blob_usage(&self, recipient: PublicKey) -> Result<(u64, u64), StoreError> {
        self.open()?.files.blob_usage(recipient).await
    }

    pub(super) async fn blob_share(
        &self,
        recipient: PublicKey,
        uploader: PublicKey,
    ) -> Result<(u64, u64), StoreError> {
        self.open()?.files.blob_share(recipient, uploader).await
    }

    pub(super) fn chunk_sink(&self, id: FileId) -> Result<ChunkSink, StoreError> {
        Ok(self.open()?.files.sink(id))
    }

    pub(super) fn chunk_source(&self, id: FileId) -> Result<ChunkSource, StoreError> {
        Ok(self.open()?.files.source(id))
    }

    pub(super) async fn close(self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Closed);
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        tracing::info!(
            stream = %self.inner.mail_name,
            writes = self.inner.writes.load(Ordering::Relaxed),
            "jetstream store closed"
        );
        Ok(())
    }
}

pub(super) async fn create_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, StoreError> {
    match js.get_key_value(config.bucket.clone()).await {
        Ok(store) => Ok(store),
        Err(_) => js.create_key_value(config).await.map_err(unavailable),
    }
}

fn unhex(text: &str) -> Option<Recipient> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A stream message as a mailbox entry; one without its arrival time goes out
/// with time 0 rather than lock its owner out of the rest.
fn stored_from(message: &async_nats::Message) -> Result<Stored, StoreError> {
    let headers = message.headers.as_ref();
    let id = headers
        .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or(StoreError::Corrupt)?;
    let received_at = headers
        .and_then(|h| h.get(RECEIVED))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Stored {
        id,
        received_at,
        envelope: message.payload.to_vec(),
    })
}

/// An ordered consumer of the whole mail stream from sequence `from` on.
async fn following(
    client: &async_nats::Client,
    js: &jetstream::Context,
    name: &str,
    from: u64,
) -> Result<consumer::push::Ordered, StoreError> {
    let stream = js.get_stream(name).await.map_err(unavailable)?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    consumer.messages().await.map_err(unavailable)
}

/// Follows the mail stream, handing every new envelope to this node's feeds
/// in stream order; after losing the cluster it follows again from the
/// first sequence it has not seen, so no envelope is skipped.
async fn follow(
    client: async_nats::Client,
    js: jetstream::Context,
    name: String,
    prefix: String,
    feeds: Arc<Feeds>,
    mut messages: consumer::push::Ordered,
    mut next: u64,
) {
    let start = format!("{prefix}.mail.");
    loop {
        while let Some(message) = messages.next().await {
            let Ok(message) = message else { break };
            let Ok(info) = message.info() else { continue };
            let id = info.stream_sequence;
            let Some(h) = message
                .subject
                .as_str()
                .strip_prefix(&start)
                .and_then(unhex)
            else {
                continue;
            };
            let received_at = message
                .headers
                .as_ref()
                .and_then(|h| h.get(RECEIVED))
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0);
            feeds.push(
                &h,
                Stored {
                    id,
                    received_at,
                    envelope: message.payload.to_vec(),
                },
            );
            next = id.saturating_add(1);
            feeds.settle(next);
        }
        tracing::warn!("lost the mail stream; following it again");
        messages = loop {
            match following(&client, &js, &name, next).await {
                Ok(messages) => break messages,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot follow the mail stream; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
    }
}
