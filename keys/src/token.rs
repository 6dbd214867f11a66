//! Delivery tokens: the capability to deliver to one mailbox.
//!
//! A relay that accepts deliveries from senders it cannot name still needs a
//! way to tell a contact from a stranger. The owner of a mailbox gives their
//! contacts a token (in the invite, later inside end-to-end messages), and a
//! delivery to that mailbox presents it. Whoever holds the token may deliver;
//! it opens nothing and names nobody, so it is a bearer capability, not a key.
//!
//! Sixteen random bytes (128 bits), as Signal's unidentified-access keys:
//! nobody guesses it online, and a relay that stores only a hash of it gives
//! an offline guesser 2^128 tries per mailbox. More bytes would buy no
//! security a rotation does not, and would lengthen every invite and QR code.
//!
//! It is still kept like a secret here: compared in constant time, wiped when
//! dropped, and never shown by `Debug`. Its text form, for `contacts.toml`,
//! `config.toml` and command lines, is bech32m (BIP 350) with the prefix
//! `sottotoken`, so a typo is caught by the checksum and a key pasted in its
//! place is refused by its prefix, like the key strings of [`crate::public`].

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use rand_core::{OsRng, RngCore};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::Error;

/// Length in bytes of a delivery token.
pub const DELIVERY_TOKEN_LEN: usize = 16;

/// Length in characters of a delivery token's string: the prefix, `1`, 26
/// data characters and the 6-character checksum.
pub const DELIVERY_TOKEN_STR_LEN: usize = HRP.len() + 1 + 26 + 6;

const HRP: &str = "sottotoken";

/// Other strings people paste, recognised so the error can say what was given.
const OTHER_KINDS: [(&str, &str); 4] = [
    ("sottoinvite1", "an invite"),
    ("sottorelay1", "a relay key"),
    ("sotto1", "a contact key"),
    ("sotto-", "a key file line"),
];

/// The capability to deliver to one mailbox.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DeliveryToken([u8; DELIVERY_TOKEN_LEN]);

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidToken {
        reason: reason.into(),
    }
}

impl DeliveryToken {
    /// A fresh token from the operating system's random number generator.
    pub fn generate() -> Self {
        let mut bytes = [0; DELIVERY_TOKEN_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps raw token bytes (as carried in an invite or on the wire).
    pub const fn from_bytes(bytes: [u8; DELIVERY_TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw token bytes.
    pub const fn as_bytes(&self) -> &[u8; DELIVERY_TOKEN_LEN] {
        &self.0
    }
}

impl PartialEq for DeliveryToken {
    fn eq(&self, other: &Self) -> bool {
        // A relay compares a presented token with the one it holds: the time
        // taken must not tell how many bytes matched.
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for DeliveryToken {}

impl fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeliveryToken(…)")
    }
}

impl fmt::Display for DeliveryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A valid constant prefix and 16 bytes: encoding cannot fail.
        bech32::encode_lower_to_fmt::<Bech32m, _>(f, Hrp::parse_unchecked(HRP), &self.0)
            .map_err(|_| fmt::Error)
    }
}

impl FromStr for DeliveryToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let starts_with = |prefix: &str| {
            s.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        };
        if !starts_with(&format!("{HRP}1")) {
            if let Some((_, kind)) = OTHER_KINDS.iter().find(|(p, _)| starts_with(p)) {
                return Err(invalid(format!("this is {kind}, not a delivery token")));
            }
            return Err(invalid("it should start with `sottotoken1`"));
        }
        let checked = CheckedHrpstring::new::<Bech32m>(s)
            .map_err(|_| invalid("the checksum does not match (a typo or a truncated copy?)"))?;
        if checked.hrp() != Hrp::parse_unchecked(HRP) {
            return Err(invalid("it should start with `sottotoken1`"));
        }
        let data: Zeroizing<Vec<u8>> = Zeroizing::new(checked.byte_iter().collect());
        let bytes: [u8; DELIVERY_TOKEN_LEN] = data.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "a token is {DELIVERY_TOKEN_LEN} bytes, this one decodes to {}",
                data.len()
            ))
        })?;
        Ok(Self(bytes))
    }
}

/// Human-readable formats (TOML) carry the checksummed string; binary formats
/// (the wire, end-to-end bodies) carry the 16 raw bytes.
impl Serialize for DeliveryToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for DeliveryToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = Zeroizing::new(String::deserialize(d)?);
            s.parse().map_err(de::Error::custom)
        } else {
            let bytes = Zeroizing::new(<[u8; DELIVERY_TOKEN_LEN]>::deserialize(d)?);
            Ok(Self(*bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answer_vector() {
        // docs/PROTOCOL.md quotes this token in the version-2 invite vector.
        let token = DeliveryToken::from_bytes([3; 16]);
        let s = token.to_string();
        assert_eq!(s, "sottotoken1qvpsxqcrqvpsxqcrqvpsxqcrqvmn0lax");
        assert_eq!(s.len(), DELIVERY_TOKEN_STR_LEN);
        assert_eq!(s.parse::<DeliveryToken>().unwrap(), token);
        assert_eq!(s.to_uppercase().parse::<DeliveryToken>().unwrap(), token);
        assert_eq!(format!("  {s}\n").parse::<DeliveryToken>().unwrap(), token);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = DeliveryToken::from_bytes([0xab; 16]);
        let shown = format!("{token:?} {:?}", Some(token.clone()));
        assert_eq!(shown, "DeliveryToken(…) Some(DeliveryToken(…))");
        let s = token.to_string();
        assert!(!shown.contains(&s[11..20]), "{shown}");
    }

    #[test]
    fn generated_tokens_differ() {
        let a = DeliveryToken::generate();
        let b = DeliveryToken::generate();
        assert_ne!(a, b);
        assert_ne!(a.as_bytes(), &[0; 16]);
        assert_eq!(a.clone(), a);
    }

    #[test]
    fn equality_looks_at_every_byte() {
        let a = DeliveryToken::from_bytes([7; 16]);
        for i in [0, 7, 15] {
            let mut bytes = [7; 16];
            bytes[i] ^= 0x80;
            assert_ne!(a, DeliveryToken::from_bytes(bytes));
        }
    }

    #[test]
    fn other_strings_are_refused_with_a_reason_that_does_not_echo_them() {
        let token = DeliveryToken::from_bytes([3; 16]).to_string();
        let mut typo: Vec<char> = token.chars().collect();
        let i = typo.len() - 9;
        typo[i] = if typo[i] == 'q' { 'p' } else { 'q' };
        let typo: String = typo.into_iter().collect();
        let key = crate::PublicKey::from_bytes([1; 32]).to_string();
        let relay = crate::RelayKey::from_bytes([1; 32]).to_string();
        let short = bech32::encode::<Bech32m>(Hrp::parse_unchecked(HRP), &[3; 15]).unwrap();
        let long = bech32::encode::<Bech32m>(Hrp::parse_unchecked(HRP), &[3; 32]).unwrap();
        for (s, says) in [
            (typo.as_str(), "checksum"),
            (&token[..token.len() - 1], "checksum"),
            (&key, "a contact key, not a delivery token"),
            (&relay, "a relay key, not a delivery token"),
            ("sottoinvite1qqqq", "an invite, not a delivery token"),
            ("hello", "start with `sottotoken1`"),
            ("", "start with `sottotoken1`"),
            (&short, "decodes to 15"),
            (&long, "decodes to 32"),
        ] {
            let err = s.parse::<DeliveryToken>().unwrap_err().to_string();
            assert!(err.contains(says), "{s:?}: {err}");
            assert!(err.starts_with("invalid delivery token: "), "{err}");
            if s.len() > 12 {
                assert!(!err.contains(&s[12..]), "echoed: {err}");
            }
        }
    }

    #[test]
    fn serde_uses_the_string_in_toml() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct C {
            token: DeliveryToken,
        }
        let c = C {
            token: DeliveryToken::from_bytes([3; 16]),
        };
        let text = toml::to_string(&c).unwrap();
        assert_eq!(
            text,
            "token = \"sottotoken1qvpsxqcrqvpsxqcrqvpsxqcrqvmn0lax\"\n"
        );
        assert_eq!(toml::from_str::<C>(&text).unwrap(), c);
        assert!(toml::from_str::<C>("token = \"sotto1x\"").is_err());
    }

    proptest! {
        #[test]
        fn any_token_round_trips_through_its_string(bytes in any::<[u8; 16]>()) {
            let token = DeliveryToken::from_bytes(bytes);
            let s = token.to_string();
            prop_assert_eq!(s.len(), DELIVERY_TOKEN_STR_LEN);
            prop_assert!(s.starts_with("sottotoken1"));
            prop_assert_eq!(s.parse::<DeliveryToken>().unwrap(), token);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<DeliveryToken>();
        }

        #[test]
        fn parsing_bech32_alphabet_never_panics(s in "sottotoken1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{0,60}") {
            let _ = s.parse::<DeliveryToken>();
        }
    }
}
