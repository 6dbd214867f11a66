//! The key file: one secret key at rest, optionally under a passphrase.
//!
//! The key file *is* the identity (a client's, or a relay's own), so it is
//! handled like age handles its identities: created with mode 0600 and never
//! overwritten, refused when other users can read it, read through a size limit,
//! and a malformed line is reported by its number, never echoed (it may hold
//! the key). A passphrase, when there is one, goes through Argon2id so that a
//! stolen file costs an attacker real work per guess; the key is sealed with
//! ChaCha20-Poly1305 so a wrong passphrase or an edited file is detected, not
//! turned into a wrong key.
//!
//! # Format (version 1)
//!
//! A key file is UTF-8 text of at most 16 KiB. Lines are separated by `\n`;
//! a `\r` before it is ignored, as is whitespace at either end of a line.
//! Empty lines and lines starting with `#` are comments. Exactly one other
//! line must be present, the *key line*, in one of two forms:
//!
//! - **Plain**: `SOTTO-SECRET-KEY-1…`, the bech32m encoding (BIP 350) with
//!   human-readable part `sotto-secret-key-` of the 32 bytes of the X25519
//!   secret key. Written in upper case; readers accept all-lower case too.
//! - **Encrypted**: `SOTTO-ENCRYPTED-KEY-1…`, the bech32m encoding with
//!   human-readable part `sotto-encrypted-key-` of these 89 bytes:
//!
//!   | offset | length | field |
//!   | ---: | ---: | --- |
//!   | 0 | 1 | version, `0x01` |
//!   | 1 | 4 | Argon2id memory cost `m` in KiB, u32 big-endian |
//!   | 5 | 4 | Argon2id time cost `t` (passes), u32 big-endian |
//!   | 9 | 4 | Argon2id parallelism `p` (lanes), u32 big-endian |
//!   | 13 | 16 | salt, random |
//!   | 29 | 12 | nonce, random |
//!   | 41 | 48 | ChaCha20-Poly1305 ciphertext of the 32 secret bytes, then its 16-byte tag |
//!
//!   The encryption key is Argon2id version 0x13 (RFC 9106) of the passphrase's
//!   UTF-8 bytes with that salt, `m`, `t` and `p`, no secret value, no
//!   associated data, 32 bytes of output. The AEAD is ChaCha20-Poly1305
//!   (RFC 8439) with that key and nonce, and bytes 0..41 (version, parameters,
//!   salt and nonce) as associated data, so none of them can be altered.
//!   Writers use `m` = 19456 (19 MiB), `t` = 2, `p` = 1 (the OWASP minimum for
//!   Argon2id); readers refuse `m` > 1048576 (1 GiB), `t` > 16 or `p` > 8
//!   before deriving anything, so a hostile file cannot exhaust memory or time.
//!
//! The bech32m strings are longer than BIP 173's 90 characters; the checksum
//! is used up to its code length of 1023 characters (as the `bech32` crate
//! does for `Bech32m`), which still catches any typo with near certainty.
//!
//! Files written by [`write_new`] start with comments saying what the file is
//! and the public key (`# public key: sotto1…`); readers ignore all comments.
//!
//! # Test vectors
//!
//! The secret key of 32 bytes `0x01` is, in plain form (see the tests):
//!
//! ```text
//! SOTTO-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS3S42G5
//! ```
//!
//! and, encrypted with the passphrase `correct horse`, `m` = 19456, `t` = 2,
//! `p` = 1, salt = 16 bytes `0x02`, nonce = 12 bytes `0x03`:
//!
//! ```text
//! SOTTO-ENCRYPTED-KEY-1QYQQQNQQQQQQQQSQQQQQZQSZQGPQYQSZQGPQYQSZQGPQYQSRQVPSXQCRQVPSXQCRQ0NESW7FG4PKTXTSWUGYCXY6H0VLJ5HTL366KNF7EXD5UG0RF2T9NYCH3TSM74SFVJDUG7YL63FHPHCN3WLFS
//! ```

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use argon2::{Algorithm, Argon2, Block, Version};
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::fsutil::{read_limited, write_new_private};
use crate::passphrase::Passphrase;
use crate::secret::SecretKey;

/// Largest key file accepted, in bytes.
pub const MAX_KEY_FILE_LEN: usize = 16 * 1024;

const PLAIN_HRP: &str = "sotto-secret-key-";
const ENCRYPTED_HRP: &str = "sotto-encrypted-key-";
const VERSION: u8 = 1;
const SECRET_LEN: usize = 32;
pub(crate) const SALT_LEN: usize = 16;
pub(crate) const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Version, three cost parameters, salt, nonce: the associated data.
const HEADER_LEN: usize = 1 + 4 + 4 + 4 + SALT_LEN + NONCE_LEN;
pub(crate) const ENCRYPTED_LEN: usize = HEADER_LEN + SECRET_LEN + TAG_LEN;

const HEADER_COMMENT: &str = "\
# sotto secret key.
# This file is an identity: whoever holds it can read what is sent to this key
# and speak as it. Keep it secret (mode 0600) and keep a backup.
";

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KdfParams {
    pub(crate) m_cost_kib: u32,
    pub(crate) t_cost: u32,
    pub(crate) p_cost: u32,
}

impl KdfParams {
    /// OWASP's minimum recommendation for Argon2id.
    const DEFAULT: Self = Self {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };
    /// The most a key file may ask for: 1 GiB, 16 passes, 8 lanes.
    const MAX: Self = Self {
        m_cost_kib: 1024 * 1024,
        t_cost: 16,
        p_cost: 8,
    };

    fn within_limits(&self) -> bool {
        self.m_cost_kib <= Self::MAX.m_cost_kib
            && self.t_cost <= Self::MAX.t_cost
            && self.p_cost <= Self::MAX.p_cost
    }
}

/// The decoded 89 bytes of an encrypted key line.
pub(crate) struct EncryptedKey([u8; ENCRYPTED_LEN]);

impl EncryptedKey {
    pub(crate) fn params(&self) -> KdfParams {
        let word = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&self.0[at..at + 4]);
            u32::from_be_bytes(b)
        };
        KdfParams {
            m_cost_kib: word(1),
            t_cost: word(5),
            p_cost: word(9),
        }
    }

    fn header(&self) -> &[u8] {
        &self.0[..HEADER_LEN]
    }

    fn salt(&self) -> &[u8] {
        &self.0[13..13 + SALT_LEN]
    }

    fn nonce(&self) -> &[u8] {
        &self.0[13 + SALT_LEN..HEADER_LEN]
    }

    fn ciphertext(&self) -> &[u8] {
        &self.0[HEADER_LEN..HEADER_LEN + SECRET_LEN]
    }

    fn tag(&self) -> &[u8] {
        &self.0[HEADER_LEN + SECRET_LEN..]
    }
}

pub(crate) enum KeyLine {
    Plain(Zeroizing<[u8; SECRET_LEN]>),
    Encrypted(EncryptedKey),
}

/// Writes `key` to a new file at `path`, encrypted under `passphrase` if one is
/// given.
///
/// The file is created with mode 0600 and never replaces an existing file
/// ([`Error::AlreadyExists`]); it and its directory are fsynced before this
/// returns.
pub fn write_new(
    path: &Path,
    key: &SecretKey,
    passphrase: Option<&Passphrase>,
) -> Result<(), Error> {
    let text = match passphrase {
        None => render(key, None, path)?,
        Some(p) => {
            let mut salt = [0u8; SALT_LEN];
            let mut nonce = [0u8; NONCE_LEN];
            OsRng.fill_bytes(&mut salt);
            OsRng.fill_bytes(&mut nonce);
            let sealed = seal(key, p, KdfParams::DEFAULT, salt, nonce, path)?;
            render(key, Some(&sealed), path)?
        }
    };
    write_new_private(path, text.as_bytes())
}

/// Reads the secret key stored at `path`.
///
/// `passphrase` is called only when the file is encrypted. Refused before
/// anything is read: a file that other users may access
/// ([`Error::InsecurePermissions`]), a missing file ([`Error::NoKeyFile`]).
pub fn load(
    path: &Path,
    passphrase: impl FnOnce() -> Result<Passphrase, Error>,
) -> Result<SecretKey, Error> {
    match read_key_line(path)? {
        KeyLine::Plain(bytes) => Ok(SecretKey::from_bytes(bytes)),
        KeyLine::Encrypted(sealed) => {
            let passphrase = passphrase()?;
            open(&sealed, &passphrase, path).map(SecretKey::from_bytes)
        }
    }
}

/// Whether the key file at `path` is protected by a passphrase.
///
/// The file is checked as [`load`] would check it (permissions, size, format).
pub fn is_encrypted(path: &Path) -> Result<bool, Error> {
    Ok(matches!(read_key_line(path)?, KeyLine::Encrypted(_)))
}

fn format_error(path: &Path, line: usize, reason: &'static str) -> Error {
    Error::KeyFileFormat {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

/// The comments and the key line, in a buffer wiped on drop.
pub(crate) fn render(
    key: &SecretKey,
    sealed: Option<&[u8; ENCRYPTED_LEN]>,
    path: &Path,
) -> Result<Zeroizing<String>, Error> {
    // Reserved once so that no reallocation leaves a copy of the key behind.
    let mut text = Zeroizing::new(String::with_capacity(1024));
    text.push_str(HEADER_COMMENT);
    let encoded = match sealed {
        None => {
            let _ = writeln!(text, "# public key: {}", key.public());
            let secret = key.to_bytes();
            bech32::encode_upper_to_fmt::<Bech32m, String>(
                &mut text,
                Hrp::parse_unchecked(PLAIN_HRP),
                &secret[..],
            )
        }
        Some(sealed) => {
            text.push_str("# Protected by a passphrase (Argon2id, ChaCha20-Poly1305).\n");
            let _ = writeln!(text, "# public key: {}", key.public());
            bech32::encode_upper_to_fmt::<Bech32m, String>(
                &mut text,
                Hrp::parse_unchecked(ENCRYPTED_HRP),
                &sealed[..],
            )
        }
    };
    encoded.map_err(|_| format_error(path, 0, "the key could not be encoded"))?;
    text.push('\n');
    Ok(text)
}

/// Derives the 32-byte encryption key from a passphrase, in memory that is
/// wiped afterwards (Argon2's working memory included).
fn derive_key(
    passphrase: &Passphrase,
    salt: &[u8],
    params: KdfParams,
    path: &Path,
) -> Result<Zeroizing<[u8; 32]>, Error> {
    let bad = |reason| format_error(path, 0, reason);
    let params = argon2::Params::new(
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
        Some(SECRET_LEN),
    )
    .map_err(|_| bad("the key derivation parameters are invalid"))?;
    let blocks_needed = params.block_count();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut blocks: Zeroizing<Vec<Block>> = Zeroizing::new(Vec::new());
    blocks
        .try_reserve_exact(blocks_needed)
        .map_err(|_| bad("not enough memory for the key derivation parameters"))?;
    blocks.resize(blocks_needed, Block::default());
    let mut key = Zeroizing::new([0u8; 32]);
    argon2
        .hash_password_into_with_memory(
            passphrase.expose().as_bytes(),
            salt,
            &mut key[..],
            &mut blocks[..],
        )
        .map_err(|_| bad("the key derivation parameters are invalid"))?;
    Ok(key)
}

/// Encrypts the secret key: the 89 bytes of an encrypted key line.
pub(crate) fn seal(
    key: &SecretKey,
    passphrase: &Passphrase,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    path: &Path,
) -> Result<[u8; ENCRYPTED_LEN], Error> {
    let mut out = [0u8; ENCRYPTED_LEN];
    out[0] = VERSION;
    out[1..5].copy_from_slice(&params.m_cost_kib.to_be_bytes());
    out[5..9].copy_from_slice(&params.t_cost.to_be_bytes());
    out[9..13].copy_from_slice(&params.p_cost.to_be_bytes());
    out[13..13 + SALT_LEN].copy_from_slice(&salt);
    out[13 + SALT_LEN..HEADER_LEN].copy_from_slice(&nonce);

    let kek = derive_key(passphrase, &salt, params, path)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&kek[..]));
    let mut buf = key.to_bytes();
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &out[..HEADER_LEN], &mut buf[..])
        .map_err(|_| format_error(path, 0, "the key could not be encrypted"))?;
    out[HEADER_LEN..HEADER_LEN + SECRET_LEN].copy_from_slice(&buf[..]);
    out[HEADER_LEN + SECRET_LEN..].copy_from_slice(&tag);
    Ok(out)
}

/// Decrypts an encrypted key line; any failure of the AEAD is a wrong
/// passphrase or a damaged file, and says nothing more.
pub(crate) fn open(
    sealed: &EncryptedKey,
    passphrase: &Passphrase,
    path: &Path,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, Error> {
    let kek = derive_key(passphrase, sealed.salt(), sealed.params(), path)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&kek[..]));
    let mut buf = Zeroizing::new([0u8; SECRET_LEN]);
    buf.copy_from_slice(sealed.ciphertext());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(sealed.nonce()),
            sealed.header(),
            &mut buf[..],
            Tag::from_slice(sealed.tag()),
        )
        .map_err(|_| Error::WrongPassphrase)?;
    Ok(buf)
}

/// Opens the file, checks its permissions and size, and decodes its key line.
fn read_key_line(path: &Path) -> Result<KeyLine, Error> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NoKeyFile {
                path: path.to_path_buf(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    // The opened file's metadata, not the path's: nothing can be swapped in between.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = read_limited(file, path, MAX_KEY_FILE_LEN)?;
    parse(&bytes, path)
}

pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<KeyLine, Error> {
    let mut found = None;
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| format_error(path, number, "this line is not UTF-8 text"))?
            .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if found.is_some() {
            return Err(format_error(
                path,
                number,
                "a second key line; a key file holds exactly one key",
            ));
        }
        found = Some(decode_key_line(line, number, path)?);
    }
    found.ok_or_else(|| format_error(path, 0, "no key line in this file"))
}

fn has_prefix(line: &str, hrp: &str) -> bool {
    line.len() > hrp.len()
        && line.as_bytes()[..hrp.len()].eq_ignore_ascii_case(hrp.as_bytes())
        && line.as_bytes()[hrp.len()] == b'1'
}

fn decode_key_line(line: &str, number: usize, path: &Path) -> Result<KeyLine, Error> {
    let bad = |reason| format_error(path, number, reason);
    let hrp = if has_prefix(line, PLAIN_HRP) {
        PLAIN_HRP
    } else if has_prefix(line, ENCRYPTED_HRP) {
        ENCRYPTED_HRP
    } else {
        return Err(bad(
            "neither a comment (#) nor a key line (SOTTO-SECRET-KEY-1… or SOTTO-ENCRYPTED-KEY-1…)",
        ));
    };
    let checked = CheckedHrpstring::new::<Bech32m>(line).map_err(|_| {
        bad("the key line's checksum does not match: the file is damaged or was edited")
    })?;
    if checked.hrp().to_lowercase() != hrp {
        return Err(bad("the key line has an unknown prefix"));
    }
    if hrp == PLAIN_HRP {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        fill_exact(&mut secret[..], checked.byte_iter())
            .map_err(|()| bad("the secret key is not 32 bytes long"))?;
        return Ok(KeyLine::Plain(secret));
    }
    let mut sealed = EncryptedKey([0u8; ENCRYPTED_LEN]);
    fill_exact(&mut sealed.0, checked.byte_iter())
        .map_err(|()| bad("the encrypted key has the wrong length"))?;
    if sealed.0[0] != VERSION {
        return Err(bad(
            "the encrypted key has an unknown version (written by a newer sotto?)",
        ));
    }
    if !sealed.params().within_limits() {
        return Err(bad(
            "the key derivation parameters are too costly (at most 1 GiB, 16 passes, 8 lanes)",
        ));
    }
    Ok(KeyLine::Encrypted(sealed))
}

/// Copies `bytes` into `out`, which it must fill exactly.
fn fill_exact(out: &mut [u8], mut bytes: impl Iterator<Item = u8>) -> Result<(), ()> {
    for slot in out.iter_mut() {
        *slot = bytes.next().ok_or(())?;
    }
    match bytes.next() {
        None => Ok(()),
        Some(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::fs;
    use std::path::PathBuf;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_owned()).unwrap()
    }

    fn no_passphrase() -> Result<Passphrase, Error> {
        panic!("the passphrase was asked for a plain key file")
    }

    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        (dir, path)
    }

    fn key_line(path: &Path) -> (usize, String) {
        let text = fs::read_to_string(path).unwrap();
        text.lines()
            .enumerate()
            .find(|(_, l)| !l.starts_with('#') && !l.is_empty())
            .map(|(i, l)| (i + 1, l.to_owned()))
            .unwrap()
    }

    fn replace_key_line(path: &Path, new: &str) {
        let text = fs::read_to_string(path).unwrap();
        let out: Vec<&str> = text
            .lines()
            .map(|l| if l.starts_with("SOTTO-") { new } else { l })
            .collect();
        fs::write(path, out.join("\n") + "\n").unwrap();
    }

    fn encode_sealed(bytes: &[u8]) -> String {
        bech32::encode_upper::<Bech32m>(Hrp::parse_unchecked(ENCRYPTED_HRP), bytes).unwrap()
    }

    #[test]
    fn plain_round_trip_with_comments_and_mode_0600() {
        let (_dir, path) = tmp();
        let key = SecretKey::generate();
        write_new(&path, &key, None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# sotto secret key."), "{text}");
        assert!(text.contains(&format!("# public key: {}\n", key.public())));
        let (_, line) = key_line(&path);
        assert!(line.starts_with("SOTTO-SECRET-KEY-1"));
        assert!(!is_encrypted(&path).unwrap());
        let loaded = load(&path, no_passphrase).unwrap();
        assert_eq!(*loaded.to_bytes(), *key.to_bytes());
    }

    #[test]
    fn encrypted_round_trip_asks_for_the_passphrase_once() {
        let (_dir, path) = tmp();
        let key = SecretKey::generate();
        write_new(&path, &key, Some(&pass("correct horse"))).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\nSOTTO-ENCRYPTED-KEY-1"), "{text}");
        assert!(text.contains(&key.public().to_string()));
        assert!(is_encrypted(&path).unwrap());
        let asked = Cell::new(0);
        let loaded = load(&path, || {
            asked.set(asked.get() + 1);
            Ok(pass("correct horse"))
        })
        .unwrap();
        assert_eq!(asked.get(), 1);
        assert_eq!(*loaded.to_bytes(), *key.to_bytes());
    }

    #[test]
    fn a_wrong_passphrase_is_refused() {
        let (_dir, path) = tmp();
        write_new(&path, &SecretKey::generate(), Some(&pass("right"))).unwrap();
        let err = load(&path, || Ok(pass("wrong"))).err().unwrap();
        assert!(matches!(err, Error::WrongPassphrase), "{err}");
        assert_eq!(
            err.to_string(),
            "wrong passphrase, or the key file is damaged"
        );
    }

    #[test]
    fn the_passphrase_prompt_error_is_passed_on() {
        let (_dir, path) = tmp();
        write_new(&path, &SecretKey::generate(), Some(&pass("right"))).unwrap();
        let err = load(&path, || Err(Error::EmptyPassphrase)).err().unwrap();
        assert!(matches!(err, Error::EmptyPassphrase), "{err}");
    }

    #[test]
    fn a_file_readable_by_others_is_refused() {
        let (_dir, path) = tmp();
        write_new(&path, &SecretKey::generate(), None).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path, no_passphrase).err().unwrap();
        assert!(
            matches!(err, Error::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("is readable by others (mode 0644)"), "{msg}");
        assert!(
            msg.contains(&format!("run `chmod 600 {}`", path.display())),
            "{msg}"
        );
        assert!(is_encrypted(&path).is_err());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
        let msg = load(&path, no_passphrase).err().unwrap().to_string();
        assert!(msg.contains("writable by others (mode 0620)"), "{msg}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(load(&path, no_passphrase).is_ok());
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let (_dir, path) = tmp();
        fs::write(&path, "precious").unwrap();
        let err = write_new(&path, &SecretKey::generate(), None).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn a_missing_file_is_reported_as_such() {
        let (_dir, path) = tmp();
        let err = load(&path, no_passphrase).err().unwrap();
        assert!(matches!(err, Error::NoKeyFile { .. }), "{err}");
    }

    #[test]
    fn a_typo_in_the_key_line_is_reported_by_line_number_only() {
        for passphrase in [None, Some(pass("p"))] {
            let (_dir, path) = tmp();
            write_new(&path, &SecretKey::generate(), passphrase.as_ref()).unwrap();
            let (number, line) = key_line(&path);
            let mut chars: Vec<char> = line.chars().collect();
            let i = chars.len() - 12;
            chars[i] = if chars[i] == 'Q' { 'P' } else { 'Q' };
            let tampered: String = chars.into_iter().collect();
            replace_key_line(&path, &tampered);
            let err = load(&path, || Ok(pass("p"))).err().unwrap();
            match &err {
                Error::KeyFileFormat { line, .. } => assert_eq!(*line, number),
                other => panic!("{other}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&format!(":{number}: ")), "{msg}");
            assert!(
                !msg.contains(&line[20..40]),
                "the error echoes the key: {msg}"
            );
        }
    }

    #[test]
    fn tampered_ciphertext_with_a_valid_checksum_is_a_wrong_passphrase() {
        let (_dir, path) = tmp();
        write_new(&path, &SecretKey::generate(), Some(&pass("p"))).unwrap();
        let (_, line) = key_line(&path);
        let checked = CheckedHrpstring::new::<Bech32m>(&line).unwrap();
        let bytes: Vec<u8> = checked.byte_iter().collect();
        // Flip a bit in the ciphertext, in the tag, then in the authenticated salt.
        for at in [HEADER_LEN, ENCRYPTED_LEN - 1, 20] {
            let mut b = bytes.clone();
            b[at] ^= 1;
            replace_key_line(&path, &encode_sealed(&b));
            let err = load(&path, || Ok(pass("p"))).err().unwrap();
            assert!(matches!(err, Error::WrongPassphrase), "byte {at}: {err}");
        }
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_before_asking() {
        let (_dir, path) = tmp();
        write_new(&path, &SecretKey::generate(), Some(&pass("p"))).unwrap();
        let (number, line) = key_line(&path);
        let checked = CheckedHrpstring::new::<Bech32m>(&line).unwrap();
        let bytes: Vec<u8> = checked.byte_iter().collect();
        let at_max = [(1, KdfParams::MAX.m_cost_kib), (5, 16), (9, 8)];
        let over = [(1, 2 * 1024 * 1024), (5, 17), (9, 9), (1, u32::MAX)];
        for (offset, value) in over {
            let mut b = bytes.clone();
            b[offset..offset + 4].copy_from_slice(&u32::to_be_bytes(value));
            replace_key_line(&path, &encode_sealed(&b));
            let err = load(&path, no_passphrase).err().unwrap();
            assert!(
                matches!(err, Error::KeyFileFormat { line, .. } if line == number),
                "{err}"
            );
        }
        // At the limits the file is well-formed (not derived here: 1 GiB is slow).
        for (offset, value) in at_max {
            let mut b = bytes.clone();
            b[offset..offset + 4].copy_from_slice(&u32::to_be_bytes(value));
            replace_key_line(&path, &encode_sealed(&b));
            assert!(is_encrypted(&path).unwrap());
        }
        // Parameters Argon2 itself refuses (memory below 8 KiB per lane).
        let mut b = bytes.clone();
        b[1..5].copy_from_slice(&0u32.to_be_bytes());
        replace_key_line(&path, &encode_sealed(&b));
        let err = load(&path, || Ok(pass("p"))).err().unwrap();
        assert!(matches!(err, Error::KeyFileFormat { .. }), "{err}");
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let (_dir, path) = tmp();
        write_new(&path, &SecretKey::generate(), Some(&pass("p"))).unwrap();
        let (_, line) = key_line(&path);
        let checked = CheckedHrpstring::new::<Bech32m>(&line).unwrap();
        let mut b: Vec<u8> = checked.byte_iter().collect();
        b[0] = 2;
        replace_key_line(&path, &encode_sealed(&b));
        let err = load(&path, no_passphrase).err().unwrap();
        assert!(err.to_string().contains("unknown version"), "{err}");
    }

    fn write_raw(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let (dir, path) = tmp();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        (dir, path)
    }

    #[test]
    fn malformed_files_name_the_line() {
        let plain =
            bech32::encode_upper::<Bech32m>(Hrp::parse_unchecked(PLAIN_HRP), &[5; 32]).unwrap();
        let short =
            bech32::encode_upper::<Bech32m>(Hrp::parse_unchecked(PLAIN_HRP), &[5; 31]).unwrap();
        let cases: Vec<(String, usize)> = vec![
            ("# only a comment\n\n".into(), 0),
            (format!("# c\n{plain}\n{plain}\n"), 3),
            (format!("# c\nhello\n{plain}\n"), 2),
            (format!("{short}\n"), 1),
            (format!("AGE-SECRET-KEY-1{}\n", &plain[18..]), 1),
        ];
        for (content, want) in cases {
            let (_dir, path) = write_raw(content.as_bytes());
            match load(&path, no_passphrase).err().unwrap() {
                Error::KeyFileFormat { line, .. } => assert_eq!(line, want, "{content}"),
                other => panic!("{other}"),
            }
        }
        let (_dir, path) = write_raw(b"# ok\n\xff\xfe\n");
        assert!(matches!(
            load(&path, no_passphrase),
            Err(Error::KeyFileFormat { line: 2, .. })
        ));
    }

    #[test]
    fn lenient_about_case_whitespace_and_crlf() {
        let plain =
            bech32::encode_upper::<Bech32m>(Hrp::parse_unchecked(PLAIN_HRP), &[5; 32]).unwrap();
        let content = format!("# c\r\n\r\n  {}  \r\n", plain.to_lowercase());
        let (_dir, path) = write_raw(content.as_bytes());
        let key = load(&path, no_passphrase).unwrap();
        assert_eq!(*key.to_bytes(), [5; 32]);
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let (_dir, path) = write_raw(&vec![b'#'; MAX_KEY_FILE_LEN + 1]);
        assert!(matches!(
            load(&path, no_passphrase),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn known_answer_vectors() {
        // Quoted in the module documentation and docs/PROTOCOL.md.
        let key = SecretKey::from_bytes(Zeroizing::new([1; 32]));
        let path = Path::new("kat");
        let plain = render(&key, None, path).unwrap();
        let plain_line = plain.lines().last().unwrap();
        assert_eq!(
            plain_line,
            "SOTTO-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS3S42G5"
        );

        let sealed = seal(
            &key,
            &pass("correct horse"),
            KdfParams::DEFAULT,
            [2; 16],
            [3; 12],
            path,
        )
        .unwrap();
        let text = render(&key, Some(&sealed), path).unwrap();
        let line = text.lines().last().unwrap();
        assert_eq!(
            line,
            "SOTTO-ENCRYPTED-KEY-1QYQQQNQQQQQQQQSQQQQQZQSZQGPQYQSZQGPQYQSZQGPQYQSRQVPSXQCRQVPSXQCRQ0NESW7FG4PKTXTSWUGYCXY6H0VLJ5HTL366KNF7EXD5UG0RF2T9NYCH3TSM74SFVJDUG7YL63FHPHCN3WLFS"
        );
        match parse(line.as_bytes(), path).unwrap() {
            KeyLine::Encrypted(e) => {
                let opened = open(&e, &pass("correct horse"), path).unwrap();
                assert_eq!(*opened, [1; 32]);
            }
            KeyLine::Plain(_) => panic!("decoded as plain"),
        }
    }
}
