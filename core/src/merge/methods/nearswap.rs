//! `nearswap`: take the other model's value where it is within `t` of the base's, stay near the
//! base where they are far apart. ALGORITHMS.md §2.11.

use crate::backend::{Backend, Cpu};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, MissingPolicy, ParamSpec,
};

#[derive(Debug)]
pub struct Nearswap;

static SPEC: MethodSpec = MethodSpec {
    name: "nearswap",
    base: BaseUse::Required,
    params: &[ParamSpec::shared("t", Kind::Float, None)],
    min_models: 1,
    max_models: Some(1),
};

impl MergeMethod for Nearswap {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn when_missing(&self) -> MissingPolicy {
        MissingPolicy::CopySingleBase
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
                "nearswap needs the base and exactly one other model".to_owned(),
            ));
        };
        let t = inputs.params.shared_f64("t") as f32;
        backend.nearswap(a, b.clone(), t, out)?;
        Ok(())
    }
}
