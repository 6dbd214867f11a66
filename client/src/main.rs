//! The `sotto` binary: everything is in the library, see `sotto_client::main`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sotto_client::main()
}
