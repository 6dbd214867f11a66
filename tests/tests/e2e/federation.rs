//! Each person on the relay of their choice: alice on A, bob on B, carol on
//! C. Messages go to the recipient's relay over delivery links, so a relay
//! never learns who delivered.

use sotto_tests::{contains, files_under, Client, Relay, Run};
use tempfile::TempDir;

/// What a command that succeeded said on stderr.
fn said(run: Run) -> String {
    run.ok();
    run.stderr()
}

/// Line 2 of `sotto id --invite`: key, relay, relay key and token.
fn invite(c: &Client) -> String {
    let out = c.run(&["id", "--invite"]).ok();
    out.lines()
        .find(|l| l.starts_with("sottoinvite1"))
        .unwrap_or_else(|| panic!("no invite in {out:?}"))
        .to_owned()
}

/// `a` and `b` add each other from their invites.
fn introduce(a: &Client, a_name: &str, b: &Client, b_name: &str) {
    a.run(&["contact", "add", b_name, &invite(b)]).ok();
    b.run(&["contact", "add", a_name, &invite(a)]).ok();
}

/// Every encoding of a key string that could end up on a relay's disk or
/// in its log: bech32 as shown, raw bytes, hex.
fn encodings(key: &str) -> Vec<Vec<u8>> {
    let parsed: sotto_keys::PublicKey = key.parse().expect("a key");
    let raw = parsed.as_bytes().to_vec();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    vec![key.as_bytes().to_vec(), raw, hex.into_bytes()]
}

fn holds_any(hay: &[u8], needles: &[Vec<u8>]) -> bool {
    needles.iter().any(|n| contains(hay, n))
}

/// Adds a group to `c`'s contacts.toml, as a person would.
fn add_group(c: &Client, name: &str, members: &[&str]) {
    use std::io::Write;
    let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(c.home().join("contacts.toml"))
        .expect("contacts.toml");
    writeln!(f, "\n[groups.{name}]\nmembers = [{}]", list.join(", ")).expect("write");
}

/// `c`'s inbox, read until it shows `needle` (or a minute has passed: a
/// guard against a hang, not a timing assertion); everything it showed.
fn inbox_until(c: &Client, needle: &str) -> String {
    let mut all = String::new();
    for _ in 0..300 {
        all.push_str(&c.run(&["inbox"]).ok());
        if all.contains(needle) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    all
}

struct World {
    _dirs: Vec<TempDir>,
    relays: Vec<Relay>,
}

fn relays(n: usize) -> World {
    let mut dirs = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().expect("temp dir");
        relays.push(Relay::start_logging(&dir.path().join("data"), "debug"));
        dirs.push(dir);
    }
    World {
        _dirs: dirs,
        relays,
    }
}

#[test]
fn offline_messages_cross_relays_both_ways_and_no_relay_learns_the_sender() {
    let mut w = relays(2);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    introduce(&alice, "alice", &bob, "bob");

    let sent = said(alice.run(&["send", "bob", "hello from A"]));
    assert!(sent.contains("sent to bob"), "{sent}");
    let got = bob.run(&["inbox"]).ok();
    assert!(got.contains("alice: hello from A"), "{got}");

    let sent = said(bob.run(&["send", "alice", "hello from B"]));
    assert!(sent.contains("sent to alice"), "{sent}");
    let got = alice.run(&["inbox"]).ok();
    assert!(got.contains("bob: hello from B"), "{got}");

    // A second round, now on sessions.
    alice.run(&["send", "bob", "second"]).ok();
    assert!(bob.run(&["inbox"]).ok().contains("alice: second"));

    let (_, a_log) = w.relays[0].terminate();
    let (_, b_log) = w.relays[1].terminate();
    assert!(b_log.contains("DEBUG"), "relay B logs at debug level");
    let alice_keys = encodings(&alice.key);
    let bob_keys = encodings(&bob.key);
    for (path, bytes) in files_under(&w.relays[1].data) {
        assert!(
            !holds_any(&bytes, &alice_keys),
            "relay B's {} holds alice's key",
            path.display()
        );
    }
    assert!(
        !holds_any(b_log.as_bytes(), &alice_keys),
        "relay B's log names alice"
    );
    for (path, bytes) in files_under(&w.relays[0].data) {
        assert!(
            !holds_any(&bytes, &bob_keys),
            "relay A's {} holds bob's key",
            path.display()
        );
    }
    assert!(
        !holds_any(a_log.as_bytes(), &bob_keys),
        "relay A's log names bob"
    );
}

#[test]
fn a_delivery_with_a_wrong_token_is_refused_with_a_clear_error() {
    let w = relays(2);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    introduce(&alice, "alice", &bob, "bob");
    // Bob registers his token by reading his mailbox once.
    bob.run(&["inbox"]).ok();
    // Alice's copy of bob's token is replaced by another one.
    let wrong = "sottotoken1qvpsxqcrqvpsxqcrqvpsxqcrqvmn0lax";
    alice.run(&["contact", "remove", "bob"]).ok();
    alice
        .run(&[
            "contact",
            "add",
            "bob",
            &bob.key,
            "--relay",
            &w.relays[1].addr,
            "--relay-key",
            &w.relays[1].key,
            "--token",
            wrong,
        ])
        .ok();
    let err = alice.run(&["send", "bob", "x"]).fails();
    assert!(err.contains("token"), "{err}");
    assert!(!bob.run(&["inbox"]).ok().contains("alice: x"));
}

#[test]
fn a_group_spans_three_relays() {
    let w = relays(3);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    let carol = Client::new(&w.relays[2]);
    introduce(&alice, "alice", &bob, "bob");
    introduce(&alice, "alice", &carol, "carol");
    introduce(&bob, "bob", &carol, "carol");
    add_group(&alice, "team", &["bob", "carol"]);
    let sent = said(alice.run(&["send", "--group", "team", "hi team"]));
    assert!(sent.contains("for each member"), "{sent}");
    for c in [&bob, &carol] {
        let got = c.run(&["inbox"]).ok();
        assert!(got.contains("team/alice: hi team"), "{got}");
    }
}

#[test]
fn a_file_upload_to_another_relay_cut_mid_way_resumes() {
    use sotto_tests::proxy::{OnLimit, Proxy};
    let w = relays(2);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    introduce(&alice, "alice", &bob, "bob");
    // Alice reaches bob's relay through a proxy that cuts the upload.
    let proxy = Proxy::start(&w.relays[1].addr);
    let contacts = alice.home().join("contacts.toml");
    let text = std::fs::read_to_string(&contacts).unwrap();
    std::fs::write(&contacts, text.replace(&w.relays[1].addr, &proxy.addr)).unwrap();
    let data: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 253) as u8).collect();
    let src = alice.home().join("big.bin");
    std::fs::write(&src, &data).unwrap();
    proxy.limit(24 << 20, OnLimit::Cut);
    let first = alice.run(&["send-file", "bob", src.to_str().unwrap()]);
    assert!(!first.out.status.success(), "the cut upload must fail");
    proxy.unlimited();
    let again = said(alice.run(&["send-file", "bob", src.to_str().unwrap()]));
    assert!(again.contains("resuming"), "{again}");
    let out = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    assert!(std::fs::read(out.path().join("big.bin")).unwrap() == data);
}

#[test]
fn a_file_crosses_relays_byte_exact() {
    let w = relays(2);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    introduce(&alice, "alice", &bob, "bob");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = alice.home().join("photo.bin");
    std::fs::write(&src, &data).unwrap();
    alice.run(&["send-file", "bob", src.to_str().unwrap()]).ok();
    let out = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read(out.path().join("photo.bin")).unwrap(), data);
    let alice_keys = encodings(&alice.key);
    for (path, bytes) in files_under(&w.relays[1].data) {
        assert!(
            !holds_any(&bytes, &alice_keys),
            "relay B's {} holds alice's key",
            path.display()
        );
    }
}

#[test]
fn a_chat_goes_on_with_carol_while_bobs_relay_is_down_and_bob_gets_his_later() {
    let mut w = relays(3);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    let carol = Client::new(&w.relays[2]);
    introduce(&alice, "alice", &bob, "bob");
    introduce(&alice, "alice", &carol, "carol");
    add_group(&alice, "both", &["bob", "carol"]);
    // Sessions and tokens in place first.
    alice.run(&["send", "--group", "both", "warm up"]).ok();
    bob.run(&["inbox"]).ok();
    carol.run(&["inbox"]).ok();

    w.relays[1].kill();
    let mut chat = alice.spawn(&["chat", "--plain", "--group", "both"]);
    chat.type_line("while B is down");
    // Carol gets it although bob's relay is down.
    let got = inbox_until(&carol, "both/alice: while B is down");
    assert!(got.contains("both/alice: while B is down"), "{got}");
    chat.wait_stderr("messages to bob wait", 1);
    w.relays[1].restart();
    chat.wait_stderr("reached bob's relay", 1);
    chat.close_stdin();
    let (ok, _) = chat.finish();
    assert!(ok, "the chat ended cleanly");
    let got = inbox_until(&bob, "both/alice: while B is down");
    assert_eq!(
        got.matches("both/alice: while B is down").count(),
        1,
        "once: {got}"
    );
}

#[test]
fn a_send_to_a_relay_that_is_down_fails_and_sending_again_shows_it_once() {
    let mut w = relays(2);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    introduce(&alice, "alice", &bob, "bob");
    w.relays[1].kill();
    let err = alice.run(&["send", "bob", "try once"]).fails();
    assert!(err.contains("send it again"), "{err}");
    w.relays[1].restart();
    alice.run(&["send", "bob", "try once"]).ok();
    let got = bob.run(&["inbox"]).ok();
    assert_eq!(got.matches("alice: try once").count(), 1, "{got}");
}

#[test]
fn a_group_send_with_one_relay_down_keeps_the_rest_and_delivers_it_next_time() {
    let mut w = relays(3);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    let carol = Client::new(&w.relays[2]);
    introduce(&alice, "alice", &bob, "bob");
    introduce(&alice, "alice", &carol, "carol");
    add_group(&alice, "both", &["bob", "carol"]);
    w.relays[1].kill();
    let err = alice.run(&["send", "--group", "both", "for both"]).fails();
    assert!(err.contains("stored for 1 of 2"), "{err}");
    assert!(err.contains("do not send it again"), "{err}");
    w.relays[1].restart();
    let out = said(alice.run(&["send", "carol", "and this"]));
    assert!(out.contains("delivered 1 message(s) kept"), "{out}");
    for c in [&bob, &carol] {
        let got = c.run(&["inbox"]).ok();
        assert_eq!(got.matches("both/alice: for both").count(), 1, "{got}");
    }
}

#[test]
fn a_live_chat_across_relays_shows_presence_and_receipts() {
    let w = relays(2);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    introduce(&alice, "alice", &bob, "bob");
    let mut a = alice.spawn(&["chat", "--plain", "bob"]);
    a.wait_stderr("connected", 1);
    let mut b = bob.spawn(&["chat", "--plain", "alice"]);
    // Each is told the other is online, each notice through the other's relay.
    b.wait_stderr("sotto: alice is online", 1);
    a.wait_stderr("sotto: bob is online", 1);
    a.type_line("across relays");
    let line = b.next_line(std::time::Duration::from_secs(60));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.ends_with("alice: across relays")),
        "{line:?}"
    );
    // Stored on B, then read by bob: both said to alice.
    a.wait_stderr("bob: stored \"across relays\"", 1);
    a.wait_stderr("bob: read \"across relays\"", 1);
    b.type_line("and back");
    let line = a.next_line(std::time::Duration::from_secs(60));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.ends_with("bob: and back")),
        "{line:?}"
    );
    b.close_stdin();
    assert!(b.finish().0);
    a.wait_stderr("sotto: bob went offline", 1);
    a.close_stdin();
    assert!(a.finish().0);
}

#[test]
fn bob_moves_to_another_relay_and_nothing_in_flight_is_lost() {
    let w = relays(3);
    let (a_relay, b_relay, d_relay) = (&w.relays[0], &w.relays[1], &w.relays[2]);
    let alice = Client::new(a_relay);
    let bob = Client::new(b_relay);
    introduce(&alice, "alice", &bob, "bob");
    alice.run(&["send", "bob", "before the move"]).ok();
    assert!(bob.run(&["inbox"]).ok().contains("alice: before the move"));

    let moved = said(bob.run(&["relay", "set", &d_relay.addr, &d_relay.key]));
    assert!(moved.contains("told 1 contact(s)"), "{moved}");
    // Alice has not read bob's notice yet: this one goes to B.
    alice.run(&["send", "bob", "in flight to B"]).ok();
    let read = alice.run(&["inbox"]);
    let told = read.stderr();
    read.ok();
    assert!(
        told.contains(&format!("bob now reads from the relay at {}", d_relay.addr)),
        "{told}"
    );
    let contacts = std::fs::read_to_string(alice.home().join("contacts.toml")).unwrap();
    assert!(contacts.contains(&d_relay.key), "{contacts}");
    alice.run(&["send", "bob", "after the move"]).ok();

    // Bob reads D and, until it is empty, B: both arrive, once each.
    let got = inbox_until(&bob, "after the move");
    let got = got + &bob.run(&["inbox"]).ok();
    assert_eq!(got.matches("alice: in flight to B").count(), 1, "{got}");
    assert_eq!(got.matches("alice: after the move").count(), 1, "{got}");
    let config = std::fs::read_to_string(bob.home().join("config.toml")).unwrap();
    assert!(
        !config.contains(&b_relay.addr),
        "B is dropped once empty: {config}"
    );
}

#[test]
fn a_rotated_token_reaches_contacts_and_shuts_out_old_copies() {
    let dir = tempfile::tempdir().unwrap();
    let a_relay = Relay::start(
        &dir.path().join("a"),
        Some("[delivery]\ntoken_grace = \"0s\"\n"),
    );
    let w = relays(1);
    let alice = Client::new(&a_relay);
    let bob = Client::new(&w.relays[0]);
    let mallory = Client::new(&w.relays[0]);
    introduce(&alice, "alice", &bob, "bob");
    // Mallory got alice's invite somewhere she should not have.
    mallory
        .run(&["contact", "add", "alice", &invite(&alice)])
        .ok();
    alice.run(&["inbox"]).ok(); // registers the first token
    mallory
        .run(&["send", "alice", "with the leaked token"])
        .ok();

    let rotated = said(alice.run(&["token", "rotate"]));
    assert!(rotated.contains("told 1 contact(s)"), "{rotated}");
    bob.run(&["inbox"]).ok(); // takes alice's new token
    bob.run(&["send", "alice", "with the new token"]).ok();
    let err = mallory.run(&["send", "alice", "leaked again"]).fails();
    assert!(err.contains("delivery token has changed"), "{err}");
    let got = alice.run(&["inbox"]).ok();
    assert!(got.contains("bob: with the new token"), "{got}");
    assert!(!got.contains("leaked again"), "{got}");
}

#[test]
fn a_chat_after_a_move_shows_what_waited_on_the_old_relay() {
    let w = relays(3);
    let (b_relay, d_relay) = (&w.relays[1], &w.relays[2]);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(b_relay);
    introduce(&alice, "alice", &bob, "bob");
    bob.run(&["relay", "set", &d_relay.addr, &d_relay.key]).ok();
    // Alice has not read bob's notice: this goes to B.
    alice.run(&["send", "bob", "waiting on B"]).ok();
    let mut chat = bob.spawn(&["chat", "--plain", "alice"]);
    let line = chat.next_line(std::time::Duration::from_secs(60));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.ends_with("alice: waiting on B")),
        "{line:?}"
    );
    chat.close_stdin();
    assert!(chat.finish().0);
}

#[test]
fn a_mailbox_can_refuse_first_contacts_and_still_hear_from_contacts() {
    let w = relays(2);
    let alice = Client::new(&w.relays[0]);
    let bob = Client::new(&w.relays[1]);
    let stranger = Client::new(&w.relays[0]);
    introduce(&alice, "alice", &bob, "bob");
    // A stranger who has only bob's key, and his relay from somewhere.
    stranger
        .run(&[
            "contact",
            "add",
            "bob",
            &bob.key,
            "--relay",
            &w.relays[1].addr,
            "--relay-key",
            &w.relays[1].key,
        ])
        .ok();
    let config = bob.home().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}first_contact = false\n")).unwrap();
    bob.run(&["inbox"]).ok(); // registers the policy with the token
    let err = stranger
        .run(&["send", "bob", "hello, stranger here"])
        .fails();
    assert!(err.contains("only from contacts"), "{err}");
    alice.run(&["send", "bob", "from a contact"]).ok();
    let got = bob.run(&["inbox"]).ok();
    assert!(got.contains("alice: from a contact"), "{got}");
    assert!(!got.contains("stranger here"), "{got}");
}
