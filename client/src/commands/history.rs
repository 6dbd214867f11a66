//! `sotto history NAME`: the messages exchanged with a contact or in a group,
//! oldest first, from the local history (see [`crate::history`]).
//!
//! Lines, text neutralised as everywhere:
//!
//! - `[time] NAME: TEXT` received from the contact NAME;
//! - `[time] me -> NAME: TEXT` sent to NAME;
//! - `[time] GROUP/NAME: TEXT` received in the group (from NAME, or
//!   `unknown sotto1...`);
//! - `[time] me -> GROUP: TEXT` sent to the group.
//!
//! Contact names never contain a space, so `me -> ` cannot be forged by one.
//!
//! The history is sealed with the identity, so reading it asks for the
//! passphrase like any command that uses the key. `--clear` removes it all.

use anyhow::{bail, Result};
use sotto_keys::ContactBook;

use super::contact::unknown_contact;
use super::inbox::group_label;
use super::{note, Ctx, Out};
use crate::cli::HistoryArgs;
use crate::config::Config;
use crate::display::{local_time_ms, message_line};
use crate::history::{self, Direction, Entry, History, HistoryOff};
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

/// The history lines about the contact or group `name`, oldest first.
pub(crate) fn lines_for(book: &ContactBook, name: &str, entries: &[Entry]) -> Result<Vec<String>> {
    let time = |e: &Entry| local_time_ms(e.at_ms).unwrap_or_else(|| "????-??-?? ??:??:??".into());
    if let Some(contact) = book.get(name) {
        return Ok(entries
            .iter()
            .filter(|e| e.group.is_none() && e.peer == Some(contact.key))
            .map(|e| match e.direction {
                Direction::Sent => message_line(&time(e), &format!("me -> {name}"), &e.text),
                Direction::Received => message_line(&time(e), name, &e.text),
            })
            .collect());
    }
    if book.group(name).is_some() {
        return Ok(entries
            .iter()
            .filter(|e| e.group.as_deref() == Some(name))
            .map(|e| match (e.direction, e.peer) {
                (Direction::Received, Some(sender)) => {
                    let who = match book.by_key(&sender) {
                        Some(c) => c.name.to_string(),
                        None => format!("unknown {sender}"),
                    };
                    message_line(&time(e), &format!("{}/{who}", group_label(name)), &e.text)
                }
                _ => message_line(&time(e), &format!("me -> {name}"), &e.text),
            })
            .collect());
    }
    Err(unknown_contact(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_keys::SecretKey;

    #[test]
    fn history_lines_name_both_sides_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let bob = SecretKey::generate().public();
        let eve = SecretKey::generate().public();
        let path = dir.path().join("contacts.toml");
        std::fs::write(
            &path,
            format!("[contacts.bob]\nkey = \"{bob}\"\n[groups.team]\nmembers = [\"bob\"]\n"),
        )
        .unwrap();
        let book = ContactBook::load(&path).unwrap();
        let e = |direction, peer, group: Option<&str>, text: &str| Entry {
            at_ms: 1_700_000_000_000,
            direction,
            peer,
            group: group.map(str::to_owned),
            text: text.to_owned(),
        };
        let entries = vec![
            e(Direction::Sent, Some(bob), None, "hi bob"),
            e(Direction::Received, Some(bob), None, "hi \x1b[2J"),
            e(Direction::Sent, None, Some("team"), "hi team"),
            e(Direction::Received, Some(bob), Some("team"), "yo"),
            e(Direction::Received, Some(eve), Some("team"), "me too"),
            e(Direction::Received, Some(eve), None, "not bob"),
        ];
        let strip = |lines: Vec<String>| -> Vec<String> {
            lines
                .into_iter()
                .map(|l| l[l.find("] ").unwrap() + 2..].to_owned())
                .collect()
        };
        assert_eq!(
            strip(lines_for(&book, "bob", &entries).unwrap()),
            ["me -> bob: hi bob", "bob: hi \\x1b[2J"]
        );
        assert_eq!(
            strip(lines_for(&book, "team", &entries).unwrap()),
            [
                "me -> team: hi team".to_owned(),
                "team/bob: yo".to_owned(),
                format!("team/unknown {eve}: me too")
            ]
        );
        assert!(lines_for(&book, "zed", &entries).is_err());
    }
}
