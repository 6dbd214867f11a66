//! Attacks on what the relay holds for its clients: one key's connections
//! trying to take its memory, and floods of silent or stalled sockets trying
//! to take its handshake and connection slots, while good clients go on.
//!
//! Source addresses other than 127.0.0.1 are other addresses of loopback
//! (Linux routes all of 127/8 to `lo`), so the relay sees the attacker and
//! the good client as coming from different places.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use sotto_crypto::frame::MAX_RECORD_LEN;
use sotto_crypto::link::{self, LinkReader, LinkWriter, MAX_MESSAGE_LEN};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_keys::{PublicKey, RelayKey, SecretKey};
use sotto_tests::raw::{connect_tcp_from, Raw};
use sotto_tests::{proc_status_kib, Client, Relay};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The relay's resident memory must stay below this through the attack.
const RSS_LIMIT_KIB: u64 = 256 * 1024;

/// 127.0.0.`n`.
fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Raises this process's open-file limit towards `want`; the limit reached.
fn raise_fd_limit(want: u64) -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return 0;
    };
    if soft < want {
        let _ = Resource::NOFILE.set(hard.min(want), hard);
    }
    Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(0)
}

/// Watches a process's resident memory; kills it once it passes `limit`,
/// so that a failing run does not take the machine's memory with it.
struct Watch {
    peak_kib: Arc<AtomicU64>,
    exceeded: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(pid: u32, limit_kib: u64) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let exceeded = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak_kib, exceeded, stop) = (peak_kib.clone(), exceeded.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(rss) = proc_status_kib(pid, "VmRSS") else {
                        return;
                    };
                    peak_kib.fetch_max(rss, Ordering::Relaxed);
                    if rss > limit_kib {
                        exceeded.store(true, Ordering::Relaxed);
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Self {
            peak_kib,
            exceeded,
            stop,
            thread: Some(thread),
        }
    }

    /// Panics, with the figure, if the limit was passed.
    #[track_caller]
    fn check(&self, during: &str) {
        assert!(
            !self.exceeded.load(Ordering::Relaxed),
            "the relay's RSS passed {} MiB {during} (killed at {} MiB)",
            RSS_LIMIT_KIB / 1024,
            self.peak_kib.load(Ordering::Relaxed) / 1024
        );
    }

    fn peak_kib(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Halves = (LinkReader<OwnedReadHalf>, LinkWriter<OwnedWriteHalf>);

/// An authenticated link from `from` whose socket takes in little, so that
/// what the relay sends it and it never reads stays in the relay.
async fn small_window_link(from: IpAddr, relay: &Relay, me: &SecretKey) -> Result<Halves, String> {
    let to = relay.addr.parse().map_err(|e| format!("{e}"))?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(4096)
        .map_err(|e| e.to_string())?;
    socket
        .bind(std::net::SocketAddr::new(from, 0))
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(to).await.map_err(|e| e.to_string())?;
    let key: RelayKey = relay.key.parse().map_err(|e| format!("{e}"))?;
    let (r, w) = stream.into_split();
    let (reader, writer, _) = link::connect(r, w, me, &key)
        .await
        .map_err(|e| e.to_string())?;
    Ok((reader, writer))
}

/// Fills `me`'s own mailbox with envelopes as large as the relay takes;
/// returns how many it stored.
async fn fill_own_mailbox(relay: &Relay, me: &SecretKey) -> u32 {
    const SENDS: u32 = 1100; // 64 MiB of quota is 1,024 of them
    let Raw {
        mut reader,
        mut writer,
    } = Raw::connect_from(lo(2), &relay.addr, me, &relay.key)
        .await
        .unwrap();
    let to = me.public();
    let sender = async {
        for req in 1..=SENDS {
            let envelope = ByteBuf::from(vec![0xA5; 65_536]);
            writer
                .send(&ClientMsg::Send { req, to, envelope })
                .await
                .unwrap();
        }
        writer.flush().await.unwrap();
    };
    let answers = async {
        let mut stored = 0;
        for _ in 0..SENDS {
            match tokio::time::timeout(Duration::from_secs(60), reader.recv::<RelayMsg>()).await {
                Ok(Ok(Some(RelayMsg::Stored { .. }))) => stored += 1,
                Ok(Ok(Some(RelayMsg::Error {
                    code: ErrorCode::QuotaExceeded,
                    ..
                }))) => {}
                other => panic!("unexpected answer while filling the mailbox: {other:?}"),
            }
        }
        stored
    };
    let ((), stored) = tokio::join!(sender, answers);
    stored
}

#[test]
fn one_key_cannot_take_the_relays_memory_while_a_good_client_chats() {
    const FETCHERS: usize = 100;
    const HALF_SENDERS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    // Every attacking connection is let in: what holds the memory here is
    // the byte budgets, not the limit on connections per key.
    let relay = Relay::start(
        &dir.path().join("relay"),
        Some("max_connections_per_key = 200\n"),
    );
    let watch = Watch::start(relay.pid().unwrap(), RSS_LIMIT_KIB);
    let (alice, bob) = Client::pair(&relay);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mallory = SecretKey::generate();

    let stored = rt.block_on(fill_own_mailbox(&relay, &mallory));
    assert!(stored >= 1000, "only {stored} envelopes stored");
    watch.check("while the mailbox was filled");
    let before_kib = relay.status_kib("VmRSS").unwrap_or(0);

    // The attack: connections that ask for the mailbox and read nothing
    // (the first reads one envelope, to show that delivery has begun); and
    // connections that send half of a largest message and stop. Once the
    // key's share of the buffers is taken, its later connections get
    // nothing until the write timeout closes the first ones.
    let attack = rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..FETCHERS {
            let (mut reader, mut writer) =
                small_window_link(lo(10 + (i % 10) as u8), &relay, &mallory).await?;
            let fetch = ClientMsg::Fetch { live: true };
            writer.send(&fetch).await.map_err(|e| e.to_string())?;
            writer.flush().await.map_err(|e| e.to_string())?;
            if i == 0 {
                let first =
                    tokio::time::timeout(Duration::from_secs(60), reader.recv::<RelayMsg>())
                        .await
                        .map_err(|_| "no delivery".to_owned())?
                        .map_err(|e| e.to_string())?;
                if !matches!(first, Some(RelayMsg::Deliver { .. })) {
                    return Err(format!("{first:?} where a Deliver was expected"));
                }
            }
            held.push((reader, writer));
        }
        for i in 0..HALF_SENDERS {
            let (reader, mut writer) =
                small_window_link(lo(30 + (i % 5) as u8), &relay, &mallory).await?;
            let record = MAX_RECORD_LEN - 16;
            let mut first = (MAX_MESSAGE_LEN as u32).to_le_bytes().to_vec();
            first.resize(record, 0x11);
            let half = async {
                writer.send_record_plaintext(&first).await?;
                writer.send_record_plaintext(&vec![0x22; record]).await?;
                writer.flush().await
            };
            half.await.map_err(|e| e.to_string())?;
            held.push((reader, writer));
        }
        Ok::<_, String>(held)
    });
    watch.check("while the attack was set up");
    let attack = attack.unwrap();

    // Meanwhile a good client chats, from 127.0.0.1, with the real binary.
    for i in 0..8 {
        let sent = alice.run(&["send", "bob", &format!("hello {i}")]);
        watch.check("while alice sent");
        sent.ok();
        let inbox = bob.run(&["inbox"]);
        watch.check("while bob read");
        assert!(
            inbox.ok().contains(&format!("alice: hello {i}")),
            "bob did not get message {i}"
        );
        bob.run(&["send", "alice", &format!("hi {i}")]).ok();
        assert!(alice.run(&["inbox"]).ok().contains(&format!("bob: hi {i}")));
    }
    watch.check("while the good clients chatted");
    let hwm = relay.status_kib("VmHWM").unwrap_or(u64::MAX);
    eprintln!(
        "relay RSS: {} MiB with the mailbox full, peak {} MiB under the attack (VmHWM {} MiB)",
        before_kib / 1024,
        watch.peak_kib() / 1024,
        hwm / 1024
    );
    assert!(
        hwm < RSS_LIMIT_KIB,
        "the relay's peak RSS was {} MiB",
        hwm / 1024
    );
    drop(attack);
}

/// A first handshake message: the preamble, then Noise message 1 (a
/// 32-byte ephemeral key), after which the socket goes quiet.
fn first_message(i: usize) -> Vec<u8> {
    let mut m = b"sotto\0\0\x01\x00\x20".to_vec();
    let mut e = [0u8; 32];
    e[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    e[31] = 0x40;
    m.extend_from_slice(&e);
    m
}

/// Opens `n` sockets from the addresses `from(i)`; those with `speak(i)`
/// send a first handshake message and go quiet, the others never send a byte.
async fn flood(
    addr: &str,
    n: usize,
    from: impl Fn(usize) -> IpAddr,
    speak: impl Fn(usize) -> bool,
) -> Vec<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(mut s) = connect_tcp_from(from(i), addr).await else {
            continue;
        };
        if speak(i) {
            let _ = s.write_all(&first_message(i)).await;
        }
        held.push(s);
    }
    held
}

/// How many of `held` the relay has closed.
fn closed_by_relay(held: Vec<TcpStream>) -> usize {
    use std::io::Read;
    let mut closed = 0;
    for s in held {
        let Ok(mut s) = s.into_std() else {
            continue;
        };
        let _ = s.set_nonblocking(true);
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue, // message 2 of a stalled handshake
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    closed
}

/// `n` real handshakes from `from`, one after another, each followed by a
/// `Send` that must be stored; how many made it.
async fn good_handshakes(relay: &Relay, from: IpAddr, n: usize, to: PublicKey) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let me = SecretKey::generate();
        let attempt = async {
            let mut raw = Raw::connect_from(from, &relay.addr, &me, &relay.key).await?;
            let envelope = ByteBuf::from(format!("good {i}").into_bytes());
            raw.writer
                .send(&ClientMsg::Send {
                    req: 1,
                    to,
                    envelope,
                })
                .await
                .map_err(|e| e.to_string())?;
            raw.writer.flush().await.map_err(|e| e.to_string())?;
            match raw.reader.recv::<RelayMsg>().await {
                Ok(Some(RelayMsg::Stored { req: 1 })) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        };
        // A generous bound, only so that a locked-out client fails the test
        // instead of hanging it.
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => eprintln!("good handshake {i} from {from} failed: {e}"),
            Err(_) => eprintln!("good handshake {i} from {from} timed out"),
        }
    }
    ok
}

#[test]
fn thousands_of_silent_and_stalled_sockets_from_other_addresses_do_not_lock_out_a_good_client() {
    const SILENT: usize = 3000;
    const STALLED: usize = 600;
    const GOOD: usize = 20;
    let limit = raise_fd_limit(16_384);
    if limit < (SILENT + STALLED + 2_000) as u64 {
        eprintln!("skipped: the open-file limit ({limit}) is too low for this test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Fewer connection slots than the flood has sockets, and timeouts that
    // would not free any during the test: only the relay's choice of whom
    // to close can let the good client in.
    let mut relay = Relay::start(
        &dir.path().join("relay"),
        Some(
            "max_connections = 2048\nhandshake_timeout = \"120s\"\nfirst_message_timeout = \"120s\"\n",
        ),
    );
    let (alice, bob) = Client::pair(&relay);
    let bob_key: PublicKey = bob.key.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let held = rt.block_on(flood(
        &relay.addr,
        SILENT + STALLED,
        |i| lo(2 + (i % 100) as u8),
        |i| i % 6 == 0,
    ));
    assert!(held.len() >= SILENT, "only {} sockets opened", held.len());

    let ok = rt.block_on(good_handshakes(&relay, lo(1), GOOD, bob_key));
    eprintln!(
        "{ok} of {GOOD} good handshakes from 127.0.0.1 succeeded with {} flood sockets open",
        held.len()
    );
    alice.run(&["send", "bob", "through the flood"]).ok();
    assert!(bob
        .run(&["inbox"])
        .ok()
        .contains("alice: through the flood"));
    assert_eq!(ok, GOOD, "good handshakes were locked out");

    let opened = held.len();
    let closed = closed_by_relay(held);
    eprintln!("the relay closed {closed} of {opened} flood sockets");
    let (stopped, log) = relay.terminate();
    assert!(stopped, "{log}");
    assert!(log.contains("made room for a newer"), "{log}");
    // One summary per interval, not a line per closed socket.
    let lines = log.lines().count();
    assert!(
        closed > 1000 && lines < 100,
        "{lines} log lines for {closed} closed sockets:\n{log}"
    );
}

#[test]
fn a_handshake_flood_from_one_address_does_not_block_another() {
    const FLOOD: usize = 1000;
    const GOOD: usize = 20;
    let limit = raise_fd_limit(16_384);
    if limit < (FLOOD + 2_000) as u64 {
        eprintln!("skipped: the open-file limit ({limit}) is too low for this test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        Some("handshake_timeout = \"120s\"\nfirst_message_timeout = \"120s\"\n"),
    );
    let bob_key = SecretKey::generate().public();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Handshakes begun and left hanging, all from 127.0.0.2.
    let held = rt.block_on(flood(&relay.addr, FLOOD, |_| lo(2), |_| true));
    let ok = rt.block_on(good_handshakes(&relay, lo(3), GOOD, bob_key));
    eprintln!("{ok} of {GOOD} good handshakes from 127.0.0.3 succeeded");
    let opened = held.len();
    let closed = closed_by_relay(held);
    eprintln!("the relay closed {closed} of {opened} sockets of 127.0.0.2");
    assert_eq!(ok, GOOD, "one address locked another out");
    assert!(
        opened - closed <= 64,
        "127.0.0.2 kept {} half-open connections",
        opened - closed
    );
}

#[test]
fn connections_over_the_per_key_and_per_address_limits_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        &dir.path().join("relay"),
        Some("max_connections_per_key = 2\nmax_connections_per_address = 4\n"),
    );
    let (alice, bob) = Client::pair(&relay);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Two connections of alice's key are all it may have.
    let secret = alice.secret();
    let held: Vec<Raw> = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(
                Raw::connect_from(lo(1), &relay.addr, &secret, &relay.key)
                    .await
                    .unwrap(),
            );
        }
        held
    });
    // Reading is the owner link's, proven by the key (sends go over
    // delivery links, which prove none).
    let refused = alice.run(&["inbox"]).fails();
    assert!(
        refused.contains("connections") && refused.contains(&relay.addr),
        "{refused}"
    );
    drop(held);
    alice.run(&["send", "bob", "room again"]).ok();
    assert!(bob.run(&["inbox"]).ok().contains("alice: room again"));

    // Four connections from 127.0.0.5 are all that address may have; the
    // fifth is refused after its handshake, with a reason; 127.0.0.6 is not
    // affected.
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            let me = SecretKey::generate();
            let mut raw = Raw::connect_from(lo(5), &relay.addr, &me, &relay.key)
                .await
                .unwrap();
            raw.send(&ClientMsg::Ping).await;
            assert_eq!(raw.recv().await, RelayMsg::Pong);
            held.push(raw);
        }
        let me = SecretKey::generate();
        let mut fifth = Raw::connect_from(lo(5), &relay.addr, &me, &relay.key)
            .await
            .unwrap();
        match fifth.recv().await {
            RelayMsg::Error {
                req: 0,
                code: ErrorCode::RateLimited,
                detail,
            } => assert!(detail.contains("connections"), "{detail}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let mut other = Raw::connect_from(lo(6), &relay.addr, &me, &relay.key)
            .await
            .unwrap();
        other.send(&ClientMsg::Ping).await;
        assert_eq!(other.recv().await, RelayMsg::Pong);
    });
    let (_, log) = relay.terminate();
    assert!(log.contains("max_connections_per_key"), "{log}");
    assert!(log.contains("max_connections_per_address"), "{log}");
}
