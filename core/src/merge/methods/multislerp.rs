//! `multislerp`: a weighted spherical mean of several models (or their task vectors against a
//! base), each tensor one flattened vector. ALGORITHMS.md §2.7.
//!
//! Everything the definition computes on vectors lies in the span of the inputs, so it is
//! computed on coefficients from one Gram-matrix pass, then one pass writes the result: two
//! passes over the inputs and no extra tensor-sized buffers.
//!
//! On a GPU merge this runs on the CPU: it is a handful of whole-tensor reductions feeding scalar
//! maths on the unit sphere, with more host round trips than arithmetic per byte.

use crate::merge::kernel::{gram, zip_map};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, TensorParams,
    Value,
};

#[derive(Debug)]
pub struct Multislerp;

static SPEC: MethodSpec = MethodSpec {
    name: "multislerp",
    base: BaseUse::Optional,
    params: &[
        ParamSpec::per_non_base("weight", Kind::Float, None),
        ParamSpec::shared("normalize_weights", Kind::Bool, Some(Value::Bool(true))),
        ParamSpec::shared("eps", Kind::Float, Some(Value::Float(1e-8))),
    ],
    min_models: 1,
    max_models: None,
};

/// `v^T G w` for an N × N row-major `g`.
pub(crate) fn bilinear(g: &[f64], v: &[f64], w: &[f64]) -> f64 {
    let n = v.len();
    (0..n)
        .map(|i| (0..n).map(|j| v[i] * g[i * n + j] * w[j]).sum::<f64>())
        .sum()
}

impl MergeMethod for Multislerp {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn check(&self, params: &TensorParams) -> Result<(), String> {
        let sum: f64 = (0..params.model_count())
            .map(|i| params.model_f64(i, "weight"))
            .sum();
        if params.shared_bool("normalize_weights") && sum == 0.0 {
            return Err(
                "the weights sum to 0, so normalizing them divides by zero; change a weight"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let params = inputs.params;
        let n = inputs.models.len();
        let has_base = inputs.base.is_some();
        let all: Vec<_> = inputs
            .base
            .clone()
            .into_iter()
            .chain(inputs.models.iter().cloned())
            .collect();
        if n == 1 {
            // A single model is returned as it is, base or not (mergekit).
            zip_map(&inputs.models, out, |_, xs, o| o.copy_from_slice(xs[0]));
            return Ok(());
        }
        let eps = params.shared_f64("eps");
        let mut w: Vec<f64> = (0..n).map(|i| params.model_f64(i, "weight")).collect();
        if params.shared_bool("normalize_weights") {
            let sum: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= sum);
        }
        let g = gram(&inputs.models, inputs.base.clone());
        let norms: Vec<f64> = (0..n).map(|i| g[i * n + i].sqrt()).collect();
        // Gram matrix of the unit vectors U_i = X_i / (|X_i| + eps).
        let gu: Vec<f64> = (0..n * n)
            .map(|k| g[k] / ((norms[k / n] + eps) * (norms[k % n] + eps)))
            .collect();
        let m = bilinear(&gu, &w, &w).max(0.0).sqrt();
        // Coefficients of the raw X_k in the result.
        let per_x: Vec<f32> = if m < eps {
            if n != 2 {
                return Err(MethodError(
                    "the weighted sum of the models' directions is zero; multislerp is undefined here".to_owned(),
                ));
            }
            // Linear fallback on the raw vectors.
            w.iter().map(|&x| x as f32).collect()
        } else {
            let mu: Vec<f64> = w.iter().map(|x| x / m).collect();
            let gu_w: Vec<f64> = (0..n)
                .map(|i| (0..n).map(|j| gu[i * n + j] * w[j]).sum())
                .collect();
            let along: f64 = (0..n).map(|i| w[i] * gu_w[i] / m).sum();
            let tangent: Vec<f64> = (0..n).map(|k| w[k] - along * mu[k]).collect();
            let tn = bilinear(&gu, &tangent, &tangent).max(0.0).sqrt() + eps;
            let scale: f64 = (0..n).map(|i| w[i] * norms[i]).sum();
            (0..n)
                .map(|k| {
                    (scale * (tn.cos() * mu[k] + tn.sin() / tn * tangent[k]) / (norms[k] + eps))
                        as f32
                })
                .collect()
        };
        zip_map(&all, out, |_, xs, o| {
            for (e, o) in o.iter_mut().enumerate() {
                let b = if has_base { xs[0][e] } else { 0.0 };
                let offset = usize::from(has_base);
                let mut r = 0f32;
                for (k, c) in per_x.iter().enumerate() {
                    r += c * (xs[offset + k][e] - b);
                }
                *o = r + b;
            }
        });
        Ok(())
    }
}
