//! Reaching a relay that answers at several addresses.
//!
//! One relay (one key) may run as several nodes over a shared store, so that
//! losing a machine loses nothing and stops nobody. Its clients know it by a
//! list of addresses (`relay` and `relay_nodes` in config.toml) and by host
//! names that may resolve to several addresses each. Every connection, owner
//! link or delivery link, tries them in order: each address a name resolves
//! to, then the next name, and takes the first that completes the handshake
//! proving the pinned key.
//!
//! Only failures that mean "not here" move on: no TCP connection, no
//! handshake in time, the peer hanging up during it. A node that proves
//! another key is not skipped for the next one: that is an attack or a
//! misconfiguration, and the user hears about it as such. Nor is a refusal
//! after the handshake (a full mailbox is full on every node).

use std::future::Future;
use std::net::SocketAddr;

use sotto_keys::RelayAddr;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::relay_client::{describe_io, RelayError, CONNECT_TIMEOUT};

/// Connects to the first of `first` and `others` (in order, every resolved
/// address of each) where `handshake` succeeds on the open stream, and
/// returns what it gave. When none does, the error of the last one tried.
pub(crate) async fn dial<T, F, Fut>(
    first: &RelayAddr,
    others: &[RelayAddr],
    mut handshake: F,
) -> Result<T, RelayError>
where
    F: FnMut(TcpStream, RelayAddr) -> Fut,
    Fut: Future<Output = Result<T, RelayError>>,
{
    // Always replaced: the first address gives an answer or an error.
    let mut last = RelayError::Unreachable {
        addr: first.clone(),
        reason: "not tried".to_owned(),
    };
    for addr in std::iter::once(first).chain(others) {
        let resolved = match resolve(addr).await {
            Ok(resolved) => resolved,
            Err(err) => {
                last = err;
                continue;
            }
        };
        for socket in resolved {
            tracing::debug!(relay = %addr, %socket, "connecting");
            let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(socket)).await {
                Err(_) => {
                    last = RelayError::Unreachable {
                        addr: addr.clone(),
                        reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    };
                    continue;
                }
                Ok(Err(e)) => {
                    last = RelayError::Unreachable {
                        addr: addr.clone(),
                        reason: describe_io(&e),
                    };
                    continue;
                }
                Ok(Ok(stream)) => stream,
            };
            // Requests are small and answered one by one: don't let Nagle
            // delay them.
            let _ = stream.set_nodelay(true);
            match handshake(stream, addr.clone()).await {
                Ok(done) => return Ok(done),
                Err(err) if not_here(&err) => {
                    tracing::debug!(relay = %addr, %socket, error = %err, "trying the next address");
                    last = err;
                }
                Err(err) => return Err(err),
            }
        }
    }
    Err(last)
}

/// The socket addresses `addr` names, in the resolver's order, without
/// repeats.
async fn resolve(addr: &RelayAddr) -> Result<Vec<SocketAddr>, RelayError> {
    let found = timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((addr.host(), addr.port())),
    )
    .await;
    let unreachable = |reason: String| RelayError::Unreachable {
        addr: addr.clone(),
        reason,
    };
    match found {
        Err(_) => Err(unreachable(format!(
            "its name did not resolve within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(unreachable(format!(
            "cannot resolve its name: {}",
            describe_io(&e)
        ))),
        Ok(Ok(found)) => {
            let mut unique: Vec<SocketAddr> = Vec::new();
            for socket in found {
                if !unique.contains(&socket) {
                    unique.push(socket);
                }
            }
            if unique.is_empty() {
                return Err(unreachable("its name has no address".to_owned()));
            }
            Ok(unique)
        }
    }
}

/// Whether `err` says only that this address does not serve: another may.
fn not_here(err: &RelayError) -> bool {
    matches!(
        err,
        RelayError::Unreachable { .. }
            | RelayError::HandshakeTimeout { .. }
            | RelayError::Closed { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> RelayAddr {
        RelayAddr::new("127.0.0.1", port).unwrap()
    }

    /// A port where nothing listens (bound, then let go).
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_dead_address_is_skipped_for_the_next_that_answers() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_port = live.local_addr().unwrap().port();
        let addrs = [addr(dead_port()), addr(live_port)];
        let got = dial(
            &addrs[0],
            &addrs[1..],
            |_stream, addr| async move { Ok(addr) },
        )
        .await
        .unwrap();
        assert_eq!(got, addrs[1]);
    }

    #[tokio::test]
    async fn a_node_that_hangs_up_in_the_handshake_is_skipped() {
        let (a, b) = (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let addrs = [
            addr(a.local_addr().unwrap().port()),
            addr(b.local_addr().unwrap().port()),
        ];
        let first = addrs[0].clone();
        let got = dial(&addrs[0], &addrs[1..], |_stream, addr| {
            let first = first.clone();
            async move {
                if addr == first {
                    Err(RelayError::Closed { addr })
                } else {
                    Ok(addr)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, addrs[1]);
    }

    #[tokio::test]
    async fn another_key_is_not_skipped_for_the_next_node() {
        let (a, b) = (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let addrs = [
            addr(a.local_addr().unwrap().port()),
            addr(b.local_addr().unwrap().port()),
        ];
        let relay_key = sotto_keys::RelayKey::from_bytes([3; 32]);
        let mut tried = Vec::new();
        let err = dial(&addrs[0], &addrs[1..], |_stream, addr| {
            tried.push(addr.clone());
            async move {
                Err::<(), _>(RelayError::KeyMismatch {
                    addr,
                    got: relay_key,
                    pinned: relay_key,
                })
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RelayError::KeyMismatch { .. }), "{err}");
        assert_eq!(tried, [addrs[0].clone()]);
    }

    #[tokio::test]
    async fn when_every_address_fails_the_error_names_the_last() {
        let addrs = [addr(dead_port()), addr(dead_port())];
        let err = dial(
            &addrs[0],
            &addrs[1..],
            |_stream, addr| async move { Ok(addr) },
        )
        .await
        .unwrap_err();
        match err {
            RelayError::Unreachable { addr, reason } => {
                assert_eq!(addr, addrs[1]);
                assert_eq!(reason, "connection refused");
            }
            other => panic!("{other}"),
        }
    }
}
