//! The interactive screen of `sotto chat` on a terminal.
//!
//! A history pane that scrolls, a status line (whom typed lines go to, the
//! state of the link), and an input line with ordinary editing; colours tell
//! my messages, theirs and the program's notices apart, and every line has
//! its time. Line mode stays what scripts and tests use: the screen only
//! starts when stdin and stdout are both terminals.
//!
//! The chat keeps its loop and its channel of typed lines: Enter hands the
//! edited line over through the same callback a stdin reader would use, and
//! Ctrl-C or Ctrl-D close it like end of input. The chat shows messages
//! through a [`ScreenHandle`]; [`notice`] and [`warning`] let
//! `commands::note` and `commands::warn` land on the screen while it is up,
//! since a stray write to stderr would tear a raw-mode screen apart.
//!
//! The terminal belongs to one thread of its own: it waits for keys
//! (crossterm's blocking `poll`, with a short timeout), applies updates sent
//! by the chat over a channel, and redraws. Nothing there touches the async
//! runtime, which never blocks on the terminal. The model ([`model`]) is
//! plain data; drawing ([`view`]) and keys ([`keys`]) are pure functions of
//! it. Getting the terminal back on every way out is [`terminal`]'s job.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Local};
use crossterm::event::{self, Event};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

pub mod editor;
pub mod keys;
pub mod model;
pub mod terminal;
pub mod view;

pub use keys::KEYS;
pub use model::{Link, Mark, MsgId, Who};

use keys::Action;
use model::{Kind, Model};

/// How long the terminal thread waits for a key before looking at updates:
/// the longest an incoming message waits to be drawn.
const TICK: Duration = Duration::from_millis(25);

/// What the chat (or a signal) tells the terminal thread.
#[derive(Debug)]
enum Update {
    Message {
        id: MsgId,
        at_ms: u64,
        who: Who,
        text: String,
    },
    Mark(MsgId, Mark),
    Notice(String),
    Warning(String),
    Partner(String),
    Link(Link),
    Transfers(Option<String>),
    Signal(i32),
    Stop,
}

/// Where notices go while a screen is up.
static SINK: Mutex<Option<Sender<Update>>> = Mutex::new(None);

fn sink() -> MutexGuard<'static, Option<Sender<Update>>> {
    SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shows `text` as a notice on the screen, if one is up; false otherwise
/// (the caller prints it on stderr).
pub fn notice(text: &str) -> bool {
    send_to_sink(Update::Notice(text.to_owned()))
}

/// Shows `text` as a warning on the screen, if one is up; false otherwise.
pub fn warning(text: &str) -> bool {
    send_to_sink(Update::Warning(text.to_owned()))
}

/// Shows a log line on the screen, if one is up, without its colour codes;
/// false otherwise.
pub fn log(text: &str) -> bool {
    if !is_active() {
        return false;
    }
    let text = strip_colours(text);
    let text = text.trim_end();
    text.is_empty() || notice(text)
}

/// `text` without SGR sequences (`ESC [ ... m`), the only ones the logger
/// writes; anything else left is made visible by the model.
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find(|c: char| !(c.is_ascii_digit() || c == ';')) {
            Some(end) if after[end..].starts_with('m') => rest = &after[end + 1..],
            _ => {
                out.push('\x1b');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Shows what files are moving (`↑ photo.jpg 42%`) on the status line, or
/// nothing with `None`, if a screen is up; false otherwise.
pub fn transfers(text: Option<&str>) -> bool {
    send_to_sink(Update::Transfers(text.map(str::to_owned)))
}

/// Whether a screen is up.
pub fn is_active() -> bool {
    sink().is_some()
}

fn send_to_sink(update: Update) -> bool {
    match &*sink() {
        Some(tx) => tx.send(update).is_ok(),
        None => false,
    }
}

/// Tells the screen what to show. Cheap to clone; does nothing once the
/// screen is gone.
#[derive(Debug, Clone)]
pub struct ScreenHandle {
    tx: Sender<Update>,
    next_id: Arc<AtomicU64>,
}

impl ScreenHandle {
    /// Shows a message sent at `at_ms` (milliseconds since the epoch, the
    /// sender's clock). The id lets receipts put a [`Mark`] on it later.
    pub fn message(&self, at_ms: u64, who: Who, text: &str) -> MsgId {
        let id = MsgId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let _ = self.tx.send(Update::Message {
            id,
            at_ms,
            who,
            text: text.to_owned(),
        });
        id
    }

    /// Marks message `id` as stored, delivered or read (a mark never goes
    /// back: "stored" after "read" changes nothing).
    pub fn mark(&self, id: MsgId, mark: Mark) {
        let _ = self.tx.send(Update::Mark(id, mark));
    }

    /// A notice from the program.
    pub fn notice(&self, text: &str) {
        let _ = self.tx.send(Update::Notice(text.to_owned()));
    }

    /// A warning.
    pub fn warning(&self, text: &str) {
        let _ = self.tx.send(Update::Warning(text.to_owned()));
    }

    /// Whom typed lines go to now.
    pub fn partner(&self, name: &str) {
        let _ = self.tx.send(Update::Partner(name.to_owned()));
    }

    /// The state of the link to the relay.
    pub fn link(&self, link: Link) {
        let _ = self.tx.send(Update::Link(link));
    }
}

/// The screen while it is up; dropping it gives the terminal back.
#[derive(Debug)]
pub struct Screen {
    handle: ScreenHandle,
    thread: Option<JoinHandle<()>>,
}

impl Screen {
    /// Takes the terminal over and starts drawing. Each line entered goes
    /// to `submit`, which returns false once nobody listens; Ctrl-C or
    /// Ctrl-D drop it, which is the chat's end of input.
    pub fn start<F>(partner: Option<&str>, submit: F) -> Result<Screen>
    where
        F: FnMut(String) -> bool + Send + 'static,
    {
        let (width, height) =
            crossterm::terminal::size().context("cannot read the terminal's size")?;
        let (tx, rx) = mpsc::channel();
        terminal::enter().context("cannot set up the terminal")?;
        let term = match Terminal::new(CrosstermBackend::new(std::io::stdout())) {
            Ok(term) => term,
            Err(e) => {
                terminal::restore();
                return Err(anyhow::Error::new(e).context("cannot set up the terminal"));
            }
        };
        *sink() = Some(tx.clone());
        watch_signals();
        let model = Model::new(partner.map(str::to_owned), width, height);
        let thread = std::thread::Builder::new()
            .name("sotto-screen".into())
            .spawn(move || run(term, model, rx, Some(submit)));
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                *sink() = None;
                terminal::restore();
                return Err(anyhow::Error::new(e).context("cannot start the screen"));
            }
        };
        Ok(Screen {
            handle: ScreenHandle {
                tx,
                next_id: Arc::new(AtomicU64::new(1)),
            },
            thread: Some(thread),
        })
    }

    /// A handle to show things with.
    pub fn handle(&self) -> ScreenHandle {
        self.handle.clone()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        *sink() = None;
        let _ = self.handle.tx.send(Update::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        terminal::restore();
    }
}

/// The terminal thread: keys in, updates in, frames out, until told to stop.
fn run<F>(
    mut term: Terminal<CrosstermBackend<std::io::Stdout>>,
    mut model: Model,
    updates: Receiver<Update>,
    mut submit: Option<F>,
) where
    F: FnMut(String) -> bool,
{
    let mut dirty = true;
    loop {
        loop {
            match updates.try_recv() {
                Ok(Update::Stop) | Err(TryRecvError::Disconnected) => return,
                Ok(update) => {
                    apply(&mut model, update);
                    dirty = true;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if dirty {
            if term.draw(|frame| view::render(frame, &model)).is_err() {
                break;
            }
            dirty = false;
        }
        let event = match event::poll(TICK) {
            Ok(false) => continue,
            Ok(true) => event::read(),
            Err(e) => Err(e),
        };
        let Ok(event) = event else { break };
        dirty = true;
        match event {
            Event::Key(key) => match keys::on_key(&mut model, key) {
                Action::Submit(line) => {
                    if let Some(f) = submit.as_mut() {
                        if !f(line) {
                            submit = None;
                        }
                    }
                }
                Action::EndInput => submit = None,
                Action::LeaveNow => {
                    terminal::restore();
                    let _ = writeln!(
                        std::io::stderr(),
                        "sotto: left without waiting for the relay to store what was sent"
                    );
                    std::process::exit(130);
                }
                Action::Redraw => {
                    let _ = term.clear();
                }
                Action::None => {}
            },
            Event::Resize(width, height) => model.resize(width, height),
            _ => {}
        }
    }
    // The terminal failed (it was closed): end the input, so the chat ends,
    // and wait to be told to stop.
    drop(submit);
    terminal::restore();
    loop {
        match updates.recv_timeout(Duration::from_secs(1)) {
            Ok(Update::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Update::Signal(sig)) => terminal::restore_and_exit(sig),
            _ => {}
        }
    }
}

fn apply(model: &mut Model, update: Update) {
    let now = Local::now();
    match update {
        Update::Message {
            id,
            at_ms,
            who,
            text,
        } => model.push(
            time_label(at_ms, now),
            Kind::Message {
                id,
                who,
                mark: None,
            },
            &text,
        ),
        Update::Mark(id, mark) => model.mark(id, mark),
        Update::Notice(text) => model.push(now_label(now), Kind::Notice, &text),
        Update::Warning(text) => model.push(now_label(now), Kind::Warning, &text),
        Update::Partner(name) => model.partner = Some(crate::display::sanitize(&name)),
        Update::Link(link) => model.link = link,
        Update::Transfers(text) => model.transfers = text.map(|t| crate::display::sanitize(&t)),
        Update::Signal(sig) => terminal::restore_and_exit(sig),
        Update::Stop => {}
    }
}

fn now_label(now: DateTime<Local>) -> String {
    now.format("%H:%M:%S").to_string()
}

/// A message's time as shown: the time of day for today's, with the date
/// for older ones (a mailbox may hold messages from days ago), `??` for a
/// date the calendar cannot hold.
pub fn time_label(at_ms: u64, now: DateTime<Local>) -> String {
    let at = i64::try_from(at_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|utc| utc.with_timezone(&Local));
    match at {
        Some(at) if at.date_naive() == now.date_naive() => at.format("%H:%M:%S").to_string(),
        Some(at) => at.format("%Y-%m-%d %H:%M").to_string(),
        None => "??:??:??".to_owned(),
    }
}

/// Restores the terminal on SIGTERM, SIGHUP, SIGINT and SIGQUIT while a
/// screen is up, then ends as the signal would have; with no screen up,
/// the signal gets its default action. One thread for the whole process.
fn watch_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(mut signals) =
            signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT, SIGQUIT])
        else {
            tracing::debug!("cannot watch signals; the terminal is restored on other exits only");
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("sotto-signals".into())
            .spawn(move || {
                // The first signal ends the process.
                if let Some(sig) = signals.forever().next() {
                    if send_to_sink(Update::Signal(sig)) {
                        // The screen thread restores and exits; should it be
                        // stuck, this thread does.
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    terminal::restore();
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            });
        if spawned.is_err() {
            tracing::debug!("cannot start the signal thread");
        }
    });
}

/// A screen without a terminal, for tests of what the chat shows: the
/// updates its handle sends are applied to a model that tests read.
#[cfg(test)]
pub(crate) struct Detached {
    rx: Receiver<Update>,
    model: Model,
}

#[cfg(test)]
impl Detached {
    /// A handle, and the screen it draws on.
    pub(crate) fn new() -> (ScreenHandle, Detached) {
        let (tx, rx) = mpsc::channel();
        let handle = ScreenHandle {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
        };
        (
            handle,
            Detached {
                rx,
                model: Model::new(None, 80, 24),
            },
        )
    }

    /// The model with every update sent so far applied.
    pub(crate) fn model(&mut self) -> &Model {
        while let Ok(update) = self.rx.try_recv() {
            apply(&mut self.model, update);
        }
        &self.model
    }
}

#[cfg(test)]
mod tests;
