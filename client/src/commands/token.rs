//! `sotto token rotate`: a new delivery token for my mailbox.
//!
//! A token that has spread further than meant (an invite posted in the wrong
//! place) is replaced here. This changes only the home's `delivery.token`:
//! invites made from now on carry the new token, and contacts who hold the
//! old one keep it until they are given the new one. The token itself is
//! never printed; `sotto id --invite` is how it is handed out.

use anyhow::Result;

use super::{note, Ctx};
use crate::delivery_token;

/// Runs `sotto token rotate`.
pub fn rotate(ctx: &Ctx) -> Result<()> {
    ctx.home.require_identity()?;
    delivery_token::rotate(&ctx.home)?;
    note(&format!(
        "a new delivery token is in {}; new invites (`sotto id --invite`) carry it, and contacts who have the old one keep it until they are given the new one",
        ctx.home.delivery_token().display()
    ));
    Ok(())
}
