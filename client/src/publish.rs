//! Putting a verified file in place, without ever overwriting one.
//!
//! A received file is written to a temporary file beside its target and
//! appears under its name only once it is complete and verified, in one step:
//! a hard link from the temporary file to the name, which the system refuses
//! if the name is taken (by a file, a directory or a dangling symlink). A
//! taken name is retried as `name (1).ext`, `name (2).ext`, ... Unlike a
//! rename, which replaces its target, this never destroys a file that was
//! there, even one created a moment earlier by someone else.
//!
//! On a file system without hard links the name is reserved by creating it
//! exclusively (which also fails if it is taken) and the temporary file is
//! renamed over that empty placeholder, which is ours.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::safe_name::split_extension;

/// How many names are tried before giving up.
pub const MAX_TRIES: u32 = 10_000;

/// The `n`th name tried for `name`: `name` itself, then `stem (n).ext`.
pub fn candidate(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    let (stem, ext) = split_extension(name);
    format!("{stem} ({n}){ext}")
}

/// Moves the complete file `temp` to `dir`/`name`, or the first free
/// `name (N).ext`; returns where it went. `name` must be one plain path
/// component (see [`crate::safe_name`]) and `temp` must be in `dir`.
pub fn publish(temp: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let mut links = true;
    for n in 0..MAX_TRIES {
        let target = dir.join(candidate(name, n));
        let placed = if links {
            match fs::hard_link(temp, &target) {
                Err(e) if links_unsupported(&e) => {
                    links = false;
                    place_by_rename(temp, &target)
                }
                placed => placed.map(|()| true),
            }
        } else {
            place_by_rename(temp, &target)
        };
        match placed {
            Ok(linked) => {
                if linked {
                    fs::remove_file(temp)?;
                }
                sync_dir(dir);
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{MAX_TRIES} files named like {name} exist already"
    )))
}

/// Reserves `target` exclusively, then renames `temp` over the reservation.
/// Returns `Ok(false)`: `temp` is gone (moved).
fn place_by_rename(temp: &Path, target: &Path) -> io::Result<bool> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)?;
    if let Err(e) = fs::rename(temp, target) {
        let _ = fs::remove_file(target);
        return Err(e);
    }
    Ok(false)
}

/// Whether a failed `link` means the file system has no hard links (vfat
/// answers EPERM; some network and FUSE file systems EOPNOTSUPP).
fn links_unsupported(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(95) // EOPNOTSUPP on Linux
}

/// Makes the directory's new entries durable (best effort: not every file
/// system lets a directory be synced).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_number_before_the_extension() {
        assert_eq!(candidate("a.txt", 0), "a.txt");
        assert_eq!(candidate("a.txt", 1), "a (1).txt");
        assert_eq!(candidate("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(candidate(".bashrc", 1), ".bashrc (1)");
        assert_eq!(candidate("noext", 12), "noext (12)");
    }

    fn temp_with(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn a_taken_name_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("a.txt"), b"mine").unwrap();
        fs::create_dir(d.join("a (1).txt")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("a (2).txt")).unwrap();

        let temp = temp_with(d, ".sotto-1.part", b"theirs");
        let placed = publish(&temp, d, "a.txt").unwrap();
        assert_eq!(placed, d.join("a (3).txt"));
        assert_eq!(fs::read(&placed).unwrap(), b"theirs");
        assert_eq!(fs::read(d.join("a.txt")).unwrap(), b"mine");
        assert!(d.join("a (1).txt").is_dir());
        assert!(fs::symlink_metadata(d.join("a (2).txt"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!d.join("nowhere").exists());
        assert!(!temp.exists(), "the temporary file is removed");

        let temp = temp_with(d, ".sotto-2.part", b"again");
        assert_eq!(publish(&temp, d, "a.txt").unwrap(), d.join("a (4).txt"));
        let temp = temp_with(d, ".sotto-3.part", b"new");
        assert_eq!(publish(&temp, d, "b.txt").unwrap(), d.join("b.txt"));
    }

    #[test]
    fn the_rename_fallback_also_refuses_taken_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("x"), b"mine").unwrap();
        let temp = temp_with(d, ".sotto-9.part", b"theirs");
        assert_eq!(
            place_by_rename(&temp, &d.join("x")).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(d.join("x")).unwrap(), b"mine");
        assert!(!place_by_rename(&temp, &d.join("y")).unwrap());
        assert_eq!(fs::read(d.join("y")).unwrap(), b"theirs");
        assert!(!temp.exists());
    }
}
