//! The first half of `sotto receive-all` and `sotto files`: the mailbox
//! emptied into the home.
//!
//! The mailbox is fetched once. Text messages are printed, remembered and
//! acknowledged exactly as `sotto inbox` does ([`crate::inbound`]): had they
//! been left, they would be taken for replays once remembered. File offers
//! are kept in the home's offers ([`crate::offers`]), with those `inbox` or
//! `chat` kept earlier, and returned with who sent them, nothing downloaded.

use std::sync::Arc;

use anyhow::{Context, Result};
use sotto_keys::{ContactBook, SecretKey};

use super::{more_waiting, tell, Ctx, Out};
use crate::config::{Config, RelayPin};
use crate::display::local_time_ms;
use crate::identity;
use crate::inbound::{self, process_batch, Files, Outcome};
use crate::offers::StoredOffer;
use crate::outbox::send_replies;
use crate::reach;
use crate::relay_client;
use crate::sessions::SessionFiles;
use sotto_crypto::envelope::ReceiptState;

/// What a command that receives files works with.
pub(crate) struct Opened {
    pub(crate) config: Config,
    /// My relay, then relays being drained after a move (files offered
    /// before it may still be there).
    pub(crate) holders: Vec<RelayPin>,
    pub(crate) book: Arc<ContactBook>,
    pub(crate) me: Arc<SecretKey>,
    pub(crate) store: Arc<SessionFiles>,
    mine: reach::Mine,
}

/// Loads the home: config, contacts, identity (asking its passphrase).
pub(crate) fn open(ctx: &Ctx) -> Result<Opened> {
    ctx.home.require_identity()?;
    let config = Config::load(&ctx.home.config())?;
    let pin = config.relay()?;
    let mut holders = vec![pin.clone()];
    holders.extend(config.draining.iter().map(crate::config::OldRelay::pin));
    let book = Arc::new(ContactBook::load(&ctx.home.contacts())?);
    let me = Arc::new(identity::load(&ctx.home, ctx.passphrase_file.as_deref())?);
    let store = Arc::new(SessionFiles::of(&ctx.home));
    let mine = reach::mine(&ctx.home, &pin)?;
    Ok(Opened {
        config,
        holders,
        book,
        me,
        store,
        mine,
    })
}

/// An offer kept in the home, with what the lines about it show.
pub(crate) struct Waiting {
    pub(crate) offer: StoredOffer,
    /// Its date as shown.
    pub(crate) time: String,
    /// Who sent it, safe to print: a contact's name, or `stranger KEY…`.
    pub(crate) who: String,
    /// Whether the sender is in contacts.toml.
    pub(crate) contact: bool,
}

impl Waiting {
    /// `offer`, its sender looked up in `book`.
    pub(crate) fn new(offer: StoredOffer, book: &ContactBook) -> Self {
        let time = local_time_ms(offer.sent_at_ms)
            .or_else(|| local_time_ms(offer.received_at.saturating_mul(1000)))
            .unwrap_or_else(|| "????-??-?? ??:??:??".to_owned());
        let (who, contact) = match book.by_key(&offer.sender) {
            Some(contact) => (contact.name.to_string(), true),
            None => (stranger(&offer.sender), false),
        };
        Self {
            offer,
            time,
            who,
            contact,
        }
    }
}

/// How a sender who is not a contact is shown: enough of the key to tell
/// two apart and to find it in `sotto inbox`'s notes.
pub(crate) fn stranger(key: &sotto_keys::PublicKey) -> String {
    let full = key.to_string();
    let short: String = full.chars().take(16).collect();
    format!("stranger {short}…")
}

/// What [`collect`] found.
pub(crate) struct Collected {
    /// Every offer kept in the home, oldest first.
    pub(crate) waiting: Vec<Waiting>,
    /// Text messages printed.
    pub(crate) shown: usize,
}

/// Fetches the mailbox into the home (see the module's doc).
pub(crate) async fn collect(opened: &Opened, command: &str) -> Result<Collected> {
    let (pin, me) = (&opened.holders[0], &opened.me);
    let mut conn = relay_client::connect(pin, me).await?;
    let first_contact = opened.config.accepts_first_contact();
    reach::register(&mut conn, &opened.store, me, &opened.mine, first_contact).await?;
    let fetched = conn.fetch_pending().await?;
    let pending = fetched.deliveries;
    tracing::info!(count = pending.len(), "fetched");
    if fetched.more {
        more_waiting(command);
    }
    let (outcome, to_send) = if pending.is_empty() {
        (Outcome::default(), Vec::new())
    } else {
        let (me, store, book, pin) = (
            me.clone(),
            opened.store.clone(),
            opened.book.clone(),
            pin.clone(),
        );
        let mine = opened.mine.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Out::new();
            process_batch(
                &me,
                &book,
                &store,
                &pin,
                Some(&mine),
                pending,
                Files::Collect,
                &mut |line| out.line(line),
                // Printed: read.
                &|_| ReceiptState::Read,
            )
        })
        .await
        .context("the inbox task failed")??
    };
    if !outcome.ack.is_empty() {
        let deleted = conn.ack(&outcome.ack).await?;
        tracing::info!(acked = outcome.ack.len(), deleted, "acknowledged");
    }
    send_replies(pin, to_send).await;
    conn.close().await;
    for n in inbound::notices(&outcome) {
        tell(&n);
    }
    if let Some(e) = outcome.print_error {
        return Err(anyhow::Error::new(e).context("cannot write to stdout"));
    }
    let kept = {
        let (me, store) = (me.clone(), opened.store.clone());
        tokio::task::spawn_blocking(move || store.with_offers(&me, |o| Ok(o.list().to_vec())))
            .await
            .context("the offers task failed")??
    };
    Ok(Collected {
        waiting: kept
            .into_iter()
            .map(|o| Waiting::new(o, &opened.book))
            .collect(),
        shown: outcome.shown,
    })
}

/// Drops the offer of `file_id` from the home; whether it was there.
pub(crate) async fn forget(
    me: &Arc<SecretKey>,
    store: &Arc<SessionFiles>,
    file_id: sotto_crypto::file::FileId,
) -> Result<bool> {
    let (me, store) = (me.clone(), store.clone());
    tokio::task::spawn_blocking(move || {
        store.with_offers(&me, |offers| {
            let found = offers.remove(file_id).is_some();
            if found {
                offers.save()?;
            }
            Ok(found)
        })
    })
    .await
    .map_err(anyhow::Error::from)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stranger_shows_the_start_of_their_key() {
        let key = SecretKey::generate().public();
        let shown = stranger(&key);
        assert!(shown.starts_with("stranger sotto1"), "{shown}");
        assert_eq!(shown.chars().count(), "stranger ".len() + 16 + 1);
        assert!(key
            .to_string()
            .starts_with(&shown["stranger ".len()..shown.len() - 3]));
    }
}
