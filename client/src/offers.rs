//! File offers opened but not yet received, kept sealed in the home
//! (`offers.sealed`) until their file is in place.
//!
//! An offer carries the only copy of its file's key. It used to stay on the
//! relay, unacknowledged, until `receive-all` fetched the file, and was opened
//! again each time; but an envelope left on the relay can outlive what opens
//! it (the session it was sealed on renews and is erased), and opening it again
//! after later messages must never be mistaken for a replay. So the first
//! command that opens an offer (`inbox`, `chat` or `receive-all`) records it
//! here, durably, *before* its envelope is acknowledged, and `receive-all`
//! downloads from here. An offer leaves only when its file is in place, or
//! the relay says it no longer has the file.
//!
//! The file is `"sotto-offers\0\0\0\0" (16) | version 02 | sealed`, `sealed`
//! being an [`AtRestKey`] record (random nonce, XChaCha20-Poly1305) of the
//! postcard list of offers under a key derived from the identity, with the
//! first 17 bytes as associated data: the passphrase that protects the key
//! file protects the file keys and names here too. It is small (at most
//! [`MAX_OFFERS`]) and rewritten whole, atomically, under the session lock
//! ([`crate::sessions`]), so `inbox`, `chat` and `receive-all` running at once
//! never lose each other's changes. Version 01, written before directory
//! trees could be sent, lacks each offer's [`OfferKind`]; it is read as
//! offers of files and rewritten as 02.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sotto_crypto::envelope::MessageId;
use sotto_crypto::file::{FileId, FileOffer};
use sotto_keys::{PublicKey, SecretKey};

use crate::sealed_list::{Layout, SealedList};

/// At most this many offers wait; the relay keeps at most 1,000 files per
/// recipient by default, so this is far beyond what one relay sends.
pub const MAX_OFFERS: usize = 10_000;

static LAYOUT: Layout = Layout {
    magic: b"sotto-offers\0\0\0\0",
    version: 2,
    older: Some(1),
    key_label: b"sotto offers key v1",
    // Each offer is well under 1 KiB.
    max_file_len: 16 << 20,
    max_entries: MAX_OFFERS,
    what_is_lost: "the files it lists",
};

/// An offer waiting for its file to be downloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffer {
    /// Its authenticated sender.
    pub sender: PublicKey,
    /// The id of the message that carried it.
    pub message: MessageId,
    /// The message's date, by the sender's clock (milliseconds).
    pub sent_at_ms: u64,
    /// When the relay stored the message (unix seconds, the relay's clock).
    pub received_at: u64,
    /// What was offered, with the file's key.
    pub offer: FileOffer,
    /// A file, or a directory tree sent as one.
    pub kind: OfferKind,
}

/// What an offer's blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferKind {
    /// A file, put in place under its name.
    File,
    /// A directory tree's stream ([`crate::tree`]), unpacked under its name.
    Tree,
}

/// An offer as version 01 of the file kept it.
#[derive(Deserialize)]
struct StoredOfferV1 {
    sender: PublicKey,
    message: MessageId,
    sent_at_ms: u64,
    received_at: u64,
    offer: FileOffer,
}

impl From<StoredOfferV1> for StoredOffer {
    fn from(v1: StoredOfferV1) -> Self {
        Self {
            sender: v1.sender,
            message: v1.message,
            sent_at_ms: v1.sent_at_ms,
            received_at: v1.received_at,
            offer: v1.offer,
            kind: OfferKind::File,
        }
    }
}

/// What [`Offers::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new offer, now kept.
    New,
    /// Already kept (the same file from the same sender).
    Known,
    /// [`MAX_OFFERS`] are waiting: not kept.
    Full,
}

/// The offers of one home, as loaded.
pub struct Offers {
    file: SealedList,
    list: Vec<StoredOffer>,
}

impl Offers {
    /// Loads the offers at `path` (none if there is no file) for `me`.
    /// Callers hold the session lock from here until after [`Offers::save`].
    pub fn load(path: &Path, me: &SecretKey) -> Result<Self> {
        let file = SealedList::new(path, me, &LAYOUT)?;
        let list = file.load_or_upgrade(|old: StoredOfferV1| StoredOffer::from(old))?;
        Ok(Self { file, list })
    }

    /// Keeps `offer` unless it is kept already or too many wait.
    pub fn add(&mut self, offer: StoredOffer) -> Added {
        let known = self.list.iter().any(|o| {
            (o.sender == offer.sender && o.message == offer.message)
                || o.offer.file_id == offer.offer.file_id
        });
        if known {
            Added::Known
        } else if self.list.len() >= MAX_OFFERS {
            Added::Full
        } else {
            self.list.push(offer);
            Added::New
        }
    }

    /// Drops the offer of `file_id`, returning it.
    pub fn remove(&mut self, file_id: FileId) -> Option<StoredOffer> {
        let at = self.list.iter().position(|o| o.offer.file_id == file_id)?;
        Some(self.list.remove(at))
    }

    /// The offers waiting, oldest first.
    pub fn list(&self) -> &[StoredOffer] {
        &self.list
    }

    /// Seals and writes the offers atomically (0600). With none left the
    /// file is removed.
    pub fn save(&self) -> Result<()> {
        self.file.save(&self.list)
    }
}

/// The list of offers in an opened file: postcard, nothing left over, at
/// most [`MAX_OFFERS`].
pub(crate) fn decode_list(plain: &[u8]) -> Option<Vec<StoredOffer>> {
    crate::sealed_list::decode(plain, MAX_OFFERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_crypto::file::FileKey;
    use std::os::unix::fs::PermissionsExt;

    fn offer(name: &str) -> StoredOffer {
        StoredOffer {
            sender: SecretKey::generate().public(),
            message: MessageId::random(),
            sent_at_ms: 1,
            received_at: 2,
            offer: FileOffer {
                file_id: FileId::random(),
                name: name.to_owned(),
                size: 3,
                hash: [4; 32],
                key: FileKey::generate(),
            },
            kind: OfferKind::File,
        }
    }

    #[test]
    fn offers_are_kept_sealed_private_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offers.sealed");
        let me = SecretKey::generate();
        let mut offers = Offers::load(&path, &me).unwrap();
        assert!(offers.list().is_empty());
        let a = offer("holiday-photos.tar");
        assert_eq!(offers.add(a.clone()), Added::New);
        assert_eq!(offers.add(a.clone()), Added::Known);
        let mut same_file = offer("other");
        same_file.offer.file_id = a.offer.file_id;
        assert_eq!(offers.add(same_file), Added::Known);
        offers.add(offer("b"));
        offers.save().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"holiday"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut again = Offers::load(&path, &me).unwrap();
        assert_eq!(again.list().len(), 2);
        assert_eq!(again.list()[0], a);
        assert_eq!(again.remove(a.offer.file_id), Some(a.clone()));
        assert_eq!(again.remove(a.offer.file_id), None);
        again.save().unwrap();
        assert_eq!(Offers::load(&path, &me).unwrap().list().len(), 1);

        let err = Offers::load(&path, &SecretKey::generate())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another identity key"), "{err}");
        let mut bad = std::fs::read(&path).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = Offers::load(&path, &me).err().unwrap().to_string();
        assert!(err.contains("is corrupt"), "{err}");
    }

    #[test]
    fn a_file_of_the_older_version_is_read_as_offers_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offers.sealed");
        let me = SecretKey::generate();
        let a = offer("old.pdf");
        #[derive(Serialize)]
        struct V1<'a> {
            sender: PublicKey,
            message: MessageId,
            sent_at_ms: u64,
            received_at: u64,
            offer: &'a FileOffer,
        }
        static V1_LAYOUT: Layout = Layout {
            magic: b"sotto-offers\0\0\0\0",
            version: 1,
            older: None,
            key_label: b"sotto offers key v1",
            max_file_len: 16 << 20,
            max_entries: MAX_OFFERS,
            what_is_lost: "the files it lists",
        };
        let old = SealedList::new(&path, &me, &V1_LAYOUT).unwrap();
        old.save(&[V1 {
            sender: a.sender,
            message: a.message,
            sent_at_ms: a.sent_at_ms,
            received_at: a.received_at,
            offer: &a.offer,
        }])
        .unwrap();
        let offers = Offers::load(&path, &me).unwrap();
        assert_eq!(offers.list(), [a]);
        offers.save().unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[16], 2);
        assert_eq!(Offers::load(&path, &me).unwrap().list().len(), 1);
    }

    #[test]
    fn the_last_offer_gone_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offers.sealed");
        let me = SecretKey::generate();
        let mut offers = Offers::load(&path, &me).unwrap();
        let a = offer("a");
        offers.add(a.clone());
        offers.save().unwrap();
        assert!(path.exists());
        offers.remove(a.offer.file_id);
        offers.save().unwrap();
        assert!(!path.exists());
        offers.save().unwrap();
    }

    #[test]
    fn a_full_list_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let me = SecretKey::generate();
        let mut offers = Offers::load(&dir.path().join("o"), &me).unwrap();
        let template = offer("x");
        for _ in 0..MAX_OFFERS {
            let mut o = template.clone();
            o.message = MessageId::random();
            o.offer.file_id = FileId::random();
            assert_eq!(offers.add(o), Added::New);
        }
        assert_eq!(offers.add(offer("one too many")), Added::Full);
    }
}
