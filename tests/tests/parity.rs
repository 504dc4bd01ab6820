//! mergescope against mergekit 0.1.5's own outputs (the vendored `shared/parity` set), under
//! compare.py's tolerance rules ported to Rust.

use mergescope_tests::cli::run;
use mergescope_tests::compare::{Tolerance, compare_folders};
use mergescope_tests::parity_dir;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn check(recipe: &str) {
    let parity = parity_dir();
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join(recipe);
    // Recipes name models relative to the parity folder, as mergekit ran them: run from there.
    let config = format!("configs/{recipe}.yml");
    run(
        BIN,
        &parity,
        &["merge", &config, "--out", merged.to_str().unwrap()],
    )
    .assert_success();
    let expected = parity.join("expected").join(recipe);
    let tol = Tolerance::for_recipe(&parity.join("expected/MANIFEST.json"), recipe);
    let reports = compare_folders(&merged, &expected, tol)
        .unwrap_or_else(|problems| panic!("{recipe}: FAIL\n{problems}"));
    assert_eq!(reports.len(), 39);
    // mergekit copies the base's (else the first model's) config and tokenizer files.
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(file).is_file(), "{recipe}: {file} not copied");
    }
}

#[test]
fn linear() {
    check("linear");
}

#[test]
fn linear_gradient() {
    check("linear_gradient");
}

#[test]
fn task_arithmetic() {
    check("task_arithmetic");
}

#[test]
fn the_checker_fails_a_wrong_merge() {
    // Guard against a comparison that cannot fail: linear's output is not task arithmetic's.
    let parity = parity_dir();
    let expected = parity.join("expected");
    assert!(
        compare_folders(
            &expected.join("linear"),
            &expected.join("task_arithmetic"),
            Tolerance::EXACT
        )
        .is_err()
    );
}
