//! The inbound pipeline, batch by batch: what is shown, kept, dropped and
//! acknowledged.

mod batches {
    use super::super::*;
    use sotto_crypto::envelope;
    use sotto_crypto::session::SessionConfig;
    use sotto_keys::Contact;
    use std::cell::RefCell;

    const NOW: u64 = 1_800_000_000;

    struct World {
        _dir: tempfile::TempDir,
        me: SecretKey,
        alice: SecretKey,
        book: ContactBook,
        store: SeenStore,
        sessions: RefCell<SessionStore>,
        offers: RefCell<Offers>,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let me = SecretKey::generate();
        let alice = SecretKey::generate();
        let mut book = ContactBook::load(&dir.path().join("contacts.toml")).unwrap();
        book.add(Contact::new("alice".parse().unwrap(), alice.public(), None))
            .unwrap();
        let store = SeenStore::open(&dir.path().join("seen.redb"), NOW).unwrap();
        let offers = Offers::load(&dir.path().join("offers.sealed"), &me).unwrap();
        World {
            _dir: dir,
            sessions: RefCell::new(SessionStore::new(me.public(), SessionConfig::default())),
            offers: RefCell::new(offers),
            me,
            alice,
            book,
            store,
        }
    }

    fn body(text: &str, sent_at_ms: u64) -> Body {
        let mut b = Body::new(Content::Text(text.to_owned()));
        b.sent_at_ms = sent_at_ms;
        b
    }

    fn deliver(id: u64, from: &SecretKey, to: &SecretKey, body: &Body) -> Delivery {
        Delivery {
            id,
            received_at: NOW,
            envelope: envelope::seal(from, &to.public(), body).unwrap(),
        }
    }

    fn run_batch(w: &World, pending: Vec<Delivery>) -> (Outcome, Vec<String>) {
        run_batch_with(w, pending, Files::Announce)
    }

    fn run_batch_with(w: &World, pending: Vec<Delivery>, files: Files) -> (Outcome, Vec<String>) {
        let mut lines = Vec::new();
        let outcome = process(
            &w.me,
            &w.book,
            &w.store,
            &mut w.sessions.borrow_mut(),
            &mut w.offers.borrow_mut(),
            pending,
            NOW,
            files,
            &mut |l| {
                lines.push(l.to_owned());
                Ok(())
            },
        )
        .unwrap();
        (outcome, lines)
    }

    #[test]
    fn contacts_by_name_strangers_by_key_duplicates_once_garbage_acked() {
        let w = world();
        let mallory = SecretKey::generate();
        let hello = body("hello \x1b[31mthere", NOW * 1000);
        let pending = vec![
            deliver(1, &w.alice, &w.me, &hello),
            deliver(2, &w.alice, &w.me, &hello), // replayed in the same batch
            deliver(3, &mallory, &w.me, &body("i am alice", NOW * 1000)),
            Delivery {
                id: 4,
                received_at: NOW,
                envelope: vec![1, 1, 0, 0, 0],
            },
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.ack, vec![1, 2, 3, 4]);
        assert_eq!(outcome.failed, 1);
        assert_eq!(outcome.shown, 2);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with("] alice: hello \\x1b[31mthere"),
            "{}",
            lines[0]
        );
        assert!(lines[0].starts_with('['));
        assert!(
            lines[1].ends_with(&format!("] unknown {}: i am alice", mallory.public())),
            "{}",
            lines[1]
        );
        assert_eq!(
            outcome.unknown_senders.into_iter().collect::<Vec<_>>(),
            vec![mallory.public()]
        );

        // Delivered again later (an ack that was lost): acked, not shown.
        let (outcome, lines) = run_batch(&w, vec![deliver(9, &w.alice, &w.me, &hello)]);
        assert_eq!(outcome.ack, vec![9]);
        assert!(lines.is_empty());
    }

    #[test]
    fn a_message_under_someone_elses_id_does_not_hide_the_real_one() {
        // Mallory learned the id of Alice's group message and sent first.
        let w = world();
        let mallory = SecretKey::generate();
        let real = body("the real one", NOW * 1000);
        let mut forged = body("the forgery", NOW * 1000);
        forged.id = real.id;
        let pending = vec![
            deliver(1, &mallory, &w.me, &forged),
            deliver(2, &w.alice, &w.me, &real),
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.shown, 2, "{lines:?}");
        assert!(lines[1].ends_with("] alice: the real one"), "{lines:?}");
    }

    #[test]
    fn a_message_that_could_not_be_printed_is_neither_remembered_nor_acked() {
        let w = world();
        let first = body("one", NOW * 1000);
        let second = body("two", NOW * 1000);
        let pending = vec![
            deliver(1, &w.alice, &w.me, &first),
            deliver(2, &w.alice, &w.me, &second),
        ];
        let mut calls = 0;
        let outcome = process(
            &w.me,
            &w.book,
            &w.store,
            &mut w.sessions.borrow_mut(),
            &mut w.offers.borrow_mut(),
            pending,
            NOW,
            Files::Announce,
            &mut |_| {
                calls += 1;
                if calls == 2 {
                    Err(std::io::ErrorKind::BrokenPipe.into())
                } else {
                    Ok(())
                }
            },
        )
        .unwrap();
        assert_eq!(outcome.ack, vec![1]);
        assert!(outcome.print_error.is_some());
        assert!(w
            .store
            .contains(&SeenId::new(w.alice.public(), first.id))
            .unwrap());
        assert!(!w
            .store
            .contains(&SeenId::new(w.alice.public(), second.id))
            .unwrap());
    }

    fn file_offer(name: &str) -> Body {
        let offer = FileOffer {
            file_id: sotto_crypto::file::FileId::random(),
            name: name.to_owned(),
            size: 1234,
            hash: [0; 32],
            key: sotto_crypto::file::FileKey::generate(),
        };
        let mut b = Body::new(Content::File(offer));
        b.sent_at_ms = NOW * 1000;
        b
    }

    #[test]
    fn a_group_message_names_the_group_and_the_real_sender() {
        let w = world();
        let mallory = SecretKey::generate();
        let group = |group: &str, text: &str| {
            let mut b = Body::new(Content::GroupText {
                group: group.to_owned(),
                text: text.to_owned(),
            });
            b.sent_at_ms = NOW * 1000;
            b
        };
        let pending = vec![
            deliver(1, &w.alice, &w.me, &group("team", "hi all")),
            // A group name cannot pose as another sender or break the line.
            deliver(2, &mallory, &w.me, &group("team/alice\n\x1b", "x")),
            deliver(3, &mallory, &w.me, &group("", "y")),
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.ack, vec![1, 2, 3]);
        assert!(lines[0].ends_with("] team/alice: hi all"), "{}", lines[0]);
        assert!(
            lines[1].ends_with(&format!(
                "] team_alice_\\x1b/unknown {}: x",
                mallory.public()
            )),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with(&format!("] ?/unknown {}: y", mallory.public())));
        assert_eq!(outcome.messages.len(), 3);
        assert_eq!(outcome.messages[0].group.as_deref(), Some("team"));
        assert_eq!(outcome.messages[0].peer, Some(w.alice.public()));
    }

    #[test]
    fn inbox_keeps_an_offer_in_the_home_announces_it_once_and_acks_it() {
        let w = world();
        let offer = file_offer("report\x1b[2J.pdf");
        let pending = vec![
            deliver(1, &w.alice, &w.me, &offer),
            deliver(2, &w.alice, &w.me, &body("see the file", NOW * 1000)),
        ];
        let (outcome, lines) = run_batch(&w, pending);
        assert_eq!(outcome.ack, vec![1, 2]);
        assert_eq!((outcome.shown, outcome.announced), (1, 1));
        assert_eq!(outcome.waiting_files, 1);
        let time = local_time_ms(NOW * 1000).unwrap();
        assert_eq!(
            lines[0],
            format!("[{time}] alice: sent a file: report\\x1b[2J.pdf (1234 bytes) — run `sotto receive-all`")
        );
        assert!(w
            .store
            .contains(&SeenId::new(w.alice.public(), offer.id))
            .unwrap());
        // Kept, and saved: a fresh load of the home has it, with its key.
        let kept = Offers::load(&w._dir.path().join("offers.sealed"), &w.me).unwrap();
        assert_eq!(kept.list().len(), 1);
        let Content::File(sent) = &offer.content else {
            panic!()
        };
        assert_eq!(&kept.list()[0].offer, sent);
        assert_eq!(kept.list()[0].sender, w.alice.public());
        // Delivered again (an Ack that was lost): acknowledged, not announced.
        let (outcome, lines) = run_batch(&w, vec![deliver(1, &w.alice, &w.me, &offer)]);
        assert_eq!(outcome.ack, vec![1]);
        assert!(lines.is_empty());
        assert_eq!(outcome.waiting_files, 1);
    }

    #[test]
    fn receive_all_keeps_offers_in_order_and_acks_everything() {
        let w = world();
        let mallory = SecretKey::generate();
        let a = file_offer("a.txt");
        let b = file_offer("b.txt");
        let pending = vec![
            deliver(1, &w.alice, &w.me, &a),
            deliver(2, &w.alice, &w.me, &body("hi", NOW * 1000)),
            deliver(3, &mallory, &w.me, &b),
            deliver(4, &w.alice, &w.me, &a), // the same offer delivered twice
        ];
        let (outcome, lines) = run_batch_with(&w, pending, Files::Collect);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(outcome.ack, vec![1, 2, 3, 4]);
        let offers = w.offers.borrow();
        let kept: Vec<_> = offers
            .list()
            .iter()
            .map(|o| (o.offer.name.as_str(), o.sender))
            .collect();
        assert_eq!(
            kept,
            vec![("a.txt", w.alice.public()), ("b.txt", mallory.public())]
        );
        assert_eq!(offers.list()[0].message, a.id);
    }

    #[test]
    fn stale_messages_are_dropped_and_times_are_the_senders() {
        let w = world();
        let old = body("from long ago", (NOW - 31 * 24 * 3600) * 1000);
        let (outcome, lines) = run_batch(
            &w,
            vec![
                deliver(1, &w.alice, &w.me, &old),
                deliver(2, &w.alice, &w.me, &body("now", NOW * 1000)),
            ],
        );
        assert_eq!(outcome.ack, vec![1, 2]);
        assert_eq!(outcome.stale, 1);
        assert_eq!(lines.len(), 1);
        let expected = local_time_ms(NOW * 1000).unwrap();
        assert_eq!(lines[0], format!("[{expected}] alice: now"));
    }
}

mod sessions {
    use super::super::*;
    use sotto_crypto::session::SessionConfig;
    use sotto_keys::Contact;

    const NOW: u64 = 1_800_000_000;

    fn store_of(k: &SecretKey) -> SessionStore {
        SessionStore::new(k.public(), SessionConfig::default())
    }

    fn text(t: &str) -> Body {
        Body::new(Content::Text(t.to_owned()))
    }

    fn batch(
        me: &SecretKey,
        book: &ContactBook,
        seen: &SeenStore,
        sessions: &mut SessionStore,
        offers: &mut Offers,
        envelopes: &[Vec<u8>],
        files: Files,
    ) -> (Outcome, Vec<String>) {
        let pending = envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| Delivery {
                id: i as u64 + 1,
                received_at: NOW,
                envelope: e.clone(),
            })
            .collect();
        let mut lines = Vec::new();
        let outcome = process(
            me,
            book,
            seen,
            sessions,
            offers,
            pending,
            seen::now_secs(),
            files,
            &mut |l| {
                lines.push(l.to_owned());
                Ok(())
            },
        )
        .unwrap();
        (outcome, lines)
    }

    #[test]
    fn sessions_replies_replays_receipts_and_files_left_on_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
        let mut book = ContactBook::load(&dir.path().join("contacts.toml")).unwrap();
        book.add(Contact::new("alice".parse().unwrap(), alice.public(), None))
            .unwrap();
        let seen = SeenStore::open(&dir.path().join("seen.redb"), seen::now_secs()).unwrap();
        let (mut at_alice, mut at_bob) = (store_of(&alice), store_of(&bob));
        let mut bob_offers = Offers::load(&dir.path().join("bob-offers"), &bob).unwrap();
        let mut alice_offers = Offers::load(&dir.path().join("alice-offers"), &alice).unwrap();
        let now = SystemTime::now();

        // An init from a contact: shown, and answered with a bare accept.
        let first = at_alice
            .seal_to(&alice, &bob.public(), &text("one"), now)
            .unwrap();
        assert_eq!(first.envelope[1], 2);
        let (out, lines) = batch(
            &bob,
            &book,
            &seen,
            &mut at_bob,
            &mut bob_offers,
            &[first.envelope],
            Files::Announce,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(out.replies.len(), 1);
        assert_eq!(out.shown_ids.len(), 1);
        at_alice
            .open(&alice, &out.replies[0].envelope, now, |_| true)
            .unwrap();

        // Now forward-secret; the same bytes again are dropped, yet acked.
        let second = at_alice
            .seal_to(&alice, &bob.public(), &text("two"), now)
            .unwrap();
        assert_eq!(second.envelope[1], 4);
        let twice = [second.envelope.clone(), second.envelope];
        let (out, lines) = batch(
            &bob,
            &book,
            &seen,
            &mut at_bob,
            &mut bob_offers,
            &twice,
            Files::Announce,
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(out.ack, vec![1, 2]);
        assert_eq!(out.failed, 0);

        // A file offer is kept in the home and acknowledged; the same
        // envelope again is dropped, and acknowledged again.
        let offer = sotto_crypto::file::FileOffer {
            file_id: sotto_crypto::file::FileId::random(),
            name: "f.txt".into(),
            size: 1,
            hash: [0; 32],
            key: sotto_crypto::file::FileKey::generate(),
        };
        let file = at_alice
            .seal_to(&alice, &bob.public(), &Body::new(Content::File(offer)), now)
            .unwrap();
        for round in 0..2 {
            let (out, _) = batch(
                &bob,
                &book,
                &seen,
                &mut at_bob,
                &mut bob_offers,
                std::slice::from_ref(&file.envelope),
                Files::Collect,
            );
            assert_eq!(out.ack, vec![1]);
            assert_eq!(out.announced, usize::from(round == 0));
            assert_eq!(bob_offers.list().len(), 1);
        }

        // Bob's receipt for what he read reaches Alice as a receipt, not a message.
        let receipts =
            seal_receipts(&bob, &mut at_bob, &out_ids(&alice), &|_| ReceiptState::Read).unwrap();
        assert_eq!(receipts.len(), 1);
        let mut alice_book = ContactBook::load(&dir.path().join("alice.toml")).unwrap();
        let alice_seen = SeenStore::open(&dir.path().join("alice.redb"), seen::now_secs()).unwrap();
        let envs = [receipts[0].envelope.clone()];
        // From a stranger: ignored.
        let (out, lines) = batch(
            &alice,
            &alice_book,
            &alice_seen,
            &mut at_alice,
            &mut alice_offers,
            &envs,
            Files::Announce,
        );
        assert!(lines.is_empty() && out.receipts.is_empty());
        assert_eq!(out.ack, vec![1]);
        alice_book
            .add(Contact::new("bob".parse().unwrap(), bob.public(), None))
            .unwrap();
        let again =
            seal_receipts(&bob, &mut at_bob, &out_ids(&alice), &|_| ReceiptState::Read).unwrap();
        let (out, lines) = batch(
            &alice,
            &alice_book,
            &alice_seen,
            &mut at_alice,
            &mut alice_offers,
            &[again[0].envelope.clone()],
            Files::Announce,
        );
        assert!(lines.is_empty());
        assert_eq!(out.receipts.len(), 1);
        assert_eq!(out.receipts[0].state, ReceiptState::Read);
        assert_eq!(out.receipts[0].ids, vec![MessageId([7; 16])]);
    }

    fn out_ids(sender: &SecretKey) -> Vec<ShownMessage> {
        vec![ShownMessage {
            sender: sender.public(),
            group: None,
            id: MessageId([7; 16]),
        }]
    }
}
