//! The Noise side of sessions: the `IK` handshake, the split keys it ends
//! with, and a snow resolver whose secrets are wiped when dropped.
//!
//! Everything cryptographic here is snow's: the handshake and the split. (The
//! transport messages that follow use the split keys with random nonces, see
//! `transport`.) This module only decides which snow calls happen, and supplies
//! snow with X25519 and ChaCha20-Poly1305 objects (x25519-dalek and
//! chacha20poly1305, the crates snow's default resolver uses) that zeroize their
//! keys on drop, which snow 0.10's defaults do not.

use rand_core::{OsRng, RngCore};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::HandshakeState;
use sotto_keys::{PublicKey, SecretKey};
use zeroize::{Zeroize, Zeroizing};

use super::SessionId;
use crate::error::EnvelopeError;

/// The Noise protocol name of session handshakes.
pub const SESSION_NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The first bytes of a session handshake's prologue; the session id (16
/// bytes) and the init's `created_at_ms` (u64 LE) follow.
pub const SESSION_PROLOGUE_LABEL: &[u8] = b"sotto envelope v1 kind 2";

/// A 32-byte secret: a split key or an ephemeral private key. Boxed, so that
/// moving its owner (a `Vec` of sessions growing or shifting) moves a pointer
/// and leaves no stray copy of the key behind; wiped on drop.
pub(crate) type CipherKey = Box<Zeroizing<[u8; 32]>>;

/// A zeroed [`CipherKey`], to copy a secret into (no stray stack copy).
pub(crate) fn zeroed_key() -> CipherKey {
    Box::new(Zeroizing::new([0u8; 32]))
}

/// `e (32) | encrypted s (32 + 16) | payload tag (16)`: what message 1 adds
/// to its payload (the same tokens, hence the same size, as a one-shot `X`).
pub(crate) const MSG1_OVERHEAD: usize = 32 + 48 + 16;
/// Message 2 is `e (32) | tag of the empty payload (16)`.
pub(crate) const MSG2_LEN: usize = 32 + 16;
/// The tag ChaCha20-Poly1305 adds inside the handshake.
const TAG_LEN: usize = 16;

/// The two keys of Noise `Split()`: the initiator's sending key and the
/// responder's sending key. Everything a session needs to carry messages.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SplitKeys {
    pub(crate) initiator: CipherKey,
    pub(crate) responder: CipherKey,
}

impl SplitKeys {
    fn take(hs: &mut HandshakeState) -> Self {
        // Snow computes Split() only when asked for the raw keys or for a
        // transport object; the raw keys are what we can save and restore.
        let (mut i, mut r) = hs.dangerously_get_raw_split();
        let mut keys = Self {
            initiator: zeroed_key(),
            responder: zeroed_key(),
        };
        keys.initiator.copy_from_slice(&i);
        keys.responder.copy_from_slice(&r);
        i.zeroize();
        r.zeroize();
        keys
    }
}

/// `"sotto envelope v1 kind 2" | session id (16) | created_at_ms (u64 LE)`.
pub(crate) fn prologue(id: &SessionId, created_at_ms: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(SESSION_PROLOGUE_LABEL.len() + 16 + 8);
    p.extend_from_slice(SESSION_PROLOGUE_LABEL);
    p.extend_from_slice(&id.0);
    p.extend_from_slice(&created_at_ms.to_le_bytes());
    p
}

fn builder<'a>(params: &str, prologue: &'a [u8]) -> Result<snow::Builder<'a>, EnvelopeError> {
    let params = params.parse().map_err(|_| EnvelopeError::Internal)?;
    snow::Builder::with_resolver(params, Box::new(ZeroizingResolver))
        .prologue(prologue)
        .map_err(|_| EnvelopeError::Internal)
}

/// A fresh ephemeral private key for a session init.
pub(crate) fn new_ephemeral() -> CipherKey {
    let mut e = zeroed_key();
    #[cfg(test)]
    if let Some(fixed) = super::fixed::ephemeral() {
        e.copy_from_slice(&fixed);
        return e;
    }
    OsRng.fill_bytes(&mut e[..]);
    e
}

/// The initiator's handshake state after writing message 1, and message 1.
///
/// Deterministic in its inputs: called again with the same ephemeral key and
/// payload it rebuilds the very same state (and the very same bytes), which is
/// how a pending init survives a restart (snow cannot serialise a handshake).
/// It goes through snow's hook for a caller-chosen ephemeral key
/// (`fixed_ephemeral_key_for_testing_only`, public but `doc(hidden)`: should a
/// snow upgrade drop it, this stops compiling rather than misbehaving), whose
/// name warns against choosing one: the key here is fresh from the OS for
/// every init and is only ever reused to rewrite that init's own message 1,
/// identical to the byte, so no key or nonce ever covers two plaintexts.
pub(crate) fn write_init(
    me: &SecretKey,
    peer: &PublicKey,
    id: &SessionId,
    created_at_ms: u64,
    ephemeral: &[u8; 32],
    payload: &[u8],
) -> Result<(HandshakeState, Vec<u8>), EnvelopeError> {
    let prologue = prologue(id, created_at_ms);
    let secret = me.to_bytes();
    let mut hs = builder(SESSION_NOISE_PARAMS, &prologue)?
        .local_private_key(secret.as_ref())
        .map_err(|_| EnvelopeError::Internal)?
        .remote_public_key(peer.as_bytes())
        .map_err(|_| EnvelopeError::Internal)?
        .fixed_ephemeral_key_for_testing_only(ephemeral)
        .build_initiator()
        .map_err(|_| EnvelopeError::Internal)?;
    let mut msg1 = vec![0u8; MSG1_OVERHEAD + payload.len()];
    // -> e, es, s, ss
    let n = hs
        .write_message(payload, &mut msg1)
        .map_err(|_| EnvelopeError::Internal)?;
    msg1.truncate(n);
    Ok((hs, msg1))
}

/// The initiator reads message 2 and gets the session keys.
pub(crate) fn complete_init(
    me: &SecretKey,
    peer: &PublicKey,
    id: &SessionId,
    created_at_ms: u64,
    ephemeral: &[u8; 32],
    payload: &[u8],
    msg2: &[u8; MSG2_LEN],
) -> Result<SplitKeys, EnvelopeError> {
    let (mut hs, _) = write_init(me, peer, id, created_at_ms, ephemeral, payload)?;
    let mut empty = [0u8; MSG2_LEN];
    // <- e, ee, se
    let n = hs
        .read_message(msg2, &mut empty)
        .map_err(|_| EnvelopeError::Decrypt)?;
    if n != 0 || !hs.is_handshake_finished() {
        return Err(EnvelopeError::Decrypt);
    }
    Ok(SplitKeys::take(&mut hs))
}

/// What the responder learns from message 1.
pub(crate) struct ReadInit {
    hs: HandshakeState,
    /// The initiator's static key, proven by `ss`.
    pub(crate) sender: PublicKey,
    /// The padded payload.
    pub(crate) payload: Zeroizing<Vec<u8>>,
}

/// The responder reads message 1.
pub(crate) fn read_init(
    me: &SecretKey,
    id: &SessionId,
    created_at_ms: u64,
    msg1: &[u8],
) -> Result<ReadInit, EnvelopeError> {
    let prologue = prologue(id, created_at_ms);
    let secret = me.to_bytes();
    let builder = builder(SESSION_NOISE_PARAMS, &prologue)?
        .local_private_key(secret.as_ref())
        .map_err(|_| EnvelopeError::Internal)?;
    // The known-answer vectors fix the responder's ephemeral key (test builds only).
    #[cfg(test)]
    let fixed = super::fixed::ephemeral().map(Zeroizing::new);
    #[cfg(test)]
    let builder = match &fixed {
        Some(e) => builder.fixed_ephemeral_key_for_testing_only(&e[..]),
        None => builder,
    };
    let mut hs = builder
        .build_responder()
        .map_err(|_| EnvelopeError::Internal)?;
    let mut payload = Zeroizing::new(vec![0u8; msg1.len()]);
    // -> e, es, s, ss
    let n = hs
        .read_message(msg1, &mut payload)
        .map_err(|_| EnvelopeError::Decrypt)?;
    payload.truncate(n);
    let sender = hs
        .get_remote_static()
        .and_then(|k| PublicKey::from_slice(k).ok())
        .filter(|k| !k.is_weak())
        .ok_or(EnvelopeError::Decrypt)?;
    Ok(ReadInit {
        hs,
        sender,
        payload,
    })
}

impl ReadInit {
    /// The responder writes message 2 (empty payload) and gets the session keys.
    pub(crate) fn accept(mut self) -> Result<([u8; MSG2_LEN], SplitKeys), EnvelopeError> {
        let mut msg2 = [0u8; MSG2_LEN];
        // <- e, ee, se
        let n = self
            .hs
            .write_message(&[], &mut msg2)
            .map_err(|_| EnvelopeError::Internal)?;
        if n != MSG2_LEN || !self.hs.is_handshake_finished() {
            return Err(EnvelopeError::Internal);
        }
        Ok((msg2, SplitKeys::take(&mut self.hs)))
    }
}

/// snow's default resolver, with X25519 and ChaCha20-Poly1305 objects that
/// wipe their keys when dropped. Hashing and randomness are snow's own.
///
/// What this does not reach: snow keeps the handshake's chaining key in plain
/// arrays inside `HandshakeState`, which lives on the stack for the length of
/// one call here; snow does not wipe it.
struct ZeroizingResolver;

impl CryptoResolver for ZeroizingResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::ChaChaPoly => Some(Box::new(ChaChaPoly::default())),
            _ => None,
        }
    }
}

/// X25519 for snow; the secret is an x25519-dalek `StaticSecret`, wiped on drop.
struct X25519 {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl Default for X25519 {
    fn default() -> Self {
        let secret = x25519_dalek::StaticSecret::from([0u8; 32]);
        let public = x25519_dalek::PublicKey::from(&secret);
        Self { secret, public }
    }
}

impl X25519 {
    fn set_bytes(&mut self, bytes: Zeroizing<[u8; 32]>) {
        self.secret = x25519_dalek::StaticSecret::from(*bytes);
        self.public = x25519_dalek::PublicKey::from(&self.secret);
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let n = privkey.len().min(32);
        bytes[..n].copy_from_slice(&privkey[..n]);
        self.set_bytes(bytes);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(bytes.as_mut())?;
        self.set_bytes(bytes);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let theirs: [u8; 32] = pubkey
            .get(..32)
            .and_then(|k| k.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(theirs));
        // A low-order public key makes the output predictable (Noise §14):
        // refuse it rather than derive keys anyone could compute.
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..32)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// Noise's ChaChaPoly for snow (RFC 8439, nonce = 4 zero bytes | u64 LE),
/// with the key in a zeroizing box.
#[derive(Default)]
struct ChaChaPoly {
    key: Zeroizing<[u8; 32]>,
}

impl ChaChaPoly {
    fn aead(&self) -> chacha20poly1305::ChaCha20Poly1305 {
        use chacha20poly1305::KeyInit;
        // The AEAD object wipes its copy of the key when dropped.
        chacha20poly1305::ChaCha20Poly1305::new(self.key.as_ref().into())
    }
}

fn noise_nonce(nonce: u64) -> chacha20poly1305::Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&nonce.to_le_bytes());
    bytes.into()
}

impl Cipher for ChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.key.copy_from_slice(key);
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        use chacha20poly1305::AeadInPlace;
        // snow checks `out` against the plaintext length plus the tag before
        // calling, and bounds messages to 65,535 bytes.
        let len = plaintext.len();
        out[..len].copy_from_slice(plaintext);
        let tag = self
            .aead()
            .encrypt_in_place_detached(&noise_nonce(nonce), authtext, &mut out[..len])
            .expect("ChaCha20-Poly1305 refuses only messages of more than 256 GiB");
        out[len..len + TAG_LEN].copy_from_slice(&tag);
        len + TAG_LEN
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        use chacha20poly1305::AeadInPlace;
        let len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        let (body, tag) = ciphertext.split_at(len);
        let out = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        out.copy_from_slice(body);
        if self
            .aead()
            .decrypt_in_place_detached(&noise_nonce(nonce), authtext, out, tag.into())
            .is_err()
        {
            out.zeroize();
            return Err(snow::Error::Decrypt);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_builder<'a>(params: &str, prologue: &'a [u8]) -> snow::Builder<'a> {
        snow::Builder::new(params.parse().unwrap())
            .prologue(prologue)
            .unwrap()
    }

    /// The zeroizing resolver speaks exactly snow's default Noise: an `IK`
    /// handshake with a peer on snow's own resolver ends in the same split
    /// keys on both sides, and a message 1 rebuilt from the saved ephemeral
    /// key and payload completes it.
    #[test]
    fn interoperates_with_snow_default_resolver() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let id = SessionId([7; 16]);
        let e = new_ephemeral();
        let payload = b"first payload";
        let (_, msg1) = write_init(&alice, &bob.public(), &id, 42, &e, payload).unwrap();

        // Bob on snow's defaults.
        let prologue = prologue(&id, 42);
        let bob_secret = bob.to_bytes();
        let mut hs = default_builder(SESSION_NOISE_PARAMS, &prologue)
            .local_private_key(bob_secret.as_ref())
            .unwrap()
            .build_responder()
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = hs.read_message(&msg1, &mut buf).unwrap();
        assert_eq!(&buf[..n], payload);
        assert_eq!(hs.get_remote_static().unwrap(), alice.public().as_bytes());
        let mut msg2 = [0u8; MSG2_LEN];
        assert_eq!(hs.write_message(&[], &mut msg2).unwrap(), MSG2_LEN);
        let (bob_i, bob_r) = hs.dangerously_get_raw_split();

        // Alice rebuilds her state from the ephemeral key and the payload.
        let keys = complete_init(&alice, &bob.public(), &id, 42, &e, payload, &msg2).unwrap();
        assert_eq!(**keys.initiator, bob_i);
        assert_eq!(**keys.responder, bob_r);
        assert_ne!(bob_i, bob_r);
    }

    #[test]
    fn rewriting_message_1_is_byte_identical() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let id = SessionId([1; 16]);
        let e = new_ephemeral();
        let (_, a) = write_init(&alice, &bob.public(), &id, 5, &e, b"x").unwrap();
        let (_, b) = write_init(&alice, &bob.public(), &id, 5, &e, b"x").unwrap();
        assert_eq!(a, b);
        let (_, c) = write_init(&alice, &bob.public(), &id, 5, &new_ephemeral(), b"x").unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn prologue_binds_id_and_time() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let id = SessionId([1; 16]);
        let e = new_ephemeral();
        let (_, msg1) = write_init(&alice, &bob.public(), &id, 5, &e, b"x").unwrap();
        assert!(read_init(&bob, &id, 5, &msg1).is_ok());
        assert!(read_init(&bob, &SessionId([2; 16]), 5, &msg1).is_err());
        assert!(read_init(&bob, &id, 6, &msg1).is_err());
    }

    #[test]
    fn low_order_points_are_refused() {
        let mut dh = X25519::default();
        dh.set(&[9; 32]);
        let mut out = [0u8; 32];
        assert!(dh.dh(&[0; 32], &mut out).is_err());
        assert!(dh.dh(&[1; 31], &mut out).is_err());
        let other = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([5; 32]));
        assert!(dh.dh(other.as_bytes(), &mut out).is_ok());
    }
}
