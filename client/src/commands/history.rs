//! `sotto history NAME`: the messages exchanged with a contact or in a group,
//! oldest first, from the local history (see [`crate::history`]).
//!
//! The lines are those of [`crate::history::lines_for`] (`[time] NAME: TEXT`,
//! `[time] me -> NAME: TEXT`, `[time] GROUP/NAME: TEXT`, `[time] me -> GROUP:
//! TEXT`), the same as the chat's `/history`.
//!
//! The history is sealed with the identity, so reading it asks for the
//! passphrase like any command that uses the key. `--clear` removes it all.

use anyhow::{bail, Result};
use sotto_keys::ContactBook;

use super::{note, Ctx, Out};
use crate::cli::HistoryArgs;
use crate::config::Config;
use crate::contacts::unknown_contact;
use crate::history::{self, lines_for, History, HistoryOff};
use crate::identity;

/// Runs `sotto history`.
pub fn run(ctx: &Ctx, args: HistoryArgs) -> Result<()> {
    if args.clear {
        return clear(ctx);
    }
    let Some(name) = args.name else {
        bail!("name the contact or group: `sotto history NAME`");
    };
    ctx.home.require_identity()?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    // Before the passphrase is asked: a typo needs no key.
    if book.get(&name).is_none() && book.group(&name).is_none() {
        return Err(unknown_contact(&name));
    }
    let keep = Config::load(&ctx.home.config())?.keeps_history();
    if !keep && !History::exists_in(&ctx.home) {
        note(
            &HistoryOff {
                config: ctx.home.config(),
            }
            .to_string(),
        );
        return Ok(());
    }
    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let history = History::with_setting(&ctx.home, &me, keep)?;
    let entries = history.read_all()?;
    if !keep {
        note(&format!(
            "history is off (`history = false` in {}): nothing new is kept; what follows was kept before, and `sotto history --clear` removes it",
            ctx.home.config().display()
        ));
    }
    let lines = lines_for(&book, &name, &entries)?;
    if lines.is_empty() {
        note(&format!("no messages with {name} yet"));
        return Ok(());
    }
    let mut out = Out::new();
    for line in lines {
        out.line(&line)?;
    }
    out.flush()?;
    Ok(())
}

/// `sotto history --clear`: needs no identity, so a forgotten passphrase
/// does not keep anyone from deleting their history.
fn clear(ctx: &Ctx) -> Result<()> {
    let removed = history::clear(&ctx.home)?;
    if removed.is_empty() {
        note("no history to clear");
    } else {
        let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        note(&format!(
            "removed {}; the disk may keep the old bytes until they are overwritten",
            names.join(" and ")
        ));
    }
    if Config::load(&ctx.home.config()).is_ok_and(|c| c.keeps_history()) {
        note("new messages are still kept; set `history = false` in config.toml to keep none");
    }
    Ok(())
}
