//! See `sotto_tests::fuzz::tree_manifest` for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sotto_tests::fuzz::tree_manifest(data));
