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
    /// A low-order curve point: anyone could impersonate its owner.
    #[error("this key is a weak (low-order) curve point that anyone could impersonate; it cannot be used")]
    Weak,
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
    /// A relay address (`host:port`) that could not be read.
    #[error("invalid relay address: {reason} (expected HOST:PORT, e.g. relay.example.org:7300 or [::1]:7300)")]
    InvalidRelayAddr {
        /// What is wrong with it.
        reason: String,
    },
    /// An empty passphrase was given.
    #[error("the passphrase is empty; choose a non-empty passphrase, or none to store the key unencrypted")]
    EmptyPassphrase,
    /// A passphrase file that could not be used (its content is never shown).
    #[error("{path}: {reason}")]
    PassphraseFile {
        /// The passphrase file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key file, or another file this crate never overwrites, already exists.
    #[error("{path} already exists; refusing to overwrite it (move it away first if you really mean to replace it)")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A key file that other users may read or write.
    #[error("{path} is {} (mode {mode:04o}); run `chmod 600 {path}`", access_words(*.mode))]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// There is no key file at the given path.
    #[error("no key file at {path} (create an identity first, e.g. with `sotto init`)")]
    NoKeyFile {
        /// Where the key file was expected.
        path: PathBuf,
    },
    /// A file larger than this crate accepts for its kind.
    #[error("{path} is larger than {limit} bytes, too large to be what it should be")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The passphrase does not open the key file, or the encrypted key was altered.
    ///
    /// The two cannot be told apart, on purpose: the AEAD says only "no".
    #[error("wrong passphrase, or the key file is damaged")]
    WrongPassphrase,
    /// A key file that is not in the expected format.
    ///
    /// Only the line number is given: the line itself may hold a secret.
    #[error("{}", key_file_location(.path, *.line, .reason))]
    KeyFileFormat {
        /// The key file.
        path: PathBuf,
        /// 1-based line number of the problem, or 0 when it concerns the whole file.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A contacts file that cannot be parsed or holds an invalid entry.
    #[error("{path}:{line}:{col}: {message}")]
    ContactsFormat {
        /// The contacts file.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column (in characters) of the offending value.
        col: usize,
        /// What is wrong and, where possible, how to fix it.
        message: String,
    },
    /// A contact or group name that is not allowed.
    #[error("invalid name: {reason}")]
    InvalidName {
        /// What is wrong with it.
        reason: String,
    },
    /// A contact with this name already exists.
    #[error("there is already a contact named `{name}` (remove it first, or choose another name)")]
    ContactExists {
        /// The name.
        name: String,
    },
    /// The key being added already belongs to a contact.
    #[error("this key already belongs to the contact `{name}`")]
    KeyAlreadyContact {
        /// The existing contact's name.
        name: String,
    },
    /// No contact has this name.
    #[error("no contact named `{name}` (see `sotto contact list`)")]
    UnknownContact {
        /// The name asked for.
        name: String,
    },
    /// An invite string that could not be read.
    #[error("invalid invite: {reason}")]
    Invite {
        /// What is wrong with it.
        reason: String,
    },
    /// A delivery token string that could not be read (never echoed: it is a
    /// capability).
    #[error("invalid delivery token: {reason}")]
    InvalidToken {
        /// What is wrong with it.
        reason: String,
    },
}

/// Says which kind of access other users have, for [`Error::InsecurePermissions`].
fn access_words(mode: u32) -> &'static str {
    if mode & 0o044 != 0 {
        "readable by others"
    } else if mode & 0o022 != 0 {
        "writable by others"
    } else {
        "accessible to others"
    }
}

fn key_file_location(path: &std::path::Path, line: usize, reason: &str) -> String {
    if line == 0 {
        format!("{}: {reason}", path.display())
    } else {
        format!("{}:{line}: {reason}", path.display())
    }
}

impl Error {
    /// Wraps an I/O error with the file it concerns.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An error and its causes as one line, `outer: inner: ...`, each cause
/// said once: a cause whose words the line already holds (an error that
/// prints its source and also returns it as its `source()`, or the same
/// I/O error in other case and with its `(os error N)`) is left out, so a
/// user never reads "Address already in use (os error 98): Address already
/// in use (os error 98)". Both binaries print their errors this way.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(e);
    while let Some(err) = cause {
        let text = err
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if !text.is_empty() && !said(&line, &text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = err.source();
    }
    line
}

/// Whether `line` already says `text`, ignoring case and an OS error code.
fn said(line: &str, text: &str) -> bool {
    let plain = |s: &str| {
        let s = s.to_lowercase();
        match s.find(" (os error ") {
            Some(at) if s.ends_with(')') => s[..at].to_owned(),
            _ => s,
        }
    };
    let text = plain(text);
    !text.is_empty() && line.to_lowercase().contains(&text)
}

#[cfg(test)]
mod one_line_tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:7300: {source}")]
    struct Bind {
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x: no such file or directory")]
    struct Read {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let shown = io.to_string();
        let e = Bind { source: io };
        assert_eq!(
            one_line(&e),
            format!("cannot listen on 127.0.0.1:7300: {shown}")
        );
        let e = Read {
            source: std::io::Error::from_raw_os_error(2),
        };
        assert_eq!(one_line(&e), "cannot read /x: no such file or directory");
        let e = Read {
            source: std::io::Error::other("the disk is on fire"),
        };
        assert_eq!(
            one_line(&e),
            "cannot read /x: no such file or directory: the disk is on fire"
        );
    }
}
