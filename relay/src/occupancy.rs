//! Who holds the relay's authenticated connections: how many each key and
//! each source address has, and the byte budget each shares.
//!
//! Keys are free to make and a connection is cheap, so the relay's own
//! bounds (connections, buffered bytes) would otherwise belong to whoever
//! opens the most. A key may hold `max_connections_per_key` connections and
//! an address (an IPv6 /64) `max_connections_per_address`; one more is
//! refused, once its handshake has proven its key, with a reason the client
//! shows. Each key and each address also shares one budget of bytes over all
//! its connections (see `crate::budget`), kept here with its count and
//! forgotten with its last connection.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sotto_keys::PublicKey;
use tokio::sync::Semaphore;

use crate::budget::{self, BufferLimits};
use crate::source::Source;

/// Default for `max_connections_per_key`: a person's devices and the
/// transfers they run, many times over.
pub const DEFAULT_MAX_PER_KEY: usize = 16;
/// Default for `max_connections_per_address`: a household or an office
/// behind one NAT.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 256;

/// A connection refused for holding too many.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OverLimit {
    /// Its key has its most.
    #[error("{key} already has {max} connections (max_connections_per_key)")]
    Key {
        /// The key, shortened.
        key: String,
        /// The limit.
        max: usize,
    },
    /// Its address has its most.
    #[error("{address} already has {max} connections (max_connections_per_address)")]
    Address {
        /// The address.
        address: Source,
        /// The limit.
        max: usize,
    },
}

impl OverLimit {
    /// What the client is told.
    pub(crate) fn for_client(&self) -> String {
        match self {
            OverLimit::Key { max, .. } => format!(
                "your key already has {max} connections to this relay, the most it serves at once; close one"
            ),
            OverLimit::Address { max, .. } => format!(
                "your address already has {max} connections to this relay, the most it serves from one address"
            ),
        }
    }
}

/// The limits, and the counts against them.
pub(crate) struct Occupancy {
    max_per_key: usize,
    max_per_address: usize,
    key_bytes: usize,
    address_bytes: usize,
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    keys: HashMap<PublicKey, Tenant>,
    sources: HashMap<Source, Tenant>,
}

struct Tenant {
    connections: usize,
    budget: Arc<Semaphore>,
}

/// One authenticated connection's place; dropping it gives the place back.
pub(crate) struct Seat {
    occupancy: Arc<Occupancy>,
    /// `None` for a delivery link, which proves no key: it counts only
    /// against its address.
    key: Option<PublicKey>,
    source: Source,
    key_budget: Option<Arc<Semaphore>>,
    source_budget: Arc<Semaphore>,
}

impl Occupancy {
    pub(crate) fn new(
        max_per_key: usize,
        max_per_address: usize,
        bytes: BufferLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_per_key,
            max_per_address,
            key_bytes: bytes.per_key,
            address_bytes: bytes.per_address,
            tables: Mutex::new(Tables::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Every change under the lock is completed before it is released.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seats a connection of `key` from `source`, or says which limit it is over.
    pub(crate) fn seat(
        self: &Arc<Self>,
        key: PublicKey,
        source: Source,
    ) -> Result<Seat, OverLimit> {
        let mut t = self.lock();
        if count(&t.keys, &key) >= self.max_per_key {
            return Err(OverLimit::Key {
                key: key.short(),
                max: self.max_per_key,
            });
        }
        if count(&t.sources, &source) >= self.max_per_address {
            return Err(OverLimit::Address {
                address: source,
                max: self.max_per_address,
            });
        }
        let key_budget = enter(&mut t.keys, key, self.key_bytes);
        let source_budget = enter(&mut t.sources, source, self.address_bytes);
        Ok(Seat {
            occupancy: Arc::clone(self),
            key: Some(key),
            source,
            key_budget: Some(key_budget),
            source_budget,
        })
    }

    /// Seats a delivery connection from `source`: it shares its address's
    /// count and budget with the owner links from there.
    pub(crate) fn seat_delivery(self: &Arc<Self>, source: Source) -> Result<Seat, OverLimit> {
        let mut t = self.lock();
        if count(&t.sources, &source) >= self.max_per_address {
            return Err(OverLimit::Address {
                address: source,
                max: self.max_per_address,
            });
        }
        let source_budget = enter(&mut t.sources, source, self.address_bytes);
        Ok(Seat {
            occupancy: Arc::clone(self),
            key: None,
            source,
            key_budget: None,
            source_budget,
        })
    }
}

fn count<K: Hash + Eq>(table: &HashMap<K, Tenant>, k: &K) -> usize {
    table.get(k).map_or(0, |t| t.connections)
}

fn enter<K: Hash + Eq>(table: &mut HashMap<K, Tenant>, k: K, bytes: usize) -> Arc<Semaphore> {
    let tenant = table.entry(k).or_insert_with(|| Tenant {
        connections: 0,
        budget: budget::pool(bytes),
    });
    tenant.connections += 1;
    Arc::clone(&tenant.budget)
}

fn leave<K: Hash + Eq>(table: &mut HashMap<K, Tenant>, k: &K) {
    if let Some(tenant) = table.get_mut(k) {
        tenant.connections -= 1;
        if tenant.connections == 0 {
            table.remove(k);
        }
    }
}

impl Seat {
    /// The budget shared by the connections of this key, if it has one.
    pub(crate) fn key_budget(&self) -> Option<Arc<Semaphore>> {
        self.key_budget.clone()
    }

    /// The budget shared by the connections from this address.
    pub(crate) fn source_budget(&self) -> Arc<Semaphore> {
        Arc::clone(&self.source_budget)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut t = self.occupancy.lock();
        if let Some(key) = &self.key {
            leave(&mut t.keys, key);
        }
        leave(&mut t.sources, &self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(n: u8) -> Source {
        Source::from(std::net::IpAddr::from([127, 0, 0, n]))
    }

    #[test]
    fn keys_and_addresses_are_held_to_their_limits_and_share_one_budget() {
        let occ = Occupancy::new(2, 3, BufferLimits::default());
        let (alice, bob) = (
            PublicKey::from_bytes([1; 32]),
            PublicKey::from_bytes([2; 32]),
        );
        let a1 = occ.seat(alice, from(1)).unwrap();
        let a2 = occ.seat(alice, from(2)).unwrap();
        assert!(Arc::ptr_eq(
            &a1.key_budget().unwrap(),
            &a2.key_budget().unwrap()
        ));
        assert!(!Arc::ptr_eq(&a1.source_budget(), &a2.source_budget()));
        let over = occ.seat(alice, from(3)).err().unwrap();
        assert!(matches!(over, OverLimit::Key { max: 2, .. }), "{over}");
        assert!(over.to_string().contains("max_connections_per_key"));

        let b1 = occ.seat(bob, from(1)).unwrap();
        assert!(Arc::ptr_eq(&a1.source_budget(), &b1.source_budget()));
        let _b2 = occ.seat(PublicKey::from_bytes([3; 32]), from(1)).unwrap();
        let over = occ
            .seat(PublicKey::from_bytes([4; 32]), from(1))
            .err()
            .unwrap();
        assert!(matches!(over, OverLimit::Address { max: 3, .. }), "{over}");
        assert!(over.for_client().contains("connections"));

        // A refused connection took no place; a closed one gives its back.
        drop(a1);
        let _a3 = occ.seat(alice, from(3)).unwrap();
        drop((a2, b1, _a3, _b2));
        let t = occ.lock();
        assert!(t.keys.is_empty() && t.sources.is_empty());
    }
}
