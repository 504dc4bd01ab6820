//! `nuslerp`: spherical interpolation between two models (or their task vectors against a
//! base), over whole tensors, rows, or columns. ALGORITHMS.md §2.6.
//!
//! On a GPU merge this runs on the CPU: its row-wise form needs a norm and an angle per row,
//! short reductions that cost more in kernel launches and read-backs than they save.

use crate::checkpoint::TensorView;
use crate::merge::kernel::{decode_all, gram, zip_map, zip_rows};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, MissingPolicy, ParamSpec,
    Value,
};

#[derive(Debug)]
pub struct Nuslerp;

static SPEC: MethodSpec = MethodSpec {
    name: "nuslerp",
    base: BaseUse::Optional,
    params: &[
        ParamSpec::per_non_base("weight", Kind::Float, None),
        ParamSpec::shared("nuslerp_flatten", Kind::Bool, Some(Value::Bool(true))),
        ParamSpec::shared("nuslerp_row_wise", Kind::Bool, Some(Value::Bool(false))),
    ],
    min_models: 2,
    max_models: Some(2),
};

/// Weights of `u0` and `u1` for one vector pair, from its dot products.
fn weights(t: f32, d00: f64, d11: f64, d01: f64) -> (f32, f32) {
    let n0 = d00.sqrt().max(1e-7);
    let n1 = d11.sqrt().max(1e-7);
    // mergekit computes the cosine and the colinearity test in the compute dtype (f32): the
    // test only fires when c*c rounds to exactly 1 there.
    let c = ((d01 / (n0 * n1)) as f32).clamp(-1.0, 1.0);
    if 1.0 - c * c <= 1e-16 {
        return (1.0 - t, t);
    }
    let theta = f64::from(c).acos();
    let s = theta.sin();
    let t = f64::from(t);
    (
        (((1.0 - t) * theta).sin() / s) as f32,
        ((t * theta).sin() / s) as f32,
    )
}

/// The vector pair of element `e`: the models themselves, or their differences from the base.
fn pair(xs: &[&[f32]], has_base: bool, e: usize) -> (f32, f32) {
    if has_base {
        (xs[1][e] - xs[0][e], xs[2][e] - xs[0][e])
    } else {
        (xs[0][e], xs[1][e])
    }
}

impl MergeMethod for Nuslerp {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn when_missing(&self) -> MissingPolicy {
        MissingPolicy::CopySingle
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let [m0, m1] = inputs.models.as_slice() else {
            return Err(MethodError(
                "nuslerp takes exactly two models besides the base".to_owned(),
            ));
        };
        let params = inputs.params;
        let (w0, w1) = (params.model_f64(0, "weight"), params.model_f64(1, "weight"));
        let t = if (w0 + w1).abs() < 1e-6 {
            0.5
        } else {
            (w1 / (w0 + w1)) as f32
        };
        let has_base = inputs.base.is_some();
        let all: Vec<TensorView<'_>> = inputs
            .base
            .clone()
            .into_iter()
            .chain([m0.clone(), m1.clone()])
            .collect();
        let shape = m0.shape;
        let flatten = params.shared_bool("nuslerp_flatten") || shape.len() <= 1;

        if flatten {
            let g = gram(&[m0.clone(), m1.clone()], inputs.base.clone());
            let (c0, c1) = weights(t, g[0], g[3], g[1]);
            zip_map(&all, out, |_, xs, o| {
                for (e, o) in o.iter_mut().enumerate() {
                    let (u0, u1) = pair(xs, has_base, e);
                    *o = c0 * u0 + c1 * u1 + if has_base { xs[0][e] } else { 0.0 };
                }
            });
        } else if !params.shared_bool("nuslerp_row_wise") {
            // Vectors along the last axis: contiguous rows.
            let row = *shape.last().expect("not 1-D");
            zip_rows(&all, out, row, |xs, o| {
                for (r, o_row) in o.chunks_mut(row).enumerate() {
                    let span = r * row..(r + 1) * row;
                    let (mut d00, mut d11, mut d01) = (0f64, 0f64, 0f64);
                    for e in span.clone() {
                        let (u0, u1) = pair(xs, has_base, e);
                        d00 += f64::from(u0) * f64::from(u0);
                        d11 += f64::from(u1) * f64::from(u1);
                        d01 += f64::from(u0) * f64::from(u1);
                    }
                    let (c0, c1) = weights(t, d00, d11, d01);
                    for (o, e) in o_row.iter_mut().zip(span) {
                        let (u0, u1) = pair(xs, has_base, e);
                        *o = c0 * u0 + c1 * u1 + if has_base { xs[0][e] } else { 0.0 };
                    }
                }
            });
        } else {
            // `nuslerp_row_wise` (mergekit's name) interpolates vectors along axis 0: strided
            // columns, so the tensor is decoded whole. Rarely used; memory is 3 tensors of f32.
            let decoded: Vec<Vec<f32>> = all
                .iter()
                .map(|v| {
                    let mut buffer = Vec::new();
                    decode_all(v, &mut buffer);
                    buffer
                })
                .collect();
            let xs: Vec<&[f32]> = decoded.iter().map(Vec::as_slice).collect();
            let inner = out.len() / shape[0].max(1);
            let mut dots = vec![(0f64, 0f64, 0f64); inner];
            for e in 0..out.len() {
                let (u0, u1) = pair(&xs, has_base, e);
                let d = &mut dots[e % inner];
                d.0 += f64::from(u0) * f64::from(u0);
                d.1 += f64::from(u1) * f64::from(u1);
                d.2 += f64::from(u0) * f64::from(u1);
            }
            let coefficients: Vec<(f32, f32)> =
                dots.iter().map(|d| weights(t, d.0, d.1, d.2)).collect();
            for (e, o) in out.iter_mut().enumerate() {
                let (u0, u1) = pair(&xs, has_base, e);
                let (c0, c1) = coefficients[e % inner];
                *o = c0 * u0 + c1 * u1 + if has_base { xs[0][e] } else { 0.0 };
            }
        }
        Ok(())
    }
}
