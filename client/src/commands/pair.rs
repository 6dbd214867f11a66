//! `sotto pair NAME [CODE]`: a first contact by a short spoken code.
//!
//! Without a code, this side is the inviter: it opens a slot on its relay,
//! prints the code on stdout's first line (and nothing else there), and
//! waits for the other side. With one, it is the joiner. Both end with the
//! other as a contact marked `paired`, reached on their own relay with
//! their token, or both fail and save nothing (`crate::pairing` runs the
//! exchange; this module decides what to save and says what it did).
//!
//! A joiner that reads from no relay yet gives the inviter's with `--relay`:
//! the relay's key comes from the handshake, is checked against the one in
//! the inviter's PAKE-protected invite, and is then pinned as its own relay,
//! where its token is registered as `relay set` and `inbox` do. A joiner
//! with no identity gets one, as `init` makes it, written only once the
//! pairing succeeded.

use anyhow::{bail, Result};
use sotto_crypto::pairing::Code;
use sotto_keys::{Contact, ContactBook, ContactName, DeliveryToken, Invite, RelayAddr, SecretKey};

use super::{block_on, note, warn, Ctx, Out};
use crate::cli::PairArgs;
use crate::config::{self, Config, RelayPin};
use crate::pairing;
use crate::{delivery_token, identity};

/// Runs `sotto pair`.
pub fn run(ctx: &Ctx, args: PairArgs) -> Result<()> {
    let name: ContactName = args.name.parse()?;
    match args.code {
        None => invite(ctx, name),
        Some(code) => {
            let code: Code = code.parse()?;
            let relay = match args.relay.as_deref() {
                Some(addr) => Some(addr.parse::<RelayAddr>().map_err(|e| {
                    anyhow::anyhow!(
                        "`{}` is not a relay address: {e}",
                        crate::display::sanitize(addr)
                    )
                })?),
                None => None,
            };
            join(ctx, name, &code, relay)
        }
    }
}

/// The book, refusing a name already taken before anything else is done.
fn free_name(ctx: &Ctx, name: &ContactName) -> Result<ContactBook> {
    let book = ContactBook::load(&ctx.home.contacts())?;
    if book.get(name.as_str()).is_some() {
        bail!(
            "{name} is already a contact; pair under another name, or run `sotto contact remove {name}` first"
        );
    }
    Ok(book)
}

fn invite(ctx: &Ctx, name: ContactName) -> Result<()> {
    ctx.home.require_identity()?;
    let mut book = free_name(ctx, &name)?;
    let pin = Config::load(&ctx.home.config())?.relay().map_err(|_| {
        anyhow::anyhow!(
            "no relay configured: the code is opened on your relay; pin it with `sotto relay set HOST:PORT KEY`, or have the other side run `sotto pair` without a code"
        )
    })?;
    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let mine = Invite {
        key: me.public(),
        relay: pin.addr.clone(),
        relay_key: pin.key,
        token: Some(delivery_token::load_or_create(&ctx.home)?),
    };
    let added = block_on(async {
        let mut rv = pairing::connect(&pin.addr, Some(&pin.key)).await?;
        let slot = rv.open().await?;
        let code = Code::random(slot.number);
        let mut out = Out::new();
        out.line(&code.to_string())?;
        out.flush()?;
        note(&format!(
            "waiting for the other side: they run `sotto pair NAME {code} --relay {}` (without --relay if they read from this relay too); the code expires in {} s",
            pin.addr,
            slot.expires_in.as_secs()
        ));
        let (theirs, keys) = rv.invite(&code, slot, &mine).await?;
        match add_paired(&mut book, &name, &theirs) {
            Ok(()) => {
                rv.done(&keys).await?;
                Ok(theirs)
            }
            Err(e) => {
                rv.give_up().await;
                Err(e)
            }
        }
    })??;
    say_added(&name, &added);
    Ok(())
}

fn join(ctx: &Ctx, name: ContactName, code: &Code, relay: Option<RelayAddr>) -> Result<()> {
    // An empty home's identity is made in memory and written only once the
    // pairing succeeded: a failed one leaves the home as it was.
    let fresh = !ctx.home.has_identity();
    let passphrase = if fresh {
        identity::new_passphrase(false, ctx.passphrase_file.as_deref())?
    } else {
        None
    };
    let mut book = free_name(ctx, &name)?;
    let config = Config::load(&ctx.home.config())?;
    let own = config.relay().ok();
    let (addr, pinned) = match (relay, &own) {
        (Some(addr), Some(own)) if addr == own.addr => (addr, Some(own.key)),
        (Some(addr), _) => (addr, None),
        (None, Some(own)) => (own.addr.clone(), Some(own.key)),
        (None, None) => bail!(
            "no relay configured here: give the inviter's relay, `sotto pair {name} CODE --relay HOST:PORT`"
        ),
    };
    let (me, token) = if fresh {
        (SecretKey::generate(), DeliveryToken::generate())
    } else {
        (
            identity::load(&ctx.home, ctx.passphrase_file.as_deref())?,
            delivery_token::load_or_create(&ctx.home)?,
        )
    };
    let key = me.public();
    let token_kept = token.clone();
    let theirs = {
        let (addr, own) = (addr.clone(), own.clone());
        block_on(async move {
            let mut rv = pairing::connect(&addr, pinned.as_ref()).await?;
            // Mine names my own relay; with none, the inviter's, which I
            // pin below: the one I reached, whose key their invite vouched for.
            let mine = move |theirs: &Invite| match own {
                Some(own) => Invite {
                    key,
                    relay: own.addr,
                    relay_key: own.key,
                    token: Some(token),
                },
                None => Invite {
                    key,
                    relay: addr,
                    relay_key: theirs.relay_key,
                    token: Some(token),
                },
            };
            rv.join(code, mine).await
        })??
    };
    if fresh {
        super::init::create(
            ctx,
            &config::Changes::default(),
            passphrase.as_ref(),
            &me,
            Some(&token_kept),
        )?;
        note(&format!(
            "created a new identity in {} ({}), as `sotto init` does",
            ctx.home.identity().display(),
            if passphrase.is_some() {
                "protected by a passphrase"
            } else {
                "not protected by a passphrase"
            }
        ));
    }
    add_paired(&mut book, &name, &theirs)?;
    say_added(&name, &theirs);
    if own.is_none() {
        let pin = RelayPin::new(addr, theirs.relay_key);
        adopt_relay(ctx, &config, &me, &pin)?;
    }
    Ok(())
}

/// Files `theirs` under `name`, reached on their relay, marked paired.
fn add_paired(book: &mut ContactBook, name: &ContactName, theirs: &Invite) -> Result<()> {
    let mut contact = Contact::with_delivery(name.clone(), theirs.key, theirs.delivery());
    contact.paired = true;
    book.add(contact)?;
    book.save()?;
    Ok(())
}

fn say_added(name: &ContactName, theirs: &Invite) {
    note(&format!(
        "added {name} ({}), reached on {}, confirmed by the code; `sotto contact verify {name}` compares safety numbers too",
        theirs.key, theirs.relay
    ));
}

/// Pins the relay I paired on as my own (I had none) and registers my
/// token there, as `relay set` and `inbox` do.
fn adopt_relay(ctx: &Ctx, config: &Config, me: &SecretKey, pin: &RelayPin) -> Result<()> {
    config::apply(
        &ctx.home.config(),
        &config::Changes {
            relay: Some(pin),
            ..config::Changes::default()
        },
    )?;
    note(&format!(
        "relay pinned: {} {} (you had none; this is the relay you paired on)",
        pin.addr, pin.key
    ));
    let mine = crate::reach::mine(&ctx.home, pin)?;
    let sessions = crate::sessions::SessionFiles::of(&ctx.home);
    let first_contact = config.accepts_first_contact();
    let registered = {
        let (pin, me) = (pin.clone(), me.clone());
        block_on(async move {
            let mut conn = crate::relay_client::connect(&pin, &me).await?;
            crate::reach::register(&mut conn, &sessions, &me, &mine, first_contact).await?;
            conn.close().await;
            Ok::<(), crate::relay_client::RelayError>(())
        })?
    };
    if let Err(e) = registered {
        warn(&format!(
            "{}; your token is registered there by the next `sotto inbox` or `chat`",
            crate::error_line(&anyhow::Error::new(e))
        ));
    }
    Ok(())
}
