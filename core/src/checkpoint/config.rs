use std::path::{Path, PathBuf};

use super::CheckpointError;

/// The parts of a Hugging Face `config.json` mergescope uses, plus the raw JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub path: PathBuf,
    pub raw: serde_json::Value,
}

impl ModelConfig {
    pub(super) fn read_from(folder: Option<&Path>) -> Result<Option<Self>, CheckpointError> {
        let Some(folder) = folder else {
            return Ok(None);
        };
        let path = folder.join("config.json");
        let text = match super::read_small_file(&path, "config.json", super::MAX_CONFIG_BYTES) {
            Ok(text) => text,
            Err(CheckpointError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let raw = serde_json::from_str(&text).map_err(|e| CheckpointError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(Self { path, raw }))
    }

    /// `architectures[0]`, e.g. `LlamaForCausalLM`.
    pub fn architecture(&self) -> Option<&str> {
        self.raw.get("architectures")?.get(0)?.as_str()
    }

    /// `model_type`, e.g. `llama`.
    pub fn model_type(&self) -> Option<&str> {
        self.raw.get("model_type")?.as_str()
    }

    /// The number of transformer blocks, under whichever key this family uses.
    pub fn num_layers(&self) -> Option<usize> {
        ["num_hidden_layers", "n_layer", "num_layers"]
            .iter()
            .find_map(|key| self.raw.get(*key)?.as_u64())
            .and_then(|n| usize::try_from(n).ok())
    }
}
