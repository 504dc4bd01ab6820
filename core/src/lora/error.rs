use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

/// Why a PEFT LoRA adapter could not be opened on its base. Every variant names the adapter
/// file (or folder) it is about and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(
        "{folder}: no adapter_config.json here; a PEFT LoRA adapter folder holds \
         adapter_config.json and adapter_model.safetensors"
    )]
    MissingConfig { folder: PathBuf },

    #[error(
        "{path}: not a valid PEFT adapter config: {reason}; fix it or re-save the adapter with PEFT"
    )]
    BadConfig { path: PathBuf, reason: String },

    #[error(
        "{folder}: no adapter_model.safetensors here (adapter_model.bin is not read: convert it \
         with PEFT's save_pretrained(safe_serialization=True))"
    )]
    MissingWeights { folder: PathBuf },

    #[error("{path}: {feature} is not supported; {what_to_do}")]
    Unsupported {
        path: PathBuf,
        feature: String,
        what_to_do: &'static str,
    },

    #[error(
        "{adapter}: adapts module `{module}` (tensor `{tensor}`), but the base {base} has no such \
         tensor; is it the base this adapter was trained on?"
    )]
    ModuleMissingFromBase {
        adapter: PathBuf,
        module: String,
        tensor: String,
        base: PathBuf,
    },

    #[error(
        "{adapter}: module `{module}`: {detail}; the adapter does not fit the base {base} (a \
         different model size, or a damaged adapter)"
    )]
    ShapeMismatch {
        adapter: PathBuf,
        module: String,
        detail: String,
        base: PathBuf,
    },

    #[error(
        "{adapter}: module `{module}` has lora_{has} but no lora_{lacks}; the adapter is incomplete"
    )]
    HalfPair {
        adapter: PathBuf,
        module: String,
        has: &'static str,
        lacks: &'static str,
    },

    #[error("{adapter}: tensor `{tensor}` is {dtype}; LoRA factors must be F32, F16 or BF16")]
    NotFloat {
        adapter: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error(
        "{adapter}: the adapter's base model `{named}` is not a local folder; give the base \
         explicitly as BASE+ADAPTER (e.g. `path/to/base+{adapter}`)"
    )]
    NoLocalBase { adapter: PathBuf, named: String },

    #[error(
        "{spec}: more than one `+`; a model with an adapter is written BASE+ADAPTER (one base, one \
         adapter), as in mergekit"
    )]
    BadReference { spec: String },

    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}
