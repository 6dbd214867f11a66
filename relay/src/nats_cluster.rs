//! A NATS cluster with JetStream on 127.0.0.1, for the tests of the
//! JetStream backend and of relay nodes sharing one: real `nats-server`
//! processes in a directory the caller owns, each on ports of its own.
//!
//! The binary is the one named by `NATS_SERVER_BIN`, else `nats-server` on
//! `PATH` (`.ci/run` installs it from a package registry). Without one,
//! [`NatsCluster::start`] says so on stderr and returns `None`, so a tree
//! checked out without NATS still tests green, everything else included.
//!
//! Not for production: `scripts/cluster.sh` and docs/DEPLOY.md say how to run
//! NATS for real.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that names the `nats-server` binary.
pub const BIN_VAR: &str = "NATS_SERVER_BIN";

/// How long a cluster may take to elect its JetStream leaders.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The `nats-server` binary to run, if there is one.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(BIN_VAR) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// One server of the cluster.
struct Server {
    name: String,
    config: PathBuf,
    client_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// Running `nats-server` processes forming one JetStream cluster; they are
/// killed when this is dropped.
pub struct NatsCluster {
    binary: PathBuf,
    servers: Vec<Server>,
}

impl NatsCluster {
    /// Starts `n` servers clustered with each other, with their JetStream
    /// files under `dir`, and waits until JetStream answers on each.
    /// `Ok(None)` (with a message on stderr) if no binary is found.
    pub fn start(dir: &Path, n: usize) -> std::io::Result<Option<Self>> {
        let Some(binary) = binary() else {
            eprintln!(
                "SKIPPED: no nats-server binary (set {BIN_VAR} or put nats-server on PATH; \
                 .ci/run installs it)"
            );
            return Ok(None);
        };
        let ports: Vec<[u16; 3]> = (0..n)
            .map(|_| Ok([free_port()?, free_port()?, free_port()?]))
            .collect::<std::io::Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|[_, cluster, _]| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        let mut servers = Vec::with_capacity(n);
        for (i, [client, cluster, monitor]) in ports.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            std::fs::create_dir_all(&store)?;
            let cluster_block = if n > 1 {
                format!(
                    "cluster {{\n  name: sotto\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  \
                     max_file_store: 1GB\n}}\n{cluster_block}",
                    store.display()
                ),
            )?;
            servers.push(Server {
                name,
                config,
                client_port: client,
                monitor_port: monitor,
                child: None,
            });
        }
        let mut cluster = Self { binary, servers };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_ready()?;
        Ok(Some(cluster))
    }

    /// The client URLs, one per server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// Kills server `i` with SIGKILL: no goodbye to the others.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }

    /// Starts server `i` again on its ports and files.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Waits until every running server says JetStream is healthy.
    pub fn wait_ready(&self) -> std::io::Result<()> {
        let until = Instant::now() + READY_WITHIN;
        for server in self.servers.iter().filter(|s| s.child.is_some()) {
            while !healthy(server.monitor_port) {
                if Instant::now() > until {
                    return Err(std::io::Error::other(format!(
                        "nats server {} not ready within {READY_WITHIN:?}",
                        server.name
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let server = &mut self.servers[i];
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        server.child = Some(child);
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// A port nothing listens on just now (the server binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether the monitoring endpoint's JetStream health check answers 200.
fn healthy(port: u16) -> bool {
    let ask = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"))
    };
    ask().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::NatsCluster;

    #[test]
    fn a_three_server_cluster_starts_and_survives_a_restart() {
        let dir = tempfile::TempDir::new().unwrap();
        let Some(mut cluster) = NatsCluster::start(dir.path(), 3).unwrap() else {
            return;
        };
        assert_eq!(cluster.urls().len(), 3);
        cluster.kill(1);
        cluster.restart(1).unwrap();
        cluster.wait_ready().unwrap();
    }
}
