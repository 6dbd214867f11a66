//! What it takes to resume an interrupted `send-file`.
//!
//! An upload is resumable only under the file id and key it started with:
//! the relay holds chunks sealed under them. So before the first chunk leaves,
//! the id, the key (with its nonce prefix) and a fingerprint of the file (size,
//! modification time, inode) are written to a small file in the home,
//! `uploads/<name>.upload`, named by a hash of the recipient's key and the
//! file's canonical path; the same `send-file` run again finds it there. If the
//! file changed since (another fingerprint), the state is discarded and the
//! upload starts over under a new id and key: sealing different content under
//! a key and nonce already used would void the cipher's guarantees.
//!
//! The state holds a secret key, so its file is created 0600 in a 0700
//! directory, written atomically (a crash leaves the old state or the new one),
//! never printed, and deleted once the file's offer is stored. The format is
//! text, one `field value` per line:
//!
//! ```text
//! # sotto upload state: resumes `sotto send-file`; holds the file's key, keep it private
//! version 1
//! file_id 00112233445566778899aabbccddeeff
//! key <64 hex digits>
//! nonce_prefix <14 hex digits>
//! size 1048576
//! mtime 1700000000.123456789
//! inode 2 1234567
//! ```
//!
//! A state file that cannot be read back is treated as absent (and replaced):
//! the worst that costs is an upload starting over.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use sotto_crypto::file::{ContentHash, FileId, FileKey, NONCE_PREFIX_LEN};
use sotto_keys::PublicKey;
use zeroize::Zeroizing;

/// States untouched for longer than this are deleted: their uploads are long
/// gone from any relay (mailboxes and blobs expire after days).
pub const STATE_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

const VERSION: &str = "1";
const HEADER: &str =
    "# sotto upload state: resumes `sotto send-file`; holds the file's key, keep it private\n";
/// A state file is a few hundred bytes; anything larger is not one.
const MAX_STATE_LEN: u64 = 4096;

/// What identifies a file's content as unchanged, short of reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Size in bytes.
    pub size: u64,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
    /// Device and inode: a file replaced by another (`cp -p`) is not the same.
    pub inode: (u64, u64),
}

impl Fingerprint {
    /// The fingerprint of a file's metadata.
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// One upload's resume state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    /// The relay's id for the file.
    pub file_id: FileId,
    /// The file's key (never printed: `FileKey`'s `Debug` hides it).
    pub key: FileKey,
    /// The file as it was when the upload started.
    pub fingerprint: Fingerprint,
}

impl UploadState {
    /// A fresh state: new id, new key.
    pub fn new(fingerprint: Fingerprint) -> Self {
        Self {
            file_id: FileId::random(),
            key: FileKey::generate(),
            fingerprint,
        }
    }

    /// The text of its state file.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(512));
        let f = &self.fingerprint;
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "{HEADER}version {VERSION}\nfile_id {}\nkey {}\nnonce_prefix {}\nsize {}\nmtime {}.{}\ninode {} {}\n",
            self.file_id,
            Zeroizing::new(hex(self.key.key_bytes())).as_str(),
            hex(self.key.nonce_prefix()),
            f.size,
            f.mtime.0,
            f.mtime.1,
            f.inode.0,
            f.inode.1,
        );
        s
    }

    /// Reads a state file's text; `None` if it is not one this code writes.
    pub fn decode(text: &str) -> Option<Self> {
        let mut version = None;
        let mut file_id = None;
        let mut key = None;
        let mut nonce_prefix = None;
        let mut size = None;
        let mut mtime = None;
        let mut inode = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (field, value) = line.split_once(' ')?;
            match field {
                "version" => version = Some(value),
                "file_id" => file_id = Some(FileId(unhex(value)?)),
                "key" => key = Some(Zeroizing::new(unhex::<32>(value)?)),
                "nonce_prefix" => nonce_prefix = Some(unhex::<NONCE_PREFIX_LEN>(value)?),
                "size" => size = Some(value.parse().ok()?),
                "mtime" => {
                    let (s, ns) = value.split_once('.')?;
                    mtime = Some((s.parse().ok()?, ns.parse().ok()?));
                }
                "inode" => {
                    let (dev, ino) = value.split_once(' ')?;
                    inode = Some((dev.parse().ok()?, ino.parse().ok()?));
                }
                _ => return None,
            }
        }
        if version? != VERSION {
            return None;
        }
        Some(Self {
            file_id: file_id?,
            key: FileKey::from_parts(key?, nonce_prefix?),
            fingerprint: Fingerprint {
                size: size?,
                mtime: mtime?,
                inode: inode?,
            },
        })
    }
}

/// The directory of upload states (`uploads/` in the home).
#[derive(Debug, Clone)]
pub struct UploadStates {
    dir: PathBuf,
}

impl UploadStates {
    /// States kept in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The state file of an upload of `canonical` to `to`. The name reveals
    /// neither: it is a hash of both.
    pub fn path_for(&self, to: &PublicKey, canonical: &Path) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let mut h = ContentHash::new();
        h.update(b"sotto upload state v1\0");
        h.update(to.as_bytes());
        h.update(canonical.as_os_str().as_bytes());
        let digest = h.finish();
        self.dir.join(format!("{}.upload", hex(&digest[..16])))
    }

    /// The saved state of this upload, if there is a readable one.
    pub fn load(&self, to: &PublicKey, canonical: &Path) -> Result<Option<UploadState>> {
        let path = self.path_for(to, canonical);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut text = Zeroizing::new(String::new());
        if file.take(MAX_STATE_LEN).read_to_string(&mut text).is_err() {
            tracing::warn!(path = %path.display(), "unreadable upload state ignored");
            return Ok(None);
        }
        let state = UploadState::decode(&text);
        if state.is_none() {
            tracing::warn!(path = %path.display(), "malformed upload state ignored");
        }
        Ok(state)
    }

    /// The state to upload `canonical` (now `fingerprint`) under: the saved
    /// one if the file is unchanged, else a fresh one, saved before use.
    /// The flag says whether it was resumed.
    pub fn resume_or_start(
        &self,
        to: &PublicKey,
        canonical: &Path,
        fingerprint: Fingerprint,
    ) -> Result<(UploadState, bool)> {
        if let Some(state) = self.load(to, canonical)? {
            if state.fingerprint == fingerprint {
                return Ok((state, true));
            }
            tracing::info!("the file changed since the interrupted upload: starting over");
        }
        let state = UploadState::new(fingerprint);
        self.save(to, canonical, &state)?;
        Ok((state, false))
    }

    /// Saves a state durably, 0600, replacing any earlier one.
    pub fn save(&self, to: &PublicKey, canonical: &Path, state: &UploadState) -> Result<()> {
        let context = || {
            format!(
                "cannot save the upload state in {}; check that the sotto home is writable",
                self.dir.display()
            )
        };
        if !self.dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .with_context(context)?;
        }
        let path = self.path_for(to, canonical);
        // tempfile creates its files 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&self.dir)
            .with_context(context)?;
        tmp.write_all(state.encode().as_bytes())
            .with_context(context)?;
        tmp.as_file().sync_all().with_context(context)?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(context)?;
        crate::publish::sync_dir(&self.dir);
        Ok(())
    }

    /// Deletes the state of an upload (done, or abandoned).
    pub fn remove(&self, to: &PublicKey, canonical: &Path) -> Result<()> {
        let path = self.path_for(to, canonical);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
        }
    }

    /// Deletes states untouched for longer than `retention`; returns how many.
    pub fn prune(&self, retention: Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "upload") {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= retention);
            if old && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            size: 3 * 65536 + 5,
            mtime: (1_700_000_000, 123_456_789),
            inode: (2049, 42),
        }
    }

    #[test]
    fn a_saved_state_round_trips_privately() {
        let home = tempfile::tempdir().unwrap();
        let states = UploadStates::new(home.path().join("uploads"));
        let bob = PublicKey::from_bytes([7; 32]);
        let path = Path::new("/data/big file.iso");
        assert!(states.load(&bob, path).unwrap().is_none());

        let state = UploadState::new(fingerprint());
        states.save(&bob, path, &state).unwrap();
        assert_eq!(states.load(&bob, path).unwrap(), Some(state.clone()));

        let file = states.path_for(&bob, path);
        assert_eq!(file.parent(), Some(home.path().join("uploads").as_path()));
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(home.path().join("uploads"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // The name gives away neither the path nor the recipient.
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains("big") && name.ends_with(".upload"), "{name}");
        // Only one file: no temporary file left behind.
        assert_eq!(
            fs::read_dir(home.path().join("uploads")).unwrap().count(),
            1
        );

        // Another recipient or another file is another upload.
        assert!(states
            .load(&PublicKey::from_bytes([8; 32]), path)
            .unwrap()
            .is_none());
        assert!(states
            .load(&bob, Path::new("/data/other"))
            .unwrap()
            .is_none());

        states.remove(&bob, path).unwrap();
        assert!(states.load(&bob, path).unwrap().is_none());
        states.remove(&bob, path).unwrap();
    }

    #[test]
    fn an_unchanged_file_resumes_and_a_changed_one_starts_over() {
        let home = tempfile::tempdir().unwrap();
        let states = UploadStates::new(home.path().join("uploads"));
        let bob = PublicKey::from_bytes([7; 32]);
        let path = Path::new("/f");
        let (first, resumed) = states.resume_or_start(&bob, path, fingerprint()).unwrap();
        assert!(!resumed);
        let (again, resumed) = states.resume_or_start(&bob, path, fingerprint()).unwrap();
        assert!(resumed);
        assert_eq!(again, first);

        for changed in [
            Fingerprint {
                size: fingerprint().size + 1,
                ..fingerprint()
            },
            Fingerprint {
                mtime: (1_700_000_000, 123_456_790),
                ..fingerprint()
            },
            Fingerprint {
                inode: (2049, 43),
                ..fingerprint()
            },
        ] {
            let (fresh, resumed) = states.resume_or_start(&bob, path, changed).unwrap();
            assert!(!resumed);
            assert_ne!(fresh.file_id, first.file_id);
            assert_ne!(fresh.key, first.key);
            // ... and the fresh state replaced the old one.
            assert_eq!(states.load(&bob, path).unwrap(), Some(fresh));
        }
    }

    #[test]
    fn the_key_is_in_the_file_but_never_in_debug_output() {
        let state = UploadState::new(fingerprint());
        let text = state.encode();
        assert!(text.contains(&format!("key {}", hex(state.key.key_bytes()))));
        assert!(text.starts_with("# sotto upload state"));
        let debug = format!("{state:?}");
        assert!(!debug.contains(&hex(state.key.key_bytes())), "{debug}");
    }

    #[test]
    fn damaged_states_are_ignored_not_trusted() {
        let home = tempfile::tempdir().unwrap();
        let states = UploadStates::new(home.path());
        let bob = PublicKey::from_bytes([7; 32]);
        let path = Path::new("/f");
        let good = UploadState::new(fingerprint()).encode();
        let cases = [
            String::new(),
            good.replace("version 1", "version 2"),
            good.replace("size ", "size x"),
            good.lines()
                .filter(|l| !l.starts_with("key "))
                .collect::<Vec<_>>()
                .join("\n"),
            good.replace("nonce_prefix ", "nonce_prefix 00"),
            format!("{}extra field\n", good.as_str()),
            "\u{0}\u{1}binary".to_owned(),
        ];
        for case in cases {
            fs::write(states.path_for(&bob, path), &case).unwrap();
            assert!(states.load(&bob, path).unwrap().is_none(), "{case:?}");
        }
        fs::write(states.path_for(&bob, path), vec![b'#'; 10_000]).unwrap();
        assert!(states.load(&bob, path).unwrap().is_none());
    }

    #[test]
    fn old_states_are_pruned() {
        let home = tempfile::tempdir().unwrap();
        let states = UploadStates::new(home.path());
        let bob = PublicKey::from_bytes([7; 32]);
        states
            .save(&bob, Path::new("/a"), &UploadState::new(fingerprint()))
            .unwrap();
        fs::write(home.path().join("unrelated.txt"), b"x").unwrap();
        assert_eq!(states.prune(STATE_RETENTION), 0);
        assert_eq!(states.prune(Duration::ZERO), 1);
        assert!(home.path().join("unrelated.txt").exists());
    }
}
