//! Envelopes sealed but not yet stored by the relay they go to, kept in the
//! home (`undelivered.sealed`) so that a relay that is down, a quit or a
//! crash loses none of them.
//!
//! Once sealed, an envelope has used its place in the session: sealing the
//! message again would make another envelope (and, for a session init,
//! another session). So what could not be delivered is kept as it is, sealed
//! bytes and route, and delivered as it is by the next command that sends
//! (`send`, `chat`), in the order it was written. A resend of bytes the
//! relay did store after all (its answer lost) is shown once: the receiver
//! refuses a session nonce or message id it has already taken.
//!
//! The list is a [`crate::sealed_list`] file (sealed under a key derived from
//! the identity: the envelopes say nothing without the recipients' keys, but
//! the routes name contacts and their tokens), changed under the session lock.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sotto_crypto::envelope::MessageId;
use sotto_keys::SecretKey;

use crate::routes::Route;
use crate::sealed_list::{Layout, SealedList};

/// At most this many envelopes wait.
pub const MAX_UNDELIVERED: usize = 4_096;
/// At most this many bytes of envelopes wait (a few hundred long messages,
/// thousands of short ones): the list is rewritten whole on each change.
pub const MAX_UNDELIVERED_BYTES: usize = 16 << 20;

static LAYOUT: Layout = Layout {
    magic: b"sotto-undeliver\0",
    version: 1,
    older: None,
    key_label: b"sotto undelivered key v1",
    max_file_len: (MAX_UNDELIVERED_BYTES + MAX_UNDELIVERED * 512) as u64,
    max_entries: MAX_UNDELIVERED,
    what_is_lost: "the messages it holds",
};

/// One envelope waiting for its relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// A local id, to remove it once stored.
    pub id: u64,
    /// Where it goes.
    pub route: Route,
    /// The sealed envelope, delivered as it is.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// The message it carries, if it is one (receipts are not), for saying
    /// when it is stored.
    pub message: Option<MessageId>,
    /// The recipient's name in my contacts when it was written.
    pub name: String,
    /// When it was written (unix seconds).
    pub queued_at: u64,
}

impl Pending {
    /// A new entry with a fresh local id, dated now.
    pub fn new(route: Route, envelope: Vec<u8>, message: Option<MessageId>, name: &str) -> Self {
        let queued_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: OsRng.next_u64(),
            route,
            envelope,
            message,
            name: name.to_owned(),
            queued_at,
        }
    }
}

/// The waiting envelopes of one home, as loaded.
pub struct Undelivered {
    file: SealedList,
    list: Vec<Pending>,
}

impl Undelivered {
    /// Loads the list at `path` (empty if there is no file) for `me`.
    /// Callers hold the session lock until after [`Undelivered::save`].
    pub fn load(path: &Path, me: &SecretKey) -> Result<Self> {
        let file = SealedList::new(path, me, &LAYOUT)?;
        let list = file.load()?;
        Ok(Self { file, list })
    }

    /// Keeps `more` after those already waiting, or refuses all of them if
    /// they would not fit.
    pub fn add(&mut self, more: Vec<Pending>) -> Result<()> {
        let bytes = |l: &[Pending]| l.iter().map(|p| p.envelope.len()).sum::<usize>();
        if self.list.len() + more.len() > MAX_UNDELIVERED
            || bytes(&self.list) + bytes(&more) > MAX_UNDELIVERED_BYTES
        {
            bail!(
                "{} message(s) already wait for relays that could not be reached; nothing more is kept until they are delivered",
                self.list.len()
            );
        }
        self.list.extend(more);
        Ok(())
    }

    /// Drops the entries with these ids.
    pub fn remove(&mut self, ids: &[u64]) {
        self.list.retain(|p| !ids.contains(&p.id));
    }

    /// Takes every entry out, oldest first (save afterwards to make it so).
    pub fn take(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.list)
    }

    /// What waits, oldest first.
    pub fn list(&self) -> &[Pending] {
        &self.list
    }

    /// Seals and writes the list atomically (0600); none left removes it.
    pub fn save(&self) -> Result<()> {
        self.file.save(&self.list)
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayPin;
    use sotto_keys::{DeliveryToken, RelayKey};
    use std::os::unix::fs::PermissionsExt;

    fn pending(text: &[u8]) -> Pending {
        let pin = RelayPin {
            addr: "127.0.0.1:7300".parse().unwrap(),
            key: RelayKey::from_bytes([9; 32]),
            nodes: Vec::new(),
        };
        let route = Route::new(
            &pin,
            SecretKey::generate().public(),
            Some(DeliveryToken::generate()),
        );
        Pending::new(route, text.to_vec(), Some(MessageId::random()), "bob")
    }

    #[test]
    fn kept_sealed_private_and_in_order_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("undelivered.sealed");
        let me = SecretKey::generate();
        let mut list = Undelivered::load(&path, &me).unwrap();
        assert!(list.list().is_empty());
        let (a, b) = (pending(b"first envelope"), pending(b"second envelope"));
        list.add(vec![a.clone(), b.clone()]).unwrap();
        list.save().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(5).any(|w| w == b"first"));
        assert!(!bytes.windows(3).any(|w| w == b"bob"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut again = Undelivered::load(&path, &me).unwrap();
        assert_eq!(again.list(), [a.clone(), b.clone()]);
        again.remove(&[a.id]);
        again.save().unwrap();
        let mut again = Undelivered::load(&path, &me).unwrap();
        assert_eq!(again.take(), [b]);
        again.save().unwrap();
        assert!(!path.exists(), "an empty list leaves no file");

        let err = Undelivered::load(&path, &me)
            .map(|l| l.list().len())
            .unwrap();
        assert_eq!(err, 0);
    }

    #[test]
    fn another_identity_cannot_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("undelivered.sealed");
        let me = SecretKey::generate();
        let mut list = Undelivered::load(&path, &me).unwrap();
        list.add(vec![pending(b"x")]).unwrap();
        list.save().unwrap();
        let err = Undelivered::load(&path, &SecretKey::generate())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another identity key"), "{err}");
    }

    #[test]
    fn a_full_list_refuses_more_and_keeps_what_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let me = SecretKey::generate();
        let mut list = Undelivered::load(&dir.path().join("u"), &me).unwrap();
        let big = vec![0u8; MAX_UNDELIVERED_BYTES / 2];
        list.add(vec![pending(&big)]).unwrap();
        let err = list.add(vec![pending(&big), pending(b"y")]).unwrap_err();
        assert!(
            err.to_string().contains("1 message(s) already wait"),
            "{err}"
        );
        assert_eq!(list.list().len(), 1);
        let many: Vec<Pending> = (0..MAX_UNDELIVERED).map(|_| pending(b"z")).collect();
        assert!(list.add(many).is_err());
        assert_eq!(list.list().len(), 1);
    }
}
