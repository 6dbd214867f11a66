//! What I send: whom it is for, sealed how, delivered through which relay.
//!
//! `send`, `send --group`, `chat` and `send-file` (with the chat's `/file`)
//! all turn a name into recipients, seal one envelope per recipient through
//! the session state and hand each to a relay; they must agree on every step,
//! so every step is here, and the commands only read input and say how it
//! went:
//!
//! 1. [`resolve`] / [`recipient`]: a name becomes a [`Target`], a contact or a
//!    group (never myself among a group's recipients);
//! 2. [`check_text`], then [`seal_to`] (or [`seal_and_save`], which holds the
//!    session lock): one body, so one message id, sealed once per recipient,
//!    each envelope with the relay it is delivered to ([`Sealed::relay`]) and,
//!    for the local history, the [`history::Entry`] of what was sent;
//! 3. [`deliver`]: each relay gets the envelopes for it, and is done once it
//!    has stored them all (the chat, which resends until stored, keeps its own
//!    queue of the same [`Sealed`] envelopes).
//!
//! Where an envelope goes is decided once, in [`relay_for`]: today every
//! envelope goes through my own relay, and a recipient known to read from
//! another one is warned about after the fact ([`other_relays`]). Files go
//! the same way ([`file`]): the upload, then the offer sealed like a message.

pub mod file;

use std::time::SystemTime;

use anyhow::{anyhow, bail, Result};
use sotto_crypto::envelope::{Body, Content, MessageId, MAX_BODY_LEN};
use sotto_crypto::session::SessionStore;
use sotto_crypto::wire::ErrorCode;
use sotto_crypto::EnvelopeError;
use sotto_keys::{Contact, ContactBook, PublicKey, RelayAddr, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::RelayPin;
use crate::contacts::unknown_contact;
use crate::history;
use crate::notice::Notice;
use crate::relay_client::{self, RelayConn, RelayError};
use crate::sessions::SessionFiles;

/// Most bytes a body adds around the text: a 16-byte id, a varint timestamp
/// (at most 10 bytes), the content tag (1) and the text's varint length (at
/// most 3 bytes below 2^21).
const BODY_OVERHEAD_MAX: usize = 16 + 10 + 1 + 3;

/// Longest text that always fits in one envelope, in bytes.
pub const MAX_TEXT_LEN: usize = MAX_BODY_LEN - BODY_OVERHEAD_MAX;

/// Refuses a text that is empty or cannot fit in one envelope, before any
/// passphrase is asked or any session state changed.
pub fn check_text(text: &str) -> Result<()> {
    if text.is_empty() {
        bail!("the message is empty; nothing was sent");
    }
    if text.len() > MAX_TEXT_LEN {
        bail!(
            "message too long: {} bytes, at most {MAX_TEXT_LEN} bytes fit in one message",
            text.len()
        );
    }
    Ok(())
}

/// Whom a message is for.
#[derive(Debug, Clone)]
pub enum Target {
    /// One contact.
    Contact(Contact),
    /// A group: one envelope per member.
    Group {
        /// The group's name in my contacts.
        name: String,
        /// Its members.
        members: Vec<Contact>,
    },
}

impl Target {
    /// Its name in my contacts.
    pub fn name(&self) -> &str {
        match self {
            Target::Contact(c) => c.name.as_str(),
            Target::Group { name, .. } => name,
        }
    }

    /// Who gets an envelope: the contact, or every member of the group but
    /// me (`mine`). An error when that leaves nobody.
    pub fn recipients(&self, mine: &PublicKey) -> Result<Vec<Contact>> {
        let recipients: Vec<Contact> = match self {
            Target::Contact(c) => vec![c.clone()],
            Target::Group { members, .. } => {
                members.iter().filter(|c| c.key != *mine).cloned().collect()
            }
        };
        if recipients.is_empty() {
            bail!(
                "nobody to send to: you are the only member of '{}'",
                self.name()
            );
        }
        Ok(recipients)
    }
}

/// The contact (first) or group called `name`; only a group when
/// `group_only`.
pub fn resolve(book: &ContactBook, name: &str, group_only: bool) -> Result<Target> {
    if !group_only {
        if let Some(c) = book.get(name) {
            return Ok(Target::Contact(c.clone()));
        }
    }
    if let Some(g) = book.group(name) {
        let members: Vec<Contact> = g
            .members
            .iter()
            .filter_map(|m| book.get(m.as_str()).cloned())
            .collect();
        if members.is_empty() {
            bail!("the group '{name}' has no members; list them in contacts.toml under [groups.{name}] members = [...]");
        }
        return Ok(Target::Group {
            name: g.name.to_string(),
            members,
        });
    }
    if group_only {
        if book.get(name).is_some() {
            bail!("'{name}' is a contact, not a group; leave out --group");
        }
        let name = crate::display::sanitize(name);
        bail!("unknown group '{name}': define it in contacts.toml as [groups.{name}] members = [\"NAME\", ...]");
    }
    Err(unknown_contact(name))
}

/// The contact filed under `name` (not a group), or the error saying what
/// to do.
pub fn recipient(book: &ContactBook, name: &str) -> Result<Contact> {
    match book.get(name) {
        Some(c) => Ok(c.clone()),
        None if book.group(name).is_some() => {
            bail!("'{name}' is a group; send to it with `sotto send --group {name} TEXT`")
        }
        None => Err(unknown_contact(name)),
    }
}

/// The relay that delivers to `contact` (`None`: a key that is not a
/// contact, such as a stranger whose session init is answered), `mine`
/// being the one I read from. Every envelope, upload and offer is routed
/// here and nowhere else.
///
/// A contact's relay is known only by its address, with no key pinned for
/// it, and a link to a relay whose key is not pinned is a link to whoever
/// answers at that address; so every envelope goes through mine, and
/// [`other_relays`] says which recipients will not find it there.
pub fn relay_for(_contact: Option<&Contact>, mine: &RelayPin) -> RelayPin {
    mine.clone()
}

/// One envelope for one recipient.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The recipient's key (the relay's address for it).
    pub to: PublicKey,
    /// Their name in my contacts (their key when they are not a contact).
    pub name: String,
    /// The relay it is delivered to.
    pub relay: RelayPin,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
    /// The message it carries, if it carries one the sender follows (not
    /// a session renewal, an accept or a receipt).
    pub message: Option<MessageId>,
}

impl Sealed {
    /// An envelope for `to` that carries no message of mine to follow (a
    /// session accept, a receipt, a renewal), named and routed by `book`.
    pub fn reply(book: &ContactBook, to: PublicKey, envelope: Vec<u8>, mine: &RelayPin) -> Self {
        let contact = book.by_key(&to);
        Sealed {
            to,
            name: contact.map_or_else(|| to.to_string(), |c| c.name.to_string()),
            relay: relay_for(contact, mine),
            envelope,
            message: None,
        }
    }
}

/// A text sealed for everyone it is for.
#[derive(Debug, Clone)]
pub struct SealedMessage {
    /// Its id, the same in every envelope.
    pub id: MessageId,
    /// One envelope per recipient, each followed by a session renewal
    /// where one is due; in the order of the recipients.
    pub sealed: Vec<Sealed>,
    /// What the local history keeps of it.
    pub entry: history::Entry,
}

impl SealedMessage {
    /// Each recipient of the message (key, name), once: who its receipts
    /// come from.
    pub fn recipients(&self) -> Vec<(PublicKey, String)> {
        self.sealed
            .iter()
            .filter(|s| s.message.is_some())
            .map(|s| (s.to, s.name.clone()))
            .collect()
    }
}

/// Seals `text` for `target`: one envelope per recipient (never to myself),
/// all carrying the same body, so a group message has one id, each sealed
/// through `sessions` (forward-secret once both sides have spoken), followed
/// by a session renewal where one is due. `mine` is the relay I read from.
/// The caller saves `sessions` before anything is sent.
pub fn seal_to(
    me: &SecretKey,
    sessions: &mut SessionStore,
    target: &Target,
    text: String,
    mine: &RelayPin,
) -> Result<SealedMessage> {
    check_text(&text)?;
    let recipients = target.recipients(&me.public())?;
    let (content, peer, group) = match target {
        Target::Contact(c) => (Content::Text(text.clone()), Some(c.key), None),
        Target::Group { name, .. } => (
            Content::GroupText {
                group: name.clone(),
                text: text.clone(),
            },
            None,
            Some(name.clone()),
        ),
    };
    let body = Body::new(content);
    let mut sealed = Vec::with_capacity(recipients.len());
    for c in &recipients {
        seal_for(me, sessions, c, &body, mine, &mut sealed).map_err(|e| match e {
            // Only a group message can get here: its group name takes room.
            EnvelopeError::TooLarge { .. } => anyhow!(
                "message too long: with the group name, at most about {} bytes of text fit in one message",
                MAX_TEXT_LEN.saturating_sub(target.name().len() + 3)
            ),
            other => anyhow!("cannot seal the message: {other}"),
        })?;
    }
    let entry = history::Entry {
        at_ms: body.sent_at_ms,
        direction: history::Direction::Sent,
        peer,
        group,
        text,
    };
    Ok(SealedMessage {
        id: body.id,
        sealed,
        entry,
    })
}

/// Seals `body` for `contact` through `sessions` and pushes the envelope
/// onto `out`, followed by a session renewal where one is due.
fn seal_for(
    me: &SecretKey,
    sessions: &mut SessionStore,
    contact: &Contact,
    body: &Body,
    mine: &RelayPin,
    out: &mut Vec<Sealed>,
) -> Result<(), EnvelopeError> {
    let sealed = sessions.seal_to(me, &contact.key, body, SystemTime::now())?;
    let relay = relay_for(Some(contact), mine);
    out.push(Sealed {
        to: contact.key,
        name: contact.name.to_string(),
        relay: relay.clone(),
        envelope: sealed.envelope,
        message: Some(body.id),
    });
    if let Some(renewal) = sealed.renewal {
        out.push(Sealed {
            to: contact.key,
            name: contact.name.to_string(),
            relay,
            envelope: renewal,
            message: None,
        });
    }
    Ok(())
}

/// [`seal_to`] in one locked batch of the session state, saved before this
/// returns, so nothing sealed goes out on a state that could be lost.
pub fn seal_and_save(
    sessions: &SessionFiles,
    me: &SecretKey,
    target: &Target,
    text: String,
    mine: &RelayPin,
) -> Result<SealedMessage> {
    let mut batch = sessions.lock(me)?;
    let sealed = seal_to(me, &mut batch.store, target, text, mine)?;
    batch.save(me)?;
    Ok(sealed)
}

/// `body` (a file offer) sealed for `contact` alone in one locked batch of
/// the session state, saved before this returns: the envelope carrying it
/// first, then the renewal, if one is due.
pub fn seal_body_and_save(
    sessions: &SessionFiles,
    me: &SecretKey,
    contact: &Contact,
    body: &Body,
    mine: &RelayPin,
) -> Result<Vec<Sealed>> {
    let mut batch = sessions.lock(me)?;
    let mut sealed = Vec::with_capacity(2);
    seal_for(me, &mut batch.store, contact, body, mine, &mut sealed)
        .map_err(|e| anyhow!("cannot seal the offer: {e}"))?;
    batch.save(me)?;
    Ok(sealed)
}

/// Hands every envelope to its relay, one connection per relay, in order,
/// and returns once each relay has answered `Stored` for all it was given
/// (a relay stores durably before it answers). The first failure stops.
pub async fn deliver(me: &SecretKey, sealed: Vec<Sealed>) -> Result<()> {
    for (relay, sealed) in by_relay(sealed) {
        let mut conn = relay_client::connect(&relay, me).await?;
        if let Some(big) = sealed
            .iter()
            .find(|s| s.envelope.len() > conn.max_envelope_len())
        {
            bail!(
                "the message is too long for the relay at {}: sealed it is {} bytes, the relay accepts at most {}; send a shorter message",
                relay.addr,
                big.envelope.len(),
                conn.max_envelope_len()
            );
        }
        for s in sealed {
            tracing::info!(envelope_len = s.envelope.len(), "sending");
            conn.send_envelope(&s.to, s.envelope)
                .await
                .map_err(|e| explain(e, &s.name))?;
        }
        conn.close().await;
    }
    Ok(())
}

/// The envelopes of each relay, relays in the order they first appear.
fn by_relay(sealed: Vec<Sealed>) -> Vec<(RelayPin, Vec<Sealed>)> {
    let mut out: Vec<(RelayPin, Vec<Sealed>)> = Vec::new();
    for s in sealed {
        match out.iter_mut().find(|(relay, _)| *relay == s.relay) {
            Some((_, batch)) => batch.push(s),
            None => out.push((s.relay.clone(), vec![s])),
        }
    }
    out
}

/// Sends session accepts and receipts, best effort: those for the relay
/// `conn` is linked to (`on`) over it, any other through a link of its
/// own. A lost accept only delays the session (the next message completes
/// it), a lost receipt only leaves the sender unsure.
pub async fn send_replies<R, W>(
    conn: &mut RelayConn<R, W>,
    on: &RelayPin,
    me: &SecretKey,
    sealed: Vec<Sealed>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (here, elsewhere): (Vec<Sealed>, Vec<Sealed>) =
        sealed.into_iter().partition(|s| s.relay == *on);
    for s in here {
        if let Err(e) = conn.send_envelope(&s.to, s.envelope).await {
            tracing::debug!(error = %e, "an accept or receipt was not stored");
        }
    }
    for (_, batch) in by_relay(elsewhere) {
        if let Err(e) = deliver(me, batch).await {
            tracing::debug!(error = %e, "accepts or receipts were not stored");
        }
    }
}

/// Adds the recipient's name to what the relay said.
pub fn explain(err: RelayError, name: &str) -> anyhow::Error {
    match err {
        RelayError::Refused {
            code: ErrorCode::QuotaExceeded,
            ..
        } => anyhow!("{name}'s mailbox on the relay is full; try again once they have read their messages"),
        RelayError::Refused {
            code: ErrorCode::TooLarge,
            addr,
            ..
        } => anyhow!("the relay at {addr} refused the message to {name} as too large; send a shorter message"),
        other => other.into(),
    }
}

/// The warning for a contact who reads from another relay than `ours`,
/// through which what I send goes. Said after the fact, so a failure stays
/// a single line on stderr.
pub fn other_relay(contact: &Contact, ours: &RelayAddr) -> Option<Notice> {
    let theirs = contact.relay.as_ref().filter(|r| *r != ours)?;
    Some(Notice::Warning(format!(
        "{} reads from the relay at {theirs}, but messages go through yours at {ours}; they only get it if they read from it too",
        contact.name
    )))
}

/// [`other_relay`] for each recipient of `target` but me (`mine`).
pub fn other_relays(target: &Target, mine: &PublicKey, ours: &RelayAddr) -> Vec<Notice> {
    match target {
        Target::Contact(c) => other_relay(c, ours).into_iter().collect(),
        Target::Group { members, .. } => members
            .iter()
            .filter(|m| m.key != *mine)
            .filter_map(|m| other_relay(m, ours))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
