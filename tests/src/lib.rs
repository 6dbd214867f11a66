//! Harness for end-to-end tests: starts the real `sotto-relay` binary on
//! 127.0.0.1 port 0 with a temporary data dir, and runs the real `sotto` binary
//! with temporary homes, exactly as a user or a script would.
//!
//! The binaries are taken from the target dir the tests were built into;
//! `cargo test --workspace` builds them, and if they are missing (a test run of
//! this package alone) they are built once here.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod fuzz;

/// Path of a workspace binary (`sotto` or `sotto-relay`).
///
/// `cargo test` builds only the binaries of the packages it tests, so a run of
/// this package alone could find stale ones: they are brought up to date once
/// per test process (a no-op when `cargo test --workspace` just built them).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "sotto-client",
            "-p",
            "sotto-relay",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        dir
    });
    dir.join(name)
}

/// A running relay process.
pub struct Relay {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// Its public key string.
    pub key: String,
    /// Its data dir.
    pub data: PathBuf,
    config: Option<PathBuf>,
    rust_log: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Relay {
    /// Starts a relay on a free port with `data` as its data dir and an
    /// optional TOML config.
    pub fn start(data: &Path, config: Option<&str>) -> Self {
        let config = config.map(|text| {
            let path = data.with_extension("toml");
            std::fs::write(&path, text).expect("write relay config");
            path
        });
        Self::spawn(data, "127.0.0.1:0", config, "info")
    }

    /// Starts a relay as [`Relay::start`] does, logging at `level`
    /// (`RUST_LOG`), for tests that read what it logs.
    pub fn start_logging(data: &Path, level: &str) -> Self {
        Self::spawn(data, "127.0.0.1:0", None, level)
    }

    fn spawn(data: &Path, listen: &str, config: Option<PathBuf>, level: &str) -> Self {
        let mut cmd = Command::new(bin("sotto-relay"));
        cmd.args(["--listen", listen, "--data"])
            .arg(data)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("start sotto-relay");
        let stdout = child.stdout.take().expect("relay stdout");
        let mut stderr = child.stderr.take().expect("relay stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut key = None;
        while addr.is_none() || key.is_none() {
            let line = lines
                .next()
                .expect("relay exited before printing its address and key")
                .expect("read relay stdout");
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.trim().to_owned());
            } else if let Some(k) = line.strip_prefix("relay key: ") {
                key = Some(k.trim().to_owned());
            }
        }
        // Keep draining stdout so the relay never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child: Some(child),
            addr: addr.unwrap_or_default(),
            key: key.unwrap_or_default(),
            data: data.to_owned(),
            config,
            rust_log: level.to_owned(),
            stderr: Some(stderr),
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `kB` field of its `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.pid()?, field)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in relay address")
    }

    /// Kills the relay with SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the relay with SIGTERM and returns its exit success and log.
    pub fn terminate(&mut self) -> (bool, String) {
        let ok = match self.child.take() {
            Some(mut c) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                c.wait().map(|s| s.success()).unwrap_or(false)
            }
            None => false,
        };
        (ok, self.log())
    }

    /// The relay's stderr so far (only once it has exited).
    pub fn log(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Starts the relay again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger briefly after the kill.
            if std::net::TcpListener::bind(&listen).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let next = Self::spawn(&self.data, &listen, self.config.clone(), &self.rust_log);
        assert_eq!(next.key, self.key, "the relay key must survive a restart");
        *self = next;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB; `None`
/// once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A client with its own temporary home.
pub struct Client {
    home: TempDir,
    /// Its public key string (first line of `sotto id`).
    pub key: String,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
}

impl Client {
    /// Alice and Bob: two fresh identities on `relay`, each the other's
    /// contact under those names.
    pub fn pair(relay: &Relay) -> (Client, Client) {
        let alice = Client::new(relay);
        let bob = Client::new(relay);
        alice.add_contact("bob", &bob);
        bob.add_contact("alice", &alice);
        (alice, bob)
    }

    /// A home with no identity yet.
    pub fn uninit() -> Self {
        Self {
            home: tempfile::tempdir().expect("temp home"),
            key: String::new(),
            env: Vec::new(),
        }
    }

    /// The client's secret key, read from its key file.
    pub fn secret(&self) -> sotto_keys::SecretKey {
        let pass = self
            .env
            .iter()
            .find(|(k, _)| k == "SOTTO_PASSPHRASE")
            .map(|(_, v)| v.clone());
        sotto_keys::keyfile::load(&self.home().join("identity.key"), || {
            sotto_keys::passphrase::Passphrase::new(pass.unwrap_or_default())
        })
        .expect("load the client's key file")
    }

    /// `sotto init` against `relay`.
    pub fn new(relay: &Relay) -> Self {
        Self::with_env(relay, &[])
    }

    /// `sotto init` with extra environment variables.
    pub fn with_env(relay: &Relay, env: &[(&str, &str)]) -> Self {
        let home = tempfile::tempdir().expect("temp home");
        let mut client = Self {
            home,
            key: String::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        client
            .run(&["init", "--relay", &relay.addr, "--relay-key", &relay.key])
            .ok();
        client.key = first_line(&client.run(&["id"]).ok());
        assert!(client.key.starts_with("sotto1"), "{:?}", client.key);
        client
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Runs `sotto ARGS` with this home; returns the output, whatever the status.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "")
    }

    /// `sotto ARGS` with this home, this client's environment and nothing
    /// inherited that could change its behaviour; all three streams piped.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("sotto"));
        cmd.args(args)
            .env("SOTTO_HOME", self.home.path())
            .env_remove("SOTTO_PASSPHRASE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `sotto ARGS` feeding `stdin`.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        use std::io::Write;
        let mut child = self.command(args).spawn().expect("run sotto");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        // A guard against a hung command, not a timing assertion.
        let out = wait_with_timeout(child, Duration::from_secs(300));
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            out,
        }
    }

    /// Adds `other` as a contact named `name`.
    pub fn add_contact(&self, name: &str, other: &Client) {
        self.run(&["contact", "add", name, &other.key]).ok();
    }

    /// Starts `sotto ARGS` with this home and leaves it running, stdin and
    /// stdout piped (e.g. `sotto chat bob`).
    pub fn spawn(&self, args: &[&str]) -> Live {
        let mut child = self.command(args).spawn().expect("start sotto");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Live {
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            stdin,
            lines,
            stderr: err,
        }
    }
}

/// A `sotto` process left running, driven line by line.
pub struct Live {
    args: Vec<String>,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Live {
    /// Writes one line to its stdin.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to sotto's stdin");
        stdin.flush().expect("flush sotto's stdin");
    }

    /// Closes its stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line on its stdout, if one comes within `limit`.
    pub fn next_line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// The next `n` stdout lines; panics (with its stderr) if they do not
    /// come within a generous limit: a guard against a hang, not a timing
    /// assertion.
    #[track_caller]
    pub fn expect_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => panic!(
                    "sotto {:?}: expected {n} lines, got {out:?}\nstderr: {}",
                    self.args,
                    self.stderr()
                ),
            }
        }
        out
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `needle` has appeared `times` times on stderr; returns
    /// stderr so far. Panics with it after a generous limit (a guard against a
    /// hang, not a timing assertion).
    #[track_caller]
    pub fn wait_stderr(&self, needle: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let err = self.stderr();
            if err.matches(needle).count() >= times {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "expected {needle:?} {times} time(s) on stderr, got:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes stdin and waits for the exit (killing it after a generous
    /// limit); returns whether it succeeded and the stdout lines not yet read.
    pub fn finish(mut self) -> (bool, Vec<String>) {
        self.close_stdin();
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = Vec::new();
        // The reader thread ends at EOF once the process is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push(line);
        }
        (status.is_some_and(|s| s.success()), rest)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect sotto output")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

/// The result of one `sotto` run.
pub struct Run {
    args: Vec<String>,
    /// The raw output.
    pub out: Output,
}

impl Run {
    /// Stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> String {
        assert!(
            self.out.status.success(),
            "sotto {:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.args,
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// Asserts failure with exactly one line on stderr and returns it.
    #[track_caller]
    pub fn fails(&self) -> String {
        assert!(
            !self.out.status.success(),
            "sotto {:?} should have failed:\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout(),
            self.stderr()
        );
        let err = self.stderr();
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "an error is one line on stderr, got:\n{err}"
        );
        err.trim_end().to_owned()
    }
}

/// Every file under `dir`, recursively, with its bytes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Whether `hay` contains `needle` anywhere.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A raw link to the relay with the crypto crate, for tests that must do what
/// the `sotto` binary never does (replay, ack others' ids, send bad messages).
pub mod raw {
    use sotto_crypto::link::{self, LinkReader, LinkWriter};
    use sotto_crypto::wire::{ClientMsg, RelayMsg};
    use sotto_keys::{RelayKey, SecretKey};
    use std::net::{IpAddr, SocketAddr};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpSocket, TcpStream};

    /// A TCP connection to `addr` from the local address `from`.
    pub async fn connect_tcp_from(from: IpAddr, addr: &str) -> Result<TcpStream, String> {
        let to: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(from, 0))
            .map_err(|e| format!("bind {from}: {e}"))?;
        socket
            .connect(to)
            .await
            .map_err(|e| format!("connect from {from}: {e}"))
    }

    /// An authenticated raw connection.
    pub struct Raw {
        /// Receiving half.
        pub reader: LinkReader<OwnedReadHalf>,
        /// Sending half.
        pub writer: LinkWriter<OwnedWriteHalf>,
    }

    impl Raw {
        /// Connects and completes the handshake as `me`.
        pub async fn connect(addr: &str, me: &SecretKey, relay_key: &str) -> Self {
            let relay: RelayKey = relay_key.parse().expect("relay key");
            let stream = TcpStream::connect(addr).await.expect("connect to relay");
            let (r, w) = stream.into_split();
            let (reader, writer, _) = link::connect(r, w, me, &relay).await.expect("handshake");
            Self { reader, writer }
        }

        /// Connects from the local address `from` (any of 127/8 on Linux,
        /// so that the relay sees another source address) and completes the
        /// handshake as `me`; the error says how it failed.
        pub async fn connect_from(
            from: IpAddr,
            addr: &str,
            me: &SecretKey,
            relay_key: &str,
        ) -> Result<Self, String> {
            let relay: RelayKey = relay_key.parse().map_err(|e| format!("relay key: {e}"))?;
            let stream = connect_tcp_from(from, addr).await?;
            let (r, w) = stream.into_split();
            let (reader, writer, _) = link::connect(r, w, me, &relay)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            Ok(Self { reader, writer })
        }

        /// Sends one message and flushes.
        pub async fn send(&mut self, msg: &ClientMsg) {
            self.writer.send(msg).await.expect("send");
            self.writer.flush().await.expect("flush");
        }

        /// The next message from the relay (panics on close or timeout).
        pub async fn recv(&mut self) -> RelayMsg {
            tokio::time::timeout(std::time::Duration::from_secs(10), self.reader.recv())
                .await
                .expect("relay answered in time")
                .expect("link ok")
                .expect("relay kept the connection open")
        }

        /// Fetches the whole mailbox without acknowledging: (id, envelope) pairs.
        pub async fn fetch_all(&mut self) -> Vec<(u64, Vec<u8>)> {
            self.send(&ClientMsg::Fetch { live: false }).await;
            let mut out = Vec::new();
            loop {
                match self.recv().await {
                    RelayMsg::Deliver { id, envelope, .. } => out.push((id, envelope.into_vec())),
                    RelayMsg::Drained => return out,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}

/// A TCP proxy in front of the relay that can cut or stall the client's
/// stream after a number of bytes: a dropped connection at an exact point,
/// with no timing involved.
pub mod proxy {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// What happens once a connection has sent `limit` bytes upstream.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum OnLimit {
        /// Close both sides at once.
        Cut,
        /// Stop forwarding and keep both sides open until the relay goes away.
        Stall,
    }

    /// A running proxy.
    pub struct Proxy {
        /// Address clients connect to.
        pub addr: String,
        limit: Arc<AtomicU64>,
        reached: Arc<AtomicBool>,
        mode: Arc<std::sync::Mutex<OnLimit>>,
        down_limit: Arc<AtomicU64>,
        down_bytes: Arc<AtomicU64>,
    }

    impl Proxy {
        /// Starts a proxy to `upstream`, forwarding everything.
        pub fn start(upstream: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
            let addr = listener.local_addr().expect("proxy addr").to_string();
            let limit = Arc::new(AtomicU64::new(u64::MAX));
            let reached = Arc::new(AtomicBool::new(false));
            let mode = Arc::new(std::sync::Mutex::new(OnLimit::Cut));
            let down_limit = Arc::new(AtomicU64::new(u64::MAX));
            let down_bytes = Arc::new(AtomicU64::new(0));
            let upstream = upstream.to_owned();
            let (l, r, m) = (limit.clone(), reached.clone(), mode.clone());
            let (dl, db) = (down_limit.clone(), down_bytes.clone());
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let mode = *m.lock().unwrap_or_else(|p| p.into_inner());
                    let limits = Limits {
                        up: l.load(Ordering::SeqCst),
                        down: dl.load(Ordering::SeqCst),
                    };
                    pipe(client, server, limits, mode, r.clone(), db.clone());
                }
            });
            Self {
                addr,
                limit,
                reached,
                mode,
                down_limit,
                down_bytes,
            }
        }

        /// New connections receive at most `bytes` from the relay, then are cut.
        pub fn limit_down(&self, bytes: u64) {
            self.down_limit.store(bytes, Ordering::SeqCst);
        }

        /// Bytes forwarded relay -> client so far, over all connections.
        pub fn down_bytes(&self) -> u64 {
            self.down_bytes.load(Ordering::SeqCst)
        }

        /// Forgets the bytes counted so far.
        pub fn reset_down_bytes(&self) {
            self.down_bytes.store(0, Ordering::SeqCst);
        }

        /// New connections forward at most `bytes` upstream, then `mode`.
        pub fn limit(&self, bytes: u64, mode: OnLimit) {
            *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
            self.reached.store(false, Ordering::SeqCst);
            self.limit.store(bytes, Ordering::SeqCst);
        }

        /// New connections forward everything, both ways.
        pub fn unlimited(&self) {
            self.limit.store(u64::MAX, Ordering::SeqCst);
            self.down_limit.store(u64::MAX, Ordering::SeqCst);
        }

        /// Whether a connection has hit the limit.
        pub fn reached(&self) -> bool {
            self.reached.load(Ordering::SeqCst)
        }
    }

    struct Limits {
        up: u64,
        down: u64,
    }

    fn pipe(
        client: TcpStream,
        server: TcpStream,
        limits: Limits,
        mode: OnLimit,
        reached: Arc<AtomicBool>,
        down_bytes: Arc<AtomicU64>,
    ) {
        let limit = limits.up;
        let down_limit = limits.down;
        let dead = Arc::new(AtomicBool::new(false));
        let (mut c_in, mut s_out) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        let (mut s_in, mut c_out) = (server, client);
        let d = dead.clone();
        // relay -> client: counted, cut at its limit; when the relay goes, so
        // does the client.
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut sent = 0u64;
            loop {
                let room = down_limit.saturating_sub(sent).min(buf.len() as u64) as usize;
                if room == 0 {
                    break;
                }
                match s_in.read(&mut buf[..room]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sent += n as u64;
                        down_bytes.fetch_add(n as u64, Ordering::SeqCst);
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            d.store(true, Ordering::SeqCst);
            let _ = c_out.shutdown(Shutdown::Both);
            let _ = s_in.shutdown(Shutdown::Both);
        });
        // client -> relay: counted, cut or stalled at the limit.
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut buf = [0u8; 65536];
            loop {
                let room = limit.saturating_sub(sent).min(buf.len() as u64) as usize;
                if room == 0 {
                    reached.store(true, Ordering::SeqCst);
                    if mode == OnLimit::Stall {
                        while !dead.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    break;
                }
                match c_in.read(&mut buf[..room]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sent += n as u64;
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = c_in.shutdown(Shutdown::Both);
            let _ = s_out.shutdown(Shutdown::Both);
        });
    }
}
