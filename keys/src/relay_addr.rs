//! Relay addresses: `host:port`.
//!
//! A relay address is typed by people, stored in `contacts.toml` and
//! `config.toml`, and carried inside invites, so it is validated once, here,
//! into a type that is known to be printable and connectable:
//!
//! - `host:port`, where host is a DNS name or an IPv4 address, or
//!   `[v6]:port` for an IPv6 address (the brackets are not part of [`RelayAddr::host`]);
//! - the host is 1 to 253 bytes of printable ASCII without whitespace, `/`,
//!   `@`, `[`, `]` or (outside brackets) `:`. Printable ASCII only, so that an
//!   address received in an invite cannot carry terminal escapes or look-alike
//!   characters; international names are written in their `xn--` form;
//! - the port is 1 to 65535, in decimal.
//!
//! [`RelayAddr::host`] and [`RelayAddr::port`] can be given as they are to
//! `TcpStream::connect((host, port))`, which resolves names and accepts a bare
//! IPv6 literal.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Longest host name accepted, in bytes (the DNS limit).
pub const MAX_HOST_LEN: usize = 253;

/// Longest text form of a [`RelayAddr`], in bytes: a 253-byte host in
/// brackets, a colon and a five-digit port.
pub const MAX_RELAY_ADDR_LEN: usize = MAX_HOST_LEN + 2 + 1 + 5;

/// The network address of a relay.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayAddr {
    host: String,
    port: u16,
}

fn invalid(reason: &str) -> Error {
    Error::InvalidRelayAddr {
        reason: reason.to_owned(),
    }
}

impl RelayAddr {
    /// Builds an address from a host (a name, an IPv4 address or a bare IPv6
    /// address without brackets) and a port, validating both.
    pub fn new(host: impl Into<String>, port: u16) -> Result<Self, Error> {
        let host = host.into();
        if port == 0 {
            return Err(invalid("the port must be between 1 and 65535"));
        }
        if host.contains(':') {
            host.parse::<Ipv6Addr>()
                .map_err(|_| invalid("a host with `:` must be an IPv6 address"))?;
        } else {
            check_host(&host)?;
        }
        Ok(Self { host, port })
    }

    /// The host: a DNS name, an IPv4 address, or an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn check_host(host: &str) -> Result<(), Error> {
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(invalid("the host is longer than 253 bytes"));
    }
    for c in host.chars() {
        if c.is_whitespace() || c.is_control() {
            return Err(invalid(
                "the host contains whitespace or a control character",
            ));
        }
        if !c.is_ascii() {
            return Err(invalid(
                "the host contains a non-ASCII character (write international names in their xn-- form)",
            ));
        }
        if matches!(c, '/' | '@' | '[' | ']' | ':') {
            return Err(invalid(
                "the host contains `/`, `@`, `[`, `]` or `:` (give only HOST:PORT, no URL)",
            ));
        }
    }
    Ok(())
}

fn parse_port(s: &str) -> Result<u16, Error> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("the port must be a number between 1 and 65535"));
    }
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid("the port must be a number between 1 and 65535")),
    }
}

impl FromStr for RelayAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix('[') {
            let (v6, port) = rest
                .split_once("]:")
                .ok_or_else(|| invalid("an IPv6 address is written [ADDRESS]:PORT"))?;
            let port = parse_port(port)?;
            v6.parse::<Ipv6Addr>()
                .map_err(|_| invalid("the part in brackets is not an IPv6 address"))?;
            return Ok(Self {
                host: v6.to_owned(),
                port,
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| invalid("the port is missing"))?;
        if host.contains(':') {
            return Err(invalid(
                "an IPv6 address must be in brackets: [ADDRESS]:PORT",
            ));
        }
        let port = parse_port(port)?;
        check_host(host)?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayAddr({self})")
    }
}

impl Serialize for RelayAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RelayAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_addresses_parse_and_print_back() {
        for s in [
            "relay.example.org:7300",
            "127.0.0.1:1",
            "[::1]:7300",
            "a:65535",
        ] {
            let addr: RelayAddr = s.parse().unwrap();
            assert_eq!(addr.to_string(), s);
        }
        let v6: RelayAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(v6.host(), "2001:db8::1");
        assert_eq!(v6.port(), 443);
        assert_eq!(
            RelayAddr::new("::1", 7300).unwrap().to_string(),
            "[::1]:7300"
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for s in [
            "",
            "relay.example.org",
            ":7300",
            "relay:0",
            "relay:65536",
            "relay:+80",
            "relay:http",
            "::1:7300",
            "[::1]7300",
            "[not-v6]:7300",
            "user@relay:7300",
            "https://relay:7300",
            "re lay:7300",
            "relay\u{1b}[31m:7300",
            "rélay:7300",
        ] {
            assert!(
                matches!(s.parse::<RelayAddr>(), Err(Error::InvalidRelayAddr { .. })),
                "{s:?} was accepted"
            );
        }
        let long = format!("{}:1", "a".repeat(254));
        assert!(long.parse::<RelayAddr>().is_err());
        let longest = format!("{}:1", "a".repeat(253));
        assert!(longest.parse::<RelayAddr>().is_ok());
        assert!(RelayAddr::new("relay", 0).is_err());
        assert!(RelayAddr::new("not:v6", 1).is_err());
    }

    #[test]
    fn serde_uses_the_string_form() {
        #[derive(Serialize, Deserialize)]
        struct C {
            relay: RelayAddr,
        }
        let c: C = toml::from_str("relay = \"[::1]:7300\"").unwrap();
        assert_eq!(c.relay.host(), "::1");
        assert_eq!(toml::to_string(&c).unwrap(), "relay = \"[::1]:7300\"\n");
        assert!(toml::from_str::<C>("relay = \"nope\"").is_err());
    }

    fn addr_strategy() -> impl Strategy<Value = RelayAddr> {
        let name = "[a-z0-9][a-z0-9.-]{0,40}";
        let v4 = any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string());
        let v6 = any::<[u16; 8]>().prop_map(|b| Ipv6Addr::from(b).to_string());
        (prop_oneof![name, v4, v6], 1u16..=u16::MAX)
            .prop_map(|(h, p)| RelayAddr::new(h, p).unwrap())
    }

    proptest! {
        #[test]
        fn string_round_trip(addr in addr_strategy()) {
            let s = addr.to_string();
            prop_assert!(s.len() <= MAX_RELAY_ADDR_LEN);
            prop_assert_eq!(s.parse::<RelayAddr>().unwrap(), addr);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<RelayAddr>();
        }
    }
}
