//! File helpers shared by the key file, passphrase file and contacts file.
//!
//! They exist so every file this crate reads goes through a size limit (a
//! hostile or mistaken path such as `/dev/zero` must not fill memory), secrets
//! read from disk land only in buffers that are wiped, and every file this crate
//! writes is private (0600) and durable (fsynced, parent directory included).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::error::Error;

/// Reads all of `file` into a buffer that is zeroized on drop, refusing files
/// larger than `limit` bytes.
///
/// The buffer is allocated once at `limit + 1` bytes and never grows, so no
/// stray copy of the content is left behind by a reallocation.
pub(crate) fn read_limited(
    mut file: File,
    path: &Path,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut buf = Zeroizing::new(vec![0u8; limit + 1]);
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len > limit {
                    return Err(Error::TooLarge {
                        path: path.to_path_buf(),
                        limit: limit as u64,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Makes a rename or creation in `path`'s directory durable.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), Error> {
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `path` (which must not exist) with mode 0600, writes `bytes`,
/// fsyncs it and its directory. A partly written file is removed.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                Error::io(path, e)
            }
        })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // We created this file a moment ago: removing it lets a retry succeed.
        let _ = std::fs::remove_file(path);
        return Err(Error::io(path, e));
    }
    sync_parent_dir(path)
}

/// Replaces `path` with `bytes` atomically: a private temporary file in the
/// same directory is written, fsynced and renamed over `path`, so a reader sees
/// the old content or the new, never a mix, even after a crash.
pub(crate) fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", OsRng.next_u64()));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_parent_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limited_accepts_the_limit_and_refuses_one_more_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).unwrap();
        let got = read_limited(File::open(&path).unwrap(), &path, 10).unwrap();
        assert_eq!(&got[..], &[7u8; 10]);
        let err = read_limited(File::open(&path).unwrap(), &path, 9).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 9, .. }), "{err}");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "old").unwrap();
        write_atomic_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
