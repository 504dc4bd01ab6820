//! The small files a Hugging Face folder carries next to its weights.

use std::path::Path;

use crate::dtype::FloatType;

/// Config files copied from the base model (or the first model).
pub const CONFIG_FILES: &[&str] = &["config.json", "generation_config.json"];

/// Tokenizer files copied from the tokenizer source, whichever of them exist.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// `config.json` with its dtype entry set to the merge's output dtype, keeping key order.
/// Returns the original bytes when the file is not a JSON object.
pub fn config_with_dtype(original: &[u8], out: Option<FloatType>) -> Vec<u8> {
    let Some(out) = out else {
        return original.to_vec();
    };
    let Ok(serde_json::Value::Object(mut map)) =
        serde_json::from_slice::<serde_json::Value>(original)
    else {
        return original.to_vec();
    };
    let name = serde_json::Value::String(out.recipe_name().to_owned());
    let mut touched = false;
    for key in ["torch_dtype", "dtype"] {
        if let Some(v) = map.get_mut(key) {
            *v = name.clone();
            touched = true;
        }
    }
    if !touched {
        map.insert("torch_dtype".to_owned(), name);
    }
    let mut bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(map))
        .unwrap_or_else(|_| original.to_vec());
    bytes.push(b'\n');
    bytes
}

/// The sidecar files present in `folder`, among `names`.
pub fn present<'a>(folder: &Path, names: &'a [&'a str]) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|n| folder.join(n).is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_dtype_and_keeps_key_order() {
        let original = br#"{"architectures": ["LlamaForCausalLM"], "torch_dtype": "float32", "vocab_size": 256}"#;
        let patched = config_with_dtype(original, Some(FloatType::BF16));
        let text = String::from_utf8(patched).unwrap();
        assert!(text.contains("\"torch_dtype\": \"bfloat16\""), "{text}");
        assert!(text.find("architectures").unwrap() < text.find("vocab_size").unwrap());
        assert_eq!(
            config_with_dtype(b"not json", Some(FloatType::F32)),
            b"not json".to_vec()
        );
    }
}
