//! The sotto home: the one directory that holds a user's identity and state.
//!
//! `$SOTTO_HOME` (or `--home`) when set, so tests and people with several
//! identities can keep them apart; else `sotto` in the platform's config
//! directory. The directory holds the secret key, so it is created private
//! (0700); the key file itself is also 0600 and checked on every load.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// Name of the environment variable that selects the home.
pub const HOME_ENV: &str = "SOTTO_HOME";

/// The files of a home.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The home at `dir` (as given by `--home` / `$SOTTO_HOME`), else the
    /// platform default.
    pub fn resolve(dir: Option<PathBuf>) -> Result<Self> {
        let dir = match dir {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => dirs::config_dir()
                .map(|d| d.join("sotto"))
                .ok_or_else(|| {
                    anyhow!("cannot find a config directory for this user; set {HOME_ENV} to a directory for sotto's files")
                })?,
        };
        Ok(Self { dir })
    }

    /// A home at exactly `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The secret key: the identity.
    pub fn identity(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    /// Name and relay settings.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// My mailbox's delivery token (see [`crate::delivery_token`]).
    pub fn delivery_token(&self) -> PathBuf {
        self.dir.join("delivery.token")
    }

    /// The contact book.
    pub fn contacts(&self) -> PathBuf {
        self.dir.join("contacts.toml")
    }

    /// Ids of messages already shown, for duplicate suppression.
    pub fn seen(&self) -> PathBuf {
        self.dir.join("seen.redb")
    }

    /// Forward-secret session state, sealed with the identity (see
    /// [`crate::sessions`]).
    pub fn sessions(&self) -> PathBuf {
        self.dir.join("sessions.sealed")
    }

    /// The lock every load-modify-save of the session state holds.
    pub fn sessions_lock(&self) -> PathBuf {
        self.dir.join("sessions.lock")
    }

    /// Offers of files not yet received, sealed (see [`crate::offers`]).
    pub fn offers(&self) -> PathBuf {
        self.dir.join("offers.sealed")
    }

    /// Whom I told where to reach me, and what contacts told me (see
    /// [`crate::reach`]).
    pub fn reach(&self) -> PathBuf {
        self.dir.join("reach.sealed")
    }

    /// Envelopes sealed but not yet stored by their relay (see
    /// [`crate::undelivered`]).
    pub fn undelivered(&self) -> PathBuf {
        self.dir.join("undelivered.sealed")
    }

    /// Messages sent and received, sealed with the identity, for `sotto
    /// history` (see [`crate::history`]).
    pub fn history(&self) -> PathBuf {
        self.dir.join("history.sealed")
    }

    /// The lock every reader and writer of the history holds.
    pub fn history_lock(&self) -> PathBuf {
        self.dir.join("history.lock")
    }

    /// The plaintext history of older versions, sealed and removed on first use.
    pub fn history_plaintext(&self) -> PathBuf {
        self.dir.join("history.log")
    }

    /// Resume states of interrupted uploads (see [`crate::upload_state`]).
    pub fn uploads(&self) -> PathBuf {
        self.dir.join("uploads")
    }

    /// Creates the directory (and missing parents) if needed; a directory
    /// created here is private to the user.
    pub fn ensure_dir(&self) -> Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create the sotto home {}", self.dir.display()))
    }

    /// Whether an identity exists here.
    pub fn has_identity(&self) -> bool {
        self.identity().exists()
    }

    /// Fails with the standard hint unless an identity exists here.
    pub fn require_identity(&self) -> Result<()> {
        if self.has_identity() {
            Ok(())
        } else {
            Err(anyhow!(
                "no identity in {}: run `sotto init` first",
                self.dir.display()
            ))
        }
    }
}

/// `path` with a leading `~` (alone, or before `/`) read as the user's home
/// directory, as a shell would: paths typed in the chat, or quoted past the
/// shell, mean what they say. Anything else, `~user` included, is as given.
pub fn expand_tilde(path: &Path) -> PathBuf {
    let Some(text) = path.to_str() else {
        return path.to_path_buf();
    };
    let rest = match text.strip_prefix('~') {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => return path.to_path_buf(),
    };
    match dirs::home_dir() {
        Some(home) if rest.is_empty() => home,
        Some(home) => home.join(rest),
        None => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        let Some(home) = dirs::home_dir() else { return };
        assert_eq!(expand_tilde(Path::new("~")), home);
        assert_eq!(
            expand_tilde(Path::new("~/Downloads/x")),
            home.join("Downloads/x")
        );
        assert_eq!(expand_tilde(Path::new("~bob/x")), Path::new("~bob/x"));
        assert_eq!(expand_tilde(Path::new("a/~/b")), Path::new("a/~/b"));
        assert_eq!(expand_tilde(Path::new("/abs")), Path::new("/abs"));
    }
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_created_home_is_private_and_names_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("a/b"));
        home.ensure_dir().unwrap();
        let mode = std::fs::metadata(home.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(home.identity(), tmp.path().join("a/b/identity.key"));
        assert!(!home.has_identity());
        let err = home.require_identity().unwrap_err().to_string();
        assert!(err.starts_with("no identity in "), "{err}");
        assert!(err.ends_with(": run `sotto init` first"), "{err}");
    }
}
