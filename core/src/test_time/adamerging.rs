//! AdaMerging (Yang et al., ICLR 2024; ALGORITHMS.md §3.4): task arithmetic whose coefficients
//! are learned, `θ = θ_b + Σ_i λ_{i,g(t)} τ_i`, by minimising the summed mean prediction entropy
//! of the merged model on one unlabeled batch per task.
//!
//! - [`Granularity::Task`]: one λ per fine-tune (task-wise AdaMerging).
//! - [`Granularity::Layer`]: one λ per fine-tune and block (layer-wise AdaMerging). Tensors
//!   outside the blocks (embeddings, final norm, head) share block 0's λ, because that is what a
//!   mergekit gradient gives them (t = 0, ALGORITHMS.md §1.3): the learned model is then exactly
//!   the recipe [`AdaMerged::recipe`] writes, `task_arithmetic` with `lambda: 1` and a per-layer
//!   `weight` gradient per model, which `mergescope merge` runs and the Merge panel opens.
//!
//! fusion-bench (0.2.33, `config/method/adamerging/clip.yaml`) starts every λ at 0.3, does not
//! clamp them, and runs Adam at lr 1e-3 for 1000 steps of 16 images per task on CLIP models.
//! Its layer-wise variant has one λ per parameter tensor; mergescope's per block is what a
//! recipe's gradient (and the Merge panel's curves) can express. The demo's defaults are in
//! [`AdaMergingSettings::default`].

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};

use super::{AdaptError, Adaptation, Trace, Unlabeled, entropy, task_vectors};
use crate::Job;
use crate::eval::ModelTensors;
use crate::eval::vit::{self, VitConfig};
use crate::merge::recipe::{ModelEntry, ParamValue, Recipe, Scalar};

/// One coefficient per fine-tune, or per fine-tune and block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Task,
    Layer,
}

impl Granularity {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Task => "task-wise",
            Self::Layer => "layer-wise",
        }
    }
}

/// What AdaMerging learns and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaMergingSettings {
    pub granularity: Granularity,
    /// Every λ's starting value (task arithmetic's usual strength).
    pub init: f64,
    pub adaptation: Adaptation,
}

impl Default for AdaMergingSettings {
    /// Layer-wise from 0.3 at Adam's 1e-3, as fusion-bench; 200 steps instead of its 1000,
    /// since the demo ViT has 16 λ where CLIP ViT-B/32 has hundreds. (At 1e-2 the entropy
    /// falls further and the accuracy with it: `mergescope bench-methods` shows both.)
    fn default() -> Self {
        Self {
            granularity: Granularity::Layer,
            init: 0.3,
            adaptation: Adaptation {
                steps: 200,
                lr: 1e-3,
                batch: 16,
                seed: 0,
            },
        }
    }
}

/// The learned coefficients.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaMerged {
    pub granularity: Granularity,
    /// `lambdas[i][g]`: fine-tune i's coefficient in group g (one group when task-wise, one
    /// per block when layer-wise).
    pub lambdas: Vec<Vec<f32>>,
    /// The summed entropy it minimised.
    pub entropy: Trace,
    pub seconds: f64,
}

/// The group of tensor `name`: its block when layer-wise (block 0 outside the blocks, where a
/// gradient evaluates at t = 0), else the one group.
fn group(name: &str, granularity: Granularity) -> usize {
    match granularity {
        Granularity::Task => 0,
        Granularity::Layer => crate::layout::split_block(name).map_or(0, |(_, block)| block),
    }
}

/// Learns the coefficients of merging `experts` into `base` on `inputs`.
pub fn adamerge(
    base: &ModelTensors,
    experts: &[ModelTensors],
    config: VitConfig,
    inputs: &Unlabeled,
    settings: &AdaMergingSettings,
    job: &Job,
) -> Result<AdaMerged, AdaptError> {
    settings.adaptation.check(experts)?;
    let started = Instant::now();
    let groups = match settings.granularity {
        Granularity::Task => 1,
        Granularity::Layer => config.layers,
    };
    let tasks = experts.len();
    let stacks = TaskStacks::new(base, experts, config)?;
    let lambdas = Var::from_vec(
        vec![settings.init as f32; tasks * groups],
        (tasks, groups),
        &Device::Cpu,
    )?;
    let mut optimizer = settings.adaptation.optimizer(vec![lambdas.clone()])?;
    let stage = format!("AdaMerging ({})", settings.granularity.label());
    let trace = settings
        .adaptation
        .fit(inputs, &mut optimizer, job, &stage, |batches| {
            let merged = stacks.merge(lambdas.as_tensor(), settings.granularity)?;
            summed_entropy(config, &merged, batches)
        })?;
    Ok(AdaMerged {
        granularity: settings.granularity,
        lambdas: lambdas.as_tensor().to_vec2::<f32>()?,
        entropy: trace,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Σ over tasks of the mean entropy of the model's predictions on that task's batch.
pub(crate) fn summed_entropy(
    config: VitConfig,
    weights: &dyn vit::Weights,
    batches: &[Tensor],
) -> candle_core::Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for batch in batches {
        let h = entropy(&vit::forward(config, weights, batch)?)?;
        total = Some(match total {
            None => h,
            Some(t) => (t + h)?,
        });
    }
    total.ok_or_else(|| candle_core::Error::Msg("no unlabeled inputs".to_owned()))
}

/// Per tensor: the base, and the fine-tunes' task vectors stacked (tasks × elements).
struct TaskStacks {
    tensors: Vec<(String, Vec<usize>, Tensor, Tensor)>,
}

impl TaskStacks {
    fn new(
        base: &ModelTensors,
        experts: &[ModelTensors],
        config: VitConfig,
    ) -> Result<Self, AdaptError> {
        let tensors = config
            .tensors()
            .into_iter()
            .map(|(name, shape)| {
                let b = &base.values[&name];
                let stacked = task_vectors(base, experts, &name)?.concat();
                let base = Tensor::from_slice(b, b.len(), &Device::Cpu)?;
                let stacked = Tensor::from_vec(stacked, (experts.len(), b.len()), &Device::Cpu)?;
                Ok((name, shape, base, stacked))
            })
            .collect::<Result<_, AdaptError>>()?;
        Ok(Self { tensors })
    }

    /// `θ_b + Σ_i λ[i, g] τ_i` for every tensor, differentiable in `lambdas` (tasks × groups).
    fn merge(
        &self,
        lambdas: &Tensor,
        granularity: Granularity,
    ) -> candle_core::Result<BTreeMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|(name, shape, base, stacked)| {
                let column = lambdas.narrow(1, group(name, granularity), 1)?;
                let delta = stacked.broadcast_mul(&column)?.sum(0)?;
                Ok((name.clone(), (base + delta)?.reshape(shape.as_slice())?))
            })
            .collect()
    }
}

impl AdaMerged {
    /// The merged model's tensors (what the recipe merges to, up to float rounding).
    pub fn merged(
        &self,
        base: &ModelTensors,
        experts: &[ModelTensors],
        config: VitConfig,
    ) -> Result<ModelTensors, AdaptError> {
        let stacks = TaskStacks::new(base, experts, config)?;
        let lambdas = Tensor::new(self.lambdas.clone(), &Device::Cpu)?;
        let merged = stacks.merge(&lambdas, self.granularity)?;
        let values = merged
            .into_iter()
            .map(|(name, t)| Ok((name, t.flatten_all()?.to_vec1::<f32>()?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(ModelTensors { values })
    }

    /// Fine-tune i's `weight`: a number when task-wise, a per-layer gradient when layer-wise.
    pub fn weight(&self, i: usize) -> ParamValue {
        // f32's shortest decimal is what the λ was; f64's would print its binary noise.
        let number = |x: f32| Scalar::Number(x.to_string().parse().expect("a decimal"));
        match self.lambdas[i].as_slice() {
            [one] => ParamValue::Scalar(number(*one)),
            many => ParamValue::List(many.iter().map(|x| number(*x)).collect()),
        }
    }

    /// The learned merge as a mergekit recipe: `task_arithmetic` on `base` with `lambda: 1` and
    /// each of `experts` weighted by its λ, in float32 (the precision λ was learned in).
    pub fn recipe(&self, base: &str, experts: &[String]) -> String {
        // Field by field: `Recipe` keeps the keys it only recognises private.
        let mut recipe = Recipe::default();
        recipe.merge_method = "task_arithmetic".to_owned();
        recipe.base_model = Some(base.to_owned());
        recipe.models = experts
            .iter()
            .enumerate()
            .map(|(i, model)| ModelEntry {
                model: model.clone(),
                parameters: [("weight".to_owned(), self.weight(i))]
                    .into_iter()
                    .collect(),
            })
            .collect();
        recipe.parameters = [("lambda".to_owned(), ParamValue::Scalar(Scalar::Number(1.0)))]
            .into_iter()
            .collect();
        recipe.dtype = Some("float32".to_owned());
        format!(
            "# AdaMerging ({}): coefficients learned by minimising the prediction entropy on\n\
             # unlabeled inputs over {} steps (summed entropy {:.4} -> {:.4}).\n{}",
            self.granularity.label(),
            self.entropy.steps.len(),
            self.entropy.before,
            self.entropy.after,
            recipe.to_yaml()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checkpoint;
    use crate::eval::{DemoFamily, Domain};
    use rand::SeedableRng as _;

    fn family() -> (ModelTensors, Vec<ModelTensors>) {
        let dir = tempfile::tempdir().unwrap();
        let family = DemoFamily::extract(dir.path()).unwrap();
        let config = VitConfig::DEMO;
        let open = |p| ModelTensors::from_checkpoint(&Checkpoint::open(p).unwrap(), config);
        let base = open(family.base()).unwrap();
        let experts = Domain::ALL
            .iter()
            .map(|d| open(family.expert(*d)).unwrap())
            .collect();
        (base, experts)
    }

    fn quick(granularity: Granularity, seed: u64) -> AdaMergingSettings {
        AdaMergingSettings {
            granularity,
            adaptation: Adaptation {
                steps: 8,
                lr: 2e-2,
                batch: 8,
                seed,
            },
            ..AdaMergingSettings::default()
        }
    }

    #[test]
    fn learning_lowers_the_entropy_it_minimises_and_repeats_under_a_seed() {
        let (base, experts) = family();
        let inputs = Unlabeled::demo_test().unwrap();
        let config = VitConfig::DEMO;
        let run = |s: &AdaMergingSettings| {
            adamerge(&base, &experts, config, &inputs, s, &Job::default()).unwrap()
        };
        let layer = run(&quick(Granularity::Layer, 5));
        assert_eq!(layer.lambdas.len(), 4);
        assert!(layer.lambdas.iter().all(|l| l.len() == config.layers));
        assert!(
            layer.lambdas.iter().flatten().any(|&l| l != 0.3),
            "nothing was learned"
        );
        // The same batches, scored before and after: the learned λ give lower entropy.
        let batches = inputs
            .batches(64, &mut rand_chacha::ChaCha8Rng::seed_from_u64(99))
            .unwrap();
        let score = |merged: &AdaMerged| {
            let m = merged.merged(&base, &experts, config).unwrap();
            let w = m.to_candle(config).unwrap();
            summed_entropy(config, &w, &batches)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let start = AdaMerged {
            lambdas: vec![vec![0.3; config.layers]; 4],
            ..layer.clone()
        };
        assert!(
            score(&layer) < score(&start) - 0.01,
            "{} !< {}",
            score(&layer),
            score(&start)
        );
        assert_eq!(run(&quick(Granularity::Layer, 5)).lambdas, layer.lambdas);
        assert_ne!(run(&quick(Granularity::Layer, 6)).lambdas, layer.lambdas);
        let task = run(&quick(Granularity::Task, 5));
        assert!(task.lambdas.iter().all(|l| l.len() == 1));
    }

    #[test]
    fn the_recipe_gives_each_model_its_coefficients() {
        let learned = AdaMerged {
            granularity: Granularity::Layer,
            lambdas: vec![vec![0.25, 0.5, 0.125, 1.0], vec![0.3, 0.3, 0.3, 0.3]],
            entropy: Trace {
                steps: vec![2.0, 1.0],
                before: 2.0,
                after: 1.0,
            },
            seconds: 0.0,
        };
        let text = learned.recipe("../base", &["../a".to_owned(), "../b".to_owned()]);
        let recipe = Recipe::from_yaml(&text, std::path::Path::new("r.yml")).unwrap();
        assert_eq!(recipe.merge_method, "task_arithmetic");
        assert_eq!(recipe.models[0].parameters["weight"], learned.weight(0));
        assert_eq!(
            recipe.models[1].parameters["weight"].to_string(),
            "[0.3, 0.3, 0.3, 0.3]"
        );
        assert!(text.starts_with("# AdaMerging (layer-wise)"), "{text}");
        let task = AdaMerged {
            granularity: Granularity::Task,
            lambdas: vec![vec![0.7]],
            ..learned
        };
        assert_eq!(task.weight(0), ParamValue::Scalar(Scalar::Number(0.7)));
    }
}
