//! Training the language-model demo family on the CPU with candle: a byte-level BPE tokenizer
//! learnt from the training text, a small Llama-shaped base trained on every domain's text, and
//! one fine-tune per domain trained from the base on that domain alone. Seeded: the same seed
//! and thread count give the same files.
//!
//! The models train through a differentiable copy of [`LlamaLm`]'s forward whose logits are
//! tested equal to `LlamaLm`'s, so what evaluation measures afterwards is what was optimised.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::llama::{Config, LlamaConfig};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal};

use super::llama::LlamaLm;

/// The special token that ends every document (and so also starts the next); bos and eos.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// How documents are joined in the shipped training text: a line holding [`END_OF_TEXT`].
pub const DOCUMENT_SEPARATOR: &str = "\n<|endoftext|>\n";

/// The family's shape and how it is trained.
#[derive(Clone, Copy, Debug)]
pub struct LmTrainOptions {
    pub seed: u64,
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Tokens a training window holds; also `max_position_embeddings`.
    pub context: usize,
    pub base_steps: usize,
    pub expert_steps: usize,
    /// Windows per step.
    pub batch: usize,
    pub base_lr: f64,
    pub expert_lr: f64,
}

impl Default for LmTrainOptions {
    fn default() -> Self {
        Self {
            seed: 7,
            vocab_size: 1024,
            hidden: 64,
            intermediate: 192,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            context: 256,
            // Small batches and more steps learn more per CPU second at this size. The experts'
            // steps are enough for each to be clearly best on its own domain and worse than the
            // base elsewhere (PERPLEXITY.md), as real fine-tunes are.
            base_steps: 1000,
            expert_steps: 250,
            batch: 4,
            base_lr: 4e-3,
            expert_lr: 1e-3,
        }
    }
}

impl LmTrainOptions {
    /// The `config.json` every member carries (Hugging Face's `LlamaForCausalLM`).
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden / self.heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.context,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": true,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "torch_dtype": "float32",
        })
    }

    /// candle's configuration, parsed from [`Self::config_json`] as evaluation parses it.
    pub fn config(&self) -> Result<Config> {
        let parsed: LlamaConfig = serde_json::from_value(self.config_json())
            .map_err(|e| candle_core::Error::Msg(format!("the demo's config.json: {e}")))?;
        Ok(parsed.into_config(false))
    }
}

/// One domain's text as shipped: training documents and held-out documents.
#[derive(Clone, Debug)]
pub struct DomainText {
    pub name: String,
    pub train: Vec<String>,
    pub eval: Vec<String>,
}

impl DomainText {
    /// The held-out documents as one plain text (no special tokens), the perplexity domain.
    pub fn eval_text(&self) -> String {
        let mut text = self.eval.join("\n\n");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// Every domain under `dir`: each sub-folder holding `train.txt.gz` and `eval.txt.gz`, in
/// name order.
pub fn read_domains(dir: &Path) -> std::io::Result<Vec<DomainText>> {
    let read = |path: &Path| -> std::io::Result<Vec<String>> {
        let file = std::fs::File::open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text)?;
        Ok(text.split(DOCUMENT_SEPARATOR).map(str::to_owned).collect())
    };
    let mut folders: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("train.txt.gz").is_file())
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(std::io::Error::other(format!(
            "{}: no domain folders (each with train.txt.gz and eval.txt.gz)",
            dir.display()
        )));
    }
    folders
        .iter()
        .map(|folder| {
            Ok(DomainText {
                name: folder
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                train: read(&folder.join("train.txt.gz"))?,
                eval: read(&folder.join("eval.txt.gz"))?,
            })
        })
        .collect()
}

/// A byte-level BPE tokenizer (GPT-2's scheme: any text round-trips) of `vocab_size` tokens
/// learnt from `documents`, with [`END_OF_TEXT`] as token 0.
pub fn train_tokenizer(
    documents: &[&str],
    vocab_size: usize,
) -> tokenizers::Result<tokenizers::Tokenizer> {
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer};

    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        // Every byte is a token, so no text is ever unknown.
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tokenizer.train(&mut trainer, documents.iter())?;
    Ok(tokenizer)
}

/// The minimal `tokenizer_config.json` that tells Hugging Face loaders which tokens are special.
pub fn tokenizer_config(context: usize) -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "add_bos_token": false,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": context,
    })
}

/// `documents` as one token stream, each document followed by the end-of-text token.
pub fn encode_documents(
    tokenizer: &tokenizers::Tokenizer,
    documents: &[String],
) -> tokenizers::Result<Vec<u32>> {
    let end = tokenizer
        .token_to_id(END_OF_TEXT)
        .ok_or("the tokenizer has no end-of-text token")?;
    let mut tokens = vec![end];
    for document in documents {
        tokens.extend_from_slice(tokenizer.encode(document.as_str(), false)?.get_ids());
        tokens.push(end);
    }
    Ok(tokens)
}

/// One model's weights by Hugging Face name.
pub type Weights = BTreeMap<String, Tensor>;

/// The trained family: the base and one fine-tune per domain, by domain name.
#[derive(Debug)]
pub struct LmFamily {
    pub base: Weights,
    pub experts: Vec<(String, Weights)>,
}

/// One training stage.
#[derive(Clone, Copy, Debug)]
struct Stage {
    steps: usize,
    lr: f64,
    batch: usize,
    context: usize,
    seed: u64,
}

/// Learning rate at `step`: a short warm-up, then a cosine down to a tenth.
fn learning_rate(stage: &Stage, step: usize) -> f64 {
    let warmup = (stage.steps / 20).max(1);
    if step < warmup {
        return stage.lr * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (stage.steps - warmup).max(1) as f64;
    stage.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// Seeded initial weights of the model `config` describes, under its weights' names: small
/// normal projections (the residual branches' outputs smaller still, as GPT-2 does), unit norms.
fn initial_weights(config: &Config, seed: u64) -> Result<Weights> {
    // The model's own loader names and shapes the weights; candle's initial values (from an
    // unseeded generator) are then replaced.
    let shapes = {
        let varmap = VarMap::new();
        LlamaLm::load(
            &VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            config,
        )?;
        let data = varmap.data().lock().expect("not poisoned");
        data.iter()
            .map(|(name, var)| (name.clone(), var.dims().to_vec()))
            .collect::<BTreeMap<_, _>>()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let residual_scale = 1.0 / (2.0 * config.num_hidden_layers as f64).sqrt();
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.contains("norm") {
                vec![1.0; n]
            } else {
                let fan_in = *shape.last().expect("a matrix") as f64;
                let std = if name.contains("embed_tokens") {
                    0.05
                } else if name.contains("o_proj") || name.contains("down_proj") {
                    residual_scale / fan_in.sqrt()
                } else {
                    1.0 / fan_in.sqrt()
                };
                let normal = Normal::new(0.0, std as f32).expect("a positive deviation");
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?;
            Ok((name, tensor))
        })
        .collect()
}

/// The Llama forward of [`LlamaLm`] over a batch of windows, built from ops that candle can
/// differentiate: candle-nn's fused RMS norm, rotary embedding and last-axis softmax (which
/// `LlamaLm` runs) have no backward pass, so gradients would stop at the first norm. Its logits
/// are `LlamaLm`'s to float rounding (tested), so what evaluation measures is what was trained.
struct Trainee {
    vars: BTreeMap<String, Var>,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    cos: Tensor,
    sin: Tensor,
}

impl Trainee {
    fn new(config: &Config, init: &Weights) -> Result<Self> {
        let head_dim = config.hidden_size / config.num_attention_heads;
        // The rotary tables as `LlamaLm` computes them (no frequency scaling here).
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / config.rope_theta.powf(i as f32 / head_dim as f32))
            .collect();
        let k = inv_freq.len();
        let positions = Tensor::arange(0, config.max_position_embeddings as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((config.max_position_embeddings, 1))?;
        let angles = positions.matmul(&Tensor::from_vec(inv_freq, (1, k), &Device::Cpu)?)?;
        Ok(Self {
            vars: init
                .iter()
                .map(|(name, t)| Ok((name.clone(), Var::from_tensor(t)?)))
                .collect::<Result<_>>()?,
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim,
            eps: config.rms_norm_eps as f32,
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    fn weight(&self, name: &str) -> Result<&Tensor> {
        self.vars
            .get(name)
            .map(Var::as_tensor)
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter `{name}`")))
    }

    /// `x` (… × in) times the Linear weight `name` (out × in), transposed.
    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        x.broadcast_matmul(&self.weight(&format!("{name}.weight"))?.t()?)
    }

    fn norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        candle_nn::ops::rms_norm_slow(x, self.weight(&format!("{name}.weight"))?, self.eps)
    }

    /// Logits (batch × tokens × vocab) of a batch of windows (batch × tokens, u32).
    fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let embed = self.weight("model.embed_tokens.weight")?;
        let hidden = embed.dim(1)?;
        let mut x = embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, hidden))?;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), &Device::Cpu)?;
        let (cos, sin) = (self.cos.narrow(0, 0, n)?, self.sin.narrow(0, 0, n)?);
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            let h = self.norm(&x, &format!("{p}.input_layernorm"))?;
            let split = |t: Tensor, heads: usize| {
                t.reshape((b, n, heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(
                self.linear(&h, &format!("{p}.self_attn.q_proj"))?,
                self.heads,
            )?;
            let k = split(
                self.linear(&h, &format!("{p}.self_attn.k_proj"))?,
                self.kv_heads,
            )?;
            let v = split(
                self.linear(&h, &format!("{p}.self_attn.v_proj"))?,
                self.kv_heads,
            )?;
            let q = candle_nn::rotary_emb::rope_slow(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&k, &cos, &sin)?;
            let groups = self.heads / self.kv_heads;
            let k = candle_transformers::utils::repeat_kv(k, groups)?;
            let v = candle_transformers::utils::repeat_kv(v, groups)?;
            let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
            let weights = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
            let y = weights
                .matmul(&v.contiguous()?)?
                .transpose(1, 2)?
                .reshape((b, n, hidden))?;
            x = (x + self.linear(&y, &format!("{p}.self_attn.o_proj"))?)?;
            let h = self.norm(&x, &format!("{p}.post_attention_layernorm"))?;
            let gate = candle_nn::ops::silu(&self.linear(&h, &format!("{p}.mlp.gate_proj"))?)?;
            let up = self.linear(&h, &format!("{p}.mlp.up_proj"))?;
            x = (x + self.linear(&(gate * up)?, &format!("{p}.mlp.down_proj"))?)?;
        }
        let x = self.norm(&x, "model.norm")?;
        // Tied embeddings: the head is the embedding matrix.
        let head = match self.vars.get("lm_head.weight") {
            Some(head) => head.as_tensor(),
            None => embed,
        };
        x.broadcast_matmul(&head.t()?)
    }

    fn weights(&self) -> Result<Weights> {
        self.vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
            .collect()
    }
}

/// Trains `init` on windows drawn from `streams` (a step's windows come from the streams in
/// turn, so a mix is balanced whatever each stream's length) with AdamW; `log` hears the loss
/// now and then.
fn fit(
    config: &Config,
    init: &Weights,
    streams: &[&[u32]],
    stage: Stage,
    log: &mut dyn FnMut(String),
) -> Result<Weights> {
    let model = Trainee::new(config, init)?;
    let mut optimizer = AdamW::new(
        model.vars.values().cloned().collect(),
        ParamsAdamW {
            lr: stage.lr,
            weight_decay: 0.01,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(stage.seed);
    let window = stage.context;
    let (mut loss_sum, mut losses) = (0.0, 0);
    for step in 0..stage.steps {
        optimizer.set_learning_rate(learning_rate(&stage, step));
        let mut ids = Vec::with_capacity(stage.batch * window);
        for b in 0..stage.batch {
            let stream = streams[(step * stage.batch + b) % streams.len()];
            let start = rng.random_range(0..stream.len() - window);
            ids.extend_from_slice(&stream[start..start + window]);
        }
        let ids = Tensor::from_vec(ids, (stage.batch, window), &Device::Cpu)?;
        let logits = model.logits(&ids)?;
        let vocab = logits.dim(2)?;
        // Position p predicts token p + 1 of its window.
        let predicting = logits
            .narrow(1, 0, window - 1)?
            .reshape((stage.batch * (window - 1), vocab))?;
        let targets = ids.narrow(1, 1, window - 1)?.flatten_all()?;
        let loss = candle_nn::loss::cross_entropy(&predicting, &targets)?;
        optimizer.backward_step(&loss)?;
        loss_sum += f64::from(loss.to_scalar::<f32>()?);
        losses += 1;
        if (step + 1) % 50 == 0 || step + 1 == stage.steps {
            log(format!(
                "  step {}: loss {:.3} (lr {:.1e})",
                step + 1,
                loss_sum / f64::from(losses),
                learning_rate(&stage, step)
            ));
            (loss_sum, losses) = (0.0, 0);
        }
    }
    model.weights()
}

/// Trains the base on every domain's tokens, then one expert per domain from it on that
/// domain's tokens alone. `domains` holds each domain's name and training tokens.
pub fn train(
    domains: &[(String, Vec<u32>)],
    options: &LmTrainOptions,
    log: &mut dyn FnMut(String),
) -> Result<LmFamily> {
    let config = options.config()?;
    for (name, tokens) in domains {
        if tokens.len() <= options.context {
            candle_core::bail!(
                "domain `{name}` has {} training tokens; a window needs more than {}",
                tokens.len(),
                options.context
            );
        }
    }
    let init = initial_weights(&config, options.seed)?;
    let all: Vec<&[u32]> = domains.iter().map(|(_, t)| t.as_slice()).collect();
    log(format!(
        "base: {} steps of {} windows × {} tokens on every domain",
        options.base_steps, options.batch, options.context
    ));
    let base = fit(
        &config,
        &init,
        &all,
        Stage {
            steps: options.base_steps,
            lr: options.base_lr,
            batch: options.batch,
            context: options.context,
            seed: options.seed,
        },
        log,
    )?;
    let mut experts = Vec::new();
    for (k, (name, tokens)) in domains.iter().enumerate() {
        log(format!(
            "{name}: {} steps from the base on {name} alone",
            options.expert_steps
        ));
        let expert = fit(
            &config,
            &base,
            &[tokens.as_slice()],
            Stage {
                steps: options.expert_steps,
                lr: options.expert_lr,
                batch: options.batch,
                context: options.context,
                seed: options.seed + 1 + k as u64,
            },
            log,
        )?;
        experts.push((name.clone(), expert));
    }
    Ok(LmFamily { base, experts })
}

/// Writes one model as a Hugging Face folder: `config.json`, `model.safetensors` (f32),
/// `tokenizer.json` and `tokenizer_config.json`.
pub fn write_model(
    folder: &Path,
    options: &LmTrainOptions,
    weights: &Weights,
    tokenizer_json: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let pretty = |value: &serde_json::Value| -> std::io::Result<String> {
        let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
        text.push('\n');
        Ok(text)
    };
    std::fs::write(folder.join("config.json"), pretty(&options.config_json())?)?;
    std::fs::write(
        folder.join("tokenizer_config.json"),
        pretty(&tokenizer_config(options.context))?,
    )?;
    std::fs::write(folder.join("tokenizer.json"), tokenizer_json)?;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = weights
        .iter()
        .map(|(name, t)| {
            let values = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(std::io::Error::other)?;
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((name.clone(), data, t.dims().to_vec()))
        })
        .collect::<std::io::Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(std::io::Error::other)
        })
        .collect::<std::io::Result<_>>()?;
    // Hugging Face's loaders ask for the format in the metadata.
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(views, Some(metadata), &folder.join("model.safetensors"))
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_round_trips_any_text_and_ends_documents_with_token_zero() {
        let docs = [
            "def add(a, b):\n    return a + b\n",
            "The quick brown fox jumps over the lazy dog.",
        ];
        let tokenizer = train_tokenizer(&docs, 300).unwrap();
        assert_eq!(tokenizer.token_to_id(END_OF_TEXT), Some(0));
        for text in ["naïve café ✓ — 東京\ttabs\n", "def add(a, b):"] {
            let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        }
        let stream = encode_documents(&tokenizer, &["ab".to_owned(), "cd".to_owned()]).unwrap();
        assert_eq!(stream.first(), Some(&0));
        assert_eq!(stream.last(), Some(&0));
    }

    #[test]
    fn the_training_forward_is_the_evaluated_one() {
        let options = LmTrainOptions {
            vocab_size: 40,
            hidden: 16,
            intermediate: 24,
            heads: 4,
            kv_heads: 2,
            context: 32,
            ..LmTrainOptions::default()
        };
        let config = options.config().unwrap();
        let init = initial_weights(&config, 5).unwrap();
        let trainee = Trainee::new(&config, &init).unwrap();
        let windows: [Vec<u32>; 2] = [
            (0..32).map(|i| (i * 5 + 1) % 40).collect(),
            (0..32).map(|i| (i * 3 + 7) % 40).collect(),
        ];
        let ids = Tensor::from_vec(windows.concat(), (2, 32), &Device::Cpu).unwrap();
        let batched = trainee.logits(&ids).unwrap();
        let vb = VarBuilder::from_tensors(init.into_iter().collect(), DType::F32, &Device::Cpu);
        let evaluated = LlamaLm::load(&vb, &config).unwrap();
        for (i, window) in windows.iter().enumerate() {
            let theirs = evaluated.logits(window).unwrap();
            let diff = (batched.get(i).unwrap() - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "window {i}: {diff}");
        }
    }

    #[test]
    fn a_few_steps_lower_the_loss_of_the_model_evaluation_runs() {
        let options = LmTrainOptions {
            vocab_size: 40,
            hidden: 16,
            intermediate: 24,
            heads: 2,
            kv_heads: 1,
            context: 16,
            batch: 2,
            ..LmTrainOptions::default()
        };
        let config = options.config().unwrap();
        let init = initial_weights(&config, 1).unwrap();
        let stream: Vec<u32> = (0..400).map(|i| (i * 7 % 13) as u32).collect();
        let nll = |weights: &Weights| {
            let vb = VarBuilder::from_tensors(
                weights.clone().into_iter().collect(),
                DType::F32,
                &Device::Cpu,
            );
            let model = LlamaLm::load(&vb, &config).unwrap();
            super::super::mean_nll(&model.logits(&stream[..16]).unwrap(), &stream[..16]).unwrap()
        };
        let stage = Stage {
            steps: 80,
            lr: 2e-2,
            batch: 2,
            context: 16,
            seed: 3,
        };
        let trained = fit(&config, &init, &[&stream], stage, &mut |_| {}).unwrap();
        assert!(
            nll(&trained) < nll(&init) - 1.0,
            "{} vs {}",
            nll(&trained),
            nll(&init)
        );
        // Seeded: the same stage gives the same weights.
        let again = fit(&config, &init, &[&stream], stage, &mut |_| {}).unwrap();
        for (name, t) in &trained {
            let diff = (t - &again[name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
    }
}
