//! Drawing the model: history pane, status line, input line.
//!
//! A pure function of [`Model`] into a ratatui frame, so tests draw it on
//! ratatui's `TestBackend` and read the cells back. History lines are wrapped
//! here, grapheme by grapheme with their terminal widths, rather than by the
//! `Paragraph` widget: scrolling counts rows, so the model must know how many
//! rows a line takes ([`rows_of`]) exactly as they are drawn.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use super::model::{Entry, Kind, Link, Model, Who};

/// Prompt before the input line.
const PROMPT: &str = "> ";

fn time_style() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn me_style() -> Style {
    Style::new().fg(Color::Green).add_modifier(Modifier::BOLD)
}

fn them_style() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

fn notice_style() -> Style {
    Style::new().fg(Color::Blue)
}

fn warning_style() -> Style {
    Style::new().fg(Color::Yellow)
}

fn mark_style() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

/// The pieces of one history line, each with its style.
fn pieces(e: &Entry) -> Vec<(String, Style)> {
    let mut out = vec![(format!("{} ", e.time), time_style())];
    match &e.kind {
        Kind::Message { who, mark, .. } => {
            let (label, style) = match who {
                Who::Me { group: None } => ("me".to_owned(), me_style()),
                Who::Me { group: Some(g) } => (format!("{g}/me"), me_style()),
                Who::Them { name, group: None } => (name.clone(), them_style()),
                Who::Them {
                    name,
                    group: Some(g),
                } => (format!("{g}/{name}"), them_style()),
            };
            out.push((label, style));
            out.push((": ".to_owned(), Style::new()));
            out.push((e.text.clone(), Style::new()));
            if let Some(mark) = mark {
                out.push((format!(" {}", mark.label()), mark_style()));
            }
        }
        Kind::Notice => out.push((format!("· {}", e.text), notice_style())),
        Kind::Warning => out.push((format!("! {}", e.text), warning_style())),
    }
    out
}

/// The rows `e` takes at `width` columns: broken between words where it
/// can, inside a word longer than a row. Continuation rows are indented past
/// the time when the screen is wide enough, so each message's start stands
/// out.
pub fn rows_of(e: &Entry, width: u16) -> Vec<Line<'static>> {
    let mut rows = Rows {
        width: usize::from(width.max(1)),
        indent: if width >= 40 { e.time.width() + 1 } else { 0 },
        done: Vec::new(),
        row: Vec::new(),
        used: 0,
    };
    for (text, style) in pieces(e) {
        for word in text.split_word_bounds() {
            rows.word(word, style);
        }
    }
    rows.finish()
}

/// Rows being filled.
struct Rows {
    width: usize,
    indent: usize,
    done: Vec<Line<'static>>,
    row: Vec<Span<'static>>,
    used: usize,
}

impl Rows {
    fn new_row(&mut self) {
        self.done.push(Line::from(std::mem::take(&mut self.row)));
        self.row.push(Span::raw(" ".repeat(self.indent)));
        self.used = self.indent;
    }

    fn push(&mut self, text: &str, style: Style, w: usize) {
        match self.row.last_mut() {
            Some(last) if last.style == style && self.used > self.indent => {
                last.content.to_mut().push_str(text)
            }
            _ => self.row.push(Span::styled(text.to_owned(), style)),
        }
        self.used += w;
    }

    fn word(&mut self, word: &str, style: Style) {
        let w = word.width();
        if self.used + w <= self.width {
            return self.push(word, style, w);
        }
        if word.trim().is_empty() {
            // A space where a row breaks is not drawn.
            return self.new_row();
        }
        if self.used > self.indent && w <= self.width.saturating_sub(self.indent) {
            self.new_row();
            return self.push(word, style, w);
        }
        // Longer than a row: cut where it reaches the edge.
        for g in word.graphemes(true) {
            let gw = g.width();
            if self.used + gw > self.width && self.used > self.indent {
                self.new_row();
            }
            self.push(g, style, gw);
        }
    }

    fn finish(mut self) -> Vec<Line<'static>> {
        self.done.push(Line::from(self.row));
        self.done
    }
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame, model: &Model) {
    let [history, status, input] = Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_history(frame, model, history);
    frame.render_widget(Paragraph::new(status_line(model)), status);
    render_input(frame, model, input);
}

fn render_history(frame: &mut Frame, model: &Model, area: Rect) {
    let height = usize::from(area.height);
    // Only the rows that can be seen are wrapped: from the bottom up.
    let want = height + model.scroll;
    let mut rows: Vec<Line<'static>> = Vec::new();
    for e in model.entries.iter().rev() {
        rows.extend(rows_of(e, area.width).into_iter().rev());
        if rows.len() >= want {
            break;
        }
    }
    rows.reverse();
    let scroll = model.scroll.min(rows.len().saturating_sub(height));
    let end = rows.len() - scroll;
    let start = end.saturating_sub(height);
    let shown: Vec<Line<'static>> = rows.drain(start..end).collect();
    frame.render_widget(Paragraph::new(shown), area);
}

fn status_line(model: &Model) -> Line<'static> {
    let bar = Style::new().add_modifier(Modifier::REVERSED);
    let partner = match &model.partner {
        Some(p) => format!(" sotto chat · {p} "),
        None => " sotto chat · nobody yet: /to NAME ".to_owned(),
    };
    let (link, link_style) = match model.link {
        Link::Connecting => ("connecting…", bar.fg(Color::Yellow)),
        Link::Connected => ("connected", bar.fg(Color::Green)),
        Link::Reconnecting => ("reconnecting…", bar.fg(Color::Yellow)),
    };
    let mut spans = vec![
        Span::styled(partner, bar.add_modifier(Modifier::BOLD)),
        Span::styled(format!(" {link} "), link_style),
    ];
    if let Some(transfers) = &model.transfers {
        spans.push(Span::styled(format!(" {transfers} "), bar.fg(Color::Cyan)));
    }
    if model.scroll > 0 {
        let more = match model.unseen {
            0 => " ↑ scrolled · PgDn goes back down ".to_owned(),
            n => format!(" ↑ scrolled · {n} new below · PgDn "),
        };
        spans.push(Span::styled(more, bar.fg(Color::Magenta)));
    }
    if model.ending {
        spans.push(Span::styled(
            " leaving once every message is stored (Ctrl-C again: now) ",
            bar,
        ));
    }
    // The rest of the bar, filled.
    spans.push(Span::styled(" ".repeat(usize::from(model.width)), bar));
    Line::from(spans)
}

fn render_input(frame: &mut Frame, model: &Model, area: Rect) {
    let avail = usize::from(area.width).saturating_sub(PROMPT.len());
    if model.ending {
        frame.render_widget(
            Paragraph::new(Span::styled("(input closed)", time_style())),
            area,
        );
        return;
    }
    if avail == 0 {
        return;
    }
    let text = model.editor.text();
    let cursor_col = model.editor.cursor_column();
    // Scrolled sideways so that the cursor stays on screen.
    let skip = (cursor_col + 1).saturating_sub(avail);
    let mut col = 0;
    let mut first = None;
    let mut visible = String::new();
    for g in text.graphemes(true) {
        let w = g.width();
        if col >= skip {
            let start = *first.get_or_insert(col);
            if col - start + w > avail {
                break;
            }
            visible.push_str(g);
        }
        col += w;
    }
    let start = first.unwrap_or(cursor_col);
    let line = Line::from(vec![Span::styled(PROMPT, me_style()), Span::raw(visible)]);
    frame.render_widget(Paragraph::new(line), area);
    let x = PROMPT.len() + cursor_col.saturating_sub(start);
    let x = u16::try_from(x).unwrap_or(u16::MAX);
    frame.set_cursor_position((area.x.saturating_add(x), area.y));
}
