//! Getting at the secret key, and at the passphrase that may protect it.
//!
//! Every command must work unattended (scripts, tests) and a passphrase must
//! never be a command-line argument (it would show in `ps` and shell history),
//! so a passphrase comes from, in order: `--passphrase-file FILE`, the
//! environment variable `SOTTO_PASSPHRASE`, a prompt when stdin is a terminal.
//! Without any of them the command fails with a message saying how to give one,
//! rather than hanging on a prompt nobody will answer.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use sotto_keys::{keyfile, Error as KeysError, Passphrase, SecretKey};

use crate::home::Home;

/// The environment variable that may hold the passphrase.
pub const PASSPHRASE_ENV: &str = "SOTTO_PASSPHRASE";

/// How many times a passphrase is asked on a terminal before giving up.
const PROMPT_TRIES: usize = 3;

/// Where a passphrase came from: decides whether a wrong one may be asked again.
enum Source {
    File,
    Env,
    Prompt,
}

/// A passphrase given non-interactively: the file first, then the environment.
fn given_passphrase(file: Option<&Path>) -> Result<Option<(Passphrase, Source)>> {
    if let Some(path) = file {
        let p = Passphrase::from_file(path)
            .with_context(|| format!("cannot use --passphrase-file {}", path.display()))?;
        return Ok(Some((p, Source::File)));
    }
    match std::env::var(PASSPHRASE_ENV) {
        Ok(value) => {
            let p = Passphrase::new(value).with_context(|| format!("{PASSPHRASE_ENV} is set"))?;
            Ok(Some((p, Source::Env)))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("{PASSPHRASE_ENV} is not valid UTF-8 text")
        }
    }
}

fn can_prompt() -> bool {
    std::io::stdin().is_terminal()
}

fn prompt(text: &str) -> Result<Passphrase> {
    let typed =
        rpassword::prompt_password(text).context("cannot read the passphrase from the terminal")?;
    Ok(Passphrase::new(typed)?)
}

/// Loads the identity of `home`; asks for its passphrase only if it has one.
pub fn load(home: &Home, passphrase_file: Option<&Path>) -> Result<SecretKey> {
    home.require_identity()?;
    let path = home.identity();
    if !keyfile::is_encrypted(&path)? {
        return Ok(keyfile::load(&path, || Err(KeysError::WrongPassphrase))?);
    }
    let (first, source) = match given_passphrase(passphrase_file)? {
        Some(given) => given,
        None if can_prompt() => (prompt("Passphrase for identity.key: ")?, Source::Prompt),
        None => bail!(
            "identity.key is protected by a passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file FILE"
        ),
    };
    let mut passphrase = Some(first);
    let mut tries = 1;
    loop {
        let p = passphrase.take().ok_or_else(|| anyhow!("no passphrase"))?;
        match keyfile::load(&path, move || Ok(p)) {
            Ok(key) => return Ok(key),
            Err(KeysError::WrongPassphrase)
                if matches!(source, Source::Prompt) && tries < PROMPT_TRIES =>
            {
                eprintln_safe("sotto: wrong passphrase, try again");
                tries += 1;
                passphrase = Some(prompt("Passphrase for identity.key: ")?);
            }
            Err(KeysError::WrongPassphrase) => {
                let from = match source {
                    Source::File => "the passphrase in --passphrase-file",
                    Source::Env => "the passphrase in SOTTO_PASSPHRASE",
                    Source::Prompt => "the passphrase",
                };
                bail!(
                    "{from} does not open {} (wrong passphrase, or the key file is damaged)",
                    path.display()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The passphrase for a new identity, or `None` to store it unencrypted.
///
/// `ask` is `sotto init --passphrase`: prompt twice on the terminal.
pub fn new_passphrase(ask: bool, passphrase_file: Option<&Path>) -> Result<Option<Passphrase>> {
    if ask && passphrase_file.is_some() {
        bail!("use either --passphrase (prompt) or --passphrase-file FILE, not both");
    }
    if ask {
        if !can_prompt() {
            bail!("--passphrase asks on a terminal and there is none; use --passphrase-file FILE or set {PASSPHRASE_ENV}");
        }
        let first = prompt("New passphrase for identity.key: ")?;
        let again = prompt("Repeat the passphrase: ")?;
        if first.expose() != again.expose() {
            bail!("the two passphrases differ; nothing was written, run `sotto init --passphrase` again");
        }
        return Ok(Some(first));
    }
    Ok(given_passphrase(passphrase_file)?.map(|(p, _)| p))
}

/// Writes to stderr, ignoring failure (there is nowhere left to report it).
fn eprintln_safe(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_file_beats_the_environment_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "from file\n").unwrap();
        let (p, _) = given_passphrase(Some(&file)).unwrap().unwrap();
        assert_eq!(p.expose(), "from file");
        std::fs::write(&file, "\n").unwrap();
        let err = format!("{:#}", given_passphrase(Some(&file)).err().unwrap());
        assert!(err.starts_with("cannot use --passphrase-file"), "{err}");
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn asking_and_a_file_together_are_refused() {
        let err = new_passphrase(true, Some(Path::new("/x"))).err().unwrap();
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn identities_round_trip_with_a_passphrase_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        home.ensure_dir().unwrap();
        let pass_file = dir.path().join("pass");
        std::fs::write(&pass_file, "correct horse\n").unwrap();
        let key = SecretKey::generate();
        let pass = new_passphrase(false, Some(&pass_file)).unwrap().unwrap();
        keyfile::write_new(&home.identity(), &key, Some(&pass)).unwrap();
        let loaded = load(&home, Some(&pass_file)).unwrap();
        assert_eq!(loaded.public(), key.public());

        std::fs::write(&pass_file, "wrong horse\n").unwrap();
        let err = load(&home, Some(&pass_file)).err().unwrap().to_string();
        assert!(err.contains("does not open"), "{err}");
    }
}
