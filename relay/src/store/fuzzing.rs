//! Entry points for the fuzz targets (`fuzz/`) and their regression tests:
//! each stored value's decoder on arbitrary bytes, answering with the value
//! encoded again (`None` where the decoder refused the bytes), so a caller can
//! check that what is accepted is exactly what this code writes. Hidden from
//! the documentation: nothing here is for use by the product.

use super::codec::{self, BlobUsage, ExpiryEntry, Usage};

/// A `MESSAGES` value.
pub fn message(bytes: &[u8]) -> Option<Vec<u8>> {
    let (received_at, envelope) = codec::decode_message(bytes).ok()?;
    Some(codec::encode_message(received_at, envelope))
}

/// A `USAGE` value.
pub fn usage(bytes: &[u8]) -> Option<Vec<u8>> {
    Usage::decode(bytes).ok().map(|u| u.encode().to_vec())
}

/// A `BLOB_USAGE` value.
pub fn blob_usage(bytes: &[u8]) -> Option<Vec<u8>> {
    BlobUsage::decode(bytes).ok().map(|u| u.encode().to_vec())
}

/// A `BLOBS` value.
pub fn blob(bytes: &[u8]) -> Option<Vec<u8>> {
    codec::decode_blob(bytes)
        .ok()
        .map(|meta| codec::encode_blob(&meta).to_vec())
}

/// An `EXPIRY` value.
pub fn expiry(bytes: &[u8]) -> Option<Vec<u8>> {
    ExpiryEntry::decode(bytes).ok().map(|e| e.encode().to_vec())
}

/// A `META` value that holds one `u64` (the next id, the format version).
pub fn meta_u64(bytes: &[u8]) -> Option<Vec<u8>> {
    codec::decode_u64("meta", bytes)
        .ok()
        .map(|v| v.to_be_bytes().to_vec())
}
