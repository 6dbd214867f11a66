//! Connections that have not finished their handshake, and which of them to
//! close when they crowd out the rest.
//!
//! A TCP connection costs an attacker next to nothing and proves nothing, so
//! a half-open connection must never be able to keep a newer one out:
//!
//! - until its first handshake message has arrived, a connection holds no
//!   handshake slot, only its connection slot, and for a short time
//!   (`first_message_timeout`);
//! - once it has, it takes one of `max_handshakes` slots; when they are all
//!   taken, the connection that has been in its handshake longest is closed
//!   to make room;
//! - one source address has at most `max_handshakes_per_address` half-open
//!   connections (silent ones included); a newer one closes that address's
//!   oldest, so a flood from one address only ever displaces itself;
//! - when the relay's connection slots run low, the accept loop closes the
//!   oldest half-open connection, silent ones first ([`HalfOpen::evict_oldest`]).
//!
//! A newcomer is never the one refused: whoever floods the relay with sockets
//! owns the oldest ones, and a good client's handshake, which takes a round
//! trip, finishes long before it would be the oldest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::source::Source;

/// Why a half-open connection was closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Eviction {
    /// A newer connection came from the same address, which had its most.
    #[error(
        "made room for a newer connection from its address (max_handshakes_per_address = {0})"
    )]
    Address(usize),
    /// Every handshake slot was taken when a newer handshake began.
    #[error("made room for a newer handshake (max_handshakes = {0})")]
    Handshakes(usize),
    /// The relay's connection slots ran low.
    #[error("made room for a newer connection (connection slots running low)")]
    Slots,
}

/// The table of half-open connections; see the module docs.
pub(crate) struct HalfOpen {
    max_handshakes: usize,
    per_address: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Ids are given in order of arrival, so the smallest is the oldest.
    next: u64,
    entries: HashMap<u64, Entry>,
    /// Connections still waiting for their first message.
    silent: BTreeSet<u64>,
    /// Connections in their handshake, by the order they began it.
    handshaking: BTreeMap<u64, u64>,
    by_source: HashMap<Source, BTreeSet<u64>>,
}

struct Entry {
    source: Source,
    /// Its place in `handshaking`, once it has begun the handshake.
    began: Option<u64>,
    evict: oneshot::Sender<Eviction>,
}

/// A connection's place in the table, until it authenticates or ends.
pub(crate) struct Ticket {
    table: Arc<HalfOpen>,
    id: u64,
    evicted: oneshot::Receiver<Eviction>,
}

impl HalfOpen {
    pub(crate) fn new(max_handshakes: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_handshakes: max_handshakes.max(1),
            per_address: per_address.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change under the lock is completed before it is released.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection from `source`: closes that address's oldest
    /// half-open connection if it has its most.
    pub(crate) fn admit(self: &Arc<Self>, source: Source) -> Ticket {
        let (evict, evicted) = oneshot::channel();
        let mut t = self.lock();
        let id = t.next;
        t.next += 1;
        t.entries.insert(
            id,
            Entry {
                source,
                began: None,
                evict,
            },
        );
        t.silent.insert(id);
        let mine = t.by_source.entry(source).or_default();
        mine.insert(id);
        if mine.len() > self.per_address {
            if let Some(&oldest) = mine.first() {
                t.evict(oldest, Eviction::Address(self.per_address));
            }
        }
        drop(t);
        Ticket {
            table: Arc::clone(self),
            id,
            evicted,
        }
    }

    /// Closes the oldest half-open connection, a silent one if there is any;
    /// false if there is none.
    pub(crate) fn evict_oldest(&self) -> bool {
        let mut t = self.lock();
        let oldest = t
            .silent
            .first()
            .copied()
            .or_else(|| t.handshaking.values().next().copied());
        match oldest {
            Some(id) => {
                t.evict(id, Eviction::Slots);
                true
            }
            None => false,
        }
    }

    /// Half-open connections now: (silent, in their handshake).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.silent.len(), t.handshaking.len())
    }
}

impl Table {
    /// Takes `id` out of the table and tells its connection why.
    fn evict(&mut self, id: u64, why: Eviction) {
        if let Some(entry) = self.remove(id) {
            let _ = entry.evict.send(why);
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.silent.remove(&id);
        if let Some(began) = entry.began {
            self.handshaking.remove(&began);
        }
        if let Some(ids) = self.by_source.get_mut(&entry.source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&entry.source);
            }
        }
        Some(entry)
    }
}

impl Ticket {
    /// The first message has arrived: takes a handshake slot, closing the
    /// connection longest in its handshake if none is free.
    pub(crate) fn handshaking(&self) {
        let max = self.table.max_handshakes;
        let mut t = self.table.lock();
        let began = t.next;
        t.next += 1;
        let Some(entry) = t.entries.get_mut(&self.id) else {
            return; // evicted already; it is told so
        };
        if entry.began.is_some() {
            return;
        }
        entry.began = Some(began);
        t.silent.remove(&self.id);
        t.handshaking.insert(began, self.id);
        if t.handshaking.len() > max {
            if let Some(&oldest) = t.handshaking.values().next() {
                t.evict(oldest, Eviction::Handshakes(max));
            }
        }
    }

    /// Completes if the connection was closed to make room, with why.
    pub(crate) async fn evicted(&mut self) -> Eviction {
        match (&mut self.evicted).await {
            Ok(why) => why,
            // Only a ticket's own drop removes its entry otherwise.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(n: u8) -> Source {
        Source::from(std::net::IpAddr::from([127, 0, 0, n]))
    }

    fn is_evicted(t: &mut Ticket) -> Option<Eviction> {
        t.evicted.try_recv().ok()
    }

    #[test]
    fn an_address_over_its_limit_displaces_only_its_own_oldest() {
        let table = HalfOpen::new(100, 3);
        let mut other = table.admit(from(9));
        let mut flood: Vec<Ticket> = (0..5).map(|_| table.admit(from(2))).collect();
        let evicted: Vec<_> = flood.iter_mut().map(is_evicted).collect();
        assert_eq!(
            evicted,
            [
                Some(Eviction::Address(3)),
                Some(Eviction::Address(3)),
                None,
                None,
                None
            ]
        );
        assert_eq!(is_evicted(&mut other), None);
        assert_eq!(table.counts(), (4, 0));
        drop(flood);
        drop(other);
        assert_eq!(table.counts(), (0, 0));
        assert!(table.lock().by_source.is_empty());
    }

    #[test]
    fn full_handshake_slots_close_the_longest_handshake_not_the_newcomer() {
        let table = HalfOpen::new(2, 100);
        let mut first = table.admit(from(2));
        let mut second = table.admit(from(3));
        // Silent ones hold no slot, however many.
        let mut silent: Vec<Ticket> = (0..10).map(|_| table.admit(from(4))).collect();
        // The second begins its handshake before the first.
        second.handshaking();
        first.handshaking();
        assert_eq!(table.counts(), (10, 2));
        let mut newcomer = silent.pop().unwrap();
        newcomer.handshaking();
        assert_eq!(is_evicted(&mut second), Some(Eviction::Handshakes(2)));
        assert_eq!(is_evicted(&mut first), None);
        assert_eq!(is_evicted(&mut newcomer), None);
        assert!(silent.iter_mut().all(|t| is_evicted(t).is_none()));
        assert_eq!(table.counts(), (9, 2));
    }

    #[test]
    fn when_slots_run_low_the_oldest_silent_connection_goes_first() {
        let table = HalfOpen::new(10, 10);
        let mut shaking = table.admit(from(2));
        shaking.handshaking();
        let mut a = table.admit(from(3));
        let mut b = table.admit(from(4));
        assert!(table.evict_oldest());
        assert_eq!(is_evicted(&mut a), Some(Eviction::Slots));
        assert!(is_evicted(&mut b).is_none() && is_evicted(&mut shaking).is_none());
        assert!(table.evict_oldest());
        assert_eq!(is_evicted(&mut b), Some(Eviction::Slots));
        assert!(table.evict_oldest());
        assert_eq!(is_evicted(&mut shaking), Some(Eviction::Slots));
        assert!(!table.evict_oldest());
        // An evicted ticket beginning its handshake takes no slot.
        a.handshaking();
        assert_eq!(table.counts(), (0, 0));
    }
}
