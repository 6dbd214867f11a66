//! Progress bars: the only place that knows indicatif.
//!
//! The transfer functions report `(done, total)` through a callback; here a
//! callback becomes a bar on stderr, with bytes, rate and time left. Bars are
//! drawn only when stderr is a terminal and `--quiet` was not given; otherwise
//! every bar is hidden and costs nothing. Lines printed while bars are shown
//! go through [`Bars::suspend`] so they do not tear a bar apart.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::display::sanitize;

const FILE_TEMPLATE: &str =
    "{bytes:>10}/{total_bytes:<10} [{bar:25}] {binary_bytes_per_sec:>12} ETA {eta:>4}  {wide_msg}";
const TOTAL_TEMPLATE: &str =
    "{bytes:>10}/{total_bytes:<10} [{bar:25}] {binary_bytes_per_sec:>12} ETA {eta:>4}  total";

/// The bars of one command.
#[derive(Clone)]
pub(crate) struct Bars {
    multi: MultiProgress,
}

impl Bars {
    /// Bars on stderr, unless `quiet` or stderr is not a terminal.
    pub(crate) fn new(quiet: bool) -> Self {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A bar for file `name` of `size` bytes, starting at `done`.
    pub(crate) fn file(&self, name: &str, size: u64, done: u64) -> ProgressBar {
        self.bar(size, done, FILE_TEMPLATE, sanitize(name))
    }

    /// The bar of all files together.
    pub(crate) fn total(&self, size: u64, done: u64) -> ProgressBar {
        self.bar(size, done, TOTAL_TEMPLATE, String::new())
    }

    fn bar(&self, size: u64, done: u64, template: &str, msg: String) -> ProgressBar {
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::hidden())
            .with_style(style)
            .with_message(msg)
            .with_position(done);
        // A resumed transfer starts at what is already there, and the rate
        // counts only what moves now.
        bar.reset_eta();
        let bar = self.multi.add(bar);
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    }

    /// Runs `f` (which prints) with the bars out of the way.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

/// `n` bytes as people read them: `12 B`, `1.50 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bars_still_count() {
        let bars = Bars::new(true);
        let bar = bars.file("a\x1b[2Jb", 100, 40);
        assert_eq!(bar.position(), 40);
        assert_eq!(bar.length(), Some(100));
        assert_eq!(bar.message(), "a\\x1b[2Jb");
        bar.set_position(100);
        assert!(bar.is_hidden());
        assert_eq!(bars.suspend(|| 7), 7);
    }
}
