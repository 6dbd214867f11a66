//! Keeping a reserve of free disk space, so a full disk is a clean refusal.
//!
//! A write that runs into a full disk half-way is the worst kind of failure:
//! the database may have to be reopened and repaired before it can be read
//! again, which itself needs space. So the relay refuses new data (envelopes,
//! new uploads, upload chunks) while the filesystem of its data dir has less
//! than a configured reserve free. Everything else (reads, deliveries,
//! acknowledgements and deletions, which free space) goes on using the reserve,
//! and writes resume by themselves as soon as space is freed. An `ENOSPC` that
//! gets through anyway (another process filled the disk between the check and
//! the write) is reported the same way by whoever meets it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Default for the reserve: 64 MiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 << 20;

/// The disk is too full to take new data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the relay's disk is full ({available} bytes free, {reserve} kept in reserve)")]
pub struct OutOfSpace {
    /// Bytes available to the relay when it checked.
    pub available: u64,
    /// The configured reserve.
    pub reserve: u64,
}

/// Whether an I/O error means the disk (or the relay's share of it) is full.
pub fn is_out_of_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || e.kind() == io::ErrorKind::FileTooLarge
}

/// The free-space check of one data dir. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Space {
    dir: PathBuf,
    reserve: u64,
    /// Set once a check failed for another reason than space, so that is
    /// logged once, not on every write.
    warned: Arc<AtomicBool>,
}

impl Space {
    /// Checks the filesystem holding `dir`, keeping `reserve` bytes free (0: no check).
    pub fn new(dir: &Path, reserve: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            reserve,
            warned: Arc::default(),
        }
    }

    /// Ok if `need` more bytes can be written while keeping the reserve.
    /// Blocking (one `statvfs`): call it from blocking code.
    pub fn check(&self, need: u64) -> Result<(), OutOfSpace> {
        if self.reserve == 0 {
            return Ok(());
        }
        let available = match rustix::fs::statvfs(&self.dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(e) => {
                // Refusing every write because free space cannot be read
                // would turn a harmless oddity into an outage.
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!("cannot read the free disk space ({e}); not checking it");
                }
                return Ok(());
            }
        };
        if available < self.reserve.saturating_add(need) {
            return Err(OutOfSpace {
                available,
                reserve: self.reserve,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_any_disk_refuses_and_zero_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let huge = Space::new(dir.path(), u64::MAX / 2);
        let err = huge.check(1).unwrap_err();
        assert_eq!(err.reserve, u64::MAX / 2);
        assert!(err.to_string().contains("disk is full"), "{err}");
        assert_eq!(Space::new(dir.path(), 0).check(u64::MAX), Ok(()));
        assert_eq!(Space::new(dir.path(), 1).check(1), Ok(()));
    }

    #[test]
    fn full_disk_errors_are_recognised() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(is_out_of_space(&io::Error::from_raw_os_error(27))); // EFBIG
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(5))); // EIO
    }
}
