//! `sotto files [--reject ID]`: what waits for me, and saying no to it.
//!
//! The mailbox is emptied into the home first, as `receive-all` does
//! ([`super::pending`]: text messages that waited are printed, offers kept),
//! so the list is complete; nothing is downloaded. Each offer is one line:
//! its ID (the start of its file id, as long as needed to tell the offers
//! apart), who sent it (a contact's name, or `stranger` and the start of
//! their key), its size, how long ago the relay took it, and its name (a
//! directory's ends in `/`).
//!
//! `--reject ID` drops the offer from the home and deletes its blob from
//! the relay that holds it, unread. The offer goes first, as when a file is
//! received: a stop between the two leaves only a relay copy that expires.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

use super::bars::human_bytes;
use super::pending::{self, forget, Waiting};
use super::{block_on, note, warn, Ctx, Out};
use crate::cli::FilesArgs;
use crate::display::sanitize;
use crate::offers::OfferKind;
use crate::relay_client;

/// Shortest ID shown, in hex digits.
const ID_LEN: usize = 8;
/// Shortest ID accepted by `--reject`.
const MIN_ID_LEN: usize = 4;

/// Runs `sotto files`.
pub fn run(ctx: &Ctx, args: FilesArgs) -> Result<()> {
    if let Some(id) = &args.reject {
        check_id(id)?;
    }
    let opened = pending::open(ctx)?;
    block_on(async move {
        let collected = pending::collect(&opened, "sotto files").await?;
        let waiting = collected.waiting;
        match args.reject {
            None => list(&waiting),
            Some(id) => reject(&opened, &waiting, &id).await,
        }
    })?
}

fn check_id(id: &str) -> Result<()> {
    if id.len() < MIN_ID_LEN || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{} is not an ID of a waiting file: IDs are hex digits (at least {MIN_ID_LEN}), as `sotto files` lists them",
            sanitize(id)
        );
    }
    Ok(())
}

fn list(waiting: &[Waiting]) -> Result<()> {
    if waiting.is_empty() {
        note("no files are waiting");
        return Ok(());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ids = short_ids(waiting);
    let rows: Vec<[String; 5]> = waiting
        .iter()
        .zip(ids)
        .map(|(w, id)| {
            let mut name = sanitize(&w.offer.offer.name);
            if w.offer.kind == OfferKind::Tree {
                name.push('/');
            }
            [
                id,
                w.who.clone(),
                human_bytes(w.offer.offer.size),
                age(now.saturating_sub(w.offer.received_at)),
                name,
            ]
        })
        .collect();
    let mut out = Out::new();
    for line in table(&rows) {
        out.line(&line)?;
    }
    out.flush()?;
    Ok(())
}

/// Lines of a table with a header, columns padded (by characters) to their
/// widest cell; the last column is not padded.
fn table(rows: &[[String; 5]]) -> Vec<String> {
    let header = ["ID", "FROM", "SIZE", "AGE", "NAME"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            line
        })
        .collect()
}

/// The IDs shown: the first [`ID_LEN`] hex digits of each file id, more if
/// two offers would share one.
fn short_ids(waiting: &[Waiting]) -> Vec<String> {
    let full: Vec<String> = waiting
        .iter()
        .map(|w| w.offer.offer.file_id.to_string())
        .collect();
    let len = (ID_LEN..32)
        .find(|&n| {
            let mut seen = std::collections::HashSet::new();
            full.iter().all(|id| seen.insert(&id[..n]))
        })
        .unwrap_or(32);
    full.into_iter().map(|id| id[..len].to_owned()).collect()
}

/// How long ago, in the largest whole unit.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The one waiting offer whose file id starts with `id`.
fn find<'a>(waiting: &'a [Waiting], id: &str) -> Result<&'a Waiting> {
    let id = id.to_ascii_lowercase();
    let matching: Vec<&Waiting> = waiting
        .iter()
        .filter(|w| w.offer.offer.file_id.to_string().starts_with(&id))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => bail!("no waiting file has the ID {id}; `sotto files` lists them"),
        many => bail!(
            "{} waiting files have IDs starting {id}; give more of the ID",
            many.len()
        ),
    }
}

async fn reject(opened: &pending::Opened, waiting: &[Waiting], id: &str) -> Result<()> {
    let w = find(waiting, id)?;
    let offer = &w.offer.offer;
    let shown = sanitize(&offer.name);
    forget(&opened.me, &opened.store, offer.file_id).await?;
    // Any relay I read from may hold it: mine, or one being drained.
    let mut deleted = false;
    let mut failed = None;
    for pin in &opened.holders {
        let result = async {
            let mut conn = relay_client::connect(pin, &opened.me).await?;
            let d = conn.delete_blob(offer.file_id).await;
            conn.close().await;
            d
        }
        .await;
        match result {
            Ok(true) => {
                deleted = true;
                break;
            }
            Ok(false) => {}
            Err(e) => failed = Some(e),
        }
    }
    match (deleted, failed) {
        (true, _) => note(&format!(
            "rejected {shown} from {}: deleted from the relay unread",
            w.who
        )),
        (false, Some(e)) => warn(&format!(
            "rejected {shown} from {}, but the relay's copy could not be deleted ({e}); it expires on its own",
            w.who
        )),
        (false, None) => note(&format!(
            "rejected {shown} from {}; the relay had no copy left",
            w.who
        )),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_their_largest_unit() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(60), "1m");
        assert_eq!(age(3599), "59m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(86_400 * 3 + 5), "3d");
    }

    #[test]
    fn ids_must_be_hex_and_long_enough() {
        assert!(check_id("3f2a").is_ok());
        assert!(check_id("3F2A9C1D").is_ok());
        assert!(check_id("3f2").is_err());
        assert!(check_id("../x")
            .unwrap_err()
            .to_string()
            .contains("hex digits"));
    }

    #[test]
    fn the_table_lines_up_by_characters() {
        let rows = [
            ["ab12cd34", "stranger sotto1…", "1.00 KiB", "5m", "x"].map(String::from),
            ["ff00ff00", "bob", "12 B", "2d", "grüße/"].map(String::from),
        ];
        let lines = table(&rows);
        assert_eq!(lines[0], "ID        FROM              SIZE      AGE  NAME");
        assert_eq!(lines[1], "ab12cd34  stranger sotto1…  1.00 KiB  5m   x");
        assert_eq!(
            lines[2],
            "ff00ff00  bob               12 B      2d   grüße/"
        );
    }
}
