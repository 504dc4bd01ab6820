//! The output's tokenizer files, rewritten for the aligned vocabulary (what mergekit 0.1.5 gets
//! from transformers' `save_pretrained` on the merged tokenizer), and `config.json`'s
//! `vocab_size`.

use serde_json::{Map, Value};

use super::VocabAlignment;
use crate::export::{ExportError, sidecar};

/// Files describing the source vocabulary itself, which would contradict the merged one.
const STALE: &[&str] = &[
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
];

/// Copied unchanged from the source tokenizer's folder: they name tokens, not ids.
const COPIED: &[&str] = &[
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
];

impl VocabAlignment {
    /// `(file name, bytes)` of every tokenizer file the output gets.
    pub fn tokenizer_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, ExportError> {
        let folder = &self.source_folder;
        let read = |name: &str| {
            let path = folder.join(name);
            std::fs::read(&path).map_err(|source| ExportError::Io { path, source })
        };
        let mut files = Vec::new();
        let json = self
            .tokenizer
            .to_string(true)
            .expect("a tokenizer read from JSON serializes back");
        files.push(("tokenizer.json", json.into_bytes()));
        if folder.join("tokenizer_config.json").is_file() {
            let original = read("tokenizer_config.json")?;
            files.push((
                "tokenizer_config.json",
                self.config_with_added_tokens(&original),
            ));
        }
        if folder.join("added_tokens.json").is_file() {
            files.push(("added_tokens.json", self.added_tokens_json()));
        }
        for name in sidecar::present(folder, COPIED) {
            files.push((name, read(name)?));
        }
        Ok(files)
    }

    /// Files of the source tokenizer's folder that are not written, because they describe the
    /// source's own vocabulary (the merged one is in tokenizer.json).
    pub(super) fn stale_files(&self) -> Vec<&'static str> {
        sidecar::present(&self.source_folder, STALE)
    }

    /// The added tokens of the output, by id.
    fn added_sorted(&self) -> Vec<(u32, tokenizers::AddedToken)> {
        let mut added: Vec<_> = self
            .tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .collect();
        added.sort_by_key(|(id, _)| *id);
        added
    }

    /// `tokenizer_config.json` with its `added_tokens_decoder` (when it has one) listing the
    /// output's added tokens; everything else kept in order.
    fn config_with_added_tokens(&self, original: &[u8]) -> Vec<u8> {
        sidecar::edit_object(original, |map| {
            if let Some(decoder) = map.get_mut("added_tokens_decoder") {
                let entries: Map<String, Value> = self
                    .added_sorted()
                    .into_iter()
                    .map(|(id, t)| {
                        let entry = serde_json::json!({
                            "content": t.content,
                            "lstrip": t.lstrip,
                            "normalized": t.normalized,
                            "rstrip": t.rstrip,
                            "single_word": t.single_word,
                            "special": t.special,
                        });
                        (id.to_string(), entry)
                    })
                    .collect();
                *decoder = Value::Object(entries);
            }
        })
    }

    /// transformers' legacy `added_tokens.json`: the added tokens past the model's own vocabulary.
    fn added_tokens_json(&self) -> Vec<u8> {
        let model_size = self.tokenizer.get_vocab_size(false) as u32;
        let entries: Map<String, Value> = self
            .added_sorted()
            .into_iter()
            .filter(|(id, _)| *id >= model_size)
            .map(|(id, t)| (t.content, Value::from(id)))
            .collect();
        pretty(&Value::Object(entries))
    }
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

/// `config.json` with `vocab_size` set to the aligned row count (mergekit's
/// `_update_config_vocab`), keeping key order. The original bytes when it is not a JSON object.
pub fn config_with_vocab_size(original: &[u8], rows: usize) -> Vec<u8> {
    sidecar::edit_object(original, |map| {
        map.insert("vocab_size".to_owned(), Value::from(rows));
    })
}
