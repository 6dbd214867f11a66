//! End-to-end sessions with forward secrecy (envelope kinds 2, 3 and 4).
//!
//! A one-shot envelope (kind 1, [`crate::envelope`]) is sealed to the
//! recipient's static key: whoever later steals that key opens every recorded
//! one. A session replaces it, once both sides have spoken, by a Noise
//! handshake between the two clients whose transport keys come from ephemeral
//! keys that are erased later, so a recording plus both static keys, taken
//! after the erasure, opens nothing of the session's transport messages.
//!
//! This text is written to be copied into docs/PROTOCOL.md.
//!
//! # 1. Handshake
//!
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s` (Noise §7.5), the peer who starts the
//! session as initiator:
//!
//! ```text
//! <- s                 pre-message: the responder's static key, from contacts
//! ...
//! -> e, es, s, ss      message 1, in a kind 2 envelope; payload: direction ids, padded body
//! <- e, ee, se         message 2, in a kind 3 envelope; payload: empty
//! ```
//!
//! Prologue: `"sotto envelope v1 kind 2"` (24 ASCII bytes) `| session id (16)
//! | created_at_ms (u64 LE)`, the two fields from the kind 2 header. After
//! message 2 both sides split (Noise §5.2): the first key seals initiator ->
//! responder, the second responder -> initiator. Every transport message is
//! then sealed with XChaCha20-Poly1305 under the sender's split key and a
//! fresh random 192-bit nonce carried in the clear (`transport`), so envelopes
//! may arrive late, out of order or twice (Noise §11.4), and no state is needed
//! to keep nonces unique: a restored, copied or crashed state cannot make a
//! sender use a nonce twice (§7). There is no rekey; sessions are renewed.
//!
//! **Why `IK` and not `KK`.** Both end in the same tokens (`ee`, `se` after
//! `es`, `ss`) and give the same payload properties (Noise §7.7: message 1
//! source 1 / destination 2, message 2 source 2 / destination 4, transport 2 /
//! 5). `KK` does not transmit the initiator's static key, so the responder must
//! know who wrote message 1 before it can read it: the sender's key would have
//! to travel in clear beside the envelope, or the recipient would have to try
//! every contact. `IK` carries it encrypted inside message 1, exactly like a
//! one-shot `X` envelope, which keeps design §3's rule that the sender's
//! identity travels inside the envelope, never beside it (sealed sender later).
//! Message 1 has the very tokens of `X`, hence the same size.
//!
//! # 2. Envelopes
//!
//! ```text
//! kind 2, init:    01 02 | init id (16) | created_at_ms (u64 LE) | IK message 1 (128 + P)
//! kind 3, accept:  01 03 | direction id (16) | IK message 2 (48) | nonce (24) | transport (P + 16)
//! kind 4, message: 01 04 | direction id (16) | nonce (24) | transport (P + 16)
//! ```
//!
//! `P` is a padded plaintext of PROTOCOL §7.3 (`u32 LE length | body | zeros`,
//! one of the same buckets as kind 1) holding the same postcard `Body` (§7.4),
//! so deduplication by message id and content types are unchanged above this
//! layer. A padded plaintext of length 0 (`L = 0`, bucket 256) carries no body:
//! a *bare* init or accept, which only moves the handshake on.
//!
//! - **Ids.** A session has three names, 16 random bytes each, chosen by the
//!   initiator: the *init id*, in the clear on its kind 2 only; and two
//!   *direction ids*, sent encrypted at the front of message 1's payload
//!   (`initiator-to-responder | responder-to-initiator`), which name the kind
//!   3 and 4 envelopes of each direction. Nothing in the clear pairs what
//!   reaches one mailbox with what reaches the other, so a relay that does
//!   not see who delivers (sealed sender) cannot link the two sides of a
//!   conversation by these ids. A message 1 payload that is a bucket
//!   exactly comes from a client of before direction ids: its init id names
//!   both directions. With the ids a kind 2 carries at most the 16,384
//!   bucket (`MAX_INIT_BUCKET`); a longer body goes as a kind 1 beside a
//!   bare init.
//! - **created_at_ms** is the initiator's clock when it wrote the init, in
//!   the clear like the id; both sides measure a session's age from it, and
//!   their clocks must agree to within `init_lifetime / 2` for sessions to
//!   start (otherwise messages still flow, as kinds 1 and 2).
//! - The **transport** ciphertext is XChaCha20-Poly1305 `(k, nonce, ad, P)`,
//!   `k` the sender's split key, `nonce` the envelope's 24 random bytes, `ad`
//!   the envelope's bytes before the nonce (`01 03 | direction id | message
//!   2`, or `01 04 | direction id`). In a kind 3 envelope, message 2 is the responder's
//!   handshake reply, the same 48 bytes in every kind 3 of a session (see §3).
//! - Binding: version, session id and timestamp are in the prologue, so they
//!   are bound into every key of the session; version, kind, session id and
//!   (kind 3) message 2 are the associated data of each transport message, so
//!   a transport message cannot be re-framed as another kind or session.
//! - Sizes: kind 2 is `154 + P`, kind 3 `106 + P`, kind 4 `58 + P` bytes, so
//!   the largest session envelope is a kind 3 of 65,545 bytes, within
//!   [`crate::envelope::MAX_ENVELOPE_LEN`].
//!
//! # 3. State machine, per peer
//!
//! A store keeps, for each peer: its *pending inits* (sent, not yet
//! answered: the init's ephemeral private key and padded payload), its
//! *sessions* (oldest first; the last one established is *current*, the
//! earlier ones *superseded*), and the ids of inits it has *seen*.
//!
//! A session is *established* on a side when that side holds its keys: the
//! responder when it reads message 1 and writes message 2, the initiator when
//! it reads message 2. It is *confirmed* when the side knows the peer holds
//! them too: at once for the initiator (message 2 proves it), for the
//! responder when the first kind 4 from the initiator opens.
//!
//! Sealing a body to a peer ([`SessionStore::seal_to`]):
//!
//! | state | sends |
//! | --- | --- |
//! | current session, younger than `max_age` | kind 4 on it; kind 3 (message 2 attached) while it is an unconfirmed responder session |
//! | no usable session, a pending init younger than `renew_after` | kind 1 (one-shot), as before sessions |
//! | neither | a new pending init: kind 2 carrying the body |
//!
//! plus, when the current session is *due* (below) and no pending init is
//! younger than `renew_after`, a bare kind 2 that starts its successor.
//!
//! So no envelope ever needs state its recipient may lack. Kinds 1 and 2 open
//! with the recipient's static key alone. A kind 3 needs the initiator's pending
//! init, which is kept `init_lifetime`, survives restarts, and is what message 2
//! completes — every kind 3 carries message 2, so whichever arrives first
//! completes the handshake, and a lost accept costs nothing. A kind 4 is only
//! sent on a session the peer is known to hold (confirmed).
//!
//! Opening ([`SessionStore::open`]):
//!
//! - kind 1: as PROTOCOL §7.5;
//! - kind 2: read message 1 (the body, if any, is returned whatever follows).
//!   If the sender is a contact, the init is not stale (`created_at_ms` less
//!   than `init_lifetime / 2` ago) and not seen before, and the tie-break
//!   below does not go against it: write message 2, establish the session as
//!   responder (it becomes current), and return a bare kind 3 as `reply`.
//!   Sending the reply is optional; it completes the handshake without waiting
//!   for this side to write, and tells the peer this side received the init.
//!   A stranger's or a stale init is not remembered: its body comes back each
//!   time it is delivered, and the client's deduplication by message id shows
//!   it once, as for kind 1;
//! - kind 3: on a pending init, rebuild its handshake state, read message 2,
//!   establish the session (it becomes current, confirmed), open the
//!   transport message; on a session this side initiated, check that message 2
//!   is the one it was completed with, then open the transport message;
//! - kind 4: open on the session; confirms a responder session.
//!
//! Every receiving direction remembers the last [`RECENT_NONCES`] (128) nonces
//! it opened and refuses those again ([`EnvelopeError::Replayed`]); a nonce it
//! has not seen is never refused, so an envelope that was never opened (a file
//! offer left on the relay, a message that could not be printed) opens however
//! many came after it. A replay older than what is remembered opens again and
//! is shown once all the same: the client deduplicates bodies by sender and
//! message id (PROTOCOL §7.6). A kind 3 or 4 for a session this side erased
//! is refused as [`EnvelopeError::ErasedSession`], naming the peer; one for a
//! session never held as [`EnvelopeError::UnknownSession`]. A replayed init is
//! refused by its remembered id (kept until `created_at_ms + init_lifetime`),
//! and one older than `init_lifetime / 2` starts no session at all, so an old
//! recorded init can never make a responder build a session its initiator has
//! forgotten (the margin absorbs clock differences).
//!
//! # 4. Simultaneous initiation
//!
//! Both sides may send a kind 2 before seeing the other's. A side that
//! receives an init while it holds a pending init of its own to that peer,
//! younger than `renew_after`, answers it only if its own static key is the
//! greater (bytes compared lexicographically): the init of the *lower* key
//! wins, on both sides alike. The losing init's body is opened and returned
//! like any other; its initiator keeps it pending (a late answer to it is still
//! completed, so even a crossing the other way round leaves every envelope
//! readable). A pending init older than `renew_after` does not compete, so a
//! lost init cannot block its peer's.
//!
//! # 5. Renewal and erasure
//!
//! The current session is *due* once this side has sent
//! `renew_after_messages` (1,000) on it, or once it is `renew_after` (24 h) old
//! if this side initiated it, `2 × renew_after` if it responded (so the two
//! sides do not usually race). The side then keeps sending on it and starts a
//! successor with a bare init; when the successor is established it becomes
//! current and the old one is superseded, still open for *receiving*.
//!
//! A superseded session's keys are erased `grace` (72 h) after a later session
//! of the peer is confirmed — from then on the peer seals nothing new on the
//! old one, and the grace covers envelopes sealed before and delivered late.
//! A superseded session whose successor is never confirmed goes
//! `init_lifetime` after it was superseded. No session is sealed on once it is
//! `max_age` (7 days) old, and every session is erased at `max_age + grace`,
//! so keys are never kept long after a conversation falls silent. Pending
//! inits and seen ids go after `init_lifetime` (14 days). Erasing drops the
//! keys from memory (all zeroized) and from the next saved state. At most
//! [`MAX_SESSIONS_PER_PEER`] sessions and [`MAX_PENDING_PER_PEER`] pending
//! inits are kept per peer, the oldest going first.
//!
//! # 6. Persistence
//!
//! [`SessionStore::encode`] gives `version (1) | postcard(state)` with every key
//! the store holds; [`SessionStore::seal_state`] seals that for the disk:
//!
//! ```text
//! "sotto-sessions\0" (15) | version 01 | nonce (24) | XChaCha20-Poly1305 ciphertext
//! key = BLAKE2b-256 keyed with the identity secret key, over "sotto session state key v1"
//! associated data = the first 16 bytes
//! ```
//!
//! A session is saved as its two split keys (snow's
//! `dangerously_get_raw_split`, the very `Split()` of the handshake), its
//! message count, its recent nonces and its times. A pending init is saved as
//! its ephemeral private key and padded payload; snow cannot save a handshake,
//! so it is rebuilt by writing message 1 again with that ephemeral key
//! (byte-identical, so no key covers two plaintexts) before reading message
//! 2. No send counter is saved: nonces are random. The client must still save
//! the store *before* sending what it sealed, or a crash can lose the pending
//! init an answer will need. Version 1 states (counted nonces) are read and
//! rewritten as version 2.
//!
//! # 7. Restored and copied state
//!
//! A client's state file can go back in time: restored from a backup, copied
//! to another machine, or saved before a crash lost its latest changes. Three
//! rules keep that safe and keep messages flowing:
//!
//! - **No nonce is used twice**, by construction: every transport nonce is
//!   drawn at random from 192 bits, whatever the file says.
//! - **A peer that went back is answered where it is.** Each session remembers
//!   the earliest date (by the peer's own clock, `sent_at_ms` of the bodies)
//!   of what the peer sent on it. An honest single copy of a peer never seals
//!   on a session again once it has sealed on a later one; so a body on an
//!   older session dated after the peer's first body on a later one means the
//!   peer's state went back. That older session, which the peer still holds,
//!   becomes current again (its successors superseded as of now, kept for
//!   their grace period), and [`Received::peer_went_back`] says so.
//! - **A session erased here is named, and replaced.** The ids (never the
//!   keys) of erased sessions are remembered `init_lifetime`, at most 64 per
//!   peer. An envelope on one cannot be opened, but it is refused as
//!   [`EnvelopeError::ErasedSession`] with the peer it was with, and
//!   [`SessionStore::restart`] stops sealing on the current session and sends
//!   a bare init, so what either side sends next opens on the other (until
//!   the answer, this side's messages go as one-shots). That refusal is not
//!   authenticated (anyone who saw the id can send garbage under it): it
//!   costs at most one new session per `renew_after`.
//!
//! What cannot be recovered: an envelope sealed on a session the receiver has
//! erased, or never held (a receiver whose own state went back), is lost; the
//! client says so, and the sender must send it again.
//!
//! # 8. What forward secrecy covers
//!
//! Against someone who records envelopes and later steals both static keys
//! (and the saved state, which opens with the identity key):
//!
//! - transport messages (kinds 3 and 4) of a session whose keys have been
//!   erased stay closed: their keys need `ee`, and neither ephemeral key
//!   survives (the responder's lives for one call; the initiator's is kept,
//!   and saved, only until message 2 is read);
//! - a kind 2 payload does not: it is sealed with `es` and `ss`, which the
//!   responder's static key recomputes (like kind 1, Noise destination
//!   property 2), and so are kind 1 envelopes;
//! - sessions still current (or in their grace period) at the theft are open
//!   to the thief, since the saved state holds their keys; so are sessions
//!   that grow out of inits still pending at the theft (their ephemeral key is
//!   in the saved state).
//!
//! Not covered: an attacker who already holds a static key at the time can
//! impersonate (Noise key-compromise impersonation) and so read what is then
//! sent to them; `IK`'s message 2 is destination property 4, not 5, for that
//! reason. Snow's handshake keeps its chaining key in plain arrays for the
//! length of one call; snow does not wipe them (every other key here is in a
//! zeroizing type, including snow's cipher and DH objects, see `noise`).

mod layout;
mod noise;
mod replay;
mod state;
#[cfg(test)]
mod tests;
mod transport;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sotto_keys::{PublicKey, SecretKey};
use zeroize::Zeroizing;

use crate::envelope::{
    self, decode_body, pad_encoded, unpad, Body, BUCKETS, ENVELOPE_VERSION, KIND_ONE_SHOT,
    KIND_SESSION_ACCEPT, KIND_SESSION_INIT, KIND_SESSION_MESSAGE,
};
use crate::error::EnvelopeError;
use noise::{CipherKey, SplitKeys, MSG2_LEN};
use replay::RecentNonces;
use transport::TAG_LEN;

#[cfg(test)]
pub(crate) use noise::prologue as vector_prologue;
pub use noise::{SESSION_NOISE_PARAMS, SESSION_PROLOGUE_LABEL};
pub use replay::RECENT as RECENT_NONCES;
pub use state::{MAX_STATE_LEN, STATE_VERSION};

/// A test seam for the known-answer vectors of docs/PROTOCOL.md
/// (`crate::vectors`): values queued here replace, first in first out, the
/// random session ids and ephemeral private keys this thread would otherwise
/// draw (an initiator's in a new init, a responder's when it reads an init).
/// Test builds only; with nothing queued nothing changes. A chosen ephemeral
/// key must never be used outside a test.
#[cfg(test)]
pub(crate) mod fixed {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    thread_local! {
        static IDS: RefCell<VecDeque<[u8; 16]>> = RefCell::default();
        static EPHEMERALS: RefCell<VecDeque<[u8; 32]>> = RefCell::default();
        static NONCES: RefCell<VecDeque<[u8; 24]>> = RefCell::default();
    }

    /// Queues the id of the next session this thread starts.
    pub(crate) fn push_id(id: [u8; 16]) {
        IDS.with(|q| q.borrow_mut().push_back(id));
    }

    /// Queues the next ephemeral private key this thread's handshakes use.
    pub(crate) fn push_ephemeral(e: [u8; 32]) {
        EPHEMERALS.with(|q| q.borrow_mut().push_back(e));
    }

    /// Queues the nonce of the next transport message this thread seals.
    pub(crate) fn push_nonce(n: [u8; 24]) {
        NONCES.with(|q| q.borrow_mut().push_back(n));
    }

    pub(super) fn nonce() -> Option<[u8; 24]> {
        NONCES.with(|q| q.borrow_mut().pop_front())
    }

    pub(super) fn id() -> Option<[u8; 16]> {
        IDS.with(|q| q.borrow_mut().pop_front())
    }

    pub(super) fn ephemeral() -> Option<[u8; 32]> {
        EPHEMERALS.with(|q| q.borrow_mut().pop_front())
    }
}

/// At most this many sessions are kept per peer; a newer one pushes out the oldest.
pub const MAX_SESSIONS_PER_PEER: usize = 8;
/// At most this many pending inits are kept per peer; a newer one pushes out the oldest.
pub const MAX_PENDING_PER_PEER: usize = 4;
/// At most this many seen init ids are remembered per peer.
const MAX_SEEN_PER_PEER: usize = 64;
/// At most this many erased sessions' ids are remembered per peer.
const MAX_ERASED_PER_PEER: usize = 64;

/// When sessions are renewed and erased. Policy, not state: not saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Messages this side sends on a session before it starts a successor.
    pub renew_after_messages: u64,
    /// Age at which the side that initiated a session starts a successor
    /// (the responder waits twice as long).
    pub renew_after: Duration,
    /// How long a superseded session stays open for late envelopes once its
    /// successor is confirmed.
    pub grace: Duration,
    /// Age after which a session is no longer sealed on; it is erased at
    /// `max_age + grace`.
    pub max_age: Duration,
    /// How long a pending init waits for its answer, and how long an init id
    /// is remembered; an init older than half of it starts no session.
    pub init_lifetime: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self {
            renew_after_messages: 1000,
            renew_after: Duration::from_secs(24 * HOUR),
            grace: Duration::from_secs(72 * HOUR),
            max_age: Duration::from_secs(7 * 24 * HOUR),
            init_lifetime: Duration::from_secs(14 * 24 * HOUR),
        }
    }
}

/// What [`SessionStore::seal_to`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The envelope carrying the body.
    pub envelope: Vec<u8>,
    /// A bare init to send as well (after `envelope`): the start of the
    /// current session's successor, or of a first session when the body was
    /// too long to ride in an init. Dropping it only delays the session.
    pub renewal: Option<Vec<u8>>,
    /// Whether `envelope` is a session transport message (kind 3 or 4), whose
    /// content a later theft of the static keys will not reveal once the
    /// session's keys are erased.
    pub forward_secret: bool,
}

/// What [`SessionStore::open`] found in an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender's static key, proven by the envelope (`ss`, or the session's
    /// keys, which only the two peers derive).
    pub sender: PublicKey,
    /// What they sent; `None` for a bare init or accept (nothing to show).
    pub body: Option<Body>,
    /// Whether it came in a session transport message (kind 3 or 4).
    pub forward_secret: bool,
    /// An envelope to send back to `sender`: the bare accept of a session this
    /// init started. Optional, but it completes the handshake sooner.
    pub reply: Option<Vec<u8>>,
    /// The sender sealed this on an older session after it had already
    /// sealed on a newer one: its session state went back in time (its home
    /// restored from a backup, or a copy of it in use elsewhere). The older
    /// session, which the sender still holds, is current again (module
    /// documentation, §7).
    pub peer_went_back: bool,
}

/// A name in session envelopes: 16 random bytes chosen by the initiator. A
/// session has three: its init's (on the kind 2 only) and one per direction
/// (on the kinds 3 and 4 that direction carries), so nothing in the clear
/// pairs one mailbox's envelopes with another's (module documentation, §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct SessionId(pub(crate) [u8; 16]);

/// The ids an initiator chooses for a session: `send` names what the
/// initiator sends (initiator -> responder), `recv` what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InitIds {
    init: SessionId,
    send: SessionId,
    recv: SessionId,
}

/// Largest padded body a kind 2 carries: with the two direction ids, the
/// largest bucket would not fit in one Noise message (module documentation,
/// §2); a longer body goes as a kind 1 beside a bare init.
pub(crate) const MAX_INIT_BUCKET: usize = 16_384;
/// The direction ids at the front of message 1's payload.
pub(crate) const INIT_IDS_LEN: usize = 32;

/// This side's part in a session's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Role {
    Initiator,
    Responder,
}

/// An established session. Its keys are zeroized on drop (`SplitKeys`, and
/// the transport's cipher objects, see `noise`).
#[derive(Serialize, Deserialize)]
struct Session {
    /// The init's id: the session's name in this side's state.
    id: SessionId,
    /// What this side's kind 3 and 4 envelopes are named by.
    send_id: SessionId,
    /// What the peer's kind 3 and 4 envelopes are named by.
    recv_id: SessionId,
    role: Role,
    created_at_ms: u64,
    keys: SplitKeys,
    /// IK message 2: attached to kind 3 envelopes by the responder, checked
    /// against them by the initiator.
    #[serde(with = "serde_bytes")]
    accept: [u8; MSG2_LEN],
    /// Transport messages this side has sealed on the session (for renewal).
    sent: u64,
    /// The nonces of the transport messages opened lately.
    recent: RecentNonces,
    /// The earliest date (the peer's own clock) of a body the peer sent on
    /// this session: what tells that the peer's state went back (§7).
    peer_first_sent_ms: Option<u64>,
    confirmed_at_ms: Option<u64>,
    superseded_at_ms: Option<u64>,
}

/// An init this side sent and has had no answer to. Zeroized on drop.
#[derive(Serialize, Deserialize)]
struct PendingInit {
    id: SessionId,
    /// The session's id initiator -> responder, also in `payload`.
    send_id: SessionId,
    /// The session's id responder -> initiator, also in `payload`.
    recv_id: SessionId,
    created_at_ms: u64,
    ephemeral: CipherKey,
    /// The payload of message 1, exactly as sent: the direction ids, then
    /// the padded body (the padded body alone in a version 1 or 2 state).
    payload: Zeroizing<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct SeenInit {
    id: SessionId,
    forget_at_ms: u64,
}

/// The id of a session whose keys were erased: no key, only a name, so that
/// an envelope on it can be told from one on a session never held (§7).
#[derive(Serialize, Deserialize)]
struct ErasedSession {
    id: SessionId,
    forget_at_ms: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Peer {
    sessions: Vec<Session>,
    pending: Vec<PendingInit>,
    seen: Vec<SeenInit>,
    erased: Vec<ErasedSession>,
}

/// Every session of one identity with its peers. Pure state: no I/O, no
/// clock (callers pass `now`). Save it ([`SessionStore::seal_state`]) after
/// every call that changed it, before sending what it sealed.
pub struct SessionStore {
    owner: PublicKey,
    config: SessionConfig,
    peers: BTreeMap<PublicKey, Peer>,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: no key, no id.
        f.debug_struct("SessionStore")
            .field("owner", &self.owner)
            .field("peers", &self.peers.len())
            .field(
                "sessions",
                &self.peers.values().map(|p| p.sessions.len()).sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// The body in a padded plaintext, if there is one.
fn body_of(padded: &[u8]) -> Result<Option<Body>, EnvelopeError> {
    match unpad(padded)? {
        [] => Ok(None),
        body => decode_body(body).map(Some),
    }
}

fn bare_payload() -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    pad_encoded(&[]).map(Zeroizing::new)
}

impl Session {
    fn new(
        ids: InitIds,
        role: Role,
        created_at_ms: u64,
        keys: SplitKeys,
        accept: [u8; MSG2_LEN],
    ) -> Self {
        // The initiator sends under `ids.send`, the responder under `ids.recv`.
        let (send_id, recv_id) = match role {
            Role::Initiator => (ids.send, ids.recv),
            Role::Responder => (ids.recv, ids.send),
        };
        Self {
            id: ids.init,
            send_id,
            recv_id,
            role,
            created_at_ms,
            keys,
            accept,
            sent: 0,
            recent: RecentNonces::default(),
            peer_first_sent_ms: None,
            confirmed_at_ms: None,
            superseded_at_ms: None,
        }
    }

    /// This side's key of `Split()`: the initiator seals with the first.
    fn sending_key(&self) -> &[u8; 32] {
        match self.role {
            Role::Initiator => &self.keys.initiator,
            Role::Responder => &self.keys.responder,
        }
    }

    fn receiving_key(&self) -> &[u8; 32] {
        match self.role {
            Role::Initiator => &self.keys.responder,
            Role::Responder => &self.keys.initiator,
        }
    }

    fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.created_at_ms)
    }

    fn due(&self, now: u64, config: &SessionConfig) -> bool {
        let renew_after = millis(config.renew_after);
        let renew_after = match self.role {
            Role::Initiator => renew_after,
            Role::Responder => renew_after.saturating_mul(2),
        };
        self.sent >= config.renew_after_messages || self.age(now) >= renew_after
    }

    /// Seals `padded` as a transport message under a fresh random nonce:
    /// kind 3 while this side is a responder the initiator has not yet been
    /// seen to complete, kind 4 otherwise.
    fn seal(&mut self, padded: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let capacity = padded.len() + TAG_LEN;
        let head = match (self.role, self.confirmed_at_ms) {
            (Role::Responder, None) => layout::accept_head(&self.send_id, &self.accept, capacity),
            _ => layout::message_head(&self.send_id, capacity),
        };
        let nonce = transport::fresh_nonce();
        let ciphertext = transport::seal(self.sending_key(), &nonce, &head, padded)?;
        self.sent = self.sent.saturating_add(1);
        Ok(layout::finish(head, &nonce, &ciphertext))
    }

    /// Opens a transport message unless its nonce was opened lately; the
    /// nonce is remembered only once the message authenticated.
    fn open(&mut self, message: &layout::Transport<'_>) -> Result<Option<Body>, EnvelopeError> {
        if self.recent.contains(message.nonce) {
            return Err(EnvelopeError::Replayed);
        }
        let padded = transport::open(
            self.receiving_key(),
            message.nonce,
            message.ad,
            message.ciphertext,
        )?;
        self.recent.insert(*message.nonce);
        let body = body_of(&padded)?;
        if let Some(body) = &body {
            let first = self
                .peer_first_sent_ms
                .map_or(body.sent_at_ms, |t| t.min(body.sent_at_ms));
            self.peer_first_sent_ms = Some(first);
        }
        Ok(body)
    }
}

impl Peer {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.pending.is_empty()
            && self.seen.is_empty()
            && self.erased.is_empty()
    }

    fn has_fresh_pending(&self, now: u64, config: &SessionConfig) -> bool {
        let fresh = millis(config.renew_after);
        self.pending
            .iter()
            .any(|p| now.saturating_sub(p.created_at_ms) < fresh)
    }

    /// The current session, if it may still be sealed on. (A superseded one
    /// never is, even should it end up last after its successor's erasure.)
    fn sendable(&mut self, now: u64, config: &SessionConfig) -> Option<&mut Session> {
        self.sessions
            .last_mut()
            .filter(|s| s.superseded_at_ms.is_none() && s.age(now) < millis(config.max_age))
    }

    fn knows(&self, id: &SessionId) -> bool {
        self.sessions
            .iter()
            .any(|s| s.id == *id || s.send_id == *id || s.recv_id == *id)
            || self
                .pending
                .iter()
                .any(|p| p.id == *id || p.send_id == *id || p.recv_id == *id)
            || self.seen.iter().any(|s| s.id == *id)
            || self.erased.iter().any(|e| e.id == *id)
    }

    fn remember(&mut self, id: SessionId, forget_at_ms: u64) {
        self.seen.push(SeenInit { id, forget_at_ms });
        if self.seen.len() > MAX_SEEN_PER_PEER {
            self.seen.remove(0);
        }
    }

    /// Makes `session` current.
    fn push(&mut self, session: Session, now: u64, config: &SessionConfig) {
        if let Some(current) = self.sessions.last_mut() {
            current.superseded_at_ms.get_or_insert(now);
        }
        self.sessions.push(session);
        if self.sessions.len() > MAX_SESSIONS_PER_PEER {
            let oldest = self.sessions.remove(0);
            self.bury(oldest.recv_id, now, config);
        }
    }

    /// Remembers the id of a session whose keys are being erased.
    fn bury(&mut self, id: SessionId, now: u64, config: &SessionConfig) {
        let forget_at_ms = now.saturating_add(millis(config.init_lifetime));
        self.erased.push(ErasedSession { id, forget_at_ms });
        if self.erased.len() > MAX_ERASED_PER_PEER {
            self.erased.remove(0);
        }
    }

    /// Whether the peer sealed a body dated `sent_at_ms` (its clock) on
    /// `sessions[at]` after it had already sealed on a later session: an
    /// honest single copy of the peer's state never goes back to a session
    /// once it has moved on (§7).
    fn went_back(&self, at: usize, sent_at_ms: u64) -> bool {
        self.sessions
            .get(at + 1..)
            .unwrap_or_default()
            .iter()
            .any(|later| later.peer_first_sent_ms.is_some_and(|t| sent_at_ms > t))
    }

    /// Makes `sessions[at]`, which the peer has just been seen to seal on,
    /// current again; the sessions after it are superseded as of `now`.
    fn reactivate(&mut self, at: usize, now: u64, config: &SessionConfig) {
        if at >= self.sessions.len() {
            return;
        }
        let mut session = self.sessions.remove(at);
        session.superseded_at_ms = None;
        session.confirmed_at_ms = Some(now);
        self.push(session, now, config);
    }

    fn erase_expired(&mut self, now: u64, config: &SessionConfig) {
        let grace = millis(config.grace);
        let lifetime = millis(config.init_lifetime);
        let max_age = millis(config.max_age);
        self.pending
            .retain(|p| now < p.created_at_ms.saturating_add(lifetime));
        self.seen.retain(|s| now < s.forget_at_ms);
        let deadlines: Vec<u64> = self
            .sessions
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let hard = s
                    .created_at_ms
                    .saturating_add(max_age)
                    .saturating_add(grace);
                let later = &self.sessions[i + 1..];
                if later.is_empty() {
                    return hard;
                }
                let soft = match later.iter().filter_map(|l| l.confirmed_at_ms).min() {
                    Some(confirmed) => confirmed.saturating_add(grace),
                    None => s.superseded_at_ms.unwrap_or(now).saturating_add(lifetime),
                };
                hard.min(soft)
            })
            .collect();
        self.erased.retain(|e| now < e.forget_at_ms);
        let mut gone = Vec::new();
        let mut deadlines = deadlines.into_iter();
        self.sessions.retain(|s| {
            let keep = deadlines.next().is_some_and(|d| now < d);
            if !keep {
                gone.push(s.recv_id);
            }
            keep
        });
        for id in gone {
            self.bury(id, now, config);
        }
    }
}

impl SessionStore {
    /// An empty store for the identity `owner`.
    pub fn new(owner: PublicKey, config: SessionConfig) -> Self {
        Self {
            owner,
            config,
            peers: BTreeMap::new(),
        }
    }

    /// The identity this store belongs to.
    pub fn owner(&self) -> PublicKey {
        self.owner
    }

    /// The renewal and erasure policy in force.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Replaces the renewal and erasure policy.
    pub fn set_config(&mut self, config: SessionConfig) {
        self.config = config;
    }

    /// Whether a session with `peer` is established on this side (so the next
    /// message to them is forward-secret, unless it has grown too old).
    pub fn has_session(&self, peer: &PublicKey) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.sessions.is_empty())
    }

    fn check_owner(&self, me: &SecretKey) -> Result<(), EnvelopeError> {
        if me.public() == self.owner {
            Ok(())
        } else {
            Err(EnvelopeError::Internal)
        }
    }

    fn id_in_use(&self, id: &SessionId) -> bool {
        self.peers.values().any(|p| p.knows(id))
    }

    fn fresh_id(&self, taken: &[SessionId]) -> SessionId {
        #[cfg(test)]
        if let Some(id) = fixed::id() {
            return SessionId(id);
        }
        loop {
            let mut id = SessionId([0; 16]);
            OsRng.fill_bytes(&mut id.0);
            if !self.id_in_use(&id) && !taken.contains(&id) {
                return id;
            }
        }
    }

    /// Three fresh ids for a new init, unused and distinct.
    fn fresh_ids(&self) -> InitIds {
        let init = self.fresh_id(&[]);
        let send = self.fresh_id(&[init]);
        let recv = self.fresh_id(&[init, send]);
        InitIds { init, send, recv }
    }

    /// Seals `body` for `peer` (see the module documentation, §3, for what is
    /// sent when). Erases expired state first.
    pub fn seal_to(
        &mut self,
        me: &SecretKey,
        peer: &PublicKey,
        body: &Body,
        now: SystemTime,
    ) -> Result<Sealed, EnvelopeError> {
        self.check_owner(me)?;
        let now = now_ms(now);
        self.erase_expired_ms(now);
        let encoded =
            Zeroizing::new(postcard::to_stdvec(body).map_err(|_| EnvelopeError::Internal)?);
        let padded = Zeroizing::new(pad_encoded(&encoded)?);
        let id = self.fresh_ids();
        let config = self.config.clone();
        let entry = self.peers.entry(*peer).or_default();
        let fresh_pending = entry.has_fresh_pending(now, &config);

        if let Some(session) = entry.sendable(now, &config) {
            let due = session.due(now, &config);
            let envelope = session.seal(&padded)?;
            let renewal = if due && !fresh_pending {
                Some(start_init(entry, me, peer, id, now, bare_payload()?)?)
            } else {
                None
            };
            return Ok(Sealed {
                envelope,
                renewal,
                forward_secret: true,
            });
        }
        let (envelope, renewal) = if fresh_pending {
            (envelope::seal(me, peer, body)?, None)
        } else if padded.len() > MAX_INIT_BUCKET {
            // Too long for an init beside the direction ids: a one-shot
            // carries it, and a bare init starts the session.
            let init = start_init(entry, me, peer, id, now, bare_payload()?)?;
            (envelope::seal(me, peer, body)?, Some(init))
        } else {
            (start_init(entry, me, peer, id, now, padded)?, None)
        };
        Ok(Sealed {
            envelope,
            renewal,
            forward_secret: false,
        })
    }

    /// Opens an envelope of any kind addressed to `me` (see the module
    /// documentation, §3). `is_contact` decides whose inits may start a
    /// session: anyone may send an init, but only contacts get state kept.
    /// Erases expired state first; apart from that, on error the store is
    /// unchanged, except that an authentic but malformed body still counts as
    /// received.
    pub fn open(
        &mut self,
        me: &SecretKey,
        envelope: &[u8],
        now: SystemTime,
        is_contact: impl Fn(&PublicKey) -> bool,
    ) -> Result<Received, EnvelopeError> {
        self.check_owner(me)?;
        let now = now_ms(now);
        self.erase_expired_ms(now);
        let (header, rest) = envelope
            .split_first_chunk::<2>()
            .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
        match *header {
            [ENVELOPE_VERSION, KIND_ONE_SHOT] => {
                let opened = envelope::open(me, envelope)?;
                Ok(Received {
                    sender: opened.sender,
                    body: Some(opened.body),
                    forward_secret: false,
                    reply: None,
                    peer_went_back: false,
                })
            }
            [ENVELOPE_VERSION, KIND_SESSION_INIT] => self.open_init(me, rest, now, is_contact),
            [ENVELOPE_VERSION, KIND_SESSION_ACCEPT] => self.open_accept(me, envelope, now),
            [ENVELOPE_VERSION, KIND_SESSION_MESSAGE] => self.open_message(envelope, now),
            [version, kind] => Err(EnvelopeError::Unsupported { version, kind }),
        }
    }

    fn open_init(
        &mut self,
        me: &SecretKey,
        rest: &[u8],
        now: u64,
        is_contact: impl Fn(&PublicKey) -> bool,
    ) -> Result<Received, EnvelopeError> {
        let init = layout::parse_init(rest)?;
        let read = noise::read_init(me, &init.id, init.created_at_ms, init.msg1)?;
        let sender = read.sender;
        let (ids, padded) = split_init_payload(init.id, &read.payload)?;
        let mut received = Received {
            sender,
            body: body_of(padded)?,
            forward_secret: false,
            reply: None,
            peer_went_back: false,
        };
        if !is_contact(&sender) {
            return Ok(received);
        }
        if self.peers.get(&sender).is_some_and(|p| p.knows(&init.id)) {
            return Err(EnvelopeError::Replayed);
        }
        let lifetime = millis(self.config.init_lifetime);
        let stale = now.saturating_sub(init.created_at_ms) >= lifetime / 2;
        // An id already in use is refused a session: ids must name one session.
        let taken = [ids.init, ids.send, ids.recv]
            .iter()
            .any(|id| self.id_in_use(id));
        if stale || taken {
            return Ok(received);
        }
        let owner_wins = self.owner < sender;
        let config = self.config.clone();
        let entry = self.peers.entry(sender).or_default();
        entry.remember(
            init.id,
            init.created_at_ms.max(now).saturating_add(lifetime),
        );
        if owner_wins && entry.has_fresh_pending(now, &config) {
            // Our own init wins the tie-break; the peer will answer it.
            return Ok(received);
        }
        let (msg2, keys) = read.accept()?;
        let mut session = Session::new(ids, Role::Responder, init.created_at_ms, keys, msg2);
        received.reply = Some(session.seal(&bare_payload()?)?);
        entry.push(session, now, &config);
        Ok(received)
    }

    fn open_accept(
        &mut self,
        me: &SecretKey,
        envelope: &[u8],
        now: u64,
    ) -> Result<Received, EnvelopeError> {
        let accept = layout::parse_accept(envelope)?;
        let config = self.config.clone();
        for (peer, entry) in self.peers.iter_mut() {
            if let Some(at) = entry.sessions.iter().position(|s| s.recv_id == accept.id) {
                // Only the responder sends kind 3, always with the message 2
                // the session was completed with.
                let session = &entry.sessions[at];
                if session.role != Role::Initiator || session.accept != *accept.msg2 {
                    return Err(EnvelopeError::Decrypt);
                }
                return open_on(*peer, entry, at, &accept.transport, now, &config);
            }
            let Some(at) = entry.pending.iter().position(|p| p.recv_id == accept.id) else {
                continue;
            };
            let pending = &entry.pending[at];
            let keys = noise::complete_init(
                me,
                peer,
                &pending.id,
                pending.created_at_ms,
                &pending.ephemeral,
                &pending.payload,
                accept.msg2,
            )?;
            let ids = InitIds {
                init: pending.id,
                send: pending.send_id,
                recv: pending.recv_id,
            };
            let mut session = Session::new(
                ids,
                Role::Initiator,
                pending.created_at_ms,
                keys,
                *accept.msg2,
            );
            session.confirmed_at_ms = Some(now);
            // Nothing is kept unless the transport message authenticates too
            // (an authentic message with a malformed body still completes).
            let body = session.open(&accept.transport);
            if let Err(e) = &body {
                if !matches!(e, EnvelopeError::Malformed(_)) {
                    return Err(e.clone());
                }
            }
            entry.pending.remove(at);
            entry.push(session, now, &config);
            return Ok(Received {
                sender: *peer,
                body: body?,
                forward_secret: true,
                reply: None,
                peer_went_back: false,
            });
        }
        Err(self.no_session(&accept.id))
    }

    fn open_message(&mut self, envelope: &[u8], now: u64) -> Result<Received, EnvelopeError> {
        let message = layout::parse_message(envelope)?;
        let config = self.config.clone();
        for (peer, entry) in self.peers.iter_mut() {
            let Some(at) = entry.sessions.iter().position(|s| s.recv_id == message.id) else {
                continue;
            };
            return open_on(*peer, entry, at, &message.transport, now, &config);
        }
        Err(self.no_session(&message.id))
    }

    /// Why no session opens an envelope naming `id`: erased here (whose
    /// peer is known), or never held.
    fn no_session(&self, id: &SessionId) -> EnvelopeError {
        self.peers
            .iter()
            .find(|(_, p)| p.erased.iter().any(|e| e.id == *id))
            .map_or(EnvelopeError::UnknownSession, |(peer, _)| {
                EnvelopeError::ErasedSession { peer: *peer }
            })
    }

    /// Starts a new session with `peer` at once, as after an envelope on a
    /// session erased here ([`EnvelopeError::ErasedSession`]): the current
    /// session is sealed on no more (the peer may not hold it), and a bare
    /// init goes out, so what either side sends next opens on the other.
    /// Returns that init, or `None` if an init to `peer` younger than
    /// `renew_after` is already waiting for its answer (it does the same job,
    /// and a second one would only push it out).
    pub fn restart(
        &mut self,
        me: &SecretKey,
        peer: &PublicKey,
        now: SystemTime,
    ) -> Result<Option<Vec<u8>>, EnvelopeError> {
        self.check_owner(me)?;
        let now = now_ms(now);
        self.erase_expired_ms(now);
        let id = self.fresh_ids();
        let config = self.config.clone();
        let entry = self.peers.entry(*peer).or_default();
        if entry.has_fresh_pending(now, &config) {
            return Ok(None);
        }
        if let Some(current) = entry.sessions.last_mut() {
            current.superseded_at_ms.get_or_insert(now);
        }
        start_init(entry, me, peer, id, now, bare_payload()?).map(Some)
    }

    /// The split keys of the current session with `peer`, for the
    /// known-answer vectors: `(initiator's sending key, responder's)`.
    #[cfg(test)]
    pub(crate) fn vector_split_keys(&self, peer: &PublicKey) -> Option<([u8; 32], [u8; 32])> {
        let session = self.peers.get(peer)?.sessions.last()?;
        Some((**session.keys.initiator, **session.keys.responder))
    }

    /// Erases everything expired at `now` (module documentation, §5). Also
    /// done at the start of every `seal_to` and `open`.
    pub fn erase_expired(&mut self, now: SystemTime) {
        self.erase_expired_ms(now_ms(now));
    }

    fn erase_expired_ms(&mut self, now: u64) {
        let config = &self.config;
        for peer in self.peers.values_mut() {
            peer.erase_expired(now, config);
        }
        self.peers.retain(|_, p| !p.is_empty());
    }

    /// Erases every session, pending init and remembered id of `peer` (a
    /// contact removed, or a reset). What they send on those sessions
    /// afterwards no longer opens.
    pub fn erase_peer(&mut self, peer: &PublicKey) {
        self.peers.remove(peer);
    }
}

/// Opens a transport message on `entry.sessions[at]`, the session of `peer`
/// its envelope names; a responder session is confirmed by it, and one the
/// peer went back to is made current again (module documentation, §7).
fn open_on(
    peer: PublicKey,
    entry: &mut Peer,
    at: usize,
    transport: &layout::Transport<'_>,
    now: u64,
    config: &SessionConfig,
) -> Result<Received, EnvelopeError> {
    let session = entry.sessions.get_mut(at).ok_or(EnvelopeError::Internal)?;
    let body = session.open(transport)?;
    // Only the peer's key opens here: it holds the session.
    session.confirmed_at_ms.get_or_insert(now);
    let went_back = body
        .as_ref()
        .is_some_and(|b| entry.went_back(at, b.sent_at_ms));
    if went_back {
        entry.reactivate(at, now, config);
    }
    Ok(Received {
        sender: peer,
        body,
        forward_secret: true,
        reply: None,
        peer_went_back: went_back,
    })
}

/// Message 1's payload: the direction ids, then the padded body.
fn init_payload(ids: &InitIds, padded: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut payload = Zeroizing::new(Vec::with_capacity(INIT_IDS_LEN + padded.len()));
    payload.extend_from_slice(&ids.send.0);
    payload.extend_from_slice(&ids.recv.0);
    payload.extend_from_slice(padded);
    payload
}

/// The ids and the padded body in message 1's payload. A payload that is a
/// bucket exactly comes from a client of before direction ids: its one id
/// names both directions.
fn split_init_payload(init: SessionId, payload: &[u8]) -> Result<(InitIds, &[u8]), EnvelopeError> {
    if BUCKETS.contains(&payload.len()) {
        return Ok((
            InitIds {
                init,
                send: init,
                recv: init,
            },
            payload,
        ));
    }
    let (send, rest) = payload
        .split_first_chunk::<16>()
        .ok_or(EnvelopeError::Decrypt)?;
    let (recv, padded) = rest
        .split_first_chunk::<16>()
        .ok_or(EnvelopeError::Decrypt)?;
    let ids = InitIds {
        init,
        send: SessionId(*send),
        recv: SessionId(*recv),
    };
    // Three ids that must each name one thing.
    if ids.send == ids.recv || ids.send == init || ids.recv == init {
        return Err(EnvelopeError::Malformed("session ids used twice"));
    }
    Ok((ids, padded))
}

/// Writes a new init to `peer` carrying `padded`, and keeps it pending.
fn start_init(
    entry: &mut Peer,
    me: &SecretKey,
    peer: &PublicKey,
    ids: InitIds,
    now: u64,
    padded: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, EnvelopeError> {
    let ephemeral = noise::new_ephemeral();
    let payload = init_payload(&ids, &padded);
    let id = ids.init;
    let (_, msg1) = noise::write_init(me, peer, &id, now, &ephemeral, &payload)?;
    entry.pending.push(PendingInit {
        id,
        send_id: ids.send,
        recv_id: ids.recv,
        created_at_ms: now,
        ephemeral,
        payload,
    });
    if entry.pending.len() > MAX_PENDING_PER_PEER {
        entry.pending.remove(0);
    }
    Ok(layout::init(&id, now, &msg1))
}
