//! Errors of the crypto crate.
//!
//! Decryption failures deliberately carry no detail: which byte or which step
//! failed is information for an attacker, not for a user.

use sotto_keys::{PublicKey, RelayKey};

/// A failure on the client<->relay link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The underlying stream failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection in the middle of a record or message.
    #[error("the connection was closed in the middle of a message")]
    UnexpectedEof,
    /// The peer closed the connection during the handshake.
    #[error("the connection was closed during the handshake")]
    ClosedDuringHandshake,
    /// The connection does not start with sotto's preamble.
    #[error("not a sotto client (bad preamble)")]
    BadPreamble,
    /// The client opened a kind of link this side does not serve here (a
    /// delivery link where only an owner link is accepted).
    #[error("the client opened another kind of link than this side accepts")]
    WrongLinkKind,
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got} (this build speaks {ours})")]
    UnsupportedVersion {
        /// The version the peer announced.
        got: u16,
        /// Ours.
        ours: u16,
    },
    /// The Noise handshake failed (bad message, failed authentication).
    #[error("the Noise handshake failed")]
    Handshake,
    /// The relay proved a key other than the one pinned in the config.
    #[error("relay key mismatch: expected {expected}, the relay presented {got}")]
    RelayKeyMismatch {
        /// The pinned key.
        expected: RelayKey,
        /// The key the relay proved.
        got: RelayKey,
    },
    /// A record or handshake message longer than allowed at this point.
    #[error("record of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A message declared longer than the link's maximum.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A record failed to decrypt.
    #[error("decryption failed")]
    Decrypt,
    /// A decrypted message does not decode.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The client's key is not allowed on this relay.
    #[error("client {0} is not on this relay's allow-list")]
    NotAllowed(PublicKey),
}

/// A failure sealing or opening an end-to-end envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The body does not fit in one envelope.
    #[error("message too long: {len} bytes, at most {max} fit in one envelope")]
    TooLarge {
        /// Encoded body length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Unknown envelope version or kind.
    #[error("unsupported envelope version {version} kind {kind}")]
    Unsupported {
        /// Version byte.
        version: u8,
        /// Kind byte.
        kind: u8,
    },
    /// Wrong recipient, tampering, or garbage.
    #[error("decryption failed")]
    Decrypt,
    /// The envelope decrypted but its content is not well formed.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The Noise library refused a local operation.
    #[error("internal crypto error")]
    Internal,
    /// A session envelope that was opened lately (a re-delivery or a
    /// replay), or an init already answered. Nothing to show.
    #[error("envelope already received")]
    Replayed,
    /// A session envelope whose session this store never held: the sender
    /// holds session state this store lacks (this store is an older copy, a
    /// restored backup), or the envelope is garbage.
    #[error("no session for this envelope: this home never held it")]
    UnknownSession,
    /// A session envelope whose session this store held with `peer` and has
    /// erased. Either the peer's state is older than its keys' erasure (its
    /// home restored from an old backup) and what it sent cannot be read, or
    /// an old envelope was delivered again. Not authenticated: anyone who saw
    /// the session id can name it. [`crate::session::SessionStore::restart`]
    /// starts a new session with the peer.
    #[error("sealed on a session whose keys were erased here")]
    ErasedSession {
        /// The peer the erased session was with.
        peer: PublicKey,
    },
}

/// A failure saving or restoring the session store (`sessions` file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionStateError {
    /// Wrong identity key, tampering, or not a sealed session state.
    #[error("decryption failed")]
    Decrypt,
    /// A state format this build does not read.
    #[error("unsupported session state version {0}")]
    UnsupportedVersion(u8),
    /// The state decrypted (or was given in the clear) but does not decode.
    #[error("malformed session state: {0}")]
    Malformed(&'static str),
    /// Larger than any state this build writes.
    #[error("session state of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The state belongs to another identity than the key it is used with.
    #[error("this session state belongs to another identity")]
    WrongIdentity,
    /// A local crypto operation failed.
    #[error("internal crypto error")]
    Internal,
}
