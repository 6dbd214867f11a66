//! Errors of the keys crate.
//!
//! No variant ever carries secret material; a bad line in a file is reported by
//! its file and number, never echoed.

use std::path::PathBuf;

/// A key string (`sotto1...`, `sottorelay1...`) that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStringError {
    /// The string does not start with the expected prefix.
    #[error("not a sotto key: it should start with `{expected}1`")]
    Prefix {
        /// The expected human-readable prefix.
        expected: &'static str,
    },
    /// A relay key given where a contact key belongs, or the reverse.
    #[error("this is a {got}, not a {expected}")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
        /// What was given.
        got: &'static str,
    },
    /// The checksum does not match: most likely a typo.
    #[error("the key's checksum does not match (a typo or a truncated copy?)")]
    Checksum,
    /// The key decodes to the wrong number of bytes.
    #[error("a key is 32 bytes, this one decodes to {got}")]
    Length {
        /// Decoded length.
        got: usize,
    },
}

/// Any failure of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key string could not be parsed.
    #[error(transparent)]
    KeyString(#[from] KeyStringError),
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}
