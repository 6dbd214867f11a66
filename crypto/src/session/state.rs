//! Saving and restoring a [`SessionStore`] (module documentation, §6).
//!
//! The encoded state is `version (1) | postcard(State)`, `State` being the
//! owner's public key then a map from peer key to that peer's sessions,
//! pending inits and seen init ids, in the field order of their definitions
//! in `session/mod.rs` (postcard: varint integers, raw fixed arrays, byte
//! strings as varint length + bytes, `Option` as a 0/1 byte then the value).
//! It holds every session key: sealed, it goes to disk; in the clear, nowhere.
//!
//! Version 1 was written by builds whose transport counted its nonces; its
//! states are still read ([`legacy`]): every key, pending init and seen id is
//! kept, the counters and replay windows are dropped (nonces are random now,
//! and a replay the windows would have caught is still shown once, by message
//! id). What is written is always the current version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sotto_keys::{PublicKey, SecretKey};
use zeroize::Zeroizing;

use super::{
    Peer, SessionConfig, SessionStore, MAX_ERASED_PER_PEER, MAX_PENDING_PER_PEER,
    MAX_SEEN_PER_PEER, MAX_SESSIONS_PER_PEER,
};
use crate::at_rest::{AtRestError, AtRestKey};
use crate::envelope::BUCKETS;
use crate::error::SessionStateError;

/// Format version of the encoded and the sealed state.
pub const STATE_VERSION: u8 = 2;
/// The version before random transport nonces, still read.
const LEGACY_VERSION: u8 = 1;
/// Largest encoded or sealed state accepted.
pub const MAX_STATE_LEN: usize = 64 << 20;
/// The first bytes of a sealed state.
const SEALED_MAGIC: &[u8; 15] = b"sotto-sessions\0";
const SEALED_HEADER_LEN: usize = SEALED_MAGIC.len() + 1;
/// What the sealing key is derived for: BLAKE2b-256 keyed with the identity
/// secret, over this label.
const STATE_KEY_LABEL: &[u8] = b"sotto session state key v1";

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

fn sealed_header(version: u8) -> [u8; SEALED_HEADER_LEN] {
    let mut h = [0u8; SEALED_HEADER_LEN];
    h[..SEALED_MAGIC.len()].copy_from_slice(SEALED_MAGIC);
    h[SEALED_MAGIC.len()] = version;
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

    /// Rebuilds a store from [`SessionStore::encode`]'s bytes (or a version 1
    /// state's).
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
        let state: StateOwned = match *version {
            STATE_VERSION => match postcard::take_from_bytes(rest) {
                Ok((state, [])) => state,
                _ => return Err(SessionStateError::Malformed("undecodable state")),
            },
            LEGACY_VERSION => legacy::decode(rest)?,
            other => return Err(SessionStateError::UnsupportedVersion(other)),
        };
        let store = Self {
            owner: state.owner,
            config,
            peers: state.peers,
        };
        store.validate()?;
        Ok(store)
    }

    /// The limits a running store keeps, checked on a decoded one.
    fn validate(&self) -> Result<(), SessionStateError> {
        let mut ids = std::collections::BTreeSet::new();
        for peer in self.peers.values() {
            if peer.sessions.len() > MAX_SESSIONS_PER_PEER
                || peer.pending.len() > MAX_PENDING_PER_PEER
                || peer.seen.len() > MAX_SEEN_PER_PEER
                || peer.erased.len() > MAX_ERASED_PER_PEER
                || peer
                    .sessions
                    .iter()
                    .any(|s| s.recent.len() > super::replay::RECENT)
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
        let header = sealed_header(STATE_VERSION);
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
        let version = header[SEALED_MAGIC.len()];
        if version != STATE_VERSION && version != LEGACY_VERSION {
            return Err(SessionStateError::UnsupportedVersion(version));
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

/// Version 1 of the state, as builds with counted transport nonces wrote it.
pub(super) mod legacy {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use sotto_keys::PublicKey;
    use zeroize::Zeroizing;

    use super::StateOwned;
    use crate::error::SessionStateError;
    use crate::session::noise::{CipherKey, SplitKeys, MSG2_LEN};
    use crate::session::replay::RecentNonces;
    use crate::session::{Peer, Role, SeenInit, Session, SessionId};

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct StateV1 {
        owner: PublicKey,
        peers: BTreeMap<PublicKey, PeerV1>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct PeerV1 {
        sessions: Vec<SessionV1>,
        pending: Vec<PendingV1>,
        seen: Vec<SeenInit>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct SessionV1 {
        id: SessionId,
        role: Role,
        created_at_ms: u64,
        keys: SplitKeys,
        #[serde(with = "serde_bytes")]
        accept: [u8; MSG2_LEN],
        _next_nonce: u64,
        sent: u64,
        _window: WindowV1,
        confirmed_at_ms: Option<u64>,
        superseded_at_ms: Option<u64>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct WindowV1 {
        _top: Option<u64>,
        _seen: [u64; 16],
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct PendingV1 {
        id: SessionId,
        created_at_ms: u64,
        ephemeral: CipherKey,
        payload: Zeroizing<Vec<u8>>,
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<StateOwned, SessionStateError> {
        let state: StateV1 = match postcard::take_from_bytes(bytes) {
            Ok((state, [])) => state,
            _ => return Err(SessionStateError::Malformed("undecodable state")),
        };
        let peers = state
            .peers
            .into_iter()
            .map(|(key, p)| {
                let peer = Peer {
                    sessions: p
                        .sessions
                        .into_iter()
                        .map(|s| Session {
                            id: s.id,
                            role: s.role,
                            created_at_ms: s.created_at_ms,
                            keys: s.keys,
                            accept: s.accept,
                            sent: s.sent,
                            recent: RecentNonces::default(),
                            peer_first_sent_ms: None,
                            confirmed_at_ms: s.confirmed_at_ms,
                            superseded_at_ms: s.superseded_at_ms,
                        })
                        .collect(),
                    pending: p
                        .pending
                        .into_iter()
                        .map(|i| crate::session::PendingInit {
                            id: i.id,
                            created_at_ms: i.created_at_ms,
                            ephemeral: i.ephemeral,
                            payload: i.payload,
                        })
                        .collect(),
                    seen: p.seen,
                    erased: Vec::new(),
                };
                (key, peer)
            })
            .collect();
        Ok(StateOwned {
            owner: state.owner,
            peers,
        })
    }

    /// A store as a version 1 build would have encoded it (counters at 0,
    /// empty windows), for the upgrade test.
    #[cfg(test)]
    pub(in crate::session) fn encode_v1(store: &crate::session::SessionStore) -> Vec<u8> {
        let peers = store
            .peers
            .iter()
            .map(|(key, p)| {
                let peer = PeerV1 {
                    sessions: p
                        .sessions
                        .iter()
                        .map(|s| SessionV1 {
                            id: s.id,
                            role: s.role,
                            created_at_ms: s.created_at_ms,
                            keys: s.keys.clone(),
                            accept: s.accept,
                            _next_nonce: 0,
                            sent: s.sent,
                            _window: WindowV1 {
                                _top: None,
                                _seen: [0; 16],
                            },
                            confirmed_at_ms: s.confirmed_at_ms,
                            superseded_at_ms: s.superseded_at_ms,
                        })
                        .collect(),
                    pending: p
                        .pending
                        .iter()
                        .map(|i| PendingV1 {
                            id: i.id,
                            created_at_ms: i.created_at_ms,
                            ephemeral: i.ephemeral.clone(),
                            payload: i.payload.clone(),
                        })
                        .collect(),
                    seen: p
                        .seen
                        .iter()
                        .map(|s| SeenInit {
                            id: s.id,
                            forget_at_ms: s.forget_at_ms,
                        })
                        .collect(),
                };
                (*key, peer)
            })
            .collect();
        let state = StateV1 {
            owner: store.owner,
            peers,
        };
        let mut out = vec![super::LEGACY_VERSION];
        out.extend(postcard::to_stdvec(&state).expect("encode"));
        out
    }
}
