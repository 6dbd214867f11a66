//! `/receive [DIR]` in `sotto chat`: the files contacts sent, received in
//! the background while the chat goes on.
//!
//! The chat keeps every offer it meets in the home, as `inbox` does; this
//! downloads those from contacts exactly as `sotto receive-all` does
//! ([`receive_one`]: verified, put in place without overwriting anything,
//! the offer dropped and the blob deleted), into DIR (the current
//! directory unless given; a leading `~` is the home directory), up to
//! [`PARALLEL`] at once. Strangers' files are left waiting, with a note
//! (`sotto receive-all --from-strangers` takes them). Progress is on the
//! status line ([`Transfers`]); each file ends with one notice. A file
//! already being received (a second `/receive`) is not fetched twice. The
//! chat does not end before its downloads have ended.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use sotto_crypto::file::FileId;
use sotto_keys::{ContactBook, SecretKey};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::transfers::{Transfers, Way};
use super::Chat;
use crate::commands::bars::resuming;
use crate::commands::pending::Waiting;
use crate::commands::receive_all::{failure, receive_one, PARALLEL};
use crate::commands::{note, warn};
use crate::config::RelayPin;
use crate::display::{human_bytes, sanitize};
use crate::download_limits::DownloadLimits;
use crate::home::expand_tilde;
use crate::offers::OfferKind;
use crate::sessions::SessionFiles;

/// The files being received by this chat, so none is fetched twice.
pub(super) type Receiving = Arc<Mutex<HashSet<FileId>>>;

/// What a background receive needs from the chat.
#[derive(Clone)]
struct Setup {
    me: Arc<SecretKey>,
    store: Arc<SessionFiles>,
    holders: Vec<RelayPin>,
    limits: DownloadLimits,
    contacts: PathBuf,
    transfers: Transfers,
    receiving: Receiving,
}

impl Chat {
    /// Starts receiving, into `dir` (empty: the current directory), the
    /// files contacts sent.
    pub(super) fn receive(&mut self, dir: &str) {
        let dir = if dir.is_empty() { "." } else { dir };
        let setup = Setup {
            me: self.me.clone(),
            store: Arc::new(self.sessions.clone()),
            holders: self.holders.clone(),
            limits: self.limits.clone(),
            contacts: self.book.path().to_path_buf(),
            transfers: self.transfers.clone(),
            receiving: self.receiving.clone(),
        };
        self.uploads
            .spawn(receive_in_background(setup, expand_tilde(dir.as_ref())));
    }
}

async fn receive_in_background(setup: Setup, dir: PathBuf) {
    if let Err(e) = receive_all(&setup, &dir).await {
        warn(&format!("/receive: {}", crate::error_line(&e)));
    }
}

/// Which offers to take now: contacts' ones not already on their way; and
/// how many strangers' wait.
fn choose(waiting: Vec<Waiting>, receiving: &Receiving) -> (Vec<Waiting>, usize) {
    let mut busy = receiving.lock().unwrap_or_else(|p| p.into_inner());
    let strangers = waiting.iter().filter(|w| !w.contact).count();
    let taken = waiting
        .into_iter()
        .filter(|w| w.contact && busy.insert(w.offer.offer.file_id))
        .collect();
    (taken, strangers)
}

async fn receive_all(setup: &Setup, dir: &std::path::Path) -> Result<()> {
    let waiting = {
        let (me, store, contacts, dir) = (
            setup.me.clone(),
            setup.store.clone(),
            setup.contacts.clone(),
            dir.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || -> Result<Vec<Waiting>> {
            crate::commands::receive_all::check_dir(&dir)?;
            let book = ContactBook::load(&contacts)?;
            let offers = store.with_offers(&me, |o| Ok(o.list().to_vec()))?;
            Ok(offers.into_iter().map(|o| Waiting::new(o, &book)).collect())
        })
        .await
        .context("the offers task failed")??
    };
    let (files, strangers) = choose(waiting, &setup.receiving);
    if strangers > 0 {
        note(&format!(
            "{strangers} file(s) from strangers (keys not in your contacts) wait: `sotto files` lists them, `sotto receive-all --from-strangers` receives them"
        ));
    }
    if files.is_empty() {
        if strangers == 0 {
            note("no files are waiting (files being received already are not counted)");
        }
        return Ok(());
    }
    note(&format!(
        "receiving {} file(s) into {} in the background",
        files.len(),
        sanitize(&dir.display().to_string())
    ));
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = JoinSet::new();
    for file in files {
        let (setup, dir, permits) = (setup.clone(), dir.to_path_buf(), permits.clone());
        tasks.spawn(async move {
            if let Ok(_permit) = permits.acquire_owned().await {
                receive_one_file(&setup, &dir, &file).await;
            }
            let mut busy = setup.receiving.lock().unwrap_or_else(|p| p.into_inner());
            busy.remove(&file.offer.offer.file_id);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn receive_one_file(setup: &Setup, dir: &std::path::Path, file: &Waiting) {
    let offer = &file.offer.offer;
    let shown = sanitize(&offer.name);
    let mut id = None;
    let transfers = setup.transfers.clone();
    let mut progress = |done: u64, total: u64| match id {
        Some(id) => transfers.advance(id, done),
        None => {
            if done > 0 {
                note(&resuming(&shown, done, total));
            }
            id = Some(transfers.begin(Way::Down, &shown, total, done));
        }
    };
    let result = receive_one(
        &setup.holders,
        &setup.me,
        &setup.store,
        dir,
        &setup.limits,
        file,
        &mut progress,
    )
    .await;
    if let Some(id) = id {
        setup.transfers.end(id);
    }
    match result {
        Ok(received) => {
            let what = match file.offer.kind {
                OfferKind::File => "",
                OfferKind::Tree => " (a directory)",
            };
            note(&format!(
                "received {shown}{what} from {} ({}) -> {}",
                file.who,
                human_bytes(offer.size),
                sanitize(&received.path.display().to_string())
            ));
            for late in received.late {
                warn(&late);
            }
        }
        Err(e) => warn(&format!(
            "{shown} from {} was not received: {}",
            file.who,
            sanitize(&failure(&file.who, &e, "type /receive again"))
        )),
    }
}
