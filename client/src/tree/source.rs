//! The stream of a tree read from its files as it is uploaded: the header,
//! then each file's bytes, one file open at a time.
//!
//! Every file is opened without following a link and checked against the
//! fingerprint it had when the tree was looked at; once its bytes are read,
//! it must end there and still have that fingerprint. So the stream the
//! relay completes is exactly the tree that was scanned (and that its
//! resume state describes), or the upload fails with "changed".

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::scan::{LocalFile, LocalTree};
use crate::upload::{Plaintext, UploadError};
use crate::upload_state::Fingerprint;

/// A tree's stream, read in order.
pub struct TreeSource {
    root: PathBuf,
    header: Vec<u8>,
    at: usize,
    files: std::vec::IntoIter<LocalFile>,
    current: Option<OpenFile>,
}

struct OpenFile {
    file: File,
    left: u64,
    info: LocalFile,
}

impl TreeSource {
    /// The stream of `tree`, scanned from `root`; nothing is opened yet.
    pub fn new(root: PathBuf, tree: &LocalTree) -> Self {
        Self {
            root,
            header: tree.header.clone(),
            at: 0,
            files: tree.files.clone().into_iter(),
            current: None,
        }
    }

    /// Finishes files whose bytes are all read and opens the next, until
    /// one has bytes left or none is left.
    fn advance(&mut self) -> Result<(), UploadError> {
        loop {
            match &mut self.current {
                Some(open) if open.left > 0 => return Ok(()),
                Some(open) => {
                    check_end(&mut open.file, &open.info)?;
                    self.current = None;
                }
                None => match self.files.next() {
                    None => return Ok(()),
                    Some(info) => {
                        let file = open_no_follow(&info)?;
                        self.current = Some(OpenFile {
                            file,
                            left: info.fingerprint.size,
                            info,
                        });
                    }
                },
            }
        }
    }
}

impl Plaintext for TreeSource {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), UploadError> {
        let mut filled = 0;
        if self.at < self.header.len() {
            let n = (self.header.len() - self.at).min(buf.len());
            buf[..n].copy_from_slice(&self.header[self.at..self.at + n]);
            self.at += n;
            filled = n;
            if filled == buf.len() {
                return Ok(());
            }
        }
        while filled < buf.len() {
            self.advance()?;
            let Some(open) = &mut self.current else {
                return Err(UploadError::Changed(self.root.clone()));
            };
            let want = (buf.len() - filled).min(usize::try_from(open.left).unwrap_or(usize::MAX));
            let n = open
                .file
                .read(&mut buf[filled..filled + want])
                .map_err(|source| UploadError::Read {
                    path: open.info.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(UploadError::Changed(open.info.path.clone()));
            }
            open.left -= n as u64;
            filled += n;
        }
        // A file whose last byte was just read is checked now, before the
        // chunk holding that byte can leave.
        self.advance()
    }

    fn check_end(&mut self) -> Result<(), UploadError> {
        self.advance()?;
        if self.at < self.header.len() || self.current.is_some() {
            return Err(UploadError::Changed(self.root.clone()));
        }
        Ok(())
    }
}

fn open_no_follow(info: &LocalFile) -> Result<File, UploadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&info.path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => UploadError::Changed(info.path.clone()),
            // ELOOP: a link now stands where the file was.
            _ if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                UploadError::Changed(info.path.clone())
            }
            _ => UploadError::Read {
                path: info.path.clone(),
                source: e,
            },
        })?;
    let meta = file.metadata().map_err(|source| UploadError::Read {
        path: info.path.clone(),
        source,
    })?;
    if Fingerprint::of(&meta) != info.fingerprint {
        return Err(UploadError::Changed(info.path.clone()));
    }
    Ok(file)
}

/// The file ends where its size said, and its metadata is as it was.
fn check_end(file: &mut File, info: &LocalFile) -> Result<(), UploadError> {
    let mut one = [0u8; 1];
    let more = file.read(&mut one).map_err(|source| UploadError::Read {
        path: info.path.clone(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| UploadError::Read {
        path: info.path.clone(),
        source,
    })?;
    if more != 0 || Fingerprint::of(&meta) != info.fingerprint {
        return Err(UploadError::Changed(info.path.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn read_all(src: &mut TreeSource, size: u64, step: usize) -> Result<Vec<u8>, UploadError> {
        let mut out = Vec::new();
        let mut left = size as usize;
        while left > 0 {
            let n = step.min(left);
            let mut buf = vec![0u8; n];
            src.fill(&mut buf)?;
            out.extend_from_slice(&buf);
            left -= n;
        }
        src.check_end()?;
        Ok(out)
    }

    #[test]
    fn the_stream_is_the_header_then_each_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        fs::write(root.join("a"), b"hello").unwrap();
        fs::write(root.join("b"), b"").unwrap();
        fs::write(root.join("c"), b"world").unwrap();
        let tree = LocalTree::scan(&root, &mut |_| {}).unwrap();
        for step in [1, 7, 4096, 1 << 20] {
            let mut src = TreeSource::new(root.clone(), &tree);
            let got = read_all(&mut src, tree.size(), step).unwrap();
            let mut want = tree.header.clone();
            want.extend_from_slice(b"helloworld");
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn a_file_that_changed_or_became_a_link_stops_the_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        fs::write(root.join("a"), b"hello").unwrap();
        fs::write(root.join("b"), b"world").unwrap();
        let tree = LocalTree::scan(&root, &mut |_| {}).unwrap();

        fs::write(root.join("b"), b"worlds").unwrap();
        let mut src = TreeSource::new(root.clone(), &tree);
        let err = read_all(&mut src, tree.size(), 4096).unwrap_err();
        assert!(
            matches!(&err, UploadError::Changed(p) if p.ends_with("b")),
            "{err}"
        );

        fs::remove_file(root.join("b")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("b")).unwrap();
        let mut src = TreeSource::new(root.clone(), &tree);
        let err = read_all(&mut src, tree.size(), 4096).unwrap_err();
        assert!(
            matches!(&err, UploadError::Changed(p) if p.ends_with("b")),
            "{err}"
        );
    }
}
