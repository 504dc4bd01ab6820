//! The rotary-embedding decoder that Llama 2/3, Mistral, Qwen2/2.5, Gemma, Gemma 2 and Phi-3
//! share, with each architecture's differences as [`Options`]: biases, fused projections, the
//! norm's `(1 + w)`, Gemma 2's extra norms and soft-caps, partial rotary, sliding windows.
//! Every position's logits come out (candle-transformers' models give the last one only), and
//! a [`KvCache`] carries keys and values from one call to the next so that generation costs one
//! position a step. The arithmetic follows Hugging Face transformers' eager attention (tested
//! against its logits on saved checkpoints, `tests/fixtures/lm-parity`).

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};

use super::KvCache;

/// The MLP's (and GPT-2's) non-linearity, as `hidden_act` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// The tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// The exact, erf-based GELU (`gelu`).
    Gelu,
    Relu,
}

impl Activation {
    /// The activation `hidden_act` names, if one is run.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            "relu" => Self::Relu,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Silu => candle_nn::ops::silu(x),
            Self::GeluTanh => x.gelu(),
            Self::Gelu => x.gelu_erf(),
            Self::Relu => x.relu(),
        }
    }
}

/// How the rotary frequencies are rescaled (`rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Phi-3's LongRoPE: each frequency divided by its own factor, the short ones while the
    /// text is within `original_max_position_embeddings` and the long ones past it, and cos
    /// and sin multiplied by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

/// What distinguishes one architecture's decoder from another's.
#[derive(Clone, Debug)]
pub struct Options {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The longest text the model reads (`max_position_embeddings`).
    pub max_positions: usize,
    pub rms_norm_eps: f64,
    /// Gemma's norms multiply by `1 + w` (their weights are stored around 0).
    pub norm_plus_one: bool,
    /// Biases on q, k and v (Qwen2; Llama's and Gemma's `attention_bias`).
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Phi-3's `qkv_proj` in place of q/k/v_proj.
    pub fused_qkv: bool,
    /// Phi-3's `gate_up_proj` (gate first) in place of gate/up_proj.
    pub fused_gate_up: bool,
    pub activation: Activation,
    /// Gemma multiplies the embeddings by √hidden.
    pub embed_scale: Option<f64>,
    /// Gemma 2's norms on the attention's and the MLP's outputs, besides those on their
    /// inputs.
    pub sandwich_norms: bool,
    /// Multiplies q·k: 1/√head_dim, or Gemma 2's 1/√query_pre_attn_scalar.
    pub attention_scale: f64,
    /// `cap · tanh(x / cap)` on the attention scores (Gemma 2) …
    pub attention_softcap: Option<f64>,
    /// … and on the logits.
    pub final_softcap: Option<f64>,
    /// Each layer's sliding window: a position sees itself and the `w - 1` before it.
    pub windows: Vec<Option<usize>>,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// How many of each head's leading dimensions rotate (Phi-3's partial rotary); the rest
    /// pass through.
    pub rotary_dim: usize,
    pub tie_embeddings: bool,
    /// Composed candle ops that carry gradients (training) instead of the fused kernels that
    /// do not (rms-norm, rope and softmax have no backward pass in candle).
    pub differentiable: bool,
}

#[derive(Debug)]
enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Debug)]
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

#[derive(Debug)]
struct Block {
    input_norm: RmsNorm,
    qkv: Qkv,
    o: Linear,
    attention_out_norm: Option<RmsNorm>,
    mlp_norm: RmsNorm,
    gate_up: GateUp,
    down: Linear,
    mlp_out_norm: Option<RmsNorm>,
    window: Option<usize>,
}

/// A rotary-embedding causal language model, in memory.
#[derive(Debug)]
pub struct Decoder {
    options: Options,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    /// Inverse frequencies, (1 × rotary_dim / 2).
    inv_freq: Tensor,
    /// LongRoPE's for texts past `original_max_position_embeddings`.
    long_inv_freq: Option<Tensor>,
}

impl Decoder {
    /// The model whose weights `vb` holds under Hugging Face's names (`model.layers.N…`).
    pub fn load(vb: &VarBuilder<'_>, options: &Options) -> candle_core::Result<Self> {
        let o = options;
        if o.windows.len() != o.layers {
            candle_core::bail!(
                "{} sliding windows for {} layers",
                o.windows.len(),
                o.layers
            );
        }
        let norm = |vb: VarBuilder<'_>| -> candle_core::Result<RmsNorm> {
            let weight = vb.get(o.hidden, "weight")?;
            let weight = if o.norm_plus_one {
                (weight + 1.0)?
            } else {
                weight
            };
            Ok(RmsNorm::new(weight, o.rms_norm_eps))
        };
        let embed = candle_nn::embedding(o.vocab, o.hidden, vb.pp("model.embed_tokens"))?;
        let head = if o.tie_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(o.hidden, o.vocab, vb.pp("lm_head"))?
        };
        let (q_width, kv_width) = (o.heads * o.head_dim, o.kv_heads * o.head_dim);
        let blocks = (0..o.layers)
            .map(|i| {
                let vb = vb.pp(format!("model.layers.{i}"));
                let attn = vb.pp("self_attn");
                let mlp = vb.pp("mlp");
                let qkv = if o.fused_qkv {
                    Qkv::Fused(candle_nn::linear_b(
                        o.hidden,
                        q_width + 2 * kv_width,
                        o.qkv_bias,
                        attn.pp("qkv_proj"),
                    )?)
                } else {
                    Qkv::Separate {
                        q: candle_nn::linear_b(o.hidden, q_width, o.qkv_bias, attn.pp("q_proj"))?,
                        k: candle_nn::linear_b(o.hidden, kv_width, o.qkv_bias, attn.pp("k_proj"))?,
                        v: candle_nn::linear_b(o.hidden, kv_width, o.qkv_bias, attn.pp("v_proj"))?,
                    }
                };
                let gate_up = if o.fused_gate_up {
                    GateUp::Fused(candle_nn::linear_b(
                        o.hidden,
                        2 * o.intermediate,
                        o.mlp_bias,
                        mlp.pp("gate_up_proj"),
                    )?)
                } else {
                    GateUp::Separate {
                        gate: candle_nn::linear_b(
                            o.hidden,
                            o.intermediate,
                            o.mlp_bias,
                            mlp.pp("gate_proj"),
                        )?,
                        up: candle_nn::linear_b(
                            o.hidden,
                            o.intermediate,
                            o.mlp_bias,
                            mlp.pp("up_proj"),
                        )?,
                    }
                };
                // Gemma 2 names the MLP's input norm `pre_feedforward_layernorm` and puts
                // `post_attention_layernorm` on the attention's output; the others use
                // `post_attention_layernorm` as the MLP's input norm.
                let (attention_out_norm, mlp_norm, mlp_out_norm) = if o.sandwich_norms {
                    (
                        Some(norm(vb.pp("post_attention_layernorm"))?),
                        norm(vb.pp("pre_feedforward_layernorm"))?,
                        Some(norm(vb.pp("post_feedforward_layernorm"))?),
                    )
                } else {
                    (None, norm(vb.pp("post_attention_layernorm"))?, None)
                };
                Ok(Block {
                    input_norm: norm(vb.pp("input_layernorm"))?,
                    qkv,
                    o: candle_nn::linear_b(q_width, o.hidden, o.o_bias, attn.pp("o_proj"))?,
                    attention_out_norm,
                    mlp_norm,
                    gate_up,
                    down: candle_nn::linear_b(
                        o.intermediate,
                        o.hidden,
                        o.mlp_bias,
                        mlp.pp("down_proj"),
                    )?,
                    mlp_out_norm,
                    window: o.windows[i],
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = norm(vb.pp("model.norm"))?;
        let (inv_freq, long_inv_freq) = match &o.rope_scaling {
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } => (
                inverse_frequencies(o, Some(short_factor), vb.device())?,
                Some(inverse_frequencies(o, Some(long_factor), vb.device())?),
            ),
            _ => (inverse_frequencies(o, None, vb.device())?, None),
        };
        Ok(Self {
            options: options.clone(),
            embed,
            blocks,
            norm,
            head,
            inv_freq,
            long_inv_freq,
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Reads `tokens` after the `cache.len()` that `cache` holds and returns their logits
    /// (tokens × vocab, f32); `cache` then holds them too. On an error `cache` is unchanged.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let o = &self.options;
        let offset = cache.len();
        check_window(tokens, offset, o.max_positions, o.vocab)?;
        cache.check_layers(self.blocks.len())?;
        let ids = Tensor::new(tokens, self.inv_freq.device())?.unsqueeze(0)?;
        let (logits, kept) = self.run(&ids, offset, &cache.layers)?;
        cache.commit(kept, tokens.len());
        logits.squeeze(0)
    }

    /// The logits at every position of a batch of windows read from the start, `ids`
    /// (windows × tokens, u32): (windows × tokens × vocab), f32. Training reads this way; the
    /// arithmetic is [`Self::forward`]'s, window by window.
    pub fn forward_batch(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let o = &self.options;
        let (_, n) = ids.dims2()?;
        if n == 0 || n > o.max_positions {
            candle_core::bail!(
                "windows of {n} tokens; the model takes 1 to {}",
                o.max_positions
            );
        }
        let ids = ids.to_dtype(DType::U32)?;
        let largest = ids.max_all()?.to_scalar::<u32>()?;
        if largest as usize >= o.vocab {
            candle_core::bail!("token {largest} is outside the vocabulary of {}", o.vocab);
        }
        Ok(self.run(&ids, 0, &[])?.0)
    }

    /// The decoder over `ids` (batch × n) at positions `offset ..`, after the keys and values
    /// `past` holds (one pair a layer, or none): logits (batch × n × vocab, f32) and each
    /// layer's keys and values to keep.
    fn run(
        &self,
        ids: &Tensor,
        offset: usize,
        past: &[(Tensor, Tensor)],
    ) -> candle_core::Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let o = &self.options;
        let n = ids.dim(1)?;
        let mut x = self.embed.forward(ids)?;
        if let Some(scale) = o.embed_scale {
            x = (x * scale)?;
        }
        let (cos, sin) = self.rotary(offset, n)?;
        let mut kept = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let h = self.norm_of(&block.input_norm, &x)?;
            let (q, k, v) = self.project(block, &h, &cos, &sin)?;
            let (y, k, v) = attend(
                &q,
                k,
                v,
                past.get(i),
                offset,
                &Attention {
                    window: block.window,
                    scale: o.attention_scale,
                    softcap: o.attention_softcap,
                    differentiable: o.differentiable,
                },
            )?;
            kept.push((k, v));
            let mut a = block.o.forward(&y)?;
            if let Some(norm) = &block.attention_out_norm {
                a = self.norm_of(norm, &a)?;
            }
            x = (x + a)?;
            let h = self.norm_of(&block.mlp_norm, &x)?;
            let (gate, up) = match &block.gate_up {
                GateUp::Separate { gate, up } => (gate.forward(&h)?, up.forward(&h)?),
                GateUp::Fused(gate_up) => {
                    let both = gate_up.forward(&h)?;
                    (
                        both.narrow(D::Minus1, 0, o.intermediate)?,
                        both.narrow(D::Minus1, o.intermediate, o.intermediate)?,
                    )
                }
            };
            let mut m = block.down.forward(&(o.activation.apply(&gate)? * up)?)?;
            if let Some(norm) = &block.mlp_out_norm {
                m = self.norm_of(norm, &m)?;
            }
            x = (x + m)?;
        }
        let x = self.norm_of(&self.norm, &x)?;
        let logits = self.head.forward(&x)?.to_dtype(DType::F32)?;
        let logits = match o.final_softcap {
            Some(cap) => softcap(&logits, cap)?,
            None => logits,
        };
        Ok((logits, kept))
    }

    /// The logits at every position of `tokens` (tokens × vocab, f32).
    pub fn logits(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        self.forward(tokens, &mut KvCache::default())
    }

    /// cos and sin of (position × inverse frequency) for positions `offset .. offset + n`,
    /// (n × rotary_dim / 2) each.
    fn rotary(&self, offset: usize, n: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let (inv_freq, scale) = match (&self.options.rope_scaling, &self.long_inv_freq) {
            (
                RopeScaling::LongRope {
                    original_max_position_embeddings: original,
                    attention_factor,
                    ..
                },
                Some(long),
            ) => {
                // As transformers does: the whole text so far decides, so positions already
                // in the cache keep the rotation they were read with.
                let long_text = offset + n > *original;
                (
                    if long_text { long } else { &self.inv_freq },
                    *attention_factor,
                )
            }
            _ => (&self.inv_freq, 1.0),
        };
        let positions = Tensor::arange(offset as u32, (offset + n) as u32, inv_freq.device())?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let angles = positions.broadcast_mul(inv_freq)?;
        if scale == 1.0 {
            Ok((angles.cos()?, angles.sin()?))
        } else {
            Ok(((angles.cos()? * scale)?, (angles.sin()? * scale)?))
        }
    }

    fn norm_of(&self, norm: &RmsNorm, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.options.differentiable {
            norm.forward_diff(x)
        } else {
            norm.forward(x)
        }
    }

    /// q (batch, heads, n, head_dim) and k, v (batch, kv_heads, n, head_dim), q and k rotated.
    fn project(
        &self,
        block: &Block,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let o = &self.options;
        let (b, n, _) = h.dims3()?;
        let (q, k, v) = match &block.qkv {
            Qkv::Separate { q, k, v } => (q.forward(h)?, k.forward(h)?, v.forward(h)?),
            Qkv::Fused(qkv) => {
                let all = qkv.forward(h)?;
                let (q_width, kv_width) = (o.heads * o.head_dim, o.kv_heads * o.head_dim);
                (
                    all.narrow(D::Minus1, 0, q_width)?,
                    all.narrow(D::Minus1, q_width, kv_width)?,
                    all.narrow(D::Minus1, q_width + kv_width, kv_width)?,
                )
            }
        };
        let split = |t: Tensor, heads: usize| {
            t.reshape((b, n, heads, o.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = self.rotate(&split(q, o.heads)?, cos, sin)?;
        let k = self.rotate(&split(k, o.kv_heads)?, cos, sin)?;
        Ok((q, k, split(v, o.kv_heads)?))
    }

    /// Rotate-half rotary embedding of the leading `rotary_dim` dimensions of each head.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let (rotary, head_dim) = (self.options.rotary_dim, self.options.head_dim);
        let rope = |x: &Tensor| {
            if self.options.differentiable {
                candle_nn::rotary_emb::rope_slow(x, cos, sin)
            } else {
                candle_nn::rotary_emb::rope(x, cos, sin)
            }
        };
        if rotary == head_dim {
            return rope(x);
        }
        let turned = rope(&x.narrow(D::Minus1, 0, rotary)?.contiguous()?)?;
        let kept = x.narrow(D::Minus1, rotary, head_dim - rotary)?;
        Tensor::cat(&[&turned, &kept], D::Minus1)
    }
}

/// How one layer's attention weighs its scores.
pub(super) struct Attention {
    pub window: Option<usize>,
    pub scale: f64,
    pub softcap: Option<f64>,
    pub differentiable: bool,
}

/// Causal attention of the new positions' `q` (batch, heads, n, d) over the keys and values
/// `past` holds followed by `k`, `v` (batch, kv_heads, n, d); positions start at `offset`.
/// Returns the heads' outputs side by side (batch, n, heads · d) and the keys and values to keep.
pub(super) fn attend(
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    past: Option<&(Tensor, Tensor)>,
    offset: usize,
    how: &Attention,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (b, heads, n, d) = q.dims4()?;
    let (k, v) = match past {
        Some((past_k, past_v)) => (
            Tensor::cat(&[past_k, &k], 2)?,
            Tensor::cat(&[past_v, &v], 2)?,
        ),
        None => (k, v),
    };
    let groups = heads / k.dim(1)?;
    let keys = candle_transformers::utils::repeat_kv(k.clone(), groups)?.to_dtype(DType::F32)?;
    let values = candle_transformers::utils::repeat_kv(v.clone(), groups)?.to_dtype(DType::F32)?;
    let scores = (q.to_dtype(DType::F32)?.matmul(&keys.t()?)? * how.scale)?;
    let scores = match how.softcap {
        Some(cap) => softcap(&scores, cap)?,
        None => scores,
    };
    let scores = match mask(n, offset, how.window, q.device())? {
        Some(mask) => scores.broadcast_add(&mask)?,
        None => scores,
    };
    let weights = if how.differentiable {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let y = weights
        .matmul(&values.contiguous()?)?
        .to_dtype(q.dtype())?
        .transpose(1, 2)?
        .reshape((b, n, heads * d))?;
    Ok((y, k, v))
}

/// `cap · tanh(x / cap)`.
pub(super) fn softcap(x: &Tensor, cap: f64) -> candle_core::Result<Tensor> {
    (x / cap)?.tanh()? * cap
}

/// The additive mask of `n` new positions (from `offset` on) over all `offset + n` keys: 0
/// where query position i may see key position j (j ≤ i, and i − j < window), −∞ elsewhere;
/// `None` when nothing is hidden (one new position and no window cutting in).
pub(super) fn mask(
    n: usize,
    offset: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let total = offset + n;
    let sees = |i: usize, j: usize| j <= i && window.is_none_or(|w| i - j < w);
    if n == 1 && (0..total).all(|j| sees(offset, j)) {
        return Ok(None);
    }
    let values: Vec<f32> = (offset..total)
        .flat_map(|i| (0..total).map(move |j| if sees(i, j) { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(values, (n, total), device).map(Some)
}

/// Refuses an empty read, one past the model's positions and a token outside its vocabulary.
pub(super) fn check_window(
    tokens: &[u32],
    offset: usize,
    max_positions: usize,
    vocab: usize,
) -> candle_core::Result<()> {
    let n = tokens.len();
    if n == 0 || offset + n > max_positions {
        candle_core::bail!(
            "{n} tokens after {offset}; the model takes 1 to {max_positions} in all"
        );
    }
    if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("token {token} is outside the vocabulary of {vocab}");
    }
    Ok(())
}

/// The rotary frequencies as Hugging Face computes them (`rope_type` default, linear, llama3,
/// or LongRoPE with one of its lists of `factors`), (1 × rotary_dim / 2).
fn inverse_frequencies(
    o: &Options,
    factors: Option<&Vec<f64>>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let dim = o.rotary_dim;
    if let Some(factors) = factors
        && factors.len() != dim / 2
    {
        candle_core::bail!(
            "{} LongRoPE factors for {} rotary frequencies",
            factors.len(),
            dim / 2
        );
    }
    let base: Vec<f64> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / o.rope_theta.powf(i as f64 / dim as f64))
        .collect();
    let scaled: Vec<f32> = base
        .into_iter()
        .enumerate()
        .map(|(i, freq)| match o.rope_scaling {
            RopeScaling::None => freq,
            RopeScaling::Linear { factor } => freq / factor,
            RopeScaling::LongRope { .. } => factors.map_or(freq, |f| freq / f[i]),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original,
            } => {
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let (low, high) = (original / low_freq_factor, original / high_freq_factor);
                if wavelen < high {
                    freq
                } else if wavelen > low {
                    freq / factor
                } else {
                    let smooth = (original / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * freq / factor + smooth * freq
                }
            }
        })
        .map(|f| f as f32)
        .collect();
    let k = scaled.len();
    Tensor::from_vec(scaled, (1, k), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_hides_the_future_and_what_the_window_left_behind() {
        let dense = |m: Option<Tensor>| m.map(|m| m.to_vec2::<f32>().unwrap());
        let cpu = &Device::Cpu;
        assert_eq!(dense(mask(1, 7, None, cpu).unwrap()), None);
        assert_eq!(dense(mask(1, 3, Some(4), cpu).unwrap()), None);
        let ninf = f32::NEG_INFINITY;
        // Position 4 with a window of 4 sees 1..=4.
        assert_eq!(
            dense(mask(1, 4, Some(4), cpu).unwrap()),
            Some(vec![vec![ninf, 0.0, 0.0, 0.0, 0.0]])
        );
        assert_eq!(
            dense(mask(2, 1, Some(2), cpu).unwrap()),
            Some(vec![vec![0.0, 0.0, ninf], vec![ninf, 0.0, 0.0]])
        );
    }
}
