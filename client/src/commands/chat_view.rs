//! Where `sotto chat` shows what happens: lines on stdout, or the screen.
//!
//! Line mode prints each incoming message as one `[time] NAME: TEXT` line,
//! flushed at once, and does not echo what was typed (the terminal already
//! did). The screen ([`crate::screen`]) shows both, each message with its
//! author, plus the partner and the state of the link in its status line.
//! The chat calls the same methods either way; this is the one place that
//! knows the difference.

use std::io::Write;

use sotto_keys::ContactBook;

use super::inbox::group_label;
use crate::history::{Direction, Entry};
use crate::screen::{Link, MsgId, ScreenHandle, Who};

/// The chat's output.
#[derive(Debug)]
pub(crate) enum View {
    /// Lines on stdout.
    Lines,
    /// The interactive screen.
    Screen(ScreenHandle),
}

/// Where the lines of one processed batch go before they are shown.
pub(crate) enum Printer {
    /// Straight to stdout: a failure leaves the message on the relay.
    Stdout(std::io::StdoutLock<'static>),
    /// Kept, to be shown on the screen once the batch is known.
    Kept(Vec<String>),
}

impl Printer {
    /// Prints (or keeps) one line.
    pub(crate) fn line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Printer::Stdout(out) => {
                writeln!(out, "{line}")?;
                out.flush()
            }
            Printer::Kept(lines) => {
                lines.push(line.to_owned());
                Ok(())
            }
        }
    }
}

impl View {
    /// A printer for the lines of the next batch of deliveries.
    pub(crate) fn printer(&self) -> Printer {
        match self {
            View::Lines => Printer::Stdout(std::io::stdout().lock()),
            View::Screen(_) => Printer::Kept(Vec::new()),
        }
    }

    /// Shows a processed batch on the screen: message by message with
    /// their authors when every line printed was a message (the usual
    /// case), else the lines as printed (a file waiting is one).
    pub(crate) fn received(&self, book: &ContactBook, messages: &[Entry], printed: Printer) {
        let (View::Screen(screen), Printer::Kept(lines)) = (self, printed) else {
            return;
        };
        if lines.len() != messages.len() {
            for line in lines {
                screen.notice(&line);
            }
            return;
        }
        for m in messages {
            let name = match &m.peer {
                Some(key) => match book.by_key(key) {
                    Some(c) => c.name.to_string(),
                    None => format!("unknown {key}"),
                },
                None => "unknown".to_owned(),
            };
            let group = m.group.as_deref().map(group_label);
            let who = match m.direction {
                Direction::Received => Who::Them { name, group },
                Direction::Sent => Who::Me { group },
            };
            screen.message(m.at_ms, who, &m.text);
        }
    }

    /// Shows a message I typed (the screen only: in line mode the terminal
    /// echoed it). Its id is what receipts mark.
    pub(crate) fn sent(&self, entry: &Entry) -> Option<MsgId> {
        let View::Screen(screen) = self else {
            return None;
        };
        let group = entry.group.as_deref().map(group_label);
        Some(screen.message(entry.at_ms, Who::Me { group }, &entry.text))
    }

    /// Whom typed lines go to now.
    pub(crate) fn partner(&self, name: &str) {
        if let View::Screen(screen) = self {
            screen.partner(name);
        }
    }

    /// The state of the link to the relay.
    pub(crate) fn link(&self, link: Link) {
        if let View::Screen(screen) = self {
            screen.link(link);
        }
    }
}
