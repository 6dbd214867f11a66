//! Progress bars: the only place that knows indicatif.
//!
//! The transfer functions report `(done, total)` through a callback; here a
//! callback becomes a bar on stderr: the name (shortened in the middle to fit
//! the terminal, its extension kept), the percentage, bytes, the rate, the
//! time taken and the time left. Bars are drawn only when stderr is a
//! terminal and `--quiet` was not given; otherwise every bar is hidden and
//! costs nothing. Lines printed while bars are shown go through
//! [`Bars::suspend`] so they do not tear a bar apart.
//!
//! A resumed transfer starts at what was already there, and the rate (and
//! so the time left) counts only the bytes moved since the bar began
//! ([`rate`]): what an earlier run moved took no time in this one. A bar
//! that finishes leaves a summary line behind (size, time, average rate).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use unicode_width::UnicodeWidthChar;

use crate::display::sanitize;

/// Columns of a bar line besides the name, without the graphical bar:
/// ` 100%  412.00 MiB/1.00 GiB     412.00 MiB/s  59m ETA 59m`.
const FIXED_COLUMNS: usize = 53;
/// Terminal columns assumed when the width cannot be read.
const DEFAULT_COLUMNS: usize = 80;
/// Fewest columns a name is shortened to.
const MIN_NAME_COLUMNS: usize = 12;
/// From this width on, a graphical bar is drawn too.
const WIDE: usize = 110;

/// The bars of one command.
#[derive(Clone)]
pub(crate) struct Bars {
    multi: MultiProgress,
    shown: bool,
    columns: usize,
}

impl Bars {
    /// Bars on stderr, unless `quiet` or stderr is not a terminal.
    pub(crate) fn new(quiet: bool) -> Self {
        let shown = !quiet && std::io::stderr().is_terminal();
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let columns = crossterm::terminal::size()
            .map(|(w, _)| usize::from(w))
            .unwrap_or(DEFAULT_COLUMNS);
        Self {
            multi: MultiProgress::with_draw_target(target),
            shown,
            columns,
        }
    }

    /// A bar for file `name` of `size` bytes, starting at `done` (what an
    /// earlier attempt left).
    pub(crate) fn file(&self, name: &str, size: u64, done: u64) -> FileBar {
        let name = sanitize(name);
        let shown = fit_name(&name, name_columns(self.columns));
        FileBar {
            bar: self.bar(size, done, shown),
            name,
            size,
            start: done,
            began: Instant::now(),
            bars: self.clone(),
        }
    }

    /// The bar of all files together; its message says which file is on
    /// (set through [`Bars::label`]).
    pub(crate) fn total(&self, size: u64, done: u64) -> ProgressBar {
        self.bar(size, done, self.label("total"))
    }

    /// `text` as a bar's message, fitted to the name's columns.
    pub(crate) fn label(&self, text: &str) -> String {
        fit_name(text, name_columns(self.columns))
    }

    fn bar(&self, size: u64, done: u64, msg: String) -> ProgressBar {
        let start = done;
        let style = ProgressStyle::with_template(&template(self.columns))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
            .with_key(
                "moved_rate",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let text = match rate(s.pos(), start, s.elapsed()) {
                        Some(r) => format!("{}/s", human_bytes(r as u64)),
                        None => "-".to_owned(),
                    };
                    let _ = w.write_str(&text);
                },
            )
            .with_key(
                "left",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let left = s.len().unwrap_or(0).saturating_sub(s.pos());
                    let text = if left == 0 {
                        "0s".to_owned()
                    } else {
                        rate(s.pos(), start, s.elapsed())
                            .map(|r| short_duration(Duration::from_secs_f64(left as f64 / r)))
                            .unwrap_or_else(|| "-".to_owned())
                    };
                    let _ = w.write_str(&text);
                },
            );
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::hidden())
            .with_style(style)
            .with_message(msg)
            .with_position(done);
        let bar = self.multi.add(bar);
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    }

    /// Runs `f` (which prints) with the bars out of the way.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

/// One file's bar.
pub(crate) struct FileBar {
    bar: ProgressBar,
    name: String,
    size: u64,
    start: u64,
    began: Instant,
    bars: Bars,
}

impl FileBar {
    /// `done` bytes are there.
    pub(crate) fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Bytes there now.
    #[cfg(test)]
    pub(crate) fn position(&self) -> u64 {
        self.bar.position()
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Clears the bar; if the file is complete, leaves its summary line
    /// (where bars are drawn).
    pub(crate) fn finish(self, complete: bool) {
        self.bar.finish_and_clear();
        if complete && self.bars.shown {
            let line = summary(
                &self.name,
                self.size,
                self.size.saturating_sub(self.start),
                self.began.elapsed(),
            );
            self.bars.suspend(|| super::note(&line));
        }
    }

    #[cfg(test)]
    fn bar(&self) -> &ProgressBar {
        &self.bar
    }
}

/// The template for a terminal `columns` wide.
fn template(columns: usize) -> String {
    let bar = if columns >= WIDE { " [{bar:20}]" } else { "" };
    format!(
        "{{msg}} {{percent:>3}}%{bar} {{bytes:>10}}/{{total_bytes:<10}} {{moved_rate:>12}} {{elapsed:>3}} ETA {{left:>3}}"
    )
}

/// Columns left for the name on a line `columns` wide.
fn name_columns(columns: usize) -> usize {
    let fixed = FIXED_COLUMNS + if columns >= WIDE { 23 } else { 0 };
    columns.saturating_sub(fixed + 1).max(MIN_NAME_COLUMNS)
}

/// Bytes per second of a transfer at `pos` that began this run at `start`
/// (what an earlier run left) `elapsed` ago: only the bytes moved in this
/// run count. `None` before any time has passed or anything moved.
pub(crate) fn rate(pos: u64, start: u64, elapsed: Duration) -> Option<f64> {
    let moved = pos.saturating_sub(start);
    let secs = elapsed.as_secs_f64();
    (secs > 0.0 && moved > 0).then(|| moved as f64 / secs)
}

/// `name` in at most `columns` terminal columns, padded to exactly that: a
/// long name loses its middle (`holiday-ph…-2026.mp4`), keeping the
/// extension and as much of both ends as fits.
pub(crate) fn fit_name(name: &str, columns: usize) -> String {
    let width = |s: &str| s.chars().map(|c| c.width().unwrap_or(0)).sum::<usize>();
    let w = width(name);
    if w <= columns {
        return format!("{name}{}", " ".repeat(columns - w));
    }
    let (stem, ext) = crate::safe_name::split_extension(name);
    let ext = if width(ext) + 4 <= columns / 2 {
        ext
    } else {
        ""
    };
    let stem = if ext.is_empty() { name } else { stem };
    // One column for the ellipsis; the rest split between the two ends.
    let room = columns.saturating_sub(width(ext) + 1);
    let head_room = room.div_ceil(2);
    let mut head = String::new();
    let mut used = 0;
    for c in stem.chars() {
        let cw = c.width().unwrap_or(0);
        if used + cw > head_room {
            break;
        }
        head.push(c);
        used += cw;
    }
    let tail_room = room - used;
    let mut tail: Vec<char> = Vec::new();
    let mut tail_used = 0;
    for c in stem.chars().rev() {
        let cw = c.width().unwrap_or(0);
        if tail_used + cw > tail_room {
            break;
        }
        tail.push(c);
        tail_used += cw;
    }
    let tail: String = tail.into_iter().rev().collect();
    let out = format!("{head}…{tail}{ext}");
    let pad = columns.saturating_sub(width(&out));
    format!("{out}{}", " ".repeat(pad))
}

/// The line left when a file is done: its size, the time this run took and
/// the average rate of what moved in it.
pub(crate) fn summary(name: &str, size: u64, moved: u64, elapsed: Duration) -> String {
    let mut line = format!(
        "{name}: {} in {}",
        human_bytes(size),
        short_duration(elapsed)
    );
    match rate(moved, 0, elapsed) {
        Some(r) if moved == size => {
            let _ = write!(line, ", {}/s", human_bytes(r as u64));
        }
        Some(r) => {
            let _ = write!(
                line,
                " ({} of it now, {}/s)",
                human_bytes(moved),
                human_bytes(r as u64)
            );
        }
        None => {}
    }
    line
}

pub(crate) use crate::outbox::file::resuming;

/// `d` in its largest units: `850ms`, `12.3s`, `4m05s`, `2h10m`.
fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

pub(crate) use crate::display::human_bytes;

/// The total bar's message while file `n` (from 1) of `count` is on.
pub(crate) fn file_of(n: usize, count: usize) -> String {
    format!("total, file {n} of {count}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bars_still_count() {
        let bars = Bars::new(true);
        let bar = bars.file("a\x1b[2Jb", 100, 40);
        assert_eq!(bar.position(), 40);
        assert_eq!(bar.bar().length(), Some(100));
        assert!(bar.bar().message().starts_with("a\\x1b[2Jb"));
        bar.set(100);
        assert!(bar.bar().is_hidden());
        bar.finish(true);
        assert_eq!(bars.suspend(|| 7), 7);
    }

    #[test]
    fn the_rate_counts_only_what_moved_in_this_run() {
        // 1 GiB was there from an earlier run; 10 MiB moved in 2 s now.
        let start = 1 << 30;
        let pos = start + (10 << 20);
        let r = rate(pos, start, Duration::from_secs(2)).unwrap();
        // Not 517 MiB/s, which counting what was there would read.
        assert_eq!(r, (5 << 20) as f64);
        assert_eq!(rate(start, start, Duration::from_secs(3)), None);
        assert_eq!(rate(5, 0, Duration::ZERO), None);
        assert_eq!(rate(3, 9, Duration::from_secs(1)), None);
    }

    #[test]
    fn long_names_lose_their_middle_and_keep_their_extension() {
        let name = "holiday-photos-from-the-whole-summer-2026-final.mp4";
        let fitted = fit_name(name, 24);
        assert_eq!(fitted, "holiday-ph…026-final.mp4");
        assert_eq!(fitted.chars().count(), 24, "{fitted}");
        assert!(fitted.starts_with("holiday-ph"), "{fitted}");
        assert!(fitted.ends_with("final.mp4"), "{fitted}");
        assert!(fitted.contains('…'));
        // Short names are padded, so columns line up.
        assert_eq!(fit_name("a.txt", 8), "a.txt   ");
        // Wide characters count two columns.
        let wide = fit_name("你好你好你好你好你好.txt", 12);
        let cols: usize = wide.chars().map(|c| c.width().unwrap_or(0)).sum();
        assert_eq!(cols, 12, "{wide}");
        assert!(wide.trim_end().ends_with(".txt"), "{wide}");
        // At 80 columns a name keeps well over 7 characters.
        assert!(name_columns(80) >= 25, "{}", name_columns(80));
    }

    #[test]
    fn a_summary_gives_size_time_and_rate() {
        assert_eq!(
            summary("a.bin", 10 << 20, 10 << 20, Duration::from_secs(2)),
            "a.bin: 10.00 MiB in 2.0s, 5.00 MiB/s"
        );
        assert_eq!(
            summary("a.bin", 10 << 20, 4 << 20, Duration::from_secs(2)),
            "a.bin: 10.00 MiB in 2.0s (4.00 MiB of it now, 2.00 MiB/s)"
        );
        assert_eq!(
            resuming("big.iso", 412 << 20, 1 << 30),
            "resuming big.iso at 412.00 MiB of 1.00 GiB"
        );
        assert_eq!(short_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(file_of(2, 5), "total, file 2 of 5");
    }
}
