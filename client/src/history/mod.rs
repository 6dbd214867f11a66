//! Local history: the messages sent and shown, for `sotto history NAME`.
//!
//! Who said what to whom is as private as the key itself, and a passphrase on
//! the key file would protect nothing if the history beside it were plain
//! text. So the history is sealed under a key derived from the identity
//! ([`sealed`]): without the identity secret (and so, for a protected key,
//! without the passphrase) the file gives away only how many messages it
//! holds and roughly how long they are.
//!
//! Files in the home:
//!
//! - `history.sealed` (0600, refused if others may read or write it, like the
//!   key file): a header, then one sealed record per message, appended, never
//!   rewritten;
//! - `history.lock`: the lock every reader and writer holds. Several `sotto`
//!   processes (a `chat` and a `send`) append at once, and an append first
//!   finds where the last whole record ends, cuts off what a crash tore there
//!   and writes after it: two appenders must not do that at the same time;
//! - `history.log`: the plaintext history of older versions. It is sealed into
//!   `history.sealed` and removed the first time history is used, whatever
//!   the setting (its bytes are sealed, not new ones written).
//!
//! `history = false` in `config.toml` keeps nothing: no file is created or
//! written. What was kept before stays until `sotto history --clear`; it is
//! still shown, with a note that nothing new is kept.
//!
//! The peer is kept as a key, not a name, so renaming or removing a contact
//! changes how history is shown, never what it says happened.

mod legacy;
mod lines;
mod sealed;

/// The history's decoders of bytes from the disk, for the fuzz targets
/// (`crate::fuzzing`).
pub(crate) mod fuzzing {
    use super::{sealed, Entry};

    /// An entry's plaintext decoded, and encoded again.
    pub fn entry(plain: &[u8]) -> Option<(Entry, Vec<u8>)> {
        let entry: Entry = postcard::from_bytes(plain).ok()?;
        let again = postcard::to_stdvec(&entry).ok()?;
        Some((entry, again))
    }

    /// The records after a header in `file` (the header's bytes first):
    /// where the whole records end, the tail, and how many there were.
    pub fn scan(file: &[u8]) -> Option<(u64, u64, usize)> {
        let body = file.get(sealed::HEADER_LEN..)?;
        let mut count = 0;
        let scan = sealed::scan(&mut &body[..], file.len() as u64, |_, _| count += 1).ok()?;
        Some((scan.end, scan.tail, count))
    }
}

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use sotto_keys::{PublicKey, SecretKey};

use crate::commands::{note, warn};
use crate::config::{write_atomic, Config};
use crate::home::Home;
use crate::notice::Notice;
use sealed::{scan, HeaderError, HistoryKey, HEADER_LEN};

pub use lines::lines_for;
pub use sealed::MAX_ENTRY_LEN;

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

/// History was asked for while the setting keeps none, and none was kept.
#[derive(Debug, Clone, thiserror::Error)]
#[error("history is off (`history = false` in {}): no messages are kept; set `history = true` there to keep them", config.display())]
pub struct HistoryOff {
    /// The config file that says so.
    pub config: PathBuf,
}

/// Where the history's files are.
#[derive(Debug, Clone)]
struct Files {
    sealed: PathBuf,
    legacy: PathBuf,
    lock: PathBuf,
    config: PathBuf,
}

impl Files {
    fn of(home: &Home) -> Self {
        Self {
            sealed: home.history(),
            legacy: home.history_plaintext(),
            lock: home.history_lock(),
            config: home.config(),
        }
    }

    /// Waits for the exclusive lock; it is released when the file is dropped.
    fn lock(&self) -> Result<File> {
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .with_context(|| format!("cannot open {}", self.lock.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.lock.display()))?;
        Ok(lock)
    }

    fn any_exists(&self) -> bool {
        self.sealed.exists() || self.legacy.exists()
    }
}

/// The history of one identity, as the home's setting wants it kept.
pub struct History {
    files: Files,
    keep: bool,
    key: HistoryKey,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("path", &self.files.sealed)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl History {
    /// The history of `me` in `home`, kept or not as `config.toml` says.
    /// Nothing is read or written until it is used.
    pub fn open(home: &Home, me: &SecretKey) -> Result<Self> {
        let keep = Config::load(&home.config())?.keeps_history();
        Self::with_setting(home, me, keep)
    }

    /// The same with the setting given.
    pub fn with_setting(home: &Home, me: &SecretKey, keep: bool) -> Result<Self> {
        let key = HistoryKey::derive(me).map_err(|_| anyhow!("cannot derive the history key"))?;
        Ok(Self {
            files: Files::of(home),
            keep,
            key,
        })
    }

    /// The sealed file.
    pub fn path(&self) -> &Path {
        &self.files.sealed
    }

    /// Whether new messages are kept.
    pub fn keeps(&self) -> bool {
        self.keep
    }

    /// Whether anything was kept in `home` (sealed, or by an older version).
    pub fn exists_in(home: &Home) -> bool {
        Files::of(home).any_exists()
    }

    /// Appends entries, durably; with history off, writes nothing.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        if !self.keep && !self.files.legacy.exists() {
            return Ok(());
        }
        let _lock = self.files.lock()?;
        self.migrate()?;
        if !self.keep || entries.is_empty() {
            return Ok(());
        }
        self.append_locked(entries)
    }

    /// Appends what was just shown or sent. A failure is a warning to show,
    /// not an error: the messages were shown (or sent), and must still be
    /// acknowledged (or said to be sent).
    pub fn record(&self, entries: &[Entry]) -> Option<Notice> {
        let e = self.append(entries).err()?;
        Some(Notice::Warning(format!(
            "the local history was not updated: {}",
            crate::error_line(&e)
        )))
    }

    /// Every readable entry, oldest first. With history off and nothing kept
    /// before, a [`HistoryOff`] error.
    pub fn read_all(&self) -> Result<Vec<Entry>> {
        if !self.keep && !self.files.any_exists() {
            return Err(HistoryOff {
                config: self.files.config.clone(),
            }
            .into());
        }
        let _lock = self.files.lock()?;
        self.migrate()?;
        Ok(self.read_locked()?.unwrap_or_default())
    }

    /// Opens the sealed file, checking it is private; `None` if there is none.
    fn open_file(&self, write: bool) -> Result<Option<File>> {
        crate::sessions::open_private(&self.files.sealed, write)
    }

    /// Checks the header of `file`, leaving it positioned after it; returns
    /// the file's length.
    fn check_header(&self, file: &mut File) -> Result<u64> {
        let path = &self.files.sealed;
        let io = |e| anyhow::Error::new(e).context(format!("cannot read {}", path.display()));
        let len = file.metadata().map_err(io)?.len();
        let mut header = Vec::with_capacity(HEADER_LEN);
        Read::by_ref(file)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut header)
            .map_err(io)?;
        self.key.check_header(&header).map_err(|e| {
            let p = path.display();
            match e {
                HeaderError::Version(_) => anyhow!("{p} {e}"),
                HeaderError::Internal => anyhow!("{p} {e}"),
                HeaderError::NotHistory | HeaderError::WrongKey => {
                    anyhow!("{p} {e}; move it away, or remove it with `sotto history --clear`")
                }
            }
        })?;
        Ok(len)
    }

    /// The entries of the sealed file; `None` if there is none. Holds the lock.
    fn read_locked(&self) -> Result<Option<Vec<Entry>>> {
        let Some(mut file) = self.open_file(false)? else {
            return Ok(None);
        };
        let len = self.check_header(&mut file)?;
        let mut entries = Vec::new();
        let mut damaged = 0usize;
        let p = self.files.sealed.display();
        let end = scan(&mut BufReader::new(&file), len, |offset, sealed| match self
            .key
            .open(offset, sealed)
        {
            Some(e) => entries.push(e),
            None => damaged += 1,
        })
        .with_context(|| format!("cannot read {p}"))?;
        if damaged > 0 {
            warn(&format!(
                "{damaged} message(s) in {p} did not open (damaged or altered) and were skipped"
            ));
        }
        if end.tail > 0 {
            warn(&format!(
                "{p} ends with {} bytes that are not a whole record (an interrupted write); they are ignored, and cut off when the next message is kept",
                end.tail
            ));
        }
        Ok(Some(entries))
    }

    /// Appends to the sealed file (creating it), after cutting off a torn
    /// tail. Holds the lock.
    fn append_locked(&self, entries: &[Entry]) -> Result<()> {
        let path = &self.files.sealed;
        let p = path.display();
        let mut file = match self.open_file(true)? {
            Some(f) => f,
            None => {
                // Created whole (temporary file, rename): a crash leaves no
                // half header to be mistaken for damage.
                write_atomic(path, &self.header()?)?;
                self.open_file(true)?
                    .ok_or_else(|| anyhow!("{p} vanished while being created"))?
            }
        };
        let len = self.check_header(&mut file)?;
        let end = scan(&mut BufReader::new(&file), len, |_, _| {})
            .with_context(|| format!("cannot read {p}"))?;
        let write = |e| anyhow::Error::new(e).context(format!("cannot write to {p}"));
        if end.tail > 0 {
            warn(&format!(
                "{p} ended with {} bytes of an interrupted write; they were cut off",
                end.tail
            ));
            file.set_len(end.end).map_err(write)?;
        }
        let mut buf = Vec::new();
        for entry in entries {
            let record = self
                .key
                .record(end.end + buf.len() as u64, entry)
                .map_err(anyhow::Error::new)?;
            buf.extend_from_slice(&record);
        }
        file.seek(SeekFrom::Start(end.end)).map_err(write)?;
        file.write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(write)
    }

    fn header(&self) -> Result<Vec<u8>> {
        self.key
            .header()
            .map_err(|e| anyhow!("{} {e}", self.files.sealed.display()))
    }

    /// Seals the plaintext history of an older version, if there is one, and
    /// removes it. Holds the lock.
    ///
    /// A crash after the sealed file is written and before the plaintext one
    /// is removed runs this again next time: what the sealed file already
    /// holds is not added twice.
    fn migrate(&self) -> Result<()> {
        let legacy = &self.files.legacy;
        let Some(old) =
            legacy::read(legacy).with_context(|| format!("cannot read {}", legacy.display()))?
        else {
            return Ok(());
        };
        if self.files.sealed.exists() {
            let mut kept: HashMap<Vec<u8>, usize> = HashMap::new();
            for e in self.read_locked()?.unwrap_or_default() {
                *kept.entry(postcard::to_stdvec(&e)?).or_default() += 1;
            }
            let mut new = Vec::new();
            for e in old {
                match kept.get_mut(&postcard::to_stdvec(&e)?) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => new.push(e),
                }
            }
            if !new.is_empty() {
                self.append_locked(&new)?;
            }
        } else {
            let mut bytes = self.header()?;
            for e in &old {
                let record = self
                    .key
                    .record(bytes.len() as u64, e)
                    .map_err(anyhow::Error::new)?;
                bytes.extend_from_slice(&record);
            }
            write_atomic(&self.files.sealed, &bytes)?;
        }
        std::fs::remove_file(legacy)
            .with_context(|| format!("cannot remove {}", legacy.display()))?;
        sync_dir(legacy);
        note(&format!(
            "the plaintext history of an older sotto ({}) is now sealed in {} and was removed; its old bytes may remain on the disk",
            legacy.display(),
            self.files.sealed.display()
        ));
        Ok(())
    }
}

/// Removes every history kept in `home` (sealed, and plaintext from an older
/// version); returns the files removed. Needs no identity: a forgotten
/// passphrase must not keep anyone from deleting their history.
pub fn clear(home: &Home) -> Result<Vec<PathBuf>> {
    let files = Files::of(home);
    if !files.any_exists() {
        return Ok(Vec::new());
    }
    let _lock = files.lock()?;
    let mut removed = Vec::new();
    for path in [&files.sealed, &files.legacy] {
        match std::fs::remove_file(path) {
            Ok(()) => removed.push(path.clone()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    sync_dir(&files.sealed);
    Ok(removed)
}

/// Best effort: makes a removal or rename in `path`'s directory durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests;
