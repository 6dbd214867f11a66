//! The client's forward-secret session state on disk, and the lock that makes
//! it safe for several `sotto` processes at once.
//!
//! [`SessionStore`] (sotto-crypto, `session`) is pure state; this module gives
//! it a home: `sessions.sealed`, sealed under a key derived from the identity
//! (so it holds no key material readable without the identity key), private
//! (0600, checked on every load like the key file) and replaced atomically
//! (temporary file, fsync, rename, directory fsync), so a crash leaves the old
//! state or the new one.
//!
//! Why a lock: a `chat` may run while a `send` or a `receive-all` does. Two
//! processes that both load the same state and seal on it would use the same
//! nonce under the same key — a catastrophic reuse. So every
//! load-modify-save happens inside [`Batch`], which holds an exclusive
//! cross-process lock on `sessions.lock` from before the load until after the
//! save. A batch is short (no network inside it): what it sealed is sent after
//! the state that produced it is saved, so a crash can never lose a pending
//! init that an answer will need (crypto `session` §6).
//!
//! The seen store (`seen.redb`, [`crate::seen`]) and the offers of files not
//! yet received (`offers.sealed`, [`crate::offers`]) are opened inside the
//! same batch, for the same short time, so that a running `chat` no longer
//! keeps `sotto inbox` out of them, and no two commands change them at once.
//!
//! Test knob: `SOTTO_SESSION_MAX_AGE=SECONDS` (tests only, never needed in
//! use) makes sessions unusable after that age and erases them at once after it
//! (no grace period), so a test can watch session keys being erased.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use sotto_crypto::session::{SessionConfig, SessionStore, MAX_STATE_LEN};
use sotto_crypto::SessionStateError;
use sotto_keys::SecretKey;

use crate::home::Home;
use crate::offers::Offers;
use crate::reach::ReachBook;
use crate::seen::SeenStore;
use crate::undelivered::Undelivered;

/// The test-only environment knob described in the module documentation.
pub const MAX_AGE_ENV: &str = "SOTTO_SESSION_MAX_AGE";

/// The renewal and erasure policy: the library's defaults, unless the
/// test-only knob is set.
pub fn config() -> Result<SessionConfig> {
    let mut config = SessionConfig::default();
    match std::env::var(MAX_AGE_ENV) {
        Ok(v) => {
            let secs: u64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("{MAX_AGE_ENV} must be a number of seconds, not {:?}", v))?;
            config.max_age = Duration::from_secs(secs);
            config.grace = Duration::ZERO;
        }
        Err(std::env::VarError::NotPresent) => {}
        Err(std::env::VarError::NotUnicode(_)) => bail!("{MAX_AGE_ENV} is not valid UTF-8 text"),
    }
    Ok(config)
}

/// Where the session state and its lock live.
#[derive(Debug, Clone)]
pub struct SessionFiles {
    state: PathBuf,
    lock: PathBuf,
    seen: PathBuf,
    offers: PathBuf,
    reach: PathBuf,
    undelivered: PathBuf,
}

impl SessionFiles {
    /// The files of `home`.
    pub fn of(home: &Home) -> Self {
        Self {
            state: home.sessions(),
            lock: home.sessions_lock(),
            seen: home.seen(),
            offers: home.offers(),
            reach: home.reach(),
            undelivered: home.undelivered(),
        }
    }

    /// Runs `f` on the envelopes waiting for their relay under the lock,
    /// without loading the session state; `f` saves what it changes.
    pub fn with_undelivered<T>(
        &self,
        me: &SecretKey,
        f: impl FnOnce(&mut Undelivered) -> Result<T>,
    ) -> Result<T> {
        let lock = open_lock(&self.lock)?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.lock.display()))?;
        let mut list = Undelivered::load(&self.undelivered, me)?;
        f(&mut list)
    }

    /// Runs `f` on what contacts were told and told me of where to reach
    /// them, under the lock; `f` saves what it changes.
    pub fn with_reach<T>(
        &self,
        me: &SecretKey,
        f: impl FnOnce(&mut ReachBook) -> Result<T>,
    ) -> Result<T> {
        let lock = open_lock(&self.lock)?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.lock.display()))?;
        let mut book = ReachBook::load(&self.reach, me)?;
        f(&mut book)
    }

    /// Runs `f` on the offers of files not yet received under the lock,
    /// without loading the session state; `f` saves what it changes.
    pub fn with_offers<T>(
        &self,
        me: &SecretKey,
        f: impl FnOnce(&mut Offers) -> Result<T>,
    ) -> Result<T> {
        let lock = open_lock(&self.lock)?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.lock.display()))?;
        let mut offers = Offers::load(&self.offers, me)?;
        f(&mut offers)
    }

    /// Runs `f` on the seen store under the lock, without loading the
    /// session state (for recording what was received outside a batch).
    pub fn with_seen<T>(&self, f: impl FnOnce(&SeenStore) -> Result<T>) -> Result<T> {
        let lock = open_lock(&self.lock)?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.lock.display()))?;
        let seen = SeenStore::open(&self.seen, crate::seen::now_secs())?;
        f(&seen)
    }

    /// Waits for the lock, then loads the state (an empty one if there is no
    /// file yet) for `me`. Expired sessions are erased at once.
    pub fn lock(&self, me: &SecretKey) -> Result<Batch> {
        let lock = open_lock(&self.lock)?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.lock.display()))?;
        let config = config()?;
        let mut store = load(&self.state, me, config)?;
        store.erase_expired(SystemTime::now());
        Ok(Batch {
            _lock: lock,
            files: self.clone(),
            store,
        })
    }
}

/// One load-modify-save of the session state under the exclusive lock; the
/// lock is released when it is dropped. Save before sending anything sealed
/// in it.
pub struct Batch {
    _lock: File,
    files: SessionFiles,
    /// The sessions, as loaded.
    pub store: SessionStore,
}

impl Batch {
    /// Opens the seen store for the length of this batch.
    pub fn seen(&self) -> Result<SeenStore> {
        SeenStore::open(&self.files.seen, crate::seen::now_secs())
    }

    /// Loads the offers of files not yet received, for the length of this
    /// batch; save them before the batch ends.
    pub fn offers(&self, me: &SecretKey) -> Result<Offers> {
        Offers::load(&self.files.offers, me)
    }

    /// Loads what contacts were told of where to reach me, for the length
    /// of this batch; save it before the batch ends.
    pub fn reach(&self, me: &SecretKey) -> Result<ReachBook> {
        ReachBook::load(&self.files.reach, me)
    }

    /// Seals and writes the state atomically; the lock is still held.
    pub fn save(&self, me: &SecretKey) -> Result<()> {
        let sealed = self
            .store
            .seal_state(me)
            .map_err(|e| anyhow!("cannot save the session state: {e}"))?;
        crate::config::write_atomic(&self.files.state, &sealed)
    }
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Opens a private file of the home (for writing too if `write`), refused
/// with the `chmod` to run if others may read or write it, or if it is not a
/// regular file; `None` if there is no file. The checks are on the opened
/// file, so nothing can be swapped in between.
pub(crate) fn open_private(path: &Path, write: bool) -> Result<Option<File>> {
    let file = match OpenOptions::new().read(true).write(write).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file; move it away", path.display());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable or writable by others (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(Some(file))
}

/// The bytes of a private file of the home (at most `limit` of them), as
/// [`open_private`] checks it; `None` if there is no file.
pub(crate) fn read_private(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some(file) = open_private(path, false)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{} is larger than {limit} bytes; move it away",
            path.display()
        );
    }
    Ok(Some(bytes))
}

/// Reads and opens the sealed state at `path`; no file is an empty store.
fn load(path: &Path, me: &SecretKey, config: SessionConfig) -> Result<SessionStore> {
    let Some(bytes) = read_private(path, MAX_STATE_LEN as u64)? else {
        return Ok(SessionStore::new(me.public(), config));
    };
    SessionStore::open_state(me, &bytes, config).map_err(|e| {
        let p = path.display();
        match e {
            SessionStateError::WrongIdentity => anyhow!(
                "{p} belongs to another identity than this home's key; move it away to start new sessions"
            ),
            SessionStateError::Decrypt => anyhow!(
                "{p} is corrupt or was written with another identity key; move it away to start new sessions"
            ),
            SessionStateError::UnsupportedVersion(v) => anyhow!(
                "{p} has session state version {v}, which this sotto does not read; upgrade sotto"
            ),
            other => anyhow!("{p} cannot be used ({other}); move it away to start new sessions"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_crypto::envelope::{Body, Content};
    use std::os::unix::fs::PermissionsExt;

    fn home() -> (tempfile::TempDir, SessionFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = SessionFiles::of(&Home::at(dir.path()));
        (dir, files)
    }

    #[test]
    fn a_saved_state_is_private_reloads_and_is_sealed() {
        let (_dir, files) = home();
        let me = SecretKey::generate();
        let bob = SecretKey::generate();
        let mut batch = files.lock(&me).unwrap();
        let body = Body::new(Content::Text("hi".into()));
        batch
            .store
            .seal_to(&me, &bob.public(), &body, SystemTime::now())
            .unwrap();
        batch.save(&me).unwrap();
        let plain = batch.store.encode().unwrap();
        drop(batch);

        let mode = std::fs::metadata(&files.state)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let on_disk = std::fs::read(&files.state).unwrap();
        // The pending init's ephemeral key is in the plain state, not on disk.
        assert!(plain.len() > 64);
        assert!(!on_disk
            .windows(32)
            .any(|w| plain.windows(32).any(|p| p == w)));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");

        let again = files.lock(&me).unwrap();
        assert_eq!(again.store.encode().unwrap().len(), plain.len());
    }

    #[test]
    fn corrupt_foreign_and_open_files_are_refused_with_one_line() {
        let (_dir, files) = home();
        let me = SecretKey::generate();
        files.lock(&me).unwrap().save(&me).unwrap();

        let other = SecretKey::generate();
        let err = files.lock(&other).err().unwrap().to_string();
        assert!(err.contains("another identity key"), "{err}");

        std::fs::set_permissions(&files.state, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = files.lock(&me).err().unwrap().to_string();
        assert!(err.contains("run `chmod 600"), "{err}");
        std::fs::set_permissions(&files.state, std::fs::Permissions::from_mode(0o600)).unwrap();

        let mut bytes = std::fs::read(&files.state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&files.state, &bytes).unwrap();
        let err = files.lock(&me).err().unwrap().to_string();
        assert!(err.contains("is corrupt"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn the_lock_is_exclusive_across_handles() {
        let (_dir, files) = home();
        let me = SecretKey::generate();
        let batch = files.lock(&me).unwrap();
        // Another open file description (as another process would have)
        // cannot take the lock while the batch holds it.
        let other = open_lock(&files.lock).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(batch);
        other.try_lock().unwrap();
    }

    #[test]
    fn the_seen_store_opens_inside_a_batch_and_is_free_after() {
        let (_dir, files) = home();
        let me = SecretKey::generate();
        {
            let batch = files.lock(&me).unwrap();
            let _seen = batch.seen().unwrap();
        }
        let batch = files.lock(&me).unwrap();
        batch.seen().unwrap();
    }
}
