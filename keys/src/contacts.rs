//! The contact book, `contacts.toml`: names for keys, kept in a file people edit.
//!
//! Contacts are the trust store: a message is shown as coming from `alice`
//! only if its sender key is the one filed under `alice` here. So the file is
//! plain TOML that a person can read, audit, back up and edit by hand, and this
//! module treats those edits with respect: comments and layout survive every
//! change `sotto` makes (the parsed [`toml_edit::DocumentMut`] is what gets
//! written back, edited in place), unknown fields are kept, and a mistake is
//! reported as `path:line:col: message` pointing at the offending value.
//!
//! Names are restricted to `[A-Za-z0-9._-]` (1 to 32, not starting with `-`
//! or `.`) so that they are safe to show in a terminal, to pass on a command
//! line and to use as a TOML key.
//!
//! # Layout
//!
//! ```toml
//! [contacts.alice]
//! key = "sotto1..."                  # required: their public key
//! relay = "relay.example.org:7300"   # optional: the relay they read from
//! relay_key = "sottorelay1..."       # optional, only with relay: its key, pinned
//! token = "sottotoken1..."           # optional, only with relay_key: their delivery token there
//! verified = false                   # optional, default false
//! paired = true                      # optional, default false: added by `sotto pair`
//! added = "2026-11-22T10:00:00Z"     # optional: RFC 3339, UTC, seconds
//!
//! [groups.friends]
//! members = ["alice", "bob"]         # each must be a contact
//! ```
//!
//! Two contacts may not share a key, and a group may only list contacts.
//!
//! A contact's relay is where to deliver to them only together with its key
//! ([`Contact::delivery`]): the key is pinned, so a message never goes to a
//! relay that cannot prove it. A `relay` alone is what versions before pinned
//! keys wrote, a note of where they read; such a contact, like one without a
//! relay, is reached through my own relay, as it always was. A `relay_key`
//! without a `relay`, or a `token` without the `relay_key` it belongs to,
//! is a mistake, reported with its line.
//! Writes are atomic (a private temporary file renamed over the old one), so a
//! crash leaves the old book or the new one, never half of each.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use toml_edit::{Decor, DocumentMut, ImDocument, InlineTable, Item, Table, TableLike, Value};

use crate::delivery::Delivery;
use crate::error::Error;
use crate::fsutil::{read_limited, write_atomic_private};
use crate::public::{PublicKey, RelayKey};
use crate::relay_addr::RelayAddr;
use crate::token::DeliveryToken;

/// Largest contacts file accepted, in bytes.
pub const MAX_CONTACTS_FILE_LEN: usize = 1024 * 1024;

/// Longest contact or group name, in characters.
pub const MAX_NAME_LEN: usize = 32;

const NEW_FILE_HEADER: &str = "\
# sotto contacts. You may edit this file by hand: sotto keeps your comments.
#
# [contacts.NAME]        NAME: 1 to 32 of A-Z a-z 0-9 . _ - (not starting with . or -)
# key = \"sotto1...\"      their public key (required)
# relay = \"HOST:PORT\"    the relay they read from (optional)
# relay_key = \"sottorelay1...\"   that relay's key, pinned (with relay)
# token = \"sottotoken1...\"       their delivery token there (with relay_key)
# verified = false       true once you have compared safety numbers (sotto contact verify NAME)
# paired = true          added by `sotto pair`: the key came under a short code you both typed
# added = \"...\"          when the contact was added (RFC 3339, UTC)
#
# [groups.NAME]
# members = [\"alice\", \"bob\"]   each member must be a contact
";

/// The name of a contact or a group.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactName(String);

impl ContactName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn invalid_name(reason: &str) -> Error {
    Error::InvalidName {
        reason: reason.to_owned(),
    }
}

impl FromStr for ContactName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(invalid_name("a name cannot be empty"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid_name(
                "a name may only contain letters A-Z and a-z, digits, `.`, `_` and `-`",
            ));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(invalid_name("a name is at most 32 characters long"));
        }
        if s.starts_with(['-', '.']) {
            return Err(invalid_name("a name cannot start with `-` or `.`"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for ContactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContactName({})", self.0)
    }
}

impl AsRef<str> for ContactName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ContactName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ContactName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ContactName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A person: a name for a public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The name this contact is filed under.
    pub name: ContactName,
    /// Their public key.
    pub key: PublicKey,
    /// The relay they read from, as noted in the file. Where to deliver to
    /// them is [`Contact::delivery`]: an address without its pinned key, as
    /// versions before pinned keys wrote, is only a note.
    pub relay: Option<RelayAddr>,
    /// Their relay with its pinned key and their token there, set and
    /// replaced only as a whole ([`ContactBook::set_delivery`]).
    delivery: Option<Delivery>,
    /// Whether the safety number has been compared with them.
    pub verified: bool,
    /// Whether the key came through `sotto pair`, under a code both sides
    /// typed (so nobody without the code could have put it there).
    pub paired: bool,
    /// When the contact was added, RFC 3339 UTC to the second; empty if the
    /// file does not say.
    pub added: String,
}

impl Contact {
    /// A new, unverified contact added now. A `relay` given here has no
    /// pinned key: the contact is reached through my own relay (use
    /// [`Contact::with_delivery`] for one reached on theirs).
    pub fn new(name: ContactName, key: PublicKey, relay: Option<RelayAddr>) -> Self {
        Self {
            name,
            key,
            relay,
            delivery: None,
            verified: false,
            paired: false,
            added: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }

    /// A new, unverified contact added now, reached on their own relay.
    pub fn with_delivery(name: ContactName, key: PublicKey, delivery: Delivery) -> Self {
        let mut contact = Self::new(name, key, None);
        contact.set_delivery(delivery);
        contact
    }

    /// Where to deliver to them: their relay, its pinned key and their token
    /// there. `None` for a contact without a relay, or with only the address
    /// that older versions noted: they are reached through my own relay.
    pub fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_ref()
    }

    /// A relay address noted without its key (by versions before pinned
    /// keys): not a place to deliver to, but worth telling the user about.
    pub fn unpinned_relay(&self) -> Option<&RelayAddr> {
        match self.delivery {
            Some(_) => None,
            None => self.relay.as_ref(),
        }
    }

    fn set_delivery(&mut self, delivery: Delivery) {
        self.relay = Some(delivery.relay.clone());
        self.delivery = Some(delivery);
    }
}

/// A named list of contacts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group's name.
    pub name: ContactName,
    /// Its members, each a contact of the book, in the file's order.
    pub members: Vec<ContactName>,
}

/// The contents of `contacts.toml`, with the file's text kept for writing back.
pub struct ContactBook {
    path: PathBuf,
    doc: DocumentMut,
    contacts: BTreeMap<ContactName, Contact>,
    groups: Vec<Group>,
}

impl fmt::Debug for ContactBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContactBook")
            .field("path", &self.path)
            .field("contacts", &self.contacts.values().collect::<Vec<_>>())
            .field("groups", &self.groups)
            .finish()
    }
}

impl ContactBook {
    /// Reads the contact book at `path`; a missing file is an empty book
    /// (written, with an explanatory header, on the first [`save`](Self::save)).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::empty(path)),
            Err(e) => return Err(Error::io(path, e)),
        };
        let bytes = read_limited(file, path, MAX_CONTACTS_FILE_LEN)?;
        Self::parse(&bytes, path)
    }

    /// Reads a contact book from the bytes of a `contacts.toml`; `path` is
    /// where it would be saved, and what its errors name.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        if bytes.len() > MAX_CONTACTS_FILE_LEN {
            return Err(Error::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_CONTACTS_FILE_LEN as u64,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let at = e.valid_up_to();
            Locator { path, text: bytes }.error(Some(at..at), "the file is not UTF-8 text")
        })?;
        let loc = Locator {
            path,
            text: text.as_bytes(),
        };
        let doc =
            ImDocument::parse(text).map_err(|e| loc.error(e.span(), one_line(e.message())))?;
        let (contacts, groups) = read_book(&doc, &loc)?;
        Ok(Self {
            path: path.to_path_buf(),
            doc: doc.into_mut(),
            contacts,
            groups,
        })
    }

    fn empty(path: &Path) -> Self {
        let mut doc = DocumentMut::new();
        doc.decor_mut().set_prefix(NEW_FILE_HEADER);
        Self {
            path: path.to_path_buf(),
            doc,
            contacts: BTreeMap::new(),
            groups: Vec::new(),
        }
    }

    /// The file this book is read from and saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The contact with this name.
    pub fn get(&self, name: &str) -> Option<&Contact> {
        self.contacts.get(name)
    }

    /// The contact with this key.
    pub fn by_key(&self, key: &PublicKey) -> Option<&Contact> {
        self.contacts.values().find(|c| c.key == *key)
    }

    /// All contacts, sorted by name.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    /// All groups, sorted by name.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group with this name.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name.as_str() == name)
    }

    /// Adds a contact; refused if the name or the key is already taken.
    pub fn add(&mut self, contact: Contact) -> Result<(), Error> {
        if self.contacts.contains_key(&contact.name) {
            return Err(Error::ContactExists {
                name: contact.name.to_string(),
            });
        }
        if let Some(existing) = self.by_key(&contact.key) {
            return Err(Error::KeyAlreadyContact {
                name: existing.name.to_string(),
            });
        }
        let name = contact.name.as_str();
        let root = self.doc.as_table_mut();
        if !root.contains_key("contacts") {
            let mut table = Table::new();
            // No bare `[contacts]` line: only `[contacts.NAME]` headers.
            table.set_implicit(true);
            root.insert("contacts", Item::Table(table));
        }
        match root.get_mut("contacts") {
            Some(Item::Table(table)) => {
                let mut entry = Table::new();
                entry.decor_mut().set_prefix("\n");
                for (field, value) in contact_fields(&contact) {
                    entry.insert(field, Item::Value(value));
                }
                table.insert(name, Item::Table(entry));
            }
            Some(Item::Value(Value::InlineTable(table))) => {
                let mut entry = InlineTable::new();
                for (field, value) in contact_fields(&contact) {
                    entry.insert(field, value);
                }
                table.insert(name, Value::InlineTable(entry));
            }
            // `load` accepted only the two forms above.
            _ => {
                return Err(Error::ContactsFormat {
                    path: self.path.clone(),
                    line: 1,
                    col: 1,
                    message: "`contacts` must be a table".to_owned(),
                })
            }
        }
        self.contacts.insert(contact.name.clone(), contact);
        Ok(())
    }

    /// Removes a contact, and removes it from every group.
    pub fn remove(&mut self, name: &str) -> Result<Contact, Error> {
        let contact = self
            .contacts
            .remove(name)
            .ok_or_else(|| Error::UnknownContact {
                name: name.to_owned(),
            })?;
        if let Some(table) = self
            .doc
            .get_mut("contacts")
            .and_then(Item::as_table_like_mut)
        {
            table.remove(name);
        }
        for group in &mut self.groups {
            group.members.retain(|m| m.as_str() != name);
        }
        if let Some(groups) = self.doc.get_mut("groups").and_then(Item::as_table_like_mut) {
            for (_, group) in groups.iter_mut() {
                let members = group
                    .as_table_like_mut()
                    .and_then(|g| g.get_mut("members"))
                    .and_then(Item::as_array_mut);
                if let Some(members) = members {
                    remove_from_array(members, name);
                }
            }
        }
        Ok(contact)
    }

    /// Marks a contact as verified (safety numbers compared) or not.
    pub fn set_verified(&mut self, name: &str, verified: bool) -> Result<(), Error> {
        let contact = self
            .contacts
            .get_mut(name)
            .ok_or_else(|| Error::UnknownContact {
                name: name.to_owned(),
            })?;
        contact.verified = verified;
        let entry = self
            .doc
            .get_mut("contacts")
            .and_then(Item::as_table_like_mut)
            .and_then(|t| t.get_mut(name))
            .and_then(Item::as_table_like_mut);
        if let Some(entry) = entry {
            set_value(entry, "verified", Value::from(verified));
        }
        Ok(())
    }

    /// Changes where a contact is delivered to (they moved, or gave a new
    /// token): `relay`, `relay_key` and `token` are rewritten in place, each
    /// keeping its comment, and a `token` they no longer give is removed.
    pub fn set_delivery(&mut self, name: &str, delivery: Delivery) -> Result<(), Error> {
        let contact = self
            .contacts
            .get_mut(name)
            .ok_or_else(|| Error::UnknownContact {
                name: name.to_owned(),
            })?;
        let entry = self
            .doc
            .get_mut("contacts")
            .and_then(Item::as_table_like_mut)
            .and_then(|t| t.get_mut(name))
            .and_then(Item::as_table_like_mut);
        if let Some(entry) = entry {
            set_value(entry, "relay", Value::from(delivery.relay.to_string()));
            set_value(
                entry,
                "relay_key",
                Value::from(delivery.relay_key.to_string()),
            );
            match &delivery.token {
                Some(token) => set_value(entry, "token", Value::from(token.to_string())),
                None => {
                    entry.remove("token");
                }
            }
        }
        contact.set_delivery(delivery);
        Ok(())
    }

    /// Writes the book back to its file, atomically and with mode 0600,
    /// keeping comments and layout of everything that was not changed.
    pub fn save(&self) -> Result<(), Error> {
        write_atomic_private(&self.path, self.doc.to_string().as_bytes())
    }
}

/// The fields written for a new contact, in file order.
fn contact_fields(contact: &Contact) -> Vec<(&'static str, Value)> {
    let mut fields = vec![("key", Value::from(contact.key.to_string()))];
    // The delivery's own address, so the file never pairs a key with another
    // relay than the one it was pinned for.
    match (&contact.delivery, &contact.relay) {
        (Some(delivery), _) => {
            fields.push(("relay", Value::from(delivery.relay.to_string())));
            fields.push(("relay_key", Value::from(delivery.relay_key.to_string())));
            if let Some(token) = &delivery.token {
                fields.push(("token", Value::from(token.to_string())));
            }
        }
        (None, Some(relay)) => fields.push(("relay", Value::from(relay.to_string()))),
        (None, None) => {}
    }
    fields.push(("verified", Value::from(contact.verified)));
    if contact.paired {
        fields.push(("paired", Value::from(true)));
    }
    if !contact.added.is_empty() {
        fields.push(("added", Value::from(contact.added.as_str())));
    }
    fields
}

/// Replaces a value, keeping the spacing and comment around the old one.
fn set_value(table: &mut dyn TableLike, field: &str, new: Value) {
    match table.get_mut(field) {
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        _ => {
            table.insert(field, Item::Value(new));
        }
    }
}

/// Removes every `name` string from an array, keeping the layout tidy.
fn remove_from_array(array: &mut toml_edit::Array, name: &str) {
    let mut i = 0;
    while i < array.len() {
        if array.get(i).and_then(Value::as_str) == Some(name) {
            let removed = array.remove(i);
            let gone = removed.decor();
            // The first element carries the spacing after `[`, the last the
            // spacing before `]`: hand them on to the new first or last.
            if i == 0 {
                if let Some(next) = array.get_mut(0) {
                    let mut decor = Decor::default();
                    if let Some(prefix) = gone.prefix() {
                        decor.set_prefix(prefix.clone());
                    }
                    if let Some(suffix) = next.decor().suffix() {
                        decor.set_suffix(suffix.clone());
                    }
                    *next.decor_mut() = decor;
                }
            }
            if i > 0 && i == array.len() {
                if let (Some(prev), Some(suffix)) = (array.get_mut(i - 1), gone.suffix()) {
                    prev.decor_mut().set_suffix(suffix.clone());
                }
            }
        } else {
            i += 1;
        }
    }
}

/// A parser message on one line, with any control character (a key name
/// from the file may hold one) shown escaped rather than sent to the terminal.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Turns byte offsets into `path:line:col` errors.
struct Locator<'a> {
    path: &'a Path,
    text: &'a [u8],
}

impl Locator<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Error {
        let offset = span.map_or(0, |s| s.start).min(self.text.len());
        let before = &self.text[..offset];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        // Columns count characters: skip UTF-8 continuation bytes.
        let col = before[line_start..]
            .iter()
            .filter(|&&b| b & 0xc0 != 0x80)
            .count()
            + 1;
        Error::ContactsFormat {
            path: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }
}

type Book = (BTreeMap<ContactName, Contact>, Vec<Group>);

/// Validates a parsed file into contacts and groups.
fn read_book(doc: &ImDocument<&str>, loc: &Locator<'_>) -> Result<Book, Error> {
    let root = doc.as_table();
    let mut contacts = BTreeMap::new();
    let mut groups = Vec::new();

    if let Some((key, item)) = root.get_key_value("contacts") {
        let table = item.as_table_like().ok_or_else(|| {
            loc.error(
                item.span().or_else(|| key.span()),
                "`contacts` must be a table of contacts, e.g. [contacts.alice]",
            )
        })?;
        for (name, entry) in table.iter() {
            let name_span = table
                .key(name)
                .and_then(|k| k.span())
                .or_else(|| entry.span());
            let contact = read_contact(name, name_span, entry, loc)?;
            if let Some(other) = contacts.values().find(|c: &&Contact| c.key == contact.key) {
                let span = entry
                    .as_table_like()
                    .and_then(|t| t.get("key"))
                    .and_then(Item::span);
                return Err(loc.error(
                    span,
                    format!(
                        "`{}` has the same key as `{}`; a key belongs to one contact only",
                        contact.name, other.name
                    ),
                ));
            }
            contacts.insert(contact.name.clone(), contact);
        }
    }

    if let Some((key, item)) = root.get_key_value("groups") {
        let table = item.as_table_like().ok_or_else(|| {
            loc.error(
                item.span().or_else(|| key.span()),
                "`groups` must be a table of groups, e.g. [groups.friends]",
            )
        })?;
        for (name, entry) in table.iter() {
            let name_span = table
                .key(name)
                .and_then(|k| k.span())
                .or_else(|| entry.span());
            groups.push(read_group(name, name_span, entry, &contacts, loc)?);
        }
    }
    groups.sort_by(|a: &Group, b: &Group| a.name.cmp(&b.name));
    Ok((contacts, groups))
}

fn parse_name(
    name: &str,
    span: Option<Range<usize>>,
    loc: &Locator<'_>,
) -> Result<ContactName, Error> {
    name.parse::<ContactName>().map_err(|e| match e {
        Error::InvalidName { reason } => loc.error(span, format!("invalid name: {reason}")),
        other => other,
    })
}

fn read_contact(
    name: &str,
    name_span: Option<Range<usize>>,
    entry: &Item,
    loc: &Locator<'_>,
) -> Result<Contact, Error> {
    let name = parse_name(name, name_span.clone(), loc)?;
    let fields = entry.as_table_like().ok_or_else(|| {
        loc.error(
            entry.span().or_else(|| name_span.clone()),
            format!(
                "contact `{name}` must be a table, e.g. [contacts.{name}] with key = \"sotto1...\""
            ),
        )
    })?;

    let key_item = fields
        .get("key")
        .ok_or_else(|| loc.error(name_span.clone(), format!("contact `{name}` has no `key`")))?;
    let key = key_item
        .as_str()
        .ok_or_else(|| loc.error(key_item.span(), "`key` must be a string \"sotto1...\""))?
        .parse::<PublicKey>()
        .map_err(|e| loc.error(key_item.span(), format!("`key` of `{name}`: {e}")))?;

    let relay = match fields.get("relay") {
        None => None,
        Some(item) => Some(
            item.as_str()
                .ok_or_else(|| loc.error(item.span(), "`relay` must be a string \"HOST:PORT\""))?
                .parse::<RelayAddr>()
                .map_err(|e| loc.error(item.span(), e.to_string()))?,
        ),
    };

    let relay_key = match fields.get("relay_key") {
        None => None,
        Some(item) => Some((
            item.as_str()
                .ok_or_else(|| {
                    loc.error(
                        item.span(),
                        "`relay_key` must be a string \"sottorelay1...\"",
                    )
                })?
                .parse::<RelayKey>()
                .map_err(|e| loc.error(item.span(), format!("`relay_key` of `{name}`: {e}")))?,
            item.span(),
        )),
    };

    let token = match fields.get("token") {
        None => None,
        Some(item) => Some((
            item.as_str()
                .ok_or_else(|| {
                    loc.error(item.span(), "`token` must be a string \"sottotoken1...\"")
                })?
                .parse::<DeliveryToken>()
                .map_err(|e| loc.error(item.span(), format!("`token` of `{name}`: {e}")))?,
            item.span(),
        )),
    };

    let delivery = match (&relay, relay_key, token) {
        (None, Some((_, span)), _) => {
            return Err(loc.error(
                span,
                format!(
                    "`relay_key` of `{name}` without a `relay`: add relay = \"HOST:PORT\" (the relay this key is of), or remove relay_key"
                ),
            ))
        }
        (_, None, Some((_, span))) => {
            return Err(loc.error(
                span,
                format!(
                    "`token` of `{name}` without a `relay_key`: a token is for one relay; add the relay_key of their relay, or remove the token"
                ),
            ))
        }
        (Some(relay), Some((relay_key, _)), token) => Some(Delivery {
            relay: relay.clone(),
            relay_key,
            token: token.map(|(t, _)| t),
        }),
        (_, None, None) => None,
    };

    let verified = match fields.get("verified") {
        None => false,
        Some(item) => item
            .as_bool()
            .ok_or_else(|| loc.error(item.span(), "`verified` must be true or false"))?,
    };

    let paired = match fields.get("paired") {
        None => false,
        Some(item) => item
            .as_bool()
            .ok_or_else(|| loc.error(item.span(), "`paired` must be true or false"))?,
    };

    let added = match fields.get("added") {
        None => String::new(),
        Some(item) => match item.as_value() {
            Some(Value::String(s)) => s.value().clone(),
            Some(Value::Datetime(d)) => d.value().to_string(),
            _ => {
                return Err(loc.error(
                    item.span(),
                    "`added` must be a date, e.g. \"2026-11-22T10:00:00Z\"",
                ))
            }
        },
    };

    Ok(Contact {
        name,
        key,
        relay,
        delivery,
        verified,
        paired,
        added,
    })
}

fn read_group(
    name: &str,
    name_span: Option<Range<usize>>,
    entry: &Item,
    contacts: &BTreeMap<ContactName, Contact>,
    loc: &Locator<'_>,
) -> Result<Group, Error> {
    let name = parse_name(name, name_span.clone(), loc)?;
    let fields = entry.as_table_like().ok_or_else(|| {
        loc.error(
            entry.span().or_else(|| name_span.clone()),
            format!(
                "group `{name}` must be a table, e.g. [groups.{name}] with members = [\"alice\"]"
            ),
        )
    })?;
    let mut members: Vec<ContactName> = Vec::new();
    if let Some(item) = fields.get("members") {
        let array = item.as_array().ok_or_else(|| {
            loc.error(
                item.span(),
                "`members` must be a list of contact names, e.g. [\"alice\", \"bob\"]",
            )
        })?;
        for value in array.iter() {
            let member = value.as_str().ok_or_else(|| {
                loc.error(
                    value.span(),
                    "a group member must be a contact name in quotes",
                )
            })?;
            let member = parse_name(member, value.span(), loc)?;
            if !contacts.contains_key(&member) {
                return Err(loc.error(
                    value.span(),
                    format!(
                        "`{member}` in group `{name}` is not a contact (add it first, or remove it from the group)"
                    ),
                ));
            }
            if !members.contains(&member) {
                members.push(member);
            }
        }
    }
    Ok(Group { name, members })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public::RelayKey;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn name(s: &str) -> ContactName {
        s.parse().unwrap()
    }

    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.toml");
        (dir, path)
    }

    fn format_error(path: &Path, text: &str) -> (usize, usize, String) {
        fs::write(path, text).unwrap();
        match ContactBook::load(path).unwrap_err() {
            Error::ContactsFormat {
                line, col, message, ..
            } => (line, col, message),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn names_are_restricted_to_a_safe_alphabet() {
        for ok in ["alice", "Bob_2", "a", "x.y-z", "_under", &"a".repeat(32)] {
            assert_eq!(name(ok).as_str(), ok);
        }
        for bad in [
            "",
            "-rf",
            ".hidden",
            "with space",
            "é",
            "a/b",
            "a\u{1b}",
            &"a".repeat(33),
        ] {
            assert!(
                matches!(bad.parse::<ContactName>(), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_an_empty_book() {
        let (_dir, path) = tmp();
        let book = ContactBook::load(&path).unwrap();
        assert_eq!(book.contacts().count(), 0);
        assert!(book.groups().is_empty());
        assert_eq!(book.path(), path);
    }

    #[test]
    fn a_paired_contact_is_written_and_read_as_paired() {
        let (_dir, path) = tmp();
        let mut book = ContactBook::load(&path).unwrap();
        let mut carol = Contact::new(name("carol"), key(3), None);
        carol.paired = true;
        book.add(carol).unwrap();
        book.add(Contact::new(name("dave"), key(4), None)).unwrap();
        book.save().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\npaired = true").count(), 1, "{text}");
        let loaded = ContactBook::load(&path).unwrap();
        assert!(loaded.get("carol").unwrap().paired);
        assert!(!loaded.get("dave").unwrap().paired);
        let bad = format!("[contacts.a]\nkey = \"{}\"\npaired = 1\n", key(1));
        assert_eq!(format_error(&path, &bad).0, 3);
    }

    #[test]
    fn round_trip_add_save_load() {
        let (_dir, path) = tmp();
        let mut book = ContactBook::load(&path).unwrap();
        let bob = Contact::new(name("bob"), key(2), None);
        let alice = Contact::new(
            name("alice"),
            key(1),
            Some("relay.example.org:7300".parse().unwrap()),
        );
        book.add(bob.clone()).unwrap();
        book.add(alice.clone()).unwrap();
        book.set_verified("alice", true).unwrap();
        book.save().unwrap();

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# sotto contacts."), "{text}");

        let loaded = ContactBook::load(&path).unwrap();
        let names: Vec<&str> = loaded.contacts().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        let mut alice_verified = alice.clone();
        alice_verified.verified = true;
        assert_eq!(loaded.get("alice"), Some(&alice_verified));
        assert_eq!(loaded.get("bob"), Some(&bob));
        assert_eq!(loaded.by_key(&key(2)).map(|c| c.name.as_str()), Some("bob"));
        assert!(loaded.by_key(&key(3)).is_none());
        assert!(
            alice.added.ends_with('Z') && alice.added.len() == 20,
            "{}",
            alice.added
        );

        // A name that needs quoting as a TOML key.
        let mut loaded = loaded;
        loaded
            .add(Contact::new(name("j.doe"), key(5), None))
            .unwrap();
        loaded.save().unwrap();
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("[contacts.\"j.doe\"]\n"));
        let loaded = ContactBook::load(&path).unwrap();
        assert_eq!(loaded.get("j.doe").map(|c| c.key), Some(key(5)));
        let text = fs::read_to_string(&path).unwrap();

        // Saving an unchanged book changes nothing.
        loaded.save().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    fn delivery(relay: &str, r: u8, token: Option<u8>) -> Delivery {
        Delivery {
            relay: relay.parse().unwrap(),
            relay_key: RelayKey::from_bytes([r; 32]),
            token: token.map(|t| DeliveryToken::from_bytes([t; 16])),
        }
    }

    #[test]
    fn a_delivery_round_trips_through_the_file() {
        let (_dir, path) = tmp();
        let mut book = ContactBook::load(&path).unwrap();
        let with_token = delivery("b.example:7300", 8, Some(3));
        let without = delivery("[::1]:7300", 9, None);
        book.add(Contact::with_delivery(
            name("bob"),
            key(2),
            with_token.clone(),
        ))
        .unwrap();
        book.add(Contact::with_delivery(
            name("carol"),
            key(3),
            without.clone(),
        ))
        .unwrap();
        book.save().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let token = DeliveryToken::from_bytes([3; 16]).to_string();
        assert!(
            text.contains(&format!(
                "relay = \"b.example:7300\"\nrelay_key = \"{}\"\ntoken = \"{token}\"\n",
                RelayKey::from_bytes([8; 32])
            )),
            "{text}"
        );

        let loaded = ContactBook::load(&path).unwrap();
        let bob = loaded.get("bob").unwrap();
        assert_eq!(bob.delivery(), Some(&with_token));
        assert_eq!(bob.relay, Some(with_token.relay.clone()));
        assert_eq!(bob.unpinned_relay(), None);
        assert_eq!(loaded.get("carol").unwrap().delivery(), Some(&without));
        assert_eq!(loaded.get("bob"), book.get("bob"));
        // The token is a capability: the book's Debug never shows it.
        assert!(!format!("{loaded:?}").contains(&token[11..]));
    }

    #[test]
    fn an_old_relay_without_its_key_loads_as_reached_through_mine() {
        let (_dir, path) = tmp();
        let old = format!(
            "[contacts.alice]\nkey = \"{}\"\nrelay = \"a.example:7300\"\n\n[contacts.bob]\nkey = \"{}\"\n",
            key(1),
            key(2)
        );
        fs::write(&path, &old).unwrap();
        let book = ContactBook::load(&path).unwrap();
        let alice = book.get("alice").unwrap();
        assert_eq!(alice.delivery(), None);
        assert_eq!(
            alice.unpinned_relay(),
            Some(&"a.example:7300".parse().unwrap())
        );
        let bob = book.get("bob").unwrap();
        assert_eq!((bob.delivery(), bob.unpinned_relay()), (None, None));
        // Loading and saving an old file leaves it as it was.
        book.save().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), old);
    }

    #[test]
    fn set_delivery_rewrites_in_place_and_keeps_comments() {
        let (_dir, path) = tmp();
        let text = format!(
            "# friends\n[contacts.alice]\nkey = \"{}\"\nrelay = \"old.example:1\"   # where she was\nverified = true\nnote = \"kept\"\n",
            key(1)
        );
        fs::write(&path, &text).unwrap();
        let mut book = ContactBook::load(&path).unwrap();
        let moved = delivery("new.example:2", 8, Some(4));
        book.set_delivery("alice", moved.clone()).unwrap();
        book.save().unwrap();
        let saved = fs::read_to_string(&path).unwrap();
        assert!(saved.starts_with("# friends\n"), "{saved}");
        assert!(
            saved.contains("relay = \"new.example:2\"   # where she was\n"),
            "{saved}"
        );
        assert!(saved.contains("note = \"kept\""), "{saved}");
        let loaded = ContactBook::load(&path).unwrap();
        let alice = loaded.get("alice").unwrap();
        assert_eq!(alice.delivery(), Some(&moved));
        assert!(alice.verified);

        // A new delivery without a token drops the old token.
        let mut book = loaded;
        let untokened = delivery("new.example:2", 8, None);
        book.set_delivery("alice", untokened.clone()).unwrap();
        book.save().unwrap();
        let saved = fs::read_to_string(&path).unwrap();
        assert!(!saved.contains("token"), "{saved}");
        let loaded = ContactBook::load(&path).unwrap();
        assert_eq!(loaded.get("alice").unwrap().delivery(), Some(&untokened));

        let mut book = loaded;
        assert!(matches!(
            book.set_delivery("nobody", untokened),
            Err(Error::UnknownContact { .. })
        ));
    }

    #[test]
    fn delivery_fields_out_of_place_are_refused_with_file_line_and_contact() {
        let (_dir, path) = tmp();
        let k = key(1);
        let rk = RelayKey::from_bytes([8; 32]);
        let token = DeliveryToken::from_bytes([3; 16]);
        for (body, line, says) in [
            (
                format!("relay_key = \"{rk}\"\n"),
                3,
                "`relay_key` of `alice` without a `relay`",
            ),
            (
                format!("relay = \"r:1\"\ntoken = \"{token}\"\n"),
                4,
                "`token` of `alice` without a `relay_key`",
            ),
            (
                format!("relay = \"r:1\"\nrelay_key = \"{k}\"\n"),
                4,
                "`relay_key` of `alice`: this is a contact key, not a relay key",
            ),
            (
                "relay = \"r:1\"\nrelay_key = 7\n".to_owned(),
                4,
                "`relay_key` must be a string",
            ),
            (
                format!("relay = \"r:1\"\nrelay_key = \"{rk}\"\ntoken = \"{k}\"\n"),
                5,
                "`token` of `alice`: invalid delivery token: this is a contact key",
            ),
        ] {
            let text = format!("[contacts.alice]\nkey = \"{k}\"\n{body}");
            let (l, _, message) = format_error(&path, &text);
            assert_eq!(l, line, "{text}: {message}");
            assert!(message.contains(says), "{text}: {message}");
            let shown = ContactBook::load(&path).unwrap_err().to_string();
            assert!(
                shown.starts_with(&format!("{}:{line}:", path.display())),
                "{shown}"
            );
        }
    }

    const HAND_WRITTEN: &str = r#"# My contacts, curated by hand.

# Alice from work.
[contacts.alice]
key = "sotto1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs4qpml0"
verified = false   # compare numbers at lunch
added = "2026-11-22T10:00:00Z"
note = "kept as is"

# People I play chess with.
[groups.chess]
members = [ "alice" ]  # more soon
"#;

    #[test]
    fn hand_written_comments_and_fields_survive_changes() {
        let (_dir, path) = tmp();
        let text = HAND_WRITTEN.replace(
            "sotto1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs4qpml0",
            &key(1).to_string(),
        );
        fs::write(&path, &text).unwrap();
        let mut book = ContactBook::load(&path).unwrap();
        assert_eq!(book.get("alice").unwrap().key, key(1));
        assert_eq!(book.group("chess").unwrap().members, [name("alice")]);

        book.add(Contact::new(name("bob"), key(2), None)).unwrap();
        book.set_verified("alice", true).unwrap();
        book.save().unwrap();
        let saved = fs::read_to_string(&path).unwrap();
        for kept in [
            "# My contacts, curated by hand.\n",
            "# Alice from work.\n[contacts.alice]\n",
            "verified = true   # compare numbers at lunch\n",
            "note = \"kept as is\"\n",
            "# People I play chess with.\n[groups.chess]\nmembers = [ \"alice\" ]  # more soon\n",
        ] {
            assert!(saved.contains(kept), "lost {kept:?} in:\n{saved}");
        }
        // The new contact goes with the contacts, before the groups.
        let bob_at = saved.find("[contacts.bob]").unwrap();
        assert!(bob_at < saved.find("[groups.chess]").unwrap(), "{saved}");
        assert!(bob_at > saved.find("[contacts.alice]").unwrap(), "{saved}");

        let again = ContactBook::load(&path).unwrap();
        assert!(again.get("alice").unwrap().verified);
        assert_eq!(again.get("bob").unwrap().key, key(2));
    }

    #[test]
    fn remove_drops_the_contact_and_its_group_memberships() {
        let (_dir, path) = tmp();
        let text = format!(
            "[contacts.alice]\nkey = \"{}\"\n\n[contacts.bob]\nkey = \"{}\"\n\n\
             [groups.all]\nmembers = [ \"alice\", \"bob\" ]  # everyone\n\n[groups.just-alice]\nmembers = [\"alice\"]\n",
            key(1),
            key(2)
        );
        fs::write(&path, text).unwrap();
        let mut book = ContactBook::load(&path).unwrap();
        let removed = book.remove("alice").unwrap();
        assert_eq!(removed.key, key(1));
        assert!(matches!(
            book.remove("alice"),
            Err(Error::UnknownContact { .. })
        ));
        assert_eq!(book.group("all").unwrap().members, [name("bob")]);
        assert!(book.group("just-alice").unwrap().members.is_empty());
        book.save().unwrap();

        let saved = fs::read_to_string(&path).unwrap();
        assert!(!saved.contains("alice\""), "{saved}");
        assert!(
            saved.contains("members = [ \"bob\" ]  # everyone\n"),
            "{saved}"
        );
        assert!(
            saved.contains("[groups.just-alice]\nmembers = []\n"),
            "{saved}"
        );
        let again = ContactBook::load(&path).unwrap();
        assert!(again.get("alice").is_none());
        assert_eq!(again.group("all").unwrap().members, [name("bob")]);
        // The key is free again.
        book.add(Contact::new(name("alice2"), key(1), None))
            .unwrap();
    }

    #[test]
    fn duplicate_names_and_keys_are_refused() {
        let (_dir, path) = tmp();
        let mut book = ContactBook::load(&path).unwrap();
        book.add(Contact::new(name("alice"), key(1), None)).unwrap();
        let err = book
            .add(Contact::new(name("alice"), key(2), None))
            .unwrap_err();
        assert!(
            matches!(err, Error::ContactExists { ref name } if name == "alice"),
            "{err}"
        );
        let err = book
            .add(Contact::new(name("carol"), key(1), None))
            .unwrap_err();
        assert!(
            matches!(err, Error::KeyAlreadyContact { ref name } if name == "alice"),
            "{err}"
        );
        assert!(matches!(
            book.set_verified("nobody", true),
            Err(Error::UnknownContact { .. })
        ));
    }

    #[test]
    fn a_syntax_error_reports_its_line() {
        let (_dir, path) = tmp();
        let text = format!(
            "# comment\n[contacts.alice]\nkey = \"{}\"\nverified = flase\n",
            key(1)
        );
        let (line, col, message) = format_error(&path, &text);
        assert_eq!((line, col), (4, 12), "{message}");
        let err = ContactBook::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:4:12: ", path.display())),
            "{err}"
        );
        assert!(!err.contains("flase"), "the error echoes the file: {err}");
    }

    #[test]
    fn invalid_values_point_at_themselves() {
        let (_dir, path) = tmp();
        let k1 = key(1);
        let k2 = key(2);

        let bad_key = format!(
            "[contacts.alice]\nkey = \"{}\"\n",
            RelayKey::from_bytes([1; 32])
        );
        let (line, col, msg) = format_error(&path, &bad_key);
        assert_eq!((line, col), (2, 7));
        assert!(msg.contains("relay key"), "{msg}");

        let typo = k1.to_string().replace('q', "p");
        let (line, col, msg) = format_error(&path, &format!("\n[contacts.a]\nkey = \"{typo}\"\n"));
        assert_eq!((line, col), (3, 7));
        assert!(msg.contains("checksum"), "{msg}");

        let bad_relay = format!("[contacts.a]\nkey = \"{k1}\"\nrelay = \"nope\"\n");
        assert_eq!(format_error(&path, &bad_relay).0, 3);

        let bad_verified = format!("[contacts.a]\nkey = \"{k1}\"\nverified = \"yes\"\n");
        assert_eq!(format_error(&path, &bad_verified).0, 3);

        let no_key = "[contacts.a]\nrelay = \"r:1\"\n";
        let (line, _, msg) = format_error(&path, no_key);
        assert_eq!(line, 1);
        assert!(msg.contains("no `key`"), "{msg}");

        let bad_name = format!("[contacts.\"-rf\"]\nkey = \"{k1}\"\n");
        let (line, col, _) = format_error(&path, &bad_name);
        assert_eq!((line, col), (1, 11));

        let same_key = format!("[contacts.a]\nkey = \"{k1}\"\n[contacts.b]\nkey = \"{k1}\"\n");
        let (line, col, msg) = format_error(&path, &same_key);
        assert_eq!((line, col), (4, 7));
        assert!(msg.contains("same key as `a`"), "{msg}");

        let stranger = format!(
            "[contacts.a]\nkey = \"{k1}\"\n[contacts.b]\nkey = \"{k2}\"\n\n[groups.g]\nmembers = [\"a\",\n  \"zed\"]\n"
        );
        let (line, col, msg) = format_error(&path, &stranger);
        assert_eq!((line, col), (8, 3));
        assert!(msg.contains("`zed` in group `g` is not a contact"), "{msg}");

        let (line, _, _) = format_error(&path, "contacts = 3\n");
        assert_eq!(line, 1);

        let (line, col, msg) = format_error(&path, "\"\\u001b[2J\" = 1\n\"\\u001b[2J\" = 2\n");
        assert_eq!((line, col), (2, 1));
        assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg:?}");
    }

    #[test]
    fn inline_tables_and_native_dates_are_understood() {
        let (_dir, path) = tmp();
        let text = format!(
            "[contacts]\nalice = {{ key = \"{}\", added = 2026-11-22T10:00:00Z }}\n",
            key(1)
        );
        fs::write(&path, text).unwrap();
        let mut book = ContactBook::load(&path).unwrap();
        assert_eq!(book.get("alice").unwrap().added, "2026-11-22T10:00:00Z");
        book.set_verified("alice", true).unwrap();
        book.add(Contact::new(name("bob"), key(2), None)).unwrap();
        book.save().unwrap();
        let again = ContactBook::load(&path).unwrap();
        assert!(again.get("alice").unwrap().verified);
        assert_eq!(again.get("bob").unwrap().key, key(2));
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let (_dir, path) = tmp();
        fs::write(&path, "#".repeat(MAX_CONTACTS_FILE_LEN + 1)).unwrap();
        assert!(matches!(
            ContactBook::load(&path),
            Err(Error::TooLarge { .. })
        ));
    }
}
