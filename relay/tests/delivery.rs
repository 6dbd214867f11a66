//! Delivery links against a real relay: what they cannot do (read,
//! acknowledge, download, delete), how tokens and first contact decide a
//! delivery, that an upload over one resumes only with its secret, that the
//! relay keeps nothing of a deliverer's key, and the limits per connection
//! and per address.

use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::delivery::{token_hash, ResumeSecret};
use sotto_crypto::file::{FileId, FileKey};
use sotto_crypto::link;
use sotto_crypto::wire::{ClientMsg, DeliveryMsg, ErrorCode, RelayMsg};
use sotto_keys::{DeliveryToken, PublicKey, RelayKey, SecretKey};
use sotto_relay::{Relay, RelayConfig};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

type Reader = link::LinkReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = link::LinkWriter<tokio::net::tcp::OwnedWriteHalf>;

fn config(dir: &std::path::Path) -> RelayConfig {
    let mut config = RelayConfig::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config
}

struct Running {
    addr: std::net::SocketAddr,
    key: RelayKey,
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

    async fn owner(&self, me: &SecretKey) -> (Reader, Writer) {
        let (r, w) = TcpStream::connect(self.addr).await.unwrap().into_split();
        let (reader, writer, _) = link::connect(r, w, me, &self.key).await.unwrap();
        (reader, writer)
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

async fn send<M: serde::Serialize>(w: &mut Writer, msg: &M) {
    w.send(msg).await.unwrap();
    w.flush().await.unwrap();
}

fn deliver(req: u32, to: PublicKey, token: Option<&DeliveryToken>) -> DeliveryMsg {
    DeliveryMsg::Send {
        req,
        to,
        token: token.cloned(),
        envelope: ByteBuf::from(vec![0x5a; 64]),
    }
}

/// Delivers one envelope on a fresh link and returns the answer.
async fn deliver_once(relay: &Running, to: PublicKey, token: Option<&DeliveryToken>) -> RelayMsg {
    let (mut r, mut w) = relay.delivery().await;
    send(&mut w, &deliver(1, to, token)).await;
    recv(&mut r).await.expect("an answer")
}

fn code(msg: &RelayMsg) -> Option<ErrorCode> {
    match msg {
        RelayMsg::Error { code, .. } => Some(*code),
        _ => None,
    }
}

async fn register(relay: &Running, owner: &SecretKey, token: &DeliveryToken, first_contact: bool) {
    let (mut r, mut w) = relay.owner(owner).await;
    let msg = ClientMsg::SetDeliveryToken {
        req: 7,
        token_hash: token_hash(token),
        first_contact,
    };
    send(&mut w, &msg).await;
    assert_eq!(recv(&mut r).await, Some(RelayMsg::TokenSet { req: 7 }));
}

/// What `owner`'s mailbox holds, by a non-live fetch.
async fn mailbox(relay: &Running, owner: &SecretKey) -> usize {
    let (mut r, mut w) = relay.owner(owner).await;
    send(&mut w, &ClientMsg::Fetch { live: false }).await;
    let mut n = 0;
    loop {
        match recv(&mut r).await {
            Some(RelayMsg::Deliver { .. }) => n += 1,
            Some(RelayMsg::Drained) => return n,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_delivery_link_cannot_fetch_acknowledge_download_or_delete() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(config(dir.path())).await;
    let bob = SecretKey::generate();
    assert_eq!(
        deliver_once(&relay, bob.public(), None).await,
        RelayMsg::Stored { req: 1 }
    );
    let file_id = FileId([9; 16]);
    for msg in [
        ClientMsg::Fetch { live: true },
        ClientMsg::Fetch { live: false },
        ClientMsg::Ack {
            req: 2,
            ids: vec![0, 1, 2, 3],
        },
        ClientMsg::Download {
            req: 3,
            file_id,
            from: 0,
        },
        ClientMsg::DeleteBlob { req: 4, file_id },
        ClientMsg::SetDeliveryToken {
            req: 5,
            token_hash: token_hash(&DeliveryToken::generate()),
            first_contact: false,
        },
    ] {
        let (mut r, mut w) = relay.delivery().await;
        send(&mut w, &msg).await;
        // Not a delivery message: the link is closed, nothing is answered.
        assert_eq!(recv(&mut r).await, None, "{msg:?}");
    }
    // The envelope is still there: no Ack reached bob's mailbox.
    assert_eq!(mailbox(&relay, &bob).await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn tokens_decide_deliveries_and_first_contact_follows_mailbox_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(config(dir.path())).await;
    let (bob, carol, dave) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let bobs = DeliveryToken::generate();
    // Never registered: a token-less delivery is a first contact, accepted.
    assert_eq!(
        deliver_once(&relay, dave.public(), None).await,
        RelayMsg::Stored { req: 1 }
    );
    register(&relay, &bob, &bobs, true).await;
    assert_eq!(
        deliver_once(&relay, bob.public(), Some(&bobs)).await,
        RelayMsg::Stored { req: 1 }
    );
    let wrong = deliver_once(&relay, bob.public(), Some(&DeliveryToken::generate())).await;
    assert_eq!(code(&wrong), Some(ErrorCode::WrongToken), "{wrong:?}");
    assert_eq!(
        deliver_once(&relay, bob.public(), None).await,
        RelayMsg::Stored { req: 1 }
    );
    // Carol takes no first contact.
    let carols = DeliveryToken::generate();
    register(&relay, &carol, &carols, false).await;
    let refused = deliver_once(&relay, carol.public(), None).await;
    assert_eq!(code(&refused), Some(ErrorCode::FirstContactRefused));
    assert_eq!(
        deliver_once(&relay, carol.public(), Some(&carols)).await,
        RelayMsg::Stored { req: 1 }
    );
    assert_eq!(mailbox(&relay, &bob).await, 2);
    assert_eq!(mailbox(&relay, &carol).await, 1);
    relay.stop().await;

    // A relay that takes no first contact at all.
    let mut closed = config(dir.path());
    closed.delivery.first_contact = false;
    let relay = Running::start(closed).await;
    let refused = deliver_once(&relay, dave.public(), None).await;
    assert_eq!(code(&refused), Some(ErrorCode::FirstContactRefused));
    // Bob's token still delivers there: the registration survived the restart.
    assert_eq!(
        deliver_once(&relay, bob.public(), Some(&bobs)).await,
        RelayMsg::Stored { req: 1 }
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_rotated_out_token_delivers_only_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(config(dir.path())).await;
    let bob = SecretKey::generate();
    let (old, new) = (DeliveryToken::generate(), DeliveryToken::generate());
    register(&relay, &bob, &old, true).await;
    register(&relay, &bob, &new, true).await;
    // Registering the same token again keeps the old one's grace.
    register(&relay, &bob, &new, true).await;
    for token in [&old, &new] {
        assert_eq!(
            deliver_once(&relay, bob.public(), Some(token)).await,
            RelayMsg::Stored { req: 1 }
        );
    }
    relay.stop().await;

    let mut no_grace = config(dir.path());
    no_grace.delivery.token_grace = Duration::ZERO;
    let relay = Running::start(no_grace).await;
    let stale = deliver_once(&relay, bob.public(), Some(&old)).await;
    assert_eq!(code(&stale), Some(ErrorCode::WrongToken), "{stale:?}");
    assert_eq!(
        deliver_once(&relay, bob.public(), Some(&new)).await,
        RelayMsg::Stored { req: 1 }
    );
    relay.stop().await;
}

#[tokio::test]
async fn first_contacts_are_held_to_their_own_rate_and_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.delivery.first_contact_rate.envelopes_per_second = 1;
    cfg.delivery.first_contact_rate.envelope_burst = 3;
    cfg.delivery.first_contact_max_messages = 2;
    let relay = Running::start(cfg).await;
    let bob = SecretKey::generate();
    let token = DeliveryToken::generate();
    register(&relay, &bob, &token, true).await;
    let (mut r, mut w) = relay.delivery().await;
    let mut answers = Vec::new();
    for req in 1..=3 {
        send(&mut w, &deliver(req, bob.public(), None)).await;
        answers.push(recv(&mut r).await.unwrap());
    }
    assert_eq!(answers[0], RelayMsg::Stored { req: 1 });
    assert_eq!(answers[1], RelayMsg::Stored { req: 2 });
    // The mailbox holds two: strangers may add no more.
    assert_eq!(code(&answers[2]), Some(ErrorCode::QuotaExceeded));
    // A contact's delivery is not held to the first-contact quota.
    send(&mut w, &deliver(4, bob.public(), Some(&token))).await;
    assert_eq!(recv(&mut r).await, Some(RelayMsg::Stored { req: 4 }));
    // The first-contact bucket of one mailbox (burst 3, one a second) runs
    // dry in a burst of ten, contacts or not.
    let dave = SecretKey::generate();
    let mut limited = 0;
    for req in 10..20 {
        send(&mut w, &deliver(req, dave.public(), None)).await;
        let answer = recv(&mut r).await.unwrap();
        limited += usize::from(code(&answer) == Some(ErrorCode::RateLimited));
    }
    assert!(limited >= 1, "no first contact was rate limited");
    relay.stop().await;
}

#[tokio::test]
async fn a_delivery_upload_resumes_only_with_the_same_secret() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(config(dir.path())).await;
    let bob = SecretKey::generate();
    let file_id = FileId([4; 16]);
    let key = FileKey::from_parts(Zeroizing::new([1; 32]), [2; 7]);
    let mine = ResumeSecret::for_file(&key, file_id);
    let other = ResumeSecret::for_file(
        &FileKey::from_parts(Zeroizing::new([3; 32]), [2; 7]),
        file_id,
    );
    let size = 100_000; // two chunks
    let begin = |req, resume: &ResumeSecret| DeliveryMsg::UploadBegin {
        req,
        file_id,
        to: bob.public(),
        token: None,
        size,
        resume: resume.clone(),
    };
    {
        let (mut r, mut w) = relay.delivery().await;
        send(&mut w, &begin(1, &mine)).await;
        assert_eq!(
            recv(&mut r).await,
            Some(RelayMsg::UploadState {
                req: 1,
                file_id,
                have: 0
            })
        );
    }
    let (mut r, mut w) = relay.delivery().await;
    send(&mut w, &begin(2, &other)).await;
    let refused = recv(&mut r).await.unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::BadRequest), "{refused:?}");
    send(&mut w, &begin(3, &mine)).await;
    assert!(matches!(
        recv(&mut r).await,
        Some(RelayMsg::UploadState { req: 3, .. })
    ));
    relay.stop().await;
}

/// Every byte under `dir`.
fn everything_under(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(everything_under(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_data_dir_holds_no_key_of_a_deliverer() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Running::start(config(dir.path())).await;
    let alice = SecretKey::generate();
    let bob = SecretKey::generate();
    let token = DeliveryToken::generate();
    register(&relay, &bob, &token, true).await;
    let (mut r, mut w) = relay.delivery().await;
    for req in 1..=5 {
        send(&mut w, &deliver(req, bob.public(), Some(&token))).await;
        assert_eq!(recv(&mut r).await, Some(RelayMsg::Stored { req }));
    }
    let file_id = FileId([6; 16]);
    let key = FileKey::from_parts(Zeroizing::new([8; 32]), [1; 7]);
    send(
        &mut w,
        &DeliveryMsg::UploadBegin {
            req: 9,
            file_id,
            to: bob.public(),
            token: Some(token.clone()),
            size: 10,
            resume: ResumeSecret::for_file(&key, file_id),
        },
    )
    .await;
    assert!(matches!(
        recv(&mut r).await,
        Some(RelayMsg::UploadState { .. })
    ));
    send(
        &mut w,
        &DeliveryMsg::UploadChunk {
            file_id,
            index: 0,
            data: ByteBuf::from(vec![7; 26]),
        },
    )
    .await;
    send(&mut w, &DeliveryMsg::UploadEnd { req: 10, file_id }).await;
    loop {
        match recv(&mut r).await {
            Some(RelayMsg::UploadDone { req: 10, .. }) => break,
            Some(RelayMsg::UploadProgress { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    drop((r, w));
    relay.stop().await;
    let stored = everything_under(dir.path());
    let raw = alice.public();
    let raw = raw.as_bytes();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!contains(&stored, raw));
    assert!(!contains(&stored, hex.as_bytes()));
    assert!(!contains(&stored, alice.public().to_string().as_bytes()));
    // The token itself is not there either, only its hash.
    assert!(!contains(&stored, token.as_bytes()));
    assert!(contains(&stored, &token_hash(&token).0));
}

#[tokio::test]
async fn delivery_links_are_rate_limited_per_connection_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.delivery.per_connection.envelopes_per_second = 1;
    cfg.delivery.per_connection.envelope_burst = 3;
    cfg.delivery.per_address.envelopes_per_second = 1;
    cfg.delivery.per_address.envelope_burst = 4;
    let relay = Running::start(cfg).await;
    let bob = SecretKey::generate();
    let token = DeliveryToken::generate();
    register(&relay, &bob, &token, true).await;
    let mut passed = Vec::new();
    for _ in 0..2 {
        let (mut r, mut w) = relay.delivery().await;
        let mut n = 0;
        for req in 1..=10 {
            send(&mut w, &deliver(req, bob.public(), Some(&token))).await;
            let answer = recv(&mut r).await.unwrap();
            match code(&answer) {
                None => n += 1,
                Some(c) => assert_eq!(c, ErrorCode::RateLimited, "{answer:?}"),
            }
        }
        passed.push(n);
    }
    // The first link is held to its own burst of three (one more if a
    // second went by); the second has a fresh bucket of three, but its
    // address has only one left (again, one more if a second went by).
    assert!((3..10).contains(&passed[0]), "{passed:?}");
    assert!(
        passed[1] <= 2,
        "the address's bucket did not hold: {passed:?}"
    );
    relay.stop().await;
}
