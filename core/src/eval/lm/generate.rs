//! Text generation: greedy decoding or seeded sampling of a [`CausalLm`], a token at a time
//! through [`CausalLm::extend`], with the text handed out as it grows, for the generation
//! preview (the base, each fine-tune and the merge writing for the same prompt).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};

use super::{CausalLm, LmError, LmFiles};
use crate::CancelToken;
use crate::eval::ModelTensors;

/// Why text could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error(
        "the prompt gives no tokens and {tokenizer} has no beginning-of-text token to start \
         from; type a prompt"
    )]
    EmptyPrompt { tokenizer: PathBuf },
    #[error("the prompt is {tokens} tokens and the model reads at most {context}; shorten it")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("{tokenizer}: {reason}")]
    Tokenizer { tokenizer: PathBuf, reason: String },
    #[error("{model}: the forward pass failed: {source}")]
    Forward {
        model: String,
        source: candle_core::Error,
    },
}

/// How the next token is chosen from the model's logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id among equals): the same text every time.
    Greedy,
    /// A draw from the distribution at `temperature`, cut to the `top_k` most likely tokens
    /// (0: all) and then to the smallest set holding `top_p` of the probability (1: all). The
    /// draws come from a ChaCha8 stream of `seed`, so a seed repeats its text on any machine.
    Sampled {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
    },
}

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerateOptions {
    /// New tokens at most (an end-of-text token or the model's context may stop it earlier).
    pub max_tokens: usize,
    pub sampling: Sampling,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `max_tokens` were generated.
    MaxTokens,
    /// The model chose an end-of-text token (not part of the text).
    EndOfText,
    /// The model has read as many tokens as its context holds.
    Context,
    Cancelled,
}

impl Stop {
    /// In words, for a status line.
    pub fn describe(self) -> &'static str {
        match self {
            Self::MaxTokens => "stopped at the token limit",
            Self::EndOfText => "ended with an end-of-text token",
            Self::Context => "stopped at the end of the model's context",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The text so far, handed to the caller after every token that completes some of it.
#[derive(Debug)]
pub struct Streamed<'a> {
    /// Everything generated so far (the prompt excluded).
    pub text: &'a str,
    /// What this token added to `text` (empty when a token only changed earlier text).
    pub piece: &'a str,
    /// New tokens so far.
    pub tokens: usize,
}

/// What a generation made.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The new text (the prompt excluded; special tokens left out).
    pub text: String,
    /// The new tokens, the end-of-text token excluded.
    pub tokens: Vec<u32>,
    /// Tokens the prompt became.
    pub prompt_tokens: usize,
    pub stop: Stop,
    /// Time spent reading the prompt, and generating after it.
    pub prompt_seconds: f64,
    pub seconds: f64,
}

impl Generated {
    /// New tokens per second after the prompt was read.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens.len() as f64 / self.seconds.max(1e-9)
    }
}

/// A family's tokenizer, with the tokens that end and begin a text and the context length.
pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
    path: PathBuf,
    /// Tokens that end generation.
    pub end_of_text: Vec<u32>,
    /// The token a text starts with when the prompt gives none.
    pub begin_of_text: Option<u32>,
    /// Tokens the model reads at most.
    pub context: Option<usize>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("path", &self.path)
            .field("end_of_text", &self.end_of_text)
            .field("begin_of_text", &self.begin_of_text)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// Names Hugging Face tokenizers give their end-of-text token, for configurations that do
/// not say which it is.
const END_OF_TEXT_NAMES: [&str; 6] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|im_end|>",
    "<eos>",
];

impl TextCodec {
    /// The tokenizer of `files`; the end-of-text tokens are `config.json`'s and
    /// `generation_config.json`'s `eos_token_id` (a number or a list), else the tokenizer's
    /// special token of a well-known name.
    pub fn load(files: &LmFiles) -> Result<Self, LmError> {
        let path = files.tokenizer_path.clone();
        let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| LmError::Text {
            file: path.clone(),
            reason: format!("not a tokenizer.json that can be read: {e}"),
        })?;
        let generation = files
            .config_path
            .parent()
            .map(|folder| folder.join("generation_config.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let mut end_of_text: Vec<u32> = [Some(&files.config), generation.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|c| ids(&c["eos_token_id"]))
            .collect();
        if end_of_text.is_empty() {
            end_of_text = tokenizer
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, t)| t.special && END_OF_TEXT_NAMES.contains(&t.content.as_str()))
                .map(|(id, _)| id)
                .collect();
        }
        end_of_text.sort_unstable();
        end_of_text.dedup();
        let begin_of_text = ids(&files.config["bos_token_id"]).into_iter().next();
        Ok(Self {
            tokenizer,
            path,
            end_of_text,
            begin_of_text,
            context: files.context(),
        })
    }

    /// Where the tokenizer was read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `prompt` as tokens, with the special tokens the tokenizer adds (a Llama's `<s>`).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, GenerateError> {
        let mut tokens = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| self.failed(format!("cannot tokenize the prompt: {e}")))?
            .get_ids()
            .to_vec();
        if tokens.is_empty() {
            tokens.extend(self.begin_of_text);
        }
        if tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt {
                tokenizer: self.path.clone(),
            });
        }
        Ok(tokens)
    }

    fn decode(&self, tokens: &[u32]) -> Result<String, GenerateError> {
        self.tokenizer
            .decode(tokens, true)
            .map_err(|e| self.failed(format!("cannot decode tokens: {e}")))
    }

    fn failed(&self, reason: String) -> GenerateError {
        GenerateError::Tokenizer {
            tokenizer: self.path.clone(),
            reason,
        }
    }
}

/// Token ids a configuration gives as a number or a list of numbers.
fn ids(value: &serde_json::Value) -> Vec<u32> {
    let one = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        serde_json::Value::Array(list) => list.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// `files`, refused when their configuration names an architecture that does not run in
/// process (before any weights are read or merged).
pub fn runnable(files: LmFiles) -> Result<LmFiles, LmError> {
    if files.is_supported() {
        Ok(files)
    } else {
        Err(LmError::Unsupported {
            config: files.config_path.clone(),
            architecture: super::architecture(&files.config).to_owned(),
            supported: super::SUPPORTED,
        })
    }
}

/// The runnable files of a merge: its reference model's configuration and its tokenizer
/// source's tokenizer (the recipe's `tokenizer_source`, else the reference model's).
pub fn files_for_plan(plan: &crate::merge::plan::MergePlan) -> Result<LmFiles, LmError> {
    let config_folder = plan
        .config_source
        .as_deref()
        .ok_or_else(|| LmError::BadConfig {
            config: PathBuf::from("config.json"),
            reason: "the recipe's reference model is not in a folder, so there is no \
                     config.json to build the model from; use model folders"
                .to_owned(),
        })?;
    let tokenizer_folder = plan.tokenizer_source.as_deref().unwrap_or(config_folder);
    let mut files = LmFiles::in_folders(config_folder, tokenizer_folder)?;
    // The model is built as the export's config.json says: a `slices:` merge's own depth, an
    // aligned vocabulary's rows.
    let original = serde_json::to_vec(&files.config).expect("JSON values serialize");
    files.config =
        serde_json::from_slice(&plan.output_config(&original)).map_err(|e| LmError::BadConfig {
            config: files.config_path.clone(),
            reason: format!("is not JSON after the merge's changes: {e}"),
        })?;
    runnable(files)
}

/// Loads the model `files` describe with the weights `tensors` (on the CPU); `model` names it
/// in errors. The tensors are copied into the model, so the caller may drop them at once.
pub fn load_model(
    files: &LmFiles,
    tensors: &ModelTensors,
    model: &str,
) -> Result<CausalLm, LmError> {
    CausalLm::from_tensors(&files.config, &files.config_path, tensors, model)
}

/// Prompt tokens decoded with the new ones: the text a token adds can depend on what comes
/// before it (SentencePiece drops the space of a text's first word, byte-level BPE splits a
/// character across tokens).
const DECODE_CONTEXT: usize = 8;

/// The new tokens as text, handing out only what is complete: a byte-level BPE token can end
/// inside a UTF-8 character, which the tokenizer decodes as U+FFFD until the rest arrives.
struct Detokenizer<'a> {
    codec: &'a TextCodec,
    /// The last few prompt tokens, decoded before the new ones.
    lead: Vec<u32>,
    lead_text: String,
    text: String,
}

impl<'a> Detokenizer<'a> {
    fn new(codec: &'a TextCodec, prompt: &[u32]) -> Result<Self, GenerateError> {
        let lead = prompt[prompt.len().saturating_sub(DECODE_CONTEXT)..].to_vec();
        let lead_text = codec.decode(&lead)?;
        Ok(Self {
            codec,
            lead,
            lead_text,
            text: String::new(),
        })
    }

    /// The text of `generated` once it ends in whole characters (`None` until then), and how
    /// many bytes of it were there before.
    fn update(&mut self, generated: &[u32], last: bool) -> Result<Option<usize>, GenerateError> {
        let mut all = self.lead.clone();
        all.extend_from_slice(generated);
        let decoded = self.codec.decode(&all)?;
        // A decoder may treat the lead differently once followed by text; then the new
        // tokens are decoded alone.
        let text = match decoded.strip_prefix(&self.lead_text) {
            Some(text) => text.to_owned(),
            None => self.codec.decode(generated)?,
        };
        if text.ends_with('\u{FFFD}') && !last {
            return Ok(None);
        }
        let kept = if text.starts_with(&self.text) {
            self.text.len()
        } else {
            0
        };
        self.text = text;
        Ok(Some(kept))
    }
}

/// Chooses tokens from logits as [`Sampling`] says.
struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Sampled { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Sampled {
                temperature,
                top_k,
                top_p,
                ..
            } if temperature > 0.0 => self.draw(logits, temperature, top_k, top_p),
            _ => argmax(logits),
        }
    }

    fn draw(&mut self, logits: &[f32], temperature: f32, top_k: usize, top_p: f32) -> u32 {
        // Most likely first, ties by id: the order (and so the draw) is fully determined.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let score = |i: u32| {
            let v = logits[i as usize];
            if v.is_nan() { f32::NEG_INFINITY } else { v }
        };
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
        if top_k > 0 {
            order.truncate(top_k);
        }
        let Some(&best) = order.first() else {
            return 0;
        };
        let top = f64::from(score(best));
        // In f64: exp of large negative differences must not all round to zero together.
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(score(i)) - top) / f64::from(temperature)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = weights.len();
        if top_p < 1.0 {
            let mut sum = 0.0;
            for (n, w) in weights.iter().enumerate() {
                sum += w / total;
                if sum >= f64::from(top_p) {
                    kept = n + 1;
                    break;
                }
            }
        }
        let total: f64 = weights[..kept].iter().sum();
        // 53 random bits: a uniform f64 in [0, 1).
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut sum = 0.0;
        for (&i, w) in order.iter().zip(&weights[..kept]) {
            sum += w;
            if u < sum {
                return i;
            }
        }
        order[kept - 1]
    }
}

/// The index of the largest logit, the lowest among equals; NaN counts as the least.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `options.max_tokens` after `prompt` with `model` (named `name` in errors),
/// calling `on_text` whenever the text grows. `cancel` is looked at before every forward
/// pass; a cancelled generation returns what it made so far, with [`Stop::Cancelled`].
pub fn generate(
    model: &CausalLm,
    name: &str,
    codec: &TextCodec,
    prompt: &str,
    options: &GenerateOptions,
    cancel: &CancelToken,
    mut on_text: impl FnMut(&Streamed<'_>),
) -> Result<Generated, GenerateError> {
    let prompt_ids = codec.encode(prompt)?;
    let context = codec.context.unwrap_or(usize::MAX);
    if prompt_ids.len() > context {
        return Err(GenerateError::PromptTooLong {
            tokens: prompt_ids.len(),
            context,
        });
    }
    let forward = |e: candle_core::Error| GenerateError::Forward {
        model: name.to_owned(),
        source: e,
    };
    let last_row = |logits: Tensor| -> candle_core::Result<Vec<f32>> {
        let rows = logits.dim(0)?;
        logits.get(rows - 1)?.to_dtype(DType::F32)?.to_vec1()
    };
    let mut detokenizer = Detokenizer::new(codec, &prompt_ids)?;
    let mut sampler = Sampler::new(options.sampling);
    let mut tokens = Vec::new();
    let done = |tokens: Vec<u32>, stop, detokenizer: Detokenizer<'_>, prompt_seconds, since| {
        Ok(Generated {
            text: detokenizer.text,
            tokens,
            prompt_tokens: prompt_ids.len(),
            stop,
            prompt_seconds,
            seconds: Instant::elapsed(&since).as_secs_f64(),
        })
    };
    let started = Instant::now();
    if cancel.is_cancelled() {
        return done(tokens, Stop::Cancelled, detokenizer, 0.0, started);
    }
    let mut cache = model.new_cache();
    let mut logits = model
        .extend(&mut cache, &prompt_ids)
        .and_then(last_row)
        .map_err(forward)?;
    let prompt_seconds = started.elapsed().as_secs_f64();
    let generating = Instant::now();
    let stop = loop {
        if tokens.len() >= options.max_tokens {
            break Stop::MaxTokens;
        }
        let token = sampler.pick(&logits);
        if codec.end_of_text.contains(&token) {
            break Stop::EndOfText;
        }
        tokens.push(token);
        let finished = tokens.len() >= options.max_tokens;
        if let Some(kept) = detokenizer.update(&tokens, finished)? {
            on_text(&Streamed {
                text: &detokenizer.text,
                piece: &detokenizer.text[kept..],
                tokens: tokens.len(),
            });
        }
        if finished {
            break Stop::MaxTokens;
        }
        // The newest token is read at position `cache.len()`, which the context must hold.
        if cache.len() >= context {
            break Stop::Context;
        }
        if cancel.is_cancelled() {
            break Stop::Cancelled;
        }
        logits = model
            .extend(&mut cache, &[token])
            .and_then(last_row)
            .map_err(forward)?;
    };
    // Whatever was held back waiting for the rest of a character is handed out now.
    let before = detokenizer.text.len();
    if let Some(kept) = detokenizer.update(&tokens, true)?
        && detokenizer.text.len() != before
    {
        on_text(&Streamed {
            text: &detokenizer.text,
            piece: &detokenizer.text[kept..],
            tokens: tokens.len(),
        });
    }
    done(tokens, stop, detokenizer, prompt_seconds, generating)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::VarBuilder;

    use super::*;
    use crate::eval::lm::llama::tests::tiny;

    /// A word-level tokenizer over `w0` … `w49` (as Hugging Face writes one), `w49` marked as
    /// the end of text when `eos`.
    fn codec(dir: &Path, eos: bool) -> TextCodec {
        let vocab: Vec<String> = (0..50).map(|i| format!("\"w{i}\": {i}")).collect();
        let added = if eos {
            r#"[{"id": 49, "content": "w49", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}]"#
        } else {
            "[]"
        };
        std::fs::write(
            dir.join("tokenizer.json"),
            format!(
                r#"{{"version": "1.0", "truncation": null, "padding": null,
                    "added_tokens": {added}, "normalizer": null,
                    "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null,
                    "decoder": null,
                    "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "w0"}}}}"#,
                vocab.join(", ")
            ),
        )
        .unwrap();
        std::fs::write(dir.join("config.json"), config().to_string()).unwrap();
        TextCodec::load(&LmFiles::in_folders(dir, dir).unwrap()).unwrap()
    }

    fn config() -> serde_json::Value {
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 32,
            "intermediate_size": 48, "vocab_size": 50, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64,
            "tie_word_embeddings": false})
    }

    fn model() -> CausalLm {
        let (_, weights) = tiny(false);
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        CausalLm::load(&config(), Path::new("config.json"), &vb, "tiny").unwrap()
    }

    fn run(
        model: &CausalLm,
        codec: &TextCodec,
        max_tokens: usize,
        sampling: Sampling,
    ) -> (Generated, Vec<String>) {
        let mut pieces = Vec::new();
        let options = GenerateOptions {
            max_tokens,
            sampling,
        };
        let made = generate(
            model,
            "tiny",
            codec,
            "w3 w17 w42",
            &options,
            &CancelToken::default(),
            |s| pieces.push(s.piece.to_owned()),
        )
        .unwrap();
        (made, pieces)
    }

    #[test]
    fn greedy_takes_the_argmax_of_every_positions_logits() {
        let dir = tempfile::tempdir().unwrap();
        let codec = codec(dir.path(), false);
        let model = model();
        let (made, pieces) = run(&model, &codec, 12, Sampling::Greedy);
        assert_eq!(made.stop, Stop::MaxTokens);
        assert_eq!(made.tokens.len(), 12);
        assert_eq!(made.prompt_tokens, 3);
        let mut read = vec![3u32, 17, 42];
        for &token in &made.tokens {
            let logits = model.logits(&read).unwrap();
            let last = logits
                .get(read.len() - 1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(token, argmax(&last), "after {read:?}");
            read.push(token);
        }
        // The streamed pieces make the text, which is the tokens' words.
        assert_eq!(pieces.concat(), made.text);
        let words: Vec<String> = made.tokens.iter().map(|t| format!("w{t}")).collect();
        assert_eq!(made.text.trim_start(), words.join(" "));
        assert!(made.tokens_per_second() > 0.0);
    }

    #[test]
    fn a_seed_repeats_its_text_and_another_seed_differs() {
        let dir = tempfile::tempdir().unwrap();
        let codec = codec(dir.path(), false);
        let model = model();
        let sampled = |seed| Sampling::Sampled {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            seed,
        };
        let (a, _) = run(&model, &codec, 20, sampled(1));
        let (b, _) = run(&model, &codec, 20, sampled(1));
        assert_eq!(a.tokens, b.tokens);
        assert!(
            (2..6).any(|s| run(&model, &codec, 20, sampled(s)).0.tokens != a.tokens),
            "every seed gives {:?}",
            a.tokens
        );
        // Top-k 1 and a tiny top-p both leave only the most likely token: greedy.
        let (greedy, _) = run(&model, &codec, 20, Sampling::Greedy);
        for (top_k, top_p) in [(1, 1.0), (0, 1e-6)] {
            let cut = Sampling::Sampled {
                temperature: 1.0,
                top_k,
                top_p,
                seed: 9,
            };
            assert_eq!(run(&model, &codec, 20, cut).0.tokens, greedy.tokens);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut sampler = Sampler::new(Sampling::Sampled {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
        });
        // Probabilities 0.5, 0.25, 0.25.
        let logits = [2f32.ln(), 0.0, 0.0];
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            counts[sampler.pick(&logits) as usize] += 1;
        }
        assert!((1850..2150).contains(&counts[0]), "{counts:?}");
        assert!((850..1150).contains(&counts[1]), "{counts:?}");
        // Top-p 0.5 keeps the first alone; top-k 2 never draws the third.
        sampler.sampling = Sampling::Sampled {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 3,
        };
        assert!((0..500).all(|_| sampler.pick(&logits) != 2));
        sampler.sampling = Sampling::Sampled {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 3,
        };
        assert!((0..500).all(|_| sampler.pick(&logits) == 0));
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
    }

    #[test]
    fn cancel_end_of_text_and_context_stop_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = model();
        let plain = codec(dir.path(), false);
        let options = GenerateOptions {
            max_tokens: 10,
            sampling: Sampling::Greedy,
        };
        // Cancelled from the callback after the third token: three tokens, nothing more read.
        let cancel = CancelToken::default();
        let made = generate(&model, "tiny", &plain, "w1 w2", &options, &cancel, |s| {
            if s.tokens == 3 {
                cancel.cancel();
            }
        })
        .unwrap();
        assert_eq!((made.stop, made.tokens.len()), (Stop::Cancelled, 3));
        // The context (64) holds the prompt and all but the last new token.
        let long: Vec<String> = (0..60).map(|i| format!("w{}", i % 40)).collect();
        let options = GenerateOptions {
            max_tokens: 50,
            sampling: Sampling::Greedy,
        };
        let go = |codec: &TextCodec, prompt: &str| {
            generate(
                &model,
                "tiny",
                codec,
                prompt,
                &options,
                &CancelToken::default(),
                |_| {},
            )
        };
        let made = go(&plain, &long.join(" ")).unwrap();
        assert_eq!((made.stop, made.tokens.len()), (Stop::Context, 5));
        let too_long: Vec<String> = (0..65).map(|i| format!("w{}", i % 40)).collect();
        let error = go(&plain, &too_long.join(" ")).unwrap_err().to_string();
        assert!(
            error.contains("65 tokens") && error.contains("64"),
            "{error}"
        );
        // The end-of-text token ends it and is not part of the text: make the first greedy
        // choice the end of text.
        let (greedy, _) = run(&model, &plain, 1, Sampling::Greedy);
        let mut stops = codec(dir.path(), true);
        stops.end_of_text = greedy.tokens.clone();
        let made = go(&stops, "w3 w17 w42").unwrap();
        assert_eq!((made.stop, made.tokens.len()), (Stop::EndOfText, 0));
        assert_eq!(made.text, "");
        // An empty prompt with no beginning-of-text token is refused.
        let error = go(&plain, "").unwrap_err();
        assert!(
            matches!(error, GenerateError::EmptyPrompt { .. }),
            "{error}"
        );
    }

    #[test]
    fn end_of_text_comes_from_the_config_or_the_tokenizers_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let codec_of = |config: serde_json::Value| {
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
            TextCodec::load(&LmFiles::in_folders(dir.path(), dir.path()).unwrap()).unwrap()
        };
        codec(dir.path(), false);
        let mut with_ids = config();
        with_ids["eos_token_id"] = serde_json::json!([7, 3]);
        with_ids["bos_token_id"] = serde_json::json!(1);
        let read = codec_of(with_ids);
        assert_eq!(read.end_of_text, [3, 7]);
        assert_eq!(read.begin_of_text, Some(1));
        assert_eq!(read.context, Some(64));
        // An empty prompt starts from the beginning-of-text token.
        assert_eq!(read.encode("").unwrap(), [1]);
        // Without ids in the config, a special token named like an end of text is one.
        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"version": "1.0", "truncation": null, "padding": null,
                "added_tokens": [{"id": 2, "content": "</s>", "single_word": false,
                  "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
                "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "</s>": 2},
                  "unk_token": "a"}}"#,
        )
        .unwrap();
        assert_eq!(codec_of(config()).end_of_text, [2]);
    }

    #[test]
    fn byte_level_text_is_handed_out_in_whole_characters() {
        // A byte-level BPE tokenizer whose vocabulary is the 256 bytes: "é" (two bytes) and
        // "€" (three) take one token per byte.
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<String> = (0u8..=255)
            .map(|b| {
                let c = byte_char(b);
                format!("{}: {b}", serde_json::to_string(&c.to_string()).unwrap())
            })
            .collect();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            format!(
                r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                    "normalizer": null,
                    "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": false,
                      "trim_offsets": true, "use_regex": true}},
                    "post_processor": null,
                    "decoder": {{"type": "ByteLevel", "add_prefix_space": false,
                      "trim_offsets": true, "use_regex": true}},
                    "model": {{"type": "BPE", "vocab": {{{}}}, "merges": []}}}}"#,
                bytes.join(", ")
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), config().to_string()).unwrap();
        let codec = TextCodec::load(&LmFiles::in_folders(dir.path(), dir.path()).unwrap()).unwrap();
        let prompt = codec.encode("a").unwrap();
        let mut detokenizer = Detokenizer::new(&codec, &prompt).unwrap();
        let mut generated = Vec::new();
        let mut handed = Vec::new();
        for byte in " é€!".bytes() {
            generated.push(u32::from(byte));
            if let Some(kept) = detokenizer.update(&generated, false).unwrap() {
                handed.push(detokenizer.text[kept..].to_owned());
            }
        }
        assert_eq!(handed, [" ", "é", "€", "!"]);
    }

    /// GPT-2's printable stand-in for a byte.
    fn byte_char(b: u8) -> char {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        if printable(b) {
            char::from(b)
        } else {
            let n = (0u8..b).filter(|&x| !printable(x)).count() as u32;
            char::from_u32(256 + n).unwrap()
        }
    }
}
