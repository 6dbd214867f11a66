//! Relay memory per idle authenticated connection.
//!
//! The relay runs in its own process, so its RSS is not mixed with the
//! clients'. A first batch of connections warms its allocator and runtime up;
//! the figure is the RSS growth over the rest, divided by their number. Then
//! every connection asks for live delivery (`Fetch { live: true }`), which is
//! how a chat client that is idle actually sits, and the growth is read again.

use std::path::Path;
use std::time::Duration;

use sotto_crypto::wire::ClientMsg;

use crate::link_client;
use crate::relay_proc::RelayChild;
use crate::report::{Table, Verdict};
use crate::Scale;

/// Connections that warm the relay up before the first reading.
const WARMUP: usize = 100;
/// Target, KiB per connection.
const TARGET_KIB: f64 = 8.0;

/// Measures; adds the rows.
pub async fn measure(scale: &Scale, tmp: &Path, t: &mut Table) -> anyhow::Result<()> {
    let relay = RelayChild::start(tmp, "relay-conns").await?;
    let n = scale.idle_connections;
    let mut warm = link_client::connect_many(relay.addr, relay.key, WARMUP).await?;
    settle().await;
    let before = relay.rss_kib();
    let mut clients = link_client::connect_many(relay.addr, relay.key, n).await?;
    settle().await;
    let connected = relay.rss_kib();
    for c in clients.iter_mut().chain(warm.iter_mut()) {
        c.writer.send(&ClientMsg::Fetch { live: true }).await?;
        c.writer.flush().await?;
    }
    settle().await;
    let fetching = relay.rss_kib();
    let n_conns = clients.len();
    drop(clients);
    drop(warm);
    relay.stop().await;
    std::fs::remove_dir_all(tmp.join("relay-conns"))?;

    let per = |after: u64| after.saturating_sub(before) as f64 / n_conns.max(1) as f64;
    t.section(&format!(
        "relay memory, {n_conns} idle authenticated connections (after {WARMUP} to warm up)"
    ));
    let idle = per(connected);
    t.row(
        "RSS per connection, after the handshake",
        format!("{idle:.1} KiB"),
        format!("relay RSS before {:.1} MiB", before as f64 / 1024.0),
        Some(idle / TARGET_KIB),
        "<= 8 KiB",
        Verdict::of(idle <= TARGET_KIB),
    );
    let live = per(fetching);
    t.row(
        "RSS per connection, with Fetch { live }",
        format!("{live:.1} KiB"),
        format!("relay RSS before {:.1} MiB", before as f64 / 1024.0),
        Some(live / TARGET_KIB),
        "<= 8 KiB",
        Verdict::of(live <= TARGET_KIB),
    );
    t.note(
        "relay memory: VmRSS of the relay child process; the ratio there is to the 8 KiB target, \
         there being no physical baseline for it; socket buffers are the kernel's and not counted",
    );
    Ok(())
}

/// Lets the relay finish what the last connections started.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}
