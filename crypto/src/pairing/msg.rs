//! The messages two pairing clients exchange through the relay's slot.
//!
//! The relay forwards each as opaque bytes (`PairJoin` and `PairSend` on the
//! delivery link, `PairMessage` back); only the clients decode them. postcard,
//! like everything else on the link, variants only ever appended.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{PairingError, CONFIRM_LEN};

/// Longest encoded pairing message: an `Answer` with the longest sealed
/// invite, with room to spare. The relay's limit must be at least this.
pub const MAX_PAIR_MSG_LEN: usize = 1024;

/// One step of a pairing; the order is fixed (docs/PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairMsg {
    /// Joiner -> inviter, carried by `PairJoin`: the joiner's PAKE message.
    Start {
        /// SPAKE2 message.
        pake: ByteBuf,
    },
    /// Inviter -> joiner: the inviter's PAKE message, its confirmation and
    /// its sealed invite.
    Reply {
        /// SPAKE2 message.
        pake: ByteBuf,
        /// The inviter's confirmation value.
        confirm: [u8; CONFIRM_LEN],
        /// The inviter's invite, sealed.
        invite: ByteBuf,
    },
    /// Joiner -> inviter, once the inviter's confirmation and invite
    /// checked out: the joiner's confirmation and sealed invite.
    Answer {
        /// The joiner's confirmation value.
        confirm: [u8; CONFIRM_LEN],
        /// The joiner's invite, sealed.
        invite: ByteBuf,
    },
    /// Inviter -> joiner: the joiner's invite checked out and was saved.
    Done {
        /// The sealed empty "done".
        seal: ByteBuf,
    },
    /// Either side: it gives up (a mismatch, a refused relay key); nothing
    /// was saved there. Unauthenticated: it can only end a pairing, which
    /// anyone who can cut the connection can do anyway.
    Abort,
}

impl PairMsg {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(self)
    }

    /// Decodes a message from the other side; trailing bytes, an unknown
    /// variant or an overlong message are `Malformed`.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        if bytes.len() > MAX_PAIR_MSG_LEN {
            return Err(PairingError::Malformed);
        }
        crate::wire::decode(bytes).map_err(|_| PairingError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_answer_fits_and_garbage_is_malformed() {
        let longest = PairMsg::Answer {
            confirm: [7; CONFIRM_LEN],
            invite: ByteBuf::from(vec![0; super::super::MAX_INVITE_PLAINTEXT + 16]),
        };
        let bytes = longest.encode();
        assert!(bytes.len() <= MAX_PAIR_MSG_LEN, "{}", bytes.len());
        assert_eq!(PairMsg::decode(&bytes).unwrap(), longest);
        assert!(PairMsg::decode(&[0x09]).is_err());
        assert!(PairMsg::decode(&[0x04, 0x00]).is_err());
        assert_eq!(PairMsg::decode(&[0x04]).unwrap(), PairMsg::Abort);
    }
}
