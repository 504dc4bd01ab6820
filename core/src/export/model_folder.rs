//! A small model held whole in memory (an upscaled SMILE or WEMoE model, an unloaded one)
//! written as a new Hugging Face folder: `model.safetensors` (f32, with metadata) and
//! `config.json`. Both go into a staging folder beside the target, renamed into place once
//! complete, so the target never holds half a model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Name → shape and values.
pub type F32Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Parameters of `tensors`, and how many of them are in tensors whose name contains `marker`
/// (what an upscaling adds: `.smile.`, `.wemoe.`).
pub fn parameters(tensors: &F32Tensors, marker: &str) -> (usize, usize) {
    let total = tensors.values().map(|(_, v)| v.len()).sum();
    let added = tensors
        .iter()
        .filter(|(name, _)| name.contains(marker))
        .map(|(_, (_, v))| v.len())
        .sum();
    (total, added)
}

/// The tensors on the CPU device, for candle.
pub fn to_candle(
    tensors: &F32Tensors,
) -> candle_core::Result<BTreeMap<String, candle_core::Tensor>> {
    tensors
        .iter()
        .map(|(name, (shape, values))| {
            Ok((
                name.clone(),
                candle_core::Tensor::from_slice(
                    values,
                    shape.as_slice(),
                    &candle_core::Device::Cpu,
                )?,
            ))
        })
        .collect()
}

/// The number `checkpoint`'s safetensors metadata holds under `key`: how an upscaled model
/// says what it is (`smile_top_k`, `wemoe_experts`).
pub fn metadata_number<T: std::str::FromStr>(
    checkpoint: &crate::Checkpoint,
    key: &str,
) -> Option<T> {
    checkpoint
        .shards()
        .first()?
        .metadata()
        .get(key)?
        .parse()
        .ok()
}

/// Every float tensor of `checkpoint`, decoded to f32 (a whole model in memory: for the
/// small models the in-process forward passes run).
pub fn read_f32(checkpoint: &crate::Checkpoint) -> F32Tensors {
    checkpoint
        .tensors()
        .iter()
        .enumerate()
        .filter(|(_, t)| t.float_type().is_some())
        .map(|(i, t)| {
            (
                t.name.clone(),
                (t.shape.clone(), checkpoint.view(i).to_f32_vec()),
            )
        })
        .collect()
}

/// The base's `config.json` (an empty object when it has none or it does not parse) with
/// `block` under `key`: what an upscaled model's config says beyond its base's.
pub fn config_with(
    base_config: Option<&[u8]>,
    key: &str,
    block: serde_json::Value,
) -> serde_json::Value {
    let mut config: serde_json::Value = base_config
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    config[key] = block;
    config
}

/// Why a model folder was not written. Nothing is left behind either way.
#[derive(Debug, thiserror::Error)]
pub enum ModelFolderError {
    #[error("{path} already exists; choose another folder or remove it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tensors do not serialise: {0}")]
    Serialise(String),
}

/// Writes `tensors` with `metadata` and `config` into `out`, which must not exist.
pub fn write_model_folder(
    out: &Path,
    tensors: &F32Tensors,
    metadata: HashMap<String, String>,
    config: &serde_json::Value,
) -> Result<(), ModelFolderError> {
    if out.exists() {
        return Err(ModelFolderError::Exists {
            path: out.to_path_buf(),
        });
    }
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let staging = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let written = std::fs::create_dir_all(&staging)
        .map_err(write_error(&staging))
        .and_then(|()| write_files(&staging, tensors, metadata, config))
        .and_then(|()| std::fs::rename(&staging, out).map_err(write_error(out)));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelFolderError {
    let path = path.to_path_buf();
    move |source| ModelFolderError::Write { path, source }
}

fn write_files(
    out: &Path,
    tensors: &F32Tensors,
    metadata: HashMap<String, String>,
    config: &serde_json::Value,
) -> Result<(), ModelFolderError> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(values),
            )
            .map_err(|e| ModelFolderError::Serialise(e.to_string()))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_, ModelFolderError>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| ModelFolderError::Serialise(e.to_string()))?;
    let model = out.join("model.safetensors");
    super::write_atomically(&model, &bytes).map_err(write_error(&model))?;
    let config_path = out.join("config.json");
    let text = serde_json::to_string_pretty(config).expect("JSON serialises");
    super::write_atomically(&config_path, format!("{text}\n").as_bytes())
        .map_err(write_error(&config_path))
}
