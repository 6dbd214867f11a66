//! `sotto init`: create the identity and the config.
//!
//! An identity is never overwritten: losing the key file means losing every
//! message on its way and every contact's trust in the key. Everything that
//! can fail (arguments, passphrase prompts) is settled before anything is
//! written, and the config is written before the key, so a failed `init` can
//! simply be run again.

use anyhow::{bail, Context, Result};
use sotto_keys::{keyfile, Error as KeysError, RelayAddr, RelayKey, SecretKey};

use super::{note, Ctx, Out};
use crate::cli::InitArgs;
use crate::config::{self, RelayPin};
use crate::display::is_dangerous;
use crate::identity;

/// Longest name accepted, in characters.
const MAX_NAME_CHARS: usize = 64;

/// Runs `sotto init`.
pub fn run(ctx: &Ctx, args: InitArgs) -> Result<()> {
    let identity_path = ctx.home.identity();
    if identity_path.exists() {
        bail!(
            "an identity already exists at {}; refusing to overwrite it",
            identity_path.display()
        );
    }
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let pin = match (&args.relay, &args.relay_key) {
        (Some(addr), Some(key)) => Some(parse_pin(addr, key)?),
        (None, None) => None,
        _ => bail!("--relay HOST:PORT and --relay-key KEY go together; give both or neither"),
    };
    let passphrase = identity::new_passphrase(args.passphrase, ctx.passphrase_file.as_deref())?;

    ctx.home.ensure_dir()?;
    config::apply(
        &ctx.home.config(),
        &config::Changes {
            name: args.name.as_deref(),
            relay: pin.as_ref(),
            history: args.no_history.then_some(false),
        },
    )?;
    let key = SecretKey::generate();
    keyfile::write_new(&identity_path, &key, passphrase.as_ref()).map_err(|e| match e {
        KeysError::AlreadyExists { path } => anyhow::anyhow!(
            "an identity already exists at {}; refusing to overwrite it",
            path.display()
        ),
        other => anyhow::Error::new(other).context("cannot write the identity"),
    })?;

    let mut out = Out::new();
    out.line(&key.public().to_string())?;
    out.flush()?;

    let protection = if passphrase.is_some() {
        "protected by a passphrase"
    } else {
        "not protected by a passphrase"
    };
    note(&format!(
        "created a new identity in {} ({protection}); the line above is your public key",
        identity_path.display()
    ));
    match pin {
        Some(pin) => note(&format!(
            "relay pinned: {} {}; give your contacts `sotto id --invite`",
            pin.addr, pin.key
        )),
        None => note("next: pin your relay with `sotto relay set HOST:PORT KEY` (sotto-relay prints both when it starts)"),
    }
    if args.no_history {
        note("history is off: no messages are kept on this device (`history = false` in config.toml)");
    }
    Ok(())
}

/// Parses `--relay` and `--relay-key` (or `relay set`'s arguments).
pub(crate) fn parse_pin(addr: &str, key: &str) -> Result<RelayPin> {
    let addr: RelayAddr = addr.parse().with_context(|| {
        format!(
            "`{}` is not a relay address",
            crate::display::sanitize(addr)
        )
    })?;
    let key: RelayKey = key.parse().map_err(anyhow::Error::new).context(
        "invalid relay key (it should be the sottorelay1... key that sotto-relay prints)",
    )?;
    Ok(RelayPin { addr, key })
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        bail!("--name is empty; give the name you go by, or leave --name out");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        bail!("--name is longer than {MAX_NAME_CHARS} characters");
    }
    if name.chars().any(is_dangerous) {
        bail!("--name contains control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_arguments_are_checked_with_a_hint() {
        let key = RelayKey::from_bytes([3; 32]).to_string();
        let pin = parse_pin("relay.example.org:7300", &key).unwrap();
        assert_eq!(pin.addr.port(), 7300);
        let err = format!("{:#}", parse_pin("nope", &key).unwrap_err());
        assert!(
            err.starts_with("`nope` is not a relay address: invalid relay address"),
            "{err}"
        );
        let user = sotto_keys::PublicKey::from_bytes([3; 32]).to_string();
        let err = format!("{:#}", parse_pin("h:1", &user).unwrap_err());
        assert!(
            err.contains("this is a contact key, not a relay key"),
            "{err}"
        );
    }

    #[test]
    fn names_with_escapes_are_refused() {
        assert!(check_name("Alice Liddell").is_ok());
        assert!(check_name("a\x1b[2J").is_err());
        assert!(check_name("  ").is_err());
    }
}
