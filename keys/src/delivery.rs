//! Where to deliver to someone: the relay they read from, that relay's pinned
//! key, and the token their mailbox there asks for.
//!
//! Each person reads from a relay of their own choosing, so a message for a
//! contact goes to *their* relay. The three parts travel together (an invite
//! carries them, `contacts.toml` keeps them, a contact who moves sends new
//! ones), and an address without its key is not a place to deliver to: the
//! client pins the key, so a relay that cannot prove it is never handed a
//! message. One type holds the three so that none of them goes without the
//! others.

use crate::public::RelayKey;
use crate::relay_addr::RelayAddr;
use crate::token::DeliveryToken;

/// A contact's relay, its pinned key, and their delivery token there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The relay they read from.
    pub relay: RelayAddr,
    /// That relay's key: a relay that proves another is refused.
    pub relay_key: RelayKey,
    /// The token of their mailbox there, if they gave one.
    pub token: Option<DeliveryToken>,
}
