//! `sce`: Select, Calculate, Erase (FuseChat, Wan et al. 2024): keep the elements where the task
//! vectors vary most, weight each model by its mean squared delta, elect signs, average.
//! ALGORITHMS.md §2.10.
//!
//! On a GPU merge this runs on the CPU: its variance-based top-k selection is a rank selection
//! over every element (done on the CPU for TIES too), and the rest is one light pass.

use std::cell::RefCell;

use crate::merge::kernel::{sum_in_order, zip_chunks, zip_fill, zip_map};
use crate::merge::select::{BitMask, top_k_mask};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct Sce;

static SPEC: MethodSpec = MethodSpec {
    name: "sce",
    base: BaseUse::Required,
    params: &[
        ParamSpec::shared("select_topk", Kind::Float, Some(Value::Float(1.0))),
        // Memory-only in mergekit: accepted so recipes that set it run unchanged.
        ParamSpec::shared("int8_mask", Kind::Bool, Some(Value::Bool(false))),
    ],
    min_models: 0,
    max_models: None,
};

thread_local! {
    static VARIANCE_KEYS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Population variance over models of the task vectors at one element, in f32 as mergekit.
fn variance(b: f32, models: &[&[f32]], e: usize) -> f32 {
    let n = models.len() as f32;
    let mean = models.iter().map(|m| m[e] - b).sum::<f32>() / n;
    models
        .iter()
        .map(|m| (m[e] - b - mean).powi(2))
        .sum::<f32>()
        / n
}

impl MergeMethod for Sce {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let base = inputs
            .base
            .clone()
            .ok_or_else(|| MethodError("sce needs a base".to_owned()))?;
        let n_models = inputs.models.len();
        let n = base.numel();
        let mut all = vec![base];
        all.extend(inputs.models.iter().cloned());

        // Select: keep the top `select_topk` fraction of non-zero variances.
        let topk = inputs.params.shared_f64("select_topk");
        let selected: Option<BitMask> = if n_models == 0 || topk >= 1.0 {
            None
        } else if topk <= 0.0 {
            Some(BitMask::new(n))
        } else {
            Some(VARIANCE_KEYS.with_borrow_mut(|keys| {
                keys.resize(n, 0);
                zip_fill(&all, keys, |_, xs, k| {
                    let (b, models) = xs.split_first().expect("base first");
                    for (e, k) in k.iter_mut().enumerate() {
                        *k = variance(b[e], models, e).to_bits();
                    }
                });
                let nonzero = keys.iter().filter(|&&k| k != 0).count();
                let k = (nonzero as f64 * topk) as usize;
                if k == 0 {
                    BitMask::new(n)
                } else {
                    top_k_mask(keys, k)
                }
            }))
        };
        let kept = |j: usize| selected.as_ref().is_none_or(|m| m.get(j));

        // Calculate: each model's weight is its share of the mean squared (selected) delta.
        let partials = zip_chunks(&all, n, |start, xs| {
            let (b, models) = xs.split_first().expect("base first");
            models
                .iter()
                .map(|m| {
                    (0..b.len())
                        .filter(|&e| kept(start + e))
                        .map(|e| f64::from(m[e] - b[e]).powi(2))
                        .sum::<f64>()
                })
                .collect::<Vec<f64>>()
        });
        let mut shares: Vec<f64> = (0..n_models)
            .map(|i| sum_in_order(partials.iter().map(|p| p[i])) / n.max(1) as f64)
            .collect();
        let total: f64 = shares.iter().sum();
        // An absolute threshold, as in mergekit: small deltas fall back to uniform weights.
        if total.abs() < 1e-6 {
            shares.fill(1.0 / n_models.max(1) as f64);
        } else {
            shares.iter_mut().for_each(|s| *s /= total);
        }
        let shares: Vec<f32> = shares.iter().map(|&s| s as f32).collect();

        // Erase: drop deltas that disagree with the elected sign, average the rest.
        zip_map(&all, out, |start, xs, o| {
            let (b, models) = xs.split_first().expect("base first");
            for (e, o) in o.iter_mut().enumerate() {
                if !kept(start + e) {
                    *o = b[e];
                    continue;
                }
                let total: f32 = models.iter().map(|m| m[e] - b[e]).sum();
                let positive = total >= 0.0;
                let (mut numerator, mut denominator) = (0f32, 0f32);
                for (m, &share) in models.iter().zip(&shares) {
                    let d = m[e] - b[e];
                    if (positive && d > 0.0) || (!positive && d < 0.0) {
                        numerator += d * share;
                        denominator += share;
                    }
                }
                *o = b[e] + numerator / denominator.max(1e-6);
            }
        });
        Ok(())
    }
}
