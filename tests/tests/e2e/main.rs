//! End-to-end tests: the real `sotto-relay` and `sotto` binaries on 127.0.0.1.
//! One test binary, a module per area.

mod abuse;
mod chat;
mod chat_receive;
mod cli;
mod download_limits;
mod exhaustion;
mod faults;
mod federation;
mod files;
mod griefing;
mod history;
mod messaging;
mod nodes;
mod pairing;
mod pending_files;
mod presence;
mod sessions;
mod state;
mod trees;
