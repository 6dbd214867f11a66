//! Keys: what a key press does to the model, and what it asks of the chat.
//!
//! A pure function, so every binding is tested without a terminal. The
//! bindings follow a shell's line editor where there is one.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::Model;

/// The keys, for `/help` and the README.
pub const KEYS: &[&str] = &[
    "keys: Enter sends · Left/Right, Home/End (Ctrl-A/Ctrl-E) move · Backspace/Delete erase",
    "keys: Ctrl-U/Ctrl-K erase to start/end · Ctrl-W erases a word · Up/Down recall earlier lines",
    "keys: PageUp/PageDown scroll the history a page, Shift-Up/Shift-Down a line",
    "keys: Ctrl-C or Ctrl-D (on an empty line) leave once sent messages are stored; Ctrl-C again leaves at once",
];

/// What a key asks for beyond changing the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing more.
    None,
    /// Enter: hand this line to the chat.
    Submit(String),
    /// End of input, as `/quit`: the chat ends once its sends are stored.
    EndInput,
    /// Leave now, without waiting for the relay.
    LeaveNow,
    /// Ctrl-L: draw everything again.
    Redraw,
}

/// Applies `key` to `model`.
pub fn on_key(model: &mut Model, key: KeyEvent) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let shift = key.modifiers.contains(KeyModifiers::SHIFT);
    let page = isize::try_from(model.history_rows().max(1)).unwrap_or(1);
    match key.code {
        KeyCode::Char('c') if ctrl => return end(model, true),
        KeyCode::Char('d') if ctrl && model.editor.text().is_empty() => return end(model, false),
        KeyCode::Char('l') if ctrl => return Action::Redraw,
        KeyCode::PageUp => model.scroll_by(page),
        KeyCode::PageDown => model.scroll_by(-page),
        KeyCode::Up if shift => model.scroll_by(1),
        KeyCode::Down if shift => model.scroll_by(-1),
        // Once input is closed, the line editor is gone.
        _ if model.ending => {}
        KeyCode::Enter => {
            let line = model.editor.take();
            if !line.is_empty() {
                // What I send I want to see: back to the bottom.
                model.scroll_by(isize::MIN);
                return Action::Submit(line);
            }
        }
        KeyCode::Char('a') if ctrl => model.editor.home(),
        KeyCode::Char('e') if ctrl => model.editor.end(),
        KeyCode::Char('d') if ctrl => model.editor.delete(),
        KeyCode::Char('u') if ctrl => model.editor.kill_to_start(),
        KeyCode::Char('k') if ctrl => model.editor.kill_to_end(),
        KeyCode::Char('w') if ctrl => model.editor.delete_word(),
        KeyCode::Char(_) if ctrl || key.modifiers.contains(KeyModifiers::ALT) => {}
        KeyCode::Char(c) => {
            model.editor.insert(c.encode_utf8(&mut [0; 4]));
        }
        KeyCode::Left => model.editor.left(),
        KeyCode::Right => model.editor.right(),
        KeyCode::Home => model.editor.home(),
        KeyCode::End => model.editor.end(),
        KeyCode::Backspace => model.editor.backspace(),
        KeyCode::Delete => model.editor.delete(),
        KeyCode::Up => model.editor.older(),
        KeyCode::Down => model.editor.newer(),
        _ => {}
    }
    Action::None
}

/// Ctrl-C / Ctrl-D: the first ends input; a second Ctrl-C leaves at once.
fn end(model: &mut Model, ctrl_c: bool) -> Action {
    if !model.ending {
        model.ending = true;
        Action::EndInput
    } else if ctrl_c {
        Action::LeaveNow
    } else {
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::model::Kind;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn type_str(m: &mut Model, s: &str) {
        for c in s.chars() {
            assert_eq!(on_key(m, key(KeyCode::Char(c))), Action::None);
        }
    }

    #[test]
    fn enter_hands_the_edited_line_over_and_clears_it() {
        let mut m = Model::new(None, 40, 10);
        type_str(&mut m, "helo wrld");
        for _ in 0..3 {
            on_key(&mut m, key(KeyCode::Left));
        }
        type_str(&mut m, "o");
        on_key(&mut m, key(KeyCode::Home));
        on_key(&mut m, key(KeyCode::Right));
        on_key(&mut m, key(KeyCode::Right));
        type_str(&mut m, "l");
        on_key(&mut m, key(KeyCode::End));
        on_key(&mut m, key(KeyCode::Backspace));
        type_str(&mut m, "d!");
        on_key(&mut m, ctrl('a'));
        on_key(&mut m, key(KeyCode::Delete));
        type_str(&mut m, "H");
        assert_eq!(
            on_key(&mut m, key(KeyCode::Enter)),
            Action::Submit("Hello world!".into())
        );
        assert_eq!(m.editor.text(), "");
        // An empty Enter sends nothing.
        assert_eq!(on_key(&mut m, key(KeyCode::Enter)), Action::None);
        // Up brings the line back, ready to send again.
        on_key(&mut m, key(KeyCode::Up));
        assert_eq!(
            on_key(&mut m, key(KeyCode::Enter)),
            Action::Submit("Hello world!".into())
        );
    }

    #[test]
    fn control_keys_edit_and_are_never_typed() {
        let mut m = Model::new(None, 40, 10);
        type_str(&mut m, "one two");
        on_key(&mut m, ctrl('w'));
        assert_eq!(m.editor.text(), "one ");
        on_key(&mut m, ctrl('x'));
        on_key(&mut m, KeyEvent::new(KeyCode::Char('b'), KeyModifiers::ALT));
        assert_eq!(m.editor.text(), "one ");
        on_key(&mut m, ctrl('a'));
        on_key(&mut m, ctrl('d'));
        assert_eq!(m.editor.text(), "ne ", "Ctrl-D on a line deletes");
        on_key(&mut m, ctrl('k'));
        assert_eq!(m.editor.text(), "");
        assert!(!m.ending);
        // Capitals come with Shift.
        on_key(
            &mut m,
            KeyEvent::new(KeyCode::Char('Q'), KeyModifiers::SHIFT),
        );
        assert_eq!(m.editor.text(), "Q");
        on_key(&mut m, ctrl('u'));
        assert_eq!(on_key(&mut m, ctrl('l')), Action::Redraw);
    }

    #[test]
    fn ctrl_d_on_an_empty_line_or_ctrl_c_end_input_and_a_second_ctrl_c_leaves() {
        let mut m = Model::new(None, 40, 10);
        assert_eq!(on_key(&mut m, ctrl('d')), Action::EndInput);
        assert!(m.ending);
        // Input is closed: typing and Enter do nothing.
        type_str(&mut m, "late");
        assert_eq!(on_key(&mut m, key(KeyCode::Enter)), Action::None);
        assert_eq!(on_key(&mut m, ctrl('d')), Action::None);
        assert_eq!(on_key(&mut m, ctrl('c')), Action::LeaveNow);

        let mut m = Model::new(None, 40, 10);
        type_str(&mut m, "unsent");
        assert_eq!(on_key(&mut m, ctrl('c')), Action::EndInput);
    }

    #[test]
    fn page_and_shift_arrows_scroll_the_history() {
        let mut m = Model::new(None, 40, 7); // 5 history rows
        for i in 0..30 {
            m.push("t".into(), Kind::Notice, &i.to_string());
        }
        on_key(&mut m, key(KeyCode::PageUp));
        assert_eq!(m.scroll, 5);
        on_key(&mut m, KeyEvent::new(KeyCode::Up, KeyModifiers::SHIFT));
        assert_eq!(m.scroll, 6);
        on_key(&mut m, KeyEvent::new(KeyCode::Down, KeyModifiers::SHIFT));
        on_key(&mut m, key(KeyCode::PageDown));
        assert_eq!(m.scroll, 0);
        on_key(&mut m, key(KeyCode::PageUp));
        type_str(&mut m, "x");
        on_key(&mut m, key(KeyCode::Enter));
        assert_eq!(m.scroll, 0, "sending goes back to the bottom");
        // Released keys are ignored.
        let mut up = key(KeyCode::PageUp);
        up.kind = KeyEventKind::Release;
        on_key(&mut m, up);
        assert_eq!(m.scroll, 0);
    }
}
