//! The demo router (PARETO.md §6, PWEMoE with linear scalarisation): the preference map
//! trained on the demo family's labelled training images. The merged weights
//! θ(w) = θ_b + Σ_i c_i(w) τ_i, with c_i the per-tensor weight of model i's gradient at the
//! tensor's depth, are built as candle tensors, so the weighted cross-entropy's gradient
//! reaches the router's A and b; the router is then "unloaded" to a plain merge per preference.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal};

use super::ParetoError;
use super::map::{MapKind, PreferenceMap, RouterSettings};
use super::search::Outcome;
use super::simplex;
use crate::Job;
use crate::eval::digits::{Digits, Domain, PIXELS, Split};
use crate::eval::model::ModelTensors;
use crate::eval::vit::{self, VitConfig};
use crate::layout::Layout;
use crate::merge::plan::{MergePlan, PlanOptions};

/// Training images per domain in each step.
pub const BATCH_PER_DOMAIN: usize = 16;

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands errors in
fn candle(e: candle_core::Error) -> ParetoError {
    ParetoError::Router(e.to_string())
}

/// One tensor of the merge as the router sees it.
struct RoutedTensor {
    name: String,
    shape: Vec<usize>,
    base: Tensor,
    /// (models, numel).
    task_vectors: Tensor,
    /// (models, coefficients): model i's weight at this tensor is row i · r.
    basis: Tensor,
}

/// Trains the demo router for `outcome`'s space (task arithmetic on a family built on the demo
/// base, objectives the four domains' accuracies), the recipes resolving from `recipe_file`,
/// from PWEMoE's initialisation (small random A, b at the equal point).
pub fn train_demo_router(
    outcome: &Outcome,
    recipe_file: &Path,
    cwd: &Path,
    settings: &RouterSettings,
    job: &Job,
) -> Result<PreferenceMap, ParetoError> {
    train(outcome, recipe_file, cwd, settings, None, job)
}

/// [`train_demo_router`] from another map's router (the data-free one, say): the labelled data
/// refine what the surrogates found instead of starting over.
pub fn train_demo_router_from(
    start: &PreferenceMap,
    outcome: &Outcome,
    recipe_file: &Path,
    cwd: &Path,
    settings: &RouterSettings,
    job: &Job,
) -> Result<PreferenceMap, ParetoError> {
    if start.weights.len() != outcome.space.dimension()
        || start.objectives.len() != outcome.objectives.len()
    {
        return Err(ParetoError::Settings(
            "the starting map was learned for another space or other objectives".to_owned(),
        ));
    }
    train(outcome, recipe_file, cwd, settings, Some(start), job)
}

fn train(
    outcome: &Outcome,
    recipe_file: &Path,
    cwd: &Path,
    settings: &RouterSettings,
    start: Option<&PreferenceMap>,
    job: &Job,
) -> Result<PreferenceMap, ParetoError> {
    settings.check()?;
    let space = &outcome.space;
    if space.template.merge_method != "task_arithmetic" {
        return Err(ParetoError::Settings(format!(
            "the demo router learns task-arithmetic coefficients; the recipe is {}",
            space.template.merge_method
        )));
    }
    if space.template.parameters.contains_key("lambda") {
        return Err(ParetoError::Settings(
            "the demo router learns the models' weights with lambda = 1; remove `lambda` from the recipe"
                .to_owned(),
        ));
    }
    let domains: Vec<String> = Domain::ALL
        .iter()
        .map(|d| format!("{}/accuracy", d.name()))
        .collect();
    let names: Vec<&str> = outcome.objectives.iter().map(|o| o.name.as_str()).collect();
    if names != domains.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(ParetoError::Settings(format!(
            "the demo router needs the demo objective (the four domains' accuracies); the search scored {}",
            names.join(", ")
        )));
    }
    let plan = MergePlan::new(
        space.template.clone(),
        recipe_file,
        &PlanOptions {
            cwd: cwd.to_path_buf(),
            random_seed: Some(0),
            truncate_vocab: false,
        },
    )
    .map_err(|e| ParetoError::Evaluation(crate::one_line(&e.to_string())))?;
    let config = VitConfig::DEMO;
    let base_member =
        plan.family.base.as_ref().ok_or_else(|| {
            ParetoError::Settings("task arithmetic needs a base model".to_owned())
        })?;
    let not_demo = |e: crate::eval::EvalError| ParetoError::Settings(e.to_string());
    let base = ModelTensors::from_checkpoint(&base_member.checkpoint, config).map_err(not_demo)?;
    let models: Vec<ModelTensors> = plan
        .family
        .models
        .iter()
        .map(|m| ModelTensors::from_checkpoint(&m.checkpoint, config).map_err(not_demo))
        .collect::<Result<_, _>>()?;
    if models.len() != space.models() {
        return Err(ParetoError::Settings(format!(
            "the recipe merges {} models but the search weighed {}",
            models.len(),
            space.models()
        )));
    }
    let layout = Layout::of_checkpoint(&base_member.checkpoint);
    let (n, d, m, k) = (
        models.len(),
        space.dimension(),
        outcome.objectives.len(),
        space.groups,
    );
    let device = Device::Cpu;
    let tensors = config
        .tensors()
        .into_iter()
        .map(|(name, shape)| {
            let numel: usize = shape.iter().product();
            let base_values = &base.values[&name];
            let mut deltas = Vec::with_capacity(n * numel);
            for model in &models {
                deltas.extend(
                    model.values[&name]
                        .iter()
                        .zip(base_values)
                        .map(|(a, b)| a - b),
                );
            }
            let depth = space.depth_basis(layout.depth(&name));
            let mut basis = vec![0f32; n * d];
            for i in 0..n {
                for (g, factor) in depth.iter().enumerate() {
                    basis[i * d + i * k + g] = *factor as f32;
                }
            }
            Ok(RoutedTensor {
                base: Tensor::from_slice(base_values, numel, &device)?,
                task_vectors: Tensor::from_vec(deltas, (n, numel), &device)?,
                basis: Tensor::from_vec(basis, (n, d), &device)?,
                name,
                shape,
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(candle)?;

    // PWEMoE's initialisation: small random A, b at the equal point.
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let normal = Normal::new(0.0f32, 0.01).expect("valid");
    let equal = 0.3f64.clamp(space.lower, space.upper) as f32;
    let (a_init, b_init): (Vec<f32>, Vec<f32>) = match start {
        Some(map) => (
            map.weights.iter().flatten().map(|&v| v as f32).collect(),
            map.bias.iter().map(|&v| v as f32).collect(),
        ),
        None => (
            (0..d * m).map(|_| normal.sample(&mut rng)).collect(),
            vec![equal; d],
        ),
    };
    let a = Var::from_vec(a_init, (d, m), &device).map_err(candle)?;
    let b = Var::from_vec(b_init, (d, 1), &device).map_err(candle)?;
    let mut optimizer = AdamW::new(
        vec![a.clone(), b.clone()],
        ParamsAdamW {
            lr: settings.learning_rate,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )
    .map_err(candle)?;

    let digits = Digits::load();
    let train: Vec<(Vec<f32>, Vec<u8>)> = Domain::ALL
        .iter()
        .map(|&domain| digits.samples(domain, Split::Train))
        .collect();
    let preferences = simplex::dirichlet(m, settings.steps, settings.seed ^ 0x5eed);
    job.progress
        .start_stage("training the demo router", settings.steps as u64);
    for (step, w) in preferences.iter().enumerate() {
        job.check_cancelled().map_err(|_| ParetoError::Cancelled)?;
        optimizer.set_learning_rate(settings.rate_at(step));
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let preference = Tensor::from_vec(w32, (m, 1), &device).map_err(candle)?;
        let routed = a
            .as_tensor()
            .matmul(&preference)
            .and_then(|r| r.broadcast_add(b.as_tensor()))
            .map_err(candle)?;
        let mut weights = BTreeMap::new();
        for t in &tensors {
            let merged = t
                .basis
                .matmul(&routed)
                .and_then(|c| c.t()?.matmul(&t.task_vectors))
                .and_then(|delta| delta.squeeze(0)?.add(&t.base)?.reshape(t.shape.as_slice()))
                .map_err(candle)?;
            weights.insert(t.name.clone(), merged);
        }
        let mut loss = Tensor::zeros((), DType::F32, &device).map_err(candle)?;
        for ((pixels, labels), &wj) in train.iter().zip(w) {
            let count = labels.len();
            let mut x = Vec::with_capacity(BATCH_PER_DOMAIN * PIXELS);
            let mut y = Vec::with_capacity(BATCH_PER_DOMAIN);
            for _ in 0..BATCH_PER_DOMAIN {
                let i = rng.random_range(0..count);
                x.extend_from_slice(&pixels[i * PIXELS..(i + 1) * PIXELS]);
                y.push(u32::from(labels[i]));
            }
            let x = Tensor::from_vec(x, (BATCH_PER_DOMAIN, PIXELS), &device).map_err(candle)?;
            let y = Tensor::from_vec(y, BATCH_PER_DOMAIN, &device).map_err(candle)?;
            let logits = vit::forward(config, &weights, &x).map_err(candle)?;
            let ce = candle_nn::loss::cross_entropy(&logits, &y).map_err(candle)?;
            loss = (loss + (ce * wj).map_err(candle)?).map_err(candle)?;
        }
        optimizer.backward_step(&loss).map_err(candle)?;
        job.progress.add_done(1);
    }
    let read = |v: &Var| -> Result<Vec<f64>, ParetoError> {
        Ok(v.as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(candle)?
            .into_iter()
            .map(f64::from)
            .collect())
    };
    let (a, b) = (read(&a)?, read(&b)?);
    let mut map = PreferenceMap::with_router(outcome, MapKind::DemoRouter);
    map.weights = a.chunks(m).map(<[f64]>::to_vec).collect();
    map.bias = b;
    Ok(map)
}
