//! `passthrough`: copies its single input, optionally scaled. ALGORITHMS.md §2.12.
//!
//! On a GPU merge this runs on the CPU: it is a copy (scaled at most), bound by memory, not
//! arithmetic.

use crate::merge::kernel::zip_map;
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct Passthrough;

static SPEC: MethodSpec = MethodSpec {
    name: "passthrough",
    base: BaseUse::Ignored,
    // mergekit's `scale` is optional; 1.0 leaves every value bit-identical.
    params: &[ParamSpec::per_input(
        "scale",
        Kind::Float,
        Some(Value::Float(1.0)),
    )],
    min_models: 1,
    max_models: Some(1),
};

impl MergeMethod for Passthrough {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let [x] = inputs.models.as_slice() else {
            return Err(MethodError(
                "passthrough takes exactly one model".to_owned(),
            ));
        };
        let scale = inputs.params.model_f64(0, "scale") as f32;
        zip_map(std::slice::from_ref(x), out, |_, xs, o| {
            if scale == 1.0 {
                o.copy_from_slice(xs[0]);
            } else {
                for (o, &x) in o.iter_mut().zip(xs[0]) {
                    *o = x * scale;
                }
            }
        });
        Ok(())
    }
}
