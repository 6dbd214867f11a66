//! The short code of a pairing: `7-revenge-guitarist`.
//!
//! The number is the rendezvous slot the relay gave the inviter (public: the
//! relay knows it); the two words are 16 random bits, one byte each through
//! the PGP word list, whose even and odd columns were chosen so that words
//! are hard to mishear or confuse. The whole code, written canonically (lower
//! case, one `-` between parts), is the PAKE's password: an attacker who does
//! not know the words has one try in 65,536 per slot, and a slot takes one try.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::PairingError;

const WORDS: &str = include_str!("pgp-words.txt");

/// Largest slot number a code may name (the relay gives small ones; the
/// bound keeps a typo from becoming an arbitrary integer).
pub const MAX_SLOT: u32 = 999_999;

/// The word list: for each byte, its even word and its odd word.
fn words() -> &'static [(&'static str, &'static str)] {
    static TABLE: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        WORDS
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once(' '))
            .collect()
    })
}

/// A pairing code. The words are the secret: zeroized on drop, never in
/// `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Code {
    slot: u32,
    words: [u8; 2],
}

impl Code {
    /// A fresh code for `slot`, its words drawn from the OS's random source.
    pub fn random(slot: u32) -> Self {
        let mut words = [0u8; 2];
        OsRng.fill_bytes(&mut words);
        Self { slot, words }
    }

    /// The code of `slot` and the two word indices (the vectors' seam).
    pub fn from_parts(slot: u32, words: [u8; 2]) -> Self {
        Self { slot, words }
    }

    /// The rendezvous slot the code names.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The PAKE password: the canonical text of the code.
    pub(crate) fn password(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.to_string().into_bytes())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = words();
        let even = table.get(usize::from(self.words[0])).map_or("?", |w| w.0);
        let odd = table.get(usize::from(self.words[1])).map_or("?", |w| w.1);
        write!(f, "{}-{even}-{odd}", self.slot)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({}-…)", self.slot)
    }
}

impl FromStr for Code {
    type Err = PairingError;

    /// Reads a code as people type it: any case, spaces around it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| PairingError::BadCode(why.to_owned());
        let s = Zeroizing::new(s.trim().to_ascii_lowercase());
        let mut parts = s.split('-');
        let (Some(slot), Some(even), Some(odd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "a code is a number and two words, like 7-revenge-guitarist",
            ));
        };
        let slot: u32 = slot
            .parse()
            .ok()
            .filter(|n| *n <= MAX_SLOT)
            .ok_or_else(|| bad("a code starts with the slot number, like 7-revenge-guitarist"))?;
        let table = words();
        let first = table
            .iter()
            .position(|w| w.0 == even)
            .ok_or_else(|| bad("its first word is not one a code is made of (a typo?)"))?;
        let second = table
            .iter()
            .position(|w| w.1 == odd)
            .ok_or_else(|| bad("its second word is not one a code is made of (a typo?)"))?;
        Ok(Self {
            slot,
            // Positions in a 256-line table.
            words: [first as u8, second as u8],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_list_has_256_distinct_pairs() {
        let table = words();
        assert_eq!(table.len(), 256);
        let mut all: Vec<&str> = table.iter().flat_map(|w| [w.0, w.1]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 512);
        assert_eq!(table[0xa9].0, "revenge");
        assert_eq!(table[0x69].1, "guitarist");
    }

    #[test]
    fn codes_round_trip_and_read_as_typed() {
        let code = Code::from_parts(7, [0xa9, 0x69]);
        assert_eq!(code.to_string(), "7-revenge-guitarist");
        let read: Code = "  7-Revenge-GUITARIST\n".parse().unwrap();
        assert_eq!(read.to_string(), "7-revenge-guitarist");
        assert_eq!(read.slot(), 7);
        for _ in 0..50 {
            let c = Code::random(42);
            assert_eq!(
                c.to_string().parse::<Code>().unwrap().to_string(),
                c.to_string()
            );
        }
        assert!(!format!("{code:?}").contains("revenge"));
    }

    #[test]
    fn malformed_codes_are_refused_with_a_reason() {
        for bad in [
            "",
            "7",
            "7-revenge",
            "seven-revenge-guitarist",
            "7-guitarist-revenge", // columns swapped
            "7-revenge-guitarist-x",
            "-1-revenge-guitarist",
            "1000000-revenge-guitarist",
        ] {
            assert!(bad.parse::<Code>().is_err(), "{bad}");
        }
    }
}
