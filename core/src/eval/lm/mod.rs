//! Causal language models run in process, for objectives that read how a merge behaves on
//! text (perplexity per domain) rather than how far its weights moved.
//!
//! candle-transformers' models return the last position's logits only (they are written for
//! generation), and perplexity needs every position's, so the forwards are our own:
//! [`decoder::Decoder`] for the rotary-embedding decoders (Llama 2/3, Mistral, Qwen2, Gemma,
//! Gemma 2, Phi-3) and [`gpt2::Gpt2`], each checked against Hugging Face transformers' logits
//! on saved checkpoints (`tests/fixtures/lm-parity`).
//!
//! Memory: a loaded model holds its weights once, as f32 (GPT-2's transposed Conv1D weights
//! are that copy, not a second one); a [`KvCache`] adds 2 · layers · kv_heads · head_dim f32
//! values per token read.

mod configs;
pub mod decoder;
pub mod demo;
pub mod generate;
pub mod gpt2;
pub mod llama;
pub mod perplexity;
pub mod train;

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use super::ModelTensors;

/// Why a language model cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error(
        "{config}: `{architecture}` models are not run in process yet; mergescope runs {supported} \
         (use an objective command, `cmd:…`, for the others)"
    )]
    Unsupported {
        config: PathBuf,
        architecture: String,
        supported: &'static str,
    },
    #[error("{config}: {reason}")]
    BadConfig { config: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Text { file: PathBuf, reason: String },
    #[error("{model}: {source}")]
    Weights {
        model: String,
        source: candle_core::Error,
    },
}

/// The architectures run in process, as `config.json`'s `architectures` names them.
pub(crate) const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
                         GemmaForCausalLM, Gemma2ForCausalLM, Phi3ForCausalLM and GPT2LMHeadModel";

/// A causal language model the workbench can run.
#[derive(Debug)]
pub enum CausalLm {
    /// Llama 2/3, Mistral, Qwen2/2.5, Gemma, Gemma 2 and Phi-3.
    Decoder(decoder::Decoder),
    Gpt2(gpt2::Gpt2),
}

impl CausalLm {
    /// The model `config` (a `config.json`, read from `config_path`) describes, with weights
    /// from `vb`; `model` names them in errors.
    pub fn load(
        config: &serde_json::Value,
        config_path: &Path,
        vb: &VarBuilder<'_>,
        model: &str,
    ) -> Result<Self, LmError> {
        let architecture = architecture(config);
        // The architecture decides which keys are read, so a missing key is said with it.
        let bad_config = |reason: String| LmError::BadConfig {
            config: config_path.to_path_buf(),
            reason: format!("{reason} (read as a {architecture} configuration)"),
        };
        let weights = |source| LmError::Weights {
            model: model.to_owned(),
            source,
        };
        if let Some(options) = configs::decoder_options(architecture, config) {
            let options = options.map_err(bad_config)?;
            return decoder::Decoder::load(vb, &options)
                .map(Self::Decoder)
                .map_err(weights);
        }
        match architecture {
            "GPT2LMHeadModel" => {
                let options = configs::gpt2_options(config).map_err(bad_config)?;
                gpt2::Gpt2::load(vb, &options)
                    .map(Self::Gpt2)
                    .map_err(weights)
            }
            other => Err(LmError::Unsupported {
                config: config_path.to_path_buf(),
                architecture: other.to_owned(),
                supported: SUPPORTED,
            }),
        }
    }

    /// [`Self::load`] with the weights `tensors` holds (a merge in memory, or a folder read
    /// by [`ModelTensors::all_floats`]), on the CPU. The model keeps its own copy: `tensors`
    /// may be dropped once this returns.
    pub fn from_tensors(
        config: &serde_json::Value,
        config_path: &Path,
        tensors: &ModelTensors,
        model: &str,
    ) -> Result<Self, LmError> {
        Self::load(
            config,
            config_path,
            &var_builder(tensors, &Device::Cpu),
            model,
        )
    }

    /// The logits at every position of a window of `tokens` (tokens × vocab).
    pub fn logits(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        self.extend(&mut KvCache::default(), tokens)
    }

    /// An empty cache for reading a text a few tokens at a time ([`Self::extend`]).
    pub fn new_cache(&self) -> KvCache {
        KvCache::default()
    }

    /// Reads `tokens` after those `cache` has seen and returns their logits (tokens × vocab),
    /// each position attending to everything read before it: generation's step. The cache
    /// keeps every layer's keys and values, so a step costs the new positions only. On an
    /// error (too long a text, a token outside the vocabulary) `cache` is unchanged.
    pub fn extend(&self, cache: &mut KvCache, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let mut forward = move || match self {
            Self::Decoder(model) => model.forward(tokens, cache),
            Self::Gpt2(model) => model.forward(tokens, cache),
        };
        if self.parameters() < SMALL_MODEL {
            single_thread().install(forward)
        } else {
            forward()
        }
    }

    /// About how many parameters the model has (its matrices and embeddings).
    pub fn parameters(&self) -> usize {
        match self {
            Self::Decoder(model) => {
                let o = model.options();
                let attention = o.hidden * o.head_dim * (2 * o.heads + 2 * o.kv_heads);
                o.layers * (attention + 3 * o.hidden * o.intermediate) + o.vocab * o.hidden
            }
            Self::Gpt2(model) => {
                let o = model.options();
                o.layers * (4 * o.hidden * o.hidden + 2 * o.hidden * o.inner) + o.vocab * o.hidden
            }
        }
    }
}

/// Models below this many parameters run their forward passes on one thread: their matrices
/// are too small for threads to pay off, and candle's workers spin while they wait, which
/// costs a small model 3–8× its time when other threads (the workbench's, another process's)
/// want the cores. Larger models keep candle's threads.
const SMALL_MODEL: usize = 20_000_000;

/// The one-thread pool small models' forward passes run in (matrix products use the pool
/// they are called from).
fn single_thread() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "mergescope-lm".to_owned())
            .build()
            .expect("a one-thread pool can always be built")
    })
}

/// What a model has read so far, for [`CausalLm::extend`]: each layer's keys and values
/// (1 × kv_heads × tokens × head_dim).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    len: usize,
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// How many tokens have been read.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Refuses a cache another model (of another depth) filled.
    fn check_layers(&self, layers: usize) -> candle_core::Result<()> {
        if !self.layers.is_empty() && self.layers.len() != layers {
            candle_core::bail!(
                "a cache of {} layers given to a model of {layers}",
                self.layers.len()
            );
        }
        Ok(())
    }

    /// Keeps the keys and values of `n` more tokens (each layer's, those before included).
    fn commit(&mut self, layers: Vec<(Tensor, Tensor)>, n: usize) {
        self.layers = layers;
        self.len += n;
    }
}

/// Where a language model's `config.json` and `tokenizer.json` are, and the configuration.
#[derive(Clone, Debug)]
pub struct LmFiles {
    pub config_path: PathBuf,
    pub config: serde_json::Value,
    pub tokenizer_path: PathBuf,
}

impl LmFiles {
    /// The `config.json` in `config_folder` and the `tokenizer.json` in `tokenizer_folder`
    /// (read now, so a missing or broken file is said at once).
    pub fn in_folders(config_folder: &Path, tokenizer_folder: &Path) -> Result<Self, LmError> {
        let config_path = config_folder.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| LmError::BadConfig {
            config: config_path.clone(),
            reason: format!("cannot be read ({e}); a language model needs its config.json"),
        })?;
        let config = serde_json::from_str(&text).map_err(|e| LmError::BadConfig {
            config: config_path.clone(),
            reason: format!("is not JSON: {e}"),
        })?;
        let tokenizer_path = tokenizer_folder.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(LmError::Text {
                file: tokenizer_path,
                reason: "is missing; a language model's text needs its tokenizer.json".to_owned(),
            });
        }
        Ok(Self {
            config_path,
            config,
            tokenizer_path,
        })
    }

    /// Whether `config.json` names an architecture [`CausalLm::load`] runs.
    pub fn is_supported(&self) -> bool {
        is_supported(&self.config)
    }

    /// The configuration's context length (`max_position_embeddings`, else `n_positions`).
    pub fn context(&self) -> Option<usize> {
        ["max_position_embeddings", "n_positions"]
            .iter()
            .find_map(|key| self.config[key].as_u64())
            .map(|n| n as usize)
    }
}

/// The first of `config.json`'s `architectures`.
pub fn architecture(config: &serde_json::Value) -> &str {
    config["architectures"]
        .get(0)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("(none given)")
}

/// Whether [`CausalLm::load`] runs the architecture `config` names.
pub fn is_supported(config: &serde_json::Value) -> bool {
    matches!(
        architecture(config),
        "LlamaForCausalLM"
            | "MistralForCausalLM"
            | "Qwen2ForCausalLM"
            | "GemmaForCausalLM"
            | "Gemma2ForCausalLM"
            | "Phi3ForCausalLM"
            | "GPT2LMHeadModel"
    )
}

/// A model held in memory as flat f32 values by name (a merge preview) as candle's weights:
/// each tensor takes the shape the model asks for when its element count matches, so the
/// in-memory merge needs no second copy in another layout.
struct InMemory<'a>(&'a ModelTensors);

impl InMemory<'_> {
    fn values(&self, name: &str) -> candle_core::Result<&Vec<f32>> {
        self.0.values.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            }
            .bt()
        })
    }
}

impl SimpleBackend for InMemory<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let values = self.values(name)?;
        if values.len() != shape.elem_count() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("`{name}` holds {} values", values.len()),
                expected: shape,
                got: Shape::from(values.len()),
            }
            .bt());
        }
        Tensor::from_slice(values, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let values = self.values(name)?;
        Tensor::from_slice(values, values.len(), device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.values.contains_key(name)
    }
}

/// `tensors` as the weights a candle model loads from.
pub fn var_builder<'a>(tensors: &'a ModelTensors, device: &Device) -> VarBuilder<'a> {
    VarBuilder::from_backend(Box::new(InMemory(tensors)), DType::F32, device.clone())
}

/// The summed negative log-likelihood (nats) of `tokens` and how many tokens it covers, read
/// in windows of `window` tokens that move by `stride` (≤ `window`): a token is scored once,
/// by the first window that holds it and its predecessor, with that window's context before
/// it (the strided perplexity of Hugging Face's guide). With `stride < window` that is every
/// token after the first; with `stride == window` each window's first token has no context
/// and is left out.
/// `logits_of` gives a window's logits at every position (tokens × vocab).
pub fn windowed_nll(
    mut logits_of: impl FnMut(&[u32]) -> candle_core::Result<Tensor>,
    tokens: &[u32],
    window: usize,
    stride: usize,
) -> candle_core::Result<(f64, usize)> {
    if window < 2 || stride == 0 || stride > window {
        candle_core::bail!(
            "windows of {window} tokens moving by {stride}: need 2 ≤ window and 1 ≤ stride ≤ window"
        );
    }
    let n = tokens.len();
    let (mut total, mut count, mut scored_to) = (0.0, 0, 1);
    let mut begin = 0;
    while scored_to < n {
        let end = (begin + window).min(n);
        let logits = logits_of(&tokens[begin..end])?;
        // Targets t in [first, end) are predicted by position t - 1 - begin of this window.
        let first = scored_to.max(begin + 1);
        if first < end {
            let rows = logits.narrow(0, first - 1 - begin, end - first)?;
            let log_probs = candle_nn::ops::log_softmax(&rows, D::Minus1)?;
            let targets = Tensor::new(&tokens[first..end], logits.device())?.unsqueeze(1)?;
            total -= log_probs
                .gather(&targets, 1)?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            count += end - first;
            scored_to = end;
        }
        begin += stride;
    }
    Ok((total, count))
}

/// The mean negative log-likelihood (nats per token) of `tokens[1..]` under `logits`, the
/// model's (seq × vocab) logits for `tokens`: position p predicts token p + 1.
pub fn mean_nll(logits: &Tensor, tokens: &[u32]) -> candle_core::Result<f64> {
    let n = tokens.len();
    if n < 2 {
        candle_core::bail!("perplexity needs at least two tokens, got {n}");
    }
    let predicting = logits.narrow(0, 0, n - 1)?;
    let log_probs = candle_nn::ops::log_softmax(&predicting, D::Minus1)?;
    let targets = Tensor::new(&tokens[1..], logits.device())?.unsqueeze(1)?;
    let picked = log_probs.gather(&targets, 1)?.squeeze(1)?;
    // Summed in f64: a long text's total must not lose the small terms.
    let total = picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(-total / (n - 1) as f64)
}
