//! Merging models whose vocabularies differ, as mergekit 0.1.5 does when a recipe has
//! `tokenizer_source` or a `tokenizer:` block (ALGORITHMS.md §1.6).
//!
//! Planning builds the output vocabulary once ([`build`]) and records, for every input, which
//! of its rows holds each output token. While merging, each embedding or head tensor's rows are
//! permuted into that vocabulary in memory ([`permute`]; an embedding is a small part of a
//! model) and the recipe's method merges the permuted rows, so the CPU and GPU backends and the
//! workbench's in-memory preview all see the same inputs. The output's tokenizer files are
//! written to match the new vocabulary ([`files`]).

mod build;
pub mod config;
mod files;
mod permute;
mod rules;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use config::{EmbeddingKind, EmbeddingSource, TokenConfig, TokenizerConfig, VocabSource};
pub use files::config_with_vocab_size;
pub use permute::AlignedInputs;

use crate::dtype::FloatType;
use crate::family::{Family, MemberId};
use crate::layout::ModuleKind;
use crate::merge::plan::{TensorTask, resolve_model_path};
use crate::merge::recipe::Recipe;
use build::ModelVocab;
use rules::{Inputs, TokenRule};

/// Why vocabularies cannot be aligned as the recipe asks.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error(
        "{member} has no tokenizer.json{folder}, but the recipe's vocabularies must be aligned \
         (tokenizer_source / tokenizer:) to merge its embedding rows; add the tokenizer files of \
         the model it was trained from"
    )]
    NoTokenizer { member: String, folder: String },
    #[error("{file}: cannot read the tokenizer: {message}")]
    Tokenizer { file: PathBuf, message: String },
    #[error(
        "{file}: `{key}` names model `{model}`, which has no tokenizer.json (looked for {tried}); name one of the recipe's models, `base` or `union`"
    )]
    UnknownSource {
        file: PathBuf,
        key: String,
        model: String,
        tried: PathBuf,
    },
    #[error(
        "{file}: the tokenizer has {tokens} tokens but the model has rows for {rows} (config.json's vocab_size); mergekit strips the extra tokens from a BPE base tokenizer, mergescope does not: take the tokenizer from another model or trim it"
    )]
    RowlessBaseTokens {
        file: PathBuf,
        tokens: usize,
        rows: usize,
    },
    #[error(
        "the output vocabulary gives `{token}` id {id} but has only {len} tokens; the tokenizer's ids must be 0..{len} without gaps"
    )]
    IdGap {
        token: String,
        id: usize,
        len: usize,
    },
    #[error("{file}: `tokenizer.tokens.{token}`: {message}")]
    Token {
        file: PathBuf,
        token: String,
        message: String,
    },
    #[error(
        "tensor `{tensor}` has {rows} rows in {member} but its tokenizer ({file}) gives a token id {id}; the tokenizer does not belong to these weights"
    )]
    RowsShort {
        tensor: String,
        member: String,
        file: PathBuf,
        rows: usize,
        id: usize,
    },
}

/// The plan's vocabulary alignment: the output vocabulary and each input's rows in it.
#[derive(Debug)]
pub struct VocabAlignment {
    /// The output tokenizer, written with the merged model.
    tokenizer: tokenizers::Tokenizer,
    /// The folder whose tokenizer the output starts from (its other tokenizer files are
    /// rewritten from it).
    pub source_folder: PathBuf,
    /// Output tokens by id.
    tokens: Vec<String>,
    /// Rows of every aligned tensor: the vocabulary, padded to `pad_to_multiple_of`.
    pub rows: usize,
    /// For each member, the row of its tensor holding each output token (`None`: it lacks it).
    rows_of: Vec<(MemberId, Vec<Option<usize>>)>,
    /// The recipe's `base_model` among the members: its row wins for tokens several share.
    base: Option<MemberId>,
    /// `tokenizer.tokens`, by output id.
    rules: HashMap<usize, TokenRule>,
    /// The tensors whose rows are permuted.
    tensors: Vec<String>,
    /// The type rows are gathered in: the recipe's `dtype`, else each tensor's promoted type.
    compute: Option<FloatType>,
}

/// What the recipe asks for: the vocabulary source and the `tokenizer:` block, if any (the
/// recipe's check refuses both keys at once).
fn settings(recipe: &Recipe) -> Option<(VocabSource, Option<&TokenizerConfig>)> {
    match (&recipe.tokenizer, &recipe.tokenizer_source) {
        (Some(block), _) => Some((VocabSource::parse(&block.source), Some(block))),
        (None, Some(source)) => Some((VocabSource::parse(source), None)),
        (None, None) => None,
    }
}

/// Whether `name` is a tensor with one row per token (mergekit's `vocabulary_axis: 0`).
pub fn is_vocabulary(name: &str) -> bool {
    matches!(
        ModuleKind::classify(name),
        ModuleKind::Embedding | ModuleKind::Head
    )
}

/// Whether the recipe asks for vocabulary alignment, so that vocabulary tensors whose row
/// counts differ are left for [`VocabAlignment::plan`] instead of being an error.
pub fn requested(recipe: &Recipe) -> bool {
    recipe.tokenizer.is_some() || recipe.tokenizer_source.is_some()
}

impl VocabAlignment {
    /// Builds the alignment for a planned family and gives the vocabulary tasks their output
    /// rows. `None` when the recipe has no tokenizer settings, or when it names a tokenizer
    /// (`base` or a path, no `tokenizer:` block) and every input has the same vocabulary and
    /// row counts: then nothing moves and the tokenizer files are copied as they are (also
    /// when some cannot be read, as mergekit assumes a missing tokenizer is the base's).
    pub fn plan(
        recipe: &Recipe,
        file: &Path,
        cwd: &Path,
        family: &Family,
        tasks: &mut [TensorTask],
        warnings: &mut Vec<String>,
    ) -> Result<Option<Self>, VocabError> {
        let Some((source, block)) = settings(recipe) else {
            return Ok(None);
        };
        let members: Vec<(MemberId, &crate::family::Member)> = family.members().collect();
        let vocabs: Vec<Option<ModelVocab>> = members
            .iter()
            .map(|(_, m)| ModelVocab::load(m).unwrap_or(None))
            .collect();
        let rows_differ = tasks.iter().filter(|t| is_vocabulary(&t.name)).any(|t| {
            let rows = input_rows(family, t);
            rows.iter().any(|(_, r)| *r != rows[0].1)
        });
        let vocabs_differ = vocabs.iter().all(Option::is_some)
            && vocabs.windows(2).any(|w| match (&w[0], &w[1]) {
                (Some(a), Some(b)) => a.vocab != b.vocab,
                _ => false,
            });
        let strict = block.is_some() || source == VocabSource::Union;
        if !strict && !rows_differ && !vocabs_differ {
            return Ok(None);
        }

        let inputs = Inputs::load(&members, vocabs, file, cwd)?;
        let base_position = recipe
            .base_model
            .as_deref()
            .and_then(|b| inputs.position(b, "base_model"));
        // mergekit's tokenizer base: the base model, else the first model.
        let tokenizer_base = base_position.unwrap_or(0);

        let named = match &source {
            VocabSource::Model(model) => {
                let key = if block.is_some() {
                    "tokenizer.source"
                } else {
                    "tokenizer_source"
                };
                let path = resolve_model_path(model, key, cwd, file).ok();
                let tokenizer_file = path.as_ref().map(|p| p.join("tokenizer.json"));
                match tokenizer_file.filter(|f| f.is_file()) {
                    Some(f) => Some(ModelVocab::read(f)?),
                    None => {
                        return Err(VocabError::UnknownSource {
                            file: file.to_path_buf(),
                            key: key.to_owned(),
                            model: model.clone(),
                            tried: cwd.join(model).join("tokenizer.json"),
                        });
                    }
                }
            }
            VocabSource::Union | VocabSource::Base => None,
        };
        let extra: Vec<&str> = block
            .map(|b| b.tokens.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let all: Vec<&ModelVocab> = inputs.loaded.iter().map(|(_, _, v)| v).collect();
        let output = build::output(&source, all[tokenizer_base], &all, named.as_ref(), &extra)?;

        let source_folder = named
            .as_ref()
            .map(|n| n.file.clone())
            .unwrap_or_else(|| all[tokenizer_base].file.clone())
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let rows_of: Vec<(MemberId, Vec<Option<usize>>)> = inputs
            .loaded
            .iter()
            .map(|(id, _, v)| (*id, output.tokens.iter().map(|t| v.row_of(t)).collect()))
            .collect();
        let index: HashMap<&str, usize> = output
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();

        let rules = match block {
            Some(block) => rules::resolve(block, &inputs, &index, file)?,
            None => HashMap::new(),
        };

        let len = output.tokens.len();
        let rows = match block.and_then(|b| b.pad_to_multiple_of) {
            Some(m) if m > 0 && len % m != 0 => (len / m + 1) * m,
            _ => len,
        };
        let alignment = Self {
            tokenizer: output.tokenizer,
            source_folder,
            tokens: output.tokens,
            rows,
            rows_of,
            base: base_position.map(|p| inputs.loaded[p].0),
            rules,
            tensors: Vec::new(),
            compute: recipe.compute_type(file).ok().flatten(),
        };
        let mut alignment = alignment;
        for task in tasks.iter_mut().filter(|t| is_vocabulary(&t.name)) {
            let present = input_rows(family, task);
            // Every input's tokenizer must fit its tensor, and every rule must be satisfiable.
            for (id, rows) in &present {
                let (_, ids) = alignment
                    .rows_of
                    .iter()
                    .find(|(m, _)| m == id)
                    .expect("every member");
                if let Some(max) = ids.iter().flatten().max().filter(|&&m| m >= *rows) {
                    let (_, member, vocab) = inputs
                        .loaded
                        .iter()
                        .find(|(m, _, _)| m == id)
                        .expect("loaded");
                    return Err(VocabError::RowsShort {
                        tensor: task.name.clone(),
                        member: member.label.clone(),
                        file: vocab.file.clone(),
                        rows: *rows,
                        id: *max,
                    });
                }
            }
            let ids: Vec<MemberId> = present.iter().map(|(m, _)| *m).collect();
            alignment.fills(&ids).map_err(|message| VocabError::Token {
                file: file.to_path_buf(),
                token: message.0,
                message: format!("{} (tensor `{}`)", message.1, task.name),
            })?;
            task.shape[0] = alignment.rows;
            alignment.tensors.push(task.name.clone());
        }
        let stale = alignment.stale_files();
        if !stale.is_empty() {
            warnings.push(format!(
                "{} not written: they describe {}'s own vocabulary; the merged one is in tokenizer.json",
                stale.join(", "),
                alignment.source_folder.display()
            ));
        }
        if alignment.tensors.is_empty() {
            warnings.push(
                "the recipe aligns vocabularies but no embedding or head tensor was found; only the tokenizer is rewritten".to_owned(),
            );
        }
        let new = alignment
            .rows_of
            .iter()
            .map(|(_, ids)| ids.iter().filter(|r| r.is_none()).count())
            .max()
            .unwrap_or(0);
        if new > 0 {
            warnings.push(format!(
                "vocabularies aligned to {} tokens ({} rows); up to {new} token(s) are new to some model and take mergekit's default rows",
                alignment.tokens.len(),
                alignment.rows
            ));
        }
        Ok(Some(alignment))
    }

    /// Whether `tensor`'s rows are permuted.
    pub fn aligns(&self, tensor: &str) -> bool {
        self.tensors.iter().any(|t| t == tensor)
    }

    /// The output tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

/// The inputs of `task` and the rows each one's tensor has, base first.
fn input_rows(family: &Family, task: &TensorTask) -> Vec<(MemberId, usize)> {
    let rows = |c: &crate::checkpoint::Checkpoint, i: usize| c.tensors()[i].shape[0];
    family
        .base
        .iter()
        .zip(task.base)
        .map(|(b, i)| (MemberId::Base, rows(&b.checkpoint, i)))
        .chain(
            task.models
                .iter()
                .map(|&(m, i)| (MemberId::Model(m), rows(&family.models[m].checkpoint, i))),
        )
        .collect()
}
