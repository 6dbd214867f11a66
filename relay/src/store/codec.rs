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

use super::StoreError;

/// A recipient's raw public key, the mailbox address.
pub(super) type Recipient = [u8; 32];

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

/// The layout version of the file (8 bytes), so a future layout is refused
/// instead of misread.
pub(super) const META_FORMAT: &str = "format";

/// The layout described in this module.
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
