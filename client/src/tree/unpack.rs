//! Writing a received tree out, once its whole stream is verified, without
//! ever writing outside the chosen directory or over anything in it.
//!
//! The stream's manifest is checked first ([`super::plan`]): nothing is
//! created for a tree that fails. The tree is then built in a directory of
//! its own beside its target, `DIR/.sotto-<file id>.tree` (0700; one left by
//! an interrupted attempt is removed first), with every directory and file
//! created relative to a descriptor of its parent, never by a path: each
//! directory is made with `mkdirat` and opened with `O_NOFOLLOW |
//! O_DIRECTORY`, each file created with `O_CREAT | O_EXCL | O_NOFOLLOW`
//! (0600). No link is ever followed, one planted in the meantime included,
//! and no file is ever opened twice. Everything is synced, then the finished
//! tree is moved to its name in one step that refuses a taken name
//! (`renameat2` with `RENAME_NOREPLACE`); a taken name is tried again as
//! `name (1)`, `name (2)`, ... Where that call is not supported the name is
//! reserved by creating an empty directory under it, which the move then
//! replaces.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use sotto_crypto::file::FileId;

use super::plan::{read_plan, Plan};
use super::EntryKind;
use crate::publish::MAX_TRIES;
use crate::safe_name::TEMP_PREFIX;

/// Why a tree was not put in place.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The sender's manifest is refused; nothing of the tree was written.
    #[error("{0}")]
    Refused(String),
    /// The local disk failed; nothing of the tree is left under its name.
    #[error("cannot write {}: {}", path.display(), crate::relay_client::describe_io(source))]
    Disk {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The directory a tree is built in before it is put in place.
pub fn staging_path(dir: &Path, file_id: FileId) -> PathBuf {
    dir.join(format!("{TEMP_PREFIX}{file_id}.tree"))
}

/// The `n`th name tried for a directory: `name`, then `name (n)`.
pub fn candidate(name: &str, n: u32) -> String {
    if n == 0 {
        name.to_owned()
    } else {
        format!("{name} ({n})")
    }
}

/// Unpacks the verified stream `part` (of `size` bytes) of the tree
/// `file_id` into `dir` under `name` (one plain component) or the first
/// free `name (N)`; returns where it went.
pub fn unpack(
    part: &Path,
    dir: &Path,
    file_id: FileId,
    name: &str,
    size: u64,
) -> Result<PathBuf, UnpackError> {
    let disk = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| UnpackError::Disk { path, source }
    };
    let plain = {
        let mut c = Path::new(name).components();
        matches!(
            (c.next(), c.next()),
            (Some(std::path::Component::Normal(_)), None)
        )
    };
    if !plain {
        return Err(UnpackError::Refused(
            "its name is not one plain name".into(),
        ));
    }
    let mut stream = BufReader::with_capacity(1 << 20, File::open(part).map_err(disk(part))?);
    let plan = read_plan(&mut stream, size).map_err(|r| UnpackError::Refused(r.0))?;
    let staging = staging_path(dir, file_id);
    remove_leftover(&staging).map_err(disk(&staging))?;
    fs::DirBuilder::new()
        .mode_private()
        .create(&staging)
        .map_err(disk(&staging))?;
    let built = build(&staging, &plan, &mut stream);
    let placed = built.and_then(|()| place(&staging, dir, name));
    if placed.is_err() {
        if let Err(e) = remove_leftover(&staging) {
            tracing::warn!(path = %staging.display(), "cannot remove a partly unpacked tree: {e}");
        }
    }
    placed
}

trait Private {
    fn mode_private(&mut self) -> &mut Self;
}

impl Private for fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

/// Removes what an interrupted attempt left at `staging`, without following
/// a link there (a link is removed, not what it points to).
fn remove_leftover(staging: &Path) -> io::Result<()> {
    match fs::symlink_metadata(staging) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(staging),
        Ok(_) => fs::remove_file(staging),
    }
}

/// Creates every entry of `plan` under `staging`, contents from `stream`.
fn build(staging: &Path, plan: &Plan, stream: &mut impl Read) -> Result<(), UnpackError> {
    let disk = |path: PathBuf| {
        move |e: rustix::io::Errno| UnpackError::Disk {
            path,
            source: e.into(),
        }
    };
    let root = rustix::fs::open(
        staging,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(disk(staging.to_path_buf()))?;
    for dir in &plan.dirs {
        let (parent, last) = open_parent(&root, staging, dir)?;
        rustix::fs::mkdirat(&parent, last.as_str(), Mode::from_raw_mode(0o700))
            .map_err(disk(join(staging, dir)))?;
    }
    let mut buf = vec![0u8; 1 << 16];
    for entry in &plan.entries {
        let EntryKind::File { size } = entry.kind else {
            continue;
        };
        let path = join(staging, &entry.path);
        let (parent, last) = open_parent(&root, staging, &entry.path)?;
        let fd = rustix::fs::openat(
            &parent,
            last.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(disk(path.clone()))?;
        let mut file = File::from(fd);
        copy_exact(stream, &mut file, size, &mut buf, &path)?;
        file.sync_all().map_err(|source| UnpackError::Disk {
            path: path.clone(),
            source,
        })?;
    }
    let mut one = [0u8; 1];
    match stream.read(&mut one) {
        Ok(0) => {}
        Ok(_) => {
            return Err(UnpackError::Refused(
                "it holds more than its manifest lists".into(),
            ))
        }
        Err(source) => {
            return Err(UnpackError::Disk {
                path: staging.to_path_buf(),
                source,
            })
        }
    }
    // Children before parents, so each directory is synced with its entries.
    for dir in plan.dirs.iter().rev() {
        let fd = open_dir(&root, dir).map_err(disk(join(staging, dir)))?;
        rustix::fs::fsync(&fd).map_err(disk(join(staging, dir)))?;
    }
    rustix::fs::fsync(&root).map_err(disk(staging.to_path_buf()))
}

fn copy_exact(
    stream: &mut impl Read,
    file: &mut File,
    size: u64,
    buf: &mut [u8],
    path: &Path,
) -> Result<(), UnpackError> {
    use std::io::Write;
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = stream
            .read(&mut buf[..want])
            .map_err(|source| UnpackError::Disk {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            return Err(UnpackError::Refused("it ends before its last file".into()));
        }
        file.write_all(&buf[..n])
            .map_err(|source| UnpackError::Disk {
                path: path.to_path_buf(),
                source,
            })?;
        left -= n as u64;
    }
    Ok(())
}

/// The directory `path` below `root`, opened component by component, none
/// of them followed if it is a link.
fn open_dir(root: &OwnedFd, path: &[String]) -> rustix::io::Result<OwnedFd> {
    let mut fd = rustix::fs::openat(
        root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for component in path {
        fd = rustix::fs::openat(
            &fd,
            component.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
    }
    Ok(fd)
}

/// The parent directory of `path` below `root`, and its last component.
fn open_parent<'a>(
    root: &OwnedFd,
    staging: &Path,
    path: &'a [String],
) -> Result<(OwnedFd, &'a String), UnpackError> {
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| UnpackError::Refused("an entry has an empty path".into()))?;
    let fd = open_dir(root, parents).map_err(|e| UnpackError::Disk {
        path: join(staging, parents),
        source: e.into(),
    })?;
    Ok((fd, last))
}

fn join(base: &Path, path: &[String]) -> PathBuf {
    path.iter().fold(base.to_path_buf(), |p, c| p.join(c))
}

/// Moves the finished tree `staging` to `dir`/`name`, or the first free
/// `name (N)`.
fn place(staging: &Path, dir: &Path, name: &str) -> Result<PathBuf, UnpackError> {
    for n in 0..MAX_TRIES {
        let target = dir.join(candidate(name, n));
        match move_no_replace(staging, &target) {
            Ok(()) => {
                crate::publish::sync_dir(dir);
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // A directory there (ours or not) that is not empty.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) => {
                continue
            }
            Err(source) => {
                return Err(UnpackError::Disk {
                    path: target,
                    source,
                })
            }
        }
    }
    Err(UnpackError::Disk {
        path: dir.join(name),
        source: io::Error::other(format!(
            "{MAX_TRIES} entries named like {name} exist already"
        )),
    })
}

/// Renames `from` to `to`, failing if `to` exists in any form.
fn move_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
    {
        use rustix::fs::{RenameFlags, CWD};
        match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Reserve the name: creating a directory fails if anything (even a
    // dangling link) is there; a rename replaces only an empty directory.
    fs::DirBuilder::new().mode_private().create(to)?;
    if let Err(e) = fs::rename(from, to) {
        let _ = fs::remove_dir(to);
        return Err(e);
    }
    Ok(())
}
