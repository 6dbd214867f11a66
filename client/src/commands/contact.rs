//! `sotto contact add | list | remove | verify`: the contact book.
//!
//! Contacts are the trust store: a message is shown under a name only if its
//! sender key is the one filed under that name. Adding is therefore explicit
//! and never replaces an entry, and `verify` prints a safety number that both
//! people compute independently and compare over another channel, so a relay
//! (or whoever passed the key along) cannot have swapped it unnoticed.

use anyhow::{anyhow, bail, Context, Result};
use sotto_keys::{
    safety_number, Contact, ContactBook, ContactName, Delivery, DeliveryToken, Invite, PublicKey,
};

use super::{note, warn, Ctx, Out};
use crate::cli::ContactAddArgs;
use crate::config::{parse_pin, Config};
use crate::contacts::{list_lines, unknown_contact, unpinned_hint};
use crate::display::sanitize;
use crate::identity;

/// What `contact add` was given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyOrInvite {
    /// A bare key.
    Key(PublicKey),
    /// An invite: key, relay, relay key and (from version 2) token.
    Invite(Invite),
}

/// Parses a contact key (`sotto1...`) or an invite (`sottoinvite1...`).
pub(crate) fn parse_key_or_invite(s: &str) -> Result<KeyOrInvite> {
    let t = s.trim();
    let lower = t.get(..12).map(str::to_ascii_lowercase).unwrap_or_default();
    if lower.starts_with("sottoinvite1") {
        return Ok(KeyOrInvite::Invite(t.parse()?));
    }
    match t.parse::<PublicKey>() {
        Ok(key) => Ok(KeyOrInvite::Key(key)),
        Err(e) if lower.starts_with("sotto") => Err(anyhow!("invalid key: {e}")),
        Err(_) => Err(anyhow!(
            "`{}` is neither a contact key (sotto1...) nor an invite (sottoinvite1...); ask them for the output of `sotto id --invite`",
            sanitize(&t.chars().take(40).collect::<String>())
        )),
    }
}

fn load_book(ctx: &Ctx) -> Result<ContactBook> {
    ctx.home.require_identity()?;
    Ok(ContactBook::load(&ctx.home.contacts())?)
}

/// Runs `sotto contact add NAME KEY|INVITE [--relay HOST:PORT --relay-key KEY [--token TOKEN]]`.
pub fn add(ctx: &Ctx, args: ContactAddArgs) -> Result<()> {
    let mut book = load_book(ctx)?;
    let name: ContactName = args.name.parse()?;
    let (key, delivery) = match parse_key_or_invite(&args.key)? {
        KeyOrInvite::Invite(_) if args.relay.is_some() || args.relay_key.is_some() || args.token.is_some() => bail!(
            "an invite already holds their relay, its key and their token; give the invite alone, or their key (sotto1...) with --relay and --relay-key"
        ),
        KeyOrInvite::Invite(invite) => (invite.key, Some(invite.delivery())),
        KeyOrInvite::Key(key) => (key, delivery_from_flags(&args)?),
    };
    let contact = match delivery.clone() {
        Some(delivery) => Contact::with_delivery(name.clone(), key, delivery),
        None => Contact::new(name.clone(), key, None),
    };
    book.add(contact)?;
    book.save()?;
    note(&format!("added {name} ({key})"));

    if let Some(delivery) = delivery {
        let config = Config::load(&ctx.home.config())?;
        match config.relay() {
            Err(_) => note(&format!(
                "you have no relay yet; to read from the same relay as {name}, run `sotto relay set {} {}`",
                delivery.relay, delivery.relay_key
            )),
            Ok(mine) if mine.addr != delivery.relay || mine.key != delivery.relay_key => warn(&format!(
                "{name} reads from the relay at {}, yours is {}; sotto sends through your own relay, so {name} only gets your messages if they read from it too",
                delivery.relay, mine.addr
            )),
            Ok(_) => {}
        }
    }
    note(&format!(
        "to make sure this is really {name}'s key, compare safety numbers: `sotto contact verify {name}`"
    ));
    Ok(())
}

/// Where to deliver to a contact added by key, from `--relay`, `--relay-key`
/// and `--token` (clap already pairs them; this says why when they are not).
fn delivery_from_flags(args: &ContactAddArgs) -> Result<Option<Delivery>> {
    let pin = match (&args.relay, &args.relay_key) {
        (Some(relay), Some(key)) => parse_pin(relay, key)?,
        (None, None) if args.token.is_none() => return Ok(None),
        (None, None) => bail!(
            "--token is for their relay: give it with --relay HOST:PORT and --relay-key KEY"
        ),
        _ => bail!(
            "--relay HOST:PORT and --relay-key KEY go together: a relay is reached only with its key pinned; give both, or neither to reach them through your own relay"
        ),
    };
    let token = match &args.token {
        // The error never echoes the string: it may be most of a valid token.
        Some(token) => Some(token.parse::<DeliveryToken>().context("--token")?),
        None => None,
    };
    Ok(Some(Delivery {
        relay: pin.addr,
        relay_key: pin.key,
        token,
    }))
}

/// Runs `sotto contact list`.
pub fn list(ctx: &Ctx) -> Result<()> {
    let book = load_book(ctx)?;
    let lines = list_lines(&book);
    if lines.is_empty() {
        note("no contacts yet; add one with `sotto contact add NAME KEY`");
        return Ok(());
    }
    let mut out = Out::new();
    for line in lines {
        out.line(&line)?;
    }
    out.flush()?;
    if let Some(hint) = unpinned_hint(&book) {
        warn(&hint);
    }
    Ok(())
}

/// Runs `sotto contact remove NAME`.
pub fn remove(ctx: &Ctx, name: &str) -> Result<()> {
    let mut book = load_book(ctx)?;
    let removed = book.remove(name)?;
    book.save()?;
    note(&format!("removed {} ({})", removed.name, removed.key));
    // Their sessions go too: nothing they send on them opens any more.
    if ctx.home.sessions().exists() {
        let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
        let mut batch = crate::sessions::SessionFiles::of(&ctx.home).lock(&me)?;
        batch.store.erase_peer(&removed.key);
        batch.save(&me)?;
    }
    Ok(())
}

/// Runs `sotto contact verify NAME [--confirm]`.
pub fn verify(ctx: &Ctx, name: &str, confirm: bool) -> Result<()> {
    let mut book = load_book(ctx)?;
    let contact = book.get(name).ok_or_else(|| unknown_contact(name))?.clone();
    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?.public();
    let number = safety_number(&me, &contact.key);
    let mut out = Out::new();
    out.line(&number.to_string())?;
    out.flush()?;
    let name = &contact.name;
    if confirm {
        book.set_verified(name.as_str(), true)?;
        book.save()?;
        note(&format!("{name} is now marked as verified"));
    } else {
        note(&format!(
            "this is the safety number of you and {name}: compare it with what {name}'s own `sotto contact verify` shows for you, in person or on a call; if every digit matches, run `sotto contact verify {name} --confirm`"
        ));
        if contact.verified {
            note(&format!("{name} is already marked as verified"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_keys::RelayKey;

    #[test]
    fn keys_and_invites_are_told_apart() {
        let key = PublicKey::from_bytes([7; 32]);
        assert_eq!(
            parse_key_or_invite(&key.to_string()).unwrap(),
            KeyOrInvite::Key(key)
        );
        let invite = Invite {
            key,
            relay: "relay.example.org:7300".parse().unwrap(),
            relay_key: RelayKey::from_bytes([8; 32]),
            token: Some(sotto_keys::DeliveryToken::from_bytes([9; 16])),
        };
        assert_eq!(
            parse_key_or_invite(&invite.to_string().to_uppercase()).unwrap(),
            KeyOrInvite::Invite(invite)
        );
        let relay = RelayKey::from_bytes([8; 32]).to_string();
        let err = parse_key_or_invite(&relay).unwrap_err().to_string();
        assert!(err.contains("relay key, not a contact key"), "{err}");
        let err = parse_key_or_invite("hello\x1b[2J").unwrap_err().to_string();
        assert!(
            err.contains("neither a contact key") && !err.contains('\x1b'),
            "{err}"
        );
        let mut typo = key.to_string();
        typo.pop();
        assert!(parse_key_or_invite(&typo)
            .unwrap_err()
            .to_string()
            .starts_with("invalid key: "));
    }
}
