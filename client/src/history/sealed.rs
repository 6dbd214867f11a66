//! The byte layout of `history.sealed`: a header, then records sealed one by
//! one, so that appending costs one record and a crash in the middle of an
//! append spoils only that record.
//!
//! ```text
//! file   = header | record*
//! header = "sotto-history\0" (14 bytes) | version 01 | check (40 bytes)
//! check  = seal(ad = the first 15 bytes, plaintext = empty)
//! record = length (u32 LE, of what follows) | seal(ad = the first 15 bytes | offset, postcard(entry))
//! ```
//!
//! `seal` is [`AtRestKey::seal`] (random nonce, XChaCha20-Poly1305) under the
//! key derived from the identity with the label [`KEY_LABEL`]. The check lets
//! a reader tell "another identity's file" from "damage" before it reads a
//! record, so a foreign file is refused rather than appended to. `offset` is
//! the record's own position in the file (u64 LE, where its length field
//! starts): a record moved, copied elsewhere or spliced from another history
//! no longer opens.
//!
//! A record is whole when its length lies in `OVERHEAD + 1 ..= MAX_SEALED_LEN`
//! and that many bytes follow. The first one that is not ends the readable
//! part: what follows it (a torn append, or zeros a file system left after a
//! crash) is the tail, ignored by readers and cut off by the next append. A
//! whole record that does not open (a flipped bit) is skipped on its own.

use std::io::{self, Read};

use sotto_crypto::at_rest::{AtRestKey, OVERHEAD};
use sotto_keys::SecretKey;
use zeroize::Zeroizing;

use super::Entry;

/// The label of the history's key, apart from every other local file's.
pub const KEY_LABEL: &[u8] = b"sotto history key v1";
/// The file's first bytes.
pub const MAGIC: &[u8; 14] = b"sotto-history\0";
/// The layout described here.
pub const VERSION: u8 = 1;
/// Magic and version: the associated data of every seal in the file.
const PREFIX_LEN: usize = MAGIC.len() + 1;
/// Magic, version and check.
pub const HEADER_LEN: usize = PREFIX_LEN + OVERHEAD;
/// Largest entry kept, encoded: far above the longest message (an envelope
/// body is at most 64 KiB), low enough that a damaged length cannot make a
/// reader allocate much.
pub const MAX_ENTRY_LEN: usize = 256 * 1024;
/// Largest sealed record.
const MAX_SEALED_LEN: usize = MAX_ENTRY_LEN + OVERHEAD;

/// The key of one identity's history.
pub struct HistoryKey(AtRestKey);

/// Why a file is not a history this identity can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The magic is missing.
    #[error("is not a sotto history file")]
    NotHistory,
    /// Another layout, written by another version of sotto.
    #[error("has history format version {0}, which this sotto does not read; upgrade sotto")]
    Version(u8),
    /// The check does not open: another identity, or damage.
    #[error("was sealed under another identity than this home's key, or is damaged")]
    WrongKey,
    /// A local crypto operation failed.
    #[error("cannot be sealed (internal crypto error)")]
    Internal,
}

fn prefix() -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[..MAGIC.len()].copy_from_slice(MAGIC);
    p[MAGIC.len()] = VERSION;
    p
}

fn record_ad(offset: u64) -> [u8; PREFIX_LEN + 8] {
    let mut ad = [0u8; PREFIX_LEN + 8];
    ad[..PREFIX_LEN].copy_from_slice(&prefix());
    ad[PREFIX_LEN..].copy_from_slice(&offset.to_le_bytes());
    ad
}

impl HistoryKey {
    /// The history key of the identity `me`.
    pub fn derive(me: &SecretKey) -> Result<Self, HeaderError> {
        AtRestKey::derive(me, KEY_LABEL)
            .map(Self)
            .map_err(|_| HeaderError::Internal)
    }

    /// A new file's header.
    pub fn header(&self) -> Result<Vec<u8>, HeaderError> {
        let prefix = prefix();
        let check = self
            .0
            .seal(&prefix, &[])
            .map_err(|_| HeaderError::Internal)?;
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&check);
        Ok(out)
    }

    /// Checks a header read from a file (`HEADER_LEN` bytes or fewer).
    pub fn check_header(&self, header: &[u8]) -> Result<(), HeaderError> {
        if header.len() < PREFIX_LEN || header[..MAGIC.len()] != MAGIC[..] {
            return Err(HeaderError::NotHistory);
        }
        if header[MAGIC.len()] != VERSION {
            return Err(HeaderError::Version(header[MAGIC.len()]));
        }
        self.0
            .open(&header[..PREFIX_LEN], &header[PREFIX_LEN..])
            .map(|_| ())
            .map_err(|_| HeaderError::WrongKey)
    }

    /// The record of `entry` for position `offset`: length and sealed bytes.
    pub fn record(&self, offset: u64, entry: &Entry) -> Result<Vec<u8>, RecordError> {
        let plain = Zeroizing::new(postcard::to_stdvec(entry).map_err(|_| RecordError::Encode)?);
        if plain.len() > MAX_ENTRY_LEN {
            return Err(RecordError::TooLong(plain.len()));
        }
        let sealed = self
            .0
            .seal(&record_ad(offset), &plain)
            .map_err(|_| RecordError::Encode)?;
        // At most MAX_SEALED_LEN, which fits a u32.
        let len = u32::try_from(sealed.len()).map_err(|_| RecordError::TooLong(plain.len()))?;
        let mut out = Vec::with_capacity(4 + sealed.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The entry in the sealed bytes of the record at `offset`, if they open
    /// and decode.
    pub fn open(&self, offset: u64, sealed: &[u8]) -> Option<Entry> {
        let plain = self.0.open(&record_ad(offset), sealed).ok()?;
        postcard::from_bytes(&plain).ok()
    }
}

/// Why an entry cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Longer than [`MAX_ENTRY_LEN`] encoded.
    #[error("a history entry of {0} bytes is longer than the {MAX_ENTRY_LEN} a record holds")]
    TooLong(usize),
    /// Encoding or sealing failed.
    #[error("cannot encode a history entry")]
    Encode,
}

/// Where the whole records of a file end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Offset just past the last whole record (the header's end if none).
    pub end: u64,
    /// Bytes after it that are no whole record: a torn append.
    pub tail: u64,
}

/// Reads the records that follow the header from `reader` (positioned just
/// after it) and hands each whole one to `each` with its offset; stops at the
/// first one that is not whole.
pub fn scan(
    reader: &mut impl Read,
    file_len: u64,
    mut each: impl FnMut(u64, &[u8]),
) -> io::Result<Scan> {
    let mut offset = HEADER_LEN as u64;
    let mut buf = Vec::new();
    loop {
        let left = file_len.saturating_sub(offset);
        if left < 4 {
            return Ok(Scan {
                end: offset,
                tail: left,
            });
        }
        let mut len = [0u8; 4];
        reader.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if !(OVERHEAD + 1..=MAX_SEALED_LEN).contains(&len) || left - 4 < len as u64 {
            return Ok(Scan {
                end: offset,
                tail: left,
            });
        }
        buf.resize(len, 0);
        reader.read_exact(&mut buf)?;
        each(offset, &buf);
        offset += 4 + len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Direction;
    use sotto_keys::PublicKey;

    fn entry(text: &str) -> Entry {
        Entry {
            at_ms: 1,
            direction: Direction::Sent,
            peer: Some(PublicKey::from_bytes([9; 32])),
            group: None,
            text: text.into(),
        }
    }

    #[test]
    fn a_record_opens_only_at_its_own_offset_and_in_its_own_file() {
        let key = HistoryKey::derive(&SecretKey::generate()).unwrap();
        let record = key.record(55, &entry("hello")).unwrap();
        let sealed = &record[4..];
        assert_eq!(key.open(55, sealed), Some(entry("hello")));
        assert_eq!(key.open(56, sealed), None);
        let other = HistoryKey::derive(&SecretKey::generate()).unwrap();
        assert_eq!(other.open(55, sealed), None);
        // The session state's key (another label, same identity) does not open it.
        let me = SecretKey::generate();
        let key = HistoryKey::derive(&me).unwrap();
        let record = key.record(55, &entry("hello")).unwrap();
        let foreign = AtRestKey::derive(&me, b"sotto session state key v1").unwrap();
        assert!(foreign.open(&record_ad(55), &record[4..]).is_err());
    }

    #[test]
    fn the_header_tells_versions_magic_and_identities_apart() {
        let key = HistoryKey::derive(&SecretKey::generate()).unwrap();
        let header = key.header().unwrap();
        assert_eq!(header.len(), HEADER_LEN);
        assert_eq!(key.check_header(&header), Ok(()));
        let other = HistoryKey::derive(&SecretKey::generate()).unwrap();
        assert_eq!(other.check_header(&header), Err(HeaderError::WrongKey));
        let mut v2 = header.clone();
        v2[MAGIC.len()] = 2;
        assert_eq!(key.check_header(&v2), Err(HeaderError::Version(2)));
        assert_eq!(
            key.check_header(b"\x05\x00\x00\x00hello"),
            Err(HeaderError::NotHistory)
        );
        assert_eq!(
            key.check_header(&header[..HEADER_LEN - 1]),
            Err(HeaderError::WrongKey)
        );
    }

    #[test]
    fn an_entry_too_long_for_a_record_is_refused() {
        let key = HistoryKey::derive(&SecretKey::generate()).unwrap();
        let err = key
            .record(55, &entry(&"x".repeat(MAX_ENTRY_LEN)))
            .unwrap_err();
        assert!(matches!(err, RecordError::TooLong(_)), "{err}");
    }

    #[test]
    fn a_scan_stops_at_the_first_record_that_is_not_whole() {
        let key = HistoryKey::derive(&SecretKey::generate()).unwrap();
        let mut file = key.header().unwrap();
        let first = key.record(file.len() as u64, &entry("a")).unwrap();
        file.extend_from_slice(&first);
        let whole = file.len() as u64;
        let scan_of = |bytes: &[u8]| {
            let mut seen = Vec::new();
            let s = scan(&mut &bytes[HEADER_LEN..], bytes.len() as u64, |o, b| {
                seen.push(key.open(o, b))
            })
            .unwrap();
            (s, seen)
        };
        assert_eq!(
            scan_of(&file),
            (
                Scan {
                    end: whole,
                    tail: 0
                },
                vec![Some(entry("a"))]
            )
        );
        // A torn record, a zeroed one, a huge declared length: all tail.
        for junk in [
            key.record(whole, &entry("b")).unwrap()[..20].to_vec(),
            vec![0u8; 64],
            u32::MAX.to_le_bytes().to_vec(),
            vec![1, 2],
        ] {
            let mut torn = file.clone();
            torn.extend_from_slice(&junk);
            let (s, seen) = scan_of(&torn);
            assert_eq!(
                s,
                Scan {
                    end: whole,
                    tail: junk.len() as u64
                }
            );
            assert_eq!(seen.len(), 1);
        }
    }
}
