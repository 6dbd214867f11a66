//! `sotto id`: my public key, and what to hand to a new contact.
//!
//! The first line of stdout is always the key alone, so scripts can take it
//! with `head -1`. An invite bundles the key with the relay, its key and my
//! mailbox's delivery token, so a contact added from it can deliver to me
//! without four separate pastes.

use anyhow::{Context, Result};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use sotto_keys::Invite;

use super::{Ctx, Out};
use crate::config::Config;
use crate::delivery_token;
use crate::identity;

/// Runs `sotto id`.
pub fn run(ctx: &Ctx, args: crate::cli::IdArgs) -> Result<()> {
    ctx.home.require_identity()?;
    let config = Config::load(&ctx.home.config())?;
    let invite = if args.invite {
        Some(config.relay()?)
    } else if args.qr {
        config.relay().ok()
    } else {
        None
    };
    let key = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?.public();
    let invite = match invite {
        Some(pin) => Some(Invite {
            key,
            relay: pin.addr,
            relay_key: pin.key,
            token: Some(delivery_token::load_or_create(&ctx.home)?),
        }),
        None => None,
    };

    let mut out = Out::new();
    out.line(&key.to_string())?;
    if args.invite {
        if let Some(invite) = &invite {
            out.line(&invite.to_string())?;
        }
    }
    if args.qr {
        // Upper case: QR codes store it in the denser alphanumeric mode, and
        // both key and invite readers accept it.
        let data = match &invite {
            Some(invite) => invite.to_string(),
            None => key.to_string(),
        }
        .to_uppercase();
        out.line(&qr(&data)?)?;
    }
    out.flush()?;
    Ok(())
}

/// A QR code as text: two modules per character cell, drawn light-on-dark
/// (most terminals have a dark background) with its quiet zone.
pub(crate) fn qr(data: &str) -> Result<String> {
    let code = QrCode::new(data.as_bytes()).context("cannot make a QR code of this data")?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_renders_as_a_qr_block() {
        let key = sotto_keys::PublicKey::from_bytes([1; 32])
            .to_string()
            .to_uppercase();
        let text = qr(&key).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 10);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
    }
}
