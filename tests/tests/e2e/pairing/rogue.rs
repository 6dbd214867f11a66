//! A rendezvous relay written from docs/PROTOCOL.md §6.6 for the tests: it
//! serves delivery links with `sotto_crypto::link` as any relay does, holds
//! one slot (number 1), and forwards pairing messages between its two
//! parties, but it may lie: alter the joiner's PAKE message on its way to
//! the inviter, or prove another key to the joiner than to the inviter (a
//! relay that stands between the joiner and the inviter's relay).

use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;
use sotto_crypto::link::{self, Accepted};
use sotto_crypto::wire::{DeliveryMsg, RelayHello, RelayMsg};
use sotto_keys::{RelayKey, SecretKey};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// How the rogue relay misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// None: an honest rendezvous (the control).
    None,
    /// Flips a bit of the joiner's PAKE message.
    AlterPake,
    /// Proves another static key to every connection after the first.
    OtherKey,
}

type Queue = UnboundedSender<RelayMsg>;

#[derive(Default)]
struct Parties {
    inviter: Option<Queue>,
    joiner: Option<Queue>,
}

/// The running rogue relay.
pub struct Rogue {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The key it proves to its first connection (the inviter's pin).
    pub key: String,
    _runtime: tokio::runtime::Runtime,
}

impl Rogue {
    /// Listens on a free port of 127.0.0.1.
    pub fn start(lie: Lie) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let first = SecretKey::generate();
        let other = SecretKey::generate();
        let key = RelayKey::from_bytes(*first.public().as_bytes()).to_string();
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        runtime.spawn(async move {
            let parties = Arc::new(Mutex::new(Parties::default()));
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let key = if n > 0 && lie == Lie::OtherKey {
                    other.clone()
                } else {
                    first.clone()
                };
                n += 1;
                tokio::spawn(serve(stream, key, parties.clone(), lie));
            }
        });
        Self {
            addr,
            key,
            _runtime: runtime,
        }
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    key: SecretKey,
    parties: Arc<Mutex<Parties>>,
    lie: Lie,
) {
    let (r, w) = stream.into_split();
    let hello = RelayHello {
        version: 1,
        max_envelope_len: 65_561,
    };
    let Ok(Accepted::Delivery {
        mut reader,
        mut writer,
    }) = link::accept_link(r, w, &key, &hello).await
    else {
        return;
    };
    let (tx, mut rx) = unbounded_channel::<RelayMsg>();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if writer.send(&msg).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
    });
    let mut inviter = false;
    let other = |parties: &Mutex<Parties>, inviter: bool| {
        let p = parties.lock().expect("lock");
        if inviter {
            p.joiner.clone()
        } else {
            p.inviter.clone()
        }
    };
    while let Ok(Some(msg)) = reader.recv::<DeliveryMsg>().await {
        match msg {
            DeliveryMsg::PairOpen { req } => {
                inviter = true;
                parties.lock().expect("lock").inviter = Some(tx.clone());
                let _ = tx.send(RelayMsg::PairSlot {
                    req,
                    slot: 1,
                    expires_in: 600,
                });
            }
            DeliveryMsg::PairJoin { req, message, .. } => {
                let mut message = message.into_vec();
                if lie == Lie::AlterPake {
                    if let Some(last) = message.last_mut() {
                        *last ^= 1;
                    }
                }
                parties.lock().expect("lock").joiner = Some(tx.clone());
                if let Some(to) = other(&parties, false) {
                    let _ = to.send(RelayMsg::PairMessage {
                        message: ByteBuf::from(message),
                    });
                }
                let _ = tx.send(RelayMsg::PairJoined { req });
            }
            DeliveryMsg::PairSend { message } => {
                if let Some(to) = other(&parties, inviter) {
                    let _ = to.send(RelayMsg::PairMessage { message });
                }
            }
            DeliveryMsg::Ping => {
                let _ = tx.send(RelayMsg::Pong);
            }
            _ => {}
        }
    }
    if let Some(to) = other(&parties, inviter) {
        let _ = to.send(RelayMsg::PairGone);
    }
}
