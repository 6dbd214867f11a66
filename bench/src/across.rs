//! Chat across two relays, and durable envelopes per second over delivery
//! links: the routes every `sotto` delivery takes since each user reads from
//! the relay of their choice.
//!
//! A client reads its own mailbox over an owner link to its relay and
//! delivers to anyone's (its own relay's included) over a delivery link to
//! the recipient's relay, presenting the token the recipient registered. The
//! rows here measure those routes the way [`crate::chat`] measures the
//! owner-link route, with the same bare clients and envelopes, so the two
//! sections of one run compare directly. Tokens are registered before the
//! run, so every delivery is a contact's, never a first contact (whose
//! tighter limits would be what is measured).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::baseline::{fsync_probe, Baselines};
use crate::chat::{self, owner, ping_pong, Halves, Loaded, Pair, Role, Route, Stats, WINDOW};
use crate::link_client::{self, DeliveryClient, ENVELOPE_LEN};
use crate::relay_proc::RelayChild;
use crate::report::{Samples, Table, Verdict};
use crate::Scale;

/// A delivery link's halves.
fn delivery(d: DeliveryClient) -> Halves {
    (d.reader, d.writer)
}

/// Latency from alice (reading from relay A) to bob (reading from relay B)
/// over a delivery link to B, for an idle pair and for many pairs; adds the
/// rows beside the same-run echo.
pub async fn latency(
    scale: &Scale,
    tmp: &Path,
    base: &Baselines,
    t: &mut Table,
) -> anyhow::Result<()> {
    let a = RelayChild::start(tmp, "relay-a").await?;
    let b = RelayChild::start(tmp, "relay-b").await?;
    let mut idle = idle_pair(&a, &b, scale.idle_messages, None).await?;
    let mut paced = idle_pair(&a, &b, scale.idle_messages, Some(Duration::from_millis(1))).await?;
    let Loaded {
        samples: mut loaded,
        sent,
        delivered,
        errors,
        relay_cpu,
        bench_cpu,
    } = chat::on_one_thread(|| loaded_pairs(&a, &b, scale))?;
    let (counts_a, counts_b) = (a.stop().await, b.stop().await);
    std::fs::remove_dir_all(tmp.join("relay-a"))?;
    std::fs::remove_dir_all(tmp.join("relay-b"))?;

    t.section(&format!(
        "chat across two relays: delivery link to the recipient's relay -> its owner link \
         (Deliver), {ENVELOPE_LEN} B envelopes"
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
    t.note(
        "chat across relays: each person reads from their relay over an owner link and delivers \
         over a delivery link to the other's relay with the recipient's token (registered first, \
         so every delivery is a contact's); the loaded pairs alternate direction, half A -> B, \
         half B -> A, so both relays deliver and push",
    );
    let (over, slowest) = loaded.tail(chat::STALL);
    t.note(format!(
        "chat across relays under load: {sent} sent in {:.0} s, {delivered} delivered, {errors} \
         refused ({over} over {} ms, the slowest {slowest:.1} ms); the two relays used {:.0}% of \
         a core together, the bench's clients {:.0}% (on one thread)",
        scale.pairs_secs,
        chat::STALL.as_millis(),
        relay_cpu * 100.0,
        bench_cpu * 100.0
    ));
    for (name, counts) in [("relay A", counts_a), ("relay B", counts_b)] {
        if let Some(c) = counts {
            t.note(chat::store_counts(
                &format!("chat across relays, {name}"),
                &c,
            ));
        }
    }
    Ok(())
}

/// Alice has an owner link on A (reading her mailbox, idle here) and a
/// delivery link to B; bob, on B, registered his token and fetches live.
async fn idle_pair(
    a: &RelayChild,
    b: &RelayChild,
    messages: usize,
    pace: Option<Duration>,
) -> anyhow::Result<Samples> {
    let alice = link_client::connect(a.addr, a.key).await?;
    let alice_reads = chat::start(
        owner(alice),
        Role {
            fetch: true,
            ..Role::default()
        },
        Arc::new(Stats::default()),
    )
    .await?;
    let to_b = link_client::connect_delivery(b.addr, b.key).await?;
    let mut bob = link_client::connect(b.addr, b.key).await?;
    let token = link_client::register_token(&mut bob).await?;
    let to = Route::Delivery(bob.key, token);
    let samples = ping_pong(delivery(to_b), &to, bob, messages, pace).await;
    alice_reads.abort();
    samples
}

/// `scale.pairs` pairs, each one person on A and one on B, each reading
/// from their own relay; even pairs send A's person -> B's, odd pairs the
/// other way, each over a delivery link to the recipient's relay.
async fn loaded_pairs(a: &RelayChild, b: &RelayChild, scale: &Scale) -> anyhow::Result<Loaded> {
    let n = scale.pairs;
    let on_a = link_client::connect_many(a.addr, a.key, n).await?;
    let on_b = link_client::connect_many(b.addr, b.key, n).await?;
    let on_a = link_client::register_tokens(on_a).await?;
    let on_b = link_client::register_tokens(on_b).await?;
    // Half the delivery links go to each relay, one per sender.
    let to_a = link_client::connect_delivery_many(a.addr, a.key, n / 2).await?;
    let to_b = link_client::connect_delivery_many(b.addr, b.key, n - n / 2).await?;
    let (mut to_a, mut to_b) = (to_a.into_iter(), to_b.into_iter());
    let idle_stats = Arc::new(Stats::default());
    let mut senders_reading = Vec::new();
    let mut pairs = Vec::new();
    for (i, ((on_a, token_a), (on_b, token_b))) in on_a.into_iter().zip(on_b).enumerate() {
        let (sender, receiver, token, link) = if i % 2 == 0 {
            (on_a, on_b, token_b, to_b.next())
        } else {
            (on_b, on_a, token_a, to_a.next())
        };
        let Some(link) = link else {
            anyhow::bail!("too few delivery links connected");
        };
        // The sender reads its own mailbox meanwhile, as a client in a chat
        // does; nothing arrives there.
        let reads = Role {
            fetch: true,
            ..Role::default()
        };
        senders_reading.push(chat::start(owner(sender), reads, idle_stats.clone()).await?);
        pairs.push(Pair {
            sender: delivery(link),
            to: Route::Delivery(receiver.key, token),
            receiver,
        });
    }
    let loaded = chat::run_loaded(pairs, &[a, b], scale).await;
    for r in &senders_reading {
        r.abort();
    }
    loaded
}

/// Durable envelopes per second among `scale.clients` clients of one relay,
/// each reading its mailbox over an owner link and delivering to the next
/// client's over a delivery link with a window of outstanding `Send`s, as
/// [`chat::throughput`] does over owner links; adds the rows.
pub async fn throughput(scale: &Scale, tmp: &Path, t: &mut Table) -> anyhow::Result<()> {
    let relay = RelayChild::start(tmp, "relay-delivery").await?;
    let fsync_before = fsync_probe(tmp).await?;
    let n = scale.clients;
    let owners = link_client::connect_many(relay.addr, relay.key, n).await?;
    let owners = link_client::register_tokens(owners).await?;
    let links = link_client::connect_delivery_many(relay.addr, relay.key, n).await?;
    let mailboxes: Vec<Route> = owners
        .iter()
        .map(|(c, token)| Route::Delivery(c.key, token.clone()))
        .collect();
    let stats = Arc::new(Stats::default());
    let mut reading = Vec::new();
    for (c, _) in owners {
        let role = Role {
            fetch: true,
            ..Role::default()
        };
        reading.push(chat::start(owner(c), role, stats.clone()).await?);
    }
    let mut sending = Vec::new();
    for (i, link) in links.into_iter().enumerate() {
        let role = Role {
            to: Some(mailboxes[(i + 1) % mailboxes.len()].clone()),
            windowed: true,
            ..Role::default()
        };
        sending.push(chat::start(delivery(link), role, stats.clone()).await?);
    }
    let pumped = chat::pump(&[&relay], scale, &sending, &stats, n).await;
    for r in reading.iter().chain(&sending) {
        r.abort();
    }
    let fsync_after = fsync_probe(tmp).await?;
    let counts = relay.stop().await;
    std::fs::remove_dir_all(tmp.join("relay-delivery"))?;
    t.section(&format!(
        "throughput over delivery links, {n} clients (an owner link and a delivery link each), \
         {ENVELOPE_LEN} B envelopes, {WINDOW} Sends outstanding each"
    ));
    pumped.report(
        t,
        "delivery throughput",
        scale,
        (fsync_before, fsync_after),
        counts,
        50_000.0,
    );
    t.note(format!(
        "delivery throughput: every Send presents its mailbox's token (registered first, so a \
         contact's delivery, never a first contact); the relay's delivery-link limit per source \
         address ({}/s by default) is raised to the per-connection limit times max_connections \
         in the bench's relay, as every bench client comes from 127.0.0.1",
        sotto_relay::limits::DEFAULT_ENVELOPES_PER_SECOND
    ));
    Ok(())
}
