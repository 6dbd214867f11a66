//! `/file PATH` in `sotto chat`: the file drop, beside the conversation.
//!
//! The file goes to the current partner (to each member of a group, one
//! upload each, as a group message is one envelope each) exactly as
//! `sotto send-file` sends it ([`send_files`]: resumable upload, then the offer
//! sealed end to end and stored in their mailbox), over a connection of its
//! own (to each recipient's relay, [`crate::outbox::route_for`]) in a task of its own, so typing and receiving go on meanwhile.
//! The start, then done or failed with the reason, are notices; progress
//! in between is on the screen's status line ([`Transfers`]), not in the
//! history. A leading `~` in PATH is the home directory. The chat does not
//! end before its uploads have ended.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sotto_keys::{Contact, SecretKey};

use super::transfers::{Transfers, Way};
use super::Chat;
use crate::commands::{note, warn};
use crate::config::RelayPin;
use crate::display::sanitize;
use crate::outbox::file::{send_files, Progress};
use crate::sessions::SessionFiles;
use crate::upload::Source;
use crate::upload_state::UploadStates;

impl Chat {
    /// Starts sending the file at `path` to the current partner.
    pub(super) fn send_file(&mut self, path: &str) {
        let Some(target) = &self.target else {
            warn("nobody to send to yet: type `/to NAME` first; the file was not sent");
            return;
        };
        let recipients = match target.recipients(&self.me.public()) {
            Ok(recipients) => recipients,
            Err(e) => {
                warn(&crate::error_line(&e));
                return;
            }
        };
        self.uploads.spawn(send_in_background(
            self.me.clone(),
            self.pin.clone(),
            self.upload_states.clone(),
            self.sessions.clone(),
            recipients,
            crate::home::expand_tilde(path.as_ref()),
            self.transfers.clone(),
        ));
    }
}

/// Sends `path` to each of `recipients`, one after the other, and says how
/// it went on stderr.
async fn send_in_background(
    me: Arc<SecretKey>,
    pin: RelayPin,
    states: UploadStates,
    sessions: SessionFiles,
    recipients: Vec<Contact>,
    path: PathBuf,
    transfers: Transfers,
) {
    let shown = sanitize(&path.display().to_string());
    let sent = async {
        let source = tokio::task::spawn_blocking(move || Source::inspect(&path))
            .await
            .context("the file task failed")??;
        for skipped in &source.skipped {
            note(skipped);
        }
        send_files(
            &me,
            &pin,
            &sessions,
            &states,
            &recipients,
            std::slice::from_ref(&source),
            &mut |contact| Box::new(Notices::new(contact.name.to_string(), transfers.clone())),
        )
        .await
    }
    .await;
    if let Err(e) = sent {
        warn(&format!("{shown} was not sent: {}", crate::error_line(&e)));
    }
}

/// The start and end as notices, progress on the status line.
struct Notices {
    to: String,
    transfers: Transfers,
    /// The status line's entry of the file on its way.
    on: Option<u64>,
}

impl Notices {
    fn new(to: String, transfers: Transfers) -> Self {
        Self {
            to,
            transfers,
            on: None,
        }
    }
}

impl Progress for Notices {
    fn note(&mut self, msg: &str) {
        note(msg);
    }

    fn start(&mut self, name: &str, size: u64, done: u64) {
        let file = sanitize(name);
        note(&format!(
            "sending {file} ({size} bytes) to {} in the background",
            self.to
        ));
        self.on = Some(self.transfers.begin(Way::Up, &file, size, done));
    }

    fn advance(&mut self, done: u64) {
        if let Some(id) = self.on {
            self.transfers.advance(id, done);
        }
    }

    fn finish(&mut self, _complete: bool) {
        if let Some(id) = self.on.take() {
            self.transfers.end(id);
        }
    }
}
