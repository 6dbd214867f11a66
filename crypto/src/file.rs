//! File chunks for the encrypted file drop.
//!
//! A file is sealed before it leaves the sender, under a fresh random key of its
//! own, in chunks of [`CHUNK_LEN`] plaintext bytes (the last one shorter, an
//! empty file one empty chunk). Each chunk is sealed with the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as implemented by
//! `aead::stream::StreamBE32` over ChaCha20-Poly1305: the nonce is a 7-byte
//! random prefix, the 32-bit big-endian chunk index and a last-chunk flag
//! byte. So a chunk opens only at its own index (reordering and duplication
//! fail), the last chunk only as the last (truncation and extension fail), and
//! only under its own file's key (swapping chunks between files fails). The
//! associated data binds the relay's file id and the file size as well.
//!
//! Random access by index (rather than a stateful encryptor) is what makes
//! uploads and downloads resumable from any chunk.
//!
//! The key, name, size and a BLAKE3 hash of the plaintext travel to the
//! recipient in an end-to-end envelope ([`FileOffer`]); the relay sees the
//! file id, the recipient, the size and the sealed chunks.

use std::fmt;

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Plaintext bytes per chunk.
pub const CHUNK_LEN: usize = 64 * 1024;
/// Authentication tag per chunk.
pub const TAG_LEN: usize = 16;
/// A full sealed chunk.
pub const SEALED_CHUNK_LEN: usize = CHUNK_LEN + TAG_LEN;
/// Largest file: the STREAM counter is 32 bits.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64 * CHUNK_LEN as u64;
/// Length of the nonce prefix (12-byte nonce minus 4 counter bytes and 1 flag byte).
pub const NONCE_PREFIX_LEN: usize = 7;
const AAD_LABEL: &[u8] = b"sotto file v1";

/// A failure sealing or opening a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file is larger than the format allows.
    #[error("file too large: at most {MAX_FILE_SIZE} bytes")]
    TooLarge,
    /// A chunk index past the last chunk.
    #[error("chunk {index} is past the end of the file ({chunks} chunks)")]
    NoSuchChunk {
        /// The index.
        index: u64,
        /// The file's chunk count.
        chunks: u64,
    },
    /// A chunk of the wrong length for its position.
    #[error("chunk {index} has {got} bytes where {expected} belong")]
    ChunkLength {
        /// The index.
        index: u64,
        /// Its length.
        got: usize,
        /// The length at that position.
        expected: usize,
    },
    /// Tampered, reordered, duplicated, truncated or from another file.
    #[error("decryption failed")]
    Decrypt,
}

/// The relay's name for a file: 16 random bytes, nothing derived from content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub [u8; 16]);

impl FileId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        Self(id)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

/// A file's secret: its ChaCha20-Poly1305 key and STREAM nonce prefix.
/// Zeroized on drop; never printed.
#[derive(Clone, Serialize, Deserialize)]
pub struct FileKey {
    key: Zeroizing<[u8; 32]>,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl FileKey {
    /// A fresh random key and nonce prefix.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        OsRng.fill_bytes(&mut nonce_prefix);
        Self { key, nonce_prefix }
    }

    /// Rebuilds a key from its parts (a stored upload being resumed).
    pub fn from_parts(key: Zeroizing<[u8; 32]>, nonce_prefix: [u8; NONCE_PREFIX_LEN]) -> Self {
        Self { key, nonce_prefix }
    }

    /// The key bytes (for storing an upload's state, 0600).
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The nonce prefix.
    pub fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

impl PartialEq for FileKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.key.as_slice().ct_eq(other.key.as_slice()))
            && self.nonce_prefix == other.nonce_prefix
    }
}

impl Eq for FileKey {}

/// What the recipient needs to fetch, open and check a dropped file. Travels
/// only inside an end-to-end envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// The relay's id of the sealed blob.
    pub file_id: FileId,
    /// The sender's name for the file (untrusted: sanitise before use).
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// BLAKE3 of the plaintext.
    pub hash: [u8; 32],
    /// The file's key.
    pub key: FileKey,
}

/// Number of chunks of a file of `size` bytes (an empty file has one).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_LEN as u64).max(1)
}

/// Plaintext length of chunk `index` of a file of `size` bytes.
pub fn chunk_len(size: u64, index: u64) -> Option<usize> {
    let chunks = chunk_count(size);
    if index >= chunks {
        return None;
    }
    if index + 1 < chunks {
        return Some(CHUNK_LEN);
    }
    Some((size - index * CHUNK_LEN as u64) as usize)
}

/// Sealed length of chunk `index`.
pub fn sealed_chunk_len(size: u64, index: u64) -> Option<usize> {
    chunk_len(size, index).map(|n| n + TAG_LEN)
}

/// Total sealed length of a file of `size` bytes. Any `u64` is accepted, as
/// sizes come from the network: past [`MAX_FILE_SIZE`] the answer saturates
/// at `u64::MAX`, which no quota admits.
pub fn sealed_len(size: u64) -> u64 {
    size.saturating_add(chunk_count(size) * TAG_LEN as u64)
}

/// Byte offset of sealed chunk `index` in the sealed file (saturating, like
/// [`sealed_len`], for an index no file of the format has).
pub fn sealed_offset(index: u64) -> u64 {
    index.saturating_mul(SEALED_CHUNK_LEN as u64)
}

/// Seals and opens the chunks of one file.
pub struct ChunkCipher {
    stream: StreamBE32<ChaCha20Poly1305>,
    aad: [u8; AAD_LABEL.len() + 16 + 8],
    size: u64,
    chunks: u64,
}

impl ChunkCipher {
    /// A cipher for file `file_id` of `size` plaintext bytes under `key`.
    pub fn new(key: &FileKey, file_id: FileId, size: u64) -> Result<Self, FileError> {
        if size > MAX_FILE_SIZE {
            return Err(FileError::TooLarge);
        }
        let aead = ChaCha20Poly1305::new(key.key.as_ref().into());
        let stream = StreamBE32::from_aead(aead, key.nonce_prefix.as_ref().into());
        let mut aad = [0u8; AAD_LABEL.len() + 16 + 8];
        aad[..AAD_LABEL.len()].copy_from_slice(AAD_LABEL);
        aad[AAD_LABEL.len()..AAD_LABEL.len() + 16].copy_from_slice(&file_id.0);
        aad[AAD_LABEL.len() + 16..].copy_from_slice(&size.to_be_bytes());
        Ok(Self {
            stream,
            aad,
            size,
            chunks: chunk_count(size),
        })
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    fn position(&self, index: u64) -> Result<(u32, bool), FileError> {
        if index >= self.chunks {
            return Err(FileError::NoSuchChunk {
                index,
                chunks: self.chunks,
            });
        }
        let position = u32::try_from(index).map_err(|_| FileError::TooLarge)?;
        Ok((position, index + 1 == self.chunks))
    }

    /// The STREAM position and last-chunk flag of chunk `index`, once `got`
    /// bytes are checked to be exactly `expected` for that position.
    fn checked(
        &self,
        index: u64,
        got: usize,
        expected: Option<usize>,
    ) -> Result<(u32, bool), FileError> {
        let position = self.position(index)?;
        let expected = expected.unwrap_or(0);
        if got != expected {
            return Err(FileError::ChunkLength {
                index,
                got,
                expected,
            });
        }
        Ok(position)
    }

    /// Seals chunk `index` in place: `buf` holds its plaintext and receives
    /// the sealed chunk.
    pub fn seal(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), FileError> {
        let (position, last) = self.checked(index, buf.len(), chunk_len(self.size, index))?;
        self.stream
            .encrypt_in_place(position, last, &self.aad, buf)
            .map_err(|_| FileError::Decrypt)
    }

    /// Opens sealed chunk `index` in place: `buf` holds the sealed chunk and
    /// receives its plaintext.
    pub fn open(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), FileError> {
        let (position, last) =
            self.checked(index, buf.len(), sealed_chunk_len(self.size, index))?;
        self.stream
            .decrypt_in_place(position, last, &self.aad, buf)
            .map_err(|_| FileError::Decrypt)
    }
}

/// The content hash of a dropped file (BLAKE3), computed incrementally.
#[derive(Default, Clone)]
pub struct ContentHash(blake3::Hasher);

impl ContentHash {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds plaintext.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The 32-byte hash.
    pub fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed_file(key: &FileKey, id: FileId, data: &[u8]) -> Vec<Vec<u8>> {
        let c = ChunkCipher::new(key, id, data.len() as u64).unwrap();
        (0..c.chunks())
            .map(|i| {
                let start = (i as usize) * CHUNK_LEN;
                let end = (start + CHUNK_LEN).min(data.len());
                let mut buf = data[start..end].to_vec();
                c.seal(i, &mut buf).unwrap();
                buf
            })
            .collect()
    }

    fn open_all(
        key: &FileKey,
        id: FileId,
        size: u64,
        chunks: &[Vec<u8>],
    ) -> Result<Vec<u8>, FileError> {
        let c = ChunkCipher::new(key, id, size)?;
        if chunks.len() as u64 != c.chunks() {
            return Err(FileError::Decrypt);
        }
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut buf = chunk.clone();
            c.open(i as u64, &mut buf)?;
            out.extend_from_slice(&buf);
        }
        Ok(out)
    }

    #[test]
    fn layout_of_boundary_sizes() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_len(0, 0), Some(0));
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_LEN as u64), 1);
        assert_eq!(chunk_len(CHUNK_LEN as u64, 0), Some(CHUNK_LEN));
        assert_eq!(chunk_count(CHUNK_LEN as u64 + 1), 2);
        assert_eq!(chunk_len(CHUNK_LEN as u64 + 1, 1), Some(1));
        assert_eq!(chunk_len(CHUNK_LEN as u64 + 1, 2), None);
        assert_eq!(sealed_len(0), 16);
        // Sizes from the network are any u64: the layout saturates, never overflows.
        assert_eq!(sealed_len(u64::MAX), u64::MAX);
        assert_eq!(sealed_len(0xFFFF_FFFF_0000_0000), u64::MAX);
        assert_eq!(sealed_offset(u64::MAX), u64::MAX);
        assert_eq!(
            sealed_len(3 * CHUNK_LEN as u64),
            3 * SEALED_CHUNK_LEN as u64
        );
    }

    #[test]
    fn round_trips_at_the_boundaries() {
        let key = FileKey::generate();
        let id = FileId::random();
        for size in [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            3 * CHUNK_LEN,
            3 * CHUNK_LEN + 7,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = sealed_file(&key, id, &data);
            assert_eq!(
                sealed.iter().map(Vec::len).sum::<usize>() as u64,
                sealed_len(size as u64)
            );
            assert_eq!(
                open_all(&key, id, size as u64, &sealed).unwrap(),
                data,
                "size {size}"
            );
        }
    }

    #[test]
    fn reordered_duplicated_truncated_extended_swapped_and_flipped_chunks_fail() {
        let key = FileKey::generate();
        let id = FileId::random();
        let size = 3 * CHUNK_LEN as u64 + 5;
        let data = vec![0x42u8; size as usize];
        let sealed = sealed_file(&key, id, &data);

        let mut reordered = sealed.clone();
        reordered.swap(0, 1);
        assert!(open_all(&key, id, size, &reordered).is_err());

        let mut duplicated = sealed.clone();
        duplicated[1] = duplicated[0].clone();
        assert!(open_all(&key, id, size, &duplicated).is_err());

        // Dropping the last chunk, and claiming the file ends there.
        let truncated = &sealed[..3];
        assert!(open_all(&key, id, 3 * CHUNK_LEN as u64, truncated).is_err());

        let other_key = FileKey::generate();
        let other = sealed_file(&other_key, id, &data);
        let mut swapped = sealed.clone();
        swapped[1] = other[1].clone();
        assert!(open_all(&key, id, size, &swapped).is_err());

        // Same key, another file id: the associated data differs.
        assert!(open_all(&key, FileId::random(), size, &sealed).is_err());

        let mut flipped = sealed.clone();
        flipped[2][100] ^= 1;
        assert_eq!(open_all(&key, id, size, &flipped), Err(FileError::Decrypt));
    }

    #[test]
    fn chunks_of_the_wrong_length_or_position_are_refused_before_decrypting() {
        let key = FileKey::generate();
        let c = ChunkCipher::new(&key, FileId::random(), 10).unwrap();
        let mut buf = vec![0u8; 11];
        assert!(matches!(
            c.seal(0, &mut buf),
            Err(FileError::ChunkLength { .. })
        ));
        assert!(matches!(
            c.open(1, &mut buf),
            Err(FileError::NoSuchChunk { .. })
        ));
        assert!(ChunkCipher::new(&key, FileId::random(), MAX_FILE_SIZE + 1).is_err());
    }

    #[test]
    fn the_key_never_prints() {
        let key = FileKey::generate();
        assert_eq!(format!("{key:?}"), "FileKey(..)");
    }

    proptest! {
        #[test]
        fn opening_garbage_never_panics(index in 0u64..5, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let c = ChunkCipher::new(&FileKey::generate(), FileId::random(), 150).unwrap();
            let mut buf = bytes;
            prop_assert!(c.open(index, &mut buf).is_err());
        }
    }
}
