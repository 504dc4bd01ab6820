//! WEMoE, weight-ensembling mixture of experts (Tang et al., ICML 2024; ALGORITHMS.md §3.5):
//! the most moved MLPs become routed modules `W(x) = W_b + Σ_i r_i(x) τ_i`, everything else is
//! task arithmetic `θ_b + λ Σ_i τ_i`. The router of each routed MLP (fusion-bench's
//! `Depth_2_Gate`: `fc2(relu(fc1(h)))`, fc1 h → h, fc2 h → tasks) reads the MLP's input token by
//! token; its outputs are averaged over the sample's tokens, so each image gets one set of
//! weights (fusion-bench with `batch_reduce: false`: a prediction never depends on the other
//! images of its batch). The routers alone are trained, by minimising the prediction entropy on
//! unlabeled inputs; they start at fc2's bias = λ with weights drawn from N(0, 0.01²), so the
//! untrained model is task arithmetic at λ.
//!
//! Which MLPs are routed: the blocks ranked by `mean_i ‖τ_{i,MLP}‖ / ‖θ_{b,MLP}‖` (both linear
//! layers, weights and biases: §3.5's parameter variation, the Sensitivity panel's relative
//! change), the top `critical` share of them (at least one).
//!
//! [`Wemoe::unload`] merges and unloads: each routed MLP is fixed at its routing averaged over
//! a set of inputs, which leaves a plain model of the base's shape.
//!
//! Tensor layout of a routed block `P` (e.g. `vit.encoder.layer.3`), expert `i` counting the
//! fine-tunes from 0, `M` each of `intermediate.dense` and `output.dense`:
//!
//! | tensor | shape | holds |
//! |---|---|---|
//! | `P.M.weight`, `P.M.bias` | as the base | the base's |
//! | `P.M.wemoe.i.weight`, `P.M.wemoe.i.bias` | as the base | `τ_i` of that tensor |
//! | `P.wemoe.router.fc1.weight`, `….bias` | h × h, h | the router's hidden layer |
//! | `P.wemoe.router.fc2.weight`, `….bias` | tasks × h, tasks | its output layer |
//!
//! The safetensors metadata holds `wemoe_experts`, and `config.json` a `wemoe` block.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal};

use super::adamerging::summed_entropy;
use super::{AdaptError, Adaptation, Trace, Unlabeled, task_vectors};
use crate::Job;
use crate::checkpoint::Checkpoint;
use crate::eval::ModelTensors;
use crate::eval::vit::{VitConfig, Weights};
use crate::export::model_folder::{self, F32Tensors, write_model_folder};

/// The two linear layers of a block's MLP.
const MLP: [&str; 2] = ["intermediate.dense", "output.dense"];

/// A routed block's prefix and one weight per expert.
pub type Routing = (String, Vec<f32>);

/// What to route and how to train it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WemoeSettings {
    /// Task arithmetic's λ for every tensor not routed, and each router's starting output.
    pub init_lambda: f64,
    /// Share of the blocks' MLPs routed, most moved first (at least one).
    pub critical: f64,
    pub adaptation: Adaptation,
}

impl Default for WemoeSettings {
    /// λ 0.3 as fusion-bench; every MLP routed, as the paper does; Adam at 1e-3 (fusion-bench
    /// uses 1e-4 for 1000 steps on CLIP) for 200 steps of 16 images per task.
    fn default() -> Self {
        Self {
            init_lambda: 0.3,
            critical: 1.0,
            adaptation: Adaptation {
                steps: 200,
                lr: 1e-3,
                batch: 16,
                seed: 0,
            },
        }
    }
}

/// A WEMoE model in memory.
#[derive(Clone, Debug)]
pub struct Wemoe {
    pub tensors: F32Tensors,
    pub experts: usize,
    /// The routed blocks' prefixes (`vit.encoder.layer.3`), most moved first.
    pub routed: Vec<String>,
    pub settings: WemoeSettings,
    /// The summed entropy it minimised.
    pub entropy: Trace,
    pub seconds: f64,
}

/// Every block's MLP with its parameter variation, most moved first.
pub fn mlp_variation(
    base: &ModelTensors,
    experts: &[ModelTensors],
    config: VitConfig,
) -> Vec<(String, f64)> {
    let norm = |values: &mut dyn Iterator<Item = f64>| values.map(|x| x * x).sum::<f64>().sqrt();
    let mut ranked: Vec<(String, f64)> = (0..config.layers)
        .map(|l| {
            let prefix = format!("vit.encoder.layer.{l}");
            let names: Vec<String> = MLP
                .iter()
                .flat_map(|m| ["weight", "bias"].map(|p| format!("{prefix}.{m}.{p}")))
                .collect();
            let base_norm = norm(
                &mut names
                    .iter()
                    .flat_map(|n| base.values[n].iter().map(|&x| f64::from(x))),
            );
            let mean = experts
                .iter()
                .map(|e| {
                    norm(&mut names.iter().flat_map(|n| {
                        e.values[n]
                            .iter()
                            .zip(&base.values[n])
                            .map(|(&x, &b)| f64::from(x) - f64::from(b))
                    })) / base_norm
                })
                .sum::<f64>()
                / experts.len() as f64;
            (prefix, mean)
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}

/// Whether `name` is a tensor of one of the `routed` blocks' MLPs.
fn in_routed_mlp(name: &str, routed: &[String]) -> bool {
    routed.iter().any(|p| {
        name.strip_prefix(p.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| MLP.iter().any(|m| rest.starts_with(&format!("{m}."))))
    })
}

/// Builds the WEMoE model of `base` and its fine-tunes and trains its routers on `inputs`.
pub fn upscale(
    base: &ModelTensors,
    experts: &[ModelTensors],
    config: VitConfig,
    inputs: &Unlabeled,
    settings: &WemoeSettings,
    job: &Job,
) -> Result<Wemoe, AdaptError> {
    settings.adaptation.check(experts)?;
    if !(settings.critical > 0.0 && settings.critical <= 1.0) {
        return Err(AdaptError::Settings(format!(
            "the share of MLPs to route must be in (0, 1], not {}",
            settings.critical
        )));
    }
    let started = Instant::now();
    let ranked = mlp_variation(base, experts, config);
    let count = ((settings.critical * ranked.len() as f64).ceil() as usize).clamp(1, ranked.len());
    let routed: Vec<String> = ranked.into_iter().take(count).map(|(p, _)| p).collect();
    let lambda = settings.init_lambda as f32;
    let mut tensors = F32Tensors::new();
    for (name, shape) in config.tensors() {
        let b = &base.values[&name];
        let deltas = task_vectors(base, experts, &name)?;
        if in_routed_mlp(&name, &routed) {
            let (layer, part) = name.rsplit_once('.').expect("weight or bias");
            for (i, delta) in deltas.into_iter().enumerate() {
                tensors.insert(format!("{layer}.wemoe.{i}.{part}"), (shape.clone(), delta));
            }
            tensors.insert(name, (shape, b.clone()));
        } else {
            let mut merged = b.clone();
            for delta in &deltas {
                for (m, d) in merged.iter_mut().zip(delta) {
                    *m += lambda * d;
                }
            }
            tensors.insert(name, (shape, merged));
        }
    }
    let (h, t) = (config.hidden, experts.len());
    let mut rng = ChaCha8Rng::seed_from_u64(settings.adaptation.seed);
    let normal = Normal::new(0.0f32, 0.01).expect("valid");
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| normal.sample(&mut rng)).collect() };
    let mut vars = BTreeMap::new();
    for prefix in &routed {
        let router = format!("{prefix}.wemoe.router");
        for (name, shape, values) in [
            ("fc1.weight", vec![h, h], draw(h * h)),
            ("fc1.bias", vec![h], vec![0.0; h]),
            ("fc2.weight", vec![t, h], draw(t * h)),
            ("fc2.bias", vec![t], vec![lambda; t]),
        ] {
            let var = Var::from_vec(values, shape.as_slice(), &Device::Cpu)?;
            vars.insert(format!("{router}.{name}"), var);
        }
    }
    let mut candle = model_folder::to_candle(&tensors)?;
    // The same storage: each optimiser step updates what the forward pass reads.
    candle.extend(vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())));
    let weights = WemoeWeights::from_candle(candle, experts.len());
    let mut optimizer = settings
        .adaptation
        .optimizer(vars.values().cloned().collect())?;
    let trace =
        settings
            .adaptation
            .fit(inputs, &mut optimizer, job, "WEMoE routers", |batches| {
                summed_entropy(config, &weights, batches)
            })?;
    for (name, var) in vars {
        let tensor = var.as_tensor();
        tensors.insert(
            name,
            (
                tensor.dims().to_vec(),
                tensor.flatten_all()?.to_vec1::<f32>()?,
            ),
        );
    }
    Ok(Wemoe {
        tensors,
        experts: experts.len(),
        routed,
        settings: *settings,
        entropy: trace,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Wemoe {
    /// Parameters of the model, and how many more than the base it has (the routed MLPs' task
    /// vectors and the routers).
    pub fn parameters(&self) -> (usize, usize) {
        model_folder::parameters(&self.tensors, ".wemoe.")
    }

    /// The tensors on the CPU device: what the forward pass reads.
    pub fn weights(&self) -> candle_core::Result<WemoeWeights> {
        WemoeWeights::new(&self.tensors, self.experts)
    }

    /// Merges and unloads: each routed MLP fixed at its routing averaged over every input of
    /// `inputs`, so the result is a plain model of the base's tensors. Also returns those mean
    /// routings, per routed block.
    pub fn unload(
        &self,
        config: VitConfig,
        inputs: &Unlabeled,
    ) -> candle_core::Result<(ModelTensors, Vec<Routing>)> {
        let weights = self.weights()?.recording();
        for pixels in &inputs.tasks {
            crate::eval::vit::forward(config, &weights, pixels)?;
        }
        let seen = weights.recorded.take().unwrap_or_default();
        let means: Vec<Routing> = weights
            .routed
            .iter()
            .map(|prefix| {
                let rows: Vec<&Tensor> = seen
                    .iter()
                    .filter(|(p, _)| p == prefix)
                    .map(|(_, r)| r)
                    .collect();
                let all = Tensor::cat(&rows, 0)?;
                Ok((prefix.clone(), all.mean(0)?.to_vec1::<f32>()?))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok((self.fixed(&means), means))
    }

    /// The plain model with each routed block's MLP at the given routing weights.
    pub fn fixed(&self, routing: &[Routing]) -> ModelTensors {
        let values = self
            .tensors
            .iter()
            .filter(|(name, _)| !name.contains(".wemoe."))
            .map(|(name, (_, values))| {
                let mut values = values.clone();
                let routed = routing
                    .iter()
                    .find(|(p, _)| in_routed_mlp(name, std::slice::from_ref(p)));
                if let Some((_, weights)) = routed {
                    let (layer, part) = name.rsplit_once('.').expect("weight or bias");
                    for (i, w) in weights.iter().enumerate() {
                        let (_, delta) = &self.tensors[&format!("{layer}.wemoe.{i}.{part}")];
                        for (v, d) in values.iter_mut().zip(delta) {
                            *v += w * d;
                        }
                    }
                }
                (name.clone(), values)
            })
            .collect();
        ModelTensors { values }
    }

    /// Writes `model.safetensors` and `config.json` (the base's with a `wemoe` block) into
    /// `out`, which must not exist; nothing half-written is ever left there.
    pub fn write(&self, out: &Path, base_config: Option<&[u8]>) -> Result<(), AdaptError> {
        let metadata = [("wemoe_experts".to_owned(), self.experts.to_string())]
            .into_iter()
            .collect();
        let a = &self.settings.adaptation;
        let block = serde_json::json!({
            "experts": self.experts,
            "init_lambda": self.settings.init_lambda,
            "critical": self.settings.critical,
            "routed": self.routed,
            "router_hidden_layers": 2,
            "steps": a.steps,
            "lr": a.lr,
            "batch": a.batch,
            "seed": a.seed,
            "layout": "docs/methods-beyond-mergekit.md#wemoe",
        });
        let config = model_folder::config_with(base_config, "wemoe", block);
        write_model_folder(out, &self.tensors, metadata, &config)?;
        Ok(())
    }

    /// Merges and unloads over `inputs` ([`Self::unload`]) and writes the plain model into
    /// `out` as [`Self::write`] does, with the mean routings under `wemoe_unloaded` in
    /// `config.json`. Returns those routings.
    pub fn write_unloaded(
        &self,
        out: &Path,
        base_config: Option<&[u8]>,
        config: VitConfig,
        inputs: &Unlabeled,
    ) -> Result<Vec<Routing>, AdaptError> {
        let (plain, means) = self.unload(config, inputs)?;
        let tensors = plain
            .values
            .into_iter()
            .map(|(name, values)| {
                let shape = self.tensors[&name].0.clone();
                (name, (shape, values))
            })
            .collect();
        let block = serde_json::json!({ "routed": self.routed, "mean_routing": means });
        let config = model_folder::config_with(base_config, "wemoe_unloaded", block);
        let metadata = [("format".to_owned(), "pt".to_owned())].into();
        write_model_folder(out, &tensors, metadata, &config)?;
        Ok(means)
    }
}

/// A WEMoE model's tensors, for the forward pass ([`Weights`]): routed MLPs mix their experts
/// per image.
#[derive(Debug)]
pub struct WemoeWeights {
    pub tensors: BTreeMap<String, Tensor>,
    pub experts: usize,
    /// The routed blocks' prefixes.
    pub routed: Vec<String>,
    /// Every routing computed, per block, when recording ([`Self::recording`]).
    recorded: std::cell::RefCell<Option<Vec<(String, Tensor)>>>,
}

impl WemoeWeights {
    fn new(tensors: &F32Tensors, experts: usize) -> candle_core::Result<Self> {
        Ok(Self::from_candle(
            model_folder::to_candle(tensors)?,
            experts,
        ))
    }

    /// The routed blocks are those with a router.
    fn from_candle(tensors: BTreeMap<String, Tensor>, experts: usize) -> Self {
        let routed = tensors
            .keys()
            .filter_map(|n| n.strip_suffix(".wemoe.router.fc1.weight"))
            .map(str::to_owned)
            .collect();
        Self {
            tensors,
            experts,
            routed,
            recorded: std::cell::RefCell::new(None),
        }
    }

    fn recording(self) -> Self {
        self.recorded.replace(Some(Vec::new()));
        self
    }

    /// Every float tensor of a WEMoE checkpoint; `None` when the checkpoint is not one.
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Option<candle_core::Result<Self>> {
        let experts = model_folder::metadata_number(checkpoint, "wemoe_experts")?;
        let tensors = model_folder::read_f32(checkpoint);
        Some(Self::new(&tensors, experts))
    }

    /// The routing weights of block `prefix` for `x` (images × tokens × h): the router's
    /// output per token, averaged over each image's tokens (images × experts).
    pub fn routing(&self, prefix: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        let router = |part: &str| self.get(&format!("{prefix}.wemoe.router.{part}"));
        let hidden = x
            .broadcast_matmul(&router("fc1.weight")?.t()?)?
            .broadcast_add(&router("fc1.bias")?)?
            .relu()?;
        hidden
            .broadcast_matmul(&router("fc2.weight")?.t()?)?
            .broadcast_add(&router("fc2.bias")?)?
            .mean(1)
    }

    /// `x (W_b + Σ_i r_i τ_i)ᵀ + (b_b + Σ_i r_i τb_i)` with one routing row per image.
    fn mixed(&self, x: &Tensor, layer: &str, routing: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = Weights::linear(&self.tensors, x, layer)?;
        for i in 0..self.experts {
            let expert = Weights::linear(&self.tensors, x, &format!("{layer}.wemoe.{i}"))?;
            let r = routing.narrow(1, i, 1)?.unsqueeze(2)?;
            y = (y + expert.broadcast_mul(&r)?)?;
        }
        Ok(y)
    }
}

impl Weights for WemoeWeights {
    fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        Weights::get(&self.tensors, name)
    }

    fn mlp(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        if !self.routed.iter().any(|p| p == prefix) {
            return Weights::mlp(&self.tensors, x, prefix);
        }
        let routing = self.routing(prefix, x)?;
        if let Some(seen) = self.recorded.borrow_mut().as_mut() {
            seen.push((prefix.to_owned(), routing.detach()));
        }
        let hidden = self
            .mixed(x, &format!("{prefix}.intermediate.dense"), &routing)?
            .gelu_erf()?;
        self.mixed(&hidden, &format!("{prefix}.output.dense"), &routing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::vit::forward;
    use crate::eval::{DemoAccuracy, DemoFamily, Domain, Fidelity};
    use crate::test_support::max_difference;

    fn family() -> (ModelTensors, Vec<ModelTensors>) {
        let dir = tempfile::tempdir().unwrap();
        let family = DemoFamily::extract(dir.path()).unwrap();
        let open = |p| {
            ModelTensors::from_checkpoint(&Checkpoint::open(p).unwrap(), VitConfig::DEMO).unwrap()
        };
        let experts = Domain::ALL
            .iter()
            .map(|d| open(family.expert(*d)))
            .collect();
        (open(family.base()), experts)
    }

    fn quick(steps: usize, critical: f64) -> WemoeSettings {
        WemoeSettings {
            critical,
            adaptation: Adaptation {
                steps,
                lr: 1e-2,
                batch: 8,
                seed: 1,
            },
            ..WemoeSettings::default()
        }
    }

    #[test]
    fn routers_give_one_weight_per_image_and_expert() {
        let (base, experts) = family();
        let config = VitConfig::DEMO;
        let inputs = Unlabeled::demo_test().unwrap();
        let moe = upscale(
            &base,
            &experts,
            config,
            &inputs,
            &quick(3, 0.5),
            &Job::default(),
        )
        .unwrap();
        assert_eq!(moe.routed.len(), 2);
        let ranked = mlp_variation(&base, &experts, config);
        assert_eq!(moe.routed, [ranked[0].0.clone(), ranked[1].0.clone()]);
        assert!(ranked[0].1 >= ranked[1].1 && ranked[1].1 > 0.0);
        let weights = moe.weights().unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 17, config.hidden), &Device::Cpu).unwrap();
        let routing = weights.routing(&moe.routed[0], &x).unwrap();
        assert_eq!(routing.dims(), [5, 4]);
        let (_, added) = moe.parameters();
        let (h, i) = (config.hidden, config.intermediate);
        let per_block = 4 * (i * h + i + h * i + h) + (h * h + h + 4 * h + 4);
        assert_eq!(added, 2 * per_block);
        assert_eq!(moe.entropy.steps.len(), 3);
    }

    #[test]
    fn a_constant_router_unloads_to_the_same_model_and_training_lowers_entropy() {
        let (base, experts) = family();
        let config = VitConfig::DEMO;
        let inputs = Unlabeled::demo_test().unwrap();
        let mut moe = upscale(
            &base,
            &experts,
            config,
            &inputs,
            &quick(15, 1.0),
            &Job::default(),
        )
        .unwrap();
        assert!(moe.entropy.after < moe.entropy.before, "{:?}", moe.entropy);
        // Routing that does not depend on the input: unloading it changes nothing.
        let pixels = inputs.tasks[1].narrow(0, 0, 32).unwrap();
        for prefix in moe.routed.clone() {
            let (_, w) = moe
                .tensors
                .get_mut(&format!("{prefix}.wemoe.router.fc2.weight"))
                .unwrap();
            w.fill(0.0);
            let (_, b) = moe
                .tensors
                .get_mut(&format!("{prefix}.wemoe.router.fc2.bias"))
                .unwrap();
            b.copy_from_slice(&[0.1, 0.6, -0.2, 0.35]);
        }
        let routed = forward(config, &moe.weights().unwrap(), &pixels).unwrap();
        let (plain, means) = moe.unload(config, &inputs).unwrap();
        assert!(means.iter().all(|(_, m)| {
            m.iter()
                .zip([0.1, 0.6, -0.2, 0.35])
                .all(|(a, b)| (a - b).abs() < 1e-4)
        }));
        assert_eq!(plain.values.len(), config.tensors().len());
        let unloaded = forward(config, &plain.to_candle(config).unwrap(), &pixels).unwrap();
        assert!(max_difference(&routed, &unloaded) < 1e-4);
        // The written model scores as the one in memory.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("wemoe");
        moe.write(&out, None).unwrap();
        let accuracy = DemoAccuracy::new().unwrap();
        let on_disk = accuracy
            .score_folder(&out, Fidelity::Subsample(40))
            .unwrap();
        let in_memory = accuracy
            .score_weights(&moe.weights().unwrap(), Fidelity::Subsample(40))
            .unwrap();
        assert_eq!(on_disk, in_memory);
    }
}
