//! `karcher`: the Riemannian (Karcher) mean of the inputs' directions on the unit sphere,
//! scaled by their mean norm. ALGORITHMS.md §2.8.
//!
//! The iterate always lies in the span of the inputs, so the fixed-point iteration runs on
//! N coefficients with the Gram matrix from one pass; a second pass writes the result.
//!
//! On a GPU merge this runs on the CPU: an iteration whose stopping test needs a read-back every
//! step; not worth porting until someone merges with it at scale.

use crate::merge::kernel::{gram, zip_map};
use crate::merge::methods::multislerp::bilinear;
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct Karcher;

static SPEC: MethodSpec = MethodSpec {
    name: "karcher",
    base: BaseUse::Ignored,
    params: &[
        ParamSpec::shared("max_iter", Kind::Int, Some(Value::Int(10))),
        ParamSpec::shared("tol", Kind::Float, Some(Value::Float(1e-5))),
    ],
    min_models: 1,
    max_models: None,
};

impl MergeMethod for Karcher {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let n = inputs.models.len();
        if n == 1 {
            zip_map(&inputs.models, out, |_, xs, o| o.copy_from_slice(xs[0]));
            return Ok(());
        }
        let params = inputs.params;
        let tol = params.shared_f64("tol");
        let max_iter = match params.shared("max_iter") {
            Value::Int(i) => i.max(0),
            other => other.as_f64() as i64,
        };
        let g = gram(&inputs.models, None);
        let norms: Vec<f64> = (0..n).map(|i| g[i * n + i].sqrt()).collect();
        // Gram matrix of the unit vectors (a zero vector's unit is 0).
        let unit = |i: usize| if norms[i] > 0.0 { 1.0 / norms[i] } else { 0.0 };
        let gu: Vec<f64> = (0..n * n)
            .map(|k| g[k] * unit(k / n) * unit(k % n))
            .collect();
        let valid: Vec<usize> = (0..n).filter(|&i| norms[i] > tol).collect();
        let alpha = 1.0 / n as f64;
        let scale: f64 = norms.iter().map(|x| alpha * x).sum();
        let mut m = vec![0f64; n];
        if let Some(&first) = valid.first() {
            let a = 1.0 / valid.len() as f64; // alpha_i / sum over valid alpha
            for &i in &valid {
                m[i] = a;
            }
            let norm = bilinear(&gu, &m, &m).max(0.0).sqrt();
            if norm < tol {
                m.fill(0.0);
                m[first] = 1.0;
            } else {
                m.iter_mut().for_each(|x| *x /= norm);
            }
            for _ in 0..max_iter {
                let gm: Vec<f64> = (0..n)
                    .map(|i| (0..n).map(|j| gu[i * n + j] * m[j]).sum())
                    .collect();
                let mut step = vec![0f64; n];
                for &i in &valid {
                    let c = gm[i].clamp(-1.0, 1.0);
                    let theta = c.acos();
                    if theta < tol {
                        continue;
                    }
                    let f = a * theta / theta.sin();
                    step[i] += f;
                    for k in 0..n {
                        step[k] -= f * c * m[k];
                    }
                }
                let gn = bilinear(&gu, &step, &step).max(0.0).sqrt();
                if gn < tol {
                    break;
                }
                for k in 0..n {
                    m[k] = gn.cos() * m[k] + gn.sin() * step[k] / gn;
                }
                let norm = bilinear(&gu, &m, &m).max(0.0).sqrt();
                if norm > tol {
                    m.iter_mut().for_each(|x| *x /= norm);
                }
            }
        }
        let per_x: Vec<f32> = (0..n).map(|k| (scale * m[k] * unit(k)) as f32).collect();
        zip_map(&inputs.models, out, |_, xs, o| {
            for (e, o) in o.iter_mut().enumerate() {
                *o = per_x.iter().zip(xs).map(|(c, x)| c * x[e]).sum();
            }
        });
        Ok(())
    }
}
