//! Presence among contacts: who of my contacts is online, from their notices.
//!
//! A running chat tells each contact it is online with a presence notice
//! sealed end to end and sent live-only (`Notify`: the relay pushes it to the
//! contact's live connections and stores nothing, answers nothing). So only
//! contacts learn who is online, and only from each other; the relay offers
//! nobody a list of who is connected.
//!
//! This module is the receiving side's bookkeeping, free of I/O so it can be
//! tested with a made-up clock: a fresh `Online` from a contact marks them
//! online until [`ONLINE_FOR`] later (their heartbeat, every
//! [`PRESENCE_EVERY`], extends it), `Offline` or silence ends it. A notice is
//! refused when it is dated outside [`FRESH_FOR`] of my clock, when its id was
//! met already (a replay within the window), or when it is older than the
//! latest notice from the same contact (reordered). An `Online { reply: true }`
//! asks for an answer: the caller answers with `Online { reply: false }`,
//! which is never answered, so two chats cannot loop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sotto_crypto::envelope::{MessageId, Presence};
use sotto_keys::PublicKey;

/// How often a running chat says again that it is online.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(60);
/// How long a contact counts as online after their last `Online`: two and a
/// half heartbeats, so one lost notice does not make them flicker.
pub const ONLINE_FOR: Duration = Duration::from_millis(PRESENCE_EVERY.as_millis() as u64 * 5 / 2);
/// A notice dated further than this from my clock (either way) is refused.
pub const FRESH_FOR: Duration = Duration::from_secs(120);

/// What a notice changed, for the person at the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The contact was not online and now is.
    CameOnline,
    /// The contact said it is leaving.
    WentOffline,
}

/// What to do about one notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// A change to tell the person at the terminal.
    pub change: Option<Change>,
    /// Answer the sender with my own `Online { reply: false }`.
    pub reply: bool,
}

/// Why a notice was not taken into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Dated outside the freshness window.
    #[error("dated outside the freshness window")]
    Stale,
    /// Its id was met already.
    #[error("a replay")]
    Replayed,
    /// Older than a notice already taken from the same contact.
    #[error("older than the latest notice from the same contact")]
    Reordered,
}

#[derive(Debug)]
struct Peer {
    /// Online until then; `None`: offline.
    until: Option<Instant>,
    /// Date of the latest notice taken, sender's clock.
    latest_ms: u64,
}

/// The contacts known to be online, and what is needed to refuse replays.
#[derive(Debug, Default)]
pub struct Roster {
    peers: HashMap<PublicKey, Peer>,
    /// Ids of the notices taken, with their date, kept for the freshness
    /// window (a notice older than that is refused anyway).
    ids: HashMap<MessageId, u64>,
}

impl Roster {
    /// Takes a notice from the contact `from` (the caller has checked that
    /// it is a contact), dated `sent_at_ms` on their clock, at my `now_ms`
    /// (wall clock) and `now` (monotonic).
    pub fn take(
        &mut self,
        from: PublicKey,
        id: MessageId,
        sent_at_ms: u64,
        presence: Presence,
        now_ms: u64,
        now: Instant,
    ) -> Result<Outcome, Refused> {
        let window = FRESH_FOR.as_millis() as u64;
        if sent_at_ms.abs_diff(now_ms) > window {
            return Err(Refused::Stale);
        }
        self.ids
            .retain(|_, at| at.abs_diff(now_ms) <= window.saturating_mul(2));
        if self.ids.contains_key(&id) {
            return Err(Refused::Replayed);
        }
        let was_online = self.is_online(&from, now);
        let peer = self.peers.entry(from).or_insert(Peer {
            until: None,
            latest_ms: 0,
        });
        if sent_at_ms < peer.latest_ms {
            return Err(Refused::Reordered);
        }
        self.ids.insert(id, sent_at_ms);
        peer.latest_ms = sent_at_ms;
        Ok(match presence {
            Presence::Online { reply } => {
                peer.until = Some(now + ONLINE_FOR);
                Outcome {
                    change: (!was_online).then_some(Change::CameOnline),
                    reply,
                }
            }
            Presence::Offline => {
                peer.until = None;
                Outcome {
                    change: was_online.then_some(Change::WentOffline),
                    reply: false,
                }
            }
        })
    }

    /// Whether `key` is online at `now`.
    pub fn is_online(&self, key: &PublicKey, now: Instant) -> bool {
        self.peers
            .get(key)
            .and_then(|p| p.until)
            .is_some_and(|until| until > now)
    }

    /// The contacts online at `now`.
    pub fn online(&self, now: Instant) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = self
            .peers
            .keys()
            .filter(|k| self.is_online(k, now))
            .copied()
            .collect();
        keys.sort();
        keys
    }

    /// Forgets the contacts whose online time ran out by `now` without a
    /// heartbeat; returns them, to say they are gone.
    pub fn expire(&mut self, now: Instant) -> Vec<PublicKey> {
        let mut gone: Vec<PublicKey> = Vec::new();
        for (key, peer) in &mut self.peers {
            if peer.until.is_some_and(|until| until <= now) {
                peer.until = None;
                gone.push(*key);
            }
        }
        gone.sort();
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    #[test]
    fn online_then_offline_is_said_once_each_and_only_a_request_is_answered() {
        let mut r = Roster::default();
        let t0 = Instant::now();
        let bob = key(2);
        let hello = Presence::Online { reply: true };
        let got = r.take(bob, MessageId([1; 16]), NOW_MS, hello, NOW_MS, t0);
        assert_eq!(
            got,
            Ok(Outcome {
                change: Some(Change::CameOnline),
                reply: true
            })
        );
        assert_eq!(r.online(t0), [bob]);
        // A heartbeat: no change, no answer.
        let beat = Presence::Online { reply: false };
        let got = r.take(bob, MessageId([2; 16]), NOW_MS + 1, beat, NOW_MS, t0);
        assert_eq!(got, Ok(Outcome::default()));
        let got = r.take(
            bob,
            MessageId([3; 16]),
            NOW_MS + 2,
            Presence::Offline,
            NOW_MS,
            t0,
        );
        assert_eq!(got.unwrap().change, Some(Change::WentOffline));
        assert!(r.online(t0).is_empty());
        // Offline again changes nothing.
        let got = r.take(
            bob,
            MessageId([4; 16]),
            NOW_MS + 3,
            Presence::Offline,
            NOW_MS,
            t0,
        );
        assert_eq!(got, Ok(Outcome::default()));
    }

    #[test]
    fn stale_replayed_and_reordered_notices_are_refused() {
        let mut r = Roster::default();
        let t0 = Instant::now();
        let bob = key(2);
        let on = Presence::Online { reply: true };
        let window = FRESH_FOR.as_millis() as u64;
        let old = NOW_MS - window - 1;
        assert_eq!(
            r.take(bob, MessageId([1; 16]), old, on, NOW_MS, t0),
            Err(Refused::Stale)
        );
        let future = NOW_MS + window + 1;
        assert_eq!(
            r.take(bob, MessageId([1; 16]), future, on, NOW_MS, t0),
            Err(Refused::Stale)
        );
        assert!(r.online(t0).is_empty());

        assert!(r
            .take(bob, MessageId([5; 16]), NOW_MS, on, NOW_MS, t0)
            .is_ok());
        assert_eq!(
            r.take(bob, MessageId([5; 16]), NOW_MS, on, NOW_MS, t0),
            Err(Refused::Replayed)
        );
        assert!(r
            .take(
                bob,
                MessageId([6; 16]),
                NOW_MS + 10,
                Presence::Offline,
                NOW_MS,
                t0
            )
            .is_ok());
        // An Online sealed before that Offline, arriving after it.
        assert_eq!(
            r.take(bob, MessageId([7; 16]), NOW_MS + 5, on, NOW_MS, t0),
            Err(Refused::Reordered)
        );
        assert!(!r.is_online(&bob, t0));
    }

    #[test]
    fn silence_ends_online_after_two_and_a_half_heartbeats() {
        let mut r = Roster::default();
        let t0 = Instant::now();
        let (bob, carol) = (key(2), key(3));
        let on = Presence::Online { reply: false };
        r.take(bob, MessageId([1; 16]), NOW_MS, on, NOW_MS, t0)
            .unwrap();
        let later = t0 + PRESENCE_EVERY * 2;
        r.take(carol, MessageId([2; 16]), NOW_MS, on, NOW_MS, later)
            .unwrap();
        assert!(r.expire(later).is_empty());
        assert_eq!(r.online(later), [bob, carol]);
        let end = t0 + ONLINE_FOR;
        assert_eq!(r.online(end), [carol]);
        assert_eq!(r.expire(end), [bob]);
        assert!(r.expire(end).is_empty(), "said once");
        // A new Online after expiry is news again.
        let got = r.take(bob, MessageId([3; 16]), NOW_MS + 1, on, NOW_MS, end);
        assert_eq!(got.unwrap().change, Some(Change::CameOnline));
    }
}
