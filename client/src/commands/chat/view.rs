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

use crate::display::group_label;
use crate::history::{Direction, Entry};
use crate::screen::{Link, Mark, MsgId, ScreenHandle, Who};

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

    /// How far one of my messages got (receipts).
    pub(crate) fn mark(&self, id: MsgId, mark: Mark) {
        if let View::Screen(screen) = self {
            screen.mark(id, mark);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::model::{Kind, Link};
    use crate::screen::Detached;
    use sotto_keys::SecretKey;

    fn entry(
        direction: Direction,
        peer: Option<sotto_keys::PublicKey>,
        group: Option<&str>,
    ) -> Entry {
        Entry {
            at_ms: 1_700_000_000_000,
            direction,
            peer,
            group: group.map(str::to_owned),
            text: "hi".into(),
        }
    }

    #[test]
    fn received_messages_show_their_author_by_contact_name_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let bob = SecretKey::generate().public();
        let stranger = SecretKey::generate().public();
        let path = dir.path().join("contacts.toml");
        std::fs::write(&path, format!("[contacts.bob]\nkey = \"{bob}\"\n")).unwrap();
        let book = ContactBook::load(&path).unwrap();
        let (handle, mut screen) = Detached::new();
        let view = View::Screen(handle);

        let messages = [
            entry(Direction::Received, Some(bob), None),
            entry(Direction::Received, Some(bob), Some("te/am")),
            entry(Direction::Received, Some(stranger), None),
        ];
        let mut printer = view.printer();
        for _ in &messages {
            printer.line("[time] line as printed").unwrap();
        }
        view.received(&book, &messages, printer);
        let whos: Vec<Who> = screen
            .model()
            .entries
            .iter()
            .map(|e| match &e.kind {
                Kind::Message { who, .. } => who.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            whos,
            [
                Who::Them {
                    name: "bob".into(),
                    group: None
                },
                Who::Them {
                    name: "bob".into(),
                    group: Some("te_am".into())
                },
                Who::Them {
                    name: format!("unknown {stranger}"),
                    group: None
                },
            ]
        );

        // A line that is not a message (a file waiting) is shown as printed.
        let mut printer = view.printer();
        printer
            .line("[time] bob: sent a file: x (1 bytes)")
            .unwrap();
        view.received(&book, &[], printer);
        let last = screen.model().entries.back().unwrap().clone();
        assert_eq!(last.kind, Kind::Notice);
        assert_eq!(last.text, "[time] bob: sent a file: x (1 bytes)");

        view.partner("carol");
        view.link(Link::Reconnecting);
        let model = screen.model();
        assert_eq!(model.partner.as_deref(), Some("carol"));
        assert_eq!(model.link, Link::Reconnecting);
    }

    #[test]
    fn what_i_send_is_shown_as_mine_on_the_screen_only() {
        let sent = entry(Direction::Sent, None, Some("team"));
        assert_eq!(View::Lines.sent(&sent), None);
        let (handle, mut screen) = Detached::new();
        let view = View::Screen(handle);
        let id = view.sent(&sent).unwrap();
        let e = screen.model().entries[0].clone();
        assert_eq!(
            e.kind,
            Kind::Message {
                id,
                who: Who::Me {
                    group: Some("team".into())
                },
                mark: None
            }
        );
        assert_eq!(e.text, "hi");
    }
}
