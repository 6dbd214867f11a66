//! Local history: the messages sent and shown, for `sotto history NAME`.
//!
//! One append-only file in the home, `history.log`, created private (0600,
//! like the key file: who said what to whom is nobody else's business). Each
//! record is a 4-byte little-endian length then the postcard encoding of an
//! [`Entry`]; a record is written with a single `write` on a file opened for
//! appending, then synced. A crash in the middle of an append leaves a torn
//! last record, which reading ignores: everything before it stays readable.
//!
//! The peer is kept as a key, not a name, so renaming or removing a contact
//! changes how history is shown, never what it says happened.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sotto_keys::PublicKey;

/// Largest record read back; anything longer is damage, not a message.
const MAX_RECORD_LEN: usize = 1 << 20;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// I sent it.
    Sent,
    /// I received (and was shown) it.
    Received,
}

/// One message, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The message's date (the sender's clock), ms since the Unix epoch.
    pub at_ms: u64,
    /// Sent or received.
    pub direction: Direction,
    /// The other side: the sender of a received message, the recipient of a
    /// message sent to one contact; `None` for a message sent to a group.
    pub peer: Option<PublicKey>,
    /// The group it was sent in, if any (as the sender names it).
    pub group: Option<String>,
    /// The text, as it came (neutralised only when shown).
    pub text: String,
}

/// The history file.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
}

impl History {
    /// The history kept at `path` (nothing is created until the first append).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends entries, durably.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for entry in entries {
            let bytes = postcard::to_stdvec(entry).context("cannot encode a history entry")?;
            let len = u32::try_from(bytes.len()).context("history entry too long")?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&bytes);
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        file.write_all(&buf)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot write to {}", self.path.display()))
    }

    /// Every readable entry, oldest first; no file means no history.
    pub fn read_all(&self) -> Result<Vec<Entry>> {
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)
                    .with_context(|| format!("cannot read {}", self.path.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open {}", self.path.display()))
            }
        }
        Ok(decode_all(&bytes))
    }
}

/// Decodes records up to the end or the first torn or damaged one.
fn decode_all(mut bytes: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len > MAX_RECORD_LEN || bytes.len() - 4 < len {
            tracing::debug!("history ends with a torn or damaged record");
            break;
        }
        match postcard::from_bytes::<Entry>(&bytes[4..4 + len]) {
            Ok(entry) => out.push(entry),
            Err(_) => {
                tracing::debug!("a damaged history record was skipped");
            }
        }
        bytes = &bytes[4 + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(text: &str, direction: Direction) -> Entry {
        Entry {
            at_ms: 1_700_000_000_000,
            direction,
            peer: Some(PublicKey::from_bytes([7; 32])),
            group: None,
            text: text.to_owned(),
        }
    }

    #[test]
    fn entries_come_back_in_order_from_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::at(dir.path().join("history.log"));
        assert!(h.read_all().unwrap().is_empty());
        let a = entry("one", Direction::Sent);
        let mut b = entry("two", Direction::Received);
        b.group = Some("team".into());
        b.peer = None;
        h.append(std::slice::from_ref(&a)).unwrap();
        h.append(std::slice::from_ref(&b)).unwrap();
        assert_eq!(h.read_all().unwrap(), vec![a, b]);
        let mode = std::fs::metadata(h.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_torn_last_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::at(dir.path().join("history.log"));
        let a = entry("kept", Direction::Sent);
        h.append(std::slice::from_ref(&a)).unwrap();
        h.append(&[entry("torn", Direction::Sent)]).unwrap();
        let len = std::fs::metadata(h.path()).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(h.path())
            .unwrap();
        f.set_len(len - 2).unwrap();
        assert_eq!(h.read_all().unwrap(), vec![a]);
        // A huge declared length is not allocated.
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"xx");
        assert!(decode_all(&bytes).is_empty());
    }
}
