//! Invites: everything a new contact needs, in one string to paste.
//!
//! Adding a contact takes their key, the relay they read from, that relay's
//! key (which the client pins) and the token their mailbox there asks of whoever
//! delivers to it. Four strings pasted separately invite mix-ups; an invite
//! bundles them under one checksum, so a typo or a truncated copy is caught as
//! a whole.
//!
//! # Format
//!
//! bech32m (BIP 350), lower case, human-readable part `sottoinvite`. Writers
//! produce version 2; readers take versions 1 and 2, so an invite made before
//! delivery tokens still adds a contact (without a token). Version 2 data:
//!
//! | offset | length | field |
//! | ---: | ---: | --- |
//! | 0 | 1 | version, `0x02` |
//! | 1 | 32 | the contact's X25519 public key |
//! | 33 | 32 | the relay's X25519 public key |
//! | 65 | 1 | `n`, the length of the delivery token: 0 (none) or 16 |
//! | 66 | `n` | the delivery token |
//! | 66 + `n` | 1..=261 | the relay address `host:port` (`[v6]:port` for IPv6), UTF-8 |
//!
//! Version 1 is the same without the token: version `0x01`, the two keys, and
//! the address from offset 65. The address takes the rest of the data and must
//! itself be a valid [`RelayAddr`]; 261 bytes is the longest one can be. The
//! token's length is written out, rather than implied by what is left, so that
//! an address can never be mistaken for a token or the reverse.
//!
//! The string is longer than BIP 173's 90 characters; the checksum is used up
//! to its code length of 1023 characters (as the `bech32` crate does), which a
//! maximal invite ([`MAX_INVITE_LEN`], 567 characters) stays well within.
//! Readers accept all-upper-case strings too (QR codes favour them).
//!
//! # Test vectors
//!
//! Contact key 32 bytes `0x01`, relay key 32 bytes `0x02`, relay
//! `relay.example.org:7300`, and for version 2 the token 16 bytes `0x03` (see
//! the tests and docs/PROTOCOL.md §13.3):
//!
//! ```text
//! version 1: sottoinvite1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszwfjkccte9ejhsctdwpkx2tn0wfnn5denxqcqaqfcps
//! version 2: sottoinvite1qgqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszzqpsxqcrqvpsxqcrqvpsxqcrqvphyetvv9ujuetcv9khqmr99ehhyee6xuenqvqvzpqpq
//! ```

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use zeroize::Zeroizing;

use crate::delivery::Delivery;
use crate::error::Error;
use crate::public::{PublicKey, RelayKey, PUBLIC_KEY_LEN};
use crate::relay_addr::{RelayAddr, MAX_RELAY_ADDR_LEN};
use crate::token::{DeliveryToken, DELIVERY_TOKEN_LEN};

const HRP: &str = "sottoinvite";
/// Key, relay key, relay address.
const VERSION_1: u8 = 1;
/// Key, relay key, delivery token (optional), relay address.
const VERSION_2: u8 = 2;
/// Version and the two keys: what both versions start with.
const KEYS_END: usize = 1 + 2 * PUBLIC_KEY_LEN;

/// Longest data of an invite, in bytes: a version-2 invite with a token and
/// the longest relay address.
const MAX_DATA_LEN: usize = KEYS_END + 1 + DELIVERY_TOKEN_LEN + MAX_RELAY_ADDR_LEN;

/// Longest invite string, in characters: the prefix, `1`, the data in 5-bit
/// groups and the 6-character checksum.
pub const MAX_INVITE_LEN: usize = HRP.len() + 1 + (MAX_DATA_LEN * 8).div_ceil(5) + 6;

/// A contact's key with the relay to reach them through, that relay's key,
/// and their delivery token there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The contact's public key.
    pub key: PublicKey,
    /// The relay the contact reads from.
    pub relay: RelayAddr,
    /// The relay's public key, to pin.
    pub relay_key: RelayKey,
    /// The token of the contact's mailbox on that relay; absent from
    /// version-1 invites, and from those of someone who has none yet.
    pub token: Option<DeliveryToken>,
}

impl Invite {
    /// Where to deliver to the contact who made it.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            relay: self.relay.clone(),
            relay_key: self.relay_key,
            token: self.token.clone(),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Invite {
        reason: reason.into(),
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.relay.to_string();
        // The token is a capability: the buffer holding it is wiped.
        let mut data = Zeroizing::new(Vec::with_capacity(MAX_DATA_LEN));
        data.push(VERSION_2);
        data.extend_from_slice(self.key.as_bytes());
        data.extend_from_slice(self.relay_key.as_bytes());
        match &self.token {
            None => data.push(0),
            Some(token) => {
                data.push(DELIVERY_TOKEN_LEN as u8);
                data.extend_from_slice(token.as_bytes());
            }
        }
        data.extend_from_slice(addr.as_bytes());
        // At most MAX_DATA_LEN bytes, well below the 1023-character code length.
        bech32::encode_lower_to_fmt::<Bech32m, _>(f, Hrp::parse_unchecked(HRP), &data)
            .map_err(|_| fmt::Error)
    }
}

impl FromStr for Invite {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let prefix = format!("{HRP}1");
        if !s
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
        {
            return Err(invalid(
                "not an invite: it should start with `sottoinvite1`",
            ));
        }
        let checked = CheckedHrpstring::new::<Bech32m>(s)
            .map_err(|_| invalid("the checksum does not match (a typo or a truncated copy?)"))?;
        if checked.hrp().to_lowercase() != HRP {
            return Err(invalid(
                "not an invite: it should start with `sottoinvite1`",
            ));
        }
        let data = Zeroizing::new(checked.byte_iter().collect::<Vec<u8>>());
        let (token, addr) = match data.first() {
            None => return Err(invalid("it is empty")),
            Some(&VERSION_1) => (None, data.get(KEYS_END..)),
            Some(&VERSION_2) => read_token(&data)?,
            Some(_) => {
                return Err(invalid(
                    "it was made by a newer version of sotto (unknown invite version)",
                ))
            }
        };
        let addr = addr
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid("it is too short"))?;
        if addr.len() > MAX_RELAY_ADDR_LEN {
            return Err(invalid("the relay address is too long"));
        }
        let key = PublicKey::from_slice(&data[1..1 + PUBLIC_KEY_LEN])
            .map_err(|_| invalid("the contact key is malformed"))?;
        let relay_key = PublicKey::from_slice(&data[1 + PUBLIC_KEY_LEN..KEYS_END])
            .map_err(|_| invalid("the relay key is malformed"))?;
        let addr = std::str::from_utf8(addr)
            .map_err(|_| invalid("the relay address is not UTF-8 text"))?;
        let relay = addr.parse::<RelayAddr>().map_err(|e| match e {
            Error::InvalidRelayAddr { reason } => {
                invalid(format!("its relay address is invalid: {reason}"))
            }
            other => invalid(other.to_string()),
        })?;
        Ok(Self {
            key,
            relay,
            relay_key: relay_key.into(),
            token,
        })
    }
}

/// The token of version-2 data, and the rest (the address), if long enough.
fn read_token(data: &[u8]) -> Result<(Option<DeliveryToken>, Option<&[u8]>), Error> {
    let Some(&len) = data.get(KEYS_END) else {
        return Err(invalid("it is too short"));
    };
    let start = KEYS_END + 1;
    match usize::from(len) {
        0 => Ok((None, data.get(start..))),
        DELIVERY_TOKEN_LEN => {
            let end = start + DELIVERY_TOKEN_LEN;
            let bytes: [u8; DELIVERY_TOKEN_LEN] = data
                .get(start..end)
                .and_then(|t| t.try_into().ok())
                .ok_or_else(|| invalid("it is too short"))?;
            Ok((Some(DeliveryToken::from_bytes(bytes)), data.get(end..)))
        }
        other => Err(invalid(format!(
            "its delivery token is {other} bytes; a token is {DELIVERY_TOKEN_LEN}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn example(token: Option<DeliveryToken>) -> Invite {
        Invite {
            key: PublicKey::from_bytes([1; 32]),
            relay: "relay.example.org:7300".parse().unwrap(),
            relay_key: RelayKey::from_bytes([2; 32]),
            token,
        }
    }

    /// Version 1, as `sotto id --invite` printed it before delivery tokens.
    const EXAMPLE_V1: &str = "sottoinvite1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszwfjkccte9ejhsctdwpkx2tn0wfnn5denxqcqaqfcps";

    const EXAMPLE_V2: &str = "sottoinvite1qgqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszzqpsxqcrqvpsxqcrqvpsxqcrqvphyetvv9ujuetcv9khqmr99ehhyee6xuenqvqvzpqpq";

    fn encode(data: &[u8]) -> String {
        bech32::encode::<Bech32m>(Hrp::parse_unchecked(HRP), data).unwrap()
    }

    #[test]
    fn known_answer_vectors() {
        // Quoted in the module documentation and docs/PROTOCOL.md.
        let v2 = example(Some(DeliveryToken::from_bytes([3; 16])));
        assert_eq!(v2.to_string(), EXAMPLE_V2);
        assert_eq!(EXAMPLE_V2.parse::<Invite>().unwrap(), v2);
        assert_eq!(EXAMPLE_V2.to_uppercase().parse::<Invite>().unwrap(), v2);
        // A version-1 invite still reads, to the same contact without a token.
        assert_eq!(EXAMPLE_V1.parse::<Invite>().unwrap(), example(None));
        assert_eq!(
            EXAMPLE_V1.to_uppercase().parse::<Invite>().unwrap(),
            example(None)
        );
    }

    #[test]
    fn writers_write_version_2_with_or_without_a_token() {
        for invite in [example(None), example(Some(DeliveryToken::generate()))] {
            let s = invite.to_string();
            let data: Vec<u8> = CheckedHrpstring::new::<Bech32m>(&s)
                .unwrap()
                .byte_iter()
                .collect();
            assert_eq!(data[0], VERSION_2);
            let n = usize::from(data[KEYS_END]);
            assert_eq!(n, if invite.token.is_some() { 16 } else { 0 });
            assert_eq!(&data[KEYS_END + 1 + n..], b"relay.example.org:7300");
            assert_eq!(s.parse::<Invite>().unwrap(), invite);
        }
    }

    #[test]
    fn the_longest_invite_is_as_long_as_documented() {
        let invite = Invite {
            relay: RelayAddr::new("a".repeat(253), 65535).unwrap(),
            ..example(Some(DeliveryToken::from_bytes([9; 16])))
        };
        // `[` host `]` is only for IPv6; a name's longest form is 253 + 6.
        let s = invite.to_string();
        assert!(s.len() <= MAX_INVITE_LEN, "{}", s.len());
        assert_eq!(MAX_INVITE_LEN, 567);
        let mut data = vec![VERSION_2];
        data.extend_from_slice(&[1; 64]);
        data.push(16);
        data.extend_from_slice(&[3; 16]);
        data.extend_from_slice(&[b'a'; MAX_RELAY_ADDR_LEN]);
        assert_eq!(encode(&data).len(), MAX_INVITE_LEN);
    }

    #[test]
    fn a_typo_is_caught_by_the_checksum() {
        let s = example(Some(DeliveryToken::from_bytes([3; 16]))).to_string();
        for i in [15, s.len() / 2, s.len() - 3] {
            let mut chars: Vec<char> = s.chars().collect();
            chars[i] = if chars[i] == 'q' { 'p' } else { 'q' };
            let typo: String = chars.into_iter().collect();
            let err = typo.parse::<Invite>().unwrap_err();
            assert!(err.to_string().contains("checksum"), "{err}");
        }
        let truncated = &s[..s.len() - 1];
        assert!(truncated.parse::<Invite>().is_err());
    }

    #[test]
    fn other_strings_are_refused_with_a_reason() {
        let key = PublicKey::from_bytes([1; 32]).to_string();
        let err = key.parse::<Invite>().unwrap_err();
        assert!(err.to_string().contains("not an invite"), "{err}");

        let mut good_v1 = vec![VERSION_1];
        good_v1.extend_from_slice(&[1; 64]);
        good_v1.extend_from_slice(b"relay:1");
        assert!(encode(&good_v1).parse::<Invite>().is_ok());
        let mut good_v2 = vec![VERSION_2];
        good_v2.extend_from_slice(&[1; 64]);
        good_v2.push(16);
        good_v2.extend_from_slice(&[3; 16]);
        good_v2.extend_from_slice(b"relay:1");
        assert!(encode(&good_v2).parse::<Invite>().unwrap().token.is_some());

        let with = |base: &[u8], tail: &[u8]| [base, tail].concat();
        let keys = &good_v2[..KEYS_END];
        let mut v3 = good_v2.clone();
        v3[0] = 3;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (v3, "newer version"),
            (good_v1[..KEYS_END].to_vec(), "too short"),
            (
                with(&good_v1[..KEYS_END], b"relay\x1b:1"),
                "relay address is invalid",
            ),
            (
                with(&good_v1[..KEYS_END], &[b'a'; MAX_RELAY_ADDR_LEN + 1]),
                "too long",
            ),
            (vec![0xff; 70], "newer version"),
            // Version 2: no length byte, a token cut short, no address after
            // it, a token of another length, a token and no address.
            (keys.to_vec(), "too short"),
            (with(keys, &[16, 3, 3, 3]), "too short"),
            (with(keys, &[0]), "too short"),
            (with(keys, &with(&[16], &[3; 16])), "too short"),
            (with(keys, &with(&[15], &[3; 15])), "15 bytes"),
            (with(keys, &with(&[32], &[3; 32])), "32 bytes"),
            (with(keys, b"\x07relay:1"), "7 bytes"),
            (
                with(keys, &with(&[0], &[0xc3, 0x28, b':', b'1'])),
                "not UTF-8",
            ),
        ];
        for (data, says) in cases {
            let err = encode(&data).parse::<Invite>().unwrap_err();
            assert!(matches!(err, Error::Invite { .. }), "{err}");
            assert!(err.to_string().contains(says), "{data:?}: {err}");
        }
    }

    fn invite_strategy() -> impl Strategy<Value = Invite> {
        let host = prop_oneof![
            "[a-z0-9][a-z0-9.-]{0,252}",
            any::<[u16; 8]>().prop_map(|b| std::net::Ipv6Addr::from(b).to_string()),
        ];
        let token = proptest::option::of(any::<[u8; 16]>().prop_map(DeliveryToken::from_bytes));
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            host,
            1u16..=u16::MAX,
            token,
        )
            .prop_map(|(k, r, h, p, token)| Invite {
                key: PublicKey::from_bytes(k),
                relay: RelayAddr::new(h, p).unwrap(),
                relay_key: RelayKey::from_bytes(r),
                token,
            })
    }

    proptest! {
        #[test]
        fn string_round_trip(invite in invite_strategy()) {
            let s = invite.to_string();
            prop_assert!(s.starts_with("sottoinvite1"));
            prop_assert!(s.len() <= MAX_INVITE_LEN);
            prop_assert_eq!(s.parse::<Invite>().unwrap(), invite);
        }

        #[test]
        fn a_version_1_invite_reads_as_the_same_contact_without_a_token(invite in invite_strategy()) {
            let mut data = vec![VERSION_1];
            data.extend_from_slice(invite.key.as_bytes());
            data.extend_from_slice(invite.relay_key.as_bytes());
            data.extend_from_slice(invite.relay.to_string().as_bytes());
            let read = encode(&data).parse::<Invite>().unwrap();
            prop_assert_eq!(read, Invite { token: None, ..invite });
        }

        #[test]
        fn parsing_never_panics(s in "sottoinvite1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{0,300}") {
            let _ = s.parse::<Invite>();
        }
    }
}
