//! The checks behind the fuzz targets, one function per target.
//!
//! `fuzz/fuzz_targets/<target>.rs` hands each input to the function of the
//! same name here, and `tests/tests/fuzz_regressions.rs` feeds the checked-in
//! corpus slices and every input that ever crashed (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the very same functions, so a plain
//! `cargo test` re-checks what the fuzzers found without cargo-fuzz or a
//! nightly compiler.
//!
//! Every function takes arbitrary bytes, runs them through a decoder of
//! untrusted bytes exactly as the product does, and panics only when a
//! property the decoder promises does not hold: decoding never panics, what
//! decodes encodes back to something that decodes to the same value, lengths
//! stay within their limits.

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{de::DeserializeOwned, Serialize};
use sotto_crypto::envelope::{self, Body, Content, BUCKETS, MAX_ENVELOPE_LEN, MAX_ONE_SHOT_LEN};
use sotto_crypto::file::{
    chunk_count, chunk_len, sealed_chunk_len, sealed_len, sealed_offset, ChunkCipher, FileError,
    FileId, FileKey, FileOffer, CHUNK_LEN, MAX_FILE_SIZE, NONCE_PREFIX_LEN, TAG_LEN,
};
use sotto_crypto::frame::{read_record, write_record, MAX_RECORD_LEN};
use sotto_crypto::link::MAX_MESSAGE_LEN;
use sotto_crypto::session::{SessionConfig, SessionStore};
use sotto_crypto::wire::{self, ClientHello, ClientMsg, DeliveryMsg, RelayHello, RelayMsg};
use sotto_crypto::{fuzzing as cf, EnvelopeError};
use sotto_keys::fuzzing::{self as kf, KeyFile};
use sotto_keys::{
    ContactBook, ContactName, Invite, Passphrase, PublicKey, RelayAddr, RelayKey, SecretKey,
};
use zeroize::Zeroizing;

/// The check of one fuzz target.
pub type Check = fn(&[u8]);

/// Every target, by name: the fuzz targets and the corpus directories are
/// named after these.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame", frame),
    ("link_framing", link_framing),
    ("wire_client", wire_client),
    ("wire_relay", wire_relay),
    ("envelope_open", envelope_open),
    ("envelope_body", envelope_body),
    ("session_open", session_open),
    ("session_state", session_state),
    ("file_chunk", file_chunk),
    ("key_strings", key_strings),
    ("keyfile", keyfile),
    ("contacts", contacts),
    ("client_config", client_config),
    ("relay_config", relay_config),
    ("relay_codec", relay_codec),
    ("upload_state", upload_state),
    ("home_files", home_files),
    ("tree_manifest", tree_manifest),
];

/// The recipient of every envelope the envelope targets open.
pub fn recipient_key() -> SecretKey {
    SecretKey::from_bytes(Zeroizing::new([0x42; 32]))
}

/// The key and id of the file whose chunks `file_chunk` opens.
pub fn chunk_key() -> (FileKey, FileId) {
    (
        FileKey::from_parts(Zeroizing::new([0x5C; 32]), [0x07; NONCE_PREFIX_LEN]),
        FileId([0x1D; 16]),
    )
}

/// The passphrase of the encrypted key files in the `keyfile` seeds.
pub const KEYFILE_PASSPHRASE: &str = "correct horse";

/// Runs a future over in-memory I/O, which never waits, to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("in-memory I/O waited"),
    }
}

/// Postcard `T`: what decodes encodes back to bytes that decode to the same
/// value, no longer than the input (varints are minimal on the way out).
fn postcard_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let msg: T = wire::decode(data).ok()?;
    let again = wire::encode(&msg);
    assert!(again.len() <= data.len(), "re-encoding grew: {msg:?}");
    assert_eq!(wire::decode::<T>(&again).ok().as_ref(), Some(&msg));
    Some(msg)
}

/// Splits off a little-endian integer of `N` bytes (zero-padded when short).
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// The record layer (`frame`): a reader's maximum, then a TCP stream.
pub fn frame(mut data: &[u8]) {
    let max = usize::from(u16::from_le_bytes(take::<2>(&mut data)));
    let mut stream = data;
    let mut buf = Vec::new();
    loop {
        let before = stream.len();
        match ready(read_record(&mut stream, &mut buf, max)) {
            Ok(true) => {
                assert!(!buf.is_empty() && buf.len() <= max && buf.len() <= MAX_RECORD_LEN);
                assert_eq!(before - stream.len(), 2 + buf.len());
                let mut wire = Vec::new();
                ready(write_record(&mut wire, &buf)).expect("a record read is writable");
                let mut again = Vec::new();
                assert!(matches!(
                    ready(read_record(&mut wire.as_slice(), &mut again, max)),
                    Ok(true)
                ));
                assert_eq!(again, buf);
            }
            Ok(false) => {
                assert_eq!(before, 0, "end of stream reported with bytes left");
                return;
            }
            Err(_) => return,
        }
    }
}

/// The link's message framing, after decryption: the input is a sequence of
/// record plaintexts (`u16 LE length | bytes`), each sealed as one record;
/// the reader then takes messages off them as the relay and the client do.
pub fn link_framing(mut data: &[u8]) {
    let mut sealed = Vec::new();
    {
        let Ok((_, mut writer)) = cf::link_loopback(&[][..], &mut sealed) else {
            panic!("the loopback link could not be built");
        };
        let mut records = 0;
        while !data.is_empty() && records < 64 {
            let len = usize::from(u16::from_le_bytes(take::<2>(&mut data))).min(data.len());
            let (plain, rest) = data.split_at(len);
            data = rest;
            ready(writer.send_record_plaintext(plain)).expect("a short record is sealed");
            records += 1;
        }
        ready(writer.flush()).expect("memory takes every byte");
    }
    let Ok((mut reader, _)) = cf::link_loopback(sealed.as_slice(), Vec::new()) else {
        panic!("the loopback link could not be built");
    };
    let mut messages = Vec::new();
    while let Ok(Some(msg)) = ready(reader.recv_bytes()) {
        assert!(!msg.is_empty() && msg.len() <= MAX_MESSAGE_LEN);
        let _ = wire::decode::<ClientMsg>(msg);
        let _ = wire::decode::<RelayMsg>(msg);
        messages.push(msg.to_vec());
    }
    // Whatever was read is sent and read back unchanged.
    let mut again = Vec::new();
    {
        let (_, mut writer) = cf::link_loopback(&[][..], &mut again).expect("loopback");
        for msg in &messages {
            ready(writer.send_bytes(msg)).expect("a message read is sendable");
        }
        ready(writer.flush()).expect("memory takes every byte");
    }
    let (mut reader, _) = cf::link_loopback(again.as_slice(), Vec::new()).expect("loopback");
    for msg in &messages {
        let got = ready(reader.recv_bytes()).expect("a message sent is readable");
        assert_eq!(got, Some(msg.as_slice()));
    }
    assert!(matches!(ready(reader.recv_bytes()), Ok(None)));
}

/// A decrypted client -> relay message, as the relay decodes it on either
/// link kind (`ClientMsg` on an owner link, `DeliveryMsg` on a delivery link).
pub fn wire_client(data: &[u8]) {
    let _ = postcard_round_trip::<ClientMsg>(data);
    let _ = postcard_round_trip::<DeliveryMsg>(data);
    let _ = postcard_round_trip::<ClientHello>(data);
}

/// A decrypted relay -> client message, as the client decodes it, and a
/// pairing message as it decodes what a `PairMessage` carries.
pub fn wire_relay(data: &[u8]) {
    let _ = postcard_round_trip::<RelayMsg>(data);
    let _ = postcard_round_trip::<RelayHello>(data);
    let _ = postcard_round_trip::<sotto_crypto::pairing::PairMsg>(data);
}

/// A one-shot envelope opened with a fixed recipient key.
pub fn envelope_open(data: &[u8]) {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    let key = KEY.get_or_init(recipient_key);
    if let Ok(opened) = envelope::open(key, data) {
        assert!(data.len() <= MAX_ONE_SHOT_LEN);
        assert!(!opened.sender.is_weak());
        check_body(&opened.body, data.len() - 2 - 96);
    }
}

/// A body that opened from a padded plaintext of `padded_len` bytes: its own
/// padding is no longer, and it survives encoding.
fn check_body(body: &Body, padded_len: usize) {
    let padded = cf::pad(body).expect("a decoded body pads");
    assert!(padded.len() <= padded_len);
    let inner = cf::unpad(&padded).expect("own padding unpads");
    assert_eq!(cf::decode_body(inner).as_ref(), Ok(body));
}

/// What an envelope holds after decryption: the first byte picks a padded
/// plaintext (as every envelope kind unpads it), a bare postcard `Body`, or
/// a bare `FileOffer`.
pub fn envelope_body(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(inner) = cf::unpad(rest) {
                assert!(BUCKETS.contains(&rest.len()));
                assert!(inner.len() + 4 <= rest.len());
                if let Ok(body) = cf::decode_body(inner) {
                    check_body(&body, rest.len());
                }
            }
        }
        1 => {
            if let Ok(body) = cf::decode_body(rest) {
                let encoded = postcard::to_stdvec(&body).expect("a body encodes");
                assert!(encoded.len() <= rest.len());
                assert_eq!(cf::decode_body(&encoded).as_ref(), Ok(&body));
            }
        }
        _ => {
            let _ = postcard_round_trip::<FileOffer>(rest);
        }
    }
}

/// Where the `session_open` fixture is kept.
pub fn session_fixture_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/fixtures/session_store.bin"
    ))
}

/// The identities of the `session_open` fixture: the store's owner (the
/// recipient), a contact it has a confirmed session with, a contact it sent
/// an init to that is still pending, and a stranger.
pub fn session_parties() -> [SecretKey; 4] {
    [0xB0, 0xA1, 0xC2, 0xD3].map(|b| SecretKey::from_bytes(Zeroizing::new([b; 32])))
}

/// The clock of the `session_open` fixture: every state in it was made then.
pub const SESSION_T0_MS: u64 = 1_767_225_600_000;

/// When `session_open` opens envelopes: a minute after the fixture was made.
pub fn session_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(SESSION_T0_MS + 60_000)
}

/// Any envelope opened by [`SessionStore::open`] on a store that holds a
/// confirmed session and a pending init (kinds 1 to 4 all reach their
/// decoders), with the two parties as contacts.
pub fn session_open(data: &[u8]) {
    static FIXTURE: OnceLock<(Vec<u8>, SecretKey, Vec<PublicKey>)> = OnceLock::new();
    let (state, me, contacts) = FIXTURE.get_or_init(|| {
        let state = std::fs::read(session_fixture_path())
            .expect("fuzz/fixtures/session_store.bin (made by the fuzz_seeds example)");
        let [me, alice, carol, _] = session_parties();
        (state, me, vec![alice.public(), carol.public()])
    });
    let mut store =
        SessionStore::decode(state, SessionConfig::default()).expect("the fixture decodes");
    let is_contact = |k: &PublicKey| contacts.contains(k);
    let Ok(received) = store.open(me, data, session_now(), is_contact) else {
        return;
    };
    assert!(data.len() <= MAX_ENVELOPE_LEN);
    assert!(!received.sender.is_weak());
    let kind = data[1];
    assert_eq!(received.forward_secret, matches!(kind, 3 | 4));
    if let Some(body) = &received.body {
        let _ = cf::pad(body).expect("a decoded body pads");
    }
    if received.forward_secret {
        assert!(contacts.contains(&received.sender));
        // The replay window shows a transport message once.
        assert_eq!(
            store.open(me, data, session_now(), is_contact),
            Err(EnvelopeError::Replayed)
        );
    }
    store
        .encode()
        .expect("a store that opened something encodes");
}

/// A saved session store, after the disk encryption: what decodes encodes,
/// and that decodes again.
pub fn session_state(data: &[u8]) {
    if let Ok(store) = SessionStore::decode(data, SessionConfig::default()) {
        let encoded = store.encode().expect("a decoded store encodes");
        SessionStore::decode(&encoded, SessionConfig::default()).expect("re-decodes");
    }
}

/// File chunks: `size (u64 LE) | index (u64 LE) | mode | payload`. The chunk
/// layout is checked for `size`; then the payload is a sealed chunk opened at
/// `index`, a `ClientMsg` whose `UploadChunk` the relay checks against `size`,
/// a `RelayMsg` whose `DownloadChunk` the client opens, or a plaintext chunk
/// sealed and opened again.
pub fn file_chunk(mut data: &[u8]) {
    let size = u64::from_le_bytes(take::<8>(&mut data));
    let index = u64::from_le_bytes(take::<8>(&mut data));
    let mode = take::<1>(&mut data)[0];
    let payload = data;

    let chunks = chunk_count(size);
    assert!(chunks >= 1);
    let total = sealed_len(size);
    match sealed_chunk_len(size, index) {
        Some(len) => {
            assert!(index < chunks);
            assert!((TAG_LEN..=CHUNK_LEN + TAG_LEN).contains(&len));
            assert_eq!(chunk_len(size, index), Some(len - TAG_LEN));
            if size <= MAX_FILE_SIZE {
                assert!(sealed_offset(index) + len as u64 <= total);
            }
        }
        None => assert!(index >= chunks),
    }

    let (key, id) = chunk_key();
    let cipher = match ChunkCipher::new(&key, id, size) {
        Ok(c) => c,
        Err(e) => {
            assert!(size > MAX_FILE_SIZE && e == FileError::TooLarge);
            return;
        }
    };
    assert_eq!(cipher.chunks(), chunks);
    let open = |index: u64, sealed: &[u8]| {
        let mut buf = sealed.to_vec();
        let r = cipher.open(index, &mut buf);
        if r.is_ok() {
            assert_eq!(Some(sealed.len()), sealed_chunk_len(size, index));
            assert_eq!(buf.len() + TAG_LEN, sealed.len());
        }
        r
    };
    match mode % 4 {
        0 => {
            let _ = open(index, payload);
        }
        1 => {
            if let Some(ClientMsg::UploadChunk { index, data, .. }) =
                postcard_round_trip::<ClientMsg>(payload)
            {
                // The relay's check before it stores a chunk.
                let accepted = sealed_chunk_len(size, index) == Some(data.len());
                if !accepted {
                    assert!(matches!(
                        open(index, &data),
                        Err(FileError::ChunkLength { .. } | FileError::NoSuchChunk { .. })
                    ));
                }
            }
        }
        2 => {
            if let Some(RelayMsg::DownloadChunk { index, data, .. }) =
                postcard_round_trip::<RelayMsg>(payload)
            {
                let _ = open(index, &data);
            }
        }
        _ => {
            let mut buf = payload.to_vec();
            if cipher.seal(index, &mut buf).is_ok() {
                assert_eq!(open(index, &buf), Ok(()));
            }
        }
    }
}

/// Key and invite strings, relay addresses and contact names as typed or
/// pasted: each one that parses prints as a string that parses to the same.
pub fn key_strings(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = s.parse::<PublicKey>() {
        assert_eq!(k.to_string().parse::<PublicKey>().ok(), Some(k));
    }
    if let Ok(k) = s.parse::<RelayKey>() {
        assert_eq!(k.to_string().parse::<RelayKey>().ok(), Some(k));
    }
    if let Ok(invite) = s.parse::<Invite>() {
        assert_eq!(invite.to_string().parse::<Invite>().ok(), Some(invite));
    }
    if let Ok(addr) = s.parse::<RelayAddr>() {
        assert_eq!(addr.to_string().parse::<RelayAddr>().ok(), Some(addr));
    }
    if let Ok(name) = s.parse::<ContactName>() {
        assert_eq!(name.as_str(), s);
    }
}

/// A key file's bytes. A plain key prints back to a file of the same key;
/// an encrypted one is opened when it asks for little enough work (the
/// format's own limits allow a gibibyte of memory per guess).
pub fn keyfile(data: &[u8]) {
    match kf::parse_key_file(data) {
        Ok(KeyFile::Plain(key)) => {
            let text = kf::render_plain(&key).expect("a key renders");
            match kf::parse_key_file(text.as_bytes()) {
                Ok(KeyFile::Plain(again)) => assert_eq!(again.public(), key.public()),
                _ => panic!("a rendered key file does not read back"),
            }
        }
        Ok(KeyFile::Encrypted(sealed)) => {
            let (m, t, p) = sealed.cost();
            assert!(m <= 1024 * 1024 && t <= 16 && p <= 8);
            if m <= 64 && t <= 2 && p <= 2 {
                let pass = Passphrase::new(KEYFILE_PASSPHRASE.to_owned()).expect("non-empty");
                if let Ok(key) = sealed.open(&pass) {
                    let salt = [1; 16];
                    let text = kf::render_encrypted(&key, &pass, (8, 1, 1), salt, [2; 12])
                        .expect("a key renders");
                    match kf::parse_key_file(text.as_bytes()) {
                        Ok(KeyFile::Encrypted(s)) => {
                            let again = s.open(&pass).expect("opens");
                            assert_eq!(again.public(), key.public());
                        }
                        _ => panic!("a rendered key file does not read back"),
                    }
                }
            }
        }
        Err(_) => {}
    }
}

/// `contacts.toml`: what loads is consistent (names find their contacts,
/// keys are unique, groups list contacts only).
pub fn contacts(data: &[u8]) {
    let Ok(book) = ContactBook::parse(data, Path::new("contacts.toml")) else {
        return;
    };
    for c in book.contacts() {
        assert_eq!(book.get(c.name.as_str()).map(|x| x.key), Some(c.key));
        assert_eq!(
            book.by_key(&c.key).map(|x| x.name.as_str()),
            Some(c.name.as_str())
        );
    }
    for g in book.groups() {
        assert!(g.members.iter().all(|m| book.get(m.as_str()).is_some()));
    }
}

/// The client's `config.toml`.
pub fn client_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = sotto_client::config::Config::parse(text, Path::new("config.toml")) {
        assert_eq!(config.relay.is_some(), config.relay_key.is_some());
        assert_eq!(config.relay().is_ok(), config.relay.is_some());
    }
}

/// The relay's config file.
pub fn relay_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = sotto_relay::RelayConfig::from_toml(text, Path::new("relay.toml")) {
        assert!(config.files.checkpoint_chunks() >= 1);
        assert!((1..=100).contains(&config.files.uploader_share_percent));
        assert!(!config.files.upload_idle_timeout.is_zero());
        let quota = config.files.quota();
        assert!(quota.window >= 2 && quota.max_bytes_per_uploader <= quota.max_bytes.max(1));
    }
}

/// The relay's stored values, the first byte picking the table: what a
/// decoder accepts is exactly what the encoder writes.
pub fn relay_codec(data: &[u8]) {
    use sotto_relay::store::fuzzing as rf;
    let Some((&table, value)) = data.split_first() else {
        return;
    };
    let decoder = match table % 6 {
        0 => rf::message,
        1 => rf::usage,
        2 => rf::blob_usage,
        3 => rf::blob,
        4 => rf::expiry,
        _ => rf::meta_u64,
    };
    if let Some(again) = decoder(value) {
        assert_eq!(again, value);
    }
}

/// A client's upload state file (`uploads/*.upload`).
pub fn upload_state(data: &[u8]) {
    use sotto_client::upload_state::UploadState;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(state) = UploadState::decode(text) {
        let again = UploadState::decode(&state.encode());
        assert_eq!(again.as_ref(), Some(&state));
    }
}

/// A text body, for seeds.
pub fn text_body(s: &str) -> Body {
    Body::new(Content::Text(s.to_owned()))
}

/// The client's own sealed files past their AEAD, the first byte picking the
/// decoder: 0, the offers of `offers.sealed`; 1, a `history.sealed` entry;
/// anything else, the record framing of a whole `history.sealed` file. What
/// decodes encodes, and decodes again to the same; the framing never claims
/// more than the file holds.
pub fn home_files(data: &[u8]) {
    use sotto_client::fuzzing as cf;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            if let Some((list, encoded)) = cf::offers(rest) {
                let (again, reencoded) = cf::offers(&encoded).expect("re-decodes");
                assert_eq!(again, list);
                assert_eq!(reencoded, encoded);
            }
        }
        1 => {
            if let Some(encoded) = cf::history_entry(rest) {
                assert_eq!(cf::history_entry(&encoded).as_deref(), Some(&encoded[..]));
            }
        }
        _ => {
            if let Some((end, tail, _count)) = cf::history_scan(rest) {
                assert_eq!(end + tail, rest.len() as u64);
            }
        }
    }
}

/// A directory tree's stream as a hostile sender writes it. Whatever is
/// accepted names only paths of plain components (no `.`, `..`, separator,
/// control character or empty name), each once, within
/// the depth and count limits.
pub fn tree_manifest(data: &[u8]) {
    use sotto_client::tree::{MAX_DEPTH, MAX_ENTRIES};
    let Some(paths) = sotto_client::fuzzing::tree_plan(data) else {
        return;
    };
    assert!(paths.len() <= MAX_ENTRIES);
    let mut seen = std::collections::HashSet::new();
    for path in &paths {
        assert!(!path.is_empty() && path.len() <= MAX_DEPTH, "{path:?}");
        for c in path {
            assert!(!c.is_empty() && c != "." && c != "..", "{path:?}");
            assert!(!c.contains(['/', '\\', '\0']), "{path:?}");
            assert!(!c.chars().any(char::is_control), "{path:?}");
            let mut parts = std::path::Path::new(c).components();
            assert!(
                matches!(parts.next(), Some(std::path::Component::Normal(_)))
                    && parts.next().is_none(),
                "{path:?}"
            );
        }
        assert!(seen.insert(path.clone()), "{path:?} twice");
    }
}
