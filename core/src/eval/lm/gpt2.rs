//! GPT-2 (`GPT2LMHeadModel`), which candle-transformers 0.11 does not have: learned
//! positions, LayerNorm with biases, one fused `c_attn`, GELU (`gelu_new`) and the head tied to
//! the token embeddings. Its `Conv1D` layers store weights as (in × out), the transpose of a
//! linear layer's; they are turned once at load time. Weights are found under `transformer.`
//! (as `GPT2LMHeadModel` saves them) or without it (as the original `gpt2` checkpoints are).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::KvCache;
use super::decoder::{Activation, Attention, attend, check_window};

/// GPT-2's shape and options, from its `config.json`.
#[derive(Clone, Debug)]
pub struct Options {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    /// The MLP's width (`n_inner`, 4 · hidden when null).
    pub inner: usize,
    /// `n_positions`: the learned position table's length.
    pub max_positions: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// Scores divided by √head_dim (`scale_attn_weights`) …
    pub scale_attn_weights: bool,
    /// … and by the layer's 1-based index (`scale_attn_by_inverse_layer_idx`).
    pub scale_attn_by_inverse_layer_idx: bool,
    pub tie_embeddings: bool,
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
    scale: f64,
}

/// A GPT-2 causal language model, in memory.
#[derive(Debug)]
pub struct Gpt2 {
    options: Options,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
}

impl Gpt2 {
    /// The configuration it was built with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn load(vb: &VarBuilder<'_>, options: &Options) -> candle_core::Result<Self> {
        let o = options;
        let root = if vb.contains_tensor("transformer.wte.weight") {
            vb.pp("transformer")
        } else {
            vb.clone()
        };
        let layer_norm = |vb: VarBuilder<'_>| -> candle_core::Result<LayerNorm> {
            Ok(LayerNorm::new(
                vb.get(o.hidden, "weight")?,
                vb.get(o.hidden, "bias")?,
                o.layer_norm_eps,
            ))
        };
        let wte = candle_nn::embedding(o.vocab, o.hidden, root.pp("wte"))?;
        let wpe = candle_nn::embedding(o.max_positions, o.hidden, root.pp("wpe"))?;
        let head_dim = o.hidden / o.heads;
        let blocks = (0..o.layers)
            .map(|i| {
                let vb = root.pp(format!("h.{i}"));
                let mut scale = 1.0;
                if o.scale_attn_weights {
                    scale /= (head_dim as f64).sqrt();
                }
                if o.scale_attn_by_inverse_layer_idx {
                    scale /= (i + 1) as f64;
                }
                Ok(Block {
                    ln_1: layer_norm(vb.pp("ln_1"))?,
                    c_attn: conv1d(o.hidden, 3 * o.hidden, &vb.pp("attn.c_attn"))?,
                    c_proj: conv1d(o.hidden, o.hidden, &vb.pp("attn.c_proj"))?,
                    ln_2: layer_norm(vb.pp("ln_2"))?,
                    c_fc: conv1d(o.hidden, o.inner, &vb.pp("mlp.c_fc"))?,
                    mlp_proj: conv1d(o.inner, o.hidden, &vb.pp("mlp.c_proj"))?,
                    scale,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ln_f = layer_norm(root.pp("ln_f"))?;
        let head = if o.tie_embeddings {
            Linear::new(wte.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(o.hidden, o.vocab, vb.pp("lm_head"))?
        };
        Ok(Self {
            options: options.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            head,
        })
    }

    /// Reads `tokens` after those `cache` holds; their logits (tokens × vocab, f32). On an
    /// error `cache` is unchanged.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let o = &self.options;
        let offset = cache.len();
        check_window(tokens, offset, o.max_positions, o.vocab)?;
        cache.check_layers(self.blocks.len())?;
        let device = self.wte.embeddings().device();
        let n = tokens.len();
        let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let positions = Tensor::arange(offset as u32, (offset + n) as u32, device)?.unsqueeze(0)?;
        let mut x = (self.wte.forward(&ids)? + self.wpe.forward(&positions)?)?;
        let (heads, head_dim) = (o.heads, o.hidden / o.heads);
        let mut kept = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let qkv = block.c_attn.forward(&block.ln_1.forward(&x)?)?;
            let split = |at: usize| {
                qkv.narrow(2, at * o.hidden, o.hidden)?
                    .reshape((1, n, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (y, k, v) = attend(
                &split(0)?,
                split(1)?,
                split(2)?,
                cache.layers.get(i),
                offset,
                &Attention {
                    window: None,
                    scale: block.scale,
                    softcap: None,
                    differentiable: false,
                },
            )?;
            kept.push((k, v));
            x = (x + block.c_proj.forward(&y)?)?;
            let h = block.c_fc.forward(&block.ln_2.forward(&x)?)?;
            x = (x + block.mlp_proj.forward(&o.activation.apply(&h)?)?)?;
        }
        let x = self.ln_f.forward(&x)?;
        let logits = self.head.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)?;
        cache.commit(kept, n);
        Ok(logits)
    }
}

/// A `Conv1D` (weight stored in × out, and a bias) as a linear layer (out × in).
fn conv1d(fan_in: usize, fan_out: usize, vb: &VarBuilder<'_>) -> candle_core::Result<Linear> {
    let weight = vb.get((fan_in, fan_out), "weight")?.t()?.contiguous()?;
    let bias = vb.get(fan_out, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}
