//! Safety numbers: what two people compare to know they hold each other's key.
//!
//! A relay could hand out its own key in place of a contact's; comparing a
//! short number over another channel (in person, on a call) rules that out.
//! The construction follows Signal's numeric fingerprints: digits rather than
//! a key string so people can read them aloud, the same number on both sides,
//! and a hash iterated thousands of times so that finding a second key with a
//! matching fingerprint costs far more than a plain hash.
//!
//! # Construction (v1)
//!
//! For each public key `K` (its 32 raw bytes), with `H` = BLAKE2b-512:
//!
//! ```text
//! h_0     = H("sotto safety number v1" || K)      (the label is 22 ASCII bytes)
//! h_(i+1) = H(h_i || K)                          for i = 0 .. 5198
//! ```
//!
//! so `h_5199` is the result of 5200 hash invocations. Its first 30 bytes are
//! cut into six 5-byte chunks; each chunk, read as a big-endian 40-bit integer,
//! is reduced modulo 100000 and written as 5 decimal digits with leading zeros:
//! a 30-digit fingerprint per key.
//!
//! The safety number is the two fingerprints concatenated, the one of the key
//! whose bytes sort first (lexicographically) first: 60 digits, displayed as
//! 12 groups of 5 separated by single spaces.
//!
//! # Test vector
//!
//! For the keys of 32 bytes `0x01` and 32 bytes `0x02` (see the tests):
//!
//! ```text
//! 18141 06946 66526 91289 89893 06037 78997 98728 12337 09683 75276 96281
//! ```

use std::fmt;

use blake2::{Blake2b512, Digest};

use crate::public::PublicKey;

const LABEL: &[u8] = b"sotto safety number v1";
const ITERATIONS: usize = 5200;
const CHUNKS: usize = 6;
const CHUNK_LEN: usize = 5;
const DIGITS_PER_CHUNK: usize = 5;

/// The 60-digit number two contacts compare to verify each other's key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// The 60 digits without spaces.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.0.as_bytes().chunks(DIGITS_PER_CHUNK).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            // Only ASCII digits are ever stored.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

/// The safety number of two keys; the same whichever order they are given in.
pub fn safety_number(a: &PublicKey, b: &PublicKey) -> SafetyNumber {
    let (first, second) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut digits = fingerprint(first);
    digits.push_str(&fingerprint(second));
    SafetyNumber(digits)
}

/// The 30-digit fingerprint of one key.
fn fingerprint(key: &PublicKey) -> String {
    let mut hash = Blake2b512::new()
        .chain_update(LABEL)
        .chain_update(key.as_bytes())
        .finalize();
    for _ in 1..ITERATIONS {
        hash = Blake2b512::new()
            .chain_update(hash)
            .chain_update(key.as_bytes())
            .finalize();
    }
    let mut out = String::with_capacity(CHUNKS * DIGITS_PER_CHUNK);
    for chunk in hash[..CHUNKS * CHUNK_LEN].chunks(CHUNK_LEN) {
        let value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:05}", value % 100_000));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_whichever_side_computes_it() {
        let a = PublicKey::from_bytes([1; 32]);
        let b = PublicKey::from_bytes([2; 32]);
        assert_eq!(safety_number(&a, &b), safety_number(&b, &a));
    }

    #[test]
    fn different_pairs_differ() {
        let a = PublicKey::from_bytes([1; 32]);
        let b = PublicKey::from_bytes([2; 32]);
        let c = PublicKey::from_bytes([3; 32]);
        assert_ne!(safety_number(&a, &b), safety_number(&a, &c));
        assert_ne!(safety_number(&a, &b), safety_number(&b, &c));
    }

    #[test]
    fn shape_is_twelve_groups_of_five_digits() {
        let n = safety_number(
            &PublicKey::from_bytes([7; 32]),
            &PublicKey::from_bytes([9; 32]),
        );
        assert_eq!(n.digits().len(), 60);
        assert!(n.digits().bytes().all(|b| b.is_ascii_digit()));
        let shown = n.to_string();
        let groups: Vec<&str> = shown.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 5));
        assert_eq!(shown.replace(' ', ""), n.digits());
    }

    #[test]
    fn known_answer_vector() {
        // Quoted in the module documentation and docs/PROTOCOL.md.
        let n = safety_number(
            &PublicKey::from_bytes([1; 32]),
            &PublicKey::from_bytes([2; 32]),
        );
        assert_eq!(
            n.to_string(),
            "18141 06946 66526 91289 89893 06037 78997 98728 12337 09683 75276 96281"
        );
    }
}
