//! Session transport messages: XChaCha20-Poly1305 under a Noise split key,
//! with a fresh random 192-bit nonce for every message.
//!
//! Why not Noise's own transport with counter nonces: a counter lives in the
//! client's state file, and a state file can be restored from a backup, copied
//! to a second machine, or lost in a crash between sealing and saving. Each of
//! those makes a counter run over nonces it already used, sealing a second
//! plaintext under the same key and nonce, which gives away both plaintexts'
//! XOR and the Poly1305 key. A nonce drawn at random from 192 bits cannot
//! repeat, whatever happens to the files: no state is needed to keep it
//! unique. The key is the sender's key of Noise `Split()` (the keys the
//! handshake hands its transport), so forward secrecy is unchanged; the
//! cipher is XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha, the
//! `chacha20poly1305` crate), whose extended nonce exists for exactly this:
//! random nonces under a long-lived key.

use chacha20poly1305::{AeadInPlace, KeyInit, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::error::EnvelopeError;

/// Length of a transport message's nonce.
pub(crate) const NONCE_LEN: usize = 24;
/// A transport message's authentication tag.
pub(crate) const TAG_LEN: usize = 16;

/// A transport message's nonce, sent in the clear before its ciphertext.
pub(crate) type Nonce = [u8; NONCE_LEN];

/// A fresh nonce from the operating system's generator.
pub(crate) fn fresh_nonce() -> Nonce {
    #[cfg(test)]
    if let Some(fixed) = super::fixed::nonce() {
        return fixed;
    }
    let mut n = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut n);
    n
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    // The cipher object wipes its copy of the key when dropped.
    XChaCha20Poly1305::new(key.into())
}

/// `ciphertext | tag` of `padded`, bound to `ad` (the envelope's bytes
/// before the nonce).
pub(crate) fn seal(
    key: &[u8; 32],
    nonce: &Nonce,
    ad: &[u8],
    padded: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(padded.len() + TAG_LEN);
    out.extend_from_slice(padded);
    let tag = cipher(key)
        .encrypt_in_place_detached(XNonce::from_slice(nonce), ad, &mut out)
        .map_err(|_| EnvelopeError::Internal)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The padded plaintext of `ciphertext | tag`, or "decryption failed".
pub(crate) fn open(
    key: &[u8; 32],
    nonce: &Nonce,
    ad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let body_len = sealed
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(EnvelopeError::Decrypt)?;
    let (ciphertext, tag) = sealed.split_at(body_len);
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    cipher(key)
        .decrypt_in_place_detached(XNonce::from_slice(nonce), ad, &mut plain, tag.into())
        .map_err(|_| EnvelopeError::Decrypt)?;
    Ok(plain)
}
