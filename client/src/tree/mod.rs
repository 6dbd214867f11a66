//! A directory sent as one file: a manifest of its entries, then their
//! contents, back to back, in one stream that is sealed and uploaded like
//! any file.
//!
//! Why one stream and not a blob per file: the relay then sees one blob of
//! one size, not how many files a tree holds or how large each is; the
//! tree counts once against the recipient's file quota, however many files
//! it holds; and the upload, its resumption and the download are the ones
//! a single file has, already tested against a hostile relay. The offer's
//! BLAKE3 hash covers the whole stream, manifest included, so nothing of a
//! tree is unpacked before all of it has been verified.
//!
//! The stream (PROTOCOL §9.9):
//!
//! ```text
//! magic "sotto tree v1\0\0\0" (16) | manifest length (u32 BE) | manifest | zeros
//!     up to the header's length: the smallest power of two, at least 4 KiB,
//!     that holds the above (so names' lengths do not show in the blob's size)
//! then the contents of each file entry, in the manifest's order
//! ```
//!
//! The manifest is the postcard list of [`Entry`]: a path (its components,
//! relative to the top directory, whose name is the offer's) and a kind
//! (directory, or file with its size). Directories are listed too, so empty
//! ones arrive; parents of an entry are implied.
//!
//! - [`scan`]: the sender's side: walking a directory without following links;
//! - [`source`]: reading the stream from the files as it is uploaded;
//! - [`plan`]: the receiver's check of a manifest a hostile sender wrote;
//! - [`unpack`]: writing a verified stream out under the chosen directory.

pub mod plan;
pub mod scan;
pub mod source;
pub mod unpack;

use serde::{Deserialize, Serialize};

/// The stream's first 16 bytes.
pub const MAGIC: &[u8; 16] = b"sotto tree v1\0\0\0";
/// Most entries (files and directories) in one tree, on both sides.
pub const MAX_ENTRIES: usize = 100_000;
/// Most components in one entry's path: the deepest a tree may go.
pub const MAX_DEPTH: usize = 64;
/// Longest manifest accepted, in bytes (100,000 entries of long names fit).
pub const MAX_MANIFEST_LEN: u32 = 32 << 20;
/// Longest path component a sender may name, in bytes (Linux's NAME_MAX).
pub const MAX_COMPONENT_LEN: usize = 255;
/// The header is padded to a power of two, at least this long.
const MIN_HEADER_LEN: u64 = 4096;
/// Magic and length.
pub(crate) const PREFIX_LEN: u64 = 20;

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its path below the top directory, one string per component.
    pub path: Vec<String>,
    /// What it is.
    pub kind: EntryKind,
}

/// A directory or a file: nothing else is sent (links are never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory (perhaps empty).
    Dir,
    /// A regular file of `size` bytes, whose contents follow in the stream.
    File {
        /// Its size in bytes.
        size: u64,
    },
}

/// The header's length for a manifest of `manifest_len` bytes.
pub fn header_len(manifest_len: u64) -> u64 {
    (PREFIX_LEN + manifest_len)
        .max(MIN_HEADER_LEN)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
}

/// The header of a stream carrying `entries`: magic, length, manifest and
/// padding. `None` if the manifest would be longer than [`MAX_MANIFEST_LEN`].
pub fn encode_header(entries: &[Entry]) -> Option<Vec<u8>> {
    let manifest = postcard::to_stdvec(entries).ok()?;
    let len = u32::try_from(manifest.len())
        .ok()
        .filter(|&l| l <= MAX_MANIFEST_LEN)?;
    let total = usize::try_from(header_len(u64::from(len))).ok()?;
    let mut header = Vec::with_capacity(total);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&manifest);
    header.resize(total, 0);
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_padded_to_a_power_of_two() {
        assert_eq!(header_len(0), 4096);
        assert_eq!(header_len(4076), 4096);
        assert_eq!(header_len(4077), 8192);
        let entries = vec![
            Entry {
                path: vec!["a".into()],
                kind: EntryKind::Dir,
            },
            Entry {
                path: vec!["a".into(), "b.txt".into()],
                kind: EntryKind::File { size: 3 },
            },
        ];
        let header = encode_header(&entries).unwrap();
        assert_eq!(header.len(), 4096);
        assert_eq!(&header[..16], MAGIC);
        let len = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        let decoded: Vec<Entry> = postcard::from_bytes(&header[20..20 + len]).unwrap();
        assert_eq!(decoded, entries);
        assert!(header[20 + len..].iter().all(|&b| b == 0));
    }
}

#[cfg(test)]
mod round_trip;
