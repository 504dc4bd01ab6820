//! PEFT LoRA adapters as models (DESIGN.md `lora`): an adapter folder
//! (`adapter_config.json` + `adapter_model.safetensors`) on its base opens as a [`Checkpoint`]
//! whose targeted tensors read as θ_b + Δ with Δ = (α/r)·B·A (α/√r with rsLoRA, transposed
//! for `fan_in_fan_out` layers and embeddings), computed in f32 per tensor when read
//! ([`adapted`]); every other tensor is the base's own bytes, so its task vector is zero.
//!
//! Where a model path is accepted, three spellings open an adapter:
//! - `BASE+ADAPTER`, mergekit's syntax (`ModelReference`: exactly one `+`);
//! - an adapter folder alone, on the local base its config names
//!   (`base_model_name_or_path`);
//! - [`open`] with an explicit base (the workbench adding an adapter to a family).
//!
//! mergekit 0.1.5 merges an adapter with PEFT's `merge_and_unload` in the base's dtype and
//! saves that; mergescope keeps θ_b + Δ in f32, so the task vector Δ is exact to f32 rounding
//! (for an f32 base the two agree to f32 rounding). [`extract`] goes the other way.

mod adapted;
mod config;
mod error;
pub mod extract;
pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use adapted::Adapted;
pub use config::{AdapterConfig, CONFIG_FILE_NAME, WEIGHTS_FILE_NAME};
pub use error::LoraError;

use crate::checkpoint::{Checkpoint, CheckpointError, TensorInfo};
use crate::dtype::{Dtype, FloatType};
use adapted::Target;
use names::Factor;

/// `BASE+ADAPTER` split as mergekit splits it (`None` without a `+`).
pub fn split_reference(spec: &str) -> Option<Result<(&str, &str), LoraError>> {
    let (base, adapter) = spec.split_once('+')?;
    if adapter.contains('+') {
        return Some(Err(LoraError::BadReference {
            spec: spec.to_owned(),
        }));
    }
    Some(Ok((base, adapter)))
}

/// Whether `path` is a PEFT adapter folder.
pub fn is_adapter_folder(path: &Path) -> bool {
    path.join(CONFIG_FILE_NAME).is_file()
}

/// Opens an adapter folder alone, on the local base its config names.
pub fn open_bare(adapter: &Path) -> Result<Checkpoint, LoraError> {
    let config = AdapterConfig::read(adapter)?;
    let base = config.local_base(adapter)?;
    open_with(&base, adapter, &config)
}

/// Opens the adapter folder `adapter` (or its `adapter_model.safetensors`) on the checkpoint
/// at `base`.
pub fn open(base: &Path, adapter: &Path) -> Result<Checkpoint, LoraError> {
    if !adapter.exists() {
        return Err(CheckpointError::NotFound {
            path: adapter.to_path_buf(),
        }
        .into());
    }
    let folder = if adapter.is_file() {
        adapter.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        adapter.to_path_buf()
    };
    let config = AdapterConfig::read(&folder)?;
    open_with(base, &folder, &config)
}

fn open_with(base: &Path, folder: &Path, config: &AdapterConfig) -> Result<Checkpoint, LoraError> {
    let file = folder.join(WEIGHTS_FILE_NAME);
    if !file.is_file() {
        return Err(LoraError::MissingWeights {
            folder: folder.to_path_buf(),
        });
    }
    let base_ckpt = Checkpoint::open_stored(base)?;
    let shard_index = base_ckpt.shards().len();
    let (shard, factors) = crate::checkpoint::open_shard(&file, shard_index)?;
    let targets = match_factors(&base_ckpt, &file, config, factors)?;
    let adapted = Adapted::new(file, shard_index, config.r, targets);
    Ok(base_ckpt.with_adapter(folder.to_path_buf(), shard, adapted))
}

/// Pairs the adapter file's A and B per module, finds each module's base tensor and checks
/// that the shapes fit it.
fn match_factors(
    base: &Checkpoint,
    file: &Path,
    config: &AdapterConfig,
    factors: Vec<TensorInfo>,
) -> Result<HashMap<usize, Target>, LoraError> {
    let mut pairs: BTreeMap<String, (Option<TensorInfo>, Option<TensorInfo>, bool)> =
        BTreeMap::new();
    for info in factors {
        let Some(name) = names::parse(&info.name) else {
            return Err(LoraError::Unsupported {
                path: file.to_path_buf(),
                feature: format!(
                    "tensor `{}`, which is no LoRA factor (a trained bias, a DoRA magnitude or a \
                     full-rank module copy)",
                    info.name
                ),
                what_to_do: "merge this adapter into its base with PEFT (merge_and_unload), \
                             save the result, and use that folder as the model",
            });
        };
        if FloatType::from_dtype(info.dtype).is_none() {
            return Err(LoraError::NotFloat {
                adapter: file.to_path_buf(),
                tensor: info.name,
                dtype: format!("{:?}", info.dtype),
            });
        }
        let entry = pairs.entry(name.module).or_default();
        entry.2 = name.embedding;
        match name.factor {
            Factor::A => entry.0 = Some(info),
            Factor::B => entry.1 = Some(info),
        }
    }
    if pairs.is_empty() {
        return Err(LoraError::BadConfig {
            path: file.to_path_buf(),
            reason: "the file holds no LoRA factors".to_owned(),
        });
    }
    let mut targets = HashMap::with_capacity(pairs.len());
    for (module, (a, b, embedding)) in pairs {
        let half = |has, lacks| LoraError::HalfPair {
            adapter: file.to_path_buf(),
            module: module.clone(),
            has,
            lacks,
        };
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => return Err(half("A", "B")),
            _ => return Err(half("B", "A")),
        };
        let tensor = format!("{module}.weight");
        let Some(index) = base.index_of(&tensor) else {
            return Err(LoraError::ModuleMissingFromBase {
                adapter: file.to_path_buf(),
                module,
                tensor,
                base: base.source().to_path_buf(),
            });
        };
        let stored = base.tensors()[index].clone();
        let transpose = embedding || config.fan_in_fan_out;
        let (rank, _) = config.rank_and_alpha(&module);
        check_shapes(&stored, &a, &b, rank, transpose).map_err(|detail| {
            LoraError::ShapeMismatch {
                adapter: file.to_path_buf(),
                module: module.clone(),
                detail,
                base: base.source().to_path_buf(),
            }
        })?;
        if stored.float_type().is_none() {
            return Err(LoraError::ShapeMismatch {
                adapter: file.to_path_buf(),
                module: module.clone(),
                detail: format!(
                    "its base tensor `{tensor}` is {:?}, not a float",
                    stored.dtype
                ),
                base: base.source().to_path_buf(),
            });
        }
        targets.insert(
            index,
            Target {
                stored,
                a,
                b,
                scale: config.scale(&module) as f32,
                transpose,
            },
        );
    }
    Ok(targets)
}

/// `A` is `(rank, cols)`, `B` `(rows, rank)`, the base `(rows, cols)` (or `(cols, rows)` when Δ
/// is transposed); `Err` says which does not hold.
fn check_shapes(
    stored: &TensorInfo,
    a: &TensorInfo,
    b: &TensorInfo,
    rank: usize,
    transpose: bool,
) -> Result<(), String> {
    let [ra, cols] = a.shape[..] else {
        return Err(format!("lora_A has shape {:?}, not 2-D", a.shape));
    };
    let [rows, rb] = b.shape[..] else {
        return Err(format!("lora_B has shape {:?}, not 2-D", b.shape));
    };
    if ra != rb || ra != rank {
        return Err(format!(
            "lora_A {:?} and lora_B {:?} do not share the configured rank {rank}",
            a.shape, b.shape
        ));
    }
    let expected = if transpose {
        vec![cols, rows]
    } else {
        vec![rows, cols]
    };
    if stored.shape != expected {
        return Err(format!(
            "B·A{} has shape {expected:?} but the base tensor `{}` has {:?}",
            if transpose { "ᵀ" } else { "" },
            stored.name,
            stored.shape
        ));
    }
    Ok(())
}

/// The tensor info a computed tensor is served under: the base's name and shape, in F32.
pub(crate) fn computed_info(stored: &TensorInfo, shard: usize) -> TensorInfo {
    TensorInfo {
        name: stored.name.clone(),
        dtype: Dtype::F32,
        shape: stored.shape.clone(),
        shard,
        start: 0,
        end: stored.numel() * 4,
    }
}

/// `BASE+ADAPTER` from two resolved paths (what [`Checkpoint::open`] splits again).
pub fn join_reference(base: &Path, adapter: &Path) -> std::path::PathBuf {
    let mut joined = base.as_os_str().to_owned();
    joined.push("+");
    joined.push(adapter.as_os_str());
    joined.into()
}

/// `path` canonicalized, half by half for `BASE+ADAPTER`: the key that finds the same model
/// spelled two ways.
pub fn canonicalize(path: &Path) -> std::io::Result<std::path::PathBuf> {
    if !path.exists()
        && let Some(Ok((base, adapter))) = path.to_str().and_then(split_reference)
    {
        return Ok(join_reference(
            &Path::new(base).canonicalize()?,
            &Path::new(adapter).canonicalize()?,
        ));
    }
    path.canonicalize()
}

/// `model` as a model of a family on `base`: an adapter folder becomes `BASE+ADAPTER` (the
/// family's base, whatever its config names), any other path stays as it is.
pub fn on_base(base: &Path, model: &Path) -> std::path::PathBuf {
    if is_adapter_folder(model) {
        join_reference(base, model)
    } else {
        model.to_path_buf()
    }
}
