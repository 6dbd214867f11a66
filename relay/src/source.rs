//! Where a connection comes from, as the per-address limits count it.
//!
//! An IPv4 address is one source. An IPv6 address is counted by its /64:
//! a single subscriber, even a single host, is routinely given a whole /64,
//! so counting IPv6 addresses one by one would let one machine appear as
//! 2^64 sources. An IPv4-mapped IPv6 address counts as the IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A source address: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(Inner);

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Inner {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        let v6 = match ip {
            IpAddr::V4(v4) => return Self(Inner::V4(v4.octets())),
            IpAddr::V6(v6) => v6,
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Self(Inner::V4(v4.octets()));
        }
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&v6.octets()[..8]);
        Self(Inner::V6Prefix(prefix))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Inner::V4(o) => Ipv4Addr::from(o).fmt(f),
            Inner::V6Prefix(p) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(&p);
                write!(f, "{}/64", Ipv6Addr::from(o))
            }
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(s: &str) -> Source {
        Source::from(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.7"), source("192.0.2.7"));
        assert_ne!(source("192.0.2.7"), source("192.0.2.8"));
        assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(source("127.0.0.2").to_string(), "127.0.0.2");
    }
}
