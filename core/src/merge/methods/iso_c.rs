//! `iso_c`: isotropic merging in the common subspace (Marczak et al., ICML 2025).
//! ALGORITHMS.md §3.1, docs/methods-beyond-mergekit.md.

use crate::merge::subspace::{SubspaceMerge, iso_c};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct IsoC;

static SPEC: MethodSpec = MethodSpec {
    name: "iso_c",
    base: BaseUse::Required,
    params: &[
        ParamSpec::shared("scaling_factor", Kind::Float, Some(Value::Float(1.0))),
        ParamSpec::shared("exclude", Kind::Bool, Some(Value::Bool(false))),
    ],
    min_models: 1,
    max_models: None,
};

impl MergeMethod for IsoC {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let params = inputs.params;
        SubspaceMerge {
            delta: &iso_c,
            weights: vec![1.0; inputs.models.len()],
            scale: params.shared_f64("scaling_factor"),
            exclude: params.shared_bool("exclude"),
        }
        .run(inputs, out)
    }
}
