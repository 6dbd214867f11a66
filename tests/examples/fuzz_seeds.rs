//! Writes the seed inputs of the fuzz targets and the `session_open` fixture.
//!
//! ```text
//! cargo run -p sotto-tests --example fuzz_seeds -- fuzz
//! ```
//!
//! Seeds are valid examples of each input, so a fuzzer starts past the
//! checks a random input never gets through (checksums, lengths, AEAD tags
//! under the targets' fixed keys). They go to `<dir>/corpus/<target>/seed-*`;
//! the fixture, a session store holding a confirmed session and a pending
//! init, to `<dir>/fixtures/session_store.bin`. Running it again makes new
//! session keys: commit the fixture and the session seeds together.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde_bytes::ByteBuf;
use sotto_crypto::envelope::{self, Body, Content, MessageId};
use sotto_crypto::file::{ChunkCipher, FileId, FileKey, FileOffer, CHUNK_LEN};
use sotto_crypto::fuzzing as cf;
use sotto_crypto::session::{SessionConfig, SessionStore};
use sotto_crypto::wire::{self, ClientHello, ClientMsg, ErrorCode, RelayHello, RelayMsg};
use sotto_keys::{Invite, Passphrase, PublicKey, RelayAddr, RelayKey, SecretKey};
use sotto_tests::fuzz::{self, text_body};
use zeroize::Zeroizing;

struct Out {
    dir: PathBuf,
}

impl Out {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.dir.join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

fn key(b: u8) -> SecretKey {
    SecretKey::from_bytes(Zeroizing::new([b; 32]))
}

fn bodies() -> Vec<(&'static str, Body)> {
    let offer = FileOffer {
        file_id: FileId([9; 16]),
        name: "photo.jpg".into(),
        size: 3 * CHUNK_LEN as u64 + 5,
        hash: [4; 32],
        key: FileKey::from_parts(Zeroizing::new([5; 32]), [6; 7]),
    };
    vec![
        ("text", text_body("hello")),
        ("long", text_body(&"x".repeat(2000))),
        ("file", Body::new(Content::File(offer))),
        (
            "group",
            Body {
                id: MessageId([1; 16]),
                sent_at_ms: 1_767_225_600_000,
                content: Content::GroupText {
                    group: "friends".into(),
                    text: "hi all".into(),
                },
            },
        ),
        (
            "reach",
            Body {
                id: MessageId([2; 16]),
                sent_at_ms: 1_767_225_600_000,
                content: Content::Reach(envelope::Reach {
                    seq: 1_767_225_600_000,
                    relay: "relay.example:7300".parse().unwrap(),
                    relay_key: sotto_keys::RelayKey::from_bytes([1; 32]),
                    token: sotto_keys::DeliveryToken::from_bytes([3; 16]),
                }),
            },
        ),
    ]
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz".into());
    let out = Out {
        dir: PathBuf::from(dir),
    };
    let alice = key(0xA1);
    let recipient = fuzz::recipient_key();
    let k = PublicKey::from_bytes([0xAB; 32]);
    let file_id = FileId([0x1D; 16]);

    // Records on the TCP stream, after a reader's maximum.
    let mut frame = 512u16.to_le_bytes().to_vec();
    for body in [&b"hello"[..], &[7; 300]] {
        frame.extend((body.len() as u16).to_be_bytes());
        frame.extend(body);
    }
    out.put("frame", "two-records", &frame);

    // Record plaintexts: one message in one record, one across two.
    let mut link = Vec::new();
    let msg = wire::encode(&ClientMsg::Ping);
    let mut rec = (msg.len() as u32).to_le_bytes().to_vec();
    rec.extend(&msg);
    link.extend((rec.len() as u16).to_le_bytes());
    link.extend(&rec);
    let msg = wire::encode(&ClientMsg::Ack {
        req: 3,
        ids: vec![1, 2, 3],
    });
    let (a, b) = msg.split_at(2);
    let mut rec = (msg.len() as u32).to_le_bytes().to_vec();
    rec.extend(a);
    link.extend((rec.len() as u16).to_le_bytes());
    link.extend(&rec);
    link.extend((b.len() as u16).to_le_bytes());
    link.extend(b);
    out.put("link_framing", "messages", &link);

    let client_msgs = [
        ClientMsg::Send {
            req: 1,
            to: k,
            envelope: ByteBuf::from(vec![1, 2, 3]),
        },
        ClientMsg::Fetch { live: true },
        ClientMsg::Ack {
            req: 300,
            ids: vec![5, 70000],
        },
        ClientMsg::Ping,
        ClientMsg::UploadBegin {
            req: 2,
            file_id,
            to: k,
            size: 1 << 20,
        },
        ClientMsg::UploadChunk {
            file_id,
            index: 1,
            data: ByteBuf::from(vec![0; 40]),
        },
        ClientMsg::UploadEnd { req: 4, file_id },
        ClientMsg::Download {
            req: 5,
            file_id,
            from: 2,
        },
        ClientMsg::DeleteBlob { req: 6, file_id },
    ];
    for (i, m) in client_msgs.iter().enumerate() {
        out.put("wire_client", &format!("msg{i}"), &wire::encode(m));
    }
    out.put(
        "wire_client",
        "hello",
        &wire::encode(&ClientHello { version: 1 }),
    );
    let relay_msgs = [
        RelayMsg::Stored { req: 1 },
        RelayMsg::Deliver {
            id: 9,
            received_at: 1_767_225_600,
            envelope: ByteBuf::from(vec![1, 1, 5]),
        },
        RelayMsg::Drained,
        RelayMsg::Acked { req: 2, deleted: 1 },
        RelayMsg::Pong,
        RelayMsg::Error {
            req: 3,
            code: ErrorCode::QuotaExceeded,
            detail: "mailbox full".into(),
        },
        RelayMsg::UploadState {
            req: 4,
            file_id,
            have: 2,
        },
        RelayMsg::UploadProgress { file_id, have: 3 },
        RelayMsg::UploadDone { req: 5, file_id },
        RelayMsg::DownloadChunk {
            file_id,
            index: 0,
            data: ByteBuf::from(vec![0; 20]),
        },
        RelayMsg::DownloadEnd { req: 6, file_id },
        RelayMsg::BlobDeleted {
            req: 7,
            deleted: true,
        },
    ];
    for (i, m) in relay_msgs.iter().enumerate() {
        out.put("wire_relay", &format!("msg{i}"), &wire::encode(m));
    }
    out.put(
        "wire_relay",
        "hello",
        &wire::encode(&RelayHello {
            version: 1,
            max_envelope_len: 65_561,
        }),
    );

    for (name, body) in bodies() {
        let env = envelope::seal(&alice, &recipient.public(), &body).unwrap();
        out.put("envelope_open", name, &env);
        let mut padded = vec![0];
        padded.extend(cf::pad(&body).unwrap());
        out.put("envelope_body", &format!("padded-{name}"), &padded);
        let mut bare = vec![1];
        bare.extend(postcard::to_stdvec(&body).unwrap());
        out.put("envelope_body", &format!("body-{name}"), &bare);
        if let Content::File(offer) = &body.content {
            let mut o = vec![2];
            o.extend(postcard::to_stdvec(offer).unwrap());
            out.put("envelope_body", "offer", &o);
        }
    }

    sessions(&out);

    // File chunks sealed under the target's key and id.
    let (fkey, fid) = fuzz::chunk_key();
    for (size, index) in [(0u64, 0u64), (10, 0), (CHUNK_LEN as u64 + 5, 1)] {
        let cipher = ChunkCipher::new(&fkey, fid, size).unwrap();
        let len = sotto_crypto::file::chunk_len(size, index).unwrap();
        let mut buf = vec![0x33; len];
        cipher.seal(index, &mut buf).unwrap();
        let head = |mode: u8| {
            let mut v = size.to_le_bytes().to_vec();
            v.extend(index.to_le_bytes());
            v.push(mode);
            v
        };
        let mut raw = head(0);
        raw.extend(&buf);
        out.put("file_chunk", &format!("sealed-{size}-{index}"), &raw);
        let mut up = head(1);
        up.extend(wire::encode(&ClientMsg::UploadChunk {
            file_id: fid,
            index,
            data: ByteBuf::from(buf.clone()),
        }));
        out.put("file_chunk", &format!("upload-{size}-{index}"), &up);
        let mut down = head(2);
        down.extend(wire::encode(&RelayMsg::DownloadChunk {
            file_id: fid,
            index,
            data: ByteBuf::from(buf),
        }));
        out.put("file_chunk", &format!("download-{size}-{index}"), &down);
        let mut plain = head(3);
        plain.extend(vec![0x33; len]);
        out.put("file_chunk", &format!("plain-{size}-{index}"), &plain);
    }

    let relay_key = RelayKey::from(key(0x77).public());
    let invite = Invite {
        key: alice.public(),
        relay: "relay.example.org:7300".parse::<RelayAddr>().unwrap(),
        relay_key,
        token: Some(sotto_keys::DeliveryToken::from_bytes([0x55; 16])),
    };
    for (name, s) in [
        ("public", alice.public().to_string()),
        ("relay-key", relay_key.to_string()),
        ("invite", invite.to_string()),
        ("addr", "relay.example.org:7300".into()),
        ("addr6", "[2001:db8::1]:443".into()),
        ("name", "alice_2.b-c".into()),
    ] {
        out.put("key_strings", name, s.as_bytes());
    }

    let plain = sotto_keys::fuzzing::render_plain(&alice).unwrap();
    out.put("keyfile", "plain", plain.as_bytes());
    let pass = Passphrase::new(fuzz::KEYFILE_PASSPHRASE.into()).unwrap();
    let enc =
        sotto_keys::fuzzing::render_encrypted(&alice, &pass, (8, 1, 1), [2; 16], [3; 12]).unwrap();
    out.put("keyfile", "encrypted", enc.as_bytes());

    let contacts = format!(
        "# my contacts\n[contacts.alice]\nkey = \"{}\"\nrelay = \"relay.example.org:7300\"\nverified = true\nadded = \"2026-01-01T00:00:00Z\"\n\n[contacts.bob]\nkey = \"{}\"\n\n[groups.friends]\nmembers = [\"alice\", \"bob\"]\n",
        alice.public(),
        key(0xB0).public()
    );
    out.put("contacts", "book", contacts.as_bytes());
    out.put(
        "client_config",
        "config",
        format!("name = \"alice\"\nrelay = \"127.0.0.1:7300\"\nrelay_key = \"{relay_key}\"\n")
            .as_bytes(),
    );
    out.put(
        "relay_config",
        "full",
        format!(
            "listen = \"127.0.0.1:7300\"\ndata = \"data\"\nmax_connections = 100\nmax_handshakes = 10\nhandshake_timeout = \"10s\"\nidle_timeout = \"5m\"\ngc_interval = \"1h\"\nallow = [\"{}\"]\n\n[mailbox]\nexpiry = \"7days\"\nmax_messages = 1000\nmax_bytes = 1000000\n\n[files]\nmax_file_size = 1000000\nmax_bytes_per_recipient = 5000000\nmax_files_per_recipient = 10\nexpiry = \"3days\"\ncheckpoint_bytes = 4194304\n",
            alice.public()
        )
        .as_bytes(),
    );

    let mut blob = vec![3];
    blob.extend([0xAA; 32]);
    blob.extend([0xBB; 32]);
    blob.extend((CHUNK_LEN as u64 * 2).to_be_bytes());
    blob.extend(2u64.to_be_bytes());
    blob.push(1);
    blob.extend(1_767_225_600u64.to_be_bytes());
    blob.extend(1_767_225_601u64.to_be_bytes());
    out.put("relay_codec", "blob", &blob);
    let mut message = vec![0];
    message.extend(1_767_225_600u64.to_be_bytes());
    message.extend([1, 1, 9, 9]);
    out.put("relay_codec", "message", &message);
    let mut usage = vec![1];
    usage.extend(3u64.to_be_bytes());
    usage.extend(700u64.to_be_bytes());
    out.put("relay_codec", "usage", &usage);
    usage[0] = 2;
    out.put("relay_codec", "blob-usage", &usage);
    let mut expiry = vec![4];
    expiry.extend([0xAA; 32]);
    expiry.extend(1_767_225_600u64.to_be_bytes());
    out.put("relay_codec", "expiry", &expiry);
    let mut meta = vec![5];
    meta.extend(1u64.to_be_bytes());
    out.put("relay_codec", "meta", &meta);

    let state = sotto_client::upload_state::UploadState {
        file_id: FileId([0x11; 16]),
        key: FileKey::from_parts(Zeroizing::new([0x22; 32]), [0x33; 7]),
        fingerprint: sotto_client::upload_state::Fingerprint {
            size: 3 * CHUNK_LEN as u64 + 5,
            mtime: (1_700_000_000, 123_456_789),
            inode: (2049, 42),
        },
    };
    out.put("upload_state", "state", state.encode().as_bytes());

    // The client's sealed files, past their AEAD.
    let offers = vec![sotto_client::offers::StoredOffer {
        sender: PublicKey::from_bytes([0x44; 32]),
        message: MessageId([0x55; 16]),
        sent_at_ms: 1_767_225_600_000,
        received_at: 1_767_225_601,
        offer: FileOffer {
            file_id: FileId([0x66; 16]),
            name: "report.pdf".into(),
            size: 12_345,
            hash: [0x77; 32],
            key: FileKey::from_parts(Zeroizing::new([0x88; 32]), [0x99; 7]),
        },
        kind: sotto_client::offers::OfferKind::File,
    }];
    let mut home = vec![0];
    home.extend(postcard::to_stdvec(&offers).unwrap());
    out.put("home_files", "offers", &home);
    let entry = sotto_client::history::Entry {
        at_ms: 1_767_225_600_000,
        direction: sotto_client::history::Direction::Received,
        peer: Some(PublicKey::from_bytes([0x44; 32])),
        group: Some("team".into()),
        text: "see you at 8".into(),
    };
    let mut home = vec![1];
    home.extend(postcard::to_stdvec(&entry).unwrap());
    out.put("home_files", "history-entry", &home);
    // A header's worth of bytes, two whole records of 50 and 60 bytes, a torn one.
    let mut home = vec![2];
    home.extend([0u8; 55]);
    for len in [50u32, 60] {
        home.extend(len.to_le_bytes());
        home.extend(vec![0xEE; len as usize]);
    }
    home.extend(200u32.to_le_bytes());
    home.extend([1, 2, 3]);
    out.put("home_files", "history-file", &home);

    // Directory trees: a plain one with contents, and one a hostile sender
    // wrote (traversal, a duplicate after cleaning, a file used as a dir).
    use sotto_client::tree::{encode_header, Entry, EntryKind};
    let entry = |path: &[&str], kind| Entry {
        path: path.iter().map(|s| s.to_string()).collect(),
        kind,
    };
    let mut plain = encode_header(&[
        entry(&["photos"], EntryKind::Dir),
        entry(&["photos", "a.jpg"], EntryKind::File { size: 3 }),
        entry(&["empty"], EntryKind::Dir),
        entry(&["grüße.txt"], EntryKind::File { size: 0 }),
    ])
    .unwrap();
    plain.extend(b"jpg");
    out.put("tree_manifest", "plain", &plain);
    let hostile = encode_header(&[
        entry(&["..", "x"], EntryKind::File { size: 0 }),
        entry(&["a\\b"], EntryKind::Dir),
        entry(&["a\\b", "c"], EntryKind::File { size: 0 }),
        entry(&["CON"], EntryKind::File { size: 0 }),
        entry(&["_CON"], EntryKind::File { size: 0 }),
    ])
    .unwrap();
    out.put("tree_manifest", "hostile", &hostile);
}

/// The `session_open` fixture and seeds of every envelope kind for it, and
/// a saved store for `session_state`.
fn sessions(out: &Out) {
    let [bob, alice, carol, stranger] = fuzz::session_parties();
    let t0 = UNIX_EPOCH + Duration::from_millis(fuzz::SESSION_T0_MS);
    let all = |_: &PublicKey| true;
    let mut bob_s = SessionStore::new(bob.public(), SessionConfig::default());
    let mut alice_s = SessionStore::new(alice.public(), SessionConfig::default());
    let mut carol_s = SessionStore::new(carol.public(), SessionConfig::default());

    // A confirmed session between alice and bob.
    let init = alice_s
        .seal_to(&alice, &bob.public(), &text_body("hello"), t0)
        .unwrap();
    let got = bob_s.open(&bob, &init.envelope, t0, all).unwrap();
    alice_s.open(&alice, &got.reply.unwrap(), t0, all).unwrap();
    let second = alice_s
        .seal_to(&alice, &bob.public(), &text_body("second"), t0)
        .unwrap();
    bob_s.open(&bob, &second.envelope, t0, all).unwrap();

    // Bob's init to carol, still pending: carol's answers reach it.
    let to_carol = bob_s
        .seal_to(&bob, &carol.public(), &text_body("hi carol"), t0)
        .unwrap();
    let carol_got = carol_s.open(&carol, &to_carol.envelope, t0, all).unwrap();

    let fixture = bob_s.encode().unwrap();
    let path = out.dir.join("fixtures").join("session_store.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &fixture[..]).unwrap();
    out.put("session_state", "store", &fixture);

    let put = |name: &str, env: &[u8]| out.put("session_open", name, env);
    let third = alice_s
        .seal_to(&alice, &bob.public(), &text_body("third"), t0)
        .unwrap();
    assert_eq!(third.envelope[1], 4);
    put("kind4", &third.envelope);
    put("kind3-bare", &carol_got.reply.unwrap());
    let answer = carol_s
        .seal_to(&carol, &bob.public(), &text_body("hi bob"), t0)
        .unwrap();
    assert_eq!(answer.envelope[1], 3);
    put("kind3", &answer.envelope);
    let mut stranger_s = SessionStore::new(stranger.public(), SessionConfig::default());
    let init = stranger_s
        .seal_to(&stranger, &bob.public(), &text_body("who?"), t0)
        .unwrap();
    assert_eq!(init.envelope[1], 2);
    put("kind2", &init.envelope);
    put(
        "kind1",
        &envelope::seal(&stranger, &bob.public(), &text_body("one shot")).unwrap(),
    );
}
