//! Presence among contacts: live-only notices on the relay, `sotto: bob is
//! online` in chat, `/online`, and `/file` in chat.
//!
//! Every wait is bounded (what is awaited must come within a generous limit);
//! nothing asserts how fast it came. Absences are checked behind a barrier:
//! something that must come after what should not have happened.

use serde_bytes::ByteBuf;
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_tests::raw::Raw;
use sotto_tests::{contains, files_under, Client, Live, Relay};

/// The lines of `live`'s stderr that are presence or `/online` notices.
fn presence_lines(live: &Live) -> Vec<String> {
    live.stderr()
        .lines()
        .filter(|l| {
            l.contains(" is online") || l.contains("went offline") || l.contains("online: ")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_notice_reaches_only_live_connections_is_never_stored_and_never_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), None);
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    let carol = Client::new(&relay);
    let marker = b"a presence notice the relay must never store".to_vec();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Loading a key file is slow on purpose (Argon2id): once each.
    let (alice, bob, carol) = (alice.secret(), bob.secret(), carol.secret());

    rt.block_on(async {
        let mut a = Raw::connect(&relay.addr, &alice, &relay.key).await;
        a.send(&ClientMsg::Fetch { live: true }).await;
        assert_eq!(a.recv().await, RelayMsg::Drained);

        let mut b = Raw::connect(&relay.addr, &bob, &relay.key).await;
        for to in [alice.public(), carol.public()] {
            b.send(&ClientMsg::Notify {
                to,
                envelope: ByteBuf::from(marker.clone()),
            })
            .await;
        }
        // Alice is live: she gets it, pushed.
        assert_eq!(
            a.recv().await,
            RelayMsg::Notice {
                envelope: ByteBuf::from(marker.clone())
            }
        );
        // Bob got no answer for either (carol is not connected): the next
        // thing he hears is the answer to his Ping.
        b.send(&ClientMsg::Ping).await;
        assert_eq!(b.recv().await, RelayMsg::Pong);

        // A notice larger than an envelope may be closes the sender's link
        // with a reason, whoever it was for.
        let max = sotto_crypto::envelope::MAX_ENVELOPE_LEN;
        b.send(&ClientMsg::Notify {
            to: carol.public(),
            envelope: ByteBuf::from(vec![0u8; max + 1]),
        })
        .await;
        match b.recv().await {
            RelayMsg::Error {
                code: ErrorCode::BadRequest,
                detail,
                ..
            } => assert!(detail.contains("notice"), "{detail}"),
            other => panic!("expected a refusal, got {other:?}"),
        }

        // Carol, connecting afterwards, finds nothing waiting.
        let mut c = Raw::connect(&relay.addr, &carol, &relay.key).await;
        assert!(c.fetch_all().await.is_empty());
        // Alice's mailbox holds nothing either (the notice was live only).
        let mut a2 = Raw::connect(&relay.addr, &alice, &relay.key).await;
        assert!(a2.fetch_all().await.is_empty());
    });

    // Not after a restart either, and not on the relay's disk.
    relay.restart();
    rt.block_on(async {
        for who in [&alice, &carol] {
            let mut raw = Raw::connect(&relay.addr, who, &relay.key).await;
            assert!(raw.fetch_all().await.is_empty());
        }
    });
    let (ok, _) = relay.terminate();
    assert!(ok);
    for (path, bytes) in files_under(&relay.data) {
        assert!(
            !contains(&bytes, &marker),
            "{} holds a notice",
            path.display()
        );
    }
}

#[test]
fn contacts_see_each_other_come_and_go_and_strangers_stay_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    // Mallory knows alice; alice does not know mallory. Bob knows mallory,
    // which is how the test knows mallory's notices have gone out.
    let mallory = Client::new(&relay);
    mallory.add_contact("alice", &alice);
    mallory.add_contact("bob", &bob);
    bob.add_contact("mallory", &mallory);

    // Alice first; bob arrives later: each hears of the other.
    let mut a = alice.spawn(&["chat", "bob"]);
    a.wait_stderr("connected", 1);
    let b = bob.spawn(&["chat", "alice"]);
    b.wait_stderr("sotto: alice is online", 1);
    a.wait_stderr("sotto: bob is online", 1);
    a.type_line("/online");
    a.wait_stderr("sotto: online: bob", 1);

    // Bob leaves: alice is told; /online says nobody.
    let (ok, rest) = b.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");
    a.wait_stderr("sotto: bob went offline", 1);
    a.type_line("/online");
    a.wait_stderr("sotto: no contact is online", 1);

    // Bob comes back while alice is there: both hear of it again.
    let b = bob.spawn(&["chat", "alice"]);
    a.wait_stderr("sotto: bob is online", 2);
    b.wait_stderr("sotto: alice is online", 1);

    // Mallory's chat announces itself to alice and bob, in that order; bob
    // (a contact) answers, so once mallory hears of bob, the notice to
    // alice has gone out. Mallory's message then comes after it to alice.
    let mut m = mallory.spawn(&["chat", "alice"]);
    m.wait_stderr("sotto: bob is online", 1);
    b.wait_stderr("sotto: mallory is online", 1);
    m.type_line("let me in");
    let line = a.expect_lines(1).remove(0);
    assert!(line.ends_with(": let me in"), "{line}");
    assert!(line.contains("unknown sotto1"), "{line}");
    // Alice never answered mallory: mallory knows only bob is online.
    m.type_line("/online");
    m.wait_stderr("sotto: online: bob", 1);
    a.type_line("/online");
    a.wait_stderr("sotto: online: bob", 2);
    assert_eq!(
        presence_lines(&a),
        [
            "sotto: bob is online",
            "sotto: online: bob",
            "sotto: bob went offline",
            "sotto: no contact is online",
            "sotto: bob is online",
            "sotto: online: bob",
        ],
        "{}",
        a.stderr()
    );
    assert!(!presence_lines(&m).iter().any(|l| l.contains("alice")));

    // Presence is neither on stdout nor in the history.
    let (ok, rest) = a.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");
    for live in [b, m] {
        let (ok, rest) = live.finish();
        assert!(ok && rest.is_empty(), "{rest:?}");
    }
    let history = alice.run(&["history", "bob"]).ok();
    assert_eq!(history, "", "{history}");
    // And nothing of it waits in a mailbox.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for who in [&alice, &bob, &mallory] {
            let mut raw = Raw::connect(&relay.addr, &who.secret(), &relay.key).await;
            assert!(raw.fetch_all().await.is_empty());
        }
    });
}

#[test]
fn a_file_sent_from_chat_arrives_byte_exact_while_chatting_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let data: Vec<u8> = (0..(3 * sotto_crypto::file::CHUNK_LEN + 1234))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let path = dir.path().join("report final.bin");
    std::fs::write(&path, &data).unwrap();

    let b = bob.spawn(&["chat", "alice"]);
    let mut a = alice.spawn(&["chat", "bob"]);
    a.type_line("/file");
    a.type_line(&format!(
        "/file {}",
        dir.path().join("missing.bin").display()
    ));
    a.type_line(&format!("/file {}", path.display()));
    a.type_line("still chatting");
    // Two lines, in either order: the upload runs beside the chat.
    let lines = b.expect_lines(2);
    let offer = format!(
        "alice: sent a file: report final.bin ({} bytes) — type /receive",
        data.len()
    );
    assert!(lines.iter().any(|l| l.ends_with(&offer)), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.ends_with("alice: still chatting")),
        "{lines:?}"
    );
    a.wait_stderr("sent report final.bin to bob: the relay has stored it", 1);
    let err = a.stderr();
    assert!(err.contains("sotto: warning: /file needs a PATH"), "{err}");
    assert!(err.contains("missing.bin was not sent: "), "{err}");
    assert!(
        err.contains(&format!(
            "sending report final.bin ({} bytes) to bob in the background",
            data.len()
        )),
        "{err}"
    );
    let (ok, rest) = a.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");
    let (ok, rest) = b.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");

    let out = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    let got = std::fs::read(out.path().join("report final.bin")).unwrap();
    assert!(got == data, "the received file differs");
}

#[test]
fn end_of_input_waits_for_a_file_being_sent() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let data = vec![7u8; 2 * sotto_crypto::file::CHUNK_LEN];
    let path = dir.path().join("two.bin");
    std::fs::write(&path, &data).unwrap();

    // The whole input at once: the chat must not end before the upload has.
    let run = alice.run_with_stdin(&["chat", "bob"], &format!("/file {}\n", path.display()));
    run.ok();
    assert!(
        run.stderr().contains("sent two.bin to bob"),
        "{}",
        run.stderr()
    );
    let out = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    assert!(std::fs::read(out.path().join("two.bin")).unwrap() == data);
}
