//! The sender's side: a directory walked into a manifest, without following
//! a single link.
//!
//! Entries are listed in a fixed order (names sorted byte-wise, depth first),
//! so the same unchanged tree gives the same stream and an interrupted upload
//! of it can resume. A symbolic link is skipped, never followed (it could
//! lead anywhere, the tree itself included), and so is anything that is
//! neither a file nor a directory, and a name that is not UTF-8 (the
//! manifest carries text); each is reported through `skipped`. A tree with
//! more than [`MAX_ENTRIES`] entries or deeper than [`MAX_DEPTH`] is refused
//! before anything is sent, as the receiver would refuse it.
//!
//! The tree's fingerprint, which tells whether it changed since an upload
//! began, is a hash of the manifest and of every file's size, modification
//! time, device and inode, folded into the [`Fingerprint`] a resume state
//! keeps.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sotto_crypto::file::ContentHash;

use super::{encode_header, Entry, EntryKind, MAX_DEPTH, MAX_ENTRIES};
use crate::upload_state::Fingerprint;

/// A directory as it was when it was looked at.
#[derive(Debug, Clone)]
pub struct LocalTree {
    /// The stream's header (magic, manifest, padding).
    pub header: Vec<u8>,
    /// The files whose contents follow, in order.
    pub files: Vec<LocalFile>,
    /// How many entries (files and directories) it has.
    pub entries: usize,
}

/// One file of a tree.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its fingerprint when the tree was looked at.
    pub fingerprint: Fingerprint,
}

/// Why a tree cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A directory could not be read.
    #[error("cannot read {}: {}", path.display(), crate::relay_client::describe_io(source))]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Too many entries.
    #[error("{} has more than {MAX_ENTRIES} files and directories; sotto sends at most that many in one tree", .0.display())]
    TooMany(PathBuf),
    /// Too deep.
    #[error("{} goes deeper than {MAX_DEPTH} directories; sotto sends trees at most that deep", .0.display())]
    TooDeep(PathBuf),
    /// The manifest would not fit the format.
    #[error("the names in {} are too long together to send as one tree", .0.display())]
    ManifestTooLong(PathBuf),
}

impl LocalTree {
    /// Walks `root`; reports what is skipped through `skipped` (a line each).
    pub fn scan(root: &Path, skipped: &mut dyn FnMut(String)) -> Result<Self, ScanError> {
        let mut entries = Vec::new();
        let mut files = Vec::new();
        walk(
            root,
            root,
            &mut Vec::new(),
            &mut entries,
            &mut files,
            skipped,
        )?;
        let header = encode_header(&entries).ok_or(ScanError::ManifestTooLong(root.into()))?;
        Ok(Self {
            header,
            files,
            entries: entries.len(),
        })
    }

    /// Bytes in the stream: header and every file.
    pub fn size(&self) -> u64 {
        self.files.iter().fold(self.header.len() as u64, |sum, f| {
            sum.saturating_add(f.fingerprint.size)
        })
    }

    /// The fingerprint a resume state keeps for the tree: its size, the top
    /// directory's modification time and, where a file's inode goes, 128
    /// bits of a hash of the manifest and every file's fingerprint.
    pub fn fingerprint(&self, root: &fs::Metadata) -> Fingerprint {
        let mut h = ContentHash::new();
        h.update(b"sotto tree fingerprint v1\0");
        h.update(&self.header);
        for f in &self.files {
            let fp = &f.fingerprint;
            for n in [
                fp.size,
                fp.mtime.0 as u64,
                fp.mtime.1 as u64,
                fp.inode.0,
                fp.inode.1,
            ] {
                h.update(&n.to_le_bytes());
            }
        }
        let d = h.finish();
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Fingerprint {
            size: self.size(),
            mtime: (root.mtime(), root.mtime_nsec()),
            inode: (word(0), word(8)),
        }
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    at: &mut Vec<String>,
    entries: &mut Vec<Entry>,
    files: &mut Vec<LocalFile>,
    skipped: &mut dyn FnMut(String),
) -> Result<(), ScanError> {
    let read_error = |source| ScanError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut children = fs::read_dir(dir)
        .map_err(read_error)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    children.sort();
    for name in children {
        let path = dir.join(&name);
        let shown = || {
            crate::display::sanitize(
                &path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            )
        };
        let Some(text) = name.to_str() else {
            skipped(format!("skipped {}: its name is not UTF-8", shown()));
            continue;
        };
        let meta = fs::symlink_metadata(&path).map_err(|source| ScanError::Read {
            path: path.clone(),
            source,
        })?;
        let kind = if meta.file_type().is_symlink() {
            skipped(format!(
                "skipped {}: a symbolic link (links are not followed)",
                shown()
            ));
            continue;
        } else if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File { size: meta.len() }
        } else {
            skipped(format!("skipped {}: not a regular file", shown()));
            continue;
        };
        if entries.len() >= MAX_ENTRIES {
            return Err(ScanError::TooMany(root.into()));
        }
        at.push(text.to_owned());
        if at.len() > MAX_DEPTH {
            return Err(ScanError::TooDeep(root.into()));
        }
        entries.push(Entry {
            path: at.clone(),
            kind,
        });
        match kind {
            EntryKind::Dir => walk(root, &path, at, entries, files, skipped)?,
            EntryKind::File { .. } => files.push(LocalFile {
                path,
                fingerprint: Fingerprint::of(&meta),
            }),
        }
        at.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::plan::read_plan;

    #[test]
    fn a_tree_is_listed_in_order_without_its_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("photos");
        fs::create_dir_all(root.join("b/deep")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("b/deep/x.jpg"), b"xx").unwrap();
        fs::write(root.join("a.txt"), b"a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("b/loop")).unwrap();
        let mut skipped = Vec::new();
        let tree = LocalTree::scan(&root, &mut |s| skipped.push(s)).unwrap();
        assert_eq!(
            skipped,
            [
                "skipped b/loop: a symbolic link (links are not followed)",
                "skipped link: a symbolic link (links are not followed)",
            ]
        );
        assert_eq!(tree.entries, 5);
        let files: Vec<_> = tree.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(files, [root.join("a.txt"), root.join("b/deep/x.jpg")]);
        assert_eq!(tree.size(), tree.header.len() as u64 + 3);
        let plan = read_plan(&mut tree.header.as_slice(), tree.size()).unwrap();
        let paths: Vec<String> = plan.entries.iter().map(|e| e.path.join("/")).collect();
        assert_eq!(paths, ["a.txt", "b", "b/deep", "b/deep/x.jpg", "empty"]);
    }

    #[test]
    fn a_changed_tree_has_another_fingerprint() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("f"), b"one").unwrap();
        let fp = |_: ()| {
            let tree = LocalTree::scan(root, &mut |_| {}).unwrap();
            tree.fingerprint(&fs::metadata(root).unwrap())
        };
        let first = fp(());
        assert_eq!(first, fp(()));
        fs::write(root.join("f"), b"two").unwrap();
        let same_size = fp(());
        assert_ne!(first, same_size);
        fs::create_dir(root.join("new")).unwrap();
        assert_ne!(same_size, fp(()));
    }

    #[test]
    fn too_deep_a_tree_is_refused_before_sending() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().to_path_buf();
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let err = LocalTree::scan(tmp.path(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, ScanError::TooDeep(_)), "{err}");
    }
}
