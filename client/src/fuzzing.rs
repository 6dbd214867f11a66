//! Entry points for the fuzz targets (`fuzz/`) and their regression tests:
//! the decoders of the client's own sealed files (`offers.sealed`,
//! `history.sealed`), past their AEAD, which random bytes never get through;
//! and the reading of a received tree's manifest, which a hostile sender
//! writes (past the offer's hash, which the sender computes).
//! Hidden from the documentation: nothing here is for use by the product.

use crate::offers::StoredOffer;

/// The offers in an opened `offers.sealed`, and that list encoded again.
pub fn offers(plain: &[u8]) -> Option<(Vec<StoredOffer>, Vec<u8>)> {
    let list = crate::offers::decode_list(plain)?;
    let again = postcard::to_stdvec(&list).ok()?;
    Some((list, again))
}

/// A history entry's plaintext: decoded and encoded again.
pub fn history_entry(plain: &[u8]) -> Option<Vec<u8>> {
    crate::history::fuzzing::entry(plain).map(|(_, again)| again)
}

/// The record framing of a `history.sealed` file: where its whole records
/// end, the length of its tail, and how many records it holds.
pub fn history_scan(file: &[u8]) -> Option<(u64, u64, usize)> {
    crate::history::fuzzing::scan(file)
}

/// A received tree's stream: the cleaned paths of the entries its manifest
/// lists, if the tree is accepted.
pub fn tree_plan(stream: &[u8]) -> Option<Vec<Vec<String>>> {
    let mut r = stream;
    let plan = crate::tree::plan::read_plan(&mut r, stream.len() as u64).ok()?;
    Some(plan.entries.into_iter().map(|e| e.path).collect())
}
