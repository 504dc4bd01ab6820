//! `slerp`: spherical linear interpolation between the base (t = 0) and one other model
//! (t = 1), each tensor treated as one flattened vector. ALGORITHMS.md §2.5.

use crate::backend::{Backend, Cpu};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, MissingPolicy, ParamSpec,
};

#[derive(Debug)]
pub struct Slerp;

static SPEC: MethodSpec = MethodSpec {
    name: "slerp",
    base: BaseUse::Required,
    params: &[ParamSpec::shared("t", Kind::Float, None)],
    min_models: 1,
    max_models: Some(1),
};

/// Above this |cos| the endpoints are treated as colinear and interpolated linearly. The two
/// branches differ by ≈ 1e-4 of the output at the threshold, so the decision is taken on the
/// host from `Backend::gram`, which both backends return bit for bit alike
/// (docs/gpu-cpu-agreement.md).
const DOT_THRESHOLD: f64 = 0.9995;

/// The weights of `a` and `b` for interpolation parameter `t`, from the Gram entries.
pub(crate) fn slerp_weights(t: f64, aa: f64, bb: f64, ab: f64) -> (f32, f32) {
    let norm = |x: f64| {
        let n = x.sqrt();
        if n <= 1e-8 { 1.0 } else { n }
    };
    let dot = (ab / (norm(aa) * norm(bb))).clamp(-1.0, 1.0);
    if dot.abs() > DOT_THRESHOLD {
        return ((1.0 - t) as f32, t as f32);
    }
    let theta = dot.acos();
    let s = theta.sin();
    (
        (((1.0 - t) * theta).sin() / s) as f32,
        ((t * theta).sin() / s) as f32,
    )
}

impl MergeMethod for Slerp {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn when_missing(&self) -> MissingPolicy {
        MissingPolicy::CopySingle
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
        let (Some(a), [b]) = (inputs.base.clone(), inputs.models.as_slice()) else {
            return Err(MethodError(
                "slerp needs the base and exactly one other model".to_owned(),
            ));
        };
        let g = backend.gram(&[a.clone(), b.clone()], None)?;
        let (ca, cb) = slerp_weights(inputs.params.shared_f64("t"), g[0], g[3], g[1]);
        backend.weighted_sum(&[a, b.clone()], &[ca, cb], None, out)?;
        Ok(())
    }
}
