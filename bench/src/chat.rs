//! Chat through the relay: send-to-delivery latency, and durable envelopes
//! per second among many clients.
//!
//! Every client is a bare link client ([`crate::link_client`]). A receiver
//! asks for its mailbox with `Fetch { live: true }` and acknowledges what it
//! gets, in batches of whatever has arrived, as a client would; a sender's
//! `Send` is answered by `Stored` once the envelope is durable, while the
//! relay pushes `Deliver` to a live recipient as soon as the envelope has its
//! id, before that commit; the latency measured is send to `Deliver`.
//!
//! A sender sends either over its own owner link (the rows of one relay) or
//! over a delivery link presenting the recipient's token ([`Route`]; the
//! rows across relays and over delivery links, in [`crate::across`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use sotto_crypto::link::{LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, DeliveryMsg, RelayMsg};
use sotto_crypto::LinkError;
use sotto_keys::{DeliveryToken, PublicKey};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::baseline::{fsync_probe, Baselines};
use crate::link_client::{self, age, stamped_envelope, Client, ENVELOPE_LEN};
use crate::relay_proc::RelayChild;
use crate::report::{cpu_secs, Samples, Table, Verdict};
use crate::Scale;

/// `Send`s a throughput client keeps outstanding.
pub(crate) const WINDOW: usize = 8;
/// A delivery slower than this under load counts as stalled in the notes.
pub(crate) const STALL: Duration = Duration::from_millis(5);
/// How long stragglers may take once sending stops.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);

/// The receiving and sending halves of one link.
pub(crate) type Halves = (LinkReader<OwnedReadHalf>, LinkWriter<OwnedWriteHalf>);

/// How a sender reaches its recipient's mailbox.
#[derive(Clone)]
pub(crate) enum Route {
    /// `ClientMsg::Send` over the sender's owner link, on the recipient's relay.
    Owner(PublicKey),
    /// `DeliveryMsg::Send` over a delivery link, presenting the token.
    Delivery(PublicKey, DeliveryToken),
}

impl Route {
    /// Writes (without flushing) one stamped envelope's `Send`.
    async fn send(&self, w: &mut LinkWriter<OwnedWriteHalf>, req: u32) -> Result<(), LinkError> {
        let envelope = ByteBuf::from(stamped_envelope());
        match self {
            Route::Owner(to) => {
                w.send(&ClientMsg::Send {
                    req,
                    to: *to,
                    envelope,
                })
                .await
            }
            Route::Delivery(to, token) => {
                w.send(&DeliveryMsg::Send {
                    req,
                    to: *to,
                    token: Some(token.clone()),
                    envelope,
                })
                .await
            }
        }
    }
}

/// What a client does in a run.
#[derive(Clone, Default)]
pub(crate) struct Role {
    /// Sends there when told (or on credit when `windowed`).
    pub to: Option<Route>,
    /// Fetches its mailbox live and acknowledges what arrives (owner links).
    pub fetch: bool,
    /// Sends one more on each `Stored`, until stopping.
    pub windowed: bool,
    /// Records each delivery's latency.
    pub record: bool,
}

/// Counters shared by every client of a run.
#[derive(Default)]
pub(crate) struct Stats {
    pub sent: AtomicU64,
    pub stored: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
    pub drained: AtomicU64,
    pub stop: AtomicBool,
    pub samples: Mutex<Samples>,
}

impl Stats {
    fn error(&self, msg: &RelayMsg) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("sotto-bench: the relay refused a request: {msg:?}");
        }
    }
}

/// What a client's writer is asked to do.
pub(crate) enum Cmd {
    /// Send one envelope now.
    Send,
    /// A `Send` was stored: send another unless stopping (windowed senders).
    Credit,
    /// Acknowledge this delivered envelope.
    Ack(u64),
}

/// A running client: its reader and writer tasks, and the writer's queue.
pub(crate) struct Running {
    pub tx: mpsc::UnboundedSender<Cmd>,
    tasks: [JoinHandle<()>; 2],
}

impl Running {
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the tasks of a client on the link `(reader, writer)` in `role`.
pub(crate) async fn start(
    (reader, mut writer): Halves,
    role: Role,
    stats: Arc<Stats>,
) -> anyhow::Result<Running> {
    if role.fetch {
        writer.send(&ClientMsg::Fetch { live: true }).await?;
        writer.flush().await?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let w = tokio::spawn(write_loop(writer, rx, role.to, stats.clone()));
    let r = tokio::spawn(read_loop(
        reader,
        tx.clone(),
        role.windowed,
        role.record,
        stats,
    ));
    Ok(Running { tx, tasks: [r, w] })
}

/// An owner link's halves.
pub(crate) fn owner(c: Client) -> Halves {
    (c.reader, c.writer)
}

async fn write_loop(
    mut w: LinkWriter<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    to: Option<Route>,
    stats: Arc<Stats>,
) {
    let mut req: u32 = 0;
    let mut acks = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut sends = 0usize;
        let mut take = |cmd: Cmd| match cmd {
            Cmd::Send => sends += 1,
            Cmd::Credit if !stats.stop.load(Ordering::Relaxed) => sends += 1,
            Cmd::Credit => {}
            Cmd::Ack(id) => acks.push(id),
        };
        take(first);
        // Everything already queued goes out with one flush.
        while let Ok(cmd) = rx.try_recv() {
            take(cmd);
        }
        if !acks.is_empty() {
            req = req.wrapping_add(1);
            let ack = ClientMsg::Ack {
                req,
                ids: std::mem::take(&mut acks),
            };
            if w.send(&ack).await.is_err() {
                return;
            }
        }
        if let Some(to) = &to {
            for _ in 0..sends {
                req = req.wrapping_add(1);
                if to.send(&mut w, req).await.is_err() {
                    return;
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop(
    mut r: LinkReader<OwnedReadHalf>,
    tx: mpsc::UnboundedSender<Cmd>,
    windowed: bool,
    record: bool,
    stats: Arc<Stats>,
) {
    while let Ok(Some(msg)) = r.recv::<RelayMsg>().await {
        match msg {
            RelayMsg::Deliver { id, envelope, .. } => {
                if record {
                    if let (Some(d), Ok(mut s)) = (age(&envelope), stats.samples.lock()) {
                        s.push(d);
                    }
                }
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(Cmd::Ack(id));
            }
            RelayMsg::Stored { .. } => {
                stats.stored.fetch_add(1, Ordering::Relaxed);
                if windowed {
                    let _ = tx.send(Cmd::Credit);
                }
            }
            RelayMsg::Drained => {
                stats.drained.fetch_add(1, Ordering::Relaxed);
            }
            msg @ RelayMsg::Error { .. } => stats.error(&msg),
            _ => {}
        }
    }
}

/// Waits until `done()` or `limit` passes.
pub(crate) async fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Latency for one idle pair and for many pairs under load; adds the rows.
pub async fn latency(
    scale: &Scale,
    tmp: &Path,
    base: &Baselines,
    t: &mut Table,
) -> anyhow::Result<()> {
    let relay = RelayChild::start(tmp, "relay-chat").await?;
    let fsync_before = fsync_probe(tmp).await?;
    let mut idle = idle_pair(&relay, scale.idle_messages, None).await?;
    let mut paced = idle_pair(&relay, scale.idle_messages, Some(Duration::from_millis(1))).await?;
    let Loaded {
        samples: mut loaded,
        sent,
        delivered,
        errors,
        relay_cpu,
        bench_cpu,
    } = on_one_thread(|| loaded_pairs(&relay, scale))?;
    let fsync_after = fsync_probe(tmp).await?;
    let counts = relay.stop().await;
    std::fs::remove_dir_all(tmp.join("relay-chat"))?;

    t.section(&format!(
        "chat, send -> relay -> Deliver (pushed before the commit), {ENVELOPE_LEN} B envelopes"
    ));
    let (p50, p99) = (idle.percentile_us(50.0), idle.percentile_us(99.0));
    t.row(
        &format!("1 idle pair, back to back, p50 ({} msgs)", idle.len()),
        format!("{p50:.0} µs"),
        format!("echo p50 {:.0} µs", base.echo_p50_us),
        Some(p50 / base.echo_p50_us),
        "< 4x echo",
        Verdict::of(p50 < 4.0 * base.echo_p50_us),
    );
    t.row(
        "1 idle pair, back to back, p99",
        format!("{p99:.0} µs"),
        format!("echo p99 {:.0} µs", base.echo_p99_us),
        Some(p99 / base.echo_p99_us),
        "",
        Verdict::None,
    );
    let (p50, p99) = (paced.percentile_us(50.0), paced.percentile_us(99.0));
    t.row(
        &format!("1 idle pair, 1 ms apart, p50 ({} msgs)", paced.len()),
        format!("{p50:.0} µs"),
        format!("paced echo p50 {:.0} µs", base.echo_paused_us.0),
        Some(p50 / base.echo_paused_us.0),
        "",
        Verdict::None,
    );
    t.row(
        "1 idle pair, 1 ms apart, p99",
        format!("{p99:.0} µs"),
        format!("paced echo p99 {:.0} µs", base.echo_paused_us.1),
        Some(p99 / base.echo_paused_us.1),
        "",
        Verdict::None,
    );
    let (p50, p99) = (loaded.percentile_us(50.0), loaded.percentile_us(99.0));
    let label = format!("{} pairs, {} msgs/s total", scale.pairs, scale.pairs_rate);
    t.row(
        &format!("{label}, p50"),
        format!("{p50:.0} µs"),
        format!("echo p50 {:.0} µs", base.echo_p50_us),
        Some(p50 / base.echo_p50_us),
        "",
        Verdict::None,
    );
    t.row(
        &format!("{label}, p99"),
        format!("{p99:.0} µs"),
        format!("echo p99 {:.0} µs", base.echo_p99_us),
        Some(p99 / base.echo_p99_us),
        "< 2000 µs",
        Verdict::of(p99 < 2000.0),
    );
    t.note(format!(
        "chat: deliveries are pushed before their commit; 4 KiB overwrite + fdatasync ran at \
         {fsync_before:.0}/s just before this section and {fsync_after:.0}/s just after"
    ));
    let (over, slowest) = loaded.tail(STALL);
    t.note(format!(
        "chat under load: {sent} sent in {:.0} s, {delivered} delivered, {errors} refused; \
         latencies from every delivered envelope ({over} over {} ms, the slowest {slowest:.1} \
         ms); the relay used {:.0}% of a core, the bench's clients {:.0}% (on one thread: see \
         `on_one_thread`)",
        scale.pairs_secs,
        STALL.as_millis(),
        relay_cpu * 100.0,
        bench_cpu * 100.0
    ));
    if let Some(c) = counts {
        t.note(store_counts("chat", &c));
    }
    Ok(())
}

/// One message at a time, each sent after the previous was delivered (and
/// `pace` later, if given); the receiver acknowledges each. Back to back it
/// is measured as the echo baseline is; paced, every message finds the
/// relay's and the clients' threads asleep, as a person's chat does.
async fn idle_pair(
    relay: &RelayChild,
    messages: usize,
    pace: Option<Duration>,
) -> anyhow::Result<Samples> {
    let sender = link_client::connect(relay.addr, relay.key).await?;
    let receiver = link_client::connect(relay.addr, relay.key).await?;
    let to = Route::Owner(receiver.key);
    ping_pong(owner(sender), &to, receiver, messages, pace).await
}

/// The idle pair's exchange: `sender` sends one envelope along `to`, waits
/// for `receiver` (an owner link) to be handed it and to acknowledge it,
/// then sends the next; the first tenth are warm-up.
pub(crate) async fn ping_pong(
    (mut s_reader, mut s_writer): Halves,
    to: &Route,
    mut receiver: Client,
    messages: usize,
    pace: Option<Duration>,
) -> anyhow::Result<Samples> {
    // The sender's `Stored` answers are read and dropped; a refusal ends
    // the run, as its envelope will never be delivered.
    let (refused_tx, mut refused) = tokio::sync::oneshot::channel::<String>();
    let drain = tokio::spawn(async move {
        while let Ok(Some(msg)) = s_reader.recv::<RelayMsg>().await {
            if let RelayMsg::Error { detail, .. } = msg {
                let _ = refused_tx.send(detail);
                return;
            }
        }
    });
    receiver
        .writer
        .send(&ClientMsg::Fetch { live: true })
        .await?;
    receiver.writer.flush().await?;
    loop {
        match receiver.reader.recv::<RelayMsg>().await? {
            Some(RelayMsg::Drained) => break,
            Some(_) => {}
            None => anyhow::bail!("the relay closed the connection"),
        }
    }
    let mut samples = Samples::default();
    let warmup = messages / 10;
    for i in 0..messages + warmup {
        let req = u32::try_from(i).unwrap_or(u32::MAX);
        to.send(&mut s_writer, req).await?;
        s_writer.flush().await?;
        let id = loop {
            let msg = tokio::select! {
                biased;
                msg = receiver.reader.recv::<RelayMsg>() => msg?,
                detail = &mut refused => {
                    anyhow::bail!("relay refused: {}", detail.unwrap_or_default())
                }
            };
            match msg {
                Some(RelayMsg::Deliver { id, envelope, .. }) => {
                    if let (Some(d), true) = (age(&envelope), i >= warmup) {
                        samples.push(d);
                    }
                    break id;
                }
                Some(RelayMsg::Error { detail, .. }) => anyhow::bail!("relay refused: {detail}"),
                Some(_) => {}
                None => anyhow::bail!("the relay closed the connection"),
            }
        };
        receiver
            .writer
            .send(&ClientMsg::Ack { req, ids: vec![id] })
            .await?;
        receiver.writer.flush().await?;
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
    }
    drain.abort();
    Ok(samples)
}

/// What the loaded run saw.
pub(crate) struct Loaded {
    pub samples: Samples,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    /// Cores' worth of CPU the relays used while sending.
    pub relay_cpu: f64,
    /// Cores' worth of CPU the bench's clients used while sending.
    pub bench_cpu: f64,
}

/// One sender and its recipient in the loaded run.
pub(crate) struct Pair {
    /// The link the sender sends on.
    pub sender: Halves,
    /// How it reaches the recipient.
    pub to: Route,
    /// The recipient's owner link.
    pub receiver: Client,
}

/// Runs a loaded run's clients on a thread of their own, with a runtime of
/// one thread, and waits for them.
///
/// The clients of a loaded run stand for people on other machines; here they
/// share the relay's two cores. On a runtime with a worker per core they
/// took both cores in slices of 3-4 ms whenever deliveries came in bursts,
/// and `perf sched` showed the relay's workers waiting that long to run:
/// the run's p99 measured the scheduler rather than the relay. On one thread
/// the generator can take at most one core, as another machine's clients
/// would take none of the relay's, and the relay keeps the other.
pub(crate) fn on_one_thread<T, F>(make: impl FnOnce() -> F + Send) -> anyhow::Result<T>
where
    T: Send,
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(make())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the load generator's thread panicked"))?
        })
    })
}

/// `scale.pairs` pairs on one relay, sending over their owner links.
async fn loaded_pairs(relay: &RelayChild, scale: &Scale) -> anyhow::Result<Loaded> {
    let clients = link_client::connect_many(relay.addr, relay.key, 2 * scale.pairs).await?;
    let mut clients = clients.into_iter();
    let mut pairs = Vec::new();
    while let (Some(s), Some(r)) = (clients.next(), clients.next()) {
        pairs.push(Pair {
            sender: owner(s),
            to: Route::Owner(r.key),
            receiver: r,
        });
    }
    run_loaded(pairs, &[relay], scale).await
}

/// Every sender paced at its share of `scale.pairs_rate`, staggered, for
/// `scale.pairs_secs`; every delivery's latency is recorded.
pub(crate) async fn run_loaded(
    pairs: Vec<Pair>,
    relays: &[&RelayChild],
    scale: &Scale,
) -> anyhow::Result<Loaded> {
    let n = pairs.len();
    anyhow::ensure!(n > 0, "too few clients connected");
    let stats = Arc::new(Stats::default());
    let mut running = Vec::new();
    let mut senders = Vec::new();
    for Pair {
        sender,
        to,
        receiver,
    } in pairs
    {
        let receiving = Role {
            fetch: true,
            record: true,
            ..Role::default()
        };
        running.push(start(owner(receiver), receiving, stats.clone()).await?);
        let sending = Role {
            to: Some(to),
            ..Role::default()
        };
        let s = start(sender, sending, stats.clone()).await?;
        senders.push(s.tx.clone());
        running.push(s);
    }
    let n_u64 = n as u64;
    wait_for(Duration::from_secs(10), || {
        stats.drained.load(Ordering::Relaxed) >= n_u64
    })
    .await;

    let relays_cpu = || relays.iter().map(|r| r.cpu_secs()).sum::<f64>();
    let (relay_cpu0, bench_cpu0, cpu_t0) = (relays_cpu(), cpu_secs("self"), Instant::now());
    let period = Duration::from_secs_f64(n as f64 / scale.pairs_rate as f64);
    let duration = Duration::from_secs_f64(scale.pairs_secs);
    let begin = tokio::time::Instant::now();
    let mut pacers = Vec::new();
    for (i, tx) in senders.into_iter().enumerate() {
        let offset = period.mul_f64(i as f64 / n as f64);
        pacers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(begin + offset, period);
            while begin.elapsed() < duration {
                tick.tick().await;
                if tx.send(Cmd::Send).is_err() {
                    return;
                }
            }
        }));
    }
    for p in pacers {
        let _ = p.await;
    }
    let took = cpu_t0.elapsed().as_secs_f64();
    let cpu = (
        (relays_cpu() - relay_cpu0) / took,
        (cpu_secs("self") - bench_cpu0) / took,
    );
    stats.stop.store(true, Ordering::Relaxed);
    wait_for(DRAIN, || {
        let sent = stats.sent.load(Ordering::Relaxed);
        stats.delivered.load(Ordering::Relaxed) >= sent
    })
    .await;
    for r in &running {
        r.abort();
    }
    let samples = stats
        .samples
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    Ok(Loaded {
        samples,
        sent: stats.sent.load(Ordering::Relaxed),
        delivered: stats.delivered.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        relay_cpu: cpu.0,
        bench_cpu: cpu.1,
    })
}

/// Durable envelopes per second among `scale.clients` connected clients, each
/// sending to the next over its owner link with a window of outstanding
/// `Send`s; adds the rows.
pub async fn throughput(scale: &Scale, tmp: &Path, t: &mut Table) -> anyhow::Result<()> {
    let relay = RelayChild::start(tmp, "relay-throughput").await?;
    let fsync_before = fsync_probe(tmp).await?;
    let n = scale.clients;
    let clients = link_client::connect_many(relay.addr, relay.key, n).await?;
    let keys: Vec<PublicKey> = clients.iter().map(|c| c.key).collect();
    let stats = Arc::new(Stats::default());
    let mut running = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let role = Role {
            to: Some(Route::Owner(keys[(i + 1) % keys.len()])),
            fetch: true,
            windowed: true,
            record: false,
        };
        running.push(start(owner(c), role, stats.clone()).await?);
    }
    let pumped = pump(&[&relay], scale, &running, &stats, n).await;
    for r in &running {
        r.abort();
    }
    let fsync_after = fsync_probe(tmp).await?;
    let counts = relay.stop().await;
    std::fs::remove_dir_all(tmp.join("relay-throughput"))?;
    t.section(&format!(
        "relay throughput, {n} clients, {ENVELOPE_LEN} B envelopes, {WINDOW} Sends outstanding each"
    ));
    pumped.report(
        t,
        "relay throughput",
        scale,
        (fsync_before, fsync_after),
        counts,
        50_000.0,
    );
    Ok(())
}

/// What a throughput run measured.
pub(crate) struct Pumped {
    /// Envelopes delivered per second.
    delivered: f64,
    /// `Stored` answers per second.
    stored: f64,
    /// Requests refused over the whole run.
    errors: u64,
    /// Cores' worth of CPU of the relay and of the bench.
    relay_cpu: f64,
    bench_cpu: f64,
    /// Clients sending.
    clients: usize,
}

/// Starts the windows of `running` (whose readers expect `fetchers`
/// `Drained`), warms up, measures, then stops and drains them.
pub(crate) async fn pump(
    relays: &[&RelayChild],
    scale: &Scale,
    running: &[Running],
    stats: &Stats,
    fetchers: usize,
) -> Pumped {
    let fetchers_u64 = fetchers as u64;
    wait_for(Duration::from_secs(30), || {
        stats.drained.load(Ordering::Relaxed) >= fetchers_u64
    })
    .await;
    let mut clients = 0;
    for r in running {
        for _ in 0..WINDOW {
            let _ = r.tx.send(Cmd::Send);
        }
        clients += 1;
    }
    tokio::time::sleep(Duration::from_secs_f64(scale.throughput_warmup_secs)).await;
    let (d0, s0, t0) = (
        stats.delivered.load(Ordering::Relaxed),
        stats.stored.load(Ordering::Relaxed),
        Instant::now(),
    );
    let relays_cpu = || relays.iter().map(|r| r.cpu_secs()).sum::<f64>();
    let (relay_cpu0, bench_cpu0) = (relays_cpu(), cpu_secs("self"));
    tokio::time::sleep(Duration::from_secs_f64(scale.throughput_secs)).await;
    let (d1, s1, took) = (
        stats.delivered.load(Ordering::Relaxed),
        stats.stored.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let relay_cpu = (relays_cpu() - relay_cpu0) / took;
    let bench_cpu = (cpu_secs("self") - bench_cpu0) / took;
    stats.stop.store(true, Ordering::Relaxed);
    wait_for(DRAIN, || {
        stats.delivered.load(Ordering::Relaxed) >= stats.stored.load(Ordering::Relaxed)
    })
    .await;
    Pumped {
        delivered: (d1 - d0) as f64 / took,
        stored: (s1 - s0) as f64 / took,
        errors: stats.errors.load(Ordering::Relaxed),
        relay_cpu,
        bench_cpu,
        clients,
    }
}

impl Pumped {
    /// Adds the rows and notes of a throughput section named `name`, beside
    /// the fdatasync rate probed just before and just after it.
    pub(crate) fn report(
        &self,
        t: &mut Table,
        name: &str,
        scale: &Scale,
        (fsync_before, fsync_after): (f64, f64),
        counts: Option<crate::relay_proc::StoreCounts>,
        target: f64,
    ) {
        // The disk as it was during this section, not at the start of the run.
        let fsyncs = (fsync_before + fsync_after) / 2.0;
        let Pumped {
            delivered, stored, ..
        } = *self;
        t.row(
            "envelopes stored durably and delivered",
            format!("{delivered:.0} /s"),
            format!("fdatasync {fsyncs:.0} /s"),
            Some(delivered / fsyncs),
            &format!(">= {target:.0} /s"),
            Verdict::of(delivered >= target),
        );
        t.row(
            "envelopes stored (Stored answers)",
            format!("{stored:.0} /s"),
            format!("fdatasync {fsyncs:.0} /s"),
            Some(stored / fsyncs),
            "",
            Verdict::None,
        );
        if self.errors > 0 {
            t.note(format!("{name}: {} requests refused", self.errors));
        }
        t.note(format!(
            "{name}: the relay processes used {:.0}% of a core and the bench's {} clients {:.0}% \
             (this machine has {} cores, shared by both)",
            self.relay_cpu * 100.0,
            self.clients,
            self.bench_cpu * 100.0,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
        t.note(format!(
            "{name}: measured over {:.0} s after {:.1} s of warm-up; receivers acknowledge \
             what they get in batches; the ratio to fdatasync/s (mean of {fsync_before:.0} just \
             before and {fsync_after:.0} just after) is the batching group commit buys",
            scale.throughput_secs, scale.throughput_warmup_secs
        ));
        if let Some(c) = counts {
            t.note(store_counts(name, &c));
        }
    }
}

/// What the relay's store did in a section: how many envelopes reached the
/// disk, and how many were acknowledged before their batch was written.
pub(crate) fn store_counts(section: &str, c: &crate::relay_proc::StoreCounts) -> String {
    let all = c.written + c.taken_out;
    let share = if all == 0 {
        0.0
    } else {
        100.0 * c.taken_out as f64 / all as f64
    };
    format!(
        "{section}: over the whole section the relay's store committed {} transactions \
         writing {} envelopes; {} more ({share:.0}%) were acknowledged by their recipients \
         before their batch began, so were answered Stored with that batch's commit without \
         being written",
        c.commits, c.written, c.taken_out
    )
}
