//! The command-line contract: identities, contacts, invites, safety numbers,
//! and one clear line on stderr for every error a user can run into.

use std::os::unix::fs::PermissionsExt;

use sotto_tests::{Client, Relay};

fn relay() -> (tempfile::TempDir, Relay) {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    (dir, relay)
}

#[test]
fn id_prints_the_key_first_and_init_refuses_to_overwrite() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let key_file = alice.home().join("identity.key");
    let before = std::fs::read(&key_file).unwrap();
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let err = alice
        .run(&["init", "--relay", &relay.addr, "--relay-key", &relay.key])
        .fails();
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&key_file).unwrap(), before);
    assert_eq!(alice.run(&["id"]).ok().lines().next().unwrap(), alice.key);
}

#[test]
fn commands_without_an_identity_say_to_run_init() {
    let nobody = Client::uninit();
    let err = nobody.run(&["send", "bob", "hi"]).fails();
    assert!(err.contains("sotto init"), "{err}");
    let err = nobody.run(&["id"]).fails();
    assert!(err.contains("sotto init"), "{err}");
}

#[test]
fn unknown_contact_is_refused_with_the_fix() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let err = alice.run(&["send", "nobody", "hi"]).fails();
    assert!(err.contains("nobody"), "{err}");
    assert!(err.contains("contact add"), "{err}");
}

#[test]
fn a_contact_key_with_a_typo_is_refused() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    let mut typo: Vec<char> = bob.key.chars().collect();
    let i = typo.len() - 8;
    typo[i] = if typo[i] == 'q' { 'p' } else { 'q' };
    let typo: String = typo.into_iter().collect();
    alice.run(&["contact", "add", "bob", &typo]).fails();
    alice.run(&["contact", "add", "bob", &relay.key]).fails();
    assert!(!alice.run(&["contact", "list"]).ok().contains("bob"));
}

#[test]
fn an_unreachable_relay_is_reported_in_one_line() {
    let (_d, relay) = relay();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let alice = Client::uninit();
    alice
        .run(&["init", "--relay", &addr, "--relay-key", &relay.key])
        .ok();
    alice
        .run(&[
            "contact",
            "add",
            "me",
            alice.run(&["id"]).ok().lines().next().unwrap(),
        ])
        .ok();
    let err = alice.run(&["send", "me", "hi"]).fails();
    assert!(err.contains("cannot reach the relay"), "{err}");
}

#[test]
fn a_relay_with_another_key_is_a_loud_error_and_is_never_re_pinned() {
    let (_d, relay) = relay();
    let dir2 = tempfile::tempdir().unwrap();
    let other = Relay::start(&dir2.path().join("relay"), None);
    let alice = Client::uninit();
    // The address of one relay, the key of another.
    alice
        .run(&["init", "--relay", &relay.addr, "--relay-key", &other.key])
        .ok();
    let config = std::fs::read_to_string(alice.home().join("config.toml")).unwrap();
    let me = alice.run(&["id"]).ok().lines().next().unwrap().to_owned();
    alice.run(&["contact", "add", "me", &me]).ok();
    let err = alice.run(&["send", "me", "hi"]).fails();
    assert!(err.contains("mismatch"), "{err}");
    assert!(
        err.contains(&relay.key) && err.contains(&other.key),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(alice.home().join("config.toml")).unwrap(),
        config,
        "the client must not re-pin silently"
    );
}

#[test]
fn a_full_mailbox_gives_the_sender_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        Some("[mailbox]\nmax_messages = 2\n"),
    );
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    alice.add_contact("bob", &bob);
    alice.run(&["send", "bob", "one"]).ok();
    alice.run(&["send", "bob", "two"]).ok();
    let err = alice.run(&["send", "bob", "three"]).fails();
    assert!(err.contains("full"), "{err}");
    // Reading frees the mailbox.
    bob.run(&["inbox"]).ok();
    alice.run(&["send", "bob", "three"]).ok();
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let key_file = alice.home().join("identity.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = alice.run(&["id"]).fails();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn a_passphrase_protected_identity_needs_its_passphrase() {
    let (_d, relay) = relay();
    let alice = Client::with_env(
        &relay,
        &[("SOTTO_PASSPHRASE", "correct horse battery staple")],
    );
    let text = std::fs::read_to_string(alice.home().join("identity.key")).unwrap();
    assert!(text.contains("SOTTO-ENCRYPTED-KEY-1"), "{text}");
    assert!(!text.contains("SOTTO-SECRET-KEY-1"));

    let mut locked = Client::uninit();
    std::fs::remove_dir(locked.home()).ok();
    copy_dir(alice.home(), locked.home());
    let err = locked.run(&["id", "--invite"]).fails();
    assert!(err.contains("SOTTO_PASSPHRASE"), "{err}");
    locked.env = vec![("SOTTO_PASSPHRASE".into(), "wrong".into())];
    let err = locked.run(&["id", "--invite"]).fails();
    assert!(err.contains("wrong passphrase"), "{err}");

    let pass_file = locked.home().join("pass.txt");
    std::fs::write(&pass_file, "correct horse battery staple\n").unwrap();
    locked.env.clear();
    let out = locked
        .run(&[
            "--passphrase-file",
            pass_file.to_str().unwrap(),
            "id",
            "--invite",
        ])
        .ok();
    assert_eq!(out.lines().next().unwrap(), alice.key);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if entry.path().is_file() {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn an_invite_makes_a_contact_and_both_sides_see_the_same_safety_number() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    let out = alice.run(&["id", "--invite"]).ok();
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap(), alice.key);
    let invite = lines.next().expect("the invite on the second line");
    bob.run(&["contact", "add", "alice", invite]).ok();
    alice.add_contact("bob", &bob);

    let list = bob.run(&["contact", "list"]).ok();
    assert!(
        list.contains("alice") && list.contains(&alice.key),
        "{list}"
    );

    let digits = |s: String| -> String {
        s.lines()
            .filter(|l| {
                let t: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                t.len() == 60 && t.chars().all(|c| c.is_ascii_digit())
            })
            .collect()
    };
    let a = digits(alice.run(&["contact", "verify", "bob"]).ok());
    let b = digits(bob.run(&["contact", "verify", "alice"]).ok());
    assert!(!a.is_empty(), "verify prints a 60-digit safety number");
    assert_eq!(a, b);

    bob.run(&["send", "alice", "via invite"]).ok();
    assert!(alice.run(&["inbox"]).ok().contains("bob: via invite"));

    bob.run(&["contact", "remove", "alice"]).ok();
    assert!(!bob.run(&["contact", "list"]).ok().contains("alice"));
}

#[test]
fn a_private_relay_serves_its_allow_list_and_tells_everyone_else_why_not() {
    let dir = tempfile::tempdir().unwrap();
    // Start once to learn a client key, then restart with the allow-list.
    let mut relay = Relay::start(&dir.path().join("relay"), None);
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    alice.add_contact("bob", &bob);
    bob.add_contact("alice", &alice);
    relay.kill();
    let relay = Relay::start(
        &dir.path().join("relay"),
        Some(&format!("allow = [\"{}\"]\n", alice.key)),
    );
    let port = relay.port().to_string();
    for c in [&alice, &bob] {
        c.run(&["relay", "set", &format!("127.0.0.1:{port}"), &relay.key])
            .ok();
    }
    alice.run(&["send", "bob", "alice is allowed"]).ok();
    let err = bob.run(&["send", "alice", "bob is not"]).fails();
    assert!(err.contains("private"), "{err}");
    let err = bob.run(&["inbox"]).fails();
    assert!(err.contains("private"), "{err}");
}

#[test]
fn the_largest_text_that_fits_in_one_envelope_goes_through() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    alice.add_contact("bob", &bob);
    bob.add_contact("alice", &alice);
    let long = "x".repeat(65_000);
    alice.run_with_stdin(&["send", "bob", "-"], &long).ok();
    let out = bob.run(&["inbox"]).ok();
    assert!(out.trim_end().ends_with(&format!("alice: {long}")));
    let too_long = "x".repeat(70_000);
    let err = alice
        .run_with_stdin(&["send", "bob", "-"], &too_long)
        .fails();
    assert!(err.contains("too long"), "{err}");
}
