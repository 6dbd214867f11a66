//! The known-answer vectors of docs/PROTOCOL.md, recomputed with the real code.
//!
//! The protocol document is what an independent client is written from, so its
//! vectors must be the code's output, not a copy that drifts. It carries them
//! in fenced blocks tagged `vectors`: a `vector: NAME` line, then `field: value`
//! lines (`#` starts a comment line; byte strings are lower-case hex). Each
//! test below reads one block, takes its inputs (keys, ids, texts), recomputes
//! every output with the functions the client and relay use, and compares.
//! A field the test does not check is an error too, so nothing in a block goes
//! unverified; a mismatch names the block, the field and what the code computes.
//!
//! Ephemeral keys are fixed through snow's testing hook (the
//! `*_with_ephemeral` seams of `envelope` and `link`, and the queue of
//! `session::fixed` for session ids and ephemerals), which makes the envelope,
//! the link transcript and the session envelopes deterministic. File chunks
//! need no seam: their key and nonce prefix are inputs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use serde_bytes::ByteBuf;
use sotto_keys::{
    keyfile, safety_number, DeliveryToken, Invite, Passphrase, PublicKey, RelayKey, SecretKey,
};
use tokio::io::AsyncWrite;
use zeroize::Zeroizing;

use crate::delivery;
use crate::envelope::{self, Body, Content, MessageId};
use crate::file::{self, ChunkCipher, ContentHash, FileId, FileKey, FileOffer};
use crate::link::{self, LINK_VERSION};
use crate::session::{self, SessionConfig, SessionId, SessionStore};
use crate::wire::{self, ClientHello, ClientMsg, DeliveryMsg, ErrorCode, RelayHello, RelayMsg};

const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");

/// Every vector block the document must contain, and nothing else.
const VECTORS: [&str; 14] = [
    "delivery-link-handshake",
    "envelope",
    "file-chunks",
    "file-layout",
    "file-offer",
    "invite",
    "key-file",
    "key-strings",
    "link-handshake",
    "pairing",
    "reach-body",
    "safety-number",
    "session",
    "wire",
];

type Blocks = BTreeMap<String, BTreeMap<String, String>>;

/// Reads every ```` ```vectors ```` block of the document.
fn blocks() -> Blocks {
    let mut out = Blocks::new();
    let mut lines = PROTOCOL_MD.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        if line.trim_end() != "```vectors" {
            continue;
        }
        let mut name = None;
        let mut fields = BTreeMap::new();
        let mut closed = false;
        for (number, line) in lines.by_ref() {
            let line = line.trim_end();
            if line == "```" {
                closed = true;
                break;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("docs/PROTOCOL.md:{}", number + 1);
            let (key, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("{at}: a vector line is `field: value`"));
            if key == "vector" {
                assert!(name.is_none(), "{at}: a second `vector:` line in one block");
                name = Some(value.to_owned());
            } else {
                assert!(name.is_some(), "{at}: a block starts with `vector: NAME`");
                let old = fields.insert(key.to_owned(), value.to_owned());
                assert!(old.is_none(), "{at}: field `{key}` given twice");
            }
        }
        assert!(closed, "docs/PROTOCOL.md: a vectors block is not closed");
        let name = name.expect("docs/PROTOCOL.md: an empty vectors block");
        assert!(
            out.insert(name.clone(), fields).is_none(),
            "docs/PROTOCOL.md: two blocks named `{name}`"
        );
    }
    out
}

/// One block under test: hands out its fields, records what was checked and
/// every disagreement, and fails once, at the end, with all of them.
struct Vector {
    name: &'static str,
    fields: BTreeMap<String, String>,
    used: RefCell<BTreeSet<String>>,
    failures: RefCell<Vec<String>>,
}

impl Vector {
    fn load(name: &'static str) -> Self {
        let fields = blocks()
            .remove(name)
            .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no `vector: {name}` block"));
        Self {
            name,
            fields,
            used: RefCell::default(),
            failures: RefCell::default(),
        }
    }

    fn get(&self, field: &str) -> &str {
        self.used.borrow_mut().insert(field.to_owned());
        self.fields
            .get(field)
            .unwrap_or_else(|| panic!("vector `{}` lacks the field `{field}`", self.name))
    }

    fn hex(&self, field: &str) -> Vec<u8> {
        from_hex(self.get(field))
            .unwrap_or_else(|| panic!("vector `{}`, `{field}`: not hex", self.name))
    }

    fn array<const N: usize>(&self, field: &str) -> [u8; N] {
        self.hex(field)
            .try_into()
            .unwrap_or_else(|_| panic!("vector `{}`, `{field}`: not {N} bytes", self.name))
    }

    fn number<T: std::str::FromStr>(&self, field: &str) -> T {
        self.get(field)
            .parse()
            .unwrap_or_else(|_| panic!("vector `{}`, `{field}`: not a number", self.name))
    }

    fn secret(&self, field: &str) -> SecretKey {
        SecretKey::from_bytes(Zeroizing::new(self.array(field)))
    }

    /// Compares a documented output with what the code computes.
    fn expect(&self, field: &str, computed: impl AsRef<str>) {
        let computed = computed.as_ref();
        if self.get(field) != computed {
            self.fail(format!("`{field}`: the code computes\n{field}: {computed}"));
        }
    }

    fn expect_hex(&self, field: &str, computed: &[u8]) {
        self.expect(field, to_hex(computed));
    }

    fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.fail(what.to_owned());
        }
    }

    fn fail(&self, what: String) {
        self.failures.borrow_mut().push(what);
    }

    fn finish(self) {
        let used = self.used.into_inner();
        let mut failures = self.failures.into_inner();
        for field in self.fields.keys().filter(|f| !used.contains(*f)) {
            failures.push(format!("`{field}` is not checked by crypto/src/vectors.rs"));
        }
        assert!(
            failures.is_empty(),
            "docs/PROTOCOL.md, vector `{}` disagrees with the code:\n{}",
            self.name,
            failures.join("\n")
        );
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The data part of a bech32m string, as bytes. The checksum is not verified
/// here: the real parsers that each test also runs do that.
fn bech32_data(s: &str) -> Vec<u8> {
    const CHARSET: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let s = s.to_ascii_lowercase();
    let separator = s.rfind('1').expect("a bech32 string has a separator");
    let data = &s[separator + 1..s.len() - 6];
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in data.chars() {
        let value = CHARSET.find(c).expect("a bech32 character") as u32;
        acc = (acc << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    out
}

#[test]
fn the_document_holds_exactly_the_checked_vectors() {
    let names: Vec<String> = blocks().into_keys().collect();
    assert_eq!(names, VECTORS);
}

#[test]
fn key_strings() {
    let v = Vector::load("key-strings");
    let zero = PublicKey::from_bytes(v.array("zero_bytes"));
    v.expect("zero_user", zero.to_string());
    v.expect("zero_relay", RelayKey::from(zero).to_string());
    // The all-zero key shows the encoding only: it is a low-order point, and
    // parsing refuses it.
    v.check(
        v.get("zero_user").parse::<PublicKey>() == Err(sotto_keys::KeyStringError::Weak),
        "`zero_user` must be refused as weak",
    );
    v.check(
        v.get("zero_relay").parse::<RelayKey>() == Err(sotto_keys::KeyStringError::Weak),
        "`zero_relay` must be refused as weak",
    );
    for (who, string, as_relay) in [("alice", "alice_user", false), ("bob", "bob_relay", true)] {
        let secret = v.secret(&format!("{who}_secret"));
        let public = secret.public();
        v.expect_hex(&format!("{who}_public"), public.as_bytes());
        if as_relay {
            v.expect(string, RelayKey::from(public).to_string());
            v.check(
                v.get(string).parse::<RelayKey>() == Ok(RelayKey::from(public)),
                "`bob_relay` does not parse back",
            );
        } else {
            v.expect(string, public.to_string());
            v.check(
                v.get(string).parse::<PublicKey>() == Ok(public),
                "`alice_user` does not parse back",
            );
        }
    }
    v.finish();
}

/// A key file in the temporary directory, mode 0600, removed on drop.
struct TempKeyFile(PathBuf);

impl TempKeyFile {
    fn new(tag: &str, line: &str) -> Self {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path =
            std::env::temp_dir().join(format!("sotto-vectors-{}-{tag}.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create a temporary key file");
        writeln!(file, "{line}").expect("write a temporary key file");
        Self(path)
    }
}

impl Drop for TempKeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn key_file() {
    let v = Vector::load("key-file");
    let secret: [u8; 32] = v.array("secret");

    let plain = v.get("plain");
    v.check(
        plain.starts_with("SOTTO-SECRET-KEY-1"),
        "`plain` does not start with SOTTO-SECRET-KEY-1",
    );
    v.check(
        bech32_data(plain) == secret,
        "`plain` does not hold `secret`",
    );
    let file = TempKeyFile::new("plain", plain);
    let key = keyfile::load(&file.0, || Err(sotto_keys::Error::EmptyPassphrase));
    v.check(
        key.is_ok_and(|k| *k.to_bytes() == secret),
        "`plain` does not load as `secret`",
    );

    let mut header = vec![1u8];
    for field in ["m_cost_kib", "t_cost", "p_cost"] {
        header.extend(v.number::<u32>(field).to_be_bytes());
    }
    header.extend(v.array::<16>("salt"));
    header.extend(v.array::<12>("nonce"));
    let encrypted = v.get("encrypted");
    v.check(
        encrypted.starts_with("SOTTO-ENCRYPTED-KEY-1"),
        "`encrypted` does not start with SOTTO-ENCRYPTED-KEY-1",
    );
    let data = bech32_data(encrypted);
    v.expect_hex("encrypted_data", &data);
    v.check(
        data.len() == 89 && data[..41] == header[..],
        "`encrypted_data` does not start with 01 | m | t | p | salt | nonce",
    );
    // Opening checks the AEAD tag over exactly that header: a successful load
    // with the documented passphrase proves the ciphertext and tag.
    let file = TempKeyFile::new("encrypted", encrypted);
    let passphrase = v.get("passphrase").to_owned();
    let key = keyfile::load(&file.0, || Passphrase::new(passphrase));
    v.check(
        key.is_ok_and(|k| *k.to_bytes() == secret),
        "`encrypted` does not open to `secret` with `passphrase`",
    );
    v.finish();
}

#[test]
fn invite() {
    let v = Vector::load("invite");
    let invite = Invite {
        key: PublicKey::from_bytes(v.array("key")),
        relay: v.get("relay").parse().expect("a relay address"),
        relay_key: RelayKey::from_bytes(v.array("relay_key")),
        token: Some(DeliveryToken::from_bytes(v.array("token"))),
    };
    let string = invite.to_string();
    v.expect("invite", &string);
    v.expect_hex("data", &bech32_data(&string));
    v.check(
        v.get("invite").parse::<Invite>().ok() == Some(invite.clone()),
        "`invite` does not parse back",
    );
    // Version 1 is only read now: it must read as the same contact, tokenless.
    let v1 = v.get("invite_v1");
    v.expect_hex("data_v1", &bech32_data(v1));
    v.check(
        v1.parse::<Invite>().ok()
            == Some(Invite {
                token: None,
                ..invite
            }),
        "`invite_v1` does not read as the contact without a token",
    );
    v.finish();
}

#[test]
fn pairing() {
    use crate::pairing::{Code, PairKeys, PairMsg, Role};
    let v = Vector::load("pairing");
    let code = Code::from_parts(v.number("slot"), v.array("words"));
    v.expect("code", code.to_string());
    v.check(
        v.get("code").parse::<Code>().map(|c| c.to_string()).ok() == Some(code.to_string()),
        "`code` does not read back",
    );
    v.expect_hex("password", code.to_string().as_bytes());
    let pake_key: [u8; 32] = v.array("pake_key");
    let inviter = PairKeys::derive(Role::Inviter, &pake_key);
    let joiner = PairKeys::derive(Role::Joiner, &pake_key);
    let [ic, jc, is, js] = inviter.all();
    v.expect_hex("inviter_confirm", &ic);
    v.expect_hex("joiner_confirm", &jc);
    v.expect_hex("inviter_seal_key", &is);
    v.expect_hex("joiner_seal_key", &js);
    v.check(
        inviter.confirmation() == ic && joiner.confirmation() == jc,
        "confirmations",
    );
    let invite = v.get("invite");
    v.check(
        invite.parse::<Invite>().is_ok(),
        "`invite` is not an invite",
    );
    let sealed = inviter.seal_invite(invite.as_bytes());
    v.expect_hex("sealed_invite", &sealed);
    v.check(
        joiner
            .open_invite(&v.hex("sealed_invite"))
            .ok()
            .as_deref()
            .map(Vec::as_slice)
            == Some(invite.as_bytes()),
        "the joiner does not open `sealed_invite`",
    );
    v.check(
        raw_seal(&is, &[0; 12], crate::pairing::INVITE_AD, invite.as_bytes()) == sealed,
        "`sealed_invite` is not ChaCha20-Poly1305 under the inviter's seal key, nonce 0",
    );
    let done = inviter.seal_done();
    v.expect_hex("sealed_done", &done);
    let mut one = [0u8; 12];
    one[0] = 1;
    v.check(
        raw_seal(&is, &one, crate::pairing::DONE_AD, &[]) == done,
        "`sealed_done` is not ChaCha20-Poly1305 under the inviter's seal key, nonce 1",
    );
    v.expect_hex(
        "msg_done",
        &PairMsg::Done {
            seal: ByteBuf::from(done),
        }
        .encode(),
    );
    v.expect_hex("msg_abort", &PairMsg::Abort.encode());
    v.expect_hex(
        "pair_open",
        &wire::encode(&DeliveryMsg::PairOpen { req: 1 }),
    );
    v.expect_hex(
        "pair_join",
        &wire::encode(&DeliveryMsg::PairJoin {
            req: 2,
            slot: code.slot(),
            message: ByteBuf::from(PairMsg::Abort.encode()),
        }),
    );
    v.expect_hex(
        "pair_slot",
        &wire::encode(&RelayMsg::PairSlot {
            req: 1,
            slot: code.slot(),
            expires_in: 600,
        }),
    );
    v.expect_hex("pair_gone", &wire::encode(&RelayMsg::PairGone));
    v.expect_hex(
        "no_such_slot",
        &wire::encode(&RelayMsg::Error {
            req: 2,
            code: ErrorCode::NoSuchSlot,
            detail: String::new(),
        }),
    );
    v.finish();
}

#[test]
fn safety_number_vector() {
    let v = Vector::load("safety-number");
    let a = PublicKey::from_bytes(v.array("key_a"));
    let b = PublicKey::from_bytes(v.array("key_b"));
    v.expect("safety_number", safety_number(&a, &b).to_string());
    v.check(
        safety_number(&b, &a) == safety_number(&a, &b),
        "the order of the keys matters",
    );
    v.finish();
}

#[test]
fn wire_messages() {
    let v = Vector::load("wire");
    let to = PublicKey::from_bytes([0xAB; 32]);
    let file_id = FileId(v.array("file_id"));
    let client = [
        (
            "client.send",
            ClientMsg::Send {
                req: 1,
                to,
                envelope: ByteBuf::from(vec![1, 2, 3]),
            },
        ),
        ("client.fetch", ClientMsg::Fetch { live: true }),
        (
            "client.ack",
            ClientMsg::Ack {
                req: 300,
                ids: vec![5],
            },
        ),
        ("client.ping", ClientMsg::Ping),
        (
            "client.upload_begin",
            ClientMsg::UploadBegin {
                req: 2,
                file_id,
                to,
                size: 70,
            },
        ),
        (
            "client.upload_chunk",
            ClientMsg::UploadChunk {
                file_id,
                index: 1,
                data: ByteBuf::from(vec![1, 2, 3]),
            },
        ),
        (
            "client.upload_end",
            ClientMsg::UploadEnd { req: 3, file_id },
        ),
        (
            "client.download",
            ClientMsg::Download {
                req: 4,
                file_id,
                from: 0,
            },
        ),
        (
            "client.delete_blob",
            ClientMsg::DeleteBlob { req: 5, file_id },
        ),
        (
            "client.notify",
            ClientMsg::Notify {
                to,
                envelope: ByteBuf::from(vec![1, 2, 3]),
            },
        ),
    ];
    let relay = [
        ("relay.stored", RelayMsg::Stored { req: 1 }),
        (
            "relay.deliver",
            RelayMsg::Deliver {
                id: 7,
                received_at: 1_767_225_600,
                envelope: ByteBuf::from(vec![1, 2, 3]),
            },
        ),
        ("relay.drained", RelayMsg::Drained),
        (
            "relay.acked",
            RelayMsg::Acked {
                req: 300,
                deleted: 1,
            },
        ),
        ("relay.pong", RelayMsg::Pong),
        (
            "relay.error",
            RelayMsg::Error {
                req: 0,
                code: ErrorCode::ShuttingDown,
                detail: "bye".into(),
            },
        ),
        (
            "relay.upload_state",
            RelayMsg::UploadState {
                req: 2,
                file_id,
                have: 0,
            },
        ),
        (
            "relay.upload_progress",
            RelayMsg::UploadProgress { file_id, have: 256 },
        ),
        (
            "relay.upload_done",
            RelayMsg::UploadDone { req: 3, file_id },
        ),
        (
            "relay.download_chunk",
            RelayMsg::DownloadChunk {
                file_id,
                index: 1,
                data: ByteBuf::from(vec![1, 2, 3]),
            },
        ),
        (
            "relay.download_end",
            RelayMsg::DownloadEnd { req: 4, file_id },
        ),
        (
            "relay.blob_deleted",
            RelayMsg::BlobDeleted {
                req: 5,
                deleted: true,
            },
        ),
        (
            "relay.notice",
            RelayMsg::Notice {
                envelope: ByteBuf::from(vec![1, 2, 3]),
            },
        ),
    ];
    for (field, msg) in &client {
        v.expect_hex(field, &wire::encode(msg));
        v.check(
            from_hex(v.get(field))
                .and_then(|b| wire::decode::<ClientMsg>(&b).ok())
                .as_ref()
                == Some(msg),
            field,
        );
    }
    for (field, msg) in &relay {
        v.expect_hex(field, &wire::encode(msg));
        v.check(
            from_hex(v.get(field))
                .and_then(|b| wire::decode::<RelayMsg>(&b).ok())
                .as_ref()
                == Some(msg),
            field,
        );
    }
    let codes = [
        ErrorCode::QuotaExceeded,
        ErrorCode::TooLarge,
        ErrorCode::BadRequest,
        ErrorCode::Internal,
        ErrorCode::ShuttingDown,
        ErrorCode::RateLimited,
        ErrorCode::NotAllowed,
        ErrorCode::OutOfSpace,
    ];
    let encoded: Vec<String> = codes.iter().map(|c| to_hex(&wire::encode(c))).collect();
    v.expect("error_codes", encoded.join(" "));
    let hello = RelayHello {
        version: 1,
        max_envelope_len: 65_536,
    };
    v.expect_hex("relay_hello", &wire::encode(&hello));
    v.expect_hex("client_hello", &wire::encode(&ClientHello { version: 1 }));
    v.finish();
}

#[test]
fn envelope_vector() {
    let v = Vector::load("envelope");
    let sender = v.secret("sender_secret");
    let recipient = v.secret("recipient_secret");
    let ephemeral: [u8; 32] = v.array("ephemeral_secret");
    v.expect("sender", sender.public().to_string());
    v.expect("recipient", recipient.public().to_string());
    let ephemeral_public = SecretKey::from_bytes(Zeroizing::new(ephemeral)).public();
    v.expect_hex("ephemeral_public", ephemeral_public.as_bytes());

    let body = Body {
        id: MessageId(v.array("id")),
        sent_at_ms: v.number("sent_at_ms"),
        content: Content::Text(v.get("text").to_owned()),
    };
    v.expect_hex("body", &postcard::to_stdvec(&body).expect("encode a body"));
    v.expect_hex("padded", &envelope::pad(&body).expect("pad a body"));
    v.check(
        from_hex(v.get("padded"))
            .is_some_and(|p| envelope::unpad(&p).ok() == from_hex(v.get("body")).as_deref()),
        "`padded` does not unpad to `body`",
    );
    let sealed = envelope::seal_with_ephemeral(&sender, &recipient.public(), &body, &ephemeral)
        .expect("seal");
    v.expect_hex("envelope", &sealed);

    // The documented envelope (not only the recomputed one) opens to the
    // documented sender and body.
    let documented = from_hex(v.get("envelope")).unwrap_or_default();
    match envelope::open(&recipient, &documented) {
        Ok(opened) => {
            v.check(
                opened.sender.to_string() == v.get("sender"),
                "`envelope` opens to another sender",
            );
            v.check(opened.body == body, "`envelope` opens to another body");
        }
        Err(e) => v.fail(format!("`envelope` does not open: {e}")),
    }
    v.finish();
}

/// ChaCha20-Poly1305 (RFC 8439) with an explicit nonce and associated data:
/// what the documented nonce and AAD layouts claim the real code computes.
fn raw_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with::<ChaCha20Poly1305>(key, nonce, aad, plaintext)
}

/// One AEAD seal, of either ChaCha20-Poly1305 flavour.
fn seal_with<A: KeyInit + Aead>(
    key: &[u8; 32],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    A::new_from_slice(key)
        .expect("a 32-byte key")
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("seal")
}

/// The STREAM nonce of a chunk, as PROTOCOL.md describes it:
/// `prefix (7) | index (u32 BE) | last flag (1 byte)`.
fn stream_nonce(prefix: &[u8; 7], index: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..7].copy_from_slice(prefix);
    nonce[7..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

fn blake3(bytes: &[u8]) -> [u8; 32] {
    let mut hash = ContentHash::new();
    hash.update(bytes);
    hash.finish()
}

#[test]
fn file_layout() {
    let v = Vector::load("file-layout");
    v.expect("chunk_len", file::CHUNK_LEN.to_string());
    v.expect("tag_len", file::TAG_LEN.to_string());
    v.expect("max_file_size", file::MAX_FILE_SIZE.to_string());
    for size in [0u64, 1, 65_536, 65_537] {
        let chunks = file::chunk_count(size);
        v.expect(&format!("size_{size}.chunks"), chunks.to_string());
        let lens: Vec<String> = (0..chunks)
            .map(|i| file::chunk_len(size, i).expect("a chunk").to_string())
            .collect();
        v.expect(&format!("size_{size}.chunk_lens"), lens.join(" "));
        let sealed: Vec<String> = (0..chunks)
            .map(|i| {
                file::sealed_chunk_len(size, i)
                    .expect("a chunk")
                    .to_string()
            })
            .collect();
        v.expect(&format!("size_{size}.sealed_chunk_lens"), sealed.join(" "));
        let offsets: Vec<String> = (0..chunks)
            .map(|i| file::sealed_offset(i).to_string())
            .collect();
        v.expect(&format!("size_{size}.sealed_offsets"), offsets.join(" "));
        v.expect(
            &format!("size_{size}.sealed_len"),
            file::sealed_len(size).to_string(),
        );
        v.check(
            file::chunk_len(size, chunks).is_none(),
            "a chunk past the last one exists",
        );
    }
    v.finish();
}

#[test]
fn file_chunks() {
    let v = Vector::load("file-chunks");
    let key_bytes: [u8; 32] = v.array("key");
    let prefix: [u8; 7] = v.array("nonce_prefix");
    let file_id = FileId(v.array("file_id"));
    let plaintext = v.hex("plaintext");
    let size = plaintext.len() as u64;
    v.expect("size", size.to_string());
    let key = FileKey::from_parts(Zeroizing::new(key_bytes), prefix);
    let cipher = ChunkCipher::new(&key, file_id, size).expect("a cipher");
    v.expect("chunks", cipher.chunks().to_string());

    let mut sealed = plaintext.clone();
    cipher.seal(0, &mut sealed).expect("seal");
    v.expect_hex("sealed", &sealed);
    v.expect_hex("hash", &blake3(&plaintext));

    // The documented nonce and associated data are what the STREAM cipher
    // uses: plain ChaCha20-Poly1305 with them gives the same sealed chunk.
    let mut aad = b"sotto file v1".to_vec();
    aad.extend_from_slice(&file_id.0);
    aad.extend_from_slice(&size.to_be_bytes());
    v.expect_hex("aad", &aad);
    let nonce = stream_nonce(&prefix, 0, true);
    v.expect_hex("nonce", &nonce);
    v.check(
        raw_seal(&key_bytes, &nonce, &aad, &plaintext) == sealed,
        "`sealed` is not ChaCha20-Poly1305 under `key`, `nonce` and `aad`",
    );

    // The documented chunk opens to the plaintext, and only at its place.
    let documented = v.hex("sealed");
    let mut opened = documented.clone();
    v.check(
        cipher.open(0, &mut opened).is_ok() && opened == plaintext,
        "`sealed` does not open to `plaintext`",
    );
    let other = ChunkCipher::new(&key, FileId([0; 16]), size).expect("a cipher");
    v.check(
        other.open(0, &mut documented.clone()).is_err(),
        "`sealed` opens under another file id",
    );

    // A file of two chunks: the first is sealed with the last flag 00, the
    // second, at index 1, with 01; the size in the AAD is the whole file's.
    let size = file::CHUNK_LEN as u64 + 1;
    let two = ChunkCipher::new(&key, file_id, size).expect("a cipher");
    let mut aad = b"sotto file v1".to_vec();
    aad.extend_from_slice(&file_id.0);
    aad.extend_from_slice(&size.to_be_bytes());
    let first = vec![0x5a; file::CHUNK_LEN];
    let mut buf = first.clone();
    two.seal(0, &mut buf).expect("seal");
    v.check(
        raw_seal(&key_bytes, &stream_nonce(&prefix, 0, false), &aad, &first) == buf,
        "a first chunk is not sealed with index 0 and the last flag 00",
    );
    let mut buf = vec![0x5a];
    two.seal(1, &mut buf).expect("seal");
    v.check(
        raw_seal(&key_bytes, &stream_nonce(&prefix, 1, true), &aad, &[0x5a]) == buf,
        "a last chunk is not sealed with its index and the last flag 01",
    );
    v.finish();
}

#[test]
fn file_offer() {
    let v = Vector::load("file-offer");
    let offer = FileOffer {
        file_id: FileId(v.array("file_id")),
        name: v.get("name").to_owned(),
        size: v.number("size"),
        hash: v.array("hash"),
        key: FileKey::from_parts(Zeroizing::new(v.array("key")), v.array("nonce_prefix")),
    };
    let body = Body {
        id: MessageId(v.array("id")),
        sent_at_ms: v.number("sent_at_ms"),
        content: Content::File(offer),
    };
    let encoded = postcard::to_stdvec(&body).expect("encode a body");
    v.expect_hex("body", &encoded);
    v.check(
        from_hex(v.get("body")).and_then(|b| envelope::decode_body(&b).ok()) == Some(body),
        "`body` does not decode to the offer",
    );
    v.expect(
        "bucket",
        envelope::padded_len(encoded.len())
            .expect("a bucket")
            .to_string(),
    );
    v.finish();
}

#[test]
fn reach_body() {
    let v = Vector::load("reach-body");
    let reach = envelope::Reach {
        seq: v.number("seq"),
        relay: v.get("relay").parse().expect("a relay address"),
        relay_key: v.get("relay_key").parse().expect("a relay key"),
        token: v.get("token").parse().expect("a delivery token"),
    };
    let body = Body {
        id: MessageId(v.array("id")),
        sent_at_ms: v.number("sent_at_ms"),
        content: Content::Reach(reach),
    };
    let encoded = postcard::to_stdvec(&body).expect("encode a body");
    v.expect_hex("body", &encoded);
    v.check(
        from_hex(v.get("body")).and_then(|b| envelope::decode_body(&b).ok()) == Some(body),
        "`body` does not decode to the Reach",
    );
    v.expect(
        "bucket",
        envelope::padded_len(encoded.len())
            .expect("a bucket")
            .to_string(),
    );
    v.finish();
}

/// One body of the session vector: `PREFIX.id`, `PREFIX.sent_at_ms`, `PREFIX.text`.
fn session_body(v: &Vector, prefix: &str) -> Body {
    Body {
        id: MessageId(v.array(&format!("{prefix}.id"))),
        sent_at_ms: v.number(&format!("{prefix}.sent_at_ms")),
        content: Content::Text(v.get(&format!("{prefix}.text")).to_owned()),
    }
}

/// The padded plaintext of `body`, or of no body at all.
fn padded(body: Option<&Body>) -> Vec<u8> {
    let encoded = body.map_or_else(Vec::new, |b| postcard::to_stdvec(b).expect("encode"));
    envelope::pad_encoded(&encoded).expect("pad")
}

/// A Noise transport nonce (Noise §12.3): 4 zero bytes, the counter u64 LE.
/// XChaCha20-Poly1305, as a session transport message is sealed (§8.2).
fn raw_xseal(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with::<XChaCha20Poly1305>(key, nonce, aad, plaintext)
}

#[test]
fn session_envelopes() {
    let v = Vector::load("session");
    let alice = v.secret("initiator_secret");
    let bob = v.secret("responder_secret");
    let id: [u8; 16] = v.array("session_id");
    let created_at_ms: u64 = v.number("created_at_ms");
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(created_at_ms);
    let mut a = SessionStore::new(alice.public(), SessionConfig::default());
    let mut b = SessionStore::new(bob.public(), SessionConfig::default());
    let prologue = session::vector_prologue(&SessionId(id), created_at_ms);
    v.expect_hex("prologue", &prologue);

    // Alice's first message to Bob starts a session: a kind 2 with the body.
    let first = session_body(&v, "init");
    let i2r: [u8; 16] = v.array("initiator_to_responder_id");
    let r2i: [u8; 16] = v.array("responder_to_initiator_id");
    session::fixed::push_id(id);
    session::fixed::push_id(i2r);
    session::fixed::push_id(r2i);
    session::fixed::push_ephemeral(v.array("initiator_ephemeral_secret"));
    let init = a
        .seal_to(&alice, &bob.public(), &first, now)
        .expect("seal the init");
    v.expect_hex("init", &init.envelope);

    // Bob reads it and writes the bare accept: a kind 3.
    session::fixed::push_ephemeral(v.array("responder_ephemeral_secret"));
    session::fixed::push_nonce(v.array("accept_nonce"));
    let got = b
        .open(&bob, &init.envelope, now, |_| true)
        .expect("open the init");
    v.check(
        got.sender == alice.public() && got.body.as_ref() == Some(&first),
        "the init does not open to the initiator and `init.*`",
    );
    let accept = got.reply.expect("a bare accept");
    v.expect_hex("accept", &accept);

    // Bob writes before Alice has answered: still a kind 3.
    let second = session_body(&v, "reply");
    session::fixed::push_nonce(v.array("reply_nonce"));
    let reply = b
        .seal_to(&bob, &alice.public(), &second, now)
        .expect("seal the reply");
    v.expect_hex("reply", &reply.envelope);

    // Alice completes the handshake with the accept, reads the reply, and
    // then writes a kind 4.
    let got = a
        .open(&alice, &accept, now, |_| true)
        .expect("open the accept");
    v.check(
        got.sender == bob.public() && got.body.is_none(),
        "the accept is not bare",
    );
    let got = a
        .open(&alice, &reply.envelope, now, |_| true)
        .expect("open the reply");
    v.check(
        got.body.as_ref() == Some(&second),
        "the reply does not open to `reply.*`",
    );
    let third = session_body(&v, "message");
    session::fixed::push_nonce(v.array("message_nonce"));
    let message = a
        .seal_to(&alice, &bob.public(), &third, now)
        .expect("seal the message");
    v.expect_hex("message", &message.envelope);
    let got = b
        .open(&bob, &message.envelope, now, |_| true)
        .expect("open the message");
    v.check(
        got.body.as_ref() == Some(&third),
        "the message does not open to `message.*`",
    );

    let (i2r_key, r2i_key) = a.vector_split_keys(&bob.public()).expect("a session");
    v.check(
        b.vector_split_keys(&alice.public()) == Some((i2r_key, r2i_key)),
        "the two sides hold different keys",
    );
    v.expect_hex("initiator_key", &i2r_key);
    v.expect_hex("responder_key", &r2i_key);

    // The documented envelopes, read as PROTOCOL.md lays them out. Kind 2:
    // message 1 opens with Noise IK, the documented prologue and Bob's key.
    let doc_init = v.hex("init");
    let doc_prologue = v.hex("prologue");
    let header_ok = doc_init.len() > 26
        && doc_init[..2] == [1, 2]
        && doc_init[2..18] == id
        && doc_init[18..26] == created_at_ms.to_le_bytes();
    v.check(
        header_ok,
        "`init` does not start with 01 02 | id | created_at_ms",
    );
    let bob_secret = bob.to_bytes();
    let mut responder = snow::Builder::new(
        session::SESSION_NOISE_PARAMS
            .parse()
            .expect("Noise parameters"),
    )
    .prologue(&doc_prologue)
    .and_then(|b| b.local_private_key(bob_secret.as_ref()))
    .and_then(|b| b.build_responder())
    .expect("a responder");
    let mut payload = vec![0u8; doc_init.len()];
    let read = doc_init
        .get(26..)
        .and_then(|msg1| responder.read_message(msg1, &mut payload).ok());
    v.check(
        read.is_some_and(|n| payload[..n] == [&i2r[..], &r2i[..], &padded(Some(&first))].concat()),
        "`init` message 1 does not open to the two direction ids and the padded `init.*` body",
    );
    v.check(
        responder.get_remote_static() == Some(alice.public().as_bytes().as_slice()),
        "`init` does not carry the initiator's key",
    );

    // Kinds 3 and 4: the transport ciphertext is XChaCha20-Poly1305 under the
    // sender's split key, with the envelope's 24-byte nonce, the envelope's
    // bytes before the nonce as associated data.
    let doc_accept = v.hex("accept");
    let doc_reply = v.hex("reply");
    let doc_message = v.hex("message");
    let msg2_ok =
        doc_accept.len() > 66 && doc_reply.len() > 66 && doc_accept[18..66] == doc_reply[18..66];
    v.check(msg2_ok, "`accept` and `reply` carry different IK message 2");
    let cases = [
        (
            &doc_accept,
            3u8,
            66usize,
            "accept_nonce",
            r2i_key,
            r2i,
            None,
        ),
        (
            &doc_reply,
            3,
            66,
            "reply_nonce",
            r2i_key,
            r2i,
            Some(&second),
        ),
        (
            &doc_message,
            4,
            18,
            "message_nonce",
            i2r_key,
            i2r,
            Some(&third),
        ),
    ];
    for (doc, kind, nonce_at, nonce_field, key, wire_id, body) in cases {
        let nonce: [u8; 24] = v.array(nonce_field);
        let ok = doc.len() > nonce_at + 24
            && doc[..2] == [1, kind]
            && doc[2..18] == wire_id
            && doc[nonce_at..nonce_at + 24] == nonce
            && doc[nonce_at + 24..] == raw_xseal(&key, &nonce, &doc[..nonce_at], &padded(body));
        v.check(
            ok,
            &format!("the kind {kind} envelope with `{nonce_field}` is not laid out as documented"),
        );
    }
    v.finish();
}

/// Copies everything written through it, to read the transcript afterwards.
struct Tap<W> {
    inner: W,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tap<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.seen
                .lock()
                .expect("tap lock")
                .extend_from_slice(&buf[..n]);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Splits a byte stream into record bodies.
fn records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let [hi, lo, rest @ ..] = bytes {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(rest.len() >= len, "a truncated record in the transcript");
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    assert!(bytes.is_empty(), "a stray byte after the last record");
    out
}

fn message_plaintext(msg: &[u8]) -> Vec<u8> {
    let mut plain = (msg.len() as u32).to_le_bytes().to_vec();
    plain.extend_from_slice(msg);
    plain
}

#[tokio::test]
async fn link_handshake() {
    let v = Vector::load("link-handshake");
    let client = v.secret("client_secret");
    let relay = v.secret("relay_secret");
    let client_e: [u8; 32] = v.array("client_ephemeral_secret");
    let relay_e: [u8; 32] = v.array("relay_ephemeral_secret");
    let relay_key = RelayKey::from(relay.public());
    let client_key = client.public();
    v.expect("client_key", client_key.to_string());
    v.expect("relay_key", relay_key.to_string());
    for (field, e) in [
        ("client_ephemeral_public", client_e),
        ("relay_ephemeral_public", relay_e),
    ] {
        v.expect_hex(
            field,
            SecretKey::from_bytes(Zeroizing::new(e)).public().as_bytes(),
        );
    }
    let hello = RelayHello {
        version: LINK_VERSION,
        max_envelope_len: v.number("max_envelope_len"),
    };
    v.expect_hex("relay_hello", &wire::encode(&hello));
    v.expect_hex(
        "client_hello",
        &wire::encode(&ClientHello {
            version: LINK_VERSION,
        }),
    );

    let client_wire = Arc::new(Mutex::new(Vec::new()));
    let relay_wire = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = tokio::io::duplex(1 << 16);
    let (cr, cw) = tokio::io::split(c);
    let (rr, rw) = tokio::io::split(r);

    let relay_tap = Tap {
        inner: rw,
        seen: relay_wire.clone(),
    };
    let relay_hello = hello.clone();
    let relay_side = tokio::spawn(async move {
        let (mut reader, mut writer, peer) =
            link::accept_with_ephemeral(rr, relay_tap, &relay, &relay_hello, &relay_e)
                .await
                .expect("the relay side of the handshake");
        let request: ClientMsg = reader.recv().await.expect("recv").expect("a message");
        writer.send(&RelayMsg::Pong).await.expect("send");
        writer.flush().await.expect("flush");
        (peer, request)
    });
    let client_tap = Tap {
        inner: cw,
        seen: client_wire.clone(),
    };
    let (mut reader, mut writer, got_hello) =
        link::connect_with_ephemeral(cr, client_tap, &client, &relay_key, &client_e)
            .await
            .expect("the client side of the handshake");
    writer.send(&ClientMsg::Ping).await.expect("send");
    writer.flush().await.expect("flush");
    let answer: RelayMsg = reader.recv().await.expect("recv").expect("a message");
    let (peer, request) = relay_side.await.expect("the relay task");
    assert_eq!(got_hello, hello);
    assert_eq!(peer, client_key);
    assert_eq!(request, ClientMsg::Ping);
    assert_eq!(answer, RelayMsg::Pong);

    let client_bytes = client_wire.lock().expect("tap lock").clone();
    let relay_bytes = relay_wire.lock().expect("tap lock").clone();
    let (preamble, rest) = client_bytes.split_at(8);
    v.expect_hex("preamble", preamble);
    let from_client = records(rest);
    let from_relay = records(&relay_bytes);
    assert_eq!(from_client.len(), 3, "msg1, msg3, one transport record");
    assert_eq!(from_relay.len(), 2, "msg2, one transport record");
    v.expect_hex("msg1", &from_client[0]);
    v.expect_hex("msg2", &from_relay[0]);
    v.expect_hex("msg3", &from_client[1]);
    v.expect_hex(
        "c2r_0_plaintext",
        &message_plaintext(&wire::encode(&ClientMsg::Ping)),
    );
    v.expect_hex("c2r_0", &from_client[2]);
    v.expect_hex(
        "r2c_0_plaintext",
        &message_plaintext(&wire::encode(&RelayMsg::Pong)),
    );
    v.expect_hex("r2c_0", &from_relay[1]);
    v.finish();
}

#[tokio::test]
async fn delivery_link_handshake() {
    let v = Vector::load("delivery-link-handshake");
    let relay = v.secret("relay_secret");
    let client_e: [u8; 32] = v.array("client_ephemeral_secret");
    let relay_e: [u8; 32] = v.array("relay_ephemeral_secret");
    let relay_key = RelayKey::from(relay.public());
    v.expect("relay_key", relay_key.to_string());
    v.expect_hex(
        "client_ephemeral_public",
        SecretKey::from_bytes(Zeroizing::new(client_e))
            .public()
            .as_bytes(),
    );
    let token: DeliveryToken = v.get("token").parse().expect("the vector's token");
    v.expect_hex("token_hash", &delivery::token_hash(&token).0);
    let to = PublicKey::from_bytes(v.array("to"));
    let hello = RelayHello {
        version: LINK_VERSION,
        max_envelope_len: v.number("max_envelope_len"),
    };
    let send = DeliveryMsg::Send {
        req: 1,
        to,
        token: Some(token),
        envelope: ByteBuf::from(vec![1, 2, 3]),
    };

    let client_wire = Arc::new(Mutex::new(Vec::new()));
    let relay_wire = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = tokio::io::duplex(1 << 16);
    let (cr, cw) = tokio::io::split(c);
    let (rr, rw) = tokio::io::split(r);
    let relay_tap = Tap {
        inner: rw,
        seen: relay_wire.clone(),
    };
    let relay_hello = hello.clone();
    let relay_side = tokio::spawn(async move {
        let accepted =
            link::accept_link_with_ephemeral(rr, relay_tap, &relay, &relay_hello, &relay_e)
                .await
                .expect("the relay side of the handshake");
        let link::Accepted::Delivery {
            mut reader,
            mut writer,
        } = accepted
        else {
            panic!("a delivery preamble accepted as an owner link");
        };
        let request: DeliveryMsg = reader.recv().await.expect("recv").expect("a message");
        writer
            .send(&RelayMsg::Stored { req: 1 })
            .await
            .expect("send");
        writer.flush().await.expect("flush");
        request
    });
    let client_tap = Tap {
        inner: cw,
        seen: client_wire.clone(),
    };
    let (mut reader, mut writer, got_hello) =
        link::connect_delivery_with_ephemeral(cr, client_tap, &relay_key, &client_e)
            .await
            .expect("the client side of the handshake");
    writer.send(&send).await.expect("send");
    writer.flush().await.expect("flush");
    let answer: RelayMsg = reader.recv().await.expect("recv").expect("a message");
    let request = relay_side.await.expect("the relay task");
    assert_eq!(got_hello, hello);
    assert_eq!(request, send);
    assert_eq!(answer, RelayMsg::Stored { req: 1 });

    let client_bytes = client_wire.lock().expect("tap lock").clone();
    let relay_bytes = relay_wire.lock().expect("tap lock").clone();
    let (preamble, rest) = client_bytes.split_at(8);
    v.expect_hex("preamble", preamble);
    let from_client = records(rest);
    let from_relay = records(&relay_bytes);
    assert_eq!(from_client.len(), 2, "msg1, one transport record");
    assert_eq!(from_relay.len(), 2, "msg2, one transport record");
    v.expect_hex("msg1", &from_client[0]);
    v.expect_hex("msg2", &from_relay[0]);
    v.expect_hex("c2r_0_plaintext", &message_plaintext(&wire::encode(&send)));
    v.expect_hex("c2r_0", &from_client[1]);
    v.expect_hex(
        "r2c_0_plaintext",
        &message_plaintext(&wire::encode(&RelayMsg::Stored { req: 1 })),
    );
    v.expect_hex("r2c_0", &from_relay[1]);
    v.finish();
}
