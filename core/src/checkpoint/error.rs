use std::path::PathBuf;

/// The words every "file changed underneath" error carries, so a front end that only has the
/// message (the GUI's notices) can offer to reopen.
pub const CHANGED_ON_DISK: &str = "changed on disk since it was opened";

/// Why a checkpoint could not be opened. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },

    #[error("{path}: cannot read it: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },

    #[error(
        "{folder}: no model weights here (no *.safetensors file and no *.safetensors.index.json); \
         point mergescope at a .safetensors file, a sharded index, or a Hugging Face model folder"
    )]
    NoWeights { folder: PathBuf },

    #[error(
        "{folder}: several .safetensors files ({files}) but no model.safetensors.index.json; \
         open one file directly, or add the index that says how they form one model"
    )]
    AmbiguousFolder { folder: PathBuf, files: String },

    #[error("{path}: not a valid sharded-checkpoint index: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    #[error("{index}: says tensor `{tensor}` is in {shard}, but that shard does not contain it")]
    IndexedTensorMissing {
        index: PathBuf,
        shard: PathBuf,
        tensor: String,
    },

    #[error("tensor `{tensor}` is stored twice, in {first} and in {second}")]
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },

    #[error(
        "{path}: tensor `{tensor}` {what}, above mergescope's limit of {limit}; the header is \
         damaged or the file is not a model mergescope can open"
    )]
    TensorTooLarge {
        path: PathBuf,
        tensor: String,
        what: String,
        limit: String,
    },

    #[error(
        "{path}: tensor `{tensor}` names block {block}; block indices above {max} are not \
         layers of any model (the file is damaged or not a model)"
    )]
    BlockIndexTooLarge {
        path: PathBuf,
        tensor: String,
        block: usize,
        max: usize,
    },

    #[error(
        "{path}: {size} bytes is too large for a {kind} (at most {limit} bytes); is it the right file?"
    )]
    SidecarTooLarge {
        path: PathBuf,
        kind: &'static str,
        size: u64,
        limit: u64,
    },

    #[error(
        "{path} {phrase} ({what}); reopen it (nothing was written from the changed data)",
        phrase = CHANGED_ON_DISK
    )]
    ChangedOnDisk { path: PathBuf, what: String },

    #[error("{path}: config.json is not valid JSON: {reason}; fix or remove it")]
    BadConfig { path: PathBuf, reason: String },

    /// A LoRA adapter that does not open on its base ([`crate::lora`]).
    #[error(transparent)]
    Lora(Box<crate::lora::LoraError>),
}

impl From<crate::lora::LoraError> for CheckpointError {
    fn from(e: crate::lora::LoraError) -> Self {
        match e {
            // The base's own error, as opening the base alone would give it.
            crate::lora::LoraError::Checkpoint(inner) => inner,
            other => Self::Lora(Box::new(other)),
        }
    }
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound { path }
        } else {
            Self::Io { path, source }
        }
    }

    /// Explains a safetensors parse failure in words a user can act on.
    pub(crate) fn not_safetensors(
        path: impl Into<PathBuf>,
        err: &safetensors::SafeTensorError,
    ) -> Self {
        use safetensors::SafeTensorError as E;
        let reason = match err {
            E::HeaderTooSmall | E::InvalidHeaderLength | E::HeaderTooLarge => {
                "its first 8 bytes do not give a plausible header length (is it a .bin/.pt/.gguf file, \
                 or truncated before the header ended?)"
                    .to_owned()
            }
            E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) | E::JsonError(_) => {
                format!("its header is not the JSON safetensors expects ({err})")
            }
            E::MetadataIncompleteBuffer => {
                "the header's offsets and the file size disagree: the file is truncated \
                 (an interrupted download?) or has trailing bytes; download it again"
                    .to_owned()
            }
            E::InvalidOffset(name) => format!(
                "tensor `{name}` has data offsets that overlap or leave a gap; the header lies about \
                 where tensors are"
            ),
            E::TensorInvalidInfo | E::ValidationOverflow | E::MisalignedSlice => format!(
                "a tensor's shape, dtype and byte range do not agree ({err}); the header lies about \
                 its tensors"
            ),
            other => other.to_string(),
        };
        Self::NotSafetensors {
            path: path.into(),
            reason,
        }
    }
}
