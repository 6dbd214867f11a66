//! `sotto token rotate`: a new delivery token for my mailbox.
//!
//! A token that has spread further than meant (an invite posted in the wrong
//! place) is replaced here: the home's `delivery.token` gets a new one, my
//! relay is given its hash (it keeps taking the old one for its grace
//! period, a week by default), and every contact is told the new one end to
//! end. Invites made from now on carry it. The token itself is never
//! printed; `sotto id --invite` is how it is handed out.

use anyhow::Result;

use super::{note, Ctx};
use crate::delivery_token;

/// Runs `sotto token rotate`.
pub fn rotate(ctx: &Ctx) -> Result<()> {
    ctx.home.require_identity()?;
    delivery_token::rotate(&ctx.home)?;
    note(&format!(
        "a new delivery token is in {}; new invites (`sotto id --invite`) carry it",
        ctx.home.delivery_token().display()
    ));
    let book = sotto_keys::ContactBook::load(&ctx.home.contacts())?;
    let Ok(pin) = crate::config::Config::load(&ctx.home.config())?.relay() else {
        return Ok(());
    };
    if book.contacts().next().is_some() {
        super::tell_contacts(ctx, &pin, &book)?;
    }
    Ok(())
}
