//! Entry points for the fuzz targets (`fuzz/`) and their regression tests.
//!
//! The decoders of untrusted bytes that the public API only reaches through a
//! successful decryption (the padded plaintext of an envelope, the message
//! framing inside the link's records) are exposed here so that arbitrary
//! bytes can reach them directly. Hidden from the documentation: nothing here
//! is for use by the product.

use crate::envelope::{self, Body};
use crate::error::{EnvelopeError, LinkError};
use crate::link::{LinkReader, LinkWriter};
use tokio::io::{AsyncRead, AsyncWrite};

/// The body length inside a padded plaintext (`u32 LE length | body | zeros`),
/// as every envelope kind checks it.
pub fn unpad(padded: &[u8]) -> Result<&[u8], EnvelopeError> {
    envelope::unpad(padded)
}

/// A postcard [`Body`], trailing bytes refused, as every envelope kind decodes it.
pub fn decode_body(bytes: &[u8]) -> Result<Body, EnvelopeError> {
    envelope::decode_body(bytes)
}

/// The padded plaintext of `body`, as a sender builds it.
pub fn pad(body: &Body) -> Result<Vec<u8>, EnvelopeError> {
    envelope::pad(body)
}

/// A link writer whose records `LinkReader` reads back, over in-memory I/O:
/// what arrives after a handshake, without one (see `link::loopback`).
pub fn link_loopback<R: AsyncRead + Unpin, W: AsyncWrite>(
    r: R,
    w: W,
) -> Result<(LinkReader<R>, LinkWriter<W>), LinkError> {
    crate::link::loopback(r, w)
}
