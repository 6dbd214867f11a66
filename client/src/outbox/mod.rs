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
//!    each envelope with the [`Route`] it is delivered along ([`Sealed::route`])
//!    and, for the local history, the [`history::Entry`] of what was sent; a
//!    recipient not yet told where to reach me gets a `Reach` first
//!    ([`crate::reach`]);
//! 3. [`deliver`]: each envelope goes to its recipient's relay over a
//!    delivery link ([`crate::delivery_pool`]), which proves no key of mine;
//!    it is done once each relay has stored what it was given, and what a
//!    relay that cannot be reached was given is kept in the home
//!    ([`crate::undelivered`]) for the next command that sends (the chat,
//!    which keeps trying, holds its own queue of the same [`Sealed`]
//!    envelopes).
//!
//! Where an envelope goes is decided once, in [`route_for`]: the relay the
//! recipient reads from, as `contacts.toml` says, else mine. Files go the
//! same way ([`file`]): the upload, then the offer sealed like a message.

pub mod file;

use std::collections::HashMap;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Result};
use sotto_crypto::envelope::{Body, Content, MessageId, MAX_BODY_LEN};
use sotto_crypto::session::SessionStore;
use sotto_crypto::wire::ErrorCode;
use sotto_crypto::EnvelopeError;
use sotto_keys::{Contact, ContactBook, PublicKey, SecretKey};

use crate::config::RelayPin;
use crate::contacts::unknown_contact;
use crate::delivery_link::DeliveryLinks;
use crate::delivery_pool::{Event, Policy, Pool};
use crate::history;
use crate::reach::{self, Mine, ReachBook};
use crate::relay_client::RelayError;
use crate::routes::Route;
use crate::sessions::SessionFiles;
use crate::undelivered::Pending;

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

/// Where what is sealed for `to` is delivered: `contact`'s relay if
/// `contacts.toml` names it with its key, else mine (`None`: a key that is
/// not a contact, such as a stranger whose session init is answered). Every
/// envelope, upload and offer is routed here and nowhere else.
pub fn route_for(contact: Option<&Contact>, to: PublicKey, mine: &RelayPin) -> Route {
    match contact {
        Some(c) => Route::for_contact(c, mine),
        None => Route::new(mine, to, None),
    }
}

/// One envelope for one recipient.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The recipient's key (the relay's address for it).
    pub to: PublicKey,
    /// Their name in my contacts (their key when they are not a contact).
    pub name: String,
    /// Where it is delivered.
    pub route: Route,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
    /// The message it carries, if it carries one the sender follows (not
    /// a session renewal, an accept, a receipt or a `Reach`).
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
            route: route_for(contact, to, mine),
            envelope,
            message: None,
        }
    }

    /// It as an entry of the undelivered list (a fresh local id).
    pub fn pending(&self) -> Pending {
        Pending::new(
            self.route.clone(),
            self.envelope.clone(),
            self.message,
            &self.name,
        )
    }
}

/// Where to reach me, and the book of whom I told it, while sealing: each
/// recipient not yet told gets a `Reach` before the message.
pub struct Telling<'a> {
    /// My relay, its key and my token.
    pub mine: &'a Mine,
    /// Whom I told what.
    pub book: &'a mut ReachBook,
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
/// by a session renewal where one is due. `mine` is the relay I read from;
/// with `telling`, a recipient not told where to reach me gets a `Reach`
/// first. The caller saves `sessions` (and the reach book) before anything
/// is sent.
pub fn seal_to(
    me: &SecretKey,
    sessions: &mut SessionStore,
    target: &Target,
    text: String,
    mine: &RelayPin,
    mut telling: Option<Telling<'_>>,
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
        if let Some(t) = telling.as_mut() {
            tell_where(me, sessions, c, t, mine, &mut sealed)
                .map_err(|e| anyhow!("cannot seal the message: {e}"))?;
        }
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

/// Seals a `Reach` for `contact` first if they were not told where to
/// reach me, and notes them as told.
pub fn tell_where(
    me: &SecretKey,
    sessions: &mut SessionStore,
    contact: &Contact,
    telling: &mut Telling<'_>,
    mine: &RelayPin,
    out: &mut Vec<Sealed>,
) -> Result<(), EnvelopeError> {
    if !telling.book.must_tell(&contact.key, telling.mine) {
        return Ok(());
    }
    let body = Body::new(Content::Reach(telling.mine.reach(reach::seq_now())));
    let start = out.len();
    seal_for(me, sessions, contact, &body, mine, out)?;
    for s in &mut out[start..] {
        s.message = None;
    }
    telling.book.told(&contact.key, telling.mine);
    Ok(())
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
    let route = route_for(Some(contact), contact.key, mine);
    out.push(Sealed {
        to: contact.key,
        name: contact.name.to_string(),
        route: route.clone(),
        envelope: sealed.envelope,
        message: Some(body.id),
    });
    if let Some(renewal) = sealed.renewal {
        out.push(Sealed {
            to: contact.key,
            name: contact.name.to_string(),
            route,
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
    reach_me: Option<&Mine>,
) -> Result<SealedMessage> {
    let mut batch = sessions.lock(me)?;
    let mut book = reach_me.map(|_| batch.reach(me)).transpose()?;
    let telling = reach_me
        .zip(book.as_mut())
        .map(|(mine, book)| Telling { mine, book });
    let sealed = seal_to(me, &mut batch.store, target, text, mine, telling)?;
    batch.save(me)?;
    if let Some(book) = book {
        book.save()?;
    }
    Ok(sealed)
}

/// A `Reach` sealed for every contact, told before or not (my relay or my
/// token just changed), in one locked batch of the session state, saved
/// with the reach book before this returns.
pub fn seal_reach_for_all(
    sessions: &SessionFiles,
    me: &SecretKey,
    book: &ContactBook,
    mine: &RelayPin,
    reach_me: &Mine,
) -> Result<Vec<Sealed>> {
    let mut batch = sessions.lock(me)?;
    let mut told = batch.reach(me)?;
    let mut sealed = Vec::new();
    let seq = reach::seq_now();
    for contact in book.contacts().filter(|c| c.key != me.public()) {
        let body = Body::new(Content::Reach(reach_me.reach(seq)));
        let start = sealed.len();
        seal_for(me, &mut batch.store, contact, &body, mine, &mut sealed)
            .map_err(|e| anyhow!("cannot seal where to reach you for {}: {e}", contact.name))?;
        for s in &mut sealed[start..] {
            s.message = None;
        }
        told.told(&contact.key, reach_me);
    }
    batch.save(me)?;
    told.save()?;
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

/// What [`deliver`] did.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Envelopes whose relay could not be reached now: kept in the home,
    /// for the next command that sends.
    pub kept: usize,
    /// The local ids of the kept envelopes that carry a message (see
    /// [`forget_kept`]).
    pub kept_messages: Vec<u64>,
    /// Why the first of them could not go.
    pub kept_because: Option<String>,
    /// Refusals for good (too large, a wrong token), each named.
    pub refused: Vec<anyhow::Error>,
}

/// Hands every envelope to its recipient's relay over delivery links (one
/// per relay and recipient, all at once), each link in order, and returns
/// once every relay has answered for all it was given (a relay stores
/// durably before it answers `Stored`). What could not be delivered for now
/// is added to the undelivered list of `sessions`' home.
pub async fn deliver(
    sessions: &SessionFiles,
    me: &SecretKey,
    my_relay: &RelayPin,
    sealed: Vec<Sealed>,
) -> Result<Delivered> {
    let pending: Vec<Pending> = sealed.iter().map(Sealed::pending).collect();
    let (mut delivered, later) = deliver_pending(my_relay, pending).await;
    delivered.kept_messages = later
        .iter()
        .filter(|p| p.message.is_some())
        .map(|p| p.id)
        .collect();
    if !later.is_empty() {
        let (sessions, me) = (sessions.clone(), me.clone());
        tokio::task::spawn_blocking(move || {
            sessions.with_undelivered(&me, |list| {
                list.add(later)?;
                list.save()
            })
        })
        .await
        .map_err(|e| anyhow!("the undelivered list task failed: {e}"))??;
    }
    Ok(delivered)
}

/// Drops kept envelopes from the undelivered list again: a `sotto send`
/// that stored its message for nobody fails having sent nothing, so that
/// sending it again never shows it twice.
pub async fn forget_kept(sessions: &SessionFiles, me: &SecretKey, ids: Vec<u64>) -> Result<()> {
    let (sessions, me) = (sessions.clone(), me.clone());
    tokio::task::spawn_blocking(move || {
        sessions.with_undelivered(&me, |list| {
            list.remove(&ids);
            list.save()
        })
    })
    .await
    .map_err(|e| anyhow!("the undelivered list task failed: {e}"))?
}

/// Delivers what earlier commands could not, then drops from the list what
/// was stored (or refused for good). Best effort: returns how many of the
/// messages among them went.
pub async fn deliver_undelivered(
    sessions: &SessionFiles,
    me: &SecretKey,
    my_relay: &RelayPin,
) -> Result<usize> {
    let waiting = {
        let (sessions, me) = (sessions.clone(), me.clone());
        tokio::task::spawn_blocking(move || {
            sessions.with_undelivered(&me, |list| Ok(list.list().to_vec()))
        })
        .await
        .map_err(|e| anyhow!("the undelivered list task failed: {e}"))??
    };
    if waiting.is_empty() {
        return Ok(0);
    }
    let ids: Vec<u64> = waiting.iter().map(|p| p.id).collect();
    let messages: Vec<u64> = waiting
        .iter()
        .filter(|p| p.message.is_some())
        .map(|p| p.id)
        .collect();
    let (delivered, later) = deliver_pending(my_relay, waiting).await;
    for e in &delivered.refused {
        tracing::warn!(error = %e, "a kept message was refused");
    }
    let still: Vec<u64> = later.iter().map(|p| p.id).collect();
    let gone: Vec<u64> = ids.into_iter().filter(|id| !still.contains(id)).collect();
    let n = messages.iter().filter(|id| gone.contains(id)).count();
    let (sessions, me) = (sessions.clone(), me.clone());
    tokio::task::spawn_blocking(move || {
        sessions.with_undelivered(&me, |list| {
            list.remove(&gone);
            list.save()
        })
    })
    .await
    .map_err(|e| anyhow!("the undelivered list task failed: {e}"))??;
    Ok(n)
}

/// Delivers `pending` through a one-shot pool; returns what happened and
/// the entries to keep for later. `my_relay`'s other nodes stand in for it.
async fn deliver_pending(my_relay: &RelayPin, pending: Vec<Pending>) -> (Delivered, Vec<Pending>) {
    let (mut pool, mut events) = Pool::new(DeliveryLinks::new(my_relay), Policy::ONCE);
    let mut by_id: HashMap<u64, Pending> = HashMap::new();
    for p in pending {
        by_id.insert(p.id, p.clone());
        pool.send(p);
    }
    pool.finish().await;
    let mut delivered = Delivered::default();
    let mut later = Vec::new();
    while let Ok(event) = events.try_recv() {
        let Event::Failed { id, error, retry } = event else {
            continue;
        };
        let Some(p) = by_id.remove(&id) else {
            continue;
        };
        if retry {
            delivered.kept += 1;
            delivered
                .kept_because
                .get_or_insert_with(|| error.to_string());
            later.push(p);
        } else {
            delivered.refused.push(explain_shared(&error, &p.name));
        }
    }
    later.sort_by_key(|p| p.queued_at);
    (delivered, later)
}

/// Sends session accepts and receipts, best effort, each to its
/// recipient's relay. A lost accept only delays the session (the next
/// message completes it), a lost receipt only leaves the sender unsure.
pub async fn send_replies(my_relay: &RelayPin, sealed: Vec<Sealed>) {
    let pending = sealed.iter().map(Sealed::pending).collect();
    let (delivered, later) = deliver_pending(my_relay, pending).await;
    for e in delivered.refused {
        tracing::debug!(error = %e, "an accept or receipt was refused");
    }
    if !later.is_empty() {
        tracing::debug!(n = later.len(), "accepts or receipts were not delivered");
    }
}

/// [`explain`] for an error several envelopes share.
pub fn explain_shared(err: &RelayError, name: &str) -> anyhow::Error {
    match err {
        RelayError::Refused { addr, code, detail } => explain(
            RelayError::Refused {
                addr: addr.clone(),
                code: *code,
                detail: detail.clone(),
            },
            name,
        ),
        other => anyhow!("{other}"),
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

#[cfg(test)]
mod tests;
