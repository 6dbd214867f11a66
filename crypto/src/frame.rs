//! The record layer.
//!
//! On the TCP stream everything after the 8-byte preamble is a record: a
//! big-endian `u16` length followed by that many bytes, one Noise message. The
//! length field cannot express more than Noise's maximum message size (65,535),
//! and every reader also passes the maximum it accepts at that point of the
//! protocol (a few dozen bytes during the handshake), which is checked before a
//! single byte of the body is buffered.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::LinkError;

/// Noise's maximum message length, and so the largest record.
pub const MAX_RECORD_LEN: usize = 65_535;

/// Reads one record into `buf` (replacing its contents).
///
/// Returns `Ok(false)` on a clean end of stream before the first length byte,
/// so a peer that hangs up between records is told apart from one that hangs up
/// in the middle of one.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, LinkError> {
    let mut len = [0u8; 2];
    match r.read(&mut len[..1]).await? {
        0 => return Ok(false),
        _ => read_exact(r, &mut len[1..]).await?,
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len > max {
        return Err(LinkError::RecordTooLarge { len, max });
    }
    if len == 0 {
        return Err(LinkError::Malformed("empty record"));
    }
    buf.clear();
    buf.resize(len, 0);
    read_exact(r, buf).await?;
    Ok(true)
}

/// Writes one record. The caller flushes.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), LinkError> {
    let len = u16::try_from(body.len()).map_err(|_| LinkError::RecordTooLarge {
        len: body.len(),
        max: MAX_RECORD_LEN,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    Ok(())
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), LinkError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(LinkError::UnexpectedEof),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let mut wire = Vec::new();
        write_record(&mut wire, b"hello").await.unwrap();
        write_record(&mut wire, &[7u8; MAX_RECORD_LEN])
            .await
            .unwrap();
        let mut r = wire.as_slice();
        let mut buf = Vec::new();
        assert!(read_record(&mut r, &mut buf, MAX_RECORD_LEN).await.unwrap());
        assert_eq!(buf, b"hello");
        assert!(read_record(&mut r, &mut buf, MAX_RECORD_LEN).await.unwrap());
        assert_eq!(buf.len(), MAX_RECORD_LEN);
        assert!(!read_record(&mut r, &mut buf, MAX_RECORD_LEN).await.unwrap());
    }

    #[tokio::test]
    async fn oversized_record_is_refused_before_reading_its_body() {
        // Only the length is on the wire: had the reader tried to buffer the
        // body it would report an early EOF instead.
        let wire = 1000u16.to_be_bytes();
        let mut buf = Vec::new();
        let err = read_record(&mut wire.as_slice(), &mut buf, 64)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            LinkError::RecordTooLarge { len: 1000, max: 64 }
        ));
        assert!(buf.capacity() < 1000);
    }

    #[tokio::test]
    async fn truncated_record_is_an_unexpected_eof() {
        let wire = [0u8, 10, 1, 2, 3];
        let mut buf = Vec::new();
        let err = read_record(&mut wire.as_slice(), &mut buf, 64)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::UnexpectedEof));
        let err = read_record(&mut [0u8].as_slice(), &mut buf, 64)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::UnexpectedEof));
    }

    #[tokio::test]
    async fn empty_record_is_malformed() {
        let mut buf = Vec::new();
        let err = read_record(&mut [0u8, 0].as_slice(), &mut buf, 64)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Malformed(_)));
    }

    #[tokio::test]
    async fn write_refuses_more_than_a_noise_message() {
        let mut wire = Vec::new();
        let err = write_record(&mut wire, &vec![0u8; MAX_RECORD_LEN + 1])
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::RecordTooLarge { .. }));
        assert!(wire.is_empty());
    }
}
