//! Who is subscribed to live delivery right now.
//!
//! When an envelope is stored for a key, every connection of that key that asked
//! for live delivery is woken and fetches from the store itself: the store stays
//! the single source of truth, so a wake-up can be coalesced or lost to a race
//! without losing an envelope. The map is only ever consulted by key; nothing
//! offers a list of who is connected.
//!
//! Live-only notices (`Notify`, presence) have no store behind them: a live
//! subscription also has a small bounded queue of notices, filled with
//! `try_send`. A notice for a key with no live subscription, or whose queue is
//! full, is dropped: a sender never waits on a recipient, and a flood of
//! notices costs each recipient at most [`NOTICE_QUEUE`] envelopes of memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sotto_keys::PublicKey;
use tokio::sync::{mpsc, Notify};

/// Notices held for one live connection before new ones are dropped.
pub const NOTICE_QUEUE: usize = 16;

/// One subscribed connection: its wake-up handle and, if it is live, its
/// queue of notices.
struct Subscriber {
    id: u64,
    wake: Arc<Notify>,
    notices: Option<mpsc::Sender<Vec<u8>>>,
}

type Subscribers = HashMap<PublicKey, Vec<Subscriber>>;

/// Live subscriptions by recipient key.
#[derive(Default)]
pub struct Registry {
    // A std Mutex: it is held for a map lookup only, never across an `.await`.
    subs: Mutex<Subscribers>,
    next: std::sync::atomic::AtomicU64,
}

/// A subscription; dropping it unsubscribes.
pub struct Subscription {
    registry: Arc<Registry>,
    key: PublicKey,
    id: u64,
    notify: Arc<Notify>,
}

/// The notices for one subscription (none unless it is live).
pub struct Notices(Option<mpsc::Receiver<Vec<u8>>>);

impl Registry {
    /// Subscribes `key` to wake-ups and, if `live`, to notices.
    pub fn subscribe(self: &Arc<Self>, key: PublicKey, live: bool) -> (Subscription, Notices) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let (notices, receiver) = if live {
            let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.lock().entry(key).or_default().push(Subscriber {
            id,
            wake: wake.clone(),
            notices,
        });
        let sub = Subscription {
            registry: self.clone(),
            key,
            id,
            notify: wake,
        };
        (sub, Notices(receiver))
    }

    /// Wakes every live connection of `key`.
    pub fn notify(&self, key: &PublicKey) {
        if let Some(subs) = self.lock().get(key) {
            for s in subs {
                s.wake.notify_one();
            }
        }
    }

    /// Hands `envelope` to every live connection of `key` whose notice queue
    /// has room; returns how many took it. Never waits.
    pub fn notice(&self, key: &PublicKey, envelope: &[u8]) -> usize {
        let subs = self.lock();
        let Some(subs) = subs.get(key) else {
            return 0;
        };
        subs.iter()
            .filter_map(|s| s.notices.as_ref())
            .filter(|q| q.try_send(envelope.to_vec()).is_ok())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so poisoning is ignored.
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Subscription {
    /// The wake-up handle.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Notices {
    /// The next notice; never completes for a subscription that is not live
    /// (or once the subscription is gone).
    pub async fn next(&mut self) -> Vec<u8> {
        if let Some(rx) = &mut self.0 {
            if let Some(notice) = rx.recv().await {
                return notice;
            }
        }
        std::future::pending().await
    }
}

impl Notices {
    /// A notice already queued, if any.
    pub fn try_next(&mut self) -> Option<Vec<u8>> {
        self.0.as_mut().and_then(|rx| rx.try_recv().ok())
    }
}

impl Drop for Subscription {
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
    async fn notify_wakes_only_the_subscribed_key_and_drop_unsubscribes() {
        let reg = Arc::new(Registry::default());
        let a = PublicKey::from_bytes([1; 32]);
        let b = PublicKey::from_bytes([2; 32]);
        let (sub, _notices) = reg.subscribe(a, true);
        reg.notify(&b);
        reg.notify(&a);
        // notify_one stores a permit: this completes at once.
        sub.notify().notified().await;
        drop(sub);
        assert!(reg.lock().is_empty());
    }

    #[tokio::test]
    async fn notices_go_to_live_subscriptions_only_and_overflow_is_dropped() {
        let reg = Arc::new(Registry::default());
        let a = PublicKey::from_bytes([1; 32]);
        let b = PublicKey::from_bytes([2; 32]);
        assert_eq!(reg.notice(&a, b"nobody there"), 0);

        let (_live, mut live_notices) = reg.subscribe(a, true);
        let (_drain, _) = reg.subscribe(a, false);
        let (_other, _) = reg.subscribe(b, true);
        assert_eq!(reg.notice(&a, b"hello"), 1);
        assert_eq!(live_notices.next().await, b"hello");

        for i in 0..NOTICE_QUEUE {
            assert_eq!(reg.notice(&a, &[i as u8]), 1);
        }
        // Full: dropped, not queued, and the sender did not wait.
        assert_eq!(reg.notice(&a, b"one too many"), 0);
        for i in 0..NOTICE_QUEUE {
            assert_eq!(live_notices.next().await, [i as u8]);
        }
        assert_eq!(reg.notice(&a, b"room again"), 1);
        assert_eq!(live_notices.try_next().as_deref(), Some(&b"room again"[..]));
        assert_eq!(live_notices.try_next(), None);
    }
}
