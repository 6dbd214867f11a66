//! The client's own state under ordinary use and misuse, with the real
//! binaries: a file offer that waits while many messages follow it, and a
//! home restored from a backup (or copied) that sends again.
//!
//! Envelopes are read from the relay with a raw link as their recipient,
//! without acknowledging them, so the recipient's `sotto` still gets them.

use std::collections::HashSet;
use std::path::Path;

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

/// The nonce of a session transport envelope, as PROTOCOL §8.2 lays it out:
/// kind 4 `01 04 | id (16) | nonce (24) | ...`, kind 3 with message 2 (48)
/// before the nonce. `None` for the other kinds.
fn transport_nonce(envelope: &[u8]) -> Option<[u8; 24]> {
    let at = match envelope.get(1)? {
        3 => 2 + 16 + 48,
        4 => 2 + 16,
        _ => return None,
    };
    envelope.get(at..at + 24)?.try_into().ok()
}

/// Alice and Bob with a forward-secret session both ways.
fn established(relay: &Relay) -> (Client, Client) {
    let (alice, bob) = Client::pair(relay);
    alice.run(&["send", "bob", "hello"]).ok();
    assert!(bob.run(&["inbox"]).ok().ends_with("alice: hello\n"));
    alice.run(&["inbox"]).ok();
    bob.run(&["send", "alice", "hi"]).ok();
    assert!(alice.run(&["inbox"]).ok().ends_with("bob: hi\n"));
    bob.run(&["inbox"]).ok();
    (alice, bob)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces the files of `home` with those of `backup`.
fn restore(home: &Path, backup: &Path) {
    for entry in std::fs::read_dir(home).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    copy_dir(backup, home);
}

/// The review's reproduction: an offer seen by `inbox`, then many more
/// messages from its sender, then `receive-all`. The offer was judged a
/// replay and deleted once it fell behind the replay window.
#[test]
fn a_file_offer_followed_by_thirty_messages_still_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = established(&relay);
    let file = dir.path().join("report.pdf");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    alice
        .run(&["send-file", "bob", file.to_str().unwrap(), "--quiet"])
        .ok();

    // Bob sees the offer in his inbox, reads a few lines in between...
    let first = bob.run(&["inbox"]).ok();
    assert!(first.contains("alice: sent a file: report.pdf"), "{first}");
    for i in 0..30 {
        alice.run(&["send", "bob", &format!("message {i}")]).ok();
        if i == 10 {
            bob.run(&["inbox"]).ok();
        }
    }
    let later = bob.run(&["inbox"]).ok();
    assert!(later.contains("message 29"), "{later}");
    assert!(!later.contains("sent a file"), "announced twice: {later}");

    // ... and the file is still his to receive.
    let out = tempfile::tempdir().unwrap();
    let run = bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()]);
    let stdout = run.ok();
    assert!(
        stdout.contains("alice: received report.pdf (200000 bytes)"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(out.path().join("report.pdf")).unwrap(),
        content
    );
    // Received once: a second run has nothing more.
    let again = bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()]);
    assert!(
        again.stderr().contains("no new messages or files"),
        "{}",
        again.stderr()
    );
    // The offer, with the file's key and name, never lay in the home in the clear.
    assert!(!bob.home().join("offers.sealed").exists());
}

/// An offer kept by `inbox` survives a restart of everything, and a
/// `chat` that reads the mailbox in between.
#[test]
fn a_kept_offer_survives_restarts_and_a_chat_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = established(&relay);
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"the notes").unwrap();
    alice
        .run(&["send-file", "bob", file.to_str().unwrap(), "--quiet"])
        .ok();
    assert!(bob.run(&["inbox"]).ok().contains("sent a file: notes.txt"));
    let kept = std::fs::read(bob.home().join("offers.sealed")).unwrap();
    assert!(!sotto_tests::contains(&kept, b"notes.txt"));

    relay.restart();
    alice.run(&["send", "bob", "one more"]).ok();
    let chat = bob.run_with_stdin(&["chat", "alice", "--plain"], "");
    assert!(chat.ok().contains("alice: one more"));
    let out = tempfile::tempdir().unwrap();
    let stdout = bob
        .run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    assert!(stdout.contains("received notes.txt"), "{stdout}");
    assert_eq!(
        std::fs::read(out.path().join("notes.txt")).unwrap(),
        b"the notes"
    );
}

/// A home restored from a backup seals again from an older state. Before,
/// its next message reused the nonce (and key) of the first message sent
/// after the backup, and the receiver dropped it as a replay.
#[test]
fn a_restored_home_reuses_no_nonce_and_its_next_message_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = established(&relay);
    let backup = dir.path().join("alice-backup");
    copy_dir(alice.home(), &backup);

    for i in 0..3 {
        alice
            .run(&["send", "bob", &format!("before the restore {i}")])
            .ok();
    }
    restore(alice.home(), &backup);
    for i in 0..3 {
        alice
            .run(&["send", "bob", &format!("after the restore {i}")])
            .ok();
    }
    // A copy of the same backup in use elsewhere seals too.
    let copy = Client::uninit();
    copy_dir(&backup, copy.home());
    copy.run(&["send", "bob", "from the copy"]).ok();

    let waiting = mailbox(&relay, &bob);
    let nonces: Vec<[u8; 24]> = waiting.iter().filter_map(|e| transport_nonce(e)).collect();
    assert_eq!(nonces.len(), 7, "every message went on the session");
    let distinct: HashSet<_> = nonces.iter().collect();
    assert_eq!(distinct.len(), nonces.len(), "a nonce was used twice");

    let shown = bob.run(&["inbox"]).ok();
    for i in 0..3 {
        assert!(
            shown.contains(&format!("alice: before the restore {i}")),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("alice: after the restore {i}")),
            "{shown}"
        );
    }
    assert!(shown.contains("alice: from the copy"), "{shown}");
    // And the restored side reads what bob answers.
    bob.run(&["send", "alice", "got them all"]).ok();
    assert!(alice.run(&["inbox"]).ok().contains("bob: got them all"));
}
