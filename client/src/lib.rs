//! The sotto client: the `sotto` command and the library behind it.
//!
//! The binary (`src/main.rs`) only calls [`main`]; everything else is here so
//! it can be tested. Module map:
//!
//! - [`cli`]: the command line as typed (clap derive), no interpretation;
//! - [`commands`]: one module per subcommand, the only place that prints;
//!   `commands::chat` is the live chat (one long-lived connection,
//!   reconnecting, an outbox resent until stored);
//! - [`home`]: where the files live (`$SOTTO_HOME`, else the config dir);
//! - [`config`]: `config.toml`: name, relay address, pinned relay key;
//! - [`delivery_token`]: my mailbox's delivery token (`delivery.token`),
//!   made at `init` or on first use, rotated locally;
//! - [`identity`]: loading the secret key and getting its passphrase;
//! - [`inbound`]: what I receive: a batch from my mailbox opened,
//!   deduplicated, shown, remembered, acknowledged and answered, for
//!   `inbox`, `chat` and `receive-all` alike;
//! - [`outbox`]: what I send: a name resolved to its recipients, one
//!   envelope sealed per recipient, each routed to its relay
//!   ([`outbox::relay_for`]) and delivered; files too ([`outbox::file`]);
//! - [`relay_client`]: the connection to the relay, with time limits and
//!   errors that say what to do;
//! - [`screen`]: the interactive screen of `sotto chat` on a terminal
//!   (ratatui), and the terminal always given back;
//! - [`seen`]: message ids already shown, so a replay is shown once;
//! - [`sessions`]: the forward-secret session state on disk, and the lock
//!   every change to it (and to the seen store and the offers) holds;
//! - [`offers`]: offers of files not yet received, kept sealed until the
//!   file is in place;
//! - [`routes`]: where an envelope for someone is delivered (their relay,
//!   its key, their token);
//! - [`delivery_pool`]: the delivery links a client writes on, one per relay
//!   and recipient, each with its queue, reconnecting on its own;
//! - [`reach`]: telling contacts where to reach me (relay, key, token) and
//!   taking what they tell me;
//! - [`undelivered`]: envelopes sealed but not yet stored by their relay,
//!   kept sealed until they are;
//! - [`sealed_list`]: the sealed, atomically rewritten list file both use;
//! - [`presence`]: which contacts are online, from their live-only notices;
//! - [`display`]: neutralising control characters from the network, times;
//! - [`history`]: the local record of messages sent and shown, sealed with
//!   the identity (`history.sealed`);
//! - [`upload`]: sending a file: streamed from disk, sealed, pipelined,
//!   resumable, with progress through a callback;
//! - [`upload_state`]: what resuming an interrupted upload needs (0600 files
//!   in `uploads/`);
//! - [`download`]: receiving a file: chunks opened one by one into a
//!   temporary file, verified, then put in place; resumable;
//! - [`download_limits`]: the largest file received, and the free space a
//!   download needs before it starts;
//! - [`safe_name`]: turning a name chosen by a sender into a safe file name;
//! - [`publish`]: putting a verified file in place without ever overwriting one;
//! - [`tree`]: a directory sent as one stream (manifest, then contents), and
//!   unpacked under the chosen directory without leaving it.
//!
//! Errors end up in [`main`] and are printed as one line,
//! `sotto: error: ...`, with exit code 1 (2 for a malformed command line).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

pub mod cli;
pub mod commands;
pub mod config;
pub mod contacts;
pub mod delivery_link;
pub mod delivery_pool;
pub mod delivery_token;
pub mod dial;
pub mod display;
pub mod download;
pub mod download_limits;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod home;
pub mod identity;
pub mod inbound;
pub mod notice;
pub mod offers;
pub mod outbox;
pub mod pairing;
pub mod presence;
pub mod publish;
pub mod reach;
pub mod relay_client;
pub mod routes;
pub mod safe_name;
pub mod screen;
pub mod sealed_list;
pub mod seen;
pub mod sessions;
pub mod tree;
pub mod undelivered;
pub mod upload;
pub mod upload_state;

/// Runs `sotto` with the process's arguments; returns its exit code.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.verbose);
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`sotto inbox | head -1`): nothing to report to.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<commands::AlreadyReported>().is_some() => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sotto: error: {}", error_line(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes as one line, safe for a terminal. A cause whose
/// text its parent already includes is not repeated.
pub fn error_line(e: &anyhow::Error) -> String {
    let cause: &(dyn std::error::Error + 'static) = e.as_ref();
    display::sanitize(&sotto_keys::error::one_line(cause))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Help and version go out as clap prints them; a usage error becomes one
/// line like every other error, with exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
        _ => {
            let _ = writeln!(std::io::stderr(), "sotto: error: {}", usage_line(&e));
            ExitCode::from(2)
        }
    }
}

/// clap's multi-line usage error as one line, with where to find help: the
/// help of the subcommand that was being typed (`sotto contact add --help`).
pub fn usage_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let command = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|usage| {
            usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['<', '[', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| c.starts_with("sotto"))
        .unwrap_or_else(|| "sotto".to_owned());
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let text = parts.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!(
        "{}; see `{} --help`",
        display::sanitize(text),
        display::sanitize(&command)
    )
}

/// Logs to stderr, off unless `-v` or `RUST_LOG` asks.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(match verbose {
            0 => "off",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_target(verbose > 1)
        .try_init();
}

/// Log lines go to stderr, or to the chat's screen while it is up (a raw-mode
/// screen must get no stray writes).
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if screen::log(&String::from_utf8_lossy(buf)) {
            return Ok(buf.len());
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn errors_are_one_line_with_their_causes() {
        let e = anyhow::anyhow!("inner\ncause").context("cannot read x");
        assert_eq!(error_line(&e), "cannot read x: inner; cause");
        let e = anyhow::anyhow!("evil \x1b]0;title\x07");
        assert_eq!(error_line(&e), "evil \\x1b]0;title\\x07");
    }

    #[test]
    fn usage_errors_become_one_line() {
        let e = cli::Cli::command()
            .try_get_matches_from(["sotto", "send", "bob"])
            .unwrap_err();
        let line = usage_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("<TEXT>"), "{line}");
        assert!(line.ends_with("; see `sotto send --help`"), "{line}");
        assert!(!line.starts_with("error:"), "{line}");
        let e = cli::Cli::command()
            .try_get_matches_from(["sotto", "contact", "add", "bob"])
            .unwrap_err();
        assert!(
            usage_line(&e).ends_with("; see `sotto contact add --help`"),
            "{}",
            usage_line(&e)
        );
        let e = cli::Cli::command()
            .try_get_matches_from(["sotto", "--bogus"])
            .unwrap_err();
        assert!(usage_line(&e).ends_with("; see `sotto --help`"));
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_context() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("stdout");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
