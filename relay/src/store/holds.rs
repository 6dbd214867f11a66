//! Upload reservations ("holds"): the room an upload in progress may write
//! into beyond what its blob has durably stored, kept in the writer's memory
//! only.
//!
//! Reserving a file's whole sealed length on disk when its upload began, for
//! as long as the blob lived, let anyone block a recipient's file drop for
//! nothing: begin the largest uploads, send no byte, begin them again before
//! they expire. So the store counts only what a blob has stored, and an upload
//! in progress holds a *window* ahead of its last checkpoint (two checkpoints'
//! worth), slid forward at each checkpoint while the quotas allow. Asking again
//! renews nothing: a hold is always a window from what is durable. An upload
//! that ends, fails or stalls (the connection gives up an upload that sends
//! nothing for a while) drops its [`HoldToken`], and the hold goes with it.
//!
//! Holds count against the recipient's file quota, the uploader's share of it
//! and the relay-wide budget exactly like stored bytes, so uploads in flight
//! never overrun a quota; and they are counted per uploader key and per source
//! address, so one sender's uploads in flight are bounded however many
//! connections, or keys, it uses.
//!
//! A hold knows it is over when its token's `Arc` is gone (checked before a
//! hold is made), and the token's drop names its blob in a shared list that the
//! writer empties before every decision that counts holds, so a dropped
//! upload's room is free for the very next request, and no hold can outlive its
//! upload even if the drop races the request that made it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::codec::{BlobId, Recipient};
use super::BlobQuota;

/// Where an upload comes from, as far as limits go: an IPv4 address, or the
/// /64 network of an IPv6 one (a single host is commonly given a whole /64,
/// so counting its addresses one by one would bound nothing). Kept in memory
/// only, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceAddr(IpAddr);

impl From<IpAddr> for SourceAddr {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(network.into()))
                }
            },
        }
    }
}

/// Blobs whose tokens were dropped, waiting for the writer to look.
#[derive(Default)]
pub(crate) struct Released(Mutex<Vec<BlobId>>);

impl Released {
    pub(super) fn take(&self) -> Vec<BlobId> {
        // Only pushes and a take happen under this lock: poisoning is moot.
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// An upload's claim on its hold: while it lives, the store keeps the
/// upload's window reserved; dropping it gives the window back.
pub struct HoldToken {
    id: BlobId,
    alive: Arc<()>,
    released: Arc<Released>,
}

impl HoldToken {
    pub(super) fn new(id: BlobId, released: &Arc<Released>) -> Self {
        Self {
            id,
            alive: Arc::new(()),
            released: Arc::clone(released),
        }
    }

    pub(super) fn watch(&self) -> Weak<()> {
        Arc::downgrade(&self.alive)
    }
}

impl Drop for HoldToken {
    fn drop(&mut self) {
        self.released
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.id);
    }
}

/// One upload's hold.
#[derive(Debug, Clone)]
pub(super) struct Hold {
    pub(super) recipient: Recipient,
    pub(super) uploader: Recipient,
    pub(super) source: SourceAddr,
    /// Chunks `0..upto` may be written.
    pub(super) upto: u64,
    /// Bytes of the window beyond what the blob has stored.
    pub(super) extra: u64,
    /// The limits it was made under (its window size among them).
    pub(super) quota: BlobQuota,
    pub(super) alive: Weak<()>,
}

/// Every hold, with the sums quotas are checked against.
pub(super) struct Holds {
    by_blob: HashMap<BlobId, Hold>,
    by_recipient: HashMap<Recipient, u64>,
    by_share: HashMap<(Recipient, Recipient), u64>,
    per_uploader: HashMap<Recipient, u64>,
    per_source: HashMap<SourceAddr, u64>,
    total: u64,
    released: Arc<Released>,
}

impl Holds {
    pub(super) fn new(released: Arc<Released>) -> Self {
        Self {
            by_blob: HashMap::new(),
            by_recipient: HashMap::new(),
            by_share: HashMap::new(),
            per_uploader: HashMap::new(),
            per_source: HashMap::new(),
            total: 0,
            released,
        }
    }

    /// Forgets the holds whose tokens were dropped.
    pub(super) fn collect(&mut self) {
        for id in self.released.take() {
            if self
                .by_blob
                .get(&id)
                .is_some_and(|hold| hold.alive.strong_count() == 0)
            {
                self.remove(&id);
            }
        }
    }

    pub(super) fn get(&self, id: &BlobId) -> Option<&Hold> {
        self.by_blob.get(id)
    }

    /// Records `hold` for blob `id`, in place of any it had; a hold whose
    /// token is already gone is not recorded.
    pub(super) fn insert(&mut self, id: BlobId, hold: Hold) {
        self.remove(&id);
        if hold.alive.strong_count() == 0 {
            return;
        }
        grow(&mut self.by_recipient, hold.recipient, hold.extra);
        grow(
            &mut self.by_share,
            (hold.recipient, hold.uploader),
            hold.extra,
        );
        grow(&mut self.per_uploader, hold.uploader, 1);
        grow(&mut self.per_source, hold.source, 1);
        self.total = self.total.saturating_add(hold.extra);
        self.by_blob.insert(id, hold);
    }

    /// Moves blob `id`'s window to end at chunk `upto`, `extra` bytes past
    /// what the blob has stored.
    pub(super) fn resize(&mut self, id: &BlobId, upto: u64, extra: u64) {
        let Some(hold) = self.by_blob.get_mut(id) else {
            return;
        };
        let (recipient, uploader, before) = (hold.recipient, hold.uploader, hold.extra);
        hold.upto = upto;
        hold.extra = extra;
        shrink(&mut self.by_recipient, recipient, before);
        shrink(&mut self.by_share, (recipient, uploader), before);
        grow(&mut self.by_recipient, recipient, extra);
        grow(&mut self.by_share, (recipient, uploader), extra);
        self.total = self.total.saturating_sub(before).saturating_add(extra);
    }

    /// Drops blob `id`'s hold, if it has one.
    pub(super) fn remove(&mut self, id: &BlobId) -> Option<Hold> {
        let hold = self.by_blob.remove(id)?;
        shrink(&mut self.by_recipient, hold.recipient, hold.extra);
        shrink(
            &mut self.by_share,
            (hold.recipient, hold.uploader),
            hold.extra,
        );
        shrink(&mut self.per_uploader, hold.uploader, 1);
        shrink(&mut self.per_source, hold.source, 1);
        self.total = self.total.saturating_sub(hold.extra);
        Some(hold)
    }

    /// Bytes held for `recipient` beyond what its blobs have stored.
    pub(super) fn for_recipient(&self, recipient: &Recipient) -> u64 {
        self.by_recipient.get(recipient).copied().unwrap_or(0)
    }

    /// Bytes held by `uploader`'s uploads to `recipient`.
    pub(super) fn for_share(&self, recipient: &Recipient, uploader: &Recipient) -> u64 {
        self.by_share
            .get(&(*recipient, *uploader))
            .copied()
            .unwrap_or(0)
    }

    /// Uploads in progress by `uploader`.
    pub(super) fn uploads_by(&self, uploader: &Recipient) -> u64 {
        self.per_uploader.get(uploader).copied().unwrap_or(0)
    }

    /// Uploads in progress from `source`.
    pub(super) fn uploads_from(&self, source: &SourceAddr) -> u64 {
        self.per_source.get(source).copied().unwrap_or(0)
    }

    /// Bytes held over every upload.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Uploads holding room.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_blob.len()
    }
}

fn grow<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, n: u64) {
    if n > 0 {
        let entry = map.entry(key).or_default();
        *entry = entry.saturating_add(n);
    }
}

/// Takes `n` off `key`'s sum, removing the entry at zero so the maps only
/// ever hold uploads in progress.
fn shrink<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, n: u64) {
    if n == 0 {
        return;
    }
    if let Some(entry) = map.get_mut(&key) {
        *entry = entry.saturating_sub(n);
        if *entry == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const QUOTA: BlobQuota = BlobQuota::UNLIMITED;

    fn hold(token: &HoldToken, recipient: u8, uploader: u8, extra: u64) -> Hold {
        Hold {
            recipient: [recipient; 32],
            uploader: [uploader; 32],
            source: SourceAddr::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            upto: 2,
            extra,
            quota: QUOTA,
            alive: token.watch(),
        }
    }

    #[test]
    fn sums_follow_holds_and_a_dropped_token_frees_its_hold() {
        let released = Arc::new(Released::default());
        let mut holds = Holds::new(Arc::clone(&released));
        let (a, b) = (
            HoldToken::new([1; 16], &released),
            HoldToken::new([2; 16], &released),
        );
        holds.insert([1; 16], hold(&a, 9, 5, 100));
        holds.insert([2; 16], hold(&b, 9, 6, 50));
        assert_eq!(holds.for_recipient(&[9; 32]), 150);
        assert_eq!(holds.for_share(&[9; 32], &[5; 32]), 100);
        assert_eq!(holds.uploads_by(&[5; 32]), 1);
        let local = SourceAddr::from(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(holds.uploads_from(&local), 2);
        holds.resize(&[1; 16], 4, 30);
        assert_eq!((holds.for_recipient(&[9; 32]), holds.total()), (80, 80));

        // Replacing a blob's hold counts it once.
        let again = HoldToken::new([1; 16], &released);
        holds.insert([1; 16], hold(&again, 9, 5, 10));
        assert_eq!((holds.total(), holds.uploads_by(&[5; 32])), (60, 1));
        // The replaced token's drop does not free the new hold.
        drop(a);
        holds.collect();
        assert_eq!(holds.len(), 2);
        drop(again);
        drop(b);
        holds.collect();
        assert_eq!(holds.len(), 0);
        assert_eq!((holds.total(), holds.uploads_from(&local)), (0, 0));
        assert!(holds.by_recipient.is_empty() && holds.per_uploader.is_empty());
    }

    #[test]
    fn a_hold_whose_token_is_gone_is_never_made() {
        let released = Arc::new(Released::default());
        let mut holds = Holds::new(Arc::clone(&released));
        let token = HoldToken::new([1; 16], &released);
        let late = hold(&token, 1, 2, 10);
        drop(token);
        holds.insert([1; 16], late);
        assert_eq!((holds.len(), holds.total()), (0, 0));
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_bit_network() {
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        let src = |ip: Ipv6Addr| SourceAddr::from(IpAddr::V6(ip));
        assert_eq!(src(a), src(b));
        assert_ne!(src(a), src(c));
        let mapped: Ipv6Addr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            src(mapped),
            SourceAddr::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
        );
    }
}
