//! `sotto pair`: two people who share a short spoken code become each
//! other's contacts through a rendezvous slot on the inviter's relay, and a
//! wrong code, an expired one or a relay that lies fails on both sides with
//! nothing saved.

mod rogue;

use rogue::{Lie, Rogue};
use sotto_tests::{Client, Live, Relay};
use tempfile::TempDir;

const MISMATCH: &str =
    "sotto: error: the code did not match: wrong code, or someone interfered; nothing was saved";
const NO_SUCH_CODE: &str = "sotto: error: no such code on this relay (expired or already used)";

fn relay(config: Option<&str>) -> (TempDir, Relay) {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = Relay::start(&dir.path().join("data"), config);
    (dir, relay)
}

/// `sotto pair NAME` left running, and the code on its first stdout line.
fn invite(inviter: &Client, name: &str) -> (Live, String) {
    let live = inviter.spawn(&["pair", name]);
    let code = live.expect_lines(1).remove(0);
    (live, code)
}

/// The inviter's end, once `needle` is on its stderr: whether it
/// succeeded, and its stderr.
fn end(live: Live, needle: &str) -> (bool, String) {
    let said = live.wait_stderr(needle, 1);
    let (ok, rest) = live.finish();
    assert!(rest.is_empty(), "only the code goes to stdout: {rest:?}");
    (ok, said)
}

fn contacts(c: &Client) -> String {
    std::fs::read_to_string(c.home().join("contacts.toml")).unwrap_or_default()
}

/// An empty home: a fresh client with no identity, configured by `init`
/// alone against `addr`/`key` when both are given.
fn client_on(addr: &str, key: &str) -> Client {
    let c = Client::uninit();
    c.run(&["init", "--relay", addr, "--relay-key", key]).ok();
    c
}

#[test]
fn the_right_code_pairs_both_sides_and_a_message_goes_both_ways() {
    let (_dir, relay) = relay(None);
    let alice = Client::new(&relay);
    // Bob has nothing yet: no identity, no relay.
    let bob = Client::uninit();

    let (live, code) = invite(&alice, "bob");
    let words: Vec<&str> = code.split('-').collect();
    assert_eq!(words.len(), 3, "{code}");
    assert!(words[0].parse::<u32>().is_ok(), "{code}");

    let joined = bob.run(&["pair", "alice", &code, "--relay", &relay.addr]);
    joined.ok();
    let said = joined.stderr();
    assert!(said.contains("created a new identity"), "{said}");
    assert!(said.contains("added alice"), "{said}");
    assert!(
        said.contains(&format!("relay pinned: {} {}", relay.addr, relay.key)),
        "{said}"
    );
    let (ok, inviter_said) = end(live, "added bob");
    assert!(ok, "{inviter_said}");
    assert!(inviter_said.contains("added bob"), "{inviter_said}");

    let bob_key = bob
        .run(&["id"])
        .ok()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let listed = alice.run(&["contact", "list"]).ok();
    assert!(
        listed.contains(&bob_key) && listed.contains("paired"),
        "{listed}"
    );
    let listed = bob.run(&["contact", "list"]).ok();
    assert!(
        listed.contains(&alice.key) && listed.contains("paired"),
        "{listed}"
    );
    assert!(contacts(&bob).contains("paired = true"));

    alice.run(&["send", "bob", "hello bob"]).ok();
    assert!(bob.run(&["inbox"]).ok().contains("alice: hello bob"));
    bob.run(&["send", "alice", "hello alice"]).ok();
    assert!(alice.run(&["inbox"]).ok().contains("bob: hello alice"));

    // A name already taken is refused before any code is made.
    let again = alice.run(&["pair", "bob"]);
    assert_eq!(
        again.fails(),
        "sotto: error: bob is already a contact; pair under another name, or run `sotto contact remove bob` first"
    );
    assert!(again.stdout().is_empty());
}

#[test]
fn a_wrong_code_fails_on_both_sides_saves_nothing_and_spends_the_slot() {
    let (_dir, relay) = relay(None);
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    let (live, code) = invite(&alice, "bob");
    let slot = code.split('-').next().unwrap_or_default();
    let wrong = if code.ends_with("-adviser") {
        format!("{slot}-acme-aftermath")
    } else {
        format!("{slot}-acme-adviser")
    };

    assert_eq!(bob.run(&["pair", "alice", &wrong]).fails(), MISMATCH);
    let (ok, inviter_said) = end(live, "sotto: error:");
    assert!(!ok, "{inviter_said}");
    assert!(
        inviter_said.trim_end().ends_with(MISMATCH),
        "{inviter_said}"
    );
    assert!(
        !contacts(&alice).contains("[contacts."),
        "{}",
        contacts(&alice)
    );
    assert!(!contacts(&bob).contains("[contacts."), "{}", contacts(&bob));

    // The slot took its one join: the right code now finds nothing.
    assert_eq!(bob.run(&["pair", "alice", &code]).fails(), NO_SUCH_CODE);
    assert!(!contacts(&bob).contains("[contacts."));
}

#[test]
fn an_expired_code_is_given_up_by_the_inviter_and_unknown_to_the_joiner() {
    let (_dir, relay) = relay(Some("[pairing]\nslot_expiry = \"1s\"\n"));
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    let (live, code) = invite(&alice, "bob");
    let (ok, inviter_said) = end(live, "sotto: error:");
    assert!(!ok);
    assert!(
        inviter_said.trim_end().ends_with(
            "sotto: error: nobody used the code within 1 s, and it has expired; nothing was saved (run `sotto pair NAME` again for a new code)"
        ),
        "{inviter_said}"
    );
    assert_eq!(bob.run(&["pair", "alice", &code]).fails(), NO_SUCH_CODE);
    assert!(!contacts(&alice).contains("[contacts."));
}

#[test]
fn a_relay_that_alters_a_pake_message_is_caught_on_both_sides() {
    // The control: the same rendezvous, honest, pairs them.
    let honest = Rogue::start(Lie::None);
    let alice = client_on(&honest.addr, &honest.key);
    let bob = client_on(&honest.addr, &honest.key);
    let (live, code) = invite(&alice, "bob");
    bob.run(&["pair", "alice", &code]).ok();
    assert!(end(live, "added bob").0);
    assert!(contacts(&alice).contains("paired = true"));

    let rogue = Rogue::start(Lie::AlterPake);
    let alice = client_on(&rogue.addr, &rogue.key);
    let bob = client_on(&rogue.addr, &rogue.key);
    let (live, code) = invite(&alice, "bob");
    assert_eq!(bob.run(&["pair", "alice", &code]).fails(), MISMATCH);
    let (ok, inviter_said) = end(live, "sotto: error:");
    assert!(!ok);
    assert!(
        inviter_said.trim_end().ends_with(MISMATCH),
        "{inviter_said}"
    );
    assert!(!contacts(&alice).contains("[contacts."));
    assert!(!contacts(&bob).contains("[contacts."));
}

#[test]
fn a_joiner_refuses_a_relay_that_proves_another_key_than_the_inviters() {
    let rogue = Rogue::start(Lie::OtherKey);
    let alice = client_on(&rogue.addr, &rogue.key);
    let bob = Client::uninit();
    let (live, code) = invite(&alice, "bob");
    let joined = bob.run(&["pair", "alice", &code, "--relay", &rogue.addr]);
    assert!(!joined.out.status.success());
    let said = joined.stderr();
    assert!(
        said.trim_end().ends_with(&format!(
            "sotto: error: the relay at {} presented another key than your contact's; nothing was saved",
            rogue.addr
        )),
        "{said}"
    );
    let (ok, inviter_said) = end(live, "sotto: error:");
    assert!(!ok);
    assert!(
        inviter_said.trim_end().ends_with(MISMATCH),
        "{inviter_said}"
    );
    assert!(!contacts(&alice).contains("[contacts."));
    assert!(!contacts(&bob).contains("[contacts."));
    // Bob's empty home stays empty: no identity, no relay pinned.
    assert!(!bob.home().join("identity.key").exists());
    assert!(!bob.home().join("config.toml").exists());
}
