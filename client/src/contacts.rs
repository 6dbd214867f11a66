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

/// One line per contact (`NAME  KEY  verified|unchecked  REACHED`), then one
/// per group (`NAME  group  MEMBER,MEMBER`), names padded to line up.
///
/// `REACHED` is where messages for them go: `HOST:PORT`, their own relay
/// (its key pinned), or `via my relay`, with the address an older version
/// noted without its key when there is one, so the user sees why it is unused.
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
            let mark = match (c.verified, c.paired) {
                (true, _) => "verified",
                (false, true) => "paired",
                (false, false) => "unchecked",
            };
            let relay = match (c.delivery(), c.unpinned_relay()) {
                (Some(delivery), _) => delivery.relay.to_string(),
                (None, Some(noted)) => {
                    format!("via my relay ({noted} {UNPINNED})")
                }
                (None, None) => "via my relay".to_owned(),
            };
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

/// What `contact list` marks a relay noted without its key with.
pub const UNPINNED: &str = "noted without its relay_key";

/// Why a contact marked [`UNPINNED`] is reached through my relay, and the fix;
/// `None` when no contact is.
pub fn unpinned_hint(book: &ContactBook) -> Option<String> {
    let names: Vec<&str> = book
        .contacts()
        .filter(|c| c.unpinned_relay().is_some())
        .map(|c| c.name.as_str())
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "{} {}: sotto delivers only to a relay whose key it has pinned, so they are reached through your own relay; to reach them on theirs, add relay_key = \"sottorelay1...\" to their entry in {}, or remove them and add their invite (`sotto id --invite`)",
            names.join(", "),
            if names.len() == 1 { "has a relay noted without its key" } else { "have relays noted without their keys" },
            book.path().display()
        )
    })
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
    use sotto_keys::{Contact, Delivery, DeliveryToken, PublicKey, RelayKey};

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
        let carol = PublicKey::from_bytes([3; 32]);
        let theirs = Delivery {
            relay: "c.example:2".parse().unwrap(),
            relay_key: RelayKey::from_bytes([4; 32]),
            token: Some(DeliveryToken::from_bytes([5; 16])),
        };
        book.add(Contact::with_delivery(
            "carol".parse().unwrap(),
            carol,
            theirs,
        ))
        .unwrap();
        book.set_verified("alice", true).unwrap();
        let lines = list_lines(&book);
        assert_eq!(
            lines,
            vec![
                format!("alice  {alice}  verified   via my relay (r.example:1 {UNPINNED})"),
                format!("bo     {bob}  unchecked  via my relay"),
                format!("carol  {carol}  unchecked  c.example:2"),
            ]
        );
    }
}
