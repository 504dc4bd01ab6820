//! `mergescope adamerging` and `mergescope wemoe` on the demo family: what they write (a merge
//! with its per-layer recipe; a routed model; its merge-and-unload), scored by
//! `mergescope eval` exactly as the leaderboard's rows, and bad inputs refused in one line.

use std::path::Path;

use mergescope_core::eval::{DemoFamily, Domain};
use mergescope_core::merge::recipe::{ParamValue, Recipe};
use mergescope_tests::cli::{Run, run};
use mergescope_tests::{bench_methods, demo_accuracies, numbers, on_demo_family};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn adapt(dir: &Path, family: &DemoFamily, command: &str, out: &str, extra: &[&str]) -> Run {
    let args = on_demo_family(command, family, out, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(BIN, dir, &args)
}

fn eval(dir: &Path, model: &str) -> Vec<f64> {
    let out = run(BIN, dir, &["eval", model, "--json"]);
    out.assert_success();
    demo_accuracies(&serde_json::from_str(&out.stdout()).unwrap())
}

#[test]
fn both_write_what_eval_scores_as_their_leaderboard_rows() {
    let dir = tempfile::tempdir().unwrap();
    let family = DemoFamily::extract(&dir.path().join("family")).unwrap();
    let steps = ["--steps", "4"];

    let ada = adapt(dir.path(), &family, "adamerging", "ada", &steps);
    ada.assert_success();
    assert!(ada.stdout().contains("AdaMerging (layer-wise), 4 steps"));
    // The recipe beside the merge: task arithmetic with a per-layer weight per model.
    let file = dir.path().join("ada/mergekit_config.yml");
    let recipe = Recipe::from_file(&file).unwrap();
    assert_eq!(recipe.merge_method, "task_arithmetic");
    assert_eq!(recipe.models.len(), 4);
    for model in &recipe.models {
        assert!(
            matches!(&model.parameters["weight"], ParamValue::List(l) if l.len() == 4),
            "{:?}",
            model.parameters
        );
    }

    let moe = adapt(dir.path(), &family, "wemoe", "moe", &steps);
    moe.assert_success();
    assert!(
        moe.stdout().contains("4 of 4 MLPs routed"),
        "{}",
        moe.stdout()
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("moe/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "vit", "the base's config is kept");
    assert_eq!(config["wemoe"]["routed"].as_array().unwrap().len(), 4);

    let board = bench_methods(
        BIN,
        dir.path(),
        &["--methods", "adamerging,wemoe", "--no-grid", "--steps", "4"],
    );
    let rows = board["rows"].as_array().unwrap();
    let row = |method: &str| {
        rows.iter()
            .find(|r| r["method"] == method)
            .unwrap_or_else(|| panic!("no {method} row in {board:#}"))
    };
    assert_eq!(
        numbers(&row("adamerging")["accuracy"]),
        eval(dir.path(), "ada")
    );
    assert_eq!(numbers(&row("wemoe")["accuracy"]), eval(dir.path(), "moe"));
    assert!(!row("adamerging")["recipe"].as_str().unwrap().is_empty());
    assert_eq!(row("wemoe")["recipe"], "");
    let parameters = row("wemoe")["parameters"].as_u64().unwrap();
    assert!(
        parameters > 35306,
        "{parameters}: the routed MLPs add to the base's"
    );
}

#[test]
fn unload_writes_a_plain_model_and_bad_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let family = DemoFamily::extract(&dir.path().join("family")).unwrap();
    let plain = adapt(
        dir.path(),
        &family,
        "wemoe",
        "plain",
        &["--unload", "--steps", "2", "--critical", "0.5"],
    );
    plain.assert_success();
    assert!(
        plain.stdout().contains("2 of 4 MLPs routed"),
        "{}",
        plain.stdout()
    );
    assert!(
        plain.stdout().contains("mean routing"),
        "{}",
        plain.stdout()
    );
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("plain/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["wemoe_unloaded"]["routed"].as_array().unwrap().len(),
        2
    );
    assert!(
        eval(dir.path(), "plain")[4] > 0.8,
        "a plain model, scored as one"
    );

    adapt(dir.path(), &family, "adamerging", "plain", &[])
        .assert_user_error(&["plain", "already exists"]);
    adapt(dir.path(), &family, "wemoe", "fresh", &["--critical", "0"])
        .assert_user_error(&["share of MLPs", "(0, 1]"]);
    adapt(dir.path(), &family, "adamerging", "fresh", &["--lr", "0"])
        .assert_user_error(&["learning rate", "positive"]);
    let lm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/lm-demo/base");
    let out = run(
        BIN,
        dir.path(),
        &[
            "adamerging",
            "--base",
            lm.to_str().unwrap(),
            "--out",
            "fresh",
            family.expert(Domain::Upright).to_str().unwrap(),
        ],
    );
    out.assert_user_error(&["demo family's architecture"]);
    assert!(!dir.path().join("fresh").exists(), "nothing was written");
}
