//! Saving and restoring a [`SessionStore`] (module documentation, §6).
//!
//! The encoded state is `version (1) | postcard(State)`, `State` being the
//! owner's public key then a map from peer key to that peer's sessions,
//! pending inits and seen init ids, in the field order of their definitions
//! in `session/mod.rs` (postcard: varint integers, raw fixed arrays, byte
//! strings as varint length + bytes, `Option` as a 0/1 byte then the value).
//! It holds every session key: sealed, it goes to disk; in the clear, nowhere.
//!
//! Older versions are still read ([`legacy`]), every key, pending init and
//! seen id kept: version 1 was written by builds whose transport counted its
//! nonces (the counters and replay windows are dropped: nonces are random
//! now, and a replay the windows would have caught is still shown once, by
//! message id); version 2 by builds whose sessions had one id for both
//! directions (such a session keeps its one id as both of its direction ids
//! until it is renewed). What is written is always the current version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sotto_keys::{PublicKey, SecretKey};
use zeroize::Zeroizing;

use super::{
    Peer, SessionConfig, SessionStore, INIT_IDS_LEN, MAX_ERASED_PER_PEER, MAX_INIT_BUCKET,
    MAX_PENDING_PER_PEER, MAX_SEEN_PER_PEER, MAX_SESSIONS_PER_PEER,
};
use crate::at_rest::{AtRestError, AtRestKey};
use crate::envelope::BUCKETS;
use crate::error::SessionStateError;

/// Format version of the encoded and the sealed state.
pub const STATE_VERSION: u8 = 3;
/// The version before random transport nonces, still read.
const COUNTED_NONCES_VERSION: u8 = 1;
/// The version before direction ids, still read.
const ONE_ID_VERSION: u8 = 2;
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
            COUNTED_NONCES_VERSION => legacy::decode_v1(rest)?,
            ONE_ID_VERSION => legacy::decode_v2(rest)?,
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
            let holds_a_payload = |len: usize| {
                BUCKETS.contains(&len)
                    || len
                        .checked_sub(INIT_IDS_LEN)
                        .is_some_and(|b| b <= MAX_INIT_BUCKET && BUCKETS.contains(&b))
            };
            if peer
                .pending
                .iter()
                .any(|p| !holds_a_payload(p.payload.len()))
            {
                return Err(SessionStateError::Malformed(
                    "pending payload off its bucket",
                ));
            }
            // A session of an older state has one id for both directions.
            let own = peer
                .sessions
                .iter()
                .flat_map(|s| {
                    let recv = (s.recv_id != s.id).then_some(s.recv_id);
                    let send = (s.send_id != s.id).then_some(s.send_id);
                    [Some(s.id), send, recv]
                })
                .chain(peer.pending.iter().flat_map(|p| {
                    let recv = (p.recv_id != p.id).then_some(p.recv_id);
                    let send = (p.send_id != p.id).then_some(p.send_id);
                    [Some(p.id), send, recv]
                }))
                .flatten();
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
        if ![STATE_VERSION, ONE_ID_VERSION, COUNTED_NONCES_VERSION].contains(&version) {
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

/// The states of older versions.
pub(super) mod legacy {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use sotto_keys::PublicKey;
    use zeroize::Zeroizing;

    use super::StateOwned;
    use crate::error::SessionStateError;
    use crate::session::noise::{CipherKey, SplitKeys, MSG2_LEN};
    use crate::session::replay::RecentNonces;
    use crate::session::{ErasedSession, Peer, PendingInit, Role, SeenInit, Session, SessionId};

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct StateV<P> {
        owner: PublicKey,
        peers: BTreeMap<PublicKey, P>,
    }

    /// Version 1: counted nonces and a replay window.
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

    /// A pending init of versions 1 and 2: one id, a payload that is the
    /// padded body alone.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct PendingV1 {
        id: SessionId,
        created_at_ms: u64,
        ephemeral: CipherKey,
        payload: Zeroizing<Vec<u8>>,
    }

    /// Version 2: random nonces, one id for both directions.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct PeerV2 {
        sessions: Vec<SessionV2>,
        pending: Vec<PendingV1>,
        seen: Vec<SeenInit>,
        erased: Vec<ErasedSession>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct SessionV2 {
        id: SessionId,
        role: Role,
        created_at_ms: u64,
        keys: SplitKeys,
        #[serde(with = "serde_bytes")]
        accept: [u8; MSG2_LEN],
        sent: u64,
        recent: RecentNonces,
        peer_first_sent_ms: Option<u64>,
        confirmed_at_ms: Option<u64>,
        superseded_at_ms: Option<u64>,
    }

    fn pending(p: PendingV1) -> PendingInit {
        PendingInit {
            id: p.id,
            send_id: p.id,
            recv_id: p.id,
            created_at_ms: p.created_at_ms,
            ephemeral: p.ephemeral,
            payload: p.payload,
        }
    }

    fn take<P: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<StateV<P>, SessionStateError> {
        match postcard::take_from_bytes(bytes) {
            Ok((state, [])) => Ok(state),
            _ => Err(SessionStateError::Malformed("undecodable state")),
        }
    }

    pub(super) fn decode_v1(bytes: &[u8]) -> Result<StateOwned, SessionStateError> {
        let state: StateV<PeerV1> = take(bytes)?;
        let peers = state
            .peers
            .into_iter()
            .map(|(key, p)| {
                let sessions = p
                    .sessions
                    .into_iter()
                    .map(|s| Session {
                        id: s.id,
                        send_id: s.id,
                        recv_id: s.id,
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
                    .collect();
                let peer = Peer {
                    sessions,
                    pending: p.pending.into_iter().map(pending).collect(),
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

    pub(super) fn decode_v2(bytes: &[u8]) -> Result<StateOwned, SessionStateError> {
        let state: StateV<PeerV2> = take(bytes)?;
        let peers = state
            .peers
            .into_iter()
            .map(|(key, p)| {
                let sessions = p
                    .sessions
                    .into_iter()
                    .map(|s| Session {
                        id: s.id,
                        send_id: s.id,
                        recv_id: s.id,
                        role: s.role,
                        created_at_ms: s.created_at_ms,
                        keys: s.keys,
                        accept: s.accept,
                        sent: s.sent,
                        recent: s.recent,
                        peer_first_sent_ms: s.peer_first_sent_ms,
                        confirmed_at_ms: s.confirmed_at_ms,
                        superseded_at_ms: s.superseded_at_ms,
                    })
                    .collect();
                let peer = Peer {
                    sessions,
                    pending: p.pending.into_iter().map(pending).collect(),
                    seen: p.seen,
                    erased: p.erased,
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
    /// empty windows), for the upgrade test: its sessions and pending inits
    /// must have one id each (made by [`one_id`]).
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
                    pending: p.pending.iter().map(pending_v1).collect(),
                    seen: p.seen.iter().map(seen).collect(),
                };
                (*key, peer)
            })
            .collect();
        encode(
            super::COUNTED_NONCES_VERSION,
            &StateV {
                owner: store.owner,
                peers,
            },
        )
    }

    /// The same as a version 2 build would have encoded it.
    #[cfg(test)]
    pub(in crate::session) fn encode_v2(store: &crate::session::SessionStore) -> Vec<u8> {
        let peers = store
            .peers
            .iter()
            .map(|(key, p)| {
                let peer = PeerV2 {
                    sessions: p
                        .sessions
                        .iter()
                        .map(|s| SessionV2 {
                            id: s.id,
                            role: s.role,
                            created_at_ms: s.created_at_ms,
                            keys: s.keys.clone(),
                            accept: s.accept,
                            sent: s.sent,
                            recent: s.recent.clone(),
                            peer_first_sent_ms: s.peer_first_sent_ms,
                            confirmed_at_ms: s.confirmed_at_ms,
                            superseded_at_ms: s.superseded_at_ms,
                        })
                        .collect(),
                    pending: p.pending.iter().map(pending_v1).collect(),
                    seen: p.seen.iter().map(seen).collect(),
                    erased: p
                        .erased
                        .iter()
                        .map(|e| ErasedSession {
                            id: e.id,
                            forget_at_ms: e.forget_at_ms,
                        })
                        .collect(),
                };
                (*key, peer)
            })
            .collect();
        encode(
            super::ONE_ID_VERSION,
            &StateV {
                owner: store.owner,
                peers,
            },
        )
    }

    #[cfg(test)]
    fn pending_v1(i: &PendingInit) -> PendingV1 {
        PendingV1 {
            id: i.id,
            created_at_ms: i.created_at_ms,
            ephemeral: i.ephemeral.clone(),
            payload: i.payload.clone(),
        }
    }

    #[cfg(test)]
    fn seen(s: &SeenInit) -> SeenInit {
        SeenInit {
            id: s.id,
            forget_at_ms: s.forget_at_ms,
        }
    }

    #[cfg(test)]
    fn encode<T: serde::Serialize>(version: u8, state: &T) -> Vec<u8> {
        let mut out = vec![version];
        out.extend(postcard::to_stdvec(state).expect("encode"));
        out
    }

    /// Makes every session and pending init of `store` use one id for both
    /// directions, as the stores of older versions did.
    #[cfg(test)]
    pub(in crate::session) fn one_id(store: &mut crate::session::SessionStore) {
        for peer in store.peers.values_mut() {
            for s in &mut peer.sessions {
                s.send_id = s.id;
                s.recv_id = s.id;
            }
        }
    }
}
