//! What a delivery link may hand to a mailbox, decided without knowing who
//! delivers.
//!
//! A delivery link proves no key (see `sotto_crypto::link`), so the relay
//! cannot limit a sender by its key. What it has instead: the mailbox's
//! delivery token, which the owner gives its contacts end to end and of
//! which the relay keeps only a hash; the source address; and the connection.
//!
//! - a delivery presenting the mailbox's token (or, during the grace period
//!   after a rotation, the previous one) is a contact's: served under the
//!   limits per connection and per address, and the mailbox's quotas;
//! - a wrong token is refused (`WrongToken`): the sender's copy is out of
//!   date, and guessing one is hopeless (128 bits);
//! - no token is a first contact, from someone who has only the owner's key:
//!   accepted unless the relay's config or the mailbox refuses it, under a
//!   tighter rate per recipient mailbox and only while the mailbox holds
//!   fewer than `first_contact_max_messages` envelopes, so strangers cannot
//!   crowd out the contacts;
//! - a mailbox whose owner never registered a token takes token-less
//!   deliveries as first contacts, so clients that predate tokens still
//!   reach each other.

use std::time::Duration;

use sotto_crypto::delivery::{token_hash, TokenHash};
use sotto_crypto::wire::ErrorCode;
use sotto_keys::DeliveryToken;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sotto_keys::PublicKey;

use crate::limits::{KeyLimit, Limited, RateLimiter, RateLimits};
use crate::source::Source;
use crate::store::TokenRow;

/// Default for [`DeliveryLimits::token_grace`]: a week, the time a contact
/// offline on holiday may take to hear of a rotation.
pub const DEFAULT_TOKEN_GRACE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default for [`DeliveryLimits::first_contact_max_messages`].
pub const DEFAULT_FIRST_CONTACT_MAX_MESSAGES: u64 = 100;

/// The delivery link's limits, from the relay's `[delivery]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLimits {
    /// Token-less deliveries are accepted at all (relay-wide).
    pub first_contact: bool,
    /// How long a rotated-out token still delivers.
    pub token_grace: Duration,
    /// Rates of one delivery connection.
    pub per_connection: RateLimits,
    /// Rates of one source address over all its delivery connections.
    pub per_address: RateLimits,
    /// Envelope rate of token-less deliveries to one mailbox (its upload
    /// fields are unused: a first contact's upload is paced like any other).
    pub first_contact_rate: RateLimits,
    /// A token-less delivery is refused once the mailbox holds this many
    /// envelopes.
    pub first_contact_max_messages: u64,
}

impl Default for DeliveryLimits {
    fn default() -> Self {
        Self {
            first_contact: true,
            token_grace: DEFAULT_TOKEN_GRACE,
            per_connection: RateLimits::default(),
            per_address: RateLimits::default(),
            first_contact_rate: RateLimits {
                envelopes_per_second: 1,
                envelope_burst: 20,
                ..RateLimits::default()
            },
            first_contact_max_messages: DEFAULT_FIRST_CONTACT_MAX_MESSAGES,
        }
    }
}

/// The buckets of every delivery link, shared by the relay's connections.
#[derive(Debug)]
pub struct Rates {
    connections: Arc<RateLimiter<u64>>,
    addresses: Arc<RateLimiter<Source>>,
    first_contacts: Arc<RateLimiter<PublicKey>>,
    /// Numbers delivery connections, whose buckets are their own.
    next: AtomicU64,
}

impl Rates {
    /// Buckets with `limits`' rates.
    pub fn new(limits: &DeliveryLimits) -> Self {
        Self {
            connections: RateLimiter::new(limits.per_connection),
            addresses: RateLimiter::new(limits.per_address),
            first_contacts: RateLimiter::new(limits.first_contact_rate),
            next: AtomicU64::new(0),
        }
    }

    /// The buckets of a new delivery connection from `source`.
    pub(crate) fn connect(&self, source: Source) -> ConnectionRates {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        ConnectionRates {
            connection: self.connections.connect(n),
            address: self.addresses.connect(source),
        }
    }

    /// Takes a token of `to`'s first-contact bucket.
    pub fn first_contact(&self, to: PublicKey) -> Result<(), Limited> {
        self.first_contacts.envelope_for(to)
    }
}

/// One delivery connection's handle on its buckets and its address's.
#[derive(Debug)]
pub(crate) struct ConnectionRates {
    connection: KeyLimit<u64>,
    address: KeyLimit<Source>,
}

impl ConnectionRates {
    /// Takes a token for one envelope (or notice) from both buckets.
    pub(crate) fn envelope(&self) -> Result<(), Limited> {
        self.connection.envelope()?;
        self.address.envelope()
    }

    /// Accounts for `len` upload bytes in both; how long to pause reading.
    pub(crate) fn upload(&self, len: usize) -> Duration {
        self.connection.upload(len).max(self.address.upload(len))
    }
}

/// How a delivery was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// It presented the mailbox's token.
    Contact,
    /// It presented none: the first-contact limits apply.
    FirstContact,
}

/// Why a delivery was refused before it reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A token that is not the mailbox's (nor its previous one in grace).
    #[error("the delivery token is not the recipient's; ask them for a new invite")]
    WrongToken,
    /// No token, and the relay or the mailbox takes no first contact.
    #[error("the recipient accepts deliveries only from contacts holding its token")]
    FirstContactRefused,
}

impl Refused {
    /// The answer to request `req` refused this way.
    pub fn into_answer(self, req: u32) -> sotto_crypto::wire::RelayMsg {
        sotto_crypto::wire::RelayMsg::Error {
            req,
            code: self.code(),
            detail: self.to_string(),
        }
    }

    /// The code the sender is answered with.
    pub fn code(self) -> ErrorCode {
        match self {
            Refused::WrongToken => ErrorCode::WrongToken,
            Refused::FirstContactRefused => ErrorCode::FirstContactRefused,
        }
    }
}

/// Decides on a delivery to a mailbox whose owner registered `row`, which
/// presents `token`, at `now` (Unix seconds).
pub fn admit(
    limits: &DeliveryLimits,
    row: Option<&TokenRow>,
    token: Option<&DeliveryToken>,
    now: u64,
) -> Result<Admitted, Refused> {
    match (row, token) {
        (_, None) => {
            let mailbox_takes = row.is_none_or(|r| r.first_contact);
            if limits.first_contact && mailbox_takes {
                Ok(Admitted::FirstContact)
            } else {
                Err(Refused::FirstContactRefused)
            }
        }
        // Nothing to check a token against: the owner never registered one,
        // so it cannot be a contact's; it counts as a first contact.
        (None, Some(_)) if limits.first_contact => Ok(Admitted::FirstContact),
        (None, Some(_)) => Err(Refused::FirstContactRefused),
        (Some(row), Some(token)) => {
            let hash: TokenHash = token_hash(token);
            let in_grace = row.previous.is_some_and(|(previous, at)| {
                previous == hash && now.saturating_sub(at) < limits.token_grace.as_secs()
            });
            if row.current == hash || in_grace {
                Ok(Admitted::Contact)
            } else {
                Err(Refused::WrongToken)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(current: &DeliveryToken, first_contact: bool) -> TokenRow {
        TokenRow {
            current: token_hash(current),
            previous: None,
            first_contact,
        }
    }

    #[test]
    fn the_token_of_the_mailbox_is_a_contact_and_another_is_refused() {
        let limits = DeliveryLimits::default();
        let mine = DeliveryToken::from_bytes([1; 16]);
        let other = DeliveryToken::from_bytes([2; 16]);
        let r = row(&mine, true);
        assert_eq!(
            admit(&limits, Some(&r), Some(&mine), 0),
            Ok(Admitted::Contact)
        );
        assert_eq!(
            admit(&limits, Some(&r), Some(&other), 0),
            Err(Refused::WrongToken)
        );
    }

    #[test]
    fn first_contact_follows_the_mailbox_and_the_relay() {
        let mine = DeliveryToken::from_bytes([1; 16]);
        let on = DeliveryLimits::default();
        let off = DeliveryLimits {
            first_contact: false,
            ..on
        };
        assert_eq!(admit(&on, None, None, 0), Ok(Admitted::FirstContact));
        assert_eq!(
            admit(&on, Some(&row(&mine, true)), None, 0),
            Ok(Admitted::FirstContact)
        );
        assert_eq!(
            admit(&on, Some(&row(&mine, false)), None, 0),
            Err(Refused::FirstContactRefused)
        );
        assert_eq!(
            admit(&off, None, None, 0),
            Err(Refused::FirstContactRefused)
        );
        // A token for a mailbox that registered none proves nothing.
        assert_eq!(admit(&on, None, Some(&mine), 0), Ok(Admitted::FirstContact));
        assert_eq!(
            admit(&off, None, Some(&mine), 0),
            Err(Refused::FirstContactRefused)
        );
    }

    #[test]
    fn the_previous_token_delivers_only_within_the_grace_period() {
        let limits = DeliveryLimits {
            token_grace: Duration::from_secs(100),
            ..DeliveryLimits::default()
        };
        let old = DeliveryToken::from_bytes([1; 16]);
        let new = DeliveryToken::from_bytes([2; 16]);
        let r = TokenRow {
            current: token_hash(&new),
            previous: Some((token_hash(&old), 1_000)),
            first_contact: true,
        };
        assert_eq!(
            admit(&limits, Some(&r), Some(&old), 1_099),
            Ok(Admitted::Contact)
        );
        assert_eq!(
            admit(&limits, Some(&r), Some(&old), 1_100),
            Err(Refused::WrongToken)
        );
        assert_eq!(
            admit(&limits, Some(&r), Some(&new), 9_999),
            Ok(Admitted::Contact)
        );
    }
}
