//! End-to-end envelopes, client -> client.
//!
//! An envelope is sealed with the one-way Noise pattern `X`
//! (`Noise_X_25519_ChaChaPoly_BLAKE2s`, `-> e, es, s, ss`) to the recipient's
//! static key. It needs nothing from the recipient, so it works while they are
//! offline; the sender's static key travels encrypted inside the Noise message
//! (never beside it), and `ss` authenticates it. The relay sees only
//! `version | kind | noise message`.
//!
//! What `X` does not give, and how sotto makes up for it (Noise rev. 34 §7.7):
//! an `X` message can be replayed, so every body carries a random 16-byte id and
//! the receiver shows an id once; it has no forward secrecy against a later theft
//! of the recipient's key — sessions (kinds 2 to 4, [`crate::session`]) add that.
//!
//! The plaintext is padded to a size bucket so the relay learns less from
//! lengths: `u32 LE body length | body | zero bytes` up to the smallest of
//! [`BUCKETS`] that fits. The body is postcard-encoded [`Body`].

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sotto_keys::{DeliveryToken, PublicKey, RelayAddr, RelayKey, SecretKey};

use crate::error::EnvelopeError;

/// Envelope format version (first byte).
pub const ENVELOPE_VERSION: u8 = 1;
/// Kind byte of a one-shot `X` envelope.
pub const KIND_ONE_SHOT: u8 = 1;
/// Kind byte of a session init: `IK` message 1 (see [`crate::session`]).
pub const KIND_SESSION_INIT: u8 = 2;
/// Kind byte of a session accept: `IK` message 2 and a transport message.
pub const KIND_SESSION_ACCEPT: u8 = 3;
/// Kind byte of a session message: a transport message.
pub const KIND_SESSION_MESSAGE: u8 = 4;
/// The Noise protocol name of one-shot envelopes.
pub const ENVELOPE_NOISE_PARAMS: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
/// The Noise prologue of one-shot envelopes (binds version and kind).
pub const ENVELOPE_PROLOGUE: &[u8] = b"sotto envelope v1 kind 1";

const HEADER_LEN: usize = 2;
/// e (32) + encrypted s (32 + 16) + payload tag (16).
const NOISE_OVERHEAD: usize = 32 + 48 + 16;
const MAX_NOISE_MSG: usize = 65_535;
/// Largest padded plaintext in one envelope.
pub const MAX_PADDED_LEN: usize = MAX_NOISE_MSG - NOISE_OVERHEAD;
/// Padded plaintext sizes. The last bucket is "as large as Noise allows".
pub const BUCKETS: [usize; 5] = [256, 1024, 4096, 16_384, MAX_PADDED_LEN];
/// Largest envelope on the wire, of any kind: a session init (kind 2) in the
/// largest bucket, whose Noise message is as long as a one-shot's plus a
/// 16-byte session id and an 8-byte timestamp in its header.
pub const MAX_ENVELOPE_LEN: usize = HEADER_LEN + 16 + 8 + MAX_NOISE_MSG;
/// Largest one-shot (kind 1) envelope.
pub const MAX_ONE_SHOT_LEN: usize = HEADER_LEN + MAX_NOISE_MSG;
/// Largest encoded body.
pub const MAX_BODY_LEN: usize = MAX_PADDED_LEN - 4;

/// A random message id: what makes a replayed or re-delivered envelope
/// recognisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        Self(id)
    }
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A text message.
    Text(String),
    /// A file uploaded to the relay, sealed under the key in the offer.
    File(crate::file::FileOffer),
    /// A text message to a group: the sender fans one envelope out to each
    /// member, every one carrying the group's name as the sender calls it.
    /// Appended last so the encodings of the variants above do not change.
    GroupText {
        /// The group's name in the sender's contacts (chosen by the sender:
        /// shown neutralised, next to the real sender).
        group: String,
        /// The message.
        text: String,
    },
    /// An end-to-end receipt: the recipient of the messages `ids` says how
    /// far they got. Sent only to contacts, never for a receipt, one per
    /// sender per batch. Appended last, like `GroupText`.
    Receipt {
        /// How far they got.
        state: ReceiptState,
        /// The ids of the message bodies it is about.
        ids: Vec<MessageId>,
    },
    /// A presence notice, sent live-only (`Notify`) to each contact; never
    /// a message: not shown as one, not kept. Appended last, after `Receipt`.
    Presence(Presence),
    /// Where to reach me from now on: sent end to end to each contact when
    /// my relay, its key or my mailbox's delivery token changes, and to a
    /// contact who has not been told yet. Only the sender's own contact
    /// entry is ever updated from it. Appended last, after `Presence`.
    Reach(Reach),
    /// A directory tree dropped as one file: the offer's blob holds a
    /// manifest of the tree's entries, then their contents (the client's
    /// business, PROTOCOL §9.9); `name` is the top directory's, `size` and
    /// `hash` those of the whole stream. Appended last, after `Reach`.
    Tree(crate::file::FileOffer),
}

/// The sender's relay, that relay's key, and the delivery token of the
/// sender's mailbox there: everything a contact needs to deliver to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Counts the sender's changes: a receiver keeps the highest it has
    /// seen, so an older notice arriving late (from a relay being drained,
    /// say) never undoes a newer one.
    pub seq: u64,
    /// The relay the sender reads from.
    pub relay: RelayAddr,
    /// That relay's key, pinned by whoever delivers there.
    pub relay_key: RelayKey,
    /// The sender's mailbox token on that relay.
    pub token: DeliveryToken,
}

/// What a presence notice says. Only contacts are told, end to end; the
/// receiver refuses a notice dated outside a short freshness window, so a
/// replayed one is worthless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    /// I am online. With `reply`, I just arrived and ask contacts who are
    /// online to say so (with `reply: false`, which is never answered).
    Online {
        /// Answer me with your own `Online { reply: false }`.
        reply: bool,
    },
    /// I am leaving.
    Offline,
}

/// How far a message got at its recipient (the third state, "stored on
/// the relay", is the relay's own `Stored` answer to the sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReceiptState {
    /// Opened and recorded by the recipient's client.
    Delivered,
    /// Shown to the recipient.
    Read,
}

/// Most ids in one receipt: 16 bytes each, so a receipt stays in a 16 KiB
/// bucket; a longer batch is acknowledged in several receipts.
pub const MAX_RECEIPT_IDS: usize = 900;

/// The plaintext of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// Unique id, for duplicate suppression.
    pub id: MessageId,
    /// When the sender sealed it, in milliseconds since the Unix epoch (sender's clock).
    pub sent_at_ms: u64,
    /// The content.
    pub content: Content,
}

impl Body {
    /// A new body with a fresh id, stamped now.
    pub fn new(content: Content) -> Self {
        let sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            id: MessageId::random(),
            sent_at_ms,
            content,
        }
    }
}

/// An opened envelope: the authenticated sender and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sender's static key, proven by the Noise `ss` token.
    pub sender: PublicKey,
    /// What they sent.
    pub body: Body,
}

fn builder<'a>() -> Result<snow::Builder<'a>, EnvelopeError> {
    let params = ENVELOPE_NOISE_PARAMS
        .parse()
        .map_err(|_| EnvelopeError::Internal)?;
    snow::Builder::new(params)
        .prologue(ENVELOPE_PROLOGUE)
        .map_err(|_| EnvelopeError::Internal)
}

/// The padded plaintext length for a body of `len` bytes.
pub fn padded_len(len: usize) -> Result<usize, EnvelopeError> {
    BUCKETS
        .iter()
        .copied()
        .find(|b| *b >= len + 4)
        .ok_or(EnvelopeError::TooLarge {
            len,
            max: MAX_BODY_LEN,
        })
}

/// Seals `body` from `sender` to `recipient`.
pub fn seal(
    sender: &SecretKey,
    recipient: &PublicKey,
    body: &Body,
) -> Result<Vec<u8>, EnvelopeError> {
    seal_inner(sender, recipient, body, None)
}

/// [`seal`] with a chosen ephemeral key, for the known-answer vectors of
/// docs/PROTOCOL.md. An ephemeral key must never be chosen outside a test.
#[cfg(test)]
pub(crate) fn seal_with_ephemeral(
    sender: &SecretKey,
    recipient: &PublicKey,
    body: &Body,
    ephemeral: &[u8; 32],
) -> Result<Vec<u8>, EnvelopeError> {
    seal_inner(sender, recipient, body, Some(ephemeral))
}

/// The padded plaintext of `body`: `u32 LE length | body | zeros` up to its bucket.
pub(crate) fn pad(body: &Body) -> Result<Vec<u8>, EnvelopeError> {
    let encoded = postcard::to_stdvec(body).map_err(|_| EnvelopeError::Internal)?;
    pad_encoded(&encoded)
}

/// The padded plaintext of an already encoded body (empty: no body at all, as
/// in a session's bare init or accept; no encoded `Body` is empty).
pub(crate) fn pad_encoded(encoded: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut padded = vec![0u8; padded_len(encoded.len())?];
    padded[..4].copy_from_slice(&(encoded.len() as u32).to_le_bytes());
    padded[4..4 + encoded.len()].copy_from_slice(encoded);
    Ok(padded)
}

/// Decodes a body, refusing trailing bytes.
pub(crate) fn decode_body(bytes: &[u8]) -> Result<Body, EnvelopeError> {
    match postcard::take_from_bytes(bytes) {
        Ok((body, [])) => Ok(body),
        _ => Err(EnvelopeError::Malformed("undecodable body")),
    }
}

fn seal_inner(
    sender: &SecretKey,
    recipient: &PublicKey,
    body: &Body,
    fixed_ephemeral: Option<&[u8; 32]>,
) -> Result<Vec<u8>, EnvelopeError> {
    let padded = pad(body)?;
    let secret = sender.to_bytes();
    let mut builder = builder()?
        .local_private_key(secret.as_ref())
        .map_err(|_| EnvelopeError::Internal)?
        .remote_public_key(recipient.as_bytes())
        .map_err(|_| EnvelopeError::Internal)?;
    if let Some(e) = fixed_ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = builder
        .build_initiator()
        .map_err(|_| EnvelopeError::Internal)?;
    let mut out = vec![0u8; HEADER_LEN + NOISE_OVERHEAD + padded.len()];
    out[0] = ENVELOPE_VERSION;
    out[1] = KIND_ONE_SHOT;
    // -> e, es, s, ss
    let n = hs
        .write_message(&padded, &mut out[HEADER_LEN..])
        .map_err(|_| EnvelopeError::Internal)?;
    out.truncate(HEADER_LEN + n);
    Ok(out)
}

/// Opens an envelope addressed to `recipient`.
pub fn open(recipient: &SecretKey, envelope: &[u8]) -> Result<Opened, EnvelopeError> {
    let (header, msg) = envelope
        .split_at_checked(HEADER_LEN)
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    if header != [ENVELOPE_VERSION, KIND_ONE_SHOT] {
        return Err(EnvelopeError::Unsupported {
            version: header[0],
            kind: header[1],
        });
    }
    if msg.len() > MAX_NOISE_MSG || msg.len() < NOISE_OVERHEAD {
        return Err(EnvelopeError::Decrypt);
    }
    let secret = recipient.to_bytes();
    let mut hs = builder()?
        .local_private_key(secret.as_ref())
        .map_err(|_| EnvelopeError::Internal)?
        .build_responder()
        .map_err(|_| EnvelopeError::Internal)?;
    let mut padded = vec![0u8; msg.len()];
    let n = hs
        .read_message(msg, &mut padded)
        .map_err(|_| EnvelopeError::Decrypt)?;
    let sender = hs
        .get_remote_static()
        .and_then(|k| PublicKey::from_slice(k).ok())
        .filter(|k| !k.is_weak())
        .ok_or(EnvelopeError::Decrypt)?;
    let body = decode_body(unpad(&padded[..n])?)?;
    Ok(Opened { sender, body })
}

pub(crate) fn unpad(padded: &[u8]) -> Result<&[u8], EnvelopeError> {
    let (len, rest) = padded
        .split_first_chunk::<4>()
        .ok_or(EnvelopeError::Malformed("no length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err(EnvelopeError::Malformed("length past the end"));
    }
    let (body, padding) = rest.split_at(len);
    if !BUCKETS.contains(&padded.len()) || padding.iter().any(|b| *b != 0) {
        return Err(EnvelopeError::Malformed("bad padding"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(s: &str) -> Body {
        Body::new(Content::Text(s.to_owned()))
    }

    #[test]
    fn seal_open_round_trip_names_the_sender() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let body = text("hello bob");
        let env = seal(&alice, &bob.public(), &body).unwrap();
        let opened = open(&bob, &env).unwrap();
        assert_eq!(opened.sender, alice.public());
        assert_eq!(opened.body, body);
    }

    #[test]
    fn the_relay_sees_neither_text_nor_sender_key() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let env = seal(&alice, &bob.public(), &text("a very recognisable marker")).unwrap();
        let hay = String::from_utf8_lossy(&env);
        assert!(!hay.contains("recognisable"));
        assert!(!env.windows(32).any(|w| w == alice.public().as_bytes()));
    }

    #[test]
    fn wrong_recipient_cannot_open() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let eve = SecretKey::generate();
        let env = seal(&alice, &bob.public(), &text("for bob")).unwrap();
        assert_eq!(open(&eve, &env), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let env = seal(&alice, &bob.public(), &text("x")).unwrap();
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(open(&bob, &bad).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(open(&bob, &env[..env.len() - 1]).is_err());
    }

    #[test]
    fn lengths_fall_into_buckets() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let short = seal(&alice, &bob.public(), &text("hi")).unwrap();
        let longer = seal(&alice, &bob.public(), &text(&"y".repeat(200))).unwrap();
        assert_eq!(short.len(), longer.len());
        assert_eq!(short.len(), HEADER_LEN + NOISE_OVERHEAD + 256);
        let big = seal(&alice, &bob.public(), &text(&"z".repeat(2000))).unwrap();
        assert_eq!(big.len(), HEADER_LEN + NOISE_OVERHEAD + 4096);
    }

    #[test]
    fn the_largest_body_fits_and_one_more_byte_does_not() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let overhead = postcard::to_stdvec(&text("")).unwrap().len() + 2; // varint grows by 2
        let fits = text(&"a".repeat(MAX_BODY_LEN - overhead));
        let env = seal(&alice, &bob.public(), &fits).unwrap();
        assert_eq!(env.len(), MAX_ONE_SHOT_LEN);
        assert!(env.len() <= MAX_ENVELOPE_LEN);
        assert_eq!(open(&bob, &env).unwrap().body, fits);
        let too_big = text(&"a".repeat(MAX_BODY_LEN - overhead + 1));
        assert!(matches!(
            seal(&alice, &bob.public(), &too_big),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn presence_is_appended_and_fits_the_smallest_bucket() {
        // Variant 4 of `Content`: the encodings before it are unchanged.
        let online = Content::Presence(Presence::Online { reply: true });
        assert_eq!(postcard::to_stdvec(&online).unwrap(), [4, 0, 1]);
        assert_eq!(
            postcard::to_stdvec(&Content::Presence(Presence::Offline)).unwrap(),
            [4, 1]
        );
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let body = Body::new(online);
        let env = seal(&alice, &bob.public(), &body).unwrap();
        assert_eq!(env.len(), HEADER_LEN + NOISE_OVERHEAD + 256);
        assert_eq!(open(&bob, &env).unwrap().body, body);
    }

    #[test]
    fn reach_is_appended_and_its_encoding_is_fixed() {
        // Variant 5 of `Content`; docs/PROTOCOL.md quotes these bytes.
        let reach = Content::Reach(Reach {
            seq: 2,
            relay: "relay.example:7300".parse().unwrap(),
            relay_key: RelayKey::from_bytes([1; 32]),
            token: DeliveryToken::from_bytes([3; 16]),
        });
        let bytes = postcard::to_stdvec(&reach).unwrap();
        let mut expected = vec![5, 2, 18];
        expected.extend_from_slice(b"relay.example:7300");
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&[3; 16]);
        assert_eq!(bytes, expected);
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let body = Body::new(reach);
        let env = seal(&alice, &bob.public(), &body).unwrap();
        assert_eq!(env.len(), HEADER_LEN + NOISE_OVERHEAD + 256);
        let opened = open(&bob, &env).unwrap();
        assert_eq!(opened.body, body);
        assert_eq!(opened.sender, alice.public());
    }

    #[test]
    fn unknown_versions_are_refused_by_name() {
        let bob = SecretKey::generate();
        assert_eq!(
            open(&bob, &[2, 1, 0, 0]),
            Err(EnvelopeError::Unsupported {
                version: 2,
                kind: 1
            })
        );
        assert!(open(&bob, &[]).is_err());
    }

    proptest! {
        #[test]
        fn opening_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let bob = SecretKey::generate();
            let mut env = vec![ENVELOPE_VERSION, KIND_ONE_SHOT];
            env.extend(bytes);
            prop_assert!(open(&bob, &env).is_err());
        }

        #[test]
        fn unpad_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unpad(&bytes);
        }
    }
}
