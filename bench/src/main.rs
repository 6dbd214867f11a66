//! `sotto-bench`: measures the relay, the file drop and chat on 127.0.0.1 and
//! prints one table, each figure beside a baseline measured in the same run,
//! so that a noisy machine moves both and the ratio stays meaningful.
//!
//! Module map:
//!
//! - [`baseline`]: loopback TCP throughput, one-core ChaCha20-Poly1305, a
//!   100-byte TCP echo, fsyncs per second;
//! - [`relay_proc`]: a relay in a child process (this binary again, running
//!   `sotto_relay::Relay`), so its memory and file descriptors are its own;
//! - [`link_client`]: bare clients speaking the link protocol directly;
//! - [`filedrop`]: upload and download through the client library's
//!   `upload` and `download` modules (what `send-file` and `receive-all` run);
//! - [`chat`]: send-to-delivery latency and durable envelopes per second;
//! - [`across`]: the same over delivery links, and chat across two relays;
//! - [`conns`]: relay memory per idle authenticated connection;
//! - [`report`]: percentiles, memory readings and the table.
//!
//! A benchmark prints; it asserts nothing about time.
#![forbid(unsafe_code)]

mod across;
mod baseline;
mod chat;
mod conns;
mod filedrop;
mod link_client;
mod nodes;
mod relay_proc;
mod report;

use std::path::PathBuf;

use clap::Parser;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "sotto-bench",
    about = "Benchmark sotto on 127.0.0.1 against baselines measured in the same run"
)]
struct Args {
    /// A small version of everything (a smoke test; well under a minute).
    #[arg(long)]
    quick: bool,
    /// Size of the dropped file, in MiB.
    #[arg(long, value_name = "N")]
    file_mib: Option<u64>,
    /// Directory for temporary data (the relay's store, the dropped file);
    /// default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    tmp: Option<PathBuf>,
    /// Internal: run a relay with this data directory (used by the benchmark
    /// itself; prints its address and key, stops when stdin closes).
    #[arg(long, hide = true, value_name = "DIR")]
    relay_child: Option<PathBuf>,
    /// Internal: the relay child runs as a node over these NATS servers
    /// (comma-separated URLs).
    #[arg(long, hide = true, value_name = "URLS", value_delimiter = ',')]
    nats: Vec<String>,
    /// Internal: the relay child's stream replicas.
    #[arg(long, hide = true, value_name = "N", default_value_t = 3)]
    replicas: usize,
    /// Run only these sections (besides the baselines), comma-separated:
    /// file, chat, relays, throughput, delivery, nodes, conns. Default: all.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    only: Vec<Section>,
}

/// A section of the benchmark, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// The file drop.
    File,
    /// Chat latency, idle pair and loaded pairs.
    Chat,
    /// Chat latency across two relays, over delivery links.
    Relays,
    /// Durable envelopes per second.
    Throughput,
    /// Durable envelopes per second over delivery links.
    Delivery,
    /// Relay nodes over a NATS JetStream cluster, beside the embedded store.
    Nodes,
    /// Memory per idle connection.
    Conns,
}

/// How big and how long each section is.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Whether this is the `--quick` run.
    pub quick: bool,
    /// Bytes of the dropped file.
    pub file_bytes: u64,
    /// Time spent on each throughput baseline.
    pub baseline_secs: f64,
    /// Round trips of the echo baseline.
    pub echo_round_trips: usize,
    /// Messages of the idle chat pair.
    pub idle_messages: usize,
    /// Pairs and total rate of the loaded chat run, and its duration.
    pub pairs: usize,
    /// Messages per second across all pairs.
    pub pairs_rate: u64,
    /// Duration of the loaded chat run.
    pub pairs_secs: f64,
    /// Clients of the relay throughput run.
    pub clients: usize,
    /// Warm-up and measured durations of the relay throughput run.
    pub throughput_warmup_secs: f64,
    /// Measured duration of the relay throughput run.
    pub throughput_secs: f64,
    /// Idle connections of the memory run.
    pub idle_connections: usize,
}

impl Scale {
    fn new(quick: bool, file_mib: Option<u64>) -> Self {
        let mib = file_mib.unwrap_or(if quick { 64 } else { 1024 });
        if quick {
            Self {
                quick,
                file_bytes: mib << 20,
                baseline_secs: 0.3,
                echo_round_trips: 2_000,
                idle_messages: 200,
                pairs: 20,
                pairs_rate: 2_000,
                pairs_secs: 1.0,
                clients: 100,
                throughput_warmup_secs: 0.3,
                throughput_secs: 1.0,
                idle_connections: 1_000,
            }
        } else {
            Self {
                quick,
                file_bytes: mib << 20,
                baseline_secs: 2.0,
                echo_round_trips: 20_000,
                idle_messages: 2_000,
                pairs: 100,
                pairs_rate: 10_000,
                pairs_secs: 5.0,
                clients: 1_000,
                throughput_warmup_secs: 1.0,
                throughput_secs: 5.0,
                idle_connections: 10_000,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(dir) = args.relay_child {
        let nats = (!args.nats.is_empty()).then(|| relay_proc::NatsStore {
            servers: args.nats.clone(),
            replicas: args.replicas,
        });
        return runtime.block_on(relay_proc::child_main(dir, nats));
    }
    let scale = Scale::new(args.quick, args.file_mib);
    let tmp = match &args.tmp {
        Some(dir) => tempfile::Builder::new()
            .prefix("sotto-bench-")
            .tempdir_in(dir)?,
        None => tempfile::Builder::new().prefix("sotto-bench-").tempdir()?,
    };
    let started = std::time::Instant::now();
    let only = args.only;
    let wanted = |s: Section| only.is_empty() || only.contains(&s);
    let table = runtime.block_on(run(&scale, tmp.path(), wanted))?;
    println!("{}", table.render(&scale, started.elapsed()));
    Ok(())
}

async fn run(
    scale: &Scale,
    tmp: &std::path::Path,
    wanted: impl Fn(Section) -> bool,
) -> anyhow::Result<report::Table> {
    let mut table = report::Table::default();
    note("baselines");
    let base = baseline::measure(scale, tmp).await?;
    base.report(&mut table);
    if wanted(Section::File) {
        note("file drop");
        filedrop::measure(scale, tmp, &base, &mut table).await?;
    }
    if wanted(Section::Chat) {
        note("chat latency");
        chat::latency(scale, tmp, &base, &mut table).await?;
    }
    if wanted(Section::Relays) {
        note("chat latency across two relays");
        across::latency(scale, tmp, &base, &mut table).await?;
    }
    if wanted(Section::Throughput) {
        note("relay throughput");
        chat::throughput(scale, tmp, &mut table).await?;
    }
    if wanted(Section::Delivery) {
        note("throughput over delivery links");
        across::throughput(scale, tmp, &mut table).await?;
    }
    if wanted(Section::Nodes) {
        note("relay nodes over NATS JetStream");
        nodes::measure(scale, tmp, &mut table).await?;
    }
    if wanted(Section::Conns) {
        note("idle connections");
        conns::measure(scale, tmp, &mut table).await?;
    }
    Ok(table)
}

/// Progress on stderr; the table alone goes to stdout.
pub fn note(what: &str) {
    eprintln!("sotto-bench: {what}...");
}

/// 10,000 connections need more descriptors than some defaults give.
fn raise_fd_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if soft < hard {
            if let Err(e) = rlimit::Resource::NOFILE.set(hard, hard) {
                eprintln!("sotto-bench: cannot raise the open-file limit from {soft}: {e}");
            }
        }
    }
}
