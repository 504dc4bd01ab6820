//! The `perplexity` objective: a language model's mean negative log-likelihood and perplexity
//! on text from each domain (a folder of `.txt` files, one domain each, named after the file),
//! for a merge held in memory or a model folder.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{CausalLm, LmError, var_builder, windowed_nll};
use crate::eval::{Candidate, EvalError, Fidelity, ModelTensors, Objective, Scores};

/// Each domain's text, tokenized once.
#[derive(Clone, Debug)]
pub struct TextDomains {
    /// Domain name (the file's stem) and its tokens, in name order.
    pub domains: Vec<(String, Vec<u32>)>,
}

impl TextDomains {
    /// Every `.txt` file in `dir`, tokenized with the `tokenizer.json` at `tokenizer`.
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
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(LmError::Text {
                file: dir.to_path_buf(),
                reason: "holds no .txt files; put one text per domain there".to_owned(),
            });
        }
        let domains = files
            .iter()
            .map(|file| {
                let failed = |reason: String| LmError::Text {
                    file: file.clone(),
                    reason,
                };
                let bytes = std::fs::read(file).map_err(|e| failed(e.to_string()))?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    failed(format!(
                        "is not UTF-8 text (byte {}); save it as UTF-8",
                        e.utf8_error().valid_up_to()
                    ))
                })?;
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
                let name = file
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                Ok((name, tokens))
            })
            .collect::<Result<_, LmError>>()?;
        Ok(Self { domains })
    }
}

/// Perplexity per domain of the reference model's architecture.
#[derive(Debug)]
pub struct Perplexity {
    pub domains: TextDomains,
    /// The reference model's `config.json`, and where it was read.
    pub config: serde_json::Value,
    pub config_path: PathBuf,
    /// Tokens a window holds, and how far windows move.
    pub window: usize,
    pub stride: usize,
}

impl Perplexity {
    /// `DOMAIN/nll` (nats per token) and `DOMAIN/perplexity` for every domain, and their
    /// means; `Subsample(n)` scores each domain's first `n` tokens.
    pub fn score(&self, model: &CausalLm, fidelity: Fidelity) -> candle_core::Result<Scores> {
        let mut scores = Scores::new();
        let (mut nll_sum, mut ppl_sum) = (0.0, 0.0);
        for (name, tokens) in &self.domains.domains {
            let tokens = match fidelity {
                Fidelity::Full => tokens.as_slice(),
                Fidelity::Subsample(n) => &tokens[..n.clamp(2, tokens.len())],
            };
            let (total, count) =
                windowed_nll(|w| model.logits(w), tokens, self.window, self.stride)?;
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

    fn load(&self, tensors: &ModelTensors, model: &str) -> Result<CausalLm, LmError> {
        CausalLm::load(
            &self.config,
            &self.config_path,
            &var_builder(tensors, &Device::Cpu),
            model,
        )
    }
}

impl Objective for Perplexity {
    fn name(&self) -> String {
        "perplexity".to_owned()
    }

    fn evaluate(&self, candidate: &Candidate<'_>, fidelity: Fidelity) -> Result<Scores, EvalError> {
        let lm = |e: LmError| EvalError::Lm(e.to_string());
        let model = match (candidate.tensors, candidate.folder) {
            (Some(tensors), _) => self.load(tensors, "the merge").map_err(lm)?,
            (None, Some(folder)) => {
                let checkpoint = crate::Checkpoint::open(folder)?;
                let tensors = ModelTensors::all_floats(&checkpoint);
                self.load(&tensors, &folder.display().to_string())
                    .map_err(lm)?
            }
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
        assert!(load().contains("no .txt files"), "{}", load());
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
}
