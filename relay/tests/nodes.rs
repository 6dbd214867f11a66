//! Relay nodes over one NATS JetStream cluster: two relays sharing a keypair
//! and a three-server cluster (three replicas) serve one set of mailboxes. A
//! client of one node sends; a recipient on the other gets it live, and one
//! that connects later fetches it there. Skipped, saying so, without a
//! nats-server binary (`NATS_SERVER_BIN` or `PATH`).

use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::link;
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_keys::SecretKey;
use sotto_relay::config::StoreBackend;
use sotto_relay::nats_cluster::NatsCluster;
use sotto_relay::store::JetStreamConfig;
use sotto_relay::{Relay, RelayConfig};
use tokio::net::TcpStream;

type Reader = link::LinkReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = link::LinkWriter<tokio::net::tcp::OwnedWriteHalf>;

async fn recv(r: &mut Reader) -> RelayMsg {
    tokio::time::timeout(Duration::from_secs(20), r.recv::<RelayMsg>())
        .await
        .expect("the relay answers")
        .unwrap()
        .expect("the connection stays open")
}

/// A relay node in the background until [`Node::stop`].
struct Node {
    addr: std::net::SocketAddr,
    key: sotto_keys::RelayKey,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sotto_relay::RelayError>>,
}

impl Node {
    async fn start(dir: &std::path::Path, nats: &JetStreamConfig) -> Self {
        let mut config = RelayConfig::defaults();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.to_owned();
        config.store = StoreBackend::JetStream(nats.clone());
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
        let (r, w) = TcpStream::connect(self.addr).await.unwrap().into_split();
        let (reader, writer, _) = link::connect(r, w, me, &self.key).await.unwrap();
        (reader, writer)
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn fetch(w: &mut Writer, live: bool) {
    w.send(&ClientMsg::Fetch { live }).await.unwrap();
    w.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_through_one_node_reaches_the_other_live_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = NatsCluster::start(&dir.path().join("nats"), 3).unwrap() else {
        return;
    };
    let nats = JetStreamConfig {
        servers: cluster.urls(),
        replicas: 3,
        prefix: "SOTTO".into(),
        credentials: None,
        tls_ca: None,
    };
    // The nodes of one relay share its keypair: the second gets the first's.
    let (one_dir, two_dir) = (dir.path().join("one"), dir.path().join("two"));
    let one = Node::start(&one_dir, &nats).await;
    std::fs::create_dir_all(&two_dir).unwrap();
    std::fs::copy(
        one_dir.join(sotto_relay::relay_key::KEY_FILE),
        two_dir.join(sotto_relay::relay_key::KEY_FILE),
    )
    .unwrap();
    let two = Node::start(&two_dir, &nats).await;
    assert_eq!(one.key, two.key, "one relay, one pinned key");

    let (alice, bob, carol) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    // Bob waits live on node two.
    let (mut bob_r, mut bob_w) = two.client(&bob).await;
    fetch(&mut bob_w, true).await;
    assert_eq!(recv(&mut bob_r).await, RelayMsg::Drained);

    // Alice sends through node one, to Bob and to Carol, who is offline.
    let (mut alice_r, mut alice_w) = one.client(&alice).await;
    for (req, to) in [(1, bob.public()), (2, carol.public()), (3, bob.public())] {
        alice_w
            .send(&ClientMsg::Send {
                req,
                to,
                envelope: ByteBuf::from(format!("sealed {req}").into_bytes()),
            })
            .await
            .unwrap();
    }
    alice_w.flush().await.unwrap();
    let mut stored = Vec::new();
    while stored.len() < 3 {
        match recv(&mut alice_r).await {
            RelayMsg::Stored { req } => stored.push(req),
            other => panic!("unexpected {other:?}"),
        }
    }
    stored.sort_unstable();
    assert_eq!(stored, [1, 2, 3]);

    let mut live = Vec::new();
    while live.len() < 2 {
        match recv(&mut bob_r).await {
            RelayMsg::Deliver { id, envelope, .. } => live.push((id, envelope.into_vec())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(live[0].0 < live[1].0, "in order: {live:?}");
    assert_eq!(live[0].1, b"sealed 1");
    assert_eq!(live[1].1, b"sealed 3");

    // Carol connects to node two later and finds hers waiting.
    let (mut carol_r, mut carol_w) = two.client(&carol).await;
    fetch(&mut carol_w, false).await;
    let RelayMsg::Deliver { id, envelope, .. } = recv(&mut carol_r).await else {
        panic!("carol's envelope is waiting");
    };
    assert_eq!(envelope.into_vec(), b"sealed 2");
    assert_eq!(recv(&mut carol_r).await, RelayMsg::Drained);
    carol_w
        .send(&ClientMsg::Ack {
            req: 9,
            ids: vec![id],
        })
        .await
        .unwrap();
    carol_w.flush().await.unwrap();
    assert!(matches!(
        recv(&mut carol_r).await,
        RelayMsg::Acked { deleted: 1, .. }
    ));

    // Acknowledged on node two: node one has nothing for her any more.
    let (mut r, mut w) = one.client(&carol).await;
    fetch(&mut w, false).await;
    assert_eq!(recv(&mut r).await, RelayMsg::Drained);

    drop((bob_r, bob_w, alice_r, alice_w, carol_r, carol_w, r, w));
    one.stop().await;
    two.stop().await;
}
