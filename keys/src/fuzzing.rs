//! Entry points for the fuzz targets (`fuzz/`) and their regression tests.
//!
//! [`keyfile::load`](crate::keyfile::load) reads a file (after checking its
//! permissions) and asks for a passphrase only for an encrypted key; here the
//! same decoding runs on bytes, and the caller sees the key derivation cost a
//! file asks for before choosing to pay it. Hidden from the documentation:
//! nothing here is for use by the product.

use std::path::Path;

use zeroize::Zeroizing;

use crate::error::Error;
use crate::keyfile::{self, EncryptedKey, KdfParams, KeyLine, NONCE_LEN, SALT_LEN};
use crate::passphrase::Passphrase;
use crate::secret::SecretKey;

/// What the key line of a key file holds.
pub enum KeyFile {
    /// A plain secret key.
    Plain(SecretKey),
    /// A key under a passphrase.
    Encrypted(Sealed),
}

/// An encrypted key line, decoded and within the format's cost limits.
pub struct Sealed(EncryptedKey);

impl Sealed {
    /// The Argon2id memory (KiB), passes and lanes it asks for.
    pub fn cost(&self) -> (u32, u32, u32) {
        let p = self.0.params();
        (p.m_cost_kib, p.t_cost, p.p_cost)
    }

    /// Opens it as `load` does.
    pub fn open(&self, passphrase: &Passphrase) -> Result<SecretKey, Error> {
        keyfile::open(&self.0, passphrase, path()).map(SecretKey::from_bytes)
    }
}

fn path() -> &'static Path {
    Path::new("fuzz.key")
}

/// Decodes a key file's bytes as `load` does once it has read them.
pub fn parse_key_file(bytes: &[u8]) -> Result<KeyFile, Error> {
    Ok(match keyfile::parse(bytes, path())? {
        KeyLine::Plain(secret) => KeyFile::Plain(SecretKey::from_bytes(secret)),
        KeyLine::Encrypted(sealed) => KeyFile::Encrypted(Sealed(sealed)),
    })
}

/// The text `write_new` writes for `key`, without a passphrase.
pub fn render_plain(key: &SecretKey) -> Result<Zeroizing<String>, Error> {
    keyfile::render(key, None, path())
}

/// The text `write_new` writes for `key` under `passphrase`, with the given
/// Argon2id cost (the product always uses its default) and salt and nonce.
pub fn render_encrypted(
    key: &SecretKey,
    passphrase: &Passphrase,
    (m_cost_kib, t_cost, p_cost): (u32, u32, u32),
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Zeroizing<String>, Error> {
    let params = KdfParams {
        m_cost_kib,
        t_cost,
        p_cost,
    };
    let sealed = keyfile::seal(key, passphrase, params, salt, nonce, path())?;
    keyfile::render(key, Some(&sealed), path())
}
