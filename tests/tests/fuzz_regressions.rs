//! What coverage-guided fuzzing (`fuzz/`, see fuzz/README.md) found, kept as tests.
//!
//! - One test per crash the fuzzers found, replaying it through the same public code path.
//! - The headers fuzzing is about (a tensor of 2^40 elements, in a small file and in a sparse
//!   file as large as the header claims) give a clean error, never an allocation.
//! - Every committed corpus entry and reproducer (`fuzz/corpus/<target>/`,
//!   `fuzz/regressions/<target>/`) replays through the path its target fuzzes and returns a
//!   value or an error without panicking.

use std::path::{Component, Path, PathBuf};

use mergescope_core::Checkpoint;
use mergescope_core::backend::Cpu;
use mergescope_core::checkpoint::{INDEX_FILE_NAME, ModelConfig};
use mergescope_core::dtype::Dtype;
use mergescope_core::eval::preview::merge_in_memory;
use mergescope_core::layout::{LayerKey, Layout, ModuleKind, split_block};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::merge::recipe::Recipe;
use mergescope_tests::fixture::{llama_tensors, write_model_folder, write_sharded};

/// Must equal `mergescope_fuzz::PART_SEPARATOR` (fuzz/src/lib.rs).
const PART_SEPARATOR: &[u8] = b"\x00SHARD\x00";
/// Must equal `mergescope_fuzz::SHARD_NAMES`.
const SHARD_NAMES: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`, sorted.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
            continue;
        };
        files.extend(
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file() && !p.ends_with(".gitkeep")),
        );
    }
    files.sort();
    // A fuzzer running beside the tests deletes inputs it has reduced: skip those.
    files
        .into_iter()
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect()
}

/// The header of a safetensors file, followed by `data_len` bytes.
fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

/// What the file targets do with an opened checkpoint: every tensor viewed, small float ones
/// decoded, the layout and every depth computed.
fn walk(checkpoint: &Checkpoint) {
    for (i, info) in checkpoint.tensors().iter().enumerate() {
        let view = checkpoint.view(i);
        assert_eq!(view.bytes.len(), info.byte_len(), "{}", info.name);
        if info.float_type().is_some() && info.numel() <= 1 << 20 {
            assert_eq!(view.to_f32_vec().len(), info.numel());
        }
    }
    checkpoint.verify_unchanged().unwrap();
    let layout = Layout::of_checkpoint(checkpoint);
    for t in checkpoint.tensors() {
        let depth = layout.depth(&t.name);
        assert!((0.0..=1.0).contains(&depth), "{}: {depth}", t.name);
    }
    if let Some(config) = checkpoint.config() {
        let _ = (
            config.architecture(),
            config.model_type(),
            config.num_layers(),
        );
    }
}

/// Opens `path`; a checkpoint is walked, an error must say something.
fn open_and_walk(path: &Path) -> Result<(), String> {
    match Checkpoint::open(path) {
        Ok(checkpoint) => {
            walk(&checkpoint);
            Ok(())
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
            Err(message)
        }
    }
}

// ---- crashes found ------------------------------------------------------------------------

/// Found by the `recipe` target (fuzz/regressions/recipe/dare-linear-base-only.yml): a recipe
/// whose only model is its base leaves DARE no model to draw masks for, and the mask pass
/// split its (empty) buffer into chunks of zero words: rayon panicked with "chunk_size must not
/// be zero" (core/src/merge/gta.rs, `random_masks`). Every method is tried the same way.
#[test]
fn a_recipe_whose_only_model_is_its_base_plans_and_merges_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    write_model_folder(
        &dir.path().join("base"),
        &llama_tensors(2, 0),
        Dtype::F32,
        2,
    );
    let file = dir.path().join("recipe.yml");
    let options = PlanOptions {
        cwd: dir.path().to_path_buf(),
        random_seed: Some(0),
        truncate_vocab: false,
    };
    let methods = [
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "model_stock",
        "slerp",
        "nuslerp",
        "multislerp",
        "karcher",
        "sce",
        "nearswap",
        "passthrough",
    ];
    let mut merged = Vec::new();
    for method in methods {
        let yaml = format!(
            "merge_method: {method}\nbase_model: base\nmodels:\n  - model: base\n    parameters: {{weight: 1.0}}\nparameters: {{t: 0.5}}\n"
        );
        let recipe = Recipe::from_yaml(&yaml, &file).unwrap();
        let Ok(plan) = MergePlan::new(recipe, &file, &options) else {
            continue; // refusing the recipe is as good as merging it
        };
        if let Ok(model) = merge_in_memory(&plan, &Cpu) {
            for task in &plan.tasks {
                if let Some(values) = model.values.get(&task.name) {
                    assert_eq!(values.len(), task.numel(), "{method}: {}", task.name);
                }
            }
            merged.push(method);
        }
    }
    assert!(merged.contains(&"dare_linear"), "merged: {merged:?}");
    assert!(merged.contains(&"dare_ties"), "merged: {merged:?}");
}

// ---- headers that claim huge tensors ------------------------------------------------------

const HUGE: &str =
    r#"{"huge":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}}"#;

#[test]
fn a_header_claiming_a_2p40_element_tensor_in_a_small_file_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    std::fs::write(&file, raw_file(HUGE, 0)).unwrap();
    let message = open_and_walk(&file).unwrap_err();
    assert!(message.contains("model.safetensors"), "{message}");
}

/// The same header in a sparse file of exactly the claimed size (4 TiB + the header), so the
/// safetensors format's own size check passes: mergescope must refuse it or open it without
/// reading or allocating the tensor.
#[test]
fn a_sparse_file_as_large_as_its_2p40_element_header_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    let bytes = raw_file(HUGE, 0);
    std::fs::write(&file, &bytes).unwrap();
    let size = bytes.len() as u64 + (1 << 42);
    let extended = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(size));
    if let Err(e) = extended {
        eprintln!("skipped: this filesystem holds no 4 TiB sparse file ({e})");
        return;
    }
    let message = open_and_walk(&file).unwrap_err();
    assert!(message.contains("huge"), "{message}");
}

/// A sparse 16 GiB tensor (2^32 elements) is within what real models have: it opens, its
/// layout is computed, and nothing reads it.
#[test]
fn a_sparse_16_gib_tensor_opens_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    let header = r#"{"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[65536,65536],"data_offsets":[0,17179869184]}}"#;
    let bytes = raw_file(header, 0);
    std::fs::write(&file, &bytes).unwrap();
    let extended = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(bytes.len() as u64 + (1 << 34)));
    if let Err(e) = extended {
        eprintln!("skipped: this filesystem holds no 16 GiB sparse file ({e})");
        return;
    }
    let checkpoint = Checkpoint::open(&file).unwrap();
    assert_eq!(checkpoint.parameter_count(), 1 << 32);
    assert_eq!(checkpoint.view(0).bytes.len(), 1 << 34);
    assert_eq!(Layout::of_checkpoint(&checkpoint).num_layers(), 1);
}

#[test]
fn a_shape_whose_element_count_overflows_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    let header = r#"{"w":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#;
    std::fs::write(&file, raw_file(header, 0)).unwrap();
    open_and_walk(&file).unwrap_err();
}

// ---- the corpora, replayed ----------------------------------------------------------------

#[test]
fn the_safetensors_file_corpus_replays_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    for (_, bytes) in inputs("safetensors_file") {
        std::fs::write(&file, bytes).unwrap();
        let _ = open_and_walk(&file);
    }
}

#[test]
fn the_sharded_folder_corpus_replays_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    for (_, bytes) in inputs("sharded_folder") {
        let mut parts = Vec::new();
        let mut rest = &bytes[..];
        while let Some(at) = rest
            .windows(PART_SEPARATOR.len())
            .position(|w| w == PART_SEPARATOR)
        {
            parts.push(&rest[..at]);
            rest = &rest[at + PART_SEPARATOR.len()..];
        }
        parts.push(rest);
        std::fs::write(dir.path().join(INDEX_FILE_NAME), parts[0]).unwrap();
        for (k, name) in SHARD_NAMES.iter().enumerate() {
            let path = dir.path().join(name);
            match parts.get(k + 1) {
                Some(shard) => std::fs::write(&path, shard).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let _ = open_and_walk(dir.path());
    }
}

#[test]
fn the_config_json_corpus_replays_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    write_model_folder(dir.path(), &llama_tensors(2, 0), Dtype::F32, 2);
    for (_, bytes) in inputs("config_json") {
        std::fs::write(dir.path().join("config.json"), bytes).unwrap();
        let _ = open_and_walk(dir.path());
    }
}

#[test]
fn the_layout_names_corpus_replays_without_panicking() {
    for (_, bytes) in inputs("layout_names") {
        let text = String::from_utf8_lossy(&bytes);
        let mut names: Vec<&str> = text.split('\n').collect();
        let config = match names.first() {
            Some(first) if first.starts_with('{') => {
                let raw = serde_json::from_str(first).unwrap_or(serde_json::Value::Null);
                names.remove(0);
                Some(ModelConfig {
                    path: PathBuf::from("config.json"),
                    raw,
                })
            }
            _ => None,
        };
        for name in &names {
            let key = LayerKey::parse(name);
            assert_eq!(key.module, ModuleKind::classify(name));
            assert_eq!(key.block, split_block(name).map(|(_, b)| b));
        }
        let layout = Layout::from_names(config.as_ref(), &names);
        for name in &names {
            assert!((0.0..=1.0).contains(&layout.depth(name)), "{name}");
        }
    }
}

/// The fuzz family of the `recipe` target (fuzz/src/lib.rs `recipe_family`), written with the
/// test fixtures: `base`, `a` (F32), `b` (BF16), `c` (F16, sharded, no `lm_head.weight`).
/// Recipes naming `wide/...` find no model, which is a planning error like any other.
fn recipe_family(dir: &Path) {
    write_model_folder(&dir.join("base"), &llama_tensors(2, 0), Dtype::F32, 2);
    write_model_folder(&dir.join("a"), &llama_tensors(2, 1), Dtype::F32, 2);
    write_model_folder(&dir.join("b"), &llama_tensors(2, 2), Dtype::BF16, 2);
    let mut partial = llama_tensors(2, 3);
    partial.retain(|t| t.name != "lm_head.weight");
    write_sharded(&dir.join("c"), &partial, Dtype::F16, 6);
}

/// Only relative paths without `..`, as the fuzz target plans.
fn confined(model: &str) -> bool {
    !model.contains('\0')
        && Path::new(model)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[test]
fn the_recipe_corpus_replays_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    recipe_family(dir.path());
    let file = dir.path().join("recipe.yml");
    for (input, bytes) in inputs("recipe") {
        // Structured inputs (first byte 0xFF) need the fuzz crate to become text; the
        // `.yml` reproducers beside them hold their text.
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let Ok(recipe) = Recipe::from_yaml(text, &file) else {
            continue;
        };
        let again = Recipe::from_yaml(&recipe.to_yaml(), &file).unwrap_or_else(|e| {
            panic!("{}: written back, it does not parse: {e}", input.display())
        });
        assert_eq!(again.to_yaml(), recipe.to_yaml(), "{}", input.display());
        let paths = recipe
            .base_model
            .iter()
            .chain(recipe.tokenizer_source.iter())
            .chain(recipe.models.iter().map(|m| &m.model));
        if !paths.clone().all(|p| confined(p)) {
            continue;
        }
        let options = PlanOptions {
            cwd: dir.path().to_path_buf(),
            random_seed: Some(0),
            truncate_vocab: text.starts_with("#truncate_vocab"),
        };
        if let Ok(plan) = MergePlan::new(recipe, &file, &options) {
            let _ = merge_in_memory(&plan, &Cpu);
        }
    }
}
