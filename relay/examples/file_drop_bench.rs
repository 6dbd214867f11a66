//! Throughput of the relay's file drop, measured against a running relay.
//!
//! ```text
//! sotto-relay --listen 127.0.0.1:7399 --data /tmp/bench-relay &
//! cargo run --release -p sotto-relay --example file_drop_bench -- \
//!     127.0.0.1:7399 $(sotto-relay key --data /tmp/bench-relay) 1024
//! ```
//!
//! Uploads a file of the given size in MiB (sealed on the fly, never held in
//! memory) from one fresh key to another, downloads it as the recipient,
//! opens and checks every chunk, then deletes it. Prints each rate beside the
//! baseline of this machine measured in the same run: sealing chunks with
//! `ChunkCipher` in memory, the least any upload must cost the sender. Run the
//! relay under `/usr/bin/time -v` to read its peak RSS.

use std::time::Instant;

use serde_bytes::ByteBuf;
use sotto_crypto::file::{chunk_count, chunk_len, ChunkCipher, FileId, FileKey, CHUNK_LEN};
use sotto_crypto::link;
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_keys::{RelayKey, SecretKey};
use tokio::net::TcpStream;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn plaintext(index: u64, len: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend((0..len).map(|i| (i as u64 ^ index.wrapping_mul(0x9E37_79B9)) as u8));
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: file_drop_bench ADDR RELAY_KEY [SIZE_MIB]");
        std::process::exit(2);
    }
    let addr: std::net::SocketAddr = args[1].parse()?;
    let relay: RelayKey = args[2].parse()?;
    let mib: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let size = mib << 20;

    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let id = FileId::random();
    let key = FileKey::generate();
    let cipher = ChunkCipher::new(&key, id, size)?;
    let chunks = chunk_count(size);

    // Baseline: sealing alone, in memory, for up to 256 MiB.
    let base_chunks = chunks.min(4096);
    let mut buf = Vec::with_capacity(CHUNK_LEN + 16);
    let t = Instant::now();
    let mut base_bytes = 0;
    for i in 0..base_chunks {
        let len = chunk_len(size, i).unwrap_or(0);
        plaintext(i, len, &mut buf);
        cipher.seal(i, &mut buf)?;
        base_bytes += len as u64;
    }
    let seal_rate = mib_per_s(base_bytes, t.elapsed().as_secs_f64());

    // Upload: one task sends, this one reads the relay's answers.
    let (r, w) = TcpStream::connect(addr).await?.into_split();
    let (mut reader, mut writer, _) = link::connect(r, w, &alice, &relay).await?;
    let to = bob.public();
    let t = Instant::now();
    writer
        .send(&ClientMsg::UploadBegin {
            req: 1,
            file_id: id,
            to,
            size,
        })
        .await?;
    writer.flush().await?;
    match reader.recv::<RelayMsg>().await? {
        Some(RelayMsg::UploadState { have: 0, .. }) => {}
        other => return Err(format!("unexpected answer to UploadBegin: {other:?}").into()),
    }
    let sender = tokio::spawn(async move {
        let cipher = ChunkCipher::new(&key, id, size)?;
        let mut buf = Vec::with_capacity(CHUNK_LEN + 16);
        for index in 0..chunks {
            plaintext(index, chunk_len(size, index).unwrap_or(0), &mut buf);
            cipher.seal(index, &mut buf)?;
            let data = ByteBuf::from(std::mem::take(&mut buf));
            writer
                .send(&ClientMsg::UploadChunk {
                    file_id: id,
                    index,
                    data,
                })
                .await?;
            buf = Vec::with_capacity(CHUNK_LEN + 16);
        }
        writer
            .send(&ClientMsg::UploadEnd {
                req: 2,
                file_id: id,
            })
            .await?;
        writer.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((writer, key))
    });
    let mut progress = 0;
    loop {
        match reader.recv::<RelayMsg>().await? {
            Some(RelayMsg::UploadProgress { .. }) => progress += 1,
            Some(RelayMsg::UploadDone { req: 2, .. }) => break,
            other => return Err(format!("unexpected during upload: {other:?}").into()),
        }
    }
    let up = t.elapsed().as_secs_f64();
    let (_writer, key) = sender.await??;

    // Download as the recipient, opening and checking every chunk.
    let (r, w) = TcpStream::connect(addr).await?.into_split();
    let (mut reader, mut writer, _) = link::connect(r, w, &bob, &relay).await?;
    let cipher = ChunkCipher::new(&key, id, size)?;
    let t = Instant::now();
    writer
        .send(&ClientMsg::Download {
            req: 3,
            file_id: id,
            from: 0,
        })
        .await?;
    writer.flush().await?;
    let mut next = 0;
    let mut want = Vec::with_capacity(CHUNK_LEN);
    loop {
        match reader.recv::<RelayMsg>().await? {
            Some(RelayMsg::DownloadChunk { index, data, .. }) if index == next => {
                let mut data = data.into_vec();
                cipher.open(index, &mut data)?;
                plaintext(index, data.len(), &mut want);
                if data != want {
                    return Err(format!("chunk {index} differs").into());
                }
                next += 1;
            }
            Some(RelayMsg::DownloadEnd { req: 3, .. }) if next == chunks => break,
            other => return Err(format!("unexpected during download: {other:?}").into()),
        }
    }
    let down = t.elapsed().as_secs_f64();
    writer
        .send(&ClientMsg::DeleteBlob {
            req: 4,
            file_id: id,
        })
        .await?;
    writer.flush().await?;
    match reader.recv::<RelayMsg>().await? {
        Some(RelayMsg::BlobDeleted { deleted: true, .. }) => {}
        other => return Err(format!("unexpected answer to DeleteBlob: {other:?}").into()),
    }

    println!("file: {mib} MiB, {chunks} chunks, {progress} checkpoints reported");
    println!("baseline  seal in memory  {seal_rate:8.0} MiB/s");
    for (what, secs) in [("upload  ", up), ("download", down)] {
        let rate = mib_per_s(size, secs);
        println!(
            "{what}  {secs:6.2} s       {rate:8.0} MiB/s  ({:.2} of the baseline)",
            rate / seal_rate
        );
    }
    Ok(())
}
