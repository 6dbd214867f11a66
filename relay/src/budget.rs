//! Byte budgets: the memory the relay holds for its clients, bounded in bytes.
//!
//! Counting messages does not bound memory when a message may be 64 KiB or
//! 256 KiB, and bounding each connection does not bound the relay when
//! connections are cheap. So whatever the relay holds for a client, or on a
//! client's behalf, holds a [`Reservation`] of its size until it is written
//! or let go: a message queued for the client, envelopes read from the store
//! ahead of the writer, download chunks read ahead, a live push waiting in a
//! feed or a notice queue, a message being received, a `Send` waiting for its
//! commit, an upload chunk waiting for the disk.
//!
//! A reservation is taken from four budgets at once: the connection's, its
//! key's, its source address's and the relay's. Each is a semaphore of bytes,
//! first come first served, and they are taken innermost first, so whoever
//! waits holds back only its own connection, key or address. One key or one
//! address cannot take more than its share of the relay's budget, and the
//! defaults leave most of it to everybody else.
//!
//! Who waits decides what backpressure means. A reader waits before it reads
//! the rest of a message, so a client that keeps the budget tied up is slowed
//! down by TCP; the delivery loop waits before it reads the store. The store's
//! writer never waits: a push that finds no room marks the feed lagged (the
//! connection catches up from the store later) and a notice with no room is
//! dropped, as a notice to a full queue always was. A client that does not
//! read what was queued for it holds its share only until the write timeout
//! closes its connection.
//!
//! Short answers (`Stored`, `Pong`, `UploadProgress`, errors) reserve nothing:
//! they are few per connection (the writer's queue bounds their number) and
//! small, and making them wait for bytes could stall a connection whose whole
//! budget is held by work that waits on one of them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes charged for a message beyond its payload: its box, its queue slot,
/// its encoding's headers.
pub const MESSAGE_OVERHEAD: usize = 128;

/// The largest single reservation: a largest link message with its overhead.
pub const MAX_RESERVATION: usize = sotto_crypto::link::MAX_MESSAGE_LEN + 8 + MESSAGE_OVERHEAD;

/// The smallest budget a setting may give: two largest messages, so that a
/// connection can receive one while another is still queued.
pub const MIN_BUDGET: usize = 512 * 1024;

/// Default for [`BufferLimits::total`]: 64 MiB.
pub const DEFAULT_TOTAL: usize = 64 << 20;
/// Default for [`BufferLimits::per_address`]: 16 MiB.
pub const DEFAULT_PER_ADDRESS: usize = 16 << 20;
/// Default for [`BufferLimits::per_key`]: 8 MiB.
pub const DEFAULT_PER_KEY: usize = 8 << 20;
/// Default for [`BufferLimits::per_connection`]: 1 MiB, which keeps a file
/// transfer streaming at loopback speed.
pub const DEFAULT_PER_CONNECTION: usize = 1 << 20;

/// How many bytes the relay holds for clients, at each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// Over every connection.
    pub total: usize,
    /// Over the connections from one source address (an IPv6 /64).
    pub per_address: usize,
    /// Over the connections of one key.
    pub per_key: usize,
    /// One connection.
    pub per_connection: usize,
}

impl Default for BufferLimits {
    fn default() -> Self {
        Self {
            total: DEFAULT_TOTAL,
            per_address: DEFAULT_PER_ADDRESS,
            per_key: DEFAULT_PER_KEY,
            per_connection: DEFAULT_PER_CONNECTION,
        }
    }
}

/// What a message with `payload` bytes is charged.
pub fn charge(payload: usize) -> usize {
    payload.saturating_add(MESSAGE_OVERHEAD)
}

/// A semaphore of `bytes` permits: one level of a [`Budget`]. Sizes below
/// [`MIN_BUDGET`] are raised to it, so that every reservation fits.
pub fn pool(bytes: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        bytes.clamp(MIN_BUDGET, Semaphore::MAX_PERMITS),
    ))
}

/// The levels one connection reserves from, innermost first.
#[derive(Clone, Default)]
pub struct Budget {
    levels: Arc<[Arc<Semaphore>]>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("levels", &self.levels.len())
            .finish()
    }
}

impl Budget {
    /// A budget of these levels, innermost (the connection's) first.
    pub fn new(levels: Vec<Arc<Semaphore>>) -> Self {
        Self {
            levels: levels.into(),
        }
    }

    /// A budget that never runs out (tests and in-process tools).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Reserves `bytes` (at most [`MAX_RESERVATION`]) from every level,
    /// waiting for room at each in turn.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let bytes = bytes.min(MAX_RESERVATION);
        let n = permits(bytes);
        let mut held = Vec::with_capacity(self.levels.len());
        for level in self.levels.iter() {
            match Arc::clone(level).acquire_many_owned(n).await {
                Ok(permit) => held.push(permit),
                // A pool is never closed; were one closed, it would have
                // stopped counting, and so does this reservation.
                Err(_) => break,
            }
        }
        Reservation { bytes, held }
    }

    /// Reserves `bytes` if every level has room now; never waits.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let bytes = bytes.min(MAX_RESERVATION);
        let n = permits(bytes);
        let mut held = Vec::with_capacity(self.levels.len());
        for level in self.levels.iter() {
            held.push(Arc::clone(level).try_acquire_many_owned(n).ok()?);
        }
        Some(Reservation { bytes, held })
    }
}

fn permits(bytes: usize) -> u32 {
    // At most MAX_RESERVATION, well below u32::MAX.
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Bytes held at every level of a [`Budget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    bytes: usize,
    held: Vec<OwnedSemaphorePermit>,
}

impl Reservation {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `bytes` of this reservation into one of their own; `None` if
    /// it holds fewer.
    pub fn split(&mut self, bytes: usize) -> Option<Reservation> {
        if bytes > self.bytes {
            return None;
        }
        let mut held = Vec::with_capacity(self.held.len());
        for permit in &mut self.held {
            held.push(permit.split(bytes)?);
        }
        self.bytes -= bytes;
        Some(Reservation { bytes, held })
    }

    /// Adds `other`, taken from the same budget, to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        if self.held.is_empty() {
            self.held = other.held;
        } else {
            for (mine, theirs) in self.held.iter_mut().zip(other.held) {
                mine.merge(theirs);
            }
        }
        self.bytes += other.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    fn budget(levels: &[&Arc<Semaphore>]) -> Budget {
        Budget::new(levels.iter().map(|l| Arc::clone(l)).collect())
    }

    #[test]
    fn a_reservation_holds_its_bytes_at_every_level_until_dropped() {
        let (conn, key, relay) = (pool(MIN_BUDGET), pool(1024 * KIB), pool(4096 * KIB));
        let b = budget(&[&conn, &key, &relay]);
        let mut r = b.try_reserve(200 * KIB).unwrap();
        assert_eq!(conn.available_permits(), MIN_BUDGET - 200 * KIB);
        assert_eq!(key.available_permits(), 824 * KIB);
        assert_eq!(relay.available_permits(), 3896 * KIB);
        let second = b.try_reserve(200 * KIB).unwrap();
        // The connection's level is what stops the next one.
        assert!(b.try_reserve(200 * KIB).is_none());
        assert_eq!(
            key.available_permits(),
            624 * KIB,
            "a failed try holds nothing"
        );
        drop(second);

        let part = r.split(100 * KIB).unwrap();
        assert_eq!((r.bytes(), part.bytes()), (100 * KIB, 100 * KIB));
        assert!(r.split(101 * KIB).is_none());
        drop(r);
        assert_eq!(conn.available_permits(), MIN_BUDGET - 100 * KIB);
        drop(part);
        assert_eq!(relay.available_permits(), 4096 * KIB);
    }

    #[test]
    fn reservations_merge_and_sizes_are_bounded() {
        let conn = pool(0);
        assert_eq!(
            conn.available_permits(),
            MIN_BUDGET,
            "raised to the minimum"
        );
        let b = budget(&[&conn]);
        let mut total = Reservation::default();
        total.merge(b.try_reserve(10).unwrap());
        total.merge(b.try_reserve(20).unwrap());
        assert_eq!(total.bytes(), 30);
        assert_eq!(conn.available_permits(), MIN_BUDGET - 30);
        assert_eq!(b.try_reserve(usize::MAX).unwrap().bytes(), MAX_RESERVATION);
        drop(total);
        assert_eq!(conn.available_permits(), MIN_BUDGET);

        let free = Budget::unlimited();
        let mut r = free.try_reserve(5).unwrap();
        assert_eq!(r.split(2).unwrap().bytes(), 2);
        assert_eq!(r.bytes(), 3);
    }

    #[tokio::test]
    async fn a_waiter_gets_room_once_it_is_given_back() {
        let conn = pool(MIN_BUDGET);
        let b = budget(&[&conn]);
        let first = b.reserve(MIN_BUDGET).await;
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(MIN_BUDGET / 2).await.bytes() }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "reserved past the budget");
        drop(first);
        assert_eq!(waiting.await.unwrap(), MIN_BUDGET / 2);
    }

    #[tokio::test]
    async fn one_key_cannot_take_the_whole_relay() {
        // Two keys' budgets of 1 MiB under a relay of 2 MiB: one key that
        // holds all it may still leaves the other its share.
        let relay = pool(2048 * KIB);
        let (greedy, good) = (pool(1024 * KIB), pool(1024 * KIB));
        let mut held = Vec::new();
        for _ in 0..8 {
            let conn = pool(MIN_BUDGET);
            let b = budget(&[&conn, &greedy, &relay]);
            if let Some(r) = b.try_reserve(MIN_BUDGET / 2) {
                held.push((conn, r));
            }
        }
        assert_eq!(held.len(), 4, "the greedy key got only its share");
        assert_eq!(relay.available_permits(), 1024 * KIB);
        let conn = pool(MIN_BUDGET);
        let b = budget(&[&conn, &good, &relay]);
        assert!(b.try_reserve(MIN_BUDGET / 2).is_some());
    }
}
