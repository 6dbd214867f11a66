//! Delivery tokens as the store keeps them: per mailbox, the hash of its
//! current token, the hash of the one it replaced and when, and whether the
//! owner accepts deliveries that present no token.
//!
//! Only hashes are kept (`sotto_crypto::delivery::token_hash`): a copy of the
//! database does not let anyone deliver as a contact. The previous hash stays
//! so that a contact who has not yet heard of a rotation, told end to end,
//! is not refused meanwhile; the relay honours it for its grace period.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use sotto_crypto::delivery::TokenHash;

use super::codec::Recipient;
use super::writer::Fatal;
use super::StoreError;

/// `owner` → `current (32) | first_contact (1) | has_previous (1) |
/// previous (32) | rotated_at (8)`.
pub(super) const TOKENS: TableDefinition<Recipient, &[u8]> = TableDefinition::new("tokens");

const ROW_LEN: usize = 32 + 1 + 1 + 32 + 8;

/// What a mailbox's owner registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRow {
    /// The hash of the mailbox's current token.
    pub current: TokenHash,
    /// The hash of the token it replaced, and when (Unix seconds).
    pub previous: Option<(TokenHash, u64)>,
    /// Deliveries without a token are accepted (under the first-contact limits).
    pub first_contact: bool,
}

impl TokenRow {
    pub(super) fn encode(&self) -> [u8; ROW_LEN] {
        let mut out = [0u8; ROW_LEN];
        out[..32].copy_from_slice(&self.current.0);
        out[32] = u8::from(self.first_contact);
        if let Some((previous, at)) = self.previous {
            out[33] = 1;
            out[34..66].copy_from_slice(&previous.0);
            out[66..].copy_from_slice(&at.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let Ok(bytes) = <&[u8; ROW_LEN]>::try_from(bytes) else {
            tracing::error!(len = bytes.len(), "damaged delivery token row");
            return Err(StoreError::Corrupt);
        };
        let hash = |range: std::ops::Range<usize>| {
            let mut h = [0u8; 32];
            h.copy_from_slice(&bytes[range]);
            TokenHash(h)
        };
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[66..]);
        Ok(Self {
            current: hash(0..32),
            first_contact: match bytes[32] {
                0 => false,
                1 => true,
                _ => return Err(StoreError::Corrupt),
            },
            previous: match bytes[33] {
                0 => None,
                1 => Some((hash(34..66), u64::from_be_bytes(at))),
                _ => return Err(StoreError::Corrupt),
            },
        })
    }
}

/// Registers `hash` for `owner`'s mailbox at `now`. A new hash moves the
/// current one to `previous`; the same hash again only changes the flag (a
/// client that registers at every start does not cut its grace period short).
pub(super) fn set(
    txn: &WriteTransaction,
    owner: Recipient,
    hash: TokenHash,
    first_contact: bool,
    now: u64,
) -> Result<Result<(), StoreError>, Fatal> {
    let mut table = txn.open_table(TOKENS)?;
    let old = match table.get(&owner)?.map(|g| TokenRow::decode(g.value())) {
        // A damaged row is replaced by what the owner registers now.
        None | Some(Err(_)) => None,
        Some(Ok(row)) => Some(row),
    };
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
    table.insert(&owner, row.encode().as_slice())?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_damaged_ones_are_refused() {
        for row in [
            TokenRow {
                current: TokenHash([1; 32]),
                previous: None,
                first_contact: true,
            },
            TokenRow {
                current: TokenHash([1; 32]),
                previous: Some((TokenHash([2; 32]), 77)),
                first_contact: false,
            },
        ] {
            assert_eq!(TokenRow::decode(&row.encode()).unwrap(), row);
        }
        assert!(TokenRow::decode(&[0; 10]).is_err());
        let mut bad = [0u8; ROW_LEN];
        bad[32] = 9;
        assert!(TokenRow::decode(&bad).is_err());
    }
}
