//! The client's bound on the size of a file it receives: an offer over it is
//! refused with the setting to raise, and stays on the relay until it is.

use sotto_tests::{Client, Relay};

#[test]
fn a_file_over_the_download_limit_is_refused_and_received_once_it_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), None);
    let (alice, bob) = Client::pair(&relay);
    let config = bob.home().join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{original}max_download_size = 1000\n")).unwrap();

    let src = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(src.path().join("big.bin"), &big).unwrap();
    std::fs::write(src.path().join("small.txt"), b"fits").unwrap();
    for name in ["big.bin", "small.txt"] {
        let path = src.path().join(name);
        alice
            .run(&["send-file", "bob", path.to_str().unwrap()])
            .ok();
    }

    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let run = bob.run(&["receive-all", "--dir", out_dir]);
    assert!(!run.out.status.success(), "{}", run.stderr());
    assert!(
        run.stdout().contains("received small.txt"),
        "{}",
        run.stdout()
    );
    let err = run.stderr();
    let line = err
        .lines()
        .find(|l| l.starts_with("sotto: error: big.bin: "))
        .unwrap_or_else(|| panic!("no line for big.bin:\n{err}"));
    assert!(
        line.contains("5000 bytes, more than max_download_size (1000 bytes"),
        "{line}"
    );
    assert!(line.contains("stays on the relay"), "{line}");
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["small.txt"]);

    // Refused again while the limit holds: the offer is still there.
    let again = bob.run(&["receive-all", "--dir", out_dir]);
    assert!(
        again.stderr().contains("sotto: error: big.bin: "),
        "{}",
        again.stderr()
    );

    std::fs::write(&config, format!("{original}max_download_size = 10000\n")).unwrap();
    let run = bob.run(&["receive-all", "--dir", out_dir]);
    assert!(
        run.ok().contains("received big.bin (5000 bytes)"),
        "{}",
        run.stdout()
    );
    assert_eq!(std::fs::read(out.path().join("big.bin")).unwrap(), big);
}
