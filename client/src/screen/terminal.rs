//! Taking the terminal over and always giving it back.
//!
//! The screen puts the terminal in raw mode on the alternate screen. Left
//! that way, the shell after us would echo nothing and ignore Enter, so the
//! terminal is restored on every way out: the screen's normal end, an error,
//! a panic (a hook that restores before the panic message is printed), and
//! SIGTERM, SIGHUP, SIGINT or SIGQUIT (a thread that restores, then exits as
//! the signal would have). [`restore`] runs at most once per [`enter`],
//! whoever calls it first.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use crossterm::cursor::Show;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::ExecutableCommand;

/// The terminal is ours (raw mode, alternate screen).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Raw mode and the alternate screen; undone by [`restore`].
pub fn enter() -> std::io::Result<()> {
    install_panic_hook();
    TAKEN.store(true, Ordering::SeqCst);
    let taken = enable_raw_mode().and_then(|()| {
        let mut out = std::io::stdout();
        out.execute(EnterAlternateScreen)?;
        Ok(())
    });
    if taken.is_err() {
        restore();
    }
    taken
}

/// Gives the terminal back: raw mode off, main screen, cursor shown.
/// Harmless when the terminal is not taken.
pub fn restore() {
    if !TAKEN.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout();
    let _ = out.execute(LeaveAlternateScreen);
    let _ = out.execute(Show);
    let _ = out.flush();
    let _ = disable_raw_mode();
}

/// Whether the terminal is taken now.
pub fn is_taken() -> bool {
    TAKEN.load(Ordering::SeqCst)
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Restores the terminal, then ends the process with the usual exit code of
/// a process killed by `signal` (128 + its number).
pub fn restore_and_exit(signal: i32) -> ! {
    restore();
    std::process::exit(128 + signal)
}
