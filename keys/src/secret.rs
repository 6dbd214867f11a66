//! Secret keys.
//!
//! A secret key never prints (no `Debug`, no `Display`), is wiped from memory
//! when dropped, and leaves this type only as a [`Zeroizing`] copy handed to
//! the Noise implementation.

use rand_core::OsRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::public::{PublicKey, PUBLIC_KEY_LEN};

/// An X25519 static secret key: a client's identity or a relay's.
///
/// Zeroized on drop (x25519-dalek's `zeroize` feature).
pub struct SecretKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl SecretKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Self {
        Self::from_secret(StaticSecret::random_from_rng(OsRng))
    }

    /// Rebuilds a key from its 32 secret bytes (as stored in a key file).
    pub fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self::from_secret(StaticSecret::from(*bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from_bytes(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret bytes, for the Noise implementation or a key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; PUBLIC_KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        Self::from_bytes(self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_rebuild_to_the_same_public_key() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        assert_ne!(a.public(), b.public());
        let again = SecretKey::from_bytes(a.to_bytes());
        assert_eq!(again.public(), a.public());
    }
}
