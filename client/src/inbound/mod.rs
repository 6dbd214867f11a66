//! What I receive: a batch of envelopes from my mailbox opened, filtered,
//! shown once, remembered and answered.
//!
//! `sotto inbox`, `sotto chat` and `sotto receive-all` read the same mailbox
//! and must treat every envelope alike, or one command would show what
//! another hid, or acknowledge what another kept; so the whole pipeline is
//! here and they differ only in what they do with offers ([`Files`]) and in
//! which receipts they send:
//!
//! 1. [`process`] opens each envelope through the session state, drops what
//!    fails, what is a replay or a duplicate (the seen store) and what is too
//!    old, prints the rest through the caller's `print`, and keeps file
//!    offers in the home;
//! 2. then the offers are saved and what was shown is recorded in the seen
//!    store, durably, before the caller acknowledges anything
//!    ([`Outcome::ack`]: what may be deleted from the relay);
//! 3. [`process_batch`] runs it all in one locked batch of the session state
//!    and seals the session accepts and receipts it calls for
//!    ([`seal_receipts`]), routed like every envelope
//!    ([`crate::outbox::Sealed::reply`]);
//! 4. the caller shows, adds [`Outcome::messages`] to the local history (after
//!    showing, so that no disk write delays a message on the screen),
//!    acknowledges, sends the replies
//!    ([`crate::outbox::send_replies`]) and shows [`notices`].
//!
//! A sender is named only by the contact book: a key that is not a contact
//! is shown as `unknown sotto1...`, never under a name it chose.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::SystemTime;

use anyhow::{Context, Result};
use sotto_crypto::envelope::{
    Body, Content, MessageId, Reach, ReceiptState, KIND_ONE_SHOT, MAX_RECEIPT_IDS,
};
use sotto_crypto::file::FileOffer;
use sotto_crypto::session::SessionStore;
use sotto_crypto::EnvelopeError;
use sotto_keys::{ContactBook, PublicKey, SecretKey};

use crate::config::RelayPin;
use crate::display::{group_label, local_time_ms, message_line, sanitize};
use crate::history;
use crate::notice::Notice;
use crate::offers::{Added, OfferKind, Offers, StoredOffer};
use crate::outbox::{tell_where, Sealed, Telling};
use crate::reach::{Mine, ReachBook};
use crate::relay_client::Delivery;
use crate::seen::{self, SeenId, SeenStore};
use crate::sessions::SessionFiles;

/// What to say of a new file offer met in the mailbox (it is kept in the
/// home's offers either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// `sotto inbox`: say a file is waiting for `receive-all`.
    Announce,
    /// `sotto chat`: say a file is waiting for `/receive`.
    AnnounceInChat,
    /// `sotto receive-all`: nothing; it downloads what is kept next.
    Collect,
}

/// What processing a batch came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Relay ids to acknowledge.
    pub ack: Vec<u64>,
    /// How many messages were printed.
    pub shown: usize,
    /// How many new file offers were kept (and, with [`Files::Announce`],
    /// announced).
    pub announced: usize,
    /// How many offers wait in the home after this batch.
    pub waiting_files: usize,
    /// Offers left on the relay because too many wait in the home.
    pub offers_full: usize,
    /// Contacts (as shown) whose envelope named a session erased here: it
    /// cannot be read, and a new session was started.
    pub unreadable: Vec<String>,
    /// Envelopes for sessions this home never held, discarded.
    pub no_session: usize,
    /// Contacts (as shown) seen sending from an older copy of their state.
    pub went_back: BTreeSet<String>,
    /// Senders that are not contacts, in key order.
    pub unknown_senders: BTreeSet<PublicKey>,
    /// Envelopes that failed to open, discarded.
    pub failed: usize,
    /// Messages dated before the replay window, discarded.
    pub stale: usize,
    /// The error that stopped printing, if any.
    pub print_error: Option<std::io::Error>,
    /// The messages printed, in order, for the local history.
    pub messages: Vec<history::Entry>,
    /// The contacts' messages printed, for receipts.
    pub shown_ids: Vec<ShownMessage>,
    /// Receipts from contacts.
    pub receipts: Vec<ReceiptIn>,
    /// Bare session accepts to send back.
    pub replies: Vec<ToSend>,
    /// Where contacts said to reach them, in the order received.
    pub reaches: Vec<(PublicKey, Reach)>,
    /// Contacts (as named) whose relay or token changed in contacts.toml
    /// by this batch, with their relay.
    pub moved: Vec<(String, String)>,
}

/// A message from a contact that was shown, for receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownMessage {
    /// Its authenticated sender (a contact).
    pub sender: PublicKey,
    /// The group it was sent to, as the sender names it.
    pub group: Option<String>,
    /// Its id.
    pub id: MessageId,
}

/// A receipt from a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptIn {
    /// The contact who sent it.
    pub from: PublicKey,
    /// How far the messages got.
    pub state: ReceiptState,
    /// The messages.
    pub ids: Vec<MessageId>,
}

/// An envelope to send once the session state that sealed it is saved.
#[derive(Debug, Clone)]
pub struct ToSend {
    /// The recipient.
    pub to: PublicKey,
    /// The envelope.
    pub envelope: Vec<u8>,
}

/// Opens, filters and prints a batch, records what was printed, and says
/// which envelopes may be acknowledged. `print` gets one line per message.
///
/// Envelopes of every kind are opened through the session store: a bare
/// session accept to send back comes out in [`Outcome::replies`], a replayed
/// session envelope is dropped silently and acknowledged, a receipt from a
/// contact comes out in [`Outcome::receipts`] (never shown, never remembered).
///
/// A file offer is kept in `offers` (saved before anything is remembered or
/// acknowledged), so its envelope can go like any other: what it carries
/// no longer depends on the envelope opening again. Whatever stays on the
/// relay (a message that could not be printed, an offer beyond
/// [`crate::offers::MAX_OFFERS`]) leaves the session store as it was, so it
/// opens again next time; the seen store keeps it from being shown twice.
#[allow(clippy::too_many_arguments)]
pub fn process(
    me: &SecretKey,
    book: &ContactBook,
    store: &SeenStore,
    sessions: &mut SessionStore,
    offers: &mut Offers,
    pending: Vec<Delivery>,
    now: u64,
    files: Files,
    print: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut shown: Vec<(SeenId, u64)> = Vec::new();
    let mut in_batch: HashSet<SeenId> = HashSet::new();
    let mut offers_changed = false;
    let is_contact = |k: &PublicKey| book.by_key(k).is_some();
    let name_of = |k: &PublicKey| match book.by_key(k) {
        Some(contact) => contact.name.to_string(),
        None => format!("unknown {k}"),
    };

    for delivery in pending {
        // Only session envelopes change the store; one that ends up left on
        // the relay puts it back as it was.
        let snapshot = match delivery.envelope.get(1) {
            Some(&KIND_ONE_SHOT) | None => None,
            Some(_) => Some(sessions.encode().context("session state")?),
        };
        let rollback = |sessions: &mut SessionStore| -> Result<()> {
            if let Some(snapshot) = &snapshot {
                *sessions = SessionStore::decode(snapshot, sessions.config().clone())
                    .context("session state")?;
            }
            Ok(())
        };
        let opened = match sessions.open(me, &delivery.envelope, SystemTime::now(), is_contact) {
            Ok(opened) => opened,
            Err(EnvelopeError::Replayed) => {
                tracing::debug!(id = delivery.id, "replayed envelope dropped");
                outcome.ack.push(delivery.id);
                continue;
            }
            Err(EnvelopeError::ErasedSession { peer }) => {
                // Sealed by a peer whose state is older than the erasure of
                // this session (or an old envelope again): unreadable. A new
                // session makes what both sides send next readable.
                tracing::debug!(id = delivery.id, "an envelope on an erased session");
                let restarted = sessions
                    .restart(me, &peer, SystemTime::now())
                    .map_err(|e| anyhow::anyhow!("cannot start a new session: {e}"))?;
                outcome
                    .replies
                    .extend(restarted.map(|envelope| ToSend { to: peer, envelope }));
                outcome.unreadable.push(name_of(&peer));
                outcome.ack.push(delivery.id);
                continue;
            }
            Err(EnvelopeError::UnknownSession) => {
                tracing::debug!(id = delivery.id, "an envelope for a session never held");
                outcome.no_session += 1;
                outcome.ack.push(delivery.id);
                continue;
            }
            Err(e) => {
                tracing::debug!(id = delivery.id, error = %e, "envelope failed to open");
                outcome.failed += 1;
                outcome.ack.push(delivery.id);
                continue;
            }
        };
        let sender = opened.sender;
        if opened.peer_went_back {
            outcome.went_back.insert(name_of(&sender));
        }
        let reply = opened.reply.map(|envelope| ToSend {
            to: sender,
            envelope,
        });
        let Some(body) = opened.body else {
            // A bare init or accept: it only moved a handshake on.
            outcome.replies.extend(reply);
            outcome.ack.push(delivery.id);
            continue;
        };
        if let Content::Receipt { state, ids } = body.content {
            if is_contact(&sender) {
                outcome.receipts.push(ReceiptIn {
                    from: sender,
                    state,
                    ids,
                });
            } else {
                tracing::debug!(id = delivery.id, "a receipt from a stranger ignored");
            }
            outcome.replies.extend(reply);
            outcome.ack.push(delivery.id);
            continue;
        }
        if let Content::Reach(reach) = body.content {
            if is_contact(&sender) {
                outcome.reaches.push((sender, reach));
            } else {
                tracing::debug!(id = delivery.id, "a stranger's relay notice ignored");
            }
            outcome.replies.extend(reply);
            outcome.ack.push(delivery.id);
            continue;
        }
        let seen_id = SeenId::new(sender, body.id);
        if in_batch.contains(&seen_id) || store.contains(&seen_id)? {
            tracing::debug!(id = delivery.id, "duplicate message dropped");
            outcome.replies.extend(reply);
            outcome.ack.push(delivery.id);
            continue;
        }
        if seen::is_stale(body.sent_at_ms, now) {
            outcome.stale += 1;
            outcome.replies.extend(reply);
            outcome.ack.push(delivery.id);
            continue;
        }
        let time = local_time_ms(body.sent_at_ms)
            .or_else(|| local_time_ms(delivery.received_at.saturating_mul(1000)))
            .unwrap_or_else(|| "????-??-?? ??:??:??".to_owned());
        let who = if let Some(contact) = book.by_key(&sender) {
            contact.name.to_string()
        } else {
            outcome.unknown_senders.insert(sender);
            format!("unknown {sender}")
        };
        let (group, text) = match body.content {
            Content::Text(text) => (None, text),
            Content::GroupText { group, text } => (Some(group), text),
            Content::Receipt { .. } | Content::Reach(_) => continue,
            // Presence travels live-only (`Notify`); one stored in a mailbox
            // is not a message: dropped unseen.
            Content::Presence(_) => {
                tracing::debug!(id = delivery.id, "a stored presence notice dropped");
                outcome.ack.push(delivery.id);
                continue;
            }
            Content::File(_) | Content::Tree(_) => {
                let (offer, kind) = match body.content {
                    Content::Tree(offer) => (offer, OfferKind::Tree),
                    Content::File(offer) => (offer, OfferKind::File),
                    _ => continue,
                };
                let hint = match files {
                    // Strangers' files are received only when asked for.
                    _ if !is_contact(&sender) => "`sotto receive-all --from-strangers` receives it",
                    Files::AnnounceInChat => "type /receive",
                    _ => "run `sotto receive-all`",
                };
                let line = file_waiting_line(&time, &who, &offer, kind, hint);
                let kept = StoredOffer {
                    sender,
                    message: body.id,
                    sent_at_ms: body.sent_at_ms,
                    received_at: delivery.received_at,
                    offer,
                    kind,
                };
                match offers.add(kept) {
                    Added::Full => {
                        // Left on the relay, to be kept once fewer wait.
                        rollback(sessions)?;
                        outcome.offers_full += 1;
                        continue;
                    }
                    Added::Known => {}
                    Added::New => {
                        offers_changed = true;
                        outcome.announced += 1;
                        if files != Files::Collect {
                            // Kept whether or not the line gets out: the
                            // offer is safe in the home either way.
                            if let Err(e) = print(&line) {
                                outcome.print_error = Some(e);
                            }
                        }
                    }
                }
                in_batch.insert(seen_id);
                shown.push((seen_id, body.sent_at_ms));
                outcome.replies.extend(reply);
                outcome.ack.push(delivery.id);
                if outcome.print_error.is_some() {
                    break;
                }
                continue;
            }
        };
        let shown_as = match &group {
            Some(group) => format!("{}/{who}", group_label(group)),
            None => who,
        };
        if let Err(e) = print(&message_line(&time, &shown_as, &text)) {
            // Not shown: neither remembered nor acknowledged, so it stays on
            // the relay for the next `sotto inbox`.
            rollback(sessions)?;
            outcome.print_error = Some(e);
            break;
        }
        in_batch.insert(seen_id);
        shown.push((seen_id, body.sent_at_ms));
        outcome.replies.extend(reply);
        outcome.ack.push(delivery.id);
        outcome.shown += 1;
        if is_contact(&sender) {
            outcome.shown_ids.push(ShownMessage {
                sender,
                group: group.clone(),
                id: body.id,
            });
        }
        outcome
            .messages
            .push(received(&sender, group, body.sent_at_ms, text));
    }

    // The offers first: an offer remembered as seen but not kept would be
    // dropped as a duplicate when its envelope came again.
    if offers_changed {
        offers.save()?;
    }
    // Durably remembered before the caller acknowledges anything.
    store.record(&shown, now)?;
    outcome.waiting_files = offers.list().len();
    Ok(outcome)
}

/// Seals one receipt per sender (in chunks of [`MAX_RECEIPT_IDS`]) for the
/// messages in `shown`, each in the state `state_of` gives it.
pub fn seal_receipts(
    me: &SecretKey,
    sessions: &mut SessionStore,
    shown: &[ShownMessage],
    state_of: &dyn Fn(&ShownMessage) -> ReceiptState,
) -> Result<Vec<ToSend>> {
    let mut by_sender: BTreeMap<(PublicKey, ReceiptState), Vec<MessageId>> = BTreeMap::new();
    for m in shown {
        by_sender
            .entry((m.sender, state_of(m)))
            .or_default()
            .push(m.id);
    }
    let mut out = Vec::new();
    for ((to, state), ids) in by_sender {
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            let body = Body::new(Content::Receipt {
                state,
                ids: chunk.to_vec(),
            });
            let sealed = sessions
                .seal_to(me, &to, &body, SystemTime::now())
                .map_err(|e| anyhow::anyhow!("cannot seal a receipt: {e}"))?;
            out.push(ToSend {
                to,
                envelope: sealed.envelope,
            });
            out.extend(sealed.renewal.map(|envelope| ToSend { to, envelope }));
        }
    }
    Ok(out)
}

/// One batch of deliveries, start to end under the session lock: the
/// session state and the seen store are loaded, the batch processed, the
/// accepts and receipts it calls for sealed, and the state saved. Returns
/// the outcome and the envelopes to send (after this returns: the state is
/// saved by then). `state_of` decides each receipt. With `reach_me`, a
/// contact whose message was shown and who was not told where to reach me
/// is told now, with the receipts (so a contact who added me by key alone
/// learns my token as soon as I read them).
#[allow(clippy::too_many_arguments)]
pub fn process_batch(
    me: &SecretKey,
    book: &ContactBook,
    sessions: &SessionFiles,
    mine: &RelayPin,
    reach_me: Option<&Mine>,
    pending: Vec<Delivery>,
    files: Files,
    print: &mut dyn FnMut(&str) -> std::io::Result<()>,
    state_of: &dyn Fn(&ShownMessage) -> ReceiptState,
) -> Result<(Outcome, Vec<Sealed>)> {
    let mut batch = sessions.lock(me)?;
    let seen = batch.seen()?;
    let mut offers = batch.offers(me)?;
    let mut outcome = process(
        me,
        book,
        &seen,
        &mut batch.store,
        &mut offers,
        pending,
        seen::now_secs(),
        files,
        print,
    )?;
    drop(seen);
    let mut reach = batch.reach(me)?;
    if !outcome.reaches.is_empty() {
        outcome.moved = take_reaches(book, &mut reach, &outcome.reaches)?;
    }
    let mut told = Vec::new();
    if let Some(mine_now) = reach_me {
        let senders: BTreeSet<PublicKey> = outcome.shown_ids.iter().map(|m| m.sender).collect();
        let mut telling = Telling {
            mine: mine_now,
            book: &mut reach,
        };
        for contact in senders.iter().filter_map(|k| book.by_key(k)) {
            tell_where(me, &mut batch.store, contact, &mut telling, mine, &mut told)
                .map_err(|e| anyhow::anyhow!("cannot seal where to reach me: {e}"))?;
        }
    }
    let mut to_send = std::mem::take(&mut outcome.replies);
    to_send.extend(seal_receipts(
        me,
        &mut batch.store,
        &outcome.shown_ids,
        state_of,
    )?);
    batch.save(me)?;
    reach.save()?;
    let mut sealed = told;
    sealed.extend(addressed(book, to_send, mine));
    Ok((outcome, sealed))
}

/// [`seal_receipts`] in one locked batch of the session state, saved before
/// this returns: the receipts for messages shown earlier (`sotto chat` sends
/// read receipts once their conversation is chosen).
pub fn seal_receipts_and_save(
    me: &SecretKey,
    book: &ContactBook,
    sessions: &SessionFiles,
    mine: &RelayPin,
    shown: &[ShownMessage],
    state_of: &dyn Fn(&ShownMessage) -> ReceiptState,
) -> Result<Vec<Sealed>> {
    let mut batch = sessions.lock(me)?;
    let to_send = seal_receipts(me, &mut batch.store, shown, state_of)?;
    batch.save(me)?;
    Ok(addressed(book, to_send, mine))
}

/// Writes into `contacts.toml` where each contact said to reach them,
/// unless an equal or newer word from them was taken before; returns who
/// moved (name, relay). Only the sender's own entry is ever changed.
fn take_reaches(
    book: &ContactBook,
    taken: &mut ReachBook,
    reaches: &[(PublicKey, Reach)],
) -> Result<Vec<(String, String)>> {
    let mut edited = ContactBook::load(book.path())?;
    let mut moved = Vec::new();
    let mut changed = false;
    for (from, reach) in reaches {
        if !taken.take(from, reach.seq) {
            tracing::debug!("an older relay notice ignored");
            continue;
        }
        let Some(contact) = edited.by_key(from).cloned() else {
            continue;
        };
        let delivery = sotto_keys::Delivery {
            relay: reach.relay.clone(),
            relay_key: reach.relay_key,
            token: Some(reach.token.clone()),
        };
        if contact.delivery() == Some(&delivery) {
            continue;
        }
        let relay_changed = contact.delivery().map(|d| (&d.relay, &d.relay_key))
            != Some((&delivery.relay, &delivery.relay_key));
        edited.set_delivery(contact.name.as_str(), delivery)?;
        changed = true;
        if relay_changed {
            moved.push((contact.name.to_string(), reach.relay.to_string()));
        }
    }
    // Rewritten only when a contact really moved or changed token, so a
    // repeated notice never rewrites a file the user may be editing.
    if changed {
        edited.save()?;
    }
    Ok(moved)
}

/// Envelopes to send back, each named and routed like any other.
fn addressed(book: &ContactBook, to_send: Vec<ToSend>, mine: &RelayPin) -> Vec<Sealed> {
    to_send
        .into_iter()
        .map(|t| Sealed::reply(book, t.to, t.envelope, mine))
        .collect()
}

fn received(sender: &PublicKey, group: Option<String>, at_ms: u64, text: String) -> history::Entry {
    history::Entry {
        at_ms,
        direction: history::Direction::Received,
        peer: Some(*sender),
        group,
        text,
    }
}

/// The line `sotto inbox` (and the chat) prints for a file waiting on the
/// relay; `hint` says how to receive it.
pub fn file_waiting_line(
    time: &str,
    who: &str,
    offer: &FileOffer,
    kind: OfferKind,
    hint: &str,
) -> String {
    let what = match kind {
        OfferKind::File => "a file",
        OfferKind::Tree => "a directory",
    };
    format!(
        "[{time}] {who}: sent {what}: {} ({} bytes) — {hint}",
        sanitize(&offer.name),
        offer.size
    )
}

/// Warnings and notes about a processed batch, for the command to show once
/// the discarded envelopes are acknowledged: had the acknowledgement failed,
/// they would come back, and the error alone would be the one line on stderr.
pub fn notices(outcome: &Outcome) -> Vec<Notice> {
    let mut out = Vec::new();
    let warn = |out: &mut Vec<Notice>, text: String| out.push(Notice::Warning(text));
    let note = |out: &mut Vec<Notice>, text: String| out.push(Notice::Note(text));
    for who in &outcome.unreadable {
        warn(&mut out, format!(
            "a message from {who} could not be read: it was sealed on a session whose keys this home has erased (their home may have been restored from an older backup); ask them to send it again; a new session with them has been started"
        ));
    }
    if outcome.no_session > 0 {
        let what = plural(
            outcome.no_session,
            "an envelope for a session this home never held was discarded",
            "envelopes for sessions this home never held were discarded",
        );
        warn(&mut out, format!(
            "{what}: if this home was restored from a backup or copied from another machine, ask your contacts to send again what they sent since"
        ));
    }
    for (who, relay) in &outcome.moved {
        note(&mut out, format!(
            "{who} now reads from the relay at {relay}; contacts.toml is updated and messages to {who} go there"
        ));
    }
    for who in &outcome.went_back {
        note(&mut out, format!(
            "{who} is sending from an older copy of their sotto state (restored from a backup, or the same home in use on another machine); replies go on the session that copy holds"
        ));
    }
    if outcome.offers_full > 0 {
        warn(&mut out, format!(
            "{} waiting on the relay: more than {} files wait here already; run `sotto receive-all`",
            plural(outcome.offers_full, "a file offer stays", "file offers stay"),
            crate::offers::MAX_OFFERS
        ));
    }
    if outcome.failed > 0 {
        warn(
            &mut out,
            plural(
                outcome.failed,
                "an envelope that failed to decrypt was discarded",
                "envelopes that failed to decrypt were discarded",
            ),
        );
    }
    if outcome.stale > 0 {
        warn(&mut out, plural(
            outcome.stale,
            "a message dated more than 30 days ago was discarded: it cannot be told apart from a replay",
            "messages dated more than 30 days ago were discarded: they cannot be told apart from replays",
        ));
    }
    for key in &outcome.unknown_senders {
        note(&mut out, format!(
            "a message came from {key}, who is not in your contacts; if you know who it is: `sotto contact add NAME {key}`"
        ));
    }
    out
}

/// That files wait in the home for `receive-all` beyond those this batch
/// announced.
pub fn files_waiting(outcome: &Outcome) -> Option<Notice> {
    (outcome.waiting_files > outcome.announced).then(|| {
        Notice::Note(plural(
            outcome.waiting_files,
            "a file is waiting: run `sotto receive-all`",
            "files are waiting: run `sotto receive-all`",
        ))
    })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_owned()
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests;
