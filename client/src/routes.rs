//! Where an envelope for someone is handed over.
//!
//! Each person reads from a relay of their own choosing, so an envelope for
//! a contact goes to *their* relay, over a delivery link (which proves no key
//! of mine: the relay cannot tell who delivers), presenting the delivery
//! token of their mailbox there. A [`Route`] is those four things together:
//! the relay, the key it must prove, the recipient, the token. It is decided
//! once per recipient, here, from what `contacts.toml` says; every command
//! that sends (`send`, `send --group`, `chat`, `send-file`) delivers along it.
//!
//! A contact with no relay of their own in `contacts.toml` (an entry written
//! before contacts carried one, or added by key alone) is reached on my own
//! relay, as before; with no token known, the delivery is a "first contact",
//! which relays accept under tighter limits until the contact tells me their
//! token end to end ([`sotto_crypto::envelope::Reach`]).

use serde::{Deserialize, Serialize};
use sotto_keys::{Contact, DeliveryToken, PublicKey, RelayAddr, RelayKey};

use crate::config::RelayPin;

/// Where one recipient's envelopes are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The relay the recipient reads from.
    pub relay: RelayAddr,
    /// The key that relay must prove.
    pub relay_key: RelayKey,
    /// The recipient's key: the mailbox.
    pub to: PublicKey,
    /// The mailbox's delivery token, if the recipient gave me one.
    pub token: Option<DeliveryToken>,
}

/// What tells two delivery links apart: one per relay *and recipient*, so
/// that no connection carries deliveries to two mailboxes (which would tell
/// the relay that both have a correspondent in common).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkId {
    /// The relay.
    pub relay: RelayAddr,
    /// Its key.
    pub relay_key: RelayKey,
    /// The recipient.
    pub to: PublicKey,
}

impl Route {
    /// The route to `to` on the relay `pin`, with `token` if one is known.
    pub fn new(pin: &RelayPin, to: PublicKey, token: Option<DeliveryToken>) -> Self {
        Self {
            relay: pin.addr.clone(),
            relay_key: pin.key,
            to,
            token,
        }
    }

    /// The route to `contact`: on their relay if `contacts.toml` names it
    /// with its key, else on `mine` (with no token: a first contact).
    pub fn for_contact(contact: &Contact, mine: &RelayPin) -> Self {
        match contact.delivery() {
            Some(d) => Self {
                relay: d.relay.clone(),
                relay_key: d.relay_key,
                to: contact.key,
                token: d.token.clone(),
            },
            None => Self::new(mine, contact.key, None),
        }
    }

    /// The relay of this route, as a pin.
    pub fn pin(&self) -> RelayPin {
        RelayPin {
            addr: self.relay.clone(),
            key: self.relay_key,
            nodes: Vec::new(),
        }
    }

    /// The link this route is delivered on.
    pub fn link(&self) -> LinkId {
        LinkId {
            relay: self.relay.clone(),
            relay_key: self.relay_key,
            to: self.to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_keys::SecretKey;

    fn pin(port: u16) -> RelayPin {
        RelayPin {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            key: RelayKey::from_bytes([port as u8; 32]),
            nodes: Vec::new(),
        }
    }

    #[test]
    fn one_link_per_relay_and_recipient() {
        let bob = SecretKey::generate().public();
        let carol = SecretKey::generate().public();
        let a = Route::new(&pin(1), bob, None);
        let b = Route::new(&pin(1), bob, Some(DeliveryToken::generate()));
        assert_eq!(a.link(), b.link(), "the token does not make another link");
        assert_ne!(a.link(), Route::new(&pin(1), carol, None).link());
        assert_ne!(a.link(), Route::new(&pin(2), bob, None).link());
        assert_eq!(a.pin(), pin(1));
    }

    #[test]
    fn a_contact_is_reached_on_their_relay_or_else_on_mine() {
        let key = SecretKey::generate().public();
        let name: sotto_keys::ContactName = "bob".parse().unwrap();
        let token = DeliveryToken::generate();
        let theirs = sotto_keys::Delivery {
            relay: pin(7).addr,
            relay_key: pin(7).key,
            token: Some(token.clone()),
        };
        let bob = Contact::with_delivery(name.clone(), key, theirs);
        assert_eq!(
            Route::for_contact(&bob, &pin(1)),
            Route::new(&pin(7), key, Some(token))
        );
        let old = Contact::new(name, key, Some(pin(7).addr));
        assert_eq!(
            Route::for_contact(&old, &pin(1)),
            Route::new(&pin(1), key, None),
            "an address without its key is not a place to deliver to"
        );
    }

    #[test]
    fn a_route_round_trips_through_postcard() {
        let route = Route::new(
            &pin(3),
            SecretKey::generate().public(),
            Some(DeliveryToken::generate()),
        );
        let bytes = postcard::to_stdvec(&route).unwrap();
        assert_eq!(postcard::from_bytes::<Route>(&bytes).unwrap(), route);
    }
}
