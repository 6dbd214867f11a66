//! Table layout and the byte formats of stored values.
//!
//! Every value is a plain byte slice that this module encodes and decodes itself,
//! rather than a redb fixed-width type: redb decodes its own integer types with
//! an `unwrap` on the slice length, so a damaged value would panic the writer.
//! Here a value of the wrong length is reported as [`StoreError::Corrupt`] and
//! logged with what it was, never with its contents.
//!
//! All integers are big-endian.

use redb::TableDefinition;
use sotto_crypto::file::{chunk_count, MAX_FILE_SIZE};
use sotto_keys::PublicKey;

use super::{BlobMeta, StoreError};

/// A recipient's raw public key, the mailbox address.
pub(super) type Recipient = [u8; 32];

/// A file id's raw bytes, the name of a blob.
pub(super) type BlobId = [u8; 16];

/// `(recipient, id)` → `received_at (8) | envelope`.
///
/// Keyed by recipient first so one mailbox is a contiguous range, in id order.
pub(super) const MESSAGES: TableDefinition<(Recipient, u64), &[u8]> =
    TableDefinition::new("messages");

/// `recipient` → `messages (8) | bytes (8)`, kept in step with `MESSAGES` in
/// the same transaction so a quota check is one lookup. A row whose count
/// falls to zero is removed.
pub(super) const USAGE: TableDefinition<Recipient, &[u8]> = TableDefinition::new("usage");

/// `id` → `recipient (32) | received_at (8)`.
///
/// Ids follow arrival, so `expire` walks this from the front and stops at the
/// first message that is still young instead of scanning every mailbox.
pub(super) const EXPIRY: TableDefinition<u64, &[u8]> = TableDefinition::new("expiry");

/// Store-wide values, under the `META_*` names.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The id the next enqueued message will get (8 bytes). Written in every
/// transaction that allocates ids, so ids are never reused across restarts.
pub(super) const META_NEXT_ID: &str = "next_id";

/// `file id` → `recipient (32) | uploader (32) | size (8) | have (8) |
/// complete (1) | created (8) | updated (8)`: one stored file. Its chunks are
/// in a file of the blob cache named after the id, never in the database.
pub(super) const BLOBS: TableDefinition<BlobId, &[u8]> = TableDefinition::new("blobs");

/// `recipient` → `files (8) | bytes (8)`: the blobs held for a recipient and
/// the sealed bytes they have durably stored (a complete blob its whole sealed
/// length, an unfinished one its chunks `0..have`). Uploads in progress hold
/// room beyond that in memory only (`holds`). Kept in step with `BLOBS` in the
/// same transaction; a row whose count falls to zero is removed.
pub(super) const BLOB_USAGE: TableDefinition<Recipient, &[u8]> = TableDefinition::new("blob_usage");

/// `(recipient, uploader)` → `files (8) | bytes (8)`: the part of
/// `BLOB_USAGE` that one uploader's blobs take, which its share of the
/// recipient's quota is checked against. Derived from `BLOBS` (which names
/// both keys of every blob already) and removed with the uploader's last blob
/// for that recipient, so it tells nothing the blob rows do not.
pub(super) const BLOB_SHARES: TableDefinition<(Recipient, Recipient), &[u8]> =
    TableDefinition::new("blob_shares");

/// The layout version of the file (8 bytes), so a future layout is refused
/// instead of misread.
pub(super) const META_FORMAT: &str = "format";

/// How `BLOB_USAGE` counts (8 bytes): absent in a store whose blob usage
/// counted unfinished uploads at their whole size, [`BLOB_ACCOUNTING`] once
/// it counts stored bytes and `BLOB_SHARES` exists. An older store is
/// recounted from `BLOBS` when opened.
pub(super) const META_BLOB_ACCOUNTING: &str = "blob_accounting";

/// See [`META_BLOB_ACCOUNTING`].
pub(super) const BLOB_ACCOUNTING: u64 = 2;

/// The layout described in this module. The blob tables were added without a
/// new version: a store of the first layout simply has none yet, and they are
/// created on open; likewise `BLOB_SHARES`, whose rows are derived from
/// `BLOBS` on the first open (see [`META_BLOB_ACCOUNTING`]).
pub(super) const FORMAT_VERSION: u64 = 1;

/// Length of the `received_at` prefix of a message value.
const RECEIVED_AT_LEN: usize = 8;

fn corrupt(what: &'static str, len: usize) -> StoreError {
    tracing::error!(what, len, "corrupt value in the mailbox store");
    StoreError::Corrupt
}

/// Reads a value that must be exactly one `u64`.
pub(super) fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| corrupt(what, bytes.len()))?;
    Ok(u64::from_be_bytes(arr))
}

/// Builds a `MESSAGES` value.
pub(super) fn encode_message(received_at: u64, envelope: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECEIVED_AT_LEN + envelope.len());
    value.extend_from_slice(&received_at.to_be_bytes());
    value.extend_from_slice(envelope);
    value
}

/// Splits a `MESSAGES` value into `received_at` and the envelope.
pub(super) fn decode_message(bytes: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if bytes.len() < RECEIVED_AT_LEN {
        return Err(corrupt("message", bytes.len()));
    }
    let (head, envelope) = bytes.split_at(RECEIVED_AT_LEN);
    Ok((decode_u64("message", head)?, envelope))
}

/// Pending totals of one mailbox: what quotas are checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) messages: u64,
    /// Sum of envelope lengths (the 8-byte timestamp is not counted).
    pub(super) bytes: u64,
}

impl Usage {
    pub(super) fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.messages.to_be_bytes());
        out[8..].copy_from_slice(&self.bytes.to_be_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != 16 {
            return Err(corrupt("usage", bytes.len()));
        }
        let (messages, bytes) = bytes.split_at(8);
        Ok(Self {
            messages: decode_u64("usage", messages)?,
            bytes: decode_u64("usage", bytes)?,
        })
    }
}

/// What a recipient's blobs take up: what blob quotas are checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct BlobUsage {
    pub(super) files: u64,
    /// Sum of the sealed lengths of the files (complete or not).
    pub(super) bytes: u64,
}

impl BlobUsage {
    pub(super) fn encode(self) -> [u8; 16] {
        Usage {
            messages: self.files,
            bytes: self.bytes,
        }
        .encode()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != 16 {
            return Err(corrupt("blob usage", bytes.len()));
        }
        let (files, bytes) = bytes.split_at(8);
        Ok(Self {
            files: decode_u64("blob usage", files)?,
            bytes: decode_u64("blob usage", bytes)?,
        })
    }
}

const BLOB_LEN: usize = 32 + 32 + 8 + 8 + 1 + 8 + 8;

/// Builds a `BLOBS` value.
pub(super) fn encode_blob(meta: &BlobMeta) -> [u8; BLOB_LEN] {
    let mut out = [0; BLOB_LEN];
    out[..32].copy_from_slice(meta.recipient.as_bytes());
    out[32..64].copy_from_slice(meta.uploader.as_bytes());
    out[64..72].copy_from_slice(&meta.size.to_be_bytes());
    out[72..80].copy_from_slice(&meta.have.to_be_bytes());
    out[80] = u8::from(meta.complete);
    out[81..89].copy_from_slice(&meta.created.to_be_bytes());
    out[89..97].copy_from_slice(&meta.updated.to_be_bytes());
    out
}

/// Reads a `BLOBS` value, refusing one this code could not have written (a
/// size past the format's limit, more chunks than the file has, a complete
/// file with chunks missing), so damage never reaches the file layout maths.
pub(super) fn decode_blob(bytes: &[u8]) -> Result<BlobMeta, StoreError> {
    let damaged = || corrupt("blob", bytes.len());
    if bytes.len() != BLOB_LEN {
        return Err(damaged());
    }
    let key = |range: std::ops::Range<usize>| PublicKey::from_slice(&bytes[range]);
    let int = |at: usize| decode_u64("blob", &bytes[at..at + 8]);
    let meta = BlobMeta {
        recipient: key(0..32).map_err(|_| damaged())?,
        uploader: key(32..64).map_err(|_| damaged())?,
        size: int(64)?,
        have: int(72)?,
        complete: match bytes[80] {
            0 => false,
            1 => true,
            _ => return Err(damaged()),
        },
        created: int(81)?,
        updated: int(89)?,
    };
    if meta.size > MAX_FILE_SIZE
        || meta.have > chunk_count(meta.size)
        || (meta.complete && meta.have != chunk_count(meta.size))
    {
        return Err(damaged());
    }
    Ok(meta)
}

/// An `EXPIRY` value: where to find the message and how old it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ExpiryEntry {
    pub(super) recipient: Recipient,
    pub(super) received_at: u64,
}

impl ExpiryEntry {
    pub(super) fn encode(self) -> [u8; 40] {
        let mut out = [0; 40];
        out[..32].copy_from_slice(&self.recipient);
        out[32..].copy_from_slice(&self.received_at.to_be_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != 40 {
            return Err(corrupt("expiry entry", bytes.len()));
        }
        let (recipient, received_at) = bytes.split_at(32);
        let recipient: Recipient = recipient
            .try_into()
            .map_err(|_| corrupt("expiry entry", bytes.len()))?;
        Ok(Self {
            recipient,
            received_at: decode_u64("expiry entry", received_at)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_known_bytes() {
        let value = encode_message(0x0102_0304_0506_0708, b"sealed");
        assert_eq!(&value[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&value[8..], b"sealed");
        assert_eq!(
            decode_message(&value).unwrap(),
            (0x0102_0304_0506_0708, &b"sealed"[..])
        );
        // An empty envelope is still a valid message.
        assert_eq!(decode_message(&[0; 8]).unwrap(), (0, &[][..]));
    }

    #[test]
    fn short_values_are_corrupt_not_panics() {
        for len in 0..8 {
            assert!(matches!(
                decode_message(&vec![0; len]),
                Err(StoreError::Corrupt)
            ));
        }
        for len in [0, 15, 17] {
            assert!(matches!(
                Usage::decode(&vec![0; len]),
                Err(StoreError::Corrupt)
            ));
        }
        for len in [0, 39, 41] {
            assert!(matches!(
                ExpiryEntry::decode(&vec![0; len]),
                Err(StoreError::Corrupt)
            ));
        }
        assert!(matches!(decode_u64("x", &[0; 7]), Err(StoreError::Corrupt)));
    }

    fn blob() -> BlobMeta {
        BlobMeta {
            recipient: PublicKey::from_bytes([1; 32]),
            uploader: PublicKey::from_bytes([2; 32]),
            size: 3 * 65_536 + 7,
            have: 2,
            complete: false,
            created: 1_700_000_000,
            updated: 1_700_000_060,
        }
    }

    #[test]
    fn blob_round_trip_and_known_bytes() {
        let meta = blob();
        let bytes = encode_blob(&meta);
        assert_eq!(&bytes[..32], &[1; 32]);
        assert_eq!(&bytes[32..64], &[2; 32]);
        assert_eq!(&bytes[64..72], &(3u64 * 65_536 + 7).to_be_bytes());
        assert_eq!(&bytes[72..80], &2u64.to_be_bytes());
        assert_eq!(bytes[80], 0);
        assert_eq!(&bytes[81..89], &1_700_000_000u64.to_be_bytes());
        assert_eq!(&bytes[89..], &1_700_000_060u64.to_be_bytes());
        assert_eq!(decode_blob(&bytes).unwrap(), meta);
        let done = BlobMeta {
            have: 4,
            complete: true,
            ..meta
        };
        assert_eq!(decode_blob(&encode_blob(&done)).unwrap(), done);
    }

    #[test]
    fn impossible_blobs_are_corrupt_not_panics() {
        for len in [0, 96, 98] {
            assert!(matches!(
                decode_blob(&vec![0; len]),
                Err(StoreError::Corrupt)
            ));
        }
        let mut flag = encode_blob(&blob());
        flag[80] = 2;
        let too_many = BlobMeta { have: 5, ..blob() };
        let incomplete_but_done = BlobMeta {
            have: 3,
            complete: true,
            ..blob()
        };
        let huge = BlobMeta {
            size: MAX_FILE_SIZE + 1,
            have: 0,
            ..blob()
        };
        for bytes in [
            flag,
            encode_blob(&too_many),
            encode_blob(&incomplete_but_done),
            encode_blob(&huge),
        ] {
            assert!(matches!(decode_blob(&bytes), Err(StoreError::Corrupt)));
        }
        assert!(matches!(
            BlobUsage::decode(&[0; 15]),
            Err(StoreError::Corrupt)
        ));
        let usage = BlobUsage { files: 2, bytes: 9 };
        assert_eq!(BlobUsage::decode(&usage.encode()).unwrap(), usage);
    }

    #[test]
    fn usage_and_expiry_round_trip() {
        let usage = Usage {
            messages: 3,
            bytes: u64::MAX,
        };
        assert_eq!(Usage::decode(&usage.encode()).unwrap(), usage);
        let entry = ExpiryEntry {
            recipient: [7; 32],
            received_at: 1_700_000_000,
        };
        let bytes = entry.encode();
        assert_eq!(&bytes[..32], &[7; 32]);
        assert_eq!(&bytes[32..], &1_700_000_000u64.to_be_bytes());
        assert_eq!(ExpiryEntry::decode(&bytes).unwrap(), entry);
    }
}
