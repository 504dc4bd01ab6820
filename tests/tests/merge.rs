//! End-to-end merges over families the tests write, checked against the formulas evaluated in
//! f64 from the stored inputs.

use std::path::Path;

use mergescope_core::dtype::Dtype;
use mergescope_tests::cli::run;
use mergescope_tests::fixture::{
    decode, encode, llama_tensors, read_folder, read_metadata, write_model_folder, write_sharded,
};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// base (F32, 3 layers), a (BF16, sharded), b (F16).
fn family(dir: &Path) {
    write_model_folder(&dir.join("base"), &llama_tensors(3, 0), Dtype::F32, 3);
    write_sharded(&dir.join("a"), &llama_tensors(3, 1), Dtype::BF16, 5);
    mergescope_tests::fixture::write_config(&dir.join("a"), 3, Dtype::BF16);
    write_model_folder(&dir.join("b"), &llama_tensors(3, 2), Dtype::F16, 3);
}

/// The stored values of a tensor, as every reader must see them.
fn stored(dir: &Path, model: &str, name: &str) -> Vec<f64> {
    let folder = read_folder(&dir.join(model));
    folder[name].2.clone()
}

fn depth(name: &str) -> f64 {
    // 3 layers: t = block / 2; everything outside a block has t = 0.
    mergescope_core::layout::split_block(name).map_or(0.0, |(_, b)| b as f64 / 2.0)
}

fn assert_close(name: &str, got: &[f64], expected: &[f64], ulp_dtype: Dtype) {
    assert_eq!(got.len(), expected.len(), "{name}");
    // f32 accumulation error is relative to the tensor's scale (cancellation makes small
    // elements), as in compare.py's `atol * max|e|`.
    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        // One rounding of the exact value to the output dtype, plus f32 accumulation noise.
        let rounded = decode(ulp_dtype, &encode(&[*e as f32], ulp_dtype))[0];
        let tol = (rounded - e).abs() * 1.01 + 1e-6 * scale;
        assert!(
            (g - rounded).abs() <= tol,
            "{name}[{i}]: got {g}, expected {e} (rounded {rounded})"
        );
    }
}

#[test]
fn task_arithmetic_with_gradients_filters_and_bf16_output() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let recipe = "\
merge_method: task_arithmetic
base_model: base
models:
  - model: a
    parameters:
      weight:
        - filter: self_attn
          value: [0.0, 1.0]
        - value: 0.25
  - model: b
    parameters:
      weight: -0.5
parameters:
  lambda: 0.8
dtype: float32
out_dtype: bfloat16
tokenizer_source: b
";
    std::fs::write(dir.path().join("r.yml"), recipe).unwrap();
    run(BIN, dir.path(), &["merge", "r.yml", "--out", "out/merged"]).assert_success();
    let merged = read_folder(&dir.path().join("out/merged"));
    assert_eq!(merged.len(), llama_tensors(3, 0).len());
    for (name, (dtype, _, values)) in &merged {
        assert_eq!(*dtype, Dtype::BF16, "{name}");
        let (base, a, b) = (
            stored(dir.path(), "base", name),
            stored(dir.path(), "a", name),
            stored(dir.path(), "b", name),
        );
        let w_a = if name.contains("self_attn") {
            depth(name)
        } else {
            0.25
        };
        let expected: Vec<f64> = (0..base.len())
            .map(|i| base[i] + 0.8 * (w_a * (a[i] - base[i]) - 0.5 * (b[i] - base[i])))
            .collect();
        assert_close(name, values, &expected, Dtype::BF16);
    }
    let out = dir.path().join("out/merged");
    // Config from the base with the output dtype, tokenizer from `tokenizer_source`.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["num_hidden_layers"], 3);
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"model\": \"b\"}"
    );
    let meta = read_metadata(&out.join("model.safetensors"));
    assert_eq!(meta["format"], "pt");
    assert!(
        meta["mergescope_recipe"].contains("merge_method: task_arithmetic"),
        "{meta:?}"
    );
    assert!(meta.contains_key("mergescope_version"));
    // The recorded recipe runs again and gives the same model.
    std::fs::write(dir.path().join("again.yml"), &meta["mergescope_recipe"]).unwrap();
    run(BIN, dir.path(), &["merge", "again.yml", "--out", "again"]).assert_success();
    assert_eq!(read_folder(&dir.path().join("again")), merged);
    // Nothing but the outputs was added; inputs untouched.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec!["merged"]);
}

#[test]
fn linear_promotes_mixed_dtypes_shards_the_output_and_appends_the_base() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    // base_model is not in `models:`, so (as in mergekit) it is one more input, weighted by the
    // global `weight`. a is BF16 and b F16: they promote to F32.
    let recipe = "\
merge_method: linear
base_model: base
models:
  - model: a
    parameters:
      weight: [1.0, 3.0]
  - model: b
    parameters:
      weight: 2.0
parameters:
  weight: 1.0
";
    std::fs::write(dir.path().join("r.yml"), recipe).unwrap();
    run(
        BIN,
        dir.path(),
        &["merge", "r.yml", "--out", "merged", "--shard-size", "2KB"],
    )
    .assert_success();
    let out = dir.path().join("merged");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let shards: std::collections::BTreeSet<_> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(shards.len() > 2, "{shards:?}");
    for shard in &shards {
        assert!(out.join(shard).is_file(), "{shard}");
    }
    let merged = read_folder(&out);
    for (name, (dtype, _, values)) in &merged {
        assert_eq!(*dtype, Dtype::F32, "{name}");
        let (base, a, b) = (
            stored(dir.path(), "base", name),
            stored(dir.path(), "a", name),
            stored(dir.path(), "b", name),
        );
        let w_a = 1.0 + 2.0 * depth(name);
        let expected: Vec<f64> = (0..base.len())
            .map(|i| (w_a * a[i] + 2.0 * b[i] + base[i]) / (w_a + 3.0))
            .collect();
        assert_close(name, values, &expected, Dtype::F32);
    }
    // No base → config from the first input… here the base was given, so from the base.
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"model\": \"base\"}"
    );
}

#[test]
fn force_replaces_an_existing_output_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let recipe = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 1}\n";
    std::fs::write(dir.path().join("r.yml"), recipe).unwrap();
    std::fs::create_dir(dir.path().join("merged")).unwrap();
    // An empty folder is fine without --force.
    run(BIN, dir.path(), &["merge", "r.yml", "--out", "merged"]).assert_success();
    std::fs::write(dir.path().join("merged/stale.txt"), "old").unwrap();
    run(
        BIN,
        dir.path(),
        &["merge", "r.yml", "--out", "merged", "--force"],
    )
    .assert_success();
    assert!(!dir.path().join("merged/stale.txt").exists());
    assert!(dir.path().join("merged/model.safetensors").is_file());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "staging folders left behind: {names:?}"
    );
}

#[test]
fn the_recipe_folder_is_tried_when_the_working_folder_has_no_such_model() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    family(&project);
    let recipe = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n";
    std::fs::write(project.join("r.yml"), recipe).unwrap();
    run(
        BIN,
        dir.path(),
        &["merge", "project/r.yml", "--out", "merged"],
    )
    .assert_success();
    let merged = read_folder(&dir.path().join("merged"));
    assert_eq!(
        merged["lm_head.weight"].2,
        stored(&project, "a", "lm_head.weight")
    );
}

#[test]
fn tensors_missing_from_a_model_merge_over_the_models_that_have_them() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    // `c` lacks one MLP tensor and has no separate head (its head is tied to the embedding).
    let mut partial = llama_tensors(3, 3);
    partial.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight" && t.name != "lm_head.weight");
    write_model_folder(&dir.path().join("c"), &partial, Dtype::F32, 3);
    let recipe = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: c\n    parameters: {weight: 0.25}\n";
    std::fs::write(dir.path().join("r.yml"), recipe).unwrap();
    let out = run(BIN, dir.path(), &["merge", "r.yml", "--out", "merged"]);
    out.assert_success();
    assert!(
        out.stderr()
            .contains("`model.layers.1.mlp.up_proj.weight` is missing from c"),
        "{}",
        out.stderr()
    );
    let merged = read_folder(&dir.path().join("merged"));
    let base = |n: &str| stored(dir.path(), "base", n);
    let a = |n: &str| stored(dir.path(), "a", n);
    let c = |n: &str| stored(dir.path(), "c", n);
    let name = "model.layers.1.mlp.up_proj.weight";
    let expected: Vec<f64> = (0..base(name).len())
        .map(|i| base(name)[i] + 0.5 * (a(name)[i] - base(name)[i]))
        .collect();
    assert_close(name, &merged[name].2, &expected, Dtype::F32);
    // The head of `c` is read from its embedding.
    let (head, embed) = ("lm_head.weight", "model.embed_tokens.weight");
    let expected: Vec<f64> = (0..base(head).len())
        .map(|i| {
            base(head)[i]
                + 0.5 * (a(head)[i] - base(head)[i])
                + 0.25 * (c(embed)[i] - base(head)[i])
        })
        .collect();
    assert_close(head, &merged[head].2, &expected, Dtype::F32);
}

#[test]
fn vocabularies_of_different_sizes_merge_on_their_common_rows_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let mut bigger = llama_tensors(3, 4);
    for t in &mut bigger {
        if t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight" {
            *t = mergescope_tests::fixture::Tensor::new(&t.name, &[20, 8], |i| i as f32 * 0.01);
        }
    }
    write_model_folder(&dir.path().join("big"), &bigger, Dtype::F32, 3);
    let recipe = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: big\n    parameters: {weight: 0.5}\n";
    std::fs::write(dir.path().join("r.yml"), recipe).unwrap();
    run(BIN, dir.path(), &["merge", "r.yml", "--out", "merged"])
        .assert_user_error(&["lm_head.weight", "--truncate-vocab"]);
    let out = run(
        BIN,
        dir.path(),
        &["merge", "r.yml", "--out", "merged", "--truncate-vocab"],
    );
    out.assert_success();
    assert!(
        out.stderr().contains("truncated to the 16 leading rows"),
        "{}",
        out.stderr()
    );
    let merged = read_folder(&dir.path().join("merged"));
    let (_, shape, values) = &merged["model.embed_tokens.weight"];
    assert_eq!(shape, &vec![16, 8]);
    let base = stored(dir.path(), "base", "model.embed_tokens.weight");
    let big = stored(dir.path(), "big", "model.embed_tokens.weight");
    let expected: Vec<f64> = (0..16 * 8)
        .map(|i| base[i] + 0.5 * (big[i] - base[i]))
        .collect();
    assert_close("model.embed_tokens.weight", values, &expected, Dtype::F32);
}

/// Element-wise methods (linear, task arithmetic) merge large tensors slab by slab (engine.rs);
/// the bytes must be those of merging the whole tensor at once, tail slab, NaN and all.
#[test]
fn a_tensor_merged_in_slabs_matches_the_tensor_merged_whole() {
    use mergescope_core::backend::Cpu;
    use mergescope_core::dtype::{FloatType, TensorBytes};
    use mergescope_core::eval::preview::merge_in_memory;
    use mergescope_core::merge::plan::{MergePlan, PlanOptions};
    use mergescope_tests::fixture::Tensor;

    let dir = tempfile::tempdir().unwrap();
    // 700 × 1001 elements: two full 256 Ki slabs and a partial one.
    let big = |shift: f32| {
        vec![Tensor::new(
            "model.embed_tokens.weight",
            &[700, 1001],
            |i| {
                if i == 300_000 && shift > 0.0 {
                    f32::NAN
                } else {
                    ((i as f32 * 0.37 + shift).sin() * 0.02) + shift * 1e-3
                }
            },
        )]
    };
    write_model_folder(&dir.path().join("a"), &big(0.0), Dtype::BF16, 1);
    write_model_folder(&dir.path().join("b"), &big(1.0), Dtype::BF16, 1);
    let recipes = [
        "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 0.7}\n  - model: b\n    parameters: {weight: 0.45}\n",
        "merge_method: task_arithmetic\nbase_model: a\nmodels:\n  - model: b\n    parameters: {weight: 0.6}\n",
    ];
    for (r, recipe) in recipes.iter().enumerate() {
        let file = dir.path().join(format!("r{r}.yml"));
        let out = format!("out{r}");
        std::fs::write(&file, recipe).unwrap();
        run(
            BIN,
            dir.path(),
            &["merge", &format!("r{r}.yml"), "--out", &out],
        )
        .assert_success();

        let options = PlanOptions {
            cwd: dir.path().to_path_buf(),
            random_seed: None,
            truncate_vocab: false,
        };
        let plan = MergePlan::from_file(&file, &options).unwrap();
        let whole = merge_in_memory(&plan, &Cpu).unwrap();
        let values = whole.values["model.embed_tokens.weight"].clone();
        assert!(values[300_000].is_nan(), "{recipe}");
        let expected = TensorBytes::encode(values, FloatType::BF16);
        let written = std::fs::read(dir.path().join(out).join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&written).unwrap();
        assert!(
            file.tensor("model.embed_tokens.weight").unwrap().data() == expected.as_bytes(),
            "{recipe}: the slabbed merge differs from the whole-tensor merge"
        );
    }
}
