use super::*;
use sotto_crypto::envelope::{self, Body};
use sotto_crypto::session::SessionConfig;
use sotto_keys::{RelayKey, SecretKey};

/// Opens what `seal_to` sealed, as the recipient's client would.
fn open_at(to: &SecretKey, envelope: &[u8]) -> (PublicKey, Body) {
    let mut store = SessionStore::new(to.public(), SessionConfig::default());
    let r = store
        .open(to, envelope, SystemTime::now(), |_| true)
        .unwrap();
    (r.sender, r.body.unwrap())
}

fn book_with(dir: &std::path::Path, text: &str) -> ContactBook {
    let path = dir.join("contacts.toml");
    std::fs::write(&path, text).unwrap();
    ContactBook::load(&path).unwrap()
}

fn my_relay() -> RelayPin {
    RelayPin {
        addr: "127.0.0.1:1".parse().unwrap(),
        key: RelayKey::from_bytes([1; 32]),
        nodes: Vec::new(),
    }
}

#[test]
fn the_text_limit_is_exact_enough_to_always_seal() {
    let alice = SecretKey::generate();
    let bob = PublicKey::from_bytes([9; 32]);
    let mut body = Body::new(Content::Text("a".repeat(MAX_TEXT_LEN)));
    body.sent_at_ms = u64::MAX;
    assert!(envelope::seal(&alice, &bob, &body).is_ok());
    assert!(check_text(&"a".repeat(MAX_TEXT_LEN)).is_ok());
    let err = check_text(&"a".repeat(MAX_TEXT_LEN + 1))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "message too long: {} bytes, at most {MAX_TEXT_LEN} bytes fit in one message",
            MAX_TEXT_LEN + 1
        )
    );
    assert!(check_text("").is_err());
}

#[test]
fn a_full_mailbox_is_explained_with_the_contacts_name() {
    let err = RelayError::Refused {
        addr: "127.0.0.1:1".parse().unwrap(),
        code: ErrorCode::QuotaExceeded,
        detail: String::new(),
    };
    assert_eq!(
        explain(err, "bob").to_string(),
        "bob's mailbox on the relay is full; try again once they have read their messages"
    );
    let err = RelayError::Closed {
        addr: "127.0.0.1:1".parse().unwrap(),
    };
    assert!(explain(err, "bob")
        .to_string()
        .contains("closed the connection"));
}

#[test]
fn a_group_message_is_sealed_once_per_member_but_never_to_myself() {
    let dir = tempfile::tempdir().unwrap();
    let me = SecretKey::generate();
    let bob = SecretKey::generate();
    let carol = SecretKey::generate();
    let book = book_with(
        dir.path(),
        &format!(
            "[contacts.bob]\nkey = \"{}\"\n[contacts.carol]\nkey = \"{}\"\n[contacts.self]\nkey = \"{}\"\n[groups.team]\nmembers = [\"bob\", \"carol\", \"self\"]\n",
            bob.public(),
            carol.public(),
            me.public()
        ),
    );
    let target = resolve(&book, "team", false).unwrap();
    assert_eq!(target.name(), "team");
    let mut sessions = SessionStore::new(me.public(), SessionConfig::default());
    let mine = my_relay();
    let out = seal_to(&me, &mut sessions, &target, "hi all".into(), &mine, None).unwrap();
    assert_eq!(
        out.sealed
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    assert!(out
        .sealed
        .iter()
        .all(|s| s.route == Route::new(&mine, s.to, None)));
    assert_eq!(
        out.recipients(),
        [
            (bob.public(), "bob".to_owned()),
            (carol.public(), "carol".to_owned())
        ]
    );
    assert_eq!(out.entry.group.as_deref(), Some("team"));
    assert_eq!(out.entry.peer, None);
    let (sender, opened) = open_at(&carol, &out.sealed[1].envelope);
    assert_eq!(sender, me.public());
    assert_eq!(
        opened.content,
        Content::GroupText {
            group: "team".into(),
            text: "hi all".into()
        }
    );
    // One body for all: one id.
    let (_, at_bob) = open_at(&bob, &out.sealed[0].envelope);
    assert_eq!(at_bob.id, opened.id);
    assert_eq!(out.id, opened.id);
    assert!(out.sealed.iter().all(|s| s.message == Some(opened.id)));

    assert!(resolve(&book, "bob", true).is_err());
    assert!(matches!(
        resolve(&book, "bob", false).unwrap(),
        Target::Contact(_)
    ));
    let err = resolve(&book, "nobody", false).unwrap_err().to_string();
    assert!(err.starts_with("unknown contact 'nobody'"), "{err}");
    let err = resolve(&book, "nobody", true).unwrap_err().to_string();
    assert!(err.starts_with("unknown group 'nobody'"), "{err}");
    let err = recipient(&book, "team").unwrap_err().to_string();
    assert!(err.contains("sotto send --group team"), "{err}");
    assert!(seal_to(&me, &mut sessions, &target, String::new(), &mine, None).is_err());
    let err = seal_to(
        &me,
        &mut sessions,
        &target,
        "a".repeat(MAX_TEXT_LEN),
        &mine,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("with the group name"), "{err}");

    // A group of myself alone has nobody to send to.
    let alone = Target::Group {
        name: "me".into(),
        members: vec![book.get("self").unwrap().clone()],
    };
    let err = seal_to(&me, &mut sessions, &alone, "x".into(), &mine, None)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("nobody to send to"), "{err}");
}

#[test]
fn replies_are_named_by_the_book_and_go_where_messages_go() {
    let dir = tempfile::tempdir().unwrap();
    let bob = SecretKey::generate().public();
    let stranger = SecretKey::generate().public();
    let book = book_with(dir.path(), &format!("[contacts.bob]\nkey = \"{bob}\"\n"));
    let mine = my_relay();
    let to_bob = Sealed::reply(&book, bob, vec![1], &mine);
    assert_eq!((to_bob.name.as_str(), to_bob.message), ("bob", None));
    assert_eq!(to_bob.route, route_for(book.get("bob"), bob, &mine));
    let to_stranger = Sealed::reply(&book, stranger, vec![2], &mine);
    assert_eq!(to_stranger.name, stranger.to_string());
    assert_eq!(to_stranger.route, Route::new(&mine, stranger, None));
}
