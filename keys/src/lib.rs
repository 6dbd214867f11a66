//! sotto identities.
//!
//! Everything a person handles about keys lives here, apart from the bytes that
//! get sealed (that is `sotto-crypto`):
//!
//! - [`public`]: public keys and their checksummed text form (`sotto1...`, `sottorelay1...`);
//! - [`secret`]: secret keys, zeroized on drop, never printed;
//! - [`passphrase`]: passphrases that protect key files, zeroized, never printed;
//! - [`keyfile`]: the key file on disk (0600, never overwritten, optionally
//!   encrypted with Argon2id + ChaCha20-Poly1305);
//! - [`relay_addr`]: relay addresses (`host:port`);
//! - [`delivery`]: a contact's relay, its pinned key and their token there;
//! - [`contacts`]: `contacts.toml`, names for keys, edited by people and by `sotto`;
//! - [`safety`]: safety numbers that two people compare to verify each other's key;
//! - [`token`]: delivery tokens, the capability to deliver to a mailbox
//!   (`sottotoken1...`), zeroized, compared in constant time, never in `Debug`;
//! - [`invite`]: one string bundling a key, a relay, the relay's key and a
//!   delivery token;
//! - [`error`]: the error types.
//!
//! The crate holds no network code and seals no messages; it is what both the
//! client and the relay need to know about identities.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod contacts;
pub mod delivery;
pub mod error;
mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod invite;
pub mod keyfile;
pub mod passphrase;
pub mod public;
pub mod relay_addr;
pub mod safety;
pub mod secret;
pub mod token;

pub use contacts::{Contact, ContactBook, ContactName, Group};
pub use delivery::Delivery;
pub use error::{Error, KeyStringError};
pub use invite::Invite;
pub use passphrase::Passphrase;
pub use public::{PublicKey, RelayKey, PUBLIC_KEY_LEN};
pub use relay_addr::RelayAddr;
pub use safety::{safety_number, SafetyNumber};
pub use secret::SecretKey;
pub use token::DeliveryToken;
