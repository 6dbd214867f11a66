//! The encrypted file drop: byte-exact round trips, tampering on the relay's
//! disk, uploads cut mid-way and resumed, hostile names, quotas, and the
//! relay's blindness to content and names.

use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;
use sotto_crypto::envelope::{self, Body, Content};
use sotto_crypto::file::{self, ChunkCipher, ContentHash, FileId, FileKey, FileOffer};
use sotto_crypto::wire::{ClientMsg, RelayMsg};
use sotto_tests::proxy::{OnLimit, Proxy};
use sotto_tests::raw::Raw;
use sotto_tests::{contains, files_under, Client, Relay};

const CHUNK: usize = file::CHUNK_LEN;
const SEALED: usize = file::SEALED_CHUNK_LEN;

/// Deterministic, incompressible-looking content of `len` bytes.
pub(crate) fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

pub(crate) fn blobs(relay: &Relay) -> Vec<PathBuf> {
    let dir = relay.data.join("blobs");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn blob_of_len(relay: &Relay, len: u64) -> PathBuf {
    blobs(relay)
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == len))
        .unwrap_or_else(|| panic!("no blob of {len} bytes among {:?}", blobs(relay)))
}

/// Names of the regular files in `dir` (not recursive).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn files_of_boundary_sizes_arrive_byte_exact_and_leave_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let src = tempfile::tempdir().unwrap();
    let sizes = [0, 1, CHUNK, 2 * CHUNK, 3 * CHUNK + 7];
    let mut paths = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        paths.push(write(
            src.path(),
            &format!("file-{size}.bin"),
            &content(*size, i as u8),
        ));
    }
    let mut args = vec!["send-file", "bob"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    alice.run(&args).ok();
    alice.run(&["send", "bob", "files are up"]).ok();

    let out_dir = tempfile::tempdir().unwrap();
    let run = bob.run(&["receive-all", "--dir", out_dir.path().to_str().unwrap()]);
    let stdout = run.ok();
    assert!(
        stdout.contains("alice: files are up"),
        "text messages come too:\n{stdout}"
    );
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("file-{size}.bin");
        let got = std::fs::read(out_dir.path().join(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{stdout}"));
        assert_eq!(got, content(*size, i as u8), "{name} differs");
    }
    assert_eq!(
        names_in(out_dir.path()).len(),
        sizes.len(),
        "no temp files left behind"
    );
    assert!(
        blobs(&relay).is_empty(),
        "received blobs are deleted from the relay"
    );

    let again = bob.run(&["receive-all", "--dir", out_dir.path().to_str().unwrap()]);
    assert_eq!(again.ok(), "");
    assert!(again.stderr().contains("no new"), "{}", again.stderr());
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let src = tempfile::tempdir().unwrap();
    let path = write(src.path(), "notes.txt", b"new notes");
    alice
        .run(&["send-file", "bob", path.to_str().unwrap()])
        .ok();
    let out_dir = tempfile::tempdir().unwrap();
    write(out_dir.path(), "notes.txt", b"precious old notes");
    bob.run(&["receive-all", "--dir", out_dir.path().to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read(out_dir.path().join("notes.txt")).unwrap(),
        b"precious old notes"
    );
    assert_eq!(
        std::fs::read(out_dir.path().join("notes (1).txt")).unwrap(),
        b"new notes"
    );
}

#[test]
fn tampered_chunks_fail_only_their_own_file_which_stays_on_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let src = tempfile::tempdir().unwrap();
    // Distinct sizes so each sealed blob can be found by its length.
    let victims = ["flipped", "truncated", "reordered", "duplicated", "swapped"];
    let mut paths = Vec::new();
    for (i, name) in victims.iter().enumerate() {
        paths.push(write(
            src.path(),
            &format!("{name}.bin"),
            &content(3 * CHUNK + 1 + i, i as u8),
        ));
    }
    let donor_size = 3 * CHUNK + 100;
    paths.push(write(src.path(), "donor.bin", &content(donor_size, 50)));
    paths.push(write(src.path(), "intact.bin", &content(CHUNK + 3, 60)));
    let mut args = vec!["send-file", "bob"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    alice.run(&args).ok();

    let sealed = |size: usize| file::sealed_len(size as u64);
    // Found by length before any edit changes a length.
    let tampered_blobs: Vec<PathBuf> = (0..victims.len())
        .map(|i| blob_of_len(&relay, sealed(3 * CHUNK + 1 + i)))
        .collect();
    let blob = |i: usize| tampered_blobs[i].clone();
    let donor = std::fs::read(blob_of_len(&relay, sealed(donor_size))).unwrap();
    let edit = |path: PathBuf, f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = std::fs::read(&path).unwrap();
        f(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
    };
    edit(blob(0), &|b| b[2 * SEALED + 10] ^= 0x01);
    edit(blob(1), &|b| b.truncate(b.len() - 10));
    edit(blob(2), &|b| {
        let (first, rest) = b.split_at_mut(SEALED);
        first.swap_with_slice(&mut rest[..SEALED]);
    });
    edit(blob(3), &|b| {
        let first = b[..SEALED].to_vec();
        b[SEALED..2 * SEALED].copy_from_slice(&first);
    });
    edit(blob(4), &|b| {
        b[SEALED..2 * SEALED].copy_from_slice(&donor[SEALED..2 * SEALED])
    });

    let out_dir = tempfile::tempdir().unwrap();
    let run = bob.run(&["receive-all", "--dir", out_dir.path().to_str().unwrap()]);
    assert!(
        !run.out.status.success(),
        "tampering must make receive-all fail"
    );
    let stderr = run.stderr();
    for name in victims {
        assert!(
            stderr.lines().any(|l| l.contains(&format!("{name}.bin"))),
            "no error line names {name}.bin:\n{stderr}"
        );
    }
    assert_eq!(
        names_in(out_dir.path()),
        ["donor.bin", "intact.bin"],
        "only the intact files arrive; nothing is left under a tampered name"
    );
    assert_eq!(
        std::fs::read(out_dir.path().join("intact.bin")).unwrap(),
        content(CHUNK + 3, 60)
    );
    for b in &tampered_blobs {
        assert!(b.exists(), "a tampered blob stays on the relay for a retry");
    }
    // A retry fails the same way and still publishes nothing.
    let retry = bob.run(&["receive-all", "--dir", out_dir.path().to_str().unwrap()]);
    assert!(!retry.out.status.success());
    assert_eq!(names_in(out_dir.path()), ["donor.bin", "intact.bin"]);
}

fn resume_case(kill_relay: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let proxy = Proxy::start(&relay.addr);
    let proxy_port = proxy.addr.rsplit(':').next().unwrap().to_owned();
    alice
        .run(&[
            "relay",
            "set",
            &format!("127.0.0.1:{proxy_port}"),
            &relay.key,
        ])
        .ok();

    let size = 40 * 1024 * 1024 + 12_345;
    let src = tempfile::tempdir().unwrap();
    let path = write(src.path(), "big.bin", &content(size, 9));
    // Let ~24 MiB through: past the relay's first durable checkpoint.
    proxy.limit(
        24 << 20,
        if kill_relay {
            OnLimit::Stall
        } else {
            OnLimit::Cut
        },
    );
    let first = if kill_relay {
        let child = std::thread::spawn({
            let args = ["send-file", "bob", path.to_str().unwrap()].map(String::from);
            let home = alice.home().to_owned();
            move || {
                std::process::Command::new(sotto_tests::bin("sotto"))
                    .args(&args)
                    .env("SOTTO_HOME", home)
                    .output()
                    .unwrap()
            }
        });
        while !proxy.reached() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        relay.kill(); // mid-upload, with chunks in flight
        let out = child.join().unwrap();
        relay.restart();
        out
    } else {
        alice.run(&["send-file", "bob", path.to_str().unwrap()]).out
    };
    assert!(!first.status.success(), "the cut upload must fail");
    assert!(
        !blobs(&relay).is_empty(),
        "part of the upload is on the relay"
    );

    proxy.unlimited();
    let again = alice.run(&["send-file", "bob", path.to_str().unwrap()]);
    again.ok();
    assert!(
        again.stderr().contains("resuming"),
        "the second run resumes:\n{}",
        again.stderr()
    );

    let out_dir = tempfile::tempdir().unwrap();
    bob.run(&["receive-all", "--dir", out_dir.path().to_str().unwrap()])
        .ok();
    assert!(
        std::fs::read(out_dir.path().join("big.bin")).unwrap() == content(size, 9),
        "resumed file differs"
    );
}

#[test]
fn an_upload_cut_by_a_dropped_connection_resumes_to_a_correct_file() {
    resume_case(false);
}

#[test]
fn an_upload_cut_by_a_relay_crash_resumes_to_a_correct_file() {
    resume_case(true);
}

#[test]
fn the_relay_disk_holds_neither_file_content_nor_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = Relay::start(&data, None);
    let (alice, _bob) = Client::pair(&relay);
    let src = tempfile::tempdir().unwrap();
    let marker = b"CONTENT-MARKER-1b7e-sealed-before-it-leaves";
    let body: Vec<u8> = marker.iter().copied().cycle().take(3 * CHUNK).collect();
    let name = "quarterly-secret-plan-e4d2.txt";
    let path = write(src.path(), name, &body);
    alice
        .run(&["send-file", "bob", path.to_str().unwrap()])
        .ok();
    let files = files_under(&data);
    assert!(files.iter().any(|(p, _)| p.starts_with(data.join("blobs"))));
    for (p, bytes) in files {
        assert!(
            !contains(&bytes, marker),
            "{} holds file content",
            p.display()
        );
        assert!(
            !contains(&bytes, name.as_bytes()),
            "{} holds the file name",
            p.display()
        );
        assert!(
            !contains(&bytes, b"quarterly-secret"),
            "{} holds part of the name",
            p.display()
        );
        assert!(!p.to_string_lossy().contains("quarterly"));
    }
}

/// A malicious sender who uploads directly and names files as they please.
fn drop_with_name(relay: &Relay, sender: &Client, to: &Client, name: &str, data: &[u8], req: u32) {
    drop_offer(relay, sender, to, name, data, req, Content::File);
}

/// A malicious sender's upload of `data`, offered as `as_content` says.
pub(crate) fn drop_offer(
    relay: &Relay,
    sender: &Client,
    to: &Client,
    name: &str,
    data: &[u8],
    req: u32,
    as_content: fn(FileOffer) -> Content,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let me = sender.secret();
        let mut raw = Raw::connect(&relay.addr, &me, &relay.key).await;
        let to_key = to.key.parse().unwrap();
        let key = FileKey::generate();
        let file_id = FileId::random();
        let size = data.len() as u64;
        raw.send(&ClientMsg::UploadBegin {
            req,
            file_id,
            to: to_key,
            size,
        })
        .await;
        assert!(matches!(
            raw.recv().await,
            RelayMsg::UploadState { have: 0, .. }
        ));
        let cipher = ChunkCipher::new(&key, file_id, size).unwrap();
        let mut hash = ContentHash::new();
        for index in 0..cipher.chunks() {
            let start = index as usize * CHUNK;
            let mut buf = data[start..(start + CHUNK).min(data.len())].to_vec();
            hash.update(&buf);
            cipher.seal(index, &mut buf).unwrap();
            raw.send(&ClientMsg::UploadChunk {
                file_id,
                index,
                data: ByteBuf::from(buf),
            })
            .await;
        }
        raw.send(&ClientMsg::UploadEnd {
            req: req + 1,
            file_id,
        })
        .await;
        loop {
            match raw.recv().await {
                RelayMsg::UploadDone { .. } => break,
                RelayMsg::UploadProgress { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let offer = FileOffer {
            file_id,
            name: name.to_owned(),
            size,
            hash: hash.finish(),
            key,
        };
        let env = envelope::seal(&me, &to_key, &Body::new(as_content(offer))).unwrap();
        raw.send(&ClientMsg::Send {
            req: req + 2,
            to: to_key,
            envelope: ByteBuf::from(env),
        })
        .await;
        assert_eq!(raw.recv().await, RelayMsg::Stored { req: req + 2 });
    });
}

#[test]
fn hostile_file_names_land_safely_inside_the_target_dir() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let root = tempfile::tempdir().unwrap();
    let out_dir = root.path().join("inbox");
    std::fs::create_dir(&out_dir).unwrap();
    let escape = root.path().join("escaped");
    let names = [
        "../escaped".to_owned(),
        escape.to_string_lossy().into_owned(),
        "a\nb\x1b[31m.txt".to_owned(),
        String::new(),
        "..".to_owned(),
        "sub/../../escaped".to_owned(),
        "C:\\Windows\\escaped".to_owned(),
    ];
    for (i, name) in names.iter().enumerate() {
        drop_with_name(
            &relay,
            &alice,
            &bob,
            name,
            &content(100 + i, i as u8),
            10 * i as u32 + 1,
        );
    }
    let run = bob.run(&["receive-all", "--dir", out_dir.to_str().unwrap()]);
    run.ok();
    assert!(
        !run.out.stdout.contains(&0x1b),
        "an escape sequence reached the terminal"
    );
    assert_eq!(
        names_in(root.path()),
        ["inbox"],
        "nothing escaped the target dir"
    );
    let landed = names_in(&out_dir);
    assert_eq!(landed.len(), names.len(), "every file arrived: {landed:?}");
    for name in &landed {
        assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
        assert!(!name.contains('/') && !name.contains('\\'), "{name:?}");
        assert!(!name.chars().any(char::is_control), "{name:?}");
    }
    let mut contents: Vec<Vec<u8>> = landed
        .iter()
        .map(|n| std::fs::read(out_dir.join(n)).unwrap())
        .collect();
    contents.sort();
    let mut want: Vec<Vec<u8>> = (0..names.len())
        .map(|i| content(100 + i, i as u8))
        .collect();
    want.sort();
    assert_eq!(contents, want);
}

#[test]
fn a_full_file_quota_gives_the_sender_a_clear_error_before_uploading() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        Some("[files]\nmax_bytes_per_recipient = 1048576\n"),
    );
    let (alice, _bob) = Client::pair(&relay);
    let src = tempfile::tempdir().unwrap();
    let path = write(src.path(), "too-big.bin", &content(2 << 20, 1));
    let err = alice
        .run(&["send-file", "bob", path.to_str().unwrap()])
        .fails();
    assert!(err.contains("full") || err.contains("quota"), "{err}");
    assert!(blobs(&relay)
        .iter()
        .all(|b| std::fs::metadata(b).is_ok_and(|m| m.len() == 0)));
}

#[test]
fn a_download_cut_mid_way_resumes_and_fetches_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let size = 24 * 1024 * 1024 + 999;
    let src = tempfile::tempdir().unwrap();
    let path = write(src.path(), "movie.bin", &content(size, 21));
    alice
        .run(&["send-file", "bob", path.to_str().unwrap()])
        .ok();

    let proxy = Proxy::start(&relay.addr);
    let proxy_port = proxy.addr.rsplit(':').next().unwrap().to_owned();
    bob.run(&[
        "relay",
        "set",
        &format!("127.0.0.1:{proxy_port}"),
        &relay.key,
    ])
    .ok();
    let out_dir = tempfile::tempdir().unwrap();
    let dir_arg = out_dir.path().to_str().unwrap();

    proxy.limit_down(12 << 20);
    let cut = bob.run(&["receive-all", "--dir", dir_arg]);
    assert!(!cut.out.status.success(), "the cut download must fail");
    assert!(
        !out_dir.path().join("movie.bin").exists(),
        "nothing published early"
    );
    let parts: Vec<String> = names_in(out_dir.path());
    assert_eq!(
        parts.len(),
        1,
        "the partial download is kept for a resume: {parts:?}"
    );

    proxy.unlimited();
    proxy.reset_down_bytes();
    bob.run(&["receive-all", "--dir", dir_arg]).ok();
    assert!(std::fs::read(out_dir.path().join("movie.bin")).unwrap() == content(size, 21));
    assert_eq!(names_in(out_dir.path()), ["movie.bin"]);
    let fetched = proxy.down_bytes();
    assert!(
        fetched < (size as u64) * 3 / 4,
        "the second run fetched {fetched} bytes of a {size}-byte file: it started over"
    );
}
