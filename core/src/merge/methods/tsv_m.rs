//! `tsv_m`: Task Singular Vectors merging (Gargiulo et al., CVPR 2025). ALGORITHMS.md §3.1,
//! docs/methods-beyond-mergekit.md.

use crate::merge::subspace::{SubspaceMerge, tsv_m};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct TsvM;

static SPEC: MethodSpec = MethodSpec {
    name: "tsv_m",
    base: BaseUse::Required,
    params: &[
        ParamSpec::shared("alpha", Kind::Float, Some(Value::Float(1.0))),
        // fusion-bench's list-valued `alpha`: each task vector scaled before its SVD.
        ParamSpec::per_non_base("weight", Kind::Float, Some(Value::Float(1.0))),
        ParamSpec::shared("exclude", Kind::Bool, Some(Value::Bool(false))),
    ],
    min_models: 1,
    max_models: None,
};

impl MergeMethod for TsvM {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let params = inputs.params;
        SubspaceMerge {
            delta: &tsv_m,
            weights: (0..inputs.models.len())
                .map(|i| params.model_f64(i, "weight"))
                .collect(),
            scale: params.shared_f64("alpha"),
            exclude: params.shared_bool("exclude"),
        }
        .run(inputs, out)
    }
}
