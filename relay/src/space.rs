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
//!
//! The reserve protects the store from a full disk; it does not stop the
//! relay's senders from taking the whole disk down to it, to the cost of
//! everything else on the machine. That is the storage budget's job (a bound on
//! the bytes the relay stores, counted by the store's writer), whose default
//! is a share of this filesystem's size: [`filesystem_size`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Default for the reserve: 64 MiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 << 20;

/// The relay has no room for new data: its disk, or its storage budget, is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutOfSpace {
    /// The filesystem has less free than the reserve (or a write met a full disk).
    #[error("the relay's disk is full ({available} bytes free, {reserve} kept in reserve)")]
    Disk {
        /// Bytes available to the relay when it checked.
        available: u64,
        /// The configured reserve.
        reserve: u64,
    },
    /// The bytes stored (envelopes, file chunks and the reservations of
    /// uploads in progress) have reached the relay-wide storage budget.
    #[error("the relay's storage budget is full ({used} of {budget} bytes in use)")]
    Budget {
        /// Bytes stored or reserved when it checked.
        used: u64,
        /// The configured budget.
        budget: u64,
    },
}

impl OutOfSpace {
    /// What a write that met a full disk reports.
    pub const DISK_FULL: Self = Self::Disk {
        available: 0,
        reserve: 0,
    };
}

/// The size of the filesystem holding `dir`, if it can be read. Blocking
/// (one `statvfs`).
pub fn filesystem_size(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
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
            return Err(OutOfSpace::Disk {
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
        assert!(
            matches!(err, OutOfSpace::Disk { reserve, .. } if reserve == u64::MAX / 2),
            "{err:?}"
        );
        assert!(err.to_string().contains("disk is full"), "{err}");
        assert_eq!(Space::new(dir.path(), 0).check(u64::MAX), Ok(()));
        assert_eq!(Space::new(dir.path(), 1).check(1), Ok(()));
        assert!(filesystem_size(dir.path()).is_some_and(|size| size > 0));
    }

    #[test]
    fn full_disk_errors_are_recognised() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(is_out_of_space(&io::Error::from_raw_os_error(27))); // EFBIG
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(5))); // EIO
    }
}
