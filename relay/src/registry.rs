//! Who is listening for live-only notices right now.
//!
//! Envelopes reach live recipients through the store's feeds
//! (`store::live`), because a mailbox has a store behind it. Live-only notices
//! (`Notify`, presence) have none: a connection that asked for live delivery
//! registers a small bounded queue here, filled with `try_send`. A notice for
//! a key with no live connection, or whose queue is full, is dropped: a sender
//! never waits on a recipient, and a flood of notices costs each recipient at
//! most [`NOTICE_QUEUE`] envelopes of memory, each taken from the recipient
//! connection's byte budget (`crate::budget`): a notice that finds no room
//! there is dropped too. The map is only ever consulted by key; nothing
//! offers a list of who is connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sotto_keys::PublicKey;
use tokio::sync::mpsc;

use crate::budget::{self, Budget, Reservation};

/// Notices held for one live connection before new ones are dropped.
pub const NOTICE_QUEUE: usize = 16;

/// A notice, with what it holds of its recipient's budget.
#[derive(Debug)]
pub struct Notice {
    /// The sealed envelope.
    pub envelope: Vec<u8>,
    /// Its bytes of the recipient connection's budget.
    pub held: Reservation,
}

/// One live connection's queue. Boxed notices: the queue's first block of
/// slots is allocated with it, for every live connection, used or not.
struct Subscriber {
    id: u64,
    notices: mpsc::Sender<Box<Notice>>,
    budget: Budget,
}

type Subscribers = HashMap<PublicKey, Vec<Subscriber>>;

/// Live notice queues by recipient key.
#[derive(Default)]
pub struct Registry {
    // A std Mutex: it is held for a map lookup only, never across an `.await`.
    subs: Mutex<Subscribers>,
    next: std::sync::atomic::AtomicU64,
}

/// The notices of one live connection; dropping it unsubscribes.
pub struct Notices {
    registry: Arc<Registry>,
    key: PublicKey,
    id: u64,
    rx: mpsc::Receiver<Box<Notice>>,
}

impl Registry {
    /// Registers a live connection of `key` for notices, which take their
    /// room in `budget`.
    pub fn subscribe(self: &Arc<Self>, key: PublicKey, budget: Budget) -> Notices {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        self.lock().entry(key).or_default().push(Subscriber {
            id,
            notices: tx,
            budget,
        });
        Notices {
            registry: self.clone(),
            key,
            id,
            rx,
        }
    }

    /// Hands `envelope` to every live connection of `key` whose notice queue
    /// and budget have room; returns how many took it. Never waits.
    pub fn notice(&self, key: &PublicKey, envelope: &[u8]) -> usize {
        let subs = self.lock();
        let Some(subs) = subs.get(key) else {
            return 0;
        };
        subs.iter()
            .filter(|s| {
                let Ok(slot) = s.notices.try_reserve() else {
                    return false;
                };
                let Some(room) = s.budget.try_reserve(budget::charge(envelope.len())) else {
                    return false;
                };
                slot.send(Box::new(Notice {
                    envelope: envelope.to_vec(),
                    held: room,
                }));
                true
            })
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so poisoning is ignored.
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Notices {
    /// The next notice. The registry holds the sending side for as long as
    /// this exists, so this only ever ends with a notice.
    pub async fn next(&mut self) -> Notice {
        match self.rx.recv().await {
            Some(notice) => *notice,
            None => std::future::pending().await,
        }
    }

    /// A notice already queued, if any.
    pub fn try_next(&mut self) -> Option<Notice> {
        self.rx.try_recv().ok().map(|notice| *notice)
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        let mut subs = self.registry.lock();
        if let Some(list) = subs.get_mut(&self.key) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                subs.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_go_to_live_subscriptions_only_and_overflow_is_dropped() {
        let reg = Arc::new(Registry::default());
        let a = PublicKey::from_bytes([1; 32]);
        let b = PublicKey::from_bytes([2; 32]);
        assert_eq!(reg.notice(&a, b"nobody there"), 0);

        let mut live_notices = reg.subscribe(a, Budget::unlimited());
        let _other = reg.subscribe(b, Budget::unlimited());
        assert_eq!(reg.notice(&a, b"hello"), 1);
        assert_eq!(live_notices.next().await.envelope, b"hello");

        for i in 0..NOTICE_QUEUE {
            assert_eq!(reg.notice(&a, &[i as u8]), 1);
        }
        // Full: dropped, not queued, and the sender did not wait.
        assert_eq!(reg.notice(&a, b"one too many"), 0);
        for i in 0..NOTICE_QUEUE {
            assert_eq!(live_notices.next().await.envelope, [i as u8]);
        }
        assert_eq!(reg.notice(&a, b"room again"), 1);
        assert_eq!(
            live_notices.try_next().map(|n| n.envelope).as_deref(),
            Some(&b"room again"[..])
        );
        assert!(live_notices.try_next().is_none());

        // Dropping unsubscribes: nothing is left in the map for `a`.
        drop(live_notices);
        assert_eq!(reg.notice(&a, b"gone"), 0);
        assert!(!reg.lock().contains_key(&a));
    }

    #[tokio::test]
    async fn a_notice_takes_room_in_its_recipients_budget_or_is_dropped() {
        let reg = Arc::new(Registry::default());
        let a = PublicKey::from_bytes([1; 32]);
        let pool = budget::pool(budget::MIN_BUDGET);
        let mut notices = reg.subscribe(a, Budget::new(vec![Arc::clone(&pool)]));
        let big = vec![0u8; 200 * 1024];
        assert_eq!(reg.notice(&a, &big), 1);
        assert_eq!(reg.notice(&a, &big), 1);
        // A third would pass the connection's budget: dropped.
        assert_eq!(reg.notice(&a, &big), 0);
        let Notice { envelope, held } = notices.next().await;
        assert_eq!(
            (envelope.len(), held.bytes()),
            (big.len(), budget::charge(big.len()))
        );
        drop(held);
        assert_eq!(reg.notice(&a, &big), 1, "room again once one is let go");
    }
}
