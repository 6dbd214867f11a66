//! `sotto receive-all [--dir DIR]`: empty the mailbox, files included.
//!
//! 1. The mailbox is fetched once. Text messages are printed, remembered and
//!    acknowledged exactly as `sotto inbox` does ([`crate::inbound`]); file
//!    offers are kept in the home's offers ([`crate::offers`]), with those
//!    that `inbox` or `chat` kept earlier.
//! 2. Every file kept is downloaded, up to [`PARALLEL`] at once, each on its
//!    own connection, into DIR ([`crate::download`]: chunk by chunk into a
//!    temporary file, verified, published under a sanitised name that never
//!    replaces an existing file).
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
use sotto_keys::{ContactBook, SecretKey};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::bars::Bars;
use super::{block_on, more_waiting, note, tell, warn, AlreadyReported, Ctx, Out};
use crate::cli::ReceiveAllArgs;
use crate::config::{Config, RelayPin};
use crate::display::{local_time_ms, sanitize};
use crate::download::{self, DownloadError};
use crate::download_limits::DownloadLimits;
use crate::identity;
use crate::inbound::{self, process_batch, Files, Outcome};
use crate::offers::StoredOffer;
use crate::outbox::send_replies;
use crate::reach;
use crate::relay_client::{self, RelayError};
use crate::sessions::SessionFiles;
use sotto_crypto::envelope::ReceiptState;
use sotto_crypto::wire::ErrorCode;

/// Files downloaded at once.
pub const PARALLEL: usize = 4;

/// Runs `sotto receive-all`.
pub fn run(ctx: &Ctx, args: ReceiveAllArgs) -> Result<()> {
    ctx.home.require_identity()?;
    check_dir(&args.dir)?;
    let config = Config::load(&ctx.home.config())?;
    let (pin, limits) = (config.relay()?, DownloadLimits::from_config(&config));
    let first_contact = config.accepts_first_contact();
    // Files offered before a move may still be on the old relays.
    let mut holders = vec![pin.clone()];
    holders.extend(config.draining.iter().map(crate::config::OldRelay::pin));
    let book = Arc::new(ContactBook::load(&ctx.home.contacts())?);
    let me = Arc::new(identity::load(&ctx.home, ctx.passphrase_file.as_deref())?);
    let store = Arc::new(SessionFiles::of(&ctx.home));
    let mine = reach::mine(&ctx.home, &pin)?;
    let registering = (*store).clone();
    let bars = Bars::new(args.quiet);
    let dir = args.dir;

    block_on(async move {
        let mut conn = relay_client::connect(&pin, &me).await?;
        reach::register(&mut conn, &registering, &me, &mine, first_contact).await?;
        let fetched = conn.fetch_pending().await?;
        let pending = fetched.deliveries;
        tracing::info!(count = pending.len(), "fetched");
        if fetched.more {
            more_waiting("sotto receive-all");
        }
        let (outcome, to_send) = if pending.is_empty() {
            (Outcome::default(), Vec::new())
        } else {
            let (me, store, book, pin) = (me.clone(), store.clone(), book.clone(), pin.clone());
            tokio::task::spawn_blocking(move || {
                let mut out = Out::new();
                process_batch(
                    &me,
                    &book,
                    &store,
                    &pin,
                    Some(&mine),
                    pending,
                    Files::Collect,
                    &mut |line| out.line(line),
                    // Printed: read.
                    &|_| ReceiptState::Read,
                )
            })
            .await
            .context("the inbox task failed")??
        };
        if !outcome.ack.is_empty() {
            let deleted = conn.ack(&outcome.ack).await?;
            tracing::info!(acked = outcome.ack.len(), deleted, "acknowledged");
        }
        send_replies(to_send).await;
        conn.close().await;
        for n in inbound::notices(&outcome) {
            tell(&n);
        }
        if let Some(e) = outcome.print_error {
            return Err(anyhow::Error::new(e).context("cannot write to stdout"));
        }
        // Every offer kept in the home: this run's and those `inbox`,
        // `chat` or an earlier run kept.
        let waiting = {
            let (me, store) = (me.clone(), store.clone());
            tokio::task::spawn_blocking(move || store.with_offers(&me, |o| Ok(o.list().to_vec())))
                .await
                .context("the offers task failed")??
        };
        if waiting.is_empty() {
            if outcome.shown == 0 {
                note("no new messages or files");
            }
            return Ok(());
        }
        let files = waiting
            .into_iter()
            .map(|offer| Waiting::new(offer, &book))
            .collect();
        receive_files(&holders, &me, &store, &dir, &limits, files, &bars).await
    })?
}

/// An offer to download, with what the lines about it show.
struct Waiting {
    offer: StoredOffer,
    /// Its date as shown.
    time: String,
    /// Who sent it, safe to print.
    who: String,
}

impl Waiting {
    fn new(offer: StoredOffer, book: &ContactBook) -> Self {
        let time = local_time_ms(offer.sent_at_ms)
            .or_else(|| local_time_ms(offer.received_at.saturating_mul(1000)))
            .unwrap_or_else(|| "????-??-?? ??:??:??".to_owned());
        let who = match book.by_key(&offer.sender) {
            Some(contact) => contact.name.to_string(),
            None => format!("unknown {}", offer.sender),
        };
        Self { offer, time, who }
    }
}

/// DIR must be an existing directory.
fn check_dir(dir: &Path) -> Result<()> {
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
struct Received {
    path: PathBuf,
    /// What went wrong after the file was in place (it stays received).
    late: Vec<String>,
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
            let bar = bars.file(&file.offer.offer.name, file.offer.offer.size, 0);
            let mut last = 0u64;
            let mut started = false;
            let mut progress = |done: u64, _: u64| {
                bar.set_position(done);
                if !started {
                    // The first call is what an earlier attempt left: the
                    // bar starts there, and the rate counts only what moves.
                    started = true;
                    bar.reset_eta();
                }
                if let Some(total) = &total {
                    total.inc(done.saturating_sub(last));
                }
                last = done;
            };
            let result =
                receive_one(&holders, &me, &store, &dir, &limits, &file, &mut progress).await;
            bar.finish_and_clear();
            (file, result)
        });
    }

    let mut out = Out::new();
    let mut print_error = None;
    let mut failed = 0usize;
    while let Some(joined) = tasks.join_next().await {
        let Ok((file, result)) = joined else {
            failed += 1;
            continue;
        };
        let shown = sanitize(&file.offer.offer.name);
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
    let text = match e {
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
            format!("{why}; run `sotto receive-all` again to resume")
        }
        DownloadError::Disk { .. } | DownloadError::Cancelled => {
            format!("{e}; it stays on the relay for a retry")
        }
    };
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "sotto: error: {file}: {}",
        sanitize(&text)
    );
}

/// Downloads one file from the first of `holders` (my relay, then relays
/// being drained after a move) that has it and, once it is in place, drops
/// its offer from the home and deletes its blob from that relay.
async fn receive_one(
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
    match forget(me, store, offer.file_id).await {
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

/// Drops the offer of `file_id` from the home.
async fn forget(
    me: &Arc<SecretKey>,
    store: &Arc<SessionFiles>,
    file_id: sotto_crypto::file::FileId,
) -> Result<()> {
    let (me, store) = (me.clone(), store.clone());
    tokio::task::spawn_blocking(move || {
        store.with_offers(&me, |offers| {
            if offers.remove(file_id).is_some() {
                offers.save()?;
            }
            Ok(())
        })
    })
    .await
    .map_err(anyhow::Error::from)?
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
