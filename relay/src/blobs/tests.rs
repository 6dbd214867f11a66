//! The file cache on real files and a real store: claims, resumption after
//! damage, deletion, expiry.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sotto_crypto::file::{sealed_len, FileId, CHUNK_LEN, SEALED_CHUNK_LEN};
use sotto_keys::PublicKey;
use tempfile::TempDir;

use super::*;
use crate::store::{Store, StoreLimits};

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn open(dir: &TempDir, limits: BlobLimits) -> (Store, Blobs) {
    let store = Store::open(&dir.path().join("m.redb"), StoreLimits::default()).unwrap();
    let blobs = Blobs::open(dir.path(), store.clone(), limits).unwrap();
    (store, blobs)
}

async fn begin(blobs: &Blobs, id: FileId, size: u64) -> BlobWriter {
    match blobs.begin(key(1), LOCAL, id, key(2), size).await.unwrap() {
        Begun::Upload(writer) => writer,
        Begun::Complete { .. } => panic!("complete already"),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn file_names_are_exactly_the_hex_of_an_id() {
    let id = FileId::random();
    assert_eq!(parse_id(id.to_string().as_ref()), Some(id));
    let hex = id.to_string();
    let tmp = format!("{hex}.tmp");
    let (upper, non_hex) = ("AB".repeat(16), "0g".repeat(16));
    for name in [&upper, "README", "", &hex[1..], &tmp, &non_hex] {
        assert_eq!(parse_id(name.as_ref()), None, "{name}");
    }
}

#[test]
fn the_durable_prefix_ends_at_the_file_end() {
    let size = 3 * CHUNK_LEN as u64 + 7;
    assert_eq!(sealed_prefix_len(size, 0), 0);
    assert_eq!(sealed_prefix_len(size, 3), 3 * SEALED_CHUNK_LEN as u64);
    // All four chunks: the last is short, so not 4 full chunks.
    assert_eq!(sealed_prefix_len(size, 4), sealed_len(size));
    assert_eq!(sealed_prefix_len(0, 1), sealed_len(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_claim_asks_the_holder_to_stop_and_waits_for_it() {
    let claims = Arc::new(Claims::default());
    let id = FileId::random();
    let first = claims.claim(id).await.unwrap();
    assert!(claims.try_claim(id).is_none(), "held");
    assert!(!first.token.is_cancelled());

    let waiting = tokio::spawn({
        let claims = Arc::clone(&claims);
        async move { claims.claim(id).await.map(|_| ()) }
    });
    // The holder is told, and the newcomer waits until it lets go.
    first.token.cancelled().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    drop(first);
    waiting.await.unwrap().unwrap();
    assert!(
        lock(&claims.slots).is_empty(),
        "no entry outlives its claims"
    );

    // Unrelated ids do not interfere.
    let a = claims.claim(FileId::random()).await.unwrap();
    let b = claims.try_claim(FileId::random()).unwrap();
    assert!(!a.token.is_cancelled());
    drop((a, b));
    assert!(lock(&claims.slots).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_several_waiting_claimants_the_newest_wins() {
    let claims = Arc::new(Claims::default());
    let id = FileId::random();
    let holder = claims.claim(id).await.unwrap();
    let second = tokio::spawn({
        let claims = Arc::clone(&claims);
        async move { claims.claim(id).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = tokio::spawn({
        let claims = Arc::clone(&claims);
        async move {
            let claim = claims.claim(id).await?;
            Ok::<_, BlobError>(claim.token.is_cancelled())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(holder);
    assert!(matches!(second.await.unwrap(), Err(BlobError::Superseded)));
    assert!(!third.await.unwrap().unwrap());
    assert!(lock(&claims.slots).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_that_is_dropped_cleans_up() {
    let claims = Arc::new(Claims::default());
    let id = FileId::random();
    let holder = claims.claim(id).await.unwrap();
    let waiting = tokio::spawn({
        let claims = Arc::clone(&claims);
        async move { claims.claim(id).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    waiting.abort();
    let _ = waiting.await;
    drop(holder);
    assert!(lock(&claims.slots).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_at_its_checkpoint_with_the_tail_cut_off() {
    let dir = TempDir::new().unwrap();
    let (store, blobs) = open(&dir, BlobLimits::default());
    let id = FileId::random();
    let size = 5 * CHUNK_LEN as u64 + 1;
    let writer = begin(&blobs, id, size).await;
    assert_eq!(writer.have(), 0);
    let path = blobs.path(id);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for index in 0..3 {
        writer
            .write(index, vec![index as u8; SEALED_CHUNK_LEN])
            .await
            .unwrap();
    }
    writer.checkpoint(2, false).await.unwrap();
    drop(writer);

    // Chunk 2 was written but never checkpointed: it goes.
    let writer = begin(&blobs, id, size).await;
    assert_eq!(writer.have(), 2);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        2 * SEALED_CHUNK_LEN as u64
    );
    for index in 2..6 {
        let len = sotto_crypto::file::sealed_chunk_len(size, index).unwrap();
        writer.write(index, vec![index as u8; len]).await.unwrap();
    }
    writer.checkpoint(6, true).await.unwrap();
    drop(writer);
    assert!(matches!(
        blobs.begin(key(1), LOCAL, id, key(2), size).await.unwrap(),
        Begun::Complete { chunks: 6 }
    ));

    // Only the recipient reads it, and it reads back what was written.
    assert!(matches!(
        blobs.open_download(key(1), id).await,
        Err(BlobError::NotFound)
    ));
    let reader = blobs.open_download(key(2), id).await.unwrap();
    let read = reader.read(4, 10).await.unwrap();
    assert!(!read.damaged);
    assert_eq!(read.chunks.len(), 2);
    assert_eq!(read.chunks[0], vec![4; SEALED_CHUNK_LEN]);
    assert_eq!(read.chunks[1], vec![5; 17]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_file_is_gone_resumes_from_nothing() {
    let dir = TempDir::new().unwrap();
    let (store, blobs) = open(&dir, BlobLimits::default());
    let id = FileId::random();
    let size = 4 * CHUNK_LEN as u64;
    let writer = begin(&blobs, id, size).await;
    writer.write(0, vec![1; SEALED_CHUNK_LEN]).await.unwrap();
    writer.checkpoint(1, false).await.unwrap();
    drop(writer);
    std::fs::remove_file(blobs.path(id)).unwrap();

    let writer = begin(&blobs, id, size).await;
    assert_eq!(writer.have(), 0);
    assert_eq!(store.blob(id).await.unwrap().unwrap().have, 0);
    assert!(blobs.path(id).exists());
    drop(writer);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_stops_an_upload_and_frees_everything() {
    let dir = TempDir::new().unwrap();
    let (store, blobs) = open(&dir, BlobLimits::default());
    let id = FileId::random();
    let writer = begin(&blobs, id, 3 * CHUNK_LEN as u64).await;
    writer.write(0, vec![1; SEALED_CHUNK_LEN]).await.unwrap();

    // Not the recipient: nothing happens, the upload is not disturbed.
    assert!(!blobs.delete(key(1), id).await.unwrap());
    assert!(!blobs.delete(key(2), FileId::random()).await.unwrap());

    // The recipient: the upload is asked to stop, and deletion waits for it.
    let deleting = tokio::spawn({
        let blobs = blobs.clone();
        async move { blobs.delete(key(2), id).await }
    });
    writer.superseded().await;
    writer.checkpoint(1, false).await.unwrap();
    drop(writer);
    assert!(deleting.await.unwrap().unwrap());
    assert!(!blobs.path(id).exists());
    assert!(store.blob(id).await.unwrap().is_none());
    assert_eq!(store.blob_usage(key(2)).await.unwrap(), (0, 0));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_takes_old_blobs_but_not_ones_in_use() {
    let dir = TempDir::new().unwrap();
    let limits = BlobLimits {
        expiry: Duration::from_secs(100),
        ..BlobLimits::default()
    };
    let (store, blobs) = open(&dir, limits);
    let (idle, busy) = (FileId::random(), FileId::random());
    drop(begin(&blobs, idle, 10).await);
    let writer = begin(&blobs, busy, 10).await;
    let now = unix_now();
    assert_eq!(blobs.expire(now).await.unwrap(), 0);
    assert_eq!(blobs.expire(now + 101).await.unwrap(), 1);
    assert!(!blobs.path(idle).exists());
    assert!(blobs.path(busy).exists());
    drop(writer);
    assert_eq!(blobs.expire(now + 101).await.unwrap(), 1);
    assert!(store.blob_ids().await.unwrap().is_empty());
    assert_eq!(std::fs::read_dir(blobs.dir()).unwrap().count(), 0);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_past_the_limit_are_refused_before_anything_is_stored() {
    let dir = TempDir::new().unwrap();
    let limits = BlobLimits {
        max_file_size: 1000,
        ..BlobLimits::default()
    };
    let (store, blobs) = open(&dir, limits);
    let id = FileId::random();
    assert!(matches!(
        blobs.begin(key(1), LOCAL, id, key(2), 1001).await,
        Err(BlobError::TooLarge {
            size: 1001,
            max: 1000
        })
    ));
    assert!(store.blob(id).await.unwrap().is_none());
    assert_eq!(std::fs::read_dir(blobs.dir()).unwrap().count(), 0);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_holds_room_only_while_its_writer_lives() {
    let dir = TempDir::new().unwrap();
    let limits = BlobLimits {
        max_file_size: 8 * CHUNK_LEN as u64,
        // Bob holds 8 chunks; a window is 2 × 2 chunks; one uploader may hold all.
        max_bytes_per_recipient: 8 * SEALED_CHUNK_LEN as u64,
        uploader_share_percent: 100,
        checkpoint_bytes: 2 * CHUNK_LEN as u64,
        ..BlobLimits::default()
    };
    let (store, blobs) = open(&dir, limits);
    let (mallory, alice, bob) = (key(3), key(1), key(2));
    let size = 8 * CHUNK_LEN as u64;
    let begin_as = |who: PublicKey, id: FileId, size: u64| {
        let blobs = blobs.clone();
        async move {
            match blobs.begin(who, LOCAL, id, bob, size).await? {
                Begun::Upload(writer) => Ok(writer),
                Begun::Complete { .. } => panic!("complete already"),
            }
        }
    };
    let grabbed = begin_as(mallory, FileId::random(), size).await.unwrap();
    assert_eq!(grabbed.allowed(), 4);
    // Mallory's window leaves 4 chunks: alice's 8 do not fit while it lasts.
    let hers = FileId::random();
    assert!(matches!(
        begin_as(alice, hers, size).await,
        Err(BlobError::QuotaExceeded { .. })
    ));
    drop(grabbed);
    let writer = begin_as(alice, hers, size).await.unwrap();
    for index in 0..4 {
        writer
            .write(index, vec![1; SEALED_CHUNK_LEN])
            .await
            .unwrap();
    }
    // Each checkpoint moves the window on.
    assert_eq!(writer.checkpoint(2, false).await.unwrap().allowed, 6);
    assert_eq!(writer.checkpoint(4, false).await.unwrap().allowed, 8);
    assert_eq!(
        store.blob_usage(bob).await.unwrap().1,
        4 * SEALED_CHUNK_LEN as u64
    );
    drop(writer);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_upload_leaves_nothing_and_an_idle_resume_takes_nothing_over() {
    let dir = TempDir::new().unwrap();
    let (store, blobs) = open(&dir, BlobLimits::default());
    let id = FileId::random();
    let writer = begin(&blobs, id, 3 * CHUNK_LEN as u64).await;
    // While it is in progress, an idle resume from elsewhere is refused.
    assert!(matches!(
        blobs
            .resume_idle(key(1), LOCAL, id, key(2), 3 * CHUNK_LEN as u64)
            .await,
        Err(BlobError::Superseded)
    ));
    writer.forget().await.unwrap();
    drop(writer);
    assert!(store.blob(id).await.unwrap().is_none());
    assert!(!blobs.path(id).exists());
    assert_eq!(store.blob_usage(key(2)).await.unwrap(), (0, 0));
    // Beginning again starts afresh.
    let again = blobs
        .resume_idle(key(1), LOCAL, id, key(2), 3 * CHUNK_LEN as u64)
        .await
        .unwrap();
    assert!(matches!(again, Begun::Upload(ref w) if w.have() == 0));
    drop(again);
    store.close().await.unwrap();
}

#[test]
fn the_default_share_still_takes_the_largest_file() {
    let limits = BlobLimits::default();
    let quota = limits.quota();
    assert_eq!(
        quota.max_bytes_per_uploader,
        sealed_len(limits.max_file_size)
    );
    let small_file = BlobLimits {
        max_file_size: 1 << 20,
        ..BlobLimits::default()
    };
    assert_eq!(
        small_file.quota().max_bytes_per_uploader,
        8 << 30,
        "a quarter"
    );
    assert_eq!(quota.max_files_per_uploader, 250);
    assert_eq!(quota.window, 512);
    let tiny = BlobLimits {
        max_files_per_recipient: 1,
        uploader_share_percent: 25,
        ..BlobLimits::default()
    };
    assert_eq!(tiny.quota().max_files_per_uploader, 1, "never nothing");
}
