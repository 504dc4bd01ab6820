//! SMILE zero-shot upscaling (Tang et al. 2024, "SMILE: Zero-Shot Sparse Mixture of Low-Rank
//! Experts Construction From Pre-Trained Foundation Models"; ALGORITHMS.md §3.6,
//! docs/methods-beyond-mergekit.md): chosen linear layers become the base layer plus one
//! low-rank expert per fine-tune and a router that needs no data; every other tensor is the
//! average of the fine-tunes (fusion-bench's `simple_average`).
//!
//! Tensor layout of an upscaled layer `L` (e.g. `vit.encoder.layer.0.output.dense`), expert
//! `i` counting the fine-tunes from 0, `k` the rank, `g` the router's rank:
//!
//! | tensor | shape | holds |
//! |---|---|---|
//! | `L.weight`, `L.bias` | out × in, out | the base layer's |
//! | `L.smile.gate.i` | g × in | the top g right singular vectors of `Δ_i = W_i − W_b` |
//! | `L.smile.down.i` | k × in | the top k right singular vectors of `Δ_i` |
//! | `L.smile.up.i` | out × k | the top k left singular vectors times their values |
//! | `L.smile.bias.i` | out | `b_i − b_b` |
//!
//! The safetensors metadata holds `smile_top_k` (and `smile_rank`, `smile_gate_k`,
//! `smile_experts` for people), and `config.json` a `smile` block with the same numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{D, Tensor};
use faer::Mat;

use crate::checkpoint::Checkpoint;
use crate::eval::vit::Weights;
use crate::export::model_folder::{self, F32Tensors, ModelFolderError, write_model_folder};
use crate::merge::subspace::thin_svd;

/// What to upscale and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmileSettings {
    /// Rank `k` of each expert.
    pub rank: usize,
    /// Rank `g` of each expert's router subspace.
    pub gate_k: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Linear layers to upscale, by their name within a block (`output.dense` is
    /// `….layer.N.output.dense`, not `….layer.N.attention.output.dense`).
    pub modules: Vec<String>,
}

impl Default for SmileSettings {
    /// The demo ViT's MLP, rank 8 of 32, routed on 4 directions to one expert.
    fn default() -> Self {
        Self {
            rank: 8,
            gate_k: 4,
            top_k: 1,
            modules: vec!["intermediate.dense".to_owned(), "output.dense".to_owned()],
        }
    }
}

/// Why an upscaling could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum SmileError {
    #[error("{0}: rank, gate_k and top_k must each be at least 1")]
    Settings(String),
    #[error("top_k is {top_k}, but there are only {experts} fine-tunes to route to")]
    TopK { top_k: usize, experts: usize },
    #[error(
        "{model} has no tensor `{tensor}` (or another shape); SMILE needs fine-tunes of one base"
    )]
    Mismatch { model: PathBuf, tensor: String },
    #[error(
        "no linear layer matches the modules {modules:?}; name them as they follow the block index (e.g. output.dense)"
    )]
    NothingUpscaled { modules: Vec<String> },
    #[error("the SVD of `{tensor}` did not converge: {message}")]
    Svd { tensor: String, message: String },
    #[error(transparent)]
    Write(#[from] ModelFolderError),
}

/// An upscaled model in memory: every tensor (name → shape and values) and its settings.
#[derive(Clone, Debug)]
pub struct Upscaled {
    pub tensors: F32Tensors,
    pub settings: SmileSettings,
    pub experts: usize,
    /// The layers that were upscaled.
    pub layers: Vec<String>,
}

/// The layer name of `name` (`L.weight` → `L`) when it is a weight SMILE upscales.
fn upscaled_layer<'n>(name: &'n str, modules: &[String]) -> Option<&'n str> {
    let layer = name.strip_suffix(".weight")?;
    let (stack, block) = crate::layout::split_block(layer)?;
    let module = layer.strip_prefix(&format!("{stack}.{block}."))?;
    modules.iter().any(|m| m == module).then_some(layer)
}

/// Builds the upscaled model of `base` and its fine-tunes `experts` (in memory: for models the
/// size of the demo's, or a few layers of a larger one).
pub fn upscale(
    base: &Checkpoint,
    experts: &[Checkpoint],
    settings: &SmileSettings,
) -> Result<Upscaled, SmileError> {
    if settings.rank == 0 || settings.gate_k == 0 || settings.top_k == 0 {
        return Err(SmileError::Settings(format!("{settings:?}")));
    }
    if settings.top_k > experts.len() {
        return Err(SmileError::TopK {
            top_k: settings.top_k,
            experts: experts.len(),
        });
    }
    let values = |c: &Checkpoint, name: &str, shape: &[usize]| -> Result<Vec<f32>, SmileError> {
        let mismatch = || SmileError::Mismatch {
            model: c.source().to_path_buf(),
            tensor: name.to_owned(),
        };
        let index = c.index_of(name).ok_or_else(mismatch)?;
        let view = c.view(index);
        if view.shape != shape || view.info.float_type().is_none() {
            return Err(mismatch());
        }
        Ok(view.to_f32_vec())
    };
    let mut tensors = BTreeMap::new();
    let mut layers = Vec::new();
    let upscaled: Vec<&str> = base
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2)
        .filter_map(|t| upscaled_layer(&t.name, &settings.modules))
        .collect();
    for info in base.tensors() {
        if info.float_type().is_none() {
            continue;
        }
        let name = info.name.as_str();
        let shape = info.shape.clone();
        if let Some(layer) = upscaled_layer(name, &settings.modules).filter(|_| shape.len() == 2) {
            let own = values(base, name, &shape)?;
            let expert_values = experts
                .iter()
                .map(|e| values(e, name, &shape))
                .collect::<Result<Vec<_>, _>>()?;
            let bias_name = format!("{layer}.bias");
            let bias: Option<Bias> = match base.index_of(&bias_name) {
                Some(_) => {
                    let shape = [shape[0]];
                    let own = values(base, &bias_name, &shape)?;
                    let moved = experts
                        .iter()
                        .map(|e| values(e, &bias_name, &shape))
                        .collect::<Result<Vec<_>, _>>()?;
                    Some((own, moved))
                }
                None => None,
            };
            let moved = expert_values.iter().any(|w| w != &own)
                || bias
                    .as_ref()
                    .is_some_and(|(b, moved)| moved.iter().any(|m| m != b));
            if moved {
                add_experts(
                    &mut tensors,
                    layer,
                    (&shape, &own),
                    &expert_values,
                    bias.as_ref(),
                    settings,
                )?;
                layers.push(layer.to_owned());
            }
            // Unmoved layers stay the base's, as the paper does.
            tensors.insert(name.to_owned(), (shape, own));
            continue;
        }
        if let Some(layer) = name.strip_suffix(".bias")
            && upscaled.contains(&layer)
        {
            let own = values(base, name, &shape)?;
            tensors.insert(name.to_owned(), (shape, own));
            continue;
        }
        // Everything else: the average of the fine-tunes.
        let mut mean = vec![0f32; shape.iter().product()];
        for expert in experts {
            for (m, v) in mean.iter_mut().zip(values(expert, name, &shape)?) {
                *m += v;
            }
        }
        let count = experts.len() as f32;
        mean.iter_mut().for_each(|m| *m /= count);
        tensors.insert(name.to_owned(), (shape, mean));
    }
    if layers.is_empty() && upscaled.is_empty() {
        return Err(SmileError::NothingUpscaled {
            modules: settings.modules.clone(),
        });
    }
    Ok(Upscaled {
        tensors,
        settings: settings.clone(),
        experts: experts.len(),
        layers,
    })
}

type Bias = (Vec<f32>, Vec<Vec<f32>>);

/// One layer's experts: gate, down, up and bias per fine-tune.
fn add_experts(
    tensors: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    layer: &str,
    (shape, base): (&[usize], &[f32]),
    experts: &[Vec<f32>],
    bias: Option<&Bias>,
    settings: &SmileSettings,
) -> Result<(), SmileError> {
    let (out, input) = (shape[0], shape[1]);
    let p = out.min(input);
    let (k, g) = (settings.rank.min(p), settings.gate_k.min(p));
    for (i, w) in experts.iter().enumerate() {
        let delta = Mat::from_fn(out, input, |r, c| {
            f64::from(w[r * input + c]) - f64::from(base[r * input + c])
        });
        let (u, s, v) = thin_svd(delta.as_ref()).map_err(|e| SmileError::Svd {
            tensor: format!("{layer}.weight"),
            message: e.0,
        })?;
        let rows = |count: usize| -> Vec<f32> {
            (0..count)
                .flat_map(|r| (0..input).map(move |c| (r, c)))
                .map(|(r, c)| v[(c, r)] as f32)
                .collect()
        };
        tensors.insert(format!("{layer}.smile.gate.{i}"), (vec![g, input], rows(g)));
        tensors.insert(format!("{layer}.smile.down.{i}"), (vec![k, input], rows(k)));
        let up = (0..out)
            .flat_map(|r| (0..k).map(move |c| (r, c)))
            .map(|(r, c)| (u[(r, c)] * s[c]) as f32)
            .collect();
        tensors.insert(format!("{layer}.smile.up.{i}"), (vec![out, k], up));
        if let Some((b, moved)) = bias {
            let delta = moved[i].iter().zip(b).map(|(x, y)| x - y).collect();
            tensors.insert(format!("{layer}.smile.bias.{i}"), (vec![out], delta));
        }
    }
    Ok(())
}

impl Upscaled {
    /// Parameters of the upscaled model, and how many more than the base model it has.
    pub fn parameters(&self) -> (usize, usize) {
        model_folder::parameters(&self.tensors, ".smile.")
    }

    /// The tensors on the CPU device, with the router settings: what the forward pass reads.
    pub fn weights(&self) -> candle_core::Result<SmileWeights> {
        Ok(SmileWeights {
            tensors: model_folder::to_candle(&self.tensors)?,
            top_k: self.settings.top_k,
        })
    }

    /// Writes `model.safetensors` and `config.json` (the base's with a `smile` block) into
    /// `out`, which must not exist. Both are written into a staging folder beside it, renamed
    /// into place once complete, so `out` never holds half a model.
    pub fn write(&self, out: &Path, base_config: Option<&[u8]>) -> Result<(), SmileError> {
        let metadata = [
            ("smile_top_k", self.settings.top_k),
            ("smile_rank", self.settings.rank),
            ("smile_gate_k", self.settings.gate_k),
            ("smile_experts", self.experts),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_string()))
        .collect();
        let block = serde_json::json!({
            "rank": self.settings.rank,
            "gate_k": self.settings.gate_k,
            "top_k": self.settings.top_k,
            "experts": self.experts,
            "modules": self.settings.modules,
            "layers": self.layers,
            "layout": "docs/methods-beyond-mergekit.md#smile",
        });
        let config = model_folder::config_with(base_config, "smile", block);
        write_model_folder(out, &self.tensors, metadata, &config)?;
        Ok(())
    }
}

/// A SMILE model's tensors and its router setting, for the forward pass ([`Weights`]).
#[derive(Clone, Debug)]
pub struct SmileWeights {
    pub tensors: BTreeMap<String, Tensor>,
    pub top_k: usize,
}

impl SmileWeights {
    /// Every float tensor of an upscaled checkpoint, with its `smile_top_k`; `None` when the
    /// checkpoint is not a SMILE model.
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Option<candle_core::Result<Self>> {
        let top_k = model_folder::metadata_number(checkpoint, "smile_top_k")?;
        let tensors = model_folder::to_candle(&model_folder::read_f32(checkpoint));
        Some(tensors.map(|tensors| Self { tensors, top_k }))
    }

    /// The routing weights of `x` (tokens × in) over the experts of `layer` (tokens × N):
    /// each token's softmax over `‖gate_i x‖`, kept for its `top_k` largest and renormalised.
    pub fn routing(&self, layer: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut logits = Vec::new();
        for i in 0.. {
            let Some(gate) = self.tensors.get(&format!("{layer}.smile.gate.{i}")) else {
                break;
            };
            logits.push(x.matmul(&gate.t()?)?.sqr()?.sum_keepdim(1)?.sqrt()?);
        }
        let probabilities = candle_nn::ops::softmax(&Tensor::cat(&logits, 1)?, D::Minus1)?;
        let rows = probabilities.to_vec2::<f32>()?;
        let experts = logits.len();
        let mut kept = Vec::with_capacity(rows.len() * experts);
        for row in rows {
            let mut order: Vec<usize> = (0..experts).collect();
            // Ties go to the lower expert index, as torch.topk does on the CPU.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let chosen = &order[..self.top_k.min(experts)];
            let sum: f32 = chosen.iter().map(|&e| row[e]).sum();
            kept.extend((0..experts).map(|e| {
                if chosen.contains(&e) {
                    row[e] / sum
                } else {
                    0.0
                }
            }));
        }
        Tensor::from_vec(kept, (x.dim(0)?, experts), x.device())
    }
}

impl Weights for SmileWeights {
    fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        Weights::get(&self.tensors, name)
    }

    fn linear(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let plain = self.tensors.linear(x, name)?;
        if !self.tensors.contains_key(&format!("{name}.smile.gate.0")) {
            return Ok(plain);
        }
        let dims = x.dims().to_vec();
        let input = *dims.last().expect("a vector per token");
        let tokens: usize = dims[..dims.len() - 1].iter().product();
        let flat = x.reshape((tokens, input))?;
        let weights = self.routing(name, &flat)?;
        let mut y = plain.reshape((tokens, ()))?;
        for i in 0..weights.dim(1)? {
            let down = &self.tensors[&format!("{name}.smile.down.{i}")];
            let up = &self.tensors[&format!("{name}.smile.up.{i}")];
            let mut expert = flat.matmul(&down.t()?)?.matmul(&up.t()?)?;
            if let Some(bias) = self.tensors.get(&format!("{name}.smile.bias.{i}")) {
                expert = expert.broadcast_add(bias)?;
            }
            y = (y + expert.broadcast_mul(&weights.narrow(1, i, 1)?)?)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().expect("a vector per token") = y.dim(1)?;
        y.reshape(out_dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::digits::{Digits, PIXELS, Split};
    use crate::eval::vit::{VitConfig, forward};
    use crate::eval::{DemoAccuracy, DemoFamily, Domain, Fidelity, ModelTensors};
    use candle_core::Device;

    fn family() -> (tempfile::TempDir, DemoFamily) {
        let dir = tempfile::tempdir().unwrap();
        let family = DemoFamily::extract(dir.path()).unwrap();
        (dir, family)
    }

    fn open(path: PathBuf) -> Checkpoint {
        Checkpoint::open(path).unwrap()
    }

    #[test]
    fn one_expert_at_full_rank_is_that_fine_tune() {
        // One expert: its router weight is 1, the average of one model is that model, and a
        // full-rank expert adds back all of Δ.
        let (_dir, family) = family();
        let expert = open(family.expert(Domain::Rotated));
        let settings = SmileSettings {
            rank: 64,
            gate_k: 64,
            ..SmileSettings::default()
        };
        let upscaled = upscale(
            &open(family.base()),
            std::slice::from_ref(&expert),
            &settings,
        )
        .unwrap();
        assert_eq!(upscaled.layers.len(), 8, "{:?}", upscaled.layers);
        let (pixels, _) = Digits::load().samples(Domain::Rotated, Split::Test);
        let n = pixels.len() / PIXELS;
        let pixels = Tensor::from_vec(pixels, (n, PIXELS), &Device::Cpu).unwrap();
        let config = VitConfig::DEMO;
        let ours = forward(config, &upscaled.weights().unwrap(), &pixels).unwrap();
        let theirs = ModelTensors::from_checkpoint(&expert, config)
            .unwrap()
            .to_candle(config)
            .unwrap();
        let theirs = forward(config, &theirs, &pixels).unwrap();
        let worst = crate::test_support::max_difference(&ours, &theirs);
        assert!(worst < 1e-4, "logits differ by {worst}");
    }

    #[test]
    fn the_router_picks_the_expert_whose_subspace_the_input_lies_in() {
        let (_dir, family) = family();
        let experts: Vec<Checkpoint> = Domain::ALL
            .iter()
            .map(|d| open(family.expert(*d)))
            .collect();
        let upscaled = upscale(&open(family.base()), &experts, &SmileSettings::default()).unwrap();
        let weights = upscaled.weights().unwrap();
        let layer = "vit.encoder.layer.2.intermediate.dense";
        for expert in 0..experts.len() {
            // The expert's top right singular direction, scaled up: its own gate sees all of
            // it, the others only its projection on their subspaces.
            let gate = &weights.tensors[&format!("{layer}.smile.gate.{expert}")];
            let x = (gate.narrow(0, 0, 1).unwrap() * 10.0).unwrap();
            let routed = weights
                .routing(layer, &x)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let chosen: Vec<usize> = (0..experts.len()).filter(|&e| routed[0][e] > 0.0).collect();
            assert_eq!(chosen, [expert], "{routed:?}");
            assert_eq!(routed[0][expert], 1.0, "top-1 renormalises to 1");
        }
    }

    #[test]
    fn a_written_model_scores_as_the_one_in_memory() {
        let (dir, family) = family();
        let experts: Vec<Checkpoint> = Domain::ALL
            .iter()
            .map(|d| open(family.expert(*d)))
            .collect();
        let upscaled = upscale(&open(family.base()), &experts, &SmileSettings::default()).unwrap();
        let (total, added) = upscaled.parameters();
        // Per MLP layer and expert: gate 4 × in, down 8 × in, up out × 8, bias out.
        assert_eq!(
            added,
            4 * 4 * ((4 + 8) * 32 + 64 * 8 + 64 + (4 + 8) * 64 + 32 * 8 + 32)
        );
        assert_eq!(total - added, 35306);
        let out = dir.path().join("smile");
        upscaled.write(&out, None).unwrap();
        let accuracy = DemoAccuracy::new().unwrap();
        let in_memory = accuracy
            .score_weights(&upscaled.weights().unwrap(), Fidelity::Full)
            .unwrap();
        let on_disk = accuracy.score_folder(&out, Fidelity::Full).unwrap();
        assert_eq!(in_memory, on_disk);
        assert!(on_disk["mean/accuracy"] > 0.8, "{on_disk:?}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["smile"]["top_k"], 1);
        // Nothing is written over, and no staging folder is left beside it.
        assert!(matches!(
            upscaled.write(&out, None),
            Err(SmileError::Write(ModelFolderError::Exists { .. }))
        ));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
