//! The sotto relay.
#![forbid(unsafe_code)]

pub mod store;
