//! The `perplexity` objective: a language model's mean negative log-likelihood and perplexity
//! on text from each domain (a folder of `.txt` and `.jsonl` files, one domain each, named
//! after the file), for a merge held in memory or a model folder.
//!
//! Memory: the objective holds every domain's token ids (4 bytes a token); scoring a merge in
//! memory holds its f32 values and, while the model is built from them, the model's own f32
//! copy (twice the model for a moment, then once); a folder is read into f32 the same way.
//! Input models are scored one after another, so at most one model is held at a time.

use std::path::{Path, PathBuf};

use super::{CausalLm, LmError, LmFiles, windowed_nll};
use crate::eval::{Candidate, EvalError, Fidelity, ModelTensors, Objective, Scores};
use crate::job::CancelToken;

/// Tokens of each domain the quick grade scores (while a slider is held).
pub const QUICK_TOKENS: usize = 2048;

/// The longest window scored in one forward pass: longer contexts cost quadratic attention
/// time on the CPU for little change in the figure.
pub const MAX_WINDOW: usize = 1024;

/// Each domain's text, tokenized once.
#[derive(Clone, Debug)]
pub struct TextDomains {
    /// Domain name (the file's stem) and its tokens, in name order.
    pub domains: Vec<(String, Vec<u32>)>,
}

impl TextDomains {
    /// Every `.txt` file (a domain's text) and `.jsonl` file (a domain's documents, one JSON
    /// object with a `"text"` string a line) in `dir`, tokenized with the `tokenizer.json` at
    /// `tokenizer`.
    pub fn load(dir: &Path, tokenizer: &Path) -> Result<Self, LmError> {
        let tokenizer = tokenizers::Tokenizer::from_file(tokenizer).map_err(|e| LmError::Text {
            file: tokenizer.to_path_buf(),
            reason: format!("not a tokenizer.json that can be read: {e}"),
        })?;
        let listing = std::fs::read_dir(dir).map_err(|e| LmError::Text {
            file: dir.to_path_buf(),
            reason: format!("cannot list the domain texts: {e}"),
        })?;
        let mut files: Vec<PathBuf> = listing
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt" || e == "jsonl"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(LmError::Text {
                file: dir.to_path_buf(),
                reason: "holds no .txt or .jsonl files; put one text per domain there".to_owned(),
            });
        }
        let mut domains: Vec<(String, Vec<u32>)> = Vec::with_capacity(files.len());
        for file in &files {
            let failed = |reason: String| LmError::Text {
                file: file.clone(),
                reason,
            };
            let name = file
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            if domains.iter().any(|(n, _)| *n == name) {
                return Err(failed(format!(
                    "is a second file of the domain `{name}`; keep one .txt or .jsonl per domain"
                )));
            }
            let bytes = std::fs::read(file).map_err(|e| failed(e.to_string()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                failed(format!(
                    "is not UTF-8 text (byte {}); save it as UTF-8",
                    e.utf8_error().valid_up_to()
                ))
            })?;
            let text = if file.extension().is_some_and(|e| e == "jsonl") {
                jsonl_text(&text).map_err(failed)?
            } else {
                text
            };
            let tokens = tokenizer
                .encode(text, false)
                .map_err(|e| failed(format!("cannot be tokenized: {e}")))?
                .get_ids()
                .to_vec();
            if tokens.len() < 2 {
                return Err(failed(format!(
                    "has {} token(s); a domain needs at least two to be scored",
                    tokens.len()
                )));
            }
            domains.push((name, tokens));
        }
        Ok(Self { domains })
    }

    /// Tokens in all domains.
    pub fn tokens(&self) -> usize {
        self.domains.iter().map(|(_, t)| t.len()).sum()
    }
}

/// The documents of a JSON Lines file, each line's `"text"`, separated by a blank line as
/// they would be in a `.txt` of them; blank lines are skipped.
fn jsonl_text(file: &str) -> Result<String, String> {
    let mut documents = Vec::new();
    for (n, line) in file.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON ({e})", n + 1))?;
        match value.get("text").and_then(serde_json::Value::as_str) {
            Some(text) => documents.push(text.to_owned()),
            None => {
                return Err(format!(
                    "line {}: a JSON object with a \"text\" string was expected",
                    n + 1
                ));
            }
        }
    }
    Ok(documents.join("\n\n"))
}

/// Perplexity per domain of the reference model's architecture.
#[derive(Clone, Debug)]
pub struct Perplexity {
    pub domains: TextDomains,
    /// The reference model's `config.json`, and where it was read.
    pub config: serde_json::Value,
    pub config_path: PathBuf,
    /// Tokens a window holds, and how far windows move.
    pub window: usize,
    pub stride: usize,
}

/// Why a perplexity could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error("{0}")]
    Forward(#[from] candle_core::Error),
    #[error("cancelled")]
    Cancelled,
}

impl Perplexity {
    /// The objective on the texts in `dir` for the model `files` describe: one rule for the
    /// command line and the workbench. Windows as long as the model's context, at most
    /// [`MAX_WINDOW`], moving by half a window (each token after the first is scored with at
    /// least half a window of context). An architecture not run in process is refused here,
    /// before any text is read.
    pub fn for_family(dir: &Path, files: &LmFiles) -> Result<Self, LmError> {
        if !files.is_supported() {
            return Err(LmError::Unsupported {
                config: files.config_path.clone(),
                architecture: super::architecture(&files.config).to_owned(),
                supported: super::SUPPORTED,
            });
        }
        let domains = TextDomains::load(dir, &files.tokenizer_path)?;
        let window = files
            .context()
            .map_or(MAX_WINDOW, |n| n.min(MAX_WINDOW))
            .max(2);
        Ok(Self {
            domains,
            config: files.config.clone(),
            config_path: files.config_path.clone(),
            window,
            stride: (window / 2).max(1),
        })
    }

    /// [`Self::for_family`] with the configuration of a merge's reference model and its
    /// tokenizer source (the recipe's `tokenizer_source`, else the reference model's).
    pub fn for_plan(dir: &Path, plan: &crate::merge::plan::MergePlan) -> Result<Self, LmError> {
        Self::for_family(dir, &super::generate::files_for_plan(plan)?)
    }

    /// `DOMAIN/nll` (nats per token) and `DOMAIN/perplexity` for every domain, and their
    /// means; `Subsample(n)` scores each domain's first `n` tokens, in windows that do not
    /// overlap (each window's first token is then left out).
    pub fn score(&self, model: &CausalLm, fidelity: Fidelity) -> candle_core::Result<Scores> {
        self.score_until(model, fidelity, &CancelToken::default())
            .map_err(|e| match e {
                ScoreError::Forward(e) => e,
                other => candle_core::Error::Msg(other.to_string()),
            })
    }

    /// [`Self::score`], stopping at the next window once `cancel` is set (a preview that a
    /// newer one replaced).
    pub fn score_until(
        &self,
        model: &CausalLm,
        fidelity: Fidelity,
        cancel: &CancelToken,
    ) -> Result<Scores, ScoreError> {
        let mut scores = Scores::new();
        let (mut nll_sum, mut ppl_sum) = (0.0, 0.0);
        for (name, tokens) in &self.domains.domains {
            // The quick grade reads its tokens once, in windows side by side: a third less
            // work than overlapping ones, for an estimate while a slider is held.
            let (tokens, stride) = match fidelity {
                Fidelity::Full => (tokens.as_slice(), self.stride),
                Fidelity::Subsample(n) => (&tokens[..n.clamp(2, tokens.len())], self.window),
            };
            let logits = |w: &[u32]| {
                if cancel.is_cancelled() {
                    candle_core::bail!("cancelled");
                }
                model.logits(w)
            };
            let (total, count) =
                windowed_nll(logits, tokens, self.window, stride).map_err(|e| {
                    if cancel.is_cancelled() {
                        ScoreError::Cancelled
                    } else {
                        ScoreError::Forward(e)
                    }
                })?;
            let nll = total / count.max(1) as f64;
            scores.insert(format!("{name}/nll"), nll);
            scores.insert(format!("{name}/perplexity"), nll.exp());
            nll_sum += nll;
            ppl_sum += nll.exp();
        }
        let domains = self.domains.domains.len() as f64;
        scores.insert("mean/nll".to_owned(), nll_sum / domains);
        scores.insert("mean/perplexity".to_owned(), ppl_sum / domains);
        Ok(scores)
    }

    /// The model with the weights `tensors` holds (a merge in memory); `model` names it in
    /// errors. `tensors` may be dropped once this returns: the model keeps its own copy.
    pub fn model_of(&self, tensors: &ModelTensors, model: &str) -> Result<CausalLm, LmError> {
        CausalLm::from_tensors(&self.config, &self.config_path, tensors, model)
    }

    /// The model in `folder` (a checkpoint the configuration describes), read into memory.
    pub fn model_in(&self, folder: &Path) -> Result<CausalLm, EvalError> {
        let checkpoint = crate::Checkpoint::open(folder)?;
        let tensors = ModelTensors::all_floats(&checkpoint);
        self.model_of(&tensors, &folder.display().to_string())
            .map_err(|e| EvalError::Lm(e.to_string()))
    }
}

impl Objective for Perplexity {
    fn name(&self) -> String {
        "perplexity".to_owned()
    }

    fn evaluate(&self, candidate: &Candidate<'_>, fidelity: Fidelity) -> Result<Scores, EvalError> {
        let model = match (candidate.tensors, candidate.folder) {
            (Some(tensors), _) => self
                .model_of(tensors, "the merge")
                .map_err(|e| EvalError::Lm(e.to_string()))?,
            (None, Some(folder)) => self.model_in(folder)?,
            (None, None) => return Err(EvalError::NoModel),
        };
        Ok(self.score(&model, fidelity)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A word-level tokenizer over `w0` … `w49` (the tiny model's vocabulary).
    fn tokenizer(path: &Path) {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        let vocab: HashMap<String, u32> = (0..50).map(|i| (format!("w{i}"), i)).collect();
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("w0".to_owned())
            .build()
            .unwrap();
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        tokenizer.save(path, false).unwrap();
    }

    fn config() -> serde_json::Value {
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 32,
            "intermediate_size": 48, "vocab_size": 50, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64,
            "tie_word_embeddings": false})
    }

    #[test]
    fn a_merge_in_memory_scores_as_its_folder_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        tokenizer(&root.join("tokenizer.json"));
        std::fs::create_dir(root.join("texts")).unwrap();
        let words = |seed: usize, n: usize| -> String {
            (0..n)
                .map(|i| format!("w{} ", (i * seed + 3) % 50))
                .collect()
        };
        std::fs::write(root.join("texts/code.txt"), words(7, 90)).unwrap();
        std::fs::write(root.join("texts/prose.txt"), words(11, 70)).unwrap();
        std::fs::write(root.join("texts/notes.md"), "not a domain").unwrap();
        let domains = TextDomains::load(&root.join("texts"), &root.join("tokenizer.json")).unwrap();
        let names: Vec<&str> = domains.domains.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["code", "prose"]);
        assert_eq!(domains.domains[0].1.len(), 90);

        // The model on disk, and the same tensors in memory.
        let (_, weights) = super::super::llama::tests::tiny(false);
        let model = root.join("model");
        std::fs::create_dir(&model).unwrap();
        candle_core::safetensors::save(&weights, model.join("model.safetensors")).unwrap();
        std::fs::write(model.join("config.json"), config().to_string()).unwrap();
        let in_memory = super::super::llama::tests::flat(&weights);
        let objective = Perplexity {
            domains,
            config: config(),
            config_path: model.join("config.json"),
            window: 32,
            stride: 16,
        };
        let from_folder = objective
            .evaluate(
                &Candidate {
                    folder: Some(&model),
                    tensors: None,
                },
                Fidelity::Full,
            )
            .unwrap();
        let from_memory = objective
            .evaluate(
                &Candidate {
                    folder: None,
                    tensors: Some(&in_memory),
                },
                Fidelity::Full,
            )
            .unwrap();
        assert_eq!(from_folder, from_memory);
        let ppl = from_memory["code/perplexity"];
        assert!((from_memory["code/nll"].exp() - ppl).abs() < 1e-9);
        // An untrained model on a 50-word vocabulary is close to uniform.
        assert!((10.0..200.0).contains(&ppl), "{ppl}");
        let quick = objective
            .evaluate(
                &Candidate {
                    folder: None,
                    tensors: Some(&in_memory),
                },
                Fidelity::Subsample(20),
            )
            .unwrap();
        assert_ne!(quick["code/nll"], from_memory["code/nll"]);
    }

    #[test]
    fn unreadable_texts_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        tokenizer(&root.join("tokenizer.json"));
        let texts = root.join("texts");
        std::fs::create_dir(&texts).unwrap();
        let load = || {
            TextDomains::load(&texts, &root.join("tokenizer.json"))
                .unwrap_err()
                .to_string()
        };
        assert!(load().contains("no .txt or .jsonl files"), "{}", load());
        std::fs::write(texts.join("latin1.txt"), b"w1 w2 caf\xe9 w3").unwrap();
        let error = load();
        assert!(
            error.contains("latin1.txt") && error.contains("not UTF-8"),
            "{error}"
        );
        std::fs::remove_file(texts.join("latin1.txt")).unwrap();
        std::fs::write(texts.join("empty.txt"), "").unwrap();
        let error = load();
        assert!(
            error.contains("empty.txt") && error.contains("0 token(s)"),
            "{error}"
        );
        let bad = TextDomains::load(&texts, &root.join("texts"))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("tokenizer.json"), "{bad}");
    }

    #[test]
    fn jsonl_files_are_domains_of_documents_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        tokenizer(&root.join("tokenizer.json"));
        let texts = root.join("texts");
        std::fs::create_dir(&texts).unwrap();
        std::fs::write(
            texts.join("chat.jsonl"),
            "{\"text\": \"w1 w2 w3\"}\n\n{\"text\": \"w4 w5\", \"id\": 2}\n",
        )
        .unwrap();
        std::fs::write(texts.join("prose.txt"), "w6 w7 w8").unwrap();
        let load = || TextDomains::load(&texts, &root.join("tokenizer.json"));
        let domains = load().unwrap();
        assert_eq!(domains.domains[0], ("chat".to_owned(), vec![1, 2, 3, 4, 5]));
        assert_eq!(domains.domains[1].0, "prose");
        assert_eq!(domains.tokens(), 8);
        std::fs::write(
            texts.join("chat.jsonl"),
            "{\"text\": \"w1 w2\"}\n{\"body\": \"w3\"}\n",
        )
        .unwrap();
        let error = load().unwrap_err().to_string();
        assert!(
            error.contains("chat.jsonl") && error.contains("line 2") && error.contains("\"text\""),
            "{error}"
        );
        std::fs::write(
            texts.join("chat.jsonl"),
            "{\"text\": \"w1 w2\"}\nnot json\n",
        )
        .unwrap();
        let error = load().unwrap_err().to_string();
        assert!(error.contains("line 2: not JSON"), "{error}");
        std::fs::write(texts.join("chat.jsonl"), "{\"text\": \"w1 w2\"}\n").unwrap();
        std::fs::write(texts.join("chat.txt"), "w1 w2").unwrap();
        let error = load().unwrap_err().to_string();
        assert!(
            error.contains("second file of the domain `chat`"),
            "{error}"
        );
    }

    #[test]
    fn the_family_rule_picks_windows_and_refuses_other_architectures() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        tokenizer(&root.join("tokenizer.json"));
        std::fs::create_dir(root.join("texts")).unwrap();
        std::fs::write(root.join("texts/a.txt"), "w1 w2 w3").unwrap();
        std::fs::write(root.join("config.json"), config().to_string()).unwrap();
        let files = LmFiles::in_folders(root, root).unwrap();
        let objective = Perplexity::for_family(&root.join("texts"), &files).unwrap();
        // The tiny model's context is 64 tokens.
        assert_eq!((objective.window, objective.stride), (64, 32));
        let mut long = config();
        long["max_position_embeddings"] = serde_json::json!(32_768);
        std::fs::write(root.join("config.json"), long.to_string()).unwrap();
        let files = LmFiles::in_folders(root, root).unwrap();
        let objective = Perplexity::for_family(&root.join("texts"), &files).unwrap();
        assert_eq!(
            (objective.window, objective.stride),
            (MAX_WINDOW, MAX_WINDOW / 2)
        );
        let mut mamba = config();
        mamba["architectures"] = serde_json::json!(["MambaForCausalLM"]);
        std::fs::write(root.join("config.json"), mamba.to_string()).unwrap();
        let files = LmFiles::in_folders(root, root).unwrap();
        // Refused before the texts are read: a missing folder is not what is reported.
        let error = Perplexity::for_family(&root.join("missing"), &files)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("MambaForCausalLM") && error.contains("LlamaForCausalLM"),
            "{error}"
        );
    }
}
