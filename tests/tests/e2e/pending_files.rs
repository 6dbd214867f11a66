//! Seeing and choosing what waits: `sotto files` lists without downloading,
//! strangers' files wait unless asked for, `--from` picks a sender, and
//! `--reject` deletes one from the relay unread.

use sotto_tests::{Client, Relay};

use crate::files::{blobs, content};

fn send(from: &Client, to: &str, dir: &std::path::Path, name: &str, seed: u8) {
    let path = dir.join(name);
    std::fs::write(&path, content(1000 + usize::from(seed), seed)).unwrap();
    from.run(&["send-file", to, path.to_str().unwrap()]).ok();
}

/// Lines of `sotto files` past its header, as `[id, from..., size, age, name]`.
fn rows(bob: &Client) -> Vec<String> {
    let out = bob.run(&["files"]).ok();
    let mut lines = out.lines();
    assert!(lines.next().unwrap_or_default().starts_with("ID "), "{out}");
    lines.map(str::to_owned).collect()
}

#[test]
fn files_are_listed_and_strangers_wait_until_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let carol = Client::new(&relay);
    carol.add_contact("bob", &bob);
    bob.add_contact("carol", &carol);
    let mallory = Client::new(&relay);
    mallory.add_contact("bob", &bob);
    let src = tempfile::tempdir().unwrap();
    send(&alice, "bob", src.path(), "from-alice.txt", 1);
    send(&carol, "bob", src.path(), "from-carol.txt", 2);
    send(&mallory, "bob", src.path(), "from-mallory.exe", 3);

    // Listed, nothing fetched.
    let listed = rows(&bob);
    assert_eq!(listed.len(), 3, "{listed:?}");
    let row = |name: &str| listed.iter().find(|l| l.ends_with(name)).unwrap().clone();
    assert!(row("from-alice.txt").contains("  alice  "), "{listed:?}");
    let mallory_row = row("from-mallory.exe");
    let prefix: String = mallory.key.chars().take(16).collect();
    assert!(
        mallory_row.contains(&format!("stranger {prefix}…")),
        "{mallory_row}"
    );
    assert!(mallory_row.contains("1003 B"), "{mallory_row}");
    assert_eq!(blobs(&relay).len(), 3, "listing downloads nothing");

    // --from picks one contact.
    let out = tempfile::tempdir().unwrap();
    let dir_arg = out.path().to_str().unwrap();
    bob.run(&["receive-all", "--dir", dir_arg, "--from", "carol"])
        .ok();
    assert!(out.path().join("from-carol.txt").exists());
    assert!(!out.path().join("from-alice.txt").exists());
    let err = bob
        .run(&["receive-all", "--dir", dir_arg, "--from", "nobody"])
        .fails();
    assert!(err.contains("no contact named nobody"), "{err}");

    // By default a stranger's file stays, and the note says how to get it.
    let run = bob.run(&["receive-all", "--dir", dir_arg]);
    run.ok();
    assert!(out.path().join("from-alice.txt").exists());
    assert!(
        !out.path().join("from-mallory.exe").exists(),
        "a stranger's file is not fetched"
    );
    assert!(
        run.stderr().contains("--from-strangers"),
        "{}",
        run.stderr()
    );
    assert_eq!(blobs(&relay).len(), 1);

    // Rejected: gone from the home and from the relay, never written.
    let listed = rows(&bob);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0].split_whitespace().next().unwrap().to_owned();
    let rejected = bob.run(&["files", "--reject", &id]);
    rejected.ok();
    assert!(
        rejected.stderr().contains("deleted from the relay unread"),
        "{}",
        rejected.stderr()
    );
    assert!(blobs(&relay).is_empty(), "the blob is deleted");
    assert!(bob
        .run(&["files"])
        .stderr()
        .contains("no files are waiting"));
    let err = bob.run(&["files", "--reject", &id]).fails();
    assert!(err.contains("no waiting file has the ID"), "{err}");

    // Asked for, a stranger's file comes.
    send(&mallory, "bob", src.path(), "again.bin", 4);
    bob.run(&["receive-all", "--dir", dir_arg, "--from-strangers"])
        .ok();
    assert!(out.path().join("again.bin").exists());
    assert!(blobs(&relay).is_empty());
}
