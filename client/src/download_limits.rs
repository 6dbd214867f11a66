//! Whether an offered file may be downloaded: its size against the client's
//! `max_download_size`, and what is left to fetch against the free space of
//! the directory it goes to.
//!
//! The size of a file is chosen by its sender (a contact, or a stranger: both
//! are received) and the format allows up to 2^48 bytes. Without a bound, one
//! offer could make `receive-all` fill the disk, and a full disk breaks far
//! more than sotto. So an offer above the limit is refused before a byte is
//! asked for, and a download starts (or resumes) only if the rest of it fits
//! with [`FREE_SPACE_MARGIN`] to spare. Either refusal leaves the offer on the
//! relay: it can be received once the limit is raised or space is freed.
//!
//! Several files may download at once and each is checked on its own, so
//! together they can still run into a full disk; that write then fails like
//! any disk error and keeps what was received for a resume.

use std::io;
use std::path::Path;
use std::sync::Arc;

use sotto_crypto::file::FileOffer;

use crate::config::Config;
use crate::download::DownloadError;

/// Free space left over once a download is in place: room for the rest of
/// the system (and sotto's own small files) to go on writing.
pub const FREE_SPACE_MARGIN: u64 = 64 << 20;

/// How free space is found: `statvfs` outside tests.
type FreeSpace = dyn Fn(&Path) -> io::Result<u64> + Send + Sync;

/// The checks made before a download.
#[derive(Clone)]
pub struct DownloadLimits {
    max_size: u64,
    free_space: Arc<FreeSpace>,
}

impl std::fmt::Debug for DownloadLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadLimits")
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

impl DownloadLimits {
    /// Files of at most `max_size` bytes, checked against the real free space.
    pub fn new(max_size: u64) -> Self {
        Self::with_free_space(max_size, statvfs_free)
    }

    /// The limits `config.toml` sets.
    pub fn from_config(config: &Config) -> Self {
        Self::new(config.max_download_size())
    }

    /// Limits that learn the free space of a directory from `free_space`.
    pub fn with_free_space(
        max_size: u64,
        free_space: impl Fn(&Path) -> io::Result<u64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            max_size,
            free_space: Arc::new(free_space),
        }
    }

    /// Refuses an offer larger than the limit.
    pub fn check_size(&self, offer: &FileOffer) -> Result<(), DownloadError> {
        if offer.size > self.max_size {
            return Err(DownloadError::TooLarge {
                size: offer.size,
                limit: self.max_size,
            });
        }
        Ok(())
    }

    /// Refuses a download whose `remaining` bytes do not fit in `dir` with
    /// the margin to spare. Blocking (one `statvfs`): call it from blocking
    /// code. Free space that cannot be read is not a reason to refuse.
    pub fn check_space(&self, dir: &Path, remaining: u64) -> Result<(), DownloadError> {
        let free = match (self.free_space)(dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot read the free disk space ({e}); not checking it");
                return Ok(());
            }
        };
        if free < remaining.saturating_add(FREE_SPACE_MARGIN) {
            return Err(DownloadError::NoSpace {
                dir: dir.to_path_buf(),
                need: remaining,
                free,
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged user may still write on the file system of `dir`.
fn statvfs_free(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_crypto::file::{FileId, FileKey};

    fn offer(size: u64) -> FileOffer {
        FileOffer {
            file_id: FileId::random(),
            name: "f".into(),
            size,
            hash: [0; 32],
            key: FileKey::generate(),
        }
    }

    #[test]
    fn an_offer_above_the_limit_is_refused_naming_size_and_setting() {
        let limits = DownloadLimits::new(1000);
        assert!(limits.check_size(&offer(1000)).is_ok());
        let err = limits.check_size(&offer(1001)).unwrap_err().to_string();
        assert!(err.contains("1001 bytes"), "{err}");
        assert!(err.contains("max_download_size (1000 bytes"), "{err}");
        assert!(err.contains("stays on the relay"), "{err}");
        assert!(!err.contains('\n'));
        // The default admits what a relay on its defaults accepts, not what
        // the format allows.
        let default = DownloadLimits::from_config(&Config::default());
        assert!(default.check_size(&offer(8 << 30)).is_ok());
        assert!(default.check_size(&offer(1 << 48)).is_err());
    }

    #[test]
    fn the_rest_of_a_file_must_fit_with_the_margin_to_spare() {
        let dir = Path::new("/downloads");
        let limits = DownloadLimits::with_free_space(u64::MAX, |d| {
            assert_eq!(d, Path::new("/downloads"));
            Ok(FREE_SPACE_MARGIN + 500)
        });
        assert!(limits.check_space(dir, 500).is_ok());
        let err = limits.check_space(dir, 501).unwrap_err();
        assert!(
            matches!(err, DownloadError::NoSpace { need: 501, .. }),
            "{err}"
        );
        let err = err.to_string();
        assert!(err.contains("/downloads"), "{err}");
        assert!(err.contains("stays on the relay"), "{err}");

        let unknown = DownloadLimits::with_free_space(u64::MAX, |_| Err(io::Error::other("no")));
        assert!(unknown.check_space(dir, u64::MAX).is_ok());
        // The real statvfs answers for a real directory.
        assert!(statvfs_free(Path::new(".")).is_ok());
    }
}
