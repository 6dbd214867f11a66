//! Sending a file: streamed from disk, sealed chunk by chunk, uploaded
//! pipelined, resumable.
//!
//! A blocking thread reads the file in [`CHUNK_LEN`] pieces and hashes the
//! plaintext (BLAKE3, for the offer); a second one seals each chunk and hands
//! it over a bounded channel to the connection, which sends chunks as they come without
//! waiting for the relay between them. The channel's bound ([`IN_FLIGHT`]) and
//! the link's own buffer are all the memory an upload takes, whatever the
//! file's size; a full socket stalls the reader, not the other way round.
//!
//! Resuming: the relay answers `UploadBegin` with the number of chunks it
//! already holds durably. Those chunks are read and hashed again (the offer's
//! hash covers the whole file) but not sent; sending starts at the first one
//! the relay lacks. That needs the same id and key as the first attempt, which
//! [`crate::upload_state`] keeps.
//!
//! The file must not change while it is sent: it is checked against its
//! fingerprint when opened, its end is checked to be where its size says, and
//! its metadata is checked again before the last chunk leaves, so a relay never
//! completes a blob whose content no longer matches the file.
//!
//! A directory is sent the same way, as the one stream of [`crate::tree`]:
//! its manifest, then its files' contents, each file checked in the same
//! way as it is read ([`Plaintext`] is what either is read through).
//!
//! Progress is reported through a callback, `(bytes done, bytes total)`:
//! whatever shows it is the caller's business.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sotto_crypto::file::{
    chunk_count, chunk_len, ChunkCipher, ContentHash, FileError, CHUNK_LEN, MAX_FILE_SIZE, TAG_LEN,
};
use sotto_keys::PublicKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use std::future::Future;

use sotto_crypto::delivery::ResumeSecret;

use crate::delivery_link::DeliveryConn;
use crate::relay_client::{describe_io, RelayConn, RelayError, SealedChunk, UploadEnd};
use crate::routes::Route;
use crate::tree::scan::{LocalTree, ScanError};
use crate::tree::source::TreeSource;
use crate::upload_state::{Fingerprint, UploadState};

/// Sealed chunks queued between the reading thread and the connection.
pub const IN_FLIGHT: usize = 32;

/// Plaintext chunks read ahead of the sealing thread.
const SEAL_AHEAD: usize = 4;

/// Why sending a file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// A directory that cannot be sent as a tree.
    #[error(transparent)]
    Tree(#[from] ScanError),
    /// Something that is neither a file nor a directory was named.
    #[error("{} is not a regular file or a directory: sotto sends files and directories", .0.display())]
    NotAFile(PathBuf),
    /// The file (or tree) is larger than the chunk format allows.
    #[error("{} is too large: {size} bytes, sotto sends at most {MAX_FILE_SIZE} bytes per file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file could not be read.
    #[error("cannot read {}: {}", path.display(), describe_io(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file changed while it was being sent.
    #[error("{} changed while it was being sent; run the command again to send it as it is now", .0.display())]
    Changed(PathBuf),
    /// Talking to the relay failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The reading thread stopped because the upload had already failed.
    #[error("the upload was cancelled")]
    Cancelled,
    /// A bug: a chunk that cannot be sealed.
    #[error("cannot seal chunk of {}: {source}", path.display())]
    Seal {
        /// The file.
        path: PathBuf,
        /// Why.
        source: FileError,
    },
}

/// A file or directory about to be sent, as it was when it was looked at.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as given.
    pub path: PathBuf,
    /// The canonical path (what resume state is keyed by).
    pub canonical: PathBuf,
    /// The name offered to the recipient: the path's last component.
    pub name: String,
    /// Its fingerprint, size included (a tree's: [`LocalTree::fingerprint`]).
    pub fingerprint: Fingerprint,
    /// For a directory, the tree sent; `None` for a file.
    pub tree: Option<Arc<LocalTree>>,
    /// What was left out of a tree (links, special files), a line each.
    pub skipped: Vec<String>,
}

impl Source {
    /// Looks at `path`: a regular file, or a directory (sent as one tree,
    /// links inside it skipped), no larger than the format allows.
    pub fn inspect(path: &Path) -> Result<Self, UploadError> {
        let read_error = |source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_error)?;
        let mut skipped = Vec::new();
        let (fingerprint, tree) = if meta.is_dir() {
            let tree = LocalTree::scan(path, &mut |s| skipped.push(s))?;
            (tree.fingerprint(&meta), Some(Arc::new(tree)))
        } else if meta.is_file() {
            (Fingerprint::of(&meta), None)
        } else {
            return Err(UploadError::NotAFile(path.to_path_buf()));
        };
        if fingerprint.size > MAX_FILE_SIZE {
            return Err(UploadError::TooLarge {
                path: path.to_path_buf(),
                size: fingerprint.size,
            });
        }
        let canonical = std::fs::canonicalize(path).map_err(read_error)?;
        let name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| crate::safe_name::FALLBACK_NAME.to_owned());
        Ok(Self {
            path: path.to_path_buf(),
            canonical,
            name,
            fingerprint,
            tree,
            skipped,
        })
    }

    /// Whether it is a directory.
    pub fn is_tree(&self) -> bool {
        self.tree.is_some()
    }

    /// Opens what is read for the upload (on a blocking thread).
    fn open(&self) -> Result<Box<dyn Plaintext>, UploadError> {
        if let Some(tree) = &self.tree {
            return Ok(Box::new(TreeSource::new(self.path.clone(), tree)));
        }
        let file = File::open(&self.path).map_err(|source| UploadError::Read {
            path: self.path.clone(),
            source,
        })?;
        Ok(Box::new(FileSource::new(
            file,
            &self.path,
            self.fingerprint,
        )?))
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.fingerprint.size
    }
}

/// Plaintext bytes in chunks `0..n` of a file of `size` bytes.
pub fn bytes_in_chunks(size: u64, n: u64) -> u64 {
    n.saturating_mul(CHUNK_LEN as u64).min(size)
}

/// Begins (or resumes) the upload of `source` to `to` under `state`; returns
/// how many chunks the relay already holds.
pub async fn begin<R, W>(
    conn: &mut RelayConn<R, W>,
    to: &PublicKey,
    source: &Source,
    state: &UploadState,
) -> Result<u64, UploadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    Ok(conn.upload_begin(state.file_id, to, source.size()).await?)
}

/// A link an upload's chunks go over: the delivery link (in use, so the
/// relay does not learn who uploads) or the owner link (older relays).
pub trait UploadLink: Send {
    /// Sends chunks `from..` as `chunks` yields them, then the end.
    fn upload_chunks(
        &mut self,
        file_id: sotto_crypto::file::FileId,
        size: u64,
        from: u64,
        chunks: &mut mpsc::Receiver<SealedChunk>,
        on_sent: &mut (dyn FnMut(u64) + Send),
    ) -> impl Future<Output = Result<UploadEnd, RelayError>> + Send;
}

impl<R, W> UploadLink for RelayConn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    fn upload_chunks(
        &mut self,
        file_id: sotto_crypto::file::FileId,
        size: u64,
        from: u64,
        chunks: &mut mpsc::Receiver<SealedChunk>,
        on_sent: &mut (dyn FnMut(u64) + Send),
    ) -> impl Future<Output = Result<UploadEnd, RelayError>> + Send {
        RelayConn::upload_chunks(self, file_id, size, from, chunks, on_sent)
    }
}

impl<R, W> UploadLink for DeliveryConn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    fn upload_chunks(
        &mut self,
        file_id: sotto_crypto::file::FileId,
        size: u64,
        from: u64,
        chunks: &mut mpsc::Receiver<SealedChunk>,
        on_sent: &mut (dyn FnMut(u64) + Send),
    ) -> impl Future<Output = Result<UploadEnd, RelayError>> + Send {
        DeliveryConn::upload_chunks(self, file_id, size, from, chunks, on_sent)
    }
}

/// [`begin`] over a delivery link along `route`: the relay is shown the
/// recipient's token and the upload's resume secret (derived from the
/// file's key, so the same on every attempt), never my key.
pub async fn begin_delivery<R, W>(
    conn: &mut DeliveryConn<R, W>,
    route: &Route,
    source: &Source,
    state: &UploadState,
) -> Result<u64, UploadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let resume = ResumeSecret::for_file(&state.key, state.file_id);
    Ok(conn
        .upload_begin(
            state.file_id,
            &route.to,
            route.token.as_ref(),
            source.size(),
            &resume,
        )
        .await?)
}

/// Sends the chunks the relay lacks (from `have`, as [`begin`] answered) and
/// returns the BLAKE3 hash of the whole file once the relay holds all of it
/// durably. `progress(done, total)` is called with bytes, first with what the
/// relay already had.
pub async fn send<L: UploadLink>(
    conn: &mut L,
    source: &Source,
    state: &UploadState,
    have: u64,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<[u8; 32], UploadError> {
    let size = source.size();
    let chunks = chunk_count(size);
    progress(bytes_in_chunks(size, have), size);
    let cipher =
        ChunkCipher::new(&state.key, state.file_id, size).map_err(|_| UploadError::TooLarge {
            path: source.path.clone(),
            size,
        })?;
    let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
    let path = source.path.clone();
    if state.fingerprint != source.fingerprint {
        return Err(UploadError::Changed(path));
    }
    let opening = source.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let plain = opening.open()?;
        read_and_seal(plain, &path, size, &cipher, have, &tx)
    });
    if have == chunks {
        // Everything is on the relay already: the hash must still be
        // computed (and the file checked) before the upload is closed.
        let hash = joined(reader.await)?;
        match conn
            .upload_chunks(state.file_id, size, have, &mut rx, &mut |_| {})
            .await?
        {
            UploadEnd::Done => return Ok(hash),
            UploadEnd::SourceEnded => return Err(UploadError::Cancelled),
        }
    }
    let sent = conn
        .upload_chunks(state.file_id, size, have, &mut rx, &mut |n| {
            progress(bytes_in_chunks(size, n), size)
        })
        .await;
    // Unblocks the reader if the upload stopped before the file's end.
    drop(rx);
    let read = joined(reader.await);
    match (sent, read) {
        // What went wrong locally explains why the chunks stopped coming.
        (_, Err(e)) if !matches!(e, UploadError::Cancelled) => Err(e),
        (Err(e), _) => Err(e.into()),
        (Ok(UploadEnd::Done), Ok(hash)) => Ok(hash),
        (Ok(_), _) => Err(UploadError::Cancelled),
    }
}

fn joined<T>(r: Result<Result<T, UploadError>, tokio::task::JoinError>) -> Result<T, UploadError> {
    r.unwrap_or(Err(UploadError::Cancelled))
}

/// Reads the whole file, hashing it; seals chunks `from..` and sends them to
/// `tx` in order. Returns the hash. Runs on a blocking thread, and seals on a
/// second one: reading and hashing a chunk and sealing the one before run at
/// once, so neither waits for the other.
fn read_and_seal(
    plain: Box<dyn Plaintext>,
    path: &Path,
    size: u64,
    cipher: &ChunkCipher,
    from: u64,
    tx: &mpsc::Sender<SealedChunk>,
) -> Result<[u8; 32], UploadError> {
    let (plain_tx, plain_rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(SEAL_AHEAD);
    std::thread::scope(|scope| {
        let sealer = std::thread::Builder::new()
            .name("sotto-seal".into())
            .spawn_scoped(scope, move || -> Result<(), UploadError> {
                for (index, mut buf) in plain_rx {
                    cipher
                        .seal(index, &mut buf)
                        .map_err(|source| UploadError::Seal {
                            path: path.to_path_buf(),
                            source,
                        })?;
                    if tx.blocking_send(SealedChunk { index, data: buf }).is_err() {
                        return Err(UploadError::Cancelled);
                    }
                }
                Ok(())
            });
        let sealer = match sealer {
            Ok(sealer) => sealer,
            Err(source) => {
                return Err(UploadError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let read = read_and_hash(plain, size, from, &plain_tx);
        // The sealer ends once it has sealed everything sent to it.
        drop(plain_tx);
        let sealed = sealer.join().unwrap_or(Err(UploadError::Cancelled));
        match (read, sealed) {
            // A reader that stopped because the sealer did has no news.
            (Err(UploadError::Cancelled), Err(e)) => Err(e),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(hash), Ok(())) => Ok(hash),
        }
    })
}

/// What an upload reads its plaintext from: a file, or a tree's stream.
pub trait Plaintext: Send {
    /// Fills `buf` with the next bytes; a source that ends early has changed.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), UploadError>;
    /// Once every byte was read: the source ends there and nothing in it
    /// changed since it was looked at.
    fn check_end(&mut self) -> Result<(), UploadError>;
}

/// One file, checked against its fingerprint when opened and at its end.
struct FileSource {
    file: File,
    path: PathBuf,
    expected: Fingerprint,
}

impl FileSource {
    /// `file`, which must be the file inspected (not a replacement).
    fn new(file: File, path: &Path, expected: Fingerprint) -> Result<Self, UploadError> {
        let meta = file.metadata().map_err(|source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if Fingerprint::of(&meta) != expected {
            return Err(UploadError::Changed(path.to_path_buf()));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            expected,
        })
    }
}

impl Plaintext for FileSource {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), UploadError> {
        read_exact(&mut self.file, buf, &self.path)
    }

    fn check_end(&mut self) -> Result<(), UploadError> {
        check_end(&mut self.file, &self.path, &self.expected)
    }
}

/// Reads the whole source, hashing it, and sends chunks `from..` to
/// `sealer` in order. Returns the hash.
fn read_and_hash(
    mut plain: Box<dyn Plaintext>,
    size: u64,
    from: u64,
    sealer: &std::sync::mpsc::SyncSender<(u64, Vec<u8>)>,
) -> Result<[u8; 32], UploadError> {
    let chunks = chunk_count(size);
    let mut hash = ContentHash::new();
    let mut rehash = vec![0u8; CHUNK_LEN];
    for index in 0..chunks {
        let len = chunk_len(size, index).unwrap_or(0);
        if index < from {
            // Already on the relay: only the hash needs it.
            plain.fill(&mut rehash[..len])?;
            hash.update(&rehash[..len]);
            if index + 1 == chunks {
                plain.check_end()?;
            }
            continue;
        }
        let mut buf = Vec::with_capacity(len + TAG_LEN);
        buf.resize(len, 0);
        plain.fill(&mut buf)?;
        hash.update(&buf);
        if index + 1 == chunks {
            // Before the last chunk leaves: once the relay has it, the
            // upload can complete.
            plain.check_end()?;
        }
        if sealer.send((index, buf)).is_err() {
            return Err(UploadError::Cancelled);
        }
    }
    Ok(hash.finish())
}

fn read_exact(file: &mut File, buf: &mut [u8], path: &Path) -> Result<(), UploadError> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            UploadError::Changed(path.to_path_buf())
        } else {
            UploadError::Read {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// The file ends where its size says, and its metadata is as it was.
fn check_end(file: &mut File, path: &Path, expected: &Fingerprint) -> Result<(), UploadError> {
    let mut one = [0u8; 1];
    let more = file.read(&mut one).map_err(|source| UploadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| UploadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if more != 0 || Fingerprint::of(&meta) != *expected {
        return Err(UploadError::Changed(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay_client::test_relay::fake_relay;
    use sotto_crypto::file::sealed_chunk_len;
    use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
    use std::sync::{Arc, Mutex};

    fn data(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn source_for(dir: &Path, content: &[u8]) -> Source {
        let path = dir.join("payload.bin");
        std::fs::write(&path, content).unwrap();
        Source::inspect(&path).unwrap()
    }

    /// A relay that answers `UploadBegin` with `have`, checks that the chunks
    /// come in order with their sealed lengths, opens them with the key, and
    /// answers `UploadDone`. Returns the plaintext it received.
    async fn run_upload(
        content: &[u8],
        have: u64,
    ) -> (Result<[u8; 32], UploadError>, Vec<(u64, u64)>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let source = source_for(dir.path(), content);
        let state = UploadState::new(source.fingerprint);
        let size = source.size();
        let key = state.key.clone();
        let got = Arc::new(Mutex::new(Vec::new()));
        let got2 = got.clone();
        let mut conn = fake_relay(move |mut r, mut w| async move {
            let Some(ClientMsg::UploadBegin {
                req,
                file_id,
                size: s,
                ..
            }) = r.recv().await.unwrap()
            else {
                panic!("expected UploadBegin")
            };
            assert_eq!(s, size);
            w.send(&RelayMsg::UploadState { req, file_id, have })
                .await
                .unwrap();
            w.flush().await.unwrap();
            let cipher = ChunkCipher::new(&key, file_id, size).unwrap();
            let mut next = have;
            loop {
                match r.recv().await.unwrap().unwrap() {
                    ClientMsg::UploadChunk {
                        file_id: f,
                        index,
                        data,
                    } => {
                        assert_eq!(f, file_id);
                        assert_eq!(index, next, "chunks in order from `have`");
                        assert_eq!(data.len(), sealed_chunk_len(size, index).unwrap());
                        let mut buf = data.into_vec();
                        cipher.open(index, &mut buf).unwrap();
                        got2.lock().unwrap().extend_from_slice(&buf);
                        next += 1;
                        if next.is_multiple_of(2) {
                            w.send(&RelayMsg::UploadProgress {
                                file_id,
                                have: next,
                            })
                            .await
                            .unwrap();
                            w.flush().await.unwrap();
                        }
                    }
                    ClientMsg::UploadEnd { req, file_id: f } => {
                        assert_eq!(next, chunk_count(size));
                        w.send(&RelayMsg::UploadDone { req, file_id: f })
                            .await
                            .unwrap();
                        w.flush().await.unwrap();
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await;
        let to = PublicKey::from_bytes([3; 32]);
        let mut calls = Vec::new();
        let result = async {
            let have = begin(&mut conn, &to, &source, &state).await?;
            send(&mut conn, &source, &state, have, &mut |d, t| {
                calls.push((d, t))
            })
            .await
        }
        .await;
        let got = got.lock().unwrap().clone();
        (result, calls, got)
    }

    fn blake3(data: &[u8]) -> [u8; 32] {
        let mut h = ContentHash::new();
        h.update(data);
        h.finish()
    }

    #[tokio::test]
    async fn whole_uploads_of_boundary_sizes_arrive_intact() {
        for size in [0, 1, CHUNK_LEN, 3 * CHUNK_LEN, 3 * CHUNK_LEN + 17] {
            let content = data(size);
            let (hash, calls, got) = run_upload(&content, 0).await;
            assert_eq!(hash.unwrap(), blake3(&content), "size {size}");
            assert_eq!(got, content, "size {size}");
            let size = size as u64;
            assert_eq!(calls.first(), Some(&(0, size)));
            assert_eq!(calls.last(), Some(&(size, size)));
            assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(calls.iter().all(|&(_, t)| t == size));
            assert_eq!(calls.len() as u64, 1 + chunk_count(size));
        }
    }

    #[tokio::test]
    async fn a_resumed_upload_sends_only_what_is_missing_and_hashes_everything() {
        let content = data(5 * CHUNK_LEN + 3);
        let (hash, calls, got) = run_upload(&content, 2).await;
        assert_eq!(hash.unwrap(), blake3(&content));
        assert_eq!(got, content[2 * CHUNK_LEN..]);
        // The bar starts at what the relay had.
        assert_eq!(calls[0], (2 * CHUNK_LEN as u64, content.len() as u64));
        assert_eq!(
            calls.last(),
            Some(&(content.len() as u64, content.len() as u64))
        );
        assert_eq!(calls.len(), 1 + 4);

        // Everything there already: nothing sent, still hashed and ended.
        let (hash, calls, got) = run_upload(&content, 6).await;
        assert_eq!(hash.unwrap(), blake3(&content));
        assert!(got.is_empty());
        assert_eq!(calls, vec![(content.len() as u64, content.len() as u64)]);
    }

    #[tokio::test]
    async fn a_quota_refusal_at_begin_is_the_relays_error() {
        let dir = tempfile::tempdir().unwrap();
        let source = source_for(dir.path(), &data(10));
        let state = UploadState::new(source.fingerprint);
        let mut conn = fake_relay(|mut r, mut w| async move {
            let Some(ClientMsg::UploadBegin { req, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::Error {
                req,
                code: ErrorCode::QuotaExceeded,
                detail: "full".into(),
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
        })
        .await;
        let err = begin(&mut conn, &PublicKey::from_bytes([3; 32]), &source, &state)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                UploadError::Relay(RelayError::Refused {
                    code: ErrorCode::QuotaExceeded,
                    ..
                })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_relay_that_drops_mid_upload_fails_it_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(40 * CHUNK_LEN);
        let source = source_for(dir.path(), &content);
        let state = UploadState::new(source.fingerprint);
        let mut conn = fake_relay(|mut r, mut w| async move {
            let Some(ClientMsg::UploadBegin { req, file_id, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::UploadState {
                req,
                file_id,
                have: 0,
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
            for _ in 0..3 {
                let _ = r.recv::<ClientMsg>().await;
            }
            // Hang up.
        })
        .await;
        let have = begin(&mut conn, &PublicKey::from_bytes([3; 32]), &source, &state)
            .await
            .unwrap();
        let err = send(&mut conn, &source, &state, have, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                UploadError::Relay(RelayError::Closed { .. } | RelayError::Link { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_changed_since_it_was_looked_at_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(2 * CHUNK_LEN + 1);
        let source = source_for(dir.path(), &content);
        let state = UploadState::new(source.fingerprint);
        let cipher = ChunkCipher::new(&state.key, state.file_id, source.size()).unwrap();
        // Grown after it was looked at.
        std::fs::write(&source.path, data(2 * CHUNK_LEN + 2)).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let err = match source.open() {
            Err(e) => e,
            Ok(plain) => {
                read_and_seal(plain, &source.path, source.size(), &cipher, 0, &tx).unwrap_err()
            }
        };
        assert!(matches!(err, UploadError::Changed(_)), "{err}");
        drop(tx);
        let mut sent = Vec::new();
        while let Ok(c) = rx.try_recv() {
            sent.push(c.index);
        }
        assert!(sent.is_empty(), "nothing left: {sent:?}");
    }

    #[test]
    fn a_directory_is_a_tree_and_a_missing_path_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let source = Source::inspect(dir.path()).unwrap();
        let tree = source.tree.as_ref().unwrap();
        assert_eq!(source.size(), tree.header.len() as u64 + 1);
        assert!(source.skipped.is_empty());
        let err = Source::inspect(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("missing: no such file or directory"), "{err}");
    }
}
