//! Forward-secret sessions and receipts with the real binaries: the kind of
//! envelope the relay stores, forward secrecy once session keys are erased,
//! sessions across restarts, replays, receipts in a live chat, and commands
//! side by side in one home.
//!
//! Envelopes are read from the relay with a raw link as their recipient,
//! without acknowledging them, so the recipient's `sotto` still gets them.
//! Every wait is bounded (a guard against a hang), nothing asserts how fast.

use std::time::SystemTime;

use serde_bytes::ByteBuf;
use sotto_crypto::envelope::{self, Body, Content, ReceiptState};
use sotto_crypto::session::{SessionConfig, SessionStore};
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_keys::{PublicKey, SecretKey};
use sotto_tests::raw::Raw;
use sotto_tests::{Client, Relay};

/// The envelopes waiting for `who`, left on the relay.
fn mailbox(relay: &Relay, who: &Client) -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = Raw::connect(&relay.addr, &who.secret(), &relay.key).await;
        raw.fetch_all().await.into_iter().map(|(_, e)| e).collect()
    })
}

/// Stores `envelope` for `to` through a raw link as `from`.
fn send_raw(relay: &Relay, from: &SecretKey, to: PublicKey, envelope: Vec<u8>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = Raw::connect(&relay.addr, from, &relay.key).await;
        raw.send(&ClientMsg::Send {
            req: 1,
            to,
            envelope: ByteBuf::from(envelope),
        })
        .await;
        assert_eq!(raw.recv().await, RelayMsg::Stored { req: 1 });
    })
}

fn kinds(envelopes: &[Vec<u8>]) -> Vec<u8> {
    envelopes.iter().map(|e| e[1]).collect()
}

fn public(c: &Client) -> PublicKey {
    c.key.parse().unwrap()
}

/// The session state of `who`, opened with its identity key.
fn state_of(who: &Client, bytes: &[u8]) -> SessionStore {
    SessionStore::open_state(&who.secret(), bytes, SessionConfig::default()).unwrap()
}

/// `bob` reads its inbox and `alice` reads the accept: from then on
/// alice's messages to bob are forward-secret.
fn establish(alice: &Client, bob: &Client) {
    alice.run(&["send", "bob", "hello"]).ok();
    assert!(bob.run(&["inbox"]).ok().ends_with("alice: hello\n"));
    assert_eq!(alice.run(&["inbox"]).ok(), "");
}

#[test]
fn messages_become_forward_secret_once_both_sides_spoke_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);

    alice.run(&["send", "bob", "hello"]).ok();
    // No session yet: an init (carrying where to reach alice), then the
    // message, sealed to bob's key while the session is not yet accepted.
    assert_eq!(kinds(&mailbox(&relay, &bob)), [2, 1]);
    assert!(bob.run(&["inbox"]).ok().ends_with("alice: hello\n"));
    // Bob answered with a bare accept (kind 3) and a read receipt.
    let to_alice = mailbox(&relay, &alice);
    assert!(kinds(&to_alice).contains(&3), "{:?}", kinds(&to_alice));
    assert_eq!(alice.run(&["inbox"]).ok(), "");

    // Every command is a new process: the session was saved and restored.
    for text in ["second", "third"] {
        alice.run(&["send", "bob", text]).ok();
        assert_eq!(kinds(&mailbox(&relay, &bob)), [4]);
        assert!(bob
            .run(&["inbox"])
            .ok()
            .ends_with(&format!("alice: {text}\n")));
    }
    // Bob's way too, after his own restart.
    bob.run(&["send", "alice", "back"]).ok();
    let k = kinds(&mailbox(&relay, &alice));
    assert!(k.iter().all(|k| *k == 3 || *k == 4), "{k:?}");
    assert!(alice.run(&["inbox"]).ok().ends_with("bob: back\n"));

    // The state file is private and sealed: it opens with the identity key
    // only, and holds the session.
    use std::os::unix::fs::PermissionsExt;
    let path = bob.home().join("sessions.sealed");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"sotto-sessions\0"));
    assert!(state_of(&bob, &bytes).has_session(&public(&alice)));
    assert!(SessionStore::open_state(&alice.secret(), &bytes, SessionConfig::default()).is_err());
    let plain = state_of(&bob, &bytes).encode().unwrap();
    assert!(!sotto_tests::contains(&bytes, &plain[plain.len() - 32..]));

    // Removing the contact erases its sessions.
    bob.run(&["contact", "remove", "alice"]).ok();
    let bytes = std::fs::read(&path).unwrap();
    assert!(!state_of(&bob, &bytes).has_session(&public(&alice)));
}

#[test]
fn erased_session_keys_leave_a_recording_closed_to_both_static_keys() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (mut alice, mut bob) = Client::pair(&relay);
    establish(&alice, &bob);

    alice.run(&["send", "bob", "the secret words"]).ok();
    let recorded = mailbox(&relay, &bob).remove(0);
    assert_eq!(recorded[1], 4, "a session message");
    let now = SystemTime::now();

    // Before erasure: bob's saved state (opened with his key) reads it.
    let before = std::fs::read(bob.home().join("sessions.sealed")).unwrap();
    let opened = state_of(&bob, &before)
        .open(&bob.secret(), &recorded, now, |_| true)
        .unwrap();
    assert_eq!(
        opened.body.unwrap().content,
        Content::Text("the secret words".into())
    );
    assert!(bob
        .run(&["inbox"])
        .ok()
        .ends_with("alice: the secret words\n"));

    // Both sides age the session out (test-only knob: no grace period).
    for c in [&mut alice, &mut bob] {
        c.env.push(("SOTTO_SESSION_MAX_AGE".into(), "0".into()));
    }
    alice.run(&["send", "bob", "later"]).ok();
    bob.run(&["send", "alice", "later"]).ok();

    // After erasure: both identity keys and both saved states, and the
    // recording opens with none of them.
    for (who, peer) in [(&bob, &alice), (&alice, &bob)] {
        let bytes = std::fs::read(who.home().join("sessions.sealed")).unwrap();
        let mut store = state_of(who, &bytes);
        assert!(!store.has_session(&public(peer)));
        for key in [bob.secret(), alice.secret()] {
            assert!(envelope::open(&key, &recorded).is_err());
            if key.public() == store.owner() {
                assert!(store.open(&key, &recorded, now, |_| true).is_err());
            }
            let mut fresh = SessionStore::new(key.public(), SessionConfig::default());
            assert!(fresh.open(&key, &recorded, now, |_| true).is_err());
        }
    }
}

#[test]
fn a_replayed_session_envelope_is_dropped_and_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    establish(&alice, &bob);

    alice.run(&["send", "bob", "only once"]).ok();
    let recorded = mailbox(&relay, &bob).remove(0);
    assert_eq!(recorded[1], 4);
    // The same bytes again, in the same batch and in a later one.
    send_raw(&relay, &alice.secret(), public(&bob), recorded.clone());
    let run = bob.run(&["inbox"]);
    assert_eq!(run.ok().matches("only once").count(), 1);
    send_raw(&relay, &alice.secret(), public(&bob), recorded);
    let run = bob.run(&["inbox"]);
    assert!(!run.ok().contains("only once"));
    // Dropped as a replay, not as an envelope that failed to open.
    assert!(
        !run.stderr().contains("failed to decrypt"),
        "{}",
        run.stderr()
    );
    assert!(mailbox(&relay, &bob).is_empty(), "acknowledged");
}

#[test]
fn a_live_chat_shows_stored_delivered_and_read_for_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);

    let mut a = alice.spawn(&["chat", "bob"]);
    // Bob talks to nobody yet: what he is shown is delivered, not read.
    let mut b = bob.spawn(&["chat"]);
    b.wait_stderr("connected", 1);
    a.type_line("first words of a long message");
    assert!(b.expect_lines(1)[0].ends_with("alice: first words of a long message"));
    let err = a.wait_stderr("bob: delivered \"first words of a long me…\"", 1);
    let stored = err.find("bob: stored \"first words").expect(&err);
    assert!(stored < err.find("bob: delivered").unwrap(), "{err}");
    assert!(!err.contains("bob: read"), "{err}");

    // Switching to alice makes it read.
    b.type_line("/to alice");
    let err = a.wait_stderr("bob: read \"first words", 1);
    assert_eq!(err.matches("bob: delivered").count(), 1, "{err}");

    // Now bob's partner is alice: a new message goes straight to read.
    a.type_line("second");
    assert!(b.expect_lines(1)[0].ends_with("alice: second"));
    let err = a.wait_stderr("bob: read \"second\"", 1);
    assert!(!err.contains("bob: delivered \"second\""), "{err}");
    // Receipts are not messages: nothing came on alice's stdout.
    let (ok, rest) = b.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");
    let (ok, rest) = a.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");
    let history = alice.run(&["history", "bob"]).ok();
    assert_eq!(history.lines().count(), 2, "{history}");
}

#[test]
fn a_receipt_from_a_stranger_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let mallory = Client::new(&relay);

    let mut a = alice.spawn(&["chat", "bob"]);
    a.type_line("for bob");
    a.wait_stderr("bob: stored \"for bob\"", 1);
    // Mallory learned the message id (say from bob) and answers as if read.
    let init = mailbox(&relay, &bob).remove(0);
    let mut bobs = SessionStore::new(public(&bob), SessionConfig::default());
    let id = bobs
        .open(&bob.secret(), &init, SystemTime::now(), |_| false)
        .unwrap()
        .body
        .unwrap()
        .id;
    let receipt = Body::new(Content::Receipt {
        state: ReceiptState::Read,
        ids: vec![id],
    });
    let sealed = envelope::seal(&mallory.secret(), &public(&alice), &receipt).unwrap();
    send_raw(&relay, &mallory.secret(), public(&alice), sealed);
    // Then bob reads it for real: alice hears of that one only.
    assert!(bob.run(&["inbox"]).ok().ends_with("alice: for bob\n"));
    let err = a.wait_stderr("bob: read \"for bob\"", 1);
    assert!(!err.contains(&mallory.key), "{err}");
    let (ok, rest) = a.finish();
    assert!(
        ok && rest.is_empty(),
        "a receipt is never a message: {rest:?}"
    );
}

#[test]
fn inbox_and_send_run_while_a_chat_of_the_same_home_runs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let mut b = bob.spawn(&["chat", "alice"]);
    b.wait_stderr("connected", 1);
    alice.run(&["send", "bob", "to the chat"]).ok();
    assert!(b.expect_lines(1)[0].ends_with("alice: to the chat"));

    // The same home, side by side with the running chat.
    let run = bob.run(&["inbox"]);
    run.ok();
    assert!(!run.stderr().contains("in use"), "{}", run.stderr());
    bob.run(&["send", "alice", "from a second process"]).ok();
    assert!(alice
        .run(&["inbox"])
        .ok()
        .contains("bob: from a second process"));
    b.type_line("from the chat");
    let (ok, _) = b.finish();
    assert!(ok);
    let got = alice.run(&["inbox"]).ok();
    assert!(got.contains("bob: from the chat"), "{got}");
}
