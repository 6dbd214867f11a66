//! What the machine itself can do, measured in the same run as sotto.

use std::io::{Read, Write};

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::report::{mbps, Samples, Table, Verdict};
use crate::Scale;

const BUF: usize = 64 * 1024;
const ECHO_LEN: usize = 100;

/// The baselines.
#[derive(Debug, Clone)]
pub struct Baselines {
    /// Loopback TCP, one connection, 64 KiB writes, MB/s.
    pub tcp_mbps: f64,
    /// ChaCha20-Poly1305 seal on one core, 64 KiB buffers, MB/s.
    pub aead_mbps: f64,
    /// 100-byte TCP echo round trip between two threads, back to back, p50 in µs.
    pub echo_p50_us: f64,
    /// Its p99 in µs.
    pub echo_p99_us: f64,
    /// The same round trip paced like the idle chat pair's paced run (1 ms
    /// apart): what waking idle threads costs on this machine. p50 and p99 in µs.
    pub echo_paused_us: (f64, f64),
    /// 4 KiB write + fdatasync per second, in the data directory.
    pub fsyncs_per_sec: f64,
}

/// Measures every baseline.
pub async fn measure(scale: &Scale, tmp: &Path) -> anyhow::Result<Baselines> {
    let secs = scale.baseline_secs;
    let tcp_mbps = tokio::task::spawn_blocking(move || tcp_throughput(secs)).await??;
    let aead_mbps = tokio::task::spawn_blocking(move || aead_throughput(secs)).await?;
    let (echo_p50_us, echo_p99_us) = echo(scale.echo_round_trips).await?;
    let echo_paused_us = echo_paused(scale.idle_messages).await?;
    let dir = tmp.to_path_buf();
    let fsync_secs = secs.min(1.0);
    let fsyncs_per_sec = tokio::task::spawn_blocking(move || fsyncs(&dir, fsync_secs)).await??;
    Ok(Baselines {
        tcp_mbps,
        aead_mbps,
        echo_p50_us,
        echo_p99_us,
        echo_paused_us,
        fsyncs_per_sec,
    })
}

impl Baselines {
    /// The baseline rows.
    pub fn report(&self, t: &mut Table) {
        t.section("baselines");
        let none = String::new;
        t.row(
            "loopback TCP, 64 KiB writes",
            format!("{:.0} MB/s", self.tcp_mbps),
            none(),
            None,
            "",
            Verdict::None,
        );
        t.row(
            "ChaCha20-Poly1305, 1 core, 64 KiB",
            format!("{:.0} MB/s", self.aead_mbps),
            none(),
            None,
            "",
            Verdict::None,
        );
        t.row(
            "TCP echo 100 B, back to back, p50",
            format!("{:.1} µs", self.echo_p50_us),
            none(),
            None,
            "",
            Verdict::None,
        );
        t.row(
            "TCP echo 100 B, back to back, p99",
            format!("{:.1} µs", self.echo_p99_us),
            none(),
            None,
            "",
            Verdict::None,
        );
        t.row(
            "TCP echo 100 B, 1 ms apart, p50 / p99",
            format!(
                "{:.1} / {:.1} µs",
                self.echo_paused_us.0, self.echo_paused_us.1
            ),
            none(),
            None,
            "",
            Verdict::None,
        );
        t.row(
            "4 KiB overwrite + fdatasync",
            format!("{:.0} /s", self.fsyncs_per_sec),
            none(),
            None,
            "",
            Verdict::None,
        );
    }
}

/// One connection, a writer thread and a reader thread, for `secs`.
fn tcp_throughput(secs: f64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut s = TcpStream::connect(addr)?;
            let buf = vec![0x5au8; BUF];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&buf)?;
            }
            Ok(())
        })
    };
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; BUF];
    // Let the connection reach its steady state before timing.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(100) {
        conn.read_exact(&mut buf)?;
    }
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut total = 0u64;
    while start.elapsed() < limit {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let took = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop(conn);
    // The writer ends with an error (reset) or cleanly; either is fine.
    let _ = writer.join();
    Ok(mbps(total, took))
}

/// Seals 64 KiB buffers in place on this thread for `secs`.
fn aead_throughput(secs: f64) -> f64 {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32]));
    let mut buf = vec![0x33u8; BUF];
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < limit {
        for _ in 0..16 {
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            // Sealing a buffer of a valid size cannot fail.
            if let Ok(tag) =
                cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf)
            {
                std::hint::black_box(tag);
            }
            n += 1;
        }
    }
    mbps(n * BUF as u64, start.elapsed().as_secs_f64())
}

/// 100-byte round trips, back to back, between two threads with blocking
/// sockets (Nagle off, as the relay's): the least a message that crosses from
/// one process to another and back costs on this machine, each way one wake-up
/// of a thread blocked in `read`. (An echo between two tasks of one tokio
/// runtime swung between 19 and 89 µs from run to run here, as both ends
/// happened to share a worker thread or not.)
async fn echo(round_trips: usize) -> anyhow::Result<(f64, f64)> {
    tokio::task::spawn_blocking(move || thread_echo(round_trips, None)).await?
}

/// The same round trips paced 1 ms apart, as the idle chat pair's paced run
/// sends: every round trip wakes threads that went to sleep meanwhile.
async fn echo_paused(round_trips: usize) -> anyhow::Result<(f64, f64)> {
    tokio::task::spawn_blocking(move || thread_echo(round_trips, Some(Duration::from_millis(1))))
        .await?
}

/// `round_trips` echoes of [`ECHO_LEN`] bytes to a server thread, each `pace`
/// after the last if given; p50 and p99 in µs. The first tenth warms up.
fn thread_echo(round_trips: usize, pace: Option<Duration>) -> anyhow::Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; ECHO_LEN];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let msg = [0xa5u8; ECHO_LEN];
    let mut back = [0u8; ECHO_LEN];
    let mut samples = Samples::default();
    for i in 0..round_trips + round_trips / 10 {
        if let Some(pace) = pace {
            std::thread::sleep(pace);
        }
        let t = Instant::now();
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
        if i >= round_trips / 10 {
            samples.push(t.elapsed());
        }
    }
    drop(c);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the echo server thread panicked"))??;
    Ok((samples.percentile_us(50.0), samples.percentile_us(99.0)))
}

/// The disk's fsync rate now: on a shared virtual disk it moves by an order of
/// magnitude within a minute, so the sections that fsync probe it again.
pub async fn fsync_probe(dir: &Path) -> anyhow::Result<f64> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || fsyncs(&dir, 0.5)).await?
}

/// What one fsync per envelope would allow: 4 KiB overwritten in place in a
/// preallocated file (as a database page is) and synced.
pub fn fsyncs(dir: &Path, secs: f64) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    const SPAN: u64 = 4 << 20;
    let path = dir.join("fsync-baseline");
    let f = std::fs::File::create(&path)?;
    let buf = [0x11u8; 4096];
    let mut offset = 0;
    while offset < SPAN {
        f.write_all_at(&buf, offset)?;
        offset += buf.len() as u64;
    }
    f.sync_all()?;
    // The first syncs of a new file also commit its metadata: not timed.
    for i in 0..64 {
        f.write_all_at(&buf, i * buf.len() as u64)?;
        f.sync_data()?;
    }
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < limit {
        f.write_all_at(&buf, (n * buf.len() as u64) % SPAN)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}
