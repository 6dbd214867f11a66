//! `sotto relay set`: pin the relay.
//!
//! The relay key is a pin (like an SSH known host): a relay that proves
//! another key is refused at connect time, never silently re-pinned. This
//! command is the deliberate way to change it, and it says what it replaced.

use anyhow::Result;

use super::{note, Ctx};
use crate::config::{self, parse_pin, Config};

/// Runs `sotto relay set HOST:PORT KEY`.
pub fn set(ctx: &Ctx, addr: &str, key: &str) -> Result<()> {
    ctx.home.require_identity()?;
    let pin = parse_pin(addr, key)?;
    let path = ctx.home.config();
    let old = Config::load(&path)?;
    config::update(&path, None, Some(&pin))?;
    match (old.relay, old.relay_key) {
        (Some(a), Some(k)) if a == pin.addr && k == pin.key => {
            note(&format!("relay unchanged: {} {}", pin.addr, pin.key));
        }
        (Some(a), Some(k)) => note(&format!(
            "relay pinned: {} {} (replacing {a} {k})",
            pin.addr, pin.key
        )),
        _ => note(&format!("relay pinned: {} {}", pin.addr, pin.key)),
    }
    Ok(())
}
