//! `sotto receive-all [--dir DIR] [--from NAME] [--from-strangers]`: empty
//! the mailbox, files included.
//!
//! 1. The mailbox is emptied into the home ([`super::pending`]): text
//!    messages printed, file offers kept with those kept earlier.
//! 2. The offers chosen are downloaded: every contact's, or only NAME's
//!    with `--from`; a stranger's (a key not in contacts.toml) only with
//!    `--from-strangers`, else it is counted in one note and stays, listed by
//!    `sotto files`. Up to [`PARALLEL`] at once, each on its own connection,
//!    into DIR ([`crate::download`]: chunk by chunk into a temporary file,
//!    verified, published under a sanitised name that never replaces an
//!    existing file; a tree unpacked under its directory).
//! 3. For each file safely in place: its offer leaves the home, its blob is
//!    deleted from the relay, and one line is printed:
//!    `[time] NAME: received FILE (SIZE bytes) -> PATH`.
//!
//! A file that fails (verification, connection, disk) is reported on its own
//! line, `sotto: error: FILE: ...`, and its offer stays in the home and its
//! blob on the relay, so the next `receive-all` tries again (resuming a
//! download that was cut). A file the relay no longer has (expired, deleted)
//! is reported once and its offer dropped: no later run could get it. The
//! other files carry on; the exit status is 1 if any failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sotto_keys::{ContactBook, PublicKey, SecretKey};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::bars::{resuming, Bars, FileBar};
use super::pending::{self, forget, Waiting};
use super::{block_on, note, warn, AlreadyReported, Ctx, Out};
use crate::cli::ReceiveAllArgs;
use crate::config::RelayPin;
use crate::display::sanitize;
use crate::download::{self, DownloadError};
use crate::download_limits::DownloadLimits;
use crate::relay_client::{self, RelayError};
use crate::sessions::SessionFiles;
use sotto_crypto::wire::ErrorCode;

/// Files downloaded at once.
pub const PARALLEL: usize = 4;

/// Runs `sotto receive-all`.
pub fn run(ctx: &Ctx, mut args: ReceiveAllArgs) -> Result<()> {
    args.dir = crate::home::expand_tilde(&args.dir);
    check_dir(&args.dir)?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    let from = match &args.from {
        None => None,
        Some(name) => Some(from_contact(&book, name)?),
    };
    let opened = pending::open(ctx)?;
    let limits = DownloadLimits::from_config(&opened.config);
    let bars = Bars::new(args.quiet);
    let dir = args.dir;
    let choice = Choice {
        from,
        strangers: args.from_strangers,
    };

    block_on(async move {
        let collected = pending::collect(&opened, "sotto receive-all").await?;
        let (files, left): (Vec<_>, Vec<_>) =
            collected.waiting.into_iter().partition(|w| choice.takes(w));
        let strangers = left.iter().filter(|w| !w.contact).count();
        if strangers > 0 {
            note(&strangers_note(strangers));
        }
        if files.is_empty() {
            if collected.shown == 0 && left.is_empty() {
                note("no new messages or files");
            }
            return Ok(());
        }
        receive_files(
            &opened.holders,
            &opened.me,
            &opened.store,
            &dir,
            &limits,
            files,
            &bars,
        )
        .await
    })?
}

/// Which offers a run downloads.
struct Choice {
    /// Only this contact's (`--from`), else every contact's.
    from: Option<PublicKey>,
    /// Strangers' too (`--from-strangers`).
    strangers: bool,
}

impl Choice {
    fn takes(&self, w: &Waiting) -> bool {
        if !w.contact {
            return self.strangers;
        }
        self.from.is_none_or(|key| key == w.offer.sender)
    }
}

/// The key of contact `name`, for `--from`.
fn from_contact(book: &ContactBook, name: &str) -> Result<PublicKey> {
    match book.get(name) {
        Some(contact) => Ok(contact.key),
        None => bail!(
            "no contact named {}; `sotto contact list` shows them, `sotto files` shows who sent what",
            sanitize(name)
        ),
    }
}

/// What is said of the strangers' offers left waiting.
fn strangers_note(n: usize) -> String {
    let what = if n == 1 {
        "a file from a stranger (a key not in your contacts) waits".to_owned()
    } else {
        format!("{n} files from strangers (keys not in your contacts) wait")
    };
    format!(
        "{what}: `sotto files` lists them, `sotto receive-all --from-strangers` receives them, `sotto files --reject ID` deletes one"
    )
}

/// DIR must be an existing directory.
pub(crate) fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!(
            "{} is not a directory; name the directory for received files with --dir DIR",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist; create it first, or name another directory with --dir DIR",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot use {}", dir.display())),
    }
}

/// A file received and in place.
pub(crate) struct Received {
    pub(crate) path: PathBuf,
    /// What went wrong after the file was in place (it stays received).
    pub(crate) late: Vec<String>,
}

async fn receive_files(
    holders: &[RelayPin],
    me: &Arc<SecretKey>,
    store: &Arc<SessionFiles>,
    dir: &Path,
    limits: &DownloadLimits,
    files: Vec<Waiting>,
    bars: &Bars,
) -> Result<()> {
    let count = files.len();
    let total = (count > 1).then(|| {
        let size = files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.offer.offer.size));
        bars.total(size, 0)
    });
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = JoinSet::new();
    for file in files {
        let (holders, me, store, dir) = (
            holders.to_vec(),
            me.clone(),
            store.clone(),
            dir.to_path_buf(),
        );
        let limits = limits.clone();
        let (bars, total, permits) = (bars.clone(), total.clone(), permits.clone());
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return (file, Err(DownloadError::Cancelled));
            };
            let (name, size) = (&file.offer.offer.name, file.offer.offer.size);
            // Made at the first report, which is what an earlier attempt
            // left: the bar starts there, and its rate counts what moves now.
            let mut bar: Option<FileBar> = None;
            let mut last = 0u64;
            let mut progress = |done: u64, _: u64| {
                match &bar {
                    Some(bar) => bar.set(done),
                    None => {
                        if done > 0 {
                            bars.suspend(|| note(&resuming(&sanitize(name), done, size)));
                        }
                        bar = Some(bars.file(name, size, done));
                    }
                }
                if let Some(total) = &total {
                    total.inc(done.saturating_sub(last));
                }
                last = done;
            };
            let result =
                receive_one(&holders, &me, &store, &dir, &limits, &file, &mut progress).await;
            if let Some(bar) = bar {
                bar.finish(result.is_ok());
            }
            (file, result)
        });
    }

    let mut out = Out::new();
    let mut print_error = None;
    let mut failed = 0usize;
    let mut finished = 0usize;
    while let Some(joined) = tasks.join_next().await {
        let Ok((file, result)) = joined else {
            failed += 1;
            continue;
        };
        let shown = sanitize(&file.offer.offer.name);
        finished += 1;
        if let Some(total) = &total {
            total.set_message(bars.label(&format!("total, {finished} of {count} files done")));
        }
        match result {
            Ok(received) => {
                let line = format!(
                    "[{}] {}: received {shown} ({} bytes) -> {}",
                    file.time,
                    file.who,
                    file.offer.offer.size,
                    sanitize(&received.path.display().to_string())
                );
                if print_error.is_none() {
                    if let Err(e) = bars.suspend(|| out.line(&line).and_then(|()| out.flush())) {
                        print_error = Some(e);
                    }
                }
                for problem in received.late {
                    bars.suspend(|| warn(&problem));
                }
            }
            Err(e) => {
                failed += 1;
                bars.suspend(|| error_line(&shown, &file.who, &e));
            }
        }
    }
    if let Some(total) = total {
        total.finish_and_clear();
    }
    if let Some(e) = print_error {
        return Err(anyhow::Error::new(e).context("cannot write to stdout"));
    }
    if failed > 0 {
        return Err(AlreadyReported(format!("{failed} of {count} files were not received")).into());
    }
    Ok(())
}

/// Whether the relay answered that it has no such file: expired, deleted,
/// or never there. Retrying cannot help.
fn is_gone(e: &DownloadError) -> bool {
    matches!(
        e,
        DownloadError::Relay(RelayError::Refused { code: ErrorCode::BadRequest, detail, .. })
            if detail == "no such file"
    )
}

/// One failed file, on stderr: what went wrong and what happens next.
fn error_line(file: &str, who: &str, e: &DownloadError) {
    let text = failure(who, e, "run `sotto receive-all` again");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "sotto: error: {file}: {}",
        sanitize(&text)
    );
}

/// What went wrong with a file from `who` and what happens next; `again`
/// says how to try again (`run ... again`).
pub(crate) fn failure(who: &str, e: &DownloadError, again: &str) -> String {
    match e {
        _ if is_gone(e) => format!(
            "the relay no longer has this file (files expire on the relay, 7 days after their upload by default); ask {who} to send it again"
        ),
        DownloadError::Verification(_)
        | DownloadError::Tree(_)
        | DownloadError::TooLarge { .. }
        | DownloadError::NoSpace { .. }
        | DownloadError::Relay(
            RelayError::Refused { .. }
            | RelayError::KeyMismatch { .. }
            | RelayError::Version { .. },
        ) => e.to_string(),
        DownloadError::Relay(_) => {
            let why = e.to_string();
            let why = why.strip_suffix("; try again").unwrap_or(&why).to_owned();
            format!("{why}; {again} to resume")
        }
        DownloadError::Disk { .. } | DownloadError::Cancelled => {
            format!("{e}; it stays on the relay for a retry")
        }
    }
}

/// Downloads one file from the first of `holders` (my relay, then relays
/// being drained after a move) that has it and, once it is in place, drops
/// its offer from the home and deletes its blob from that relay.
pub(crate) async fn receive_one(
    holders: &[RelayPin],
    me: &Arc<SecretKey>,
    store: &Arc<SessionFiles>,
    dir: &Path,
    limits: &DownloadLimits,
    file: &Waiting,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Received, DownloadError> {
    let (last, earlier) = holders.split_last().ok_or(DownloadError::Cancelled)?;
    for pin in earlier {
        match receive_from(pin, me, store, dir, limits, file, progress, false).await {
            Err(e) if is_gone(&e) => continue,
            other => return other,
        }
    }
    receive_from(last, me, store, dir, limits, file, progress, true).await
}

/// [`receive_one`] from one relay; `last`: no other relay may hold it, so
/// an answer that the file is gone drops its offer.
#[allow(clippy::too_many_arguments)]
async fn receive_from(
    pin: &RelayPin,
    me: &Arc<SecretKey>,
    store: &Arc<SessionFiles>,
    dir: &Path,
    limits: &DownloadLimits,
    file: &Waiting,
    progress: &mut (dyn FnMut(u64, u64) + Send),
    last: bool,
) -> Result<Received, DownloadError> {
    let offer = &file.offer.offer;
    let mut conn = relay_client::connect(pin, me).await?;
    let path = match download::download(&mut conn, dir, offer, file.offer.kind, limits, progress)
        .await
    {
        Ok(path) => path,
        Err(e) => {
            conn.close().await;
            if is_gone(&e) && last {
                // Nothing can fetch it any more: the offer goes, once said.
                if let Err(forget) = forget(me, store, offer.file_id).await {
                    tracing::warn!(error = %crate::error_line(&forget), "an offer of a file gone from the relay stays");
                }
            }
            return Err(e);
        }
    };

    // The file is safely in place. Its offer goes first: were the blob
    // deleted before that and the run cut short, every later run would find
    // the offer and its file gone from the relay. This way a cut run leaves
    // at worst a relay copy that expires on its own.
    let shown = sanitize(&offer.name);
    let mut late = Vec::new();
    match forget(me, store, offer.file_id).await.map(|_| ()) {
        Err(e) => late.push(format!(
            "{shown}: received, but its offer could not be removed ({}); the next `sotto receive-all` may fetch it again",
            crate::error_line(&e)
        )),
        Ok(()) => {
            if let Err(e) = conn.delete_blob(offer.file_id).await {
                late.push(format!(
                    "{shown}: the relay's copy could not be deleted ({e}); it expires on its own"
                ));
            }
        }
    }
    conn.close().await;
    Ok(Received { path, late })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_must_exist_and_be_one() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_dir(tmp.path()).is_ok());
        let missing = tmp.path().join("nope");
        let err = check_dir(&missing).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "nope does not exist; create it first, or name another directory with --dir DIR"
            ),
            "{err}"
        );
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let err = check_dir(&file).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
