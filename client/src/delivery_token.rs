//! My mailbox's delivery token, `delivery.token` in the home.
//!
//! Whoever holds the token may deliver to my mailbox (it opens nothing and
//! names nobody): I hand it to contacts in `sotto id --invite`, and a relay
//! that no longer learns who delivers uses it to tell my contacts from
//! strangers. It is a capability, so it has a file of its own rather than a
//! line in `config.toml`: the config is the file people read, edit and paste
//! when they ask for help, and the token should not travel with it; a
//! rotation then replaces this one file atomically without rewriting a
//! config someone has edited by hand. The file is written 0600 in the 0700
//! home, its text is wiped from memory after use, and the token is never
//! logged or shown in an error.
//!
//! A home made before tokens has none: the first command that needs it makes
//! one. Two commands doing so at once must not hand out two different
//! tokens, so a new token is put in place only if there is none yet (a link,
//! which fails if the name is taken), and the loser reads the winner's.

use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use sotto_keys::DeliveryToken;
use zeroize::Zeroizing;

use crate::config::write_atomic;
use crate::home::Home;

/// Largest token file read, in bytes: a comment and one 44-character line.
const MAX_TOKEN_FILE_LEN: u64 = 4096;

const HEADER: &str = "\
# The delivery token of your mailbox: whoever holds it may deliver messages to
# you (it opens nothing). `sotto id --invite` gives it to new contacts. Keep it
# private; `sotto token rotate` replaces it.
";

/// My token, if this home has one.
pub fn load(home: &Home) -> Result<Option<DeliveryToken>> {
    let path = home.delivery_token();
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_TOKEN_FILE_LEN + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_TOKEN_FILE_LEN {
        bail!(
            "{} is larger than {MAX_TOKEN_FILE_LEN} bytes; it is not a delivery token file",
            path.display()
        );
    }
    parse(&text, &path).map(Some)
}

/// My token; a home without one (made before tokens) gets one now.
pub fn load_or_create(home: &Home) -> Result<DeliveryToken> {
    if let Some(token) = load(home)? {
        return Ok(token);
    }
    home.ensure_dir()?;
    let token = DeliveryToken::generate();
    let path = home.delivery_token();
    if write_new(&path, &token)? {
        Ok(token)
    } else {
        // Another command made one in the meantime: theirs is the token.
        load(home)?.ok_or_else(|| anyhow!("{} vanished while being read", path.display()))
    }
}

/// Stores `token`, made before the home had an identity (`sotto pair` in an
/// empty home), as its token; refused if the home has one already.
pub fn store_new(home: &Home, token: &DeliveryToken) -> Result<()> {
    home.ensure_dir()?;
    let path = home.delivery_token();
    if write_new(&path, token)? {
        Ok(())
    } else {
        bail!("{} already exists; refusing to replace it", path.display())
    }
}

/// Replaces my token with a new one, atomically, and returns it.
///
/// Only the local file: contacts holding the old token keep it until they
/// are given the new one.
pub fn rotate(home: &Home) -> Result<DeliveryToken> {
    home.ensure_dir()?;
    let token = DeliveryToken::generate();
    write_atomic(&home.delivery_token(), contents(&token).as_bytes())?;
    Ok(token)
}

fn contents(token: &DeliveryToken) -> Zeroizing<String> {
    Zeroizing::new(format!("{HEADER}{token}\n"))
}

fn parse(text: &str, path: &Path) -> Result<DeliveryToken> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let Some((number, line)) = lines.next() else {
        bail!(
            "{}: no delivery token in it; remove the file and sotto makes a new one",
            path.display()
        );
    };
    if let Some((extra, _)) = lines.next() {
        bail!(
            "{}:{extra}: a second line; the file holds one token (sottotoken1...)",
            path.display()
        );
    }
    // The error does not echo the line: it may be most of a valid token.
    line.parse()
        .map_err(|e| anyhow!("{}:{number}: {e}", path.display()))
}

/// Writes a token file unless one exists; `false` if one does.
fn write_new(path: &Path, token: &DeliveryToken) -> Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let context = || format!("cannot write {}", path.display());
    // A private temporary file (0600), linked into place only if the name is free.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(context)?;
    tmp.write_all(contents(token).as_bytes())
        .with_context(context)?;
    tmp.as_file().sync_all().with_context(context)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.error.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.error).with_context(context),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        (dir, home)
    }

    #[test]
    fn a_home_without_a_token_gets_one_private_and_keeps_it() {
        let (_dir, home) = home();
        assert!(load(&home).unwrap().is_none());
        let token = load_or_create(&home).unwrap();
        let path = home.delivery_token();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&home).unwrap(), Some(token.clone()));
        assert_eq!(load_or_create(&home).unwrap(), token);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# The delivery token"), "{text}");
        assert!(text.ends_with(&format!("\n{token}\n")), "{text}");
    }

    #[test]
    fn a_token_made_meanwhile_is_not_replaced() {
        let (_dir, home) = home();
        home.ensure_dir().unwrap();
        let first = DeliveryToken::generate();
        assert!(write_new(&home.delivery_token(), &first).unwrap());
        assert!(!write_new(&home.delivery_token(), &DeliveryToken::generate()).unwrap());
        assert_eq!(load_or_create(&home).unwrap(), first);
    }

    #[test]
    fn rotate_replaces_the_token() {
        let (_dir, home) = home();
        let old = load_or_create(&home).unwrap();
        let new = rotate(&home).unwrap();
        assert_ne!(old, new);
        assert_eq!(load(&home).unwrap(), Some(new));
        let mode = std::fs::metadata(home.delivery_token())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_file_is_an_error_with_its_line_that_does_not_echo_it() {
        let (_dir, home) = home();
        home.ensure_dir().unwrap();
        let good = DeliveryToken::from_bytes([3; 16]).to_string();
        let typo = format!("{}p", &good[..good.len() - 1]);
        for (text, says) in [
            (String::new(), "no delivery token in it"),
            ("# only a comment\n".to_owned(), "no delivery token in it"),
            (
                format!("# c\n{typo}\n"),
                ":2: invalid delivery token: the checksum",
            ),
            (format!("{good}\n{good}\n"), ":2: a second line"),
            ("x".repeat(5000), "larger than 4096 bytes"),
        ] {
            std::fs::write(home.delivery_token(), &text).unwrap();
            let err = load(&home).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(
                !err.contains(&good[11..]) && !err.contains(&typo[11..]),
                "{err}"
            );
            // A damaged file is never silently replaced by a new token.
            assert!(load_or_create(&home).is_err());
        }
    }
}
