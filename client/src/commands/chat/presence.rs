//! Presence in `sotto chat`: telling my contacts that I am online, hearing
//! theirs, and `/online`.
//!
//! Once the waiting mailbox is shown, the chat sends `Online { reply: true }`
//! to every contact, then `Online { reply: false }` every [`PRESENCE_EVERY`],
//! and `Offline` when it ends cleanly. Each notice is an ordinary one-shot
//! envelope, sealed to one contact and sent with `Notify` on the delivery
//! link to that contact's relay, which pushes it to their live chats and
//! never stores or answers it. What the
//! notices mean is kept by [`Roster`]; here they are opened, checked to come
//! from a contact, and turned into notices on stderr. Presence never reaches
//! stdout, the history or the seen store.

use std::time::Instant;

use sotto_crypto::envelope::{self, Body, Content, Presence};
use sotto_keys::{ContactBook, PublicKey, SecretKey};

use super::Chat;
use crate::commands::note;
use crate::outbox::route_for;
use crate::presence::Change;

pub(super) use crate::presence::PRESENCE_EVERY;

/// `presence` sealed to each of `to` except myself: one envelope each.
fn seal_notices<'a>(
    me: &SecretKey,
    to: impl IntoIterator<Item = &'a PublicKey>,
    presence: Presence,
) -> Vec<(PublicKey, Vec<u8>)> {
    let mine = me.public();
    to.into_iter()
        .filter(|k| **k != mine)
        .filter_map(|k| {
            // A fresh body (id, date) per contact: nothing links the notices.
            match envelope::seal(me, k, &Body::new(Content::Presence(presence))) {
                Ok(env) => Some((*k, env)),
                Err(e) => {
                    tracing::debug!(error = %e, "a presence notice could not be sealed");
                    None
                }
            }
        })
        .collect()
}

/// The keys of every contact.
fn contact_keys(book: &ContactBook) -> Vec<PublicKey> {
    book.contacts().map(|c| c.key).collect()
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Chat {
    /// Tells every contact `presence`, live-only, each on the link to their
    /// own relay.
    pub(super) fn announce(&mut self, presence: Presence) {
        let keys = contact_keys(&self.book);
        self.notify(seal_notices(&self.me, &keys, presence));
    }

    fn notify(&mut self, notices: Vec<(PublicKey, Vec<u8>)>) {
        for (to, envelope) in notices {
            let route = route_for(self.book.by_key(&to), to, &self.pin);
            self.pool.notify(route, envelope);
        }
    }

    /// A `Notice` from the relay: a presence notice, if it is one from a
    /// contact and fresh; anything else is dropped (debug log).
    pub(super) fn on_notice(&mut self, envelope: &[u8]) {
        let opened = match envelope::open(&self.me, envelope) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::debug!(error = %e, "a notice failed to open");
                return;
            }
        };
        let Content::Presence(presence) = opened.body.content else {
            tracing::debug!("a notice that is not presence was ignored");
            return;
        };
        let sender = opened.sender;
        let name = match self.book.by_key(&sender) {
            Some(c) if sender != self.me.public() => c.name.to_string(),
            _ => {
                tracing::debug!("presence from someone not in my contacts was ignored");
                return;
            }
        };
        let taken = self.roster.take(
            sender,
            opened.body.id,
            opened.body.sent_at_ms,
            presence,
            now_ms(),
            Instant::now(),
        );
        let outcome = match taken {
            Ok(outcome) => outcome,
            Err(why) => {
                tracing::debug!(%why, "a presence notice was refused");
                return;
            }
        };
        match outcome.change {
            Some(Change::CameOnline) => note(&format!("{name} is online")),
            Some(Change::WentOffline) => note(&format!("{name} went offline")),
            None => {}
        }
        if outcome.reply {
            let answer = seal_notices(&self.me, [&sender], Presence::Online { reply: false });
            self.notify(answer);
        }
    }

    /// Says which contacts went silent for too long.
    pub(super) fn expire_presence(&mut self) {
        for key in self.roster.expire(Instant::now()) {
            if let Some(c) = self.book.by_key(&key) {
                note(&format!(
                    "{} went offline (not heard from for a while)",
                    c.name
                ));
            }
        }
    }

    /// `/online`.
    pub(super) fn show_online(&self) {
        let names: Vec<String> = self
            .roster
            .online(Instant::now())
            .iter()
            .filter_map(|k| self.book.by_key(k))
            .map(|c| c.name.to_string())
            .collect();
        if names.is_empty() {
            note("no contact is online");
        } else {
            note(&format!("online: {}", names.join(", ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_go_to_each_contact_but_me_and_open_as_presence() {
        let me = SecretKey::generate();
        let bob = SecretKey::generate();
        let carol = SecretKey::generate();
        let keys = [bob.public(), me.public(), carol.public()];
        let sealed = seal_notices(&me, &keys, Presence::Offline);
        assert_eq!(
            sealed.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [bob.public(), carol.public()]
        );
        let at_bob = envelope::open(&bob, &sealed[0].1).unwrap();
        assert_eq!(at_bob.sender, me.public());
        assert_eq!(at_bob.body.content, Content::Presence(Presence::Offline));
        let at_carol = envelope::open(&carol, &sealed[1].1).unwrap();
        assert_ne!(at_bob.body.id, at_carol.body.id);
    }
}
