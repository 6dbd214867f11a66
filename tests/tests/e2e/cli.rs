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
        // The first message to bob is preceded by where to reach alice.
        Some("[mailbox]\nmax_messages = 3\n"),
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
    // The allow-list bounds who owns a mailbox here, not who delivers:
    // bob's delivery link proves no key, so his message reaches alice...
    bob.run(&["send", "alice", "bob delivers"]).ok();
    assert!(alice.run(&["inbox"]).ok().contains("bob: bob delivers"));
    // ...but he cannot read a mailbox of his own here.
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

/// `relay`, `relay_key` and `token` of a contact, as a home's contacts.toml
/// holds them (the delivery's, or a relay noted alone).
fn contact_field(client: &Client, name: &str, field: &str) -> Option<String> {
    let book = sotto_keys::ContactBook::load(&client.home().join("contacts.toml")).unwrap();
    let contact = book.get(name).unwrap();
    let delivery = contact.delivery();
    match field {
        "relay" => contact.relay.as_ref().map(ToString::to_string),
        "relay_key" => delivery.map(|d| d.relay_key.to_string()),
        "token" => delivery
            .and_then(|d| d.token.as_ref())
            .map(ToString::to_string),
        other => panic!("{other}"),
    }
}

fn token_file(client: &Client) -> sotto_keys::DeliveryToken {
    let path = client.home().join("delivery.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    line.parse().unwrap()
}

#[test]
fn an_invite_carries_my_relay_its_key_and_my_token_into_contact_add() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    let token = token_file(&alice);

    let out = alice.run(&["id", "--invite"]).ok();
    let invite: sotto_keys::Invite = out.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(invite.key.to_string(), alice.key);
    assert_eq!(invite.relay.to_string(), relay.addr);
    assert_eq!(invite.relay_key.to_string(), relay.key);
    assert_eq!(invite.token.as_ref(), Some(&token));
    // The token is handed out only inside the invite, never on its own.
    assert!(!out.contains(&token.to_string()));
    assert_eq!(
        alice.run(&["id", "--invite"]).ok(),
        out,
        "the same token each time"
    );

    bob.run(&["contact", "add", "alice", &invite.to_string()])
        .ok();
    assert_eq!(
        contact_field(&bob, "alice", "relay"),
        Some(relay.addr.clone())
    );
    assert_eq!(
        contact_field(&bob, "alice", "relay_key"),
        Some(relay.key.clone())
    );
    assert_eq!(
        contact_field(&bob, "alice", "token"),
        Some(token.to_string())
    );
    let list = bob.run(&["contact", "list"]).ok();
    let line = list.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(line.ends_with(&format!("  {}", relay.addr)), "{list}");

    // A rotated token is what the next invite carries.
    alice.run(&["token", "rotate"]).ok();
    let rotated = token_file(&alice);
    assert_ne!(rotated, token);
    let out = alice.run(&["id", "--invite"]).ok();
    let again: sotto_keys::Invite = out.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(again.token, Some(rotated));
}

#[test]
fn a_home_from_before_tokens_gets_one_when_it_first_makes_an_invite() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let path = alice.home().join("delivery.token");
    std::fs::remove_file(&path).unwrap();
    alice.run(&["id"]).ok();
    assert!(!path.exists(), "a plain `id` makes no token");
    let out = alice.run(&["id", "--invite"]).ok();
    let invite: sotto_keys::Invite = out.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(invite.token, Some(token_file(&alice)));
}

#[test]
fn contact_add_takes_a_relay_with_its_key_and_token_and_says_what_is_wrong() {
    let (_d, relay) = relay();
    let bob = Client::new(&relay);
    let carol = Client::new(&relay);
    let theirs = sotto_keys::RelayKey::from_bytes([7; 32]).to_string();
    let token = sotto_keys::DeliveryToken::from_bytes([9; 16]).to_string();

    let err = bob
        .run(&[
            "contact",
            "add",
            "carol",
            &carol.key,
            "--relay",
            "127.0.0.1:9",
        ])
        .fails();
    assert!(err.contains("--relay-key"), "{err}");
    let err = bob
        .run(&["contact", "add", "carol", &carol.key, "--token", &token])
        .fails();
    assert!(err.contains("--relay"), "{err}");
    let mut typo = token.clone();
    typo.pop();
    let err = bob
        .run(&[
            "contact",
            "add",
            "carol",
            &carol.key,
            "--relay",
            "127.0.0.1:9",
            "--relay-key",
            &theirs,
            "--token",
            &typo,
        ])
        .fails();
    assert!(err.contains("--token: invalid delivery token"), "{err}");
    assert!(!err.contains(&typo[11..]), "the token is not echoed: {err}");
    let err = bob
        .run(&[
            "contact",
            "add",
            "carol",
            &carol.key,
            "--relay",
            "127.0.0.1:9",
            "--relay-key",
            &carol.key,
        ])
        .fails();
    assert!(err.contains("relay key"), "{err}");
    let invite = carol.run(&["id", "--invite"]).ok();
    let invite = invite.lines().nth(1).unwrap();
    let err = bob
        .run(&[
            "contact",
            "add",
            "carol",
            invite,
            "--relay",
            "127.0.0.1:9",
            "--relay-key",
            &theirs,
        ])
        .fails();
    assert!(err.contains("an invite already holds"), "{err}");
    assert!(!bob.run(&["contact", "list"]).ok().contains("carol"));

    bob.run(&[
        "contact",
        "add",
        "carol",
        &carol.key,
        "--relay",
        "127.0.0.1:9",
        "--relay-key",
        &theirs,
        "--token",
        &token,
    ])
    .ok();
    assert_eq!(
        contact_field(&bob, "carol", "relay").as_deref(),
        Some("127.0.0.1:9")
    );
    assert_eq!(
        contact_field(&bob, "carol", "relay_key"),
        Some(theirs.clone())
    );
    assert_eq!(contact_field(&bob, "carol", "token"), Some(token));
    // Without the flags, a contact is reached through my relay, as before.
    let dave = Client::new(&relay);
    bob.add_contact("dave", &dave);
    assert_eq!(contact_field(&bob, "dave", "relay"), None);
    let list = bob.run(&["contact", "list"]).ok();
    assert!(
        list.lines()
            .any(|l| l.starts_with("carol") && l.ends_with("  127.0.0.1:9")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("dave") && l.ends_with("  via my relay")),
        "{list}"
    );
}

#[test]
fn an_old_contact_with_a_relay_but_no_key_is_listed_as_reached_through_mine() {
    let (_d, relay) = relay();
    let (alice, bob) = Client::pair(&relay);
    let path = bob.home().join("contacts.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        &format!("key = \"{}\"\n", alice.key),
        &format!("key = \"{}\"\nrelay = \"old.example:7300\"\n", alice.key),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let run = bob.run(&["contact", "list"]);
    let list = run.ok();
    assert!(
        list.contains("via my relay (old.example:7300 noted without its relay_key)"),
        "{list}"
    );
    let hint = run.stderr();
    assert!(
        hint.contains("alice has a relay noted without its key"),
        "{hint}"
    );
    // And it is reached as it always was.
    bob.run(&["send", "alice", "still here"]).ok();
    assert!(alice.run(&["inbox"]).ok().contains("bob: still here"));

    // A relay_key without its relay is a mistake, named with file, line and contact.
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "relay = \"old.example:7300\"\n",
        &format!("relay_key = \"{}\"\n", relay.key),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let err = bob.run(&["contact", "list"]).fails();
    assert!(err.contains("contacts.toml:"), "{err}");
    assert!(
        err.contains("`relay_key` of `alice` without a `relay`"),
        "{err}"
    );
}

#[test]
fn relay_key_on_a_dir_without_a_key_says_so_and_creates_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(sotto_tests::bin("sotto-relay"))
        .arg("key")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "sotto-relay: error: no relay key in sotto-relay-data: this is not the data dir of a relay that has run; start the relay once (`sotto-relay --data sotto-relay-data`) or point at its data dir with `sotto-relay key --data DIR`"
    );
    assert!(out.stdout.is_empty(), "no key printed");
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "nothing created"
    );
    // The data dir of a relay that ran gives its key.
    let (_d, relay) = relay();
    let out = std::process::Command::new(sotto_tests::bin("sotto-relay"))
        .args(["key", "--data"])
        .arg(&relay.data)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), relay.key);
}

/// `sotto-relay ARGS` in `cwd`; its stderr, once it has exited with failure.
fn relay_fails(cwd: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(sotto_tests::bin("sotto-relay"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn relay_start_errors_are_one_line_each_with_the_fix_and_no_os_text_twice() {
    let (_d, relay) = relay();
    let cwd = tempfile::tempdir().unwrap();
    let err = relay_fails(cwd.path(), &["--listen", &relay.addr, "--data", "other"]);
    assert_eq!(
        err,
        format!("sotto-relay: error: cannot listen on {}: address already in use (by another sotto-relay, or another program); choose another with --listen ADDR", relay.addr)
    );
    let data = relay.data.to_str().unwrap();
    let err = relay_fails(cwd.path(), &["--listen", "127.0.0.1:0", "--data", data]);
    assert_eq!(
        err,
        format!("sotto-relay: error: another sotto-relay is using {data}: its mailbox store is locked; stop that relay first, or give this one another data dir with --data DIR")
    );
    let err = relay_fails(cwd.path(), &["--config", "nope.toml"]);
    assert_eq!(
        err.matches("No such file or directory").count()
            + err.matches("no such file or directory").count(),
        1,
        "{err}"
    );
}

#[test]
fn a_usage_error_points_at_the_subcommands_help() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let err = alice.run(&["contact", "add", "bob"]).fails();
    assert!(err.ends_with("; see `sotto contact add --help`"), "{err}");
    let err = alice.run(&["send", "bob"]).fails();
    assert!(err.ends_with("; see `sotto send --help`"), "{err}");
    // An OS error is said once, not once per layer that passed it on.
    let bob = Client::new(&relay);
    alice.add_contact("bob", &bob);
    let err = alice.run(&["send-file", "bob", "/nonexistent"]).fails();
    assert_eq!(
        err.trim_end(),
        "sotto: error: cannot read /nonexistent: no such file or directory"
    );
}

#[test]
fn completions_for_every_shell_and_man_pages_for_every_command() {
    let home = Client::uninit();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = home.run(&["completions", shell]).ok();
        assert!(
            script.contains("receive-all") && script.contains("send-file"),
            "{shell}: {script}"
        );
    }
    assert!(home.run(&["completions", "tcsh"]).fails().contains("tcsh"));
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    home.run(&["man", "--dir", man.to_str().unwrap()]).ok();
    let out = std::process::Command::new(sotto_tests::bin("sotto-relay"))
        .args(["man", "--dir"])
        .arg(&man)
        .output()
        .unwrap();
    assert!(out.status.success());
    for page in [
        "sotto.1",
        "sotto-send.1",
        "sotto-contact-add.1",
        "sotto-relay.1",
        "sotto-relay-key.1",
    ] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_default();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text:.80}"
        );
    }
    let relay_page = std::fs::read_to_string(man.join("sotto-relay.1")).unwrap();
    assert!(
        relay_page.contains("listen"),
        "the binary's page, not `sotto relay`'s"
    );
}

#[test]
fn the_relay_listens_on_a_host_name() {
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(sotto_tests::bin("sotto-relay"))
        .args(["--listen", "localhost:0", "--data"])
        .arg(data.path().join("d"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("listening on 127.0.0.1:") || first.starts_with("listening on [::1]:"),
        "{first}"
    );
    let err = relay_fails(data.path(), &["--listen", "7300"]);
    assert!(err.contains("give HOST:PORT or IP:PORT"), "{err}");
}

#[test]
fn the_systemd_unit_in_the_repo_verifies() {
    let Ok(which) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: systemd-analyze is not installed here");
        return;
    };
    assert!(which.status.success());
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sotto-relay.service");
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(text.contains("DynamicUser=yes") && text.contains("ProtectSystem=strict"));
    // Verified against the binary just built, where the unit expects the
    // installed one.
    let relay = sotto_tests::bin("sotto-relay");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sotto-relay.service");
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/sotto-relay", relay.to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn init_join_pins_the_inviters_relay_and_adds_them() {
    let (_d, relay) = relay();
    let alice = Client::new(&relay);
    let invite = alice.run(&["id", "--invite"]).ok();
    let invite = invite.lines().nth(1).unwrap().to_owned();
    let bob = Client::uninit();
    let made = bob.run(&["init", "--join", &invite, "--contact", "alice"]);
    let key = made.ok();
    assert!(key.starts_with("sotto1"), "{key}");
    assert!(
        made.stderr().contains("added the inviter as alice"),
        "{}",
        made.stderr()
    );
    let config = std::fs::read_to_string(bob.home().join("config.toml")).unwrap();
    assert!(
        config.contains(&relay.key) && config.contains(&relay.addr),
        "{config}"
    );
    // A message both ways.
    bob.run(&["send", "alice", "joined"]).ok();
    let bob_invite = bob.run(&["id", "--invite"]).ok();
    alice
        .run(&["contact", "add", "bob", bob_invite.lines().nth(1).unwrap()])
        .ok();
    assert!(alice.run(&["inbox"]).ok().contains("bob: joined"));
    alice.run(&["send", "bob", "welcome"]).ok();
    assert!(bob.run(&["inbox"]).ok().contains("alice: welcome"));
    let err = Client::uninit()
        .run(&["init", "--join", "sottoinvite1garbage"])
        .fails();
    assert!(err.contains("invite"), "{err}");
}
