//! `/file PATH` in `sotto chat`: the file drop, beside the conversation.
//!
//! The file goes to the current partner (to each member of a group, one
//! upload each, as a group message is one envelope each) exactly as
//! `sotto send-file` sends it ([`send_files`]: resumable upload, then the offer
//! sealed end to end and stored in their mailbox), over a connection of its
//! own (to each recipient's relay, [`crate::outbox::route_for`]) in a task of its own, so typing and receiving go on meanwhile.
//! Progress comes as notices on stderr: the start, every quarter on a
//! terminal, then done or failed with the reason. The chat does not end
//! before its uploads have ended.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sotto_keys::{Contact, SecretKey};

use super::Chat;
use crate::commands::{note, warn};
use crate::config::RelayPin;
use crate::display::sanitize;
use crate::outbox::file::{percent, send_files, Progress};
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
            PathBuf::from(path),
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
            &mut |contact| Box::new(Notices::new(contact.name.to_string())),
        )
        .await
    }
    .await;
    if let Err(e) = sent {
        warn(&format!("{shown} was not sent: {}", crate::error_line(&e)));
    }
}

/// Progress as notices on stderr; percentages only on a terminal.
struct Notices {
    to: String,
    file: String,
    size: u64,
    /// The next percentage worth a notice.
    next: u64,
    tty: bool,
}

/// Percentages said on a terminal.
const STEP: u64 = 25;

impl Notices {
    fn new(to: String) -> Self {
        Self {
            to,
            file: String::new(),
            size: 0,
            next: STEP,
            tty: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Notices {
    fn note(&mut self, msg: &str) {
        note(msg);
    }

    fn start(&mut self, name: &str, size: u64, done: u64) {
        self.file = sanitize(name);
        self.size = size;
        note(&format!(
            "sending {} ({size} bytes) to {} in the background",
            self.file, self.to
        ));
        let at = percent(done, size);
        self.next = (at / STEP + 1) * STEP;
    }

    fn advance(&mut self, done: u64) {
        let at = percent(done, self.size);
        if self.tty && at >= self.next && at < 100 {
            note(&format!("{} to {}: {at}%", self.file, self.to));
            self.next = (at / STEP + 1) * STEP;
        }
    }

    fn finish(&mut self, _complete: bool) {}
}
