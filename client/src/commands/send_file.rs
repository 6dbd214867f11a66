//! `sotto send-file NAME PATH...`: encrypt files and drop them on the relay.
//!
//! Per file: a fresh id and key (or, for an upload that was interrupted, the
//! saved ones, see [`crate::upload_state`]); the chunks the relay lacks are
//! sealed and uploaded ([`crate::upload`]); once the relay holds the whole
//! blob durably, the offer (id, key, name, size, hash) is sealed end to end
//! to the contact and stored in their mailbox; only then is the resume state
//! deleted. Exit 0 means every file is stored and its offer sent.
//!
//! Everything that can be checked locally (the contact, every path) is checked
//! before the passphrase is asked or the network used. The first failure stops
//! the command; files sent before it stay sent, and running the same command
//! again resumes the one that failed.

use anyhow::{anyhow, Context, Result};
use std::sync::Arc;
use std::time::SystemTime;

use sotto_crypto::envelope::{Body, Content};
use sotto_crypto::file::FileOffer;
use sotto_crypto::wire::ErrorCode;
use sotto_keys::{Contact, ContactBook, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};

use super::bars::Bars;
use super::send::{explain, recipient, warn_other_relay};
use super::{block_on, note, Ctx};
use crate::cli::SendFileArgs;
use crate::config::Config;
use crate::display::sanitize;
use crate::identity;
use crate::relay_client::{self, RelayConn, RelayError};
use crate::sessions::SessionFiles;
use crate::upload::{self, bytes_in_chunks, Source, UploadError};
use crate::upload_state::{UploadStates, STATE_RETENTION};

/// Runs `sotto send-file`.
pub fn run(ctx: &Ctx, args: SendFileArgs) -> Result<()> {
    ctx.home.require_identity()?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    let contact = recipient(&book, &args.name)?;
    let sources = args
        .paths
        .iter()
        .map(|p| Source::inspect(p))
        .collect::<Result<Vec<_>, _>>()?;
    let pin = Config::load(&ctx.home.config())?.relay()?;
    let me = Arc::new(identity::load(&ctx.home, ctx.passphrase_file.as_deref())?);
    let sessions = SessionFiles::of(&ctx.home);
    let states = UploadStates::new(ctx.home.uploads());
    states.prune(STATE_RETENTION);
    let mut bars = BarProgress {
        bars: Bars::new(args.quiet),
        bar: None,
    };

    block_on(async {
        let mut conn = relay_client::connect(&pin, &me).await?;
        for source in &sources {
            send_one(
                &mut conn, &me, &sessions, &contact, source, &states, &mut bars,
            )
            .await?;
        }
        conn.close().await;
        Ok::<_, anyhow::Error>(())
    })??;
    warn_other_relay(&contact, &pin.addr);
    Ok(())
}

/// How one upload shows what it does: bars for `send-file`, notices in
/// `sotto chat` (where the upload runs beside the conversation).
pub(crate) trait Progress: Send {
    /// A line for the person at the terminal.
    fn note(&mut self, msg: &str);
    /// Sending `name` (`size` bytes) begins, `done` bytes already on the relay.
    fn start(&mut self, name: &str, size: u64, done: u64);
    /// `done` bytes are on the relay.
    fn advance(&mut self, done: u64);
    /// Sending ended, whichever way.
    fn finish(&mut self);
}

/// Progress bars on stderr (drawn only on a terminal).
struct BarProgress {
    bars: Bars,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress for BarProgress {
    fn note(&mut self, msg: &str) {
        self.bars.suspend(|| note(msg));
    }

    fn start(&mut self, name: &str, size: u64, done: u64) {
        self.bar = Some(self.bars.file(name, size, done));
    }

    fn advance(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Uploads `source` for `contact` (resuming an interrupted upload), then
/// seals its offer to them and has the relay store it.
pub(crate) async fn send_one<R, W>(
    conn: &mut RelayConn<R, W>,
    me: &Arc<SecretKey>,
    sessions: &SessionFiles,
    contact: &Contact,
    source: &Source,
    states: &UploadStates,
    progress: &mut dyn Progress,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let file = sanitize(&source.name);
    let name = contact.name.to_string();
    let size = source.size();

    let (state, resumed) = {
        let (states, to, canonical, fingerprint) = (
            states.clone(),
            contact.key,
            source.canonical.clone(),
            source.fingerprint,
        );
        tokio::task::spawn_blocking(move || states.resume_or_start(&to, &canonical, fingerprint))
            .await
            .context("the upload state task failed")??
    };
    let have = upload::begin(conn, &contact.key, source, &state)
        .await
        .map_err(|e| explain_upload(e, &file, &name))?;
    let done = bytes_in_chunks(size, have);
    if resumed && have > 0 {
        progress.note(&format!("resuming {file} at {}%", percent(done, size)));
    }
    tracing::info!(size, have, "uploading");

    progress.start(&source.name, size, done);
    let sent = upload::send(conn, source, &state, have, &mut |d, _| progress.advance(d)).await;
    progress.finish();
    let hash = sent.map_err(|e| explain_upload(e, &file, &name))?;

    let offer = FileOffer {
        file_id: state.file_id,
        name: source.name.clone(),
        size,
        hash,
        key: state.key.clone(),
    };
    // Sealed through the sessions, saved before it goes out.
    let sealed = {
        let (sessions, me, to) = (sessions.clone(), me.clone(), contact.key);
        tokio::task::spawn_blocking(move || {
            let mut batch = sessions.lock(&me)?;
            let sealed = batch
                .store
                .seal_to(
                    &me,
                    &to,
                    &Body::new(Content::File(offer)),
                    SystemTime::now(),
                )
                .map_err(|e| anyhow!("cannot seal the offer: {e}"))?;
            batch.save(&me)?;
            Ok::<_, anyhow::Error>(sealed)
        })
        .await
        .context("the session task failed")?
        .map_err(|e| anyhow!("{file}: {}", crate::error_line(&e)))?
    };
    conn.send_envelope(&contact.key, sealed.envelope)
        .await
        .map_err(|e| {
            anyhow!(
                "{file} is on the relay, but its offer to {name} was not stored: {}; the same `sotto send-file` sends it without uploading again",
                crate::error_line(&explain(e, &name))
            )
        })?;

    let (states, to, canonical) = (states.clone(), contact.key, source.canonical.clone());
    tokio::task::spawn_blocking(move || states.remove(&to, &canonical))
        .await
        .context("the upload state task failed")??;
    if let Some(renewal) = sealed.renewal {
        if let Err(e) = conn.send_envelope(&contact.key, renewal).await {
            tracing::debug!(error = %e, "a session renewal was not stored");
        }
    }
    progress.note(&format!("sent {file} to {name}: the relay has stored it"));
    Ok(())
}

/// `done` as a whole percentage of `total` (rounded down).
pub(crate) fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done) * 100 / u128::from(total)) as u64
}

/// Says which file failed and what to do about it.
fn explain_upload(e: UploadError, file: &str, name: &str) -> anyhow::Error {
    match e {
        UploadError::Relay(RelayError::Refused {
            code: ErrorCode::QuotaExceeded,
            detail,
            ..
        }) => {
            let why = if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            };
            anyhow!("no room on the relay for {file} to {name}{why}; try again once they have received their files, or send a smaller file")
        }
        UploadError::Relay(
            e @ (RelayError::Closed { .. }
            | RelayError::NoAnswer { .. }
            | RelayError::Stalled { .. }
            | RelayError::Link { .. }
            | RelayError::Unreachable { .. }),
        ) => {
            let why = e.to_string();
            let why = why.strip_suffix("; try again").unwrap_or(&why);
            anyhow!(
                "sending {file} was interrupted: {why}; the same `sotto send-file` resumes where it stopped"
            )
        }
        UploadError::Relay(e) => anyhow!("cannot send {file}: {e}"),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_down_and_empty_files_are_whole() {
        assert_eq!(percent(0, 10), 0);
        assert_eq!(percent(999, 1000), 99);
        assert_eq!(percent(10, 10), 100);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX / 2, u64::MAX), 49);
    }

    #[test]
    fn failures_name_the_file_and_the_fix() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let e = explain_upload(
            UploadError::Relay(RelayError::Refused {
                addr,
                code: ErrorCode::QuotaExceeded,
                detail: "quota".into(),
            }),
            "big.iso",
            "bob",
        );
        assert_eq!(
            e.to_string(),
            "no room on the relay for big.iso to bob (quota); try again once they have received their files, or send a smaller file"
        );
        let e = explain_upload(
            UploadError::Relay(RelayError::Closed {
                addr: "127.0.0.1:1".parse().unwrap(),
            }),
            "big.iso",
            "bob",
        );
        assert!(
            e.to_string()
                .starts_with("sending big.iso was interrupted: "),
            "{e}"
        );
        assert!(e.to_string().ends_with("resumes where it stopped"), "{e}");
    }
}
