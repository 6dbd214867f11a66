//! sotto identities.
//!
//! Everything a person handles about keys lives here, apart from the bytes that
//! get sealed (that is `sotto-crypto`):
//!
//! - [`public`]: public keys and their checksummed text form (`sotto1...`, `sottorelay1...`);
//! - [`secret`]: secret keys, zeroized on drop, never printed;
//! - [`error`]: the error types.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod public;
pub mod secret;

pub use error::{Error, KeyStringError};
pub use public::{PublicKey, RelayKey, PUBLIC_KEY_LEN};
pub use secret::SecretKey;
