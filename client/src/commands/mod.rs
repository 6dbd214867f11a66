//! One module per subcommand; this one dispatches and holds what they share.
//!
//! Commands print data on stdout (through [`Out`], which reports a closed pipe
//! instead of panicking) and messages on stderr ([`note`], [`warn`]); they
//! return errors for `lib.rs` to print as one line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command, ContactCommand, RelayCommand, TokenCommand};
use crate::home::Home;
use crate::notice::Notice;

mod bars;
pub mod chat;
pub mod contact;
pub mod files;
pub mod history;
pub mod id;
pub mod inbox;
pub mod init;
pub mod pair;
mod pending;
pub mod receive_all;
pub mod relay;
pub mod send;
pub mod send_file;
pub mod token;

/// What every command may need from the global flags.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The sotto home.
    pub home: Home,
    /// `--passphrase-file`.
    pub passphrase_file: Option<PathBuf>,
}

/// Runs the command the user asked for.
pub fn run(cli: Cli) -> Result<()> {
    // Neither needs a home.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man_pages(dir),
        _ => {}
    }
    let ctx = Ctx {
        home: Home::resolve(cli.home)?,
        passphrase_file: cli.passphrase_file,
    };
    match cli.command {
        Command::Init(args) => init::run(&ctx, args),
        Command::Pair(args) => pair::run(&ctx, args),
        Command::Relay(RelayCommand::Set { addr, key, nodes }) => {
            relay::set(&ctx, &addr, &key, &nodes)
        }
        Command::Id(args) => id::run(&ctx, args),
        Command::Contact(ContactCommand::Add(args)) => contact::add(&ctx, args),
        Command::Contact(ContactCommand::List) => contact::list(&ctx),
        Command::Contact(ContactCommand::Remove { name }) => contact::remove(&ctx, &name),
        Command::Contact(ContactCommand::Verify { name, confirm }) => {
            contact::verify(&ctx, &name, confirm)
        }
        Command::Send(args) => send::run(&ctx, args),
        Command::Inbox => inbox::run(&ctx),
        Command::Chat(args) => chat::run(&ctx, args),
        Command::History(args) => history::run(&ctx, args),
        Command::SendFile(args) => send_file::run(&ctx, args),
        Command::ReceiveAll(args) => receive_all::run(&ctx, args),
        Command::Files(args) => files::run(&ctx, args),
        Command::Token(TokenCommand::Rotate) => token::rotate(&ctx),
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

/// Runs a long-lived command (the chat) on a multi-threaded runtime, so
/// that the reading of its link goes on while it waits on local files.
pub(crate) fn block_on_threaded<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

/// A failure already explained on stderr, line by line: `lib.rs` exits 1
/// without printing anything more.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);

/// Runs the network part of a command on a single-threaded runtime: one
/// connection, one request at a time, nothing to spread over threads.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

/// Standard output, line by line, flushed at the end.
pub(crate) struct Out {
    inner: std::io::StdoutLock<'static>,
}

impl Out {
    pub(crate) fn new() -> Self {
        Self {
            inner: std::io::stdout().lock(),
        }
    }

    /// Writes one line. A closed pipe comes back as an error (`lib.rs` ends
    /// quietly on it), never as a panic.
    pub(crate) fn line(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.inner, "{line}")
    }

    /// Pushes everything written so far out.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A message for the person at the terminal, on stderr (on the chat's
/// screen while it is up).
pub(crate) fn note(msg: &str) {
    if crate::screen::notice(msg) {
        return;
    }
    let _ = writeln!(std::io::stderr(), "sotto: {msg}");
}

/// A warning, on stderr (on the chat's screen while it is up).
pub(crate) fn warn(msg: &str) {
    if crate::screen::warning(msg) {
        return;
    }
    let _ = writeln!(std::io::stderr(), "sotto: warning: {msg}");
}

/// Shows what the library had to say, as a note or a warning.
pub(crate) fn tell(notice: &Notice) {
    match notice {
        Notice::Note(text) => note(text),
        Notice::Warning(text) => warn(text),
    }
}

/// Says that one fetch could not hold the whole mailbox.
pub(crate) fn more_waiting(command: &str) {
    note(&format!(
        "more is waiting on the relay than one run takes; run `{command}` again for the rest"
    ));
}

/// A line of output for the person at the terminal, without the `sotto:`
/// prefix, on stderr (on the chat's screen while it is up).
pub(crate) fn say(line: &str) {
    if crate::screen::notice(line) {
        return;
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Registers my token with my relay `pin` and tells every contact where
/// to reach me now (after `relay set` moved me, or `token rotate`).
pub(crate) fn tell_contacts(
    ctx: &Ctx,
    pin: &crate::config::RelayPin,
    book: &sotto_keys::ContactBook,
) -> Result<()> {
    let me = crate::identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let mine = crate::reach::mine(&ctx.home, pin)?;
    let sessions = crate::sessions::SessionFiles::of(&ctx.home);
    let first_contact = crate::config::Config::load(&ctx.home.config())?.accepts_first_contact();
    let registered = {
        let (pin, me, mine, sessions) = (pin.clone(), me.clone(), mine.clone(), sessions.clone());
        block_on(async move {
            let mut conn = crate::relay_client::connect(&pin, &me).await?;
            crate::reach::register(&mut conn, &sessions, &me, &mine, first_contact).await?;
            conn.close().await;
            Ok::<(), crate::relay_client::RelayError>(())
        })?
    };
    if let Err(e) = registered {
        warn(&format!(
            "{}; your token is registered there by the next `sotto inbox` or `chat`",
            crate::error_line(&anyhow::Error::new(e))
        ));
    }
    let sealed = crate::outbox::seal_reach_for_all(&sessions, &me, book, pin, &mine)?;
    let told = sealed
        .iter()
        .map(|s| s.to)
        .collect::<std::collections::HashSet<_>>();
    let done = block_on(crate::outbox::deliver(&sessions, &me, pin, sealed))??;
    for e in &done.refused {
        warn(&crate::error_line(e));
    }
    note(&format!(
        "told {} contact(s) end to end where to reach you now",
        told.len()
    ));
    if done.kept > 0 {
        warn(&format!(
            "{}; the rest are kept and go with the next `sotto send` or `chat`",
            done.kept_because
                .unwrap_or_else(|| "some contacts' relays could not be reached".into())
        ));
    }
    Ok(())
}

/// `sotto completions SHELL`: the script on stdout, from the same clap
/// definitions the command line is parsed with.
fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "sotto", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
        .context("cannot write the completion script to stdout")
}

/// `sotto man --dir DIR`: one page per command, `sotto.1`, `sotto-send.1`,
/// `sotto-contact-add.1`, as `man` finds them.
fn man_pages(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = 0;
    let mut todo = vec![(String::from("sotto"), Cli::command())];
    while let Some((name, cmd)) = todo.pop() {
        let cmd = cmd.name(name.clone());
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                todo.push((format!("{name}-{}", sub.get_name()), sub.clone()));
            }
        }
        // A group (`sotto relay`) has no page of its own: its commands do,
        // and `sotto-relay.1` is the relay binary's.
        if name != "sotto" && cmd.has_subcommands() {
            continue;
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .with_context(|| format!("cannot render the man page of {name}"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        written += 1;
    }
    note(&format!("wrote {written} man pages into {}", dir.display()));
    Ok(())
}
