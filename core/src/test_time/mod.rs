//! Merges that learn from a little **unlabeled** data at test time, by minimising the entropy of
//! the merged model's predictions (ALGORITHMS.md §3.4–3.5, docs/methods-beyond-mergekit.md):
//!
//! - [`adamerging`]: AdaMerging (Yang et al., ICLR 2024) learns task arithmetic's coefficients,
//!   one per task or one per task and layer; the result is a plain recipe.
//! - [`wemoe`]: WEMoE (Tang et al., ICML 2024) turns the most moved MLPs into weight-ensembling
//!   mixtures whose input-conditioned router is what is learned.
//!
//! Both need a forward and backward pass, so both run the demo family's ViT in candle
//! ([`crate::eval::vit`]) on the demo's unlabeled test images ([`Unlabeled`]); the labels are
//! never read. They share the loss ([`entropy`]), the seeded batches and the optimiser loop
//! ([`Adaptation`]).

pub mod adamerging;
pub mod wemoe;

use candle_core::{D, Device, Tensor};
use rand::SeedableRng as _;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use crate::Job;
use crate::eval::digits::{Digits, Domain, PIXELS, Split};
use crate::eval::vit::VitConfig;
use crate::eval::{EvalError, ModelTensors};

/// How the learned parameters are fitted: Adam (AdamW without weight decay) on the sum over
/// tasks of the mean prediction entropy of one batch per task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adaptation {
    pub steps: usize,
    pub lr: f64,
    /// Images per task and step.
    pub batch: usize,
    /// Seeds the batches (and WEMoE's router initialisation): the same seed and thread count
    /// give the same result.
    pub seed: u64,
}

/// Why a test-time merge failed.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    #[error("{0}")]
    Settings(String),
    #[error("at least one fine-tune is needed")]
    NoExperts,
    #[error("{model} is not a fine-tune of the base: `{tensor}` is missing or shaped differently")]
    Mismatch { model: String, tensor: String },
    #[error(
        "test-time merging runs the demo ViT's forward pass; {0} (only models of the demo \
         family's architecture can be adapted)"
    )]
    Model(#[from] EvalError),
    #[error("the forward or backward pass failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("the adaptation was cancelled")]
    Cancelled,
    #[error(transparent)]
    Write(#[from] crate::export::model_folder::ModelFolderError),
}

impl Adaptation {
    /// Refuses settings that cannot train, and a family without fine-tunes.
    pub(crate) fn check(&self, experts: &[ModelTensors]) -> Result<(), AdaptError> {
        if experts.is_empty() {
            return Err(AdaptError::NoExperts);
        }
        if self.steps == 0 || self.batch == 0 {
            return Err(AdaptError::Settings(
                "steps and batch must each be at least 1".to_owned(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(AdaptError::Settings(format!(
                "the learning rate must be a positive number, not {}",
                self.lr
            )));
        }
        Ok(())
    }

    /// Runs the loop: each step draws one batch per task, asks `loss` for the summed entropy,
    /// and steps `optimizer`. `loss` also scores every input before and after. Progress
    /// counts steps; a cancel stops at the next step.
    pub(crate) fn fit(
        &self,
        inputs: &Unlabeled,
        optimizer: &mut candle_nn::optim::AdamW,
        job: &Job,
        stage: &str,
        mut loss: impl FnMut(&[Tensor]) -> candle_core::Result<Tensor>,
    ) -> Result<Trace, AdaptError> {
        use candle_nn::optim::Optimizer as _;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut steps = Vec::with_capacity(self.steps);
        job.progress.start_stage(stage, self.steps as u64);
        let before = f64::from(loss(&inputs.tasks)?.to_scalar::<f32>()?);
        for _ in 0..self.steps {
            job.check_cancelled().map_err(|_| AdaptError::Cancelled)?;
            let batches = inputs.batches(self.batch, &mut rng)?;
            let value = loss(&batches)?;
            steps.push(f64::from(value.to_scalar::<f32>()?));
            optimizer.backward_step(&value)?;
            job.progress.add_done(1);
        }
        let after = f64::from(loss(&inputs.tasks)?.to_scalar::<f32>()?);
        Ok(Trace {
            steps,
            before,
            after,
        })
    }

    pub(crate) fn optimizer(
        &self,
        vars: Vec<candle_core::Var>,
    ) -> candle_core::Result<candle_nn::optim::AdamW> {
        use candle_nn::optim::Optimizer as _;
        candle_nn::optim::AdamW::new(
            vars,
            candle_nn::optim::ParamsAdamW {
                lr: self.lr,
                weight_decay: 0.0,
                ..candle_nn::optim::ParamsAdamW::default()
            },
        )
    }
}

/// The loss a fit minimised: on every step's batches (before that step's update), and on every
/// unlabeled input before and after the fit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Trace {
    pub steps: Vec<f64>,
    pub before: f64,
    pub after: f64,
}

/// Unlabeled inputs, one set per task: what test-time merging may look at.
#[derive(Clone, Debug)]
pub struct Unlabeled {
    /// Per task: pixels, n × 64.
    pub tasks: Vec<Tensor>,
}

impl Unlabeled {
    /// The demo family's test images of every domain, without their labels (AdaMerging's and
    /// WEMoE's transductive setting: adapt on the inputs that will be scored).
    pub fn demo_test() -> candle_core::Result<Self> {
        let digits = Digits::load();
        let tasks = Domain::ALL
            .iter()
            .map(|&domain| {
                let (pixels, labels) = digits.samples(domain, Split::Test);
                Tensor::from_vec(pixels, (labels.len(), PIXELS), &Device::Cpu)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { tasks })
    }

    /// One batch per task, drawn without replacement within the batch.
    fn batches(&self, batch: usize, rng: &mut ChaCha8Rng) -> candle_core::Result<Vec<Tensor>> {
        self.tasks
            .iter()
            .map(|pixels| {
                let n = pixels.dim(0)?;
                let chosen: Vec<u32> = sample(rng, n, batch.min(n))
                    .into_iter()
                    .map(|i| i as u32)
                    .collect();
                let index = Tensor::from_vec(chosen, batch.min(n), &Device::Cpu)?;
                pixels.index_select(&index, 0)
            })
            .collect()
    }
}

/// The mean Shannon entropy (nats) of the softmax of each row of `logits` (n × classes).
pub fn entropy(logits: &Tensor) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (log_p.exp()? * &log_p)?.sum(D::Minus1)?.neg()?.mean_all()
}

/// Each fine-tune's task vector `θ_i − θ_b` of tensor `name`, checked against the base.
pub(crate) fn task_vectors(
    base: &ModelTensors,
    experts: &[ModelTensors],
    name: &str,
) -> Result<Vec<Vec<f32>>, AdaptError> {
    let b = &base.values[name];
    experts
        .iter()
        .enumerate()
        .map(|(i, e)| match e.values.get(name) {
            Some(v) if v.len() == b.len() => Ok(v.iter().zip(b).map(|(x, y)| x - y).collect()),
            _ => Err(AdaptError::Mismatch {
                model: format!("fine-tune {}", i + 1),
                tensor: name.to_owned(),
            }),
        })
        .collect()
}

/// The base and the fine-tunes as the demo ViT reads them: each must have every tensor of the
/// demo architecture, in its shape.
pub fn open_family(
    base: &crate::Checkpoint,
    experts: &[crate::Checkpoint],
    config: VitConfig,
) -> Result<(ModelTensors, Vec<ModelTensors>), AdaptError> {
    if experts.is_empty() {
        return Err(AdaptError::NoExperts);
    }
    let base = ModelTensors::from_checkpoint(base, config)?;
    let experts = experts
        .iter()
        .map(|e| ModelTensors::from_checkpoint(e, config).map_err(AdaptError::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((base, experts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_is_zero_for_certain_rows_and_ln_c_for_uniform_ones() {
        let logits =
            Tensor::from_vec(vec![0f32, 0.0, 0.0, 0.0, 100.0, 0.0], (2, 3), &Device::Cpu).unwrap();
        let h = entropy(&logits).unwrap().to_scalar::<f32>().unwrap();
        // Row 1: ln 3; row 2: about 0.
        assert!((f64::from(h) - 3f64.ln() / 2.0).abs() < 1e-5, "{h}");
    }

    #[test]
    fn batches_are_seeded_and_sized() {
        let inputs = Unlabeled::demo_test().unwrap();
        assert_eq!(inputs.tasks.len(), 4);
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            inputs.batches(8, &mut rng).unwrap()[2]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        assert_eq!(draw(3).len(), 8 * PIXELS);
    }
}
