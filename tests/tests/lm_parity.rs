//! The in-process language models against Hugging Face transformers: tiny random checkpoints
//! that transformers saved (`tests/fixtures/lm-parity/<arch>/`, made by `make_fixtures.py`
//! there), each with transformers' logits at every position of a fixed text. The runner reads
//! each folder as the workbench does (checkpoint → f32 tensors → model) and must give the same
//! logits, read at once and through the key/value cache a few tokens at a time.

use std::path::{Path, PathBuf};

use mergescope_core::Checkpoint;
use mergescope_core::eval::ModelTensors;
use mergescope_core::eval::lm::CausalLm;

/// transformers' f32 logits against ours: the acceptance bound of issue 18.
const TOLERANCE: f32 = 1e-4;

/// Every fixture folder; a missing one fails rather than shrinking the test.
const ARCHITECTURES: [&str; 8] = [
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "gemma2",
    "phi3",
    "gpt2",
    "phi3-longrope",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lm-parity")
}

struct Reference {
    architecture: String,
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
    /// LongRoPE only: the logits of the text's first `original_max_position_embeddings`
    /// tokens alone, which take the short factors.
    short_logits: Option<Vec<Vec<f32>>>,
}

fn reference(folder: &Path) -> Reference {
    let text = std::fs::read_to_string(folder.join("logits.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tokens = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let rows = |value: &serde_json::Value| -> Vec<Vec<f32>> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    Reference {
        architecture: json["architecture"].as_str().unwrap().to_owned(),
        tokens,
        logits: rows(&json["logits"]),
        short_logits: json.get("short_logits").map(rows),
    }
}

fn tensors(folder: &Path) -> ModelTensors {
    ModelTensors::all_floats(&Checkpoint::open(folder).unwrap())
}

fn load(folder: &Path, tensors: &ModelTensors) -> CausalLm {
    let config_path = folder.join("config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    CausalLm::from_tensors(
        &config,
        &config_path,
        tensors,
        &folder.display().to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The largest |a − b| over all positions, and the position where it is.
fn max_diff(ours: &[Vec<f32>], theirs: &[Vec<f32>]) -> (f32, usize) {
    assert_eq!(ours.len(), theirs.len(), "positions");
    let mut worst = (0.0f32, 0);
    for (p, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a.len(), b.len(), "vocabulary at position {p}");
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            // A NaN is never within tolerance.
            if d.is_nan() || d > worst.0 {
                worst = (if d.is_nan() { f32::INFINITY } else { d }, p);
            }
        }
    }
    worst
}

/// The largest |logit|.
fn scale(logits: &[Vec<f32>]) -> f32 {
    logits.iter().flatten().fold(0.0, |m, x| m.max(x.abs()))
}

/// The logits of `tokens` read through one cache in pieces of the given lengths (the last
/// piece takes what is left).
fn through_cache(model: &CausalLm, tokens: &[u32], pieces: &[usize]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut rows = Vec::new();
    let mut at = 0;
    let mut pieces = pieces.iter().copied();
    while at < tokens.len() {
        let n = pieces
            .next()
            .unwrap_or(tokens.len() - at)
            .min(tokens.len() - at);
        let logits = model.extend(&mut cache, &tokens[at..at + n]).unwrap();
        rows.extend(logits.to_vec2::<f32>().unwrap());
        at += n;
        assert_eq!(cache.len(), at);
    }
    rows
}

#[test]
fn the_fixtures_were_made_by_transformers_and_name_their_versions() {
    let text = std::fs::read_to_string(fixtures().join("versions.json")).unwrap();
    let versions: serde_json::Value = serde_json::from_str(&text).unwrap();
    for package in ["torch", "transformers"] {
        assert!(versions[package].is_string(), "{package} in {text}");
    }
    eprintln!("reference logits from {versions}");
}

#[test]
fn every_positions_logits_equal_transformers() {
    for arch in ARCHITECTURES {
        let folder = fixtures().join(arch);
        let reference = reference(&folder);
        let model = load(&folder, &tensors(&folder));
        let ours = model
            .logits(&reference.tokens)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (diff, at) = max_diff(&ours, &reference.logits);
        eprintln!("{arch} ({}): max |Δ| {diff:.2e}", reference.architecture);
        assert!(
            diff <= TOLERANCE,
            "{arch}: logits differ from transformers' by {diff} at position {at}"
        );
        if let Some(short) = &reference.short_logits {
            let tokens = &reference.tokens[..short.len()];
            let ours = model.logits(tokens).unwrap().to_vec2::<f32>().unwrap();
            let (diff, at) = max_diff(&ours, short);
            eprintln!("{arch}, first {} tokens: max |Δ| {diff:.2e}", tokens.len());
            assert!(diff <= TOLERANCE, "{arch}, short text: {diff} at {at}");
            // The long factors must have made a difference, or the test shows nothing.
            let (apart, _) = max_diff(&reference.logits[..short.len()], short);
            assert!(
                apart > 1e-2,
                "{arch}: long and short rotations agree ({apart})"
            );
        }
    }
}

#[test]
fn reading_through_the_cache_gives_the_same_logits() {
    for arch in ARCHITECTURES {
        let folder = fixtures().join(arch);
        let reference = reference(&folder);
        let model = load(&folder, &tensors(&folder));
        // LongRoPE switches to its long factors once the text passes the original length, as
        // transformers does, so positions cached before then keep the short rotation: a text
        // read in pieces equals one read at once only within that length.
        let (tokens, expected) = match &reference.short_logits {
            Some(short) => (&reference.tokens[..short.len()], short),
            None => (&reference.tokens[..], &reference.logits),
        };
        let at_once = model.logits(tokens).unwrap().to_vec2::<f32>().unwrap();
        // Chunks as a prompt and generated tokens come, then one token a step (past every
        // sliding window of the fixtures).
        for pieces in [&[3, 1, 1, 4][..], &[1; 20][..], &[7, 13][..]] {
            let cached = through_cache(&model, tokens, pieces);
            // The same sums in another order (a 1-row product is not blocked as a 20-row
            // one): f32 rounding, which grows with the logits' size (up to 6 here).
            let (own, at) = max_diff(&cached, &at_once);
            let bound = 1e-5 * scale(&at_once).max(1.0);
            assert!(
                own <= bound,
                "{arch} {pieces:?}: {own} from reading at once (bound {bound}), position {at}"
            );
            let (theirs, at) = max_diff(&cached, expected);
            assert!(
                theirs <= TOLERANCE,
                "{arch} {pieces:?}: {theirs} from transformers, position {at}"
            );
        }
    }
}

#[test]
fn gpt2_weights_load_with_or_without_the_transformer_prefix() {
    let folder = fixtures().join("gpt2");
    let reference = reference(&folder);
    let mut bare = tensors(&folder);
    assert!(bare.values.keys().all(|k| k.starts_with("transformer.")));
    bare.values = bare
        .values
        .into_iter()
        .map(|(k, v)| (k["transformer.".len()..].to_owned(), v))
        .collect();
    let model = load(&folder, &bare);
    let ours = model
        .logits(&reference.tokens)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let (diff, at) = max_diff(&ours, &reference.logits);
    assert!(diff <= TOLERANCE, "{diff} at position {at}");
}

#[test]
fn a_missing_tensor_is_named_and_a_long_text_refused() {
    for arch in ["qwen2", "gpt2"] {
        let folder = fixtures().join(arch);
        let mut broken = tensors(&folder);
        let name = broken
            .values
            .keys()
            .find(|k| k.contains("1.") && k.ends_with("bias"))
            .unwrap()
            .clone();
        broken.values.remove(&name);
        let config_path = folder.join("config.json");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        let error = CausalLm::from_tensors(&config, &config_path, &broken, arch)
            .unwrap_err()
            .to_string();
        assert!(error.contains(&name), "{arch}: {error}");
        // The fixtures' context is 64 positions.
        let model = load(&folder, &tensors(&folder));
        assert!(model.logits(&[1; 65]).is_err());
        assert_eq!(
            model
                .logits(&[1; 64])
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .len(),
            64
        );
    }
}
