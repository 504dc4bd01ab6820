//! `mergescope upscale-smile` on the demo family: the upscaled model written as safetensors
//! with its config, scored by `mergescope eval` exactly as the leaderboard's SMILE row, and
//! bad settings or an existing folder refused with a readable line.

use mergescope_core::eval::DemoFamily;
use mergescope_tests::cli::run;
use mergescope_tests::{bench_methods, demo_accuracies, on_demo_family};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn upscale_args(family: &DemoFamily, out: &str, extra: &[&str]) -> Vec<String> {
    on_demo_family("upscale-smile", family, out, extra)
}

#[test]
fn an_upscaled_model_is_written_scored_by_eval_and_matches_its_leaderboard_row() {
    let dir = tempfile::tempdir().unwrap();
    let family = DemoFamily::extract(&dir.path().join("family")).unwrap();
    let args = upscale_args(&family, "smile", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(BIN, dir.path(), &args);
    out.assert_success();
    assert!(
        out.stderr().contains("8 layers upscaled with 4 experts"),
        "{}",
        out.stderr()
    );
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("smile/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["model_type"], "vit", "the base's config is kept");
    assert_eq!(config["smile"]["rank"], 8);
    assert_eq!(config["smile"]["layers"].as_array().unwrap().len(), 8);

    let eval = run(BIN, dir.path(), &["eval", "smile", "--json"]);
    eval.assert_success();
    let scores: Value = serde_json::from_str(&eval.stdout()).unwrap();
    assert!(
        scores["mean/accuracy"].as_f64().unwrap() > 0.85,
        "{scores:#}"
    );

    let board = bench_methods(BIN, dir.path(), &["--methods", "smile", "--no-grid"]);
    let row = &board["rows"][0];
    assert_eq!(row["method"], "smile");
    assert!(
        row["setting"]
            .as_str()
            .unwrap()
            .starts_with("defaults (rank = 8")
    );
    let accuracy: Vec<f64> = row["accuracy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(demo_accuracies(&scores), accuracy);
    // The parameter count includes the experts: more than the base's 35,306.
    assert!(row["parameters"].as_u64().unwrap() > 35_306);
}

#[test]
fn an_existing_folder_and_impossible_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let family = DemoFamily::extract(&dir.path().join("family")).unwrap();
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    let args = upscale_args(&family, "taken", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(BIN, dir.path(), &args).assert_user_error(&["taken", "already exists"]);
    let args = upscale_args(&family, "fresh", &["--top-k", "5"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(BIN, dir.path(), &args).assert_user_error(&["top_k is 5", "4 fine-tunes"]);
    let args = upscale_args(&family, "fresh", &["--modules", "no.such.layer"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(BIN, dir.path(), &args).assert_user_error(&["no linear layer matches", "no.such.layer"]);
    assert!(!dir.path().join("fresh").exists(), "nothing was written");
}
