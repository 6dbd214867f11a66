//! Saving and restoring a [`SessionStore`] (module documentation, §6).
//!
//! The encoded state is `version (1) | postcard(State)`, `State` being the
//! owner's public key then a map from peer key to that peer's sessions,
//! pending inits and seen init ids, in the field order of their definitions
//! in `session/mod.rs` (postcard: varint integers, raw fixed arrays, byte
//! strings as varint length + bytes, `Option` as a 0/1 byte then the value).
//! It holds every session key: sealed, it goes to disk; in the clear, nowhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sotto_keys::{PublicKey, SecretKey};
use zeroize::Zeroizing;

use super::{
    Peer, SessionConfig, SessionStore, MAX_PENDING_PER_PEER, MAX_SEEN_PER_PEER,
    MAX_SESSIONS_PER_PEER,
};
use crate::at_rest::{AtRestError, AtRestKey};
use crate::envelope::BUCKETS;
use crate::error::SessionStateError;

/// Format version of the encoded and the sealed state.
pub const STATE_VERSION: u8 = 1;
/// Largest encoded or sealed state accepted.
pub const MAX_STATE_LEN: usize = 64 << 20;
/// The first bytes of a sealed state.
const SEALED_MAGIC: &[u8; 15] = b"sotto-sessions\0";
const SEALED_HEADER_LEN: usize = SEALED_MAGIC.len() + 1;
/// What the sealing key is derived for: BLAKE2b-256 keyed with the identity
/// secret, over this label.
const STATE_KEY_LABEL: &[u8] = b"sotto session state key v1";
/// How far a restored store moves every send counter on (module
/// documentation, §6): a crash that loses fewer seals than this cannot make
/// the store reuse a nonce. A quarter of the replay window, so envelopes in
/// flight across a restart still open.
pub const RESTART_NONCE_SKIP: u64 = 64;

#[derive(Serialize)]
struct StateRef<'a> {
    owner: &'a PublicKey,
    peers: &'a BTreeMap<PublicKey, Peer>,
}

#[derive(Deserialize)]
struct StateOwned {
    owner: PublicKey,
    peers: BTreeMap<PublicKey, Peer>,
}

fn sealed_header() -> [u8; SEALED_HEADER_LEN] {
    let mut h = [0u8; SEALED_HEADER_LEN];
    h[..SEALED_MAGIC.len()].copy_from_slice(SEALED_MAGIC);
    h[SEALED_MAGIC.len()] = STATE_VERSION;
    h
}

fn state_key(me: &SecretKey) -> Result<AtRestKey, SessionStateError> {
    AtRestKey::derive(me, STATE_KEY_LABEL).map_err(|_| SessionStateError::Internal)
}

impl SessionStore {
    /// The full state, every key included, as bytes (see the module
    /// documentation for the format). Wiped when dropped; seal it with
    /// [`SessionStore::seal_state`] before it goes anywhere.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, SessionStateError> {
        let state = StateRef {
            owner: &self.owner,
            peers: &self.peers,
        };
        // Sized first, so the secret bytes are written once into a buffer
        // that never reallocates (a reallocation would leave a copy behind).
        let len = postcard::serialize_with_flavor(&state, postcard::ser_flavors::Size::default())
            .map_err(|_| SessionStateError::Internal)?;
        let mut out = Zeroizing::new(vec![0u8; 1 + len]);
        out[0] = STATE_VERSION;
        let used = postcard::to_slice(&state, &mut out[1..])
            .map_err(|_| SessionStateError::Internal)?
            .len();
        if used != len {
            return Err(SessionStateError::Internal);
        }
        Ok(out)
    }

    /// Rebuilds a store from [`SessionStore::encode`]'s bytes. Every send
    /// counter resumes [`RESTART_NONCE_SKIP`] further on.
    pub fn decode(bytes: &[u8], config: SessionConfig) -> Result<Self, SessionStateError> {
        if bytes.len() > MAX_STATE_LEN {
            return Err(SessionStateError::TooLarge {
                len: bytes.len(),
                max: MAX_STATE_LEN,
            });
        }
        let (version, rest) = bytes
            .split_first()
            .ok_or(SessionStateError::Malformed("empty"))?;
        if *version != STATE_VERSION {
            return Err(SessionStateError::UnsupportedVersion(*version));
        }
        let state: StateOwned = match postcard::take_from_bytes(rest) {
            Ok((state, [])) => state,
            _ => return Err(SessionStateError::Malformed("undecodable state")),
        };
        let mut store = Self {
            owner: state.owner,
            config,
            peers: state.peers,
        };
        store.validate()?;
        for session in store.peers.values_mut().flat_map(|p| p.sessions.iter_mut()) {
            session.next_nonce = session
                .next_nonce
                .saturating_add(RESTART_NONCE_SKIP)
                .min(u64::MAX - 1);
        }
        Ok(store)
    }

    /// The limits a running store keeps, checked on a decoded one.
    fn validate(&self) -> Result<(), SessionStateError> {
        let mut ids = std::collections::BTreeSet::new();
        for peer in self.peers.values() {
            if peer.sessions.len() > MAX_SESSIONS_PER_PEER
                || peer.pending.len() > MAX_PENDING_PER_PEER
                || peer.seen.len() > MAX_SEEN_PER_PEER
            {
                return Err(SessionStateError::Malformed("more entries than allowed"));
            }
            if peer
                .pending
                .iter()
                .any(|p| !BUCKETS.contains(&p.payload.len()))
            {
                return Err(SessionStateError::Malformed(
                    "pending payload off its bucket",
                ));
            }
            let own = peer
                .sessions
                .iter()
                .map(|s| s.id)
                .chain(peer.pending.iter().map(|p| p.id));
            for id in own {
                if !ids.insert(id) {
                    return Err(SessionStateError::Malformed("session id used twice"));
                }
            }
        }
        Ok(())
    }

    /// The state sealed for the disk under a key derived from `me`, the
    /// identity secret it belongs to:
    /// `"sotto-sessions\0" | version | nonce (24) | XChaCha20-Poly1305 ciphertext`.
    pub fn seal_state(&self, me: &SecretKey) -> Result<Vec<u8>, SessionStateError> {
        if me.public() != self.owner {
            return Err(SessionStateError::WrongIdentity);
        }
        let plain = self.encode()?;
        let header = sealed_header();
        let sealed = state_key(me)?
            .seal(&header, &plain)
            .map_err(|_| SessionStateError::Internal)?;
        let mut out = Vec::with_capacity(SEALED_HEADER_LEN + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`SessionStore::seal_state`] wrote, with the same identity.
    pub fn open_state(
        me: &SecretKey,
        sealed: &[u8],
        config: SessionConfig,
    ) -> Result<Self, SessionStateError> {
        if sealed.len() > MAX_STATE_LEN {
            return Err(SessionStateError::TooLarge {
                len: sealed.len(),
                max: MAX_STATE_LEN,
            });
        }
        let (header, rest) = sealed
            .split_first_chunk::<SEALED_HEADER_LEN>()
            .ok_or(SessionStateError::Decrypt)?;
        if header[..SEALED_MAGIC.len()] != *SEALED_MAGIC {
            return Err(SessionStateError::Decrypt);
        }
        if header[SEALED_MAGIC.len()] != STATE_VERSION {
            return Err(SessionStateError::UnsupportedVersion(
                header[SEALED_MAGIC.len()],
            ));
        }
        let plain = state_key(me)?.open(header, rest).map_err(|e| match e {
            AtRestError::Decrypt => SessionStateError::Decrypt,
            _ => SessionStateError::Internal,
        })?;
        let store = Self::decode(&plain, config)?;
        if store.owner != me.public() {
            return Err(SessionStateError::WrongIdentity);
        }
        Ok(store)
    }
}
