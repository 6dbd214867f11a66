//! Hostile bytes on the relay's port close only their own connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sotto_tests::raw::Raw;
use sotto_tests::{Client, Relay};

/// Reads until the relay closes the connection; false if it stays open past `limit`.
fn closed_within(mut s: &TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true, // reset
        }
    }
    false
}

#[test]
fn garbage_half_handshakes_and_oversized_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        &dir.path().join("relay"),
        Some("handshake_timeout = \"1s\"\n"),
    );
    let alice = Client::new(&relay);
    let bob = Client::new(&relay);
    alice.add_contact("bob", &bob);
    bob.add_contact("alice", &alice);

    // Garbage instead of a preamble.
    let mut garbage = TcpStream::connect(&relay.addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();

    // A first handshake message declaring 65,535 bytes where 32 are allowed.
    let mut oversized = TcpStream::connect(&relay.addr).unwrap();
    oversized.write_all(b"sotto\0\0\x01\xff\xff").unwrap();
    oversized.write_all(&[0x41; 1000]).unwrap();

    // Half handshakes: a valid message 1, then silence.
    let halves: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = TcpStream::connect(&relay.addr).unwrap();
            s.write_all(b"sotto\0\0\x01\x00\x20").unwrap();
            s.write_all(&[i as u8 + 1; 32]).unwrap();
            s
        })
        .collect();

    // A silent connection that never sends a byte.
    let silent = TcpStream::connect(&relay.addr).unwrap();

    // An authenticated client announcing a 1 GiB message.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mallory = Client::new(&relay);
    let mut big = rt.block_on(Raw::connect(&relay.addr, &mallory.secret(), &relay.key));

    // Meanwhile a good client works normally.
    alice.run(&["send", "bob", "still working"]).ok();
    assert!(bob.run(&["inbox"]).ok().contains("alice: still working"));

    rt.block_on(async {
        big.writer
            .send_record_plaintext(&(1u32 << 30).to_le_bytes())
            .await
            .unwrap();
        big.writer.flush().await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), big.reader.recv_bytes()).await;
        assert!(
            matches!(closed, Ok(Ok(None)) | Ok(Err(_))),
            "the relay closes a link that announces an oversized message"
        );
    });
    assert!(
        closed_within(&garbage, Duration::from_secs(5)),
        "garbage connection left open"
    );
    assert!(
        closed_within(&oversized, Duration::from_secs(5)),
        "oversized frame left open"
    );
    for h in &halves {
        assert!(
            closed_within(h, Duration::from_secs(5)),
            "half handshake outlived its timeout"
        );
    }
    assert!(
        closed_within(&silent, Duration::from_secs(5)),
        "silent connection outlived the handshake timeout"
    );

    // And the good client still works after all of that.
    bob.run(&["send", "alice", "after the storm"]).ok();
    assert!(alice.run(&["inbox"]).ok().contains("bob: after the storm"));

    let (ok, log) = relay.terminate();
    assert!(ok, "{log}");
    for reason in [
        "bad preamble",
        "record of 65535 bytes exceeds the limit of 32",
        "handshake not finished within",
        "message of 1073741824 bytes exceeds",
    ] {
        assert!(log.contains(reason), "relay log lacks {reason:?}:\n{log}");
    }
}

#[test]
fn an_authenticated_client_that_goes_silent_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), Some("idle_timeout = \"1s\"\n"));
    let quiet = Client::new(&relay);
    let chatty = Client::new(&relay);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut silent = Raw::connect(&relay.addr, &quiet.secret(), &relay.key).await;
        let mut pinging = Raw::connect(&relay.addr, &chatty.secret(), &relay.key).await;
        // The pinging client outlives several idle periods.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            pinging.send(&sotto_crypto::wire::ClientMsg::Ping).await;
            assert_eq!(pinging.recv().await, sotto_crypto::wire::RelayMsg::Pong);
        }
        let end = tokio::time::timeout(Duration::from_secs(5), silent.reader.recv_bytes()).await;
        assert!(
            matches!(end, Ok(Ok(None)) | Ok(Err(_))),
            "a silent connection is closed by the relay"
        );
    });
    let (_, log) = relay.terminate();
    assert!(log.contains("idle for"), "{log}");
}
