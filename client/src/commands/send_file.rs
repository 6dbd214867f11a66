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

use super::bars::Bars;
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
            })
        },
    ))??;
    Ok(())
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
