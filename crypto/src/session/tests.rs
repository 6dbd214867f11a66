//! The session protocol end to end: two (or more) stores exchanging envelopes
//! by hand, so every delivery order, loss, duplicate and restart can be staged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::envelope::{Content, MAX_BODY_LEN, MAX_ENVELOPE_LEN};
use crate::error::SessionStateError;

const T0: u64 = 1_767_225_600_000;
const SECOND: u64 = 1000;
const HOUR: u64 = 3600 * SECOND;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn text(s: &str) -> Body {
    Body::new(Content::Text(s.to_owned()))
}

fn kind(envelope: &[u8]) -> u8 {
    envelope[1]
}

fn session_id(envelope: &[u8]) -> SessionId {
    SessionId(envelope[2..18].try_into().unwrap())
}

struct Party {
    key: SecretKey,
    store: SessionStore,
}

impl Party {
    fn new() -> Self {
        Self::with(SessionConfig::default())
    }

    fn with(config: SessionConfig) -> Self {
        let key = SecretKey::generate();
        let store = SessionStore::new(key.public(), config);
        Self { key, store }
    }

    fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// Seals a text dated `now` by this side's clock.
    fn seal(&mut self, to: &Party, s: &str, now: u64) -> Sealed {
        let mut body = text(s);
        body.sent_at_ms = now;
        self.store
            .seal_to(&self.key, &to.public(), &body, at(now))
            .unwrap()
    }

    fn open(&mut self, envelope: &[u8], now: u64) -> Result<Received, EnvelopeError> {
        self.store.open(&self.key, envelope, at(now), |_| true)
    }

    /// Opens and returns the text, checking the sender.
    fn read(&mut self, from: &Party, envelope: &[u8], now: u64) -> String {
        let got = self.open(envelope, now).unwrap();
        assert_eq!(got.sender, from.public());
        match got.body {
            Some(Body {
                content: Content::Text(t),
                ..
            }) => t,
            other => panic!("expected a text, got {other:?}"),
        }
    }

    /// A restart: the store goes through its sealed form and back.
    fn restart(&mut self) {
        let sealed = self.store.seal_state(&self.key).unwrap();
        let config = self.store.config().clone();
        self.store = SessionStore::open_state(&self.key, &sealed, config).unwrap();
    }

    fn holds(&self, id: &SessionId) -> bool {
        self.store
            .peers
            .values()
            .any(|p| p.sessions.iter().any(|s| s.id == *id))
    }

    fn current(&self, peer: &Party) -> SessionId {
        self.store.peers[&peer.public()].sessions.last().unwrap().id
    }

    /// The session (its init's id) that an envelope's id names here, as
    /// sent or received, if any.
    fn session_of(&self, envelope: &[u8]) -> Option<SessionId> {
        let wire = session_id(envelope);
        self.store.peers.values().find_map(|p| {
            let session = p
                .sessions
                .iter()
                .find(|s| s.id == wire || s.send_id == wire || s.recv_id == wire)
                .map(|s| s.id);
            session.or_else(|| {
                p.pending
                    .iter()
                    .find(|i| i.id == wire || i.send_id == wire || i.recv_id == wire)
                    .map(|i| i.id)
            })
        })
    }
}

/// a initiates, b answers with the bare accept, a confirms with a kind 4:
/// both sides then send kind 4. Returns the time reached.
fn establish(a: &mut Party, b: &mut Party, now: u64) -> u64 {
    let init = a.seal(b, "hello", now);
    assert_eq!(kind(&init.envelope), KIND_SESSION_INIT);
    let got = b.open(&init.envelope, now + 1).unwrap();
    let reply = got.reply.expect("an accept to send back");
    assert_eq!(kind(&reply), KIND_SESSION_ACCEPT);
    let got = a.open(&reply, now + 2).unwrap();
    assert_eq!(got.body, None);
    let m = a.seal(b, "confirm", now + 3);
    assert_eq!(kind(&m.envelope), KIND_SESSION_MESSAGE);
    assert_eq!(b.read(a, &m.envelope, now + 4), "confirm");
    now + 5
}

#[test]
fn init_offline_then_accept_then_forward_secret_both_ways() {
    let mut a = Party::new();
    let mut b = Party::new();

    // b is offline: a's first message starts a session, later ones are one-shots.
    let first = a.seal(&b, "one", T0);
    assert_eq!(kind(&first.envelope), KIND_SESSION_INIT);
    assert!(!first.forward_secret && first.renewal.is_none());
    let second = a.seal(&b, "two", T0 + 1);
    assert_eq!(kind(&second.envelope), KIND_ONE_SHOT);
    assert!(!second.forward_secret);

    // b comes online and reads its mailbox.
    let got = b.open(&first.envelope, T0 + HOUR).unwrap();
    assert_eq!(got.sender, a.public());
    assert!(!got.forward_secret);
    assert!(matches!(&got.body, Some(Body { content: Content::Text(t), .. }) if t == "one"));
    let accept = got.reply.unwrap();
    assert_eq!(kind(&accept), KIND_SESSION_ACCEPT);
    assert!(b.store.has_session(&a.public()));
    assert_eq!(b.read(&a, &second.envelope, T0 + HOUR), "two");

    // b answers before a has seen the accept: kind 3, forward-secret already.
    let three = b.seal(&a, "three", T0 + HOUR + 1);
    assert_eq!(kind(&three.envelope), KIND_SESSION_ACCEPT);
    assert!(three.forward_secret);

    let got = a.open(&accept, T0 + 2 * HOUR).unwrap();
    assert_eq!(
        (got.sender, got.body, got.forward_secret),
        (b.public(), None, true)
    );
    assert!(a.store.has_session(&b.public()));
    assert_eq!(a.read(&b, &three.envelope, T0 + 2 * HOUR), "three");

    // From here on, kind 4 both ways; b switches once a's first kind 4 arrives.
    let four = a.seal(&b, "four", T0 + 2 * HOUR + 1);
    assert_eq!(kind(&four.envelope), KIND_SESSION_MESSAGE);
    let still_three = b.seal(&a, "four and a half", T0 + 2 * HOUR + 2);
    assert_eq!(kind(&still_three.envelope), KIND_SESSION_ACCEPT);
    assert_eq!(b.read(&a, &four.envelope, T0 + 2 * HOUR + 3), "four");
    let five = b.seal(&a, "five", T0 + 2 * HOUR + 4);
    assert_eq!(kind(&five.envelope), KIND_SESSION_MESSAGE);
    assert!(five.forward_secret);
    assert_eq!(
        a.read(&b, &still_three.envelope, T0 + 3 * HOUR),
        "four and a half"
    );
    assert_eq!(a.read(&b, &five.envelope, T0 + 3 * HOUR), "five");

    // Every envelope of one session names it, to both sides; but what the
    // relay sees differs per direction: the init's id, one id on what a
    // sends, another on what b sends.
    let id = session_id(&first.envelope);
    for e in [&accept, &three.envelope, &four.envelope, &five.envelope] {
        assert_eq!(a.session_of(e), Some(id));
        assert_eq!(b.session_of(e), Some(id));
    }
    let from_a = session_id(&four.envelope);
    let from_b = session_id(&five.envelope);
    assert_eq!(session_id(&accept), from_b);
    assert_eq!(session_id(&three.envelope), from_b);
    assert!(id != from_a && id != from_b && from_a != from_b);
}

#[test]
fn a_lost_accept_costs_nothing() {
    let mut a = Party::new();
    let mut b = Party::new();
    let init = a.seal(&b, "hi", T0);
    let _lost = b.open(&init.envelope, T0 + 1).unwrap().reply;
    // Every kind 3 carries message 2: the first one to arrive completes.
    let m = b.seal(&a, "hello", T0 + 2);
    assert_eq!(kind(&m.envelope), KIND_SESSION_ACCEPT);
    let m2 = b.seal(&a, "again", T0 + 3);
    assert_eq!(a.read(&b, &m2.envelope, T0 + 4), "again");
    assert_eq!(a.read(&b, &m.envelope, T0 + 5), "hello");
    assert_eq!(
        kind(&a.seal(&b, "x", T0 + 6).envelope),
        KIND_SESSION_MESSAGE
    );
}

#[test]
fn a_pending_init_survives_a_restart() {
    let mut a = Party::new();
    let mut b = Party::new();
    let init = a.seal(&b, "before the restart", T0);
    a.restart();
    let got = b.open(&init.envelope, T0 + HOUR).unwrap();
    let reply = got.reply.unwrap();
    let m = b.seal(&a, "answer", T0 + HOUR + 1);
    a.restart();
    assert_eq!(a.open(&reply, T0 + 2 * HOUR).unwrap().body, None);
    assert_eq!(a.read(&b, &m.envelope, T0 + 2 * HOUR), "answer");
    let back = a.seal(&b, "after", T0 + 2 * HOUR + 1);
    assert_eq!(kind(&back.envelope), KIND_SESSION_MESSAGE);
    assert_eq!(b.read(&a, &back.envelope, T0 + 2 * HOUR + 2), "after");
}

#[test]
fn restore_after_restart_continues_the_session_and_its_recent_nonces() {
    let mut a = Party::new();
    let mut b = Party::new();
    let now = establish(&mut a, &mut b, T0);
    let before = a.seal(&b, "before", now);
    let in_flight = a.seal(&b, "in flight", now + 1);
    assert_eq!(b.read(&a, &before.envelope, now + 2), "before");
    let id = a.current(&b);

    a.restart();
    b.restart();
    assert_eq!(a.current(&b), id);
    // Duplicates stay refused across the restart, late ones still open.
    assert_eq!(
        b.open(&before.envelope, now + 3),
        Err(EnvelopeError::Replayed)
    );
    assert_eq!(b.read(&a, &in_flight.envelope, now + 3), "in flight");
    let after = a.seal(&b, "after", now + 4);
    assert_eq!(a.session_of(&after.envelope), Some(id));
    assert_eq!(b.read(&a, &after.envelope, now + 5), "after");
    let reply = b.seal(&a, "reply", now + 6);
    assert_eq!(kind(&reply.envelope), KIND_SESSION_MESSAGE);
    assert_eq!(a.read(&b, &reply.envelope, now + 7), "reply");
}

/// The nonce of a transport envelope (kind 3 or 4).
fn nonce_of(envelope: &[u8]) -> [u8; 24] {
    match kind(envelope) {
        KIND_SESSION_ACCEPT => *layout::parse_accept(envelope).unwrap().transport.nonce,
        KIND_SESSION_MESSAGE => *layout::parse_message(envelope).unwrap().transport.nonce,
        k => panic!("not a transport envelope: kind {k}"),
    }
}

/// A home restored from a backup (or copied, or saved before a crash lost
/// its last seals) seals again from an older state. No key and nonce may
/// meet twice, and what the restored side sends next must be shown.
#[test]
fn a_state_restored_from_a_backup_never_reuses_a_nonce_and_is_read() {
    let mut a = Party::new();
    let mut b = Party::new();
    let now = establish(&mut a, &mut b, T0);
    let backup = a.store.seal_state(&a.key).unwrap();
    let mut nonces = std::collections::HashSet::new();
    // More seals than any counter skip on restart would have covered.
    for i in 0..100 {
        let m = a.seal(&b, &format!("before the restore {i}"), now + i);
        assert!(nonces.insert(nonce_of(&m.envelope)));
        b.read(&a, &m.envelope, now + i);
    }
    // The backup comes back, twice (a restore and a copy), and seals again.
    for copy in 0..2 {
        let config = a.store.config().clone();
        a.store = SessionStore::open_state(&a.key, &backup, config).unwrap();
        for i in 0..50 {
            let m = a.seal(&b, &format!("copy {copy}, message {i}"), now + 200 + i);
            assert_eq!(kind(&m.envelope), KIND_SESSION_MESSAGE);
            assert!(nonces.insert(nonce_of(&m.envelope)), "a nonce came back");
            assert_eq!(
                b.read(&a, &m.envelope, now + 200 + i),
                format!("copy {copy}, message {i}")
            );
        }
    }
}

/// A home restored from a backup taken before its sessions were renewed
/// seals on the old session, which the peer still holds (grace). The peer
/// shows it, sees that the sender went back to a session it had left, and
/// answers on that session, which the restored side holds, instead of the
/// newer one it lost.
#[test]
fn a_peer_restored_to_before_a_renewal_is_answered_on_the_session_it_holds() {
    let config = SessionConfig {
        renew_after_messages: 3,
        ..SessionConfig::default()
    };
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config);
    let mut now = establish(&mut a, &mut b, T0);
    let backup = a.store.seal_state(&a.key).unwrap();
    let old = a.current(&b);
    now = renew_by_count(&mut a, &mut b, now) + 10;
    assert_ne!(b.current(&a), old);

    let config = a.store.config().clone();
    a.store = SessionStore::open_state(&a.key, &backup, config).unwrap();
    assert_eq!(a.current(&b), old);
    let m = a.seal(&b, "after the restore", now);
    assert_eq!(a.session_of(&m.envelope), Some(old));
    let got = b.open(&m.envelope, now).unwrap();
    assert!(got.peer_went_back);
    assert_eq!(b.current(&a), old);
    // b's answer opens on the restored side; a message on the newer session
    // would not.
    let answer = b.seal(&a, "answer", now + 1);
    assert_eq!(b.session_of(&answer.envelope), Some(old));
    assert_eq!(a.read(&b, &answer.envelope, now + 2), "answer");
    // Going on, nothing more is flagged.
    let m = a.seal(&b, "and on", now + 3);
    assert!(!b.open(&m.envelope, now + 3).unwrap().peer_went_back);
    // A late envelope of the old session, sealed before the renewal, is
    // not a sign of going back.
    let mut c = Party::new();
    let mut d = Party::new();
    let t = establish(&mut c, &mut d, T0);
    let late = c.seal(&d, "late", t);
    let due = {
        let mut cfg = c.store.config().clone();
        cfg.renew_after_messages = 0;
        c.store.set_config(cfg);
        c.seal(&d, "due", t + 1)
    };
    renew(&mut c, &mut d, &due.renewal.unwrap(), t + 2);
    let got = d.open(&late.envelope, t + 20).unwrap();
    assert!(!got.peer_went_back);
}

/// A home restored from a backup older than the erasure of the session it
/// seals on: the peer cannot read it, says who it came from, and starts a
/// new session so that what both sides send next opens.
#[test]
fn an_envelope_on_an_erased_session_names_its_peer_and_a_restart_recovers() {
    let config = SessionConfig {
        renew_after_messages: 2,
        ..SessionConfig::default()
    };
    let grace = millis(config.grace);
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config);
    let mut now = establish(&mut a, &mut b, T0);
    let backup = a.store.seal_state(&a.key).unwrap();
    let old = a.current(&b);
    now = renew_by_count(&mut a, &mut b, now);
    now += grace + 100;
    b.store.erase_expired(at(now));
    assert!(!b.holds(&old));

    let config = a.store.config().clone();
    a.store = SessionStore::open_state(&a.key, &backup, config).unwrap();
    let lost = a.seal(&b, "sealed on an erased session", now);
    assert_eq!(a.session_of(&lost.envelope), Some(old));
    assert_eq!(
        b.open(&lost.envelope, now),
        Err(EnvelopeError::ErasedSession { peer: a.public() })
    );
    let init = b
        .store
        .restart(&b.key, &a.public(), at(now))
        .unwrap()
        .expect("a new init");
    assert_eq!(kind(&init), KIND_SESSION_INIT);
    // Once is enough while it waits for its answer.
    assert_eq!(
        b.store.restart(&b.key, &a.public(), at(now + 1)).unwrap(),
        None
    );
    // Meanwhile b's messages go as one-shots, which a opens with its key.
    let meanwhile = b.seal(&a, "meanwhile", now + 2);
    assert_eq!(kind(&meanwhile.envelope), KIND_ONE_SHOT);
    assert_eq!(a.read(&b, &meanwhile.envelope, now + 3), "meanwhile");
    // The restored side may have started a renewal of its own (its old
    // session is past renew_after): the two inits cross, and the tie-break
    // of §4 settles on one.
    if let Some(renewal) = &lost.renewal {
        if let Some(reply) = b.open(renewal, now + 4).unwrap().reply {
            a.open(&reply, now + 4).unwrap();
        }
    }
    if let Some(reply) = a.open(&init, now + 4).unwrap().reply {
        b.open(&reply, now + 5).unwrap();
    }
    let m = a.seal(&b, "on the new session", now + 6);
    assert!(m.forward_secret);
    assert_ne!(a.session_of(&m.envelope), Some(old));
    assert_eq!(b.read(&a, &m.envelope, now + 7), "on the new session");
    let m = b.seal(&a, "and back", now + 8);
    assert_eq!(a.read(&b, &m.envelope, now + 9), "and back");
    // An envelope for a session never held is told apart.
    let mut stranger = Party::new();
    let mut other = Party::new();
    let t = establish(&mut stranger, &mut other, T0);
    let foreign = stranger.seal(&other, "x", t);
    assert_eq!(
        b.open(&foreign.envelope, now),
        Err(EnvelopeError::UnknownSession)
    );
}

/// An envelope that was never opened is never refused as a replay, however
/// many came after it (a file offer left on the relay, say).
#[test]
fn an_envelope_never_opened_opens_after_any_number_of_later_ones() {
    let config = SessionConfig {
        renew_after_messages: u64::MAX,
        ..SessionConfig::default()
    };
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config);
    let now = establish(&mut a, &mut b, T0);
    let kept = a.seal(&b, "kept for later", now);
    for i in 0..(3 * RECENT_NONCES as u64) {
        let m = a.seal(&b, "m", now + i);
        b.read(&a, &m.envelope, now + i);
        if i % 16 == 0 {
            a.restart();
            b.restart();
        }
    }
    assert_eq!(b.read(&a, &kept.envelope, now + 1000), "kept for later");
    assert_eq!(
        b.open(&kept.envelope, now + 1001),
        Err(EnvelopeError::Replayed)
    );
}

#[test]
fn out_of_order_late_and_duplicate_delivery() {
    let mut a = Party::new();
    let mut b = Party::new();
    let now = establish(&mut a, &mut b, T0);
    let sent: Vec<Vec<u8>> = (0..12)
        .map(|i| a.seal(&b, &format!("m{i}"), now + i).envelope)
        .collect();
    for i in [7, 0, 11, 3, 2, 10, 1, 9, 4, 8, 6, 5] {
        assert_eq!(b.read(&a, &sent[i], now + 100), format!("m{i}"));
    }
    for envelope in &sent {
        assert_eq!(b.open(envelope, now + 200), Err(EnvelopeError::Replayed));
    }
    // Duplicates of kind 2 and kind 3 envelopes are refused too.
    let mut c = Party::new();
    let init = c.seal(&b, "init", now);
    let reply = b.open(&init.envelope, now + 1).unwrap().reply.unwrap();
    assert_eq!(
        b.open(&init.envelope, now + 2),
        Err(EnvelopeError::Replayed)
    );
    c.open(&reply, now + 3).unwrap();
    assert_eq!(c.open(&reply, now + 4), Err(EnvelopeError::Replayed));
}

fn simultaneous_init(lower_first: bool) {
    let (mut a, mut b) = (Party::new(), Party::new());
    if a.public() > b.public() {
        std::mem::swap(&mut a, &mut b);
    }
    // a holds the lower key. Both start a session before seeing the other's,
    // in either order.
    let (t_a, t_b) = if lower_first {
        (T0, T0 + 1)
    } else {
        (T0 + 1, T0)
    };
    let from_a = a.seal(&b, "from a", t_a);
    let from_b = b.seal(&a, "from b", t_b);
    assert_eq!(kind(&from_a.envelope), KIND_SESSION_INIT);
    assert_eq!(kind(&from_b.envelope), KIND_SESSION_INIT);

    // The lower key's init wins on both sides; no body is lost.
    let at_a = a.open(&from_b.envelope, T0 + 2).unwrap();
    assert!(matches!(&at_a.body, Some(Body { content: Content::Text(t), .. }) if t == "from b"));
    assert!(
        at_a.reply.is_none(),
        "the winner does not answer the loser's init"
    );
    let at_b = b.open(&from_a.envelope, T0 + 3).unwrap();
    assert!(matches!(&at_b.body, Some(Body { content: Content::Text(t), .. }) if t == "from a"));
    let reply = at_b.reply.expect("the loser answers the winner's init");
    assert_eq!(b.session_of(&reply), Some(session_id(&from_a.envelope)));

    assert_eq!(a.open(&reply, T0 + 4).unwrap().body, None);
    let x = a.seal(&b, "x", T0 + 5);
    assert_eq!(kind(&x.envelope), KIND_SESSION_MESSAGE);
    assert_eq!(b.read(&a, &x.envelope, T0 + 6), "x");
    let y = b.seal(&a, "y", T0 + 7);
    assert_eq!(kind(&y.envelope), KIND_SESSION_MESSAGE);
    assert_eq!(a.read(&b, &y.envelope, T0 + 8), "y");
    assert_eq!(a.current(&b), b.current(&a));
    assert_eq!(a.store.peers[&b.public()].sessions.len(), 1);
    assert_eq!(b.store.peers[&a.public()].sessions.len(), 1);
}

#[test]
fn simultaneous_init_is_resolved_with_no_message_lost() {
    simultaneous_init(true);
    simultaneous_init(false);
}

#[test]
fn crossing_inits_delivered_late_still_leave_everything_readable() {
    let (mut a, mut b) = (Party::new(), Party::new());
    if a.public() > b.public() {
        std::mem::swap(&mut a, &mut b);
    }
    // a (lower) wins, but b's init reaches a only after a's own completed:
    // a then answers it too, and b, who kept it pending, completes it.
    let from_a = a.seal(&b, "from a", T0);
    let from_b = b.seal(&a, "from b", T0 + 1);
    let reply_b = b.open(&from_a.envelope, T0 + 2).unwrap().reply.unwrap();
    a.open(&reply_b, T0 + 3).unwrap();
    let late = a.open(&from_b.envelope, T0 + 4).unwrap();
    let reply_a = late.reply.expect("no init of a's is pending any more");
    let on_new = a.seal(&b, "on the newest", T0 + 5);
    assert_eq!(kind(&on_new.envelope), KIND_SESSION_ACCEPT);
    assert_eq!(b.read(&a, &on_new.envelope, T0 + 6), "on the newest");
    assert_eq!(b.open(&reply_a, T0 + 7).unwrap().body, None);
    let back = b.seal(&a, "back", T0 + 8);
    assert_eq!(a.read(&b, &back.envelope, T0 + 9), "back");
    assert_eq!(a.current(&b), b.current(&a));
}

#[test]
fn both_sides_renewing_at_once_settle_on_one_session() {
    let config = SessionConfig {
        renew_after_messages: 3,
        ..SessionConfig::default()
    };
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config);
    let now = establish(&mut a, &mut b, T0);
    let old = a.current(&b);
    let until_due = |p: &mut Party, q: &Party, t: u64| {
        let mut sent = Vec::new();
        loop {
            let s = p.seal(q, "m", t);
            sent.push(s.envelope);
            if let Some(r) = s.renewal {
                return (sent, r);
            }
        }
    };
    let (from_a, renew_a) = until_due(&mut a, &b, now);
    let (from_b, renew_b) = until_due(&mut b, &a, now + 1);
    // The renewals cross; all old-session traffic still opens.
    let at_a = a.open(&renew_b, now + 2).unwrap();
    let at_b = b.open(&renew_a, now + 3).unwrap();
    let reply = match (at_a.reply, at_b.reply) {
        (Some(r), None) => b.open(&r, now + 4),
        (None, Some(r)) => a.open(&r, now + 4),
        other => panic!("exactly one side answers: {other:?}"),
    };
    assert_eq!(reply.unwrap().body, None);
    for e in &from_a {
        assert_eq!(b.read(&a, e, now + 5), "m");
    }
    for e in &from_b {
        assert_eq!(a.read(&b, e, now + 5), "m");
    }
    let x = a.seal(&b, "x", now + 6);
    let y = b.seal(&a, "y", now + 6);
    assert_eq!(b.read(&a, &x.envelope, now + 7), "x");
    assert_eq!(a.read(&b, &y.envelope, now + 7), "y");
    assert_eq!(a.current(&b), b.current(&a));
    assert_ne!(a.current(&b), old);
}

#[test]
fn stores_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<SessionStore>();
}

#[test]
fn strangers_get_their_message_read_but_no_session() {
    let mut a = Party::new();
    let mut b = Party::new();
    let init = a.seal(&b, "who am I", T0);
    let got = b
        .store
        .open(&b.key, &init.envelope, at(T0 + 1), |k| *k != a.public())
        .unwrap();
    assert_eq!(got.sender, a.public());
    assert!(got.body.is_some() && got.reply.is_none());
    assert!(!b.store.has_session(&a.public()));
    assert!(b.store.peers.is_empty());
}

#[test]
fn a_stale_init_starts_no_session() {
    let mut a = Party::new();
    let mut b = Party::new();
    let init = a.seal(&b, "old", T0);
    let half = millis(SessionConfig::default().init_lifetime) / 2;
    let got = b.open(&init.envelope, T0 + half).unwrap();
    assert!(got.body.is_some() && got.reply.is_none());
    assert!(!b.store.has_session(&a.public()));
    // Just before the limit it would have.
    let mut b2 = Party {
        key: b.key.clone(),
        store: SessionStore::new(b.public(), SessionConfig::default()),
    };
    assert!(b2
        .open(&init.envelope, T0 + half - 1)
        .unwrap()
        .reply
        .is_some());
}

#[test]
fn tampering_is_detected_and_changes_nothing() {
    let mut a = Party::new();
    let mut b = Party::new();
    let init = a.seal(&b, "init", T0);
    for i in 0..init.envelope.len() {
        let mut bad = init.envelope.clone();
        bad[i] ^= 0x01;
        assert!(b.open(&bad, T0).is_err(), "kind 2: flip at byte {i}");
    }
    assert!(b.store.peers.is_empty());
    let reply = b.open(&init.envelope, T0).unwrap().reply.unwrap();
    let three = b.seal(&a, "three", T0 + 1);
    for envelope in [&reply, &three.envelope] {
        for i in 0..envelope.len() {
            let mut bad = envelope.clone();
            bad[i] ^= 0x01;
            assert!(a.open(&bad, T0 + 2).is_err(), "kind 3: flip at byte {i}");
        }
    }
    assert!(!a.store.has_session(&b.public()));
    assert_eq!(a.read(&b, &three.envelope, T0 + 3), "three");
    let four = a.seal(&b, "four", T0 + 4);
    for i in 0..four.envelope.len() {
        let mut bad = four.envelope.clone();
        bad[i] ^= 0x01;
        assert!(b.open(&bad, T0 + 5).is_err(), "kind 4: flip at byte {i}");
    }
    assert_eq!(b.read(&a, &four.envelope, T0 + 6), "four");
    // A kind 3 whose message 2 is another one is refused once complete.
    let mut other = reply.clone();
    other[20] ^= 0x80;
    assert!(a.open(&other, T0 + 7).is_err());
    // A third party opens nothing.
    let mut eve = Party::new();
    assert_eq!(eve.open(&init.envelope, T0), Err(EnvelopeError::Decrypt));
    assert_eq!(
        eve.open(&four.envelope, T0),
        Err(EnvelopeError::UnknownSession)
    );
}

#[test]
fn unknown_kinds_are_refused_by_name() {
    let mut a = Party::new();
    assert_eq!(
        a.open(&[1, 5, 0, 0], T0),
        Err(EnvelopeError::Unsupported {
            version: 1,
            kind: 5
        })
    );
    assert_eq!(
        a.open(&[2, 2, 0, 0], T0),
        Err(EnvelopeError::Unsupported {
            version: 2,
            kind: 2
        })
    );
    assert!(a.open(&[1], T0).is_err());
}

#[test]
fn every_kind_pads_to_the_buckets_and_the_largest_fits() {
    let mut a = Party::new();
    let mut b = Party::new();
    let init = a.seal(&b, "hi", T0);
    assert_eq!(init.envelope.len(), 154 + 256);
    let reply = b.open(&init.envelope, T0).unwrap().reply.unwrap();
    assert_eq!(reply.len(), 106 + 256);
    let three = b.seal(&a, &"y".repeat(300), T0);
    assert_eq!(three.envelope.len(), 106 + 1024);
    a.open(&reply, T0).unwrap();
    let four = a.seal(&b, "hi", T0);
    assert_eq!(four.envelope.len(), 58 + 256);

    let overhead = postcard::to_stdvec(&text("")).unwrap().len() + 2;
    let largest = "a".repeat(MAX_BODY_LEN - overhead);
    // The largest bucket does not fit an init beside its direction ids: a
    // one-shot carries it, and a bare init starts the session.
    let mut c = Party::new();
    let first = c.seal(&b, &largest, T0);
    assert_eq!(kind(&first.envelope), KIND_ONE_SHOT);
    assert!(first.envelope.len() <= MAX_ENVELOPE_LEN);
    assert_eq!(b.read(&c, &first.envelope, T0), largest);
    let bare = first.renewal.expect("a bare init beside it");
    assert_eq!(kind(&bare), KIND_SESSION_INIT);
    assert_eq!(bare.len(), 154 + 256);
    assert_eq!(b.open(&bare, T0).unwrap().body, None);
    // The largest init carries the largest bucket that fits.
    let mut d = Party::new();
    let big = "a".repeat(16_384 - overhead - 4);
    let init = d.seal(&b, &big, T0);
    assert_eq!(kind(&init.envelope), KIND_SESSION_INIT);
    assert_eq!(init.envelope.len(), 154 + 16_384);
    assert_eq!(b.read(&d, &init.envelope, T0), big);
    let four = a.seal(&b, &largest, T0);
    assert!(four.envelope.len() < MAX_ENVELOPE_LEN);
    assert_eq!(b.read(&a, &four.envelope, T0), largest);
    let too_big = text(&"a".repeat(MAX_BODY_LEN - overhead + 1));
    assert!(matches!(
        a.store.seal_to(&a.key, &b.public(), &too_big, at(T0)),
        Err(EnvelopeError::TooLarge { .. })
    ));
}

/// Renews (a initiating), delivers the renewal handshake and a confirmation,
/// and returns the old session's id and an envelope sealed on it just before.
/// a sends (and b reads) until a's session is due by its message count,
/// then the renewal goes through. Returns the time reached.
fn renew_by_count(a: &mut Party, b: &mut Party, mut now: u64) -> u64 {
    loop {
        let m = a.seal(b, "filling", now);
        b.read(a, &m.envelope, now);
        now += 1;
        if let Some(renewal) = m.renewal {
            renew(a, b, &renewal, now);
            return now + 4;
        }
    }
}

fn renew(a: &mut Party, b: &mut Party, renewal: &[u8], now: u64) -> SessionId {
    assert_eq!(kind(renewal), KIND_SESSION_INIT);
    let old = a.current(b);
    let got = b.open(renewal, now).unwrap();
    assert_eq!(got.body, None, "a renewal init is bare");
    let reply = got.reply.unwrap();
    assert_ne!(b.current(a), old);
    a.open(&reply, now + 1).unwrap();
    assert_eq!(a.current(b), b.current(a));
    let confirm = a.seal(b, "on the new session", now + 2);
    assert_eq!(a.session_of(&confirm.envelope), Some(a.current(b)));
    assert_eq!(b.read(a, &confirm.envelope, now + 3), "on the new session");
    old
}

#[test]
fn renewal_by_count_keeps_late_envelopes_for_the_grace_period() {
    let config = SessionConfig {
        renew_after_messages: 5,
        ..SessionConfig::default()
    };
    let grace = millis(config.grace);
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config);
    let mut now = establish(&mut a, &mut b, T0);
    // "confirm" was message 1; messages 2 to 5 go without renewal.
    let mut late = Vec::new();
    for i in 0..4 {
        let s = a.seal(&b, &format!("late {i}"), now);
        assert!(s.renewal.is_none());
        late.push(s.envelope);
        now += 1;
    }
    let sixth = a.seal(&b, "sixth", now);
    assert_eq!(
        kind(&sixth.envelope),
        KIND_SESSION_MESSAGE,
        "still sent on the old session"
    );
    let renewal = sixth.renewal.unwrap();
    // Until the successor is established, no second renewal is started.
    assert!(a.seal(&b, "seventh", now).renewal.is_none());
    let old = renew(&mut a, &mut b, &renewal, now + 1);
    now += 10;

    // Within the grace period, envelopes of the old session still open.
    assert_eq!(b.read(&a, &late[0], now), "late 0");
    assert_eq!(b.read(&a, &sixth.envelope, now + grace - 100), "sixth");
    assert!(a.holds(&old) && b.holds(&old));
    // After it, its keys are gone on both sides.
    b.store.erase_expired(at(now + grace));
    a.store.erase_expired(at(now + grace));
    assert!(!a.holds(&old) && !b.holds(&old));
    assert_eq!(
        b.open(&late[1], now + grace),
        Err(EnvelopeError::ErasedSession { peer: a.public() })
    );
    // And the new session carries on, both ways.
    let m = b.seal(&a, "new", now + grace);
    assert_eq!(kind(&m.envelope), KIND_SESSION_MESSAGE);
    assert_eq!(a.read(&b, &m.envelope, now + grace), "new");
}

#[test]
fn renewal_by_age_initiator_first_responder_as_fallback() {
    let config = SessionConfig {
        renew_after: Duration::from_secs(3600),
        grace: Duration::from_secs(600),
        ..SessionConfig::default()
    };
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config.clone());
    establish(&mut a, &mut b, T0);

    // The responder does not renew at 1 h, the initiator does.
    assert!(b.seal(&a, "b at 1h", T0 + HOUR).renewal.is_none());
    let a_late = a.seal(&b, "a before renewal", T0 + HOUR - 1);
    assert!(a_late.renewal.is_none());
    let due = a.seal(&b, "a at 1h", T0 + HOUR);
    let old = renew(&mut a, &mut b, &due.renewal.unwrap(), T0 + HOUR + 1);
    assert_eq!(
        b.read(&a, &a_late.envelope, T0 + HOUR + 100),
        "a before renewal"
    );
    let after = T0 + HOUR + 100 + 600 * SECOND;
    assert_eq!(
        b.open(&due.envelope, after),
        Err(EnvelopeError::ErasedSession { peer: a.public() })
    );
    assert!(!b.holds(&old));
    a.store.erase_expired(at(after));
    assert!(!a.holds(&old));

    // With a silent initiator, the responder renews at twice the age.
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config);
    establish(&mut a, &mut b, T0);
    assert!(b.seal(&a, "b at 1.5h", T0 + 3 * HOUR / 2).renewal.is_none());
    let due = b.seal(&a, "b at 2h", T0 + 2 * HOUR);
    let renewal = due.renewal.expect("the responder renews at 2 h");
    let reply = a.open(&renewal, T0 + 2 * HOUR + 1).unwrap().reply.unwrap();
    b.open(&reply, T0 + 2 * HOUR + 2).unwrap();
    let role = b.store.peers[&a.public()].sessions.last().unwrap().role;
    assert_eq!(role, Role::Initiator, "b initiated the successor");
}

#[test]
fn a_silent_session_ages_out() {
    let mut a = Party::new();
    let mut b = Party::new();
    establish(&mut a, &mut b, T0);
    let config = SessionConfig::default();
    let max_age = millis(config.max_age);
    let grace = millis(config.grace);
    let old = a.current(&b);
    // Past max_age nothing is sealed on it: a fresh init carries the message.
    let m = a.seal(&b, "a week later", T0 + max_age);
    assert_eq!(kind(&m.envelope), KIND_SESSION_INIT);
    assert!(!m.forward_secret);
    assert!(a.holds(&old));
    a.store.erase_expired(at(T0 + max_age + grace));
    b.store.erase_expired(at(T0 + max_age + grace));
    assert!(!a.holds(&old) && !b.holds(&old));
}

#[test]
fn state_round_trips_and_tampering_is_detected() {
    let mut a = Party::new();
    let mut b = Party::new();
    let c = Party::new();
    let mut d = Party::new();
    establish(&mut a, &mut b, T0);
    let _pending = a.seal(&c, "pending", T0 + 10);
    let init = d.seal(&a, "responded", T0 + 11);
    a.open(&init.envelope, T0 + 12).unwrap();

    let encoded = a.store.encode().unwrap();
    assert_eq!(encoded[0], STATE_VERSION);
    let decoded = SessionStore::decode(&encoded, SessionConfig::default()).unwrap();
    assert_eq!(decoded.owner(), a.public());
    assert_eq!(decoded.peers.len(), 3);
    for (key, peer) in &a.store.peers {
        let other = &decoded.peers[key];
        assert_eq!(peer.sessions.len(), other.sessions.len());
        assert_eq!(peer.pending.len(), other.pending.len());
        assert_eq!(peer.seen.len(), other.seen.len());
        for (s, t) in peer.sessions.iter().zip(&other.sessions) {
            assert_eq!(
                (s.id, s.role, s.created_at_ms),
                (t.id, t.role, t.created_at_ms)
            );
            assert_eq!(*s.keys.initiator, *t.keys.initiator);
            assert_eq!(*s.keys.responder, *t.keys.responder);
            assert_eq!(s.accept, t.accept);
            assert_eq!(s.sent, t.sent);
            assert!(s.recent == t.recent);
            assert_eq!(s.peer_first_sent_ms, t.peer_first_sent_ms);
            assert_eq!(
                (s.confirmed_at_ms, s.superseded_at_ms),
                (t.confirmed_at_ms, t.superseded_at_ms)
            );
        }
        for (p, q) in peer.pending.iter().zip(&other.pending) {
            assert_eq!((p.id, p.created_at_ms), (q.id, q.created_at_ms));
            assert_eq!(*p.ephemeral, *q.ephemeral);
            assert_eq!(*p.payload, *q.payload);
        }
    }

    // Sealed: opens with the same identity only, and every changed byte shows.
    let sealed = a.store.seal_state(&a.key).unwrap();
    assert!(!sealed
        .windows(32)
        .any(|w| w == **a.store.peers[&b.public()].sessions[0].keys.initiator));
    let reopened = SessionStore::open_state(&a.key, &sealed, SessionConfig::default()).unwrap();
    assert_eq!(*reopened.encode().unwrap(), *decoded.encode().unwrap());
    assert_eq!(
        SessionStore::open_state(&b.key, &sealed, SessionConfig::default()).err(),
        Some(SessionStateError::Decrypt)
    );
    assert_eq!(
        b.store.seal_state(&a.key).err(),
        Some(SessionStateError::WrongIdentity)
    );
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(
            SessionStore::open_state(&a.key, &bad, SessionConfig::default()).is_err(),
            "flip at byte {i} went unnoticed"
        );
    }
    assert!(SessionStore::open_state(
        &a.key,
        &sealed[..sealed.len() - 1],
        SessionConfig::default()
    )
    .is_err());
    assert!(SessionStore::open_state(&a.key, &[], SessionConfig::default()).is_err());
    let mut future = encoded.to_vec();
    future[0] = STATE_VERSION + 1;
    assert_eq!(
        SessionStore::decode(&future, SessionConfig::default()).err(),
        Some(SessionStateError::UnsupportedVersion(STATE_VERSION + 1))
    );
    let mut trailing = encoded.to_vec();
    trailing.push(0);
    assert!(SessionStore::decode(&trailing, SessionConfig::default()).is_err());
}

/// States written by older builds still open: version 1 (counted nonces)
/// and version 2 (one session id for both directions). Their sessions go
/// on, their keys unchanged.
#[test]
fn older_states_are_read_and_their_sessions_go_on() {
    for version in [1u8, 2] {
        older_state_goes_on(version);
    }
}

fn older_state_goes_on(version: u8) {
    let mut a = Party::new();
    let mut b = Party::new();
    let c = Party::new();
    let now = establish(&mut a, &mut b, T0);
    // Both sides as those builds left them: one id per session.
    state::legacy::one_id(&mut a.store);
    state::legacy::one_id(&mut b.store);
    let _pending = a.seal(&c, "pending", now);
    let old = match version {
        1 => state::legacy::encode_v1(&a.store),
        _ => state::legacy::encode_v2(&a.store),
    };
    assert_eq!(old[0], version);
    let keys_before = a.store.vector_split_keys(&b.public());
    a.store = SessionStore::decode(&old, SessionConfig::default()).unwrap();
    assert_eq!(a.store.vector_split_keys(&b.public()), keys_before);
    assert_eq!(a.store.peers[&c.public()].pending.len(), 1);
    let m = a.seal(&b, "after the upgrade", now + 1);
    assert_eq!(kind(&m.envelope), KIND_SESSION_MESSAGE);
    assert_eq!(b.read(&a, &m.envelope, now + 2), "after the upgrade");
    let back = b.seal(&a, "back", now + 3);
    assert_eq!(a.read(&b, &back.envelope, now + 4), "back");
    // What is written again is the current version.
    assert_eq!(a.store.encode().unwrap()[0], STATE_VERSION);
}

#[test]
fn a_store_is_used_with_its_own_identity_only() {
    let mut a = Party::new();
    let b = Party::new();
    let other = SecretKey::generate();
    assert_eq!(
        a.store.seal_to(&other, &b.public(), &text("x"), at(T0)),
        Err(EnvelopeError::Internal)
    );
    assert_eq!(
        a.store.open(&other, &[1, 1], at(T0), |_| true),
        Err(EnvelopeError::Internal)
    );
    let debug = format!("{:?}", a.store);
    assert!(debug.contains("SessionStore"));
}

// ---------------------------------------------------------------------------
// Forward secrecy.
// ---------------------------------------------------------------------------

/// Tries to open a recorded transport message (kind 3 or 4) with a pair of
/// split keys, in either direction.
fn opens_with(keys: &SplitKeys, envelope: &[u8]) -> bool {
    let parsed_accept;
    let parsed_message;
    let t = match kind(envelope) {
        KIND_SESSION_ACCEPT => {
            parsed_accept = layout::parse_accept(envelope).unwrap();
            &parsed_accept.transport
        }
        KIND_SESSION_MESSAGE => {
            parsed_message = layout::parse_message(envelope).unwrap();
            &parsed_message.transport
        }
        k => panic!("not a transport envelope: kind {k}"),
    };
    [&keys.initiator, &keys.responder]
        .into_iter()
        .any(|key| transport::open(key, t.nonce, t.ad, t.ciphertext).is_ok())
}

/// THE forward-secrecy test (issue 4, point 3).
///
/// A session's whole ciphertext transcript is recorded. The session is then
/// renewed and its grace period passes, so both sides erase its keys. The
/// thief then gets everything else: both static private keys, the transcript,
/// and both sides' saved state. The transport messages stay closed — every
/// route the static keys offer fails — while the init's payload, sealed before
/// forward secrecy could apply (`es`, `ss`), opens with the responder's static
/// key alone. That is exactly the line PROTOCOL draws (module docs, §7).
#[test]
fn after_erasure_both_static_keys_and_the_transcript_open_no_transport_message() {
    let config = SessionConfig {
        renew_after_messages: 4,
        ..SessionConfig::default()
    };
    let grace = millis(config.grace);
    let mut a = Party::with(config.clone());
    let mut b = Party::with(config);
    let mut transcript: Vec<Vec<u8>> = Vec::new();

    // The session, recorded: init with a payload, the bare accept, b's first
    // reply (kind 3), then kind 4 both ways.
    let init = a.seal(&b, "init: sealed with es and ss only", T0);
    transcript.push(init.envelope.clone());
    let ephemeral = a.store.peers[&b.public()].pending[0].ephemeral.clone();
    let got = b.open(&init.envelope, T0 + 1).unwrap();
    transcript.push(got.reply.clone().unwrap());
    let m = b.seal(&a, "b: first reply", T0 + 2);
    transcript.push(m.envelope.clone());
    a.open(&transcript[1], T0 + 3).unwrap();
    a.read(&b, &m.envelope, T0 + 3);
    // The initiator's ephemeral key is gone as soon as message 2 is read.
    assert!(a.store.peers[&b.public()].pending.is_empty());
    let saved = a.store.encode().unwrap();
    assert!(!saved.windows(32).any(|w| w == **ephemeral));
    for (i, s) in ["a: one", "a: two"].iter().enumerate() {
        let m = a.seal(&b, s, T0 + 10 + i as u64);
        transcript.push(m.envelope.clone());
        b.read(&a, &m.envelope, T0 + 20);
    }
    let m = b.seal(&a, "b: kind 4", T0 + 21);
    assert_eq!(kind(&m.envelope), KIND_SESSION_MESSAGE);
    transcript.push(m.envelope.clone());
    a.read(&b, &m.envelope, T0 + 22);
    let id = session_id(&init.envelope);
    assert!(transcript.iter().all(|e| a.session_of(e) == Some(id)));
    let transport_messages: Vec<&Vec<u8>> = transcript[1..].iter().collect();

    // What the thief lacks, captured here only to show afterwards that it is
    // gone and that it is all that was missing.
    let keys = a.store.peers[&b.public()].sessions[0].keys.clone();
    assert!(transport_messages.iter().all(|e| opens_with(&keys, e)));

    // Renewal by count, then the grace period: both sides erase the session.
    let mut now = T0 + 100;
    let renewal = loop {
        let s = a.seal(&b, "more", now);
        b.read(&a, &s.envelope, now);
        now += 1;
        if let Some(r) = s.renewal {
            break r;
        }
    };
    renew(&mut a, &mut b, &renewal, now);
    now += grace + 10;
    a.store.erase_expired(at(now));
    b.store.erase_expired(at(now));
    assert!(!a.holds(&id) && !b.holds(&id));

    // The theft: both static keys and both saved states (sealed under the
    // identity keys, so open to the thief). Neither holds the erased keys.
    let mut stolen_a = SessionStore::open_state(
        &a.key,
        &a.store.seal_state(&a.key).unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let mut stolen_b = SessionStore::open_state(
        &b.key,
        &b.store.seal_state(&b.key).unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    for store in [&stolen_a, &stolen_b] {
        let bytes = store.encode().unwrap();
        assert!(!bytes
            .windows(32)
            .any(|w| w == **keys.initiator || w == **keys.responder));
        assert!(store
            .peers
            .values()
            .all(|p| p.sessions.iter().all(|s| s.id != id)));
    }

    // Route 1: the stolen states themselves.
    // (Each side remembers the ids of what it received on an erased
    // session; its own envelopes' ids it never expects to receive.)
    for e in &transport_messages {
        for (stolen, key, peer) in [
            (&mut stolen_a, &a.key, b.public()),
            (&mut stolen_b, &b.key, a.public()),
        ] {
            let got = stolen.open(key, e, at(now), |_| true);
            assert!(
                got == Err(EnvelopeError::ErasedSession { peer })
                    || got == Err(EnvelopeError::UnknownSession),
                "{got:?}"
            );
        }
    }

    // Route 2: replay the handshake as the responder with b's static key. It
    // reads message 1 — and with it the init's payload: no forward secrecy
    // there — but answers with a fresh ephemeral key, hence other keys.
    let parsed = layout::parse_init(&init.envelope[2..]).unwrap();
    for _ in 0..3 {
        let read = noise::read_init(&b.key, &parsed.id, parsed.created_at_ms, parsed.msg1).unwrap();
        assert_eq!(read.sender, a.public());
        let (_, padded) = split_init_payload(parsed.id, &read.payload).unwrap();
        let replayed = body_of(padded).unwrap().unwrap();
        assert_eq!(
            replayed.content,
            Content::Text("init: sealed with es and ss only".into())
        );
        let (_, other_keys) = read.accept().unwrap();
        assert!(transport_messages
            .iter()
            .all(|e| !opens_with(&other_keys, e)));
    }

    // Route 3: replay it as the initiator with a's static key. Without the
    // erased ephemeral key, message 1 cannot be rewritten, and the recorded
    // message 2 does not complete any other.
    let recorded_msg2 = *layout::parse_accept(&transcript[1]).unwrap().msg2;
    for payload in [read_padded(&b, &init.envelope), vec![0u8; 256]] {
        let guess = noise::new_ephemeral();
        let (_, msg1) = noise::write_init(
            &a.key,
            &b.public(),
            &parsed.id,
            parsed.created_at_ms,
            &guess,
            &payload,
        )
        .unwrap();
        assert_ne!(msg1, parsed.msg1);
        assert_eq!(
            noise::complete_init(
                &a.key,
                &b.public(),
                &parsed.id,
                parsed.created_at_ms,
                &guess,
                &payload,
                &recorded_msg2
            )
            .err(),
            Some(EnvelopeError::Decrypt)
        );
    }

    // What forward secrecy does not cover: the init opens with b's static
    // key alone, like any kind 1 envelope.
    let mut bare = SessionStore::new(b.public(), SessionConfig::default());
    let got = bare
        .open(&b.key, &init.envelope, at(now), |_| false)
        .unwrap();
    assert_eq!(got.sender, a.public());
    assert_eq!(
        got.body.unwrap().content,
        Content::Text("init: sealed with es and ss only".into())
    );
}

/// The padded payload of a kind 2 envelope, read with the responder's key.
fn read_padded(to: &Party, init: &[u8]) -> Vec<u8> {
    let p = layout::parse_init(&init[2..]).unwrap();
    noise::read_init(&to.key, &p.id, p.created_at_ms, p.msg1)
        .unwrap()
        .payload
        .to_vec()
}

// ---------------------------------------------------------------------------
// Garbage.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes after each session kind's header, and random bytes after
    /// a real session id (which reach decryption), are errors, never panics.
    #[test]
    fn opening_garbage_never_panics(
        kind_byte in 2u8..=4,
        bytes in proptest::collection::vec(any::<u8>(), 0..1200),
        keep_id in any::<bool>(),
    ) {
        let mut a = Party::new();
        let mut b = Party::new();
        let now = establish(&mut a, &mut b, T0);
        let _pending = a.seal(&Party::new(), "pending", now);
        let mut envelope = vec![ENVELOPE_VERSION, kind_byte];
        if keep_id {
            // The ids a names its incoming kind 3 and 4 envelopes by.
            let id = if kind_byte == KIND_SESSION_ACCEPT {
                a.store.peers.values().flat_map(|p| p.pending.iter()).next().unwrap().recv_id
            } else {
                a.store.peers[&b.public()].sessions.last().unwrap().recv_id
            };
            envelope.extend_from_slice(&id.0);
        }
        envelope.extend_from_slice(&bytes);
        prop_assert!(a.open(&envelope, now).is_err());
        prop_assert!(b.open(&envelope, now).is_err());
        // Lengths that pass the layout checks reach the AEAD.
        let mut sized = envelope.clone();
        let at = match kind_byte {
            KIND_SESSION_INIT => layout::INIT_MSG1_AT + noise::MSG1_OVERHEAD,
            KIND_SESSION_ACCEPT => layout::ACCEPT_CIPHERTEXT_AT + TAG_LEN,
            _ => layout::MESSAGE_CIPHERTEXT_AT + TAG_LEN,
        };
        sized.resize(at + 256, 0xA5);
        prop_assert!(a.open(&sized, now).is_err());
        prop_assert!(b.open(&sized, now).is_err());
        // The real session still works.
        let m = a.seal(&b, "still fine", now);
        prop_assert_eq!(b.read(&a, &m.envelope, now), "still fine");
    }

    #[test]
    fn decoding_garbage_state_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SessionStore::decode(&bytes, SessionConfig::default());
        let mut versioned = vec![STATE_VERSION];
        versioned.extend_from_slice(&bytes);
        let _ = SessionStore::decode(&versioned, SessionConfig::default());
        let key = SecretKey::generate();
        prop_assert!(SessionStore::open_state(&key, &bytes, SessionConfig::default()).is_err());
    }

    /// Every truncation or extension of a real encoded state is an error or a
    /// valid store, never a panic.
    #[test]
    fn mangled_real_states_never_panic(cut in 0usize..2000, byte in any::<u8>(), at_ in 0usize..2000) {
        let mut a = Party::new();
        let mut b = Party::new();
        establish(&mut a, &mut b, T0);
        let _ = a.seal(&Party::new(), "pending", T0 + 10);
        let encoded = a.store.encode().unwrap();
        let mut bytes = encoded[..cut.min(encoded.len())].to_vec();
        if !bytes.is_empty() {
            let i = at_ % bytes.len();
            bytes[i] = byte;
        }
        let _ = SessionStore::decode(&bytes, SessionConfig::default());
    }
}
