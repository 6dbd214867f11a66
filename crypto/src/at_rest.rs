//! Sealing the client's local files under a key derived from its identity.
//!
//! The client home holds more than the key file: session keys, the offers of
//! files not yet received (each with its file's key), the message history. A
//! passphrase on the key file protects none of that unless those files are
//! sealed too, under a key that only the identity secret gives. So every such
//! file is sealed with an [`AtRestKey`]:
//!
//! ```text
//! key    = BLAKE2b-256 keyed with the identity secret key (RFC 7693 keyed mode), over a label
//! sealed = nonce (24, random) | XChaCha20-Poly1305 ciphertext | tag (16)
//! ```
//!
//! One label per use (the session state, the offers, the history), so a record
//! of one file never opens as a record of another; the caller's associated
//! data binds a record to its place (a file's magic and version, say). The
//! nonce is random and 192 bits long, so no key and nonce ever meet twice,
//! however often a file is rewritten, copied or restored from a backup.

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;
use chacha20poly1305::{AeadInPlace, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use sotto_keys::SecretKey;
use zeroize::{Zeroize, Zeroizing};

/// Length of the random nonce in front of a sealed record.
pub const NONCE_LEN: usize = 24;
/// Length of the authentication tag at its end.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a record: nonce and tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Why a sealed record did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AtRestError {
    /// Another identity's key, another label or place, tampering, or truncation.
    #[error("decryption failed")]
    Decrypt,
    /// A local crypto operation failed.
    #[error("internal crypto error")]
    Internal,
}

/// A key for the local files of one identity and one use. Its AEAD object
/// wipes the key when dropped; there is no `Debug`.
pub struct AtRestKey(XChaCha20Poly1305);

impl AtRestKey {
    /// The key of `label`'s files, derived from the identity secret `me`.
    pub fn derive(me: &SecretKey, label: &[u8]) -> Result<Self, AtRestError> {
        let secret = me.to_bytes();
        let mut mac = <Blake2bMac<U32> as KeyInit>::new_from_slice(secret.as_ref())
            .map_err(|_| AtRestError::Internal)?;
        Mac::update(&mut mac, label);
        let mut out = mac.finalize().into_bytes();
        let key = Zeroizing::new(<[u8; 32]>::from(out));
        out.as_mut_slice().zeroize();
        Ok(Self(<XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(
            key.as_ref().into(),
        )))
    }

    /// `nonce | ciphertext | tag` of `plain`, bound to `ad`.
    pub fn seal(&self, ad: &[u8], plain: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .0
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), ad, &mut out[NONCE_LEN..])
            .map_err(|_| AtRestError::Internal)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`AtRestKey::seal`] gave for the same `ad`. The plaintext
    /// is wiped when dropped.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AtRestError> {
        let (nonce, rest) = sealed
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(AtRestError::Decrypt)?;
        let body_len = rest
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(AtRestError::Decrypt)?;
        let (ciphertext, tag) = rest.split_at(body_len);
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        self.0
            .decrypt_in_place_detached(XNonce::from_slice(nonce), ad, &mut plain, tag.into())
            .map_err(|_| AtRestError::Decrypt)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_only_with_its_identity_label_and_place() {
        let me = SecretKey::generate();
        let key = AtRestKey::derive(&me, b"label a").unwrap();
        let sealed = key.seal(b"place", b"secret words").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 12);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(&key.open(b"place", &sealed).unwrap()[..], b"secret words");

        assert_eq!(
            key.open(b"other", &sealed).err(),
            Some(AtRestError::Decrypt)
        );
        let other_label = AtRestKey::derive(&me, b"label b").unwrap();
        assert_eq!(
            other_label.open(b"place", &sealed).err(),
            Some(AtRestError::Decrypt)
        );
        let other_identity = AtRestKey::derive(&SecretKey::generate(), b"label a").unwrap();
        assert_eq!(
            other_identity.open(b"place", &sealed).err(),
            Some(AtRestError::Decrypt)
        );
        for cut in [0, 1, NONCE_LEN, OVERHEAD - 1, sealed.len() - 1] {
            assert_eq!(
                key.open(b"place", &sealed[..cut]).err(),
                Some(AtRestError::Decrypt)
            );
        }
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(
            key.open(b"place", &flipped).err(),
            Some(AtRestError::Decrypt)
        );
    }

    #[test]
    fn the_same_record_sealed_twice_shares_no_nonce() {
        let key = AtRestKey::derive(&SecretKey::generate(), b"l").unwrap();
        let a = key.seal(b"", b"x").unwrap();
        let b = key.seal(b"", b"x").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }
}
