//! Invites: everything a new contact needs, in one string to paste.
//!
//! Adding a contact takes their key, the relay they read from, and that
//! relay's key (which the client pins). Three strings pasted separately invite
//! mix-ups; an invite bundles them under one checksum, so a typo or a truncated
//! copy is caught as a whole.
//!
//! # Format (version 1)
//!
//! bech32m (BIP 350), lower case, human-readable part `sottoinvite`, data:
//!
//! | offset | length | field |
//! | ---: | ---: | --- |
//! | 0 | 1 | version, `0x01` |
//! | 1 | 32 | the contact's X25519 public key |
//! | 33 | 32 | the relay's X25519 public key |
//! | 65 | 1..=261 | the relay address `host:port` (`[v6]:port` for IPv6), UTF-8 |
//!
//! The address takes the rest of the data and must itself be a valid
//! [`RelayAddr`]; 261 bytes is the longest one can be. The string is longer
//! than BIP 173's 90 characters; the checksum is used up to its code length of
//! 1023 characters (as the `bech32` crate does), which a maximal invite
//! (at most 540 characters) stays well within. Readers accept all-upper-case
//! strings too (QR codes favour them).
//!
//! # Test vector
//!
//! Contact key 32 bytes `0x01`, relay key 32 bytes `0x02`, relay
//! `relay.example.org:7300` (see the tests):
//!
//! ```text
//! sottoinvite1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszwfjkccte9ejhsctdwpkx2tn0wfnn5denxqcqaqfcps
//! ```

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};

use crate::error::Error;
use crate::public::{PublicKey, RelayKey, PUBLIC_KEY_LEN};
use crate::relay_addr::{RelayAddr, MAX_RELAY_ADDR_LEN};

const HRP: &str = "sottoinvite";
const VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 2 * PUBLIC_KEY_LEN;

/// A contact's key with the relay to reach them through and that relay's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The contact's public key.
    pub key: PublicKey,
    /// The relay the contact reads from.
    pub relay: RelayAddr,
    /// The relay's public key, to pin.
    pub relay_key: RelayKey,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Invite {
        reason: reason.into(),
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.relay.to_string();
        let mut data = Vec::with_capacity(FIXED_LEN + addr.len());
        data.push(VERSION);
        data.extend_from_slice(self.key.as_bytes());
        data.extend_from_slice(self.relay_key.as_bytes());
        data.extend_from_slice(addr.as_bytes());
        // At most 326 bytes of data, well below the 1023-character code length.
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
        let data: Vec<u8> = checked.byte_iter().collect();
        match data.first() {
            None => return Err(invalid("it is empty")),
            Some(&VERSION) => {}
            Some(_) => {
                return Err(invalid(
                    "it was made by a newer version of sotto (unknown invite version)",
                ))
            }
        }
        if data.len() <= FIXED_LEN {
            return Err(invalid("it is too short"));
        }
        let addr = &data[FIXED_LEN..];
        if addr.len() > MAX_RELAY_ADDR_LEN {
            return Err(invalid("the relay address is too long"));
        }
        let key = PublicKey::from_slice(&data[1..1 + PUBLIC_KEY_LEN])
            .map_err(|_| invalid("the contact key is malformed"))?;
        let relay_key = PublicKey::from_slice(&data[1 + PUBLIC_KEY_LEN..FIXED_LEN])
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn example() -> Invite {
        Invite {
            key: PublicKey::from_bytes([1; 32]),
            relay: "relay.example.org:7300".parse().unwrap(),
            relay_key: RelayKey::from_bytes([2; 32]),
        }
    }

    const EXAMPLE: &str = "sottoinvite1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszwfjkccte9ejhsctdwpkx2tn0wfnn5denxqcqaqfcps";

    #[test]
    fn known_answer_vector() {
        // Quoted in the module documentation and docs/PROTOCOL.md.
        assert_eq!(example().to_string(), EXAMPLE);
        assert_eq!(EXAMPLE.parse::<Invite>().unwrap(), example());
        assert_eq!(EXAMPLE.to_uppercase().parse::<Invite>().unwrap(), example());
    }

    #[test]
    fn a_typo_is_caught_by_the_checksum() {
        let s = example().to_string();
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

        let encode =
            |data: &[u8]| bech32::encode::<Bech32m>(Hrp::parse_unchecked(HRP), data).unwrap();
        let mut good = vec![VERSION];
        good.extend_from_slice(&[1; 64]);
        good.extend_from_slice(b"relay:1");
        assert!(encode(&good).parse::<Invite>().is_ok());

        let mut v2 = good.clone();
        v2[0] = 2;
        let mut bad_addr = good[..FIXED_LEN].to_vec();
        bad_addr.extend_from_slice(b"relay\x1b:1");
        let mut long_addr = good[..FIXED_LEN].to_vec();
        long_addr.extend_from_slice(&vec![b'a'; MAX_RELAY_ADDR_LEN + 1]);
        for data in [
            &[][..],
            &v2[..],
            &good[..FIXED_LEN],
            &bad_addr[..],
            &long_addr[..],
            &[0xff; 70][..],
        ] {
            let err = encode(data).parse::<Invite>().unwrap_err();
            assert!(matches!(err, Error::Invite { .. }), "{err}");
        }
    }

    fn invite_strategy() -> impl Strategy<Value = Invite> {
        let host = prop_oneof![
            "[a-z0-9][a-z0-9.-]{0,252}",
            any::<[u16; 8]>().prop_map(|b| std::net::Ipv6Addr::from(b).to_string()),
        ];
        (any::<[u8; 32]>(), any::<[u8; 32]>(), host, 1u16..=u16::MAX).prop_map(|(k, r, h, p)| {
            Invite {
                key: PublicKey::from_bytes(k),
                relay: RelayAddr::new(h, p).unwrap(),
                relay_key: RelayKey::from_bytes(r),
            }
        })
    }

    proptest! {
        #[test]
        fn string_round_trip(invite in invite_strategy()) {
            let s = invite.to_string();
            prop_assert!(s.starts_with("sottoinvite1"));
            prop_assert_eq!(s.parse::<Invite>().unwrap(), invite);
        }

        #[test]
        fn parsing_never_panics(s in "sottoinvite1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{0,300}") {
            let _ = s.parse::<Invite>();
        }
    }
}
