//! Reference fixtures made by mergekit 0.1.5 under `fixtures/mergekit/<part>/`: recipes in
//! `configs/`, mergekit's outputs in `expected/` and an `expected/MANIFEST.json` recording the
//! command, the comparison class and the tensor names mergekit wrote.
//!
//! An output may be committed in part (`kept` in the manifest) to keep the fixtures small: the
//! check then requires mergescope to write every tensor mergekit wrote (`tensors`) and compares
//! the kept ones.

use std::path::{Path, PathBuf};

use crate::cli::run;
use crate::compare::{Class, TensorReport, compare_folders};
use crate::fixture::{Tensor, read_folder, write_file};

/// `fixtures/mergekit/<part>`.
pub fn part_dir(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("mergekit")
        .join(part)
}

/// `num_hidden_layers` of the `config.json` in `folder`.
pub fn layer_count(folder: &Path) -> u64 {
    let text = std::fs::read_to_string(folder.join("config.json")).expect("config.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
    config["num_hidden_layers"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no num_hidden_layers", folder.display()))
}

/// What the manifest says about one recipe.
pub struct Reference {
    pub class: Class,
    /// Every tensor mergekit wrote.
    pub tensors: Vec<String>,
    /// The ones committed under `expected/<recipe>/`.
    pub kept: Vec<String>,
}

impl Reference {
    pub fn read(folder: &Path, recipe: &str) -> Self {
        let manifest = folder.join("expected/MANIFEST.json");
        let mut class = Class::for_recipe(&manifest, recipe);
        let text = std::fs::read_to_string(&manifest).expect("MANIFEST.json is readable");
        let json: serde_json::Value = serde_json::from_str(&text).expect("MANIFEST.json is JSON");
        let entry = &json["methods"][recipe];
        // Recipe-specific bounds on the relative L2 error and on the fraction of elements out
        // of tolerance, with their reason in the manifest (`why`).
        if let Class::Close(tol) = &mut class {
            let compare = &entry["compare"];
            tol.l2 = compare["l2"].as_f64().unwrap_or(tol.l2);
            tol.bad_frac = compare["bad_frac"].as_f64().unwrap_or(tol.bad_frac);
        }
        let names = |key: &str| -> Vec<String> {
            entry[key]
                .as_array()
                .unwrap_or_else(|| panic!("{recipe}: MANIFEST.json lists no `{key}`"))
                .iter()
                .map(|n| n.as_str().expect("a tensor name").to_owned())
                .collect()
        };
        Self {
            class,
            tensors: names("tensors"),
            kept: names("kept"),
        }
    }
}

/// Runs `mergescope-cli merge configs/<recipe>.yml` from `folder` (the recipes name their
/// models relative to it, as mergekit ran them) on `backend`, into `out/<recipe>`.
pub fn merge(bin: &str, folder: &Path, recipe: &str, backend: &str, out: &Path) -> PathBuf {
    let merged = out.join(recipe);
    let config = format!("configs/{recipe}.yml");
    let args = [
        "merge",
        &config,
        "--out",
        merged.to_str().expect("a UTF-8 temporary folder"),
        "--random-seed",
        "7",
        "--backend",
        backend,
    ];
    run(bin, folder, &args).assert_success();
    merged
}

/// [`merge`] of fixture part `part`'s `recipe` on the CPU, then [`check_against`] its
/// reference; panics with the comparison's report when it fails.
pub fn merge_and_check(bin: &str, part: &str, recipe: &str) -> Vec<TensorReport> {
    let folder = part_dir(part);
    let out = tempfile::tempdir().expect("a temporary folder");
    let merged = merge(bin, &folder, recipe, "cpu", out.path());
    check_against(&folder, recipe, &merged).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks mergescope's output folder `merged` against the reference for `recipe`: the same
/// tensor names as mergekit wrote, and the kept ones within the recipe's class.
pub fn check_against(
    folder: &Path,
    recipe: &str,
    merged: &Path,
) -> Result<Vec<TensorReport>, String> {
    let reference = Reference::read(folder, recipe);
    let produced = read_folder(merged);
    let names: Vec<&String> = produced.keys().collect();
    let mut expected_names: Vec<&String> = reference.tensors.iter().collect();
    expected_names.sort();
    if names != expected_names {
        return Err(format!(
            "{recipe}: mergescope wrote {names:?}, mergekit {expected_names:?}"
        ));
    }
    // The kept subset, rewritten as one file, so the comparison is compare.rs's own.
    let subset = merged.with_extension("kept");
    let mut dtype = None;
    let tensors: Vec<Tensor> = reference
        .kept
        .iter()
        .map(|name| {
            let (d, shape, values) = &produced[name];
            assert!(
                dtype.is_none_or(|t| t == *d),
                "{recipe}: mixed output dtypes"
            );
            dtype = Some(*d);
            Tensor {
                name: name.clone(),
                shape: shape.clone(),
                // Exact: every value was decoded from an f32, f16 or bf16.
                values: values.iter().map(|&v| v as f32).collect(),
            }
        })
        .collect();
    write_file(
        &subset.join("model.safetensors"),
        &tensors,
        dtype.expect("something kept"),
    );
    let expected = folder.join("expected").join(recipe);
    compare_folders(&subset, &expected, &reference.class, None)
        .map_err(|problems| format!("{recipe}: FAIL\n{problems}"))
}
