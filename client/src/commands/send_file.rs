//! `sotto send-file NAME PATH...`: encrypt files and drop them on the relay.
//! A directory goes as one tree ([`crate::tree`]), links inside it skipped
//! with a notice each.
//!
//! Each file is uploaded, resumably, then its offer is sealed end to end to
//! the contact and stored in their mailbox ([`crate::outbox::file`]). Exit 0
//! means every file is stored and its offer sent.
//!
//! Everything that can be checked locally (the contact, every path) is checked
//! before the passphrase is asked or the network used. The first failure stops
//! the command; files sent before it stay sent, and running the same command
//! again resumes the one that failed.

use std::sync::Arc;

use anyhow::Result;
use sotto_keys::ContactBook;

use super::bars::{file_of, Bars, FileBar};
use super::{block_on, note, Ctx};
use crate::cli::SendFileArgs;
use crate::config::Config;
use crate::identity;
use crate::outbox::file::{send_files, Progress};
use crate::outbox::recipient;
use crate::sessions::SessionFiles;
use crate::upload::Source;
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
    // Said before anything is sent, so a link left out is no surprise.
    for skipped in sources.iter().flat_map(|s| &s.skipped) {
        note(skipped);
    }
    let pin = Config::load(&ctx.home.config())?.relay()?;
    let me = Arc::new(identity::load(&ctx.home, ctx.passphrase_file.as_deref())?);
    let sessions = SessionFiles::of(&ctx.home);
    let states = UploadStates::new(ctx.home.uploads());
    states.prune(STATE_RETENTION);
    let bars = Bars::new(args.quiet);
    let count = sources.len();
    let total = (count > 1).then(|| {
        let size = sources.iter().fold(0u64, |t, s| t.saturating_add(s.size()));
        bars.total(size, 0)
    });

    block_on(send_files(
        &me,
        &pin,
        &sessions,
        &states,
        std::slice::from_ref(&contact),
        &sources,
        &mut |_| {
            Box::new(BarProgress {
                bars: bars.clone(),
                bar: None,
                total: total.clone(),
                count,
                started: 0,
                before: 0,
            })
        },
    ))??;
    if let Some(total) = total {
        total.finish_and_clear();
    }
    Ok(())
}

/// Progress bars on stderr (drawn only on a terminal): one per file, and
/// with several files a total saying which file is on.
struct BarProgress {
    bars: Bars,
    bar: Option<FileBar>,
    total: Option<indicatif::ProgressBar>,
    count: usize,
    /// Files begun so far.
    started: usize,
    /// Bytes of the files finished before this one.
    before: u64,
}

impl Progress for BarProgress {
    fn note(&mut self, msg: &str) {
        self.bars.suspend(|| note(msg));
    }

    fn start(&mut self, name: &str, size: u64, done: u64) {
        self.started += 1;
        if let Some(total) = &self.total {
            total.set_message(self.bars.label(&file_of(self.started, self.count)));
            total.set_position(self.before + done);
        }
        self.bar = Some(self.bars.file(name, size, done));
    }

    fn advance(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set(done);
        }
        if let Some(total) = &self.total {
            total.set_position(self.before + done);
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(bar) = self.bar.take() {
            if complete {
                self.before += bar.size();
            }
            bar.finish(complete);
        }
    }
}
