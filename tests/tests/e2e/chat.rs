//! `sotto chat` driven through pipes: live delivery, ordering, groups,
//! resilience to a relay restart, strangers, local history.
//!
//! Every wait is bounded (a line must come within a generous limit); nothing
//! asserts how fast it came.

use sotto_tests::{Client, Relay};

/// A message line without its `[time] ` prefix.
fn text(line: &str) -> String {
    assert!(line.starts_with('['), "line without a time: {line:?}");
    let close = line.find("] ").expect("time is closed by `] `");
    line[close + 2..].to_owned()
}

fn texts(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| text(l)).collect()
}

fn add_group(client: &Client, name: &str, members: &[&str]) {
    use std::io::Write;
    let path = client.home().join("contacts.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let list = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(f, "\n[groups.{name}]\nmembers = [{list}]").unwrap();
}

#[test]
fn two_clients_chat_live_through_pipes_and_keep_history() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);

    let mut a = alice.spawn(&["chat", "bob"]);
    let mut b = bob.spawn(&["chat", "alice"]);
    a.type_line("hello bob");
    assert_eq!(texts(&b.expect_lines(1)), ["alice: hello bob"]);
    // Bob's chat kept running: that line was pushed to it, not polled.
    b.type_line("hi alice, \x1b[31mred?");
    assert_eq!(texts(&a.expect_lines(1)), ["bob: hi alice, \\x1b[31mred?"]);
    a.type_line("/help");
    a.type_line("//slash");
    assert_eq!(texts(&b.expect_lines(1)), ["alice: /slash"]);

    let (ok, rest) = a.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");
    let (ok, rest) = b.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");

    // Nothing is left waiting: every message was acknowledged.
    assert_eq!(bob.run(&["inbox"]).ok(), "");
    assert_eq!(alice.run(&["inbox"]).ok(), "");

    let history = alice.run(&["history", "bob"]).ok();
    assert_eq!(
        history.lines().map(text).collect::<Vec<_>>(),
        [
            "me -> bob: hello bob",
            "bob: hi alice, \\x1b[31mred?",
            "me -> bob: /slash"
        ]
    );
    let history = bob.run(&["history", "alice"]).ok();
    assert_eq!(history.lines().count(), 3, "{history}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(alice.home().join("history.sealed"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = alice.run(&["history", "zed"]).fails();
    assert!(err.contains("unknown contact 'zed'"), "{err}");
}

#[test]
fn end_of_input_ends_the_chat_once_every_line_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);

    let run = alice.run_with_stdin(&["chat", "bob"], "one\n\ntwo\r\n/to nobody\nthree\n");
    run.ok();
    assert!(
        run.stderr().contains("unknown contact 'nobody'"),
        "{}",
        run.stderr()
    );
    let out = bob.run(&["inbox"]).ok();
    assert_eq!(
        out.lines().map(text).collect::<Vec<_>>(),
        ["alice: one", "alice: two", "alice: three"]
    );
}

#[test]
fn messages_sent_while_offline_come_first_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);

    for t in ["first", "second", "third"] {
        alice.run(&["send", "bob", t]).ok();
    }
    let b = bob.spawn(&["chat", "alice"]);
    assert_eq!(
        texts(&b.expect_lines(3)),
        ["alice: first", "alice: second", "alice: third"]
    );
    let mut a = alice.spawn(&["chat", "bob"]);
    a.type_line("fourth, live");
    assert_eq!(texts(&b.expect_lines(1)), ["alice: fourth, live"]);
    assert!(a.finish().0);
    let (ok, rest) = b.finish();
    assert!(ok && rest.is_empty(), "{rest:?}");
}

#[test]
fn a_group_message_fans_out_and_shows_the_real_sender() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    let carol = Client::new(&relay);
    // Alice knows both; bob and carol know alice but not each other.
    alice.add_contact("bob", &bob);
    alice.add_contact("carol", &carol);
    bob.add_contact("alice", &alice);
    carol.add_contact("alice", &alice);
    carol.add_contact("bob", &bob);
    add_group(&alice, "team", &["bob", "carol"]);
    add_group(&carol, "team", &["alice", "bob"]);

    let b = bob.spawn(&["chat"]);
    alice.run(&["send", "--group", "team", "hello team"]).ok();
    assert_eq!(texts(&b.expect_lines(1)), ["team/alice: hello team"]);

    let mut a = alice.spawn(&["chat", "--group", "team"]);
    a.type_line("from the chat");
    assert_eq!(texts(&b.expect_lines(1)), ["team/alice: from the chat"]);
    a.type_line("/to bob");
    a.type_line("just bob");
    assert_eq!(texts(&b.expect_lines(1)), ["alice: just bob"]);

    // Carol writes to the group: alice knows her, bob does not.
    carol.run(&["send", "--group", "team", "carol here"]).ok();
    assert_eq!(texts(&a.expect_lines(1)), ["team/carol: carol here"]);
    assert_eq!(
        texts(&b.expect_lines(1)),
        [format!("team/unknown {}: carol here", carol.key)]
    );

    let out = carol.run(&["inbox"]).ok();
    assert_eq!(
        out.lines().map(text).collect::<Vec<_>>(),
        ["team/alice: hello team", "team/alice: from the chat"]
    );
    assert!(a.finish().0);
    assert!(b.finish().0);

    let history = alice.run(&["history", "team"]).ok();
    assert_eq!(
        history.lines().map(text).collect::<Vec<_>>(),
        [
            "me -> team: hello team",
            "me -> team: from the chat",
            "team/carol: carol here"
        ]
    );
    // Sending to a group without --group says how.
    let err = alice.run(&["send", "team", "x"]).fails();
    assert!(err.contains("sotto send --group team"), "{err}");
    let err = alice.run(&["send", "--group", "bob", "x"]).fails();
    assert!(err.contains("is a contact, not a group"), "{err}");
}

#[test]
fn a_relay_restart_mid_chat_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);

    let mut a = alice.spawn(&["chat", "bob"]);
    let mut b = bob.spawn(&["chat", "alice"]);
    a.type_line("before");
    assert_eq!(texts(&b.expect_lines(1)), ["alice: before"]);

    relay.kill();
    // Typed while the relay is down: kept and sent after reconnecting.
    a.type_line("during one");
    a.type_line("during two");
    b.type_line("bob during");
    relay.restart();

    assert_eq!(
        texts(&b.expect_lines(2)),
        ["alice: during one", "alice: during two"]
    );
    assert_eq!(texts(&a.expect_lines(1)), ["bob: bob during"]);
    a.type_line("after");
    assert_eq!(texts(&b.expect_lines(1)), ["alice: after"]);

    let (ok, rest) = a.finish();
    assert!(ok && rest.is_empty(), "alice saw more: {rest:?}");
    let (ok, rest) = b.finish();
    assert!(ok && rest.is_empty(), "bob saw more: {rest:?}");
    // Nothing comes back later either.
    assert_eq!(bob.run(&["inbox"]).ok(), "");
    assert_eq!(alice.run(&["inbox"]).ok(), "");
}

#[test]
fn a_message_from_a_stranger_is_shown_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let mallory = Client::new(&relay);
    mallory.add_contact("bob", &bob);

    let b = bob.spawn(&["chat", "alice"]);
    mallory.run(&["send", "bob", "i am alice, honest"]).ok();
    assert_eq!(
        texts(&b.expect_lines(1)),
        [format!("unknown {}: i am alice, honest", mallory.key)]
    );
    alice.run(&["send", "bob", "the real alice"]).ok();
    assert_eq!(texts(&b.expect_lines(1)), ["alice: the real alice"]);
    let stderr = b.stderr();
    assert!(
        stderr.contains(&format!("sotto contact add NAME {}", mallory.key)),
        "{stderr}"
    );
    assert!(b.finish().0);
}

#[test]
fn a_chat_with_no_relay_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, _bob) = Client::pair(&relay);
    relay.kill();
    let err = alice.run_with_stdin(&["chat", "bob"], "hello\n").fails();
    assert!(err.contains("cannot reach the relay"), "{err}");
    let err = alice.run(&["chat", "nobody"]).fails();
    assert!(err.contains("unknown contact 'nobody'"), "{err}");
}

#[test]
fn three_live_chats_in_a_group_each_see_the_other_two() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let people = [
        ("alice", Client::new(&relay)),
        ("bob", Client::new(&relay)),
        ("carol", Client::new(&relay)),
    ];
    for (me, client) in &people {
        let others: Vec<&str> = people
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| name != me)
            .collect();
        for (name, other) in people.iter().filter(|(name, _)| name != me) {
            client.add_contact(name, other);
        }
        add_group(client, "trio", &others);
    }
    let mut live: Vec<_> = people
        .iter()
        .map(|(_, c)| c.spawn(&["chat", "--group", "trio"]))
        .collect();
    // Each writes once the other two are listening (presence says so).
    for l in &live {
        l.wait_stderr("is online", 2);
    }
    for ((name, _), l) in people.iter().zip(&mut live) {
        l.type_line(&format!("{name} says hi"));
    }
    for ((me, _), l) in people.iter().zip(&live) {
        let mut got = texts(&l.expect_lines(2));
        got.sort();
        let mut want: Vec<String> = people
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| name != me)
            .map(|name| format!("trio/{name}: {name} says hi"))
            .collect();
        want.sort();
        assert_eq!(got, want, "what {me} saw");
    }
    for l in live {
        assert!(l.finish().0);
    }
}
