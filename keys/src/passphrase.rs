//! Passphrases that protect key files.
//!
//! A passphrase is a secret like the key it protects: it is wiped from memory
//! when dropped and cannot be printed (no `Debug`, no `Display`); the only way
//! to see it is [`Passphrase::expose`], which is easy to find in a review.
//! It can come from a prompt (the CLI's business) or from a file, for scripts
//! and tests; that file is read through a small size limit.

use std::fs::File;
use std::io;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::Error;
use crate::fsutil::read_limited;

/// Largest passphrase file accepted, in bytes.
pub const MAX_PASSPHRASE_FILE_LEN: usize = 4096;

/// A non-empty passphrase, zeroized on drop.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase, refusing an empty one.
    pub fn new(passphrase: String) -> Result<Self, Error> {
        let passphrase = Zeroizing::new(passphrase);
        if passphrase.is_empty() {
            return Err(Error::EmptyPassphrase);
        }
        Ok(Self(passphrase))
    }

    /// Reads a passphrase from the first line of a file (at most 4 KiB),
    /// without its line ending (`\n` or `\r\n`).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        if !file
            .metadata()
            .map_err(|e| Error::io(path, e))?
            .file_type()
            .is_file()
        {
            return Err(Error::io(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let bytes = read_limited(file, path, MAX_PASSPHRASE_FILE_LEN)?;
        let line = match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => &bytes[..end],
            None => &bytes[..],
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| Error::PassphraseFile {
            path: path.to_path_buf(),
            reason: "the passphrase is not valid UTF-8 text",
        })?;
        Self::new(text.to_owned())
    }

    /// The passphrase itself, for the key derivation function.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file_content(content: &[u8]) -> Result<Passphrase, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, content).unwrap();
        Passphrase::from_file(&path)
    }

    #[test]
    fn the_first_line_without_its_ending_is_the_passphrase() {
        assert_eq!(from_file_content(b"hunter2\n").unwrap().expose(), "hunter2");
        assert_eq!(
            from_file_content(b"hunter2\r\nx\n").unwrap().expose(),
            "hunter2"
        );
        assert_eq!(
            from_file_content(b"  spaced out ").unwrap().expose(),
            "  spaced out "
        );
    }

    #[test]
    fn empty_invalid_and_oversized_files_are_refused() {
        assert!(matches!(
            Passphrase::new(String::new()),
            Err(Error::EmptyPassphrase)
        ));
        assert!(matches!(
            from_file_content(b"\nsecond"),
            Err(Error::EmptyPassphrase)
        ));
        assert!(matches!(
            from_file_content(b""),
            Err(Error::EmptyPassphrase)
        ));
        assert!(matches!(
            from_file_content(b"\xff\xfe\n"),
            Err(Error::PassphraseFile { .. })
        ));
        assert!(matches!(
            from_file_content(&[b'a'; MAX_PASSPHRASE_FILE_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        assert!(from_file_content(&[b'a'; MAX_PASSPHRASE_FILE_LEN]).is_ok());
    }
}
