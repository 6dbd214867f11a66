//! Receiving a file: chunks opened one by one into a temporary file, the
//! whole checked, then put in place; resumable.
//!
//! The connection passes sealed chunks over a bounded channel to a blocking
//! thread that owns the temporary file `DIR/.sotto-<file id>.part` (0600). For
//! each chunk it checks the index is the next one, opens it with the file's
//! key ([`ChunkCipher::open`]: a tampered, reordered, duplicated, truncated or
//! swapped chunk fails there), hashes the plaintext and appends it. Only when
//! the relay has said the download is over are the chunk count, the size and
//! the BLAKE3 hash compared with the offer; the file is synced and then
//! published under its sanitised name ([`crate::publish`]), never over an
//! existing file.
//!
//! A failed check removes the temporary file: nothing of an unverified file is
//! left, let alone under its name; so does a relay that refuses to go on. A
//! dropped connection keeps it: it holds only
//! chunks that opened correctly, so the next attempt re-hashes it and asks the
//! relay for the rest (`Download { from }`), dropping a partly written chunk.
//!
//! Before anything is asked of the relay, the offer's size is checked against
//! the client's limit, and what is left to fetch against the free space of
//! the directory ([`crate::download_limits`]); a refusal leaves the offer as
//! it is.
//!
//! A directory tree arrives the same way, as one stream in its temporary
//! file; once verified it is unpacked ([`crate::tree::unpack`]) under its
//! name, and the temporary file removed. It needs room for the stream and
//! for the tree both, which the free-space check asks for.
//!
//! Progress is reported through a callback, `(bytes done, bytes total)`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sotto_crypto::file::{
    chunk_count, ChunkCipher, ContentHash, FileError, FileId, FileOffer, CHUNK_LEN,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::download_limits::{DownloadLimits, FREE_SPACE_MARGIN};
use crate::offers::OfferKind;
use crate::publish::publish;
use crate::relay_client::{describe_io, DownloadEnd, RelayConn, RelayError, SealedChunk};
use crate::safe_name::{safe_file_name, TEMP_PREFIX};
use crate::tree::unpack::{unpack, UnpackError};
use crate::upload::bytes_in_chunks;

/// Sealed chunks queued between the connection and the writing thread.
pub const IN_FLIGHT: usize = 32;

/// Why receiving a file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The file is not what was offered: a chunk failed to open, came out of
    /// order, or is missing, or the whole does not match the size or hash.
    /// Nothing of it is left on disk.
    #[error("the file failed verification ({0}); it stays on the relay for a retry")]
    Verification(String),
    /// The directory tree it holds is refused (a hostile or broken
    /// manifest); nothing of it was written.
    #[error("the directory it holds is refused: {0}; nothing of it was written (`sotto files --reject ID` deletes it)")]
    Tree(String),
    /// Talking to the relay failed; what arrived intact is kept for a resume.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The local disk failed.
    #[error("cannot write {}: {}", path.display(), describe_io(source))]
    Disk {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A worker thread went away (the runtime is shutting down).
    #[error("the download was cancelled")]
    Cancelled,
    /// The offer is larger than the client accepts; it stays on the relay.
    #[error("it is {size} bytes, more than max_download_size ({limit} bytes, in config.toml); raise that setting to receive it: it stays on the relay")]
    TooLarge {
        /// The offered size.
        size: u64,
        /// `max_download_size`.
        limit: u64,
    },
    /// The rest of the file does not fit in the directory; it stays on the relay.
    #[error("it needs {need} more bytes in {} but only {free} are free, and {FREE_SPACE_MARGIN} are kept spare; free some space or choose another --dir: it stays on the relay", dir.display())]
    NoSpace {
        /// The directory.
        dir: PathBuf,
        /// Bytes still to write.
        need: u64,
        /// Bytes free there.
        free: u64,
    },
}

/// The temporary file of a download of `file_id` into `dir`.
pub fn part_path(dir: &Path, file_id: FileId) -> PathBuf {
    dir.join(format!("{TEMP_PREFIX}{file_id}.part"))
}

/// A file being received: decrypts chunk by chunk into its temporary file.
pub struct PartFile {
    file: File,
    path: PathBuf,
    cipher: ChunkCipher,
    hash: ContentHash,
    expected_hash: [u8; 32],
    size: u64,
    chunks: u64,
    next: u64,
    written: u64,
}

impl std::fmt::Debug for PartFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartFile")
            .field("path", &self.path)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl PartFile {
    /// Opens the temporary file for `offer` in `dir`: a new one, or the one an
    /// interrupted download left, kept up to its last complete chunk and
    /// hashed again.
    pub fn open(dir: &Path, offer: &FileOffer) -> Result<Self, DownloadError> {
        let cipher = ChunkCipher::new(&offer.key, offer.file_id, offer.size).map_err(|_| {
            DownloadError::Verification("the offered size is larger than the format allows".into())
        })?;
        let path = part_path(dir, offer.file_id);
        let disk = |source| DownloadError::Disk {
            path: path.clone(),
            source,
        };
        let mut file = open_part(&path).map_err(disk)?;
        let chunks = chunk_count(offer.size);
        let len = file.metadata().map_err(disk)?.len();
        // The last chunk is always fetched again: a resumed download then
        // ends like any other, with the relay's `DownloadEnd` after it.
        let keep_chunks = (len / CHUNK_LEN as u64).min(chunks - 1);
        let keep = keep_chunks * CHUNK_LEN as u64;
        file.set_len(keep).map_err(disk)?;
        let mut hash = ContentHash::new();
        file.seek(SeekFrom::Start(0)).map_err(disk)?;
        let mut buf = vec![0u8; CHUNK_LEN];
        for _ in 0..keep_chunks {
            file.read_exact(&mut buf).map_err(disk)?;
            hash.update(&buf);
        }
        file.seek(SeekFrom::Start(keep)).map_err(disk)?;
        Ok(Self {
            file,
            path,
            cipher,
            hash,
            expected_hash: offer.hash,
            size: offer.size,
            chunks,
            next: keep_chunks,
            written: keep,
        })
    }

    /// The next chunk expected (where a resumed download starts).
    pub fn next_chunk(&self) -> u64 {
        self.next
    }

    /// Plaintext bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The temporary file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens sealed chunk `index`, which must be the next one, and appends
    /// its plaintext.
    pub fn write_chunk(&mut self, index: u64, sealed: Vec<u8>) -> Result<(), DownloadError> {
        if index != self.next {
            return Err(DownloadError::Verification(format!(
                "chunk {index} arrived where chunk {} was expected",
                self.next
            )));
        }
        let mut buf = sealed;
        self.cipher.open(index, &mut buf).map_err(|e| {
            DownloadError::Verification(match e {
                FileError::ChunkLength { .. } => format!("chunk {index} has the wrong length"),
                FileError::NoSuchChunk { .. } => {
                    format!("chunk {index} is past the end of the file")
                }
                _ => format!("chunk {index} failed to decrypt"),
            })
        })?;
        self.hash.update(&buf);
        self.file
            .write_all(&buf)
            .map_err(|source| DownloadError::Disk {
                path: self.path.clone(),
                source,
            })?;
        self.next += 1;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Checks that every chunk came and that the whole matches the offer's
    /// size and hash, and syncs the file; returns its path. A failed check
    /// removes the file.
    pub fn finish(self) -> Result<PathBuf, DownloadError> {
        let problem = if self.next != self.chunks {
            Some(format!(
                "the download ended after {} of {} chunks",
                self.next, self.chunks
            ))
        } else if self.written != self.size {
            Some(format!(
                "{} bytes where {} were offered",
                self.written, self.size
            ))
        } else if self.hash.finish() != self.expected_hash {
            Some("the content hash does not match".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(self.reject(DownloadError::Verification(problem)));
        }
        self.file.sync_all().map_err(|source| DownloadError::Disk {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.path)
    }

    /// Removes the temporary file if `e` says its content cannot be trusted
    /// (a resume would build on it); returns `e`.
    pub fn reject(self, e: DownloadError) -> DownloadError {
        if matches!(e, DownloadError::Verification(_)) {
            self.discard();
        }
        e
    }

    /// Removes the temporary file.
    pub fn discard(self) {
        let path = self.path.clone();
        drop(self);
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), "cannot remove a temporary file: {e}");
        }
    }
}

/// Opens (or creates, 0600) the temporary file without following a symlink
/// planted in its place.
fn open_part(path: &Path) -> io::Result<File> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path),
        Err(e) => Err(e),
        Ok(meta) if meta.is_file() => {
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let opened = file.metadata()?;
            if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
                return Err(io::Error::other("it was replaced while being opened"));
            }
            Ok(file)
        }
        Ok(_) => Err(io::Error::other(
            "it is in the way and is not a regular file; remove it",
        )),
    }
}

/// Writes chunks as they come; stops at the first that does not verify.
fn write_all(
    mut part: PartFile,
    mut chunks: mpsc::Receiver<SealedChunk>,
) -> Result<PartFile, DownloadError> {
    while let Some(chunk) = chunks.blocking_recv() {
        if let Err(e) = part.write_chunk(chunk.index, chunk.data) {
            return Err(part.reject(e));
        }
    }
    Ok(part)
}

/// Downloads the file of `offer` into `dir`, resuming an earlier attempt,
/// verifies it and publishes it under its sanitised name (or `name (N).ext`
/// if that is taken); returns where it is. `progress(done, total)` is called
/// with plaintext bytes, first with what an earlier attempt left. An offer
/// over `limits`, or whose rest does not fit in `dir`, is refused first.
pub async fn download<R, W>(
    conn: &mut RelayConn<R, W>,
    dir: &Path,
    offer: &FileOffer,
    kind: OfferKind,
    limits: &DownloadLimits,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<PathBuf, DownloadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    limits.check_size(offer)?;
    let size = offer.size;
    let part = {
        let (dir, offer, limits) = (dir.to_path_buf(), offer.clone(), limits.clone());
        joined(
            tokio::task::spawn_blocking(move || {
                let part = PartFile::open(&dir, &offer)?;
                let mut need = offer.size - part.written();
                if kind == OfferKind::Tree {
                    // The stream, and the tree unpacked from it.
                    need = need.saturating_add(offer.size);
                }
                match limits.check_space(&dir, need) {
                    Ok(()) => Ok(part),
                    Err(e) => {
                        // What an earlier attempt received is kept for later.
                        if part.written() == 0 {
                            part.discard();
                        }
                        Err(e)
                    }
                }
            })
            .await,
        )?
    };
    let from = part.next_chunk();
    if from > 0 {
        tracing::info!(from, "resuming a download");
    }
    progress(part.written(), size);
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || write_all(part, rx));
    let got = conn
        .download(offer.file_id, from, &tx, &mut |index| {
            progress(bytes_in_chunks(size, index + 1), size)
        })
        .await;
    drop(tx);
    let part = match (got, joined(writer.await)) {
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(part)) => {
            // A connection that dropped leaves the part for a resume; a
            // relay that refuses to go on (a damaged or vanished blob) ends
            // this attempt, and nothing of it is left.
            if part.written() == 0 || matches!(e, RelayError::Refused { .. }) {
                part.discard();
            }
            return Err(e.into());
        }
        (Ok(DownloadEnd::SinkClosed), Ok(_)) => return Err(DownloadError::Cancelled),
        (Ok(DownloadEnd::Ended), Ok(part)) => part,
    };
    let name = safe_file_name(&offer.name);
    let dir = dir.to_path_buf();
    let file_id = offer.file_id;
    joined(
        tokio::task::spawn_blocking(move || {
            let temp = part.finish()?;
            match kind {
                OfferKind::File => {
                    publish(&temp, &dir, &name).map_err(|source| DownloadError::Disk {
                        path: dir.join(&name),
                        source,
                    })
                }
                OfferKind::Tree => put_tree(&temp, &dir, file_id, &name, size),
            }
        })
        .await,
    )
}

/// Unpacks a verified tree's stream `temp` and removes it; a refused tree
/// removes it too (the same stream would be refused again).
fn put_tree(
    temp: &Path,
    dir: &Path,
    file_id: FileId,
    name: &str,
    size: u64,
) -> Result<PathBuf, DownloadError> {
    let result = unpack(temp, dir, file_id, name, size);
    if matches!(result, Ok(_) | Err(UnpackError::Refused(_))) {
        if let Err(e) = fs::remove_file(temp) {
            tracing::warn!(path = %temp.display(), "cannot remove a temporary file: {e}");
        }
        crate::publish::sync_dir(dir);
    }
    result.map_err(|e| match e {
        UnpackError::Refused(why) => DownloadError::Tree(why),
        UnpackError::Disk { path, source } => DownloadError::Disk { path, source },
    })
}

fn joined<T>(
    r: Result<Result<T, DownloadError>, tokio::task::JoinError>,
) -> Result<T, DownloadError> {
    r.unwrap_or(Err(DownloadError::Cancelled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay_client::test_relay::{fake_relay, TestConn};
    use serde_bytes::ByteBuf;
    use sotto_crypto::file::FileKey;
    use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};

    fn no_limits() -> DownloadLimits {
        DownloadLimits::with_free_space(u64::MAX, |_| Ok(u64::MAX))
    }

    fn data(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn hash(data: &[u8]) -> [u8; 32] {
        let mut h = ContentHash::new();
        h.update(data);
        h.finish()
    }

    fn offer(name: &str, content: &[u8]) -> FileOffer {
        FileOffer {
            file_id: FileId::random(),
            name: name.to_owned(),
            size: content.len() as u64,
            hash: hash(content),
            key: FileKey::generate(),
        }
    }

    fn seal_all(offer: &FileOffer, content: &[u8]) -> Vec<Vec<u8>> {
        let c = ChunkCipher::new(&offer.key, offer.file_id, offer.size).unwrap();
        (0..c.chunks())
            .map(|i| {
                let start = i as usize * CHUNK_LEN;
                let end = (start + CHUNK_LEN).min(content.len());
                let mut buf = content[start..end].to_vec();
                c.seal(i, &mut buf).unwrap();
                buf
            })
            .collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    type Served = Vec<(u64, Vec<u8>)>;

    /// A relay that serves `chunks` (index, bytes) for a `Download`, checks
    /// `from`, and ends with `DownloadEnd` unless `hang_up`.
    async fn serving(expect_from: u64, chunks: Served, hang_up: bool) -> TestConn {
        fake_relay(move |mut r, mut w| async move {
            let Some(ClientMsg::Download { req, file_id, from }) = r.recv().await.unwrap() else {
                panic!("expected Download")
            };
            assert_eq!(from, expect_from);
            for (index, data) in chunks {
                w.send(&RelayMsg::DownloadChunk {
                    file_id,
                    index,
                    data: ByteBuf::from(data),
                })
                .await
                .unwrap();
            }
            if hang_up {
                w.flush().await.unwrap();
                return;
            }
            w.send(&RelayMsg::DownloadEnd { req, file_id })
                .await
                .unwrap();
            w.flush().await.unwrap();
            // Keep the connection open until the client is done with it.
            let _ = r.recv::<ClientMsg>().await;
        })
        .await
    }

    #[tokio::test]
    async fn a_file_arrives_verified_under_its_sanitised_name() {
        let dir = tempfile::tempdir().unwrap();
        for (size, name) in [
            (0, "empty"),
            (1, "one"),
            (CHUNK_LEN, "exact"),
            (3 * CHUNK_LEN, "multiple"),
            (3 * CHUNK_LEN + 5, "../../etc/passwd"),
        ] {
            let content = data(size);
            let offer = offer(name, &content);
            let sealed = seal_all(&offer, &content);
            let mut conn = serving(
                0,
                sealed
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| (i as u64, c))
                    .collect(),
                false,
            )
            .await;
            let mut calls = Vec::new();
            let path = download(
                &mut conn,
                dir.path(),
                &offer,
                OfferKind::File,
                &no_limits(),
                &mut |d, t| calls.push((d, t)),
            )
            .await
            .unwrap();
            assert_eq!(path, dir.path().join(safe_file_name(name)));
            assert_eq!(fs::read(&path).unwrap(), content, "{name}");
            let size = size as u64;
            assert_eq!(calls.first(), Some(&(0, size)));
            assert_eq!(calls.last(), Some(&(size, size)));
            assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(!part_path(dir.path(), offer.file_id).exists());
        }
        assert_eq!(
            entries(dir.path()),
            vec!["empty", "exact", "multiple", "one", "passwd"]
        );
    }

    #[tokio::test]
    async fn an_existing_file_is_kept_and_the_new_one_numbered() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"my own notes").unwrap();
        let content = data(100);
        let offer = offer("notes.txt", &content);
        let sealed = seal_all(&offer, &content);
        let mut conn = serving(0, vec![(0, sealed[0].clone())], false).await;
        let path = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &no_limits(),
            &mut |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(path, dir.path().join("notes (1).txt"));
        assert_eq!(fs::read(&path).unwrap(), content);
        assert_eq!(
            fs::read(dir.path().join("notes.txt")).unwrap(),
            b"my own notes"
        );
    }

    #[tokio::test]
    async fn every_kind_of_tampering_fails_that_file_and_leaves_nothing() {
        let content = data(3 * CHUNK_LEN + 9);
        let good = offer("report.pdf", &content);
        let sealed = seal_all(&good, &content);
        let other = offer("other.bin", &content);
        let other_sealed = seal_all(&other, &content);
        let indexed = |v: Vec<Vec<u8>>| -> Served {
            v.into_iter()
                .enumerate()
                .map(|(i, c)| (i as u64, c))
                .collect()
        };

        let mut flipped = sealed.clone();
        flipped[1][100] ^= 1;
        let mut reordered = indexed(sealed.clone());
        reordered.swap(0, 1);
        let mut reordered_relabelled = sealed.clone();
        reordered_relabelled.swap(0, 1);
        let mut duplicated = sealed.clone();
        duplicated[2] = duplicated[1].clone();
        let truncated = indexed(sealed[..3].to_vec());
        let mut swapped = sealed.clone();
        swapped[2] = other_sealed[2].clone();
        let mut short = sealed.clone();
        short[3].pop();
        let mut extended = indexed(sealed.clone());
        extended.push((4, sealed[3].clone()));

        let cases: Vec<(&str, Served, &str)> = vec![
            ("flipped bit", indexed(flipped), "chunk 1 failed to decrypt"),
            (
                "reordered",
                reordered,
                "chunk 1 arrived where chunk 0 was expected",
            ),
            (
                "reordered, relabelled",
                indexed(reordered_relabelled),
                "chunk 0 failed to decrypt",
            ),
            (
                "duplicated",
                indexed(duplicated),
                "chunk 2 failed to decrypt",
            ),
            (
                "truncated",
                truncated,
                "the download ended after 3 of 4 chunks",
            ),
            (
                "swapped from another file",
                indexed(swapped),
                "chunk 2 failed to decrypt",
            ),
            (
                "short chunk",
                indexed(short),
                "chunk 3 has the wrong length",
            ),
            ("extended", extended, "chunk 4 is past the end of the file"),
        ];
        for (what, chunks, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut conn = serving(0, chunks, false).await;
            let err = download(
                &mut conn,
                dir.path(),
                &good,
                OfferKind::File,
                &no_limits(),
                &mut |_, _| {},
            )
            .await
            .unwrap_err();
            assert!(
                matches!(err, DownloadError::Verification(_)),
                "{what}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!("the file failed verification ({why}); it stays on the relay for a retry"),
                "{what}"
            );
            assert!(
                entries(dir.path()).is_empty(),
                "{what}: {:?}",
                entries(dir.path())
            );
        }

        // A hash that does not match what was offered.
        let dir = tempfile::tempdir().unwrap();
        let mut lying = good.clone();
        lying.hash[0] ^= 1;
        let mut conn = serving(0, indexed(sealed.clone()), false).await;
        let err = download(
            &mut conn,
            dir.path(),
            &lying,
            OfferKind::File,
            &no_limits(),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("the content hash does not match"),
            "{err}"
        );
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn the_chunk_writer_rejects_a_tampered_chunk_and_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(2 * CHUNK_LEN + 1);
        let offer = offer("x.bin", &content);
        let mut sealed = seal_all(&offer, &content);
        let mut part = PartFile::open(dir.path(), &offer).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(part.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        part.write_chunk(0, sealed[0].clone()).unwrap();
        sealed[1][0] ^= 0x80;
        let err = part.write_chunk(1, sealed[1].clone()).unwrap_err();
        let err = part.reject(err);
        assert!(matches!(err, DownloadError::Verification(_)), "{err}");
        assert!(entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_dropped_download_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(4 * CHUNK_LEN + 10);
        let offer = offer("big.iso", &content);
        let sealed = seal_all(&offer, &content);

        // Two chunks, then the connection drops.
        let mut conn = serving(
            0,
            vec![(0, sealed[0].clone()), (1, sealed[1].clone())],
            true,
        )
        .await;
        let err = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &no_limits(),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DownloadError::Relay(_)), "{err}");
        let part = part_path(dir.path(), offer.file_id);
        assert_eq!(fs::metadata(&part).unwrap().len(), 2 * CHUNK_LEN as u64);
        // A partly written third chunk is dropped on resume.
        let mut f = OpenOptions::new().append(true).open(&part).unwrap();
        f.write_all(&content[2 * CHUNK_LEN..2 * CHUNK_LEN + 500])
            .unwrap();
        drop(f);

        let rest = (2..5).map(|i| (i as u64, sealed[i].clone())).collect();
        let mut conn = serving(2, rest, false).await;
        let mut calls = Vec::new();
        let path = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &no_limits(),
            &mut |d, t| calls.push((d, t)),
        )
        .await
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), content);
        assert_eq!(calls[0], (2 * CHUNK_LEN as u64, content.len() as u64));
        assert_eq!(entries(dir.path()), vec!["big.iso"]);
    }

    #[tokio::test]
    async fn a_complete_leftover_still_ends_with_the_last_chunk_from_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(2 * CHUNK_LEN);
        let offer = offer("f", &content);
        let sealed = seal_all(&offer, &content);
        fs::write(part_path(dir.path(), offer.file_id), &content).unwrap();
        let mut conn = serving(1, vec![(1, sealed[1].clone())], false).await;
        let path = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &no_limits(),
            &mut |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(fs::read(path).unwrap(), content);
    }

    #[tokio::test]
    async fn a_refused_download_leaves_no_empty_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(10);
        let offer = offer("f", &content);
        let mut conn = fake_relay(|mut r, mut w| async move {
            let Some(ClientMsg::Download { req, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::Error {
                req,
                code: ErrorCode::BadRequest,
                detail: "no such file".into(),
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
        })
        .await;
        let err = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &no_limits(),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DownloadError::Relay(RelayError::Refused { .. })),
            "{err}"
        );
        assert!(entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_relay_that_refuses_mid_stream_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(3 * CHUNK_LEN);
        let offer = offer("f", &content);
        let first = seal_all(&offer, &content).swap_remove(0);
        let mut conn = fake_relay(move |mut r, mut w| async move {
            let Some(ClientMsg::Download { req, file_id, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::DownloadChunk {
                file_id,
                index: 0,
                data: ByteBuf::from(first),
            })
            .await
            .unwrap();
            w.send(&RelayMsg::Error {
                req,
                code: ErrorCode::Internal,
                detail: "stored file damaged".into(),
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
            let _ = r.recv::<ClientMsg>().await;
        })
        .await;
        let err = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &no_limits(),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DownloadError::Relay(RelayError::Refused { .. })),
            "{err}"
        );
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn a_symlink_in_place_of_the_temporary_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let content = data(10);
        let offer = offer("f", &content);
        std::os::unix::fs::symlink(&victim, part_path(dir.path(), offer.file_id)).unwrap();
        let err = PartFile::open(dir.path(), &offer).unwrap_err();
        assert!(matches!(err, DownloadError::Disk { .. }), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    /// A relay that must not be asked for anything.
    async fn silent() -> TestConn {
        fake_relay(|mut r, _w| async move {
            if let Ok(Some(msg)) = r.recv::<ClientMsg>().await {
                panic!("the relay was asked {msg:?}");
            }
        })
        .await
    }

    #[tokio::test]
    async fn an_offer_over_the_size_limit_is_refused_before_anything_is_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(CHUNK_LEN + 1);
        let offer = offer("big.iso", &content);
        let mut conn = silent().await;
        let limits = DownloadLimits::with_free_space(CHUNK_LEN as u64, |_| Ok(u64::MAX));
        let err = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &limits,
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DownloadError::TooLarge { size, limit } if size == offer.size && limit == CHUNK_LEN as u64),
            "{err}"
        );
        assert!(entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_download_starts_only_if_the_rest_fits_and_keeps_what_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(4 * CHUNK_LEN);
        let offer = offer("big.iso", &content);
        let sealed = seal_all(&offer, &content);
        let size = content.len() as u64;

        // Nothing yet: the whole file must fit, and no empty part is left.
        let tight = move |free: u64| {
            DownloadLimits::with_free_space(u64::MAX, move |_| Ok(free + FREE_SPACE_MARGIN))
        };
        let mut conn = silent().await;
        let err = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &tight(size - 1),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DownloadError::NoSpace { need, .. } if need == size),
            "{err}"
        );
        assert!(entries(dir.path()).is_empty());

        // Half of it arrived before: only the rest must fit, and the half
        // is kept when even that does not.
        let half = 2 * CHUNK_LEN;
        fs::write(part_path(dir.path(), offer.file_id), &content[..half]).unwrap();
        let rest = size - half as u64;
        let mut conn = silent().await;
        let err = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &tight(rest - 1),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DownloadError::NoSpace { need, .. } if need == rest),
            "{err}"
        );
        assert_eq!(
            fs::metadata(part_path(dir.path(), offer.file_id))
                .unwrap()
                .len(),
            half as u64
        );
        let served = (2..4).map(|i| (i as u64, sealed[i].clone())).collect();
        let mut conn = serving(2, served, false).await;
        let path = download(
            &mut conn,
            dir.path(),
            &offer,
            OfferKind::File,
            &tight(rest),
            &mut |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(fs::read(path).unwrap(), content);
    }
}
