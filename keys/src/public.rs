//! Public keys and their text form.
//!
//! A public key is shown to people, pasted into chats and typed by hand, so its
//! string form carries a checksum (bech32m, BIP 350): a typo is caught instead of
//! silently addressing a stranger. Client identities use the prefix `sotto1`,
//! relays `sottorelay1`, so a relay key pasted where a contact key belongs (or
//! the other way round) is refused by its prefix.

use std::fmt;
use std::str::FromStr;

use bech32::{Bech32m, Hrp};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::KeyStringError;

/// Length in bytes of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

const USER_HRP: &str = "sotto";
const RELAY_HRP: &str = "sottorelay";

/// The encodings (top bit clear) of the points of small order on Curve25519
/// and its twist, canonical and not: 0, 1, the two points of order 8, and
/// p - 1, p, p + 1. Every X25519 with one of them (whatever the top bit) gives
/// the all-zero output, and no other input does (the same list as libsodium's).
const LOW_ORDER: [[u8; PUBLIC_KEY_LEN]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    field_element_tail(0xec),
    field_element_tail(0xed),
    field_element_tail(0xee),
];

/// `first` followed by 0xff bytes and a last byte of 0x7f: p - 1, p and p + 1
/// for a first byte of 0xec, 0xed and 0xee (p = 2^255 - 19).
const fn field_element_tail(first: u8) -> [u8; PUBLIC_KEY_LEN] {
    let mut out = [0xff; PUBLIC_KEY_LEN];
    out[0] = first;
    out[PUBLIC_KEY_LEN - 1] = 0x7f;
    out
}

/// The X25519 public key of a client identity: its address on a relay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

/// The X25519 public key of a relay, pinned by clients.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayKey(PublicKey);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Wraps raw key bytes taken from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyStringError> {
        let arr: [u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyStringError::Length { got: bytes.len() })?;
        Ok(Self(arr))
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Whether this is a low-order point of Curve25519 (the all-zero key and
    /// its kin). A Diffie-Hellman with such a key yields a value an attacker
    /// knows whatever the other secret is, so a peer with a weak key could be
    /// impersonated by anyone. Noise implementations do not all reject them
    /// (snow does not), so sotto refuses them wherever a key enters: key
    /// strings, envelope senders, link clients.
    pub fn is_weak(&self) -> bool {
        // A comparison rather than a Diffie-Hellman probe: this runs for every
        // opened envelope and every link handshake. X25519 ignores the top bit,
        // so each encoding is compared with it masked off.
        let (head, last) = self.0.split_at(PUBLIC_KEY_LEN - 1);
        LOW_ORDER.iter().any(|weak| {
            weak[..PUBLIC_KEY_LEN - 1] == *head && weak[PUBLIC_KEY_LEN - 1] == last[0] & 0x7f
        })
    }

    /// A short form for logs and compact displays (prefix of the string form).
    pub fn short(&self) -> String {
        let s = self.to_string();
        format!("{}…", &s[..USER_HRP.len() + 1 + 10])
    }
}

impl RelayKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(PublicKey(bytes))
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        self.0.as_bytes()
    }

    /// The same bytes viewed as a plain public key.
    pub const fn as_public(&self) -> &PublicKey {
        &self.0
    }
}

impl From<PublicKey> for RelayKey {
    fn from(key: PublicKey) -> Self {
        Self(key)
    }
}

fn encode(hrp: &str, bytes: &[u8; PUBLIC_KEY_LEN]) -> String {
    // Both prefixes are valid constants and 32 bytes fit far below bech32m's
    // length limit, so encoding cannot fail.
    let hrp = Hrp::parse_unchecked(hrp);
    bech32::encode::<Bech32m>(hrp, bytes).unwrap_or_default()
}

fn decode(
    expected_hrp: &'static str,
    other_hrp: &'static str,
    s: &str,
) -> Result<[u8; PUBLIC_KEY_LEN], KeyStringError> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    if lower.starts_with(&format!("{other_hrp}1")) {
        return Err(KeyStringError::WrongKind {
            expected: kind_name(expected_hrp),
            got: kind_name(other_hrp),
        });
    }
    if !lower.starts_with(&format!("{expected_hrp}1")) {
        return Err(KeyStringError::Prefix {
            expected: expected_hrp,
        });
    }
    let checked = bech32::primitives::decode::CheckedHrpstring::new::<Bech32m>(s)
        .map_err(|_| KeyStringError::Checksum)?;
    if checked.hrp() != Hrp::parse_unchecked(expected_hrp) {
        return Err(KeyStringError::Prefix {
            expected: expected_hrp,
        });
    }
    let data: Vec<u8> = checked.byte_iter().collect();
    let bytes: [u8; PUBLIC_KEY_LEN] = data
        .as_slice()
        .try_into()
        .map_err(|_| KeyStringError::Length { got: data.len() })?;
    if PublicKey(bytes).is_weak() {
        return Err(KeyStringError::Weak);
    }
    Ok(bytes)
}

fn kind_name(hrp: &str) -> &'static str {
    if hrp == RELAY_HRP {
        "relay key"
    } else {
        "contact key"
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode(USER_HRP, &self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyStringError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode(USER_HRP, RELAY_HRP, s).map(Self)
    }
}

impl fmt::Display for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode(RELAY_HRP, self.0.as_bytes()))
    }
}

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayKey({self})")
    }
}

impl FromStr for RelayKey {
    type Err = KeyStringError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode(RELAY_HRP, USER_HRP, s).map(Self::from_bytes)
    }
}

/// Human-readable formats (TOML) carry the checksummed string; binary formats
/// (the wire) carry the 32 raw bytes.
macro_rules! serde_key {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    self.as_bytes().serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(de::Error::custom)
                } else {
                    let bytes = <[u8; PUBLIC_KEY_LEN]>::deserialize(d)?;
                    Ok(Self::from_bytes(bytes))
                }
            }
        }
    };
}

serde_key!(PublicKey);
serde_key!(RelayKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_key_round_trips_through_its_string() {
        let key = PublicKey::from_bytes([7; 32]);
        let s = key.to_string();
        assert!(s.starts_with("sotto1"), "{s}");
        assert_eq!(s.parse::<PublicKey>().unwrap(), key);
        assert_eq!(s.to_uppercase().parse::<PublicKey>().unwrap(), key);
    }

    #[test]
    fn a_typo_is_caught_by_the_checksum() {
        let s = PublicKey::from_bytes([9; 32]).to_string();
        let mut chars: Vec<char> = s.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'q' { 'p' } else { 'q' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(typo.parse::<PublicKey>(), Err(KeyStringError::Checksum));
    }

    #[test]
    fn relay_and_user_keys_are_not_interchangeable() {
        let relay = RelayKey::from_bytes([1; 32]).to_string();
        assert!(relay.starts_with("sottorelay1"));
        assert!(matches!(
            relay.parse::<PublicKey>(),
            Err(KeyStringError::WrongKind { .. })
        ));
        let user = PublicKey::from_bytes([1; 32]).to_string();
        assert!(matches!(
            user.parse::<RelayKey>(),
            Err(KeyStringError::WrongKind { .. })
        ));
        assert!(matches!(
            "age1xyz".parse::<PublicKey>(),
            Err(KeyStringError::Prefix { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_key_round_trips_through_its_string(bytes in proptest::prelude::any::<[u8; 32]>()) {
            let user = PublicKey::from_bytes(bytes);
            proptest::prop_assert_eq!(user.to_string().parse::<PublicKey>(), Ok(user));
            let relay = RelayKey::from_bytes(bytes);
            proptest::prop_assert_eq!(relay.to_string().parse::<RelayKey>(), Ok(relay));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,100}") {
            let _ = s.parse::<PublicKey>();
            let _ = s.parse::<RelayKey>();
        }
    }

    #[test]
    fn weak_keys_are_refused_when_parsed() {
        // The all-zero key and a point of order 8 (RFC 7748 test material).
        let order8: [u8; 32] = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        for weak in [[0u8; 32], order8] {
            let key = PublicKey::from_bytes(weak);
            assert!(key.is_weak());
            assert_eq!(
                key.to_string().parse::<PublicKey>(),
                Err(KeyStringError::Weak)
            );
            assert_eq!(
                RelayKey::from(key).to_string().parse::<RelayKey>(),
                Err(KeyStringError::Weak)
            );
        }
        assert!(!crate::SecretKey::generate().public().is_weak());
    }

    #[test]
    fn the_low_order_list_agrees_with_an_x25519_probe() {
        // What the list replaces: a DH with a random secret that comes out all zero.
        let probe = |key: [u8; 32]| {
            let secret = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
            !secret
                .diffie_hellman(&x25519_dalek::PublicKey::from(key))
                .was_contributory()
        };
        for weak in LOW_ORDER {
            let mut high = weak;
            high[31] |= 0x80;
            for key in [weak, high] {
                assert!(probe(key), "{key:02x?} is not of small order");
                assert!(PublicKey::from_bytes(key).is_weak(), "{key:02x?} passed");
            }
        }
        for _ in 0..200 {
            let key = crate::SecretKey::generate().public();
            assert!(!probe(*key.as_bytes()));
            assert!(!key.is_weak());
            // One bit away from a weak key is an ordinary key.
            let mut near = LOW_ORDER[2];
            near[(key.as_bytes()[0] % 31) as usize] ^= 1 << (key.as_bytes()[1] % 8);
            assert_eq!(PublicKey::from_bytes(near).is_weak(), probe(near));
        }
    }

    #[test]
    fn known_answer_vector() {
        // docs/PROTOCOL.md quotes this vector.
        let key = PublicKey::from_bytes([0; 32]);
        assert_eq!(
            key.to_string(),
            "sotto1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqgjer5a"
        );
    }
}
