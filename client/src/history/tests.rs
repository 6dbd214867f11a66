use super::*;
use std::os::unix::fs::PermissionsExt;

fn entry(text: &str, direction: Direction) -> Entry {
    Entry {
        at_ms: 1_700_000_000_000,
        direction,
        peer: Some(PublicKey::from_bytes([7; 32])),
        group: None,
        text: text.to_owned(),
    }
}

fn texts(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.text.as_str()).collect()
}

fn setup() -> (tempfile::TempDir, Home, SecretKey) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    (dir, home, SecretKey::generate())
}

fn kept(home: &Home, me: &SecretKey) -> History {
    History::with_setting(home, me, true).unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn entries_come_back_in_order_from_a_private_file_with_no_plaintext() {
    let (_dir, home, me) = setup();
    let h = kept(&home, &me);
    assert!(h.read_all().unwrap().is_empty());
    let a = entry("the eagle lands at noon", Direction::Sent);
    let mut b = entry("bring the blue folder", Direction::Received);
    b.group = Some("team".into());
    b.peer = None;
    h.append(std::slice::from_ref(&a)).unwrap();
    h.append(std::slice::from_ref(&b)).unwrap();
    assert_eq!(h.read_all().unwrap(), vec![a, b]);
    // Another handle (another process) reads the same.
    assert_eq!(kept(&home, &me).read_all().unwrap().len(), 2);

    let mode = std::fs::metadata(h.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let bytes = std::fs::read(h.path()).unwrap();
    for secret in [&b"eagle"[..], b"blue folder", b"team", &[7u8; 32][..]] {
        assert!(!contains(&bytes, secret), "{:?} is on disk", secret);
    }
    assert_eq!(h.path(), home.dir().join("history.sealed"));
}

#[test]
fn another_identity_is_refused_in_one_line_and_its_file_left_alone() {
    let (_dir, home, me) = setup();
    kept(&home, &me)
        .append(&[entry("mine", Direction::Sent)])
        .unwrap();
    let before = std::fs::read(home.history()).unwrap();
    let other = kept(&home, &SecretKey::generate());
    for err in [
        other.read_all().unwrap_err(),
        other
            .append(&[entry("theirs", Direction::Sent)])
            .unwrap_err(),
    ] {
        let err = crate::error_line(&err);
        assert!(
            err.contains("was sealed under another identity than this home's key"),
            "{err}"
        );
        assert!(err.contains("sotto history --clear"), "{err}");
        assert!(!err.contains('\n'));
    }
    assert_eq!(std::fs::read(home.history()).unwrap(), before);
    assert_eq!(texts(&kept(&home, &me).read_all().unwrap()), ["mine"]);
}

#[test]
fn a_torn_last_record_is_skipped_then_cut_off_by_the_next_append() {
    let (_dir, home, me) = setup();
    let h = kept(&home, &me);
    h.append(&[entry("kept", Direction::Sent)]).unwrap();
    h.append(&[entry("torn", Direction::Sent)]).unwrap();
    let len = std::fs::metadata(h.path()).unwrap().len();
    let f = OpenOptions::new().write(true).open(h.path()).unwrap();
    f.set_len(len - 2).unwrap();
    drop(f);
    assert_eq!(texts(&h.read_all().unwrap()), ["kept"]);

    h.append(&[entry("after", Direction::Received)]).unwrap();
    assert_eq!(texts(&h.read_all().unwrap()), ["kept", "after"]);
    // The torn bytes are gone, not merely skipped.
    let a = kept(&home, &me);
    a.append(&[entry("again", Direction::Sent)]).unwrap();
    assert_eq!(texts(&a.read_all().unwrap()), ["kept", "after", "again"]);

    // A crash that left zeros where a record should be.
    let mut f = OpenOptions::new().append(true).open(h.path()).unwrap();
    f.write_all(&[0u8; 100]).unwrap();
    drop(f);
    assert_eq!(h.read_all().unwrap().len(), 3);
    h.append(&[entry("last", Direction::Sent)]).unwrap();
    assert_eq!(
        texts(&h.read_all().unwrap()),
        ["kept", "after", "again", "last"]
    );
}

#[test]
fn a_tampered_record_is_skipped_alone_and_moved_records_do_not_open() {
    let (_dir, home, me) = setup();
    let h = kept(&home, &me);
    for t in ["one", "two", "six"] {
        h.append(&[entry(t, Direction::Sent)]).unwrap();
    }
    let clean = std::fs::read(h.path()).unwrap();
    let record_len = (clean.len() - HEADER_LEN) / 3;

    // One flipped bit in the second record's ciphertext.
    let mut bytes = clean.clone();
    bytes[HEADER_LEN + record_len + 30] ^= 1;
    std::fs::write(h.path(), &bytes).unwrap();
    assert_eq!(texts(&h.read_all().unwrap()), ["one", "six"]);

    // The first two records swapped: each sits at the other's offset.
    let mut bytes = clean[..HEADER_LEN].to_vec();
    bytes.extend_from_slice(&clean[HEADER_LEN + record_len..HEADER_LEN + 2 * record_len]);
    bytes.extend_from_slice(&clean[HEADER_LEN..HEADER_LEN + record_len]);
    bytes.extend_from_slice(&clean[HEADER_LEN + 2 * record_len..]);
    std::fs::write(h.path(), &bytes).unwrap();
    assert_eq!(texts(&h.read_all().unwrap()), ["six"]);

    // An altered header (the version byte) is refused with the way out.
    let mut bytes = clean.clone();
    bytes[14] = 9;
    std::fs::write(h.path(), &bytes).unwrap();
    let err = crate::error_line(&h.read_all().unwrap_err());
    assert!(err.contains("version 9"), "{err}");
}

#[test]
fn a_file_others_may_read_is_refused_with_the_chmod_to_run() {
    let (_dir, home, me) = setup();
    let h = kept(&home, &me);
    h.append(&[entry("x", Direction::Sent)]).unwrap();
    std::fs::set_permissions(h.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = h.read_all().unwrap_err().to_string();
    assert!(err.contains("(mode 0644); run `chmod 600 "), "{err}");
    assert!(h.append(&[entry("y", Direction::Sent)]).is_err());
}

#[test]
fn a_plaintext_history_is_sealed_and_removed_on_first_use() {
    let (_dir, home, me) = setup();
    let old = vec![
        entry("from the old days", Direction::Sent),
        entry("plain words", Direction::Received),
    ];
    std::fs::write(home.history_plaintext(), legacy::encode(&old)).unwrap();
    let h = kept(&home, &me);
    assert_eq!(h.read_all().unwrap(), old);
    assert!(!home.history_plaintext().exists());
    let bytes = std::fs::read(h.path()).unwrap();
    assert!(!contains(&bytes, b"old days"));
    assert!(!contains(&bytes, b"plain words"));
    let mode = std::fs::metadata(h.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A crash after sealing and before the removal: nothing is doubled, and
    // what the old version wrote since is added.
    let mut again = old.clone();
    again.push(entry("written by a downgrade", Direction::Sent));
    std::fs::write(home.history_plaintext(), legacy::encode(&again)).unwrap();
    h.append(&[entry("new", Direction::Sent)]).unwrap();
    assert_eq!(
        texts(&h.read_all().unwrap()),
        [
            "from the old days",
            "plain words",
            "written by a downgrade",
            "new"
        ]
    );
    assert!(!home.history_plaintext().exists());
}

#[test]
fn history_off_writes_nothing_and_says_so() {
    let (dir, home, me) = setup();
    let off = History::with_setting(&home, &me, false).unwrap();
    off.append(&[entry("not kept", Direction::Sent)]).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let err = off.read_all().unwrap_err();
    assert!(err.downcast_ref::<HistoryOff>().is_some(), "{err}");
    assert!(
        err.to_string().contains("set `history = true` there"),
        "{err}"
    );

    // What was kept before stays, readable, and grows no more.
    kept(&home, &me)
        .append(&[entry("before", Direction::Sent)])
        .unwrap();
    let before = std::fs::read(home.history()).unwrap();
    off.append(&[entry("after", Direction::Sent)]).unwrap();
    assert_eq!(std::fs::read(home.history()).unwrap(), before);
    assert_eq!(texts(&off.read_all().unwrap()), ["before"]);

    // Cleared, it is gone; a plaintext file of an older version too.
    std::fs::write(home.history_plaintext(), legacy::encode(&[])).unwrap();
    let removed = clear(&home).unwrap();
    assert_eq!(removed, [home.history(), home.history_plaintext()]);
    assert!(!History::exists_in(&home));
    assert!(clear(&home).unwrap().is_empty());
}

#[test]
fn appends_from_several_handles_at_once_all_land_whole() {
    let (_dir, home, me) = setup();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (home, me) = (&home, &me);
            s.spawn(move || {
                // Its own handle, its own lock file description: as another
                // process would.
                let h = kept(home, me);
                for i in 0..25 {
                    h.append(&[entry(&format!("{t}-{i}"), Direction::Sent)])
                        .unwrap();
                }
            });
        }
    });
    let all = kept(&home, &me).read_all().unwrap();
    assert_eq!(all.len(), 100);
    for t in 0..4 {
        let mine: Vec<_> = all
            .iter()
            .filter(|e| e.text.starts_with(&format!("{t}-")))
            .map(|e| e.text.clone())
            .collect();
        assert_eq!(
            mine,
            (0..25).map(|i| format!("{t}-{i}")).collect::<Vec<_>>()
        );
    }
}
