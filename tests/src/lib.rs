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

/// A JSON array of numbers (a leaderboard row's `accuracy`).
pub fn numbers(value: &serde_json::Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not an array"))
        .iter()
        .map(|v| v.as_f64().unwrap_or_else(|| panic!("{v} is not a number")))
        .collect()
}

/// `mergescope COMMAND --base BASE --out OUT EXPERT… EXTRA…` on the demo family's base and
/// its four experts: the command line of `upscale-smile`, `adamerging` and `wemoe`.
pub fn on_demo_family(
    command: &str,
    family: &mergescope_core::eval::DemoFamily,
    out: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        command.to_owned(),
        "--base".to_owned(),
        family.base().display().to_string(),
        "--out".to_owned(),
        out.to_owned(),
    ];
    args.extend(
        mergescope_core::eval::Domain::ALL
            .iter()
            .map(|d| family.expert(*d).display().to_string()),
    );
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// `mergescope bench-methods --dir DIR/board --json board.json ARGS…` run in `dir`: the
/// leaderboard's rows as JSON.
pub fn bench_methods(bin: &str, dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    bench_methods_at(bin, dir, &dir.join("board"), args).0
}

/// `mergescope bench-methods --dir BOARD --json board.json ARGS…` run in `dir`: the
/// leaderboard's rows as JSON (`dir/board.json`), and the table it printed.
pub fn bench_methods_at(
    bin: &str,
    dir: &std::path::Path,
    board: &std::path::Path,
    args: &[&str],
) -> (serde_json::Value, String) {
    let mut all = vec![
        "bench-methods",
        "--dir",
        board.to_str().expect("a UTF-8 path"),
        "--json",
        "board.json",
    ];
    all.extend_from_slice(args);
    let out = cli::run(bin, dir, &all);
    out.assert_success();
    let text = std::fs::read_to_string(dir.join("board.json")).expect("board.json");
    (serde_json::from_str(&text).expect("JSON"), out.stdout())
}
