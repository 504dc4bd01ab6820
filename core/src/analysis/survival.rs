//! The data-free merge preview: how much of each task vector survives in the merge a recipe
//! would produce, per layer, computed tensor by tensor in memory without writing anything.
//!
//! For the merged task vector `τ_m = θ_merged − θ_b` and each model's `τ_i`:
//! `projection = ⟨τ_m, τ_i⟩ / ‖τ_i‖²` (1: τ_i is kept whole along its own direction; 0: it is
//! gone) and `cosine = ⟨τ_m, τ_i⟩ / (‖τ_m‖ ‖τ_i‖)`; and how far the merge moves the base,
//! `‖τ_m‖` and `‖τ_m‖ / ‖θ_b‖`. All are built from sums, so a layer's and the whole model's
//! figures aggregate exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::AnalysisError;
use crate::backend::Backend;
use crate::checkpoint::{READ_AHEAD_BYTES, ReadAhead, TensorView};
use crate::job::Job;
use crate::layout::LayerKey;
use crate::merge::MethodInputs;
use crate::merge::kernel::zip_chunks;
use crate::merge::plan::{MergePlan, TaskAction};

/// Σ⟨τ_m, τ_i⟩, Σ‖τ_i‖² per model, Σ‖τ_m‖² and Σ‖θ_b‖².
#[derive(Clone, Debug, Default)]
struct SurvivalSums {
    dot: Vec<f64>,
    model_sq: Vec<f64>,
    merged_sq: f64,
    base_sq: f64,
}

impl SurvivalSums {
    fn new(models: usize) -> Self {
        Self {
            dot: vec![0.0; models],
            model_sq: vec![0.0; models],
            merged_sq: 0.0,
            base_sq: 0.0,
        }
    }

    fn add(&mut self, other: &Self) {
        for (a, b) in self.dot.iter_mut().zip(&other.dot) {
            *a += b;
        }
        for (a, b) in self.model_sq.iter_mut().zip(&other.model_sq) {
            *a += b;
        }
        self.merged_sq += other.merged_sq;
        self.base_sq += other.base_sq;
    }

    fn group(&self, name: String, block: Option<usize>) -> SurvivalGroup {
        SurvivalGroup {
            name,
            block,
            models: self.metrics(),
            merged_norm: self.merged_sq.sqrt(),
            merged_relative: (self.base_sq > 0.0).then(|| (self.merged_sq / self.base_sq).sqrt()),
        }
    }

    fn metrics(&self) -> Vec<Survived> {
        let merged = self.merged_sq.sqrt();
        self.dot
            .iter()
            .zip(&self.model_sq)
            .map(|(&dot, &sq)| Survived {
                projection: (sq > 0.0).then(|| dot / sq),
                cosine: (sq > 0.0 && merged > 0.0)
                    .then(|| (dot / (sq.sqrt() * merged)).clamp(-1.0, 1.0)),
            })
            .collect()
    }
}

/// How much of one model's task vector the merge keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Survived {
    pub projection: Option<f64>,
    pub cosine: Option<f64>,
}

/// Survival over a set of tensors, per model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurvivalGroup {
    pub name: String,
    /// The layer (block index) of a per-layer group.
    pub block: Option<usize>,
    pub models: Vec<Survived>,
    /// ‖τ_m‖: how far the merge moves these tensors from the base.
    pub merged_norm: f64,
    /// ‖τ_m‖ / ‖θ_b‖ (`None` where the base is all zeros).
    pub merged_relative: Option<f64>,
}

/// The preview of one recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Survival {
    pub method: String,
    pub recipe: String,
    pub random_seed: u64,
    /// The recipe's models, in the order of every per-model list.
    pub models: Vec<String>,
    pub whole_model: SurvivalGroup,
    pub layers: Vec<SurvivalGroup>,
    /// Tensors the merge copies or converts rather than merges.
    pub not_merged: Vec<String>,
    /// A quick estimate measured on at most this many elements of each tensor (its leading
    /// rows); `None`: every element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<usize>,
}

/// Merges every tensor of `plan` in memory on `backend` and measures what survives.
pub fn survival(
    plan: &MergePlan,
    backend: &dyn Backend,
    job: &Job,
) -> Result<Survival, AnalysisError> {
    survival_sampled(plan, backend, job, None)
}

/// [`survival`] measured on at most `sample` elements of each tensor when given: its leading
/// rows, merged as the whole tensor would be (element-wise methods and DARE's index-keyed
/// masks give those rows exactly; TIES-style top-k thresholds are estimated from them). A
/// quick preview of a multi-gigabyte family reads a few megabytes instead of every byte.
pub fn survival_sampled(
    plan: &MergePlan,
    backend: &dyn Backend,
    job: &Job,
    sample: Option<usize>,
) -> Result<Survival, AnalysisError> {
    let family = &plan.family;
    let base = family.base.as_ref().ok_or(AnalysisError::NoBase)?;
    let n = family.models.len();
    let mut whole = SurvivalSums::new(n);
    let mut layers: BTreeMap<Option<usize>, SurvivalSums> = BTreeMap::new();
    let mut not_merged = Vec::new();
    let merged_tasks: Vec<_> = plan
        .tasks
        .iter()
        .filter(|t| {
            let merges = matches!(t.action, TaskAction::Merge { .. }) && t.base.is_some();
            if !merges {
                not_merged.push(t.name.clone());
            }
            merges
        })
        .collect();
    // The shape measured of each tensor: all of it, or its leading rows.
    let shapes: Vec<Vec<usize>> = merged_tasks
        .iter()
        .map(|t| match (sample, t.shape.split_first()) {
            (Some(budget), Some((&rows, rest))) => {
                let row: usize = rest.iter().product::<usize>().max(1);
                let mut shape = t.shape.clone();
                shape[0] = (budget / row).max(1).min(rows);
                shape
            }
            _ => t.shape.clone(),
        })
        .collect();
    let total: u64 = shapes
        .iter()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum();
    job.progress.start_stage("previewing the merge", total);
    // Reading ahead pays for whole tensors; a sample reads a few rows of each.
    let steps = merged_tasks
        .iter()
        .map(|t| {
            if sample.is_some() {
                return Vec::new();
            }
            let mut step = vec![(&*base.checkpoint, t.base.expect("filtered"))];
            step.extend(
                t.models
                    .iter()
                    .map(|&(m, i)| (&*family.models[m].checkpoint, i)),
            );
            step
        })
        .collect();
    let ahead = ReadAhead::new(steps, READ_AHEAD_BYTES);
    let mut buffer = Vec::new();
    ahead.with_helper(|| -> Result<(), AnalysisError> {
        for (k, task) in merged_tasks.iter().enumerate() {
            job.check_cancelled()?;
            ahead.wait_loaded(k);
            let TaskAction::Merge { params, .. } = &task.action else {
                unreachable!("filtered to merges")
            };
            let shape = &shapes[k];
            let numel: usize = shape.iter().product();
            let verify = || -> Result<(), AnalysisError> {
                base.checkpoint
                    .verify_tensor(task.base.expect("filtered"))?;
                for &(m, i) in &task.models {
                    family.models[m].checkpoint.verify_tensor(i)?;
                }
                Ok(())
            };
            verify()?;
            let inputs = plan
                .inputs_of(task)
                .map_err(|message| AnalysisError::Merge {
                    tensor: task.name.clone(),
                    message,
                })?;
            let (b, models) = inputs.views(shape);
            let b = b.expect("filtered to tasks with a base");
            buffer.resize(numel, 0.0);
            let inputs = MethodInputs {
                tensor: &task.name,
                seed: plan.random_seed,
                base: Some(b.clone()),
                models: models.clone(),
                params,
            };
            plan.method
                .merge_on(backend, &inputs, &mut buffer)
                .map_err(|e| AnalysisError::Merge {
                    tensor: task.name.clone(),
                    message: e.0,
                })?;
            verify()?;
            let sums = tensor_survival(b, &models, &buffer);
            let mut by_family = SurvivalSums::new(n);
            by_family.merged_sq = sums.merged_sq;
            by_family.base_sq = sums.base_sq;
            for (slot, &(m, _)) in task.models.iter().enumerate() {
                by_family.dot[m] = sums.dot[slot];
                by_family.model_sq[m] = sums.model_sq[slot];
            }
            whole.add(&by_family);
            layers
                .entry(LayerKey::parse(&task.name).block)
                .or_insert_with(|| SurvivalSums::new(n))
                .add(&by_family);
            base.checkpoint.release(task.base.expect("filtered"));
            for &(m, i) in &task.models {
                family.models[m].checkpoint.release(i);
            }
            job.progress.add_done(numel as u64);
            ahead.done(k);
        }
        Ok(())
    })?;
    Ok(Survival {
        method: plan.method.spec().name.to_owned(),
        recipe: plan.recipe.to_yaml(),
        random_seed: plan.random_seed,
        models: family.models.iter().map(|m| m.label.clone()).collect(),
        whole_model: whole.group("whole model".to_owned(), None),
        layers: layers
            .iter()
            .map(|(block, sums)| {
                let name =
                    block.map_or_else(|| "outside blocks".to_owned(), |b| format!("layer {b}"));
                sums.group(name, *block)
            })
            .collect(),
        not_merged,
        sampled: sample,
    })
}

/// The sums of one tensor: merged values in `merged`, inputs as views.
fn tensor_survival(
    base: TensorView<'_>,
    models: &[TensorView<'_>],
    merged: &[f32],
) -> SurvivalSums {
    let m = models.len();
    let n = base.numel();
    let mut all = vec![base];
    all.extend_from_slice(models);
    let parts = zip_chunks(&all, n, |start, xs| {
        let (b, xs) = xs.split_first().expect("base first");
        let merged = &merged[start..start + b.len()];
        let mut part = SurvivalSums::new(m);
        // Non-finite weights count as no change, as in the analysis (`tensor_sums`): one NaN
        // must not turn every figure of its layer into NaN.
        let finite = |d: f32| if d.is_finite() { f64::from(d) } else { 0.0 };
        for (e, (&o, &b)) in merged.iter().zip(b.iter()).enumerate() {
            let tm = finite(o - b);
            part.merged_sq += tm * tm;
            part.base_sq += finite(b) * finite(b);
            for (i, x) in xs.iter().enumerate() {
                let ti = finite(x[e] - b);
                part.dot[i] += tm * ti;
                part.model_sq[i] += ti * ti;
            }
        }
        part
    });
    let mut sums = SurvivalSums::new(m);
    for part in &parts {
        sums.add(part);
    }
    sums
}
