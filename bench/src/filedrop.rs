//! File drop: a file uploaded and downloaded through the client library's
//! `upload` and `download` modules, the code paths of `sotto send-file` and
//! `sotto receive-all` (without their offer envelope and their printing).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use sotto_client::config::{Config, RelayPin};
use sotto_client::download_limits::DownloadLimits;
use sotto_client::upload_state::UploadState;
use sotto_client::{download, relay_client, upload};
use sotto_crypto::file::FileOffer;
use sotto_keys::{RelayAddr, SecretKey};

use crate::baseline::Baselines;
use crate::relay_proc::RelayChild;
use crate::report::{cpu_secs, mbps, reset_peak, status_kib, Table, Verdict};
use crate::Scale;

/// Peak RSS target while moving the file, KiB.
const RSS_TARGET_KIB: u64 = 64 * 1024;
/// The stretch target for 1 GiB up then down, seconds.
const STRETCH_SECS_PER_GIB: f64 = 3.6;

/// Uploads then downloads one file; adds the rows.
pub async fn measure(
    scale: &Scale,
    tmp: &Path,
    base: &Baselines,
    t: &mut Table,
) -> anyhow::Result<()> {
    let size = scale.file_bytes;
    let src = tmp.join("dropped.bin");
    {
        let src = src.clone();
        tokio::task::spawn_blocking(move || make_file(&src, size)).await??;
    }
    let relay = RelayChild::start(tmp, "relay-filedrop").await?;
    let pin = RelayPin {
        addr: RelayAddr::new("127.0.0.1", relay.addr.port())?,
        key: relay.key,
        nodes: Vec::new(),
    };
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());

    reset_peak("self");
    relay.reset_peak();
    let cpu0 = (cpu_secs("self"), relay.cpu_secs());
    let started = Instant::now();
    let mut conn = relay_client::connect(&pin, &alice).await?;
    let source = upload::Source::inspect(&src)?;
    let state = UploadState::new(source.fingerprint);
    let have = upload::begin(&mut conn, &bob.public(), &source, &state).await?;
    let hash = upload::send(&mut conn, &source, &state, have, &mut |_, _| {}).await?;
    let up = started.elapsed().as_secs_f64();
    let cpu_up = (cpu_secs("self") - cpu0.0, relay.cpu_secs() - cpu0.1);
    conn.close().await;
    let client_up = status_kib("self", "VmHWM").unwrap_or(0);
    let relay_up = relay.peak_kib();

    // The source leaves the page cache's way; the blob stays on the relay.
    std::fs::remove_file(&src)?;
    let out = tmp.join("received");
    std::fs::create_dir_all(&out)?;
    let offer = FileOffer {
        file_id: state.file_id,
        name: "dropped.bin".into(),
        size,
        hash,
        key: state.key.clone(),
    };
    reset_peak("self");
    relay.reset_peak();
    let cpu0 = (cpu_secs("self"), relay.cpu_secs());
    let started = Instant::now();
    let mut conn = relay_client::connect(&pin, &bob).await?;
    // The checks `receive-all` makes with a default config.
    let limits = DownloadLimits::from_config(&Config::default());
    let path = download::download(
        &mut conn,
        &out,
        &offer,
        sotto_client::offers::OfferKind::File,
        &limits,
        &mut |_, _| {},
    )
    .await?;
    let down = started.elapsed().as_secs_f64();
    let cpu_down = (cpu_secs("self") - cpu0.0, relay.cpu_secs() - cpu0.1);
    conn.close().await;
    let client_down = status_kib("self", "VmHWM").unwrap_or(0);
    let relay_down = relay.peak_kib();
    let received = std::fs::metadata(&path)?.len();
    std::fs::remove_file(&path)?;
    relay.stop().await;
    std::fs::remove_dir_all(tmp.join("relay-filedrop"))?;

    let mib = size >> 20;
    let gib = size as f64 / f64::from(1u32 << 30);
    t.section(&format!("file drop, {mib} MiB, verified by the client"));
    let aead = base.aead_mbps;
    for (what, secs) in [
        ("upload (send-file path)", up),
        ("download (receive-all path)", down),
    ] {
        let rate = mbps(size, secs);
        t.row(
            what,
            format!("{rate:.0} MB/s"),
            format!("AEAD {aead:.0} MB/s"),
            Some(rate / aead),
            ">= 0.30",
            Verdict::of(rate / aead >= 0.30),
        );
    }
    let total = up + down;
    let wire_secs = 2.0 * size as f64 / (base.tcp_mbps * 1e6);
    let stretch = STRETCH_SECS_PER_GIB * size as f64 / f64::from(1u32 << 30);
    t.row(
        "upload + download, time",
        format!("{total:.2} s"),
        format!("2x file over TCP {wire_secs:.2} s"),
        Some(total / wire_secs),
        &format!("< {stretch:.2} s"),
        Verdict::of(total < stretch),
    );
    let file_kib = size / 1024;
    for (what, kib) in [
        ("peak RSS, client, upload", client_up),
        ("peak RSS, relay, upload", relay_up),
        ("peak RSS, client, download", client_down),
        ("peak RSS, relay, download", relay_down),
    ] {
        t.row(
            what,
            format!("{:.1} MiB", kib as f64 / 1024.0),
            format!("file {mib} MiB"),
            Some(kib as f64 / file_kib.max(1) as f64),
            "< 64 MiB",
            Verdict::of(kib < RSS_TARGET_KIB),
        );
    }
    if received != size {
        t.note(format!(
            "the received file has {received} bytes instead of {size}"
        ));
    }
    t.note(
        "file drop: the relay runs in a child process (sotto_relay::Relay, default config) and \
         the client in the bench process, so each peak RSS (VmHWM, reset before each phase) is its own; \
         the source file was just written, so it is read from the page cache; the received file is \
         synced before it is published",
    );
    t.note(format!(
        "file drop: CPU used (cores' worth over the phase): upload client {:.0}% / relay {:.0}%, \
         download client {:.0}% / relay {:.0}%; per GiB, upload {:.2} + {:.2} s and download \
         {:.2} + {:.2} s of CPU (client + relay) on this machine's {} cores",
        100.0 * cpu_up.0 / up,
        100.0 * cpu_up.1 / up,
        100.0 * cpu_down.0 / down,
        100.0 * cpu_down.1 / down,
        cpu_up.0 / gib,
        cpu_up.1 / gib,
        cpu_down.0 / gib,
        cpu_down.1 / gib,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    Ok(())
}

/// Writes `size` bytes of incompressible-looking data.
fn make_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
