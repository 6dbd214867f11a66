//! The file drop against a real relay in process: raw link clients upload
//! real sealed chunks (`ChunkCipher`), download them and open them again.
//!
//! Every test starts its own relay on 127.0.0.1:0 with a temporary data dir
//! and stops it with a oneshot, so restarts on the same data are real.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_bytes::ByteBuf;
use sotto_crypto::file::{
    chunk_count, sealed_len, ChunkCipher, FileId, FileKey, CHUNK_LEN, SEALED_CHUNK_LEN,
};
use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_keys::{PublicKey, RelayKey, SecretKey};
use sotto_relay::blobs::BLOBS_DIR;
use sotto_relay::{Maintenance, Relay, RelayConfig};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &Path) -> RelayConfig {
    let mut config = RelayConfig::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config
}

struct Running {
    addr: SocketAddr,
    key: RelayKey,
    maintenance: Maintenance,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), sotto_relay::RelayError>>,
}

async fn start(config: RelayConfig) -> Running {
    let relay = Relay::bind(config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    Running {
        addr: relay.local_addr().unwrap(),
        key: relay.public_key(),
        maintenance: relay.maintenance(),
        stop,
        task: tokio::spawn(relay.run(async {
            let _ = stopped.await;
        })),
    }
}

impl Running {
    async fn client(&self, me: &SecretKey) -> Client {
        let (r, w) = TcpStream::connect(self.addr).await.unwrap().into_split();
        let (r, w, _) = link::connect(r, w, me, &self.key).await.unwrap();
        Client { r, w }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the relay stops")
            .unwrap()
            .expect("a clean shutdown");
    }
}

struct Client {
    r: LinkReader<OwnedReadHalf>,
    w: LinkWriter<OwnedWriteHalf>,
}

impl Client {
    async fn send(&mut self, msg: ClientMsg) {
        self.w.send(&msg).await.unwrap();
        self.w.flush().await.unwrap();
    }

    /// The next message; `None` once the relay has closed the connection.
    async fn recv(&mut self) -> Option<RelayMsg> {
        tokio::time::timeout(WAIT, self.r.recv::<RelayMsg>())
            .await
            .expect("the relay answers")
            .unwrap_or(None)
    }

    /// The next message that is not an `UploadProgress`.
    async fn answer(&mut self) -> RelayMsg {
        loop {
            match self.recv().await {
                Some(RelayMsg::UploadProgress { .. }) => continue,
                Some(msg) => return msg,
                None => panic!("the relay closed the connection"),
            }
        }
    }

    /// Hangs up and waits until the relay has finished with the connection
    /// (it closes its side only after its uploads have let go of their files).
    async fn close(mut self) {
        self.w.shutdown().await.unwrap();
        while self.recv().await.is_some() {}
    }

    async fn ping(&mut self) {
        self.send(ClientMsg::Ping).await;
        assert_eq!(self.answer().await, RelayMsg::Pong);
    }

    async fn begin(&mut self, req: u32, file: &Sealed, to: PublicKey) -> RelayMsg {
        self.send(ClientMsg::UploadBegin {
            req,
            file_id: file.id,
            to,
            size: file.size,
        })
        .await;
        self.answer().await
    }

    /// Begins (or resumes) and returns the chunk to continue at.
    async fn begin_ok(&mut self, file: &Sealed, to: PublicKey) -> u64 {
        match self.begin(1, file, to).await {
            RelayMsg::UploadState {
                req: 1,
                file_id,
                have,
            } if file_id == file.id => have,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends chunks `range` without waiting for anything.
    async fn chunks(&mut self, file: &Sealed, range: std::ops::Range<u64>) {
        for index in range {
            self.w
                .send(&ClientMsg::UploadChunk {
                    file_id: file.id,
                    index,
                    data: ByteBuf::from(file.chunks[index as usize].clone()),
                })
                .await
                .unwrap();
        }
        self.w.flush().await.unwrap();
    }

    async fn end(&mut self, req: u32, file: &Sealed) -> RelayMsg {
        self.send(ClientMsg::UploadEnd {
            req,
            file_id: file.id,
        })
        .await;
        self.answer().await
    }

    /// A whole upload, resuming where the relay says.
    async fn upload(&mut self, file: &Sealed, to: PublicKey) {
        let have = self.begin_ok(file, to).await;
        self.chunks(file, have..file.chunks.len() as u64).await;
        assert_eq!(
            self.end(2, file).await,
            RelayMsg::UploadDone {
                req: 2,
                file_id: file.id
            }
        );
    }

    /// Downloads from `from`; returns the chunks and the message that ended
    /// the stream (`DownloadEnd` or an error).
    async fn download(&mut self, req: u32, id: FileId, from: u64) -> (Vec<Vec<u8>>, RelayMsg) {
        self.send(ClientMsg::Download {
            req,
            file_id: id,
            from,
        })
        .await;
        let mut chunks = Vec::new();
        loop {
            match self.answer().await {
                RelayMsg::DownloadChunk {
                    file_id,
                    index,
                    data,
                } => {
                    assert_eq!(file_id, id);
                    assert_eq!(index, from + chunks.len() as u64, "chunks come in order");
                    chunks.push(data.into_vec());
                }
                end => return (chunks, end),
            }
        }
    }

    async fn delete(&mut self, req: u32, id: FileId) -> RelayMsg {
        self.send(ClientMsg::DeleteBlob { req, file_id: id }).await;
        self.answer().await
    }

    /// Expects the relay to close this connection with a `BadRequest`
    /// notice that has no request number.
    async fn expect_closed_for_bad_request(&mut self) -> String {
        let detail = loop {
            match self.recv().await {
                Some(RelayMsg::Error {
                    req: 0,
                    code: ErrorCode::BadRequest,
                    detail,
                }) => break detail,
                Some(RelayMsg::UploadProgress { .. }) => continue,
                other => panic!("expected a BadRequest notice, got {other:?}"),
            }
        };
        assert_eq!(self.recv().await, None, "then the connection is closed");
        detail
    }
}

/// A file sealed as a sender would: its plaintext, key and sealed chunks.
struct Sealed {
    id: FileId,
    key: FileKey,
    size: u64,
    plain: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

fn seal(plain: Vec<u8>) -> Sealed {
    let id = FileId::random();
    let key = FileKey::generate();
    let size = plain.len() as u64;
    let cipher = ChunkCipher::new(&key, id, size).unwrap();
    let chunks = (0..cipher.chunks())
        .map(|i| {
            let start = i as usize * CHUNK_LEN;
            let mut buf = plain[start..(start + CHUNK_LEN).min(plain.len())].to_vec();
            cipher.seal(i, &mut buf).unwrap();
            buf
        })
        .collect();
    Sealed {
        id,
        key,
        size,
        plain,
        chunks,
    }
}

fn pattern(size: usize, salt: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 16) as u8)
        .collect()
}

/// Opens downloaded chunks as the recipient would.
fn open(file: &Sealed, chunks: &[Vec<u8>]) -> Vec<u8> {
    let cipher = ChunkCipher::new(&file.key, file.id, file.size).unwrap();
    assert_eq!(chunks.len() as u64, cipher.chunks());
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut buf = chunk.clone();
        cipher.open(i as u64, &mut buf).expect("the chunk opens");
        out.extend_from_slice(&buf);
    }
    out
}

async fn download_and_check(client: &mut Client, file: &Sealed) {
    let (chunks, end) = client.download(7, file.id, 0).await;
    assert_eq!(
        end,
        RelayMsg::DownloadEnd {
            req: 7,
            file_id: file.id
        }
    );
    assert!(open(file, &chunks) == file.plain, "byte-exact round trip");
}

fn blob_path(dir: &Path, id: FileId) -> PathBuf {
    dir.join(BLOBS_DIR).join(id.to_string())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const DAY: u64 = 24 * 60 * 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_download_byte_exact_at_the_boundary_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let mut a = relay.client(&alice).await;
    let mut b = relay.client(&bob).await;
    for (i, size) in [0, 1, CHUNK_LEN, 3 * CHUNK_LEN + 7].into_iter().enumerate() {
        let file = seal(pattern(size, i as u8));
        a.upload(&file, bob.public()).await;
        let path = blob_path(dir.path(), file.id);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            sealed_len(file.size),
            "the relay stores exactly the sealed chunks"
        );
        download_and_check(&mut b, &file).await;
    }

    // Private files in a private directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let blobs = dir.path().join(BLOBS_DIR);
    assert_eq!(mode(&blobs), 0o700);
    for entry in std::fs::read_dir(&blobs).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upload_resumes_from_the_last_checkpoint_to_a_correct_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Checkpoints every 4 chunks rather than 256, to cross several quickly.
    cfg.files.checkpoint_bytes = 4 * CHUNK_LEN as u64;
    let relay = start(cfg).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(30 * CHUNK_LEN - 5, 1));
    let mut a = relay.client(&alice).await;
    assert_eq!(a.begin_ok(&file, bob.public()).await, 0);
    a.chunks(&file, 0..22).await;
    // Each checkpoint is reported once durable, in order.
    for have in [4, 8, 12, 16, 20] {
        assert_eq!(
            a.recv().await,
            Some(RelayMsg::UploadProgress {
                file_id: file.id,
                have
            })
        );
    }
    drop(a);

    let mut a = relay.client(&alice).await;
    let have = a.begin_ok(&file, bob.public()).await;
    assert!((20..=22).contains(&have), "resumes at {have}");
    a.chunks(&file, have..30).await;
    assert_eq!(
        a.end(2, &file).await,
        RelayMsg::UploadDone {
            req: 2,
            file_id: file.id
        }
    );
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &file).await;
    // Beginning a complete upload again says there is nothing left to send,
    // and ending it again is answered as done.
    assert_eq!(a.begin_ok(&file, bob.public()).await, 30);
    let mut again = relay.client(&alice).await;
    assert_eq!(
        again.end(9, &file).await,
        RelayMsg::UploadDone {
            req: 9,
            file_id: file.id
        }
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_interrupted_by_shutdown_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(12 * CHUNK_LEN + 99, 2));

    let relay = start(config(dir.path())).await;
    let mut a = relay.client(&alice).await;
    a.begin_ok(&file, bob.public()).await;
    a.chunks(&file, 0..9).await;
    // Everything before the ping has been read by the relay.
    a.ping().await;
    relay.stop().await;

    // A crash may leave bytes past the last checkpoint: resumption cuts them off.
    let path = blob_path(dir.path(), file.id);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        9 * SEALED_CHUNK_LEN as u64,
        "shutdown wrote and kept every chunk received"
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xEE; 1000]).unwrap();
    drop(f);

    let relay = start(config(dir.path())).await;
    let mut a = relay.client(&alice).await;
    assert_eq!(a.begin_ok(&file, bob.public()).await, 9);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        9 * SEALED_CHUNK_LEN as u64
    );
    a.chunks(&file, 9..13).await;
    assert_eq!(
        a.end(2, &file).await,
        RelayMsg::UploadDone {
            req: 2,
            file_id: file.id
        }
    );
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &file).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_upload_shorter_than_recorded_resumes_from_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(10 * CHUNK_LEN, 3));
    let relay = start(config(dir.path())).await;
    let mut a = relay.client(&alice).await;
    a.begin_ok(&file, bob.public()).await;
    a.chunks(&file, 0..9).await;
    a.ping().await;
    relay.stop().await;
    // Damage: the file lost its tail (say, a disk that lied about a sync).
    let path = blob_path(dir.path(), file.id);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(7 * SEALED_CHUNK_LEN as u64 + 100).unwrap();
    drop(f);

    let relay = start(config(dir.path())).await;
    let mut a = relay.client(&alice).await;
    assert_eq!(a.begin_ok(&file, bob.public()).await, 7);
    a.chunks(&file, 7..10).await;
    assert!(matches!(a.end(2, &file).await, RelayMsg::UploadDone { .. }));
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &file).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_close_that_connection_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(5 * CHUNK_LEN + 3, 4));

    // Bob is connected and listening throughout.
    let mut b = relay.client(&bob).await;
    b.send(ClientMsg::Fetch { live: true }).await;
    assert_eq!(b.answer().await, RelayMsg::Drained);

    // Out of order.
    let mut a = relay.client(&alice).await;
    a.begin_ok(&file, bob.public()).await;
    a.chunks(&file, 0..2).await;
    a.chunks(&file, 3..4).await;
    let detail = a.expect_closed_for_bad_request().await;
    assert!(detail.contains("UploadChunk 3"), "{detail}");

    // A repeated chunk.
    let mut a = relay.client(&alice).await;
    let have = a.begin_ok(&file, bob.public()).await;
    assert!(have <= 2);
    a.chunks(&file, have..have + 1).await;
    a.chunks(&file, have..have + 1).await;
    a.expect_closed_for_bad_request().await;

    // The wrong length: one byte short, and a full chunk where the last belongs.
    for data in [vec![0; SEALED_CHUNK_LEN - 1], vec![0; SEALED_CHUNK_LEN]] {
        let mut a = relay.client(&alice).await;
        let have = a.begin_ok(&file, bob.public()).await;
        a.chunks(&file, have..5).await;
        let index = if data.len() == SEALED_CHUNK_LEN { 5 } else { 0 };
        if index == 0 {
            // Start over on a fresh file so index 0 is the next one.
            let fresh = seal(pattern(CHUNK_LEN * 2, 5));
            a.begin_ok(&fresh, bob.public()).await;
            a.send(ClientMsg::UploadChunk {
                file_id: fresh.id,
                index: 0,
                data: ByteBuf::from(data),
            })
            .await;
        } else {
            a.send(ClientMsg::UploadChunk {
                file_id: file.id,
                index,
                data: ByteBuf::from(data),
            })
            .await;
        }
        let detail = a.expect_closed_for_bad_request().await;
        assert!(detail.contains("bytes where"), "{detail}");
    }

    // Past the last chunk, and for an upload never begun here.
    let mut a = relay.client(&alice).await;
    let have = a.begin_ok(&file, bob.public()).await;
    assert_eq!(have, 5);
    a.send(ClientMsg::UploadChunk {
        file_id: file.id,
        index: 6,
        data: ByteBuf::from(vec![0; 19]),
    })
    .await;
    a.expect_closed_for_bad_request().await;
    let mut a = relay.client(&alice).await;
    a.chunks(&file, 5..6).await;
    let detail = a.expect_closed_for_bad_request().await;
    assert!(detail.contains("no upload begun"), "{detail}");

    // Bob never noticed; the upload is intact and completes.
    b.ping().await;
    let mut a = relay.client(&alice).await;
    assert_eq!(a.begin_ok(&file, bob.public()).await, 5);
    a.chunks(&file, 5..6).await;
    assert!(matches!(a.end(2, &file).await, RelayMsg::UploadDone { .. }));
    let mut b2 = relay.client(&bob).await;
    download_and_check(&mut b2, &file).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_can_neither_download_resume_nor_delete() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob, mallory) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let done = seal(pattern(2 * CHUNK_LEN + 1, 6));
    let partial = seal(pattern(4 * CHUNK_LEN, 7));
    let mut a = relay.client(&alice).await;
    a.upload(&done, bob.public()).await;
    assert_eq!(a.begin_ok(&partial, bob.public()).await, 0);
    a.chunks(&partial, 0..2).await;
    a.ping().await;

    let no_such_file = |req| RelayMsg::Error {
        req,
        code: ErrorCode::BadRequest,
        detail: "no such file".into(),
    };
    let mut m = relay.client(&mallory).await;
    // Someone else's file, an unfinished one and an unknown id: one answer.
    for id in [done.id, partial.id, FileId::random()] {
        let (chunks, end) = m.download(3, id, 0).await;
        assert!(chunks.is_empty());
        assert_eq!(end, no_such_file(3));
        assert_eq!(
            m.delete(4, id).await,
            RelayMsg::BlobDeleted {
                req: 4,
                deleted: false
            }
        );
    }
    // Nor can mallory take over or resume either upload, even naming bob.
    for file in [&done, &partial] {
        assert!(matches!(
            m.begin(5, file, bob.public()).await,
            RelayMsg::Error {
                req: 5,
                code: ErrorCode::BadRequest,
                ..
            }
        ));
    }
    // The uploader is not the recipient either.
    let (_, end) = a.download(6, done.id, 0).await;
    assert_eq!(end, no_such_file(6));
    assert_eq!(
        a.delete(8, done.id).await,
        RelayMsg::BlobDeleted {
            req: 8,
            deleted: false
        }
    );
    // The recipient cannot download an unfinished upload.
    let mut b = relay.client(&bob).await;
    let (_, end) = b.download(9, partial.id, 0).await;
    assert_eq!(end, no_such_file(9));

    // Alice's upload went on undisturbed, and bob gets both files.
    a.chunks(&partial, 2..4).await;
    assert!(matches!(
        a.end(10, &partial).await,
        RelayMsg::UploadDone { .. }
    ));
    download_and_check(&mut b, &done).await;
    download_and_check(&mut b, &partial).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_before_any_byte_and_deleting_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.files.max_file_size = 10 * CHUNK_LEN as u64;
    cfg.files.max_bytes_per_recipient = sealed_len(3 * CHUNK_LEN as u64);
    cfg.files.max_files_per_recipient = 2;
    // The recipient's quotas, not one uploader's share of them.
    cfg.files.uploader_share_percent = 100;
    let relay = start(cfg).await;
    let (alice, bob, carol) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let files_on_disk = || {
        std::fs::read_dir(dir.path().join(BLOBS_DIR))
            .unwrap()
            .count()
    };
    let mut a = relay.client(&alice).await;

    let huge = seal(pattern(10 * CHUNK_LEN + 1, 0));
    assert!(matches!(
        a.begin(1, &huge, bob.public()).await,
        RelayMsg::Error {
            req: 1,
            code: ErrorCode::TooLarge,
            ..
        }
    ));

    let first = seal(pattern(2 * CHUNK_LEN, 1));
    let second = seal(pattern(2 * CHUNK_LEN, 2));
    let tiny = seal(pattern(1, 3));
    let tinier = seal(pattern(0, 4));
    a.upload(&first, bob.public()).await;
    // Bytes: 2 chunks held, 2 more asked, 3 allowed.
    assert_eq!(
        a.begin(3, &second, bob.public()).await,
        RelayMsg::Error {
            req: 3,
            code: ErrorCode::QuotaExceeded,
            detail: "the recipient's file quota is full".into()
        }
    );
    assert_eq!(files_on_disk(), 1, "a refused upload leaves nothing behind");
    // Files: an unfinished upload counts.
    a.begin_ok(&tiny, bob.public()).await;
    assert!(matches!(
        a.begin(4, &tinier, bob.public()).await,
        RelayMsg::Error {
            code: ErrorCode::QuotaExceeded,
            ..
        }
    ));
    // Quotas are per recipient.
    a.upload(&second, carol.public()).await;

    // Bob fetches and deletes the first file: its quota and its file are gone.
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &first).await;
    assert_eq!(
        b.delete(5, first.id).await,
        RelayMsg::BlobDeleted {
            req: 5,
            deleted: true
        }
    );
    assert!(!blob_path(dir.path(), first.id).exists());
    let (_, end) = b.download(6, first.id, 0).await;
    assert!(matches!(
        end,
        RelayMsg::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert_eq!(
        b.delete(7, first.id).await,
        RelayMsg::BlobDeleted {
            req: 7,
            deleted: false
        }
    );
    let second_for_bob = seal(pattern(2 * CHUNK_LEN, 2));
    a.upload(&second_for_bob, bob.public()).await;
    download_and_check(&mut b, &second_for_bob).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipient_deleting_an_upload_in_progress_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(6 * CHUNK_LEN, 8));
    let mut a = relay.client(&alice).await;
    a.begin_ok(&file, bob.public()).await;
    a.chunks(&file, 0..3).await;
    a.ping().await;
    let mut b = relay.client(&bob).await;
    assert_eq!(
        b.delete(1, file.id).await,
        RelayMsg::BlobDeleted {
            req: 1,
            deleted: true
        }
    );
    assert!(!blob_path(dir.path(), file.id).exists());
    // The next chunk finds the upload gone: alice is told and disconnected,
    // and beginning again starts a new upload from scratch.
    a.chunks(&file, 3..4).await;
    a.expect_closed_for_bad_request().await;
    let mut a = relay.client(&alice).await;
    assert_eq!(a.begin_ok(&file, bob.public()).await, 0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_abandoned_and_unfetched_files() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let abandoned = seal(pattern(5 * CHUNK_LEN, 9));
    let unfetched = seal(pattern(CHUNK_LEN + 1, 10));
    let mut a = relay.client(&alice).await;
    a.upload(&unfetched, bob.public()).await;
    a.begin_ok(&abandoned, bob.public()).await;
    a.chunks(&abandoned, 0..2).await;
    a.close().await;

    // Nothing is old yet.
    let collected = relay.maintenance.collect_garbage(now()).await.unwrap();
    assert_eq!(collected.blobs, 0);
    assert!(blob_path(dir.path(), abandoned.id).exists());

    // A week and a day later.
    let collected = relay
        .maintenance
        .collect_garbage(now() + 8 * DAY)
        .await
        .unwrap();
    assert_eq!(collected.blobs, 2);
    assert!(!blob_path(dir.path(), abandoned.id).exists());
    assert!(!blob_path(dir.path(), unfetched.id).exists());
    let mut b = relay.client(&bob).await;
    let (_, end) = b.download(1, unfetched.id, 0).await;
    assert!(matches!(
        end,
        RelayMsg::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    // The abandoned upload is gone for good: beginning again starts over.
    let mut a = relay.client(&alice).await;
    assert_eq!(a.begin_ok(&abandoned, bob.public()).await, 0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_spares_an_upload_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(3 * CHUNK_LEN, 11));
    let mut a = relay.client(&alice).await;
    a.begin_ok(&file, bob.public()).await;
    a.chunks(&file, 0..1).await;
    a.ping().await;
    let collected = relay
        .maintenance
        .collect_garbage(now() + 8 * DAY)
        .await
        .unwrap();
    assert_eq!(collected.blobs, 0, "the upload is still running");
    a.chunks(&file, 1..3).await;
    assert!(matches!(a.end(2, &file).await, RelayMsg::UploadDone { .. }));
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &file).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let marker = b"SOTTO-PLAINTEXT-MARKER-7f3a";
    let mut plain = Vec::new();
    while plain.len() < 3 * CHUNK_LEN {
        plain.extend_from_slice(marker);
    }
    let complete = seal(plain.clone());
    let partial = seal(plain);
    let mut a = relay.client(&alice).await;
    a.upload(&complete, bob.public()).await;
    a.begin_ok(&partial, bob.public()).await;
    a.chunks(&partial, 0..2).await;
    a.ping().await;
    relay.stop().await;

    let mut seen = 0;
    let mut stack = vec![dir.path().to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        seen += bytes.len();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{} holds plaintext",
            path.display()
        );
    }
    assert!(
        seen as u64 > sealed_len(3 * CHUNK_LEN as u64),
        "the files were there to search"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_interleave_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let me = SecretKey::generate();
    // Files to myself, so one connection can do everything.
    let ready = seal(pattern(5 * CHUNK_LEN + 1, 12));
    let also_ready = seal(pattern(2 * CHUNK_LEN + 1, 21));
    let x = seal(pattern(4 * CHUNK_LEN + 2, 13));
    let y = seal(pattern(3 * CHUNK_LEN + 3, 14));
    let mut c = relay.client(&me).await;
    c.upload(&ready, me.public()).await;
    c.upload(&also_ready, me.public()).await;

    c.send(ClientMsg::Download {
        req: 20,
        file_id: ready.id,
        from: 0,
    })
    .await;
    for (req, file) in [(21, &x), (22, &y)] {
        c.send(ClientMsg::UploadBegin {
            req,
            file_id: file.id,
            to: me.public(),
            size: file.size,
        })
        .await;
    }
    for i in 0..5 {
        c.chunks(&x, i..i + 1).await;
        if i < 4 {
            c.chunks(&y, i..i + 1).await;
        }
        if i == 2 {
            c.send(ClientMsg::Download {
                req: 25,
                file_id: also_ready.id,
                from: 1,
            })
            .await;
        }
    }
    for (req, file) in [(23, &x), (24, &y)] {
        c.send(ClientMsg::UploadEnd {
            req,
            file_id: file.id,
        })
        .await;
    }

    let mut got = std::collections::HashMap::<FileId, Vec<Vec<u8>>>::new();
    let mut answers = Vec::new();
    while answers.len() < 6 {
        match c.answer().await {
            // Each stream arrives in order, whatever else is interleaved.
            RelayMsg::DownloadChunk {
                file_id,
                index,
                data,
            } => {
                let chunks = got.entry(file_id).or_default();
                let from = if file_id == also_ready.id { 1 } else { 0 };
                assert_eq!(index, from + chunks.len() as u64);
                chunks.push(data.into_vec());
            }
            other => answers.push(other),
        }
    }
    for want in [
        RelayMsg::UploadState {
            req: 21,
            file_id: x.id,
            have: 0,
        },
        RelayMsg::UploadState {
            req: 22,
            file_id: y.id,
            have: 0,
        },
        RelayMsg::UploadDone {
            req: 23,
            file_id: x.id,
        },
        RelayMsg::UploadDone {
            req: 24,
            file_id: y.id,
        },
        RelayMsg::DownloadEnd {
            req: 20,
            file_id: ready.id,
        },
        RelayMsg::DownloadEnd {
            req: 25,
            file_id: also_ready.id,
        },
    ] {
        assert!(answers.contains(&want), "{want:?} missing from {answers:?}");
    }
    assert!(open(&ready, &got[&ready.id]) == ready.plain);
    assert_eq!(got[&also_ready.id], also_ready.chunks[1..]);
    download_and_check(&mut c, &x).await;
    download_and_check(&mut c, &y).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resume_from_any_chunk_and_refuse_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let me = SecretKey::generate();
    let file = seal(pattern(5 * CHUNK_LEN + 9, 15));
    let mut c = relay.client(&me).await;
    c.upload(&file, me.public()).await;
    let (head, _) = c.download(1, file.id, 0).await;
    let (tail, end) = c.download(2, file.id, 3).await;
    assert_eq!(
        end,
        RelayMsg::DownloadEnd {
            req: 2,
            file_id: file.id
        }
    );
    let mut resumed = head[..3].to_vec();
    resumed.extend(tail);
    assert!(open(&file, &resumed) == file.plain);
    let (none, end) = c.download(3, file.id, 6).await;
    assert!(none.is_empty());
    assert!(matches!(end, RelayMsg::DownloadEnd { req: 3, .. }));
    let (_, end) = c.download(4, file.id, 7).await;
    assert!(matches!(
        end,
        RelayMsg::Error {
            req: 4,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stored_file_sends_what_is_there_then_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let me = SecretKey::generate();
    let short = seal(pattern(4 * CHUNK_LEN, 16));
    let missing = seal(pattern(10, 17));
    let mut c = relay.client(&me).await;
    c.upload(&short, me.public()).await;
    c.upload(&missing, me.public()).await;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(blob_path(dir.path(), short.id))
        .unwrap();
    f.set_len(SEALED_CHUNK_LEN as u64 * 3 / 2).unwrap();
    drop(f);
    std::fs::remove_file(blob_path(dir.path(), missing.id)).unwrap();

    let damaged = |req| RelayMsg::Error {
        req,
        code: ErrorCode::Internal,
        detail: "stored file damaged".into(),
    };
    let (chunks, end) = c.download(1, short.id, 0).await;
    assert_eq!(chunks, short.chunks[..1]);
    assert_eq!(end, damaged(1));
    let (chunks, end) = c.download(2, missing.id, 0).await;
    assert!(chunks.is_empty());
    assert_eq!(end, damaged(2));
    // The connection and the relay carry on.
    c.ping().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_upload_end_is_refused_and_the_upload_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let me = SecretKey::generate();
    let file = seal(pattern(3 * CHUNK_LEN, 18));
    let mut c = relay.client(&me).await;
    assert!(matches!(
        c.end(1, &file).await,
        RelayMsg::Error {
            req: 1,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    c.begin_ok(&file, me.public()).await;
    c.chunks(&file, 0..2).await;
    assert!(matches!(
        c.end(2, &file).await,
        RelayMsg::Error {
            req: 2,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    c.chunks(&file, 2..3).await;
    assert!(matches!(
        c.end(3, &file).await,
        RelayMsg::UploadDone { req: 3, .. }
    ));
    // The same id for another recipient or size is refused.
    let mut other = seal(pattern(3 * CHUNK_LEN, 0));
    other.id = file.id;
    other.size += 1;
    assert!(matches!(
        c.begin(4, &other, me.public()).await,
        RelayMsg::Error {
            req: 4,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert!(matches!(
        c.begin(5, &file, SecretKey::generate().public()).await,
        RelayMsg::Error {
            req: 5,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_without_metadata_are_removed_at_start_and_others_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let me = SecretKey::generate();
    let file = seal(pattern(CHUNK_LEN, 19));
    let relay = start(config(dir.path())).await;
    let mut c = relay.client(&me).await;
    c.upload(&file, me.public()).await;
    relay.stop().await;

    let blobs = dir.path().join(BLOBS_DIR);
    let orphan = blobs.join(FileId::random().to_string());
    std::fs::write(&orphan, b"left by a crash").unwrap();
    let foreign = blobs.join("README");
    std::fs::write(&foreign, b"not ours").unwrap();

    let relay = start(config(dir.path())).await;
    assert!(!orphan.exists());
    assert!(foreign.exists());
    let mut c = relay.client(&me).await;
    download_and_check(&mut c, &file).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_takes_over_a_stale_upload() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(8 * CHUNK_LEN, 20));
    // The first connection stays open but falls silent, as one whose network
    // went away would.
    let mut stale = relay.client(&alice).await;
    stale.begin_ok(&file, bob.public()).await;
    stale.chunks(&file, 0..3).await;
    stale.ping().await;

    let mut fresh = relay.client(&alice).await;
    assert_eq!(fresh.begin_ok(&file, bob.public()).await, 3);
    fresh.chunks(&file, 3..8).await;
    assert!(matches!(
        fresh.end(2, &file).await,
        RelayMsg::UploadDone { .. }
    ));
    // The stale connection learns it lost the upload if it ever speaks again.
    stale.chunks(&file, 3..4).await;
    stale.expect_closed_for_bad_request().await;
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &file).await;
    assert_eq!(chunk_count(file.size), 8);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_after_upload_end_still_hears_upload_done() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let me = SecretKey::generate();
    let file = seal(pattern(2 * CHUNK_LEN + 5, 22));
    let mut c = relay.client(&me).await;
    c.begin_ok(&file, me.public()).await;
    c.chunks(&file, 0..3).await;
    c.w.send(&ClientMsg::UploadEnd {
        req: 4,
        file_id: file.id,
    })
    .await
    .unwrap();
    c.w.shutdown().await.unwrap();
    assert_eq!(
        c.answer().await,
        RelayMsg::UploadDone {
            req: 4,
            file_id: file.id
        }
    );
    assert_eq!(c.recv().await, None);
    let mut c = relay.client(&me).await;
    download_and_check(&mut c, &file).await;
    relay.stop().await;
}

/// A short idle timeout: an upload that sends nothing this long gives up its room.
const IDLE: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_pauses_gives_its_room_back_and_goes_on_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.files.checkpoint_bytes = 4 * CHUNK_LEN as u64;
    cfg.files.upload_idle_timeout = IDLE;
    let relay = start(cfg).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let file = seal(pattern(6 * CHUNK_LEN + 3, 30));
    let mut a = relay.client(&alice).await;
    assert_eq!(a.begin_ok(&file, bob.public()).await, 0);
    a.chunks(&file, 0..3).await;
    // No checkpoint is due before chunk 4: this progress comes from the
    // upload giving its room back, after making what it had durable.
    assert_eq!(
        a.recv().await,
        Some(RelayMsg::UploadProgress {
            file_id: file.id,
            have: 3
        })
    );
    // The client goes on as if nothing happened.
    a.chunks(&file, 3..7).await;
    assert_eq!(
        a.end(2, &file).await,
        RelayMsg::UploadDone {
            req: 2,
            file_id: file.id
        }
    );
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &file).await;

    // An upload that sent nothing at all is forgotten, and begun again in
    // place when its first chunk comes after all.
    let empty = seal(pattern(2 * CHUNK_LEN, 31));
    assert_eq!(a.begin_ok(&empty, bob.public()).await, 0);
    let path = blob_path(dir.path(), empty.id);
    while path.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.chunks(&empty, 0..2).await;
    assert!(matches!(
        a.end(3, &empty).await,
        RelayMsg::UploadDone { req: 3, .. }
    ));
    download_and_check(&mut b, &empty).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_finds_no_room_part_way_is_refused_and_resumes_once_there_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Bob holds 6 chunks; every chunk is a checkpoint, a window is 2.
    cfg.files.max_bytes_per_recipient = 6 * SEALED_CHUNK_LEN as u64;
    cfg.files.uploader_share_percent = 100;
    cfg.files.checkpoint_bytes = CHUNK_LEN as u64;
    let relay = start(cfg).await;
    let (alice, carol, bob) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let (hers, theirs) = (
        seal(pattern(4 * CHUNK_LEN, 32)),
        seal(pattern(4 * CHUNK_LEN, 33)),
    );
    let mut a = relay.client(&alice).await;
    let mut c = relay.client(&carol).await;
    // Both fit when they begin: each holds only its window.
    assert_eq!(a.begin_ok(&hers, bob.public()).await, 0);
    assert_eq!(c.begin_ok(&theirs, bob.public()).await, 0);
    a.chunks(&hers, 0..4).await;
    assert!(matches!(a.end(2, &hers).await, RelayMsg::UploadDone { .. }));
    // Alice's 4 chunks are stored: carol's upload runs out of room part-way.
    c.chunks(&theirs, 0..4).await;
    let notice = loop {
        match c.recv().await {
            Some(RelayMsg::UploadProgress { .. }) => {}
            other => break other,
        }
    };
    assert!(
        matches!(
            &notice,
            Some(RelayMsg::Error { req: 0, code: ErrorCode::QuotaExceeded, detail })
                if detail.contains("begin the upload again")
        ),
        "{notice:?}"
    );
    assert!(matches!(
        c.end(3, &theirs).await,
        RelayMsg::Error {
            req: 3,
            code: ErrorCode::QuotaExceeded,
            ..
        }
    ));
    // Bob receives alice's file: carol's resumes from what was stored.
    let mut b = relay.client(&bob).await;
    download_and_check(&mut b, &hers).await;
    assert!(matches!(
        b.delete(4, hers.id).await,
        RelayMsg::BlobDeleted { deleted: true, .. }
    ));
    let have = c.begin_ok(&theirs, bob.public()).await;
    assert_eq!(have, 2, "two chunks fitted before the quota ran out");
    c.chunks(&theirs, have..4).await;
    assert!(matches!(
        c.end(5, &theirs).await,
        RelayMsg::UploadDone { .. }
    ));
    download_and_check(&mut b, &theirs).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_progress_are_bounded_per_address_over_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.files.max_uploads_per_address = 2;
    let relay = start(cfg).await;
    let bob = SecretKey::generate();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = relay.client(&SecretKey::generate()).await;
        c.begin_ok(&seal(pattern(10, 34)), bob.public()).await;
        clients.push(c);
    }
    // A third key from the same address (127.0.0.1) is held back ...
    let mut third = relay.client(&SecretKey::generate()).await;
    let file = seal(pattern(10, 35));
    assert!(matches!(
        third.begin(1, &file, bob.public()).await,
        RelayMsg::Error {
            req: 1,
            code: ErrorCode::RateLimited,
            ..
        }
    ));
    // ... until one of the others is done.
    clients.pop().unwrap().close().await;
    third.upload(&file, bob.public()).await;
    relay.stop().await;
}
