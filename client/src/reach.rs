//! Telling contacts where to reach me, and taking what they tell me.
//!
//! A contact delivers to me on my relay with my mailbox's token (PROTOCOL
//! §7.9). They learn both from my invite, or end to end from a `Reach` body
//! that my client sends them: to each contact it writes to who was not told
//! my current relay, relay key and token, so a contact added by key alone, a
//! token rotation and a move to another relay (§7.10) all reach them with the
//! next message. The other way round, a `Reach` from a contact replaces where
//! I deliver to them, unless it is older than one already taken.
//!
//! What was told and taken is kept in `reach.sealed` (a
//! [`crate::sealed_list`] file: it names contacts and holds tokens), changed
//! under the session lock like the session state it goes with. A `Reach`'s
//! `seq` is the sender's clock in milliseconds when it is sealed: it grows
//! with every change without a counter to keep, and a home restored from a
//! backup still sends a newer one than it sent before the loss.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sotto_crypto::envelope::Reach;
use sotto_keys::{DeliveryToken, PublicKey, RelayAddr, RelayKey, SecretKey};

use crate::config::RelayPin;
use crate::sealed_list::{Layout, SealedList};

/// At most this many entries: two per contact.
const MAX_ENTRIES: usize = 200_000;

static LAYOUT: Layout = Layout {
    magic: b"sotto-reach\0\0\0\0\0",
    version: 1,
    older: None,
    key_label: b"sotto reach key v1",
    max_file_len: 64 << 20,
    max_entries: MAX_ENTRIES,
    what_is_lost: "what contacts were told of your relay",
};

/// Where I can be reached: my relay, its key, my token there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mine {
    /// The relay I read from.
    pub relay: RelayAddr,
    /// Its key.
    pub relay_key: RelayKey,
    /// My mailbox's token there.
    pub token: DeliveryToken,
}

impl Mine {
    /// My relay `pin` with my `token`.
    pub fn new(pin: &RelayPin, token: DeliveryToken) -> Self {
        Self {
            relay: pin.addr.clone(),
            relay_key: pin.key,
            token,
        }
    }

    /// The `Reach` body telling it, numbered `seq`.
    pub fn reach(&self, seq: u64) -> Reach {
        Reach {
            seq,
            relay: self.relay.clone(),
            relay_key: self.relay_key,
            token: self.token.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Entry {
    /// What `to` was last told.
    Told { to: PublicKey, mine: Mine },
    /// The highest `seq` taken from `from`.
    Taken { from: PublicKey, seq: u64 },
    /// My token was registered with my relay, taking first contacts or not.
    Registered { mine: Mine, first_contact: bool },
}

/// What contacts were told and what they told me, as loaded.
pub struct ReachBook {
    file: SealedList,
    entries: Vec<Entry>,
    /// Changed since loaded: only then does [`ReachBook::save`] write (every
    /// typed message and every received batch consults the book; few change it).
    changed: bool,
}

impl ReachBook {
    /// Loads `path` (empty if there is no file) for `me`.
    pub fn load(path: &Path, me: &SecretKey) -> Result<Self> {
        let file = SealedList::new(path, me, &LAYOUT)?;
        let entries = file.load()?;
        Ok(Self {
            file,
            entries,
            changed: false,
        })
    }

    /// Whether `to` must be told `mine` (never told, or told something else).
    pub fn must_tell(&self, to: &PublicKey, mine: &Mine) -> bool {
        !self
            .entries
            .iter()
            .any(|e| matches!(e, Entry::Told { to: t, mine: m } if t == to && m == mine))
    }

    /// Notes that `to` was told `mine`.
    pub fn told(&mut self, to: &PublicKey, mine: &Mine) {
        self.entries
            .retain(|e| !matches!(e, Entry::Told { to: t, .. } if t == to));
        self.push(Entry::Told {
            to: *to,
            mine: mine.clone(),
        });
    }

    /// Takes a `Reach` numbered `seq` from `from` if it is newer than any
    /// taken from them before; false for an older or repeated one.
    pub fn take(&mut self, from: &PublicKey, seq: u64) -> bool {
        let newer = self.entries.iter().all(|e| match e {
            Entry::Taken { from: f, seq: s } if f == from => seq > *s,
            _ => true,
        });
        if newer {
            self.entries
                .retain(|e| !matches!(e, Entry::Taken { from: f, .. } if f == from));
            self.push(Entry::Taken { from: *from, seq });
        }
        newer
    }

    /// Whether `mine`'s token is registered with `mine`'s relay, with
    /// `first_contact` as its policy.
    pub fn registered(&self, mine: &Mine, first_contact: bool) -> bool {
        self.entries.iter().any(|e| {
            matches!(e, Entry::Registered { mine: m, first_contact: f }
                if m == mine && *f == first_contact)
        })
    }

    /// Notes that `mine`'s token is registered with its relay (replacing
    /// what was noted for another relay, token or policy).
    pub fn set_registered(&mut self, mine: &Mine, first_contact: bool) {
        self.entries
            .retain(|e| !matches!(e, Entry::Registered { .. }));
        self.push(Entry::Registered {
            mine: mine.clone(),
            first_contact,
        });
    }

    fn push(&mut self, entry: Entry) {
        if self.entries.len() >= MAX_ENTRIES {
            // Forgetting the oldest costs a `Reach` sent again, nothing more.
            self.entries.remove(0);
        }
        self.entries.push(entry);
        self.changed = true;
    }

    /// Seals and writes it atomically, if anything changed since it was
    /// loaded (no fsync for a book only read).
    pub fn save(&self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        self.file.save(&self.entries)
    }
}

/// Where I can be reached now: my relay `pin` and my token (made now for a
/// home from before tokens).
pub fn mine(home: &crate::home::Home, pin: &RelayPin) -> Result<Mine> {
    Ok(Mine::new(pin, crate::delivery_token::load_or_create(home)?))
}

/// Registers my token with my relay over the owner link `conn`, once per
/// relay and token (remembered in the reach book), so that contacts who
/// present it are served as contacts, not first contacts. A relay that
/// does not know the request (an older one) serves everyone as a first
/// contact, and is let be; any other failure is the link's, and returned.
/// `first_contact` says whether deliveries without the token are taken
/// (config.toml's `first_contact`).
pub async fn register<R, W>(
    conn: &mut crate::relay_client::RelayConn<R, W>,
    sessions: &crate::sessions::SessionFiles,
    me: &SecretKey,
    mine: &Mine,
    first_contact: bool,
) -> Result<(), crate::relay_client::RelayError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let noted = {
        let (sessions, me, mine) = (sessions.clone(), me.clone(), mine.clone());
        tokio::task::spawn_blocking(move || {
            sessions.with_reach(&me, |book| Ok(book.registered(&mine, first_contact)))
        })
        .await
    };
    if matches!(noted, Ok(Ok(true))) {
        return Ok(());
    }
    let hash = sotto_crypto::delivery::token_hash(&mine.token);
    match conn.set_delivery_token(hash, first_contact).await {
        Ok(()) => {}
        Err(crate::relay_client::RelayError::Refused {
            code: sotto_crypto::wire::ErrorCode::BadRequest,
            ..
        }) => {
            tracing::warn!("the relay does not take delivery tokens");
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let (sessions, me, mine) = (sessions.clone(), me.clone(), mine.clone());
    let saved = tokio::task::spawn_blocking(move || {
        sessions.with_reach(&me, |book| {
            book.set_registered(&mine, first_contact);
            book.save()
        })
    })
    .await;
    if !matches!(saved, Ok(Ok(()))) {
        tracing::debug!("the token's registration was not noted; it is sent again next time");
    }
    Ok(())
}

/// A `Reach`'s `seq` now: the sender's clock in milliseconds.
pub fn seq_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine(port: u16) -> Mine {
        let pin = RelayPin {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            key: RelayKey::from_bytes([2; 32]),
            nodes: Vec::new(),
        };
        Mine::new(&pin, DeliveryToken::from_bytes([port as u8; 16]))
    }

    #[test]
    fn a_contact_is_told_once_per_change_and_it_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reach.sealed");
        let me = SecretKey::generate();
        let bob = SecretKey::generate().public();
        let carol = SecretKey::generate().public();
        let mut book = ReachBook::load(&path, &me).unwrap();
        assert!(book.must_tell(&bob, &mine(1)));
        book.told(&bob, &mine(1));
        assert!(!book.must_tell(&bob, &mine(1)));
        assert!(book.must_tell(&carol, &mine(1)));
        assert!(book.must_tell(&bob, &mine(2)), "a move is told again");
        book.save().unwrap();

        let mut book = ReachBook::load(&path, &me).unwrap();
        assert!(!book.must_tell(&bob, &mine(1)));
        book.told(&bob, &mine(2));
        assert!(!book.must_tell(&bob, &mine(2)));
        assert!(book.must_tell(&bob, &mine(1)));
        assert!(!book.registered(&mine(2), true));
        book.set_registered(&mine(2), true);
        assert!(book.registered(&mine(2), true) && !book.registered(&mine(1), true));
        assert!(
            !book.registered(&mine(2), false),
            "a new policy registers again"
        );
        book.set_registered(&mine(1), true);
        assert!(!book.registered(&mine(2), true), "one relay at a time");
    }

    #[test]
    fn a_book_only_read_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reach.sealed");
        let me = SecretKey::generate();
        let bob = SecretKey::generate().public();
        let book = ReachBook::load(&path, &me).unwrap();
        assert!(book.must_tell(&bob, &mine(1)));
        book.save().unwrap();
        assert!(!path.exists(), "nothing written for a read");
        let mut book = ReachBook::load(&path, &me).unwrap();
        book.told(&bob, &mine(1));
        book.save().unwrap();
        assert!(path.exists());
    }

    #[test]
    fn an_older_reach_never_undoes_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let me = SecretKey::generate();
        let bob = SecretKey::generate().public();
        let carol = SecretKey::generate().public();
        let mut book = ReachBook::load(&dir.path().join("r"), &me).unwrap();
        assert!(book.take(&bob, 10));
        assert!(!book.take(&bob, 10), "the same one again");
        assert!(!book.take(&bob, 9), "an older one, late");
        assert!(book.take(&carol, 9), "each contact counts alone");
        assert!(book.take(&bob, 11));
        book.save().unwrap();
        let mut book = ReachBook::load(&dir.path().join("r"), &me).unwrap();
        assert!(!book.take(&bob, 11));
        assert!(book.take(&bob, 12));
    }

    #[test]
    fn the_reach_body_carries_mine() {
        let m = mine(3);
        let r = m.reach(5);
        assert_eq!((r.seq, &r.relay, r.relay_key), (5, &m.relay, m.relay_key));
        assert_eq!(r.token, m.token);
        assert!(seq_now() > 1_700_000_000_000);
    }
}
