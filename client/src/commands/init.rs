//! `sotto init`: create the identity and the config.
//!
//! An identity is never overwritten: losing the key file means losing every
//! message on its way and every contact's trust in the key. Everything that
//! can fail (arguments, passphrase prompts) is settled before anything is
//! written, and the config is written before the key, so a failed `init` can
//! simply be run again.
//!
//! `--join INVITE` is the one-step start for someone invited: the inviter's
//! relay is pinned (the invite carries its key), and the inviter is added as
//! a contact reached there with their token.

use anyhow::{bail, Result};
use sotto_keys::{
    keyfile, Contact, ContactBook, ContactName, Error as KeysError, Invite, SecretKey,
};

use super::{note, Ctx, Out};
use crate::cli::InitArgs;
use crate::config::{self, parse_pin, RelayPin};
use crate::delivery_token;
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
    let joining = match &args.join {
        Some(text) => {
            let invite: Invite = text.trim().parse()?;
            let name: ContactName = args.contact.as_deref().unwrap_or("inviter").parse()?;
            Some((invite, name))
        }
        None => None,
    };
    let pin = match (&args.relay, &args.relay_key, &joining) {
        (_, _, Some((invite, _))) => Some(RelayPin {
            addr: invite.relay.clone(),
            key: invite.relay_key,
            nodes: Vec::new(),
        }),
        (Some(addr), Some(key), None) => Some(parse_pin(addr, key)?),
        (None, None, None) => None,
        _ => bail!("--relay HOST:PORT and --relay-key KEY go together; give both or neither"),
    };
    let passphrase = identity::new_passphrase(args.passphrase, ctx.passphrase_file.as_deref())?;

    let key = create(
        ctx,
        &config::Changes {
            name: args.name.as_deref(),
            relay: pin.as_ref(),
            history: args.no_history.then_some(false),
            draining: None,
        },
        passphrase.as_ref(),
        &SecretKey::generate(),
        None,
    )?;

    let mut out = Out::new();
    out.line(&key.public().to_string())?;
    out.flush()?;
    if let Some((invite, name)) = joining {
        let mut book = ContactBook::load(&ctx.home.contacts())?;
        let contact = Contact::with_delivery(name.clone(), invite.key, invite.delivery());
        book.add(contact)?;
        book.save()?;
        note(&format!(
            "added the inviter as {name} ({}); compare safety numbers with `sotto contact verify {name}`",
            invite.key
        ));
    }

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

/// Writes `key` as the home's new identity (`init`, and `pair` in an empty
/// home, once the pairing succeeded): the config, then the delivery token
/// (`token`, or a new one), then the key, so that a run that failed
/// part-way can simply be run again.
pub(crate) fn create(
    ctx: &Ctx,
    changes: &config::Changes<'_>,
    passphrase: Option<&sotto_keys::Passphrase>,
    key: &SecretKey,
    token: Option<&sotto_keys::DeliveryToken>,
) -> Result<SecretKey> {
    let identity_path = ctx.home.identity();
    ctx.home.ensure_dir()?;
    config::apply(&ctx.home.config(), changes)?;
    match token {
        Some(token) => delivery_token::store_new(&ctx.home, token)?,
        None => {
            delivery_token::load_or_create(&ctx.home)?;
        }
    }
    let key = key.clone();
    keyfile::write_new(&identity_path, &key, passphrase).map_err(|e| match e {
        KeysError::AlreadyExists { path } => anyhow::anyhow!(
            "an identity already exists at {}; refusing to overwrite it",
            path.display()
        ),
        other => anyhow::Error::new(other).context("cannot write the identity"),
    })?;
    Ok(key)
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
    fn names_with_escapes_are_refused() {
        assert!(check_name("Alice Liddell").is_ok());
        assert!(check_name("a\x1b[2J").is_err());
        assert!(check_name("  ").is_err());
    }
}
