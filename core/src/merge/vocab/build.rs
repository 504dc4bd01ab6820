//! The output vocabulary and where each model's tokens sit in it (mergekit 0.1.5's
//! `tokenizer/build.py`: `build_tokenizer`, `build_union_tokenizer`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use tokenizers::{AddedToken, Tokenizer};

use super::VocabError;
use super::config::VocabSource;
use crate::family::Member;

/// One model's tokenizer, read from its `tokenizer.json`.
pub(super) struct ModelVocab {
    pub file: PathBuf,
    pub tokenizer: Tokenizer,
    /// Token → id, added tokens included (what transformers' `get_vocab()` returns).
    pub vocab: HashMap<String, u32>,
    /// How many of its ids have rows: `config.json`'s `vocab_size`, else the vocabulary's
    /// length (mergekit's `get_vocab_size`). Tokens at or past it are treated as absent.
    pub vocab_size: usize,
}

impl ModelVocab {
    /// Reads `member`'s tokenizer; `None` when its folder has no `tokenizer.json`.
    pub fn load(member: &Member) -> Result<Option<Self>, VocabError> {
        let Some(folder) = member.checkpoint.folder() else {
            return Ok(None);
        };
        let file = folder.join("tokenizer.json");
        if !file.is_file() {
            return Ok(None);
        }
        let mut vocab = Self::read(file)?;
        if let Some(size) = member
            .checkpoint
            .config()
            .and_then(|c| c.raw.get("vocab_size"))
            .and_then(serde_json::Value::as_u64)
        {
            vocab.vocab_size = size as usize;
        }
        Ok(Some(vocab))
    }

    /// Reads a `tokenizer.json` on its own (a `tokenizer_source` that is not an input).
    pub fn read(file: PathBuf) -> Result<Self, VocabError> {
        let tokenizer = Tokenizer::from_file(&file).map_err(|e| VocabError::Tokenizer {
            file: file.clone(),
            message: crate::one_line(&e.to_string()),
        })?;
        let vocab = tokenizer.get_vocab(true);
        let vocab_size = vocab.len();
        Ok(Self {
            file,
            tokenizer,
            vocab,
            vocab_size,
        })
    }

    /// The id of `token` when the model has a row for it.
    pub fn row_of(&self, token: &str) -> Option<usize> {
        self.vocab
            .get(token)
            .map(|&id| id as usize)
            .filter(|&id| id < self.vocab_size)
    }

    /// The model's ordinary (non-added) tokens that have rows, in id order.
    fn ordinary_tokens(&self, added: &HashSet<&str>) -> Vec<&str> {
        let mut tokens: Vec<(&str, u32)> = self
            .vocab
            .iter()
            .filter(|(t, id)| (**id as usize) < self.vocab_size && !added.contains(t.as_str()))
            .map(|(t, &id)| (t.as_str(), id))
            .collect();
        tokens.sort_by_key(|&(_, id)| id);
        tokens.into_iter().map(|(t, _)| t).collect()
    }

    /// The model's added tokens that have rows, in id order.
    fn added_tokens(&self) -> Vec<AddedToken> {
        let mut added: Vec<(u32, AddedToken)> = self
            .tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(id, _)| (*id as usize) < self.vocab_size)
            .collect();
        added.sort_by_key(|(id, _)| *id);
        added.into_iter().map(|(_, t)| t).collect()
    }
}

/// The output tokenizer and its tokens by id.
pub(super) struct Output {
    pub tokenizer: Tokenizer,
    /// `tokens[id]` is the token with output id `id`.
    pub tokens: Vec<String>,
}

/// Builds the output tokenizer. `base` is the base model's (the first model's without one),
/// `models` every input's in the recipe's order (the base included), `named` the tokenizer of a
/// `tokenizer_source` path, and `extra` the `tokens:` keys, added when missing.
pub(super) fn output(
    source: &VocabSource,
    base: &ModelVocab,
    models: &[&ModelVocab],
    named: Option<&ModelVocab>,
    extra: &[&str],
) -> Result<Output, VocabError> {
    let from_base = !matches!((source, named), (VocabSource::Model(_), Some(_)));
    if from_base && base.vocab.len() > base.vocab_size {
        // mergekit strips the base's rowless tokens from its tokenizer (BPE only); editing a
        // tokenizer's model that way is not supported here.
        return Err(VocabError::RowlessBaseTokens {
            file: base.file.clone(),
            tokens: base.vocab.len(),
            rows: base.vocab_size,
        });
    }
    let mut tokenizer = match (source, named) {
        (VocabSource::Model(_), Some(named)) => named.tokenizer.clone(),
        (VocabSource::Union, _) => union(base, models)?,
        _ => base.tokenizer.clone(),
    };
    for token in extra {
        if tokenizer.token_to_id(token).is_none() {
            // transformers' `add_tokens("text")`: an ordinary, normalized added token.
            add(&mut tokenizer, AddedToken::from(*token, false), &base.file)?;
        }
    }
    let vocab = tokenizer.get_vocab(true);
    let len = vocab.len();
    let mut tokens = vec![None; len];
    for (token, id) in vocab {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| VocabError::IdGap {
                token: token.clone(),
                id: id as usize,
                len,
            })?;
        *slot = Some(token);
    }
    let tokens = tokens
        .into_iter()
        .map(|t| t.expect("ids below the vocabulary's length are all used once"))
        .collect();
    Ok(Output { tokenizer, tokens })
}

/// mergekit's `build_union_tokenizer`: the base's tokenizer, then the other models' ordinary
/// tokens it lacks (model by model, each in id order), then every model's added tokens (the
/// first model's settings win), each appended with the next id.
///
/// mergekit walks models in a Python set's order and each vocabulary in a hash map's, so its
/// new ids vary from run to run; the recipe's order and id order are the fixed choice here.
fn union(base: &ModelVocab, models: &[&ModelVocab]) -> Result<Tokenizer, VocabError> {
    let mut ordinary: Vec<&str> = Vec::new();
    let mut seen_ordinary: HashSet<&str> = HashSet::new();
    let mut added: Vec<AddedToken> = Vec::new();
    let mut seen_added: HashSet<String> = HashSet::new();
    for model in std::iter::once(&base).chain(models.iter().filter(|m| !std::ptr::eq(**m, base))) {
        let model_added = model.added_tokens();
        let added_text: HashSet<&str> = model_added.iter().map(|t| t.content.as_str()).collect();
        for token in model.ordinary_tokens(&added_text) {
            if seen_ordinary.insert(token) {
                ordinary.push(token);
            }
        }
        for token in model_added {
            if seen_added.insert(token.content.clone()) {
                added.push(token);
            }
        }
    }
    let mut tokenizer = base.tokenizer.clone();
    for token in ordinary {
        if !seen_added.contains(token) && !base.vocab.contains_key(token) {
            add(&mut tokenizer, AddedToken::from(token, false), &base.file)?;
        }
    }
    for token in added {
        if tokenizer.token_to_id(&token.content).is_none() {
            add(&mut tokenizer, token, &base.file)?;
        }
    }
    Ok(tokenizer)
}

/// Appends `token` with the next id (transformers' `add_tokens`).
fn add(
    tokenizer: &mut Tokenizer,
    token: AddedToken,
    file: &std::path::Path,
) -> Result<(), VocabError> {
    tokenizer
        .add_tokens([token])
        .map(|_| ())
        .map_err(|e| VocabError::Tokenizer {
            file: file.to_path_buf(),
            message: crate::one_line(&e.to_string()),
        })
}
