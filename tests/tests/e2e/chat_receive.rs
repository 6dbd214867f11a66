//! `/receive` in `sotto chat`, driven through pipes (line mode): an offer
//! says how to receive it, the files arrive while the chat goes on, a
//! stranger's file waits, and `~` in a path is the home directory.

use sotto_tests::{Client, Relay};

use crate::files::{blobs, content};

#[test]
fn receive_in_the_chat_takes_contacts_files_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, mut bob) = Client::pair(&relay);
    let mallory = Client::new(&relay);
    mallory.add_contact("bob", &bob);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("in")).unwrap();
    bob.env
        .push(("HOME".into(), home.path().display().to_string()));

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.txt");
    std::fs::write(&file, content(3 * 65_536 + 5, 7)).unwrap();
    let tree = src.path().join("album");
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("a.jpg"), content(1000, 8)).unwrap();
    let odd = src.path().join("odd.bin");
    std::fs::write(&odd, b"from a stranger").unwrap();
    mallory
        .run(&["send-file", "bob", odd.to_str().unwrap()])
        .ok();

    let mut b = bob.spawn(&["chat", "alice"]);
    alice
        .run(&["send-file", "bob", file.to_str().unwrap()])
        .ok();
    alice
        .run(&["send-file", "bob", tree.to_str().unwrap()])
        .ok();
    // The stranger's offer waited; alice's come live.
    let lines = b.expect_lines(3);
    let line = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {lines:?}"))
            .clone()
    };
    assert!(
        line("alice: sent a file: notes.txt").ends_with("— type /receive"),
        "{lines:?}"
    );
    assert!(line("alice: sent a directory: album").ends_with("— type /receive"));
    assert!(line("odd.bin").contains("unknown sotto1"), "{lines:?}");

    b.type_line("/receive ~/in");
    b.wait_stderr("received album (a directory) from alice", 1);
    let err = b.wait_stderr("received notes.txt from alice", 1);
    assert!(err.contains("from strangers"), "{err}");
    // The chat is still the chat.
    alice.run(&["send", "bob", "did they arrive?"]).ok();
    assert!(b.expect_lines(1)[0].ends_with("alice: did they arrive?"));
    let (ok, rest) = b.finish();
    assert!(ok, "{rest:?}");

    let inbox = home.path().join("in");
    assert_eq!(
        std::fs::read(inbox.join("notes.txt")).unwrap(),
        content(3 * 65_536 + 5, 7)
    );
    assert_eq!(
        std::fs::read(inbox.join("album/a.jpg")).unwrap(),
        content(1000, 8)
    );
    assert!(inbox.join("album/empty").is_dir());
    assert!(!inbox.join("odd.bin").exists(), "a stranger's file waits");
    assert_eq!(blobs(&relay).len(), 1, "only the stranger's blob is left");
}
