//! Rendezvous slots against a real relay, over real delivery links: a slot
//! forwards between its two parties, takes one join, tells the party left
//! when the other goes, is bounded per address, and leaves nothing on disk.

use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::link;
use sotto_crypto::wire::{DeliveryMsg, ErrorCode, RelayMsg};
use sotto_keys::RelayKey;
use sotto_relay::{Relay, RelayConfig};
use tokio::net::TcpStream;

type Reader = link::LinkReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = link::LinkWriter<tokio::net::tcp::OwnedWriteHalf>;

struct Running {
    addr: std::net::SocketAddr,
    key: RelayKey,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sotto_relay::RelayError>>,
}

impl Running {
    async fn start(dir: &std::path::Path, edit: impl FnOnce(&mut RelayConfig)) -> Self {
        let mut config = RelayConfig::defaults();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.to_owned();
        edit(&mut config);
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

    async fn delivery(&self) -> (Reader, Writer) {
        let (r, w) = TcpStream::connect(self.addr).await.unwrap().into_split();
        let (reader, writer, _) = link::connect_delivery(r, w, &self.key).await.unwrap();
        (reader, writer)
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn recv(r: &mut Reader) -> Option<RelayMsg> {
    tokio::time::timeout(Duration::from_secs(20), r.recv::<RelayMsg>())
        .await
        .expect("the relay answers or closes")
        .ok()
        .flatten()
}

async fn send(w: &mut Writer, msg: &DeliveryMsg) {
    w.send(msg).await.unwrap();
    w.flush().await.unwrap();
}

async fn open(r: &mut Reader, w: &mut Writer) -> u32 {
    send(w, &DeliveryMsg::PairOpen { req: 1 }).await;
    match recv(r).await {
        Some(RelayMsg::PairSlot {
            req: 1,
            slot,
            expires_in: 600,
        }) => slot,
        other => panic!("expected PairSlot, got {other:?}"),
    }
}

fn bytes(b: &[u8]) -> ByteBuf {
    ByteBuf::from(b.to_vec())
}

const MARK: &[u8] = b"pairing-marker-0123456789";

#[tokio::test]
async fn a_slot_forwards_both_ways_takes_one_join_and_ends_with_a_party() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(dir.path(), |_| {}).await;
    let (mut ir, mut iw) = relay.delivery().await;
    let slot = open(&mut ir, &mut iw).await;

    let (mut jr, mut jw) = relay.delivery().await;
    let join = DeliveryMsg::PairJoin {
        req: 2,
        slot,
        message: bytes(MARK),
    };
    send(&mut jw, &join).await;
    assert_eq!(recv(&mut jr).await, Some(RelayMsg::PairJoined { req: 2 }));
    assert_eq!(
        recv(&mut ir).await,
        Some(RelayMsg::PairMessage {
            message: bytes(MARK)
        })
    );
    send(
        &mut iw,
        &DeliveryMsg::PairSend {
            message: bytes(b"reply"),
        },
    )
    .await;
    assert_eq!(
        recv(&mut jr).await,
        Some(RelayMsg::PairMessage {
            message: bytes(b"reply")
        })
    );
    send(
        &mut jw,
        &DeliveryMsg::PairSend {
            message: bytes(b"answer"),
        },
    )
    .await;
    assert_eq!(
        recv(&mut ir).await,
        Some(RelayMsg::PairMessage {
            message: bytes(b"answer")
        })
    );

    // One join per slot: a second joiner, and a slot never opened, find
    // nothing, and the inviter hears nothing of them.
    for slot in [slot, slot.wrapping_add(1_000_000)] {
        let (mut xr, mut xw) = relay.delivery().await;
        send(
            &mut xw,
            &DeliveryMsg::PairJoin {
                req: 3,
                slot,
                message: bytes(b"guess"),
            },
        )
        .await;
        match recv(&mut xr).await {
            Some(RelayMsg::Error {
                req: 3,
                code: ErrorCode::NoSuchSlot,
                ..
            }) => {}
            other => panic!("expected NoSuchSlot, got {other:?}"),
        }
    }

    // The joiner goes: the inviter is told, and the slot is gone.
    drop((jr, jw));
    assert_eq!(recv(&mut ir).await, Some(RelayMsg::PairGone));
    drop((ir, iw));
    relay.stop().await;
    for entry in walk(dir.path()) {
        let data = std::fs::read(&entry).unwrap();
        assert!(
            !data.windows(MARK.len()).any(|w| w == MARK),
            "{} holds a pairing message",
            entry.display()
        );
    }
}

#[tokio::test]
async fn slots_per_address_and_message_size_are_bounded_and_sends_need_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(dir.path(), |c| {
        c.pairing.max_slots_per_address = 1;
        c.pairing.max_message_len = 1024;
    })
    .await;
    let (mut ir, mut iw) = relay.delivery().await;
    let slot = open(&mut ir, &mut iw).await;
    let (mut xr, mut xw) = relay.delivery().await;
    send(&mut xw, &DeliveryMsg::PairOpen { req: 5 }).await;
    match recv(&mut xr).await {
        Some(RelayMsg::Error {
            req: 5,
            code: ErrorCode::RateLimited,
            detail,
        }) => assert!(detail.contains("pairing slots"), "{detail}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }

    // A message without a slot, and one over the limit, are protocol
    // violations: told as such, then the connection ends.
    let (mut sr, mut sw) = relay.delivery().await;
    send(
        &mut sw,
        &DeliveryMsg::PairSend {
            message: bytes(b"x"),
        },
    )
    .await;
    violation(&mut sr).await;
    let (mut jr, mut jw) = relay.delivery().await;
    send(
        &mut jw,
        &DeliveryMsg::PairJoin {
            req: 6,
            slot,
            message: ByteBuf::from(vec![0; 1025]),
        },
    )
    .await;
    violation(&mut jr).await;
    // Refused before it joined: the slot still takes its one join.
    let (mut jr, mut jw) = relay.delivery().await;
    send(
        &mut jw,
        &DeliveryMsg::PairJoin {
            req: 7,
            slot,
            message: bytes(b"start"),
        },
    )
    .await;
    assert_eq!(recv(&mut jr).await, Some(RelayMsg::PairJoined { req: 7 }));
    drop((ir, iw, jr, jw));
    relay.stop().await;
}

async fn violation(r: &mut Reader) {
    match recv(r).await {
        Some(RelayMsg::Error {
            req: 0,
            code: ErrorCode::BadRequest,
            ..
        }) => {}
        other => panic!("expected a protocol violation, got {other:?}"),
    }
    assert_eq!(recv(r).await, None);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
