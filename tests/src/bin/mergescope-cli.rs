//! The `mergescope` command line, built inside this test crate so that its integration tests can
//! run it as a real process (Cargo exposes only a package's own binaries to its tests).

fn main() -> std::process::ExitCode {
    mergescope::cli::main()
}
