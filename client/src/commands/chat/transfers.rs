//! What files are moving, for the chat's status line: `/file` uploads and
//! `/receive` downloads report here, and the screen shows one short text
//! (`↑ photo.jpg 42%  ↓ notes.pdf 7%`), so progress never floods the
//! history. The text is pushed only when a percentage changes, so a fast
//! transfer sends the screen at most a hundred updates per file. Without a
//! screen (line mode) nothing is shown: the start and end notices say it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::commands::bars::fit_name;
use crate::outbox::file::percent;

/// Columns a name takes on the status line.
const NAME_COLUMNS: usize = 20;
/// Transfers named on the status line; the rest are counted.
const NAMED: usize = 2;

/// Which way a file moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Up,
    Down,
}

/// The transfers of one chat, shared by its background tasks.
#[derive(Debug, Clone, Default)]
pub(super) struct Transfers {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    items: BTreeMap<u64, Item>,
}

#[derive(Debug, Clone)]
struct Item {
    way: Way,
    name: String,
    done: u64,
    total: u64,
}

impl Transfers {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transfer of `name` (`total` bytes, `done` there already) begins.
    pub(super) fn begin(&self, way: Way, name: &str, total: u64, done: u64) -> u64 {
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        inner.items.insert(
            id,
            Item {
                way,
                name: name.to_owned(),
                done,
                total,
            },
        );
        publish(&inner);
        id
    }

    /// Transfer `id` has `done` bytes.
    pub(super) fn advance(&self, id: u64, done: u64) {
        let mut inner = self.lock();
        let Some(item) = inner.items.get_mut(&id) else {
            return;
        };
        let before = percent(item.done, item.total);
        item.done = done;
        if percent(done, item.total) != before {
            publish(&inner);
        }
    }

    /// Transfer `id` ended, whichever way.
    pub(super) fn end(&self, id: u64) {
        let mut inner = self.lock();
        if inner.items.remove(&id).is_some() {
            publish(&inner);
        }
    }
}

fn publish(inner: &Inner) {
    let text = render(inner.items.values());
    crate::screen::transfers(text.as_deref());
}

/// The status line's text for `items`, `None` if nothing moves.
fn render<'a>(items: impl Iterator<Item = &'a Item>) -> Option<String> {
    let items: Vec<&Item> = items.collect();
    if items.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = items
        .iter()
        .take(NAMED)
        .map(|i| {
            let arrow = match i.way {
                Way::Up => '↑',
                Way::Down => '↓',
            };
            let name = fit_name(&i.name, NAME_COLUMNS);
            format!("{arrow} {} {}%", name.trim_end(), percent(i.done, i.total))
        })
        .collect();
    if items.len() > NAMED {
        parts.push(format!("+{} more", items.len() - NAMED));
    }
    Some(parts.join("  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(way: Way, name: &str, done: u64, total: u64) -> Item {
        Item {
            way,
            name: name.into(),
            done,
            total,
        }
    }

    #[test]
    fn the_status_names_two_transfers_and_counts_the_rest() {
        assert_eq!(render(std::iter::empty()), None);
        let items = [
            item(Way::Up, "photo.jpg", 42, 100),
            item(Way::Down, "a-very-long-name-of-a-report-2026.pdf", 7, 100),
            item(Way::Down, "c", 0, 0),
        ];
        assert_eq!(
            render(items.iter()).unwrap(),
            "↑ photo.jpg 42%  ↓ a-very-l…rt-2026.pdf 7%  +1 more"
        );
    }

    #[test]
    fn progress_is_kept_per_transfer() {
        let t = Transfers::default();
        let a = t.begin(Way::Up, "a", 200, 0);
        let b = t.begin(Way::Down, "b", 10, 5);
        t.advance(a, 100);
        assert_eq!(render(t.lock().items.values()).unwrap(), "↑ a 50%  ↓ b 50%");
        t.end(a);
        t.end(a);
        assert_eq!(render(t.lock().items.values()).unwrap(), "↓ b 50%");
        t.end(b);
        assert_eq!(render(t.lock().items.values()), None);
    }
}
