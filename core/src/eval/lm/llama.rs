//! The Llama forward the demo family's trainer builds: the shared [`Decoder`] with the options
//! a Llama `config.json` gives (read as evaluation reads it, [`super::configs`]), in its
//! differentiable form, since a model built here may be trained and candle's fused rms-norm,
//! rope and softmax kernels carry no gradient. Evaluation loads models from `config.json`
//! through [`super::CausalLm::load`], which runs the fused kernels.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::decoder::Decoder;

/// A Llama-family causal language model, in memory.
#[derive(Debug)]
pub struct LlamaLm(Decoder);

impl LlamaLm {
    /// The model a Llama `config` (a `config.json`'s contents) describes, whose weights `vb`
    /// holds under Hugging Face's names (`model.layers.N…`).
    pub fn load(vb: &VarBuilder<'_>, config: &serde_json::Value) -> candle_core::Result<Self> {
        let mut options = super::configs::decoder_options("LlamaForCausalLM", config)
            .expect("a Llama is one of the decoders")
            .map_err(|e| candle_core::Error::Msg(format!("a Llama config.json: {e}")))?;
        options.differentiable = true;
        Decoder::load(vb, &options).map(Self)
    }
    /// The logits at every position of `tokens` (one window, at most the model's
    /// `max_position_embeddings` long): (tokens × vocab), f32.
    pub fn logits(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        self.0.logits(tokens)
    }

    /// The logits of a batch of windows, `ids` (windows × tokens, u32): (windows × tokens ×
    /// vocab), f32; each window's are [`Self::logits`]'s. The demo family trains this way.
    pub fn logits_batch(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward_batch(ids)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device};
    use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig};

    use super::*;

    /// A tiny Llama with grouped-query attention, random weights from a fixed seed.
    pub(in crate::eval::lm) fn tiny(tie: bool) -> (Config, HashMap<String, Tensor>) {
        let config: LlamaConfig = serde_json::from_str(&format!(
            r#"{{"hidden_size": 32, "intermediate_size": 48, "vocab_size": 50,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
                "tie_word_embeddings": {tie}}}"#
        ))
        .unwrap();
        let config = config.into_config(false);
        let device = Device::Cpu;
        let mut seed = 7u64;
        let mut random = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.4
                })
                .collect();
            Tensor::from_vec(values, shape, &device).unwrap()
        };
        let mut weights = HashMap::new();
        weights.insert("model.embed_tokens.weight".to_owned(), random(&[50, 32]));
        weights.insert("model.norm.weight".to_owned(), random(&[32]));
        if !tie {
            weights.insert("lm_head.weight".to_owned(), random(&[50, 32]));
        }
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            for (name, shape) in [
                ("self_attn.q_proj", [32, 32]),
                ("self_attn.k_proj", [16, 32]),
                ("self_attn.v_proj", [16, 32]),
                ("self_attn.o_proj", [32, 32]),
                ("mlp.gate_proj", [48, 32]),
                ("mlp.up_proj", [48, 32]),
                ("mlp.down_proj", [32, 48]),
            ] {
                weights.insert(format!("{p}.{name}.weight"), random(&shape));
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                weights.insert(format!("{p}.{norm}.weight"), random(&[32]));
            }
        }
        (config, weights)
    }

    /// The tensors as a merge preview holds them: flat f32 values by name.
    pub(in crate::eval::lm) fn flat(
        weights: &HashMap<String, Tensor>,
    ) -> crate::eval::ModelTensors {
        crate::eval::ModelTensors {
            values: weights
                .iter()
                .map(|(n, t)| {
                    (
                        n.clone(),
                        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    )
                })
                .collect(),
        }
    }

    use crate::test_support::max_difference as max_diff;

    #[test]
    fn every_positions_logits_are_candle_transformers_last_ones() {
        for tie in [false, true] {
            let (config, weights) = tiny(tie);
            let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
            let ours = LlamaLm::load(&vb, &config_json("LlamaForCausalLM", tie)).unwrap();
            let fused = super::super::CausalLm::load(
                &config_json("LlamaForCausalLM", tie),
                std::path::Path::new("config.json"),
                &vb,
                "tiny",
            )
            .unwrap();
            let theirs = Llama::load(vb, &config).unwrap();
            let tokens: Vec<u32> = vec![3, 17, 42, 8, 8, 0, 49, 21, 5];
            let all = ours.logits(&tokens).unwrap();
            assert_eq!(all.dims(), [tokens.len(), 50]);
            // The differentiable ops and the fused kernels compute the same thing.
            let diff = max_diff(&all, &fused.logits(&tokens).unwrap());
            assert!(diff < 1e-5, "tie {tie}: {diff}");
            for p in 0..tokens.len() {
                // Theirs gives the last position of the prefix it is fed.
                let mut cache = Cache::new(false, DType::F32, &config, &Device::Cpu).unwrap();
                let prefix = Tensor::new(&tokens[..=p], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let last = theirs
                    .forward(&prefix, 0, &mut cache)
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                let diff = max_diff(&all.get(p).unwrap(), &last);
                assert!(diff < 1e-5, "tie {tie}, position {p}: {diff}");
            }
        }
    }

    #[test]
    fn a_merge_in_memory_loads_as_its_tensors_do_and_windows_score_every_token_once() {
        let (_, weights) = tiny(false);
        let config = config_json("LlamaForCausalLM", false);
        let flat = flat(&weights);
        let from_map = LlamaLm::load(
            &VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
            &config,
        )
        .unwrap();
        let in_memory =
            LlamaLm::load(&super::super::var_builder(&flat, &Device::Cpu), &config).unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 50).collect();
        let whole = from_map.logits(&tokens).unwrap();
        let same = in_memory.logits(&tokens).unwrap();
        assert_eq!(max_diff(&whole, &same), 0.0);
        // One window over everything is the plain mean; smaller ones score each token once.
        let mean = super::super::mean_nll(&whole, &tokens).unwrap();
        let (total, count) =
            super::super::windowed_nll(|w| in_memory.logits(w), &tokens, 64, 64).unwrap();
        assert_eq!(count, 39);
        assert!(
            (total / 39.0 - mean).abs() < 1e-9,
            "{} vs {mean}",
            total / 39.0
        );
        for (window, stride, scored) in [(8, 4, 39), (16, 5, 39), (2, 1, 39), (8, 8, 35)] {
            // Windows that do not overlap leave each one's first token (but the text's) out.
            let (total, count) =
                super::super::windowed_nll(|w| in_memory.logits(w), &tokens, window, stride)
                    .unwrap();
            assert_eq!(count, scored, "window {window}, stride {stride}");
            assert!(total.is_finite() && total > 0.0);
        }
        assert!(super::super::windowed_nll(|w| in_memory.logits(w), &tokens, 8, 9).is_err());
        // A tensor of the wrong size is refused by name.
        let mut broken = flat;
        broken.values.get_mut("model.norm.weight").unwrap().pop();
        let error =
            LlamaLm::load(&super::super::var_builder(&broken, &Device::Cpu), &config).unwrap_err();
        assert!(error.to_string().contains("model.norm.weight"), "{error}");
    }

    /// `tiny`'s configuration as its `config.json` says it.
    pub(in crate::eval::lm) fn config_json(architecture: &str, tie: bool) -> serde_json::Value {
        serde_json::json!({"architectures": [architecture], "hidden_size": 32,
            "intermediate_size": 48, "vocab_size": 50, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64,
            "tie_word_embeddings": tie})
    }

    #[test]
    fn a_config_json_picks_the_runner_or_says_which_are_supported() {
        use super::super::{CausalLm, LmError};
        let (_, weights) = tiny(false);
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let config = |architecture: &str| config_json(architecture, false);
        let path = std::path::Path::new("m/config.json");
        let model = CausalLm::load(&config("MistralForCausalLM"), path, &vb, "m").unwrap();
        assert_eq!(model.logits(&[1, 2, 3]).unwrap().dims(), [3, 50]);
        let refused = CausalLm::load(&config("BertForMaskedLM"), path, &vb, "m").unwrap_err();
        assert!(matches!(refused, LmError::Unsupported { .. }));
        let text = refused.to_string();
        assert!(
            text.contains("BertForMaskedLM")
                && text.contains("LlamaForCausalLM")
                && text.contains("GPT2LMHeadModel"),
            "{text}"
        );
        assert!(!super::super::is_supported(&config("BertForMaskedLM")));
        assert!(super::super::is_supported(&config("Gemma2ForCausalLM")));
        // A rotary scaling that is not run is a configuration error, not a silent default.
        let mut yarn = config("LlamaForCausalLM");
        yarn["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let text = CausalLm::load(&yarn, path, &vb, "m")
            .unwrap_err()
            .to_string();
        assert!(text.contains("yarn"), "{text}");
        let mut wrong = config("LlamaForCausalLM");
        wrong["hidden_size"] = serde_json::json!("wide");
        let error = CausalLm::load(&wrong, path, &vb, "m").unwrap_err();
        assert!(matches!(error, LmError::BadConfig { .. }));
        let text = error.to_string();
        assert!(
            text.contains("`hidden_size` is \"wide\"") && text.contains("LlamaForCausalLM"),
            "{text}"
        );
        wrong = config("LlamaForCausalLM");
        wrong["num_hidden_layers"] = serde_json::json!(3);
        let missing = CausalLm::load(&wrong, path, &vb, "m")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("model.layers.2"), "{missing}");
    }

    #[test]
    fn a_uniform_head_has_the_vocabulary_as_its_perplexity() {
        let (_, mut weights) = tiny(false);
        let config = config_json("LlamaForCausalLM", false);
        weights.insert(
            "lm_head.weight".to_owned(),
            Tensor::zeros((50, 32), DType::F32, &Device::Cpu).unwrap(),
        );
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let model = LlamaLm::load(&vb, &config).unwrap();
        let tokens = [1u32, 2, 3, 4, 5, 6, 7];
        let nll = super::super::mean_nll(&model.logits(&tokens).unwrap(), &tokens).unwrap();
        assert!((nll.exp() - 50.0).abs() < 1e-4, "{}", nll.exp());
        assert!(model.logits(&[]).is_err());
        assert!(model.logits(&[0; 65]).is_err());
    }

    #[test]
    fn reading_in_chunks_through_the_cache_is_reading_at_once_windows_included() {
        use super::super::CausalLm;
        let (_, weights) = tiny(false);
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let path = std::path::Path::new("config.json");
        let full = CausalLm::load(&config_json("LlamaForCausalLM", false), path, &vb, "m").unwrap();
        let mut mistral = config_json("MistralForCausalLM", false);
        mistral["sliding_window"] = serde_json::json!(3);
        let windowed = CausalLm::load(&mistral, path, &vb, "m").unwrap();
        let tokens: Vec<u32> = vec![3, 17, 42, 8, 8, 0, 49, 21, 5];
        for model in [&full, &windowed] {
            let whole = model.logits(&tokens).unwrap();
            let mut cache = model.new_cache();
            let mut parts = Vec::new();
            for range in [0..3, 3..4, 4..5, 5..9] {
                parts.push(model.extend(&mut cache, &tokens[range]).unwrap());
            }
            assert_eq!(cache.len(), 9);
            let chunked = Tensor::cat(&parts, 0).unwrap();
            let diff = max_diff(&whole, &chunked);
            assert!(diff < 1e-5, "{diff}");
            // Past the context, or outside the vocabulary: refused, the cache untouched.
            assert!(model.extend(&mut cache, &[0; 56]).is_err());
            assert!(model.extend(&mut cache, &[50]).is_err());
            assert_eq!(cache.len(), 9);
        }
        // A window of 3 changes nothing before the fourth position and everything after.
        let (a, b) = (
            full.logits(&tokens).unwrap(),
            windowed.logits(&tokens).unwrap(),
        );
        assert!(max_diff(&a.narrow(0, 0, 3).unwrap(), &b.narrow(0, 0, 3).unwrap()) < 1e-6);
        for p in 3..tokens.len() {
            assert!(
                max_diff(&a.get(p).unwrap(), &b.get(p).unwrap()) > 1e-3,
                "position {p}"
            );
        }
    }

    #[test]
    fn every_weight_of_a_model_built_here_gets_a_gradient() {
        let (_, weights) = tiny(false);
        let config = config_json("LlamaForCausalLM", false);
        let varmap = candle_nn::VarMap::new();
        let model = LlamaLm::load(
            &VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            &config,
        )
        .unwrap();
        {
            let data = varmap.data().lock().unwrap();
            for (name, var) in data.iter() {
                var.set(&weights[name]).unwrap();
            }
        }
        let tokens = [1u32, 2, 3, 4, 5, 6, 7];
        let logits = model.logits(&tokens).unwrap();
        let loss = candle_nn::loss::cross_entropy(
            &logits.narrow(0, 0, 6).unwrap(),
            &Tensor::new(&tokens[1..], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            let grad = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let size = grad
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(size > 0.0, "{name}: a zero gradient");
        }
    }
}
