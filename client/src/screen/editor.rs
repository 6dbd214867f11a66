//! The input line: a text with a cursor, and the lines typed before.
//!
//! The cursor is a byte offset that always sits on a grapheme boundary, so
//! Left, Right, Backspace and Delete move over what a person sees as one
//! character (an accented letter made of two code points, an emoji with a
//! skin tone) and never split a UTF-8 sequence. Columns are counted with
//! `unicode-width`, so a wide CJK character takes two.
//!
//! Up and Down walk through the lines entered earlier, like a shell; the line
//! being typed is kept aside meanwhile and comes back past the newest one.

use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Longest input line, in bytes: more than any message holds (the chat
/// refuses an overlong one with a clear warning), less than a runaway paste.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// Earlier lines kept for recall.
const RECALL_MAX: usize = 500;

/// Columns `s` takes on a terminal, counted grapheme by grapheme as
/// ratatui lays text out.
pub fn columns(s: &str) -> usize {
    s.graphemes(true).map(UnicodeWidthStr::width).sum()
}

/// The line being edited.
#[derive(Debug, Default, Clone)]
pub struct Editor {
    text: String,
    /// Byte offset, on a grapheme boundary.
    cursor: usize,
    /// Lines entered, oldest first.
    recall: Vec<String>,
    /// Which recalled line is shown, if any.
    recalling: Option<usize>,
    /// The line being typed when recall started.
    draft: String,
}

impl Editor {
    /// The text as typed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor as a byte offset into [`Self::text`].
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The cursor's column: the width of the text before it.
    pub fn cursor_column(&self) -> usize {
        columns(&self.text[..self.cursor])
    }

    /// Inserts `s` at the cursor; refused (false) past [`MAX_INPUT_BYTES`].
    pub fn insert(&mut self, s: &str) -> bool {
        if self.text.len() + s.len() > MAX_INPUT_BYTES {
            return false;
        }
        self.text.insert_str(self.cursor, s);
        self.cursor += s.len();
        // A combining mark joins the grapheme before it: keep the cursor on
        // a boundary.
        self.cursor = self.boundary_at_or_after(self.cursor);
        true
    }

    fn boundary_at_or_after(&self, at: usize) -> usize {
        self.text
            .grapheme_indices(true)
            .map(|(i, _)| i)
            .chain(std::iter::once(self.text.len()))
            .find(|&i| i >= at)
            .unwrap_or(self.text.len())
    }

    fn prev_boundary(&self) -> usize {
        self.text[..self.cursor]
            .grapheme_indices(true)
            .next_back()
            .map_or(0, |(i, _)| i)
    }

    fn next_boundary(&self) -> usize {
        self.text[self.cursor..]
            .graphemes(true)
            .next()
            .map_or(self.cursor, |g| self.cursor + g.len())
    }

    /// One grapheme left.
    pub fn left(&mut self) {
        self.cursor = self.prev_boundary();
    }

    /// One grapheme right.
    pub fn right(&mut self) {
        self.cursor = self.next_boundary();
    }

    /// To the start of the line.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// To the end of the line.
    pub fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Deletes the grapheme before the cursor.
    pub fn backspace(&mut self) {
        let start = self.prev_boundary();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Deletes the grapheme under the cursor.
    pub fn delete(&mut self) {
        let end = self.next_boundary();
        self.text.replace_range(self.cursor..end, "");
    }

    /// Deletes from the start of the line to the cursor (Ctrl-U).
    pub fn kill_to_start(&mut self) {
        self.text.replace_range(..self.cursor, "");
        self.cursor = 0;
    }

    /// Deletes from the cursor to the end of the line (Ctrl-K).
    pub fn kill_to_end(&mut self) {
        self.text.truncate(self.cursor);
    }

    /// Deletes the word before the cursor, and the spaces after it (Ctrl-W).
    pub fn delete_word(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end();
        let start = trimmed
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Enter: the line, now empty, and kept for recall when not blank.
    pub fn take(&mut self) -> String {
        let line = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.recalling = None;
        self.draft.clear();
        if !line.trim().is_empty() && self.recall.last() != Some(&line) {
            if self.recall.len() == RECALL_MAX {
                self.recall.remove(0);
            }
            self.recall.push(line.clone());
        }
        line
    }

    /// Up: the line entered before the one shown.
    pub fn older(&mut self) {
        let next = match self.recalling {
            None if self.recall.is_empty() => return,
            None => {
                self.draft = std::mem::take(&mut self.text);
                self.recall.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.show_recalled(Some(next));
    }

    /// Down: the line entered after the one shown, then the draft again.
    pub fn newer(&mut self) {
        match self.recalling {
            None => {}
            Some(i) if i + 1 < self.recall.len() => self.show_recalled(Some(i + 1)),
            Some(_) => self.show_recalled(None),
        }
    }

    fn show_recalled(&mut self, which: Option<usize>) {
        self.recalling = which;
        self.text = match which {
            Some(i) => self.recall[i].clone(),
            None => std::mem::take(&mut self.draft),
        };
        self.cursor = self.text.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Editor {
        let mut e = Editor::default();
        for c in s.chars() {
            assert!(e.insert(c.encode_utf8(&mut [0; 4])));
        }
        e
    }

    #[test]
    fn inserting_in_the_middle_and_deleting_both_ways() {
        let mut e = typed("helo");
        e.left();
        e.insert("l");
        assert_eq!(e.text(), "hello");
        assert_eq!(e.cursor(), 4);
        e.home();
        e.delete();
        assert_eq!(e.text(), "ello");
        e.end();
        e.backspace();
        assert_eq!(e.text(), "ell");
        assert_eq!(e.cursor(), 3);
        // At the ends, nothing more to delete, and no panic.
        e.delete();
        e.home();
        e.backspace();
        e.left();
        assert_eq!((e.text(), e.cursor()), ("ell", 0));
    }

    #[test]
    fn the_cursor_moves_over_whole_graphemes_and_counts_wide_columns() {
        // "e" + combining acute, a wide CJK character, an emoji with a skin tone.
        let mut e = typed("e\u{301}你👍🏽x");
        let thumb = columns("👍🏽");
        assert_eq!(e.cursor_column(), 1 + 2 + thumb + 1);
        e.left();
        assert_eq!(e.cursor_column(), 3 + thumb);
        e.left();
        assert_eq!(
            e.cursor_column(),
            3,
            "the emoji and its modifier are one step"
        );
        e.backspace();
        assert_eq!(e.text(), "e\u{301}👍🏽x");
        e.home();
        e.right();
        assert_eq!(e.cursor(), "e\u{301}".len());
        e.delete();
        assert_eq!(e.text(), "e\u{301}x");
    }

    #[test]
    fn kill_and_word_deletion() {
        let mut e = typed("one two  three");
        e.delete_word();
        assert_eq!(e.text(), "one two  ");
        e.delete_word();
        assert_eq!(e.text(), "one ");
        e.insert("x y");
        e.left();
        e.kill_to_end();
        assert_eq!(e.text(), "one x ");
        e.left();
        e.kill_to_start();
        assert_eq!((e.text(), e.cursor()), (" ", 0));
    }

    #[test]
    fn up_and_down_recall_earlier_lines_and_keep_the_draft() {
        let mut e = Editor::default();
        e.older();
        assert_eq!(e.text(), "", "nothing to recall yet");
        for l in ["first", "second", "second", "   "] {
            e.insert(l);
            assert_eq!(e.take(), l);
        }
        e.insert("draft");
        e.older();
        assert_eq!(e.text(), "second", "a repeated or blank line is kept once");
        e.older();
        assert_eq!(e.text(), "first");
        e.older();
        assert_eq!(e.text(), "first");
        e.newer();
        assert_eq!(e.text(), "second");
        e.newer();
        assert_eq!((e.text(), e.cursor()), ("draft", 5));
        e.newer();
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn an_overlong_paste_is_refused() {
        let mut e = Editor::default();
        assert!(e.insert(&"a".repeat(MAX_INPUT_BYTES)));
        assert!(!e.insert("b"));
        assert_eq!(e.text().len(), MAX_INPUT_BYTES);
    }
}
