//! `sotto send NAME TEXT`: seal a text message and hand it to the relay.
//!
//! Success (exit 0) means the relay answered `Stored`, which it does only after
//! a durable commit: a script can rely on a message it was told was sent not
//! being lost by the relay. Everything that can be checked locally (contact,
//! text, size) is checked before the passphrase is asked or the network used.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use sotto_crypto::envelope::MAX_BODY_LEN;
use sotto_crypto::wire::ErrorCode;
use sotto_keys::{Contact, ContactBook, RelayAddr};

use super::chat::{resolve, seal_to, Target};
use super::{block_on, note, tell, warn, Ctx};
use crate::cli::SendArgs;
use crate::config::Config;
use crate::contacts::unknown_contact;
use crate::history::History;
use crate::identity;
use crate::relay_client::{self, RelayError};
use crate::sessions::SessionFiles;

/// Most bytes a body adds around the text: a 16-byte id, a varint timestamp
/// (at most 10 bytes), the content tag (1) and the text's varint length (at
/// most 3 bytes below 2^21).
const BODY_OVERHEAD_MAX: usize = 16 + 10 + 1 + 3;

/// Longest text that always fits in one envelope, in bytes.
pub const MAX_TEXT_LEN: usize = MAX_BODY_LEN - BODY_OVERHEAD_MAX;

/// Runs `sotto send`.
pub fn run(ctx: &Ctx, args: SendArgs) -> Result<()> {
    ctx.home.require_identity()?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    let target = if args.group {
        resolve(&book, &args.name, true)?
    } else {
        Target::Contact(recipient(&book, &args.name)?)
    };
    let text = if args.text == "-" {
        read_stdin()?
    } else {
        args.text
    };
    check_text(&text)?;
    let pin = Config::load(&ctx.home.config())?.relay()?;

    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let history = History::open(&ctx.home, &me)?;
    // A group message is one body sealed once per member, all in one batch
    // of the session state, saved before anything goes out.
    let (sealed, entry) = {
        let mut batch = SessionFiles::of(&ctx.home).lock(&me)?;
        let out = seal_to(&me, &mut batch.store, &target, text)?;
        batch.save(&me)?;
        out
    };

    block_on(async {
        let mut conn = relay_client::connect(&pin, &me).await?;
        if let Some(big) = sealed
            .iter()
            .find(|s| s.envelope.len() > conn.max_envelope_len())
        {
            bail!(
                "the message is too long for the relay at {}: sealed it is {} bytes, the relay accepts at most {}; send a shorter message",
                pin.addr,
                big.envelope.len(),
                conn.max_envelope_len()
            );
        }
        for s in sealed {
            tracing::info!(envelope_len = s.envelope.len(), "sending");
            conn.send_envelope(&s.to, s.envelope)
                .await
                .map_err(|e| explain(e, &s.name))?;
        }
        conn.close().await;
        Ok(())
    })??;
    if let Some(n) = history.record(&[entry]) {
        tell(&n);
    }
    match &target {
        Target::Contact(contact) => {
            note(&format!(
                "sent to {}: the relay has stored it",
                contact.name
            ));
            warn_other_relay(contact, &pin.addr);
        }
        Target::Group { name, members } => {
            note(&format!(
                "sent to the group {name}: the relay has stored it for each member"
            ));
            for m in members.iter().filter(|m| m.key != me.public()) {
                warn_other_relay(m, &pin.addr);
            }
        }
    }
    Ok(())
}

/// The contact filed under `name`, or the error saying what to do.
pub(crate) fn recipient(book: &ContactBook, name: &str) -> Result<Contact> {
    match book.get(name) {
        Some(c) => Ok(c.clone()),
        None if book.group(name).is_some() => {
            bail!("'{name}' is a group; send to it with `sotto send --group {name} TEXT`")
        }
        None => Err(unknown_contact(name)),
    }
}

/// Warns when the contact reads from another relay than the one we send to.
/// After the fact, so a failure stays a single line on stderr.
pub(crate) fn warn_other_relay(contact: &Contact, ours: &RelayAddr) {
    if let Some(theirs) = contact.relay.as_ref().filter(|r| *r != ours) {
        warn(&format!(
            "{} reads from the relay at {theirs}, but messages go through yours at {ours}; they only get it if they read from it too",
            contact.name
        ));
    }
}

/// Adds the recipient's name to what the relay said.
pub(crate) fn explain(err: RelayError, name: &str) -> anyhow::Error {
    match err {
        RelayError::Refused {
            code: ErrorCode::QuotaExceeded,
            ..
        } => anyhow!("{name}'s mailbox on the relay is full; try again once they have read their messages"),
        RelayError::Refused {
            code: ErrorCode::TooLarge,
            addr,
            ..
        } => anyhow!("the relay at {addr} refused the message to {name} as too large; send a shorter message"),
        other => other.into(),
    }
}

fn too_long(len: usize) -> anyhow::Error {
    anyhow!("message too long: {len} bytes, at most {MAX_TEXT_LEN} bytes fit in one message")
}

pub(crate) fn check_text(text: &str) -> Result<()> {
    if text.is_empty() {
        bail!("the message is empty; nothing was sent");
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(too_long(text.len()));
    }
    Ok(())
}

/// The message from stdin: UTF-8, read through a size limit, without the one
/// line ending that `echo` and editors add.
fn read_stdin() -> Result<String> {
    read_message(std::io::stdin().lock())
}

fn read_message(input: impl Read) -> Result<String> {
    // Two bytes of slack for a final "\r\n".
    let limit = MAX_TEXT_LEN + 2;
    let mut bytes = Vec::new();
    input
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the message from stdin")?;
    if bytes.len() > limit {
        return Err(anyhow!(
            "message too long: more than {MAX_TEXT_LEN} bytes on stdin, at most {MAX_TEXT_LEN} bytes fit in one message"
        ));
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| anyhow!("the message on stdin is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_crypto::envelope::{self, Body, Content};
    use sotto_keys::{PublicKey, SecretKey};

    #[test]
    fn the_text_limit_is_exact_enough_to_always_seal() {
        let alice = SecretKey::generate();
        let bob = PublicKey::from_bytes([9; 32]);
        let mut body = Body::new(Content::Text("a".repeat(MAX_TEXT_LEN)));
        body.sent_at_ms = u64::MAX;
        assert!(envelope::seal(&alice, &bob, &body).is_ok());
        assert!(check_text(&"a".repeat(MAX_TEXT_LEN)).is_ok());
        let err = check_text(&"a".repeat(MAX_TEXT_LEN + 1))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "message too long: {} bytes, at most {MAX_TEXT_LEN} bytes fit in one message",
                MAX_TEXT_LEN + 1
            )
        );
        assert!(check_text("").is_err());
    }

    #[test]
    fn stdin_loses_one_line_ending_and_must_be_utf8() {
        assert_eq!(read_message(&b"hi\n"[..]).unwrap(), "hi");
        assert_eq!(read_message(&b"two\nlines\r\n"[..]).unwrap(), "two\nlines");
        assert_eq!(read_message(&b"x\n\n"[..]).unwrap(), "x\n");
        assert!(read_message(&b"\xff"[..]).is_err());
        let big = vec![b'a'; MAX_TEXT_LEN + 3];
        assert!(read_message(&big[..])
            .unwrap_err()
            .to_string()
            .starts_with("message too long"));
    }

    #[test]
    fn a_full_mailbox_is_explained_with_the_contacts_name() {
        let err = RelayError::Refused {
            addr: "127.0.0.1:1".parse().unwrap(),
            code: ErrorCode::QuotaExceeded,
            detail: String::new(),
        };
        assert_eq!(
            explain(err, "bob").to_string(),
            "bob's mailbox on the relay is full; try again once they have read their messages"
        );
        let err = RelayError::Closed {
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        assert!(explain(err, "bob")
            .to_string()
            .contains("closed the connection"));
    }
}
