//! Rate limits per authenticated key: token buckets on `Send`s and on upload bytes.
//!
//! Quotas bound what a mailbox may *hold*; they do not stop one client from
//! making the relay work as fast as it can (commit after commit, chunk after
//! chunk) at the expense of everybody else. So each key gets two buckets,
//! shared by all of its connections (opening more connections buys nothing):
//!
//! - envelopes: a `Send` takes one token; with none left it is answered
//!   `RateLimited` at once, before it reaches the store, so a flood never
//!   occupies the store's writer;
//! - upload bytes: an `UploadChunk` takes its length; uploads are streams the
//!   client does not wait on, so instead of refusing, the connection pauses
//!   reading until the bucket has refilled (the client is slowed down through
//!   TCP and its upload goes on at the allowed rate).
//!
//! Buckets start full, refill continuously at their rate and hold at most
//! their burst. A key's buckets outlive its connections while they are not
//! full, so reconnecting does not refill them; full ones of keys no longer
//! connected are forgotten from time to time, which bounds the map by the keys
//! seen in the last few seconds.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sotto_keys::PublicKey;

/// Default for [`RateLimits::envelopes_per_second`]: ten times a busy chat,
/// and enough for a benchmark client to push 1,000 durable envelopes a second.
pub const DEFAULT_ENVELOPES_PER_SECOND: u32 = 1_000;
/// Default for [`RateLimits::envelope_burst`].
pub const DEFAULT_ENVELOPE_BURST: u32 = 2_000;
/// Default for [`RateLimits::upload_bytes_per_second`]: 1 GiB/s, faster than
/// a disk takes it, so a single upload is never slowed down by default.
pub const DEFAULT_UPLOAD_BYTES_PER_SECOND: u64 = 1 << 30;
/// Default for [`RateLimits::upload_burst_bytes`]: 256 MiB.
pub const DEFAULT_UPLOAD_BURST_BYTES: u64 = 256 << 20;

/// How often (in new connections) buckets of departed keys are swept.
const SWEEP_EVERY: u64 = 1024;

/// The configured rates. A zero rate means "no limit" for that bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `Send`s accepted per second per key, on average.
    pub envelopes_per_second: u32,
    /// `Send`s a key may make at once after a quiet period.
    pub envelope_burst: u32,
    /// Upload bytes accepted per second per key, on average.
    pub upload_bytes_per_second: u64,
    /// Upload bytes a key may send at once after a quiet period.
    pub upload_burst_bytes: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            envelopes_per_second: DEFAULT_ENVELOPES_PER_SECOND,
            envelope_burst: DEFAULT_ENVELOPE_BURST,
            upload_bytes_per_second: DEFAULT_UPLOAD_BYTES_PER_SECOND,
            upload_burst_bytes: DEFAULT_UPLOAD_BURST_BYTES,
        }
    }
}

/// A token bucket. `tokens` may go below zero for a paced stream (an upload
/// that took more than was there): the debt is paid back by waiting.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        // A burst below one unit could never pass anything.
        let burst = burst.max(1.0);
        Self {
            tokens: burst,
            rate,
            burst,
            last: now,
        }
    }

    fn unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` if there are that many; otherwise takes nothing and says how
    /// long until there would be.
    fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        if self.unlimited() {
            return Ok(());
        }
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }

    /// Takes `n` (at most a burst's worth) in any case; returns how long the
    /// caller must wait before going on, zero if the tokens were there.
    fn take_paced(&mut self, n: f64, now: Instant) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= n.min(self.burst);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn full(&mut self, now: Instant) -> bool {
        self.unlimited() || {
            self.refill(now);
            self.tokens >= self.burst
        }
    }
}

/// One key's buckets and how many of its connections are open.
#[derive(Debug)]
struct KeyState {
    connections: usize,
    envelopes: Bucket,
    upload_bytes: Bucket,
}

/// The buckets of every key connected recently. Keyed by client key on
/// owner links; on delivery links, which prove no key, by source address
/// and by connection (see `crate::delivery`).
#[derive(Debug)]
pub struct RateLimiter<K = PublicKey> {
    limits: RateLimits,
    // A std mutex: held for a few arithmetic operations, never across an await.
    keys: Mutex<Keys<K>>,
}

#[derive(Debug)]
struct Keys<K> {
    by_key: HashMap<K, KeyState>,
    joins: u64,
}

/// A `Send` refused because the key is over its envelope rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {per_second} messages per second (bursts of {burst}); retry in {retry_ms} ms")]
pub struct Limited {
    /// The configured rate.
    pub per_second: u32,
    /// The configured burst.
    pub burst: u32,
    /// When a token will be there again.
    pub retry_ms: u64,
}

impl<K: Copy + Eq + Hash> RateLimiter<K> {
    /// A limiter with these rates.
    pub fn new(limits: RateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            keys: Mutex::new(Keys {
                by_key: HashMap::new(),
                joins: 0,
            }),
        })
    }

    /// Registers a connection of `key`; its buckets are shared with the key's
    /// other connections.
    pub fn connect(self: &Arc<Self>, key: K) -> KeyLimit<K> {
        self.lock().state(key, self.limits).connections += 1;
        KeyLimit {
            limiter: Arc::clone(self),
            key,
        }
    }

    /// Takes a token for one envelope from `key`'s bucket, which need not
    /// have a connection (a recipient's bucket of first-contact deliveries).
    pub fn envelope_for(&self, key: K) -> Result<(), Limited> {
        let limits = self.limits;
        let now = Instant::now();
        self.lock()
            .state(key, limits)
            .envelopes
            .try_take(1.0, now)
            .map_err(|wait| limited(limits, wait))
    }
}

fn limited(limits: RateLimits, wait: Duration) -> Limited {
    Limited {
        per_second: limits.envelopes_per_second,
        burst: limits.envelope_burst,
        retry_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
    }
}

impl<K: Copy + Eq + Hash> Keys<K> {
    /// `key`'s buckets, made full if it has none; sweeps now and then.
    fn state(&mut self, key: K, limits: RateLimits) -> &mut KeyState {
        let now = Instant::now();
        self.joins = self.joins.wrapping_add(1);
        if self.joins.is_multiple_of(SWEEP_EVERY) {
            self.by_key.retain(|_, s| {
                s.connections > 0 || !(s.envelopes.full(now) && s.upload_bytes.full(now))
            });
        }
        self.by_key.entry(key).or_insert_with(|| KeyState {
            connections: 0,
            envelopes: Bucket::new(
                f64::from(limits.envelopes_per_second),
                f64::from(limits.envelope_burst),
                now,
            ),
            upload_bytes: Bucket::new(
                limits.upload_bytes_per_second as f64,
                limits.upload_burst_bytes as f64,
                now,
            ),
        })
    }
}

impl<K: Copy + Eq + Hash> RateLimiter<K> {
    /// Keys with buckets kept (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().by_key.len()
    }

    fn with<T>(&self, key: &K, f: impl FnOnce(&mut KeyState, Instant) -> T) -> Option<T> {
        let now = Instant::now();
        self.lock().by_key.get_mut(key).map(|s| f(s, now))
    }

    fn lock(&self) -> MutexGuard<'_, Keys<K>> {
        // Every update leaves the map consistent, so a panic elsewhere while
        // holding the lock does not matter.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's handle on its key's buckets; dropping it ends the
/// connection's share.
#[derive(Debug)]
pub struct KeyLimit<K: Copy + Eq + Hash = PublicKey> {
    limiter: Arc<RateLimiter<K>>,
    key: K,
}

impl<K: Copy + Eq + Hash> KeyLimit<K> {
    /// Takes a token for one `Send`, or says why not.
    pub fn envelope(&self) -> Result<(), Limited> {
        let limits = self.limiter.limits;
        self.limiter
            .with(&self.key, |s, now| s.envelopes.try_take(1.0, now))
            .unwrap_or(Ok(()))
            .map_err(|wait| limited(limits, wait))
    }

    /// Accounts for `len` upload bytes; returns how long to pause reading.
    pub fn upload(&self, len: usize) -> Duration {
        self.limiter
            .with(&self.key, |s, now| {
                s.upload_bytes.take_paced(len as f64, now)
            })
            .unwrap_or(Duration::ZERO)
    }
}

impl<K: Copy + Eq + Hash> Drop for KeyLimit<K> {
    fn drop(&mut self) {
        let mut keys = self.limiter.lock();
        if let Some(state) = keys.by_key.get_mut(&self.key) {
            state.connections = state.connections.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert_eq!(b.try_take(1.0, t0), Ok(()));
        }
        let wait = b.try_take(1.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // 250 ms later: 2.5 tokens.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(b.try_take(1.0, t1), Ok(()));
        assert_eq!(b.try_take(1.0, t1), Ok(()));
        assert!(b.try_take(1.0, t1).is_err());
        // Never more than the burst, however long it rests.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.try_take(1.0, t2), Ok(()));
        }
        assert!(b.try_take(1.0, t2).is_err());
    }

    #[test]
    fn a_paced_stream_waits_for_its_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000.0, 1000.0, t0);
        assert_eq!(b.take_paced(600.0, t0), Duration::ZERO);
        assert_eq!(b.take_paced(600.0, t0), Duration::from_millis(200));
        // More than a burst counts as a burst: a huge chunk cannot stall forever.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.take_paced(1e9, t1), Duration::ZERO);
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0.0, 0.0, t0);
        for _ in 0..10_000 {
            assert_eq!(b.try_take(1.0, t0), Ok(()));
        }
        assert_eq!(b.take_paced(1e12, t0), Duration::ZERO);
    }

    #[test]
    fn connections_of_one_key_share_its_bucket_and_reconnecting_does_not_refill_it() {
        let limiter = RateLimiter::new(RateLimits {
            envelopes_per_second: 1,
            envelope_burst: 4,
            ..RateLimits::default()
        });
        let a1 = limiter.connect(key(1));
        let a2 = limiter.connect(key(1));
        let b = limiter.connect(key(2));
        let mut passed = 0;
        for _ in 0..10 {
            passed += usize::from(a1.envelope().is_ok());
            passed += usize::from(a2.envelope().is_ok());
        }
        // Four, perhaps five if a second went by.
        assert!((4..=5).contains(&passed), "{passed}");
        let refused = a1.envelope().unwrap_err();
        assert_eq!((refused.per_second, refused.burst), (1, 4));
        assert!(refused.retry_ms >= 1);
        // Another key is not affected.
        assert!(b.envelope().is_ok());
        drop((a1, a2));
        let again = limiter.connect(key(1));
        assert!(again.envelope().is_err(), "a reconnect must not refill");
        assert_eq!(limiter.tracked(), 2);
    }
}
