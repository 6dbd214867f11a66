//! Reading `history.log`, the plaintext history of sotto before it was
//! sealed, so it can be sealed and removed.
//!
//! Its layout: records of a 4-byte little-endian length then the postcard
//! encoding of an [`Entry`], one after the other, nothing else. A crash could
//! leave a torn last record, ignored as the old reader did; a record that
//! does not decode is skipped.

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::Path;

use super::Entry;

/// Largest record the old writer could have produced and reader accepted.
const MAX_RECORD_LEN: usize = 1 << 20;

/// The entries of the plaintext history at `path`; `None` if there is none.
pub fn read(path: &Path) -> io::Result<Option<Vec<Entry>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    decode(BufReader::new(file)).map(Some)
}

fn decode(mut reader: impl Read) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD_LEN {
            return Ok(out);
        }
        buf.resize(len, 0);
        match reader.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        if let Ok(entry) = postcard::from_bytes::<Entry>(&buf) {
            out.push(entry);
        }
    }
}

/// Test support: the plaintext layout, as the old writer produced it.
#[cfg(test)]
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let bytes = postcard::to_stdvec(e).unwrap();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Direction;

    #[test]
    fn old_records_decode_up_to_a_torn_one() {
        let e = |t: &str| Entry {
            at_ms: 5,
            direction: Direction::Received,
            peer: None,
            group: Some("g".into()),
            text: t.into(),
        };
        let mut bytes = encode(&[e("one"), e("two")]);
        assert_eq!(decode(&bytes[..]).unwrap(), vec![e("one"), e("two")]);
        bytes.truncate(bytes.len() - 1);
        assert_eq!(decode(&bytes[..]).unwrap(), vec![e("one")]);
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"xx");
        assert!(decode(&huge[..]).unwrap().is_empty());
    }
}
