//! A stranger who knows a key against the relay's storage: reservations that
//! would block a contact's file drop, uploads left without bytes, and one
//! sender writing to many recipients until the relay-wide budget refuses.

use std::path::Path;
use std::time::Duration;

use serde_bytes::ByteBuf;

use sotto_crypto::file::{self, FileId};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_keys::PublicKey;
use sotto_tests::raw::Raw;
use sotto_tests::{Client, Relay};

const CHUNK: u64 = file::CHUNK_LEN as u64;

/// Deterministic content of `len` bytes.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// `UploadBegin` on a raw link; the relay's answer.
async fn begin(raw: &mut Raw, req: u32, file_id: FileId, to: PublicKey, size: u64) -> RelayMsg {
    raw.send(&ClientMsg::UploadBegin {
        req,
        file_id,
        to,
        size,
    })
    .await;
    loop {
        match raw.recv().await {
            RelayMsg::UploadProgress { .. } => {}
            answer => return answer,
        }
    }
}

fn sends_file_to(sender: &Client, to: &str, path: &Path) -> sotto_tests::Run {
    sender.run(&["send-file", to, path.to_str().unwrap()])
}

#[test]
fn a_strangers_repeated_reservations_do_not_block_a_contacts_file_drop() {
    // Bob may hold 32 chunks of files; a file is at most 8 chunks.
    let quota = file::sealed_len(32 * CHUNK);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        Some(&format!(
            "[files]\nmax_file_size = {}\nmax_bytes_per_recipient = {quota}\ncheckpoint_bytes = {CHUNK}\n",
            8 * CHUNK
        )),
    );
    let (alice, bob) = Client::pair(&relay);
    let mallory = Client::new(&relay);
    let bob_key: PublicKey = bob.key.parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    // Mallory begins as many of the largest uploads to bob as the relay takes,
    // sends not a byte, and begins them all again, keeping the link open.
    let (mut raw, accepted) = rt.block_on(async {
        let mut raw = Raw::connect(&relay.addr, &mallory.secret(), &relay.key).await;
        let ids: Vec<FileId> = (0..6).map(|_| FileId::random()).collect();
        let mut accepted = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match begin(&mut raw, i as u32 + 1, *id, bob_key, 8 * CHUNK).await {
                RelayMsg::UploadState { have: 0, .. } => accepted.push(*id),
                RelayMsg::Error {
                    code: ErrorCode::QuotaExceeded,
                    ..
                } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        for round in 0..3 {
            for (i, id) in accepted.iter().enumerate() {
                let req = 100 * (round + 1) + i as u32;
                let again = begin(&mut raw, req, *id, bob_key, 8 * CHUNK).await;
                assert!(
                    matches!(again, RelayMsg::UploadState { have: 0, .. }),
                    "{again:?}"
                );
            }
        }
        (raw, accepted)
    });
    eprintln!("the relay took {} of mallory's uploads", accepted.len());
    // One uploader holds at most its share of bob's quota (one largest file).
    assert_eq!(accepted.len(), 1, "a stranger may still drop a file, once");

    // While mallory holds on, alice (a contact) drops the largest file.
    let src = tempfile::tempdir().unwrap();
    let bytes = content(8 * CHUNK as usize, 3);
    let path = src.path().join("holiday.bin");
    std::fs::write(&path, &bytes).unwrap();
    let sent = sends_file_to(&alice, "bob", &path);
    assert!(
        sent.out.status.success(),
        "alice's upload was refused: {}",
        sent.stderr()
    );
    let out = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    assert!(std::fs::read(out.path().join("holiday.bin")).unwrap() == bytes);

    // Mallory's link stayed usable all along.
    rt.block_on(async {
        raw.send(&ClientMsg::Ping).await;
        assert_eq!(raw.recv().await, RelayMsg::Pong);
    });
}

#[test]
fn an_upload_that_sends_nothing_gives_its_room_back_and_is_forgotten() {
    // Bob may hold one largest file, and a window is the whole of it.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        Some(&format!(
            "[files]\nmax_file_size = {size}\nmax_bytes_per_recipient = {quota}\n\
             checkpoint_bytes = {checkpoint}\nuploader_share_percent = 100\n\
             upload_idle_timeout = \"1s\"\n",
            size = 8 * CHUNK,
            quota = file::sealed_len(8 * CHUNK),
            checkpoint = 4 * CHUNK,
        )),
    );
    let (alice, bob) = Client::pair(&relay);
    let mallory = Client::new(&relay);
    let bob_key: PublicKey = bob.key.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = FileId::random();
    let mut raw = rt.block_on(async {
        let mut raw = Raw::connect(&relay.addr, &mallory.secret(), &relay.key).await;
        let begun = begin(&mut raw, 1, id, bob_key, 8 * CHUNK).await;
        assert!(
            matches!(begun, RelayMsg::UploadState { have: 0, .. }),
            "{begun:?}"
        );
        raw
    });
    // Mallory's link stays open and silent; her empty upload goes away.
    let blob = relay.data.join("blobs").join(id.to_string());
    // A guard against a relay that never lets go, not a timing assertion.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while blob.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the empty upload kept its room"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let src = tempfile::tempdir().unwrap();
    let bytes = content(8 * CHUNK as usize, 5);
    let path = src.path().join("whole-quota.bin");
    std::fs::write(&path, &bytes).unwrap();
    let sent = sends_file_to(&alice, "bob", &path);
    assert!(sent.out.status.success(), "{}", sent.stderr());

    // When mallory goes on after all, her upload is begun again only if
    // there is room: there is none now, and she is told so.
    rt.block_on(async {
        let data = vec![0u8; file::SEALED_CHUNK_LEN];
        raw.send(&ClientMsg::UploadChunk {
            file_id: id,
            index: 0,
            data: ByteBuf::from(data),
        })
        .await;
        let notice = raw.recv().await;
        assert!(
            matches!(
                notice,
                RelayMsg::Error {
                    req: 0,
                    code: ErrorCode::QuotaExceeded,
                    ..
                }
            ),
            "{notice:?}"
        );
        raw.send(&ClientMsg::Ping).await;
        assert_eq!(raw.recv().await, RelayMsg::Pong);
    });
    let out = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out.path().to_str().unwrap()])
        .ok();
    assert!(std::fs::read(out.path().join("whole-quota.bin")).unwrap() == bytes);
}

#[test]
fn one_sender_writing_to_many_recipients_is_stopped_by_the_storage_budget() {
    const BUDGET: u64 = 200_000;
    const LEN: usize = 4_000;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        &dir.path().join("relay"),
        Some(&format!("[limits]\nmax_stored_bytes = {BUDGET}\n")),
    );
    let (alice, bob) = Client::pair(&relay);
    alice.run(&["send", "bob", "before the flood"]).ok();
    let mallory = Client::new(&relay);
    let victims: Vec<sotto_keys::SecretKey> = (0..100)
        .map(|_| sotto_keys::SecretKey::generate())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Mallory writes to one fresh recipient after another: no mailbox quota
    // is ever reached, only the budget.
    let flooded = rt.block_on(async {
        let mut raw = Raw::connect(&relay.addr, &mallory.secret(), &relay.key).await;
        for (i, victim) in victims.iter().enumerate() {
            let req = i as u32 + 1;
            raw.send(&ClientMsg::Send {
                req,
                to: victim.public(),
                envelope: ByteBuf::from(vec![i as u8; LEN]),
            })
            .await;
            match raw.recv().await {
                RelayMsg::Stored { req: r } if r == req => {}
                RelayMsg::Error {
                    code: ErrorCode::OutOfSpace,
                    ..
                } => {
                    // Files are refused as well (what is left is less than LEN).
                    let size = LEN as u64;
                    let file = begin(&mut raw, 999, FileId::random(), victim.public(), size).await;
                    assert!(
                        matches!(
                            file,
                            RelayMsg::Error {
                                code: ErrorCode::OutOfSpace,
                                ..
                            }
                        ),
                        "{file:?}"
                    );
                    // Then the rest, in small envelopes, to the brim.
                    for small in 1000.. {
                        raw.send(&ClientMsg::Send {
                            req: small,
                            to: sotto_keys::SecretKey::generate().public(),
                            envelope: ByteBuf::from(vec![1u8; 100]),
                        })
                        .await;
                        if !matches!(raw.recv().await, RelayMsg::Stored { .. }) {
                            break;
                        }
                    }
                    return i;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("the budget never refused");
    });
    eprintln!("the budget of {BUDGET} bytes took {flooded} envelopes of {LEN} bytes");
    assert!(flooded > 0 && flooded as u64 * LEN as u64 <= BUDGET);
    assert!(BUDGET - (flooded as u64 * LEN as u64) < 2 * LEN as u64);

    // Refused data is refused cleanly; what is stored is all there: bob
    // reads alice's message, and a flooded recipient its envelope, which
    // frees room for alice again.
    let err = alice.run(&["send", "bob", "during the flood"]).fails();
    assert!(err.contains("out of disk space"), "{err}");
    assert!(bob.run(&["inbox"]).ok().contains("alice: before the flood"));
    rt.block_on(async {
        let mut raw = Raw::connect(&relay.addr, &victims[0], &relay.key).await;
        let got = raw.fetch_all().await;
        assert_eq!(got, [(got[0].0, vec![0u8; LEN])]);
        raw.send(&ClientMsg::Ack {
            req: 1,
            ids: vec![got[0].0],
        })
        .await;
        assert!(matches!(
            raw.recv().await,
            RelayMsg::Acked { deleted: 1, .. }
        ));
    });
    alice.run(&["send", "bob", "after the flood"]).ok();

    // A restart (SIGKILL) keeps every stored byte, and counts them again.
    relay.restart();
    assert!(bob.run(&["inbox"]).ok().contains("alice: after the flood"));
    rt.block_on(async {
        let last = &victims[flooded - 1];
        let mut raw = Raw::connect(&relay.addr, last, &relay.key).await;
        let got = raw.fetch_all().await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, vec![(flooded - 1) as u8; LEN]);
        let mut raw = Raw::connect(&relay.addr, &mallory.secret(), &relay.key).await;
        raw.send(&ClientMsg::Send {
            req: 1,
            to: victims[flooded].public(),
            envelope: ByteBuf::from(vec![0u8; 3 * LEN]),
        })
        .await;
        assert!(matches!(
            raw.recv().await,
            RelayMsg::Error {
                code: ErrorCode::OutOfSpace,
                ..
            }
        ));
    });
    let (ok, log) = relay.terminate();
    assert!(ok, "{log}");
    assert!(log.contains("storage budget is full"), "{log}");
}
