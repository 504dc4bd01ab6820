//! `adapter_config.json`: the parts of PEFT's `LoraConfig` that decide Δ, and the refusal of
//! the features mergescope does not apply (PEFT 0.21, `peft/tuners/lora/config.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{LoraError, is_adapter_folder};
use crate::checkpoint::read_small_file;

/// The adapter config file name PEFT writes.
pub const CONFIG_FILE_NAME: &str = "adapter_config.json";
/// The adapter weights file name PEFT writes.
pub const WEIGHTS_FILE_NAME: &str = "adapter_model.safetensors";

const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// What PEFT needs to turn one module's A and B into Δ.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct AdapterConfig {
    #[serde(default = "lora_type")]
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Per-module ranks and alphas, keyed by a (regex) name suffix, as PEFT matches them.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub target_modules: Option<serde_json::Value>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default = "no_bias")]
    pub bias: String,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub trainable_token_indices: Option<serde_json::Value>,
}

fn lora_type() -> String {
    "LORA".to_owned()
}

fn no_bias() -> String {
    "none".to_owned()
}

impl AdapterConfig {
    /// Reads and checks `folder/adapter_config.json`.
    pub fn read(folder: &Path) -> Result<Self, LoraError> {
        let path = folder.join(CONFIG_FILE_NAME);
        if !path.is_file() {
            return Err(LoraError::MissingConfig {
                folder: folder.to_path_buf(),
            });
        }
        let text = read_small_file(&path, CONFIG_FILE_NAME, MAX_CONFIG_BYTES)?;
        let config: Self = serde_json::from_str(&text).map_err(|e| LoraError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        config.check(&path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), LoraError> {
        let bad = |reason: String| LoraError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        if self.peft_type != "LORA" {
            return Err(unsupported(
                path,
                format!("peft_type `{}`", self.peft_type),
                "only LoRA adapters are read; merge this adapter into its base with PEFT \
                 (merge_and_unload) and use the merged model",
            ));
        }
        if self.r == 0 || self.rank_pattern.values().any(|&r| r == 0) {
            return Err(bad("a rank `r` of 0".to_owned()));
        }
        if !self.lora_alpha.is_finite() || self.alpha_pattern.values().any(|a| !a.is_finite()) {
            return Err(bad("a lora_alpha that is not a finite number".to_owned()));
        }
        for key in self.rank_pattern.keys().chain(self.alpha_pattern.keys()) {
            // PEFT matches these as regular expressions; literal names (all real adapters,
            // and what mergekit-extract-lora writes) are matched exactly, anything else refused
            // rather than matched differently.
            if key.contains([
                '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '^', '$', '\\',
            ]) {
                return Err(unsupported(
                    path,
                    format!("the regular expression `{key}` in rank_pattern/alpha_pattern"),
                    "write the pattern as the module names it stands for",
                ));
            }
        }
        let what_to_do = "merge this adapter into its base with PEFT (merge_and_unload), save the \
                          result, and use that folder as the model";
        if self.use_dora {
            return Err(unsupported(
                path,
                "DoRA (`use_dora: true`)".to_owned(),
                what_to_do,
            ));
        }
        if self.bias != "none" || self.lora_bias {
            return Err(unsupported(
                path,
                format!(
                    "trained biases (`bias: {}`, `lora_bias: {}`)",
                    self.bias, self.lora_bias
                ),
                what_to_do,
            ));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(unsupported(
                path,
                "full-rank modules (`modules_to_save`)".to_owned(),
                what_to_do,
            ));
        }
        if self
            .trainable_token_indices
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(unsupported(
                path,
                "trainable token embeddings (`trainable_token_indices`)".to_owned(),
                what_to_do,
            ));
        }
        Ok(())
    }

    /// `(rank, alpha)` of `module` (its name in the base model, e.g.
    /// `model.layers.0.self_attn.q_proj`): the first pattern that names it (PEFT's
    /// `get_pattern_key`: the whole name or a dot-separated suffix of it), else `r`, `lora_alpha`.
    pub fn rank_and_alpha(&self, module: &str) -> (usize, f64) {
        let names = |key: &str| module == key || module.ends_with(&format!(".{key}"));
        let rank = self
            .rank_pattern
            .iter()
            .find(|(k, _)| names(k))
            .map_or(self.r, |(_, &r)| r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| names(k))
            .map_or(self.lora_alpha, |(_, &a)| a);
        (rank, alpha)
    }

    /// The factor Δ = scale·B·A carries: α/r, or α/√r with rsLoRA (PEFT's `update_layer`).
    pub fn scale(&self, module: &str) -> f64 {
        let (rank, alpha) = self.rank_and_alpha(module);
        if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }

    /// The base model the adapter names, when it is a folder on this machine. A relative name
    /// is what the adapter's maker was given in its own working directory, so it is tried from
    /// this working directory, then from each folder above the adapter.
    pub fn local_base(&self, adapter_folder: &Path) -> Result<PathBuf, LoraError> {
        let named = self.base_model_name_or_path.clone().unwrap_or_default();
        let given = Path::new(&named);
        std::iter::once(given.to_path_buf())
            .chain(adapter_folder.ancestors().skip(1).map(|a| a.join(given)))
            .find(|p| !named.is_empty() && p.is_dir() && !is_adapter_folder(p))
            .ok_or_else(|| LoraError::NoLocalBase {
                adapter: adapter_folder.to_path_buf(),
                named,
            })
    }
}

fn unsupported(path: &Path, feature: String, what_to_do: &'static str) -> LoraError {
    LoraError::Unsupported {
        path: path.to_path_buf(),
        feature,
        what_to_do,
    }
}
