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
    edit_object(original, |map| {
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
    })
}

/// The JSON object `original` with `edit` applied, pretty-printed with a trailing newline
/// (keeping key order); the original bytes when it is not a JSON object.
pub fn edit_object(
    original: &[u8],
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut map)) =
        serde_json::from_slice::<serde_json::Value>(original)
    else {
        return original.to_vec();
    };
    edit(&mut map);
    let mut bytes =
        serde_json::to_vec_pretty(&serde_json::Value::Object(map)).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

/// The keys Hugging Face configs hold the layer count under (Llama-likes, GPT-2, others).
const LAYER_COUNT_KEYS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers", "n_layers"];

/// `config.json` with its layer count set to `layers` (a `slices:` merge changes it, and
/// mergekit rewrites it likewise), keeping key order. Returns the original bytes when the file
/// is not a JSON object.
pub fn config_with_layers(original: &[u8], layers: usize) -> Vec<u8> {
    edit_object(original, |map| set_layers(map, layers))
}

fn set_layers(map: &mut serde_json::Map<String, serde_json::Value>, layers: usize) {
    let mut touched = false;
    for key in LAYER_COUNT_KEYS {
        if let Some(v) = map.get_mut(*key) {
            *v = layers.into();
            touched = true;
        }
    }
    if !touched {
        map.insert(LAYER_COUNT_KEYS[0].to_owned(), layers.into());
    }
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

    #[test]
    fn sets_the_layer_count() {
        let original = br#"{"num_hidden_layers": 8, "hidden_size": 16}"#;
        let text = String::from_utf8(config_with_layers(original, 15)).unwrap();
        assert!(text.contains("\"num_hidden_layers\": 15"), "{text}");
        assert!(text.find("num_hidden_layers").unwrap() < text.find("hidden_size").unwrap());
        let gpt2 = String::from_utf8(config_with_layers(br#"{"n_layer": 2}"#, 3)).unwrap();
        assert!(
            gpt2.contains("\"n_layer\": 3") && !gpt2.contains("num_hidden"),
            "{gpt2}"
        );
    }
}
