//! The recipe's tokenizer settings, as mergekit 0.1.5 spells them (`mergekit/tokenizer/config.py`):
//! `tokenizer_source: union | base | PATH`, or a `tokenizer:` block with `source`, per-token
//! `tokens:` overrides and `pad_to_multiple_of`.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// Where the output vocabulary comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VocabSource {
    /// Every token of every model (the base's ids first, new tokens appended).
    Union,
    /// The base model's tokenizer (the first model's when the recipe has no base).
    Base,
    /// The tokenizer of the model at this path (as the recipe spells it).
    Model(String),
}

impl VocabSource {
    pub fn parse(text: &str) -> Self {
        match text {
            "union" => Self::Union,
            "base" => Self::Base,
            path => Self::Model(path.to_owned()),
        }
    }
}

/// `tokenizer:` in a recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// `union`, `base` or a model path; mergekit's default is `union`.
    #[serde(default = "union")]
    pub source: String,
    /// Per-token embedding sources, in the recipe's order (tokens missing from the output
    /// vocabulary are added to it in this order).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub tokens: IndexMap<String, TokenConfig>,
    /// The output's rows are rounded up to a multiple of this; the extra rows hold the mean row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_to_multiple_of: Option<usize>,
}

fn union() -> String {
    "union".to_owned()
}

/// One entry of `tokenizer.tokens`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EmbeddingSource>,
    /// Use the source's row for every model, even those that have the token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Where a token's row comes from: a model path (that model's row for the same token), or a
/// `{kind: ...}` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingSource {
    Model(String),
    Kind(EmbeddingKind),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EmbeddingKind {
    /// Another token's row of a model: by its id in that model, or by its text.
    ModelToken {
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_id: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// A row of zeros.
    Zero,
}

impl EmbeddingSource {
    /// The model path the source names, if any.
    pub fn model(&self) -> Option<&str> {
        match self {
            Self::Model(m) | Self::Kind(EmbeddingKind::ModelToken { model: m, .. }) => Some(m),
            Self::Kind(EmbeddingKind::Zero) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mergekits_token_sources() {
        let text = "source: base\npad_to_multiple_of: 8\ntokens:\n  a:\n    source: m\n  b:\n    source:\n      kind: zero\n  c:\n    source:\n      kind: model_token\n      model: m\n      token: x\n    force: true\n";
        let config: TokenizerConfig = serde_saphyr::from_str(text).unwrap();
        assert_eq!(config.source, "base");
        assert_eq!(config.pad_to_multiple_of, Some(8));
        let keys: Vec<&str> = config.tokens.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(
            config.tokens["a"].source,
            Some(EmbeddingSource::Model("m".into()))
        );
        assert_eq!(
            config.tokens["b"].source,
            Some(EmbeddingSource::Kind(EmbeddingKind::Zero))
        );
        assert!(config.tokens["c"].force);
        assert_eq!(
            config.tokens["c"].source,
            Some(EmbeddingSource::Kind(EmbeddingKind::ModelToken {
                model: "m".into(),
                token_id: None,
                token: Some("x".into()),
            }))
        );
        let default: TokenizerConfig = serde_saphyr::from_str("tokens: {}").unwrap();
        assert_eq!(default.source, "union");
    }
}
