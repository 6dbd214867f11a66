//! The contact book as every command presents it: the listing, and the
//! error for a name that is not in it.
//!
//! The book itself (`contacts.toml`, the trust store) is
//! [`sotto_keys::ContactBook`]; what is here is the client's wording about
//! it. `contact list`, the chat's `/contacts`, `send`, `history` and `chat`
//! all name contacts, and each must say the same thing the same way: one
//! line per contact or group, and, for a name the book lacks, the one
//! command that adds it.

use anyhow::anyhow;
use sotto_keys::{ContactBook, ContactName};

use crate::display::sanitize;

/// One line per contact (`NAME  KEY  verified|unchecked  RELAY|-`), then one
/// per group (`NAME  group  MEMBER,MEMBER`), names padded to line up.
pub fn list_lines(book: &ContactBook) -> Vec<String> {
    let width = book
        .contacts()
        .map(|c| c.name.as_str().len())
        .chain(book.groups().iter().map(|g| g.name.as_str().len()))
        .max()
        .unwrap_or(0);
    let mut lines: Vec<String> = book
        .contacts()
        .map(|c| {
            let mark = if c.verified { "verified" } else { "unchecked" };
            let relay = c
                .relay
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            format!("{:<width$}  {}  {mark:<9}  {relay}", c.name.as_str(), c.key)
        })
        .collect();
    for group in book.groups() {
        let members: Vec<&str> = group.members.iter().map(ContactName::as_str).collect();
        lines.push(format!(
            "{:<width$}  group  {}",
            group.name.as_str(),
            members.join(",")
        ));
    }
    lines
}

/// The error for a name that is not in the book, with the command to fix it.
pub fn unknown_contact(name: &str) -> anyhow::Error {
    match name.parse::<ContactName>() {
        Ok(valid) => anyhow!("unknown contact '{valid}': add them first with `sotto contact add {valid} KEY`"),
        Err(_) => anyhow!(
            "unknown contact '{}': contact names use only A-Z a-z 0-9 . _ - (see `sotto contact list`)",
            sanitize(name)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_keys::{Contact, PublicKey};

    #[test]
    fn unknown_contact_message_names_the_fix() {
        assert_eq!(
            unknown_contact("bob").to_string(),
            "unknown contact 'bob': add them first with `sotto contact add bob KEY`"
        );
        assert!(!unknown_contact("b\x1bob").to_string().contains('\x1b'));
    }

    #[test]
    fn the_list_has_one_aligned_line_per_contact_then_groups() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ContactBook::load(&dir.path().join("contacts.toml")).unwrap();
        let alice = PublicKey::from_bytes([1; 32]);
        let bob = PublicKey::from_bytes([2; 32]);
        book.add(Contact::new(
            "alice".parse().unwrap(),
            alice,
            Some("r.example:1".parse().unwrap()),
        ))
        .unwrap();
        book.add(Contact::new("bo".parse().unwrap(), bob, None))
            .unwrap();
        book.set_verified("alice", true).unwrap();
        let lines = list_lines(&book);
        assert_eq!(
            lines,
            vec![
                format!("alice  {alice}  verified   r.example:1"),
                format!("bo     {bob}  unchecked  -"),
            ]
        );
    }
}
