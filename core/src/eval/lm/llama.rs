//! The Llama-family forward (Llama 2/3, Mistral without sliding windows, and others with the
//! same block) over a window of tokens, returning every position's logits. It follows
//! candle-transformers' `llama` model step for step — the same configuration, weight names,
//! rotary embedding (rotate-half, Llama 3 frequency scaling) and f32 attention — so its
//! logits at a window's last position are candle-transformers' (tested).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use candle_transformers::models::llama::Config;

/// One decoder block.
#[derive(Debug)]
struct Block {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attention_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama-family causal language model, in memory.
#[derive(Debug)]
pub struct LlamaLm {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Rotary tables, (positions × head_dim / 2).
    cos: Tensor,
    sin: Tensor,
}

impl LlamaLm {
    /// The model whose weights `vb` holds under Hugging Face's names (`model.layers.N…`).
    pub fn load(vb: &VarBuilder<'_>, config: &Config) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        let kv_heads = config.num_key_value_heads;
        let head_dim = hidden / heads;
        let embed = candle_nn::embedding(config.vocab_size, hidden, vb.pp("model.embed_tokens"))?;
        let head = if config.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(hidden, config.vocab_size, vb.pp("lm_head"))?
        };
        let blocks = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("model.layers.{i}"));
                let attn = vb.pp("self_attn");
                let mlp = vb.pp("mlp");
                let eps = config.rms_norm_eps;
                let inter = config.intermediate_size;
                Ok(Block {
                    input_norm: candle_nn::rms_norm(hidden, eps, vb.pp("input_layernorm"))?,
                    q: candle_nn::linear_no_bias(hidden, heads * head_dim, attn.pp("q_proj"))?,
                    k: candle_nn::linear_no_bias(hidden, kv_heads * head_dim, attn.pp("k_proj"))?,
                    v: candle_nn::linear_no_bias(hidden, kv_heads * head_dim, attn.pp("v_proj"))?,
                    o: candle_nn::linear_no_bias(heads * head_dim, hidden, attn.pp("o_proj"))?,
                    post_attention_norm: candle_nn::rms_norm(
                        hidden,
                        eps,
                        vb.pp("post_attention_layernorm"),
                    )?,
                    gate: candle_nn::linear_no_bias(hidden, inter, mlp.pp("gate_proj"))?,
                    up: candle_nn::linear_no_bias(hidden, inter, mlp.pp("up_proj"))?,
                    down: candle_nn::linear_no_bias(inter, hidden, mlp.pp("down_proj"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(hidden, config.rms_norm_eps, vb.pp("model.norm"))?;
        let (cos, sin) = rotary_tables(config, vb.device())?;
        Ok(Self {
            embed,
            blocks,
            norm,
            head,
            heads,
            kv_heads,
            head_dim,
            cos,
            sin,
        })
    }

    /// The logits at every position of `tokens` (one window, at most the model's
    /// `max_position_embeddings` long): (tokens × vocab), f32.
    pub fn logits(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let n = tokens.len();
        let device = self.cos.device();
        if n == 0 || n > self.cos.dim(0)? {
            candle_core::bail!(
                "a window of {n} tokens; the model takes 1 to {}",
                self.cos.dim(0)?
            );
        }
        let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let mut x = self.embed.forward(&ids)?;
        let mask = causal_mask(n, device)?;
        let (cos, sin) = (self.cos.narrow(0, 0, n)?, self.sin.narrow(0, 0, n)?);
        for block in &self.blocks {
            let attended =
                self.attention(block, &block.input_norm.forward(&x)?, &mask, &cos, &sin)?;
            x = (x + attended)?;
            let h = block.post_attention_norm.forward(&x)?;
            let mlp = block.down.forward(
                &(candle_nn::ops::silu(&block.gate.forward(&h)?)? * block.up.forward(&h)?)?,
            )?;
            x = (x + mlp)?;
        }
        let x = self.norm.forward(&x)?;
        self.head.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, n, hidden) = x.dims3()?;
        let split = |t: Tensor, heads: usize| {
            t.reshape((b, n, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(block.q.forward(x)?, self.heads)?;
        let k = split(block.k.forward(x)?, self.kv_heads)?;
        let v = split(block.v.forward(x)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let groups = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, groups)?.to_dtype(DType::F32)?;
        let v = candle_transformers::utils::repeat_kv(v, groups)?.to_dtype(DType::F32)?;
        let q = q.to_dtype(DType::F32)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights.matmul(&v.contiguous()?)?.to_dtype(x.dtype())?;
        let y = y.transpose(1, 2)?.reshape((b, n, hidden))?;
        block.o.forward(&y)
    }
}

/// 0 where position i may see position j (j ≤ i), −∞ elsewhere: (n × n).
fn causal_mask(n: usize, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(values, (n, n), device)
}

/// cos and sin of position × inverse frequency, as candle-transformers' `llama::Cache`
/// computes them (Llama 3's frequency scaling included).
fn rotary_tables(config: &Config, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    use candle_transformers::models::llama::{Llama3RopeConfig, Llama3RopeType};
    let head_dim = config.hidden_size / config.num_attention_heads;
    let base: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / config.rope_theta.powf(i as f32 / head_dim as f32))
        .collect();
    let inv_freq: Vec<f32> = match &config.rope_scaling {
        None
        | Some(Llama3RopeConfig {
            rope_type: Llama3RopeType::Default,
            ..
        }) => base,
        Some(s) => {
            let low = s.original_max_position_embeddings as f32 / s.low_freq_factor;
            let high = s.original_max_position_embeddings as f32 / s.high_freq_factor;
            base.into_iter()
                .map(|freq| {
                    let wavelen = 2. * std::f32::consts::PI / freq;
                    if wavelen < high {
                        freq
                    } else if wavelen > low {
                        freq / s.factor
                    } else {
                        let smooth = (s.original_max_position_embeddings as f32 / wavelen
                            - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1. - smooth) * freq / s.factor + smooth * freq
                    }
                })
                .collect()
        }
    };
    let k = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, k), device)?;
    let positions = Tensor::arange(0, config.max_position_embeddings as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.max_position_embeddings, 1))?;
    let angles = positions.matmul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};

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

    /// The largest absolute difference between two tensors of one shape.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn every_positions_logits_are_candle_transformers_last_ones() {
        for tie in [false, true] {
            let (config, weights) = tiny(tie);
            let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
            let ours = LlamaLm::load(&vb, &config).unwrap();
            let theirs = Llama::load(vb, &config).unwrap();
            let tokens: Vec<u32> = vec![3, 17, 42, 8, 8, 0, 49, 21, 5];
            let all = ours.logits(&tokens).unwrap();
            assert_eq!(all.dims(), [tokens.len(), 50]);
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
        let (config, weights) = tiny(false);
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

    #[test]
    fn a_config_json_picks_the_runner_or_says_which_are_supported() {
        use super::super::{CausalLm, LmError};
        let (_, weights) = tiny(false);
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let config = |architecture: &str| {
            serde_json::json!({"architectures": [architecture], "hidden_size": 32,
                "intermediate_size": 48, "vocab_size": 50, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "max_position_embeddings": 64,
                "tie_word_embeddings": false})
        };
        let path = std::path::Path::new("m/config.json");
        let model = CausalLm::load(&config("MistralForCausalLM"), path, &vb, "m").unwrap();
        assert_eq!(model.logits(&[1, 2, 3]).unwrap().dims(), [3, 50]);
        let refused = CausalLm::load(&config("GPT2LMHeadModel"), path, &vb, "m").unwrap_err();
        assert!(matches!(refused, LmError::Unsupported { .. }));
        let text = refused.to_string();
        assert!(
            text.contains("GPT2LMHeadModel") && text.contains("LlamaForCausalLM"),
            "{text}"
        );
        let mut wrong = config("LlamaForCausalLM");
        wrong["hidden_size"] = serde_json::json!("wide");
        assert!(matches!(
            CausalLm::load(&wrong, path, &vb, "m").unwrap_err(),
            LmError::BadConfig { .. }
        ));
        wrong = config("LlamaForCausalLM");
        wrong["num_hidden_layers"] = serde_json::json!(3);
        let missing = CausalLm::load(&wrong, path, &vb, "m")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("model.layers.2"), "{missing}");
    }

    #[test]
    fn a_uniform_head_has_the_vocabulary_as_its_perplexity() {
        let (config, mut weights) = tiny(false);
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
}
