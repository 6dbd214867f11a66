//! Live delivery and pipelined sends through a real relay: a client's Sends
//! are all answered `Stored` while many are in flight, a live recipient gets
//! every envelope once and in id order without waiting for its commit, and
//! an Ack sent the moment an envelope arrives (usually before its commit)
//! still deletes it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::link;
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_keys::SecretKey;
use sotto_relay::{Relay, RelayConfig};
use tokio::net::TcpStream;

type Reader = link::LinkReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = link::LinkWriter<tokio::net::tcp::OwnedWriteHalf>;

async fn connect(
    addr: std::net::SocketAddr,
    me: &SecretKey,
    relay: &sotto_keys::RelayKey,
) -> (Reader, Writer) {
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    let (reader, writer, _) = link::connect(r, w, me, relay).await.unwrap();
    (reader, writer)
}

async fn recv(r: &mut Reader) -> RelayMsg {
    tokio::time::timeout(Duration::from_secs(20), r.recv::<RelayMsg>())
        .await
        .expect("the relay answers")
        .unwrap()
        .expect("the connection stays open")
}

/// The defaults, on a free port of 127.0.0.1, with data in `dir`.
fn config(dir: &std::path::Path) -> RelayConfig {
    let mut config = RelayConfig::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config
}

/// A relay running in the background until [`Running::stop`].
struct Running {
    addr: std::net::SocketAddr,
    key: sotto_keys::RelayKey,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sotto_relay::RelayError>>,
}

impl Running {
    async fn start(config: RelayConfig) -> Self {
        let relay = Relay::bind(config).await.unwrap();
        let (addr, key) = (relay.local_addr().unwrap(), relay.public_key());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            key,
            stop,
            task,
        }
    }

    async fn client(&self, me: &SecretKey) -> (Reader, Writer) {
        connect(self.addr, me, &self.key).await
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Sends each of `envelopes` to `to` (reqs from 0) before reading anything.
async fn send_all(
    w: &mut Writer,
    to: sotto_keys::PublicKey,
    envelopes: impl Iterator<Item = Vec<u8>>,
) {
    for (req, envelope) in (0u32..).zip(envelopes) {
        w.send(&ClientMsg::Send {
            req,
            to,
            envelope: ByteBuf::from(envelope),
        })
        .await
        .unwrap();
    }
    w.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_are_stored_delivered_live_in_order_and_early_acks_delete() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(config(dir.path())).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());

    let (mut bob_r, mut bob_w) = relay.client(&bob).await;
    bob_w.send(&ClientMsg::Fetch { live: true }).await.unwrap();
    bob_w.flush().await.unwrap();
    assert_eq!(recv(&mut bob_r).await, RelayMsg::Drained);

    // Bob acknowledges every envelope the moment it arrives.
    const N: u32 = 300;
    let bob_task = tokio::spawn(async move {
        let (mut ids, mut bodies, mut deleted, mut acks) = (Vec::new(), Vec::new(), 0u32, 0u32);
        while ids.len() < N as usize || acks < N {
            match recv(&mut bob_r).await {
                RelayMsg::Deliver { id, envelope, .. } => {
                    ids.push(id);
                    bodies.push(envelope.into_vec());
                    bob_w
                        .send(&ClientMsg::Ack {
                            req: id as u32,
                            ids: vec![id],
                        })
                        .await
                        .unwrap();
                    bob_w.flush().await.unwrap();
                }
                RelayMsg::Acked { deleted: d, .. } => {
                    acks += 1;
                    deleted += d;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (ids, bodies, deleted, bob_r, bob_w)
    });

    // Alice sends everything before reading a single answer.
    let (mut alice_r, mut alice_w) = relay.client(&alice).await;
    let envelopes = (0..N).map(|req| format!("envelope {req}").into_bytes());
    send_all(&mut alice_w, bob.public(), envelopes).await;
    let mut stored = BTreeSet::new();
    while stored.len() < N as usize {
        match recv(&mut alice_r).await {
            RelayMsg::Stored { req } => assert!(stored.insert(req), "Stored twice for {req}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stored, (0..N).collect());

    let (ids, bodies, deleted, _bob_r, _bob_w) = bob_task.await.unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let expected: Vec<Vec<u8>> = (0..N)
        .map(|req| format!("envelope {req}").into_bytes())
        .collect();
    assert_eq!(bodies, expected, "one connection's sends arrive in order");
    assert_eq!(deleted, N, "every early Ack deleted its envelope");

    // Nothing is left: a fresh fetch finds the mailbox empty.
    let (mut r, mut w) = relay.client(&bob).await;
    w.send(&ClientMsg::Fetch { live: false }).await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(recv(&mut r).await, RelayMsg::Drained);

    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_over_the_rate_limit_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.rate.envelopes_per_second = 1;
    config.rate.envelope_burst = 2;
    let relay = Running::start(config).await;
    let (alice, bob, carol) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let (mut bob_r, mut bob_w) = relay.client(&bob).await;
    bob_w.send(&ClientMsg::Fetch { live: true }).await.unwrap();
    bob_w.flush().await.unwrap();
    assert_eq!(recv(&mut bob_r).await, RelayMsg::Drained);

    // Fewer than bob's queue holds, so only the rate limit can drop any.
    const SENT: usize = 12;
    let started = std::time::Instant::now();
    let (mut alice_r, mut alice_w) = relay.client(&alice).await;
    for i in 0..SENT {
        alice_w
            .send(&ClientMsg::Notify {
                to: bob.public(),
                envelope: ByteBuf::from(vec![b'a', i as u8]),
            })
            .await
            .unwrap();
    }
    alice_w.send(&ClientMsg::Ping).await.unwrap();
    alice_w.flush().await.unwrap();
    // Answered after every notice before it was handed on or dropped.
    assert_eq!(recv(&mut alice_r).await, RelayMsg::Pong);
    let elapsed = started.elapsed();

    // Carol's notice (her own bucket) is queued after alice's: once bob has
    // it, he has everything of alice's that was let through.
    let (_carol_r, mut carol_w) = relay.client(&carol).await;
    carol_w
        .send(&ClientMsg::Notify {
            to: bob.public(),
            envelope: ByteBuf::from(b"carol".to_vec()),
        })
        .await
        .unwrap();
    carol_w.flush().await.unwrap();
    let mut from_alice = 0;
    loop {
        match recv(&mut bob_r).await {
            RelayMsg::Notice { envelope } if envelope.as_slice() == b"carol" => break,
            RelayMsg::Notice { envelope } => {
                assert_eq!(envelope[0], b'a');
                from_alice += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The burst, plus one token per second that passed while sending.
    let allowed = 2 + elapsed.as_secs() as usize + 1;
    assert!(from_alice >= 1, "the burst lets some through");
    assert!(
        from_alice <= allowed.min(SENT - 1),
        "{from_alice} of {SENT} notices let through in {elapsed:?}"
    );

    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_write_timeout_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.write_timeout = Duration::from_millis(500);
    let relay = Running::start(config).await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());

    // More for Bob than the relay's queue and both socket buffers hold.
    const N: u32 = 600;
    const LEN: usize = 60_000;
    let (mut alice_r, mut alice_w) = relay.client(&alice).await;
    let envelopes = (0..N).map(|req| vec![u8::try_from(req % 251).unwrap(); LEN]);
    send_all(&mut alice_w, bob.public(), envelopes).await;
    for _ in 0..N {
        assert!(matches!(recv(&mut alice_r).await, RelayMsg::Stored { .. }));
    }

    // Bob asks for his mailbox and then reads nothing for a while.
    let (mut bob_r, mut bob_w) = relay.client(&bob).await;
    bob_w.send(&ClientMsg::Fetch { live: false }).await.unwrap();
    bob_w.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // What was already in the sockets arrives, then the connection ends.
    let mut delivered = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), bob_r.recv::<RelayMsg>())
            .await
            .expect("the relay ends the connection");
        match next {
            Ok(Some(RelayMsg::Deliver { .. })) => delivered += 1,
            Ok(Some(other)) => panic!("unexpected {other:?} from a stalled connection"),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        delivered < N,
        "all {N} envelopes reached a client that stopped reading"
    );

    // Nothing was acknowledged, so nothing is lost: a reading client gets all.
    let (mut r, mut w) = relay.client(&bob).await;
    w.send(&ClientMsg::Fetch { live: false }).await.unwrap();
    w.flush().await.unwrap();
    let mut again = 0;
    loop {
        match recv(&mut r).await {
            RelayMsg::Deliver { envelope, .. } => {
                assert_eq!(envelope.len(), LEN);
                again += 1;
            }
            RelayMsg::Drained => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(again, N);

    relay.stop().await;
}
