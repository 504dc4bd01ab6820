//! `ramplus_tl`: Reinforced Agent Merging Plus, tensor-local (arXiv 2601.13572): `ram`, with
//! each model's unique deltas boosted by how much of its movement it shares with others in
//! this tensor. ALGORITHMS.md §2.14.
//!
//! On a GPU merge this runs on the CPU, as `ram` does.

use super::ram::{EPSILON, combine, contribution_counts, inputs_of};
use crate::dtype::FloatType;
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct RamplusTl;

static SPEC: MethodSpec = MethodSpec {
    name: "ramplus_tl",
    base: BaseUse::Required,
    params: &[
        ParamSpec::shared("r", Kind::Float, Some(Value::Float(0.1))),
        ParamSpec::shared("alpha", Kind::Float, Some(Value::Float(0.2))),
        EPSILON,
    ],
    min_models: 0,
    max_models: None,
};

/// Model i's boost `1 + r · clamp(shared_i / max(unique_i, epsilon), 0, alpha)`, in f32 as
/// torch computes it (the counts become f32 before the division; clamp is max-then-min, so a
/// negative `alpha` would win, as in torch).
fn boost(shared: u64, unique: u64, r: f32, alpha: f32, epsilon: f32) -> f32 {
    let rho = shared as f32 / (unique as f32).max(epsilon);
    1.0 + r * rho.max(0.0).min(alpha)
}

impl MergeMethod for RamplusTl {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    /// The f32 boosts promote a half-precision result to f32 in mergekit.
    fn result_type(&self, compute: FloatType) -> FloatType {
        FloatType::promote(compute, FloatType::F32)
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let all = inputs_of(inputs, "ramplus_tl")?;
        let params = inputs.params;
        let epsilon = params.shared_f64("epsilon") as f32;
        let (r, alpha) = (
            params.shared_f64("r") as f32,
            params.shared_f64("alpha") as f32,
        );
        let (unique, shared) = contribution_counts(&all, epsilon);
        let boosts: Vec<f32> = unique
            .iter()
            .zip(&shared)
            .map(|(&u, &s)| boost(s, u, r, alpha, epsilon))
            .collect();
        combine(&all, epsilon, &boosts, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::TensorParams;
    use crate::merge::methods::test_util::merge_1d as run;

    fn params(r: f64, alpha: f64, epsilon: f64) -> TensorParams {
        TensorParams::from_values(
            vec![
                ("r", Value::Float(r)),
                ("alpha", Value::Float(alpha)),
                ("epsilon", Value::Float(epsilon)),
            ],
            vec![],
        )
    }

    #[test]
    fn unique_deltas_are_boosted_by_the_shared_to_unique_ratio() {
        let base = [0.0; 5];
        // a moves elements 0, 1 alone and 2, 3 with b: rho_a = 2 / 2 = 1 -> clamp 0.5,
        // boost 1 + 0.5 · 0.5 = 1.25. b moves 2, 3 with a and 4 alone: rho_b = 2 -> 0.5, 1.25.
        let a = [1.0, -2.0, 4.0, 2.0, 0.0];
        let b = [0.0, 0.0, 2.0, -2.0, 8.0];
        let got = run(&RamplusTl, &base, &[&a, &b], &params(0.5, 0.5, 1e-5));
        assert_eq!(got, [1.25, -2.5, 3.0, 0.0, 10.0]);
        // With alpha large the ratio itself is used: a 1 + 0.5 · 1, b 1 + 0.5 · 2.
        let got = run(&RamplusTl, &base, &[&a, &b], &params(0.5, 10.0, 1e-5));
        assert_eq!(got, [1.5, -3.0, 3.0, 0.0, 16.0]);
    }

    #[test]
    fn a_model_without_unique_deltas_leaves_the_others_alone() {
        // a moves only what b moves too: its ratio is 1 / epsilon (infinite with epsilon 0),
        // clamped to alpha; it boosts nothing, and b's own boost is 1 + 0.1 · clamp(1, 0, 0.2).
        let base = [0.0, 0.0];
        let a = [2.0, 0.0];
        let b = [4.0, 1.0];
        for epsilon in [1e-5, 0.0] {
            let got = run(&RamplusTl, &base, &[&a, &b], &params(0.1, 0.2, epsilon));
            assert_eq!(got, [3.0, 1.0 + 0.1 * 0.2], "epsilon {epsilon}");
        }
    }

    #[test]
    fn a_zero_task_vector_contributes_nothing() {
        // §1.7: the copy of the base moves nothing, so a's deltas are unique; a shares
        // nothing, so its boost is 1 and the result is a itself.
        let base = [0.5, -0.25, 2.0];
        let a = [1.5, -1.25, 2.5];
        let got = run(&RamplusTl, &base, &[&a, &base], &params(0.1, 0.2, 1e-5));
        assert_eq!(got, a);
    }

    #[test]
    fn half_inputs_give_an_f32_result() {
        assert_eq!(RamplusTl.result_type(FloatType::BF16), FloatType::F32);
        assert_eq!(RamplusTl.result_type(FloatType::F32), FloatType::F32);
    }
}
