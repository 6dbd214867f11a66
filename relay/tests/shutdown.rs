//! Graceful shutdown, triggered by a oneshot rather than a signal: in-flight
//! sends are committed and answered, connected clients are told, the relay
//! returns, and everything acknowledged is still there on the next start.

use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::link;
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_keys::SecretKey;
use sotto_relay::{Relay, RelayConfig};
use tokio::net::TcpStream;

fn config(dir: &std::path::Path) -> RelayConfig {
    let mut config = RelayConfig::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config
}

async fn connect(
    addr: std::net::SocketAddr,
    me: &SecretKey,
    relay: &sotto_keys::RelayKey,
) -> (
    link::LinkReader<tokio::net::tcp::OwnedReadHalf>,
    link::LinkWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    let (reader, writer, _) = link::connect(r, w, me, relay).await.unwrap();
    (reader, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_sends_tells_clients_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::bind(config(dir.path())).await.unwrap();
    let addr = relay.local_addr().unwrap();
    let relay_key = relay.public_key();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));

    let alice = SecretKey::generate();
    let bob = SecretKey::generate();

    // Bob listens live.
    let (mut bob_r, mut bob_w) = connect(addr, &bob, &relay_key).await;
    bob_w.send(&ClientMsg::Fetch { live: true }).await.unwrap();
    bob_w.flush().await.unwrap();
    assert_eq!(
        bob_r.recv::<RelayMsg>().await.unwrap(),
        Some(RelayMsg::Drained)
    );

    // Alice pipelines a burst of sends and the relay is stopped in the middle.
    let (mut alice_r, mut alice_w) = connect(addr, &alice, &relay_key).await;
    const N: u32 = 200;
    for req in 0..N {
        alice_w
            .send(&ClientMsg::Send {
                req,
                to: bob.public(),
                envelope: ByteBuf::from(vec![req as u8; 300]),
            })
            .await
            .unwrap();
    }
    alice_w.flush().await.unwrap();
    // Wait for the first answer so the burst is really in flight.
    let first = alice_r.recv::<RelayMsg>().await.unwrap();
    assert_eq!(first, Some(RelayMsg::Stored { req: 0 }));
    stop.send(()).unwrap();

    // Every answer alice gets is either Stored or the shutdown notice; the
    // connection then ends cleanly.
    let mut stored = vec![0u32];
    let mut told = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), alice_r.recv::<RelayMsg>())
            .await
            .expect("the relay closes the connection during shutdown")
        {
            Ok(Some(RelayMsg::Stored { req })) => stored.push(req),
            Ok(Some(RelayMsg::Error {
                code: ErrorCode::ShuttingDown,
                ..
            })) => told = true,
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        told,
        "a connected client is told the relay is shutting down"
    );
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .expect("a clean shutdown");

    // Bob's live connection was told and closed too (after any deliveries).
    let mut bob_told = false;
    while let Ok(Some(msg)) = bob_r.recv::<RelayMsg>().await {
        if matches!(
            msg,
            RelayMsg::Error {
                code: ErrorCode::ShuttingDown,
                ..
            }
        ) {
            bob_told = true;
        }
    }
    assert!(bob_told);

    // Restart on the same data: everything acknowledged is there, in order.
    let relay = Relay::bind(config(dir.path())).await.unwrap();
    let addr = relay.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let (mut bob_r, mut bob_w) = connect(addr, &bob, &relay_key).await;
    bob_w.send(&ClientMsg::Fetch { live: false }).await.unwrap();
    bob_w.flush().await.unwrap();
    let mut kept = Vec::new();
    loop {
        match bob_r.recv::<RelayMsg>().await.unwrap() {
            Some(RelayMsg::Deliver { envelope, .. }) => kept.push(envelope[0] as u32),
            Some(RelayMsg::Drained) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    for req in &stored {
        assert!(kept.contains(req), "acknowledged send {req} was lost");
    }
    let mut sorted = kept.clone();
    sorted.sort_unstable();
    assert_eq!(kept, sorted, "delivery keeps the order of arrival");
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
