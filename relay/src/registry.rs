//! Who is subscribed to live delivery right now.
//!
//! When an envelope is stored for a key, every connection of that key that asked
//! for live delivery is woken and fetches from the store itself: the store stays
//! the single source of truth, so a wake-up can be coalesced or lost to a race
//! without losing an envelope. The map is only ever consulted by key; nothing
//! offers a list of who is connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sotto_keys::PublicKey;
use tokio::sync::Notify;

type Subscribers = HashMap<PublicKey, Vec<(u64, Arc<Notify>)>>;

/// Live subscriptions by recipient key.
#[derive(Default)]
pub struct Registry {
    // A std Mutex: it is held for a map lookup only, never across an `.await`.
    subs: Mutex<Subscribers>,
    next: std::sync::atomic::AtomicU64,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    registry: Arc<Registry>,
    key: PublicKey,
    id: u64,
    notify: Arc<Notify>,
}

impl Registry {
    /// Subscribes `key` to wake-ups.
    pub fn subscribe(self: &Arc<Self>, key: PublicKey) -> Subscription {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.lock()
            .entry(key)
            .or_default()
            .push((id, notify.clone()));
        Subscription {
            registry: self.clone(),
            key,
            id,
            notify,
        }
    }

    /// Wakes every live connection of `key`.
    pub fn notify(&self, key: &PublicKey) {
        if let Some(subs) = self.lock().get(key) {
            for (_, n) in subs {
                n.notify_one();
            }
        }
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

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.registry.lock();
        if let Some(list) = subs.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
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
        let sub = reg.subscribe(a);
        reg.notify(&b);
        reg.notify(&a);
        // notify_one stores a permit: this completes at once.
        sub.notify().notified().await;
        drop(sub);
        assert!(reg.lock().is_empty());
    }
}
