//! The screen drawn on ratatui's `TestBackend`, read back cell by cell.

use chrono::TimeZone;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};
use ratatui::Terminal;

use super::model::{Kind, Link, Mark, Model, MsgId, Who};
use super::*;

fn draw(model: &Model) -> Terminal<TestBackend> {
    let mut term = Terminal::new(TestBackend::new(model.width, model.height)).unwrap();
    term.draw(|f| view::render(f, model)).unwrap();
    term
}

/// The rows as text; the cell after a wide character (blank in the
/// buffer) is skipped.
fn rows(term: &Terminal<TestBackend>) -> Vec<String> {
    let buf = term.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            let mut row = String::new();
            let mut skip = 0;
            for x in 0..buf.area.width {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let symbol = buf[(x, y)].symbol();
                skip = editor::columns(symbol).saturating_sub(1);
                row.push_str(symbol);
            }
            row.trim_end().to_owned()
        })
        .collect()
}

/// The cell where `needle` starts on row `y`.
fn find(term: &Terminal<TestBackend>, y: u16, needle: &str) -> u16 {
    let row = &rows(term)[usize::from(y)];
    let at = row
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {row:?}"));
    u16::try_from(editor::columns(&row[..at])).unwrap()
}

fn message(id: u64, who: Who) -> Kind {
    Kind::Message {
        id: MsgId(id),
        who,
        mark: None,
    }
}

fn them(name: &str) -> Who {
    Who::Them {
        name: name.into(),
        group: None,
    }
}

#[test]
fn messages_notices_and_warnings_each_have_a_time_and_their_colour() {
    let mut m = Model::new(Some("bob".into()), 50, 8);
    m.link = Link::Connected;
    m.push("10:00:01".into(), Kind::Notice, "connected; talking to bob");
    m.push(
        "10:00:02".into(),
        message(1, Who::Me { group: None }),
        "hi bob",
    );
    m.push("10:00:03".into(), message(2, them("bob")), "hi alice");
    m.push(
        "10:00:04".into(),
        message(
            3,
            Who::Them {
                name: "carol".into(),
                group: Some("team".into()),
            },
        ),
        "all here",
    );
    m.push("10:00:05".into(), Kind::Warning, "not sent");
    let term = draw(&m);
    let r = rows(&term);
    assert_eq!(
        &r[..5],
        [
            "10:00:01 · connected; talking to bob",
            "10:00:02 me: hi bob",
            "10:00:03 bob: hi alice",
            "10:00:04 team/carol: all here",
            "10:00:05 ! not sent",
        ]
    );
    let buf = term.backend().buffer();
    assert!(
        buf[(0, 1)].modifier.contains(Modifier::DIM),
        "times are dim"
    );
    assert_eq!(buf[(9, 1)].fg, Color::Green, "me");
    assert_eq!(buf[(9, 2)].fg, Color::Cyan, "them");
    assert_eq!(buf[(13, 2)].fg, Color::Reset, "the text itself is plain");
    assert_eq!(buf[(9, 0)].fg, Color::Blue, "notices");
    assert_eq!(buf[(9, 4)].fg, Color::Yellow, "warnings");
    // Status line, then the empty input line with the cursor after the prompt.
    assert!(r[6].starts_with(" sotto chat · bob  connected"), "{}", r[6]);
    assert_eq!(r[7], ">");
}

#[test]
fn a_mark_shows_as_a_dim_suffix_and_only_moves_forward() {
    let mut m = Model::new(Some("bob".into()), 40, 5);
    m.push(
        "10:00:02".into(),
        message(7, Who::Me { group: None }),
        "one",
    );
    m.push(
        "10:00:03".into(),
        message(8, Who::Me { group: None }),
        "two",
    );
    m.mark(MsgId(7), Mark::Stored);
    m.mark(MsgId(8), Mark::Delivered);
    let term = draw(&m);
    let r = rows(&term);
    assert_eq!(r[0], "10:00:02 me: one ✓ stored");
    assert_eq!(r[1], "10:00:03 me: two ✓✓ delivered");
    let x = find(&term, 0, "✓");
    assert!(term.backend().buffer()[(x, 0)]
        .modifier
        .contains(Modifier::DIM));
    m.mark(MsgId(7), Mark::Read);
    m.mark(MsgId(7), Mark::Delivered);
    assert_eq!(rows(&draw(&m))[0], "10:00:02 me: one ✓✓ read");
}

#[test]
fn long_and_wide_lines_wrap_within_the_width() {
    let mut m = Model::new(None, 40, 8);
    // 50 wide characters: 100 columns.
    m.push("10:00:00".into(), message(1, them("bob")), &"你".repeat(50));
    let term = draw(&m);
    let r = rows(&term);
    assert!(r[0].starts_with("10:00:00 bob: 你你"), "{}", r[0]);
    // Continuation rows are indented past the time.
    assert!(r[1].starts_with("         你"), "{:?}", r[1]);
    let shown: usize = r[..4].iter().map(|l| l.matches('你').count()).sum();
    assert_eq!(shown, 50, "nothing lost at the edges");
    for l in &r[..4] {
        assert!(editor::columns(l) <= 40, "{l:?}");
    }
    assert_eq!(view::rows_of(&m.entries[0], 40).len(), 4);
}

#[test]
fn the_history_follows_new_lines_unless_scrolled_up() {
    let mut m = Model::new(None, 80, 6); // 4 history rows
    for i in 0..10 {
        m.push("t".into(), Kind::Notice, &format!("n{i}"));
    }
    let r = rows(&draw(&m));
    assert_eq!(&r[..4], ["t · n6", "t · n7", "t · n8", "t · n9"]);
    m.scroll_by(3);
    m.push("t".into(), Kind::Notice, "n10");
    let r = rows(&draw(&m));
    assert_eq!(
        &r[..4],
        ["t · n3", "t · n4", "t · n5", "t · n6"],
        "stays put"
    );
    assert!(r[4].contains("1 new below"), "{}", r[4]);
    m.scroll_by(-100);
    let r = rows(&draw(&m));
    assert_eq!(r[3], "t · n10");
    assert!(!r[4].contains("new below"));
}

#[test]
fn the_input_line_scrolls_sideways_to_keep_the_cursor_in_view() {
    let mut m = Model::new(None, 12, 4); // 10 columns after "> "
    m.editor.insert("abcdefghijklmnop");
    let mut term = draw(&m);
    assert_eq!(rows(&term)[3], "> hijklmnop");
    term.backend_mut().assert_cursor_position((12 - 1, 3));
    m.editor.home();
    let mut term = draw(&m);
    assert_eq!(rows(&term)[3], "> abcdefghij");
    term.backend_mut().assert_cursor_position((2, 3));
    // Wide characters: the cursor lands after the second one.
    let mut m = Model::new(None, 12, 4);
    m.editor.insert("你好x");
    m.editor.left();
    let mut term = draw(&m);
    assert_eq!(rows(&term)[3], "> 你好x");
    term.backend_mut().assert_cursor_position((6, 3));
}

#[test]
fn a_closed_input_and_a_missing_partner_are_said_on_screen() {
    let mut m = Model::new(None, 120, 4);
    m.link = Link::Reconnecting;
    m.ending = true;
    let r = rows(&draw(&m));
    assert!(r[2].contains("nobody yet: /to NAME"), "{}", r[2]);
    assert!(r[2].contains("reconnecting"), "{}", r[2]);
    assert!(
        r[2].contains("leaving once every message is stored"),
        "{}",
        r[2]
    );
    assert_eq!(r[3], "(input closed)");
}

#[test]
fn a_tiny_terminal_draws_without_panicking() {
    for (w, h) in [(1, 1), (2, 2), (3, 1), (1, 5), (0, 0)] {
        let mut m = Model::new(Some("bob".into()), w.max(1), h.max(1));
        m.push("10:00:00".into(), message(1, them("bob")), "你好 hello");
        m.editor.insert("你好");
        m.scroll_by(3);
        draw(&m);
    }
}

#[test]
fn times_show_the_date_only_for_other_days() {
    let now = Local.with_ymd_and_hms(2024, 5, 6, 12, 0, 0).unwrap();
    let ms = |h, m| {
        u64::try_from(
            Local
                .with_ymd_and_hms(2024, 5, 6, h, m, 7)
                .unwrap()
                .timestamp_millis(),
        )
        .unwrap()
    };
    assert_eq!(time_label(ms(9, 30), now), "09:30:07");
    let yesterday = ms(9, 30) - 86_400_000;
    assert_eq!(time_label(yesterday, now), "2024-05-05 09:30");
    assert_eq!(time_label(u64::MAX, now), "??:??:??");
}

#[test]
fn notices_go_to_the_screen_only_while_one_is_up() {
    // No screen in tests: the caller prints on stderr.
    assert!(!is_active());
    assert!(!notice("hello"));
    assert!(!warning("hello"));
}

#[test]
fn lines_break_between_words_and_cut_only_words_longer_than_a_row() {
    let mut m = Model::new(None, 40, 10);
    let text = "the quick brown fox jumps over the lazy dog, again and again and again";
    m.push("10:00:00".into(), Kind::Notice, text);
    let long = "x".repeat(70);
    m.push("10:00:01".into(), Kind::Notice, &long);
    let r = rows(&draw(&m));
    let first: Vec<&str> = r[..3].iter().map(|l| l.trim()).collect();
    assert_eq!(first.join(" "), format!("10:00:00 · {text}"), "{r:#?}");
    assert!(r[3].starts_with("10:00:01 · xxx"), "{r:#?}");
    let xs: usize = r[3..6].iter().map(|l| l.matches('x').count()).sum();
    assert_eq!(xs, 70);
    for l in &r {
        assert!(editor::columns(l) <= 40, "{l:?}");
    }
}

#[test]
fn log_lines_lose_their_colour_codes_only() {
    assert_eq!(
        strip_colours("\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m fetched"),
        "2026  INFO fetched"
    );
    assert_eq!(strip_colours("a\x1b[2Jb\x1b"), "a\x1b[2Jb\x1b");
    // With no screen up, the logger writes to stderr.
    assert!(!log("x"));
}
