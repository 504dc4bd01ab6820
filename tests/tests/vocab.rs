//! Merging models whose vocabularies differ (`tokenizer_source`, `tokenizer:`) against
//! mergekit 0.1.5's own outputs: `tests/fixtures/mergekit/vocab` (made by its
//! `make_fixtures.py`). Each recipe's tensors must match under the exact class, and the output
//! tokenizer must give every token the id mergekit's gives it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mergescope_tests::cli::run;
use mergescope_tests::compare::{Class, compare_folders};
use mergescope_tests::mergekit::part_dir;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// Token → id of a `tokenizer.json`, read with serde_json (independently of the `tokenizers`
/// crate mergescope writes it with): the model's vocabulary and the added tokens.
fn vocabulary(folder: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(folder.join("tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut vocab: BTreeMap<String, u64> = json["model"]["vocab"]
        .as_object()
        .expect("a word-level vocabulary")
        .iter()
        .map(|(t, id)| (t.clone(), id.as_u64().unwrap()))
        .collect();
    for added in json["added_tokens"].as_array().unwrap() {
        vocab.insert(
            added["content"].as_str().unwrap().to_owned(),
            added["id"].as_u64().unwrap(),
        );
    }
    vocab
}

/// The ids of the added tokens marked special.
fn special_tokens(folder: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(folder.join("tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut ids: Vec<u64> = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["special"].as_bool() == Some(true))
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

fn config(folder: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap()
}

/// Merges `configs/<recipe>.yml` from the fixture folder (its model paths are relative to it)
/// into a temporary folder.
fn merge(recipe: &str, backend: &str, cwd: &Path) -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join(recipe);
    let config = part_dir("vocab").join(format!("configs/{recipe}.yml"));
    let args = [
        "merge",
        config.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--backend",
        backend,
    ];
    let ran = run(BIN, cwd, &args);
    ran.assert_success();
    assert!(
        ran.stderr().contains(&format!("backend: {backend}")),
        "{recipe}: ran on the wrong backend:\n{}",
        ran.stderr()
    );
    (out, merged)
}

fn check(recipe: &str, backend: &str) {
    if backend == "gpu" && std::env::var_os("MERGESCOPE_SKIP_GPU_TESTS").is_some() {
        eprintln!("skipping the GPU run of {recipe} (MERGESCOPE_SKIP_GPU_TESTS)");
        return;
    }
    let (_out, merged) = merge(recipe, backend, &part_dir("vocab"));
    let expected = part_dir("vocab").join("expected").join(recipe);
    let class = Class::for_recipe(&part_dir("vocab").join("expected/MANIFEST.json"), recipe);
    let reports = compare_folders(&merged, &expected, &class, None)
        .unwrap_or_else(|problems| panic!("{recipe} ({backend}): FAIL\n{problems}"));
    assert_eq!(reports.len(), 21, "{recipe}: every tensor compared");
    assert_eq!(
        vocabulary(&merged),
        vocabulary(&expected),
        "{recipe}: token ids differ from mergekit's"
    );
    assert_eq!(
        special_tokens(&merged),
        special_tokens(&expected),
        "{recipe}: special added tokens differ from mergekit's"
    );
    assert_eq!(
        config(&merged)["vocab_size"],
        config(&expected)["vocab_size"],
        "{recipe}: config.json's vocab_size"
    );
}

#[test]
fn union_linear() {
    check("union_linear", "cpu");
}

#[test]
fn union_task_arithmetic() {
    check("union_task_arithmetic", "cpu");
}

#[test]
fn union_task_arithmetic_on_the_gpu() {
    check("union_task_arithmetic", "gpu");
}

#[test]
fn base_task_arithmetic() {
    check("base_task_arithmetic", "cpu");
}

#[test]
fn model_linear() {
    check("model_linear", "cpu");
}

#[test]
fn union_bf16() {
    check("union_bf16", "cpu");
}

#[test]
fn tokens_task_arithmetic() {
    check("tokens_task_arithmetic", "cpu");
}

/// The expected outputs differ from each other where the alignments differ, so a merge that
/// ignored the tokenizer settings could not pass: the union and `base` vocabularies give
/// different embedding rows, and forcing tokens changes rows every model has.
#[test]
fn the_references_tell_the_alignments_apart() {
    let expected = part_dir("vocab").join("expected");
    let exact = Class::for_recipe(&expected.join("MANIFEST.json"), "union_task_arithmetic");
    for (a, b) in [
        ("union_task_arithmetic", "base_task_arithmetic"),
        ("union_task_arithmetic", "tokens_task_arithmetic"),
    ] {
        let problems = compare_folders(&expected.join(a), &expected.join(b), &exact, None)
            .expect_err("different alignments give different outputs");
        assert!(problems.contains("model.embed_tokens.weight"), "{problems}");
    }
}

/// A copy of the fixture models in a temporary folder, to break.
fn family_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for model in ["base", "ft_a", "ft_b"] {
        let from = part_dir("vocab").join("models").join(model);
        let to = dir.path().join("models").join(model);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    dir
}

fn merge_text(dir: &Path, recipe: &str) -> mergescope_tests::cli::Run {
    std::fs::write(dir.join("r.yml"), recipe).unwrap();
    let out = dir.join("out");
    run(
        BIN,
        dir,
        &["merge", "r.yml", "--out", out.to_str().unwrap()],
    )
}

const UNION: &str = "merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 1}\n  - model: models/ft_a\n    parameters: {weight: 1}\n";

#[test]
fn different_vocabulary_sizes_without_a_tokenizer_source_suggest_union() {
    let dir = family_copy();
    merge_text(dir.path(), UNION).assert_user_error(&[
        "lm_head.weight",
        "[36, 16]",
        "tokenizer_source: union",
    ]);
}

#[test]
fn a_model_without_a_tokenizer_is_named() {
    let dir = family_copy();
    std::fs::remove_file(dir.path().join("models/ft_a/tokenizer.json")).unwrap();
    let recipe = format!("{UNION}tokenizer_source: union\n");
    merge_text(dir.path(), &recipe).assert_user_error(&["models/ft_a", "no tokenizer.json"]);
}

#[test]
fn an_unknown_tokenizer_source_model_is_named() {
    let dir = family_copy();
    let recipe = format!("{UNION}tokenizer_source: models/nowhere\n");
    merge_text(dir.path(), &recipe).assert_user_error(&["tokenizer_source", "models/nowhere"]);
}

#[test]
fn a_token_source_outside_the_recipe_is_refused() {
    let dir = family_copy();
    let recipe = format!(
        "{UNION}tokenizer:\n  source: union\n  tokens:\n    x0:\n      source: models/ft_b\n"
    );
    merge_text(dir.path(), &recipe).assert_user_error(&["x0", "models/ft_b", "not one of"]);
}

/// `--truncate-vocab` still keeps the leading rows every model has when the recipe does not
/// align vocabularies; with `tokenizer_source` the alignment wins, as mergekit's tokenizer
/// task takes precedence over its unsafe truncation.
#[test]
fn truncation_stays_available_and_alignment_takes_precedence() {
    let dir = family_copy();
    let rows = |recipe: &str| {
        std::fs::write(dir.path().join("r.yml"), recipe).unwrap();
        let out = dir.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let args = ["merge", "r.yml", "--out", "out", "--truncate-vocab"];
        run(BIN, dir.path(), &args).assert_success();
        let merged = mergescope_tests::fixture::read_folder(&out);
        merged["model.embed_tokens.weight"].1[0]
    };
    assert_eq!(rows(UNION), 33, "the base's 33 rows, ft_a's first 33");
    assert_eq!(rows(&format!("{UNION}tokenizer_source: union\n")), 36);
}

/// The plan of the vocab fixture's `recipe`, as mergekit's run made it (seed 42).
fn fixture_plan(recipe: &str) -> mergescope_core::merge::plan::MergePlan {
    use mergescope_core::merge::plan::{MergePlan, PlanOptions};
    let options = PlanOptions {
        cwd: part_dir("vocab"),
        random_seed: Some(42),
        truncate_vocab: false,
    };
    MergePlan::from_file(
        &part_dir("vocab").join(format!("configs/{recipe}.yml")),
        &options,
    )
    .unwrap()
}

/// The workbench's in-memory preview permutes the rows as the merge does: its result matches
/// mergekit's too.
#[test]
fn the_preview_aligns_as_the_merge_does() {
    use mergescope_core::backend::Cpu;
    use mergescope_core::eval::preview::merge_in_memory;
    use mergescope_tests::compare::{Tolerance, compare_tensor};

    let recipe = "tokens_task_arithmetic";
    let plan = fixture_plan(recipe);
    let merged = merge_in_memory(&plan, &Cpu).unwrap();
    let expected =
        mergescope_tests::fixture::read_folder(&part_dir("vocab").join("expected").join(recipe));
    assert_eq!(merged.values.len(), expected.len());
    for (name, (_, shape, values)) in &expected {
        let preview: Vec<f64> = merged.values[name].iter().map(|&v| f64::from(v)).collect();
        assert_eq!(preview.len(), shape.iter().product::<usize>(), "{name}");
        let report = compare_tensor(name, &preview, values, Tolerance::EXACT);
        assert!(report.ok, "{name}: {report:?}");
    }
}

/// A language model merged in memory (the workbench's perplexity and generation) is built with
/// the config.json the export writes: the aligned vocabulary's rows, not the base's.
#[test]
fn an_in_memory_merge_has_the_aligned_vocabulary_size() {
    use mergescope_core::eval::lm::generate::files_for_plan;

    let recipe = "union_task_arithmetic";
    let plan = fixture_plan(recipe);
    let files = files_for_plan(&plan).unwrap();
    let expected = config(&part_dir("vocab").join("expected").join(recipe));
    assert_eq!(files.config["vocab_size"], expected["vocab_size"]);
    assert_ne!(
        expected["vocab_size"],
        config(&part_dir("vocab").join("models/base"))["vocab_size"],
        "the union is larger than the base's vocabulary"
    );
}
