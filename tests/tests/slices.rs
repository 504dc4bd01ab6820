//! `slices:` recipes (mergekit's layer-range syntax) against mergekit 0.1.5's own outputs on a
//! tiny 8-layer Llama family (`fixtures/mergekit/slices`, built by its `make_fixtures.py`):
//! a passthrough frankenmerge deeper than its inputs, slerp with a per-module gradient per
//! slice, and ties with parameters per source, per slice and global.

use std::path::{Path, PathBuf};

use mergescope_tests::cli::run;
use mergescope_tests::compare::{Class, Tolerance, compare_folders};
use mergescope_tests::fixture::read_folder;
use mergescope_tests::mergekit::{layer_count, part_dir};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("expected/MANIFEST.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Merges `configs/<recipe>.yml` (from the fixture folder, as mergekit ran it) on `backend`
/// into `out` and returns the output folder.
fn merge(dir: &Path, config: &str, out: &Path, backend: &str) -> PathBuf {
    let merged = out.join(backend);
    let args = [
        "merge",
        config,
        "--out",
        merged.to_str().unwrap(),
        "--random-seed",
        "42",
        "--backend",
        backend,
    ];
    run(BIN, dir, &args).assert_success();
    merged
}

/// Merges a fixture recipe and compares it with mergekit's output: every tensor within the
/// recipe's tolerance class, the same tensor names, and the same layer count in config.json.
fn check(dir: &Path, recipe: &str, backend: &str) {
    if backend == "gpu" && std::env::var_os("MERGESCOPE_SKIP_GPU_TESTS").is_some() {
        eprintln!("skipping the GPU run of {recipe} (MERGESCOPE_SKIP_GPU_TESTS)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let merged = merge(dir, &format!("configs/{recipe}.yml"), out.path(), backend);
    let expected = dir.join("expected").join(recipe);
    let class = Class::for_recipe(&dir.join("expected/MANIFEST.json"), recipe);
    let reports = compare_folders(&merged, &expected, &class, None)
        .unwrap_or_else(|problems| panic!("{recipe} on {backend}: FAIL\n{problems}"));
    assert_eq!(reports.len(), read_folder(&expected).len());
    let layers = manifest(dir)["methods"][recipe]["num_hidden_layers"]
        .as_u64()
        .unwrap();
    assert_eq!(layer_count(&expected), layers);
    assert_eq!(layer_count(&merged), layers, "{recipe}: config.json");
}

#[test]
fn passthrough_frankenmerge() {
    check(&part_dir("slices"), "passthrough_frankenmerge", "cpu");
}

#[test]
fn slerp_slices() {
    check(&part_dir("slices"), "slerp_slices", "cpu");
}

#[test]
fn slerp_slices_gpu() {
    check(&part_dir("slices"), "slerp_slices", "gpu");
}

#[test]
fn ties_slices() {
    check(&part_dir("slices"), "ties_slices", "cpu");
}

#[test]
fn the_output_is_deeper_and_named_by_its_new_layers() {
    let dir = part_dir("slices");
    let out = tempfile::tempdir().unwrap();
    let merged = merge(
        &dir,
        "configs/passthrough_frankenmerge.yml",
        out.path(),
        "cpu",
    );
    let tensors = read_folder(&merged);
    let base = read_folder(&dir.join("models/base"));
    let ft_a = read_folder(&dir.join("models/ft_a"));
    // 15 layers from 8-layer models; output layer 12 is ft_a's layer 5 (the third slice).
    assert!(tensors.contains_key("model.layers.14.mlp.down_proj.weight"));
    assert!(!tensors.contains_key("model.layers.15.mlp.down_proj.weight"));
    let name = |layer: usize| format!("model.layers.{layer}.mlp.down_proj.weight");
    assert_eq!(tensors[&name(12)].2, ft_a[&name(5)].2);
    assert_eq!(tensors[&name(3)].2, base[&name(3)].2);
    assert_eq!(tensors["model.norm.weight"].2, ft_a["model.norm.weight"].2);
    assert_eq!(layer_count(&merged), 15);
    // The model card names the models the slices read, each once.
    let card = std::fs::read_to_string(merged.join("README.md")).unwrap();
    assert!(card.contains("merge of 3 models"), "{card}");
    for model in ["models/base", "models/ft_a", "models/ft_b"] {
        assert_eq!(card.matches(&format!("* `{model}`")).count(), 1, "{card}");
    }
}

/// The comparison can fail: the frankenmerge with its scale filter written for the output's
/// layer names instead of the input's (`layers.8.` for ft_b's layer 4) is another merge, and
/// must not pass as mergekit's.
#[test]
fn a_wrong_merge_fails_the_comparison() {
    let dir = part_dir("slices");
    let recipe = std::fs::read_to_string(dir.join("configs/passthrough_frankenmerge.yml"))
        .unwrap()
        // ft_b's layers 2-7 hold no "layers.8.", so nothing is halved
        .replace("layers.4.", "layers.8.");
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("wrong.yml");
    std::fs::write(&config, recipe).unwrap();
    let merged = merge(&dir, config.to_str().unwrap(), work.path(), "cpu");
    let expected = dir.join("expected/passthrough_frankenmerge");
    let problems = compare_folders(&merged, &expected, &Class::Close(Tolerance::EXACT), None)
        .expect_err("a different merge must not pass");
    assert!(problems.contains("model.layers.8."), "{problems}");
    assert!(!problems.contains("model.layers.9."), "{problems}");
}

/// One line naming the recipe key, for each way a slice can be wrong.
#[test]
fn bad_slices_are_one_line_errors() {
    let dir = part_dir("slices");
    let work = tempfile::tempdir().unwrap();
    let cases = [
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/base\n        layer_range: [4, 9]\n",
            vec!["slices[0].sources[0].layer_range", "8 layers"],
        ),
        (
            "merge_method: slerp\nbase_model: models/base\nslices:\n  - sources:\n      - model: models/base\n        layer_range: [0, 4]\n      - model: models/ft_a\n        layer_range: [0, 3]\nparameters:\n  t: 0.5\n",
            vec!["slices[0].sources[1].layer_range", "same number of layers"],
        ),
        (
            "merge_method: passthrough\nslices:\n  - sources: []\n",
            vec!["slices[0].sources", "no sources"],
        ),
    ];
    for (i, (yaml, needles)) in cases.iter().enumerate() {
        let config = work.path().join(format!("bad{i}.yml"));
        std::fs::write(&config, yaml).unwrap();
        let out = work.path().join(format!("out{i}"));
        let args = [
            "merge",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        run(BIN, &dir, &args).assert_user_error(needles);
        assert!(!out.exists());
    }
}

/// A frankenmerge made in memory (the workbench's live preview, `generate RECIPE`) runs as the
/// deeper model it is: it writes what the exported merge writes, whose config.json has the
/// output's layer count (built with the inputs' count, it would run their 2 layers of 5).
#[test]
fn an_in_memory_frankenmerge_runs_with_its_own_depth() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    mergescope_tests::fixture::tiny_llama(&root.join("base"), 0.0);
    mergescope_tests::fixture::tiny_llama(&root.join("ft"), 0.05);
    let recipe = "merge_method: passthrough
slices:
  - sources:
      - model: ft
        layer_range: [1, 2]
  - sources:
      - model: base
        layer_range: [0, 2]
  - sources:
      - model: ft
        layer_range: [0, 2]
        parameters:
          scale: 3
";
    std::fs::write(root.join("franken.yml"), recipe).unwrap();
    run(BIN, root, &["merge", "franken.yml", "--out", "merged"]).assert_success();
    assert_eq!(layer_count(&root.join("merged")), 5);
    std::fs::copy(
        root.join("base/tokenizer.json"),
        root.join("merged/tokenizer.json"),
    )
    .unwrap();
    let generate = |target: &str| {
        let args = [
            "generate",
            target,
            "--prompt",
            "w3 w17 w42",
            "--max-tokens",
            "12",
        ];
        let ran = run(BIN, root, &args);
        ran.assert_success();
        ran.stdout()
    };
    assert_eq!(generate("franken.yml"), generate("merged"));
}
