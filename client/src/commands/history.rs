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

use anyhow::Result;
use sotto_keys::ContactBook;

use super::contact::unknown_contact;
use super::inbox::group_label;
use super::{note, Ctx, Out};
use crate::cli::HistoryArgs;
use crate::display::{local_time_ms, message_line};
use crate::history::{Direction, Entry, History};

/// Runs `sotto history`.
pub fn run(ctx: &Ctx, args: HistoryArgs) -> Result<()> {
    let book = ContactBook::load(&ctx.home.contacts())?;
    let entries = History::at(ctx.home.history()).read_all()?;
    let lines = lines_for(&book, &args.name, &entries)?;
    if lines.is_empty() {
        note(&format!("no messages with {} yet", args.name));
        return Ok(());
    }
    let mut out = Out::new();
    for line in lines {
        out.line(&line)?;
    }
    out.flush()?;
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
