//! Messages on the client<->relay link.
//!
//! Encoded with postcard 1.x (a stable, documented format: varint integers,
//! enum variants as a varint index, byte strings as varint length + bytes), after
//! the link has decrypted them. Variants are only ever appended, so an old
//! decoder fails cleanly on a new variant instead of misreading it.
//!
//! Requests that expect an answer carry a `req` number chosen by the client; the
//! relay echoes it. The relay also pushes `Deliver` messages on its own once the
//! client has asked for its mailbox.
//!
//! Each link kind has its own client -> relay enum: [`ClientMsg`] on the owner
//! link (the client's key is proven: its mailbox, its files), [`DeliveryMsg`]
//! on the delivery link (no key is proven: deliveries only). Reading,
//! acknowledging, downloading and deleting are not variants of
//! `DeliveryMsg`, so a delivery link cannot even express them. The relay
//! answers both with [`RelayMsg`].

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sotto_keys::PublicKey;

pub use crate::delivery::{ResumeSecret, TokenHash};
use crate::file::FileId;
pub use sotto_keys::DeliveryToken;

/// The relay's handshake payload (in Noise message 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHello {
    /// Link protocol version.
    pub version: u16,
    /// Largest envelope the relay accepts, in bytes.
    pub max_envelope_len: u32,
}

/// The client's handshake payload (in Noise message 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Link protocol version.
    pub version: u16,
}

/// Client -> relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Store `envelope` in `to`'s mailbox. Answered by `Stored` once durable.
    Send {
        /// Request number, echoed.
        req: u32,
        /// Recipient.
        to: PublicKey,
        /// Sealed end-to-end envelope, opaque to the relay.
        envelope: ByteBuf,
    },
    /// Stream my mailbox: every pending `Deliver` in order, then `Drained`.
    /// With `live`, keep pushing new envelopes as they arrive.
    Fetch {
        /// Keep the subscription open after `Drained`.
        live: bool,
    },
    /// Delete delivered envelopes from my mailbox. Answered by `Acked`.
    Ack {
        /// Request number, echoed.
        req: u32,
        /// Envelope ids from `Deliver`.
        ids: Vec<u64>,
    },
    /// Keepalive; answered by `Pong`.
    Ping,
    /// Begin, or resume, uploading the sealed file `file_id` for `to`.
    /// Answered by `UploadState` with the number of chunks the relay already
    /// holds durably: the client sends from there.
    UploadBegin {
        /// Request number, echoed.
        req: u32,
        /// The file's random id.
        file_id: FileId,
        /// Recipient.
        to: PublicKey,
        /// Plaintext size; the relay derives the chunk layout from it.
        size: u64,
    },
    /// One sealed chunk of an upload, in order. Not answered one by one: the
    /// relay sends `UploadProgress` as chunks become durable.
    UploadChunk {
        /// The file.
        file_id: FileId,
        /// Chunk index.
        index: u64,
        /// The sealed chunk.
        data: ByteBuf,
    },
    /// Every chunk has been sent. Answered by `UploadDone` once the whole blob
    /// is durable.
    UploadEnd {
        /// Request number, echoed.
        req: u32,
        /// The file.
        file_id: FileId,
    },
    /// Stream the sealed chunks of a file addressed to me, from chunk `from`.
    /// Answered by `DownloadChunk`s then `DownloadEnd`.
    Download {
        /// Request number, echoed.
        req: u32,
        /// The file.
        file_id: FileId,
        /// First chunk wanted (for resuming).
        from: u64,
    },
    /// Delete a file addressed to me (it has been received). Answered by
    /// `BlobDeleted`.
    DeleteBlob {
        /// Request number, echoed.
        req: u32,
        /// The file.
        file_id: FileId,
    },
    /// A live-only notice for `to` (a presence notice, sealed end to end):
    /// pushed as `Notice` to every connection of `to` that asked for live
    /// delivery (`Fetch { live: true }`), dropped otherwise. Never stored and
    /// never answered, so the sender cannot learn from the relay whether `to`
    /// is connected. Limited to the relay's `max_envelope_len`.
    Notify {
        /// Recipient.
        to: PublicKey,
        /// Sealed end-to-end envelope, opaque to the relay.
        envelope: ByteBuf,
    },
    /// Registers my mailbox's delivery token, as its hash (the relay never
    /// holds the token itself), and whether deliveries that present no token
    /// ("first contact") are accepted. A new hash replaces the previous one,
    /// which stays valid for the relay's grace period. Answered by
    /// `TokenSet` once committed.
    SetDeliveryToken {
        /// Request number, echoed.
        req: u32,
        /// [`crate::delivery::token_hash`] of the new token.
        token_hash: TokenHash,
        /// Accept token-less deliveries, under the relay's tighter limits.
        first_contact: bool,
    },
}

/// Client -> relay on the delivery link, where the client proves no key: the
/// messages that hand something to someone's mailbox, and nothing else.
///
/// `token` is the recipient mailbox's delivery token, `None` for a first
/// contact (a sender that has only the recipient's key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryMsg {
    /// Store `envelope` in `to`'s mailbox. Answered by `Stored` once durable.
    Send {
        /// Request number, echoed.
        req: u32,
        /// Recipient.
        to: PublicKey,
        /// The recipient mailbox's token.
        token: Option<DeliveryToken>,
        /// Sealed end-to-end envelope, opaque to the relay.
        envelope: ByteBuf,
    },
    /// A live-only notice for `to`, as [`ClientMsg::Notify`]: never stored,
    /// never answered.
    Notify {
        /// Recipient.
        to: PublicKey,
        /// The recipient mailbox's token.
        token: Option<DeliveryToken>,
        /// Sealed end-to-end envelope, opaque to the relay.
        envelope: ByteBuf,
    },
    /// Keepalive; answered by `Pong`.
    Ping,
    /// Begin, or resume, uploading the sealed file `file_id` for `to`, as
    /// [`ClientMsg::UploadBegin`]; only a presenter of the same `resume`
    /// secret may resume it. Answered by `UploadState`.
    UploadBegin {
        /// Request number, echoed.
        req: u32,
        /// The file's random id.
        file_id: FileId,
        /// Recipient.
        to: PublicKey,
        /// The recipient mailbox's token.
        token: Option<DeliveryToken>,
        /// Plaintext size.
        size: u64,
        /// The upload's resume secret ([`ResumeSecret::for_file`]).
        resume: ResumeSecret,
    },
    /// One sealed chunk of an upload begun on this connection, in order.
    UploadChunk {
        /// The file.
        file_id: FileId,
        /// Chunk index.
        index: u64,
        /// The sealed chunk.
        data: ByteBuf,
    },
    /// Every chunk has been sent. Answered by `UploadDone`.
    UploadEnd {
        /// Request number, echoed.
        req: u32,
        /// The file.
        file_id: FileId,
    },
    /// Opens a rendezvous slot for a pairing (`sotto pair NAME`): this
    /// connection is its inviter. Answered by `PairSlot`, or `Error`
    /// (`RateLimited`: too many slots). The slot lives as long as this
    /// connection, and at most the relay's slot expiry.
    PairOpen {
        /// Request number, echoed.
        req: u32,
    },
    /// Joins slot `slot` as its one joiner (`sotto pair NAME CODE`), handing
    /// the inviter `message`. Answered by `PairJoined`, or `Error
    /// { code: NoSuchSlot }`: unknown, expired, or already joined once.
    PairJoin {
        /// Request number, echoed.
        req: u32,
        /// The slot number, from the code.
        slot: u32,
        /// Opaque to the relay: a pairing message for the inviter.
        message: ByteBuf,
    },
    /// Forwards `message` to the other party of this connection's slot, as
    /// `PairMessage`. Never answered.
    PairSend {
        /// Opaque to the relay: a pairing message.
        message: ByteBuf,
    },
}

/// Why the relay refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The recipient's mailbox is full.
    QuotaExceeded,
    /// The envelope is larger than the relay accepts.
    TooLarge,
    /// The request is not valid in this state.
    BadRequest,
    /// The relay failed internally; the request may be retried.
    Internal,
    /// The relay is shutting down; retry later.
    ShuttingDown,
    /// Too many requests; slow down.
    RateLimited,
    /// This relay serves an allow-list of keys and the client's is not on it.
    NotAllowed,
    /// The relay's disk is (nearly) full: nothing was stored. Reads and
    /// deletions still work; retry once space has been freed.
    OutOfSpace,
    /// The delivery presented a token that is not the recipient mailbox's
    /// (nor its previous one, within the grace period): the sender's copy
    /// is out of date and a new invite is needed. Nothing was stored.
    WrongToken,
    /// The delivery presented no token and the recipient's mailbox (or the
    /// relay) accepts no first contact: only senders given its token may
    /// deliver. Nothing was stored.
    FirstContactRefused,
    /// A `PairJoin` named a slot the relay does not hold: never opened,
    /// expired, or already joined once (a slot takes one joiner).
    NoSuchSlot,
}

/// Relay -> client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayMsg {
    /// `Send` `req` is durably stored.
    Stored {
        /// Echoed request number.
        req: u32,
    },
    /// One envelope from my mailbox.
    Deliver {
        /// Relay-assigned id, for `Ack`.
        id: u64,
        /// When the relay stored it (unix seconds).
        received_at: u64,
        /// The sealed envelope.
        envelope: ByteBuf,
    },
    /// Everything pending at the time of `Fetch` has been delivered.
    Drained,
    /// `Ack` `req` is done.
    Acked {
        /// Echoed request number.
        req: u32,
        /// How many envelopes were deleted.
        deleted: u32,
    },
    /// Answer to `Ping`.
    Pong,
    /// Request `req` failed.
    Error {
        /// Echoed request number (0 when the error concerns no request).
        req: u32,
        /// What went wrong.
        code: ErrorCode,
        /// A short human-readable explanation.
        detail: String,
    },
    /// Answer to `UploadBegin`: the relay holds chunks `0..have` durably.
    UploadState {
        /// Echoed request number.
        req: u32,
        /// The file.
        file_id: FileId,
        /// Chunks already stored durably; the upload continues at this index.
        have: u64,
    },
    /// Chunks `0..have` of an upload are now durable.
    UploadProgress {
        /// The file.
        file_id: FileId,
        /// Chunks stored durably.
        have: u64,
    },
    /// Answer to `UploadEnd`: the whole blob is durable.
    UploadDone {
        /// Echoed request number.
        req: u32,
        /// The file.
        file_id: FileId,
    },
    /// One sealed chunk of a download.
    DownloadChunk {
        /// The file.
        file_id: FileId,
        /// Chunk index.
        index: u64,
        /// The sealed chunk.
        data: ByteBuf,
    },
    /// Every requested chunk of `Download` `req` has been sent.
    DownloadEnd {
        /// Echoed request number.
        req: u32,
        /// The file.
        file_id: FileId,
    },
    /// Answer to `DeleteBlob`.
    BlobDeleted {
        /// Echoed request number.
        req: u32,
        /// Whether a blob was deleted (false: unknown, or not mine).
        deleted: bool,
    },
    /// A live-only notice someone sent me with `Notify`, pushed while I am
    /// subscribed live; it was never stored and is not acknowledged.
    Notice {
        /// The sealed envelope.
        envelope: ByteBuf,
    },
    /// `SetDeliveryToken` `req` is committed.
    TokenSet {
        /// Echoed request number.
        req: u32,
    },
    /// Answer to `PairOpen`: the slot this connection now holds.
    PairSlot {
        /// Echoed request number.
        req: u32,
        /// The slot number, unique among the relay's live slots.
        slot: u32,
        /// Seconds until the relay closes the slot.
        expires_in: u32,
    },
    /// Answer to `PairJoin`: the inviter has the message; this connection
    /// is the slot's joiner.
    PairJoined {
        /// Echoed request number.
        req: u32,
    },
    /// A pairing message from the other party of my slot.
    PairMessage {
        /// Opaque to the relay.
        message: ByteBuf,
    },
    /// My slot is closed: the other party's connection ended, or the slot
    /// expired. Nothing more is forwarded.
    PairGone,
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // postcard only fails for types serde cannot describe (maps without a
    // length...), none of which appear in this module.
    postcard::to_stdvec(msg).unwrap_or_default()
}

/// Decodes a message from untrusted bytes; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, crate::LinkError> {
    match postcard::take_from_bytes(bytes) {
        Ok((msg, [])) => Ok(msg),
        Ok(_) => Err(crate::LinkError::Malformed("trailing bytes after message")),
        Err(_) => Err(crate::LinkError::Malformed("undecodable message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_link_request_never_decodes_as_a_delivery() {
        let file_id = FileId([9; 16]);
        for msg in [
            ClientMsg::Fetch { live: true },
            ClientMsg::Fetch { live: false },
            ClientMsg::Ack {
                req: 1,
                ids: vec![],
            },
            ClientMsg::Ack {
                req: 300,
                ids: vec![1, 2, 3],
            },
            ClientMsg::Download {
                req: 4,
                file_id,
                from: 0,
            },
            ClientMsg::DeleteBlob { req: 5, file_id },
            ClientMsg::SetDeliveryToken {
                req: 6,
                token_hash: TokenHash([1; 32]),
                first_contact: true,
            },
        ] {
            let bytes = encode(&msg);
            assert!(decode::<DeliveryMsg>(&bytes).is_err(), "{msg:?}");
        }
        let send = DeliveryMsg::Send {
            req: 1,
            to: PublicKey::from_bytes([0xab; 32]),
            token: Some(DeliveryToken::from_bytes([3; 16])),
            envelope: ByteBuf::from(vec![1, 2, 3]),
        };
        assert_eq!(decode::<DeliveryMsg>(&encode(&send)).unwrap(), send);
    }
    use proptest::prelude::*;

    #[test]
    fn known_answer_vectors() {
        // Quoted in docs/PROTOCOL.md.
        let send = ClientMsg::Send {
            req: 1,
            to: PublicKey::from_bytes([0xAB; 32]),
            envelope: ByteBuf::from(vec![1, 2, 3]),
        };
        let mut want = vec![0x00, 0x01];
        want.extend([0xAB; 32]);
        want.extend([0x03, 1, 2, 3]);
        assert_eq!(encode(&send), want);
        assert_eq!(encode(&ClientMsg::Fetch { live: true }), [0x01, 0x01]);
        assert_eq!(
            encode(&ClientMsg::Ack {
                req: 300,
                ids: vec![5]
            }),
            [0x02, 0xAC, 0x02, 0x01, 0x05]
        );
        assert_eq!(encode(&RelayMsg::Stored { req: 1 }), [0x00, 0x01]);
        let notify = ClientMsg::Notify {
            to: PublicKey::from_bytes([0xAB; 32]),
            envelope: ByteBuf::from(vec![9]),
        };
        let mut want = vec![0x09];
        want.extend([0xAB; 32]);
        want.extend([0x01, 9]);
        assert_eq!(encode(&notify), want);
        assert_eq!(
            encode(&RelayMsg::Notice {
                envelope: ByteBuf::from(vec![7, 8])
            }),
            [0x0C, 0x02, 7, 8]
        );
    }

    #[test]
    fn trailing_bytes_and_garbage_are_errors() {
        assert!(decode::<ClientMsg>(&[0x03, 0x00]).is_err()); // Ping + trailing byte
        assert!(decode::<ClientMsg>(&[0x03]).is_ok());
        assert!(decode::<ClientMsg>(&[0x7F]).is_err());
        assert!(decode::<ClientMsg>(&[]).is_err());
        // A byte string claiming to be huge but absent.
        assert!(decode::<ClientMsg>(&[0x00, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<ClientMsg>(&bytes);
            let _ = decode::<RelayMsg>(&bytes);
        }

        #[test]
        fn send_round_trips(req in any::<u32>(), key in any::<[u8; 32]>(), env in proptest::collection::vec(any::<u8>(), 0..300)) {
            let msg = ClientMsg::Send { req, to: PublicKey::from_bytes(key), envelope: ByteBuf::from(env) };
            prop_assert_eq!(decode::<ClientMsg>(&encode(&msg)).unwrap(), msg);
        }
    }
}
