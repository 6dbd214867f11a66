//! Byte budgets through a real relay: with a connection's budget far smaller
//! than what is sent to it, a recipient who does not read for a while still
//! gets every envelope, once and in order, and the sender is not held up by
//! the recipient's full budget.

use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::link;
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_keys::SecretKey;
use sotto_relay::budget::{BufferLimits, MIN_BUDGET};
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
    tokio::time::timeout(Duration::from_secs(30), r.recv::<RelayMsg>())
        .await
        .expect("the relay answers")
        .unwrap()
        .expect("the connection stays open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_over_its_budget_still_gets_everything_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.buffers = BufferLimits {
        total: 8 * MIN_BUDGET,
        per_address: 8 * MIN_BUDGET,
        per_key: 2 * MIN_BUDGET,
        per_connection: MIN_BUDGET,
    };
    let relay = Relay::bind(config).await.unwrap();
    let (addr, key) = (relay.local_addr().unwrap(), relay.public_key());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));

    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let (mut bob_r, mut bob_w) = connect(addr, &bob, &key).await;
    bob_w.send(&ClientMsg::Fetch { live: true }).await.unwrap();
    bob_w.flush().await.unwrap();
    assert_eq!(recv(&mut bob_r).await, RelayMsg::Drained);

    // 200 envelopes of 60,000 bytes: 23 times bob's budget. Bob reads
    // nothing until every one is stored.
    const N: u32 = 200;
    let body = |i: u32| {
        let mut e = vec![(i % 251) as u8; 60_000];
        e[..4].copy_from_slice(&i.to_le_bytes());
        e
    };
    let (mut alice_r, mut alice_w) = connect(addr, &alice, &key).await;
    let sending = async {
        for req in 0..N {
            let envelope = ByteBuf::from(body(req));
            alice_w
                .send(&ClientMsg::Send {
                    req,
                    to: bob.public(),
                    envelope,
                })
                .await
                .unwrap();
        }
        alice_w.flush().await.unwrap();
    };
    let answers = async {
        for _ in 0..N {
            assert!(matches!(recv(&mut alice_r).await, RelayMsg::Stored { .. }));
        }
    };
    tokio::join!(sending, answers);

    let mut ids = Vec::new();
    while ids.len() < N as usize {
        match recv(&mut bob_r).await {
            RelayMsg::Deliver { id, envelope, .. } => {
                assert_eq!(envelope.into_vec(), body(ids.len() as u32));
                ids.push(id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    // Nothing more: no envelope twice.
    bob_w.send(&ClientMsg::Ping).await.unwrap();
    bob_w.flush().await.unwrap();
    assert_eq!(recv(&mut bob_r).await, RelayMsg::Pong);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_budgeted_store_read_reads_only_what_its_reservation_covers() {
    use sotto_relay::budget::charge;
    use sotto_relay::store::{Store, StoreLimits};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.redb"), StoreLimits::default()).unwrap();
    let owner = SecretKey::generate().public();
    for i in 0..5u8 {
        store.enqueue(owner, vec![i; 1000]).await.unwrap();
    }
    let read = |max: usize, limit: usize| {
        let store = store.clone();
        async move {
            let (found, more) = store.pending_within(owner, None, limit, max).await.unwrap();
            (found.len(), more)
        }
    };
    assert_eq!(read(2 * charge(1000), 10).await, (2, true));
    assert_eq!(read(2 * charge(1000) + 1, 10).await, (2, true));
    // Not even the first fits: nothing is read, and more is said to follow.
    assert_eq!(read(charge(1000) - 1, 10).await, (0, true));
    assert_eq!(read(usize::MAX, 3).await, (3, true));
    assert_eq!(read(usize::MAX, 5).await, (5, false));
    assert_eq!(read(usize::MAX, 10).await, (5, false));
    store.close().await.unwrap();
}
