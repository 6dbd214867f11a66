//! `sotto inbox`: fetch, open, show once, remember, acknowledge.
//!
//! The order is what makes it safe:
//!
//! 1. every pending envelope is fetched (`Fetch`, up to `Drained`);
//! 2. each is opened with my key; one that fails is reported and dropped, one
//!    whose id was already shown is dropped silently (a replay or a
//!    re-delivery), one dated before the replay window is dropped with a
//!    warning, the rest are printed as `[time] NAME: TEXT`; a file offer is
//!    kept in the home's offers ([`crate::offers`]) for `receive-all` and
//!    announced (``[time] NAME: sent a file: FILE (SIZE bytes) — run `sotto receive-all` ``);
//! 3. the offers are saved, then the ids of the printed messages and offers
//!    are committed to the seen store;
//! 4. only then are the envelopes acknowledged, so the relay deletes them;
//! 5. session accepts and read receipts for what was printed are sent to the
//!    senders (best effort) before the connection closes.
//!
//! Opening goes through the forward-secret session state, loaded, changed and
//! saved in one locked batch together with the seen store
//! ([`crate::sessions`]); a receipt that arrives is not a message and is
//! ignored here.
//!
//! A crash before 4 means the relay delivers again and the seen store hides
//! what was already shown; a failure to print (a closed pipe) stops before the
//! message that could not be shown, which stays on the relay. A sender is
//! named only by the contact book: a key that is not a contact is shown as
//! `unknown sotto1...`, never under a name it chose.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::SystemTime;

use anyhow::{Context, Result};
use sotto_crypto::envelope::{
    Body, Content, MessageId, ReceiptState, KIND_ONE_SHOT, MAX_RECEIPT_IDS,
};
use sotto_crypto::file::FileOffer;
use sotto_crypto::session::SessionStore;
use sotto_crypto::EnvelopeError;
use sotto_keys::{ContactBook, PublicKey, SecretKey};

use super::{block_on, note, tell, warn, Ctx, Out};
use crate::config::Config;
use crate::display::{group_label, local_time_ms, message_line, sanitize};
use crate::history::{self, History};
use crate::identity;
use crate::offers::{Added, Offers, StoredOffer};
use crate::relay_client::{self, Delivery, RelayConn};
use crate::seen::{self, SeenId, SeenStore};
use crate::sessions::SessionFiles;

/// Runs `sotto inbox`.
pub fn run(ctx: &Ctx) -> Result<()> {
    ctx.home.require_identity()?;
    let pin = Config::load(&ctx.home.config())?.relay()?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let sessions = SessionFiles::of(&ctx.home);
    let history = History::open(&ctx.home, &me)?;

    let outcome = block_on(async move {
        let mut conn = relay_client::connect(&pin, &me).await?;
        let fetched = conn.fetch_pending().await?;
        let pending = fetched.deliveries;
        tracing::info!(count = pending.len(), "fetched");
        if fetched.more {
            more_waiting("sotto inbox");
        }
        if pending.is_empty() {
            conn.close().await;
            return Ok::<_, anyhow::Error>(None);
        }
        let me = std::sync::Arc::new(me);
        let (outcome, to_send) = {
            let me = me.clone();
            tokio::task::spawn_blocking(move || {
                let mut out = Out::new();
                // What `sotto inbox` prints has been read.
                let result = process_batch(
                    &me,
                    &book,
                    &sessions,
                    pending,
                    Files::Announce,
                    &mut |line| out.line(line),
                    &|_| ReceiptState::Read,
                )?;
                if let Some(n) = history.record(&result.0.messages) {
                    tell(&n);
                }
                Ok::<_, anyhow::Error>(result)
            })
            .await
            .context("the inbox task failed")??
        };
        let deleted = conn.ack(&outcome.ack).await?;
        tracing::info!(acked = outcome.ack.len(), deleted, "acknowledged");
        send_all(&mut conn, to_send).await;
        conn.close().await;
        Ok(Some(outcome))
    })??;

    let Some(outcome) = outcome else {
        note("no new messages");
        return Ok(());
    };
    report(&outcome);
    if let Some(e) = outcome.print_error {
        return Err(anyhow::Error::new(e).context("cannot write to stdout"));
    }
    if outcome.shown == 0 && outcome.announced == 0 {
        note("no new messages");
    }
    files_waiting(&outcome);
    Ok(())
}

/// Says how many files wait for `receive-all` beyond those just announced.
fn files_waiting(outcome: &Outcome) {
    if outcome.waiting_files > outcome.announced {
        note(&plural(
            outcome.waiting_files,
            "a file is waiting: run `sotto receive-all`",
            "files are waiting: run `sotto receive-all`",
        ));
    }
}

/// What to say of a new file offer met in the mailbox (it is kept in the
/// home's offers either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Files {
    /// `sotto inbox`, `sotto chat`: say a file is waiting for `receive-all`.
    Announce,
    /// `sotto receive-all`: nothing; it downloads what is kept next.
    Collect,
}

/// What processing a batch came to.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
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
}

/// A message from a contact that was shown, for receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShownMessage {
    /// Its authenticated sender (a contact).
    pub sender: PublicKey,
    /// The group it was sent to, as the sender names it.
    pub group: Option<String>,
    /// Its id.
    pub id: MessageId,
}

/// A receipt from a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceiptIn {
    /// The contact who sent it.
    pub from: PublicKey,
    /// How far the messages got.
    pub state: ReceiptState,
    /// The messages.
    pub ids: Vec<MessageId>,
}

/// An envelope to send once the session state that sealed it is saved.
#[derive(Debug, Clone)]
pub(crate) struct ToSend {
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
pub(crate) fn process(
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
            Content::Receipt { .. } => continue,
            // Presence travels live-only (`Notify`); one stored in a mailbox
            // is not a message: dropped unseen.
            Content::Presence(_) => {
                tracing::debug!(id = delivery.id, "a stored presence notice dropped");
                outcome.ack.push(delivery.id);
                continue;
            }
            Content::File(offer) => {
                let line = file_waiting_line(&time, &who, &offer);
                let kept = StoredOffer {
                    sender,
                    message: body.id,
                    sent_at_ms: body.sent_at_ms,
                    received_at: delivery.received_at,
                    offer,
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
                        if files == Files::Announce {
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
pub(crate) fn seal_receipts(
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
/// saved by then). `state_of` decides each receipt.
#[allow(clippy::too_many_arguments)]
pub(crate) fn process_batch(
    me: &SecretKey,
    book: &ContactBook,
    sessions: &SessionFiles,
    pending: Vec<Delivery>,
    files: Files,
    print: &mut dyn FnMut(&str) -> std::io::Result<()>,
    state_of: &dyn Fn(&ShownMessage) -> ReceiptState,
) -> Result<(Outcome, Vec<ToSend>)> {
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
    let mut to_send = std::mem::take(&mut outcome.replies);
    to_send.extend(seal_receipts(
        me,
        &mut batch.store,
        &outcome.shown_ids,
        state_of,
    )?);
    batch.save(me)?;
    Ok((outcome, to_send))
}

/// Sends session accepts and receipts. Best effort: a lost accept only
/// delays the session (the next message completes it), a lost receipt only
/// leaves the sender unsure.
pub(crate) async fn send_all<R, W>(conn: &mut RelayConn<R, W>, to_send: Vec<ToSend>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    for s in to_send {
        if let Err(e) = conn.send_envelope(&s.to, s.envelope).await {
            tracing::debug!(error = %e, "an accept or receipt was not stored");
        }
    }
}

/// Says that one fetch could not hold the whole mailbox.
pub(crate) fn more_waiting(command: &str) {
    super::note(&format!(
        "more is waiting on the relay than one run takes; run `{command}` again for the rest"
    ));
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

/// The line `sotto inbox` prints for a file waiting on the relay.
pub(crate) fn file_waiting_line(time: &str, who: &str, offer: &FileOffer) -> String {
    format!(
        "[{time}] {who}: sent a file: {} ({} bytes) — run `sotto receive-all`",
        sanitize(&offer.name),
        offer.size
    )
}

/// Warnings and notes about a processed batch, on stderr. Called once the
/// discarded envelopes are acknowledged: had the acknowledgement failed, they
/// would come back, and the error alone would be the one line on stderr.
pub(crate) fn report(outcome: &Outcome) {
    for who in &outcome.unreadable {
        warn(&format!(
            "a message from {who} could not be read: it was sealed on a session whose keys this home has erased (their home may have been restored from an older backup); ask them to send it again; a new session with them has been started"
        ));
    }
    if outcome.no_session > 0 {
        let what = plural(
            outcome.no_session,
            "an envelope for a session this home never held was discarded",
            "envelopes for sessions this home never held were discarded",
        );
        warn(&format!(
            "{what}: if this home was restored from a backup or copied from another machine, ask your contacts to send again what they sent since"
        ));
    }
    for who in &outcome.went_back {
        note(&format!(
            "{who} is sending from an older copy of their sotto state (restored from a backup, or the same home in use on another machine); replies go on the session that copy holds"
        ));
    }
    if outcome.offers_full > 0 {
        warn(&format!(
            "{} waiting on the relay: more than {} files wait here already; run `sotto receive-all`",
            plural(outcome.offers_full, "a file offer stays", "file offers stay"),
            crate::offers::MAX_OFFERS
        ));
    }
    if outcome.failed > 0 {
        warn(&plural(
            outcome.failed,
            "an envelope that failed to decrypt was discarded",
            "envelopes that failed to decrypt were discarded",
        ));
    }
    if outcome.stale > 0 {
        warn(&plural(
            outcome.stale,
            "a message dated more than 30 days ago was discarded: it cannot be told apart from a replay",
            "messages dated more than 30 days ago were discarded: they cannot be told apart from replays",
        ));
    }
    for key in &outcome.unknown_senders {
        note(&format!(
            "a message came from {key}, who is not in your contacts; if you know who it is: `sotto contact add NAME {key}`"
        ));
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_owned()
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_crypto::envelope;
    use sotto_crypto::session::SessionConfig;
    use sotto_keys::Contact;
    use std::cell::RefCell;

    const NOW: u64 = 1_800_000_000;

    struct World {
        _dir: tempfile::TempDir,
        me: SecretKey,
        alice: SecretKey,
        book: ContactBook,
        store: SeenStore,
        sessions: RefCell<SessionStore>,
        offers: RefCell<Offers>,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let me = SecretKey::generate();
        let alice = SecretKey::generate();
        let mut book = ContactBook::load(&dir.path().join("contacts.toml")).unwrap();
        book.add(Contact::new("alice".parse().unwrap(), alice.public(), None))
            .unwrap();
        let store = SeenStore::open(&dir.path().join("seen.redb"), NOW).unwrap();
        let offers = Offers::load(&dir.path().join("offers.sealed"), &me).unwrap();
        World {
            _dir: dir,
            sessions: RefCell::new(SessionStore::new(me.public(), SessionConfig::default())),
            offers: RefCell::new(offers),
            me,
            alice,
            book,
            store,
        }
    }

    fn body(text: &str, sent_at_ms: u64) -> Body {
        let mut b = Body::new(Content::Text(text.to_owned()));
        b.sent_at_ms = sent_at_ms;
        b
    }

    fn deliver(id: u64, from: &SecretKey, to: &SecretKey, body: &Body) -> Delivery {
        Delivery {
            id,
            received_at: NOW,
            envelope: envelope::seal(from, &to.public(), body).unwrap(),
        }
    }

    fn run_batch(w: &World, pending: Vec<Delivery>) -> (Outcome, Vec<String>) {
        run_batch_with(w, pending, Files::Announce)
    }

    fn run_batch_with(w: &World, pending: Vec<Delivery>, files: Files) -> (Outcome, Vec<String>) {
        let mut lines = Vec::new();
        let outcome = process(
            &w.me,
            &w.book,
            &w.store,
            &mut w.sessions.borrow_mut(),
            &mut w.offers.borrow_mut(),
            pending,
            NOW,
            files,
            &mut |l| {
                lines.push(l.to_owned());
                Ok(())
            },
        )
        .unwrap();
        (outcome, lines)
    }

    #[test]
    fn contacts_by_name_strangers_by_key_duplicates_once_garbage_acked() {
        let w = world();
        let mallory = SecretKey::generate();
        let hello = body("hello \x1b[31mthere", NOW * 1000);
        let pending = vec![
            deliver(1, &w.alice, &w.me, &hello),
            deliver(2, &w.alice, &w.me, &hello), // replayed in the same batch
            deliver(3, &mallory, &w.me, &body("i am alice", NOW * 1000)),
            Delivery {
                id: 4,
                received_at: NOW,
                envelope: vec![1, 1, 0, 0, 0],
            },
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.ack, vec![1, 2, 3, 4]);
        assert_eq!(outcome.failed, 1);
        assert_eq!(outcome.shown, 2);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with("] alice: hello \\x1b[31mthere"),
            "{}",
            lines[0]
        );
        assert!(lines[0].starts_with('['));
        assert!(
            lines[1].ends_with(&format!("] unknown {}: i am alice", mallory.public())),
            "{}",
            lines[1]
        );
        assert_eq!(
            outcome.unknown_senders.into_iter().collect::<Vec<_>>(),
            vec![mallory.public()]
        );

        // Delivered again later (an ack that was lost): acked, not shown.
        let (outcome, lines) = run_batch(&w, vec![deliver(9, &w.alice, &w.me, &hello)]);
        assert_eq!(outcome.ack, vec![9]);
        assert!(lines.is_empty());
    }

    #[test]
    fn a_message_under_someone_elses_id_does_not_hide_the_real_one() {
        // Mallory learned the id of Alice's group message and sent first.
        let w = world();
        let mallory = SecretKey::generate();
        let real = body("the real one", NOW * 1000);
        let mut forged = body("the forgery", NOW * 1000);
        forged.id = real.id;
        let pending = vec![
            deliver(1, &mallory, &w.me, &forged),
            deliver(2, &w.alice, &w.me, &real),
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.shown, 2, "{lines:?}");
        assert!(lines[1].ends_with("] alice: the real one"), "{lines:?}");
    }

    #[test]
    fn a_message_that_could_not_be_printed_is_neither_remembered_nor_acked() {
        let w = world();
        let first = body("one", NOW * 1000);
        let second = body("two", NOW * 1000);
        let pending = vec![
            deliver(1, &w.alice, &w.me, &first),
            deliver(2, &w.alice, &w.me, &second),
        ];
        let mut calls = 0;
        let outcome = process(
            &w.me,
            &w.book,
            &w.store,
            &mut w.sessions.borrow_mut(),
            &mut w.offers.borrow_mut(),
            pending,
            NOW,
            Files::Announce,
            &mut |_| {
                calls += 1;
                if calls == 2 {
                    Err(std::io::ErrorKind::BrokenPipe.into())
                } else {
                    Ok(())
                }
            },
        )
        .unwrap();
        assert_eq!(outcome.ack, vec![1]);
        assert!(outcome.print_error.is_some());
        assert!(w
            .store
            .contains(&SeenId::new(w.alice.public(), first.id))
            .unwrap());
        assert!(!w
            .store
            .contains(&SeenId::new(w.alice.public(), second.id))
            .unwrap());
    }

    fn file_offer(name: &str) -> Body {
        let offer = FileOffer {
            file_id: sotto_crypto::file::FileId::random(),
            name: name.to_owned(),
            size: 1234,
            hash: [0; 32],
            key: sotto_crypto::file::FileKey::generate(),
        };
        let mut b = Body::new(Content::File(offer));
        b.sent_at_ms = NOW * 1000;
        b
    }

    #[test]
    fn a_group_message_names_the_group_and_the_real_sender() {
        let w = world();
        let mallory = SecretKey::generate();
        let group = |group: &str, text: &str| {
            let mut b = Body::new(Content::GroupText {
                group: group.to_owned(),
                text: text.to_owned(),
            });
            b.sent_at_ms = NOW * 1000;
            b
        };
        let pending = vec![
            deliver(1, &w.alice, &w.me, &group("team", "hi all")),
            // A group name cannot pose as another sender or break the line.
            deliver(2, &mallory, &w.me, &group("team/alice\n\x1b", "x")),
            deliver(3, &mallory, &w.me, &group("", "y")),
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.ack, vec![1, 2, 3]);
        assert!(lines[0].ends_with("] team/alice: hi all"), "{}", lines[0]);
        assert!(
            lines[1].ends_with(&format!(
                "] team_alice_\\x1b/unknown {}: x",
                mallory.public()
            )),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with(&format!("] ?/unknown {}: y", mallory.public())));
        assert_eq!(outcome.messages.len(), 3);
        assert_eq!(outcome.messages[0].group.as_deref(), Some("team"));
        assert_eq!(outcome.messages[0].peer, Some(w.alice.public()));
    }

    #[test]
    fn inbox_keeps_an_offer_in_the_home_announces_it_once_and_acks_it() {
        let w = world();
        let offer = file_offer("report\x1b[2J.pdf");
        let pending = vec![
            deliver(1, &w.alice, &w.me, &offer),
            deliver(2, &w.alice, &w.me, &body("see the file", NOW * 1000)),
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.ack, vec![1, 2]);
        assert_eq!((outcome.shown, outcome.announced), (1, 1));
        assert_eq!(outcome.waiting_files, 1);
        let time = local_time_ms(NOW * 1000).unwrap();
        assert_eq!(
            lines[0],
            format!("[{time}] alice: sent a file: report\\x1b[2J.pdf (1234 bytes) — run `sotto receive-all`")
        );
        assert!(w
            .store
            .contains(&SeenId::new(w.alice.public(), offer.id))
            .unwrap());
        // Kept, and saved: a fresh load of the home has it, with its key.
        let kept = Offers::load(&w._dir.path().join("offers.sealed"), &w.me).unwrap();
        assert_eq!(kept.list().len(), 1);
        let Content::File(sent) = &offer.content else {
            panic!()
        };
        assert_eq!(&kept.list()[0].offer, sent);
        assert_eq!(kept.list()[0].sender, w.alice.public());
        // Delivered again (an Ack that was lost): acknowledged, not announced.
        let (outcome, lines) = run_batch(&w, vec![deliver(1, &w.alice, &w.me, &offer)]);
        assert_eq!(outcome.ack, vec![1]);
        assert!(lines.is_empty());
        assert_eq!(outcome.waiting_files, 1);
    }

    #[test]
    fn receive_all_keeps_offers_in_order_and_acks_everything() {
        let w = world();
        let mallory = SecretKey::generate();
        let a = file_offer("a.txt");
        let b = file_offer("b.txt");
        let pending = vec![
            deliver(1, &w.alice, &w.me, &a),
            deliver(2, &w.alice, &w.me, &body("hi", NOW * 1000)),
            deliver(3, &mallory, &w.me, &b),
            deliver(4, &w.alice, &w.me, &a), // the same offer delivered twice
        ];
        let (outcome, lines) = run_batch_with(&w, pending, Files::Collect);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(outcome.ack, vec![1, 2, 3, 4]);
        let offers = w.offers.borrow();
        let kept: Vec<_> = offers
            .list()
            .iter()
            .map(|o| (o.offer.name.as_str(), o.sender))
            .collect();
        assert_eq!(
            kept,
            vec![("a.txt", w.alice.public()), ("b.txt", mallory.public())]
        );
        assert_eq!(offers.list()[0].message, a.id);
    }

    #[test]
    fn stale_messages_are_dropped_and_times_are_the_senders() {
        let w = world();
        let old = body("from long ago", (NOW - 31 * 24 * 3600) * 1000);
        let (outcome, lines) = run_batch(
            &w,
            vec![
                deliver(1, &w.alice, &w.me, &old),
                deliver(2, &w.alice, &w.me, &body("now", NOW * 1000)),
            ],
        );
        assert_eq!(outcome.ack, vec![1, 2]);
        assert_eq!(outcome.stale, 1);
        assert_eq!(lines.len(), 1);
        let expected = local_time_ms(NOW * 1000).unwrap();
        assert_eq!(lines[0], format!("[{expected}] alice: now"));
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;
    use sotto_crypto::session::SessionConfig;
    use sotto_keys::Contact;

    const NOW: u64 = 1_800_000_000;

    fn store_of(k: &SecretKey) -> SessionStore {
        SessionStore::new(k.public(), SessionConfig::default())
    }

    fn text(t: &str) -> Body {
        Body::new(Content::Text(t.to_owned()))
    }

    fn batch(
        me: &SecretKey,
        book: &ContactBook,
        seen: &SeenStore,
        sessions: &mut SessionStore,
        offers: &mut Offers,
        envelopes: &[Vec<u8>],
        files: Files,
    ) -> (Outcome, Vec<String>) {
        let pending = envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| Delivery {
                id: i as u64 + 1,
                received_at: NOW,
                envelope: e.clone(),
            })
            .collect();
        let mut lines = Vec::new();
        let outcome = process(
            me,
            book,
            seen,
            sessions,
            offers,
            pending,
            seen::now_secs(),
            files,
            &mut |l| {
                lines.push(l.to_owned());
                Ok(())
            },
        )
        .unwrap();
        (outcome, lines)
    }

    #[test]
    fn sessions_replies_replays_receipts_and_files_left_on_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
        let mut book = ContactBook::load(&dir.path().join("contacts.toml")).unwrap();
        book.add(Contact::new("alice".parse().unwrap(), alice.public(), None))
            .unwrap();
        let seen = SeenStore::open(&dir.path().join("seen.redb"), seen::now_secs()).unwrap();
        let (mut at_alice, mut at_bob) = (store_of(&alice), store_of(&bob));
        let mut bob_offers = Offers::load(&dir.path().join("bob-offers"), &bob).unwrap();
        let mut alice_offers = Offers::load(&dir.path().join("alice-offers"), &alice).unwrap();
        let now = SystemTime::now();

        // An init from a contact: shown, and answered with a bare accept.
        let first = at_alice
            .seal_to(&alice, &bob.public(), &text("one"), now)
            .unwrap();
        assert_eq!(first.envelope[1], 2);
        let (out, lines) = batch(
            &bob,
            &book,
            &seen,
            &mut at_bob,
            &mut bob_offers,
            &[first.envelope],
            Files::Announce,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(out.replies.len(), 1);
        assert_eq!(out.shown_ids.len(), 1);
        at_alice
            .open(&alice, &out.replies[0].envelope, now, |_| true)
            .unwrap();

        // Now forward-secret; the same bytes again are dropped, yet acked.
        let second = at_alice
            .seal_to(&alice, &bob.public(), &text("two"), now)
            .unwrap();
        assert_eq!(second.envelope[1], 4);
        let twice = [second.envelope.clone(), second.envelope];
        let (out, lines) = batch(
            &bob,
            &book,
            &seen,
            &mut at_bob,
            &mut bob_offers,
            &twice,
            Files::Announce,
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(out.ack, vec![1, 2]);
        assert_eq!(out.failed, 0);

        // A file offer is kept in the home and acknowledged; the same
        // envelope again is dropped, and acknowledged again.
        let offer = sotto_crypto::file::FileOffer {
            file_id: sotto_crypto::file::FileId::random(),
            name: "f.txt".into(),
            size: 1,
            hash: [0; 32],
            key: sotto_crypto::file::FileKey::generate(),
        };
        let file = at_alice
            .seal_to(&alice, &bob.public(), &Body::new(Content::File(offer)), now)
            .unwrap();
        for round in 0..2 {
            let (out, _) = batch(
                &bob,
                &book,
                &seen,
                &mut at_bob,
                &mut bob_offers,
                std::slice::from_ref(&file.envelope),
                Files::Collect,
            );
            assert_eq!(out.ack, vec![1]);
            assert_eq!(out.announced, usize::from(round == 0));
            assert_eq!(bob_offers.list().len(), 1);
        }

        // Bob's receipt for what he read reaches Alice as a receipt, not a message.
        let receipts =
            seal_receipts(&bob, &mut at_bob, &out_ids(&alice), &|_| ReceiptState::Read).unwrap();
        assert_eq!(receipts.len(), 1);
        let mut alice_book = ContactBook::load(&dir.path().join("alice.toml")).unwrap();
        let alice_seen = SeenStore::open(&dir.path().join("alice.redb"), seen::now_secs()).unwrap();
        let envs = [receipts[0].envelope.clone()];
        // From a stranger: ignored.
        let (out, lines) = batch(
            &alice,
            &alice_book,
            &alice_seen,
            &mut at_alice,
            &mut alice_offers,
            &envs,
            Files::Announce,
        );
        assert!(lines.is_empty() && out.receipts.is_empty());
        assert_eq!(out.ack, vec![1]);
        alice_book
            .add(Contact::new("bob".parse().unwrap(), bob.public(), None))
            .unwrap();
        let again =
            seal_receipts(&bob, &mut at_bob, &out_ids(&alice), &|_| ReceiptState::Read).unwrap();
        let (out, lines) = batch(
            &alice,
            &alice_book,
            &alice_seen,
            &mut at_alice,
            &mut alice_offers,
            &[again[0].envelope.clone()],
            Files::Announce,
        );
        assert!(lines.is_empty());
        assert_eq!(out.receipts.len(), 1);
        assert_eq!(out.receipts[0].state, ReceiptState::Read);
        assert_eq!(out.receipts[0].ids, vec![MessageId([7; 16])]);
    }

    fn out_ids(sender: &SecretKey) -> Vec<ShownMessage> {
        vec![ShownMessage {
            sender: sender.public(),
            group: None,
            id: MessageId([7; 16]),
        }]
    }
}
