//! Relay nodes over a NATS JetStream cluster, beside the embedded store in
//! the same run: the idle pair's latency when the sender delivers to one
//! node and the recipient reads from the other (the envelope goes through
//! the replicated stream and the other node's consumer), and durable
//! envelopes per second with clients spread over both nodes.
//!
//! Three `nats-server` processes (a JetStream cluster, streams with three
//! replicas, so every `Stored` waits for a quorum of two) and two relay
//! children sharing one keypair, all on this machine with the bench's
//! clients. The section is skipped, saying so, without a nats-server binary
//! (`NATS_SERVER_BIN` or `PATH`, as the tests find it).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use sotto_relay::nats_cluster::NatsCluster;

use crate::baseline::fsync_probe;
use crate::chat::{self, owner, ping_pong, Role, Route, Stats, WINDOW};
use crate::link_client::{self, DeliveryClient, ENVELOPE_LEN};
use crate::relay_proc::{NatsStore, RelayChild};
use crate::report::{Samples, Table, Verdict};
use crate::Scale;

/// NATS servers in the cluster, and copies of every stream.
const SERVERS: usize = 3;
const REPLICAS: usize = 3;

/// Largest peak RSS of a relay node the issue allows, KiB.
const NODE_RSS_KIB: u64 = 64 * 1024;

fn delivery(d: DeliveryClient) -> chat::Halves {
    (d.reader, d.writer)
}

/// Adds the section's rows (or a note saying why it was skipped).
pub async fn measure(scale: &Scale, tmp: &Path, t: &mut Table) -> anyhow::Result<()> {
    t.section(&format!(
        "relay nodes: two nodes over a {SERVERS}-server NATS JetStream cluster \
         (replicas {REPLICAS}), beside the embedded store, {ENVELOPE_LEN} B envelopes"
    ));
    let nats_dir = tmp.join("nats");
    let Some(cluster) = NatsCluster::start(&nats_dir, SERVERS)? else {
        t.note("nodes: skipped: no nats-server binary (set NATS_SERVER_BIN or put it on PATH)");
        return Ok(());
    };
    let store = NatsStore {
        servers: cluster.urls(),
        replicas: REPLICAS,
    };

    // The embedded store, same route and clients, same run.
    let single = RelayChild::start(tmp, "relay-single").await?;
    let mut embedded = idle_pair(&single, &single, scale.idle_messages).await?;
    let _ = single.stop().await;
    std::fs::remove_dir_all(tmp.join("relay-single"))?;

    let first = RelayChild::start_node(tmp, "node-1", &store, None).await?;
    let second = RelayChild::start_node(tmp, "node-2", &store, Some(&first.dir)).await?;
    anyhow::ensure!(first.key == second.key, "the nodes do not share a key");
    let mut across = idle_pair(&first, &second, scale.idle_messages)
        .await
        .context("the idle pair across nodes")?;
    first.reset_peak();
    second.reset_peak();
    let fsync_before = fsync_probe(tmp).await?;
    let pumped = throughput(&first, &second, scale)
        .await
        .context("the throughput run over nodes")?;
    let fsync_after = fsync_probe(tmp).await?;
    let peaks = (first.peak_kib(), second.peak_kib());
    let _ = first.stop().await;
    let _ = second.stop().await;
    drop(cluster);
    for dir in ["node-1", "node-2", "nats"] {
        let _ = std::fs::remove_dir_all(tmp.join(dir));
    }

    let (e50, e99) = (embedded.percentile_us(50.0), embedded.percentile_us(99.0));
    let (n50, n99) = (across.percentile_us(50.0), across.percentile_us(99.0));
    t.row(
        &format!(
            "1 idle pair, delivered to node 1, read on node 2, p50 ({} msgs)",
            across.len()
        ),
        format!("{n50:.0} µs"),
        format!("embedded p50 {e50:.0} µs"),
        Some(n50 / e50),
        "<= 2x embedded",
        Verdict::of(n50 <= 2.0 * e50),
    );
    t.row(
        "1 idle pair, delivered to node 1, read on node 2, p99",
        format!("{n99:.0} µs"),
        format!("embedded p99 {e99:.0} µs"),
        Some(n99 / e99),
        "",
        Verdict::None,
    );
    pumped.report(
        t,
        "nodes throughput",
        scale,
        (fsync_before, fsync_after),
        None,
        20_000.0,
    );
    let worst = peaks.0.max(peaks.1);
    t.row(
        "peak RSS of a relay node during the throughput run",
        format!("{:.1} MiB", worst as f64 / 1024.0),
        format!(
            "nodes {:.1} / {:.1} MiB",
            peaks.0 as f64 / 1024.0,
            peaks.1 as f64 / 1024.0
        ),
        None,
        "< 64 MiB",
        Verdict::of(worst < NODE_RSS_KIB),
    );
    t.note(
        "nodes: the idle pair delivers over a delivery link to node 1 with the recipient's \
         token; the recipient reads over an owner link to node 2, which learns of the envelope \
         from the stream (its consumer), so the row counts a replicated publish and the hop \
         between nodes; the embedded row is the same route on one relay with the embedded store",
    );
    t.note(format!(
        "nodes throughput: half the clients read from each node and deliver over a delivery \
         link to the next client's mailbox through the *other* node, {WINDOW} Sends \
         outstanding each; Stored waits for JetStream's publish ack (a quorum of {REPLICAS} \
         replicas, the three servers' files on this one disk); the relay processes' CPU \
         excludes the NATS servers'"
    ));
    Ok(())
}

/// The idle pair: alice delivers to `to`'s node, bob reads on `reads`.
async fn idle_pair(
    to: &RelayChild,
    reads: &RelayChild,
    messages: usize,
) -> anyhow::Result<Samples> {
    let link = link_client::connect_delivery(to.addr, to.key).await?;
    let mut bob = link_client::connect(reads.addr, reads.key).await?;
    let token = link_client::register_token(&mut bob)
        .await
        .context("registering a token")?;
    let route = Route::Delivery(bob.key, token);
    ping_pong(delivery(link), &route, bob, messages, None).await
}

/// `scale.clients` clients, half reading from each node, each delivering to
/// the next client's mailbox through the node it does not read from.
async fn throughput(
    first: &RelayChild,
    second: &RelayChild,
    scale: &Scale,
) -> anyhow::Result<chat::Pumped> {
    let n = scale.clients;
    let on_first = link_client::connect_many(first.addr, first.key, n / 2).await?;
    let on_second = link_client::connect_many(second.addr, second.key, n - n / 2).await?;
    let mut owners = link_client::register_tokens(on_first).await?;
    let first_count = owners.len();
    owners.extend(link_client::register_tokens(on_second).await?);
    // Client i reads from node 1 if i < first_count; it delivers through
    // the other node.
    let to_second =
        link_client::connect_delivery_many(second.addr, second.key, first_count).await?;
    let to_first =
        link_client::connect_delivery_many(first.addr, first.key, owners.len() - first_count)
            .await?;
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
    for (i, link) in to_second.into_iter().chain(to_first).enumerate() {
        let role = Role {
            to: Some(mailboxes[(i + 1) % mailboxes.len()].clone()),
            windowed: true,
            ..Role::default()
        };
        sending.push(chat::start(delivery(link), role, stats.clone()).await?);
    }
    let fetchers = reading.len();
    let pumped = chat::pump(&[first, second], scale, &sending, &stats, fetchers).await;
    for r in reading.iter().chain(&sending) {
        r.abort();
    }
    Ok(pumped)
}
