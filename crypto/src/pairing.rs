//! First contact by a short spoken code (`sotto pair`).
//!
//! Two people who can talk (in person, on a call) but have never exchanged
//! keys run SPAKE2 with the code as password, through a rendezvous slot on
//! the inviter's relay that forwards bytes it cannot read. Each side ends up
//! with the same 32-byte key only if both typed the same code; a relay, or
//! anyone else, that does not know the code learns nothing from the PAKE
//! messages and gets one guess per code (the slot closes after one joiner).
//!
//! From that key HKDF-SHA256 derives four keys, one per direction and
//! purpose, so that no key is used for two things:
//!
//! - a confirmation value per side, sent in the clear: it proves the sender
//!   holds the key, and a wrong code shows as a mismatch before anything
//!   else is opened;
//! - a sealing key per side (ChaCha20-Poly1305), under which the side sends
//!   its invite (identity key, relay, relay key, delivery token) and, for the
//!   inviter, the final "done". Each sealing key seals at most two messages,
//!   under the nonces 0 and 1, and distinct associated data.
//!
//! The messages, the slot's lifecycle and the order of checks are in
//! docs/PROTOCOL.md (the pairing section), with vectors checked by
//! `vectors.rs`.

mod code;
mod msg;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use code::{Code, MAX_SLOT};
pub use msg::{PairMsg, MAX_PAIR_MSG_LEN};

/// The SPAKE2 symmetric identity: binds the protocol and its version into
/// the key, so a PAKE message of anything else never yields the same key.
pub const PAKE_IDENTITY: &[u8] = b"sotto pair v1";
/// The HKDF salt.
pub const HKDF_SALT: &[u8] = b"sotto pair v1";
/// Length of a confirmation value.
pub const CONFIRM_LEN: usize = 32;
/// The associated data of a sealed invite.
pub const INVITE_AD: &[u8] = b"sotto pair v1 invite";
/// The associated data of the inviter's sealed "done".
pub const DONE_AD: &[u8] = b"sotto pair v1 done";
/// The longest plaintext a side seals: an invite string.
pub const MAX_INVITE_PLAINTEXT: usize = sotto_keys::invite::MAX_INVITE_LEN;

const TAG_LEN: usize = 16;
const INVITE_NONCE: [u8; 12] = [0; 12];
const DONE_NONCE: [u8; 12] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Which side of a pairing this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ran `sotto pair NAME`: opened the slot and printed the code.
    Inviter,
    /// Ran `sotto pair NAME CODE`.
    Joiner,
}

/// A pairing failure. None says which byte or step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The text given as a code is not one.
    #[error("not a pairing code: {0}")]
    BadCode(String),
    /// The two sides do not hold the same key: another code was typed, or
    /// someone altered a message on the way. Also a sealed message that
    /// does not open.
    #[error("the code did not match: wrong code, or someone interfered")]
    Mismatch,
    /// A pairing message that does not decode, or is too long.
    #[error("malformed pairing message")]
    Malformed,
}

/// One side's SPAKE2 state, from its first message to the shared key.
pub struct Pake {
    state: Spake2<Ed25519Group>,
    role: Role,
}

impl Pake {
    /// Starts the PAKE with `code` as password; returns the state and the
    /// message to send (33 bytes). The symmetric mode needs no ordering:
    /// either side's message may go first.
    pub fn start(code: &Code, role: Role) -> (Self, Vec<u8>) {
        let password = code.password();
        let (state, msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(password.as_slice()),
            &Identity::new(PAKE_IDENTITY),
        );
        (Self { state, role }, msg)
    }

    /// Finishes with the other side's message. A message that is not a
    /// SPAKE2 message of this group is `Malformed`; one made from another
    /// password yields another key, which the confirmation then refuses.
    pub fn finish(self, theirs: &[u8]) -> Result<PairKeys, PairingError> {
        let key = Zeroizing::new(
            self.state
                .finish(theirs)
                .map_err(|_| PairingError::Malformed)?,
        );
        Ok(PairKeys::derive(self.role, &key))
    }
}

/// The keys under the PAKE's key, for one side. Zeroized on drop; no `Debug`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PairKeys {
    #[zeroize(skip)]
    role: Role,
    inviter_confirm: [u8; 32],
    joiner_confirm: [u8; 32],
    inviter_seal: [u8; 32],
    joiner_seal: [u8; 32],
}

impl PairKeys {
    /// The key schedule: HKDF-SHA256 over the PAKE key, one label per
    /// direction and purpose (docs/PROTOCOL.md).
    pub fn derive(role: Role, pake_key: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), pake_key);
        let expand = |label: &[u8]| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's limit of 8,160.
            let _ = hk.expand(label, &mut out);
            out
        };
        Self {
            role,
            inviter_confirm: expand(b"sotto pair v1 inviter confirm"),
            joiner_confirm: expand(b"sotto pair v1 joiner confirm"),
            inviter_seal: expand(b"sotto pair v1 inviter seal"),
            joiner_seal: expand(b"sotto pair v1 joiner seal"),
        }
    }

    /// My confirmation value, to send.
    pub fn confirmation(&self) -> [u8; CONFIRM_LEN] {
        match self.role {
            Role::Inviter => self.inviter_confirm,
            Role::Joiner => self.joiner_confirm,
        }
    }

    /// Checks the other side's confirmation value, in constant time.
    pub fn check_confirmation(&self, theirs: &[u8]) -> Result<(), PairingError> {
        let want = match self.role {
            Role::Inviter => &self.joiner_confirm,
            Role::Joiner => &self.inviter_confirm,
        };
        if bool::from(want.as_slice().ct_eq(theirs)) {
            Ok(())
        } else {
            Err(PairingError::Mismatch)
        }
    }

    /// Seals my invite (its string form) for the other side.
    pub fn seal_invite(&self, invite: &[u8]) -> Vec<u8> {
        seal(self.mine(), &INVITE_NONCE, INVITE_AD, invite)
    }

    /// Opens the other side's sealed invite; its bytes are still to be
    /// parsed as an invite.
    pub fn open_invite(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, PairingError> {
        if sealed.len() > MAX_INVITE_PLAINTEXT + TAG_LEN {
            return Err(PairingError::Malformed);
        }
        open(self.theirs(), &INVITE_NONCE, INVITE_AD, sealed)
    }

    /// The inviter's last word: it has the joiner's invite and saved it.
    pub fn seal_done(&self) -> Vec<u8> {
        seal(self.mine(), &DONE_NONCE, DONE_AD, &[])
    }

    /// Opens the inviter's "done".
    pub fn open_done(&self, sealed: &[u8]) -> Result<(), PairingError> {
        let plain = open(self.theirs(), &DONE_NONCE, DONE_AD, sealed)?;
        if plain.is_empty() {
            Ok(())
        } else {
            Err(PairingError::Malformed)
        }
    }

    fn mine(&self) -> &[u8; 32] {
        match self.role {
            Role::Inviter => &self.inviter_seal,
            Role::Joiner => &self.joiner_seal,
        }
    }

    fn theirs(&self) -> &[u8; 32] {
        match self.role {
            Role::Inviter => &self.joiner_seal,
            Role::Joiner => &self.inviter_seal,
        }
    }

    /// Every derived key, inviter's confirm and joiner's, then inviter's
    /// seal and joiner's: for the known-answer vectors only.
    #[cfg(test)]
    pub(crate) fn all(&self) -> [[u8; 32]; 4] {
        [
            self.inviter_confirm,
            self.joiner_confirm,
            self.inviter_seal,
            self.joiner_seal,
        ]
    }
}

fn seal(key: &[u8; 32], nonce: &[u8; 12], ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(key.into());
    // Encryption fails only for plaintexts beyond ChaCha20's 256 GiB.
    cipher
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .unwrap_or_default()
}

fn open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    ad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PairingError> {
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            nonce.into(),
            Payload {
                msg: sealed,
                aad: ad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| PairingError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(inviter_code: &str, joiner_code: &str) -> (PairKeys, PairKeys) {
        let (i, i_msg) = Pake::start(&inviter_code.parse().unwrap(), Role::Inviter);
        let (j, j_msg) = Pake::start(&joiner_code.parse().unwrap(), Role::Joiner);
        (i.finish(&j_msg).unwrap(), j.finish(&i_msg).unwrap())
    }

    #[test]
    fn the_same_code_confirms_and_opens_both_ways() {
        let (i, j) = run("3-revenge-guitarist", "3-Revenge-Guitarist");
        j.check_confirmation(&i.confirmation()).unwrap();
        i.check_confirmation(&j.confirmation()).unwrap();
        assert_ne!(i.confirmation(), j.confirmation());
        let sealed = i.seal_invite(b"inviter's invite");
        assert_eq!(
            j.open_invite(&sealed).unwrap().as_slice(),
            b"inviter's invite"
        );
        let sealed = j.seal_invite(b"joiner's invite");
        assert_eq!(
            i.open_invite(&sealed).unwrap().as_slice(),
            b"joiner's invite"
        );
        j.open_done(&i.seal_done()).unwrap();
        // Each direction has its own key: nothing reflects.
        assert!(i.open_invite(&i.seal_invite(b"x")).is_err());
        assert!(i.open_done(&i.seal_done()).is_err());
    }

    #[test]
    fn another_password_fails_confirmation_and_opens_nothing() {
        for other in ["3-revenge-passenger", "4-revenge-guitarist"] {
            let (i, j) = run("3-revenge-guitarist", other);
            assert!(matches!(
                j.check_confirmation(&i.confirmation()),
                Err(PairingError::Mismatch)
            ));
            assert!(i.check_confirmation(&j.confirmation()).is_err());
            assert!(j.open_invite(&i.seal_invite(b"secret")).is_err());
            assert!(j.open_done(&i.seal_done()).is_err());
        }
    }

    #[test]
    fn an_altered_pake_message_fails_confirmation() {
        let code: Code = "9-acme-adviser".parse().unwrap();
        let (i, i_msg) = Pake::start(&code, Role::Inviter);
        let (j, mut j_msg) = Pake::start(&code, Role::Joiner);
        j_msg[5] ^= 1;
        let j_keys = j.finish(&i_msg).unwrap();
        match i.finish(&j_msg) {
            // Not a point of the group at all.
            Err(PairingError::Malformed) => {}
            Ok(i_keys) => {
                assert!(j_keys.check_confirmation(&i_keys.confirmation()).is_err());
                assert!(i_keys.check_confirmation(&j_keys.confirmation()).is_err());
            }
            Err(e) => panic!("{e}"),
        }
        let (i, _) = Pake::start(&code, Role::Inviter);
        assert!(matches!(i.finish(&[1, 2, 3]), Err(PairingError::Malformed)));
    }

    #[test]
    fn a_tampered_seal_is_refused() {
        let (i, j) = run("1-atlas-babylon", "1-atlas-babylon");
        let mut sealed = i.seal_invite(b"invite");
        sealed[0] ^= 0x80;
        assert!(matches!(
            j.open_invite(&sealed),
            Err(PairingError::Mismatch)
        ));
        assert!(j
            .open_invite(&vec![0; MAX_INVITE_PLAINTEXT + TAG_LEN + 1])
            .is_err());
    }
}
