//! Live feeds: envelopes handed to connected recipients the moment the writer
//! gives them an id, before their commit.
//!
//! Waiting for the durable commit before delivering would put an fsync into
//! every chat message's latency. The sender's `Stored` still waits for it; the
//! recipient does not have to: if the relay crashes before the commit, the
//! sender was never told "stored" and sends the same bytes again, and the
//! recipient's seen-store drops the duplicate. An `Ack` of a pushed envelope
//! reaches the writer after the envelope's own enqueue (one queue, applied in
//! order), so it deletes it even before the commit; if the envelope's batch
//! has not begun yet, it is taken out of it and never written (see `writer`).
//!
//! Order: the writer pushes in id order, so a feed holds increasing ids. A
//! feed is bounded; one that overflows is marked *lagged*: the writer stops
//! pushing to it and only records the highest id it skipped (`need`). The
//! connection then catches up from the store, which it may trust once every id
//! up to `need` is *settled* (committed, or failed and never to be committed),
//! and only then clears the mark. A new feed starts lagged, with `need` the
//! last id assigned so far, which covers envelopes in flight when it subscribes.
//!
//! The store stays the source of truth; a feed is an in-memory shortcut that
//! never holds more than [`FEED_DEPTH`] envelopes or [`FEED_BYTES`] bytes,
//! and each envelope in it holds its size of its connection's byte budget
//! (`crate::budget`) until it is written to the client. The writer only
//! ever tries that budget: a push that finds no room marks the feed lagged,
//! as an overflow does, so a slow reader never makes the writer wait or
//! buffer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{watch, Notify};

use super::codec::Recipient;
use super::Stored;
use crate::budget::{self, Budget, Reservation};

/// Envelopes a feed holds before it is marked lagged.
pub const FEED_DEPTH: usize = 256;
/// Envelope bytes a feed holds before it is marked lagged.
pub const FEED_BYTES: usize = 1 << 20;

/// One subscriber's queue, as the writer sees it.
struct Entry {
    id: u64,
    queue: VecDeque<Stored>,
    bytes: usize,
    lagged: bool,
    /// While lagged: the highest id skipped (or in flight when subscribed).
    need: u64,
    wake: Arc<Notify>,
    /// What `queue` holds of its connection's budget (`None`: unbounded).
    budget: Option<Budget>,
    held: Reservation,
}

/// Every feed, by recipient; shared by the writer and the connections.
pub(crate) struct Feeds {
    // A std mutex: held for a lookup and a push, never across an `.await`.
    subs: Mutex<HashMap<Recipient, Vec<Entry>>>,
    next: AtomicU64,
    /// The last id the writer assigned (committed or not).
    assigned: AtomicU64,
    /// Every id up to this one is settled.
    settled: watch::Sender<u64>,
}

impl Feeds {
    pub(crate) fn new(next_id: u64) -> Arc<Self> {
        let last = next_id.saturating_sub(1);
        Arc::new(Self {
            subs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            assigned: AtomicU64::new(last),
            settled: watch::Sender::new(last),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Recipient, Vec<Entry>>> {
        // Every change under the lock is a single push or field update.
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writer: `id` was given to an envelope for `to`. Hands the envelope to
    /// every feed of `to` (returning it if there was none to take it).
    pub(crate) fn push(&self, to: &Recipient, stored: Stored) {
        self.assigned.store(stored.id, Ordering::Release);
        let mut subs = self.lock();
        let Some(entries) = subs.get_mut(to) else {
            return;
        };
        let mut stored = Some(stored);
        let count = entries.len();
        for (i, entry) in entries.iter_mut().enumerate() {
            let Some(item) = (if i + 1 == count {
                stored.take()
            } else {
                stored.clone()
            }) else {
                break;
            };
            if entry.lagged {
                entry.need = item.id;
                continue;
            }
            let room = if entry.queue.len() >= FEED_DEPTH
                || entry.bytes + item.envelope.len() > FEED_BYTES
            {
                None
            } else {
                match &entry.budget {
                    Some(b) => b.try_reserve(budget::charge(item.envelope.len())),
                    None => Some(Reservation::default()),
                }
            };
            let Some(room) = room else {
                entry.lagged = true;
                entry.need = item.id;
                entry.wake.notify_one();
                continue;
            };
            entry.held.merge(room);
            entry.bytes += item.envelope.len();
            entry.queue.push_back(item);
            entry.wake.notify_one();
        }
    }

    /// Writer: every id below `next_id` is settled (its batch committed or failed).
    pub(crate) fn settle(&self, next_id: u64) {
        let last = next_id.saturating_sub(1);
        self.settled.send_if_modified(|v| {
            let changed = *v < last;
            if changed {
                *v = last;
            }
            changed
        });
    }

    /// Opens a feed for `to`, whose pushes take room in `budget` if given;
    /// dropping it closes the feed.
    pub(crate) fn subscribe(self: &Arc<Self>, to: Recipient, budget: Option<Budget>) -> Feed {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let mut subs = self.lock();
        let need = self.assigned.load(Ordering::Acquire);
        subs.entry(to).or_default().push(Entry {
            id,
            queue: VecDeque::new(),
            bytes: 0,
            lagged: true,
            need,
            wake: Arc::clone(&wake),
            budget,
            held: Reservation::default(),
        });
        drop(subs);
        Feed {
            feeds: Arc::clone(self),
            to,
            id,
            wake,
            settled: self.settled.subscribe(),
        }
    }
}

/// What a feed has for its connection, from [`Feed::take`].
pub struct Taken {
    /// Envelopes pushed since the last take, in id order.
    pub pushed: VecDeque<Stored>,
    /// Whether envelopes were skipped: read the store, then [`Feed::caught_up`].
    pub lagged: bool,
    /// The budget `pushed` holds, `budget::charge` of each envelope's length.
    pub held: Reservation,
}

/// One connection's live feed; see the module docs. Dropping it unsubscribes.
pub struct Feed {
    feeds: Arc<Feeds>,
    to: Recipient,
    id: u64,
    wake: Arc<Notify>,
    settled: watch::Receiver<u64>,
}

impl Feed {
    /// Takes what was pushed, and whether the feed is lagged.
    pub fn take(&self) -> Taken {
        let mut subs = self.feeds.lock();
        let Some(entry) = self.entry(&mut subs) else {
            return Taken {
                pushed: VecDeque::new(),
                lagged: true,
                held: Reservation::default(),
            };
        };
        entry.bytes = 0;
        let pushed = std::mem::take(&mut entry.queue);
        Taken {
            pushed,
            lagged: entry.lagged,
            held: std::mem::take(&mut entry.held),
        }
    }

    /// The last settled id; read it *before* a catch-up read of the store.
    pub fn settled(&mut self) -> u64 {
        *self.settled.borrow_and_update()
    }

    /// After a store read that began when every id up to `settled` was
    /// settled, and delivered everything it found: resumes pushing if nothing
    /// newer was skipped meanwhile. Returns whether the feed is live again.
    pub fn caught_up(&self, settled: u64) -> bool {
        let mut subs = self.feeds.lock();
        let Some(entry) = self.entry(&mut subs) else {
            return false;
        };
        if entry.lagged && entry.need <= settled && entry.queue.is_empty() {
            entry.lagged = false;
        }
        !entry.lagged
    }

    /// Notified when something was pushed or the feed lagged. Arm a
    /// `notified()` of it before calling [`Feed::take`].
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Completes when more ids are settled.
    pub async fn settled_changed(&mut self) {
        if self.settled.changed().await.is_err() {
            // The store is gone: nothing more will ever settle.
            std::future::pending::<()>().await;
        }
    }

    fn entry<'a>(
        &self,
        subs: &'a mut MutexGuard<'_, HashMap<Recipient, Vec<Entry>>>,
    ) -> Option<&'a mut Entry> {
        subs.get_mut(&self.to)?.iter_mut().find(|e| e.id == self.id)
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let mut subs = self.feeds.lock();
        if let Some(list) = subs.get_mut(&self.to) {
            list.retain(|e| e.id != self.id);
            if list.is_empty() {
                subs.remove(&self.to);
            }
        }
    }
}
