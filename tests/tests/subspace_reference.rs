//! The subspace merges (`tsv_m`, `iso_c`, `iso_cts`) against an f64 reference: numpy following
//! fusion-bench's functions step by step (tests/fixtures/subspace/make.py wrote the models,
//! recipes and expected outputs). The CLI merges each recipe in f32; every tensor must meet
//! ALGORITHMS.md §6's f32 bound, and its delta from the base a bound ten times tighter than
//! the delta's own size could hide.

use std::path::{Path, PathBuf};

use mergescope_tests::cli::run;
use mergescope_tests::compare::{Tolerance, compare_tensor};
use mergescope_tests::fixture::{listing, read_folder};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/subspace")
}

fn check(case: &str) {
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join(case);
    let recipe = format!("recipes/{case}.yml");
    run(
        BIN,
        &fixture(),
        &["merge", &recipe, "--out", merged.to_str().unwrap()],
    )
    .assert_success();
    let produced = read_folder(&merged);
    let expected = read_folder(&fixture().join("expected").join(case));
    let base = read_folder(&fixture().join("base"));
    assert_eq!(
        produced.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{case}: tensor names"
    );
    for (name, (_, shape, e)) in &expected {
        let (dtype, produced_shape, p) = &produced[name];
        assert_eq!(*dtype, safetensors::Dtype::F32, "{case}: {name}");
        assert_eq!(produced_shape, shape, "{case}: {name}");
        let report = compare_tensor(name, p, e, Tolerance::EXACT);
        assert!(report.ok, "{case}: {report:?}");
        let b = &base[name].2;
        let delta = |v: &[f64]| v.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>();
        let (dp, de) = (delta(p), delta(e));
        let scale = de.iter().fold(0f64, |m, v| m.max(v.abs()));
        let worst = dp
            .iter()
            .zip(&de)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(
            worst <= 1e-5 * scale,
            "{case}: {name}: the merged delta is off by {worst} (max |delta| {scale})"
        );
    }
}

#[test]
fn tsv_m_matches_the_reference() {
    check("tsv_m");
}

#[test]
fn tsv_m_with_task_weights_and_alpha_matches_the_reference() {
    check("tsv_m_weighted");
}

#[test]
fn iso_c_matches_the_reference() {
    check("iso_c");
}

#[test]
fn iso_c_with_an_excluded_tensor_matches_the_reference() {
    // `exclude` set by a filter sends the embeddings to the mean, as fusion-bench's
    // `exclude_keys` does.
    check("iso_c_exclude");
}

#[test]
fn iso_cts_matches_the_reference() {
    check("iso_cts");
}

#[test]
fn iso_cts_with_a_smaller_common_space_matches_the_reference() {
    check("iso_cts_half");
}

#[test]
fn iso_cts_without_room_for_every_task_says_which_tensor_and_what_to_change() {
    // The 5 × 5 embeddings, 3 tasks, no common space: n_t = round(5 / 3) = 2, and 3 × 2 > 5.
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("iso_cts.yml");
    let models = |name: &str| fixture().join(name).display().to_string();
    std::fs::write(
        &recipe,
        format!(
            "merge_method: iso_cts\nbase_model: {}\nmodels:\n  - model: {}\n  - model: {}\n  - model: {}\nparameters:\n  common_space_fraction: 0.0\n",
            models("base"),
            models("ft_1"),
            models("ft_2"),
            models("ft_3")
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let message = run(
        BIN,
        dir.path(),
        &["merge", "iso_cts.yml", "--out", out.to_str().unwrap()],
    )
    .assert_user_error(&["model.embed_tokens.weight", "common_space_fraction"]);
    assert!(message.contains("raise"), "{message}");
    assert!(
        !out.exists() || listing(&out).is_empty(),
        "a partial output was left"
    );
}
