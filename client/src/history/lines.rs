//! How the history is shown: the lines of `sotto history NAME` and of the
//! chat's `/history`, which must read the same.
//!
//! - `[time] NAME: TEXT` received from the contact NAME;
//! - `[time] me -> NAME: TEXT` sent to NAME;
//! - `[time] GROUP/NAME: TEXT` received in the group (from NAME, or
//!   `unknown sotto1...`);
//! - `[time] me -> GROUP: TEXT` sent to the group.
//!
//! Contact names never contain a space, so `me -> ` cannot be forged by one;
//! text and group names from the network are neutralised as everywhere.

use anyhow::Result;
use sotto_keys::ContactBook;

use super::{Direction, Entry};
use crate::contacts::unknown_contact;
use crate::display::{group_label, local_time_ms, message_line};

/// The history lines about the contact or group `name`, oldest first.
pub fn lines_for(book: &ContactBook, name: &str, entries: &[Entry]) -> Result<Vec<String>> {
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
    use crate::history::Direction;
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
