//! Offline delivery, durability across relay crashes, the relay's blindness,
//! mailbox ownership and duplicate suppression.

use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_tests::raw::Raw;
use sotto_tests::{contains, files_under, Client, Relay};

/// `[time] NAME: TEXT` lines of an inbox, without the time.
fn messages(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            assert!(l.starts_with('['), "inbox line without a time: {l:?}");
            let close = l.find("] ").expect("time is closed by `] `");
            l[close + 2..].to_owned()
        })
        .collect()
}

#[test]
fn a_message_sent_while_the_recipient_is_offline_waits_and_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);

    alice
        .run(&["send", "bob", "hello bob, are you there?"])
        .ok();
    alice.run(&["send", "bob", "second"]).ok();

    let out = bob.run(&["inbox"]).ok();
    assert_eq!(
        messages(&out),
        ["alice: hello bob, are you there?", "alice: second"]
    );
    // Acknowledged: a second inbox is empty.
    let again = bob.run(&["inbox"]);
    assert_eq!(again.ok(), "");
}

#[test]
fn a_relay_killed_between_send_and_inbox_loses_nothing_and_its_disk_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let mut relay = Relay::start(&data, None);
    let (alice, bob) = Client::pair(&relay);
    let marker = "MARKER-7f3a9c-the-relay-must-never-see-this";

    alice.run(&["send", "bob", marker]).ok();
    bob.run(&["send", "alice", &format!("{marker} reply")]).ok();
    relay.kill(); // SIGKILL: no flush, no shutdown hook
    relay.restart();

    let out = bob.run(&["inbox"]).ok();
    assert_eq!(messages(&out), [format!("alice: {marker}")]);

    // Before alice reads hers, the relay's disk holds a sealed copy: check it
    // holds neither text nor either private key.
    let secrets = [alice.secret().to_bytes(), bob.secret().to_bytes()];
    let files = files_under(&data);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, marker.as_bytes()),
            "{} holds the message text",
            path.display()
        );
        assert!(!contains(bytes, b"MARKER-7f3a9c"));
        for s in &secrets {
            assert!(
                !contains(bytes, s.as_ref()),
                "{} holds a client's private key",
                path.display()
            );
        }
    }
    let out = alice.run(&["inbox"]).ok();
    assert_eq!(messages(&out), [format!("bob: {marker} reply")]);
}

#[test]
fn a_graceful_shutdown_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    alice.run(&["send", "bob", "before the restart"]).ok();
    let (ok, log) = relay.terminate();
    assert!(ok, "SIGTERM ends the relay with success:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    relay.restart();
    assert_eq!(
        messages(&bob.run(&["inbox"]).ok()),
        ["alice: before the restart"]
    );
}

#[test]
fn a_message_from_a_stranger_is_shown_as_their_key_never_as_a_contact() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let stranger = Client::new(&relay);
    let bob = Client::new(&relay);
    let carol = Client::new(&relay);
    bob.add_contact("carol", &carol);
    stranger.add_contact("bob", &bob);

    stranger.run(&["send", "bob", "guess who"]).ok();
    let run = bob.run(&["inbox"]);
    let out = run.ok();
    let line = out.lines().next().expect("one message");
    assert!(line.contains(&stranger.key), "{line}");
    assert!(line.ends_with(": guess who"), "{line}");
    assert!(!line.contains("carol"), "{line}");
    assert!(!line.contains("] bob"), "{line}");
}

#[test]
fn another_key_can_neither_read_nor_delete_bobs_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let mallory = Client::new(&relay);
    alice.run(&["send", "bob", "for bob only"]).ok();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut m = Raw::connect(&relay.addr, &mallory.secret(), &relay.key).await;
        assert!(
            m.fetch_all().await.is_empty(),
            "mallory sees only her own mailbox"
        );
        m.send(&ClientMsg::Ack {
            req: 1,
            ids: (0..10_000).collect(),
        })
        .await;
        assert_eq!(m.recv().await, RelayMsg::Acked { req: 1, deleted: 0 });
    });
    assert_eq!(messages(&bob.run(&["inbox"]).ok()), ["alice: for bob only"]);
}

#[test]
fn an_envelope_delivered_twice_is_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let mallory = Client::new(&relay);
    alice.run(&["send", "bob", "only once"]).ok();

    let rt = tokio::runtime::Runtime::new().unwrap();
    // Capture the sealed envelope (as the relay could) without acknowledging it.
    let envelope = rt.block_on(async {
        let mut as_bob = Raw::connect(&relay.addr, &bob.secret(), &relay.key).await;
        let pending = as_bob.fetch_all().await;
        // Where to reach alice, then the message.
        assert_eq!(pending.len(), 2);
        pending[1].1.clone()
    });
    let replay = |req: u32| {
        rt.block_on(async {
            let mut m = Raw::connect(&relay.addr, &mallory.secret(), &relay.key).await;
            m.send(&ClientMsg::Send {
                req,
                to: bob.key.parse().unwrap(),
                envelope: serde_bytes::ByteBuf::from(envelope.clone()),
            })
            .await;
            assert_eq!(m.recv().await, RelayMsg::Stored { req });
        })
    };
    // Two copies in the mailbox at once: shown once.
    replay(7);
    assert_eq!(messages(&bob.run(&["inbox"]).ok()), ["alice: only once"]);
    // A replay arriving after the original was read: not shown again.
    replay(8);
    assert_eq!(bob.run(&["inbox"]).ok(), "");
}

#[test]
fn terminal_escapes_from_the_network_are_neutralised() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    alice
        .run(&["send", "bob", "hi \x1b[2J\x1b]0;owned\x07 \u{202e}evil"])
        .ok();
    let run = bob.run(&["inbox"]);
    run.ok();
    assert!(!run.out.stdout.contains(&0x1b), "ESC reached the terminal");
    assert!(!run.out.stdout.contains(&0x07), "BEL reached the terminal");
    assert!(
        !run.stdout().contains('\u{202e}'),
        "a bidi override reached the terminal"
    );
    assert!(run.stdout().contains("hi "), "{}", run.stdout());
}
