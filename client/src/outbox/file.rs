//! Sending a file: the upload, then its offer, sealed end to end like a
//! message and stored in the recipient's mailbox.
//!
//! Per file: a fresh id and key (or, for an upload that was interrupted, the
//! saved ones, see [`crate::upload_state`]); the chunks the relay lacks are
//! sealed and uploaded ([`crate::upload`]); once the relay holds the whole
//! blob durably, the offer (id, key, name, size, hash) is sealed through the
//! session state, saved, and stored in the contact's mailbox; only then is
//! the resume state deleted. `sotto send-file` and the chat's `/file` send
//! the same way and differ only in how they show progress ([`Progress`]).
//!
//! Each recipient's upload and offer go to their relay ([`route_for`]), like
//! their messages, over a delivery link: the relay is shown their token and
//! the upload's resume secret, never my key ([`send_files`]).

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use sotto_crypto::envelope::{Body, Content};
use sotto_crypto::file::FileOffer;
use sotto_crypto::wire::ErrorCode;
use sotto_keys::{Contact, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{explain, route_for, seal_body_and_save};
use crate::config::RelayPin;
use crate::delivery_link::{connect_delivery, DeliveryConn};
use crate::display::{human_bytes, sanitize};
use crate::relay_client::RelayError;
use crate::routes::Route;
use crate::sessions::SessionFiles;
use crate::upload::{self, bytes_in_chunks, Source, UploadError};
use crate::upload_state::UploadStates;

/// How one upload shows what it does: bars for `send-file`, notices in
/// `sotto chat` (where the upload runs beside the conversation). The
/// library says what happens; the command decides how it is shown.
pub trait Progress: Send {
    /// A line for the person at the terminal.
    fn note(&mut self, msg: &str);
    /// Sending `name` (`size` bytes) begins, `done` bytes already on the relay.
    fn start(&mut self, name: &str, size: u64, done: u64);
    /// `done` bytes are on the relay.
    fn advance(&mut self, done: u64);
    /// Sending ended: `complete`, the relay holds all of it; else it failed.
    fn finish(&mut self, complete: bool);
}

/// Sends every file of `sources` to each of `recipients`, in order, each
/// recipient's over a delivery link to their relay ([`route_for`]).
/// `progress` gives how each recipient's sends are shown. The first
/// failure stops.
#[allow(clippy::too_many_arguments)]
pub async fn send_files(
    me: &Arc<SecretKey>,
    mine: &RelayPin,
    sessions: &SessionFiles,
    states: &UploadStates,
    recipients: &[Contact],
    sources: &[Source],
    progress: &mut (dyn FnMut(&Contact) -> Box<dyn Progress> + Send),
) -> Result<()> {
    for contact in recipients {
        let route = route_for(Some(contact), contact.key, mine);
        let mut conn = connect_delivery(&mine.reaching(&route.pin())).await?;
        let mut shown = progress(contact);
        for source in sources {
            send_one(
                &mut conn,
                &route,
                me,
                mine,
                sessions,
                contact,
                source,
                states,
                &mut *shown,
            )
            .await?;
        }
        conn.close().await;
    }
    Ok(())
}

/// Uploads `source` for `contact` (resuming an interrupted upload), then
/// seals its offer to them and has their relay store it. `conn` is the
/// delivery link along `route`.
#[allow(clippy::too_many_arguments)]
pub async fn send_one<R, W>(
    conn: &mut DeliveryConn<R, W>,
    route: &Route,
    me: &Arc<SecretKey>,
    mine: &RelayPin,
    sessions: &SessionFiles,
    contact: &Contact,
    source: &Source,
    states: &UploadStates,
    progress: &mut dyn Progress,
) -> Result<()>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
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
    let have = upload::begin_delivery(conn, route, source, &state)
        .await
        .map_err(|e| explain_upload(e, &file, &name))?;
    let done = bytes_in_chunks(size, have);
    if resumed && have > 0 {
        progress.note(&resuming(&file, done, size));
    }
    tracing::info!(size, have, "uploading");

    progress.start(&source.name, size, done);
    let sent = upload::send(conn, source, &state, have, &mut |d, _| progress.advance(d)).await;
    progress.finish(sent.is_ok());
    let hash = sent.map_err(|e| explain_upload(e, &file, &name))?;

    let offer = FileOffer {
        file_id: state.file_id,
        name: source.name.clone(),
        size,
        hash,
        key: state.key.clone(),
    };
    // Sealed through the sessions, saved before it goes out.
    let tree = source.is_tree();
    let mut sealed = {
        let (sessions, me, contact) = (sessions.clone(), me.clone(), contact.clone());
        let mine = mine.clone();
        tokio::task::spawn_blocking(move || {
            let body = Body::new(if tree {
                Content::Tree(offer)
            } else {
                Content::File(offer)
            });
            seal_body_and_save(&sessions, &me, &contact, &body, &mine)
        })
        .await
        .context("the session task failed")?
        .map_err(|e| anyhow!("{file}: {}", crate::error_line(&e)))?
        .into_iter()
    };
    let Some(carrier) = sealed.next() else {
        bail!("{file}: its offer was not sealed");
    };
    conn.send_envelope(&carrier.to, route.token.as_ref(), carrier.envelope)
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
    for renewal in sealed {
        if let Err(e) = conn
            .send_envelope(&renewal.to, route.token.as_ref(), renewal.envelope)
            .await
        {
            tracing::debug!(error = %e, "a session renewal was not stored");
        }
    }
    progress.note(&format!("sent {file} to {name}: the relay has stored it"));
    Ok(())
}

/// What a resumed transfer says: where it resumed.
pub fn resuming(name: &str, done: u64, size: u64) -> String {
    format!(
        "resuming {name} at {} of {}",
        human_bytes(done),
        human_bytes(size)
    )
}

/// `done` as a whole percentage of `total` (rounded down).
pub fn percent(done: u64, total: u64) -> u64 {
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
