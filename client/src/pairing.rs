//! The two sides of `sotto pair`, on a rendezvous slot of the inviter's relay.
//!
//! Both reach the slot over a delivery link, so the relay learns no key of
//! either. The order of messages (docs/PROTOCOL.md §6.6):
//!
//! 1. joiner -> inviter, in `PairJoin`: `Start` (its PAKE message);
//! 2. inviter -> joiner: `Reply` (PAKE message, confirmation, sealed invite);
//! 3. joiner -> inviter: `Answer` (confirmation, sealed invite), once the
//!    inviter's confirmation, invite and relay key checked out;
//! 4. inviter -> joiner: `Done` (sealed), once the joiner's checked out and
//!    was saved.
//!
//! A side that finds a mismatch sends `Abort` and gives up, so a wrong code
//! fails on both sides; the slot closes with the inviter's connection, and
//! a second try needs a new code. Nothing is saved by this module: the
//! command saves what it returns.

use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_crypto::pairing::{Code, PairKeys, PairMsg, Pake, Role};
use sotto_crypto::wire::{DeliveryMsg, ErrorCode, RelayMsg};
use sotto_keys::{Invite, RelayAddr, RelayKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{timeout, Instant};

use crate::relay_client::{handshake_error, recv_from, refused, write_to, RelayError};
use crate::relay_client::{ANSWER_TIMEOUT, HANDSHAKE_TIMEOUT};

/// How long one side waits for the other's next message once both are in
/// the slot: the other side is a program that answers at once.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// A waiting inviter pings this often, well inside the relay's idle timeout.
const PING_EVERY: Duration = Duration::from_secs(60);

/// Why a pairing failed. Every one leaves nothing saved.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// Another code on the other side, or a message altered on the way.
    #[error("the code did not match: wrong code, or someone interfered; nothing was saved")]
    Mismatch,
    /// The relay holds no slot of that number (any more).
    #[error("no such code on this relay (expired or already used)")]
    NoSuchCode,
    /// Nobody joined before the slot expired.
    #[error("nobody used the code within {0} s, and it has expired; nothing was saved (run `sotto pair NAME` again for a new code)")]
    Expired(u64),
    /// The other side's connection ended part-way.
    #[error("the other side left before pairing finished; nothing was saved")]
    Left,
    /// The other side stopped answering part-way.
    #[error("the other side did not answer within {} s; nothing was saved", STEP_TIMEOUT.as_secs())]
    Silent,
    /// The relay the joiner reached proved another key than the inviter's
    /// invite names for it.
    #[error("the relay at {addr} presented another key than your contact's; nothing was saved")]
    OtherRelayKey {
        /// The relay's address, as the joiner reached it.
        addr: RelayAddr,
    },
    /// The other side's invite opened but does not read.
    #[error("the other side sent an invite that does not read ({0}); nothing was saved")]
    BadInvite(String),
    /// The relay refused, or the link failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

impl PairError {
    /// Whether the other side should hear that this one gives up (it
    /// would otherwise wait for its step timeout).
    fn tells_the_other_side(&self) -> bool {
        matches!(
            self,
            Self::Mismatch | Self::OtherRelayKey { .. } | Self::BadInvite(_)
        )
    }
}

/// A delivery link to the relay that holds (or will hold) the slot.
pub struct Rendezvous<R, W> {
    reader: LinkReader<R>,
    writer: LinkWriter<W>,
    addr: RelayAddr,
    /// The key the relay proved in the handshake.
    relay_key: RelayKey,
    next_req: u32,
}

/// Connects to the relay at `addr`. With `pinned`, the relay must prove that
/// key; without, whatever key it proves is taken for now, and checked later
/// against the inviter's invite ([`Rendezvous::join`]).
pub async fn connect(
    addr: &RelayAddr,
    pinned: Option<&RelayKey>,
) -> Result<Rendezvous<OwnedReadHalf, OwnedWriteHalf>, RelayError> {
    crate::dial::dial(addr, &[], |stream, addr| {
        let (r, w) = stream.into_split();
        handshake(r, w, addr, pinned)
    })
    .await
}

/// The handshake of [`connect`], on an open stream.
pub async fn handshake<R, W>(
    r: R,
    w: W,
    addr: RelayAddr,
    pinned: Option<&RelayKey>,
) -> Result<Rendezvous<R, W>, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let done = match pinned {
        Some(key) => timeout(HANDSHAKE_TIMEOUT, link::connect_delivery(r, w, key))
            .await
            .map(|r| r.map(|(r, w, _)| (r, w, *key))),
        None => timeout(HANDSHAKE_TIMEOUT, link::connect_delivery_unpinned(r, w))
            .await
            .map(|r| r.map(|(r, w, _, key)| (r, w, key))),
    };
    let (reader, writer, relay_key) = match done {
        Err(_) => return Err(RelayError::HandshakeTimeout { addr }),
        Ok(Err(e)) => return Err(handshake_error(addr, e)),
        Ok(Ok(done)) => done,
    };
    Ok(Rendezvous {
        reader,
        writer,
        addr,
        relay_key,
        next_req: 1,
    })
}

/// What the inviter has once the code is out: its slot and deadline.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// The slot number, the code's first part.
    pub number: u32,
    /// How long the relay keeps it.
    pub expires_in: Duration,
}

impl<R, W> Rendezvous<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The key the relay proved.
    pub fn relay_key(&self) -> RelayKey {
        self.relay_key
    }

    fn req(&mut self) -> u32 {
        let req = self.next_req;
        self.next_req += 1;
        req
    }

    async fn send(&mut self, msg: &DeliveryMsg) -> Result<(), PairError> {
        Ok(write_to(&mut self.writer, &self.addr, msg, true).await?)
    }

    async fn send_pair(&mut self, msg: &PairMsg) -> Result<(), PairError> {
        let message = ByteBuf::from(msg.encode());
        self.send(&DeliveryMsg::PairSend { message }).await
    }

    /// Tells the other side this one gives up; best effort.
    async fn abort(&mut self) {
        let _ = self.send_pair(&PairMsg::Abort).await;
    }

    /// Opens a slot (the inviter's first step).
    pub async fn open(&mut self) -> Result<Slot, PairError> {
        let req = self.req();
        self.send(&DeliveryMsg::PairOpen { req }).await?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.next(deadline).await? {
                RelayMsg::PairSlot {
                    req: r,
                    slot,
                    expires_in,
                } if r == req => {
                    return Ok(Slot {
                        number: slot,
                        expires_in: Duration::from_secs(u64::from(expires_in)),
                    })
                }
                RelayMsg::Error {
                    req: r,
                    code,
                    detail,
                } if r == req || r == 0 => {
                    return Err(refused(&self.addr, code, &detail).into());
                }
                RelayMsg::Pong => {}
                _ => return Err(self.unexpected("an answer to PairOpen")),
            }
        }
    }

    /// The inviter's side, from a printed code to the joiner's invite; then
    /// the caller saves it and calls [`Rendezvous::done`] (or gives up with
    /// [`Rendezvous::give_up`]).
    pub async fn invite(
        &mut self,
        code: &Code,
        slot: Slot,
        mine: &Invite,
    ) -> Result<(Invite, PairKeys), PairError> {
        let result = self.invite_steps(code, slot, mine).await;
        if result
            .as_ref()
            .err()
            .is_some_and(PairError::tells_the_other_side)
        {
            self.abort().await;
        }
        result
    }

    async fn invite_steps(
        &mut self,
        code: &Code,
        slot: Slot,
        mine: &Invite,
    ) -> Result<(Invite, PairKeys), PairError> {
        let expires = Instant::now() + slot.expires_in;
        let start = match self.next_pair(expires, true).await {
            Err(PairError::Silent | PairError::Left) => {
                return Err(PairError::Expired(slot.expires_in.as_secs()))
            }
            other => other?,
        };
        let PairMsg::Start { pake } = start else {
            return Err(PairError::Mismatch);
        };
        let (state, my_pake) = Pake::start(code, Role::Inviter);
        let keys = state.finish(&pake).map_err(|_| PairError::Mismatch)?;
        let invite = keys.seal_invite(mine.to_string().as_bytes());
        self.send_pair(&PairMsg::Reply {
            pake: ByteBuf::from(my_pake),
            confirm: keys.confirmation(),
            invite: ByteBuf::from(invite),
        })
        .await?;
        let PairMsg::Answer { confirm, invite } = self.next_step().await? else {
            return Err(PairError::Mismatch);
        };
        keys.check_confirmation(&confirm)?;
        let theirs = read_invite(&keys, &invite)?;
        Ok((theirs, keys))
    }

    /// The inviter's last step: tells the joiner its invite was saved.
    pub async fn done(&mut self, keys: &PairKeys) -> Result<(), PairError> {
        self.send_pair(&PairMsg::Done {
            seal: ByteBuf::from(keys.seal_done()),
        })
        .await
    }

    /// The inviter could not save what it received: the joiner must not
    /// save either.
    pub async fn give_up(&mut self) {
        self.abort().await;
    }

    /// The joiner's side: joins the code's slot and runs every step; returns
    /// the inviter's invite once the inviter said it saved ours. `mine`
    /// makes my invite from the inviter's (whose relay I may be adopting).
    pub async fn join(
        &mut self,
        code: &Code,
        mine: impl FnOnce(&Invite) -> Invite,
    ) -> Result<Invite, PairError> {
        let result = self.join_steps(code, mine).await;
        if result
            .as_ref()
            .err()
            .is_some_and(PairError::tells_the_other_side)
        {
            self.abort().await;
        }
        result
    }

    async fn join_steps(
        &mut self,
        code: &Code,
        mine: impl FnOnce(&Invite) -> Invite,
    ) -> Result<Invite, PairError> {
        let (state, my_pake) = Pake::start(code, Role::Joiner);
        let req = self.req();
        let start = PairMsg::Start {
            pake: ByteBuf::from(my_pake),
        };
        self.send(&DeliveryMsg::PairJoin {
            req,
            slot: code.slot(),
            message: ByteBuf::from(start.encode()),
        })
        .await?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.next(deadline).await? {
                RelayMsg::PairJoined { req: r } if r == req => break,
                RelayMsg::Error {
                    req: r,
                    code: ErrorCode::NoSuchSlot,
                    ..
                } if r == req => return Err(PairError::NoSuchCode),
                RelayMsg::Error {
                    req: r,
                    code,
                    detail,
                } if r == req || r == 0 => {
                    return Err(refused(&self.addr, code, &detail).into());
                }
                RelayMsg::Pong => {}
                _ => return Err(self.unexpected("an answer to PairJoin")),
            }
        }
        let PairMsg::Reply {
            pake,
            confirm,
            invite,
        } = self.next_step().await?
        else {
            return Err(PairError::Mismatch);
        };
        let keys = state.finish(&pake).map_err(|_| PairError::Mismatch)?;
        keys.check_confirmation(&confirm)?;
        let theirs = read_invite(&keys, &invite)?;
        // The slot is on the inviter's relay: the relay I reached must be
        // the one their invite pins, or someone stands between me and it.
        if theirs.relay_key != self.relay_key {
            return Err(PairError::OtherRelayKey {
                addr: self.addr.clone(),
            });
        }
        let sealed = keys.seal_invite(mine(&theirs).to_string().as_bytes());
        self.send_pair(&PairMsg::Answer {
            confirm: keys.confirmation(),
            invite: ByteBuf::from(sealed),
        })
        .await?;
        let PairMsg::Done { seal } = self.next_step().await? else {
            return Err(PairError::Mismatch);
        };
        keys.open_done(&seal)?;
        Ok(theirs)
    }

    /// The other side's next pairing message, within [`STEP_TIMEOUT`].
    async fn next_step(&mut self) -> Result<PairMsg, PairError> {
        self.next_pair(Instant::now() + STEP_TIMEOUT, false).await
    }

    /// The other side's next pairing message, before `deadline`; `Abort`
    /// (or anything that does not decode) is a mismatch, `PairGone` the
    /// other side leaving. `ping`: keep the link alive while waiting.
    async fn next_pair(&mut self, deadline: Instant, ping: bool) -> Result<PairMsg, PairError> {
        loop {
            let msg = if ping {
                self.next_pinging(deadline).await?
            } else {
                self.next(deadline).await?
            };
            match msg {
                RelayMsg::PairMessage { message } => {
                    return match PairMsg::decode(&message) {
                        Ok(PairMsg::Abort) | Err(_) => Err(PairError::Mismatch),
                        Ok(msg) => Ok(msg),
                    }
                }
                RelayMsg::PairGone => return Err(PairError::Left),
                RelayMsg::Error { code, detail, .. } => {
                    return Err(refused(&self.addr, code, &detail).into())
                }
                RelayMsg::Pong => {}
                _ => return Err(self.unexpected("a pairing message")),
            }
        }
    }

    /// The relay's next message before `deadline` (`Silent` after it).
    async fn next(&mut self, deadline: Instant) -> Result<RelayMsg, PairError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match timeout(wait, recv_from(&mut self.reader, &self.addr, None)).await {
            Err(_) => Err(PairError::Silent),
            Ok(r) => Ok(r?),
        }
    }

    /// [`Self::next`], pinging meanwhile. The receive is kept across the
    /// pings: dropping it part-way through a message would lose bytes.
    async fn next_pinging(&mut self, deadline: Instant) -> Result<RelayMsg, PairError> {
        let recv = recv_from(&mut self.reader, &self.addr, None);
        tokio::pin!(recv);
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                r = &mut recv => return Ok(r?),
                _ = tokio::time::sleep_until(deadline) => return Err(PairError::Silent),
                _ = ping.tick() => {
                    write_to(&mut self.writer, &self.addr, &DeliveryMsg::Ping, true).await?;
                }
            }
        }
    }

    fn unexpected(&self, what: &'static str) -> PairError {
        PairError::Relay(RelayError::Protocol {
            addr: self.addr.clone(),
            what,
        })
    }
}

/// Opens and reads the other side's sealed invite.
fn read_invite(keys: &PairKeys, sealed: &[u8]) -> Result<Invite, PairError> {
    let plain = keys.open_invite(sealed)?;
    let text = std::str::from_utf8(&plain).map_err(|_| PairError::BadInvite("not text".into()))?;
    text.parse()
        .map_err(|e: sotto_keys::Error| PairError::BadInvite(e.to_string()))
}

impl From<sotto_crypto::pairing::PairingError> for PairError {
    fn from(_: sotto_crypto::pairing::PairingError) -> Self {
        // Every failure of the other side's bytes means the same to a user.
        Self::Mismatch
    }
}
