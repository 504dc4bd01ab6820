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

/// The demo objective's accuracy on each domain, then the mean, from `mergescope eval --json`'s
/// scores: the order of a leaderboard row's `accuracy`.
pub fn demo_accuracies(scores: &serde_json::Value) -> Vec<f64> {
    ["upright", "rotated", "mirrored", "inverted", "mean"]
        .iter()
        .map(|domain| {
            scores[format!("{domain}/accuracy")]
                .as_f64()
                .unwrap_or_else(|| panic!("no {domain}/accuracy in {scores}"))
        })
        .collect()
}
