//! mergekit 0.1.5's own `slices:` examples, `examples/gradient-slerp.yml` and
//! `examples/orcamini-platy-44layer.yml`, run verbatim but for the two 13B Hub models, replaced
//! by tiny 40-layer stand-ins (`fixtures/mergekit/slice-examples`, built by
//! `fixtures/mergekit/slices/make_fixtures.py --examples`), against mergekit's outputs on the
//! same recipes.

use std::path::{Path, PathBuf};

use mergescope_tests::cli::run;
use mergescope_tests::compare::{Class, Tolerance, compare_folders};
use mergescope_tests::mergekit::{layer_count, part_dir};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn merge(dir: &Path, config: &str, out: &Path) {
    let args = [
        "merge",
        config,
        "--out",
        out.to_str().unwrap(),
        "--random-seed",
        "42",
    ];
    run(BIN, dir, &args).assert_success();
}

/// Merges the example and compares it with mergekit's output under the MANIFEST's class;
/// returns the merged folder (inside `out`).
fn check(example: &str, layers: u64, out: &Path) -> PathBuf {
    let dir = part_dir("slice-examples");
    let merged = out.join(example);
    merge(&dir, &format!("configs/{example}.yml"), &merged);
    let expected = dir.join("expected").join(example);
    let class = Class::for_recipe(&dir.join("expected/MANIFEST.json"), example);
    compare_folders(&merged, &expected, &class, None)
        .unwrap_or_else(|problems| panic!("{example}: FAIL\n{problems}"));
    assert_eq!(layer_count(&expected), layers);
    assert_eq!(layer_count(&merged), layers, "{example}: config.json");
    merged
}

#[test]
fn gradient_slerp() {
    let out = tempfile::tempdir().unwrap();
    let merged = check("gradient-slerp", 40, out.path());
    // The example says its one slice over all 40 layers is the `models:` syntax's merge:
    // mergescope must give exactly the same tensors both ways.
    let dir = part_dir("slice-examples");
    let text = std::fs::read_to_string(dir.join("configs/gradient-slerp.yml")).unwrap();
    let (_, rest) = text.split_once("merge_method:").unwrap();
    let as_models = format!(
        "models:\n  - model: models/orca_mini_v3_13b\n  - model: models/Platypus2-13B\nmerge_method:{rest}"
    );
    let recipe = out.path().join("as-models.yml");
    std::fs::write(&recipe, as_models).unwrap();
    let models_merged = out.path().join("as-models");
    merge(&dir, recipe.to_str().unwrap(), &models_merged);
    compare_folders(
        &models_merged,
        &merged,
        &Class::Close(Tolerance::EXACT),
        None,
    )
    .unwrap_or_else(|problems| panic!("slices and models: syntaxes differ\n{problems}"));
}

#[test]
fn orcamini_platy_44layer() {
    let out = tempfile::tempdir().unwrap();
    check("orcamini-platy-44layer", 44, out.path());
}
