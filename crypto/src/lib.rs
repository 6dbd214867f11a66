//! Everything sotto seals.
//!
//! The relay and the client share this crate so the wire is defined exactly
//! once. Module map:
//!
//! - [`frame`]: the record layer on the TCP stream: a `u16` length and one Noise
//!   message, so a record can never exceed Noise's 65,535-byte limit;
//! - [`link`]: the client<->relay handshakes (the owner link, Noise `XX`, where
//!   the client proves its key; the delivery link, Noise `NX`, where it proves
//!   none) and the encrypted message stream built on records (messages larger
//!   than one record span several);
//! - [`wire`]: the messages exchanged on the link, client->relay and relay->client;
//! - [`delivery`]: what a delivery link presents instead of a key (a mailbox's
//!   delivery token, an upload's resume secret) and the hashes the relay
//!   keeps of them;
//! - [`envelope`]: end-to-end envelopes client->client, sealed with Noise `X`
//!   to the recipient's static key, padded to size buckets;
//! - [`session`]: forward-secret sessions between two clients (envelope kinds
//!   2 to 4): a Noise `IK` handshake carried in envelopes, transport
//!   messages under random nonces, renewal, erasure, and the
//!   [`session::SessionStore`] that holds it all and saves it sealed;
//! - [`file`](mod@file): file-drop chunks sealed with STREAM under a per-file
//!   key, and the offer that carries that key to the recipient;
//! - [`pairing`]: first contact by a short code: SPAKE2, the keys under
//!   it, key confirmation and the invites sealed each way;
//! - [`at_rest`]: the key and record format that seal the client's local
//!   files (session state, offers, history) under its identity;
//! - [`error`]: the error types. Crypto failures say "decryption failed" and no more.
//!
//! Every decoder here takes untrusted bytes and returns an error, never panics,
//! and checks a declared length against its maximum before allocating.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod at_rest;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod file;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod pairing;
pub mod session;
pub mod wire;

#[cfg(test)]
mod vectors;

pub use error::{EnvelopeError, LinkError, SessionStateError};
