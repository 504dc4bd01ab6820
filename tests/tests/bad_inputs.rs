//! Every bad input gives exit code 1, one clear line naming the file, tensor or key, and
//! writes nothing.

use std::path::Path;

use mergescope_core::dtype::Dtype;
use mergescope_tests::cli::run;
use mergescope_tests::fixture::{Tensor, listing, llama_tensors, write_file, write_model_folder};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// A valid two-model family in `dir`, for recipes to point at.
fn family(dir: &Path) {
    write_model_folder(&dir.join("base"), &llama_tensors(2, 0), Dtype::F32, 2);
    write_model_folder(&dir.join("ft"), &llama_tensors(2, 1), Dtype::BF16, 2);
}

const TA_RECIPE: &str = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft\n    parameters:\n      weight: 0.5\n";

fn merge_fails(dir: &Path, recipe: &str, needles: &[&str]) -> String {
    std::fs::write(dir.join("recipe.yml"), recipe).unwrap();
    let before = listing(dir);
    let line =
        run(BIN, dir, &["merge", "recipe.yml", "--out", "merged"]).assert_user_error(needles);
    assert_eq!(listing(dir), before, "a failed merge must write nothing");
    line
}

#[test]
fn a_header_that_lies_about_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lying.safetensors");
    write_file(
        &path,
        &[
            Tensor::new("a", &[4], |i| i as f32),
            Tensor::new("b", &[4], |i| i as f32),
        ],
        Dtype::F32,
    );
    // Rewrite b's offsets so they overlap a's data; keep the header length the same.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"[16,32]")
        .expect("fixture layout changed");
    bytes[at..at + 7].copy_from_slice(b"[12,28]");
    std::fs::write(&path, bytes).unwrap();
    run(BIN, dir.path(), &["inspect", "lying.safetensors"])
        .assert_user_error(&["lying.safetensors", "header lies"]);
}

#[test]
fn a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_file(&path, &llama_tensors(1, 0), Dtype::F32);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    run(BIN, dir.path(), &["inspect", "model.safetensors"])
        .assert_user_error(&["model.safetensors", "truncated"]);
    // Truncated inside the header too.
    std::fs::write(&path, &bytes[..20]).unwrap();
    run(BIN, dir.path(), &["inspect", "model.safetensors"])
        .assert_user_error(&["model.safetensors"]);
}

#[test]
fn a_file_that_is_not_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"PK\x03\x04 this is a zip-based pytorch_model.bin",
    )
    .unwrap();
    run(BIN, dir.path(), &["inspect", "model.safetensors"])
        .assert_user_error(&["model.safetensors", "not a valid safetensors file"]);
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    run(BIN, dir.path(), &["inspect", "empty"]).assert_user_error(&["empty", "no model weights"]);
    run(BIN, dir.path(), &["inspect", "nowhere"]).assert_user_error(&["nowhere", "no such file"]);
}

#[test]
fn a_non_safetensors_model_in_a_recipe() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    std::fs::create_dir(dir.path().join("junk")).unwrap();
    std::fs::write(
        dir.path().join("junk/model.safetensors"),
        b"not a model at all, just some text",
    )
    .unwrap();
    merge_fails(
        dir.path(),
        &TA_RECIPE.replace("model: ft", "model: junk"),
        &["junk/model.safetensors"],
    );
}

#[test]
fn a_shape_mismatch_across_models() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let mut other = llama_tensors(2, 2);
    other[0] = Tensor::new("model.embed_tokens.weight", &[17, 8], |i| i as f32);
    write_model_folder(&dir.path().join("bigvocab"), &other, Dtype::F32, 2);
    merge_fails(
        dir.path(),
        &TA_RECIPE.replace("model: ft", "model: bigvocab"),
        &[
            "recipe.yml",
            "model.embed_tokens.weight",
            "[17, 8]",
            "[16, 8]",
            "bigvocab",
            "--truncate-vocab",
        ],
    );
}

#[test]
fn a_tensor_missing_where_the_method_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let mut fewer = llama_tensors(2, 2);
    fewer.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight");
    write_model_folder(&dir.path().join("partial"), &fewer, Dtype::F32, 2);
    // nuslerp needs both models: with one lacking the tensor there is nothing to interpolate.
    let recipe = "merge_method: nuslerp\nbase_model: base\nmodels:\n  - model: ft\n    parameters: {weight: 0.5}\n  - model: partial\n    parameters: {weight: 0.5}\n";
    merge_fails(
        dir.path(),
        recipe,
        &[
            "model.layers.1.mlp.up_proj.weight",
            "missing from partial",
            "nuslerp",
        ],
    );
}

#[test]
fn a_recipe_with_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    merge_fails(
        dir.path(),
        &TA_RECIPE.replace("merge_method", "merge_methd"),
        &["recipe.yml", "merge_methd"],
    );
    merge_fails(
        dir.path(),
        &TA_RECIPE.replace("weight: 0.5", "weight: lots"),
        &["recipe.yml", "models[0].parameters.weight", "lots"],
    );
    merge_fails(
        dir.path(),
        &TA_RECIPE.replace("weight: 0.5", "wieght: 0.5"),
        &["recipe.yml", "models[0].parameters.weight", "no default"],
    );
    merge_fails(
        dir.path(),
        &TA_RECIPE.replace("task_arithmetic", "task_arithmetics"),
        &[
            "recipe.yml",
            "task_arithmetics",
            "not a mergekit merge method",
        ],
    );
    merge_fails(
        dir.path(),
        "merge_method: linear\nmodels: [\n",
        &["recipe.yml"],
    );
}

#[test]
fn a_model_path_that_does_not_exist_names_both_places_tried() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    merge_fails(
        dir.path(),
        &TA_RECIPE.replace("model: ft", "model: ft_nope"),
        &[
            "models[0].model",
            "ft_nope",
            "working folder",
            "relative to the recipe",
        ],
    );
}

#[test]
fn an_output_inside_an_input_folder() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    std::fs::write(dir.path().join("recipe.yml"), TA_RECIPE).unwrap();
    let before = listing(dir.path());
    for out in ["ft/merged", "base", "."] {
        run(
            BIN,
            dir.path(),
            &["merge", "recipe.yml", "--out", out, "--force"],
        )
        .assert_user_error(&["output folder", "input"]);
    }
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn a_non_empty_output_folder_without_force() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    std::fs::write(dir.path().join("recipe.yml"), TA_RECIPE).unwrap();
    std::fs::create_dir(dir.path().join("merged")).unwrap();
    std::fs::write(dir.path().join("merged/notes.txt"), "mine").unwrap();
    run(BIN, dir.path(), &["merge", "recipe.yml", "--out", "merged"]).assert_user_error(&[
        "merged",
        "not empty",
        "--force",
    ]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("merged/notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn bad_command_line_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        BIN,
        dir.path(),
        &["merge", "r.yml", "--out", "o", "--shard-size", "5 parsecs"],
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr());
    assert!(out.stderr().contains("parsecs"));
}
