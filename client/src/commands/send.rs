//! `sotto send NAME TEXT`: seal a text message and hand it to the relay of
//! each recipient.
//!
//! Success (exit 0) means every recipient's relay answered `Stored`, which it
//! does only after a durable commit: a script can rely on a message it was
//! told was sent not being lost by the relay. A relay that cannot be reached
//! makes the command fail. If it stored the message for nobody, nothing was
//! sent and sending it again is safe; if it did for some members of a group,
//! what the others' relays missed is kept in the home and goes with the next
//! `send` or `chat`, and the error says not to send it again (either way a
//! `Reach` sealed with it is kept, so the contact still learns my token).
//! Everything that can be checked locally (contact, text, size) is checked
//! before the passphrase is asked or the network used.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use sotto_keys::ContactBook;

use super::{block_on, note, tell, Ctx};
use crate::cli::SendArgs;
use crate::config::Config;
use crate::history::History;
use crate::identity;
use crate::outbox::{
    self, check_text, deliver, deliver_undelivered, forget_kept, Target, MAX_TEXT_LEN,
};
use crate::reach;
use crate::sessions::SessionFiles;

/// Runs `sotto send`.
pub fn run(ctx: &Ctx, args: SendArgs) -> Result<()> {
    ctx.home.require_identity()?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    let target = if args.group {
        outbox::resolve(&book, &args.name, true)?
    } else {
        Target::Contact(outbox::recipient(&book, &args.name)?)
    };
    let text = if args.text == "-" {
        read_stdin()?
    } else {
        args.text
    };
    check_text(&text)?;
    let pin = Config::load(&ctx.home.config())?.relay()?;

    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let mine = reach::mine(&ctx.home, &pin)?;
    let history = History::open(&ctx.home, &me)?;
    let sessions = SessionFiles::of(&ctx.home);
    let earlier = block_on(deliver_undelivered(&sessions, &me, &pin))??;
    if earlier > 0 {
        note(&format!(
            "delivered {earlier} message(s) kept from before, when their relay could not be reached"
        ));
    }
    // A group message is one body sealed once per member, all in one batch
    // of the session state, saved before anything goes out.
    let sealed = outbox::seal_and_save(&sessions, &me, &target, text, &pin, Some(&mine))?;
    let messages = sealed.sealed.iter().filter(|s| s.message.is_some()).count();
    let done = block_on(deliver(&sessions, &me, &pin, sealed.sealed))??;
    if let Some(n) = history.record(&[sealed.entry]) {
        tell(&n);
    }
    if !done.kept_messages.is_empty() {
        let why = done
            .kept_because
            .unwrap_or_else(|| "a relay could not be reached".into());
        let missed = done.kept_messages.len();
        if missed + done.refused.len() >= messages {
            block_on(forget_kept(&sessions, &me, done.kept_messages))??;
            bail!("{why}; the message was not sent: send it again once the relay is back");
        }
        bail!(
            "{why}; the message was stored for {} of {messages} recipients, and is kept for the others: the next `sotto send` or `sotto chat` delivers it (do not send it again)",
            messages - missed - done.refused.len()
        );
    }
    if let Some(first) = done.refused.into_iter().next() {
        return Err(first);
    }
    match &target {
        Target::Contact(contact) => note(&format!(
            "sent to {}: the relay has stored it",
            contact.name
        )),
        Target::Group { name, .. } => note(&format!(
            "sent to the group {name}: the relay has stored it for each member"
        )),
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
}
