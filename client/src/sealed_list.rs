//! A small list kept sealed in the home, rewritten whole and atomically.
//!
//! Some of what the client keeps between commands must survive a crash and
//! must not be readable without the identity key: the file offers not yet
//! received (their file keys, [`crate::offers`]) and the envelopes not yet
//! stored by the relay they go to ([`crate::undelivered`]). Both are short
//! lists changed a few entries at a time, so each is one file in the same
//! layout, written the same way:
//!
//! `magic (16) | version (1) | sealed`, `sealed` being an [`AtRestKey`]
//! record (random nonce, XChaCha20-Poly1305) of the postcard-encoded list
//! under a key derived from the identity with a label of its own, the first
//! 17 bytes as associated data. Written with 0600 through a temporary file,
//! fsync and rename; an empty list removes the file. Callers change a list
//! only under the session lock ([`crate::sessions`]), so commands running at
//! once never lose each other's changes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sotto_crypto::at_rest::AtRestKey;
use sotto_keys::SecretKey;

/// What tells one kind of list from another, and bounds it.
pub struct Layout {
    /// The file's first 16 bytes.
    pub magic: &'static [u8; 16],
    /// The version byte after them.
    pub version: u8,
    /// An older version still read (and rewritten as `version`), if any.
    pub older: Option<u8>,
    /// The label the list's key is derived under.
    pub key_label: &'static [u8],
    /// Largest file read, in bytes.
    pub max_file_len: u64,
    /// Most entries in the list.
    pub max_entries: usize,
    /// What the list holds, for error messages ("the files it lists").
    pub what_is_lost: &'static str,
}

impl Layout {
    fn header(&self) -> [u8; 17] {
        self.header_of(self.version)
    }

    fn header_of(&self, version: u8) -> [u8; 17] {
        let mut h = [0u8; 17];
        h[..16].copy_from_slice(self.magic);
        h[16] = version;
        h
    }
}

/// One sealed list file of the home.
pub struct SealedList {
    path: PathBuf,
    key: AtRestKey,
    layout: &'static Layout,
}

impl SealedList {
    /// The list at `path`, sealed for `me`.
    pub fn new(path: &Path, me: &SecretKey, layout: &'static Layout) -> Result<Self> {
        let key = AtRestKey::derive(me, layout.key_label)
            .map_err(|e| anyhow!("cannot derive the key of {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            key,
            layout,
        })
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and opens the list; no file is an empty list.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.load_or_upgrade::<T, T>(|old| old)
    }

    /// Reads and opens the list, a list of the layout's older version
    /// decoded as `O` and turned into `T` by `upgrade`.
    pub fn load_or_upgrade<T: DeserializeOwned, O: DeserializeOwned>(
        &self,
        upgrade: impl Fn(O) -> T,
    ) -> Result<Vec<T>> {
        let Some(bytes) = crate::sessions::read_private(&self.path, self.layout.max_file_len)?
        else {
            return Ok(Vec::new());
        };
        let p = self.path.display();
        let lost = self.layout.what_is_lost;
        let header = self.layout.header();
        let older = self.layout.older.map(|v| self.layout.header_of(v));
        let (sealed, header, old) = match bytes.strip_prefix(&header[..]) {
            Some(sealed) => (sealed, header, false),
            None => match older.and_then(|h| Some((bytes.strip_prefix(&h[..])?, h))) {
                Some((sealed, h)) => (sealed, h, true),
                None if bytes.starts_with(self.layout.magic) => {
                    bail!("{p} was written by another version of sotto; upgrade sotto to use it")
                }
                None => {
                    bail!("{p} is not a file sotto wrote here; move it away ({lost} are lost)")
                }
            },
        };
        let plain = self.key.open(&header, sealed).map_err(|_| {
            anyhow!("{p} is corrupt or was written with another identity key; move it away ({lost} are lost)")
        })?;
        let list = if old {
            decode::<O>(&plain, self.layout.max_entries)
                .map(|l| l.into_iter().map(upgrade).collect())
        } else {
            decode(&plain, self.layout.max_entries)
        };
        match list {
            Some(list) => Ok(list),
            None => bail!("{p} does not decode; move it away ({lost} are lost)"),
        }
    }

    /// Seals and writes `list` atomically (0600); an empty list removes the
    /// file.
    pub fn save<T: Serialize>(&self, list: &[T]) -> Result<()> {
        if list.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => {
                    Err(anyhow::Error::new(e)
                        .context(format!("cannot remove {}", self.path.display())))
                }
            };
        }
        let plain = zeroize::Zeroizing::new(
            postcard::to_stdvec(list)
                .map_err(|e| anyhow!("cannot encode {}: {e}", self.path.display()))?,
        );
        let header = self.layout.header();
        let sealed = self
            .key
            .seal(&header, &plain)
            .map_err(|e| anyhow!("cannot seal {}: {e}", self.path.display()))?;
        let mut out = Vec::with_capacity(header.len() + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&sealed);
        crate::config::write_atomic(&self.path, &out)
    }
}

/// The list in an opened file: postcard, nothing left over, at most
/// `max_entries`.
pub(crate) fn decode<T: DeserializeOwned>(plain: &[u8], max_entries: usize) -> Option<Vec<T>> {
    match postcard::take_from_bytes::<Vec<T>>(plain) {
        Ok((list, [])) if list.len() <= max_entries => Some(list),
        _ => None,
    }
}
