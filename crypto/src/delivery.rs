//! The capabilities of the delivery link, and what the relay keeps of them.
//!
//! A delivery link proves no key (see [`crate::link`]), so what a deliverer
//! may do is decided by what it presents instead:
//!
//! - a mailbox's [`DeliveryToken`] (of `sotto_keys`): 16 random bytes its owner registers with
//!   its relay and gives its contacts end to end (invites, messages). A
//!   delivery that presents it is a contact's; one that presents another is
//!   refused. The relay keeps only its [`TokenHash`], so a copy of the
//!   relay's disk does not let anyone deliver as a contact;
//! - an upload's [`ResumeSecret`]: derived from the file's own key, so the
//!   uploader (and nobody who lacks the file key) can resume the upload on
//!   a later connection. The relay keeps only its [`ResumeProof`], in the
//!   upload's row where an owner-link upload keeps the uploader's key.
//!
//! ```text
//! token_hash   = BLAKE2b-256("sotto delivery token v1" | token)
//! resume       = BLAKE2b-256 keyed with the file key (RFC 7693 keyed mode),
//!                over "sotto upload resume v1" | file id
//! resume_proof = BLAKE2b-256("sotto upload resume proof v1" | resume)
//! ```
//!
//! Secrets zeroize on drop, print as `..`, and compare in constant time.

use std::fmt;

use blake2::digest::consts::U32;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2b, Blake2bMac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use sotto_keys::DeliveryToken;

use crate::file::{FileId, FileKey};

const TOKEN_LABEL: &[u8] = b"sotto delivery token v1";
const RESUME_LABEL: &[u8] = b"sotto upload resume v1";
const PROOF_LABEL: &[u8] = b"sotto upload resume proof v1";

fn blake2b_256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hash = Blake2b::<U32>::new();
    for part in parts {
        Digest::update(&mut hash, part);
    }
    hash.finalize().into()
}

/// What the relay stores and compares instead of a mailbox's token.
pub fn token_hash(token: &DeliveryToken) -> TokenHash {
    TokenHash(blake2b_256(&[TOKEN_LABEL, token.as_bytes()]))
}

/// The hash of a [`DeliveryToken`]: all the relay keeps of it.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        // A hash compared against what a stranger presents: in constant time.
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TokenHash {}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// The capability to resume an upload begun over a delivery link.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct ResumeSecret([u8; 32]);

impl ResumeSecret {
    /// The resume secret of the upload of file `id` under `key`: the same on
    /// every attempt, so a resumption needs nothing saved beyond the key.
    pub fn for_file(key: &FileKey, id: FileId) -> Self {
        // A 32-byte key is always accepted; the fallback only keeps this total.
        let Ok(mut mac) = <Blake2bMac<U32> as KeyInit>::new_from_slice(key.key_bytes()) else {
            return Self(blake2b_256(&[RESUME_LABEL, key.key_bytes(), &id.0]));
        };
        Mac::update(&mut mac, RESUME_LABEL);
        Mac::update(&mut mac, &id.0);
        let mut out = mac.finalize().into_bytes();
        let secret = Self(out.into());
        out.as_mut_slice().zeroize();
        secret
    }

    /// A secret with these bytes (one received over the link).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// What the relay stores and compares instead of the secret.
    pub fn proof(&self) -> ResumeProof {
        ResumeProof(blake2b_256(&[PROOF_LABEL, &self.0]))
    }
}

impl PartialEq for ResumeSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for ResumeSecret {}

impl fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeSecret(..)")
    }
}

/// The hash of a [`ResumeSecret`]: what the relay keeps to recognise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResumeProof(pub [u8; 32]);

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn secrets_never_print_and_hashes_differ_from_what_they_hash() {
        let token = DeliveryToken::from_bytes([7; 16]);
        assert_ne!(&token_hash(&token).0[..16], token.as_bytes());
        assert_eq!(format!("{:?}", token_hash(&token)), "TokenHash(..)");
        let key = FileKey::from_parts(Zeroizing::new([1; 32]), [2; 7]);
        let secret = ResumeSecret::for_file(&key, FileId([3; 16]));
        assert_eq!(format!("{secret:?}"), "ResumeSecret(..)");
        assert_ne!(secret.proof().0, secret.0);
    }

    #[test]
    fn the_resume_secret_follows_the_key_and_the_file() {
        let key = FileKey::from_parts(Zeroizing::new([1; 32]), [2; 7]);
        let other = FileKey::from_parts(Zeroizing::new([9; 32]), [2; 7]);
        let a = ResumeSecret::for_file(&key, FileId([3; 16]));
        assert_eq!(a, ResumeSecret::for_file(&key, FileId([3; 16])));
        assert_ne!(a, ResumeSecret::for_file(&key, FileId([4; 16])));
        assert_ne!(a, ResumeSecret::for_file(&other, FileId([3; 16])));
        assert_eq!(a.proof(), a.clone().proof());
    }
}
