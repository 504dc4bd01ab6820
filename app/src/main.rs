//! The `mergescope` binary: see [`mergescope::cli`].

fn main() -> std::process::ExitCode {
    mergescope::cli::main()
}
