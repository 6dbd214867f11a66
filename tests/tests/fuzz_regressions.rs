//! Every checked-in fuzz input, through the checks of its fuzz target.
//!
//! `fuzz/corpus/<target>/` holds the seeds and a slice of the corpus each
//! target grew; `fuzz/regressions/<target>/` every input that once made a
//! target fail. A plain `cargo test` runs them all through the same checks as
//! the fuzzers (`sotto_tests::fuzz`), so what a fuzzer found stays fixed
//! without cargo-fuzz or a nightly compiler.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use sotto_tests::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `kind` (`corpus` or `regressions`); returns how many
/// each target had, and the inputs that failed.
fn run(kind: &str) -> (Vec<(&'static str, usize)>, Vec<String>) {
    let mut counts = Vec::new();
    let mut failed = Vec::new();
    for (name, check) in TARGETS {
        let files = inputs(&fuzz_dir().join(kind).join(name));
        for file in &files {
            let data = std::fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
        counts.push((*name, files.len()));
    }
    (counts, failed)
}

#[test]
fn every_corpus_input_passes_its_target() {
    let (counts, failed) = run("corpus");
    assert!(failed.is_empty(), "failing corpus inputs: {failed:#?}");
    for (name, n) in counts {
        assert!(n > 0, "fuzz/corpus/{name}/ has no inputs");
    }
}

#[test]
fn every_input_that_once_crashed_now_passes() {
    let (_, failed) = run("regressions");
    assert!(failed.is_empty(), "failing regression inputs: {failed:#?}");
}

#[test]
fn every_fuzz_target_has_a_check_and_the_other_way_round() {
    let mut targets: Vec<String> = inputs(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    targets.sort();
    let mut checks: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    checks.sort();
    assert_eq!(targets, checks);
}

/// The `session_open` seeds open on the fixture, so the fuzzer starts inside
/// every kind's decoder rather than at its authentication failure.
#[test]
fn the_session_fixture_opens_every_kind_of_seed() {
    use sotto_crypto::session::{SessionConfig, SessionStore};
    use sotto_tests::fuzz::{session_fixture_path, session_now, session_parties};

    let [me, alice, carol, _] = session_parties();
    let state = std::fs::read(session_fixture_path()).unwrap();
    let seeds = fuzz_dir().join("corpus/session_open");
    for (seed, kind, forward_secret) in [
        ("seed-kind1", 1, false),
        ("seed-kind2", 2, false),
        ("seed-kind3", 3, true),
        ("seed-kind3-bare", 3, true),
        ("seed-kind4", 4, true),
    ] {
        let envelope = std::fs::read(seeds.join(seed)).unwrap();
        assert_eq!(envelope[1], kind);
        let mut store = SessionStore::decode(&state, SessionConfig::default()).unwrap();
        let got = store
            .open(&me, &envelope, session_now(), |k| {
                *k == alice.public() || *k == carol.public()
            })
            .unwrap_or_else(|e| panic!("{seed}: {e}"));
        assert_eq!(got.forward_secret, forward_secret, "{seed}");
    }
}
