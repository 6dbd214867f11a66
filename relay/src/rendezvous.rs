//! Rendezvous slots for `sotto pair`: two clients that share a short code
//! meet here and run their PAKE through the relay.
//!
//! A slot is a small number, unique among live slots, that an inviter opens
//! over a delivery link (so the relay learns no key of either party). It
//! holds at most two parties: the inviter, and the first joiner. Whatever
//! one party sends is forwarded to the other as it is: the relay sees the
//! slot number and opaque bytes, and keeps nothing of them anywhere but in
//! the queue to the other party. A slot takes **one** join: a second
//! `PairJoin` on it, like one on a slot never opened or expired, is refused
//! `NoSuchSlot`, so whoever tries codes gets one guess per slot, and the
//! inviter (which gives up at a failed confirmation) closes it.
//!
//! A slot ends when either party's connection ends, or at its expiry; the
//! party left is told `PairGone`. Slots live in memory only: they last
//! minutes, and a restarted relay simply has none (both parties must reach
//! the same relay process).
//!
//! Limits (`[pairing]` in the relay's config): live slots in total and per
//! source address of their inviter, slots opened per address per minute,
//! the size of one forwarded message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use serde_bytes::ByteBuf;
use sotto_crypto::wire::RelayMsg;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::source::Source;

/// Default for [`PairingLimits::slot_expiry`].
pub const DEFAULT_SLOT_EXPIRY: Duration = Duration::from_secs(10 * 60);

/// The rendezvous' limits, from the relay's `[pairing]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingLimits {
    /// A slot is closed this long after it was opened, joined or not.
    pub slot_expiry: Duration,
    /// Live slots over the whole relay.
    pub max_slots: usize,
    /// Live slots whose inviter comes from one source address.
    pub max_slots_per_address: usize,
    /// Slots one source address may open in a minute.
    pub opens_per_minute: u32,
    /// Largest message forwarded between the parties, in bytes.
    pub max_message_len: usize,
}

impl Default for PairingLimits {
    fn default() -> Self {
        Self {
            slot_expiry: DEFAULT_SLOT_EXPIRY,
            max_slots: 1024,
            max_slots_per_address: 4,
            opens_per_minute: 10,
            max_message_len: 4096,
        }
    }
}

/// Why a slot could not be opened (answered `RateLimited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefused {
    /// Every slot of the relay is taken.
    #[error(
        "the relay holds as many pairing slots as it serves ({0}); try again in a few minutes"
    )]
    Full(usize),
    /// The address has as many live slots as it may.
    #[error(
        "your address holds as many pairing slots as it may ({0}); finish or stop a pairing first"
    )]
    Address(usize),
    /// The address opened as many slots as it may this minute.
    #[error("your address opened {0} pairing slots this minute; try again in a minute")]
    Rate(u32),
}

/// Why a message could not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendRefused {
    /// The slot is closed or has nobody else in it yet.
    #[error("the pairing slot has no other party")]
    Alone,
    /// The message is longer than the relay forwards.
    #[error("a pairing message of {0} bytes is longer than the relay forwards")]
    TooLong(usize),
    /// The other party takes nothing of what is sent to it.
    #[error("the other party of the pairing slot is not reading")]
    Stalled,
}

/// The relay's slots; `T` is what a connection's queue holds.
pub struct Rendezvous<T> {
    limits: PairingLimits,
    state: Mutex<State<T>>,
}

struct State<T> {
    slots: HashMap<u32, Slot<T>>,
    per_address: HashMap<Source, usize>,
    /// Opens per address in the current minute: (window start, count).
    opens: HashMap<Source, (Instant, u32)>,
    next_generation: u64,
}

struct Slot<T> {
    /// Tells this slot from a later one that took its number.
    generation: u64,
    source: Source,
    expires: Instant,
    inviter: mpsc::Sender<T>,
    /// `Some` from the first join on; a slot is joined at most once.
    joiner: Option<mpsc::Sender<T>>,
}

/// One party's place in a slot; leaving (dropping it) closes the slot and
/// tells the other party.
pub struct Seat<T: From<RelayMsg>> {
    rendezvous: Arc<Rendezvous<T>>,
    slot: u32,
    generation: u64,
    inviter: bool,
}

impl<T: From<RelayMsg>> Rendezvous<T> {
    /// No slots yet.
    pub fn new(limits: PairingLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State {
                slots: HashMap::new(),
                per_address: HashMap::new(),
                opens: HashMap::new(),
                next_generation: 0,
            }),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &PairingLimits {
        &self.limits
    }

    // Held for map updates only, never across an await; a poisoned lock
    // (a panic elsewhere) still holds consistent maps.
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a slot for an inviter from `source`, whose queue is `inviter`.
    pub fn open(
        self: &Arc<Self>,
        source: Source,
        inviter: mpsc::Sender<T>,
    ) -> Result<Seat<T>, OpenRefused> {
        let now = Instant::now();
        let mut st = self.state();
        st.sweep(now);
        let opened = st.opens.get(&source).map_or(0, |(_, n)| *n);
        if opened >= self.limits.opens_per_minute {
            return Err(OpenRefused::Rate(self.limits.opens_per_minute));
        }
        if st.slots.len() >= self.limits.max_slots {
            return Err(OpenRefused::Full(self.limits.max_slots));
        }
        let mine = st.per_address.get(&source).copied().unwrap_or(0);
        if mine >= self.limits.max_slots_per_address {
            return Err(OpenRefused::Address(self.limits.max_slots_per_address));
        }
        let slot = st.free_number();
        let generation = st.next_generation;
        st.next_generation += 1;
        st.opens.entry(source).or_insert((now, 0)).1 += 1;
        *st.per_address.entry(source).or_insert(0) += 1;
        st.slots.insert(
            slot,
            Slot {
                generation,
                source,
                expires: now + self.limits.slot_expiry,
                inviter,
                joiner: None,
            },
        );
        Ok(Seat {
            rendezvous: Arc::clone(self),
            slot,
            generation,
            inviter: true,
        })
    }

    /// Joins `slot` with the joiner's queue and hands the inviter
    /// `message`. `None` if there is no such live slot, or it was joined
    /// before: the one join is spent whatever becomes of it.
    pub fn join(
        self: &Arc<Self>,
        slot: u32,
        joiner: mpsc::Sender<T>,
        message: Vec<u8>,
    ) -> Result<Option<Seat<T>>, SendRefused> {
        if message.len() > self.limits.max_message_len {
            return Err(SendRefused::TooLong(message.len()));
        }
        let now = Instant::now();
        let mut st = self.state();
        st.sweep(now);
        let Some(s) = st.slots.get_mut(&slot) else {
            return Ok(None);
        };
        if s.joiner.is_some() {
            return Ok(None);
        }
        s.joiner = Some(joiner);
        let generation = s.generation;
        let seat = Seat {
            rendezvous: Arc::clone(self),
            slot,
            generation,
            inviter: false,
        };
        let forwarded = forward(&s.inviter, message);
        drop(st);
        // The inviter is gone or stalled: the slot closes as it would for
        // any party that left (the seat tells the joiner `PairGone`).
        forwarded.map(|()| Some(seat)).or(Ok(None))
    }

    fn send(&self, seat: &Seat<T>, message: Vec<u8>) -> Result<(), SendRefused> {
        if message.len() > self.limits.max_message_len {
            return Err(SendRefused::TooLong(message.len()));
        }
        let now = Instant::now();
        let mut st = self.state();
        st.sweep(now);
        let Some(s) = st
            .slots
            .get(&seat.slot)
            .filter(|s| s.generation == seat.generation)
        else {
            return Err(SendRefused::Alone);
        };
        let to = if seat.inviter {
            s.joiner.as_ref().ok_or(SendRefused::Alone)?
        } else {
            &s.inviter
        };
        forward(to, message)
    }

    fn leave(&self, slot: u32, generation: u64) {
        let mut st = self.state();
        if st
            .slots
            .get(&slot)
            .is_some_and(|s| s.generation == generation)
        {
            st.close(slot);
        }
    }

    /// Live slots (for tests and logs).
    pub fn live(&self) -> usize {
        self.state().slots.len()
    }
}

fn forward<T: From<RelayMsg>>(to: &mpsc::Sender<T>, message: Vec<u8>) -> Result<(), SendRefused> {
    to.try_send(T::from(RelayMsg::PairMessage {
        message: ByteBuf::from(message),
    }))
    .map_err(|_| SendRefused::Stalled)
}

impl<T: From<RelayMsg>> State<T> {
    /// Closes expired slots and forgets minutes that are over.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            self.close(n);
        }
        self.opens
            .retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(60));
    }

    /// Removes a slot and tells both parties (whichever is still there).
    fn close(&mut self, slot: u32) {
        let Some(s) = self.slots.remove(&slot) else {
            return;
        };
        if let Some(n) = self.per_address.get_mut(&s.source) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&s.source);
            }
        }
        // Best effort: a full queue belongs to a connection that is not
        // reading, which its write timeout ends.
        let _ = s.inviter.try_send(T::from(RelayMsg::PairGone));
        if let Some(j) = s.joiner {
            let _ = j.try_send(T::from(RelayMsg::PairGone));
        }
    }

    /// A number no live slot has: random (so that the next code is not
    /// the last one plus one), among as few digits as the live slots allow.
    fn free_number(&self) -> u32 {
        let mut bound: u32 = 99;
        while (bound as usize) < 4 * (self.slots.len() + 1) {
            bound = bound.saturating_mul(10).saturating_add(9);
        }
        for _ in 0..32 {
            let n = 1 + OsRng.next_u32() % bound;
            if !self.slots.contains_key(&n) {
                return n;
            }
        }
        // Three quarters of the numbers are free: reached only by bad luck.
        (1..=u32::MAX)
            .find(|n| !self.slots.contains_key(n))
            .unwrap_or(u32::MAX)
    }
}

impl<T: From<RelayMsg>> Seat<T> {
    /// The slot's number.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Forwards `message` to the other party.
    pub fn send(&self, message: Vec<u8>) -> Result<(), SendRefused> {
        self.rendezvous.send(self, message)
    }

    /// Seconds until the slot expires, from its opening.
    pub fn expires_in(&self) -> u32 {
        u32::try_from(self.rendezvous.limits.slot_expiry.as_secs()).unwrap_or(u32::MAX)
    }
}

impl<T: From<RelayMsg>> Drop for Seat<T> {
    fn drop(&mut self) {
        self.rendezvous.leave(self.slot, self.generation);
    }
}

#[cfg(test)]
mod tests;
