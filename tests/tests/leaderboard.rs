//! `mergescope bench-methods`: the method leaderboard on the built-in demo family. A row's
//! numbers are `mergescope eval` of its recipe (merged to disk, then scored), its grid's
//! setting was chosen on the training images, and methods that cannot merge four experts are
//! listed with the reason.

use std::path::Path;

use mergescope_tests::cli::run;
use mergescope_tests::{bench_methods_at, demo_accuracies, numbers};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn bench(dir: &Path, args: &[&str]) -> (Value, String) {
    bench_methods_at(BIN, dir, dir, args)
}

/// Writes `row`'s recipe beside the family's own and checks that `mergescope eval` of it (a
/// merge to disk, then scored) gives the row's accuracies exactly.
fn assert_row_is_eval(dir: &Path, name: &str, row: &Value) {
    let recipes = dir.join("family").join("recipes");
    let file = format!("{name}.yml");
    std::fs::write(recipes.join(&file), row["recipe"].as_str().unwrap()).unwrap();
    let eval = run(BIN, &recipes, &["eval", &file, "--json"]);
    eval.assert_success();
    let scores: Value = serde_json::from_str(&eval.stdout()).unwrap();
    assert_eq!(
        demo_accuracies(&scores),
        numbers(&row["accuracy"]),
        "{name} ({})",
        row["setting"]
    );
}

#[test]
fn every_row_is_what_mergescope_eval_says_of_its_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let (board, table) = bench(dir.path(), &["--methods", "sce"]);
    let rows = board["rows"].as_array().unwrap();
    // The defaults and the grid's best.
    assert_eq!(rows.len(), 2, "{board:#}");
    let means: Vec<f64> = rows
        .iter()
        .map(|r| *numbers(&r["accuracy"]).last().unwrap())
        .collect();
    assert!(means[0] >= means[1], "ranked by mean: {means:?}");
    for (i, row) in rows.iter().enumerate() {
        let setting = row["setting"].as_str().unwrap();
        if setting == "defaults" {
            assert!(row["chosen_at"].is_null());
        } else {
            // The best cell of the grid, chosen on the training images.
            assert!(row["chosen_at"].as_f64().unwrap() > 0.5, "{row:#}");
            assert!(setting.starts_with("select_topk = "), "{setting}");
        }
        assert_row_is_eval(dir.path(), &format!("row-{i}"), row);
        assert_eq!(
            row["parameters"].as_u64().unwrap(),
            board["references"][0]["parameters"].as_u64().unwrap()
        );
    }
    // The base and each expert alone; each expert beats the base on its own domain.
    let references = board["references"].as_array().unwrap();
    assert_eq!(references.len(), 5);
    assert_eq!(references[0]["method"], "base");
    for (k, expert) in references[1..].iter().enumerate() {
        let own = numbers(&expert["accuracy"])[k];
        let base = numbers(&references[0]["accuracy"])[k];
        assert!(
            own > base,
            "{} expert {own} against the base {base}",
            expert["setting"]
        );
    }
    assert!(table.contains("| 1 | `sce` |"), "{table}");
    assert!(table.contains("| - | `expert` | upright |"), "{table}");
}

#[test]
fn methods_that_cannot_merge_four_experts_are_listed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (board, table) = bench(dir.path(), &["--methods", "slerp,tsv_m", "--no-grid"]);
    let rows = board["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["method"], "tsv_m");
    assert_eq!(rows[0]["setting"], "defaults");
    assert_row_is_eval(dir.path(), "tsv_m", &rows[0]);
    assert_eq!(board["not_run"][0][0], "slerp");
    let why = board["not_run"][0][1].as_str().unwrap();
    assert!(
        why.contains("exactly 1") && why.contains("4 experts"),
        "{why}"
    );
    assert!(table.contains("Not run: `slerp`"), "{table}");
}

#[test]
fn an_unknown_method_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    run(
        BIN,
        dir.path(),
        &[
            "bench-methods",
            "--methods",
            "no_such_method",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    )
    .assert_user_error(&["no_such_method", "not a merge method"]);
}
