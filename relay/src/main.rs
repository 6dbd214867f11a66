//! `sotto-relay`: run a relay, or print its key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sotto_keys::RelayKey;
use sotto_relay::{relay_key, Relay, RelayConfig};

/// sotto relay: stores and forwards end-to-end encrypted envelopes it cannot read.
#[derive(Parser)]
#[command(name = "sotto-relay", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Address to listen on, IP:PORT or HOST:PORT (a host name is resolved
    /// at start) [default: 127.0.0.1:7300]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data directory: key file and mailboxes [default: ./sotto-relay-data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// TOML file with settings and limits; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the public key of the relay whose data dir this is (it must have
    /// run once; nothing is created).
    Key {
        /// Data directory [default: ./sotto-relay-data].
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Write the man pages (sotto-relay.1, sotto-relay-key.1) into DIR.
    Man {
        /// Where to write them (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let cause: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("sotto-relay: error: {}", sotto_keys::error::one_line(cause));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Man { dir }) = &cli.command {
        return man_pages(dir);
    }
    if let Some(Command::Key { data }) = cli.command {
        let data = data.unwrap_or_else(|| RelayConfig::defaults().data_dir);
        let key = relay_key::load_existing(&data)?;
        println!("{}", RelayKey::from(key.public()));
        return Ok(());
    }

    let mut config = match &cli.config {
        Some(path) => RelayConfig::from_file(path)?,
        None => RelayConfig::defaults(),
    };
    if let Some(listen) = &cli.listen {
        config.listen = resolve_listen(listen).await?;
    }
    if let Some(data) = cli.data {
        config.data_dir = data;
    }
    let data_dir = config.data_dir.clone();
    let relay = Relay::bind(config).await?;
    let addr = relay
        .local_addr()
        .context("cannot read the bound address")?;
    let key = relay.public_key();
    if relay.key_created() {
        tracing::info!("generated a new relay key in {}", data_dir.display());
    }
    let host = if addr.ip().is_unspecified() {
        format!("THIS-HOST:{}", addr.port())
    } else {
        addr.to_string()
    };
    println!("listening on {addr}");
    println!("relay key: {key}");
    println!("clients connect with:");
    println!("  sotto init --relay {host} --relay-key {key}");
    relay.run(shutdown_signal()).await?;
    Ok(())
}

/// The address `--listen` names: an IP address as it is, a host name as
/// the system resolves it (its first address).
async fn resolve_listen(listen: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !listen.contains(':') {
        anyhow::bail!("--listen {listen}: give HOST:PORT or IP:PORT, e.g. 0.0.0.0:7300");
    }
    let mut found = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("cannot resolve --listen {listen}"))?;
    found
        .next()
        .with_context(|| format!("--listen {listen} resolves to no address"))
}

/// `sotto-relay man --dir DIR`: the relay's page and its key command's.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cli = Cli::command();
    let key = cli
        .find_subcommand("key")
        .cloned()
        .context("the key command is missing")?
        .name("sotto-relay-key");
    for cmd in [cli, key] {
        let path = dir.join(format!("{}.1", cmd.get_name()));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
