//! `sotto relay set`: pin the relay, and move to it.
//!
//! The relay key is a pin (like an SSH known host): a relay that proves
//! another key is refused at connect time, never silently re-pinned. This
//! command is the deliberate way to change it, and it says what it replaced.
//!
//! Moving to a relay at another address is more than a pin (PROTOCOL
//! §7.10): my token is registered on the new relay, every contact is told
//! end to end where to reach me now (a `Reach`, delivered to each contact's
//! own relay), and the old relay goes into `draining` in `config.toml`, read
//! by `inbox`, `chat` and `receive-all` until it is empty, so what contacts
//! sent there before they heard of the move is not lost.

use anyhow::Result;
use sotto_keys::ContactBook;

use super::{note, Ctx};
use crate::config::{self, parse_pin, Changes, Config, RelayPin};

/// Runs `sotto relay set HOST:PORT KEY [--node HOST:PORT]...`.
pub fn set(ctx: &Ctx, addr: &str, key: &str, nodes: &[String]) -> Result<()> {
    ctx.home.require_identity()?;
    let mut pin = parse_pin(addr, key)?;
    for node in nodes {
        let node = parse_pin(node, key)?.addr;
        if node != pin.addr && !pin.nodes.contains(&node) {
            pin.nodes.push(node);
        }
    }
    let path = ctx.home.config();
    let old = Config::load(&path)?;
    let before = old.relay().ok();
    if before.as_ref() == Some(&pin) {
        note(&format!("relay unchanged: {} {}", pin.addr, pin.key));
        return Ok(());
    }
    // The same relay (same key) still answering where it did, with its list
    // of nodes changed: nothing moved, so nothing to drain or tell.
    if let Some(b) = before
        .as_ref()
        .filter(|b| b.key == pin.key && (b.addr == pin.addr || pin.nodes.contains(&b.addr)))
    {
        config::apply(
            &path,
            &Changes {
                relay: Some(&pin),
                ..Changes::default()
            },
        )?;
        note(&format!(
            "relay pinned: {} {}, also at {} (it was at {})",
            pin.addr,
            pin.key,
            list(&pin.nodes),
            std::iter::once(&b.addr)
                .chain(&b.nodes)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(());
    }
    // A relay at another address may still hold messages for me; the same
    // address with a new key is the same relay re-keyed.
    let mut draining: Vec<RelayPin> = old
        .draining
        .iter()
        .map(config::OldRelay::pin)
        .filter(|p| p.addr != pin.addr)
        .collect();
    if let Some(b) = before.as_ref().filter(|b| b.addr != pin.addr) {
        if !draining.contains(b) {
            draining.push(b.clone());
        }
    }
    config::apply(
        &path,
        &Changes {
            relay: Some(&pin),
            draining: Some(&draining),
            ..Changes::default()
        },
    )?;
    let also = if pin.nodes.is_empty() {
        String::new()
    } else {
        format!(", also at {}", list(&pin.nodes))
    };
    match &before {
        Some(b) => note(&format!(
            "relay pinned: {} {}{also} (replacing {} {})",
            pin.addr, pin.key, b.addr, b.key
        )),
        None => note(&format!("relay pinned: {} {}{also}", pin.addr, pin.key)),
    }
    let book = ContactBook::load(&ctx.home.contacts())?;
    if before.is_none() || book.contacts().next().is_none() {
        return Ok(());
    }
    super::tell_contacts(ctx, &pin, &book)?;
    if let Some(b) = before.filter(|b| b.addr != pin.addr) {
        note(&format!(
            "the old relay at {} is still read by `sotto inbox`, `chat` and `receive-all` until it is empty",
            b.addr
        ));
    }
    Ok(())
}

/// `a, b, c`, or `no other address`.
fn list(addrs: &[sotto_keys::RelayAddr]) -> String {
    if addrs.is_empty() {
        return "no other address".to_owned();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
