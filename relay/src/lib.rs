//! The sotto relay: stores and forwards sealed envelopes it cannot open.
//!
//! Module map:
//!
//! - [`config`]: embedded defaults, a TOML file, flags;
//! - [`server`]: the accept loop, connection and handshake bounds, graceful shutdown;
//! - `connection`: one client: handshake, requests, live delivery;
//! - [`registry`]: which keys are waiting for live delivery;
//! - [`store`]: durable mailboxes (redb) with group commit, quotas and expiry;
//! - [`relay_key`]: the relay's keypair, generated on first start.
//!
//! The relay holds no key that opens an envelope: it knows recipients' public
//! keys (its addressing) and the authenticated key of each connected client.
#![forbid(unsafe_code)]

pub mod config;
mod connection;
pub mod registry;
pub mod relay_key;
pub mod server;
pub mod store;

pub use config::RelayConfig;
pub use server::{Relay, RelayError};
