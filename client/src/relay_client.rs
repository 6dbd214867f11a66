//! Talking to the relay: connect, prove who we are, send, fetch, acknowledge.
//!
//! Every step has a time limit, because a CLI that hangs on a dead relay or a
//! black-holed address is worse than one that says so. Failures are mapped to
//! [`RelayError`], whose messages name the relay's address and, where there is
//! one, the fix; the commands add what they know (the recipient's name).
//!
//! Anything the relay says in words (an error's `detail`) is neutralised
//! before it can reach a terminal: the relay is not trusted.

use std::fmt;
use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::link::{self, LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayHello, RelayMsg};
use sotto_crypto::LinkError;
use sotto_keys::{PublicKey, RelayAddr, RelayKey, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::RelayPin;
use crate::display::sanitize;

/// Time allowed to open the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the Noise handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the relay to answer one request (or send the next
/// envelope of a fetch). A durable commit can take a while on a busy disk.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most ids acknowledged in one `Ack`, keeping each message small.
const ACK_BATCH: usize = 1024;

/// Why talking to the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No TCP connection could be made.
    #[error("cannot reach the relay at {addr} ({reason}): is sotto-relay running there?")]
    Unreachable {
        /// The relay's address.
        addr: RelayAddr,
        /// Why, in a few words ("connection refused").
        reason: String,
    },
    /// The relay proved a key other than the pinned one.
    #[error("relay key mismatch: {addr} proved {got} but config.toml pins {pinned}; if the relay was really re-keyed, run `sotto relay set` with the new key")]
    KeyMismatch {
        /// The relay's address.
        addr: RelayAddr,
        /// The key it proved.
        got: RelayKey,
        /// The key in config.toml.
        pinned: RelayKey,
    },
    /// The handshake did not finish in time.
    #[error("the relay at {addr} did not complete the handshake within {} s: is it a sotto relay?", HANDSHAKE_TIMEOUT.as_secs())]
    HandshakeTimeout {
        /// The relay's address.
        addr: RelayAddr,
    },
    /// The relay speaks another protocol version.
    #[error("the relay at {addr} speaks protocol version {got}, this sotto speaks {ours}: upgrade whichever is older")]
    Version {
        /// The relay's address.
        addr: RelayAddr,
        /// Its version.
        got: u16,
        /// Ours.
        ours: u16,
    },
    /// The handshake failed for another reason.
    #[error("the handshake with the relay at {addr} failed ({source}): is it a sotto relay?")]
    Handshake {
        /// The relay's address.
        addr: RelayAddr,
        /// What failed.
        source: LinkError,
    },
    /// The connection failed after the handshake.
    #[error("the connection to the relay at {addr} failed: {source}")]
    Link {
        /// The relay's address.
        addr: RelayAddr,
        /// What failed.
        source: LinkError,
    },
    /// The relay hung up before answering.
    #[error("the relay at {addr} closed the connection before answering; try again")]
    Closed {
        /// The relay's address.
        addr: RelayAddr,
    },
    /// The relay did not answer in time.
    #[error("the relay at {addr} did not answer within {} s; try again", ANSWER_TIMEOUT.as_secs())]
    NoAnswer {
        /// The relay's address.
        addr: RelayAddr,
    },
    /// The relay said something that makes no sense at this point.
    #[error("the relay at {addr} sent an unexpected message ({what})")]
    Protocol {
        /// The relay's address.
        addr: RelayAddr,
        /// What was expected.
        what: &'static str,
    },
    /// The relay refused the request.
    #[error("{}", refusal(.addr, *.code, .detail))]
    Refused {
        /// The relay's address.
        addr: RelayAddr,
        /// Its error code.
        code: ErrorCode,
        /// Its explanation, neutralised.
        detail: String,
    },
}

fn refusal(addr: &RelayAddr, code: ErrorCode, detail: &str) -> String {
    let why = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    match code {
        ErrorCode::QuotaExceeded => {
            format!("the recipient's mailbox on the relay at {addr} is full{why}; try again once they have read their messages")
        }
        ErrorCode::TooLarge => format!("the relay at {addr} refused the message as too large{why}"),
        ErrorCode::BadRequest => format!("the relay at {addr} refused the request as invalid{why}"),
        ErrorCode::Internal => {
            format!("the relay at {addr} failed internally{why}; try again later")
        }
        ErrorCode::ShuttingDown => {
            format!("the relay at {addr} is shutting down{why}; try again in a moment")
        }
        ErrorCode::RateLimited => {
            format!("the relay at {addr} asks to slow down{why}; try again later")
        }
        ErrorCode::NotAllowed => format!(
            "the relay at {addr} is private and does not serve your key{why}; ask its operator to add the key `sotto id` prints"
        ),
    }
}

/// A few words for an I/O error: "connection refused", not
/// "Connection refused (os error 111)".
pub fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let words = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::TimedOut => "timed out",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::PermissionDenied => "permission denied",
        _ => {
            let s = e.to_string();
            let s = match s.find(" (os error") {
                Some(i) => &s[..i],
                None => &s,
            };
            let mut chars = s.chars();
            return match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => "unknown error".to_owned(),
            };
        }
    };
    words.to_owned()
}

/// One envelope fetched from the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The relay's id, to acknowledge it.
    pub id: u64,
    /// When the relay stored it (unix seconds, the relay's word).
    pub received_at: u64,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

/// An authenticated connection to the relay.
pub struct RelayConn<R, W> {
    reader: LinkReader<R>,
    writer: LinkWriter<W>,
    addr: RelayAddr,
    hello: RelayHello,
    next_req: u32,
}

impl<R, W> fmt::Debug for RelayConn<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConn")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Connects to the pinned relay over TCP and runs the handshake.
pub async fn connect(
    pin: &RelayPin,
    me: &SecretKey,
) -> Result<RelayConn<OwnedReadHalf, OwnedWriteHalf>, RelayError> {
    let addr = pin.addr.clone();
    tracing::debug!(relay = %addr, "connecting");
    let stream = match timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((addr.host(), addr.port())),
    )
    .await
    {
        Err(_) => {
            return Err(RelayError::Unreachable {
                addr,
                reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            })
        }
        Ok(Err(e)) => {
            return Err(RelayError::Unreachable {
                addr,
                reason: describe_io(&e),
            })
        }
        Ok(Ok(s)) => s,
    };
    // Requests are small and answered one by one: don't let Nagle delay them.
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    handshake(r, w, addr, &pin.key, me).await
}

/// Runs the handshake on an open stream (separate from [`connect`] so tests
/// can use an in-memory pipe).
pub async fn handshake<R, W>(
    r: R,
    w: W,
    addr: RelayAddr,
    pinned: &RelayKey,
    me: &SecretKey,
) -> Result<RelayConn<R, W>, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (reader, writer, hello) =
        match timeout(HANDSHAKE_TIMEOUT, link::connect(r, w, me, pinned)).await {
            Err(_) => return Err(RelayError::HandshakeTimeout { addr }),
            Ok(Err(e)) => return Err(handshake_error(addr, e)),
            Ok(Ok(done)) => done,
        };
    tracing::debug!(relay = %addr, max_envelope = hello.max_envelope_len, "handshake done");
    Ok(RelayConn {
        reader,
        writer,
        addr,
        hello,
        next_req: 1,
    })
}

fn handshake_error(addr: RelayAddr, e: LinkError) -> RelayError {
    match e {
        LinkError::RelayKeyMismatch { expected, got } => RelayError::KeyMismatch {
            addr,
            got,
            pinned: expected,
        },
        LinkError::UnsupportedVersion { got, ours } => RelayError::Version { addr, got, ours },
        LinkError::Io(io) => RelayError::Unreachable {
            addr,
            reason: describe_io(&io),
        },
        other => RelayError::Handshake {
            addr,
            source: other,
        },
    }
}

impl<R, W> RelayConn<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The relay's address.
    pub fn addr(&self) -> &RelayAddr {
        &self.addr
    }

    /// The largest envelope the relay accepts, in bytes.
    pub fn max_envelope_len(&self) -> usize {
        self.hello.max_envelope_len as usize
    }

    fn req(&mut self) -> u32 {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        req
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), RelayError> {
        let r = async {
            self.writer.send(msg).await?;
            self.writer.flush().await
        }
        .await;
        r.map_err(|source| self.link_error(source))
    }

    fn link_error(&self, source: LinkError) -> RelayError {
        match source {
            LinkError::UnexpectedEof => RelayError::Closed {
                addr: self.addr.clone(),
            },
            source => RelayError::Link {
                addr: self.addr.clone(),
                source,
            },
        }
    }

    /// The next message from the relay, within [`ANSWER_TIMEOUT`].
    async fn recv(&mut self) -> Result<RelayMsg, RelayError> {
        match timeout(ANSWER_TIMEOUT, self.reader.recv::<RelayMsg>()).await {
            Err(_) => Err(RelayError::NoAnswer {
                addr: self.addr.clone(),
            }),
            Ok(Err(e)) => Err(self.link_error(e)),
            Ok(Ok(None)) => Err(RelayError::Closed {
                addr: self.addr.clone(),
            }),
            Ok(Ok(Some(msg))) => Ok(msg),
        }
    }

    fn refused(&self, code: ErrorCode, detail: &str) -> RelayError {
        RelayError::Refused {
            addr: self.addr.clone(),
            code,
            detail: sanitize(detail.chars().take(200).collect::<String>().trim()),
        }
    }

    /// Hands an envelope to the relay for `to`; returns once the relay has
    /// stored it durably (`Stored`).
    pub async fn send_envelope(
        &mut self,
        to: &PublicKey,
        envelope: Vec<u8>,
    ) -> Result<(), RelayError> {
        let req = self.req();
        self.send(&ClientMsg::Send {
            req,
            to: *to,
            envelope: ByteBuf::from(envelope),
        })
        .await?;
        loop {
            match self.recv().await? {
                RelayMsg::Stored { req: r } if r == req => return Ok(()),
                RelayMsg::Error {
                    req: r,
                    code,
                    detail,
                } if r == req || r == 0 => return Err(self.refused(code, &detail)),
                RelayMsg::Pong => {}
                other => tracing::debug!(?other, "ignoring a message while waiting for Stored"),
            }
        }
    }

    /// Fetches every pending envelope, in the relay's order, up to `Drained`.
    pub async fn fetch_pending(&mut self) -> Result<Vec<Delivery>, RelayError> {
        self.send(&ClientMsg::Fetch { live: false }).await?;
        let mut out = Vec::new();
        loop {
            match self.recv().await? {
                RelayMsg::Deliver {
                    id,
                    received_at,
                    envelope,
                } => out.push(Delivery {
                    id,
                    received_at,
                    envelope: envelope.into_vec(),
                }),
                RelayMsg::Drained => return Ok(out),
                RelayMsg::Error { code, detail, .. } => return Err(self.refused(code, &detail)),
                RelayMsg::Pong => {}
                RelayMsg::Stored { .. } | RelayMsg::Acked { .. } => {
                    return Err(RelayError::Protocol {
                        addr: self.addr.clone(),
                        what: "an answer to a request that was not made, while fetching",
                    })
                }
            }
        }
    }

    /// Deletes fetched envelopes from the mailbox; returns how many the relay
    /// deleted.
    pub async fn ack(&mut self, ids: &[u64]) -> Result<u64, RelayError> {
        let mut deleted = 0u64;
        for batch in ids.chunks(ACK_BATCH) {
            let req = self.req();
            self.send(&ClientMsg::Ack {
                req,
                ids: batch.to_vec(),
            })
            .await?;
            loop {
                match self.recv().await? {
                    RelayMsg::Acked { req: r, deleted: n } if r == req => {
                        deleted += u64::from(n);
                        break;
                    }
                    RelayMsg::Error {
                        req: r,
                        code,
                        detail,
                    } if r == req || r == 0 => return Err(self.refused(code, &detail)),
                    RelayMsg::Pong => {}
                    other => tracing::debug!(?other, "ignoring a message while waiting for Acked"),
                }
            }
        }
        Ok(deleted)
    }

    /// Says goodbye: flushes and closes our direction. Failures are ignored,
    /// everything that mattered has been answered already.
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(2), self.writer.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_crypto::link::LINK_VERSION;

    fn addr() -> RelayAddr {
        "127.0.0.1:7300".parse().unwrap()
    }

    #[test]
    fn unreachable_and_mismatch_messages_say_what_to_do() {
        let e = RelayError::Unreachable {
            addr: addr(),
            reason: describe_io(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the relay at 127.0.0.1:7300 (connection refused): is sotto-relay running there?"
        );
        let got = RelayKey::from_bytes([1; 32]);
        let pinned = RelayKey::from_bytes([2; 32]);
        let e = handshake_error(
            addr(),
            LinkError::RelayKeyMismatch {
                expected: pinned,
                got,
            },
        );
        assert_eq!(
            e.to_string(),
            format!("relay key mismatch: 127.0.0.1:7300 proved {got} but config.toml pins {pinned}; if the relay was really re-keyed, run `sotto relay set` with the new key")
        );
        let e = handshake_error(addr(), LinkError::UnsupportedVersion { got: 9, ours: 1 });
        assert!(e.to_string().contains("protocol version 9"), "{e}");
    }

    #[test]
    fn io_errors_are_described_in_a_few_words() {
        let e = std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        );
        assert_eq!(
            describe_io(&e),
            "failed to lookup address information: Name or service not known"
        );
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(describe_io(&e), "connection refused");
    }

    #[test]
    fn a_relays_detail_cannot_inject_escapes() {
        let conn_addr = addr();
        let e = RelayError::Refused {
            addr: conn_addr,
            code: ErrorCode::Internal,
            detail: sanitize("disk \x1b[31mfull\n"),
        };
        let s = e.to_string();
        assert!(!s.contains('\x1b') && !s.contains('\n'), "{s}");
        assert!(s.contains("failed internally"), "{s}");
    }

    /// A relay in a task on the other end of a pipe, answering from a script.
    async fn fake_relay<F, Fut>(
        script: F,
    ) -> RelayConn<
        tokio::io::ReadHalf<tokio::io::DuplexStream>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
    >
    where
        F: FnOnce(
                LinkReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
                LinkWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>,
            ) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let relay = SecretKey::generate();
        let pinned = RelayKey::from(relay.public());
        let (c, s) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let (r, w) = tokio::io::split(s);
            let hello = RelayHello {
                version: LINK_VERSION,
                max_envelope_len: 70_000,
            };
            let (rr, rw, _peer) = link::accept(r, w, &relay, &hello).await.unwrap();
            script(rr, rw).await;
        });
        let (r, w) = tokio::io::split(c);
        handshake(r, w, addr(), &pinned, &SecretKey::generate())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn send_waits_for_stored_and_maps_a_full_mailbox() {
        let mut conn = fake_relay(|mut r, mut w| async move {
            let Some(ClientMsg::Send { req, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::Pong).await.unwrap();
            w.send(&RelayMsg::Stored { req }).await.unwrap();
            w.flush().await.unwrap();
            let Some(ClientMsg::Send { req, .. }) = r.recv().await.unwrap() else {
                panic!()
            };
            w.send(&RelayMsg::Error {
                req,
                code: ErrorCode::QuotaExceeded,
                detail: "mailbox full".into(),
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
        })
        .await;
        assert_eq!(conn.max_envelope_len(), 70_000);
        let to = PublicKey::from_bytes([5; 32]);
        conn.send_envelope(&to, vec![1, 2, 3]).await.unwrap();
        let err = conn.send_envelope(&to, vec![4]).await.unwrap_err();
        assert!(
            matches!(
                err,
                RelayError::Refused {
                    code: ErrorCode::QuotaExceeded,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fetch_collects_until_drained_and_ack_waits_for_acked() {
        let mut conn = fake_relay(|mut r, mut w| async move {
            assert_eq!(
                r.recv::<ClientMsg>().await.unwrap(),
                Some(ClientMsg::Fetch { live: false })
            );
            for id in [7u64, 9] {
                w.send(&RelayMsg::Deliver {
                    id,
                    received_at: 100,
                    envelope: ByteBuf::from(vec![id as u8]),
                })
                .await
                .unwrap();
            }
            w.send(&RelayMsg::Drained).await.unwrap();
            w.flush().await.unwrap();
            let Some(ClientMsg::Ack { req, ids }) = r.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(ids, vec![7, 9]);
            w.send(&RelayMsg::Acked { req, deleted: 2 }).await.unwrap();
            w.flush().await.unwrap();
            // Then hang up.
        })
        .await;
        let got = conn.fetch_pending().await.unwrap();
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![7, 9]);
        assert_eq!(got[1].envelope, vec![9]);
        assert_eq!(conn.ack(&[7, 9]).await.unwrap(), 2);
        assert!(matches!(
            conn.fetch_pending().await,
            Err(RelayError::Closed { .. }) | Err(RelayError::Link { .. })
        ));
    }

    #[tokio::test]
    async fn a_relay_that_hangs_up_mid_request_is_reported_as_closed() {
        let mut conn = fake_relay(|mut r, _w| async move {
            let _ = r.recv::<ClientMsg>().await;
        })
        .await;
        let err = conn
            .send_envelope(&PublicKey::from_bytes([1; 32]), vec![1])
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::Closed { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("closed the connection before answering"));
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_is_unreachable() {
        // Bind then drop a listener: the port is very likely closed afterwards.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pin = RelayPin {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            key: RelayKey::from_bytes([1; 32]),
        };
        let err = connect(&pin, &SecretKey::generate()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach the relay at 127.0.0.1:{port} (connection refused): is sotto-relay running there?")
        );
    }
}
