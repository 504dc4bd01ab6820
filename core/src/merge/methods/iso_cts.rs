//! `iso_cts`: isotropic merging in common and task-specific subspaces (Marczak et al.,
//! ICML 2025). ALGORITHMS.md §3.1, docs/methods-beyond-mergekit.md.

use crate::merge::subspace::{SubspaceMerge, iso_cts};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct IsoCts;

static SPEC: MethodSpec = MethodSpec {
    name: "iso_cts",
    base: BaseUse::Required,
    params: &[
        ParamSpec::shared("scaling_factor", Kind::Float, Some(Value::Float(1.0))),
        ParamSpec::shared(
            "common_space_fraction",
            Kind::Float,
            Some(Value::Float(0.8)),
        ),
        ParamSpec::shared("exclude", Kind::Bool, Some(Value::Bool(false))),
    ],
    min_models: 1,
    max_models: None,
};

impl MergeMethod for IsoCts {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let params = inputs.params;
        let fraction = params.shared_f64("common_space_fraction");
        SubspaceMerge {
            delta: &|taus| iso_cts(taus, fraction),
            weights: vec![1.0; inputs.models.len()],
            scale: params.shared_f64("scaling_factor"),
            exclude: params.shared_bool("exclude"),
        }
        .run(inputs, out)
    }
}
