//! The inputs' tokenizers, and the recipe's `tokenizer.tokens` entries resolved against them
//! (mergekit 0.1.5's `TokenEmbeddingConfig`: a model's row for the token, another row of a
//! model, or zeros; `force` to use it for every model).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::VocabError;
use super::build::ModelVocab;
use super::config::{EmbeddingKind, EmbeddingSource, TokenizerConfig};
use crate::family::{Member, MemberId};
use crate::merge::plan::resolve_model_path;

/// Where a token's default row comes from once resolved against the family.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Source {
    /// The model's own row for the same token.
    Model(MemberId),
    /// A given row of the model's original tensor.
    Row(MemberId, usize),
    Zero,
    /// A `tokens:` entry without a source: only valid while every model has the token.
    Unset,
}

/// A `tokens:` entry resolved against the family.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TokenRule {
    pub source: Source,
    pub force: bool,
}

/// Every input with its tokenizer, and how to find one by the path a recipe names it with.
pub(super) struct Inputs<'a> {
    pub loaded: Vec<(MemberId, &'a Member, ModelVocab)>,
    /// Each input's folder, canonical, to compare with a recipe's spelling of it.
    keys: Vec<Option<PathBuf>>,
    file: &'a Path,
    cwd: &'a Path,
}

impl<'a> Inputs<'a> {
    /// Pairs every member with its tokenizer (`vocabs`, read already where present); a member
    /// without a readable one is an error that names it.
    pub fn load(
        members: &[(MemberId, &'a Member)],
        vocabs: Vec<Option<ModelVocab>>,
        file: &'a Path,
        cwd: &'a Path,
    ) -> Result<Self, VocabError> {
        let mut loaded = Vec::with_capacity(members.len());
        for (&(id, member), vocab) in members.iter().zip(vocabs) {
            let vocab = match vocab {
                Some(v) => v,
                // Read again so that an unreadable file reports why.
                None => ModelVocab::load(member)?.ok_or_else(|| VocabError::NoTokenizer {
                    member: member.label.clone(),
                    folder: member
                        .checkpoint
                        .folder()
                        .map(|f| format!(" in {}", f.display()))
                        .unwrap_or_default(),
                })?,
            };
            loaded.push((id, member, vocab));
        }
        let keys = loaded
            .iter()
            .map(|(_, m, _)| m.checkpoint.folder().and_then(|f| f.canonicalize().ok()))
            .collect();
        Ok(Self {
            loaded,
            keys,
            file,
            cwd,
        })
    }

    /// The position of the input the recipe calls `model` (at `key`), if it is one.
    pub fn position(&self, model: &str, key: &str) -> Option<usize> {
        let wanted = resolve_model_path(model, key, self.cwd, self.file)
            .ok()?
            .canonicalize()
            .ok()?;
        self.keys.iter().position(|k| k.as_ref() == Some(&wanted))
    }
}

/// `block.tokens` by output id (`index`: output token → id), checked against the inputs.
pub(super) fn resolve(
    block: &TokenizerConfig,
    inputs: &Inputs<'_>,
    index: &HashMap<&str, usize>,
    file: &Path,
) -> Result<HashMap<usize, TokenRule>, VocabError> {
    let mut rules = HashMap::new();
    for (token, cfg) in &block.tokens {
        let bad = |message: String| VocabError::Token {
            file: file.to_path_buf(),
            token: token.clone(),
            message,
        };
        let model_of = |model: &str| {
            inputs.position(model, "tokenizer.tokens").ok_or_else(|| {
                bad(format!(
                    "model `{model}` is not one of the recipe's models; name one of them"
                ))
            })
        };
        let source = match &cfg.source {
            None => Source::Unset,
            Some(EmbeddingSource::Kind(EmbeddingKind::Zero)) => Source::Zero,
            Some(EmbeddingSource::Model(model)) => Source::Model(inputs.loaded[model_of(model)?].0),
            Some(EmbeddingSource::Kind(EmbeddingKind::ModelToken {
                model,
                token_id,
                token: text,
            })) => {
                let (id, _, vocab) = &inputs.loaded[model_of(model)?];
                let row = match (token_id, text) {
                    (Some(row), None) => *row,
                    (None, Some(text)) => *vocab.vocab.get(text).ok_or_else(|| {
                        bad(format!("token `{text}` is not in {}", vocab.file.display()))
                    })? as usize,
                    _ => {
                        return Err(bad(
                            "a model_token source takes exactly one of `token_id` and `token`"
                                .to_owned(),
                        ));
                    }
                };
                if row >= vocab.vocab_size {
                    return Err(bad(format!(
                        "token id {row} is past {model}'s {} rows",
                        vocab.vocab_size
                    )));
                }
                Source::Row(*id, row)
            }
        };
        // Every `tokens:` key was added to the output vocabulary when missing.
        rules.insert(
            index[token.as_str()],
            TokenRule {
                source,
                force: cfg.force,
            },
        );
    }
    Ok(rules)
}
