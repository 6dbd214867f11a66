//! Everything the screen shows, as plain data: the history lines, the input
//! line, how far the history is scrolled, and the status.
//!
//! The terminal thread changes it (an update from the chat, a key) and then
//! draws it; drawing ([`super::view`]) and key handling ([`super::keys`]) are
//! functions of this model alone, so both are tested without a terminal.
//! Every text from outside is neutralised here, once, on the way in.

use std::collections::VecDeque;

use super::editor::Editor;
use crate::display::sanitize;

/// History lines kept on screen; older ones fall off the top (`/history`
/// has them all).
pub const MAX_LINES: usize = 5_000;

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// I did, to a contact, or in a group.
    Me {
        /// The group, for a group message.
        group: Option<String>,
    },
    /// Someone else, shown by the name my contacts give them.
    Them {
        /// Their name (or `unknown sotto1...`).
        name: String,
        /// The group, for a group message.
        group: Option<String>,
    },
}

/// How far one of my messages got, as receipts tell. Ordered: a mark only
/// ever moves forward, so a late "stored" never hides a "read".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// The relay stored it.
    Stored,
    /// The recipient's client got it.
    Delivered,
    /// The recipient's screen showed it.
    Read,
}

impl Mark {
    /// The dim suffix after the message.
    pub fn label(self) -> &'static str {
        match self {
            Mark::Stored => "✓ stored",
            Mark::Delivered => "✓✓ delivered",
            Mark::Read => "✓✓ read",
        }
    }
}

/// A message on the screen, to put a [`Mark`] on later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsgId(pub(super) u64);

/// What a history line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A chat message.
    Message {
        /// Its id, for marks.
        id: MsgId,
        /// Its author.
        who: Who,
        /// How far it got (my messages only).
        mark: Option<Mark>,
    },
    /// Something the program says (connected, command answers).
    Notice,
    /// Something that went wrong.
    Warning,
}

/// One history line (it may wrap over several rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When, as shown.
    pub time: String,
    /// What it is.
    pub kind: Kind,
    /// The text, safe for a terminal.
    pub text: String,
}

/// The state of the link to the relay, for the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Before the first connection.
    Connecting,
    /// Connected.
    Connected,
    /// Lost; trying again.
    Reconnecting,
}

/// The whole screen's state.
#[derive(Debug)]
pub struct Model {
    /// History lines, oldest first.
    pub entries: VecDeque<Entry>,
    /// The input line.
    pub editor: Editor,
    /// How many rows the history is scrolled up from the bottom; 0 follows
    /// new lines.
    pub scroll: usize,
    /// Lines that arrived below while scrolled up.
    pub unseen: usize,
    /// Whom typed lines go to.
    pub partner: Option<String>,
    /// The relay link.
    pub link: Link,
    /// Files being sent or received, as the status line shows them.
    pub transfers: Option<String>,
    /// Ctrl-C or Ctrl-D was pressed: no more input, the chat is ending.
    pub ending: bool,
    /// The terminal's size, for scrolling by pages and wrapping.
    pub width: u16,
    /// See `width`.
    pub height: u16,
}

impl Model {
    /// An empty screen of `width` x `height`.
    pub fn new(partner: Option<String>, width: u16, height: u16) -> Self {
        Self {
            entries: VecDeque::new(),
            editor: Editor::default(),
            scroll: 0,
            unseen: 0,
            partner: partner.map(|p| sanitize(&p)),
            link: Link::Connecting,
            transfers: None,
            ending: false,
            width,
            height,
        }
    }

    /// Rows of the history pane (the rest: status and input lines).
    pub fn history_rows(&self) -> usize {
        usize::from(self.height.saturating_sub(2))
    }

    /// Adds a line at the bottom. Scrolled up, the view stays where it is.
    pub fn push(&mut self, time: String, kind: Kind, text: &str) {
        let entry = Entry {
            time: sanitize(&time),
            kind: match kind {
                Kind::Message { id, who, mark } => Kind::Message {
                    id,
                    who: clean_who(who),
                    mark,
                },
                other => other,
            },
            text: sanitize(text),
        };
        if self.scroll > 0 {
            self.scroll += super::view::rows_of(&entry, self.width).len();
            self.unseen += 1;
        }
        self.entries.push_back(entry);
        if self.entries.len() > MAX_LINES {
            self.entries.pop_front();
        }
        self.clamp_scroll();
    }

    /// Puts `mark` on message `id`, unless it already has a later one.
    pub fn mark(&mut self, id: MsgId, mark: Mark) {
        for e in self.entries.iter_mut().rev() {
            if let Kind::Message {
                id: this, mark: m, ..
            } = &mut e.kind
            {
                if *this == id {
                    *m = (*m).max(Some(mark));
                    return;
                }
            }
        }
    }

    /// Scrolls up (positive) or down (negative) by `rows`.
    pub fn scroll_by(&mut self, rows: isize) {
        self.scroll = self.scroll.saturating_add_signed(rows);
        self.clamp_scroll();
    }

    /// Keeps the view inside the history.
    pub fn clamp_scroll(&mut self) {
        if self.scroll == 0 {
            self.unseen = 0;
            return;
        }
        let total: usize = self
            .entries
            .iter()
            .map(|e| super::view::rows_of(e, self.width).len())
            .sum();
        self.scroll = self.scroll.min(total.saturating_sub(self.history_rows()));
        if self.scroll == 0 {
            self.unseen = 0;
        }
    }

    /// The terminal changed size.
    pub fn resize(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
        self.clamp_scroll();
    }
}

fn clean_who(who: Who) -> Who {
    let clean = |g: Option<String>| g.map(|g| sanitize(&g));
    match who {
        Who::Me { group } => Who::Me {
            group: clean(group),
        },
        Who::Them { name, group } => Who::Them {
            name: sanitize(&name),
            group: clean(group),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64) -> Kind {
        Kind::Message {
            id: MsgId(id),
            who: Who::Me { group: None },
            mark: None,
        }
    }

    #[test]
    fn a_mark_only_moves_forward() {
        let mut m = Model::new(None, 40, 10);
        m.push("t".into(), msg(1), "a");
        m.push("t".into(), msg(2), "b");
        m.mark(MsgId(1), Mark::Read);
        m.mark(MsgId(1), Mark::Stored);
        m.mark(MsgId(2), Mark::Stored);
        m.mark(MsgId(9), Mark::Read);
        let marks: Vec<_> = m
            .entries
            .iter()
            .map(|e| match e.kind {
                Kind::Message { mark, .. } => mark,
                _ => None,
            })
            .collect();
        assert_eq!(marks, [Some(Mark::Read), Some(Mark::Stored)]);
    }

    #[test]
    fn text_from_outside_is_neutralised_on_the_way_in() {
        let mut m = Model::new(Some("b\x1bob".into()), 40, 10);
        m.push(
            "t".into(),
            Kind::Message {
                id: MsgId(1),
                who: Who::Them {
                    name: "eve\x1b[2J".into(),
                    group: Some("g\u{202e}".into()),
                },
                mark: None,
            },
            "hi\nthere",
        );
        assert_eq!(m.partner.as_deref(), Some("b\\x1bob"));
        let e = &m.entries[0];
        assert_eq!(e.text, "hi\\nthere");
        assert_eq!(
            e.kind,
            Kind::Message {
                id: MsgId(1),
                who: Who::Them {
                    name: "eve\\x1b[2J".into(),
                    group: Some("g\\u{202e}".into())
                },
                mark: None
            }
        );
    }

    #[test]
    fn scrolled_up_the_view_stays_put_and_counts_new_lines() {
        let mut m = Model::new(None, 20, 5); // 3 history rows
        for i in 0..10 {
            m.push("t".into(), Kind::Notice, &format!("line {i}"));
        }
        assert_eq!(m.scroll, 0);
        m.scroll_by(4);
        assert_eq!(m.scroll, 4);
        m.push("t".into(), Kind::Notice, "new");
        assert_eq!((m.scroll, m.unseen), (5, 1));
        m.scroll_by(100);
        assert_eq!(m.scroll, 11 - 3, "no further than the first line");
        m.scroll_by(-100);
        assert_eq!((m.scroll, m.unseen), (0, 0));
        m.push("t".into(), Kind::Notice, "followed");
        assert_eq!(m.scroll, 0, "at the bottom, new lines keep it there");
    }

    #[test]
    fn old_lines_fall_off_the_top() {
        let mut m = Model::new(None, 20, 5);
        for i in 0..MAX_LINES + 3 {
            m.push("t".into(), Kind::Notice, &i.to_string());
        }
        assert_eq!(m.entries.len(), MAX_LINES);
        assert_eq!(m.entries[0].text, "3");
    }
}
