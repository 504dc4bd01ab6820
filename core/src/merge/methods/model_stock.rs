//! `model_stock`: Model Stock (Jang et al. 2024): interpolate between the base and the average
//! of the fine-tunes by a ratio derived from the angle between their task vectors.
//! ALGORITHMS.md §2.9.

use crate::backend::{Backend, Cpu};
use crate::merge::kernel::zip_rows;
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, MissingPolicy, ParamSpec,
    Value,
};

#[derive(Debug)]
pub struct ModelStock;

static SPEC: MethodSpec = MethodSpec {
    name: "model_stock",
    base: BaseUse::Required,
    params: &[ParamSpec::shared(
        "filter_wise",
        Kind::Bool,
        Some(Value::Bool(false)),
    )],
    min_models: 2,
    max_models: None,
};

/// The interpolation ratio from the Gram matrix of the task vectors (N × N, row-major).
/// Not clamped: negative mean cosines extrapolate away from the average, as in mergekit.
/// Close above the guard the ratio is ≈ −10⁶ and sensitive to every bit of the Gram matrix,
/// which both backends therefore compute bit for bit alike (docs/gpu-cpu-agreement.md).
fn ratio(g: &[f64], n: usize) -> f32 {
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..n {
        for j in i + 1..n {
            let norms = (g[i * n + i].sqrt() * g[j * n + j].sqrt()).max(1e-6);
            sum += (g[i * n + j] / norms).clamp(-1.0, 1.0);
            pairs += 1;
        }
    }
    let c = sum / f64::from(pairs.max(1));
    let den = 1.0 + (n as f64 - 1.0) * c;
    if den.abs() < 1e-6 {
        0.0
    } else {
        (n as f64 * c / den) as f32
    }
}

/// `t · mean(models) + (1 − t) · base` for one element.
fn blend(t: f32, base: f32, models: &[&[f32]], e: usize) -> f32 {
    let mean = models.iter().map(|m| m[e]).sum::<f32>() / models.len() as f32;
    t * mean + (1.0 - t) * base
}

impl MergeMethod for ModelStock {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn when_missing(&self) -> MissingPolicy {
        MissingPolicy::StockOrSkip
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        self.merge_on(&Cpu, inputs, out)
    }

    fn merge_on(
        &self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        out: &mut [f32],
    ) -> Result<(), MethodError> {
        let base = inputs
            .base
            .clone()
            .ok_or_else(|| MethodError("model_stock needs a base".to_owned()))?;
        let n = inputs.models.len();
        let shape = base.shape;
        let mut all = vec![base];
        all.extend(inputs.models.iter().cloned());
        if !inputs.params.shared_bool("filter_wise") || shape.len() <= 1 {
            let t = ratio(&backend.gram(&inputs.models, inputs.base.clone())?, n);
            // t·mean(models) + (1 − t)·base as one weighted sum.
            let mut coefficients = vec![1.0 - t];
            coefficients.extend(std::iter::repeat_n(t / n as f32, n));
            backend.weighted_sum(&all, &coefficients, None, out)?;
        } else {
            // Filter-wise: one Gram matrix and ratio per row, a row-sized reduction that stays
            // on the CPU (the rows are too short to be worth a kernel launch each).
            let row = *shape.last().expect("not 1-D");
            zip_rows(&all, out, row, |xs, o| {
                let (b, models) = xs.split_first().expect("base first");
                let mut g = vec![0f64; n * n];
                for (r, o_row) in o.chunks_mut(row).enumerate() {
                    g.fill(0.0);
                    for e in r * row..(r + 1) * row {
                        for i in 0..n {
                            let di = f64::from(models[i][e] - b[e]);
                            for j in i..n {
                                g[i * n + j] += di * f64::from(models[j][e] - b[e]);
                            }
                        }
                    }
                    for i in 0..n {
                        for j in 0..i {
                            g[i * n + j] = g[j * n + i];
                        }
                    }
                    let t = ratio(&g, n);
                    for (k, o) in o_row.iter_mut().enumerate() {
                        let e = r * row + k;
                        *o = blend(t, b[e], models, e);
                    }
                }
            });
        }
        Ok(())
    }
}
