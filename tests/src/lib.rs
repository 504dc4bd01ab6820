//! Fixtures and checks shared by mergescope's end-to-end tests.
//!
//! Tests build real safetensors files with the `safetensors` crate's own writer (not
//! mergescope's), run the real `mergescope` command line on them, and read results back with an
//! independent reader, so a bug shared by mergescope's reader and writer cannot hide itself.

pub mod cli;
pub mod compare;
pub mod fixture;
pub mod mergekit;

use std::path::PathBuf;

/// The parity acceptance set (mergekit 0.1.5's outputs), vendored from `shared/parity` so CI
/// needs nothing outside the repository.
pub fn parity_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("parity")
}
