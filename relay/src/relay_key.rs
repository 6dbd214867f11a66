//! The relay's own keypair, generated on first start.
//!
//! The relay must start unattended, so its key file is never passphrase
//! protected; its secrecy rests on the file mode (0600) and the data dir (0700).

use std::path::{Path, PathBuf};

use sotto_keys::{keyfile, SecretKey};

/// File name of the relay key inside the data dir.
pub const KEY_FILE: &str = "relay.key";

/// A relay key that could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum RelayKeyError {
    /// The key file or the data dir failed.
    #[error(transparent)]
    Keys(#[from] sotto_keys::Error),
    /// The data dir could not be created.
    #[error("cannot create the data dir {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `sotto-relay key` on a data dir that holds no key: nothing is
    /// created, since a new key there would not be the running relay's.
    #[error("no relay key in {}: this is not the data dir of a relay that has run; start the relay once (`sotto-relay --data {}`) or point at its data dir with `sotto-relay key --data DIR`", dir.display(), dir.display())]
    NoKey {
        /// The data dir looked in.
        dir: PathBuf,
    },
    /// Somebody protected the relay key with a passphrase.
    #[error("{} is passphrase-protected; the relay needs an unencrypted key file (mode 0600)", path.display())]
    Encrypted {
        /// The key file.
        path: PathBuf,
    },
}

/// Path of the key file in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Loads the relay key, generating and storing one (0600) on first use.
/// The flag tells whether it was just created.
pub fn load_or_create(data_dir: &Path) -> Result<(SecretKey, bool), RelayKeyError> {
    create_dir_private(data_dir)?;
    let path = path(data_dir);
    if path.exists() {
        if keyfile::is_encrypted(&path)? {
            return Err(RelayKeyError::Encrypted { path });
        }
        let key = keyfile::load(&path, || Err(sotto_keys::Error::EmptyPassphrase))?;
        return Ok((key, false));
    }
    let key = SecretKey::generate();
    keyfile::write_new(&path, &key, None)?;
    Ok((key, true))
}

/// Loads the relay key of `data_dir`, creating nothing: for printing the
/// key of a relay that has run (`sotto-relay key`), where generating one
/// would silently print a key no relay proves.
pub fn load_existing(data_dir: &Path) -> Result<SecretKey, RelayKeyError> {
    let path = path(data_dir);
    if !path.exists() {
        return Err(RelayKeyError::NoKey {
            dir: data_dir.to_owned(),
        });
    }
    if keyfile::is_encrypted(&path)? {
        return Err(RelayKeyError::Encrypted { path });
    }
    Ok(keyfile::load(&path, || {
        Err(sotto_keys::Error::EmptyPassphrase)
    })?)
}

/// Creates the data dir, readable by its owner only.
pub fn create_dir_private(dir: &Path) -> Result<(), RelayKeyError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| RelayKeyError::DataDir {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_the_key_of_an_empty_dir_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sotto-relay-data");
        let err = load_existing(&data).err().unwrap().to_string();
        assert!(err.starts_with("no relay key in "), "{err}");
        assert!(err.contains("sotto-relay key --data DIR"), "{err}");
        assert!(!data.exists(), "nothing was created");
        let (made, _) = load_or_create(&data).unwrap();
        let loaded = load_existing(&data).ok().unwrap();
        assert_eq!(loaded.public(), made.public());
    }

    #[test]
    fn first_start_creates_a_private_key_and_later_starts_reuse_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (a, created) = load_or_create(&data).unwrap();
        assert!(created);
        let mode = std::fs::metadata(path(&data)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = load_or_create(&data).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
    }
}
