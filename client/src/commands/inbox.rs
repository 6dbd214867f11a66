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

use anyhow::{Context, Result};
use sotto_crypto::envelope::ReceiptState;
use sotto_keys::ContactBook;

use super::{block_on, more_waiting, note, tell, Ctx, Out};
use crate::config::Config;
use crate::history::History;
use crate::identity;
use crate::inbound::{self, process_batch, Files};
use crate::outbox::send_replies;
use crate::reach;
use crate::relay_client;
use crate::sessions::SessionFiles;

/// Runs `sotto inbox`.
pub fn run(ctx: &Ctx) -> Result<()> {
    ctx.home.require_identity()?;
    let pin = Config::load(&ctx.home.config())?.relay()?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let sessions = SessionFiles::of(&ctx.home);
    let mine = reach::mine(&ctx.home, &pin)?;
    let registering = sessions.clone();
    let history = History::open(&ctx.home, &me)?;

    let outcome = block_on(async move {
        let mut conn = relay_client::connect(&pin, &me).await?;
        reach::register(&mut conn, &registering, &me, &mine).await?;
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
            let (me, pin) = (me.clone(), pin.clone());
            tokio::task::spawn_blocking(move || {
                let mut out = Out::new();
                // What `sotto inbox` prints has been read.
                let result = process_batch(
                    &me,
                    &book,
                    &sessions,
                    &pin,
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
        send_replies(to_send).await;
        conn.close().await;
        Ok(Some(outcome))
    })??;

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
