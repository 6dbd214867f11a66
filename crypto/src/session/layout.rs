//! The bytes of session envelopes (kinds 2, 3 and 4), built and parsed.
//!
//! Parsing checks every length against the layout before anything is
//! decrypted or allocated; what it returns borrows from the envelope.

use super::noise::{MSG1_OVERHEAD, MSG2_LEN};
use super::transport::{Nonce, NONCE_LEN, TAG_LEN};
use super::{SessionId, INIT_IDS_LEN, MAX_INIT_BUCKET};
use crate::envelope::{
    BUCKETS, ENVELOPE_VERSION, KIND_SESSION_ACCEPT, KIND_SESSION_INIT, KIND_SESSION_MESSAGE,
};
use crate::error::EnvelopeError;

const HEADER_LEN: usize = 2;
const ID_LEN: usize = 16;
const TIME_LEN: usize = 8;
const MAX_NOISE_MSG: usize = 65_535;

/// Where message 1 starts in a kind 2 envelope.
pub(crate) const INIT_MSG1_AT: usize = HEADER_LEN + ID_LEN + TIME_LEN;
/// Where the nonce starts in a kind 3 envelope; the bytes before it are the
/// transport message's associated data.
pub(crate) const ACCEPT_NONCE_AT: usize = HEADER_LEN + ID_LEN + MSG2_LEN;
/// Where the transport ciphertext starts in a kind 3 envelope.
pub(crate) const ACCEPT_CIPHERTEXT_AT: usize = ACCEPT_NONCE_AT + NONCE_LEN;
/// Where the nonce starts in a kind 4 envelope; the bytes before it are the
/// transport message's associated data.
pub(crate) const MESSAGE_NONCE_AT: usize = HEADER_LEN + ID_LEN;
/// Where the transport ciphertext starts in a kind 4 envelope.
pub(crate) const MESSAGE_CIPHERTEXT_AT: usize = MESSAGE_NONCE_AT + NONCE_LEN;

/// A parsed kind 2 envelope.
pub(crate) struct Init<'a> {
    pub(crate) id: SessionId,
    pub(crate) created_at_ms: u64,
    pub(crate) msg1: &'a [u8],
}

/// A parsed kind 3 envelope.
pub(crate) struct Accept<'a> {
    pub(crate) id: SessionId,
    pub(crate) msg2: &'a [u8; MSG2_LEN],
    pub(crate) transport: Transport<'a>,
}

/// A parsed kind 4 envelope.
pub(crate) struct Message<'a> {
    pub(crate) id: SessionId,
    pub(crate) transport: Transport<'a>,
}

/// The transport message of a kind 3 or 4 envelope.
pub(crate) struct Transport<'a> {
    /// The envelope's bytes before the nonce, bound into the AEAD.
    pub(crate) ad: &'a [u8],
    pub(crate) nonce: &'a Nonce,
    pub(crate) ciphertext: &'a [u8],
}

/// Whether `len` bytes of Noise ciphertext can hold one padded plaintext after
/// `overhead` bytes of Noise: the padded length must be one of the buckets.
fn holds_a_bucket(len: usize, overhead: usize) -> bool {
    len <= MAX_NOISE_MSG
        && len
            .checked_sub(overhead)
            .is_some_and(|p| BUCKETS.contains(&p))
}

fn header(kind: u8, id: &SessionId, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&[ENVELOPE_VERSION, kind]);
    out.extend_from_slice(&id.0);
    out
}

fn split_id(rest: &[u8]) -> Result<(SessionId, &[u8]), EnvelopeError> {
    let (id, rest) = rest
        .split_first_chunk::<ID_LEN>()
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    Ok((SessionId(*id), rest))
}

fn split_u64(rest: &[u8]) -> Result<(u64, &[u8]), EnvelopeError> {
    let (n, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    Ok((u64::from_le_bytes(*n), rest))
}

/// `01 02 | session id (16) | created_at_ms (u64 LE) | message 1`.
pub(crate) fn init(id: &SessionId, created_at_ms: u64, msg1: &[u8]) -> Vec<u8> {
    let mut out = header(KIND_SESSION_INIT, id, INIT_MSG1_AT + msg1.len());
    out.extend_from_slice(&created_at_ms.to_le_bytes());
    out.extend_from_slice(msg1);
    out
}

/// `01 03 | session id (16) | message 2 (48)`: a kind 3 envelope up to its
/// nonce, and the associated data of its transport message.
pub(crate) fn accept_head(id: &SessionId, msg2: &[u8; MSG2_LEN], capacity: usize) -> Vec<u8> {
    let mut out = header(KIND_SESSION_ACCEPT, id, ACCEPT_CIPHERTEXT_AT + capacity);
    out.extend_from_slice(msg2);
    out
}

/// `01 04 | session id (16)`: a kind 4 envelope up to its nonce, and the
/// associated data of its transport message.
pub(crate) fn message_head(id: &SessionId, capacity: usize) -> Vec<u8> {
    header(KIND_SESSION_MESSAGE, id, MESSAGE_CIPHERTEXT_AT + capacity)
}

/// Completes a head with `nonce (24) | ciphertext`.
pub(crate) fn finish(mut head: Vec<u8>, nonce: &Nonce, ciphertext: &[u8]) -> Vec<u8> {
    head.extend_from_slice(nonce);
    head.extend_from_slice(ciphertext);
    head
}

/// Parses the part of a kind 2 envelope after its 2-byte header.
pub(crate) fn parse_init(rest: &[u8]) -> Result<Init<'_>, EnvelopeError> {
    let (id, rest) = split_id(rest)?;
    let (created_at_ms, msg1) = split_u64(rest)?;
    // The direction ids and a bucket up to MAX_INIT_BUCKET; or a bucket
    // alone, from a client of before direction ids.
    let with_ids = msg1.len().checked_sub(INIT_IDS_LEN).is_some_and(|len| {
        holds_a_bucket(len, MSG1_OVERHEAD) && len - MSG1_OVERHEAD <= MAX_INIT_BUCKET
    });
    if !with_ids && !holds_a_bucket(msg1.len(), MSG1_OVERHEAD) {
        return Err(EnvelopeError::Decrypt);
    }
    Ok(Init {
        id,
        created_at_ms,
        msg1,
    })
}

/// The transport message at `at` (its nonce) of a whole `envelope`.
fn transport_at(envelope: &[u8], at: usize) -> Result<Transport<'_>, EnvelopeError> {
    let (ad, rest) = envelope
        .split_at_checked(at)
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    let (nonce, ciphertext) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    if !holds_a_bucket(ciphertext.len(), TAG_LEN) {
        return Err(EnvelopeError::Decrypt);
    }
    Ok(Transport {
        ad,
        nonce,
        ciphertext,
    })
}

/// Parses a whole kind 3 envelope (its 2-byte header already checked).
pub(crate) fn parse_accept(envelope: &[u8]) -> Result<Accept<'_>, EnvelopeError> {
    let rest = envelope
        .get(HEADER_LEN..)
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    let (id, rest) = split_id(rest)?;
    let (msg2, _) = rest
        .split_first_chunk::<MSG2_LEN>()
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    Ok(Accept {
        id,
        msg2,
        transport: transport_at(envelope, ACCEPT_NONCE_AT)?,
    })
}

/// Parses a whole kind 4 envelope (its 2-byte header already checked).
pub(crate) fn parse_message(envelope: &[u8]) -> Result<Message<'_>, EnvelopeError> {
    let rest = envelope
        .get(HEADER_LEN..)
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    let (id, _) = split_id(rest)?;
    Ok(Message {
        id,
        transport: transport_at(envelope, MESSAGE_NONCE_AT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let id = SessionId([3; 16]);
        let msg1 = vec![7u8; MSG1_OVERHEAD + 256];
        let env = init(&id, 0x0102_0304_0506_0708, &msg1);
        assert_eq!(env.len(), INIT_MSG1_AT + msg1.len());
        assert_eq!(&env[..2], &[1, 2]);
        let p = parse_init(&env[2..]).unwrap();
        assert_eq!(
            (p.id, p.created_at_ms, p.msg1),
            (id, 0x0102_0304_0506_0708, &msg1[..])
        );

        let msg2 = [9u8; MSG2_LEN];
        let nonce = [4u8; NONCE_LEN];
        let ct = vec![5u8; 1024 + TAG_LEN];
        let env = finish(accept_head(&id, &msg2, ct.len()), &nonce, &ct);
        assert_eq!(env.len(), ACCEPT_CIPHERTEXT_AT + ct.len());
        assert_eq!(&env[..2], &[1, 3]);
        let p = parse_accept(&env).unwrap();
        assert_eq!((p.id, p.msg2), (id, &msg2));
        assert_eq!(
            (p.transport.ad, p.transport.nonce, p.transport.ciphertext),
            (&env[..ACCEPT_NONCE_AT], &nonce, &ct[..])
        );

        let env = finish(message_head(&id, ct.len()), &nonce, &ct);
        assert_eq!(&env[..2], &[1, 4]);
        let p = parse_message(&env).unwrap();
        assert_eq!(p.id, id);
        assert_eq!(
            (p.transport.ad, p.transport.nonce, p.transport.ciphertext),
            (&env[..MESSAGE_NONCE_AT], &nonce, &ct[..])
        );
    }

    #[test]
    fn lengths_off_a_bucket_are_refused_before_decrypting() {
        let id = SessionId([3; 16]);
        let nonce = [0u8; NONCE_LEN];
        let env = finish(message_head(&id, 0), &nonce, &[0u8; 256 + TAG_LEN + 1]);
        assert!(parse_message(&env).is_err());
        let env = finish(message_head(&id, 0), &nonce, &[0u8; 255 + TAG_LEN]);
        assert!(parse_message(&env).is_err());
        assert!(parse_message(&[1u8, 4].repeat(20)).is_err());
        assert!(parse_accept(&[0u8; ACCEPT_CIPHERTEXT_AT - 1]).is_err());
        assert!(parse_init(&[0u8; 23]).is_err());
    }
}
