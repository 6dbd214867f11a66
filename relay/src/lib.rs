//! The sotto relay: stores and forwards sealed envelopes it cannot open.
//!
//! Module map:
//!
//! - [`config`]: embedded defaults, a TOML file, flags;
//! - [`server`]: the accept loop, connection and handshake bounds, graceful shutdown;
//! - `half_open`: connections not yet authenticated, and which of them make
//!   room for newer ones;
//! - `occupancy`: connections per key and per source address (`source`);
//! - [`budget`]: the bytes held for clients, bounded per connection, key,
//!   address and relay;
//! - `tally`: rate-limited logging of connections closed before they are served;
//! - `connection`: one client: handshake, requests, live delivery, file
//!   uploads and downloads with bounded memory;
//! - [`registry`]: which keys are waiting for live notices (envelopes reach
//!   live recipients through the store's feeds, `store::live`);
//! - [`store`]: durable mailboxes and blob metadata behind one interface: the
//!   embedded redb backend (the default, with group commit), or a NATS
//!   JetStream cluster shared by several relay nodes; quotas and expiry;
//! - [`blobs`]: the blind file cache: sealed chunks streamed to files, resumable
//!   uploads, downloads by the recipient only;
//! - [`rendezvous`]: the slots where two clients pairing by a short code
//!   meet and exchange opaque PAKE messages;
//! - [`limits`]: rate limits per key (envelopes and upload bytes);
//! - [`space`]: the reserve of free disk space that turns a full disk into
//!   a clean refusal;
//! - [`relay_key`]: the relay's keypair, generated on first start.
//!
//! The relay holds no key that opens an envelope: it knows recipients' public
//! keys (its addressing) and the authenticated key of each connected client,
//! and of a dropped file only its random id, its size and its sealed chunks.
#![forbid(unsafe_code)]

pub mod blobs;
pub mod budget;
pub mod config;
mod connection;
pub mod delivery;
mod half_open;
pub mod limits;
#[doc(hidden)]
pub mod nats_cluster;
mod occupancy;
pub mod registry;
pub mod relay_key;
pub mod rendezvous;
pub mod server;
mod source;
pub mod space;
pub mod store;
mod tally;

pub use config::RelayConfig;
pub use server::{Collected, Maintenance, Relay, RelayError};
