//! Relay nodes over one NATS JetStream cluster: two relays sharing a keypair
//! and a three-server cluster (three replicas) serve one set of mailboxes and
//! one file cache. A client of one node sends; a recipient on the other gets
//! it live, and one that connects later fetches it there. An upload cut on one
//! node resumes on the other, and downloads from either. Skipped, saying so,
//! without a nats-server binary (`NATS_SERVER_BIN` or `PATH`).

use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::file::{ChunkCipher, FileId, FileKey, CHUNK_LEN};
use sotto_crypto::link;
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_keys::{PublicKey, SecretKey};
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
    async fn start_with(
        dir: &std::path::Path,
        nats: &JetStreamConfig,
        adjust: impl FnOnce(&mut RelayConfig),
    ) -> Self {
        let mut config = RelayConfig::defaults();
        adjust(&mut config);
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

fn nats_config(cluster: &NatsCluster) -> JetStreamConfig {
    JetStreamConfig {
        servers: cluster.urls(),
        replicas: 3,
        prefix: "SOTTO".into(),
        credentials: None,
        tls_ca: None,
    }
}

/// Two nodes of one relay: the second gets the first's keypair, as an
/// operator copies `relay.key` into each node's data dir.
async fn two_nodes(
    dir: &std::path::Path,
    nats: &JetStreamConfig,
    adjust: impl Fn(&mut RelayConfig),
) -> (Node, Node) {
    let (one_dir, two_dir) = (dir.join("one"), dir.join("two"));
    let one = Node::start_with(&one_dir, nats, &adjust).await;
    std::fs::create_dir_all(&two_dir).unwrap();
    std::fs::copy(
        one_dir.join(sotto_relay::relay_key::KEY_FILE),
        two_dir.join(sotto_relay::relay_key::KEY_FILE),
    )
    .unwrap();
    let two = Node::start_with(&two_dir, nats, &adjust).await;
    assert_eq!(one.key, two.key, "one relay, one pinned key");
    (one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_through_one_node_reaches_the_other_live_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = NatsCluster::start(&dir.path().join("nats"), 3).unwrap() else {
        return;
    };
    let nats = nats_config(&cluster);
    let (one, two) = two_nodes(dir.path(), &nats, |_| {}).await;

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

/// The next message that is not an `UploadProgress`.
async fn answer(r: &mut Reader) -> RelayMsg {
    loop {
        match recv(r).await {
            RelayMsg::UploadProgress { .. } => continue,
            msg => return msg,
        }
    }
}

async fn send_chunks(w: &mut Writer, id: FileId, chunks: &[Vec<u8>], range: std::ops::Range<u64>) {
    for index in range {
        w.send(&ClientMsg::UploadChunk {
            file_id: id,
            index,
            data: ByteBuf::from(chunks[index as usize].clone()),
        })
        .await
        .unwrap();
    }
    w.flush().await.unwrap();
}

async fn begin(r: &mut Reader, w: &mut Writer, id: FileId, to: PublicKey, size: u64) -> u64 {
    w.send(&ClientMsg::UploadBegin {
        req: 1,
        file_id: id,
        to,
        size,
    })
    .await
    .unwrap();
    w.flush().await.unwrap();
    match answer(r).await {
        RelayMsg::UploadState { req: 1, have, .. } => have,
        other => panic!("unexpected {other:?}"),
    }
}

/// An upload cut on node one resumes on node two from its last checkpoint;
/// the recipient downloads it from node one, byte-exact, and deletes it
/// through node two, after which neither node has it. No node keeps a chunk
/// on its own disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_on_one_node_resumes_on_the_other_and_downloads_from_either() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = NatsCluster::start(&dir.path().join("nats"), 3).unwrap() else {
        return;
    };
    let nats = nats_config(&cluster);
    let (one, two) = two_nodes(dir.path(), &nats, |config| {
        // Checkpoints every 4 chunks, to cross several quickly.
        config.files.checkpoint_bytes = 4 * CHUNK_LEN as u64;
    })
    .await;
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let id = FileId::random();
    let key = FileKey::generate();
    let plain: Vec<u8> = (0..30 * CHUNK_LEN - 5)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 16) as u8)
        .collect();
    let size = plain.len() as u64;
    let cipher = ChunkCipher::new(&key, id, size).unwrap();
    let chunks: Vec<Vec<u8>> = (0..cipher.chunks())
        .map(|i| {
            let start = i as usize * CHUNK_LEN;
            let mut buf = plain[start..(start + CHUNK_LEN).min(plain.len())].to_vec();
            cipher.seal(i, &mut buf).unwrap();
            buf
        })
        .collect();

    let (mut r, mut w) = one.client(&alice).await;
    assert_eq!(begin(&mut r, &mut w, id, bob.public(), size).await, 0);
    send_chunks(&mut w, id, &chunks, 0..22).await;
    for want in [4, 8, 12, 16, 20] {
        match recv(&mut r).await {
            RelayMsg::UploadProgress { have, .. } => assert_eq!(have, want),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The cut.
    drop((r, w));

    let (mut r, mut w) = two.client(&alice).await;
    let have = begin(&mut r, &mut w, id, bob.public(), size).await;
    assert!((20..=22).contains(&have), "resumes at {have}");
    send_chunks(&mut w, id, &chunks, have..30).await;
    w.send(&ClientMsg::UploadEnd {
        req: 2,
        file_id: id,
    })
    .await
    .unwrap();
    w.flush().await.unwrap();
    assert_eq!(
        answer(&mut r).await,
        RelayMsg::UploadDone {
            req: 2,
            file_id: id
        }
    );

    let (mut br, mut bw) = one.client(&bob).await;
    bw.send(&ClientMsg::Download {
        req: 7,
        file_id: id,
        from: 0,
    })
    .await
    .unwrap();
    bw.flush().await.unwrap();
    let mut got = Vec::new();
    loop {
        match answer(&mut br).await {
            RelayMsg::DownloadChunk { index, data, .. } => {
                assert_eq!(index, got.len() as u64, "in order");
                got.push(data.into_vec());
            }
            RelayMsg::DownloadEnd { req: 7, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut opened = Vec::new();
    for (i, chunk) in got.iter().enumerate() {
        let mut buf = chunk.clone();
        cipher.open(i as u64, &mut buf).expect("the chunk opens");
        opened.extend_from_slice(&buf);
    }
    assert!(opened == plain, "byte-exact round trip");
    for node in ["one", "two"] {
        let blobs = dir.path().join(node).join(sotto_relay::blobs::BLOBS_DIR);
        let kept = std::fs::read_dir(&blobs).map_or(0, |d| d.count());
        assert_eq!(kept, 0, "node {node} keeps no chunk on its disk");
    }

    let (mut dr, mut dw) = two.client(&bob).await;
    dw.send(&ClientMsg::DeleteBlob {
        req: 8,
        file_id: id,
    })
    .await
    .unwrap();
    dw.flush().await.unwrap();
    assert!(matches!(
        answer(&mut dr).await,
        RelayMsg::BlobDeleted {
            req: 8,
            deleted: true
        }
    ));
    bw.send(&ClientMsg::Download {
        req: 9,
        file_id: id,
        from: 0,
    })
    .await
    .unwrap();
    bw.flush().await.unwrap();
    assert!(
        matches!(answer(&mut br).await, RelayMsg::Error { req: 9, .. }),
        "deleted for every node"
    );
    drop((r, w, br, bw, dr, dw));
    one.stop().await;
    two.stop().await;
}
