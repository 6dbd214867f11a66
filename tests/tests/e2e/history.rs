//! The local history: sealed under the identity on both sides (no message
//! text anywhere in either home), still read by `sotto history`, and a
//! setting that keeps none.

use std::path::Path;

use sotto_tests::{contains, files_under, Client, Relay};

const PASSPHRASE: &str = "correct horse battery staple";

/// The text after `[time] ` of each line.
fn texts(out: &str) -> Vec<&str> {
    out.lines()
        .map(|l| l.split_once("] ").map_or(l, |(_, t)| t))
        .collect()
}

/// Every file under `home` that holds one of `needles`.
fn holding(home: &Path, needles: &[&str]) -> Vec<String> {
    files_under(home)
        .into_iter()
        .filter(|(_, bytes)| needles.iter().any(|n| contains(bytes, n.as_bytes())))
        .map(|(path, _)| path.display().to_string())
        .collect()
}

fn history_files(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(home)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("history"))
        .collect();
    names.sort();
    names
}

#[test]
fn no_message_text_is_kept_in_the_clear_and_history_still_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let mut alice = Client::with_env(&relay, &[("SOTTO_PASSPHRASE", PASSPHRASE)]);
    let bob = Client::new(&relay);
    alice.add_contact("bob", &bob);
    bob.add_contact("alice", &alice);
    let said = [
        "the eagle lands at noon",
        "bring the blue folder",
        "platform nine, café 🚉",
    ];

    // Through a chat (line mode), `send` and `inbox`: every writer of history.
    alice
        .run_with_stdin(&["chat", "bob"], &format!("{}\n", said[0]))
        .ok();
    assert_eq!(
        texts(&bob.run(&["inbox"]).ok()),
        [format!("alice: {}", said[0])]
    );
    bob.run(&["send", "alice", said[1]]).ok();
    let got = alice.run(&["inbox"]).ok();
    assert_eq!(texts(&got), [format!("bob: {}", said[1])]);
    alice.run(&["send", "bob", said[2]]).ok();
    bob.run(&["inbox"]).ok();

    for home in [alice.home(), bob.home()] {
        let leaks = holding(home, &said);
        assert!(leaks.is_empty(), "message text in the clear: {leaks:?}");
        assert_eq!(
            history_files(home),
            ["history.lock", "history.sealed"],
            "{}",
            home.display()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("history.sealed"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let expect = |me_to: &str, them: &str| {
        vec![
            format!("{me_to}{}", said[0]),
            format!("{them}{}", said[1]),
            format!("{me_to}{}", said[2]),
        ]
    };
    assert_eq!(
        texts(&alice.run(&["history", "bob"]).ok()),
        expect("me -> bob: ", "bob: ")
    );
    let bobs = bob.run(&["history", "alice"]).ok();
    let bobs = texts(&bobs);
    assert_eq!(
        bobs,
        [
            format!("alice: {}", said[0]),
            format!("me -> alice: {}", said[1]),
            format!("alice: {}", said[2]),
        ]
    );

    // Reading it takes the identity, so its passphrase.
    alice.env.clear();
    let err = alice.run(&["history", "bob"]).fails();
    assert!(err.contains("SOTTO_PASSPHRASE"), "{err}");
}

#[test]
fn with_history_off_nothing_is_written_and_what_was_kept_stays_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let alice = Client::new(&relay);
    let mut carol = Client::uninit();
    let init = carol.run(&[
        "init",
        "--no-history",
        "--relay",
        &relay.addr,
        "--relay-key",
        &relay.key,
    ]);
    init.ok();
    assert!(
        init.stderr().contains("history is off"),
        "{}",
        init.stderr()
    );
    carol.key = carol.run(&["id"]).ok().lines().next().unwrap().to_owned();
    alice.add_contact("carol", &carol);
    carol.add_contact("alice", &alice);
    let config = std::fs::read_to_string(carol.home().join("config.toml")).unwrap();
    assert!(config.contains("\nhistory = false\n"), "{config}");

    alice.run(&["send", "carol", "hello carol"]).ok();
    assert_eq!(texts(&carol.run(&["inbox"]).ok()), ["alice: hello carol"]);
    carol.run(&["send", "alice", "hello alice"]).ok();
    carol
        .run_with_stdin(&["chat", "alice"], "and once more\n")
        .ok();
    assert_eq!(history_files(carol.home()), Vec::<String>::new());
    let run = carol.run(&["history", "alice"]);
    assert_eq!(run.ok(), "");
    assert!(
        run.stderr()
            .contains("history is off (`history = false` in ")
            && run.stderr().contains("set `history = true` there"),
        "{}",
        run.stderr()
    );

    // Alice turns it off after keeping some: it stays, and grows no more.
    alice.run(&["inbox"]).ok();
    let sealed = alice.home().join("history.sealed");
    let before = std::fs::read(&sealed).unwrap();
    let config = alice.home().join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("history = false\n");
    std::fs::write(&config, text).unwrap();
    alice.run(&["send", "carol", "not kept"]).ok();
    assert_eq!(std::fs::read(&sealed).unwrap(), before);
    let run = alice.run(&["history", "carol"]);
    assert_eq!(
        texts(&run.ok()),
        [
            "me -> carol: hello carol",
            "carol: hello alice",
            "carol: and once more"
        ]
    );
    assert!(
        run.stderr().contains("sotto history --clear"),
        "{}",
        run.stderr()
    );
    let run = alice.run(&["history", "--clear"]);
    run.ok();
    assert!(run.stderr().contains("removed "), "{}", run.stderr());
    assert_eq!(history_files(alice.home()), ["history.lock"]);
    assert_eq!(alice.run(&["history", "carol"]).ok(), "");
}
