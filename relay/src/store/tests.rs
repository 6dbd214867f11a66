//! Behaviour of the store through its public API, on real files.
//!
//! The tests of what any backend promises take a [`Place`] and run once per
//! backend (`shared_suite!` at the end); those of one backend's own
//! mechanics (the redb file's layout and repairs, group commit) run on it
//! alone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::Database;
use sotto_keys::PublicKey;
use tempfile::TempDir;

use super::codec::{ExpiryEntry, Usage, EXPIRY, MESSAGES, META, META_FORMAT, USAGE};
use super::{Store, StoreError, StoreLimits};

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("mailboxes.redb")
}

fn open(dir: &TempDir, limits: StoreLimits) -> Store {
    Store::open(&db_path(dir), limits).unwrap()
}

/// A store whose `received_at` clock the test sets.
fn open_at(dir: &TempDir, limits: StoreLimits) -> (Store, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(1_000));
    let clock = Arc::clone(&now);
    let store = Store::open_with(
        &db_path(dir),
        limits,
        Arc::new(move || clock.load(Ordering::SeqCst)),
        super::writer::COMMIT_INTERVAL,
    )
    .unwrap();
    (store, now)
}

/// Where a test's store lives, kept between its opens so that a reopened
/// store finds what the last one wrote: the backend, and what it needs.
pub(super) struct Place {
    dir: TempDir,
    /// A JetStream server of the test's own, for the JetStream backend.
    nats: Option<crate::nats_cluster::NatsCluster>,
}

impl Place {
    /// The embedded store, in a file of a fresh temp dir.
    fn embedded() -> Self {
        Self {
            dir: TempDir::new().unwrap(),
            nats: None,
        }
    }

    /// The JetStream backend on a one-server cluster of the test's own;
    /// `None` (the test is skipped, saying so) without a nats-server binary.
    fn jetstream() -> Option<Self> {
        let dir = TempDir::new().unwrap();
        let nats = crate::nats_cluster::NatsCluster::start(&dir.path().join("nats"), 1).unwrap()?;
        Some(Self {
            dir,
            nats: Some(nats),
        })
    }

    async fn open(&self, limits: StoreLimits) -> Store {
        match &self.nats {
            None => open(&self.dir, limits),
            Some(nats) => {
                Store::connect_jetstream(&jetstream_config(nats), limits, self.dir.path())
                    .await
                    .unwrap()
            }
        }
    }

    /// A store whose `received_at` clock the test sets.
    async fn open_at(&self, limits: StoreLimits) -> (Store, Arc<AtomicU64>) {
        let Some(nats) = &self.nats else {
            return open_at(&self.dir, limits);
        };
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = Arc::clone(&now);
        let store = Store::connect_jetstream_with(
            &jetstream_config(nats),
            limits,
            self.dir.path(),
            Arc::new(move || clock.load(Ordering::SeqCst)),
        )
        .await
        .unwrap();
        (store, now)
    }
}

fn jetstream_config(nats: &crate::nats_cluster::NatsCluster) -> super::JetStreamConfig {
    super::JetStreamConfig {
        servers: nats.urls(),
        replicas: 1,
        prefix: "SOTTO".into(),
        credentials: None,
        tls_ca: None,
    }
}

fn ids(stored: &[super::Stored]) -> Vec<u64> {
    stored.iter().map(|s| s.id).collect()
}

async fn enqueue_pending_ack_round_trip_keeps_order(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let (alice, bob) = (key(1), key(2));

    let mut sent = Vec::new();
    for i in 0..5u8 {
        sent.push(
            store
                .enqueue(alice, vec![i; 10 + usize::from(i)])
                .await
                .unwrap(),
        );
    }
    let for_bob = store.enqueue(bob, b"bob's".to_vec()).await.unwrap();
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");
    assert!(for_bob > sent[4]);

    let pending = store.pending(alice, None, 100).await.unwrap();
    assert_eq!(ids(&pending), sent);
    for (i, stored) in pending.iter().enumerate() {
        let i = u8::try_from(i).unwrap();
        assert_eq!(stored.envelope, vec![i; 10 + usize::from(i)]);
    }
    assert_eq!(
        store.usage(alice).await.unwrap(),
        (5, 10 + 11 + 12 + 13 + 14)
    );

    // Paging with `after` and `limit`.
    let page = store.pending(alice, Some(sent[1]), 2).await.unwrap();
    assert_eq!(ids(&page), &sent[2..4]);
    assert!(store
        .pending(alice, Some(sent[4]), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.pending(alice, None, 0).await.unwrap().is_empty());
    assert!(store
        .pending(alice, Some(u64::MAX), 10)
        .await
        .unwrap()
        .is_empty());

    // Duplicates count once; unknown ids are ignored.
    assert_eq!(
        store
            .ack(alice, vec![sent[0], sent[2], sent[0], 999_999])
            .await
            .unwrap(),
        2
    );
    let left = store.pending(alice, None, 100).await.unwrap();
    assert_eq!(ids(&left), [sent[1], sent[3], sent[4]]);
    assert_eq!(store.usage(alice).await.unwrap(), (3, 11 + 13 + 14));

    assert_eq!(
        store
            .ack(alice, vec![sent[1], sent[3], sent[4]])
            .await
            .unwrap(),
        3
    );
    assert!(store.pending(alice, None, 100).await.unwrap().is_empty());
    assert_eq!(store.usage(alice).await.unwrap(), (0, 0));
    assert_eq!(
        ids(&store.pending(bob, None, 100).await.unwrap()),
        [for_bob]
    );
    store.close().await.unwrap();
}

async fn ack_by_another_owner_deletes_nothing(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let (alice, mallory) = (key(1), key(9));
    let id = store.enqueue(alice, b"for alice".to_vec()).await.unwrap();

    assert_eq!(store.ack(mallory, vec![id]).await.unwrap(), 0);
    assert_eq!(ids(&store.pending(alice, None, 10).await.unwrap()), [id]);
    assert_eq!(store.usage(alice).await.unwrap(), (1, 9));
    assert_eq!(store.usage(mallory).await.unwrap(), (0, 0));
    assert!(store.pending(mallory, None, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
}

async fn a_registered_token_is_what_the_next_lookup_sees_though_the_old_was_cached(place: Place) {
    use sotto_crypto::delivery::TokenHash;
    let (alice, bob) = (key(1), key(2));
    let (store, _now) = place.open_at(StoreLimits::default()).await;
    assert_eq!(store.delivery_token(alice).await.unwrap(), None);
    store
        .set_delivery_token(alice, TokenHash([1; 32]), true)
        .await
        .unwrap();
    let first = store.delivery_token(alice).await.unwrap().unwrap();
    assert_eq!(first.current.0, [1; 32]);
    // Looked up again (now from the cache), then rotated.
    assert_eq!(store.delivery_token(alice).await.unwrap(), Some(first));
    store
        .set_delivery_token(alice, TokenHash([2; 32]), false)
        .await
        .unwrap();
    let second = store.delivery_token(alice).await.unwrap().unwrap();
    assert_eq!(second.current.0, [2; 32]);
    assert_eq!(second.previous, Some((TokenHash([1; 32]), 1_000)));
    assert!(!second.first_contact);
    assert_eq!(store.delivery_token(bob).await.unwrap(), None);
    store.clone().close().await.unwrap();
    assert!(matches!(
        store.delivery_token(alice).await,
        Err(StoreError::Closed)
    ));
}

async fn data_and_ids_survive_close_and_reopen(place: Place) {
    let alice = key(1);
    let store = place.open(StoreLimits::default()).await;
    let kept = store.enqueue(alice, b"kept".to_vec()).await.unwrap();
    let acked = store.enqueue(alice, b"acked".to_vec()).await.unwrap();
    assert_eq!(store.ack(alice, vec![acked]).await.unwrap(), 1);
    store.close().await.unwrap();

    let store = place.open(StoreLimits::default()).await;
    let pending = store.pending(alice, None, 10).await.unwrap();
    assert_eq!(ids(&pending), [kept]);
    assert_eq!(pending[0].envelope, b"kept");
    assert_eq!(store.usage(alice).await.unwrap(), (1, 4));
    // The acknowledged id is not handed out again.
    let next = store.enqueue(alice, b"later".to_vec()).await.unwrap();
    assert!(next > acked, "{next} after {acked}");
    store.close().await.unwrap();
}

async fn quota_by_count_is_enforced_and_freed_by_ack(place: Place) {
    let limits = StoreLimits {
        max_messages_per_recipient: 3,
        ..StoreLimits::default()
    };
    let store = place.open(limits).await;
    let (alice, bob) = (key(1), key(2));
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(store.enqueue(alice, vec![0; 5]).await.unwrap());
    }
    let err = store.enqueue(alice, vec![0; 5]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                messages: 3,
                bytes: 15
            }
        ),
        "{err:?}"
    );
    // Other mailboxes are unaffected; the refusal stored nothing.
    store.enqueue(bob, vec![0; 5]).await.unwrap();
    assert_eq!(store.usage(alice).await.unwrap(), (3, 15));

    store.ack(alice, vec![sent[0]]).await.unwrap();
    store.enqueue(alice, vec![0; 5]).await.unwrap();
    assert_eq!(store.usage(alice).await.unwrap(), (3, 15));
    store.close().await.unwrap();
}

async fn quota_by_bytes_is_enforced_and_freed_by_ack(place: Place) {
    let limits = StoreLimits {
        max_bytes_per_recipient: 100,
        ..StoreLimits::default()
    };
    let store = place.open(limits).await;
    let alice = key(1);
    let first = store.enqueue(alice, vec![0; 60]).await.unwrap();
    let err = store.enqueue(alice, vec![0; 41]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                messages: 1,
                bytes: 60
            }
        ),
        "{err:?}"
    );
    // Exactly at the limit is allowed.
    store.enqueue(alice, vec![0; 40]).await.unwrap();
    // An empty envelope still fits when the bytes are used up.
    store.enqueue(alice, vec![]).await.unwrap();
    assert!(matches!(
        store.enqueue(alice, vec![0; 1]).await,
        Err(StoreError::QuotaExceeded { .. })
    ));

    store.ack(alice, vec![first]).await.unwrap();
    store.enqueue(alice, vec![0; 60]).await.unwrap();
    assert_eq!(store.usage(alice).await.unwrap(), (3, 100));
    store.close().await.unwrap();
}

async fn oversized_envelope_is_refused(place: Place) {
    let limits = StoreLimits {
        max_envelope_len: 10,
        ..StoreLimits::default()
    };
    let store = place.open(limits).await;
    let err = store.enqueue(key(1), vec![0; 11]).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { len: 11, max: 10 }),
        "{err:?}"
    );
    store.enqueue(key(1), vec![0; 10]).await.unwrap();
    assert_eq!(store.usage(key(1)).await.unwrap(), (1, 10));
    store.close().await.unwrap();
}

async fn expire_removes_only_old_messages(place: Place) {
    let limits = StoreLimits {
        expiry: Duration::from_secs(100),
        ..StoreLimits::default()
    };
    let (store, clock) = place.open_at(limits).await;
    let (alice, bob) = (key(1), key(2));

    clock.store(1_000, Ordering::SeqCst);
    let old_a = store.enqueue(alice, vec![1; 10]).await.unwrap();
    let old_b = store.enqueue(bob, vec![2; 20]).await.unwrap();
    clock.store(1_050, Ordering::SeqCst);
    let young = store.enqueue(alice, vec![3; 30]).await.unwrap();
    let pending = store.pending(alice, None, 10).await.unwrap();
    assert_eq!(pending[0].received_at, 1_000);
    assert_eq!(pending[1].received_at, 1_050);

    // Nothing is 100 s old yet.
    assert_eq!(store.expire(1_099).await.unwrap(), 0);
    // Exactly the expiry age: the two old ones go, the young one stays.
    assert_eq!(store.expire(1_100).await.unwrap(), 2);
    assert_eq!(ids(&store.pending(alice, None, 10).await.unwrap()), [young]);
    assert!(store.pending(bob, None, 10).await.unwrap().is_empty());
    assert_eq!(store.usage(alice).await.unwrap(), (1, 30));
    assert_eq!(store.usage(bob).await.unwrap(), (0, 0));
    // Expired ids are gone for ack too.
    assert_eq!(store.ack(alice, vec![old_a]).await.unwrap(), 0);
    assert_eq!(store.ack(bob, vec![old_b]).await.unwrap(), 0);

    assert_eq!(store.expire(1_150).await.unwrap(), 1);
    assert_eq!(store.usage(alice).await.unwrap(), (0, 0));
    assert_eq!(store.expire(u64::MAX).await.unwrap(), 0);
    store.close().await.unwrap();
}

async fn expire_after_reopen_uses_stored_times(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let id = store.enqueue(key(1), vec![0; 8]).await.unwrap();
    let received_at = store.pending(key(1), None, 1).await.unwrap()[0].received_at;
    store.close().await.unwrap();

    let store = place.open(StoreLimits::default()).await;
    let week = StoreLimits::default().expiry.as_secs();
    assert_eq!(store.expire(received_at + week - 1).await.unwrap(), 0);
    assert_eq!(store.expire(received_at + week).await.unwrap(), 1);
    assert_eq!(store.ack(key(1), vec![id]).await.unwrap(), 0);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_are_group_committed() {
    const N: usize = 1_000;
    let dir = TempDir::new().unwrap();
    let store = open(&dir, StoreLimits::default());
    let before = store.commits();

    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            let to = key(u8::try_from(i % 7).unwrap());
            tokio::spawn(async move { store.enqueue(to, vec![0; 100]).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        assert!(ids.insert(task.await.unwrap().unwrap()));
    }
    assert_eq!(ids.len(), N);

    let commits = store.commits() - before;
    assert!(commits >= 1);
    assert!(
        commits < u64::try_from(N).unwrap(),
        "{commits} commits for {N} enqueues: no batching"
    );
    let total: u64 = {
        let mut total = 0;
        for n in 0..7 {
            total += store.usage(key(n)).await.unwrap().0;
        }
        total
    };
    assert_eq!(total, u64::try_from(N).unwrap());
    store.close().await.unwrap();
}

async fn quota_refusals_in_a_batch_do_not_fail_the_others(place: Place) {
    let limits = StoreLimits {
        max_bytes_per_recipient: 40,
        ..StoreLimits::default()
    };
    let store = place.open(limits).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            // Half fill one mailbox 4 bytes at a time; half send empty
            // envelopes to another, which never fills.
            let (to, envelope) = if i % 2 == 0 {
                (key(1), vec![0; 4])
            } else {
                (key(2), Vec::new())
            };
            tokio::spawn(async move { (i % 2, store.enqueue(to, envelope).await) })
        })
        .collect();
    let (mut full_ok, mut full_refused, mut other_ok) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (0, Ok(_)) => full_ok += 1,
            (0, Err(StoreError::QuotaExceeded { .. })) => full_refused += 1,
            (_, Ok(_)) => other_ok += 1,
            (_, Err(err)) => panic!("unexpected {err:?}"),
        }
    }
    assert_eq!((full_ok, full_refused, other_ok), (10, 90, 100));
    assert_eq!(store.usage(key(1)).await.unwrap(), (10, 40));
    assert_eq!(store.usage(key(2)).await.unwrap(), (100, 0));
    store.close().await.unwrap();
}

async fn close_waits_for_queued_writes(place: Place) {
    const N: usize = 200;
    let store = place.open(StoreLimits::default()).await;
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.enqueue(key(1), vec![7; 16]).await })
        })
        .collect();
    // On this single-threaded runtime the tasks run only when we yield; let
    // them all hand their request to the writer and wait for the answer.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let late = store.clone();
    store.close().await.unwrap();

    let mut stored = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => stored += 1,
            Err(StoreError::Closed) => {}
            Err(err) => panic!("unexpected {err:?}"),
        }
    }
    assert_eq!(stored, N, "every queued write was committed");

    // Every later call on a clone says Closed.
    assert!(matches!(
        late.enqueue(key(1), vec![1]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        late.pending(key(1), None, 1).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        late.ack(key(1), vec![1]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        late.ack(key(1), vec![]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(late.expire(0).await, Err(StoreError::Closed)));
    assert!(matches!(late.usage(key(1)).await, Err(StoreError::Closed)));
    assert!(matches!(
        late.clone().close().await,
        Err(StoreError::Closed)
    ));

    // The file was released and holds everything that was answered Ok.
    let store = place.open(StoreLimits::default()).await;
    assert_eq!(store.pending(key(1), None, 1_000).await.unwrap().len(), N);
    assert_eq!(
        store.usage(key(1)).await.unwrap(),
        (u64::try_from(N).unwrap(), u64::try_from(N * 16).unwrap())
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, StoreLimits::default());
    let err = Store::open(&db_path(&dir), StoreLimits::default()).err();
    assert!(matches!(err, Some(StoreError::InUse { .. })), "{err:?}");
    store.close().await.unwrap();
}

/// Writes raw values into a closed store's file, as damage would.
fn tamper(dir: &TempDir, change: impl FnOnce(&redb::WriteTransaction)) {
    let db = Database::create(db_path(dir)).unwrap();
    let txn = db.begin_write().unwrap();
    change(&txn);
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_damaged_message_goes_out_empty_without_blocking_the_rest() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, StoreLimits::default());
    let id = store.enqueue(key(1), b"fine".to_vec()).await.unwrap();
    let next = store.enqueue(key(1), b"next".to_vec()).await.unwrap();
    store.close().await.unwrap();

    tamper(&dir, |txn| {
        let mut messages = txn.open_table(MESSAGES).unwrap();
        messages
            .insert(([1; 32], id), [1u8, 2, 3].as_slice())
            .unwrap();
    });

    let store = open(&dir, StoreLimits::default());
    let pending = store.pending(key(1), None, 10).await.unwrap();
    assert_eq!(ids(&pending), [id, next]);
    assert!(pending[0].envelope.is_empty());
    assert_eq!(pending[1].envelope, b"next");
    // The owner's ack deletes it like any other.
    assert_eq!(store.ack(key(1), vec![id]).await.unwrap(), 1);
    assert_eq!(ids(&store.pending(key(1), None, 10).await.unwrap()), [next]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn damaged_usage_row_is_rebuilt_from_the_messages() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, StoreLimits::default());
    store.enqueue(key(1), vec![0; 5]).await.unwrap();
    store.enqueue(key(1), vec![0; 7]).await.unwrap();
    store.close().await.unwrap();

    tamper(&dir, |txn| {
        let mut usage = txn.open_table(USAGE).unwrap();
        usage.insert([1; 32], [9u8; 3].as_slice()).unwrap();
    });

    let store = open(&dir, StoreLimits::default());
    assert_eq!(store.usage(key(1)).await.unwrap(), (2, 12));
    store.enqueue(key(1), vec![0; 1]).await.unwrap();
    assert_eq!(store.usage(key(1)).await.unwrap(), (3, 13));
    store.close().await.unwrap();

    let db = Database::create(db_path(&dir)).unwrap();
    let txn = db.begin_read().unwrap();
    let usage = txn.open_table(USAGE).unwrap();
    let row = usage.get([1; 32]).unwrap().unwrap();
    assert_eq!(
        Usage::decode(row.value()).unwrap(),
        Usage {
            messages: 3,
            bytes: 13
        }
    );
}

#[tokio::test]
async fn damaged_expiry_entry_does_not_stop_expiry() {
    let dir = TempDir::new().unwrap();
    let limits = StoreLimits {
        expiry: Duration::from_secs(10),
        ..StoreLimits::default()
    };
    let (store, _clock) = open_at(&dir, limits.clone());
    let first = store.enqueue(key(1), vec![0; 5]).await.unwrap();
    let second = store.enqueue(key(2), vec![0; 6]).await.unwrap();
    store.close().await.unwrap();

    tamper(&dir, |txn| {
        let mut expiry = txn.open_table(EXPIRY).unwrap();
        expiry.insert(first, [0u8; 5].as_slice()).unwrap();
    });

    let (store, _clock) = open_at(&dir, limits);
    assert_eq!(store.expire(2_000).await.unwrap(), 1);
    assert!(store.pending(key(2), None, 10).await.unwrap().is_empty());
    // The message behind the damaged entry stays until acknowledged.
    assert_eq!(
        ids(&store.pending(key(1), None, 10).await.unwrap()),
        [first]
    );
    assert_eq!(store.ack(key(1), vec![first]).await.unwrap(), 1);
    assert!(second > first);
    store.close().await.unwrap();
}

#[tokio::test]
async fn unknown_format_is_refused() {
    let dir = TempDir::new().unwrap();
    open(&dir, StoreLimits::default()).close().await.unwrap();
    tamper(&dir, |txn| {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(META_FORMAT, 2u64.to_be_bytes().as_slice())
            .unwrap();
    });
    let err = Store::open(&db_path(&dir), StoreLimits::default()).err();
    assert!(
        matches!(
            err,
            Some(StoreError::UnsupportedFormat {
                found: 2,
                supported: 1
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn id_counter_behind_the_stored_ids_is_moved_on() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, StoreLimits::default());
    let last = store.enqueue(key(1), vec![0]).await.unwrap();
    store.close().await.unwrap();

    tamper(&dir, |txn| {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(super::codec::META_NEXT_ID, 1u64.to_be_bytes().as_slice())
            .unwrap();
    });
    let store = open(&dir, StoreLimits::default());
    assert!(store.enqueue(key(1), vec![0]).await.unwrap() > last);
    assert_eq!(store.usage(key(1)).await.unwrap(), (2, 2));
    store.close().await.unwrap();
}

#[test]
fn expiry_entries_name_their_message() {
    // The index and the message table agree on layout (guards a refactor
    // that changes one and not the other).
    let entry = ExpiryEntry {
        recipient: [3; 32],
        received_at: 5,
    };
    assert_eq!(ExpiryEntry::decode(&entry.encode()).unwrap(), entry);
}

#[test]
fn store_handle_is_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Store>();
}

// ---- blob metadata ----

use std::net::{IpAddr, Ipv4Addr};

use sotto_crypto::file::{sealed_len, FileId, CHUNK_LEN, SEALED_CHUNK_LEN};

use super::codec::{BlobUsage, BLOBS, BLOB_SHARES, BLOB_USAGE, META_BLOB_ACCOUNTING};
use super::{BlobBegun, BlobQuota, QuotaOf, SourceAddr, UploadsFrom};
use crate::space::OutOfSpace;

const QUOTA: BlobQuota = BlobQuota::UNLIMITED;

fn fid(n: u8) -> FileId {
    FileId([n; 16])
}

fn src(n: u8) -> SourceAddr {
    SourceAddr::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)))
}

const FOUR_CHUNKS: u64 = 3 * CHUNK_LEN as u64 + 7;
const CHUNKS_8: u64 = 8 * CHUNK_LEN as u64;
const SEALED: u64 = SEALED_CHUNK_LEN as u64;

async fn begin(
    store: &Store,
    id: FileId,
    uploader: PublicKey,
    to: PublicKey,
    size: u64,
    quota: BlobQuota,
) -> Result<BlobBegun, StoreError> {
    store
        .begin_blob(id, uploader, src(1), to, size, quota)
        .await
}

async fn a_blob_is_begun_resumed_by_its_uploader_only_and_completed(place: Place) {
    let (store, clock) = place.open_at(StoreLimits::default()).await;
    let (alice, bob, mallory) = (key(1), key(2), key(3));

    let begun = begin(&store, fid(1), alice, bob, FOUR_CHUNKS, QUOTA)
        .await
        .unwrap();
    assert!(begun.created);
    let meta = begun.meta;
    assert_eq!((meta.recipient, meta.uploader), (bob, alice));
    assert_eq!((meta.have, meta.complete, meta.chunks()), (0, false, 4));
    assert_eq!((meta.created, meta.updated), (1_000, 1_000));
    assert_eq!(begun.allowed, 2, "a window of two chunks, not the file");
    // Nothing stored yet: the file counts, its bytes do not.
    assert_eq!(store.blob_usage(bob).await.unwrap(), (1, 0));
    assert_eq!(store.blob_share(bob, alice).await.unwrap(), (1, 0));
    assert_eq!(store.blob_usage(alice).await.unwrap(), (0, 0));

    clock.store(1_050, Ordering::SeqCst);
    let window = store.update_blob(fid(1), 2, false).await.unwrap();
    assert_eq!((window.allowed, window.short_of.is_none()), (4, true));
    let meta = store.blob(fid(1)).await.unwrap().unwrap();
    assert_eq!((meta.have, meta.updated, meta.created), (2, 1_050, 1_000));
    assert_eq!(store.blob_usage(bob).await.unwrap(), (1, 2 * SEALED));
    drop(begun.hold);

    // Resuming refreshes nothing: only progress does.
    clock.store(1_060, Ordering::SeqCst);
    let again = begin(&store, fid(1), alice, bob, FOUR_CHUNKS, QUOTA)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!((again.meta.have, again.meta.updated), (2, 1_050));
    assert_eq!(again.allowed, 4);
    // An update that brings nothing new keeps the time too.
    store.update_blob(fid(1), 2, false).await.unwrap();
    assert_eq!(store.blob(fid(1)).await.unwrap().unwrap().updated, 1_050);
    // Anyone or anything else with the same id is a conflict.
    for (uploader, to, size) in [
        (mallory, bob, FOUR_CHUNKS),
        (alice, mallory, FOUR_CHUNKS),
        (alice, bob, FOUR_CHUNKS + 1),
    ] {
        let err = begin(&store, fid(1), uploader, to, size, QUOTA)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BlobConflict), "{err:?}");
    }

    // Impossible updates are refused and change nothing.
    for (have, complete) in [(5, false), (3, true)] {
        let err = store.update_blob(fid(1), have, complete).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidBlobUpdate), "{err:?}");
    }
    assert!(matches!(
        store.update_blob(fid(9), 0, false).await,
        Err(StoreError::NoSuchBlob)
    ));
    store.update_blob(fid(1), 4, true).await.unwrap();
    assert!(matches!(
        store.update_blob(fid(1), 4, true).await,
        Err(StoreError::InvalidBlobUpdate)
    ));
    assert_eq!(
        store.blob_usage(bob).await.unwrap(),
        (1, sealed_len(FOUR_CHUNKS))
    );
    // A complete blob's age is not refreshed by beginning it again.
    clock.store(2_000, Ordering::SeqCst);
    let done = begin(&store, fid(1), alice, bob, FOUR_CHUNKS, QUOTA)
        .await
        .unwrap();
    assert!(done.meta.complete && done.meta.updated == 1_060);
    drop((again, done));
    store.close().await.unwrap();

    // Everything survives a reopen.
    let store = place.open(StoreLimits::default()).await;
    let meta = store.blob(fid(1)).await.unwrap().unwrap();
    assert!(meta.complete);
    assert_eq!(store.blob_ids().await.unwrap(), [fid(1)]);
    store.close().await.unwrap();
}

async fn blob_quotas_count_files_and_stored_bytes_per_recipient(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let (alice, bob, carol) = (key(1), key(2), key(3));
    let quota = BlobQuota {
        max_files: 2,
        max_bytes: sealed_len(FOUR_CHUNKS) + sealed_len(0),
        window: 8,
        ..QUOTA
    };
    let first = begin(&store, fid(1), alice, bob, FOUR_CHUNKS, quota)
        .await
        .unwrap();
    // While its upload holds the whole of it, a second file does not fit.
    let err = begin(&store, fid(2), alice, bob, 1, quota)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BlobQuotaExceeded { of: QuotaOf::Recipient, files: 1, bytes } if bytes == sealed_len(FOUR_CHUNKS)),
        "{err:?}"
    );
    assert!(
        store.blob(fid(2)).await.unwrap().is_none(),
        "nothing recorded"
    );
    store.update_blob(fid(1), 4, true).await.unwrap();
    drop(first);
    let tiny = begin(&store, fid(3), alice, bob, 0, quota).await.unwrap();
    let err = begin(&store, fid(4), carol, bob, 0, quota)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::BlobQuotaExceeded {
            of: QuotaOf::Recipient,
            files: 2,
            ..
        }
    ));
    // Another recipient has a quota of its own.
    let other = begin(&store, fid(4), alice, carol, FOUR_CHUNKS, quota)
        .await
        .unwrap();
    let err = begin(&store, fid(5), alice, bob, u64::MAX, quota)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BlobTooLarge { .. }));
    drop((tiny, other));

    // Deleting gives the quota back.
    assert_eq!(
        store
            .delete_blobs(vec![fid(1)], Some(bob), None)
            .await
            .unwrap(),
        [fid(1)]
    );
    assert_eq!(store.blob_usage(bob).await.unwrap(), (1, 0));
    assert_eq!(store.blob_share(bob, alice).await.unwrap(), (1, 0));
    begin(&store, fid(2), alice, bob, 1, quota).await.unwrap();
    store.close().await.unwrap();
}

async fn a_strangers_begun_uploads_hold_a_window_only_while_they_last(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let (mallory, alice, bob) = (key(3), key(1), key(2));
    // Bob may hold 16 chunks; a window is 2.
    let quota = BlobQuota {
        max_bytes: 16 * SEALED,
        window: 2,
        ..QUOTA
    };
    // Mallory begins two 8-chunk uploads, and again and again.
    let mut held = Vec::new();
    for round in 0..3 {
        held.clear();
        for id in [fid(1), fid(2)] {
            let begun = begin(&store, id, mallory, bob, CHUNKS_8, quota)
                .await
                .unwrap();
            assert_eq!((begun.meta.have, begun.allowed), (0, 2), "round {round}");
            held.push(begun);
        }
    }
    // Two windows held, not two files: alice's 8 chunks fit beside them.
    let hers = begin(&store, fid(3), alice, bob, CHUNKS_8, quota)
        .await
        .unwrap();
    // Three windows of 2 are held: a file of 11 chunks does not fit beside them.
    let eleven = 11 * CHUNK_LEN as u64;
    let err = begin(&store, fid(4), alice, bob, eleven, quota)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BlobQuotaExceeded { .. }),
        "{err:?}"
    );
    // Mallory's uploads end: their windows are free for the very next begin.
    held.clear();
    let second = begin(&store, fid(4), alice, bob, eleven, quota)
        .await
        .unwrap();
    drop((hers, second));
    store.close().await.unwrap();
}

async fn one_uploader_holds_at_most_its_share_of_a_recipients_quota(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let (mallory, alice, bob) = (key(3), key(1), key(2));
    let quota = BlobQuota {
        max_files: 8,
        max_bytes: 32 * SEALED,
        max_files_per_uploader: 2,
        max_bytes_per_uploader: 8 * SEALED,
        window: 8,
        ..QUOTA
    };
    let one = begin(&store, fid(1), mallory, bob, 6 * CHUNK_LEN as u64, quota)
        .await
        .unwrap();
    // 6 chunks held; 3 more would be past mallory's 8.
    let err = begin(&store, fid(2), mallory, bob, 3 * CHUNK_LEN as u64, quota)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::BlobQuotaExceeded {
                of: QuotaOf::Uploader,
                ..
            }
        ),
        "{err:?}"
    );
    let two = begin(&store, fid(2), mallory, bob, 0, quota).await.unwrap();
    let err = begin(&store, fid(3), mallory, bob, 0, quota)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::BlobQuotaExceeded {
                of: QuotaOf::Uploader,
                files: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // Stored bytes count as much as held ones, and survive the upload.
    store.update_blob(fid(1), 6, true).await.unwrap();
    drop((one, two));
    assert!(
        begin(&store, fid(3), mallory, bob, 3 * CHUNK_LEN as u64, quota)
            .await
            .is_err()
    );
    // Others are untouched by mallory's share, and so is mallory elsewhere.
    begin(&store, fid(4), alice, bob, 8 * CHUNK_LEN as u64, quota)
        .await
        .unwrap();
    begin(&store, fid(5), mallory, alice, 8 * CHUNK_LEN as u64, quota)
        .await
        .unwrap();
    store.close().await.unwrap();
}

async fn a_window_moves_on_while_there_is_room_and_says_why_not(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let (alice, carol, bob) = (key(1), key(3), key(2));
    let quota = BlobQuota {
        max_bytes: 10 * SEALED,
        window: 4,
        ..QUOTA
    };
    let up = begin(&store, fid(1), alice, bob, CHUNKS_8, quota)
        .await
        .unwrap();
    assert_eq!(up.allowed, 4);
    // Carol takes what is left beside alice's window.
    let hers = begin(&store, fid(2), carol, bob, 5 * CHUNK_LEN as u64, quota)
        .await
        .unwrap();
    store.update_blob(fid(2), 5, true).await.unwrap();
    drop(hers);
    // Alice's checkpoint at 2: her window would end at 6; one chunk is left.
    let window = store.update_blob(fid(1), 2, false).await.unwrap();
    assert_eq!(window.allowed, 5);
    assert!(
        matches!(
            window.short_of,
            Some(StoreError::BlobQuotaExceeded {
                of: QuotaOf::Recipient,
                ..
            })
        ),
        "{:?}",
        window.short_of
    );
    let window = store.update_blob(fid(1), 5, false).await.unwrap();
    assert_eq!(window.allowed, 5, "no room at all");
    // Bob receives carol's file: alice goes on.
    store
        .delete_blobs(vec![fid(2)], Some(bob), None)
        .await
        .unwrap();
    let window = store.update_blob(fid(1), 5, false).await.unwrap();
    assert_eq!((window.allowed, window.short_of.is_none()), (8, true));
    drop(up);
    // An update with no upload in progress moves nothing.
    assert_eq!(
        store.update_blob(fid(1), 6, false).await.unwrap().allowed,
        6
    );
    store.close().await.unwrap();
}

async fn uploads_in_progress_are_bounded_per_key_and_per_address(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let bob = key(2);
    let quota = BlobQuota {
        max_uploads_per_key: 2,
        max_uploads_per_source: 3,
        ..QUOTA
    };
    let at = |n: u8, who: u8, id: u8| store.begin_blob(fid(id), key(who), src(n), bob, 10, quota);
    let a = at(1, 10, 1).await.unwrap();
    let b = at(1, 10, 2).await.unwrap();
    // A third upload of the same key, from anywhere.
    let err = at(2, 10, 3).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TooManyUploads(UploadsFrom::Key)),
        "{err:?}"
    );
    // Another key from the same address: one more, then the address is full.
    let c = at(1, 11, 4).await.unwrap();
    let err = at(1, 12, 5).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TooManyUploads(UploadsFrom::Address)),
        "{err:?}"
    );
    at(2, 12, 5).await.unwrap();
    // Resuming one's own upload takes its own place, not another.
    let b_again = at(1, 10, 2).await.unwrap();
    drop(b);
    // An upload that ends frees its place.
    drop(a);
    at(1, 12, 6).await.unwrap();
    drop((b_again, c));
    store.close().await.unwrap();
}

async fn the_storage_budget_counts_envelopes_files_and_windows_over_every_recipient(place: Place) {
    let limits = StoreLimits {
        max_stored_bytes: Some(4 * SEALED),
        ..StoreLimits::default()
    };
    let store = place.open(limits.clone()).await;
    assert_eq!(store.budget(), Some(4 * SEALED));
    let alice = key(1);
    let envelope = vec![7u8; SEALED_CHUNK_LEN];
    // One sender, a recipient each time: only the budget stops it.
    let mut stored = 0;
    let refusal = loop {
        match store.enqueue(key(100 + stored), envelope.clone()).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10, "the budget never refused");
    };
    assert_eq!(stored, 4);
    assert!(
        matches!(refusal, StoreError::OutOfSpace(OutOfSpace::Budget { used, budget }) if used == 4 * SEALED && budget == 4 * SEALED),
        "{refusal:?}"
    );
    // Files too, at their whole size when they begin.
    let err = begin(&store, fid(1), alice, key(50), 0, QUOTA)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::OutOfSpace(OutOfSpace::Budget { .. })),
        "{err:?}"
    );
    // A recipient reading its mail frees room for anyone.
    let first = store.pending(key(100), None, 10).await.unwrap();
    assert_eq!(store.ack(key(100), ids(&first)).await.unwrap(), 1);
    let up = begin(&store, fid(1), alice, key(50), CHUNK_LEN as u64, QUOTA)
        .await
        .unwrap();
    // Its window counts while it lasts.
    assert!(store.enqueue(key(60), vec![1]).await.is_err());
    drop(up);
    store.enqueue(key(60), vec![1]).await.unwrap();
    store.close().await.unwrap();

    // The count is the stored data's, read again when the store opens.
    let store = place.open(limits).await;
    let err = store.enqueue(key(61), envelope).await.unwrap_err();
    assert!(
        matches!(err, StoreError::OutOfSpace(OutOfSpace::Budget { used, .. }) if used == 3 * SEALED + 1),
        "{err:?}"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_store_that_reserved_whole_files_is_recounted_from_its_blobs() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, StoreLimits::default());
    let (alice, carol, bob) = (key(1), key(3), key(2));
    let up = begin(&store, fid(1), alice, bob, CHUNKS_8, QUOTA)
        .await
        .unwrap();
    store.update_blob(fid(1), 2, false).await.unwrap();
    let other = begin(&store, fid(2), carol, bob, 0, QUOTA).await.unwrap();
    store.update_blob(fid(2), 1, true).await.unwrap();
    drop((up, other));
    store.close().await.unwrap();
    // What a store of the earlier accounting looks like: whole sizes, no
    // shares, no marker.
    tamper(&dir, |txn| {
        let mut usage = txn.open_table(BLOB_USAGE).unwrap();
        let whole = BlobUsage {
            files: 2,
            bytes: sealed_len(CHUNKS_8) + sealed_len(0),
        };
        usage.insert([2; 32], whole.encode().as_slice()).unwrap();
        txn.delete_table(BLOB_SHARES).unwrap();
        let mut meta = txn.open_table(META).unwrap();
        meta.remove(META_BLOB_ACCOUNTING).unwrap();
    });
    let store = open(&dir, StoreLimits::default());
    assert_eq!(
        store.blob_usage(bob).await.unwrap(),
        (2, 2 * SEALED + sealed_len(0))
    );
    assert_eq!(store.blob_share(bob, alice).await.unwrap(), (1, 2 * SEALED));
    assert_eq!(
        store.blob_share(bob, carol).await.unwrap(),
        (1, sealed_len(0))
    );
    // And deleting gives back exactly what is counted.
    for id in [fid(1), fid(2)] {
        store.delete_blobs(vec![id], Some(bob), None).await.unwrap();
    }
    assert_eq!(store.blob_usage(bob).await.unwrap(), (0, 0));
    assert_eq!(store.blob_share(bob, alice).await.unwrap(), (0, 0));
    store.close().await.unwrap();
}

async fn blobs_are_deleted_only_for_their_recipient_or_by_age(place: Place) {
    let (store, clock) = place.open_at(StoreLimits::default()).await;
    let (alice, bob) = (key(1), key(2));
    let one = begin(&store, fid(1), alice, bob, 10, QUOTA).await.unwrap();
    store.update_blob(fid(1), 1, true).await.unwrap();
    clock.store(1_100, Ordering::SeqCst);
    let two = begin(&store, fid(2), alice, bob, 10, QUOTA).await.unwrap();
    store.update_blob(fid(2), 1, true).await.unwrap();
    drop((one, two));

    // Neither the uploader nor anyone else may delete bob's blob.
    for owner in [alice, key(3)] {
        let deleted = store
            .delete_blobs(vec![fid(1)], Some(owner), None)
            .await
            .unwrap();
        assert!(deleted.is_empty());
    }
    assert_eq!(store.stale_blobs(999).await.unwrap(), []);
    assert_eq!(store.stale_blobs(1_000).await.unwrap(), [fid(1)]);
    // The age is checked again at deletion: a young blob survives even if named.
    let deleted = store
        .delete_blobs(vec![fid(1), fid(2), fid(7)], None, Some(1_000))
        .await
        .unwrap();
    assert_eq!(deleted, [fid(1)]);
    assert_eq!(store.blob_usage(bob).await.unwrap(), (1, sealed_len(10)));
    let deleted = store
        .delete_blobs(vec![fid(2)], Some(bob), None)
        .await
        .unwrap();
    assert_eq!(deleted, [fid(2)]);
    assert_eq!(store.blob_usage(bob).await.unwrap(), (0, 0));
    assert!(store.blob_ids().await.unwrap().is_empty());
    store.close().await.unwrap();
}

#[tokio::test]
async fn damaged_blob_rows_are_not_anyones_and_expire() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, StoreLimits::default());
    let (alice, bob) = (key(1), key(2));
    for (id, size) in [(fid(1), 10), (fid(2), 20)] {
        let begun = begin(&store, id, alice, bob, size, QUOTA).await.unwrap();
        store.update_blob(id, 1, true).await.unwrap();
        drop(begun);
    }
    store.close().await.unwrap();

    tamper(&dir, |txn| {
        let mut blobs = txn.open_table(BLOBS).unwrap();
        blobs.insert([1; 16], [7u8; 5].as_slice()).unwrap();
        let mut usage = txn.open_table(BLOB_USAGE).unwrap();
        usage.insert([2; 32], [7u8; 3].as_slice()).unwrap();
        let mut shares = txn.open_table(BLOB_SHARES).unwrap();
        shares
            .insert(([2; 32], [1; 32]), [7u8; 3].as_slice())
            .unwrap();
    });

    let store = open(&dir, StoreLimits::default());
    assert!(matches!(store.blob(fid(1)).await, Err(StoreError::Corrupt)));
    // The damaged usage rows are rebuilt from the blobs that can be read.
    assert_eq!(store.blob_usage(bob).await.unwrap(), (1, sealed_len(20)));
    assert_eq!(
        store.blob_share(bob, alice).await.unwrap(),
        (1, sealed_len(20))
    );
    assert!(store
        .delete_blobs(vec![fid(1)], Some(bob), None)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        begin(&store, fid(1), alice, bob, 10, QUOTA).await,
        Err(StoreError::Corrupt)
    ));
    // Expiry finds it whatever its time, and removes it.
    assert_eq!(store.stale_blobs(0).await.unwrap(), [fid(1)]);
    assert_eq!(
        store
            .delete_blobs(vec![fid(1)], None, Some(0))
            .await
            .unwrap(),
        [fid(1)]
    );
    assert_eq!(store.blob_ids().await.unwrap(), [fid(2)]);
    // The next change to bob's blobs writes the rebuilt rows back.
    let three = begin(&store, fid(3), alice, bob, 0, QUOTA).await.unwrap();
    store.update_blob(fid(3), 1, true).await.unwrap();
    drop(three);
    store.close().await.unwrap();

    let db = Database::create(db_path(&dir)).unwrap();
    let txn = db.begin_read().unwrap();
    let want = BlobUsage {
        files: 2,
        bytes: sealed_len(20) + sealed_len(0),
    };
    let usage = txn.open_table(BLOB_USAGE).unwrap();
    let row = usage.get([2; 32]).unwrap().unwrap();
    assert_eq!(BlobUsage::decode(row.value()).unwrap(), want);
    let shares = txn.open_table(BLOB_SHARES).unwrap();
    let row = shares.get(([2; 32], [1; 32])).unwrap().unwrap();
    assert_eq!(BlobUsage::decode(row.value()).unwrap(), want);
}

async fn a_live_feed_that_overflows_catches_up_from_the_store_in_order(place: Place) {
    let store = place.open(StoreLimits::default()).await;
    let bob = key(2);
    let mut feed = store.subscribe(bob);
    // A new feed starts lagged: the first read comes from the store.
    let first = feed.take();
    assert!(first.lagged && first.pushed.is_empty());
    let settled = feed.settled();
    assert!(store.pending(bob, None, 10).await.unwrap().is_empty());
    assert!(feed.caught_up(settled), "nothing was in flight");

    let total = super::live::FEED_DEPTH + 10;
    let mut sent = Vec::new();
    for i in 0..total {
        let n = u32::try_from(i).unwrap();
        sent.push(store.enqueue(bob, n.to_le_bytes().to_vec()).await.unwrap());
    }
    let taken = feed.take();
    assert!(taken.lagged, "more than the feed holds was pushed");
    let pushed: Vec<u64> = taken.pushed.iter().map(|s| s.id).collect();
    assert_eq!(pushed, sent[..super::live::FEED_DEPTH]);
    assert_eq!(taken.pushed[3].envelope, 3u32.to_le_bytes());

    // Every write above is committed, so the store has the rest.
    let settled = feed.settled();
    let last = *pushed.last().unwrap();
    let rest = store.pending(bob, Some(last), 100).await.unwrap();
    assert_eq!(ids(&rest), sent[super::live::FEED_DEPTH..]);
    assert!(feed.caught_up(settled));

    // Live again: the next envelope is pushed, and an ack deletes it even if
    // it is applied before anything else is committed.
    let committing = store.enqueue_begin(bob, b"next".to_vec()).await.unwrap();
    let next = loop {
        let taken = feed.take();
        assert!(!taken.lagged);
        if let Some(s) = taken.pushed.front() {
            break s.clone();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert_eq!(next.envelope, b"next");
    assert_eq!(store.ack(bob, vec![next.id]).await.unwrap(), 1);
    assert_eq!(committing.await.unwrap(), next.id);
    let left = store.pending(bob, Some(last), 1000).await.unwrap();
    assert_eq!(ids(&left), sent[super::live::FEED_DEPTH..]);
}

/// A store whose batches start at most every `interval`, so that requests
/// made one after another land in the same batch.
fn open_paced(dir: &TempDir, interval: Duration) -> Store {
    Store::open_with(
        &db_path(dir),
        StoreLimits::default(),
        Arc::new(super::unix_now),
        interval,
    )
    .unwrap()
}

/// A live feed of `to`'s empty mailbox, caught up (a new feed starts lagged).
async fn live_feed(store: &Store, to: PublicKey) -> super::Feed {
    let mut feed = store.subscribe(to);
    assert!(feed.take().lagged);
    let settled = feed.settled();
    assert!(store.pending(to, None, 1).await.unwrap().is_empty());
    assert!(feed.caught_up(settled));
    feed
}

/// Waits until the feed has been handed `n` envelopes and returns them.
async fn pushed_n(feed: &super::Feed, n: usize) -> Vec<super::Stored> {
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(feed.take().pushed);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(got.len(), n, "more was pushed than expected");
    got
}

/// Waits until the feed has been handed one envelope and returns it.
async fn pushed(feed: &super::Feed) -> super::Stored {
    pushed_n(feed, 1).await.remove(0)
}

#[tokio::test]
async fn an_ack_before_the_write_takes_the_envelope_out_and_keeps_its_id_used() {
    let dir = TempDir::new().unwrap();
    let store = open_paced(&dir, Duration::from_secs(2));
    let (bob, carol) = (key(2), key(3));
    let feed = live_feed(&store, bob).await;
    // The first batch starts at once and starts the interval.
    let kept = store.enqueue(bob, b"kept".to_vec()).await.unwrap();
    assert_eq!(pushed(&feed).await.id, kept);
    let commits = store.commits();

    // These wait for the next batch: an ack of one by its recipient takes it
    // out, one by somebody else does not.
    let first = store.enqueue_begin(bob, b"first".to_vec()).await.unwrap();
    let second = store.enqueue_begin(bob, b"second".to_vec()).await.unwrap();
    let [a, b]: [super::Stored; 2] = pushed_n(&feed, 2).await.try_into().unwrap();
    assert_eq!(
        (a.envelope.as_slice(), b.envelope.as_slice()),
        (&b"first"[..], &b"second"[..])
    );
    let by_carol = store.ack_begin(carol, vec![a.id, b.id]).await.unwrap();
    let by_bob = store.ack_begin(bob, vec![a.id]).await.unwrap();
    assert_eq!(by_carol.await.unwrap(), 0);
    assert_eq!(
        by_bob.await.unwrap(),
        1,
        "the taken-out envelope counts as deleted"
    );
    // Its sender hears "stored" with the same commit as everyone else.
    assert_eq!(first.await.unwrap(), a.id);
    assert_eq!(second.await.unwrap(), b.id);
    assert_eq!(store.commits(), commits + 1);

    let left = store.pending(bob, None, 10).await.unwrap();
    assert_eq!(ids(&left), vec![kept, b.id]);
    let len = |s: &[u8]| u64::try_from(s.len()).unwrap();
    assert_eq!(
        store.usage(bob).await.unwrap(),
        (2, len(b"kept") + len(b"second"))
    );
    // Acknowledging it again finds nothing.
    assert_eq!(store.ack(bob, vec![a.id]).await.unwrap(), 0);
    drop(feed);
    store.close().await.unwrap();

    // The id counter written with that batch covers the taken-out id.
    let store = open(&dir, StoreLimits::default());
    let later = store.enqueue(bob, b"later".to_vec()).await.unwrap();
    assert!(later > b.id);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_whose_envelopes_were_all_acknowledged_still_records_their_ids() {
    let dir = TempDir::new().unwrap();
    let store = open_paced(&dir, Duration::from_secs(2));
    let bob = key(2);
    let feed = live_feed(&store, bob).await;
    store
        .enqueue(bob, b"start the interval".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.ack(bob, vec![pushed(&feed).await.id]).await.unwrap(),
        1
    );

    let commits = store.commits();
    let sent = store.enqueue_begin(bob, b"gone".to_vec()).await.unwrap();
    let gone = pushed(&feed).await;
    assert_eq!(store.ack(bob, vec![gone.id]).await.unwrap(), 1);
    assert_eq!(sent.await.unwrap(), gone.id);
    assert_eq!(store.commits(), commits + 1, "the id counter was committed");
    assert!(store.pending(bob, None, 10).await.unwrap().is_empty());
    assert_eq!(store.usage(bob).await.unwrap(), (0, 0));
    drop(feed);
    store.close().await.unwrap();

    let db = Database::create(db_path(&dir)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let stored = meta.get(super::codec::META_NEXT_ID).unwrap().unwrap();
    let next_id = u64::from_be_bytes(stored.value().try_into().unwrap());
    assert!(
        next_id > gone.id,
        "next id {next_id} would give {} again",
        gone.id
    );
}

/// Two relay nodes on one three-server cluster with three replicas: an
/// envelope stored through one reaches a live feed on the other, in order
/// and once, and the other's mailbox read finds it; an ack through either
/// deletes it for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_nodes_share_mailboxes_and_live_feeds() {
    let dir = TempDir::new().unwrap();
    let Some(cluster) =
        crate::nats_cluster::NatsCluster::start(&dir.path().join("nats"), 3).unwrap()
    else {
        return;
    };
    let config = super::JetStreamConfig {
        replicas: 3,
        ..jetstream_config(&cluster)
    };
    let connect = |n: &str| {
        let node_dir = dir.path().join(n);
        std::fs::create_dir_all(&node_dir).unwrap();
        let config = config.clone();
        async move {
            Store::connect_jetstream(&config, StoreLimits::default(), &node_dir)
                .await
                .unwrap()
        }
    };
    let (one, two) = (connect("one").await, connect("two").await);
    let bob = key(2);
    let feed = live_feed(&two, bob).await;
    let mut sent = Vec::new();
    for i in 0..5u8 {
        sent.push(one.enqueue(bob, vec![i; 3]).await.unwrap());
    }
    let got = pushed_n(&feed, 5).await;
    assert_eq!(ids(&got), sent);
    assert_eq!(got[4].envelope, [4; 3]);
    assert_eq!(ids(&two.pending(bob, None, 10).await.unwrap()), sent);
    assert_eq!(two.usage(bob).await.unwrap(), (5, 15));

    assert_eq!(two.ack(bob, sent[..2].to_vec()).await.unwrap(), 2);
    assert_eq!(one.ack(bob, sent[..3].to_vec()).await.unwrap(), 1);
    assert_eq!(ids(&one.pending(bob, None, 10).await.unwrap()), &sent[3..]);
    assert_eq!(one.usage(bob).await.unwrap(), (2, 6));
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// Two nodes share one recipient's file quota: the window an upload holds
/// through one node counts against a begin through the other, and once that
/// upload ends its room comes back for the other node too (its node frees
/// the hold within a sweep, without another begin through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_nodes_share_file_quotas_and_windows() {
    let Some(place) = Place::jetstream() else {
        return;
    };
    let (one, two) = (
        place.open(StoreLimits::default()).await,
        place.open(StoreLimits::default()).await,
    );
    let (alice, carol, bob) = (key(1), key(3), key(2));
    let quota = BlobQuota {
        max_bytes: 10 * SEALED,
        window: 4,
        ..QUOTA
    };
    let five = 5 * CHUNK_LEN as u64;
    let up = begin(&one, fid(1), alice, bob, CHUNKS_8, quota)
        .await
        .unwrap();
    one.update_blob(fid(1), 2, false).await.unwrap();
    // Through node one, 2 chunks are stored and 4 more held: 6 of bob's 10.
    let err = begin(&two, fid(2), carol, bob, five, quota)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BlobQuotaExceeded { of: QuotaOf::Recipient, files: 1, bytes } if bytes == 6 * SEALED),
        "{err:?}"
    );
    assert_eq!(two.blob_usage(bob).await.unwrap(), (1, 2 * SEALED));
    // Alice's upload through node one ends: node two sees its room back.
    drop(up);
    let mut tries = 0;
    let hers = loop {
        match begin(&two, fid(2), carol, bob, five, quota).await {
            Ok(begun) => break begun,
            Err(StoreError::BlobQuotaExceeded { .. }) => {
                tries += 1;
                assert!(tries < 400, "the ended upload's room never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    drop(hers);
    // Alice goes on through node two from where node one left her.
    let resumed = begin(&two, fid(1), alice, bob, CHUNKS_8, quota)
        .await
        .unwrap();
    assert_eq!(
        (resumed.created, resumed.meta.have, resumed.allowed),
        (false, 2, 6)
    );
    two.update_blob(fid(1), 8, true).await.unwrap();
    assert!(one.blob(fid(1)).await.unwrap().unwrap().complete);
    assert_eq!(one.blob_usage(bob).await.unwrap(), (2, 8 * SEALED));
    assert_eq!(
        one.delete_blobs(vec![fid(1), fid(2)], Some(bob), None)
            .await
            .unwrap(),
        [fid(1), fid(2)]
    );
    assert_eq!(two.blob_usage(bob).await.unwrap(), (0, 0));
    drop(resumed);
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// A node that died between reserving room for an envelope and publishing
/// it left the reservation counted: the recount gives it back, but only once
/// the entry has been left alone long enough that no envelope can follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_left_by_a_dead_node_is_recounted_away() {
    let Some(place) = Place::jetstream() else {
        return;
    };
    let limits = StoreLimits {
        max_messages_per_recipient: 2,
        ..StoreLimits::default()
    };
    let store = place.open(limits).await;
    let bob = key(2);
    store.enqueue(bob, vec![1; 10]).await.unwrap();
    let super::Backend::JetStream(js) = &store.0 else {
        unreachable!("a JetStream place");
    };
    js.change_usage(super::jetstream::hashed(&bob), |u| {
        Ok(Usage {
            messages: u.messages + 1,
            bytes: u.bytes + 10,
        })
    })
    .await
    .unwrap();
    assert!(matches!(
        store.enqueue(bob, vec![2; 10]).await,
        Err(StoreError::QuotaExceeded { messages: 2, .. })
    ));
    assert_eq!(
        js.recount_usage(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert_eq!(js.recount_usage(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(store.usage(bob).await.unwrap(), (1, 10));
    store.enqueue(bob, vec![2; 11]).await.unwrap();
    assert_eq!(js.recount_usage(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(store.usage(bob).await.unwrap(), (2, 21));
    store.close().await.unwrap();
}

/// The whole cluster stopped and started again: meanwhile a send is told
/// the store is unavailable (so its sender tries again); afterwards the same
/// store handle works again without being reopened, and everything stored
/// before is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cluster_is_unavailable_then_recovers_without_a_reopen() {
    let Some(mut place) = Place::jetstream() else {
        return;
    };
    let store = place.open(StoreLimits::default()).await;
    let bob = key(2);
    let kept = store.enqueue(bob, b"before".to_vec()).await.unwrap();

    let nats = place.nats.as_mut().unwrap();
    nats.kill(0);
    match store.enqueue(bob, b"meanwhile".to_vec()).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    nats.restart(0).unwrap();
    nats.wait_ready().unwrap();

    // The client reconnects by itself; the first tries may still fail.
    let after = loop {
        match store.enqueue(bob, b"after".to_vec()).await {
            Ok(id) => break id,
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    let pending = store.pending(bob, None, 10).await.unwrap();
    assert_eq!(pending.first().map(|s| s.id), Some(kept));
    assert_eq!(pending.last().map(|s| s.id), Some(after));
    store.close().await.unwrap();
}

/// Runs each shared test against one backend's [`Place`] (`None`: skipped).
macro_rules! suite {
    ($place:expr; $( #[$attr:meta] $name:ident ),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                if let Some(place) = $place {
                    super::$name(place).await;
                }
            }
        )*
    };
}

/// Every test above that states a promise of the interface, not of one
/// backend, for each backend.
macro_rules! shared_suite {
    ($place:expr) => {
        suite! { $place;
            #[tokio::test] enqueue_pending_ack_round_trip_keeps_order,
            #[tokio::test] ack_by_another_owner_deletes_nothing,
            #[tokio::test] data_and_ids_survive_close_and_reopen,
            #[tokio::test] quota_by_count_is_enforced_and_freed_by_ack,
            #[tokio::test] quota_by_bytes_is_enforced_and_freed_by_ack,
            #[tokio::test] oversized_envelope_is_refused,
            #[tokio::test] expire_removes_only_old_messages,
            #[tokio::test] expire_after_reopen_uses_stored_times,
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)] quota_refusals_in_a_batch_do_not_fail_the_others,
            #[tokio::test(flavor = "current_thread")] close_waits_for_queued_writes,
            #[tokio::test] a_registered_token_is_what_the_next_lookup_sees_though_the_old_was_cached,
            #[tokio::test] one_uploader_holds_at_most_its_share_of_a_recipients_quota,
            #[tokio::test] a_blob_is_begun_resumed_by_its_uploader_only_and_completed,
            #[tokio::test] blob_quotas_count_files_and_stored_bytes_per_recipient,
            #[tokio::test] a_strangers_begun_uploads_hold_a_window_only_while_they_last,
            #[tokio::test] a_window_moves_on_while_there_is_room_and_says_why_not,
            #[tokio::test] uploads_in_progress_are_bounded_per_key_and_per_address,
            #[tokio::test] blobs_are_deleted_only_for_their_recipient_or_by_age,
        }
    };
}

/// What only the embedded backend keeps: a storage budget over the whole
/// relay (the JetStream backend leaves that to the cluster's own limits),
/// and live feeds pushed before a commit.
macro_rules! embedded_suite {
    ($place:expr) => {
        suite! { $place;
            #[tokio::test] the_storage_budget_counts_envelopes_files_and_windows_over_every_recipient,
            #[tokio::test] a_live_feed_that_overflows_catches_up_from_the_store_in_order,
        }
    };
}

mod embedded {
    use super::Place;

    shared_suite!(Some(Place::embedded()));
    embedded_suite!(Some(Place::embedded()));
}

mod jetstream {
    use super::Place;

    shared_suite!(Place::jetstream());
}
