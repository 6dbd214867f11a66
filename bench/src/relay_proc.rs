//! A relay in a child process: this binary run with `--relay-child DIR`.
//!
//! The child runs `sotto_relay::Relay` (the library the `sotto-relay` binary
//! runs) with its defaults, on 127.0.0.1 with a free port, except for the
//! limits per source address (connections, handshakes, buffers, and the
//! delivery links' envelope rate), which every client shares here. Apart from the
//! bench's clients, it has its own RSS to read and its own file descriptors.
//! It prints `ADDR KEYHEX` on one line and stops gracefully when its stdin
//! closes, then prints its store's counters (`COMMITS WRITTEN TAKEN_OUT`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use sotto_keys::RelayKey;
use sotto_relay::{Relay, RelayConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::report::{cpu_secs, reset_peak, status_kib};

/// The shared store a relay child runs on, for relay nodes.
#[derive(Debug, Clone)]
pub struct NatsStore {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// Copies of every stream.
    pub replicas: usize,
}

/// The child's side: the embedded store in `dir`, or `nats` when given.
pub async fn child_main(dir: PathBuf, nats: Option<NatsStore>) -> anyhow::Result<()> {
    // `RUST_LOG=warn sotto-bench` shows what the relays log, on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut config = RelayConfig::defaults();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.data_dir = dir;
    if let Some(nats) = nats {
        config.store =
            sotto_relay::config::StoreBackend::JetStream(sotto_relay::store::JetStreamConfig {
                servers: nats.servers,
                replicas: nats.replicas,
                prefix: "SOTTO".into(),
                credentials: None,
                tls_ca: None,
            });
    }
    // Every bench client comes from 127.0.0.1: the limits per source address
    // are the relay's whole limits here, or they would stop the bench.
    config.max_connections_per_address = config.max_connections;
    config.max_handshakes_per_address = config.max_handshakes;
    config.buffers.per_address = config.buffers.total;
    // Likewise for delivery links: their envelope rate per source address
    // becomes what every connection the relay admits could send together.
    let per_connection = config.delivery.per_connection;
    let connections = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    config.delivery.per_address.envelopes_per_second = per_connection
        .envelopes_per_second
        .saturating_mul(connections);
    config.delivery.per_address.envelope_burst =
        per_connection.envelope_burst.saturating_mul(connections);
    let relay = Relay::bind(config).await?;
    let key: String = relay
        .public_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("{} {key}", relay.local_addr()?);
    let maintenance = relay.maintenance();
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    relay.run(stdin_closed).await?;
    let c = maintenance.store_counters();
    println!(
        "{} {} {}",
        c.commits, c.envelopes_written, c.envelopes_taken_out
    );
    Ok(())
}

/// What a relay child's mailbox store did, printed as it stopped.
#[derive(Debug, Clone, Copy)]
pub struct StoreCounts {
    /// Transactions committed.
    pub commits: u64,
    /// Envelopes written to disk.
    pub written: u64,
    /// Envelopes acknowledged by their recipients before they were written.
    pub taken_out: u64,
}

/// A running relay child.
pub struct RelayChild {
    child: Child,
    stdout: BufReader<tokio::process::ChildStdout>,
    pid: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its key.
    pub key: RelayKey,
    /// Its data directory.
    pub dir: PathBuf,
}

impl RelayChild {
    /// Starts a relay with a fresh data directory under `tmp`.
    pub async fn start(tmp: &Path, name: &str) -> anyhow::Result<Self> {
        Self::start_on(tmp, name, None, None).await
    }

    /// Starts a relay node over `nats`, with the keypair of the node whose
    /// data dir is `key_from` (so both are one relay), or a new one.
    pub async fn start_node(
        tmp: &Path,
        name: &str,
        nats: &NatsStore,
        key_from: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::start_on(tmp, name, Some(nats), key_from).await
    }

    async fn start_on(
        tmp: &Path,
        name: &str,
        nats: Option<&NatsStore>,
        key_from: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir)?;
        if let Some(from) = key_from {
            let key = sotto_relay::relay_key::KEY_FILE;
            std::fs::copy(from.join(key), dir.join(key))
                .context("cannot copy the relay key to another node")?;
        }
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.arg("--relay-child").arg(&dir);
        if let Some(nats) = nats {
            command
                .arg("--nats")
                .arg(nats.servers.join(","))
                .arg("--replicas")
                .arg(nats.replicas.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the relay child")?;
        let pid = child.id().context("relay child has no pid")?.to_string();
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
            .await
            .context("relay child did not start within 30 s")??;
        let (addr, key) = line
            .trim()
            .split_once(' ')
            .context("relay child printed no address")?;
        let addr: SocketAddr = addr.parse()?;
        let mut bytes = [0u8; 32];
        anyhow::ensure!(key.len() == 64, "relay child printed a bad key");
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&key[2 * i..2 * i + 2], 16)?;
        }
        Ok(Self {
            child,
            stdout,
            pid,
            addr,
            key: RelayKey::from_bytes(bytes),
            dir,
        })
    }

    /// Its current RSS, KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(&self.pid, "VmRSS").unwrap_or(0)
    }

    /// Its peak RSS since start or the last [`RelayChild::reset_peak`], KiB.
    pub fn peak_kib(&self) -> u64 {
        status_kib(&self.pid, "VmHWM").unwrap_or(0)
    }

    /// CPU time it has used, seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.pid)
    }

    /// Resets its peak RSS to its current RSS.
    pub fn reset_peak(&self) {
        reset_peak(&self.pid);
    }

    /// Closes its stdin and waits for a graceful stop (killed after 20 s);
    /// returns its store's counters if it printed them.
    pub async fn stop(mut self) -> Option<StoreCounts> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        let stopped = async {
            let _ = self.stdout.read_line(&mut line).await;
            self.child.wait().await
        };
        if tokio::time::timeout(Duration::from_secs(20), stopped)
            .await
            .is_err()
        {
            eprintln!("sotto-bench: the relay child did not stop in 20 s; killing it");
            let _ = self.child.kill().await;
            return None;
        }
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(commits)), Some(Ok(written)), Some(Ok(taken_out))) => Some(StoreCounts {
                commits,
                written,
                taken_out,
            }),
            _ => None,
        }
    }
}
