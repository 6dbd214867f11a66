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
//! Steps 2 and 3 are the inbound pipeline that `chat` and `receive-all`
//! share ([`crate::inbound`]). Opening goes through the forward-secret
//! session state, loaded, changed and saved in one locked batch together
//! with the seen store ([`crate::sessions`]); a receipt that arrives is not
//! a message and is ignored here.
//!
//! A crash before 4 means the relay delivers again and the seen store hides
//! what was already shown; a failure to print (a closed pipe) stops before the
//! message that could not be shown, which stays on the relay. A sender is
//! named only by the contact book: a key that is not a contact is shown as
//! `unknown sotto1...`, never under a name it chose.

use std::sync::Arc;

use anyhow::{Context, Result};
use sotto_crypto::envelope::ReceiptState;
use sotto_keys::{ContactBook, SecretKey};

use super::{block_on, more_waiting, note, tell, warn, Ctx, Out};
use crate::config::{self, Changes, Config, OldRelay, RelayPin};
use crate::history::History;
use crate::identity;
use crate::inbound::Outcome;
use crate::inbound::{self, process_batch, Files};
use crate::outbox::send_replies;
use crate::reach;
use crate::reach::Mine;
use crate::relay_client;
use crate::sessions::SessionFiles;

/// Runs `sotto inbox`.
pub fn run(ctx: &Ctx) -> Result<()> {
    ctx.home.require_identity()?;
    let config = Config::load(&ctx.home.config())?;
    let pin = config.relay()?;
    let me = Arc::new(identity::load(&ctx.home, ctx.passphrase_file.as_deref())?);
    let sessions = SessionFiles::of(&ctx.home);
    let history = Arc::new(History::open(&ctx.home, &me)?);
    let mine = reach::mine(&ctx.home, &pin)?;

    let registering = Some((&mine, config.accepts_first_contact()));
    let mut outcome = read(ctx, &pin, registering, &me, &sessions, &history)?;
    let mut drained = Vec::new();
    for old in &config.draining {
        let old = old.pin();
        // An old relay that cannot be reached is said, and tried next time.
        match read(ctx, &old, None, &me, &sessions, &history) {
            Ok(None) => drained.push(old),
            Ok(Some(more)) => outcome = Some(merge(outcome, more)),
            Err(e) => warn(&format!(
                "the old relay at {} was not read: {}",
                old.addr,
                crate::error_line(&e)
            )),
        }
    }
    if !drained.is_empty() {
        // Files offered from an old relay are downloaded from it: it is
        // read until no offer waits either.
        let offers = sessions.with_offers(&me, |o| Ok(o.list().len()))?;
        if offers == 0 {
            forget_drained(ctx, &config, &drained)?;
        }
    }

    let Some(outcome) = outcome else {
        note("no new messages");
        return Ok(());
    };
    for n in inbound::notices(&outcome) {
        tell(&n);
    }
    if let Some(e) = outcome.print_error {
        return Err(anyhow::Error::new(e).context("cannot write to stdout"));
    }
    if outcome.shown == 0 && outcome.announced == 0 {
        note("no new messages");
    }
    if let Some(n) = inbound::files_waiting(&outcome) {
        tell(&n);
    }
    Ok(())
}

/// Reads the mailbox on relay `pin` once: fetched, shown, remembered,
/// acknowledged, answered. `None` if it was empty. `mine` (my current
/// relay, and whether it takes first contacts) registers my token there
/// first; an old relay being drained gets none.
fn read(
    ctx: &Ctx,
    pin: &RelayPin,
    mine: Option<(&Mine, bool)>,
    me: &Arc<SecretKey>,
    sessions: &SessionFiles,
    history: &Arc<History>,
) -> Result<Option<Outcome>> {
    let book = ContactBook::load(&ctx.home.contacts())?;
    let (pin, mine, me, sessions, history) = (
        pin.clone(),
        mine.map(|(m, f)| (m.clone(), f)),
        me.clone(),
        sessions.clone(),
        history.clone(),
    );
    block_on(async move {
        let mut conn = relay_client::connect(&pin, &me).await?;
        if let Some((mine, first_contact)) = &mine {
            let first_contact = *first_contact;
            reach::register(&mut conn, &sessions, &me, mine, first_contact).await?;
        }
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
        let (outcome, to_send) = {
            let (me, pin) = (me.clone(), pin.clone());
            tokio::task::spawn_blocking(move || {
                let mut out = Out::new();
                // What `sotto inbox` prints has been read.
                let result = process_batch(
                    &me,
                    &book,
                    &sessions,
                    &pin,
                    mine.as_ref().map(|(m, _)| m),
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
        send_replies(&pin, to_send).await;
        conn.close().await;
        Ok(Some(outcome))
    })?
}

/// Two relays' outcomes as one, for what is said at the end.
fn merge(a: Option<Outcome>, b: Outcome) -> Outcome {
    let Some(mut a) = a else {
        return b;
    };
    a.shown += b.shown;
    a.announced += b.announced;
    a.waiting_files = a.waiting_files.max(b.waiting_files);
    a.offers_full += b.offers_full;
    a.unreadable.extend(b.unreadable);
    a.no_session += b.no_session;
    a.went_back.extend(b.went_back);
    a.unknown_senders.extend(b.unknown_senders);
    a.failed += b.failed;
    a.stale += b.stale;
    a.moved.extend(b.moved);
    if a.print_error.is_none() {
        a.print_error = b.print_error;
    }
    a
}

/// Drops from `draining` the old relays found empty, and says so.
pub(crate) fn forget_drained(ctx: &Ctx, config: &Config, drained: &[RelayPin]) -> Result<()> {
    if drained.is_empty() {
        return Ok(());
    }
    let left: Vec<RelayPin> = config
        .draining
        .iter()
        .map(OldRelay::pin)
        .filter(|p| !drained.contains(p))
        .collect();
    config::apply(
        &ctx.home.config(),
        &Changes {
            draining: Some(&left),
            ..Changes::default()
        },
    )?;
    for p in drained {
        note(&format!(
            "the old relay at {} is empty; it is no longer read",
            p.addr
        ));
    }
    Ok(())
}
