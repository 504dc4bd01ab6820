//! Training the language-model demo family on the CPU with candle: a byte-level BPE tokenizer
//! learnt from the training text, a small Llama-shaped base trained briefly on a share of every
//! domain's text (its "general" pre-training), and one fine-tune per domain trained longer
//! from the base on all of that domain's text. Seeded: the same seed and thread count give the
//! same files.
//!
//! The models train through [`LlamaLm`] itself (the shared decoder in its differentiable form,
//! a batch of windows a step), so what evaluation measures is what was optimised.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};
use candle_nn::{VarBuilder, VarMap};
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
    /// The share of each domain's training text the base reads (blocks spread evenly through
    /// it); the experts read all of their domain's.
    pub base_share: f64,
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
            // Small batches and more steps learn more per CPU second at this size. The base is
            // a short, general pre-training on half of each domain; each expert then trains
            // longer at a quarter of the rate (warm-up, cosine) on all of its domain, so it
            // gains a lot there yet stays near the base, and the task vectors add up
            // (PERPLEXITY.md: each expert 23–34 % below the base on its domain, task
            // arithmetic below the base on every domain).
            base_steps: 400,
            expert_steps: 300,
            base_share: 0.5,
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
fn initial_weights(config: &serde_json::Value, seed: u64) -> Result<Weights> {
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
    let layers = config["num_hidden_layers"].as_u64().unwrap_or(1);
    let residual_scale = 1.0 / (2.0 * layers as f64).sqrt();
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

/// Trains `init` on windows drawn from `streams` (a step's windows come from the streams in
/// turn, so a mix is balanced whatever each stream's length) with AdamW; `log` hears the loss
/// now and then.
fn fit(
    config: &serde_json::Value,
    init: &Weights,
    streams: &[&[u32]],
    stage: Stage,
    log: &mut dyn FnMut(String),
) -> Result<Weights> {
    let varmap = VarMap::new();
    let model = LlamaLm::load(
        &VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        config,
    )?;
    {
        let data = varmap.data().lock().expect("not poisoned");
        for (name, var) in data.iter() {
            let value = init
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no initial `{name}`")))?;
            var.set(value)?;
        }
    }
    // AdamW updates each variable on its own, so the map's order does not matter.
    let mut optimizer = AdamW::new(
        varmap.all_vars(),
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
        let logits = model.logits_batch(&ids)?;
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
    let data = varmap.data().lock().expect("not poisoned");
    data.iter()
        .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
        .collect()
}

/// The blocks of `block` tokens of `tokens` that make up `share` of them, spread evenly
/// (every other block for a half), joined: what the base reads of a domain.
fn base_portion(tokens: &[u32], share: f64, block: usize) -> Vec<u32> {
    let share = share.clamp(0.0, 1.0);
    tokens
        .chunks(block)
        .enumerate()
        .filter(|(i, _)| ((i + 1) as f64 * share).floor() > (*i as f64 * share).floor())
        .flat_map(|(_, chunk)| chunk.iter().copied())
        .collect()
}

/// Trains the base on [`LmTrainOptions::base_share`] of every domain's tokens, then one expert
/// per domain from it on all of that domain's tokens alone. `domains` holds each domain's name and training tokens.
pub fn train(
    domains: &[(String, Vec<u32>)],
    options: &LmTrainOptions,
    log: &mut dyn FnMut(String),
) -> Result<LmFamily> {
    let config = options.config_json();
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
    let portions: Vec<Vec<u32>> = domains
        .iter()
        .map(|(_, t)| base_portion(t, options.base_share, 4 * options.context))
        .collect();
    if let Some(short) = portions.iter().find(|p| p.len() <= options.context) {
        candle_core::bail!(
            "the base's share of a domain is {} tokens; a window needs more than {}",
            short.len(),
            options.context
        );
    }
    let all: Vec<&[u32]> = portions.iter().map(Vec::as_slice).collect();
    log(format!(
        "base: {} steps of {} windows × {} tokens on {:.0} % of every domain",
        options.base_steps,
        options.batch,
        options.context,
        100.0 * options.base_share
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
    let tensors = weights
        .iter()
        .map(|(name, t)| {
            let values = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(std::io::Error::other)?;
            Ok((name.clone(), values, t.dims().to_vec()))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    crate::eval::train::write_f32_safetensors(&folder.join("model.safetensors"), &tensors)
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
    fn a_trained_batch_reads_as_evaluation_reads_each_window() {
        let options = LmTrainOptions {
            vocab_size: 40,
            hidden: 16,
            intermediate: 24,
            heads: 4,
            kv_heads: 2,
            context: 32,
            ..LmTrainOptions::default()
        };
        let config = options.config_json();
        let init = initial_weights(&config, 5).unwrap();
        let vb = VarBuilder::from_tensors(init.into_iter().collect(), DType::F32, &Device::Cpu);
        let trained = LlamaLm::load(&vb, &config).unwrap();
        // Evaluation loads from config.json and runs the fused kernels.
        let evaluated = super::super::CausalLm::load(
            &options.config_json(),
            Path::new("config.json"),
            &vb,
            "demo",
        )
        .unwrap();
        let windows: [Vec<u32>; 2] = [
            (0..32).map(|i| (i * 5 + 1) % 40).collect(),
            (0..32).map(|i| (i * 3 + 7) % 40).collect(),
        ];
        let ids = Tensor::from_vec(windows.concat(), (2, 32), &Device::Cpu).unwrap();
        let batched = trained.logits_batch(&ids).unwrap();
        assert_eq!(batched.dims(), [2, 32, 40]);
        for (i, window) in windows.iter().enumerate() {
            let theirs = evaluated.logits(window).unwrap();
            let diff = crate::test_support::max_difference(&batched.get(i).unwrap(), &theirs);
            assert!(diff < 1e-5, "window {i}: {diff}");
        }
        let outside = Tensor::from_vec(vec![40u32; 4], (1, 4), &Device::Cpu).unwrap();
        assert!(trained.logits_batch(&outside).is_err());
        let long = Tensor::zeros((1, 33), DType::U32, &Device::Cpu).unwrap();
        assert!(trained.logits_batch(&long).is_err());
    }

    #[test]
    fn the_base_reads_an_even_share_of_each_domain() {
        let tokens: Vec<u32> = (0..100).collect();
        assert_eq!(base_portion(&tokens, 1.0, 10), tokens);
        let half = base_portion(&tokens, 0.5, 10);
        assert_eq!(half.len(), 50);
        assert_eq!(
            &half[..12],
            &[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 30, 31]
        );
        assert_eq!(base_portion(&tokens, 0.3, 10).len(), 30);
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
        let config = options.config_json();
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
            let diff = crate::test_support::max_difference(t, &again[name]);
            assert_eq!(diff, 0.0, "{name}");
        }
    }
}
