//! Trees through the whole way: scanned, streamed, unpacked; and streams a
//! hostile sender wrote, unpacked into a directory that must not be left.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sotto_crypto::file::FileId;

use super::scan::LocalTree;
use super::source::TreeSource;
use super::unpack::{staging_path, unpack, UnpackError};
use super::{encode_header, Entry, EntryKind};
use crate::upload::Plaintext;

/// What a tree holds: relative path -> `None` for a directory, or a file's bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else if meta.is_file() {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            } else {
                out.insert(rel, Some(b"<link>".to_vec()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The stream of the tree at `root`, as the upload reads it.
fn stream_of(root: &Path) -> Vec<u8> {
    let tree = LocalTree::scan(root, &mut |_| {}).unwrap();
    let mut src = TreeSource::new(root.to_path_buf(), &tree);
    let mut out = vec![0u8; tree.size() as usize];
    src.fill(&mut out).unwrap();
    src.check_end().unwrap();
    out
}

/// Writes `stream` as a verified download would leave it, and unpacks it.
fn receive(dir: &Path, name: &str, stream: &[u8]) -> (FileId, Result<PathBuf, UnpackError>) {
    let id = FileId::random();
    let part = dir.join(format!(".sotto-{id}.part"));
    fs::write(&part, stream).unwrap();
    let got = unpack(&part, dir, id, name, stream.len() as u64);
    fs::remove_file(&part).unwrap();
    (id, got)
}

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    fs::create_dir_all(root.join("grüße/你好")).unwrap();
    fs::write(root.join("top.txt"), b"top").unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    fs::write(
        root.join("a/b/c/deep.bin"),
        (0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(root.join("grüße/你好/👋.md"), "hallo 👋").unwrap();
    fs::write(root.join("a/.hidden"), b"h").unwrap();
}

#[test]
fn a_tree_arrives_byte_exact_with_its_structure() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    sample_tree(&root);
    std::os::unix::fs::symlink("/etc/passwd", root.join("a/link")).unwrap();
    let stream = stream_of(&root);
    let inbox = tmp.path().join("inbox");
    fs::create_dir(&inbox).unwrap();

    let (id, got) = receive(&inbox, "photos", &stream);
    let got = got.unwrap();
    assert_eq!(got, inbox.join("photos"));
    let mut want = snapshot(&root);
    want.remove("a/link");
    assert_eq!(snapshot(&got), want);
    assert!(!staging_path(&inbox, id).exists());

    // Again: the first is kept, the second numbered.
    let (_, again) = receive(&inbox, "photos", &stream);
    assert_eq!(again.unwrap(), inbox.join("photos (1)"));
    assert_eq!(snapshot(&inbox.join("photos")), want);
    let names: Vec<_> = fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn an_empty_directory_arrives_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nothing");
    fs::create_dir(&root).unwrap();
    let inbox = tmp.path().join("in");
    fs::create_dir(&inbox).unwrap();
    let (_, got) = receive(&inbox, "nothing", &stream_of(&root));
    let got = got.unwrap();
    assert!(got.is_dir());
    assert!(snapshot(&got).is_empty());
}

#[test]
fn a_link_in_the_way_is_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    sample_tree(&root);
    let stream = stream_of(&root);
    let inbox = tmp.path().join("in");
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&inbox).unwrap();
    fs::create_dir(&elsewhere).unwrap();
    // The tree's name, and the directory it is built in, taken by links.
    std::os::unix::fs::symlink(&elsewhere, inbox.join("photos")).unwrap();
    let id = FileId::random();
    std::os::unix::fs::symlink(&elsewhere, staging_path(&inbox, id)).unwrap();
    let part = inbox.join("stream");
    fs::write(&part, &stream).unwrap();
    let got = unpack(&part, &inbox, id, "photos", stream.len() as u64).unwrap();
    assert_eq!(got, inbox.join("photos (1)"));
    assert!(
        fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing went through a link"
    );
    assert!(fs::symlink_metadata(inbox.join("photos"))
        .unwrap()
        .file_type()
        .is_symlink());
}

fn file(path: &[&str], size: u64) -> Entry {
    Entry {
        path: path.iter().map(|s| s.to_string()).collect(),
        kind: EntryKind::File { size },
    }
}

/// A stream whose manifest says `entries`, each file filled with `x`.
fn hostile(entries: &[Entry]) -> Vec<u8> {
    let mut stream = encode_header(entries).unwrap();
    for e in entries {
        if let EntryKind::File { size } = e.kind {
            stream.extend(std::iter::repeat_n(b'x', size as usize));
        }
    }
    stream
}

#[test]
fn hostile_trees_write_nothing_outside_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let inbox = tmp.path().join("in");
    fs::create_dir(&inbox).unwrap();
    fs::write(tmp.path().join("victim"), b"mine").unwrap();
    let before = snapshot(tmp.path());

    let refused: Vec<Vec<Entry>> = vec![
        vec![file(&["..", "victim"], 3)],
        vec![file(&["a", "..", "..", "victim"], 3)],
        vec![file(&["/tmp/x"], 3)],
        vec![file(&["x"], 1), file(&["x"], 1)],
        vec![file(&["x"], 1), file(&["x", "y"], 1)],
        vec![file(&["d", "y"], 1), file(&["d"], 1)],
        vec![file(&[""], 1)],
    ];
    for entries in refused {
        let (id, got) = receive(&inbox, "t", &hostile(&entries));
        assert!(
            matches!(got, Err(UnpackError::Refused(_))),
            "{entries:?}: {got:?}"
        );
        assert!(!staging_path(&inbox, id).exists());
    }
    // A stream longer or shorter than its manifest says.
    let mut long = hostile(&[file(&["f"], 2)]);
    long.push(b'!');
    assert!(matches!(
        receive(&inbox, "t", &long).1,
        Err(UnpackError::Refused(_))
    ));
    let mut short = hostile(&[file(&["f"], 2)]);
    short.pop();
    assert!(matches!(
        receive(&inbox, "t", &short).1,
        Err(UnpackError::Refused(_))
    ));
    assert_eq!(snapshot(tmp.path()), before, "nothing was written anywhere");

    // Names that clean up are written, cleaned, inside.
    let entries = [
        file(&["a\\..\\..\\victim"], 1),
        file(&["CON"], 1),
        file(&["\u{202e}gpj.exe"], 1),
        file(&[".sotto-0.part"], 1),
    ];
    let (_, got) = receive(&inbox, "../../escape", &hostile(&entries));
    // The top name is the caller's to clean; one that is not a plain
    // component is refused all the same.
    assert!(matches!(got, Err(UnpackError::Refused(_))), "{got:?}");
    let (_, got) = receive(&inbox, "t", &hostile(&entries));
    let got = got.unwrap();
    let names: Vec<String> = snapshot(&got).into_keys().collect();
    assert_eq!(
        names,
        ["_CON", "_sotto-0.part", "a_.._.._victim", "gpj.exe"]
    );
    assert_eq!(fs::read(tmp.path().join("victim")).unwrap(), b"mine");
}
