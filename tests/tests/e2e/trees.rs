//! Directories sent as one tree: byte-exact round trips with their
//! structure, links skipped, an interrupted tree resumed, nothing named on
//! the relay, and hostile trees from a malicious sender.

use std::collections::BTreeMap;
use std::path::Path;

use sotto_client::tree::{encode_header, Entry, EntryKind};
use sotto_crypto::envelope::Content;
use sotto_tests::proxy::{OnLimit, Proxy};
use sotto_tests::{contains, files_under, Client, Relay};

use crate::files::{blobs, content, drop_offer};

/// What a tree holds: relative path -> `None` for a directory, a file's bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn sample(root: &Path) {
    for d in ["a/b/c", "empty/inner", "grüße/你好"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("a/b/c/deep.bin"), content(200_000, 1)).unwrap();
    std::fs::write(root.join("empty-file"), b"").unwrap();
    std::fs::write(root.join("grüße/你好/👋 hallo.md"), "hallo 👋").unwrap();
    std::fs::write(root.join("secret-marker-name-7f3a.txt"), b"top").unwrap();
}

#[test]
fn a_directory_arrives_byte_exact_with_its_tree_and_links_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = Relay::start(&data, None);
    let (alice, bob) = Client::pair(&relay);
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("photos");
    sample(&root);
    std::os::unix::fs::symlink("/etc", root.join("a/etc-link")).unwrap();

    let sent = alice.run(&["send-file", "bob", root.to_str().unwrap()]);
    sent.ok();
    assert!(
        sent.stderr()
            .contains("skipped a/etc-link: a symbolic link (links are not followed)"),
        "{}",
        sent.stderr()
    );
    // One blob, and neither names nor structure on the relay's disk.
    assert_eq!(blobs(&relay).len(), 1);
    for (p, bytes) in files_under(&data) {
        for needle in [&b"secret-marker-name"[..], b"deep.bin", "grüße".as_bytes()] {
            assert!(!contains(&bytes, needle), "{} holds a name", p.display());
        }
    }
    // Sent twice: the second arrives beside the first.
    alice
        .run(&["send-file", "bob", root.to_str().unwrap()])
        .ok();

    let out = tempfile::tempdir().unwrap();
    let run = bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()]);
    let stdout = run.ok();
    assert!(stdout.contains("alice: received photos"), "{stdout}");
    let mut want = snapshot(&root);
    want.remove("a/etc-link");
    assert_eq!(snapshot(&out.path().join("photos")), want);
    assert_eq!(snapshot(&out.path().join("photos (1)")), want);
    let top: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().collect();
    assert_eq!(top.len(), 2, "no temporary files left");
    assert!(blobs(&relay).is_empty(), "the blobs are deleted");
}

#[test]
fn an_interrupted_tree_upload_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let proxy = Proxy::start(&relay.addr);
    let port = proxy.addr.rsplit(':').next().unwrap().to_owned();
    alice
        .run(&["relay", "set", &format!("127.0.0.1:{port}"), &relay.key])
        .ok();
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("big");
    std::fs::create_dir_all(root.join("x")).unwrap();
    std::fs::write(root.join("one.bin"), content(20 << 20, 2)).unwrap();
    std::fs::write(root.join("x/two.bin"), content((20 << 20) + 7, 3)).unwrap();

    // Past the relay's first durable checkpoint (16 MiB), then cut.
    proxy.limit(24 << 20, OnLimit::Cut);
    let cut = alice.run(&["send-file", "bob", root.to_str().unwrap()]);
    assert!(!cut.out.status.success(), "the cut upload must fail");
    proxy.unlimited();
    let again = alice.run(&["send-file", "bob", root.to_str().unwrap()]);
    again.ok();
    assert!(
        again.stderr().contains("resuming big at"),
        "the whole tree resumes:\n{}",
        again.stderr()
    );

    let out = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    assert!(
        snapshot(&out.path().join("big")) == snapshot(&root),
        "the resumed tree differs"
    );
}

fn file(path: &[&str], size: u64) -> Entry {
    Entry {
        path: path.iter().map(|s| s.to_string()).collect(),
        kind: EntryKind::File { size },
    }
}

fn stream(entries: &[Entry]) -> Vec<u8> {
    let mut s = encode_header(entries).unwrap();
    for e in entries {
        if let EntryKind::File { size } = e.kind {
            s.extend(std::iter::repeat_n(b'x', size as usize));
        }
    }
    s
}

#[test]
fn hostile_trees_are_refused_or_cleaned_and_nothing_leaves_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let root = tempfile::tempdir().unwrap();
    let inbox = root.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();

    let refused = [
        vec![file(&["..", "..", "escaped"], 3)],
        vec![file(&["/tmp/escaped"], 3)],
        vec![file(&["dup"], 1), file(&["dup"], 1)],
        vec![file(&["f"], 1), file(&["f", "g"], 1)],
    ];
    for (i, entries) in refused.iter().enumerate() {
        drop_offer(
            &relay,
            &alice,
            &bob,
            &format!("bad{i}"),
            &stream(entries),
            10 * i as u32 + 1,
            Content::Tree,
        );
    }
    // Cleaned, not refused: a traversal in its name, a device name, a
    // bidi override; its own name a traversal too.
    let cleaned = [
        file(&["a\\..\\..\\escaped"], 1),
        file(&["sub", "NUL"], 1),
        file(&["\u{202e}gpj.exe"], 1),
    ];
    drop_offer(
        &relay,
        &alice,
        &bob,
        "../../escaped",
        &stream(&cleaned),
        101,
        Content::Tree,
    );

    let run = bob.run(&["receive-all", "--dir", inbox.to_str().unwrap()]);
    assert!(!run.out.status.success());
    let err = run.stderr();
    assert_eq!(
        err.matches("the directory it holds is refused").count(),
        4,
        "{err}"
    );
    assert!(err.contains("listed twice"), "{err}");
    assert!(err.contains("inside f, a file"), "{err}");
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        1,
        "nothing written beside the inbox"
    );
    let got = snapshot(&inbox);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "escaped",
            "escaped/a_.._.._escaped",
            "escaped/gpj.exe",
            "escaped/sub",
            "escaped/sub/_NUL"
        ]
    );
}
