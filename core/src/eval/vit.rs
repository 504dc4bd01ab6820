//! The demo family's model: a tiny Vision Transformer over 4 × 4 patches of the 8 × 8 digits,
//! with Hugging Face ViT tensor names (`vit.encoder.layer.N.…`), so `core::layout` sees real
//! layers and the files load in `transformers` as `ViTForImageClassification`.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Result, Tensor};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal};

use super::digits::{CLASSES, SIDE};

/// The architecture (written to `config.json` in Hugging Face's ViT form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitConfig {
    pub patch: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
}

impl VitConfig {
    pub const DEMO: Self = Self {
        patch: 4,
        hidden: 32,
        layers: 4,
        heads: 4,
        intermediate: 64,
    };

    pub fn patches(self) -> usize {
        (SIDE / self.patch) * (SIDE / self.patch)
    }

    /// Every tensor: name and shape, in the order they are written.
    pub fn tensors(self) -> Vec<(String, Vec<usize>)> {
        let (h, i, p) = (self.hidden, self.intermediate, self.patch);
        let mut t = vec![
            ("vit.embeddings.cls_token".to_owned(), vec![1, 1, h]),
            (
                "vit.embeddings.position_embeddings".to_owned(),
                vec![1, self.patches() + 1, h],
            ),
            (
                "vit.embeddings.patch_embeddings.projection.weight".to_owned(),
                vec![h, 1, p, p],
            ),
            (
                "vit.embeddings.patch_embeddings.projection.bias".to_owned(),
                vec![h],
            ),
        ];
        for l in 0..self.layers {
            let pre = format!("vit.encoder.layer.{l}");
            for (name, shape) in [
                ("layernorm_before.weight", vec![h]),
                ("layernorm_before.bias", vec![h]),
                ("attention.attention.query.weight", vec![h, h]),
                ("attention.attention.query.bias", vec![h]),
                ("attention.attention.key.weight", vec![h, h]),
                ("attention.attention.key.bias", vec![h]),
                ("attention.attention.value.weight", vec![h, h]),
                ("attention.attention.value.bias", vec![h]),
                ("attention.output.dense.weight", vec![h, h]),
                ("attention.output.dense.bias", vec![h]),
                ("layernorm_after.weight", vec![h]),
                ("layernorm_after.bias", vec![h]),
                ("intermediate.dense.weight", vec![i, h]),
                ("intermediate.dense.bias", vec![i]),
                ("output.dense.weight", vec![h, i]),
                ("output.dense.bias", vec![h]),
            ] {
                t.push((format!("{pre}.{name}"), shape));
            }
        }
        t.extend([
            ("vit.layernorm.weight".to_owned(), vec![h]),
            ("vit.layernorm.bias".to_owned(), vec![h]),
            ("classifier.weight".to_owned(), vec![CLASSES, h]),
            ("classifier.bias".to_owned(), vec![CLASSES]),
        ]);
        t
    }

    /// Seeded initial values: ones for norm scales, zeros for biases, small normals elsewhere.
    pub fn init(self, seed: u64) -> BTreeMap<String, Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Wider than BERT's 0.02: with 4-pixel patches and 33 K parameters, 0.02 leaves the
        // first epochs on the ln 10 plateau.
        let normal = Normal::new(0.0f32, 0.1).expect("valid");
        self.tensors()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if name.contains("layernorm") && name.ends_with("weight") {
                    vec![1.0; n]
                } else if name.ends_with("bias") {
                    vec![0.0; n]
                } else {
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                };
                // Draw order must not depend on which branch ran: one draw per tensor more.
                let _: u32 = rng.random();
                (name, values)
            })
            .collect()
    }

    /// `config.json` of a Hugging Face `ViTForImageClassification`.
    pub fn hf_config(self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["ViTForImageClassification"],
            "model_type": "vit",
            "image_size": SIDE,
            "patch_size": self.patch,
            "num_channels": 1,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "hidden_act": "gelu",
            "layer_norm_eps": LAYER_NORM_EPS,
            "qkv_bias": true,
            "num_labels": CLASSES,
            "id2label": (0..CLASSES).map(|c| (c.to_string(), c.to_string())).collect::<BTreeMap<_, _>>(),
            "label2id": (0..CLASSES).map(|c| (c.to_string(), c)).collect::<BTreeMap<_, _>>(),
            "torch_dtype": "float32",
        })
    }
}

/// Hugging Face ViT's default.
pub const LAYER_NORM_EPS: f64 = 1e-12;

/// Where the forward pass finds a tensor by name, and how it applies a linear layer (a SMILE
/// model routes some of them through experts: `crate::smile`).
pub trait Weights {
    fn get(&self, name: &str) -> Result<Tensor>;

    /// `x Wᵀ + b` with `name.weight` and `name.bias`.
    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let weight = self.get(&format!("{name}.weight"))?;
        let bias = self.get(&format!("{name}.bias"))?;
        x.broadcast_matmul(&weight.t()?)?.broadcast_add(&bias)
    }

    /// Block `prefix`'s MLP on its normed input: `output.dense(gelu(intermediate.dense(x)))`
    /// (a WEMoE model routes the whole MLP: `crate::test_time::wemoe`).
    fn mlp(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let hidden = self
            .linear(x, &format!("{prefix}.intermediate.dense"))?
            .gelu_erf()?;
        self.linear(&hidden, &format!("{prefix}.output.dense"))
    }
}

impl Weights for BTreeMap<String, Tensor> {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.get(name)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("the model has no tensor `{name}`")))
    }
}

fn linear(x: &Tensor, w: &dyn Weights, name: &str) -> Result<Tensor> {
    w.linear(x, name)
}

fn layer_norm(x: &Tensor, w: &dyn Weights, name: &str) -> Result<Tensor> {
    let weight = w.get(&format!("{name}.weight"))?;
    let bias = w.get(&format!("{name}.bias"))?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?
        .broadcast_mul(&weight)?
        .broadcast_add(&bias)
}

/// Class logits (n × 10) of `pixels` (n × 64, row-major images scaled to 0..1).
pub fn forward(config: VitConfig, w: &dyn Weights, pixels: &Tensor) -> Result<Tensor> {
    let n = pixels.dim(0)?;
    let (p, side, h) = (config.patch, SIDE, config.hidden);
    let grid = side / p;
    // (n, 8, 8) → (n, gy, p, gx, p) → (n, gy, gx, p, p) → (n, patches, p·p)
    let patches = pixels
        .reshape((n, grid, p, grid, p))?
        .permute((0, 1, 3, 2, 4))?
        .contiguous()?
        .reshape((n, grid * grid, p * p))?;
    let projection = w
        .get("vit.embeddings.patch_embeddings.projection.weight")?
        .reshape((h, p * p))?;
    let embedded = patches
        .broadcast_matmul(&projection.t()?)?
        .broadcast_add(&w.get("vit.embeddings.patch_embeddings.projection.bias")?)?;
    let cls = w.get("vit.embeddings.cls_token")?.broadcast_as((n, 1, h))?;
    let mut x = Tensor::cat(&[&cls, &embedded], 1)?
        .broadcast_add(&w.get("vit.embeddings.position_embeddings")?)?;
    let tokens = grid * grid + 1;
    let head_dim = h / config.heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    for l in 0..config.layers {
        let pre = format!("vit.encoder.layer.{l}");
        let normed = layer_norm(&x, w, &format!("{pre}.layernorm_before"))?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((n, tokens, config.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(linear(
            &normed,
            w,
            &format!("{pre}.attention.attention.query"),
        )?)?;
        let k = split(linear(
            &normed,
            w,
            &format!("{pre}.attention.attention.key"),
        )?)?;
        let v = split(linear(
            &normed,
            w,
            &format!("{pre}.attention.attention.value"),
        )?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        // `softmax_last_dim` is a fused op without a backward pass: training needs the plain one.
        let attention = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = attention
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, tokens, h))?;
        x = (x + linear(&context, w, &format!("{pre}.attention.output.dense"))?)?;
        let normed = layer_norm(&x, w, &format!("{pre}.layernorm_after"))?;
        x = (x + w.mlp(&normed, &pre)?)?;
    }
    let x = layer_norm(&x, w, "vit.layernorm")?;
    let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
    linear(&cls, w, "classifier")
}

/// Mean cross-entropy and accuracy of `logits` against `labels`.
pub fn loss_and_accuracy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, f64)> {
    let loss = candle_nn::loss::cross_entropy(logits, labels)?;
    let predicted = logits.argmax(D::Minus1)?;
    let correct = predicted
        .eq(&labels.to_dtype(predicted.dtype())?)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((loss, f64::from(correct) / labels.dim(0)? as f64))
}

/// Tensors on the CPU from named values.
pub fn to_tensors(
    config: VitConfig,
    values: &BTreeMap<String, Vec<f32>>,
) -> Result<BTreeMap<String, Tensor>> {
    config
        .tensors()
        .into_iter()
        .map(|(name, shape)| {
            let data = values
                .get(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no values for `{name}`")))?;
            Ok((name, Tensor::from_slice(data, shape, &Device::Cpu)?))
        })
        .collect()
}
